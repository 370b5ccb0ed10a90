//! Plugin host benchmark (BENCHMARKS.md "Plugins and matching"):
//! instantiation with the pooling allocator, the per-call cost of
//! `on-resource` on a typical resource, and the time one policy plugin adds
//! to a 20-entry Bundle (one instance, 20 calls, verdicts applied).
//!
//!     plugins/build.sh && cargo bench --bench plugins
//!
//! Uses plugins/dist/policy_confidential.wasm and resources of the synthetic
//! payer dataset (ExplanationOfBenefit, the largest typical resource).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fhirwall::config::{PluginConfig, PluginWorld};
use fhirwall::plugins::policy::{PolicyContext, PolicyRun};
use fhirwall::plugins::{Host, Loaded};

fn time<F: FnMut()>(n: u32, mut f: F) -> Duration {
    for _ in 0..n / 10 {
        f();
    }
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed() / n
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = root.join("plugins/dist/policy_confidential.wasm");
    assert!(wasm.is_file(), "{} missing: run plugins/build.sh", wasm.display());
    let dataset = std::fs::read_to_string(root.join("examples/dataset/payer.ndjson")).expect("dataset");
    let eobs: Vec<&str> = dataset
        .lines()
        .filter(|l| l.contains("\"resourceType\":\"ExplanationOfBenefit\""))
        .take(20)
        .collect();
    let typical = eobs[0];
    let host = Host::new(64, None).expect("engine");
    let config = PluginConfig {
        name: "policy-confidential".into(),
        world: PluginWorld::Policy,
        path: wasm,
        memory_mb: 64,
        timeout_ms: 100,
        env: Default::default(),
        clock: false,
        read_dirs: Vec::new(),
        max_candidates: 100,
    };
    let Loaded::Policy(plugin) = host.load(&config).expect("loads") else { panic!("not a policy plugin") };
    let ctx = PolicyContext {
        client_id: "grace-ehr".into(),
        interaction: "search-type".into(),
        ..Default::default()
    };

    let instantiate = time(2000, || drop(plugin.instantiate().expect("instance")));
    let mut run = PolicyRun::new(&ctx, vec![plugin.clone()]);
    run.on_request().expect("on-request");
    let call = time(20_000, || {
        run.on_resource(typical).expect("on-resource");
    });
    let entries: Vec<String> = eobs
        .iter()
        .map(|e| format!("{{\"fullUrl\":\"x\",\"resource\":{e},\"search\":{{\"mode\":\"match\"}}}}"))
        .collect();
    let bundle = bytes::Bytes::from(format!(
        "{{\"resourceType\":\"Bundle\",\"type\":\"searchset\",\"entry\":[{}]}}",
        entries.join(",")
    ));
    let bundle_time = time(1000, || {
        let mut run = PolicyRun::new(&ctx, vec![plugin.clone()]);
        run.on_request().expect("on-request");
        run.filter_body(&bundle, &|_| true).expect("filter");
    });
    // The host's own cost per call: a plugin that keeps without looking.
    let noop_path = root.join("plugins/dist/hostile_policy.wasm");
    let noop_call = if noop_path.is_file() {
        let Loaded::Policy(noop) =
            host.load(&PluginConfig { path: noop_path, ..config.clone() }).expect("loads")
        else {
            panic!("not a policy plugin")
        };
        let mut run = PolicyRun::new(&ctx, vec![noop]);
        run.on_request().expect("on-request");
        Some(time(20_000, || {
            run.on_resource(typical).expect("on-resource");
        }))
    } else {
        None
    };
    let labelled = typical.replacen("\"meta\":{", "\"meta\":{\"security\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/v3-Confidentiality\",\"code\":\"N\"}],", 1);
    let mut run = PolicyRun::new(&ctx, vec![plugin.clone()]);
    run.on_request().expect("on-request");
    let parsed_call = time(20_000, || {
        run.on_resource(&labelled).expect("on-resource");
    });
    println!("policy plugin: policy_confidential.wasm (release host, pooling allocator)");
    println!("  instantiate (fresh instance from InstancePre): {:>8.1} µs", instantiate.as_secs_f64() * 1e6);
    println!(
        "  on-resource, typical EOB ({} bytes):          {:>8.1} µs",
        typical.len(),
        call.as_secs_f64() * 1e6
    );
    if let Some(noop) = noop_call {
        println!("  on-resource, no-op plugin (host cost per call):  {:>8.1} µs", noop.as_secs_f64() * 1e6);
    }
    println!("  on-resource, labelled EOB (guest parses it):    {:>8.1} µs", parsed_call.as_secs_f64() * 1e6);
    println!(
        "  20-entry Bundle ({} KiB), instance + on-request + 20 on-resource + rebuild: {:>8.1} µs",
        bundle.len() / 1024,
        bundle_time.as_secs_f64() * 1e6
    );
}
