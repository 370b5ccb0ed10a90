//! Policy plugins end to end: the real gateway (built-in sandbox upstream)
//! with the hostile test plugin (plugins/hostile-policy, behaviour chosen by
//! the client id) and the example confidential-communications plugin.
//! Every attack is contained: the request fails closed with an
//! OperationOutcome (audited) and the gateway keeps serving other clients.

use fhirwall_testkit as support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const ORG: &str = "Organization/org-grace";
const NPI: &str = "1417987256";

fn plugin(name: &str) -> Vec<u8> {
    let path = repo_root().join("plugins/dist").join(format!("{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: build the plugins first (plugins/build.sh)", path.display()))
}

fn policy_toml(rel_path: &str) -> String {
    format!(
        "[[plugins]]\nname = \"policy\"\nworld = \"policy\"\npath = {rel_path:?}\nmemory_mb = 32\ntimeout_ms = 100\n"
    )
}

fn gateway(clients: &[&str], wasm: &str) -> Gateway {
    let mut config = GatewayConfig::new("sandbox")
        .file("plugins/policy.wasm", plugin(wasm))
        .extra_toml(&policy_toml("plugins/policy.wasm"));
    for c in clients {
        config = config.client(c, ORG, NPI, &["system/*.read"]);
    }
    Gateway::start(config)
}

async fn read(gw: &Gateway, token: &str, path: &str) -> Resp {
    get_bearer(&gw.url(path), token).await
}

#[tokio::test]
async fn hostile_policy_plugins_are_contained_and_the_gateway_keeps_serving() {
    let hostile = ["loop-ehr", "oom-ehr", "recurse-ehr", "huge-ehr", "trap-ehr", "garbage-ehr"];
    let benign = ["grace-ehr", "fs-ehr", "env-ehr", "clock-ehr", "state-ehr"];
    let all: Vec<&str> = hostile.iter().chain(benign.iter()).copied().collect();
    let gw = gateway(&all, "hostile_policy");
    let grace = gw.token("grace-ehr", "system/*.read");
    for client in hostile {
        let token = gw.token(client, "system/*.read");
        let started = std::time::Instant::now();
        let resp = read(&gw, &token, "Patient/pat-0001").await;
        assert!(matches!(resp.status, 500 | 503), "{client}: {} {}", resp.status, resp.text());
        let oo = assert_operation_outcome(&resp);
        assert!(!oo.to_string().contains("pat-0001"), "{client}: the failure leaks data: {oo}");
        assert!(started.elapsed() < Duration::from_secs(5), "{client} took {:?}", started.elapsed());
        // The gateway still serves everyone else, right away.
        read(&gw, &grace, "Patient/pat-0001").await.assert_status(200);
    }
    // A plugin looking for files, the environment or the clock finds none of them
    // (it would deny the request, naming what it saw).
    for client in ["fs-ehr", "env-ehr", "clock-ehr"] {
        let token = gw.token(client, "system/*.read");
        let resp = read(&gw, &token, "Patient/pat-0001").await;
        assert_eq!(resp.status, 200, "{client}: {}", resp.text());
    }
    // A fresh instance per request: a static set by one request is gone in the next.
    let token = gw.token("state-ehr", "system/*.read");
    for _ in 0..3 {
        let resp = read(&gw, &token, "Patient/pat-0001").await;
        assert_eq!(resp.status, 200, "state leaked between requests: {}", resp.text());
    }
    // Each failure is in the audit log, blamed on policy.
    let audit = gw.admin("GET", "/admin/audit?client=trap-ehr", None).await;
    assert_eq!(audit.status, 200);
    let lines: Vec<Value> = audit.text().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(
        lines.iter().any(|l| l.to_string().contains("policy")),
        "no policy-blamed audit record: {}",
        audit.text()
    );
}

#[tokio::test]
async fn verdicts_deny_drop_and_narrow_but_never_add() {
    let gw = gateway(&["grace-ehr", "deny-ehr", "drop-ehr", "replace-ehr", "grow-ehr"], "hostile_policy");
    let grace = gw.token("grace-ehr", "system/*.read");
    let full = read(&gw, &grace, "Patient/pat-0001").await;
    full.assert_status(200);
    assert!(full.json().get("meta").is_some());

    let deny = gw.token("deny-ehr", "system/*.read");
    let resp = read(&gw, &deny, "Patient/pat-0001").await;
    assert_eq!(resp.status, 403);
    assert!(assert_operation_outcome(&resp).to_string().contains("denied by the test policy"));

    // drop: a read looks like a missing resource; a search loses its entries,
    // and its total counts only what leaves.
    let drop = gw.token("drop-ehr", "system/*.read");
    assert_eq!(read(&gw, &drop, "Patient/pat-0001").await.status, 404);
    let search = read(&gw, &drop, "Coverage?patient=Patient/pat-0001").await;
    assert_eq!(search.status, 200, "{}", search.text());
    let bundle = search.json();
    assert!(bundle_resources(&bundle).is_empty(), "{bundle}");
    assert_eq!(bundle["total"], 0, "a total that counts withheld entries: {bundle}");
    let audit = gw.admin("GET", "/admin/audit?client=drop-ehr", None).await;
    assert!(audit.text().contains("suppressed.plugin"), "plugin drops not audited: {}", audit.text());

    // replace with a narrowing: honoured.
    let narrow = gw.token("replace-ehr", "system/*.read");
    let resp = read(&gw, &narrow, "Patient/pat-0001").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let patient = resp.json();
    assert_eq!(patient["id"], "pat-0001");
    assert!(patient.get("meta").is_none(), "narrowed resource still has meta: {patient}");
    assert_eq!(patient["birthDate"], full.json()["birthDate"]);

    // replace that changes the id (or adds anything): treated as drop.
    let grow = gw.token("grow-ehr", "system/*.read");
    assert_eq!(read(&gw, &grow, "Patient/pat-0001").await.status, 404);
}

#[tokio::test]
async fn hot_reload_swaps_atomically_and_keeps_the_old_plugin_when_the_new_one_fails() {
    let gw = gateway(&["drop-ehr"], "hostile_policy");
    let token = gw.token("drop-ehr", "system/*.read");
    assert_eq!(read(&gw, &token, "Patient/pat-0001").await.status, 404, "hostile plugin drops everything");

    // A new version through the admin API.
    let path = gw.dir().join("plugins/policy.wasm");
    std::fs::write(&path, plugin("policy_confidential")).unwrap();
    let resp = gw.admin("POST", "/admin/plugins/reload", None).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["generation"], 2);
    assert_eq!(
        read(&gw, &token, "Patient/pat-0001").await.status,
        200,
        "the new plugin keeps unflagged data"
    );

    // A broken file: the reload fails, says why, and the running version stays.
    std::fs::write(&path, b"\0asm\x0d\0\x01\0garbage").unwrap();
    let resp = gw.admin("POST", "/admin/plugins/reload", None).await;
    assert_eq!(resp.status, 422, "{}", resp.text());
    assert!(resp.text().contains("previous versions stay"), "{}", resp.text());
    assert_eq!(read(&gw, &token, "Patient/pat-0001").await.status, 200);

    // A file change is picked up without an admin call.
    let tmp = gw.dir().join("plugins/.policy.wasm.tmp");
    std::fs::write(&tmp, plugin("hostile_policy")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if read(&gw, &token, "Patient/pat-0001").await.status == 404 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "file change not picked up:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn a_plugin_that_does_not_load_stops_startup_and_fails_config_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.wasm"), b"not wasm at all").unwrap();
    // A real component declared with the wrong world: it loads as a file but not as a policy.
    std::fs::write(dir.path().join("matcher.wasm"), plugin("default_matcher")).unwrap();
    std::fs::write(dir.path().join("policy.wasm"), plugin("policy_confidential")).unwrap();
    let cases = [
        ("bad.wasm", "not a WebAssembly component"),
        ("matcher.wasm", "not a fhirwall:plugin policy"),
        ("policy.wasm", ""),
    ];
    for (wasm, needle) in cases {
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\nbase_url = \"http://127.0.0.1:1/fhir\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n\
             [upstream]\nurl = \"sandbox\"\n[state]\nurl = \"sqlite://{}/db.sqlite\"\n[audit]\ndir = \"{}/audit\"\n{}",
            free_port(),
            free_port(),
            dir.path().display(),
            dir.path().display(),
            policy_toml(wasm)
        );
        let path = dir.path().join("fhirwall.toml");
        std::fs::write(&path, config).unwrap();
        if needle.is_empty() {
            // The good plugin: config check compiles it and passes.
            let check = std::process::Command::new(fhirwall_bin())
                .args(["config", "check", "--config"])
                .arg(&path)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&check.stderr);
            assert!(check.status.success(), "config check refused a good plugin: {err}");
            continue;
        }
        let err = assert_config_refused(&path, needle);
        assert!(err.contains("plugins"), "config check on {wasm}: {err}");
    }
}

#[test]
fn plugin_check_and_plugin_test_cli() {
    let dist = repo_root().join("plugins/dist");
    let out = std::process::Command::new(fhirwall_bin())
        .args(["plugin", "check"])
        .arg(dist.join("default_matcher.wasm"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("fhirwall:plugin/matcher@0.1.0") && text.contains("wasi:cli/environment"),
        "{text}"
    );
    for (wasm, fixtures) in
        [("default_matcher", "default-matcher"), ("policy_confidential", "policy-confidential")]
    {
        let out = std::process::Command::new(fhirwall_bin())
            .args(["plugin", "test"])
            .arg(dist.join(format!("{wasm}.wasm")))
            .arg("--fixtures")
            .arg(repo_root().join("plugins").join(fixtures).join("fixtures"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{wasm}: {text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(" 0 failed"), "{text}");
    }
}

/// `fhirwall plugin new` writes crates that build and pass their own tests
/// with one command, for both worlds; a fixture that expects the wrong
/// answer makes that command fail.
#[test]
fn plugin_new_scaffolds_crates_that_pass_their_own_check() {
    let dir = tempfile::tempdir().unwrap();
    // One target dir for both crates: the SDK's dependencies build once.
    let target = dir.path().join("target");
    let run = |args: &[&str]| {
        let out =
            std::process::Command::new(fhirwall_bin()).args(args).current_dir(repo_root()).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let check = |name: &str| {
        let out = std::process::Command::new("bash")
            .arg(dir.path().join(name).join("check.sh"))
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let where_ = dir.path().to_str().unwrap();
    for (name, world) in [("payer-policy", "policy"), ("payer-matcher", "matcher")] {
        run(&["plugin", "new", name, "--world", world, "--dir", where_]);
        let (ok, text) = check(name);
        assert!(ok, "{name}/check.sh failed:\n{text}");
        assert!(text.contains("2 passed, 0 failed"), "{text}");
        let wasm = target.join(format!("wasm32-wasip2/release/{}.wasm", name.replace('-', "_")));
        assert!(wasm.is_file(), "{} missing", wasm.display());
    }
    // The same name again is refused rather than overwritten.
    let again = std::process::Command::new(fhirwall_bin())
        .args(["plugin", "new", "payer-policy", "--world", "policy", "--dir", where_])
        .output()
        .unwrap();
    assert!(!again.status.success());

    // A case expecting the tagged resource to leave: plugin test, hence check.sh, fails.
    let cases = dir.path().join("payer-policy/fixtures/cases.ndjson");
    let text =
        std::fs::read_to_string(&cases).unwrap().replace("\"verdict\": \"drop\"", "\"verdict\": \"keep\"");
    std::fs::write(&cases, text).unwrap();
    let (ok, text) = check("payer-policy");
    assert!(!ok, "check.sh passed with a wrong expectation:\n{text}");
    assert!(text.contains("FAIL"), "{text}");
}
