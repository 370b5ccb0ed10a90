//! Bulk export in the pipeline: the kick-off (checked, then queued as a
//! job), the Bulk Data endpoints around a job (`{base}/_export/...`), and
//! the hook points the export runner calls ([`ExportHost`]) — above all
//! [`ExportHost::search`], which runs a batch's search through the very
//! stages an on-demand search runs, as the job's client.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response};
use hyper::Request;
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::answer::search_request;
use super::{Caller, FhirHandler, RequestCtx};
use crate::access::Scope;
use crate::audit::AuditRecord;
use crate::auth::{Delegation, Perms, Principal};
use crate::chain::EntryMode;
use crate::chain::disclosure::Disclosure;
use crate::error::GatewayError;
use crate::fhir::request::Operation;
use crate::fhir::{FhirRequest, Interaction, SearchParams};
use crate::ops::export::kickoff::{self, ExportOperation, KickoffRules};
use crate::ops::export::limiter::RateLimiter;
use crate::ops::export::runner::{BatchQuery, ExportHost, Exported};
use crate::respond::Body;

/// Most upstream pages one batch search follows (a loop guard; a real
/// search of one batch's patients ends far sooner).
const MAX_SEARCH_PAGES: usize = 100_000;

impl FhirHandler {
    /// `Group/{id}/$export` and `Group/{id}/$davinci-data-export`: the
    /// kick-off read and checked, then queued (202 + Content-Location).
    /// The access stage has already refused a Group that is not the caller's.
    pub(super) async fn export_kickoff(
        &self,
        ctx: &RequestCtx,
        operation: &Operation,
        params: &SearchParams,
        body: &Bytes,
    ) -> Result<Response<Body>, GatewayError> {
        let principal = ctx
            .caller
            .principal
            .as_ref()
            .ok_or_else(|| GatewayError::forbidden("an access token is required"))?;
        let (operation, group) = match operation {
            Operation::GroupExport { group } => (ExportOperation::Bulk, group),
            Operation::DavinciDataExport { group } => (ExportOperation::Davinci, group),
            _ => return Err(GatewayError::internal("export kick-off for another operation")),
        };
        if !self.gw.auth.registered_allows(&principal.client_id, "Group", Perms::R).await? {
            return Err(GatewayError::forbidden(
                "exports need read on Group in the client's registered scopes",
            ));
        }
        let request = {
            let policy = self.gw.access.policy();
            let all_types = policy.exportable_types();
            let in_scope = |t: &str| principal.allows(t, Perms::READ);
            let exportable = |t: &str| policy.export_link(t).is_some();
            let patient_link = |t: &str, p: &str| policy.is_patient_param(t, p);
            let rules = KickoffRules {
                in_scope: &in_scope,
                exportable: &exportable,
                all_types: &all_types,
                patient_link: &patient_link,
            };
            kickoff::read(operation, group, params, body, ctx.prefer, &rules)?
        };
        let (job_id, response) = self.gw.exports.start(principal, request, ctx.self_url.clone()).await?;
        tracing::info!(request_id = %ctx.request_id, job = %job_id, "export queued");
        Ok(response)
    }

    /// `{base}/_export/{job}` (GET status, DELETE cancel) and
    /// `{base}/_export/{job}/files/{n}` (GET download). `None` when the path
    /// is not one of these.
    pub(super) async fn export_endpoint(
        &self,
        req: &Request<Incoming>,
        below_base: &str,
        principal: &Principal,
        record: &mut AuditRecord,
    ) -> Option<(&'static str, Result<Response<Body>, GatewayError>)> {
        let rest = below_base.strip_prefix("_export/")?;
        let segments: Vec<&str> = rest.split('/').collect();
        let exports = &self.gw.exports;
        let method = req.method();
        let (name, result) = match (method, segments.as_slice()) {
            (&Method::GET, [job]) => ("export-status", exports.status(principal, job).await),
            (&Method::DELETE, [job]) => ("export-cancel", exports.cancel(principal, job).await),
            (&Method::GET, [job, "files", n]) => {
                let gzip = accepts_gzip(req.headers());
                ("export-download", exports.download(principal, job, n, gzip).await)
            }
            (_, [_] | [_, "files", _]) => (
                "export-status",
                Err(GatewayError::method_not_allowed("export status takes GET or DELETE, files GET")),
            ),
            _ => ("export-status", Err(GatewayError::not_found("no such export job"))),
        };
        record.set_interaction(name);
        if let Some(job) = segments.first().filter(|j| j.len() <= 64) {
            record.detail("export.job", (*job).to_owned());
        }
        if let [_, "files", n] = segments.as_slice()
            && n.len() <= 8
        {
            record.detail("export.file", (*n).to_owned());
        }
        Some((name, result))
    }
}

/// Does the client accept gzip (`Accept-Encoding`, q > 0)?
fn accepts_gzip(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let refused = parts.any(|p| p.replace(' ', "").eq_ignore_ascii_case("q=0"));
            (name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip")) && !refused
        })
}

impl ExportHost for FhirHandler {
    async fn principal(&self, delegation: &Delegation) -> Result<Arc<Principal>, GatewayError> {
        self.gw.auth.resume(delegation).await
    }

    async fn scope(&self, organization: &str) -> Result<Arc<Scope>, GatewayError> {
        self.gw.access.scope(organization).await
    }

    fn patient_link(&self, resource_type: &str) -> Option<String> {
        self.gw.access.policy().export_link(resource_type)
    }

    /// The batch's search as an on-demand search would run: the scopes,
    /// the access decision (a member no longer visible is a 403, so the
    /// runner hands only visible ones), the policy plugins' on-request, and
    /// every upstream page through the chain — access, data scope, hidden
    /// patients, financial, Part 2 by reference, plugins. Upstream requests
    /// wait their turn at `limiter`.
    async fn search(
        &self,
        who: Arc<Principal>,
        query: BatchQuery,
        limiter: Arc<RateLimiter>,
        out: mpsc::Sender<Vec<Exported>>,
    ) -> Result<Disclosure, GatewayError> {
        let resource_type = query.resource_type.clone();
        let mut fhir = FhirRequest {
            interaction: Interaction::SearchType { resource_type: resource_type.clone() },
            params: query.params,
            head: false,
        };
        who.authorize(&mut fhir)?;
        let access = self.gw.access.decide(Some(&who), &mut fhir).await?;
        if access.as_ref().is_none_or(|d| d.local.is_some()) {
            // Nobody visible to search for: nothing leaves.
            return Ok(Disclosure::default());
        }
        let policy = self.policy_on_request(Some(&who), &fhir, &query.request_id).await?;
        let self_url = format!("{}/{resource_type}", self.gw.public_base);
        let mut ctx =
            RequestCtx::new(&query.request_id, Caller::new(Some(who)), self_url, access, None, policy);
        ctx.limiter = Some(limiter);
        self.load_member_ids(&ctx).await?;
        let query = fhir.params.to_query_string();
        let mut path = if query.is_empty() { resource_type } else { format!("{resource_type}?{query}") };
        let mut visited = std::collections::HashSet::new();
        loop {
            if !visited.insert(path.clone()) || visited.len() > MAX_SEARCH_PAGES {
                return Err(GatewayError::bad_gateway("the upstream FHIR server sent an unusable answer")
                    .with_detail("the upstream's paging links loop"));
            }
            let upstream = self.ask(&ctx, search_request(&path)).await?;
            let (entries, next) = self.search_page(&ctx, &upstream)?;
            let entries = self.withhold_part2_referrers(&ctx, entries).await?;
            let entries = self.plugin_entries(&ctx, entries).await?;
            let page: Vec<Exported> = entries
                .into_iter()
                .filter(|e| e.mode == EntryMode::Match)
                .map(|e| Exported { key: e.key, resource: e.resource })
                .collect();
            if out.send(page).await.is_err() {
                return Err(GatewayError::internal("the export writer stopped"));
            }
            match next {
                Some(next) => path = next,
                None => break,
            }
        }
        let disclosure = ctx.disclosure().clone();
        Ok(disclosure)
    }

    async fn audit(&self, record: AuditRecord) -> Result<(), GatewayError> {
        self.gw.audit.record(&record).await.map(|_| ()).map_err(|e| crate::audit::fail_closed(&e))
    }
}
