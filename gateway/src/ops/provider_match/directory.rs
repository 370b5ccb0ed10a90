//! The member directory `$provider-member-match` matches against: every
//! covered member (Patient + the Coverages whose beneficiary it is), read
//! from the upstream by paging `Coverage` and `Patient` searches, indexed in
//! memory ([`MemberIndex`], the same index and query semantics as
//! `fhirwall match`), and re-read in the background once older than
//! `member_match.directory_refresh_s` (requests meanwhile use the copy
//! they have; only the very first read makes a request wait).
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
    reader: Arc<Reader>,
    refresh: Duration,
    current: Arc<std::sync::RwLock<Held>>,
    /// Held while a read runs: one read at a time.
    reading: Arc<tokio::sync::Mutex<()>>,
}

/// The copy held and when it was read.
type Held = Option<(Instant, Arc<MemberIndex>)>;

/// Reads the directory from the upstream.
struct Reader {
    upstream: Upstream,
}

impl MemberDirectory {
    pub fn new(upstream: Upstream, refresh: Duration) -> MemberDirectory {
        MemberDirectory {
            reader: Arc::new(Reader { upstream }),
            refresh,
            current: Arc::default(),
            reading: Arc::default(),
        }
    }

    /// The directory. The first call reads it (concurrent callers wait for
    /// that one read); once it is older than the refresh period, callers
    /// get the copy they have while one read in the background replaces it
    /// (a failed refresh keeps the old copy and is tried again on the next
    /// call).
    pub async fn get(&self) -> Result<Arc<MemberIndex>, GatewayError> {
        if let Some((at, index)) = self.snapshot() {
            if at.elapsed() >= self.refresh
                && let Ok(guard) = self.reading.clone().try_lock_owned()
            {
                let (reader, current) = (self.reader.clone(), self.current.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    match reader.read().await {
                        Ok(fresh) => {
                            *current.write().unwrap_or_else(|e| e.into_inner()) =
                                Some((Instant::now(), fresh))
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, detail = ?e.detail, "member directory refresh failed; the previous copy stays")
                        }
                    }
                });
            }
            return Ok(index);
        }
        let _guard = self.reading.lock().await;
        // Another caller may have read it while this one waited.
        if let Some((_, index)) = self.snapshot() {
            return Ok(index);
        }
        let index = self.reader.read().await?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), index.clone()));
        Ok(index)
    }

    fn snapshot(&self) -> Option<(Instant, Arc<MemberIndex>)> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Reader {
    async fn read(&self) -> Result<Arc<MemberIndex>, GatewayError> {
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
        Ok(Arc::new(index))
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
