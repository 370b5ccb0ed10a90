//! Table-driven tests of the request decision.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use http::{HeaderMap, Method};

use super::*;
use crate::access::Scope;
use crate::access::attribution::OrgMembers;
use crate::fhir::request::{ParseOptions, RequestParts, parse};

const GW: &str = "https://gw.example/fhir";
const UP: &str = "http://up:9000/fhir";

/// org-a sees pat-0001 and p2; p3 attributed but opted out; pat-00011, pat-0123 hidden.
fn scope_with(members: &[&str]) -> Scope {
    let members: HashSet<String> = members.iter().map(|s| s.to_string()).collect();
    let groups = HashMap::from([("grp-a".to_owned(), members.iter().cloned().collect())]);
    Scope::new(
        "Organization/org-a",
        Some(Arc::new(OrgMembers { members, groups })),
        None,
        Arc::new(HashSet::from(["p3".to_owned()])),
        RefResolver::new([UP, GW]),
    )
}

fn scope() -> Scope {
    scope_with(&["pat-0001", "p2", "p3"])
}

fn request(method: &str, path: &str, query: &str) -> FhirRequest {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let headers = HeaderMap::new();
    let parts = RequestParts { method: &method, path, query: Some(query), headers: &headers, body: b"" };
    parse(&parts, ParseOptions { allow_writes: true }).unwrap_or_else(|e| panic!("{path}?{query}: {e}"))
}

fn decide_on(
    scope: &Scope,
    method: &str,
    path: &str,
    query: &str,
) -> (Result<Plan, GatewayError>, FhirRequest) {
    let mut fhir = request(method, path, query);
    let policy = Policy::builtin();
    let result = plan(scope, &policy, scope.refs(), &mut fhir, 100);
    (result, fhir)
}

fn status(result: &Result<Plan, GatewayError>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(e) => e.status.as_u16(),
    }
}

#[test]
fn statuses() {
    let s = scope();
    let rows: &[(&str, &str, &str, u16)] = &[
        // reads
        ("GET", "Patient/pat-0001", "", 200),
        ("GET", "Patient/pat-00011", "", 404),
        ("GET", "Patient/pat-000", "", 404),
        ("GET", "Patient/p3", "", 404),
        ("GET", "Patient/no-such", "", 404),
        ("HEAD", "Patient/pat-00011", "", 404),
        ("GET", "Patient/pat-00011/_history/1", "", 404),
        ("GET", "Patient/pat-00011/_history", "", 404),
        ("GET", "Patient/pat-0001/_history", "", 200),
        ("GET", "Observation/o1", "", 200),
        ("GET", "ExplanationOfBenefit/e1/_history/2", "", 200),
        ("GET", "Organization/org-x", "", 200),
        ("GET", "Task/t1", "", 403),
        ("GET", "Binary/b1", "", 403),
        ("GET", "Group/grp-a", "", 200),
        ("GET", "Group/grp-other", "", 404),
        ("GET", "Group/grp-other/_history", "", 404),
        ("GET", "Observation/o1", "_summary=text", 400),
        // searches naming patients
        ("GET", "ExplanationOfBenefit", "patient=pat-0001", 200),
        ("GET", "ExplanationOfBenefit", "patient=Patient/pat-0001", 200),
        ("GET", "ExplanationOfBenefit", "patient=https://gw.example/fhir/Patient/pat-0001", 200),
        ("GET", "ExplanationOfBenefit", "patient=http://up:9000/fhir/Patient/pat-0001", 200),
        ("GET", "ExplanationOfBenefit", "patient=https://evil.example/fhir/Patient/pat-0001", 403),
        ("GET", "ExplanationOfBenefit", "patient=Patient/pat-00011", 403),
        ("GET", "ExplanationOfBenefit", "patient=Patient/pat-000", 403),
        ("GET", "ExplanationOfBenefit", "patient=Patient/p3", 403),
        ("GET", "ExplanationOfBenefit", "patient=Patient/nobody", 403),
        ("GET", "ExplanationOfBenefit", "patient=Patient/pat-0001,Patient/pat-00011", 403),
        ("GET", "ExplanationOfBenefit", "patient=Patient/pat-0001&patient=Patient/pat-00011", 403),
        ("GET", "Observation", "subject=Patient/pat-0001&patient=Patient/pat-00011", 403),
        ("GET", "Observation", "subject:Patient=pat-00011", 403),
        ("GET", "Observation", "subject:Patient=pat-0001", 200),
        ("GET", "Observation", "subject:Group=grp-a", 200),
        ("GET", "Observation", "subject:Group=Patient/pat-0001", 400),
        ("GET", "Observation", "subject=urn:uuid:1234", 403),
        ("GET", "Observation", "subject=patient/pat-0001", 403),
        ("GET", "Observation", "focus=Patient/pat-00011", 403),
        ("GET", "Observation", "performer=Patient/pat-00011", 403),
        ("GET", "Observation", "patient:missing=true", 400),
        ("GET", "Observation", "patient:not=Patient/pat-00011", 400),
        ("GET", "Observation", "subject:identifier=http://x|1", 400),
        ("GET", "Observation", "subject:above=Patient/pat-0001", 400),
        ("GET", "Observation", "subject:below=Patient/pat-0001", 400),
        ("GET", "Coverage", "beneficiary=Patient/pat-0001", 200),
        ("GET", "Coverage", "subscriber=Patient/pat-0001", 403),
        ("GET", "Coverage", "policy-holder=Patient/pat-0001", 403),
        ("GET", "Coverage", "payor=Organization/payer", 403),
        ("GET", "ExplanationOfBenefit", "payee=Patient/pat-0001", 403),
        ("GET", "Claim", "payee=Patient/pat-0001", 403),
        ("GET", "Patient", "_id=pat-0001", 200),
        ("GET", "Patient", "_id=pat-0001,pat-00011", 403),
        ("GET", "Patient", "_id=p3", 403),
        ("GET", "Patient", "link=Patient/pat-00011", 403),
        ("GET", "Patient", "identifier=FW1", 200),
        ("POST", "Observation/_search", "", 200),
        // compartment paths
        ("GET", "Patient/pat-0001/Observation", "", 200),
        ("GET", "Patient/pat-00011/Observation", "", 403),
        ("GET", "Patient/p3/ExplanationOfBenefit", "", 403),
        ("GET", "Patient/pat-0001/Observation", "performer=Patient/pat-00011", 403),
        ("GET", "Patient/pat-0001/Organization", "", 400),
        // reference types, groups, others
        ("GET", "Organization", "name=x", 200),
        ("GET", "Practitioner", "", 200),
        ("GET", "Task", "patient=Patient/pat-0001", 403),
        ("GET", "Group", "managingEntity=Organization/org-a", 200),
        ("GET", "Group", "managing-entity=org-a", 200),
        ("GET", "Group", "managingEntity=Organization/org-b", 403),
        ("GET", "Group", "managing-entity=Organization/org-a,Organization/org-b", 403),
        ("GET", "Group", "member=Patient/pat-00011", 403),
        ("GET", "Group", "member=Patient/pat-0001", 200),
        ("GET", "Group", "_id=grp-other", 200),
        // operations and writes
        ("POST", "Group/grp-a/$davinci-data-export", "", 200),
        ("POST", "Group/grp-other/$davinci-data-export", "", 404),
        ("GET", "Group/grp-other/$export", "", 404),
        ("POST", "Observation", "", 403),
        ("PUT", "Patient/pat-0001", "", 403),
        ("DELETE", "Observation/o1", "", 403),
        ("POST", "", "", 403),
        ("PUT", "Organization/o1", "", 200),
    ];
    for (method, path, query, want) in rows {
        let (result, _) = decide_on(&s, method, path, query);
        assert_eq!(status(&result), *want, "{method} {path}?{query}: {result:?}");
        if let Err(e) = &result {
            for hidden in ["pat-00011", "p3", "nobody", "pat-000"] {
                assert!(
                    !e.message.contains(hidden),
                    "{path}?{query}: the error names {hidden}: {}",
                    e.message
                );
            }
        }
    }
}

fn param_values(fhir: &FhirRequest, name: &str) -> Vec<Vec<String>> {
    fhir.params.get(name).map(|p| p.values.clone()).collect()
}

#[test]
fn patient_references_are_normalised_for_the_upstream() {
    let s = scope();
    let (result, fhir) = decide_on(
        &s,
        "GET",
        "Observation",
        "subject:Patient=pat-0001&patient=https://gw.example/fhir/Patient/p2",
    );
    assert!(result.is_ok());
    assert_eq!(param_values(&fhir, "subject"), vec![vec!["Patient/pat-0001".to_owned()]]);
    assert!(fhir.params.first("subject").unwrap().modifier.is_none());
    assert_eq!(param_values(&fhir, "patient"), vec![vec!["Patient/p2".to_owned()]]);
    // Scoped: no narrowing added.
    assert_eq!(fhir.params.len(), 2);
}

#[test]
fn patient_less_searches_are_narrowed() {
    let s = scope();
    let (result, fhir) = decide_on(&s, "GET", "Observation", "code=1234");
    let plan = result.unwrap();
    assert_eq!(plan.narrowed_to, Some(2));
    assert_eq!(
        param_values(&fhir, "subject"),
        vec![vec!["Patient/p2".to_owned(), "Patient/pat-0001".to_owned()]]
    );
    // A participant parameter does not scope: narrowing is still added.
    let (_, fhir) = decide_on(&s, "GET", "Observation", "performer=Patient/pat-0001");
    assert_eq!(param_values(&fhir, "subject").len(), 1);
    // Coverage narrows by beneficiary, never by subscriber.
    let (_, fhir) = decide_on(&s, "GET", "Coverage", "status=active");
    assert_eq!(param_values(&fhir, "beneficiary").len(), 1);
    // Patient narrows by _id.
    let (_, fhir) = decide_on(&s, "GET", "Patient", "identifier=FW1");
    assert_eq!(param_values(&fhir, "_id"), vec![vec!["p2".to_owned(), "pat-0001".to_owned()]]);
    // Mixed patient/other values in a scope parameter do not scope.
    let (_, fhir) = decide_on(&s, "GET", "Observation", "subject=Patient/pat-0001,Group/g");
    assert_eq!(param_values(&fhir, "subject").len(), 2);
    // Groups: the caller's organization is forced.
    let (_, fhir) = decide_on(&s, "GET", "Group", "managingEntity=Organization/org-a&code=x");
    assert_eq!(param_values(&fhir, "managing-entity"), vec![vec!["Organization/org-a".to_owned()]]);
    assert!(!fhir.params.contains("managingEntity"));
    let (_, fhir) = decide_on(&s, "GET", "Group", "");
    assert_eq!(param_values(&fhir, "managing-entity"), vec![vec!["Organization/org-a".to_owned()]]);
}

#[test]
fn large_and_empty_visible_sets() {
    let many: Vec<String> = (0..101).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let big = scope_with(&refs);
    let (result, _) = decide_on(&big, "GET", "Observation", "code=1");
    let err = result.unwrap_err();
    assert_eq!(err.status.as_u16(), 400);
    assert!(err.message.contains("Group/grp-a/$davinci-data-export"), "{}", err.message);
    // Naming a patient is fine however large the set.
    let (result, _) = decide_on(&big, "GET", "Observation", "patient=m7");
    assert!(result.is_ok());
    let empty = scope_with(&[]);
    let (result, fhir) = decide_on(&empty, "GET", "Observation", "code=1");
    assert_eq!(result.unwrap().local, Some(Local::EmptySearchset));
    assert!(!fhir.params.contains("subject"));
    // Exactly at the limit is narrowed.
    let hundred: Vec<&str> = refs[..100].to_vec();
    let (result, _) = decide_on(&scope_with(&hundred), "GET", "Observation", "code=1");
    assert_eq!(result.unwrap().narrowed_to, Some(100));
}

#[test]
fn elements_keep_the_link_elements() {
    let s = scope();
    let (_, fhir) = decide_on(&s, "GET", "Observation", "patient=pat-0001&_elements=id,code");
    let elements = &fhir.params.first("_elements").unwrap().values;
    assert!(elements.contains(&"subject".to_owned()) && elements.contains(&"performer".to_owned()));
    let (_, fhir) = decide_on(&s, "GET", "ExplanationOfBenefit/e1", "_elements=id");
    assert!(fhir.params.first("_elements").unwrap().values.contains(&"patient".to_owned()));
}
