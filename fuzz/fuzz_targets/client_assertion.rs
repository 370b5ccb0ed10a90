//! Fuzz the JWT client-assertion verifier (`auth::assertion::peek` then
//! `verify`, as the token endpoint calls them): arbitrary compact JWS text,
//! and tokens built from fuzzed headers and claims (signed by a registered
//! key, by an unregistered key with the registered `kid`, HMAC'd with the
//! public key, unsigned, or with garbage signatures, then optionally
//! corrupted), against the registered keys or a fuzzed client JWKS.
//!
//! Invariants: never a panic; every refusal is `invalid_client`; an
//! assertion is accepted only when it is byte for byte a token the harness
//! signed with a registered key, and then the verified claims obey every
//! rule (iss = sub = client, aud, exp window, nbf/iat, jti). A well-formed
//! assertion signed with a registered key is accepted (so the target cannot
//! pass by refusing everything).
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine;
use fhirwall::auth::assertion::{self, CLOCK_SKEW_S, ErrorCode, MAX_JTI_LEN, MAX_LIFETIME_S, Verified};
use fhirwall::auth::jwks;
use fhirwall::auth::keys::{KeyKind, SigningKey, generate_pkcs8, pem_encode};
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::JwkSet;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

const AUD: &str = "https://fw.example/auth/token";
const CLIENT: &str = "c1";
const NOW: i64 = 1_700_000_000;

struct Fixture {
    es384: SigningKey,
    es256: SigningKey,
    rs384: SigningKey,
    /// Not registered: signs with the registered ES384 key's `kid`.
    intruder: SigningKey,
    registered: JwkSet,
    /// The registered keys plus the intruder under the ES384 key's `kid`.
    with_twin: JwkSet,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let es384 =
            SigningKey::from_pkcs8_der(KeyKind::Es384, &generate_pkcs8(KeyKind::Es384).unwrap()).unwrap();
        let intruder =
            SigningKey::from_pkcs8_der(KeyKind::Es384, &generate_pkcs8(KeyKind::Es384).unwrap()).unwrap();
        let rs384 =
            SigningKey::from_pkcs8_der(KeyKind::Rs384, &generate_pkcs8(KeyKind::Rs384).unwrap()).unwrap();
        let p256 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let es256 =
            SigningKey::from_pem(pem_encode("PRIVATE KEY", p256.as_ref()).as_bytes(), Some(Algorithm::ES256))
                .unwrap();
        let registered = JwkSet {
            keys: vec![es384.public_jwk.clone(), es256.public_jwk.clone(), rs384.public_jwk.clone()],
        };
        let mut twin = intruder.public_jwk.clone();
        twin.common.key_id = Some(es384.kid().to_owned());
        let mut with_twin = registered.clone();
        with_twin.keys.push(twin);
        Fixture { es384, es256, rs384, intruder, registered, with_twin }
    })
}

/// `alg` values: the five accepted, then ones that must never verify.
const ALGS: [&str; 11] =
    ["ES384", "ES256", "RS384", "RS256", "PS384", "none", "HS256", "RS512", "ES512", "EdDSA", "es384"];

#[derive(Arbitrary, Debug)]
struct Built<'a> {
    alg: u8,
    kid: Kid<'a>,
    /// A JSON object whose members are added to (or override) the header.
    header_extra: Option<&'a str>,
    iss: Who<'a>,
    sub: Who<'a>,
    aud: Aud<'a>,
    exp: Option<Time>,
    nbf: Option<Time>,
    iat: Option<Time>,
    jti: Jti<'a>,
    /// A JSON object whose members are added to (or override) the claims.
    claims_extra: Option<&'a str>,
    signer: Signer<'a>,
    /// Corrupt one byte of the finished token: (position, xor mask).
    corrupt: Option<(u16, u8)>,
    keys: Keys<'a>,
}

#[derive(Arbitrary, Debug)]
enum Kid<'a> {
    /// The `kid` of the registered key for the token's `alg`.
    Registered,
    Missing,
    Text(&'a str),
}

#[derive(Arbitrary, Debug)]
enum Who<'a> {
    Client,
    Missing,
    Number(i32),
    Text(&'a str),
}

#[derive(Arbitrary, Debug)]
enum Aud<'a> {
    TokenUrl,
    /// An array with the token URL among others.
    ListWithTokenUrl(&'a str),
    Missing,
    Text(&'a str),
    List(Vec<&'a str>),
    Number(i32),
}

#[derive(Arbitrary, Debug)]
enum Time {
    /// Seconds from now.
    Offset(i16),
    Any(i64),
    Float(f64),
    Text,
}

#[derive(Arbitrary, Debug)]
enum Jti<'a> {
    Fresh,
    Missing,
    Text(&'a str),
    /// A string of this many bytes.
    Long(u16),
    Number(i32),
}

#[derive(Arbitrary, Debug)]
enum Signer<'a> {
    /// The registered key for the `alg` (or, for HS256, HMAC keyed with
    /// the registered public JWK: the key-confusion attack).
    Registered,
    /// An unregistered key of the same kind, under the same `kid`.
    Intruder,
    /// An empty signature.
    Unsigned,
    /// These bytes, base64url-encoded, as the signature.
    Garbage(&'a [u8]),
}

#[derive(Arbitrary, Debug)]
enum Keys<'a> {
    Registered,
    /// Two registered keys share the ES384 key's `kid`.
    WithTwin,
    /// A client JWKS (as fetched from its `jwks_uri`): hostile input.
    Jwks(&'a str),
}

// Input: one byte choosing the case, then its data:
// 0: any text as the assertion;
// 1: the choices of a built token (decoded with `arbitrary`);
// 2: a client JWKS, `\0`, then the choices of a token checked against it.
fuzz_target!(|data: &[u8]| {
    let Some((&case, rest)) = data.split_first() else { return };
    let f = fixture();
    match case % 3 {
        0 => {
            let Ok(text) = std::str::from_utf8(rest) else { return };
            // The harness signed nothing: nothing may verify.
            let result = check(text, &f.registered);
            assert!(result.is_err(), "unsigned text {text:?} accepted: {result:?}");
        }
        1 => {
            let Ok(built) = Unstructured::new(rest).arbitrary::<Built<'_>>() else { return };
            built_case(f, built);
        }
        _ => {
            let split = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            let Ok(jwks) = std::str::from_utf8(&rest[..split]) else { return };
            let choices = rest.get(split + 1..).unwrap_or(b"");
            let Ok(mut built) = Unstructured::new(choices).arbitrary::<Built<'_>>() else { return };
            built.keys = Keys::Jwks(jwks);
            built_case(f, built);
        }
    }
});

/// What the token endpoint does with an assertion.
fn check(text: &str, keys: &JwkSet) -> Result<Verified, ErrorCode> {
    let outcome = assertion::peek(text).and_then(|unverified| {
        assert!(!unverified.client_id.is_empty(), "empty client_id from peek");
        assertion::verify(text, &unverified, keys, &[AUD.to_owned()], NOW)
    });
    outcome.map_err(|error| {
        // Every failure of the assertion is invalid_client (RFC 7523 §3.2).
        assert_eq!(error.code, ErrorCode::InvalidClient, "{}", error.description);
        error.code
    })
}

fn built_case(f: &Fixture, b: Built<'_>) {
    let alg = ALGS[usize::from(b.alg) % ALGS.len()];
    let key = match alg {
        "ES384" => Some(&f.es384),
        "ES256" => Some(&f.es256),
        "RS384" | "RS256" | "PS384" => Some(&f.rs384),
        _ => None,
    };
    let mut header = Map::new();
    header.insert("alg".into(), json!(alg));
    header.insert("typ".into(), json!("JWT"));
    match &b.kid {
        Kid::Registered => {
            header.insert("kid".into(), json!(key.unwrap_or(&f.es384).kid()));
        }
        Kid::Missing => {}
        Kid::Text(text) => {
            header.insert("kid".into(), json!(text));
        }
    }
    let header_extended = merge(&mut header, b.header_extra);

    let mut claims = Map::new();
    for (name, who) in [("iss", &b.iss), ("sub", &b.sub)] {
        match who {
            Who::Client => claims.insert(name.into(), json!(CLIENT)),
            Who::Missing => None,
            Who::Number(n) => claims.insert(name.into(), json!(n)),
            Who::Text(text) => claims.insert(name.into(), json!(text)),
        };
    }
    match &b.aud {
        Aud::TokenUrl => claims.insert("aud".into(), json!(AUD)),
        Aud::ListWithTokenUrl(other) => claims.insert("aud".into(), json!([other, AUD])),
        Aud::Missing => None,
        Aud::Text(text) => claims.insert("aud".into(), json!(text)),
        Aud::List(list) => claims.insert("aud".into(), json!(list)),
        Aud::Number(n) => claims.insert("aud".into(), json!(n)),
    };
    for (name, time) in [("exp", &b.exp), ("nbf", &b.nbf), ("iat", &b.iat)] {
        let value = match time {
            None => continue,
            Some(Time::Offset(s)) => json!(NOW + i64::from(*s)),
            Some(Time::Any(t)) => json!(t),
            Some(Time::Float(t)) if t.is_finite() => json!(t),
            Some(Time::Float(_)) => continue,
            Some(Time::Text) => json!("soon"),
        };
        claims.insert(name.into(), value);
    }
    match &b.jti {
        Jti::Fresh => claims.insert("jti".into(), json!("jti-1")),
        Jti::Missing => None,
        Jti::Text(text) => claims.insert("jti".into(), json!(text)),
        Jti::Long(n) => claims.insert("jti".into(), json!("j".repeat(usize::from(*n % 600)))),
        Jti::Number(n) => claims.insert("jti".into(), json!(n)),
    };
    let claims_extended = merge(&mut claims, b.claims_extra);

    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message = format!(
        "{}.{}",
        b64.encode(Value::Object(header.clone()).to_string()),
        b64.encode(Value::Object(claims.clone()).to_string())
    );
    let registered_signature = matches!(b.signer, Signer::Registered) && key.is_some();
    let signature = match (&b.signer, key) {
        (Signer::Registered, Some(key)) => sign(&message, key, alg),
        (Signer::Registered, None) if alg == "HS256" => {
            let secret = serde_json::to_vec(&f.es384.public_jwk).unwrap();
            let hmac = jsonwebtoken::EncodingKey::from_secret(&secret).unwrap();
            jsonwebtoken::crypto::sign(message.as_bytes(), &hmac, Algorithm::HS256).unwrap_or_default()
        }
        (Signer::Intruder, Some(key)) if key.algorithm == Algorithm::ES384 => {
            sign(&message, &f.intruder, alg)
        }
        (Signer::Garbage(bytes), _) => b64.encode(bytes),
        _ => String::new(),
    };
    let signed = format!("{message}.{signature}");
    let mut token = signed.clone().into_bytes();
    if let Some((at, mask)) = b.corrupt
        && !token.is_empty()
    {
        let at = usize::from(at) % token.len();
        token[at] ^= mask;
    }
    let Ok(token) = String::from_utf8(token) else { return };

    let custom;
    let keys = match &b.keys {
        Keys::Registered => &f.registered,
        Keys::WithTwin => &f.with_twin,
        Keys::Jwks(text) => {
            let Ok(value) = serde_json::from_str::<Value>(text) else { return };
            let Ok(set) = jwks::parse_jwks(&value) else { return };
            custom = set;
            &custom
        }
    };
    let result = check(&token, keys);

    if let Ok(verified) = &result {
        // Accepted: exactly what a registered key signed, under a registered kid.
        assert!(registered_signature, "accepted without a registered signature: {b:?}");
        assert_eq!(token, signed, "accepted a corrupted token");
        assert!(!matches!(b.keys, Keys::WithTwin) || alg != "ES384", "a kid shared by two keys verified");
        let kid = header.get("kid").and_then(Value::as_str).unwrap_or("");
        assert_eq!(kid, key.map_or("", SigningKey::kid), "verified under another kid");
        check_claims(verified, &claims);
    }

    // A well-formed assertion signed with a registered key is accepted.
    let well_formed = registered_signature
        && b.corrupt.is_none()
        && matches!(b.keys, Keys::Registered)
        && matches!(alg, "ES384" | "ES256" | "RS384")
        && matches!(b.kid, Kid::Registered)
        && !header_extended
        && !claims_extended
        && matches!((&b.iss, &b.sub), (Who::Client, Who::Client))
        && matches!(b.aud, Aud::TokenUrl | Aud::ListWithTokenUrl(_))
        && matches!(b.exp, Some(Time::Offset(s)) if (-CLOCK_SKEW_S..=MAX_LIFETIME_S + CLOCK_SKEW_S).contains(&i64::from(s)))
        && [&b.nbf, &b.iat].iter().all(|t| match t {
            None => true,
            Some(Time::Offset(s)) => i64::from(*s) <= CLOCK_SKEW_S,
            Some(_) => false,
        })
        && matches!(b.jti, Jti::Fresh);
    if well_formed {
        let verified =
            result.unwrap_or_else(|code| panic!("a well-formed assertion was refused ({code:?}): {b:?}"));
        assert_eq!(verified.client_id, CLIENT);
        assert_eq!(verified.jti, "jti-1");
    }
}

/// Merge the members of `extra` (a JSON object) into `into`; whether any were.
fn merge(into: &mut Map<String, Value>, extra: Option<&str>) -> bool {
    match extra.and_then(|text| serde_json::from_str::<Value>(text).ok()) {
        Some(Value::Object(members)) if !members.is_empty() => {
            into.extend(members);
            true
        }
        _ => false,
    }
}

fn sign(message: &str, key: &SigningKey, alg: &str) -> String {
    let alg = match alg {
        "ES384" => Algorithm::ES384,
        "ES256" => Algorithm::ES256,
        "RS384" => Algorithm::RS384,
        "RS256" => Algorithm::RS256,
        _ => Algorithm::PS384,
    };
    jsonwebtoken::crypto::sign(message.as_bytes(), &key.encoding, alg).unwrap_or_default()
}

/// The claims of an accepted assertion obey every rule.
fn check_claims(verified: &Verified, claims: &Map<String, Value>) {
    let string = |name: &str| claims.get(name).and_then(Value::as_str);
    assert_eq!(string("iss"), Some(verified.client_id.as_str()), "iss");
    assert_eq!(string("sub"), Some(verified.client_id.as_str()), "sub");
    let aud_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == AUD,
        Some(Value::Array(list)) => list.iter().any(|a| a == AUD),
        _ => false,
    };
    assert!(aud_ok, "aud {:?}", claims.get("aud"));
    assert!(
        (NOW - CLOCK_SKEW_S..=NOW + MAX_LIFETIME_S + CLOCK_SKEW_S).contains(&verified.exp),
        "exp {} outside the window",
        verified.exp
    );
    let number = |v: &Value| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64));
    assert_eq!(claims.get("exp").and_then(number), Some(verified.exp), "exp");
    for name in ["nbf", "iat"] {
        if let Some(value) = claims.get(name) {
            let t = number(value).unwrap_or_else(|| panic!("{name} {value:?} is not a number"));
            assert!(t <= NOW + CLOCK_SKEW_S, "{name} in the future");
        }
    }
    assert_eq!(string("jti"), Some(verified.jti.as_str()), "jti");
    assert!((1..=MAX_JTI_LEN).contains(&verified.jti.len()), "jti of {} bytes", verified.jti.len());
}
