//! fhirwall's access tokens: ES384 JWTs signed with a key that lives in the
//! store (`fhirwall_secrets`, created by the first node that starts), so every
//! node of a PostgreSQL deployment issues and verifies the same tokens.
//!
//! Claims: `iss` (the token endpoint URL), `sub` and `client_id`, `aud` (the
//! FHIR base URL), `scope`, `org` and `npi` (the provider organization the
//! token acts for, fixed at issue time), `reg` (the client's registration
//! id), `iat`, `exp`, `jti`. Header `typ: at+jwt` (RFC 9068), `kid` = the
//! key's RFC 7638 thumbprint.

use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use sha2::Digest;
use sqlx::Row;

use super::keys::{self, KeyKind, SigningKey};
use super::scopes::ScopeSet;
use crate::store::{Store, StoreError};

/// Name of the signing key in `fhirwall_secrets`.
const KEY_NAME: &str = "auth-access-token-key-es384";
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

/// Issues and verifies access tokens.
pub struct TokenKeys {
    key: SigningKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
}

impl TokenKeys {
    /// Load the shared signing key from the store, creating it on first start.
    pub async fn load(store: &Store, issuer: &str, audience: &str) -> Result<TokenKeys, StoreError> {
        let fresh = keys::generate_pkcs8(KeyKind::Es384).map_err(|e| StoreError::Setup(e.to_string()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        // Concurrent first starts agree: the insert does nothing when another
        // node won, and everyone reads the stored value back.
        sqlx::query(
            "INSERT INTO fhirwall_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(KEY_NAME)
        .bind(b64.encode(&fresh))
        .execute(store.pool())
        .await?;
        let row = sqlx::query("SELECT value FROM fhirwall_secrets WHERE name = $1")
            .bind(KEY_NAME)
            .fetch_one(store.pool())
            .await?;
        let value: String = row.try_get("value")?;
        let der = b64.decode(value).map_err(|e| StoreError::Setup(format!("{KEY_NAME} is corrupt: {e}")))?;
        let key = SigningKey::from_pkcs8_der(KeyKind::Es384, &der)
            .map_err(|e| StoreError::Setup(format!("{KEY_NAME} is unusable: {e}")))?;
        Ok(TokenKeys::new(key, issuer, audience))
    }

    pub fn new(key: SigningKey, issuer: &str, audience: &str) -> TokenKeys {
        let decoding = DecodingKey::from_jwk(&key.public_jwk).expect("a JWK made from our own key is valid");
        let mut validation = Validation::new(Algorithm::ES384);
        // Claims are checked below, with exact errors; the library checks the signature.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        TokenKeys { key, decoding, validation, issuer: issuer.to_owned(), audience: audience.to_owned() }
    }

    pub fn kid(&self) -> &str {
        self.key.kid()
    }

    /// Sign an access token.
    pub fn issue(&self, claims: &AccessClaims) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::ES384);
        header.typ = Some(TYP.into());
        header.kid = Some(self.key.kid().to_owned());
        jsonwebtoken::encode(&header, claims, &self.key.encoding)
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
        if header.alg != Algorithm::ES384
            || header.typ.as_deref() != Some(TYP)
            || header.kid.as_deref() != Some(self.kid())
        {
            return Err(TokenError::Signature);
        }
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::Signature,
                _ => TokenError::Malformed,
            },
        )?;
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

/// The key of the verified-token cache: SHA-256 of the whole token (a
/// cache hit must mean "exactly this token was verified").
pub fn cache_key(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// A verified token's claims with its parsed scopes, shared by cache hits.
pub type Verified = Arc<(AccessClaims, ScopeSet)>;

#[cfg(test)]
mod tests {
    use super::*;

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
}
