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
