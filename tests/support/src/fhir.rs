//! FHIR assertions and Bundle helpers on responses and their JSON bodies.

use crate::http::Resp;

/// Asserts the response is a FHIR OperationOutcome: `Content-Type:
/// application/fhir+json` and a JSON body with `resourceType` OperationOutcome and
/// at least one issue. Returns the parsed body.
#[track_caller]
pub fn assert_operation_outcome(resp: &Resp) -> serde_json::Value {
    let ct = resp.content_type().unwrap_or("");
    assert!(
        ct.to_ascii_lowercase().starts_with("application/fhir+json"),
        "expected Content-Type application/fhir+json, got {ct:?} (status {}); body:\n{}",
        resp.status,
        resp.text_truncated(4000)
    );
    let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_else(|e| {
        panic!(
            "OperationOutcome body is not JSON ({e}); status {}, body:\n{}",
            resp.status,
            resp.text_truncated(4000)
        )
    });
    assert_eq!(
        body["resourceType"],
        "OperationOutcome",
        "expected an OperationOutcome (status {}); body:\n{}",
        resp.status,
        resp.text_truncated(4000)
    );
    assert!(
        body["issue"].as_array().is_some_and(|i| !i.is_empty()),
        "OperationOutcome without issues (status {}): {body}",
        resp.status
    );
    body
}

/// The resources of a Bundle's entries (`entry[].resource`), in order.
pub fn bundle_resources(bundle: &serde_json::Value) -> Vec<serde_json::Value> {
    bundle["entry"].as_array().map(|e| e.iter().map(|e| e["resource"].clone()).collect()).unwrap_or_default()
}

/// `"{resourceType}/{id}"` of each entry resource of a Bundle, in order.
pub fn bundle_refs(bundle: &serde_json::Value) -> Vec<String> {
    bundle_resources(bundle)
        .iter()
        .map(|r| format!("{}/{}", r["resourceType"].as_str().unwrap_or("?"), r["id"].as_str().unwrap_or("?")))
        .collect()
}

/// The URL of a Bundle link by relation (`"next"`, `"self"`, …).
pub fn bundle_link(bundle: &serde_json::Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .and_then(|l| l["url"].as_str())
        .map(str::to_string)
}
