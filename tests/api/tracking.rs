//! `GET /api/next-tracking-number/`: the contract's answers, uniqueness under concurrency, and
//! no reuse across restarts, SIGKILL, store outages and SIGTERM.

use crate::helpers::*;
use serde_json::Value;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use trackd::tracking::number::TrackingNumber;

const PATH: &str = "/api/next-tracking-number/";

#[tokio::test]
async fn issues_201_with_the_exact_body() {
    let app = spawn_app().await;
    for path in [PATH, "/api/next-tracking-number"] {
        let q = ORDER_QUERY
            .replace("origin_country_id=MY", "origin_country_id=my")
            .replace(
                "de619854-b59b-425e-9db4-943979e1bd49",
                "DE619854B59B425E9DB4943979E1BD49",
            );
        let r = app.get(&format!("{path}?{q}&unknown_param=1")).await;
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["content-type"], "application/json");
        let text = r.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 5);
        let positions: Vec<usize> = [
            "tracking_number",
            "customer_id",
            "origin_country_id",
            "destination_country_id",
            "created_at",
        ]
        .iter()
        .map(|k| {
            text.find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k} missing in {text}"))
        })
        .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "fields in contract order: {text}"
        );
        let number = v["tracking_number"].as_str().unwrap();
        assert_eq!(number.len(), 16);
        assert!(
            number
                .bytes()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        );
        assert!(number.starts_with("MYID"));
        TrackingNumber::parse(number).expect("check character verifies");
        assert_eq!(v["customer_id"], "de619854-b59b-425e-9db4-943979e1bd49");
        assert_eq!(v["origin_country_id"], "MY");
        assert_eq!(v["destination_country_id"], "ID");
        // created_at: the issuing instant, UTC, microseconds, Z.
        let created = v["created_at"].as_str().unwrap();
        assert_eq!(created.len(), 27, "{created}");
        assert!(
            created.ends_with('Z') && created.as_bytes()[19] == b'.',
            "{created}"
        );
        let t =
            time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
                .unwrap();
        let age = time::OffsetDateTime::now_utc() - t;
        assert!(
            age.abs() < time::Duration::seconds(5),
            "created_at is now, not the order's time: {created}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_input_gets_400_naming_every_field() {
    let app = spawn_app().await;
    let r = app.get(&format!("{PATH}?origin_country_id=XX&weight=0&weight=1&customer_slug=Bad_Slug&created_at=2018-11-20T19:29:32%2B08:0&customer_id=nope&customer_name=%20")).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["origin_country_id"][0],
        "'XX' is not an ISO 3166-1 alpha-2 country code."
    );
    assert_eq!(v["destination_country_id"][0], "This field is required.");
    assert_eq!(v["weight"][0], "This parameter was given more than once.");
    for field in [
        "created_at",
        "customer_id",
        "customer_name",
        "customer_slug",
    ] {
        assert!(
            v[field][0].as_str().is_some_and(|m| !m.is_empty()),
            "{field}: {v}"
        );
    }
    // No query at all: every required field.
    let v: Value = app.get(PATH).await.json().await.unwrap();
    assert_eq!(v.as_object().unwrap().len(), 6, "{v}");
    // Invalid UTF-8 and control characters are 400s, not 500s.
    let r = app
        .get(&format!(
            "{PATH}?{}",
            ORDER_QUERY.replace("RedBox%20Logistics", "%FF%00")
        ))
        .await;
    assert_eq!(r.status(), 400);
    // Nothing was issued by the bad requests: the next number is sequence 0 of the store.
    let n = app.issue().await;
    assert_eq!(seq_of(&n), 0);
    app.stop().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_are_json() {
    let app = spawn_app().await;
    let r = app.get("/nope").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        serde_json::json!({"detail": "Not found."})
    );
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::HEAD,
    ] {
        let r = app
            .client
            .request(method.clone(), app.url(PATH))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method}");
        assert_eq!(r.headers()["allow"], "GET");
        if method != reqwest::Method::HEAD {
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["detail"], format!("Method \"{method}\" not allowed."));
        }
    }
    let r = app.client.post(app.url("/healthz/")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    assert_eq!(app.get("/healthz").await.status(), 200);
    app.wait_ready(Duration::from_secs(10)).await;
    assert_eq!(app.get("/readyz/").await.status(), 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_distinct_valid_numbers() {
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 20_000;
    let app = spawn_app().await;
    let url = app.url(&format!("{PATH}?{ORDER_QUERY}"));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let client = reqwest::Client::new();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(PER_CLIENT);
            for _ in 0..PER_CLIENT {
                let r = client.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 201);
                let v: Value = r.json().await.unwrap();
                out.push(v["tracking_number"].as_str().unwrap().to_owned());
            }
            out
        }));
    }
    let mut seqs = HashSet::new();
    let mut numbers = HashSet::new();
    for t in tasks {
        for n in t.await.unwrap() {
            assert!(seqs.insert(seq_of(&n)), "sequence reused by {n}");
            assert!(numbers.insert(n));
        }
    }
    assert_eq!(numbers.len(), CLIENTS * PER_CLIENT);
    app.stop().await;
}

#[tokio::test]
async fn restart_on_the_same_data_dir_reuses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut seen = HashSet::new();
    let mut max_before = 0;
    for round in 0..3 {
        let app = spawn_app_in(tmp.path(), |s| s.tracking.block_min = 50).await;
        for _ in 0..120 {
            let seq = seq_of(&app.issue().await);
            assert!(seen.insert(seq), "round {round}: sequence {seq} reused");
            if round > 0 {
                assert!(
                    seq > max_before,
                    "numbers after a restart come after every earlier one"
                );
            }
        }
        max_before = *seen.iter().max().unwrap();
        app.stop().await;
    }
}

#[tokio::test]
async fn store_outage_gives_503_with_retry_after_then_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let app = spawn_app_in(&dir, |s| {
        s.tracking.block_min = 10;
        s.tracking.block_max = 10;
        s.tracking.wait_timeout = Duration::from_millis(300);
        s.tracking.retry_after_secs = 2;
    })
    .await;
    let mut issued = HashSet::from([seq_of(&app.issue().await)]);
    // Wait until the standby block is reserved too: 19 numbers in hand.
    let t0 = Instant::now();
    while app.admin("/readyz").await.json::<Value>().await.unwrap()["checks"]["tracking"]["buffered_numbers"]
        != 19
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "standby block never reserved"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Take the data directory away: reservations fail, buffered numbers still serve.
    let moved = tmp.path().join("moved");
    std::fs::rename(&dir, &moved).unwrap();
    let mut served = 1;
    let started = Instant::now();
    let r = loop {
        let r = app.get(&format!("{PATH}?{ORDER_QUERY}")).await;
        if r.status() != 201 {
            break r;
        }
        let v: Value = r.json().await.unwrap();
        assert!(issued.insert(seq_of(v["tracking_number"].as_str().unwrap())));
        served += 1;
        assert!(served <= 20, "only the two buffered blocks can be served");
    };
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "2");
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.json::<Value>().await.unwrap()["detail"].is_string());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered within the wait timeout, no hang"
    );
    assert_eq!(app.admin("/readyz").await.status(), 503);
    // Bring it back: served again without a restart, and nothing reused.
    std::fs::rename(&moved, &dir).unwrap();
    let t0 = Instant::now();
    let n = loop {
        let r = app.get(&format!("{PATH}?{ORDER_QUERY}")).await;
        if r.status() == 201 {
            break r.json::<Value>().await.unwrap()["tracking_number"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "recovers within the retry backoff"
        );
    };
    assert_eq!(
        served, 20,
        "both buffered blocks were served during the outage"
    );
    assert!(
        !issued.contains(&seq_of(&n)),
        "sequence {} reused after the outage",
        seq_of(&n)
    );
    assert_eq!(app.admin("/readyz").await.status(), 200);
    app.stop().await;
}

/// Drives `clients` keep-alive clients against a process until each sees an error or `limit`
/// passes; returns the issued numbers and the errors.
async fn load(url: String, clients: usize, limit: Duration) -> (Vec<String>, Vec<reqwest::Error>) {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut ok = Vec::new();
            let start = Instant::now();
            while start.elapsed() < limit {
                match client.get(&url).send().await {
                    Ok(r) => {
                        assert_eq!(r.status(), 201);
                        match r.json::<Value>().await {
                            Ok(v) => ok.push(v["tracking_number"].as_str().unwrap().to_owned()),
                            Err(e) => return (ok, Some(e)),
                        }
                    }
                    Err(e) => return (ok, Some(e)),
                }
            }
            (ok, None)
        }));
    }
    let mut numbers = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        let (ok, err) = t.await.unwrap();
        numbers.extend(ok);
        errors.extend(err);
    }
    (numbers, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_then_restart_reuses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut seen = HashSet::new();
    for round in 0..3 {
        let p = TrackdProcess::start(tmp.path(), &[("TRACKD_TRACKING__BLOCK_MIN", "20")]);
        let url = p.url(&format!("{PATH}?{ORDER_QUERY}"));
        let loader = tokio::spawn(load(url, 4, Duration::from_secs(30)));
        tokio::time::sleep(Duration::from_millis(700)).await;
        p.signal("KILL");
        let (numbers, errors) = loader.await.unwrap();
        assert!(!numbers.is_empty(), "round {round}: load ran");
        assert_eq!(errors.len(), 4, "every client stopped on the kill");
        for n in numbers {
            let seq = seq_of(&n);
            assert!(
                seen.insert(seq),
                "round {round}: sequence {seq} ({n}) issued twice; log:\n{}",
                p.log_text()
            );
        }
    }
    assert!(seen.len() > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_without_dropping_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = TrackdProcess::start(tmp.path(), &[]);
    let url = p.url(&format!("{PATH}?{ORDER_QUERY}"));
    let loader = tokio::spawn(load(url, 8, Duration::from_secs(30)));
    tokio::time::sleep(Duration::from_millis(700)).await;
    p.signal("TERM");
    let (numbers, errors) = loader.await.unwrap();
    assert_eq!(
        p.wait_exit(Duration::from_secs(10)),
        Some(0),
        "exit 0 after draining"
    );
    assert!(numbers.len() > 100, "load ran: {}", numbers.len());
    let distinct: HashSet<u64> = numbers.iter().map(|n| seq_of(n)).collect();
    assert_eq!(distinct.len(), numbers.len());
    // Every request that reached the server was answered; clients only see refused connections
    // once the listener is closed.
    for e in &errors {
        assert!(
            e.is_connect(),
            "request lost during shutdown: {e:?}\nlog:\n{}",
            p.log_text()
        );
    }
    assert_eq!(errors.len(), 8);
    assert!(
        p.log_text().contains("all connections closed"),
        "{}",
        p.log_text()
    );
}
