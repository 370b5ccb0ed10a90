//! The token endpoint and token verification against a real SQLite store.
//! (End-to-end tests with an independent JWT implementation live in
//! tests/e2e/auth.rs.)

use std::path::Path;

use jsonwebtoken::{Algorithm, Header};
use serde_json::json;

use super::keys::{KeyKind, SigningKey, generate_pkcs8};
use super::*;

const BASE: &str = "http://127.0.0.1:18080/fhir";
const TOKEN_URL: &str = "http://127.0.0.1:18080/auth/token";

struct Env {
    _dir: tempfile::TempDir,
    auth: Auth,
    ec: SigningKey,
    rsa: SigningKey,
}

fn jwks(keys: &[&SigningKey]) -> String {
    serde_json::to_string(&json!({"keys": keys.iter().map(|k| &k.public_jwk).collect::<Vec<_>>()})).unwrap()
}

async fn env_with(extra: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let ec = SigningKey::from_pkcs8_der(KeyKind::Es384, &generate_pkcs8(KeyKind::Es384).unwrap()).unwrap();
    let rsa_der = generate_pkcs8(KeyKind::Rs384).unwrap();
    let rsa = SigningKey::from_pem(keys::pem_encode("PRIVATE KEY", &rsa_der).as_bytes(), None).unwrap();
    std::fs::write(dir.path().join("c1.jwks.json"), jwks(&[&ec, &rsa])).unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:18080"
base_url = "{BASE}"
[upstream]
url = "sandbox"
[state]
url = "sqlite://state.db"
[[clients]]
client_id = "c1"
organization = "Organization/org-1"
npi = "1234567893"
jwks_path = "c1.jwks.json"
scopes = ["system/*.read", "system/Observation.rs?category=laboratory"]
[[clients]]
client_id = "sandbox-basic"
organization = "Organization/org-2"
client_secret_env = "CARGO_PKG_NAME"
scopes = ["system/Patient.read"]
[[clients]]
client_id = "no-secret"
organization = "Organization/org-3"
client_secret_env = "FHIRWALL_TEST_SECRET_UNSET_9f2"
scopes = ["system/Patient.read"]
{extra}
"#
    );
    let config = Config::from_toml(&text, dir.path()).unwrap();
    let store = Store::open(&config.state.url).await.unwrap();
    let keyring =
        crate::keyring::Keyring::open(store.clone(), 300, 3600, crate::clock::unix_now_s()).await.unwrap();
    let auth = Auth::new(&config, &store, &keyring).await.unwrap();
    Env { _dir: dir, auth, ec, rsa }
}

async fn env() -> Env {
    env_with("").await
}

fn now() -> i64 {
    unix_now_s()
}

fn assertion(key: &SigningKey, alg: Algorithm, claims: serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(key.kid().to_owned());
    jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap()
}

fn claims(client: &str) -> serde_json::Value {
    json!({"iss": client, "sub": client, "aud": TOKEN_URL, "exp": now() + 240, "jti": hex::encode(rand::random::<[u8; 12]>())})
}

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish().into_bytes()
}

fn form_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
    h
}

fn grant(assertion: &str, scope: &str) -> Vec<u8> {
    form(&[
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion),
        ("scope", scope),
    ])
}

async fn token(env: &Env, scope: &str) -> TokenResponse {
    let a = assertion(&env.ec, Algorithm::ES384, claims("c1"));
    env.auth.token_request(&form_headers(), &grant(&a, scope)).await.unwrap()
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    h
}

#[tokio::test]
async fn issues_tokens_for_rs384_and_es384_assertions() {
    let env = env().await;
    for (key, alg) in [(&env.rsa, Algorithm::RS384), (&env.ec, Algorithm::ES384)] {
        let a = assertion(key, alg, claims("c1"));
        let t = env.auth.token_request(&form_headers(), &grant(&a, "system/*.read")).await.unwrap();
        assert_eq!(t.token_type, "bearer");
        assert_eq!(t.expires_in, 300);
        assert_eq!(t.scope, "system/*.read");
        let p = env.auth.authenticate(&bearer(&t.access_token)).await.unwrap();
        assert_eq!(p.client_id, "c1");
        assert_eq!(p.organization, "Organization/org-1");
        assert_eq!(p.npi.as_deref(), Some("1234567893"));
    }
    // Granted = requested ∩ registered; unknown scopes dropped.
    let t = token(&env, "system/Patient.read system/Observation.rs openid system/*.write").await;
    assert_eq!(t.scope, "system/Patient.read system/Observation.rs");
    let t = token(&env, "system/Observation.rs?category=laboratory").await;
    assert_eq!(t.scope, "system/Observation.rs?category=laboratory");
}

#[tokio::test]
async fn every_token_request_error_is_rfc_6749() {
    let env = env().await;
    let good = || assertion(&env.ec, Algorithm::ES384, claims("c1"));
    let json_headers = {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h
    };
    let with_basic = |user: &str, secret: &str| {
        let mut h = form_headers();
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
        h.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Basic {creds}")).unwrap());
        h
    };
    let wrong_aud = {
        let mut c = claims("c1");
        c["aud"] = BASE.into();
        assertion(&env.ec, Algorithm::ES384, c)
    };
    let too_long = {
        let mut c = claims("c1");
        c["exp"] = (now() + 3600).into();
        assertion(&env.ec, Algorithm::ES384, c)
    };
    let expired = {
        let mut c = claims("c1");
        c["exp"] = (now() - 600).into();
        assertion(&env.ec, Algorithm::ES384, c)
    };
    let stranger =
        SigningKey::from_pkcs8_der(KeyKind::Es384, &generate_pkcs8(KeyKind::Es384).unwrap()).unwrap();
    let unknown_client = assertion(&env.ec, Algorithm::ES384, claims("nobody"));
    let bad_signature = assertion(&stranger, Algorithm::ES384, claims("c1"));
    use ErrorCode::*;
    let cases: Vec<(&str, HeaderMap, Vec<u8>, ErrorCode)> = vec![
        ("JSON body", json_headers, br#"{"grant_type":"client_credentials"}"#.to_vec(), InvalidRequest),
        ("no grant_type", form_headers(), form(&[("scope", "system/*.read")]), InvalidRequest),
        (
            "authorization_code grant",
            form_headers(),
            form(&[("grant_type", "authorization_code"), ("scope", "system/*.read")]),
            UnsupportedGrantType,
        ),
        (
            "duplicate parameter",
            form_headers(),
            [grant(&good(), "system/*.read"), b"&scope=system/*.read".to_vec()].concat(),
            InvalidRequest,
        ),
        (
            "no scope",
            form_headers(),
            form(&[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &good()),
            ]),
            InvalidRequest,
        ),
        (
            "no client authentication",
            form_headers(),
            form(&[("grant_type", "client_credentials"), ("scope", "system/*.read")]),
            InvalidClient,
        ),
        (
            "unknown assertion type",
            form_headers(),
            form(&[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", "not_an_assertion_type"),
                ("client_assertion", &good()),
                ("scope", "system/*.read"),
            ]),
            InvalidRequest,
        ),
        (
            "no assertion",
            form_headers(),
            form(&[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("scope", "system/*.read"),
            ]),
            InvalidRequest,
        ),
        (
            "client_secret_post",
            form_headers(),
            form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "sandbox-basic"),
                ("client_secret", "s3cret"),
                ("scope", "system/*.read"),
            ]),
            InvalidClient,
        ),
        ("unknown client", form_headers(), grant(&unknown_client, "system/*.read"), InvalidClient),
        ("bad signature", form_headers(), grant(&bad_signature, "system/*.read"), InvalidClient),
        ("aud is the FHIR base", form_headers(), grant(&wrong_aud, "system/*.read"), InvalidClient),
        ("expired", form_headers(), grant(&expired, "system/*.read"), InvalidClient),
        ("lifetime over 5 minutes", form_headers(), grant(&too_long, "system/*.read"), InvalidClient),
        ("garbage assertion", form_headers(), grant("a.b.c", "system/*.read"), InvalidClient),
        (
            "only patient/ scopes",
            form_headers(),
            grant(&good(), "patient/*.read launch/patient"),
            InvalidScope,
        ),
        ("only write scopes", form_headers(), grant(&good(), "system/*.write"), InvalidScope),
        ("empty scope", form_headers(), grant(&good(), ""), InvalidScope),
        (
            "client_id differs from the assertion",
            form_headers(),
            form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "someone-else"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &good()),
                ("scope", "system/*.read"),
            ]),
            InvalidClient,
        ),
        (
            "basic and assertion together",
            with_basic("sandbox-basic", "s3cret"),
            grant(&good(), "system/*.read"),
            InvalidRequest,
        ),
        (
            "basic for a client without a secret",
            with_basic("c1", "anything"),
            form(&[("grant_type", "client_credentials"), ("scope", "system/*.read")]),
            InvalidClient,
        ),
        (
            "basic with its env var unset",
            with_basic("no-secret", ""),
            form(&[("grant_type", "client_credentials"), ("scope", "system/*.read")]),
            InvalidClient,
        ),
        (
            "basic with a wrong secret",
            with_basic("sandbox-basic", "wrong"),
            form(&[("grant_type", "client_credentials"), ("scope", "system/*.read")]),
            InvalidClient,
        ),
    ];
    for (what, headers, body, code) in cases {
        let err = env.auth.token_request(&headers, &body).await.expect_err(what).error;
        assert_eq!(err.code, code, "{what}: {}", err.description);
        let response = oauth_error_response(&err, false);
        assert_eq!(response.status(), if code == InvalidClient { 401 } else { 400 }, "{what}");
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
    }
}

#[tokio::test]
async fn replayed_assertions_are_refused_and_spent_only_on_success() {
    let env = env().await;
    let a = assertion(&env.ec, Algorithm::ES384, claims("c1"));
    // A request that fails on scope does not spend the jti...
    let err = env.auth.token_request(&form_headers(), &grant(&a, "system/Claim.cud")).await.unwrap_err();
    assert_eq!(err.error.code, ErrorCode::InvalidScope);
    // ...so the same assertion still works once, and only once.
    env.auth.token_request(&form_headers(), &grant(&a, "system/*.read")).await.unwrap();
    let err = env.auth.token_request(&form_headers(), &grant(&a, "system/*.read")).await.unwrap_err();
    assert_eq!(err.error.code, ErrorCode::InvalidClient);
    assert!(err.error.description.contains("replay"));
}

#[tokio::test]
async fn client_secret_basic_only_where_configured() {
    // cargo sets CARGO_PKG_NAME (= "fhirwall") for test processes: the sandbox
    // client's secret env var (tests may not set env vars: unsafe is forbidden).
    assert_eq!(std::env::var("CARGO_PKG_NAME").as_deref(), Ok("fhirwall"));
    let env = env().await;
    let mut h = form_headers();
    let creds = base64::engine::general_purpose::STANDARD.encode("sandbox-basic:fhir%77all");
    h.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Basic {creds}")).unwrap());
    let body = form(&[("grant_type", "client_credentials"), ("scope", "system/Patient.read")]);
    let t = env.auth.token_request(&h, &body).await.unwrap();
    assert_eq!(t.scope, "system/Patient.read");
    let p = env.auth.authenticate(&bearer(&t.access_token)).await.unwrap();
    assert_eq!(p.organization, "Organization/org-2");
}

#[tokio::test]
async fn bearer_tokens_are_checked_on_every_request() {
    let env = env().await;
    let t = token(&env, "system/*.read").await;
    assert!(env.auth.authenticate(&bearer(&t.access_token)).await.is_ok());
    // Cached: the same answer again.
    assert!(env.auth.authenticate(&bearer(&t.access_token)).await.is_ok());

    let mut two = bearer(&t.access_token);
    two.append(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
    let mut basic = HeaderMap::new();
    basic.insert(AUTHORIZATION, HeaderValue::from_static("Basic Yzox"));
    let mut tampered = t.access_token.clone();
    tampered.pop();
    let foreign = {
        let key =
            SigningKey::from_pkcs8_der(KeyKind::Es384, &generate_pkcs8(KeyKind::Es384).unwrap()).unwrap();
        let other = tokens::TokenKeys::new(key, TOKEN_URL, BASE);
        other
            .issue(&other.claims(
                "c1",
                &ScopeSet::parse_strict("system/*.read").unwrap(),
                "Organization/org-1",
                None,
                "r",
                now(),
                300,
            ))
            .unwrap()
    };
    let expired = {
        let mut c = env.auth.keys.claims(
            "c1",
            &ScopeSet::parse_strict("system/*.read").unwrap(),
            "Organization/org-1",
            None,
            "whatever",
            now() - 1000,
            300,
        );
        c.exp = now() - 1;
        env.auth.keys.issue(&c).unwrap()
    };
    let stale_reg = env
        .auth
        .keys
        .issue(&env.auth.keys.claims(
            "c1",
            &ScopeSet::parse_strict("system/*.read").unwrap(),
            "Organization/org-1",
            None,
            "old-registration",
            now(),
            300,
        ))
        .unwrap();
    for (what, headers) in [
        ("no header", HeaderMap::new()),
        ("two headers", two),
        ("Basic", basic),
        ("empty bearer", bearer("")),
        ("garbage", bearer("abc")),
        ("tampered signature", bearer(&tampered)),
        ("another issuer's key", bearer(&foreign)),
        ("expired", bearer(&expired)),
        ("issued under an older registration", bearer(&stale_reg)),
    ] {
        let err = env.auth.authenticate(&headers).await.expect_err(what);
        assert_eq!(err.status, StatusCode::UNAUTHORIZED, "{what}");
        let www = err
            .headers
            .iter()
            .find(|(n, _)| *n == WWW_AUTHENTICATE)
            .map(|(_, v)| v.to_str().unwrap())
            .unwrap();
        assert!(www.starts_with("Bearer ") && www.contains("error=\"invalid_token\""), "{what}: {www}");
    }

    // A validly signed token without an organization never reaches data (pitfall 2).
    let mut c = env.auth.keys.claims(
        "c1",
        &ScopeSet::parse_strict("system/*.read").unwrap(),
        "x",
        None,
        "r",
        now(),
        300,
    );
    c.org = None;
    let orgless = env.auth.keys.issue(&c).unwrap();
    assert_eq!(env.auth.authenticate(&bearer(&orgless)).await.unwrap_err().status, StatusCode::FORBIDDEN);

    // Deleting the client revokes its tokens at once (even cached ones).
    assert!(env.auth.delete_client("c1").await.unwrap());
    let err = env.auth.authenticate(&bearer(&t.access_token)).await.unwrap_err();
    assert_eq!(err.status, StatusCode::UNAUTHORIZED);
    assert!(!env.auth.delete_client("c1").await.unwrap());
    let a = assertion(&env.ec, Algorithm::ES384, claims("c1"));
    assert_eq!(
        env.auth.token_request(&form_headers(), &grant(&a, "system/*.read")).await.unwrap_err().error.code,
        ErrorCode::InvalidClient
    );
}

#[tokio::test]
async fn admin_registration_round_trip() {
    let env = env().await;
    let body = json!({
        "client_id": "added",
        "organization": "Organization/org-9",
        "jwks": {"keys": [env.ec.public_jwk]},
        "scopes": ["system/Patient.rs"]
    });
    let registered = env.auth.register_client(body.to_string().as_bytes()).await.unwrap();
    assert_eq!(registered.client_id, "added");
    assert_eq!(
        env.auth.register_client(body.to_string().as_bytes()).await.unwrap_err().status,
        StatusCode::CONFLICT
    );
    for bad in [
        json!({"client_id": "x", "organization": "Organization/o", "bogus": 1, "jwks": {"keys": [env.ec.public_jwk]}}),
        json!({"client_id": "x", "organization": "nope", "jwks": {"keys": [env.ec.public_jwk]}}),
        json!({"client_id": "x", "organization": "Organization/o"}),
        json!({"client_id": "x", "organization": "Organization/o", "jwks_path": "relative.json"}),
        json!({"client_id": "x", "organization": "Organization/o", "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}),
        json!({"client_id": "x", "organization": "Organization/o", "jwks": {"keys": [env.ec.public_jwk]}, "scopes": ["patient/*.read"]}),
    ] {
        assert_eq!(
            env.auth.register_client(bad.to_string().as_bytes()).await.unwrap_err().status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    let a = assertion(&env.ec, Algorithm::ES384, claims("added"));
    let t = env.auth.token_request(&form_headers(), &grant(&a, "system/*.read")).await.unwrap();
    assert_eq!(t.scope, "system/Patient.read");
    let listed = env.auth.list_clients().await.unwrap();
    assert!(listed.as_array().unwrap().iter().any(|c| c["client_id"] == "added" && c["source"] == "admin"));
}

#[tokio::test]
async fn discovery_documents() {
    let env = env().await;
    let c = env.auth.smart_configuration();
    assert_eq!(c["token_endpoint"], TOKEN_URL);
    assert_eq!(c["token_endpoint_auth_methods_supported"], json!(["private_key_jwt"]));
    assert_eq!(c["grant_types_supported"], json!(["client_credentials"]));
    for alg in ["RS384", "ES384"] {
        assert!(
            c["token_endpoint_auth_signing_alg_values_supported"].as_array().unwrap().contains(&json!(alg))
        );
    }
    for cap in ["client-confidential-asymmetric", "permission-v1", "permission-v2"] {
        assert!(c["capabilities"].as_array().unwrap().contains(&json!(cap)));
    }
    assert!(c.get("issuer").is_none(), "no sso-openid-connect, so no issuer");
    let response = env.auth.smart_configuration_response(&Method::GET);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/json");

    let cs = r#"{"resourceType":"CapabilityStatement","rest":[{"mode":"server","security":{"service":[{"text":"upstream oauth"}]}}]}"#;
    let out: serde_json::Value = serde_json::from_str(&env.auth.add_security(cs).unwrap()).unwrap();
    let security = &out["rest"][0]["security"];
    assert_eq!(
        security["extension"][0]["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    assert_eq!(security["extension"][0]["extension"][0], json!({"url": "token", "valueUri": TOKEN_URL}));
    assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    let bare: serde_json::Value =
        serde_json::from_str(&env.auth.add_security(r#"{"resourceType":"CapabilityStatement"}"#).unwrap())
            .unwrap();
    assert_eq!(bare["rest"][0]["mode"], "server");
}

#[test]
fn token_url_keeps_the_origin() {
    for (base, token) in [
        ("http://127.0.0.1:8080/fhir", "http://127.0.0.1:8080/auth/token"),
        ("https://fw.example/api/fhir/", "https://fw.example/auth/token"),
        ("https://fw.example:443/fhir", "https://fw.example/auth/token"),
        ("http://[::1]:9/", "http://[::1]:9/auth/token"),
    ] {
        assert_eq!(token_url_for(&url::Url::parse(base).unwrap()), token, "{base}");
    }
    let _ = Path::new("");
}
