//! Response building: the boxed body type and JSON bodies in the contract's shapes.

use bytes::Bytes;
use http_body_util::{BodyExt, combinators::BoxBody};
use hyper::body::{Frame, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Every response body: a buffer (no allocation beyond its bytes: most answers), or a stream.
pub enum Body {
    Full(Option<Bytes>),
    Stream(BoxBody<Bytes, std::io::Error>),
}

impl Body {
    /// A streamed body.
    pub fn stream(
        body: impl hyper::body::Body<Data = Bytes, Error = std::io::Error> + Send + Sync + 'static,
    ) -> Self {
        Body::Stream(body.boxed())
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Body::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            Body::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream(s) => s.size_hint(),
        }
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Body::Full(Some(bytes.into()))
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
