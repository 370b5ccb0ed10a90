//! The answer of `$provider-member-match` (PDex 2.2 `provider-parameters-
//! multi-member-match-bundle-out`): a `Parameters` with
//!
//! - `MatchedMembers` (always, even empty; profile `pdex-provider-member-
//!   match`): `type` person, `actual` true, code `#match`, `managingEntity`
//!   the caller's Organization, an identifier with the caller's NPI, a
//!   `#match` characteristic naming the caller's NPI over the Group's
//!   lifetime, and one member per matched payer Patient, its entity
//!   carrying the `base-ext-match-parameters` extension that names the
//!   provider's own submitted patient (by display: a reference would be read
//!   as a pointer into the payer's data). Every member's `period` ends with
//!   the Group, so attribution ends then even before the Group is swept.
//! - `NonMatchedMembers` (when any; `pdex-provider-member-no-match`) and
//!   `ConsentConstrainedMembers` (when any; `pdex-member-opt-out`, scope
//!   `global`: a CMS opt-out is all or nothing). Their members echo the
//!   provider's own references, never the payer's ids (PDEX-28: no reasons).

use serde_json::{Value, json};

const RESULT_CS: &str = "http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PdexMultiMemberMatchResultCS";
const PDEX_SD: &str = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition";
const NPI_SYSTEM: &str = "http://hl7.org/fhir/sid/us-npi";
/// The system of the identifier every Group fhirwall makes carries (the job id).
pub const JOB_SYSTEM: &str = "urn:fhirwall:provider-member-match";

/// Where one submitted member ended up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Placement {
    Matched { provider_ref: String, display: Option<String>, patient: String },
    NonMatched { provider_ref: String, display: Option<String> },
    ConsentConstrained { provider_ref: String, display: Option<String> },
}

/// Who the Groups are for and how long they live.
pub struct GroupContext<'a> {
    pub job_id: &'a str,
    /// `Organization/{id}` of the caller.
    pub organization: &'a str,
    pub npi: Option<&'a str>,
    /// Match date and last day of the Group's life (`YYYY-MM-DD`).
    pub today: &'a str,
    pub last_day: &'a str,
    /// `meta.lastUpdated` (RFC 3339).
    pub now: &'a str,
}

/// The id of the stored MatchedMembers Group of a job.
pub fn matched_group_id(job_id: &str) -> String {
    format!("pmm-{job_id}")
}

/// The MatchedMembers Group (stored and answered).
pub fn matched_group(ctx: &GroupContext<'_>, placements: &[Placement]) -> Value {
    let mut seen = std::collections::HashSet::new();
    let members: Vec<Value> = placements
        .iter()
        .filter_map(|p| match p {
            Placement::Matched { provider_ref, patient, .. } if seen.insert(patient.clone()) => Some(json!({
                "entity": {
                    "extension": [{
                        "url": format!("{PDEX_SD}/base-ext-match-parameters"),
                        "valueReference": { "display": provider_ref },
                    }],
                    "reference": format!("Patient/{patient}"),
                },
                "period": { "start": ctx.today, "end": ctx.last_day },
                "inactive": false,
            })),
            _ => None,
        })
        .collect();
    let mut group =
        base_group(ctx, &matched_group_id(ctx.job_id), "pdex-provider-member-match", "match", "Matched");
    group["managingEntity"] = json!({ "reference": ctx.organization });
    let mut characteristic = json!({
        "code": coding("match", "Matched"),
        "exclude": false,
        "period": { "start": ctx.today, "end": ctx.last_day },
    });
    characteristic["valueReference"] = match ctx.npi {
        Some(npi) => json!({ "identifier": { "system": NPI_SYSTEM, "value": npi } }),
        None => json!({ "reference": ctx.organization }),
    };
    group["characteristic"] = json!([characteristic]);
    group["quantity"] = json!(members.len());
    if !members.is_empty() {
        group["member"] = Value::Array(members);
    }
    group
}

/// NonMatchedMembers or ConsentConstrainedMembers, when any member is one.
fn echo_group(ctx: &GroupContext<'_>, placements: &[Placement], constrained: bool) -> Option<Value> {
    let members: Vec<Value> = placements
        .iter()
        .filter_map(|p| match (p, constrained) {
            (Placement::NonMatched { provider_ref, display }, false)
            | (Placement::ConsentConstrained { provider_ref, display }, true) => {
                let mut entity = json!({ "reference": provider_ref });
                if !provider_ref.starts_with("Patient/") {
                    entity = json!({ "display": provider_ref });
                } else if let Some(d) = display {
                    entity["display"] = json!(d);
                }
                Some(json!({ "entity": entity, "inactive": false }))
            }
            _ => None,
        })
        .collect();
    if members.is_empty() {
        return None;
    }
    let (id, profile, code, display) = if constrained {
        (
            format!("pmm-{}-constrained", ctx.job_id),
            "pdex-member-opt-out",
            "consentconstraint",
            "Consent Constraint",
        )
    } else {
        (format!("pmm-{}-nomatch", ctx.job_id), "pdex-provider-member-no-match", "nomatch", "Not Matched")
    };
    let mut group = base_group(ctx, &id, profile, code, display);
    group["managingEntity"] = json!({ "reference": ctx.organization });
    let mut characteristic =
        json!({ "code": coding(code, display), "exclude": false, "period": { "start": ctx.today } });
    if constrained {
        characteristic["valueCodeableConcept"] = json!({ "coding": [{
            "system": "http://hl7.org/fhir/us/davinci-pdex/CodeSystem/opt-out-scope",
            "code": "global", "display": "Global Opt-Out" }] });
    } else {
        characteristic["valueBoolean"] = json!(true);
    }
    group["characteristic"] = json!([characteristic]);
    group["quantity"] = json!(members.len());
    group["member"] = Value::Array(members);
    Some(group)
}

fn base_group(ctx: &GroupContext<'_>, id: &str, profile: &str, code: &str, display: &str) -> Value {
    let mut identifier = vec![json!({ "system": JOB_SYSTEM, "value": ctx.job_id })];
    if let Some(npi) = ctx.npi {
        identifier.push(json!({ "system": NPI_SYSTEM, "value": npi }));
    }
    json!({
        "resourceType": "Group",
        "id": id,
        "meta": { "profile": [format!("{PDEX_SD}/{profile}")], "lastUpdated": ctx.now },
        "identifier": identifier,
        "active": true,
        "type": "person",
        "actual": true,
        "code": coding(code, display),
    })
}

fn coding(code: &str, display: &str) -> Value {
    json!({ "coding": [{ "system": RESULT_CS, "code": code, "display": display }] })
}

/// The answer: the three Groups as `Parameters`.
pub fn parameters(ctx: &GroupContext<'_>, matched: &Value, placements: &[Placement]) -> Value {
    let mut parameter = vec![json!({ "name": "MatchedMembers", "resource": matched })];
    if let Some(g) = echo_group(ctx, placements, false) {
        parameter.push(json!({ "name": "NonMatchedMembers", "resource": g }));
    }
    if let Some(g) = echo_group(ctx, placements, true) {
        parameter.push(json!({ "name": "ConsentConstrainedMembers", "resource": g }));
    }
    json!({
        "resourceType": "Parameters",
        "meta": { "profile": [format!("{PDEX_SD}/provider-parameters-multi-member-match-bundle-out")] },
        "parameter": parameter,
    })
}

/// Counts per placement: (matched, non-matched, constrained).
pub fn counts(placements: &[Placement]) -> (usize, usize, usize) {
    placements.iter().fold((0, 0, 0), |(m, n, c), p| match p {
        Placement::Matched { .. } => (m + 1, n, c),
        Placement::NonMatched { .. } => (m, n + 1, c),
        Placement::ConsentConstrained { .. } => (m, n, c + 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_follow_the_pdex_profiles_and_never_carry_payer_ids_in_echoes() {
        let ctx = GroupContext {
            job_id: "0123456789abcdef0123456789abcdef",
            organization: "Organization/org-grace",
            npi: Some("1417987256"),
            today: "2026-12-05",
            last_day: "2027-01-04",
            now: "2026-12-05T10:00:00Z",
        };
        let placements = vec![
            Placement::Matched {
                provider_ref: "Patient/p1".into(),
                display: None,
                patient: "pat-0150".into(),
            },
            Placement::Matched {
                provider_ref: "Patient/p1b".into(),
                display: None,
                patient: "pat-0150".into(),
            },
            Placement::NonMatched { provider_ref: "Patient/p2".into(), display: Some("Jane Doe".into()) },
            Placement::ConsentConstrained { provider_ref: "Patient/p3".into(), display: None },
        ];
        let matched = matched_group(&ctx, &placements);
        assert_eq!(matched["id"], "pmm-0123456789abcdef0123456789abcdef");
        assert_eq!(matched["managingEntity"]["reference"], "Organization/org-grace");
        assert_eq!(matched["member"].as_array().unwrap().len(), 1, "one entry per payer patient");
        assert_eq!(matched["member"][0]["entity"]["reference"], "Patient/pat-0150");
        assert_eq!(matched["member"][0]["period"]["end"], "2027-01-04");
        assert_eq!(matched["characteristic"][0]["valueReference"]["identifier"]["value"], "1417987256");
        let answer = parameters(&ctx, &matched, &placements);
        let names: Vec<&str> =
            answer["parameter"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["MatchedMembers", "NonMatchedMembers", "ConsentConstrainedMembers"]);
        let echoes = answer["parameter"][1].to_string() + &answer["parameter"][2].to_string();
        assert!(!echoes.contains("pat-0150"));
        assert!(echoes.contains("Patient/p2") && echoes.contains("Patient/p3"));
        assert_eq!(counts(&placements), (2, 1, 1));
        let empty = matched_group(&ctx, &[]);
        assert!(empty.get("member").is_none());
        assert_eq!(empty["quantity"], 0);
    }
}
