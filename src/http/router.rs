//! Routing: path (with or without trailing slash) and method to handler; 404, 405 and 414 as
//! JSON; `Connection: close` on every response once the server is draining. Every request is
//! observed (metrics, access log, `X-Request-Id`) by [`super::observe`].

use super::observe::Observation;
use super::response::{self, Body};
use super::{ops, policy, tracking};
use crate::app::AppState;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use std::sync::atomic::Ordering;

pub async fn handle(req: Request<Incoming>, state: &AppState) -> Response<Body> {
    let observation = Observation::start(&req);
    let mut resp = route(req, state).await;
    if state.draining.load(Ordering::Relaxed) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    observation.finish(&state.http_metrics, &mut resp);
    resp
}

async fn route(req: Request<Incoming>, state: &AppState) -> Response<Body> {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > state.max_uri_bytes {
        let msg = format!(
            "Request URI is too long: {uri_len} bytes, at most {}.",
            state.max_uri_bytes
        );
        return response::detail(StatusCode::URI_TOO_LONG, &msg);
    }
    let path = req.uri().path();
    let path = if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    };
    let method = req.method();
    match path {
        "/api/next-tracking-number" => {
            if method != Method::GET {
                return response::method_not_allowed(method, "GET");
            }
            tracking::next_tracking_number(req.uri().query(), req.headers(), state).await
        }
        "/api/tracking-numbers" => {
            if method != Method::POST {
                return response::method_not_allowed(method, "POST");
            }
            let (parts, body) = req.into_parts();
            tracking::issue_batch(body, &parts.headers, state).await
        }
        _ if path.starts_with("/api/tracking-numbers/") => {
            if let Some(r) = read_only(method) {
                return r;
            }
            let number = &path["/api/tracking-numbers/".len()..];
            tracking::lookup(number, state).await
        }
        "/healthz" => read_only(method)
            .unwrap_or_else(|| response::json(StatusCode::OK, &json!({"status": "ok"}))),
        "/readyz" => read_only(method).unwrap_or_else(|| ops::readiness(state)),
        "/metrics" => read_only(method).unwrap_or_else(|| ops::metrics(state)),
        "/openapi.json" => read_only(method).unwrap_or_else(ops::openapi),
        p => match p.strip_prefix(policy::PREFIX) {
            Some(rest) => policy::handle(&req, rest, state)
                .await
                .unwrap_or_else(response::not_found),
            None => response::not_found(),
        },
    }
}

/// `None` for GET and HEAD (hyper drops the body of a HEAD response), else the 405.
fn read_only(method: &Method) -> Option<Response<Body>> {
    (method != Method::GET && method != Method::HEAD)
        .then(|| response::method_not_allowed(method, "GET, HEAD"))
}
