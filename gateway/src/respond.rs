//! Building responses. Errors become OperationOutcome bodies here and only
//! here, with the status the error carries.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::error::GatewayError;
use crate::fhir::{FHIR_JSON, OperationOutcome};

pub type Body = Full<Bytes>;

/// A FHIR JSON response.
pub fn fhir_json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// The OperationOutcome response for an error. Caller-visible text only; the
/// detail is logged by the caller of this function.
pub fn error(err: &GatewayError) -> Response<Body> {
    let mut response = fhir_json(err.status, OperationOutcome::from(err).to_json());
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in &err.headers {
        response.headers_mut().append(name.clone(), value.clone());
    }
    response
}

/// A plain JSON response (admin API, SMART discovery).
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
