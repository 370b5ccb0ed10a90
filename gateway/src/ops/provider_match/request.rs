//! The `$provider-member-match` request (PDex 2.2 `provider-parameters-
//! multi-member-match-bundle-in`): a `Parameters` resource with one or more
//! `MemberBundle` parameters, each with the parts `MemberPatient` (Patient),
//! `CoverageToMatch` (Coverage) and `Consent` (the Provider Treatment
//! Attestation).
//!
//! What makes the whole request malformed (400, naming the part): a body
//! that is not JSON or not `Parameters`; no `MemberBundle`; a parameter other
//! than `MemberBundle`; a bundle without parts, without `MemberPatient` or
//! `CoverageToMatch`, with a part given twice, an unknown part, or a part
//! whose resource is of the wrong type; more bundles than the configured
//! cap. A *missing* attestation is not malformed: that member goes to
//! NonMatchedMembers (PDEX-21 lets the payer choose; a provider sending a
//! hundred members should not lose them all to one forgotten Consent).

use serde_json::Value;

use crate::error::GatewayError;
use crate::plugins::matcher::MatchInput;

/// One member the provider asks about.
#[derive(Debug, Clone)]
pub struct MemberBundle {
    /// The provider's own reference to its patient (`Patient/{id}` of the
    /// MemberPatient, or `MemberBundle[n]` when it has no id): echoed in
    /// the answer, never the payer's id.
    pub provider_ref: String,
    /// The MemberPatient's display name for the answer's `display`.
    pub display: Option<String>,
    /// What the matcher gets.
    pub input: MatchInput,
    /// The Provider Treatment Attestation, when sent.
    pub attestation: Option<Value>,
}

/// Parse and check a request body; `max_members` caps the bundles.
pub fn parse(body: &[u8], max_members: usize) -> Result<Vec<MemberBundle>, GatewayError> {
    let bad = |m: String| GatewayError::bad_request(format!("$provider-member-match: {m}"));
    let value: Value = serde_json::from_slice(body).map_err(|_| bad("the body is not JSON".into()))?;
    if value["resourceType"] != "Parameters" {
        return Err(bad("the body must be a Parameters resource".into()));
    }
    let params = value["parameter"].as_array().filter(|p| !p.is_empty()).ok_or_else(|| {
        bad("Parameters.parameter is missing or empty: at least one MemberBundle is required".into())
    })?;
    if params.len() > max_members {
        return Err(bad(format!(
            "{} MemberBundles in one request; at most {max_members} are accepted (member_match.max_members): split the request",
            params.len()
        )));
    }
    let mut out = Vec::with_capacity(params.len());
    for (n, param) in params.iter().enumerate() {
        let at = format!("parameter[{n}]");
        if param["name"] != "MemberBundle" {
            return Err(bad(format!("{at}: every parameter must be a MemberBundle")));
        }
        out.push(member_bundle(param, &at).map_err(bad)?);
    }
    Ok(out)
}

fn member_bundle(param: &Value, at: &str) -> Result<MemberBundle, String> {
    let parts = param["part"]
        .as_array()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("{at} (MemberBundle) has no parts"))?;
    let (mut patient, mut coverage, mut consent): (Option<&Value>, Option<&Value>, Option<&Value>) =
        (None, None, None);
    for part in parts {
        let name = part["name"].as_str().unwrap_or("");
        let (slot, expected) = match name {
            "MemberPatient" => (&mut patient, "Patient"),
            "CoverageToMatch" => (&mut coverage, "Coverage"),
            "Consent" => (&mut consent, "Consent"),
            _ => {
                return Err(format!(
                    "{at}: unknown part {:?} (expected MemberPatient, CoverageToMatch, Consent)",
                    truncate(name)
                ));
            }
        };
        if slot.is_some() {
            return Err(format!("{at}: part {name} given more than once"));
        }
        let resource = &part["resource"];
        if resource["resourceType"] != expected || !resource.is_object() {
            return Err(format!("{at}: part {name} must carry a {expected} resource"));
        }
        *slot = Some(resource);
    }
    let patient = patient.ok_or_else(|| format!("{at}: MemberPatient is required"))?;
    let coverage = coverage.ok_or_else(|| format!("{at}: CoverageToMatch is required"))?;
    let provider_ref = match patient["id"].as_str() {
        Some(id) if crate::fhir::search::is_fhir_id(id) => format!("Patient/{id}"),
        Some(_) => return Err(format!("{at}: MemberPatient.id is not a valid id")),
        None => format!("MemberBundle[{}]", at.trim_start_matches("parameter[").trim_end_matches(']')),
    };
    Ok(MemberBundle {
        display: display_name(patient),
        provider_ref,
        input: MatchInput {
            member_patient: patient.to_string(),
            coverage_to_match: coverage.to_string(),
            coverage_to_link: None,
        },
        attestation: consent.cloned(),
    })
}

/// "Given Family" of the first name, for the echo's `display`.
fn display_name(patient: &Value) -> Option<String> {
    let name = patient["name"].as_array()?.first()?;
    let mut words: Vec<&str> =
        name["given"].as_array().into_iter().flatten().filter_map(Value::as_str).take(2).collect();
    words.extend(name["family"].as_str());
    let text = words.join(" ");
    (!text.is_empty()).then(|| truncate(&text))
}

fn truncate(text: &str) -> String {
    text.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use serde_json::json;

    fn bundle(parts: Value) -> Value {
        json!({ "name": "MemberBundle", "part": parts })
    }
    fn body(params: Value) -> Vec<u8> {
        json!({ "resourceType": "Parameters", "parameter": params }).to_string().into_bytes()
    }
    fn patient() -> Value {
        json!({ "name": "MemberPatient", "resource": { "resourceType": "Patient", "id": "prov-1",
                "name": [{ "family": "Doe", "given": ["Jane"] }] } })
    }
    fn coverage() -> Value {
        json!({ "name": "CoverageToMatch", "resource": { "resourceType": "Coverage" } })
    }
    fn consent() -> Value {
        json!({ "name": "Consent", "resource": { "resourceType": "Consent" } })
    }

    #[test]
    fn the_pdex_example_parses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/hl7-examples/pdex-2.2.0/provider-member-match-request.json");
        let Ok(text) = std::fs::read(&path) else { return };
        let members = parse(&text, 1000).unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].provider_ref, "Patient/patient-prov-001");
        assert!(members.iter().all(|m| m.attestation.is_some()));
    }

    #[test]
    fn a_bundle_without_attestation_is_kept() {
        let members = parse(&body(json!([bundle(json!([patient(), coverage()]))])), 10).unwrap();
        assert!(members[0].attestation.is_none());
        assert_eq!(members[0].display.as_deref(), Some("Jane Doe"));
    }

    #[test]
    fn malformed_requests_are_400_naming_the_part() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "not JSON"),
            (json!({ "resourceType": "Patient" }).to_string().into_bytes(), "Parameters"),
            (body(json!([])), "MemberBundle"),
            (json!({ "resourceType": "Parameters" }).to_string().into_bytes(), "MemberBundle"),
            (body(json!([{ "name": "MemberPatient", "resource": {} }])), "MemberBundle"),
            (body(json!([bundle(json!([]))])), "no parts"),
            (body(json!([bundle(json!([coverage(), consent()]))])), "MemberPatient"),
            (body(json!([bundle(json!([patient(), consent()]))])), "CoverageToMatch"),
            (body(json!([bundle(json!([patient(), patient(), coverage()]))])), "more than once"),
            (
                body(json!([bundle(
                    json!([patient(), { "name": "CoverageToMatch", "resource": { "resourceType": "Patient" } }])
                )])),
                "CoverageToMatch must carry a Coverage",
            ),
            (
                body(json!([bundle(
                    json!([patient(), coverage(), { "name": "Consent", "resource": { "resourceType": "Coverage" } }])
                )])),
                "Consent must carry a Consent",
            ),
            (
                body(json!([bundle(json!([patient(), coverage(), { "name": "CoverageToLink" }]))])),
                "unknown part",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(&text, 10).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.message.contains(needle), "{needle:?} not in {:?}", err.message);
        }
        let three = body(json!([
            bundle(json!([patient(), coverage()])),
            bundle(json!([patient(), coverage()])),
            bundle(json!([patient(), coverage()]))
        ]));
        assert!(parse(&three, 3).is_ok());
        assert!(parse(&three, 2).unwrap_err().message.contains("at most 2"));
    }
}
