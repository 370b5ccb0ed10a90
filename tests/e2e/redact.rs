//! Redaction end to end: the real `fhirwall serve` in front of the built-in
//! sandbox (the synthetic payer dataset), four provider organizations each
//! asking for everything of every attributed member who has sensitive,
//! pre-2016 or drug prior-authorization records, in both `policy.part2`
//! modes. The raw response bodies are searched for the bytes that must not
//! leave: Part 2 record ids, SUD codes, the Part 2 program's NPI and
//! Organization, monetary amounts, pre-2016 record ids, drug PA ids. The
//! expectations come from examples/dataset/facts.json, not from fhirwall.

use fhirwall_testkit as support;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use support::*;

const ORGS: [(&str, &str); 4] = [
    ("org-grace", "1417987256"),
    ("org-hopkins", "1526347814"),
    ("org-valley", "1637458922"),
    ("org-lakeside", "1748569039"),
];

/// Types searched per patient.
const TYPES: [&str; 8] = [
    "ExplanationOfBenefit",
    "Condition",
    "Encounter",
    "Observation",
    "Procedure",
    "MedicationDispense",
    "Claim",
    "ClaimResponse",
];

/// Bytes that never leave: SUD diagnosis codes (as codes), the SUD
/// procedure codes and medications the dataset uses, the program.
const NEVER: [&str; 19] = [
    "\"code\":\"F10.",
    "\"code\":\"F11.",
    "\"code\":\"F12.",
    "\"code\":\"F13.",
    "\"code\":\"F14.",
    "\"code\":\"F15.",
    "\"code\":\"F16.",
    "\"code\":\"F18.",
    "\"code\":\"F19.",
    "\"code\":\"H0001\"",
    "\"code\":\"H0004\"",
    "\"code\":\"H0020\"",
    "12496-1208",
    "00054-4538",
    "65757-0300",
    "1234567893",
    "org-recovery",
    "loc-recovery",
    "Harbor Recovery",
];

/// The program's directory entries: they name it, or only its records name them.
const PROGRAM_DIRECTORY: [&str; 6] = [
    "Organization/org-recovery",
    "Location/loc-recovery",
    "Practitioner/prac-18",
    "Practitioner/prac-19",
    "PractitionerRole/role-18",
    "PractitionerRole/role-19",
];

/// Financial members that never leave in claims data.
const MONEY: [&str; 6] =
    ["\"amount\"", "\"payment\"", "\"unitPrice\"", "\"net\"", "\"benefitBalance\"", "\"payee\""];

struct Facts {
    raw: Value,
}

impl Facts {
    fn load() -> Facts {
        let text =
            std::fs::read_to_string(repo_root().join("examples/dataset/facts.json")).expect("facts.json");
        Facts { raw: serde_json::from_str(&text).expect("facts.json is JSON") }
    }

    fn list(&self, path: &[&str]) -> BTreeSet<String> {
        let mut v = &self.raw;
        for p in path {
            v = &v[*p];
        }
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
    }

    fn visible(&self, org: &str) -> BTreeSet<String> {
        self.list(&["attribution", org, "visible"])
    }

    fn drug_pas(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for pa in self.raw["prior_auth"].as_array().unwrap().iter().filter(|pa| pa["drug"] == true) {
            for key in ["eob", "claim", "claim_response"] {
                if let Some(id) = pa[key].as_str() {
                    out.insert(id.to_owned());
                }
            }
        }
        out
    }
}

/// The patient a dataset id belongs to (`eob-0002-3` -> `pat-0002`).
fn patient_of_id(key: &str) -> Option<String> {
    let id = key.split('/').nth(1)?;
    let digits = id.split('-').find(|s| s.len() >= 4 && s.bytes().all(|b| b.is_ascii_digit()))?;
    Some(format!("pat-{digits}"))
}

/// Is `Type/id` (or its bare id) in the text, as a whole id?
fn names(text: &str, key: &str) -> bool {
    let id = key.split('/').nth(1).unwrap();
    text.contains(&format!("\"id\":\"{id}\"")) || text.contains(&format!("{key}\""))
}

struct Run {
    gw: Gateway,
    tokens: BTreeMap<&'static str, String>,
}

fn start(mode: &str) -> Run {
    let mut config = GatewayConfig::new("sandbox").extra_toml(&format!(
        "[policy]\npart2 = \"{mode}\"\npart2_programs = [\"Organization/org-recovery\", \"1234567893\"]\n"
    ));
    for (org, npi) in ORGS {
        config =
            config.client(&format!("{org}-ehr"), &format!("Organization/{org}"), npi, &["system/*.read"]);
    }
    let gw = Gateway::start(config);
    let tokens =
        ORGS.iter().map(|(org, _)| (*org, gw.token(&format!("{org}-ehr"), "system/*.read"))).collect();
    Run { gw, tokens }
}

/// Every body a provider organization gets when it asks for all the
/// sensitive members' records: (request, status, body).
async fn harvest(run: &Run, facts: &Facts, org: &str) -> Vec<(String, u16, String)> {
    let interesting: BTreeSet<String> = facts
        .list(&["part2", "patients"])
        .into_iter()
        .chain(facts.list(&["pre_2016"]).iter().filter_map(|k| patient_of_id(k)))
        .chain(facts.drug_pas().iter().filter_map(|k| patient_of_id(k)))
        .collect();
    let token = &run.tokens[org];
    let mut out = Vec::new();
    for patient in facts.visible(org).intersection(&interesting) {
        for t in TYPES {
            let mut url = run.gw.url(&format!("{t}?patient=Patient/{patient}&_count=200"));
            if t == "ExplanationOfBenefit" {
                url.push_str(
                    "&_include=ExplanationOfBenefit:provider&_include=ExplanationOfBenefit:care-team\
                     &_revinclude=Provenance:target",
                );
            }
            let resp = get_bearer(&url, token).await;
            assert_eq!(resp.status, 200, "{org} {url}: {}", resp.text());
            out.push((url, resp.status, resp.text()));
        }
    }
    assert!(!out.is_empty(), "{org} sees none of the sensitive members");
    out
}

fn assert_clean(what: &str, body: &str, withheld: &BTreeSet<String>) {
    for never in NEVER {
        assert!(!body.contains(never), "{what}: {never:?} left:\n{body}");
    }
    for key in withheld {
        assert!(!names(body, key), "{what}: withheld {key} left:\n{body}");
    }
    if body.contains("\"ExplanationOfBenefit\"") || body.contains("\"Claim") {
        for money in MONEY {
            assert!(!body.contains(money), "{what}: {money} left:\n{body}");
        }
    }
}

fn bundle_total_matches(body: &str) {
    let bundle: Value = serde_json::from_str(body).unwrap();
    if let Some(total) = bundle["total"].as_u64() {
        let matches = bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["search"]["mode"].as_str().is_none_or(|m| m == "match"))
            .count() as u64;
        assert_eq!(total, matches, "total counts only what left: {body}");
    }
}

#[tokio::test]
async fn exclude_mode_leaves_no_sensitive_byte() {
    let facts = Facts::load();
    let run = start("exclude");
    let mut withheld: BTreeSet<String> = BTreeSet::new();
    for category in ["labelled", "program", "program_npi_only", "sud_code_unlabelled"] {
        withheld.extend(facts.list(&["part2", category]));
    }
    withheld.extend(facts.list(&["pre_2016"]));
    withheld.extend(facts.drug_pas());
    withheld.extend(PROGRAM_DIRECTORY.iter().map(|s| s.to_string()));
    let mut bodies = 0;
    for (org, _) in ORGS {
        for (url, _, body) in harvest(&run, &facts, org).await {
            assert_clean(&format!("{org} {url}"), &body, &withheld);
            bundle_total_matches(&body);
            bodies += 1;
        }
    }
    assert!(bodies > 100, "{bodies}");

    // Reads of withheld records answer 404, like a missing resource.
    let missing_body =
        get_bearer(&run.gw.url("Condition/no-such-condition"), &run.tokens["org-hopkins"]).await;
    assert_eq!(missing_body.status, 404);
    let mut reads = 0;
    for key in &withheld {
        let Some(patient) = patient_of_id(key) else { continue };
        let Some((org, _)) = ORGS.iter().find(|(org, _)| facts.visible(org).contains(&patient)) else {
            continue;
        };
        let resp = get_bearer(&run.gw.url(key), &run.tokens[org]).await;
        assert_eq!(resp.status, 404, "{org} read {key}: {}", resp.text());
        assert_eq!(
            resp.text(),
            missing_body.text().replace("no-such-condition", ""),
            "{key}: a 404 like any other"
        );
        reads += 1;
    }
    assert!(reads > 50, "{reads}");

    // Not Part 2: tobacco (F17) records leave, amounts stripped.
    let tobacco = facts.list(&["part2", "tobacco_not_part2"]);
    let mut seen = 0;
    for key in &tobacco {
        let patient = patient_of_id(key).unwrap();
        let Some((org, _)) = ORGS.iter().find(|(org, _)| facts.visible(org).contains(&patient)) else {
            continue;
        };
        let resp = get_bearer(&run.gw.url(key), &run.tokens[org]).await;
        resp.assert_status(200);
        assert!(resp.text().contains("\"code\":\"F17."), "{key}");
        assert_clean(key, &resp.text(), &withheld);
        seen += 1;
    }
    assert!(seen > 0);

    // The program's own directory entry never leaves.
    let org = get_bearer(&run.gw.url("Organization/org-recovery"), &run.tokens["org-hopkins"]).await;
    assert_eq!(org.status, 404, "{}", org.text());

    // A service prior authorization leaves with its decision; amounts do not.
    let pa = facts.raw["prior_auth"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pa| pa["drug"] == false && pa["denial_reason"].is_string() && pa["patient"] == "pat-0021")
        .expect("a denied service PA of pat-0021");
    let key = pa["eob"].as_str().unwrap();
    let resp = get_bearer(&run.gw.url(key), &run.tokens["org-grace"]).await;
    resp.assert_status(200);
    let text = resp.text();
    // Free text goes with the money (DESIGN.md financial scope: `text`,
    // `processNote`, `note`); the structured decision stays.
    assert!(text.contains("denialreason") && text.contains("extension-reviewAction"), "{text}");
    assert!(!text.contains("processNote"), "{text}");
    assert_clean(key, &text, &withheld);

    // `_elements` cannot hide what redaction decides on.
    let resp = get_bearer(
        &run.gw.url("ExplanationOfBenefit?patient=Patient/pat-0002&_elements=id,patient"),
        &run.tokens["org-hopkins"],
    )
    .await;
    resp.assert_status(200);
    assert_clean("_elements", &resp.text(), &withheld);
    let bundle = resp.json();
    for entry in bundle["entry"].as_array().into_iter().flatten() {
        let r = &entry["resource"];
        assert!(r.get("item").is_none(), "subset applied: {r}");
        assert!(r["meta"]["tag"].as_array().unwrap().iter().any(|t| t["code"] == "SUBSETTED"));
    }

    // The audit record counts what was withheld and stripped.
    let resp = get_bearer(
        &run.gw.url("ExplanationOfBenefit?patient=Patient/pat-0002&_count=200"),
        &run.tokens["org-hopkins"],
    )
    .await;
    resp.assert_status(200);
    let request_id = resp.header("x-request-id").unwrap().to_owned();
    let record = audit_record(&run.gw, &request_id);
    let part2 = detail(&record, "suppressed.part2").and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
    let expected = facts
        .list(&["part2", "program"])
        .iter()
        .chain(&facts.list(&["part2", "program_npi_only"]))
        .chain(&facts.list(&["part2", "labelled"]))
        .filter(|k| k.starts_with("ExplanationOfBenefit/eob-0002-"))
        .count() as u32;
    assert_eq!(part2, expected, "{record}");
    assert!(detail(&record, "redacted.financial").is_some(), "{record}");
    assert!(!record.to_string().contains("F14"), "no codes in the audit record");
}

#[tokio::test]
async fn redact_mode_keeps_redactable_records_without_their_sensitive_parts() {
    let facts = Facts::load();
    let run = start("redact");
    let mut withheld: BTreeSet<String> = BTreeSet::new();
    for category in ["labelled", "program", "program_npi_only"] {
        withheld.extend(facts.list(&["part2", category]));
    }
    let code_only = facts.list(&["part2", "sud_code_unlabelled"]);
    withheld.extend(code_only.iter().filter(|k| k.starts_with("Condition/")).cloned());
    withheld.extend(facts.list(&["pre_2016"]));
    withheld.extend(facts.drug_pas());
    withheld.extend(PROGRAM_DIRECTORY.iter().map(|s| s.to_string()));
    let mut redacted_seen = BTreeSet::new();
    for (org, _) in ORGS {
        for (url, _, body) in harvest(&run, &facts, org).await {
            assert_clean(&format!("{org} {url}"), &body, &withheld);
            bundle_total_matches(&body);
            let bundle: Value = serde_json::from_str(&body).unwrap();
            for entry in bundle["entry"].as_array().into_iter().flatten() {
                let r = &entry["resource"];
                let key = format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
                let labelled = r["meta"]["security"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|c| c["code"] == "REDACTED"));
                if code_only.contains(&key) {
                    assert!(labelled, "{key} left redacted, labelled REDACTED: {r}");
                    assert!(r.get("text").is_none());
                    redacted_seen.insert(key);
                } else {
                    assert!(!labelled, "{key} was not redacted: {r}");
                }
            }
        }
    }
    let expected: BTreeSet<String> = code_only
        .iter()
        .filter(|k| k.starts_with("ExplanationOfBenefit/") && !facts.list(&["pre_2016"]).contains(*k))
        .filter(|k| {
            let patient = patient_of_id(k).unwrap();
            ORGS.iter().any(|(org, _)| facts.visible(org).contains(&patient))
        })
        .cloned()
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(redacted_seen, expected, "every visible code-only EOB leaves redacted");

    // A read of a redacted EOB is redacted the same way.
    let key = expected.iter().next().unwrap();
    let patient = patient_of_id(key).unwrap();
    let (org, _) = ORGS.iter().find(|(org, _)| facts.visible(org).contains(&patient)).unwrap();
    let resp = get_bearer(&run.gw.url(key), &run.tokens[org]).await;
    resp.assert_status(200);
    assert!(resp.text().contains("\"REDACTED\""));
    assert_clean(key, &resp.text(), &withheld);
    let record = audit_record(&run.gw, resp.header("x-request-id").unwrap());
    assert_eq!(detail(&record, "redacted.part2").as_deref(), Some("1"), "{record}");
    // Labelled and program records stay withheld in redact mode too.
    for key in facts.list(&["part2", "labelled"]).iter().take(10) {
        let patient = patient_of_id(key).unwrap();
        let Some((org, _)) = ORGS.iter().find(|(org, _)| facts.visible(org).contains(&patient)) else {
            continue;
        };
        let resp = get_bearer(&run.gw.url(key), &run.tokens[org]).await;
        assert_eq!(resp.status, 404, "{key}");
    }
}

/// The audit event of a request, by its X-Request-Id.
fn audit_record(gw: &Gateway, request_id: &str) -> Value {
    let dir = gw.audit_dir();
    for _ in 0..50 {
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            if !(name.starts_with("audit-") && name.ends_with(".ndjson")) {
                continue;
            }
            for line in std::fs::read_to_string(&file).unwrap().lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                if line.contains(request_id) {
                    return v["event"].clone();
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("no audit record for {request_id}");
}

fn detail(event: &Value, name: &str) -> Option<String> {
    event["entity"].as_array()?.iter().find(|e| e["type"]["code"] == "XrequestId")?["detail"]
        .as_array()?
        .iter()
        .find(|d| d["type"] == name)
        .and_then(|d| d["valueString"].as_str())
        .map(str::to_owned)
}

#[test]
fn invalid_policy_data_stops_startup_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies/part2")).unwrap();
    std::fs::write(dir.path().join("policies/part2/icd10cm.txt"), "F10 F11\n").unwrap();
    let base = "[server]\nlisten = \"127.0.0.1:1\"\nbase_url = \"http://127.0.0.1:1/fhir\"\n[upstream]\nurl = \"sandbox\"\n";
    let cases = [
        (format!("{base}[policy]\ndir = \"policies\"\n"), "part2/icd10cm.txt"),
        (format!("{base}[policy]\ndir = \"no-such-dir\"\n"), "not a directory"),
        (format!("{base}[policy]\npart2_programs = [\"Harbor Recovery\"]\n"), "policy.part2_programs"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, text).unwrap();
        assert_config_refused(&path, needle);
    }
}
