//! The HRex Consent a `$member-match` request may carry (HRex 1.1: optional;
//! 1.0: required), and whether fhirwall can honour it (HREX-04, -14, -16).
//!
//! A Consent that cannot be complied with is a 422 with an OperationOutcome
//! that says why, before any matching: not active, not a `permit`, a policy
//! other than the two HRex ones, a period that does not cover today, no
//! source (the payer) among the actors, or a recipient (`IRCP`) that is not
//! the requester — the caller's organization or its NPI. Both policies can
//! be honoured: `#regular` ("non-sensitive data only") is what fhirwall
//! always serves, Part 2 and other sensitive records being withheld or
//! redacted by the redaction layer whatever the Consent says; `#sensitive`
//! asks for more and is met with the same (never more) data.

use serde_json::Value;

use crate::error::{GatewayError, Kind};

const POLICY_BASE: &str = "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html";
const NPI_SYSTEM: &str = "http://hl7.org/fhir/sid/us-npi";
const RECIPIENT_ROLE: (&str, &str) = ("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "IRCP");
const SOURCE_ROLE: (&str, &str) =
    ("http://terminology.hl7.org/CodeSystem/provenance-participant-type", "performer");
const DISCLOSE: (&str, &str) = ("http://terminology.hl7.org/CodeSystem/consentaction", "disclose");

/// Who is asking: the caller's organization (`Organization/{id}`) and NPI.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    pub organization: &'a str,
    pub npi: Option<&'a str>,
}

/// Check a Consent against the requester and `today` (`YYYY-MM-DD`).
pub fn check(consent: &Value, requester: Requester<'_>, today: &str) -> Result<(), GatewayError> {
    if consent["status"] != "active" {
        return Err(refused("the Consent is not active"));
    }
    let policies: Vec<&str> =
        consent["policy"].as_array().into_iter().flatten().filter_map(|p| p["uri"].as_str()).collect();
    let known = |uri: &&str| {
        uri.strip_prefix(POLICY_BASE).is_some_and(|fragment| matches!(fragment, "#regular" | "#sensitive"))
    };
    if policies.is_empty() || !policies.iter().all(known) {
        return Err(refused(format!("the Consent policy must be {POLICY_BASE}#regular or #sensitive")));
    }
    let provision = &consent["provision"];
    if provision["type"] != "permit" {
        return Err(refused("the Consent provision is not a permit"));
    }
    let (start, end) = (provision["period"]["start"].as_str(), provision["period"]["end"].as_str());
    let (Some(start), Some(end)) = (start, end) else {
        return Err(refused("the Consent provision has no period start and end"));
    };
    // Dates and dateTimes compare by their date part.
    let day = |d: &str| d.get(..10).unwrap_or(d).to_owned();
    if day(start).as_str() > today || day(end).as_str() < today {
        return Err(refused("the Consent period does not cover today"));
    }
    if let Some(actions) = provision["action"].as_array()
        && !actions.iter().any(|a| has_coding(a, DISCLOSE))
    {
        return Err(refused("the Consent does not permit disclosure"));
    }
    let actors: Vec<&Value> = provision["actor"].as_array().into_iter().flatten().collect();
    if !actors.iter().any(|a| has_coding(&a["role"], SOURCE_ROLE)) {
        return Err(refused("the Consent names no source (performer) of the data"));
    }
    let recipients: Vec<&Value> =
        actors.iter().copied().filter(|a| has_coding(&a["role"], RECIPIENT_ROLE)).collect();
    if !recipients.iter().any(|a| names_requester(&a["reference"], requester)) {
        return Err(refused("the Consent does not name the requester as its recipient"));
    }
    Ok(())
}

fn has_coding(concept: &Value, (system, code): (&str, &str)) -> bool {
    concept["coding"].as_array().into_iter().flatten().any(|c| c["system"] == system && c["code"] == code)
}

/// A recipient reference naming the requester: its NPI as identifier, or
/// its Organization by reference (relative or absolute).
fn names_requester(reference: &Value, requester: Requester<'_>) -> bool {
    let identifier = &reference["identifier"];
    if let Some(npi) = requester.npi
        && identifier["system"] == NPI_SYSTEM
        && identifier["value"] == npi
    {
        return true;
    }
    reference["reference"].as_str().is_some_and(|r| {
        r == requester.organization
            || r.strip_suffix(requester.organization).is_some_and(|base| base.ends_with('/'))
    })
}

fn refused(why: impl Into<String>) -> GatewayError {
    let why = why.into();
    GatewayError::of(Kind::Unprocessable, format!("The consent request cannot be honored: {why}"))
        .with_code(crate::error::IssueCode::BusinessRule)
        .with_detail(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use serde_json::json;

    const ME: Requester<'static> =
        Requester { organization: "Organization/org-grace", npi: Some("1417987256") };

    /// The HRex example's shape, with the requester as recipient.
    fn consent() -> Value {
        json!({
            "resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IDSCL"}]}],
            "patient": {"reference": "Patient/1"}, "performer": [{"reference": "Patient/1"}],
            "policy": [{"uri": format!("{POLICY_BASE}#regular")}],
            "provision": {
                "type": "permit",
                "period": {"start": "2026-01-01", "end": "2027-12-31"},
                "actor": [
                    {"role": {"coding": [{"system": SOURCE_ROLE.0, "code": "performer"}]},
                     "reference": {"identifier": {"system": NPI_SYSTEM, "value": "9876543210"}, "display": "Fhirwall Example Health Plan"}},
                    {"role": {"coding": [{"system": RECIPIENT_ROLE.0, "code": "IRCP"}]},
                     "reference": {"identifier": {"system": NPI_SYSTEM, "value": "1417987256"}}}
                ],
                "action": [{"coding": [{"system": DISCLOSE.0, "code": "disclose"}]}]
            }
        })
    }

    #[test]
    fn a_consent_that_can_be_honoured_passes() {
        check(&consent(), ME, "2026-12-01").unwrap();
        let mut sensitive = consent();
        sensitive["policy"][0]["uri"] = json!(format!("{POLICY_BASE}#sensitive"));
        check(&sensitive, ME, "2026-12-01").unwrap();
        // The recipient by Organization reference, relative or absolute.
        for reference in ["Organization/org-grace", "https://fhirwall.example/fhir/Organization/org-grace"] {
            let mut by_reference = consent();
            by_reference["provision"]["actor"][1]["reference"] = json!({ "reference": reference });
            check(&by_reference, ME, "2026-12-01").unwrap();
        }
        // Period bounds are inclusive, dateTimes compare by date.
        let mut bounds = consent();
        bounds["provision"]["period"] = json!({"start": "2026-12-01T08:00:00Z", "end": "2026-12-01"});
        check(&bounds, ME, "2026-12-01").unwrap();
    }

    #[test]
    fn a_consent_that_cannot_be_honoured_is_422_saying_why() {
        type Change = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Change, &str)> = vec![
            ("inactive", Box::new(|c| c["status"] = json!("draft")), "not active"),
            (
                "other policy",
                Box::new(|c| c["policy"][0]["uri"] = json!("http://example.org/p#all")),
                "policy",
            ),
            ("no policy", Box::new(|c| c["policy"] = json!([])), "policy"),
            ("deny", Box::new(|c| c["provision"]["type"] = json!("deny")), "not a permit"),
            ("expired", Box::new(|c| c["provision"]["period"]["end"] = json!("2026-11-30")), "period"),
            ("future", Box::new(|c| c["provision"]["period"]["start"] = json!("2026-12-02")), "period"),
            ("open-ended", Box::new(|c| c["provision"]["period"] = json!({"start": "2026-01-01"})), "period"),
            (
                "other recipient",
                Box::new(|c| {
                    c["provision"]["actor"][1]["reference"]["identifier"]["value"] = json!("0123456789")
                }),
                "recipient",
            ),
            (
                "other org",
                Box::new(|c| {
                    c["provision"]["actor"][1]["reference"] = json!({"reference": "Organization/org-grace-2"})
                }),
                "recipient",
            ),
            (
                "look-alike org",
                Box::new(|c| {
                    c["provision"]["actor"][1]["reference"] =
                        json!({"reference": "https://x/Organization/xorg-grace"})
                }),
                "recipient",
            ),
            (
                "no recipient",
                Box::new(|c| {
                    c["provision"]["actor"].as_array_mut().unwrap().pop();
                }),
                "recipient",
            ),
            (
                "no source",
                Box::new(|c| {
                    c["provision"]["actor"].as_array_mut().unwrap().remove(0);
                }),
                "source",
            ),
            (
                "no disclosure",
                Box::new(|c| c["provision"]["action"][0]["coding"][0]["code"] = json!("access")),
                "disclosure",
            ),
        ];
        for (name, change, why) in cases {
            let mut c = consent();
            change(&mut c);
            let err = check(&c, ME, "2026-12-01").expect_err(name);
            assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}");
            assert!(err.message.contains(why), "{name}: {}", err.message);
        }
        // A requester without an NPI is not matched by an NPI identifier.
        let no_npi = Requester { organization: "Organization/org-grace", npi: None };
        assert!(check(&consent(), no_npi, "2026-12-01").is_err());
    }
}
