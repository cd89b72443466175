//! Safe retries: an `Idempotency-Key` remembers the answer it was first given for 24 hours, in
//! the store the deployment shares — Redis or PostgreSQL with those sequence stores (then
//! every instance answers a retry the same), else the embedded redb file. The same key with
//! other parameters is a conflict.
//!
//! - [`Key`]: the header's value, parsed.
//! - [`entry`]: what a key holds and what an existing entry means for a request.
//! - [`guard`]: a claimed key in a request's hands ([`Held`]), settled whatever becomes of the
//!   request, and an answer owed after it ([`Promise`]).
//! - [`Backend`]: one implementation per store ([`redis`], [`postgres`], [`embedded`]), each a
//!   claim and a compare-and-set on the claim's token.

pub mod embedded;
pub mod entry;
pub mod guard;
pub mod postgres;
pub mod redis;

pub use entry::{Begin, Claim};
pub use guard::{Held, Promise};

use crate::config::{SequenceStoreKind, TrackingSettings};
use entry::{Entry, now_ms};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How often a key whose answer is still coming is marked alive again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// An `Idempotency-Key` header value: 1–255 visible ASCII characters, belonging to the client
/// (API key) that sent it, so that one client's keys never meet another's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(String);

/// Why a header value is not a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key must be 1 to 255 visible ASCII characters.")]
pub struct InvalidKey;

impl Key {
    /// Parses the header value of a request from `client` (`None` when the deployment is open).
    pub fn parse(raw: &[u8], client: Option<&str>) -> Result<Self, InvalidKey> {
        if !(1..=255).contains(&raw.len()) || !raw.iter().all(u8::is_ascii_graphic) {
            return Err(InvalidKey);
        }
        let raw = std::str::from_utf8(raw).map_err(|_| InvalidKey)?;
        Ok(Self(match client {
            Some(c) => format!("{c}/{raw}"),
            None => raw.to_owned(),
        }))
    }

    /// The name the key is stored under.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
#[error("idempotency store unavailable: {0}")]
pub struct IdemError(pub String);

pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, IdemError>> + Send + 'a>>;

/// Held by a claim while its write may still reach the store; a release waits for it. (A
/// backend that writes on a task the request does not own, like the embedded one on the
/// blocking pool, keeps it until that write is over; the others write in order on one
/// connection, so dropping it with the request's future is enough.)
pub type InFlight = tokio::sync::OwnedMutexGuard<()>;

/// Where keys are kept. Every write is conditional, so that two instances (or a request and
/// the task finishing its answer) never overwrite each other's claim.
pub trait Backend: Send + Sync + 'static {
    fn kind(&self) -> &'static str;

    /// Claims `key` with `mine` if it holds nothing (or only an expired entry); otherwise
    /// returns what the existing entry means ([`entry::decide`]), taking it over — only if it
    /// still holds what was read — when it is a stale or orphaned claim. `owner` is given by
    /// backends that one process owns (pending entries of other owners are orphaned).
    fn begin<'a>(
        &'a self,
        key: &'a Key,
        mine: &'a Entry,
        in_flight: InFlight,
    ) -> BackendFuture<'a, Begin>;

    /// Replaces the key's entry with `new` (or, given `None`, removes it) if it is still
    /// pending under claim `token`. Writing what the key already holds, or removing a key
    /// that is gone, succeeds too (a retry whose first reply was lost).
    fn settle<'a>(
        &'a self,
        key: &'a Key,
        token: &'a str,
        new: Option<&'a Entry>,
    ) -> BackendFuture<'a, bool>;

    /// Deletes the keys past their time to live (Redis expires them by itself); returns how
    /// many.
    fn purge_expired(&self) -> BackendFuture<'_, u64> {
        Box::pin(async { Ok(0) })
    }
}

pub struct Idempotency {
    backend: Box<dyn Backend>,
    /// This process, for the embedded store's orphaned claims.
    owner: String,
    /// Answers completed after their request (see [`guard`]); awaited at shutdown.
    deferred: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl Idempotency {
    pub fn new(backend: impl Backend) -> Self {
        Self {
            backend: Box::new(backend),
            owner: crate::support::random::hex_id(),
            deferred: Default::default(),
        }
    }

    /// Keys in the store the deployment shares: Redis or PostgreSQL with those sequence
    /// stores, else the embedded file (`embedded` opens it).
    pub fn for_store(
        t: &TrackingSettings,
        embedded: impl FnOnce() -> Result<Arc<redb::Database>, String>,
        tls: &crate::support::tls::Tls,
    ) -> Result<Self, String> {
        Ok(match t.sequence_store {
            SequenceStoreKind::Redis => Self::new(redis::RedisKeys::new(
                t.redis_urls(),
                t.redis_cluster,
                &t.redis_key_prefix,
                t.store_timeout,
                tls.clone(),
            )),
            SequenceStoreKind::Postgres => Self::new(postgres::PostgresKeys::new(
                t.postgres_url.expose(),
                t.store_timeout,
                tls.clone(),
            )),
            SequenceStoreKind::Embedded => {
                Self::new(embedded::EmbeddedKeys::open(embedded()?).map_err(|e| e.to_string())?)
            }
        })
    }

    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// Deletes expired keys every `every`, for as long as the returned task runs.
    pub fn spawn_purge(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match store.backend.purge_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(keys = n, "expired idempotency keys deleted"),
                    Err(e) => {
                        tracing::warn!(error = %e, "deleting expired idempotency keys failed")
                    }
                }
            }
        })
    }

    /// A claim with token `token`, as of now.
    fn claim_as(&self, fingerprint: &str, token: &str) -> Entry {
        Entry {
            fingerprint: fingerprint.to_owned(),
            at_ms: now_ms(),
            status: None,
            body: None,
            owner: self.owner.clone(),
            claim: token.to_owned(),
        }
    }

    /// Decides what a request with `key` and these parameters gets; a `Fresh` answer claims the
    /// key. Waits up to `wait` for a first request still in progress.
    pub async fn begin(
        self: &Arc<Self>,
        key: &Key,
        fingerprint: &str,
        wait: Duration,
    ) -> Result<Begin, IdemError> {
        let deadline = tokio::time::Instant::now() + wait;
        let token = crate::support::random::hex_id();
        // Dropped mid-claim (the client went away), this request releases what it may have
        // claimed, rather than leave the key pending until it goes stale.
        let mut unclaim = guard::Unclaim::new(self, key, &token);
        loop {
            let mine = self.claim_as(fingerprint, &token);
            let outcome = self
                .backend
                .begin(key, &mine, unclaim.in_flight().await)
                .await?;
            if outcome != Begin::InProgress || tokio::time::Instant::now() >= deadline {
                // Fresh: the caller's `Held` answers for the claim from here on.
                unclaim.disarm();
                return Ok(outcome);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Remembers the answer of a `Fresh` request; false if the claim was lost (the key was
    /// taken over as stale), in which case nothing is written.
    pub async fn complete(
        &self,
        key: &Key,
        claim: &Claim,
        status: u16,
        body: &str,
    ) -> Result<bool, IdemError> {
        let done = Entry {
            status: Some(status),
            body: Some(body.to_owned()),
            ..claim.0.clone()
        };
        self.backend.settle(key, claim.token(), Some(&done)).await
    }

    /// Releases a `Fresh` key whose request failed (a 503) or was given up, so that a retry
    /// is answered anew; false if the claim was already lost.
    pub async fn abandon(&self, key: &Key, claim: &Claim) -> Result<bool, IdemError> {
        self.release(key, claim.token()).await
    }

    /// [`Idempotency::abandon`] by the claim's token alone.
    async fn release(&self, key: &Key, token: &str) -> Result<bool, IdemError> {
        self.backend.settle(key, token, None).await
    }

    /// Marks a claimed key alive again (its answer is still coming), so that it is not taken
    /// over as stale; false if the claim was lost.
    pub async fn refresh(&self, key: &Key, claim: &mut Claim) -> Result<bool, IdemError> {
        let renewed = Claim(Entry {
            at_ms: now_ms(),
            ..claim.0.clone()
        });
        let kept = self
            .backend
            .settle(key, claim.token(), Some(&renewed.0))
            .await?;
        if kept {
            *claim = renewed;
        }
        Ok(kept)
    }

    /// Waits up to `limit` for answers still to be completed after their request; called at
    /// shutdown once the records are written.
    pub async fn finish_deferred(&self, limit: Duration) {
        let mut set = match self.deferred.lock() {
            Ok(mut s) => std::mem::take(&mut *s),
            Err(_) => return,
        };
        if set.is_empty() {
            return;
        }
        let left =
            tokio::time::timeout(limit, async { while set.join_next().await.is_some() {} }).await;
        if left.is_err() {
            tracing::warn!(
                keys = set.len(),
                "idempotency keys left pending at shutdown: their retries wait until the keys go stale"
            );
        }
    }

    /// Runs `task` in the background, awaited by [`Idempotency::finish_deferred`].
    fn defer(&self, task: impl Future<Output = ()> + Send + 'static) {
        if let Ok(mut set) = self.deferred.lock() {
            while set.try_join_next().is_some() {}
            set.spawn(task);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_up_to_255_and_belong_to_their_client() {
        assert!(Key::parse(b"order-42:retry", None).is_ok());
        assert_eq!(Key::parse(b"", None), Err(InvalidKey));
        assert_eq!(Key::parse(b"has space", None), Err(InvalidKey));
        assert_eq!(Key::parse(&[b'k'; 256], None), Err(InvalidKey));
        assert!(Key::parse(&[b'k'; 255], None).is_ok());
        assert_eq!(Key::parse("ключ".as_bytes(), None), Err(InvalidKey));
        let a = Key::parse(b"k1", Some("client-a")).unwrap();
        let b = Key::parse(b"k1", Some("client-b")).unwrap();
        assert_ne!(a, b);
        assert_eq!(Key::parse(b"k1", None).unwrap().as_str(), "k1");
    }
}
