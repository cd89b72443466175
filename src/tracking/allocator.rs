//! The allocator: a ractor actor that reserves blocks from the sequence store ahead of need,
//! and a lock-free handle through which requests take numbers from the current block. The
//! actor runs under a [supervisor](crate::supervise): if it fails it is restarted with the
//! same shared state, and if it keeps failing readiness says so.
//!
//! Hot path: one `ArcSwap` load and one `fetch_add` per number, no actor round trip
//! (measured in `bench/number.rs`: an actor `call` costs several times more). The actor keeps a
//! *standby* block ready; when the current block runs out, the request that notices promotes
//! the standby under a small mutex and asks the actor (a `cast`) to reserve the next one, so in
//! steady state no request waits for the store.

use super::store::{Block, SequenceStore, StoreError};
use crate::metrics;
use crate::supervise::{self, Health};
use crate::support::backoff::Backoff;
use arc_swap::ArcSwap;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Bounds of the adaptive block size.
#[derive(Debug, Clone)]
pub struct BlockSizing {
    pub min: u64,
    pub max: u64,
    /// A block should last about this long at the observed issue rate.
    pub target: Duration,
}

/// Adapts the block size to the issue rate (an exponentially weighted moving average).
#[derive(Debug)]
pub struct BlockSizer {
    cfg: BlockSizing,
    last: Option<(Instant, u64)>,
    rate: f64,
}

impl BlockSizer {
    pub fn new(cfg: BlockSizing) -> Self {
        Self {
            cfg,
            last: None,
            rate: 0.0,
        }
    }

    /// Next block size, given the total count of numbers consumed so far.
    pub fn next(&mut self, now: Instant, consumed_total: u64) -> u64 {
        if let Some((t, consumed)) = self.last {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            if dt >= 0.001 {
                let rate = consumed_total.saturating_sub(consumed) as f64 / dt;
                self.rate = if self.rate == 0.0 {
                    rate
                } else {
                    0.5 * self.rate + 0.5 * rate
                };
                self.last = Some((now, consumed_total));
            }
        } else {
            self.last = Some((now, consumed_total));
        }
        let want = (self.rate * self.cfg.target.as_secs_f64()).ceil() as u64;
        want.clamp(self.cfg.min, self.cfg.max)
    }
}

struct Active {
    block: Block,
    next: AtomicU64,
    /// Index at which a refill is requested if no standby block is ready yet.
    low_water: u64,
}

impl Active {
    fn new(block: Block) -> Self {
        Self {
            block,
            next: AtomicU64::new(0),
            low_water: block.count / 2,
        }
    }

    fn remaining(&self) -> u64 {
        self.block
            .count
            .saturating_sub(self.next.load(Ordering::Relaxed))
    }
}

struct Shared {
    current: ArcSwap<Active>,
    standby: Mutex<Option<Block>>,
    refill_requested: AtomicBool,
    notify: Notify,
    /// The running actor (replaced when the supervisor restarts it).
    actor: Mutex<Option<ActorRef<Msg>>>,
    store_healthy: AtomicBool,
    store: Arc<dyn SequenceStore>,
    /// Numbers handed to the pool by the actor since start (for the rate estimate).
    reserved_total: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// No number could be taken within the wait timeout.
#[derive(Debug, thiserror::Error)]
#[error("no tracking numbers available: {reason}")]
pub struct Unavailable {
    pub reason: String,
}

/// A cheap, cloneable handle for request handlers.
#[derive(Clone)]
pub struct Allocator {
    shared: Arc<Shared>,
    /// The supervised actor's health (restarts, or given up).
    health: Arc<Health>,
}

/// Consecutive numbers of one block: `first`, `first + stride`, … (`len` of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub first: u64,
    pub stride: u64,
    pub len: u64,
}

impl SeqRange {
    /// The `i`-th sequence number (`i < len`).
    pub fn seq(&self, i: u64) -> u64 {
        self.first + i * self.stride
    }

    /// Whether `next` continues this range.
    pub fn extends_to(&self, next: &SeqRange) -> bool {
        self.stride == next.stride && self.seq(self.len) == next.first
    }
}

/// Messages of the allocator actor.
pub enum Msg {
    /// Make sure a current and a standby block exist.
    Refill,
}

impl Allocator {
    /// Starts the allocator actor over `store`, under its supervisor; the first blocks are
    /// reserved at once. Returns the supervisor's cell and task: stopping it stops the actor.
    pub async fn start(
        store: Arc<dyn SequenceStore>,
        sizing: BlockSizing,
    ) -> Result<(Self, ractor::ActorCell, tokio::task::JoinHandle<()>), ractor::SpawnErr> {
        let empty = Block {
            first: 0,
            count: 0,
            stride: 1,
        };
        let shared = Arc::new(Shared {
            current: ArcSwap::from_pointee(Active::new(empty)),
            standby: Mutex::new(None),
            refill_requested: AtomicBool::new(false),
            notify: Notify::new(),
            actor: Mutex::new(None),
            // Not known to answer until its first block: not ready before a number is in hand.
            store_healthy: AtomicBool::new(false),
            store: Arc::clone(&store),
            reserved_total: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        let args = ActorArgs {
            shared: Arc::clone(&shared),
            store,
            sizing,
        };
        let (cell, handle, health) = supervise::start("allocator", AllocatorActor, args).await?;
        Ok((Self { shared, health }, cell, handle))
    }

    /// Takes a number without waiting, if the current or standby block has one.
    #[inline]
    pub fn try_take(&self) -> Option<u64> {
        loop {
            let cur = self.shared.current.load();
            let i = cur.next.fetch_add(1, Ordering::Relaxed);
            if i < cur.block.count {
                if i == cur.low_water {
                    self.request_refill();
                }
                return Some(cur.block.seq(i));
            }
            if !self.promote(&cur) {
                return None;
            }
        }
    }

    /// Takes up to `max` consecutive numbers of the current block (fewer where it ends) in one
    /// step, without waiting: a label run's numbers come as a few ranges, not one by one.
    pub fn try_take_range(&self, max: u64) -> Option<SeqRange> {
        let max = max.max(1);
        loop {
            let cur = self.shared.current.load();
            let i = cur.next.fetch_add(max, Ordering::Relaxed);
            if i < cur.block.count {
                let len = max.min(cur.block.count - i);
                if (i..i + len).contains(&cur.low_water) {
                    self.request_refill();
                }
                return Some(SeqRange {
                    first: cur.block.seq(i),
                    stride: cur.block.stride,
                    len,
                });
            }
            if !self.promote(&cur) {
                return None;
            }
        }
    }

    /// [`Allocator::try_take_range`], waiting up to `timeout` for a block if none is in hand.
    pub async fn take_range(&self, max: u64, timeout: Duration) -> Result<SeqRange, Unavailable> {
        self.waiting(timeout, || self.try_take_range(max)).await
    }

    /// Replaces the exhausted block `seen` by the standby one. Returns whether taking again
    /// may succeed.
    #[cold]
    fn promote(&self, seen: &Arc<Active>) -> bool {
        let promoted = {
            let mut standby = self
                .shared
                .standby
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !Arc::ptr_eq(&self.shared.current.load_full(), seen) {
                return true; // another request promoted it first
            }
            match standby.take() {
                Some(b) => {
                    self.shared.current.store(Arc::new(Active::new(b)));
                    true
                }
                None => false,
            }
        };
        self.request_refill();
        promoted
    }

    fn request_refill(&self) {
        self.shared.request_refill();
    }

    /// Takes a number, waiting up to `timeout` for the actor to reserve one.
    pub async fn take(&self, timeout: Duration) -> Result<u64, Unavailable> {
        self.waiting(timeout, || self.try_take()).await
    }

    /// `take` at once if it can, else again each time a block arrives, until `timeout`.
    async fn waiting<T>(
        &self,
        timeout: Duration,
        take: impl Fn() -> Option<T>,
    ) -> Result<T, Unavailable> {
        if let Some(t) = take() {
            return Ok(t);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the second look: a block installed between the two still
            // wakes this request.
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(t) = take() {
                return Ok(t);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return take().ok_or_else(|| Unavailable {
                    reason: self
                        .last_error()
                        .unwrap_or_else(|| "waiting for a block timed out".into()),
                });
            }
        }
    }

    /// Numbers available without asking the store.
    pub fn buffered(&self) -> u64 {
        self.counts().1
    }

    /// Numbers issued by this allocator so far (reserved minus still buffered). Read at
    /// scrape time, so the hot path counts nothing; a take racing with the read makes it
    /// lag by a few numbers, never run ahead.
    pub fn issued(&self) -> u64 {
        let (reserved, buffered) = self.counts();
        reserved.saturating_sub(buffered)
    }

    fn counts(&self) -> (u64, u64) {
        self.shared.counts()
    }

    /// Whether the store answered its last reservation.
    pub fn store_healthy(&self) -> bool {
        self.shared.store_healthy.load(Ordering::Relaxed)
    }

    /// Ready to issue: numbers in hand, or a store that answers (and an actor to ask it).
    pub fn is_ready(&self) -> bool {
        self.health.given_up().is_none() && (self.buffered() > 0 || self.store_healthy())
    }

    /// The supervised actor's health.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    pub fn store_kind(&self) -> &'static str {
        self.shared.store.kind()
    }

    /// Store-specific health details (shards out of service, ...).
    pub fn store_report(&self) -> serde_json::Value {
        self.shared.store.report()
    }

    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().ok().and_then(|e| e.clone())
    }
}

impl Shared {
    /// (reserved so far, buffered now), read under the standby lock so that a block moving
    /// from standby to current (or being installed) is counted exactly once.
    fn counts(&self) -> (u64, u64) {
        let standby = self.standby.lock().unwrap_or_else(|p| p.into_inner());
        let buffered = self.current.load().remaining() + standby.map_or(0, |b| b.count);
        let reserved = self.reserved_total.load(Ordering::Relaxed);
        (reserved, buffered)
    }

    /// Asks the actor for a refill unless one is already asked for.
    fn request_refill(&self) {
        if !self.refill_requested.swap(true, Ordering::AcqRel)
            && let Ok(actor) = self.actor.lock()
            && let Some(actor) = actor.as_ref()
        {
            let _ = actor.cast(Msg::Refill);
        }
    }
}

#[derive(Clone)]
struct AllocatorActor;

#[derive(Clone)]
struct ActorArgs {
    shared: Arc<Shared>,
    store: Arc<dyn SequenceStore>,
    sizing: BlockSizing,
}

struct ActorState {
    shared: Arc<Shared>,
    store: Arc<dyn SequenceStore>,
    sizer: BlockSizer,
    backoff: Backoff,
    retry_scheduled: bool,
}

/// Retries of a failed reservation: kept short so that service resumes within a second of
/// the store coming back.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));

impl ActorState {
    /// Current block exhausted, or no standby block: a reservation is needed.
    fn needs_block(&self) -> bool {
        let standby_empty = self
            .shared
            .standby
            .lock()
            .map(|s| s.is_none())
            .unwrap_or(true);
        standby_empty || self.shared.current.load().remaining() == 0
    }

    /// Numbers taken by requests so far (reserved minus still buffered).
    fn consumed_total(&self) -> u64 {
        let reserved = self.shared.reserved_total.load(Ordering::Relaxed);
        reserved.saturating_sub(self.shared.counts().1)
    }

    /// Puts a fresh block where it is needed: as current if that is spent, else as standby.
    fn install(&self, block: Block) {
        let mut standby = self
            .shared
            .standby
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.shared.current.load().remaining() == 0 {
            match standby.take() {
                Some(s) => {
                    self.shared.current.store(Arc::new(Active::new(s)));
                    *standby = Some(block);
                }
                None => self.shared.current.store(Arc::new(Active::new(block))),
            }
        } else if standby.is_none() {
            *standby = Some(block);
        } else {
            // Both slots full (a duplicate refill): keep the block as the next standby.
            // Cannot happen with one actor, but never drop reserved numbers silently.
            tracing::warn!(
                first = block.first,
                count = block.count,
                "surplus block dropped; its numbers are skipped"
            );
            metrics::numbers_skipped(block.count);
            return;
        }
        self.shared
            .reserved_total
            .fetch_add(block.count, Ordering::Relaxed);
    }
}

impl Actor for AllocatorActor {
    type Msg = Msg;
    type State = ActorState;
    type Arguments = ActorArgs;

    async fn pre_start(
        &self,
        me: ActorRef<Msg>,
        args: ActorArgs,
    ) -> Result<ActorState, ActorProcessingErr> {
        // (Re)started: requests reach this actor from now on, and a refill asked of a dead
        // predecessor (or its retry timer) is asked again.
        if let Ok(mut actor) = args.shared.actor.lock() {
            *actor = Some(me.clone());
        }
        args.shared.refill_requested.store(true, Ordering::Release);
        me.cast(Msg::Refill)?;
        Ok(ActorState {
            shared: args.shared,
            store: args.store,
            sizer: BlockSizer::new(args.sizing),
            backoff: BACKOFF,
            retry_scheduled: false,
        })
    }

    async fn post_stop(
        &self,
        me: ActorRef<Msg>,
        st: &mut ActorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Ok(mut actor) = st.shared.actor.lock()
            && actor.as_ref().is_some_and(|a| a.get_id() == me.get_id())
        {
            *actor = None;
        }
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<Msg>,
        msg: Msg,
        st: &mut ActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Refill => {
                st.retry_scheduled = false;
                st.shared.refill_requested.store(false, Ordering::Release);
                // Fill both slots: at most two reservations per message.
                for _ in 0..2 {
                    if !st.needs_block() {
                        break;
                    }
                    let size = st.sizer.next(Instant::now(), st.consumed_total());
                    let started = Instant::now();
                    match st.store.reserve(size).await {
                        Ok(block) => {
                            metrics::block_reserved(
                                st.store.kind(),
                                block.count,
                                started.elapsed(),
                            );
                            tracing::debug!(
                                store = st.store.kind(),
                                first = block.first,
                                count = block.count,
                                elapsed_ms = started.elapsed().as_millis() as u64,
                                "block reserved"
                            );
                            st.install(block);
                            let failed_before =
                                st.shared.last_error.lock().is_ok_and(|e| e.is_some());
                            if !st.shared.store_healthy.swap(true, Ordering::Relaxed)
                                && failed_before
                            {
                                tracing::info!(
                                    store = st.store.kind(),
                                    "sequence store available again"
                                );
                            }
                            st.backoff.reset();
                            st.shared.notify.notify_waiters();
                        }
                        Err(e) => {
                            let exhausted = matches!(e, StoreError::Exhausted(_));
                            metrics::store_failed(st.store.kind(), e.kind(), started.elapsed());
                            if st.shared.store_healthy.swap(false, Ordering::Relaxed) {
                                tracing::error!(store = st.store.kind(), error = %e, "block reservation failed");
                            }
                            if let Ok(mut last) = st.shared.last_error.lock() {
                                *last = Some(e.to_string());
                            }
                            if !exhausted && !st.retry_scheduled {
                                st.retry_scheduled = true;
                                me.send_after(st.backoff.next_delay(), || Msg::Refill);
                            }
                            break;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::store::ReserveFuture;
    use std::collections::HashSet;

    /// An in-memory store for unit tests of the allocator's own logic (the real stores have
    /// their own tests); it can be switched off to simulate an outage.
    struct CountingStore {
        next: Mutex<u64>,
        up: AtomicBool,
        calls: AtomicU64,
    }

    impl SequenceStore for CountingStore {
        fn reserve(&self, count: u64) -> ReserveFuture<'_> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::Relaxed);
                if !self.up.load(Ordering::Relaxed) {
                    return Err(StoreError::Unavailable("down".into()));
                }
                let mut n = self.next.lock().unwrap();
                let first = *n;
                *n += count;
                Ok(Block {
                    first,
                    count,
                    stride: 1,
                })
            })
        }
        fn kind(&self) -> &'static str {
            "test"
        }
    }

    fn store() -> Arc<CountingStore> {
        Arc::new(CountingStore {
            next: Mutex::new(0),
            up: AtomicBool::new(true),
            calls: AtomicU64::new(0),
        })
    }

    fn sizing(min: u64, max: u64) -> BlockSizing {
        BlockSizing {
            min,
            max,
            target: Duration::from_millis(500),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_takers_get_distinct_numbers_with_few_reservations() {
        let s = store();
        let (alloc, cell, _h) = Allocator::start(s.clone(), sizing(100, 100_000))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let a = alloc.clone();
            tasks.push(tokio::spawn(async move {
                let mut v = Vec::with_capacity(50_000);
                for _ in 0..50_000 {
                    v.push(a.take(Duration::from_secs(5)).await.unwrap());
                }
                v
            }));
        }
        let mut all = HashSet::new();
        for t in tasks {
            for n in t.await.unwrap() {
                assert!(all.insert(n), "duplicate {n}");
            }
        }
        assert_eq!(all.len(), 400_000);
        let calls = s.calls.load(Ordering::Relaxed);
        assert!(
            calls < 400_000 / 100,
            "blocks grow with the rate: {calls} reservations"
        );
        cell.stop(None);
    }

    #[tokio::test]
    async fn outage_times_out_then_recovers() {
        let s = store();
        let (alloc, cell, _h) = Allocator::start(s.clone(), sizing(10, 10)).await.unwrap();
        alloc.take(Duration::from_secs(1)).await.unwrap();
        s.up.store(false, Ordering::Relaxed);
        // Drain what is buffered (current + standby), then the next take must time out.
        let mut drained = 1;
        while alloc.take(Duration::from_millis(200)).await.is_ok() {
            drained += 1;
            assert!(drained <= 20);
        }
        let err = alloc.take(Duration::from_millis(100)).await.unwrap_err();
        assert!(err.reason.contains("down"), "{}", err.reason);
        assert!(!alloc.store_healthy());
        assert!(!alloc.is_ready());
        s.up.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        let n = alloc.take(Duration::from_secs(5)).await.unwrap();
        assert!(n >= 20);
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "recovered by the retry backoff"
        );
        assert!(alloc.store_healthy());
        cell.stop(None);
    }

    /// Waits for the supervisor to have restarted the actor `n` times (a child running).
    async fn restarted(alloc: &Allocator, n: u64) -> ractor::ActorCell {
        let t0 = Instant::now();
        loop {
            if alloc.health().restarts() >= n
                && let Some(child) = alloc.health().child()
            {
                return child;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "not restarted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_killed_actor_is_restarted_and_numbers_stay_distinct_until_it_keeps_dying() {
        let s = store();
        let (alloc, cell, _h) = Allocator::start(s.clone(), sizing(10, 10)).await.unwrap();
        let mut seen = HashSet::new();
        for round in 0..crate::supervise::MAX_RESTARTS as u64 {
            restarted(&alloc, round).await.kill();
            restarted(&alloc, round + 1).await;
            // Several refills each round: the new actor serves them.
            for _ in 0..35 {
                let n = alloc.take(Duration::from_secs(5)).await.unwrap();
                assert!(seen.insert(n), "{n} issued twice");
            }
            assert!(alloc.is_ready());
            assert!(alloc.health().given_up().is_none());
        }
        // One death too many within the window: given up, and the allocator says so.
        restarted(&alloc, crate::supervise::MAX_RESTARTS as u64)
            .await
            .kill();
        let t0 = Instant::now();
        while alloc.health().given_up().is_none() {
            assert!(t0.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!alloc.is_ready());
        assert!(alloc.health().given_up().unwrap().contains("allocator"));
        cell.stop(None);
    }

    #[test]
    fn sizer_follows_the_rate_within_bounds() {
        let mut z = BlockSizer::new(BlockSizing {
            min: 100,
            max: 10_000,
            target: Duration::from_secs(1),
        });
        let t0 = Instant::now();
        assert_eq!(z.next(t0, 0), 100, "no history: minimum");
        // 5,000 numbers per second.
        assert_eq!(z.next(t0 + Duration::from_secs(1), 5_000), 5_000);
        // Rate jumps to 50,000/s: EWMA moves half-way, then the maximum caps it.
        assert_eq!(z.next(t0 + Duration::from_secs(2), 55_000), 10_000);
        // Idle for a long time: the estimate decays towards the minimum.
        let mut t = t0 + Duration::from_secs(2);
        let mut size = 0;
        for _ in 0..20 {
            t += Duration::from_secs(10);
            size = z.next(t, 55_000);
        }
        assert_eq!(size, 100);
    }
}
