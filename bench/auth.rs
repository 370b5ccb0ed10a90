//! Auth benchmark: tokens issued per second (the whole token request:
//! form parsing, client lookup, assertion signature and claims, the `jti`
//! insert into the store, scope intersection, signing the access token) and
//! the per-request cost of access-token verification, cold (first sight of a
//! token: ES384 signature check) and warm (the verified-token cache plus the
//! client registration check every request does).
//!
//!     cargo bench -p fhirwall --bench auth            # SQLite state in a temp dir
//!
//! Prints one line per figure; BENCHMARKS.md ("Auth") records them.

use std::time::Instant;

use fhirwall::auth::keys::{KeyKind, SigningKey, generate_pkcs8, pem_encode};
use fhirwall::auth::{Auth, JWT_BEARER};
use fhirwall::config::Config;
use fhirwall::store::Store;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, Header};

const TOKENS: usize = 2_000;
const COLD: usize = 2_000;
const WARM: usize = 200_000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run());
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let ec = SigningKey::from_pkcs8_der(KeyKind::Es384, &generate_pkcs8(KeyKind::Es384).unwrap()).unwrap();
    let rsa = SigningKey::from_pem(
        pem_encode("PRIVATE KEY", &generate_pkcs8(KeyKind::Rs384).unwrap()).as_bytes(),
        None,
    )
    .unwrap();
    let jwks = serde_json::json!({"keys": [ec.public_jwk, rsa.public_jwk]});
    std::fs::write(dir.path().join("c.jwks.json"), jwks.to_string()).unwrap();
    let config = Config::from_toml(
        r#"
[server]
listen = "127.0.0.1:18080"
base_url = "http://127.0.0.1:18080/fhir"
[upstream]
url = "sandbox"
[state]
url = "sqlite://state.db"
[[clients]]
client_id = "bench-ehr"
organization = "Organization/org-bench"
jwks_path = "c.jwks.json"
scopes = ["system/*.read"]
"#,
        dir.path(),
    )
    .unwrap();
    let store = Store::open(&config.state.url).await.unwrap();
    let keyring = fhirwall::keyring::Keyring::open(store.clone(), 300, 3600, fhirwall::clock::unix_now_s())
        .await
        .unwrap();
    let auth = Auth::new(&config, &store, &keyring).await.unwrap();
    let mut form_headers = HeaderMap::new();
    form_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));

    let mut tokens = Vec::with_capacity(TOKENS);
    for (name, key, alg) in [("ES384", &ec, Algorithm::ES384), ("RS384", &rsa, Algorithm::RS384)] {
        // Assertions are signed beforehand: the client's cost is not fhirwall's.
        let bodies: Vec<String> = (0..TOKENS)
            .map(|i| {
                let mut header = Header::new(alg);
                header.kid = Some(key.kid().to_owned());
                let claims = serde_json::json!({
                    "iss": "bench-ehr", "sub": "bench-ehr", "aud": auth.token_url(),
                    "exp": now() + 280, "jti": format!("{name}-{i}-{}", now()),
                });
                let assertion = jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap();
                url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs([
                        ("grant_type", "client_credentials"),
                        ("client_assertion_type", JWT_BEARER),
                        ("client_assertion", &assertion),
                        ("scope", "system/*.read"),
                    ])
                    .finish()
            })
            .collect();
        let started = Instant::now();
        for body in &bodies {
            let t = auth.token_request(&form_headers, body.as_bytes()).await.unwrap();
            tokens.push(t.access_token);
        }
        let elapsed = started.elapsed();
        println!(
            "token endpoint, {name} client assertion: {:.0} tokens/s ({:.0} µs per token, {TOKENS} sequential requests, SQLite replay cache)",
            TOKENS as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1e6 / TOKENS as f64
        );
    }

    // Cold: each token seen for the first time (full ES384 verification).
    let started = Instant::now();
    for token in tokens.iter().take(COLD) {
        auth.verify_token(token).unwrap();
    }
    let cold = started.elapsed();
    println!(
        "access token verification, cold (ES384 signature + claims): {:.1} µs per token ({COLD} tokens)",
        cold.as_secs_f64() * 1e6 / COLD as f64
    );

    // Warm: what every later request with the same token pays, including
    // the client-still-registered check (registry cache, 2 s TTL).
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {}", tokens[0])).unwrap());
    auth.authenticate(&headers).await.unwrap();
    let started = Instant::now();
    for _ in 0..WARM {
        auth.authenticate(&headers).await.unwrap();
    }
    let warm = started.elapsed();
    println!(
        "access token verification, warm (Auth::authenticate: cache hit + registration check): {:.2} µs per request ({WARM} requests)",
        warm.as_secs_f64() * 1e6 / WARM as f64
    );
}
