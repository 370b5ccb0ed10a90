//! One plugin instance's world: the store data (WASI context without
//! ambient authority, resource limits, deadline bookkeeping) and the
//! translation of whatever went wrong into a [`PluginError`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{DirPerms, FilePerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::engine::TICK;
use super::{CandidateSource, PluginError, PluginSpec};

/// Bytes of a plugin's stdout/stderr kept (for logs and `plugin test`).
const OUTPUT_CAP: usize = 8 * 1024;
/// Table elements an instance may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Memory and table caps; remembers that a cap was hit so the failure is
/// reported as what it is.
pub struct Limits {
    memory_bytes: usize,
    pub memory_exceeded: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> anyhow::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_exceeded = true;
            anyhow::bail!("memory limit exceeded");
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: anyhow::Error) -> anyhow::Result<()> {
        // A grow refused below our cap (the pool slot is full): same thing.
        self.memory_exceeded = true;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> anyhow::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            anyhow::bail!("table limit exceeded");
        }
        Ok(true)
    }
}

/// What a matcher instance offered and asked during one call.
#[derive(Default)]
pub struct MatchCall {
    pub source: Option<Arc<dyn CandidateSource>>,
    /// Candidates handed to the plugin, by id.
    pub offered: HashMap<String, super::OfferedCandidate>,
    pub queries: u32,
    /// The first failure of the candidate source; the call fails closed.
    pub host_error: Option<String>,
    pub max_candidates: usize,
}

pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: Limits,
    pub call: MatchCall,
    /// When the current export call started (wall clock, and the calling
    /// thread's CPU clock), and how much CPU went to host functions (not
    /// counted against the deadline).
    pub call_started: Instant,
    pub cpu_started: Duration,
    pub host_time: Duration,
    pub timeout: Duration,
    pub timed_out: bool,
    stdout: MemoryOutputPipe,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// A clock frozen at the Unix epoch: what a plugin without the `clock`
/// grant sees.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// A fresh store for one instance of `spec`'s plugin.
pub fn new_store(engine: &wasmtime::Engine, spec: &PluginSpec) -> Result<Store<HostState>, PluginError> {
    let stdout = MemoryOutputPipe::new(OUTPUT_CAP);
    let mut wasi = WasiCtxBuilder::new();
    wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
    wasi.stdout(stdout.clone()).stderr(stdout.clone());
    if !spec.config.clock {
        wasi.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
    }
    for (key, value) in &spec.config.env {
        wasi.env(key, value);
    }
    for dir in &spec.config.read_dirs {
        let guest = dir.to_string_lossy().into_owned();
        wasi.preopened_dir(dir, guest, DirPerms::READ, FilePerms::READ)
            .map_err(|e| spec.error_load(format!("read_dirs {}: {e}", dir.display())))?;
    }
    let state = HostState {
        wasi: wasi.build(),
        table: ResourceTable::new(),
        limits: Limits { memory_bytes: (spec.config.memory_mb << 20) as usize, memory_exceeded: false },
        call: MatchCall { max_candidates: spec.config.max_candidates, ..MatchCall::default() },
        call_started: Instant::now(),
        cpu_started: Duration::ZERO,
        host_time: Duration::ZERO,
        timeout: Duration::from_millis(spec.config.timeout_ms),
        timed_out: false,
        stdout,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    // The deadline counts the plugin's own CPU time: a call runs on one
    // thread, so that thread's CPU clock, less what host calls used, is what
    // the plugin spent. When the epoch deadline (wall time, never shorter
    // than the CPU time) fires, the CPU clock decides: past the budget,
    // trap; otherwise wait out the rest. A machine busy with other work
    // thus never times out an innocent plugin. A call that has neither used
    // its CPU budget nor finished after WALL_BACKSTOP times the timeout is
    // stopped anyway.
    store.epoch_deadline_callback(|mut ctx| {
        let s = ctx.data_mut();
        let used = thread_cpu_time().saturating_sub(s.cpu_started).saturating_sub(s.host_time);
        if used >= s.timeout || s.call_started.elapsed() >= s.timeout * WALL_BACKSTOP {
            s.timed_out = true;
            return Ok(UpdateDeadline::Interrupt);
        }
        Ok(UpdateDeadline::Continue(ticks(s.timeout - used)))
    });
    Ok(store)
}

/// A call's wall time may reach this many times its CPU budget.
const WALL_BACKSTOP: u32 = 20;

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`; a vDSO
/// call, cheap enough for every plugin call).
#[allow(unsafe_code)]
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant
    // every Linux kernel fhirwall runs on supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Ticks covering `d`, at least one.
pub fn ticks(d: Duration) -> u64 {
    (d.as_micros() / TICK.as_micros()).max(1) as u64 + 1
}

/// Arm the deadline for one export call.
pub fn start_call(store: &mut Store<HostState>) {
    let timeout = store.data().timeout;
    let s = store.data_mut();
    s.call_started = Instant::now();
    s.cpu_started = thread_cpu_time();
    s.host_time = Duration::ZERO;
    s.timed_out = false;
    store.set_epoch_deadline(ticks(timeout));
}

/// What a plugin printed (capped), for logs.
pub fn output(store: &Store<HostState>) -> String {
    String::from_utf8_lossy(&store.data().stdout.contents()).into_owned()
}

/// Classify a failed call.
pub fn classify(spec: &PluginSpec, store: &Store<HostState>, err: anyhow::Error) -> PluginError {
    let state = store.data();
    let name = spec.config.name.clone();
    if state.timed_out || err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return PluginError::Timeout { plugin: name, ms: spec.config.timeout_ms };
    }
    if state.limits.memory_exceeded {
        return PluginError::Memory { plugin: name, mb: spec.config.memory_mb };
    }
    let printed = output(store);
    let mut message = format!("{err:#}");
    if !printed.is_empty() {
        message.push_str("; plugin output: ");
        message.push_str(printed.trim());
    }
    PluginError::Trap { plugin: name, message }
}
