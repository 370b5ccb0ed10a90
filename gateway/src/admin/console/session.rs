//! Console sessions: the admin token is presented once, at sign-in, and
//! exchanged for a random session id carried in an `HttpOnly`,
//! `SameSite=Strict` cookie scoped to `/admin/console`, so the token never
//! sits in the browser's storage and no script can read the session.
//!
//! Every state-changing call also needs the session's CSRF token in the
//! `X-CSRF-Token` header (the page reads it from `GET …/api/session`, which
//! a cross-site page cannot read). Sessions live in this node's memory:
//! they end at sign-out, after [`IDLE`] without a call, after [`LIFETIME`],
//! and when the gateway restarts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;

/// The cookie's name.
pub const COOKIE: &str = "fhirwall_console";
/// A session unused this long is over.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// No session lasts longer.
pub const LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// Most sessions kept at once; signing in beyond it ends the oldest.
const MAX_SESSIONS: usize = 64;

#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    started: Instant,
    last_used: Instant,
}

/// A signed-in session, as a request presents it.
#[derive(Debug, Clone)]
pub struct Current {
    pub csrf: String,
}

#[derive(Debug, Default)]
pub struct Sessions {
    /// Keyed by the SHA-256 of the session id: a memory dump does not hold
    /// usable cookies.
    live: Mutex<HashMap<String, Session>>,
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

fn key_of(session_id: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(session_id.as_bytes()))
}

impl Sessions {
    /// Start a session; returns (session id for the cookie, CSRF token).
    pub fn start(&self) -> (String, String) {
        let (id, csrf) = (random_token(), random_token());
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|_, s| usable(s, now));
        if live.len() >= MAX_SESSIONS
            && let Some(oldest) = live.iter().min_by_key(|(_, s)| s.started).map(|(k, _)| k.clone())
        {
            live.remove(&oldest);
        }
        live.insert(key_of(&id), Session { csrf: csrf.clone(), started: now, last_used: now });
        (id, csrf)
    }

    /// The session the request's cookie names, if it is live (and mark it used).
    pub fn current(&self, headers: &HeaderMap) -> Option<Current> {
        let id = cookie_value(headers, COOKIE)?;
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let key = key_of(&id);
        let session = live.get_mut(&key)?;
        if !usable(session, now) {
            live.remove(&key);
            return None;
        }
        session.last_used = now;
        Some(Current { csrf: session.csrf.clone() })
    }

    /// Whether the request's cookie names a live session, without marking it used.
    pub fn is_signed_in(&self, headers: &HeaderMap) -> bool {
        let Some(id) = cookie_value(headers, COOKIE) else { return false };
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get(&key_of(&id)).is_some_and(|s| usable(s, Instant::now()))
    }

    /// End the request's session.
    pub fn end(&self, headers: &HeaderMap) {
        if let Some(id) = cookie_value(headers, COOKIE) {
            self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(&key_of(&id));
        }
    }
}

fn usable(s: &Session, now: Instant) -> bool {
    now.duration_since(s.last_used) < IDLE && now.duration_since(s.started) < LIFETIME
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` that starts a session. `Secure` when the request came
/// through a TLS-terminating proxy (`X-Forwarded-Proto: https`); the admin
/// listener itself speaks plain HTTP on a private address.
pub fn set_cookie(id: &str, secure: bool) -> String {
    let max_age = LIFETIME.as_secs();
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/admin/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

/// The `Set-Cookie` that ends a session in the browser.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/admin/console; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, value.parse().unwrap());
        h
    }

    #[test]
    fn a_started_session_is_found_by_its_cookie_and_ends_at_sign_out() {
        let sessions = Sessions::default();
        let (id, csrf) = sessions.start();
        let headers = with_cookie(&format!("other=1; {COOKIE}={id}"));
        assert_eq!(sessions.current(&headers).unwrap().csrf, csrf);
        assert!(sessions.is_signed_in(&headers));
        sessions.end(&headers);
        assert!(sessions.current(&headers).is_none());
    }

    #[test]
    fn unknown_or_empty_cookies_are_no_session() {
        let sessions = Sessions::default();
        let _ = sessions.start();
        for cookie in [format!("{COOKIE}="), format!("{COOKIE}=abc"), "x=1".into()] {
            assert!(sessions.current(&with_cookie(&cookie)).is_none(), "{cookie}");
        }
        assert!(sessions.current(&HeaderMap::new()).is_none());
    }

    #[test]
    fn sessions_are_capped_and_the_oldest_goes_first() {
        let sessions = Sessions::default();
        let (first, _) = sessions.start();
        for _ in 0..MAX_SESSIONS {
            sessions.start();
        }
        assert!(sessions.current(&with_cookie(&format!("{COOKIE}={first}"))).is_none());
        assert!(sessions.live.lock().unwrap().len() <= MAX_SESSIONS);
    }

    #[test]
    fn the_cookie_is_http_only_same_site_strict_and_scoped() {
        let c = set_cookie("abc", false);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Path=/admin/console"));
        assert!(!c.contains("Secure"));
        assert!(set_cookie("abc", true).ends_with("; Secure"));
    }
}
