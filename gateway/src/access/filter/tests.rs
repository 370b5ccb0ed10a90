//! Table-driven tests of the response filter.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::access::Scope;
use crate::access::attribution::OrgMembers;
use crate::access::policy::Policy;
use crate::access::refs::RefResolver;
use crate::chain::disclosure::Disclosure;

const UP: &str = "http://up:9000/fhir";
const GW: &str = "https://gw.example/fhir";

/// Organization/org-a sees p1, p2, pat-0001 and pat-01234; p3 is attributed but
/// opted out; p4, pat-00011 and pat-0123 are not attributed. It owns Group g1.
fn scope() -> Scope {
    let members: HashSet<String> =
        ["p1", "p2", "p3", "pat-0001", "pat-01234"].iter().map(|s| s.to_string()).collect();
    let groups = HashMap::from([("g1".to_owned(), vec!["p1".to_owned(), "p2".to_owned()])]);
    let upstream = OrgMembers { members, groups };
    Scope::new(
        "Organization/org-a",
        Some(Arc::new(upstream)),
        None,
        Arc::new(HashSet::from(["p3".to_owned()])),
        refs(),
    )
}

fn refs() -> RefResolver {
    RefResolver::new([UP, GW])
}

fn verdict(resource: &Value) -> Verdict {
    let scope = scope();
    let policy = Policy::builtin();
    let refs = refs();
    Checker::new(&scope, &policy, &refs).resource(&resource.to_string())
}

fn keep(patients: &[&str]) -> Verdict {
    Verdict::Keep(patients.iter().map(|s| s.to_string()).collect())
}

#[test]
fn single_resources() {
    use Reason::*;
    let rows: Vec<(&str, Value, Verdict)> = vec![
        ("visible patient", json!({"resourceType": "Patient", "id": "p1"}), keep(&["p1"])),
        ("hidden patient", json!({"resourceType": "Patient", "id": "p4"}), Verdict::Drop(Attribution)),
        ("opted-out patient", json!({"resourceType": "Patient", "id": "p3"}), Verdict::Drop(OptOut)),
        (
            "prefix of a visible id",
            json!({"resourceType": "Patient", "id": "pat-00011"}),
            Verdict::Drop(Attribution),
        ),
        (
            "prefix of a visible id 2",
            json!({"resourceType": "Patient", "id": "pat-0123"}),
            Verdict::Drop(Attribution),
        ),
        ("patient without id", json!({"resourceType": "Patient"}), Verdict::Drop(Unlinked)),
        (
            "patient link to hidden (same person) ignored",
            json!({"resourceType": "Patient", "id": "p1", "link": [{"other": {"reference": "Patient/p4"}}]}),
            keep(&["p1"]),
        ),
        (
            "observation of visible",
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/p1"}}),
            keep(&["p1"]),
        ),
        (
            "observation of hidden",
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/p4"}}),
            Verdict::Drop(Attribution),
        ),
        (
            "observation of opted-out",
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/p3"}}),
            Verdict::Drop(OptOut),
        ),
        (
            "absolute upstream reference",
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": format!("{UP}/Patient/p1")}}),
            keep(&["p1"]),
        ),
        (
            "absolute public reference",
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": format!("{GW}/Patient/p2")}}),
            keep(&["p2"]),
        ),
        (
            "versioned reference",
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/p1/_history/4"}}),
            keep(&["p1"]),
        ),
        (
            "foreign server reference",
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": "https://evil.example/fhir/Patient/p1"}}),
            Verdict::Drop(Unlinked),
        ),
        (
            "prefix trick reference",
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/pat-00011"}}),
            Verdict::Drop(Attribution),
        ),
        (
            "lower-case type",
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": "patient/p1"}}),
            Verdict::Drop(Unlinked),
        ),
        (
            "contained-only subject",
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": "#p"},
                   "contained": [{"resourceType": "Patient", "id": "p"}]}),
            Verdict::Drop(Unlinked),
        ),
        (
            "identifier-only subject",
            json!({"resourceType": "Observation", "id": "o", "subject": {"identifier": {"value": "FW1"}}}),
            Verdict::Drop(Unlinked),
        ),
        ("no subject", json!({"resourceType": "Observation", "id": "o"}), Verdict::Drop(Unlinked)),
        (
            "group subject",
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": "Group/g1"}}),
            Verdict::Drop(Unlinked),
        ),
        (
            "subject as a string",
            json!({"resourceType": "Observation", "id": "o", "subject": "Patient/p1"}),
            Verdict::Drop(Unlinked),
        ),
        (
            "reference not a string",
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": 12}}),
            Verdict::Drop(Unlinked),
        ),
        (
            "hidden patient as performer vetoes",
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/p1"},
                   "performer": [{"reference": "Practitioner/d"}, {"reference": "Patient/p4"}]}),
            Verdict::Drop(Attribution),
        ),
        (
            "practitioner performer is fine",
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/p1"},
                   "performer": [{"reference": "Practitioner/d"}, {"reference": "#contained"}]}),
            keep(&["p1"]),
        ),
        (
            "EOB with visible patient and payee = hidden subscriber: payee ignored",
            json!({"resourceType": "ExplanationOfBenefit", "id": "e", "patient": {"reference": "Patient/p1"},
                   "payee": {"type": {"text": "subscriber"}, "party": {"reference": "Patient/p4"}}}),
            keep(&["p1"]),
        ),
        (
            "EOB of hidden dependent, payee = visible subscriber",
            json!({"resourceType": "ExplanationOfBenefit", "id": "e", "patient": {"reference": "Patient/p4"},
                   "payee": {"party": {"reference": "Patient/p1"}}}),
            Verdict::Drop(Attribution),
        ),
        (
            "Coverage of hidden dependent, visible subscriber and policy holder",
            json!({"resourceType": "Coverage", "id": "c", "beneficiary": {"reference": "Patient/p4"},
                   "subscriber": {"reference": "Patient/p1"}, "policyHolder": {"reference": "Patient/p1"},
                   "payor": [{"reference": "Organization/payer"}]}),
            Verdict::Drop(Attribution),
        ),
        (
            "Coverage of visible dependent, hidden subscriber",
            json!({"resourceType": "Coverage", "id": "c", "beneficiary": {"reference": "Patient/p1"},
                   "subscriber": {"reference": "Patient/p4"}}),
            keep(&["p1"]),
        ),
        (
            "Coverage without beneficiary",
            json!({"resourceType": "Coverage", "id": "c", "subscriber": {"reference": "Patient/p1"}}),
            Verdict::Drop(Unlinked),
        ),
        (
            "Procedure performer.actor path",
            json!({"resourceType": "Procedure", "id": "x", "subject": {"reference": "Patient/p1"},
                   "performer": [{"actor": {"reference": "Patient/p4"}}]}),
            Verdict::Drop(Attribution),
        ),
        (
            "Appointment participants: all patients visible",
            json!({"resourceType": "Appointment", "id": "a", "participant": [
                {"actor": {"reference": "Patient/p1"}}, {"actor": {"reference": "Practitioner/d"}}]}),
            keep(&["p1"]),
        ),
        (
            "Appointment with a hidden participant",
            json!({"resourceType": "Appointment", "id": "a", "participant": [
                {"actor": {"reference": "Patient/p1"}}, {"actor": {"reference": "Patient/p4"}}]}),
            Verdict::Drop(Attribution),
        ),
        ("organization passes", json!({"resourceType": "Organization", "id": "org"}), keep(&[])),
        ("practitioner passes", json!({"resourceType": "Practitioner", "id": "d"}), keep(&[])),
        ("operation outcome passes", json!({"resourceType": "OperationOutcome", "issue": []}), keep(&[])),
        (
            "unlisted type dropped",
            json!({"resourceType": "Task", "id": "t", "for": {"reference": "Patient/p1"}}),
            Verdict::Drop(Unlinked),
        ),
        (
            "binary dropped",
            json!({"resourceType": "Binary", "id": "b", "data": "AAAA"}),
            Verdict::Drop(Unlinked),
        ),
        ("no resourceType", json!({"id": "x"}), Verdict::Drop(Unlinked)),
        (
            "Device of a hidden patient",
            json!({"resourceType": "Device", "id": "d", "patient": {"reference": "Patient/p4"}}),
            Verdict::Drop(Attribution),
        ),
        (
            "Provenance alone targeting an EOB cannot be checked",
            json!({"resourceType": "Provenance", "id": "pv", "target": [{"reference": "ExplanationOfBenefit/e1"}]}),
            Verdict::Drop(Unlinked),
        ),
        (
            "Provenance targeting a visible patient",
            json!({"resourceType": "Provenance", "id": "pv", "target": [{"reference": "Patient/p1"}]}),
            keep(&["p1"]),
        ),
        (
            "contained observation without subject inherits",
            json!({"resourceType": "ExplanationOfBenefit", "id": "e", "patient": {"reference": "Patient/p1"},
                   "contained": [{"resourceType": "Observation", "id": "line"}, {"resourceType": "Organization", "id": "o"}]}),
            keep(&["p1"]),
        ),
        (
            "contained observation of a hidden patient drops the container",
            json!({"resourceType": "ExplanationOfBenefit", "id": "e", "patient": {"reference": "Patient/p1"},
                   "contained": [{"resourceType": "Observation", "id": "line", "subject": {"reference": "Patient/p4"}}]}),
            Verdict::Drop(Attribution),
        ),
        (
            "contained patient drops the container",
            json!({"resourceType": "Coverage", "id": "c", "beneficiary": {"reference": "Patient/p1"},
                   "contained": [{"resourceType": "Patient", "id": "sub"}]}),
            Verdict::Drop(Unlinked),
        ),
        (
            "contained in an organization is checked too",
            json!({"resourceType": "Organization", "id": "o",
                   "contained": [{"resourceType": "Coverage", "id": "c", "beneficiary": {"reference": "Patient/p4"}}]}),
            Verdict::Drop(Attribution),
        ),
        (
            "contained unlisted type drops the container",
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/p1"},
                   "contained": [{"resourceType": "Binary", "id": "b"}]}),
            Verdict::Drop(Unlinked),
        ),
        (
            "contained reference to an outside unknown drops",
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/p1"},
                   "contained": [{"resourceType": "Observation", "id": "c", "subject": {"reference": "urn:uuid:1"}}]}),
            Verdict::Drop(Unlinked),
        ),
        (
            "contained is not an array",
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/p1"}, "contained": {}}),
            Verdict::Drop(Unlinked),
        ),
    ];
    for (name, resource, want) in rows {
        assert_eq!(verdict(&resource), want, "{name}: {resource}");
    }
}

#[test]
fn duplicated_members_are_dropped() {
    let scope = scope();
    let policy = Policy::builtin();
    let refs = refs();
    let checker = Checker::new(&scope, &policy, &refs);
    for text in [
        r#"{"resourceType":"Organization","id":"o","resourceType":"Patient","id":"p4"}"#,
        r#"{"resourceType":"Patient","id":"p1","id":"p4"}"#,
        r#"{"resourceType":"Observation","id":"o","subject":{"reference":"Patient/p1"},"subject":{"reference":"Patient/p4"}}"#,
    ] {
        assert!(matches!(checker.resource(text), Verdict::Drop(_)), "{text}");
    }
    assert!(matches!(checker.resource("not json"), Verdict::Drop(Reason::Unlinked)));
}

#[test]
fn groups_are_the_callers_own_with_members_filtered() {
    let own = json!({
        "resourceType": "Group", "id": "g1", "type": "person", "actual": true, "quantity": 6,
        "text": {"status": "generated", "div": "<div>p1, p2, p3, p4 ...</div>"},
        "managingEntity": {"reference": "Organization/org-a"},
        "member": [
            {"entity": {"reference": "Patient/p1"}},
            {"entity": {"reference": "Patient/p2"}, "inactive": true},
            {"entity": {"reference": "Patient/p3"}},
            {"entity": {"reference": "Patient/p4"}},
            {"entity": {"reference": "Patient/p1"}, "period": {"end": "2001-01-01"}},
            {"entity": {"reference": "Patient/pat-00011"}},
        ]
    });
    let Verdict::Rewrite { text, members_removed } = verdict(&own) else { panic!("own group not kept") };
    let rebuilt: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(rebuilt["member"], json!([{"entity": {"reference": "Patient/p1"}}]));
    assert_eq!(rebuilt["quantity"], 1);
    assert!(rebuilt.get("text").is_none());
    assert_eq!(members_removed, 5);
    for text in ["p3", "p4", "pat-00011", "p2"] {
        assert!(!rebuilt.to_string().contains(&format!("Patient/{text}\"")), "{text} left");
    }
    let mut other_org = own.clone();
    other_org["managingEntity"] = json!({"reference": "Organization/org-b"});
    assert_eq!(verdict(&other_org), Verdict::Drop(Reason::Attribution));
    let mut other_id = own.clone();
    other_id["id"] = json!("g2");
    assert_eq!(verdict(&other_id), Verdict::Drop(Reason::Attribution));
    let mut contained = own.clone();
    contained["contained"] = json!([{"resourceType": "Patient", "id": "x"}]);
    assert_eq!(verdict(&contained), Verdict::Drop(Reason::Unlinked));
    let mut inactive = own.clone();
    inactive["active"] = json!(false);
    let Verdict::Rewrite { text, .. } = verdict(&inactive) else { panic!() };
    assert!(serde_json::from_str::<Value>(&text).unwrap().get("member").is_none());
}

/// The resources of a Bundle that the filter keeps (as they leave), and
/// what it withheld.
fn bundle_kept(bundle: &Value) -> (Vec<Value>, Disclosure) {
    let scope = scope();
    let policy = Policy::builtin();
    let refs = refs();
    let entries = bundle["entry"].to_string();
    let verdicts = Checker::new(&scope, &policy, &refs).entry_verdicts(&entries, 0).unwrap();
    let mut report = Disclosure::default();
    let mut kept = Vec::new();
    for (entry, verdict) in bundle["entry"].as_array().unwrap().iter().zip(verdicts) {
        match verdict {
            Verdict::Drop(reason) => report.withhold(reason),
            Verdict::Keep(patients) => {
                report.patients.extend(patients);
                kept.push(entry["resource"].clone());
            }
            Verdict::Rewrite { text, members_removed } => {
                report.redact_n(Reason::GroupMember, members_removed);
                kept.push(serde_json::from_str(&text).unwrap());
            }
        }
    }
    (kept, report)
}

fn ids(kept: &[Value]) -> Vec<&str> {
    kept.iter().map(|r| r["id"].as_str().unwrap()).collect()
}

fn entry(resource: Value, mode: &str) -> Value {
    json!({"fullUrl": format!("{UP}/{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap_or("x")),
           "resource": resource, "search": {"mode": mode}})
}

fn obs(id: &str, patient: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "subject": {"reference": format!("Patient/{patient}")}})
}

#[test]
fn bundles_lose_hidden_entries_and_their_count() {
    let bundle = json!({
        "resourceType": "Bundle", "type": "searchset", "total": 5,
        "link": [{"relation": "self", "url": format!("{UP}/Observation")}],
        "entry": [
            entry(obs("o1", "p1"), "match"),
            entry(obs("o-hidden-4", "p4"), "match"),
            entry(obs("o-hidden-3", "p3"), "match"),
            entry(obs("o2", "p2"), "match"),
            entry(json!({"resourceType": "Patient", "id": "p4"}), "include"),
            entry(json!({"resourceType": "Practitioner", "id": "d"}), "include"),
        ]
    });
    let (kept, report) = bundle_kept(&bundle);
    assert_eq!(ids(&kept), vec!["o1", "o2", "d"]);
    let text = serde_json::to_string(&kept).unwrap();
    assert!(!text.contains("hidden") && !text.contains("p4"));
    assert_eq!(report.withheld(Reason::Attribution), 2);
    assert_eq!(report.withheld(Reason::OptOut), 1);
    assert_eq!(report.patients.iter().cloned().collect::<Vec<_>>(), vec!["p1", "p2"]);

    // Everything removed.
    let hidden = json!({"resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [entry(obs("o", "p4"), "match")]});
    assert!(bundle_kept(&hidden).0.is_empty());
}

#[test]
fn provenance_follows_its_target_in_the_same_bundle() {
    let eob = |id: &str, p: &str| json!({"resourceType": "ExplanationOfBenefit", "id": id, "patient": {"reference": format!("Patient/{p}")}});
    let prov = |id: &str, target: &str| json!({"resourceType": "Provenance", "id": id, "target": [{"reference": target}]});
    let bundle = json!({
        "resourceType": "Bundle", "type": "searchset",
        "entry": [
            // The Provenance comes first: the decision must not depend on order.
            entry(prov("pv-visible", "ExplanationOfBenefit/e1"), "include"),
            entry(prov("pv-hidden", "ExplanationOfBenefit/e4"), "include"),
            entry(prov("pv-absent", "ExplanationOfBenefit/nowhere"), "include"),
            entry(prov("pv-mixed", &format!("{UP}/ExplanationOfBenefit/e1")), "include"),
            entry(eob("e1", "p1"), "match"),
            entry(eob("e4", "p4"), "match"),
        ]
    });
    assert_eq!(ids(&bundle_kept(&bundle).0), vec!["pv-visible", "pv-mixed", "e1"]);
}

#[test]
fn entries_without_a_checkable_resource_are_dropped() {
    let bundle = json!({
        "resourceType": "Bundle", "type": "history",
        "entry": [
            {"fullUrl": "Observation/o9", "request": {"method": "DELETE", "url": "Observation/o9"}, "response": {"status": "204"}},
            entry(obs("o1", "p1"), "match"),
        ]
    });
    let (kept, report) = bundle_kept(&bundle);
    assert_eq!(ids(&kept), vec!["o1"]);
    assert_eq!(report.withheld(Reason::Unlinked), 1);
    let duplicate = r#"[{"resource":{"resourceType":"Organization","id":"x"},"resource":{"resourceType":"Patient","id":"p4"}}]"#;
    let scope = scope();
    let policy = Policy::builtin();
    let refs = refs();
    let verdicts = Checker::new(&scope, &policy, &refs).entry_verdicts(duplicate, 0).unwrap();
    assert_eq!(verdicts, vec![Verdict::Drop(Reason::Unlinked)]);
    assert!(Checker::new(&scope, &policy, &refs).entry_verdicts("{}", 0).is_err());
}

#[test]
fn nested_bundles_are_kept_only_when_clean() {
    let inner = |p: &str| json!({"resourceType": "Bundle", "id": "b", "type": "collection", "entry": [{"resource": obs("o", p)}]});
    let outer =
        |p: &str| json!({"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": inner(p)}]});
    assert_eq!(ids(&bundle_kept(&outer("p1")).0), vec!["b"]);
    assert!(bundle_kept(&outer("p4")).0.is_empty());
}

#[test]
fn groups_in_bundles_are_rewritten() {
    let group = json!({"resourceType": "Group", "id": "g1", "managingEntity": {"reference": "Organization/org-a"},
        "member": [{"entity": {"reference": "Patient/p1"}}, {"entity": {"reference": "Patient/p4"}}]});
    let bundle = json!({"resourceType": "Bundle", "type": "searchset", "entry": [entry(group, "match")]});
    let (kept, report) = bundle_kept(&bundle);
    let text = serde_json::to_string(&kept).unwrap();
    assert!(text.contains("Patient/p1") && !text.contains("Patient/p4"), "{text}");
    assert_eq!(report.redactions(Reason::GroupMember), 1);
}
