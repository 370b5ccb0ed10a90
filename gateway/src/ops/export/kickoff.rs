//! The kick-off of a Group export (`Group/{id}/$export`, Bulk Data 2.0, and
//! `Group/{id}/$davinci-data-export`, PDex/ATR): its parameters, from the
//! query or a `Parameters` body, read and checked into one [`ExportRequest`]
//! before any job exists. Everything a caller can get wrong is refused here
//! with the status the contract names (400; 403 for a type outside the
//! token's scopes); under `Prefer: handling=lenient` what can be skipped
//! safely is skipped and reported instead (the manifest's `error`).

use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::GatewayError;
use crate::fhir::request::shown;
use crate::fhir::search::{ParamContext, SearchParams};

/// RFC 7240 `Prefer` (not among `http`'s named headers).
const PREFER: &str = "prefer";

/// Which operation started the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportOperation {
    /// `Group/{id}/$export` (Bulk Data).
    Bulk,
    /// `Group/{id}/$davinci-data-export` (PDex, ATR).
    Davinci,
}

impl ExportOperation {
    /// The operation's code (audit).
    pub fn code(self) -> &'static str {
        match self {
            ExportOperation::Bulk => "export",
            ExportOperation::Davinci => "davinci-data-export",
        }
    }
}

/// PDex's `exportType`: what the provider asked for. Snapshot and download
/// both export everything visible (within `_since`/`_until`); a delta is
/// what changed since `_since`, which it therefore requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportType {
    Snapshot,
    Download,
    Delta,
}

impl ExportType {
    fn parse(value: &str) -> Option<ExportType> {
        // PDex writes the code with its code system (`hl7.fhir.us.davinci-pdex#…`).
        let code = value.rsplit('#').next().unwrap_or(value);
        match code {
            "provider-snapshot" => Some(ExportType::Snapshot),
            "provider-download" => Some(ExportType::Download),
            "provider-delta" => Some(ExportType::Delta),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            ExportType::Snapshot => "provider-snapshot",
            ExportType::Download => "provider-download",
            ExportType::Delta => "provider-delta",
        }
    }
}

/// One `_typeFilter`: a search on one type, applied as upstream criteria.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeFilter {
    pub resource_type: String,
    /// The criteria, re-serialised from what fhirwall parsed and accepted.
    pub query: String,
}

/// A kick-off, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRequest {
    pub operation: ExportOperation,
    pub group: String,
    /// The types to export, in the order given (or the default set).
    pub types: Vec<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub type_filters: Vec<TypeFilter>,
    /// `patient`: ids of the Group's members to export (empty: all of them;
    /// ids that are not members are ignored when the job runs, as PDex says).
    pub patients: Vec<String>,
    pub export_type: ExportType,
    /// `includeAssociatedData` as given: recorded with the job; fhirwall
    /// adds no associated data beyond the requested types.
    pub include_associated_data: Vec<String>,
    /// `Prefer: handling=lenient`.
    pub lenient: bool,
    /// What was skipped under lenient handling, one line each (the
    /// manifest's `error` file says so).
    pub skipped: Vec<String>,
}

/// What the kick-off checks need to know of the caller and the policy.
pub struct KickoffRules<'a> {
    /// May the token read this type (`system/T.read|rs`, or a wildcard)?
    pub in_scope: &'a dyn Fn(&str) -> bool,
    /// Does fhirwall export this type (in the Patient compartment and
    /// served by the policy table)?
    pub exportable: &'a dyn Fn(&str) -> bool,
    /// Every type fhirwall exports, for the default `_type`.
    pub all_types: &'a [String],
    /// Is `param` a link from `resource_type` to its patient (`patient`,
    /// `subject`, `beneficiary`…)? A `_typeFilter` may not set one: the
    /// job sets it, batch by batch.
    pub patient_link: &'a dyn Fn(&str, &str) -> bool,
}

/// The `Prefer` header's two tokens a kick-off reads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Prefer {
    pub respond_async: bool,
    pub lenient: bool,
}

impl Prefer {
    pub fn of(headers: &HeaderMap) -> Prefer {
        let mut prefer = Prefer::default();
        for token in headers
            .get_all(PREFER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .map(|t| t.trim().to_ascii_lowercase().replace(' ', ""))
        {
            match token.as_str() {
                "respond-async" => prefer.respond_async = true,
                "handling=lenient" => prefer.lenient = true,
                _ => {}
            }
        }
        prefer
    }
}

/// The `_typeFilter`s, checked; under lenient handling one fhirwall cannot
/// apply safely is skipped and said so.
fn add_type_filters(
    request: &mut ExportRequest,
    filters: Vec<String>,
    rules: &KickoffRules<'_>,
) -> Result<(), GatewayError> {
    for filter in filters {
        match type_filter(&filter, &request.types, rules) {
            Ok(filter) => request.type_filters.push(filter),
            Err(err) if request.lenient && err.status == http::StatusCode::BAD_REQUEST => {
                // Only the type: the criteria may carry ids or values, and
                // the error file should not repeat them.
                let resource_type = filter.split('?').next().unwrap_or("");
                request.skipped.push(format!(
                    "a _typeFilter on {} was not applied: {}",
                    shown(resource_type),
                    err.message
                ));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Read a kick-off: `params` from the query (and a GET's form), `body` a
/// POST's `Parameters` (empty for GET).
pub fn read(
    operation: ExportOperation,
    group: &str,
    params: &SearchParams,
    body: &[u8],
    prefer: Prefer,
    rules: &KickoffRules<'_>,
) -> Result<ExportRequest, GatewayError> {
    if !prefer.respond_async {
        return Err(GatewayError::bad_request("an export is asynchronous: send Prefer: respond-async"));
    }
    let mut given: Vec<(String, String)> = Vec::new();
    for param in &params.params {
        for value in &param.values {
            given.push((param.name.clone(), value.clone()));
        }
    }
    given.extend(parameters_body(body)?);
    let mut request = ExportRequest {
        operation,
        group: group.to_owned(),
        types: Vec::new(),
        since: None,
        until: None,
        type_filters: Vec::new(),
        patients: Vec::new(),
        export_type: ExportType::Snapshot,
        include_associated_data: Vec::new(),
        lenient: prefer.lenient,
        skipped: Vec::new(),
    };
    let mut export_type = None;
    let mut filters = Vec::new();
    for (name, value) in given {
        match name.as_str() {
            "_type" => request
                .types
                .extend(value.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned)),
            "_since" => set_once(&mut request.since, "_since", instant(&value, "_since")?)?,
            "_until" => set_once(&mut request.until, "_until", instant(&value, "_until")?)?,
            "_outputFormat" => output_format(&value)?,
            "_typeFilter" => filters.push(value),
            "patient" => request.patients.push(patient_id(&value)?),
            "exportType" => {
                let parsed = ExportType::parse(&value).ok_or_else(|| {
                    GatewayError::bad_request(format!("unknown exportType {}", shown(&value)))
                })?;
                if export_type.replace(parsed).is_some_and(|earlier| earlier != parsed) {
                    return Err(GatewayError::bad_request("exportType is given twice"));
                }
            }
            "includeAssociatedData" => request.include_associated_data.push(value),
            other => {
                let problem = format!("parameter {} is not supported by this export", shown(other));
                if prefer.lenient {
                    request.skipped.push(problem);
                } else {
                    return Err(GatewayError::bad_request(problem));
                }
            }
        }
    }
    request.export_type = export_type.unwrap_or(ExportType::Snapshot);
    if request.export_type == ExportType::Delta && request.since.is_none() {
        return Err(GatewayError::bad_request("exportType provider-delta needs _since"));
    }
    if let (Some(since), Some(until)) = (&request.since, &request.until)
        && crate::clock::instant_unix_ms(until) < crate::clock::instant_unix_ms(since)
    {
        return Err(GatewayError::bad_request("_until is before _since"));
    }
    check_types(&mut request, rules)?;
    add_type_filters(&mut request, filters, rules)?;
    request.patients.sort();
    request.patients.dedup();
    Ok(request)
}

/// `_type`: every named type must be in the token's scopes (403) and
/// exportable (400, or skipped under lenient handling); none named means
/// every exportable type the scopes allow.
fn check_types(request: &mut ExportRequest, rules: &KickoffRules<'_>) -> Result<(), GatewayError> {
    if request.types.is_empty() {
        request.types = rules.all_types.iter().filter(|t| (rules.in_scope)(t)).cloned().collect();
        if request.types.is_empty() {
            return Err(GatewayError::forbidden("the access token grants read on no exportable type"));
        }
        return Ok(());
    }
    let mut kept: Vec<String> = Vec::new();
    for resource_type in std::mem::take(&mut request.types) {
        if !crate::fhir::types::is_resource_type(&resource_type) {
            return Err(GatewayError::bad_request(format!(
                "_type {} is not a resource type",
                shown(&resource_type)
            )));
        }
        if !(rules.in_scope)(&resource_type) {
            return Err(GatewayError::forbidden(format!(
                "the access token does not grant read on {resource_type}"
            )));
        }
        if !(rules.exportable)(&resource_type) {
            let problem =
                format!("{resource_type} is not exported (outside the Patient compartment or the policy)");
            if request.lenient {
                request.skipped.push(problem);
                continue;
            }
            return Err(GatewayError::bad_request(problem));
        }
        if !kept.contains(&resource_type) {
            kept.push(resource_type);
        }
    }
    if kept.is_empty() {
        return Err(GatewayError::bad_request("_type names no type fhirwall exports"));
    }
    request.types = kept;
    Ok(())
}

/// One `_typeFilter` (`Type?criteria`, already percent-decoded once): its
/// type must be exported in this job and its criteria an ordinary search
/// fhirwall accepts, without result controls (`_include`, `_sort`,
/// `_count`, `_elements`, `_summary`…), chains and `_has`, and without a
/// patient link — the job sets those itself.
fn type_filter(text: &str, types: &[String], rules: &KickoffRules<'_>) -> Result<TypeFilter, GatewayError> {
    let (resource_type, query) =
        text.split_once('?').ok_or_else(|| GatewayError::bad_request("a _typeFilter is Type?criteria"))?;
    if !types.iter().any(|t| t == resource_type) {
        return Err(GatewayError::bad_request(format!(
            "_typeFilter on {}, which this export does not include",
            shown(resource_type)
        )));
    }
    // A client may percent-encode the inner query once more than needed.
    let decoded;
    let query = if query.contains('%') && !query.contains('=') {
        decoded = percent_encoding::percent_decode_str(query).decode_utf8_lossy().into_owned();
        decoded.as_str()
    } else {
        query
    };
    let params = SearchParams::parse_query(query, ParamContext::Search)?;
    if params.params.is_empty() {
        return Err(GatewayError::bad_request("a _typeFilter has no criteria"));
    }
    for param in &params.params {
        let name = param.name.as_str();
        let allowed_control = matches!(name, "_lastUpdated" | "_id" | "_tag" | "_profile");
        if (name.starts_with('_') && !allowed_control) || name.contains('.') || name.contains(':') {
            return Err(GatewayError::bad_request(format!("_typeFilter cannot use {}", shown(name))));
        }
        if (rules.patient_link)(resource_type, name) {
            return Err(GatewayError::bad_request(format!(
                "_typeFilter cannot set {} (the export chooses the patients)",
                shown(name)
            )));
        }
    }
    Ok(TypeFilter { resource_type: resource_type.to_owned(), query: params.to_query_string() })
}

/// The `(name, value)` pairs of a `Parameters` body (empty body: none).
fn parameters_body(body: &[u8]) -> Result<Vec<(String, String)>, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let bad = |why: &str| {
        GatewayError::bad_request(format!("the kick-off body must be a Parameters resource: {why}"))
    };
    let value: Value = serde_json::from_slice(body).map_err(|_| bad("not JSON"))?;
    if value.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(bad("another resourceType"));
    }
    let mut out = Vec::new();
    for parameter in value.get("parameter").and_then(Value::as_array).into_iter().flatten() {
        let name =
            parameter.get("name").and_then(Value::as_str).ok_or_else(|| bad("a parameter has no name"))?;
        let value =
            parameter_value(parameter).ok_or_else(|| bad(&format!("{} has no usable value", shown(name))))?;
        out.push((name.to_owned(), value));
    }
    Ok(out)
}

/// A parameter's value as text: a primitive `value[x]`, or a Reference's
/// `reference` (`patient`).
fn parameter_value(parameter: &Value) -> Option<String> {
    const PRIMITIVES: [&str; 7] = [
        "valueString",
        "valueCode",
        "valueInstant",
        "valueDateTime",
        "valueUri",
        "valueCanonical",
        "valueUrl",
    ];
    if let Some(text) = PRIMITIVES.iter().find_map(|key| parameter.get(*key).and_then(Value::as_str)) {
        return Some(text.to_owned());
    }
    parameter.get("valueReference")?.get("reference")?.as_str().map(str::to_owned)
}

fn instant(value: &str, name: &str) -> Result<String, GatewayError> {
    match crate::clock::instant_unix_ms(value) {
        Some(_) => Ok(value.to_owned()),
        None => {
            Err(GatewayError::bad_request(format!("{name} must be a FHIR instant (date, time and zone)")))
        }
    }
}

fn set_once(slot: &mut Option<String>, name: &str, value: String) -> Result<(), GatewayError> {
    if slot.replace(value).is_some() {
        return Err(GatewayError::bad_request(format!("{name} is given twice")));
    }
    Ok(())
}

fn output_format(value: &str) -> Result<(), GatewayError> {
    if crate::fhir::search::is_ndjson(value) {
        Ok(())
    } else {
        Err(GatewayError::bad_request(format!(
            "_outputFormat {} is not offered: only application/fhir+ndjson",
            shown(value)
        )))
    }
}

/// `patient`: `Patient/{id}` (or a bare id).
fn patient_id(value: &str) -> Result<String, GatewayError> {
    let reference = crate::fhir::normalize_reference(value).unwrap_or(value);
    let id = reference.strip_prefix("Patient/").unwrap_or(reference);
    if id.is_empty() || id.contains('/') || !crate::fhir::search::is_fhir_id(id) {
        return Err(GatewayError::bad_request(format!(
            "patient {} is not a Patient reference",
            shown(value)
        )));
    }
    Ok(id.to_owned())
}

#[cfg(test)]
mod tests;
