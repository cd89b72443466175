//! Label runs of up to 100,000 numbers, streamed: every number distinct and recorded before
//! its line, a client that leaves mid-stream, replays under an `Idempotency-Key`, formats.

use crate::helpers::*;
use serde_json::Value;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use trackd::config::RecordsMode;
use trackd::tracking::number::TrackingNumber;

async fn post_run(app: &TestApp, count: u64, accept: &str, key: Option<&str>) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/api/tracking-numbers"))
        .header("accept", accept)
        .json(&order_body(Some(count)));
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    req.send().await.unwrap()
}

/// The numbers of an NDJSON body.
fn ndjson_numbers(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            v["tracking_number"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Waits until every queued record is written, then checks that exactly as many records
/// were written as numbers were taken: none issued without its record.
async fn every_issued_number_recorded(app: &TestApp) {
    let issuer = &app.state.issuer;
    let recorder = issuer.recorder().expect("records on");
    let t0 = Instant::now();
    loop {
        let issued = issuer.numbers().allocator().issued();
        let written = recorder
            .stats()
            .written
            .load(std::sync::atomic::Ordering::Relaxed);
        if issued == written {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{issued} numbers taken, {written} recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn found(app: &TestApp, number: &str) -> bool {
    let t0 = Instant::now();
    loop {
        let r = app.get(&format!("/api/tracking-numbers/{number}")).await;
        if r.status() == 200 {
            return true;
        }
        assert_eq!(r.status(), 404);
        if t0.elapsed() > Duration::from_secs(5) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_100k_streams_distinct_recorded_numbers() {
    let app = spawn_app().await;
    let r = post_run(&app, 100_000, "application/x-ndjson", None).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    assert!(r.headers().get("content-length").is_none(), "streamed");
    let numbers = ndjson_numbers(&r.text().await.unwrap());
    assert_eq!(numbers.len(), 100_000);
    let distinct: HashSet<&String> = numbers.iter().collect();
    assert_eq!(distinct.len(), 100_000);
    for n in &numbers {
        TrackingNumber::parse(n).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert!(n.starts_with("MYID"));
    }
    for n in numbers.iter().step_by(100) {
        assert!(found(&app, n).await, "{n} has no record");
    }
    every_issued_number_recorded(&app).await;

    // The same limit in every format; one more is refused, naming the field.
    let r = post_run(&app, 100_001, "application/x-ndjson", None).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["count"][0].as_str().unwrap().contains("100000"), "{v}");
    app.stop().await;
}

#[tokio::test]
async fn csv_and_long_json_runs_have_their_shapes() {
    let app = spawn_app().await;
    let r = post_run(&app, 2500, "text/csv", None).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let text = r.text().await.unwrap();
    let mut lines = text.split("\r\n");
    assert_eq!(lines.next(), Some("tracking_number"));
    let numbers: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    assert_eq!(numbers.len(), 2500);
    assert_eq!(numbers.iter().collect::<HashSet<_>>().len(), 2500);

    // Past a buffered body's size, JSON streams in today's shape.
    let r = post_run(&app, 5000, "application/json", None).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["count"], 5000);
    assert_eq!(v["tracking_numbers"].as_array().unwrap().len(), 5000);
    assert_eq!(v["customer_id"], "de619854-b59b-425e-9db4-943979e1bd49");
    assert_eq!(v["origin_country_id"], "MY");
    assert_eq!(v["destination_country_id"], "ID");
    trackd::support::rfc3339::parse(v["created_at"].as_str().unwrap()).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 6, "{keys:?}");

    // A short run asked for as lines is lines too.
    let r = post_run(&app, 3, "application/x-ndjson", None).await;
    assert_eq!(r.status(), 201);
    assert_eq!(ndjson_numbers(&r.text().await.unwrap()).len(), 3);
    every_issued_number_recorded(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_runs_commit_each_line_before_it_is_written() {
    let app = spawn_app_with(|s| s.records.mode = RecordsMode::Durable).await;
    let mut r = post_run(&app, 20_000, "application/x-ndjson", None).await;
    assert_eq!(r.status(), 201);
    // The first lines, read while the run goes on: their records are committed already.
    let mut head = Vec::new();
    while head.iter().filter(|&&b| b == b'\n').count() < 1000 {
        head.extend_from_slice(&r.chunk().await.unwrap().expect("more lines"));
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let first: Vec<String> = ndjson_numbers(text.rsplit_once('\n').unwrap().0);
    for n in first.iter().step_by(50) {
        let r = app.get(&format!("/api/tracking-numbers/{n}")).await;
        assert_eq!(
            r.status(),
            200,
            "{n} was written before its record was committed"
        );
    }
    let mut rest = head;
    while let Some(c) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    let all = ndjson_numbers(std::str::from_utf8(&rest).unwrap());
    assert_eq!(all.len(), 20_000);
    for n in all.iter().step_by(97) {
        let r = app.get(&format!("/api/tracking-numbers/{n}")).await;
        assert_eq!(r.status(), 200, "{n}");
    }
    app.stop().await;
}

/// Sends a run over a raw connection and reads `lines` lines of it, then hangs up.
async fn read_then_leave(
    app: &TestApp,
    count: u64,
    lines: usize,
    key: Option<&str>,
) -> Vec<String> {
    let body = order_body(Some(count)).to_string();
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let key = key
        .map(|k| format!("Idempotency-Key: {k}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /api/tracking-numbers HTTP/1.1\r\nHost: t\r\nAccept: application/x-ndjson\r\n\
         Content-Type: application/json\r\n{key}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    // The head, up to its blank line.
    loop {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        assert!(!line.is_empty(), "connection closed in the head");
    }
    let mut numbers = Vec::new();
    while numbers.len() < lines {
        line.clear();
        assert!(reader.read_line(&mut line).await.unwrap() > 0, "cut short");
        // Chunked framing: size lines are hex, data lines are JSON objects.
        if let Some(rest) = line
            .find("{\"tracking_number\":\"")
            .map(|i| &line[i + 20..])
        {
            numbers.push(rest[..16].to_owned());
        }
    }
    numbers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_run_leaves_no_number_unrecorded() {
    let app = spawn_app().await;
    let seen = read_then_leave(&app, 100_000, 10_000, None).await;
    assert_eq!(seen.len(), 10_000);
    for n in seen.iter().step_by(10) {
        assert!(
            found(&app, n).await,
            "{n} reached the client without a record"
        );
    }
    every_issued_number_recorded(&app).await;
    // Without a key nobody is owed the rest: the run stopped.
    let issued = app.state.issuer.numbers().allocator().issued();
    assert!(
        issued < 100_000,
        "{issued} numbers taken for a client that left"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_run_is_replayed_identically_in_any_format() {
    let app = spawn_app().await;
    let key = Some("labels-2026-12-02-a");
    let first = post_run(&app, 30_000, "application/x-ndjson", key).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first = first.text().await.unwrap();
    assert_eq!(ndjson_numbers(&first).len(), 30_000);

    // Right after the last line: the key is settled, the retry is a replay.
    let again = post_run(&app, 30_000, "application/x-ndjson", key).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.text().await.unwrap(), first, "replay differs");

    let csv = post_run(&app, 30_000, "text/csv", key).await;
    assert_eq!(csv.status(), 201);
    let csv = csv.text().await.unwrap();
    let csv_numbers: Vec<String> = csv
        .split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(csv_numbers, ndjson_numbers(&first));

    let json = post_run(&app, 30_000, "application/json", key).await;
    let v: Value = json.json().await.unwrap();
    let json_numbers: Vec<String> = v["tracking_numbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(json_numbers, ndjson_numbers(&first));

    // Other parameters with the same key: refused.
    let r = post_run(&app, 29_999, "application/x-ndjson", key).await;
    assert_eq!(r.status(), 422);

    // What the key keeps is the run's ranges, not its body.
    let issued_before = app.state.issuer.numbers().allocator().issued();
    let again = post_run(&app, 30_000, "application/x-ndjson", key).await;
    assert_eq!(again.text().await.unwrap(), first);
    assert_eq!(
        app.state.issuer.numbers().allocator().issued(),
        issued_before,
        "a replay took numbers"
    );

    // A buffered run answered as JSON is replayed as lines with the same numbers.
    let small = post_run(&app, 500, "application/json", Some("labels-small")).await;
    let v: Value = small.json().await.unwrap();
    let lines = post_run(&app, 500, "application/x-ndjson", Some("labels-small")).await;
    assert_eq!(lines.headers()["idempotent-replayed"], "true");
    let from_lines = ndjson_numbers(&lines.text().await.unwrap());
    let from_json: Vec<&str> = v["tracking_numbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(from_lines, from_json);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_run_left_mid_stream_is_finished_for_the_retry() {
    let app = spawn_app().await;
    let key = "labels-left-early";
    let seen = read_then_leave(&app, 20_000, 5_000, Some(key)).await;
    // The retry waits while the first request's run finishes (409), then gets all of it.
    let t0 = Instant::now();
    let text = loop {
        let r = post_run(&app, 20_000, "application/x-ndjson", Some(key)).await;
        if r.status() == 201 {
            assert_eq!(r.headers()["idempotent-replayed"], "true");
            break r.text().await.unwrap();
        }
        assert_eq!(r.status(), 409);
        assert!(t0.elapsed() < Duration::from_secs(20), "never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let all = ndjson_numbers(&text);
    assert_eq!(all.len(), 20_000);
    assert_eq!(&all[..5_000], &seen[..]);
    every_issued_number_recorded(&app).await;
    for n in all.iter().step_by(200) {
        assert!(found(&app, n).await, "{n}");
    }
    app.stop().await;
}
