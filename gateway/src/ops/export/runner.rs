//! The export runner: a background task per node that claims queued jobs
//! and runs them batch by batch.
//!
//! A job's members are fixed by its first runner (the Group's visible
//! members, narrowed by `patient`). Each batch of `export.batch_patients`
//! members is checked against the organization's scope *when the batch
//! runs* (an opt-out set after the kick-off holds from the next batch on),
//! then one patient-scoped search per type (and per `_typeFilter`) goes
//! through the gateway's own response chain as the job's client
//! ([`ExportHost::search`]: access, Part 2, date floor, financial, drug PAs,
//! plugins), following the upstream's pages. What survives is written as
//! segments; a resource reached from two members is written once. After the
//! batch a fenced checkpoint records the segments, so a job resumes after a
//! crash at the first batch not checkpointed, on any node, with nothing
//! missing or twice.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::jobs::{Claim, Job, JobError};
use super::manifest::{self, Segment};
use super::records::{batch_record, completion_record};
use super::segments::{SegmentWriter, key_hash};
use super::{Exports, JobSpec, limiter::RateLimiter};
use crate::access::Scope;
use crate::audit::AuditRecord;
use crate::auth::{Delegation, Principal};
use crate::chain::disclosure::Disclosure;
use crate::error::{Blame, GatewayError};
use crate::fhir::{SearchParam, SearchParams};

/// Entries asked of the upstream per page.
const UPSTREAM_PAGE: &str = "250";
/// How often an idle runner looks for work.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// How often expired jobs are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// A batch failing closed (store or policy unavailable) is tried again this
/// many times, with growing pauses, before the job fails.
const BATCH_ATTEMPTS: u32 = 5;
/// A type's searches of one batch are tried this many times while the
/// upstream fails them (5xx, timeouts) before the failure is reported in
/// the manifest's `error`.
const TYPE_ATTEMPTS: u32 = 3;

/// One resource that passed the chain: its `Type/id` and its JSON.
pub struct Exported {
    pub key: String,
    pub resource: String,
}

/// One search a batch runs.
pub struct BatchQuery {
    pub resource_type: String,
    pub params: SearchParams,
    pub request_id: String,
}

/// What the runner needs of the gateway: the hook points, implemented by
/// the FHIR pipeline (so a batch runs the very chain on-demand reads run).
pub trait ExportHost: Send + Sync + 'static {
    /// The job's client as a principal again; refused when it is no longer
    /// registered as it was.
    fn principal(
        &self,
        delegation: &Delegation,
    ) -> impl Future<Output = Result<Arc<Principal>, GatewayError>> + Send;
    /// What `organization` may see now (opt-outs as of now).
    fn scope(&self, organization: &str) -> impl Future<Output = Result<Arc<Scope>, GatewayError>> + Send;
    /// The search parameter that links `resource_type` to its patient
    /// (`_id` for Patient); `None`: the type is not exportable.
    fn patient_link(&self, resource_type: &str) -> Option<String>;
    /// Run one search as `who` through the response chain, following the
    /// upstream's pages, sending each page's survivors to `out` in order.
    /// Returns what the chain disclosed and withheld.
    fn search(
        &self,
        who: Arc<Principal>,
        query: BatchQuery,
        limiter: Arc<RateLimiter>,
        out: mpsc::Sender<Vec<Exported>>,
    ) -> impl Future<Output = Result<Disclosure, GatewayError>> + Send;
    /// Write an audit record (durably).
    fn audit(&self, record: AuditRecord) -> impl Future<Output = Result<(), GatewayError>> + Send;
}

/// What a job runs over, fixed by its first runner.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Plan {
    members: Vec<String>,
}

/// Where a job stands: written after every batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Progress {
    pub next_batch: usize,
    pub segments: Vec<Segment>,
    /// Diagnostics of what failed per type and batch (the manifest's `error`).
    pub errors: Vec<String>,
    /// Members no longer visible when their batch ran.
    pub left_out: usize,
    /// Patients whose data left (for the completion audit record).
    pub patients: BTreeSet<String>,
}

/// Why a job stopped.
enum Stop {
    /// Another node holds the job now, or it was cancelled: write nothing.
    LeaseLost,
    /// The job cannot finish (caller-safe text).
    Failed(String),
}

impl From<JobError> for Stop {
    fn from(e: JobError) -> Self {
        match e {
            JobError::LeaseLost(_) => Stop::LeaseLost,
            other => {
                tracing::warn!(error = %other, "export: job storage failed");
                Stop::Failed("the export's job storage failed".into())
            }
        }
    }
}

/// The runner of one node.
pub struct Runner<H: ExportHost> {
    host: Arc<H>,
    exports: Arc<Exports>,
    node: String,
}

impl<H: ExportHost> Runner<H> {
    pub fn new(host: Arc<H>, exports: Arc<Exports>) -> Arc<Runner<H>> {
        let node = format!("node-{}", hex::encode(rand::random::<[u8; 6]>()));
        Arc::new(Runner { host, exports, node })
    }

    /// Claim and run jobs until `stop`; sweep expired jobs on the way.
    pub fn spawn(self: Arc<Self>, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut last_sweep = tokio::time::Instant::now() - SWEEP_EVERY;
            loop {
                if *stop.borrow() {
                    break;
                }
                if last_sweep.elapsed() >= SWEEP_EVERY {
                    last_sweep = tokio::time::Instant::now();
                    self.exports.sweep_expired().await;
                }
                let claimed = self.claim_one().await;
                if !claimed {
                    tokio::select! {
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                        _ = self.exports.wake.notified() => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        })
    }

    /// Claim one job and start it; `false` when there was none to take.
    async fn claim_one(self: &Arc<Self>) -> bool {
        let settings = &self.exports.settings;
        let now = crate::clock::unix_now_s();
        let lease_until = now + settings.lease_s as i64;
        match self.exports.jobs.claim(&self.node, now, lease_until, settings.max_running_jobs).await {
            Ok(Some(claim)) => {
                let runner = self.clone();
                tokio::spawn(async move { runner.run(claim).await });
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "export: cannot claim jobs");
                false
            }
        }
    }

    async fn run(self: Arc<Self>, claim: Claim) {
        tracing::info!(job = %claim.job_id, fence = claim.fence, node = %self.node, "export job claimed");
        let (lease_lost_tx, lease_lost) = watch::channel(false);
        let keeper = self.clone().keep_lease(claim.clone(), lease_lost_tx);
        let outcome = tokio::select! {
            outcome = self.run_job(&claim) => outcome,
            _ = wait_true(lease_lost) => Err(Stop::LeaseLost),
        };
        keeper.abort();
        match outcome {
            Ok(()) => tracing::info!(job = %claim.job_id, "export job done"),
            Err(Stop::LeaseLost) => {
                tracing::info!(job = %claim.job_id, "export job: lease lost (cancelled or taken over)");
                // Cancelled: whatever this runner stored after the DELETE goes too.
                if matches!(self.exports.jobs.get(&claim.job_id).await, Ok(None)) {
                    let _ = self.exports.files.delete_job(&claim.job_id).await;
                }
            }
            Err(Stop::Failed(why)) => {
                tracing::warn!(job = %claim.job_id, reason = %why, "export job failed");
                let now = crate::clock::unix_now_s();
                let expires_at = now + self.exports.settings.expire_s as i64;
                if let Err(e) = self.exports.jobs.fail(&claim, &why, expires_at, now).await {
                    tracing::warn!(job = %claim.job_id, error = %e, "export job: cannot record the failure");
                }
            }
        }
    }

    /// Renew the lease every third of its length until aborted; flags a
    /// lost lease (the job was cancelled or another node took it).
    fn keep_lease(self: Arc<Self>, claim: Claim, lost: watch::Sender<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let lease_s = self.exports.settings.lease_s;
            let every = Duration::from_millis(lease_s * 1000 / 3);
            loop {
                tokio::time::sleep(every).await;
                let now = crate::clock::unix_now_s();
                match self.exports.jobs.renew(&claim, now, now + lease_s as i64).await {
                    Ok(()) => {}
                    Err(JobError::LeaseLost(_)) => {
                        let _ = lost.send(true);
                        return;
                    }
                    Err(e) => tracing::warn!(job = %claim.job_id, error = %e, "export: lease renewal failed"),
                }
            }
        })
    }

    async fn run_job(&self, claim: &Claim) -> Result<(), Stop> {
        let job = self.exports.jobs.get(&claim.job_id).await?.ok_or(Stop::LeaseLost)?;
        let spec: JobSpec = serde_json::from_str(&job.request)
            .map_err(|e| Stop::Failed(format!("the stored export request does not parse: {e}")))?;
        let who = self.host.principal(&spec.delegation).await.map_err(|e| Stop::Failed(e.message))?;
        let plan = self.plan(claim, &job, &spec).await?;
        let mut progress: Progress = match &job.checkpoint {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| Stop::Failed(format!("the stored checkpoint does not parse: {e}")))?,
            None => Progress::default(),
        };
        let mut seen = self.seen_so_far(&progress).await?;
        let batch_size = self.exports.settings.batch_patients;
        let batches: Vec<&[String]> = plan.members.chunks(batch_size).collect();
        while progress.next_batch < batches.len() {
            let batch = progress.next_batch;
            self.run_batch_with_retries(claim, &job, &spec, &who, batches[batch], &mut progress, &mut seen)
                .await?;
            progress.next_batch += 1;
            let done = (progress.next_batch * batch_size).min(plan.members.len()) as i64;
            let text = serde_json::to_string(&progress).map_err(|e| Stop::Failed(e.to_string()))?;
            let now = crate::clock::unix_now_s();
            self.exports.jobs.checkpoint(claim, &text, done, plan.members.len() as i64, now).await?;
        }
        self.finish(claim, &job, &spec, &progress).await
    }

    /// The job's members: fixed by the first runner, read back by the next.
    async fn plan(&self, claim: &Claim, job: &Job, spec: &JobSpec) -> Result<Plan, Stop> {
        if let Some(text) = &job.plan {
            return serde_json::from_str(text)
                .map_err(|e| Stop::Failed(format!("the stored export plan does not parse: {e}")));
        }
        let scope = self.host.scope(&job.organization).await.map_err(|e| Stop::Failed(e.message))?;
        let Some(mut members) = scope.group_members(&job.group_id) else {
            return Err(Stop::Failed("the Group is no longer one of your organization's Groups".into()));
        };
        if !spec.request.patients.is_empty() {
            let asked: HashSet<&str> = spec.request.patients.iter().map(String::as_str).collect();
            members.retain(|m| asked.contains(m.as_str()));
        }
        let plan = Plan { members };
        let text = serde_json::to_string(&plan).map_err(|e| Stop::Failed(e.to_string()))?;
        let now = crate::clock::unix_now_s();
        self.exports.jobs.set_plan(claim, &text, plan.members.len() as i64, now).await?;
        Ok(plan)
    }

    /// The keys already written (per type), read back from the segments a
    /// checkpoint names, so a resumed job writes no resource twice.
    async fn seen_so_far(&self, progress: &Progress) -> Result<HashMap<String, HashSet<u128>>, Stop> {
        let mut seen: HashMap<String, HashSet<u128>> = HashMap::new();
        for segment in &progress.segments {
            let bytes = self
                .exports
                .files
                .read(&segment.key)
                .await
                .map_err(|e| Stop::Failed(format!("a checkpointed segment is unreadable: {e}")))?;
            let set = seen.entry(segment.resource_type.clone()).or_default();
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let key = manifest::key_of_line(line)
                    .ok_or_else(|| Stop::Failed("a checkpointed segment holds an unreadable line".into()))?;
                set.insert(key_hash(&key));
            }
        }
        Ok(seen)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_batch_with_retries(
        &self,
        claim: &Claim,
        job: &Job,
        spec: &JobSpec,
        who: &Arc<Principal>,
        members: &[String],
        progress: &mut Progress,
        seen: &mut HashMap<String, HashSet<u128>>,
    ) -> Result<(), Stop> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.run_batch(claim, job, spec, who, members, progress, seen).await {
                Ok(()) => return Ok(()),
                Err(BatchError::Retry(err)) if attempt < BATCH_ATTEMPTS => {
                    tracing::warn!(job = %claim.job_id, attempt, error = %err.message, "export batch failed closed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
                Err(BatchError::Retry(err)) => {
                    return Err(Stop::Failed(format!("the export could not go on: {}", err.message)));
                }
            }
        }
    }

    /// One batch: the members still visible now, every type searched for
    /// them, the survivors written. On a retryable failure nothing of the
    /// batch is kept (its keys leave `seen` again; its segments are
    /// rewritten under the same names or left unnamed by any checkpoint).
    #[allow(clippy::too_many_arguments)]
    async fn run_batch(
        &self,
        claim: &Claim,
        job: &Job,
        spec: &JobSpec,
        who: &Arc<Principal>,
        members: &[String],
        progress: &mut Progress,
        seen: &mut HashMap<String, HashSet<u128>>,
    ) -> Result<(), BatchError> {
        let scope = self.host.scope(&job.organization).await.map_err(BatchError::Retry)?;
        let visible: Vec<String> = members.iter().filter(|m| scope.is_visible(m)).cloned().collect();
        let left_out = members.len() - visible.len();
        if visible.is_empty() {
            progress.left_out += left_out;
            return Ok(());
        }
        let batch = progress.next_batch;
        let mut work = Vec::new();
        for resource_type in &spec.request.types {
            let Some(link) = self.host.patient_link(resource_type) else { continue };
            let set = seen.remove(resource_type).unwrap_or_default();
            work.push(TypeWork { resource_type: resource_type.clone(), link, seen: set });
        }
        let concurrency = self.exports.settings.concurrency;
        let outcomes: Vec<TypeOutcome> = futures_util::stream::iter(work)
            .map(|w| self.export_type(claim, spec, who, batch, &visible, w))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut outcomes = outcomes;
        let retry = outcomes.iter().position(|o| o.failure.as_ref().is_some_and(|e| !per_type(e)));
        let retry = retry.and_then(|i| outcomes[i].failure.take());
        if retry.is_some() {
            for outcome in &mut outcomes {
                for key in &outcome.added {
                    outcome.seen.remove(key);
                }
            }
        }
        for outcome in &mut outcomes {
            seen.insert(outcome.resource_type.clone(), std::mem::take(&mut outcome.seen));
        }
        if let Some(err) = retry {
            return Err(BatchError::Retry(err));
        }
        // The batch is whole: its record, then its place in the progress.
        let mut disclosure = Disclosure::default();
        outcomes.sort_by_key(|o| spec.request.types.iter().position(|t| *t == o.resource_type));
        for outcome in outcomes {
            if let Some(err) = &outcome.failure {
                progress.errors.push(format!(
                    "{} for {} patient(s) of batch {}: {}",
                    outcome.resource_type,
                    visible.len(),
                    batch + 1,
                    err.message
                ));
            }
            progress.segments.extend(outcome.segments);
            disclosure.merge(outcome.disclosure);
        }
        progress.left_out += left_out;
        progress.patients.extend(disclosure.patients.iter().cloned());
        let mut record = batch_record(job, spec, batch, &disclosure);
        record.requested_patients.extend(visible.iter().cloned());
        self.host.audit(record).await.map_err(BatchError::Retry)?;
        Ok(())
    }

    /// One type of one batch: its searches (one per `_typeFilter`, or one),
    /// each streamed through the chain into segments.
    async fn export_type(
        &self,
        claim: &Claim,
        spec: &JobSpec,
        who: &Arc<Principal>,
        batch: usize,
        members: &[String],
        work: TypeWork,
    ) -> TypeOutcome {
        let TypeWork { resource_type, link, seen } = work;
        let mut writer = SegmentWriter {
            files: &self.exports.files,
            prefix: format!("{}/{batch:06}-{}-{resource_type}", claim.job_id, claim.fence),
            resource_type: resource_type.clone(),
            buffer: Vec::new(),
            count: 0,
            segments: Vec::new(),
            seen,
            added: Vec::new(),
        };
        let mut attempt = 1;
        let (disclosure, failure) = loop {
            let (disclosure, failure) =
                self.type_searches(claim, spec, who, batch, members, &link, &mut writer).await;
            match failure {
                // A failing upstream (5xx, timeout) is tried again from the
                // start of the type's searches; a refusal (4xx) is not.
                Some(e) if e.blame == Blame::Upstream && attempt < TYPE_ATTEMPTS => {
                    tracing::info!(job = %claim.job_id, batch, resource_type = %resource_type, attempt, error = %e.message, "export search failed upstream; retrying");
                    writer.undo();
                    tokio::time::sleep(Duration::from_secs(attempt as u64)).await;
                    attempt += 1;
                }
                failure => break (disclosure, failure),
            }
        };
        TypeOutcome {
            resource_type,
            seen: writer.seen,
            added: writer.added,
            segments: writer.segments,
            disclosure,
            failure,
        }
    }

    /// One attempt at a type's searches for a batch, written through `writer`.
    #[allow(clippy::too_many_arguments)]
    async fn type_searches(
        &self,
        claim: &Claim,
        spec: &JobSpec,
        who: &Arc<Principal>,
        batch: usize,
        members: &[String],
        link: &str,
        writer: &mut SegmentWriter<'_>,
    ) -> (Disclosure, Option<GatewayError>) {
        let resource_type = writer.resource_type.clone();
        let mut disclosure = Disclosure::default();
        for (i, params) in search_params(spec, &resource_type, link, members).into_iter().enumerate() {
            let query = BatchQuery {
                resource_type: resource_type.clone(),
                params,
                request_id: format!("{}-{batch}-{resource_type}-{i}", claim.job_id),
            };
            let (tx, mut rx) = mpsc::channel::<Vec<Exported>>(2);
            let search = self.host.search(who.clone(), query, self.exports.limiter.clone(), tx);
            let write = async {
                while let Some(page) = rx.recv().await {
                    writer.write(page).await?;
                }
                Ok::<(), GatewayError>(())
            };
            let (searched, written) = tokio::join!(search, write);
            match (searched, written) {
                (_, Err(e)) | (Err(e), _) => return (disclosure, Some(e)),
                (Ok(d), Ok(())) => disclosure.merge(d),
            }
        }
        match writer.flush().await {
            Ok(()) => (disclosure, None),
            Err(e) => (disclosure, Some(e)),
        }
    }

    /// The last batch is done: the manifest, then the completion record.
    async fn finish(
        &self,
        claim: &Claim,
        job: &Job,
        spec: &JobSpec,
        progress: &Progress,
    ) -> Result<(), Stop> {
        let (skipped, failed) = (&spec.request.skipped, &progress.errors);
        let problems = skipped.len() + failed.len();
        let mut error_segment = None;
        if problems > 0 {
            let key = format!("{}/errors-{}.ndjson", claim.job_id, claim.fence);
            let body = manifest::outcome_lines(skipped, failed);
            let bytes = body.len() as u64;
            self.exports.files.put(&key, Bytes::from(body)).await.map_err(|e| Stop::Failed(e.to_string()))?;
            error_segment = Some(Segment {
                resource_type: "OperationOutcome".into(),
                key,
                count: problems as u64,
                bytes,
            });
        }
        let stored = manifest::build(
            &manifest::Context {
                job_id: &claim.job_id,
                transaction_time: &job.transaction_time,
                request: &job.kickoff_url,
                public_base: &self.exports.public_base,
                file_max_bytes: self.exports.settings.file_max_bytes,
                types: &spec.request.types,
            },
            &progress.segments,
            error_segment,
        );
        let text = serde_json::to_string(&stored).map_err(|e| Stop::Failed(e.to_string()))?;
        let now = crate::clock::unix_now_s();
        let expires_at = now + self.exports.settings.expire_s as i64;
        let mut record = completion_record(job, spec, progress);
        record.detail("export.files", stored.files.len().to_string());
        // Durable before the manifest can be fetched: no record, no files.
        self.host.audit(record).await.map_err(|e| Stop::Failed(e.message))?;
        self.exports.jobs.complete(claim, &text, expires_at, now).await?;
        Ok(())
    }
}

enum BatchError {
    /// Failed closed (store, registry or policy unavailable): try the batch again.
    Retry(GatewayError),
}

struct TypeWork {
    resource_type: String,
    link: String,
    seen: HashSet<u128>,
}

struct TypeOutcome {
    resource_type: String,
    seen: HashSet<u128>,
    /// Keys this batch added to `seen` (taken out again on a retry).
    added: Vec<u128>,
    segments: Vec<Segment>,
    disclosure: Disclosure,
    failure: Option<GatewayError>,
}

/// A failure that concerns one type of one batch (the upstream refused or
/// failed that search): reported in the manifest's `error`, the export goes
/// on. Anything else failed closed and the batch is tried again.
fn per_type(err: &GatewayError) -> bool {
    matches!(err.blame, Blame::Upstream | Blame::Caller)
}

/// The searches of one type for one batch: the patient link set to the
/// batch's members, `_since`/`_until` as `_lastUpdated` bounds, and each
/// `_typeFilter` of the type as one search (their results are united).
fn search_params(spec: &JobSpec, resource_type: &str, link: &str, members: &[String]) -> Vec<SearchParams> {
    let request = &spec.request;
    let mut base = SearchParams::default();
    let values: Vec<String> = if link == "_id" {
        members.to_vec()
    } else {
        members.iter().map(|m| format!("Patient/{m}")).collect()
    };
    base.push(SearchParam::new(link, None, values));
    if let Some(since) = &request.since {
        base.push(SearchParam::single("_lastUpdated", format!("ge{since}")));
    }
    if let Some(until) = &request.until {
        base.push(SearchParam::single("_lastUpdated", format!("le{until}")));
    }
    base.push(SearchParam::single("_count", UPSTREAM_PAGE));
    let filters: Vec<&super::kickoff::TypeFilter> =
        request.type_filters.iter().filter(|f| f.resource_type == resource_type).collect();
    if filters.is_empty() {
        return vec![base];
    }
    filters
        .into_iter()
        .filter_map(|filter| {
            let extra =
                SearchParams::parse_query(&filter.query, crate::fhir::search::ParamContext::Search).ok()?;
            let mut params = base.clone();
            params.params.extend(extra.params);
            Some(params)
        })
        .collect()
}

async fn wait_true(mut flag: watch::Receiver<bool>) {
    while !*flag.borrow() {
        if flag.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
