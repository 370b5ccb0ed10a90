//! `explain`: why a client would or would not receive a resource. Runs one
//! read or search as a registered client through the real pipeline (the
//! same parse, scope check, access decision, upstream request and response
//! chain as a FHIR request, against the live upstream) with the chain's
//! per-resource trace on, and answers what would leave and which stage
//! decided what — by `Type/id`, stage and reason only, never a value of a
//! resource. Served as `GET /admin/explain` through the admin listener's
//! [`Explainer`] hook (audited like every admin call); `fhirwall explain`
//! asks that endpoint.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::{FhirHandler, Trace, below_base, new_request_id};
use crate::admin::{ExplainTarget, Explainer};
use crate::audit::AuditRecord;
use crate::error::GatewayError;
use crate::gateway::Gateway;

/// The admin listener's hook, served by this pipeline.
pub struct PipelineExplainer(pub Arc<Gateway>);

impl Explainer for PipelineExplainer {
    fn explain<'a>(
        &'a self,
        client: &'a str,
        target: ExplainTarget<'a>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, GatewayError>> + Send + 'a>> {
        Box::pin(explain(&self.0, client, target))
    }
}

pub async fn explain(
    gw: &Arc<Gateway>,
    client: &str,
    target: ExplainTarget<'_>,
) -> Result<Value, GatewayError> {
    let (method, below) = match target {
        ExplainTarget::Resource(r) => {
            let (ty, id) = r.split_once('/').ok_or_else(|| GatewayError::bad_request("resource: Type/id"))?;
            if !crate::fhir::search::is_fhir_id(id)
                || ty.is_empty()
                || !ty.bytes().all(|b| b.is_ascii_alphabetic())
            {
                return Err(GatewayError::bad_request("resource: Type/id"));
            }
            (Method::GET, format!("{ty}/{id}"))
        }
        ExplainTarget::Request(text) => {
            let (method, target) = text.trim().split_once(' ').unwrap_or(("GET", text.trim()));
            let method = match method.to_ascii_uppercase().as_str() {
                "GET" => Method::GET,
                _ => return Err(GatewayError::bad_request("explain answers GET reads and searches")),
            };
            let target = target.trim();
            let below = if target.starts_with('/') {
                let (path, query) = target.split_once('?').map_or((target, None), |(p, q)| (p, Some(q)));
                let below = below_base(path, &gw.base_path).ok_or_else(|| {
                    GatewayError::bad_request("request: the path is not below the FHIR base")
                })?;
                match query {
                    Some(q) => format!("{below}?{q}"),
                    None => below.to_owned(),
                }
            } else {
                target.to_owned()
            };
            (method, below)
        }
    };
    let principal = gw
        .auth
        .principal_of(client)
        .await?
        .ok_or_else(|| GatewayError::not_found(format!("no registered client {client}")))?;
    let (path, query) = below.split_once('?').map_or((below.as_str(), None), |(p, q)| (p, Some(q)));
    let uri = match query {
        Some(q) => format!("{}/{path}?{q}", gw.base_path),
        None => format!("{}/{path}", gw.base_path),
    };
    let (parts, ()) = Request::builder()
        .method(method.clone())
        .uri(&uri)
        .header(http::header::ACCEPT, "application/fhir+json")
        .body(())
        .map_err(|_| GatewayError::bad_request("request: not a valid request target"))?
        .into_parts();
    let handler = FhirHandler::new(gw.clone());
    let request_id = new_request_id();
    // The run's own record is not written: the admin call that asked is.
    let mut record = AuditRecord::rest(&request_id);
    let (interaction, result, steps) = handler
        .run(&parts, path, Bytes::new(), Some(principal.clone()), &request_id, &mut record, Trace::On)
        .await;
    let (status, leaves, refusal) = match result {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            (status, leaving(&body), None)
        }
        Err(err) => (err.status.as_u16(), Vec::new(), Some(err.message.clone())),
    };
    let scope = gw.access.scope(&principal.organization).await?;
    let mut patients: Vec<String> = Vec::new();
    if let Some(p) = patient_named(path, query) {
        patients.push(p);
    }
    for r in &leaves {
        if let Some(p) = r.strip_prefix("Patient/") {
            patients.push(p.to_owned());
        }
    }
    patients.sort();
    patients.dedup();
    let basis: Vec<Value> = patients
        .iter()
        .map(|p| {
            json!({"patient": format!("Patient/{p}"), "attributed": scope.is_attributed(p),
                   "opted_out": scope.is_opted_out(p), "groups": scope.groups_of(p)})
        })
        .collect();
    let mut decisions: Vec<Value> = steps
        .iter()
        .map(|s| {
            let mut d = json!({"resource": s.resource, "action": s.action, "stage": s.stage, "reason": s.reason.as_str()});
            if let Some(detail) = &s.detail {
                d["detail"] = json!(detail);
            }
            d
        })
        .collect();
    // Refused before the upstream was asked: the access decision (a
    // patient the organization may not see, or one who opted out).
    if refusal.is_some() && decisions.is_empty() && patients.iter().any(|p| !scope.is_visible(p)) {
        let opted_out = patients.iter().any(|p| scope.is_opted_out(p));
        decisions.push(json!({"resource": below, "action": "refused", "stage": "access",
            "reason": if opted_out { "opt-out" } else { "attribution" }}));
    }
    Ok(json!({
        "client": principal.client_id,
        "organization": principal.organization,
        "request": format!("{method} {below}"),
        "interaction": interaction,
        "status": status,
        "refusal": refusal,
        "leaves": leaves,
        "decisions": decisions,
        "patients": basis,
        "groups": scope.groups(),
    }))
}

/// `Type/id` of what an answer carries: the resource, or a Bundle's entries.
fn leaving(body: &[u8]) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<Value>(body) else { return Vec::new() };
    let key = |r: &Value| match (r["resourceType"].as_str(), r["id"].as_str()) {
        (Some(t), Some(id)) => Some(format!("{t}/{id}")),
        (Some(t), None) => Some(t.to_owned()),
        _ => None,
    };
    if value["resourceType"] == "Bundle" {
        value["entry"].as_array().into_iter().flatten().filter_map(|e| key(&e["resource"])).collect()
    } else {
        key(&value).into_iter().collect()
    }
}

/// The patient a request is about: `Patient/{id}[/...]`, or a `patient`,
/// `subject` or `beneficiary` parameter naming one.
fn patient_named(path: &str, query: Option<&str>) -> Option<String> {
    if let Some(rest) = path.strip_prefix("Patient/") {
        return rest.split('/').next().filter(|id| crate::fhir::search::is_fhir_id(id)).map(str::to_owned);
    }
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if matches!(name.as_ref(), "patient" | "subject" | "beneficiary") {
            let id = value.trim_start_matches("Patient/");
            if crate::fhir::search::is_fhir_id(id) {
                return Some(id.to_owned());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_leaves_and_whom_a_request_is_about() {
        let bundle = br#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Observation","id":"o1","value":"x"}}]}"#;
        assert_eq!(leaving(bundle), vec!["Observation/o1"]);
        assert_eq!(leaving(br#"{"resourceType":"Patient","id":"p1","name":[]}"#), vec!["Patient/p1"]);
        assert_eq!(patient_named("Patient/p1/Coverage", None).as_deref(), Some("p1"));
        assert_eq!(patient_named("Observation", Some("patient=Patient%2Fp2&code=1")).as_deref(), Some("p2"));
        assert_eq!(patient_named("Observation", Some("code=1")), None);
    }
}
