//! `$provider-member-match` in the pipeline: the request read and checked,
//! a job stored (so any node can answer its status) and run — at once for
//! a small request without `Prefer: respond-async` (200 with the answer),
//! in the background otherwise (202 + `Content-Location`) — and the status
//! endpoint `{base}/_match/{job}`. A sweeper on every node removes expired
//! jobs and Groups and re-runs jobs whose node died.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LOCATION;
use http::{HeaderValue, Method, Response, StatusCode};
use hyper::Request;
use hyper::body::Incoming;

use super::{FhirHandler, RequestCtx};
use crate::audit::AuditRecord;
use crate::auth::Principal;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::ops::provider_match::jobs::Claim;
use crate::ops::provider_match::{Finished, JobSpec, request};
use crate::respond::{self, Body};

/// How often each node sweeps expired jobs and Groups and looks for
/// abandoned jobs.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

impl FhirHandler {
    /// `POST {base}/Group/$provider-member-match`.
    pub(super) async fn provider_member_match(
        &self,
        ctx: &RequestCtx,
        body: &Bytes,
    ) -> Result<Response<Body>, GatewayError> {
        let principal = ctx
            .caller
            .principal
            .as_ref()
            .ok_or_else(|| GatewayError::forbidden("an access token is required"))?;
        if self.gw.plugins.current().matcher.is_none() {
            return Err(GatewayError::of(
                crate::error::Kind::NotImplemented,
                "$provider-member-match needs a matcher plugin ([[plugins]] world = \"matcher\"), and none is configured",
            ));
        }
        let service = &self.gw.provider_matches;
        let settings = &service.settings;
        let members = request::parse(body, settings.max_members)?;
        let respond_async = ctx.prefer.respond_async;
        if !respond_async && members.len() > settings.sync_max_members {
            return Err(GatewayError::bad_request(format!(
                "$provider-member-match: {} members need `Prefer: respond-async` (at most {} are answered at once)",
                members.len(),
                settings.sync_max_members
            )));
        }
        // Guessing is throttled as for $member-match (HREX-10): a client
        // whose attested members failed to match too often waits.
        self.gw.match_throttle.check_client(&principal.client_id).await?;
        let spec = JobSpec {
            client_id: principal.client_id.clone(),
            organization: principal.organization.clone(),
            npi: principal.npi.clone(),
            body: String::from_utf8_lossy(body).into_owned(),
        };
        let claim = service.create(&spec, members.len()).await?;
        {
            let mut details = ctx.audit_details.lock().unwrap_or_else(|e| e.into_inner());
            details.push(("match.job", claim.job_id.clone()));
            details.push(("match.members", members.len().to_string()));
        }
        if respond_async {
            let status_url = service.status_url(&claim.job_id);
            tokio::spawn(run_job(self.gw.clone(), claim, spec, members, true));
            let mut response = respond::empty(StatusCode::ACCEPTED);
            if let Ok(v) = HeaderValue::from_str(&status_url) {
                response.headers_mut().insert(CONTENT_LOCATION, v);
            }
            return Ok(response);
        }
        let finished = run_job(self.gw.clone(), claim, spec, members, false).await?;
        add_counts(&mut ctx.audit_details.lock().unwrap_or_else(|e| e.into_inner()), &finished);
        ctx.disclosure().patients.extend(finished.matched.iter().cloned());
        Ok(respond::fhir_json(StatusCode::OK, Bytes::from(finished.parameters)))
    }

    /// `{base}/_match/{job}`: GET status, DELETE cancel. `None` when the
    /// path is not one.
    pub(super) async fn match_endpoint(
        &self,
        req: &Request<Incoming>,
        below_base: &str,
        principal: &Principal,
        record: &mut AuditRecord,
    ) -> Option<(&'static str, Result<Response<Body>, GatewayError>)> {
        let job = below_base.strip_prefix("_match/")?;
        let service = &self.gw.provider_matches;
        let (name, result) = match *req.method() {
            Method::GET => {
                let result = service.status(&principal.client_id, job).await.map(|(response, matched)| {
                    if !matched.is_empty() {
                        let disclosure = crate::chain::disclosure::Disclosure {
                            patients: matched.into_iter().collect(),
                            ..Default::default()
                        };
                        record.set_disclosure(&disclosure);
                    }
                    response
                });
                ("provider-member-match-status", result)
            }
            Method::DELETE => {
                ("provider-member-match-cancel", service.cancel(&principal.client_id, job).await)
            }
            _ => (
                "provider-member-match-status",
                Err(GatewayError::method_not_allowed("a $provider-member-match status takes GET or DELETE")),
            ),
        };
        record.set_interaction(name);
        if job.len() <= 64 {
            record.detail("match.job", job.to_owned());
        }
        Some((name, result))
    }
}

/// Run a claimed job; a failure is recorded on the job (its status then
/// answers 500). `background`: write the completion audit record (a
/// request answered at once is audited by its own record).
async fn run_job(
    gw: Arc<Gateway>,
    claim: Claim,
    spec: JobSpec,
    members: Vec<request::MemberBundle>,
    background: bool,
) -> Result<Finished, GatewayError> {
    let service = &gw.provider_matches;
    let result = service.run(&claim, &spec, members, &gw.plugins, &gw.access).await;
    match &result {
        Ok(finished) => {
            gw.match_throttle.record_failures(&spec.client_id, &finished.unmatched).await;
            // The new Group counts on this node's very next request.
            if let Err(e) = gw.access.invalidate_snapshot().await {
                tracing::warn!(error = %e, "access snapshot not refreshed after a match");
            }
            tracing::info!(job = %claim.job_id, matched = finished.counts.0, non_matched = finished.counts.1,
                constrained = finished.counts.2, "provider-member-match done");
            if background {
                let record = completion_record(&claim, &spec, finished);
                if let Err(e) = gw.audit.record(&record).await {
                    tracing::error!(job = %claim.job_id, error = %e, "audit: cannot record a provider-member-match completion");
                }
            }
        }
        Err(e) => {
            tracing::warn!(job = %claim.job_id, error = %e, detail = ?e.detail, "provider-member-match failed");
            service.fail(&claim, &e.message).await;
        }
    }
    result
}

fn add_counts(details: &mut Vec<(&'static str, String)>, finished: &Finished) {
    let (matched, non_matched, constrained) = finished.counts;
    details.push(("match.matched", matched.to_string()));
    details.push(("match.non-matched", non_matched.to_string()));
    details.push(("match.consent-constrained", constrained.to_string()));
    details.push(("match.group", format!("Group/{}", finished.group_id)));
}

/// The record of a job finished in the background: who, the counts, and
/// the payer patients matched (their ids leave with the answer).
fn completion_record(claim: &Claim, spec: &JobSpec, finished: &Finished) -> AuditRecord {
    let mut record = AuditRecord::new(
        crate::audit::Kind::Rest {
            interaction: "provider-member-match-complete",
            operation: Some("provider-member-match"),
        },
        crate::audit::event::new_event_id(),
    );
    record.who.client_id = Some(spec.client_id.clone());
    record.who.organization = Some(spec.organization.clone());
    record.who.npi = spec.npi.clone();
    record.who.authenticated = true;
    record.status = 200;
    record.resources.insert(format!("Group/{}", finished.group_id));
    record.detail("match.job", claim.job_id.clone());
    let mut details = Vec::new();
    add_counts(&mut details, finished);
    for (name, value) in details {
        record.detail(name, value);
    }
    let disclosure = crate::chain::disclosure::Disclosure {
        patients: finished.matched.iter().cloned().collect(),
        ..Default::default()
    };
    record.set_disclosure(&disclosure);
    record
}

/// Every node: remove expired jobs and Groups, and take over jobs whose
/// runner's lease ran out (its node died).
pub fn spawn_sweeper(gw: Arc<Gateway>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let service = &gw.provider_matches;
            let now = crate::clock::unix_now_s();
            match service.jobs.sweep(now).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(groups = n, "expired MatchedMembers Groups removed");
                    if let Err(e) = gw.access.invalidate_snapshot().await {
                        tracing::warn!(error = %e, "access snapshot not refreshed after a sweep");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "provider-member-match sweep failed"),
            }
            let lease = now + crate::ops::provider_match::LEASE_S;
            match service.jobs.claim_abandoned(&service.node, now, lease).await {
                Ok(Some(claim)) => {
                    let job = service.jobs.get(&claim.job_id).await.ok().flatten();
                    let stored =
                        job.and_then(|j| serde_json::from_str::<JobSpec>(&j.request).ok()).and_then(|spec| {
                            request::parse(spec.body.as_bytes(), usize::MAX).ok().map(|m| (spec, m))
                        });
                    let Some((spec, members)) = stored else {
                        service.fail(&claim, "the stored request could not be read").await;
                        continue;
                    };
                    tracing::info!(job = %claim.job_id, "provider-member-match taken over from a node that stopped");
                    let _ = run_job(gw.clone(), claim, spec, members, true).await;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "provider-member-match: looking for abandoned jobs failed")
                }
            }
        }
    })
}
