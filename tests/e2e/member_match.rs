//! `POST {base}/Patient/$member-match` end to end: the real gateway, the
//! built-in sandbox upstream with the synthetic payer dataset
//! (examples/dataset: `pat-0150`/`pat-0301` share name and birth date), and
//! the default matcher built by `plugins/build.sh` (plugins/dist/).

use fhirwall_testkit as support;

use serde_json::{Value, json};
use support::*;

const GRACE: (&str, &str, &str) = ("grace-ehr", "Organization/org-grace", "1417987256");
const MB: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";

/// A built plugin component (plugins/build.sh writes plugins/dist/).
pub fn plugin(name: &str) -> String {
    let path = repo_root().join("plugins/dist").join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is missing: build the plugins first (plugins/build.sh)", path.display());
    path.display().to_string()
}

fn matcher_toml(name: &str, extra: &str) -> String {
    format!(
        "[[plugins]]\nname = \"matcher\"\nworld = \"matcher\"\npath = {:?}\nmemory_mb = 64\ntimeout_ms = 200\n{extra}",
        plugin(name)
    )
}

fn start(extra: &str) -> Gateway {
    Gateway::start(
        GatewayConfig::new("sandbox")
            .client(GRACE.0, GRACE.1, GRACE.2, &["system/*.read"])
            .client("obs-only", GRACE.1, GRACE.2, &["system/Observation.read"])
            .extra_toml(&matcher_toml("default_matcher", ""))
            .extra_toml(extra),
    )
}

/// An HRex 1.1 request (no Consent, no CoverageToLink).
fn request(family: &str, given: &[&str], birth: &str, gender: &str, subscriber_id: Option<&str>) -> Value {
    let mut coverage = json!({
        "resourceType": "Coverage", "id": "card", "status": "active",
        "beneficiary": {"reference": "Patient/1"},
        "payor": [{"display": "Fhirwall Example Health Plan"}]
    });
    if let Some(s) = subscriber_id {
        coverage["subscriberId"] = json!(s);
    }
    json!({"resourceType": "Parameters", "parameter": [
        {"name": "MemberPatient", "resource": {"resourceType": "Patient", "id": "1",
            "name": [{"family": family, "given": given}], "gender": gender, "birthDate": birth}},
        {"name": "CoverageToMatch", "resource": coverage}
    ]})
}

/// The same request in the HRex 1.0 shape: Consent required, CoverageToLink.
fn request_hrex_1_0(family: &str, given: &[&str], birth: &str, gender: &str, subscriber_id: &str) -> Value {
    let mut body = request(family, given, birth, gender, Some(subscriber_id));
    let params = body["parameter"].as_array_mut().unwrap();
    params.push(json!({"name": "CoverageToLink", "resource": {"resourceType": "Coverage", "id": "new",
        "status": "active", "beneficiary": {"reference": "Patient/1"},
        "identifier": [{"system": "http://example.org/new-payer", "value": "234567"}]}}));
    params.push(json!({"name": "Consent", "resource": {"resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IDSCL"}]}],
        "patient": {"reference": "Patient/1"}, "performer": [{"reference": "Patient/1"}],
        "policy": [{"uri": "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#regular"}],
        "provision": {"type": "permit", "period": {"start": "2022-01-01", "end": "2030-01-31"},
            "actor": [
                {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "performer"}]},
                 "reference": {"display": "Fhirwall Example Health Plan"}},
                {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                 "reference": {"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": GRACE.2}}}
            ],
            "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "disclose"}]}]}}}));
    body
}

async fn member_match(gw: &Gateway, token: &str, body: &Value) -> Resp {
    let auth = format!("Bearer {token}");
    post_json(&gw.url("Patient/$member-match"), &[("Authorization", &auth)], body).await
}

fn parameter<'a>(body: &'a Value, name: &str) -> Option<&'a Value> {
    body["parameter"].as_array()?.iter().find(|p| p["name"] == name)
}

#[track_caller]
fn assert_matched(resp: &Resp, patient: &str, member_id: &str, code: &str) {
    assert_eq!(resp.status, 200, "expected a match on {patient}: {}", resp.text());
    let body = resp.json();
    assert_eq!(body["resourceType"], "Parameters");
    let ident = &parameter(&body, "MemberIdentifier").expect("MemberIdentifier")["valueIdentifier"];
    assert_eq!(ident["value"], member_id, "{body}");
    assert_eq!(ident["type"]["coding"][0]["code"], code, "{body}");
    assert_eq!(ident["system"], "http://example.org/fhirwall/member-id");
    assert_eq!(
        parameter(&body, "MemberId").expect("MemberId")["valueReference"]["reference"],
        format!("Patient/{patient}")
    );
    assert_eq!(body["parameter"].as_array().unwrap().len(), 2, "closed slicing: nothing else: {body}");
}

#[track_caller]
fn assert_422(resp: &Resp, code: &str) {
    assert_eq!(resp.status, 422, "expected 422: {}", resp.text());
    let oo = assert_operation_outcome(resp);
    assert_eq!(oo["issue"][0]["code"], code, "{oo}");
}

#[tokio::test]
async fn matches_members_in_both_hrex_shapes_and_refuses_what_is_not_a_unique_match() {
    let gw = start("");
    let token = gw.token(GRACE.0, "system/*.read");

    // pat-0001: Martha M. Grantham, 1958-06-13, member FW1000105-01.
    let exact = request("Grantham", &["Martha"], "1958-06-13", "female", Some("FW1000105"));
    assert_matched(&member_match(&gw, &token, &exact).await, "pat-0001", "FW1000105-01", "MB");
    let v10 = request_hrex_1_0("Grantham", &["Martha", "M."], "1958-06-13", "female", "FW1000105-01");
    assert_matched(&member_match(&gw, &token, &v10).await, "pat-0001", "FW1000105-01", "MB");
    // The HRex 1.0 example, as published, but for a member of this plan.
    let spec = std::fs::read(
        repo_root().join("../shared/data/hl7-examples/hrex-1.0.0/parameters-member-match-in.json"),
    );
    if let Ok(spec) = spec {
        let mut spec: Value = serde_json::from_slice(&spec).unwrap();
        let params = spec["parameter"].as_array_mut().unwrap();
        params[0]["resource"]["name"] = json!([{"family": "Grantham", "given": ["Martha"]}]);
        params[0]["resource"]["birthDate"] = json!("1958-06-13");
        params[1]["resource"]["subscriberId"] = json!("FW1000105");
        // As published, its Consent ran out in January 2022 and names another recipient:
        // it cannot be honoured (HREX-04), whoever the member is.
        let published = member_match(&gw, &token, &spec).await;
        assert_eq!(published.status, 422, "{}", published.text());
        let oo = assert_operation_outcome(&published);
        assert_eq!(oo["issue"][0]["code"], "business-rule", "{oo}");
        assert!(oo.to_string().contains("consent"), "the 422 says why: {oo}");
        assert!(!published.text().contains("FW1000105-01"));
        // With a current period and this provider as the recipient, it is honoured.
        let consent = spec["parameter"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|p| p["name"] == "Consent")
            .map(|p| &mut p["resource"])
            .expect("the HRex 1.0 example carries a Consent");
        consent["provision"]["period"] = json!({"start": "2022-01-01", "end": "2030-01-31"});
        for actor in consent["provision"]["actor"].as_array_mut().unwrap() {
            if actor["role"]["coding"][0]["code"] == "IRCP" {
                actor["reference"]["identifier"]["value"] = json!(GRACE.2);
            }
        }
        assert_matched(&member_match(&gw, &token, &spec).await, "pat-0001", "FW1000105-01", "MB");
    }
    // Perturbed: nickname-free but a typo in the family name and the card id formatted differently.
    let typo = request("Grantam", &["Martha"], "1958-06-13", "female", Some("fw 1000105 01"));
    assert_matched(&member_match(&gw, &token, &typo).await, "pat-0001", "FW1000105-01", "MB");
    // Any covered member matches, attributed to the caller or not (pat-0004 is visible to nobody).
    let p4 = request("Ximenez", &["Lucia"], "1947-12-18", "female", Some("FW1000123"));
    assert_matched(&member_match(&gw, &token, &p4).await, "pat-0004", "FW1000123-01", "MB");

    // pat-0150 and pat-0301: same name and birth date. Without a card: ambiguous.
    let twins = request("Okonkwo", &["Joan"], "1998-03-31", "female", None);
    assert_422(&member_match(&gw, &token, &twins).await, "multiple-matches");
    // The card tells them apart.
    let with_card = request("Okonkwo", &["Joan"], "1998-03-31", "female", Some("FW1000569"));
    assert_matched(&member_match(&gw, &token, &with_card).await, "pat-0150", "FW1000569-01", "MB");
    let other = request("Okonkwo", &["Joan"], "1998-03-31", "female", Some("FW1009544-01"));
    assert_matched(&member_match(&gw, &token, &other).await, "pat-0301", "FW1009544-01", "MB");

    // Nobody like this: no match.
    let nobody = request("Zzyzx", &["Quentin"], "1901-01-01", "male", Some("XX0000000"));
    assert_422(&member_match(&gw, &token, &nobody).await, "not-found");
    // Right name, wrong birth year: a look-alike, not a match.
    let lookalike = request("Grantham", &["Martha"], "1961-02-13", "female", None);
    assert_422(&member_match(&gw, &token, &lookalike).await, "not-found");

    // An opted-out member is no match (the same answer: the opt-out is not revealed).
    gw.admin("PUT", "/admin/opt-outs/pat-0001", Some(&json!({"reason": "member request"})))
        .await
        .assert_status(204);
    let resp = member_match(&gw, &token, &exact).await;
    assert_422(&resp, "not-found");
    gw.admin("DELETE", "/admin/opt-outs/pat-0001", None).await.assert_status(204);
    assert_matched(&member_match(&gw, &token, &exact).await, "pat-0001", "FW1000105-01", "MB");

    // The audit record names the member whose identifier left.
    let audit = gw.admin("GET", "/admin/audit?patient=pat-0001", None).await;
    assert_eq!(audit.status, 200);
    assert!(audit.text().contains("member-match"), "no member-match audit record for pat-0001");
}

#[tokio::test]
async fn malformed_and_unauthorized_requests_are_refused() {
    let gw = start("");
    let token = gw.token(GRACE.0, "system/*.read");
    let good = request("Grantham", &["Martha"], "1958-06-13", "female", Some("FW1000105"));

    // Missing CoverageToMatch; a non-local beneficiary reference (HRex: SHALL be local).
    let mut missing = good.clone();
    missing["parameter"].as_array_mut().unwrap().pop();
    let resp = member_match(&gw, &token, &missing).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_operation_outcome(&resp);
    let mut absolute = good.clone();
    absolute["parameter"][1]["resource"]["beneficiary"]["reference"] = json!("https://example.org/Patient/1");
    assert_eq!(member_match(&gw, &token, &absolute).await.status, 400);
    let not_params = json!({"resourceType": "Patient"});
    assert_eq!(member_match(&gw, &token, &not_params).await.status, 400);

    // GET is not the operation (affectsState: POST only).
    let resp = get_bearer(&gw.url("Patient/$member-match"), &token).await;
    assert!(matches!(resp.status, 400 | 405), "GET $member-match: {}", resp.status);

    // $member-match needs Patient read.
    let obs = gw.token("obs-only", "system/Observation.read");
    let resp = member_match(&gw, &obs, &good).await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    // No token at all.
    assert_eq!(post_json(&gw.url("Patient/$member-match"), &[], &good).await.status, 401);

    // The CapabilityStatement declares the operation, once, on Patient (HRex).
    let cs = get(&gw.url("metadata")).await.json();
    let declared: Vec<&Value> = cs["rest"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["resource"].as_array().into_iter().flatten())
        .filter(|r| r["type"] == "Patient")
        .flat_map(|r| r["operation"].as_array().into_iter().flatten())
        .filter(|o| o["name"] == "member-match")
        .collect();
    assert_eq!(declared.len(), 1, "{cs}");
    assert_eq!(
        declared[0]["definition"],
        "http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match"
    );
}

#[tokio::test]
async fn umb_identifier_by_config_and_no_member_id_for_strict_hrex_1_0() {
    let gw = start("[member_match]\nidentifier_type = \"UMB\"\nmember_id = false\n");
    let token = gw.token(GRACE.0, "system/*.read");
    let exact = request("Grantham", &["Martha"], "1958-06-13", "female", Some("FW1000105"));
    let resp = member_match(&gw, &token, &exact).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json();
    let ident = &parameter(&body, "MemberIdentifier").unwrap()["valueIdentifier"];
    assert_eq!(ident["type"]["coding"][0]["code"], "UMB");
    assert_eq!(
        ident["type"]["coding"][0]["system"],
        "http://hl7.org/fhir/us/davinci-hrex/CodeSystem/hrex-temp"
    );
    assert!(parameter(&body, "MemberId").is_none());
    let _ = MB;
}

#[tokio::test]
async fn hostile_matchers_fail_closed_and_the_host_checks_their_answers() {
    let gw = Gateway::start(
        GatewayConfig::new("sandbox")
            .client(GRACE.0, GRACE.1, GRACE.2, &["system/*.read"])
            .extra_toml(&matcher_toml("hostile_matcher", "")),
    );
    let token = gw.token(GRACE.0, "system/*.read");
    let ask = |family: &str| request(family, &["X"], "1998-03-31", "female", None);
    for (family, statuses) in [("Loop", &[503][..]), ("Oom", &[500]), ("Trap", &[500]), ("Liar", &[500])] {
        let resp = member_match(&gw, &token, &ask(family)).await;
        assert!(statuses.contains(&resp.status), "{family}: {} {}", resp.status, resp.text());
        assert_operation_outcome(&resp);
        // ...and the gateway goes on serving.
        get_bearer(&gw.url("Patient/pat-0001"), &token).await.assert_status(200);
    }
    // Too many queries: refused by the host, contained.
    let resp = member_match(&gw, &token, &ask("Flood")).await;
    assert_eq!(resp.status, 422, "{}", resp.text());
    // A careless matcher ("First" candidate): the host still refuses an opted-out member.
    for id in ["pat-0150", "pat-0301"] {
        gw.admin("PUT", &format!("/admin/opt-outs/{id}"), None).await.assert_status(204);
    }
    let resp = member_match(&gw, &token, &ask("First")).await;
    assert_eq!(resp.status, 422, "opted-out member matched: {}", resp.text());
    // Failures are audited with the policy blame.
    let audit = gw.admin("GET", "/admin/audit?client=grace-ehr", None).await;
    assert!(audit.text().contains("member-match"));
}

/// HREX-10: "repeated near-identical demographics with varying card data"
/// must be throttled. A caller who knows a person's name and birth date and
/// tries card numbers runs out of attempts before it guesses right; the
/// budget holds across a restart (it lives in the store) and is per client.
#[tokio::test]
async fn guessing_card_numbers_for_one_person_is_throttled() {
    let mut gw = Gateway::start(
        GatewayConfig::new("sandbox")
            .client(GRACE.0, GRACE.1, GRACE.2, &["system/*.read"])
            .client("grace-batch", GRACE.1, GRACE.2, &["system/*.read"])
            .extra_toml(&matcher_toml("default_matcher", ""))
            .extra_toml("[member_match]\nmax_failures_per_subject = 3\nmax_failures_per_client = 6\n"),
    );
    let token = gw.token(GRACE.0, "system/*.read");
    // pat-0150 / pat-0301 share name and birth date: only the card tells them apart.
    let guess = |card: &str| request("Okonkwo", &["Joan"], "1998-03-31", "female", Some(card));
    for card in ["FW1000001", "FW1000002", "FW1000003"] {
        let resp = member_match(&gw, &token, &guess(card)).await;
        assert_eq!(resp.status, 422, "a wrong card is no unique match: {}", resp.text());
    }
    // The fourth guess is refused before the matcher runs, even when it is right.
    let refused = member_match(&gw, &token, &guess("FW1000569")).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(assert_operation_outcome(&refused)["issue"][0]["code"], "throttled");
    let retry: u64 = refused.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!(retry > 0 && retry <= 3600, "Retry-After {retry}");
    assert!(!refused.text().contains("pat-0150") && !refused.text().contains("FW1000569-01"));
    // The same person spelt differently is the same subject.
    let respelt = request("OKONKWO ", &["Joan"], "1998-03-31", "female", Some("FW1000569"));
    assert_eq!(member_match(&gw, &token, &respelt).await.status, 429);

    // Another person is still matched for this client (a successful match does not count) ...
    let martha = request("Grantham", &["Martha"], "1958-06-13", "female", Some("FW1000105"));
    assert_matched(&member_match(&gw, &token, &martha).await, "pat-0001", "FW1000105-01", "MB");
    // ... and another client still gets its answer for the throttled person.
    let other = gw.token("grace-batch", "system/*.read");
    assert_matched(&member_match(&gw, &other, &guess("FW1000569")).await, "pat-0150", "FW1000569-01", "MB");

    // The budget is in the store: a restart does not reset it.
    gw.restart();
    let token = gw.token(GRACE.0, "system/*.read");
    assert_eq!(member_match(&gw, &token, &guess("FW1000569")).await.status, 429);

    // Varying the demographics too runs into the per-client budget (6 in all).
    for n in 0..3 {
        let nobody =
            request("Zzyzx", &["Quentin"], &format!("1901-01-0{}", n + 1), "male", Some("XX0000000"));
        assert_eq!(member_match(&gw, &token, &nobody).await.status, 422);
    }
    let fresh = request("Zzyzx", &["Quentin"], "1901-01-09", "male", Some("XX0000000"));
    assert_eq!(member_match(&gw, &token, &fresh).await.status, 429);
    assert_eq!(member_match(&gw, &token, &martha).await.status, 429, "the whole client is throttled");

    // Each refusal is audited as a refusal.
    let audit = gw.admin("GET", "/admin/audit?client=grace-ehr", None).await;
    assert_eq!(audit.status, 200);
    let throttled = audit
        .text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r.to_string().contains("member-match") && r.to_string().contains("HTTP 429"))
        .count();
    assert!(throttled >= 4, "expected the 429s in the audit log, found {throttled}");
}
