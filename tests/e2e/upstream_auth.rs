//! fhirwall's own credentials towards the upstream, end to end: the real
//! `fhirwall` in front of a guarded upstream (tests/clients/upstream_guard.py,
//! an OAuth 2.0 authorization server and a token-checking proxy written in
//! Python with PyJWT, in front of the sandbox) that demands an access token
//! obtained with the client-credentials grant (client secret or
//! `private_key_jwt`), or a client certificate (mutual TLS).

use fhirwall_testkit as support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

const CLIENT: &str = "upstream-auth-ehr";
/// A patient attributed to org-grace in the sandbox's dataset.
const PATIENT: &str = "Patient/pat-0001";

fn gateway(guard: &UpstreamGuard, sandbox: &Upstream, toml: &str, env: &[(&str, &str)]) -> (Gateway, String) {
    let mut config = GatewayConfig::new(format!("{}/fhir", guard.origin()))
        .extra_toml(&format!("[upstream]\nbase_aliases = [\"{}\"]\n{toml}", sandbox.base_url()));
    for (k, v) in env {
        config = config.env(k, v);
    }
    let gw =
        Gateway::start(config.client(CLIENT, "Organization/org-grace", "1417987256", &["system/*.read"]));
    let token = gw.token(CLIENT, "system/*.read");
    (gw, token)
}

async fn stats(guard: &UpstreamGuard) -> Value {
    get(&format!("{}/_guard/stats", guard.origin())).await.json()
}

fn origin(base: &str) -> String {
    let url = url::Url::parse(base).unwrap();
    format!("{}://{}:{}", url.scheme(), url.host_str().unwrap(), url.port().unwrap())
}

#[tokio::test]
async fn client_secret_tokens_are_cached_renewed_before_expiry_and_replaced_after_a_401() {
    let sandbox = Upstream::sandbox();
    let secret = "s3cr3t value+/=";
    let guard = UpstreamGuard::start(
        &origin(sandbox.base_url()),
        &["--client-id", "fhirwall-gw", "--secret", secret, "--expires-in", "4"],
    );
    let toml = format!(
        "[upstream.oauth]\ntoken_url = \"{}\"\nclient_id = \"fhirwall-gw\"\nclient_secret_env = \"UPSTREAM_SECRET\"\nscope = \"system/*.read\"\nrefresh_before_s = 1\n",
        guard.token_url()
    );
    let (gw, token) = gateway(&guard, &sandbox, &toml, &[("UPSTREAM_SECRET", secret)]);

    // The first request fetches a token; the next ones reuse it.
    for _ in 0..4 {
        let resp = get_bearer(&gw.url(PATIENT), &token).await;
        resp.assert_status(200);
        assert_eq!(resp.json()["id"], "pat-0001");
    }
    let s = stats(&guard).await;
    assert_eq!(s["issued"], 1, "{s}");
    assert_eq!(s["refused"], 0, "{s}");
    assert_eq!(s["grants"][0]["how"], "client_secret_basic", "{s}");
    assert_eq!(s["grants"][0]["scope"], "system/*.read", "{s}");

    // The upstream stops honouring it: one 401, a new token, the retry succeeds.
    reqwest::Client::new().post(format!("{}/_guard/revoke", guard.origin())).send().await.unwrap();
    get_bearer(&gw.url(PATIENT), &token).await.assert_status(200);
    let s = stats(&guard).await;
    assert_eq!((s["issued"].as_u64(), s["refused"].as_u64()), (Some(2), Some(1)), "{s}");

    // A token of 4 s is renewed 1 s before it expires: no request meets a 401.
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    get_bearer(&gw.url(PATIENT), &token).await.assert_status(200);
    let s = stats(&guard).await;
    assert_eq!((s["issued"].as_u64(), s["refused"].as_u64()), (Some(3), Some(1)), "{s}");

    // The secret and the tokens never reach the log.
    let log = gw.log();
    assert!(!log.contains(secret), "the client secret is in the gateway log");
    assert!(!log.contains("access_token"), "a token answer is in the gateway log");
}

#[tokio::test]
async fn a_refused_client_secret_fails_closed_and_the_upstream_is_never_called_without_a_token() {
    let sandbox = Upstream::sandbox();
    let guard = UpstreamGuard::start(
        &origin(sandbox.base_url()),
        &["--client-id", "fhirwall-gw", "--secret", "right"],
    );
    let toml = format!(
        "[upstream.oauth]\ntoken_url = \"{}\"\nclient_id = \"fhirwall-gw\"\nclient_secret_env = \"UPSTREAM_SECRET\"\n",
        guard.token_url()
    );
    let (gw, token) = gateway(&guard, &sandbox, &toml, &[("UPSTREAM_SECRET", "wrong")]);
    let resp = get_bearer(&gw.url(PATIENT), &token).await;
    resp.assert_status(502);
    assert_operation_outcome(&resp);
    let body = resp.text();
    assert!(!body.contains("pat-0001\""), "patient data in a refusal: {body}");
    assert!(!body.contains("wrong"), "the secret in a refusal: {body}");
    let s = stats(&guard).await;
    assert_eq!(
        (s["issued"].as_u64(), s["admitted"].as_u64(), s["refused"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{s}"
    );
}

#[tokio::test]
async fn a_static_authorization_header_from_the_environment() {
    let sandbox = Upstream::sandbox();
    let guard = UpstreamGuard::start(&origin(sandbox.base_url()), &["--static-token", "long-lived-abc"]);
    let (gw, token) = gateway(
        &guard,
        &sandbox,
        "authorization_env = \"UPSTREAM_AUTH\"\n",
        &[("UPSTREAM_AUTH", "Bearer long-lived-abc")],
    );
    get_bearer(&gw.url(PATIENT), &token).await.assert_status(200);
    // A static credential the upstream refuses is not retried: one 401, one 502.
    let (gw2, token2) = gateway(
        &guard,
        &sandbox,
        "authorization_env = \"UPSTREAM_AUTH\"\n",
        &[("UPSTREAM_AUTH", "Bearer stale")],
    );
    let resp = get_bearer(&gw2.url(PATIENT), &token2).await;
    assert!(resp.status == 502 || resp.status == 401 || resp.status == 403, "{}", resp.status);
    assert!(!resp.text().contains("pat-0001\""), "{}", resp.text());
    let s = stats(&guard).await;
    assert!(s["admitted"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["refused"], 1, "{s}");
}

/// An EC P-384 key pair written by the test's Python (cryptography), not by fhirwall.
fn ec_key_pair(dir: &Path) {
    let script = "import sys\nfrom cryptography.hazmat.primitives.asymmetric import ec\nfrom cryptography.hazmat.primitives import serialization as s\nk = ec.generate_private_key(ec.SECP384R1())\nopen(sys.argv[1] + '/upstream-client.pem', 'wb').write(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))\nopen(sys.argv[1] + '/upstream-client.pub.pem', 'wb').write(k.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))\n";
    let status = Command::new(support::pyjwt::python()).arg("-c").arg(script).arg(dir).status().unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn private_key_jwt_client_assertions_are_accepted_by_an_independent_verifier() {
    let sandbox = Upstream::sandbox();
    let keys = tempfile::tempdir().unwrap();
    ec_key_pair(keys.path());
    let public = keys.path().join("upstream-client.pub.pem");
    let guard = UpstreamGuard::start(
        &origin(sandbox.base_url()),
        &["--client-id", "fhirwall-gw", "--public-key-pem", public.to_str().unwrap(), "--kid", "gw-2026"],
    );
    let toml = format!(
        "[upstream.oauth]\ntoken_url = \"{}\"\nclient_id = \"fhirwall-gw\"\nprivate_key_file = \"{}\"\nkey_id = \"gw-2026\"\nalgorithm = \"ES384\"\n",
        guard.token_url(),
        keys.path().join("upstream-client.pem").display()
    );
    let (gw, token) = gateway(&guard, &sandbox, &toml, &[]);
    let resp = get_bearer(&gw.url(PATIENT), &token).await;
    resp.assert_status(200);
    // Revoked: a second assertion (a new jti) gets a second token.
    reqwest::Client::new().post(format!("{}/_guard/revoke", guard.origin())).send().await.unwrap();
    get_bearer(&gw.url("Coverage?beneficiary=Patient/pat-0001"), &token).await.assert_status(200);
    let s = stats(&guard).await;
    assert_eq!(s["issued"], 2, "{s}");
    assert!(s["grants"].as_array().unwrap().iter().all(|g| g["how"] == "private_key_jwt"), "{s}");

    // The same key under another kid is refused by the verifier: 502, no data.
    let toml = toml.replace("gw-2026", "gw-old");
    let (gw2, token2) = gateway(&guard, &sandbox, &toml, &[]);
    let resp = get_bearer(&gw2.url(PATIENT), &token2).await;
    resp.assert_status(502);
    assert!(!resp.text().contains("pat-0001\""));
}

#[tokio::test]
async fn mutual_tls_to_an_upstream_that_demands_a_client_certificate() {
    let sandbox = Upstream::sandbox();
    let certs = tempfile::tempdir().unwrap();
    UpstreamGuard::make_certs(certs.path());
    let p = |name: &str| certs.path().join(name).display().to_string();
    let guard = UpstreamGuard::start(
        &origin(sandbox.base_url()),
        &[
            "--no-oauth",
            "--tls-cert",
            &p("server.crt"),
            "--tls-key",
            &p("server.key"),
            "--client-ca",
            &p("client-ca.pem"),
        ],
    );
    assert!(guard.origin().starts_with("https://"));
    let tls = |cert: Option<&str>| {
        let mut t = format!("[upstream.tls]\nca_file = \"{}\"\n", p("server-ca.pem"));
        if let Some(c) = cert {
            t += &format!(
                "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
                p(&format!("{c}.crt")),
                p(&format!("{c}.key"))
            );
        }
        t
    };

    // With the client certificate: the upstream answers.
    let (gw, token) = gateway(&guard, &sandbox, &tls(Some("client")), &[]);
    let resp = get_bearer(&gw.url(PATIENT), &token).await;
    resp.assert_status(200);
    assert_eq!(resp.json()["id"], "pat-0001");

    // Without one, with one from a CA the upstream does not trust, or
    // without trusting the upstream's CA: refused, nothing of the patient.
    for toml in [tls(None), tls(Some("stranger")), String::new()] {
        let (gw, token) = gateway(&guard, &sandbox, &toml, &[]);
        let resp = get_bearer(&gw.url(PATIENT), &token).await;
        resp.assert_status(502);
        assert_operation_outcome(&resp);
        assert!(!resp.text().contains("pat-0001\""), "{toml}: {}", resp.text());
    }
}

#[test]
fn upstream_credential_config_mistakes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, upstream: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!("[server]\nlisten = \"127.0.0.1:18080\"\nbase_url = \"http://127.0.0.1:18080/fhir\"\n[admin]\nlisten = \"127.0.0.1:18081\"\n[upstream]\nurl = \"sandbox\"\n{upstream}\n[state]\nurl = \"sqlite://x.db\"\n[audit]\ndir = \"audit\"\n"),
        )
        .unwrap();
        path
    };
    let both = write(
        "both.toml",
        "authorization_env = \"X\"\n[upstream.oauth]\ntoken_url = \"https://a/token\"\nclient_id = \"c\"\nclient_secret_env = \"S\"",
    );
    assert_config_refused(&both, "upstream.oauth");
    let neither =
        write("neither.toml", "[upstream.oauth]\ntoken_url = \"https://a/token\"\nclient_id = \"c\"");
    assert_config_refused(&neither, "upstream.oauth");
    let alg = write(
        "alg.toml",
        "[upstream.oauth]\ntoken_url = \"https://a/token\"\nclient_id = \"c\"\nprivate_key_file = \"k.pem\"\nalgorithm = \"HS256\"",
    );
    assert_config_refused(&alg, "upstream.oauth.algorithm");
    let half = write("half.toml", "[upstream.tls]\nclient_cert_file = \"c.crt\"");
    assert_config_refused(&half, "upstream.tls");
}
