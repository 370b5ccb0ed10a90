//! FHIR R4 vocabulary shared by every stage: the REST request model
//! (`request`, `search`), OperationOutcome bodies (`outcome`), shallow Bundle
//! handling that keeps entries as raw JSON (`bundle`), and the list of R4
//! resource types (`types`).

pub mod bundle;
pub mod outcome;
pub mod request;
pub mod search;
pub mod types;

pub use outcome::OperationOutcome;
pub use request::{FhirRequest, Interaction, Operation, ParseOptions, RequestParts};
pub use search::{SearchParam, SearchParams};

/// The media type of every FHIR JSON body fhirwall sends.
pub const FHIR_JSON: &str = "application/fhir+json";

/// `Type/id` of a literal reference (relative, absolute or versioned): a
/// suffix of the reference's path, so no copy is made.
pub fn normalize_reference(reference: &str) -> Option<&str> {
    let end = reference.bytes().position(|b| b == b'?' || b == b'#').unwrap_or(reference.len());
    let reference = &reference[..end];
    let reference = match history_at(reference) {
        Some(at) => &reference[..at],
        None => reference,
    };
    let slash = reference.rfind('/')?;
    let id = &reference[slash + 1..];
    if id.is_empty() {
        return None;
    }
    let type_start = reference[..slash].rfind('/').map_or(0, |at| at + 1);
    let resource_type = &reference[type_start..slash];
    if !resource_type.bytes().next().is_some_and(|b| b.is_ascii_uppercase()) {
        return None;
    }
    Some(&reference[type_start..])
}

/// Where `/_history/` starts in a reference, if it holds one. A search for
/// `/` first: `str::find` with a string pattern builds a searcher per call,
/// and this runs for every reference of every resource that leaves.
pub fn history_at(reference: &str) -> Option<usize> {
    reference.match_indices('/').map(|(at, _)| at).find(|&at| reference[at..].starts_with("/_history/"))
}

#[cfg(test)]
mod history_tests {
    #[test]
    fn finds_the_version_suffix() {
        assert_eq!(super::history_at("Patient/1/_history/2"), Some(9));
        assert_eq!(super::history_at("https://x/fhir/Patient/1"), None);
        assert_eq!(super::history_at("Patient/_history"), None);
    }
}
