//! Records that name a patient the caller may not see (DESIGN.md "Contract
//! details"): a literal reference to a hidden Patient anywhere in a resource
//! — an owner link, a participant, `Patient.link.other`, a Provenance or
//! AuditEvent agent or entity — withholds it, and so does a Reference given
//! only by an identifier that names a patient, unless that identifier is
//! one of a visible patient's own (`resolve`: fhirwall knows the identifiers
//! of the patients the caller may see, nobody else's, so an identifier it
//! cannot resolve to a visible patient withholds the record). The payer-only links (`payee`, `subscriber`, `policyHolder`,
//! `payor`) are the exception the access stage already judged: they never
//! make a record visible, and a dependent's record stays visible behind a
//! hidden subscriber.

use serde_json::Value;

use super::disclosure::{Disclosure, Reason, Verdict};

/// Top-level members whose patient links are judged by the access stage.
const PAYER_LINKS: &[&str] = &["payee", "subscriber", "policyHolder", "payor"];
/// v2-0203 identifier types that identify a person as a member or patient.
const PATIENT_IDENTIFIER_TYPES: &[&str] = &["MB", "MR", "MA", "MC", "SN", "PI", "PT", "SB"];

/// Does `resource` name a patient for whom `visible` is false, or a patient
/// by identifier only?
pub fn names_hidden_patient(resource: &str, visible: &dyn Fn(&str) -> bool, resolve: Resolve<'_>) -> bool {
    match crate::fhir::bundle::RawObject::parse(resource) {
        Ok(object) => object_names_hidden_patient(resource, &object, visible, resolve),
        Err(_) => true,
    }
}

/// The patient an identifier (system, value) belongs to, among those
/// fhirwall knows; `None` when unknown or ambiguous.
pub type Resolve<'a> = &'a dyn Fn(Option<&str>, &str) -> Option<String>;

/// [`names_hidden_patient`] on a resource already read as its top-level
/// members (`object` is `resource` parsed).
pub fn object_names_hidden_patient(
    resource: &str,
    object: &crate::fhir::bundle::RawObject<'_>,
    visible: &dyn Fn(&str) -> bool,
    resolve: Resolve<'_>,
) -> bool {
    // Fast path: the top-level members raw, their references read without a
    // tree. Identifier-only references (an `identifier` object) and escapes
    // take the tree walk.
    {
        let mut fast = true;
        for (key, value) in &object.members {
            if PAYER_LINKS.contains(&key.as_ref()) {
                continue;
            }
            let text = value.get();
            if has_identifier_object(text) {
                fast = false;
                break;
            }
            match super::raw_reference_values(text) {
                Some(values) => {
                    let hidden = values
                        .iter()
                        .filter_map(|r| crate::fhir::normalize_reference(r))
                        .any(|key| key.strip_prefix("Patient/").is_some_and(|id| !visible(id)));
                    if hidden {
                        return true;
                    }
                }
                None => {
                    fast = false;
                    break;
                }
            }
        }
        if fast {
            return false;
        }
    }
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(resource) else { return true };
    map.iter().filter(|(key, _)| !PAYER_LINKS.contains(&key.as_str())).any(|(_, v)| walk(v, visible, resolve))
}

/// The stage: withholds a record that names a hidden patient, or a
/// patient by an identifier that is not a visible patient's own.
pub struct NamesStage<'a> {
    pub visible: &'a dyn Fn(&str) -> bool,
    pub resolve: Resolve<'a>,
}

impl super::stage::Stage for NamesStage<'_> {
    fn name(&self) -> &'static str {
        "names"
    }

    fn judge(&self, items: &[&super::stage::Item<'_>], disclosure: &mut Disclosure) -> Vec<Verdict> {
        items
            .iter()
            .map(|item| {
                let object = match (item.untouched(), item.text()) {
                    (Some(node), _) => node.object(),
                    (None, Some(text)) => crate::fhir::bundle::RawObject::parse(text).ok(),
                    (None, None) => None,
                };
                let named = match (object, item.text()) {
                    (Some(object), Some(text)) => {
                        object_names_hidden_patient(text, &object, self.visible, self.resolve)
                    }
                    _ => true,
                };
                if named {
                    disclosure.withhold(Reason::Attribution);
                    Verdict::Drop(Reason::Attribution)
                } else {
                    Verdict::Keep
                }
            })
            .collect()
    }
}

/// Does the raw text hold an `"identifier"` member whose value is an object
/// (a Reference's identifier, not a resource's identifier list)?
fn has_identifier_object(text: &str) -> bool {
    const KEY: &str = "\"identifier\"";
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(KEY));
    for at in FINDER.find_iter(text.as_bytes()) {
        let from = at + KEY.len();
        if let Some(rest) = text[from..].trim_start().strip_prefix(':')
            && rest.trim_start().starts_with('{')
        {
            return true;
        }
    }
    false
}

fn walk(value: &Value, visible: &dyn Fn(&str) -> bool, resolve: Resolve<'_>) -> bool {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("reference")
                && let Some(key) = crate::fhir::normalize_reference(reference)
                && let Some(id) = key.strip_prefix("Patient/")
                && !visible(id)
            {
                return true;
            }
            if !map.contains_key("reference")
                && let Some(Value::Object(identifier)) = map.get("identifier")
                && names_a_patient(map.get("type"), identifier)
            {
                let system = identifier.get("system").and_then(Value::as_str);
                let patient =
                    identifier.get("value").and_then(Value::as_str).and_then(|v| resolve(system, v));
                if !patient.is_some_and(|id| visible(&id)) {
                    return true;
                }
            }
            map.values().any(|v| walk(v, visible, resolve))
        }
        Value::Array(items) => items.iter().any(|v| walk(v, visible, resolve)),
        _ => false,
    }
}

/// An identifier-only Reference that points at a patient: typed `Patient`,
/// or an identifier of a member/patient kind.
fn names_a_patient(reference_type: Option<&Value>, identifier: &serde_json::Map<String, Value>) -> bool {
    if reference_type.and_then(Value::as_str) == Some("Patient") {
        return true;
    }
    if identifier
        .get("system")
        .and_then(Value::as_str)
        .is_some_and(|s| s.to_ascii_lowercase().contains("member"))
    {
        return true;
    }
    identifier
        .get("type")
        .and_then(|t| t.get("coding"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("code").and_then(Value::as_str))
        .any(|code| PATIENT_IDENTIFIER_TYPES.contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visible(id: &str) -> bool {
        id == "p1"
    }

    /// p1's member id is M1 in the payer's system; X1 is nobody fhirwall knows.
    fn resolve(system: Option<&str>, value: &str) -> Option<String> {
        (system == Some("http://payer/member-id") && value == "M1").then(|| "p1".to_owned())
    }

    #[test]
    fn hidden_patients_are_found_anywhere_but_payer_links() {
        for (text, named) in [
            (r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"}}"#, false),
            (
                r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"performer":[{"reference":"Patient/p2"}]}"#,
                true,
            ),
            (
                r#"{"resourceType":"Provenance","agent":[{"who":{"reference":"https://x/fhir/Patient/p2/_history/1"}}]}"#,
                true,
            ),
            (r#"{"resourceType":"Patient","id":"p1","link":[{"other":{"reference":"Patient/p2"}}]}"#, true),
            (
                r#"{"resourceType":"Coverage","beneficiary":{"reference":"Patient/p1"},"subscriber":{"reference":"Patient/p2"}}"#,
                false,
            ),
            (
                r#"{"resourceType":"ExplanationOfBenefit","patient":{"reference":"Patient/p1"},"payee":{"party":{"reference":"Patient/p2"}}}"#,
                false,
            ),
            (
                r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"performer":[{"type":"Patient","identifier":{"value":"X1"}}]}"#,
                true,
            ),
            (
                r#"{"resourceType":"Condition","subject":{"identifier":{"system":"http://payer/member-id","value":"X1"}}}"#,
                true,
            ),
            (
                r#"{"resourceType":"Appointment","participant":[{"actor":{"identifier":{"type":{"coding":[{"code":"MB"}]},"value":"X1"}}}]}"#,
                true,
            ),
            (
                r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"performer":[{"identifier":{"system":"http://hl7.org/fhir/sid/us-npi","value":"1"}}]}"#,
                false,
            ),
            (
                r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"performer":[{"refer\u0065nce":"Patient/p2"}]}"#,
                true,
            ),
            (
                r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"performer":[{"type":"Patient","identifier":{"system":"http://payer/member-id","value":"M1"}}]}"#,
                false,
            ),
            (
                r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"performer":[{"type":"Patient","identifier":{"value":"M1"}}]}"#,
                true,
            ),
            ("not json", true),
        ] {
            assert_eq!(names_hidden_patient(text, &visible, &resolve), named, "{text}");
        }
    }
}
