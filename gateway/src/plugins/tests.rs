//! Host tests against the built components in plugins/dist (built by
//! plugins/build.sh, which scripts/test.sh runs first). Skipped, loudly,
//! when the components are missing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::policy::{Decision, PolicyContext, PolicyRun, Verdict};
use super::{Host, Loaded, PluginError, PolicyPlugin};
use crate::config::{PluginConfig, PluginWorld};

fn dist(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist").join(format!("{name}.wasm"));
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("SKIPPED: {} not built (run plugins/build.sh)", path.display());
        None
    }
}

fn config(path: PathBuf, memory_mb: u64, timeout_ms: u64) -> PluginConfig {
    PluginConfig {
        name: "test".into(),
        world: PluginWorld::Policy,
        path,
        memory_mb,
        timeout_ms,
        env: Default::default(),
        clock: false,
        read_dirs: Vec::new(),
        max_candidates: 100,
    }
}

fn policy(host: &Host, name: &str, memory_mb: u64, timeout_ms: u64) -> Option<Arc<PolicyPlugin>> {
    match host.load(&config(dist(name)?, memory_mb, timeout_ms)).expect("loads") {
        Loaded::Policy(p) => Some(p),
        Loaded::Matcher(_) => panic!("not a policy plugin"),
    }
}

fn ctx(client: &str) -> PolicyContext {
    PolicyContext { client_id: client.into(), interaction: "read".into(), ..PolicyContext::default() }
}

const PATIENT: &str = r#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"1"},"text":{"status":"generated"},"gender":"female"}"#;

#[test]
fn hostile_calls_fail_with_the_right_error_and_the_next_call_is_fresh() {
    let host = Host::new(32, None).unwrap();
    // The 50 ms deadline is for the endless loop. The other failures must be
    // told apart from a timeout (allocating to the memory cap takes real CPU),
    // so they get a generous deadline.
    let Some(short) = policy(&host, "hostile_policy", 32, 50) else { return };
    let Some(plugin) = policy(&host, "hostile_policy", 32, 10_000) else { return };
    let on_resource = |client: &str| PolicyRun::new(&ctx(client), vec![plugin.clone()]).on_resource(PATIENT);
    let started = Instant::now();
    let looped = PolicyRun::new(&ctx("loop-x"), vec![short.clone()]).on_resource(PATIENT);
    assert!(matches!(looped, Err(PluginError::Timeout { ms: 50, .. })));
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "deadline not enforced: {:?}",
        started.elapsed()
    );
    let oom = on_resource("oom-x");
    assert!(matches!(oom, Err(PluginError::Memory { mb: 32, .. })), "{oom:?}");
    assert!(
        matches!(on_resource("recurse-x"), Err(PluginError::Trap { .. })),
        "{:?}",
        on_resource("recurse-x")
    );
    assert!(matches!(on_resource("trap-x"), Err(PluginError::Trap { .. })));
    assert!(matches!(on_resource("huge-x"), Err(PluginError::Memory { .. } | PluginError::Malformed { .. })));
    assert!(matches!(on_resource("garbage-x"), Err(PluginError::Malformed { .. })));
    assert!(matches!(on_resource("grow-x"), Ok(Verdict::Drop(_))));
    assert!(matches!(on_resource("drop-x"), Ok(Verdict::Drop(_))));
    match on_resource("replace-x") {
        Ok(Verdict::Replace(text)) => {
            assert_eq!(text, r#"{"gender":"female","id":"p1","resourceType":"Patient"}"#)
        }
        other => panic!("{other:?}"),
    }
    // Sandboxed: no files, no environment, a frozen clock, no state across instances.
    for client in ["fs-x", "env-x", "clock-x", "state-x", "state-x"] {
        let decision = PolicyRun::new(&ctx(client), vec![plugin.clone()]).on_request().unwrap();
        assert_eq!(decision, Decision::Allow, "{client}");
    }
    // After all that, a normal call works.
    assert_eq!(on_resource("grace-ehr").unwrap(), Verdict::Keep);
}

#[test]
fn granted_environment_reaches_the_plugin() {
    let host = Host::new(32, None).unwrap();
    let Some(path) = dist("hostile_policy") else { return };
    let mut cfg = config(path, 32, 100);
    cfg.env.insert("PLUGIN_SETTING".into(), "1".into());
    let Loaded::Policy(plugin) = host.load(&cfg).unwrap() else { panic!() };
    let decision = PolicyRun::new(&ctx("env-x"), vec![plugin]).on_request().unwrap();
    assert!(matches!(decision, Decision::Deny(reason) if reason.contains("PLUGIN_SETTING")));
}

#[test]
fn compile_cache_is_used_on_the_second_load() {
    let Some(path) = dist("policy_confidential") else { return };
    let cache = tempfile::tempdir().unwrap();
    let wasm = std::fs::read(&path).unwrap();
    let host = Host::new(32, Some(cache.path().to_owned())).unwrap();
    let (_, cached) = super::engine::compile(host.engine(), &wasm, Some(cache.path())).unwrap();
    assert!(!cached);
    let (_, cached) = super::engine::compile(host.engine(), &wasm, Some(cache.path())).unwrap();
    assert!(cached, "second load did not come from the cache");
}

/// Timing on this machine, printed (`cargo test -- --nocapture`); the
/// figures in BENCHMARKS.md come from the release-mode bench.
#[test]
fn instantiation_and_calls_are_fast() {
    let host = Host::new(64, None).unwrap();
    let Some(plugin) = policy(&host, "policy_confidential", 64, 100) else { return };
    let n = 200;
    let started = Instant::now();
    for _ in 0..n {
        drop(plugin.instantiate().unwrap());
    }
    let per_instance = started.elapsed() / n;
    let mut run = PolicyRun::new(&ctx("grace-ehr"), vec![plugin]);
    run.on_request().unwrap();
    let started = Instant::now();
    for _ in 0..n {
        run.on_resource(PATIENT).unwrap();
    }
    let per_call = started.elapsed() / n;
    eprintln!("instantiate {per_instance:?}, on-resource {per_call:?}");
    assert!(per_instance < Duration::from_millis(20) && per_call < Duration::from_millis(5));
}

/// Run `f` on this thread with `spinners` other threads busy on the same
/// core, so this thread gets a fraction of it (a loaded machine).
#[allow(unsafe_code)]
fn on_a_crowded_core<T>(spinners: usize, f: impl FnOnce() -> T) -> T {
    use std::sync::atomic::{AtomicBool, Ordering};
    fn pin(cpu: Option<usize>) {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only
        // read and write `set`, and pid 0 is the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            match cpu {
                Some(cpu) => libc::CPU_SET(cpu, &mut set),
                None => (0..libc::CPU_SETSIZE as usize).for_each(|c| libc::CPU_SET(c, &mut set)),
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..spinners)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                pin(Some(0));
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
        })
        .collect();
    pin(Some(0));
    std::thread::sleep(Duration::from_millis(20));
    let out = f();
    pin(None);
    stop.store(true, Ordering::Relaxed);
    threads.into_iter().for_each(|t| t.join().unwrap());
    out
}

#[test]
fn the_deadline_counts_the_plugins_cpu_time_not_a_busy_machines_wall_time() {
    let host = Host::new(32, None).unwrap();
    let Some(generous) = policy(&host, "hostile_policy", 32, 10_000) else { return };
    let run = |plugin: &Arc<PolicyPlugin>| {
        PolicyRun::new(&ctx("work-x"), vec![plugin.clone()]).on_resource(PATIENT)
    };
    // Warm up (instantiation, code pages), then measure the work's CPU time alone.
    assert!(matches!(run(&generous), Ok(Verdict::Keep)));
    let cpu_before = super::sandbox::thread_cpu_time();
    assert!(matches!(run(&generous), Ok(Verdict::Keep)));
    let cpu = super::sandbox::thread_cpu_time() - cpu_before;
    // A deadline of three times that: met on an idle core; on a core shared
    // with four busy threads the call takes about five times its CPU time
    // in wall time, past the deadline — and must still succeed.
    let timeout_ms = (cpu.as_millis() as u64 * 3).max(15);
    let Some(tight) = policy(&host, "hostile_policy", 32, timeout_ms) else { return };
    assert!(
        matches!(run(&tight), Ok(Verdict::Keep)),
        "idle: the work ({cpu:?} of CPU) within {timeout_ms} ms"
    );
    let (result, wall) = on_a_crowded_core(4, || {
        let started = Instant::now();
        (run(&tight), started.elapsed())
    });
    assert!(
        matches!(result, Ok(Verdict::Keep)),
        "loaded: {result:?} after {wall:?} (timeout {timeout_ms} ms)"
    );
    assert!(
        wall > Duration::from_millis(timeout_ms),
        "inconclusive: on the crowded core the call took only {wall:?}, within its {timeout_ms} ms"
    );
    // An endless loop on the crowded core still times out, on CPU time.
    let looped =
        on_a_crowded_core(4, || PolicyRun::new(&ctx("loop-x"), vec![tight.clone()]).on_resource(PATIENT));
    assert!(matches!(looped, Err(PluginError::Timeout { .. })), "{looped:?}");
}
