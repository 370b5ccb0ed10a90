//! `{base}/metadata`: a CapabilityStatement fhirwall writes from the
//! upstream's, saying what fhirwall serves — not what the upstream does.
//!
//! Kept from the upstream: `fhirVersion`, and per resource type that
//! fhirwall serves, the search parameters and `_include`/`_revinclude`
//! values (minus what fhirwall refuses). Written by fhirwall: read-only
//! interactions (read, vread, history-instance, search-type), no
//! system-level interactions but search paging, its own operations under
//! `rest.resource.operation` with their canonical definitions, the SMART
//! security section (added by the caller), `implementation` on fhirwall's
//! base. Everything else of the upstream's (narrative, software, contacts,
//! extensions, messaging, documents, upstream operations and URLs) is left
//! out. An upstream answer that is not a CapabilityStatement is a 502.

use serde_json::{Map, Value, json};

/// fhirwall's own operations: (resource type, name, canonical definition).
pub const OPERATIONS: &[(&str, &str, &str)] = &[
    ("Patient", "member-match", "http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match"),
    (
        "Group",
        "provider-member-match",
        "http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/ProviderMemberMatch",
    ),
    (
        "Group",
        "davinci-data-export",
        "http://hl7.org/fhir/us/davinci-atr/OperationDefinition/davinci-data-export",
    ),
    ("Group", "export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"),
];

/// The Bulk Data IG's server CapabilityStatement (BULK-18: Inferno warns
/// without it).
const BULK_DATA_CAPABILITIES: &str = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data";

/// Search parameters fhirwall never passes (DESIGN.md "Request pipeline" 3).
const REFUSED_PARAMS: &[&str] = &["_filter", "_query", "_has", "_total", "_text", "_content", "_list"];

/// What the statement may declare.
pub struct Served<'a> {
    /// Does fhirwall serve this resource type (the policy table)?
    pub serves: &'a dyn Fn(&str) -> bool,
    /// Is this operation available now (e.g. `$member-match` needs a matcher)?
    pub offers: &'a dyn Fn(&str) -> bool,
    pub public_base: &'a str,
}

/// Build fhirwall's statement from the upstream's JSON. `Err` names why the
/// upstream's answer is unusable.
pub fn build(upstream: &str, served: &Served<'_>) -> Result<String, String> {
    let value: Value = serde_json::from_str(upstream).map_err(|e| e.to_string())?;
    if value.get("resourceType").and_then(Value::as_str) != Some("CapabilityStatement") {
        return Err("not a CapabilityStatement".into());
    }
    let fhir_version = value.get("fhirVersion").and_then(Value::as_str).unwrap_or("4.0.1");
    let mut types: Map<String, Value> = Map::new();
    for rest in value.get("rest").and_then(Value::as_array).into_iter().flatten() {
        if rest.get("mode").and_then(Value::as_str).is_some_and(|m| m != "server") {
            continue;
        }
        for resource in rest.get("resource").and_then(Value::as_array).into_iter().flatten() {
            let Some(resource_type) = resource.get("type").and_then(Value::as_str) else { continue };
            if !served.serves(resource_type) || types.contains_key(resource_type) {
                continue;
            }
            types.insert(resource_type.to_owned(), resource_entry(resource_type, resource, served));
        }
    }
    // fhirwall's operations are declared whether or not the upstream lists the type.
    for (resource_type, name, _) in OPERATIONS {
        if (served.offers)(name) && !types.contains_key(*resource_type) {
            let empty = json!({});
            types.insert((*resource_type).to_owned(), resource_entry(resource_type, &empty, served));
        }
    }
    let statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": crate::clock::today_utc(),
        "kind": "instance",
        "instantiates": [BULK_DATA_CAPABILITIES],
        "implementation": {
            "description": "fhirwall Provider Access gateway",
            "url": served.public_base,
        },
        "fhirVersion": fhir_version,
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "resource": types.into_values().collect::<Vec<_>>(),
        }],
    });
    serde_json::to_string(&statement).map_err(|e| e.to_string())
}

impl Served<'_> {
    fn serves(&self, resource_type: &str) -> bool {
        (self.serves)(resource_type)
    }
}

fn resource_entry(resource_type: &str, upstream: &Value, served: &Served<'_>) -> Value {
    let mut entry = Map::new();
    entry.insert("type".into(), json!(resource_type));
    let interactions: Vec<Value> = ["read", "vread", "history-instance", "search-type"]
        .iter()
        .map(|code| json!({ "code": code }))
        .collect();
    entry.insert("interaction".into(), Value::Array(interactions));
    for list in ["searchInclude", "searchRevInclude"] {
        let values: Vec<Value> = upstream
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|v| plain_token(v))
            .map(|v| json!(v))
            .collect();
        if !values.is_empty() {
            entry.insert(list.into(), Value::Array(values));
        }
    }
    let params: Vec<Value> = upstream
        .get("searchParam")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let name = p.get("name").and_then(Value::as_str)?;
            let kind = p.get("type").and_then(Value::as_str)?;
            if !plain_token(name) || !plain_token(kind) || REFUSED_PARAMS.contains(&name) {
                return None;
            }
            Some(json!({ "name": name, "type": kind }))
        })
        .collect();
    // Exports filter on `_lastUpdated` (`_since`, `_until`), and bulk
    // clients look for it: declared on every type fhirwall serves.
    let mut params = params;
    if !params.iter().any(|p| p["name"] == "_lastUpdated") {
        params.push(json!({ "name": "_lastUpdated", "type": "date" }));
    }
    entry.insert("searchParam".into(), Value::Array(params));
    let operations: Vec<Value> = OPERATIONS
        .iter()
        .filter(|(t, name, _)| *t == resource_type && (served.offers)(name))
        .map(|(_, name, definition)| json!({ "name": name, "definition": definition }))
        .collect();
    if !operations.is_empty() {
        entry.insert("operation".into(), Value::Array(operations));
    }
    Value::Object(entry)
}

/// A short name without spaces or URLs (what a search parameter or an
/// include value looks like); anything else is not copied.
fn plain_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.' | b'*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> (impl Fn(&str) -> bool, impl Fn(&str) -> bool) {
        (|t: &str| matches!(t, "Patient" | "Observation" | "Group"), |op: &str| op != "export")
    }

    #[test]
    fn declares_only_what_fhirwall_serves() {
        let upstream = r#"{"resourceType":"CapabilityStatement","fhirVersion":"4.0.1","software":{"name":"Legacy 1.2"},
          "implementation":{"url":"http://legacy.internal/fhir"},"text":{"div":"<div>secret</div>"},
          "rest":[{"mode":"server","interaction":[{"code":"transaction"},{"code":"batch"},{"code":"history-system"}],
            "operation":[{"name":"purge","definition":"http://legacy.internal/op"}],
            "resource":[
              {"type":"Observation","interaction":[{"code":"create"},{"code":"read"},{"code":"delete"}],
               "searchParam":[{"name":"code","type":"token"},{"name":"_filter","type":"special"},{"name":"x y","type":"string"}],
               "searchInclude":["Observation:patient"],"operation":[{"name":"lastn","definition":"http://x"}]},
              {"type":"PaymentNotice","interaction":[{"code":"read"}]},
              {"type":"Patient","operation":[{"name":"member-match","definition":"http://legacy/member-match"}]}]}]}"#;
        let (serves, offers) = served();
        let out =
            build(upstream, &Served { serves: &serves, offers: &offers, public_base: "https://gw/fhir" })
                .unwrap();
        for gone in [
            "legacy",
            "Legacy",
            "secret",
            "transaction",
            "batch",
            "create",
            "delete",
            "purge",
            "lastn",
            "_filter",
            "PaymentNotice",
            "x y",
        ] {
            assert!(!out.contains(gone), "{gone} in {out}");
        }
        let cs: Value = serde_json::from_str(&out).unwrap();
        let resources = cs["rest"][0]["resource"].as_array().unwrap();
        let types: Vec<&str> = resources.iter().map(|r| r["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["Group", "Observation", "Patient"]);
        let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
        assert_eq!(patient["operation"][0]["definition"], OPERATIONS[0].2);
        let group = resources.iter().find(|r| r["type"] == "Group").unwrap();
        let ops: Vec<&str> =
            group["operation"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
        assert_eq!(ops, ["provider-member-match", "davinci-data-export"]);
        assert_eq!(cs["implementation"]["url"], "https://gw/fhir");
        let observation = resources.iter().find(|r| r["type"] == "Observation").unwrap();
        let params: Vec<&str> = observation["searchParam"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(params, ["code", "_lastUpdated"], "exports filter on _lastUpdated: declared");
    }

    #[test]
    fn anything_else_is_refused() {
        let (serves, offers) = served();
        let served = Served { serves: &serves, offers: &offers, public_base: "https://gw/fhir" };
        assert!(build(r#"{"resourceType":"OperationOutcome"}"#, &served).is_err());
        assert!(build("not json", &served).is_err());
    }
}
