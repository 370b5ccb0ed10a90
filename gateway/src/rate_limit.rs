//! Request-rate limits, per node: a token bucket per key (a client, an
//! organization, or the token endpoint as a whole). A request takes one
//! token; the bucket refills at `rate` per second up to `burst`. Over the
//! limit the caller is told when a token will be there (`Retry-After`).
//!
//! Limits are per node: behind a load balancer spreading requests over N
//! nodes a client gets up to N times the configured rate. They protect the
//! gateway and the upstream from one caller's flood; they guard no data
//! (nothing is disclosed by going over them), so the bookkeeping may forget
//! idle callers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::Principal;
use crate::config::Config;
use crate::error::{GatewayError, Kind};

/// Keys remembered before idle ones (full buckets) are forgotten.
const PRUNE_AT: usize = 4096;

/// One limit, applied to each key separately.
#[derive(Debug)]
pub struct Buckets {
    /// Tokens added per second.
    rate: f64,
    /// Most tokens a bucket holds (the burst a quiet caller may send at once).
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Buckets {
    /// `rate` per second with bursts of `burst`; `None` (no limit) when
    /// `rate` is 0.
    pub fn new(rate: f64, burst: f64) -> Option<Buckets> {
        (rate > 0.0).then(|| Buckets { rate, burst: burst.max(1.0), buckets: Mutex::new(HashMap::new()) })
    }

    /// Take one token for `key` at `now`: `Err(wait)` when there is none,
    /// with how long until there will be.
    pub fn admit(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= PRUNE_AT && !buckets.contains_key(key) {
            self.forget_idle(&mut buckets, now);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket { tokens: self.burst, at: now });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }

    /// Whether `key` has no token left at `now` (without taking one): how
    /// long until it will.
    pub fn exhausted(&self, key: &str, now: Instant) -> Option<Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.get(key)?;
        let tokens = (bucket.tokens + now.saturating_duration_since(bucket.at).as_secs_f64() * self.rate)
            .min(self.burst);
        (tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - tokens) / self.rate))
    }

    /// Drop the buckets that have refilled (their callers are idle); if a
    /// flood of distinct keys leaves too many, start over (a limit may be
    /// forgiven, memory may not grow without bound).
    fn forget_idle(&self, buckets: &mut HashMap<String, Bucket>, now: Instant) {
        buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.rate < self.burst
        });
        if buckets.len() >= PRUNE_AT {
            tracing::warn!(keys = buckets.len(), "rate limiter: too many busy keys; starting over");
            buckets.clear();
        }
    }
}

/// The limits of one FHIR listener: per client, per organization, and on
/// the token endpoint. Bursts are two seconds' worth.
#[derive(Debug)]
pub struct RequestLimits {
    client: Option<Buckets>,
    organization: Option<Buckets>,
    token: Option<Buckets>,
}

impl RequestLimits {
    pub fn new(config: &Config) -> RequestLimits {
        let per_s = |rate: u32| Buckets::new(f64::from(rate), 2.0 * f64::from(rate));
        RequestLimits {
            client: per_s(config.server.client_requests_per_s),
            organization: per_s(config.server.organization_requests_per_s),
            token: per_s(config.auth.token_requests_per_s),
        }
    }

    /// A FHIR request of an authenticated caller: within its client's and
    /// its organization's rates, or 429 with `Retry-After`.
    pub fn admit_request(&self, principal: &Principal) -> Result<(), GatewayError> {
        let now = Instant::now();
        if let Some(client) = &self.client {
            client.admit(&principal.client_id, now).map_err(|wait| throttled("this client", wait))?;
        }
        if let Some(organization) = &self.organization {
            organization
                .admit(&principal.organization, now)
                .map_err(|wait| throttled("this organization", wait))?;
        }
        Ok(())
    }

    /// A token request: within the token endpoint's rate, or 429.
    pub fn admit_token(&self) -> Result<(), GatewayError> {
        match &self.token {
            Some(token) => {
                token.admit("", Instant::now()).map_err(|wait| throttled("the token endpoint", wait))
            }
            None => Ok(()),
        }
    }
}

pub fn throttled(who: &str, wait: Duration) -> GatewayError {
    let seconds = retry_after_s(wait);
    GatewayError::of(Kind::Throttled, format!("too many requests for {who}; retry after {seconds} s"))
        .with_header(http::header::RETRY_AFTER, http::HeaderValue::from(seconds))
}

/// Whole seconds for `Retry-After` (at least 1).
pub fn retry_after_s(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_per_key() {
        let limiter = Buckets::new(10.0, 3.0).unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.admit("a", t0).is_ok());
        }
        let wait = limiter.admit("a", t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::from_millis(90), "{wait:?}");
        // Another key has its own bucket.
        assert!(limiter.admit("b", t0).is_ok());
        // 100 ms later one more token for "a", not two.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.admit("a", t1).is_ok());
        assert!(limiter.admit("a", t1).is_err());
        // Idle long enough: a full burst again, never more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.admit("a", t2).is_ok());
        }
        assert!(limiter.admit("a", t2).is_err());
    }

    #[test]
    fn exhausted_looks_without_taking() {
        let limiter = Buckets::new(1.0, 2.0).unwrap();
        let t0 = Instant::now();
        assert_eq!(limiter.exhausted("a", t0), None);
        let _ = limiter.admit("a", t0);
        assert_eq!(limiter.exhausted("a", t0), None);
        let _ = limiter.admit("a", t0);
        assert!(limiter.exhausted("a", t0).is_some());
        assert!(limiter.exhausted("a", t0).is_some(), "looking took nothing, gave nothing");
        assert_eq!(limiter.exhausted("a", t0 + Duration::from_secs(1)), None);
    }

    #[test]
    fn off_at_zero_and_retry_after_rounds_up() {
        assert!(Buckets::new(0.0, 10.0).is_none());
        assert_eq!(retry_after_s(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_s(Duration::ZERO), 1);
        assert_eq!(retry_after_s(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_s(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn idle_keys_are_forgotten_and_memory_stays_bounded() {
        let limiter = Buckets::new(1.0, 1.0).unwrap();
        let t0 = Instant::now();
        for i in 0..PRUNE_AT {
            let _ = limiter.admit(&format!("peer-{i}"), t0);
        }
        // All of them busy (empty buckets): the next new key starts over.
        let _ = limiter.admit("new", t0);
        assert!(limiter.buckets.lock().unwrap().len() <= 1);
        // Later, the idle ones are forgotten instead.
        let limiter = Buckets::new(1.0, 1.0).unwrap();
        for i in 0..PRUNE_AT {
            let _ = limiter.admit(&format!("peer-{i}"), t0);
        }
        let later = t0 + Duration::from_secs(5);
        assert!(limiter.admit("late", later).is_ok());
        assert_eq!(limiter.buckets.lock().unwrap().len(), 1);
    }
}
