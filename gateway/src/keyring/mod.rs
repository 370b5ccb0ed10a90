//! Rotating keys shared by every node: the access-token signing key and the
//! page-token sealing key, each a list of generations in the store
//! (`fhirwall_keys`).
//!
//! A rotation never cuts anyone off:
//! - the new generation is *published* at once (every node accepts what it
//!   signs as soon as it has polled, within [`POLL`]) but *signs* only from
//!   `active_from` = now + [`PUBLISH_AHEAD_S`], later than any node's next
//!   poll — so no node ever meets a token signed by a key it does not know;
//! - the generations before it keep verifying until `retire_at` = the new
//!   key's `active_from` + the lifetime of what they signed (token TTL, page
//!   token TTL) + a margin: the last token an old key signed expires first.
//!
//! `revoke_previous` is for a key that leaked: the new generation signs at
//! once and every older one stops verifying at once (on each node within
//! [`POLL`]; tokens it signed are refused from then on, and clients fetch
//! new ones).
//!
//! The `member-match-subject-key` secret is not here on purpose: it keys the
//! `$member-match` guess budgets, and rotating it would reset them.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::Digest;
use sqlx::Row;

use crate::store::{Store, StoreError};

#[cfg(test)]
mod tests;

/// How often every node reads the key table.
pub const POLL: Duration = Duration::from_secs(2);
/// How long after a rotation the new key starts signing: well over [`POLL`],
/// so every node knows it before it meets a token signed with it.
pub const PUBLISH_AHEAD_S: i64 = 6;
/// Added to an old key's verify window beyond the lifetime of what it signed
/// (clock skew between nodes, a node's poll running late).
pub const RETIRE_MARGIN_S: i64 = 30;
/// Retired generations are deleted this long after `retire_at` (kept a while
/// so `GET /admin/keys` shows what happened).
const PURGE_AFTER_S: i64 = 24 * 3600;
/// `retire_at` of a generation no rotation has retired yet.
pub const NEVER: i64 = i64::MAX;

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    /// ES384 private key (PKCS#8 DER) that signs fhirwall's access tokens.
    AccessToken,
    /// 32 bytes: the AES-256-GCM key that seals paging links.
    PageToken,
}

impl Purpose {
    pub const ALL: [Purpose; 2] = [Purpose::AccessToken, Purpose::PageToken];

    pub fn name(self) -> &'static str {
        match self {
            Purpose::AccessToken => "access-token",
            Purpose::PageToken => "page-token",
        }
    }

    pub fn parse(name: &str) -> Option<Purpose> {
        Purpose::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The `fhirwall_secrets` row that held this key before rotation
    /// existed: imported as generation 1, so an upgrade keeps every token
    /// and paging link valid.
    fn legacy_secret(self) -> &'static str {
        match self {
            Purpose::AccessToken => "auth-access-token-key-es384",
            Purpose::PageToken => "page-token-key",
        }
    }

    fn decode_legacy(self, value: &str) -> Option<Vec<u8>> {
        match self {
            Purpose::AccessToken => STANDARD.decode(value).ok(),
            Purpose::PageToken => hex::decode(value).ok().filter(|b| b.len() == 32),
        }
    }

    fn generate(self) -> Result<Vec<u8>, StoreError> {
        let rng = ring::rand::SystemRandom::new();
        match self {
            Purpose::AccessToken => ring::signature::EcdsaKeyPair::generate_pkcs8(
                &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                &rng,
            )
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| StoreError::Setup("no randomness for a new signing key".into())),
            Purpose::PageToken => ring::rand::generate::<[u8; 32]>(&rng)
                .map(|key| key.expose().to_vec())
                .map_err(|_| StoreError::Setup("no randomness for a new page key".into())),
        }
    }
}

/// One generation of a key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyVersion {
    pub purpose: Purpose,
    pub generation: i64,
    /// The key itself; never logged, never answered.
    pub material: Vec<u8>,
    pub created_at: i64,
    /// Signs from then on (until a newer generation is active).
    pub active_from: i64,
    /// Verifies until then ([`NEVER`]: not retired).
    pub retire_at: i64,
}

impl std::fmt::Debug for KeyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVersion")
            .field("purpose", &self.purpose)
            .field("generation", &self.generation)
            .field("active_from", &self.active_from)
            .field("retire_at", &self.retire_at)
            .finish_non_exhaustive()
    }
}

impl KeyVersion {
    /// Accepts what it signed at `now`.
    pub fn verifies_at(&self, now: i64) -> bool {
        now < self.retire_at
    }

    /// A short public name for operators: a SHA-256 prefix of the key (for
    /// the token key the caller may prefer its JWK thumbprint).
    pub fn fingerprint(&self) -> String {
        hex::encode(&sha2::Sha256::digest(&self.material)[..8])
    }
}

/// The generations of one purpose, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    pub versions: Vec<KeyVersion>,
}

impl KeySet {
    /// The generation that signs at `now`: the newest one active and not
    /// retired. `None` only if every generation is retired (fail closed).
    pub fn signing(&self, now: i64) -> Option<&KeyVersion> {
        self.versions.iter().find(|v| v.active_from <= now && v.verifies_at(now))
    }

    /// Every generation that verifies at `now`, the signing one first.
    pub fn verifying(&self, now: i64) -> impl Iterator<Item = &KeyVersion> {
        let signing = self.signing(now).map(|v| v.generation);
        let first = self.versions.iter().filter(move |v| Some(v.generation) == signing);
        let rest = self.versions.iter().filter(move |v| v.verifies_at(now) && Some(v.generation) != signing);
        first.chain(rest)
    }
}

/// How a rotation treats the generations before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Publish now, sign after [`PUBLISH_AHEAD_S`], retire the old ones
    /// once what they signed has expired.
    Scheduled,
    /// Sign now; the old ones stop verifying now (a leaked key).
    RevokePrevious,
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("another rotation of the {0} key happened at the same moment; list the keys and retry if needed")]
    Concurrent(&'static str),
}

/// The key table.
#[derive(Debug, Clone)]
pub struct Keyring {
    store: Store,
    /// Longest lifetime of anything signed, per purpose (seconds).
    lifetimes: [(Purpose, i64); 2],
}

impl Keyring {
    /// Open the key table; a purpose without a generation gets generation 1
    /// (the pre-rotation secret if there is one, else a new key). Concurrent
    /// first starts agree: inserts do nothing when another node won.
    pub async fn open(
        store: Store,
        token_ttl_s: i64,
        page_ttl_s: i64,
        now: i64,
    ) -> Result<Keyring, StoreError> {
        let keyring = Keyring {
            store,
            lifetimes: [(Purpose::AccessToken, token_ttl_s), (Purpose::PageToken, page_ttl_s)],
        };
        for purpose in Purpose::ALL {
            // Only when the purpose has no generation at all (not merely no
            // generation 1: that one may have been purged long ago).
            if !keyring.load(purpose).await?.versions.is_empty() {
                continue;
            }
            let legacy = sqlx::query("SELECT value FROM fhirwall_secrets WHERE name = $1")
                .bind(purpose.legacy_secret())
                .fetch_optional(keyring.store.pool())
                .await?;
            let material = match legacy {
                Some(row) => {
                    let value: String = row.try_get("value")?;
                    purpose.decode_legacy(&value).ok_or_else(|| {
                        StoreError::Setup(format!("secret {} is corrupt", purpose.legacy_secret()))
                    })?
                }
                None => purpose.generate()?,
            };
            let first = KeyVersion {
                purpose,
                generation: 1,
                material,
                created_at: now,
                active_from: 0,
                retire_at: NEVER,
            };
            keyring.insert(&first).await?;
        }
        Ok(keyring)
    }

    fn lifetime(&self, purpose: Purpose) -> i64 {
        self.lifetimes.iter().find(|(p, _)| *p == purpose).map(|(_, s)| *s).unwrap_or(0)
    }

    async fn insert(&self, version: &KeyVersion) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO fhirwall_keys (purpose, generation, material, created_at, active_from, retire_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (purpose, generation) DO NOTHING",
        )
        .bind(version.purpose.name())
        .bind(version.generation)
        .bind(STANDARD.encode(&version.material))
        .bind(version.created_at)
        .bind(version.active_from)
        .bind(version.retire_at)
        .execute(self.store.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every generation of `purpose`, newest first.
    pub async fn load(&self, purpose: Purpose) -> Result<KeySet, StoreError> {
        let rows = sqlx::query(
            "SELECT generation, material, created_at, active_from, retire_at FROM fhirwall_keys
             WHERE purpose = $1 ORDER BY generation DESC",
        )
        .bind(purpose.name())
        .fetch_all(self.store.pool())
        .await?;
        let mut versions = Vec::with_capacity(rows.len());
        for row in rows {
            let generation: i64 = row.try_get("generation")?;
            let material: String = row.try_get("material")?;
            let material = STANDARD.decode(material).map_err(|_| {
                StoreError::Setup(format!("the {} key, generation {generation}, is corrupt", purpose.name()))
            })?;
            versions.push(KeyVersion {
                purpose,
                generation,
                material,
                created_at: row.try_get("created_at")?,
                active_from: row.try_get("active_from")?,
                retire_at: row.try_get("retire_at")?,
            });
        }
        Ok(KeySet { versions })
    }

    /// Add a generation of `purpose` and retire the older ones (see
    /// [`Rotation`]). Returns the new generation.
    pub async fn rotate(&self, purpose: Purpose, how: Rotation, now: i64) -> Result<KeyVersion, RotateError> {
        let current = self.load(purpose).await?;
        let generation = current.versions.first().map_or(1, |v| v.generation + 1);
        let active_from = match how {
            Rotation::Scheduled => now + PUBLISH_AHEAD_S,
            Rotation::RevokePrevious => now,
        };
        let version = KeyVersion {
            purpose,
            generation,
            material: purpose.generate()?,
            created_at: now,
            active_from,
            retire_at: NEVER,
        };
        if !self.insert(&version).await? {
            return Err(RotateError::Concurrent(purpose.name()));
        }
        let retire_at = match how {
            Rotation::Scheduled => active_from + self.lifetime(purpose) + RETIRE_MARGIN_S,
            Rotation::RevokePrevious => now,
        };
        // Only ever earlier: a second rotation never extends an old key's life.
        sqlx::query(
            "UPDATE fhirwall_keys SET retire_at = $1
             WHERE purpose = $2 AND generation < $3 AND retire_at > $1",
        )
        .bind(retire_at)
        .bind(purpose.name())
        .bind(generation)
        .execute(self.store.pool())
        .await
        .map_err(StoreError::from)?;
        Ok(version)
    }

    /// Delete generations retired more than a day ago.
    pub async fn purge(&self, now: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM fhirwall_keys WHERE retire_at < $1")
            .bind(now.saturating_sub(PURGE_AFTER_S))
            .execute(self.store.pool())
            .await?;
        Ok(done.rows_affected())
    }
}
