//! fhirwall's access tokens: ES384 JWTs signed with the keyring's
//! access-token key (in the store, shared by every node of a PostgreSQL
//! deployment, rotated without downtime: see `keyring`). A token names its
//! generation by `kid`; every generation that has not retired verifies.
//!
//! Claims: `iss` (the token endpoint URL), `sub` and `client_id`, `aud` (the
//! FHIR base URL), `scope`, `org` and `npi` (the provider organization the
//! token acts for, fixed at issue time), `reg` (the client's registration
//! id), `iat`, `exp`, `jti`. Header `typ: at+jwt` (RFC 9068), `kid` = the
//! key's RFC 7638 thumbprint.

use std::sync::Arc;

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use sha2::Digest;

use super::keys::{KeyError, KeyKind, SigningKey};
use super::scopes::ScopeSet;
use crate::keyring::{self, KeySet};
/// The access token `typ` header.
const TYP: &str = "at+jwt";
/// Longest bearer token looked at.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The claims of a fhirwall access token.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub client_id: String,
    pub scope: String,
    /// `Organization/{id}`; a token without one never reaches data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npi: Option<String>,
    pub reg: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

/// Why an access token is refused (all 401 invalid_token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the access token is malformed")]
    Malformed,
    #[error("the access token was not issued by this fhirwall")]
    Signature,
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is not for this server")]
    Audience,
}

/// Why no token could be signed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("no signing key is in force (every generation is retired)")]
    NoSigningKey,
    #[error(transparent)]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// One generation of the signing key, ready to sign and verify.
struct Generation {
    generation: i64,
    key: SigningKey,
    decoding: DecodingKey,
    active_from: i64,
    retire_at: i64,
}

/// Issues and verifies access tokens with the generations of the keyring's
/// access-token key (replaced as a whole when the keyring changes).
pub struct TokenKeys {
    generations: ArcSwap<Vec<Generation>>,
    validation: Validation,
    issuer: String,
    audience: String,
}

impl TokenKeys {
    /// One key that never retires (tests, tools).
    pub fn new(key: SigningKey, issuer: &str, audience: &str) -> TokenKeys {
        let decoding = DecodingKey::from_jwk(&key.public_jwk).expect("a JWK made from our own key is valid");
        let only = Generation { generation: 1, key, decoding, active_from: 0, retire_at: keyring::NEVER };
        TokenKeys::with(vec![only], issuer, audience)
    }

    /// The keyring's access-token generations.
    pub fn from_set(set: &KeySet, issuer: &str, audience: &str) -> Result<TokenKeys, KeyError> {
        Ok(TokenKeys::with(generations(set)?, issuer, audience))
    }

    fn with(generations: Vec<Generation>, issuer: &str, audience: &str) -> TokenKeys {
        let mut validation = Validation::new(Algorithm::ES384);
        // Claims are checked below, with exact errors; the library checks the signature.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        TokenKeys {
            generations: ArcSwap::from_pointee(generations),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        }
    }

    /// Take a new state of the keyring. An unusable generation refuses the
    /// whole set (the previous one stays in force).
    /// `true` when something changed (a generation added, retired or gone).
    pub fn install(&self, set: &KeySet) -> Result<bool, KeyError> {
        let current = self.generations.load();
        let unchanged = current.len() == set.versions.len()
            && current.iter().zip(&set.versions).all(|(g, v)| {
                (g.generation, g.active_from, g.retire_at) == (v.generation, v.active_from, v.retire_at)
            });
        if unchanged {
            return Ok(false);
        }
        self.generations.store(Arc::new(generations(set)?));
        Ok(true)
    }

    /// `(generation, kid)` of every generation held, newest first.
    pub fn kids(&self) -> Vec<(i64, String)> {
        self.generations.load().iter().map(|g| (g.generation, g.key.kid().to_owned())).collect()
    }

    /// Sign an access token with the generation in force at its `iat`.
    pub fn issue(&self, claims: &AccessClaims) -> Result<String, IssueError> {
        let generations = self.generations.load();
        let signing = generations
            .iter()
            .find(|g| g.active_from <= claims.iat && claims.iat < g.retire_at)
            .ok_or(IssueError::NoSigningKey)?;
        let mut header = Header::new(Algorithm::ES384);
        header.typ = Some(TYP.into());
        header.kid = Some(signing.key.kid().to_owned());
        Ok(jsonwebtoken::encode(&header, claims, &signing.key.encoding)?)
    }

    /// The claims every token gets from this server.
    #[allow(clippy::too_many_arguments)]
    pub fn claims(
        &self,
        client_id: &str,
        scope: &ScopeSet,
        org: &str,
        npi: Option<&str>,
        reg: &str,
        now: i64,
        ttl: i64,
    ) -> AccessClaims {
        AccessClaims {
            iss: self.issuer.clone(),
            sub: client_id.to_owned(),
            aud: self.audience.clone(),
            client_id: client_id.to_owned(),
            scope: scope.to_string(),
            org: Some(org.to_owned()),
            npi: npi.map(str::to_owned),
            reg: reg.to_owned(),
            iat: now,
            exp: now + ttl,
            jti: hex::encode(rand::random::<[u8; 16]>()),
        }
    }

    /// Verify signature, type, issuer, audience and expiry.
    pub fn verify(&self, token: &str, now: i64) -> Result<AccessClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::ES384 || header.typ.as_deref() != Some(TYP) {
            return Err(TokenError::Signature);
        }
        // The generation named by `kid`, if it still verifies: a retired
        // or revoked key's tokens are refused like a stranger's.
        let generations = self.generations.load();
        let generation = generations
            .iter()
            .find(|g| header.kid.as_deref() == Some(g.key.kid()) && now < g.retire_at)
            .ok_or(TokenError::Signature)?;
        let data = jsonwebtoken::decode::<AccessClaims>(token, &generation.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::Signature,
                _ => TokenError::Malformed,
            })?;
        let claims = data.claims;
        if claims.iss != self.issuer {
            return Err(TokenError::Signature);
        }
        if claims.aud != self.audience {
            return Err(TokenError::Audience);
        }
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if claims.sub != claims.client_id {
            return Err(TokenError::Malformed);
        }
        Ok(claims)
    }
}

/// Signing keys of the keyring's generations (every one must be usable).
fn generations(set: &KeySet) -> Result<Vec<Generation>, KeyError> {
    set.versions
        .iter()
        .map(|v| {
            let key = SigningKey::from_pkcs8_der(KeyKind::Es384, &v.material)?;
            let decoding = DecodingKey::from_jwk(&key.public_jwk)
                .map_err(|e| KeyError::Invalid(format!("generation {}: {e}", v.generation)))?;
            Ok(Generation {
                generation: v.generation,
                key,
                decoding,
                active_from: v.active_from,
                retire_at: v.retire_at,
            })
        })
        .collect()
}

/// The key of the verified-token cache: SHA-256 of the whole token (a
/// cache hit must mean "exactly this token was verified").
pub fn cache_key(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys;
    use crate::keyring::{KeyVersion, Purpose};
    use base64::Engine;

    fn keys() -> TokenKeys {
        let der = keys::generate_pkcs8(KeyKind::Es384).unwrap();
        TokenKeys::new(
            SigningKey::from_pkcs8_der(KeyKind::Es384, &der).unwrap(),
            "https://fw/auth/token",
            "https://fw/fhir",
        )
    }

    fn claims(k: &TokenKeys) -> AccessClaims {
        k.claims(
            "c",
            &ScopeSet::parse_strict("system/*.read").unwrap(),
            "Organization/o",
            None,
            "r",
            1_000,
            300,
        )
    }

    #[test]
    fn issued_tokens_verify_until_they_expire() {
        let k = keys();
        let token = k.issue(&claims(&k)).unwrap();
        let back = k.verify(&token, 1_100).unwrap();
        assert_eq!(back.client_id, "c");
        assert_eq!(back.org.as_deref(), Some("Organization/o"));
        assert_eq!(k.verify(&token, 1_300).unwrap_err(), TokenError::Expired);
    }

    #[test]
    fn foreign_tampered_and_misdirected_tokens_are_refused() {
        let k = keys();
        let other = keys();
        let token = k.issue(&claims(&k)).unwrap();
        // Another key (another fhirwall, or a client key).
        assert!(k.verify(&other.issue(&claims(&other)).unwrap(), 1_100).is_err());
        // Tampered payload.
        let parts: Vec<&str> = token.split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut payload: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        payload["scope"] = "system/*.cruds".into();
        let forged = format!("{}.{}.{}", parts[0], b64.encode(payload.to_string()), parts[2]);
        assert_eq!(k.verify(&forged, 1_100).unwrap_err(), TokenError::Signature);
        // alg none / HS256 headers.
        for header in [r#"{"alg":"none","typ":"at+jwt"}"#, r#"{"alg":"HS256","typ":"at+jwt"}"#] {
            let t = format!("{}.{}.", b64.encode(header), parts[1]);
            assert!(k.verify(&t, 1_100).is_err(), "{header}");
        }
        // Wrong audience or issuer (same key, e.g. a token minted for another base URL).
        let mut c = claims(&k);
        c.aud = "https://other/fhir".into();
        assert_eq!(k.verify(&k.issue(&c).unwrap(), 1_100).unwrap_err(), TokenError::Audience);
        let mut c = claims(&k);
        c.iss = "https://other/auth/token".into();
        assert_eq!(k.verify(&k.issue(&c).unwrap(), 1_100).unwrap_err(), TokenError::Signature);
        for garbage in ["", "abc", "a.b.c", &"x".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(k.verify(garbage, 1_100).is_err());
        }
    }

    fn version(generation: i64, active_from: i64, retire_at: i64) -> KeyVersion {
        KeyVersion {
            purpose: Purpose::AccessToken,
            generation,
            material: keys::generate_pkcs8(KeyKind::Es384).unwrap(),
            created_at: 0,
            active_from,
            retire_at,
        }
    }

    #[test]
    fn after_a_rotation_the_new_generation_signs_and_the_old_one_verifies_until_it_retires() {
        let old = version(1, 0, keyring::NEVER);
        let k = TokenKeys::from_set(
            &KeySet { versions: vec![old.clone()] },
            "https://fw/auth/token",
            "https://fw/fhir",
        )
        .unwrap();
        let before = k.issue(&claims(&k)).unwrap(); // iat 1_000
        // Generation 2 published at 1_000, signing from 1_006; generation 1 retires at 1_400.
        let mut retiring = old.clone();
        retiring.retire_at = 1_400;
        let set = KeySet { versions: vec![version(2, 1_006, keyring::NEVER), retiring] };
        assert!(k.install(&set).unwrap());
        assert!(!k.install(&set).unwrap(), "the same state again changes nothing");
        let kid_of = |token: &str| jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
        let (new_kid, old_kid) = (k.kids()[0].1.clone(), k.kids()[1].1.clone());
        assert_eq!(kid_of(&before), old_kid);
        // Before 1_006 the old generation still signs; from then on the new one.
        assert_eq!(kid_of(&k.issue(&claims(&k)).unwrap()), old_kid);
        let mut later = claims(&k);
        later.iat = 1_006;
        later.exp = 10_000;
        let after = k.issue(&later).unwrap();
        assert_eq!(kid_of(&after), new_kid);
        // Both verify while the old one has not retired…
        assert!(k.verify(&before, 1_100).is_ok());
        assert!(k.verify(&after, 1_100).is_ok());
        // …then the old one's tokens are refused like a stranger's.
        let mut long = claims(&k);
        long.exp = 10_000;
        let long_lived = k.issue(&long).unwrap();
        assert!(k.verify(&long_lived, 1_399).is_ok());
        assert_eq!(k.verify(&long_lived, 1_400).unwrap_err(), TokenError::Signature);
        assert!(k.verify(&after, 1_400).is_ok());
    }

    #[test]
    fn with_every_generation_retired_nothing_is_signed() {
        let set = KeySet { versions: vec![version(1, 0, 500)] };
        let k = TokenKeys::from_set(&set, "https://fw/auth/token", "https://fw/fhir").unwrap();
        assert!(matches!(k.issue(&claims(&k)), Err(IssueError::NoSigningKey)));
    }
}
