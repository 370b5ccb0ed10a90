//! Unit tests of the writer (group commit, rotation, recovery, failure),
//! the AuditEvent shape and the query filters.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use super::*;
use crate::audit::chain::{Line, ZERO_HASH};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn all_lines(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (_, path) in chain::list_files(dir).unwrap() {
        out.extend(std::fs::read_to_string(path).unwrap().lines().map(str::to_owned));
    }
    out
}

fn event(i: u64) -> String {
    format!(r#"{{"resourceType":"AuditEvent","id":"r{i}"}}"#)
}

#[test]
fn concurrent_appends_get_distinct_seqs_and_a_valid_chain() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (log, recovery) = AuditLog::open(dir.path(), 64 * 1024 * 1024).unwrap();
    assert_eq!((recovery.next_seq, recovery.head.as_str()), (1, ZERO_HASH));
    let seqs = rt.block_on(async {
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append_json(event(i)).await.unwrap() })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs
    });
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique, (1..=500).collect());
    // Each acknowledged seq holds that task's own event.
    let lines = all_lines(dir.path());
    for (i, seq) in seqs.iter().enumerate() {
        let line = Line::parse(&lines[(*seq - 1) as usize]).unwrap();
        assert_eq!(line.event.get(), event(i as u64));
    }
    assert_eq!(verify::verify_dir(dir.path()).unwrap().records, 500);
    // Group commit: fewer syncs than records.
    let batches = log.stats().batches.load(std::sync::atomic::Ordering::Relaxed);
    assert!(batches < 500, "{batches} batches for 500 concurrent records");
}

#[test]
fn rotation_continues_the_chain_and_reopening_continues_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    {
        let (log, _) = AuditLog::open(dir.path(), 4096).unwrap();
        rt.block_on(async {
            for i in 0..200 {
                log.append_json(event(i)).await.unwrap();
            }
        });
    }
    let files = chain::list_files(dir.path()).unwrap();
    assert!(files.len() > 2, "expected rotation, got {files:?}");
    let intact = verify::verify_dir(dir.path()).unwrap();
    assert_eq!(intact.records, 200);

    let (log, recovery) = AuditLog::open(dir.path(), 4096).unwrap();
    assert_eq!((recovery.next_seq, &recovery.head), (201, &intact.head));
    let seq = rt.block_on(log.append_json(event(999))).unwrap();
    assert_eq!(seq, 201);
    assert_eq!(verify::verify_dir(dir.path()).unwrap().records, 201);
}

#[test]
fn a_torn_final_line_is_moved_aside_and_the_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    {
        let (log, _) = AuditLog::open(dir.path(), 1 << 20).unwrap();
        rt.block_on(async {
            for i in 0..5 {
                log.append_json(event(i)).await.unwrap();
            }
        });
    }
    let (_, path) = chain::list_files(dir.path()).unwrap().pop().unwrap();
    let intact = std::fs::read(&path).unwrap();
    // A crash mid-write: half of a sixth line.
    let torn = br#"{"seq":6,"prev":"abc","hash":"#;
    let mut bytes = intact.clone();
    bytes.extend_from_slice(torn);
    std::fs::write(&path, &bytes).unwrap();
    let err = verify::verify_dir(dir.path()).unwrap_err();
    assert_eq!(err.seq, 6);
    assert!(err.reason.contains("incomplete"), "{err}");

    let (log, recovery) = AuditLog::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(recovery.torn_bytes, torn.len() as u64);
    let saved = recovery.torn_saved_as.clone().unwrap();
    assert_eq!(std::fs::read(&saved).unwrap(), torn);
    assert!(saved.file_name().unwrap().to_str().unwrap().starts_with(".torn-"));
    assert_eq!(std::fs::read(&path).unwrap(), intact);
    assert_eq!(recovery.next_seq, 6);
    assert_eq!(rt.block_on(log.append_json(event(6))).unwrap(), 6);
    assert_eq!(verify::verify_dir(dir.path()).unwrap().records, 6);
}

#[test]
fn a_torn_first_line_leaves_an_empty_log() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(chain::file_name(1)), b"{\"seq\":1,\"pr").unwrap();
    let (log, recovery) = AuditLog::open(dir.path(), 1 << 20).unwrap();
    assert_eq!((recovery.next_seq, recovery.torn_bytes), (1, 12));
    assert_eq!(runtime().block_on(log.append_json(event(1))).unwrap(), 1);
    assert_eq!(verify::verify_dir(dir.path()).unwrap().records, 1);
}

#[test]
fn an_unreadable_last_record_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(chain::file_name(1)), b"garbage\n").unwrap();
    let err = AuditLog::open(dir.path(), 1 << 20).unwrap_err();
    assert!(err.to_string().contains("unreadable"), "{err}");
}

#[cfg(target_os = "linux")]
#[test]
fn a_failing_disk_fails_every_append() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.path().join(chain::file_name(1))).unwrap();
    let (log, _) = AuditLog::open(dir.path(), 1 << 20).unwrap();
    let rt = runtime();
    for i in 0..3 {
        assert!(rt.block_on(log.append_json(event(i))).is_err());
    }
    assert!(log.stats().failures.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

fn sample_record() -> AuditRecord {
    let mut r = AuditRecord::rest("0123456789abcdef01234567");
    r.kind = Kind::Rest { interaction: "search-type", operation: None };
    r.who = Who {
        client_id: Some("grace-ehr".into()),
        organization: Some("Organization/org-grace".into()),
        npi: Some("1417987256".into()),
        authenticated: true,
    };
    r.peer = Some("10.1.2.3".parse().unwrap());
    r.status = 200;
    r.resource_types.insert("ExplanationOfBenefit".into());
    r.requested_patients.insert("pat-0001".into());
    r.requested_patients.insert("pat-0009".into());
    let mut d = Disclosure::default();
    d.patients.insert("pat-0001".into());
    d.resource_types.insert("ExplanationOfBenefit".into());
    d.resource_types.insert("Coverage".into());
    d.suppressed.insert(Reason::Attribution, 3);
    d.suppressed.insert(Reason::OptOut, 1);
    d.redacted.insert(Reason::Financial, 7);
    r.disclosure = Some(d);
    r
}

fn find(items: &Value, pred: impl Fn(&Value) -> bool) -> Vec<&Value> {
    items.as_array().unwrap().iter().filter(|v| pred(v)).collect()
}

#[test]
fn audit_event_has_the_balp_shape() {
    let json = sample_record().to_json();
    assert!(!json.contains('\n'));
    assert!(json.starts_with(r#"{"resourceType":"AuditEvent","id":"0123456789abcdef01234567""#), "{json}");
    let ev: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(ev["type"]["code"], "rest");
    assert_eq!(ev["subtype"][0]["code"], "search-type");
    assert_eq!(ev["outcome"], "0");
    assert_eq!(ev["action"], "E");
    assert!(time::parse_rfc3339(ev["recorded"].as_str().unwrap()).is_some());
    let requestor = find(&ev["agent"], |a| a["requestor"] == true);
    assert_eq!(requestor.len(), 1);
    assert_eq!(requestor[0]["who"]["identifier"]["value"], "grace-ehr");
    assert_eq!(requestor[0]["network"]["address"], "10.1.2.3");
    let org = find(&ev["agent"], |a| a["who"]["reference"] == "Organization/org-grace");
    assert_eq!(org[0]["who"]["identifier"]["value"], "1417987256");
    let patients = find(&ev["entity"], |e| e["role"]["code"] == "1");
    let described: Vec<(String, String)> = patients
        .iter()
        .map(|e| (e["what"]["reference"].as_str().unwrap().into(), e["description"].as_str().unwrap().into()))
        .collect();
    assert_eq!(
        described,
        [("Patient/pat-0001".into(), "disclosed".into()), ("Patient/pat-0009".into(), "requested".into())]
    );
    let types: Vec<&str> = find(&ev["entity"], |e| e["what"]["type"].is_string())
        .iter()
        .map(|e| e["what"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Coverage", "ExplanationOfBenefit"]);
    let tx = find(&ev["entity"], |e| e["type"]["code"] == "XrequestId");
    assert_eq!(tx[0]["what"]["identifier"]["value"], "0123456789abcdef01234567");
    let details: Vec<(String, String)> = tx[0]["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["type"].as_str().unwrap().into(), d["valueString"].as_str().unwrap().into()))
        .collect();
    for want in [
        ("suppressed.attribution", "3"),
        ("suppressed.opt-out", "1"),
        ("redacted.financial", "7"),
        ("status", "200"),
    ] {
        assert!(details.contains(&(want.0.into(), want.1.into())), "{want:?} in {details:?}");
    }
}

#[test]
fn refused_requests_disclose_nobody() {
    let mut r = sample_record();
    r.status = 403;
    r.blame = Some(crate::Blame::Caller);
    r.issue = Some("forbidden");
    let ev: Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(ev["outcome"], "4");
    assert_eq!(ev["outcomeDesc"], "HTTP 403 (forbidden)");
    let disclosed = find(&ev["entity"], |e| e["description"] == "disclosed");
    assert!(disclosed.is_empty());
    assert_eq!(find(&ev["entity"], |e| e["description"] == "requested").len(), 2);
}

#[test]
fn outcome_codes_follow_blame() {
    let mut r = AuditRecord::rest("x");
    for (status, blame, want) in [
        (200, None, "0"),
        (404, Some(crate::Blame::Caller), "4"),
        (502, Some(crate::Blame::Upstream), "8"),
        (500, Some(crate::Blame::Policy), "12"),
        (500, Some(crate::Blame::Internal), "12"),
    ] {
        r.status = status;
        r.blame = blame;
        let ev: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(ev["outcome"], want, "{status}");
    }
}

#[test]
fn query_filters_by_patient_client_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (log, _) = AuditLog::open(dir.path(), 1 << 20).unwrap();
    let day = 86_400_000_000i64;
    let base = time::parse_rfc3339("2025-06-01").unwrap();
    let records = [
        ("grace-ehr", Some("pat-1"), base),
        ("grace-ehr", Some("pat-12"), base + day),
        ("other-ehr", Some("pat-1"), base + 2 * day),
        ("other-ehr", None, base + 3 * day),
    ];
    rt.block_on(async {
        for (i, (client, patient, at)) in records.iter().enumerate() {
            let mut r = AuditRecord::rest(&format!("r{i}"));
            r.who.client_id = Some((*client).into());
            r.status = 200;
            if let Some(p) = patient {
                r.requested_patients.insert((*p).into());
            }
            r.recorded = std::time::UNIX_EPOCH + std::time::Duration::from_micros(*at as u64);
            log.record(&r).await.unwrap();
        }
    });
    let run = |f: Filter, limit: Option<usize>| {
        let mut out = Vec::new();
        let stats = query::query_dir(dir.path(), &f, limit, &mut out).unwrap();
        let seqs: Vec<u64> =
            String::from_utf8(out).unwrap().lines().map(|l| Line::parse(l).unwrap().seq).collect();
        (seqs, stats)
    };
    let f = |p: Option<&str>, c: Option<&str>, s: Option<&str>| Filter::parse(p, c, s, None).unwrap();
    assert_eq!(run(f(Some("pat-1"), None, None), None).0, [1, 3]);
    assert_eq!(run(f(Some("Patient/pat-12"), None, None), None).0, [2]);
    assert_eq!(run(f(None, Some("grace-ehr"), None), None).0, [1, 2]);
    assert_eq!(run(f(Some("pat-1"), Some("other-ehr"), None), None).0, [3]);
    assert_eq!(run(f(None, None, Some("2025-06-03")), None).0, [3, 4]);
    assert_eq!(run(f(None, None, Some("2025-06-02T00:00:00.000001Z")), None).0, [3, 4]);
    assert_eq!(run(f(None, None, Some("2025-06-02T02:00:00+02:00")), None).0, [2, 3, 4]);
    let (seqs, stats) = run(f(None, None, None), Some(2));
    assert_eq!((seqs, stats.truncated_at), (vec![1, 2], Some(2)));
    assert_eq!(run(Filter::parse(None, None, None, Some("2")).unwrap(), None).0, [3, 4]);
    assert!(Filter::parse(None, None, Some("June"), None).is_err());
    assert!(Filter::parse(Some("Patient/a b"), None, None, None).is_err());
}

#[test]
fn a_second_writer_on_the_same_file_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (log, _) = AuditLog::open(dir.path(), 1 << 20).unwrap();
    rt.block_on(log.append_json(event(1))).unwrap();
    assert!(log.healthy());
    // Someone else appends a line (another node on a shared audit.dir).
    let (_, path) = chain::list_files(dir.path()).unwrap().pop().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    std::io::Write::write_all(&mut f, b"{\"seq\":2}\n").unwrap();
    let err = rt.block_on(log.append_json(event(2))).unwrap_err();
    assert!(err.to_string().contains("another fhirwall"), "{err}");
    assert!(!log.healthy());
    assert!(rt.block_on(log.append_json(event(3))).is_err());
    assert!(log.render_metrics().contains("fhirwall_audit_healthy 0"));
}
