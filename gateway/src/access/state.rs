//! The access state kept in the store: opt-outs, ingested rosters, and a
//! version counter per kind of change. Every write bumps its counter in the
//! same transaction; every node polls the counters (at most
//! [`POLL_INTERVAL`] apart, and at once after a write it made itself) and
//! reloads what changed, so an opt-out holds on the very next request on the
//! node that took it and on every other node within about a second.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Row;

use super::attribution::OrgRosters;
use crate::clock::unix_now_s;
use crate::store::{Store, StoreError};

/// How long a node serves requests without asking the store whether
/// opt-outs, rosters or attribution changed on another node.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Change counters, one per kind of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub opt_outs: i64,
    pub rosters: i64,
    pub attribution: i64,
}

impl Versions {
    /// Matches no stored version: forces the first load.
    pub const NONE: Versions = Versions { opt_outs: -1, rosters: -1, attribution: -1 };
}

/// One consistent view of the store-backed state.
#[derive(Debug)]
pub struct Snapshot {
    pub versions: Versions,
    pub opt_outs: Arc<HashSet<String>>,
    pub rosters: Arc<HashMap<String, Arc<OrgRosters>>>,
    /// When the counters were last read (`None`: read them now).
    pub checked_at: Option<Instant>,
    /// When the rosters were parsed (membership periods depend on the day).
    pub rosters_at: Instant,
}

impl Snapshot {
    pub fn empty() -> Snapshot {
        Snapshot {
            versions: Versions::NONE,
            opt_outs: Arc::default(),
            rosters: Arc::default(),
            checked_at: None,
            rosters_at: Instant::now(),
        }
    }
}

/// An opt-out as listed by the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OptOut {
    pub patient: String,
    pub reference: String,
    pub reason: Option<String>,
    /// Unix seconds.
    pub since: i64,
}

pub async fn versions(store: &Store) -> Result<Versions, StoreError> {
    let rows =
        sqlx::query("SELECT name, version FROM fhirwall_access_versions").fetch_all(store.pool()).await?;
    let mut v = Versions { opt_outs: 0, rosters: 0, attribution: 0 };
    for row in rows {
        let name: String = row.try_get("name")?;
        let version: i64 = row.try_get("version")?;
        match name.as_str() {
            "opt-outs" => v.opt_outs = version,
            "rosters" => v.rosters = version,
            "attribution" => v.attribution = version,
            _ => {}
        }
    }
    Ok(v)
}

pub async fn opt_out_ids(store: &Store) -> Result<HashSet<String>, StoreError> {
    let rows = sqlx::query("SELECT patient_id FROM fhirwall_opt_outs").fetch_all(store.pool()).await?;
    rows.into_iter().map(|row| row.try_get::<String, _>("patient_id").map_err(StoreError::from)).collect()
}

pub async fn list_opt_outs(store: &Store) -> Result<Vec<OptOut>, StoreError> {
    let rows = sqlx::query(
        "SELECT patient_id, reason, created_at FROM fhirwall_opt_outs ORDER BY created_at, patient_id",
    )
    .fetch_all(store.pool())
    .await?;
    rows.into_iter()
        .map(|row| {
            let patient: String = row.try_get("patient_id")?;
            Ok(OptOut {
                reference: format!("Patient/{patient}"),
                patient,
                reason: row.try_get("reason")?,
                since: row.try_get("created_at")?,
            })
        })
        .collect()
}

/// Record (or update the reason of) an opt-out; returns whether it is new.
pub async fn put_opt_out(store: &Store, patient: &str, reason: Option<&str>) -> Result<bool, StoreError> {
    // Write first: an SQLite transaction that reads and then writes cannot
    // wait for a concurrent writer (SQLITE_BUSY at once); one that starts by
    // writing waits its turn like any writer.
    let mut tx = store.pool().begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO fhirwall_opt_outs (patient_id, reason, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (patient_id) DO NOTHING",
    )
    .bind(patient)
    .bind(reason.map(str::to_owned))
    .bind(unix_now_s())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        > 0;
    if !inserted {
        sqlx::query("UPDATE fhirwall_opt_outs SET reason = $1 WHERE patient_id = $2")
            .bind(reason.map(str::to_owned))
            .bind(patient)
            .execute(&mut *tx)
            .await?;
    }
    bump(&mut tx, "opt-outs").await?;
    tx.commit().await?;
    Ok(inserted)
}

/// Remove an opt-out; returns whether there was one.
pub async fn delete_opt_out(store: &Store, patient: &str) -> Result<bool, StoreError> {
    let mut tx = store.pool().begin().await?;
    let done = sqlx::query("DELETE FROM fhirwall_opt_outs WHERE patient_id = $1")
        .bind(patient)
        .execute(&mut *tx)
        .await?;
    bump(&mut tx, "opt-outs").await?;
    tx.commit().await?;
    Ok(done.rows_affected() > 0)
}

/// Every stored roster: (group id, Group JSON).
pub async fn roster_rows(store: &Store) -> Result<Vec<(String, String)>, StoreError> {
    let rows = sqlx::query("SELECT group_id, body FROM fhirwall_rosters").fetch_all(store.pool()).await?;
    rows.into_iter()
        .map(|row| Ok((row.try_get("group_id")?, row.try_get("body")?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// Store (insert or replace) rosters, all in one transaction.
pub async fn put_rosters(store: &Store, rosters: &[(String, String, String)]) -> Result<(), StoreError> {
    let mut tx = store.pool().begin().await?;
    let now = unix_now_s();
    for (group_id, organization, body) in rosters {
        sqlx::query("DELETE FROM fhirwall_rosters WHERE group_id = $1")
            .bind(group_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO fhirwall_rosters (group_id, organization, body, updated_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(group_id)
        .bind(organization)
        .bind(body)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    bump(&mut tx, "rosters").await?;
    tx.commit().await?;
    Ok(())
}

pub async fn delete_roster(store: &Store, group_id: &str) -> Result<bool, StoreError> {
    let mut tx = store.pool().begin().await?;
    let done = sqlx::query("DELETE FROM fhirwall_rosters WHERE group_id = $1")
        .bind(group_id)
        .execute(&mut *tx)
        .await?;
    bump(&mut tx, "rosters").await?;
    tx.commit().await?;
    Ok(done.rows_affected() > 0)
}

/// Tell every node to drop its cached upstream attribution.
pub async fn bump_attribution(store: &Store) -> Result<(), StoreError> {
    let mut tx = store.pool().begin().await?;
    bump(&mut tx, "attribution").await?;
    tx.commit().await?;
    Ok(())
}

async fn bump(tx: &mut sqlx::Transaction<'_, sqlx::Any>, name: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE fhirwall_access_versions SET version = version + 1 WHERE name = $1")
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opt_outs_and_rosters_round_trip_with_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/s.db", dir.path().display())).await.unwrap();
        let v0 = versions(&store).await.unwrap();
        assert!(put_opt_out(&store, "p1", Some("asked")).await.unwrap());
        assert!(!put_opt_out(&store, "p1", None).await.unwrap());
        let v1 = versions(&store).await.unwrap();
        assert_eq!(v1.opt_outs, v0.opt_outs + 2);
        assert_eq!(v1.rosters, v0.rosters);
        assert_eq!(opt_out_ids(&store).await.unwrap(), HashSet::from(["p1".to_owned()]));
        let listed = list_opt_outs(&store).await.unwrap();
        assert_eq!(listed[0].patient, "p1");
        assert_eq!(listed[0].reason, None);
        assert!(delete_opt_out(&store, "p1").await.unwrap());
        assert!(!delete_opt_out(&store, "p1").await.unwrap());
        assert!(opt_out_ids(&store).await.unwrap().is_empty());

        put_rosters(&store, &[("g1".into(), "Organization/o".into(), "{}".into())]).await.unwrap();
        put_rosters(&store, &[("g1".into(), "Organization/o".into(), "{\"a\":1}".into())]).await.unwrap();
        assert_eq!(roster_rows(&store).await.unwrap(), vec![("g1".to_owned(), "{\"a\":1}".to_owned())]);
        assert_eq!(versions(&store).await.unwrap().rosters, v0.rosters + 2);
        assert!(delete_roster(&store, "g1").await.unwrap());
        bump_attribution(&store).await.unwrap();
        assert_eq!(versions(&store).await.unwrap().attribution, v0.attribution + 1);
    }
}
