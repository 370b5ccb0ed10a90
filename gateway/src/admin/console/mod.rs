//! The audit console: a web page on the admin listener, at `/admin/console`,
//! for the people who must answer "who saw what, and why was this record
//! hidden?".
//!
//! - The page, its script and its style are compiled into the binary and
//!   served from here: no third-party asset, and a Content-Security-Policy
//!   that allows nothing else (`'self'` only, no inline script or style).
//! - Sign-in exchanges the admin token for a session cookie ([`session`]);
//!   the data endpoints under `/admin/console/api/` need that cookie, and
//!   anything that changes state also needs the session's CSRF token.
//! - The data comes from the audit index ([`crate::audit::index`]), built
//!   from this node's audit log at the first signed-in call and then kept
//!   up to date with the log's tail; the opt-out list comes from the store.
//! - Every call is audited like any admin call (`console.*` actions), so
//!   looking at a patient's history is itself on the record.

use std::sync::{Arc, Mutex};

use http::{HeaderValue, Method, Response, StatusCode, header};
use hyper::Request;
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::audit::index::AuditIndex;
use crate::error::{GatewayError, Kind};
use crate::gateway::Gateway;
use crate::respond::{self, Body};

pub mod session;
pub mod views;

use session::Sessions;

const PREFIX: &str = "/admin/console";

const PAGE: &str = include_str!("assets/console.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// Only this origin's script and style; no framing, no form posts elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Whether the path is the console's.
pub fn handles(path: &str) -> bool {
    path == PREFIX || path.starts_with("/admin/console/")
}

pub struct Console {
    sessions: Sessions,
    /// Built at the first signed-in call; `None` until then.
    index: Arc<Mutex<Option<AuditIndex>>>,
}

impl Console {
    pub fn new() -> Self {
        Console { sessions: Sessions::default(), index: Arc::new(Mutex::new(None)) }
    }

    /// Whether the request carries a live session (for the audit record's `authenticated`).
    pub fn signed_in(&self, req: &Request<Incoming>) -> bool {
        self.sessions.is_signed_in(req.headers())
    }

    /// Answer a console request; every answer carries the security headers.
    pub async fn route(&self, gw: &Gateway, req: Request<Incoming>) -> Response<Body> {
        let mut response = match self.dispatch(gw, req).await {
            Ok(r) => r,
            Err(e) => respond::error(&e),
        };
        let h = response.headers_mut();
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
        h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
        response
    }

    async fn dispatch(&self, gw: &Gateway, req: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        match (&method, path.as_str()) {
            (&Method::GET, "/admin/console" | "/admin/console/") => {
                Ok(respond::text(StatusCode::OK, "text/html; charset=utf-8", PAGE))
            }
            (&Method::GET, "/admin/console/console.js") => {
                Ok(respond::text(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT))
            }
            (&Method::GET, "/admin/console/console.css") => {
                Ok(respond::text(StatusCode::OK, "text/css; charset=utf-8", STYLE))
            }
            (&Method::POST, "/admin/console/session") => self.sign_in(gw, req).await,
            (&Method::DELETE, "/admin/console/session") => {
                self.checked(&req, true)?;
                self.sessions.end(req.headers());
                let mut r = respond::empty(StatusCode::NO_CONTENT);
                set_cookie(&mut r, &session::clear_cookie());
                Ok(r)
            }
            (&Method::GET, "/admin/console/api/session") => {
                let current = self.checked(&req, false)?;
                Ok(respond::json(
                    StatusCode::OK,
                    json!({ "signed_in": true, "csrf": current.csrf }).to_string(),
                ))
            }
            (_, p) if p.starts_with("/admin/console/api/") => {
                self.checked(&req, method != Method::GET)?;
                self.api(gw, &method, p, req.uri().query()).await
            }
            _ => Err(GatewayError::not_found("no console page at this path")),
        }
    }

    /// The session of a data call; `state_changing` calls also need the
    /// CSRF token and a same-origin request.
    fn checked(
        &self,
        req: &Request<Incoming>,
        state_changing: bool,
    ) -> Result<session::Current, GatewayError> {
        let current = self.sessions.current(req.headers()).ok_or_else(|| {
            GatewayError::of(Kind::Unauthenticated, "console: not signed in, or the session ended")
        })?;
        if state_changing {
            same_origin(req)?;
            let presented = req.headers().get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
            if !crate::auth::secret::secrets_equal(presented.as_bytes(), current.csrf.as_bytes()) {
                return Err(GatewayError::forbidden("console: missing or wrong CSRF token"));
            }
        }
        Ok(current)
    }

    /// `POST /admin/console/session` with `{"token": "…"}` (JSON only, so a
    /// cross-site form cannot sign a browser in).
    async fn sign_in(&self, gw: &Gateway, req: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
        same_origin(&req)?;
        let is_json =
            req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
                v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
            });
        if !is_json {
            return Err(GatewayError::of(
                Kind::UnsupportedMediaType,
                "console sign-in takes application/json",
            ));
        }
        let secure = req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"));
        let body = super::read_json_body(req).await?;
        let token = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["token"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let expected = gw.admin_token.as_deref().unwrap_or("");
        if expected.is_empty() || !crate::auth::secret::secrets_equal(token.as_bytes(), expected.as_bytes()) {
            return Err(GatewayError::of(Kind::Unauthenticated, "console: wrong admin token"));
        }
        let (id, csrf) = self.sessions.start();
        let mut r = respond::json(StatusCode::OK, json!({ "signed_in": true, "csrf": csrf }).to_string());
        set_cookie(&mut r, &session::set_cookie(&id, secure));
        Ok(r)
    }

    async fn api(
        &self,
        gw: &Gateway,
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> Result<Response<Body>, GatewayError> {
        let rest = &path["/admin/console/api/".len()..];
        let params = Params::parse(query)?;
        let view: View = match (method, rest) {
            (&Method::GET, "overview") => {
                let (client, org) = (params.get("client"), params.get("organization"));
                View::Index(Box::new(move |ix| views::overview(ix, client.as_deref(), org.as_deref())))
            }
            (&Method::GET, "clients") => View::Index(Box::new(views::clients)),
            (&Method::GET, "chain") => View::Index(Box::new(|_| json!({}))),
            (&Method::POST, "rebuild") => View::Rebuild,
            (&Method::GET, "opt-outs") => {
                let list = crate::access::state::list_opt_outs(&gw.store).await.map_err(|e| {
                    GatewayError::of(Kind::Unavailable, "the opt-out list is unavailable")
                        .with_detail(e.to_string())
                })?;
                // Ids and dates only: a reason is free text an operator typed.
                let rows: Vec<Value> = list
                    .iter()
                    .map(|o| json!({ "patient": o.patient, "since": crate::audit::time::format_micros(o.since * 1_000_000) }))
                    .collect();
                View::Fixed(json!({ "opt_outs": rows }))
            }
            (&Method::GET, p) if p.starts_with("patients/") => {
                let id = path_id(&p["patients/".len()..])?;
                let (before, limit) = params.paging()?;
                View::Index(Box::new(move |ix| views::patient(ix, &id, before, limit)))
            }
            (&Method::GET, p) if p.starts_with("clients/") => {
                let id = percent_encoding::percent_decode_str(&p["clients/".len()..])
                    .decode_utf8()
                    .map_err(|_| GatewayError::bad_request("client id is not UTF-8"))?
                    .into_owned();
                let (before, limit) = params.paging()?;
                View::Index(Box::new(move |ix| views::client(ix, &id, before, limit)))
            }
            _ => return Err(GatewayError::not_found("no console API at this path")),
        };
        let index = Arc::clone(&self.index);
        let dir = gw.audit.dir().to_owned();
        let writer_head = gw.audit.stats().head();
        let answer = tokio::task::spawn_blocking(move || -> std::io::Result<Value> {
            let mut guard = index.lock().unwrap_or_else(|p| p.into_inner());
            if matches!(view, View::Rebuild) || guard.is_none() {
                *guard = Some(AuditIndex::new(&dir));
            }
            let ix = guard.as_mut().expect("index set above");
            ix.refresh()?;
            let mut body = match view {
                View::Index(f) => f(ix),
                View::Fixed(v) => v,
                View::Rebuild => json!({}),
            };
            body["chain"] = views::chain(ix, writer_head);
            Ok(body)
        })
        .await
        .map_err(|e| GatewayError::internal(format!("console task: {e}")))?
        .map_err(|e| GatewayError::internal("the audit log could not be read").with_detail(e.to_string()))?;
        Ok(respond::json(StatusCode::OK, answer.to_string()))
    }
}

impl Default for Console {
    fn default() -> Self {
        Console::new()
    }
}

type IndexView = Box<dyn FnOnce(&AuditIndex) -> Value + Send>;

/// What an API call answers from.
enum View {
    Index(IndexView),
    Fixed(Value),
    /// Read the whole log again (and so verify it) from seq 1.
    Rebuild,
}

fn set_cookie(r: &mut Response<Body>, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
}

/// A state-changing call must come from the console's own origin. Browsers
/// send `Origin` (and `Sec-Fetch-Site`) on such requests; a request that
/// says it is cross-site is refused.
fn same_origin(req: &Request<Incoming>) -> Result<(), GatewayError> {
    let headers = req.headers();
    if headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()).is_some_and(|s| s == "cross-site") {
        return Err(GatewayError::forbidden("console: cross-site request refused"));
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        let origin_host = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        if origin_host != Some(host) {
            return Err(GatewayError::forbidden("console: request from another origin refused"));
        }
    }
    Ok(())
}

fn path_id(raw: &str) -> Result<String, GatewayError> {
    let id = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| GatewayError::bad_request("patient id is not UTF-8"))?;
    let id = id.strip_prefix("Patient/").unwrap_or(&id);
    if !crate::fhir::search::is_fhir_id(id) {
        return Err(GatewayError::bad_request("not a patient id"));
    }
    Ok(id.to_owned())
}

/// Query parameters of an API call: each at most once.
struct Params(std::collections::HashMap<String, String>);

impl Params {
    fn parse(query: Option<&str>) -> Result<Params, GatewayError> {
        let mut map = std::collections::HashMap::new();
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if !matches!(name.as_ref(), "client" | "organization" | "before" | "limit") {
                return Err(GatewayError::bad_request(format!("unknown parameter {name}")));
            }
            if map.insert(name.to_string(), value.to_string()).is_some() {
                return Err(GatewayError::bad_request(format!("parameter {name} given twice")));
            }
        }
        Ok(Params(map))
    }

    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).filter(|v| !v.is_empty()).cloned()
    }

    fn paging(&self) -> Result<(Option<u64>, usize), GatewayError> {
        let before = match self.get("before") {
            None => None,
            Some(b) => Some(b.parse().map_err(|_| GatewayError::bad_request("before is not a seq number"))?),
        };
        let limit =
            match self.get("limit") {
                None => views::PAGE_DEFAULT,
                Some(l) => l.parse::<usize>().ok().filter(|l| (1..=views::PAGE_MAX).contains(l)).ok_or_else(
                    || GatewayError::bad_request(format!("limit must be 1..={}", views::PAGE_MAX)),
                )?,
            };
        Ok((before, limit))
    }
}
