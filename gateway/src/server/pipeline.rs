//! The FHIR request pipeline, read top to bottom in `FhirHandler::process`:
//! route -> auth -> read body -> parse -> scopes -> access decision (404 /
//! 403 / narrowing) -> policy plugins' on-request -> dispatch -> settle
//! (audit facts). `dispatch` hands every interaction that reaches the
//! upstream to `answer` (the response chain, `crate::chain`): reads,
//! vreads, history, searches and their pages, metadata and writes; the
//! operations fhirwall answers itself (`plugin_stage`).
//!
//! Nothing the caller sent reaches the upstream verbatim: the upstream
//! request is rebuilt from the parsed model.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::Request;
use hyper::body::Incoming;

use crate::audit::AuditRecord;
use crate::error::{Blame, GatewayError, Kind};
use crate::fhir::request::{self, FhirRequest, Interaction, Operation, RequestParts};
use crate::fhir::{SearchParam, SearchParams};
use crate::gateway::Gateway;
use crate::listener::Handler;
use crate::proxy::UpstreamRequest;
use crate::respond::{self, Body};

mod answer;
pub mod explain;
mod export;
mod identifiers;
mod plugin_stage;
mod provider_match;

pub use provider_match::spawn_sweeper as spawn_match_sweeper;

/// Search query strings longer than this go upstream as POST `_search`.
const MAX_GET_QUERY: usize = 4096;

/// Who is asking: the principal of a verified access token (`auth`).
#[derive(Debug, Clone)]
pub struct Caller {
    pub client_id: String,
    /// The authenticated principal (organization, NPI, scopes); `None` only
    /// on the public `metadata` endpoint.
    pub principal: Option<Arc<crate::auth::Principal>>,
    /// What paging links are bound to: client, registration and scopes.
    pub binding: String,
}

impl Caller {
    fn new(principal: Option<Arc<crate::auth::Principal>>) -> Caller {
        match &principal {
            Some(p) => Caller { client_id: p.client_id.clone(), binding: p.binding(), principal },
            None => Caller { client_id: "anonymous".into(), binding: "anonymous".into(), principal: None },
        }
    }
}

/// What one request carries through the pipeline.
struct RequestCtx {
    request_id: String,
    caller: Caller,
    /// The public URL of this request (for Bundle `self` links).
    self_url: String,
    /// access: the decision (caller's scope, how to filter the answer).
    access: Option<crate::access::Decision>,
    /// The caller's `_elements`/`_summary`, cut after every stage.
    subset: Option<crate::redact::Subset>,
    /// What every stage of the chain let out, withheld and changed: the
    /// audit record is written from it.
    disclosure: std::sync::Mutex<crate::chain::disclosure::Disclosure>,
    /// The policy plugins' run for this request (taken while a stage runs).
    policy: std::sync::Mutex<Option<crate::plugins::PolicyRun>>,
    /// Referenced resources classified for Part 2 in this request (`Type/id` -> withheld).
    part2_targets: std::sync::Mutex<std::collections::HashMap<String, bool>>,
    /// The caller's visible patients' identifiers (`identifiers`), once loaded.
    member_ids: std::sync::OnceLock<std::sync::Arc<identifiers::MemberIds>>,
    /// Export batches: the upstream budget their requests wait for.
    limiter: Option<Arc<crate::ops::export::limiter::RateLimiter>>,
    /// The request's `Prefer` (an export kick-off reads it).
    prefer: crate::ops::export::kickoff::Prefer,
    /// Details an operation adds to the audit record (counts, job ids).
    audit_details: std::sync::Mutex<Vec<(&'static str, String)>>,
}

pub struct FhirHandler {
    gw: Arc<Gateway>,
    /// Request-rate limits of this node (per client, organization, token endpoint).
    limits: crate::rate_limit::RequestLimits,
}

impl FhirHandler {
    pub fn new(gw: Arc<Gateway>) -> Self {
        let limits = crate::rate_limit::RequestLimits::new(&gw.config);
        FhirHandler { gw, limits }
    }
}

impl RequestCtx {
    fn new(
        request_id: &str,
        caller: Caller,
        self_url: String,
        access: Option<crate::access::Decision>,
        subset: Option<crate::redact::Subset>,
        policy: Option<crate::plugins::PolicyRun>,
    ) -> RequestCtx {
        RequestCtx {
            request_id: request_id.to_owned(),
            caller,
            self_url,
            disclosure: std::sync::Mutex::new(access.as_ref().map(|d| d.report()).unwrap_or_default()),
            access,
            subset,
            policy: std::sync::Mutex::new(policy),
            part2_targets: std::sync::Mutex::default(),
            member_ids: std::sync::OnceLock::new(),
            limiter: None,
            prefer: crate::ops::export::kickoff::Prefer::default(),
            audit_details: std::sync::Mutex::default(),
        }
    }
}

impl RequestCtx {
    /// The request's disclosure record, for a stage to write its decisions.
    fn disclosure(&self) -> std::sync::MutexGuard<'_, crate::chain::disclosure::Disclosure> {
        self.disclosure.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Handler for FhirHandler {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let request_id = new_request_id();
        let method = req.method().clone();
        // The query is left out of logs: search values can be PHI.
        let path = req.uri().path().to_owned();
        let mut record = AuditRecord::rest(&request_id);
        record.peer = Some(peer.ip());
        let (interaction, result) = self.process(req, &request_id, &mut record).await;
        let mut response = match result {
            Ok(response) => {
                record.set_outcome(response.status().as_u16(), None);
                response
            }
            Err(err) => {
                log_error(&err, &request_id);
                record.set_outcome(err.status.as_u16(), Some(&err));
                respond::error(&err)
            }
        };
        // audit: durable before the response leaves; no record, no data.
        if let Err(e) = self.gw.audit.record(&record).await {
            let err = crate::audit::fail_closed(&e);
            log_error(&err, &request_id);
            response = respond::error(&err);
        }
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(HeaderName::from_static("x-request-id"), value);
        }
        let status = response.status().as_u16();
        let elapsed = started.elapsed();
        self.gw.metrics.record_request(interaction, status, elapsed);
        tracing::info!(
            request_id = %request_id,
            peer = %peer,
            method = %method,
            path = %path,
            interaction,
            status,
            elapsed_us = elapsed.as_micros() as u64,
            "request"
        );
        response
    }
}

/// Whether a run keeps the per-resource trace (`explain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trace {
    Off,
    On,
}

/// A request at the front door: answered there, or admitted with the path
/// below the FHIR base and who is asking (`None`: the public `metadata`).
enum FrontDoor {
    Answered(&'static str, Result<Response<Body>, GatewayError>),
    Admitted { req: Request<Incoming>, below_base: String, principal: Option<Arc<crate::auth::Principal>> },
}

impl FhirHandler {
    /// The pipeline. Returns the interaction name (for metrics) and the
    /// answer; fills `record` (audit) with who asked and what for.
    async fn process(
        &self,
        req: Request<Incoming>,
        request_id: &str,
        record: &mut AuditRecord,
    ) -> (&'static str, Result<Response<Body>, GatewayError>) {
        let gw = &self.gw;
        let (req, below_base, principal) = match self.front_door(req, record).await {
            FrontDoor::Answered(name, result) => return (name, result),
            FrontDoor::Admitted { req, below_base, principal } => (req, below_base, principal),
        };
        if let Some(principal) = &principal {
            record.set_principal(principal);
            // The Bulk Data endpoints around an export job.
            if let Some(answered) = self.export_endpoint(&req, &below_base, principal, record).await {
                return answered;
            }
            // The status URL of a $provider-member-match request.
            if let Some(answered) = self.match_endpoint(&req, &below_base, principal, record).await {
                return answered;
            }
        }
        record.set_interaction("unparsed");
        let (parts, body) = req.into_parts();
        let body = match read_body(body, gw.config.server.max_request_body_bytes).await {
            Ok(body) => body,
            Err(err) => return ("unparsed", Err(err)),
        };
        let (name, result, _) =
            self.run(&parts, &below_base, body, principal, request_id, record, Trace::Off).await;
        (name, result)
    }

    /// A request that passed the front door, from parsing to the answer:
    /// the one path every FHIR request takes, and `explain` too (with the
    /// per-resource trace on, returned third).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run(
        &self,
        parts: &http::request::Parts,
        below_base: &str,
        body: Bytes,
        principal: Option<Arc<crate::auth::Principal>>,
        request_id: &str,
        record: &mut AuditRecord,
        trace: Trace,
    ) -> (&'static str, Result<Response<Body>, GatewayError>, Vec<crate::chain::disclosure::Step>) {
        let gw = &self.gw;
        let request = RequestParts {
            method: &parts.method,
            path: below_base,
            query: parts.uri.query(),
            headers: &parts.headers,
            body: &body,
        };
        let mut fhir = match request::parse(&request, gw.parse_options) {
            Ok(fhir) => fhir,
            Err(err) => return ("unparsed", Err(err), Vec::new()),
        };
        let name = fhir.interaction.name();
        record.set_request(&fhir);
        // auth: the token's scopes must cover the interaction
        // (searches under a v2 query constraint get the constraint added).
        let authorized = match &principal {
            Some(principal) => principal.authorize(&mut fhir),
            None if fhir.interaction == Interaction::Capabilities => Ok(()),
            None => Err(GatewayError::forbidden("an access token is required")),
        };
        if let Err(err) = authorized {
            return (name, Err(err), Vec::new());
        }
        let self_url = self_url(&gw.public_base, below_base, &fhir.params);
        // access: attribution and opt-outs, before anything goes
        // upstream (404 / 403 / narrowing / 400); fails closed.
        let access = match gw.access.decide(principal.as_deref(), &mut fhir).await {
            Ok(decision) => decision,
            Err(err) => return (name, Err(err), Vec::new()),
        };
        // redact: redaction decides on whole resources, so the
        // upstream never applies `_elements` / `_summary`; fhirwall does, after.
        let subset = crate::redact::Subset::take(&mut fhir.params);
        // plugins: the policy plugins' on-request, after the
        // built-in checks; a deny is a 403, a plugin failure fails closed.
        let policy = match self.policy_on_request(principal.as_deref(), &fhir, request_id).await {
            Ok(run) => run,
            Err(err) => return (name, Err(err), Vec::new()),
        };
        let mut ctx = RequestCtx::new(request_id, Caller::new(principal), self_url, access, subset, policy);
        if trace == Trace::On {
            ctx.disclosure().trace = Some(Vec::new());
        }
        ctx.prefer = crate::ops::export::kickoff::Prefer::of(&parts.headers);
        let content_type = parts.headers.get(CONTENT_TYPE).cloned();
        let (head, chained) = (fhir.head, fhir.interaction.is_chained());
        let result = self.dispatch(&ctx, fhir, body, content_type).await;
        let result = self.settle(&ctx, result, chained, head, record).await;
        let steps = ctx.disclosure().trace.clone().unwrap_or_default();
        (name, result, steps)
    }

    /// What is answered before a request is parsed: the token endpoint
    /// (outside the FHIR base), paths outside the base, SMART discovery;
    /// every other request is authenticated here (`metadata` is public).
    async fn front_door(&self, req: Request<Incoming>, record: &mut AuditRecord) -> FrontDoor {
        let gw = &self.gw;
        if req.uri().path() == crate::auth::TOKEN_PATH {
            if let Err(err) = self.limits.admit_token() {
                record.set_interaction("token");
                return FrontDoor::Answered("token", Err(err));
            }
            let (response, token) = gw.auth.token_endpoint(req).await;
            record.set_token(token);
            return FrontDoor::Answered("token", Ok(respond::from_full(response)));
        }
        let Some(below_base) = below_base(req.uri().path(), &gw.base_path) else {
            return FrontDoor::Answered(
                "unrouted",
                Err(GatewayError::not_found("no FHIR endpoint at this path")),
            );
        };
        let below_base = below_base.to_owned();
        if below_base == ".well-known/smart-configuration" {
            record.set_interaction("smart-configuration");
            return FrontDoor::Answered(
                "smart-configuration",
                Ok(respond::from_full(gw.auth.smart_configuration_response(req.method()))),
            );
        }
        let principal = if below_base == "metadata" {
            None
        } else {
            match gw.auth.authenticate(req.headers()).await {
                Ok(principal) => Some(principal),
                Err(err) => {
                    record.set_interaction("unauthenticated");
                    return FrontDoor::Answered("unauthenticated", Err(err));
                }
            }
        };
        if let Some(principal) = &principal
            && let Err(err) = self.limits.admit_request(principal)
        {
            record.set_principal(principal);
            record.set_interaction("throttled");
            return FrontDoor::Answered("throttled", Err(err));
        }
        FrontDoor::Admitted { req, below_base, principal }
    }

    /// After the answer: the policy verdicts on answers outside the chain
    /// (operations), HEAD's empty body, and what every stage withheld, for
    /// the audit record.
    async fn settle(
        &self,
        ctx: &RequestCtx,
        result: Result<Response<Body>, GatewayError>,
        chained: bool,
        head: bool,
        record: &mut AuditRecord,
    ) -> Result<Response<Body>, GatewayError> {
        let run = ctx.policy.lock().unwrap_or_else(|e| e.into_inner()).take();
        let result = match (result, run) {
            (Ok(response), Some(run)) if !chained => {
                let scope = ctx.access.as_ref().map(|d| d.scope.clone());
                self.policy_on_response(run, response, scope, record).await
            }
            (result, _) => result,
        };
        let result = result.map(|mut response| {
            if head {
                *response.body_mut() = respond::full(Bytes::new());
            }
            response
        });
        // What the stages decided, for the audit record.
        for (name, value) in ctx.audit_details.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            record.detail(name, value);
        }
        let disclosure = ctx.disclosure();
        if ctx.access.is_some() || !disclosure.is_clean() {
            record.set_disclosure(&disclosure);
        }
        result
    }

    async fn dispatch(
        &self,
        ctx: &RequestCtx,
        fhir: FhirRequest,
        body: Bytes,
        content_type: Option<HeaderValue>,
    ) -> Result<Response<Body>, GatewayError> {
        let head = fhir.head;
        // access: answers fhirwall gives itself (an empty visible
        // set, a stored attribution roster).
        if let Some(decision) = &ctx.access {
            let mut report = ctx.disclosure();
            if let Some(body) = self.gw.access.local_body(decision, &ctx.self_url, &mut report)? {
                return Ok(respond::fhir_json(StatusCode::OK, if head { Bytes::new() } else { body }));
            }
        }
        let upstream_request = match &fhir.interaction {
            Interaction::Capabilities => return self.answer_capabilities(ctx).await,
            Interaction::Read { resource_type, id } => {
                return self.answer_read(ctx, resource_type, id, None).await;
            }
            Interaction::Vread { resource_type, id, version } => {
                return self.answer_read(ctx, resource_type, id, Some(version)).await;
            }
            Interaction::HistoryInstance { resource_type, id } => {
                return self.answer_history(ctx, resource_type, id, fhir.params.to_query_string()).await;
            }
            Interaction::SearchType { resource_type } => {
                return self.answer_search(ctx, first_page(resource_type, fhir.params.clone())).await;
            }
            Interaction::SearchCompartment { patient_id, resource_type } => {
                let start = self.compartment_start(resource_type, patient_id, &fhir.params)?;
                return self.answer_search(ctx, start).await;
            }
            Interaction::Page { token } => {
                return self.answer_search(ctx, self.page_start(ctx, token)?).await;
            }
            Interaction::Operation(Operation::SystemExport) => {
                return Err(GatewayError::forbidden(
                    "system-level $export is not offered: Provider Access exports a Group (Group/{id}/$export)",
                ));
            }
            Interaction::Operation(Operation::PatientExport) => {
                return Err(GatewayError::forbidden(
                    "Patient-level $export is not offered: Provider Access exports a Group (Group/{id}/$export)",
                ));
            }
            Interaction::Operation(
                op @ (Operation::GroupExport { .. } | Operation::DavinciDataExport { .. }),
            ) => {
                return self.export_kickoff(ctx, op, &fhir.params, &body).await;
            }
            // plugins: HRex $member-match through the matcher plugin.
            Interaction::Operation(Operation::MemberMatch) => return self.member_match(ctx, &body).await,
            // PDex v2: attested members matched into a Group the caller may export.
            Interaction::Operation(Operation::ProviderMemberMatch) => {
                return self.provider_member_match(ctx, &body).await;
            }
            Interaction::Create { resource_type } => {
                write(Method::POST, resource_type.clone(), body, content_type)
            }
            Interaction::Update { resource_type, id } => {
                write(Method::PUT, format!("{resource_type}/{}", enc(id)), body, content_type)
            }
            Interaction::Patch { resource_type, id } => {
                write(Method::PATCH, format!("{resource_type}/{}", enc(id)), body, content_type)
            }
            Interaction::Delete { resource_type, id } => {
                write(Method::DELETE, format!("{resource_type}/{}", enc(id)), Bytes::new(), None)
            }
            // Refused by access before this point; never relayed.
            Interaction::Batch => {
                return Err(GatewayError::forbidden("batch and transaction Bundles are not available"));
            }
        };
        self.answer_write(ctx, upstream_request).await
    }
}

impl FhirHandler {
    /// `Patient/{id}/{type}` as a search on the type's compartment link
    /// (the loaded policy table, `policy.dir` over the built-in one, as
    /// the access stage uses).
    fn compartment_start(
        &self,
        resource_type: &str,
        patient_id: &str,
        extra: &SearchParams,
    ) -> Result<answer::SearchStart, GatewayError> {
        let param = match self.gw.access.policy().rule(resource_type) {
            crate::access::policy::TypeRule::Compartment(links) => links.narrow.clone(),
            _ => None,
        }
        .ok_or_else(|| {
            GatewayError::bad_request(format!("{resource_type} is not in the Patient compartment"))
        })?;
        let mut params = SearchParams::default();
        params.push(SearchParam::single(param, format!("Patient/{patient_id}")));
        params.params.extend(extra.params.iter().cloned());
        Ok(first_page(resource_type, params))
    }

    /// A paging token fhirwall issued to this caller, opened.
    fn page_start(&self, ctx: &RequestCtx, token: &str) -> Result<answer::SearchStart, GatewayError> {
        let page = self.gw.pages.open(&ctx.caller.binding, token)?;
        Ok(answer::SearchStart {
            resource_type: page.resource_type,
            cursor: crate::chain::page::Cursor { path: page.upstream_path, skip: page.skip },
            want: page.count.clamp(1, answer::MAX_PAGE),
            from_token: true,
            trail: page.trail,
        })
    }
}

/// The path below the FHIR base, or `None` when the request is elsewhere.
fn below_base<'p>(path: &'p str, base_path: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(base_path)?;
    if rest.is_empty() {
        return Some("");
    }
    rest.strip_prefix('/')
}

async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, GatewayError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(GatewayError::of(Kind::PayloadTooLarge, format!("request body larger than {limit} bytes")))
        }
        Err(_) => Err(GatewayError::bad_request("the request body could not be read")),
    }
}

fn get(path_and_query: String) -> UpstreamRequest {
    UpstreamRequest {
        method: Method::GET,
        path_and_query,
        body: None,
        headers: Vec::new(),
        request_id: String::new(),
    }
}

/// The first page of a search: the caller's parameters, with a `_count`
/// that lets one upstream page hold more than the caller's page.
fn first_page(resource_type: &str, mut params: SearchParams) -> answer::SearchStart {
    let (want, upstream_count) = answer::page_sizes(&params);
    params.remove("_count");
    params.push(SearchParam::single("_count", upstream_count.to_string()));
    let path = with_query(resource_type.to_owned(), &params);
    answer::SearchStart {
        resource_type: resource_type.to_owned(),
        trail: crate::proxy::Trail::start(&path),
        cursor: crate::chain::page::Cursor { path, skip: 0 },
        want,
        from_token: false,
    }
}

fn with_query(path: String, params: &SearchParams) -> String {
    let query = params.to_query_string();
    if query.is_empty() { path } else { format!("{path}?{query}") }
}

fn write(method: Method, path: String, body: Bytes, content_type: Option<HeaderValue>) -> UpstreamRequest {
    let content_type = content_type.unwrap_or_else(|| HeaderValue::from_static("application/fhir+json"));
    let body = if body.is_empty() { None } else { Some((body, content_type)) };
    UpstreamRequest { method, path_and_query: path, body, headers: Vec::new(), request_id: String::new() }
}

/// Percent-encode a path segment (ids are validated already; this is belt and braces).
fn enc(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%2D", "-")
        .replace("%2E", ".")
}

fn self_url(public_base: &str, below_base: &str, params: &SearchParams) -> String {
    let mut url = public_base.to_owned();
    if !below_base.is_empty() {
        url.push('/');
        url.push_str(below_base);
    }
    let query = params.to_query_string();
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query);
    }
    url
}

fn new_request_id() -> String {
    let bytes: [u8; 12] = rand::random();
    hex::encode(bytes)
}

fn log_error(err: &GatewayError, request_id: &str) {
    let detail = err.detail.as_deref().unwrap_or("");
    match err.blame {
        Blame::Caller => {
            tracing::debug!(request_id, status = err.status.as_u16(), message = %err.message, detail, "refused")
        }
        Blame::Upstream => {
            tracing::warn!(request_id, status = err.status.as_u16(), message = %err.message, detail, "upstream failure")
        }
        Blame::Policy | Blame::Internal => {
            tracing::error!(request_id, status = err.status.as_u16(), blame = ?err.blame, detail, "failed closed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_below_the_base_only() {
        assert_eq!(below_base("/fhir/Patient/1", "/fhir"), Some("Patient/1"));
        assert_eq!(below_base("/fhir", "/fhir"), Some(""));
        assert_eq!(below_base("/fhir/", "/fhir"), Some(""));
        assert_eq!(below_base("/fhirx/Patient", "/fhir"), None);
        assert_eq!(below_base("/other", "/fhir"), None);
        assert_eq!(below_base("/fhir//Patient", "/fhir"), Some("/Patient"));
        assert_eq!(below_base("/Patient/1", ""), Some("Patient/1"));
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(enc("abc-1.2"), "abc-1.2");
        assert_eq!(enc("a/b"), "a%2Fb");
    }
}
