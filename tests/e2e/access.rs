//! End-to-end tests of access control: attribution scoping and
//! opt-out suppression on every interaction, with the real `fhirwall` binary in
//! front of real upstreams — the built-in sandbox, Medplum with the synthetic
//! payer dataset, and an upstream written here that ignores every search
//! parameter (it answers every search with all the data of the type), so the
//! response filter is tested on its own, without the narrowing's help.
//!
//! "No byte of hidden data" is checked the same way everywhere: from
//! `examples/dataset/payer.ndjson` (+ `facts.json`), every token (ids, member
//! ids, names, dates, phone numbers, ...) that occurs only in resources of
//! patients the caller may not see must not occur in a response body or header.
//! The adversarial corpus lives in `tests/e2e/corpus/access.toml`.

use fhirwall_testkit as support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const SCOPE: &str = "system/*.read";

/// The provider clients every test may call as: name -> (client id, organization, NPI).
const CLIENTS: &[(&str, &str, &str, &str)] = &[
    ("grace", "grace-ehr", "Organization/org-grace", "1417987256"),
    ("hopkins", "hopkins-ehr", "Organization/org-hopkins", "1526347814"),
    ("valley", "valley-ehr", "Organization/org-valley", "1637458922"),
    ("nobody", "nobody-ehr", "Organization/org-nobody", "1111111111"),
];

// ---------------------------------------------------------------------------
// The dataset and what each organization may see

fn facts() -> &'static Value {
    static FACTS: OnceLock<Value> = OnceLock::new();
    FACTS.get_or_init(|| {
        let text = std::fs::read_to_string(repo_root().join("examples/dataset/facts.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

/// The patients `org` (`org-grace`) may see, per facts.json.
fn visible(org: &str) -> HashSet<String> {
    facts()["attribution"][org]["visible"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// Who owns a resource of the dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Nobody,
    Patient(String),
    /// An attribution Group, by managing organization id.
    Group(String),
}

struct DatasetResource {
    owner: Owner,
    tokens: HashSet<String>,
    /// A Patient or Group: its name-like words count as hidden data too.
    is_person_list: bool,
}

/// Runs of `[A-Za-z0-9-]`: ids, member ids, dates, names, numbers.
fn tokens(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).filter(|t| !t.is_empty())
}

fn dataset() -> &'static Vec<DatasetResource> {
    static DATA: OnceLock<Vec<DatasetResource>> = OnceLock::new();
    DATA.get_or_init(|| {
        let provenance: HashMap<String, String> = facts()["provenance"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (p["provenance"].as_str().unwrap().to_owned(), p["patient"].as_str().unwrap().to_owned())
            })
            .collect();
        let text = std::fs::read_to_string(payer_dataset()).unwrap();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let r: Value = serde_json::from_str(line).unwrap();
                let t = r["resourceType"].as_str().unwrap();
                let id = r["id"].as_str().unwrap();
                let key = format!("{t}/{id}");
                let patient_ref = ["patient", "subject", "beneficiary"]
                    .iter()
                    .find_map(|k| r[*k]["reference"].as_str())
                    .and_then(|r| r.strip_prefix("Patient/"))
                    .map(str::to_owned);
                let owner = match t {
                    "Patient" => Owner::Patient(id.to_owned()),
                    "Group" => Owner::Group(
                        r["managingEntity"]["reference"]
                            .as_str()
                            .unwrap()
                            .trim_start_matches("Organization/")
                            .into(),
                    ),
                    "Provenance" => Owner::Patient(provenance[&key].clone()),
                    _ => patient_ref.map(Owner::Patient).unwrap_or(Owner::Nobody),
                };
                DatasetResource {
                    tokens: tokens(line).map(str::to_owned).collect(),
                    owner,
                    is_person_list: t == "Patient" || t == "Group",
                }
            })
            .collect()
    })
}

/// The tokens `org` must never receive when it sees exactly `visible`: those
/// that occur in some resource of a hidden patient (or of another
/// organization's Group) and in no resource the organization may see. Kept:
/// tokens of at least 5 characters with a digit (ids, dates, member ids,
/// phones) and name/address words of hidden Patient resources.
fn forbidden_tokens(org: &str, visible: &HashSet<String>) -> HashSet<String> {
    let mut shared: HashSet<&str> = HashSet::new();
    let mut hidden: HashMap<&str, bool> = HashMap::new();
    let hidden_patient = |t: &str| facts()["patients"].get(t).is_some() && !visible.contains(t);
    for r in dataset() {
        let is_hidden = match &r.owner {
            Owner::Nobody => false,
            Owner::Patient(p) => !visible.contains(p),
            // The caller's own Group is shared except for the ids of members it
            // may not see (inactive, expired, future, opted out): those must go.
            Owner::Group(o) if o == org => {
                shared.extend(r.tokens.iter().map(String::as_str).filter(|t| !hidden_patient(t)));
                continue;
            }
            Owner::Group(_) => true,
        };
        for t in &r.tokens {
            if is_hidden {
                let from_person_list = hidden.entry(t.as_str()).or_insert(false);
                *from_person_list |= r.is_person_list;
            } else {
                shared.insert(t.as_str());
            }
        }
    }
    hidden
        .into_iter()
        .filter(|(t, _)| !shared.contains(t))
        .filter(|(t, from_person_list)| {
            (t.len() >= 5 && t.bytes().any(|b| b.is_ascii_digit()))
                || (*from_person_list
                    && t.len() >= 4
                    && t.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-'))
        })
        .map(|(t, _)| t.to_owned())
        .collect()
}

fn forbidden_for(org: &str) -> &'static HashSet<String> {
    static CACHE: OnceLock<Mutex<HashMap<String, &'static HashSet<String>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap();
    cache.entry(org.to_owned()).or_insert_with(|| Box::leak(Box::new(forbidden_tokens(org, &visible(org)))))
}

/// The body with the Bundle's `self` link removed (it echoes the caller's own
/// query), as text to scan.
fn scannable(body: &[u8]) -> String {
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        return String::from_utf8_lossy(body).into_owned();
    };
    if let Some(links) = value.get_mut("link").and_then(Value::as_array_mut) {
        links.retain(|l| l["relation"] != "self");
    }
    value.to_string()
}

/// Panics with context when a forbidden token appears in the body or headers.
fn hidden_leak(resp: &Resp, forbidden: &HashSet<String>) -> Option<String> {
    let mut text = scannable(&resp.body);
    for (name, value) in resp.headers.iter() {
        text.push('\n');
        text.push_str(name.as_str());
        text.push_str(value.to_str().unwrap_or(""));
    }
    let leaked: Vec<&str> = tokens(&text).filter(|t| forbidden.contains(*t)).collect();
    if leaked.is_empty() {
        return None;
    }
    let first = leaked[0];
    let at = text.find(first).unwrap_or(0);
    let start = text[..at].char_indices().rev().nth(150).map(|(i, _)| i).unwrap_or(0);
    let end = (at + 150).min(text.len());
    let end = (end..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
    Some(format!("hidden tokens {leaked:?} in the answer, e.g. …{}…", &text[start..end]))
}

#[track_caller]
fn assert_no_hidden(resp: &Resp, org: &str, what: &str) {
    if let Some(leak) = hidden_leak(resp, forbidden_for(org)) {
        panic!("{what}: {leak}");
    }
}

/// `needle` as a whole token when it is one, else as a substring.
fn body_has(text: &str, needle: &str) -> bool {
    if tokens(needle).count() == 1 && tokens(needle).next() == Some(needle) {
        tokens(text).any(|t| t == needle)
    } else {
        text.contains(needle)
    }
}

// ---------------------------------------------------------------------------
// An upstream that ignores every search parameter

/// A raw-TCP FHIR server over the payer dataset that answers every search
/// with *all* resources of the type (500 per page, `total` = all), adds every
/// Patient and Provenance as "includes" when the query has `_include` or
/// `_revinclude`, answers Group searches with every Group whatever
/// `managing-entity` says, and serves reads, vreads and history. The test can
/// replace resources and make Group searches fail.
struct IgnoringUpstream {
    addr: SocketAddr,
    data: Arc<RwLock<FakeData>>,
    fail_groups: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
}

#[derive(Default)]
struct FakeData {
    order: BTreeMap<String, Vec<String>>,
    by_key: HashMap<String, String>,
}

const FAKE_PAGE: usize = 500;

impl IgnoringUpstream {
    fn start() -> IgnoringUpstream {
        let mut data = FakeData::default();
        for line in std::fs::read_to_string(payer_dataset()).unwrap().lines().filter(|l| !l.trim().is_empty())
        {
            let r: Value = serde_json::from_str(line).unwrap();
            let t = r["resourceType"].as_str().unwrap().to_owned();
            let id = r["id"].as_str().unwrap().to_owned();
            data.order.entry(t.clone()).or_default().push(id.clone());
            data.by_key.insert(format!("{t}/{id}"), r.to_string());
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let up = IgnoringUpstream {
            addr,
            data: Arc::new(RwLock::new(data)),
            fail_groups: Arc::new(AtomicBool::new(false)),
            seen: Arc::new(Mutex::new(Vec::new())),
        };
        let (data, fail, seen) = (up.data.clone(), up.fail_groups.clone(), up.seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (data, fail, seen) = (data.clone(), fail.clone(), seen.clone());
                std::thread::spawn(move || serve_ignoring(stream, addr, &data, &fail, &seen));
            }
        });
        up
    }

    fn base(&self) -> String {
        format!("http://{}/fhir", self.addr)
    }

    /// Replace (or add) a resource.
    fn put(&self, resource: &Value) {
        let t = resource["resourceType"].as_str().unwrap().to_owned();
        let id = resource["id"].as_str().unwrap().to_owned();
        let mut data = self.data.write().unwrap();
        let key = format!("{t}/{id}");
        if !data.by_key.contains_key(&key) {
            data.order.entry(t).or_default().push(id);
        }
        data.by_key.insert(key, resource.to_string());
    }

    fn get(&self, key: &str) -> Value {
        serde_json::from_str(&self.data.read().unwrap().by_key[key]).unwrap()
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve_ignoring(
    mut stream: TcpStream,
    addr: SocketAddr,
    data: &RwLock<FakeData>,
    fail_groups: &AtomicBool,
    seen: &Mutex<Vec<String>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut head = String::new();
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; content_length];
    let _ = reader.read_exact(&mut body);
    seen.lock().unwrap().push(head.lines().next().unwrap_or("").to_owned());
    let mut parts = head.split(' ');
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let base = format!("http://{addr}/fhir");
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let path = path.strip_prefix("/fhir/").unwrap_or("");
    let segments: Vec<&str> = path.split('/').collect();
    let data = data.read().unwrap();
    let (status, body) = match (method.as_str(), segments.as_slice()) {
        ("GET", ["metadata"]) => (
            "200 OK",
            json!({"resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
                   "fhirVersion": "4.0.1", "format": ["json"], "date": "2025-01-01"})
            .to_string(),
        ),
        ("GET", ["Group"]) | ("POST", ["Group", "_search"]) if fail_groups.load(Ordering::SeqCst) => (
            "500 Internal Server Error",
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"fatal","code":"exception"}]}"#.into(),
        ),
        ("GET", [t]) | ("POST", [t, "_search"]) => {
            let query =
                if method == "POST" { String::from_utf8_lossy(&body).into_owned() } else { query.to_owned() };
            ("200 OK", search_all(&data, &base, t, &query))
        }
        ("GET", [t, id]) | ("GET", [t, id, "_history", _]) => match data.by_key.get(&format!("{t}/{id}")) {
            Some(r) => ("200 OK", r.clone()),
            None => not_found(),
        },
        ("GET", [t, id, "_history"]) => match data.by_key.get(&format!("{t}/{id}")) {
            Some(r) => (
                "200 OK",
                format!(
                    r#"{{"resourceType":"Bundle","type":"history","total":1,"entry":[{{"fullUrl":"{base}/{t}/{id}","resource":{r},"request":{{"method":"PUT","url":"{t}/{id}"}}}}]}}"#
                ),
            ),
            None => not_found(),
        },
        _ => not_found(),
    };
    let status = if status == "404" { "404 Not Found" } else { status };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

fn not_found() -> (&'static str, String) {
    ("404", r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}"#.into())
}

/// Every resource of the type, whatever the query says.
fn search_all(data: &FakeData, base: &str, resource_type: &str, query: &str) -> String {
    let page: usize = query
        .split('&')
        .find_map(|p| p.strip_prefix("_fakepage="))
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let ids = data.order.get(resource_type).cloned().unwrap_or_default();
    let mut entries: Vec<String> = ids
        .iter()
        .skip((page - 1) * FAKE_PAGE)
        .take(FAKE_PAGE)
        .map(|id| {
            format!(
                r#"{{"fullUrl":"{base}/{resource_type}/{id}","resource":{},"search":{{"mode":"match"}}}}"#,
                data.by_key[&format!("{resource_type}/{id}")]
            )
        })
        .collect();
    if page == 1 && (query.contains("_include") || query.contains("_revinclude")) {
        for t in ["Patient", "Provenance"] {
            for id in data.order.get(t).into_iter().flatten() {
                entries.push(format!(
                    r#"{{"fullUrl":"{base}/{t}/{id}","resource":{},"search":{{"mode":"include"}}}}"#,
                    data.by_key[&format!("{t}/{id}")]
                ));
            }
        }
    }
    let mut links = vec![format!(r#"{{"relation":"self","url":"{base}/{resource_type}?{query}"}}"#)];
    if page * FAKE_PAGE < ids.len() {
        links.push(format!(r#"{{"relation":"next","url":"{base}/{resource_type}?_fakepage={}"}}"#, page + 1));
    }
    format!(
        r#"{{"resourceType":"Bundle","type":"searchset","total":{},"link":[{}],"entry":[{}]}}"#,
        ids.len(),
        links.join(","),
        entries.join(",")
    )
}

// ---------------------------------------------------------------------------
// Gateways and clients

struct Fixture {
    gw: Gateway,
    tokens: HashMap<&'static str, String>,
    upstream_base: String,
}

impl Fixture {
    fn start(upstream_base: &str, extra_toml: &str) -> Fixture {
        let mut config = GatewayConfig::new(upstream_base).extra_toml(extra_toml);
        for (_, id, org, npi) in CLIENTS {
            config = config.client(id, org, npi, &[SCOPE]);
        }
        let gw = Gateway::start(config);
        let tokens = CLIENTS.iter().map(|(name, id, _, _)| (*name, gw.token(id, SCOPE))).collect();
        Fixture { gw, tokens, upstream_base: upstream_base.trim_end_matches('/').to_owned() }
    }

    fn token(&self, who: &str) -> &str {
        &self.tokens[who]
    }

    async fn get(&self, who: &str, path: &str) -> Resp {
        get_bearer(&self.gw.url(path), self.token(who)).await
    }

    async fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        self.gw.admin(method, path, body).await
    }
}

fn org_of(who: &str) -> &'static str {
    CLIENTS.iter().find(|c| c.0 == who).map(|c| c.2.trim_start_matches("Organization/")).unwrap()
}

/// Send bytes as written (no client-side normalisation) and read the answer.
fn raw_request(addr: SocketAddr, request: &[u8]) -> Resp {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4).unwrap_or(out.len());
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut headers = reqwest::header::HeaderMap::new();
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':')
            && let (Ok(k), Ok(v)) =
                (reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()), v.trim().parse())
        {
            headers.append(k, v);
        }
    }
    Resp { status, headers, body: out[split..].to_vec() }
}

// ---------------------------------------------------------------------------
// The corpus

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    case: Vec<Case>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(rename = "as")]
    who: String,
    #[serde(default = "get_method")]
    method: String,
    path: String,
    #[serde(default)]
    raw: bool,
    #[serde(default)]
    form: Option<String>,
    #[serde(default)]
    json: Option<String>,
    #[serde(default)]
    headers: Vec<String>,
    expect: Vec<u16>,
    #[serde(default)]
    contains: Vec<String>,
    #[serde(default)]
    absent: Vec<String>,
    #[serde(default)]
    skip: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

fn get_method() -> String {
    "GET".into()
}

fn corpus() -> Vec<Case> {
    let text = std::fs::read_to_string(repo_root().join("tests/e2e/corpus/access.toml")).unwrap();
    let corpus: Corpus = toml::from_str(&text).expect("tests/e2e/corpus/access.toml");
    corpus.case
}

async fn send_case(f: &Fixture, case: &Case) -> Resp {
    let path = case.path.replace("{gw}", &f.gw.base_url()).replace("{up}", &f.upstream_base);
    let token = f.token(&case.who);
    let (body, content_type) = match (&case.form, &case.json) {
        (Some(form), _) => (Some(form.clone().into_bytes()), Some("application/x-www-form-urlencoded")),
        (None, Some(json)) => (Some(json.clone().into_bytes()), Some("application/fhir+json")),
        (None, None) => (None, None),
    };
    if case.raw {
        let target = if path.is_empty() { "/fhir".to_owned() } else { format!("/fhir/{path}") };
        let mut request = format!(
            "{} {target} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nAccept: application/fhir+json\r\nConnection: close\r\n",
            case.method,
            f.gw.listen_addr()
        );
        for h in &case.headers {
            request.push_str(h);
            request.push_str("\r\n");
        }
        if let Some(ct) = content_type {
            request.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        let body = body.unwrap_or_default();
        request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = request.into_bytes();
        bytes.extend(body);
        let addr = f.gw.listen_addr();
        return tokio::task::spawn_blocking(move || raw_request(addr, &bytes)).await.unwrap();
    }
    let url = if path.is_empty() { f.gw.base_url() } else { f.gw.url(&path) };
    let auth = format!("Bearer {token}");
    let mut headers: Vec<(String, String)> =
        vec![("Authorization".into(), auth), ("Accept".into(), "application/fhir+json".into())];
    for h in &case.headers {
        let (k, v) = h.split_once(':').expect("header Name: value");
        headers.push((k.trim().into(), v.trim().into()));
    }
    if let Some(ct) = content_type {
        headers.push(("Content-Type".into(), ct.into()));
    }
    let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    request(&case.method, &url, &refs, body).await
}

/// Run every corpus case; returns the failures.
/// Stored rosters the corpus's Group cases refer to: one of org-hopkins and one
/// of org-valley, each naming a patient the other organizations may not see.
async fn store_corpus_rosters(f: &Fixture) {
    for (id, org, patient) in [
        ("roster-hopkins-extra", "org-hopkins", "pat-0002"),
        ("roster-valley-extra", "org-valley", "pat-0005"),
    ] {
        let roster = json!({"resourceType": "Group", "id": id, "type": "person", "actual": true,
            "managingEntity": {"reference": format!("Organization/{org}")},
            "member": [{"entity": {"reference": format!("Patient/{patient}")}}]});
        f.admin("POST", "/admin/attribution", Some(&roster)).await.assert_status(200);
    }
}

async fn run_corpus(f: &Fixture, upstream: &str) -> (usize, Vec<String>) {
    store_corpus_rosters(f).await;
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in corpus() {
        if case.skip.iter().any(|s| s == upstream) {
            continue;
        }
        ran += 1;
        let resp = send_case(f, &case).await;
        let what = format!("[{upstream}] {} ({} {} as {})", case.name, case.method, case.path, case.who);
        let mut expected = case.expect.clone();
        if upstream == "medplum" && expected.contains(&200) {
            expected.push(400);
        }
        if !expected.contains(&resp.status) {
            failures.push(format!("{what}: status {} not in {expected:?}: {}", resp.status, resp.text()));
            continue;
        }
        if let Some(leak) = hidden_leak(&resp, forbidden_for(org_of(&case.who))) {
            failures.push(format!("{what}: {leak}"));
        }
        if resp.status >= 400 && case.method != "HEAD" {
            let is_outcome = resp.content_type().is_some_and(|c| c.starts_with("application/fhir+json"))
                && serde_json::from_slice::<Value>(&resp.body)
                    .is_ok_and(|v| v["resourceType"] == "OperationOutcome");
            if !is_outcome {
                failures.push(format!("{what}: error without an OperationOutcome: {}", resp.text()));
            }
        }
        if resp.status == 200 && case.method != "HEAD" {
            let text = scannable(&resp.body);
            for needle in &case.contains {
                if !body_has(&text, needle) {
                    failures.push(format!("{what}: {needle:?} missing from the answer"));
                }
            }
            for needle in &case.absent {
                if body_has(&text, needle) {
                    failures.push(format!("{what}: {needle:?} must not be in the answer"));
                }
            }
        }
    }
    (ran, failures)
}

#[track_caller]
fn assert_no_failures(ran: usize, failures: &[String]) {
    assert!(ran >= 60, "the corpus must hold at least 60 requests, ran {ran}");
    assert!(
        failures.is_empty(),
        "{} of {ran} corpus cases failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[tokio::test]
async fn corpus_against_the_sandbox() {
    let up = Upstream::sandbox();
    let f = Fixture::start(up.base_url(), "");
    let (ran, failures) = run_corpus(&f, "sandbox").await;
    assert_no_failures(ran, &failures);
}

#[tokio::test]
async fn corpus_against_an_upstream_that_ignores_every_search_parameter() {
    let up = IgnoringUpstream::start();
    let f = Fixture::start(&up.base(), "");
    let (ran, failures) = run_corpus(&f, "ignoring").await;
    assert_no_failures(ran, &failures);
}

#[tokio::test]
async fn corpus_against_medplum_with_the_payer_dataset() {
    let up = Upstream::medplum(&[&payer_dataset()]);
    let f = Fixture::start(up.base_url(), "");
    let (ran, failures) = run_corpus(&f, "medplum").await;
    assert_no_failures(ran, &failures);

    // Attribution refreshed on demand after the upstream's Group changed:
    // pat-0007 (in no Group) joins org-hopkins' list.
    assert_eq!(f.get("hopkins", "Patient/pat-0007").await.status, 404);
    let mut group =
        get_with(&up.url("Group/grp-hopkins"), &[("Accept", "application/fhir+json")]).await.json();
    group["member"].as_array_mut().unwrap().push(json!({"entity": {"reference": "Patient/pat-0007"}}));
    let put = request(
        "PUT",
        &up.url("Group/grp-hopkins"),
        &[("Content-Type", "application/fhir+json"), ("Accept", "application/fhir+json")],
        Some(serde_json::to_vec(&group).unwrap()),
    )
    .await;
    assert!(put.status == 200 || put.status == 201, "Medplum PUT Group: {put:?}");
    assert_eq!(f.get("hopkins", "Patient/pat-0007").await.status, 404, "cached until refreshed");
    f.admin("POST", "/admin/attribution/refresh", None).await.assert_status(200);
    f.get("hopkins", "Patient/pat-0007").await.assert_status(200);
    let coverage = f.get("hopkins", "Coverage?beneficiary=Patient/pat-0007").await;
    coverage.assert_status(200);
    assert!(body_has(&coverage.text(), "cov-0007"), "{}", coverage.text());

    // An opt-out holds on the next request, through Medplum too.
    f.admin("PUT", "/admin/opt-outs/pat-0002", Some(&json!({"reason": "member request"})))
        .await
        .assert_status(204);
    assert_eq!(f.get("hopkins", "Patient/pat-0002").await.status, 404);
    assert_eq!(f.get("hopkins", "ExplanationOfBenefit?patient=Patient/pat-0002").await.status, 403);
    let all = f.get("hopkins", "Coverage?_count=200").await;
    all.assert_status(200);
    assert!(!body_has(&scannable(&all.body), "cov-0002"));
    f.admin("DELETE", "/admin/opt-outs/pat-0002", None).await.assert_status(204);
    f.get("hopkins", "Patient/pat-0002").await.assert_status(200);
}

// ---------------------------------------------------------------------------
// Opt-out

#[tokio::test]
async fn opt_out_is_effective_on_the_next_request_everywhere_and_reversible() {
    let up = Upstream::sandbox();
    let f = Fixture::start(up.base_url(), "");
    // Before: hopkins sees pat-0002 everywhere.
    f.get("hopkins", "Patient/pat-0002").await.assert_status(200);
    let eobs = f.get("hopkins", "ExplanationOfBenefit?patient=Patient/pat-0002").await;
    eobs.assert_status(200);
    assert!(!bundle_resources(&eobs.json()).is_empty());
    // A paging link taken before the opt-out.
    let page = f.get("hopkins", "Coverage?_count=5").await.json();
    let next = bundle_link(&page, "next").expect("several pages of coverage");

    f.admin("PUT", "/admin/opt-outs/pat-0002", Some(&json!({"reason": "member request"})))
        .await
        .assert_status(204);
    let listed = f.admin("GET", "/admin/opt-outs", None).await;
    listed.assert_status(200);
    assert!(
        listed.json().as_array().unwrap().iter().any(|o| o["patient"] == "pat-0002"),
        "{}",
        listed.text()
    );

    // The very next requests: read 404, search 403, compartment 403, narrowed
    // searches and includes without any of pat-0002's data, Group without them.
    let mut hidden = visible("org-hopkins");
    hidden.remove("pat-0002");
    let forbidden = forbidden_tokens("org-hopkins", &hidden);
    assert!(forbidden.contains("pat-0002") && forbidden.contains("FW1000111-01"));
    for (path, status) in [
        ("Patient/pat-0002", 404),
        ("Patient/pat-0002/_history", 404),
        ("ExplanationOfBenefit/eob-0002-1", 404),
        ("ExplanationOfBenefit?patient=Patient/pat-0002", 403),
        ("Patient/pat-0002/Coverage", 403),
        ("Patient?_id=pat-0002,pat-0003", 403),
        ("Coverage?_count=100", 200),
        ("Patient?_count=100", 200),
        ("Group/grp-hopkins", 200),
        ("Group?_include=Group:member", 200),
        ("ExplanationOfBenefit?patient=Patient/pat-0003&_include=ExplanationOfBenefit:patient", 200),
    ] {
        let resp = f.get("hopkins", path).await;
        assert_eq!(resp.status, status, "{path}: {}", resp.text());
        if let Some(leak) = hidden_leak(&resp, &forbidden) {
            panic!("{path} after the opt-out: {leak}");
        }
    }
    // The old paging link is filtered with the opt-out in force.
    let resp = get_bearer(&next, f.token("hopkins")).await;
    resp.assert_status(200);
    assert!(hidden_leak(&resp, &forbidden).is_none());
    // Every provider: pat-0002 is invisible to valley too (not attributed there anyway)
    // and the member-facing list is the only place it shows.
    f.admin("DELETE", "/admin/opt-outs/pat-0002", None).await.assert_status(204);
    let listed = f.admin("GET", "/admin/opt-outs", None).await.json();
    assert!(!listed.as_array().unwrap().iter().any(|o| o["patient"] == "pat-0002"));
    f.get("hopkins", "Patient/pat-0002").await.assert_status(200);
    let coverage = f.get("hopkins", "Patient/pat-0002/Coverage").await;
    coverage.assert_status(200);
    assert!(body_has(&coverage.text(), "cov-0002"));
    // Idempotent and validated.
    f.admin("DELETE", "/admin/opt-outs/pat-0002", None).await.assert_status(204);
    f.admin("PUT", "/admin/opt-outs/Patient%2Fpat-0003", None).await.assert_status(204);
    assert_eq!(f.get("hopkins", "Patient/pat-0003").await.status, 404);
    f.admin("PUT", "/admin/opt-outs/pat-0003", None).await.assert_status(204);
    f.admin("DELETE", "/admin/opt-outs/pat-0003", None).await.assert_status(204);
    f.get("hopkins", "Patient/pat-0003").await.assert_status(200);
    assert_eq!(f.admin("PUT", "/admin/opt-outs/a%2Fb", None).await.status, 400);
    assert_eq!(f.admin("PUT", "/admin/opt-outs/x", Some(&json!({"reason": 5}))).await.status, 400);
    let no_token = request("PUT", &format!("{}/admin/opt-outs/pat-0002", f.gw.admin_url()), &[], None).await;
    assert_eq!(no_token.status, 401);
    // Opt-outs survive a restart.
    f.admin("PUT", "/admin/opt-outs/pat-00011", None).await.assert_status(204);
    let mut f = f;
    f.gw.restart();
    let token = f.gw.token("hopkins-ehr", SCOPE);
    f.tokens.insert("hopkins", token);
    assert_eq!(f.get("hopkins", "Patient/pat-00011").await.status, 404);
    f.get("hopkins", "Patient/pat-00012").await.assert_status(200);
}

#[tokio::test]
async fn opt_out_on_one_node_holds_on_the_other_within_seconds() {
    use support::postgres::Postgres;
    let pg = Postgres::start();
    let up = Upstream::sandbox();
    let state = format!("[state]\nurl = {:?}\n", pg.url());
    // Two nodes on one PostgreSQL with the same config (as behind a load balancer).
    let node = || {
        let mut config = GatewayConfig::new(up.base_url()).extra_toml(&state);
        for (path, bytes) in shared_client_files("hopkins-ehr") {
            config = config.file(&path, bytes);
        }
        config.extra_toml(
            "[[clients]]\nclient_id = \"hopkins-ehr\"\norganization = \"Organization/org-hopkins\"\n\
             npi = \"1526347814\"\njwks_path = \"keys/hopkins-ehr.jwks.json\"\nscopes = [\"system/*.read\"]\n",
        )
    };
    let a = Gateway::start(node());
    let b = Gateway::start(node());
    let token_b = b.token("hopkins-ehr", SCOPE);
    get_bearer(&b.url("Patient/pat-0002"), &token_b).await.assert_status(200);
    a.admin("PUT", "/admin/opt-outs/pat-0002", None).await.assert_status(204);
    let started = Instant::now();
    loop {
        let resp = get_bearer(&b.url("Patient/pat-0002"), &token_b).await;
        if resp.status == 404 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "node B still serves an opted-out member: {resp:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = b.admin("GET", "/admin/opt-outs", None).await.json();
    assert!(listed.as_array().unwrap().iter().any(|o| o["patient"] == "pat-0002"));
    b.admin("DELETE", "/admin/opt-outs/pat-0002", None).await.assert_status(204);
    let token_a = a.token("hopkins-ehr", SCOPE);
    let started = Instant::now();
    while get_bearer(&a.url("Patient/pat-0002"), &token_a).await.status != 200 {
        assert!(started.elapsed() < Duration::from_secs(3), "node A did not see the opt-out withdrawn");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One key pair for a client, made once per test run with `fhirwall keygen`:
/// (relative path, bytes) of `keys/{id}.key.pem` and `keys/{id}.jwks.json`.
/// (relative path, bytes) of the files a client needs in a gateway's dir.
type ClientFiles = Vec<(String, Vec<u8>)>;

fn shared_client_files(client_id: &str) -> ClientFiles {
    static KEYS: OnceLock<Mutex<HashMap<String, ClientFiles>>> = OnceLock::new();
    let keys = KEYS.get_or_init(Default::default);
    let mut keys = keys.lock().unwrap();
    keys.entry(client_id.to_owned())
        .or_insert_with(|| {
            let dir = tempfile::tempdir().unwrap();
            let out = std::process::Command::new(fhirwall_bin())
                .args(["keygen", "--client-id", client_id, "--out"])
                .arg(dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
            ["key.pem", "jwks.json"]
                .iter()
                .map(|suffix| {
                    let name = format!("{client_id}.{suffix}");
                    (format!("keys/{name}"), std::fs::read(dir.path().join(&name)).unwrap())
                })
                .collect()
        })
        .clone()
}

// ---------------------------------------------------------------------------
// Attribution sources

#[tokio::test]
async fn rosters_ingested_through_the_admin_api_as_group_bundle_and_ndjson() {
    let up = Upstream::sandbox();
    // Attribution from stored rosters only: the upstream's Groups do not count.
    let f = Fixture::start(up.base_url(), "[attribution]\nsource = \"store\"\n");
    assert_eq!(f.get("hopkins", "Patient/pat-0002").await.status, 404);
    let empty = f.get("hopkins", "Observation").await;
    empty.assert_status(200);
    assert!(bundle_resources(&empty.json()).is_empty());

    let roster = |id: &str, org: &str, members: Value| {
        json!({"resourceType": "Group", "id": id, "type": "person", "actual": true,
               "managingEntity": {"reference": format!("Organization/{org}")}, "member": members})
    };
    let member = |p: &str| json!({"entity": {"reference": format!("Patient/{p}")}});
    // One Group.
    let one = roster("roster-h1", "org-hopkins", json!([member("pat-0002")]));
    let resp = f.admin("POST", "/admin/attribution", Some(&one)).await;
    resp.assert_status(200);
    assert_eq!(resp.json()["stored"][0]["active"], 1);
    f.get("hopkins", "Patient/pat-0002").await.assert_status(200);
    assert_eq!(f.get("hopkins", "Patient/pat-0003").await.status, 404);
    let group = f.get("hopkins", "Group/roster-h1").await;
    group.assert_status(200);
    assert_eq!(group.json()["member"], json!([member("pat-0002")]));
    // A Bundle of Groups, one for another organization.
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": roster("roster-h2", "org-hopkins", json!([member("pat-0003")]))},
        {"resource": roster("roster-g1", "org-grace", json!([member("pat-0001")]))},
    ]});
    f.admin("POST", "/admin/attribution", Some(&bundle)).await.assert_status(200);
    f.get("hopkins", "Patient/pat-0003").await.assert_status(200);
    f.get("grace", "Patient/pat-0001").await.assert_status(200);
    assert_eq!(f.get("grace", "Patient/pat-0002").await.status, 404);
    assert_eq!(f.get("hopkins", "Group/roster-g1").await.status, 404);
    assert_eq!(f.get("hopkins", "Patient/pat-0001").await.status, 404);
    // NDJSON: an active member, an inactive one, an expired one.
    let ndjson = format!(
        "{}\n{}\n",
        roster(
            "roster-h3",
            "org-hopkins",
            json!([member("pat-00011"),
            {"entity": {"reference": "Patient/pat-0010"}, "inactive": true},
            {"entity": {"reference": "Patient/pat-0029"}, "period": {"end": "2020-01-01"}}])
        ),
        roster("roster-v1", "org-valley", json!([member("pat-0005")]))
    );
    let resp = request(
        "POST",
        &format!("{}/admin/attribution", f.gw.admin_url()),
        &[
            ("Authorization", &format!("Bearer {}", f.gw.admin_token())),
            ("Content-Type", "application/fhir+ndjson"),
        ],
        Some(ndjson.into_bytes()),
    )
    .await;
    resp.assert_status(200);
    f.get("hopkins", "Patient/pat-00011").await.assert_status(200);
    assert_eq!(f.get("hopkins", "Patient/pat-0010").await.status, 404);
    assert_eq!(f.get("hopkins", "Patient/pat-0029").await.status, 404);
    f.get("valley", "Patient/pat-0005").await.assert_status(200);
    // Group searches list the caller's own rosters, each with its visible active members only.
    let group_ids = |resp: &Resp| {
        resp.assert_status(200);
        let mut ids: Vec<String> =
            bundle_resources(&resp.json()).iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
        ids.sort();
        ids
    };
    let groups = f.get("hopkins", "Group?managing-entity=Organization/org-hopkins").await;
    assert_eq!(group_ids(&groups), ["roster-h1", "roster-h2", "roster-h3"], "{}", groups.text());
    for hidden in ["roster-g1", "roster-v1", "pat-0001\"", "pat-0005\"", "pat-0010\"", "pat-0029\""] {
        assert!(!groups.text().contains(hidden), "{hidden} in a Group search: {}", groups.text());
    }
    if let Some(total) = groups.json()["total"].as_u64() {
        assert_eq!(total, 3, "total counts the listed Groups");
    }
    let full_url = format!("{}/Group/roster-h2", f.gw.base_url());
    assert!(groups.text().contains(&full_url), "roster entries carry fhirwall's fullUrl");
    assert_eq!(group_ids(&f.get("hopkins", "Group").await), ["roster-h1", "roster-h2", "roster-h3"]);
    let by_id = f.get("hopkins", "Group?_id=roster-h2,roster-g1").await;
    assert_eq!(group_ids(&by_id), ["roster-h2"], "{}", by_id.text());
    assert_eq!(group_ids(&f.get("hopkins", "Group?member=Patient/pat-00011").await), ["roster-h3"]);
    assert_eq!(
        group_ids(&f.get("hopkins", "Group?type=person&actual=true&_id=roster-h1").await),
        ["roster-h1"]
    );
    assert!(group_ids(&f.get("hopkins", "Group?type=animal").await).is_empty());
    let other = f.get("hopkins", "Group?_id=roster-g1").await;
    assert!(group_ids(&other).is_empty() && !other.text().contains("pat-0001\""));
    assert_eq!(f.get("hopkins", "Group?member=Patient/pat-0001").await.status, 403);
    // Narrowed searches cover the roster members only.
    let coverage = f.get("hopkins", "Coverage").await;
    coverage.assert_status(200);
    let mut ids: Vec<String> =
        bundle_resources(&coverage.json()).iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    assert_eq!(ids, ["cov-00011", "cov-0002", "cov-0003"]);
    // Listing and deleting.
    let listed = f.admin("GET", "/admin/attribution", None).await.json();
    assert_eq!(listed["rosters"].as_array().unwrap().len(), 5, "{listed}");
    f.admin("DELETE", "/admin/attribution/roster-h1", None).await.assert_status(204);
    assert_eq!(f.admin("DELETE", "/admin/attribution/roster-h1", None).await.status, 404);
    assert_eq!(f.get("hopkins", "Patient/pat-0002").await.status, 404);
    assert_eq!(f.get("hopkins", "Group/roster-h1").await.status, 404);
    // Replacing a roster replaces its members.
    f.admin(
        "POST",
        "/admin/attribution",
        Some(&roster("roster-h2", "org-hopkins", json!([member("pat-0002")]))),
    )
    .await
    .assert_status(200);
    f.get("hopkins", "Patient/pat-0002").await.assert_status(200);
    assert_eq!(f.get("hopkins", "Patient/pat-0003").await.status, 404);
    // Bad uploads change nothing.
    for bad in [
        json!({"resourceType": "Patient", "id": "x"}),
        json!({"resourceType": "Group", "id": "nope", "member": []}),
        json!({"resourceType": "Group", "managingEntity": {"reference": "Organization/org-hopkins"}}),
        json!({"resourceType": "Bundle", "entry": [{"resource": roster("ok", "org-hopkins", json!([member("pat-0001")]))},
                                                 {"resource": {"resourceType": "Patient", "id": "x"}}]}),
    ] {
        assert_eq!(f.admin("POST", "/admin/attribution", Some(&bad)).await.status, 400, "{bad}");
    }
    assert_eq!(f.get("hopkins", "Patient/pat-0001").await.status, 404);
    let unauthorized = request("POST", &format!("{}/admin/attribution", f.gw.admin_url()), &[], None).await;
    assert_eq!(unauthorized.status, 401);
}

#[tokio::test]
async fn upstream_attribution_is_checked_cached_and_refreshed() {
    let up = IgnoringUpstream::start();
    let f = Fixture::start(&up.base(), "");
    // The upstream returns every Group for any Group search: only the ones the
    // caller's organization manages count.
    f.get("hopkins", "Patient/pat-0002").await.assert_status(200);
    assert_eq!(f.get("hopkins", "Patient/pat-0001").await.status, 404);
    f.get("grace", "Patient/pat-0001").await.assert_status(200);
    // A stored roster adds to the upstream's attribution.
    let roster = json!({"resourceType": "Group", "id": "extra-hopkins",
        "managingEntity": {"reference": "Organization/org-hopkins"},
        "member": [{"entity": {"reference": "Patient/pat-0008"}}]});
    f.admin("POST", "/admin/attribution", Some(&roster)).await.assert_status(200);
    f.get("hopkins", "Patient/pat-0008").await.assert_status(200);
    f.get("hopkins", "Patient/pat-0002").await.assert_status(200);

    // The upstream's Group changes: pat-0002 leaves, pat-0007 joins.
    let mut group = up.get("Group/grp-hopkins");
    let members = group["member"].as_array_mut().unwrap();
    members.retain(|m| m["entity"]["reference"] != "Patient/pat-0002");
    members.push(json!({"entity": {"reference": "Patient/pat-0007"}}));
    up.put(&group);
    // Cached until a refresh.
    f.get("hopkins", "Patient/pat-0002").await.assert_status(200);
    let refreshed = f.admin("POST", "/admin/attribution/refresh", None).await;
    refreshed.assert_status(200);
    assert!(refreshed.text().contains("org-hopkins"), "{}", refreshed.text());
    assert_eq!(f.get("hopkins", "Patient/pat-0002").await.status, 404);
    f.get("hopkins", "Patient/pat-0007").await.assert_status(200);

    // A gateway refreshing every second picks the change up by itself.
    let g = Fixture::start(&up.base(), "[attribution]\nrefresh_s = 1\n");
    g.get("hopkins", "Patient/pat-0007").await.assert_status(200);
    let mut group = up.get("Group/grp-hopkins");
    group["member"].as_array_mut().unwrap().retain(|m| m["entity"]["reference"] != "Patient/pat-0007");
    up.put(&group);
    let started = Instant::now();
    while g.get("hopkins", "Patient/pat-0007").await.status != 404 {
        assert!(started.elapsed() < Duration::from_secs(5), "the attribution was not refreshed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn attribution_that_cannot_be_loaded_fails_closed() {
    let up = IgnoringUpstream::start();
    up.fail_groups.store(true, Ordering::SeqCst);
    let f = Fixture::start(&up.base(), "");
    for path in
        ["Patient/pat-0002", "ExplanationOfBenefit?patient=Patient/pat-0002", "Coverage", "Organization"]
    {
        let resp = f.get("hopkins", path).await;
        assert_eq!(resp.status, 502, "{path}: {}", resp.text());
        assert_operation_outcome(&resp);
        assert_no_hidden(&resp, "org-nobody", path);
    }
    let before = up.requests().len();
    assert!(up.requests().iter().all(|r| r.starts_with("GET /fhir/Group?")), "{:?}", up.requests());
    // The public CapabilityStatement needs no attribution.
    get(&f.gw.url("metadata")).await.assert_status(200);
    // Once the upstream answers again, so does fhirwall.
    up.fail_groups.store(false, Ordering::SeqCst);
    f.get("hopkins", "Patient/pat-0002").await.assert_status(200);
    assert!(up.requests().len() > before);
}

// ---------------------------------------------------------------------------
// Specific guarantees

#[tokio::test]
async fn hidden_and_missing_resources_are_indistinguishable() {
    let up = IgnoringUpstream::start();
    let f = Fixture::start(&up.base(), "");
    for (hidden, missing) in [
        ("Patient/pat-0002", "Patient/no-such-patient"),
        ("ExplanationOfBenefit/eob-0002-1", "ExplanationOfBenefit/no-such-eob"),
        ("Coverage/cov-0010", "Coverage/no-such-coverage"),
        ("ExplanationOfBenefit/eob-0002-1/_history/1", "ExplanationOfBenefit/no-such-eob/_history/1"),
        ("ExplanationOfBenefit/eob-0002-1/_history", "ExplanationOfBenefit/no-such-eob/_history"),
        ("Group/grp-hopkins", "Group/no-such-group"),
    ] {
        let a = f.get("grace", hidden).await;
        let b = f.get("grace", missing).await;
        assert_eq!((a.status, a.text()), (b.status, b.text()), "{hidden} vs {missing}");
        assert_eq!(a.status, 404);
        let names = |r: &Resp| {
            let mut n: Vec<String> = r
                .headers
                .keys()
                .map(|k| k.to_string())
                .filter(|k| !matches!(k.as_str(), "date" | "x-request-id"))
                .collect();
            n.sort();
            n
        };
        assert_eq!(names(&a), names(&b), "{hidden}: headers differ");
    }
}

#[tokio::test]
async fn totals_never_count_removed_entries() {
    let up = IgnoringUpstream::start();
    let f = Fixture::start(&up.base(), "");
    // One page holding every visible match (304 Coverages upstream): the total
    // counts what is returned.
    let resp = f.get("hopkins", "Coverage?_count=500").await;
    resp.assert_status(200);
    let bundle = resp.json();
    let returned = bundle_resources(&bundle).len();
    assert_eq!(returned, visible("org-hopkins").len());
    assert_eq!(bundle["total"].as_u64(), Some(returned as u64));
    assert!(bundle_link(&bundle, "next").is_none());
    // A page that is not the whole answer: no total, and a full page of visible matches.
    let resp = f.get("hopkins", "Coverage").await;
    let bundle = resp.json();
    assert!(bundle.get("total").is_none(), "{}", bundle["total"]);
    assert_eq!(bundle_resources(&bundle).len(), 20);
    assert!(bundle_link(&bundle, "next").is_some());
    // Several pages (1218 EOBs): no total at all, every page filtered and
    // full but the last.
    let mut url = Some(f.gw.url("ExplanationOfBenefit?_count=100"));
    let mut pages = 0;
    let mut seen = 0;
    while let Some(u) = url {
        let resp = get_bearer(&u, f.token("hopkins")).await;
        resp.assert_status(200);
        assert_no_hidden(&resp, "org-hopkins", &u);
        let page = resp.json();
        assert!(page.get("total").is_none(), "a total on a filtered multi-page search: {}", page["total"]);
        for r in bundle_resources(&page) {
            let p = r["patient"]["reference"].as_str().unwrap().trim_start_matches("Patient/");
            assert!(visible("org-hopkins").contains(p), "{p}");
        }
        let n = bundle_resources(&page).len();
        seen += n;
        url = bundle_link(&page, "next");
        if url.is_some() {
            assert_eq!(n, 100, "a page with more to come is full");
        }
        pages += 1;
        assert!(pages < 20);
    }
    assert_eq!(pages, seen.div_ceil(100));
    // Every claim of hopkins' patients, less what redaction withholds (Part 2, the
    // service-date floor, drug prior authorizations).
    let attributed: usize = visible("org-hopkins")
        .iter()
        .map(|p| facts()["patients"][p]["resources"]["ExplanationOfBenefit"].as_u64().unwrap_or(0) as usize)
        .sum();
    assert!(seen > attributed / 2 && seen <= attributed, "{seen} of {attributed}");
    // The next link of hopkins' search does not open for grace.
    let first = f.get("hopkins", "ExplanationOfBenefit").await.json();
    let next = bundle_link(&first, "next").unwrap();
    let stolen = get_bearer(&next, f.token("grace")).await;
    assert_eq!(stolen.status, 404, "{}", stolen.text());
    assert_no_hidden(&stolen, "org-grace", "stolen page");
    // Nor does it take parameters or another method (pitfall 12).
    for (method, url) in [
        ("GET", format!("{next}?patient=Patient/pat-0001")),
        ("GET", format!("{next}?_count=1000")),
        ("POST", next.clone()),
        ("DELETE", next.clone()),
    ] {
        let auth = format!("Bearer {}", f.token("hopkins"));
        let resp = request(method, &url, &[("Authorization", &auth)], None).await;
        assert!(matches!(resp.status, 400 | 403 | 405), "{method} {url}: {}", resp.text());
        assert_no_hidden(&resp, "org-hopkins", &url);
    }
}

#[tokio::test]
async fn dependents_records_stay_hidden_from_the_subscribers_provider() {
    let up = IgnoringUpstream::start();
    let f = Fixture::start(&up.base(), "");
    for who in ["grace", "hopkins", "valley"] {
        let org = format!("org-{who}");
        let rows = facts()["subscriber_visible_dependent_not"][&org].as_array().unwrap();
        assert!(!rows.is_empty());
        for row in rows {
            let subscriber = row["visible_subscriber"].as_str().unwrap();
            let coverage = row["coverage"].as_str().unwrap();
            assert_eq!(f.get(who, coverage).await.status, 404, "{who}: {coverage}");
            for eob in row["payee_eobs"].as_array().unwrap() {
                assert_eq!(f.get(who, eob.as_str().unwrap()).await.status, 404, "{who}: {eob}");
            }
            // Searches on the subscriber return only the subscriber's own records.
            if who != "grace" {
                for path in [
                    format!("ExplanationOfBenefit?patient=Patient/{subscriber}"),
                    format!("Coverage?beneficiary=Patient/{subscriber}"),
                    format!("Patient/{subscriber}/Coverage"),
                ] {
                    let resp = f.get(who, &path).await;
                    resp.assert_status(200);
                    assert_no_hidden(&resp, &org, &path);
                    assert!(!body_has(&scannable(&resp.body), coverage.trim_start_matches("Coverage/")));
                }
            }
            for path in [
                format!("Coverage?subscriber=Patient/{subscriber}"),
                format!("Coverage?policy-holder=Patient/{subscriber}"),
                format!("ExplanationOfBenefit?payee=Patient/{subscriber}"),
            ] {
                assert_eq!(f.get(who, &path).await.status, 403, "{who}: {path}");
            }
        }
    }
}

#[tokio::test]
async fn own_groups_only_with_members_filtered_to_the_visible_set() {
    let up = Upstream::sandbox();
    let f = Fixture::start(up.base_url(), "");
    let group = f.get("grace", "Group/grp-grace").await;
    group.assert_status(200);
    let group = group.json();
    let members: HashSet<String> = group["member"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["entity"]["reference"].as_str().unwrap().trim_start_matches("Patient/").to_owned())
        .collect();
    assert_eq!(members, visible("org-grace"));
    assert!(group.get("text").is_none());
    for status in ["inactive", "expired", "future"] {
        for p in facts()["attribution"]["org-grace"][status].as_array().unwrap() {
            assert!(!members.contains(p.as_str().unwrap()), "{status} member {p} listed");
        }
    }
    // An opted-out member leaves the list.
    f.admin("PUT", "/admin/opt-outs/pat-0001", None).await.assert_status(204);
    let group = f.get("grace", "Group/grp-grace").await.json();
    assert!(!group.to_string().contains("Patient/pat-0001\""), "opted-out member listed");
    // Searches: only the caller's own Group, whatever is asked.
    for path in
        ["Group", "Group?managingEntity=Organization/org-grace", "Group?type=person", "Group?_id=grp-grace"]
    {
        let resp = f.get("grace", path).await;
        resp.assert_status(200);
        assert_eq!(bundle_refs(&resp.json()), ["Group/grp-grace"], "{path}");
    }
    // Reading another organization's Group is 404 (no upstream call decides it).
    assert_eq!(f.get("grace", "Group/grp-hopkins").await.status, 404);
    assert_eq!(f.get("nobody", "Group").await.json()["entry"], Value::Null);
}

#[tokio::test]
async fn narrowing_is_bounded_and_points_to_bulk_export() {
    let up = Upstream::sandbox();
    let f = Fixture::start(up.base_url(), "");
    let resp = f.get("grace", "Observation?code=2345-7").await;
    assert_eq!(resp.status, 400);
    let outcome = assert_operation_outcome(&resp);
    let text = outcome.to_string();
    assert!(text.contains("Group/grp-grace/$davinci-data-export"), "{text}");
    // Naming a patient works at any size.
    f.get("grace", "Observation?patient=Patient/pat-0001").await.assert_status(200);
    // A higher limit narrows instead.
    let g = Fixture::start(up.base_url(), "[policy]\nmax_narrowed_patients = 200\n");
    let resp = g.get("grace", "Observation?_count=500").await;
    resp.assert_status(200);
    assert_no_hidden(&resp, "org-grace", "narrowed to 113");
    let observed: HashSet<String> = bundle_resources(&resp.json())
        .iter()
        .map(|r| r["subject"]["reference"].as_str().unwrap().trim_start_matches("Patient/").to_owned())
        .collect();
    assert!(!observed.is_empty() && observed.is_subset(&visible("org-grace")));
}

#[tokio::test]
async fn requests_without_an_organization_see_nothing() {
    // A client registered through the admin API with an organization that
    // manages no Group: every read is 404, every patient-less search empty.
    let up = Upstream::sandbox();
    let f = Fixture::start(up.base_url(), "");
    for path in ["Patient/pat-0001", "Coverage/cov-0001", "ExplanationOfBenefit/eob-0001-1"] {
        assert_eq!(f.get("nobody", path).await.status, 404, "{path}");
    }
    for path in ["Patient", "Coverage", "ExplanationOfBenefit", "Observation?code=2345-7"] {
        let resp = f.get("nobody", path).await;
        resp.assert_status(200);
        assert!(bundle_resources(&resp.json()).is_empty(), "{path}");
        assert_eq!(resp.json()["total"], 0);
    }
    assert_eq!(f.get("nobody", "ExplanationOfBenefit?patient=Patient/pat-0001").await.status, 403);
}

#[test]
fn the_hidden_data_check_catches_leaks() {
    // The checker itself: a hopkins answer holding grace-only data is caught,
    // hopkins' own data is not, and the dependent's subscriber reference that
    // hopkins legitimately sees in its own member's coverage is not.
    let forbidden = forbidden_for("org-hopkins");
    for t in ["pat-0001", "FW1000105-01", "Grantham", "eob-0001-1", "cov-0001", "pat-0007", "grp-grace"] {
        assert!(forbidden.contains(t), "{t} should be forbidden for hopkins");
    }
    for t in
        ["pat-0002", "pat-00011", "cov-0010", "pat-0009", "Patient", "ExplanationOfBenefit", "grp-hopkins"]
    {
        assert!(!forbidden.contains(t), "{t} should be allowed for hopkins");
    }
    let resp = |body: &str| Resp { status: 200, headers: Default::default(), body: body.as_bytes().to_vec() };
    assert!(hidden_leak(&resp(r#"{"subject":{"reference":"Patient/pat-0001"}}"#), forbidden).is_some());
    assert!(hidden_leak(&resp(r#"{"subject":{"reference":"Patient/pat-00011"}}"#), forbidden).is_none());
    assert!(
        hidden_leak(
            &resp(r#"{"resourceType":"Bundle","link":[{"relation":"self","url":"x?id=pat-0001"}]}"#),
            forbidden
        )
        .is_none()
    );
    assert!(body_has("a pat-00011 b", "pat-00011") && !body_has("a pat-00011 b", "pat-0001"));
    assert!(corpus().len() >= 60);
}

/// The compartment table in `policy.dir` is the one every stage uses: here
/// Observation has no narrowing parameter, so its compartment path cannot be
/// dispatched (with the built-in table it is `subject`).
#[tokio::test]
async fn a_policy_dir_compartment_table_drives_compartment_paths() {
    let builtin = std::fs::read_to_string(repo_root().join("policies/patient-compartment.json")).unwrap();
    let mut table: Value = serde_json::from_str(&builtin).unwrap();
    table["resources"]["Observation"]["narrow"] = Value::Null;
    let gw = Gateway::start(
        GatewayConfig::new("sandbox")
            .client("grace-ehr", "Organization/org-grace", "1417987256", &["system/*.read"])
            .file("policies/patient-compartment.json", table.to_string())
            .extra_toml("[policy]\ndir = \"policies\"\n"),
    );
    let token = gw.token("grace-ehr", "system/*.read");
    let observations = get_bearer(&gw.url("Patient/pat-0001/Observation"), &token).await;
    assert_eq!(observations.status, 400, "{}", observations.text());
    assert!(observations.text().contains("not in the Patient compartment"), "{}", observations.text());
    get_bearer(&gw.url("Patient/pat-0001/Coverage"), &token).await.assert_status(200);
    // With the built-in table the same path is served.
    let plain = Gateway::start(GatewayConfig::new("sandbox").client(
        "grace-ehr",
        "Organization/org-grace",
        "1417987256",
        &["system/*.read"],
    ));
    let token = plain.token("grace-ehr", "system/*.read");
    get_bearer(&plain.url("Patient/pat-0001/Observation"), &token).await.assert_status(200);
}
