//! What every request handler reads: the application services, built by [`crate::app`] and
//! handed to the server.

use crate::auth::Keys;
use crate::health::{Liveness, Readiness};
use crate::issue::Issuer;
use crate::metrics::HttpMetrics;
use crate::policy::PolicyService;
use crate::records::RecordSink;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct AppState {
    /// The API keys (none: open).
    pub keys: Keys,
    /// Issues numbers (allocator, records, idempotency keys).
    pub issuer: std::sync::Arc<Issuer>,
    /// Where records are read (lookups); `None` with `records.mode = "off"`.
    pub records: Option<Arc<dyn RecordSink>>,
    pub policy: PolicyService,
    /// What `/readyz` checks.
    pub readiness: Readiness,
    /// What `/healthz` checks.
    pub liveness: Liveness,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Per-request metric cells.
    pub http_metrics: HttpMetrics,
    /// Set once shutdown has begun: readiness fails and responses close their connection.
    pub draining: AtomicBool,
    pub max_uri_bytes: usize,
    /// A request body must arrive within this.
    pub body_read_timeout: std::time::Duration,
    /// Seconds sent in `Retry-After` with a 503.
    pub retry_after_secs: u64,
}

impl AppState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}
