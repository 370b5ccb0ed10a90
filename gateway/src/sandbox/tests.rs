//! Sandbox tests: the builtin dataset over real HTTP.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

const FACTS: &str = include_str!("../../../examples/dataset/facts.json");

fn facts() -> &'static Value {
    static F: OnceLock<Value> = OnceLock::new();
    F.get_or_init(|| serde_json::from_str(FACTS).expect("facts.json"))
}

/// One builtin sandbox for all tests that leave faults off.
fn shared() -> Arc<Sandbox> {
    static S: OnceLock<Arc<Sandbox>> = OnceLock::new();
    S.get_or_init(|| Arc::new(Sandbox::builtin().expect("builtin dataset"))).clone()
}

async fn start_shared() -> SandboxHandle {
    start(SocketAddr::from(([127, 0, 0, 1], 0)), shared()).await.expect("start")
}

struct Resp {
    status: u16,
    content_type: String,
    etag: Option<String>,
    body: Value,
}

async fn send(req: reqwest::RequestBuilder) -> Resp {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let content_type =
        r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let etag = r.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let text = r.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    Resp { status, content_type, etag, body }
}

async fn get(url: &str) -> Resp {
    send(reqwest::Client::new().get(url)).await
}

fn entries<'a>(bundle: &'a Value, mode: &str) -> Vec<&'a Value> {
    bundle["entry"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["search"]["mode"] == mode).collect())
        .unwrap_or_default()
}

fn keys(bundle: &Value, mode: &str) -> Vec<String> {
    entries(bundle, mode)
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect()
}

fn link<'a>(bundle: &'a Value, rel: &str) -> Option<&'a str> {
    bundle["link"].as_array()?.iter().find(|l| l["relation"] == rel)?["url"].as_str()
}

fn count_of(patient: &str, ty: &str) -> u64 {
    facts()["patients"][patient]["resources"][ty].as_u64().unwrap_or(0)
}

#[test]
fn builtin_matches_the_facts() {
    let s = shared();
    let f = facts();
    assert_eq!(s.len() as u64, f["total_resources"].as_u64().unwrap());
    for (ty, n) in f["counts"].as_object().unwrap() {
        assert_eq!(s.count(ty) as u64, n.as_u64().unwrap(), "{ty}");
    }
    assert!(s.resource_json("Patient", "pat-0001").unwrap().contains("\"pat-0001\""));
    assert!(!s.faults_enabled(), "faults must be off by default");
}

#[test]
fn load_completes_meta_replaces_and_unpacks_bundles() {
    let s = Sandbox::from_ndjson(
        r#"{"resourceType":"Patient","id":"a"}

{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient","id":"b","meta":{"versionId":"3","lastUpdated":"2020-01-01T00:00:00Z"}}}]}
{"resourceType":"Patient","id":"a","gender":"female","meta":{"lastUpdated":"2021-01-01T00:00:00Z"}}"#,
    )
    .unwrap();
    assert_eq!(s.len(), 2);
    let a: Value = serde_json::from_str(s.resource_json("Patient", "a").unwrap()).unwrap();
    assert_eq!(a["gender"], "female");
    assert_eq!(a["meta"]["versionId"], "1");
    assert!(Sandbox::from_ndjson("{not json").is_err());
    assert!(Sandbox::from_ndjson(r#"{"resourceType":"Patient"}"#).is_err());
}

#[tokio::test]
async fn read_vread_history_and_not_found() {
    let h = start_shared().await;
    let base = h.base_url();
    assert!(base.starts_with("http://127.0.0.1:") && base.ends_with("/fhir"));

    let r = get(&format!("{base}/Patient/pat-0001")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "application/fhir+json");
    assert_eq!(r.etag.as_deref(), Some("W/\"1\""));
    assert_eq!(r.body["id"], "pat-0001");

    let r = get(&format!("{base}/Patient/pat-0001/_history/1")).await;
    assert_eq!((r.status, r.body["id"].as_str()), (200, Some("pat-0001")));
    let r = get(&format!("{base}/Patient/pat-0001/_history/2")).await;
    assert_eq!(r.status, 404);
    let r = get(&format!("{base}/Patient/pat-0001/_history")).await;
    assert_eq!(
        (r.status, r.body["type"].as_str(), r.body["total"].as_u64()),
        (200, Some("history"), Some(1))
    );

    for path in ["Patient/nope", "Patient/pat-001", "Observation/pat-0001", "Basic/x"] {
        let r = get(&format!("{base}/{path}")).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.body["resourceType"], "OperationOutcome");
        assert_eq!(r.content_type, "application/fhir+json");
    }
    let r = get(&format!("{base}/metadata")).await;
    assert_eq!((r.status, r.body["resourceType"].as_str()), (200, Some("CapabilityStatement")));
    let types: Vec<&str> =
        r.body["rest"][0]["resource"].as_array().unwrap().iter().filter_map(|t| t["type"].as_str()).collect();
    assert!(types.contains(&"ExplanationOfBenefit") && types.contains(&"Group"));
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn search_by_patient_in_every_reference_form() {
    let h = start_shared().await;
    let base = h.base_url();
    let want = count_of("pat-0001", "ExplanationOfBenefit");
    assert!(want > 0);
    for value in ["pat-0001", "Patient/pat-0001", "http://elsewhere.example/fhir/Patient/pat-0001"] {
        let url = format!("{base}/ExplanationOfBenefit?patient={}&_count=500", urlencode(value));
        let r = get(&url).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["type"], "searchset");
        assert_eq!(r.body["total"].as_u64(), Some(want), "{value}");
        for e in entries(&r.body, "match") {
            assert_eq!(e["resource"]["patient"]["reference"], "Patient/pat-0001");
            let full = e["fullUrl"].as_str().unwrap();
            assert!(full.starts_with(base) && full.ends_with(e["resource"]["id"].as_str().unwrap()));
        }
    }
    // Exact matching: pat-0001 is a prefix of pat-00011.
    let r = get(&format!("{base}/Condition?patient=pat-00011&_count=500")).await;
    assert_eq!(r.body["total"].as_u64(), Some(count_of("pat-00011", "Condition")));
    assert!(keys(&r.body, "match").iter().all(|k| k.starts_with("Condition/cond-00011-")));
    // subject, beneficiary, and several patients at once.
    let r = get(&format!("{base}/Observation?subject=Patient/pat-0001")).await;
    assert_eq!(r.body["total"].as_u64(), Some(count_of("pat-0001", "Observation")));
    let r = get(&format!("{base}/Coverage?beneficiary=pat-0002")).await;
    assert_eq!(keys(&r.body, "match"), vec!["Coverage/cov-0002"]);
    let r = get(&format!("{base}/Encounter?patient=pat-0001,pat-0002&_count=500")).await;
    assert_eq!(
        r.body["total"].as_u64(),
        Some(count_of("pat-0001", "Encounter") + count_of("pat-0002", "Encounter"))
    );
    // A dependent's Coverage names the subscriber; subscriber= finds it, beneficiary= does not.
    let dep = &facts()["dependents"][0];
    let (patient, subscriber) = (dep["patient"].as_str().unwrap(), dep["subscriber"].as_str().unwrap());
    let r = get(&format!("{base}/Coverage?subscriber={subscriber}")).await;
    assert!(keys(&r.body, "match").contains(&format!("Coverage/cov-{}", &patient[4..])));
    let r = get(&format!("{base}/Coverage?beneficiary={subscriber}")).await;
    assert_eq!(r.body["total"].as_u64(), Some(1));
    h.shutdown().await.unwrap();
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn paging_links_visit_every_result_exactly_once() {
    let h = start_shared().await;
    let base = h.base_url().to_owned();
    let want = facts()["counts"]["Observation"].as_u64().unwrap();
    let mut url = format!("{base}/Observation?_count=37");
    let mut seen = HashSet::new();
    let mut pages = 0;
    loop {
        let r = get(&url).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["total"].as_u64(), Some(want));
        assert!(link(&r.body, "self").unwrap().starts_with(&base));
        if pages > 0 {
            assert!(link(&r.body, "previous").is_some());
        }
        for k in keys(&r.body, "match") {
            assert!(seen.insert(k.clone()), "{k} twice");
        }
        pages += 1;
        match link(&r.body, "next") {
            Some(next) => {
                assert!(next.starts_with(&format!("{base}/Observation?")));
                url = next.to_owned();
            }
            None => break,
        }
    }
    assert_eq!(seen.len() as u64, want);
    assert_eq!(pages, want.div_ceil(37));

    // Paging keeps the search parameters, also for POST _search.
    let resp = send(
        reqwest::Client::new()
            .post(format!("{base}/ExplanationOfBenefit/_search"))
            .form(&[("patient", "Patient/pat-0001"), ("_count", "2")]),
    )
    .await;
    assert_eq!(resp.status, 200);
    let total = resp.body["total"].as_u64().unwrap();
    assert_eq!(total, count_of("pat-0001", "ExplanationOfBenefit"));
    let mut n = keys(&resp.body, "match").len() as u64;
    let mut next = link(&resp.body, "next").map(str::to_owned);
    while let Some(u) = next {
        assert!(u.contains("patient=Patient%2Fpat-0001"), "{u}");
        let r = get(&u).await;
        n += keys(&r.body, "match").len() as u64;
        next = link(&r.body, "next").map(str::to_owned);
    }
    assert_eq!(n, total);

    let r = get(&format!("{base}/ExplanationOfBenefit?_count=100000")).await;
    assert_eq!(entries(&r.body, "match").len(), super::search::MAX_COUNT);
    assert!(link(&r.body, "next").unwrap().contains("_count=500"));
    assert_eq!(get(&format!("{base}/Observation?_count=-1")).await.status, 400);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn include_and_revinclude() {
    let h = start_shared().await;
    let base = h.base_url();
    let r = get(&format!(
        "{base}/ExplanationOfBenefit?_id=eob-0001-1&_include=ExplanationOfBenefit:patient\
         &_include=ExplanationOfBenefit:provider&_include=ExplanationOfBenefit:insurer\
         &_include=ExplanationOfBenefit:coverage"
    ))
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(keys(&r.body, "match"), vec!["ExplanationOfBenefit/eob-0001-1"]);
    assert_eq!(r.body["total"].as_u64(), Some(1), "includes do not count");
    let inc: HashSet<String> = keys(&r.body, "include").into_iter().collect();
    for k in ["Patient/pat-0001", "Organization/org-payer", "Coverage/cov-0001"] {
        assert!(inc.contains(k), "{k} in {inc:?}");
    }
    let all =
        get(&format!("{base}/ExplanationOfBenefit?_id=eob-0001-1&_include=ExplanationOfBenefit:*")).await;
    let all: HashSet<String> = keys(&all.body, "include").into_iter().collect();
    assert!(inc.is_subset(&all) && all.iter().any(|k| k.starts_with("Practitioner/")));

    let r = get(&format!("{base}/Patient?_id=pat-0001&_revinclude=ExplanationOfBenefit:patient")).await;
    assert_eq!(keys(&r.body, "match"), vec!["Patient/pat-0001"]);
    assert_eq!(keys(&r.body, "include").len() as u64, count_of("pat-0001", "ExplanationOfBenefit"));

    let r = get(&format!(
        "{base}/Patient?_id=pat-0002&_revinclude=Coverage:beneficiary&_revinclude=Coverage:subscriber"
    ))
    .await;
    assert!(keys(&r.body, "include").contains(&"Coverage/cov-0002".to_owned()));

    let prov = &facts()["provenance"][0];
    let target = prov["target"].as_str().unwrap();
    let (ty, id) = target.split_once('/').unwrap();
    let r = get(&format!("{base}/{ty}?_id={id}&_revinclude=Provenance:target")).await;
    assert!(keys(&r.body, "include").contains(&prov["provenance"].as_str().unwrap().to_owned()));

    let r = get(&format!("{base}/Group?_id=grp-grace&_include=Group:member")).await;
    let members = facts()["attribution"]["org-grace"]["member_count"].as_u64().unwrap();
    assert_eq!(keys(&r.body, "include").len() as u64, members);

    // _include:iterate follows the included resources' references too.
    let r = get(&format!(
        "{base}/ExplanationOfBenefit?_id=eob-0001-1&_include=ExplanationOfBenefit:coverage\
         &_include:iterate=Coverage:payor"
    ))
    .await;
    let inc = keys(&r.body, "include");
    assert!(
        inc.contains(&"Coverage/cov-0001".to_owned()) && inc.contains(&"Organization/org-payer".to_owned())
    );

    let r =
        get(&format!("{base}/ExplanationOfBenefit?_id=eob-0001-1&_include=ExplanationOfBenefit:nope")).await;
    assert_eq!(r.status, 400);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn groups_by_managing_entity_and_member() {
    let h = start_shared().await;
    let base = h.base_url();
    for q in [
        "managing-entity=Organization/org-grace",
        "managingEntity=Organization/org-grace",
        "managingEntity=org-grace",
        "member=Patient/pat-0001",
    ] {
        let r = get(&format!("{base}/Group?{q}")).await;
        assert_eq!(r.status, 200, "{q}");
        assert_eq!(keys(&r.body, "match"), vec!["Group/grp-grace"], "{q}");
    }
    let r = get(&format!("{base}/Group?managing-entity=Organization/org-recovery")).await;
    assert_eq!(r.body["total"].as_u64(), Some(0));
    assert!(r.body.get("entry").is_none());
    let r = get(&format!("{base}/Group?type=person&actual=true")).await;
    assert_eq!(r.body["total"].as_u64(), facts()["counts"]["Group"].as_u64());
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn tokens_dates_strings_and_sort() {
    let h = start_shared().await;
    let base = h.base_url();
    let pa = get(&format!("{base}/ExplanationOfBenefit?use=preauthorization&_count=0")).await;
    let claims = get(&format!("{base}/ExplanationOfBenefit?use=claim&_count=0")).await;
    let eobs = facts()["counts"]["ExplanationOfBenefit"].as_u64().unwrap();
    assert_eq!(pa.body["total"].as_u64(), Some(facts()["prior_auth"].as_array().unwrap().len() as u64));
    assert_eq!(pa.body["total"].as_u64().unwrap() + claims.body["total"].as_u64().unwrap(), eobs);
    assert!(pa.body.get("entry").is_none());
    let pharmacy = get(&format!(
        "{base}/ExplanationOfBenefit?type=http://terminology.hl7.org/CodeSystem/claim-type|pharmacy&_count=0"
    ))
    .await;
    assert!(pharmacy.body["total"].as_u64().unwrap() > 0);

    let obs = facts()["counts"]["Observation"].as_u64().unwrap();
    let ge = get(&format!("{base}/Observation?_lastUpdated=ge2022-01-01&_count=0")).await;
    let lt = get(&format!("{base}/Observation?_lastUpdated=lt2022-01-01&_count=0")).await;
    let (ge, lt) = (ge.body["total"].as_u64().unwrap(), lt.body["total"].as_u64().unwrap());
    assert!(ge > 0 && lt > 0);
    assert_eq!(ge + lt, obs);
    let old = get(&format!("{base}/Observation?date=lt2016-01-01&_count=500")).await;
    let pre: HashSet<&str> =
        facts()["pre_2016"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let old_keys = keys(&old.body, "match");
    assert!(!old_keys.is_empty());
    assert!(old_keys.iter().all(|k| pre.contains(k.as_str())));
    assert_eq!(get(&format!("{base}/Observation?date=yesterday")).await.status, 400);

    let labelled = get(&format!(
        "{base}/Condition?_security=http://terminology.hl7.org/CodeSystem/v3-ActCode|42CFRPart2&_count=500"
    ))
    .await;
    let part2: HashSet<&str> =
        facts()["part2"]["labelled"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let got = keys(&labelled.body, "match");
    assert!(!got.is_empty() && got.iter().all(|k| part2.contains(k.as_str())));

    let p1 = &facts()["patients"]["pat-0001"];
    let family = p1["name"]["family"].as_str().unwrap();
    let r = get(&format!(
        "{base}/Patient?family={}&birthdate={}",
        &family[..4].to_lowercase(),
        p1["birthDate"].as_str().unwrap()
    ))
    .await;
    assert!(keys(&r.body, "match").contains(&"Patient/pat-0001".to_owned()));
    let member_id = p1["member_id"].as_str().unwrap();
    let r =
        get(&format!("{base}/Patient?identifier=http://example.org/fhirwall/member-id|{member_id}")).await;
    assert_eq!(keys(&r.body, "match"), vec!["Patient/pat-0001"]);

    let r = get(&format!("{base}/Encounter?patient=pat-0001&_sort=-date&_count=500")).await;
    let starts: Vec<&str> =
        entries(&r.body, "match").iter().filter_map(|e| e["resource"]["period"]["start"].as_str()).collect();
    assert!(starts.len() > 1 && starts.windows(2).all(|w| w[0] >= w[1]), "{starts:?}");
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_parameters_strict_or_lenient() {
    let h = start_shared().await;
    let base = h.base_url();
    let url = format!("{base}/Observation?patient=pat-0001&frobnicate=1");
    let r = get(&url).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    let r = send(reqwest::Client::new().get(&url).header("Prefer", "handling=lenient")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["total"].as_u64(), Some(count_of("pat-0001", "Observation")));
    assert!(!link(&r.body, "self").unwrap().contains("frobnicate"));
    for bad in [
        "Observation?code:banana=x",
        "Observation?_has:Foo=x",
        "Observation?patient.name=x",
        "Group?managing_entity=x",
    ] {
        assert_eq!(get(&format!("{base}/{bad}")).await.status, 400, "{bad}");
    }
    // An empty parameter is ignored.
    assert_eq!(get(&format!("{base}/Group?member=")).await.status, 200);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn writes_operations_compartments_and_xml_are_refused() {
    let h = start_shared().await;
    let base = h.base_url();
    let c = reqwest::Client::new();
    let body = r#"{"resourceType":"Patient","id":"x"}"#;
    assert_eq!(send(c.post(format!("{base}/Patient")).body(body)).await.status, 405);
    assert_eq!(send(c.put(format!("{base}/Patient/pat-0001")).body(body)).await.status, 405);
    assert_eq!(send(c.delete(format!("{base}/Patient/pat-0001"))).await.status, 405);
    assert_eq!(send(c.post(base.to_owned()).body(r#"{"resourceType":"Bundle"}"#)).await.status, 405);
    assert_eq!(send(c.post(format!("{base}/Patient/$member-match")).body(body)).await.status, 400);
    assert_eq!(get(&format!("{base}/Patient/pat-0001/Observation")).await.status, 400);
    assert_eq!(
        send(c.get(format!("{base}/Patient/pat-0001")).header("Accept", "application/fhir+xml")).await.status,
        406
    );
    assert_eq!(get(&format!("{base}/Patient?_format=xml")).await.status, 406);
    assert_eq!(get(&format!("{base}/Patient/pat-0001?_format=json")).await.status, 200);
    assert_eq!(get(&format!("{base}/Patient/pat-0001?_format=application/fhir%2Bxml")).await.status, 406);
    assert_eq!(get(&format!("{base}/Patient?_revinclude=*")).await.status, 400);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn fault_hooks_are_off_by_default() {
    let h = start_shared().await;
    let base = h.base_url();
    let c = reqwest::Client::new();
    for fault in ["truncate", "not-json", "close", "abort", "error", "bogus"] {
        let r = send(c.get(format!("{base}/Patient/pat-0001")).header(FAULT_HEADER, fault)).await;
        assert_eq!((r.status, r.body["id"].as_str()), (200, Some("pat-0001")), "{fault}");
    }
    let t = Instant::now();
    let r = send(c.get(format!("{base}/Patient/pat-0001")).header(DELAY_HEADER, "3000")).await;
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_millis(2500));
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn fault_hooks_when_enabled() {
    let sandbox = Sandbox::from_ndjson(
        r#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00Z"},"gender":"female","birthDate":"1970-01-01"}"#,
    )
    .unwrap()
    .with_faults(true);
    let h = start(SocketAddr::from(([127, 0, 0, 1], 0)), Arc::new(sandbox)).await.unwrap();
    let url = format!("{}/Patient/p1", h.base_url());
    let c = reqwest::Client::new();

    let r = c.get(&url).header(FAULT_HEADER, "truncate").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.is_empty() && serde_json::from_str::<Value>(&text).is_err(), "{text}");

    let r = c.get(&url).header(FAULT_HEADER, "not-json").send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/fhir+json");
    assert!(serde_json::from_str::<Value>(&r.text().await.unwrap()).is_err());

    assert!(c.get(&url).header(FAULT_HEADER, "close").send().await.is_err());

    let aborted = match c.get(&url).header(FAULT_HEADER, "abort").send().await {
        Ok(r) => r.bytes().await.is_err(),
        Err(_) => true,
    };
    assert!(aborted, "an aborted body must not read as complete");

    let r = send(c.get(&url).header(FAULT_HEADER, "error")).await;
    assert_eq!((r.status, r.body["resourceType"].as_str()), (500, Some("OperationOutcome")));
    assert_eq!(send(c.get(&url).header(FAULT_HEADER, "bogus")).await.status, 400);

    let t = Instant::now();
    let r = send(c.get(&url).header(DELAY_HEADER, "300")).await;
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));

    // The connection pool survives the faults; a plain request still works.
    assert_eq!(send(c.get(&url)).await.status, 200);

    // Armed over HTTP: only matching requests, only `times` of them.
    let control = format!("http://{}/_sandbox/fault", h.addr());
    let r = c.post(format!("{control}?fault=not-json&path=/Patient/p1&times=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(send(c.get(format!("{}/metadata", h.base_url()))).await.status, 200);
    let r = c.get(&url).send().await.unwrap();
    assert!(serde_json::from_str::<Value>(&r.text().await.unwrap()).is_err());
    assert_eq!(send(c.get(&url)).await.status, 200, "times=1 is used up");
    assert_eq!(c.post(format!("{control}?fault=bogus")).send().await.unwrap().status(), 400);
    c.post(format!("{control}?fault=error")).send().await.unwrap();
    assert_eq!(send(c.get(&url)).await.status, 500);
    assert_eq!(send(c.get(&url)).await.status, 500, "no times: until disarmed");
    assert_eq!(c.delete(&control).send().await.unwrap().status(), 200);
    assert_eq!(send(c.get(&url)).await.status, 200);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn armed_plans_in_process() {
    let sandbox = Arc::new(Sandbox::from_ndjson(r#"{"resourceType":"Patient","id":"p1"}"#).unwrap());
    let h = start(SocketAddr::from(([127, 0, 0, 1], 0)), sandbox.clone()).await.unwrap();
    let url = format!("{}/Patient/p1", h.base_url());
    sandbox.arm(FaultPlan { delay_ms: 250, times: Some(1), ..FaultPlan::default() });
    let t = Instant::now();
    assert_eq!(get(&url).await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(250));
    let t = Instant::now();
    assert_eq!(get(&url).await.status, 200);
    assert!(t.elapsed() < Duration::from_millis(250));
    sandbox.arm(FaultPlan { fault: Some(Fault::Close), ..FaultPlan::default() });
    assert!(reqwest::Client::new().get(&url).send().await.is_err());
    sandbox.disarm();
    assert_eq!(get(&url).await.status, 200);
    // The HTTP control endpoint needs faults enabled.
    let control = format!("http://{}/_sandbox/fault?fault=close", h.addr());
    assert_eq!(reqwest::Client::new().post(&control).send().await.unwrap().status(), 404);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn http2_and_shutdown_on_drop() {
    let h = start_shared().await;
    let base = h.base_url().to_owned();
    let c = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let r = c.get(format!("{base}/Patient/pat-0002")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    drop(h);
    // The listener closes soon after the handle is dropped.
    let mut closed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if reqwest::Client::new().get(format!("{base}/metadata")).send().await.is_err() {
            closed = true;
            break;
        }
    }
    assert!(closed);
}

// --- versions and history

/// A Patient line: `vid` None leaves out `meta.versionId`; `mark` is put in
/// `birthDate`'s place as a text to tell versions apart.
fn patient_line(id: &str, vid: Option<&str>, mark: &str) -> String {
    let meta = match vid {
        Some(v) => format!(r#""meta":{{"versionId":"{v}","lastUpdated":"2024-01-0{}T00:00:00Z"}},"#, v.len()),
        None => String::new(),
    };
    format!(r#"{{"resourceType":"Patient","id":"{id}",{meta}"gender":"other","name":[{{"text":"{mark}"}}]}}"#)
}

fn version_ids(s: &Sandbox, ty: &str, id: &str) -> Vec<String> {
    s.versions(ty, id).into_iter().map(|(v, _)| v.to_owned()).collect()
}

#[test]
fn versions_are_kept_ordered_and_replaced() {
    // (case, NDJSON loads (each a merge_ndjson call), history vids newest first, current's mark)
    let v = |vid: &str, mark: &str| patient_line("p", Some(vid), mark);
    let cases: Vec<(&str, Vec<String>, Vec<&str>, &str)> = vec![
        ("same version replaces", vec![v("1", "a"), v("1", "b")], vec!["1"], "b"),
        (
            "no versionId is 1 and replaces",
            vec![patient_line("p", None, "a"), patient_line("p", None, "b")],
            vec!["1"],
            "b",
        ),
        ("higher later", vec![v("1", "a"), v("2", "b")], vec!["2", "1"], "b"),
        ("lower later stays old", vec![v("2", "b"), v("1", "a")], vec!["2", "1"], "b"),
        ("numeric, not lexical", vec![v("10", "ten"), v("9", "nine")], vec!["10", "9"], "ten"),
        ("numeric, not lexical, other order", vec![v("9", "nine"), v("10", "ten")], vec!["10", "9"], "ten"),
        ("filed in the middle", vec![v("1", "a"), v("3", "c"), v("2", "b")], vec!["3", "2", "1"], "c"),
        (
            "same old version replaced in place",
            vec![v("1", "a"), v("2", "b"), v("1", "A")],
            vec!["2", "1"],
            "b",
        ),
        ("non-numeric: later wins", vec![v("a", "x"), v("b", "y")], vec!["b", "a"], "y"),
        ("non-numeric: later wins, other order", vec![v("b", "y"), v("a", "x")], vec!["a", "b"], "x"),
        ("mixed: later wins", vec![v("3", "three"), v("x", "ex")], vec!["x", "3"], "ex"),
        ("mixed: later wins, other order", vec![v("x", "ex"), v("3", "three")], vec!["3", "x"], "three"),
        (
            "missing versionId is version 1",
            vec![v("2", "b"), patient_line("p", None, "a")],
            vec!["2", "1"],
            "b",
        ),
        (
            "Bundle entries are versions too",
            vec![
                format!(
                    r#"{{"resourceType":"Bundle","type":"collection","entry":[{{"resource":{}}},{{"resource":{}}}]}}"#,
                    v("2", "b"),
                    v("1", "a")
                ),
                v("3", "c"),
            ],
            vec!["3", "2", "1"],
            "c",
        ),
        (
            "one call, several lines",
            vec![format!("{}\n{}\n{}", v("1", "a"), v("5", "e"), v("4", "d"))],
            vec!["5", "4", "1"],
            "e",
        ),
    ];
    for (case, loads, want, mark) in cases {
        let mut s = Sandbox::empty();
        for text in &loads {
            s = s.merge_ndjson(text).unwrap_or_else(|e| panic!("{case}: {e:#}"));
        }
        assert_eq!(s.len(), 1, "{case}: one resource, however many versions");
        assert_eq!(s.count("Patient"), 1, "{case}");
        assert_eq!(version_ids(&s, "Patient", "p"), want, "{case}");
        let current: Value = serde_json::from_str(s.resource_json("Patient", "p").unwrap()).unwrap();
        assert_eq!(current["name"][0]["text"], mark, "{case}: current version");
        assert_eq!(s.versions("Patient", "p")[0].1, s.resource_json("Patient", "p").unwrap(), "{case}");
        assert_eq!(s.resources().count(), 1, "{case}");
    }
    // A replaced old version holds the new bytes.
    let s = Sandbox::from_ndjson(&format!("{}\n{}\n{}", v("1", "a"), v("2", "b"), v("1", "A"))).unwrap();
    assert_eq!(s.versions("Patient", "p")[1].1, v("1", "A"));
    assert!(s.versions("Patient", "nope").is_empty());
}

/// Two versions of `Observation/o1` whose subject moves from Patient/a (v1)
/// to Patient/b (v2), loaded newest first or oldest first.
fn moving_observation(newest_first: bool) -> Sandbox {
    let obs = |vid: &str, subject: &str, code: &str, date: &str| {
        format!(
            r#"{{"resourceType":"Observation","id":"o1","meta":{{"versionId":"{vid}","lastUpdated":"{date}T00:00:00Z"}},"status":"final","code":{{"coding":[{{"system":"http://loinc.org","code":"{code}"}}]}},"subject":{{"reference":"Patient/{subject}"}}}}"#
        )
    };
    let patients = [patient_line("a", None, "A"), patient_line("b", None, "B")].join("\n");
    let (v1, v2) = (obs("1", "a", "old-code", "2020-01-01"), obs("2", "b", "new-code", "2023-01-01"));
    let lines = if newest_first { format!("{v2}\n{v1}") } else { format!("{v1}\n{v2}") };
    Sandbox::from_ndjson(&patients).unwrap().merge_ndjson(&lines).unwrap()
}

#[tokio::test]
async fn searches_and_indexes_see_only_current_versions() {
    // (query, expected match keys, expected include keys)
    let table: &[(&str, &[&str], &[&str])] = &[
        ("Observation?subject=Patient/a", &[], &[]),
        ("Observation?patient=a", &[], &[]),
        ("Observation?subject=Patient/b", &["Observation/o1"], &[]),
        ("Observation?patient=b", &["Observation/o1"], &[]),
        ("Observation?code=old-code", &[], &[]),
        ("Observation?code=http://loinc.org|new-code", &["Observation/o1"], &[]),
        ("Observation?_lastUpdated=lt2021-01-01", &[], &[]),
        ("Observation?_lastUpdated=ge2023-01-01", &["Observation/o1"], &[]),
        ("Observation?_id=o1&_include=Observation:subject", &["Observation/o1"], &["Patient/b"]),
        ("Patient?_id=a&_revinclude=Observation:subject", &["Patient/a"], &[]),
        ("Patient?_id=b&_revinclude=Observation:subject", &["Patient/b"], &["Observation/o1"]),
        ("Patient?_id=a&_revinclude=Observation:patient", &["Patient/a"], &[]),
        ("Observation", &["Observation/o1"], &[]),
    ];
    for newest_first in [false, true] {
        let s = moving_observation(newest_first);
        assert_eq!((s.len(), s.count("Observation")), (3, 1));
        let h = start(SocketAddr::from(([127, 0, 0, 1], 0)), Arc::new(s)).await.unwrap();
        for (query, matches, includes) in table {
            let r = get(&format!("{}/{query}", h.base_url())).await;
            assert_eq!(r.status, 200, "{query}");
            assert_eq!(keys(&r.body, "match"), *matches, "{query} (newest first: {newest_first})");
            assert_eq!(keys(&r.body, "include"), *includes, "{query} (newest first: {newest_first})");
            assert_eq!(r.body["total"].as_u64(), Some(matches.len() as u64), "{query}");
        }
        let r = get(&format!("{}/Observation/o1", h.base_url())).await;
        assert_eq!(
            (r.etag.as_deref(), r.body["subject"]["reference"].as_str()),
            (Some("W/\"2\""), Some("Patient/b"))
        );
        h.shutdown().await.unwrap();
    }
}

struct TextResp {
    status: u16,
    etag: Option<String>,
    text: String,
}

async fn get_text(url: &str) -> TextResp {
    let r = reqwest::get(url).await.expect("request");
    let status = r.status().as_u16();
    let etag = r.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
    TextResp { status, etag, text: r.text().await.expect("body") }
}

/// `Patient/p` in versions 1..=3 (v2 without lastUpdated), loaded out of
/// order, plus a single-version `Patient/q`.
fn three_versions() -> (Sandbox, Vec<String>) {
    let v1 = r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"1","lastUpdated":"2021-01-01T00:00:00Z"},"name":[{"text":"one"}]}"#;
    let v2 = r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"2"},"name":[{"text":"two"}]}"#;
    let v3 = r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"3","lastUpdated":"2023-03-03T00:00:00Z"},"name":[{"text":"three"}],  "gender":"female"}"#;
    let q = r#"{"resourceType":"Patient","id":"q","meta":{"versionId":"7","lastUpdated":"2022-01-01T00:00:00Z"}}"#;
    let s = Sandbox::from_ndjson(&format!("{v3}\n{q}\n{v1}")).unwrap().merge_ndjson(v2).unwrap();
    let stored_v2 = s.versions("Patient", "p")[1].1.to_owned();
    (s, vec![v1.to_owned(), stored_v2, v3.to_owned()])
}

#[tokio::test]
async fn vread_serves_every_kept_version_byte_for_byte() {
    let (s, raw) = three_versions();
    let h = start(SocketAddr::from(([127, 0, 0, 1], 0)), Arc::new(s)).await.unwrap();
    let base = h.base_url();
    // (path, status, ETag, body as stored)
    let table: Vec<(&str, u16, Option<&str>, Option<&str>)> = vec![
        ("Patient/p/_history/1", 200, Some("W/\"1\""), Some(&raw[0])),
        ("Patient/p/_history/2", 200, Some("W/\"2\""), Some(&raw[1])),
        ("Patient/p/_history/3", 200, Some("W/\"3\""), Some(&raw[2])),
        ("Patient/p", 200, Some("W/\"3\""), Some(&raw[2])),
        ("Patient/q/_history/7", 200, Some("W/\"7\""), None),
        ("Patient/p/_history/4", 404, None, None),
        ("Patient/p/_history/03", 404, None, None),
        ("Patient/q/_history/1", 404, None, None),
        ("Patient/nope/_history/1", 404, None, None),
    ];
    for (path, status, etag, body) in table {
        let r = get_text(&format!("{base}/{path}")).await;
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.etag.as_deref(), etag, "{path}");
        if let Some(body) = body {
            assert_eq!(r.text, body, "{path}: byte for byte");
        }
        if status == 404 {
            let v: Value = serde_json::from_str(&r.text).unwrap();
            assert_eq!(v["resourceType"], "OperationOutcome", "{path}");
        }
    }
    // The version completed at load (no lastUpdated) got one.
    let v2: Value = serde_json::from_str(&raw[1]).unwrap();
    assert!(v2["meta"]["lastUpdated"].is_string());
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn history_lists_versions_newest_first_and_pages() {
    let (s, raw) = three_versions();
    let s = Arc::new(s);
    let h = start(SocketAddr::from(([127, 0, 0, 1], 0)), s.clone()).await.unwrap();
    let base = h.base_url();
    let r = get_text(&format!("{base}/Patient/p/_history")).await;
    assert_eq!(r.status, 200);
    for version in &raw {
        assert!(r.text.contains(version.as_str()), "resource bytes as stored: {version}");
    }
    let b: Value = serde_json::from_str(&r.text).unwrap();
    assert_eq!((b["resourceType"].as_str(), b["type"].as_str()), (Some("Bundle"), Some("history")));
    assert_eq!(b["total"].as_u64(), Some(3));
    let entries = b["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    let v2_updated = serde_json::from_str::<Value>(&raw[1]).unwrap()["meta"]["lastUpdated"].clone();
    // (entry index, versionId, lastModified)
    let want = [
        (0, "3", json!("2023-03-03T00:00:00Z")),
        (1, "2", v2_updated),
        (2, "1", json!("2021-01-01T00:00:00Z")),
    ];
    for (i, vid, last_modified) in want {
        let e = &entries[i];
        assert_eq!(e["fullUrl"].as_str(), Some(format!("{base}/Patient/p").as_str()), "{vid}");
        assert_eq!(e["resource"]["meta"]["versionId"], vid);
        assert_eq!(e["request"], json!({"method": "PUT", "url": "Patient/p"}), "{vid}");
        assert_eq!(
            e["response"],
            json!({"status": "200 OK", "etag": format!("W/\"{vid}\""), "lastModified": last_modified}),
            "{vid}"
        );
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
    }
    assert_eq!(link(&b, "self"), Some(format!("{base}/Patient/p/_history?_count=20&_offset=0").as_str()));
    assert!(link(&b, "next").is_none());

    // Paging: (query, vids on the page, has next)
    let table: &[(&str, &[&str], bool)] = &[
        ("_count=2", &["3", "2"], true),
        ("_count=2&_offset=2", &["1"], false),
        ("_count=1&_offset=1", &["2"], true),
        ("_count=0", &[], false),
        ("_offset=5", &[], false),
        ("_since=2020-01-01", &["3", "2", "1"], false),
    ];
    for (query, vids, has_next) in table {
        let r = get(&format!("{base}/Patient/p/_history?{query}")).await;
        assert_eq!(r.status, 200, "{query}");
        assert_eq!(r.body["total"].as_u64(), Some(3), "{query}");
        let got: Vec<&str> = r.body["entry"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["resource"]["meta"]["versionId"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(got, *vids, "{query}");
        assert_eq!(link(&r.body, "next").is_some(), *has_next, "{query}");
    }
    // Following `next` visits every version once.
    let mut url = format!("{base}/Patient/p/_history?_count=2");
    let mut seen = Vec::new();
    loop {
        let r = get(&url).await;
        for e in r.body["entry"].as_array().into_iter().flatten() {
            seen.push(e["response"]["etag"].as_str().unwrap().to_owned());
        }
        match link(&r.body, "next") {
            Some(next) => url = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, ["W/\"3\"", "W/\"2\"", "W/\"1\""]);

    for bad in ["_count=x", "_offset=-1"] {
        assert_eq!(get(&format!("{base}/Patient/p/_history?{bad}")).await.status, 400, "{bad}");
    }
    assert_eq!(get(&format!("{base}/Patient/nope/_history")).await.status, 404);
    let r = get(&format!("{base}/Patient/q/_history")).await;
    assert_eq!(r.body["total"].as_u64(), Some(1));
    assert_eq!(r.body["entry"][0]["response"]["etag"], "W/\"7\"");
    h.shutdown().await.unwrap();
}

// --- noise

/// The value at a JSON pointer, as text ("" when absent).
fn text_at(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// Bundle-level pointers that must hold the marker, with noise on.
const NOISE_BUNDLE_POINTERS: &[&str] = &[
    "/meta/tag/0/display",
    "/extension/0/valueString",
    "/identifier/system",
    "/identifier/value",
    "/_timestamp/extension/0/valueString",
    "/signature/who/display",
    "/issues/issue/0/diagnostics",
];

/// Per-entry pointers that must hold the marker, with noise on (searchset
/// and history entries alike).
const NOISE_ENTRY_POINTERS: &[&str] =
    &["/link/0/url", "/search/extension/0/valueString", "/response/outcome/issue/0/diagnostics"];

/// The Bundle-level and per-entry noise checks shared by searchset and
/// history.
fn assert_noisy(case: &str, text: &str, sandbox: &Sandbox) {
    use base64::Engine as _;
    let b: Value = serde_json::from_str(text).unwrap();
    for p in NOISE_BUNDLE_POINTERS {
        assert!(text_at(&b, p).contains(NOISE_MARKER), "{case}: {p} in {b}");
    }
    assert!(b["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{case}: timestamp");
    let sig = &b["signature"];
    assert!(sig["type"][0]["code"].is_string() && sig["when"].is_string(), "{case}: {sig}");
    let data = base64::engine::general_purpose::STANDARD.decode(sig["data"].as_str().unwrap()).unwrap();
    assert_eq!(data, NOISE_MARKER.as_bytes(), "{case}: signature.data");
    assert_eq!(b["issues"]["resourceType"], "OperationOutcome", "{case}");
    let links = b["link"].as_array().unwrap();
    for rel in ["alternate", "last"] {
        assert!(
            links.iter().any(|l| l["relation"] == rel && text_at(l, "/url").contains(NOISE_MARKER)),
            "{case}: a {rel} link with the marker"
        );
    }
    let entries = b["entry"].as_array().unwrap();
    assert!(!entries.is_empty(), "{case}");
    for e in entries {
        for p in NOISE_ENTRY_POINTERS {
            assert!(text_at(e, p).contains(NOISE_MARKER), "{case}: entry {p} in {e}");
        }
        assert_eq!(e["link"][0]["relation"], "alternate", "{case}");
        assert_eq!(e["search"]["score"], 1, "{case}");
        assert_eq!(e["response"]["status"], "200 OK", "{case}");
        assert_eq!(e["response"]["outcome"]["resourceType"], "OperationOutcome", "{case}");
        // The resource is untouched: its stored bytes appear verbatim and
        // hold no marker.
        let (ty, id) =
            (e["resource"]["resourceType"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap());
        let vid = e["resource"]["meta"]["versionId"].as_str().unwrap();
        let stored = sandbox.versions(ty, id).into_iter().find(|(v, _)| *v == vid).unwrap().1;
        assert!(text.contains(stored), "{case}: {ty}/{id} byte for byte");
        assert!(!stored.contains(NOISE_MARKER) && !e["resource"].to_string().contains(NOISE_MARKER));
    }
}

#[tokio::test]
async fn noise_decorates_every_bundle_but_no_resource() {
    let (s, _) = three_versions();
    let obs =
        r#"{"resourceType":"Observation","id":"o","status":"final","subject":{"reference":"Patient/q"}}"#;
    let s = Arc::new(s.merge_ndjson(obs).unwrap().with_noise(true));
    assert!(s.noise_enabled() && !s.faults_enabled());
    let h = start(SocketAddr::from(([127, 0, 0, 1], 0)), s.clone()).await.unwrap();
    let base = h.base_url();
    // (case, path, expected entry count, searchset modes)
    let table: &[(&str, &str, usize, &[&str])] = &[
        ("searchset", "Patient?_count=2", 2, &["match", "match"]),
        (
            "searchset with includes",
            "Observation?_id=o&_include=Observation:subject",
            2,
            &["match", "include"],
        ),
        ("history", "Patient/p/_history", 3, &[]),
        ("history page", "Patient/p/_history?_count=1&_offset=1", 1, &[]),
    ];
    for (case, path, n, modes) in table {
        let r = get_text(&format!("{base}/{path}")).await;
        assert_eq!(r.status, 200, "{case}");
        assert_noisy(case, &r.text, &s);
        let b: Value = serde_json::from_str(&r.text).unwrap();
        assert_eq!(b["entry"].as_array().unwrap().len(), *n, "{case}");
        if case.starts_with("searchset") {
            let got: Vec<&str> =
                b["entry"].as_array().unwrap().iter().filter_map(|e| e["search"]["mode"].as_str()).collect();
            assert_eq!(got, *modes, "{case}");
        } else {
            // History keeps its own response members next to the outcome.
            for e in b["entry"].as_array().unwrap() {
                assert!(e["response"]["etag"].is_string() && e["response"]["lastModified"].is_string());
                assert_eq!(e["request"]["method"], "PUT");
            }
        }
    }
    // Reads and vreads are not Bundles: no noise.
    for path in ["Patient/p", "Patient/p/_history/1", "metadata"] {
        let r = get_text(&format!("{base}/{path}")).await;
        assert!(!r.text.contains(NOISE_MARKER), "{path}");
    }
    // Switched off while serving: none of it.
    s.set_noise(false);
    for path in ["Patient?_count=2", "Patient/p/_history"] {
        let r = get_text(&format!("{base}/{path}")).await;
        assert!(!r.text.contains(NOISE_MARKER), "{path}");
        let b: Value = serde_json::from_str(&r.text).unwrap();
        for member in ["identifier", "timestamp", "_timestamp", "extension", "signature", "issues"] {
            assert!(b.get(member).is_none(), "{path}: {member}");
        }
        assert!(b["meta"].get("tag").is_none(), "{path}");
        for e in b["entry"].as_array().unwrap() {
            assert!(e.get("link").is_none() && e["response"].get("outcome").is_none(), "{path}");
        }
    }
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_noise_a_searchset_is_byte_for_byte_as_before() {
    let raw = patient_line("p", Some("1"), "plain");
    let s = Arc::new(Sandbox::from_ndjson(&raw).unwrap());
    assert!(!s.noise_enabled(), "noise is off by default");
    let h = start(SocketAddr::from(([127, 0, 0, 1], 0)), s).await.unwrap();
    let base = h.base_url();
    let r = get_text(&format!("{base}/Patient?_id=p")).await;
    let b: Value = serde_json::from_str(&r.text).unwrap();
    let page = |offset: u32| format!("{base}/Patient?_id=p&_count=20&_offset={offset}");
    let want = format!(
        r#"{{"resourceType":"Bundle","id":{},"meta":{{"lastUpdated":{}}},"type":"searchset","total":1,"link":[{{"relation":"self","url":{}}},{{"relation":"first","url":{}}},{{"relation":"last","url":{}}}],"entry":[{{"fullUrl":{},"resource":{raw},"search":{{"mode":"match"}}}}]}}"#,
        b["id"],
        b["meta"]["lastUpdated"],
        json!(page(0)),
        json!(page(0)),
        json!(page(0)),
        json!(format!("{base}/Patient/p")),
    );
    assert_eq!(r.text, want);
    h.shutdown().await.unwrap();
}
