//! Client JWKS: parsing and checking a key set, choosing the key a client
//! assertion names, and fetching `jwks_uri` key sets over https with a
//! bounded, time-limited cache that refreshes (rate-limited) on an unknown `kid`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, KeyOperations, PublicKeyUse,
};

use super::keys;

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys one JWKS may hold.
const MAX_KEYS: usize = 50;
/// How long a fetched JWKS is used before it is fetched again.
const JWKS_TTL: Duration = Duration::from_secs(300);
/// An unknown `kid` refetches a JWKS at most this often.
const REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Deadline for one JWKS fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Parse a JWKS value given to fhirwall: public keys only, at least one
/// key fhirwall can use, at most `MAX_KEYS` (50).
pub fn parse_jwks(value: &serde_json::Value) -> Result<JwkSet, String> {
    let keys =
        value.get("keys").and_then(|k| k.as_array()).ok_or("a JWKS is an object with a \"keys\" array")?;
    if keys.len() > MAX_KEYS {
        return Err(format!("a JWKS may hold at most {MAX_KEYS} keys"));
    }
    if keys.iter().any(keys::has_private_members) {
        return Err("the JWKS holds private key material: register the public keys only".into());
    }
    let set: JwkSet = serde_json::from_value(value.clone()).map_err(|e| format!("not a JWKS: {e}"))?;
    if !set.keys.iter().any(|k| ACCEPTED.iter().any(|alg| compatible(k, *alg))) {
        return Err("the JWKS holds no RSA, P-256 or P-384 signing key".into());
    }
    Ok(set)
}

const ACCEPTED: [Algorithm; 5] = keys::ACCEPTED_ALGS;

/// Can `key` verify signatures made with `alg`? Key type and curve must fit,
/// and the key's own `alg`, `use` and `key_ops`, when given, must allow it.
pub fn compatible(key: &Jwk, alg: Algorithm) -> bool {
    let shape = match (&key.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256 | Algorithm::RS384 | Algorithm::PS384) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => ec.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => ec.curve == EllipticCurve::P384,
        _ => false,
    };
    let alg_ok = key.common.key_algorithm.is_none_or(|a| alg_matches(a, alg));
    let use_ok = key.common.public_key_use.as_ref().is_none_or(|u| *u == PublicKeyUse::Signature);
    let ops_ok = key.common.key_operations.as_ref().is_none_or(|ops| ops.contains(&KeyOperations::Verify));
    shape && alg_ok && use_ok && ops_ok
}

fn alg_matches(key_alg: KeyAlgorithm, alg: Algorithm) -> bool {
    matches!(
        (key_alg, alg),
        (KeyAlgorithm::RS256, Algorithm::RS256)
            | (KeyAlgorithm::RS384, Algorithm::RS384)
            | (KeyAlgorithm::PS384, Algorithm::PS384)
            | (KeyAlgorithm::ES256, Algorithm::ES256)
            | (KeyAlgorithm::ES384, Algorithm::ES384)
    )
}

/// The keys that may have signed a token with this `alg` and `kid`: the key
/// with that `kid` (if it fits), or, without a `kid`, every fitting key.
pub fn candidates<'a>(set: &'a JwkSet, alg: Algorithm, kid: Option<&str>) -> Vec<&'a Jwk> {
    set.keys
        .iter()
        .filter(|k| match kid {
            Some(kid) => k.common.key_id.as_deref() == Some(kid),
            None => true,
        })
        .filter(|k| compatible(k, alg))
        .collect()
}

/// A `jwks_uri` fhirwall will fetch: https, or http to this machine (tests).
pub fn check_jwks_uri(uri: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(uri).map_err(|e| format!("jwks_uri {uri:?}: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(format!("jwks_uri {uri:?} must be an https URL (http only for localhost)")),
    }
}

/// A fetched key set and how long it may be used (SMART-41: never longer
/// than the `Cache-Control: max-age` it was served with).
#[derive(Clone)]
struct Fetched {
    set: Arc<JwkSet>,
    fresh_for: Duration,
}

struct AsServed;

impl moka::Expiry<String, Fetched> for AsServed {
    fn expire_after_create(
        &self,
        _uri: &String,
        value: &Fetched,
        _at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.fresh_for)
    }
}

/// How long a key set may be cached, from its `Cache-Control`: `no-store`
/// or `no-cache` not at all, `max-age=N` at most N seconds, and never more
/// than [`JWKS_TTL`] (a removed key must stop working soon).
fn freshness(headers: &http::HeaderMap) -> Duration {
    let mut fresh = JWKS_TTL;
    for value in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { return Duration::ZERO };
        for directive in value.split(',').map(|d| d.trim().to_ascii_lowercase()) {
            if directive == "no-store" || directive == "no-cache" {
                return Duration::ZERO;
            }
            if let Some(seconds) = directive.strip_prefix("max-age=") {
                let seconds: u64 = seconds.trim_matches('"').parse().unwrap_or(0);
                fresh = fresh.min(Duration::from_secs(seconds));
            }
        }
    }
    fresh
}

/// Fetches and caches `jwks_uri` key sets.
pub struct JwksFetcher {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    cache: moka::future::Cache<String, Fetched>,
    /// URIs refetched recently because of an unknown `kid`.
    refreshed: moka::sync::Cache<String, ()>,
}

impl Default for JwksFetcher {
    fn default() -> Self {
        JwksFetcher::new()
    }
}

impl JwksFetcher {
    pub fn new() -> JwksFetcher {
        JwksFetcher {
            http: http_client(),
            cache: moka::future::Cache::builder().max_capacity(1_000).expire_after(AsServed).build(),
            refreshed: moka::sync::Cache::builder()
                .max_capacity(1_000)
                .time_to_live(REFRESH_INTERVAL)
                .build(),
        }
    }

    /// The key set at `uri` (cached). Concurrent misses share one fetch.
    pub async fn get(&self, uri: &str) -> Result<Arc<JwkSet>, String> {
        let fetched =
            self.cache.try_get_with_by_ref(uri, self.fetch(uri)).await.map_err(|e| e.as_ref().clone())?;
        Ok(fetched.set)
    }

    /// Fetch `uri` again unless that happened within [`REFRESH_INTERVAL`];
    /// `None` when rate-limited.
    pub async fn refresh(&self, uri: &str) -> Result<Option<Arc<JwkSet>>, String> {
        if self.refreshed.contains_key(uri) {
            return Ok(None);
        }
        self.refreshed.insert(uri.to_owned(), ());
        let fetched = self.fetch(uri).await?;
        let set = fetched.set.clone();
        self.cache.insert(uri.to_owned(), fetched).await;
        Ok(Some(set))
    }

    async fn fetch(&self, uri: &str) -> Result<Fetched, String> {
        check_jwks_uri(uri)?;
        let (status, headers, body) = send(
            &self.http,
            Method::GET,
            uri,
            &[("accept", "application/json")],
            None,
            MAX_JWKS_BYTES,
            FETCH_TIMEOUT,
        )
        .await
        .map_err(|e| format!("fetching {uri}: {e}"))?;
        if status != StatusCode::OK {
            return Err(format!("fetching {uri}: status {status}"));
        }
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("{uri} is not JSON: {e}"))?;
        let set = Arc::new(parse_jwks(&value).map_err(|e| format!("{uri}: {e}"))?);
        Ok(Fetched { set, fresh_for: freshness(&headers) })
    }
}

/// An https (and loopback http) client with webpki roots; no redirects.
pub fn http_client() -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    let https = crate::net::https_connector(Duration::from_secs(3));
    Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(https)
}

/// One exchange with a deadline and a body cap: status, headers, body.
pub async fn send(
    client: &Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
    max_body: usize,
    timeout: Duration,
) -> Result<(StatusCode, http::HeaderMap, Bytes), String> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(body.unwrap_or_default())).map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| format!("{e}"))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, max_body)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok::<_, String>((parts.status, parts.headers, body))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| "timed out".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec_key(crv: &str, extra: serde_json::Value) -> serde_json::Value {
        let der = keys::generate_pkcs8(keys::KeyKind::Es384).unwrap();
        let key = keys::SigningKey::from_pkcs8_der(keys::KeyKind::Es384, &der).unwrap();
        let mut jwk = serde_json::to_value(&key.public_jwk).unwrap();
        jwk["crv"] = crv.into();
        for (k, v) in extra.as_object().unwrap() {
            jwk[k] = v.clone();
        }
        jwk
    }

    #[test]
    fn jwks_must_be_public_and_usable() {
        let good = serde_json::json!({"keys": [ec_key("P-384", serde_json::json!({}))]});
        assert!(parse_jwks(&good).is_ok());
        for (bad, why) in [
            (serde_json::json!({"keys": [ec_key("P-384", serde_json::json!({"d": "AAAA"}))]}), "private"),
            (serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}), "private"),
            (serde_json::json!({"keys": []}), "no RSA"),
            (serde_json::json!([]), "keys"),
            (
                serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}),
                "no RSA",
            ),
        ] {
            let err = parse_jwks(&bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn keys_are_chosen_by_kid_and_fit() {
        let k384 = ec_key("P-384", serde_json::json!({"kid": "a"}));
        let mut sig_only = ec_key("P-384", serde_json::json!({"kid": "b", "alg": "ES384"}));
        sig_only["use"] = "enc".into();
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [k384, sig_only]})).unwrap();
        assert_eq!(candidates(&set, Algorithm::ES384, Some("a")).len(), 1);
        assert_eq!(candidates(&set, Algorithm::ES384, Some("b")).len(), 0, "use=enc is not for signatures");
        assert_eq!(candidates(&set, Algorithm::ES384, Some("zzz")).len(), 0);
        assert_eq!(candidates(&set, Algorithm::ES384, None).len(), 1);
        assert_eq!(candidates(&set, Algorithm::ES256, None).len(), 0, "curve must fit the alg");
        assert_eq!(candidates(&set, Algorithm::RS384, None).len(), 0, "kty must fit the alg");
        let pinned: JwkSet = serde_json::from_value(
            serde_json::json!({"keys": [ec_key("P-384", serde_json::json!({"alg": "ES384"}))]}),
        )
        .unwrap();
        assert_eq!(candidates(&pinned, Algorithm::ES384, None).len(), 1);
    }

    #[test]
    fn jwks_uris_must_be_https_or_loopback() {
        assert!(check_jwks_uri("https://ehr.example/jwks.json").is_ok());
        assert!(check_jwks_uri("http://127.0.0.1:9/jwks.json").is_ok());
        assert!(check_jwks_uri("http://localhost:9/jwks.json").is_ok());
        assert!(check_jwks_uri("http://[::1]:9/jwks.json").is_ok());
        for bad in [
            "http://ehr.example/jwks.json",
            "http://10.0.0.1/jwks",
            "file:///etc/passwd",
            "ftp://x/y",
            "nope",
        ] {
            assert!(check_jwks_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_key_set_is_cached_no_longer_than_its_server_allows() {
        let with = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_str(value).unwrap());
            freshness(&headers)
        };
        assert_eq!(freshness(&http::HeaderMap::new()), JWKS_TTL);
        assert_eq!(with("public, max-age=60"), Duration::from_secs(60));
        assert_eq!(with("max-age=86400"), JWKS_TTL, "never longer than fhirwall's own bound");
        assert_eq!(with("max-age=0"), Duration::ZERO);
        assert_eq!(with("no-store"), Duration::ZERO);
        assert_eq!(with("max-age=60, no-cache"), Duration::ZERO);
        assert_eq!(with("max-age=junk"), Duration::ZERO, "an unreadable max-age is not a licence to cache");
    }
}
