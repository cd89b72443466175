//! Unique forever, even when the shared store loses writes: stores that could lose an
//! acknowledged reservation are refused unless opted in; a Redis SIGKILLed and restarted from
//! its AOF, and a failover to a replica, reissue nothing (a negative control shows the failover
//! without replica acknowledgement caught by the floors); an instance restarted after its
//! Redis went backwards refuses that shard; `seq repair` finds its floor; PostgreSQL sessions
//! without durable commits are refused.

use crate::helpers::{ORDER_QUERY, TrackdProcess, seq_of, spawn_app_with};
use crate::servers::{PgDatabase, RedisServer, run_seq};
use serde_json::Value;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trackd::config::{Durability, SequenceStoreKind};

const PATH: &str = "/api/next-tracking-number/";

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// A Redis deployment's environment: small blocks (many reservations), 4 shards.
fn redis_env(url: &str, extra: &[(&str, String)]) -> Vec<(String, String)> {
    let mut e = env(&[
        ("TRACKD_TRACKING__SEQUENCE_STORE", "redis".into()),
        ("TRACKD_TRACKING__REDIS_URL", url.into()),
        ("TRACKD_TRACKING__REDIS_KEY_PREFIX", "u".into()),
        ("TRACKD_TRACKING__REDIS_SHARDS", "4".into()),
        ("TRACKD_TRACKING__BLOCK_MIN", "50".into()),
        ("TRACKD_TRACKING__BLOCK_MAX", "50".into()),
        ("TRACKD_TRACKING__STORE_TIMEOUT_MS", "300".into()),
        ("TRACKD_TRACKING__WAIT_TIMEOUT_MS", "300".into()),
    ]);
    e.extend(env(extra));
    e
}

fn start(dir: &Path, env: &[(String, String)]) -> TrackdProcess {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TrackdProcess::start(dir, &pairs)
}

async fn readyz(client: &reqwest::Client, addr: SocketAddr) -> (u16, Value) {
    let r = client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Every number issued by a load of concurrent clients, and the 503s answered meanwhile.
#[derive(Default)]
struct Tally {
    numbers: Mutex<Vec<String>>,
    unavailable: AtomicUsize,
    failed: AtomicUsize,
}

impl Tally {
    /// The numbers, checked distinct (by sequence); panics naming a number issued twice.
    fn distinct(&self) -> usize {
        let numbers = self.numbers.lock().unwrap();
        let mut seen = HashSet::new();
        for n in numbers.iter() {
            assert!(seen.insert(seq_of(n)), "{n} was issued twice");
        }
        seen.len()
    }
}

/// Clients issuing against whichever addresses `addrs` holds, until `stop`.
fn load(
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    clients: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    (0..clients)
        .map(|w| {
            let (addrs, tally, stop, client) =
                (addrs.clone(), tally.clone(), stop.clone(), client.clone());
            tokio::spawn(async move {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let addr = {
                        let a = addrs.lock().unwrap();
                        a[i % a.len()]
                    };
                    i += 1;
                    match client
                        .get(format!("http://{addr}{PATH}?{ORDER_QUERY}"))
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 201 => {
                            let v: Value = r.json().await.unwrap();
                            let n = v["tracking_number"].as_str().unwrap().to_owned();
                            tally.numbers.lock().unwrap().push(n);
                        }
                        Ok(r) if r.status() == 503 => {
                            tally.unavailable.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Ok(r) => panic!("unexpected {} from {addr}", r.status()),
                        Err(_) => {
                            tally.failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

async fn wait_count(tally: &Tally, at_least: usize, limit: Duration) {
    let t0 = Instant::now();
    while tally.numbers.lock().unwrap().len() < at_least {
        assert!(
            t0.elapsed() < limit,
            "fewer than {at_least} numbers after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_redis_that_can_lose_reservations_is_refused_unless_opted_in() {
    for (name, redis) in [
        ("volatile", RedisServer::start_volatile()),
        ("everysec", RedisServer::start_everysec()),
    ] {
        let data = tempfile::tempdir().unwrap();
        let e = redis_env(&redis.url(), &[]);
        let (ok, out) = run_seq(&["init"], &e, data.path());
        assert!(ok, "{out}");
        let configure = |durability| {
            let url = redis.url();
            move |s: &mut trackd::config::Settings| {
                s.tracking.sequence_store = SequenceStoreKind::Redis;
                s.tracking.redis_url = url.into();
                s.tracking.redis_key_prefix = "u".into();
                s.tracking.redis_shards = 4;
                s.tracking.redis_durability = durability;
            }
        };
        let app = spawn_app_with(configure(Durability::Check)).await;
        let r = app.get(&format!("{PATH}?{ORDER_QUERY}")).await;
        assert_eq!(r.status(), 503, "{name}");
        let (status, body) = readyz(&app.client, app.admin_addr).await;
        assert_eq!(status, 503, "{name}");
        let reason = body["detail"].as_str().unwrap().to_owned();
        let setting = if name == "volatile" {
            "appendonly no"
        } else {
            "appendfsync everysec"
        };
        assert!(
            reason.contains(setting)
                && reason.contains("appendfsync always")
                && reason.contains("tracking.redis_durability"),
            "{name}: {reason}"
        );
        assert_eq!(
            body["checks"]["tracking"]["store_detail"]["refused"]
                .as_str()
                .map(|r| r.contains(setting)),
            Some(true),
            "{body}"
        );
        app.stop().await;
        // The opt-in issues, and says what it relies on.
        let app = spawn_app_with(configure(Durability::UnsafeMayReissue)).await;
        assert_eq!(
            app.get(&format!("{PATH}?{ORDER_QUERY}")).await.status(),
            201
        );
        let (_, body) = readyz(&app.client, app.admin_addr).await;
        let relies = body["checks"]["tracking"]["store_detail"]["durability"].to_string();
        assert!(relies.contains("unsafe-may-reissue"), "{body}");
        app.stop().await;
    }
    // A server that fsyncs every write is relied on, and says so.
    let redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let (ok, out) = run_seq(&["init"], &redis_env(&redis.url(), &[]), data.path());
    assert!(ok, "{out}");
    let url = redis.url();
    let app = spawn_app_with(move |s| {
        s.tracking.sequence_store = SequenceStoreKind::Redis;
        s.tracking.redis_url = url.into();
        s.tracking.redis_key_prefix = "u".into();
        s.tracking.redis_shards = 4;
    })
    .await;
    assert_eq!(
        app.get(&format!("{PATH}?{ORDER_QUERY}")).await.status(),
        201
    );
    let (_, body) = readyz(&app.client, app.admin_addr).await;
    let relies = body["checks"]["tracking"]["store_detail"]["durability"].to_string();
    assert!(relies.contains("appendfsync always (checked)"), "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_sigkilled_under_load_and_restarted_from_its_aof_reissues_nothing() {
    let mut redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let e = redis_env(&redis.url(), &[]);
    let (ok, out) = run_seq(&["init"], &e, tmp.path());
    assert!(ok, "{out}");
    let a = start(&tmp.path().join("a"), &e);
    let addrs = Arc::new(Mutex::new(vec![a.addr]));
    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let workers = load(addrs.clone(), tally.clone(), stop.clone(), 6);
    wait_count(&tally, 3_000, Duration::from_secs(20)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart(); // from its append-only file
    let before = tally.numbers.lock().unwrap().len();
    wait_count(&tally, before + 2_000, Duration::from_secs(20)).await;
    // A fresh instance, which never saw the counters.
    let b = start(&tmp.path().join("b"), &e);
    addrs.lock().unwrap().push(b.addr);
    let before = tally.numbers.lock().unwrap().len();
    wait_count(&tally, before + 3_000, Duration::from_secs(20)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let n = tally.distinct();
    eprintln!(
        "{n} distinct numbers around a Redis SIGKILL; {} answered 503 while it was down",
        tally.unavailable.load(Ordering::Relaxed)
    );
}

/// A primary and a replica; instances A and B on the primary (records, and so deployment
/// floors, in PostgreSQL). The replica is detached (it keeps what it had: a failover to a
/// replica that missed the last writes) while the load goes on, the primary is SIGKILLed, and
/// the instances (A restarted, and a fresh C) are pointed at the promoted replica (which gets
/// a replica of its own). Returns the tally, the numbers issued after the failover, and
/// whether any instance found a shard that went backwards.
async fn failover(min_replicas: u32) -> (Arc<Tally>, usize, bool) {
    let mut primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let db = PgDatabase::create();
    let tmp = tempfile::tempdir().unwrap();
    let extra = [
        (
            "TRACKD_TRACKING__REDIS_MIN_REPLICAS",
            min_replicas.to_string(),
        ),
        ("TRACKD_RECORDS__POSTGRES_URL", db.url()),
    ];
    let on_primary = redis_env(&primary.url(), &extra);
    let (ok, out) = run_seq(&["init"], &on_primary, tmp.path());
    assert!(ok, "{out}");
    let mut a = start(&tmp.path().join("a"), &on_primary);
    let b = start(&tmp.path().join("b"), &on_primary);
    let addrs = Arc::new(Mutex::new(vec![a.addr, b.addr]));
    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let workers = load(addrs.clone(), tally.clone(), stop.clone(), 8);
    wait_count(&tally, 2_000, Duration::from_secs(20)).await;
    // The replica stops receiving writes; the primary keeps taking reservations.
    replica.cmd(&["REPLICAOF", "NO", "ONE"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    primary.kill();
    drop(b);
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(5));
    let _replica_of_new_primary = RedisServer::start_replica_of(&replica);
    // Everyone on the promoted replica: A with its data directory, and a fresh C.
    let on_replica = redis_env(&replica.url(), &extra);
    let a = start(&tmp.path().join("a"), &on_replica);
    let c = start(&tmp.path().join("c"), &on_replica);
    let before = tally.numbers.lock().unwrap().len();
    *addrs.lock().unwrap() = vec![a.addr, c.addr];
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let client = reqwest::Client::new();
    let mut backwards = false;
    for addr in [a.admin, c.admin] {
        let (_, body) = readyz(&client, addr).await;
        let out = &body["checks"]["tracking"]["store_detail"]["out_of_service"];
        backwards |= out.to_string().contains("TRACKD_BACKWARDS");
    }
    let after = tally.numbers.lock().unwrap().len() - before;
    (tally, after, backwards)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_to_a_replica_reissues_nothing_when_reservations_wait_for_it() {
    let (tally, after, backwards) = failover(1).await;
    let n = tally.distinct();
    eprintln!(
        "WAIT 1: {n} distinct numbers ({after} after the failover, from a restarted and a fresh \
         instance); {} answered 503 while no reservation could be confirmed",
        tally.unavailable.load(Ordering::Relaxed)
    );
    assert!(
        tally.unavailable.load(Ordering::Relaxed) > 0,
        "reservations the replica did not have were not used"
    );
    assert!(!backwards, "nothing the replica lacks was handed out");
    assert!(after > 1_000, "issuing went on after the failover: {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_replica_acknowledgement_a_failover_is_caught_by_the_floors() {
    let (tally, after, backwards) = failover(0).await;
    let n = tally.distinct();
    eprintln!(
        "no WAIT: {n} distinct numbers ({after} after the failover); the shards the replica \
         missed were refused: {backwards}"
    );
    assert!(
        backwards,
        "the counters the replica missed are refused (TRACKD_BACKWARDS)"
    );
}

#[tokio::test]
async fn an_instance_restarted_after_its_redis_went_backwards_refuses_that_shard() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let e = redis_env(&redis.url(), &[]);
    let (ok, out) = run_seq(&["init"], &e, tmp.path());
    assert!(ok, "{out}");
    let client = reqwest::Client::new();
    let issue = async |addr: SocketAddr, seen: &mut HashSet<u64>| -> u16 {
        let r = client
            .get(format!("http://{addr}{PATH}?{ORDER_QUERY}"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        if status == 201 {
            let v: Value = r.json().await.unwrap();
            let n = v["tracking_number"].as_str().unwrap();
            assert!(seen.insert(seq_of(n)), "{n} issued twice");
        }
        status
    };
    let dir = tmp.path().join("a");
    let mut seen = HashSet::new();
    let mut a = start(&dir, &e);
    for _ in 0..600 {
        assert_eq!(issue(a.addr, &mut seen).await, 201);
    }
    a.signal("TERM");
    a.wait_exit(Duration::from_secs(10));
    // Redis lost shard 2's writes while the instance was down.
    redis.cmd(&["SET", "u:seq:{2}", "1"]);
    let a = start(&dir, &e);
    for _ in 0..600 {
        assert_eq!(
            issue(a.addr, &mut seen).await,
            201,
            "the other shards serve"
        );
    }
    let (_, body) = readyz(&client, a.admin).await;
    let out = &body["checks"]["tracking"]["store_detail"]["out_of_service"];
    assert_eq!(out[0]["shard"], 2, "{body}");
    assert!(out.to_string().contains("TRACKD_BACKWARDS"), "{body}");
    // Numbers of the lowered shard are never issued again.
    assert!(seen.iter().filter(|s| *s % 4 == 2).count() > 0);
}

#[tokio::test]
async fn seq_repair_finds_the_floor_and_refuses_a_lower_one() {
    let redis = RedisServer::start();
    let db = PgDatabase::create();
    let tmp = tempfile::tempdir().unwrap();
    let e = redis_env(&redis.url(), &[("TRACKD_RECORDS__POSTGRES_URL", db.url())]);
    let (ok, out) = run_seq(&["init"], &e, tmp.path());
    assert!(ok, "{out}");
    let mut a = start(&tmp.path().join("a"), &e);
    let client = reqwest::Client::new();
    let mut highest = 0;
    for _ in 0..300 {
        let v: Value = client
            .get(a.url(&format!("{PATH}?{ORDER_QUERY}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        highest = highest.max(seq_of(v["tracking_number"].as_str().unwrap()));
    }
    // A clean stop writes every queued record to PostgreSQL (records are `async`: a SIGKILL could
    // leave the last batch unwritten, and repair could then find no record at all).
    a.signal("TERM");
    assert_eq!(a.wait_exit(Duration::from_secs(30)), Some(0));
    drop(a);
    // Redis loses everything.
    redis.cmd(&["FLUSHALL"]);
    let (ok, out) = run_seq(&["repair", "--floor", "3"], &e, tmp.path());
    assert!(!ok, "a floor below what was issued is refused: {out}");
    assert!(out.contains("--floor 3 is below sequence"), "{out}");
    let (ok, out) = run_seq(&["repair"], &e, tmp.path());
    assert!(ok, "{out}");
    assert!(
        out.contains("records in PostgreSQL: highest sequence"),
        "{out}"
    );
    assert!(out.contains("deployment's"), "{out}");
    // Whatever it found, it is at least what was issued, and numbers continue above it.
    let floor: u64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.trim_end_matches([';', ',']).parse().ok())
        .unwrap_or_else(|| panic!("no floor in: {out}"));
    assert!(floor >= highest, "{floor} < {highest}: {out}");
    let a = start(&tmp.path().join("a"), &e);
    let v: Value = client
        .get(a.url(&format!("{PATH}?{ORDER_QUERY}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(seq_of(v["tracking_number"].as_str().unwrap()) > floor);
}

#[tokio::test]
async fn a_postgres_session_without_durable_commits_is_refused_unless_opted_in() {
    let db = PgDatabase::create();
    db.execute(&format!(
        "ALTER DATABASE {} SET synchronous_commit = off",
        db.name
    ));
    let tmp = tempfile::tempdir().unwrap();
    let e = env(&[
        ("TRACKD_TRACKING__SEQUENCE_STORE", "postgres".into()),
        ("TRACKD_TRACKING__POSTGRES_URL", db.url()),
    ]);
    let (ok, out) = run_seq(&["init"], &e, tmp.path());
    assert!(ok, "{out}");
    for durability in [Durability::Check, Durability::UnsafeMayReissue] {
        let url = db.url();
        let app = spawn_app_with(move |s| {
            s.tracking.sequence_store = SequenceStoreKind::Postgres;
            s.tracking.postgres_url = url.into();
            s.tracking.postgres_durability = durability;
        })
        .await;
        let status = app.get(&format!("{PATH}?{ORDER_QUERY}")).await.status();
        let (_, body) = readyz(&app.client, app.admin_addr).await;
        if durability == Durability::Check {
            assert_eq!(status, 503);
            let reason = body["detail"].as_str().unwrap_or_default();
            assert!(
                reason.contains("synchronous_commit = off")
                    && reason.contains("tracking.postgres_durability"),
                "{body}"
            );
        } else {
            assert_eq!(status, 201, "{body}");
        }
        app.stop().await;
    }
}
