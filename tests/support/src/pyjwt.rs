//! The independent client side of SMART Backend Services: PyJWT +
//! cryptography (tests/clients/jwt_client.py, installed into a venv by
//! `scripts/setup-test-deps.sh jwt_clients`), never fhirwall's own code.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::paths::repo_root;

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The venv's python, installing the venv first when it is missing or stale.
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let venv = std::env::var_os("FHIRWALL_TEST_VENV").map(PathBuf::from).unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
            cache.join("fhirwall-test-clients/venv")
        });
        let py = venv.join("bin/python");
        let req = std::fs::read(repo_root().join("tests/clients/requirements.txt")).unwrap();
        if std::fs::read(venv.join("requirements.installed")).ok().as_deref() != Some(req.as_slice()) {
            let status = Command::new("bash")
                .arg(repo_root().join("scripts/setup-test-deps.sh"))
                .arg("jwt_clients")
                .status()
                .expect("running scripts/setup-test-deps.sh jwt_clients");
            assert!(status.success(), "scripts/setup-test-deps.sh jwt_clients failed");
        }
        py
    })
    .clone()
}

/// jwt_client.py flags that take exactly one value.
const VALUE_FLAGS: &[&str] = &[
    "--alg",
    "--aud",
    "--claims-json",
    "--exp-in",
    "--header-json",
    "--iss",
    "--jti",
    "--key-pem",
    "--kid",
    "--secret-file",
    "--sub",
];

/// `--flag value` pairs joined as `--flag=value`: a value may start with `-` (a base64url
/// key thumbprint such as `-arMQ…`, a negative lifetime) and argparse would read it as a flag.
fn joined_flags(args: &[&str]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match rest.clone().next() {
            Some(value) if VALUE_FLAGS.contains(arg) => {
                out.push(format!("{arg}={value}"));
                rest.next();
            }
            _ => out.push((*arg).to_owned()),
        }
    }
    out
}

/// Run one jwt_client.py command; it prints JSON.
pub fn pyjwt(args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(repo_root().join("tests/clients/jwt_client.py"))
        .args(joined_flags(args))
        .output()
        .expect("running tests/clients/jwt_client.py");
    assert!(out.status.success(), "jwt_client.py {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("jwt_client.py prints JSON")
}

/// A client key pair made by PyJWT/cryptography.
pub struct Key {
    pub alg: String,
    pub pem: PathBuf,
    pub jwk: Value,
    _dir: tempfile::TempDir,
}

impl Key {
    pub fn new(alg: &str) -> Key {
        let made = pyjwt(&["keygen", "--alg", alg]);
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("key.pem");
        std::fs::write(&pem, made["private_pem"].as_str().unwrap()).unwrap();
        Key { alg: alg.into(), pem, jwk: made["jwk"].clone(), _dir: dir }
    }

    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }

    pub fn kid(&self) -> &str {
        self.jwk["kid"].as_str().unwrap()
    }

    /// A client assertion; `extra` are extra jwt_client.py `sign` flags.
    pub fn assertion(&self, client_id: &str, aud: &str, extra: &[&str]) -> String {
        let pem = self.pem.to_str().unwrap();
        let mut args = vec!["sign", "--key-pem", pem, "--alg", &self.alg, "--iss", client_id, "--aud", aud];
        args.extend_from_slice(extra);
        pyjwt(&args)["assertion"].as_str().unwrap().to_owned()
    }
}

/// A `[[clients]]` table with an inline JWKS.
pub fn toml_client(id: &str, org: &str, npi: &str, jwks: &Value, scopes: &[&str]) -> String {
    format!(
        "[[clients]]\nclient_id = {id:?}\norganization = {org:?}\nnpi = {npi:?}\njwks = {jwks}\nscopes = {scopes}\n",
        jwks = json_to_toml_inline(jwks),
        scopes = serde_json::to_string(scopes).unwrap(),
    )
}

/// A JSON value as a TOML inline value.
pub fn json_to_toml_inline(v: &Value) -> String {
    match v {
        Value::Object(map) => format!(
            "{{ {} }}",
            map.iter()
                .map(|(k, v)| format!("{k:?} = {}", json_to_toml_inline(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Array(items) => {
            format!("[{}]", items.iter().map(json_to_toml_inline).collect::<Vec<_>>().join(", "))
        }
        other => other.to_string(),
    }
}
