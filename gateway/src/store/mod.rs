//! Persistent state: SQLite (embedded default) or PostgreSQL (several gateway
//! nodes share one database). State lives here, not in process memory, so a
//! restart or a second node sees the same clients, opt-outs, rosters, jobs,
//! replay cache and secrets.

use std::path::Path;

use rand::RngCore;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

/// Which database the URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("state database: {0}")]
    Setup(String),
}

/// The state store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// Schema, applied idempotently at startup. Types are the common subset of
/// SQLite and PostgreSQL (TEXT, BIGINT) so one query text serves both.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS fhirwall_secrets (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )",
    // keyring: rotating keys, every generation of each (see keyring).
    "CREATE TABLE IF NOT EXISTS fhirwall_keys (
        purpose TEXT NOT NULL,
        generation BIGINT NOT NULL,
        material TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        active_from BIGINT NOT NULL,
        retire_at BIGINT NOT NULL,
        PRIMARY KEY (purpose, generation)
    )",
    // access: opt-outs, ingested attribution rosters, and the
    // change counters every node polls (see access::state).
    "CREATE TABLE IF NOT EXISTS fhirwall_opt_outs (
        patient_id TEXT PRIMARY KEY,
        reason TEXT,
        created_at BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS fhirwall_rosters (
        group_id TEXT PRIMARY KEY,
        organization TEXT NOT NULL,
        body TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS fhirwall_access_versions (
        name TEXT PRIMARY KEY,
        version BIGINT NOT NULL
    )",
    "INSERT INTO fhirwall_access_versions (name, version)
        VALUES ('opt-outs', 0), ('rosters', 0), ('attribution', 0)
        ON CONFLICT (name) DO NOTHING",
];

impl Store {
    /// Open (creating an SQLite file and its directory if needed) and migrate.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        install_default_drivers();
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite://") {
            let file = rest.split('?').next().unwrap_or_default();
            if !file.is_empty()
                && file != ":memory:"
                && let Some(dir) = Path::new(file).parent()
            {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Setup(format!("cannot create {}: {e}", dir.display())))?;
            }
            let url = if rest.contains('?') { url.to_owned() } else { format!("{url}?mode=rwc") };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(StoreError::Setup(format!("unsupported state URL {url}")));
        };
        let max = if backend == Backend::Sqlite { 4 } else { 16 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(&url)
            .await?;
        let store = Store { pool, backend };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        if self.backend == Backend::Sqlite {
            // WAL lets readers proceed while a writer commits.
            sqlx::query("PRAGMA journal_mode=WAL").execute(&self.pool).await?;
        }
        for statement in SCHEMA {
            sqlx::query(statement).execute(&self.pool).await?;
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Is the database answering?
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await.is_ok()
    }

    /// A 32-byte secret shared by every node: created once, then read.
    /// Concurrent first starts agree because the insert does nothing when
    /// another node won, and everyone reads the stored value back.
    pub async fn shared_secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let mut fresh = [0u8; 32];
        rand::rng().fill_bytes(&mut fresh);
        sqlx::query(
            "INSERT INTO fhirwall_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(hex::encode(fresh))
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT value FROM fhirwall_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        let value: String = row.try_get("value")?;
        let bytes =
            hex::decode(value).map_err(|e| StoreError::Setup(format!("secret {name} is corrupt: {e}")))?;
        bytes.try_into().map_err(|_| StoreError::Setup(format!("secret {name} has the wrong length")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_store_creates_its_file_and_keeps_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/nested/state.db", dir.path().display());
        let store = Store::open(&url).await.unwrap();
        assert!(store.ping().await);
        let a = store.shared_secret("page-key").await.unwrap();
        let b = store.shared_secret("page-key").await.unwrap();
        assert_eq!(a, b);
        assert_ne!(a, store.shared_secret("other").await.unwrap());
        drop(store);
        let reopened = Store::open(&url).await.unwrap();
        assert_eq!(reopened.shared_secret("page-key").await.unwrap(), a);
    }
}
