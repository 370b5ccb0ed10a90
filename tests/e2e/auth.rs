//! SMART Backend Services end to end: the real `fhirwall serve` (built-in
//! sandbox upstream), and an independent client side — PyJWT + cryptography
//! (tests/clients/jwt_client.py, installed by `scripts/setup-test-deps.sh
//! jwt_clients`) — making the key pairs and signing RS384/ES384 assertions.

use fhirwall_testkit as support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use support::*;

use support::pyjwt::{JWT_BEARER, Key, pyjwt, toml_client};

async fn token_request(gw: &Gateway, form: &[(&str, &str)]) -> Resp {
    post_form(&gw.token_url(), &[("Accept", "application/json")], form).await
}

async fn ask(gw: &Gateway, assertion: &str, scope: &str) -> Resp {
    token_request(
        gw,
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
            ("scope", scope),
        ],
    )
    .await
}

async fn get_token(gw: &Gateway, key: &Key, client_id: &str, scope: &str) -> String {
    let resp = ask(gw, &key.assertion(client_id, &gw.token_url(), &[]), scope).await;
    resp.assert_status(200);
    resp.json()["access_token"].as_str().unwrap().to_owned()
}

#[track_caller]
fn assert_oauth_error(resp: &Resp, status: u16, error: &str, what: &str) {
    assert_eq!(resp.status, status, "{what}: {}", resp.text());
    assert_eq!(resp.json()["error"], error, "{what}: {}", resp.text());
    assert!(resp.json()["error_description"].is_string(), "{what}");
    assert_eq!(resp.header("cache-control"), Some("no-store"), "{what}");
    assert!(resp.content_type().unwrap_or("").starts_with("application/json"), "{what}");
}

struct Fixture {
    gw: Gateway,
    grace: Key,
    valley: Key,
}

/// grace-ehr: RS384, JWKS file, `system/*.read`; valley-ehr: ES384, inline JWKS,
/// Patient read plus lab-only Observations (v2 constraint).
fn start() -> Fixture {
    let grace = Key::new("RS384");
    let valley = Key::new("ES384");
    // One extra_toml: `[[clients]]` arrays from separate calls would replace each other.
    let clients = format!(
        "[[clients]]\nclient_id = \"grace-ehr\"\norganization = \"Organization/org-grace\"\nnpi = \"1417987256\"\n\
         jwks_path = \"keys/grace-ehr.jwks.json\"\nscopes = [\"system/*.read\"]\n{}",
        toml_client(
            "valley-ehr",
            "Organization/org-valley",
            "1637458922",
            &valley.jwks(),
            &["system/Patient.read", "system/Observation.rs?category=vital-signs"],
        )
    );
    let config = GatewayConfig::new("sandbox")
        .file("keys/grace-ehr.jwks.json", grace.jwks().to_string())
        .extra_toml(&clients);
    Fixture { gw: Gateway::start(config), grace, valley }
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn rs384_and_es384_assertions_get_working_tokens() {
    let f = start();
    let gw = &f.gw;
    for (key, client, scope, granted) in [
        (&f.grace, "grace-ehr", "system/*.read", "system/*.read"),
        (
            &f.valley,
            "valley-ehr",
            "system/*.read",
            "system/Patient.read system/Observation.rs?category=vital-signs",
        ),
        (&f.valley, "valley-ehr", "system/Patient.rs system/Claim.read", "system/Patient.rs"),
    ] {
        let resp = ask(gw, &key.assertion(client, &gw.token_url(), &[]), scope).await;
        resp.assert_status(200);
        assert_eq!(resp.header("cache-control"), Some("no-store"));
        assert_eq!(resp.header("pragma"), Some("no-cache"));
        let body = resp.json();
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["expires_in"], 300);
        assert_eq!(body["scope"], granted, "{client} asked {scope}");
        assert!(body.get("refresh_token").is_none());
        let token = body["access_token"].as_str().unwrap();
        let read = get_bearer(&gw.url("Patient/pat-0001"), token).await;
        assert!(matches!(read.status, 200 | 404), "{client}: {read:?}");
    }
    // The log never holds a token or an assertion.
    let log = gw.log();
    assert!(!log.contains("eyJ"), "a JWT leaked into the log");
}

#[tokio::test]
async fn every_token_endpoint_error_is_rfc_6749() {
    let f = start();
    let gw = &f.gw;
    let url = gw.token_url();
    let stranger = Key::new("ES384");
    let grace_kid = f.grace.kid().to_owned();
    let base = gw.base_url();
    let public_jwk_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(public_jwk_file.path(), f.grace.jwk.to_string()).unwrap();
    let hs256 = pyjwt(&[
        "sign-hs256",
        "--secret-file",
        public_jwk_file.path().to_str().unwrap(),
        "--iss",
        "grace-ehr",
        "--aud",
        &url,
    ])["assertion"]
        .as_str()
        .unwrap()
        .to_owned();
    let none =
        pyjwt(&["sign-none", "--iss", "grace-ehr", "--aud", &url])["assertion"].as_str().unwrap().to_owned();
    let injected_jwk = stranger.assertion(
        "grace-ehr",
        &url,
        &["--header-json", &json!({"jwk": stranger.jwk, "kid": grace_kid}).to_string()],
    );
    let x5u =
        stranger.assertion("grace-ehr", &url, &["--header-json", r#"{"x5u":"https://evil.example/c.pem"}"#]);
    let jku = f.grace.assertion(
        "grace-ehr",
        &url,
        &["--header-json", r#"{"jku":"https://evil.example/jwks.json"}"#],
    );
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        (
            "signed by an unregistered key",
            stranger.assertion("grace-ehr", &url, &["--kid", &grace_kid]),
            "system/*.read",
            401,
            "invalid_client",
        ),
        (
            "unknown kid",
            f.grace.assertion("grace-ehr", &url, &["--kid", "no-such-kid"]),
            "system/*.read",
            401,
            "invalid_client",
        ),
        (
            "unknown client",
            f.grace.assertion("nobody-ehr", &url, &[]),
            "system/*.read",
            401,
            "invalid_client",
        ),
        (
            "aud = FHIR base",
            f.grace.assertion("grace-ehr", &base, &[]),
            "system/*.read",
            401,
            "invalid_client",
        ),
        (
            "iss != sub",
            f.grace.assertion("grace-ehr", &url, &["--sub", "valley-ehr"]),
            "system/*.read",
            401,
            "invalid_client",
        ),
        (
            "expired",
            f.grace.assertion("grace-ehr", &url, &["--exp-in", "-600"]),
            "system/*.read",
            401,
            "invalid_client",
        ),
        (
            "no exp",
            f.grace.assertion("grace-ehr", &url, &["--drop", "exp"]),
            "system/*.read",
            401,
            "invalid_client",
        ),
        (
            "no jti",
            f.grace.assertion("grace-ehr", &url, &["--drop", "jti"]),
            "system/*.read",
            401,
            "invalid_client",
        ),
        ("alg none", none, "system/*.read", 401, "invalid_client"),
        ("HS256 keyed with the public key", hs256, "system/*.read", 401, "invalid_client"),
        ("key injected in a jwk header", injected_jwk, "system/*.read", 401, "invalid_client"),
        ("x5u header", x5u, "system/*.read", 401, "invalid_client"),
        ("jku not registered", jku, "system/*.read", 401, "invalid_client"),
        (
            "exp an hour ahead",
            f.grace.assertion("grace-ehr", &url, &["--exp-in", "3600"]),
            "system/*.read",
            401,
            "invalid_client",
        ),
        (
            "no kid in the header",
            f.grace.assertion("grace-ehr", &url, &["--no-kid"]),
            "system/*.read",
            401,
            "invalid_client",
        ),
        (
            "no grantable scope",
            f.valley.assertion("valley-ehr", &url, &[]),
            "system/Claim.read system/*.write",
            400,
            "invalid_scope",
        ),
        (
            "patient/ scopes only",
            f.grace.assertion("grace-ehr", &url, &[]),
            "patient/*.read",
            400,
            "invalid_scope",
        ),
    ];
    for (what, assertion, scope, status, error) in cases {
        assert_oauth_error(&ask(gw, &assertion, scope).await, status, error, what);
    }
    let good = || f.grace.assertion("grace-ehr", &url, &[]);
    type Form<'a> = Vec<(&'a str, String)>;
    let form_cases: Vec<(&str, Form, u16, &str)> = vec![
        (
            "grant_type authorization_code",
            vec![
                ("grant_type", "authorization_code".into()),
                ("client_assertion_type", JWT_BEARER.into()),
                ("client_assertion", good()),
                ("scope", "system/*.read".into()),
            ],
            400,
            "unsupported_grant_type",
        ),
        (
            "no grant_type",
            vec![
                ("client_assertion_type", JWT_BEARER.into()),
                ("client_assertion", good()),
                ("scope", "system/*.read".into()),
            ],
            400,
            "invalid_request",
        ),
        (
            "unknown client_assertion_type",
            vec![
                ("grant_type", "client_credentials".into()),
                ("client_assertion_type", "not_an_assertion_type".into()),
                ("client_assertion", good()),
                ("scope", "system/*.read".into()),
            ],
            400,
            "invalid_request",
        ),
        (
            "no client_assertion",
            vec![
                ("grant_type", "client_credentials".into()),
                ("client_assertion_type", JWT_BEARER.into()),
                ("scope", "system/*.read".into()),
            ],
            400,
            "invalid_request",
        ),
        (
            "no scope",
            vec![
                ("grant_type", "client_credentials".into()),
                ("client_assertion_type", JWT_BEARER.into()),
                ("client_assertion", good()),
            ],
            400,
            "invalid_request",
        ),
        (
            "no client authentication",
            vec![("grant_type", "client_credentials".into()), ("scope", "system/*.read".into())],
            401,
            "invalid_client",
        ),
        (
            "client_secret_post",
            vec![
                ("grant_type", "client_credentials".into()),
                ("client_id", "grace-ehr".into()),
                ("client_secret", "x".into()),
                ("scope", "system/*.read".into()),
            ],
            401,
            "invalid_client",
        ),
    ];
    for (what, form, status, error) in form_cases {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_oauth_error(&token_request(gw, &form).await, status, error, what);
    }
    let json_body = post_json(
        &url,
        &[("Content-Type", "application/json")],
        &json!({"grant_type": "client_credentials"}),
    )
    .await;
    assert_oauth_error(&json_body, 400, "invalid_request", "JSON body");
    let get = get(&format!("{url}?grant_type=client_credentials")).await;
    assert_eq!(get.status, 405);
    assert_eq!(get.header("allow"), Some("POST"));
    // Basic credentials for a client that has no secret: 401 with WWW-Authenticate: Basic.
    let basic = format!("Basic {}", base64_encode("grace-ehr:guess"));
    let resp = post_form(
        &url,
        &[("Authorization", &basic)],
        &[("grant_type", "client_credentials"), ("scope", "system/*.read")],
    )
    .await;
    assert_oauth_error(&resp, 401, "invalid_client", "basic without a configured secret");
    assert!(resp.header("www-authenticate").unwrap_or("").starts_with("Basic"));
}

fn base64_encode(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn replayed_assertions_are_refused_even_after_a_restart() {
    let mut f = start();
    let assertion = f.grace.assertion("grace-ehr", &f.gw.token_url(), &[]);
    ask(&f.gw, &assertion, "system/*.read").await.assert_status(200);
    assert_oauth_error(&ask(&f.gw, &assertion, "system/*.read").await, 401, "invalid_client", "replay");
    // The replay cache is in the store: a restarted node (or another node) refuses it too.
    let token = get_token(&f.gw, &f.grace, "grace-ehr", "system/*.read").await;
    f.gw.restart();
    assert_oauth_error(
        &ask(&f.gw, &assertion, "system/*.read").await,
        401,
        "invalid_client",
        "replay after restart",
    );
    // The signing key is in the store too: tokens survive the restart.
    let read = get_bearer(&f.gw.url("Patient/pat-0001"), &token).await;
    assert!(matches!(read.status, 200 | 404), "{read:?}");
}

#[tokio::test]
async fn requests_without_a_valid_token_are_401() {
    let f = start();
    let gw = &f.gw;
    for (what, headers) in [
        ("no token", vec![]),
        ("garbage", vec![("Authorization", "Bearer not-a-token")]),
        ("Basic", vec![("Authorization", "Basic Z3JhY2U6eA==")]),
    ] {
        let resp = get_with(&gw.url("Patient/pat-0001"), &headers).await;
        assert_eq!(resp.status, 401, "{what}");
        let www = resp.header("www-authenticate").unwrap_or("");
        assert!(www.starts_with("Bearer") && www.contains("invalid_token"), "{what}: {www}");
        assert_operation_outcome(&resp);
    }
    // An assertion is not an access token; neither is another fhirwall's token.
    let assertion = f.grace.assertion("grace-ehr", &gw.token_url(), &[]);
    assert_eq!(get_bearer(&gw.url("Patient/pat-0001"), &assertion).await.status, 401);
    let other = start();
    let foreign = get_token(&other.gw, &other.grace, "grace-ehr", "system/*.read").await;
    assert_eq!(get_bearer(&gw.url("Patient/pat-0001"), &foreign).await.status, 401);
    // A token in the URL is refused, never forwarded.
    let mine = get_token(gw, &f.grace, "grace-ehr", "system/*.read").await;
    let resp =
        get_bearer(&gw.url(&format!("Observation?patient=Patient/pat-0001&access_token={mine}")), &mine)
            .await;
    assert_eq!(resp.status, 400, "{resp:?}");

    // Discovery stays public.
    let meta = get(&gw.url("metadata")).await;
    meta.assert_status(200);
    let cs = meta.json();
    let security = &cs["rest"][0]["security"];
    assert_eq!(
        security["extension"][0]["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    assert_eq!(security["extension"][0]["extension"][0]["valueUri"], gw.token_url());
    assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    for accept in ["application/json", "application/fhir+json", "*/*"] {
        let conf = get_with(&gw.url(".well-known/smart-configuration"), &[("Accept", accept)]).await;
        conf.assert_status(200);
        assert!(conf.content_type().unwrap().starts_with("application/json"));
        let c = conf.json();
        assert_eq!(c["token_endpoint"], gw.token_url());
        assert_eq!(c["token_endpoint_auth_methods_supported"], json!(["private_key_jwt"]));
        assert_eq!(c["grant_types_supported"], json!(["client_credentials"]));
        assert!(c["scopes_supported"].is_array());
        for cap in ["client-confidential-asymmetric", "permission-v1", "permission-v2"] {
            assert!(c["capabilities"].as_array().unwrap().contains(&json!(cap)), "{cap}");
        }
    }
}

#[tokio::test]
async fn scopes_limit_interactions_and_types() {
    let f = start();
    let gw = &f.gw;
    let valley = get_token(
        gw,
        &f.valley,
        "valley-ehr",
        "system/Patient.read system/Observation.rs?category=vital-signs",
    )
    .await;
    let grace = get_token(gw, &f.grace, "grace-ehr", "system/*.read").await;
    // Types outside the scopes: 403 with insufficient_scope.
    for path in
        ["Coverage?patient=Patient/pat-0001", "ExplanationOfBenefit/eob-1", "Group/$provider-member-match"]
    {
        let resp = get_bearer(&gw.url(path), &valley).await;
        if path.contains('$') {
            continue; // POST-only operation; the GET is refused by the parser first
        }
        assert_eq!(resp.status, 403, "{path}: {resp:?}");
        assert_operation_outcome(&resp);
        assert!(resp.header("www-authenticate").unwrap_or("").contains("insufficient_scope"), "{path}");
    }
    // $member-match needs Patient read: valley has it, so it is not a scope refusal.
    let mm = post_json(
        &gw.url("Patient/$member-match"),
        &[("Authorization", &format!("Bearer {valley}"))],
        &json!({"resourceType": "Parameters"}),
    )
    .await;
    assert_ne!(mm.status, 401);
    assert_ne!(mm.status, 403, "{mm:?}");
    // Group operations need Group read.
    let export = get_bearer(&gw.url("Group/grp-valley/$export"), &valley).await;
    assert_eq!(export.status, 403, "{export:?}");
    // A constrained type cannot be read by id...
    let read = get_bearer(&gw.url("Observation/obs-0001-1"), &valley).await;
    assert_eq!(read.status, 403, "{read:?}");
    // ...and its searches carry the constraint: every dataset Observation is a lab,
    // so under category=vital-signs the same search comes back empty. (pat-0040 is
    // attributed to both org-grace and org-valley: access control.)
    let open = get_bearer(&gw.url("Observation?patient=Patient/pat-0040"), &grace).await;
    open.assert_status(200);
    assert!(!bundle_resources(&open.json()).is_empty(), "grace sees pat-0040's labs");
    let constrained = get_bearer(&gw.url("Observation?patient=Patient/pat-0040"), &valley).await;
    constrained.assert_status(200);
    assert!(bundle_resources(&constrained.json()).is_empty(), "{constrained:?}");
    let lab = get_bearer(&gw.url("Observation?patient=Patient/pat-0040&category=laboratory"), &valley).await;
    lab.assert_status(200);
    assert!(
        bundle_resources(&lab.json()).is_empty(),
        "asking for labs does not lift the constraint: {lab:?}"
    );
    let compartment = get_bearer(&gw.url("Patient/pat-0040/Observation"), &valley).await;
    compartment.assert_status(200);
    assert!(bundle_resources(&compartment.json()).is_empty());
    // Includes may not pull in types the token cannot read.
    let include = get_bearer(&gw.url("Patient?_id=pat-0001&_revinclude=Coverage:beneficiary"), &valley).await;
    assert_eq!(include.status, 403, "{include:?}");
}

#[tokio::test]
async fn admin_registered_clients_and_deletion() {
    let mut f = start();
    let key = Key::new("ES384");
    let body = json!({
        "client_id": "lakeside-ehr",
        "organization": "Organization/org-lakeside",
        "npi": "1748569039",
        "jwks": key.jwks(),
        "scopes": ["system/*.read"],
    });
    let gw = &f.gw;
    gw.admin("POST", "/admin/clients", Some(&body)).await.assert_status(201);
    gw.admin("POST", "/admin/clients", Some(&body)).await.assert_status(409);
    let bad = json!({"client_id": "x", "organization": "Organization/o", "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}});
    gw.admin("POST", "/admin/clients", Some(&bad)).await.assert_status(400);
    let unauthenticated = post_json(&format!("{}/admin/clients", gw.admin_url()), &[], &body).await;
    assert_eq!(unauthenticated.status, 401);
    let listed = gw.admin("GET", "/admin/clients", None).await;
    listed.assert_status(200);
    assert!(listed.json().as_array().unwrap().iter().any(|c| c["client_id"] == "lakeside-ehr"));

    let token = get_token(gw, &key, "lakeside-ehr", "system/*.read").await;
    let read = get_bearer(&gw.url("Patient/pat-0001"), &token).await;
    assert!(matches!(read.status, 200 | 404), "{read:?}");
    gw.admin("DELETE", "/admin/clients/lakeside-ehr", None).await.assert_status(204);
    let after = get_bearer(&gw.url("Patient/pat-0001"), &token).await;
    assert_eq!(after.status, 401, "a deleted client's token is refused at once");
    assert!(after.header("www-authenticate").unwrap_or("").contains("invalid_token"));
    assert_oauth_error(
        &ask(gw, &key.assertion("lakeside-ehr", &gw.token_url(), &[]), "system/*.read").await,
        401,
        "invalid_client",
        "deleted client",
    );
    gw.admin("DELETE", "/admin/clients/lakeside-ehr", None).await.assert_status(404);
    gw.admin("DELETE", "/admin/clients/nobody", None).await.assert_status(404);

    // A config client deleted through the admin API stays deleted after a restart.
    let grace = get_token(gw, &f.grace, "grace-ehr", "system/*.read").await;
    gw.admin("DELETE", "/admin/clients/grace-ehr", None).await.assert_status(204);
    f.gw.restart();
    assert_eq!(get_bearer(&f.gw.url("Patient/pat-0001"), &grace).await.status, 401);
    assert_oauth_error(
        &ask(&f.gw, &f.grace.assertion("grace-ehr", &f.gw.token_url(), &[]), "system/*.read").await,
        401,
        "invalid_client",
        "deleted config client after restart",
    );
    // Re-registering gives a new registration: old tokens stay dead.
    let again = json!({
        "client_id": "lakeside-ehr", "organization": "Organization/org-lakeside", "jwks": key.jwks(), "scopes": ["system/*.read"]
    });
    f.gw.admin("POST", "/admin/clients", Some(&again)).await.assert_status(201);
    assert_eq!(get_bearer(&f.gw.url("Patient/pat-0001"), &token).await.status, 401);
}

/// A one-route HTTP server on 127.0.0.1 serving a JWKS that the test can swap.
fn jwks_server(jwks: Arc<Mutex<String>>) -> String {
    jwks_server_with(jwks, "")
}

/// [`jwks_server`] with extra header lines (each ending in CRLF).
fn jwks_server_with(jwks: Arc<Mutex<String>>, extra_headers: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(200) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let body = jwks.lock().unwrap().clone();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/jwks.json")
}

#[tokio::test]
async fn jwks_uri_keys_are_fetched_jku_checked_and_rotated() {
    let old = Key::new("RS384");
    let new = Key::new("ES384");
    let served = Arc::new(Mutex::new(old.jwks().to_string()));
    let uri = jwks_server(served.clone());
    let gw = Gateway::start(GatewayConfig::new("sandbox").extra_toml(&format!(
        "[[clients]]\nclient_id = \"hopkins-ehr\"\norganization = \"Organization/org-hopkins\"\n\
         jwks_uri = {uri:?}\nscopes = [\"system/*.read\"]\n"
    )));
    let url = gw.token_url();
    ask(&gw, &old.assertion("hopkins-ehr", &url, &[]), "system/*.read").await.assert_status(200);
    let jku_ok = old.assertion("hopkins-ehr", &url, &["--header-json", &json!({"jku": uri}).to_string()]);
    ask(&gw, &jku_ok, "system/*.read").await.assert_status(200);
    // Key rotation: the new kid is unknown to the cached set, so the set is fetched again.
    *served.lock().unwrap() = json!({"keys": [new.jwk]}).to_string();
    ask(&gw, &new.assertion("hopkins-ehr", &url, &[]), "system/*.read").await.assert_status(200);
}

/// SMART-41: a JWKS served with `Cache-Control: max-age=N` is not used
/// longer than N seconds, so a key the provider removed stops working.
#[tokio::test]
async fn a_removed_jwks_uri_key_stops_working_once_the_served_max_age_runs_out() {
    let old = Key::new("ES384");
    let new = Key::new("ES384");
    let served = Arc::new(Mutex::new(json!({"keys": [old.jwk.clone(), new.jwk.clone()]}).to_string()));
    let uri = jwks_server_with(served.clone(), "Cache-Control: public, max-age=1\r\n");
    let gw = Gateway::start(GatewayConfig::new("sandbox").extra_toml(&format!(
        "[[clients]]\nclient_id = \"hopkins-ehr\"\norganization = \"Organization/org-hopkins\"\n\
         jwks_uri = {uri:?}\nscopes = [\"system/*.read\"]\n"
    )));
    let url = gw.token_url();
    ask(&gw, &old.assertion("hopkins-ehr", &url, &[]), "system/*.read").await.assert_status(200);
    // The provider removes the old key; the cached set may be used one more second at most.
    *served.lock().unwrap() = json!({"keys": [new.jwk]}).to_string();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_oauth_error(
        &ask(&gw, &old.assertion("hopkins-ehr", &url, &[]), "system/*.read").await,
        401,
        "invalid_client",
        "a key removed from the JWKS, after its max-age",
    );
    ask(&gw, &new.assertion("hopkins-ehr", &url, &[]), "system/*.read").await.assert_status(200);
}

#[tokio::test]
async fn client_secret_basic_only_for_sandbox_clients() {
    let gw = Gateway::start(
        GatewayConfig::new("sandbox").env("FHIRWALL_E2E_SANDBOX_SECRET", "s3cret").extra_toml(
            "[[clients]]\nclient_id = \"sandbox-ehr\"\norganization = \"Organization/org-grace\"\n\
                 client_secret_env = \"FHIRWALL_E2E_SANDBOX_SECRET\"\nscopes = [\"system/Patient.read\"]\n",
        ),
    );
    let form = [("grant_type", "client_credentials"), ("scope", "system/*.read")];
    let good = format!("Basic {}", base64_encode("sandbox-ehr:s3cret"));
    let resp = post_form(&gw.token_url(), &[("Authorization", &good)], &form).await;
    resp.assert_status(200);
    assert_eq!(resp.json()["scope"], "system/Patient.read");
    let wrong = format!("Basic {}", base64_encode("sandbox-ehr:guess"));
    let resp = post_form(&gw.token_url(), &[("Authorization", &wrong)], &form).await;
    assert_oauth_error(&resp, 401, "invalid_client", "wrong secret");
}

#[tokio::test]
async fn keygen_and_token_commands_work_together() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(fhirwall_bin()).args(args).output().expect("running fhirwall");
        assert!(out.status.success(), "fhirwall {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let out = dir.path().to_str().unwrap();
    run(&["keygen", "--client-id", "cli-rsa", "--out", out]);
    run(&["keygen", "--client-id", "cli-ec", "--out", out, "--alg", "ES384"]);
    let jwks = |id: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(format!("{id}.jwks.json"))).unwrap())
            .unwrap()
    };
    assert_eq!(jwks("cli-rsa")["keys"][0]["alg"], "RS384");
    assert_eq!(jwks("cli-ec")["keys"][0]["alg"], "ES384");
    // keygen never overwrites a key silently.
    let again = Command::new(fhirwall_bin())
        .args(["keygen", "--client-id", "cli-rsa", "--out", out])
        .output()
        .unwrap();
    assert!(!again.status.success());

    let client = |id: &str| {
        format!(
            "[[clients]]\nclient_id = {id:?}\norganization = \"Organization/org-grace\"\njwks_path = {:?}\nscopes = [\"system/*.read\"]\n",
            dir.path().join(format!("{id}.jwks.json")).display().to_string()
        )
    };
    let gw = Gateway::start(GatewayConfig::new("sandbox").extra_toml(&format!(
        "{}{}",
        client("cli-rsa"),
        client("cli-ec")
    )));
    for id in ["cli-rsa", "cli-ec"] {
        let key = dir.path().join(format!("{id}.key.pem"));
        let key = key.to_str().unwrap();
        let token = run(&[
            "token",
            "--client-id",
            id,
            "--key",
            key,
            "--token-url",
            &gw.token_url(),
            "--scope",
            "system/*.read",
        ]);
        let token = token.trim();
        assert_eq!(token.split('.').count(), 3, "just the token on stdout: {token:?}");
        let read = get_bearer(&gw.url("Patient/pat-0001"), token).await;
        assert!(matches!(read.status, 200 | 404), "{id}: {read:?}");
        let json_out = run(&[
            "token",
            "--client-id",
            id,
            "--key",
            key,
            "--token-url",
            &gw.token_url(),
            "--scope",
            "system/Patient.read",
            "--json",
        ]);
        let v: Value = serde_json::from_str(&json_out).unwrap();
        assert_eq!(v["scope"], "system/Patient.read");
    }
}
