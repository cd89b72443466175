//! A claimed key in a request's hands. However the request ends — answered, answered 503
//! with numbers still to be recorded, or dropped because its client went away — its key is
//! settled: remembered, completed in the background once the owed answer is due, or released
//! so that a retry is answered anew rather than told to wait until the claim goes stale.

use super::entry::STALE_PENDING;
use super::{Claim, IdemError, Idempotency, InFlight, Key, REFRESH_EVERY};
use crate::support::backoff::Backoff;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Releases a claim [`Idempotency::begin`] may have written when its future is dropped
/// before it returns (only a key still pending under this token is touched).
pub(super) struct Unclaim {
    store: Arc<Idempotency>,
    key: Key,
    token: String,
    armed: bool,
    /// Locked while a claim's write may still reach the store (see [`InFlight`]).
    in_flight: Arc<tokio::sync::Mutex<()>>,
}

impl Unclaim {
    pub(super) fn new(store: &Arc<Idempotency>, key: &Key, token: &str) -> Self {
        Self {
            store: Arc::clone(store),
            key: key.clone(),
            token: token.to_owned(),
            armed: true,
            in_flight: Arc::default(),
        }
    }

    /// The guard a claim attempt holds while it may write.
    pub(super) async fn in_flight(&self) -> InFlight {
        Arc::clone(&self.in_flight).lock_owned().await
    }

    /// The claim answered: from here on its [`Held`] (or nobody, for a non-fresh answer)
    /// answers for the key.
    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Unclaim {
    fn drop(&mut self) {
        if self.armed {
            let in_flight = Arc::clone(&self.in_flight);
            release_later(
                &self.store,
                self.key.clone(),
                std::mem::take(&mut self.token),
                async move { drop(in_flight.lock().await) },
            );
        }
    }
}

/// Releases `key` if it is still pending under `token`, in a task of its own once `after`
/// is done (for a guard dropped mid-request; without a runtime left, the claim goes stale
/// and is taken over after 30 s).
fn release_later(
    store: &Arc<Idempotency>,
    key: Key,
    token: String,
    after: impl Future<Output = ()> + Send + 'static,
) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let store = Arc::clone(store);
        rt.spawn(async move {
            after.await;
            if let Err(e) = store.release(&key, &token).await {
                tracing::warn!(error = %e, "could not release an idempotency key");
            }
        });
    }
}

/// The answer a key will have once its records are committed: set by a request whose numbers
/// are issued and queued (durable mode) before it waits for the commit.
struct Promised {
    /// Resolves once the records are written (true) or given up at shutdown (false).
    committed: Pin<Box<dyn Future<Output = bool> + Send>>,
    status: u16,
    body: String,
}

/// Where a request leaves its [`Promised`] answer for its [`Held`] key.
#[derive(Clone, Default)]
pub struct Promise(Arc<std::sync::Mutex<Option<Promised>>>);

impl Promise {
    /// From now on the key is owed this answer once `committed` resolves to true, whatever
    /// becomes of the request (it may time out, or its client go away).
    pub fn set(
        &self,
        committed: impl Future<Output = bool> + Send + 'static,
        status: u16,
        body: String,
    ) {
        if let Ok(mut p) = self.0.lock() {
            *p = Some(Promised {
                committed: Box::pin(committed),
                status,
                body,
            });
        }
    }

    fn take(&self) -> Option<Promised> {
        self.0.lock().ok().and_then(|mut p| p.take())
    }

    fn is_set(&self) -> bool {
        self.0.lock().is_ok_and(|p| p.is_some())
    }
}

/// A claimed key in a request's hands, settled by [`Held::settle`]. Dropped unsettled (the
/// client went away mid-request), it still settles the key: with the promised answer once its
/// records are committed if there is one, else by releasing it.
pub struct Held {
    store: Arc<Idempotency>,
    key: Key,
    claim: Claim,
    promise: Promise,
    settled: bool,
}

impl Held {
    pub fn new(store: &Arc<Idempotency>, key: Key, claim: Claim) -> Self {
        Self {
            store: Arc::clone(store),
            key,
            claim,
            promise: Promise::default(),
            settled: false,
        }
    }

    /// Where the request leaves an answer owed once its records are committed.
    pub fn promise(&self) -> Promise {
        self.promise.clone()
    }

    /// Runs `answer` (the request's), marking the key alive every [`REFRESH_EVERY`] meanwhile:
    /// however long it takes (a label run over several block refills), the key is not taken
    /// over as stale while its request still runs.
    pub async fn answering<T>(&self, answer: impl Future<Output = T>) -> T {
        self.answering_every(answer, REFRESH_EVERY).await
    }

    pub(super) async fn answering_every<T>(
        &self,
        answer: impl Future<Output = T>,
        every: Duration,
    ) -> T {
        tokio::pin!(answer);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                out = &mut answer => return out,
                _ = tick.tick() => {
                    // Settling goes by the claim's token: the refreshed copy is not needed.
                    let mut claim = self.claim.clone();
                    match self.store.refresh(&self.key, &mut claim).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!("an idempotency key was taken over while answered"),
                        Err(e) => tracing::warn!(error = %e, "could not refresh an idempotency key"),
                    }
                }
            }
        }
    }

    /// Releases the key without an answer (none worth remembering): a retry is answered
    /// anew. False if the claim was lost meanwhile.
    pub async fn release(mut self) -> Result<bool, IdemError> {
        let r = self.store.abandon(&self.key, &self.claim).await;
        self.settled = true;
        r
    }

    /// Settles the key after the request's answer: a definitive one (below 500: a 201, or a
    /// void's 200, 404 or 409) is remembered; a 5xx releases the key, unless an answer was promised (numbers issued, their records queued
    /// but not committed in time), which the key then gets once they are. False if the claim
    /// was lost meanwhile. (A promised answer is left to the drop, which completes it.)
    pub async fn settle(mut self, status: u16, body: &str) -> Result<bool, IdemError> {
        let r = if status < 500 {
            let r = self
                .store
                .complete(&self.key, &self.claim, status, body)
                .await;
            if let Err(e) = &r {
                // The client gets this answer: the key must not go stale and be answered anew.
                tracing::warn!(error = %e, "could not remember an idempotency key; retrying in the background");
                self.promise
                    .set(std::future::ready(true), status, body.to_owned());
                return Ok(true);
            }
            r
        } else if self.promise.is_set() {
            return Ok(true);
        } else {
            self.store.abandon(&self.key, &self.claim).await
        };
        self.settled = true;
        r
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (key, claim) = (self.key.clone(), self.claim.clone());
        match self.promise.take() {
            Some(p) => complete_after(&self.store, key, claim, p),
            None => release_later(&self.store, key, claim.token().to_owned(), async {}),
        }
    }
}

/// Completes `key` with the promised answer once its records are committed, keeping the claim
/// alive meanwhile (refreshed at once, then every [`REFRESH_EVERY`]): until then a retry is
/// told to wait (409), afterwards it gets this answer, never other numbers. If the records are
/// given up (shutdown), the key is released. Returns at once.
fn complete_after(store: &Arc<Idempotency>, key: Key, mut claim: Claim, promised: Promised) {
    let s = Arc::clone(store);
    store.defer(async move {
        let Promised {
            mut committed,
            status,
            body,
        } = promised;
        let written = loop {
            match s.refresh(&key, &mut claim).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        "an idempotency key was settled or taken over while its answer waited for its records"
                    );
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "could not refresh an idempotency key"),
            }
            if let Ok(written) = tokio::time::timeout(REFRESH_EVERY, committed.as_mut()).await {
                break written;
            }
        };
        // Remember the answer (or release the key), retrying while the keys' store is
        // unreachable, for as long as the claim would last.
        let deadline = tokio::time::Instant::now() + STALE_PENDING;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let r = if written {
                s.complete(&key, &claim, status, &body).await
            } else {
                s.abandon(&key, &claim).await
            };
            match r {
                Ok(true) => break,
                Ok(false) => {
                    tracing::error!("an idempotency key was taken over before its answer");
                    break;
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "could not settle an idempotency key; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not settle an idempotency key");
                    break;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::entry::Entry;
    use super::super::{Begin, Key, embedded::EmbeddedKeys};
    use super::*;
    use redb::{Database, ReadableDatabase};

    fn embedded_store(dir: &std::path::Path) -> (Arc<Idempotency>, Arc<Database>) {
        let db = Arc::new(Database::create(dir.join("keys.redb")).unwrap());
        let keys = EmbeddedKeys::open(Arc::clone(&db)).unwrap();
        (Arc::new(Idempotency::new(keys)), db)
    }

    fn key(k: &str) -> Key {
        Key::parse(k.as_bytes(), None).unwrap()
    }

    async fn begin(store: &Arc<Idempotency>, k: &str) -> Begin {
        store.begin(&key(k), "fp", Duration::ZERO).await.unwrap()
    }

    fn claim(b: Begin) -> Claim {
        match b {
            Begin::Fresh(c) => c,
            other => panic!("not fresh: {other:?}"),
        }
    }

    /// Waits until `key` can be claimed anew (released), or panics.
    async fn until_released(store: &Arc<Idempotency>, k: &str) {
        let start = std::time::Instant::now();
        while begin(store, k).await == Begin::InProgress {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{k} never released"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_dropped_request_releases_its_key_unless_an_answer_was_promised() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = embedded_store(dir.path());
        let c = claim(begin(&store, "gone").await);
        drop(Held::new(&store, key("gone"), c));
        until_released(&store, "gone").await;
        // A settled one stays settled.
        let c = claim(begin(&store, "kept").await);
        Held::new(&store, key("kept"), c)
            .settle(201, "{}")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(begin(&store, "kept").await, Begin::Replay { .. }));
        // Numbers queued before the client went away: the key waits for their commit and
        // answers them.
        let c = claim(begin(&store, "owed").await);
        let held = Held::new(&store, key("owed"), c);
        let (tx, rx) = tokio::sync::oneshot::channel::<bool>();
        held.promise().set(
            async move { rx.await.unwrap_or(false) },
            201,
            "{\"n\":2}".into(),
        );
        drop(held);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(begin(&store, "owed").await, Begin::InProgress);
        tx.send(true).unwrap();
        store.finish_deferred(Duration::from_secs(5)).await;
        assert_eq!(
            begin(&store, "owed").await,
            Begin::Replay {
                status: 201,
                body: "{\"n\":2}".into()
            }
        );
    }

    #[tokio::test]
    async fn a_promised_answer_follows_a_503_and_records_given_up_release_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = embedded_store(dir.path());
        for (k, written) in [("later", true), ("given-up", false)] {
            let c = claim(begin(&store, k).await);
            let held = Held::new(&store, key(k), c);
            let (tx, rx) = tokio::sync::oneshot::channel::<bool>();
            held.promise().set(
                async move { rx.await.unwrap_or(false) },
                201,
                "{\"n\":3}".into(),
            );
            assert!(held.settle(503, "{}").await.unwrap());
            assert_eq!(begin(&store, k).await, Begin::InProgress, "{k}");
            tx.send(written).unwrap();
            store.finish_deferred(Duration::from_secs(5)).await;
            if written {
                assert!(matches!(
                    begin(&store, k).await,
                    Begin::Replay { status: 201, .. }
                ));
            } else {
                until_released(&store, k).await;
            }
        }
    }

    #[tokio::test]
    async fn a_key_is_kept_alive_while_its_request_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = embedded_store(dir.path());
        let c = claim(begin(&store, "slow").await);
        let first = c.0.at_ms;
        let stored_at = || {
            let tx = db.begin_read().unwrap();
            let t = tx.open_table(super::super::embedded::IDEMPOTENCY).unwrap();
            let v = t.get("slow").unwrap().unwrap();
            Entry::from_json(v.value()).unwrap().at_ms
        };
        let held = Held::new(&store, key("slow"), c);
        held.answering_every(
            tokio::time::sleep(Duration::from_millis(300)),
            Duration::from_millis(50),
        )
        .await;
        assert!(
            stored_at() >= first + 200,
            "not refreshed: {} vs {first}",
            stored_at()
        );
        // Still settled by the original claim.
        assert!(held.settle(201, "{}").await.unwrap());
        assert!(matches!(begin(&store, "slow").await, Begin::Replay { .. }));
    }

    #[tokio::test]
    async fn a_request_dropped_while_it_claims_its_key_releases_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = embedded_store(dir.path());
        let k = key("k");
        for _ in 0..20 {
            // Polled once (the claim starts on the blocking pool), then dropped.
            let mut gone = Box::pin(store.begin(&k, "fp", Duration::ZERO));
            let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(gone.as_mut().poll(cx)));
            assert!(
                polled.await.is_pending(),
                "the claim finished within one poll"
            );
            drop(gone);
            // Released: claimed anew (then released for the next round).
            let start = std::time::Instant::now();
            let c = loop {
                match begin(&store, "k").await {
                    Begin::Fresh(c) => break c,
                    other => assert!(start.elapsed() < Duration::from_secs(5), "{other:?}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            assert!(store.abandon(&k, &c).await.unwrap());
        }
    }
}
