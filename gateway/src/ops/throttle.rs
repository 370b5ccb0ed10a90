//! Brute-force defence for `$member-match` (HRex member-match notes, HREX-10:
//! "repeated near-identical demographics with varying card data" must be
//! monitored and throttled).
//!
//! A caller who knows a person's name and birth date could try subscriber
//! ids until one matches and learn that the person is a member (and their
//! member id). Every attempt is counted against two budgets over a sliding
//! window (`member_match.failure_window_s`):
//!
//! - per client and *subject* — the demographics an attacker keeps fixed
//!   (family name and birth date, normalised): `max_failures_per_subject`;
//! - per client overall (an attacker varying the demographics too):
//!   `max_failures_per_client`.
//!
//! An attempt is written to the store *before* the matcher runs, so a burst
//! of concurrent attempts counts in full and every node of a PostgreSQL
//! deployment sees the same counts; a successful match, a malformed request
//! or a failure that is not the caller's (plugin, upstream) takes its row
//! back. Only no-match answers (422) keep counting. When a budget is spent
//! the request is refused with 429 and `Retry-After` without running the
//! matcher. The subject is stored as an HMAC under a store secret, never as
//! the name or birth date.

use std::time::Duration;

use rand::RngCore;
use serde_json::Value;
use sqlx::Row;

use crate::clock::unix_now_s;
use crate::config::MemberMatchConfig;
use crate::error::{GatewayError, Kind};
use crate::store::{Store, StoreError};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS fhirwall_match_attempts (
        attempt_id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        at BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS fhirwall_match_attempts_client ON fhirwall_match_attempts (client_id, at)",
];

/// The budgets, from `[member_match]`.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    pub per_subject: u32,
    pub per_client: u32,
    pub window: Duration,
}

impl Budgets {
    pub fn from_config(config: &MemberMatchConfig) -> Budgets {
        Budgets {
            per_subject: config.max_failures_per_subject,
            per_client: config.max_failures_per_client,
            window: Duration::from_secs(config.failure_window_s),
        }
    }
}

/// The counter of `$member-match` attempts.
pub struct MatchThrottle {
    store: Store,
    key: ring::hmac::Key,
    budgets: Budgets,
}

/// One counted attempt; settle it with [`MatchThrottle::settle`].
#[derive(Debug)]
pub struct Attempt {
    id: String,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// A 422 (no match, ambiguous, opted out, uncovered): keeps counting.
    Failed,
    /// Matched, or ended for a reason that is not a guess (400, 5xx).
    Released,
}

impl MatchThrottle {
    pub async fn new(store: Store, budgets: Budgets) -> Result<MatchThrottle, StoreError> {
        for statement in SCHEMA {
            sqlx::query(statement).execute(store.pool()).await?;
        }
        let secret = store.shared_secret("member-match-subject-key").await?;
        Ok(MatchThrottle { key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret), store, budgets })
    }

    /// Count this attempt, or refuse it with 429 when a budget is spent.
    /// `member_patient` is the request's MemberPatient resource.
    pub async fn admit(&self, client_id: &str, member_patient: &Value) -> Result<Attempt, GatewayError> {
        let now = unix_now_s();
        let since = now - self.budgets.window.as_secs() as i64;
        let subject = self.subject(member_patient);
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let attempt = Attempt { id: hex::encode(id) };
        let store_error = |e: sqlx::Error| {
            GatewayError::of(
                crate::error::Kind::Unavailable,
                "the state store is unavailable; try again later",
            )
            .with_detail(format!("member-match throttle: state database: {e}"))
        };
        // Old rows of this client go first, so its counts (and the table) stay bounded.
        sqlx::query("DELETE FROM fhirwall_match_attempts WHERE client_id = $1 AND at <= $2")
            .bind(client_id)
            .bind(since)
            .execute(self.store.pool())
            .await
            .map_err(store_error)?;
        sqlx::query(
            "INSERT INTO fhirwall_match_attempts (attempt_id, client_id, subject, at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&attempt.id)
        .bind(client_id)
        .bind(&subject)
        .bind(now)
        .execute(self.store.pool())
        .await
        .map_err(store_error)?;
        let row = sqlx::query(
            "SELECT COUNT(*) AS client_n,
                    COALESCE(SUM(CASE WHEN subject = $2 THEN 1 ELSE 0 END), 0) AS subject_n,
                    MIN(at) AS oldest
             FROM fhirwall_match_attempts WHERE client_id = $1 AND at > $3",
        )
        .bind(client_id)
        .bind(&subject)
        .bind(since)
        .fetch_one(self.store.pool())
        .await
        .map_err(store_error)?;
        let client_n: i64 = row.try_get("client_n").map_err(store_error)?;
        let subject_n: i64 = row.try_get("subject_n").map_err(store_error)?;
        let oldest: i64 = row.try_get::<Option<i64>, _>("oldest").map_err(store_error)?.unwrap_or(now);
        // The attempt itself is in both counts: a budget of N admits N.
        let over_subject = !subject.is_empty() && subject_n > i64::from(self.budgets.per_subject);
        let over_client = client_n > i64::from(self.budgets.per_client);
        if over_subject || over_client {
            // A refused attempt is not a guess; it must not extend the lockout.
            self.settle(attempt, Settled::Released).await;
            let retry_after = if over_client {
                (oldest + self.budgets.window.as_secs() as i64 - now).max(1)
            } else {
                self.budgets.window.as_secs() as i64
            };
            tracing::warn!(
                client = %client_id,
                per_subject = over_subject,
                per_client = over_client,
                "member-match throttled (too many attempts without a match)"
            );
            return Err(throttled(retry_after));
        }
        Ok(attempt)
    }

    /// `$provider-member-match`: refuse (429) a client whose overall
    /// budget of attempts without a match is spent, before anything runs.
    pub async fn check_client(&self, client_id: &str) -> Result<(), GatewayError> {
        let now = unix_now_s();
        let since = now - self.budgets.window.as_secs() as i64;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(at) AS oldest FROM fhirwall_match_attempts WHERE client_id = $1 AND at > $2",
        )
        .bind(client_id)
        .bind(since)
        .fetch_one(self.store.pool())
        .await
        .map_err(|e| GatewayError::of(crate::error::Kind::Unavailable, "the state store is unavailable; try again later")
                .with_detail(format!("member-match throttle: state database: {e}")))?;
        let n: i64 = row.try_get("n").unwrap_or(0);
        let oldest: i64 = row.try_get::<Option<i64>, _>("oldest").ok().flatten().unwrap_or(now);
        if n >= i64::from(self.budgets.per_client) {
            tracing::warn!(client = %client_id, "provider-member-match throttled (too many members without a match)");
            return Err(throttled((oldest + self.budgets.window.as_secs() as i64 - now).max(1)));
        }
        Ok(())
    }

    /// `$provider-member-match`: count each attested member the matcher did
    /// not match as one attempt without a match (the same budgets as
    /// `$member-match`, per client and per subject).
    pub async fn record_failures(&self, client_id: &str, member_patients: &[Value]) {
        let now = unix_now_s();
        for patient in member_patients {
            let mut id = [0u8; 16];
            rand::rng().fill_bytes(&mut id);
            if let Err(e) = sqlx::query(
                "INSERT INTO fhirwall_match_attempts (attempt_id, client_id, subject, at) VALUES ($1, $2, $3, $4)",
            )
            .bind(hex::encode(id))
            .bind(client_id)
            .bind(self.subject(patient))
            .bind(now)
            .execute(self.store.pool())
            .await
            {
                tracing::warn!(error = %e, "member-match throttle: could not record a failed match");
                return;
            }
        }
    }

    /// Record how the attempt ended. A store failure here is logged, not
    /// returned: the answer is already decided, and a lost `Released` only
    /// makes the budget stricter.
    pub async fn settle(&self, attempt: Attempt, how: Settled) {
        if how == Settled::Failed {
            return;
        }
        if let Err(e) = sqlx::query("DELETE FROM fhirwall_match_attempts WHERE attempt_id = $1")
            .bind(&attempt.id)
            .execute(self.store.pool())
            .await
        {
            tracing::warn!(error = %e, "member-match throttle: could not release an attempt");
        }
    }

    /// What an attacker keeps fixed: family name and birth date, normalised
    /// (case, spaces, punctuation, diacritics are not told apart), as an HMAC.
    /// Empty when the request names neither (it still counts per client).
    fn subject(&self, member_patient: &Value) -> String {
        let family = member_patient["name"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|n| n["family"].as_str())
            .map(fold)
            .unwrap_or_default();
        let birth = member_patient["birthDate"].as_str().map(fold).unwrap_or_default();
        if family.is_empty() && birth.is_empty() {
            return String::new();
        }
        let tag = ring::hmac::sign(&self.key, format!("{family}\u{0}{birth}").as_bytes());
        hex::encode(&tag.as_ref()[..16])
    }
}

/// Lower-case ASCII letters and digits only (diacritics folded to their base letter).
fn fold(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    s.nfkd().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect()
}

fn throttled(retry_after_s: i64) -> GatewayError {
    GatewayError::of(Kind::Throttled, "too many $member-match attempts without a match; try again later")
        .with_header(http::header::RETRY_AFTER, http::HeaderValue::from(retry_after_s as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::IssueCode;
    use http::StatusCode;
    use serde_json::json;

    async fn throttle(per_subject: u32, per_client: u32) -> (MatchThrottle, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/state.db", dir.path().display())).await.unwrap();
        let budgets = Budgets { per_subject, per_client, window: Duration::from_secs(3600) };
        (MatchThrottle::new(store, budgets).await.unwrap(), dir)
    }

    fn patient(family: &str, birth: &str) -> Value {
        json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Ann"]}], "birthDate": birth})
    }

    #[tokio::test]
    async fn same_subject_is_refused_after_its_budget_whatever_the_spelling() {
        let (t, _dir) = throttle(3, 100).await;
        for family in ["Müller", "MULLER", "mul-ler"] {
            let a = t.admit("c1", &patient(family, "1970-01-02")).await.unwrap();
            t.settle(a, Settled::Failed).await;
        }
        let refused = t.admit("c1", &patient("Muller", "1970-01-02")).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.code, IssueCode::Throttled);
        assert!(refused.headers.iter().any(|(n, _)| n == http::header::RETRY_AFTER));
        // Another person, and the same person for another client, still go through.
        assert!(t.admit("c1", &patient("Muller", "1970-01-03")).await.is_ok());
        assert!(t.admit("c2", &patient("Muller", "1970-01-02")).await.is_ok());
    }

    #[tokio::test]
    async fn matches_and_errors_do_not_count_and_refusals_do_not_extend() {
        let (t, _dir) = throttle(2, 100).await;
        for _ in 0..5 {
            let a = t.admit("c1", &patient("Lee", "1980-05-05")).await.unwrap();
            t.settle(a, Settled::Released).await;
        }
        for _ in 0..2 {
            let a = t.admit("c1", &patient("Lee", "1980-05-05")).await.unwrap();
            t.settle(a, Settled::Failed).await;
        }
        for _ in 0..3 {
            assert!(t.admit("c1", &patient("Lee", "1980-05-05")).await.is_err());
        }
        let rows: i64 = sqlx::query("SELECT COUNT(*) AS n FROM fhirwall_match_attempts")
            .fetch_one(t.store.pool())
            .await
            .unwrap()
            .get("n");
        assert_eq!(rows, 2, "only the two failures are kept");
    }

    #[tokio::test]
    async fn a_client_varying_the_demographics_runs_into_its_own_budget() {
        let (t, _dir) = throttle(3, 4).await;
        for day in 1..=4 {
            let a = t.admit("c1", &patient("Stone", &format!("1990-01-0{day}"))).await.unwrap();
            t.settle(a, Settled::Failed).await;
        }
        let refused = t.admit("c1", &patient("Stone", "1990-01-09")).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(t.admit("c2", &patient("Stone", "1990-01-09")).await.is_ok());
    }

    #[tokio::test]
    async fn the_store_holds_no_names_or_birth_dates() {
        let (t, _dir) = throttle(3, 100).await;
        let a = t.admit("c1", &patient("Zyxwvut", "1961-12-31")).await.unwrap();
        t.settle(a, Settled::Failed).await;
        let row = sqlx::query("SELECT subject FROM fhirwall_match_attempts").fetch_one(t.store.pool()).await;
        let subject: String = row.unwrap().get("subject");
        assert_eq!(subject.len(), 32);
        assert!(!subject.contains("zyxwvut") && !subject.contains("1961"));
    }
}
