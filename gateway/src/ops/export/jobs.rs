//! Export jobs in the store, so that any node can poll, download or cancel
//! a job and a job outlives the process that ran it.
//!
//! A job is run by one node at a time: a node *claims* it with a lease
//! (`lease_until`) and receives a fencing token (`fence`, one more than the
//! last claim's). Every write of a running job — checkpoint, lease renewal,
//! completion — names its fence and is refused once another node has
//! claimed the job, so a node that stalled past its lease (or was killed
//! with `-9` and came back) can never overwrite the new runner's state. A
//! job whose lease ran out is claimable again and resumes from its last
//! checkpoint.

use rand::RngCore;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::store::{Store, StoreError};

const SCHEMA: &[&str] = &["CREATE TABLE IF NOT EXISTS fhirwall_export_jobs (
        job_id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        organization TEXT NOT NULL,
        group_id TEXT NOT NULL,
        request TEXT NOT NULL,
        kickoff_url TEXT NOT NULL,
        state TEXT NOT NULL,
        transaction_time TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        expires_at BIGINT,
        done_units BIGINT NOT NULL,
        total_units BIGINT NOT NULL,
        lease_owner TEXT,
        lease_until BIGINT NOT NULL,
        fence BIGINT NOT NULL,
        checkpoint TEXT,
        manifest TEXT,
        failure TEXT,
        plan TEXT,
        polled_at BIGINT NOT NULL DEFAULT 0
    )"];

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for a node (or for its lease to run out after a crash).
    Queued,
    Running,
    /// Finished: the manifest is ready until `expires_at`.
    Done,
    /// Stopped by an error that is not per patient or per type.
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Result<JobState, StoreError> {
        match text {
            "queued" => Ok(JobState::Queued),
            "running" => Ok(JobState::Running),
            "done" => Ok(JobState::Done),
            "failed" => Ok(JobState::Failed),
            other => Err(StoreError::Setup(format!("export job in unknown state {other}"))),
        }
    }
}

/// A kick-off accepted, to be stored as a queued job.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub client_id: String,
    pub organization: String,
    pub group_id: String,
    /// The checked kick-off, serialised by the caller.
    pub request: String,
    /// The kick-off URL, for the manifest's `request`.
    pub kickoff_url: String,
    /// The instant the export's snapshot starts (the manifest's `transactionTime`).
    pub transaction_time: String,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    pub client_id: String,
    pub organization: String,
    pub group_id: String,
    pub request: String,
    pub kickoff_url: String,
    pub state: JobState,
    pub transaction_time: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    /// Progress: units (patients) done of the total known so far.
    pub done_units: i64,
    pub total_units: i64,
    pub checkpoint: Option<String>,
    pub manifest: Option<String>,
    pub failure: Option<String>,
    /// What the job runs over (its members), fixed by the first runner.
    pub plan: Option<String>,
}

/// The right to write one job's state, until another node claims it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub job_id: String,
    pub fence: i64,
}

/// Why a job write was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Another node claimed the job since (or it was cancelled): stop
    /// working on it and write nothing more.
    #[error("export job {0}: the lease was lost")]
    LeaseLost(String),
    /// The client already runs as many jobs as it may.
    #[error("too many export jobs running for this client")]
    TooMany,
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Store(StoreError::Database(e))
    }
}

/// The jobs table.
#[derive(Debug, Clone)]
pub struct Jobs {
    store: Store,
}

impl Jobs {
    pub async fn open(store: Store) -> Result<Jobs, StoreError> {
        for statement in SCHEMA {
            sqlx::query(statement).execute(store.pool()).await?;
        }
        Ok(Jobs { store })
    }

    /// Store a queued job, unless its client already has `max_active`
    /// jobs queued or running. Returns the new job's id (128 random bits).
    pub async fn create(&self, job: &NewJob, max_active: u32, now: i64) -> Result<String, JobError> {
        let active: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM fhirwall_export_jobs WHERE client_id = $1 AND state IN ('queued', 'running')",
        )
        .bind(&job.client_id)
        .fetch_one(self.store.pool())
        .await?
        .try_get("n")?;
        if active >= i64::from(max_active) {
            return Err(JobError::TooMany);
        }
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        let id = hex::encode(bytes);
        sqlx::query(
            "INSERT INTO fhirwall_export_jobs (job_id, client_id, organization, group_id, request, kickoff_url,
                state, transaction_time, created_at, updated_at, expires_at, done_units, total_units,
                lease_owner, lease_until, fence, checkpoint, manifest, failure)
             VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $8, NULL, 0, 0, NULL, 0, 0, NULL, NULL, NULL)",
        )
        .bind(&id)
        .bind(&job.client_id)
        .bind(&job.organization)
        .bind(&job.group_id)
        .bind(&job.request)
        .bind(&job.kickoff_url)
        .bind(&job.transaction_time)
        .bind(now)
        .execute(self.store.pool())
        .await?;
        Ok(id)
    }

    /// A job by id (`None`: never existed, cancelled, or expired and removed).
    pub async fn get(&self, job_id: &str) -> Result<Option<Job>, JobError> {
        let row = sqlx::query("SELECT * FROM fhirwall_export_jobs WHERE job_id = $1")
            .bind(job_id)
            .fetch_optional(self.store.pool())
            .await?;
        row.map(|row| job_of(&row)).transpose()
    }

    /// Claim the oldest job that is queued, or running under a lease that
    /// ran out, for `owner` until `lease_until`. Two nodes racing for one
    /// job: the conditional update lets exactly one win.
    /// `max_running`: no claim while that many jobs run under a live lease
    /// (on all nodes together; two nodes claiming at the same instant may
    /// both get one, a bound off by at most one per node).
    pub async fn claim(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
        max_running: u32,
    ) -> Result<Option<Claim>, JobError> {
        let running: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM fhirwall_export_jobs WHERE state = 'running' AND lease_until >= $1",
        )
        .bind(now)
        .fetch_one(self.store.pool())
        .await?
        .try_get("n")?;
        if running >= i64::from(max_running) {
            return Ok(None);
        }
        let candidates = sqlx::query(
            "SELECT job_id FROM fhirwall_export_jobs
             WHERE state IN ('queued', 'running') AND lease_until < $1
             ORDER BY created_at, job_id LIMIT 8",
        )
        .bind(now)
        .fetch_all(self.store.pool())
        .await?;
        for candidate in candidates {
            let job_id: String = candidate.try_get("job_id")?;
            let won = sqlx::query(
                "UPDATE fhirwall_export_jobs
                 SET state = 'running', lease_owner = $1, lease_until = $2, fence = fence + 1, updated_at = $3
                 WHERE job_id = $4 AND state IN ('queued', 'running') AND lease_until < $3
                 RETURNING fence",
            )
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .bind(&job_id)
            .fetch_optional(self.store.pool())
            .await?;
            if let Some(row) = won {
                return Ok(Some(Claim { job_id, fence: row.try_get("fence")? }));
            }
        }
        Ok(None)
    }

    /// Fix what the job runs over (written once, by its first runner).
    pub async fn set_plan(
        &self,
        claim: &Claim,
        plan: &str,
        total_units: i64,
        now: i64,
    ) -> Result<(), JobError> {
        let done = sqlx::query(
            "UPDATE fhirwall_export_jobs SET plan = $1, total_units = $2, updated_at = $3
             WHERE job_id = $4 AND fence = $5 AND state = 'running'",
        )
        .bind(plan)
        .bind(total_units)
        .bind(now)
        .bind(&claim.job_id)
        .bind(claim.fence)
        .execute(self.store.pool())
        .await?;
        fenced(done.rows_affected(), claim)
    }

    /// A status poll at `now_ms`: `false` when the previous accepted poll
    /// was less than `min_gap_ms` ago (the caller is then told to wait).
    /// One conditional update, so two nodes polled at once agree.
    pub async fn poll(&self, job_id: &str, now_ms: i64, min_gap_ms: i64) -> Result<bool, JobError> {
        let done = sqlx::query(
            "UPDATE fhirwall_export_jobs SET polled_at = $1 WHERE job_id = $2 AND polled_at <= $3",
        )
        .bind(now_ms)
        .bind(job_id)
        .bind(now_ms - min_gap_ms)
        .execute(self.store.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Extend a claim's lease.
    pub async fn renew(&self, claim: &Claim, now: i64, lease_until: i64) -> Result<(), JobError> {
        let done = sqlx::query(
            "UPDATE fhirwall_export_jobs SET lease_until = $1, updated_at = $2
             WHERE job_id = $3 AND fence = $4 AND state = 'running'",
        )
        .bind(lease_until)
        .bind(now)
        .bind(&claim.job_id)
        .bind(claim.fence)
        .execute(self.store.pool())
        .await?;
        fenced(done.rows_affected(), claim)
    }

    /// Record a batch's progress and where to resume.
    pub async fn checkpoint(
        &self,
        claim: &Claim,
        checkpoint: &str,
        done_units: i64,
        total_units: i64,
        now: i64,
    ) -> Result<(), JobError> {
        let done = sqlx::query(
            "UPDATE fhirwall_export_jobs SET checkpoint = $1, done_units = $2, total_units = $3, updated_at = $4
             WHERE job_id = $5 AND fence = $6 AND state = 'running'",
        )
        .bind(checkpoint)
        .bind(done_units)
        .bind(total_units)
        .bind(now)
        .bind(&claim.job_id)
        .bind(claim.fence)
        .execute(self.store.pool())
        .await?;
        fenced(done.rows_affected(), claim)
    }

    /// The job is done: its manifest is served until `expires_at`.
    pub async fn complete(
        &self,
        claim: &Claim,
        manifest: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), JobError> {
        self.end(claim, Ending::Done { manifest }, expires_at, now).await
    }

    /// The job failed as a whole (`failure` is caller-safe text).
    pub async fn fail(
        &self,
        claim: &Claim,
        failure: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), JobError> {
        self.end(claim, Ending::Failed { failure }, expires_at, now).await
    }

    async fn end(
        &self,
        claim: &Claim,
        ending: Ending<'_>,
        expires_at: i64,
        now: i64,
    ) -> Result<(), JobError> {
        let (state, column, text) = match ending {
            Ending::Done { manifest } => (JobState::Done, "manifest", manifest),
            Ending::Failed { failure } => (JobState::Failed, "failure", failure),
        };
        // `column` is one of two names above, never caller text.
        let statement = format!(
            "UPDATE fhirwall_export_jobs
             SET state = $1, {column} = $2, expires_at = $3, updated_at = $4, lease_owner = NULL
             WHERE job_id = $5 AND fence = $6 AND state = 'running'"
        );
        let done = sqlx::query(&statement)
            .bind(state.as_str())
            .bind(text)
            .bind(expires_at)
            .bind(now)
            .bind(&claim.job_id)
            .bind(claim.fence)
            .execute(self.store.pool())
            .await?;
        fenced(done.rows_affected(), claim)
    }

    /// Remove a job (cancelled, or expired). A runner still working on it
    /// finds its next write refused and stops. Returns whether it existed.
    pub async fn remove(&self, job_id: &str) -> Result<bool, JobError> {
        let done = sqlx::query("DELETE FROM fhirwall_export_jobs WHERE job_id = $1")
            .bind(job_id)
            .execute(self.store.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Finished jobs whose files expired by `now`.
    pub async fn expired(&self, now: i64) -> Result<Vec<String>, JobError> {
        let rows = sqlx::query(
            "SELECT job_id FROM fhirwall_export_jobs WHERE expires_at IS NOT NULL AND expires_at <= $1",
        )
        .bind(now)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter().map(|row| row.try_get("job_id").map_err(JobError::from)).collect()
    }
}

/// How a running job ends.
enum Ending<'a> {
    Done { manifest: &'a str },
    Failed { failure: &'a str },
}

fn fenced(rows: u64, claim: &Claim) -> Result<(), JobError> {
    if rows == 1 { Ok(()) } else { Err(JobError::LeaseLost(claim.job_id.clone())) }
}

fn job_of(row: &AnyRow) -> Result<Job, JobError> {
    let state: String = row.try_get("state")?;
    Ok(Job {
        id: row.try_get("job_id")?,
        client_id: row.try_get("client_id")?,
        organization: row.try_get("organization")?,
        group_id: row.try_get("group_id")?,
        request: row.try_get("request")?,
        kickoff_url: row.try_get("kickoff_url")?,
        state: JobState::parse(&state)?,
        transaction_time: row.try_get("transaction_time")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        done_units: row.try_get("done_units")?,
        total_units: row.try_get("total_units")?,
        checkpoint: row.try_get("checkpoint")?,
        manifest: row.try_get("manifest")?,
        failure: row.try_get("failure")?,
        plan: row.try_get("plan")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn jobs() -> (Jobs, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/state.db", dir.path().display())).await.unwrap();
        (Jobs::open(store).await.unwrap(), dir)
    }

    fn new_job(client: &str) -> NewJob {
        NewJob {
            client_id: client.into(),
            organization: "Organization/org-grace".into(),
            group_id: "grp-grace".into(),
            request: "{}".into(),
            kickoff_url: "http://gw/fhir/Group/grp-grace/$export".into(),
            transaction_time: "2026-12-05T10:00:00Z".into(),
        }
    }

    #[tokio::test]
    async fn no_claim_beyond_the_global_limit_of_running_jobs() {
        let (jobs, _dir) = jobs().await;
        for client in ["a", "b", "c"] {
            jobs.create(&new_job(client), 4, 100).await.unwrap();
        }
        assert!(jobs.claim("node-1", 100, 130, 2).await.unwrap().is_some());
        assert!(jobs.claim("node-2", 100, 130, 2).await.unwrap().is_some());
        assert_eq!(jobs.claim("node-3", 101, 131, 2).await.unwrap(), None, "two run already");
        // Leases that ran out do not count: their jobs are claimable again.
        assert!(jobs.claim("node-3", 131, 160, 2).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn one_node_claims_a_job_and_a_stale_claim_writes_nothing() {
        let (jobs, _dir) = jobs().await;
        let id = jobs.create(&new_job("a"), 4, 100).await.unwrap();
        let first = jobs.claim("node-1", 100, 130, 8).await.unwrap().unwrap();
        assert_eq!(first, Claim { job_id: id.clone(), fence: 1 });
        // Leased: nobody else gets it.
        assert_eq!(jobs.claim("node-2", 110, 140, 8).await.unwrap(), None);
        jobs.checkpoint(&first, "{\"next\":1}", 1, 3, 115).await.unwrap();
        // node-1 stalls past its lease; node-2 takes over from the checkpoint.
        let second = jobs.claim("node-2", 131, 160, 8).await.unwrap().unwrap();
        assert_eq!(second.fence, 2);
        let job = jobs.get(&id).await.unwrap().unwrap();
        assert_eq!(
            (job.checkpoint.as_deref(), job.done_units, job.total_units),
            (Some("{\"next\":1}"), 1, 3)
        );
        // node-1 wakes up: every write is refused.
        for refused in [
            jobs.checkpoint(&first, "{\"next\":2}", 2, 3, 132).await,
            jobs.renew(&first, 132, 200).await,
            jobs.complete(&first, "{}", 999, 132).await,
        ] {
            assert!(matches!(refused, Err(JobError::LeaseLost(_))), "{refused:?}");
        }
        jobs.complete(&second, "{\"output\":[]}", 1000, 150).await.unwrap();
        let job = jobs.get(&id).await.unwrap().unwrap();
        assert_eq!(
            (job.state, job.manifest.as_deref(), job.expires_at),
            (JobState::Done, Some("{\"output\":[]}"), Some(1000))
        );
        // Done jobs are not claimed again.
        assert_eq!(jobs.claim("node-3", 2000, 2030, 8).await.unwrap(), None);
        assert_eq!(jobs.expired(999).await.unwrap(), Vec::<String>::new());
        assert_eq!(jobs.expired(1000).await.unwrap(), vec![id.clone()]);
    }

    #[tokio::test]
    async fn a_client_has_a_limit_on_active_jobs_and_removal_stops_the_runner() {
        let (jobs, _dir) = jobs().await;
        let a1 = jobs.create(&new_job("a"), 2, 1).await.unwrap();
        jobs.create(&new_job("a"), 2, 2).await.unwrap();
        assert!(matches!(jobs.create(&new_job("a"), 2, 3).await, Err(JobError::TooMany)));
        // Another client is not affected.
        jobs.create(&new_job("b"), 2, 4).await.unwrap();
        let claim = jobs.claim("node-1", 10, 40, 8).await.unwrap().unwrap();
        assert_eq!(claim.job_id, a1, "oldest first");
        assert!(jobs.remove(&a1).await.unwrap());
        assert!(jobs.get(&a1).await.unwrap().is_none());
        assert!(matches!(jobs.checkpoint(&claim, "{}", 0, 0, 11).await, Err(JobError::LeaseLost(_))));
        assert!(!jobs.remove(&a1).await.unwrap());
        // A slot is free again.
        jobs.create(&new_job("a"), 2, 12).await.unwrap();
        // A job that fails as a whole keeps its reason until it expires.
        let claim = jobs.claim("node-1", 20, 50, 8).await.unwrap().unwrap();
        jobs.fail(&claim, "the upstream refused every search", 500, 21).await.unwrap();
        let failed = jobs.get(&claim.job_id).await.unwrap().unwrap();
        assert_eq!(
            (failed.state, failed.failure.as_deref(), failed.manifest, failed.expires_at),
            (JobState::Failed, Some("the upstream refused every search"), None, Some(500))
        );
    }
}
