//! The one error path: every handler failure is an [`ApiError`], turned into its response in
//! [`ApiError::into_response`] — a status code and a clear JSON message, never an HTML page.

use super::response::{self, Body};
use crate::auth::Scope;
use crate::tracking::order::FieldErrors;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use std::borrow::Cow;

/// The two error shapes of the contract: `{"detail": …}` (and field maps) for the tracking and
/// operations routes, `{"data": …, "status": false}` for `/customer_insurance/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Detail,
    Envelope,
}

#[derive(Debug)]
pub enum ApiError {
    /// A status and a message.
    Status(StatusCode, Cow<'static, str>),
    /// 400 with every failing field and its messages.
    Fields(FieldErrors),
    /// 404 for a path no route matches.
    NoRoute,
    /// 405, naming the method and the ones allowed.
    Method(Method, &'static str),
    /// 503 with `Retry-After`: a store is unreachable or not ready.
    Unavailable(Cow<'static, str>),
    /// The same in the customer-insurance shape.
    Policy(StatusCode, Cow<'static, str>),
    /// 401: no valid API key (with `WWW-Authenticate`).
    Unauthenticated(Shape),
    /// 403: a valid key without the route's scope.
    Forbidden(Shape, Scope),
}

impl ApiError {
    pub fn bad_request(msg: impl Into<Cow<'static, str>>) -> Self {
        Self::Status(StatusCode::BAD_REQUEST, msg.into())
    }

    pub fn not_found(msg: impl Into<Cow<'static, str>>) -> Self {
        Self::Status(StatusCode::NOT_FOUND, msg.into())
    }

    /// The response, with `Retry-After: retry_after_secs` on a 503.
    pub fn into_response(self, retry_after_secs: u64) -> Response<Body> {
        let mut r = match self {
            ApiError::Status(status, msg) => response::detail(status, &msg),
            ApiError::Fields(errors) => response::json(StatusCode::BAD_REQUEST, &errors),
            ApiError::NoRoute => response::detail(StatusCode::NOT_FOUND, "Not found."),
            ApiError::Method(method, allow) => {
                let mut r = response::detail(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &format!("Method \"{method}\" not allowed."),
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                r
            }
            ApiError::Unavailable(msg) => response::detail(StatusCode::SERVICE_UNAVAILABLE, &msg),
            ApiError::Policy(status, msg) => response::envelope_error(status, &msg),
            ApiError::Unauthenticated(shape) => shaped(
                shape,
                StatusCode::UNAUTHORIZED,
                "Authentication required: send a valid API key as `Authorization: Bearer <key>`.",
            ),
            ApiError::Forbidden(shape, scope) => shaped(
                shape,
                StatusCode::FORBIDDEN,
                &format!("This API key does not have the '{}' scope.", scope.as_str()),
            ),
        };
        match r.status() {
            StatusCode::SERVICE_UNAVAILABLE => {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            StatusCode::UNAUTHORIZED => {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"trackd\""),
                );
            }
            _ => {}
        }
        r
    }
}

fn shaped(shape: Shape, status: StatusCode, msg: &str) -> Response<Body> {
    match shape {
        Shape::Detail => response::detail(status, msg),
        Shape::Envelope => response::envelope_error(status, msg),
    }
}

impl From<FieldErrors> for ApiError {
    fn from(e: FieldErrors) -> Self {
        Self::Fields(e)
    }
}

/// What a handler returns.
pub type Handled = Result<Response<Body>, ApiError>;
