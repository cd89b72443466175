//! The application: composed from validated settings — each subsystem built from its own
//! section (sequence store and allocator, records, idempotency keys, policy cache), the
//! sockets bound first and the actors started last — then run until a shutdown future
//! completes. A deployment that serves real data does not start without API keys unless told
//! to.

use crate::auth::Keys;
use crate::config::{SequenceStoreKind, Settings};
use crate::health::{Liveness, PolicyReadiness, Readiness, RecordsReadiness, TrackingReadiness};
use crate::http::route::TEMPLATES;
use crate::http::server::{self, Limits};
use crate::http::state::AppState;
use crate::idempotency::Idempotency;
use crate::issue::Issuer;
use crate::metrics::HttpMetrics;
use crate::records::embedded as embedded_records;
use crate::support::tls::Tls;
use crate::tracking::permute::Permutation;
use crate::tracking::{self, TrackingService};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::net::TcpListener;

/// How often expired idempotency keys are deleted.
const KEY_PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tracking(#[from] tracking::StartError),
    #[error("cannot open the embedded database: {0}")]
    Database(String),
    #[error("cannot start the policy cache: {0}")]
    Policy(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "trackd would serve real data ({0}) to anyone who can reach it: configure API keys in \
         auth.keys (`trackd key new` makes one), or set auth.open = true if this deployment is \
         meant to be open"
    )]
    Open(String),
    #[error("{0}")]
    Config(String),
}

/// What makes a deployment serve real data (the settings that say so), as opposed to the
/// bundled sample and the embedded store.
fn real_data(s: &Settings) -> Vec<&'static str> {
    let mut real = Vec::new();
    if !s.policy.database_url.is_empty() {
        real.push("policy.database_url is set");
    }
    if s.tracking.sequence_store != SequenceStoreKind::Embedded {
        real.push("a shared tracking.sequence_store");
    }
    if !s.records.postgres_url.is_empty() {
        real.push("records.postgres_url is set");
    }
    real
}

/// Refuses to serve real data without keys (unless `auth.open`), and says once how it serves.
fn check_open(settings: &Settings, keys: &Keys) -> Result<(), StartError> {
    let real = real_data(settings);
    if !keys.is_open() {
        return Ok(());
    }
    if settings.auth.open {
        tracing::warn!(
            "auth.open = true: every route is open to anyone who can reach {}",
            settings.server.listen
        );
        return Ok(());
    }
    if !real.is_empty() {
        return Err(StartError::Open(real.join(", ")));
    }
    tracing::info!(
        "no API keys configured: every route is open, serving the bundled sample data and the \
         embedded store (configure auth.keys before serving real data)"
    );
    Ok(())
}

pub struct Application {
    listener: TcpListener,
    admin: Option<TcpListener>,
    state: Arc<AppState>,
    limits: Limits,
    actors: Actors,
}

/// The application's actors (their supervisors); stopped when dropped (an application built
/// but never run must not leave the allocator holding its store).
struct Actors(Vec<(ractor::ActorCell, tokio::task::JoinHandle<()>)>);

impl Drop for Actors {
    fn drop(&mut self) {
        for (cell, _) in &self.0 {
            cell.stop(None);
        }
    }
}

/// The data directory's redb file, opened once for whoever needs it first.
struct EmbeddedDb {
    dir: std::path::PathBuf,
    db: Option<Arc<redb::Database>>,
}

impl EmbeddedDb {
    fn get(&mut self) -> Result<Arc<redb::Database>, String> {
        if let Some(db) = &self.db {
            return Ok(Arc::clone(db));
        }
        let db = embedded_records::open(&self.dir)?;
        self.db = Some(Arc::clone(&db));
        Ok(db)
    }
}

impl Application {
    pub async fn build(settings: &Settings) -> Result<Self, StartError> {
        let metrics = crate::metrics::install();
        let api_keys = Keys::from_settings(&settings.auth).map_err(StartError::Config)?;
        check_open(settings, &api_keys)?;
        let tls = Tls::from_settings(&settings.tls).map_err(StartError::Config)?;
        // Bound first: a port in use fails the start before anything holds a file or a thread.
        let bind = async |addr: SocketAddr| {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let listener = bind(settings.server.listen).await?;
        let admin = match settings.server.admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let t = &settings.tracking;
        let data_dir = &settings.storage.data_dir;
        let floors_url = Some(settings.records.postgres_url.expose()).filter(|u| !u.is_empty());
        let (store, key) = tracking::open_store(t, data_dir, floors_url, &tls)?;
        let mut db = EmbeddedDb {
            dir: data_dir.clone(),
            db: None,
        };
        let records = crate::records::start(
            &settings.records,
            t.store_timeout,
            Permutation::new(&key),
            data_dir,
            || db.get(),
            &tls,
        )
        .map_err(StartError::Database)?;
        let keys =
            Arc::new(Idempotency::for_store(t, || db.get(), &tls).map_err(StartError::Database)?);
        let (policy, loader) = crate::policy::start(&settings.policy, &tls)
            .await
            .map_err(StartError::Policy)?;
        let mut actors = Actors(Vec::new());
        let mut supervised = Vec::new();
        if let Some((cell, handle, health)) = loader {
            actors.0.push((cell, handle));
            supervised.push(health);
        }

        // Actors last, once nothing after them can fail the start.
        let (numbers, cell, handle) = TrackingService::start(t, store, &key).await?;
        actors.0.push((cell, handle));
        supervised.push(Arc::clone(numbers.allocator().health()));

        let (sink, recorder) = match records {
            Some(r) => (Some(r.sink), Some(r.recorder)),
            None => (None, None),
        };
        let readiness = Readiness::new()
            .with(TrackingReadiness(numbers.allocator().clone()))
            .with(RecordsReadiness {
                recorder: recorder.clone(),
                idempotency: keys.kind(),
            })
            .with(PolicyReadiness(Arc::clone(&policy.cache)));
        let state = Arc::new(AppState {
            keys: api_keys,
            issuer: Arc::new(Issuer::new(
                numbers,
                recorder,
                keys,
                settings.records.wait_timeout,
            )),
            records: sink,
            policy,
            readiness,
            liveness: Liveness::new(supervised),
            metrics,
            http_metrics: HttpMetrics::new(TEMPLATES),
            draining: AtomicBool::new(false),
            max_uri_bytes: settings.server.max_uri_bytes,
            body_read_timeout: settings.server.body_read_timeout,
            retry_after_secs: t.retry_after_secs,
        });
        Ok(Self {
            listener,
            admin,
            state,
            limits: Limits::from(&settings.server),
            actors,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound socket has an address")
    }

    /// The operations listener's address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    pub fn state(&self) -> Arc<AppState> {
        Arc::clone(&self.state)
    }

    /// Serves until `shutdown` completes and connections have drained, then stops the actors.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        tracing::info!("listening on http://{}", self.local_addr());
        if let Some(admin) = self.admin_addr() {
            tracing::info!("operations on http://{admin}");
        }
        let upkeep = crate::metrics::spawn_upkeep(self.state.metrics.clone());
        let purge = self.state.issuer.keys().spawn_purge(KEY_PURGE_EVERY);
        // One deadline from the signal on, for the drain and the records behind it.
        let grace = self.limits.shutdown_grace;
        let stop_by = Arc::new(std::sync::OnceLock::new());
        let signalled = {
            let stop_by = Arc::clone(&stop_by);
            async move {
                shutdown.await;
                let _ = stop_by.set(tokio::time::Instant::now() + grace);
            }
        };
        server::serve(
            self.listener,
            self.admin,
            Arc::clone(&self.state),
            self.limits,
            signalled,
        )
        .await;
        let deadline = stop_by
            .get()
            .copied()
            .unwrap_or_else(|| tokio::time::Instant::now() + grace);
        let issuer = &self.state.issuer;
        if let Some(recorder) = issuer.recorder() {
            recorder.shutdown(deadline).await;
        }
        // Their records are written now (or given up): keys answered 503 while they waited
        // get their 201 (or are released).
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        issuer
            .keys()
            .finish_deferred(left.max(Duration::from_millis(200)))
            .await;
        let mut actors = self.actors;
        for (cell, handle) in std::mem::take(&mut actors.0) {
            cell.stop(None);
            let _ = handle.await;
        }
        upkeep.abort();
        purge.abort();
        // What is still in hand is never issued: the next start reserves above it.
        let alloc = issuer.numbers().allocator();
        let skipped = alloc.buffered();
        crate::metrics::numbers_skipped(skipped);
        tracing::info!(
            issued = alloc.issued(),
            skipped,
            "reserved numbers left unissued are skipped, never reused"
        );
        tracing::info!("stopped");
    }
}
