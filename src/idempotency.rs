//! Safe retries: an `Idempotency-Key` remembers the response it was first answered with for
//! 24 hours, in Redis when Redis is configured (shared by every instance) or else in the
//! embedded redb file. The same key with other parameters is a conflict (422).

use crate::tracking::store::redis::{Conn, connect};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// key → [`Entry`] as JSON.
pub const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");

/// How long a key is remembered.
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// A key still pending after this long belongs to a request that died: it may be taken over.
const STALE_PENDING: Duration = Duration::from_secs(30);
/// How often a key whose answer waits for a commit past its request is marked alive again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// What the first request with a key left behind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Entry {
    /// The request's parameters, normalised: a retry must match them exactly.
    fingerprint: String,
    /// Unix milliseconds when the key was first seen (pending) or completed.
    at_ms: u64,
    /// `None` while the first request is still being answered.
    status: Option<u16>,
    body: Option<String>,
    /// The process that holds a pending key (a restarted embedded instance takes its own over).
    owner: String,
    /// Random, one per claim, kept across refreshes: whoever holds it may settle the key
    /// (absent in entries of trackd before 0.1.1).
    #[serde(default)]
    claim: String,
}

/// A pending key as this request claimed it: refreshing, completing or releasing it succeeds
/// only while the key is still pending under this claim (nobody took it over meanwhile).
#[derive(Debug, Clone, PartialEq)]
pub struct Claim(Entry);

impl Claim {
    /// The claim's pending entry, as stored.
    fn json(&self) -> Result<String, IdemError> {
        serde_json::to_string(&self.0).map_err(|e| IdemError(e.to_string()))
    }
}

/// What to do with a request carrying a key.
#[derive(Debug, PartialEq)]
pub enum Begin {
    /// First use: answer it, then [`Idempotency::complete`] (or [`Idempotency::abandon`]).
    Fresh(Claim),
    /// A retry: answer exactly this.
    Replay { status: u16, body: String },
    /// The key was used with other parameters.
    Conflict,
    /// The first request with this key is still being answered.
    InProgress,
}

#[derive(Debug, thiserror::Error)]
#[error("idempotency store unavailable: {0}")]
pub struct IdemError(pub String);

enum Backend {
    Redis {
        urls: Vec<String>,
        cluster: bool,
        prefix: String,
        timeout: Duration,
        conn: tokio::sync::Mutex<Option<Conn>>,
    },
    Embedded(Arc<Database>),
}

pub struct Idempotency {
    backend: Backend,
    owner: String,
    /// Answers completed after their request (see [`Idempotency::complete_after`]); awaited at
    /// shutdown.
    deferred: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// 16 random hex digits (should the OS refuse randomness: the clock, the process id and a
/// counter, still unique in practice).
fn random_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut b = [0u8; 8];
    let id = match getrandom::fill(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            nanos ^ (u64::from(std::process::id()) << 40) ^ n.rotate_left(20)
        }
    };
    format!("{id:016x}")
}

/// Takes over a stale pending key only if it still holds exactly what was read (ARGV[1]).
const TAKE_OVER_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
";

/// A claim holder's write: replaces the key's value with ARGV[2] (or, given '', deletes it)
/// if the key is still pending under claim ARGV[1]. Writing the value the key already holds,
/// or deleting a key that is gone, succeeds too (a retry whose first reply was lost).
const SETTLE_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  if ARGV[2] == '' then return 1 end
  return 0
end
if v == ARGV[2] then return 1 end
local ok, e = pcall(cjson.decode, v)
if not ok or type(e) ~= 'table' or (e.claim or '') ~= ARGV[1] then return 0 end
if e.status ~= nil and e.status ~= cjson.null then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
end
return 1
";

impl Idempotency {
    pub fn redis(urls: Vec<String>, cluster: bool, prefix: &str, timeout: Duration) -> Self {
        Self {
            backend: Backend::Redis {
                urls,
                cluster,
                prefix: prefix.to_owned(),
                timeout,
                conn: tokio::sync::Mutex::new(None),
            },
            owner: random_id(),
            deferred: Default::default(),
        }
    }

    pub fn embedded(db: Arc<Database>) -> Self {
        Self {
            backend: Backend::Embedded(db),
            owner: random_id(),
            deferred: Default::default(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Redis { .. } => "redis",
            Backend::Embedded(_) => "embedded",
        }
    }

    /// A claim with token `token`, as of now.
    fn claim_as(&self, fingerprint: &str, token: &str) -> Claim {
        Claim(Entry {
            fingerprint: fingerprint.to_owned(),
            at_ms: now_ms(),
            status: None,
            body: None,
            owner: self.owner.clone(),
            claim: token.to_owned(),
        })
    }

    /// Decides what a request with `key` and these parameters gets; a `Fresh` answer claims the
    /// key. Waits up to `wait` for a first request still in progress.
    pub async fn begin(
        self: &Arc<Self>,
        key: &str,
        fingerprint: &str,
        wait: Duration,
    ) -> Result<Begin, IdemError> {
        let deadline = tokio::time::Instant::now() + wait;
        let token = random_id();
        // Dropped mid-claim (the client went away), this request releases what it may have
        // claimed, rather than leave the key pending until it goes stale.
        let mut unclaim = Unclaim {
            store: Arc::clone(self),
            key: key.to_owned(),
            token: token.clone(),
            armed: true,
            in_flight: Arc::default(),
        };
        loop {
            let outcome = match &self.backend {
                Backend::Redis { .. } => {
                    self.begin_redis(key, self.claim_as(fingerprint, &token))
                        .await?
                }
                Backend::Embedded(db) => {
                    let db = Arc::clone(db);
                    let (key, fingerprint, mine, owner) = (
                        key.to_owned(),
                        fingerprint.to_owned(),
                        self.claim_as(fingerprint, &token),
                        self.owner.clone(),
                    );
                    // Held until the claim's transaction is over: a release must come after it.
                    let in_flight = Arc::clone(&unclaim.in_flight).try_lock_owned().ok();
                    tokio::task::spawn_blocking(move || {
                        let _in_flight = in_flight;
                        begin_embedded(&db, &key, &fingerprint, mine, &owner)
                    })
                    .await
                    .map_err(|e| IdemError(e.to_string()))??
                }
            };
            if outcome != Begin::InProgress || tokio::time::Instant::now() >= deadline {
                // Fresh: the caller's `Held` answers for the claim from here on.
                unclaim.armed = false;
                return Ok(outcome);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Remembers the answer of a `Fresh` request; false if the claim was lost (the key was
    /// taken over as stale), in which case nothing is written.
    pub async fn complete(
        &self,
        key: &str,
        claim: &Claim,
        status: u16,
        body: &str,
    ) -> Result<bool, IdemError> {
        let done = Entry {
            status: Some(status),
            body: Some(body.to_owned()),
            ..claim.0.clone()
        };
        let value = serde_json::to_string(&done).map_err(|e| IdemError(e.to_string()))?;
        self.settle(key, claim, Some(value)).await
    }

    /// Releases a `Fresh` key whose request failed (a 503) or was given up, so that a retry
    /// is answered anew; false if the claim was already lost.
    pub async fn abandon(&self, key: &str, claim: &Claim) -> Result<bool, IdemError> {
        self.settle(key, claim, None).await
    }

    /// Marks a claimed key alive again (its answer is still coming), so that it is not taken
    /// over as stale; false if the claim was lost.
    pub async fn refresh(&self, key: &str, claim: &mut Claim) -> Result<bool, IdemError> {
        let renewed = Claim(Entry {
            at_ms: now_ms(),
            ..claim.0.clone()
        });
        let kept = self.settle(key, claim, Some(renewed.json()?)).await?;
        if kept {
            *claim = renewed;
        }
        Ok(kept)
    }

    /// Replaces the key's value with `new` (or removes it) if it is still pending under
    /// `claim` (or already holds `new`).
    async fn settle(
        &self,
        key: &str,
        claim: &Claim,
        new: Option<String>,
    ) -> Result<bool, IdemError> {
        self.settle_token(key, &claim.0.claim, new).await
    }

    async fn settle_token(
        &self,
        key: &str,
        token: &str,
        new: Option<String>,
    ) -> Result<bool, IdemError> {
        match &self.backend {
            Backend::Redis { .. } => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(SETTLE_LUA)
                    .arg(1)
                    .arg(self.redis_key(key))
                    .arg(token)
                    .arg(new.unwrap_or_default());
                Ok(self.redis_query::<i64>(cmd).await? == 1)
            }
            Backend::Embedded(db) => {
                let (db, key, token) = (Arc::clone(db), key.to_owned(), token.to_owned());
                tokio::task::spawn_blocking(move || {
                    settle_embedded(&db, &key, &token, new.as_deref())
                })
                .await
                .map_err(|e| IdemError(e.to_string()))?
            }
        }
    }

    /// Waits up to `limit` for answers still to be completed after their request
    /// ([`Idempotency::complete_after`]); called at shutdown once the records are written.
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

    fn redis_key(&self, key: &str) -> String {
        let prefix = match &self.backend {
            Backend::Redis { prefix, .. } => prefix.as_str(),
            Backend::Embedded(_) => "",
        };
        format!("{prefix}:idem:{key}")
    }

    async fn redis_query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, IdemError> {
        let Backend::Redis {
            urls,
            cluster,
            timeout,
            conn,
            ..
        } = &self.backend
        else {
            return Err(IdemError("not a redis backend".into()));
        };
        let mut guard = conn.lock().await;
        if guard.is_none() {
            *guard = Some(
                connect(urls, *cluster, *timeout)
                    .await
                    .map_err(|e| IdemError(format!("redis: {e}")))?,
            );
        }
        let c = guard.as_mut().expect("connected above");
        match tokio::time::timeout(*timeout * 2, cmd.query_async::<T>(c)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    *guard = None;
                }
                Err(IdemError(format!("redis: {e}")))
            }
            Err(_) => {
                *guard = None;
                Err(IdemError("redis did not answer in time".into()))
            }
        }
    }

    async fn begin_redis(&self, key: &str, claim: Claim) -> Result<Begin, IdemError> {
        let rkey = self.redis_key(key);
        let fingerprint = claim.0.fingerprint.as_str();
        let mine = claim.json()?;
        let mut set = redis::cmd("SET");
        set.arg(&rkey)
            .arg(&mine)
            .arg("NX")
            .arg("EX")
            .arg(TTL.as_secs());
        let claimed: Option<String> = self.redis_query(set).await?;
        if claimed.is_some() {
            return Ok(Begin::Fresh(claim));
        }
        let mut get = redis::cmd("GET");
        get.arg(&rkey);
        let Some(found) = self.redis_query::<Option<String>>(get).await? else {
            return Ok(Begin::InProgress); // expired in between: try again
        };
        let entry: Entry = serde_json::from_str(&found)
            .map_err(|e| IdemError(format!("unreadable idempotency entry: {e}")))?;
        let decision = decide(&entry, fingerprint, None);
        if decision == Decision::TakeOver {
            let mut cas = redis::cmd("EVAL");
            cas.arg(TAKE_OVER_LUA)
                .arg(1)
                .arg(&rkey)
                .arg(&found)
                .arg(&mine);
            let won: i64 = self.redis_query(cas).await?;
            return Ok(if won == 1 {
                Begin::Fresh(claim)
            } else {
                Begin::InProgress
            });
        }
        match decision {
            Decision::Answer(b) => Ok(b),
            Decision::TakeOver => unreachable!("handled above"),
        }
    }
}

/// Releases a claim [`Idempotency::begin`] may have written when its future is dropped
/// before it returns (only a key still pending under this token is touched).
struct Unclaim {
    store: Arc<Idempotency>,
    key: String,
    token: String,
    armed: bool,
    /// Locked while an embedded claim runs on the blocking pool, which a dropped future does
    /// not stop. (A Redis claim and its release go in order over the one connection.)
    in_flight: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Unclaim {
    fn drop(&mut self) {
        if self.armed {
            let in_flight = Arc::clone(&self.in_flight);
            release_later(
                &self.store,
                std::mem::take(&mut self.key),
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
    key: String,
    token: String,
    after: impl Future<Output = ()> + Send + 'static,
) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let store = Arc::clone(store);
        rt.spawn(async move {
            after.await;
            if let Err(e) = store.settle_token(&key, &token, None).await {
                tracing::warn!(error = %e, "could not release an idempotency key");
            }
        });
    }
}

/// The answer a key will have once its records are committed: set by a request whose numbers
/// are issued and queued (durable mode) before it waits for the commit.
struct Promised {
    /// Resolves once the records are written (true) or given up at shutdown (false).
    committed: std::pin::Pin<Box<dyn Future<Output = bool> + Send>>,
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
/// records are committed if there is one, else by releasing it so that a retry is answered
/// anew rather than told to wait until the claim goes stale.
pub struct Held {
    store: Arc<Idempotency>,
    key: String,
    claim: Claim,
    promise: Promise,
    settled: bool,
}

impl Held {
    pub fn new(store: &Arc<Idempotency>, key: &str, claim: Claim) -> Self {
        Self {
            store: Arc::clone(store),
            key: key.to_owned(),
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
    /// however long it takes (a label run of 1,000 numbers over several block refills), the
    /// key is not taken over as stale while its request still runs.
    pub async fn answering<T>(&self, answer: impl Future<Output = T>) -> T {
        self.answering_every(answer, REFRESH_EVERY).await
    }

    async fn answering_every<T>(&self, answer: impl Future<Output = T>, every: Duration) -> T {
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

    /// Settles the key after the request's answer: a 201 is remembered; any other answer
    /// releases the key, unless an answer was promised (numbers issued, their records queued
    /// but not committed in time), which the key then gets once they are (see
    /// [`Idempotency::complete_after`]). False if the claim was lost meanwhile.
    /// (A promised answer is left to the drop, which hands it to `complete_after`.)
    pub async fn settle(mut self, status: u16, body: &str) -> Result<bool, IdemError> {
        let r = if status == 201 {
            let r = self
                .store
                .complete(&self.key, &self.claim, status, body)
                .await;
            if let Err(e) = &r {
                // The client gets this 201: the key must not go stale and be answered anew.
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
        let (key, claim) = (std::mem::take(&mut self.key), self.claim.clone());
        match self.promise.take() {
            Some(p) => Arc::clone(&self.store).complete_after(key, claim, p),
            None => release_later(&self.store, key, claim.0.claim, async {}),
        }
    }
}

impl Idempotency {
    /// Completes `key` with the promised answer once its records are committed, keeping the
    /// claim alive meanwhile (refreshed at once, then every [`REFRESH_EVERY`]): until then a
    /// retry is told to wait (409), afterwards it gets this answer, never other numbers. If
    /// the records are given up (shutdown), the key is released. Returns at once.
    fn complete_after(self: Arc<Self>, key: String, mut claim: Claim, promised: Promised) {
        let store = Arc::clone(&self);
        let task = async move {
            let Promised {
                mut committed,
                status,
                body,
            } = promised;
            let written = loop {
                match store.refresh(&key, &mut claim).await {
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
            loop {
                let r = if written {
                    store.complete(&key, &claim, status, &body).await
                } else {
                    store.abandon(&key, &claim).await
                };
                match r {
                    Ok(true) => break,
                    Ok(false) => {
                        tracing::error!("an idempotency key was taken over before its answer");
                        break;
                    }
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        tracing::warn!(error = %e, "could not settle an idempotency key; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not settle an idempotency key");
                        break;
                    }
                }
            }
        };
        if let Ok(mut set) = self.deferred.lock() {
            while set.try_join_next().is_some() {}
            set.spawn(task);
        }
    }
}

#[derive(Debug, PartialEq)]
enum Decision {
    Answer(Begin),
    TakeOver,
}

/// What an existing entry means for a request with `fingerprint`. `owner` is this process for
/// the embedded store, where a pending entry of another (dead) process can be taken over.
fn decide(entry: &Entry, fingerprint: &str, owner: Option<&str>) -> Decision {
    if entry.fingerprint != fingerprint {
        return Decision::Answer(Begin::Conflict);
    }
    match (entry.status, &entry.body) {
        (Some(status), Some(body)) => Decision::Answer(Begin::Replay {
            status,
            body: body.clone(),
        }),
        _ => {
            let stale = now_ms().saturating_sub(entry.at_ms) > STALE_PENDING.as_millis() as u64;
            let dead_owner = owner.is_some_and(|o| o != entry.owner);
            if stale || dead_owner {
                Decision::TakeOver
            } else {
                Decision::Answer(Begin::InProgress)
            }
        }
    }
}

fn embedded_err(e: impl std::fmt::Display) -> IdemError {
    IdemError(format!("redb: {e}"))
}

fn begin_embedded(
    db: &Database,
    key: &str,
    fingerprint: &str,
    mine: Claim,
    owner: &str,
) -> Result<Begin, IdemError> {
    let tx = db.begin_write().map_err(embedded_err)?;
    let begin = {
        let mut t = tx.open_table(IDEMPOTENCY).map_err(embedded_err)?;
        let existing: Option<Entry> = t
            .get(key)
            .map_err(embedded_err)?
            .and_then(|v| serde_json::from_slice(v.value()).ok())
            .filter(|e: &Entry| now_ms().saturating_sub(e.at_ms) < TTL.as_millis() as u64);
        match existing.map(|e| decide(&e, fingerprint, Some(owner))) {
            Some(Decision::Answer(b)) => b,
            None | Some(Decision::TakeOver) => {
                t.insert(key, mine.json()?.as_bytes())
                    .map_err(embedded_err)?;
                Begin::Fresh(mine)
            }
        }
    };
    tx.commit().map_err(embedded_err)?;
    Ok(begin)
}

/// [`SETTLE_LUA`] on the embedded store.
fn settle_embedded(
    db: &Database,
    key: &str,
    token: &str,
    new: Option<&str>,
) -> Result<bool, IdemError> {
    let tx = db.begin_write().map_err(embedded_err)?;
    let settled = {
        let mut t = tx.open_table(IDEMPOTENCY).map_err(embedded_err)?;
        let (already, ours) = match t.get(key).map_err(embedded_err)? {
            None => (new.is_none(), false),
            Some(v) => {
                let v = v.value();
                let entry = serde_json::from_slice::<Entry>(v).ok();
                (
                    new.is_some_and(|n| n.as_bytes() == v),
                    entry.is_some_and(|e| e.claim == token && e.status.is_none()),
                )
            }
        };
        if ours {
            match new {
                Some(v) => drop(t.insert(key, v.as_bytes()).map_err(embedded_err)?),
                None => drop(t.remove(key).map_err(embedded_err)?),
            }
        }
        already || ours
    };
    tx.commit().map_err(embedded_err)?;
    Ok(settled)
}

/// Checks an `Idempotency-Key` header value: 1–255 visible ASCII characters.
pub fn valid_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableDatabase;

    fn entry(fp: &str, done: bool, age_ms: u64, owner: &str) -> Entry {
        Entry {
            fingerprint: fp.into(),
            at_ms: now_ms() - age_ms,
            status: done.then_some(201),
            body: done.then(|| "{}".into()),
            owner: owner.into(),
            claim: "c".into(),
        }
    }

    #[test]
    fn a_done_key_replays_and_other_parameters_conflict() {
        let e = entry("a", true, 0, "p");
        assert_eq!(
            decide(&e, "a", None),
            Decision::Answer(Begin::Replay {
                status: 201,
                body: "{}".into()
            })
        );
        assert_eq!(decide(&e, "b", None), Decision::Answer(Begin::Conflict));
    }

    #[test]
    fn pending_keys_wait_unless_stale_or_orphaned() {
        let fresh = entry("a", false, 0, "p");
        assert_eq!(
            decide(&fresh, "a", None),
            Decision::Answer(Begin::InProgress)
        );
        assert_eq!(
            decide(&fresh, "a", Some("p")),
            Decision::Answer(Begin::InProgress)
        );
        assert_eq!(decide(&fresh, "a", Some("q")), Decision::TakeOver);
        let stale = entry("a", false, 31_000, "p");
        assert_eq!(decide(&stale, "a", None), Decision::TakeOver);
    }

    #[test]
    fn keys_are_visible_ascii_up_to_255() {
        assert!(valid_key("order-42:retry"));
        assert!(!valid_key(""));
        assert!(!valid_key("has space"));
        assert!(!valid_key(&"k".repeat(256)));
        assert!(!valid_key("ключ"));
    }

    fn embedded_store(dir: &std::path::Path) -> Arc<Idempotency> {
        let db = Database::create(dir.join("keys.redb")).unwrap();
        Arc::new(Idempotency::embedded(Arc::new(db)))
    }

    async fn begin(store: &Arc<Idempotency>, key: &str) -> Begin {
        store.begin(key, "fp", Duration::ZERO).await.unwrap()
    }

    fn claim(b: Begin) -> Claim {
        match b {
            Begin::Fresh(c) => c,
            other => panic!("not fresh: {other:?}"),
        }
    }

    /// Waits until `key` can be claimed anew (released), or panics.
    async fn until_released(store: &Arc<Idempotency>, key: &str) {
        let start = std::time::Instant::now();
        while begin(store, key).await == Begin::InProgress {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{key} never released"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_dropped_request_releases_its_key_unless_an_answer_was_promised() {
        let dir = tempfile::tempdir().unwrap();
        let store = embedded_store(dir.path());
        let c = claim(begin(&store, "gone").await);
        drop(Held::new(&store, "gone", c));
        until_released(&store, "gone").await;
        // A settled one stays settled.
        let c = claim(begin(&store, "kept").await);
        Held::new(&store, "kept", c)
            .settle(201, "{}")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(begin(&store, "kept").await, Begin::Replay { .. }));
        // Numbers queued before the client went away: the key waits for their commit and
        // answers them.
        let c = claim(begin(&store, "owed").await);
        let held = Held::new(&store, "owed", c);
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
        let store = embedded_store(dir.path());
        for (key, written) in [("later", true), ("given-up", false)] {
            let c = claim(begin(&store, key).await);
            let held = Held::new(&store, key, c);
            let (tx, rx) = tokio::sync::oneshot::channel::<bool>();
            held.promise().set(
                async move { rx.await.unwrap_or(false) },
                201,
                "{\"n\":3}".into(),
            );
            assert!(held.settle(503, "{}").await.unwrap());
            assert_eq!(begin(&store, key).await, Begin::InProgress, "{key}");
            tx.send(written).unwrap();
            store.finish_deferred(Duration::from_secs(5)).await;
            if written {
                assert!(matches!(
                    begin(&store, key).await,
                    Begin::Replay { status: 201, .. }
                ));
            } else {
                until_released(&store, key).await;
            }
        }
    }

    #[tokio::test]
    async fn a_key_is_kept_alive_while_its_request_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = embedded_store(dir.path());
        let c = claim(begin(&store, "slow").await);
        let first = c.0.at_ms;
        let Backend::Embedded(db) = &store.backend else {
            unreachable!()
        };
        let stored_at = || {
            let tx = db.begin_read().unwrap();
            let t = tx.open_table(IDEMPOTENCY).unwrap();
            let v = t.get("slow").unwrap().unwrap();
            serde_json::from_slice::<Entry>(v.value()).unwrap().at_ms
        };
        let held = Held::new(&store, "slow", c);
        let out = held
            .answering_every(
                tokio::time::sleep(Duration::from_millis(300)),
                Duration::from_millis(50),
            )
            .await;
        let _: () = out;
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
        let store = embedded_store(dir.path());
        for _ in 0..20 {
            // Polled once (the claim starts on the blocking pool), then dropped.
            let mut gone = Box::pin(store.begin("k", "fp", Duration::ZERO));
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
            assert!(store.abandon("k", &c).await.unwrap());
        }
    }
}
