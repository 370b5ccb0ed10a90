//! `GET /admin/keys` and `POST /admin/keys/rotate`: the keyring's
//! generations (never their material) and rotating them. The node that
//! rotates takes the new state at once; the others within `keyring::POLL`.

use http::{Response, StatusCode};
use serde_json::{Value, json};

use crate::error::{GatewayError, Kind};
use crate::gateway::Gateway;
use crate::keyring::{KeyVersion, NEVER, Purpose, RotateError, Rotation};
use crate::respond::{self, Body};

/// `GET /admin/keys`.
pub async fn list(gw: &Gateway) -> Result<Response<Body>, GatewayError> {
    Ok(respond::json(StatusCode::OK, describe(gw, None).await?.to_string()))
}

/// `POST /admin/keys/rotate?purpose=access-token|page-token|all&revoke_previous=true|false`.
pub async fn rotate(gw: &Gateway, query: Option<&str>) -> Result<Response<Body>, GatewayError> {
    let mut purposes = Purpose::ALL.to_vec();
    let mut how = Rotation::Scheduled;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match (name.as_ref(), value.as_ref()) {
            ("purpose", "all") => purposes = Purpose::ALL.to_vec(),
            ("purpose", p) => {
                purposes = vec![Purpose::parse(p).ok_or_else(|| {
                    GatewayError::bad_request(format!(
                        "purpose: {p:?} is not access-token, page-token or all"
                    ))
                })?]
            }
            ("revoke_previous", "true") => how = Rotation::RevokePrevious,
            ("revoke_previous", "false") => how = Rotation::Scheduled,
            (name, _) => return Err(GatewayError::bad_request(format!("unknown parameter {name}"))),
        }
    }
    let now = crate::clock::unix_now_s();
    let mut rotated = Vec::new();
    for purpose in purposes {
        let version = gw.keyring.rotate(purpose, how, now).await.map_err(|e| match e {
            RotateError::Concurrent(_) => GatewayError::of(Kind::Conflict, e.to_string()),
            RotateError::Store(e) => GatewayError::of(Kind::Unavailable, "the state store is unavailable")
                .with_detail(format!("keys: {e}")),
        })?;
        tracing::warn!(
            purpose = purpose.name(),
            generation = version.generation,
            revoke_previous = how == Rotation::RevokePrevious,
            "key rotated"
        );
        rotated.push((purpose, version.generation));
    }
    // This node at once (the others poll).
    gw.refresh_keys().await.map_err(|e| {
        GatewayError::of(Kind::Unavailable, "rotated, but this node could not reload its keys")
            .with_detail(format!("{e:#}"))
    })?;
    let body = describe(gw, Some(&rotated)).await?;
    Ok(respond::json(StatusCode::OK, body.to_string()))
}

/// Every generation of every purpose, newest first, with its state now.
async fn describe(gw: &Gateway, rotated: Option<&[(Purpose, i64)]>) -> Result<Value, GatewayError> {
    let now = crate::clock::unix_now_s();
    let kids = gw.auth.token_kids();
    let mut keys = Vec::new();
    for purpose in Purpose::ALL {
        let set = gw.keyring.load(purpose).await.map_err(|e| {
            GatewayError::of(Kind::Unavailable, "the state store is unavailable")
                .with_detail(format!("keys: {e}"))
        })?;
        let signing = set.signing(now).map(|v| v.generation);
        for version in &set.versions {
            let kid = match purpose {
                Purpose::AccessToken => {
                    kids.iter().find(|(g, _)| *g == version.generation).map(|(_, k)| k.clone())
                }
                Purpose::PageToken => None,
            };
            keys.push(entry(version, kid, signing == Some(version.generation), now));
        }
    }
    let mut body = json!({ "keys": keys });
    if let Some(rotated) = rotated {
        body["rotated"] = rotated
            .iter()
            .map(|(p, g)| json!({"purpose": p.name(), "generation": g}))
            .collect::<Vec<_>>()
            .into();
    }
    Ok(body)
}

fn entry(version: &KeyVersion, kid: Option<String>, signing: bool, now: i64) -> Value {
    let state = if signing {
        "signing"
    } else if version.active_from > now && version.verifies_at(now) {
        "next"
    } else if version.verifies_at(now) {
        "verifying"
    } else {
        "retired"
    };
    json!({
        "purpose": version.purpose.name(),
        "generation": version.generation,
        "state": state,
        // The JWK thumbprint tokens carry as `kid`; for the page key a
        // SHA-256 prefix (neither reveals the key).
        "kid": kid.unwrap_or_else(|| version.fingerprint()),
        "created": crate::clock::rfc3339(version.created_at),
        "active_from": crate::clock::rfc3339(version.active_from),
        "retire_at": (version.retire_at != NEVER).then(|| crate::clock::rfc3339(version.retire_at)),
    })
}
