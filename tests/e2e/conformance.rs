//! The resources fhirwall writes itself, checked by an independent validator
//! (fhir.resources from PyPI, R4 structures: tests/clients/validate_fhir.py):
//! the CapabilityStatement, an OperationOutcome of every refusal class, the
//! searchset Bundle envelope, a rebuilt attribution Group, `$member-match`'s
//! Parameters, and the AuditEvents of the audit log. Each is taken from the
//! real binary over HTTP (or from its audit directory).

use fhirwall_testkit as support;

use std::process::Command;

use serde_json::{Value, json};
use support::*;

const GRACE: (&str, &str, &str) = ("grace-ehr", "Organization/org-grace", "1417987256");

fn matcher() -> String {
    let path = repo_root().join("plugins/dist/default_matcher.wasm");
    assert!(path.is_file(), "{} is missing: build the plugins first (plugins/build.sh)", path.display());
    format!(
        "[[plugins]]\nname = \"matcher\"\nworld = \"matcher\"\npath = {:?}\nmemory_mb = 64\ntimeout_ms = 200\n",
        path.display().to_string()
    )
}

#[tokio::test]
async fn every_resource_fhirwall_builds_is_valid_r4() {
    let gw = Gateway::start(
        GatewayConfig::new("sandbox")
            .client(GRACE.0, GRACE.1, GRACE.2, &["system/*.read"])
            .client("obs-only", GRACE.1, GRACE.2, &["system/Observation.read"])
            .extra_toml(&matcher()),
    );
    let token = gw.token(GRACE.0, "system/*.read");
    let obs_only = gw.token("obs-only", "system/Observation.read");
    let bearer = format!("Bearer {token}");
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut keep = |name: &str, resp: &Resp, status: u16, resource_type: &str| {
        assert_eq!(resp.status, status, "{name}: {}", resp.text());
        let body = resp.json();
        assert_eq!(body["resourceType"], resource_type, "{name}: {body}");
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, body.to_string()).unwrap();
        files.push(path);
        body
    };

    // The CapabilityStatement.
    keep("metadata", &get(&gw.url("metadata")).await, 200, "CapabilityStatement");
    // An OperationOutcome for each class of refusal.
    keep("oo-401", &get(&gw.url("Patient/pat-0001")).await, 401, "OperationOutcome");
    keep("oo-404", &get_bearer(&gw.url("Patient/pat-0004"), &token).await, 404, "OperationOutcome");
    keep("oo-403", &get_bearer(&gw.url("Patient/pat-0001"), &obs_only).await, 403, "OperationOutcome");
    keep(
        "oo-400",
        &get_bearer(&gw.url("Condition?patient=pat-0001&_nonsense=1"), &token).await,
        400,
        "OperationOutcome",
    );
    let xml = get_with(
        &gw.url("Patient/pat-0001"),
        &[("Authorization", &bearer), ("Accept", "application/fhir+xml")],
    )
    .await;
    keep("oo-406", &xml, 406, "OperationOutcome");
    let write = request("DELETE", &gw.url("Patient/pat-0001"), &[("Authorization", &bearer)], None).await;
    assert!(write.status == 405 || write.status == 403, "a write: {}", write.status);
    keep("oo-write", &write, write.status, "OperationOutcome");
    // The searchset Bundle fhirwall writes (with the dataset's resources in it).
    let bundle = keep(
        "searchset",
        &get_bearer(&gw.url("Condition?patient=pat-0001&_count=2"), &token).await,
        200,
        "Bundle",
    );
    assert_eq!(bundle["type"], "searchset");
    // The attribution Group, rebuilt with the members grace may see.
    keep("group", &get_bearer(&gw.url("Group/grp-grace"), &token).await, 200, "Group");
    // $member-match: the answer and a refusal.
    let member = |family: &str, birth: &str, card: &str| {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "MemberPatient", "resource": {"resourceType": "Patient", "id": "1",
                "name": [{"family": family, "given": ["Martha"]}], "gender": "female", "birthDate": birth}},
            {"name": "CoverageToMatch", "resource": {"resourceType": "Coverage", "id": "card", "status": "active",
                "beneficiary": {"reference": "Patient/1"}, "subscriberId": card,
                "payor": [{"display": "Fhirwall Example Health Plan"}]}}
        ]})
    };
    let url = gw.url("Patient/$member-match");
    keep(
        "member-match",
        &post_json(&url, &[("Authorization", &bearer)], &member("Grantham", "1958-06-13", "FW1000105")).await,
        200,
        "Parameters",
    );
    keep(
        "member-match-422",
        &post_json(&url, &[("Authorization", &bearer)], &member("Nobody", "1901-02-03", "XX0000000")).await,
        422,
        "OperationOutcome",
    );

    // The AuditEvents of every request above.
    let mut events = String::new();
    for entry in std::fs::read_dir(gw.audit_dir()).unwrap().filter_map(|e| e.ok()) {
        for line in std::fs::read_to_string(entry.path()).unwrap_or_default().lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            events.push_str(&record["event"].to_string());
            events.push('\n');
        }
    }
    assert!(events.lines().count() >= 12, "too few audit records: {}", events.lines().count());
    let path = dir.path().join("audit-events.ndjson");
    std::fs::write(&path, events).unwrap();
    files.push(path);

    let out = Command::new(venvs::fhir_validator_python())
        .arg(repo_root().join("tests/clients/validate_fhir.py"))
        .args(&files)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "not valid R4:\n{report}{}", String::from_utf8_lossy(&out.stderr));
    for kind in ["CapabilityStatement", "OperationOutcome", "Bundle", "Group", "Parameters", "AuditEvent"] {
        assert!(report.contains(&format!("ok {kind}/")), "{kind} not validated:\n{report}");
    }
}
