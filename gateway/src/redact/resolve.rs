//! Part 2 programs known by one name are matched by both (DESIGN.md
//! "Contract details"): a program configured as `Organization/{id}` is also
//! matched by the NPIs on that Organization upstream, and one configured by
//! NPI also by the ids of the upstream Organizations that carry it.
//!
//! Looked up once the gateway starts, retried until the upstream answers;
//! until then the data-scope stage refuses to answer (fail closed), since a
//! record naming a program only by its other name would pass.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;

use super::Redactor;
use super::policy::{NPI_SYSTEM, Programs};
use crate::proxy::{Upstream, UpstreamRequest};

/// Pause between failed lookups.
const RETRY: Duration = Duration::from_secs(5);

/// Look the programs up until it succeeds (a background task).
pub fn spawn(redactor: Arc<Redactor>, upstream: Upstream) {
    if redactor.programs_resolved() {
        return;
    }
    tokio::spawn(async move {
        loop {
            match lookup(&redactor.programs(), &upstream).await {
                Ok(found) => {
                    tracing::info!(
                        organizations = found.organizations.len(),
                        npis = found.npis.len(),
                        "Part 2 programs resolved on the upstream"
                    );
                    redactor.add_resolved_programs(&found);
                    return;
                }
                Err(why) => {
                    tracing::warn!(%why, "Part 2 programs could not be resolved yet; answers are refused until they are");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    });
}

/// The other names of `programs` on the upstream.
pub async fn lookup(programs: &Programs, upstream: &Upstream) -> Result<Programs, String> {
    let mut found = Programs::default();
    for id in &programs.organizations {
        let path = format!(
            "Organization/{}",
            percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
        );
        if let Some(org) = fetch(upstream, path).await? {
            found.npis.extend(npis(&org));
        }
    }
    for npi in &programs.npis {
        let path = format!(
            "Organization?identifier={}%7C{npi}",
            percent_encoding::utf8_percent_encode(NPI_SYSTEM, percent_encoding::NON_ALPHANUMERIC)
        );
        if let Some(bundle) = fetch(upstream, path).await? {
            for entry in bundle.get("entry").and_then(Value::as_array).into_iter().flatten() {
                let resource = &entry["resource"];
                // The upstream's search is not trusted: the NPI must be on it.
                if resource["resourceType"] == "Organization"
                    && npis(resource).iter().any(|n| n == npi)
                    && let Some(id) = resource["id"].as_str()
                {
                    found.organizations.insert(id.to_owned());
                }
            }
        }
    }
    Ok(found)
}

/// GET below the upstream base; `None` on 404/410.
async fn fetch(upstream: &Upstream, path: String) -> Result<Option<Value>, String> {
    let request = UpstreamRequest {
        method: Method::GET,
        path_and_query: path,
        body: None,
        headers: Vec::new(),
        request_id: String::new(),
    };
    let response = upstream.send(request).await.map_err(|e| e.to_string())?;
    match response.status {
        StatusCode::OK => serde_json::from_slice(&response.body).map(Some).map_err(|e| e.to_string()),
        StatusCode::NOT_FOUND | StatusCode::GONE => Ok(None),
        other => Err(format!("upstream answered {other}")),
    }
}

fn npis(organization: &Value) -> Vec<String> {
    organization["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["system"] == NPI_SYSTEM)
        .filter_map(|i| i["value"].as_str().map(|v| v.trim().to_owned()))
        .collect()
}
