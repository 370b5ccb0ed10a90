//! The HTTP client tests talk to the gateway and upstreams with: no redirects, no
//! decompression and no proxying, so a test sees exactly what was sent. Every call
//! returns a complete [`Resp`].

use std::time::Duration;

/// A complete HTTP response.
#[derive(Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as JSON; panics (showing the body) when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("response body is not JSON ({e}); status {}, body:\n{}", self.status, self.text())
        })
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header value (first one) as a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// All values of a header.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect()
    }

    pub fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }

    /// Panics (showing the body) unless the status is `expected`.
    #[track_caller]
    pub fn assert_status(&self, expected: u16) -> &Resp {
        assert_eq!(self.status, expected, "unexpected status; body:\n{}", self.text_truncated(4000));
        self
    }

    /// The body as text, cut after `max` bytes (at a char boundary) for panic messages.
    pub(crate) fn text_truncated(&self, max: usize) -> String {
        let text = self.text();
        if text.len() <= max {
            return text;
        }
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &text[..end], text.len())
    }
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resp")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.text_truncated(2000))
            .finish()
    }
}

/// A fresh client per request: tests run on separate tokio runtimes, and a pooled
/// connection must not outlive the runtime that opened it. No redirects, no
/// proxies from the environment, no decompression (reqwest is built without it).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("building the HTTP client")
}

/// `GET url`.
pub async fn get(url: &str) -> Resp {
    request("GET", url, &[], None).await
}

/// `GET url` with headers, e.g. `get_with(&url, &[("Authorization", &bearer)])`.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Resp {
    request("GET", url, headers, None).await
}

/// `GET url` with `Authorization: Bearer {token}` and `Accept: application/fhir+json`.
pub async fn get_bearer(url: &str, token: &str) -> Resp {
    let auth = format!("Bearer {token}");
    request("GET", url, &[("Authorization", &auth), ("Accept", "application/fhir+json")], None).await
}

/// `POST url` with a JSON body (`Content-Type: application/fhir+json` unless given).
pub async fn post_json(url: &str, headers: &[(&str, &str)], body: &serde_json::Value) -> Resp {
    let mut headers = headers.to_vec();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        headers.push(("Content-Type", "application/fhir+json"));
    }
    request("POST", url, &headers, Some(serde_json::to_vec(body).expect("serializing JSON"))).await
}

/// `POST url` with an `application/x-www-form-urlencoded` body.
pub async fn post_form(url: &str, headers: &[(&str, &str)], form: &[(&str, &str)]) -> Resp {
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let mut headers = headers.to_vec();
    headers.push(("Content-Type", "application/x-www-form-urlencoded"));
    request("POST", url, &headers, Some(body.into_bytes())).await
}

/// Any request. `method` may be any token (e.g. `"PROPFIND"`); headers are sent as
/// given (repeat a name to send it twice); the URL is sent as written (no
/// normalisation of percent-encoding beyond what the `url` crate does).
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Resp {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("valid HTTP method");
    let mut req = client().request(method.clone(), url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {url} failed: {e:?}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: reading the body failed: {e:?}"))
        .to_vec();
    Resp { status, headers, body }
}

/// `{base}/{path}` with exactly one slash between them; `base` when `path` is empty.
pub(crate) fn join_url(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    let path = path.trim_start_matches('/');
    if path.is_empty() { base.to_string() } else { format!("{base}/{path}") }
}
