//! Outbound HTTP plumbing shared by every stage that calls out (the upstream
//! client, the JWKS fetcher): one place that decides TLS roots, timeouts and
//! socket options.

use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

/// A connector for https (webpki roots) and plain http, with a connect
/// deadline; shared by the upstream client and the JWKS fetcher.
pub fn https_connector(connect_timeout: Duration) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

/// The upstream's connector: like [`https_connector`], but trusting
/// `tls.ca_file` instead of the public web roots when set, and presenting
/// `tls.client_cert_file` / `client_key_file` (mutual TLS) when set.
pub fn upstream_connector(
    connect_timeout: Duration,
    tls: Option<&crate::config::UpstreamTlsConfig>,
) -> anyhow::Result<HttpsConnector<HttpConnector>> {
    let Some(tls) = tls else { return Ok(https_connector(connect_timeout)) };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(upstream_tls_config(tls)?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

fn upstream_tls_config(tls: &crate::config::UpstreamTlsConfig) -> anyhow::Result<rustls::ClientConfig> {
    use anyhow::Context;
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for cert in read_certs(path, "upstream.tls.ca_file")? {
                roots
                    .add(cert)
                    .with_context(|| format!("upstream.tls.ca_file {}: unusable CA", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, "upstream.tls.client_cert_file")?;
            let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
                std::fs::File::open(key)
                    .with_context(|| format!("upstream.tls.client_key_file {}", key.display()))?,
            ))
            .with_context(|| {
                format!("upstream.tls.client_key_file {}: not a PEM private key", key.display())
            })?
            .with_context(|| {
                format!("upstream.tls.client_key_file {}: no private key found", key.display())
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .context("upstream.tls.client_cert_file/client_key_file do not form a usable certificate")
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn read_certs(
    path: &std::path::Path,
    key: &str,
) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use anyhow::Context;
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(path).with_context(|| format!("{key} {}", path.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("{key} {}: not PEM certificates", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{key} {}: no certificate found", path.display());
    Ok(certs)
}

/// One call without a body, with an `Authorization` value, over plain
/// HTTP (the CLI asking a local admin listener): the status and the body as text.
pub async fn call_text(
    method: http::Method,
    url: &str,
    authorization: &str,
) -> anyhow::Result<(u16, String)> {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<HttpConnector, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(HttpConnector::new());
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::AUTHORIZATION, authorization)
        .body(http_body_util::Empty::new())?;
    let response = tokio::time::timeout(Duration::from_secs(120), client.request(request))
        .await
        .map_err(|_| anyhow::anyhow!("{url}: no answer within 120 s"))?
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
