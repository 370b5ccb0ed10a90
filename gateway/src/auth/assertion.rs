//! Client assertions (RFC 7523 as profiled by SMART Backend Services):
//! the checks, in order, and the OAuth error each failure gives.
//!
//! | check | error |
//! |---|---|
//! | not a compact JWS, header unreadable, `alg` none/HMAC/other | invalid_client |
//! | no `kid` in the header (SMART requires one) | invalid_client |
//! | `iss` missing, not a string, or ≠ `sub` | invalid_client |
//! | `jku` present and ≠ the registered `jwks_uri` | invalid_client |
//! | no registered key fits `kid`/`alg`, or no signature verifies | invalid_client |
//! | `aud` does not hold the token endpoint URL | invalid_client |
//! | `exp` missing or past (beyond [`CLOCK_SKEW_S`]) | invalid_client |
//! | `nbf`/`iat` in the future (beyond the skew) | invalid_client |
//! | `jti` missing, empty or longer than 256 | invalid_client |
//! | `exp` more than 5 minutes ahead (+ skew) | invalid_client |
//! | `jti` seen before (checked by the caller, in the store) | invalid_client |
//!
//! Every failure of the assertion is `invalid_client` (401), as RFC 7523
//! §3.2 has it for client authentication: the assertion is how the client
//! authenticates, so an assertion that breaks a rule authenticates no one.
//! Keys embedded in the token (`jwk`, `x5c`, `x5u`) are never used.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Header, Validation};

use super::jwks;
use super::keys::ACCEPTED_ALGS;

/// Clock skew tolerated between the client and fhirwall, seconds.
pub const CLOCK_SKEW_S: i64 = 60;
/// Longest assertion lifetime SMART allows, seconds.
pub const MAX_LIFETIME_S: i64 = 300;
/// Longest assertion read.
pub const MAX_ASSERTION_LEN: usize = 16 * 1024;
/// Longest `jti` accepted.
pub const MAX_JTI_LEN: usize = 256;

/// An RFC 6749 §5.2 error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidScope,
    UnsupportedGrantType,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
        }
    }

    /// 401 for invalid_client, 400 otherwise.
    pub fn status(self) -> http::StatusCode {
        match self {
            ErrorCode::InvalidClient => http::StatusCode::UNAUTHORIZED,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }
}

/// A token endpoint error: the code and a description safe to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub code: ErrorCode,
    pub description: String,
}

impl OAuthError {
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        OAuthError { code, description: description.into() }
    }
    pub fn client(description: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidClient, description)
    }
    pub fn request(description: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, description)
    }
}

/// What the unverified assertion says about itself: enough to find the client.
#[derive(Debug, Clone)]
pub struct Unverified {
    pub header: Header,
    pub client_id: String,
}

/// A verified assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub client_id: String,
    pub jti: String,
    pub exp: i64,
}

/// Read the header and `iss`/`sub` without trusting them.
pub fn peek(assertion: &str) -> Result<Unverified, OAuthError> {
    if assertion.len() > MAX_ASSERTION_LEN || assertion.split('.').count() != 3 {
        return Err(OAuthError::client("client_assertion is not a signed JWT (compact JWS)"));
    }
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|_| OAuthError::client("client_assertion header is unreadable or names an unknown alg"))?;
    if !ACCEPTED_ALGS.contains(&header.alg) {
        return Err(OAuthError::client(format!(
            "client_assertion alg {:?} is not accepted (RS384, ES384, RS256, ES256, PS384)",
            header.alg
        )));
    }
    // SMART Backend Services: the header names the signing key.
    if header.kid.as_deref().is_none_or(str::is_empty) {
        return Err(OAuthError::client("client_assertion header has no kid (SMART requires one)"));
    }
    let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode_claims(assertion)
        .map_err(|_| OAuthError::client("client_assertion claims are unreadable"))?;
    let iss = claims.get("iss").and_then(|v| v.as_str()).unwrap_or("");
    let sub = claims.get("sub").and_then(|v| v.as_str()).unwrap_or("");
    if iss.is_empty() || iss != sub {
        return Err(OAuthError::client("client_assertion iss and sub must both be the client_id"));
    }
    Ok(Unverified { header, client_id: iss.to_owned() })
}

/// `jku`, when present, must be the client's registered `jwks_uri`.
pub fn check_jku(header: &Header, registered: Option<&str>) -> Result<(), OAuthError> {
    match (&header.jku, registered) {
        (None, _) => Ok(()),
        (Some(jku), Some(uri)) if jku == uri => Ok(()),
        (Some(_), _) => {
            Err(OAuthError::client("client_assertion jku is not the client's registered jwks_uri"))
        }
    }
}

/// Does any key of `keys` fit this assertion's `alg` and `kid`?
pub fn has_candidate(keys: &JwkSet, header: &Header) -> bool {
    !jwks::candidates(keys, header.alg, header.kid.as_deref()).is_empty()
}

/// Verify the signature with the client's keys and every claim.
pub fn verify(
    assertion: &str,
    unverified: &Unverified,
    keys: &JwkSet,
    audiences: &[String],
    now: i64,
) -> Result<Verified, OAuthError> {
    let header = &unverified.header;
    let candidates = jwks::candidates(keys, header.alg, header.kid.as_deref());
    if candidates.is_empty() {
        return Err(OAuthError::client(match &header.kid {
            Some(_) => "no registered key has the client_assertion's kid (or it does not fit its alg)",
            None => "no registered key fits the client_assertion's alg",
        }));
    }
    // SMART 2.x key resolution: more than one key matching is a failure,
    // not a choice (a client's JWKS must name each key once).
    if candidates.len() > 1 {
        return Err(OAuthError::client("more than one registered key has the client_assertion's kid"));
    }
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let mut claims = None;
    for jwk in candidates {
        let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
        if let Ok(data) = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation) {
            claims = Some(data.claims);
            break;
        }
    }
    let claims = claims.ok_or_else(|| OAuthError::client("client_assertion signature does not verify"))?;
    check_claims(&claims, &unverified.client_id, audiences, now)
}

/// The claim checks, on verified claims.
pub fn check_claims(
    claims: &serde_json::Value,
    client_id: &str,
    audiences: &[String],
    now: i64,
) -> Result<Verified, OAuthError> {
    let string = |name: &str| claims.get(name).and_then(|v| v.as_str());
    if string("iss") != Some(client_id) || string("sub") != Some(client_id) {
        return Err(OAuthError::client("client_assertion iss and sub must both be the client_id"));
    }
    let aud_ok = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => audiences.contains(a),
        Some(serde_json::Value::Array(list)) => {
            list.iter().any(|a| a.as_str().is_some_and(|a| audiences.iter().any(|x| x == a)))
        }
        _ => false,
    };
    if !aud_ok {
        return Err(OAuthError::client("client_assertion aud must be the token endpoint URL"));
    }
    let number =
        |name: &str| claims.get(name).and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)));
    let exp = number("exp").ok_or_else(|| OAuthError::client("client_assertion has no exp"))?;
    // Saturating: `exp` is the client's number (i64::MAX must not wrap).
    if exp.saturating_add(CLOCK_SKEW_S) < now {
        return Err(OAuthError::client("client_assertion has expired"));
    }
    for name in ["nbf", "iat"] {
        if claims.get(name).is_some() {
            let t = number(name)
                .ok_or_else(|| OAuthError::client(format!("client_assertion {name} is not a number")))?;
            if t > now + CLOCK_SKEW_S {
                return Err(OAuthError::client(format!("client_assertion {name} is in the future")));
            }
        }
    }
    let jti = match claims.get("jti") {
        Some(serde_json::Value::String(j)) if !j.is_empty() && j.len() <= MAX_JTI_LEN => j.clone(),
        _ => return Err(OAuthError::client("client_assertion needs a jti (1-256 characters)")),
    };
    if exp > now + MAX_LIFETIME_S + CLOCK_SKEW_S {
        return Err(OAuthError::client("client_assertion exp is more than 5 minutes ahead"));
    }
    Ok(Verified { client_id: client_id.to_owned(), jti, exp })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::{KeyKind, SigningKey, generate_pkcs8, pem_encode};
    use base64::Engine;
    use jsonwebtoken::Algorithm;
    use serde_json::json;

    const AUD: &str = "https://fw.example/auth/token";
    const NOW: i64 = 1_700_000_000;

    struct Fixture {
        rsa: SigningKey,
        ec: SigningKey,
        other: SigningKey,
        keys: JwkSet,
    }

    fn fixture() -> Fixture {
        let rsa_der = generate_pkcs8(KeyKind::Rs384).unwrap();
        let rsa = SigningKey::from_pem(pem_encode("PRIVATE KEY", &rsa_der).as_bytes(), None).unwrap();
        let ec =
            SigningKey::from_pkcs8_der(KeyKind::Es384, &generate_pkcs8(KeyKind::Es384).unwrap()).unwrap();
        let other =
            SigningKey::from_pkcs8_der(KeyKind::Es384, &generate_pkcs8(KeyKind::Es384).unwrap()).unwrap();
        let keys = JwkSet { keys: vec![rsa.public_jwk.clone(), ec.public_jwk.clone()] };
        Fixture { rsa, ec, other, keys }
    }

    fn good_claims() -> serde_json::Value {
        json!({"iss": "c1", "sub": "c1", "aud": AUD, "exp": NOW + 240, "jti": "j-1", "iat": NOW})
    }

    fn sign(key: &SigningKey, alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let mut header = Header::new(alg);
        header.typ = Some("JWT".into());
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
    }

    fn check(assertion: &str, keys: &JwkSet) -> Result<Verified, OAuthError> {
        let unverified = peek(assertion)?;
        verify(assertion, &unverified, keys, &[AUD.to_string()], NOW)
    }

    #[test]
    fn good_assertions_verify_with_rs384_and_es384() {
        let f = fixture();
        for (key, alg) in [(&f.rsa, Algorithm::RS384), (&f.ec, Algorithm::ES384)] {
            let v = check(&sign(key, alg, Some(key.kid()), &good_claims()), &f.keys).unwrap();
            assert_eq!(v, Verified { client_id: "c1".into(), jti: "j-1".into(), exp: NOW + 240 });
        }
        // aud as an array holding the token URL.
        let mut c = good_claims();
        c["aud"] = json!(["https://x", AUD]);
        assert!(check(&sign(&f.ec, Algorithm::ES384, Some(f.ec.kid()), &c), &f.keys).is_ok());
        // RS256 and PS384 with the RSA key (its JWK says RS384, so drop alg from the registered key).
        let mut loose = f.rsa.public_jwk.clone();
        loose.common.key_algorithm = None;
        let loose = JwkSet { keys: vec![loose] };
        for alg in [Algorithm::RS256, Algorithm::PS384] {
            assert!(check(&sign(&f.rsa, alg, Some(f.rsa.kid()), &good_claims()), &loose).is_ok(), "{alg:?}");
        }
    }

    #[test]
    fn every_rejection_has_its_error() {
        let f = fixture();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let ec_kid = f.ec.kid().to_owned();
        let signed = |claims: serde_json::Value| sign(&f.ec, Algorithm::ES384, Some(&ec_kid), &claims);
        let with = |patch: serde_json::Value| {
            let mut c = good_claims();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            signed(c)
        };
        let unsigned = |header: serde_json::Value| {
            format!("{}.{}.", b64.encode(header.to_string()), b64.encode(good_claims().to_string()))
        };
        let good = signed(good_claims());
        let parts: Vec<&str> = good.split('.').collect();
        let tampered = {
            let mut c = good_claims();
            c["sub"] = "c1".into();
            c["jti"] = "other".into();
            format!("{}.{}.{}", parts[0], b64.encode(c.to_string()), parts[2])
        };
        // HS256 signed with the public key's bytes as the secret (key confusion).
        let hs256 = {
            let secret = serde_json::to_vec(&f.ec.public_jwk).unwrap();
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(ec_kid.clone());
            jsonwebtoken::encode(
                &header,
                &good_claims(),
                &jsonwebtoken::EncodingKey::from_secret(&secret).unwrap(),
            )
            .unwrap()
        };
        // A key embedded in the header is ignored: the signature is checked with registered keys only.
        let embedded_jwk = {
            let mut header = Header::new(Algorithm::ES384);
            header.jwk = Some(f.other.public_jwk.clone());
            jsonwebtoken::encode(&header, &good_claims(), &f.other.encoding).unwrap()
        };
        let x5u = {
            let mut header = Header::new(Algorithm::ES384);
            header.x5u = Some("https://evil.example/cert.pem".into());
            jsonwebtoken::encode(&header, &good_claims(), &f.other.encoding).unwrap()
        };
        use ErrorCode::*;
        let cases: Vec<(&str, String, ErrorCode)> = vec![
            ("not a JWT", "abc".into(), InvalidClient),
            ("two parts", "a.b".into(), InvalidClient),
            ("garbage header", "!!.!!.!!".into(), InvalidClient),
            ("alg none", unsigned(json!({"alg": "none", "typ": "JWT"})), InvalidClient),
            ("alg HS256 key confusion", hs256, InvalidClient),
            ("alg RS512 not accepted", unsigned(json!({"alg": "RS512"})), InvalidClient),
            (
                "signed by an unregistered key",
                sign(&f.other, Algorithm::ES384, Some(&ec_kid), &good_claims()),
                InvalidClient,
            ),
            ("no kid", sign(&f.ec, Algorithm::ES384, None, &good_claims()), InvalidClient),
            ("empty kid", sign(&f.ec, Algorithm::ES384, Some(""), &good_claims()), InvalidClient),
            ("embedded jwk header", embedded_jwk, InvalidClient),
            ("x5u header", x5u, InvalidClient),
            ("unknown kid", sign(&f.ec, Algorithm::ES384, Some("nope"), &good_claims()), InvalidClient),
            (
                "kid of a key of another type",
                sign(&f.ec, Algorithm::ES384, Some(f.rsa.kid()), &good_claims()),
                InvalidClient,
            ),
            ("tampered payload", tampered, InvalidClient),
            ("iss missing", with(json!({"iss": null})), InvalidClient),
            ("sub missing", with(json!({"sub": null})), InvalidClient),
            ("iss != sub", with(json!({"sub": "c2"})), InvalidClient),
            ("iss not a string", with(json!({"iss": 5, "sub": 5})), InvalidClient),
            ("aud missing", with(json!({"aud": null})), InvalidClient),
            ("aud is the FHIR base", with(json!({"aud": "https://fw.example/fhir"})), InvalidClient),
            ("aud array without the token URL", with(json!({"aud": ["https://x"]})), InvalidClient),
            ("exp missing", with(json!({"exp": null})), InvalidClient),
            ("exp not a number", with(json!({"exp": "soon"})), InvalidClient),
            ("exp at i64::MAX", with(json!({"exp": i64::MAX})), InvalidClient),
            ("expired", with(json!({"exp": NOW - CLOCK_SKEW_S - 1})), InvalidClient),
            ("nbf in the future", with(json!({"nbf": NOW + CLOCK_SKEW_S + 10})), InvalidClient),
            ("iat in the future", with(json!({"iat": NOW + CLOCK_SKEW_S + 10})), InvalidClient),
            ("jti missing", with(json!({"jti": null})), InvalidClient),
            ("jti empty", with(json!({"jti": ""})), InvalidClient),
            ("jti not a string", with(json!({"jti": 7})), InvalidClient),
            ("jti too long", with(json!({"jti": "j".repeat(MAX_JTI_LEN + 1)})), InvalidClient),
            (
                "exp more than 5 minutes ahead",
                with(json!({"exp": NOW + MAX_LIFETIME_S + CLOCK_SKEW_S + 1})),
                InvalidClient,
            ),
        ];
        for (what, assertion, code) in cases {
            let err = check(&assertion, &f.keys).expect_err(what);
            assert_eq!(err.code, code, "{what}: {}", err.description);
        }
        // Within the clock skew: accepted.
        assert!(check(&with(json!({"exp": NOW - 10})), &f.keys).is_ok());
        assert!(check(&with(json!({"exp": NOW + MAX_LIFETIME_S + 10})), &f.keys).is_ok());
    }

    #[test]
    fn two_registered_keys_with_one_kid_verify_nothing() {
        let f = fixture();
        let mut twin = f.other.public_jwk.clone();
        twin.common.key_id = Some(f.ec.kid().to_owned());
        let keys = JwkSet { keys: vec![f.ec.public_jwk.clone(), twin] };
        let err = check(&sign(&f.ec, Algorithm::ES384, Some(f.ec.kid()), &good_claims()), &keys).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidClient, "{}", err.description);
    }

    #[test]
    fn jku_is_honoured_only_when_registered() {
        let mut header = Header::new(Algorithm::ES384);
        assert!(check_jku(&header, None).is_ok());
        header.jku = Some("https://ehr.example/jwks.json".into());
        assert!(check_jku(&header, Some("https://ehr.example/jwks.json")).is_ok());
        assert_eq!(
            check_jku(&header, Some("https://other/jwks.json")).unwrap_err().code,
            ErrorCode::InvalidClient
        );
        assert_eq!(check_jku(&header, None).unwrap_err().code, ErrorCode::InvalidClient);
    }
}
