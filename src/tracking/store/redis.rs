//! The Redis sequence store: `S` shard counters advanced by one atomic script per block
//! reservation, on a single Redis or a Redis Cluster, shared safely by many trackd instances.
//!
//! Shard `s`'s counter value `c` stands for sequence number `c * S + s`, so numbers from
//! different shards never coincide. Each counter key carries its own hash tag
//! (`<prefix>:seq:{<s>}`), spreading the shards over a cluster's slots.
//!
//! A reservation is used only once it survives a crash of Redis: every connection first
//! checks the server's persistence ([`super::durability`]) and each reservation is confirmed
//! as that requires (the reply of an fsync-always server, `WAIT` for replicas, `WAITAOF`).
//! The script also refuses a missing counter and one below its floor (the highest value this
//! instance, or with deployment floors any instance, saw it reach): both mean Redis lost
//! writes, and issuing from such a counter could repeat numbers. That shard is then taken out
//! of service (logged, shown in `/readyz`) until an operator runs `trackd seq repair`.

use super::durability::{Confirm, RedisFacts, Verdict, decide_redis};
use super::{Block, Floors, ReserveFuture, SequenceStore, StoreError};
use crate::config::{Durability, TrackingSettings, redact_url};
use crate::support::lazy::{Connection, Lazy};
use crate::support::redis::{Conn, breaks_connection, connect};
use crate::support::tls::Tls;
use crate::tracking::number::CODE_SPACE;
use crate::tracking::permute::PermutationKey;
use redis::Script;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Refuses missing and backwards counters; otherwise `INCRBY`. Values are compared as decimal
/// strings (length, then bytes) so that the check stays exact beyond 2^53.
const RESERVE_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return redis.error_reply('TRACKD_MISSING counter ' .. KEYS[1] .. ' does not exist') end
local floor = ARGV[2]
if #v < #floor or (#v == #floor and v < floor) then
  return redis.error_reply('TRACKD_BACKWARDS counter ' .. KEYS[1] .. ' is ' .. v .. ', below ' .. floor .. ' seen before')
end
return redis.call('INCRBY', KEYS[1], ARGV[1])
";

/// Raises a counter to at least ARGV[1] (creating it if missing); returns the new value.
const RAISE_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
local want = ARGV[1]
if (not v) or #v < #want or (#v == #want and v < want) then
  redis.call('SET', KEYS[1], want)
  return want
end
return v
";

/// Settings of the Redis store.
#[derive(Clone)]
pub struct RedisConfig {
    /// One `redis://` URL, or several seed nodes when `cluster` is set.
    pub urls: Vec<String>,
    pub cluster: bool,
    pub prefix: String,
    pub shards: u32,
    pub timeout: Duration,
    /// How acknowledged reservations are known to survive a crash of Redis.
    pub durability: Durability,
    /// Replicas each reservation must reach before its numbers are used.
    pub min_replicas: u32,
    /// Identifies the permutation key (not the key itself) so that instances configured with
    /// different keys cannot share the counters.
    pub key_fingerprint: String,
    pub tls: Tls,
}

impl RedisConfig {
    /// The deployment this configuration names, for its floors.
    pub fn deployment(&self) -> String {
        format!(
            "redis:{}:{}:{}",
            self.prefix, self.key_fingerprint, self.shards
        )
    }
}

/// A connection whose server was checked: its durability verdict comes with it, so every
/// reconnect checks the server again.
struct Session {
    conn: Conn,
    verdict: Verdict,
}

impl Connection for Session {}

/// Health of one shard counter.
#[derive(Debug, Clone)]
struct Shard {
    /// Lowest value the counter may have: what this instance (or, with deployment floors, any
    /// instance) saw it reach.
    seen: u64,
    /// Why the shard is out of service, and when it was last probed.
    out: Option<(String, Instant)>,
}

/// How long an out-of-service shard rests before it is probed again (after a repair it
/// serves again without a restart).
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// What the last connection found, for logs and `/readyz`.
#[derive(Debug, Clone, Default)]
struct ServerStatus {
    relies_on: Option<String>,
    refused: Option<String>,
    /// (run id, replication id) of each node, as last seen.
    identity: Vec<(String, String)>,
}

pub struct RedisStore {
    cfg: RedisConfig,
    session: Lazy<Session>,
    shards: Mutex<(Vec<Shard>, usize)>,
    reserve: Script,
    floors: Floors,
    status: Mutex<ServerStatus>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl RedisStore {
    /// The store of the configuration's `tracking` section, with its floors.
    pub fn from_settings(
        t: &TrackingSettings,
        key: &PermutationKey,
        floors: Floors,
        tls: Tls,
    ) -> Self {
        Self::new(Self::config(t, key, tls), floors)
    }

    /// The store's settings from the configuration's `tracking` section.
    pub fn config(t: &TrackingSettings, key: &PermutationKey, tls: Tls) -> RedisConfig {
        RedisConfig {
            urls: t.redis_urls(),
            cluster: t.redis_cluster,
            prefix: t.redis_key_prefix.clone(),
            shards: t.redis_shards,
            timeout: t.store_timeout,
            durability: t.redis_durability,
            min_replicas: t.redis_min_replicas,
            key_fingerprint: key.fingerprint(),
            tls,
        }
    }

    /// Creates the store; it connects lazily, so trackd starts (not ready) while Redis is down.
    pub fn new(cfg: RedisConfig, floors: Floors) -> Self {
        let n = cfg.shards as usize;
        // Instances start at different shards so their reservations spread.
        let start = crate::support::random::u64() as usize % n;
        let shards = (0..n)
            .map(|i| Shard {
                seen: floors.local.as_ref().map_or(0, |f| f.get(i)),
                out: None,
            })
            .collect();
        Self {
            shards: Mutex::new((shards, start)),
            session: Lazy::new(),
            reserve: Script::new(RESERVE_LUA),
            floors,
            status: Mutex::default(),
            cfg,
        }
    }

    fn counter_key(&self, shard: u32) -> String {
        format!("{}:seq:{{{shard}}}", self.cfg.prefix)
    }

    fn meta_key(&self) -> String {
        format!("{}:meta:{{meta}}", self.cfg.prefix)
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        connect(
            &self.cfg.urls,
            self.cfg.cluster,
            self.cfg.timeout,
            &self.cfg.tls,
        )
        .await
        .map_err(unavailable)
    }

    /// A new session: connected, the deployment record checked, every node's durability
    /// decided, and the deployment's floors read (a counter that went backwards while this
    /// instance was away is refused as well).
    async fn open_session(&self) -> Result<Session, StoreError> {
        let mut conn = self.connect().await?;
        self.check_meta(&mut conn).await?;
        let verdict = match self.check_durability(&mut conn).await {
            Ok(v) => v,
            Err(refusal) => {
                if let Ok(mut st) = self.status.lock()
                    && st.refused.as_ref() != Some(&refusal)
                {
                    tracing::error!(reason = %refusal, "the Redis sequence store is refused");
                    st.refused = Some(refusal.clone());
                    st.relies_on = None;
                }
                return Err(StoreError::Refused(refusal));
            }
        };
        if let Some(d) = &self.floors.deployment {
            let known = d.load().await?;
            if let Ok(mut g) = self.shards.lock() {
                for (i, floor) in known {
                    if let Some(s) = g.0.get_mut(i) {
                        s.seen = s.seen.max(floor);
                    }
                }
            }
        }
        Ok(Session { conn, verdict })
    }

    /// Reads each node's facts and decides; logs what trackd relies on, and a restart or
    /// failover seen since the last connection.
    async fn check_durability(&self, conn: &mut Conn) -> Result<Verdict, String> {
        let mut verdicts = Vec::new();
        let mut identity = Vec::new();
        if self.cfg.cluster {
            for url in &self.cfg.urls {
                let mut node = connect(
                    std::slice::from_ref(url),
                    false,
                    self.cfg.timeout,
                    &self.cfg.tls,
                )
                .await
                .map_err(|e| format!("cannot reach cluster node {}: {e}", redact_url(url)))?;
                let facts = self.facts(&mut node).await?;
                identity.push((facts.run_id.clone(), facts.replid.clone()));
                verdicts.push(decide_redis(
                    &facts,
                    self.cfg.durability,
                    self.cfg.min_replicas,
                    &redact_url(url),
                )?);
            }
        } else {
            let facts = self.facts(conn).await?;
            identity.push((facts.run_id.clone(), facts.replid.clone()));
            let addr = redact_url(self.cfg.urls.first().map_or("", String::as_str));
            verdicts.push(decide_redis(
                &facts,
                self.cfg.durability,
                self.cfg.min_replicas,
                &addr,
            )?);
        }
        let verdict = verdicts.first().cloned().ok_or("no Redis node")?;
        if verdicts.iter().any(|v| v.confirm != verdict.confirm) {
            return Err(
                "the cluster's nodes differ in persistence (some fsync every write, some do not):                  configure them alike"
                    .into(),
            );
        }
        if let Ok(mut st) = self.status.lock() {
            if !st.identity.is_empty() && st.identity != identity {
                tracing::warn!(
                    "the Redis sequence store restarted or failed over since the last connection;                      counters are checked against the floors"
                );
            }
            if st.relies_on.as_ref() != Some(&verdict.relies_on) {
                if self.cfg.durability == Durability::UnsafeMayReissue {
                    tracing::error!(relies_on = %verdict.relies_on, "Redis sequence store durability");
                } else {
                    tracing::info!(relies_on = %verdict.relies_on, "Redis sequence store durability");
                }
            }
            st.relies_on = Some(verdict.relies_on.clone());
            st.refused = None;
            st.identity = identity;
        }
        Ok(verdict)
    }

    /// `INFO` of a node, and `appendfsync` when the node allows `CONFIG` (and it matters).
    async fn facts(&self, conn: &mut Conn) -> Result<RedisFacts, String> {
        let info: String = redis::cmd("INFO")
            .query_async(conn)
            .await
            .map_err(|e| format!("INFO failed: {e}"))?;
        let appendfsync = if self.cfg.durability == Durability::Check {
            let reply: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("appendfsync")
                .query_async(conn)
                .await;
            reply.ok().and_then(|v| v.get(1).cloned())
        } else {
            None
        };
        Ok(RedisFacts::from_info(&info, appendfsync))
    }

    /// Checks that the deployment's recorded shard count and key fingerprint match ours.
    async fn check_meta(&self, conn: &mut Conn) -> Result<(), StoreError> {
        let meta: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.meta_key())
            .arg("shards")
            .arg("key_fingerprint")
            .query_async(conn)
            .await
            .map_err(unavailable)?;
        let (shards, fp) = (
            meta.first().cloned().flatten(),
            meta.get(1).cloned().flatten(),
        );
        let missing = "the deployment record is missing: run `trackd seq init` on a new deployment, \
                       or `trackd seq repair` if Redis lost its data";
        let shards =
            shards.ok_or_else(|| StoreError::Corrupt(format!("{} {missing}", self.meta_key())))?;
        if shards != self.cfg.shards.to_string() {
            return Err(StoreError::Corrupt(format!(
                "Redis records {shards} shards, tracking.redis_shards is {}: changing it would reissue numbers",
                self.cfg.shards
            )));
        }
        if fp.as_deref() != Some(self.cfg.key_fingerprint.as_str()) {
            return Err(StoreError::Corrupt(
                "tracking.permutation_key differs from the key this Redis deployment was initialised with".into(),
            ));
        }
        Ok(())
    }

    /// Confirms a reservation as the verdict requires (on the shard's node): `Err(Ok(why))`
    /// when too few acknowledged it, `Err(Err(e))` when the command failed.
    async fn confirm(
        &self,
        session: &mut Session,
        shard: u32,
    ) -> Result<(), Result<String, redis::RedisError>> {
        let timeout_ms = (self.cfg.timeout / 2).as_millis() as u64;
        let key = self.counter_key(shard);
        match session.verdict.confirm {
            Confirm::Reply => Ok(()),
            Confirm::Wait(n) => {
                let mut cmd = redis::cmd("WAIT");
                cmd.arg(n).arg(timeout_ms);
                let acks: i64 = session.conn.on_node_of(&key, &cmd).await.map_err(Err)?;
                if acks < i64::from(n) {
                    return Err(Ok(format!(
                        "only {acks} of {n} replica(s) acknowledged the reservation within \
                         {timeout_ms} ms: its numbers are skipped"
                    )));
                }
                Ok(())
            }
            Confirm::WaitAof(n) => {
                let mut cmd = redis::cmd("WAITAOF");
                cmd.arg(1).arg(n).arg(timeout_ms);
                let acks: Vec<i64> = session.conn.on_node_of(&key, &cmd).await.map_err(Err)?;
                let (local, replicas) = (
                    acks.first().copied().unwrap_or(0),
                    acks.get(1).copied().unwrap_or(0),
                );
                if local < 1 || replicas < i64::from(n) {
                    return Err(Ok(format!(
                        "WAITAOF: the reservation reached the disk of {local} primary and {replicas} \
                         of {n} replica(s) within {timeout_ms} ms: its numbers are skipped"
                    )));
                }
                Ok(())
            }
        }
    }

    /// Raises the shard's floors (this instance's, then the deployment's) to `end`, durably,
    /// before the block is handed out.
    async fn raise_floors(&self, shard: u32, end: u64) -> Result<(), StoreError> {
        if let Some(local) = &self.floors.local {
            let local = Arc::clone(local);
            tokio::task::spawn_blocking(move || local.raise(shard as usize, end))
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        }
        if let Some(d) = &self.floors.deployment {
            d.raise(shard as usize, end).await?;
        }
        Ok(())
    }

    /// Picks the next shard in service (or due for a probe), round-robin.
    fn pick_shard(&self) -> Result<(u32, u64), StoreError> {
        let mut g = self
            .shards
            .lock()
            .map_err(|_| StoreError::Corrupt("shard table poisoned".into()))?;
        let (shards, next) = &mut *g;
        let n = shards.len();
        for i in 0..n {
            let s = (*next + i) % n;
            let due = match &shards[s].out {
                None => true,
                Some((_, since)) => since.elapsed() >= PROBE_INTERVAL,
            };
            if due {
                *next = (s + 1) % n;
                if let Some((_, since)) = &mut shards[s].out {
                    *since = Instant::now();
                }
                return Ok((s as u32, shards[s].seen));
            }
        }
        let reasons: Vec<String> = shards
            .iter()
            .filter_map(|s| s.out.as_ref().map(|(r, _)| r.clone()))
            .collect();
        Err(StoreError::Corrupt(format!(
            "no shard can serve: {}",
            reasons.first().cloned().unwrap_or_default()
        )))
    }

    fn mark(&self, shard: u32, result: Result<u64, String>) {
        if let Ok(mut g) = self.shards.lock() {
            let s = &mut g.0[shard as usize];
            match result {
                Ok(seen) => {
                    if s.out.take().is_some() {
                        tracing::info!(shard, "shard back in service");
                    }
                    s.seen = s.seen.max(seen);
                }
                Err(reason) => {
                    if s.out.is_none() {
                        tracing::error!(shard, %reason, "shard taken out of service: possible counter loss");
                    }
                    s.out = Some((reason, Instant::now()));
                }
            }
        }
    }

    async fn reserve_inner(&self, count: u64) -> Result<Block, StoreError> {
        let mut slot = self.session.lock().await;
        let session = slot.get(|| self.open_session()).await?;
        let stride = self.cfg.shards as u64;
        for _ in 0..self.cfg.shards {
            let (shard, floor) = self.pick_shard()?;
            let reply: redis::RedisResult<u64> = self
                .reserve
                .key(self.counter_key(shard))
                .arg(count)
                .arg(floor.to_string())
                .invoke_async(&mut session.conn)
                .await;
            match reply {
                Ok(end) => {
                    let start = end.saturating_sub(count);
                    if end.saturating_mul(stride) >= CODE_SPACE {
                        self.mark(
                            shard,
                            Err("shard exhausted its share of the code space".into()),
                        );
                        continue;
                    }
                    // Not confirmed, or its floors not written: the numbers stay reserved
                    // (skipped), never handed out.
                    match self.confirm(session, shard).await {
                        Ok(()) => {}
                        Err(Ok(short)) => return Err(StoreError::Unavailable(short)),
                        Err(Err(e)) => {
                            if breaks_connection(&e) {
                                slot.reset();
                            }
                            return Err(unavailable(e));
                        }
                    }
                    self.raise_floors(shard, end).await?;
                    self.mark(shard, Ok(end));
                    return Ok(Block {
                        first: start * stride + shard as u64,
                        count,
                        stride,
                    });
                }
                Err(e)
                    if e.code() == Some("TRACKD_MISSING")
                        || e.code() == Some("TRACKD_BACKWARDS") =>
                {
                    crate::metrics::store_error("redis", "corrupt");
                    self.mark(shard, Err(e.to_string()));
                }
                Err(e) => {
                    if breaks_connection(&e) {
                        slot.reset();
                    }
                    return Err(unavailable(e));
                }
            }
        }
        Err(StoreError::Corrupt("no shard can serve".into()))
    }

    /// Per-shard health, for `/readyz`.
    pub fn shard_report(&self) -> serde_json::Value {
        let g = match self.shards.lock() {
            Ok(g) => g,
            Err(_) => return serde_json::json!({"error": "poisoned"}),
        };
        let out: Vec<_> =
            g.0.iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    s.out
                        .as_ref()
                        .map(|(r, _)| serde_json::json!({"shard": i, "reason": r}))
                })
                .collect();
        // Every number this instance reserved is below this sequence number: the floor to give
        // `trackd seq repair` (take the highest over all instances).
        let stride = g.0.len() as u64;
        let ceiling =
            g.0.iter()
                .enumerate()
                .map(|(i, s)| s.seen * stride + i as u64)
                .max()
                .unwrap_or(0);
        let status = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        serde_json::json!({
            "shards": g.0.len(),
            "in_service": g.0.len() - out.len(),
            "out_of_service": out,
            "reserved_below": ceiling,
            "durability": status.relies_on,
            "refused": status.refused,
            "deployment_floors": self.floors.deployment.is_some(),
        })
    }

    /// The highest sequence number the counters say may have been reserved (`None`: none).
    pub async fn highest_reserved(&self) -> Result<Option<u64>, StoreError> {
        let mut conn = self.connect().await?;
        let stride = self.cfg.shards as u64;
        let mut highest = None;
        for s in 0..self.cfg.shards {
            let v: Option<u64> = redis::cmd("GET")
                .arg(self.counter_key(s))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if let Some(c) = v.filter(|&c| c > 0) {
                highest = highest.max(Some((c - 1) * stride + s as u64));
            }
        }
        Ok(highest)
    }

    /// The highest sequence number the floors (this instance's and the deployment's) say was
    /// reserved and handed out (`None`: none known).
    pub async fn highest_in_floors(&self) -> Result<Option<u64>, StoreError> {
        let stride = self.cfg.shards as u64;
        let to_seq = |(i, c): (usize, u64)| (c > 0).then(|| (c - 1) * stride + i as u64);
        let mut highest = self
            .floors
            .local
            .as_ref()
            .and_then(|f| f.all().into_iter().enumerate().filter_map(to_seq).max());
        if let Some(d) = &self.floors.deployment {
            highest = highest.max(d.load().await?.into_iter().filter_map(to_seq).max());
        }
        Ok(highest)
    }

    /// `trackd seq init`: records the deployment and creates missing counters at 0.
    /// Refuses if a different shard count or key is already recorded.
    pub async fn init(&self) -> Result<String, StoreError> {
        let mut conn = self.connect().await?;
        let err = unavailable;
        let created: bool = redis::cmd("HSETNX")
            .arg(self.meta_key())
            .arg("shards")
            .arg(self.cfg.shards)
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        let _: bool = redis::cmd("HSETNX")
            .arg(self.meta_key())
            .arg("key_fingerprint")
            .arg(&self.cfg.key_fingerprint)
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        self.check_meta(&mut conn).await?;
        let mut new = 0;
        for s in 0..self.cfg.shards {
            let set: bool = redis::cmd("SET")
                .arg(self.counter_key(s))
                .arg(0)
                .arg("NX")
                .query_async(&mut conn)
                .await
                .map(|v: Option<String>| v.is_some())
                .map_err(err)?;
            new += set as u32;
        }
        Ok(format!(
            "{} deployment record; {new} of {} counters created, the rest kept",
            if created {
                "created"
            } else {
                "kept the existing"
            },
            self.cfg.shards
        ))
    }

    /// `trackd seq repair --floor N`: raises every counter so that all further numbers are
    /// above sequence number `floor`, and restores the deployment record.
    pub async fn repair(&self, floor: u64) -> Result<String, StoreError> {
        let mut conn = self.connect().await?;
        let err = unavailable;
        let _: () = redis::cmd("HSET")
            .arg(self.meta_key())
            .arg("shards")
            .arg(self.cfg.shards)
            .arg("key_fingerprint")
            .arg(&self.cfg.key_fingerprint)
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        let want = floor / self.cfg.shards as u64 + 1;
        let raise = Script::new(RAISE_LUA);
        let mut values = Vec::new();
        for s in 0..self.cfg.shards {
            let v: String = raise
                .key(self.counter_key(s))
                .arg(want.to_string())
                .invoke_async(&mut conn)
                .await
                .map_err(err)?;
            values.push(v);
        }
        Ok(format!(
            "every counter is now at least {want} (numbers continue above sequence {floor}): {}",
            values.join(" ")
        ))
    }
}

impl SequenceStore for RedisStore {
    fn reserve(&self, count: u64) -> ReserveFuture<'_> {
        Box::pin(async move {
            match tokio::time::timeout(self.cfg.timeout * 2, self.reserve_inner(count)).await {
                Ok(r) => r,
                Err(_) => {
                    // The connection may be wedged: start afresh next time.
                    self.session.reset_if_idle();
                    Err(StoreError::Unavailable(
                        "redis did not answer in time".into(),
                    ))
                }
            }
        })
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn report(&self) -> serde_json::Value {
        self.shard_report()
    }
}
