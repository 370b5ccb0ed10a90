//! `POST {base}/Group/$provider-member-match` (PDex 2.2 v2) end to end: the
//! real gateway, the built-in sandbox (and Medplum's engine) loaded with the
//! synthetic payer dataset, the default matcher from plugins/dist/.
//!
//! The provider's side is built from the dataset's own Patients (name,
//! birth date, gender, address: what an EHR has), for members the caller is
//! NOT attributed to: the operation is what makes them visible. Facts come
//! from examples/dataset/facts.json.

use fhirwall_testkit as support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const GRACE: (&str, &str, &str) = ("grace-ehr", "Organization/org-grace", "1417987256");
const GRACE_2: &str = "grace-scheduler";
const HOPKINS: (&str, &str, &str) = ("hopkins-ehr", "Organization/org-hopkins", "1526347814");
const NPI: &str = "http://hl7.org/fhir/sid/us-npi";

/// Bytes that never leave an export (see tests/e2e/export.rs).
const NEVER: [&str; 6] =
    ["\"code\":\"F10.", "\"code\":\"F11.", "1234567893", "org-recovery", "Harbor Recovery", "\"unitPrice\""];

fn facts() -> Value {
    let text = std::fs::read_to_string(repo_root().join("examples/dataset/facts.json")).expect("facts.json");
    serde_json::from_str(&text).expect("facts.json is JSON")
}

fn list(v: &Value) -> BTreeSet<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
}

/// The dataset's Patients and the subscriber id of each one's Coverage.
fn dataset() -> (BTreeMap<String, Value>, BTreeMap<String, String>) {
    let text = std::fs::read_to_string(payer_dataset()).expect("payer dataset");
    let (mut patients, mut subscriber) = (BTreeMap::new(), BTreeMap::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let r: Value = serde_json::from_str(line).unwrap();
        match r["resourceType"].as_str() {
            Some("Patient") => {
                patients.insert(r["id"].as_str().unwrap().to_owned(), r);
            }
            Some("Coverage") => {
                let who = r["beneficiary"]["reference"].as_str().unwrap_or("").trim_start_matches("Patient/");
                if let Some(s) = r["subscriberId"].as_str() {
                    subscriber.insert(who.to_owned(), s.to_owned());
                }
            }
            _ => {}
        }
    }
    (patients, subscriber)
}

/// Members nobody of `orgs` is attributed to, with coverage in force and
/// no look-alike.
fn unattributed(facts: &Value, n: usize) -> Vec<String> {
    let (patients, subscriber) = dataset();
    let mut hidden: BTreeSet<String> = BTreeSet::new();
    for org in ["org-grace", "org-hopkins"] {
        hidden.extend(list(&facts["attribution"][org]["visible"]));
    }
    let mut skip = list(&facts["coverage_terminated"]);
    for pair in facts["member_match_ambiguous"].as_array().into_iter().flatten() {
        skip.extend(list(pair));
    }
    patients
        .keys()
        .filter(|id| !hidden.contains(*id) && !skip.contains(*id) && subscriber.contains_key(*id))
        .take(n)
        .cloned()
        .collect()
}

/// A Provider Treatment Attestation for the provider's patient `local`.
fn attestation(local: &str, npi: &str, period: Value) -> Value {
    json!({
        "resourceType": "Consent", "status": "active",
        "meta": {"profile": ["http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/provider-treatment-relationship-consent"]},
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "64292-6"}]}],
        "patient": {"reference": format!("Patient/{local}")},
        "dateTime": "2026-11-01T10:00:00Z",
        "performer": [{"identifier": {"system": NPI, "value": npi}}],
        "provision": {"type": "permit", "period": period,
            "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                       "reference": {"identifier": {"system": NPI, "value": npi}}}],
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}
    })
}

fn current() -> Value {
    json!({"start": "2024-01-15"})
}

/// One MemberBundle for the provider's patient `local`, with the
/// demographics of the payer's Patient `member` (and its subscriber id
/// when `card`); `consent` None leaves the attestation out.
fn member_bundle(local: &str, member: &Value, card: Option<&str>, consent: Option<Value>) -> Value {
    let mut patient = json!({"resourceType": "Patient", "id": local, "name": member["name"],
        "gender": member["gender"], "birthDate": member["birthDate"]});
    if member["address"].is_array() {
        patient["address"] = member["address"].clone();
    }
    let mut coverage = json!({"resourceType": "Coverage", "id": format!("cov-{local}"), "status": "active",
        "beneficiary": {"reference": format!("Patient/{local}")}, "payor": [{"display": "Fhirwall Example Health Plan"}]});
    if let Some(card) = card {
        coverage["subscriberId"] = json!(card);
    }
    let mut parts = vec![
        json!({"name": "MemberPatient", "resource": patient}),
        json!({"name": "CoverageToMatch", "resource": coverage}),
    ];
    if let Some(c) = consent {
        parts.push(json!({"name": "Consent", "resource": c}));
    }
    json!({"name": "MemberBundle", "part": parts})
}

fn parameters(bundles: Vec<Value>) -> Value {
    json!({"resourceType": "Parameters", "parameter": bundles})
}

fn matcher_toml(extra_member_match: &str) -> String {
    let path = repo_root().join("plugins/dist/default_matcher.wasm");
    assert!(path.is_file(), "{} is missing: build the plugins first (plugins/build.sh)", path.display());
    format!(
        "[[plugins]]\nname = \"matcher\"\nworld = \"matcher\"\npath = {:?}\nmemory_mb = 64\ntimeout_ms = 500\n\n[member_match]\n{extra_member_match}\n",
        path.display().to_string()
    )
}

fn config(upstream: &str, member_match: &str) -> GatewayConfig {
    GatewayConfig::new(upstream)
        .extra_toml("[policy]\npart2 = \"exclude\"\npart2_programs = [\"Organization/org-recovery\", \"1234567893\"]\n")
        .extra_toml(&matcher_toml(member_match))
        .client(GRACE.0, GRACE.1, GRACE.2, &["system/*.read"])
        .client(GRACE_2, GRACE.1, GRACE.2, &["system/*.read"])
        .client(HOPKINS.0, HOPKINS.1, HOPKINS.2, &["system/*.read"])
        .client("no-group-scope", GRACE.1, GRACE.2, &["system/Patient.read"])
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn provider_match(gw: &Gateway, token: &str, body: &Value, asynchronous: bool) -> Resp {
    let auth = bearer(token);
    let mut headers = vec![("Authorization", auth.as_str()), ("Content-Type", "application/fhir+json")];
    if asynchronous {
        headers.push(("Prefer", "respond-async"));
    }
    request("POST", &gw.url("Group/$provider-member-match"), &headers, Some(body.to_string().into_bytes()))
        .await
}

/// Poll a status URL honouring Retry-After until the answer arrives.
async fn wait_for(status_url: &str, token: &str) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(180);
    let auth = bearer(token);
    let mut saw_progress = false;
    loop {
        let resp = request("GET", status_url, &[("Authorization", &auth)], None).await;
        match resp.status {
            200 => return resp,
            202 | 429 => {
                let wait: u64 = resp.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After");
                if resp.status == 202 {
                    let progress = resp.header("x-progress").expect("X-Progress on 202");
                    if status_url.contains("/_match/") {
                        assert!(progress.starts_with("members "), "{progress}");
                    }
                    saw_progress = true;
                }
                assert!(
                    Instant::now() < deadline,
                    "the match did not finish in time (progress seen: {saw_progress})"
                );
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            other => panic!("status {other}: {}", resp.text()),
        }
    }
}

fn part<'a>(answer: &'a Value, name: &str) -> Option<&'a Value> {
    answer["parameter"].as_array()?.iter().find(|p| p["name"] == name).map(|p| &p["resource"])
}

fn members_of(group: &Value) -> Vec<String> {
    group["member"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["entity"]["reference"].as_str().map(str::to_owned))
        .collect()
}

/// The whole v2 flow: attested members matched, non-matched, consent
/// constrained; the Group readable and exportable by its organization only;
/// its members visible to that organization only; admin removal.
#[tokio::test]
async fn attested_members_become_a_group_the_provider_can_export_and_nothing_else_leaks() {
    let facts = facts();
    let (patients, cards) = dataset();
    let gw = Gateway::start(config("sandbox", ""));
    let grace = gw.token(GRACE.0, "system/*.read");
    let hopkins = gw.token(HOPKINS.0, "system/*.read");
    let ids = unattributed(&facts, 8);
    assert_eq!(ids.len(), 8, "enough unattributed members in the dataset");
    let [a, b, other_npi, expired, missing, opted, not_yet, _] = ids.as_slice() else { unreachable!() };
    let auth = bearer(&grace);

    // Before: grace cannot see any of them.
    for id in &ids {
        assert_eq!(
            get_as(&gw.url(&format!("Patient/{id}")), &[("Authorization", &auth)]).await.status,
            404,
            "{id}"
        );
    }
    gw.admin("PUT", &format!("/admin/opt-outs/{opted}"), None).await.assert_status(204);

    let nobody = json!({"name": [{"family": "Zzyzx", "given": ["Nobody"]}], "gender": "male", "birthDate": "1931-02-03"});
    // A former member: coverage ended (Coverage.period.end in the past).
    let grace_visible = list(&facts["attribution"]["org-grace"]["visible"]);
    let former = list(&facts["coverage_terminated"])
        .into_iter()
        .find(|p| !grace_visible.contains(p))
        .expect("a former member");
    let body = parameters(vec![
        member_bundle(
            "prov-a",
            &patients[a],
            Some(&cards[a]),
            Some(attestation("prov-a", GRACE.2, current())),
        ),
        member_bundle(
            "prov-b",
            &patients[b],
            None,
            Some(attestation("prov-b", GRACE.2, json!({"start": "2026-01-01", "end": "2099-12-31"}))),
        ),
        member_bundle(
            "prov-c",
            &patients[other_npi],
            Some(&cards[other_npi]),
            Some(attestation("prov-c", HOPKINS.2, current())),
        ),
        member_bundle(
            "prov-d",
            &patients[expired],
            Some(&cards[expired]),
            Some(attestation("prov-d", GRACE.2, json!({"start": "2020-01-01", "end": "2021-12-31"}))),
        ),
        member_bundle("prov-e", &patients[missing], Some(&cards[missing]), None),
        member_bundle(
            "prov-f",
            &patients[opted],
            Some(&cards[opted]),
            Some(attestation("prov-f", GRACE.2, current())),
        ),
        member_bundle(
            "prov-g",
            &patients[not_yet],
            Some(&cards[not_yet]),
            Some(attestation("prov-g", GRACE.2, json!({"start": "2099-01-01"}))),
        ),
        member_bundle("prov-h", &nobody, Some("XX999999"), Some(attestation("prov-h", GRACE.2, current()))),
        member_bundle(
            "prov-i",
            &patients[&former],
            Some(&cards[&former]),
            Some(attestation("prov-i", GRACE.2, current())),
        ),
    ]);
    let kickoff = provider_match(&gw, &grace, &body, true).await;
    kickoff.assert_status(202);
    let status_url = kickoff.header("content-location").expect("Content-Location").to_owned();
    assert!(status_url.starts_with(&gw.base_url()), "{status_url}");
    // Only the client that asked sees the job.
    assert_eq!(get_as(&status_url, &[("Authorization", &bearer(&hopkins))]).await.status, 404);
    let done = wait_for(&status_url, &grace).await;
    assert_eq!(done.content_type(), Some("application/fhir+json"));
    let answer = done.json();
    assert_eq!(answer["resourceType"], "Parameters");
    let matched = part(&answer, "MatchedMembers").expect("MatchedMembers");
    let non_matched = part(&answer, "NonMatchedMembers").expect("NonMatchedMembers");
    let constrained = part(&answer, "ConsentConstrainedMembers").expect("ConsentConstrainedMembers");
    let mut got = members_of(matched);
    got.sort();
    assert_eq!(got, vec![format!("Patient/{a}"), format!("Patient/{b}")], "{matched}");
    assert_eq!(matched["type"], "person");
    assert_eq!(matched["actual"], true);
    assert_eq!(matched["code"]["coding"][0]["code"], "match");
    assert_eq!(matched["managingEntity"]["reference"], GRACE.1);
    assert!(
        matched["identifier"].as_array().unwrap().iter().any(|i| i["system"] == NPI && i["value"] == GRACE.2)
    );
    assert_eq!(matched["characteristic"][0]["code"]["coding"][0]["code"], "match");
    let links: Vec<&str> = matched["member"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["entity"]["extension"][0]["valueReference"]["display"].as_str().unwrap())
        .collect();
    assert!(links.contains(&"Patient/prov-a") && links.contains(&"Patient/prov-b"), "{links:?}");
    let mut echoed = members_of(non_matched);
    echoed.sort();
    assert_eq!(
        echoed,
        [
            "Patient/prov-c",
            "Patient/prov-d",
            "Patient/prov-e",
            "Patient/prov-g",
            "Patient/prov-h",
            "Patient/prov-i"
        ]
    );
    assert_eq!(members_of(constrained), ["Patient/prov-f"]);
    assert_eq!(constrained["code"]["coding"][0]["code"], "consentconstraint");
    // The payer's ids of members not matched never leave: not their
    // Patient ids, not their member ids.
    let raw = done.text();
    for id in [other_npi, expired, missing, opted, not_yet, &former] {
        assert!(!raw.contains(id.as_str()), "{id} left in the answer");
        let member_id = patients[id]["identifier"][0]["value"].as_str().unwrap();
        assert!(!raw.contains(member_id), "{member_id} left in the answer");
    }

    // The Group: the caller's organization reads, searches and exports it.
    let group_id = matched["id"].as_str().unwrap().to_owned();
    let read = get_as(&gw.url(&format!("Group/{group_id}")), &[("Authorization", &auth)]).await;
    read.assert_status(200);
    let mut read_members = members_of(&read.json());
    read_members.sort();
    assert_eq!(read_members, got);
    // Another client of the same organization too.
    let grace2 = gw.token(GRACE_2, "system/*.read");
    get_as(&gw.url(&format!("Group/{group_id}")), &[("Authorization", &bearer(&grace2))])
        .await
        .assert_status(200);
    let search =
        get_as(&gw.url("Group?managingEntity=Organization/org-grace"), &[("Authorization", &auth)]).await;
    search.assert_status(200);
    assert!(search.text().contains(&group_id), "the Group is among the organization's Groups");
    // Anyone else: it does not exist, and the members stay hidden.
    let other = bearer(&hopkins);
    assert_eq!(get_as(&gw.url(&format!("Group/{group_id}")), &[("Authorization", &other)]).await.status, 404);
    let hopkins_search =
        get_as(&gw.url("Group?managingEntity=Organization/org-hopkins"), &[("Authorization", &other)]).await;
    assert!(!hopkins_search.text().contains(&group_id));
    for id in [a, b] {
        get_as(&gw.url(&format!("Patient/{id}")), &[("Authorization", &auth)]).await.assert_status(200);
        assert_eq!(get_as(&gw.url(&format!("Patient/{id}")), &[("Authorization", &other)]).await.status, 404);
    }
    for id in [other_npi, expired, missing, opted, not_yet] {
        assert_eq!(
            get_as(&gw.url(&format!("Patient/{id}")), &[("Authorization", &auth)]).await.status,
            404,
            "{id}"
        );
    }

    // $davinci-data-export of the Group: exactly the two members' data.
    let export = request(
        "POST",
        &gw.url(&format!("Group/{group_id}/$davinci-data-export")),
        &[("Authorization", &auth), ("Prefer", "respond-async"), ("Content-Type", "application/fhir+json")],
        Some(
            json!({"resourceType": "Parameters", "parameter": [
            {"name": "exportType", "valueCanonical": "hl7.fhir.us.davinci-pdex#provider-download"},
            {"name": "_type", "valueString": "Patient,Coverage,Condition,ExplanationOfBenefit"}]})
            .to_string()
            .into_bytes(),
        ),
    )
    .await;
    export.assert_status(202);
    let export_status = export.header("content-location").unwrap().to_owned();
    let manifest = wait_for(&export_status, &grace).await.json();
    assert_eq!(manifest["requiresAccessToken"], true);
    let mut exported_patients = BTreeSet::new();
    for file in manifest["output"].as_array().unwrap() {
        let resp = get_as(file["url"].as_str().unwrap(), &[("Authorization", &auth)]).await;
        resp.assert_status(200);
        let text = resp.text();
        for never in NEVER {
            assert!(!text.contains(never), "{never} left in an export file");
        }
        for id in [other_npi, expired, missing, opted, not_yet] {
            assert!(
                !text.contains(&format!("Patient/{id}\"")) && !text.contains(&format!("\"id\":\"{id}\"")),
                "{id} in the export"
            );
        }
        for line in text.lines() {
            let r: Value = serde_json::from_str(line).unwrap();
            if r["resourceType"] == "Patient" {
                exported_patients.insert(r["id"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(exported_patients, BTreeSet::from([a.clone(), b.clone()]));
    // Nobody else may export it.
    let refused = request(
        "POST",
        &gw.url(&format!("Group/{group_id}/$davinci-data-export")),
        &[("Authorization", &other), ("Prefer", "respond-async")],
        None,
    )
    .await;
    assert!(matches!(refused.status, 403 | 404), "{}", refused.status);

    // The audit log: the completion names the matched patients and the counts.
    let audit = gw.admin("GET", &format!("/admin/audit?patient={a}"), None).await.text();
    let completion = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l.to_string().contains("provider-member-match-complete"))
        .expect("a completion record");
    let text = completion.to_string();
    assert!(text.contains(b.as_str()), "both matched patients named");
    for (name, value) in
        [("match.matched", "2"), ("match.non-matched", "6"), ("match.consent-constrained", "1")]
    {
        assert!(text.contains(name) && text.contains(&format!("\"{value}\"")), "{name} = {value} in {text}");
    }

    // An opt-out after the match holds at once: the member leaves the Group's reads.
    gw.admin("PUT", &format!("/admin/opt-outs/{b}"), None).await.assert_status(204);
    assert_eq!(get_as(&gw.url(&format!("Patient/{b}")), &[("Authorization", &auth)]).await.status, 404);
    let reread = get_as(&gw.url(&format!("Group/{group_id}")), &[("Authorization", &auth)]).await;
    assert!(!reread.text().contains(&format!("Patient/{b}\"")), "opted-out member left the Group");

    // Admin: listed with its expiry; deleting it ends the attribution.
    let listed = gw.admin("GET", "/admin/provider-member-match/groups", None).await;
    listed.assert_status(200);
    let listed = listed.json();
    let entry = listed["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == format!("Group/{group_id}"))
        .expect("listed");
    assert_eq!(entry["organization"], GRACE.1);
    let ttl = entry["expires_at"].as_i64().unwrap() - entry["created_at"].as_i64().unwrap();
    assert_eq!(ttl, 30 * 86_400, "member_match.group_ttl_days defaults to 30");
    gw.admin("DELETE", &format!("/admin/provider-member-match/groups/{group_id}"), None)
        .await
        .assert_status(204);
    assert_eq!(get_as(&gw.url(&format!("Patient/{a}")), &[("Authorization", &auth)]).await.status, 404);
    assert_eq!(get_as(&gw.url(&format!("Group/{group_id}")), &[("Authorization", &auth)]).await.status, 404);
}

/// Every malformed request is a 400 OperationOutcome; size caps; the sync
/// answer; the scope; the per-organization throttle; expiry.
#[tokio::test]
async fn malformed_requests_limits_sync_answers_throttle_and_expiry() {
    let facts = facts();
    let (patients, cards) = dataset();
    let gw = Gateway::start(config(
        "sandbox",
        "max_members = 600\nsync_max_members = 2\nmax_jobs_per_organization = 1",
    ));
    let grace = gw.token(GRACE.0, "system/*.read");
    let ids = unattributed(&facts, 2);
    let a = &ids[0];
    let good =
        member_bundle("p1", &patients[a], Some(&cards[a]), Some(attestation("p1", GRACE.2, current())));
    let bad_cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "not JSON"),
        (json!({"resourceType": "Bundle"}).to_string().into_bytes(), "Parameters"),
        (parameters(vec![]).to_string().into_bytes(), "MemberBundle"),
        (parameters(vec![json!({"name": "MemberPatient", "resource": patients[a]})]).to_string().into_bytes(), "MemberBundle"),
        (parameters(vec![json!({"name": "MemberBundle", "part": [{"name": "MemberPatient", "resource": {"resourceType": "Coverage"}}]})]).to_string().into_bytes(), "MemberPatient must carry a Patient"),
        (parameters(vec![json!({"name": "MemberBundle", "part": [{"name": "MemberPatient", "resource": patients[a]}]})]).to_string().into_bytes(), "CoverageToMatch is required"),
    ];
    for (body, needle) in bad_cases {
        let resp = request(
            "POST",
            &gw.url("Group/$provider-member-match"),
            &[
                ("Authorization", &bearer(&grace)),
                ("Prefer", "respond-async"),
                ("Content-Type", "application/fhir+json"),
            ],
            Some(body),
        )
        .await;
        assert_eq!(resp.status, 400, "{needle}: {}", resp.text());
        let oo = assert_operation_outcome(&resp);
        assert!(oo.to_string().contains(needle), "{needle} not in {oo}");
    }
    // Over max_members: 400; over sync_max_members without Prefer: 400.
    let many = parameters(vec![good.clone(); 601]);
    assert!(provider_match(&gw, &grace, &many, true).await.text().contains("at most 600"));
    let three = parameters(vec![good.clone(); 3]);
    let resp = provider_match(&gw, &grace, &three, false).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(resp.text().contains("respond-async"));
    // A small request without Prefer is answered at once.
    let sync = provider_match(&gw, &grace, &parameters(vec![good.clone()]), false).await;
    sync.assert_status(200);
    let matched = part(&sync.json(), "MatchedMembers").unwrap().clone();
    assert_eq!(members_of(&matched), [format!("Patient/{a}")]);
    // The token needs read on Group.
    let narrow = gw.token("no-group-scope", "system/Patient.read");
    assert_eq!(provider_match(&gw, &narrow, &parameters(vec![good.clone()]), false).await.status, 403);

    // One job per organization at a time: a second client of the same
    // organization waits (429 + Retry-After) while the first runs.
    let big = parameters(vec![good.clone(); 600]);
    let first = provider_match(&gw, &grace, &big, true).await;
    first.assert_status(202);
    let grace2 = gw.token(GRACE_2, "system/*.read");
    let second = provider_match(&gw, &grace2, &parameters(vec![good.clone()]), true).await;
    assert_eq!(second.status, 429, "{}", second.text());
    assert!(second.header("retry-after").is_some());
    let status_url = first.header("content-location").unwrap().to_owned();
    // Polled again at once: 429 (Retry-After is enforced).
    let auth = bearer(&grace);
    let p1 = get_as(&status_url, &[("Authorization", &auth)]).await;
    if p1.status == 202 {
        let p2 = get_as(&status_url, &[("Authorization", &auth)]).await;
        assert_eq!(p2.status, 429, "polled sooner than Retry-After");
    }
    let done = wait_for(&status_url, &grace).await;
    let group = part(&done.json(), "MatchedMembers").unwrap().clone();
    assert_eq!(group["quantity"], 1, "600 bundles for one person: one member");
    // Now the other client may go.
    provider_match(&gw, &grace2, &parameters(vec![good.clone()]), false).await.assert_status(200);
    // DELETE forgets the job.
    assert_eq!(request("DELETE", &status_url, &[("Authorization", &auth)], None).await.status, 202);
    assert_eq!(get_as(&status_url, &[("Authorization", &auth)]).await.status, 404);

    // Expiry: once a Group's time is up, the sweeper removes it and its
    // members are hidden again (the store's clock is moved back here).
    let group_id = matched["id"].as_str().unwrap().to_owned();
    get_as(&gw.url(&format!("Patient/{a}")), &[("Authorization", &auth)]).await.assert_status(200);
    let db = gw.dir().join("fhirwall.db");
    let status = std::process::Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('UPDATE fhirwall_match_groups SET expires_at = 1'); c.commit()", db.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = get_as(&gw.url(&format!("Group/{group_id}")), &[("Authorization", &auth)]).await;
        if read.status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the expired Group was not swept");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(get_as(&gw.url(&format!("Patient/{a}")), &[("Authorization", &auth)]).await.status, 404);
}

/// The same operation against Medplum's engine (a server nobody here wrote).
#[tokio::test]
async fn provider_member_match_works_against_medplum() {
    let facts = facts();
    let (patients, cards) = dataset();
    let up = Upstream::medplum(&[&payer_dataset()]);
    let gw = Gateway::start(config(up.base_url(), ""));
    let grace = gw.token(GRACE.0, "system/*.read");
    let ids = unattributed(&facts, 4);
    let (a, b, c, d) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    gw.admin("PUT", &format!("/admin/opt-outs/{d}"), None).await.assert_status(204);
    let body = parameters(vec![
        member_bundle("m1", &patients[a], Some(&cards[a]), Some(attestation("m1", GRACE.2, current()))),
        member_bundle("m2", &patients[b], None, Some(attestation("m2", GRACE.2, current()))),
        member_bundle("m3", &patients[c], Some(&cards[c]), Some(attestation("m3", HOPKINS.2, current()))),
        member_bundle("m4", &patients[d], Some(&cards[d]), Some(attestation("m4", GRACE.2, current()))),
    ]);
    let kickoff = provider_match(&gw, &grace, &body, true).await;
    kickoff.assert_status(202);
    let done = wait_for(kickoff.header("content-location").unwrap(), &grace).await;
    let answer = done.json();
    let mut got = members_of(part(&answer, "MatchedMembers").unwrap());
    got.sort();
    assert_eq!(got, vec![format!("Patient/{a}"), format!("Patient/{b}")]);
    assert_eq!(members_of(part(&answer, "NonMatchedMembers").unwrap()), ["Patient/m3"]);
    assert_eq!(members_of(part(&answer, "ConsentConstrainedMembers").unwrap()), ["Patient/m4"]);
    assert!(!done.text().contains(c.as_str()) && !done.text().contains(d.as_str()));
    let auth = bearer(&grace);
    get_as(&gw.url(&format!("Patient/{a}")), &[("Authorization", &auth)]).await.assert_status(200);
    assert_eq!(get_as(&gw.url(&format!("Patient/{c}")), &[("Authorization", &auth)]).await.status, 404);
}

async fn get_as(url: &str, headers: &[(&str, &str)]) -> Resp {
    request("GET", url, headers, None).await
}

/// A matcher that traps, loops or lies fails the whole request closed: the
/// status answers 500, no Group is stored, nobody becomes visible.
#[tokio::test]
async fn a_failing_matcher_fails_the_request_closed() {
    let facts = facts();
    let (patients, cards) = dataset();
    let hostile = repo_root().join("plugins/dist/hostile_matcher.wasm");
    assert!(hostile.is_file(), "build the plugins first (plugins/build.sh)");
    let gw = Gateway::start(
        GatewayConfig::new("sandbox")
            .extra_toml(&format!(
                "[[plugins]]\nname = \"hostile\"\nworld = \"matcher\"\npath = {:?}\nmemory_mb = 32\ntimeout_ms = 200\n",
                hostile.display().to_string()
            ))
            .client(GRACE.0, GRACE.1, GRACE.2, &["system/*.read"]),
    );
    let grace = gw.token(GRACE.0, "system/*.read");
    let auth = bearer(&grace);
    let a = &unattributed(&facts, 1)[0];
    for family in ["Trap", "Liar", "Loop"] {
        let mut patient = patients[a].clone();
        patient["name"] = json!([{"family": family, "given": ["X"]}]);
        let body = parameters(vec![
            member_bundle("ok", &patients[a], Some(&cards[a]), Some(attestation("ok", GRACE.2, current()))),
            member_bundle("bad", &patient, Some(&cards[a]), Some(attestation("bad", GRACE.2, current()))),
        ]);
        let kickoff = provider_match(&gw, &grace, &body, true).await;
        kickoff.assert_status(202);
        let url = kickoff.header("content-location").unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        let failed = loop {
            let resp = get_as(&url, &[("Authorization", &auth)]).await;
            if !matches!(resp.status, 202 | 429) {
                break resp;
            }
            assert!(Instant::now() < deadline, "{family}: no answer");
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert_eq!(failed.status, 500, "{family}: {}", failed.text());
        assert_operation_outcome(&failed);
        assert!(!failed.text().contains(a.as_str()), "{family}: a payer id left");
    }
    let groups = gw.admin("GET", "/admin/provider-member-match/groups", None).await.json();
    assert_eq!(groups["groups"], json!([]), "no Group from a failed request");
    assert_eq!(get_as(&gw.url(&format!("Patient/{a}")), &[("Authorization", &auth)]).await.status, 404);
    // The sync form answers the failure itself.
    let mut patient = patients[a].clone();
    patient["name"] = json!([{"family": "Trap", "given": ["X"]}]);
    let sync = provider_match(
        &gw,
        &grace,
        &parameters(vec![member_bundle("bad", &patient, None, Some(attestation("bad", GRACE.2, current())))]),
        false,
    )
    .await;
    assert!(sync.status >= 500, "{}", sync.status);
    assert_operation_outcome(&sync);
}

/// A job whose node died (its lease ran out) is taken over by a running
/// node's sweeper and answered; the CapabilityStatement declares the operation.
#[tokio::test]
async fn an_abandoned_job_is_taken_over_and_the_operation_is_declared() {
    let facts = facts();
    let (patients, cards) = dataset();
    let gw = Gateway::start(config("sandbox", ""));
    let grace = gw.token(GRACE.0, "system/*.read");
    let auth = bearer(&grace);
    let metadata = get_as(&gw.url("metadata"), &[]).await.json();
    let group =
        metadata["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Group").unwrap();
    assert!(
        group["operation"].as_array().unwrap().iter().any(|o| o["name"] == "provider-member-match"
            && o["definition"]
                .as_str()
                .unwrap()
                .contains("davinci-pdex/OperationDefinition/ProviderMemberMatch")),
        "{group}"
    );

    // A job a dead node had claimed: running, its lease long over.
    let a = &unattributed(&facts, 1)[0];
    let body = parameters(vec![member_bundle(
        "t1",
        &patients[a],
        Some(&cards[a]),
        Some(attestation("t1", GRACE.2, current())),
    )]);
    let spec =
        json!({"client_id": GRACE.0, "organization": GRACE.1, "npi": GRACE.2, "body": body.to_string()});
    let job = "0123456789abcdef0123456789abcdef";
    let db = gw.dir().join("fhirwall.db");
    let script = "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
        c.execute(\"INSERT INTO fhirwall_match_jobs VALUES (?, ?, ?, ?, 'running', 1, 1, 9223372036854775807, 0, 1, 'dead-node', 5, 1, 0, NULL, NULL)\", \
        (sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])); c.commit()";
    let status = std::process::Command::new("python3")
        .args(["-c", script, db.to_str().unwrap(), job, GRACE.0, GRACE.1, &spec.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let done = wait_for(&gw.url(&format!("_match/{job}")), &grace).await;
    assert_eq!(members_of(part(&done.json(), "MatchedMembers").unwrap()), [format!("Patient/{a}")]);
    get_as(&gw.url(&format!("Patient/{a}")), &[("Authorization", &auth)]).await.assert_status(200);
    assert!(gw.log().contains("taken over"), "the takeover is logged");
}

/// Without a matcher plugin the operation is not offered: 501 at once, and
/// the CapabilityStatement does not declare it.
#[tokio::test]
async fn without_a_matcher_the_operation_is_501_and_not_declared() {
    let gw =
        Gateway::start(GatewayConfig::new("sandbox").client(GRACE.0, GRACE.1, GRACE.2, &["system/*.read"]));
    let grace = gw.token(GRACE.0, "system/*.read");
    let body = parameters(vec![json!({"name": "MemberBundle", "part": []})]);
    let resp = provider_match(&gw, &grace, &body, true).await;
    assert_eq!(resp.status, 501, "{}", resp.text());
    assert_operation_outcome(&resp);
    assert!(!get_as(&gw.url("metadata"), &[]).await.text().contains("provider-member-match"));
}

/// Guessing is throttled as for `$member-match`: attested members the
/// matcher does not find count against the client's budget; once spent,
/// the next request is 429 with Retry-After before anything runs.
#[tokio::test]
async fn members_without_a_match_spend_the_guessing_budget() {
    let gw = Gateway::start(config("sandbox", "max_failures_per_client = 3\nfailure_window_s = 3600"));
    let grace = gw.token(GRACE.0, "system/*.read");
    let guess = |n: usize| {
        let who = json!({"name": [{"family": "Guess", "given": [format!("Nobody{n}")]}], "gender": "male", "birthDate": "1931-02-03"});
        let local = format!("g{n}");
        member_bundle(&local, &who, Some("XX1234567"), Some(attestation(&local, GRACE.2, current())))
    };
    // Unattested members do not count: nothing was matched for them.
    let unattested = parameters(
        (0..5)
            .map(|n| {
                member_bundle(
                    &format!("u{n}"),
                    &json!({"name": [{"family": "Guess"}], "birthDate": "1931-02-03"}),
                    None,
                    None,
                )
            })
            .collect(),
    );
    provider_match(&gw, &grace, &unattested, true).await.assert_status(202);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = provider_match(&gw, &grace, &parameters((0..3).map(guess).collect()), false).await;
    first.assert_status(200);
    assert_eq!(members_of(part(&first.json(), "NonMatchedMembers").unwrap()).len(), 3);
    let refused = provider_match(&gw, &grace, &parameters(vec![guess(9)]), false).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert!(refused.header("retry-after").is_some());
    assert_operation_outcome(&refused);
}
