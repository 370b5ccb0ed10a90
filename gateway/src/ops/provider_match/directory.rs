//! The member directory `$provider-member-match` matches against: every
//! covered member (Patient + the Coverages whose beneficiary it is), read
//! from the upstream by paging `Coverage` and `Patient` searches, indexed in
//! memory ([`MemberIndex`], the same index and query semantics as
//! `fhirwall match`), and re-read once older than
//! `member_match.directory_refresh_s`.
//!
//! Why not ask the upstream per member, as `$member-match` does: a request
//! carries up to a thousand members and each takes several candidate
//! queries; thousands of searches against a payer's FHIR server per request
//! would be slow for the provider and heavy for the server, and the index
//! answers each query in microseconds. What this costs: the directory is up
//! to `directory_refresh_s` old. A member added since is not found (a
//! no-match, never a wrong match); one removed since may still be matched
//! (their data is then simply not on the upstream any more); opt-outs are
//! not part of the directory and are checked at match time and on every
//! later request.
//!
//! Any upstream failure while reading fails the load; the request then
//! fails (502) rather than match against a partial population.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Method, StatusCode};
use serde_json::Value;

use crate::error::{GatewayError, Kind};
use crate::plugins::index::MemberIndex;
use crate::proxy::{Upstream, UpstreamRequest};

/// Page size asked of the upstream.
const PAGE_SIZE: &str = "1000";
/// Most pages read per type (a loop guard: 10 million resources).
const MAX_PAGES: usize = 10_000;

pub struct MemberDirectory {
    upstream: Upstream,
    refresh: Duration,
    current: tokio::sync::Mutex<Option<(Instant, Arc<MemberIndex>)>>,
}

impl MemberDirectory {
    pub fn new(upstream: Upstream, refresh: Duration) -> MemberDirectory {
        MemberDirectory { upstream, refresh, current: tokio::sync::Mutex::new(None) }
    }

    /// The directory, read (again) when it is missing or too old. One
    /// reader at a time: concurrent requests wait for the same read.
    pub async fn get(&self) -> Result<Arc<MemberIndex>, GatewayError> {
        let mut slot = self.current.lock().await;
        if let Some((at, index)) = slot.as_ref()
            && at.elapsed() < self.refresh
        {
            return Ok(index.clone());
        }
        let started = Instant::now();
        let mut lines = String::new();
        let coverages = self.read_all("Coverage", &mut lines).await?;
        let patients = self.read_all("Patient", &mut lines).await?;
        let index = tokio::task::spawn_blocking(move || MemberIndex::from_ndjson(&lines))
            .await
            .map_err(|e| GatewayError::internal(format!("member directory task: {e}")))?
            .map_err(|e| load_failure(&format!("member directory: {e}")))?;
        tracing::info!(
            members = index.len(),
            patients,
            coverages,
            ms = started.elapsed().as_millis() as u64,
            "member directory read from the upstream"
        );
        let index = Arc::new(index);
        *slot = Some((Instant::now(), index.clone()));
        Ok(index)
    }

    /// Append every resource of `resource_type` as an NDJSON line; returns
    /// how many. Coverage beneficiaries are made relative (`Patient/{id}`).
    async fn read_all(&self, resource_type: &str, out: &mut String) -> Result<usize, GatewayError> {
        let mut path = format!("{resource_type}?_count={PAGE_SIZE}");
        let mut seen = HashSet::new();
        let mut count = 0;
        for _ in 0..MAX_PAGES {
            if !seen.insert(path.clone()) {
                return Err(load_failure(&format!("the upstream's {resource_type} paging loops")));
            }
            let response = self
                .upstream
                .send(UpstreamRequest {
                    method: Method::GET,
                    path_and_query: path.clone(),
                    body: None,
                    headers: vec![(
                        HeaderName::from_static("prefer"),
                        HeaderValue::from_static("handling=strict"),
                    )],
                    request_id: "member-directory".into(),
                })
                .await
                .map_err(|e| {
                    GatewayError::of(e.kind, "the member directory could not be read from the upstream")
                        .with_detail(format!("{resource_type}: {} {:?}", e.message, e.detail))
                })?;
            if response.status != StatusCode::OK {
                return Err(load_failure(&format!("{resource_type} search answered {}", response.status)));
            }
            let bundle: Value = serde_json::from_slice(&response.body)
                .map_err(|e| load_failure(&format!("{resource_type} search body: {e}")))?;
            if bundle["resourceType"] != "Bundle" {
                return Err(load_failure(&format!("{resource_type} search did not answer a Bundle")));
            }
            for entry in bundle["entry"].as_array().into_iter().flatten() {
                let mut resource = entry["resource"].clone();
                if resource["resourceType"] != resource_type {
                    continue;
                }
                if let Some(reference) = resource["beneficiary"]["reference"].as_str()
                    && let Some(local) = self.upstream.rewriter().strip_upstream_base(reference)
                {
                    resource["beneficiary"]["reference"] = Value::String(local.to_owned());
                }
                out.push_str(&resource.to_string());
                out.push('\n');
                count += 1;
            }
            let next = bundle["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str());
            match next {
                None => return Ok(count),
                Some(url) => {
                    let rest = self.upstream.rewriter().strip_upstream_base(url).ok_or_else(|| {
                        load_failure(&format!("a {resource_type} page link is not on the upstream base"))
                    })?;
                    path = rest.to_owned();
                }
            }
        }
        Err(load_failure(&format!("too many pages of {resource_type}")))
    }
}

fn load_failure(detail: &str) -> GatewayError {
    GatewayError::of(Kind::UpstreamFailed, "the member directory could not be read from the upstream")
        .with_detail(detail.to_owned())
}
