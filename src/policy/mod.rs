//! Customer insurance policies, served from memory: the snapshot and its indexes
//! ([`cache`]), the route JSON shapes ([`model`]), the dump writers ([`export`]), loading from
//! PostgreSQL ([`load`]) by the loader actor ([`actor`]), the bundled sample data
//! ([`sample`]), schema migrations ([`migrate`]) and `trackd db seed` ([`seed`]). The metrics
//! of the cache are defined here, in one place.

pub mod actor;
pub mod cache;
pub mod export;
pub mod load;
pub mod migrate;
pub mod model;
pub mod sample;
pub mod seed;

use crate::config::PolicySettings;
use arc_swap::ArcSwapOption;
use cache::{Counts, Snapshot};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The published snapshot: replaced whole by the loader, read lock-free by handlers.
pub struct PolicyCache {
    snapshot: ArcSwapOption<Snapshot>,
    last_error: Mutex<Option<String>>,
    source: &'static str,
}

impl PolicyCache {
    pub fn new(source: &'static str) -> Self {
        Self {
            snapshot: ArcSwapOption::empty(),
            last_error: Mutex::new(None),
            source,
        }
    }

    /// The current snapshot (cheap; no lock, no actor), or `None` before the first load.
    #[inline]
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.load_full()
    }

    /// A borrowed view of the current snapshot for handlers that finish synchronously.
    #[inline]
    pub fn guard(&self) -> arc_swap::Guard<Option<Arc<Snapshot>>> {
        self.snapshot.load()
    }

    pub fn publish(&self, snap: Snapshot, load_time: Duration) {
        record_load(snap.counts(), load_time);
        self.snapshot.store(Some(Arc::new(snap)));
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
    }

    pub fn record_failure(&self, error: &str) {
        record_refresh_failure();
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error.to_owned());
        }
    }

    pub fn is_ready(&self) -> bool {
        self.snapshot.load().is_some()
    }

    pub fn source(&self) -> &'static str {
        self.source
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

/// What the HTTP handlers need: the cache, the API keys and the paging limits.
pub struct PolicyService {
    pub cache: Arc<PolicyCache>,
    api_keys: Vec<Box<[u8]>>,
    pub page_size_default: usize,
    pub page_size_max: usize,
}

impl PolicyService {
    pub fn new(cache: Arc<PolicyCache>, settings: &PolicySettings) -> Self {
        Self {
            cache,
            api_keys: settings
                .api_keys
                .iter()
                .map(|k| k.as_bytes().into())
                .collect(),
            page_size_default: settings.page_size_default,
            page_size_max: settings.page_size_max,
        }
    }

    pub fn requires_key(&self) -> bool {
        !self.api_keys.is_empty()
    }

    /// Whether an `Authorization` header value carries a configured key (`Bearer KEY`).
    /// Every configured key is compared, each in constant time.
    pub fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        if self.api_keys.is_empty() {
            return true;
        }
        let Some(h) = authorization else {
            return false;
        };
        let Some(token) = h
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
            .and_then(|_| h.get(7..))
        else {
            return false;
        };
        let mut ok = subtle::Choice::from(0u8);
        for k in &self.api_keys {
            ok |= subtle::ConstantTimeEq::ct_eq(&k[..], token);
        }
        bool::from(ok)
    }
}

/// A PostgreSQL error with the server's message when there is one (`Display` of
/// `tokio_postgres::Error` says only "db error").
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// The loader actor's cell and task, to stop at shutdown.
pub type ActorHandle = (ractor::ActorCell, tokio::task::JoinHandle<()>);

/// Starts the policy cache: with an empty `database_url` the bundled sample data is loaded
/// at once; otherwise the loader actor is spawned and the cache fills in the background.
pub async fn start(
    settings: &PolicySettings,
) -> Result<(PolicyService, Option<ActorHandle>), String> {
    describe_metrics();
    if settings.database_url.is_empty() {
        let cache = Arc::new(PolicyCache::new("sample"));
        let started = std::time::Instant::now();
        let snap = sample::SampleData::bundled()
            .and_then(|d| d.snapshot())
            .map_err(|e| e.to_string())?;
        cache.publish(snap, started.elapsed());
        return Ok((PolicyService::new(cache, settings), None));
    }
    let cache = Arc::new(PolicyCache::new("postgres"));
    let args = actor::LoaderArgs {
        url: settings.database_url.clone(),
        cache: Arc::clone(&cache),
        interval: Duration::from_secs(settings.refresh_interval_secs),
        debounce: Duration::from_millis(settings.notify_debounce_ms),
        retry: Duration::from_millis(settings.retry_ms),
        connect_timeout: Duration::from_millis(settings.connect_timeout_ms),
        load_timeout: Duration::from_secs(settings.load_timeout_secs),
    };
    let (actor, handle) = ractor::Actor::spawn(None, actor::LoaderActor, args)
        .await
        .map_err(|e| format!("cannot start the policy loader: {e}"))?;
    Ok((
        PolicyService::new(cache, settings),
        Some((actor.get_cell(), handle)),
    ))
}

// ---- metrics: every policy metric is defined here ---------------------------------------

const ENTRIES: &str = "trackd_policy_cache_entries";
const LOAD_DURATION: &str = "trackd_policy_cache_load_duration_seconds";
const LAST_LOAD: &str = "trackd_policy_cache_last_load_timestamp_seconds";
const REFRESH_FAILURES: &str = "trackd_policy_cache_refresh_failures_total";
const DUMP_BYTES: &str = "trackd_policy_dump_bytes_total";

fn describe_metrics() {
    use metrics::Unit;
    metrics::describe_gauge!(ENTRIES, "Rows in the policy cache, by kind.");
    metrics::describe_histogram!(
        LOAD_DURATION,
        Unit::Seconds,
        "Time to load and index a policy cache snapshot."
    );
    metrics::describe_gauge!(
        LAST_LOAD,
        Unit::Seconds,
        "Unix time of the last successful policy cache load."
    );
    metrics::describe_counter!(
        REFRESH_FAILURES,
        "Policy cache refreshes that failed (the last good snapshot stays)."
    );
    metrics::describe_counter!(
        DUMP_BYTES,
        Unit::Bytes,
        "Bytes of user_policy_dump files served, by format."
    );
}

fn record_load(c: Counts, load_time: Duration) {
    for (kind, n) in [
        ("users", c.users),
        ("policies", c.policies),
        ("categories", c.categories),
        ("user_policies", c.user_policies),
    ] {
        metrics::gauge!(ENTRIES, "kind" => kind).set(n as f64);
    }
    metrics::histogram!(LOAD_DURATION).record(load_time.as_secs_f64());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(LAST_LOAD).set(now);
}

fn record_refresh_failure() {
    metrics::counter!(REFRESH_FAILURES).increment(1);
}

/// Counts the bytes of one dump (`format` is `csv`, `json` or `xlsx`).
pub fn record_dump_bytes(format: &'static str, bytes: usize) {
    metrics::counter!(DUMP_BYTES, "format" => format).increment(bytes as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(keys: &[&str]) -> PolicyService {
        PolicyService {
            cache: Arc::new(PolicyCache::new("test")),
            api_keys: keys.iter().map(|k| k.as_bytes().into()).collect(),
            page_size_default: 10,
            page_size_max: 100,
        }
    }

    #[test]
    fn api_keys_are_checked() {
        let open = service(&[]);
        assert!(open.authorized(None));
        let s = service(&["k1-secret", "k2-secret"]);
        assert!(!s.authorized(None));
        assert!(s.authorized(Some(b"Bearer k1-secret")));
        assert!(s.authorized(Some(b"bearer k2-secret")));
        assert!(!s.authorized(Some(b"Bearer k1-secre")));
        assert!(!s.authorized(Some(b"Bearer k1-secretx")));
        assert!(!s.authorized(Some(b"Basic k1-secret")));
        assert!(!s.authorized(Some(b"Bearer")));
        assert!(!s.authorized(Some(b"k1-secret")));
    }

    #[test]
    fn cache_is_empty_until_published() {
        let c = PolicyCache::new("test");
        assert!(!c.is_ready());
        c.record_failure("boom");
        assert_eq!(c.last_error().as_deref(), Some("boom"));
        c.publish(
            cache::SnapshotBuilder::new().build().unwrap(),
            Duration::ZERO,
        );
        assert!(c.is_ready());
        assert!(c.last_error().is_none());
    }
}
