//! Key material: generating key pairs (fhirwall's own token key, `fhirwall
//! keygen`), PEM, public JWKs and RFC 7638 thumbprints, and which JWS
//! algorithms fhirwall accepts.

use base64::Engine;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash,
};
use jsonwebtoken::{Algorithm, EncodingKey};

/// Client assertion algorithms accepted (SMART requires RS384 and ES384).
/// Never `none`, never HMAC: a shared-secret algorithm with a public key as
/// the "secret" is the classic JWT key-confusion attack.
pub const ACCEPTED_ALGS: [Algorithm; 5] =
    [Algorithm::RS384, Algorithm::ES384, Algorithm::RS256, Algorithm::ES256, Algorithm::PS384];

/// The names of [`ACCEPTED_ALGS`], as advertised in smart-configuration.
pub const ACCEPTED_ALG_NAMES: [&str; 5] = ["RS384", "ES384", "RS256", "ES256", "PS384"];

/// Key pair kinds `fhirwall keygen` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA 3072, RS384.
    Rs384,
    /// P-384, ES384.
    Es384,
}

impl KeyKind {
    pub fn algorithm(self) -> Algorithm {
        match self {
            KeyKind::Rs384 => Algorithm::RS384,
            KeyKind::Es384 => Algorithm::ES384,
        }
    }

    pub fn parse(name: &str) -> Option<KeyKind> {
        match name.to_ascii_uppercase().as_str() {
            "RS384" => Some(KeyKind::Rs384),
            "ES384" => Some(KeyKind::Es384),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key generation failed: {0}")]
    Generate(String),
    #[error("not a usable private key: {0}")]
    Invalid(String),
}

/// A new private key as PKCS#8 DER.
pub fn generate_pkcs8(kind: KeyKind) -> Result<Vec<u8>, KeyError> {
    match kind {
        KeyKind::Es384 => {
            let rng = ring::rand::SystemRandom::new();
            let doc = ring::signature::EcdsaKeyPair::generate_pkcs8(
                &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                &rng,
            )
            .map_err(|e| KeyError::Generate(e.to_string()))?;
            Ok(doc.as_ref().to_vec())
        }
        KeyKind::Rs384 => {
            use rsa::pkcs8::EncodePrivateKey;
            let key =
                rsa::PrivateKey::new(&mut OsRng, 3072).map_err(|e| KeyError::Generate(e.to_string()))?;
            let der = key.to_pkcs8_der().map_err(|e| KeyError::Generate(e.to_string()))?;
            Ok(der.as_bytes().to_vec())
        }
    }
}

/// The OS random generator in the `rand_core` version `rsa` uses.
struct OsRng;

impl rsa::rand_core::TryRng for OsRng {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
        use ring::rand::SecureRandom;
        ring::rand::SystemRandom::new().fill(dest).expect("the system random generator failed");
        Ok(())
    }
}

impl rsa::rand_core::TryCryptoRng for OsRng {}

/// PEM armour (`-----BEGIN {label}-----`, 64-column base64).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A private signing key with its public JWK (kid = RFC 7638 thumbprint).
pub struct SigningKey {
    pub algorithm: Algorithm,
    pub encoding: EncodingKey,
    /// Public only: `kty`, `n`/`e` or `crv`/`x`/`y`, `kid`, `alg`, `use`.
    pub public_jwk: Jwk,
}

impl SigningKey {
    pub fn kid(&self) -> &str {
        self.public_jwk.common.key_id.as_deref().unwrap_or_default()
    }

    /// From PKCS#8 DER of the given kind.
    pub fn from_pkcs8_der(kind: KeyKind, der: &[u8]) -> Result<SigningKey, KeyError> {
        let encoding = match kind {
            KeyKind::Es384 => EncodingKey::from_ec_der(der),
            // `from_rsa_der` wants PKCS#1; the PEM path reads PKCS#8.
            KeyKind::Rs384 => EncodingKey::from_rsa_pem(pem_encode("PRIVATE KEY", der).as_bytes())
                .map_err(|e| KeyError::Invalid(e.to_string()))?,
        };
        SigningKey::new(kind.algorithm(), encoding)
    }

    /// From a PEM private key (PKCS#8 `PRIVATE KEY`, or PKCS#1 `RSA PRIVATE
    /// KEY`, or SEC1 `EC PRIVATE KEY`). The algorithm follows the key: RSA →
    /// RS384, P-384 → ES384, P-256 → ES256; `alg` overrides it.
    pub fn from_pem(pem: &[u8], alg: Option<Algorithm>) -> Result<SigningKey, KeyError> {
        if let Ok(encoding) = EncodingKey::from_rsa_pem(pem) {
            let alg = alg.unwrap_or(Algorithm::RS384);
            if !matches!(alg, Algorithm::RS256 | Algorithm::RS384 | Algorithm::PS384) {
                return Err(KeyError::Invalid(format!("an RSA key cannot sign {alg:?}")));
            }
            return SigningKey::new(alg, encoding);
        }
        if let Ok(encoding) = EncodingKey::from_ec_pem(pem) {
            // Try the curves in turn: the public JWK extraction fails on a mismatch.
            let candidates = match alg {
                Some(a) => vec![a],
                None => vec![Algorithm::ES384, Algorithm::ES256],
            };
            for a in candidates {
                if let Ok(key) = SigningKey::new(a, encoding.clone()) {
                    return Ok(key);
                }
            }
            return Err(KeyError::Invalid("an EC key that is neither P-384 nor P-256".into()));
        }
        Err(KeyError::Invalid("expected a PEM RSA or EC private key (PKCS#8 \"PRIVATE KEY\")".into()))
    }

    fn new(algorithm: Algorithm, encoding: EncodingKey) -> Result<SigningKey, KeyError> {
        let catch = |r: std::thread::Result<jsonwebtoken::errors::Result<Jwk>>| match r {
            Ok(Ok(jwk)) => Ok(jwk),
            Ok(Err(e)) => Err(KeyError::Invalid(e.to_string())),
            Err(_) => Err(KeyError::Invalid("the key could not be read".into())),
        };
        let mut jwk = catch(std::panic::catch_unwind(|| Jwk::from_encoding_key(&encoding, algorithm)))?;
        if let AlgorithmParameters::EllipticCurve(ec) = &jwk.algorithm {
            let want = if algorithm == Algorithm::ES256 { EllipticCurve::P256 } else { EllipticCurve::P384 };
            if ec.curve != want {
                return Err(KeyError::Invalid(format!("{algorithm:?} needs curve {want:?}")));
            }
        }
        let kid = thumbprint(&jwk)?;
        jwk.common.key_id = Some(kid);
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(key_algorithm(algorithm));
        // Prove the key signs (a mismatched curve or a corrupt key fails here, not later).
        jsonwebtoken::crypto::sign(b"probe", &encoding, algorithm)
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(SigningKey { algorithm, encoding, public_jwk: jwk })
    }

    pub fn jwks(&self) -> JwkSet {
        JwkSet { keys: vec![self.public_jwk.clone()] }
    }
}

/// The RFC 7638 JWK thumbprint (SHA-256, base64url) of a public key.
pub fn thumbprint(jwk: &Jwk) -> Result<String, KeyError> {
    jwk.thumbprint(ThumbprintHash::SHA256).map_err(|e| KeyError::Invalid(e.to_string()))
}

pub fn key_algorithm(alg: Algorithm) -> KeyAlgorithm {
    match alg {
        Algorithm::RS256 => KeyAlgorithm::RS256,
        Algorithm::RS384 => KeyAlgorithm::RS384,
        Algorithm::PS384 => KeyAlgorithm::PS384,
        Algorithm::ES256 => KeyAlgorithm::ES256,
        _ => KeyAlgorithm::ES384,
    }
}

/// Does a JWK carry private key members? (A JWKS given to fhirwall must be public.)
pub fn has_private_members(jwk: &serde_json::Value) -> bool {
    ["d", "p", "q", "dp", "dq", "qi", "oth", "k"].iter().any(|m| jwk.get(m).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn es384_keys_round_trip_through_pem_with_a_thumbprint_kid() {
        let der = generate_pkcs8(KeyKind::Es384).unwrap();
        let key = SigningKey::from_pkcs8_der(KeyKind::Es384, &der).unwrap();
        assert_eq!(key.algorithm, Algorithm::ES384);
        let pem = pem_encode("PRIVATE KEY", &der);
        let again = SigningKey::from_pem(pem.as_bytes(), None).unwrap();
        assert_eq!(again.algorithm, Algorithm::ES384);
        assert_eq!(again.kid(), key.kid());
        assert_eq!(key.kid().len(), 43);
        let public = serde_json::to_value(&key.public_jwk).unwrap();
        assert!(!has_private_members(&public), "{public}");
        assert_eq!(public["crv"], "P-384");
        assert_eq!(public["alg"], "ES384");
        assert_eq!(public["use"], "sig");
    }

    #[test]
    fn rsa_keys_from_pkcs8_der() {
        let der = generate_pkcs8(KeyKind::Rs384).unwrap();
        let key = SigningKey::from_pkcs8_der(KeyKind::Rs384, &der).unwrap();
        assert_eq!(key.algorithm, Algorithm::RS384);
        assert_eq!(serde_json::to_value(&key.public_jwk).unwrap()["kty"], "RSA");
    }

    #[test]
    fn thumbprint_matches_rfc_7638_example() {
        // RFC 7638 §3.1.
        let jwk: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }))
        .unwrap();
        assert_eq!(thumbprint(&jwk).unwrap(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn refuses_what_is_not_a_private_key() {
        assert!(SigningKey::from_pem(b"not a key", None).is_err());
        let der = generate_pkcs8(KeyKind::Es384).unwrap();
        let pem = pem_encode("PRIVATE KEY", &der);
        assert!(SigningKey::from_pem(pem.as_bytes(), Some(Algorithm::RS384)).is_err());
    }
}
