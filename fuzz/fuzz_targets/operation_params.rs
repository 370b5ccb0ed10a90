//! Fuzz the `Parameters` bodies of the operations fhirwall implements
//! itself, as the pipeline reads them:
//! - `$member-match` (`ops::member_match::parse`, then the HRex Consent
//!   check `ops::consent::check`),
//! - `$provider-member-match` (`ops::provider_match::request::parse`, then
//!   each Provider Treatment Attestation, `attestation::verify`),
//! - `$export` / `$davinci-data-export` kick-off (`ops::export::kickoff::read`
//!   over query parameters and a `Parameters` body).
//!
//! Invariants: never a panic; refusals carry the contract's statuses; what
//! is accepted is what the operation relies on (resources of the right
//! types, local references only, ids that are FHIR ids, a Consent or an
//! attestation honoured only when it names the caller and covers today,
//! export types within the caller's scopes and the policy, valid instants,
//! `_typeFilter`s that re-parse and set no patient link).
#![no_main]

use fhirwall::access::policy::Policy;
use fhirwall::clock::instant_unix_ms;
use fhirwall::fhir::search::{ParamContext, SearchParams, is_fhir_id};
use fhirwall::fhir::types::is_resource_type;
use fhirwall::ops::consent::{self, Requester};
use fhirwall::ops::export::kickoff::{self, ExportOperation, ExportType, KickoffRules, Prefer};
use fhirwall::ops::member_match;
use fhirwall::ops::provider_match::attestation;
use fhirwall::ops::provider_match::request as provider_request;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const ORGANIZATION: &str = "Organization/org-grace";
const NPI: &str = "1417987256";
const TODAYS: [&str; 3] = ["2026-12-01", "2024-02-29", "2030-01-01"];

// Input: one byte choosing the operation (value % 3) and its flags (value
// / 3), one byte of settings, then the payload: the `Parameters` body, or
// for an export `query\0body`.
fuzz_target!(|data: &[u8]| {
    let [op, settings, payload @ ..] = data else { return };
    let (flags, settings) = (op / 3, usize::from(*settings));
    let today = TODAYS[settings % TODAYS.len()];
    match op % 3 {
        0 => member_match(payload, flags & 1 == 1, today),
        1 => {
            let npi = match flags % 3 {
                0 => Some(NPI),
                1 => None,
                _ => Some(""),
            };
            provider_match(payload, settings % 8 + 1, npi, today);
        }
        _ => {
            let split = payload.iter().position(|b| *b == 0).unwrap_or(payload.len());
            let Ok(query) = std::str::from_utf8(&payload[..split]) else { return };
            let export = Export {
                davinci: flags & 1 == 1,
                query,
                body: payload.get(split + 1..).unwrap_or(b""),
                respond_async: flags & 2 == 0,
                lenient: flags & 4 == 4,
                // All exportable types, or some.
                scopes: if flags & 8 == 0 {
                    u64::MAX
                } else {
                    (settings as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                },
            };
            export_kickoff(&export);
        }
    }
});

struct Export<'a> {
    davinci: bool,
    /// The kick-off's query string (parsed in the export context first, as
    /// the request parser does).
    query: &'a str,
    /// A POST's `Parameters` body (empty for GET).
    body: &'a [u8],
    respond_async: bool,
    lenient: bool,
    /// Which exportable types the token's scopes grant (bit per type).
    scopes: u64,
}

fn member_match(body: &[u8], npi: bool, today: &str) {
    let request = match member_match::parse(body) {
        Ok(request) => request,
        Err(error) => {
            assert_eq!(error.status.as_u16(), 400, "{}", error.message);
            return;
        }
    };
    let patient = &request.member_patient;
    assert_eq!(patient["resourceType"], "Patient");
    let reparsed = |text: &str| serde_json::from_str::<Value>(text).expect("matcher input is JSON");
    assert_eq!(
        &reparsed(&request.input.member_patient),
        patient,
        "MemberPatient changed on its way to the matcher"
    );
    let coverage = reparsed(&request.input.coverage_to_match);
    assert_eq!(coverage["resourceType"], "Coverage");
    let link = request.input.coverage_to_link.as_deref().map(reparsed);
    if let Some(link) = &link {
        assert_eq!(link["resourceType"], "Coverage");
    }
    // Every reference to the member is the local MemberPatient.
    let local = patient["id"].as_str().map(|id| format!("Patient/{id}"));
    let is_local = |reference: &Value| match (reference["reference"].as_str(), &local) {
        (None, _) => true,
        (Some(r), Some(local)) => r == local,
        (Some(r), None) => r.starts_with("Patient/") && !r.contains("://"),
    };
    assert!(is_local(&coverage["beneficiary"]), "CoverageToMatch.beneficiary {:?}", coverage["beneficiary"]);
    if let Some(link) = &link {
        assert!(is_local(&link["beneficiary"]), "CoverageToLink.beneficiary");
    }
    let Some(consent) = &request.consent else { return };
    assert_eq!(consent["resourceType"], "Consent");
    assert!(is_local(&consent["patient"]), "Consent.patient");
    let requester = Requester { organization: ORGANIZATION, npi: npi.then_some(NPI) };
    match consent::check(consent, requester, today) {
        Ok(()) => {
            assert_eq!(consent["status"], "active");
            assert_eq!(consent["provision"]["type"], "permit");
            let period = &consent["provision"]["period"];
            // Dates and dateTimes compare by their date part (as the check does).
            let day = |v: &Value| v.as_str().map(|d| d.get(..10).unwrap_or(d).to_owned());
            let (start, end) = (day(&period["start"]).expect("start"), day(&period["end"]).expect("end"));
            assert!(start.as_str() <= today && today <= end.as_str(), "period {start}..{end} for {today}");
            let names_me = consent["provision"]["actor"].as_array().into_iter().flatten().any(|actor| {
                let reference = &actor["reference"];
                let by_npi = npi
                    && reference["identifier"]["system"] == "http://hl7.org/fhir/sid/us-npi"
                    && reference["identifier"]["value"] == NPI;
                let by_org = reference["reference"].as_str().is_some_and(|r| {
                    r == ORGANIZATION || r.strip_suffix(ORGANIZATION).is_some_and(|b| b.ends_with('/'))
                });
                by_npi || by_org
            });
            assert!(names_me, "a Consent that does not name the requester was honoured");
        }
        Err(error) => assert_eq!(error.status.as_u16(), 422, "{}", error.message),
    }
}

fn provider_match(body: &[u8], max_members: usize, npi: Option<&str>, today: &str) {
    let members = match provider_request::parse(body, max_members) {
        Ok(members) => members,
        Err(error) => {
            assert_eq!(error.status.as_u16(), 400, "{}", error.message);
            return;
        }
    };
    assert!((1..=max_members).contains(&members.len()), "{} members (cap {max_members})", members.len());
    for (n, member) in members.iter().enumerate() {
        let patient: Value = serde_json::from_str(&member.input.member_patient).expect("JSON");
        assert_eq!(patient["resourceType"], "Patient");
        let coverage: Value = serde_json::from_str(&member.input.coverage_to_match).expect("JSON");
        assert_eq!(coverage["resourceType"], "Coverage");
        assert!(member.input.coverage_to_link.is_none());
        // The echo names the provider's own patient, never anything else.
        match member.provider_ref.strip_prefix("Patient/") {
            Some(id) => {
                assert!(is_fhir_id(id), "provider_ref {:?}", member.provider_ref);
                assert_eq!(patient["id"], id);
            }
            None => assert_eq!(member.provider_ref, format!("MemberBundle[{n}]")),
        }
        if let Some(display) = &member.display {
            assert!(!display.is_empty() && display.chars().count() <= 100, "display {display:?}");
        }
        if let Some(attestation) = &member.attestation {
            assert_eq!(attestation["resourceType"], "Consent");
        }
        let verdict = attestation::verify(member.attestation.as_ref(), &member.provider_ref, npi, today);
        if verdict.is_ok() {
            let consent = member.attestation.as_ref().expect("an attestation");
            assert_eq!(consent["status"], "active");
            assert_eq!(consent["provision"]["type"], "permit");
            let npi = npi.expect("an NPI");
            assert!(!npi.is_empty());
            let about = consent["patient"]["reference"].as_str().expect("a patient");
            if member.provider_ref.starts_with("Patient/") {
                assert_eq!(about, member.provider_ref, "an attestation about another patient");
            }
            let names_caller = consent["provision"]["actor"].as_array().into_iter().flatten().any(|a| {
                a["reference"]["identifier"]["system"] == "http://hl7.org/fhir/sid/us-npi"
                    && a["reference"]["identifier"]["value"].as_str().map(str::trim) == Some(npi)
            });
            assert!(names_caller, "an attestation for another recipient was honoured");
            let period = consent["provision"]["period"].as_object().expect("a period");
            assert!(
                period.get("start").is_some_and(|v| !v.is_null())
                    || period.get("end").is_some_and(|v| !v.is_null())
            );
        }
    }
}

fn export_kickoff(input: &Export<'_>) {
    let Ok(params) = SearchParams::parse_query(input.query, ParamContext::Export) else { return };
    let policy = Policy::builtin();
    let all_types = policy.exportable_types();
    let in_scope =
        |t: &str| all_types.iter().position(|x| x == t).is_some_and(|i| (input.scopes >> (i % 64)) & 1 == 1);
    let exportable = |t: &str| policy.export_link(t).is_some();
    let patient_link = |t: &str, p: &str| policy.is_patient_param(t, p);
    let rules = KickoffRules {
        in_scope: &in_scope,
        exportable: &exportable,
        all_types: &all_types,
        patient_link: &patient_link,
    };
    let operation = if input.davinci { ExportOperation::Davinci } else { ExportOperation::Bulk };
    let prefer = Prefer { respond_async: input.respond_async, lenient: input.lenient };
    let request = match kickoff::read(operation, "g1", &params, input.body, prefer, &rules) {
        Ok(request) => request,
        Err(error) => {
            let status = error.status.as_u16();
            assert!(matches!(status, 400 | 403), "unexpected status {status}: {}", error.message);
            return;
        }
    };
    assert!(input.respond_async, "a synchronous export was accepted");
    assert_eq!(request.group, "g1");
    assert!(!request.types.is_empty());
    for t in &request.types {
        assert!(is_resource_type(t) && in_scope(t) && exportable(t), "type {t:?} exported");
    }
    let mut unique = request.types.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), request.types.len(), "a type twice");
    let since =
        request.since.as_deref().map(|s| instant_unix_ms(s).unwrap_or_else(|| panic!("_since {s:?}")));
    let until =
        request.until.as_deref().map(|s| instant_unix_ms(s).unwrap_or_else(|| panic!("_until {s:?}")));
    if let (Some(since), Some(until)) = (since, until) {
        assert!(since <= until, "_until before _since");
    }
    assert!(request.export_type != ExportType::Delta || since.is_some(), "a delta without _since");
    assert!(request.patients.windows(2).all(|w| w[0] < w[1]), "patients not sorted and unique");
    for id in &request.patients {
        assert!(is_fhir_id(id), "patient {id:?}");
    }
    for filter in &request.type_filters {
        assert!(request.types.contains(&filter.resource_type), "_typeFilter on {:?}", filter.resource_type);
        let again = SearchParams::parse_query(&filter.query, ParamContext::Search)
            .unwrap_or_else(|e| panic!("stored _typeFilter {:?} refused: {}", filter.query, e.message));
        assert_eq!(again.to_query_string(), filter.query, "stored _typeFilter not canonical");
        assert!(!again.is_empty());
        for param in &again {
            let name = param.name.as_str();
            assert!(
                !name.starts_with('_') || matches!(name, "_lastUpdated" | "_id" | "_tag" | "_profile"),
                "_typeFilter with {name}"
            );
            assert!(!patient_link(&filter.resource_type, name), "_typeFilter sets the patient link {name}");
        }
    }
    assert_eq!(request.lenient, input.lenient);
    assert!(input.lenient || request.skipped.is_empty(), "skipped without lenient handling");
}
