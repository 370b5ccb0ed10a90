//! `fhirwall audit verify`: walk every file in seq order and check each
//! line: the shape, `seq` = previous + 1 (no gaps across files, each file
//! starting where its name says), `prev` = the previous `hash`, `hash` =
//! SHA-256 of `prev` and the event bytes. The first failure is reported
//! with the seq where the chain breaks:
//!
//! - an edited record fails its own hash (that seq);
//! - a removed record leaves a gap (the missing seq);
//! - reordered or inserted records break `seq`/`prev` (the first position
//!   out of order);
//! - a truncated file leaves an incomplete line or a gap before the next file.
//!
//! What a bare hash chain cannot show: records cut from the very end of the
//! log at a line boundary, or a chain rewritten from some point on by
//! someone who recomputes every later hash. Anchors catch those: a (seq,
//! hash) pair taken from the running gateway (`GET /admin/audit/head`, or
//! the head this command prints) and kept where the gateway host cannot
//! write (a SIEM, a ticket). `verify_with_anchors` fails when an anchored
//! record is missing (the log was cut) or has another hash (rewritten).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::chain::{self, Line, ZERO_HASH};

/// An intact log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intact {
    pub records: u64,
    pub files: usize,
    /// The last seq (0 when empty) and its hash.
    pub last_seq: u64,
    pub head: String,
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The first bad seq: the seq expected at the point of failure.
    pub seq: u64,
    pub file: Option<PathBuf>,
    /// 1-based line in `file`.
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seq {}", self.seq)?;
        if let Some(file) = &self.file {
            let name = file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
            if self.line > 0 {
                write!(f, " ({name} line {})", self.line)?;
            } else {
                write!(f, " ({name})")?;
            }
        }
        write!(f, ": {}", self.reason)
    }
}

/// A record known from elsewhere: its seq and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
}

impl std::str::FromStr for Anchor {
    type Err = String;

    /// `SEQ:HASH` (the hash as 64 lower-case hex digits).
    fn from_str(s: &str) -> Result<Anchor, String> {
        let (seq, hash) = s.split_once(':').ok_or("an anchor is SEQ:HASH")?;
        let seq: u64 = seq.trim().parse().map_err(|_| format!("anchor seq {seq:?} is not a number"))?;
        let hash = hash.trim().to_ascii_lowercase();
        if seq == 0 || hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("an anchor is SEQ:HASH with SEQ >= 1 and a 64-digit hex SHA-256".into());
        }
        Ok(Anchor { seq, hash })
    }
}

/// Verify the whole log in `dir`.
pub fn verify_dir(dir: &Path) -> Result<Intact, Broken> {
    verify_with_anchors(dir, &[])
}

/// Verify the whole log in `dir`, and that every anchored record is in it
/// with the anchored hash.
pub fn verify_with_anchors(dir: &Path, anchors: &[Anchor]) -> Result<Intact, Broken> {
    let broken = |seq: u64, file: Option<&Path>, line: usize, reason: String| Broken {
        seq,
        file: file.map(Path::to_owned),
        line,
        reason,
    };
    if !dir.is_dir() {
        return Err(broken(1, None, 0, format!("{} is not a directory", dir.display())));
    }
    let files = chain::list_files(dir)
        .map_err(|e| broken(1, None, 0, format!("cannot list {}: {e}", dir.display())))?;
    let mut expected = 1u64;
    let mut prev = ZERO_HASH.to_owned();
    for (first, path) in &files {
        if *first != expected {
            return Err(broken(expected, Some(path), 0, misplaced_file(*first, expected)));
        }
        let file =
            File::open(path).map_err(|e| broken(expected, Some(path), 0, format!("cannot open: {e}")))?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let mut buf = Vec::with_capacity(4096);
        let mut line_no = 0usize;
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| broken(expected, Some(path), line_no + 1, format!("cannot read: {e}")))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let fail = |reason: String| broken(expected, Some(path), line_no, reason);
            if buf.last() != Some(&b'\n') {
                return Err(fail(
                    "incomplete final line: the file was truncated, or a crash interrupted a write \
                     (never acknowledged; `fhirwall serve` moves such a tail aside at startup), \
                     or the gateway is writing right now (run again)"
                        .into(),
                ));
            }
            let text = std::str::from_utf8(&buf[..buf.len() - 1])
                .map_err(|_| fail("the line is not UTF-8".into()))?;
            let line = checked_line(text, expected, &prev, anchors).map_err(fail)?;
            prev = line.hash;
            expected += 1;
        }
    }
    if let Some(anchor) = anchors.iter().filter(|a| a.seq >= expected).min_by_key(|a| a.seq) {
        return Err(broken(
            expected,
            files.last().map(|(_, p)| p.as_path()),
            0,
            format!(
                "the log ends at seq {}, but seq {} is anchored: records were cut from the end",
                expected - 1,
                anchor.seq
            ),
        ));
    }
    Ok(Intact { records: expected - 1, files: files.len(), last_seq: expected - 1, head: prev })
}

/// One record read, checked against the chain: its seq, its link to the
/// previous record, its own hash, and any anchor for its seq.
pub(super) fn checked_line<'a>(
    text: &'a str,
    expected: u64,
    prev: &str,
    anchors: &[Anchor],
) -> Result<Line<'a>, String> {
    let line = Line::parse(text)?;
    if line.seq != expected {
        let why = if line.seq > expected {
            format!(
                "found seq {} where seq {expected} was expected: a record was removed or reordered",
                line.seq
            )
        } else {
            format!(
                "found seq {} again after seq {}: a record was inserted or reordered",
                line.seq,
                expected - 1
            )
        };
        return Err(why);
    }
    if line.prev != prev {
        return Err(
            "prev is not the hash of the previous record: a record was removed, inserted or reordered".into(),
        );
    }
    if !line.hash_matches() {
        return Err("hash does not match the record: the record was edited".into());
    }
    if let Some(anchor) = anchors.iter().find(|a| a.seq == line.seq && a.hash != line.hash) {
        return Err(format!(
            "the record's hash is not the anchored {}: the chain was rewritten and its hashes recomputed",
            anchor.hash
        ));
    }
    Ok(line)
}

/// Why a file's first seq (from its name) is not where the chain is.
fn misplaced_file(first: u64, expected: u64) -> String {
    if first > expected {
        format!(
            "records {expected}..{} are missing: this file starts at seq {first} (a file was removed or truncated)",
            first - 1
        )
    } else {
        format!(
            "this file's name says it starts at seq {first}, but the chain is at seq {expected} (a file was inserted or renamed)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{link_hash, write_line};

    /// A valid log of `n` records in files of `per_file` records.
    fn make_log(dir: &Path, n: u64, per_file: u64) -> Vec<String> {
        let mut prev = ZERO_HASH.to_owned();
        let mut hashes = Vec::new();
        let mut out = Vec::new();
        let mut first = 1;
        for seq in 1..=n {
            let event = format!(r#"{{"resourceType":"AuditEvent","id":"e{seq}"}}"#);
            let hash = link_hash(&prev, event.as_bytes());
            write_line(&mut out, seq, &prev, &hash, &event);
            prev = hash.clone();
            hashes.push(hash);
            if seq % per_file == 0 || seq == n {
                std::fs::write(dir.join(chain::file_name(first)), &out).unwrap();
                out.clear();
                first = seq + 1;
            }
        }
        hashes
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }

    #[test]
    fn intact_log_verifies_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let hashes = make_log(dir.path(), 10, 4);
        let ok = verify_dir(dir.path()).unwrap();
        assert_eq!((ok.records, ok.files, ok.head.as_str()), (10, 3, hashes[9].as_str()));
    }

    #[test]
    fn anchors_catch_a_cut_tail_and_a_recomputed_chain() {
        let dir = tempfile::tempdir().unwrap();
        let hashes = make_log(dir.path(), 10, 4);
        let anchor = |seq: u64| Anchor { seq, hash: hashes[seq as usize - 1].clone() };
        verify_with_anchors(dir.path(), &[anchor(3), anchor(10)]).unwrap();
        assert!("10:xyz".parse::<Anchor>().is_err() && "0:".parse::<Anchor>().is_err());
        assert_eq!(format!("10:{}", hashes[9]).parse::<Anchor>().unwrap(), anchor(10));

        // Cut the last two records at a line boundary: the bare chain still verifies.
        let last = dir.path().join(chain::file_name(9));
        std::fs::remove_file(&last).unwrap();
        assert_eq!(verify_dir(dir.path()).unwrap().last_seq, 8);
        let cut = verify_with_anchors(dir.path(), &[anchor(3), anchor(10)]).unwrap_err();
        assert_eq!(cut.seq, 9, "{cut}");
        assert!(cut.reason.contains("cut from the end"), "{cut}");

        // Rewrite record 2 and recompute every later hash: the bare chain verifies again.
        let rewritten = tempfile::tempdir().unwrap();
        let mut prev = ZERO_HASH.to_owned();
        let mut out = Vec::new();
        for seq in 1..=10u64 {
            let id = if seq == 2 { "forged".to_owned() } else { format!("e{seq}") };
            let event = format!(r#"{{"resourceType":"AuditEvent","id":"{id}"}}"#);
            let hash = link_hash(&prev, event.as_bytes());
            write_line(&mut out, seq, &prev, &hash, &event);
            prev = hash;
        }
        std::fs::write(rewritten.path().join(chain::file_name(1)), &out).unwrap();
        verify_dir(rewritten.path()).unwrap();
        let forged = verify_with_anchors(rewritten.path(), &[anchor(3)]).unwrap_err();
        assert_eq!(forged.seq, 3, "{forged}");
        assert!(forged.reason.contains("rewritten"), "{forged}");
    }

    #[test]
    fn empty_dir_verifies() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(verify_dir(dir.path()).unwrap().records, 0);
    }

    #[test]
    fn every_kind_of_tampering_names_the_first_bad_seq() {
        type Tamper = fn(&Path);
        let cases: Vec<(&str, Tamper, u64)> = vec![
            (
                "edit seq 2",
                |d| {
                    let p = d.join(chain::file_name(1));
                    let mut l = lines(&p);
                    l[1] = l[1].replace("\"e2\"", "\"x2\"");
                    write_lines(&p, &l);
                },
                2,
            ),
            (
                "remove seq 3",
                |d| {
                    let p = d.join(chain::file_name(1));
                    let mut l = lines(&p);
                    l.remove(2);
                    write_lines(&p, &l);
                },
                3,
            ),
            (
                "swap seq 2 and 3",
                |d| {
                    let p = d.join(chain::file_name(1));
                    let mut l = lines(&p);
                    l.swap(1, 2);
                    write_lines(&p, &l);
                },
                2,
            ),
            (
                "insert a copy of seq 2 after it",
                |d| {
                    let p = d.join(chain::file_name(1));
                    let mut l = lines(&p);
                    let copy = l[1].clone();
                    l.insert(2, copy);
                    write_lines(&p, &l);
                },
                3,
            ),
            (
                "truncate the first file at a line boundary",
                |d| {
                    let p = d.join(chain::file_name(1));
                    let l = lines(&p);
                    write_lines(&p, &l[..2]);
                },
                3,
            ),
            (
                "truncate the last file mid-line",
                |d| {
                    let p = d.join(chain::file_name(9));
                    let bytes = std::fs::read(&p).unwrap();
                    std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
                },
                10,
            ),
            (
                "remove a middle file",
                |d| {
                    std::fs::remove_file(d.join(chain::file_name(5))).unwrap();
                },
                5,
            ),
            (
                "rename a file",
                |d| {
                    std::fs::rename(d.join(chain::file_name(5)), d.join(chain::file_name(6))).unwrap();
                },
                5,
            ),
            (
                "edit the hash of seq 6",
                |d| {
                    let p = d.join(chain::file_name(5));
                    let mut l = lines(&p);
                    let line = Line::parse(&l[1]).unwrap();
                    let forged = link_hash(&line.prev, b"{}");
                    l[1] = l[1].replace(&line.hash, &forged);
                    write_lines(&p, &l);
                },
                6,
            ),
            (
                "change seq 7's number",
                |d| {
                    let p = d.join(chain::file_name(5));
                    let mut l = lines(&p);
                    l[2] = l[2].replacen("\"seq\":7", "\"seq\":70", 1);
                    write_lines(&p, &l);
                },
                7,
            ),
            (
                "add a key to seq 1",
                |d| {
                    let p = d.join(chain::file_name(1));
                    let mut l = lines(&p);
                    l[0] = l[0].replacen("{\"seq\"", "{\"x\":1,\"seq\"", 1);
                    write_lines(&p, &l);
                },
                1,
            ),
        ];
        for (what, tamper, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            make_log(dir.path(), 10, 4);
            tamper(dir.path());
            let err = verify_dir(dir.path()).expect_err(what);
            assert_eq!(err.seq, want, "{what}: {err}");
        }
    }
}
