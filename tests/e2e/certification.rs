//! The certification checks, ported: what the Inferno SMART Backend
//! Services and Bulk Data test kits and the Da Vinci PDex/HRex kits send and
//! assert (the assertion IDs of ../shared/reference/conformance.md, mapped in
//! tests/conformance/assertions.tsv), against the real `fhirwall serve` in
//! front of the built-in sandbox.
//!
//! Resources fhirwall builds itself are checked twice by independent code:
//! the R4 structures by tests/clients/validate_fhir.py (fhir.resources), and
//! the IG profile rules the conformance list cites (HRex member-match out,
//! PDex provider-member-match out and its Groups, the Bulk manifest,
//! OperationOutcome) by tests/clients/check_profiles.py, which each test
//! also shows failing on a broken copy.

use fhirwall_testkit as support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::pyjwt::{JWT_BEARER, Key, toml_client};
use support::*;

const GRACE: (&str, &str, &str) = ("grace-ehr", "Organization/org-grace", "1417987256");
const MEMBER_ID_SYSTEM: &str = "http://example.org/fhirwall/member-id";

fn matcher_toml() -> String {
    let path = repo_root().join("plugins/dist/default_matcher.wasm");
    assert!(path.is_file(), "{} is missing: build the plugins first (plugins/build.sh)", path.display());
    format!(
        "[[plugins]]\nname = \"matcher\"\nworld = \"matcher\"\npath = {:?}\nmemory_mb = 64\ntimeout_ms = 500\n",
        path.display().to_string()
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Independent checkers over files: `validate_fhir.py` (R4 structures) or
/// `check_profiles.py` (IG profile rules). Returns (success, report).
fn run_checker(script: &str, args: &[String]) -> (bool, String) {
    let out = Command::new(venvs::fhir_validator_python())
        .arg(repo_root().join("tests/clients").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), report)
}

/// Writes `value` (JSON) or `text` to a file in `dir` and returns its path.
fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Asserts every (kind, file) passes check_profiles.py.
#[track_caller]
fn assert_profiles(checks: &[(&str, &PathBuf)]) {
    let args: Vec<String> = checks.iter().map(|(k, p)| format!("{k}={}", p.display())).collect();
    let (ok, report) = run_checker("check_profiles.py", &args);
    assert!(ok, "profile rules not met:\n{report}");
    assert_eq!(report.lines().filter(|l| l.starts_with("ok ")).count(), checks.len(), "{report}");
}

/// Asserts a deliberately broken copy fails check_profiles.py with `needle`
/// in the report: the checker can fail.
#[track_caller]
fn assert_profile_refuses(dir: &tempfile::TempDir, kind: &str, broken: &Value, needle: &str) {
    let path = write(dir, &format!("broken-{kind}-{}.json", needle.len()), &broken.to_string());
    let (ok, report) = run_checker("check_profiles.py", &[format!("{kind}={}", path.display())]);
    assert!(!ok && report.contains(needle), "a broken {kind} passed (wanted {needle:?}):\n{report}");
}

/// Asserts every file is valid R4 (validate_fhir.py) and returns the report.
#[track_caller]
fn assert_valid_r4(files: &[PathBuf]) -> String {
    let args: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let (ok, report) = run_checker("validate_fhir.py", &args);
    assert!(ok, "not valid R4:\n{report}");
    report
}

fn instant_days_ago(days: u32) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("{days} days ago"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

// ---------------------------------------------------------------------------
// SMART discovery and the token endpoint (SMART-01..10, 20..27, 49, 60, 61)

/// grace-ehr with a PyJWT key (RS384), registered with every scope the
/// discovery document lists, so that each can be asked for.
fn smart_gateway(key: &Key) -> Gateway {
    Gateway::start(GatewayConfig::new("sandbox").extra_toml(&toml_client(
        GRACE.0,
        GRACE.1,
        GRACE.2,
        &key.jwks(),
        &["system/*.read", "system/*.rs"],
    )))
}

async fn token_request(gw: &Gateway, form: &[(&str, &str)]) -> Resp {
    post_form(&gw.token_url(), &[("Accept", "application/json")], form).await
}

#[track_caller]
fn assert_oauth_error(resp: &Resp, statuses: &[u16], errors: &[&str], what: &str) {
    assert!(statuses.contains(&resp.status), "{what}: status {} ({})", resp.status, resp.text());
    assert!(resp.content_type().unwrap_or("").starts_with("application/json"), "{what}: {resp:?}");
    let body = resp.json();
    let error = body["error"].as_str().unwrap_or("");
    assert!(errors.contains(&error), "{what}: error {error:?} not in {errors:?}");
    // SMART-49: SHOULD carry error_description (or error_uri).
    assert!(body["error_description"].as_str().is_some_and(|d| !d.is_empty()), "{what}: {body}");
    assert_eq!(resp.header("cache-control"), Some("no-store"), "{what}");
}

#[tokio::test]
async fn smart_discovery_document_has_every_required_field_and_absolute_urls() {
    let key = Key::new("RS384");
    let gw = smart_gateway(&key);
    let url = gw.url(".well-known/smart-configuration");
    // The base has a path component (/fhir): the document is under it.
    assert!(url.contains("/fhir/.well-known/smart-configuration"), "{url}");
    let mut first: Option<Value> = None;
    // SMART-01: 200 and application/json whatever the Accept header says.
    for accept in
        [None, Some("application/json"), Some("application/fhir+json"), Some("*/*"), Some("text/html")]
    {
        let headers: Vec<(&str, &str)> = accept.map(|a| vec![("Accept", a)]).unwrap_or_default();
        let resp = get_with(&url, &headers).await;
        assert_eq!(resp.status, 200, "Accept {accept:?}: {}", resp.text());
        let ct = resp.content_type().unwrap_or("");
        assert!(ct.starts_with("application/json"), "Accept {accept:?}: Content-Type {ct}");
        let body = resp.json();
        assert!(body.is_object(), "a JSON object: {body}");
        match &first {
            None => first = Some(body),
            Some(f) => assert_eq!(&body, f, "the same document for Accept {accept:?}"),
        }
    }
    let doc = first.unwrap();
    // SMART-02 / SMART-08: token_endpoint, absolute; every *_endpoint and URL field absolute.
    assert_eq!(doc["token_endpoint"], gw.token_url());
    for (name, value) in doc.as_object().unwrap() {
        if name.ends_with("_endpoint") || name.ends_with("_uri") || name == "issuer" || name == "jwks_uri" {
            let v = value.as_str().unwrap_or("");
            assert!(
                v.starts_with("http://") || v.starts_with("https://"),
                "{name} = {value} is not absolute"
            );
        }
    }
    let strings = |key: &str| -> Vec<String> {
        doc[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} is not an array: {doc}"))
            .iter()
            .map(|v| v.as_str().unwrap_or_else(|| panic!("{key} holds a non-string: {v}")).to_owned())
            .collect()
    };
    // SMART-03, SMART-04, SMART-05.
    assert!(strings("grant_types_supported").contains(&"client_credentials".into()), "{doc}");
    assert!(strings("token_endpoint_auth_methods_supported").contains(&"private_key_jwt".into()), "{doc}");
    let algs = strings("token_endpoint_auth_signing_alg_values_supported");
    assert!(algs.iter().any(|a| a == "RS384" || a == "ES384"), "{algs:?}");
    assert!(!algs.iter().any(|a| a == "none" || a.starts_with("HS")), "{algs:?}");
    // SMART-07, SMART-09.
    let capabilities = strings("capabilities");
    for cap in ["client-confidential-asymmetric", "permission-v1", "permission-v2"] {
        assert!(capabilities.contains(&cap.to_owned()), "{cap} not in {capabilities:?}");
    }
    if !capabilities.contains(&"sso-openid-connect".to_owned()) {
        assert!(doc.get("issuer").is_none(), "issuer without sso-openid-connect: {doc}");
    }
    // SMART-06 / SMART-10: scopes_supported present, and the server honours
    // every scope it lists (a client registered with them gets each).
    let scopes = strings("scopes_supported");
    assert!(!scopes.is_empty());
    for scope in &scopes {
        let resp = token_request(
            &gw,
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &key.assertion(GRACE.0, &gw.token_url(), &[])),
                ("scope", scope),
            ],
        )
        .await;
        resp.assert_status(200);
        assert_eq!(resp.json()["scope"], scope.as_str(), "listed scope {scope} is granted as asked");
    }
    // The CapabilityStatement names the same token endpoint.
    let cs = get(&gw.url("metadata")).await.json();
    // BULK-18 (Inferno warns without these), PDEX-06: Group export, the
    // ATR data export and Group read/search declared with their canonicals.
    assert!(
        cs["instantiates"].as_array().is_some_and(
            |i| i.contains(&json!("http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"))
        ),
        "instantiates: {cs}"
    );
    let group = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Group").unwrap();
    let declares = |name: &str, definition: &str| {
        group["operation"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| o["name"] == name && o["definition"] == definition)
    };
    assert!(
        declares("export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"),
        "{group}"
    );
    assert!(
        declares(
            "davinci-data-export",
            "http://hl7.org/fhir/us/davinci-atr/OperationDefinition/davinci-data-export"
        ),
        "{group}"
    );
    let interactions: Vec<&str> =
        group["interaction"].as_array().unwrap().iter().filter_map(|i| i["code"].as_str()).collect();
    for code in ["read", "search-type"] {
        assert!(interactions.contains(&code), "Group {code}: {interactions:?}");
    }
    assert_eq!(cs["rest"][0]["security"]["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    let uris = &cs["rest"][0]["security"]["extension"][0]["extension"];
    assert!(
        uris.as_array().unwrap().iter().any(|e| e["url"] == "token" && e["valueUri"] == gw.token_url()),
        "{uris}"
    );
}

#[tokio::test]
async fn token_endpoint_answers_and_refuses_as_the_inferno_backend_services_group_expects() {
    let key = Key::new("RS384");
    let gw = smart_gateway(&key);
    let url = gw.token_url();
    let assertion = |extra: &[&str]| key.assertion(GRACE.0, &url, extra);
    // Inferno's request: typ JWT (jwt_client.py always sets it), exp = now + 5 min,
    // jti = 64 hex characters, default scope system/*.read (SMART-61).
    let jti = format!("{:064x}", 0xfeed_beef_u64 ^ std::process::id() as u64);
    let resp = token_request(
        &gw,
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &assertion(&["--exp-in", "300", "--jti", &jti])),
            ("scope", "system/*.read"),
        ],
    )
    .await;
    // SMART-20, SMART-21, SMART-23, SMART-24.
    assert!(matches!(resp.status, 200 | 201), "{resp:?}");
    assert!(resp.content_type().unwrap_or("").starts_with("application/json"), "{resp:?}");
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(resp.header("pragma"), Some("no-cache"));
    let body = resp.json();
    assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
    assert!(body["token_type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case("bearer")), "{body}");
    let expires_in = body["expires_in"].as_f64().expect("expires_in is a number");
    assert!(expires_in > 0.0 && expires_in <= 300.0, "short-lived: {expires_in}");
    // SMART-60: v1 asked, v1 granted.
    assert_eq!(body["scope"], "system/*.read");
    assert!(body.get("refresh_token").is_none(), "{body}");
    let token = body["access_token"].as_str().unwrap();
    let read = get_bearer(&gw.url("Patient/pat-0001"), token).await;
    assert!(matches!(read.status, 200 | 404), "the token works: {read:?}");

    let valid_form = |a: String| {
        vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_assertion_type", JWT_BEARER.to_owned()),
            ("client_assertion", a),
            ("scope", "system/*.read".to_owned()),
        ]
    };
    let send = |form: Vec<(&'static str, String)>| {
        let gw = &gw;
        async move {
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            token_request(gw, &form).await
        }
    };
    // SMART-25: Inferno's invalid grant type — 400 exactly.
    let mut form = valid_form(assertion(&[]));
    form[0].1 = "not_a_grant_type".into();
    assert_oauth_error(&send(form).await, &[400], &["unsupported_grant_type"], "not_a_grant_type");
    // SMART-26 / SMART-27: Inferno's invalid client_assertion_type (its
    // "invalid JWT" test sends the same) — 400 or 401.
    let mut form = valid_form(assertion(&[]));
    form[1].1 = "not_an_assertion_type".into();
    assert_oauth_error(
        &send(form).await,
        &[400, 401],
        &["invalid_request", "invalid_client"],
        "not_an_assertion_type",
    );
    // SMART-27 for real (SMART-28): a JWT whose payload was swapped after
    // signing (header and signature of one assertion, payload of another).
    let a = assertion(&[]);
    let b = assertion(&["--sub", GRACE.0]);
    let (a_parts, b_parts): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    let tampered = format!("{}.{}.{}", a_parts[0], b_parts[1], a_parts[2]);
    assert_oauth_error(
        &send(valid_form(tampered)).await,
        &[400, 401],
        &["invalid_client"],
        "tampered payload",
    );
    // Not a JWT at all.
    assert_oauth_error(
        &send(valid_form("not.a.jwt".into())).await,
        &[400, 401],
        &["invalid_client", "invalid_request"],
        "garbage assertion",
    );
    // The untouched second assertion still works: the refusals burned nothing.
    let ok = send(valid_form(b)).await;
    ok.assert_status(200);
}

// ---------------------------------------------------------------------------
// Bulk Data (BULK-01..08, 11, 17, 30, 32..35, 37, 50..52, 60, 61)

fn export_gateway() -> Gateway {
    Gateway::start(
        GatewayConfig::new("sandbox")
            .extra_toml("[export]\nretry_after_s = 1\nmax_jobs_per_client = 8\n")
            .client(GRACE.0, GRACE.1, GRACE.2, &["system/*.read"]),
    )
}

/// Inferno's kick-off: GET, `Accept: application/fhir+json`, `Prefer: respond-async`.
async fn kickoff(gw: &Gateway, token: &str, query: &str) -> Resp {
    request(
        "GET",
        &gw.url(&format!("Group/grp-grace/$export{query}")),
        &[
            ("Authorization", &bearer(token)),
            ("Prefer", "respond-async"),
            ("Accept", "application/fhir+json"),
        ],
        None,
    )
    .await
}

#[track_caller]
fn content_location(resp: &Resp, gw: &Gateway) -> String {
    assert_eq!(resp.status, 202, "kick-off: {}", resp.text());
    let url = resp.header("content-location").expect("Content-Location").to_owned();
    assert!(url.starts_with("http://") || url.starts_with("https://"), "absolute: {url}");
    assert!(url.starts_with(&gw.base_url()), "{url}");
    url
}

/// DELETE (Inferno after every parameter test) → 202; the status is then
/// 404 with an OperationOutcome (BULK-50, BULK-51). Returns the 404.
async fn cancel(status_url: &str, token: &str) -> Resp {
    let auth = bearer(token);
    let deleted = request("DELETE", status_url, &[("Authorization", &auth)], None).await;
    assert_eq!(deleted.status, 202, "DELETE: {}", deleted.text());
    let gone =
        request("GET", status_url, &[("Authorization", &auth), ("Accept", "application/json")], None).await;
    assert_eq!(gone.status, 404, "status after DELETE: {}", gone.text());
    assert_operation_outcome(&gone);
    gone
}

#[tokio::test]
async fn bulk_export_kick_off_status_manifest_files_and_cancel() {
    let gw = export_gateway();
    let token = gw.token(GRACE.0, "system/*.read");
    let auth = bearer(&token);
    let dir = tempfile::tempdir().unwrap();
    let mut r4_files: Vec<PathBuf> = Vec::new();

    // BULK-02: kick-off without a token.
    let anonymous = request(
        "GET",
        &gw.url("Group/grp-grace/$export"),
        &[("Prefer", "respond-async"), ("Accept", "application/fhir+json")],
        None,
    )
    .await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    assert!(anonymous.header("www-authenticate").unwrap_or("").starts_with("Bearer"));
    r4_files.push(write(&dir, "oo-kickoff-401.json", &assert_operation_outcome(&anonymous).to_string()));

    // BULK-04 (BD1 regime): no Prefer: respond-async → 400 OperationOutcome.
    let no_prefer = request(
        "GET",
        &gw.url("Group/grp-grace/$export"),
        &[("Authorization", &auth), ("Accept", "application/fhir+json")],
        None,
    )
    .await;
    assert_eq!(no_prefer.status, 400, "{}", no_prefer.text());
    r4_files.push(write(&dir, "oo-no-prefer.json", &assert_operation_outcome(&no_prefer).to_string()));

    // BULK-07 / BULK-17: _since that is not a FHIR instant (a date, no time or zone).
    for bad in ["?_since=2024-01-01", "?_since=2024-01-01T00:00:00", "?_outputFormat=application/fhir+json"] {
        let resp = kickoff(&gw, &token, bad).await;
        assert_eq!(resp.status, 400, "{bad}: {}", resp.text());
        let oo = assert_operation_outcome(&resp);
        r4_files.push(write(&dir, &format!("oo-400-{}.json", r4_files.len()), &oo.to_string()));
    }

    // BULK-01, BULK-03, BULK-08, BULK-11: GET kick-off, repeated _type = the union.
    let main = kickoff(&gw, &token, "?_type=Patient&_type=Coverage").await;
    let status_url = content_location(&main, &gw);
    // BULK-32: the status URL is protected like the kick-off.
    let anon_status = request("GET", &status_url, &[("Accept", "application/json")], None).await;
    assert_eq!(anon_status.status, 401, "{}", anon_status.text());

    // BULK-30: 202 + X-Progress (< 100 chars) + Retry-After while running, then 200.
    let deadline = Instant::now() + Duration::from_secs(45);
    let done = loop {
        let resp =
            request("GET", &status_url, &[("Authorization", &auth), ("Accept", "application/json")], None)
                .await;
        match resp.status {
            200 => break resp,
            202 => {
                let progress = resp.header("x-progress").expect("X-Progress on 202");
                assert!(progress.len() < 100, "{progress}");
                let wait: u64 = resp.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After");
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            429 => {
                let wait: u64 = resp.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After");
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            other => panic!("status {other}: {}", resp.text()),
        }
        assert!(Instant::now() < deadline, "the export did not finish in 45 s");
    };
    // BULK-33: 200, application/json, Expires, the five keys.
    let ct = done.content_type().unwrap_or("");
    assert!(ct.starts_with("application/json"), "manifest Content-Type {ct}");
    assert!(done.header("expires").is_some(), "Expires");
    let manifest = done.json();
    let manifest_path = write(&dir, "manifest.json", &manifest.to_string());
    assert_profiles(&[("bulk-manifest", &manifest_path)]);
    assert!(
        manifest["request"].as_str().unwrap().starts_with(&gw.url("Group/grp-grace/$export")),
        "request is the kick-off URL: {manifest}"
    );
    // BULK-34: only the requested types, one type per file.
    let outputs = manifest["output"].as_array().unwrap();
    let types: std::collections::BTreeSet<&str> =
        outputs.iter().map(|o| o["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Coverage", "Patient"].into_iter().collect(), "{manifest}");
    // BULK-60, BULK-61: each file needs the token; with it, fhir+ndjson lines of the stated type.
    let mut patients = 0;
    for (i, file) in outputs.iter().enumerate() {
        let url = file["url"].as_str().unwrap();
        let anon = request("GET", url, &[("Accept", "application/fhir+ndjson")], None).await;
        assert_eq!(anon.status, 401, "download without a token: {}", anon.text());
        let resp =
            request("GET", url, &[("Authorization", &auth), ("Accept", "application/fhir+ndjson")], None)
                .await;
        resp.assert_status(200);
        assert!(resp.content_type().unwrap_or("").starts_with("application/fhir+ndjson"), "{resp:?}");
        let text = resp.text();
        let lines: Vec<Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("one JSON per line")).collect();
        assert!(!lines.is_empty(), "types without data are not listed");
        assert_eq!(file["count"].as_u64(), Some(lines.len() as u64));
        for r in &lines {
            assert_eq!(r["resourceType"], file["type"], "a line of another type in {url}");
        }
        if file["type"] == "Patient" {
            patients += lines.len();
        }
        r4_files.push(write(&dir, &format!("output-{i}.ndjson"), &text));
    }
    assert!(patients >= 2, "Inferno wants at least two Patients: {patients}");
    let report = assert_valid_r4(&r4_files);
    for kind in ["ok Patient/", "ok Coverage/", "ok OperationOutcome/"] {
        assert!(report.contains(kind), "{kind} not validated:\n{report}");
    }
    // BULK-50/51/52 on a completed job; the 404 is an OperationOutcome.
    let gone = cancel(&status_url, &token).await;
    let gone_path = write(&dir, "oo-404.json", &gone.text());
    assert_profiles(&[("operation-outcome", &gone_path)]);
    assert_eq!(
        request("GET", outputs[0]["url"].as_str().unwrap(), &[("Authorization", &auth)], None).await.status,
        404
    );
    // BULK-52: a second DELETE is an error with an OperationOutcome.
    let again = request("DELETE", &status_url, &[("Authorization", &auth)], None).await;
    assert!(again.status >= 400, "{}", again.status);
    assert_operation_outcome(&again);

    // BULK-05: each _outputFormat Inferno sends → 202, then DELETE → 202 → 404.
    for format in ["application%2Ffhir%2Bndjson", "application%2Fndjson", "ndjson"] {
        let resp = kickoff(&gw, &token, &format!("?_type=Patient&_outputFormat={format}")).await;
        let url = content_location(&resp, &gw);
        cancel(&url, &token).await;
    }
    // BULK-06: _since a week ago (FHIR instant) → 202, then DELETE → 202.
    let since = instant_days_ago(7);
    let resp = kickoff(&gw, &token, &format!("?_type=Patient&_since={since}")).await;
    let url = content_location(&resp, &gw);
    cancel(&url, &token).await;

    // PDEX-40, PDEX-42, PDEX-44: POST $davinci-data-export with a Parameters
    // body; without Prefer: respond-async 400; each PDex exportType 202
    // (then cancelled); another exportType 400.
    let dde = gw.url("Group/grp-grace/$davinci-data-export");
    let body = |export_type: &str| {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "exportType", "valueCanonical": export_type},
            {"name": "_type", "valueString": "Patient"},
            {"name": "_since", "valueInstant": since}]})
        .to_string()
        .into_bytes()
    };
    let json_ct = ("Content-Type", "application/fhir+json");
    let no_prefer = request(
        "POST",
        &dde,
        &[("Authorization", &auth), json_ct],
        Some(body("hl7.fhir.us.davinci-pdex#provider-download")),
    )
    .await;
    assert_eq!(no_prefer.status, 400, "{}", no_prefer.text());
    assert_operation_outcome(&no_prefer);
    for export_type in ["provider-delta", "provider-download", "provider-snapshot"] {
        let resp = request(
            "POST",
            &dde,
            &[("Authorization", &auth), json_ct, ("Prefer", "respond-async")],
            Some(body(&format!("hl7.fhir.us.davinci-pdex#{export_type}"))),
        )
        .await;
        let url = content_location(&resp, &gw);
        cancel(&url, &token).await;
    }
    let unknown = request(
        "POST",
        &dde,
        &[("Authorization", &auth), json_ct, ("Prefer", "respond-async")],
        Some(body("hl7.fhir.us.davinci-pdex#payer-everything")),
    )
    .await;
    assert_eq!(unknown.status, 400, "{}", unknown.text());
    assert_operation_outcome(&unknown);

    // The checker can fail: a manifest missing `request`, a relative url, a false requiresAccessToken.
    let mut broken = manifest.clone();
    broken.as_object_mut().unwrap().remove("request");
    assert_profile_refuses(&dir, "bulk-manifest", &broken, "no request");
    let mut broken = manifest.clone();
    broken["output"][0]["url"] = json!("/_export/x/files/0");
    assert_profile_refuses(&dir, "bulk-manifest", &broken, "is not absolute");
    let mut broken = manifest.clone();
    broken["requiresAccessToken"] = json!(false);
    assert_profile_refuses(&dir, "bulk-manifest", &broken, "requiresAccessToken");
    let mut broken: Value = serde_json::from_str(&gone.text()).unwrap();
    broken["issue"][0]["code"] = json!("gone");
    assert_profile_refuses(&dir, "operation-outcome", &broken, "not in IssueType");
}

/// BULK-39: a job that fails as a whole answers its status with a 5xx
/// OperationOutcome (`application/fhir+json`). A job fails when its client
/// was re-registered before it started (docs/operations.md); here it waits
/// behind another client's job (one job runs at a time) while grace-ehr is
/// re-registered with the same key, so the same client id can still poll.
#[tokio::test]
async fn a_failed_export_job_answers_its_status_with_an_operation_outcome() {
    let gw = Gateway::start(
        GatewayConfig::new("sandbox")
            .extra_toml(
                "[export]\nretry_after_s = 1\nmax_running_jobs = 1\nbatch_patients = 20\nupstream_rps = 4\n",
            )
            .client(GRACE.0, GRACE.1, GRACE.2, &["system/*.read"])
            .client("grace-scheduler", GRACE.1, GRACE.2, &["system/*.read"]),
    );
    let other = gw.token("grace-scheduler", "system/*.read");
    let first = kickoff(&gw, &other, "?_type=Patient,Coverage").await;
    let first_url = content_location(&first, &gw);
    // Wait until the first job runs (it holds the only running slot).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let poll = request("GET", &first_url, &[("Authorization", &bearer(&other))], None).await;
        if poll.status == 202 && poll.header("x-progress").is_some_and(|p| p != "queued") {
            break;
        }
        assert_ne!(poll.status, 200, "the first job finished before the second was queued: make it slower");
        assert!(Instant::now() < deadline, "the first job never started");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let token = gw.token(GRACE.0, "system/*.read");
    let second = kickoff(&gw, &token, "?_type=Patient").await;
    let second_url = content_location(&second, &gw);
    // Re-register grace-ehr (same id, organization and key): a new registration.
    let jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(gw.dir().join("keys/grace-ehr.jwks.json")).unwrap())
            .unwrap();
    gw.admin("DELETE", "/admin/clients/grace-ehr", None).await.assert_status(204);
    let again = json!({"client_id": GRACE.0, "organization": GRACE.1, "npi": GRACE.2, "jwks": jwks,
        "scopes": ["system/*.read"]});
    gw.admin("POST", "/admin/clients", Some(&again)).await.assert_status(201);
    let fresh = gw.token(GRACE.0, "system/*.read");
    let deadline = Instant::now() + Duration::from_secs(40);
    let failed = loop {
        let poll = request("GET", &second_url, &[("Authorization", &bearer(&fresh))], None).await;
        if !matches!(poll.status, 202 | 429) {
            break poll;
        }
        assert!(Instant::now() < deadline, "the second job never ended");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    };
    assert!((500..600).contains(&failed.status), "a failed job: {} {}", failed.status, failed.text());
    let oo = assert_operation_outcome(&failed);
    assert_eq!(oo["issue"][0]["severity"], "error", "{oo}");
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "oo-failed-job.json", &oo.to_string());
    assert_profiles(&[("operation-outcome", &path)]);
    // The first client's job was not affected.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let poll = request("GET", &first_url, &[("Authorization", &bearer(&other))], None).await;
        if poll.status == 200 {
            break;
        }
        assert!(matches!(poll.status, 202 | 429), "{}", poll.text());
        assert!(Instant::now() < deadline, "the first job did not finish");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
}

/// E2E-06, SMART-71: a token that expires while the client polls is refused
/// (401 invalid_token) on the status and file URLs; a new token of the same
/// client carries on (jobs belong to the client, not to a token).
#[tokio::test]
async fn a_token_expiring_mid_export_is_401_and_a_new_token_carries_on() {
    let gw = Gateway::start(
        GatewayConfig::new("sandbox")
            .extra_toml("[auth]\ntoken_ttl_s = 2\n[export]\nretry_after_s = 1\n")
            .client(GRACE.0, GRACE.1, GRACE.2, &["system/*.read"]),
    );
    let old = gw.token(GRACE.0, "system/Patient.read system/Group.read");
    let resp = kickoff(&gw, &old, "?_type=Patient").await;
    let status_url = content_location(&resp, &gw);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let expired = request("GET", &status_url, &[("Authorization", &bearer(&old))], None).await;
    assert_eq!(expired.status, 401, "{}", expired.text());
    let www = expired.header("www-authenticate").unwrap_or("");
    assert!(www.starts_with("Bearer") && www.contains("invalid_token"), "{www}");
    assert_operation_outcome(&expired);
    // A fresh token (asked for at each step: it lives 2 s) gets the manifest and the file.
    let deadline = Instant::now() + Duration::from_secs(30);
    let manifest = loop {
        let fresh = gw.token(GRACE.0, "system/Patient.read system/Group.read");
        let poll = request("GET", &status_url, &[("Authorization", &bearer(&fresh))], None).await;
        if poll.status == 200 {
            break poll.json();
        }
        assert!(matches!(poll.status, 202 | 429), "{}", poll.text());
        assert!(Instant::now() < deadline, "the export did not finish");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let file = manifest["output"][0]["url"].as_str().unwrap().to_owned();
    let stale = request("GET", &file, &[("Authorization", &bearer(&old))], None).await;
    assert_eq!(stale.status, 401, "file with an expired token: {}", stale.text());
    let fresh = gw.token(GRACE.0, "system/Patient.read");
    request("GET", &file, &[("Authorization", &bearer(&fresh))], None).await.assert_status(200);
}

// ---------------------------------------------------------------------------
// TLS (SMART-50) and searches around the Part 2 labels (SEC-07, SEC-10)

/// SMART-50 (Inferno `smart_tls`): TLS 1.2 and 1.3 are served; TLS 1.0 and
/// 1.1 handshakes are refused by the server (the client offers them with
/// OpenSSL's security level 0, so the refusal is the server's).
#[tokio::test]
async fn tls_below_1_2_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
    let gw = Gateway::start(
        GatewayConfig::new("sandbox")
            .file("tls/cert.pem", std::fs::read(dir.path().join("cert.pem")).unwrap())
            .file("tls/key.pem", std::fs::read(dir.path().join("key.pem")).unwrap())
            .extra_toml("[server]\ntls_cert = \"tls/cert.pem\"\ntls_key = \"tls/key.pem\"\n"),
    );
    let addr = gw.listen_addr().to_string();
    let handshake = |version: &str| {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &addr, version, "-cipher", "DEFAULT:@SECLEVEL=0"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    for (version, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, text) = handshake(version);
        assert!(ok && text.contains(&format!("New, {name}, Cipher is")), "{version} not served:\n{text}");
    }
    for version in ["-tls1", "-tls1_1"] {
        let (ok, text) = handshake(version);
        assert!(!ok, "{version} was accepted:\n{text}");
        // The server's refusal: an alert received from it (handshake_failure
        // or protocol_version), not a client-side error.
        assert!(
            text.contains("alert handshake failure") || text.contains("alert protocol version"),
            "{version}: no alert from the server:\n{text}"
        );
        assert!(!text.contains("no protocols available"), "the client did not even offer {version}:\n{text}");
    }
}

/// SEC-10: searching on the labels (`_security`, `:not`, `:missing`) does
/// not bring back a Part 2 labelled record; SEC-07: the searchset Bundles
/// carry no obligation or refrain labels that would say something was kept
/// back. pat-0009 (attributed to org-grace) has the labelled Condition
/// cond-0009-2 and Encounter enc-0009-4 (examples/dataset/facts.json).
#[tokio::test]
async fn searching_on_security_labels_does_not_get_around_part2() {
    let gw =
        Gateway::start(GatewayConfig::new("sandbox").client(GRACE.0, GRACE.1, GRACE.2, &["system/*.read"]));
    let token = gw.token(GRACE.0, "system/*.read");
    let label = "http%3A%2F%2Fterminology.hl7.org%2FCodeSystem%2Fv3-ActCode%7C42CFRPart2";
    // (The label itself may be echoed in the Bundle's self link.)
    let withheld = ["cond-0009-2", "enc-0009-4"];
    // The labelled records exist upstream but are not served.
    for path in ["Condition/cond-0009-2", "Encounter/enc-0009-4"] {
        assert_eq!(get_bearer(&gw.url(path), &token).await.status, 404, "{path}");
    }
    let baseline = get_bearer(&gw.url("Condition?patient=Patient/pat-0009"), &token).await;
    baseline.assert_status(200);
    assert!(!bundle_resources(&baseline.json()).is_empty(), "pat-0009 has visible Conditions");
    let mut answered = 0;
    for t in ["Condition", "Encounter"] {
        for query in [
            format!("_security={label}"),
            format!("_security:not={label}"),
            "_security:missing=true".to_owned(),
            "_security:missing=false".to_owned(),
            format!("_security:below={label}"),
        ] {
            let url = gw.url(&format!("{t}?patient=Patient/pat-0009&{query}"));
            let resp = get_bearer(&url, &token).await;
            assert!(matches!(resp.status, 200 | 400), "{url}: {}", resp.text());
            let text = resp.text();
            for id in withheld {
                assert!(!text.contains(id), "{url}: {id} left:\n{text}");
            }
            if resp.status == 200 {
                answered += 1;
                let bundle = resp.json();
                assert_eq!(bundle["type"], "searchset");
                let labels: Vec<&str> = bundle["meta"]["security"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["code"].as_str())
                    .collect();
                for code in labels {
                    assert!(
                        !matches!(
                            code,
                            "MASK"
                                | "REDACT"
                                | "NODSCLCD"
                                | "NODSCLCDS"
                                | "NORDSCLCD"
                                | "NORDSCLCDS"
                                | "PROCESSINLINELABEL"
                        ),
                        "{url}: Bundle label {code}"
                    );
                }
            } else {
                assert_operation_outcome(&resp);
            }
        }
    }
    assert!(answered > 0, "every label search was refused: the bypass attempt was not exercised");
}

// ---------------------------------------------------------------------------
// HRex $member-match (HREX-01, 02, 03, 07, 08, 09) and PDex
// $provider-member-match (PDEX-23, 24, 25, 26, 28, 29)

fn match_gateway() -> Gateway {
    Gateway::start(
        GatewayConfig::new("sandbox")
            // Inferno's PDex kit finds the member by `Patient?identifier=`, a
            // search naming no patient: narrowed to the caller's patients,
            // more than the default 100 for grace (HREX-09).
            .extra_toml("[policy]\nmax_narrowed_patients = 500\n")
            .extra_toml(&matcher_toml())
            .client(GRACE.0, GRACE.1, GRACE.2, &["system/*.read"]),
    )
}

fn member_match_request(family: &str, given: &str, birth: &str, card: Option<&str>) -> Value {
    let mut coverage = json!({"resourceType": "Coverage", "id": "card", "status": "active",
        "beneficiary": {"reference": "Patient/1"}, "payor": [{"display": "Fhirwall Example Health Plan"}]});
    if let Some(card) = card {
        coverage["subscriberId"] = json!(card);
    }
    json!({"resourceType": "Parameters", "parameter": [
        {"name": "MemberPatient", "resource": {"resourceType": "Patient", "id": "1",
            "name": [{"family": family, "given": [given]}], "gender": "female", "birthDate": birth}},
        {"name": "CoverageToMatch", "resource": coverage}
    ]})
}

#[tokio::test]
async fn member_match_answers_follow_the_hrex_profiles() {
    let gw = match_gateway();
    let token = gw.token(GRACE.0, "system/*.read");
    let auth = bearer(&token);
    let url = gw.url("Patient/$member-match");
    let dir = tempfile::tempdir().unwrap();

    // HREX-01: one match → 200 Parameters per hrex-parameters-member-match-out.
    let one = post_json(
        &url,
        &[("Authorization", &auth)],
        &member_match_request("Grantham", "Martha", "1958-06-13", Some("FW1000105")),
    )
    .await;
    one.assert_status(200);
    assert!(one.content_type().unwrap_or("").starts_with("application/fhir+json"));
    let answer = one.json();
    let out = write(&dir, "member-match-out.json", &answer.to_string());
    // HREX-02: no match → 422 + OperationOutcome.
    let none = post_json(
        &url,
        &[("Authorization", &auth)],
        &member_match_request("Zzyzx", "Quentin", "1901-01-01", Some("XX0000000")),
    )
    .await;
    assert_eq!(none.status, 422, "{}", none.text());
    let none_oo = write(&dir, "oo-422-none.json", &assert_operation_outcome(&none).to_string());
    // HREX-03: two members alike (pat-0150 and pat-0301) → 422 multiple-matches.
    let twins = post_json(
        &url,
        &[("Authorization", &auth)],
        &member_match_request("Okonkwo", "Joan", "1998-03-31", None),
    )
    .await;
    assert_eq!(twins.status, 422, "{}", twins.text());
    let twins_body = assert_operation_outcome(&twins);
    assert_eq!(twins_body["issue"][0]["code"], "multiple-matches");
    assert!(!twins.text().contains("MemberIdentifier"), "never more than one identifier");
    let twins_oo = write(&dir, "oo-422-multiple.json", &twins_body.to_string());
    // HREX-07: GET is not the operation.
    let get = get_bearer(&url, &token).await;
    assert!(matches!(get.status, 400 | 405), "GET $member-match: {}", get.status);
    let get_oo = write(&dir, "oo-get.json", &assert_operation_outcome(&get).to_string());

    assert_profiles(&[
        ("hrex-member-match-out", &out),
        ("operation-outcome", &none_oo),
        ("operation-outcome", &twins_oo),
        ("operation-outcome", &get_oo),
    ]);
    assert_valid_r4(&[out.clone(), none_oo, twins_oo, get_oo]);

    // HREX-09: the returned identifier finds the member's Patient.
    let ident = &answer["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "MemberIdentifier")
        .unwrap()["valueIdentifier"];
    assert_eq!(ident["system"], MEMBER_ID_SYSTEM);
    let value = ident["value"].as_str().unwrap();
    for query in [value.to_owned(), format!("{MEMBER_ID_SYSTEM}|{value}")] {
        let search = get_bearer(&gw.url(&format!("Patient?identifier={}", urlencode(&query))), &token).await;
        search.assert_status(200);
        let bundle = search.json();
        assert_eq!(bundle["type"], "searchset");
        let ids: Vec<String> =
            bundle_resources(&bundle).iter().filter_map(|r| r["id"].as_str().map(str::to_owned)).collect();
        assert_eq!(ids, ["pat-0001"], "Patient?identifier={query}");
    }

    // HREX-08: declared once, on Patient, with the HRex definition.
    let cs = get_with(&gw.url("metadata"), &[("Accept", "application/fhir+json")]).await.json();
    let rests = cs["rest"].as_array().unwrap();
    let declaring: Vec<&Value> = rests
        .iter()
        .filter(|r| {
            r["resource"].as_array().into_iter().flatten().any(|res| {
                res["type"] == "Patient"
                    && res["operation"].as_array().into_iter().flatten().any(|o| {
                        o["name"] == "member-match"
                            && o["definition"]
                                == "http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match"
                    })
            })
        })
        .collect();
    assert_eq!(declaring.len(), 1, "{cs}");

    // The checker can fail: a second identifier, an unknown parameter, a wrong type.
    let mut broken = answer.clone();
    broken["parameter"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "MemberIdentifier", "valueIdentifier": ident}));
    assert_profile_refuses(&dir, "hrex-member-match-out", &broken, "2 MemberIdentifier");
    let mut broken = answer.clone();
    broken["parameter"].as_array_mut().unwrap().push(json!({"name": "Patient", "valueString": "x"}));
    assert_profile_refuses(&dir, "hrex-member-match-out", &broken, "closed slicing");
    let mut broken = answer.clone();
    for p in broken["parameter"].as_array_mut().unwrap() {
        if p["name"] == "MemberIdentifier" {
            p["valueIdentifier"]["type"]["coding"][0]["code"] = json!("MR");
        }
    }
    assert_profile_refuses(&dir, "hrex-member-match-out", &broken, "neither");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn member_bundle(local: &str, family: &str, given: &str, birth: &str, card: &str) -> Value {
    let npi = "http://hl7.org/fhir/sid/us-npi";
    json!({"name": "MemberBundle", "part": [
        {"name": "MemberPatient", "resource": {"resourceType": "Patient", "id": local,
            "name": [{"family": family, "given": [given]}], "gender": "female", "birthDate": birth}},
        {"name": "CoverageToMatch", "resource": {"resourceType": "Coverage", "id": format!("cov-{local}"),
            "status": "active", "beneficiary": {"reference": format!("Patient/{local}")}, "subscriberId": card,
            "payor": [{"display": "Fhirwall Example Health Plan"}]}},
        {"name": "Consent", "resource": {"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "64292-6"}]}],
            "patient": {"reference": format!("Patient/{local}")},
            "dateTime": "2026-11-01T10:00:00Z",
            "performer": [{"identifier": {"system": npi, "value": GRACE.2}}],
            "provision": {"type": "permit", "period": {"start": "2024-01-15"},
                "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                           "reference": {"identifier": {"system": npi, "value": GRACE.2}}}],
                "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}}}
    ]})
}

#[tokio::test]
async fn provider_member_match_groups_follow_the_pdex_profiles() {
    let gw = match_gateway();
    let token = gw.token(GRACE.0, "system/*.read");
    let auth = bearer(&token);
    let dir = tempfile::tempdir().unwrap();
    // pat-0004 (Lucia Ximenez) opts out: consent-constrained (reveal_opt_out defaults on).
    gw.admin("PUT", "/admin/opt-outs/pat-0004", None).await.assert_status(204);
    let body = json!({"resourceType": "Parameters", "parameter": [
        member_bundle("prov-1", "Grantham", "Martha", "1958-06-13", "FW1000105"),
        member_bundle("prov-2", "Zzyzx", "Nobody", "1931-02-03", "XX999999"),
        member_bundle("prov-3", "Ximenez", "Lucia", "1947-12-18", "FW1000123"),
    ]});
    let url = gw.url("Group/$provider-member-match");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/fhir+json")];
    let resp = request("POST", &url, &headers, Some(body.to_string().into_bytes())).await;
    resp.assert_status(200);
    let answer = resp.json();
    let path = write(&dir, "provider-member-match-out.json", &answer.to_string());
    assert_profiles(&[("pdex-member-match-out", &path)]);
    let report = assert_valid_r4(std::slice::from_ref(&path));
    assert!(report.contains("ok Parameters/"), "{report}");
    // Each Group, as its own resource, is valid R4 too.
    let mut groups = Vec::new();
    for p in answer["parameter"].as_array().unwrap() {
        groups.push(write(
            &dir,
            &format!("{}.json", p["name"].as_str().unwrap()),
            &p["resource"].to_string(),
        ));
    }
    assert_eq!(groups.len(), 3, "Matched, NonMatched and ConsentConstrained: {answer}");
    assert_valid_r4(&groups);

    let part = |name: &str| {
        answer["parameter"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["resource"]
            .clone()
    };
    // PDEX-25: the member is matched; the Group id is returned and readable.
    let matched = part("MatchedMembers");
    assert_eq!(matched["member"][0]["entity"]["reference"], "Patient/pat-0001", "{matched}");
    let id = matched["id"].as_str().unwrap();
    let read = get_bearer(&gw.url(&format!("Group/{id}")), &token).await;
    read.assert_status(200);
    // PDEX-26: the opted-out member is never in MatchedMembers.
    assert!(!answer.to_string().contains("pat-0004"), "{answer}");
    assert_eq!(part("ConsentConstrainedMembers")["member"][0]["entity"]["reference"], "Patient/prov-3");
    assert_eq!(part("NonMatchedMembers")["member"][0]["entity"]["reference"], "Patient/prov-2");

    // PDEX-23: asynchronously, 202 + absolute Content-Location, then the same answer.
    let resp = request(
        "POST",
        &url,
        &[headers[0], headers[1], ("Prefer", "respond-async")],
        Some(body.to_string().into_bytes()),
    )
    .await;
    let status_url = content_location(&resp, &gw);
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let poll = request("GET", &status_url, &[("Authorization", &auth)], None).await;
        if poll.status == 200 {
            break poll;
        }
        assert!(matches!(poll.status, 202 | 429), "{}", poll.text());
        assert!(Instant::now() < deadline, "the match did not finish");
        let wait: u64 = poll.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After");
        tokio::time::sleep(Duration::from_secs(wait)).await;
    };
    let async_path = write(&dir, "provider-member-match-async.json", &done.text());
    assert_profiles(&[("pdex-member-match-out", &async_path)]);

    // The checker can fail: no meta.profile, a wrong code, consent detail in the opt-out Group.
    let mut broken = answer.clone();
    broken["parameter"][0]["resource"]["meta"] = json!({});
    assert_profile_refuses(&dir, "pdex-member-match-out", &broken, "MatchedMembers.meta.profile");
    let mut broken = answer.clone();
    broken["parameter"][1]["resource"]["code"]["coding"][0]["code"] = json!("match");
    assert_profile_refuses(
        &dir,
        "pdex-member-match-out",
        &broken,
        "lacks PdexMultiMemberMatchResultCS#nomatch",
    );
    let mut broken = answer.clone();
    broken["parameter"][2]["resource"]["member"][0]["entity"]["display"] =
        json!("OperationOutcome: opted out");
    assert_profile_refuses(&dir, "pdex-member-match-out", &broken, "consent-error detail");
    let mut broken = answer.clone();
    broken["parameter"].as_array_mut().unwrap().remove(0);
    assert_profile_refuses(&dir, "pdex-member-match-out", &broken, "0 MatchedMembers");
}
