//! Bulk export end to end: the real `fhirwall serve` in front of the built-in
//! sandbox (the synthetic payer dataset), provider clients with tokens from
//! `fhirwall token`, every kick-off parameter and refusal, the status,
//! manifest, download, cancel and expiry endpoints, an opt-out set while a
//! job runs, and kill -9 in the middle of a job.
//!
//! The ground truth of an export is what the same client gets from
//! on-demand searches (`Type?patient=Patient/X`, every page) for each member
//! it may see: the export must return exactly those resources, each once,
//! and the raw bytes of every file are searched for what never leaves
//! (Part 2 codes and program, withheld record ids, money). Facts about the
//! dataset come from examples/dataset/facts.json, not from fhirwall.

use fhirwall_testkit as support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const GRACE: (&str, &str) = ("org-grace", "1417987256");
const HOPKINS: (&str, &str) = ("org-hopkins", "1526347814");

/// Types exported in the comparisons (payer and clinical).
const TYPES: [&str; 7] =
    ["Patient", "Coverage", "ExplanationOfBenefit", "Claim", "Condition", "Observation", "Encounter"];

/// Bytes that never leave (see tests/e2e/redact.rs): SUD codes and the program.
const NEVER: [&str; 8] = [
    "\"code\":\"F10.",
    "\"code\":\"F11.",
    "\"code\":\"H0001\"",
    "\"code\":\"H0020\"",
    "1234567893",
    "org-recovery",
    "Harbor Recovery",
    "\"unitPrice\"",
];

fn facts() -> Value {
    let text = std::fs::read_to_string(repo_root().join("examples/dataset/facts.json")).expect("facts.json");
    serde_json::from_str(&text).expect("facts.json is JSON")
}

fn list(v: &Value) -> BTreeSet<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
}

fn visible(facts: &Value, org: &str) -> BTreeSet<String> {
    list(&facts["attribution"][org]["visible"])
}

/// Ids withheld from every answer (Part 2, pre-2016 service dates).
fn withheld(facts: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for category in ["labelled", "program", "program_npi_only", "sud_code_unlabelled"] {
        out.extend(list(&facts["part2"][category]));
    }
    out.extend(list(&facts["pre_2016"]));
    out
}

struct Run {
    gw: Gateway,
    grace: String,
    hopkins: String,
}

/// A gateway in front of the sandbox with two provider clients; `export`
/// is TOML for the `[export]` table.
fn start(export: &str) -> Run {
    start_on("sandbox", export)
}

fn start_on(upstream: &str, export: &str) -> Run {
    let config = GatewayConfig::new(upstream)
        .extra_toml(
            "[policy]\npart2 = \"exclude\"\npart2_programs = [\"Organization/org-recovery\", \"1234567893\"]\n",
        )
        .extra_toml(&format!("[export]\n{export}\n"))
        // The comparisons against Medplum can outlast the default 300 s
        // token (CI saw 304 s): what is tested here is the export, not expiry.
        .extra_toml("[auth]\ntoken_ttl_s = 3600\n")
        .client("grace-ehr", "Organization/org-grace", GRACE.1, &["system/*.read"])
        .client("hopkins-ehr", "Organization/org-hopkins", HOPKINS.1, &["system/*.read"]);
    let gw = Gateway::start(config);
    let grace = gw.token("grace-ehr", "system/*.read");
    let hopkins = gw.token("hopkins-ehr", "system/*.read");
    Run { gw, grace, hopkins }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn kickoff(gw: &Gateway, token: &str, path_and_query: &str) -> Resp {
    let auth = bearer(token);
    request(
        "GET",
        &gw.url(path_and_query),
        &[("Authorization", &auth), ("Prefer", "respond-async"), ("Accept", "application/fhir+json")],
        None,
    )
    .await
}

/// Poll a status URL as a well-behaved client (honouring Retry-After)
/// until the manifest arrives; returns it and the response.
async fn wait_for_manifest(status_url: &str, token: &str) -> (Value, Resp) {
    let deadline = Instant::now() + Duration::from_secs(240);
    let auth = bearer(token);
    loop {
        let resp = request("GET", status_url, &[("Authorization", &auth)], None).await;
        match resp.status {
            200 => return (resp.json(), resp),
            202 | 429 => {
                let wait: u64 = resp.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After");
                assert!((1..=10).contains(&wait), "a short Retry-After: {wait}");
                assert!(Instant::now() < deadline, "the export did not finish in time");
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            other => panic!("status {other}: {}", resp.text()),
        }
    }
}

/// Every file of a manifest's `output`, as (type, raw text).
async fn download_all(manifest: &Value, token: &str) -> Vec<(String, String)> {
    let auth = bearer(token);
    let mut out = Vec::new();
    for file in manifest["output"].as_array().expect("output") {
        let url = file["url"].as_str().expect("url");
        let resp = request("GET", url, &[("Authorization", &auth)], None).await;
        resp.assert_status(200);
        assert_eq!(resp.content_type(), Some("application/fhir+ndjson"));
        let text = resp.text();
        let lines = text.lines().count() as u64;
        assert_eq!(file["count"].as_u64(), Some(lines), "count matches the lines of {url}");
        out.push((file["type"].as_str().unwrap().to_owned(), text));
    }
    out
}

/// The resources of the files by `Type/id`; panics on a line twice or a
/// line of another type than its file says.
fn by_key(files: &[(String, String)]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (resource_type, text) in files {
        for line in text.lines() {
            let resource: Value = serde_json::from_str(line).expect("each line is one JSON resource");
            assert_eq!(resource["resourceType"].as_str(), Some(resource_type.as_str()));
            let key = format!("{resource_type}/{}", resource["id"].as_str().unwrap());
            assert!(out.insert(key.clone(), resource).is_none(), "{key} written twice");
        }
    }
    out
}

/// What on-demand searches give `token` for each of `patients`, per type.
async fn on_demand(
    gw: &Gateway,
    token: &str,
    types: &[&str],
    patients: &BTreeSet<String>,
) -> BTreeMap<String, Value> {
    on_demand_where(gw, token, types, patients, &|_| String::new()).await
}

/// [`on_demand`] with more criteria per type (`&name=value...`).
async fn on_demand_where(
    gw: &Gateway,
    token: &str,
    types: &[&str],
    patients: &BTreeSet<String>,
    criteria: &dyn Fn(&str) -> String,
) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for patient in patients {
        for t in types {
            let extra = criteria(t);
            let mut url = if *t == "Patient" {
                gw.url(&format!("Patient?_id={patient}&_count=200{extra}"))
            } else {
                gw.url(&format!("{t}?patient=Patient/{patient}&_count=200{extra}"))
            };
            loop {
                let resp = get_bearer(&url, token).await;
                resp.assert_status(200);
                let bundle = resp.json();
                for resource in bundle_resources(&bundle) {
                    let key = format!(
                        "{}/{}",
                        resource["resourceType"].as_str().unwrap(),
                        resource["id"].as_str().unwrap()
                    );
                    out.insert(key, resource);
                }
                match bundle_link(&bundle, "next") {
                    Some(next) => url = next,
                    None => break,
                }
            }
        }
    }
    out
}

/// Files below `dir` (an object store leaves empty directories behind).
fn files_under(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 }).sum()
}

fn assert_clean(what: &str, text: &str, withheld: &BTreeSet<String>) {
    for never in NEVER {
        assert!(!text.contains(never), "{what}: {never:?} left");
    }
    for id in withheld {
        let id = id.split('/').nth(1).unwrap_or(id);
        assert!(!text.contains(&format!("\"id\":\"{id}\"")), "{what}: withheld {id} left");
    }
}

#[tokio::test]
async fn an_export_returns_exactly_what_on_demand_searches_return_and_nothing_hidden() {
    let run = start("batch_patients = 20\nfile_max_bytes = 65536");
    export_equals_on_demand(&run).await;
}

/// The same against Medplum's engine (a server nobody here wrote), loaded
/// with the same dataset.
#[tokio::test]
async fn an_export_from_medplum_returns_exactly_what_on_demand_searches_return() {
    let up = Upstream::medplum(&[&payer_dataset()]);
    let run = start_on(up.base_url(), "batch_patients = 20\nfile_max_bytes = 65536");
    export_equals_on_demand(&run).await;
}

async fn export_equals_on_demand(run: &Run) {
    let facts = facts();
    let types = TYPES.join(",");
    let resp = kickoff(&run.gw, &run.grace, &format!("Group/grp-grace/$export?_type={types}")).await;
    resp.assert_status(202);
    let status_url = resp.header("content-location").expect("Content-Location").to_owned();
    assert!(status_url.starts_with(&run.gw.base_url()), "{status_url}");
    let (manifest, done) = wait_for_manifest(&status_url, &run.grace).await;
    assert!(
        done.header("expires").is_some_and(|e| e.ends_with(" GMT")),
        "Expires: {:?}",
        done.header("expires")
    );
    assert_eq!(manifest["requiresAccessToken"], true);
    assert!(manifest["request"].as_str().unwrap().contains("Group/grp-grace/$export"));
    assert!(manifest["transactionTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(manifest["error"], serde_json::json!([]), "{manifest}");

    let files = download_all(&manifest, &run.grace).await;
    // Cut at 64 KiB: some type needs more than one file.
    let observation_files = files.iter().filter(|(t, _)| t == "Observation").count();
    assert!(observation_files > 1, "Observation files: {observation_files}");
    let withheld = withheld(&facts);
    for (t, text) in &files {
        assert_clean(t, text, &withheld);
    }
    let exported = by_key(&files);
    let visible = visible(&facts, GRACE.0);
    let truth = on_demand(&run.gw, &run.grace, &TYPES, &visible).await;
    let exported_keys: BTreeSet<&String> = exported.keys().collect();
    let truth_keys: BTreeSet<&String> = truth.keys().collect();
    assert_eq!(
        exported_keys.difference(&truth_keys).collect::<Vec<_>>(),
        Vec::<&&String>::new(),
        "exported, not on demand"
    );
    assert_eq!(
        truth_keys.difference(&exported_keys).collect::<Vec<_>>(),
        Vec::<&&String>::new(),
        "on demand, not exported"
    );
    for (key, resource) in &truth {
        assert_eq!(&exported[key], resource, "{key}: the same text as on demand");
    }
    let patients: BTreeSet<String> =
        exported.keys().filter_map(|k| k.strip_prefix("Patient/")).map(str::to_owned).collect();
    assert_eq!(patients, visible, "exactly the visible members' Patient resources");

    // gzip on request, decoding to the same bytes.
    let first = manifest["output"][0]["url"].as_str().unwrap();
    let auth = bearer(&run.grace);
    let gz = request("GET", first, &[("Authorization", &auth), ("Accept-Encoding", "gzip")], None).await;
    gz.assert_status(200);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz.body[..]), &mut text).unwrap();
    assert_eq!(text, files[0].1);

    // Another client, or no token: the job and its files do not exist.
    let other = bearer(&run.hopkins);
    assert_eq!(request("GET", &status_url, &[("Authorization", &other)], None).await.status, 404);
    assert_eq!(request("GET", first, &[("Authorization", &other)], None).await.status, 404);
    assert_eq!(request("DELETE", &status_url, &[("Authorization", &other)], None).await.status, 404);
    assert_eq!(request("GET", first, &[], None).await.status, 401);

    // The audit log names the export's patients in its completion record.
    let audit = run.gw.admin("GET", "/admin/audit?client=grace-ehr", None).await;
    let text = audit.text();
    let complete = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l.to_string().contains("export-complete"))
        .expect("a completion record");
    for patient in visible.iter().take(5) {
        assert!(complete.to_string().contains(patient), "{patient} in the completion record");
    }

    // Cancel: 202, then the status is 404 and every file is gone.
    let cancelled = request("DELETE", &status_url, &[("Authorization", &auth)], None).await;
    cancelled.assert_status(202);
    assert_eq!(request("GET", &status_url, &[("Authorization", &auth)], None).await.status, 404);
    assert_eq!(request("GET", first, &[("Authorization", &auth)], None).await.status, 404);
    let job = status_url.rsplit('/').next().unwrap();
    assert_eq!(files_under(&run.gw.dir().join("data/exports").join(job)), 0, "the job's files are removed");
}

#[tokio::test]
async fn kick_off_refusals() {
    let run = start("max_jobs_per_client = 1\nupstream_rps = 5");
    let gw = &run.gw;
    let auth = bearer(&run.grace);
    let status = |path: &'static str, prefer: &'static str| {
        let auth = auth.clone();
        async move { request("GET", &gw.url(path), &[("Authorization", &auth), ("Prefer", prefer)], None).await }
    };
    // No Prefer: respond-async.
    assert_eq!(status("Group/grp-grace/$export", "").await.status, 400);
    // Unknown exportType, delta without _since, an unreadable _since, another format.
    for bad in [
        "Group/grp-grace/$export?exportType=provider-everything",
        "Group/grp-grace/$export?exportType=provider-delta",
        "Group/grp-grace/$export?_since=yesterday",
        "Group/grp-grace/$export?_outputFormat=text/csv",
        "Group/grp-grace/$export?_typeFilter=Observation%3Fsubject%3DPatient%2Fpat-0001",
    ] {
        let resp = status(bad, "respond-async").await;
        assert_eq!(resp.status, 400, "{bad}: {}", resp.text());
        assert_operation_outcome(&resp);
    }
    // Another organization's Group, system and Patient level.
    assert_eq!(status("Group/grp-hopkins/$export", "respond-async").await.status, 404);
    assert_eq!(status("$export", "respond-async").await.status, 403);
    assert_eq!(status("Patient/$export", "respond-async").await.status, 403);
    // A type outside the token's scopes.
    let narrow = run.gw.token("grace-ehr", "system/Patient.read");
    let resp = kickoff(gw, &narrow, "Group/grp-grace/$export?_type=Observation").await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    // A token with only the exported types (no Group) may export: Group is
    // checked against the registration, as smart-fetch asks for types only.
    let first = kickoff(gw, &narrow, "Group/grp-grace/$export?_type=Patient").await;
    first.assert_status(202);
    // One job per client here: a second is 429 with Retry-After.
    let second = kickoff(gw, &run.grace, "Group/grp-grace/$export?_type=Patient").await;
    assert_eq!(second.status, 429, "{}", second.text());
    assert!(second.header("retry-after").is_some());
    // Polling sooner than Retry-After: 429.
    let url = first.header("content-location").unwrap();
    let narrow_auth = bearer(&narrow);
    let a = request("GET", url, &[("Authorization", &narrow_auth)], None).await;
    if a.status == 202 {
        assert!(a.header("x-progress").is_some(), "X-Progress");
        let b = request("GET", url, &[("Authorization", &narrow_auth)], None).await;
        assert_eq!(b.status, 429, "{}", b.text());
        assert!(b.header("retry-after").is_some());
    }
    // The same client's other token (the job belongs to the client).
    let (manifest, _) = wait_for_manifest(url, &run.grace).await;
    let files = download_all(&manifest, &narrow).await;
    assert!(files.iter().all(|(t, _)| t == "Patient"));
}

#[tokio::test]
async fn an_opt_out_set_while_the_job_runs_holds_from_the_next_batch() {
    let facts = facts();
    let run = start("batch_patients = 5\nupstream_rps = 20");
    let visible = visible(&facts, GRACE.0);
    let last = visible.iter().next_back().unwrap().clone();
    let resp =
        kickoff(&run.gw, &run.grace, "Group/grp-grace/$davinci-data-export?_type=Patient,Observation").await;
    // $davinci-data-export takes POST only.
    assert_eq!(resp.status, 400);
    let auth = bearer(&run.grace);
    let body = serde_json::json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "exportType", "valueCode": "hl7.fhir.us.davinci-pdex#provider-download"},
            {"name": "_type", "valueString": "Patient,Observation"}
        ]
    });
    let resp = post_json(
        &run.gw.url("Group/grp-grace/$davinci-data-export"),
        &[("Authorization", &auth), ("Prefer", "respond-async")],
        &body,
    )
    .await;
    resp.assert_status(202);
    let status_url = resp.header("content-location").unwrap().to_owned();
    // The last member (sorted: the last batch) opts out after the kick-off.
    run.gw.admin("PUT", &format!("/admin/opt-outs/{last}"), None).await.assert_status(204);
    let (manifest, _) = wait_for_manifest(&status_url, &run.grace).await;
    let files = download_all(&manifest, &run.grace).await;
    let exported = by_key(&files);
    assert!(!exported.contains_key(&format!("Patient/{last}")), "the opted-out member's Patient left");
    let all: String = files.iter().map(|(_, t)| t.as_str()).collect();
    assert!(!all.contains(&format!("Patient/{last}\"")), "a record of the opted-out member left");
    assert_eq!(exported.keys().filter(|k| k.starts_with("Patient/")).count(), visible.len() - 1);
}

#[tokio::test]
async fn a_job_killed_mid_export_resumes_with_nothing_missing_or_twice() {
    let facts = facts();
    let mut run = start("batch_patients = 5\nupstream_rps = 25\nlease_s = 2");
    let types = "Patient,Coverage,Observation";
    let resp = kickoff(&run.gw, &run.grace, &format!("Group/grp-grace/$export?_type={types}")).await;
    resp.assert_status(202);
    let status_url = resp.header("content-location").unwrap().to_owned();
    let auth = bearer(&run.grace);
    // Wait until some batches are checkpointed, then kill -9.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = request("GET", &status_url, &[("Authorization", &auth)], None).await;
        if resp.status == 202
            && let Some(done) = resp.header("x-progress").and_then(|p| p.strip_prefix("patients "))
            && done.split('/').next().and_then(|d| d.parse::<u32>().ok()).is_some_and(|d| d >= 15)
        {
            break;
        }
        assert_ne!(resp.status, 200, "finished before it could be killed");
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let pid = run.gw.pid().unwrap();
    let killed = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    let started = Instant::now();
    run.gw.restart();
    let grace = run.gw.token("grace-ehr", "system/*.read");
    let (manifest, _) = wait_for_manifest(&status_url, &grace).await;
    eprintln!("resumed and finished {:?} after the restart", started.elapsed());
    let files = download_all(&manifest, &grace).await;
    let exported = by_key(&files);
    let visible = visible(&facts, GRACE.0);
    let truth = on_demand(&run.gw, &grace, &["Patient", "Coverage", "Observation"], &visible).await;
    assert_eq!(exported.keys().collect::<Vec<_>>(), truth.keys().collect::<Vec<_>>());
}

#[tokio::test]
async fn finished_exports_expire_and_their_files_go() {
    let run = start("expire_s = 5");
    let resp = kickoff(&run.gw, &run.grace, "Group/grp-grace/$export?_type=Patient").await;
    resp.assert_status(202);
    let status_url = resp.header("content-location").unwrap().to_owned();
    let (manifest, _) = wait_for_manifest(&status_url, &run.grace).await;
    let file = manifest["output"][0]["url"].as_str().unwrap().to_owned();
    let job = status_url.rsplit('/').next().unwrap().to_owned();
    let dir = run.gw.dir().join("data/exports").join(&job);
    assert!(files_under(&dir) > 0);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let auth = bearer(&run.grace);
    assert_eq!(request("GET", &status_url, &[("Authorization", &auth)], None).await.status, 404);
    assert_eq!(request("GET", &file, &[("Authorization", &auth)], None).await.status, 404);
    // The sweeper removes the files.
    let deadline = Instant::now() + Duration::from_secs(20);
    while files_under(&dir) > 0 {
        assert!(Instant::now() < deadline, "expired files are still there");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the third-party bulk client smart-fetch (PyPI) writes, as
/// (type, text) per file it wrote.
fn smart_fetch_run(
    run: &Run,
    types: &str,
    since: Option<&str>,
    type_filters: &[&str],
) -> Vec<(String, String)> {
    let out = tempfile::Builder::new().prefix("fhirwall-smart-fetch-").tempdir().unwrap();
    let keys = run.gw.dir().join("keys");
    let status = std::process::Command::new("bash")
        .arg(repo_root().join("tests/clients/smart_fetch_export.sh"))
        .env("SMART_FETCH", support::venvs::smart_fetch())
        .env("FHIR_URL", run.gw.base_url())
        .env("CLIENT_ID", "grace-ehr")
        .env("KEY_PEM", keys.join("grace-ehr.key.pem"))
        .env("JWKS_PATH", keys.join("grace-ehr.jwks.json"))
        .env("GROUP", "grp-grace")
        .env("TYPES", types)
        .env("SINCE", since.unwrap_or(""))
        .env("TYPE_FILTER", type_filters.join("\n"))
        .env("OUT_DIR", out.path().join("export"))
        .status()
        .expect("running smart-fetch");
    assert!(status.success(), "smart-fetch failed: {status}\ngateway log:\n{}", run.gw.log());
    let mut files: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(out.path().join("export")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // {Type}.NNN.ndjson; smart-fetch's own log.ndjson is not data.
        if let Some(stem) = name.strip_suffix(".ndjson")
            && name.starts_with(|c: char| c.is_ascii_uppercase())
        {
            let resource_type = stem.split('.').next().unwrap().to_owned();
            files.push((resource_type, std::fs::read_to_string(entry.path()).unwrap()));
        }
    }
    assert!(!out.path().join("export/error").exists(), "smart-fetch got an error file");
    files
}

#[tokio::test]
async fn smart_fetch_exports_exactly_what_the_client_may_see() {
    let facts = facts();
    let run = start("batch_patients = 25");
    let visible = visible(&facts, GRACE.0);
    let types = ["Patient", "Condition", "Observation", "Encounter"];
    let withheld = withheld(&facts);

    // Everything of four clinical types.
    let files = smart_fetch_run(&run, &types.join(","), None, &[]);
    for (t, text) in &files {
        assert_clean(t, text, &withheld);
    }
    let exported = by_key(&files);
    let truth = on_demand(&run.gw, &run.grace, &types, &visible).await;
    assert_eq!(exported.keys().collect::<Vec<_>>(), truth.keys().collect::<Vec<_>>());
    assert_eq!(exported, truth, "the lines smart-fetch wrote are the resources on-demand reads return");

    // With _since and two _typeFilters (the client encodes the filter twice).
    let since = "2021-06-01T00:00:00Z";
    let filters = ["Encounter?class=EMER,IMP", "Observation?code=2085-9,4548-4"];
    let files = smart_fetch_run(&run, &types.join(","), Some(since), &filters);
    let exported = by_key(&files);
    let criteria = |t: &str| {
        let filter = match t {
            "Encounter" => "&class=EMER,IMP",
            "Observation" => "&code=2085-9,4548-4",
            _ => "",
        };
        format!("&_lastUpdated=ge{since}{filter}")
    };
    let truth = on_demand_where(&run.gw, &run.grace, &types, &visible, &criteria).await;
    assert!(truth.keys().any(|k| k.starts_with("Encounter/")), "the filter leaves some Encounters");
    assert_eq!(exported.keys().collect::<Vec<_>>(), truth.keys().collect::<Vec<_>>());
    // smart-fetch cancels (DELETE) after downloading: nothing stays stored.
    assert_eq!(files_under(&run.gw.dir().join("data/exports")), 0, "smart-fetch's DELETE removed the files");
}

#[tokio::test]
async fn patients_narrow_to_members_and_lenient_handling_reports_what_it_skipped() {
    let facts = facts();
    let run = start("");
    let grace = visible(&facts, GRACE.0);
    let member = grace.iter().next().unwrap().clone();
    // A patient of another organization only: ignored, as PDex says.
    let other = visible(&facts, HOPKINS.0).difference(&grace).next().unwrap().clone();
    let auth = bearer(&run.grace);
    let url = run.gw.url(&format!(
        "Group/grp-grace/$export?_type=Patient,Observation&patient=Patient/{member}&patient=Patient/{other}\
         &_typeFilter=Observation%3Fsubject%3DPatient%2F{other}"
    ));
    let strict = request("GET", &url, &[("Authorization", &auth), ("Prefer", "respond-async")], None).await;
    assert_eq!(strict.status, 400, "{}", strict.text());
    let resp = request(
        "GET",
        &url,
        &[("Authorization", &auth), ("Prefer", "respond-async, handling=lenient")],
        None,
    )
    .await;
    resp.assert_status(202);
    let (manifest, _) = wait_for_manifest(resp.header("content-location").unwrap(), &run.grace).await;
    let files = download_all(&manifest, &run.grace).await;
    let exported = by_key(&files);
    let patients: Vec<&String> = exported.keys().filter(|k| k.starts_with("Patient/")).collect();
    assert_eq!(patients, [&format!("Patient/{member}")]);
    let all: String = files.iter().map(|(_, t)| t.as_str()).collect();
    assert!(!all.contains(&other), "the other organization's patient left");
    let truth = on_demand(&run.gw, &run.grace, &["Patient", "Observation"], &BTreeSet::from([member])).await;
    assert_eq!(exported, truth);
    // The skipped filter is a warning in the error file.
    let errors = manifest["error"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{manifest}");
    let text =
        request("GET", errors[0]["url"].as_str().unwrap(), &[("Authorization", &auth)], None).await.text();
    let outcomes: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(outcomes.len(), 1, "{text}");
    assert!(outcomes.iter().all(|o| o["issue"][0]["severity"] == "warning"), "{text}");
    assert!(!text.contains(&other), "the error file repeats no patient id: {text}");

    // Kick-off, status and download are audited; the CapabilityStatement declares both operations.
    let audit = run.gw.admin("GET", "/admin/audit?client=grace-ehr", None).await.text();
    for interaction in ["\"export-status\"", "\"export-download\"", "\"export-batch\"", "\"export-complete\""]
    {
        assert!(audit.contains(interaction), "{interaction} not audited");
    }
    let metadata = get(&run.gw.url("metadata")).await.text();
    for definition in [
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
        "http://hl7.org/fhir/us/davinci-atr/OperationDefinition/davinci-data-export",
    ] {
        assert!(metadata.contains(definition), "{definition} not declared");
    }
}

#[tokio::test]
async fn an_upstream_failing_searches_is_retried_then_reported_in_the_error_file() {
    let facts = facts();
    let up = Upstream::sandbox();
    let run = start_on(up.base_url(), "");
    let fault = |query: &str| {
        let url = format!("{}/_sandbox/fault{query}", up.base_url().trim_end_matches("/fhir"));
        async move { request(if url.ends_with("fault") { "DELETE" } else { "POST" }, &url, &[], None).await }
    };
    let export = || async {
        let resp = kickoff(&run.gw, &run.grace, "Group/grp-grace/$export?_type=Patient,Observation").await;
        resp.assert_status(202);
        wait_for_manifest(resp.header("content-location").unwrap(), &run.grace).await.0
    };
    // Two failures: tried again, nothing missing, nothing reported.
    fault("?fault=error&path=Observation&times=2").await.assert_status(200);
    let manifest = export().await;
    fault("").await.assert_status(200);
    assert_eq!(manifest["error"], serde_json::json!([]), "{manifest}");
    let exported = by_key(&download_all(&manifest, &run.grace).await);
    let truth = on_demand(&run.gw, &run.grace, &["Patient", "Observation"], &visible(&facts, GRACE.0)).await;
    assert_eq!(exported.keys().collect::<Vec<_>>(), truth.keys().collect::<Vec<_>>());

    // The upstream keeps failing Observation searches: the Patients are all
    // there, and the error file says which type of which batch is missing.
    fault("?fault=error&path=Observation&times=1000").await.assert_status(200);
    let manifest = export().await;
    fault("").await.assert_status(200);
    let exported = by_key(&download_all(&manifest, &run.grace).await);
    assert!(!exported.keys().any(|k| k.starts_with("Observation/")));
    assert_eq!(exported.len(), visible(&facts, GRACE.0).len());
    let errors = manifest["error"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{manifest}");
    let auth = bearer(&run.grace);
    let text =
        request("GET", errors[0]["url"].as_str().unwrap(), &[("Authorization", &auth)], None).await.text();
    assert!(
        !text.is_empty()
            && text.lines().all(|l| l.contains("\"severity\":\"error\"") && l.contains("Observation")),
        "{text}"
    );
}
