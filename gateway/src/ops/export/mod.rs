//! Bulk export of a Group's visible members (`Group/{id}/$export`,
//! `Group/{id}/$davinci-data-export`), run by fhirwall itself against any
//! FHIR R4 server through the same response chain as on-demand reads.
//!
//! - `kickoff`: the kick-off's parameters, read and checked into one
//!   request before any job exists.
//! - `jobs`: jobs in the store, claimed by one node at a time under a lease
//!   and a fencing token, checkpointed, resumable after a crash.
//! - `runner`: the per-node task that claims jobs and runs them batch by
//!   batch through the gateway's chain ([`runner::ExportHost`]).
//! - `files`: segments in the object store (a directory, or S3).
//! - `manifest`: files, the manifest and the `error` file.
//! - `limiter`: the upstream request budget all jobs of a node share.
//! - `segments`: a job's output as it is written, every resource once.
//! - `records`: the audit records of a running export.
//!
//! This module answers the Bulk Data endpoints around a job: status
//! (`{base}/_export/{job}`: 202 + `X-Progress`, 429 when polled sooner than
//! `Retry-After`, 200 + manifest + `Expires`), cancel (`DELETE`: 202, then
//! 404 with every file gone) and downloads (`{base}/_export/{job}/files/{n}`,
//! streamed, gzip on request). Only the client that started a job sees it;
//! to anyone else it does not exist (404).

pub mod files;
pub mod jobs;
pub mod kickoff;
pub mod limiter;
pub mod manifest;
mod records;
pub mod runner;
mod segments;

use std::io::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{CONTENT_LOCATION, CONTENT_TYPE, EXPIRES, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::auth::{Delegation, Principal};
use crate::config::ExportConfig;
use crate::error::{GatewayError, Kind};
use crate::respond::{self, Body};
use crate::store::Store;
use files::Files;
use jobs::{Job, JobError, JobState, Jobs, NewJob};
use kickoff::ExportRequest;
use limiter::RateLimiter;

/// What a job stores of its kick-off: the checked request and who asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub request: ExportRequest,
    pub delegation: Delegation,
}

/// The export service of one node.
pub struct Exports {
    pub jobs: Jobs,
    pub files: Files,
    pub settings: ExportConfig,
    /// The upstream budget all jobs of this node share.
    pub limiter: Arc<RateLimiter>,
    pub public_base: String,
    /// Wakes this node's runner when a job is queued here.
    pub wake: tokio::sync::Notify,
}

/// A job id in a URL: 32 lowercase hex digits.
fn is_job_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Exports {
    pub async fn open(settings: &ExportConfig, store: Store, public_base: &str) -> anyhow::Result<Exports> {
        Ok(Exports {
            jobs: Jobs::open(store).await?,
            files: Files::open(settings)?,
            settings: settings.clone(),
            limiter: Arc::new(RateLimiter::per_second(settings.upstream_rps)),
            public_base: public_base.to_owned(),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// The status URL of a job (the kick-off's `Content-Location`).
    pub fn status_url(&self, job_id: &str) -> String {
        format!("{}/_export/{job_id}", self.public_base)
    }

    /// Queue a checked kick-off: 202 with `Content-Location`; 429 when the
    /// client has as many jobs queued or running as it may.
    pub async fn start(
        &self,
        who: &Principal,
        request: ExportRequest,
        kickoff_url: String,
    ) -> Result<(String, Response<Body>), GatewayError> {
        let group_id = request.group.clone();
        let spec = JobSpec { request, delegation: who.delegation() };
        let job = NewJob {
            client_id: who.client_id.clone(),
            organization: who.organization.clone(),
            group_id,
            request: serde_json::to_string(&spec).map_err(|e| GatewayError::internal(e.to_string()))?,
            kickoff_url,
            transaction_time: crate::clock::now_rfc3339(),
        };
        let now = crate::clock::unix_now_s();
        let id = match self.jobs.create(&job, self.settings.max_jobs_per_client, now).await {
            Ok(id) => id,
            Err(JobError::TooMany) => {
                return Err(GatewayError::of(
                    Kind::Throttled,
                    format!(
                        "this client already has {} export job(s) queued or running; wait for one to finish or cancel one",
                        self.settings.max_jobs_per_client
                    ),
                )
                .with_header(RETRY_AFTER, self.retry_after()));
            }
            Err(e) => return Err(unavailable(e)),
        };
        self.wake.notify_one();
        let mut response = respond::empty(StatusCode::ACCEPTED);
        let location = HeaderValue::from_str(&self.status_url(&id))
            .map_err(|_| GatewayError::internal("status URL is not a header value"))?;
        response.headers_mut().insert(CONTENT_LOCATION, location);
        Ok((id, response))
    }

    fn retry_after(&self) -> HeaderValue {
        HeaderValue::from(self.settings.retry_after_s)
    }

    /// The caller's own job, or 404 (another client's job does not exist
    /// for it, nor does an expired one).
    async fn own_job(&self, who: &Principal, job_id: &str) -> Result<Job, GatewayError> {
        let not_found = || GatewayError::not_found("no such export job");
        if !is_job_id(job_id) {
            return Err(not_found());
        }
        let job = self.jobs.get(job_id).await.map_err(unavailable)?.ok_or_else(not_found)?;
        let expired = job.expires_at.is_some_and(|at| at <= crate::clock::unix_now_s());
        if job.client_id != who.client_id || job.organization != who.organization || expired {
            return Err(not_found());
        }
        Ok(job)
    }

    /// `GET {base}/_export/{job}`.
    pub async fn status(&self, who: &Principal, job_id: &str) -> Result<Response<Body>, GatewayError> {
        let job = self.own_job(who, job_id).await?;
        match job.state {
            JobState::Done => {
                let stored: manifest::Stored = stored_manifest(&job)?;
                let body = serde_json::to_vec(&stored.manifest)
                    .map_err(|e| GatewayError::internal(e.to_string()))?;
                let mut response = respond::json(StatusCode::OK, body);
                if let Some(at) = job.expires_at
                    && let Ok(value) = HeaderValue::from_str(&crate::clock::http_date(at))
                {
                    response.headers_mut().insert(EXPIRES, value);
                }
                Ok(response)
            }
            JobState::Failed => Err(GatewayError::of(
                Kind::Internal,
                job.failure.unwrap_or_else(|| "the export failed".into()),
            )),
            JobState::Queued | JobState::Running => {
                let gap_ms = (self.settings.retry_after_s * 1000).saturating_sub(500) as i64;
                let now_ms = crate::clock::unix_now_ms();
                if !self.jobs.poll(&job.id, now_ms, gap_ms).await.map_err(unavailable)? {
                    return Err(GatewayError::of(
                        Kind::Throttled,
                        "status polled sooner than Retry-After; wait before asking again",
                    )
                    .with_header(RETRY_AFTER, self.retry_after()));
                }
                let mut response = respond::empty(StatusCode::ACCEPTED);
                let progress = match (job.plan.is_some(), job.state) {
                    (true, _) => format!("patients {}/{}", job.done_units, job.total_units),
                    (false, JobState::Queued) => "queued".to_owned(),
                    (false, _) => "planning".to_owned(),
                };
                let headers = response.headers_mut();
                headers.insert(RETRY_AFTER, self.retry_after());
                if let Ok(value) = HeaderValue::from_str(&progress) {
                    headers.insert(HeaderName::from_static("x-progress"), value);
                }
                Ok(response)
            }
        }
    }

    /// `DELETE {base}/_export/{job}`: the job and every file go.
    pub async fn cancel(&self, who: &Principal, job_id: &str) -> Result<Response<Body>, GatewayError> {
        let job = self.own_job(who, job_id).await?;
        // The row first: a runner still on the job finds its next write
        // refused, stops, and removes what it wrote after this.
        self.jobs.remove(&job.id).await.map_err(unavailable)?;
        self.files.delete_job(&job.id).await.map_err(|e| {
            GatewayError::of(Kind::Unavailable, "export storage unavailable").with_detail(e.to_string())
        })?;
        Ok(respond::empty(StatusCode::ACCEPTED))
    }

    /// `GET {base}/_export/{job}/files/{n}`: the file's segments back to
    /// back, streamed (gzip when the client accepts it).
    pub async fn download(
        &self,
        who: &Principal,
        job_id: &str,
        file: &str,
        gzip: bool,
    ) -> Result<Response<Body>, GatewayError> {
        let job = self.own_job(who, job_id).await?;
        let not_found = || GatewayError::not_found("no such export file");
        if job.state != JobState::Done {
            return Err(not_found());
        }
        let stored = stored_manifest(&job)?;
        let entry = file
            .parse::<usize>()
            .ok()
            .filter(|_| file.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| stored.files.get(n))
            .ok_or_else(not_found)?
            .clone();
        let files = self.files.clone();
        let chunks = futures_util::stream::iter(entry.segments)
            .then(move |key| {
                let files = files.clone();
                async move { files.stream(&key).await }
            })
            .flat_map(|opened| match opened {
                Ok(stream) => stream.boxed(),
                Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
            })
            .map(|chunk| chunk.map_err(std::io::Error::other));
        let body = if gzip { gzipped(chunks.boxed()) } else { chunks.boxed() };
        let frames = body.map(|chunk| chunk.map(http_body::Frame::data));
        let mut response = Response::new(respond::streamed(http_body_util::StreamBody::new(frames)));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/fhir+ndjson"));
        if gzip {
            headers.insert(http::header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        headers.insert(http::header::VARY, HeaderValue::from_static("accept-encoding"));
        Ok(response)
    }

    /// Remove jobs whose files expired, with their files.
    pub async fn sweep_expired(&self) {
        let now = crate::clock::unix_now_s();
        let expired = match self.jobs.expired(now).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "export: cannot list expired jobs");
                return;
            }
        };
        for id in expired {
            // Files first: a job row without files is harmless, files
            // without a row would never be found again.
            match self.files.delete_job(&id).await {
                Ok(n) => tracing::info!(job = %id, files = n, "export expired: files removed"),
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "export expired: files not removed");
                    continue;
                }
            }
            if let Err(e) = self.jobs.remove(&id).await {
                tracing::warn!(job = %id, error = %e, "export expired: job not removed");
            }
        }
    }
}

fn stored_manifest(job: &Job) -> Result<manifest::Stored, GatewayError> {
    let text =
        job.manifest.as_deref().ok_or_else(|| GatewayError::internal("a finished job has no manifest"))?;
    serde_json::from_str(text).map_err(|e| GatewayError::internal(format!("stored manifest: {e}")))
}

fn unavailable(e: JobError) -> GatewayError {
    GatewayError::of(Kind::Unavailable, "export jobs are unavailable; try again shortly")
        .with_detail(e.to_string())
}

type Chunks = futures_util::stream::BoxStream<'static, Result<Bytes, respond::StreamError>>;

/// Gzip a stream of chunks as it goes (one member; each chunk compressed
/// and flushed out as soon as it arrives, so nothing is held whole).
fn gzipped(chunks: Chunks) -> Chunks {
    let encoder = Some(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    futures_util::stream::unfold((chunks, encoder), |(mut chunks, mut encoder)| async move {
        let enc = encoder.as_mut()?;
        match chunks.next().await {
            Some(Ok(chunk)) => {
                if let Err(e) = enc.write_all(&chunk) {
                    return Some((Err(e), (chunks, None)));
                }
                let out = std::mem::take(enc.get_mut());
                Some((Ok(Bytes::from(out)), (chunks, encoder)))
            }
            Some(Err(e)) => Some((Err(e), (chunks, None))),
            None => {
                let enc = encoder.take()?;
                match enc.finish() {
                    Ok(tail) => Some((Ok(Bytes::from(tail)), (chunks, None))),
                    Err(e) => Some((Err(e), (chunks, None))),
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gzip_streams_decompress_to_the_input() {
        let parts: Vec<Result<Bytes, std::io::Error>> =
            vec![Ok(Bytes::from_static(b"{\"a\":1}\n")), Ok(Bytes::from_static(b"{\"b\":2}\n"))];
        let out: Vec<Bytes> =
            gzipped(futures_util::stream::iter(parts).boxed()).map(|c| c.unwrap()).collect().await;
        let all: Vec<u8> = out.concat();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&all[..]), &mut text).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"b\":2}\n");
    }

    #[test]
    fn job_ids_in_urls_are_32_hex_digits() {
        assert!(is_job_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_job_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_job_id("../etc"));
    }
}
