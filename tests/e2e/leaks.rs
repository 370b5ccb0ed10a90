//! One regression test per class of leak the security review found
//!, each asserting on the raw bytes the client receives.
//! The hidden data is `tests/noninterference/` (see its README): a sandbox
//! holds D plus the hidden overlay and runs in noise mode; the client is
//! org-grace. `tests/e2e/noninterference.rs` proves the general rule
//! differentially; these pin each class down by name.

use fhirwall_testkit as support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;

use support::*;

const CLIENT: &str = "grace";

fn facts() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_root().join("tests/noninterference/facts.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

struct World {
    _up: Upstream,
    gw: Gateway,
    token: String,
}

/// The sandbox with every hidden file, noise on, and a gateway for grace.
async fn world() -> World {
    world_with("exclude").await
}

async fn world_with(part2: &str) -> World {
    world_configured(part2, r#"["Organization/org-recovery", "1234567893"]"#).await
}

async fn world_configured(part2: &str, programs: &str) -> World {
    world_full(part2, programs, &[]).await
}

/// [`world_configured`] with `extra` NDJSON lines added upstream.
async fn world_full(part2: &str, programs: &str, extra: &[&str]) -> World {
    let facts = facts();
    let root = repo_root();
    let mut text = String::new();
    for part in facts["load_order"]["B"].as_array().unwrap() {
        text.push_str(std::fs::read_to_string(root.join(part.as_str().unwrap())).unwrap().trim_end());
        text.push('\n');
    }
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    let dir = std::env::temp_dir().join(format!("fhirwall-leaks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data: PathBuf = dir.join(format!("b-{}.ndjson", rand_suffix()));
    std::fs::write(&data, text).unwrap();
    let up = Upstream::sandbox_with_args(&data, &["--noise"]);
    let gw = Gateway::start(
        GatewayConfig::new(up.base_url())
            .client(CLIENT, "Organization/org-grace", "1417987256", &["system/*.read"])
            .extra_toml(&format!(
                "[policy]\npart2 = \"{part2}\"\npart2_programs = {programs}\nfinancial = \"strip\"\n"
            )),
    );
    gw.admin("PUT", "/admin/opt-outs/pat-0291", None).await.assert_status(204);
    let token = gw.token(CLIENT, "system/*.read");
    World { _up: up, gw, token }
}

impl World {
    async fn get(&self, path: &str) -> Resp {
        get_bearer(&self.gw.url(path), &self.token).await
    }

    /// Every page of a search, following `next`.
    async fn pages(&self, path: &str) -> Vec<Resp> {
        let mut out = Vec::new();
        let mut url = Some(self.gw.url(path));
        while let Some(u) = url {
            let resp = get_bearer(&u, &self.token).await;
            resp.assert_status(200);
            url = bundle_link(&resp.json(), "next");
            out.push(resp);
            assert!(out.len() < 100, "paging does not end");
        }
        out
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// Each path answers 404, like a missing resource.
async fn assert_not_found(w: &World, paths: &[&str]) {
    for path in paths {
        let resp = w.get(path).await;
        assert_eq!(resp.status, 404, "{path}: {}", resp.text());
    }
}

#[track_caller]
fn assert_absent(resp: &Resp, needles: &[&str]) {
    let text = resp.text();
    for needle in needles {
        assert!(!text.contains(needle), "{needle:?} in the raw body: {text}");
    }
}

// 1. A page whose upstream entries were all withheld carries no `next`.
#[tokio::test]
async fn class1_no_page_and_no_link_reveals_withheld_entries() {
    let w = world().await;
    // pat-0174 has Part 2 Conditions upstream (hidden overlay) among visible ones.
    let pages = w.pages("Condition?patient=Patient/pat-0174&_count=1").await;
    for page in &pages {
        assert_eq!(bundle_resources(&page.json()).len(), 1, "an empty or short page: {}", page.text());
        assert_absent(page, &["h-cond-sud-01", "F11.20", "HIDDEN-SECRET"]);
        assert!(page.json().get("total").is_none() || pages.len() == 1);
    }
    // The whole answer on one page: a total that counts visible matches only.
    let all = w.get("Condition?patient=Patient/pat-0174&_count=500").await.json();
    assert_eq!(all["total"].as_u64(), Some(pages.len() as u64));
    // Every token has the same length.
    let tokens: Vec<usize> = pages
        .iter()
        .filter_map(|p| bundle_link(&p.json(), "next"))
        .map(|n| n.rsplit('/').next().unwrap().len())
        .collect();
    assert!(tokens.windows(2).all(|w| w[0] == w[1]), "{tokens:?}");
}

// 2. Records that name the Part 2 program only (by reference or NPI) are withheld.
#[tokio::test]
async fn class2_program_records_are_withheld() {
    let w = world().await;
    // Named by reference (also versioned) or by the program's NPI only.
    assert_not_found(
        &w,
        &[
            "Observation/h-obs-p2-02",
            "Encounter/h-enc-p2-02",
            "Procedure/h-proc-p2-02",
            "ExplanationOfBenefit/h-eob-sud-02",
        ],
    )
    .await;
    for search in ["Observation", "Encounter", "Procedure", "ExplanationOfBenefit"] {
        let resp = w.get(&format!("{search}?patient=Patient/pat-0174&_count=500")).await;
        resp.assert_status(200);
        assert_absent(&resp, &["org-recovery", "1234567893", "-p2-02", "h-eob-sud"]);
    }
    // config check warns when Part 2 is on and no program is named.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fhirwall.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\nbase_url = \"http://127.0.0.1:1/fhir\"\n[upstream]\nurl = \"sandbox\"\n\
         [state]\nurl = \"sqlite://x.db\"\n[audit]\ndir = \"audit\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(fhirwall_bin())
        .args(["config", "check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Part 2 program is named"));
}

// 2. A program named by one of its names is matched by both (the other
// is looked up on the upstream's Organization).
#[tokio::test]
async fn class2_a_program_named_once_is_matched_by_both_names() {
    for programs in [r#"["Organization/org-recovery"]"#, r#"["1234567893"]"#] {
        let w = world_configured("exclude", programs).await;
        // By NPI only, by reference only.
        assert_not_found(
            &w,
            &[
                "Observation/h-obs-p2-02",
                "Procedure/h-proc-p2-02",
                "Encounter/h-enc-p2-02",
                "ExplanationOfBenefit/h-eob-sud-01",
            ],
        )
        .await;
    }
}

// 3. Money outside the listed elements never leaves.
#[tokio::test]
async fn class3_no_money_leaves_anywhere() {
    let w = world().await;
    for key in facts()["financial_resources"].as_array().unwrap() {
        let resp = w.get(key.as_str().unwrap()).await;
        resp.assert_status(200);
        assert_absent(
            &resp,
            &["MONEY-SECRET", "urn:iso:std:iso:4217", "\"currency\"", "processNote", "costToBeneficiary"],
        );
    }
}

// 4. A record pointing at a withheld Part 2 record is withheld, in or out of the answer.
#[tokio::test]
async fn class4_pointers_to_withheld_records_are_withheld() {
    let w = world().await;
    assert_not_found(
        &w,
        &[
            "MedicationDispense/h-md-bup-01",
            "Encounter/h-enc-sud-01",
            "Procedure/h-proc-sud-01",
            "Medication/h-med-bup",
        ],
    )
    .await;
    for search in [
        "Encounter?patient=Patient/pat-0174&_count=500",
        "MedicationDispense?patient=Patient/pat-0174&_count=500&_include=MedicationDispense:medication",
        "Procedure?patient=Patient/pat-0174&_count=500",
        "Condition?patient=Patient/pat-0174&_elements=code,subject",
    ] {
        let resp = w.get(search).await;
        resp.assert_status(200);
        assert_absent(&resp, &["h-cond-sud-01", "h-med-bup", "h-obs-p2-01", "HIDDEN-SECRET"]);
    }
}

// 4, `part2 = "redact"`: the references (and their display, the narrative,
// notes) go, the record stays with the REDACTED label; a record whose own
// top-level link is the withheld record is withheld.
#[tokio::test]
async fn class4_redact_mode_removes_the_references() {
    let w = world_with("redact").await;
    for read in ["Encounter/h-enc-sud-01", "Procedure/h-proc-sud-01"] {
        let resp = w.get(read).await;
        resp.assert_status(200);
        assert_absent(&resp, &["h-cond-sud-01", "HIDDEN-SECRET"]);
        assert!(resp.text().contains("REDACTED"), "{}", resp.text());
    }
    assert_eq!(w.get("MedicationDispense/h-md-bup-01").await.status, 404);
}

// 5. History and vread show a version only while it and the current one are visible.
#[tokio::test]
async fn class5_history_shows_only_visible_versions() {
    let w = world().await;
    let history = w.get("Condition/cond-0182-2/_history").await;
    history.assert_status(200);
    let versions: Vec<String> = bundle_resources(&history.json())
        .iter()
        .map(|r| r["meta"]["versionId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(versions, ["3", "1"]);
    assert_absent(&history, &["h-pat-01", "NOISE-SECRET"]);
    assert_eq!(w.get("Condition/cond-0182-2/_history/2").await.status, 404);
    // Moved to a hidden patient: nothing of its past shows.
    assert_not_found(
        &w,
        &[
            "Condition/h-move-cond-01",
            "Condition/h-move-cond-01/_history",
            "Condition/h-move-cond-01/_history/1",
        ],
    )
    .await;
}

// 6. `_revinclude=Provenance:target` does not bring Provenance naming hidden patients.
#[tokio::test]
async fn class6_provenance_naming_hidden_patients_stays_behind() {
    let w = world().await;
    for search in [
        "ExplanationOfBenefit?patient=Patient/pat-0082&_revinclude=Provenance:target&_count=500",
        "Encounter?patient=Patient/pat-0082&_revinclude=Provenance:target&_count=500",
        "Observation?patient=Patient/pat-0082&_revinclude=Provenance:target&_count=500",
    ] {
        let resp = w.get(search).await;
        resp.assert_status(200);
        assert_absent(&resp, &["h-prov-agent", "h-prov-entity", "h-pat-0"]);
    }
}

// 7. Owner and participant links given only by identifier.
#[tokio::test]
async fn class7_identifier_only_links_withhold() {
    let w = world().await;
    let resp = w.get("Observation?patient=Patient/pat-0082&_count=500").await;
    resp.assert_status(200);
    assert_absent(&resp, &["h-obs-perf", "HX7100303-01", "HX7100404-01"]);
    assert_not_found(&w, &["Observation/h-obs-perf-02"]).await;
}

// 7. An identifier-only link that is one of a visible patient's own
// identifiers resolves to that patient: the record stays.
#[tokio::test]
async fn class7_identifier_of_a_visible_patient_resolves() {
    let own = r#"{"resourceType":"Observation","id":"own-ident-01","meta":{"versionId":"1","lastUpdated":"2025-04-20T08:00:00Z"},"status":"final","code":{"text":"Self-reported glucose"},"subject":{"reference":"Patient/pat-0082"},"effectiveDateTime":"2025-04-18T08:05:00Z","performer":[{"type":"Patient","identifier":{"system":"http://example.org/fhirwall/member-id","value":"FW1000369-01"}}]}"#;
    let w = world_full("exclude", r#"["Organization/org-recovery"]"#, &[own]).await;
    let resp = w.get("Observation/own-ident-01").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let search = w.get("Observation?patient=Patient/pat-0082&_count=500").await;
    assert!(search.text().contains("own-ident-01"));
    assert_absent(&search, &["h-obs-perf", "HX7100303-01"]);
}

// 9. Non-resource Bundle members of the upstream are never copied.
#[tokio::test]
async fn class9_bundle_members_are_rebuilt() {
    let w = world().await;
    for path in [
        "Condition?patient=Patient/pat-0001",
        "Condition/cond-0182-2/_history",
        "Coverage?beneficiary=Patient/pat-0001",
    ] {
        let resp = w.get(path).await;
        resp.assert_status(200);
        assert_absent(
            &resp,
            &["NOISE-SECRET", "signature", "\"issues\"", "\"score\"", "alternate", "outcome"],
        );
    }
}

// 10. /metadata is fhirwall's own, read-only.
#[tokio::test]
async fn class10_metadata_is_built_by_fhirwall() {
    let w = world().await;
    let resp = get(&w.gw.url("metadata")).await;
    resp.assert_status(200);
    let cs = resp.json();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_absent(
        &resp,
        &[
            "\"create\"",
            "\"update\"",
            "\"patch\"",
            "\"delete\"",
            "transaction",
            "\"batch\"",
            "history-system",
            "_filter",
        ],
    );
    assert!(!resp.text().contains(w._up.base_url()), "the upstream's URL in metadata");
    let codes: Vec<&str> = cs["rest"][0]["resource"][0]["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["read", "vread", "history-instance", "search-type"]);
}

// --- classes 8 and 10 against an upstream that misbehaves on purpose --------

/// A one-thread HTTP upstream answering every request with `body` (200, JSON).
fn scripted_upstream(body: &'static str) -> String {
    routed_upstream(move |_| ("200 OK", body))
}

/// A one-thread HTTP upstream answering by request target (`/fhir/...`).
fn routed_upstream(route: impl Fn(&str) -> (&'static str, &'static str) + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let target = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if line == "\r\n" {
                    break;
                }
                line.clear();
            }
            let (status, body) = route(&target);
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/fhir")
}

/// A gateway for grace in front of `base` whose only attributed patient is
/// p1 (a stored roster: the scripted upstreams hold no Groups), and a token.
async fn gateway_attributing_p1(base: String) -> (Gateway, String) {
    let gw = Gateway::start(
        GatewayConfig::new(base)
            .client(CLIENT, "Organization/org-grace", "1417987256", &["system/*.read"])
            .extra_toml("[attribution]\nsource = \"store\"\n"),
    );
    let roster = serde_json::json!({"resourceType": "Group", "id": "g1", "type": "person", "actual": true,
        "managingEntity": {"reference": "Organization/org-grace"}, "member": [{"entity": {"reference": "Patient/p1"}}]});
    gw.admin("POST", "/admin/attribution", Some(&roster)).await.assert_status(200);
    let token = gw.token(CLIENT, "system/*.read");
    (gw, token)
}

// 8. Duplicate member names at any depth are the upstream's fault: 502, no byte of it.
#[tokio::test]
async fn class8_duplicate_keys_at_any_depth_are_502() {
    for body in [
        r#"{"resourceType":"Patient","id":"p1","name":[{"family":"Visible","family":"SECRET-DUP"}]}"#,
        r#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"Observation","id":"o","subject":{"reference":"Patient/p1","reference":"Patient/SECRET-DUP"}}}]}"#,
        r#"{"resourceType":"Patient","id":"p1","\u0069d":"SECRET-DUP"}"#,
    ] {
        let base = scripted_upstream(body);
        let (gw, token) = gateway_attributing_p1(base).await;
        for path in ["Patient/p1", "Observation?patient=Patient/p1"] {
            let resp = get_bearer(&gw.url(path), &token).await;
            assert_eq!(resp.status, 502, "{path}: {}", resp.text());
            assert_operation_outcome(&resp);
            assert!(!resp.text().contains("SECRET-DUP"));
        }
        // The strict reader refused it (not some other check).
        assert!(gw.log().contains("appears twice"), "{}", gw.log());
    }
}

// 10. Anything but a CapabilityStatement from the upstream's metadata is a 502.
#[tokio::test]
async fn class10_metadata_that_is_not_a_capability_statement_is_502() {
    let base = scripted_upstream(
        r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception","diagnostics":"SECRET-UPSTREAM"}]}"#,
    );
    let gw = Gateway::start(GatewayConfig::new(base));
    let resp = get(&gw.url("metadata")).await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert!(!resp.text().contains("SECRET-UPSTREAM"));
}

// 4. A referenced record the upstream cannot search by `_id` is read on its own:
// a referrer of a Part 2 record is withheld all the same (never "unknown, so kept").
#[tokio::test]
async fn class4_targets_are_read_one_by_one_when_the_upstream_cannot_search_them() {
    let base = routed_upstream(|target| match target {
        "/fhir/Encounter/e1" => (
            "200 OK",
            r#"{"resourceType":"Encounter","id":"e1","status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/p1"},"reasonReference":[{"reference":"Condition/c1"}]}"#,
        ),
        "/fhir/Condition/c1" => (
            "200 OK",
            r#"{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"},"code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"F11.20"}]}}"#,
        ),
        t if t.starts_with("/fhir/Condition?") => (
            "400 Bad Request",
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-supported"}]}"#,
        ),
        _ => (
            "404 Not Found",
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}"#,
        ),
    });
    let (gw, token) = gateway_attributing_p1(base).await;
    let resp = get_bearer(&gw.url("Encounter/e1"), &token).await;
    assert_eq!(resp.status, 404, "{}", resp.text());
    assert!(!resp.text().contains("c1"));
}
