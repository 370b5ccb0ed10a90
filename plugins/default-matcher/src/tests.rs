use fhirwall_plugin_sdk::matcher::{MatchResult, Matcher};
use fhirwall_plugin_sdk::testing::{MemberIndex, request};

use super::*;

fn patient(
    id: &str,
    family: &str,
    given: &[&str],
    birth: &str,
    gender: &str,
    member_id: &str,
    zip: &str,
) -> String {
    serde_json::json!({
        "resourceType": "Patient", "id": id,
        "identifier": [{"system": "http://example.org/member-id", "value": member_id}],
        "name": [{"family": family, "given": given}],
        "gender": gender, "birthDate": birth,
        "address": [{"postalCode": zip}]
    })
    .to_string()
}

fn coverage(id: &str, patient: &str, member_id: &str, subscriber_id: &str) -> String {
    serde_json::json!({
        "resourceType": "Coverage", "id": id, "status": "active",
        "identifier": [{"value": member_id}], "subscriberId": subscriber_id,
        "beneficiary": {"reference": format!("Patient/{patient}")}
    })
    .to_string()
}

fn index() -> MemberIndex {
    let lines = [
        patient("p1", "Okonkwo", &["Joan"], "1998-03-31", "female", "FW1000569-01", "02907"),
        coverage("c1", "p1", "FW1000569-01", "FW1000569"),
        patient("p2", "Okonkwo", &["Joan"], "1998-03-31", "female", "FW1009544-01", "02911"),
        coverage("c2", "p2", "FW1009544-01", "FW1009544"),
        patient("p3", "García-López", &["María", "José"], "1980-04-03", "female", "FW2000001-01", "02901"),
        coverage("c3", "p3", "FW2000001-01", "FW2000001"),
        patient("p4", "Smith", &["William"], "1975-01-15", "male", "FW3000001-01", "02903"),
        coverage("c4", "p4", "FW3000001-01", "FW3000001"),
        patient("p5", "Smith", &["Emma"], "2010-06-01", "female", "FW3000001-02", "02903"),
        coverage("c5", "p5", "FW3000001-02", "FW3000001"),
        patient("p6", "Smith", &["Olivia"], "2010-06-01", "female", "FW3000001-03", "02903"),
        coverage("c6", "p6", "FW3000001-03", "FW3000001"),
        // Not covered: never a candidate.
        patient("p7", "Nobody", &["Nemo"], "1970-01-01", "male", "X1", "00000"),
    ];
    MemberIndex::from_ndjson(&lines.join("\n"))
}

fn ask(family: &str, given: &[&str], birth: &str, gender: &str, subscriber_id: Option<&str>) -> MatchResult {
    let mp = serde_json::json!({"resourceType": "Patient", "id": "1", "name": [{"family": family, "given": given}],
        "gender": gender, "birthDate": birth});
    let mut cov = serde_json::json!({"resourceType": "Coverage", "id": "9", "status": "active",
        "beneficiary": {"reference": "Patient/1"}});
    if let Some(s) = subscriber_id {
        cov["subscriberId"] = s.into();
    }
    DefaultMatcher::match_member(&request(&mp.to_string(), &cov.to_string()), &index())
}

fn matched(result: &MatchResult) -> Option<&str> {
    match result {
        MatchResult::Match(m) => Some(&m.member),
        _ => None,
    }
}

#[test]
fn exact_demographics_and_id_match() {
    assert_eq!(matched(&ask("Okonkwo", &["Joan"], "1998-03-31", "female", Some("FW1000569"))), Some("p1"));
    assert_eq!(
        matched(&ask("Okonkwo", &["Joan"], "1998-03-31", "female", Some("fw 1009544-01"))),
        Some("p2")
    );
}

#[test]
fn demographic_twins_without_an_id_are_ambiguous() {
    assert!(matches!(ask("Okonkwo", &["Joan"], "1998-03-31", "female", None), MatchResult::Ambiguous(_)));
}

#[test]
fn twins_in_one_household_are_told_apart_by_given_name() {
    assert_eq!(matched(&ask("Smith", &["Emma"], "2010-06-01", "female", Some("FW3000001"))), Some("p5"));
    assert_eq!(matched(&ask("Smith", &["Olivia"], "2010-06-01", "female", Some("FW3000001-03"))), Some("p6"));
}

#[test]
fn perturbations_with_an_id_still_match() {
    // nickname
    assert_eq!(matched(&ask("Smith", &["Bill"], "1975-01-15", "male", Some("FW3000001-01"))), Some("p4"));
    // diacritics dropped, hyphen as space, day/month swapped
    assert_eq!(
        matched(&ask("Garcia Lopez", &["Maria"], "1980-03-04", "female", Some("FW2000001"))),
        Some("p3")
    );
    // one typo, birth date off by one day
    assert_eq!(matched(&ask("Smiht", &["William"], "1975-01-16", "male", Some("FW3000001-01"))), Some("p4"));
    // swapped family and given
    assert_eq!(matched(&ask("William", &["Smith"], "1975-01-15", "male", Some("FW3000001-01"))), Some("p4"));
}

#[test]
fn prefers_no_match_to_a_guess() {
    // Wrong birth date, no id.
    assert_eq!(matched(&ask("Smith", &["William"], "1976-05-15", "male", None)), None);
    // Nickname and no id: not sure enough.
    assert_eq!(matched(&ask("Smith", &["Bill"], "1975-01-15", "male", None)), None);
    // A look-alike outside the plan.
    assert_eq!(matched(&ask("Smith", &["Wilma"], "1975-01-15", "female", None)), None);
    // The uncovered patient is never a candidate.
    assert!(matches!(ask("Nobody", &["Nemo"], "1970-01-01", "male", Some("X1")), MatchResult::NoMatch(_)));
}
