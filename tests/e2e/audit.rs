//! The audit log end to end: the real `fhirwall serve`, real HTTP clients, the
//! files it writes, and `fhirwall audit verify|query` run as a separate process
//! the way a security team would.
//!
//! - one record per request (allowed, refused, failed, token, admin), matched to
//!   the response by its `X-Request-Id`;
//! - every kind of tampering detected by `audit verify`, naming the first bad seq;
//! - `kill -9` under load: the log verifies and holds a record for every 2xx
//!   response a client received; a torn final line is moved aside at restart;
//! - PHI (names, birth dates, member ids, phones, addresses of the synthetic
//!   dataset) never appears in a record;
//! - rotation continues the chain across files and restarts;
//! - an audit write that fails makes the request fail closed (503), never 200;
//! - `GET /admin/audit` and `fhirwall audit query` answer by patient, client, since.

use fhirwall_testkit as support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const CLIENT: &str = "audit-test-ehr";
const ORG: &str = "Organization/org-grace";
const NPI: &str = "1417987256";
/// Attributed to org-grace in examples/dataset (facts.json).
const PATIENT: &str = "pat-0001";

fn start(config: GatewayConfig) -> (Gateway, String) {
    let gw = Gateway::start(config.client(CLIENT, ORG, NPI, &["system/*.read"]));
    let token = gw.token(CLIENT, "system/*.read");
    (gw, token)
}

// ---------------------------------------------------------------------------
// Reading the log

/// One audit line: its seq and the parsed event.
#[derive(Debug, Clone)]
struct Rec {
    seq: u64,
    event: Value,
}

impl Rec {
    fn id(&self) -> &str {
        self.event["id"].as_str().unwrap_or("")
    }

    fn detail(&self, name: &str) -> Option<String> {
        self.event["entity"].as_array()?.iter().find(|e| e["type"]["code"] == "XrequestId")?["detail"]
            .as_array()?
            .iter()
            .find(|d| d["type"] == name)
            .and_then(|d| d["valueString"].as_str())
            .map(str::to_owned)
    }

    fn requestor(&self) -> Option<&str> {
        self.event["agent"].as_array()?.iter().find(|a| a["requestor"] == true)?["who"]["identifier"]["value"]
            .as_str()
    }

    fn subtype(&self) -> &str {
        self.event["subtype"][0]["code"].as_str().unwrap_or("")
    }

    fn patients(&self, description: &str) -> BTreeSet<String> {
        self.event["entity"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["role"]["code"] == "1" && e["description"] == description)
            .filter_map(|e| e["what"]["reference"].as_str().map(str::to_owned))
            .collect()
    }
}

fn audit_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("audit-") && name.ends_with(".ndjson") && p.is_file()
        })
        .collect();
    files.sort();
    files
}

/// Every record of the log, in seq order; panics on a line that is not one.
fn read_log(dir: &Path) -> Vec<Rec> {
    let mut recs = Vec::new();
    for file in audit_files(dir) {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", file.display()));
            recs.push(Rec { seq: v["seq"].as_u64().unwrap(), event: v["event"].clone() });
        }
    }
    recs.sort_by_key(|r| r.seq);
    recs
}

fn log_text(dir: &Path) -> String {
    audit_files(dir).iter().map(|f| std::fs::read_to_string(f).unwrap()).collect()
}

/// `fhirwall audit verify --dir DIR`: (exit code, stdout + stderr).
fn verify(dir: &Path) -> (i32, String) {
    let out = Command::new(fhirwall_bin()).args(["audit", "verify", "--dir"]).arg(dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[track_caller]
fn assert_verifies(dir: &Path) -> String {
    let (code, text) = verify(dir);
    assert_eq!(code, 0, "audit verify failed:\n{text}");
    text
}

/// The seq `audit verify` names as the first bad one.
#[track_caller]
fn first_bad_seq(dir: &Path) -> u64 {
    let (code, text) = verify(dir);
    assert_eq!(code, 1, "audit verify should report a broken chain:\n{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("first bad seq: "))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `first bad seq:` line in:\n{text}"))
}

fn request_id(resp: &Resp) -> String {
    resp.header("x-request-id").unwrap_or_else(|| panic!("no X-Request-Id: {resp:?}")).to_owned()
}

fn kill_9(gw: &Gateway) {
    let pid = gw.pid().expect("gateway running");
    let status = Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

// ---------------------------------------------------------------------------
// One record per request

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_one_record_matching_its_request_id() {
    let mut upstream = Upstream::sandbox();
    let (mut gw, token) = start(GatewayConfig::new(upstream.base_url()));
    let bearer = format!("Bearer {token}");
    // (what, response, expected status, expected subtype)
    let mut seen: Vec<(&str, Resp, u16, &str)> = Vec::new();

    let r = get_bearer(&gw.url(&format!("Patient/{PATIENT}")), &token).await;
    seen.push(("read", r, 200, "read"));
    let r = get_bearer(&gw.url(&format!("ExplanationOfBenefit?patient=Patient/{PATIENT}&_count=2")), &token)
        .await;
    seen.push(("search", r, 200, "search-type"));
    let r = get(&gw.url("metadata")).await;
    seen.push(("metadata", r, 200, "capabilities"));
    let r = get_bearer(&gw.url("Patient?_has:Observation:patient:code=1234"), &token).await;
    seen.push(("refused syntax", r, 400, "unparsed"));
    let r = get(&gw.url(&format!("Patient/{PATIENT}"))).await;
    seen.push(("no token", r, 401, "unauthenticated"));
    let r =
        request("DELETE", &gw.url(&format!("Patient/{PATIENT}")), &[("Authorization", &bearer)], None).await;
    seen.push(("write", r, 403, "unparsed"));
    let form = [("grant_type", "client_credentials"), ("client_id", CLIENT), ("scope", "system/*.read")];
    let r = post_form(&gw.token_url(), &[], &form).await;
    seen.push(("token refused", r, 401, "110122"));
    let r = get(&format!("{}/nowhere", gw.base_url().trim_end_matches("/fhir"))).await;
    seen.push(("unrouted", r, 404, "unrouted"));
    upstream.stop();
    let r = get_bearer(&gw.url(&format!("Patient/{PATIENT}")), &token).await;
    seen.push(("upstream down", r, 502, "read"));

    let r = gw.admin("GET", "/admin/clients", None).await;
    seen.push(("admin list clients", r, 200, "client.list"));
    let r = request("GET", &format!("{}/admin/clients", gw.admin_url()), &[], None).await;
    seen.push(("admin without token", r, 401, "client.list"));
    let jwks: Value =
        serde_json::from_slice(&std::fs::read(gw.dir().join(format!("keys/{CLIENT}.jwks.json"))).unwrap())
            .unwrap();
    let new_client = serde_json::json!({"client_id": "audit-new-ehr", "organization": "Organization/org-valley",
        "npi": "1637458922", "jwks": jwks, "scopes": ["system/*.read"]});
    let r = gw.admin("POST", "/admin/clients", Some(&new_client)).await;
    seen.push(("admin create client", r, 201, "client.create"));
    let r = gw.admin("DELETE", "/admin/clients/no-such-client", None).await;
    seen.push(("admin delete unknown client", r, 404, "client.delete"));
    let r = gw.admin("GET", &format!("/admin/audit?patient={PATIENT}"), None).await;
    seen.push(("admin audit query", r, 200, "audit.query"));
    // Probes are not audited (load balancers poll them).
    get(&format!("{}/healthz", gw.admin_url())).await.assert_status(200);

    gw.stop();
    let dir = gw.audit_dir();
    assert_verifies(&dir);
    let recs = read_log(&dir);
    let mut by_id: BTreeMap<String, Vec<&Rec>> = BTreeMap::new();
    for r in &recs {
        by_id.entry(r.id().to_owned()).or_default().push(r);
    }
    for (what, resp, status, subtype) in &seen {
        assert_eq!(resp.status, *status, "{what}: {}", resp.text());
        let id = request_id(resp);
        let found = by_id.get(&id).unwrap_or_else(|| panic!("{what}: no record for request id {id}"));
        assert_eq!(found.len(), 1, "{what}: {} records for one request", found.len());
        let rec = found[0];
        assert_eq!(rec.detail("status").as_deref(), Some(status.to_string().as_str()), "{what}");
        assert_eq!(rec.subtype(), *subtype, "{what}: {}", rec.event);
        let outcome = match status {
            200..=399 => "0",
            400..=499 => "4",
            502 => "8",
            _ => "12",
        };
        assert_eq!(rec.event["outcome"], outcome, "{what}");
    }
    // Who: the verified client with its organization and NPI; a refused token
    // request names the client it claimed, unauthenticated.
    let rec = |what: &str| by_id[&request_id(&seen.iter().find(|s| s.0 == what).unwrap().1)][0];
    let read = rec("read");
    assert_eq!(read.requestor(), Some(CLIENT));
    assert_eq!(read.detail("authenticated").as_deref(), Some("true"));
    let org = read.event["agent"].as_array().unwrap().iter().find(|a| a["who"]["reference"] == ORG).unwrap();
    assert_eq!(org["who"]["identifier"]["value"], NPI);
    assert_eq!(read.event["agent"][0]["network"]["address"], "127.0.0.1");
    assert_eq!(read.patients("disclosed"), BTreeSet::from([format!("Patient/{PATIENT}")]));
    assert_eq!(rec("search").patients("disclosed"), BTreeSet::from([format!("Patient/{PATIENT}")]));
    assert!(rec("no token").patients("disclosed").is_empty());
    assert!(rec("upstream down").patients("disclosed").is_empty());
    assert_eq!(rec("upstream down").patients("requested"), BTreeSet::from([format!("Patient/{PATIENT}")]));
    let refused = rec("token refused");
    assert_eq!(refused.requestor(), Some(CLIENT));
    assert_eq!(refused.detail("authenticated").as_deref(), Some("false"));
    assert_eq!(rec("admin list clients").event["agent"][0]["who"]["identifier"]["value"], "admin");
    assert_eq!(rec("admin without token").event["agent"][0]["who"]["display"], "anonymous");
    assert_eq!(rec("admin create client").detail("client").as_deref(), Some("audit-new-ehr"));
    assert_eq!(rec("admin delete unknown client").detail("client").as_deref(), Some("no-such-client"));
    // The token fetched by `fhirwall token` at the start, the start and stop records.
    let tokens: Vec<&Rec> =
        recs.iter().filter(|r| r.subtype() == "110122" && r.event["outcome"] == "0").collect();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].requestor(), Some(CLIENT));
    assert_eq!(tokens[0].detail("scope").as_deref(), Some("system/*.read"));
    assert_eq!(recs.first().unwrap().subtype(), "110120", "first record: application start");
    assert_eq!(recs.last().unwrap().subtype(), "110121", "last record: application stop");
    // Nothing else: start + token + the requests above + stop.
    assert_eq!(
        recs.len(),
        seen.len() + 3,
        "records: {:#?}",
        recs.iter().map(|r| r.subtype()).collect::<Vec<_>>()
    );
    assert!(recs.iter().all(|r| r.event["resourceType"] == "AuditEvent"));
}

/// What the access filter and redaction withheld reaches the record as counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_entries_are_counted_per_reason() {
    let (mut gw, token) = start(GatewayConfig::new("sandbox"));
    // A payee EOB of a dependent not attributed to org-grace (facts.json
    // subscriber_visible_dependent_not): withheld by attribution.
    let hidden = get_bearer(&gw.url("ExplanationOfBenefit/eob-0010-1"), &token).await;
    hidden.assert_status(404);
    // pat-0009's EOBs: one is Part 2 (excluded), the rest lose their financial elements.
    let eobs = get_bearer(&gw.url("ExplanationOfBenefit?patient=Patient/pat-0009&_count=50"), &token).await;
    eobs.assert_status(200);
    // An opted-out member is invisible.
    gw.admin("PUT", "/admin/opt-outs/pat-0012", None).await.assert_status(204);
    let opted_out = get_bearer(&gw.url("Patient/pat-0012"), &token).await;
    opted_out.assert_status(404);
    gw.stop();
    let recs = read_log(&gw.audit_dir());
    let rec = |resp: &Resp| recs.iter().find(|r| r.id() == request_id(resp)).unwrap().clone();

    let r = rec(&hidden);
    assert_eq!(r.detail("suppressed.attribution").as_deref(), Some("1"), "{}", r.event);
    assert!(r.patients("disclosed").is_empty());
    let r = rec(&eobs);
    assert_eq!(r.patients("disclosed"), BTreeSet::from(["Patient/pat-0009".to_owned()]));
    let count = |name: &str| r.detail(name).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
    assert!(count("suppressed.part2") >= 1, "{}", r.event);
    assert!(count("redacted.financial") >= 1, "{}", r.event);
    let r = rec(&opted_out);
    assert!(r.patients("disclosed").is_empty(), "{}", r.event);
    assert_eq!(r.event["outcome"], "4");
    let put = recs.iter().find(|r| r.subtype() == "opt-out.put").unwrap();
    assert_eq!(put.patients("requested"), BTreeSet::from(["Patient/pat-0012".to_owned()]));
    assert_eq!(put.event["action"], "U");
}

// ---------------------------------------------------------------------------
// Tampering

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_the_first_bad_seq_for_each_kind_of_tampering() {
    let (mut gw, token) = start(GatewayConfig::new("sandbox").extra_toml("[audit]\nrotate_bytes = 8192\n"));
    for i in 0..30u32 {
        let path = if i.is_multiple_of(2) {
            format!("Patient/{PATIENT}")
        } else {
            "Coverage?beneficiary=pat-0006".into()
        };
        get_bearer(&gw.url(&path), &token).await.assert_status(200);
    }
    gw.stop();
    let dir = gw.audit_dir();
    let text = assert_verifies(&dir);
    let files = audit_files(&dir);
    assert!(files.len() >= 3, "expected rotated files, got {files:?}");
    // `--config` finds the same dir.
    let out = Command::new(fhirwall_bin())
        .args(["audit", "verify", "--config"])
        .arg(gw.config_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), text);

    let lines_of = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p).unwrap().lines().map(|l| format!("{l}\n")).collect()
    };
    let seq_of = |line: &str| serde_json::from_str::<Value>(line).unwrap()["seq"].as_u64().unwrap();
    let middle = files[1].clone();
    let middle_lines = lines_of(&middle);
    let middle_first = seq_of(&middle_lines[0]);
    assert!(middle_lines.len() >= 3);
    let last = files.last().unwrap().clone();
    let last_first = seq_of(&lines_of(&last)[0]);

    type Tamper = Box<dyn Fn(&Path)>;
    let rel = |p: &Path| p.file_name().unwrap().to_owned();
    let (m, l) = (rel(&middle), rel(&last));
    let edit_lines = |name: std::ffi::OsString, f: fn(&mut Vec<String>)| -> Tamper {
        Box::new(move |d: &Path| {
            let p = d.join(&name);
            let mut lines: Vec<String> =
                std::fs::read_to_string(&p).unwrap().lines().map(|l| format!("{l}\n")).collect();
            f(&mut lines);
            std::fs::write(&p, lines.concat()).unwrap();
        })
    };
    let cases: Vec<(&str, Tamper, u64)> = vec![
        (
            "one character of an event edited",
            edit_lines(m.clone(), |lines| {
                lines[1] = lines[1].replacen("\"outcome\":\"0\"", "\"outcome\":\"4\"", 1)
            }),
            middle_first + 1,
        ),
        ("a record removed", edit_lines(m.clone(), |lines| drop(lines.remove(1))), middle_first + 1),
        ("two records swapped", edit_lines(m.clone(), |lines| lines.swap(0, 1)), middle_first),
        (
            "a record inserted (a copy of its neighbour)",
            edit_lines(m.clone(), |lines| {
                let copy = lines[0].clone();
                lines.insert(1, copy)
            }),
            middle_first + 1,
        ),
        (
            "a rotated file truncated at a line boundary",
            edit_lines(m.clone(), |lines| lines.truncate(1)),
            middle_first + 1,
        ),
        (
            "the last file truncated mid-line",
            Box::new(move |d: &Path| {
                let p = d.join(&l);
                let bytes = std::fs::read(&p).unwrap();
                std::fs::write(&p, &bytes[..bytes.len() - 40]).unwrap();
            }),
            // The last record of the last file is the cut one.
            last_first + lines_of(&last).len() as u64 - 1,
        ),
        (
            "a rotated file deleted",
            Box::new({
                let m = m.clone();
                move |d: &Path| std::fs::remove_file(d.join(&m)).unwrap()
            }),
            middle_first,
        ),
    ];
    for (what, tamper, want) in cases {
        let copy = tempfile::tempdir().unwrap();
        for f in audit_files(&dir) {
            std::fs::copy(&f, copy.path().join(f.file_name().unwrap())).unwrap();
        }
        assert_verifies(copy.path());
        tamper(copy.path());
        assert_eq!(first_bad_seq(copy.path()), want, "{what}");
    }
}

// ---------------------------------------------------------------------------
// Crash

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_leaves_a_verifying_log_with_every_answered_request() {
    let (mut gw, token) = start(GatewayConfig::new("sandbox"));
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..16 {
        let (url_read, url_search) = (
            gw.url(&format!("Patient/{PATIENT}")),
            gw.url(&format!("ExplanationOfBenefit?patient=Patient/{PATIENT}&_count=5")),
        );
        let (token, stop, answered) = (token.clone(), stop.clone(), answered.clone());
        workers.push(tokio::spawn(async move {
            let client =
                reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let url = if (i + w).is_multiple_of(2) { &url_read } else { &url_search };
                i += 1;
                let Ok(resp) = client.get(url).bearer_auth(&token).send().await else { break };
                let status = resp.status();
                let id = resp.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned());
                // Only a response the client fully received counts.
                if resp.bytes().await.is_err() {
                    break;
                }
                if status.is_success() {
                    answered.lock().unwrap().push(id.expect("2xx without X-Request-Id"));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kill_9(&gw);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() > 50, "only {} responses before the kill", answered.len());

    let dir = gw.audit_dir();
    // Straight after the crash: intact (a write interrupted mid-line would
    // show as an incomplete final line, which the restart moves aside).
    let (code, text) = verify(&dir);
    assert!(code == 0 || text.contains("incomplete final line"), "after kill -9:\n{text}");
    let ids: BTreeSet<String> = read_log_tolerant(&dir).iter().map(|r| r.id().to_owned()).collect();
    let missing: Vec<&String> = answered.iter().filter(|id| !ids.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered requests have no record: {missing:?}",
        missing.len(),
        answered.len()
    );

    // A power cut can also leave half a line: simulate it, verify names it,
    // and the restart moves it aside so the chain verifies and continues.
    let last = audit_files(&dir).pop().unwrap();
    let next_seq = read_log_tolerant(&dir).last().unwrap().seq + 1;
    let mut f = std::fs::OpenOptions::new().append(true).open(&last).unwrap();
    std::io::Write::write_all(&mut f, format!("{{\"seq\":{next_seq},\"prev\":\"00").as_bytes()).unwrap();
    drop(f);
    assert_eq!(first_bad_seq(&dir), next_seq);
    gw.restart();
    get_bearer(&gw.url(&format!("Patient/{PATIENT}")), &token).await.assert_status(200);
    gw.stop();
    assert_verifies(&dir);
    let recs = read_log(&dir);
    let restart = recs.iter().rev().find(|r| r.subtype() == "110120").unwrap();
    assert!(restart.detail("recovered.torn-bytes").is_some(), "{}", restart.event);
    assert!(
        std::fs::read_dir(&dir).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".torn-")),
        "the torn tail is kept aside"
    );
    let ids: BTreeSet<&str> = recs.iter().map(Rec::id).collect();
    assert!(answered.iter().all(|id| ids.contains(id.as_str())));
}

/// Like [`read_log`] but stops at an incomplete final line.
fn read_log_tolerant(dir: &Path) -> Vec<Rec> {
    let mut recs = Vec::new();
    for file in audit_files(dir) {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let v: Value = serde_json::from_str(line).unwrap();
            recs.push(Rec { seq: v["seq"].as_u64().unwrap(), event: v["event"].clone() });
        }
    }
    recs.sort_by_key(|r| r.seq);
    recs
}

// ---------------------------------------------------------------------------
// PHI

/// Names, birth dates, identifiers, phones and address lines of every
/// Patient in the synthetic dataset.
fn dataset_phi() -> (BTreeSet<String>, BTreeSet<String>) {
    let mut words = BTreeSet::new();
    let mut strings = BTreeSet::new();
    let text = std::fs::read_to_string(payer_dataset()).unwrap();
    for line in text.lines().filter(|l| l.contains("\"resourceType\":\"Patient\"")) {
        let p: Value = serde_json::from_str(line).unwrap();
        for name in p["name"].as_array().into_iter().flatten() {
            let parts =
                name["given"].as_array().into_iter().flatten().chain(std::iter::once(&name["family"]));
            for part in parts.filter_map(Value::as_str).filter(|s| s.len() >= 3) {
                words.insert(part.to_owned());
            }
        }
        if let Some(d) = p["birthDate"].as_str() {
            strings.insert(d.to_owned());
        }
        for v in ["identifier", "telecom"] {
            for item in p[v].as_array().into_iter().flatten() {
                if let Some(value) = item["value"].as_str() {
                    strings.insert(value.to_owned());
                }
            }
        }
        for address in p["address"].as_array().into_iter().flatten() {
            for line in address["line"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                strings.insert(line.to_owned());
            }
        }
    }
    assert!(words.len() > 100 && strings.len() > 300, "dataset PHI not found");
    (words, strings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_phi_in_the_log() {
    let facts: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("examples/dataset/facts.json")).unwrap(),
    )
    .unwrap();
    let p = &facts["patients"][PATIENT];
    let (family, given, birth, member) = (
        p["name"]["family"].as_str().unwrap(),
        p["name"]["given"][0].as_str().unwrap(),
        p["birthDate"].as_str().unwrap(),
        p["member_id"].as_str().unwrap(),
    );
    let (mut gw, token) = start(GatewayConfig::new("sandbox"));
    let bearer = format!("Bearer {token}");
    // PHI in search values, in refused syntax, in a body, and in responses.
    let queries = [
        format!("Patient?family={family}&birthdate={birth}"),
        format!("Patient?name={given}%20{family}"),
        format!("Patient?identifier=http://example.org/fhirwall/member-id|{member}"),
        format!("Coverage?identifier={member}"),
        format!("Patient?_has:Observation:patient:code={family}"),
        format!("Patient?_filter=family%20eq%20{family}"),
        format!("Patient/{PATIENT}"),
        format!("Patient/{PATIENT}/Coverage"),
        format!("ExplanationOfBenefit?patient=Patient/{PATIENT}"),
    ];
    for q in &queries {
        get_bearer(&gw.url(q), &token).await;
    }
    let body = serde_json::json!({
        "resourceType": "Parameters",
        "parameter": [{"name": "MemberPatient", "resource": {"resourceType": "Patient",
            "name": [{"family": family, "given": [given]}], "birthDate": birth}}]
    });
    post_json(&gw.url("Patient/$member-match"), &[("Authorization", &bearer)], &body).await;
    gw.admin("PUT", &format!("/admin/opt-outs/{PATIENT}"), Some(&serde_json::json!({"reason": family})))
        .await;
    gw.stop();

    let log = log_text(&gw.audit_dir());
    assert!(log.contains(&format!("\"Patient/{PATIENT}\"")), "the patient id is recorded");
    let (words, strings) = dataset_phi();
    let tokens: BTreeSet<&str> =
        log.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).collect();
    let leaked_words: Vec<&String> = words.iter().filter(|w| tokens.contains(w.as_str())).collect();
    let leaked: Vec<&String> = strings.iter().filter(|s| log.contains(s.as_str())).collect();
    assert!(
        leaked_words.is_empty() && leaked.is_empty(),
        "PHI in the audit log: {leaked_words:?} {leaked:?}"
    );
}

// ---------------------------------------------------------------------------
// Rotation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_continues_the_chain_across_files_and_restarts() {
    let (mut gw, token) = start(GatewayConfig::new("sandbox").extra_toml("[audit]\nrotate_bytes = 4096\n"));
    for _ in 0..20 {
        get_bearer(&gw.url(&format!("Patient/{PATIENT}")), &token).await.assert_status(200);
    }
    gw.restart();
    for _ in 0..10 {
        get_bearer(&gw.url(&format!("Patient/{PATIENT}")), &token).await.assert_status(200);
    }
    gw.stop();
    let dir = gw.audit_dir();
    let files = audit_files(&dir);
    assert!(files.len() >= 5, "{files:?}");
    assert_verifies(&dir);
    // Each file starts where its name says, and links to the previous file's last hash.
    let mut prev = "0".repeat(64);
    let mut next = 1;
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let first: u64 = name.trim_start_matches("audit-").trim_end_matches(".ndjson").parse().unwrap();
        assert_eq!(first, next, "{name}");
        for line in std::fs::read_to_string(f).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["seq"], next);
            assert_eq!(v["prev"], prev);
            prev = v["hash"].as_str().unwrap().to_owned();
            next += 1;
        }
    }
    let recs = read_log(&dir);
    // start, token, 20 reads, stop, start, 10 reads, stop.
    assert_eq!(recs.len(), 35);
}

// ---------------------------------------------------------------------------
// Fail closed

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_record_cannot_be_written_fails_closed() {
    // The audit dir has directories where the rotated files would go: the
    // first rotation fails, and so does every request after it.
    let audit = tempfile::tempdir().unwrap();
    for seq in 2..400 {
        std::fs::create_dir(audit.path().join(format!("audit-{seq:012}.ndjson"))).unwrap();
    }
    let (mut gw, token) = start(GatewayConfig::new("sandbox").extra_toml(&format!(
        "[audit]\ndir = {:?}\nrotate_bytes = 4096\n",
        audit.path().display().to_string()
    )));
    let mut ok = Vec::new();
    let mut failed = 0;
    for _ in 0..20 {
        let r = get_bearer(&gw.url(&format!("Patient/{PATIENT}")), &token).await;
        match r.status {
            200 => {
                assert_eq!(failed, 0, "a 200 after an audit failure");
                ok.push(request_id(&r));
            }
            503 => {
                let oo = assert_operation_outcome(&r);
                assert!(oo.to_string().contains("audit"), "{oo}");
                assert!(!r.text().contains("Grantham"), "no patient data in the failure");
                failed += 1;
            }
            s => panic!("unexpected status {s}: {}", r.text()),
        }
    }
    assert!(failed > 0 && !ok.is_empty(), "ok {}, failed {failed}", ok.len());
    // Admin calls fail closed too.
    gw.admin("GET", "/admin/clients", None).await.assert_status(503);
    // Operators see it in the metrics.
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    let failures: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fhirwall_audit_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no fhirwall_audit_failures_total in:\n{metrics}"));
    assert!(failures >= failed, "{failures} failures counted for {failed} failed requests");
    gw.stop();
    let recs = read_log(audit.path());
    let ids: BTreeSet<&str> = recs.iter().map(Rec::id).collect();
    assert!(ok.iter().all(|id| ids.contains(id.as_str())), "every 200 has its record");
    assert_verifies(audit.path());
}

// ---------------------------------------------------------------------------
// Query

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_audit_and_cli_query_by_patient_client_and_since() {
    let other = "audit-other-ehr";
    let gw =
        Gateway::start(GatewayConfig::new("sandbox").client(CLIENT, ORG, NPI, &["system/*.read"]).client(
            other,
            "Organization/org-hopkins",
            "1526347814",
            &["system/*.read"],
        ));
    let t1 = gw.token(CLIENT, "system/*.read");
    let t2 = gw.token(other, "system/*.read");
    let before = Instant::now();
    let r1 = get_bearer(&gw.url(&format!("Patient/{PATIENT}")), &t1).await;
    let r2 = get_bearer(&gw.url("Coverage?beneficiary=Patient/pat-0006"), &t1).await;
    let r3 = get_bearer(&gw.url(&format!("ExplanationOfBenefit?patient={PATIENT}")), &t2).await;
    let ids = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                assert!(v["seq"].is_u64() && v["hash"].is_string(), "whole audit lines: {l}");
                v["event"]["id"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let admin_ids = |q: String| {
        let gw = &gw;
        async move {
            let r = gw.admin("GET", &format!("/admin/audit?{q}"), None).await;
            r.assert_status(200);
            assert_eq!(r.content_type(), Some("application/x-ndjson"));
            ids(&r.text())
        }
    };
    let (id1, id2, id3) = (request_id(&r1), request_id(&r2), request_id(&r3));
    assert_eq!(admin_ids(format!("patient={PATIENT}")).await, [id1.clone(), id3.clone()]);
    assert_eq!(admin_ids(format!("patient=Patient/{PATIENT}")).await, [id1.clone(), id3.clone()]);
    assert_eq!(admin_ids("patient=pat-0006".into()).await, std::slice::from_ref(&id2));
    assert_eq!(admin_ids(format!("patient={PATIENT}&client={other}")).await, std::slice::from_ref(&id3));
    let by_client = admin_ids(format!("client={CLIENT}")).await;
    assert!(by_client.contains(&id1) && by_client.contains(&id2) && !by_client.contains(&id3));
    assert_eq!(by_client.len(), 3, "token + two requests: {by_client:?}");
    // since: a date, an instant in the future, an instant before the requests.
    let today = time_now_date();
    assert!(admin_ids(format!("since={today}&patient={PATIENT}")).await.len() == 2);
    assert!(admin_ids("since=2999-01-01T00:00:00Z".into()).await.is_empty());
    let earlier = admin_ids("since=2000-01-01T00:00:00%2B02:00".into()).await;
    assert!(earlier.contains(&id1) && earlier.contains(&id3));
    let _ = before;
    // Bad filters are 400; without the admin token 401.
    for q in ["since=yesterday", "patient=a%20b", "bogus=1", "limit=0"] {
        gw.admin("GET", &format!("/admin/audit?{q}"), None).await.assert_status(400);
    }
    request("GET", &format!("{}/admin/audit?patient={PATIENT}", gw.admin_url()), &[], None)
        .await
        .assert_status(401);
    // Paging: limit + X-Audit-Next-After.
    let r = gw.admin("GET", "/admin/audit?limit=2", None).await;
    assert_eq!(r.text().lines().count(), 2);
    let after = r.header("x-audit-next-after").expect("more to come").to_owned();
    let next = gw.admin("GET", &format!("/admin/audit?limit=2&after={after}"), None).await;
    let first_next: Value = serde_json::from_str(next.text().lines().next().unwrap()).unwrap();
    assert_eq!(first_next["seq"].as_u64().unwrap(), after.parse::<u64>().unwrap() + 1);

    // The CLI answers the same lines.
    let out = Command::new(fhirwall_bin())
        .args(["audit", "query", "--patient", PATIENT, "--dir"])
        .arg(gw.audit_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ids(&String::from_utf8_lossy(&out.stdout)), [id1.clone(), id3]);
    let out = Command::new(fhirwall_bin())
        .args(["audit", "query", "--client", CLIENT, "--since", &today, "--config"])
        .arg(gw.config_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli = ids(&String::from_utf8_lossy(&out.stdout));
    assert!(cli.contains(&id1) && cli.contains(&id2));
    let out = Command::new(fhirwall_bin())
        .args(["audit", "query", "--since", "June", "--dir"])
        .arg(gw.audit_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Today's UTC date, `YYYY-MM-DD` (from `date -u`).
fn time_now_date() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%d"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A bare hash chain cannot see records cut from its end, or a chain rewritten
/// with recomputed hashes; an anchor taken from `GET /admin/audit/head` and
/// kept elsewhere can.
#[tokio::test]
async fn anchors_from_the_head_endpoint_catch_a_cut_tail() {
    let (mut gw, token) = start(GatewayConfig::new("sandbox"));
    for _ in 0..5 {
        get_bearer(&gw.url(&format!("Patient/{PATIENT}")), &token).await.assert_status(200);
    }
    let head = gw.admin("GET", "/admin/audit/head", None).await;
    head.assert_status(200);
    let head = head.json();
    let (seq, hash) = (head["seq"].as_u64().unwrap(), head["hash"].as_str().unwrap().to_owned());
    assert!(seq >= 5, "{head}");
    assert_eq!(head["anchor"], format!("{seq}:{hash}"));
    // The head is durable: the log holds that record with that hash.
    let recs = read_log(&gw.audit_dir());
    assert!(recs.iter().any(|r| r.seq == seq), "seq {seq} not in the log");
    let line = log_text(&gw.audit_dir())
        .lines()
        .find(|l| l.contains(&format!("\"seq\":{seq},")))
        .unwrap()
        .to_owned();
    assert!(line.contains(&hash), "{line}");
    gw.stop();

    let dir = gw.audit_dir();
    let anchored = |anchor: &str| {
        let out = Command::new(fhirwall_bin())
            .args(["audit", "verify", "--anchor", anchor, "--dir"])
            .arg(&dir)
            .output();
        let out = out.unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    };
    let anchor = format!("{seq}:{hash}");
    let (code, text) = anchored(&anchor);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("1 anchors held"), "{text}");
    // Cut every record from the anchored one on, at a line boundary.
    let file = audit_files(&dir).pop().unwrap();
    let kept: String = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .take_while(|l| !l.contains(&format!("\"seq\":{seq},")))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, kept).unwrap();
    assert_verifies(&dir);
    let (code, text) = anchored(&anchor);
    assert_eq!(code, 1, "a cut tail went unnoticed with its anchor:\n{text}");
    assert!(text.contains("cut from the end") && text.contains(&format!("first bad seq: {seq}")), "{text}");
    // A malformed anchor is a usage error, not a verdict.
    assert_eq!(anchored("12:nothex").0, 2);
}
