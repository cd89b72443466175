//! The record writer: a bounded queue in front of one task that writes batches to the record
//! store. `async` mode answers once a record is queued; `durable` mode answers once its batch
//! is committed (group commit: every request queued during a write shares the next commit).
//! A full queue slows issuance down (requests wait for room, then 503); records are never
//! dropped, and a failed batch is retried with backoff until it is written.

use super::{Record, RecordSink};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Async,
    Durable,
}

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub mode: Mode,
    pub queue_capacity: usize,
    pub batch_max: usize,
    /// `async` mode: how long the writer gathers records before a write (the most a crash can
    /// lose).
    pub flush_interval: Duration,
    /// How long a request waits for room in the queue (and, in durable mode, for its commit).
    pub wait_timeout: Duration,
    /// Writer tasks taking batches from the queue concurrently (durable mode: overlapping
    /// commits; async mode needs one).
    pub writers: usize,
}

/// Why a record could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the record queue stayed full for {0:?}: the record store is behind or down")]
    QueueFull(Duration),
    #[error("the record was not committed within {0:?}: {1}")]
    NotCommitted(Duration, String),
    #[error("trackd is shutting down")]
    Closed,
}

struct Job {
    records: Vec<Record>,
    ack: Option<oneshot::Sender<()>>,
}

/// Counters for `/readyz` and metrics.
#[derive(Default)]
pub struct WriterStats {
    pub written: AtomicU64,
    pub batches: AtomicU64,
    pub failures: AtomicU64,
    pub queued: AtomicU64,
}

pub struct Recorder {
    tx: mpsc::Sender<Job>,
    cfg: WriterConfig,
    sink_kind: &'static str,
    stats: Arc<WriterStats>,
    last_error: Arc<std::sync::Mutex<Option<String>>>,
    stop: watch::Sender<bool>,
    handles: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Recorder {
    pub fn start(sink: Arc<dyn RecordSink>, cfg: WriterConfig) -> Self {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(WriterStats::default());
        let last_error = Arc::new(std::sync::Mutex::new(None));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let handles: Vec<_> = (0..cfg.writers.max(1))
            .map(|_| {
                let task = WriterTask {
                    sink: Arc::clone(&sink),
                    cfg: cfg.clone(),
                    stats: Arc::clone(&stats),
                    last_error: Arc::clone(&last_error),
                };
                tokio::spawn(task.run(Arc::clone(&rx), stop_rx.clone()))
            })
            .collect();
        Self {
            tx,
            cfg,
            sink_kind: sink.kind(),
            stats,
            last_error,
            stop,
            handles: std::sync::Mutex::new(handles),
        }
    }

    pub fn mode(&self) -> Mode {
        self.cfg.mode
    }

    pub fn sink_kind(&self) -> &'static str {
        self.sink_kind
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Queues records; in durable mode, returns once they are committed.
    pub async fn record(&self, records: Vec<Record>) -> Result<(), RecordError> {
        let n = records.len() as u64;
        let (ack, done) = match self.cfg.mode {
            Mode::Async => (None, None),
            Mode::Durable => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
        };
        let job = Job { records, ack };
        self.stats.queued.fetch_add(n, Ordering::Relaxed);
        let sent = match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(job)) => {
                match tokio::time::timeout(self.cfg.wait_timeout, self.tx.send(job)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(RecordError::Closed),
                    Err(_) => Err(RecordError::QueueFull(self.cfg.wait_timeout)),
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(RecordError::Closed),
        };
        if let Err(e) = sent {
            self.stats.queued.fetch_sub(n, Ordering::Relaxed);
            return Err(e);
        }
        if let Some(done) = done {
            match tokio::time::timeout(self.cfg.wait_timeout, done).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(RecordError::Closed),
                Err(_) => {
                    return Err(RecordError::NotCommitted(
                        self.cfg.wait_timeout,
                        self.last_error()
                            .unwrap_or_else(|| "the writer is behind".into()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Stops taking records, writes everything queued, and waits for the writer.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let handles = self
            .handles
            .lock()
            .map(|mut h| std::mem::take(&mut *h))
            .unwrap_or_default();
        for h in handles {
            let _ = h.await;
        }
    }
}

struct WriterTask {
    sink: Arc<dyn RecordSink>,
    cfg: WriterConfig,
    stats: Arc<WriterStats>,
    last_error: Arc<std::sync::Mutex<Option<String>>>,
}

impl WriterTask {
    async fn run(
        self,
        rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut jobs: Vec<Job> = Vec::new();
        loop {
            {
                // One writer gathers a batch at a time; the others meanwhile write theirs.
                let mut rx = rx.lock().await;
                if *stop.borrow() {
                    rx.close();
                    // Drain what was queued before the close.
                    while rx.recv_many(&mut jobs, self.cfg.batch_max).await > 0 {
                        self.write(&mut jobs).await;
                    }
                    return;
                }
                let n = tokio::select! {
                    n = rx.recv_many(&mut jobs, self.cfg.batch_max) => n,
                    _ = stop.changed() => continue,
                };
                if n == 0 {
                    return;
                }
                if self.cfg.mode == Mode::Async {
                    // Let records gather for the flush interval, then take what came: one
                    // wake-up per interval, not one per request.
                    tokio::select! {
                        _ = tokio::time::sleep(self.cfg.flush_interval) => {}
                        _ = stop.changed() => {}
                    }
                    while records_in(&jobs) < self.cfg.batch_max {
                        match rx.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                }
            }
            self.write(&mut jobs).await;
        }
    }

    /// Writes the jobs' records (retrying until written), then acknowledges them.
    async fn write(&self, jobs: &mut Vec<Job>) {
        let records: Arc<Vec<Record>> = Arc::new(
            jobs.iter_mut()
                .flat_map(|j| std::mem::take(&mut j.records))
                .collect(),
        );
        let mut backoff = Duration::from_millis(50);
        let mut retry = false;
        loop {
            match self.sink.write(Arc::clone(&records), retry).await {
                Ok(()) => break,
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, records = records.len(), "writing records failed; retrying");
                    if let Ok(mut g) = self.last_error.lock() {
                        *g = Some(e.to_string());
                    }
                    retry = true;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        if retry && let Ok(mut g) = self.last_error.lock() {
            *g = None;
        }
        self.stats
            .written
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .queued
            .fetch_sub(records.len() as u64, Ordering::Relaxed);
        for job in jobs.drain(..) {
            if let Some(ack) = job.ack {
                let _ = ack.send(());
            }
        }
    }
}

fn records_in(jobs: &[Job]) -> usize {
    jobs.iter().map(|j| j.records.len()).sum()
}
