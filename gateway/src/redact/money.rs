//! The financial scope beyond the listed elements (DESIGN.md "Contract
//! details", financial): with `financial = "strip"`, no Money value — any
//! Money element, any Quantity in an ISO 4217 currency, in extensions too —
//! leaves in claims data (ExplanationOfBenefit, Claim, ClaimResponse,
//! Invoice, ChargeItem, CoverageEligibilityResponse), nor in
//! `Coverage.costToBeneficiary`; the free text of those types (`text`,
//! `processNote`, `note`) goes too.
//!
//! Runs after the table-driven stripping of `financial.toml` (which keeps
//! reasons and categories of adjudications). Money is removed as a whole
//! element: an array element that carries Money directly (an extension
//! with `valueMoney`, a `supportingInfo` with a currency `valueQuantity`, a
//! `costToBeneficiary` entry) goes entirely, a member that is Money goes,
//! and a list or object left empty goes, so the result is what the record
//! would be had the money never been there. Everything untouched keeps its
//! bytes and member order (the walk re-emits raw JSON).

use std::sync::LazyLock;

use memchr::memmem::Finder;

use crate::chain::strict;
use crate::chain::tape::{Kind, Node};
use crate::fhir::bundle::{RawObject, RawText, write_key};

/// Types whose every Money value and free text go.
pub const CLAIMS_TYPES: &[&str] = &[
    "ExplanationOfBenefit",
    "Claim",
    "ClaimResponse",
    "Invoice",
    "ChargeItem",
    "CoverageEligibilityResponse",
];
/// Free-text members removed from claims data.
const FREE_TEXT: &[&str] = &["text", "processNote", "note"];
const ISO_4217: &str = "urn:iso:std:iso:4217";

/// The resource without money, or `None` when there was nothing to remove.
/// `Err` when the text is not a JSON object.
pub fn strip(resource_type: &str, resource: &str) -> Result<Option<String>, &'static str> {
    if !applies_to(resource_type) {
        return Ok(None);
    }
    let object = RawObject::parse(resource).map_err(|_| "not a JSON object")?;
    strip_object(resource_type, resource, &object)
}

/// Does the financial scope touch this type at all?
pub fn applies_to(resource_type: &str) -> bool {
    CLAIMS_TYPES.contains(&resource_type) || resource_type == "Coverage"
}

/// [`strip`] on a resource already read as its top-level members.
pub fn strip_object(
    resource_type: &str,
    resource: &str,
    object: &RawObject<'_>,
) -> Result<Option<String>, &'static str> {
    let claims = CLAIMS_TYPES.contains(&resource_type);
    if !claims && resource_type != "Coverage" {
        return Ok(None);
    }
    let mut changed = false;
    let mut out = String::with_capacity(resource.len());
    out.push('{');
    let mut first = true;
    for (key, value) in &object.members {
        let remove = if claims { FREE_TEXT.contains(&key.as_ref()) } else { key == "costToBeneficiary" };
        if remove {
            changed = true;
            continue;
        }
        let replaced = if claims && key != "meta" { walk(value)? } else { Walked::Same };
        let text = match &replaced {
            Walked::Same => value.get(),
            Walked::Gone => {
                changed = true;
                continue;
            }
            Walked::New(text) => {
                changed = true;
                text.as_str()
            }
        };
        if !first {
            out.push(',');
        }
        first = false;
        write_key(&mut out, key);
        out.push(':');
        out.push_str(text);
    }
    out.push('}');
    Ok(changed.then_some(out))
}

enum Walked {
    Same,
    /// Removed (Money, or left empty).
    Gone,
    New(String),
}

fn walk(value: &RawText<'_>) -> Result<Walked, &'static str> {
    let text = value.get();
    // Most values hold no money at all: skip them without reading them.
    static CURRENCY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("currency"));
    static CODE_SYSTEM: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(ISO_4217));
    let mentions = |finder: &Finder<'_>| finder.find(text.as_bytes()).is_some();
    if !mentions(&CURRENCY) && !mentions(&CODE_SYSTEM) {
        return Ok(Walked::Same);
    }
    let tape = strict::read(text).map_err(|_| "malformed value")?;
    Ok(walk_node(tape.root()))
}

fn walk_node(node: Node<'_, '_>) -> Walked {
    match node.kind() {
        Kind::Object => walk_object(node),
        Kind::Array => walk_array(node),
        _ => Walked::Same,
    }
}

fn walk_object(node: Node<'_, '_>) -> Walked {
    if is_money(node) {
        return Walked::Gone;
    }
    let mut changed = false;
    let mut members: Vec<(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> = Vec::new();
    for member in node.children() {
        let key = member.key().unwrap_or_default();
        match walk_node(member) {
            Walked::Same => members.push((key, member.raw().into())),
            Walked::Gone => changed = true,
            Walked::New(new) => {
                changed = true;
                members.push((key, new.into()));
            }
        }
    }
    if !changed {
        return Walked::Same;
    }
    if members.is_empty() {
        return Walked::Gone;
    }
    let mut out = String::with_capacity(node.raw().len());
    out.push('{');
    for (n, (key, value)) in members.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        write_key(&mut out, key);
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    Walked::New(out)
}

fn walk_array(node: Node<'_, '_>) -> Walked {
    let mut changed = false;
    let mut kept: Vec<std::borrow::Cow<'_, str>> = Vec::new();
    for item in node.children() {
        // An element that carries money itself goes whole.
        if carries_money(item) {
            changed = true;
            continue;
        }
        match walk_node(item) {
            Walked::Same => kept.push(item.raw().into()),
            Walked::Gone => changed = true,
            Walked::New(new) => {
                changed = true;
                kept.push(new.into());
            }
        }
    }
    if !changed {
        return Walked::Same;
    }
    if kept.is_empty() {
        return Walked::Gone;
    }
    Walked::New(format!("[{}]", kept.join(",")))
}

/// Is this array element Money, or an object with a Money member of its own?
fn carries_money(item: Node<'_, '_>) -> bool {
    item.kind() == Kind::Object
        && (is_money(item) || item.children().any(|value| value.kind() == Kind::Object && is_money(value)))
}

/// Money (`value` + `currency`) or a Quantity whose system is ISO 4217.
fn is_money(object: Node<'_, '_>) -> bool {
    let has_currency = object.get("currency").is_some()
        && object
            .children()
            .all(|m| matches!(m.key().as_deref(), Some("value" | "currency" | "id" | "extension")));
    has_currency || object.get_str("system").as_deref() == Some(ISO_4217)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_goes_as_whole_elements_and_the_rest_keeps_its_bytes() {
        let with_money = r#"{"resourceType":"ExplanationOfBenefit","id":"e","text":{"div":"$12"},"extension":[{"url":"a","valueString":"keep"},{"url":"b","valueMoney":{"value":1.5,"currency":"USD"}}],"supportingInfo":[{"sequence":1,"category":{"text":"x"}},{"sequence":2,"category":{"text":"y"},"valueQuantity":{"value":3,"system":"urn:iso:std:iso:4217","code":"USD"}}],"processNote":[{"text":"paid $3"}],"item":[{"sequence":1,"z":1,"a":2}]}"#;
        let without = r#"{"resourceType":"ExplanationOfBenefit","id":"e","extension":[{"url":"a","valueString":"keep"}],"supportingInfo":[{"sequence":1,"category":{"text":"x"}}],"item":[{"sequence":1,"z":1,"a":2}]}"#;
        let stripped = strip("ExplanationOfBenefit", with_money).unwrap().unwrap();
        assert!(
            !stripped.contains("USD") && !stripped.contains("paid") && !stripped.contains("$12"),
            "{stripped}"
        );
        assert_eq!(stripped, without, "as if the money had never been there, member order kept");
        assert!(
            strip("ExplanationOfBenefit", without).unwrap().is_none(),
            "nothing to remove, nothing changed"
        );
    }

    #[test]
    fn money_only_lists_disappear() {
        let text = r#"{"resourceType":"Invoice","id":"i","lineItem":[{"sequence":1,"priceComponent":[{"type":"base","amount":{"value":5,"currency":"USD"}}]}],"totalNet":{"value":5,"currency":"USD"}}"#;
        let out = strip("Invoice", text).unwrap().unwrap();
        assert_eq!(out, r#"{"resourceType":"Invoice","id":"i","lineItem":[{"sequence":1}]}"#);
    }

    #[test]
    fn coverage_loses_cost_to_beneficiary_only() {
        let text = r#"{"resourceType":"Coverage","id":"c","costToBeneficiary":[{"valueMoney":{"value":20,"currency":"USD"}}],"text":{"div":"kept"}}"#;
        assert_eq!(
            strip("Coverage", text).unwrap().unwrap(),
            r#"{"resourceType":"Coverage","id":"c","text":{"div":"kept"}}"#
        );
        assert!(
            strip("Observation", r#"{"valueQuantity":{"value":1,"system":"urn:iso:std:iso:4217"}}"#)
                .unwrap()
                .is_none()
        );
    }
}
