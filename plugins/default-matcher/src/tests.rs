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

/// A household and its look-alikes, for the scenarios a provider without
/// the card produces. Every member here lives at 12 Elm St, Warwick.
mod scenarios {
    use serde_json::{Value, json};

    use super::*;

    const ELM: &str = "12 Elm St";

    fn member(id: &str, name: Value, birth: &str, gender: &str, member_id: &str, phone: &str) -> [String; 2] {
        let patient = json!({
            "resourceType": "Patient", "id": id,
            "identifier": [{"system": "http://example.org/member-id", "value": member_id}],
            "name": name, "gender": gender, "birthDate": birth,
            "telecom": [{"system": "phone", "value": phone}],
            "address": [{"line": [ELM], "city": "Warwick", "postalCode": "02886"}]
        });
        let subscriber = member_id.split('-').next().unwrap_or(member_id);
        [patient.to_string(), coverage(&format!("c-{id}"), id, member_id, subscriber)]
    }

    fn household() -> MemberIndex {
        let lines: Vec<String> = [
            // Walter Kowalski Sr and his son Walter Jr, both members.
            member(
                "sr",
                json!([{"family": "Kowalski", "given": ["Walter"], "suffix": ["Sr"]}]),
                "1950-02-11",
                "male",
                "FW5000001-01",
                "401-555-0101",
            ),
            member(
                "jr",
                json!([{"family": "Kowalski", "given": ["Walter"], "suffix": ["Jr"]}]),
                "1978-09-30",
                "male",
                "FW5000001-02",
                "401-555-0102",
            ),
            // Anna Kowalski, married: the payer knows her maiden name.
            member(
                "anna",
                json!([{"family": "Kowalski", "given": ["Anna"]},
                {"use": "maiden", "family": "Brennan", "given": ["Anna"]}]),
                "1980-05-17",
                "female",
                "FW5000001-03",
                "401-555-0103",
            ),
            // Twins Sandy and Mandy, each covered under her own id.
            member(
                "sandy",
                json!([{"family": "Kowalski", "given": ["Sandy"]}]),
                "2012-07-04",
                "female",
                "FW5000001-04",
                "401-555-0104",
            ),
            member(
                "mandy",
                json!([{"family": "Kowalski", "given": ["Mandy"]}]),
                "2012-07-04",
                "female",
                "FW5000001-05",
                "401-555-0104",
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        MemberIndex::from_ndjson(&lines.join("\n"))
    }

    /// What a provider sends: a name, a birth date, and whatever else.
    struct Query {
        patient: Value,
        card: Option<&'static str>,
    }

    fn query(family: &str, given: &str, birth: &str, gender: &str) -> Query {
        Query {
            patient: json!({"resourceType": "Patient", "id": "1",
                "name": [{"family": family, "given": [given]}], "gender": gender, "birthDate": birth}),
            card: None,
        }
    }

    impl Query {
        fn address(mut self, line: &str, zip: &str) -> Query {
            self.patient["address"] = json!([{"line": [line], "postalCode": zip}]);
            self
        }
        fn phone(mut self, phone: &str) -> Query {
            self.patient["telecom"] = json!([{"system": "phone", "value": phone}]);
            self
        }
        fn suffix(mut self, suffix: &str) -> Query {
            self.patient["name"][0]["suffix"] = json!([suffix]);
            self
        }
        fn card(mut self, id: &'static str) -> Query {
            self.card = Some(id);
            self
        }
        fn ask(&self) -> MatchResult {
            let mut cov = json!({"resourceType": "Coverage", "id": "9", "status": "active",
                "beneficiary": {"reference": "Patient/1"}});
            if let Some(card) = self.card {
                cov["subscriberId"] = card.into();
            }
            DefaultMatcher::match_member(&request(&self.patient.to_string(), &cov.to_string()), &household())
        }
        fn matched(&self) -> Option<String> {
            super::matched(&self.ask()).map(str::to_owned)
        }
    }

    #[test]
    fn no_card_but_the_address_or_phone_agrees() {
        assert_eq!(
            query("Kowalski", "Anna", "1980-05-17", "female").address(ELM, "02886").matched().as_deref(),
            Some("anna")
        );
        assert_eq!(
            query("Kowalski", "Anna", "1980-05-17", "female").phone("(401) 555-0103").matched().as_deref(),
            Some("anna")
        );
    }

    #[test]
    fn no_card_and_nothing_beyond_name_and_birth_date_is_no_match() {
        // Someone else called Anna Kowalski born the same day may be asking.
        assert_eq!(query("Kowalski", "Anna", "1980-05-17", "female").matched(), None);
        assert_eq!(
            query("Kowalski", "Anna", "1980-05-17", "female").address("9 Oak Ave", "06511").matched(),
            None
        );
    }

    #[test]
    fn another_payers_card_counts_as_no_card() {
        let q = query("Kowalski", "Anna", "1980-05-17", "female").card("ZGP435465367");
        assert_eq!(q.matched(), None);
        assert_eq!(q.address(ELM, "02886").matched().as_deref(), Some("anna"));
    }

    #[test]
    fn a_mistyped_card_still_corroborates() {
        // Two digits transposed.
        assert_eq!(
            query("Kowalski", "Anna", "1980-05-17", "female").card("FW5000010-03").matched().as_deref(),
            Some("anna")
        );
    }

    #[test]
    fn a_card_of_this_plan_that_is_someone_elses_does_not_match() {
        // Anna's demographics with Walter Jr's member id: a conflict, not a match for Walter.
        assert_ne!(
            query("Kowalski", "Anna", "1980-05-17", "female").card("FW5000001-02").matched().as_deref(),
            Some("jr")
        );
    }

    #[test]
    fn marriage_with_the_maiden_name_and_a_nickname_and_a_move() {
        // The provider still has her maiden name, a nickname, and the new phone only.
        let q = query("Brennan", "Ann", "1980-05-17", "female")
            .address("77 Bay Rd", "02903")
            .phone("401-555-0103");
        assert_eq!(q.matched().as_deref(), Some("anna"));
    }

    #[test]
    fn jr_and_sr_are_never_each_other() {
        let sr = query("Kowalski", "Walter", "1950-02-11", "male").address(ELM, "02886");
        assert_eq!(sr.matched().as_deref(), Some("sr"));
        // Sr's birth date but "Jr" on the name: a contradiction, not Sr.
        assert_eq!(
            query("Kowalski", "Walter", "1950-02-11", "male").suffix("Jr").address(ELM, "02886").matched(),
            None
        );
        // Jr by birth date and card.
        let jr = query("Kowalski", "Walter", "1978-09-30", "male").suffix("Jr").card("FW5000001");
        assert_eq!(jr.matched().as_deref(), Some("jr"));
    }

    #[test]
    fn twins_are_told_apart_and_two_real_names_are_not_a_typo() {
        let sandy = query("Kowalski", "Sandy", "2012-07-04", "female").address(ELM, "02886");
        assert_eq!(sandy.matched().as_deref(), Some("sandy"));
        let mandy = query("Kowalski", "Mandy", "2012-07-04", "female").phone("401-555-0104");
        assert_eq!(mandy.matched().as_deref(), Some("mandy"));
        // "Randy" is one letter from both, but a name of its own: not Sandy, not Mandy.
        assert_eq!(query("Kowalski", "Randy", "2012-07-04", "female").address(ELM, "02886").matched(), None);
    }

    #[test]
    fn an_uncovered_household_member_with_the_households_card_is_no_match() {
        // A child of the household the payer does not cover: same family
        // name, address, phone and subscriber id; own given name and birth date.
        let child = query("Kowalski", "Peter", "2015-01-20", "male")
            .address(ELM, "02886")
            .phone("401-555-0101")
            .card("FW5000001");
        assert!(!matches!(child.ask(), MatchResult::Match(_)));
        // Walter Jr's spouse (not covered), her phone the household's.
        let spouse = query("Kowalski", "Maria", "1979-11-02", "female")
            .address(ELM, "02886")
            .phone("401-555-0102")
            .card("FW5000001");
        assert_eq!(spouse.matched(), None);
    }

    #[test]
    fn a_typo_of_a_short_nickname_and_a_day_off() {
        // "Annna": one letter too many, birth date a day off; the phone agrees.
        let q = query("Kowalski", "Annna", "1980-05-18", "female").phone("401-555-0103");
        assert_eq!(q.matched().as_deref(), Some("anna"));
    }
}
