//! The audit line and its hash chain (DESIGN.md "Contract details"):
//!
//! ```text
//! {"seq":N,"prev":"<64 hex>","hash":"<64 hex>","event":{AuditEvent}}\n
//! ```
//!
//! `hash` = lowercase hex SHA-256 of the 64 ASCII hex characters of `prev`
//! followed by the exact bytes of the `event` value as written; `prev` of the
//! first record is 64 zeros. Files are `audit-{first seq, 12 digits}.ndjson`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// `prev` of the first record.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const FILE_PREFIX: &str = "audit-";
const FILE_SUFFIX: &str = ".ndjson";

/// The chain link: SHA-256 over `prev` (as 64 ASCII hex chars) then the event bytes.
pub fn link_hash(prev: &str, event: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(event);
    hex::encode(h.finalize())
}

/// Append one line (with its `\n`) to `out`.
pub fn write_line(out: &mut Vec<u8>, seq: u64, prev: &str, hash: &str, event: &str) {
    out.reserve(event.len() + 180);
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"prev\":\"");
    out.extend_from_slice(prev.as_bytes());
    out.extend_from_slice(b"\",\"hash\":\"");
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(b"\",\"event\":");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"}\n");
}

/// One parsed audit line; `event` borrows the exact bytes as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line<'a> {
    pub seq: u64,
    pub prev: String,
    pub hash: String,
    #[serde(borrow)]
    pub event: &'a RawValue,
}

impl<'a> Line<'a> {
    /// Parse a line (without its `\n`): exactly the four keys, 64-hex `prev`
    /// and `hash`, an object `event`.
    pub fn parse(text: &'a str) -> Result<Line<'a>, String> {
        let line: Line<'a> = serde_json::from_str(text).map_err(|e| format!("not an audit line: {e}"))?;
        for (name, value) in [("prev", &line.prev), ("hash", &line.hash)] {
            if !is_hex64(value) {
                return Err(format!("{name} is not 64 lowercase hex digits"));
            }
        }
        if !line.event.get().starts_with('{') {
            return Err("event is not a JSON object".into());
        }
        Ok(line)
    }

    /// Whether `hash` is the link of `prev` and the event bytes.
    pub fn hash_matches(&self) -> bool {
        link_hash(&self.prev, self.event.get().as_bytes()) == self.hash
    }
}

pub fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The file that starts with record `first_seq`.
pub fn file_name(first_seq: u64) -> String {
    format!("{FILE_PREFIX}{first_seq:012}{FILE_SUFFIX}")
}

/// The first seq a file name announces, if it is an audit file name.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The audit files of `dir`, ordered by the first seq in their names.
/// Other files (hidden files, torn tails moved aside, …) are not listed.
pub fn list_files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(first) = name.to_str().and_then(parse_file_name) else { continue };
        if entry.file_type()?.is_dir() {
            continue;
        }
        files.push((first, entry.path()));
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_over_prev_hex_then_event_bytes() {
        let event = br#"{"resourceType":"AuditEvent"}"#;
        let mut input = ZERO_HASH.as_bytes().to_vec();
        input.extend_from_slice(event);
        assert_eq!(link_hash(ZERO_HASH, event), hex::encode(Sha256::digest(&input)));
    }

    #[test]
    fn lines_round_trip_with_exact_event_bytes() {
        let event = r#"{"resourceType":"AuditEvent","id":"a","x":[1, 2]}"#;
        let hash = link_hash(ZERO_HASH, event.as_bytes());
        let mut out = Vec::new();
        write_line(&mut out, 1, ZERO_HASH, &hash, event);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.ends_with("}\n"));
        let line = Line::parse(text.trim_end()).unwrap();
        assert_eq!(line.seq, 1);
        assert_eq!(line.event.get(), event);
        assert!(line.hash_matches());
        // The contract's key order.
        assert!(text.starts_with(r#"{"seq":1,"prev":"0000"#));
    }

    #[test]
    fn malformed_lines_are_refused() {
        let event = r#"{"resourceType":"AuditEvent"}"#;
        let good = link_hash(ZERO_HASH, event.as_bytes());
        let cases = [
            format!(r#"{{"seq":1,"prev":"{ZERO_HASH}","hash":"{good}"}}"#),
            format!(r#"{{"seq":1,"prev":"{ZERO_HASH}","hash":"{good}","event":{event},"extra":1}}"#),
            format!(r#"{{"seq":1,"seq":2,"prev":"{ZERO_HASH}","hash":"{good}","event":{event}}}"#),
            format!(r#"{{"seq":"1","prev":"{ZERO_HASH}","hash":"{good}","event":{event}}}"#),
            format!(r#"{{"seq":1,"prev":"{}","hash":"{good}","event":{event}}}"#, "A".repeat(64)),
            format!(r#"{{"seq":1,"prev":"{}","hash":"{good}","event":{event}}}"#, "0".repeat(63)),
            format!(r#"{{"seq":1,"prev":"{ZERO_HASH}","hash":"{good}","event":"x"}}"#),
            format!(r#"{{"seq":1,"prev":"{ZERO_HASH}","hash":"{good}","event":{event}"#),
        ];
        for case in &cases {
            assert!(Line::parse(case).is_err(), "{case}");
        }
    }

    #[test]
    fn file_names_sort_by_first_seq() {
        assert_eq!(file_name(1), "audit-000000000001.ndjson");
        assert_eq!(parse_file_name("audit-000000000042.ndjson"), Some(42));
        assert_eq!(parse_file_name("audit-42.ndjson"), Some(42));
        for other in ["audit-.ndjson", "audit-1.ndjson.tmp", ".torn-1", "audit-x1.ndjson", "notes.txt"] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }
}
