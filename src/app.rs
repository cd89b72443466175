//! The application: built from validated settings (stores opened, actors started, socket
//! bound), then run until a shutdown future completes.

use crate::config::{Settings, ms};
use crate::health::{PolicyReadiness, Readiness, RecordsReadiness, TrackingReadiness};
use crate::http::observe::ROUTES;
use crate::http::server::{self, Limits};
use crate::idempotency::Idempotency;
use crate::metrics::HttpMetrics;
use crate::records::writer::{BlockingSink, Mode, Recorder, WriterConfig};
use crate::records::{RecordSink, embedded as embedded_records, postgres as postgres_records};
use crate::tracking::TrackingService;
use crate::tracking::allocator::{Allocator, BlockSizing};
use crate::tracking::permute::Permutation;
use crate::tracking::permute::PermutationKey;
use crate::tracking::store::embedded::{self, EmbeddedStore, OpenError};
use crate::tracking::store::{self, SequenceStore};
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::net::TcpListener;

/// Concurrent record writers in durable mode (and PostgreSQL connections they use).
const RECORD_WRITERS: usize = 4;

/// The data directory's redb file, opened once for whoever needs it first.
fn embedded_db(
    slot: &mut Option<Arc<redb::Database>>,
    data_dir: &std::path::Path,
) -> Result<Arc<redb::Database>, StartError> {
    if let Some(db) = slot {
        return Ok(Arc::clone(db));
    }
    let db = embedded_records::open(data_dir).map_err(StartError::Database)?;
    *slot = Some(Arc::clone(&db));
    Ok(db)
}

/// State shared by all request handlers.
pub struct AppState {
    pub tracking: TrackingService,
    /// Where records are read (lookups); `None` with `records.mode = "off"`.
    pub record_sink: Option<Arc<dyn RecordSink>>,
    /// Where records are written; `None` with `records.mode = "off"`.
    pub recorder: Option<Arc<Recorder>>,
    pub idempotency: Arc<Idempotency>,
    /// How long a retry waits for the first request with its key to finish.
    pub idempotency_wait: std::time::Duration,
    pub policy: crate::policy::PolicyService,
    /// What `/readyz` checks (tracking numbers; more checks join with `Readiness::with`).
    pub readiness: Readiness,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Pre-registered per-request metric handles.
    pub http_metrics: HttpMetrics,
    /// Set once shutdown has begun: readiness fails and responses close their connection.
    pub draining: AtomicBool,
    pub max_uri_bytes: usize,
    pub retry_after_secs: u64,
}

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error(
        "tracking.permutation_key differs from the key {0} was issued with; changing it would reissue numbers"
    )]
    KeyMismatch(String),
    #[error("tracking.permutation_key is required with a shared sequence store")]
    KeyRequired,
    #[error("cannot open the embedded database: {0}")]
    Database(String),
    #[error("cannot start the allocator actor: {0}")]
    Actor(String),
    #[error("cannot start the policy cache: {0}")]
    Policy(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
    limits: Limits,
    actors: Actors,
}

/// The application's actors; stopped when dropped (an application built but never run must
/// not leave the allocator holding its store).
struct Actors(Vec<(ractor::ActorCell, tokio::task::JoinHandle<()>)>);

impl Drop for Actors {
    fn drop(&mut self) {
        for (cell, _) in &self.0 {
            cell.stop(None);
        }
    }
}

impl Application {
    pub async fn build(settings: &Settings) -> Result<Self, StartError> {
        let metrics = crate::metrics::install();
        // Bound first: a port in use fails the start before anything holds a file or a thread.
        let addr = settings.listen_addr();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let t = &settings.tracking;
        let (store, key): (Arc<dyn SequenceStore>, PermutationKey) = match t.sequence_store.as_str()
        {
            "redis" | "postgres" => {
                let key = settings.permutation_key().ok_or(StartError::KeyRequired)?;
                let store: Arc<dyn SequenceStore> = if t.sequence_store == "redis" {
                    Arc::new(store::redis_from(t, &key))
                } else {
                    Arc::new(store::postgres_from(t, &key))
                };
                (store, key)
            }
            _ => {
                let data_dir = &settings.storage.data_dir;
                let store = EmbeddedStore::open(data_dir)?;
                let kept = embedded::load_or_create_key_with(data_dir, settings.permutation_key())?;
                if let Some(configured) = settings.permutation_key()
                    && configured != kept
                {
                    return Err(StartError::KeyMismatch(data_dir.display().to_string()));
                }
                (Arc::new(store), kept)
            }
        };

        let r = &settings.records;
        // The embedded redb file holds records and idempotency keys when nothing shared does;
        // opened on first need.
        let mut db = None;
        // The embedded record store is written by the recorder's own threads.
        let mut blocking: Option<Arc<dyn BlockingSink>> = None;
        let record_sink: Option<Arc<dyn RecordSink>> = if r.mode == "off" {
            None
        } else if !r.postgres_url.is_empty() {
            Some(Arc::new(postgres_records::PostgresRecords::new(
                &r.postgres_url,
                ms(t.store_timeout_ms),
                RECORD_WRITERS,
            )))
        } else {
            let embedded = Arc::new(
                embedded_records::EmbeddedRecords::open(
                    embedded_db(&mut db, &settings.storage.data_dir)?,
                    Permutation::new(&key),
                    &settings.storage.data_dir.join("records-journal"),
                    ms(r.flush_interval_ms),
                    if r.mode == "durable" {
                        crate::records::journal::DURABLE_SEGMENT_BYTES
                    } else {
                        crate::records::journal::ASYNC_SEGMENT_BYTES
                    },
                )
                .map_err(StartError::Database)?,
            );
            blocking = Some(embedded.clone());
            Some(embedded)
        };
        let idempotency = Arc::new(if t.sequence_store == "redis" {
            Idempotency::redis(
                t.redis_urls(),
                t.redis_cluster,
                &t.redis_key_prefix,
                ms(t.store_timeout_ms),
            )
        } else {
            Idempotency::embedded(embedded_db(&mut db, &settings.storage.data_dir)?)
        });
        let (policy, policy_actor) = crate::policy::start(&settings.policy)
            .await
            .map_err(StartError::Policy)?;

        // Threads and actors last, once nothing after them can fail the start.
        let sizing = BlockSizing {
            min: t.block_min,
            max: t.block_max,
            target: ms(t.block_target_ms),
        };
        let (allocator, cell, handle) = Allocator::start(store, sizing).await.map_err(|e| {
            if let Some((cell, _)) = &policy_actor {
                cell.stop(None);
            }
            StartError::Actor(e.to_string())
        })?;
        let tracking =
            TrackingService::new(allocator, Permutation::new(&key), ms(t.wait_timeout_ms));
        let recorder = record_sink.as_ref().map(|sink| {
            Arc::new(Recorder::start(
                Arc::clone(sink),
                blocking.clone(),
                WriterConfig {
                    mode: if r.mode == "durable" {
                        Mode::Durable
                    } else {
                        Mode::Async
                    },
                    queue_capacity: r.queue_capacity,
                    batch_max: r.batch_max,
                    flush_interval: ms(r.flush_interval_ms),
                    wait_timeout: ms(r.wait_timeout_ms),
                    // Durable on PostgreSQL: overlapping commits (it groups their WAL flushes).
                    // The journal gains nothing from overlapping writes (measured: 1, 2 and 4
                    // writers), and async mode writes once per interval: one writer.
                    writers: if r.mode == "durable" && blocking.is_none() {
                        RECORD_WRITERS
                    } else {
                        1
                    },
                },
            ))
        });

        let s = &settings.server;
        let limits = Limits {
            max_connections: s.max_connections,
            max_header_bytes: s.max_header_bytes,
            header_read_timeout: ms(s.header_read_timeout_ms),
            idle_timeout: ms(s.idle_timeout_ms),
            shutdown_grace: ms(s.shutdown_grace_ms),
            shutdown_linger: ms(s.shutdown_linger_ms.min(s.shutdown_grace_ms)),
        };
        let readiness = Readiness::new()
            .with(TrackingReadiness(tracking.allocator().clone()))
            .with(RecordsReadiness {
                recorder: recorder.clone(),
                idempotency: idempotency.kind(),
            })
            .with(PolicyReadiness(Arc::clone(&policy.cache)));
        let state = Arc::new(AppState {
            tracking,
            record_sink,
            recorder,
            idempotency,
            idempotency_wait: ms(r.wait_timeout_ms),
            policy,
            readiness,
            metrics,
            http_metrics: HttpMetrics::new(ROUTES),
            draining: AtomicBool::new(false),
            max_uri_bytes: s.max_uri_bytes,
            retry_after_secs: t.retry_after_secs,
        });
        Ok(Self {
            listener,
            state,
            limits,
            actors: Actors(
                std::iter::once((cell, handle))
                    .chain(policy_actor)
                    .collect(),
            ),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound socket has an address")
    }

    pub fn state(&self) -> Arc<AppState> {
        Arc::clone(&self.state)
    }

    /// Serves until `shutdown` completes and connections have drained, then stops the actors.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        tracing::info!("listening on http://{}", self.local_addr());
        let upkeep = crate::metrics::spawn_upkeep(self.state.metrics.clone());
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
            Arc::clone(&self.state),
            self.limits,
            signalled,
        )
        .await;
        let deadline = stop_by
            .get()
            .copied()
            .unwrap_or_else(|| tokio::time::Instant::now() + grace);
        if let Some(recorder) = &self.state.recorder {
            recorder.shutdown(deadline).await;
        }
        // Their records are written now (or given up): keys answered 503 while they waited
        // get their 201 (or are released).
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.state
            .idempotency
            .finish_deferred(left.max(std::time::Duration::from_millis(200)))
            .await;
        let mut actors = self.actors;
        for (cell, handle) in std::mem::take(&mut actors.0) {
            cell.stop(None);
            let _ = handle.await;
        }
        upkeep.abort();
        // What is still in hand is never issued: the next start reserves above it.
        let alloc = self.state.tracking.allocator();
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
