//! Operations routes: `/readyz` (composable readiness checks), `/metrics` (Prometheus text
//! format, scrape-time values refreshed first) and `/openapi.json` (the whole contract).

use super::response::{self, Body};
use crate::app::AppState;
use crate::metrics::{self, RecordsSnapshot, TrackingSnapshot};
use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use std::sync::atomic::Ordering;

/// The OpenAPI 3.1 description of the whole HTTP contract (tracking, customer insurance,
/// operations).
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// 200 when every readiness check passes and the server is not draining, else 503 with the
/// reasons.
pub fn readiness(state: &AppState) -> Response<Body> {
    let v = state
        .readiness
        .evaluate(state.draining.load(Ordering::Relaxed));
    let status = if v.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    response::json(status, &v.body)
}

/// The Prometheus exposition of every metric, after refreshing the scrape-time values.
pub fn metrics(state: &AppState) -> Response<Body> {
    let alloc = state.tracking.allocator();
    let ready = state
        .readiness
        .evaluate(state.draining.load(Ordering::Relaxed))
        .ready;
    metrics::refresh_tracking(&TrackingSnapshot {
        store: alloc.store_kind(),
        issued: alloc.issued(),
        buffered: alloc.buffered(),
        store_up: alloc.store_healthy(),
        ready,
    });
    if let Some(rec) = &state.recorder {
        let st = rec.stats();
        metrics::refresh_records(&RecordsSnapshot {
            store: rec.sink_kind(),
            written: st.written.load(Ordering::Relaxed),
            batches: st.batches.load(Ordering::Relaxed),
            failures: st.failures.load(Ordering::Relaxed),
            queued: st.queued.load(Ordering::Relaxed),
        });
    }
    let mut text = state.metrics.render();
    state.http_metrics.render_into(&mut text);
    let mut r = Response::new(response::full(text));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

pub fn openapi() -> Response<Body> {
    let mut r = Response::new(response::full(Bytes::from_static(OPENAPI_JSON.as_bytes())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
