//! `POST {base}/Group/$provider-member-match` (Da Vinci PDex 2.2, the v2
//! "attestation" workflow of the Provider Access API): a provider submits
//! members it treats, each with a Provider Treatment Attestation; fhirwall
//! matches each against the payer's members with the configured `matcher`
//! plugin and answers three Groups. The MatchedMembers Group is stored as
//! an attribution roster of the caller's organization for
//! `member_match.group_ttl_days`: while it lives its members are visible to
//! that organization (opt-outs still apply on every request) and the Group
//! can be read, searched and exported (`Group/{id}/$davinci-data-export`)
//! by that organization only.
//!
//! - `request`: the `Parameters` body, checked (400 naming the part).
//! - `attestation`: whether an attestation is honoured.
//! - `directory`: the members matched against, read from the upstream.
//! - `groups`: the answer's Groups and `Parameters`.
//! - `jobs`: jobs and stored Groups in the store (any node answers).
//!
//! Per member: an unverified attestation → NonMatchedMembers; else the
//! matcher; no match, ambiguous, or a member without coverage in force
//! today (an `active` Coverage whose period covers today) →
//! NonMatchedMembers; a matched member who opted out →
//! ConsentConstrainedMembers (NonMatchedMembers when
//! `policy.reveal_opt_out = false`); else MatchedMembers. A plugin failure
//! fails the whole job (fail closed: nothing is answered).

pub mod attestation;
pub mod directory;
pub mod groups;
pub mod jobs;
pub mod request;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::MemberMatchConfig;
use crate::error::{GatewayError, Kind};
use crate::plugins::{CandidateSource, MatchAnswer, Plugins};
use directory::MemberDirectory;
use groups::{GroupContext, Placement};
use jobs::{Claim, JobError, MatchJobs};
use request::MemberBundle;

/// How long a runner's lease lasts without renewal.
pub const LEASE_S: i64 = 30;
/// Members matched between two progress writes (and lease renewals).
const SLICE: usize = 250;

/// What a job stores to run (again, on another node): who asked and the
/// checked request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub client_id: String,
    pub organization: String,
    pub npi: Option<String>,
    pub body: String,
}

/// A finished job: the answer and what the audit record needs.
#[derive(Debug, Clone)]
pub struct Finished {
    pub parameters: String,
    pub group_id: String,
    pub counts: (usize, usize, usize),
    /// Payer patient ids disclosed as matched.
    pub matched: Vec<String>,
    /// The MemberPatients of attested members the matcher did not match
    /// (counted against the brute-force budgets of `ops::throttle`).
    pub unmatched: Vec<serde_json::Value>,
}

/// The `$provider-member-match` service of one node.
pub struct ProviderMatches {
    pub jobs: MatchJobs,
    pub directory: MemberDirectory,
    pub settings: MemberMatchConfig,
    pub reveal_opt_out: bool,
    pub public_base: String,
    /// This node's name in leases.
    pub node: String,
}

/// A job id in a URL: 32 lowercase hex digits.
pub fn is_job_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ProviderMatches {
    pub fn status_url(&self, job_id: &str) -> String {
        format!("{}/_match/{job_id}", self.public_base)
    }

    /// Store a new job claimed by this node; 429 when the organization has
    /// as many jobs queued or running as it may.
    pub async fn create(&self, spec: &JobSpec, members: usize) -> Result<Claim, GatewayError> {
        let now = crate::clock::unix_now_s();
        let text = serde_json::to_string(spec).map_err(|e| GatewayError::internal(e.to_string()))?;
        let job = jobs::NewJob {
            client_id: &spec.client_id,
            organization: &spec.organization,
            request: &text,
            total: members as i64,
        };
        let lease = jobs::Lease { owner: &self.node, now, until: now + LEASE_S };
        match self.jobs.create_claimed(&job, &lease, self.settings.max_jobs_per_organization).await
        {
            Ok((_, claim)) => Ok(claim),
            Err(JobError::TooMany) => Err(GatewayError::of(
                Kind::Throttled,
                format!(
                    "this organization already has {} $provider-member-match request(s) running; retry when one has finished",
                    self.settings.max_jobs_per_organization
                ),
            )
            .with_header(http::header::RETRY_AFTER, http::HeaderValue::from(self.settings.retry_after_s))),
            Err(e) => Err(state_error(e)),
        }
    }

    /// Run a claimed job to the end and store its answer and Group.
    /// `members` is `spec.body` parsed (by the request, or by the node
    /// that takes the job over).
    pub async fn run(
        &self,
        claim: &Claim,
        spec: &JobSpec,
        members: Vec<MemberBundle>,
        plugins: &Plugins,
        access: &crate::access::Access,
    ) -> Result<Finished, GatewayError> {
        let today = crate::clock::today_utc();
        let mut placements: Vec<Option<Placement>> = vec![None; members.len()];
        // Attestations first: an unverified member is never matched.
        let mut to_match: Vec<usize> = Vec::new();
        let mut unmatched = Vec::new();
        for (n, m) in members.iter().enumerate() {
            match attestation::verify(m.attestation.as_ref(), &m.provider_ref, spec.npi.as_deref(), &today) {
                Ok(()) => to_match.push(n),
                Err(why) => {
                    tracing::debug!(job = %claim.job_id, member = n, reason = why.as_str(), "attestation not verified");
                    placements[n] = Some(non_matched(m));
                }
            }
        }
        if !to_match.is_empty() {
            let index = self.directory.get().await?;
            let source: Arc<dyn CandidateSource> = index;
            let members = Arc::new(members.clone());
            let mut done = members.len() - to_match.len();
            for slice in to_match.chunks(SLICE) {
                let answers = match_slice(plugins, &members, slice, source.clone()).await?;
                for (n, answer) in slice.iter().zip(answers) {
                    if matches!(answer, Answer::NotMatched | Answer::Matched { covered: false, .. })
                        && let Ok(patient) = serde_json::from_str(&members[*n].input.member_patient)
                    {
                        unmatched.push(patient);
                    }
                    placements[*n] = Some(self.place(&members[*n], answer, access).await?);
                }
                done += slice.len();
                let now = crate::clock::unix_now_s();
                self.jobs.progress(claim, done as i64, now, now + LEASE_S).await.map_err(state_error)?;
            }
        }
        let placements: Vec<Placement> = placements.into_iter().flatten().collect();
        let mut finished = self.finish(claim, spec, &placements, &today).await?;
        finished.unmatched = unmatched;
        Ok(finished)
    }

    /// Where one matcher answer puts a member.
    async fn place(
        &self,
        member: &MemberBundle,
        answer: Answer,
        access: &crate::access::Access,
    ) -> Result<Placement, GatewayError> {
        let Answer::Matched { patient, covered } = answer else { return Ok(non_matched(member)) };
        if !covered {
            return Ok(non_matched(member));
        }
        if access.is_opted_out(&patient).await? {
            return Ok(if self.reveal_opt_out {
                Placement::ConsentConstrained {
                    provider_ref: member.provider_ref.clone(),
                    display: member.display.clone(),
                }
            } else {
                non_matched(member)
            });
        }
        Ok(Placement::Matched {
            provider_ref: member.provider_ref.clone(),
            display: member.display.clone(),
            patient,
        })
    }

    async fn finish(
        &self,
        claim: &Claim,
        spec: &JobSpec,
        placements: &[Placement],
        today: &str,
    ) -> Result<Finished, GatewayError> {
        let now = crate::clock::unix_now_s();
        let ttl_days = i64::from(self.settings.group_ttl_days);
        let group_expires_at = now + ttl_days * 86_400;
        let last_day = crate::clock::date_of_unix_days(group_expires_at.div_euclid(86_400));
        let now_text = crate::clock::now_rfc3339();
        let ctx = GroupContext {
            job_id: &claim.job_id,
            organization: &spec.organization,
            npi: spec.npi.as_deref(),
            today,
            last_day: &last_day,
            now: &now_text,
        };
        let matched = groups::matched_group(&ctx, placements);
        let parameters = groups::parameters(&ctx, &matched, placements).to_string();
        let group_id = groups::matched_group_id(&claim.job_id);
        let job_expires_at = now + self.settings.result_ttl_s as i64;
        self.jobs
            .finish(
                claim,
                &spec.organization,
                &parameters,
                &group_id,
                &matched.to_string(),
                now,
                group_expires_at,
                job_expires_at,
            )
            .await
            .map_err(state_error)?;
        let mut matched_ids: Vec<String> = placements
            .iter()
            .filter_map(|p| match p {
                Placement::Matched { patient, .. } => Some(patient.clone()),
                _ => None,
            })
            .collect();
        matched_ids.sort();
        matched_ids.dedup();
        Ok(Finished {
            parameters,
            group_id,
            counts: groups::counts(placements),
            matched: matched_ids,
            unmatched: Vec::new(),
        })
    }

    /// Mark a job failed (its status then answers 500 with `failure`).
    pub async fn fail(&self, claim: &Claim, failure: &str) {
        let now = crate::clock::unix_now_s();
        if let Err(e) = self.jobs.fail(claim, failure, now, now + self.settings.result_ttl_s as i64).await {
            tracing::warn!(job = %claim.job_id, error = %e, "match job: cannot record the failure");
        }
    }
}

/// The matcher's answer for one member, reduced to what placement needs.
#[derive(Debug, Clone)]
enum Answer {
    Matched { patient: String, covered: bool },
    NotMatched,
}

fn non_matched(member: &MemberBundle) -> Placement {
    Placement::NonMatched { provider_ref: member.provider_ref.clone(), display: member.display.clone() }
}

/// Match one slice of members on blocking threads, one worker per core
/// (each with its own plugin instance per member, as `$member-match`).
async fn match_slice(
    plugins: &Plugins,
    members: &Arc<Vec<MemberBundle>>,
    slice: &[usize],
    source: Arc<dyn CandidateSource>,
) -> Result<Vec<Answer>, GatewayError> {
    let set = plugins.current();
    let Some(matcher) = set.matcher.clone() else {
        return Err(GatewayError::of(
            Kind::NotImplemented,
            "$provider-member-match needs a matcher plugin ([[plugins]] world = \"matcher\"), and none is configured",
        ));
    };
    let workers =
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 8).min(slice.len());
    let mut tasks = Vec::with_capacity(workers);
    for worker in 0..workers {
        let permit = plugins.host().permit(matcher.name()).await?;
        let matcher = matcher.clone();
        let members = members.clone();
        let source = source.clone();
        let mine: Vec<usize> = slice.iter().copied().skip(worker).step_by(workers).collect();
        let today = crate::clock::today_utc();
        tasks.push(tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut out = Vec::with_capacity(mine.len());
            for n in mine {
                let outcome = matcher.match_member(&members[n].input, source.clone())?;
                let answer = match outcome.answer {
                    MatchAnswer::Match { member, .. } => {
                        let covered = outcome.offered.get(&member).is_some_and(|c| in_force(c, &today));
                        Answer::Matched { patient: member, covered }
                    }
                    MatchAnswer::NoMatch { .. } | MatchAnswer::Ambiguous { .. } => Answer::NotMatched,
                };
                out.push(answer);
            }
            Ok::<_, crate::plugins::PluginError>(out)
        }));
    }
    // Reassemble in slice order (worker w took positions w, w + workers, ...).
    let mut per_worker = Vec::with_capacity(workers);
    for task in tasks {
        let answers = task.await.map_err(|e| GatewayError::internal(format!("match task: {e}")))??;
        per_worker.push(answers.into_iter());
    }
    let mut out = Vec::with_capacity(slice.len());
    for position in 0..slice.len() {
        let next = per_worker[position % workers].next();
        out.push(next.unwrap_or(Answer::NotMatched));
    }
    Ok(out)
}

/// Is the member enrolled today? Provider Access serves current enrollees:
/// a Coverage that is `active` and whose period covers today (a member
/// whose coverage ended, was cancelled or is a draft is not matched).
fn in_force(candidate: &crate::plugins::OfferedCandidate, today: &str) -> bool {
    candidate.coverages.iter().any(|text| {
        serde_json::from_str::<serde_json::Value>(text).is_ok_and(|c| {
            c["status"] == "active" && crate::access::attribution::period_covers(c.get("period"), today)
        })
    })
}

/// A store failure of a job or Group write, as the caller sees it (503).
pub fn state_error(e: JobError) -> GatewayError {
    match e {
        JobError::LeaseLost(job) => {
            GatewayError::of(Kind::Unavailable, "the match job was taken over or cancelled").with_detail(job)
        }
        other => GatewayError::of(Kind::Unavailable, "the state store is unavailable")
            .with_detail(other.to_string()),
    }
}

/// The refresh period of the member directory.
pub fn directory_refresh(settings: &MemberMatchConfig) -> Duration {
    Duration::from_secs(settings.directory_refresh_s)
}

/// The endpoints around a job: `{base}/_match/{job}` (GET status, DELETE cancel).
impl ProviderMatches {
    /// The status of a job, for the client that started it (anyone else:
    /// 404). Running: 202 + `X-Progress` + `Retry-After` (429 when polled
    /// sooner); done: 200 + the answer + `Expires`; failed: 500.
    /// The second value is the answer's matched patients (for the audit).
    pub async fn status(
        &self,
        client_id: &str,
        job_id: &str,
    ) -> Result<(http::Response<crate::respond::Body>, Vec<String>), GatewayError> {
        use http::header::RETRY_AFTER;
        let job = self.owned_job(client_id, job_id).await?;
        let retry = http::HeaderValue::from(self.settings.retry_after_s);
        match job.state {
            jobs::JobState::Queued | jobs::JobState::Running => {
                let now = crate::clock::unix_now_s();
                let gap = self.settings.retry_after_s as i64;
                if !self.jobs.poll(job_id, now, gap).await.map_err(state_error)? {
                    return Err(GatewayError::of(
                        Kind::Throttled,
                        "status polled sooner than Retry-After; wait before asking again",
                    )
                    .with_header(RETRY_AFTER, retry));
                }
                let progress = format!("members {}/{}", job.done_members, job.total_members);
                let mut response = crate::respond::empty(http::StatusCode::ACCEPTED);
                response.headers_mut().insert(RETRY_AFTER, retry);
                if let Ok(v) = http::HeaderValue::from_str(&progress) {
                    response.headers_mut().insert(http::HeaderName::from_static("x-progress"), v);
                }
                Ok((response, Vec::new()))
            }
            jobs::JobState::Done => {
                let body = job.result.unwrap_or_default();
                let matched = matched_patients(&body);
                Ok((crate::respond::fhir_json(http::StatusCode::OK, bytes::Bytes::from(body)), matched))
            }
            jobs::JobState::Failed => Err(GatewayError::of(
                Kind::Internal,
                format!(
                    "the $provider-member-match request failed: {}",
                    job.failure.as_deref().unwrap_or("unknown error")
                ),
            )),
        }
    }

    /// `DELETE`: forget the job (202); a Group it already made stays (an
    /// operator removes it through the admin API).
    pub async fn cancel(
        &self,
        client_id: &str,
        job_id: &str,
    ) -> Result<http::Response<crate::respond::Body>, GatewayError> {
        self.owned_job(client_id, job_id).await?;
        self.jobs.delete(job_id).await.map_err(state_error)?;
        Ok(crate::respond::empty(http::StatusCode::ACCEPTED))
    }

    async fn owned_job(&self, client_id: &str, job_id: &str) -> Result<jobs::Job, GatewayError> {
        let missing = || GatewayError::not_found("no such $provider-member-match job");
        if !is_job_id(job_id) {
            return Err(missing());
        }
        let job = self.jobs.get(job_id).await.map_err(state_error)?.ok_or_else(missing)?;
        if job.client_id != client_id {
            return Err(missing());
        }
        Ok(job)
    }
}

/// The payer patient ids in an answer's MatchedMembers Group.
fn matched_patients(parameters: &str) -> Vec<String> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(parameters) else { return Vec::new() };
    value["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == "MatchedMembers")
        .flat_map(|p| p["resource"]["member"].as_array().cloned().unwrap_or_default())
        .filter_map(|m| {
            m["entity"]["reference"].as_str().and_then(|r| r.strip_prefix("Patient/")).map(str::to_owned)
        })
        .collect()
}
