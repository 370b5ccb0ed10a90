//! The client registry and the assertion replay cache, both in the store so
//! every node of a PostgreSQL deployment sees the same clients and refuses
//! the same replayed `jti`.
//!
//! A client row holds its `[[clients]]` entry as JSON, where it came from
//! (`config` or `admin`), its state, and a registration id (`reg`) that is
//! renewed whenever the registration changes or is deleted. Access tokens
//! carry the `reg` they were issued under, so a token stops working when its
//! client is deleted, re-registered or changed (e.g. moved to another
//! organization), not only when it expires.
//!
//! States: `active`; `deleted` (by the admin API: a config entry of the same id
//! does not bring it back at the next start, `POST /admin/clients` does);
//! `removed` (dropped from the config: re-adding it to the config restores it).
//!
//! Nodes cache lookups for [`CLIENT_CACHE_TTL`]; the node that handles a
//! deletion drops its cached entry at once, others notice within the TTL.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use sqlx::Row;

use super::jwks;
use super::scopes::ScopeSet;
use crate::clock::unix_now_s;
use crate::config::ClientConfig;
use crate::store::{Store, StoreError};

/// How long a node trusts its cached view of a client.
pub const CLIENT_CACHE_TTL: Duration = Duration::from_secs(2);

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS fhirwall_clients (
        client_id TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        source TEXT NOT NULL,
        state TEXT NOT NULL,
        reg TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS fhirwall_jti (
        client_id TEXT NOT NULL,
        jti TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (client_id, jti)
    )",
    "CREATE INDEX IF NOT EXISTS fhirwall_jti_expires ON fhirwall_jti (expires_at)",
];

/// Where a client's verification keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Inline `jwks`, or a `jwks_path` file read when the client was loaded.
    Static(Arc<JwkSet>),
    /// `jwks_uri`, fetched and cached.
    Uri(String),
    /// No usable keys (none configured, or the file is unreadable): the
    /// client cannot authenticate with an assertion.
    Unavailable(String),
}

/// A registered client, as loaded from the store.
#[derive(Debug, Clone)]
pub struct Client {
    pub client_id: String,
    pub organization: String,
    pub npi: Option<String>,
    pub scopes: ScopeSet,
    pub keys: KeySource,
    /// `client_secret_env`: enables client_secret_basic (sandboxes).
    pub secret_env: Option<String>,
    /// `jwks_uri` as registered (what a `jku` header must equal).
    pub jwks_uri: Option<String>,
    /// The registration id (see the module docs).
    pub reg: String,
}

/// Why a registration is refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("{0}")]
    Invalid(String),
    #[error("client {0} is already registered")]
    Exists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for RegistrationError {
    fn from(e: sqlx::Error) -> Self {
        RegistrationError::Store(StoreError::Database(e))
    }
}

/// Check a registration (config or admin API) before it is stored.
/// `require_absolute_paths`: the admin API has no config directory to
/// resolve a relative `jwks_path` against.
pub fn validate(client: &ClientConfig, require_absolute_paths: bool) -> Result<(), String> {
    let id = &client.client_id;
    if id.is_empty() || id.len() > 200 || !id.chars().all(|c| c.is_ascii_graphic()) || id.contains('/') {
        return Err(format!(
            "client_id {id:?} must be 1-200 printable ASCII characters without '/' or spaces"
        ));
    }
    let org = client.organization.strip_prefix("Organization/").unwrap_or("");
    if !crate::fhir::search::is_fhir_id(org) {
        return Err(format!("{id}: organization must be Organization/{{id}}"));
    }
    if let Some(npi) = &client.npi
        && !(npi.len() == 10 && npi.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("{id}: npi must be 10 digits"));
    }
    ScopeSet::parse_strict(&client.scopes.join(" ")).map_err(|e| format!("{id}: scopes: {e}"))?;
    let sources = [client.jwks.is_some(), client.jwks_path.is_some(), client.jwks_uri.is_some()];
    match sources.iter().filter(|s| **s).count() {
        0 if client.client_secret_env.is_none() => {
            return Err(format!("{id}: give one of jwks, jwks_path, jwks_uri"));
        }
        0 | 1 => {}
        _ => return Err(format!("{id}: give only one of jwks, jwks_path, jwks_uri")),
    }
    if let Some(value) = &client.jwks {
        jwks::parse_jwks(value).map_err(|e| format!("{id}: jwks: {e}"))?;
    }
    if let Some(path) = &client.jwks_path {
        if require_absolute_paths && !path.is_absolute() {
            return Err(format!("{id}: jwks_path must be absolute"));
        }
        read_jwks_file(path).map_err(|e| format!("{id}: jwks_path: {e}"))?;
    }
    if let Some(uri) = &client.jwks_uri {
        jwks::check_jwks_uri(uri).map_err(|e| format!("{id}: {e}"))?;
    }
    if let Some(env) = &client.client_secret_env
        && env.is_empty()
    {
        return Err(format!("{id}: client_secret_env must name an environment variable"));
    }
    Ok(())
}

fn read_jwks_file(path: &Path) -> Result<JwkSet, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    jwks::parse_jwks(&value).map_err(|e| format!("{}: {e}", path.display()))
}

impl Client {
    fn load(config: &ClientConfig, reg: String) -> Result<Client, String> {
        let scopes = ScopeSet::parse_strict(&config.scopes.join(" ")).map_err(|e| e.to_string())?;
        let keys = if let Some(value) = &config.jwks {
            match jwks::parse_jwks(value) {
                Ok(set) => KeySource::Static(Arc::new(set)),
                Err(e) => KeySource::Unavailable(e),
            }
        } else if let Some(path) = &config.jwks_path {
            match read_jwks_file(path) {
                Ok(set) => KeySource::Static(Arc::new(set)),
                Err(e) => KeySource::Unavailable(e),
            }
        } else if let Some(uri) = &config.jwks_uri {
            KeySource::Uri(uri.clone())
        } else {
            KeySource::Unavailable("no jwks, jwks_path or jwks_uri registered".into())
        };
        Ok(Client {
            client_id: config.client_id.clone(),
            organization: config.organization.clone(),
            npi: config.npi.clone(),
            scopes,
            keys,
            secret_env: config.client_secret_env.clone(),
            jwks_uri: config.jwks_uri.clone(),
            reg,
        })
    }
}

/// Store-backed clients with a short-lived per-node cache (clones share it).
#[derive(Clone)]
pub struct Registry {
    store: Store,
    cache: moka::future::Cache<String, Option<Arc<Client>>>,
}

/// A client as listed by the admin API.
#[derive(Debug, serde::Serialize)]
pub struct Listed {
    pub source: String,
    #[serde(flatten)]
    pub config: ClientConfig,
}

fn new_reg() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

impl Registry {
    pub async fn open(store: Store) -> Result<Registry, StoreError> {
        for statement in SCHEMA {
            sqlx::query(statement).execute(store.pool()).await?;
        }
        Ok(Registry {
            store,
            cache: moka::future::Cache::builder().max_capacity(10_000).time_to_live(CLIENT_CACHE_TTL).build(),
        })
    }

    /// Make the store match the `[[clients]]` of the config: add new entries,
    /// update changed ones (new `reg`), mark config clients no longer listed
    /// as removed. Clients deleted through the admin API stay deleted.
    pub async fn sync_config(&self, clients: &[ClientConfig]) -> Result<(), RegistrationError> {
        let pool = self.store.pool();
        for client in clients {
            let json =
                serde_json::to_string(client).map_err(|e| RegistrationError::Invalid(e.to_string()))?;
            sqlx::query(
                "INSERT INTO fhirwall_clients (client_id, config, source, state, reg, updated_at)
                 VALUES ($1, $2, 'config', 'active', $3, $4)
                 ON CONFLICT (client_id) DO UPDATE SET config = $2, source = 'config', state = 'active', reg = $3, updated_at = $4
                 WHERE fhirwall_clients.state = 'removed'
                    OR (fhirwall_clients.state = 'active' AND fhirwall_clients.config <> $2)",
            )
            .bind(&client.client_id)
            .bind(&json)
            .bind(new_reg())
            .bind(unix_now_s())
            .execute(pool)
            .await?;
            let state: Option<String> =
                sqlx::query("SELECT state FROM fhirwall_clients WHERE client_id = $1")
                    .bind(&client.client_id)
                    .fetch_optional(pool)
                    .await?
                    .map(|row| row.try_get("state"))
                    .transpose()?;
            if state.as_deref() == Some("deleted") {
                tracing::warn!(
                    client_id = %client.client_id,
                    "client in [[clients]] was deleted through the admin API and stays deleted; \
                     POST /admin/clients to register it again, or remove it from the config"
                );
            }
        }
        let rows = sqlx::query(
            "SELECT client_id FROM fhirwall_clients WHERE source = 'config' AND state = 'active'",
        )
        .fetch_all(pool)
        .await?;
        for row in rows {
            let id: String = row.try_get("client_id")?;
            if !clients.iter().any(|c| c.client_id == id) {
                sqlx::query(
                    "UPDATE fhirwall_clients SET state = 'removed', reg = $2, updated_at = $3
                     WHERE client_id = $1 AND source = 'config' AND state = 'active'",
                )
                .bind(&id)
                .bind(new_reg())
                .bind(unix_now_s())
                .execute(pool)
                .await?;
                tracing::info!(client_id = %id, "client no longer in [[clients]]: removed");
            }
        }
        Ok(())
    }

    /// Register a client through the admin API.
    pub async fn register(&self, client: &ClientConfig) -> Result<(), RegistrationError> {
        validate(client, true).map_err(RegistrationError::Invalid)?;
        let json = serde_json::to_string(client).map_err(|e| RegistrationError::Invalid(e.to_string()))?;
        let done = sqlx::query(
            "INSERT INTO fhirwall_clients (client_id, config, source, state, reg, updated_at)
             VALUES ($1, $2, 'admin', 'active', $3, $4)
             ON CONFLICT (client_id) DO UPDATE SET config = $2, source = 'admin', state = 'active', reg = $3, updated_at = $4
             WHERE fhirwall_clients.state <> 'active'",
        )
        .bind(&client.client_id)
        .bind(&json)
        .bind(new_reg())
        .bind(unix_now_s())
        .execute(self.store.pool())
        .await?;
        self.cache.invalidate(&client.client_id).await;
        if done.rows_affected() == 0 {
            return Err(RegistrationError::Exists(client.client_id.clone()));
        }
        Ok(())
    }

    /// Delete a client (admin API). `false` when no such active client.
    pub async fn delete(&self, client_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE fhirwall_clients SET state = 'deleted', reg = $2, updated_at = $3
             WHERE client_id = $1 AND state = 'active'",
        )
        .bind(client_id)
        .bind(new_reg())
        .bind(unix_now_s())
        .execute(self.store.pool())
        .await?;
        self.cache.invalidate(client_id).await;
        Ok(done.rows_affected() > 0)
    }

    /// Active clients, for the admin API.
    pub async fn list(&self) -> Result<Vec<Listed>, StoreError> {
        let rows = sqlx::query(
            "SELECT config, source FROM fhirwall_clients WHERE state = 'active' ORDER BY client_id",
        )
        .fetch_all(self.store.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let config: String = row.try_get("config")?;
            let source: String = row.try_get("source")?;
            if let Ok(config) = serde_json::from_str(&config) {
                out.push(Listed { source, config });
            }
        }
        Ok(out)
    }

    /// The active client with this id (cached for [`CLIENT_CACHE_TTL`]).
    pub async fn get(&self, client_id: &str) -> Result<Option<Arc<Client>>, StoreError> {
        if client_id.is_empty() || client_id.len() > 200 {
            return Ok(None);
        }
        let store = self.store.clone();
        let id = client_id.to_owned();
        self.cache
            .try_get_with_by_ref(client_id, async move { load(&store, &id).await })
            .await
            .map_err(|e| StoreError::Setup(e.to_string()))
    }

    /// Record a client assertion's `jti`; `false` when it was seen before
    /// (on any node). `expires_at`: the assertion's `exp` (unix seconds).
    pub async fn record_jti(&self, client_id: &str, jti: &str, expires_at: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO fhirwall_jti (client_id, jti, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (client_id, jti) DO NOTHING",
        )
        .bind(client_id)
        .bind(jti)
        .bind(expires_at)
        .execute(self.store.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Drop replay entries whose assertion expired before `before` (unix s).
    pub async fn purge_jti(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM fhirwall_jti WHERE expires_at < $1")
            .bind(before)
            .execute(self.store.pool())
            .await?;
        Ok(done.rows_affected())
    }
}

async fn load(store: &Store, client_id: &str) -> Result<Option<Arc<Client>>, StoreError> {
    let row =
        sqlx::query("SELECT config, reg FROM fhirwall_clients WHERE client_id = $1 AND state = 'active'")
            .bind(client_id)
            .fetch_optional(store.pool())
            .await?;
    let Some(row) = row else { return Ok(None) };
    let config: String = row.try_get("config")?;
    let reg: String = row.try_get("reg")?;
    let config: ClientConfig = serde_json::from_str(&config).map_err(|e| {
        StoreError::Setup(format!("client {client_id}: stored registration is unreadable: {e}"))
    })?;
    let client = Client::load(&config, reg)
        .map_err(|e| StoreError::Setup(format!("client {client_id}: stored registration is invalid: {e}")))?;
    Ok(Some(Arc::new(client)))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn client(id: &str) -> ClientConfig {
        ClientConfig {
            client_id: id.into(),
            organization: "Organization/org-1".into(),
            npi: Some("1234567893".into()),
            jwks_path: None,
            jwks: None,
            jwks_uri: Some("https://ehr.example/jwks.json".into()),
            scopes: vec!["system/*.read".into()],
            client_secret_env: None,
        }
    }

    async fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/s.db", dir.path().display())).await.unwrap();
        (dir, Registry::open(store).await.unwrap())
    }

    #[test]
    fn registrations_are_validated() {
        assert!(validate(&client("a"), true).is_ok());
        type Patch = Box<dyn Fn(&mut ClientConfig)>;
        let cases: Vec<(Patch, &str)> = vec![
            (Box::new(|c| c.client_id = String::new()), "client_id"),
            (Box::new(|c| c.client_id = "a b".into()), "client_id"),
            (Box::new(|c| c.organization = "org-1".into()), "organization"),
            (Box::new(|c| c.organization = "Organization/".into()), "organization"),
            (Box::new(|c| c.npi = Some("123".into())), "npi"),
            (Box::new(|c| c.scopes = vec!["patient/*.read".into()]), "scopes"),
            (Box::new(|c| c.jwks_uri = Some("http://ehr.example/jwks".into())), "https"),
            (Box::new(|c| c.jwks_uri = None), "one of"),
            (Box::new(|c| c.jwks = Some(serde_json::json!({"keys": []}))), "only one"),
            (
                Box::new(|c| {
                    c.jwks_uri = None;
                    c.jwks_path = Some("rel.json".into())
                }),
                "absolute",
            ),
            (
                Box::new(|c| {
                    c.jwks_uri = None;
                    c.jwks_path = Some("/no/such/file.json".into())
                }),
                "jwks_path",
            ),
        ];
        for (patch, needle) in cases {
            let mut c = client("a");
            patch(&mut c);
            let err = validate(&c, true).unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[tokio::test]
    async fn register_delete_and_config_sync() {
        let (_dir, reg) = registry().await;
        reg.sync_config(&[client("cfg")]).await.unwrap();
        let first = reg.get("cfg").await.unwrap().unwrap();
        // An unchanged config keeps the registration id (tokens survive restarts).
        reg.sync_config(&[client("cfg")]).await.unwrap();
        reg.cache.invalidate("cfg").await;
        assert_eq!(reg.get("cfg").await.unwrap().unwrap().reg, first.reg);
        // A changed entry gets a new one.
        let mut moved = client("cfg");
        moved.organization = "Organization/org-2".into();
        reg.sync_config(std::slice::from_ref(&moved)).await.unwrap();
        reg.cache.invalidate("cfg").await;
        let second = reg.get("cfg").await.unwrap().unwrap();
        assert_ne!(second.reg, first.reg);
        assert_eq!(second.organization, "Organization/org-2");

        reg.register(&client("adm")).await.unwrap();
        assert!(matches!(reg.register(&client("adm")).await, Err(RegistrationError::Exists(_))));
        assert!(matches!(reg.register(&client("cfg")).await, Err(RegistrationError::Exists(_))));
        assert_eq!(reg.list().await.unwrap().len(), 2);
        assert!(reg.delete("adm").await.unwrap());
        assert!(reg.get("adm").await.unwrap().is_none(), "deleted: gone at once on this node");
        assert!(!reg.delete("adm").await.unwrap());
        assert!(!reg.delete("nobody").await.unwrap());
        reg.register(&client("adm")).await.unwrap();
        assert!(reg.get("adm").await.unwrap().is_some());

        // Deleted config clients stay deleted across a config sync.
        assert!(reg.delete("cfg").await.unwrap());
        reg.sync_config(std::slice::from_ref(&moved)).await.unwrap();
        assert!(reg.get("cfg").await.unwrap().is_none());
        // Config clients dropped from the config are removed, and come back when re-added.
        reg.sync_config(&[client("other")]).await.unwrap();
        reg.sync_config(&[]).await.unwrap();
        reg.cache.invalidate("other").await;
        assert!(reg.get("other").await.unwrap().is_none());
        reg.sync_config(&[client("other")]).await.unwrap();
        reg.cache.invalidate("other").await;
        assert!(reg.get("other").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn replayed_jti_is_refused_until_purged() {
        let (_dir, reg) = registry().await;
        assert!(reg.record_jti("a", "j1", 100).await.unwrap());
        assert!(!reg.record_jti("a", "j1", 100).await.unwrap());
        assert!(reg.record_jti("b", "j1", 100).await.unwrap(), "jti is per client");
        assert_eq!(reg.purge_jti(50).await.unwrap(), 0);
        assert_eq!(reg.purge_jti(101).await.unwrap(), 2);
    }
}
