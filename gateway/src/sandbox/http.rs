//! The sandbox's HTTP side: routing, FHIR JSON responses, test fault
//! injection, and the accept loop.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::params::{self, Kind};
use super::search::{DEFAULT_COUNT, MAX_COUNT, Outcome, Refusal, Search};
use super::store::{Entry, valid_id, valid_type};
use super::{Fault, FaultPlan, NOISE_MARKER, Sandbox};

pub(crate) type Body = BoxBody<Bytes, io::Error>;

const FHIR_JSON: &str = "application/fhir+json";
/// Largest POST `_search` form body accepted.
const MAX_FORM_BODY: usize = 1 << 20;
/// Longest `X-Sandbox-Delay-Ms` honoured.
const MAX_DELAY_MS: u64 = 600_000;
/// How long in-flight requests get to finish after shutdown.
const DRAIN: Duration = Duration::from_secs(5);

pub(crate) const DELAY_HEADER: &str = "x-sandbox-delay-ms";
pub(crate) const FAULT_HEADER: &str = "x-sandbox-fault";
pub(crate) const CONTROL_PATH: &str = "/_sandbox/fault";

/// Per-server state shared by every connection.
struct Ctx {
    sandbox: Arc<Sandbox>,
    base: String,
    capability: Bytes,
}

/// A response before fault injection.
struct Reply {
    status: StatusCode,
    body: Bytes,
    etag: Option<String>,
    allow: Option<&'static str>,
}

impl Reply {
    fn json(status: StatusCode, body: impl Into<Bytes>) -> Reply {
        Reply { status, body: body.into(), etag: None, allow: None }
    }

    fn outcome(status: u16, code: &str, message: &str) -> Reply {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        Reply::json(status, outcome_json(code, message))
    }

    fn refusal(r: Refusal) -> Reply {
        Reply::outcome(r.status, r.code, &r.message)
    }

    fn not_allowed(allow: &'static str, message: &str) -> Reply {
        let mut r = Reply::outcome(405, "not-supported", message);
        r.allow = Some(allow);
        r
    }
}

fn outcome_json(code: &str, message: &str) -> String {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": message}]
    })
    .to_string()
}

fn full(body: Bytes) -> Body {
    Full::new(body).map_err(|never: Infallible| match never {}).boxed()
}

fn header_str<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn handle(req: Request<Incoming>, ctx: Arc<Ctx>) -> Result<Response<Body>, io::Error> {
    if req.uri().path() == CONTROL_PATH {
        return Ok(respond(control(&req, &ctx), None));
    }
    let (mut fault, mut delay_ms) = match req.uri().path_and_query() {
        Some(pq) => ctx.sandbox.take_armed(pq.as_str()).unwrap_or((None, 0)),
        None => (None, 0),
    };
    if ctx.sandbox.faults_enabled() {
        if let Some(ms) = header_str(&req, DELAY_HEADER) {
            match ms.trim().parse::<u64>() {
                Ok(ms) => delay_ms = ms,
                Err(_) => {
                    let reply = Reply::outcome(400, "invalid", "X-Sandbox-Delay-Ms: expected milliseconds");
                    return Ok(respond(reply, None));
                }
            }
        }
        if let Some(v) = header_str(&req, FAULT_HEADER) {
            match Fault::parse(v) {
                Some(f) => fault = Some(f),
                None => {
                    let msg = format!("X-Sandbox-Fault: unknown fault {v:?} ({})", Fault::NAMES);
                    return Ok(respond(Reply::outcome(400, "invalid", &msg), None));
                }
            }
        }
    }
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms.min(MAX_DELAY_MS))).await;
    }
    if fault == Some(Fault::Close) {
        // An error from the service makes hyper drop the connection unanswered.
        return Err(io::Error::other("sandbox fault: close"));
    }
    let reply = route(req, &ctx).await;
    Ok(respond(reply, fault))
}

/// `POST /_sandbox/fault?fault=NAME&delay_ms=N&path=SUBSTRING&times=N` arms
/// a fault plan, `DELETE /_sandbox/fault` disarms; only with faults enabled.
fn control(req: &Request<Incoming>, ctx: &Ctx) -> Reply {
    if !ctx.sandbox.faults_enabled() {
        return Reply::outcome(404, "not-found", "the FHIR base is /fhir");
    }
    let method = req.method();
    if method == Method::DELETE {
        ctx.sandbox.disarm();
        return Reply::json(StatusCode::OK, r#"{"armed":null}"#);
    }
    if method != Method::POST && method != Method::PUT {
        return Reply::not_allowed("POST, PUT, DELETE", "arm with POST, disarm with DELETE");
    }
    let mut plan = FaultPlan::default();
    for (k, v) in req.uri().query().map(query_pairs).unwrap_or_default() {
        let number = || v.trim().parse::<u64>().map_err(|_| format!("{k}: expected a number"));
        let parsed = match k.as_str() {
            "fault" if v == "none" || v.is_empty() => Ok(()),
            "fault" => Fault::parse(&v)
                .map(|f| plan.fault = Some(f))
                .ok_or_else(|| format!("fault: unknown fault {v:?} ({})", Fault::NAMES)),
            "delay_ms" => number().map(|n| plan.delay_ms = n),
            "times" => number().map(|n| plan.times = Some(n)),
            "path" => {
                plan.path_contains = Some(v.clone());
                Ok(())
            }
            _ => Err(format!("unknown parameter {k:?} (fault, delay_ms, path, times)")),
        };
        if let Err(msg) = parsed {
            return Reply::outcome(400, "invalid", &msg);
        }
    }
    let body = json!({"armed": {
        "fault": plan.fault.map(Fault::name),
        "delay_ms": plan.delay_ms,
        "path": plan.path_contains,
        "times": plan.times,
    }});
    ctx.sandbox.arm(plan);
    Reply::json(StatusCode::OK, body.to_string())
}

fn respond(reply: Reply, fault: Option<Fault>) -> Response<Body> {
    let mut status = reply.status;
    let mut body = reply.body;
    let mut declared_len = None;
    match fault {
        Some(Fault::Truncate) => body = body.slice(..body.len() / 2),
        Some(Fault::NotJson) => {
            status = StatusCode::OK;
            body =
                Bytes::from_static(b"<html><body><h1>Service Temporarily Unavailable</h1></body></html>\n");
        }
        Some(Fault::Error) => {
            status = StatusCode::INTERNAL_SERVER_ERROR;
            body = outcome_json("exception", "X-Sandbox-Fault: error").into();
        }
        Some(Fault::Abort) => declared_len = Some(body.len()),
        Some(Fault::Close) | None => {}
    }
    let response_body = match declared_len {
        Some(len) => {
            let half = body.slice(..len / 2);
            let frames: Vec<Result<Frame<Bytes>, io::Error>> = vec![
                Ok(Frame::data(half)),
                Err(io::Error::new(io::ErrorKind::ConnectionAborted, "X-Sandbox-Fault: abort")),
            ];
            BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
        }
        None => full(body),
    };
    let mut resp = Response::new(response_body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    if let Some(len) = declared_len {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    if let Some(etag) = reply.etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        headers.insert(header::ETAG, etag);
    }
    if let Some(allow) = reply.allow {
        headers.insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    resp
}

fn wants_xml(req: &Request<Incoming>) -> bool {
    header_str(req, "accept").is_some_and(|a| {
        let a = a.to_ascii_lowercase();
        a.contains("xml") && !a.contains("json") && !a.contains("*/*")
    })
}

fn lenient(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim().eq_ignore_ascii_case("handling=lenient"))
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

async fn route(req: Request<Incoming>, ctx: &Ctx) -> Reply {
    let path = req.uri().path().to_owned();
    let Some(rest) = path.strip_prefix("/fhir").filter(|r| r.is_empty() || r.starts_with('/')) else {
        return Reply::outcome(404, "not-found", "the FHIR base is /fhir");
    };
    let mut segs: Vec<String> =
        rest.split('/').skip(1).map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned()).collect();
    if segs.last().is_some_and(String::is_empty) {
        segs.pop();
    }
    let format_xml = req.uri().query().is_some_and(|q| {
        query_pairs(q).iter().any(|(k, v)| k == "_format" && v.to_ascii_lowercase().contains("xml"))
    });
    if wants_xml(&req) || format_xml {
        return Reply::outcome(406, "not-supported", "this server speaks application/fhir+json only");
    }
    let method = req.method().clone();
    let is_get = method == Method::GET || method == Method::HEAD;
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    if segs.iter().any(|s| s.starts_with('$')) {
        return Reply::outcome(400, "not-supported", "operations are not supported by the sandbox");
    }
    match segs.as_slice() {
        [] if method == Method::POST => {
            Reply::not_allowed("GET", "batch/transaction is not supported (read-only)")
        }
        [] => Reply::outcome(400, "not-supported", "system-level search is not supported"),
        ["metadata"] if is_get => Reply::json(StatusCode::OK, ctx.capability.clone()),
        ["metadata"] => Reply::not_allowed("GET", "metadata is read-only"),
        [ty, ..] if !valid_type(ty) => {
            Reply::outcome(404, "not-found", &format!("unknown path segment {ty:?}"))
        }
        [ty] if is_get => {
            let pairs = req.uri().query().map(query_pairs).unwrap_or_default();
            search(ctx, ty, &pairs, lenient(&req))
        }
        [ty, "_search"] if method == Method::POST || is_get => {
            let lenient = lenient(&req);
            let mut pairs = req.uri().query().map(query_pairs).unwrap_or_default();
            if method == Method::POST {
                match Limited::new(req.into_body(), MAX_FORM_BODY).collect().await {
                    Ok(body) => {
                        let body = body.to_bytes();
                        pairs.extend(
                            url::form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), v.into_owned())),
                        );
                    }
                    Err(_) => return Reply::outcome(413, "too-costly", "search form body too large"),
                }
            }
            search(ctx, ty, &pairs, lenient)
        }
        [_] | [_, "_search"] => {
            Reply::not_allowed("GET, POST", "create and conditional writes are not supported (read-only)")
        }
        [_, "_history"] => Reply::outcome(400, "not-supported", "type-level history is not supported"),
        [ty, id] if is_get => read(ctx, ty, id),
        [_, _] => Reply::not_allowed("GET", "update/patch/delete are not supported (read-only)"),
        [ty, id, "_history"] if is_get => {
            let pairs = req.uri().query().map(query_pairs).unwrap_or_default();
            history(ctx, ty, id, &pairs)
        }
        [ty, id, "_history", vid] if is_get => vread(ctx, ty, id, vid),
        [_, _, "_history", ..] => Reply::not_allowed("GET", "history is read-only"),
        [_, _, compartment] if valid_type(compartment) => Reply::outcome(
            400,
            "not-supported",
            "compartment search is not supported by the sandbox; search the type with a patient parameter",
        ),
        _ => Reply::outcome(404, "not-found", "unknown path"),
    }
}

fn lookup<'a>(ctx: &'a Ctx, ty: &str, id: &str) -> Result<&'a Entry, Reply> {
    if !valid_id(id) {
        return Err(Reply::outcome(404, "not-found", &format!("{ty}/{id} is not known")));
    }
    ctx.sandbox
        .store
        .get(ty, id)
        .ok_or_else(|| Reply::outcome(404, "not-found", &format!("{ty}/{id} is not known")))
}

fn read(ctx: &Ctx, ty: &str, id: &str) -> Reply {
    match lookup(ctx, ty, id) {
        Ok(e) => {
            let mut r = Reply::json(StatusCode::OK, Bytes::copy_from_slice(e.json.as_bytes()));
            r.etag = Some(format!("W/\"{}\"", e.version));
            r
        }
        Err(r) => r,
    }
}

fn vread(ctx: &Ctx, ty: &str, id: &str, vid: &str) -> Reply {
    let e = match lookup(ctx, ty, id) {
        Ok(e) => e,
        Err(r) => return r,
    };
    match e.version_json(vid) {
        Some(json) => {
            let mut r = Reply::json(StatusCode::OK, Bytes::copy_from_slice(json.as_bytes()));
            r.etag = Some(format!("W/\"{vid}\""));
            r
        }
        None => Reply::outcome(404, "not-found", &format!("{ty}/{id}/_history/{vid} is not known")),
    }
}

/// `_count` / `_offset` of a history request; other parameters (`_since`,
/// `_at`, ...) are ignored.
fn history_paging(pairs: &[(String, String)]) -> Result<(usize, usize), Reply> {
    let (mut count, mut offset) = (DEFAULT_COUNT, 0);
    for (k, v) in pairs {
        let slot = match k.as_str() {
            "_count" => &mut count,
            "_offset" => &mut offset,
            _ => continue,
        };
        *slot = v.trim().parse::<usize>().map_err(|_| {
            Reply::outcome(400, "invalid", &format!("{k}: expected a non-negative integer, got {v:?}"))
        })?;
    }
    Ok((count.min(MAX_COUNT), offset))
}

/// The instance history: every kept version, newest first, paged like a
/// search.
fn history(ctx: &Ctx, ty: &str, id: &str, pairs: &[(String, String)]) -> Reply {
    let e = match lookup(ctx, ty, id) {
        Ok(e) => e,
        Err(r) => return r,
    };
    let (count, offset) = match history_paging(pairs) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let noise = ctx.sandbox.noise_enabled();
    let versions: Vec<(&str, &str, &str)> = e.versions().collect();
    let total = versions.len();
    let page = &versions[offset.min(total)..(offset.saturating_add(count)).min(total)];
    let history_url = format!("{}/{ty}/{id}/_history", ctx.base);
    let mut out = String::with_capacity(page.iter().map(|v| v.2.len() + 512).sum::<usize>() + 1024);
    open_bundle(&mut out, "history", total, noise);
    let mut links: Vec<(&str, String)> = paging_links(total, count, offset)
        .into_iter()
        .map(|(rel, off)| (rel, format!("{history_url}?_count={count}&_offset={off}")))
        .collect();
    if noise {
        links.extend(noise_links(&history_url));
    }
    push_links(&mut out, &links);
    let full_url = format!("{}/{ty}/{id}", ctx.base);
    let key = format!("{ty}/{id}");
    for (i, (vid, last_updated, json)) in page.iter().enumerate() {
        out.push_str(if i == 0 { r#","entry":[{"# } else { r#",{"# });
        if noise {
            push_noise_entry_link(&mut out, &key);
        }
        out.push_str(r#""fullUrl":"#);
        push_json_str(&mut out, &full_url);
        out.push_str(r#","resource":"#);
        out.push_str(json);
        if noise {
            out.push_str(r#","search":"#);
            out.push_str(&noise_search(None));
        }
        out.push_str(r#","request":{"method":"PUT","url":"#);
        push_json_str(&mut out, &key);
        out.push_str(r#"},"response":{"status":"200 OK","etag":"#);
        push_json_str(&mut out, &format!("W/\"{vid}\""));
        out.push_str(r#","lastModified":"#);
        push_json_str(&mut out, last_updated);
        if noise {
            out.push_str(r#","outcome":"#);
            out.push_str(&noise_outcome("history entry"));
        }
        out.push_str("}}");
    }
    if !page.is_empty() {
        out.push(']');
    }
    close_bundle(&mut out, noise);
    Reply::json(StatusCode::OK, out)
}

fn search(ctx: &Ctx, ty: &str, pairs: &[(String, String)], lenient: bool) -> Reply {
    if params::type_params(ty).is_none() {
        return Reply::outcome(404, "not-supported", &format!("resource type {ty} is not supported"));
    }
    match Search::parse(ty, pairs, lenient) {
        Ok(s) => {
            let outcome = s.run(&ctx.sandbox.store);
            Reply::json(StatusCode::OK, searchset(ctx, ty, &outcome))
        }
        Err(r) => Reply::refusal(r),
    }
}

fn push_json_str(out: &mut String, s: &str) {
    // serde_json string escaping; serialising a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

fn page_url(ctx: &Ctx, ty: &str, params: &[(String, String)], count: usize, offset: usize) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        q.append_pair(k, v);
    }
    q.append_pair("_count", &count.to_string());
    q.append_pair("_offset", &offset.to_string());
    format!("{}/{ty}?{}", ctx.base, q.finish())
}

/// The `link`s of a page: relation and offset.
fn paging_links(total: usize, count: usize, offset: usize) -> Vec<(&'static str, usize)> {
    let mut links = vec![("self", offset), ("first", 0)];
    if count > 0 {
        if offset > 0 {
            links.push(("previous", offset.saturating_sub(count)));
        }
        if offset.saturating_add(count) < total {
            links.push(("next", offset + count));
        }
        let last = if total == 0 { 0 } else { (total - 1) / count * count };
        links.push(("last", last));
    }
    links
}

/// `{"resourceType":"Bundle",...,"total":N` (the object left open).
fn open_bundle(out: &mut String, kind: &str, total: usize, noise: bool) {
    let id = bundle_id();
    let now = now_rfc3339();
    out.push_str(r#"{"resourceType":"Bundle","id":"#);
    push_json_str(out, &id);
    out.push_str(r#","meta":{"lastUpdated":"#);
    push_json_str(out, &now);
    if noise {
        out.push_str(r#","tag":"#);
        out.push_str(
            &json!([{"system": NOISE_SYSTEM, "code": "noise", "display": format!("{NOISE_MARKER} tag")}])
                .to_string(),
        );
    }
    out.push('}');
    if noise {
        out.push_str(r#","extension":"#);
        out.push_str(&noise_extension("Bundle.extension").to_string());
        out.push_str(r#","identifier":"#);
        out.push_str(
            &json!({"system": format!("{NOISE_SYSTEM}/{NOISE_MARKER}"), "value": format!("{NOISE_MARKER}-{id}")})
                .to_string(),
        );
    }
    out.push_str(r#","type":"#);
    push_json_str(out, kind);
    if noise {
        out.push_str(r#","timestamp":"#);
        push_json_str(out, &now);
        out.push_str(r#","_timestamp":{"extension":"#);
        out.push_str(&noise_extension("Bundle.timestamp").to_string());
        out.push('}');
    }
    out.push_str(r#","total":"#);
    out.push_str(&total.to_string());
}

/// `,"link":[...]`
fn push_links(out: &mut String, links: &[(&str, String)]) {
    out.push_str(r#","link":["#);
    for (i, (rel, url)) in links.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"relation":"#);
        push_json_str(out, rel);
        out.push_str(r#","url":"#);
        push_json_str(out, url);
        out.push('}');
    }
    out.push(']');
}

/// Closes what [`open_bundle`] opened, after the links and entries.
fn close_bundle(out: &mut String, noise: bool) {
    if noise {
        let signature = json!({
            "type": [{
                "system": "urn:iso-astm:E1762-95:2013",
                "code": "1.2.840.10065.1.12.1.1",
                "display": "Author's Signature",
            }],
            "when": now_rfc3339(),
            "who": {"display": format!("{NOISE_MARKER} signer")},
            "sigFormat": "application/jose",
            "data": NOISE_DATA_BASE64,
        });
        out.push_str(r#","signature":"#);
        out.push_str(&signature.to_string());
        out.push_str(r#","issues":"#);
        out.push_str(&noise_outcome("Bundle.issues"));
    }
    out.push('}');
}

/// Where the noise's made-up URLs point.
const NOISE_SYSTEM: &str = "http://sandbox.fhirwall.invalid/noise";
/// `NOISE-SECRET`, base64: the signature's data.
const NOISE_DATA_BASE64: &str = "Tk9JU0UtU0VDUkVU";

fn noise_extension(place: &str) -> Value {
    json!([{"url": format!("{NOISE_SYSTEM}/extension"), "valueString": format!("{NOISE_MARKER} in {place}")}])
}

fn noise_outcome(place: &str) -> String {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational",
                   "diagnostics": format!("{NOISE_MARKER} in {place}")}],
    })
    .to_string()
}

/// `entry.search` with noise: the mode (searchset entries), a score and
/// an extension.
fn noise_search(mode: Option<&str>) -> String {
    let mut search = json!({"score": 1, "extension": noise_extension("entry.search")});
    if let Some(mode) = mode {
        search["mode"] = mode.into();
    }
    search.to_string()
}

/// `"link":[...],` opening an entry (the object already open).
fn push_noise_entry_link(out: &mut String, key: &str) {
    out.push_str(r#""link":"#);
    out.push_str(
        &json!([{"relation": "alternate", "url": format!("{NOISE_SYSTEM}/{NOISE_MARKER}/{key}")}])
            .to_string(),
    );
    out.push(',');
}

/// The Bundle-level noise links: an `alternate` and a second `last`, both
/// with the marker in their URL (the `last` one on the sandbox's base).
fn noise_links(page_base: &str) -> [(&'static str, String); 2] {
    [
        ("alternate", format!("{NOISE_SYSTEM}/{NOISE_MARKER}/alternate")),
        ("last", format!("{page_base}?_page={NOISE_MARKER}")),
    ]
}

fn searchset(ctx: &Ctx, ty: &str, o: &Outcome<'_>) -> String {
    let noise = ctx.sandbox.noise_enabled();
    let size: usize =
        o.page.iter().chain(o.included.iter()).map(|e| e.json.len() + ctx.base.len() + 96).sum();
    let mut out = String::with_capacity(size + 1024);
    open_bundle(&mut out, "searchset", o.total, noise);
    let mut links: Vec<(&str, String)> = paging_links(o.total, o.count, o.offset)
        .into_iter()
        .map(|(rel, offset)| (rel, page_url(ctx, ty, &o.link_params, o.count, offset)))
        .collect();
    if noise {
        links.extend(noise_links(&format!("{}/{ty}", ctx.base)));
    }
    push_links(&mut out, &links);
    let entries = o.page.iter().map(|e| (e, "match")).chain(o.included.iter().map(|e| (e, "include")));
    let mut first = true;
    for (e, mode) in entries {
        out.push_str(if first { r#","entry":[{"# } else { r#",{"# });
        first = false;
        if noise {
            push_noise_entry_link(&mut out, &e.key());
        }
        out.push_str(r#""fullUrl":"#);
        push_json_str(&mut out, &format!("{}/{}/{}", ctx.base, e.rtype, e.id));
        out.push_str(r#","resource":"#);
        out.push_str(&e.json);
        if noise {
            out.push_str(r#","search":"#);
            out.push_str(&noise_search(Some(mode)));
            out.push_str(r#","response":{"status":"200 OK","outcome":"#);
            out.push_str(&noise_outcome("searchset entry"));
            out.push_str("}}");
        } else {
            out.push_str(r#","search":{"mode":""#);
            out.push_str(mode);
            out.push_str(r#""}}"#);
        }
    }
    if !first {
        out.push(']');
    }
    close_bundle(&mut out, noise);
    out
}

fn bundle_id() -> String {
    let v: u128 = rand::random();
    let h = format!("{v:032x}");
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

pub(crate) use crate::clock::now_rfc3339;

/// The CapabilityStatement: every supported type with its interactions,
/// search parameters, `_include` and `_revinclude` values.
fn capability(base: &str, sandbox: &Sandbox) -> Value {
    let mut resources = Vec::new();
    for (ty, defs) in params::TYPES {
        let search_params: Vec<Value> = std::iter::once(json!({"name": "_id", "type": "token"}))
            .chain(
                defs.iter()
                    .chain(params::COMMON.iter())
                    .map(|p| json!({"name": p.name, "type": p.kind.fhir_name()})),
            )
            .collect();
        let includes: Vec<String> = std::iter::once(format!("{ty}:*"))
            .chain(defs.iter().filter(|p| p.kind == Kind::Reference).map(|p| format!("{ty}:{}", p.name)))
            .collect();
        let revincludes: Vec<String> = params::TYPES
            .iter()
            .flat_map(|(src, sdefs)| {
                sdefs
                    .iter()
                    .filter(|p| p.kind == Kind::Reference && (p.targets.is_empty() || p.targets.contains(ty)))
                    .map(move |p| format!("{src}:{}", p.name))
            })
            .collect();
        resources.push(json!({
            "type": ty,
            "interaction": [{"code": "read"}, {"code": "vread"}, {"code": "history-instance"}, {"code": "search-type"}],
            "versioning": "versioned",
            "readHistory": true,
            "updateCreate": false,
            "searchInclude": includes,
            "searchRevInclude": revincludes,
            "searchParam": search_params,
        }));
    }
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now_rfc3339(),
        "publisher": "fhirwall",
        "kind": "instance",
        "software": {"name": "fhirwall sandbox", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {
            "description": format!(
                "fhirwall built-in sandbox FHIR server (demo and test upstream, {} resources)",
                sandbox.len()
            ),
            "url": base,
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "Read-only. Search result parameters: _count (default 20, max 500), _offset, \
                _include, _include:iterate, _revinclude, _sort (_id, _lastUpdated, date parameters). \
                Unknown parameters are refused unless the request has Prefer: handling=lenient.",
            "resource": resources,
            "searchParam": [
                {"name": "_id", "type": "token"},
                {"name": "_lastUpdated", "type": "date"},
                {"name": "_security", "type": "token"},
                {"name": "_tag", "type": "token"},
                {"name": "_profile", "type": "uri"},
            ],
        }],
    })
}

/// The base URL a listener bound to `addr` serves: unspecified addresses
/// are named by their loopback.
pub(crate) fn base_for(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}/fhir", SocketAddr::new(ip, addr.port()))
}

pub(crate) async fn serve_with_base(
    listener: TcpListener,
    sandbox: Arc<Sandbox>,
    base: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let base = base.trim_end_matches('/').to_owned();
    let capability = Bytes::from(capability(&base, &sandbox).to_string());
    let ctx = Arc::new(Ctx { sandbox, base, capability });
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "sandbox: accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let service = hyper::service::service_fn(move |req| handle(req, ctx.clone()));
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "sandbox: connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::debug!("sandbox: drain period over; closing remaining connections");
    }
    Ok(())
}
