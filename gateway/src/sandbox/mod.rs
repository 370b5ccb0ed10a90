//! The built-in sandbox: a small, honest, in-memory FHIR R4 server used as
//! the upstream of `fhirwall demo`, `fhirwall sandbox` and the tests. It is
//! not the product and it does no access control: it answers like a plain
//! FHIR server with the synthetic payer dataset (examples/dataset/).
//!
//! # Data
//! [`Sandbox::builtin`] loads `examples/dataset/payer.ndjson`, embedded in
//! the binary; [`Sandbox::from_ndjson`] / [`Sandbox::from_path`] load any
//! NDJSON (one resource per line; a Bundle line contributes its entries),
//! and [`Sandbox::merge_ndjson`] adds resources, versions, or replaces
//! them. Resource bodies are kept as JSON text and served byte for byte. A
//! resource without `meta.versionId` gets `"1"`, one without
//! `meta.lastUpdated` gets the load time.
//!
//! # Versions
//! A loaded resource (a line or a Bundle-line entry, in any
//! `from_ndjson` / `merge_ndjson` call) whose `Type/id` is already stored:
//! - with the same `meta.versionId` replaces that version (as before);
//! - with another `meta.versionId` is kept as a further version. The
//!   current version is the highest versionId: two versionIds that both
//!   parse as `u64` (and differ in value) compare numerically, otherwise
//!   the later-loaded one wins. A loaded version that does not supersede
//!   the current one is filed among the older ones, before the first one it
//!   supersedes by the same rule (so with numeric versionIds the history
//!   order is simply highest first).
//!
//! Only current versions exist for search, `_include`, `_revinclude`,
//! read, the indexes, [`Sandbox::len`], [`Sandbox::count`],
//! [`Sandbox::resource_json`] and [`Sandbox::resources`]: a superseded
//! version's references and other search values are not indexed (a search
//! by an old version's subject does not find the resource). Superseded
//! versions are served by vread and history only, and listed by
//! [`Sandbox::versions`].
//!
//! # HTTP API (base path `/fhir`; responses `application/fhir+json`)
//! - `GET /fhir/metadata`: a CapabilityStatement listing the types, search
//!   parameters, `_include` and `_revinclude` values supported.
//! - `GET /fhir/{Type}/{id}` (read of the current version, with
//!   `ETag: W/"{versionId}"`).
//! - `GET /fhir/{Type}/{id}/_history/{vid}` (vread): any kept version,
//!   byte for byte, with `ETag: W/"{vid}"`; an unknown vid is a 404
//!   OperationOutcome.
//! - `GET /fhir/{Type}/{id}/_history`: a `history` Bundle of every kept
//!   version, newest first (the order above), `total` = number of versions.
//!   Each entry: `fullUrl` (`{base}/{Type}/{id}`), `resource` (the
//!   version's bytes), `request` `{method: "PUT", url: "{Type}/{id}"}`,
//!   `response` `{status: "200 OK", etag: "W/\"{vid}\"", lastModified:
//!   the version's meta.lastUpdated}`. Paged like searches: `_count`
//!   (default 20, capped at 500) and `_offset`, with `self`/`first`/
//!   `previous`/`next`/`last` links; other parameters (`_since`, `_at`)
//!   are ignored. Type-level history: 400 not-supported.
//! - Search: `GET /fhir/{Type}?...` and `POST /fhir/{Type}/_search` (form
//!   body, merged with the query). Parameters per type are in `params.rs`,
//!   among them `_id` (comma lists), `patient`, `subject`, `beneficiary`,
//!   `Group?managing-entity=` and PDex's `managingEntity`, `member`, `use`,
//!   `type`, `identifier`, `_lastUpdated` and other dates with
//!   `eq|ne|gt|lt|ge|le|sa|eb` prefixes, strings (starts-with, `:exact`,
//!   `:contains`), tokens (`system|code`, `:not`), `:missing`. Reference
//!   values may be `Patient/x`, `x` or an absolute URL ending in
//!   `/Patient/x`; references compare exactly (`Patient/12` is not
//!   `Patient/123`). Comma = OR, a repeated parameter = AND.
//! - Results: a `searchset` Bundle with `total`, absolute `fullUrl`s on the
//!   sandbox's own base, `search.mode` `match`/`include`, and `link`s
//!   `self`/`first`/`previous`/`next`/`last` addressed by `_count`
//!   (default 20, capped at 500) and `_offset`. `_include` /
//!   `_include:iterate` (`Type:param[:Target]` or `Type:*`), `_revinclude`
//!   (e.g. `ExplanationOfBenefit:patient`, `Provenance:target`), `_sort`
//!   (`_id`, `_lastUpdated`, date parameters, `-` for descending).
//! - Unknown search parameters or modifiers: 400 OperationOutcome, like a
//!   strict server; with `Prefer: handling=lenient` they are ignored.
//!   Unknown resource: 404. Writes (POST create, PUT, PATCH, DELETE,
//!   batch/transaction): 405. Operations (`$...`) and compartment searches
//!   (`Patient/x/Observation`): 400 not-supported. XML (`Accept` or
//!   `_format`): 406.
//!
//! # Test hooks (only with [`Sandbox::with_faults`]`(true)`; off by default)
//! - `X-Sandbox-Delay-Ms: N`: answer after N ms (at most 600000), for
//!   deadline (504) tests.
//! - `X-Sandbox-Fault: truncate`: the normal status and headers with the
//!   JSON body cut in half (a complete HTTP message holding broken JSON).
//! - `X-Sandbox-Fault: not-json`: 200, `Content-Type: application/fhir+json`,
//!   an HTML body.
//! - `X-Sandbox-Fault: close`: the connection is dropped without a response.
//! - `X-Sandbox-Fault: abort`: headers with the full `Content-Length`, half
//!   the body, then the connection drops.
//! - `X-Sandbox-Fault: error`: 500 with an OperationOutcome.
//!
//! An unknown fault name is answered 400, so typos in tests show. With
//! faults off both headers are ignored.
//!
//! For tests that cannot set request headers (requests that go through the
//! gateway), a fault can be armed instead: in process with
//! [`Sandbox::arm`]`(`[`FaultPlan`]`)`, or, on a faults-enabled sandbox
//! (`fhirwall sandbox --faults`), over HTTP outside the FHIR base:
//! `POST /_sandbox/fault?fault=truncate&delay_ms=0&path=/ExplanationOfBenefit&times=1`
//! (every parameter optional; `path` is a substring of the request's path
//! and query, `times` defaults to "until disarmed"), and
//! `DELETE /_sandbox/fault` to disarm. Without faults enabled that
//! endpoint does not exist (404).
//!
//! # Noise (only with [`Sandbox::with_noise`]`(true)`, `fhirwall sandbox --noise`; off by default)
//! Every Bundle served (searchset and history) carries extra non-resource
//! members a real server might send, each holding the text
//! [`NOISE_MARKER`] (`NOISE-SECRET`), so a test can assert that none of it
//! passes a gateway:
//! - Bundle: `meta.tag` (marker as display), `extension` (a
//!   `valueString`), `identifier` (system and value), `timestamp` with a
//!   `_timestamp` primitive extension, `signature` (type coding, `when`,
//!   `who.display`, `data` = base64 of the marker), an R5-style `issues`
//!   OperationOutcome (diagnostics), and two extra `link`s after the
//!   normal ones: `alternate` and a second `last`, both with the marker in
//!   their URL.
//! - Every entry: `link` `[{relation: "alternate"}]` (marker in the URL),
//!   `search.score` 1 and `search.extension` (a `valueString`; searchset
//!   entries keep their `search.mode`). Searchset entries get
//!   `response {status: "200 OK", outcome}`, history entries an `outcome`
//!   inside their existing `response`; each outcome is an
//!   OperationOutcome whose diagnostics hold the marker.
//!
//! Resources are unchanged byte for byte; with noise off the Bundles have
//! none of these members. [`Sandbox::set_noise`] switches it while
//! serving.
//!
//! Searches are served from indexes (by type, by `Type/id`, by reference
//! per search parameter), so patient-scoped searches, `_include` and
//! `_revinclude` are map lookups followed by filtering of the few hits.

mod http;
mod params;
mod search;
mod store;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use store::Store;

/// The synthetic payer dataset, one FHIR R4 resource per line.
pub const BUILTIN_NDJSON: &str = include_str!("../../../examples/dataset/payer.ndjson");

/// The text every noise member holds (see the module docs, "Noise").
pub const NOISE_MARKER: &str = "NOISE-SECRET";

/// Request header that delays the answer (only with faults enabled).
pub const DELAY_HEADER: &str = http::DELAY_HEADER;
/// Request header that selects an injected fault (only with faults enabled).
pub const FAULT_HEADER: &str = http::FAULT_HEADER;

/// A fault the sandbox can inject (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The normal status and headers, the JSON body cut in half.
    Truncate,
    /// 200, `Content-Type: application/fhir+json`, an HTML body.
    NotJson,
    /// The connection is dropped without a response.
    Close,
    /// The full `Content-Length`, half the body, then the connection drops.
    Abort,
    /// 500 with an OperationOutcome.
    Error,
}

impl Fault {
    const NAMES: &'static str = "truncate|not-json|close|abort|error";

    /// Parse a fault name as used in `X-Sandbox-Fault`.
    pub fn parse(name: &str) -> Option<Fault> {
        match name.trim().to_ascii_lowercase().as_str() {
            "truncate" => Some(Fault::Truncate),
            "not-json" => Some(Fault::NotJson),
            "close" => Some(Fault::Close),
            "abort" => Some(Fault::Abort),
            "error" | "500" => Some(Fault::Error),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Fault::Truncate => "truncate",
            Fault::NotJson => "not-json",
            Fault::Close => "close",
            Fault::Abort => "abort",
            Fault::Error => "error",
        }
    }
}

/// A fault armed for the next matching requests, for tests that cannot set
/// request headers (e.g. through the gateway). See [`Sandbox::arm`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    pub fault: Option<Fault>,
    /// Delay before answering, in milliseconds (0: none).
    pub delay_ms: u64,
    /// Only requests whose path and query contain this string.
    pub path_contains: Option<String>,
    /// How many matching requests get the plan; None: until disarmed.
    pub times: Option<u64>,
}

/// The sandbox's data: resources indexed for read and search.
pub struct Sandbox {
    store: Store,
    faults: AtomicBool,
    noise: AtomicBool,
    armed_flag: AtomicBool,
    armed: Mutex<Option<FaultPlan>>,
}

impl Sandbox {
    /// Load resources from NDJSON text (see the module docs).
    pub fn from_ndjson(text: &str) -> anyhow::Result<Sandbox> {
        Sandbox::empty().merge_ndjson(text)
    }

    /// Load an NDJSON file.
    pub fn from_path(path: impl AsRef<Path>) -> anyhow::Result<Sandbox> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Sandbox::from_ndjson(&text).with_context(|| format!("loading {}", path.display()))
    }

    /// The embedded synthetic payer dataset.
    pub fn builtin() -> anyhow::Result<Sandbox> {
        Sandbox::from_ndjson(BUILTIN_NDJSON).context("the built-in dataset")
    }

    /// A sandbox without resources.
    pub fn empty() -> Sandbox {
        Sandbox {
            store: Store::default(),
            faults: AtomicBool::new(false),
            noise: AtomicBool::new(false),
            armed_flag: AtomicBool::new(false),
            armed: Mutex::new(None),
        }
    }

    /// Add resources from NDJSON; a resource with an existing `Type/id`
    /// replaces the stored version with its `meta.versionId`, or is kept
    /// as another version (see the module docs, "Versions").
    pub fn merge_ndjson(mut self, text: &str) -> anyhow::Result<Sandbox> {
        self.store.add_ndjson(text)?;
        self.store.reindex();
        Ok(self)
    }

    /// Honour the `X-Sandbox-Delay-Ms` and `X-Sandbox-Fault` test headers.
    pub fn with_faults(self, on: bool) -> Sandbox {
        self.set_faults(on);
        self
    }

    /// Turn the test headers on or off, also while serving.
    pub fn set_faults(&self, on: bool) {
        self.faults.store(on, Ordering::Relaxed);
    }

    pub fn faults_enabled(&self) -> bool {
        self.faults.load(Ordering::Relaxed)
    }

    /// Add non-resource noise carrying [`NOISE_MARKER`] to every Bundle
    /// served (see the module docs, "Noise").
    pub fn with_noise(self, on: bool) -> Sandbox {
        self.set_noise(on);
        self
    }

    /// Turn Bundle noise on or off, also while serving.
    pub fn set_noise(&self, on: bool) {
        self.noise.store(on, Ordering::Relaxed);
    }

    pub fn noise_enabled(&self) -> bool {
        self.noise.load(Ordering::Relaxed)
    }

    /// Arm a fault plan: the next matching requests (all, or `times` of
    /// them) are delayed and/or answered with the fault. Applies whether or
    /// not header faults are enabled (only code holding the sandbox, or the
    /// `/_sandbox/fault` endpoint of a faults-enabled sandbox, can arm).
    pub fn arm(&self, plan: FaultPlan) {
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        let active = plan.times != Some(0);
        *armed = active.then_some(plan);
        self.armed_flag.store(active, Ordering::Release);
    }

    /// Remove the armed fault plan.
    pub fn disarm(&self) {
        self.arm(FaultPlan { times: Some(0), ..FaultPlan::default() });
    }

    /// The armed plan's fault and delay for a request to `path_and_query`,
    /// counting it against `times`.
    fn take_armed(&self, path_and_query: &str) -> Option<(Option<Fault>, u64)> {
        if !self.armed_flag.load(Ordering::Acquire) {
            return None;
        }
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        let plan = armed.as_mut()?;
        if plan.path_contains.as_deref().is_some_and(|p| !path_and_query.contains(p)) {
            return None;
        }
        let hit = (plan.fault, plan.delay_ms);
        if let Some(n) = plan.times.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                *armed = None;
                self.armed_flag.store(false, Ordering::Release);
            }
        }
        Some(hit)
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.store.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.entries.is_empty()
    }

    /// Number of resources of one type.
    pub fn count(&self, resource_type: &str) -> usize {
        self.store.by_type.get(resource_type).map_or(0, Vec::len)
    }

    /// The stored JSON of `Type/id` (its current version), as served.
    pub fn resource_json(&self, resource_type: &str, id: &str) -> Option<&str> {
        self.store.get(resource_type, id).map(|e| &*e.json)
    }

    /// Every stored resource's JSON text (current versions), in load order
    /// of their first version (e.g. to feed the same data to another FHIR
    /// server).
    pub fn resources(&self) -> impl Iterator<Item = &str> {
        self.store.entries.iter().map(|e| &*e.json)
    }

    /// Every kept version of `Type/id` as `(versionId, JSON)`, newest first
    /// (the history order; the first is the current version). Empty for an
    /// unknown resource.
    pub fn versions(&self, resource_type: &str, id: &str) -> Vec<(&str, &str)> {
        self.store
            .get(resource_type, id)
            .map(|e| e.versions().map(|(vid, _, json)| (vid, json)).collect())
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("resources", &self.len())
            .field("faults", &self.faults_enabled())
            .field("noise", &self.noise_enabled())
            .finish_non_exhaustive()
    }
}

/// Serve on an already-bound listener until `shutdown` resolves. The FHIR
/// base path is `/fhir`; absolute URLs in responses use the listener's
/// address (an unspecified address as loopback).
pub async fn serve(
    listener: TcpListener,
    sandbox: Arc<Sandbox>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let base = http::base_for(listener.local_addr()?);
    http::serve_with_base(listener, sandbox, base, shutdown).await
}

/// Like [`serve`], with the public base URL (e.g. `http://sandbox:9000/fhir`)
/// used in `fullUrl`s and links given explicitly.
pub async fn serve_with_base(
    listener: TcpListener,
    sandbox: Arc<Sandbox>,
    base_url: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    http::serve_with_base(listener, sandbox, base_url.to_owned(), shutdown).await
}

/// Bind `addr` (port 0 for any free port), spawn the server on the current
/// tokio runtime and return its handle.
pub async fn start(addr: SocketAddr, sandbox: Arc<Sandbox>) -> anyhow::Result<SandboxHandle> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("sandbox: cannot bind {addr}"))?;
    let local = listener.local_addr()?;
    let base_url = http::base_for(local);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(http::serve_with_base(listener, sandbox, base_url.clone(), async move {
        // A send or a dropped sender both stop the server.
        let _ = rx.await;
    }));
    Ok(SandboxHandle { base_url, addr: local, stop: Some(tx), task: Some(task) })
}

/// A running sandbox started by [`start`]; stops on [`SandboxHandle::shutdown`]
/// or when dropped.
#[derive(Debug)]
pub struct SandboxHandle {
    base_url: String,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl SandboxHandle {
    /// `http://127.0.0.1:PORT/fhir`
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, let in-flight requests finish (a few seconds at
    /// most), and wait for the server task.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.context("sandbox task")?,
            None => Ok(()),
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
