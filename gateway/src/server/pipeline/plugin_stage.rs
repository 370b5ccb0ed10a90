//! The plugin stages of the pipeline:
//! - `policy_on_request`: every policy plugin's `on-request`, after the
//!   built-in auth and access decisions (a deny is a 403);
//! - `policy_on_response`: `on-resource` over what the built-in access and
//!   redaction filters let out (drop, or narrow; never add);
//! - `member_match`: `$member-match` through the matcher plugin.
//!
//! Plugin calls run on blocking threads (a plugin may use up to its
//! `timeout_ms` of CPU); any plugin failure fails the request closed.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;

use super::{FhirHandler, RequestCtx};
use crate::audit::AuditRecord;
use crate::error::{GatewayError, Kind};
use crate::fhir::FhirRequest;
use crate::ops::throttle::Settled;
use crate::plugins::policy::{BodyOutcome, Decision};
use crate::plugins::{PolicyContext, PolicyRun};
use crate::respond::{self, Body};

impl FhirHandler {
    /// Run `on-request` of every policy plugin; the run is kept for the
    /// response. `None` when no policy plugin is configured (or no caller).
    pub(super) async fn policy_on_request(
        &self,
        principal: Option<&crate::auth::Principal>,
        fhir: &FhirRequest,
        request_id: &str,
    ) -> Result<Option<PolicyRun>, GatewayError> {
        let set = self.gw.plugins.current();
        let Some(principal) = principal else { return Ok(None) };
        if set.policies.is_empty() {
            return Ok(None);
        }
        let ctx = PolicyContext {
            request_id: request_id.to_owned(),
            client_id: principal.client_id.clone(),
            organization: principal.organization.clone(),
            npi: principal.npi.clone(),
            scopes: principal.scopes.to_string().split_whitespace().map(str::to_owned).collect(),
            interaction: fhir.interaction.name().to_owned(),
            resource_type: fhir.interaction.resource_type().map(str::to_owned),
            patients: crate::audit::facts::named_patients(fhir).into_iter().collect(),
        };
        let mut run = PolicyRun::new(&ctx, set.policies.clone());
        run.acquire(self.gw.plugins.host()).await?;
        let (run, decision) = tokio::task::spawn_blocking(move || {
            let decision = run.on_request();
            (run, decision)
        })
        .await
        .map_err(|e| GatewayError::internal(format!("policy plugin task: {e}")))?;
        match decision? {
            Decision::Allow => Ok(Some(run)),
            Decision::Deny(reason) => {
                Err(GatewayError::of(Kind::PolicyRefused, format!("refused by payer policy: {reason}")))
            }
        }
    }

    /// Apply `on-resource` to a successful answer's body.
    pub(super) async fn policy_on_response(
        &self,
        mut run: PolicyRun,
        response: Response<Body>,
        scope: Option<std::sync::Arc<crate::access::Scope>>,
        record: &mut AuditRecord,
    ) -> Result<Response<Body>, GatewayError> {
        if !response.status().is_success() {
            return Ok(response);
        }
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        if bytes.is_empty() {
            return Ok(Response::from_parts(parts, respond_body(bytes)));
        }
        let access = self.gw.access.clone();
        let (outcome, report) = tokio::task::spawn_blocking(move || {
            // A replacement narrows a resource the built-in filters let out;
            // it goes through the access check again all the same.
            let recheck = |text: &str| match &scope {
                Some(scope) => matches!(access.check_resource(scope, text), crate::access::Verdict::Keep(_)),
                None => crate::fhir::bundle::RawObject::parse(text).is_ok(),
            };
            run.filter_body(&bytes, &recheck)
        })
        .await
        .map_err(|e| GatewayError::internal(format!("policy plugin task: {e}")))??;
        let replaced = report.redactions(crate::chain::disclosure::Reason::Plugin) > 0;
        record.set_disclosure(&report);
        match outcome {
            BodyOutcome::Body(body) => {
                let mut parts = parts;
                parts.headers.remove(http::header::CONTENT_LENGTH);
                if replaced {
                    parts.headers.remove(http::header::ETAG);
                }
                Ok(Response::from_parts(parts, respond_body(body)))
            }
            BodyOutcome::Withheld(_) => Err(crate::access::decide::not_found()),
        }
    }

    /// `POST {base}/Patient/$member-match`.
    pub(super) async fn member_match(
        &self,
        ctx: &RequestCtx,
        body: &Bytes,
    ) -> Result<Response<Body>, GatewayError> {
        let op = crate::ops::member_match::MemberMatch {
            upstream: &self.gw.upstream,
            plugins: &self.gw.plugins,
            config: &self.gw.config.member_match,
            request_id: &ctx.request_id,
        };
        let crate::ops::member_match::MatchRequest { input, member_patient, consent } =
            crate::ops::member_match::parse(body)?;
        // Counted before the matcher runs (HREX-10): a spent budget is a 429.
        let throttle = &self.gw.match_throttle;
        let attempt = throttle.admit(&ctx.caller.client_id, &member_patient).await?;
        // A Consent that cannot be honoured is a 422 before any matching (HREX-04).
        let consented = match (&consent, ctx.caller.principal.as_deref()) {
            (None, _) => Ok(()),
            (Some(consent), Some(p)) => crate::ops::consent::check(
                consent,
                crate::ops::consent::Requester { organization: &p.organization, npi: p.npi.as_deref() },
                &crate::clock::today_utc(),
            ),
            (Some(_), None) => Err(GatewayError::forbidden("no authenticated requester")),
        };
        let access = self.gw.access.clone();
        let result = match consented {
            Ok(()) => op.run(input, |member| async move { access.is_opted_out(&member).await }).await,
            Err(e) => Err(e),
        };
        let settled = match &result {
            Err(e) if e.status == StatusCode::UNPROCESSABLE_ENTITY => Settled::Failed,
            _ => Settled::Released,
        };
        throttle.settle(attempt, settled).await;
        let matched = result?;
        // The audit record names the member whose identifier left.
        ctx.disclosure().patients.insert(matched.member.clone());
        Ok(respond::fhir_json(StatusCode::OK, matched.body))
    }
}

fn respond_body(bytes: Bytes) -> Body {
    crate::respond::full(bytes)
}
