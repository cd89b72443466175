//! Customer insurance policies, served from memory: the snapshot and its indexes
//! ([`cache`]), the route JSON shapes ([`model`]), the dump writers ([`export`]), loading from
//! PostgreSQL ([`load`]) by the loader actor ([`actor`]), the bundled sample data
//! ([`sample`]), schema migrations ([`migrate`]) and `trackd db seed` ([`seed`]).

pub mod actor;
pub mod cache;
pub mod export;
pub mod load;
pub mod migrate;
pub mod model;
pub mod sample;
pub mod seed;

use crate::config::PolicySettings;
use crate::metrics;
use crate::supervise::{self, Health};
use arc_swap::ArcSwapOption;
use cache::Snapshot;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
        let c = snap.counts();
        metrics::policy_cache_loaded(
            &[
                ("users", c.users),
                ("policies", c.policies),
                ("categories", c.categories),
                ("user_policies", c.user_policies),
            ],
            load_time,
        );
        self.snapshot.store(Some(Arc::new(snap)));
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
    }

    pub fn record_failure(&self, error: &str) {
        metrics::policy_cache_refresh_failed();
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

/// What the HTTP handlers need: the cache and the paging limits.
pub struct PolicyService {
    pub cache: Arc<PolicyCache>,
    pub page_size_default: usize,
    pub page_size_max: usize,
}

impl PolicyService {
    pub fn new(cache: Arc<PolicyCache>, settings: &PolicySettings) -> Self {
        Self {
            cache,
            page_size_default: settings.page_size_default,
            page_size_max: settings.page_size_max,
        }
    }
}

/// The loader's supervisor (its cell and task, to stop at shutdown) and the loader's health.
pub type Loader = (ractor::ActorCell, tokio::task::JoinHandle<()>, Arc<Health>);

/// Starts the policy cache of the configuration's `policy` section: with an empty
/// `database_url` the bundled sample data is loaded at once; otherwise the loader actor is
/// started (supervised) and the cache fills in the background.
pub async fn start(
    settings: &PolicySettings,
    tls: &crate::support::tls::Tls,
) -> Result<(PolicyService, Option<Loader>), String> {
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
        url: settings.database_url.expose().to_owned(),
        tls: tls.clone(),
        cache: Arc::clone(&cache),
        interval: settings.refresh_interval,
        debounce: settings.notify_debounce,
        retry: settings.retry,
        connect_timeout: settings.connect_timeout,
        load_timeout: settings.load_timeout,
    };
    let loader = supervise::start("policy loader", actor::LoaderActor, args)
        .await
        .map_err(|e| format!("cannot start the policy loader: {e}"))?;
    Ok((PolicyService::new(cache, settings), Some(loader)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
