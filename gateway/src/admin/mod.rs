//! The operator API on its own listener. Health, readiness and metrics are
//! open (load balancers and Prometheus scrape them); everything else needs
//! `Authorization: Bearer $FHIRWALL_ADMIN_TOKEN`.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Response, StatusCode};
use hyper::Request;
use hyper::body::Incoming;

use crate::error::{GatewayError, Kind};
use crate::gateway::Gateway;
use crate::listener::Handler;
use crate::respond::{self, Body};

pub mod console;
pub mod explain;
pub mod keys;

pub use explain::{ExplainTarget, Explainer};

pub struct AdminHandler {
    gw: Arc<Gateway>,
    /// `/admin/console`: the audit console (its own sign-in and sessions).
    console: console::Console,
    /// Answers `/admin/explain` (the FHIR pipeline, given by the server:
    /// admin does not depend on it); `None`: 404.
    explainer: Option<Arc<dyn Explainer>>,
    /// Wrong admin tokens per peer address (bearer or console sign-in):
    /// [`GUESS_BURST`] at once, then one a second; past that, every call
    /// from that address is 429 until the budget refills — even one with
    /// the right token, or guessing would go on at full speed.
    guesses: crate::rate_limit::Buckets,
}

/// Wrong admin tokens one address may present at once, and then per second.
const GUESS_BURST: f64 = 10.0;
const GUESSES_PER_S: f64 = 1.0;

impl AdminHandler {
    pub fn new(gw: Arc<Gateway>) -> Self {
        let guesses = crate::rate_limit::Buckets::new(GUESSES_PER_S, GUESS_BURST).expect("a positive rate");
        AdminHandler { gw, console: console::Console::new(), explainer: None, guesses }
    }

    pub fn with_explainer(mut self, explainer: Arc<dyn Explainer>) -> Self {
        self.explainer = Some(explainer);
        self
    }

    /// Constant-time comparison of the presented bearer token.
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(expected) = self.gw.admin_token.as_deref() else { return false };
        let presented = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        crate::auth::secret::secrets_equal(presented.as_bytes(), expected.as_bytes())
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => Ok(respond::json(StatusCode::OK, r#"{"status":"ok"}"#)),
            (&Method::GET, "/readyz") => {
                // Not ready until the Part 2 programs are resolved upstream:
                // until then answers would be refused (503).
                let programs = self.gw.redactor.programs_resolved();
                if self.gw.is_ready() && programs && self.gw.audit.healthy() && self.gw.store.ping().await {
                    Ok(respond::json(StatusCode::OK, r#"{"status":"ready"}"#))
                } else {
                    Ok(respond::json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not ready"}"#))
                }
            }
            (&Method::GET, "/metrics") => {
                let text = self.gw.metrics.render() + &self.gw.audit.render_metrics();
                Ok(respond::text(StatusCode::OK, "text/plain; version=0.0.4", text))
            }
            // The console signs its users in itself (session cookie, CSRF).
            (_, path) if console::handles(path) => Ok(self.console.route(&self.gw, req).await),
            _ if !self.authorized(&req) => {
                Err(GatewayError::of(Kind::Unauthenticated, "admin API: missing or wrong bearer token")
                    .with_header(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer")))
            }
            // auth: the client registry.
            (&Method::POST, "/admin/clients") => {
                let body = read_json_body(req).await?;
                let client = self.gw.auth.register_client(&body).await?;
                Ok(respond::json(StatusCode::CREATED, serde_json::to_vec(&client).unwrap_or_default()))
            }
            (&Method::GET, "/admin/clients") => {
                let clients = self.gw.auth.list_clients().await?;
                Ok(respond::json(StatusCode::OK, clients.to_string()))
            }
            (&Method::DELETE, path) if path.starts_with("/admin/clients/") => {
                let raw = &path["/admin/clients/".len()..];
                let id = percent_encoding::percent_decode_str(raw)
                    .decode_utf8()
                    .map_err(|_| GatewayError::bad_request("client id is not UTF-8"))?;
                if self.gw.auth.delete_client(&id).await? {
                    Ok(respond::empty(StatusCode::NO_CONTENT))
                } else {
                    Err(GatewayError::not_found("no such client"))
                }
            }
            // access: opt-outs and attribution rosters.
            (_, path) if crate::access::admin::handles(path) => {
                crate::access::admin::route(&self.gw.access, req).await
            }
            // $provider-member-match: the stored MatchedMembers Groups.
            (&Method::GET, "/admin/provider-member-match/groups") => {
                let groups = self
                    .gw
                    .provider_matches
                    .jobs
                    .groups()
                    .await
                    .map_err(crate::ops::provider_match::state_error)?;
                Ok(respond::json(StatusCode::OK, serde_json::json!({ "groups": groups }).to_string()))
            }
            (&Method::DELETE, path) if path.starts_with("/admin/provider-member-match/groups/") => {
                let raw = &path["/admin/provider-member-match/groups/".len()..];
                let id = raw.strip_prefix("Group/").unwrap_or(raw);
                if !crate::fhir::search::is_fhir_id(id) {
                    return Err(GatewayError::bad_request("not a Group id"));
                }
                let removed = self
                    .gw
                    .provider_matches
                    .jobs
                    .delete_group(id)
                    .await
                    .map_err(crate::ops::provider_match::state_error)?;
                self.gw.access.invalidate_snapshot().await?;
                if removed {
                    Ok(respond::empty(StatusCode::NO_CONTENT))
                } else {
                    Err(GatewayError::not_found("no such MatchedMembers Group"))
                }
            }
            // audit
            (&Method::GET, "/admin/audit") => audit_query(&self.gw, req.uri().query()).await,
            // Why a client would (not) receive a resource.
            (&Method::GET, "/admin/explain") => match &self.explainer {
                Some(explainer) => explain::route(explainer.as_ref(), req.uri().query()).await,
                None => Err(GatewayError::not_found("explain is not available on this listener")),
            },
            // The last durable record, to keep outside this host as an anchor
            // (`fhirwall audit verify --anchor SEQ:HASH`).
            (&Method::GET, "/admin/audit/head") => {
                let (seq, hash) = self.gw.audit.stats().head();
                let body = serde_json::json!({ "seq": seq, "hash": hash, "anchor": format!("{seq}:{hash}") });
                Ok(respond::json(StatusCode::OK, body.to_string()))
            }
            // plugins: rebuild every plugin from its file and swap
            // atomically; on failure the old set stays and the answer says why.
            (&Method::GET, "/admin/keys") => keys::list(&self.gw).await,
            (&Method::POST, "/admin/keys/rotate") => keys::rotate(&self.gw, req.uri().query()).await,
            (&Method::POST, "/admin/plugins/reload") => match self.gw.plugins.reload().await {
                Ok(report) => {
                    Ok(respond::json(StatusCode::OK, serde_json::to_vec(&report).unwrap_or_default()))
                }
                Err(e) => Err(GatewayError::of(
                    Kind::PolicyInvalid,
                    format!("plugins not reloaded, the previous versions stay in force: {e}"),
                )),
            },
            _ => Err(GatewayError::not_found("no admin endpoint at this path")),
        }
    }
}

impl Handler for AdminHandler {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        // Probes and scrapes (no token, no data) are not audited: a load
        // balancer would otherwise fill the log with health checks.
        let probe = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics");
        let authorized =
            if console::handles(&path) { self.console.signed_in(&req) } else { self.authorized(&req) };
        let record =
            (!probe).then(|| crate::audit::AuditRecord::admin(&method, &path, authorized, Some(peer.ip())));
        let peer_key = peer.ip().to_string();
        let presents_token = req.headers().contains_key(http::header::AUTHORIZATION)
            || (method == Method::POST && path == "/admin/console/session");
        let guessing =
            (!probe).then(|| self.guesses.exhausted(&peer_key, std::time::Instant::now())).flatten();
        let (mut response, error) = match guessing {
            Some(wait) => {
                let e = crate::rate_limit::throttled("wrong admin tokens from this address", wait);
                (respond::error(&e), Some(e))
            }
            None => match self.route(req).await {
                Ok(r) => (r, None),
                Err(e) => (respond::error(&e), Some(e)),
            },
        };
        // A wrong token (bearer, or at the console's sign-in) spends one guess.
        if response.status() == StatusCode::UNAUTHORIZED && presents_token {
            let _ = self.guesses.admit(&peer_key, std::time::Instant::now());
        }
        if let Some(mut record) = record {
            // audit: durable before the response leaves.
            record.set_outcome(response.status().as_u16(), error.as_ref());
            if record.kind == (crate::audit::Kind::Admin { action: "console.sign-in" })
                && response.status().is_success()
            {
                record.who.authenticated = true;
            }
            if record.kind == (crate::audit::Kind::Admin { action: "client.create" })
                && response.status().is_success()
            {
                // Which client was registered, from the answer (the request body is gone).
                let (parts, body) = response.into_parts();
                let bytes =
                    http_body_util::BodyExt::collect(body).await.map(|b| b.to_bytes()).unwrap_or_default();
                if let Ok(client) = serde_json::from_slice::<serde_json::Value>(&bytes)
                    && let Some(id) = client["client_id"].as_str()
                {
                    record.detail("client", id);
                }
                response = Response::from_parts(parts, respond::full(bytes));
            }
            if let Err(e) = self.gw.audit.record(&record).await {
                response = respond::error(&crate::audit::fail_closed(&e));
            }
            if let Ok(value) = http::HeaderValue::from_str(&record.request_id) {
                response.headers_mut().insert(http::HeaderName::from_static("x-request-id"), value);
            }
            tracing::info!(%peer, %method, %path, status = response.status().as_u16(), "admin request");
        }
        response
    }
}

/// `GET /admin/audit?patient=ID|Patient/ID&client=ID&since=DATE|INSTANT&after=SEQ&limit=N`:
/// matching audit lines as NDJSON, oldest first. At most `limit` lines
/// (default and maximum [`AUDIT_QUERY_MAX`]); when more match, the
/// `X-Audit-Next-After` header gives the `after` for the next page.
async fn audit_query(gw: &Gateway, query: Option<&str>) -> Result<Response<Body>, GatewayError> {
    let mut params: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !matches!(name.as_ref(), "patient" | "client" | "since" | "after" | "limit") {
            return Err(GatewayError::bad_request(format!("unknown parameter {name}")));
        }
        if params.insert(name.to_string(), value.to_string()).is_some() {
            return Err(GatewayError::bad_request(format!("parameter {name} given twice")));
        }
    }
    let get = |name: &str| params.get(name).map(String::as_str);
    let filter = crate::audit::Filter::parse(get("patient"), get("client"), get("since"), get("after"))
        .map_err(|e| GatewayError::bad_request(e.to_string()))?;
    let limit = match get("limit") {
        None => AUDIT_QUERY_MAX,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=AUDIT_QUERY_MAX).contains(l))
            .ok_or_else(|| GatewayError::bad_request(format!("limit must be 1..={AUDIT_QUERY_MAX}")))?,
    };
    let dir = gw.audit.dir().to_owned();
    let (out, stats) = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        crate::audit::query::query_dir(&dir, &filter, Some(limit), &mut out).map(|stats| (out, stats))
    })
    .await
    .map_err(|e| GatewayError::internal(format!("audit query task: {e}")))?
    .map_err(|e| GatewayError::internal(format!("audit query: {e}")))?;
    let mut response = respond::text(StatusCode::OK, "application/x-ndjson", out);
    if let Some(after) = stats.truncated_at
        && let Ok(value) = http::HeaderValue::from_str(&after.to_string())
    {
        response.headers_mut().insert(http::HeaderName::from_static("x-audit-next-after"), value);
    }
    Ok(response)
}

/// Most lines one `GET /admin/audit` answers with.
const AUDIT_QUERY_MAX: usize = 10_000;

/// An admin request body (JSON), at most 1 MiB.
async fn read_json_body(req: Request<Incoming>) -> Result<bytes::Bytes, GatewayError> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(req.into_body(), 1024 * 1024).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(_) => Err(GatewayError::bad_request("the request body is too large or unreadable")),
    }
}
