use http::{HeaderMap, HeaderValue, StatusCode};

use super::*;

const TYPES: [&str; 5] = ["Patient", "Coverage", "ExplanationOfBenefit", "Condition", "Observation"];

fn all_types() -> Vec<String> {
    TYPES.iter().map(|t| t.to_string()).collect()
}

/// A token with read on everything but Observation.
fn in_scope(t: &str) -> bool {
    t != "Observation"
}

fn exportable(t: &str) -> bool {
    TYPES.contains(&t)
}

fn patient_link(t: &str, param: &str) -> bool {
    matches!((t, param), (_, "patient" | "subject") | ("Coverage", "beneficiary"))
}

fn kickoff(query: &str, body: &str, prefer: &str) -> Result<ExportRequest, GatewayError> {
    let all = all_types();
    let rules = KickoffRules {
        in_scope: &in_scope,
        exportable: &exportable,
        all_types: &all,
        patient_link: &patient_link,
    };
    let params = SearchParams::parse_query(query, ParamContext::Export)?;
    let mut headers = HeaderMap::new();
    if !prefer.is_empty() {
        headers.insert(PREFER, HeaderValue::from_str(prefer).unwrap());
    }
    read(ExportOperation::Bulk, "g1", &params, body.as_bytes(), Prefer::of(&headers), &rules)
}

fn status(query: &str, body: &str, prefer: &str) -> StatusCode {
    match kickoff(query, body, prefer) {
        Ok(_) => StatusCode::ACCEPTED,
        Err(err) => err.status,
    }
}

#[test]
fn defaults_are_every_exportable_type_in_scope_and_a_snapshot() {
    let request = kickoff("", "", "respond-async").unwrap();
    assert_eq!(request.types, ["Patient", "Coverage", "ExplanationOfBenefit", "Condition"]);
    assert_eq!(request.export_type, ExportType::Snapshot);
    assert!(request.patients.is_empty() && request.type_filters.is_empty() && !request.lenient);
}

#[test]
fn every_refusal_has_its_status() {
    let async_ = "respond-async";
    for (query, body, prefer, want) in [
        ("", "", "", StatusCode::BAD_REQUEST),
        ("_type=Observation", "", async_, StatusCode::FORBIDDEN),
        ("_type=Patient,Observation", "", async_, StatusCode::FORBIDDEN),
        ("_type=Practitioner", "", async_, StatusCode::BAD_REQUEST),
        ("_type=patient", "", async_, StatusCode::BAD_REQUEST),
        ("_since=2024-01-01", "", async_, StatusCode::BAD_REQUEST),
        ("_since=2024-01-01T00:00:00Z&_until=2023-01-01T00:00:00Z", "", async_, StatusCode::BAD_REQUEST),
        ("_outputFormat=text/csv", "", async_, StatusCode::BAD_REQUEST),
        ("exportType=provider-everything", "", async_, StatusCode::BAD_REQUEST),
        ("exportType=provider-delta", "", async_, StatusCode::BAD_REQUEST),
        ("_typeFilter=Condition%3Fpatient%3DPatient/p9", "", async_, StatusCode::BAD_REQUEST),
        ("_typeFilter=Condition%3F_include%3DCondition:subject", "", async_, StatusCode::BAD_REQUEST),
        ("_typeFilter=Condition%3Fsubject.name%3Dx", "", async_, StatusCode::BAD_REQUEST),
        ("_type=Patient&_typeFilter=Condition%3Fcode%3D1", "", async_, StatusCode::BAD_REQUEST),
        ("_typeFilter=Condition", "", async_, StatusCode::BAD_REQUEST),
        ("patient=Group/g2", "", async_, StatusCode::BAD_REQUEST),
        ("", "{\"resourceType\":\"Bundle\"}", async_, StatusCode::BAD_REQUEST),
        ("", "not json", async_, StatusCode::BAD_REQUEST),
        (
            "",
            r#"{"resourceType":"Parameters","parameter":[{"name":"_elements","valueString":"id"}]}"#,
            async_,
            StatusCode::BAD_REQUEST,
        ),
        (
            "",
            r#"{"resourceType":"Parameters","parameter":[{"name":"_type"}]}"#,
            async_,
            StatusCode::BAD_REQUEST,
        ),
        ("_outputFormat=ndjson", "", async_, StatusCode::ACCEPTED),
        ("_outputFormat=application/ndjson", "", async_, StatusCode::ACCEPTED),
        ("_outputFormat=application/fhir%2Bndjson", "", async_, StatusCode::ACCEPTED),
        ("exportType=provider-delta&_since=2024-01-01T00:00:00Z", "", async_, StatusCode::ACCEPTED),
        ("exportType=hl7.fhir.us.davinci-pdex%23provider-download", "", async_, StatusCode::ACCEPTED),
        ("includeAssociatedData=LatestProvenanceResources", "", async_, StatusCode::ACCEPTED),
    ] {
        assert_eq!(status(query, body, prefer), want, "{query} {body} {prefer:?}");
    }
}

#[test]
fn parameters_come_from_the_query_and_the_body_alike() {
    let body = r#"{"resourceType":"Parameters","parameter":[
        {"name":"_type","valueString":"Condition,Coverage"},
        {"name":"_since","valueInstant":"2024-01-01T00:00:00+02:00"},
        {"name":"patient","valueReference":{"reference":"Patient/p2"}},
        {"name":"patient","valueReference":{"reference":"Patient/p1"}},
        {"name":"exportType","valueCode":"provider-delta"},
        {"name":"_typeFilter","valueString":"Condition?clinical-status=active"}]}"#;
    let request = kickoff("_type=Patient&patient=Patient/p1", body, "respond-async").unwrap();
    assert_eq!(request.types, ["Patient", "Condition", "Coverage"]);
    assert_eq!(request.since.as_deref(), Some("2024-01-01T00:00:00+02:00"));
    assert_eq!(request.patients, ["p1", "p2"]);
    assert_eq!(request.export_type, ExportType::Delta);
    assert_eq!(
        request.type_filters,
        [TypeFilter { resource_type: "Condition".into(), query: "clinical-status=active".into() }]
    );
}

#[test]
fn a_type_filter_encoded_twice_is_read_once_decoded() {
    let request = kickoff(
        "_typeFilter=Condition%3Fcode%253Dhttp%253A%252F%252Fsnomed.info%252Fsct%257C1",
        "",
        "respond-async",
    );
    let request = request.unwrap();
    assert_eq!(request.type_filters[0].resource_type, "Condition");
    assert!(request.type_filters[0].query.starts_with("code="), "{:?}", request.type_filters);
}

#[test]
fn lenient_handling_skips_what_it_can_and_says_so() {
    let request = kickoff(
        "_type=Patient,Practitioner&_typeFilter=Patient%3F_sort%3Dname",
        r#"{"resourceType":"Parameters","parameter":[{"name":"_elements","valueString":"id"}]}"#,
        "respond-async, handling=lenient",
    )
    .unwrap();
    assert!(request.lenient);
    assert_eq!(request.types, ["Patient"]);
    assert!(request.type_filters.is_empty());
    assert_eq!(request.skipped.len(), 3, "{:?}", request.skipped);
    // Scopes are never lenient.
    assert_eq!(status("_type=Observation", "", "respond-async; handling=lenient"), StatusCode::FORBIDDEN);
}

#[test]
fn a_checked_request_is_stored_and_read_back_unchanged() {
    let request =
        kickoff("_type=Condition&_since=2024-01-01T00:00:00Z&exportType=provider-delta", "", "respond-async")
            .unwrap();
    let stored = serde_json::to_string(&request).unwrap();
    assert!(stored.contains("\"export_type\":\"delta\""), "{stored}");
    assert_eq!(serde_json::from_str::<ExportRequest>(&stored).unwrap(), request);
}
