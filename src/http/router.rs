//! Dispatch: the request's [`Route`] (parsed once), its method check, the key's scope, the
//! handler, and the one error path; `Connection: close` on every HTTP/1 response once the
//! server is draining. Every request is observed (metrics, access log, `X-Request-Id`) by
//! [`super::observe`].
//!
//! A request that can be answered without waiting (a number in hand, a policy lookup, the
//! operations routes) is answered while hyper hands it over: no future is polled, and the
//! request's buffer is released before hyper reads the next one. The rest (label runs,
//! lookups in the record store, voids, dumps, keyed or durable issuing, an empty allocator)
//! is answered by a future that owns what it needs.

use super::error::{ApiError, Handled};
use super::observe::Observation;
use super::response::Body;
use super::route::Route;
use super::server::Side;
use super::state::AppState;
use super::{docs, ops, policy, tracking};
use crate::auth::Denied;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The answer to a request: ready, or to come.
pub enum Reply {
    Ready(Option<Response<Body>>),
    Later(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

impl Future for Reply {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Reply::Ready(r) => Poll::Ready(Ok(r.take().expect("a reply is polled once ready"))),
            Reply::Later(f) => f.as_mut().poll(cx).map(Ok),
        }
    }
}

/// What a request needs that cannot be done at once.
pub enum Later {
    /// The route's async handler, for the key's client.
    Dispatch { client: Option<String> },
    /// A parsed order to issue a number for, the async way (with its key, or waiting).
    Issue(Box<tracking::Pending>),
}

pub fn handle(req: Request<Incoming>, state: &Arc<AppState>, side: Side) -> Reply {
    let (parts, body) = req.into_parts();
    // HTTP/2 has no `Connection` header: a draining server sends GOAWAY instead.
    let http1 = parts.version < hyper::Version::HTTP_2;
    let route = Route::parse(parts.uri.path());
    let observation = Observation::start(&parts, route);
    match now(route, &parts, state, side) {
        Ok(handled) => Reply::Ready(Some(complete(handled, observation, state, http1))),
        Err(later) => {
            let state = Arc::clone(state);
            Reply::Later(Box::pin(async move {
                let route = Route::parse(parts.uri.path());
                let handled = match later {
                    Later::Dispatch { client } => {
                        dispatch(route, &parts, body, client.as_deref(), &state).await
                    }
                    Later::Issue(pending) => tracking::issue_later(pending, &state).await,
                };
                complete(handled, observation, &state, http1)
            }))
        }
    }
}

/// The response of a handled request, observed.
fn complete(
    handled: Handled,
    observation: Observation,
    state: &AppState,
    http1: bool,
) -> Response<Body> {
    let mut resp = match handled {
        Ok(r) => r,
        Err(e) => e.into_response(state.retry_after_secs),
    };
    if http1 && state.is_draining() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    observation.finish(&state.http_metrics, &mut resp);
    resp
}

/// Checks the request (URI length, listener, method, key) and answers it if that needs no
/// waiting; else says what is left to do.
fn now(route: Route<'_>, parts: &Parts, state: &AppState, side: Side) -> Result<Handled, Later> {
    let uri_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > state.max_uri_bytes {
        return Ok(Err(ApiError::Status(
            hyper::StatusCode::URI_TOO_LONG,
            format!(
                "Request URI is too long: {uri_len} bytes, at most {}.",
                state.max_uri_bytes
            )
            .into(),
        )));
    }
    // The operations listener answers operations only; the public one, no metrics.
    let served = match side {
        Side::Admin => matches!(route, Route::Healthz | Route::Readyz | Route::Metrics),
        Side::Public => !matches!(route, Route::Metrics | Route::Unmatched),
    };
    if !served {
        return Ok(Err(ApiError::NoRoute));
    }
    if !route.allows(&parts.method) {
        return Ok(Err(ApiError::Method(parts.method.clone(), route.allow())));
    }
    // Before anything is read or issued: the key and its scope.
    let client = match route.scope() {
        None => None,
        Some(scope) => {
            let authorization = super::observe::header(&parts.headers, &header::AUTHORIZATION);
            match state
                .keys
                .check(authorization.map(HeaderValue::as_bytes), scope)
            {
                Ok(client) => client,
                Err(Denied::Unauthenticated) => {
                    return Ok(Err(ApiError::Unauthenticated(route.shape())));
                }
                Err(Denied::Forbidden { scope, .. }) => {
                    return Ok(Err(ApiError::Forbidden(route.shape(), scope)));
                }
            }
        }
    };
    match route {
        Route::NextTrackingNumber => {
            tracking::next_tracking_number(parts, client, state).map_err(Later::Issue)
        }
        Route::Healthz => Ok(Ok(ops::liveness(state))),
        Route::Readyz => Ok(Ok(ops::readiness(state, side == Side::Admin))),
        Route::Metrics => Ok(Ok(ops::metrics(state))),
        Route::OpenApi => Ok(Ok(ops::openapi())),
        Route::Docs(file) => Ok(docs::serve(file).ok_or(ApiError::NoRoute)),
        Route::UserList | Route::UserPolicy(_) | Route::PolicyDetail(_) => {
            Ok(policy::lookup(route, parts, state))
        }
        Route::Unmatched => Ok(Err(ApiError::NoRoute)),
        Route::IssueRun | Route::Lookup(_) | Route::Void(_) | Route::Dump(..) => {
            Err(Later::Dispatch {
                client: client.map(str::to_owned),
            })
        }
    }
}

/// The routes that wait (for a body, a store or the blocking pool); checks already passed.
async fn dispatch(
    route: Route<'_>,
    parts: &Parts,
    body: Incoming,
    client: Option<&str>,
    state: &AppState,
) -> Handled {
    match route {
        Route::IssueRun => tracking::issue_run(parts, body, client, state).await,
        Route::Lookup(number) => tracking::lookup(number, state).await,
        Route::Void(number) => tracking::void(number, parts, body, client, state).await,
        Route::Dump(..) => policy::dump_route(route, state).await,
        _ => Err(ApiError::NoRoute),
    }
}
