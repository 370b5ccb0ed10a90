//! The wasmtime engine: cranelift, the pooling allocator (copy-on-write
//! memory images, slots reused across instances), epoch interruption driven
//! by one ticker thread, and a compile cache so a restart deserializes
//! instead of recompiling.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// One epoch tick. Deadlines are counted in ticks of this length.
pub const TICK: Duration = Duration::from_millis(2);
/// Plugin instances alive at once, gateway-wide (the pool's size).
pub const MAX_INSTANCES: u32 = 128;
/// Largest linear memory any plugin may configure.
pub const MAX_MEMORY_MB: u64 = 4096;

/// Bytes of each memory slot kept resident between instances: what a
/// small guest dirties per call (its stack, data and a heap). With the
/// kernel's `PAGEMAP_SCAN` only the pages written are zeroed again; without
/// it the whole span is, so it stays small there.
const KEEP_RESIDENT_SCANNED: usize = 8 << 20;
const KEEP_RESIDENT_UNSCANNED: usize = 1 << 20;
/// Slots released before their pages go back to the kernel in one call.
const DECOMMIT_BATCH: usize = 16;

/// Build the engine. `max_memory_mb` sizes the pool's memory slots (the
/// largest `memory_mb` configured); each store enforces its own plugin's cap.
pub fn engine(max_memory_mb: u64) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    let mut pool = PoolingAllocationConfig::default();
    let scanned = PoolingAllocationConfig::is_pagemap_scan_available();
    // One spare MiB over the largest cap: the store's limiter, not the
    // slot, is what refuses a plugin's growth (and says so).
    let slot = ((max_memory_mb.clamp(1, MAX_MEMORY_MB) + 1) << 20) as usize;
    pool.total_component_instances(MAX_INSTANCES)
        .total_core_instances(MAX_INSTANCES * 8)
        .total_memories(MAX_INSTANCES * 2)
        .total_tables(MAX_INSTANCES * 4)
        .max_core_instances_per_component(16)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .max_component_instance_size(1 << 20)
        .max_memory_size(slot)
        // A slot handed back is zeroed in place instead of returned to the
        // kernel: `madvise` on a multi-threaded process makes every core
        // flush its TLB, and the next instance faults the pages in again,
        // which cost more than a plugin's own work (measured: ~20 % of a
        // read's CPU with one policy plugin). Whatever still goes back goes
        // in batches.
        .pagemap_scan(if scanned { Enabled::Yes } else { Enabled::No })
        .linear_memory_keep_resident(if scanned { KEEP_RESIDENT_SCANNED } else { KEEP_RESIDENT_UNSCANNED })
        .table_keep_resident(64 << 10)
        .decommit_batch_size(DECOMMIT_BATCH);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // Reserve only what a plugin may use (plus a guard) per memory slot,
    // not wasmtime's 4 GiB default: 256 slots of 4 GiB would be 1 TiB of
    // address space. Bounds checks stay, and cost little here.
    config.memory_reservation(slot as u64);
    config.memory_guard_size(2 << 20);
    config.memory_reservation_for_growth(0);
    Engine::new(&config)
}

/// Start the thread that advances the engine's epoch every [`TICK`]; it
/// stops by itself once the engine is dropped.
pub fn start_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("fhirwall-plugin-epoch".into()).spawn(move || {
        loop {
            std::thread::sleep(TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        }
    });
    if let Err(e) = spawned {
        // Without a ticker no deadline would ever fire: refuse to run plugins.
        tracing::error!(error = %e, "plugins: cannot start the epoch ticker");
    }
}

/// Compile a component, or load it from the cache. The cache key is the
/// SHA-256 of the wasm bytes, the engine's compatibility hash (wasmtime
/// version and every codegen setting) and the cache format version, so a
/// changed plugin, a wasmtime upgrade or a different config never reuse a
/// stale artifact. A cache that cannot be read or written only costs a
/// compile.
pub fn compile(engine: &Engine, wasm: &[u8], cache_dir: Option<&Path>) -> anyhow::Result<(Component, bool)> {
    let Some(dir) = cache_dir else { return Ok((Component::new(engine, wasm)?, false)) };
    let path = cache_path(engine, wasm, dir);
    if path.is_file() {
        match deserialize(engine, &path) {
            Ok(component) => return Ok((component, true)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "plugins: cache entry unusable, recompiling")
            }
        }
    }
    let component = Component::new(engine, wasm)?;
    if let Err(e) = store_artifact(&component, dir, &path) {
        tracing::warn!(dir = %dir.display(), error = %e, "plugins: cannot write the compile cache");
    }
    Ok((component, false))
}

pub fn digest(wasm: &[u8]) -> String {
    hex::encode(Sha256::digest(wasm))
}

fn cache_path(engine: &Engine, wasm: &[u8], dir: &Path) -> PathBuf {
    let mut engine_hash = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut engine_hash);
    let mut key = Sha256::new();
    key.update(b"fhirwall-plugin-cache-v1\0");
    key.update(engine_hash.finish().to_le_bytes());
    key.update(Sha256::digest(wasm));
    dir.join(format!("{}.cwasm", hex::encode(&key.finalize()[..20])))
}

/// SAFETY: `Component::deserialize_file` trusts the file to be a wasmtime
/// artifact it produced. Only fhirwall writes this directory (atomically,
/// under a name derived from the source's hash and the engine's settings);
/// wasmtime itself checks the header (version, target, settings). The cache
/// directory must be as protected as the fhirwall binary.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> anyhow::Result<Component> {
    unsafe { Component::deserialize_file(engine, path) }
}

fn store_artifact(component: &Component, dir: &Path, path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize()?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, &bytes)?;
    tmp.persist(path)?;
    Ok(())
}
