//! Response building: the boxed body type and JSON bodies in the contract's shapes.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;

/// Every response body: a full buffer or a stream, boxed so routes can choose.
pub type Body = BoxBody<Bytes, std::io::Error>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A response of `content_type` from a buffer.
pub fn bytes(
    status: StatusCode,
    content_type: HeaderValue,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, content_type);
    r
}

/// A JSON response from already-serialised bytes.
pub fn json_bytes(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    bytes(status, JSON, body)
}

/// A JSON response; serialisation of our own types cannot fail, but if it did it is a 500.
pub fn json(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec(body) {
        Ok(b) => json_bytes(status, b),
        Err(e) => {
            tracing::error!(error = %e, "response serialisation failed");
            detail(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error.")
        }
    }
}

#[derive(Serialize)]
struct Detail<'a> {
    detail: &'a str,
}

/// `{"detail": "..."}` with a status: the shape of every non-validation error.
pub fn detail(status: StatusCode, msg: &str) -> Response<Body> {
    json(status, &Detail { detail: msg })
}

/// `{"data": …, "status": …}`: the customer-insurance routes' envelope.
#[derive(Serialize)]
pub struct Envelope<T> {
    pub data: T,
    pub status: bool,
}

/// `{"data": msg, "status": false}` with a status code.
pub fn envelope_error(status: StatusCode, msg: &str) -> Response<Body> {
    json(
        status,
        &Envelope {
            data: msg,
            status: false,
        },
    )
}
