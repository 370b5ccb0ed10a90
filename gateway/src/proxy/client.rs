//! The pooled upstream client. Every exchange runs under one deadline that
//! covers connecting, the response head and the whole body, and the body is
//! read completely (with a size cap) before anything is sent on: a truncated
//! or oversized upstream answer is a 502, never a partial response.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::credentials::UpstreamCredentials;
use super::rewrite::UrlRewriter;
use crate::config::UpstreamConfig;
use crate::error::GatewayError;

/// One request to the upstream, relative to its base.
#[derive(Debug)]
pub struct UpstreamRequest {
    pub method: Method,
    /// Below the upstream base: `Patient/1`, `Observation?patient=Patient%2F1`.
    pub path_and_query: String,
    /// Body and its content type (POST `_search` form, operations, writes).
    pub body: Option<(Bytes, HeaderValue)>,
    /// Extra headers fhirwall itself decided to send (never the caller's).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub request_id: String,
}

/// A complete upstream answer.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The upstream FHIR server.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The upstream base without a trailing slash.
    base: String,
    timeout: Duration,
    max_body: usize,
    credentials: UpstreamCredentials,
    rewriter: UrlRewriter,
}

impl Upstream {
    /// `base_url`: the resolved upstream base (the sandbox's URL for "sandbox").
    pub fn new(config: &UpstreamConfig, base_url: &str, public_base: &str) -> anyhow::Result<Upstream> {
        let https = crate::net::upstream_connector(
            Duration::from_millis(config.connect_timeout_ms),
            config.tls.as_ref(),
        )?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .build(https);
        // The token endpoint is reached with the same TLS settings.
        let credentials = UpstreamCredentials::from_config(config, client.clone())?;
        let base = base_url.trim_end_matches('/').to_owned();
        let mut bases = vec![base.clone()];
        bases.extend(config.base_aliases.iter().cloned());
        Ok(Upstream {
            client,
            base,
            timeout: Duration::from_millis(config.timeout_ms),
            max_body: config.max_body_bytes,
            credentials,
            rewriter: UrlRewriter::new(&bases, public_base),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn rewriter(&self) -> &UrlRewriter {
        &self.rewriter
    }

    /// The deadline of one exchange (`upstream.timeout_ms`); work made of
    /// many exchanges (the attribution load) sizes its own budget from it.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Send one request and read the whole answer within the deadline.
    /// An upstream 401 to an OAuth token is retried once with a new token.
    pub async fn send(&self, req: UpstreamRequest) -> Result<UpstreamResponse, GatewayError> {
        let authorization = self.credentials.authorization().await?;
        let response = self.send_once(&req, authorization.clone()).await?;
        if response.status == StatusCode::UNAUTHORIZED
            && self.credentials.rejected(authorization.as_ref()).await
        {
            tracing::info!(request_id = %req.request_id, "upstream: 401 to fhirwall's token; retrying with a new one");
            let authorization = self.credentials.authorization().await?;
            return self.send_once(&req, authorization).await;
        }
        Ok(response)
    }

    async fn send_once(
        &self,
        req: &UpstreamRequest,
        authorization: Option<HeaderValue>,
    ) -> Result<UpstreamResponse, GatewayError> {
        let uri = if req.path_and_query.is_empty() {
            self.base.clone()
        } else if req.path_and_query.starts_with('?') {
            format!("{}{}", self.base, req.path_and_query)
        } else {
            format!("{}/{}", self.base, req.path_and_query)
        };
        let mut builder = Request::builder()
            .method(req.method.clone())
            .uri(&uri)
            .header(ACCEPT, "application/fhir+json")
            .header(USER_AGENT, concat!("fhirwall/", env!("CARGO_PKG_VERSION")))
            .header("x-request-id", &req.request_id);
        if let Some(auth) = authorization {
            builder = builder.header(AUTHORIZATION, auth);
        }
        for (name, value) in &req.headers {
            builder = builder.header(name, value);
        }
        let body = match &req.body {
            Some((bytes, content_type)) => {
                builder = builder.header(CONTENT_TYPE, content_type);
                Full::new(bytes.clone())
            }
            None => Full::new(Bytes::new()),
        };
        let request =
            builder.body(body).map_err(|e| GatewayError::internal(format!("upstream request: {e}")))?;

        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let what = if e.is_connect() {
                    "could not connect to the upstream"
                } else {
                    "upstream request failed"
                };
                GatewayError::bad_gateway("the upstream FHIR server is unavailable")
                    .with_detail(format!("{what}: {e:?}"))
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, self.max_body).collect().await.map_err(|e| {
                GatewayError::bad_gateway("the upstream FHIR server sent an incomplete answer")
                    .with_detail(format!("reading upstream body: {e}"))
            })?;
            Ok(UpstreamResponse { status: parts.status, headers: parts.headers, body: body.to_bytes() })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(GatewayError::gateway_timeout("the upstream FHIR server did not answer in time")
                .with_detail(format!("no complete answer within {:?}", self.timeout))),
        }
    }
}
