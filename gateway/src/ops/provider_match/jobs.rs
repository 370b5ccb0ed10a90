//! `$provider-member-match` jobs and the MatchedMembers Groups they made,
//! in the store: any node answers a job's status, and a job outlives the
//! node that ran it.
//!
//! A job is run by one node under a lease (`lease_until`) with a fencing
//! token (`fence`): the node that took the request claims it at once; if
//! that node dies, another node's sweeper claims the job when the lease
//! runs out and runs it again from the stored request (matching is
//! deterministic and the Group id is the job's, so a second run replaces
//! the first's Group). Every write of a running job names its fence.
//!
//! The MatchedMembers Group itself is an attribution roster
//! (`fhirwall_rosters`, see `access::state`), stored in the same
//! transaction as its row here (`fhirwall_match_groups`: owner and expiry),
//! so it counts for attribution on every node exactly while it lives.

use rand::RngCore;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::store::{Store, StoreError};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS fhirwall_match_jobs (
        job_id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        organization TEXT NOT NULL,
        request TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        done_members BIGINT NOT NULL,
        total_members BIGINT NOT NULL,
        lease_owner TEXT,
        lease_until BIGINT NOT NULL,
        fence BIGINT NOT NULL,
        polled_at BIGINT NOT NULL,
        result TEXT,
        failure TEXT
    )",
    "CREATE TABLE IF NOT EXISTS fhirwall_match_groups (
        group_id TEXT PRIMARY KEY,
        organization TEXT NOT NULL,
        job_id TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    )",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
}

impl JobState {
    fn parse(text: &str) -> Result<JobState, StoreError> {
        Ok(match text {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "failed" => JobState::Failed,
            other => return Err(StoreError::Setup(format!("match job in unknown state {other}"))),
        })
    }
}

/// A stored job.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub client_id: String,
    pub organization: String,
    /// What to run (serialised by the caller).
    pub request: String,
    pub state: JobState,
    pub created_at: i64,
    pub done_members: i64,
    pub total_members: i64,
    /// The answer (`Parameters` JSON) once done.
    pub result: Option<String>,
    pub failure: Option<String>,
}

/// The right to write one running job, until another node claims it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub job_id: String,
    pub fence: i64,
}

/// A stored MatchedMembers Group, as the admin API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MatchGroup {
    pub group: String,
    pub organization: String,
    pub job: String,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The organization already has as many jobs queued or running as it may.
    #[error("too many $provider-member-match jobs for this organization")]
    TooMany,
    /// Another node claimed the job, or it was cancelled.
    #[error("match job {0}: the lease was lost")]
    LeaseLost(String),
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Store(StoreError::Database(e))
    }
}

/// A job to store.
#[derive(Debug, Clone, Copy)]
pub struct NewJob<'a> {
    pub client_id: &'a str,
    pub organization: &'a str,
    /// What to run (serialised by the caller).
    pub request: &'a str,
    /// Members in the request.
    pub total: i64,
}

/// Who runs a job, from when, until when (unix seconds).
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    pub owner: &'a str,
    pub now: i64,
    pub until: i64,
}

#[derive(Debug, Clone)]
pub struct MatchJobs {
    store: Store,
}

impl MatchJobs {
    pub async fn open(store: Store) -> Result<MatchJobs, StoreError> {
        for statement in SCHEMA {
            sqlx::query(statement).execute(store.pool()).await?;
        }
        Ok(MatchJobs { store })
    }

    /// Store a job claimed at once under `lease`, unless the organization
    /// already has `max_active` jobs queued or running (on any node; the
    /// insert comes first so concurrent requests count each other).
    pub async fn create_claimed(
        &self,
        job: &NewJob<'_>,
        lease: &Lease<'_>,
        max_active: u32,
    ) -> Result<(String, Claim), JobError> {
        let NewJob { client_id, organization, request, total } = *job;
        let Lease { owner, now, until: lease_until } = *lease;
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        let id = hex::encode(bytes);
        let mut tx = self.store.pool().begin().await?;
        sqlx::query(
            "INSERT INTO fhirwall_match_jobs (job_id, client_id, organization, request, state, created_at,
                updated_at, expires_at, done_members, total_members, lease_owner, lease_until, fence,
                polled_at, result, failure)
             VALUES ($1, $2, $3, $4, 'running', $5, $5, $6, 0, $7, $8, $9, 1, 0, NULL, NULL)",
        )
        .bind(&id)
        .bind(client_id)
        .bind(organization)
        .bind(request)
        .bind(now)
        .bind(i64::MAX)
        .bind(total)
        .bind(owner)
        .bind(lease_until)
        .execute(&mut *tx)
        .await?;
        let active: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM fhirwall_match_jobs WHERE organization = $1 AND state IN ('queued', 'running')",
        )
        .bind(organization)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        if active > i64::from(max_active) {
            tx.rollback().await?;
            return Err(JobError::TooMany);
        }
        tx.commit().await?;
        Ok((id.clone(), Claim { job_id: id, fence: 1 }))
    }

    pub async fn get(&self, job_id: &str) -> Result<Option<Job>, JobError> {
        let row = sqlx::query("SELECT * FROM fhirwall_match_jobs WHERE job_id = $1")
            .bind(job_id)
            .fetch_optional(self.store.pool())
            .await?;
        row.map(|r| job_of(&r)).transpose()
    }

    /// A job whose runner's lease ran out (its node died), claimed for `owner`.
    pub async fn claim_abandoned(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<Claim>, JobError> {
        let candidates = sqlx::query(
            "SELECT job_id FROM fhirwall_match_jobs WHERE state IN ('queued', 'running') AND lease_until < $1
             ORDER BY created_at, job_id LIMIT 4",
        )
        .bind(now)
        .fetch_all(self.store.pool())
        .await?;
        for candidate in candidates {
            let job_id: String = candidate.try_get("job_id")?;
            let won = sqlx::query(
                "UPDATE fhirwall_match_jobs
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

    /// Record progress and renew the lease.
    pub async fn progress(
        &self,
        claim: &Claim,
        done: i64,
        now: i64,
        lease_until: i64,
    ) -> Result<(), JobError> {
        let n = sqlx::query(
            "UPDATE fhirwall_match_jobs SET done_members = $1, lease_until = $2, updated_at = $3
             WHERE job_id = $4 AND fence = $5 AND state = 'running'",
        )
        .bind(done)
        .bind(lease_until)
        .bind(now)
        .bind(&claim.job_id)
        .bind(claim.fence)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        if n == 0 { Err(JobError::LeaseLost(claim.job_id.clone())) } else { Ok(()) }
    }

    /// Finish a job: its answer, and its MatchedMembers Group stored as an
    /// attribution roster (replacing an earlier run's), all in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish(
        &self,
        claim: &Claim,
        organization: &str,
        result: &str,
        group_id: &str,
        group_body: &str,
        now: i64,
        group_expires_at: i64,
        job_expires_at: i64,
    ) -> Result<(), JobError> {
        let mut tx = self.store.pool().begin().await?;
        let n = sqlx::query(
            "UPDATE fhirwall_match_jobs SET state = 'done', result = $1, request = '', expires_at = $2, updated_at = $3,
                done_members = total_members, lease_until = 0
             WHERE job_id = $4 AND fence = $5 AND state = 'running'",
        )
        .bind(result)
        .bind(job_expires_at)
        .bind(now)
        .bind(&claim.job_id)
        .bind(claim.fence)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Err(JobError::LeaseLost(claim.job_id.clone()));
        }
        for statement in [
            "DELETE FROM fhirwall_rosters WHERE group_id = $1",
            "DELETE FROM fhirwall_match_groups WHERE group_id = $1",
        ] {
            sqlx::query(statement).bind(group_id).execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO fhirwall_rosters (group_id, organization, body, updated_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(group_id)
        .bind(organization)
        .bind(group_body)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO fhirwall_match_groups (group_id, organization, job_id, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(group_id)
        .bind(organization)
        .bind(&claim.job_id)
        .bind(now)
        .bind(group_expires_at)
        .execute(&mut *tx)
        .await?;
        bump_rosters(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stop a job that cannot go on (the upstream or a plugin failed).
    pub async fn fail(
        &self,
        claim: &Claim,
        failure: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), JobError> {
        sqlx::query(
            "UPDATE fhirwall_match_jobs SET state = 'failed', failure = $1, request = '', expires_at = $2, updated_at = $3,
                lease_until = 0
             WHERE job_id = $4 AND fence = $5 AND state = 'running'",
        )
        .bind(failure)
        .bind(expires_at)
        .bind(now)
        .bind(&claim.job_id)
        .bind(claim.fence)
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// Record a status poll unless the last one was less than `gap_s` ago
    /// (`false`: too soon). One conditional update, so every node agrees.
    pub async fn poll(&self, job_id: &str, now: i64, gap_s: i64) -> Result<bool, JobError> {
        let n = sqlx::query(
            "UPDATE fhirwall_match_jobs SET polled_at = $1 WHERE job_id = $2 AND polled_at <= $3",
        )
        .bind(now)
        .bind(job_id)
        .bind(now - gap_s)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Cancel (or forget) a job; its Group, if any, stays.
    pub async fn delete(&self, job_id: &str) -> Result<bool, JobError> {
        let n = sqlx::query("DELETE FROM fhirwall_match_jobs WHERE job_id = $1")
            .bind(job_id)
            .execute(self.store.pool())
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Remove expired jobs and expired Groups; returns how many Groups went.
    pub async fn sweep(&self, now: i64) -> Result<u64, JobError> {
        sqlx::query("DELETE FROM fhirwall_match_jobs WHERE expires_at < $1")
            .bind(now)
            .execute(self.store.pool())
            .await?;
        let expired = sqlx::query("SELECT group_id FROM fhirwall_match_groups WHERE expires_at < $1")
            .bind(now)
            .fetch_all(self.store.pool())
            .await?;
        if expired.is_empty() {
            return Ok(0);
        }
        let mut tx = self.store.pool().begin().await?;
        let mut removed = 0;
        for row in expired {
            let group_id: String = row.try_get("group_id")?;
            sqlx::query("DELETE FROM fhirwall_rosters WHERE group_id = $1")
                .bind(&group_id)
                .execute(&mut *tx)
                .await?;
            removed +=
                sqlx::query("DELETE FROM fhirwall_match_groups WHERE group_id = $1 AND expires_at < $2")
                    .bind(&group_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
        }
        bump_rosters(&mut tx).await?;
        tx.commit().await?;
        Ok(removed)
    }

    /// The stored MatchedMembers Groups (for the admin API).
    pub async fn groups(&self) -> Result<Vec<MatchGroup>, JobError> {
        let rows = sqlx::query(
            "SELECT group_id, organization, job_id, created_at, expires_at FROM fhirwall_match_groups ORDER BY created_at, group_id",
        )
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MatchGroup {
                    group: format!("Group/{}", r.try_get::<String, _>("group_id")?),
                    organization: r.try_get("organization")?,
                    job: r.try_get("job_id")?,
                    created_at: r.try_get("created_at")?,
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(JobError::from)
    }

    /// Delete one stored Group (admin); `false` when there is none.
    pub async fn delete_group(&self, group_id: &str) -> Result<bool, JobError> {
        let mut tx = self.store.pool().begin().await?;
        let n = sqlx::query("DELETE FROM fhirwall_match_groups WHERE group_id = $1")
            .bind(group_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM fhirwall_rosters WHERE group_id = $1")
            .bind(group_id)
            .execute(&mut *tx)
            .await?;
        bump_rosters(&mut tx).await?;
        tx.commit().await?;
        Ok(n > 0)
    }
}

async fn bump_rosters(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE fhirwall_access_versions SET version = version + 1 WHERE name = 'rosters'")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn job_of(row: &AnyRow) -> Result<Job, JobError> {
    let state: String = row.try_get("state")?;
    Ok(Job {
        id: row.try_get("job_id")?,
        client_id: row.try_get("client_id")?,
        organization: row.try_get("organization")?,
        request: row.try_get("request")?,
        state: JobState::parse(&state)?,
        created_at: row.try_get("created_at")?,
        done_members: row.try_get("done_members")?,
        total_members: row.try_get("total_members")?,
        result: row.try_get("result")?,
        failure: row.try_get("failure")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_groups_and_expiry_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/s.db", dir.path().display())).await.unwrap();
        let jobs = MatchJobs::open(store.clone()).await.unwrap();
        let job = |client_id, organization| NewJob { client_id, organization, request: "{}", total: 3 };
        let lease = Lease { owner: "node-a", now: 100, until: 130 };
        let (id, claim) = jobs.create_claimed(&job("c", "Organization/o"), &lease, 1).await.unwrap();
        assert!(matches!(
            jobs.create_claimed(&job("c2", "Organization/o"), &lease, 1).await,
            Err(JobError::TooMany)
        ));
        // Another organization is not held back.
        // (Its lease outlives the test: only the first job is ever abandoned.)
        let long = Lease { until: 10_000, ..lease };
        jobs.create_claimed(&job("c3", "Organization/p"), &long, 1).await.unwrap();
        jobs.progress(&claim, 2, 101, 131).await.unwrap();
        assert_eq!(jobs.get(&id).await.unwrap().unwrap().done_members, 2);
        // Node B takes over once the lease ran out; node A's writes are refused.
        assert!(jobs.claim_abandoned("node-b", 120, 150).await.unwrap().is_none());
        let taken = jobs.claim_abandoned("node-b", 140, 170).await.unwrap().unwrap();
        assert!(taken.fence > claim.fence);
        assert!(matches!(jobs.progress(&claim, 3, 141, 171).await, Err(JobError::LeaseLost(_))));
        let v0 = crate::access::state::versions(&store).await.unwrap();
        jobs.finish(&taken, "Organization/o", "{\"r\":1}", "pmm-x", "{}", 142, 1000, 500).await.unwrap();
        let job = jobs.get(&id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Done);
        assert_eq!(job.result.as_deref(), Some("{\"r\":1}"));
        assert_eq!(crate::access::state::versions(&store).await.unwrap().rosters, v0.rosters + 1);
        assert_eq!(crate::access::state::roster_rows(&store).await.unwrap().len(), 1);
        assert!(jobs.poll(&id, 200, 2).await.unwrap());
        assert!(!jobs.poll(&id, 201, 2).await.unwrap());
        assert!(jobs.poll(&id, 202, 2).await.unwrap());
        assert_eq!(jobs.groups().await.unwrap()[0].group, "Group/pmm-x");
        // The job goes at 500, the Group at 1000.
        assert_eq!(jobs.sweep(600).await.unwrap(), 0);
        assert!(jobs.get(&id).await.unwrap().is_none());
        assert_eq!(jobs.sweep(1001).await.unwrap(), 1);
        assert!(crate::access::state::roster_rows(&store).await.unwrap().is_empty());
        assert!(!jobs.delete_group("pmm-x").await.unwrap());
    }
}
