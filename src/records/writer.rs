//! The record writer: a bounded queue of batches in front of the tasks that write them to the
//! record store. A request encodes its records straight into the open batch (one short lock,
//! no allocation of its own); `async` mode answers at once, `durable` mode once its batch is
//! committed (group commit: every request that joins a batch while the previous one is
//! written shares the next commit). A full queue slows issuance down (requests wait for room,
//! then 503); records are never dropped, and a failed batch is retried with backoff until it
//! is written.

use super::{Batch, RecordRef, RecordSink, SinkError};
use crate::config::{RecordsMode, RecordsSettings};
use crate::support::backoff::Backoff;
use crate::tracking::Issued;
use crate::tracking::order::Order;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

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

impl WriterConfig {
    /// The writer of the configuration's `records` section (`None` with records off), with
    /// `writers` concurrent writers in durable mode.
    pub fn from_settings(r: &RecordsSettings, writers: usize) -> Option<Self> {
        let mode = match r.mode {
            RecordsMode::Off => return None,
            RecordsMode::Async => Mode::Async,
            RecordsMode::Durable => Mode::Durable,
        };
        Some(Self {
            mode,
            queue_capacity: r.queue_capacity,
            batch_max: r.batch_max,
            flush_interval: r.flush_interval,
            wait_timeout: r.wait_timeout,
            // Async mode writes once per interval: one writer.
            writers: if mode == Mode::Durable { writers } else { 1 },
        })
    }
}

/// Why a record could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the record queue stayed full for {0:?}: the record store is behind or down")]
    QueueFull(Duration),
    /// Queued but not yet written: it will be (records are never dropped); its [`Commit`]
    /// tells when.
    #[error("the record was not committed within {0:?}: {1}")]
    NotCommitted(Duration, String),
    #[error("trackd is shutting down")]
    Closed,
}

/// Counters for `/readyz` and metrics.
#[derive(Default)]
pub struct WriterStats {
    pub written: AtomicU64,
    pub batches: AtomicU64,
    pub failures: AtomicU64,
    pub queued: AtomicU64,
}

/// Batches waiting for a writer, oldest first.
#[derive(Default)]
struct Queue {
    batches: VecDeque<Pending>,
    records: usize,
    closed: bool,
}

/// A batch and the signal its durable requests wait on.
struct Pending {
    batch: Batch,
    done: Arc<Done>,
}

/// A batch dropped unwritten (given up at shutdown, or its writer gone) tells its waiters so:
/// nobody waits forever for a commit that cannot come.
impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done.written.load(Ordering::Acquire) {
            self.done.give_up();
        }
    }
}

/// What [`Recorder::try_push`] did with a request's records.
enum Pushed {
    /// No room: the queue holds `queue_capacity` records.
    Full,
    /// Queued; in durable mode, with the signal of the batch's commit.
    Queued(Option<Arc<Done>>),
}

/// Set once a batch is written (or, at shutdown, given up); wakes only the requests in that
/// batch (a commit wakes the ~10 requests it concerns, not every request waiting for a later
/// one).
#[derive(Default)]
struct Done {
    written: AtomicBool,
    given_up: AtomicBool,
    notify: Notify,
}

impl Done {
    fn set(&self) {
        self.written.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn give_up(&self) {
        self.given_up.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn settled(&self) -> bool {
        self.written.load(Ordering::Acquire) || self.given_up.load(Ordering::Acquire)
    }

    /// Waits until the batch is written or given up, or `deadline`; whether it was written.
    async fn wait(&self, deadline: Option<Instant>) -> bool {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before the check: a `set` between the two still wakes it.
        notified.as_mut().enable();
        if !self.settled() {
            match deadline {
                Some(d) => drop(tokio::time::timeout_at(d, notified).await),
                None => notified.await,
            }
        }
        self.written.load(Ordering::Acquire)
    }
}

/// The commit of a queued batch (durable mode): the request waits for it, and so does whoever
/// answers for those records after the request stopped waiting (an idempotency key's
/// completion).
#[derive(Clone)]
pub struct Commit {
    done: Arc<Done>,
    /// Until when the request waits.
    deadline: Instant,
}

impl Commit {
    /// Returns once the batch is written (true), or given up at shutdown (false): a failing
    /// store is otherwise retried until the batch is written.
    pub async fn wait(&self) -> bool {
        self.done.wait(None).await
    }
}

struct Shared {
    cfg: WriterConfig,
    /// The record store's name, for metrics.
    store: &'static str,
    queue: Mutex<Queue>,
    /// Wakes a writer task: a batch was opened, or shutdown began.
    work: Notify,
    /// Wakes requests waiting for room in the queue.
    room: Notify,
    stats: WriterStats,
    last_error: Mutex<Option<String>>,
    /// Set when shutdown's limit passed: writers stop retrying failed writes.
    give_up: AtomicBool,
}

pub struct Recorder {
    shared: Arc<Shared>,
    sink: Arc<dyn RecordSink>,
    writers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Recorder {
    /// Starts the writer tasks writing to `sink`.
    pub fn start(sink: Arc<dyn RecordSink>, cfg: WriterConfig) -> Self {
        let shared = Arc::new(Shared {
            cfg,
            store: sink.kind(),
            queue: Mutex::default(),
            work: Notify::new(),
            room: Notify::new(),
            stats: WriterStats::default(),
            last_error: Mutex::new(None),
            give_up: AtomicBool::new(false),
        });
        let writers = (0..shared.cfg.writers.max(1))
            .map(|_| tokio::spawn(write_loop(Arc::clone(&shared), Arc::clone(&sink))))
            .collect();
        Self {
            shared,
            sink,
            writers: Mutex::new(writers),
        }
    }

    pub fn mode(&self) -> Mode {
        self.shared.cfg.mode
    }

    pub fn sink_kind(&self) -> &'static str {
        self.sink.kind()
    }

    pub fn sink_report(&self) -> serde_json::Value {
        self.sink.report()
    }

    pub fn stats(&self) -> &WriterStats {
        &self.shared.stats
    }

    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Queues the records (waiting for room in the queue, up to `wait_timeout`); in durable
    /// mode, returns the commit to wait for with [`Recorder::committed`].
    pub async fn enqueue(
        &self,
        order: &Order,
        issued: &[Issued],
    ) -> Result<Option<Commit>, RecordError> {
        let sh = &*self.shared;
        let cfg = &sh.cfg;
        let mut deadline = None;
        let done = loop {
            if let Pushed::Queued(done) = self.try_push(order, issued)? {
                break done;
            }
            // Full: wait for room (registered before the second look, so that room made
            // between the two still wakes this request).
            let room = sh.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if let Pushed::Queued(done) = self.try_push(order, issued)? {
                break done;
            }
            let until = *deadline.get_or_insert_with(|| Instant::now() + cfg.wait_timeout);
            if tokio::time::timeout_at(until, room).await.is_err() {
                return Err(RecordError::QueueFull(cfg.wait_timeout));
            }
        };
        Ok(done.map(|done| Commit {
            done,
            deadline: deadline.unwrap_or_else(|| Instant::now() + cfg.wait_timeout),
        }))
    }

    /// Queues the records if the queue has room now (false: full); never waits. For async
    /// mode: a durable request needs its commit ([`Recorder::enqueue`]).
    pub fn try_enqueue(&self, order: &Order, issued: &[Issued]) -> Result<bool, RecordError> {
        Ok(matches!(self.try_push(order, issued)?, Pushed::Queued(_)))
    }

    /// Waits for a commit until the request's deadline (one `wait_timeout` from its first
    /// wait); `NotCommitted` after it: the records stay queued and are written later.
    pub async fn committed(&self, commit: Commit) -> Result<(), RecordError> {
        if commit.done.wait(Some(commit.deadline)).await {
            return Ok(());
        }
        Err(RecordError::NotCommitted(
            self.shared.cfg.wait_timeout,
            self.last_error()
                .unwrap_or_else(|| "the writer is behind".into()),
        ))
    }

    /// Appends the records to the open batch if the queue has room.
    fn try_push(&self, order: &Order, issued: &[Issued]) -> Result<Pushed, RecordError> {
        let sh = &*self.shared;
        let cfg = &sh.cfg;
        let mut q = sh.queue.lock().map_err(|_| RecordError::Closed)?;
        if q.closed {
            return Err(RecordError::Closed);
        }
        // A request larger than the queue still goes in once the queue is empty.
        if q.records != 0 && q.records + issued.len() > cfg.queue_capacity {
            return Ok(Pushed::Full);
        }
        let opened = q.push(order, issued, cfg.batch_max);
        let done = (cfg.mode == Mode::Durable)
            .then(|| Arc::clone(&q.batches.back().expect("just pushed").done));
        // Counted before the lock is released: a writer can take the batch (and count it
        // written) only after this, so the gauge never goes below zero.
        sh.stats
            .queued
            .fetch_add(issued.len() as u64, Ordering::Relaxed);
        drop(q);
        if opened {
            sh.work.notify_one();
        }
        Ok(Pushed::Queued(done))
    }

    /// Stops taking records, writes everything queued, waits for the writers, and closes the
    /// store. A store that keeps failing is retried until `deadline`; then what is still
    /// unwritten is given up (its commits answer so), and logged as such.
    pub async fn shutdown(&self, deadline: Instant) {
        self.shared.close();
        let writers = self
            .writers
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        if writers.is_empty() {
            return; // already shut down
        }
        let joined = async {
            for w in writers {
                drop(w.await);
            }
        };
        tokio::pin!(joined);
        let mut stopped = true;
        if tokio::time::timeout_at(deadline, joined.as_mut())
            .await
            .is_err()
        {
            self.shared.give_up.store(true, Ordering::Release);
            // A writer between attempts sleeps at most a second, then stops; one inside an
            // attempt is bounded by the store's own timeouts (not waited for).
            stopped = tokio::time::timeout(Duration::from_secs(1), joined)
                .await
                .is_ok();
        }
        // Whatever is still queued now will not be written (given up, or its writers are
        // gone): dropping it tells its waiters.
        if let Ok(mut q) = self.shared.queue.lock() {
            q.batches.clear();
        }
        let lost = self.shared.stats.queued.load(Ordering::Relaxed);
        if lost > 0 {
            tracing::error!(
                records = lost,
                error = self.last_error().unwrap_or_default(),
                "records not written at shutdown: the record store refused them until the \
                 shutdown deadline; their numbers are never reissued"
            );
        }
        if !stopped {
            return; // a writer is still inside a write: leave the store open to it
        }
        if let Err(e) = self.sink.close().await {
            tracing::warn!(error = %e, "closing the record store failed");
        }
    }
}

/// A recorder dropped without [`Recorder::shutdown`] (an application that failed to start, or
/// was never run) still lets its writers write what is queued and end, releasing the store.
impl Drop for Recorder {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl Queue {
    /// Appends the records to the open batch (or opens one); returns whether it was opened.
    fn push(&mut self, order: &Order, issued: &[Issued], batch_max: usize) -> bool {
        let fits = matches!(self.batches.back(),
            Some(p) if p.batch.len() + issued.len() <= batch_max.max(1));
        if !fits {
            self.batches.push_back(Pending {
                batch: Batch::default(),
                done: Arc::default(),
            });
        }
        let batch = &mut self.batches.back_mut().expect("a batch is open").batch;
        for i in issued {
            batch.push(&RecordRef::new(order, i));
        }
        self.records += issued.len();
        !fits
    }

    /// Takes the oldest batch (durable), or every batch (`all`: async, after the interval).
    fn take(&mut self, all: bool) -> Vec<Pending> {
        let n = if all { self.batches.len() } else { 1 };
        let taken: Vec<_> = self.batches.drain(..n.min(self.batches.len())).collect();
        self.records -= taken.iter().map(|p| p.batch.len()).sum::<usize>();
        taken
    }
}

/// A writer task: waits for a batch; durable mode takes it at once (requests meanwhile fill
/// the next one), async mode lets records gather for the flush interval and then takes every
/// batch (one write per interval, not one per request); writes, and publishes the commit.
/// Returns once shutdown began and the queue is empty.
async fn write_loop(sh: Arc<Shared>, sink: Arc<dyn RecordSink>) {
    loop {
        let work = sh.work.notified();
        tokio::pin!(work);
        work.as_mut().enable();
        let (has_work, closed) = match sh.queue.lock() {
            Ok(q) => (!q.batches.is_empty(), q.closed),
            Err(_) => return,
        };
        if !has_work {
            if closed {
                return;
            }
            work.await;
            continue;
        }
        let gather = sh.cfg.mode == Mode::Async && !closed;
        if gather {
            tokio::time::sleep(sh.cfg.flush_interval).await;
        }
        let taken = match sh.queue.lock() {
            Ok(mut q) => q.take(gather),
            Err(_) => return,
        };
        sh.room.notify_waiters();
        // On giving up, returning drops this batch and the rest of `taken`: given up too.
        for mut p in taken {
            let batch = Arc::new(std::mem::take(&mut p.batch));
            let mut failures = 0;
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
            loop {
                let started = std::time::Instant::now();
                let result = sink.write(Arc::clone(&batch), failures > 0).await;
                crate::metrics::record_batch_write(sh.store, started.elapsed());
                let Err(e) = result else { break };
                failures += 1;
                if !sh.failed(&e, &batch) {
                    return;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            sh.written(&batch, failures);
            p.done.set();
        }
    }
}

impl Shared {
    /// Stops taking records and wakes everyone waiting: writers (to write what is queued and
    /// end) and requests waiting for room (to be told).
    fn close(&self) {
        if let Ok(mut q) = self.queue.lock() {
            q.closed = true;
        }
        self.work.notify_waiters();
        self.room.notify_waiters();
    }

    /// Notes a failed write; returns whether to retry it (false once shutdown gave up).
    fn failed(&self, e: &SinkError, batch: &Batch) -> bool {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %e, records = batch.len(), "writing records failed; retrying");
        if let Ok(mut g) = self.last_error.lock() {
            *g = Some(e.to_string());
        }
        !self.give_up.load(Ordering::Acquire)
    }

    /// Counts a written batch.
    fn written(&self, batch: &Batch, failures: u32) {
        if failures > 0
            && let Ok(mut g) = self.last_error.lock()
        {
            *g = None;
        }
        let n = batch.len() as u64;
        self.stats.written.fetch_add(n, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.queued.fetch_sub(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::SinkFuture;
    use crate::support::form;
    use crate::tracking::number::TrackingNumber;
    use crate::tracking::order::OrderFields;

    /// A record store that is down: every write fails.
    struct Down;

    impl RecordSink for Down {
        fn write(&self, _: Arc<Batch>, _: bool) -> SinkFuture<'_, ()> {
            Box::pin(async { Err(SinkError::Unavailable("down".into())) })
        }

        fn lookup<'a>(&'a self, _: &'a TrackingNumber) -> SinkFuture<'a, crate::records::Lookup> {
            Box::pin(async { Err(SinkError::Unavailable("down".into())) })
        }

        fn void<'a>(
            &'a self,
            _: &'a TrackingNumber,
            _: crate::records::Void,
        ) -> SinkFuture<'a, crate::records::Voiding> {
            Box::pin(async { Err(SinkError::Unavailable("down".into())) })
        }

        fn expire(&self, _: time::OffsetDateTime) -> SinkFuture<'_, u64> {
            Box::pin(async { Err(SinkError::Unavailable("down".into())) })
        }

        fn kind(&self) -> &'static str {
            "down"
        }
    }

    #[tokio::test]
    async fn shutdown_gives_up_on_a_store_that_stays_down_and_tells_the_waiters() {
        let order = Order::try_from(OrderFields::from_pairs(form::pairs(Some(
            "origin_country_id=MY&destination_country_id=ID&weight=1.5\
             &customer_id=de619854-b59b-425e-9db4-943979e1bd49\
             &customer_name=A&customer_slug=a",
        ))))
        .unwrap();
        let issued = |seq| Issued {
            seq,
            number: TrackingNumber::new(order.origin, order.destination, seq),
            issued_at: time::OffsetDateTime::now_utc(),
        };
        let recorder = Recorder::start(
            Arc::new(Down),
            WriterConfig {
                mode: Mode::Durable,
                queue_capacity: 100,
                batch_max: 1,
                flush_interval: Duration::from_millis(1),
                wait_timeout: Duration::from_millis(20),
                writers: 1,
            },
        );
        // One batch in the writer's hands (retried), two more queued behind it.
        let mut commits = Vec::new();
        for seq in 1..=3 {
            let commit = recorder.enqueue(&order, &[issued(seq)]).await.unwrap();
            commits.push(commit.expect("durable mode: a commit to wait for"));
        }
        let late = recorder.committed(commits[0].clone()).await;
        assert!(
            matches!(late, Err(RecordError::NotCommitted(..))),
            "{late:?}"
        );
        let t = Instant::now();
        recorder
            .shutdown(Instant::now() + Duration::from_millis(200))
            .await;
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // Every waiter learns that its batch was given up, none waits forever.
        for c in &commits {
            let written = tokio::time::timeout(Duration::from_secs(1), c.wait()).await;
            assert_eq!(written.ok(), Some(false));
        }
        assert_eq!(recorder.stats().queued.load(Ordering::Relaxed), 3);
        assert_eq!(recorder.stats().written.load(Ordering::Relaxed), 0);
    }
}
