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

use super::disclosure::{Disclosure, Reason, Verdict};
use super::tape::{Kind, Node};

/// Top-level members whose patient links are judged by the access stage.
const PAYER_LINKS: &[&str] = &["payee", "subscriber", "policyHolder", "payor"];
/// v2-0203 identifier types that identify a person as a member or patient.
const PATIENT_IDENTIFIER_TYPES: &[&str] = &["MB", "MR", "MA", "MC", "SN", "PI", "PT", "SB"];

/// Does `resource` name a patient for whom `visible` is false, or a patient
/// by identifier only? Unreadable text counts as naming one.
pub fn names_hidden_patient(resource: &str, visible: &dyn Fn(&str) -> bool, resolve: Resolve<'_>) -> bool {
    match super::strict::read(resource) {
        Ok(tape) => node_names_hidden_patient(tape.root(), visible, resolve),
        Err(_) => true,
    }
}

/// The patient an identifier (system, value) belongs to, among those
/// fhirwall knows; `None` when unknown or ambiguous.
pub type Resolve<'a> = &'a dyn Fn(Option<&str>, &str) -> Option<String>;

/// [`names_hidden_patient`] on a resource already on a tape: every member
/// but the payer-only links, at any depth.
pub fn node_names_hidden_patient(
    resource: Node<'_, '_>,
    visible: &dyn Fn(&str) -> bool,
    resolve: Resolve<'_>,
) -> bool {
    if resource.kind() != Kind::Object {
        return true;
    }
    resource
        .children()
        .filter(|member| !PAYER_LINKS.iter().any(|link| member.key_is(link)))
        .any(|member| walk(member, visible, resolve))
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
                // A rewrite only removes (redaction, the access stage's
                // narrowing of a Group, a plugin's narrowing replacement):
                // when the upstream's resource on the tape names no hidden
                // patient, neither does the rewritten one, which is then not
                // read again. When it does, the rewritten text decides.
                let named = match (item.untouched(), item.node, item.text()) {
                    (Some(node), _, _) => node_names_hidden_patient(node, self.visible, self.resolve),
                    (None, Some(original), Some(text)) => {
                        node_names_hidden_patient(original, self.visible, self.resolve)
                            && names_hidden_patient(text, self.visible, self.resolve)
                    }
                    (None, None, Some(text)) => names_hidden_patient(text, self.visible, self.resolve),
                    (None, _, None) => true,
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

fn walk(value: Node<'_, '_>, visible: &dyn Fn(&str) -> bool, resolve: Resolve<'_>) -> bool {
    match value.kind() {
        Kind::Object => {
            let reference = value.get("reference");
            if let Some(reference) = reference.and_then(|r| r.str())
                && let Some(key) = crate::fhir::normalize_reference(&reference)
                && let Some(id) = key.strip_prefix("Patient/")
                && !visible(id)
            {
                return true;
            }
            if reference.is_none()
                && let Some(identifier) = value.get("identifier").filter(|i| i.kind() == Kind::Object)
                && names_a_patient(value.get("type"), identifier)
            {
                let system = identifier.get_str("system");
                let patient = identifier.get_str("value").and_then(|v| resolve(system.as_deref(), &v));
                if !patient.is_some_and(|id| visible(&id)) {
                    return true;
                }
            }
            value.children().any(|member| walk(member, visible, resolve))
        }
        Kind::Array => value.children().any(|item| walk(item, visible, resolve)),
        _ => false,
    }
}

/// An identifier-only Reference that points at a patient: typed `Patient`,
/// or an identifier of a member/patient kind.
fn names_a_patient(reference_type: Option<Node<'_, '_>>, identifier: Node<'_, '_>) -> bool {
    if reference_type.and_then(|t| t.str()).as_deref() == Some("Patient") {
        return true;
    }
    if identifier.get_str("system").is_some_and(|s| s.to_ascii_lowercase().contains("member")) {
        return true;
    }
    identifier
        .get("type")
        .and_then(|t| t.get("coding"))
        .filter(|c| c.kind() == Kind::Array)
        .into_iter()
        .flat_map(|codings| codings.children())
        .filter_map(|coding| coding.get_str("code"))
        .any(|code| PATIENT_IDENTIFIER_TYPES.contains(&code.as_ref()))
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

    /// The stage judges what leaves: a Group the access stage narrowed to
    /// visible members stays; a rewrite that kept a hidden patient does not.
    #[test]
    fn a_rewritten_resource_is_judged_as_rewritten() {
        use crate::chain::stage::{Item, Stage};
        let original = r#"{"resourceType":"Group","id":"g","member":[{"entity":{"reference":"Patient/p1"}},{"entity":{"reference":"Patient/p2"}}]}"#;
        let tape = crate::chain::strict::read(original).unwrap();
        let stage = NamesStage { visible: &visible, resolve: &resolve };
        for (rewritten, kept) in [
            (r#"{"resourceType":"Group","id":"g","member":[{"entity":{"reference":"Patient/p1"}}]}"#, true),
            (r#"{"resourceType":"Group","id":"g","member":[{"entity":{"reference":"Patient/p2"}}]}"#, false),
        ] {
            let item = Item {
                entry: None,
                node: Some(tape.root()),
                original: Some(original),
                rewritten: Some(rewritten.to_owned()),
                withheld: false,
            };
            let verdicts = stage.judge(&[&item], &mut Disclosure::default());
            assert_eq!(matches!(verdicts[0], Verdict::Keep), kept, "{rewritten}");
        }
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
