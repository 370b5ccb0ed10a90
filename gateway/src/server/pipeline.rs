//! The FHIR request pipeline, read top to bottom in `FhirHandler::process`:
//! route -> read body -> parse -> (auth, access: later stages) -> upstream ->
//! relay (validate, rewrite URLs, seal paging links) -> respond.
//!
//! Nothing the caller sent reaches the upstream verbatim: the upstream
//! request is rebuilt from the parsed model.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_LOCATION, CONTENT_TYPE, ETAG, LAST_MODIFIED, LOCATION};
use http::{HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::Request;
use hyper::body::Incoming;
use serde_json::value::RawValue;

use super::Gateway;
use super::listener::Handler;
use super::respond::{self, Body};
use crate::audit::AuditRecord;
use crate::error::{Blame, GatewayError, IssueCode};
use crate::fhir::bundle::RawObject;
use crate::fhir::request::{self, FhirRequest, Interaction, Operation, RequestParts};
use crate::fhir::{SearchParam, SearchParams};
use crate::proxy::{UpstreamRequest, UpstreamResponse};

mod answer;
mod plugin_stage;

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
    // access: the decision (caller's scope, how to filter the
    // answer) and what the response filter let out and held back.
    access: Option<crate::access::Decision>,
    access_report: std::sync::Mutex<crate::access::FilterReport>,
    // redact: the caller's `_elements`/`_summary` (cut by
    // fhirwall after redaction) and what redaction withheld or changed.
    subset: Option<crate::redact::Subset>,
    redaction: std::sync::Mutex<crate::redact::RedactionReport>,
    /// The policy plugins' run for this request (taken while a stage runs).
    policy: std::sync::Mutex<Option<crate::plugins::PolicyRun>>,
    /// What the policy plugins withheld and narrowed.
    plugin_counts: std::sync::Mutex<crate::plugins::policy::PolicyReport>,
    /// Referenced resources classified for Part 2 in this request (`Type/id` -> withheld).
    part2_targets: std::sync::Mutex<std::collections::HashMap<String, bool>>,
}

pub struct FhirHandler {
    gw: Arc<Gateway>,
}

impl FhirHandler {
    pub fn new(gw: Arc<Gateway>) -> Self {
        FhirHandler { gw }
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
        // auth: the token endpoint is outside the FHIR base.
        if req.uri().path() == crate::auth::TOKEN_PATH {
            let (response, token) = gw.auth.token_endpoint(req).await;
            record.set_token(token);
            return ("token", Ok(response));
        }
        let Some(below_base) = below_base(req.uri().path(), &gw.base_path) else {
            return ("unrouted", Err(GatewayError::not_found("no FHIR endpoint at this path")));
        };
        let below_base = below_base.to_owned();
        // auth: discovery and metadata are public; everything
        // else is authenticated before it is even parsed.
        if below_base == ".well-known/smart-configuration" {
            record.set_interaction("smart-configuration");
            return ("smart-configuration", Ok(gw.auth.smart_configuration_response(req.method())));
        }
        let principal = if below_base == "metadata" {
            None
        } else {
            match gw.auth.authenticate(req.headers()).await {
                Ok(principal) => Some(principal),
                Err(err) => {
                    record.set_interaction("unauthenticated");
                    return ("unauthenticated", Err(err));
                }
            }
        };
        if let Some(principal) = &principal {
            record.set_principal(principal);
        }
        record.set_interaction("unparsed");
        let (parts, body) = req.into_parts();
        let body = match read_body(body, gw.config.server.max_request_body_bytes).await {
            Ok(body) => body,
            Err(err) => return ("unparsed", Err(err)),
        };
        let request = RequestParts {
            method: &parts.method,
            path: &below_base,
            query: parts.uri.query(),
            headers: &parts.headers,
            body: &body,
        };
        let mut fhir = match request::parse(&request, gw.parse_options) {
            Ok(fhir) => fhir,
            Err(err) => return ("unparsed", Err(err)),
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
            return (name, Err(err));
        }
        let self_url = self_url(&gw.public_base, &below_base, &fhir.params);
        // access: attribution and opt-outs, before anything goes
        // upstream (404 / 403 / narrowing / 400); fails closed.
        let access = match gw.access.decide(principal.as_deref(), &mut fhir).await {
            Ok(decision) => decision,
            Err(err) => return (name, Err(err)),
        };
        // redact: redaction decides on whole resources, so the
        // upstream never applies `_elements` / `_summary`; fhirwall does, after.
        let subset = crate::redact::Subset::take(&mut fhir.params);
        // plugins: the policy plugins' on-request, after the
        // built-in checks; a deny is a 403, a plugin failure fails closed.
        let policy = match self.policy_on_request(principal.as_deref(), &fhir, request_id).await {
            Ok(run) => run,
            Err(err) => return (name, Err(err)),
        };
        let ctx = RequestCtx {
            request_id: request_id.to_owned(),
            caller: Caller::new(principal),
            self_url,
            access_report: std::sync::Mutex::new(access.as_ref().map(|d| d.report()).unwrap_or_default()),
            access,
            subset,
            redaction: std::sync::Mutex::default(),
            policy: std::sync::Mutex::new(policy),
            plugin_counts: std::sync::Mutex::default(),
            part2_targets: std::sync::Mutex::default(),
        };
        let content_type = parts.headers.get(CONTENT_TYPE).cloned();
        let head = fhir.head;
        let chained = fhir.interaction.is_chained();
        let result = self.dispatch(&ctx, fhir, body, content_type).await;
        // Answers outside the chain (operations) get the policy verdicts here.
        let run = ctx.policy.lock().unwrap_or_else(|e| e.into_inner()).take();
        let result = match (result, run) {
            (Ok(response), Some(run)) if !chained => {
                let scope = ctx.access.as_ref().map(|d| d.scope.clone());
                self.policy_on_response(run, response, scope, record).await
            }
            (result, _) => result,
        };
        let counts = *ctx.plugin_counts.lock().unwrap_or_else(|e| e.into_inner());
        record.count_plugin(counts.dropped, counts.replaced);
        let result = result.map(|mut response| {
            if head {
                *response.body_mut() = http_body_util::Full::new(Bytes::new());
            }
            response
        });
        // access: what the response filter let out, for the audit record.
        if ctx.access.is_some() {
            record.set_filter_report(&ctx.access_report.lock().unwrap_or_else(|e| e.into_inner()));
        }
        // redact: its counts per reason, for the audit record.
        let redaction = *ctx.redaction.lock().unwrap_or_else(|e| e.into_inner());
        if !redaction.is_empty() {
            record.set_redaction_report(&redaction);
        }
        (name, result)
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
            let mut report = ctx.access_report.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(body) = self.gw.access.local_body(decision, &ctx.self_url, &mut report)? {
                return Ok(respond::fhir_json(StatusCode::OK, if head { Bytes::new() } else { body }));
            }
        }
        let (upstream_request, page_type): (UpstreamRequest, Option<String>) = match &fhir.interaction {
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
                // The loaded policy table (policy.dir over the built-in one), as the filter uses.
                let param = match self.gw.access.policy().rule(resource_type) {
                    crate::access::policy::TypeRule::Compartment(links) => links.narrow.clone(),
                    _ => None,
                }
                .ok_or_else(|| {
                    GatewayError::bad_request(format!("{resource_type} is not in the Patient compartment"))
                })?;
                let mut params = SearchParams::default();
                params.push(SearchParam::single(param, format!("Patient/{patient_id}")));
                params.params.extend(fhir.params.params.iter().cloned());
                return self.answer_search(ctx, first_page(resource_type, params)).await;
            }
            Interaction::Page { token } => {
                let page = self.gw.pages.open(&ctx.caller.binding, token)?;
                let start = answer::SearchStart {
                    resource_type: page.resource_type,
                    cursor: crate::chain::page::Cursor { path: page.upstream_path, skip: page.skip },
                    want: page.count.clamp(1, answer::MAX_PAGE),
                    from_token: true,
                };
                return self.answer_search(ctx, start).await;
            }
            Interaction::Operation(Operation::SystemExport) => {
                return Err(GatewayError::forbidden(
                    "system-level $export is not offered: Provider Access exports a Group (Group/{id}/$export)",
                ));
            }
            // plugins: HRex $member-match through the matcher plugin.
            Interaction::Operation(Operation::MemberMatch) => return self.member_match(ctx, &body).await,
            Interaction::Operation(op) => {
                return Err(GatewayError::new(
                    Blame::Caller,
                    StatusCode::NOT_IMPLEMENTED,
                    IssueCode::NotSupported,
                    format!("{op:?} is not available in this version of fhirwall"),
                ));
            }
            Interaction::Create { resource_type } => {
                (write(Method::POST, resource_type.clone(), body, content_type), None)
            }
            Interaction::Update { resource_type, id } => {
                (write(Method::PUT, format!("{resource_type}/{}", enc(id)), body, content_type), None)
            }
            Interaction::Patch { resource_type, id } => {
                (write(Method::PATCH, format!("{resource_type}/{}", enc(id)), body, content_type), None)
            }
            Interaction::Delete { resource_type, id } => {
                (write(Method::DELETE, format!("{resource_type}/{}", enc(id)), Bytes::new(), None), None)
            }
            Interaction::Batch => (write(Method::POST, String::new(), body, content_type), None),
        };
        let upstream_request = UpstreamRequest { request_id: ctx.request_id.clone(), ..upstream_request };
        let started = Instant::now();
        let result = self.gw.upstream.send(upstream_request).await;
        self.gw.metrics.record_upstream(started.elapsed(), result.is_ok());
        let upstream_response = result?;
        self.relay(ctx, upstream_response, page_type.as_deref(), head)
    }

    /// Turn an upstream answer into fhirwall's answer: classify the status,
    /// insist on complete JSON, seal paging links, rewrite every upstream URL.
    fn relay(
        &self,
        ctx: &RequestCtx,
        upstream: UpstreamResponse,
        page_type: Option<&str>,
        head: bool,
    ) -> Result<Response<Body>, GatewayError> {
        let status = upstream.status;
        let usable =
            status.is_success() || (status.is_client_error() && !matches!(status.as_u16(), 401 | 403 | 407));
        if !usable {
            return Err(GatewayError::bad_gateway("the upstream FHIR server failed")
                .with_detail(format!("upstream answered {status}")));
        }
        // access: a missing or deleted resource answers exactly
        // like a hidden one (same status, same body, no upstream headers).
        if let Some(decision) = &ctx.access
            && matches!(decision.mode, crate::access::Mode::Read | crate::access::Mode::History)
            && matches!(status.as_u16(), 404 | 410)
        {
            return Err(crate::access::decide::not_found());
        }
        let rewriter = self.gw.upstream.rewriter();
        let body =
            if upstream.body.is_empty() && (status == StatusCode::NO_CONTENT || status.is_client_error()) {
                None
            } else {
                Some(self.relay_body(ctx, &upstream, page_type)?)
            };
        let mut response = match (body, status.is_client_error()) {
            (Some(body), _) => respond::fhir_json(status, body),
            (None, true) => {
                let err = GatewayError::new(
                    Blame::Upstream,
                    status,
                    IssueCode::Processing,
                    "the upstream FHIR server refused the request",
                );
                respond::error(&err)
            }
            (None, false) => respond::empty(status),
        };
        for name in [ETAG, LAST_MODIFIED] {
            if let Some(value) = upstream.headers.get(&name) {
                response.headers_mut().insert(name, value.clone());
            }
        }
        for name in [LOCATION, CONTENT_LOCATION] {
            let Some(value) = upstream.headers.get(&name).and_then(|v| v.to_str().ok()) else { continue };
            let rewritten = rewriter.rewrite(value);
            // A relative location is on our base too; an absolute one must now
            // be on the public base, or it is dropped rather than leaked.
            let safe = !rewritten.contains("://") || rewritten.starts_with(rewriter.public_base());
            if safe && let Ok(v) = HeaderValue::from_str(&rewritten) {
                response.headers_mut().insert(name, v);
            }
        }
        if head {
            *response.body_mut() = http_body_util::Full::new(Bytes::new());
        }
        Ok(response)
    }

    fn relay_body(
        &self,
        ctx: &RequestCtx,
        upstream: &UpstreamResponse,
        page_type: Option<&str>,
    ) -> Result<Bytes, GatewayError> {
        let not_fhir = |why: &str| {
            GatewayError::bad_gateway("the upstream FHIR server sent an unusable answer")
                .with_detail(why.to_owned())
        };
        let content_type = upstream.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !content_type.to_ascii_lowercase().contains("json") {
            return Err(not_fhir(&format!("content type {content_type:?} is not JSON")));
        }
        let text = std::str::from_utf8(&upstream.body).map_err(|_| not_fhir("body is not UTF-8"))?;
        crate::chain::strict::check(text).map_err(|e| not_fhir(&e.to_string()))?;
        // Parsing validates the whole document: truncated or malformed JSON stops here.
        let object =
            RawObject::parse(text).map_err(|e| not_fhir(&format!("body is not a JSON object: {e}")))?;
        let resource_type =
            object.get_str("resourceType").ok_or_else(|| not_fhir("body has no resourceType"))?;
        if upstream.status.is_client_error() && resource_type != "OperationOutcome" {
            return Err(not_fhir("an error answer that is not an OperationOutcome"));
        }
        // access: the response filter, on every body that leaves
        // (Bundle entries, _include/_revinclude, contained, single resources).
        let (mut bundle_edit, mut filtered) = (None, None);
        if let Some(decision) = &ctx.access {
            let mut report = ctx.access_report.lock().unwrap_or_else(|e| e.into_inner());
            if resource_type == "Bundle" {
                bundle_edit = Some(self.gw.access.filter_bundle(decision, &object, &mut report)?);
            } else {
                filtered = self.gw.access.filter_resource(decision, text, &mut report)?;
            }
        }
        // redact: Part 2, drug PAs, service-date floor and
        // financial stripping on whatever the access filter let through.
        if resource_type != "CapabilityStatement" {
            let mut report = ctx.redaction.lock().unwrap_or_else(|e| e.into_inner());
            if resource_type == "Bundle" {
                bundle_edit = self.redact_bundle(ctx, &object, bundle_edit, &mut report)?;
            } else {
                let current = filtered.as_deref().unwrap_or(text);
                match self.gw.redactor.apply(current, &mut report) {
                    crate::redact::Verdict::Keep => {}
                    crate::redact::Verdict::Replace(t) => filtered = Some(t),
                    crate::redact::Verdict::Drop(_) => return Err(crate::access::decide::not_found()),
                }
                if let Some(subset) = &ctx.subset
                    && let Some(cut) = subset.apply(filtered.as_deref().unwrap_or(text))
                {
                    filtered = Some(cut);
                }
            }
        }
        let rewriter = self.gw.upstream.rewriter();
        // Only a Bundle (links) or the CapabilityStatement (security) is
        // rebuilt; anything else leaves as the upstream's bytes unless an
        // upstream URL has to be rewritten, so the common case copies nothing.
        let rebuilt = if resource_type == "Bundle" {
            let mut out = String::with_capacity(text.len() + 256);
            let mut failure = None;
            object.write_with(&mut out, |key, value| {
                // access: filtered entries; a total that counts only them.
                match (key, &bundle_edit) {
                    ("entry", Some(edit)) => return edit.entry.clone(),
                    ("total", Some(edit)) => return edit.total_member(),
                    _ => {}
                }
                if key != "link" {
                    return None;
                }
                match self.rewrite_links(ctx, value, page_type) {
                    Ok(links) => Some(links),
                    Err(e) => {
                        failure = Some(e);
                        Some(String::new())
                    }
                }
            });
            if let Some(err) = failure {
                return Err(err);
            }
            // access: listed roster Groups in a Bundle that had no entries.
            if object.get("entry").is_none()
                && let Some(entry) = bundle_edit.as_ref().and_then(|e| e.entry.as_deref())
                && !entry.is_empty()
            {
                crate::fhir::bundle::push_member(&mut out, "entry", entry);
            }
            Some(out)
        } else {
            filtered.take() // access: a rebuilt Group, or None
        };
        let rewritten = |text: &str| match rewriter.rewrite(text) {
            std::borrow::Cow::Owned(changed) => Some(changed),
            std::borrow::Cow::Borrowed(_) => None,
        };
        Ok(match rebuilt {
            Some(out) => {
                let changed = rewritten(&out);
                Bytes::from(changed.unwrap_or(out))
            }
            None => rewritten(text).map(Bytes::from).unwrap_or_else(|| upstream.body.clone()),
        })
    }

    /// redact: the redaction chain over a Bundle's entries (as the
    /// access filter left them), composed with the access filter's edit: the
    /// entries that remain, and a `total` that counts only them.
    fn redact_bundle(
        &self,
        ctx: &RequestCtx,
        object: &RawObject<'_>,
        access_edit: Option<crate::access::BundleEdit>,
        report: &mut crate::redact::RedactionReport,
    ) -> Result<Option<crate::access::BundleEdit>, GatewayError> {
        use crate::access::TotalEdit;
        let entries = match access_edit.as_ref().and_then(|e| e.entry.as_deref()) {
            Some("") => return Ok(access_edit),
            Some(entries) => entries,
            None => match object.get("entry") {
                Some(entries) => entries.get(),
                None => return Ok(access_edit),
            },
        };
        let edit = self.gw.redactor.entries_subset(entries, ctx.subset.as_ref(), report).map_err(|why| {
            GatewayError::bad_gateway("the upstream FHIR server sent an unusable answer")
                .with_detail(why.to_owned())
        })?;
        let Some(entry) = edit.entry else { return Ok(access_edit) };
        let total = match access_edit.as_ref().map(|e| e.total) {
            Some(TotalEdit::Set(_)) => TotalEdit::Set(edit.kept_matches),
            Some(other) => other,
            // No access edit: a count of the unfiltered matches must not leave.
            None if object.get("total").is_some() => TotalEdit::Drop,
            None => TotalEdit::Absent,
        };
        let dropped = access_edit.as_ref().map_or(0, |e| e.dropped) + edit.dropped;
        Ok(Some(crate::access::BundleEdit { entry: Some(entry), total, dropped, kept: edit.kept }))
    }

    /// `self` becomes this request's public URL; paging relations become
    /// sealed fhirwall links bound to the caller; anything else is dropped.
    fn rewrite_links(
        &self,
        ctx: &RequestCtx,
        links: &RawValue,
        page_type: Option<&str>,
    ) -> Result<String, GatewayError> {
        #[derive(serde::Deserialize)]
        struct Link {
            relation: Option<String>,
            url: Option<String>,
        }
        let links: Vec<Link> = serde_json::from_str(links.get()).map_err(|e| {
            GatewayError::bad_gateway("the upstream FHIR server sent an unusable answer")
                .with_detail(format!("Bundle.link: {e}"))
        })?;
        let rewriter = self.gw.upstream.rewriter();
        let mut out = Vec::new();
        for link in links {
            let (Some(relation), Some(url)) = (link.relation, link.url) else { continue };
            let url = match relation.as_str() {
                "self" => ctx.self_url.clone(),
                "next" | "previous" | "prev" | "first" | "last" => {
                    let (Some(resource_type), Some(path)) = (page_type, rewriter.strip_upstream_base(&url))
                    else {
                        continue;
                    };
                    let token = self.gw.pages.seal(&ctx.caller.binding, resource_type, path)?;
                    format!("{}/_page/{token}", self.gw.public_base)
                }
                _ => continue,
            };
            out.push(serde_json::json!({ "relation": relation, "url": url }));
        }
        Ok(serde_json::to_string(&out).unwrap_or_else(|_| "[]".into()))
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
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(GatewayError::new(
            Blame::Caller,
            StatusCode::PAYLOAD_TOO_LARGE,
            IssueCode::TooCostly,
            format!("request body larger than {limit} bytes"),
        )),
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
    answer::SearchStart {
        resource_type: resource_type.to_owned(),
        cursor: crate::chain::page::Cursor { path: with_query(resource_type.to_owned(), &params), skip: 0 },
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
