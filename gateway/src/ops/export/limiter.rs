//! The pace of export requests to the upstream: all jobs of a node share one
//! budget of requests per second, so on-demand requests (which never wait
//! here) keep their latency while exports run.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Requests are let through one per `interval`, in arrival order.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl RateLimiter {
    pub fn per_second(rate: u32) -> RateLimiter {
        RateLimiter { interval: Duration::from_secs(1) / rate.max(1), next: Mutex::new(Instant::now()) }
    }

    /// Wait for this request's turn. Waiters queue on the lock, so the
    /// order is the order of arrival.
    pub async fn acquire(&self) {
        let mut next = self.next.lock().await;
        let now = Instant::now();
        if *next > now {
            tokio::time::sleep_until(*next).await;
        }
        // An idle limiter does not bank turns: no burst after a pause.
        *next = (*next).max(now) + self.interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_spaced_at_the_rate() {
        let limiter = RateLimiter::per_second(100);
        let started = Instant::now();
        for _ in 0..11 {
            limiter.acquire().await;
        }
        // The first goes at once, the next ten 10 ms apart.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(900), "{elapsed:?}");
    }
}
