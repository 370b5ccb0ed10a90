//! Building responses. Errors become OperationOutcome bodies here and only
//! here, with the status the error carries.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full};

use crate::error::GatewayError;
use crate::fhir::{FHIR_JSON, OperationOutcome};

/// Why a streamed body stopped early (the connection is then cut).
pub type StreamError = std::io::Error;

/// A response body: whole (almost every answer), or streamed (export files,
/// which are never held whole in memory).
pub type Body = Either<Full<Bytes>, UnsyncBoxBody<Bytes, StreamError>>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Left(Full::new(bytes.into()))
}

/// A streamed body.
pub fn streamed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes, Error = StreamError> + Send + 'static,
{
    Either::Right(body.boxed_unsync())
}

/// A whole response as a [`Body`] response.
pub fn from_full(response: Response<Full<Bytes>>) -> Response<Body> {
    response.map(Either::Left)
}

/// A FHIR JSON response.
pub fn fhir_json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
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
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
}
