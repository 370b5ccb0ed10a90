//! fhirwall's own credential for the upstream (the caller's token is never
//! forwarded): nothing, a static `Authorization` value from the
//! environment, or an OAuth 2.0 access token obtained with the
//! client-credentials grant.
//!
//! OAuth tokens are cached and replaced `refresh_before_s` before they
//! expire; one refresh runs at a time (the others wait for it and use its
//! token). When the upstream still answers 401 the client marks the token
//! it used as rejected ([`UpstreamCredentials::rejected`]) and retries
//! once with a fresh one. A token endpoint that fails is the upstream
//! failing: the request is refused (502/504), the upstream is not called
//! without credentials.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::Mutex;

use crate::config::{UpstreamConfig, UpstreamOAuthConfig};
use crate::error::GatewayError;

/// Most a token endpoint answer may weigh.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// Lifetime assumed when the token endpoint gives no `expires_in`.
const DEFAULT_EXPIRES_IN: u64 = 300;
/// Lifetime of a client assertion.
const ASSERTION_TTL_S: u64 = 300;

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Debug, Clone)]
pub enum UpstreamCredentials {
    None,
    Static(HeaderValue),
    OAuth(Arc<OAuthClient>),
}

impl UpstreamCredentials {
    pub fn from_config(config: &UpstreamConfig, http: HttpClient) -> anyhow::Result<UpstreamCredentials> {
        if let Some(oauth) = &config.oauth {
            return Ok(UpstreamCredentials::OAuth(Arc::new(OAuthClient::new(
                oauth,
                http,
                std::time::Duration::from_millis(config.timeout_ms),
            )?)));
        }
        let Some(var) = &config.authorization_env else { return Ok(UpstreamCredentials::None) };
        let value = std::env::var(var).map_err(|_| {
            anyhow::anyhow!("upstream.authorization_env: environment variable {var} is not set")
        })?;
        let mut value = HeaderValue::from_str(&value)
            .map_err(|_| anyhow::anyhow!("upstream.authorization_env: {var} is not a valid header value"))?;
        value.set_sensitive(true);
        Ok(UpstreamCredentials::Static(value))
    }

    /// The `Authorization` value for the next upstream request.
    pub async fn authorization(&self) -> Result<Option<HeaderValue>, GatewayError> {
        match self {
            UpstreamCredentials::None => Ok(None),
            UpstreamCredentials::Static(v) => Ok(Some(v.clone())),
            UpstreamCredentials::OAuth(client) => client.token().await.map(Some),
        }
    }

    /// The upstream answered 401 to `used`: can a retry with another
    /// credential help? (Only for OAuth: the rejected token is dropped.)
    pub async fn rejected(&self, used: Option<&HeaderValue>) -> bool {
        match (self, used) {
            (UpstreamCredentials::OAuth(client), Some(used)) => {
                client.forget(used).await;
                true
            }
            _ => false,
        }
    }
}

/// How the client authenticates at the token endpoint.
enum ClientAuth {
    /// `client_secret_basic`.
    Secret(String),
    /// `private_key_jwt`.
    Assertion(Box<(jsonwebtoken::EncodingKey, jsonwebtoken::Header)>),
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret or the key.
        f.write_str(match self {
            ClientAuth::Secret(_) => "client_secret_basic",
            ClientAuth::Assertion(_) => "private_key_jwt",
        })
    }
}

struct Cached {
    value: HeaderValue,
    /// When it must be replaced (expiry minus `refresh_before_s`).
    renew_at: Instant,
}

#[derive(Debug)]
pub struct OAuthClient {
    token_url: String,
    client_id: String,
    scope: Option<String>,
    auth: ClientAuth,
    refresh_before: Duration,
    timeout: Duration,
    http: HttpClient,
    cached: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached").field("renew_at", &self.renew_at).finish_non_exhaustive()
    }
}

impl OAuthClient {
    fn new(config: &UpstreamOAuthConfig, http: HttpClient, timeout: Duration) -> anyhow::Result<OAuthClient> {
        let auth = match (&config.client_secret_env, &config.private_key_file) {
            (Some(var), _) => ClientAuth::Secret(std::env::var(var).map_err(|_| {
                anyhow::anyhow!("upstream.oauth.client_secret_env: environment variable {var} is not set")
            })?),
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("upstream.oauth.private_key_file {}: {e}", path.display())
                })?;
                let (algorithm, key) = match config.algorithm.as_str() {
                    "RS256" => {
                        (jsonwebtoken::Algorithm::RS256, jsonwebtoken::EncodingKey::from_rsa_pem(&pem))
                    }
                    "RS384" => {
                        (jsonwebtoken::Algorithm::RS384, jsonwebtoken::EncodingKey::from_rsa_pem(&pem))
                    }
                    "ES256" => (jsonwebtoken::Algorithm::ES256, jsonwebtoken::EncodingKey::from_ec_pem(&pem)),
                    "ES384" => (jsonwebtoken::Algorithm::ES384, jsonwebtoken::EncodingKey::from_ec_pem(&pem)),
                    other => anyhow::bail!("upstream.oauth.algorithm {other}: not supported"),
                };
                let key = key.map_err(|e| {
                    anyhow::anyhow!(
                        "upstream.oauth.private_key_file {}: not a {} PEM private key: {e}",
                        path.display(),
                        config.algorithm
                    )
                })?;
                let mut header = jsonwebtoken::Header::new(algorithm);
                header.kid = config.key_id.clone();
                header.typ = Some("JWT".into());
                ClientAuth::Assertion(Box::new((key, header)))
            }
            (None, None) => anyhow::bail!("upstream.oauth: no client_secret_env or private_key_file"),
        };
        Ok(OAuthClient {
            token_url: config.token_url.clone(),
            client_id: config.client_id.clone(),
            scope: config.scope.clone(),
            auth,
            refresh_before: Duration::from_secs(config.refresh_before_s),
            timeout,
            http,
            cached: Mutex::new(None),
        })
    }

    /// A token that is not due for renewal, fetching one if needed.
    async fn token(&self) -> Result<HeaderValue, GatewayError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.renew_at
        {
            return Ok(c.value.clone());
        }
        let fresh = self.fetch().await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    /// Drop `used` unless another request already replaced it.
    async fn forget(&self, used: &HeaderValue) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| c.value == *used) {
            *cached = None;
        }
    }

    /// The token request (built apart from the exchange: the form
    /// serializer must not live across an await).
    fn token_request(&self) -> Result<Request<Full<Bytes>>, GatewayError> {
        let failed = token_failure;
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(scope) = &self.scope {
            form.append_pair("scope", scope);
        }
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(&self.token_url)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        match &self.auth {
            ClientAuth::Secret(secret) => {
                // RFC 6749 §2.3.1: both parts form-encoded, then Basic.
                let pair = format!("{}:{}", form_encode(&self.client_id), form_encode(secret));
                let mut value = HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
                .map_err(|_| failed("client secret is not header-safe".into()))?;
                value.set_sensitive(true);
                builder = builder.header(AUTHORIZATION, value);
            }
            ClientAuth::Assertion(signing) => {
                let (key, header) = &**signing;
                let now = crate::clock::unix_now_s();
                let mut jti = [0u8; 16];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut jti);
                let claims = serde_json::json!({
                    "iss": self.client_id, "sub": self.client_id, "aud": self.token_url,
                    "iat": now, "exp": now + ASSERTION_TTL_S as i64, "jti": hex::encode(jti),
                });
                let assertion = jsonwebtoken::encode(header, &claims, key)
                    .map_err(|e| failed(format!("signing the client assertion: {e}")))?;
                form.append_pair(
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                );
                form.append_pair("client_assertion", &assertion);
                form.append_pair("client_id", &self.client_id);
            }
        }
        builder.body(Full::new(Bytes::from(form.finish()))).map_err(|e| failed(format!("token request: {e}")))
    }

    async fn fetch(&self) -> Result<Cached, GatewayError> {
        let failed = token_failure;
        let request = self.token_request()?;
        let exchange = async {
            let response =
                self.http.request(request).await.map_err(|e| failed(format!("token endpoint: {e:?}")))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_TOKEN_RESPONSE)
                .collect()
                .await
                .map_err(|e| failed(format!("reading the token answer: {e}")))?
                .to_bytes();
            if !status.is_success() {
                // The endpoint's error code, never the body (it may echo secrets).
                let error = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                return Err(failed(format!("token endpoint answered {status} {error}")));
            }
            Ok(body)
        };
        let body = tokio::time::timeout(self.timeout, exchange).await.map_err(|_| {
            GatewayError::gateway_timeout("the upstream's token endpoint did not answer in time")
        })??;
        let answer: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| failed("the token answer is not JSON".into()))?;
        let token = answer["access_token"].as_str().filter(|t| !t.is_empty());
        let Some(token) = token else { return Err(failed("the token answer has no access_token".into())) };
        let kind = answer["token_type"].as_str().unwrap_or("Bearer");
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(failed(format!("token_type {kind} is not Bearer")));
        }
        let expires_in = answer["expires_in"].as_u64().unwrap_or(DEFAULT_EXPIRES_IN);
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| failed("the access token is not header-safe".into()))?;
        value.set_sensitive(true);
        // Renew early, but never treat a token as good for less than a
        // fifth of its life (a short-lived token would otherwise be
        // fetched again for every request).
        let lifetime = Duration::from_secs(expires_in);
        let renew_after = lifetime.saturating_sub(self.refresh_before).max(lifetime / 5);
        tracing::info!(token_url = %self.token_url, expires_in, "upstream: obtained an access token");
        Ok(Cached { value, renew_at: Instant::now() + renew_after })
    }
}

fn token_failure(detail: String) -> GatewayError {
    GatewayError::bad_gateway("fhirwall could not obtain its credentials for the upstream FHIR server")
        .with_detail(detail)
}

fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
