//! Fuzz the FHIR request parser: it must never panic, and whatever it
//! accepts must satisfy the invariants the rest of the gateway relies on
//! (valid types and ids, no write interaction unless enabled, a canonical
//! query that re-parses to the same parameters, only contract statuses).
#![no_main]

use arbitrary::Arbitrary;
use fhirwall::fhir::search::is_fhir_id;
use fhirwall::fhir::types::is_resource_type;
use fhirwall::fhir::{FhirRequest, Interaction, Operation, ParseOptions, RequestParts};
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;

const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "FOO"];

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    method: u8,
    path: &'a str,
    query: Option<&'a str>,
    accept: Option<&'a str>,
    content_type: Option<&'a str>,
    override_header: bool,
    body: &'a [u8],
    allow_writes: bool,
}

fuzz_target!(|input: Input<'_>| {
    let method_name = METHODS[usize::from(input.method) % METHODS.len()];
    let Ok(method) = Method::from_bytes(method_name.as_bytes()) else { return };
    let mut headers = HeaderMap::new();
    if let Some(value) = input.accept.and_then(|v| HeaderValue::from_str(v).ok()) {
        headers.insert(ACCEPT, value);
    }
    if let Some(value) = input.content_type.and_then(|v| HeaderValue::from_str(v).ok()) {
        headers.insert(CONTENT_TYPE, value);
    }
    if input.override_header {
        headers.insert("x-http-method-override", HeaderValue::from_static("GET"));
    }
    let parts = RequestParts {
        method: &method,
        path: input.path,
        query: input.query,
        headers: &headers,
        body: input.body,
    };
    let options = ParseOptions { allow_writes: input.allow_writes };
    match fhirwall::fhir::request::parse(&parts, options) {
        Ok(request) => check_accepted(&parts, options, &request),
        Err(error) => {
            let status = error.status.as_u16();
            assert!(matches!(status, 400 | 403 | 405 | 406 | 413 | 414 | 415), "unexpected status {status}");
        }
    }
});

fn check_accepted(parts: &RequestParts<'_>, options: ParseOptions, request: &FhirRequest) {
    assert!(!parts.headers.contains_key("x-http-method-override"));
    check_interaction(&request.interaction, options);
    let canonical = request.params.to_query_string();
    assert!(
        canonical.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%&=:,".contains(&b)),
        "non-canonical byte in {canonical:?}"
    );
    // The canonical query re-parses to the same parameters.
    let empty = HeaderMap::new();
    let again = RequestParts { query: Some(&canonical), body: b"", headers: &empty, ..*parts };
    if let Ok(reparsed) = fhirwall::fhir::request::parse(&again, options) {
        assert_eq!(reparsed.params, request.params, "round trip of {canonical:?}");
    }
}

fn check_interaction(interaction: &Interaction, options: ParseOptions) {
    if let Some(resource_type) = interaction.resource_type() {
        assert!(is_resource_type(resource_type), "bad type {resource_type:?}");
    }
    let ids: Vec<&str> = match interaction {
        Interaction::Read { id, .. } | Interaction::HistoryInstance { id, .. } => vec![id],
        Interaction::Vread { id, version, .. } => vec![id, version],
        Interaction::SearchCompartment { patient_id, .. } => vec![patient_id],
        Interaction::Operation(Operation::DavinciDataExport { group } | Operation::GroupExport { group }) => {
            vec![group]
        }
        Interaction::Update { id, .. } | Interaction::Patch { id, .. } | Interaction::Delete { id, .. } => {
            assert!(options.allow_writes, "write without allow_writes");
            vec![id]
        }
        Interaction::Create { .. } | Interaction::Batch => {
            assert!(options.allow_writes, "write without allow_writes");
            vec![]
        }
        _ => vec![],
    };
    for id in ids {
        assert!(is_fhir_id(id), "bad id {id:?}");
    }
}
