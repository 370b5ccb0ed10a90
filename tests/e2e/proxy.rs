//! End-to-end tests of the proxy core: the real `fhirwall` binary in front of
//! real upstreams over loopback — the built-in sandbox, Medplum's FHIR engine
//! (third-party), and a deliberately misbehaving raw-TCP upstream written here
//! that records what reaches it.

use fhirwall_testkit as support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

/// The provider client every test here calls fhirwall as.
const CLIENT: &str = "proxy-test-ehr";

/// A gateway with one registered provider client, and that client's token.
struct Fixture {
    gw: Gateway,
    token: String,
}

impl std::ops::Deref for Fixture {
    type Target = Gateway;
    fn deref(&self) -> &Gateway {
        &self.gw
    }
}

impl std::ops::DerefMut for Fixture {
    fn deref_mut(&mut self) -> &mut Gateway {
        &mut self.gw
    }
}

fn start_gateway(config: GatewayConfig) -> Fixture {
    start_gateway_as(config, "Organization/org-grace", "1417987256")
}

/// Access control scopes every answer to the patients attributed to
/// the client's organization: tests pick the organization whose attribution
/// Group holds the patients they read.
fn start_gateway_as(config: GatewayConfig, organization: &str, npi: &str) -> Fixture {
    let gw = Gateway::start(config.client(CLIENT, organization, npi, &["system/*.read"]));
    let token = gw.token(CLIENT, "system/*.read");
    Fixture { gw, token }
}

fn gateway_for(upstream_base: &str, timeout_ms: u64) -> Fixture {
    start_gateway(GatewayConfig::new(upstream_base).upstream_timeout_ms(timeout_ms))
}

impl Fixture {
    /// GET a FHIR URL as the provider client would.
    async fn get(&self, url: &str) -> Resp {
        get_bearer(url, &self.token).await
    }

    fn bearer(&self) -> String {
        format!("Authorization: Bearer {}\r\n", self.token)
    }
}

/// Send bytes as-is (no client-side path normalisation) and read the answer.
fn raw_http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

fn raw_get(addr: SocketAddr, target: &str, extra_headers: &str) -> (u16, String) {
    raw_http(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra_headers}\r\n"),
    )
}

// ---------------------------------------------------------------------------
// A raw upstream that misbehaves on purpose and records every request.

struct FakeUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl FakeUpstream {
    fn start() -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || serve_fake(stream, addr, log));
            }
        });
        FakeUpstream { addr, seen }
    }

    fn base(&self) -> String {
        format!("http://{}/fhir", self.addr)
    }

    /// Request heads (request line + headers) received so far.
    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests other than fhirwall's own attribution lookups (`Group?managing-entity=…`).
    fn caller_requests(&self) -> Vec<String> {
        self.requests().into_iter().filter(|r| !r.starts_with("GET /fhir/Group?")).collect()
    }
}

fn serve_fake(mut stream: TcpStream, addr: SocketAddr, log: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    log.lock().unwrap().push(head.clone());
    let target = head.split(' ').nth(1).unwrap_or("").to_owned();
    let base = format!("http://{addr}/fhir");
    let json = |status: &str, body: String, extra: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    let response = match target.as_str() {
        "/fhir/Patient/ok" => json(
            "200 OK",
            format!(
                r#"{{"resourceType":"Patient","id":"ok","link":[{{"other":{{"reference":"{base}/Patient/other"}}}}],"managingOrganization":{{"reference":"{base}/Organization/o1"}}}}"#
            ),
            &format!(
                "Server: SecretUpstream/9.9\r\nSet-Cookie: upstream_session=abc\r\nX-Powered-By: LegacyFHIR\r\nETag: W/\"3\"\r\nContent-Location: {base}/Patient/ok/_history/3\r\n"
            ),
        ),
        "/fhir/Patient/truncated" => {
            let body = r#"{"resourceType":"Patient","id":"truncated","name":[{"family":"Tru"#;
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 4000\r\nConnection: close\r\n\r\n{body}"
            )
        }
        "/fhir/Patient/cut-json" => json("200 OK", r#"{"resourceType":"Patient","id":"cut-json","name":[{"fam"#.into(), ""),
        "/fhir/Patient/notjson" => json("200 OK", "<html><body>Welcome to LegacyFHIR</body></html>".into(), ""),
        "/fhir/Patient/html" => {
            let body = "<html>maintenance</html>";
            format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        }
        "/fhir/Patient/slow" => {
            std::thread::sleep(Duration::from_millis(3000));
            json("200 OK", r#"{"resourceType":"Patient","id":"slow"}"#.into(), "")
        }
        "/fhir/Patient/error500" => json(
            "500 Internal Server Error",
            format!(
                r#"{{"resourceType":"OperationOutcome","issue":[{{"severity":"fatal","code":"exception","diagnostics":"NullPointerException at {base}/internal/db?password=hunter2"}}]}}"#
            ),
            "",
        ),
        "/fhir/Patient/unauth" => json(
            "401 Unauthorized",
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"login"}]}"#.into(),
            "",
        ),
        "/fhir/Patient/redirect" => "HTTP/1.1 302 Found\r\nLocation: http://elsewhere.example/fhir/Patient/1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
        "/fhir/Patient/array" => json("200 OK", "[1,2,3]".into(), ""),
        // Access control: org-grace's attribution Group holds every
        // patient these tests read.
        t if t.starts_with("/fhir/Group?") => {
            let members = ["ok", "other", "truncated", "cut-json", "notjson", "html", "slow", "error500", "unauth", "redirect", "array"]
                .iter()
                .map(|p| format!(r#"{{"entity":{{"reference":"Patient/{p}"}}}}"#))
                .collect::<Vec<_>>()
                .join(",");
            json(
                "200 OK",
                format!(
                    r#"{{"resourceType":"Bundle","type":"searchset","entry":[{{"resource":{{"resourceType":"Group","id":"grp-grace","type":"person","actual":true,"managingEntity":{{"reference":"Organization/org-grace"}},"member":[{members}]}}}}]}}"#
                ),
                "",
            )
        }
        // The upstream's second page: one more match, no further link.
        t if t.starts_with("/fhir/Observation?x=1&_offset=1") => json(
            "200 OK",
            format!(
                r#"{{"resourceType":"Bundle","type":"searchset","total":2,"link":[{{"relation":"self","url":"{base}/Observation?x=1&_offset=1"}}],"entry":[{{"fullUrl":"{base}/Observation/2","resource":{{"resourceType":"Observation","id":"2","subject":{{"reference":"{base}/Patient/ok"}}}}}}]}}"#
            ),
            "",
        ),
        t if t.starts_with("/fhir/Observation?") => json(
            "200 OK",
            format!(
                r#"{{"resourceType":"Bundle","type":"searchset","total":2,"link":[{{"relation":"self","url":"{base}/Observation?x=1"}},{{"relation":"next","url":"{base}/Observation?x=1&_offset=1"}},{{"relation":"alternate","url":"http://mirror.example/Observation"}},{{"relation":"previous","url":"http://elsewhere.example/fhir/Observation?_offset=0"}}],"entry":[{{"fullUrl":"{base}/Observation/1","resource":{{"resourceType":"Observation","id":"1","subject":{{"reference":"{base}/Patient/ok"}}}}}}]}}"#
            ),
            "",
        ),
        _ => json(
            "404 Not Found",
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}"#.into(),
            "",
        ),
    };
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

// ---------------------------------------------------------------------------
// Misbehaving upstream: every failure is an OperationOutcome, nothing leaks.

#[tokio::test]
async fn upstream_failures_become_operation_outcomes_and_nothing_partial_leaks() {
    let up = FakeUpstream::start();
    let gw = gateway_for(&up.base(), 1000);
    let cases = [
        ("Patient/truncated", 502, "Tru"),
        ("Patient/cut-json", 502, "cut-json"),
        ("Patient/notjson", 502, "LegacyFHIR"),
        ("Patient/html", 502, "maintenance"),
        ("Patient/error500", 502, "hunter2"),
        ("Patient/unauth", 502, "login"),
        ("Patient/redirect", 502, "elsewhere"),
        ("Patient/array", 502, "[1,2,3]"),
        ("Patient/slow", 504, "slow"),
    ];
    for (path, status, hidden) in cases {
        let started = Instant::now();
        let resp = gw.get(&gw.url(path)).await;
        assert_eq!(resp.status, status, "{path}: {}", resp.text());
        assert_operation_outcome(&resp);
        let body = resp.text();
        assert!(!body.contains(hidden), "{path}: upstream bytes {hidden:?} leaked: {body}");
        assert!(!body.contains(&up.addr.to_string()), "{path}: upstream address leaked: {body}");
        if status == 504 {
            assert!(started.elapsed() < Duration::from_millis(2900), "the deadline was not enforced");
        }
    }
}

#[tokio::test]
async fn upstream_down_is_502() {
    let port = free_port(); // nothing listens here
    let gw = gateway_for(&format!("http://127.0.0.1:{port}/fhir"), 2000);
    let resp = gw.get(&gw.url("Patient/1")).await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    let outcome = assert_operation_outcome(&resp);
    assert!(!outcome.to_string().contains(&port.to_string()), "upstream port leaked: {outcome}");
}

#[tokio::test]
async fn upstream_urls_and_headers_never_reach_the_caller() {
    let up = FakeUpstream::start();
    let gw = gateway_for(&up.base(), 5000);
    let resp = gw.get(&gw.url("Patient/ok")).await;
    resp.assert_status(200);
    let body = resp.text();
    assert!(!body.contains(&up.addr.to_string()), "upstream base leaked: {body}");
    assert!(body.contains(&format!("{}/Patient/other", gw.base_url())), "reference not rewritten: {body}");
    for header in ["server", "set-cookie", "x-powered-by"] {
        let value = resp.header(header).unwrap_or("");
        assert!(
            !value.contains("Secret") && !value.contains("upstream") && !value.contains("Legacy"),
            "{header}: {value}"
        );
    }
    assert_eq!(resp.header("etag"), Some("W/\"3\""));
    assert_eq!(
        resp.header("content-location"),
        Some(format!("{}/Patient/ok/_history/3", gw.base_url()).as_str())
    );
    assert!(resp.header("x-request-id").is_some_and(|id| id.len() >= 16));

    // Bundle links: self is ours, next is sealed, foreign links are dropped.
    let resp = gw.get(&gw.url("Observation?code=1&_count=1")).await;
    resp.assert_status(200);
    let text = resp.text();
    assert!(!text.contains(&up.addr.to_string()), "{text}");
    assert!(
        !text.contains("mirror.example") && !text.contains("elsewhere.example"),
        "foreign link kept: {text}"
    );
    let bundle = resp.json();
    assert_eq!(bundle_link(&bundle, "self").unwrap(), gw.url("Observation?code=1&_count=1"));
    let next = bundle_link(&bundle, "next").expect("next link");
    assert!(next.starts_with(&gw.url("_page/")), "{next}");
    assert!(!next.contains("_offset"), "the upstream link is readable in {next}");
    // Following it asks the upstream for its own next link.
    gw.get(&next).await.assert_status(200);
    assert!(
        up.requests().iter().any(|r| r.starts_with("GET /fhir/Observation?x=1&_offset=1 ")),
        "{:?}",
        up.requests()
    );
}

#[tokio::test]
async fn forged_or_altered_page_tokens_are_404() {
    let up = FakeUpstream::start();
    let gw = gateway_for(&up.base(), 5000);
    let bundle = gw.get(&gw.url("Observation?code=1&_count=1")).await.json();
    let next = bundle_link(&bundle, "next").unwrap();
    let token = next.rsplit('/').next().unwrap().to_owned();
    let mut altered: Vec<char> = token.chars().collect();
    let mid = altered.len() / 2;
    altered[mid] = if altered[mid] == 'A' { 'B' } else { 'A' };
    let altered: String = altered.into_iter().collect();
    for bad in [altered.as_str(), "AAAA", "bm90LWEtdG9rZW4"] {
        let resp = gw.get(&gw.url(&format!("_page/{bad}"))).await;
        assert_eq!(resp.status, 404, "{bad}: {}", resp.text());
        assert_operation_outcome(&resp);
    }
    // A restarted gateway (same store) still honours its own links.
    let mut gw = gw;
    gw.restart();
    let resp = gw
        .get(&next.replace(&next[..next.find("/fhir/").unwrap()], &gw.base_url().replace("/fhir", "")))
        .await;
    resp.assert_status(200);
}

// ---------------------------------------------------------------------------
// Refusals happen before anything reaches the upstream.

#[tokio::test]
async fn refused_requests_never_reach_the_upstream() {
    let up = FakeUpstream::start();
    let gw = gateway_for(&up.base(), 5000);
    let addr = gw.listen_addr();
    let cases: &[(&str, &str, &str, u16)] = &[
        ("GET", "/fhir/Patient?_has:Observation:patient:code=1234", "", 400),
        ("GET", "/fhir/Observation?_filter=code%20eq%201", "", 400),
        ("GET", "/fhir/Observation?_query=everything", "", 400),
        ("GET", "/fhir/Observation?_summary=count", "", 400),
        ("GET", "/fhir/Observation?_total=accurate", "", 400),
        ("GET", "/fhir/Observation?subject:Patient.name=smith", "", 400),
        ("GET", "/fhir/Patient/ok", "Accept: application/fhir+xml\r\n", 406),
        ("GET", "/fhir/Patient/ok?_format=xml", "", 406),
        ("GET", "/fhir/Patient/ok", "X-HTTP-Method-Override: DELETE\r\n", 400),
        ("GET", "/fhir/Patient%2Fok", "", 400),
        ("GET", "/fhir/Patient/../Observation", "", 400),
        ("GET", "/fhir/Patient/%2e%2e/Observation", "", 400),
        ("GET", "/fhir/Patient/ok;jsessionid=1", "", 400),
        ("GET", "/fhir/_history", "", 400),
        ("GET", "/fhir/Patient/_history", "", 400),
        ("GET", "/fhir/$graphql?query=x", "", 400),
        ("GET", "/fhir/Patient/ok/$everything", "", 400),
        ("GET", "/fhir/Patient/ok/%24everything", "", 400),
        ("GET", "/fhir/NotAType/1", "", 400),
        ("GET", "/fhir/$export", "", 403),
        ("POST", "/fhir/Patient", "Content-Type: application/fhir+json\r\nContent-Length: 2\r\n", 403),
        ("PUT", "/fhir/Patient/ok", "Content-Type: application/fhir+json\r\nContent-Length: 2\r\n", 403),
        ("DELETE", "/fhir/Patient/ok", "", 403),
        ("PATCH", "/fhir/Patient/ok", "Content-Length: 2\r\n", 403),
        ("POST", "/fhir", "Content-Type: application/fhir+json\r\nContent-Length: 2\r\n", 403),
        ("OPTIONS", "/fhir/Patient/ok", "", 405),
        ("TRACE", "/fhir/Patient/ok", "", 405),
    ];
    for (method, target, headers, status) in cases {
        let body = if headers.contains("Content-Length: 2") { "{}" } else { "" };
        let (got, text) = raw_http(
            addr,
            &format!(
                "{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{}{headers}\r\n{body}",
                gw.bearer()
            ),
        );
        assert_eq!(got, *status, "{method} {target}: {text}");
        if *method != "HEAD" {
            assert!(text.contains("\"resourceType\":\"OperationOutcome\""), "{method} {target}: {text}");
            assert!(text.to_ascii_lowercase().contains("content-type: application/fhir+json"), "{text}");
        }
    }
    let reached = up.caller_requests();
    assert!(reached.is_empty(), "refused requests reached the upstream: {reached:?}");
}

#[tokio::test]
async fn only_fhirwall_headers_are_sent_upstream() {
    let up = FakeUpstream::start();
    let gw = gateway_for(&up.base(), 5000);
    let (status, _) = raw_get(
        gw.listen_addr(),
        "/fhir/Patient/ok",
        &format!(
            "{}X-Forwarded-For: 10.9.9.9\r\nCookie: s=1\r\nX-Tenant: other\r\nPrefer: handling=lenient\r\n",
            gw.bearer()
        ),
    );
    assert_eq!(status, 200);
    let head = up.requests().pop().unwrap().to_ascii_lowercase();
    for leaked in
        [gw.token.to_ascii_lowercase().as_str(), "authorization", "10.9.9.9", "cookie", "x-tenant", "lenient"]
    {
        assert!(!head.contains(leaked), "{leaked} forwarded upstream:\n{head}");
    }
    assert!(head.contains("accept: application/fhir+json"), "{head}");
}

// ---------------------------------------------------------------------------
// The sandbox upstream: reads, searches, paging, compartments, POST _search.

/// Records of the dataset the redaction chain withholds (facts.json): Part 2,
/// before the 2016 service-date floor, drug prior authorizations.
fn withheld_by_redaction() -> std::collections::HashSet<String> {
    let facts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("examples/dataset/facts.json")).expect("facts.json"),
    )
    .expect("facts.json is JSON");
    let list = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
    };
    let mut out: std::collections::HashSet<String> = list(&facts["pre_2016"]).into_iter().collect();
    for category in ["labelled", "program", "program_npi_only", "sud_code_unlabelled"] {
        out.extend(list(&facts["part2"][category]));
    }
    for pa in facts["prior_auth"].as_array().into_iter().flatten().filter(|pa| pa["drug"] == true) {
        for key in ["eob", "claim", "claim_response"] {
            if let Some(id) = pa[key].as_str() {
                out.insert(id.to_owned());
            }
        }
    }
    out
}

#[tokio::test]
async fn sandbox_reads_searches_and_pages_through_fhirwall() {
    let up = Upstream::sandbox();
    let gw = gateway_for(up.base_url(), 5000);

    // A read is the upstream's resource, only URLs rewritten.
    let direct = get(&up.url("Patient/pat-0001")).await.json();
    let proxied = gw.get(&gw.url("Patient/pat-0001")).await;
    proxied.assert_status(200);
    assert_eq!(proxied.content_type(), Some("application/fhir+json"));
    assert_eq!(proxied.json(), direct);

    // Paging through fhirwall visits every result exactly once, like the upstream.
    let mut direct_ids = Vec::new();
    let mut url = Some(up.url("ExplanationOfBenefit?patient=Patient/pat-0001&_count=3"));
    while let Some(u) = url {
        let page = get(&u).await.json();
        direct_ids.extend(bundle_refs(&page));
        url = bundle_link(&page, "next");
    }
    let mut via_ids = Vec::new();
    let mut url = Some(gw.url("ExplanationOfBenefit?patient=Patient/pat-0001&_count=3"));
    let mut pages = 0;
    while let Some(u) = url {
        assert!(u.starts_with(&gw.base_url()), "{u}");
        let resp = gw.get(&u).await;
        resp.assert_status(200);
        let text = resp.text();
        assert!(!text.contains(up.base_url()), "upstream base leaked on page {pages}");
        let page = resp.json();
        // A page can be empty: redaction withholds some of the records.
        for entry in page["entry"].as_array().into_iter().flatten() {
            assert!(entry["fullUrl"].as_str().unwrap().starts_with(&gw.base_url()));
        }
        via_ids.extend(bundle_refs(&page));
        url = bundle_link(&page, "next");
        pages += 1;
    }
    assert!(pages >= 2, "expected several pages");
    // Everything but what redaction withholds (pat-0001 has records before
    // 2016 and a drug prior authorization: tests/e2e/redact.rs covers those).
    let withheld = withheld_by_redaction();
    let direct_ids: Vec<String> = direct_ids.into_iter().filter(|id| !withheld.contains(id)).collect();
    assert!(!direct_ids.is_empty());
    assert_eq!(via_ids, direct_ids);

    // POST _search (form) finds the same as GET.
    let form = post_form(
        &gw.url("Coverage/_search"),
        &[("Authorization", &format!("Bearer {}", gw.token))],
        &[("beneficiary", "Patient/pat-0001")],
    )
    .await;
    form.assert_status(200);
    let get_form = gw.get(&gw.url("Coverage?beneficiary=Patient/pat-0001")).await.json();
    assert_eq!(bundle_refs(&form.json()), bundle_refs(&get_form));

    // Compartment search is served as a type search.
    let compartment = gw.get(&gw.url("Patient/pat-0001/ExplanationOfBenefit?_count=50")).await;
    compartment.assert_status(200);
    let mut ids = bundle_refs(&compartment.json());
    ids.sort();
    let mut expected = direct_ids.clone();
    expected.sort();
    assert_eq!(ids, expected);

    // HEAD answers like GET without a body.
    let head = request(
        "HEAD",
        &gw.url("Patient/pat-0001"),
        &[("Authorization", &format!("Bearer {}", gw.token))],
        None,
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    // Missing resources are 404 OperationOutcomes.
    let missing = gw.get(&gw.url("Patient/no-such-member")).await;
    assert_eq!(missing.status, 404);
    assert_operation_outcome(&missing);
}

#[tokio::test]
async fn http2_is_served() {
    let up = Upstream::sandbox();
    let gw = gateway_for(up.base_url(), 5000);
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    // pat-0001 is attributed to org-grace (examples/dataset/facts.json).
    let resp = client.get(gw.url("Patient/pat-0001")).bearer_auth(&gw.token).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["id"], "pat-0001");
}

#[tokio::test]
async fn tls_is_terminated_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is needed to make test certificates");
        assert!(status.success(), "openssl {args:?}");
    };
    // A test CA and a server certificate for 127.0.0.1 signed by it.
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=fhirwall test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.path().join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
        .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let cert = std::fs::read(dir.path().join("cert.pem")).unwrap();
    let key = std::fs::read(dir.path().join("key.pem")).unwrap();
    let up = Upstream::sandbox();
    let gw = Gateway::start(
        GatewayConfig::new(up.base_url())
            .file("tls/cert.pem", &cert)
            .file("tls/key.pem", &key)
            .extra_toml("[server]\ntls_cert = \"tls/cert.pem\"\ntls_key = \"tls/key.pem\"\n"),
    );
    // The CapabilityStatement is public, so no token is needed to prove TLS works.
    let url = format!("https://{}/fhir/metadata", gw.listen_addr());
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["resourceType"], "CapabilityStatement");
    // Plain HTTP on the TLS port gets no FHIR answer.
    let (status, _) = raw_get(gw.listen_addr(), "/fhir/metadata", "");
    assert_ne!(status, 200);
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let up = FakeUpstream::start();
    let mut gw = gateway_for(&up.base(), 10_000);
    let url = gw.url("Patient/slow");
    let token = gw.token.clone();
    let in_flight = tokio::spawn(async move { get_bearer(&url, &token).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let exit = gw.terminate(Duration::from_secs(15));
    let resp = in_flight.await.unwrap();
    assert_eq!(resp.status, 200, "the in-flight request was cut: {}", resp.text());
    assert!(exit.success(), "fhirwall did not exit cleanly: {exit:?}");
}

#[tokio::test]
async fn admin_health_readiness_and_metrics() {
    let up = Upstream::sandbox();
    let gw = gateway_for(up.base_url(), 5000);
    gw.get(&gw.url("Patient/pat-0001")).await.assert_status(200);
    for path in ["/healthz", "/readyz"] {
        get(&format!("{}{path}", gw.admin_url())).await.assert_status(200);
    }
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await;
    metrics.assert_status(200);
    assert!(metrics.content_type().unwrap().starts_with("text/plain"));
    assert!(
        metrics.text().contains("fhirwall_requests_total{interaction=\"read\",status=\"200\"} 1"),
        "{}",
        metrics.text()
    );
    // Anything else on the admin listener needs the admin token.
    let resp = get(&format!("{}/admin/opt-outs", gw.admin_url())).await;
    assert_eq!(resp.status, 401);
    let resp =
        get_with(&format!("{}/admin/opt-outs", gw.admin_url()), &[("Authorization", "Bearer wrong")]).await;
    assert_eq!(resp.status, 401);
}

// ---------------------------------------------------------------------------
// Startup errors are clear.

#[test]
fn bad_configs_fail_at_startup_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[server]\nlisten = \"127.0.0.1:1\"\nbase_url = \"http://127.0.0.1:1/fhir\"\nbogus_knob_4471 = 1\n[upstream]\nurl = \"sandbox\"\n",
            "bogus_knob_4471",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:1\"\nbase_url = \"http://127.0.0.1:1/fhir\"\n[upstream]\nurl = \"ftp://x\"\n",
            "upstream.url",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:1\"\nbase_url = \"http://127.0.0.1:1/fhir\"\ntls_cert = \"missing.pem\"\ntls_key = \"missing.pem\"\n[upstream]\nurl = \"sandbox\"\n",
            "server.tls_cert",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, text).unwrap();
        assert_config_refused(&path, needle);
    }
}

// ---------------------------------------------------------------------------
// A third-party server nobody here wrote: Medplum's FHIR engine.

#[tokio::test]
async fn medplum_upstream_through_fhirwall() {
    let up = Upstream::medplum(&[&fixture("carin-sample.ndjson")]);
    // The fixture's attribution Group (carin-attribution) is managed by
    // ProviderOrganization1 and holds ExamplePatient1 (tests/fixtures/README.md).
    let gw = start_gateway_as(
        GatewayConfig::new(up.base_url()).upstream_timeout_ms(15_000),
        "Organization/ProviderOrganization1",
        "1234567893",
    );

    let meta = gw.get(&gw.url("metadata")).await;
    meta.assert_status(200);
    assert_eq!(meta.json()["resourceType"], "CapabilityStatement");
    assert!(!meta.text().contains(up.base_url()));

    // The attributed patient, read directly and through fhirwall.
    let direct =
        get_with(&up.url("Patient/ExamplePatient1"), &[("Accept", "application/fhir+json")]).await.json();
    let id = direct["id"].as_str().expect("fixture has ExamplePatient1");
    let via = gw.get(&gw.url(&format!("Patient/{id}"))).await;
    via.assert_status(200);
    assert_eq!(via.json()["id"], id);
    assert!(!via.text().contains(up.base_url()));

    // Searches with paging: every page through fhirwall, no upstream URL anywhere.
    let mut url = Some(gw.url(&format!("ExplanationOfBenefit?patient=Patient/{id}&_count=1")));
    let mut seen = Vec::new();
    while let Some(u) = url {
        let resp = gw.get(&u).await;
        resp.assert_status(200);
        assert!(!resp.text().contains(up.base_url()), "upstream URL leaked: {}", resp.text());
        let page = resp.json();
        seen.extend(bundle_refs(&page));
        url = bundle_link(&page, "next");
        assert!(seen.len() < 100, "paging does not end");
    }
    let direct = get_with(
        &up.url(&format!("ExplanationOfBenefit?patient=Patient/{id}&_count=100")),
        &[("Accept", "application/fhir+json")],
    )
    .await
    .json();
    let mut want = bundle_refs(&direct);
    want.sort();
    seen.sort();
    assert_eq!(seen, want);

    // Compartment search on a server we rewrite for.
    let coverage = gw.get(&gw.url(&format!("Patient/{id}/Coverage"))).await;
    coverage.assert_status(200);
    assert!(!coverage.text().contains(up.base_url()));

    // Medplum refuses unknown parameters; the OperationOutcome reaches the caller.
    let unknown = gw.get(&gw.url("Patient?no-such-param=1")).await;
    assert_eq!(unknown.status, 400, "{}", unknown.text());
    assert_operation_outcome(&unknown);
    assert!(!unknown.text().contains(up.base_url()));

    // A missing resource is Medplum's 404, as an OperationOutcome.
    let missing = gw.get(&gw.url("Patient/does-not-exist-123")).await;
    assert_eq!(missing.status, 404);
    assert_operation_outcome(&missing);
}

#[tokio::test]
async fn paging_links_are_bound_to_the_client_that_searched() {
    let up = FakeUpstream::start();
    let gw = start_gateway(GatewayConfig::new(up.base()).client(
        "other-ehr",
        "Organization/org-hopkins",
        "1526347814",
        &["system/*.read"],
    ));
    let other = gw.token("other-ehr", "system/*.read");
    let bundle = gw.get(&gw.url("Observation?code=1&_count=1")).await.json();
    let next = bundle_link(&bundle, "next").unwrap();
    let before = up.caller_requests().len();
    let stolen = get_bearer(&next, &other).await;
    assert_eq!(stolen.status, 404, "another client's paging link opened: {}", stolen.text());
    assert_operation_outcome(&stolen);
    assert_eq!(up.caller_requests().len(), before, "a stolen link reached the upstream");
    // Without a token the link is useless too.
    assert_eq!(get(&next).await.status, 401);
    // Its owner can follow it.
    gw.get(&next).await.assert_status(200);
}

/// Request-rate limits (issue 15): per client, per organization (over all
/// its clients), and on the token endpoint — each a 429 with `Retry-After`
/// and an OperationOutcome, audited, and lifted once the wait is over.
#[tokio::test]
async fn request_rates_are_limited_per_client_organization_and_token_endpoint() {
    // Slow rates, so that the requests' own pace (slow on a loaded CI
    // machine) refills little while a burst is spent.
    let gw = Gateway::start(
        GatewayConfig::new("sandbox")
            .extra_toml(
                "[server]\nclient_requests_per_s = 3\norganization_requests_per_s = 4\n\
                 [auth]\ntoken_requests_per_s = 2\n",
            )
            .client("grace-ehr", "Organization/org-grace", "1417987256", &["system/*.read"])
            .client("grace-two", "Organization/org-grace", "1417987256", &["system/*.read"])
            .client("valley-ehr", "Organization/org-valley", "1637458922", &["system/*.read"]),
    );
    let grace = gw.token("grace-ehr", "system/*.read");
    let grace_two = gw.token("grace-two", "system/*.read");
    let valley = gw.token("valley-ehr", "system/*.read");
    let read = |token: String| {
        let url = gw.url("Patient/pat-0001");
        async move { get_bearer(&url, &token).await }
    };
    let assert_throttled = |resp: &Resp, what: &str, who: &str| {
        assert_eq!(resp.status, 429, "{what}: {}", resp.text());
        let wait: u64 = resp.header("retry-after").unwrap_or_default().parse().unwrap_or(0);
        assert!((1..=2).contains(&wait), "{what}: Retry-After {:?}", resp.header("retry-after"));
        let body = resp.json();
        assert_eq!(body["resourceType"], "OperationOutcome", "{what}");
        assert_eq!(body["issue"][0]["code"], "throttled", "{what}");
        assert!(resp.text().contains(who), "{what}: not refused for {who}: {body}");
        assert!(!resp.text().contains("Grantham"), "{what}: member data in a refusal");
    };
    // Requests until the first 429 (at most `n`): the statuses, and that 429.
    let until_throttled = |token: String, n: usize| {
        let read = &read;
        async move {
            let mut statuses = Vec::new();
            for _ in 0..n {
                let resp = read(token.clone()).await;
                statuses.push(resp.status);
                if resp.status == 429 {
                    return (statuses, Some(resp));
                }
            }
            (statuses, None)
        }
    };

    // One client: a burst of 6 (two seconds' worth), then 429 for the client.
    let (statuses, throttled) = until_throttled(grace.clone(), 16).await;
    assert!(statuses.len() >= 6 && statuses[..5].iter().all(|s| *s == 200), "the burst: {statuses:?}");
    assert_throttled(&throttled.expect("no 429 for one client"), "client", "this client");

    // Its organization has 8 for both its clients, 6 of them spent: the
    // other client of org-grace is refused for the organization long before
    // its own burst of 6 is gone; another organization is not limited.
    let (statuses, throttled) = until_throttled(grace_two.clone(), 16).await;
    assert!(statuses.len() <= 6, "organization limit: {statuses:?}");
    assert_throttled(&throttled.expect("no 429 for the organization"), "organization", "this organization");
    // (pat-0001 is not valley's: 404, but not 429.)
    assert_eq!(read(valley.clone()).await.status, 404, "another organization is not limited");

    // The wait is over: served again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(read(grace.clone()).await.status, 200);

    // The token endpoint: a burst of 4 (refilled meanwhile), then 429
    // before any assertion is looked at.
    let mut token_statuses = Vec::new();
    let mut throttled = None;
    for _ in 0..12 {
        let resp = post_form(&gw.token_url(), &[], &[("grant_type", "client_credentials")]).await;
        token_statuses.push(resp.status);
        if resp.status == 429 {
            throttled = Some(resp);
            break;
        }
    }
    assert!(token_statuses[..3].iter().all(|s| *s == 400 || *s == 401), "{token_statuses:?}");
    assert_throttled(
        &throttled.expect("no 429 at the token endpoint"),
        "token endpoint",
        "the token endpoint",
    );

    // Every refusal is audited.
    let audit: String = std::fs::read_dir(gw.audit_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    let refused = audit.lines().filter(|l| l.contains("HTTP 429")).count();
    assert!(refused >= 3, "{refused} throttled requests in the audit log");
}

/// Connection-level caps: a request head over 64 KiB is refused with 431
/// before anything else runs; one under it is read (and, without a token,
/// refused for that).
#[test]
fn oversized_request_heads_are_refused_with_431() {
    let gw = Gateway::start(GatewayConfig::new("sandbox"));
    let addr: SocketAddr =
        gw.url("").trim_start_matches("http://").split('/').next().unwrap().parse().unwrap();
    let send = |filler: usize| -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "GET /fhir/Patient/pat-0001 HTTP/1.1\r\nHost: {addr}\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(filler)
        );
        // The server may answer and close before it has read everything.
        let _ = stream.write_all(head.as_bytes());
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
    };
    assert!(send(40 * 1024).starts_with("HTTP/1.1 401"), "{}", send(40 * 1024));
    let status = send(100 * 1024);
    assert!(status.starts_with("HTTP/1.1 431"), "a 100 KiB head: {status:?}");
}
