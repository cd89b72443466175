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
}

/// What to do with a request carrying a key.
#[derive(Debug, PartialEq)]
pub enum Begin {
    /// First use: answer it, then [`Idempotency::complete`] (or [`Idempotency::abandon`]).
    Fresh,
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
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn process_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Takes over a pending key only if it still holds exactly what we read.
const CAS_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
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
            owner: process_id(),
        }
    }

    pub fn embedded(db: Arc<Database>) -> Self {
        Self {
            backend: Backend::Embedded(db),
            owner: process_id(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Redis { .. } => "redis",
            Backend::Embedded(_) => "embedded",
        }
    }

    fn pending(&self, fingerprint: &str) -> Entry {
        Entry {
            fingerprint: fingerprint.to_owned(),
            at_ms: now_ms(),
            status: None,
            body: None,
            owner: self.owner.clone(),
        }
    }

    /// Decides what a request with `key` and these parameters gets; a `Fresh` answer claims the
    /// key. Waits up to `wait` for a first request still in progress.
    pub async fn begin(
        &self,
        key: &str,
        fingerprint: &str,
        wait: Duration,
    ) -> Result<Begin, IdemError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let outcome = match &self.backend {
                Backend::Redis { .. } => self.begin_redis(key, fingerprint).await?,
                Backend::Embedded(db) => {
                    let db = Arc::clone(db);
                    let (key, entry, owner) = (
                        key.to_owned(),
                        self.pending(fingerprint),
                        self.owner.clone(),
                    );
                    tokio::task::spawn_blocking(move || begin_embedded(&db, &key, entry, &owner))
                        .await
                        .map_err(|e| IdemError(e.to_string()))??
                }
            };
            if outcome != Begin::InProgress || tokio::time::Instant::now() >= deadline {
                return Ok(outcome);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Remembers the answer of a `Fresh` request.
    pub async fn complete(
        &self,
        key: &str,
        fingerprint: &str,
        status: u16,
        body: &str,
    ) -> Result<(), IdemError> {
        let entry = Entry {
            status: Some(status),
            body: Some(body.to_owned()),
            ..self.pending(fingerprint)
        };
        let value = serde_json::to_string(&entry).map_err(|e| IdemError(e.to_string()))?;
        match &self.backend {
            Backend::Redis { .. } => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(self.redis_key(key)).arg(value).arg("KEEPTTL");
                self.redis_query::<()>(cmd).await
            }
            Backend::Embedded(db) => {
                let (db, key) = (Arc::clone(db), key.to_owned());
                tokio::task::spawn_blocking(move || put_embedded(&db, &key, Some(&value)))
                    .await
                    .map_err(|e| IdemError(e.to_string()))?
            }
        }
    }

    /// Releases a `Fresh` key whose request failed (a 503), so that a retry is answered anew.
    pub async fn abandon(&self, key: &str) -> Result<(), IdemError> {
        match &self.backend {
            Backend::Redis { .. } => {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(self.redis_key(key));
                self.redis_query::<()>(cmd).await
            }
            Backend::Embedded(db) => {
                let (db, key) = (Arc::clone(db), key.to_owned());
                tokio::task::spawn_blocking(move || put_embedded(&db, &key, None))
                    .await
                    .map_err(|e| IdemError(e.to_string()))?
            }
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

    async fn begin_redis(&self, key: &str, fingerprint: &str) -> Result<Begin, IdemError> {
        let rkey = self.redis_key(key);
        let mine = serde_json::to_string(&self.pending(fingerprint))
            .map_err(|e| IdemError(e.to_string()))?;
        let mut set = redis::cmd("SET");
        set.arg(&rkey)
            .arg(&mine)
            .arg("NX")
            .arg("EX")
            .arg(TTL.as_secs());
        let claimed: Option<String> = self.redis_query(set).await?;
        if claimed.is_some() {
            return Ok(Begin::Fresh);
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
            cas.arg(CAS_LUA).arg(1).arg(&rkey).arg(&found).arg(&mine);
            let won: i64 = self.redis_query(cas).await?;
            return Ok(if won == 1 {
                Begin::Fresh
            } else {
                Begin::InProgress
            });
        }
        Ok(decision.into_begin())
    }
}

#[derive(Debug, PartialEq)]
enum Decision {
    Answer(Begin),
    TakeOver,
}

impl Decision {
    fn into_begin(self) -> Begin {
        match self {
            Decision::Answer(b) => b,
            Decision::TakeOver => Begin::Fresh,
        }
    }
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

fn begin_embedded(db: &Database, key: &str, mine: Entry, owner: &str) -> Result<Begin, IdemError> {
    let tx = db.begin_write().map_err(embedded_err)?;
    let begin = {
        let mut t = tx.open_table(IDEMPOTENCY).map_err(embedded_err)?;
        let existing: Option<Entry> = t
            .get(key)
            .map_err(embedded_err)?
            .and_then(|v| serde_json::from_slice(v.value()).ok())
            .filter(|e: &Entry| now_ms().saturating_sub(e.at_ms) < TTL.as_millis() as u64);
        let decision = match &existing {
            None => Decision::TakeOver,
            Some(e) => decide(e, &mine.fingerprint, Some(owner)),
        };
        if decision == Decision::TakeOver {
            let v = serde_json::to_vec(&mine).map_err(embedded_err)?;
            t.insert(key, v.as_slice()).map_err(embedded_err)?;
        }
        decision.into_begin()
    };
    tx.commit().map_err(embedded_err)?;
    Ok(begin)
}

fn put_embedded(db: &Database, key: &str, value: Option<&str>) -> Result<(), IdemError> {
    let tx = db.begin_write().map_err(embedded_err)?;
    {
        let mut t = tx.open_table(IDEMPOTENCY).map_err(embedded_err)?;
        match value {
            Some(v) => {
                t.insert(key, v.as_bytes()).map_err(embedded_err)?;
            }
            None => {
                t.remove(key).map_err(embedded_err)?;
            }
        }
    }
    tx.commit().map_err(embedded_err)
}

/// Checks an `Idempotency-Key` header value: 1–255 visible ASCII characters.
pub fn valid_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fp: &str, done: bool, age_ms: u64, owner: &str) -> Entry {
        Entry {
            fingerprint: fp.into(),
            at_ms: now_ms() - age_ms,
            status: done.then_some(201),
            body: done.then(|| "{}".into()),
            owner: owner.into(),
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
}
