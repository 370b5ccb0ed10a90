//! An index of the audit log for the console (`/admin/console`): one compact
//! [`Entry`] per record — when, which client and organization, what kind of
//! request, the status, what was withheld per reason, which patients — and
//! postings per patient and per client, so "which clients received data
//! about Patient X" is answered without reading the log again.
//!
//! The index is derived data: it lives in memory, is built by reading the
//! log from seq 1 and then follows the log's tail as records are appended
//! ([`AuditIndex::refresh`]). Reading the log is also a verification: every
//! line is checked against the chain exactly as `fhirwall audit verify`
//! checks it, so the console knows whether the chain it shows is intact.
//! A broken chain does not stop indexing (the records after a break are
//! still worth seeing); the first break is kept and shown as an alarm until
//! the index is rebuilt from a log that verifies.
//!
//! Only what an AuditEvent already holds is indexed: ids, codes, counts.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::chain::{self, Line, ZERO_HASH};
use super::event::{ADMIN_SYSTEM, CLIENT_ID_SYSTEM};
use super::time::parse_rfc3339;

/// An interned string (client id, organization, event label, patient id,
/// withheld reason); 0 is "none".
pub type Sym = u32;

/// One audit record, as the console needs it.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub seq: u64,
    /// `recorded`, microseconds since the epoch.
    pub recorded: i64,
    pub client: Sym,
    pub organization: Sym,
    /// What happened: the interaction (`read`, `search-type`, …), `token`,
    /// `admin {action}`, `start`/`stop`.
    pub event: Sym,
    pub status: u16,
    pub outcome: Outcome,
    counts_at: u32,
    counts_len: u16,
    patients_len: u16,
    patients_at: u32,
}

/// AuditEvent.outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Success,
    /// A refusal (4xx): the caller's request or rights.
    Refused,
    /// The upstream failed (8).
    UpstreamFailure,
    /// fhirwall failed (12).
    #[default]
    Failure,
}

impl Outcome {
    fn of(code: &str) -> Outcome {
        match code {
            "0" => Outcome::Success,
            "4" => Outcome::Refused,
            "8" => Outcome::UpstreamFailure,
            _ => Outcome::Failure,
        }
    }
}

/// Where reading the log found the chain broken (the first place).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainBreak {
    pub seq: u64,
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// Strings seen in the log, each stored once.
#[derive(Debug, Default)]
struct Interner {
    ids: HashMap<Box<str>, Sym>,
    names: Vec<Box<str>>,
}

impl Interner {
    fn new() -> Self {
        Interner { ids: HashMap::new(), names: vec!["".into()] }
    }

    fn intern(&mut self, s: &str) -> Sym {
        if s.is_empty() {
            return 0;
        }
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.names.len() as Sym;
        self.names.push(s.into());
        self.ids.insert(s.into(), id);
        id
    }

    fn get(&self, s: &str) -> Option<Sym> {
        self.ids.get(s).copied()
    }

    fn name(&self, sym: Sym) -> &str {
        self.names.get(sym as usize).map(|n| &**n).unwrap_or("")
    }
}

/// Where reading stopped: the next byte to read and what the chain expects there.
#[derive(Debug, Clone)]
struct Cursor {
    file_first: u64,
    path: PathBuf,
    offset: u64,
    expected: u64,
    prev: String,
    /// Lines read in this file (for break locations).
    line: usize,
}

/// The audit log, indexed. Build with [`AuditIndex::new`], then call
/// [`AuditIndex::refresh`] to read what was appended since.
#[derive(Debug)]
pub struct AuditIndex {
    dir: PathBuf,
    strings: Interner,
    entries: Vec<Entry>,
    /// (reason, count) runs of the entries.
    counts: Vec<(Sym, u32)>,
    /// Patient runs of the entries; the high bit set: disclosed.
    patients: Vec<u32>,
    by_patient: HashMap<Sym, Vec<u32>>,
    by_client: HashMap<Sym, Vec<u32>>,
    cursor: Option<Cursor>,
    broken: Option<ChainBreak>,
    /// Lines that could not be read as audit records (skipped).
    unreadable: u64,
}

const DISCLOSED: u32 = 1 << 31;

/// One patient named by a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatientRef {
    pub patient: Sym,
    /// Data of the patient left in the answer (else: only requested).
    pub disclosed: bool,
}

impl AuditIndex {
    pub fn new(dir: &Path) -> AuditIndex {
        AuditIndex {
            dir: dir.to_owned(),
            strings: Interner::new(),
            entries: Vec::new(),
            counts: Vec::new(),
            patients: Vec::new(),
            by_patient: HashMap::new(),
            by_client: HashMap::new(),
            cursor: None,
            broken: None,
            unreadable: 0,
        }
    }

    /// Read every complete line appended since the last call (the whole log
    /// on the first), checking the chain as it goes. Returns how many
    /// records were added.
    pub fn refresh(&mut self) -> std::io::Result<usize> {
        let files = chain::list_files(&self.dir)?;
        let before = self.entries.len();
        let mut cursor = match self.cursor.take() {
            Some(c) => c,
            None => {
                let Some((first, path)) = files.first() else { return Ok(0) };
                if *first != 1 {
                    self.note_break(
                        1,
                        path,
                        0,
                        format!("records 1..{} are missing (no file starts at seq 1)", first - 1),
                    );
                }
                Cursor {
                    file_first: *first,
                    path: path.clone(),
                    offset: 0,
                    expected: *first,
                    prev: ZERO_HASH.into(),
                    line: 0,
                }
            }
        };
        loop {
            self.read_file(&mut cursor)?;
            // Rotation: the next file starts where this one ended.
            let Some((first, path)) = files.iter().find(|(first, _)| *first > cursor.file_first) else {
                break;
            };
            if *first != cursor.expected {
                let reason = format!(
                    "records {}..{} are missing: the next file starts at seq {first}",
                    cursor.expected,
                    first - 1
                );
                self.note_break(cursor.expected, path, 0, reason);
                cursor.expected = *first;
            }
            cursor.file_first = *first;
            cursor.path = path.clone();
            cursor.offset = 0;
            cursor.line = 0;
        }
        self.cursor = Some(cursor);
        Ok(self.entries.len() - before)
    }

    /// Index the complete lines of the cursor's file from its offset on.
    fn read_file(&mut self, cursor: &mut Cursor) -> std::io::Result<()> {
        let mut file = match File::open(&cursor.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (seq, path) = (cursor.expected, cursor.path.clone());
                self.note_break(seq, &path, 0, "the file being read was removed".into());
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if len < cursor.offset {
            let (seq, path) = (cursor.expected, cursor.path.clone());
            self.note_break(seq, &path, cursor.line, "the file was truncated after it was read".into());
            cursor.offset = len;
            return Ok(());
        }
        file.seek(SeekFrom::Start(cursor.offset))?;
        let mut buf = Vec::with_capacity((len - cursor.offset).min(64 << 20) as usize);
        file.take(len - cursor.offset).read_to_end(&mut buf)?;
        // Only complete lines: the writer may be in the middle of one.
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else { return Ok(()) };
        for raw in buf[..end].split(|&b| b == b'\n') {
            cursor.line += 1;
            self.index_line(raw, cursor);
        }
        cursor.offset += end as u64 + 1;
        Ok(())
    }

    fn index_line(&mut self, raw: &[u8], cursor: &mut Cursor) {
        let path = cursor.path.clone();
        let Ok(text) = std::str::from_utf8(raw) else {
            self.note_break(cursor.expected, &path, cursor.line, "the line is not UTF-8".into());
            self.unreadable += 1;
            return;
        };
        let line = match super::verify::checked_line(text, cursor.expected, &cursor.prev, &[]) {
            Ok(line) => line,
            Err(reason) => {
                self.note_break(cursor.expected, &path, cursor.line, reason);
                // Keep indexing what is still readable, from where the log says it is.
                match Line::parse(text) {
                    Ok(line) => line,
                    Err(_) => {
                        self.unreadable += 1;
                        return;
                    }
                }
            }
        };
        cursor.expected = line.seq + 1;
        cursor.prev.clone_from(&line.hash);
        match serde_json::from_str::<Event<'_>>(line.event.get()) {
            Ok(event) => self.add(line.seq, &event),
            Err(_) => self.unreadable += 1,
        }
    }

    fn note_break(&mut self, seq: u64, file: &Path, line: usize, reason: String) {
        if self.broken.is_none() {
            let file = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            tracing::warn!(seq, %file, line, %reason, "audit chain broken (console index)");
            self.broken = Some(ChainBreak { seq, file, line, reason });
        }
    }

    fn add(&mut self, seq: u64, event: &Event<'_>) {
        let facts = Facts::of(event);
        let at = self.entries.len() as u32;
        let counts_at = self.counts.len() as u32;
        for (reason, n) in &facts.withheld {
            let reason = self.strings.intern(reason);
            self.counts.push((reason, *n));
        }
        let patients_at = self.patients.len() as u32;
        for (patient, disclosed) in &facts.patients {
            let sym = self.strings.intern(patient);
            self.patients.push(sym | if *disclosed { DISCLOSED } else { 0 });
            let postings = self.by_patient.entry(sym).or_default();
            // A record naming a patient twice (disclosed and requested) is one posting.
            if postings.last() != Some(&at) {
                postings.push(at);
            }
        }
        let client = self.strings.intern(&facts.client);
        if client != 0 {
            self.by_client.entry(client).or_default().push(at);
        }
        let entry = Entry {
            seq,
            recorded: facts.recorded,
            client,
            organization: self.strings.intern(&facts.organization),
            event: self.strings.intern(&facts.event),
            status: facts.status,
            outcome: facts.outcome,
            counts_at,
            counts_len: (self.counts.len() as u32 - counts_at) as u16,
            patients_at,
            patients_len: (self.patients.len() as u32 - patients_at) as u16,
        };
        self.entries.push(entry);
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn name(&self, sym: Sym) -> &str {
        self.strings.name(sym)
    }

    pub fn lookup(&self, s: &str) -> Option<Sym> {
        self.strings.get(s)
    }

    /// What `entry` withheld or changed: (`suppressed.part2`, 2), …
    pub fn counts(&self, entry: &Entry) -> &[(Sym, u32)] {
        let at = entry.counts_at as usize;
        &self.counts[at..at + entry.counts_len as usize]
    }

    /// The patients `entry` names.
    pub fn patients(&self, entry: &Entry) -> impl Iterator<Item = PatientRef> + '_ {
        let at = entry.patients_at as usize;
        self.patients[at..at + entry.patients_len as usize]
            .iter()
            .map(|p| PatientRef { patient: p & !DISCLOSED, disclosed: p & DISCLOSED != 0 })
    }

    /// Positions (in [`AuditIndex::entries`]) of the records naming `patient`, oldest first.
    pub fn of_patient(&self, patient: &str) -> &[u32] {
        self.strings.get(patient).and_then(|s| self.by_patient.get(&s)).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Positions of the records of `client`, oldest first.
    pub fn of_client(&self, client: &str) -> &[u32] {
        self.strings.get(client).and_then(|s| self.by_client.get(&s)).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The client ids seen, with their record counts.
    pub fn clients(&self) -> impl Iterator<Item = (&str, usize)> {
        self.by_client.iter().map(|(sym, postings)| (self.strings.name(*sym), postings.len()))
    }

    /// The first break found while reading, if any.
    pub fn broken(&self) -> Option<&ChainBreak> {
        self.broken.as_ref()
    }

    /// The last seq read and its hash (0 and zeros when empty).
    pub fn head(&self) -> (u64, &str) {
        match &self.cursor {
            Some(c) => (c.expected - 1, &c.prev),
            None => (0, ZERO_HASH),
        }
    }

    pub fn unreadable(&self) -> u64 {
        self.unreadable
    }

    /// Approximate heap bytes, for the console's status line.
    pub fn approx_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.counts.capacity() * 8
            + self.patients.capacity() * 4
            + self.by_patient.values().map(|v| v.capacity() * 4 + 48).sum::<usize>()
            + self.by_client.values().map(|v| v.capacity() * 4 + 48).sum::<usize>()
            + self.strings.names.iter().map(|n| n.len() * 2 + 48).sum::<usize>()
    }
}

/// What the index keeps of one AuditEvent.
#[derive(Debug, Default)]
struct Facts {
    recorded: i64,
    client: String,
    organization: String,
    event: String,
    status: u16,
    outcome: Outcome,
    withheld: Vec<(String, u32)>,
    patients: Vec<(String, bool)>,
}

impl Facts {
    fn of(event: &Event<'_>) -> Facts {
        let mut facts = Facts {
            recorded: parse_rfc3339(&event.recorded).unwrap_or(0),
            outcome: Outcome::of(&event.outcome),
            ..Facts::default()
        };
        let type_code = event.kind.code.as_deref().unwrap_or("");
        let code_of = |system: &str| {
            event.subtype.iter().find(|c| c.system.as_deref() == Some(system)).and_then(|c| c.code.as_deref())
        };
        facts.event = match type_code {
            "rest" => {
                let interaction = event.subtype.first().and_then(|c| c.code.as_deref()).unwrap_or("rest");
                match code_of("urn:fhirwall:operation") {
                    Some(op) if interaction == "operation" => format!("${op}"),
                    Some(op) => format!("{interaction} ${op}"),
                    None => interaction.to_owned(),
                }
            }
            "110114" => "token".to_owned(),
            "admin" => format!("admin {}", code_of("urn:fhirwall:admin-action").unwrap_or("unknown")),
            "110100" => match code_of(DCM) {
                Some("110120") => "start".to_owned(),
                Some("110121") => "stop".to_owned(),
                _ => "application".to_owned(),
            },
            other => other.to_owned(),
        };
        for agent in &event.agent {
            let Some(who) = &agent.who else { continue };
            if let Some(id) = &who.identifier {
                match id.system.as_deref() {
                    Some(CLIENT_ID_SYSTEM) => facts.client = id.value.as_deref().unwrap_or("").to_owned(),
                    Some(ADMIN_SYSTEM) => {
                        facts.client = format!("({})", id.value.as_deref().unwrap_or("admin"))
                    }
                    _ => {}
                }
            }
            let is_org = agent
                .kind
                .as_ref()
                .is_some_and(|t| t.coding.iter().any(|c| c.code.as_deref() == Some("PROV")));
            if is_org && let Some(reference) = &who.reference {
                facts.organization = reference.to_string();
            }
        }
        for entity in &event.entity {
            for detail in &entity.detail {
                let (name, value) = (detail.kind.as_ref(), detail.value.as_deref().unwrap_or(""));
                if name == "status" {
                    facts.status = value.parse().unwrap_or(0);
                } else if (name.starts_with("suppressed.") || name.starts_with("redacted."))
                    && let Ok(n) = value.parse::<u32>()
                {
                    facts.withheld.push((name.to_owned(), n));
                }
            }
            let Some(reference) = entity.what.as_ref().and_then(|w| w.reference.as_deref()) else { continue };
            if let Some(id) = reference.strip_prefix("Patient/")
                && entity.role.as_ref().and_then(|r| r.code.as_deref()) == Some("1")
            {
                facts.patients.push((id.to_owned(), entity.description.as_deref() == Some("disclosed")));
            }
        }
        facts
    }
}

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";

// The parts of an AuditEvent the index reads; everything else is skipped.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow, default)]
    recorded: Cow<'a, str>,
    #[serde(borrow, default)]
    outcome: Cow<'a, str>,
    #[serde(rename = "type", borrow, default)]
    kind: Coding<'a>,
    #[serde(borrow, default)]
    subtype: Vec<Coding<'a>>,
    #[serde(borrow, default)]
    agent: Vec<Agent<'a>>,
    #[serde(borrow, default)]
    entity: Vec<Entity<'a>>,
}

#[derive(Deserialize, Default)]
struct Coding<'a> {
    #[serde(borrow, default)]
    system: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Concept<'a> {
    #[serde(borrow, default)]
    coding: Vec<Coding<'a>>,
}

#[derive(Deserialize)]
struct Agent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Concept<'a>>,
    #[serde(borrow, default)]
    who: Option<Reference<'a>>,
}

#[derive(Deserialize)]
struct Reference<'a> {
    #[serde(borrow, default)]
    reference: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    identifier: Option<Identifier<'a>>,
}

#[derive(Deserialize)]
struct Identifier<'a> {
    #[serde(borrow, default)]
    system: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    value: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Entity<'a> {
    #[serde(borrow, default)]
    what: Option<Reference<'a>>,
    #[serde(borrow, default)]
    role: Option<Coding<'a>>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    detail: Vec<Detail<'a>>,
}

#[derive(Deserialize)]
struct Detail<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(rename = "valueString", borrow, default)]
    value: Option<Cow<'a, str>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{file_name, link_hash, write_line};

    /// An event as the gateway writes it, trimmed to what the index reads.
    fn event(client: &str, status: u16, patients: &[(&str, &str)], withheld: &[(&str, u32)]) -> String {
        let mut details = vec![format!(r#"{{"type":"status","valueString":"{status}"}}"#)];
        details.extend(withheld.iter().map(|(k, n)| format!(r#"{{"type":"{k}","valueString":"{n}"}}"#)));
        let mut entities =
            vec![format!(r#"{{"what":{{"identifier":{{"value":"r"}}}},"detail":[{}]}}"#, details.join(","))];
        entities.extend(patients.iter().map(|(p, role)| {
            format!(
                r#"{{"what":{{"reference":"Patient/{p}"}},"role":{{"code":"1"}},"description":"{role}"}}"#
            )
        }));
        let outcome = if status < 400 { "0" } else { "4" };
        format!(
            r#"{{"resourceType":"AuditEvent","type":{{"code":"rest"}},"subtype":[{{"system":"http://hl7.org/fhir/restful-interaction","code":"search-type"}}],"recorded":"2026-12-06T10:00:0{}Z","outcome":"{outcome}","agent":[{{"who":{{"identifier":{{"system":"urn:fhirwall:client-id","value":"{client}"}}}}}},{{"type":{{"coding":[{{"code":"PROV"}}]}},"who":{{"reference":"Organization/org-{client}"}}}}],"entity":[{}]}}"#,
            status % 10,
            entities.join(",")
        )
    }

    /// Append events to `file`, continuing the chain from (seq, prev).
    fn append(dir: &Path, first_of_file: u64, seq: &mut u64, prev: &mut String, events: &[String]) {
        let mut out = Vec::new();
        for e in events {
            *seq += 1;
            let hash = link_hash(prev, e.as_bytes());
            write_line(&mut out, *seq, prev, &hash, e);
            *prev = hash;
        }
        use std::io::Write;
        let path = dir.join(file_name(first_of_file));
        std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(&out).unwrap();
    }

    #[test]
    fn indexes_patients_clients_and_withheld_counts_and_follows_the_tail_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let (mut seq, mut prev) = (0, ZERO_HASH.to_owned());
        append(
            dir.path(),
            1,
            &mut seq,
            &mut prev,
            &[
                event("a", 200, &[("p1", "disclosed")], &[("suppressed.part2", 2)]),
                event("b", 404, &[("p1", "requested")], &[]),
            ],
        );
        let mut ix = AuditIndex::new(dir.path());
        assert_eq!(ix.refresh().unwrap(), 2);
        assert_eq!(ix.of_patient("p1").len(), 2);
        assert_eq!(ix.of_client("a").len(), 1);
        let first = ix.entries()[0];
        assert_eq!(
            (ix.name(first.event), first.status, first.outcome),
            ("search-type", 200, Outcome::Success)
        );
        assert_eq!(ix.name(first.organization), "Organization/org-a");
        let counts: Vec<_> = ix.counts(&first).iter().map(|(r, n)| (ix.name(*r), *n)).collect();
        assert_eq!(counts, [("suppressed.part2", 2)]);
        assert!(ix.patients(&ix.entries()[1]).all(|p| !p.disclosed));

        // More records, then a rotated file: both are picked up.
        append(dir.path(), 1, &mut seq, &mut prev, &[event("a", 200, &[("p2", "disclosed")], &[])]);
        append(dir.path(), 4, &mut seq, &mut prev, &[event("c", 200, &[("p1", "disclosed")], &[])]);
        assert_eq!(ix.refresh().unwrap(), 2);
        assert_eq!(ix.of_patient("p1").len(), 3);
        assert_eq!(ix.head().0, 4);
        assert!(ix.broken().is_none());
        // Nothing new: nothing added.
        assert_eq!(ix.refresh().unwrap(), 0);
    }

    #[test]
    fn an_incomplete_last_line_waits_for_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (mut seq, mut prev) = (0, ZERO_HASH.to_owned());
        append(dir.path(), 1, &mut seq, &mut prev, &[event("a", 200, &[], &[])]);
        let path = dir.path().join(file_name(1));
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 10]).unwrap();
        let mut ix = AuditIndex::new(dir.path());
        assert_eq!(ix.refresh().unwrap(), 0);
        std::fs::write(&path, &full).unwrap();
        assert_eq!(ix.refresh().unwrap(), 1);
        assert!(ix.broken().is_none());
    }

    #[test]
    fn an_edited_or_missing_record_breaks_the_chain_and_the_rest_is_still_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut seq, mut prev) = (0, ZERO_HASH.to_owned());
        let events: Vec<String> =
            (0..4).map(|i| event("a", 200, &[(&format!("p{i}"), "disclosed")], &[])).collect();
        append(dir.path(), 1, &mut seq, &mut prev, &events);
        let path = dir.path().join(file_name(1));
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replacen("Patient/p1", "Patient/px", 1);
        std::fs::write(&path, &edited).unwrap();
        let mut ix = AuditIndex::new(dir.path());
        ix.refresh().unwrap();
        let b = ix.broken().expect("a break");
        assert_eq!((b.seq, b.line), (2, 2));
        assert!(b.reason.contains("edited"), "{}", b.reason);
        assert_eq!(ix.entries().len(), 4);

        // A removed record: a gap.
        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(2);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let mut ix = AuditIndex::new(dir.path());
        ix.refresh().unwrap();
        let b = ix.broken().expect("a break");
        assert_eq!(b.seq, 3);
        assert!(b.reason.contains("removed"), "{}", b.reason);
    }
}
