//! The shared sequence stores against real servers: three trackd processes on one Redis, on a
//! Redis Cluster and on PostgreSQL (one SIGKILLed and restarted mid-run), counter loss and
//! `seq repair`, and a Redis outage under load.

use crate::helpers::{ORDER_QUERY, TrackdProcess, seq_of, spawn_app_with};
use crate::servers::{PgDatabase, RedisCluster, RedisServer, run_seq};
use serde_json::Value;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trackd::config::{SequenceStoreKind, Settings};
use trackd::tracking::number::TrackingNumber;

const PATH: &str = "/api/next-tracking-number/";

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn redis_env(url: String, cluster: bool) -> Vec<(String, String)> {
    env(&[
        ("TRACKD_TRACKING__SEQUENCE_STORE", "redis".into()),
        ("TRACKD_TRACKING__REDIS_URL", url),
        ("TRACKD_TRACKING__REDIS_CLUSTER", cluster.to_string()),
        ("TRACKD_TRACKING__REDIS_KEY_PREFIX", "t3".into()),
        // Small blocks: many reservations, so the processes interleave on the shards.
        ("TRACKD_TRACKING__BLOCK_MIN", "50".into()),
        ("TRACKD_TRACKING__BLOCK_MAX", "2000".into()),
    ])
}

/// The environment of `trackd seq` for a test's Redis with `shards` counters.
fn seq_env(redis: &RedisServer, shards: u32) -> Vec<(String, String)> {
    env(&[
        ("TRACKD_TRACKING__SEQUENCE_STORE", "redis".into()),
        ("TRACKD_TRACKING__REDIS_URL", redis.url()),
        ("TRACKD_TRACKING__REDIS_KEY_PREFIX", "t3".into()),
        ("TRACKD_TRACKING__REDIS_SHARDS", shards.to_string()),
    ])
}

fn pg_env(url: String) -> Vec<(String, String)> {
    env(&[
        ("TRACKD_TRACKING__SEQUENCE_STORE", "postgres".into()),
        ("TRACKD_TRACKING__POSTGRES_URL", url),
        ("TRACKD_TRACKING__BLOCK_MIN", "50".into()),
        ("TRACKD_TRACKING__BLOCK_MAX", "2000".into()),
    ])
}

fn start(dir: &std::path::Path, env: &[(String, String)]) -> TrackdProcess {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TrackdProcess::start(dir, &pairs)
}

/// Three trackd processes share one store; `total` numbers are requested by concurrent
/// clients, and process 0 is SIGKILLed and restarted half-way. Every 201 must carry a valid,
/// never-seen number.
async fn three_processes_issue_distinct_numbers(env: Vec<(String, String)>, total: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..3).map(|i| tmp.path().join(format!("p{i}"))).collect();
    let (ok, out) = run_seq(&["init"], &env, &dirs[0]);
    assert!(ok, "seq init failed: {out}");
    let mut procs: Vec<TrackdProcess> = dirs.iter().map(|d| start(d, &env)).collect();
    let addrs: Arc<Mutex<Vec<SocketAddr>>> =
        Arc::new(Mutex::new(procs.iter().map(|p| p.addr).collect()));

    let received = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let issued = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut workers = Vec::new();
    for w in 0..12usize {
        let (addrs, received, issued, failures, client) = (
            addrs.clone(),
            received.clone(),
            issued.clone(),
            failures.clone(),
            client.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut i = w;
            while issued.load(Ordering::Relaxed) < total {
                let addr = addrs.lock().unwrap()[i % 3];
                i += 1;
                match client
                    .get(format!("http://{addr}{PATH}?{ORDER_QUERY}"))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 201 => {
                        let v: Value = r.json().await.expect("201 body");
                        mine.push(v["tracking_number"].as_str().unwrap().to_owned());
                        issued.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => panic!("unexpected {} from {addr}", r.status()),
                    // The killed process: its connections fail until it is back.
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            received.lock().unwrap().extend(mine);
        }));
    }
    while issued.load(Ordering::Relaxed) < total / 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    procs[0].signal("KILL");
    procs[0].wait_exit(Duration::from_secs(5));
    let dir0 = dirs[0].clone();
    let env0 = env.clone();
    procs[0] = tokio::task::spawn_blocking(move || start(&dir0, &env0))
        .await
        .unwrap();
    addrs.lock().unwrap()[0] = procs[0].addr;
    for w in workers {
        w.await.unwrap();
    }

    let received = received.lock().unwrap();
    assert!(received.len() >= total);
    let mut seqs = HashSet::with_capacity(received.len());
    for n in received.iter() {
        let parsed = TrackingNumber::parse(n).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(&n[..4], "MYID");
        assert!(
            seqs.insert(seq_of(parsed.as_str())),
            "{n} was issued twice (sequence {})",
            seq_of(n)
        );
    }
    eprintln!(
        "{} distinct numbers from 3 processes, {} failed connections around the SIGKILL",
        seqs.len(),
        failures.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_on_one_redis_with_a_sigkill_issue_300k_distinct_numbers() {
    let redis = RedisServer::start();
    three_processes_issue_distinct_numbers(redis_env(redis.url(), false), 300_000).await;
    // One script call per block, not per number.
    let calls: u64 = redis
        .command_calls()
        .iter()
        .filter(|(c, _)| c == "evalsha" || c == "eval")
        .map(|(_, n)| n)
        .sum();
    assert!(
        calls < 300_000 / 10,
        "{calls} reservations for 300k numbers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_on_a_redis_cluster_with_a_sigkill_issue_300k_distinct_numbers() {
    let cluster = RedisCluster::start();
    three_processes_issue_distinct_numbers(redis_env(cluster.urls(), true), 300_000).await;
    let per_node = cluster.keys_per_node("t3:seq:*");
    assert_eq!(per_node.iter().sum::<usize>(), 16, "{per_node:?}");
    assert!(
        per_node.iter().all(|&k| k > 0),
        "the shard counters spread over every master: {per_node:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_on_postgres_with_a_sigkill_issue_300k_distinct_numbers() {
    let db = PgDatabase::create();
    three_processes_issue_distinct_numbers(pg_env(db.url()), 300_000).await;
}

fn redis_settings(url: String) -> impl FnOnce(&mut Settings) {
    move |s: &mut Settings| {
        s.tracking.sequence_store = SequenceStoreKind::Redis;
        s.tracking.redis_url = url.into();
        s.tracking.redis_key_prefix = "t3".into();
        s.tracking.redis_shards = 4;
        s.tracking.block_min = 20;
        s.tracking.block_max = 20;
        s.tracking.store_timeout = Duration::from_millis(200);
        s.tracking.wait_timeout = Duration::from_millis(300);
    }
}

async fn get_issue(client: &reqwest::Client, addr: SocketAddr) -> reqwest::Response {
    client
        .get(format!("http://{addr}{PATH}?{ORDER_QUERY}"))
        .send()
        .await
        .expect("trackd answers")
}

async fn readyz(client: &reqwest::Client, addr: SocketAddr) -> (u16, Value) {
    let r = client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Issues until the first non-201 (at most `limit`), adding every number to `seen`.
async fn issue_until_refused(
    client: &reqwest::Client,
    addr: SocketAddr,
    seen: &mut HashSet<u64>,
    limit: usize,
) -> reqwest::Response {
    for _ in 0..limit {
        let r = get_issue(client, addr).await;
        if r.status() != 201 {
            return r;
        }
        let v: Value = r.json().await.unwrap();
        let n = v["tracking_number"].as_str().unwrap();
        assert!(seen.insert(seq_of(n)), "{n} reused");
    }
    panic!("still issuing after {limit} numbers");
}

async fn wait_for_201(client: &reqwest::Client, addr: SocketAddr, within: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let r = get_issue(client, addr).await;
        if r.status() == 201 {
            let v: Value = r.json().await.unwrap();
            return v["tracking_number"].as_str().unwrap().to_owned();
        }
        assert!(t0.elapsed() < within, "not serving again within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `trackd seq repair --floor FLOOR`; the app then issues again, above the floor.
async fn repair_then_issue_above(
    app: &crate::helpers::TestApp,
    seq_env: &[(String, String)],
    dir: &std::path::Path,
    floor: u64,
    seen: &mut HashSet<u64>,
) {
    let (ok, out) = run_seq(&["repair", "--floor", &floor.to_string()], seq_env, dir);
    assert!(ok, "{out}");
    let n = wait_for_201(&app.client, app.addr, Duration::from_secs(5)).await;
    assert!(seq_of(&n) > floor && seen.insert(seq_of(&n)), "{n}");
}

#[tokio::test]
async fn redis_restarted_empty_gives_503_never_a_reused_number_and_repair_recovers() {
    let mut redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let seq_env = seq_env(&redis, 4);
    // Before `seq init`, trackd refuses to invent counters.
    let app = spawn_app_with(redis_settings(redis.url())).await;
    let r = get_issue(&app.client, app.addr).await;
    assert_eq!(r.status(), 503);
    let (status, body) = readyz(&app.client, app.admin_addr).await;
    assert_eq!(status, 503);
    assert!(body.to_string().contains("seq init"), "{body}");

    let (ok, out) = run_seq(&["init"], &seq_env, data.path());
    assert!(ok, "{out}");
    let mut seen = HashSet::new();
    wait_for_201(&app.client, app.addr, Duration::from_secs(5)).await;
    for _ in 0..500 {
        seen.insert(seq_of(&app.issue().await));
    }

    redis.restart_empty();
    // The numbers already in hand may still be served; then 503, never a number from a
    // counter that started again at zero.
    let r = issue_until_refused(&app.client, app.addr, &mut seen, 100).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let (status, body) = readyz(&app.client, app.admin_addr).await;
    assert_eq!(status, 503, "{body}");
    let detail = &body["checks"]["tracking"]["store_detail"];
    // Either the deployment record or the counters are found missing, depending on whether
    // the connection was re-established before the next reservation.
    let text = body.to_string();
    assert!(
        text.contains("TRACKD_MISSING") || text.contains("deployment record is missing"),
        "{body}"
    );
    // Still refused a moment later: the missing counters are not recreated behind our back.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get_issue(&app.client, app.addr).await.status(), 503);
    assert_eq!(redis.cmd(&["EXISTS", "t3:seq:{0}"]), "0");

    // The operator repairs with the floor the instance reports.
    let floor = detail["reserved_below"].as_u64().unwrap();
    assert!(seen.iter().all(|&s| s < floor));
    repair_then_issue_above(&app, &seq_env, data.path(), floor, &mut seen).await;
    for _ in 0..200 {
        let s = seq_of(&app.issue().await);
        assert!(s > floor && seen.insert(s));
    }
    assert_eq!(readyz(&app.client, app.admin_addr).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_counter_that_went_backwards_is_taken_out_of_service() {
    let redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let seq_env = seq_env(&redis, 1);
    let (ok, out) = run_seq(&["init"], &seq_env, data.path());
    assert!(ok, "{out}");
    let app = spawn_app_with(|s| {
        redis_settings(redis.url())(s);
        s.tracking.redis_shards = 1;
    })
    .await;
    let mut seen = HashSet::new();
    for _ in 0..100 {
        seen.insert(seq_of(&app.issue().await));
    }
    // A failover to a replica that missed writes: the counter is lower than we saw.
    redis.cmd(&["SET", "t3:seq:{0}", "1"]);
    let r = issue_until_refused(&app.client, app.addr, &mut seen, 100).await;
    assert_eq!(r.status(), 503);
    let (status, body) = readyz(&app.client, app.admin_addr).await;
    assert_eq!(status, 503);
    assert!(body.to_string().contains("TRACKD_BACKWARDS"), "{body}");
    let floor = body["checks"]["tracking"]["store_detail"]["reserved_below"]
        .as_u64()
        .unwrap();
    repair_then_issue_above(&app, &seq_env, data.path(), floor, &mut seen).await;
    app.stop().await;
}

/// When an answer arrived, its status, its number (for a 201) and how long it took.
type Answer = (Instant, u16, Option<String>, Duration);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped_under_load_gives_503_then_201_within_a_second_of_its_return() {
    let mut redis = RedisServer::start_durable();
    let data = tempfile::tempdir().unwrap();
    let seq_env = seq_env(&redis, 4);
    let (ok, out) = run_seq(&["init"], &seq_env, data.path());
    assert!(ok, "{out}");
    let app = spawn_app_with(redis_settings(redis.url())).await;
    wait_for_201(&app.client, app.addr, Duration::from_secs(5)).await;

    // (instant, status, number) of every answer, from 6 concurrent clients.
    let log: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (log, stop, client, addr) = (log.clone(), stop.clone(), app.client.clone(), app.addr);
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = get_issue(&client, addr).await;
                let status = r.status().as_u16();
                let number = if status == 201 {
                    let v: Value = r.json().await.unwrap();
                    Some(v["tracking_number"].as_str().unwrap().to_owned())
                } else {
                    assert_eq!(status, 503);
                    assert!(r.headers().contains_key("retry-after"));
                    None
                };
                log.lock()
                    .unwrap()
                    .push((Instant::now(), status, number, t.elapsed()));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(readyz(&app.client, app.admin_addr).await.0, 503);
    redis.restart(); // returns once Redis answers PING
    let back = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(readyz(&app.client, app.admin_addr).await.0, 200);

    let log = std::mem::take(&mut *log.lock().unwrap());
    let refused = log
        .iter()
        .filter(|(t, s, _, _)| *s == 503 && *t > down && *t < back)
        .count();
    assert!(refused > 0, "503s while Redis was down");
    let slowest = log.iter().map(|e| e.3).max().unwrap();
    assert!(
        slowest < Duration::from_millis(1500),
        "no request hangs: slowest {slowest:?}"
    );
    let first_after = log
        .iter()
        .filter(|(t, s, _, _)| *s == 201 && *t > back)
        .map(|e| e.0)
        .min()
        .expect("201s after Redis came back");
    let gap = first_after - back;
    assert!(gap < Duration::from_secs(1), "served again after {gap:?}");
    let mut seen = HashSet::new();
    for n in log.iter().filter_map(|e| e.2.as_deref()) {
        assert!(seen.insert(seq_of(n)), "{n} issued twice");
    }
    eprintln!(
        "{} numbers, {refused} refused while down, first 201 {gap:?} after Redis returned, slowest answer {slowest:?}",
        seen.len()
    );
    app.stop().await;
}
