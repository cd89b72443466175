//! Every metric trackd exports: names, units, help text and histogram buckets live here and
//! nowhere else; the rest of the code records through the helpers below.
//!
//! Conventions (Prometheus): `trackd_` prefix, base units in the name (`_seconds`, `_bytes`),
//! `_total` on counters, route *templates* as labels, never an id, a tracking number or
//! customer data. The recorder is installed once per process ([`install`]); `/metrics` renders
//! it. The per-request HTTP metrics go through [`HttpMetrics`]: fixed-bucket atomics of
//! trackd's own per (route, method, status), rendered after the exporter's text, so a request
//! costs two relaxed atomic additions and no allocation.
//! Values that can be read from state (numbers buffered, numbers issued, store health) are set
//! at scrape time by [`refresh_tracking`] instead of being counted on the hot path.

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

// HTTP
pub const HTTP_REQUESTS: &str = "trackd_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "trackd_http_request_duration_seconds";
// Tracking numbers and the sequence store
pub const NUMBERS_ISSUED: &str = "trackd_tracking_numbers_issued_total";
pub const NUMBERS_SKIPPED: &str = "trackd_tracking_numbers_skipped_total";
pub const NUMBERS_VOIDED: &str = "trackd_tracking_numbers_voided_total";
pub const BLOCKS_RESERVED: &str = "trackd_sequence_blocks_reserved_total";
pub const BLOCK_SIZE: &str = "trackd_sequence_block_size";
pub const NUMBERS_BUFFERED: &str = "trackd_sequence_numbers_buffered";
pub const STORE_LATENCY: &str = "trackd_sequence_store_latency_seconds";
pub const STORE_ERRORS: &str = "trackd_sequence_store_errors_total";
pub const STORE_UP: &str = "trackd_sequence_store_up";
// Issuance records
pub const RECORDS_WRITTEN: &str = "trackd_records_written_total";
pub const RECORD_BATCHES: &str = "trackd_records_batches_total";
pub const RECORD_WRITE_FAILURES: &str = "trackd_records_write_failures_total";
pub const RECORDS_QUEUED: &str = "trackd_records_queued";
pub const RECORD_BATCH_WRITE: &str = "trackd_records_batch_write_seconds";
pub const RECORDS_QUARANTINED: &str = "trackd_records_quarantined_groups";
pub const RECORDS_EXPIRED: &str = "trackd_records_expired_total";
// Process
pub const BUILD_INFO: &str = "trackd_build_info";
pub const READY: &str = "trackd_ready";
// Policy cache
pub const POLICY_CACHE_ENTRIES: &str = "trackd_policy_cache_entries";
pub const POLICY_CACHE_LOAD_DURATION: &str = "trackd_policy_cache_load_duration_seconds";
pub const POLICY_CACHE_LAST_LOAD: &str = "trackd_policy_cache_last_load_timestamp_seconds";
pub const POLICY_CACHE_REFRESH_FAILURES: &str = "trackd_policy_cache_refresh_failures_total";
pub const POLICY_DUMP_BYTES: &str = "trackd_policy_dump_bytes_total";

/// Request latency buckets: the issuance endpoint answers in tens of microseconds, a policy
/// dump may take a second.
const HTTP_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Store round trips: an fsync or a Redis/PostgreSQL call, up to the store timeout.
const STORE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// A full policy cache load.
const LOAD_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The git revision baked in at build time (`TRACKD_REVISION=$(git rev-parse --short HEAD)`).
const REVISION: &str = match option_env!("TRACKD_REVISION") {
    Some(r) => r,
    None => "unknown",
};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the process's global recorder (once; later calls return
/// the same handle, so several applications in one test process share it) and describes every
/// metric.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(STORE_LATENCY.into()), STORE_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(RECORD_BATCH_WRITE.into()),
                        STORE_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(POLICY_CACHE_LOAD_DURATION.into()),
                        LOAD_BUCKETS,
                    )
                })
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will be empty");
            }
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "revision" => REVISION)
                .set(1.0);
            handle
        })
        .clone()
}

/// Spawns the task that folds recorded histogram samples into their buckets every few
/// seconds, so that memory stays bounded when nobody scrapes.
pub fn spawn_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}

fn describe() {
    describe_counter!(
        NUMBERS_ISSUED,
        Unit::Count,
        "Tracking numbers issued by this process."
    );
    describe_counter!(
        NUMBERS_SKIPPED,
        Unit::Count,
        "Sequence numbers reserved but never issued (the rest of the blocks in hand at shutdown); skipped, never reused."
    );
    describe_counter!(
        BLOCKS_RESERVED,
        Unit::Count,
        "Blocks of sequence numbers reserved from the sequence store."
    );
    describe_gauge!(
        BLOCK_SIZE,
        Unit::Count,
        "Size of the last block reserved (adapts to the issue rate)."
    );
    describe_gauge!(
        NUMBERS_BUFFERED,
        Unit::Count,
        "Numbers left in the current and standby blocks, issuable without the store."
    );
    describe_histogram!(
        STORE_LATENCY,
        Unit::Seconds,
        "Duration of block reservations against the sequence store, failures included."
    );
    describe_counter!(
        STORE_ERRORS,
        Unit::Count,
        "Sequence store failures, by kind: unavailable (unreachable, timeout, a reservation not confirmed), corrupt (counter loss or inconsistency, also per Redis shard taken out of service or re-probed), refused (a store that could lose acknowledged reservations), exhausted."
    );
    describe_gauge!(
        STORE_UP,
        Unit::Count,
        "1 when the last reservation from the sequence store succeeded, else 0."
    );
    describe_gauge!(
        BUILD_INFO,
        Unit::Count,
        "Always 1; the labels name the running version and git revision."
    );
    describe_counter!(
        RECORDS_WRITTEN,
        Unit::Count,
        "Issuance records written to the record store (sampled at scrape time)."
    );
    describe_counter!(
        RECORD_BATCHES,
        Unit::Count,
        "Batches of records written (each one COPY or one journal frame)."
    );
    describe_counter!(
        RECORD_WRITE_FAILURES,
        Unit::Count,
        "Failed record batch writes (each is retried until written)."
    );
    describe_gauge!(
        RECORDS_QUEUED,
        Unit::Count,
        "Records issued and not yet written: the writer's backlog."
    );
    describe_histogram!(
        RECORD_BATCH_WRITE,
        Unit::Seconds,
        "Duration of each record batch write (one COPY, or one journal append and its sync), failures included: in durable mode, the commit every waiting request shares."
    );
    describe_counter!(
        NUMBERS_VOIDED,
        Unit::Count,
        "Tracking numbers voided (their label cancelled)."
    );
    describe_counter!(
        RECORDS_EXPIRED,
        Unit::Count,
        "Records removed because they are older than records.retention_days."
    );
    describe_gauge!(
        RECORDS_QUARANTINED,
        Unit::Count,
        "Stored record groups of the embedded store that did not decode, set aside (quarantined_groups in trackd.redb) so that indexing goes on."
    );
    describe_gauge!(
        READY,
        Unit::Count,
        "1 when /readyz answers 200, else 0 (sampled at scrape time)."
    );
    describe_gauge!(
        POLICY_CACHE_ENTRIES,
        Unit::Count,
        "Rows held in the policy cache, by kind (users, policies, user_policies, ...)."
    );
    describe_histogram!(
        POLICY_CACHE_LOAD_DURATION,
        Unit::Seconds,
        "Duration of full policy cache loads from PostgreSQL."
    );
    describe_gauge!(
        POLICY_CACHE_LAST_LOAD,
        Unit::Seconds,
        "Unix time of the last successful policy cache load."
    );
    describe_counter!(
        POLICY_CACHE_REFRESH_FAILURES,
        Unit::Count,
        "Policy cache refreshes that failed (the previous snapshot kept serving)."
    );
    describe_counter!(
        POLICY_DUMP_BYTES,
        Unit::Bytes,
        "Bytes of user policy dumps produced, by format."
    );
}

/// Methods get their own label value; any other method is `OTHER` (no unbounded labels).
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];

/// Status codes with pre-registered handles; another code goes through the registry (rare).
const STATUSES: [u16; 17] = [
    200, 201, 204, 304, 400, 401, 403, 404, 405, 408, 413, 414, 429, 431, 500, 502, 503,
];

fn status_slot(status: u16) -> Option<usize> {
    STATUSES.iter().position(|&s| s == status)
}

pub fn method_index(m: &hyper::Method) -> usize {
    match *m {
        hyper::Method::GET => 0,
        hyper::Method::HEAD => 1,
        hyper::Method::POST => 2,
        hyper::Method::PUT => 3,
        hyper::Method::DELETE => 4,
        hyper::Method::PATCH => 5,
        hyper::Method::OPTIONS => 6,
        _ => 7,
    }
}

/// Requests by (route, method, status): a count per duration bucket and the summed duration,
/// in atomics of trackd's own, rendered by [`HttpMetrics::render_into`] after the exporter's
/// text. Recording is two relaxed atomic additions (the exporter's histogram kept every sample
/// until the next scrape or upkeep: measured at 2–4 % of a policy lookup's throughput). The
/// request counter is the histogram's count.
pub struct HttpMetrics {
    routes: &'static [&'static str],
    cells: Box<[OnceLock<Box<Cell>>]>,
    /// Statuses outside [`STATUSES`] (rare).
    other: std::sync::Mutex<Vec<(CellKey, Box<Cell>)>>,
}

/// (route index, method index, status code).
type CellKey = (usize, usize, u16);

/// One (route, method, status): requests per bucket of [`HTTP_BUCKETS`] (and one above the
/// last), and their summed duration in nanoseconds.
#[derive(Default)]
struct Cell {
    buckets: [AtomicU64; HTTP_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Cell {
    fn record(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let b = HTTP_BUCKETS.partition_point(|&le| le < secs);
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl HttpMetrics {
    /// `routes` are the route templates; a request is recorded under one of their indexes.
    pub fn new(routes: &'static [&'static str]) -> Self {
        let n = routes.len() * METHODS.len() * STATUSES.len();
        Self {
            routes,
            cells: (0..n).map(|_| OnceLock::new()).collect(),
            other: std::sync::Mutex::new(Vec::new()),
        }
    }

    #[inline]
    pub fn record(&self, route: usize, method: usize, status: u16, elapsed: Duration) {
        match status_slot(status) {
            Some(s) if route < self.routes.len() && method < METHODS.len() => {
                let i = (route * METHODS.len() + method) * STATUSES.len() + s;
                self.cells[i].get_or_init(Box::default).record(elapsed);
            }
            _ => self.record_other(route, method, status, elapsed),
        }
    }

    #[cold]
    fn record_other(&self, route: usize, method: usize, status: u16, elapsed: Duration) {
        let Ok(mut other) = self.other.lock() else {
            return;
        };
        let key = (route, method, status);
        match other.iter().find(|(k, _)| *k == key) {
            Some((_, cell)) => cell.record(elapsed),
            None => {
                let cell = Box::<Cell>::default();
                cell.record(elapsed);
                other.push((key, cell));
            }
        }
    }

    /// Appends `trackd_http_requests_total` and `trackd_http_request_duration_seconds` in the
    /// Prometheus text format.
    pub fn render_into(&self, out: &mut String) {
        use std::fmt::Write;
        let mut series: Vec<(String, [u64; HTTP_BUCKETS.len() + 1], u64)> = Vec::new();
        let mut add = |route: usize, method: usize, status: u16, cell: &Cell| {
            let counts = std::array::from_fn(|b| cell.buckets[b].load(Ordering::Relaxed));
            if counts.iter().any(|&c| c > 0) {
                let route = self.routes.get(route).copied().unwrap_or("unmatched");
                let method = METHODS.get(method).copied().unwrap_or("OTHER");
                let labels = format!("route=\"{route}\",method=\"{method}\",status=\"{status}\"");
                series.push((labels, counts, cell.sum_nanos.load(Ordering::Relaxed)));
            }
        };
        for (i, cell) in self.cells.iter().enumerate() {
            if let Some(cell) = cell.get() {
                let s = i % STATUSES.len();
                let m = i / STATUSES.len() % METHODS.len();
                let r = i / STATUSES.len() / METHODS.len();
                add(r, m, STATUSES[s], cell);
            }
        }
        if let Ok(other) = self.other.lock() {
            for ((r, m, status), cell) in other.iter() {
                add(*r, *m, *status, cell);
            }
        }
        if series.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP {HTTP_REQUESTS} HTTP requests answered, by route template, method and status code.\n# TYPE {HTTP_REQUESTS} counter"
        );
        for (labels, counts, _) in &series {
            let _ = writeln!(
                out,
                "{HTTP_REQUESTS}{{{labels}}} {}",
                counts.iter().sum::<u64>()
            );
        }
        let _ = writeln!(
            out,
            "# HELP {HTTP_REQUEST_DURATION} Time from routing a request to its response head, by route template, method and status.\n# TYPE {HTTP_REQUEST_DURATION} histogram"
        );
        for (labels, counts, sum_nanos) in &series {
            let mut cumulative = 0;
            for (le, c) in HTTP_BUCKETS.iter().zip(counts) {
                cumulative += c;
                let _ = writeln!(
                    out,
                    "{HTTP_REQUEST_DURATION}_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            cumulative += counts[HTTP_BUCKETS.len()];
            let _ = writeln!(
                out,
                "{HTTP_REQUEST_DURATION}_bucket{{{labels},le=\"+Inf\"}} {cumulative}\n\
                 {HTTP_REQUEST_DURATION}_sum{{{labels}}} {}\n\
                 {HTTP_REQUEST_DURATION}_count{{{labels}}} {cumulative}",
                *sum_nanos as f64 / 1e9
            );
        }
    }
}

/// A block was reserved from `store` in `elapsed`.
pub fn block_reserved(store: &'static str, size: u64, elapsed: Duration) {
    counter!(BLOCKS_RESERVED, "store" => store).increment(1);
    gauge!(BLOCK_SIZE, "store" => store).set(size as f64);
    histogram!(STORE_LATENCY, "store" => store).record(elapsed.as_secs_f64());
    gauge!(STORE_UP, "store" => store).set(1.0);
}

/// A reservation from `store` failed after `elapsed`; `kind` is one of
/// `unavailable`, `corrupt`, `exhausted`.
pub fn store_failed(store: &'static str, kind: &'static str, elapsed: Duration) {
    counter!(STORE_ERRORS, "store" => store, "kind" => kind).increment(1);
    histogram!(STORE_LATENCY, "store" => store).record(elapsed.as_secs_f64());
    gauge!(STORE_UP, "store" => store).set(0.0);
}

/// A store-internal failure that the reservation itself survived (e.g. one Redis shard's
/// counter went backwards and the shard was taken out of service; another shard served).
pub fn store_error(store: &'static str, kind: &'static str) {
    counter!(STORE_ERRORS, "store" => store, "kind" => kind).increment(1);
}

/// `count` reserved numbers will never be issued (shutdown, a surplus block).
pub fn numbers_skipped(count: u64) {
    counter!(NUMBERS_SKIPPED).increment(count);
}

/// Values read from the allocator at scrape time.
pub struct TrackingSnapshot {
    pub store: &'static str,
    pub issued: u64,
    pub buffered: u64,
    pub store_up: bool,
    pub ready: bool,
}

/// Sets the scrape-time values (gauges, and the issued counter, which only moves forward).
pub fn refresh_tracking(s: &TrackingSnapshot) {
    counter!(NUMBERS_ISSUED).absolute(s.issued);
    gauge!(NUMBERS_BUFFERED, "store" => s.store).set(s.buffered as f64);
    gauge!(STORE_UP, "store" => s.store).set(if s.store_up { 1.0 } else { 0.0 });
    gauge!(READY).set(if s.ready { 1.0 } else { 0.0 });
}

/// One attempt to write a batch of records to `store` took `elapsed` (per batch, not per
/// record: a few thousand a second at most).
pub fn record_batch_write(store: &'static str, elapsed: Duration) {
    histogram!(RECORD_BATCH_WRITE, "store" => store).record(elapsed.as_secs_f64());
}

/// A number was voided.
pub fn number_voided() {
    counter!(NUMBERS_VOIDED).increment(1);
}

/// `n` records past their retention were removed.
pub fn records_expired(n: u64) {
    counter!(RECORDS_EXPIRED).increment(n);
}

/// `groups` stored record groups are set aside as unreadable.
pub fn records_quarantined(groups: usize) {
    gauge!(RECORDS_QUARANTINED).set(groups as f64);
}

/// The record writer's counters, read at scrape time.
pub struct RecordsSnapshot {
    pub store: &'static str,
    pub written: u64,
    pub batches: u64,
    pub failures: u64,
    pub queued: u64,
}

/// A policy cache snapshot was published: its row counts by kind, and how long it took.
pub fn policy_cache_loaded(counts: &[(&'static str, usize)], load_time: Duration) {
    for (kind, n) in counts {
        gauge!(POLICY_CACHE_ENTRIES, "kind" => *kind).set(*n as f64);
    }
    histogram!(POLICY_CACHE_LOAD_DURATION).record(load_time.as_secs_f64());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    gauge!(POLICY_CACHE_LAST_LOAD).set(now);
}

/// A policy cache refresh failed (the last good snapshot keeps serving).
pub fn policy_cache_refresh_failed() {
    counter!(POLICY_CACHE_REFRESH_FAILURES).increment(1);
}

/// One dump of `bytes` bytes was produced (`format` is `csv`, `json` or `xlsx`).
pub fn policy_dump(format: &'static str, bytes: usize) {
    counter!(POLICY_DUMP_BYTES, "format" => format).increment(bytes as u64);
}

pub fn refresh_records(s: &RecordsSnapshot) {
    counter!(RECORDS_WRITTEN, "store" => s.store).absolute(s.written);
    counter!(RECORD_BATCHES, "store" => s.store).absolute(s.batches);
    counter!(RECORD_WRITE_FAILURES, "store" => s.store).absolute(s.failures);
    gauge!(RECORDS_QUEUED, "store" => s.store).set(s.queued as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        for name in [
            HTTP_REQUESTS,
            HTTP_REQUEST_DURATION,
            NUMBERS_ISSUED,
            NUMBERS_SKIPPED,
            NUMBERS_VOIDED,
            BLOCKS_RESERVED,
            BLOCK_SIZE,
            NUMBERS_BUFFERED,
            STORE_LATENCY,
            STORE_ERRORS,
            STORE_UP,
            BUILD_INFO,
            READY,
            POLICY_CACHE_ENTRIES,
            POLICY_CACHE_LOAD_DURATION,
            POLICY_CACHE_LAST_LOAD,
            POLICY_CACHE_REFRESH_FAILURES,
            POLICY_DUMP_BYTES,
            RECORDS_WRITTEN,
            RECORD_BATCHES,
            RECORD_WRITE_FAILURES,
            RECORDS_QUEUED,
            RECORD_BATCH_WRITE,
            RECORDS_QUARANTINED,
            RECORDS_EXPIRED,
        ] {
            assert!(name.starts_with("trackd_"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
        }
        for counter in [
            HTTP_REQUESTS,
            NUMBERS_ISSUED,
            NUMBERS_SKIPPED,
            NUMBERS_VOIDED,
            BLOCKS_RESERVED,
            STORE_ERRORS,
            POLICY_CACHE_REFRESH_FAILURES,
            POLICY_DUMP_BYTES,
            RECORDS_WRITTEN,
            RECORD_BATCHES,
            RECORD_WRITE_FAILURES,
            RECORDS_EXPIRED,
        ] {
            assert!(counter.ends_with("_total"), "{counter}");
        }
        for b in [HTTP_BUCKETS, STORE_BUCKETS, LOAD_BUCKETS] {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "buckets ascend");
        }
    }

    #[test]
    fn every_method_and_known_status_has_a_slot() {
        assert_eq!(method_index(&hyper::Method::GET), 0);
        assert_eq!(METHODS[method_index(&hyper::Method::CONNECT)], "OTHER");
        assert_eq!(status_slot(201), Some(1));
        assert_eq!(status_slot(418), None);
    }

    #[test]
    fn http_histograms_render_cumulative_buckets_sum_and_count() {
        let m = HttpMetrics::new(&["/a/", "/b/{id}/"]);
        let mut text = String::new();
        m.render_into(&mut text);
        assert!(
            text.is_empty(),
            "nothing recorded, nothing rendered: {text}"
        );
        for us in [50, 200, 200, 3_000] {
            m.record(1, 0, 200, Duration::from_micros(us));
        }
        m.record(0, 2, 418, Duration::from_secs(20)); // an unlisted status, above every bucket
        m.render_into(&mut text);
        let value = |prefix: &str| -> f64 {
            let line = text.lines().find(|l| l.starts_with(prefix));
            let line = line.unwrap_or_else(|| panic!("{prefix} missing:\n{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        let l = r#"route="/b/{id}/",method="GET",status="200""#;
        assert_eq!(value(&format!("{HTTP_REQUESTS}{{{l}}}")), 4.0);
        assert_eq!(
            value(&format!(
                "{HTTP_REQUEST_DURATION}_bucket{{{l},le=\"0.0001\"}}"
            )),
            1.0
        );
        assert_eq!(
            value(&format!(
                "{HTTP_REQUEST_DURATION}_bucket{{{l},le=\"0.00025\"}}"
            )),
            3.0
        );
        assert_eq!(
            value(&format!(
                "{HTTP_REQUEST_DURATION}_bucket{{{l},le=\"0.0025\"}}"
            )),
            3.0
        );
        assert_eq!(
            value(&format!(
                "{HTTP_REQUEST_DURATION}_bucket{{{l},le=\"0.005\"}}"
            )),
            4.0
        );
        assert_eq!(
            value(&format!(
                "{HTTP_REQUEST_DURATION}_bucket{{{l},le=\"+Inf\"}}"
            )),
            4.0
        );
        assert_eq!(value(&format!("{HTTP_REQUEST_DURATION}_count{{{l}}}")), 4.0);
        assert!((value(&format!("{HTTP_REQUEST_DURATION}_sum{{{l}}}")) - 0.00345).abs() < 1e-9);
        let o = r#"route="/a/",method="POST",status="418""#;
        assert_eq!(
            value(&format!("{HTTP_REQUEST_DURATION}_bucket{{{o},le=\"10\"}}")),
            0.0
        );
        assert_eq!(value(&format!("{HTTP_REQUEST_DURATION}_count{{{o}}}")), 1.0);
        assert_eq!(
            text.matches("# TYPE").count(),
            2,
            "one family each:\n{text}"
        );
    }
}
