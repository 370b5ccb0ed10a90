//! SMART Backend Services: fhirwall's own authorization server and the
//! token check on every FHIR request (DESIGN.md "Auth", pipeline steps 1–2).
//!
//! - [`Auth::token_endpoint`]: `POST /auth/token` (client_credentials with a
//!   private_key_jwt client assertion; client_secret_basic only for clients
//!   registered with `client_secret_env`). Errors per RFC 6749 §5.2.
//! - [`Auth::authenticate`]: the bearer token of a FHIR request → a
//!   [`Principal`] (client, organization, NPI, scopes), or 401.
//! - [`Principal::authorize`]: the parsed interaction against the scopes, or 403.
//! - [`Auth::smart_configuration`] and [`Auth::security`]: discovery.
//! - [`Auth::register_client`] / [`Auth::delete_client`]: the admin API.
//!
//! Submodules: `assertion` (client assertion checks), `jwks` (client key
//! sets, `jwks_uri` fetching), `keys` (key pairs, thumbprints), `registry`
//! (clients and the `jti` replay cache in the store), `scopes` (SMART v1/v2
//! scopes and their enforcement), `tokens` (fhirwall's access tokens), `cli`
//! (`fhirwall keygen` and `fhirwall token`).
//!
//! State lives in the store (clients, replay cache, the token signing key),
//! so several nodes on one PostgreSQL database issue and accept each other's
//! tokens and refuse each other's replays. Per-node caches are short-lived:
//! verified tokens (until their `exp`, but every request still checks the
//! client's registration), clients ([`registry::CLIENT_CACHE_TTL`]) and
//! fetched JWKS.

pub mod assertion;
pub mod cli;
pub mod jwks;
pub mod keys;
pub mod registry;
pub mod scopes;
pub mod secret;
pub mod tokens;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, PRAGMA, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

pub use assertion::{ErrorCode, OAuthError};
pub use registry::{Client, RegistrationError};
pub use scopes::{Perms, Scope, ScopeSet};

use crate::clock::unix_now_s;
use crate::config::{ClientConfig, Config};
use crate::error::{GatewayError, Kind};
use crate::fhir::FhirRequest;
use crate::keyring::{KeySet, Keyring, Purpose};
use crate::store::Store;

/// `client_assertion_type` of a JWT client assertion (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The token endpoint's path on the FHIR listener.
pub const TOKEN_PATH: &str = "/auth/token";
/// Largest token request body read.
const MAX_TOKEN_REQUEST: usize = 64 * 1024;
/// How often expired replay-cache rows are purged (by whichever request comes).
const PURGE_INTERVAL_S: i64 = 60;
/// Verified access tokens kept per node.
const VERIFIED_CACHE_CAPACITY: u64 = 100_000;

/// Who a FHIR request comes from: taken from a verified access token whose
/// client is still registered under the same registration.
#[derive(Debug, Clone)]
pub struct Principal {
    pub client_id: String,
    /// `Organization/{id}` the token acts for.
    pub organization: String,
    pub npi: Option<String>,
    pub scopes: ScopeSet,
    /// The access token's `jti` (for audit).
    pub token_id: String,
    /// The access token's `exp` (unix seconds).
    pub expires_at: i64,
    reg: String,
}

impl Principal {
    /// Check the parsed interaction against the scopes (403 otherwise); for
    /// searches under a v2 query constraint, add the constraint.
    pub fn authorize(&self, request: &mut FhirRequest) -> Result<(), GatewayError> {
        if request.params.contains("access_token") {
            return Err(GatewayError::bad_request(
                "access tokens are accepted only in the Authorization header, never in the URL or body",
            ));
        }
        self.scopes.authorize(request).map_err(|denied| insufficient_scope(&denied.0))
    }

    /// Unconstrained `perm` on `resource_type` (e.g. an export's `_type`).
    pub fn allows(&self, resource_type: &str, perm: Perms) -> bool {
        self.scopes.allows(resource_type, perm)
    }

    /// What per-caller state (paging links, jobs) should be bound to: the
    /// client, its registration and the token's scopes, so a link made
    /// under one set of scopes does not open under another.
    pub fn binding(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{}\n{}", self.reg, self.scopes).as_bytes());
        format!("{}#{}", self.client_id, hex::encode(&digest[..8]))
    }
}

/// What a background job keeps of the principal that started it, to act
/// as that client again later (bulk export batches): only while the client
/// is still registered under the same registration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Delegation {
    pub client_id: String,
    pub organization: String,
    pub npi: Option<String>,
    /// The token's granted scopes.
    pub scopes: String,
    reg: String,
}

impl Principal {
    pub fn delegation(&self) -> Delegation {
        Delegation {
            client_id: self.client_id.clone(),
            organization: self.organization.clone(),
            npi: self.npi.clone(),
            scopes: self.scopes.to_string(),
            reg: self.reg.clone(),
        }
    }
}

/// 403 with RFC 6750 `insufficient_scope`.
fn insufficient_scope(message: &str) -> GatewayError {
    GatewayError::forbidden(message.to_owned()).with_header(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"fhirwall\", error=\"insufficient_scope\""),
    )
}

/// 401 with RFC 6750 `invalid_token`.
fn invalid_token(message: &str) -> GatewayError {
    let header =
        format!("Bearer realm=\"fhirwall\", error=\"invalid_token\", error_description=\"{message}\"");
    GatewayError::of(Kind::Unauthenticated, message.to_owned()).with_header(
        WWW_AUTHENTICATE,
        HeaderValue::from_str(&header).unwrap_or(HeaderValue::from_static("Bearer")),
    )
}

/// Verified tokens leave the cache when they expire.
struct UntilExpiry;

impl moka::Expiry<[u8; 32], CachedCheck> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &CachedCheck,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(value.principal.expires_at.saturating_sub(unix_now_s()).max(0) as u64))
    }
}

/// A verified token in the cache, with the key epoch it was verified under.
#[derive(Clone)]
struct CachedCheck {
    principal: Arc<Principal>,
    key_epoch: u64,
}

/// The authorization server and token verifier.
pub struct Auth {
    token_url: String,
    /// What a client assertion's `aud` may be: the token URL (and, for a
    /// default port, the same URL with the port spelled out).
    audiences: Vec<String>,
    ttl_s: i64,
    allow_writes: bool,
    registry: registry::Registry,
    jwks: jwks::JwksFetcher,
    keys: tokens::TokenKeys,
    verified: moka::sync::Cache<[u8; 32], CachedCheck>,
    /// Bumped whenever the signing keys change: a cached verification from
    /// an earlier epoch is done again (a check that raced a revocation
    /// cannot keep a revoked token alive in the cache).
    key_epoch: std::sync::atomic::AtomicU64,
    last_purge: AtomicI64,
}

/// What the token endpoint answers on success.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    pub scope: String,
}

/// The token URL for a FHIR base URL: same origin, path `/auth/token`.
pub fn token_url_for(base_url: &url::Url) -> String {
    let mut url = base_url.clone();
    url.set_path(TOKEN_PATH);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

impl Auth {
    /// Open the auth state in the store: tables, the shared signing key, and
    /// the `[[clients]]` of the config (validated, then synced).
    pub async fn new(config: &Config, store: &Store, keyring: &Keyring) -> anyhow::Result<Auth> {
        for client in &config.clients {
            registry::validate(client, false).map_err(|e| anyhow::anyhow!("clients: {e}"))?;
        }
        let token_url = token_url_for(&config.server.base_url);
        let mut audiences = vec![token_url.clone()];
        if let Ok(url) = url::Url::parse(&token_url)
            && url.port().is_none()
            && let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default())
        {
            audiences.push(format!("{}://{host}:{port}{TOKEN_PATH}", url.scheme()));
        }
        let audience = config.server.base_url.as_str().trim_end_matches('/').to_owned();
        let keys =
            tokens::TokenKeys::from_set(&keyring.load(Purpose::AccessToken).await?, &token_url, &audience)?;
        let registry = registry::Registry::open(store.clone()).await?;
        registry.sync_config(&config.clients).await.map_err(|e| anyhow::anyhow!("clients: {e}"))?;
        for client in &config.clients {
            if client.client_secret_env.is_some() {
                tracing::warn!(client_id = %client.client_id, "client_secret_basic is enabled for this client: for sandboxes only");
            }
        }
        Ok(Auth {
            token_url,
            audiences,
            ttl_s: config.auth.token_ttl_s.min(i64::MAX as u64) as i64,
            allow_writes: config.server.allow_writes,
            registry,
            jwks: jwks::JwksFetcher::new(),
            keys,
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CACHE_CAPACITY)
                .expire_after(UntilExpiry)
                .build(),
            key_epoch: std::sync::atomic::AtomicU64::new(0),
            last_purge: AtomicI64::new(0),
        })
    }

    /// `scheme://host:port/auth/token`.
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    // ---------------------------------------------------------------------
    // The token endpoint

    /// `POST /auth/token`: the whole HTTP exchange, and what the audit log
    /// records about it.
    pub async fn token_endpoint(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> (Response<Full<Bytes>>, TokenAudit) {
        let (parts, body) = req.into_parts();
        let refused = |code: ErrorCode| TokenAudit { error: Some(code.as_str()), ..TokenAudit::default() };
        if parts.method != Method::POST {
            let mut response =
                oauth_error_response(&OAuthError::request("the token endpoint takes POST"), false);
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static("POST"));
            return (response, refused(ErrorCode::InvalidRequest));
        }
        let body = match Limited::new(body, MAX_TOKEN_REQUEST).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                let response = oauth_error_response(
                    &OAuthError::request("the request body is too large or unreadable"),
                    false,
                );
                return (response, refused(ErrorCode::InvalidRequest));
            }
        };
        let failure = match self.token_request_by(&parts.headers, &body).await {
            Ok((token, client)) => {
                let audit = TokenAudit {
                    client_id: Some(client.client_id.clone()),
                    organization: Some(client.organization.clone()),
                    npi: client.npi.clone(),
                    authenticated: true,
                    scope: Some(token.scope.clone()),
                    error: None,
                };
                let body = serde_json::to_vec(&token).unwrap_or_default();
                let mut response = Response::new(Full::new(Bytes::from(body)));
                no_store(response.headers_mut());
                return (response, audit);
            }
            Err(failure) => failure,
        };
        let audit =
            TokenAudit { client_id: claimed_client_id(&parts.headers, &body), ..refused(failure.error.code) };
        (Self::token_failure_response(failure), audit)
    }

    fn token_failure_response(failure: TokenFailure) -> Response<Full<Bytes>> {
        if failure.error.code == ErrorCode::InvalidClient {
            tracing::info!(reason = %failure.error.description, "token request refused: invalid_client");
        } else {
            tracing::debug!(error = failure.error.code.as_str(), reason = %failure.error.description, "token request refused");
        }
        if let Some(status) = failure.fault {
            let mut response = oauth_error_response(&failure.error, false);
            *response.status_mut() = status;
            if status == StatusCode::SERVICE_UNAVAILABLE {
                response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            return response;
        }
        oauth_error_response(&failure.error, failure.basic)
    }

    /// The token request after the HTTP layer: headers and the form body.
    pub async fn token_request(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<TokenResponse, TokenFailure> {
        self.token_request_by(headers, body).await.map(|(token, _)| token)
    }

    /// [`Auth::token_request`], with the client the token was issued to.
    async fn token_request_by(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(TokenResponse, Arc<Client>), TokenFailure> {
        let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let media = content_type.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(OAuthError::request("the body must be application/x-www-form-urlencoded").into());
        }
        let form = parse_form(body)?;
        let grant_type =
            form.get("grant_type").ok_or_else(|| OAuthError::request("grant_type is required"))?;
        if grant_type != "client_credentials" {
            return Err(OAuthError::new(
                ErrorCode::UnsupportedGrantType,
                "only client_credentials is supported",
            )
            .into());
        }
        let requested = form.get("scope").ok_or_else(|| OAuthError::request("scope is required"))?.clone();
        if form.contains_key("client_secret") {
            return Err(OAuthError::client("client_secret_post is not supported").into());
        }
        let (client, assertion) = self.authenticate_client(headers, &form).await?;
        let granted = ScopeSet::grant(&requested, &client.scopes, self.allow_writes);
        if granted.is_empty() {
            return Err(OAuthError::new(
                ErrorCode::InvalidScope,
                "none of the requested scopes is registered for this client (or grantable by this server)",
            )
            .into());
        }
        // The jti is spent only by a request that would otherwise succeed.
        if let Some(verified) = assertion {
            let keep_until = verified.exp.max(unix_now_s()) + assertion::CLOCK_SKEW_S;
            let fresh = self
                .registry
                .record_jti(&client.client_id, &verified.jti, keep_until)
                .await
                .map_err(|e| TokenFailure::unavailable(format!("replay cache: {e}")))?;
            if !fresh {
                return Err(OAuthError::client("client_assertion was already used (jti replay)").into());
            }
            self.maybe_purge();
        }
        let now = unix_now_s();
        let claims = self.keys.claims(
            &client.client_id,
            &granted,
            &client.organization,
            client.npi.as_deref(),
            &client.reg,
            now,
            self.ttl_s,
        );
        let access_token =
            self.keys.issue(&claims).map_err(|e| TokenFailure::internal(format!("signing: {e}")))?;
        tracing::info!(client_id = %client.client_id, scope = %claims.scope, expires_in = self.ttl_s, "access token issued");
        let token = TokenResponse {
            access_token,
            token_type: "bearer".into(),
            expires_in: self.ttl_s,
            scope: claims.scope,
        };
        Ok((token, client))
    }

    /// Who is asking: HTTP Basic (client secret) or a private_key_jwt
    /// assertion, exactly one of them; the verified assertion comes back so
    /// that its `jti` is spent only by a request that succeeds.
    async fn authenticate_client(
        &self,
        headers: &HeaderMap,
        form: &std::collections::HashMap<String, String>,
    ) -> Result<(Arc<Client>, Option<assertion::Verified>), TokenFailure> {
        let basic = basic_credentials(headers)?;
        let authenticated = match (basic, form.get("client_assertion_type"), form.get("client_assertion")) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(OAuthError::request("use one client authentication method, not two").into());
            }
            (Some((id, secret)), None, None) => {
                if form.get("client_id").is_some_and(|c| *c != id) {
                    return Err(TokenFailure::basic(OAuthError::client(
                        "client_id does not match the credentials",
                    )));
                }
                (self.authenticate_secret(&id, &secret).await?, None)
            }
            (None, assertion_type, assertion) => {
                let assertion_type = assertion_type.ok_or_else(|| {
                    OAuthError::client("client authentication is required (private_key_jwt client_assertion)")
                })?;
                if assertion_type != JWT_BEARER {
                    return Err(
                        OAuthError::request(format!("client_assertion_type must be {JWT_BEARER}")).into()
                    );
                }
                let assertion =
                    assertion.ok_or_else(|| OAuthError::request("client_assertion is required"))?;
                let (client, verified) = self.authenticate_assertion(assertion).await?;
                if form.get("client_id").is_some_and(|c| *c != client.client_id) {
                    return Err(OAuthError::client("client_id does not match the client_assertion").into());
                }
                (client, Some(verified))
            }
        };
        Ok(authenticated)
    }

    async fn authenticate_assertion(
        &self,
        assertion: &str,
    ) -> Result<(Arc<Client>, assertion::Verified), TokenFailure> {
        let unverified = assertion::peek(assertion)?;
        let client = self
            .registry
            .get(&unverified.client_id)
            .await
            .map_err(|e| TokenFailure::unavailable(format!("client registry: {e}")))?
            .ok_or_else(|| OAuthError::client("unknown client"))?;
        assertion::check_jku(&unverified.header, client.jwks_uri.as_deref())?;
        let keys = match &client.keys {
            registry::KeySource::Static(set) => set.clone(),
            registry::KeySource::Unavailable(why) => {
                tracing::warn!(client_id = %client.client_id, reason = %why, "client has no usable keys");
                return Err(OAuthError::client("the client's registered keys are unavailable").into());
            }
            registry::KeySource::Uri(uri) => {
                let mut set = self.jwks.get(uri).await.map_err(|e| {
                    tracing::warn!(client_id = %client.client_id, error = %e, "cannot fetch the client's jwks_uri");
                    OAuthError::client("the client's registered keys are unavailable")
                })?;
                if unverified.header.kid.is_some() && !assertion::has_candidate(&set, &unverified.header) {
                    // A rotated key: fetch again (at most every few seconds per URI).
                    if let Ok(Some(fresh)) = self.jwks.refresh(uri).await {
                        set = fresh;
                    }
                }
                set
            }
        };
        let verified = assertion::verify(assertion, &unverified, &keys, &self.audiences, unix_now_s())?;
        Ok((client, verified))
    }

    async fn authenticate_secret(&self, client_id: &str, secret: &str) -> Result<Arc<Client>, TokenFailure> {
        let refuse = || TokenFailure::basic(OAuthError::client("client authentication failed"));
        let client = self
            .registry
            .get(client_id)
            .await
            .map_err(|e| TokenFailure::unavailable(format!("client registry: {e}")))?
            .ok_or_else(refuse)?;
        let expected = client
            .secret_env
            .as_deref()
            .and_then(|env| std::env::var(env).ok())
            .filter(|s| !s.is_empty())
            .ok_or_else(refuse)?;
        if !secret::secrets_equal(secret.as_bytes(), expected.as_bytes()) {
            return Err(refuse());
        }
        Ok(client)
    }

    fn maybe_purge(&self) {
        let now = unix_now_s();
        let last = self.last_purge.load(Ordering::Relaxed);
        if now - last < PURGE_INTERVAL_S
            || self.last_purge.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        let registry = self.registry.clone();
        tokio::spawn(async move {
            match registry.purge_jti(now).await {
                Ok(n) if n > 0 => tracing::debug!(purged = n, "expired client assertion ids purged"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purging the replay cache failed"),
            }
        });
    }

    // ---------------------------------------------------------------------
    // Every FHIR request

    /// Verify the request's bearer token and that its client is still
    /// registered as it was when the token was issued.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Principal>, GatewayError> {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(invalid_token("an access token is required (Authorization: Bearer)"));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid_token("an access token is required (Authorization: Bearer)"))?;
        let principal = self.verify_token(token)?;
        let client = self.registry.get(&principal.client_id).await.map_err(registry_unavailable)?;
        match client {
            Some(client) if client.reg == principal.reg => {}
            _ => return Err(invalid_token("the access token's client is no longer registered")),
        }
        Ok(principal)
    }

    /// Does the client's registration (not its token) allow `perm` on
    /// `resource_type`? Exports check read on Group this way.
    pub async fn registered_allows(
        &self,
        client_id: &str,
        resource_type: &str,
        perm: Perms,
    ) -> Result<bool, GatewayError> {
        let client = self.registry.get(client_id).await.map_err(registry_unavailable)?;
        Ok(client.is_some_and(|c| c.scopes.allows(resource_type, perm)))
    }

    /// The principal a token of registered `client_id` would carry, with
    /// every scope it is registered for (`explain` runs requests as it;
    /// no token is made). `None` when no such client is registered.
    pub async fn principal_of(&self, client_id: &str) -> Result<Option<Arc<Principal>>, GatewayError> {
        let client = self.registry.get(client_id).await.map_err(registry_unavailable)?;
        Ok(client.map(|c| {
            Arc::new(Principal {
                client_id: c.client_id.clone(),
                organization: c.organization.clone(),
                npi: c.npi.clone(),
                scopes: c.scopes.clone(),
                token_id: "explain".into(),
                expires_at: i64::MAX,
                reg: c.reg.clone(),
            })
        }))
    }

    /// A job's principal again (see [`Delegation`]); refused once the client
    /// is deleted or registered anew.
    pub async fn resume(&self, delegation: &Delegation) -> Result<Arc<Principal>, GatewayError> {
        let client = self.registry.get(&delegation.client_id).await.map_err(registry_unavailable)?;
        match client {
            Some(client) if client.reg == delegation.reg => {}
            _ => {
                return Err(GatewayError::forbidden(
                    "the client that started this job is no longer registered",
                ));
            }
        }
        let scopes = ScopeSet::parse_strict(&delegation.scopes)
            .map_err(|_| GatewayError::internal("a stored job's scopes do not parse"))?;
        Ok(Arc::new(Principal {
            client_id: delegation.client_id.clone(),
            organization: delegation.organization.clone(),
            npi: delegation.npi.clone(),
            scopes,
            token_id: "export-job".into(),
            expires_at: i64::MAX,
            reg: delegation.reg.clone(),
        }))
    }

    /// Take the keyring's access-token generations (polled by every node).
    /// When they change, tokens verified before are checked again: a
    /// revoked generation's tokens stop working on this node at once.
    pub fn install_keys(&self, set: &KeySet) -> Result<(), keys::KeyError> {
        if self.keys.install(set)? {
            self.key_epoch.fetch_add(1, Ordering::SeqCst);
            self.verified.invalidate_all();
        }
        Ok(())
    }

    /// `(generation, kid)` of the access-token key generations this node holds.
    pub fn token_kids(&self) -> Vec<(i64, String)> {
        self.keys.kids()
    }

    /// The token check without the registry: signature, issuer, audience,
    /// expiry, the organization binding. Cached per token until it expires.
    pub fn verify_token(&self, token: &str) -> Result<Arc<Principal>, GatewayError> {
        let key = tokens::cache_key(token);
        let now = unix_now_s();
        // Read before verifying: if the keys change meanwhile, this
        // verification is cached under the old epoch and not trusted again.
        let epoch = self.key_epoch.load(Ordering::SeqCst);
        if let Some(CachedCheck { principal, key_epoch }) = self.verified.get(&key)
            && key_epoch == epoch
        {
            if principal.expires_at > now {
                return Ok(principal);
            }
            return Err(invalid_token("the access token has expired"));
        }
        let claims = self.keys.verify(token, now).map_err(|e| invalid_token(&e.to_string()))?;
        let scopes = ScopeSet::parse_strict(&claims.scope)
            .map_err(|_| invalid_token("the access token is malformed"))?;
        // A token not bound to a provider organization never reaches data (fail closed).
        let organization = claims
            .org
            .filter(|o| o.strip_prefix("Organization/").is_some_and(crate::fhir::search::is_fhir_id))
            .ok_or_else(|| {
                GatewayError::forbidden("the access token is not bound to a provider organization")
            })?;
        let principal = Arc::new(Principal {
            client_id: claims.client_id,
            organization,
            npi: claims.npi,
            scopes,
            token_id: claims.jti,
            expires_at: claims.exp,
            reg: claims.reg,
        });
        self.verified.insert(key, CachedCheck { principal: principal.clone(), key_epoch: epoch });
        Ok(principal)
    }

    // ---------------------------------------------------------------------
    // Discovery

    /// `GET {base}/.well-known/smart-configuration`.
    pub fn smart_configuration(&self) -> serde_json::Value {
        let mut scopes = vec!["system/*.read", "system/*.rs"];
        if self.allow_writes {
            scopes.extend(["system/*.write", "system/*.cruds"]);
        }
        serde_json::json!({
            "token_endpoint": self.token_url,
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": keys::ACCEPTED_ALG_NAMES,
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": scopes,
            "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
        })
    }

    /// The smart-configuration response (always `application/json`).
    pub fn smart_configuration_response(&self, method: &Method) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from(serde_json::to_vec(&self.smart_configuration()).unwrap_or_default())
        };
        let mut response = Response::new(Full::new(body));
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    /// `CapabilityStatement.rest.security` for SMART Backend Services.
    pub fn security(&self) -> serde_json::Value {
        serde_json::json!({
            "extension": [{
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [{"url": "token", "valueUri": self.token_url}]
            }],
            "service": [{
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"
                }],
                "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)"
            }],
            "description": "SMART Backend Services: client_credentials grant with a private_key_jwt client \
                            assertion (RS384 or ES384) at the token endpoint; system/ scopes, v1 and v2."
        })
    }

    /// Put fhirwall's security section into every server `rest` of a
    /// CapabilityStatement (replacing the upstream's: its authorization
    /// servers are not the caller's business).
    pub fn add_security(&self, capability_statement: &str) -> Result<String, serde_json::Error> {
        let mut cs: serde_json::Value = serde_json::from_str(capability_statement)?;
        let security = self.security();
        match cs.get_mut("rest").and_then(|r| r.as_array_mut()) {
            Some(rests) if !rests.is_empty() => {
                for rest in rests.iter_mut() {
                    if let Some(rest) = rest.as_object_mut() {
                        rest.insert("security".into(), security.clone());
                    }
                }
            }
            _ => {
                if let Some(object) = cs.as_object_mut() {
                    object
                        .insert("rest".into(), serde_json::json!([{"mode": "server", "security": security}]));
                }
            }
        }
        serde_json::to_string(&cs)
    }

    // ---------------------------------------------------------------------
    // Admin API

    /// `POST /admin/clients` with a `[[clients]]` entry as JSON.
    pub async fn register_client(&self, body: &[u8]) -> Result<ClientConfig, GatewayError> {
        let client: ClientConfig = serde_json::from_slice(body)
            .map_err(|e| GatewayError::bad_request(format!("POST /admin/clients: {e}")))?;
        match self.registry.register(&client).await {
            Ok(()) => {
                tracing::info!(client_id = %client.client_id, "client registered through the admin API");
                Ok(client)
            }
            Err(RegistrationError::Invalid(message)) => Err(GatewayError::bad_request(message)),
            Err(RegistrationError::Exists(id)) => Err(GatewayError::of(
                Kind::Conflict,
                format!("client {id} is already registered (DELETE it first to replace it)"),
            )),
            Err(RegistrationError::Store(e)) => Err(GatewayError::internal(format!("client registry: {e}"))),
        }
    }

    /// `DELETE /admin/clients/{id}`: `false` when there is no such client.
    /// Its tokens stop working on this node at once, on others within
    /// [`registry::CLIENT_CACHE_TTL`].
    pub async fn delete_client(&self, client_id: &str) -> Result<bool, GatewayError> {
        let deleted = self
            .registry
            .delete(client_id)
            .await
            .map_err(|e| GatewayError::internal(format!("client registry: {e}")))?;
        if deleted {
            tracing::info!(client_id, "client deleted through the admin API");
        }
        Ok(deleted)
    }

    /// `GET /admin/clients`: the active clients (no secrets are stored).
    pub async fn list_clients(&self) -> Result<serde_json::Value, GatewayError> {
        let clients = self
            .registry
            .list()
            .await
            .map_err(|e| GatewayError::internal(format!("client registry: {e}")))?;
        Ok(serde_json::to_value(clients).unwrap_or_default())
    }
}

/// What the audit log records about a token request: the client (verified
/// when a token was issued, else only the id the request claimed), the
/// granted scope or the OAuth error code. Never the assertion or a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenAudit {
    pub client_id: Option<String>,
    pub organization: Option<String>,
    pub npi: Option<String>,
    pub authenticated: bool,
    pub scope: Option<String>,
    pub error: Option<&'static str>,
}

/// The client id a refused token request claimed (Basic user, `client_id`,
/// or the unverified `iss` of the assertion), for the audit log.
fn claimed_client_id(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let id = match basic_credentials(headers) {
        Ok(Some((id, _))) => id,
        _ => {
            let form = parse_form(body).ok()?;
            match form.get("client_id") {
                Some(id) => id.clone(),
                None => assertion::peek(form.get("client_assertion")?).ok()?.client_id,
            }
        }
    };
    (!id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_control)).then_some(id)
}

/// A token endpoint failure: the OAuth error, whether the client tried HTTP
/// Basic (then 401 carries `WWW-Authenticate: Basic`), or fhirwall's own
/// fault (`fault`: the status instead of the OAuth error's).
#[derive(Debug)]
pub struct TokenFailure {
    pub error: OAuthError,
    pub basic: bool,
    pub fault: Option<StatusCode>,
}

impl TokenFailure {
    fn basic(error: OAuthError) -> Self {
        TokenFailure { error, basic: true, fault: None }
    }

    /// 500: something fhirwall got wrong (signing failed).
    fn internal(detail: String) -> Self {
        tracing::error!(detail, "token endpoint failed");
        TokenFailure::fault(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// 503 with `Retry-After`: the state store is down or busy; the same
    /// request may succeed shortly (no jti was spent).
    fn unavailable(detail: String) -> Self {
        tracing::warn!(detail, "token endpoint: the state store is unavailable");
        TokenFailure::fault(StatusCode::SERVICE_UNAVAILABLE)
    }

    fn fault(status: StatusCode) -> Self {
        TokenFailure {
            error: OAuthError::new(ErrorCode::InvalidRequest, "the token could not be issued; try again"),
            basic: false,
            fault: Some(status),
        }
    }
}

impl From<OAuthError> for TokenFailure {
    fn from(error: OAuthError) -> Self {
        TokenFailure { error, basic: false, fault: None }
    }
}

/// The form, each parameter at most once (RFC 6749 §3.2); empty values count as absent.
fn parse_form(body: &[u8]) -> Result<std::collections::HashMap<String, String>, OAuthError> {
    let mut form = std::collections::HashMap::new();
    for (name, value) in url::form_urlencoded::parse(body) {
        if form.insert(name.to_string(), value.to_string()).is_some() {
            return Err(OAuthError::request(format!("parameter {name} appears more than once")));
        }
    }
    form.retain(|name, value| !value.is_empty() || name == "scope");
    Ok(form)
}

/// `Authorization: Basic` credentials (RFC 6749 §2.3.1: form-urlencoded id and secret).
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, TokenFailure> {
    let Some(value) = headers.get(AUTHORIZATION) else { return Ok(None) };
    let bad = || TokenFailure::basic(OAuthError::client("malformed Basic credentials"));
    let value = value.to_str().map_err(|_| bad())?;
    let Some((scheme, encoded)) = value.split_once(' ') else { return Err(bad()) };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(
            OAuthError::client("the token endpoint accepts Basic credentials or a client assertion").into()
        );
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned())
    };
    Ok(Some((unescape(id).ok_or_else(bad)?, unescape(secret).ok_or_else(bad)?)))
}

fn no_store(headers: &mut HeaderMap) {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
}

/// An RFC 6749 §5.2 error response.
pub fn oauth_error_response(error: &OAuthError, basic: bool) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"error": error.code.as_str(), "error_description": error.description});
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = error.code.status();
    no_store(response.headers_mut());
    if basic && error.code == ErrorCode::InvalidClient {
        response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"fhirwall\""));
    }
    response
}

/// The state store is down (or the registry unreadable): refused with 503
/// until it is back; nothing is decided without it.
fn registry_unavailable(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::of(Kind::Unavailable, "the client registry is unavailable; try again later")
        .with_detail(format!("client registry: {e}"))
}

#[cfg(test)]
mod tests;
