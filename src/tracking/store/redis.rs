//! The Redis sequence store: `S` shard counters advanced by one atomic script per block
//! reservation, on a single Redis or a Redis Cluster, shared safely by many trackd instances.
//!
//! Shard `s`'s counter value `c` stands for sequence number `c * S + s`, so numbers from
//! different shards never coincide. Each counter key carries its own hash tag
//! (`<prefix>:seq:{<s>}`), spreading the shards over a cluster's slots. The reservation script
//! refuses to create a missing counter and refuses a counter that went below the value this
//! instance last saw: both mean Redis lost writes (a restart without persistence, a failover),
//! and issuing from such a counter could repeat numbers. That shard is then taken out of
//! service (logged, shown in `/readyz`) until an operator runs `trackd seq repair`.

use super::{Block, ReserveFuture, SequenceStore, StoreError};
use crate::config::TrackingSettings;
use crate::support::lazy::Lazy;
use crate::support::redis::{Conn, breaks_connection, connect};
use crate::tracking::number::CODE_SPACE;
use crate::tracking::permute::PermutationKey;
use redis::{Script, Value};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
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
    pub wait_aof: bool,
    /// Identifies the permutation key (not the key itself) so that instances configured with
    /// different keys cannot share the counters.
    pub key_fingerprint: String,
}

/// Health of one shard counter.
#[derive(Debug, Clone)]
struct Shard {
    /// Highest counter value this instance has seen (its floor).
    seen: u64,
    /// Why the shard is out of service, and when it was last probed.
    out: Option<(String, Instant)>,
}

/// How long an out-of-service shard rests before it is probed again (after a repair it
/// serves again without a restart).
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

pub struct RedisStore {
    cfg: RedisConfig,
    conn: Lazy<Conn>,
    shards: Mutex<(Vec<Shard>, usize)>,
    reserve: Script,
    /// The server has WAITAOF (checked at connect, when `wait_aof` is set).
    waitaof: AtomicBool,
}

impl RedisStore {
    /// The store of the configuration's `tracking` section.
    pub fn from_settings(t: &TrackingSettings, key: &PermutationKey) -> Self {
        Self::new(RedisConfig {
            urls: t.redis_urls(),
            cluster: t.redis_cluster,
            prefix: t.redis_key_prefix.clone(),
            shards: t.redis_shards,
            timeout: t.store_timeout,
            wait_aof: t.redis_wait_aof,
            key_fingerprint: key.fingerprint(),
        })
    }

    /// Creates the store; it connects lazily, so trackd starts (not ready) while Redis is down.
    pub fn new(cfg: RedisConfig) -> Self {
        let n = cfg.shards as usize;
        // Instances start at different shards so their reservations spread.
        let mut start = [0u8; 2];
        let _ = getrandom::fill(&mut start);
        let start = u16::from_le_bytes(start) as usize % n;
        Self {
            shards: Mutex::new((vec![Shard { seen: 0, out: None }; n], start)),
            conn: Lazy::new(),
            reserve: Script::new(RESERVE_LUA),
            waitaof: AtomicBool::new(false),
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
        connect(&self.cfg.urls, self.cfg.cluster, self.cfg.timeout)
            .await
            .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))
    }

    /// Checks that the deployment's recorded shard count and key fingerprint match ours.
    async fn check_meta(&self, conn: &mut Conn) -> Result<(), StoreError> {
        let meta: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.meta_key())
            .arg("shards")
            .arg("key_fingerprint")
            .query_async(conn)
            .await
            .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
        let (shards, fp) = (
            meta.first().cloned().flatten(),
            meta.get(1).cloned().flatten(),
        );
        let missing = "the deployment record is missing: run `trackd seq init` on a new deployment, \
                       or `trackd seq repair --floor N` if Redis lost its data";
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
        if self.cfg.wait_aof {
            let reply: Result<Value, _> = redis::cmd("COMMAND")
                .arg("INFO")
                .arg("WAITAOF")
                .query_async(conn)
                .await;
            let supported = matches!(reply, Ok(Value::Array(ref v)) if v.iter().any(|x| !matches!(x, Value::Nil)));
            self.waitaof.store(supported, Ordering::Relaxed);
            if !supported && !self.fsyncs_every_write(conn).await {
                return Err(StoreError::Corrupt(
                    "tracking.redis_wait_aof needs WAITAOF (Redis >= 7.2), or a Redis with \
                     appendonly yes and appendfsync always; this server has neither"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Whether the server writes every command to its AOF and fsyncs before replying (then a
    /// reservation's reply already means it is on disk, with no WAITAOF needed).
    async fn fsyncs_every_write(&self, conn: &mut Conn) -> bool {
        let get = |name: &'static str| {
            let mut c = redis::cmd("CONFIG");
            c.arg("GET").arg(name);
            c
        };
        let mut values = Vec::new();
        for name in ["appendonly", "appendfsync"] {
            let v: Result<Vec<String>, _> = get(name).query_async(conn).await;
            values.push(v.ok().and_then(|v| v.get(1).cloned()).unwrap_or_default());
        }
        values[0] == "yes" && values[1] == "always"
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
        let mut slot = self.conn.lock().await;
        let conn = slot
            .get(|| async {
                let mut conn = self.connect().await?;
                self.check_meta(&mut conn).await?;
                Ok::<_, StoreError>(conn)
            })
            .await?;
        let stride = self.cfg.shards as u64;
        for _ in 0..self.cfg.shards {
            let (shard, floor) = self.pick_shard()?;
            let reply: redis::RedisResult<u64> = self
                .reserve
                .key(self.counter_key(shard))
                .arg(count)
                .arg(floor.to_string())
                .invoke_async(conn)
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
                    if self.cfg.wait_aof && self.waitaof.load(Ordering::Relaxed) {
                        let acks: Vec<i64> = redis::cmd("WAITAOF")
                            .arg(1)
                            .arg(0)
                            .arg(self.cfg.timeout.as_millis() as u64)
                            .query_async(conn)
                            .await
                            .map_err(|e| StoreError::Unavailable(format!("redis WAITAOF: {e}")))?;
                        if acks.first().copied().unwrap_or(0) < 1 {
                            // The numbers stay reserved (skipped), never handed out undurable.
                            return Err(StoreError::Unavailable(
                                "WAITAOF: the reservation was not on disk within the timeout (is appendonly on?)".into(),
                            ));
                        }
                    }
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
                    return Err(StoreError::Unavailable(format!("redis: {e}")));
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
        serde_json::json!({
            "shards": g.0.len(),
            "in_service": g.0.len() - out.len(),
            "out_of_service": out,
            "reserved_below": ceiling,
        })
    }

    /// `trackd seq init`: records the deployment and creates missing counters at 0.
    /// Refuses if a different shard count or key is already recorded.
    pub async fn init(&self) -> Result<String, StoreError> {
        let mut conn = self.connect().await?;
        let err = |e: redis::RedisError| StoreError::Unavailable(format!("redis: {e}"));
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
        let err = |e: redis::RedisError| StoreError::Unavailable(format!("redis: {e}"));
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
                    self.conn.reset_if_idle();
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
