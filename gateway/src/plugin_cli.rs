//! The plugin commands of the CLI: `fhirwall match` (offline batch
//! matching), `fhirwall plugin test` (fixtures) and `fhirwall plugin check`
//! (world, imports, limits). They run the same host code as the gateway.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::config::{PluginConfig, PluginWorld};
use crate::plugins::index::MemberIndex;
use crate::plugins::matcher::MatchInput;
use crate::plugins::policy::{Decision, PolicyContext, PolicyRun, Verdict};
use crate::plugins::{CandidateSource, Host, Loaded, MatchAnswer, MatchOutcome, MatcherPlugin, PolicyPlugin};

/// Limits for a plugin run from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_mb: u64,
    pub timeout_ms: u64,
}

fn plugin_config(path: &Path, world: PluginWorld, limits: Limits) -> PluginConfig {
    let name =
        path.file_stem().map(|s| s.to_string_lossy().replace('_', "-")).unwrap_or_else(|| "plugin".into());
    PluginConfig {
        name,
        world,
        path: path.to_owned(),
        memory_mb: limits.memory_mb,
        timeout_ms: limits.timeout_ms,
        env: Default::default(),
        clock: false,
        read_dirs: Vec::new(),
        max_candidates: 100,
    }
}

/// Which world a component exports (by its export names).
pub fn detect_world(host: &Host, path: &Path) -> anyhow::Result<PluginWorld> {
    let wasm = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let component = wasmtime::component::Component::new(host.engine(), &wasm)
        .with_context(|| format!("{} is not a WebAssembly component", path.display()))?;
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(host.engine()).map(|(name, _)| name.to_owned()).collect();
    if exports.iter().any(|e| e == "match-member") {
        Ok(PluginWorld::Matcher)
    } else if exports.iter().any(|e| e == "on-request") && exports.iter().any(|e| e == "on-resource") {
        Ok(PluginWorld::Policy)
    } else {
        bail!("{} exports neither fhirwall:plugin world (exports: {})", path.display(), exports.join(", "))
    }
}

fn host() -> anyhow::Result<Host> {
    Host::new(crate::plugins::engine::MAX_MEMORY_MB.min(1024), None)
}

fn load_matcher(host: &Host, path: &Path, limits: Limits) -> anyhow::Result<Arc<MatcherPlugin>> {
    match host.load(&plugin_config(path, PluginWorld::Matcher, limits))? {
        Loaded::Matcher(m) => Ok(m),
        Loaded::Policy(_) => bail!("not a matcher"),
    }
}

fn load_policy(host: &Host, path: &Path, limits: Limits) -> anyhow::Result<Arc<PolicyPlugin>> {
    match host.load(&plugin_config(path, PluginWorld::Policy, limits))? {
        Loaded::Policy(p) => Ok(p),
        Loaded::Matcher(_) => bail!("not a policy plugin"),
    }
}

/// One query's answer as `fhirwall match` prints it.
pub fn answer_line(id: &Value, result: &Result<MatchOutcome, String>) -> Value {
    match result {
        Ok(outcome) => match &outcome.answer {
            MatchAnswer::Match { member, score, .. } => {
                json!({ "id": id, "result": "match", "member": format!("Patient/{member}"), "score": score })
            }
            MatchAnswer::NoMatch { .. } => json!({ "id": id, "result": "no-match" }),
            MatchAnswer::Ambiguous { members, .. } => json!({
                "id": id, "result": "ambiguous",
                "members": members.iter().map(|m| format!("Patient/{m}")).collect::<Vec<_>>(),
            }),
        },
        Err(e) => json!({ "id": id, "result": "error", "error": e }),
    }
}

fn run_one(
    matcher: &MatcherPlugin,
    source: &Arc<dyn CandidateSource>,
    line: &str,
) -> (Value, Result<MatchOutcome, String>) {
    let value: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return (Value::Null, Err(format!("query is not JSON: {e}"))),
    };
    let id = value.get("id").cloned().unwrap_or(Value::Null);
    let input = match crate::ops::member_match::parse_request(line.as_bytes()) {
        Ok(input) => input,
        Err(e) => return (id, Err(e.message)),
    };
    let result = matcher.match_member(&input, source.clone()).map_err(|e| e.to_string()).map(|outcome| {
        // The same rule as the live operation: only covered members match.
        if let MatchAnswer::Match { member, .. } = &outcome.answer
            && !outcome.offered.get(member).is_some_and(crate::ops::member_match::is_covered)
        {
            return MatchOutcome { answer: MatchAnswer::NoMatch { reasons: vec![] }, ..outcome };
        }
        outcome
    });
    (id, result)
}

/// `fhirwall match`: every query through the matcher, one NDJSON line each
/// (in input order); a summary on stderr.
pub fn run_match(
    plugin: &Path,
    members: &Path,
    queries: &Path,
    limits: Limits,
    threads: usize,
) -> anyhow::Result<()> {
    let host = host()?;
    let matcher = load_matcher(&host, plugin, limits)?;
    let started = Instant::now();
    let text = std::fs::read_to_string(members).with_context(|| format!("reading {}", members.display()))?;
    let index = MemberIndex::from_ndjson(&text)?;
    drop(text);
    eprintln!("members: {} covered members indexed in {:.1} s", index.len(), started.elapsed().as_secs_f64());
    let source: Arc<dyn CandidateSource> = Arc::new(index);
    let lines: Vec<String> = std::fs::read_to_string(queries)
        .with_context(|| format!("reading {}", queries.display()))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let threads = threads.max(1).min(lines.len().max(1));
    let started = Instant::now();
    let chunk = lines.len().div_ceil(threads).max(1);
    let results: Vec<Vec<Value>> = std::thread::scope(|scope| {
        let handles: Vec<_> = lines
            .chunks(chunk)
            .map(|part| {
                let matcher = matcher.clone();
                let source = source.clone();
                scope.spawn(move || {
                    part.iter()
                        .map(|line| {
                            let (id, result) = run_one(&matcher, &source, line);
                            answer_line(&id, &result)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let elapsed = started.elapsed();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for line in results.into_iter().flatten() {
        *counts.entry(line["result"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    eprintln!(
        "queries: {} in {:.2} s ({:.0} queries/s on {threads} threads); {}",
        lines.len(),
        elapsed.as_secs_f64(),
        lines.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        counts.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// `fhirwall plugin check`: what the component is, what it imports and how
/// the sandbox treats each import, whether it loads and answers within its
/// limits. Prints a report; fails when the plugin cannot run.
pub fn check(plugin: &Path, limits: Limits) -> anyhow::Result<()> {
    let host = host()?;
    let world = detect_world(&host, plugin)?;
    let wasm = std::fs::read(plugin)?;
    let component = wasmtime::component::Component::new(host.engine(), &wasm)?;
    println!("plugin   {}", plugin.display());
    println!("sha256   {}", crate::plugins::engine::digest(&wasm));
    println!("size     {} bytes", wasm.len());
    println!(
        "world    fhirwall:plugin/{}@0.1.0",
        if world == PluginWorld::Matcher { "matcher" } else { "policy" }
    );
    println!("imports");
    let ty = component.component_type();
    for (name, _) in ty.imports(host.engine()) {
        println!("  {name:<44} {}", import_note(name));
    }
    println!("exports");
    for (name, _) in ty.exports(host.engine()) {
        println!("  {name}");
    }
    println!("limits   memory {} MiB, deadline {} ms per call", limits.memory_mb, limits.timeout_ms);
    let started = Instant::now();
    match world {
        PluginWorld::Matcher => {
            let matcher = load_matcher(&host, plugin, limits)?;
            println!("load     ok ({:.1} ms, pre-instantiated)", started.elapsed().as_secs_f64() * 1e3);
            let index: Arc<dyn CandidateSource> = Arc::new(MemberIndex::default());
            let input = MatchInput {
                member_patient: r#"{"resourceType":"Patient","id":"1","name":[{"family":"Check","given":["Plugin"]}],"birthDate":"1970-01-01","gender":"unknown"}"#.into(),
                coverage_to_match: r#"{"resourceType":"Coverage","id":"1","subscriberId":"CHECK-1","beneficiary":{"reference":"Patient/1"}}"#.into(),
                coverage_to_link: None,
            };
            let t = Instant::now();
            let outcome = matcher.match_member(&input, index)?;
            println!(
                "call     match-member -> {:?} in {:.2} ms",
                outcome.answer,
                t.elapsed().as_secs_f64() * 1e3
            );
        }
        PluginWorld::Policy => {
            let policy = load_policy(&host, plugin, limits)?;
            println!("load     ok ({:.1} ms, pre-instantiated)", started.elapsed().as_secs_f64() * 1e3);
            let ctx = test_context(&Value::Null);
            let mut run = PolicyRun::new(&ctx, vec![policy]);
            let t = Instant::now();
            let decision = run.on_request()?;
            let verdict = run.on_resource(r#"{"resourceType":"Patient","id":"check","gender":"unknown"}"#)?;
            println!(
                "call     on-request -> {decision:?}, on-resource -> {} in {:.2} ms",
                verdict_name(&verdict),
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    println!("ok");
    Ok(())
}

fn import_note(name: &str) -> &'static str {
    let iface = name.split('@').next().unwrap_or(name);
    match iface {
        "fhirwall:plugin/types" | "fhirwall:plugin/matching" | "fhirwall:plugin/policy-types" => "types",
        "candidates" => "host: member search (upstream or member file)",
        n if n.starts_with("wasi:filesystem") => "no directories unless granted (read_dirs)",
        n if n.starts_with("wasi:sockets") => "denied: no network, ever",
        n if n.starts_with("wasi:clocks") => "frozen at 1970-01-01 unless granted (clock = true)",
        "wasi:cli/environment" => "empty unless granted (env)",
        n if n.starts_with("wasi:random") => "available",
        "wasi:cli/stdout" | "wasi:cli/stderr" => "captured (8 KiB), logged at debug",
        "wasi:cli/stdin" => "empty",
        "wasi:cli/exit" => "ends the call (a trap)",
        n if n.starts_with("wasi:cli/terminal") => "no terminal",
        n if n.starts_with("wasi:io") => "streams (stdio only)",
        _ => "UNKNOWN: the host does not offer it, the plugin will not load",
    }
}

fn verdict_name(v: &Verdict) -> &'static str {
    match v {
        Verdict::Keep => "keep",
        Verdict::Drop(_) => "drop",
        Verdict::Replace(_) => "replace",
    }
}

fn test_context(value: &Value) -> PolicyContext {
    let s = |k: &str, d: &str| value.get(k).and_then(Value::as_str).unwrap_or(d).to_owned();
    let list = |k: &str| -> Vec<String> {
        value
            .get(k)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let scopes = list("scopes");
    PolicyContext {
        request_id: s("request_id", "plugin-test"),
        client_id: s("client_id", "test-client"),
        organization: s("organization", "Organization/org-test"),
        npi: value.get("npi").and_then(Value::as_str).map(str::to_owned),
        scopes: if scopes.is_empty() { vec!["system/*.read".into()] } else { scopes },
        interaction: s("interaction", "read"),
        resource_type: value.get("resource_type").and_then(Value::as_str).map(str::to_owned),
        patients: list("patients"),
    }
}

/// `fhirwall plugin test`: run `DIR/cases.ndjson` (and, for a matcher, the
/// members in `DIR/members.ndjson`); prints PASS/FAIL per case and a
/// summary; `Ok(false)` when any case failed.
pub fn test(plugin: &Path, fixtures: &Path, limits: Limits) -> anyhow::Result<bool> {
    let host = host()?;
    let world = detect_world(&host, plugin)?;
    let cases_path = fixtures.join("cases.ndjson");
    let cases =
        std::fs::read_to_string(&cases_path).with_context(|| format!("reading {}", cases_path.display()))?;
    let (mut passed, mut failed) = (0, 0);
    let mut report = |id: &Value, problem: Option<String>| match problem {
        None => {
            passed += 1;
            println!("PASS  {}", show_id(id));
        }
        Some(p) => {
            failed += 1;
            println!("FAIL  {}: {p}", show_id(id));
        }
    };
    match world {
        PluginWorld::Matcher => {
            let matcher = load_matcher(&host, plugin, limits)?;
            let members_path = fixtures.join("members.ndjson");
            let members = std::fs::read_to_string(&members_path).with_context(|| {
                format!("reading {} (a matcher's fixtures need members)", members_path.display())
            })?;
            let source: Arc<dyn CandidateSource> = Arc::new(MemberIndex::from_ndjson(&members)?);
            for line in cases.lines().filter(|l| !l.trim().is_empty()) {
                let case: Value = serde_json::from_str(line).context("a case line is not JSON")?;
                report(&case["id"], matcher_case_problem(&matcher, &source, &case));
            }
        }
        PluginWorld::Policy => {
            let policy = load_policy(&host, plugin, limits)?;
            for line in cases.lines().filter(|l| !l.trim().is_empty()) {
                let case: Value = serde_json::from_str(line).context("a case line is not JSON")?;
                report(&case["id"], policy_case_problem(&policy, &case));
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// What is wrong with a matcher's answer to one fixture case, if anything.
fn matcher_case_problem(
    matcher: &MatcherPlugin,
    source: &Arc<dyn CandidateSource>,
    case: &Value,
) -> Option<String> {
    let request = case["request"].to_string();
    let (_, result) = run_one(matcher, source, &request);
    let got = answer_line(&case["id"], &result);
    let expect = &case["expect"];
    let mut problem = None;
    for key in ["result", "member"] {
        if let Some(want) = expect.get(key)
            && got.get(key) != Some(want)
        {
            problem = Some(format!("expected {key} {want}, got {got}"));
        }
    }
    problem
}

/// What is wrong with a policy plugin's decision and verdict on one
/// fixture case, if anything.
fn policy_case_problem(policy: &Arc<PolicyPlugin>, case: &Value) -> Option<String> {
    let ctx = test_context(&case["context"]);
    let mut run = PolicyRun::new(&ctx, vec![policy.clone()]);
    let expect = &case["expect"];
    match run.on_request() {
        Err(e) => return Some(format!("on-request failed: {e}")),
        Ok(decision) => {
            let name = if decision == Decision::Allow { "allow" } else { "deny" };
            if let Some(want) = expect.get("decision").and_then(Value::as_str)
                && want != name
            {
                return Some(format!("expected decision {want}, got {decision:?}"));
            }
        }
    }
    let resource = case.get("resource")?;
    let verdict = match run.on_resource(&resource.to_string()) {
        Err(e) => return Some(format!("on-resource failed: {e}")),
        Ok(verdict) => verdict,
    };
    if let Some(want) = expect.get("verdict").and_then(Value::as_str)
        && want != verdict_name(&verdict)
    {
        return Some(format!("expected verdict {want}, got {verdict:?}"));
    }
    if let (Some(want), Verdict::Replace(text)) = (expect.get("replacement"), &verdict)
        && serde_json::from_str::<Value>(text).ok().as_ref() != Some(want)
    {
        return Some(format!("expected replacement {want}, got {text}"));
    }
    None
}

fn show_id(id: &Value) -> String {
    id.as_str().map(str::to_owned).unwrap_or_else(|| id.to_string())
}

/// Default worker threads for `fhirwall match`.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
