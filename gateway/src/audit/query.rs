//! `fhirwall audit query` and `GET /admin/audit`: the audit lines (whole,
//! with seq/prev/hash, so each can be checked) whose event matches every
//! given filter:
//!
//! - `patient`: an entity `Patient/{id}` (disclosed or requested);
//! - `client`: the requesting agent's client id;
//! - `since`: `recorded` at or after an RFC 3339 date or instant;
//! - `after`: seq greater than this (paging through large answers).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde_json::Value;

use super::chain::{self, Line};
use super::event::CLIENT_ID_SYSTEM;
use super::time::parse_rfc3339;

/// What to look for; all given filters must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Bare patient id.
    pub patient: Option<String>,
    pub client: Option<String>,
    /// Microseconds since the epoch.
    pub since: Option<i64>,
    pub after_seq: Option<u64>,
}

/// A filter value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

impl Filter {
    /// From the textual forms: `patient` as `ID` or `Patient/ID`, `since` as
    /// an RFC 3339 date or instant.
    pub fn parse(
        patient: Option<&str>,
        client: Option<&str>,
        since: Option<&str>,
        after_seq: Option<&str>,
    ) -> Result<Filter, FilterError> {
        let patient = match patient {
            None => None,
            Some(p) => {
                let id = p.strip_prefix("Patient/").unwrap_or(p);
                if !crate::fhir::search::is_fhir_id(id) {
                    return Err(FilterError(format!("patient {p:?} is not a patient id or Patient/{{id}}")));
                }
                Some(id.to_owned())
            }
        };
        let client = match client {
            Some("") => return Err(FilterError("client is empty".into())),
            c => c.map(str::to_owned),
        };
        let since = match since {
            None => None,
            Some(s) => Some(parse_rfc3339(s).ok_or_else(|| {
                FilterError(format!(
                    "since {s:?} is not an RFC 3339 date (2025-06-30) or instant (2025-06-30T12:00:00Z)"
                ))
            })?),
        };
        let after_seq = match after_seq {
            None => None,
            Some(s) => Some(s.parse().map_err(|_| FilterError(format!("after {s:?} is not a seq number")))?),
        };
        Ok(Filter { patient, client, since, after_seq })
    }

    /// Cheap text checks before a line is parsed.
    fn prefilter(&self) -> Vec<String> {
        let mut needles = Vec::new();
        if let Some(p) = &self.patient {
            needles.push(serde_json::to_string(&format!("Patient/{p}")).unwrap_or_default());
        }
        if let Some(c) = &self.client {
            needles.push(serde_json::to_string(c).unwrap_or_default());
        }
        needles
    }

    fn matches(&self, seq: u64, event: &Value) -> bool {
        if self.after_seq.is_some_and(|after| seq <= after) {
            return false;
        }
        if let Some(since) = self.since {
            let recorded = event["recorded"].as_str().and_then(parse_rfc3339);
            if recorded.is_none_or(|t| t < since) {
                return false;
            }
        }
        if let Some(patient) = &self.patient {
            let reference = format!("Patient/{patient}");
            let named = entities(event).any(|e| e["what"]["reference"].as_str() == Some(&reference));
            if !named {
                return false;
            }
        }
        if let Some(client) = &self.client {
            let agents = event["agent"].as_array().map(Vec::as_slice).unwrap_or_default();
            let by = agents.iter().any(|a| {
                a["requestor"] == Value::Bool(true)
                    && a["who"]["identifier"]["system"].as_str() == Some(CLIENT_ID_SYSTEM)
                    && a["who"]["identifier"]["value"].as_str() == Some(client)
            });
            if !by {
                return false;
            }
        }
        true
    }
}

fn entities(event: &Value) -> impl Iterator<Item = &Value> {
    event["entity"].as_array().into_iter().flatten()
}

/// How a query ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryStats {
    pub matched: usize,
    /// `limit` was reached before the end of the log; the last seq written.
    pub truncated_at: Option<u64>,
    /// Lines that did not parse (damage or tampering; `audit verify` says more).
    pub unreadable: usize,
}

/// Write the matching lines of the log in `dir` to `out`, at most `limit`.
pub fn query_dir(
    dir: &Path,
    filter: &Filter,
    limit: Option<usize>,
    out: &mut dyn Write,
) -> std::io::Result<QueryStats> {
    let mut stats = QueryStats::default();
    let needles = filter.prefilter();
    let mut last_written = 0u64;
    let files = chain::list_files(dir)?;
    for (i, (_, path)) in files.iter().enumerate() {
        // Skip files that end before `after`.
        if let (Some(after), Some((next_first, _))) = (filter.after_seq, files.get(i + 1))
            && *next_first <= after + 1
        {
            continue;
        }
        let mut reader = BufReader::with_capacity(256 * 1024, File::open(path)?);
        let mut buf = Vec::with_capacity(4096);
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            if buf.last() != Some(&b'\n') {
                stats.unreadable += 1;
                break;
            }
            let raw = &buf[..buf.len() - 1];
            if !needles.iter().all(|n| memchr::memmem::find(raw, n.as_bytes()).is_some()) {
                continue;
            }
            let Ok(text) = std::str::from_utf8(raw) else {
                stats.unreadable += 1;
                continue;
            };
            let Ok(line) = Line::parse(text) else {
                stats.unreadable += 1;
                continue;
            };
            let Ok(event) = serde_json::from_str::<Value>(line.event.get()) else {
                stats.unreadable += 1;
                continue;
            };
            if !filter.matches(line.seq, &event) {
                continue;
            }
            if limit.is_some_and(|l| stats.matched >= l) {
                stats.truncated_at = Some(last_written);
                return Ok(stats);
            }
            out.write_all(&buf)?;
            stats.matched += 1;
            last_written = line.seq;
        }
    }
    Ok(stats)
}
