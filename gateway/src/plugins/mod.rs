//! The WebAssembly plugin host (DESIGN.md "WebAssembly plugins"; the ABI
//! is `wit/plugin.wit`, package `fhirwall:plugin@0.1.0`).
//!
//! - `bindings`: the one `bindgen!` place (both worlds).
//! - `engine`: the wasmtime engine (cranelift, pooling allocator, epoch
//!   interruption with a ticker thread) and the compile cache.
//! - `sandbox`: one instance's store: WASI with no ambient authority
//!   (no preopened directories, empty environment, sockets refused, a clock
//!   frozen at the epoch unless granted), a memory cap, the deadline.
//! - `matcher`: calling a `matcher` plugin with a candidate source.
//! - `policy`: calling `policy` plugins for a request (on-request,
//!   on-resource) and applying verdicts to a response body.
//! - `index`: the in-memory member index `fhirwall match` answers
//!   `candidates` from.
//!
//! Lifecycle: every `[[plugins]]` entry is compiled once at load (or taken
//! from the compile cache) and pre-instantiated (`InstancePre`: imports
//! resolved, type-checked); every request gets a fresh instance from the
//! pool, so nothing survives between requests or callers. A reload (admin
//! call or a changed file) builds a complete new set and swaps it in
//! atomically; requests already running finish on the set they started
//! with; if anything fails to load, the old set stays and the error says why.
//!
//! Failure is never silent: a trap, a timeout, exhausting memory, output
//! that does not fit the contract, or a full pool fails the request closed
//! with an OperationOutcome (audited by the pipeline), and the next request
//! gets a fresh instance.

mod bindings;
pub mod engine;
pub mod index;
pub mod matcher;
pub mod policy;
mod sandbox;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::config::{PluginConfig, PluginWorld};
use crate::error::{GatewayError, Kind};

pub use matcher::{MatchAnswer, MatchOutcome, MatcherPlugin};
pub use policy::{PolicyContext, PolicyPlugin, PolicyRun};

/// What can go wrong with a plugin.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {plugin}: cannot load: {message}")]
    Load { plugin: String, message: String },
    #[error("plugin {plugin}: exceeded its {ms} ms deadline")]
    Timeout { plugin: String, ms: u64 },
    #[error("plugin {plugin}: exceeded its {mb} MiB memory limit")]
    Memory { plugin: String, mb: u64 },
    #[error("plugin {plugin}: trapped: {message}")]
    Trap { plugin: String, message: String },
    #[error("plugin {plugin}: output outside the contract: {message}")]
    Malformed { plugin: String, message: String },
    #[error("plugin {plugin}: the host could not answer its query: {message}")]
    Host { plugin: String, message: String },
    #[error("plugin {plugin}: no free instance slot")]
    Busy { plugin: String },
}

impl PluginError {
    pub fn plugin(&self) -> &str {
        match self {
            PluginError::Load { plugin, .. }
            | PluginError::Timeout { plugin, .. }
            | PluginError::Memory { plugin, .. }
            | PluginError::Trap { plugin, .. }
            | PluginError::Malformed { plugin, .. }
            | PluginError::Host { plugin, .. }
            | PluginError::Busy { plugin } => plugin,
        }
    }

    /// The request fails closed. The caller learns only that it could not
    /// be completed safely; the log and the audit record say why.
    pub fn to_gateway_error(&self) -> GatewayError {
        match self {
            PluginError::Host { .. } => {
                GatewayError::bad_gateway("the upstream FHIR server could not be searched")
                    .with_detail(self.to_string())
            }
            PluginError::Timeout { .. } | PluginError::Busy { .. } => GatewayError::of(
                Kind::PolicyBusy,
                "the request could not be completed safely in time; try again later",
            )
            .with_detail(self.to_string()),
            _ => GatewayError::policy_failure(self.to_string()),
        }
    }
}

impl From<PluginError> for GatewayError {
    fn from(e: PluginError) -> Self {
        e.to_gateway_error()
    }
}

/// A member as a matcher's `candidates` query returns it.
#[derive(Debug, Clone)]
pub struct OfferedCandidate {
    pub id: String,
    pub patient: String,
    pub coverages: Vec<String>,
}

/// A `candidates` query (see `wit/plugin.wit`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CandidateQuery {
    pub identifier: Option<String>,
    pub birth_date: Option<String>,
    pub family: Option<String>,
    pub given: Option<String>,
}

/// Where a matcher's candidates come from: the upstream (live operation) or
/// a member index (`fhirwall match`). Called from a blocking thread.
pub trait CandidateSource: Send + Sync {
    /// Covered members satisfying every given field, at most `limit`; the
    /// bool says more matched.
    fn candidates(
        &self,
        query: &CandidateQuery,
        limit: usize,
    ) -> Result<(Vec<OfferedCandidate>, bool), String>;
}

/// One configured plugin's settings and identity.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    pub config: PluginConfig,
    /// SHA-256 of the loaded wasm.
    pub digest: String,
    /// Modification time of the file when it was loaded.
    pub modified: Option<SystemTime>,
}

impl PluginSpec {
    fn error_load(&self, message: impl Into<String>) -> PluginError {
        PluginError::Load { plugin: self.config.name.clone(), message: message.into() }
    }
}

/// The engine every plugin runs on, plus the instance budget.
pub struct Host {
    engine: wasmtime::Engine,
    cache_dir: Option<PathBuf>,
    /// Instances alive at once never exceed the pool; callers wait here.
    permits: Arc<tokio::sync::Semaphore>,
}

impl Host {
    pub fn new(max_memory_mb: u64, cache_dir: Option<PathBuf>) -> anyhow::Result<Host> {
        let engine = engine::engine(max_memory_mb)?;
        engine::start_ticker(&engine);
        Ok(Host {
            engine,
            cache_dir,
            permits: Arc::new(tokio::sync::Semaphore::new(engine::MAX_INSTANCES as usize)),
        })
    }

    /// A host that runs nothing (no `[[plugins]]`): no pool, no ticker.
    fn idle() -> anyhow::Result<Host> {
        let engine = wasmtime::Engine::default();
        let cache_dir = None;
        Ok(Host {
            engine,
            cache_dir,
            permits: Arc::new(tokio::sync::Semaphore::new(engine::MAX_INSTANCES as usize)),
        })
    }

    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// Wait for an instance slot (bounded: a full pool is a 503, not a hang).
    pub async fn permit(&self, plugin: &str) -> Result<tokio::sync::OwnedSemaphorePermit, PluginError> {
        match tokio::time::timeout(Duration::from_secs(5), self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(PluginError::Busy { plugin: plugin.to_owned() }),
        }
    }

    /// A slot without waiting (the offline tools run one call per thread).
    pub fn try_permit(&self, plugin: &str) -> Result<tokio::sync::OwnedSemaphorePermit, PluginError> {
        self.permits.clone().try_acquire_owned().map_err(|_| PluginError::Busy { plugin: plugin.to_owned() })
    }

    /// Read, compile (or load from the cache) and type-check one plugin.
    pub fn load(&self, config: &PluginConfig) -> Result<Loaded, PluginError> {
        let fail = |message: String| PluginError::Load { plugin: config.name.clone(), message };
        let modified = std::fs::metadata(&config.path).and_then(|m| m.modified()).ok();
        let wasm =
            std::fs::read(&config.path).map_err(|e| fail(format!("{}: {e}", config.path.display())))?;
        if !wasm.starts_with(b"\0asm") || wasm.get(6..8) != Some(&[1, 0]) {
            return Err(fail(format!("{} is not a WebAssembly component", config.path.display())));
        }
        let spec = PluginSpec { config: config.clone(), digest: engine::digest(&wasm), modified };
        let started = std::time::Instant::now();
        let (component, cached) = engine::compile(&self.engine, &wasm, self.cache_dir.as_deref())
            .map_err(|e| fail(format!("does not compile: {e:#}")))?;
        let loaded = match config.world {
            PluginWorld::Matcher => Loaded::Matcher(Arc::new(MatcherPlugin::new(self, spec, &component)?)),
            PluginWorld::Policy => Loaded::Policy(Arc::new(PolicyPlugin::new(self, spec, &component)?)),
        };
        tracing::info!(
            plugin = %config.name,
            world = ?config.world,
            digest = %&loaded.spec().digest[..16],
            cached,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "plugin loaded"
        );
        Ok(loaded)
    }
}

/// A loaded plugin of either world.
pub enum Loaded {
    Matcher(Arc<MatcherPlugin>),
    Policy(Arc<PolicyPlugin>),
}

impl Loaded {
    pub fn spec(&self) -> &PluginSpec {
        match self {
            Loaded::Matcher(m) => &m.spec,
            Loaded::Policy(p) => &p.spec,
        }
    }
}

/// The plugins in force: one matcher at most, policies in config order.
#[derive(Default)]
pub struct PluginSet {
    pub matcher: Option<Arc<MatcherPlugin>>,
    pub policies: Vec<Arc<PolicyPlugin>>,
    /// Counts loads; 1 for the set loaded at startup.
    pub generation: u64,
}

/// The registry: the current set, swapped atomically on reload.
pub struct Plugins {
    host: Arc<Host>,
    configs: Vec<PluginConfig>,
    current: ArcSwap<PluginSet>,
    generation: AtomicU64,
    reload_lock: tokio::sync::Mutex<()>,
}

/// What a reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    pub generation: u64,
    pub plugins: Vec<ReloadedPlugin>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadedPlugin {
    pub name: String,
    pub world: String,
    pub sha256: String,
}

impl Plugins {
    /// Load every configured plugin (blocking: compiles). Any failure is a
    /// startup error: a gateway never runs with a plugin silently missing.
    pub fn load(configs: &[PluginConfig], cache_dir: Option<PathBuf>) -> Result<Plugins, PluginError> {
        let max_memory = configs.iter().map(|c| c.memory_mb).max().unwrap_or(64);
        let host = Host::new(max_memory, cache_dir)
            .map_err(|e| PluginError::Load { plugin: "(engine)".into(), message: format!("{e:#}") })?;
        let host = Arc::new(host);
        let set = build_set(&host, configs, 1)?;
        Ok(Plugins {
            host,
            configs: configs.to_vec(),
            current: ArcSwap::from_pointee(set),
            generation: AtomicU64::new(1),
            reload_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// No plugins configured.
    pub fn none() -> anyhow::Result<Plugins> {
        Ok(Plugins {
            host: Arc::new(Host::idle()?),
            configs: Vec::new(),
            current: ArcSwap::from_pointee(PluginSet::default()),
            generation: AtomicU64::new(0),
            reload_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// The set in force now. Hold the `Arc` for the whole request: a reload
    /// meanwhile does not change what this request runs.
    pub fn current(&self) -> Arc<PluginSet> {
        self.current.load_full()
    }

    pub fn is_empty(&self) -> bool {
        self.configs.is_empty()
    }

    /// Reload every configured plugin from its file; swap only if all load.
    pub async fn reload(&self) -> Result<ReloadReport, PluginError> {
        let _guard = self.reload_lock.lock().await;
        let host = self.host.clone();
        let configs = self.configs.clone();
        let generation = self.generation.load(Ordering::SeqCst) + 1;
        let set = tokio::task::spawn_blocking(move || build_set(&host, &configs, generation))
            .await
            .map_err(|e| PluginError::Load { plugin: "(reload)".into(), message: e.to_string() })??;
        let report = report(&set);
        self.current.store(Arc::new(set));
        self.generation.store(generation, Ordering::SeqCst);
        tracing::info!(generation, "plugins reloaded");
        Ok(report)
    }

    /// Does any plugin file differ from what is loaded (mtime or content)?
    fn changed_on_disk(&self) -> bool {
        let set = self.current();
        let specs = set.matcher.iter().map(|m| &m.spec).chain(set.policies.iter().map(|p| &p.spec));
        specs.into_iter().any(|spec| {
            let modified = std::fs::metadata(&spec.config.path).and_then(|m| m.modified()).ok();
            modified != spec.modified
                && std::fs::read(&spec.config.path).is_ok_and(|wasm| engine::digest(&wasm) != spec.digest)
        })
    }

    /// Watch the plugin files and reload when one changes (polling once a
    /// second: works on every filesystem, and a half-written file simply
    /// fails to load and is retried on the next change).
    pub fn spawn_watcher(self: &Arc<Self>) {
        if self.configs.is_empty() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failed_digest: Option<String> = None;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(plugins) = weak.upgrade() else { return };
                if !plugins.changed_on_disk() {
                    continue;
                }
                let fingerprint = plugins.disk_fingerprint();
                if failed_digest.as_deref() == Some(fingerprint.as_str()) {
                    continue;
                }
                match plugins.reload().await {
                    Ok(report) => {
                        failed_digest = None;
                        tracing::info!(generation = report.generation, "plugins: file change picked up");
                    }
                    Err(e) => {
                        failed_digest = Some(fingerprint);
                        tracing::error!(error = %e, "plugins: changed file does not load; the previous version stays");
                    }
                }
            }
        });
    }

    fn disk_fingerprint(&self) -> String {
        self.configs
            .iter()
            .map(|c| std::fs::read(&c.path).map(|w| engine::digest(&w)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn build_set(host: &Host, configs: &[PluginConfig], generation: u64) -> Result<PluginSet, PluginError> {
    let mut set = PluginSet { generation, ..PluginSet::default() };
    for config in configs {
        match host.load(config)? {
            Loaded::Matcher(m) => set.matcher = Some(m),
            Loaded::Policy(p) => set.policies.push(p),
        }
    }
    Ok(set)
}

fn report(set: &PluginSet) -> ReloadReport {
    let mut plugins = Vec::new();
    for spec in set.matcher.iter().map(|m| &m.spec).chain(set.policies.iter().map(|p| &p.spec)) {
        plugins.push(ReloadedPlugin {
            name: spec.config.name.clone(),
            world: format!("{:?}", spec.config.world).to_ascii_lowercase(),
            sha256: spec.digest.clone(),
        });
    }
    ReloadReport { generation: set.generation, plugins }
}

/// Where compiled plugins are cached: `plugin-cache/` beside a SQLite state
/// database, else `fhirwall-plugin-cache/` in the system temp directory.
pub fn cache_dir(state_url: &str) -> PathBuf {
    if let Some(rest) = state_url.strip_prefix("sqlite://") {
        let file = rest.split('?').next().unwrap_or("");
        if !file.is_empty()
            && file != ":memory:"
            && let Some(parent) = Path::new(file).parent()
        {
            return parent.join("plugin-cache");
        }
    }
    std::env::temp_dir().join("fhirwall-plugin-cache")
}
