//! Dispatch: the request's [`Route`] (parsed once), its method check, the handler, and the
//! one error path; `Connection: close` on every HTTP/1 response once the server is draining. Every
//! request is observed (metrics, access log, `X-Request-Id`) by [`super::observe`].

use super::error::{ApiError, Handled};
use super::observe::Observation;
use super::response::Body;
use super::route::Route;
use super::server::Side;
use super::state::AppState;
use super::{ops, policy, tracking};
use crate::auth::Denied;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response};

pub async fn handle(req: Request<Incoming>, state: &AppState, side: Side) -> Response<Body> {
    let (parts, body) = req.into_parts();
    // HTTP/2 has no `Connection` header: a draining server sends GOAWAY instead.
    let http1 = parts.version < hyper::Version::HTTP_2;
    let route = Route::parse(parts.uri.path());
    let observation = Observation::start(&parts, route);
    let mut resp = match dispatch(route, &parts, body, state, side).await {
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

async fn dispatch(
    route: Route<'_>,
    parts: &hyper::http::request::Parts,
    body: Incoming,
    state: &AppState,
    side: Side,
) -> Handled {
    let uri_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > state.max_uri_bytes {
        return Err(ApiError::Status(
            hyper::StatusCode::URI_TOO_LONG,
            format!(
                "Request URI is too long: {uri_len} bytes, at most {}.",
                state.max_uri_bytes
            )
            .into(),
        ));
    }
    // The operations listener answers operations only; the public one, no metrics.
    let served = match side {
        Side::Admin => matches!(route, Route::Healthz | Route::Readyz | Route::Metrics),
        Side::Public => !matches!(route, Route::Metrics | Route::Unmatched),
    };
    if !served {
        return Err(ApiError::NoRoute);
    }
    if !route.allows(&parts.method) {
        return Err(ApiError::Method(parts.method.clone(), route.allow()));
    }
    // Before anything is read or issued: the key and its scope.
    let client = match route.scope() {
        None => None,
        Some(scope) => {
            let authorization = parts.headers.get(header::AUTHORIZATION);
            match state
                .keys
                .check(authorization.map(HeaderValue::as_bytes), scope)
            {
                Ok(client) => client,
                Err(Denied::Unauthenticated) => {
                    return Err(ApiError::Unauthenticated(route.shape()));
                }
                Err(Denied::Forbidden { scope, .. }) => {
                    return Err(ApiError::Forbidden(route.shape(), scope));
                }
            }
        }
    };
    match route {
        Route::NextTrackingNumber => tracking::next_tracking_number(parts, client, state).await,
        Route::IssueRun => tracking::issue_run(parts, body, client, state).await,
        Route::Lookup(number) => tracking::lookup(number, state).await,
        Route::Void(number) => tracking::void(number, parts, body, client, state).await,
        Route::Healthz => Ok(ops::liveness(state)),
        Route::Readyz => Ok(ops::readiness(state, side == Side::Admin)),
        Route::Metrics => Ok(ops::metrics(state)),
        Route::OpenApi => Ok(ops::openapi()),
        Route::UserList | Route::UserPolicy(_) | Route::PolicyDetail(_) | Route::Dump(..) => {
            policy::handle(route, parts, state).await
        }
        Route::Unmatched => Err(ApiError::NoRoute),
    }
}
