//! The FHIR REST request model: every request under the FHIR base is parsed
//! into one `Interaction` with typed search parameters before anything else
//! looks at it. Whatever does not parse is refused; nothing is passed through
//! as an opaque string. Later stages (access, redaction, proxy) work only on
//! this model, and the proxy forwards the model re-serialised, never the raw
//! request line.
//!
//! (Skeleton: the parser is being written; see issue #2.)

use http::{HeaderMap, Method};

use super::search::SearchParams;
use crate::error::GatewayError;

/// What the caller sent, as the server saw it.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a Method,
    /// The raw (still percent-encoded) path *below* the FHIR base, without a
    /// leading slash: `Patient/123/_history/2`, `metadata`, `` for the base.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The request body, for POST `_search` (form) and operations.
    pub body: &'a [u8],
}

/// Operator switches that change what the parser accepts.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseOptions {
    /// Let create/update/patch/delete and batch/transaction through (off for
    /// Provider Access, which is read-only).
    pub allow_writes: bool,
}

/// The FHIR operations fhirwall knows. Anything else is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `POST Patient/$member-match` (HRex).
    MemberMatch,
    /// `POST Group/$provider-member-match` (PDex).
    ProviderMemberMatch,
    /// `POST Group/{id}/$davinci-data-export` (ATR/PDex).
    DavinciDataExport { group: String },
    /// `GET|POST Group/{id}/$export` (Bulk Data).
    GroupExport { group: String },
    /// `$export` at the system level: parsed so it can be refused with 403.
    SystemExport,
}

/// One FHIR REST interaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interaction {
    /// `GET metadata`
    Capabilities,
    /// `GET {type}/{id}`
    Read { resource_type: String, id: String },
    /// `GET {type}/{id}/_history/{vid}`
    Vread { resource_type: String, id: String, version: String },
    /// `GET {type}?...` or `POST {type}/_search`
    SearchType { resource_type: String },
    /// `GET Patient/{id}/{type}?...`: fhirwall serves it as a type search
    /// with the compartment's patient parameter.
    SearchCompartment { patient_id: String, resource_type: String },
    /// `GET {type}/{id}/_history`
    HistoryInstance { resource_type: String, id: String },
    /// An operation fhirwall implements.
    Operation(Operation),
    /// A follow-up page of an earlier search: `GET _page/{token}`.
    Page { token: String },
    /// Writes, only when `ParseOptions::allow_writes`.
    Create { resource_type: String },
    Update { resource_type: String, id: String },
    Patch { resource_type: String, id: String },
    Delete { resource_type: String, id: String },
    /// `POST` at the base with a batch/transaction Bundle.
    Batch,
}

impl Interaction {
    /// The resource type the interaction is about, if any.
    pub fn resource_type(&self) -> Option<&str> {
        match self {
            Interaction::Read { resource_type, .. }
            | Interaction::Vread { resource_type, .. }
            | Interaction::SearchType { resource_type }
            | Interaction::SearchCompartment { resource_type, .. }
            | Interaction::HistoryInstance { resource_type, .. }
            | Interaction::Create { resource_type }
            | Interaction::Update { resource_type, .. }
            | Interaction::Patch { resource_type, .. }
            | Interaction::Delete { resource_type, .. } => Some(resource_type),
            Interaction::Operation(Operation::MemberMatch) => Some("Patient"),
            Interaction::Operation(
                Operation::ProviderMemberMatch
                | Operation::DavinciDataExport { .. }
                | Operation::GroupExport { .. },
            ) => Some("Group"),
            _ => None,
        }
    }

    /// A short stable name for logs, metrics and audit.
    pub fn name(&self) -> &'static str {
        match self {
            Interaction::Capabilities => "capabilities",
            Interaction::Read { .. } => "read",
            Interaction::Vread { .. } => "vread",
            Interaction::SearchType { .. } => "search-type",
            Interaction::SearchCompartment { .. } => "search-compartment",
            Interaction::HistoryInstance { .. } => "history-instance",
            Interaction::Operation(_) => "operation",
            Interaction::Page { .. } => "page",
            Interaction::Create { .. } => "create",
            Interaction::Update { .. } => "update",
            Interaction::Patch { .. } => "patch",
            Interaction::Delete { .. } => "delete",
            Interaction::Batch => "batch",
        }
    }
}

/// A parsed FHIR request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FhirRequest {
    pub interaction: Interaction,
    /// Search (and read) parameters, typed; forwarded re-serialised.
    pub params: SearchParams,
    /// `HEAD` instead of `GET`: same checks, no body in the answer.
    pub head: bool,
}

/// Parse a request below the FHIR base. Errors are caller faults with the
/// status the contract names (400, 403, 405, 406).
pub fn parse(parts: &RequestParts<'_>, options: ParseOptions) -> Result<FhirRequest, GatewayError> {
    let _ = (parts, options);
    Err(GatewayError::not_supported("request parsing is not available in this build"))
}
