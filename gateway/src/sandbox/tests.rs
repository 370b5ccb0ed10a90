//! Sandbox tests: the builtin dataset over real HTTP.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

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
