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

    // Part 2 by label; date floor; financial redaction; a drug prior authorization.
    for (resource, expect) in [
        ("Condition/cond-0009-2", d("withheld", "data-scope", "part2")),
        ("Condition/cond-0010-3", None), // pat-0010 is not grace's: refused before any stage
        ("Condition/cond-0001-4", d("withheld", "data-scope", "date-floor")),
        ("ExplanationOfBenefit/eob-0001-1", d("redacted", "data-scope", "financial")),
        ("ExplanationOfBenefit/pa-0024-1", d("withheld", "data-scope", "drug-pa")),
    ] {
        let e = explain(&gw, &format!("resource={resource}")).await;
        if let Some(expect) = expect {
            assert_eq!(decision(&e, resource), Some(expect), "{resource}: {e}");
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
    assert!(text.contains("withheld Condition/cond-0009-2 by data-scope (part2)"), "{text}");
    assert!(text.contains("answer   404"), "{text}");
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
