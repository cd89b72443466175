//! Issuance records, lookup, batch issuance and idempotent retries, against real PostgreSQL
//! and Redis: every number found in the records with its exact order data, in both modes and
//! across a SIGKILL in durable mode.

use crate::helpers::{ORDER_QUERY, TrackdProcess, order_body, permutation, spawn_app_with};
use crate::servers::{PgDatabase, PrivatePostgres, RedisServer, run_seq};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trackd::config::RecordsMode;
use trackd::tracking::country::CountryCode;
use trackd::tracking::number::TrackingNumber;

/// The order data a client sent, as the record must hold it.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    origin: String,
    destination: String,
    weight: String,
    customer_id: String,
    customer_name: String,
    customer_slug: String,
    order_created_at: Option<String>,
}

const COUNTRIES: [&str; 6] = ["MY", "ID", "SG", "DE", "US", "JP"];
const NAMES: [&str; 4] = [
    "RedBox Logistics",
    "Łódź Paczki sp. z o.o.",
    "東京配送",
    "A & B",
];

/// A varied order for request `i`, as a query string and as what the record must show.
fn order(i: usize) -> (String, Sent) {
    let sent = Sent {
        origin: COUNTRIES[i % 6].into(),
        destination: COUNTRIES[(i / 6) % 6].into(),
        weight: format!("{}.{:03}", i % 50 + 1, (i * 7) % 1000),
        customer_id: format!("de619854-b59b-425e-9db4-{:012x}", i % 1000),
        customer_name: NAMES[i % 4].into(),
        customer_slug: format!("customer-{}", i % 97),
        order_created_at: i
            .is_multiple_of(3)
            .then(|| "2018-11-20T11:29:32.000000Z".to_owned()),
    };
    let mut q = format!(
        "origin_country_id={}&destination_country_id={}&weight={}&customer_id={}&customer_name={}&customer_slug={}",
        sent.origin.to_lowercase(),
        sent.destination,
        sent.weight,
        sent.customer_id,
        urlencode(&sent.customer_name),
        sent.customer_slug
    );
    if sent.order_created_at.is_some() {
        q.push_str("&created_at=2018-11-20T19:29:32%2B08:00");
    }
    (q, sent)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What a weight string looks like once normalised to grams and back.
fn normalise_weight(w: &str) -> String {
    let (kg, g) = w.split_once('.').unwrap_or((w, "0"));
    let grams: u32 = kg.parse::<u32>().unwrap() * 1000 + format!("{g:0<3}").parse::<u32>().unwrap();
    format!("{}.{:03}", grams / 1000, grams % 1000)
}

/// The columns a row's tracking number is made of (the table keeps the sequence number and
/// the country codes; the rest is the permutation's), first in a query for [`number_of`].
const NUMBER_COLUMNS: &str = "seq, origin_country_id, destination_country_id";

/// The tracking number of a row that starts with [`NUMBER_COLUMNS`].
fn number_of(r: &tokio_postgres::Row) -> String {
    let country = |i| CountryCode::parse(r.get::<_, &str>(i)).unwrap();
    TrackingNumber::new(
        country(1),
        country(2),
        permutation().permute(r.get::<_, i64>(0) as u64),
    )
    .as_str()
    .to_owned()
}

/// Every record of the database, by number.
async fn records_in(db_url: &str) -> HashMap<String, Sent> {
    let (client, conn) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client
        .query(
            &format!(
                "SELECT {NUMBER_COLUMNS}, weight_grams, \
                 customer_id::text, customer_name, customer_slug, \
                 to_char(order_created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
                 FROM tracking_records JOIN tracking_customers USING (customer_ref)"
            ),
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let grams: i32 = r.get(3);
            (
                number_of(r),
                Sent {
                    origin: r.get(1),
                    destination: r.get(2),
                    weight: format!("{}.{:03}", grams / 1000, grams % 1000),
                    customer_id: r.get(4),
                    customer_name: r.get(5),
                    customer_slug: r.get(6),
                    order_created_at: r.get(7),
                },
            )
        })
        .collect()
}

/// `clients` concurrent clients issue `total` numbers against `addr`; returns number → order.
async fn load(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    total: usize,
    clients: usize,
) -> HashMap<String, Sent> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, client) = (next.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return got;
                }
                let (q, sent) = order(i);
                let r = client
                    .get(format!("http://{addr}/api/next-tracking-number/?{q}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201, "{q}");
                let v: Value = r.json().await.unwrap();
                got.push((v["tracking_number"].as_str().unwrap().to_owned(), sent));
            }
        }));
    }
    let mut all = HashMap::with_capacity(total);
    for t in tasks {
        for (n, s) in t.await.unwrap() {
            assert!(all.insert(n.clone(), s).is_none(), "{n} issued twice");
        }
    }
    all
}

fn expected(sent: &Sent) -> Sent {
    Sent {
        weight: normalise_weight(&sent.weight),
        ..sent.clone()
    }
}

async fn every_number_is_recorded_with_its_order(mode: &str) {
    let db = PgDatabase::create();
    let url = db.url();
    let mode_value = match mode {
        "durable" => RecordsMode::Durable,
        _ => RecordsMode::Async,
    };
    let app = spawn_app_with(move |s| {
        s.records.mode = mode_value;
        s.records.postgres_url = url.into();
    })
    .await;
    let started = Instant::now();
    let issued = load(&app.client, app.addr, 100_000, 16).await;
    let took = started.elapsed();
    if mode == "durable" {
        // Durable: every 201 was committed before it was sent.
        assert_eq!(records_in(&db.url()).await.len(), 100_000);
    }
    app.stop().await; // async: shutdown flushes the queue
    let records = records_in(&db.url()).await;
    assert_eq!(records.len(), issued.len());
    for (number, sent) in &issued {
        let rec = records
            .get(number)
            .unwrap_or_else(|| panic!("{number} has no record"));
        assert_eq!(rec, &expected(sent), "{number}");
    }
    eprintln!("{mode}: 100,000 numbers issued and recorded in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_mode_records_100k_numbers_with_their_exact_order_data() {
    every_number_is_recorded_with_its_order("async").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_mode_records_100k_numbers_with_their_exact_order_data() {
    every_number_is_recorded_with_its_order("durable").await;
}

/// Concurrent clients issue numbers until `at_least` 201s have arrived, then the process is
/// SIGKILLed; returns every number a client received with the order it sent.
async fn issue_until_sigkill(proc: &TrackdProcess, at_least: usize) -> Vec<(String, Sent)> {
    let addr = proc.addr;
    let received = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for w in 0..12 {
        let (received, stop, client) = (received.clone(), stop.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let (q, sent) = order(i);
                let Ok(r) = client
                    .get(format!("http://{addr}/api/next-tracking-number/?{q}"))
                    .send()
                    .await
                else {
                    return; // killed
                };
                if r.status() != 201 {
                    continue;
                }
                let Ok(v) = r.json::<Value>().await else {
                    return;
                };
                let n = v["tracking_number"].as_str().unwrap().to_owned();
                received.lock().unwrap().push((n, sent));
            }
        }));
    }
    while received.lock().unwrap().len() < at_least {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proc.signal("KILL");
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    std::mem::take(&mut *received.lock().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_in_durable_mode_loses_no_acknowledged_record() {
    let db = PgDatabase::create();
    let tmp = tempfile::tempdir().unwrap();
    let url = db.url();
    let proc = TrackdProcess::start(
        tmp.path(),
        &[
            ("TRACKD_RECORDS__MODE", "durable"),
            ("TRACKD_RECORDS__POSTGRES_URL", url.as_str()),
        ],
    );
    let received = issue_until_sigkill(&proc, 5_000).await;
    let records = records_in(&db.url()).await;
    for (n, sent) in &received {
        assert_eq!(
            records.get(n),
            Some(&expected(sent)),
            "{n} was answered 201 but has no record"
        );
    }
    eprintln!(
        "{} acknowledged numbers, all recorded ({} records in all)",
        received.len(),
        records.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_in_durable_mode_with_the_embedded_store_loses_no_acknowledged_record() {
    let tmp = tempfile::tempdir().unwrap();
    let env = [("TRACKD_RECORDS__MODE", "durable")];
    let mut proc = TrackdProcess::start(tmp.path(), &env);
    let received = issue_until_sigkill(&proc, 3_000).await;
    proc.wait_exit(Duration::from_secs(5));
    // Restarted on the same data directory, the instance finds every acknowledged record.
    let again = TrackdProcess::start(tmp.path(), &env);
    let client = reqwest::Client::new();
    for (n, sent) in &received {
        let r = client
            .get(again.url(&format!("/api/tracking-numbers/{n}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{n} was answered 201 but has no record");
        let v: Value = r.json().await.unwrap();
        let want = expected(sent);
        assert_eq!(v["origin_country_id"], want.origin.as_str(), "{n}");
        assert_eq!(
            v["destination_country_id"],
            want.destination.as_str(),
            "{n}"
        );
        assert_eq!(v["weight"], want.weight.as_str(), "{n}");
        assert_eq!(v["customer_id"], want.customer_id.as_str(), "{n}");
        assert_eq!(v["customer_name"], want.customer_name.as_str(), "{n}");
        assert_eq!(v["customer_slug"], want.customer_slug.as_str(), "{n}");
        assert_eq!(
            v["order_created_at"].as_str(),
            want.order_created_at.as_deref(),
            "{n}"
        );
    }
    eprintln!(
        "{} acknowledged numbers, all found after the SIGKILL",
        received.len()
    );
}

#[tokio::test]
async fn lookup_tells_a_typo_from_an_unknown_number() {
    let app = spawn_app_with(|s| s.records.flush_interval = Duration::from_millis(10)).await;
    let number = app.issue().await;
    // Async mode: the record is visible within the flush interval.
    let t0 = Instant::now();
    let record = loop {
        let r = app.get(&format!("/api/tracking-numbers/{number}")).await;
        if r.status() == 200 {
            break r.json::<Value>().await.unwrap();
        }
        assert_eq!(r.status(), 404);
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "record never written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        record,
        json!({
            "tracking_number": number,
            "customer_id": "de619854-b59b-425e-9db4-943979e1bd49",
            "customer_name": "RedBox Logistics",
            "customer_slug": "redbox-logistics",
            "origin_country_id": "MY",
            "destination_country_id": "ID",
            "weight": "1.234",
            "order_created_at": "2018-11-20T11:29:32.000000Z",
            "created_at": record["created_at"],
            "status": "issued",
            "voided_at": null,
            "void_reason": null,
        })
    );
    // Lower case is the same number.
    let r = app
        .get(&format!("/api/tracking-numbers/{}/", number.to_lowercase()))
        .await;
    assert_eq!(r.status(), 200);

    // One character changed: the check character catches it.
    let mut typo = number.clone().into_bytes();
    typo[7] = if typo[7] == b'A' { b'B' } else { b'A' };
    let typo = String::from_utf8(typo).unwrap();
    let r = app.get(&format!("/api/tracking-numbers/{typo}")).await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    let msg = body["tracking_number"][0].as_str().unwrap();
    assert!(msg.contains("check character"), "{msg}");

    // Well-formed with a right check character, but never issued.
    let my = CountryCode::parse("MY").unwrap();
    let unknown = TrackingNumber::new(my, my, permutation().permute(3_000_000_000_000));
    let r = app
        .get(&format!("/api/tracking-numbers/{}", unknown.as_str()))
        .await;
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["detail"].is_string());

    for bad in ["SHORT", "MYID!!!!!!!!!!!!!", "XXID0000000000000"] {
        let r = app.get(&format!("/api/tracking-numbers/{bad}")).await;
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = app
        .client
        .delete(app.url(&format!("/api/tracking-numbers/{number}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    app.stop().await;
}

#[tokio::test]
async fn batch_issuance_records_every_number_and_rejects_bad_bodies() {
    let app = spawn_app_with(|s| s.records.mode = RecordsMode::Durable).await;
    let post = |body: String, ct: &'static str| {
        app.client
            .post(app.url("/api/tracking-numbers"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let r = post(order_body(Some(1000)).to_string(), "application/json")
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["count"], 1000);
    let numbers: Vec<String> = v["tracking_numbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    let distinct: std::collections::HashSet<_> = numbers.iter().collect();
    assert_eq!(distinct.len(), 1000);
    // Durable mode: every one is recorded before the 201.
    for n in numbers.iter().step_by(97) {
        let r = app.get(&format!("/api/tracking-numbers/{n}")).await;
        assert_eq!(r.status(), 200, "{n}");
        assert_eq!(r.json::<Value>().await.unwrap()["weight"], "1.250");
    }
    // No count: one number, same shape.
    let r = post(
        order_body(None).to_string(),
        "application/json; charset=utf-8",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["count"], 1);

    let cases: Vec<(String, u16, &str)> = vec![
        (order_body(Some(100_001)).to_string(), 400, "100000"),
        (order_body(Some(0)).to_string(), 400, "count"),
        ("{\"origin_country_id\": ".into(), 400, "Malformed JSON"),
        ("[1, 2]".into(), 400, "must be an object"),
        (
            json!({"origin_country_id": 5, "weight": "-1", "customer_name": ["x"]}).to_string(),
            400,
            "Must be a string",
        ),
        (
            format!("{{\"customer_name\": \"{}\"}}", "x".repeat(70_000)),
            413,
            "too large",
        ),
    ];
    for (body, status, needle) in cases {
        let r = post(body.clone(), "application/json").await.unwrap();
        assert_eq!(r.status(), status, "{}", &body[..body.len().min(80)]);
        let text = r.text().await.unwrap();
        assert!(text.contains(needle), "{text}");
        assert!(serde_json::from_str::<Value>(&text).is_ok());
    }
    let r = post(order_body(None).to_string(), "text/plain")
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = app.get("/api/tracking-numbers").await;
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_gets_the_same_number_from_two_instances_sharing_redis() {
    let redis = RedisServer::start();
    let db = PgDatabase::create();
    one_number_per_key_across_two_instances(&[
        ("TRACKD_TRACKING__SEQUENCE_STORE", "redis".to_owned()),
        ("TRACKD_TRACKING__REDIS_URL", redis.url()),
        ("TRACKD_RECORDS__POSTGRES_URL", db.url()),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_gets_the_same_number_from_two_instances_sharing_postgres() {
    let db = PgDatabase::create();
    one_number_per_key_across_two_instances(&[
        ("TRACKD_TRACKING__SEQUENCE_STORE", "postgres".to_owned()),
        ("TRACKD_TRACKING__POSTGRES_URL", db.url()),
        ("TRACKD_RECORDS__POSTGRES_URL", db.url()),
    ])
    .await;
}

/// Two instances sharing `env`'s sequence store: a key answered by one is replayed by the
/// other, concurrent first requests with one key on both get one number, the same key with
/// other parameters is refused, and a label run is replayed too.
async fn one_number_per_key_across_two_instances(env: &[(&str, String)]) {
    let tmp = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let (ok, out) = run_seq(&["init"], &env, tmp.path());
    assert!(ok, "{out}");
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let a = TrackdProcess::start(&tmp.path().join("a"), &pairs);
    let b = TrackdProcess::start(&tmp.path().join("b"), &pairs);
    let client = reqwest::Client::new();
    let get =
        |url: String, key: &'static str| client.get(url).header("Idempotency-Key", key).send();

    let path = format!("/api/next-tracking-number/?{ORDER_QUERY}");
    let first = get(a.url(&path), "order-7781-label").await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let retry = get(b.url(&path), "order-7781-label").await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await.unwrap(), first);

    // Concurrent first requests with one key, on both instances: one number.
    let path2 = path.clone();
    let mut answers = Vec::new();
    for i in 0..10 {
        let url = if i % 2 == 0 {
            a.url(&path2)
        } else {
            b.url(&path2)
        };
        answers.push(get(url, "concurrent-key"));
    }
    let mut numbers = std::collections::HashSet::new();
    for r in futures_join(answers).await {
        let r = r.unwrap();
        if r.status() == 201 {
            numbers.insert(r.json::<Value>().await.unwrap()["tracking_number"].clone());
        } else {
            assert_eq!(r.status(), 409, "in progress at most");
        }
    }
    assert_eq!(numbers.len(), 1, "{numbers:?}");

    // Same key, other parameters: 422; a bad key: 400.
    let other = path.replace("weight=1.234", "weight=2");
    let r = get(b.url(&other), "order-7781-label").await.unwrap();
    assert_eq!(r.status(), 422);
    let r = client
        .get(a.url(&path))
        .header("Idempotency-Key", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // POST with a key: replayed too, and the numbers are recorded once.
    let post = |url: String| {
        client
            .post(url)
            .header("Idempotency-Key", "label-run-1")
            .json(&order_body(Some(5)))
            .send()
    };
    let p1: Value = post(a.url("/api/tracking-numbers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let p2: Value = post(b.url("/api/tracking-numbers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(p1, p2);
    assert_eq!(p1["count"], 5);
}

/// Awaits all futures concurrently.
async fn futures_join<F>(fs: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// The numbers in `tracking_records`, or `None` while the table cannot be read.
async fn recorded_numbers(db_url: &str) -> Option<std::collections::HashSet<String>> {
    let (client, conn) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    let rows = client
        .query(
            &format!("SELECT {NUMBER_COLUMNS} FROM tracking_records"),
            &[],
        )
        .await
        .ok()?;
    Some(rows.iter().map(number_of).collect())
}

/// Waits until every number in `numbers` is recorded (or panics after `limit`).
async fn wait_recorded(db_url: &str, numbers: &[String], limit: Duration) {
    let start = Instant::now();
    loop {
        if let Some(found) = recorded_numbers(db_url).await {
            let missing = numbers.iter().filter(|n| !found.contains(*n)).count();
            if missing == 0 {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "{missing} of {} acknowledged numbers not recorded after {limit:?}",
                numbers.len()
            );
        }
        assert!(start.elapsed() < limit, "tracking_records unreadable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_down_record_store_slows_issuance_to_503_and_loses_no_record() {
    let pg = PrivatePostgres::start_installed();
    let url = pg.url();
    let app = spawn_app_with(|s| {
        s.records.mode = RecordsMode::Async;
        s.records.postgres_url = url.clone().into();
        s.records.queue_capacity = 200;
        s.records.batch_max = 50;
        s.records.wait_timeout = Duration::from_millis(300);
    })
    .await;
    let mut acknowledged = Vec::new();
    for _ in 0..20 {
        acknowledged.push(app.issue().await);
    }
    wait_recorded(&url, &acknowledged, Duration::from_secs(10)).await;

    pg.stop();
    // Writes now fail and are retried; the queue (200 records) fills, after which a request
    // waits up to 300 ms for room and is answered 503: slowed down, never dropped.
    let (before, mut unavailable) = (acknowledged.len(), 0);
    for _ in 0..1000 {
        let t = Instant::now();
        let r = app
            .get(&format!("/api/next-tracking-number/?{ORDER_QUERY}"))
            .await;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        match status {
            201 => acknowledged.push(body["tracking_number"].as_str().unwrap().to_owned()),
            503 => {
                assert!(
                    body["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("cannot be recorded")),
                    "{body}"
                );
                assert!(
                    t.elapsed() >= Duration::from_millis(250),
                    "{:?}",
                    t.elapsed()
                );
                unavailable += 1;
                if unavailable == 3 {
                    break;
                }
            }
            s => panic!("unexpected {s}: {body}"),
        }
    }
    assert_eq!(unavailable, 3, "the queue never filled");
    assert!(
        acknowledged.len() - before >= 200,
        "only {} numbers queued while the store was down",
        acknowledged.len() - before
    );
    let ready = app.admin("/readyz").await;
    assert_eq!(ready.status(), 503);
    let text = ready.text().await.unwrap();
    assert!(
        text.contains("writing records to the postgres store fails"),
        "{text}"
    );

    // The store returns: the retried and queued batches are written, every acknowledged
    // number is found, and issuance is back.
    pg.start_again();
    wait_recorded(&url, &acknowledged, Duration::from_secs(20)).await;
    let start = Instant::now();
    while app.admin("/readyz").await.status() != 200 {
        assert!(start.elapsed() < Duration::from_secs(10), "not ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = app.issue().await;
    wait_recorded(&url, &[again], Duration::from_secs(10)).await;
    app.stop().await;
}

/// A GET with an `Idempotency-Key`, answered as (status, JSON body, replayed?).
async fn get_keyed(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    timeout: Option<Duration>,
) -> Result<(u16, Value, bool), reqwest::Error> {
    let mut req = client.get(url).header("Idempotency-Key", key);
    if let Some(t) = timeout {
        req = req.timeout(t);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let replayed = r.headers().contains_key("idempotent-replayed");
    Ok((status, r.json().await?, replayed))
}

#[tokio::test]
async fn durable_numbers_answered_503_before_their_commit_reach_their_idempotency_key() {
    let pg = PrivatePostgres::start_installed();
    let url = pg.url();
    let app = spawn_app_with(|s| {
        s.records.mode = RecordsMode::Durable;
        s.records.postgres_url = url.clone().into();
        s.records.wait_timeout = Duration::from_millis(300);
    })
    .await;
    let first = app.issue().await;
    wait_recorded(&url, std::slice::from_ref(&first), Duration::from_secs(10)).await;
    let path = app.url(&format!("/api/next-tracking-number/?{ORDER_QUERY}"));
    let client = reqwest::Client::new();

    pg.stop();
    // Issued and queued, not committed within 300 ms: a 503 that says what happens next.
    let (status, body, _) = get_keyed(&client, &path, "label-1", None).await.unwrap();
    assert_eq!(status, 503, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("same Idempotency-Key"), "{detail}");
    // Its retry waits for that commit instead of taking new numbers.
    let (status, body, _) = get_keyed(&client, &path, "label-1", None).await.unwrap();
    assert_eq!(status, 409, "{body}");

    // A client that gives up while its numbers wait for their commit: they are still owed to
    // its key.
    let gave_up = get_keyed(&client, &path, "label-2", Some(Duration::from_millis(100))).await;
    assert!(gave_up.is_err(), "answered within 100 ms: {gave_up:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body, _) = get_keyed(&client, &path, "label-2", None).await.unwrap();
    assert_eq!(status, 409, "{body}");
    // The store returns: the queued records are written, and each key answers the numbers
    // issued for it, recorded, and no new ones.
    pg.start_again();
    let mut answers = Vec::new();
    for key in ["label-1", "label-2"] {
        let start = Instant::now();
        let number = loop {
            let (status, body, replayed) = get_keyed(&client, &path, key, None).await.unwrap();
            match status {
                201 => {
                    assert!(replayed, "a new answer for {key}: {body}");
                    break body["tracking_number"].as_str().unwrap().to_owned();
                }
                409 => assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "{key} still pending"
                ),
                s => panic!("{key}: {s} {body}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        answers.push(number);
    }
    wait_recorded(&url, &answers, Duration::from_secs(10)).await;
    let recorded = recorded_numbers(&url).await.unwrap();
    // The first number, label-1's and label-2's: no retry took new numbers.
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    let again = get_keyed(&client, &path, "label-1", None).await.unwrap();
    assert_eq!(again.1["tracking_number"], answers[0].as_str());
    app.stop().await;
}

#[tokio::test]
async fn shutdown_gives_up_on_a_record_store_that_stays_down() {
    let pg = PrivatePostgres::start_installed();
    let url = pg.url();
    let app = spawn_app_with(|s| {
        s.records.mode = RecordsMode::Async;
        s.records.postgres_url = url.clone().into();
        s.server.shutdown_grace = Duration::from_millis(1000);
        // Idle connections closed at once: the grace period is spent on the records alone.
        s.server.shutdown_linger = Duration::from_millis(10);
    })
    .await;
    let first = app.issue().await;
    wait_recorded(&url, std::slice::from_ref(&first), Duration::from_secs(10)).await;
    pg.stop();
    for _ in 0..5 {
        app.issue().await; // async: answered at once, written later (here: never)
    }
    // Retried for the grace period, then given up (and logged): SIGTERM never hangs on it.
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), app.stop())
        .await
        .expect("shutdown waited on a record store that is down");
    // One deadline from the signal: the drain and the records share the grace period (then a
    // writer sleeping between attempts gets up to a second to stop).
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_start_that_fails_leaves_the_data_directory_free_for_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = crate::helpers::test_settings(dir.path());
    s.records.mode = RecordsMode::Durable;
    // An application built and dropped unrun: its record writer ends and lets go of the files.
    let app = trackd::app::Application::build(&s).await.unwrap();
    drop(app);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    s.server.listen = taken.local_addr().unwrap();
    let failed = build_when_free(&s).await.map(|_| ()).unwrap_err();
    assert!(
        matches!(failed, trackd::app::StartError::Bind { .. }),
        "{failed}"
    );
    assert!(failed.to_string().contains("cannot listen"), "{failed}");
    // The port in use failed the start before it opened anything: the next one starts.
    s.server.listen = "127.0.0.1:0".parse().unwrap();
    let app = build_when_free(&s).await.unwrap();
    drop(app);
}

/// Builds the application, retrying while the stores of a dropped one are still being let go
/// (its actor and writer threads end asynchronously).
async fn build_when_free(
    s: &trackd::config::Settings,
) -> Result<trackd::app::Application, trackd::app::StartError> {
    let start = Instant::now();
    loop {
        match trackd::app::Application::build(s).await {
            Err(
                e @ (trackd::app::StartError::Tracking(_) | trackd::app::StartError::Database(_)),
            ) if start.elapsed() < Duration::from_secs(5) => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// A claim's life on either backend: only its holder settles the key, a refresh keeps the
/// claim, a repeated completion is harmless, a settled key replays its answer.
async fn claims_settle_their_key_only_while_it_is_pending_under_them(
    store: &std::sync::Arc<trackd::idempotency::Idempotency>,
) -> trackd::idempotency::Claim {
    use trackd::idempotency::{Begin, Key};
    let key = |k: &str| Key::parse(k.as_bytes(), None).unwrap();
    let (k, k_other) = (key("k"), key("k-other"));
    let fresh = |b: Begin| match b {
        Begin::Fresh(c) => c,
        other => panic!("not fresh: {other:?}"),
    };
    let first = fresh(store.begin(&k, "fp", Duration::ZERO).await.unwrap());
    assert_eq!(
        store.begin(&k, "fp", Duration::ZERO).await.unwrap(),
        Begin::InProgress
    );
    // Another claim (as after a takeover elsewhere) cannot settle it.
    let other = fresh(store.begin(&k_other, "fp", Duration::ZERO).await.unwrap());
    assert!(!store.complete(&k, &other, 201, "{}").await.unwrap());
    assert!(!store.abandon(&k, &other).await.unwrap());
    // Refreshed (a refresh whose reply was lost leaves the older copy: it still settles).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut renewed = first.clone();
    assert!(store.refresh(&k, &mut renewed).await.unwrap());
    assert_ne!(renewed, first);
    assert!(store.complete(&k, &first, 201, "{\"n\":1}").await.unwrap());
    // A repeated completion succeeds; other answers and releases do not.
    assert!(store.complete(&k, &first, 201, "{\"n\":1}").await.unwrap());
    assert!(!store.complete(&k, &first, 201, "{\"n\":2}").await.unwrap());
    assert!(!store.abandon(&k, &first).await.unwrap());
    assert!(!store.refresh(&k, &mut renewed).await.unwrap());
    assert_eq!(
        store.begin(&k, "fp", Duration::ZERO).await.unwrap(),
        Begin::Replay {
            status: 201,
            body: "{\"n\":1}".into()
        }
    );
    first
}

#[tokio::test]
async fn idempotency_keys_in_redis_are_settled_only_under_their_claim() {
    use trackd::idempotency::{Begin, Idempotency, Key, redis::RedisKeys};
    let redis = RedisServer::start();
    let store = std::sync::Arc::new(Idempotency::new(RedisKeys::new(
        vec![redis.url()],
        false,
        "t",
        Duration::from_secs(1),
        Default::default(),
    )));
    let first = claims_settle_their_key_only_while_it_is_pending_under_them(&store).await;
    // A stale pending claim of an instance that died: taken over, and released by its new
    // claim only.
    redis.cmd(&[
        "SET",
        "t:idem:old",
        r#"{"fingerprint":"fp","at_ms":1,"status":null,"body":null,"owner":"gone","claim":"dead"}"#,
        "EX",
        "600",
    ]);
    let old = Key::parse(b"old", None).unwrap();
    let Begin::Fresh(taken) = store.begin(&old, "fp", Duration::ZERO).await.unwrap() else {
        panic!("a stale entry is taken over");
    };
    assert!(!store.abandon(&old, &first).await.unwrap(), "another claim");
    assert!(store.abandon(&old, &taken).await.unwrap());
    assert_eq!(redis.cmd(&["EXISTS", "t:idem:old"]).trim(), "0");
}

#[tokio::test]
async fn idempotency_keys_in_postgres_are_settled_only_under_their_claim() {
    use trackd::idempotency::{Begin, Idempotency, Key, postgres::PostgresKeys};
    let db = PgDatabase::create();
    let store = std::sync::Arc::new(Idempotency::new(PostgresKeys::new(
        &db.url(),
        Duration::from_secs(1),
        Default::default(),
    )));
    let first = claims_settle_their_key_only_while_it_is_pending_under_them(&store).await;
    // A stale pending claim of an instance that died: taken over, released by its new claim.
    let (client, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .execute(
            "INSERT INTO trackd_idempotency (key, entry, claim, pending, expires_at) \
             VALUES ('old', $1, 'dead', true, now() + interval '1 hour')",
            &[&r#"{"fingerprint":"fp","at_ms":1,"status":null,"body":null,"owner":"gone","claim":"dead"}"#],
        )
        .await
        .unwrap();
    let old = Key::parse(b"old", None).unwrap();
    let Begin::Fresh(taken) = store.begin(&old, "fp", Duration::ZERO).await.unwrap() else {
        panic!("a stale entry is taken over");
    };
    assert!(!store.abandon(&old, &first).await.unwrap(), "another claim");
    assert!(store.abandon(&old, &taken).await.unwrap());
    // An expired key is claimed anew, and the purge deletes what has expired.
    client
        .execute(
            "UPDATE trackd_idempotency SET expires_at = now() - interval '1 second' \
             WHERE key IN ('k', 'k-other')",
            &[],
        )
        .await
        .unwrap();
    let k = Key::parse(b"k", None).unwrap();
    assert!(matches!(
        store.begin(&k, "fp", Duration::ZERO).await.unwrap(),
        Begin::Fresh(_)
    ));
    use trackd::idempotency::Backend;
    let purged = PostgresKeys::new(&db.url(), Duration::from_secs(1), Default::default())
        .purge_expired()
        .await
        .unwrap();
    assert_eq!(purged, 1, "k-other");
    let left: Vec<String> = client
        .query("SELECT key FROM trackd_idempotency", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["k"], "only the new claim of k is left");
}

#[tokio::test]
async fn idempotency_keys_in_the_embedded_store_are_settled_only_under_their_claim() {
    use trackd::idempotency::{Idempotency, embedded::EmbeddedKeys};
    let dir = tempfile::tempdir().unwrap();
    let db = std::sync::Arc::new(redb::Database::create(dir.path().join("keys.redb")).unwrap());
    let store = std::sync::Arc::new(Idempotency::new(EmbeddedKeys::open(db).unwrap()));
    claims_settle_their_key_only_while_it_is_pending_under_them(&store).await;
}
