//! What each console view shows, computed from the audit index. Every view
//! carries ids, codes, counts and times only: the index holds nothing else.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Value, json};

use crate::audit::index::{AuditIndex, Entry, Outcome};
use crate::audit::time::format_micros;

/// Most rows one page of a list answers.
pub const PAGE_MAX: usize = 200;
/// Rows per page unless asked otherwise.
pub const PAGE_DEFAULT: usize = 50;
/// Most buckets a traffic chart has.
const BUCKETS_MAX: i64 = 60;

/// Bucket widths a chart may use, in seconds.
const BUCKET_WIDTHS: [i64; 10] =
    [60, 300, 900, 3_600, 6 * 3_600, 86_400, 7 * 86_400, 30 * 86_400, 91 * 86_400, 365 * 86_400];

/// Whether a record is traffic (FHIR, token) rather than an admin call or a start/stop.
fn is_traffic(index: &AuditIndex, e: &Entry) -> bool {
    let event = index.name(e.event);
    !(event.starts_with("admin ") || matches!(event, "start" | "stop" | "application"))
}

/// The chain status every view carries, so the page can raise the alarm on any view.
pub fn chain(index: &AuditIndex, writer_head: (u64, String)) -> Value {
    let (seq, hash) = index.head();
    json!({
        "intact": index.broken().is_none(),
        "break": index.broken(),
        "indexed_through": seq,
        "indexed_head": hash,
        "writer_head": { "seq": writer_head.0, "hash": writer_head.1 },
        "records": index.entries().len(),
        "unreadable": index.unreadable(),
        "index_bytes": index.approx_bytes(),
    })
}

#[derive(Default)]
struct Tally {
    requests: u64,
    refused: u64,
    failed: u64,
    withheld: BTreeMap<String, u64>,
    patients: HashSet<u32>,
    organization: String,
}

impl Tally {
    fn add(&mut self, index: &AuditIndex, e: &Entry) {
        self.requests += 1;
        match e.outcome {
            Outcome::Success => {}
            Outcome::Refused => self.refused += 1,
            Outcome::UpstreamFailure | Outcome::Failure => self.failed += 1,
        }
        for (reason, n) in index.counts(e) {
            *self.withheld.entry(index.name(*reason).to_owned()).or_default() += u64::from(*n);
        }
        for p in index.patients(e).filter(|p| p.disclosed) {
            self.patients.insert(p.patient);
        }
        if self.organization.is_empty() {
            self.organization = index.name(e.organization).to_owned();
        }
    }

    fn to_json(&self) -> Value {
        let sum = |prefix: &str| -> u64 {
            self.withheld.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
        };
        json!({
            "requests": self.requests,
            "refused": self.refused,
            "failed": self.failed,
            "suppressed": sum("suppressed."),
            "redacted": sum("redacted."),
            "withheld": self.withheld,
            "patients_disclosed": self.patients.len(),
        })
    }
}

/// A traffic chart over `entries`: buckets of a width that keeps at most
/// [`BUCKETS_MAX`] of them between the first and the last record.
fn series<'a>(index: &AuditIndex, entries: impl Iterator<Item = &'a Entry> + Clone) -> Value {
    let times = entries.clone().map(|e| e.recorded);
    let (Some(first), Some(last)) = (times.clone().min(), times.max()) else {
        return json!({ "bucket_s": 60, "buckets": [] });
    };
    let span_s = (last - first) / 1_000_000 + 1;
    let width = BUCKET_WIDTHS.iter().copied().find(|w| span_s / w < BUCKETS_MAX).unwrap_or(365 * 86_400);
    let start = (first / 1_000_000).div_euclid(width) * width;
    let mut buckets: BTreeMap<i64, Tally> = BTreeMap::new();
    for e in entries {
        let b = (e.recorded / 1_000_000 - start).div_euclid(width);
        buckets.entry(b).or_default().add(index, e);
    }
    let n = buckets.keys().last().copied().unwrap_or(0) + 1;
    let rows: Vec<Value> = (0..n)
        .map(|b| {
            let mut row = buckets.get(&b).map(Tally::to_json).unwrap_or_else(|| Tally::default().to_json());
            row["start"] = json!(format_micros((start + b * width) * 1_000_000));
            row
        })
        .collect();
    json!({ "bucket_s": width, "buckets": rows })
}

/// The overview: traffic over time, and per client and per organization.
/// `client` / `organization` narrow it to one.
pub fn overview(index: &AuditIndex, client: Option<&str>, organization: Option<&str>) -> Value {
    let client_sym = client.map(|c| index.lookup(c).unwrap_or(u32::MAX));
    let org_sym = organization.map(|o| index.lookup(o).unwrap_or(u32::MAX));
    let selected = || {
        index.entries().iter().filter(move |e| {
            is_traffic(index, e)
                && client_sym.is_none_or(|c| e.client == c)
                && org_sym.is_none_or(|o| e.organization == o)
        })
    };
    let mut total = Tally::default();
    let mut per_client: HashMap<u32, Tally> = HashMap::new();
    let mut per_org: HashMap<u32, Tally> = HashMap::new();
    for e in selected() {
        total.add(index, e);
        per_client.entry(e.client).or_default().add(index, e);
        if e.organization != 0 {
            per_org.entry(e.organization).or_default().add(index, e);
        }
    }
    let table = |tallies: HashMap<u32, Tally>, key: &str| -> Vec<Value> {
        let mut rows: Vec<(String, Tally)> =
            tallies.into_iter().map(|(sym, t)| (index.name(sym).to_owned(), t)).collect();
        rows.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then_with(|| a.0.cmp(&b.0)));
        rows.into_iter()
            .map(|(name, t)| {
                let mut row = t.to_json();
                row[key] = json!(if name.is_empty() { "(anonymous)".to_owned() } else { name });
                if key == "client" {
                    row["organization"] = json!(t.organization);
                }
                row
            })
            .collect()
    };
    json!({
        "filter": { "client": client, "organization": organization },
        "total": total.to_json(),
        "series": series(index, selected()),
        "clients": table(per_client, "client"),
        "organizations": table(per_org, "organization"),
    })
}

/// One row of a record list.
fn row(index: &AuditIndex, e: &Entry, patient: Option<u32>) -> Value {
    let mut withheld = serde_json::Map::new();
    for (reason, n) in index.counts(e) {
        withheld.insert(index.name(*reason).to_owned(), json!(n));
    }
    let mut out = json!({
        "seq": e.seq,
        "recorded": format_micros(e.recorded),
        "client": index.name(e.client),
        "organization": index.name(e.organization),
        "event": index.name(e.event),
        "status": e.status,
        "outcome": e.outcome,
        "withheld": withheld,
    });
    match patient {
        Some(p) => {
            let disclosed = index.patients(e).any(|r| r.patient == p && r.disclosed);
            out["patient"] = json!(if disclosed { "disclosed" } else { "requested" });
        }
        None => out["patients"] = json!(index.patients(e).filter(|p| p.disclosed).count()),
    }
    out
}

/// A page of `postings` (positions, oldest first), newest first, starting
/// below seq `before`.
fn page(
    index: &AuditIndex,
    postings: &[u32],
    before: Option<u64>,
    limit: usize,
    patient: Option<u32>,
) -> (Vec<Value>, Option<u64>) {
    let entries = index.entries();
    // Postings are in seq order: find where `before` cuts them.
    let end = match before {
        None => postings.len(),
        Some(b) => postings.partition_point(|&i| entries[i as usize].seq < b),
    };
    let start = end.saturating_sub(limit);
    let rows =
        postings[start..end].iter().rev().map(|&i| row(index, &entries[i as usize], patient)).collect();
    let next = (start > 0).then(|| entries[postings[start] as usize].seq);
    (rows, next)
}

/// "Which clients received data about this patient, when, and what was withheld."
pub fn patient(index: &AuditIndex, id: &str, before: Option<u64>, limit: usize) -> Value {
    let postings = index.of_patient(id);
    let sym = index.lookup(id);
    let mut by_client: BTreeMap<(String, String), (u64, u64, i64, i64)> = BTreeMap::new();
    for &i in postings {
        let e = &index.entries()[i as usize];
        let disclosed = sym.is_some_and(|p| index.patients(e).any(|r| r.patient == p && r.disclosed));
        let key = (index.name(e.client).to_owned(), index.name(e.organization).to_owned());
        let slot = by_client.entry(key).or_insert((0, 0, i64::MAX, i64::MIN));
        if disclosed {
            slot.0 += 1;
            slot.2 = slot.2.min(e.recorded);
            slot.3 = slot.3.max(e.recorded);
        } else {
            slot.1 += 1;
        }
    }
    let mut by_client: Vec<_> = by_client.into_iter().collect();
    // Those that received data first; then the rest (refused callers, operators looking).
    by_client.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(&b.0)));
    let clients: Vec<Value> = by_client
        .into_iter()
        .map(|((client, organization), (disclosed, requested, first, last))| {
            json!({
                "client": if client.is_empty() { "(anonymous)".to_owned() } else { client },
                "organization": organization,
                "disclosures": disclosed,
                "requests_without_data": requested,
                "first_disclosed": (disclosed > 0).then(|| format_micros(first)),
                "last_disclosed": (disclosed > 0).then(|| format_micros(last)),
            })
        })
        .collect();
    let (rows, next_before) = page(index, postings, before, limit, sym);
    json!({
        "patient": id,
        "records": postings.len(),
        "clients": clients,
        "rows": rows,
        "next_before": next_before,
    })
}

/// One client: its totals, its traffic over time, its records.
pub fn client(index: &AuditIndex, id: &str, before: Option<u64>, limit: usize) -> Value {
    let postings = index.of_client(id);
    let entries = index.entries();
    let mut total = Tally::default();
    for &i in postings {
        total.add(index, &entries[i as usize]);
    }
    let (rows, next_before) = page(index, postings, before, limit, None);
    json!({
        "client": id,
        "organization": total.organization,
        "total": total.to_json(),
        "series": series(index, postings.iter().map(|&i| &entries[i as usize])),
        "rows": rows,
        "next_before": next_before,
    })
}

/// The clients the log knows, most records first (for the client picker).
pub fn clients(index: &AuditIndex) -> Value {
    let mut list: Vec<(&str, usize)> = index.clients().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    Value::Array(list.into_iter().map(|(c, n)| json!({ "client": c, "records": n })).collect())
}
