//! `_elements` and `_summary`, applied by fhirwall after redaction.
//!
//! Redaction decides on whole resources: an EOB fetched with
//! `_elements=id,patient` has no provider, diagnosis or service date left to
//! decide on, and would leave the id of a Part 2 or pre-floor claim. So the
//! upstream is always asked for whole resources, and the caller's subset is
//! cut here from what redaction let out (matches only; `_include`d resources
//! stay whole), tagged `SUBSETTED` as FHIR asks.
//!
//! `_summary=true` needs each type's summary elements, which fhirwall does
//! not carry: such answers hold the whole resources (more than asked, never
//! more than allowed). `_summary=text` and `_summary=data` are exact.

use serde_json::{Map, Value};

use crate::fhir::bundle::RawObject;
use crate::fhir::search::SearchParams;

const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

/// Elements every subset keeps (besides the type's required ones).
const ALWAYS: [&str; 3] = ["resourceType", "id", "meta"];

/// Required top-level elements of common types (FHIR R4 min cardinality 1),
/// returned whether asked for or not.
const REQUIRED: &[(&str, &[&str])] = &[
    (
        "ExplanationOfBenefit",
        &["status", "type", "use", "patient", "created", "insurer", "provider", "outcome", "insurance"],
    ),
    ("Claim", &["status", "type", "use", "patient", "created", "provider", "priority", "insurance"]),
    ("ClaimResponse", &["status", "type", "use", "patient", "created", "insurer", "outcome"]),
    ("Coverage", &["status", "beneficiary", "payor"]),
    ("Encounter", &["status", "class"]),
    ("Observation", &["status", "code"]),
    ("Condition", &["subject"]),
    ("Procedure", &["status", "subject"]),
    ("MedicationDispense", &["status", "medicationCodeableConcept", "medicationReference"]),
    (
        "MedicationRequest",
        &["status", "intent", "subject", "medicationCodeableConcept", "medicationReference"],
    ),
    ("Provenance", &["target", "recorded", "agent"]),
    ("Group", &["type", "actual"]),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Summary {
    /// `text`: narrative, id, meta and required elements.
    Text,
    /// `data`: everything but the narrative.
    Data,
}

/// The subset a request asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subset {
    /// `_elements`: (type or any, element).
    elements: Option<Vec<(Option<String>, String)>>,
    summary: Option<Summary>,
}

impl Subset {
    /// Take `_elements` and `_summary` out of the request's parameters (the
    /// upstream is asked for whole resources). `None` when there is nothing
    /// for fhirwall to cut.
    pub fn take(params: &mut SearchParams) -> Option<Subset> {
        let mut subset = Subset::default();
        let mut any = false;
        params.params.retain(|p| match p.name.as_str() {
            "_elements" => {
                any = true;
                let elements = subset.elements.get_or_insert_with(Vec::new);
                for value in &p.values {
                    match value.split_once('.') {
                        Some((t, e)) => elements.push((Some(t.to_owned()), e.to_owned())),
                        None => elements.push((None, value.clone())),
                    }
                }
                false
            }
            "_summary" => {
                any = true;
                subset.summary = match p.values.first().map(String::as_str) {
                    Some("text") => Some(Summary::Text),
                    Some("data") => Some(Summary::Data),
                    _ => None,
                };
                false
            }
            _ => true,
        });
        (any && (subset.elements.is_some() || subset.summary.is_some())).then_some(subset)
    }

    /// The subset of one resource; `None` when it is unchanged (or cannot
    /// be read, in which case it was already judged by redaction).
    pub fn apply(&self, resource: &str) -> Option<String> {
        let object = RawObject::parse(resource).ok()?;
        let resource_type = object.get_str("resourceType")?;
        let required = REQUIRED.iter().find(|(t, _)| *t == resource_type).map(|(_, r)| *r).unwrap_or(&[]);
        let keep = |key: &str| -> bool {
            if ALWAYS.contains(&key) || required.contains(&key) {
                return true;
            }
            let by_elements = self.elements.as_ref().is_none_or(|elements| {
                elements.iter().any(|(t, e)| e == key && t.as_deref().is_none_or(|t| t == resource_type))
            });
            let by_summary = match self.summary {
                None => true,
                Some(Summary::Data) => key != "text",
                Some(Summary::Text) => key == "text",
            };
            by_elements && by_summary
        };
        if object.members.iter().all(|(k, _)| keep(k)) {
            return None;
        }
        let mut out = String::with_capacity(resource.len());
        let mut meta_seen = false;
        object.write_with(&mut out, |key, value| {
            if key == "meta" {
                meta_seen = true;
                let mut meta: Value = serde_json::from_str(value.get()).ok()?;
                tag(meta.as_object_mut()?);
                return Some(meta.to_string());
            }
            (!keep(key)).then(String::new)
        });
        if !meta_seen {
            // No meta: add one with the tag.
            let mut meta = Map::new();
            tag(&mut meta);
            out.pop();
            out.push_str(",\"meta\":");
            out.push_str(&Value::Object(meta).to_string());
            out.push('}');
        }
        Some(out)
    }
}

fn tag(meta: &mut Map<String, Value>) {
    let tags = meta.entry("tag").or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(tags) = tags
        && !tags.iter().any(|t| t["code"] == "SUBSETTED")
    {
        tags.push(serde_json::json!({"system": SUBSETTED_SYSTEM, "code": "SUBSETTED"}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::search::SearchParam;

    fn params(list: &[(&str, &[&str])]) -> SearchParams {
        SearchParams {
            params: list
                .iter()
                .map(|(n, v)| SearchParam::new(*n, None, v.iter().map(|s| s.to_string()).collect()))
                .collect(),
        }
    }

    #[test]
    fn elements_and_summary_are_taken_from_the_upstream_request() {
        let mut p = params(&[
            ("patient", &["Patient/1"]),
            ("_elements", &["id", "Observation.code"]),
            ("_count", &["5"]),
        ]);
        let subset = Subset::take(&mut p).unwrap();
        assert_eq!(p.params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["patient", "_count"]);
        let obs = r#"{"resourceType":"Observation","id":"o","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/1"},"valueString":"v"}"#;
        let out: Value = serde_json::from_str(&subset.apply(obs).unwrap()).unwrap();
        assert!(out.get("valueString").is_none() && out.get("subject").is_none());
        assert_eq!(out["code"]["text"], "x");
        assert_eq!(out["meta"]["tag"][0]["code"], "SUBSETTED");
        let mut p = params(&[("_summary", &["true"])]);
        assert_eq!(Subset::take(&mut p), None, "_summary=true: whole resources");
        assert!(p.params.is_empty(), "and never sent upstream");
        let mut p = params(&[("_summary", &["data"])]);
        let subset = Subset::take(&mut p).unwrap();
        let with_text = r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"1"},"text":{"status":"generated","div":"<div/>"},"gender":"female"}"#;
        let out: Value = serde_json::from_str(&subset.apply(with_text).unwrap()).unwrap();
        assert!(out.get("text").is_none());
        assert_eq!(out["meta"]["versionId"], "1");
        assert_eq!(subset.apply(r#"{"resourceType":"Patient","id":"p"}"#), None);
    }
}
