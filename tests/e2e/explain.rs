//! `explain` end to end: the real gateway in front of the sandbox (the
//! synthetic payer dataset, whose facts.json says which record is hidden
//! from whom and why), asked through `GET /admin/explain` and through
//! `fhirwall explain --config`. One case per decision stage the dataset
//! exercises; the answers name resources, stages and reasons, never a
//! value of a hidden record.

use fhirwall_testkit as support;

use std::process::Command;

use serde_json::{Value, json};
use support::*;

const CLIENT: &str = "grace-ehr";

fn start() -> Gateway {
    Gateway::start(
        GatewayConfig::new("sandbox")
            .extra_toml("[policy]\npart2_programs = [\"Organization/org-recovery\", \"1234567893\"]\n")
            .client(CLIENT, "Organization/org-grace", "1417987256", &["system/*.read"]),
    )
}

async fn explain(gw: &Gateway, what: &str) -> Value {
    let resp = gw.admin("GET", &format!("/admin/explain?client={CLIENT}&{what}"), None).await;
    resp.assert_status(200);
    resp.json()
}

/// The decision about `resource` in an explanation: (action, stage, reason).
fn decision(e: &Value, resource: &str) -> Option<(String, String, String)> {
    e["decisions"].as_array()?.iter().find(|d| d["resource"] == resource).map(|d| {
        (
            d["action"].as_str().unwrap().to_owned(),
            d["stage"].as_str().unwrap().to_owned(),
            d["reason"].as_str().unwrap().to_owned(),
        )
    })
}

fn d(action: &str, stage: &str, reason: &str) -> Option<(String, String, String)> {
    Some((action.into(), stage.into(), reason.into()))
}

/// What in `resource` decided (`detail`), as explained.
fn detail(e: &Value, resource: &str) -> String {
    let decisions = e["decisions"].as_array().unwrap();
    let found = decisions.iter().find(|d| d["resource"] == resource);
    found.and_then(|d| d["detail"].as_str()).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn explain_names_the_stage_and_reason_of_every_decision_and_no_hidden_value() {
    let gw = start();
    let sandbox_row = |key: &str| -> String {
        let (ty, id) = key.split_once('/').unwrap();
        let text = std::fs::read_to_string(payer_dataset()).unwrap();
        text.lines()
            .find(|l| l.contains(&format!("\"resourceType\":\"{ty}\",\"id\":\"{id}\"")))
            .unwrap_or_else(|| panic!("{key} not in the dataset"))
            .to_owned()
    };

    // Attribution: a member of no Group of grace's.
    let e = explain(&gw, "resource=Patient/pat-0004").await;
    assert_eq!(e["status"], 404, "{e}");
    assert_eq!(decision(&e, "Patient/pat-0004"), d("refused", "access", "attribution"), "{e}");
    assert_eq!(e["patients"][0]["attributed"], false, "{e}");
    assert_eq!(e["leaves"], json!([]));

    // Visible, and on what basis.
    let e = explain(&gw, "resource=Patient/pat-0001").await;
    assert_eq!(e["status"], 200, "{e}");
    assert_eq!(e["leaves"], json!(["Patient/pat-0001"]));
    assert_eq!(e["patients"][0]["groups"], json!(["grp-grace"]), "{e}");

    // Part 2 by label and by code; date floor; financial redaction (which
    // elements); a drug prior authorization — each with what decided.
    for (resource, expect, why) in [
        (
            "Condition/cond-0009-2",
            d("withheld", "data-scope", "part2"),
            "a Part 2 security label on the resource",
        ),
        ("Condition/cond-0203-3", d("withheld", "data-scope", "part2"), "a Part 2 code in code"),
        ("Condition/cond-0010-3", None, ""), // pat-0010 is not grace's: refused before any stage
        ("Condition/cond-0001-4", d("withheld", "data-scope", "date-floor"), "before the floor 2016-01-01"),
        (
            "ExplanationOfBenefit/eob-0001-1",
            d("redacted", "data-scope", "financial"),
            "elements removed or changed: ExplanationOfBenefit.",
        ),
        ("ExplanationOfBenefit/pa-0024-1", d("withheld", "data-scope", "drug-pa"), "drug"),
    ] {
        let e = explain(&gw, &format!("resource={resource}")).await;
        if let Some(expect) = expect {
            assert_eq!(decision(&e, resource), Some(expect), "{resource}: {e}");
            assert!(detail(&e, resource).contains(why), "{resource}: {why:?} not in {e}");
        }
        let body = e.to_string();
        // Nothing of the record itself: none of its strings (codes,
        // displays, dates, amounts' currencies) beyond its own id and
        // references and URLs.
        let row: Value = serde_json::from_str(&sandbox_row(resource)).unwrap();
        let mut strings = Vec::new();
        collect_strings(&row, &mut strings);
        let (ty, id) = resource.split_once('/').unwrap();
        for v in strings
            .iter()
            .filter(|v| v.len() >= 5 && *v != id && *v != ty && !v.contains('/') && !v.starts_with("http"))
        {
            assert!(!body.contains(v.as_str()), "{resource}: {v:?} in the explanation {body}");
        }
        assert!(strings.len() > 3, "{resource}: too few strings to check");
    }

    // Part 2 by program (the treating organization is the SUD program) in a search.
    let e = explain(&gw, "request=GET%20/fhir/ExplanationOfBenefit%3Fpatient%3Dpat-0011").await;
    assert_eq!(e["status"], 200, "{e}");
    assert_eq!(decision(&e, "ExplanationOfBenefit/eob-0011-7"), d("withheld", "data-scope", "part2"), "{e}");
    assert!(detail(&e, "ExplanationOfBenefit/eob-0011-7").contains("a Part 2 program in provider"), "{e}");
    assert!(!e["leaves"].as_array().unwrap().iter().any(|r| r == "ExplanationOfBenefit/eob-0011-7"));

    // An opt-out: refused at the access stage, and said so.
    gw.admin("PUT", "/admin/opt-outs/pat-0006", Some(&json!({"reason": "member request"})))
        .await
        .assert_status(204);
    let e = explain(&gw, "resource=Patient/pat-0006").await;
    assert_eq!(decision(&e, "Patient/pat-0006"), d("refused", "access", "opt-out"), "{e}");
    assert_eq!(e["patients"][0]["opted_out"], true, "{e}");

    // Mistakes are 400/404, never a run.
    for bad in ["resource=Patient", "request=POST%20/fhir/Patient", "client=x&resource=Patient/pat-0001"] {
        let path = if bad.starts_with("client=") {
            format!("/admin/explain?{bad}")
        } else {
            format!("/admin/explain?client={CLIENT}&{bad}")
        };
        let resp = gw.admin("GET", &path, None).await;
        assert!(resp.status == 400 || resp.status == 404, "{bad}: {}", resp.status);
    }
    // Without the admin token: 401.
    get(&format!("{}/admin/explain?client={CLIENT}&resource=Patient/pat-0001", gw.admin_url()))
        .await
        .assert_status(401);

    // The explain call is itself audited as an admin action.
    let audit = std::fs::read_to_string(
        gw.audit_dir().join(
            std::fs::read_dir(gw.audit_dir())
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .max()
                .unwrap(),
        ),
    )
    .unwrap();
    assert!(audit.contains("\"code\":\"explain\""), "no explain record in the audit log");

    // The CLI asks the running gateway of a config file, and prints lines.
    let out = Command::new(fhirwall_bin())
        .args(["explain", "--config"])
        .arg(gw.config_path())
        .args(["--client", CLIENT, "--resource", "Condition/cond-0009-2"])
        .env(gw_token_env(&gw), gw.admin_token())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}{}", text, String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("withheld Condition/cond-0009-2 by data-scope (part2): a Part 2 security label"),
        "{text}"
    );
    assert!(text.contains("answer   404"), "{text}");
}

/// The plugin stage: a policy plugin that withholds everything from its
/// client, explained as withheld by `plugins`, naming the plugin and its reason.
#[tokio::test]
async fn explain_names_the_policy_plugin_that_withheld_and_its_reason() {
    let wasm = repo_root().join("plugins/dist/hostile_policy.wasm");
    let wasm =
        std::fs::read(&wasm).unwrap_or_else(|e| panic!("{}: {e}: run plugins/build.sh", wasm.display()));
    let gw = Gateway::start(
        GatewayConfig::new("sandbox")
            .file("plugins/policy.wasm", wasm)
            .extra_toml(
                "[[plugins]]\nname = \"policy\"\nworld = \"policy\"\npath = \"plugins/policy.wasm\"\n\
                 memory_mb = 32\ntimeout_ms = 1000\n",
            )
            .client("drop-ehr", "Organization/org-grace", "1417987256", &["system/*.read"]),
    );
    for what in ["resource=Patient/pat-0001", "request=GET%20/fhir/Condition%3Fpatient%3Dpat-0001"] {
        let resp = gw.admin("GET", &format!("/admin/explain?client=drop-ehr&{what}"), None).await;
        resp.assert_status(200);
        let e = resp.json();
        // Everything the built-in stages let out reaches the plugin, which
        // withholds it (a record before the date floor never gets there).
        let decisions = e["decisions"].as_array().unwrap();
        let by_plugin: Vec<&Value> = decisions.iter().filter(|d| d["stage"] == "plugins").collect();
        assert!(!by_plugin.is_empty(), "{what}: {e}");
        assert!(
            decisions.iter().all(|d| d["stage"] == "plugins" || d["stage"] == "data-scope"),
            "{what}: {e}"
        );
        for d in by_plugin {
            assert_eq!((&d["action"], &d["reason"]), (&json!("withheld"), &json!("plugin")), "{what}: {e}");
            assert_eq!(d["detail"], "policy: dropped by the test policy", "{what}: {e}");
        }
        assert_eq!(e["leaves"], json!([]), "{what}: {e}");
    }
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

/// The admin token's environment variable in a test gateway's config.
fn gw_token_env(gw: &Gateway) -> String {
    let config = std::fs::read_to_string(gw.config_path()).unwrap();
    config
        .lines()
        .find_map(|l| l.trim().strip_prefix("token_env = ").map(|v| v.trim_matches('"').to_owned()))
        .unwrap_or_else(|| "FHIRWALL_ADMIN_TOKEN".into())
}
