//! End-to-end upstream fault tests: the real `fhirwall` binary in front of a
//! raw-TCP upstream ([`FaultUpstream`]) that breaks the HTTP exchange on
//! purpose — a reset halfway through a body, a stall, a 1-byte trickle,
//! trailing garbage, a storm of 5xx, looping paging links, a chunked body
//! with no last chunk.
//!
//! Every fault must end the same way: the caller gets an OperationOutcome
//! (502 `transient`, or 504 `timeout` when the deadline fired, as
//! docs/operations.md says), not one byte of what the upstream had sent
//! (each partial body carries a marker family name that must not appear in
//! the answer, the audit log or the gateway log), not the upstream's
//! address; the request is in the audit log with that status and blamed on
//! the upstream; and the very next request is served normally.
//!
//! The upstream timeout is 1 s so the file stays fast.

use fhirwall_testkit as support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::fault_upstream::{
    FaultRequest, FaultUpstream, Step, attribution_bundle, chunk, chunked_head, json_head, json_response,
};
use support::*;

const CLIENT: &str = "upstream-faults-ehr";
const ORG: &str = "Organization/org-grace";
const NPI: &str = "1417987256";
/// `[upstream] timeout_ms` of every gateway here.
const TIMEOUT: Duration = Duration::from_millis(1000);
/// What a deadline may overrun by on a loaded 2-core machine.
const MARGIN: Duration = Duration::from_millis(1500);

/// The patients every fake upstream here attributes to [`ORG`].
const PATIENTS: &[&str] =
    &["healthy", "reset", "stall", "trickle", "glued", "junk", "storm", "chunked", "chunked-ok", "loop"];

/// The family name of the healthy patient: the positive control that shows
/// a body the gateway does pass on is seen by the same assertions.
const HEALTHY: &str = "Healthyfamilia";

/// A valid Patient, padded so that "half the body" is a real prefix.
fn patient(id: &str, family: &str) -> String {
    format!(
        r#"{{"resourceType":"Patient","id":"{id}","name":[{{"family":"{family}","given":["Ana"]}}],"gender":"female","birthDate":"1970-01-01","address":[{{"line":["{pad}"],"city":"Springfield"}}]}}"#,
        pad = "1 Long Street ".repeat(20)
    )
}

/// The routes every upstream here shares: the attribution lookup and a
/// healthy patient for the recovery check.
fn common(req: &FaultRequest) -> Option<Vec<Step>> {
    if req.target.starts_with("/fhir/Group?") {
        let bundle = attribution_bundle(ORG, "grp-grace", PATIENTS, None);
        return Some(vec![Step::Send(json_response("200 OK", &bundle))]);
    }
    if req.target == "/fhir/Patient/healthy" {
        return Some(vec![Step::Send(json_response("200 OK", &patient("healthy", HEALTHY)))]);
    }
    None
}

fn not_found() -> Vec<Step> {
    let body = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}"#;
    vec![Step::Send(json_response("404 Not Found", body))]
}

/// A gateway in front of a fault upstream, and the provider's token.
struct Fixture {
    up: FaultUpstream,
    gw: Gateway,
    token: String,
}

/// A fault upstream answering [`common`] routes itself and everything
/// else with `handler`, and a gateway in front of it.
fn start(handler: impl Fn(&FaultRequest) -> Vec<Step> + Send + Sync + 'static) -> Fixture {
    start_raw(move |req| common(req).unwrap_or_else(|| handler(req)))
}

/// As [`start`], with no common routes (the attribution lookup included).
fn start_raw(handler: impl Fn(&FaultRequest) -> Vec<Step> + Send + Sync + 'static) -> Fixture {
    let up = FaultUpstream::start(handler);
    let config = GatewayConfig::new(up.base()).upstream_timeout_ms(TIMEOUT.as_millis() as u64).client(
        CLIENT,
        ORG,
        NPI,
        &["system/*.read"],
    );
    let gw = Gateway::start(config);
    let token = gw.token(CLIENT, "system/*.read");
    Fixture { up, gw, token }
}

impl Fixture {
    /// GET a path below the gateway's FHIR base; the answer and how long it took.
    async fn get(&self, path: &str) -> (Resp, Duration) {
        self.get_url(&self.gw.url(path)).await
    }

    async fn get_url(&self, url: &str) -> (Resp, Duration) {
        let started = Instant::now();
        let resp = get_bearer(url, &self.token).await;
        (resp, started.elapsed())
    }

    /// The answer is an OperationOutcome with `status`, holds no byte of
    /// `marker` (in the body or any header) and not the upstream's
    /// address. Returns its request id.
    #[track_caller]
    fn assert_refused(&self, resp: &Resp, status: u16, marker: &str) -> String {
        assert_eq!(resp.status, status, "body: {}", resp.text());
        let outcome = assert_operation_outcome(resp);
        let code = outcome["issue"][0]["code"].as_str().unwrap_or("");
        let expected_code = if status == 504 { "timeout" } else { "transient" };
        assert_eq!(code, expected_code, "{outcome}");
        assert_no_leak(resp, marker, &self.up);
        resp.header("x-request-id").expect("every answer has an X-Request-Id").to_owned()
    }

    /// The gateway serves a healthy read right after the fault, and the
    /// marker check sees a body that does pass (the assertions can fail).
    async fn assert_recovers(&self) {
        let (resp, _) = self.get("Patient/healthy").await;
        resp.assert_status(200);
        assert!(resp.text().contains(HEALTHY), "the healthy patient is not in {}", resp.text());
        assert!(!resp.text().contains(&self.up.addr().to_string()), "{}", resp.text());
    }

    /// The request is in the audit log as an upstream failure with
    /// `status`, and the log holds no byte of `marker`.
    #[track_caller]
    fn assert_audited(&self, request_id: &str, status: u16, marker: &str) {
        let events = audit_events(&self.gw.audit_dir());
        let event = events
            .iter()
            .find(|e| e["id"] == request_id)
            .unwrap_or_else(|| panic!("no audit record of request {request_id}"));
        assert_eq!(event["outcome"], "8", "not audited as an upstream failure: {event}");
        assert_eq!(audit_detail(event, "status").as_deref(), Some(status.to_string().as_str()), "{event}");
        assert_eq!(audit_detail(event, "blame").as_deref(), Some("upstream"), "{event}");
        assert_no_marker_in_audit_or_log(&self.gw, marker);
    }
}

#[track_caller]
fn assert_no_leak(resp: &Resp, marker: &str, up: &FaultUpstream) {
    let body = resp.text();
    assert!(!body.contains(marker), "upstream bytes ({marker}) reached the caller: {body}");
    for (name, value) in &resp.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        assert!(!value.contains(marker), "upstream bytes in header {name}: {value}");
        assert!(!value.contains(&up.addr().to_string()), "upstream address in header {name}: {value}");
    }
    assert!(!body.contains(&up.addr().to_string()), "the upstream address leaked: {body}");
    assert!(!body.contains(&format!(":{}", up.addr().port())), "the upstream port leaked: {body}");
}

#[track_caller]
fn assert_no_marker_in_audit_or_log(gw: &Gateway, marker: &str) {
    let audit = audit_text(&gw.audit_dir());
    assert!(!audit.contains(marker), "upstream bytes ({marker}) in the audit log");
    assert!(!gw.log().contains(marker), "upstream bytes ({marker}) in the gateway log");
}

fn audit_text(dir: &Path) -> String {
    audit_lines(dir).join("\n")
}

/// Every AuditEvent in the log.
fn audit_events(dir: &Path) -> Vec<Value> {
    audit_text(dir)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("an audit line is JSON")["event"].clone())
        .collect()
}

/// A `detail` of the transaction entity (`XrequestId`) of an AuditEvent.
fn audit_detail(event: &Value, name: &str) -> Option<String> {
    event["entity"].as_array()?.iter().find(|e| e["type"]["code"] == "XrequestId")?["detail"]
        .as_array()?
        .iter()
        .find(|d| d["type"] == name)?["valueString"]
        .as_str()
        .map(str::to_owned)
}

// ---------------------------------------------------------------------------
// 1. Connection reset mid-body.

#[tokio::test]
async fn reset_mid_body_is_502_and_leaks_nothing() {
    const MARKER: &str = "Resetfamilia";
    let fx = start(|req| match req.target.as_str() {
        "/fhir/Patient/reset" => {
            let body = patient("reset", MARKER);
            let half = body.len() / 2;
            assert!(body[..half].contains(MARKER));
            vec![
                Step::Send(json_head("200 OK", body.len())),
                Step::Send(body.as_bytes()[..half].to_vec()),
                // Let the gateway read the half before the RST arrives.
                Step::Stall(Duration::from_millis(100)),
                Step::Reset,
            ]
        }
        _ => not_found(),
    });
    fx.assert_recovers().await;
    let (resp, _) = fx.get("Patient/reset").await;
    let id = fx.assert_refused(&resp, 502, MARKER);
    fx.assert_recovers().await;
    fx.assert_audited(&id, 502, MARKER);
}

// ---------------------------------------------------------------------------
// 2. Stall mid-body: the deadline fires.

#[tokio::test]
async fn stall_mid_body_is_504_at_the_deadline() {
    const MARKER: &str = "Stallfamilia";
    let fx = start(|req| match req.target.as_str() {
        "/fhir/Patient/stall" => {
            let body = patient("stall", MARKER);
            let cut = body.find(MARKER).unwrap() + MARKER.len() + 5;
            vec![
                Step::Send(json_head("200 OK", body.len())),
                Step::Send(body.as_bytes()[..cut].to_vec()),
                Step::Stall(Duration::from_secs(30)),
            ]
        }
        _ => not_found(),
    });
    fx.assert_recovers().await;
    let (resp, took) = fx.get("Patient/stall").await;
    let id = fx.assert_refused(&resp, 504, MARKER);
    assert!(took >= TIMEOUT - Duration::from_millis(50), "answered after {took:?}, before the deadline");
    assert!(took < TIMEOUT + MARGIN, "the deadline was not enforced: answered after {took:?}");
    fx.assert_recovers().await;
    fx.assert_audited(&id, 504, MARKER);
    // The gateway hung up on the stalled upstream (no leaked connection).
    wait_until(
        Duration::from_secs(2),
        || fx.up.abandoned() >= 1,
        "the stalled upstream connection is still open",
    );
}

// ---------------------------------------------------------------------------
// 3. A trickle never idle for long: only a total-time deadline stops it.

#[tokio::test]
async fn trickle_is_cut_off_by_the_total_deadline() {
    const MARKER: &str = "Tricklefamilia";
    // A byte every 200 ms: never idle for even a fifth of the 1 s timeout,
    // so a per-read idle timeout would wait the minute and more this
    // valid body takes. (The same as 1 byte/s against a 5 s timeout, 5x faster.)
    let fx = start(|req| match req.target.as_str() {
        "/fhir/Patient/trickle" => {
            let body = patient("trickle", MARKER);
            vec![
                Step::Send(json_head("200 OK", body.len())),
                Step::Trickle(body.into_bytes(), Duration::from_millis(200)),
            ]
        }
        _ => not_found(),
    });
    fx.assert_recovers().await;
    let (resp, took) = fx.get("Patient/trickle").await;
    let id = fx.assert_refused(&resp, 504, MARKER);
    assert!(took < TIMEOUT + MARGIN, "a trickle kept the gateway waiting {took:?}");
    fx.assert_recovers().await;
    fx.assert_audited(&id, 504, MARKER);
    wait_until(Duration::from_secs(2), || fx.up.abandoned() >= 1, "the gateway still reads the trickle");
}

// ---------------------------------------------------------------------------
// 4. A valid resource followed by more bytes (correct Content-Length).

#[tokio::test]
async fn garbage_after_a_valid_resource_is_refused() {
    const MARKER: &str = "Gluedfamilia";
    let fx = start(|req| {
        let first = patient("glued", MARKER);
        let body = match req.target.as_str() {
            // Two JSON objects back to back: the first must not be served.
            "/fhir/Patient/glued" => format!(r#"{first}{{"resourceType":"Patient","id":"glued","name":[]}}"#),
            // Trailing junk after one object.
            "/fhir/Patient/junk" => format!("{}\n}}]garbage", patient("junk", MARKER)),
            // A search Bundle with junk after it.
            t if t.starts_with("/fhir/Patient?") && t.contains("_id=glued") => {
                format!("{},{{}}", searchset(&first))
            }
            // Control: the same Bundle without the junk is served.
            t if t.starts_with("/fhir/Patient?") => searchset(&patient("healthy", HEALTHY)),
            _ => return not_found(),
        };
        vec![Step::Send(json_response("200 OK", &body))]
    });
    fx.assert_recovers().await;
    for path in ["Patient/glued", "Patient/junk", "Patient?_id=glued"] {
        let (resp, _) = fx.get(path).await;
        let id = fx.assert_refused(&resp, 502, MARKER);
        fx.assert_audited(&id, 502, MARKER);
        fx.assert_recovers().await;
    }
    let (resp, _) = fx.get("Patient?_id=healthy").await;
    resp.assert_status(200);
    assert!(resp.text().contains(HEALTHY), "{}", resp.text());
}

/// A searchset Bundle of one matching resource.
fn searchset(resource: &str) -> String {
    format!(
        r#"{{"resourceType":"Bundle","type":"searchset","entry":[{{"resource":{resource},"search":{{"mode":"match"}}}}]}}"#
    )
}

// ---------------------------------------------------------------------------
// 5. A storm of 5xx, then the upstream heals.

#[tokio::test]
async fn storm_of_5xx_then_the_next_request_succeeds() {
    const MARKER: &str = "Stormfamilia";
    const HEALED: &str = "Healedfamilia";
    let healed = Arc::new(AtomicBool::new(false));
    let fx = start({
        let healed = healed.clone();
        let served = AtomicUsize::new(0);
        move |req| {
            if req.target != "/fhir/Patient/storm" {
                return not_found();
            }
            if healed.load(Ordering::SeqCst) {
                return vec![Step::Send(json_response("200 OK", &patient("storm", HEALED)))];
            }
            // Half 503, half 500, each with data and internals in the body.
            let n = served.fetch_add(1, Ordering::SeqCst);
            let status =
                if n.is_multiple_of(2) { "503 Service Unavailable" } else { "500 Internal Server Error" };
            let body = format!(
                r#"{{"resourceType":"OperationOutcome","issue":[{{"severity":"fatal","code":"exception","diagnostics":"{MARKER} jdbc:postgresql://db.internal/fhir?password=hunter2"}}],"contained":[{}]}}"#,
                patient("storm", MARKER)
            );
            vec![Step::Send(json_response(status, &body))]
        }
    });
    fx.assert_recovers().await;
    let url = fx.gw.url("Patient/storm");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (url, token) = (url.clone(), fx.token.clone());
            tokio::spawn(async move { get_bearer(&url, &token).await })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        let resp = task.await.expect("request task");
        assert!(!resp.text().contains("hunter2"), "{}", resp.text());
        ids.push(fx.assert_refused(&resp, 502, MARKER));
    }
    // Each of the 50 answers stands for an upstream failure it met (no
    // answer was made up from another request's state).
    let upstream_ids: std::collections::HashSet<String> = fx
        .up
        .requests()
        .iter()
        .filter(|r| r.target == "/fhir/Patient/storm")
        .filter_map(|r| r.head.split("x-request-id: ").nth(1)?.split("\r\n").next().map(str::to_owned))
        .collect();
    for id in &ids {
        assert!(upstream_ids.contains(id), "request {id} never reached the upstream");
    }
    // No stuck state: the first request after the upstream heals is served.
    healed.store(true, Ordering::SeqCst);
    let (resp, _) = fx.get("Patient/storm").await;
    resp.assert_status(200);
    assert!(resp.text().contains(HEALED), "{}", resp.text());
    fx.assert_recovers().await;
    let events = audit_events(&fx.gw.audit_dir());
    for id in &ids {
        let event =
            events.iter().find(|e| e["id"] == id.as_str()).unwrap_or_else(|| panic!("{id} not audited"));
        assert_eq!(event["outcome"], "8", "{event}");
        assert_eq!(audit_detail(event, "status").as_deref(), Some("502"), "{event}");
    }
    assert_no_marker_in_audit_or_log(&fx.gw, MARKER);
}

// ---------------------------------------------------------------------------
// 6. Looping paging links: in searches, and in the attribution lookup.

/// A searchset page of one Observation of the healthy patient, with a
/// `next` link to `?page={next}` when given.
fn observation_page(base: &str, obs: &str, next: Option<&str>) -> String {
    let link = next
        .map(|n| format!(r#""link":[{{"relation":"next","url":"{base}/Observation?page={n}"}}],"#))
        .unwrap_or_default();
    format!(
        r#"{{"resourceType":"Bundle","type":"searchset",{link}"entry":[{{"fullUrl":"{base}/Observation/{obs}","resource":{{"resourceType":"Observation","id":"{obs}","status":"final","code":{{"text":"x"}},"subject":{{"reference":"Patient/healthy"}}}},"search":{{"mode":"match"}}}}]}}"#
    )
}

/// How following a search's `next` links ended.
#[derive(Debug, PartialEq)]
enum Paging {
    /// A page without `next` after this many pages.
    Ended(usize),
    /// A refusal (status) after this many pages.
    Refused(u16, usize),
    /// Still a `next` link after the limit.
    GoesOn,
}

/// Follows `next` links from `first` for at most `limit` pages, each within
/// the deadline, each holding only the healthy patient's Observations;
/// with `must_end`, panics when the links go on past `limit`.
async fn follow(fx: &Fixture, first: &str, limit: usize, must_end: bool) -> Paging {
    let mut url = fx.gw.url(first);
    for pages in 0..limit {
        let (resp, took) = fx.get_url(&url).await;
        // The upstream answers at once: a page that takes longer than a
        // deadline and a margin means the gateway spun on the loop.
        assert!(took < TIMEOUT + MARGIN, "page {pages} took {took:?}");
        if resp.status != 200 {
            fx.assert_refused(&resp, resp.status, "obs-");
            return Paging::Refused(resp.status, pages);
        }
        let bundle = resp.json();
        for resource in bundle_resources(&bundle) {
            let subject = resource["subject"]["reference"].as_str().unwrap_or("");
            assert!(subject.ends_with("Patient/healthy"), "{resource}");
        }
        assert!(!resp.text().contains(&fx.up.addr().to_string()), "{}", resp.text());
        match bundle_link(&bundle, "next") {
            Some(next) => url = next,
            None => return Paging::Ended(pages + 1),
        }
    }
    assert!(
        !must_end,
        "the search's next links went on for {limit} pages: a client following them never stops"
    );
    Paging::GoesOn
}

fn looping_search_upstream(up_base: Arc<Mutex<String>>) -> impl Fn(&FaultRequest) -> Vec<Step> + Send + Sync {
    move |req| {
        let base = up_base.lock().unwrap().clone();
        let t = req.target.as_str();
        let body = if !t.starts_with("/fhir/Observation?") {
            return not_found();
        } else if t.contains("page=self") {
            // A page whose next link is itself.
            observation_page(&base, "obs-self", Some("self"))
        } else if t.contains("page=1") {
            observation_page(&base, "obs-1", Some("2"))
        } else if t.contains("page=2") {
            // Page 2 points back to page 1.
            observation_page(&base, "obs-2", Some("1"))
        } else if t.contains("code=selfloop") {
            observation_page(&base, "obs-0", Some("self"))
        } else {
            observation_page(&base, "obs-0", Some("1"))
        };
        vec![Step::Send(json_response("200 OK", &body))]
    }
}

/// A loop the gateway meets while filling one page (pages of 10; and a
/// page whose next link is itself) is refused: 502, audited.
#[tokio::test]
async fn looping_search_next_links_within_a_page_are_refused() {
    let up_base = Arc::new(Mutex::new(String::new()));
    let fx = start(looping_search_upstream(up_base.clone()));
    *up_base.lock().unwrap() = fx.up.base();
    fx.assert_recovers().await;
    for first in
        ["Observation?patient=Patient/healthy&_count=10", "Observation?patient=Patient/healthy&code=selfloop"]
    {
        let (resp, took) = fx.get(first).await;
        assert!(took < TIMEOUT + MARGIN, "{first}: took {took:?}");
        let id = fx.assert_refused(&resp, 502, "obs-");
        fx.assert_audited(&id, 502, "obs-");
        fx.assert_recovers().await;
    }
}

/// One match a page, so the loop (page 1 -> 2 -> 1) spans gateway pages:
/// every page is still answered at once and holds only the caller's data
/// (nothing hangs). Whether the links end is the next test.
#[tokio::test]
async fn looping_search_next_links_across_pages_never_hang() {
    let up_base = Arc::new(Mutex::new(String::new()));
    let fx = start(looping_search_upstream(up_base.clone()));
    *up_base.lock().unwrap() = fx.up.base();
    let pages = follow(&fx, "Observation?patient=Patient/healthy&_count=1", 12, false).await;
    assert!(matches!(pages, Paging::Refused(502, _) | Paging::Ended(_) | Paging::GoesOn), "{pages:?}");
    fx.assert_recovers().await;
}

/// A loop that spans gateway pages (`_count=1`: each gateway page reads one
/// upstream page) is caught by the trail the page token carries (Brent's
/// cycle finding, `proxy::paging::Trail`): following `next` ends in a 502
/// within a few pages instead of going round for ever.
#[tokio::test]
async fn looping_search_next_links_across_pages_end_or_are_refused() {
    let up_base = Arc::new(Mutex::new(String::new()));
    let fx = start(looping_search_upstream(up_base.clone()));
    *up_base.lock().unwrap() = fx.up.base();
    let pages = follow(&fx, "Observation?patient=Patient/healthy&_count=1", 20, true).await;
    assert!(matches!(pages, Paging::Refused(502, _)), "{pages:?}");
}

/// An attribution lookup whose Group paging loops (page 2's next is page 1),
/// or never ends (every page links a new one), until `healed`.
fn looping_groups(
    up_base: Arc<Mutex<String>>,
    healed: Arc<AtomicBool>,
    endless: bool,
) -> impl Fn(&FaultRequest) -> Vec<Step> + Send + Sync {
    let first: Mutex<Option<String>> = Mutex::new(None);
    move |req| {
        let t = req.target.as_str();
        if let Some(rest) = t.strip_prefix("/fhir/Group?") {
            let base = up_base.lock().unwrap().clone();
            if healed.load(Ordering::SeqCst) {
                let bundle = attribution_bundle(ORG, "grp-grace", PATIENTS, None);
                return vec![Step::Send(json_response("200 OK", &bundle))];
            }
            let page: usize = rest.split("page=").nth(1).and_then(|p| p.parse().ok()).unwrap_or(1);
            if page == 1 {
                first.lock().unwrap().get_or_insert_with(|| rest.to_owned());
            }
            let next = if endless || page == 1 {
                format!("{base}/Group?page={}", page + 1)
            } else {
                format!("{base}/Group?{}", first.lock().unwrap().clone().unwrap_or_default())
            };
            // Every page attributes the patient: a partial load would serve it.
            let bundle = attribution_bundle(ORG, &format!("grp-{page}"), &["loop"], Some(&next));
            return vec![Step::Send(json_response("200 OK", &bundle))];
        }
        common(req).unwrap_or_else(|| match t {
            "/fhir/Patient/loop" => {
                vec![Step::Send(json_response("200 OK", &patient("loop", "Loopfamilia")))]
            }
            _ => not_found(),
        })
    }
}

/// The attribution load reads the Group pages `looping_groups` serves:
/// the patient they attribute is refused with `status` within `limit`,
/// never read, and served as soon as the Group search is sane again.
async fn attribution_loop_fails_closed(endless: bool, status: u16, limit: Duration) {
    const MARKER: &str = "Loopfamilia";
    let up_base = Arc::new(Mutex::new(String::new()));
    let healed = Arc::new(AtomicBool::new(false));
    let fx = start_raw(looping_groups(up_base.clone(), healed.clone(), endless));
    *up_base.lock().unwrap() = fx.up.base();
    let (resp, took) = fx.get("Patient/loop").await;
    let id = fx.assert_refused(&resp, status, MARKER);
    let pages = fx.up.count("/fhir/Group?");
    assert!(took < limit, "the attribution load ran {took:?} ({pages} Group pages)");
    fx.assert_audited(&id, status, MARKER);
    assert_eq!(fx.up.count("/fhir/Patient/loop"), 0, "the patient was read without an attribution");
    // Not stuck: once the upstream's Group search is sane, access works.
    healed.store(true, Ordering::SeqCst);
    let (resp, _) = fx.get("Patient/loop").await;
    resp.assert_status(200);
    assert!(resp.text().contains(MARKER));
}

/// Page 2 links back to page 1: refused as soon as a link repeats.
#[tokio::test]
async fn attribution_group_paging_that_loops_fails_closed() {
    attribution_loop_fails_closed(false, 502, MARGIN).await;
}

/// Every page links a new one, each answered at once: no link repeats, so
/// only the load's own budget (4 upstream deadlines) ends it, as a 504.
/// (It used to read 10,000 pages first: ~11 s over loopback here, minutes
/// against a real server.)
#[tokio::test]
async fn attribution_group_paging_that_never_ends_fails_closed() {
    attribution_loop_fails_closed(true, 504, TIMEOUT * 4 + MARGIN).await;
}

// ---------------------------------------------------------------------------
// 7. A chunked body without its last chunk.

#[tokio::test]
async fn chunked_body_without_the_last_chunk_is_refused() {
    const MARKER: &str = "Chunkfamilia";
    let fx = start(|req| {
        let body = patient("chunked", MARKER);
        let (a, b) = body.as_bytes().split_at(body.len() / 2);
        let mut steps = vec![Step::Send(chunked_head("200 OK")), Step::Send(chunk(a)), Step::Send(chunk(b))];
        match req.target.as_str() {
            // The whole JSON arrives, but not the 0-chunk: the connection
            // just closes, so the message is incomplete.
            "/fhir/Patient/chunked" => {}
            // Control: the same with its last chunk is served.
            "/fhir/Patient/chunked-ok" => {
                let body = patient("chunked-ok", HEALTHY);
                let (a, b) = body.as_bytes().split_at(body.len() / 2);
                steps = vec![
                    Step::Send(chunked_head("200 OK")),
                    Step::Send(chunk(a)),
                    Step::Send(chunk(b)),
                    Step::Send(chunk(b"")),
                ];
            }
            _ => return not_found(),
        }
        steps
    });
    fx.assert_recovers().await;
    let (resp, _) = fx.get("Patient/chunked").await;
    let id = fx.assert_refused(&resp, 502, MARKER);
    fx.assert_recovers().await;
    fx.assert_audited(&id, 502, MARKER);
    let (resp, _) = fx.get("Patient/chunked-ok").await;
    resp.assert_status(200);
    assert!(resp.text().contains(HEALTHY));
}

#[track_caller]
fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool, what: &str) {
    let until = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < until, "{what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}
