//! The provider-side helpers: `fhirwall keygen` (a key pair and the JWKS to
//! register) and `fhirwall token` (sign a client assertion, fetch a token).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::Method;
use jsonwebtoken::{Algorithm, Header};

use super::keys::{self, KeyKind, SigningKey};
use super::{JWT_BEARER, jwks};

/// What `keygen` wrote.
#[derive(Debug)]
pub struct Keygen {
    pub key_path: PathBuf,
    pub jwks_path: PathBuf,
    pub kid: String,
    pub algorithm: Algorithm,
}

/// Write `{out}/{client_id}.key.pem` (PKCS#8, mode 0600) and
/// `{out}/{client_id}.jwks.json` (public only, kid = RFC 7638 thumbprint).
/// Refuses to overwrite an existing key unless `force`.
pub fn keygen(client_id: &str, out: &Path, kind: KeyKind, force: bool) -> anyhow::Result<Keygen> {
    let safe =
        !client_id.is_empty() && client_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !safe || client_id.starts_with('.') {
        bail!("--client-id {client_id:?}: use letters, digits, '-', '_' and '.' (it names the files)");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let key_path = out.join(format!("{client_id}.key.pem"));
    let jwks_path = out.join(format!("{client_id}.jwks.json"));
    if !force && (key_path.exists() || jwks_path.exists()) {
        bail!(
            "{} or {} already exists (use --force to replace the key pair)",
            key_path.display(),
            jwks_path.display()
        );
    }
    let der = keys::generate_pkcs8(kind)?;
    let key = SigningKey::from_pkcs8_der(kind, &der)?;
    write_private(&key_path, keys::pem_encode("PRIVATE KEY", &der).as_bytes())?;
    let jwks = serde_json::to_string_pretty(&key.jwks())?;
    std::fs::write(&jwks_path, format!("{jwks}\n"))
        .with_context(|| format!("writing {}", jwks_path.display()))?;
    Ok(Keygen { key_path, jwks_path, kid: key.kid().to_owned(), algorithm: key.algorithm })
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A SMART Backend Services client assertion: iss = sub = client_id, aud =
/// the token URL, 4 minutes of life, a random jti, kid = the key's thumbprint.
pub fn client_assertion(
    key: &SigningKey,
    client_id: &str,
    token_url: &str,
    now: i64,
) -> anyhow::Result<String> {
    let mut header = Header::new(key.algorithm);
    header.typ = Some("JWT".into());
    header.kid = Some(key.kid().to_owned());
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": now,
        "exp": now + 240,
        "jti": hex::encode(rand::random::<[u8; 16]>()),
    });
    Ok(jsonwebtoken::encode(&header, &claims, &key.encoding)?)
}

/// Sign an assertion with the key in `key_file` and ask `token_url` for a
/// token. Returns the token endpoint's JSON answer; an OAuth error is an Err
/// carrying the answer.
pub async fn fetch_token(
    client_id: &str,
    key_file: &Path,
    token_url: &str,
    scope: &str,
    alg: Option<Algorithm>,
) -> anyhow::Result<serde_json::Value> {
    let pem = std::fs::read(key_file).with_context(|| format!("reading {}", key_file.display()))?;
    let key = SigningKey::from_pem(&pem, alg).with_context(|| format!("{}", key_file.display()))?;
    let url = url::Url::parse(token_url).with_context(|| format!("--token-url {token_url}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("--token-url must be an http(s) URL");
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let assertion = client_assertion(&key, client_id, token_url, now)?;
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion.as_str()),
            ("scope", scope),
        ])
        .finish();
    let client = jwks::http_client();
    let (status, _, answer) = jwks::send(
        &client,
        Method::POST,
        token_url,
        &[("content-type", "application/x-www-form-urlencoded"), ("accept", "application/json")],
        Some(Bytes::from(body)),
        1024 * 1024,
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| anyhow::anyhow!("POST {token_url}: {e}"))?;
    let json: serde_json::Value = serde_json::from_slice(&answer)
        .with_context(|| format!("POST {token_url} answered {status} with a body that is not JSON"))?;
    if !status.is_success() || json.get("access_token").and_then(|t| t.as_str()).is_none() {
        bail!("POST {token_url} answered {status}: {json}");
    }
    Ok(json)
}

/// `--alg` values of `keygen`.
pub fn parse_key_kind(name: &str) -> anyhow::Result<KeyKind> {
    KeyKind::parse(name).ok_or_else(|| anyhow::anyhow!("--alg {name}: use RS384 or ES384"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_pem_and_a_public_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let out = keygen("grace-ehr", dir.path(), KeyKind::Es384, false).unwrap();
        let pem = std::fs::read_to_string(&out.key_path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&out.key_path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let jwks: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out.jwks_path).unwrap()).unwrap();
        let key = &jwks["keys"][0];
        assert_eq!(key["kid"], out.kid.as_str());
        assert_eq!(key["alg"], "ES384");
        assert!(!keys::has_private_members(key));
        assert!(jwks::parse_jwks(&jwks).is_ok());
        // The token command derives the same kid from the private key alone.
        let again = SigningKey::from_pem(pem.as_bytes(), None).unwrap();
        assert_eq!(again.kid(), out.kid);
        assert!(keygen("grace-ehr", dir.path(), KeyKind::Es384, false).is_err(), "no silent overwrite");
        assert!(keygen("../evil", dir.path(), KeyKind::Es384, false).is_err());
    }
}
