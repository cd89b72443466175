//! Operations routes: `/healthz`, `/readyz` (composable readiness checks), `/metrics`
//! (Prometheus text format, scrape-time values refreshed first) and `/openapi.json` (the
//! whole contract).

use super::response::{self, Body};
use super::state::AppState;
use crate::metrics::{self, RecordsSnapshot, TrackingSnapshot};
use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};
use serde_json::json;
use std::sync::atomic::Ordering;

/// The OpenAPI 3.1 description of the whole HTTP contract (tracking, customer insurance,
/// operations).
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// 200 while the process can serve; 503 once a supervised actor is gone for good (only a
/// restart of the process helps then).
pub fn liveness(state: &AppState) -> Response<Body> {
    match state.liveness.check() {
        Ok(()) => response::json(StatusCode::OK, &json!({"status": "ok"})),
        Err(reasons) => response::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "failed", "detail": reasons.join("; "), "reasons": reasons}),
        ),
    }
}

/// 200 when every readiness check passes and the server is not draining, else 503: with
/// every check's details and the reasons on the operations listener (`detailed`), the bare
/// status on the public one (the details show issued volumes and error strings).
pub fn readiness(state: &AppState, detailed: bool) -> Response<Body> {
    let v = state.readiness.evaluate(state.is_draining());
    let status = if v.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if detailed {
        response::json(status, &v.body)
    } else {
        response::json(status, &json!({"status": v.body["status"]}))
    }
}

/// The Prometheus exposition of every metric, after refreshing the scrape-time values.
pub fn metrics(state: &AppState) -> Response<Body> {
    let alloc = state.issuer.numbers().allocator();
    let ready = state.readiness.evaluate(state.is_draining()).ready;
    metrics::refresh_tracking(&TrackingSnapshot {
        store: alloc.store_kind(),
        issued: alloc.issued(),
        buffered: alloc.buffered(),
        store_up: alloc.store_healthy(),
        ready,
    });
    if let Some(rec) = state.issuer.recorder() {
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
    response::bytes(
        StatusCode::OK,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        text,
    )
}

pub fn openapi() -> Response<Body> {
    response::json_bytes(StatusCode::OK, Bytes::from_static(OPENAPI_JSON.as_bytes()))
}
