//! `GET /admin/explain?client=ID&resource=Type/id` (or `&request=GET /fhir/...`;
//! `&format=text` for lines instead of JSON): why a client would or would
//! not receive something. The work is the FHIR pipeline's
//! (`server::pipeline::explain`), reached through the [`Explainer`] hook so
//! that admin does not depend on the server.

use std::future::Future;
use std::pin::Pin;

use http::{Response, StatusCode};
use serde_json::Value;

use crate::error::GatewayError;
use crate::respond::{self, Body};

/// What to explain: a resource (`Observation/o1`) or a request
/// (`GET /fhir/Observation?patient=pat-0001`, or below the base).
pub enum ExplainTarget<'a> {
    Resource(&'a str),
    Request(&'a str),
}

/// Runs one read or search as a registered client and says what would
/// leave and why (see `server::pipeline::explain`).
pub trait Explainer: Send + Sync {
    fn explain<'a>(
        &'a self,
        client: &'a str,
        target: ExplainTarget<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<Value, GatewayError>> + Send + 'a>>;
}

pub(super) async fn route(
    explainer: &dyn Explainer,
    query: Option<&str>,
) -> Result<Response<Body>, GatewayError> {
    let mut params: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !matches!(name.as_ref(), "client" | "resource" | "request" | "format") {
            return Err(GatewayError::bad_request(format!("unknown parameter {name}")));
        }
        if params.insert(name.to_string(), value.to_string()).is_some() {
            return Err(GatewayError::bad_request(format!("parameter {name} given twice")));
        }
    }
    let client = params.get("client").ok_or_else(|| GatewayError::bad_request("client is required"))?;
    let target = match (params.get("resource"), params.get("request")) {
        (Some(r), None) => ExplainTarget::Resource(r),
        (None, Some(r)) => ExplainTarget::Request(r),
        _ => return Err(GatewayError::bad_request("give resource=Type/id or request='GET /fhir/...'")),
    };
    let explanation = explainer.explain(client, target).await?;
    match params.get("format").map(String::as_str) {
        None | Some("json") => Ok(respond::json(StatusCode::OK, explanation.to_string())),
        Some("text") => Ok(respond::text(StatusCode::OK, "text/plain; charset=utf-8", text(&explanation))),
        Some(other) => Err(GatewayError::bad_request(format!("format {other}: json or text"))),
    }
}

/// The explanation as lines a reviewer reads.
pub fn text(explanation: &Value) -> String {
    let mut out = String::new();
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    out.push_str(&format!(
        "{} as {} ({})\n",
        s(&explanation["request"]),
        s(&explanation["client"]),
        s(&explanation["organization"])
    ));
    let status = explanation["status"].as_u64().unwrap_or(0);
    match explanation["refusal"].as_str() {
        Some(why) => out.push_str(&format!("answer   {status}: refused: {why}\n")),
        None => out.push_str(&format!("answer   {status}\n")),
    }
    let leaves: Vec<String> = explanation["leaves"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    if leaves.is_empty() {
        out.push_str("leaves   nothing\n");
    }
    for r in &leaves {
        out.push_str(&format!("leaves   {r}\n"));
    }
    for d in explanation["decisions"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<8} {} by {} ({})",
            s(&d["action"]),
            s(&d["resource"]),
            s(&d["stage"]),
            s(&d["reason"])
        ));
        if let Some(detail) = d["detail"].as_str() {
            out.push_str(&format!(": {detail}"));
        }
        out.push('\n');
    }
    for p in explanation["patients"].as_array().into_iter().flatten() {
        let groups: Vec<String> = p["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str().map(|g| format!("Group/{g}")))
            .collect();
        let basis = match (p["attributed"].as_bool(), p["opted_out"].as_bool()) {
            (_, Some(true)) => "opted out: hidden from every provider".to_owned(),
            (Some(true), _) => format!("attributed through {}", groups.join(", ")),
            _ => "not attributed to this organization".to_owned(),
        };
        out.push_str(&format!("patient  {}: {basis}\n", s(&p["patient"])));
    }
    out
}
