//! The access part of the admin API (JSON bodies, admin token checked by the
//! caller):
//!
//! - `PUT /admin/opt-outs/{patient-id}` (optional `{"reason": …}`) → 204;
//!   `DELETE /admin/opt-outs/{patient-id}` → 204; `GET /admin/opt-outs` →
//!   JSON array of `{"patient", "reference", "reason", "since"}`. The id may
//!   be given as `Patient/{id}` too. Effective on this node's next request.
//! - `POST /admin/attribution`: a Group, a Bundle of Groups, or NDJSON of
//!   Groups (attribution rosters, each with an id and a `managingEntity`
//!   Organization), stored (replacing Groups with the same id) → 200 with a
//!   summary; `GET /admin/attribution` lists the stored rosters;
//!   `DELETE /admin/attribution/{group-id}` → 204 (404 when unknown).
//! - `POST /admin/attribution/refresh`: drop every node's cached upstream
//!   attribution and reload this node's at once → 200 with what was loaded
//!   (502 when the upstream fails; requests then fail closed).

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::Request;
use hyper::body::Incoming;
use serde_json::json;

use super::{Access, attribution, state};
use crate::error::{GatewayError, Kind};
use crate::fhir::search::is_fhir_id;
use crate::respond::{self, Body};

/// Largest roster upload (a 100,000-member Group is about 10 MB).
const MAX_ROSTER_BYTES: usize = 256 * 1024 * 1024;
/// Largest opt-out body.
const MAX_OPT_OUT_BYTES: usize = 64 * 1024;
/// Longest opt-out reason kept.
const MAX_REASON_CHARS: usize = 1000;

/// Is `path` one of the access admin endpoints?
pub fn handles(path: &str) -> bool {
    path == "/admin/opt-outs"
        || path.starts_with("/admin/opt-outs/")
        || path == "/admin/attribution"
        || path.starts_with("/admin/attribution/")
}

/// Answer an access admin request (the admin token is already checked).
pub async fn route(access: &Access, req: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    match (&method, path.as_str()) {
        (&Method::GET, "/admin/opt-outs") => {
            let list = state::list_opt_outs(&access.store).await.map_err(super::state_unavailable)?;
            Ok(respond::json(StatusCode::OK, serde_json::to_vec(&list).unwrap_or_default()))
        }
        (&Method::PUT, p) if p.starts_with("/admin/opt-outs/") => {
            let patient = patient_id(&p["/admin/opt-outs/".len()..])?;
            let body = read_body(req, MAX_OPT_OUT_BYTES).await?;
            let reason = opt_out_reason(&body)?;
            let new = state::put_opt_out(&access.store, &patient, reason.as_deref())
                .await
                .map_err(super::state_unavailable)?;
            access.invalidate_snapshot().await?;
            tracing::info!(patient = %patient, new, "opt-out recorded");
            Ok(respond::empty(StatusCode::NO_CONTENT))
        }
        (&Method::DELETE, p) if p.starts_with("/admin/opt-outs/") => {
            let patient = patient_id(&p["/admin/opt-outs/".len()..])?;
            let existed =
                state::delete_opt_out(&access.store, &patient).await.map_err(super::state_unavailable)?;
            access.invalidate_snapshot().await?;
            tracing::info!(patient = %patient, existed, "opt-out withdrawn");
            Ok(respond::empty(StatusCode::NO_CONTENT))
        }
        (&Method::POST, "/admin/attribution") => upload_rosters(access, req).await,
        (&Method::GET, "/admin/attribution") => list_rosters(access).await,
        (&Method::POST, "/admin/attribution/refresh") => refresh_attribution(access).await,
        (&Method::DELETE, p) if p.starts_with("/admin/attribution/") => {
            let id = decode(&p["/admin/attribution/".len()..])?;
            let id = id.strip_prefix("Group/").unwrap_or(&id).to_owned();
            if !is_fhir_id(&id) {
                return Err(GatewayError::bad_request("invalid Group id"));
            }
            let existed = state::delete_roster(&access.store, &id).await.map_err(super::state_unavailable)?;
            access.invalidate_snapshot().await?;
            if existed {
                Ok(respond::empty(StatusCode::NO_CONTENT))
            } else {
                Err(GatewayError::not_found("no such roster"))
            }
        }
        _ => Err(GatewayError::of(Kind::MethodNotAllowed, "method not allowed on this admin endpoint")),
    }
}

/// `POST /admin/attribution`: store the uploaded roster Groups.
async fn upload_rosters(access: &Access, req: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
    let body = read_body(req, MAX_ROSTER_BYTES).await?;
    let groups = attribution::parse_roster_upload(&body, &access.refs)
        .map_err(|why| GatewayError::bad_request(format!("attribution roster: {why}")))?;
    let rows: Vec<(String, String, String)> =
        groups.iter().map(|(g, text)| (g.id.clone(), g.organization.clone(), text.clone())).collect();
    state::put_rosters(&access.store, &rows).await.map_err(super::state_unavailable)?;
    access.invalidate_snapshot().await?;
    let summary: Vec<_> = groups
        .iter()
        .map(|(g, _)| {
            json!({"group": format!("Group/{}", g.id), "organization": g.organization,
                   "members": g.entries, "active": g.active.len()})
        })
        .collect();
    tracing::info!(groups = rows.len(), "attribution rosters stored");
    Ok(respond::json(StatusCode::OK, json!({ "stored": summary }).to_string()))
}

/// `GET /admin/attribution`: the stored rosters and the organizations whose
/// upstream attribution is cached.
async fn list_rosters(access: &Access) -> Result<Response<Body>, GatewayError> {
    let rows = state::roster_rows(&access.store).await.map_err(super::state_unavailable)?;
    let rosters = attribution::index_rosters(rows, &access.refs);
    let mut list: Vec<_> = rosters
        .iter()
        .flat_map(|(org, r)| {
            r.groups.values().map(move |g| {
                json!({"group": format!("Group/{}", g.group.id), "organization": org,
                       "members": g.group.entries, "active": g.group.active.len()})
            })
        })
        .collect();
    list.sort_by(|a, b| a["group"].as_str().cmp(&b["group"].as_str()));
    let cached: Vec<String> = access.upstream_sets.iter().map(|(k, _)| (*k).clone()).collect();
    Ok(respond::json(StatusCode::OK, json!({ "rosters": list, "upstream_cached": cached }).to_string()))
}

/// `POST /admin/attribution/refresh`: read every cached organization's
/// attribution from the upstream again.
async fn refresh_attribution(access: &Access) -> Result<Response<Body>, GatewayError> {
    state::bump_attribution(&access.store).await.map_err(super::state_unavailable)?;
    let organizations: Vec<String> = access.upstream_sets.iter().map(|(k, _)| (*k).clone()).collect();
    access.upstream_sets.invalidate_all();
    access.invalidate_snapshot().await?;
    let mut loaded = Vec::new();
    for organization in organizations {
        let scope = access.scope(&organization).await?;
        loaded.push(json!({"organization": organization, "groups": scope.groups()}));
    }
    tracing::info!(organizations = loaded.len(), "attribution refreshed");
    Ok(respond::json(StatusCode::OK, json!({ "refreshed": loaded }).to_string()))
}

fn decode(raw: &str) -> Result<String, GatewayError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| GatewayError::bad_request("the id is not UTF-8"))
}

/// `{id}` or `Patient/{id}` (either percent-encoded), a valid FHIR id.
fn patient_id(raw: &str) -> Result<String, GatewayError> {
    let decoded = decode(raw)?;
    let id = decoded.strip_prefix("Patient/").unwrap_or(&decoded);
    if is_fhir_id(id) { Ok(id.to_owned()) } else { Err(GatewayError::bad_request("invalid patient id")) }
}

/// The optional `{"reason": "..."}` of an opt-out.
fn opt_out_reason(body: &Bytes) -> Result<Option<String>, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| GatewayError::bad_request("the body must be JSON"))?;
    let Some(object) = value.as_object() else {
        return Err(GatewayError::bad_request("the body must be a JSON object"));
    };
    match object.get("reason") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(reason)) => Ok(Some(reason.chars().take(MAX_REASON_CHARS).collect())),
        Some(_) => Err(GatewayError::bad_request("reason must be a string")),
    }
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, GatewayError> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(_) => Err(GatewayError::bad_request(format!(
            "the request body is unreadable or larger than {limit} bytes"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_reasons() {
        assert_eq!(patient_id("pat-0001").unwrap(), "pat-0001");
        assert_eq!(patient_id("Patient%2Fpat-0001").unwrap(), "pat-0001");
        for bad in ["", "a%2Fb", "..", "a b", "Patient%2F", "%ff"] {
            assert!(patient_id(bad).is_err(), "{bad}");
        }
        assert_eq!(opt_out_reason(&Bytes::new()).unwrap(), None);
        assert_eq!(opt_out_reason(&Bytes::from(r#"{"reason":"asked"}"#)).unwrap().as_deref(), Some("asked"));
        assert_eq!(opt_out_reason(&Bytes::from("{}")).unwrap(), None);
        assert!(opt_out_reason(&Bytes::from("[1]")).is_err());
        assert!(opt_out_reason(&Bytes::from(r#"{"reason":1}"#)).is_err());
        assert!(
            handles("/admin/opt-outs")
                && handles("/admin/opt-outs/x")
                && handles("/admin/attribution/refresh")
        );
        assert!(!handles("/admin/clients") && !handles("/admin/opt-outsx"));
    }
}
