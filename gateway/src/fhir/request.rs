//! The FHIR REST request model: every request under the FHIR base is parsed
//! into one `Interaction` with typed search parameters before anything else
//! looks at it. Whatever does not parse is refused; nothing is passed through
//! as an opaque string. Later stages (access, redaction, proxy) work only on
//! this model, and the proxy forwards the model re-serialised, never the raw
//! request line.
//!
//! Order of checks (the first failure answers):
//! 1. method-override headers (400) and the method itself (405);
//! 2. the path: length (414), `;`, backslashes, empty segments, strict
//!    percent-decoding, encoded slashes, dot segments (400);
//! 3. routing to an interaction: unknown types, bad ids, unsupported
//!    interactions and operations (400), writes (403);
//! 4. the body: none for GET/HEAD/DELETE, a form for POST `_search`, JSON
//!    otherwise (XML 406, anything else 415);
//! 5. the parameters ([`SearchParams::parse_sources`] with the interaction's
//!    [`ParamContext`]), including `_format` (XML 406);
//! 6. `Accept` must admit JSON (406).

use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, Method};

use super::search::{MediaKind, ParamContext, SearchParams, is_fhir_id, media_kind, percent_decode_strict};
use super::types::is_resource_type;
use crate::error::{GatewayError, Kind};

/// Longest `_page/{token}` token.
pub const MAX_PAGE_TOKEN_BYTES: usize = 6144;
/// Longest raw path below the base accepted (longer: 414). Room for the
/// longest page token; every other route is bounded far below by the id
/// grammar (64 bytes, at most three times that percent-encoded).
pub const MAX_PATH_BYTES: usize = MAX_PAGE_TOKEN_BYTES + 1024;

/// Headers that ask a server to treat a request as another method. Some
/// servers honour them, so a GET the gateway checked could run as a DELETE
/// (or a POST search as a GET that skips body parsing): refused whatever the value.
const METHOD_OVERRIDE_HEADERS: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

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
    /// `Patient/$export` and `Patient/{id}/$export`: refused with 403 too
    /// (Provider Access exports a Group).
    PatientExport,
}

/// One FHIR REST interaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interaction {
    /// `GET metadata`
    Capabilities,
    /// `GET {type}/{id}`
    Read {
        resource_type: String,
        id: String,
    },
    /// `GET {type}/{id}/_history/{vid}`
    Vread {
        resource_type: String,
        id: String,
        version: String,
    },
    /// `GET {type}?...` or `POST {type}/_search`
    SearchType {
        resource_type: String,
    },
    /// `GET Patient/{id}/{type}?...`: fhirwall serves it as a type search
    /// with the compartment's patient parameter.
    SearchCompartment {
        patient_id: String,
        resource_type: String,
    },
    /// `GET {type}/{id}/_history`
    HistoryInstance {
        resource_type: String,
        id: String,
    },
    /// An operation fhirwall implements.
    Operation(Operation),
    /// A follow-up page of an earlier search: `GET _page/{token}`.
    Page {
        token: String,
    },
    /// Writes, only when `ParseOptions::allow_writes`.
    Create {
        resource_type: String,
    },
    Update {
        resource_type: String,
        id: String,
    },
    Patch {
        resource_type: String,
        id: String,
    },
    Delete {
        resource_type: String,
        id: String,
    },
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

    /// Answered through the response chain (reads, history, searches,
    /// pages); operations and writes are answered elsewhere.
    pub fn is_chained(&self) -> bool {
        matches!(
            self,
            Interaction::Capabilities
                | Interaction::Read { .. }
                | Interaction::Vread { .. }
                | Interaction::HistoryInstance { .. }
                | Interaction::SearchType { .. }
                | Interaction::SearchCompartment { .. }
                | Interaction::Page { .. }
        )
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
/// status the contract names (400, 403, 405, 406; 413/414/415 for limits and
/// body media types).
pub fn parse(parts: &RequestParts<'_>, options: ParseOptions) -> Result<FhirRequest, GatewayError> {
    refuse_method_override(parts.headers)?;
    let verb = Verb::of(parts.method)?;
    let segments = split_path(parts.path)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let route = match verb {
        Verb::Get { head } => route_get(&segments, head)?,
        Verb::Post => route_post(&segments, parts.headers, options)?,
        Verb::Put | Verb::Patch | Verb::Delete => route_write(verb, &segments, options)?,
    };
    let form = check_body(route.body, parts)?;
    let mut sources = vec![parts.query.unwrap_or("")];
    sources.extend(form);
    let params = SearchParams::parse_sources(&sources, route.context)?;
    check_accept(parts.headers)?;
    Ok(FhirRequest { interaction: route.interaction, params, head: verb == Verb::Get { head: true } })
}

/// The methods fhirwall routes; HEAD is GET without a body in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Get { head: bool },
    Post,
    Put,
    Patch,
    Delete,
}

impl Verb {
    /// Anything but GET, HEAD, POST, PUT, PATCH and DELETE is 405.
    fn of(method: &Method) -> Result<Verb, GatewayError> {
        match *method {
            Method::GET => Ok(Verb::Get { head: false }),
            Method::HEAD => Ok(Verb::Get { head: true }),
            Method::POST => Ok(Verb::Post),
            Method::PUT => Ok(Verb::Put),
            Method::PATCH => Ok(Verb::Patch),
            Method::DELETE => Ok(Verb::Delete),
            _ => Err(GatewayError::method_not_allowed("method not allowed")),
        }
    }
}

/// What the body of a routed request may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyRule {
    /// GET, HEAD, DELETE: a body would be ignored by us and maybe not upstream.
    Empty,
    /// POST `_search`: `application/x-www-form-urlencoded` parameters (or none).
    Form,
    /// Operations and writes: FHIR JSON.
    Json,
    /// PATCH: FHIR JSON (FHIRPath Patch Parameters) or JSON Patch.
    Patch,
}

/// The routing result: interaction, parameter allow-list, body rule.
struct Route {
    interaction: Interaction,
    context: ParamContext,
    body: BodyRule,
}

impl Route {
    fn new(interaction: Interaction, context: ParamContext, body: BodyRule) -> Self {
        Route { interaction, context, body }
    }
}

/// At which level an operation was invoked.
#[derive(Debug, Clone, Copy)]
enum Level<'a> {
    System,
    Type(&'a str),
    Instance(&'a str, &'a str),
}

fn refuse_method_override(headers: &HeaderMap) -> Result<(), GatewayError> {
    if METHOD_OVERRIDE_HEADERS.iter().any(|name| headers.contains_key(*name)) {
        return Err(GatewayError::not_supported("method override headers are not supported"));
    }
    Ok(())
}

/// Split the raw path into decoded segments, refusing every form that lets
/// two components disagree on which resource is meant: `;` parameters,
/// backslashes, empty segments (`//`, trailing `/`), malformed escapes,
/// encoded `/` or `\`, and dot segments in any spelling.
fn split_path(raw: &str) -> Result<Vec<String>, GatewayError> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(GatewayError::of(Kind::UriTooLong, "path too long"));
    }
    if raw.contains(';') {
        return Err(GatewayError::bad_request("path parameters (;) are not supported"));
    }
    if raw.contains('\\') {
        return Err(GatewayError::bad_request("backslashes are not allowed in the path"));
    }
    raw.split('/').map(decode_segment).collect()
}

fn decode_segment(raw: &str) -> Result<String, GatewayError> {
    if raw.is_empty() {
        return Err(GatewayError::bad_request("empty path segment (// or trailing /)"));
    }
    let segment = percent_decode_strict(raw, false)?;
    if segment.contains(['/', '\\']) {
        return Err(GatewayError::bad_request("encoded slashes are not allowed in the path"));
    }
    if segment.bytes().all(|b| b == b'.') {
        return Err(GatewayError::bad_request("dot segments are not allowed in the path"));
    }
    Ok(segment)
}

/// A segment naming an R4 resource type (exact, case-sensitive).
fn resource_type(segment: &str) -> Result<&str, GatewayError> {
    if is_resource_type(segment) {
        Ok(segment)
    } else if segment.eq_ignore_ascii_case("graphql") {
        Err(GatewayError::not_supported("GraphQL is not supported"))
    } else {
        Err(GatewayError::bad_request("unknown resource type"))
    }
}

/// A segment holding a FHIR logical id or version id.
fn resource_id(segment: &str) -> Result<&str, GatewayError> {
    if is_fhir_id(segment) { Ok(segment) } else { Err(GatewayError::bad_request("invalid resource id")) }
}

/// `_page/{token}`: `[A-Za-z0-9_-]{1,6144}` (sealed upstream positions are
/// all one length, ~4.1 KB: see `proxy::paging`).
fn page_token(segment: &str) -> Result<&str, GatewayError> {
    let valid = (1..=MAX_PAGE_TOKEN_BYTES).contains(&segment.len())
        && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid { Ok(segment) } else { Err(GatewayError::bad_request("invalid page token")) }
}

fn is_operation(segment: &str) -> bool {
    segment.starts_with('$')
}

/// GET and HEAD.
fn route_get(segments: &[&str], head: bool) -> Result<Route, GatewayError> {
    let verb = Verb::Get { head };
    let route = match segments {
        [] => {
            return Err(GatewayError::not_supported(
                "system-level search is not supported; search one resource type",
            ));
        }
        ["metadata"] => Route::new(Interaction::Capabilities, ParamContext::Capabilities, BodyRule::Empty),
        ["_history"] => return Err(GatewayError::not_supported("system-level history is not supported")),
        ["_page", token] => {
            let token = page_token(token)?.to_owned();
            Route::new(Interaction::Page { token }, ParamContext::Page, BodyRule::Empty)
        }
        [op] if is_operation(op) => operation(Level::System, op, verb)?,
        [t] => {
            let resource_type = resource_type(t)?.to_owned();
            Route::new(Interaction::SearchType { resource_type }, ParamContext::Search, BodyRule::Empty)
        }
        [t, "_history"] => {
            resource_type(t)?;
            return Err(GatewayError::not_supported("type-level history is not supported"));
        }
        [t, "_search"] => {
            resource_type(t)?;
            return Err(GatewayError::bad_request("_search requires POST; use GET {type}?params"));
        }
        [t, op] if is_operation(op) => operation(Level::Type(resource_type(t)?), op, verb)?,
        [t, id] => {
            let (resource_type, id) = instance(t, id)?;
            Route::new(Interaction::Read { resource_type, id }, ParamContext::Read, BodyRule::Empty)
        }
        [t, id, "_history"] => {
            let (resource_type, id) = instance(t, id)?;
            Route::new(
                Interaction::HistoryInstance { resource_type, id },
                ParamContext::History,
                BodyRule::Empty,
            )
        }
        [t, id, op] if is_operation(op) => {
            operation(Level::Instance(resource_type(t)?, resource_id(id)?), op, verb)?
        }
        [t, id, target] => compartment(t, id, target, BodyRule::Empty)?,
        [t, id, "_history", version] => {
            let (resource_type, id) = instance(t, id)?;
            let version = resource_id(version)?.to_owned();
            Route::new(Interaction::Vread { resource_type, id, version }, ParamContext::Read, BodyRule::Empty)
        }
        _ => return Err(GatewayError::bad_request("unsupported FHIR request path")),
    };
    Ok(route)
}

/// POST: `_search`, operations, and (when allowed) create and batch/transaction.
fn route_post(segments: &[&str], headers: &HeaderMap, options: ParseOptions) -> Result<Route, GatewayError> {
    let route = match segments {
        [] => {
            require_writes(options, "batch and transaction")?;
            Route::new(Interaction::Batch, ParamContext::Write, BodyRule::Json)
        }
        ["_search"] => return Err(GatewayError::not_supported("system-level search is not supported")),
        [op] if is_operation(op) => operation(Level::System, op, Verb::Post)?,
        [t] => {
            let resource_type = resource_type(t)?.to_owned();
            if headers.contains_key("if-none-exist") {
                return Err(GatewayError::forbidden("conditional create is not supported"));
            }
            require_writes(options, "create")?;
            Route::new(Interaction::Create { resource_type }, ParamContext::Write, BodyRule::Json)
        }
        [t, "_search"] => {
            let resource_type = resource_type(t)?.to_owned();
            Route::new(Interaction::SearchType { resource_type }, ParamContext::Search, BodyRule::Form)
        }
        [t, op] if is_operation(op) => operation(Level::Type(resource_type(t)?), op, Verb::Post)?,
        [t, id, op] if is_operation(op) => {
            operation(Level::Instance(resource_type(t)?, resource_id(id)?), op, Verb::Post)?
        }
        [t, id, target, "_search"] => compartment(t, id, target, BodyRule::Form)?,
        _ => return Err(GatewayError::bad_request("unsupported POST request")),
    };
    Ok(route)
}

/// PUT, PATCH, DELETE: 403 unless writes are enabled; conditional forms
/// (`{type}?criteria`) are 403 always, because their target is chosen by a
/// search the access layer cannot bound.
fn route_write(verb: Verb, segments: &[&str], options: ParseOptions) -> Result<Route, GatewayError> {
    match segments {
        [t] => {
            resource_type(t)?;
            Err(GatewayError::forbidden("conditional update, patch and delete are not supported"))
        }
        [t, id] => {
            let (resource_type, id) = instance(t, id)?;
            require_writes(options, "write interactions")?;
            let route = match verb {
                Verb::Put => {
                    Route::new(Interaction::Update { resource_type, id }, ParamContext::Write, BodyRule::Json)
                }
                Verb::Patch => {
                    Route::new(Interaction::Patch { resource_type, id }, ParamContext::Write, BodyRule::Patch)
                }
                _ => Route::new(
                    Interaction::Delete { resource_type, id },
                    ParamContext::Write,
                    BodyRule::Empty,
                ),
            };
            Ok(route)
        }
        _ => {
            require_writes(options, "write interactions")?;
            Err(GatewayError::bad_request("unsupported write request path"))
        }
    }
}

fn require_writes(options: ParseOptions, what: &str) -> Result<(), GatewayError> {
    if options.allow_writes {
        Ok(())
    } else {
        Err(GatewayError::forbidden(format!("{what} are not allowed: this API is read-only")))
    }
}

/// `{type}/{id}` with both parts checked.
fn instance(t: &str, id: &str) -> Result<(String, String), GatewayError> {
    Ok((resource_type(t)?.to_owned(), resource_id(id)?.to_owned()))
}

/// `Patient/{id}/{type}`: only the Patient compartment, one named type.
fn compartment(t: &str, id: &str, target: &str, body: BodyRule) -> Result<Route, GatewayError> {
    let compartment = resource_type(t)?;
    if compartment != "Patient" {
        return Err(GatewayError::not_supported("only the Patient compartment can be searched"));
    }
    let patient_id = resource_id(id)?.to_owned();
    if target == "*" {
        return Err(GatewayError::not_supported("compartment search across all types is not supported"));
    }
    let resource_type = resource_type(target)?.to_owned();
    Ok(Route::new(Interaction::SearchCompartment { patient_id, resource_type }, ParamContext::Search, body))
}

/// The operations fhirwall implements, each at exactly one level with its
/// methods; everything else (`$everything`, `$graphql`, `$meta`, `$validate`,
/// an unknown name, a known name at the wrong level or with the wrong
/// method, any operation by HEAD) is refused. HEAD never starts an export:
/// HEAD must be safe, and a kick-off creates a job.
fn operation(level: Level<'_>, segment: &str, verb: Verb) -> Result<Route, GatewayError> {
    let name = segment.strip_prefix('$').unwrap_or(segment);
    let get_or_post = matches!(verb, Verb::Get { head: false } | Verb::Post);
    let body = if verb == Verb::Post { BodyRule::Json } else { BodyRule::Empty };
    let (operation, context) = match (level, name) {
        (Level::System, "export") if get_or_post => (Operation::SystemExport, ParamContext::Export),
        (Level::Type("Patient") | Level::Instance("Patient", _), "export") if get_or_post => {
            (Operation::PatientExport, ParamContext::Export)
        }
        (Level::Type("Patient"), "member-match") if verb == Verb::Post => {
            (Operation::MemberMatch, ParamContext::Operation)
        }
        (Level::Type("Group"), "provider-member-match") if verb == Verb::Post => {
            (Operation::ProviderMemberMatch, ParamContext::Operation)
        }
        (Level::Instance("Group", id), "davinci-data-export") if verb == Verb::Post => {
            (Operation::DavinciDataExport { group: id.to_owned() }, ParamContext::Export)
        }
        (Level::Instance("Group", id), "export") if get_or_post => {
            (Operation::GroupExport { group: id.to_owned() }, ParamContext::Export)
        }
        _ => {
            return Err(GatewayError::not_supported(format!(
                "operation ${} is not supported here",
                shown(name)
            )));
        }
    };
    Ok(Route::new(Interaction::Operation(operation), context, body))
}

/// Caller text safe to repeat in an error message: short and printable ASCII.
pub(crate) fn shown(text: &str) -> String {
    text.chars().take(64).map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect()
}

/// Check the body against the route's rule; returns the form text of a
/// POST `_search`, to be parsed after the query.
fn check_body<'a>(rule: BodyRule, parts: &RequestParts<'a>) -> Result<Option<&'a str>, GatewayError> {
    let content_type = content_type(parts.headers)?;
    if rule == BodyRule::Empty {
        if !parts.body.is_empty() {
            return Err(GatewayError::bad_request("this request takes no body"));
        }
        return Ok(None);
    }
    let Some(content_type) = content_type else {
        if parts.body.is_empty() {
            return Ok(None);
        }
        return Err(unsupported_media_type("a request body needs a Content-Type"));
    };
    if media_kind(&content_type) == MediaKind::Xml {
        return Err(GatewayError::not_acceptable("XML is not supported; use JSON"));
    }
    let accepted = match rule {
        BodyRule::Form => content_type == "application/x-www-form-urlencoded",
        BodyRule::Json => media_kind(&content_type) == MediaKind::Json,
        BodyRule::Patch => {
            media_kind(&content_type) == MediaKind::Json || content_type == "application/json-patch+json"
        }
        BodyRule::Empty => false,
    };
    if !accepted {
        return Err(unsupported_media_type("unsupported request Content-Type"));
    }
    if rule != BodyRule::Form {
        return Ok(None);
    }
    if parts.body.len() > super::search::MAX_RAW_QUERY_BYTES {
        return Err(GatewayError::of(Kind::PayloadTooLarge, "the search form is too large"));
    }
    std::str::from_utf8(parts.body)
        .map(Some)
        .map_err(|_| GatewayError::bad_request("the search form is not valid UTF-8"))
}

fn unsupported_media_type(message: &str) -> GatewayError {
    GatewayError::of(Kind::UnsupportedMediaType, message)
}

/// The lower-cased media type of the body without parameters. More than one
/// `Content-Type` header is ambiguous and refused.
fn content_type(headers: &HeaderMap) -> Result<Option<String>, GatewayError> {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GatewayError::bad_request("more than one Content-Type header"));
    }
    let value = value.to_str().map_err(|_| GatewayError::bad_request("invalid Content-Type header"))?;
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    Ok(Some(essence))
}

/// `Accept` must admit a JSON type (or `*/*`, `application/*`) with q > 0;
/// no `Accept` at all is fine. fhirwall answers only JSON, so a caller that
/// can take only XML (or HTML, ...) gets 406 rather than a body it refused.
fn check_accept(headers: &HeaderMap) -> Result<(), GatewayError> {
    let mut any_range = false;
    for value in headers.get_all(ACCEPT) {
        let value = value.to_str().map_err(|_| GatewayError::bad_request("invalid Accept header"))?;
        for range in value.split(',') {
            let mut pieces = range.split(';');
            let media_range = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
            if media_range.is_empty() {
                continue;
            }
            any_range = true;
            let refused = pieces.any(is_zero_quality);
            if !refused && admits_json(&media_range) {
                return Ok(());
            }
        }
    }
    if any_range { Err(GatewayError::not_acceptable("only JSON responses are available")) } else { Ok(()) }
}

fn admits_json(media_range: &str) -> bool {
    matches!(media_range, "*/*" | "application/*") || media_kind(media_range) == MediaKind::Json
}

/// An Accept parameter `q=0` (`q=0.0`, `q=0.000`): "not acceptable".
fn is_zero_quality(parameter: &str) -> bool {
    let Some((name, value)) = parameter.split_once('=') else {
        return false;
    };
    name.trim().eq_ignore_ascii_case("q") && value.trim().parse::<f32>().is_ok_and(|q| q == 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::IssueCode;
    use crate::fhir::search::{Modifier, SearchParam};
    use http::{HeaderName, HeaderValue};
    use proptest::prelude::*;

    const READ_ONLY: ParseOptions = ParseOptions { allow_writes: false };
    const WRITABLE: ParseOptions = ParseOptions { allow_writes: true };

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("test header name");
            map.append(name, HeaderValue::from_str(value).expect("test header value"));
        }
        map
    }

    fn parse_full(
        method: &str,
        path: &str,
        query: Option<&str>,
        header_pairs: &[(&str, &str)],
        body: &[u8],
        options: ParseOptions,
    ) -> Result<FhirRequest, GatewayError> {
        let method = Method::from_bytes(method.as_bytes()).expect("test method");
        let headers = headers(header_pairs);
        parse(&RequestParts { method: &method, path, query, headers: &headers, body }, options)
    }

    fn run(method: &str, path: &str, query: Option<&str>) -> Result<FhirRequest, GatewayError> {
        parse_full(method, path, query, &[], b"", READ_ONLY)
    }

    fn status_of(result: &Result<FhirRequest, GatewayError>) -> u16 {
        match result {
            Ok(_) => 200,
            Err(error) => error.status.as_u16(),
        }
    }

    fn s(text: &str) -> String {
        text.to_string()
    }

    fn read(t: &str, id: &str) -> Interaction {
        Interaction::Read { resource_type: s(t), id: s(id) }
    }

    fn search(t: &str) -> Interaction {
        Interaction::SearchType { resource_type: s(t) }
    }

    fn op(operation: Operation) -> Interaction {
        Interaction::Operation(operation)
    }

    /// Expected outcome of a row: the interaction, or the refusal status.
    enum Expect {
        Is(Interaction),
        Status(u16),
    }
    use Expect::{Is, Status};

    fn check_rows(rows: Vec<(&str, &str, Option<&str>, Expect)>, options: ParseOptions) {
        for (method, path, query, expected) in rows {
            let result = parse_full(method, path, query, &[], b"", options);
            match expected {
                Is(interaction) => match result {
                    Ok(request) => {
                        assert_eq!(request.interaction, interaction, "{method} {path} ? {query:?}")
                    }
                    Err(error) => {
                        panic!("{method} {path} ? {query:?}: expected {interaction:?}, got {error}")
                    }
                },
                Status(code) => {
                    assert_eq!(status_of(&result), code, "{method} {path} ? {query:?} gave {result:?}")
                }
            }
        }
    }

    #[test]
    fn routing_table() {
        let rows = vec![
            ("GET", "metadata", None, Is(Interaction::Capabilities)),
            ("HEAD", "metadata", None, Is(Interaction::Capabilities)),
            ("GET", "Patient/123", None, Is(read("Patient", "123"))),
            ("GET", "Patient/A-1.b", None, Is(read("Patient", "A-1.b"))),
            ("HEAD", "Observation/o1", None, Is(read("Observation", "o1"))),
            ("GET", "Patient/12", None, Is(read("Patient", "12"))),
            ("GET", "Patient/123", None, Is(read("Patient", "123"))),
            (
                "GET",
                "Patient/123/_history/2",
                None,
                Is(Interaction::Vread { resource_type: s("Patient"), id: s("123"), version: s("2") }),
            ),
            (
                "GET",
                "Patient/123/_history",
                None,
                Is(Interaction::HistoryInstance { resource_type: s("Patient"), id: s("123") }),
            ),
            ("GET", "Observation", Some("patient=123"), Is(search("Observation"))),
            ("HEAD", "Observation", Some("patient=123"), Is(search("Observation"))),
            (
                "GET",
                "Patient/123/Observation",
                Some("code=1"),
                Is(Interaction::SearchCompartment { patient_id: s("123"), resource_type: s("Observation") }),
            ),
            ("GET", "_page/abc_DEF-123", None, Is(Interaction::Page { token: s("abc_DEF-123") })),
            ("POST", "Patient/$member-match", None, Is(op(Operation::MemberMatch))),
            ("POST", "Patient/%24member-match", None, Is(op(Operation::MemberMatch))),
            ("POST", "Group/$provider-member-match", None, Is(op(Operation::ProviderMemberMatch))),
            (
                "POST",
                "Group/g1/$davinci-data-export",
                None,
                Is(op(Operation::DavinciDataExport { group: s("g1") })),
            ),
            (
                "GET",
                "Group/g1/$export",
                Some("_type=Patient"),
                Is(op(Operation::GroupExport { group: s("g1") })),
            ),
            ("POST", "Group/g1/$export", None, Is(op(Operation::GroupExport { group: s("g1") }))),
            ("GET", "$export", None, Is(op(Operation::SystemExport))),
            ("GET", "%24export", None, Is(op(Operation::SystemExport))),
            ("POST", "$export", None, Is(op(Operation::SystemExport))),
            ("POST", "Observation/_search", None, Is(search("Observation"))),
            // refused operations
            ("GET", "Patient/123/$everything", None, Status(400)),
            ("GET", "Patient/123/%24everything", None, Status(400)),
            ("GET", "Patient/$everything", None, Status(400)),
            ("GET", "$graphql", None, Status(400)),
            ("POST", "$graphql", None, Status(400)),
            ("GET", "graphql", Some("query=x"), Status(400)),
            ("GET", "Patient/123/$graphql", None, Status(400)),
            ("GET", "Patient/123/$meta", None, Status(400)),
            ("POST", "Patient/$validate", None, Status(400)),
            ("POST", "Patient/$unknown", None, Status(400)),
            ("GET", "Patient/$member-match", None, Status(400)),
            ("POST", "Group/g1/$member-match", None, Status(400)),
            ("POST", "Group/$export", None, Status(400)),
            ("POST", "Patient/$export", None, Is(op(Operation::PatientExport))),
            ("GET", "Patient/p1/$export", None, Is(op(Operation::PatientExport))),
            ("GET", "Group/g1/$davinci-data-export", None, Status(400)),
            ("POST", "Patient/p1/$davinci-data-export", None, Status(400)),
            ("HEAD", "Group/g1/$export", None, Status(400)),
            ("HEAD", "$export", None, Status(400)),
            ("POST", "Group/$provider-member-match/x", None, Status(400)),
            ("GET", "Group/..%2F/$export", None, Status(400)),
            // refused interactions
            ("GET", "", None, Status(400)),
            ("GET", "", Some("_type=Patient"), Status(400)),
            ("POST", "_search", None, Status(400)),
            ("GET", "_history", None, Status(400)),
            ("GET", "Patient/_history", None, Status(400)),
            ("GET", "Observation/_search", Some("code=1"), Status(400)),
            ("GET", "Observation/123/Condition", None, Status(400)),
            ("GET", "Patient/123/*", None, Status(400)),
            ("GET", "Patient/123/observation", None, Status(400)),
            ("GET", "Patient/123/Observation/1", None, Status(400)),
            ("GET", "Patient/123/_history/2/x", None, Status(400)),
            ("POST", "Patient/123", None, Status(400)),
            ("POST", "metadata", None, Status(400)),
            ("GET", "_page/", None, Status(400)),
            ("GET", "_page/a.b", None, Status(400)),
            ("GET", "_page/a%2Bb", None, Status(400)),
            ("GET", "_page/a/b", None, Status(400)),
            ("POST", "_page/abc", None, Status(400)),
            // path tricks (pitfalls 4, 7, 18)
            ("GET", "Patient/../Observation", None, Status(400)),
            ("GET", "Patient/./123", None, Status(400)),
            ("GET", "Patient/%2e%2e/Observation", None, Status(400)),
            ("GET", "Patient/%2E%2e/Observation", None, Status(400)),
            ("GET", "Patient/.%2E", None, Status(400)),
            ("GET", "Patient/...", None, Status(400)),
            ("GET", "Patient%2F123", None, Status(400)),
            ("GET", "Patient%2f123", None, Status(400)),
            ("GET", "Patient/123%2f..", None, Status(400)),
            ("GET", "Patient/123%5C..", None, Status(400)),
            ("GET", "Patient/123%5c", None, Status(400)),
            ("GET", "Patient\\123", None, Status(400)),
            ("GET", "Patient/123;jsessionid=x", None, Status(400)),
            ("GET", "Patient;x/123", None, Status(400)),
            ("GET", "Patient/123%3Bx", None, Status(400)),
            ("GET", "Patient/123/", None, Status(400)),
            ("GET", "Patient//123", None, Status(400)),
            ("GET", "/Patient/123", None, Status(400)),
            ("GET", "Patient/", None, Status(400)),
            ("GET", "Patient/12%3", None, Status(400)),
            ("GET", "Patient/12%zz", None, Status(400)),
            ("GET", "Patient/%FF", None, Status(400)),
            ("GET", "Patient/%00", None, Status(400)),
            ("GET", "Patient/12 3", None, Status(400)),
            ("GET", "Patient/12+3", None, Status(400)),
            ("GET", "Patient/a_b", None, Status(400)),
            (
                "GET",
                "Patient/12345678901234567890123456789012345678901234567890123456789012345",
                None,
                Status(400),
            ),
            (
                "GET",
                "Patient/1234567890123456789012345678901234567890123456789012345678901234",
                None,
                Status(200),
            ),
            // case sensitivity and unknown types
            ("GET", "patient/1", None, Status(400)),
            ("GET", "PATIENT/1", None, Status(400)),
            ("GET", "Metadata", None, Status(400)),
            ("GET", "Foo/1", None, Status(400)),
            ("GET", "Foo", None, Status(400)),
            // an encoded-but-legal character decodes to the same id
            ("GET", "Patient/%31%32", None, Is(read("Patient", "12"))),
            // methods
            ("OPTIONS", "Patient/1", None, Status(405)),
            ("TRACE", "Patient/1", None, Status(405)),
            ("CONNECT", "Patient/1", None, Status(405)),
            ("PROPFIND", "Patient/1", None, Status(405)),
            ("FOO", "metadata", None, Status(405)),
            // writes refused (read-only deployment)
            ("POST", "", None, Status(403)),
            ("POST", "Patient", None, Status(403)),
            ("PUT", "Patient/1", None, Status(403)),
            ("PATCH", "Patient/1", None, Status(403)),
            ("DELETE", "Patient/1", None, Status(403)),
            ("PUT", "Patient", Some("identifier=x"), Status(403)),
            ("DELETE", "Patient", Some("identifier=x"), Status(403)),
            ("PATCH", "Patient", Some("identifier=x"), Status(403)),
            ("DELETE", "Patient/1/_history/2", None, Status(403)),
            ("DELETE", "Patient/../x", None, Status(400)),
        ];
        check_rows(rows, READ_ONLY);
    }

    #[test]
    fn writes_when_enabled() {
        let rows = vec![
            ("POST", "", None, Is(Interaction::Batch)),
            ("POST", "Observation", None, Is(Interaction::Create { resource_type: s("Observation") })),
            ("PUT", "Patient/1", None, Is(Interaction::Update { resource_type: s("Patient"), id: s("1") })),
            ("PATCH", "Patient/1", None, Is(Interaction::Patch { resource_type: s("Patient"), id: s("1") })),
            (
                "DELETE",
                "Patient/1",
                None,
                Is(Interaction::Delete { resource_type: s("Patient"), id: s("1") }),
            ),
            ("PUT", "Patient", Some("identifier=x"), Status(403)),
            ("DELETE", "Patient", Some("identifier=x"), Status(403)),
            ("PATCH", "Patient", None, Status(403)),
            ("DELETE", "Patient/1/_history/2", None, Status(400)),
            ("PUT", "Patient/1", Some("code=1"), Status(400)),
            ("OPTIONS", "Patient/1", None, Status(405)),
        ];
        check_rows(rows, WRITABLE);
        let conditional =
            parse_full("POST", "Patient", None, &[("If-None-Exist", "identifier=x")], b"", WRITABLE);
        assert_eq!(status_of(&conditional), 403);
        let xml = parse_full(
            "PUT",
            "Patient/1",
            None,
            &[("Content-Type", "application/fhir+xml")],
            b"<x/>",
            WRITABLE,
        );
        assert_eq!(status_of(&xml), 406);
        let json = parse_full(
            "PUT",
            "Patient/1",
            None,
            &[("Content-Type", "application/fhir+json")],
            b"{}",
            WRITABLE,
        );
        assert_eq!(status_of(&json), 200);
        let patch = parse_full(
            "PATCH",
            "Patient/1",
            None,
            &[("Content-Type", "application/json-patch+json")],
            b"[]",
            WRITABLE,
        );
        assert_eq!(status_of(&patch), 200);
        let text = parse_full("PUT", "Patient/1", None, &[("Content-Type", "text/plain")], b"{}", WRITABLE);
        assert_eq!(status_of(&text), 415);
    }

    #[test]
    fn refused_query_syntax() {
        let rows = vec![
            ("GET", "Patient", Some("_has:Observation:patient:code=1"), Status(400)),
            ("GET", "Observation", Some("_has:Observation:patient:code=1"), Status(400)),
            ("GET", "Observation", Some("subject:Patient.name=x"), Status(400)),
            ("GET", "Observation", Some("subject.name=x"), Status(400)),
            ("GET", "Observation", Some("_summary=count"), Status(400)),
            ("GET", "Observation", Some("_total=accurate"), Status(400)),
            ("GET", "Observation", Some("_filter=code eq 1"), Status(400)),
            ("GET", "Observation", Some("_query=x"), Status(400)),
            ("GET", "Observation", Some("_method=POST"), Status(400)),
            ("GET", "Observation", Some("_contained=true"), Status(400)),
            ("GET", "Observation", Some("_containedType=container"), Status(400)),
            ("GET", "Observation", Some("code:unknown=1"), Status(400)),
            ("GET", "Observation", Some("_elements=id"), Is(search("Observation"))),
            ("GET", "Observation", Some("_count=5000"), Is(search("Observation"))),
            ("GET", "Patient/1/_history", Some("_since=2020-01-01T00:00:00Z"), Status(200)),
            ("GET", "Observation", Some("_since=2020-01-01T00:00:00Z"), Status(400)),
            ("GET", "Patient/1", Some("_elements=id"), Status(200)),
            ("GET", "Patient/1", Some("name=x"), Status(400)),
            ("GET", "metadata", Some("mode=full"), Status(200)),
            ("GET", "_page/abc", Some("_count=1"), Status(400)),
            ("POST", "Patient/$member-match", Some("x=1"), Status(400)),
            ("GET", "Group/g1/$export", Some("_type=Patient&_since=bad"), Status(400)),
            ("GET", "Patient/1/Observation", Some("_has:Condition:subject:code=1"), Status(400)),
            ("GET", "Observation", Some("patient=a%2Fb"), Status(200)),
        ];
        check_rows(rows, READ_ONLY);
    }

    #[test]
    fn compartment_keeps_patient_and_rest_of_query() {
        let request = run("GET", "Patient/123/Observation", Some("code=1&_count=10")).expect("parses");
        assert_eq!(
            request.interaction,
            Interaction::SearchCompartment { patient_id: s("123"), resource_type: s("Observation") }
        );
        assert_eq!(request.params.to_query_string(), "code=1&_count=10");
    }

    #[test]
    fn ids_that_are_prefixes_stay_distinct() {
        let short = run("GET", "Patient/12", None).expect("parses");
        let long = run("GET", "Patient/123", None).expect("parses");
        assert_ne!(short.interaction, long.interaction);
        let params =
            run("GET", "Observation", Some("patient=Patient/12&patient=Patient/123")).expect("parses");
        let values: Vec<&str> =
            params.params.get("patient").flat_map(|p| p.values.iter().map(String::as_str)).collect();
        assert_eq!(values, vec!["Patient/12", "Patient/123"]);
    }

    #[test]
    fn search_params_are_typed_and_ordered() {
        let request = run(
            "GET",
            "ExplanationOfBenefit",
            Some("patient=A&patient:missing=false&subject:Patient=B,C&patient:not=D&patient:above=E&patient:identifier=s|1"),
        )
        .expect("parses");
        let got: Vec<(String, Option<Modifier>, usize)> =
            request.params.iter().map(|p| (p.name.clone(), p.modifier.clone(), p.values.len())).collect();
        assert_eq!(
            got,
            vec![
                (s("patient"), None, 1),
                (s("patient"), Some(Modifier::Missing), 1),
                (s("subject"), Some(Modifier::Type(s("Patient"))), 2),
                (s("patient"), Some(Modifier::Not), 1),
                (s("patient"), Some(Modifier::Above), 1),
                (s("patient"), Some(Modifier::Identifier), 1),
            ]
        );
        assert!(!request.head);
        assert!(run("HEAD", "ExplanationOfBenefit", Some("patient=A")).expect("parses").head);
    }

    #[test]
    fn post_search_with_form_body() {
        let form = ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8");
        let request = parse_full(
            "POST",
            "Observation/_search",
            Some("code=1"),
            &[form],
            b"patient=Patient%2F1&code=2",
            READ_ONLY,
        )
        .expect("parses");
        assert_eq!(request.interaction, search("Observation"));
        assert_eq!(
            request.params.params,
            vec![
                SearchParam::single("code", "1"),
                SearchParam::single("patient", "Patient/1"),
                SearchParam::single("code", "2")
            ]
        );
        let compartment =
            parse_full("POST", "Patient/1/Observation/_search", None, &[form], b"code=1", READ_ONLY)
                .expect("parses");
        assert_eq!(
            compartment.interaction,
            Interaction::SearchCompartment { patient_id: s("1"), resource_type: s("Observation") }
        );
        let refused_in_body =
            parse_full("POST", "Observation/_search", None, &[form], b"_has:X:y:z=1", READ_ONLY);
        assert_eq!(status_of(&refused_in_body), 400);
        let method_in_body =
            parse_full("POST", "Observation/_search", None, &[form], b"_method=GET", READ_ONLY);
        assert_eq!(status_of(&method_in_body), 400);
        let json = parse_full(
            "POST",
            "Observation/_search",
            None,
            &[("Content-Type", "application/json")],
            b"{}",
            READ_ONLY,
        );
        assert_eq!(status_of(&json), 415);
        let xml = parse_full(
            "POST",
            "Observation/_search",
            None,
            &[("Content-Type", "text/xml")],
            b"<x/>",
            READ_ONLY,
        );
        assert_eq!(status_of(&xml), 406);
        let untyped = parse_full("POST", "Observation/_search", None, &[], b"code=1", READ_ONLY);
        assert_eq!(status_of(&untyped), 415);
        let empty = parse_full("POST", "Observation/_search", Some("code=1"), &[], b"", READ_ONLY);
        assert_eq!(status_of(&empty), 200);
        let not_utf8 = parse_full("POST", "Observation/_search", None, &[form], b"code=\xff", READ_ONLY);
        assert_eq!(status_of(&not_utf8), 400);
        let double_type = parse_full(
            "POST",
            "Observation/_search",
            None,
            &[form, ("Content-Type", "application/json")],
            b"code=1",
            READ_ONLY,
        );
        assert_eq!(status_of(&double_type), 400);
    }

    #[test]
    fn bodies() {
        let body_on_get = parse_full("GET", "Patient/1", None, &[], b"x", READ_ONLY);
        assert_eq!(status_of(&body_on_get), 400);
        let json = ("Content-Type", "application/fhir+json");
        let member_match = parse_full("POST", "Patient/$member-match", None, &[json], b"{}", READ_ONLY);
        assert_eq!(status_of(&member_match), 200);
        let xml_op = parse_full(
            "POST",
            "Patient/$member-match",
            None,
            &[("Content-Type", "application/fhir+xml")],
            b"<x/>",
            READ_ONLY,
        );
        assert_eq!(status_of(&xml_op), 406);
        let form_op = parse_full(
            "POST",
            "Patient/$member-match",
            None,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            b"a=1",
            READ_ONLY,
        );
        assert_eq!(status_of(&form_op), 415);
    }

    #[test]
    fn method_override_headers_are_refused() {
        for name in ["X-HTTP-Method-Override", "x-http-method", "X-Method-Override"] {
            for value in ["GET", "DELETE", ""] {
                let result = parse_full("GET", "Patient/1", None, &[(name, value)], b"", READ_ONLY);
                assert_eq!(status_of(&result), 400, "{name}: {value}");
            }
        }
    }

    #[test]
    fn xml_is_not_acceptable() {
        let formats = [
            "xml",
            "XML",
            "text/xml",
            "application/xml",
            "application/fhir+xml",
            "application/fhir%2Bxml",
            "Application/FHIR+XML",
        ];
        for format in formats {
            let query = format!("_format={format}");
            assert_eq!(status_of(&run("GET", "Patient/1", Some(&query))), 406, "{format}");
        }
        for format in [
            "json",
            "JSON",
            "application/json",
            "application/fhir+json",
            "application/fhir%2Bjson",
            "application/json+fhir",
        ] {
            let query = format!("_format={format}");
            let request = run("GET", "Patient/1", Some(&query)).expect("json accepted");
            assert!(request.params.is_empty(), "_format is not forwarded");
        }
        let accept_rows: &[(&str, u16)] = &[
            ("application/fhir+xml", 406),
            ("application/xml", 406),
            ("text/xml", 406),
            ("text/html", 406),
            ("application/fhir+xml, text/html;q=0.9", 406),
            ("application/fhir+json;q=0, application/xml", 406),
            ("application/fhir+json", 200),
            ("application/json", 200),
            ("application/json+fhir", 200),
            ("application/fhir+json; fhirVersion=4.0", 200),
            ("*/*", 200),
            ("application/*", 200),
            ("text/html,application/xhtml+xml,*/*;q=0.8", 200),
            ("application/fhir+xml;q=1, application/fhir+json;q=0.5", 200),
            ("", 200),
        ];
        for (accept, expected) in accept_rows {
            let result = parse_full("GET", "Patient/1", None, &[("Accept", accept)], b"", READ_ONLY);
            assert_eq!(status_of(&result), *expected, "Accept: {accept}");
        }
        let two_headers = parse_full(
            "GET",
            "Patient/1",
            None,
            &[("Accept", "text/xml"), ("Accept", "application/json")],
            b"",
            READ_ONLY,
        );
        assert_eq!(status_of(&two_headers), 200);
    }

    #[test]
    fn limits() {
        let long_path = format!("Patient/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(status_of(&run("GET", &long_path, None)), 414);
        let token = "a".repeat(MAX_PAGE_TOKEN_BYTES);
        assert_eq!(status_of(&run("GET", &format!("_page/{token}"), None)), 200);
        assert_eq!(status_of(&run("GET", &format!("_page/{token}a"), None)), 400);
        let many = vec!["code=1"; 101].join("&");
        assert_eq!(status_of(&run("GET", "Observation", Some(&many))), 400);
        let form = ("Content-Type", "application/x-www-form-urlencoded");
        let half = vec!["code=1"; 60].join("&");
        let merged =
            parse_full("POST", "Observation/_search", Some(&half), &[form], half.as_bytes(), READ_ONLY);
        assert_eq!(status_of(&merged), 400);
    }

    #[test]
    fn errors_carry_the_contract_issue_codes() {
        let refused = run("GET", "Observation", Some("_filter=x")).expect_err("refused");
        assert_eq!(refused.code, IssueCode::NotSupported);
        let invalid = run("GET", "Patient/a_b", None).expect_err("refused");
        assert_eq!(invalid.code, IssueCode::Invalid);
        let message = run(
            "GET",
            "Patient/$a\u{1}b%0Azzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
            None,
        )
        .expect_err("refused")
        .message;
        assert!(message.chars().all(|c| c.is_ascii_graphic() || c == ' '), "{message}");
    }

    fn method_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"GET".to_vec()),
            Just(b"HEAD".to_vec()),
            Just(b"POST".to_vec()),
            Just(b"PUT".to_vec()),
            Just(b"PATCH".to_vec()),
            Just(b"DELETE".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..8),
        ]
    }

    fn path_strategy() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            Just(s("Patient")),
            Just(s("Observation")),
            Just(s("Group")),
            Just(s("_history")),
            Just(s("_search")),
            Just(s("_page")),
            Just(s("metadata")),
            Just(s("$export")),
            Just(s("%24member-match")),
            Just(s("$davinci-data-export")),
            Just(s("%2e%2E")),
            Just(s("%2F")),
            Just(s("..")),
            "[a-zA-Z0-9.%;$*_-]{0,6}",
            ".{0,4}",
        ];
        proptest::collection::vec(segment, 0..6).prop_map(|segments| segments.join("/"))
    }

    proptest! {
        #[test]
        fn parse_never_panics(
            method in method_strategy(),
            path in path_strategy(),
            query in proptest::option::of(".{0,80}"),
            body in proptest::collection::vec(any::<u8>(), 0..40),
            accept in proptest::option::of("[a-z/+*;=0-9., ]{0,30}"),
            content_type in proptest::option::of("[a-z/+;=-]{0,40}"),
            writes in any::<bool>(),
        ) {
            let Ok(method) = Method::from_bytes(&method) else { return Ok(()) };
            let mut headers = HeaderMap::new();
            if let Some(value) = accept.and_then(|a| HeaderValue::from_str(&a).ok()) {
                headers.insert(ACCEPT, value);
            }
            if let Some(value) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                headers.insert(CONTENT_TYPE, value);
            }
            let parts = RequestParts { method: &method, path: &path, query: query.as_deref(), headers: &headers, body: &body };
            let options = ParseOptions { allow_writes: writes };
            if let Ok(request) = parse(&parts, options) {
                // Whatever parsed re-parses identically from its canonical query.
                let canonical = request.params.to_query_string();
                let again = RequestParts { query: Some(&canonical), body: b"", headers: &HeaderMap::new(), ..parts };
                if let Ok(reparsed) = parse(&again, options) {
                    prop_assert_eq!(reparsed.params, request.params);
                }
            }
        }

        #[test]
        fn search_query_round_trips(query in "[a-z_:=&,%0-9A-F+\\\\.|/]{0,60}") {
            if let Ok(request) = run("GET", "Observation", Some(&query)) {
                let canonical = request.params.to_query_string();
                let reparsed = run("GET", "Observation", Some(&canonical));
                prop_assert_eq!(reparsed.ok(), Some(request));
            }
        }
    }
}
