//! Keys in Redis (single server or Cluster), shared by every instance: `<prefix>:idem:<key>`
//! holds the [`Entry`] as JSON, claimed with `SET NX EX 86400` (Redis expires it), taken
//! over and settled by Lua compare-and-set scripts.

use super::entry::{Decision, Entry, TTL, decide};
use super::{Backend, BackendFuture, Begin, Claim, IdemError, InFlight, Key};
use crate::support::lazy::Lazy;
use crate::support::redis::{Conn, breaks_connection, connect};
use crate::support::tls::Tls;
use std::time::Duration;

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
if not ok or type(e) ~= 'table' or e.claim ~= ARGV[1] then return 0 end
if e.status ~= nil and e.status ~= cjson.null then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
end
return 1
";

pub struct RedisKeys {
    urls: Vec<String>,
    cluster: bool,
    prefix: String,
    timeout: Duration,
    tls: Tls,
    conn: Lazy<Conn>,
}

impl RedisKeys {
    pub fn new(
        urls: Vec<String>,
        cluster: bool,
        prefix: &str,
        timeout: Duration,
        tls: Tls,
    ) -> Self {
        Self {
            urls,
            cluster,
            prefix: prefix.to_owned(),
            timeout,
            tls,
            conn: Lazy::new(),
        }
    }

    fn redis_key(&self, key: &Key) -> String {
        format!("{}:idem:{}", self.prefix, key.as_str())
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, IdemError> {
        let mut slot = self.conn.lock().await;
        let c = slot
            .get(|| connect(&self.urls, self.cluster, self.timeout, &self.tls))
            .await
            .map_err(|e| IdemError(format!("redis: {e}")))?;
        match tokio::time::timeout(self.timeout * 2, cmd.query_async::<T>(c)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if breaks_connection(&e) {
                    slot.reset();
                }
                Err(IdemError(format!("redis: {e}")))
            }
            Err(_) => {
                slot.reset();
                Err(IdemError("redis did not answer in time".into()))
            }
        }
    }

    async fn begin_inner(&self, key: &Key, mine: &Entry) -> Result<Begin, IdemError> {
        let rkey = self.redis_key(key);
        let mine_json = mine.to_json();
        let mut set = redis::cmd("SET");
        set.arg(&rkey)
            .arg(&mine_json)
            .arg("NX")
            .arg("EX")
            .arg(TTL.as_secs());
        let claimed: Option<String> = self.query(set).await?;
        if claimed.is_some() {
            return Ok(Begin::Fresh(Claim(mine.clone())));
        }
        let mut get = redis::cmd("GET");
        get.arg(&rkey);
        let Some(found) = self.query::<Option<String>>(get).await? else {
            return Ok(Begin::InProgress); // expired in between: try again
        };
        let entry = Entry::from_json(found.as_bytes())
            .ok_or_else(|| IdemError(format!("unreadable idempotency entry at {rkey}")))?;
        match decide(&entry, &mine.fingerprint, None) {
            Decision::Answer(b) => Ok(b),
            Decision::TakeOver => {
                let mut cas = redis::cmd("EVAL");
                cas.arg(TAKE_OVER_LUA)
                    .arg(1)
                    .arg(&rkey)
                    .arg(&found)
                    .arg(&mine_json);
                let won: i64 = self.query(cas).await?;
                Ok(if won == 1 {
                    Begin::Fresh(Claim(mine.clone()))
                } else {
                    Begin::InProgress
                })
            }
        }
    }
}

impl Backend for RedisKeys {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn begin<'a>(
        &'a self,
        key: &'a Key,
        mine: &'a Entry,
        _in_flight: InFlight,
    ) -> BackendFuture<'a, Begin> {
        // Claim and release go in order over the one connection.
        Box::pin(self.begin_inner(key, mine))
    }

    fn settle<'a>(
        &'a self,
        key: &'a Key,
        token: &'a str,
        new: Option<&'a Entry>,
    ) -> BackendFuture<'a, bool> {
        Box::pin(async move {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(SETTLE_LUA)
                .arg(1)
                .arg(self.redis_key(key))
                .arg(token)
                .arg(new.map(Entry::to_json).unwrap_or_default());
            Ok(self.query::<i64>(cmd).await? == 1)
        })
    }
}
