//! Operations: `/metrics` checked with `promtool check metrics`, `/readyz` flipping during a
//! store outage (embedded and a real `redis-server` of the test's own) and while draining,
//! `X-Request-Id`, the access log (JSON, no customer data) and `/openapi.json`.

use crate::helpers::*;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use trackd::app::Application;

const PATH: &str = "/api/next-tracking-number/";

/// `promtool`, or `None` when it is not installed and this is not CI (`.ci/run` sets
/// `TRACKD_CI=1` and installs it, so there the check can never be skipped).
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("TRACKD_CI").is_none(),
            "promtool is required in CI (apt-get install prometheus)"
        );
        eprintln!("promtool not installed: skipping the exposition-format check");
        return None;
    }
    Some("promtool")
}

async fn scrape(app: &TestApp) -> String {
    let r = app.admin("/metrics").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.headers()
    );
    r.text().await.unwrap()
}

/// Asserts that the scraped sample `prefix` is at least `min`.
fn assert_at_least(text: &str, prefix: &str, min: f64) {
    assert!(
        sample(text, prefix).is_some_and(|v| v >= min),
        "{prefix} below {min}:\n{text}"
    );
}

/// The value of the first sample whose line starts with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_are_well_formed_and_name_route_templates_only() {
    let app = spawn_app().await;
    let mut numbers = Vec::new();
    for _ in 0..5 {
        numbers.push(app.issue().await);
    }
    assert_eq!(app.get(&format!("{PATH}?weight=0")).await.status(), 400);
    assert_eq!(app.get("/no/such/path/MYID123").await.status(), 404);
    assert_eq!(app.admin("/readyz").await.status(), 200);
    // Records (async by default) are written within the flush interval.
    let mut text = scrape(&app).await;
    for _ in 0..100 {
        if sample(&text, r#"trackd_records_written_total{store="embedded"}"#) >= Some(5.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = scrape(&app).await;
    }
    assert_at_least(
        &text,
        r#"trackd_records_written_total{store="embedded"}"#,
        5.0,
    );
    assert_at_least(
        &text,
        r#"trackd_records_batches_total{store="embedded"}"#,
        1.0,
    );
    assert_eq!(
        sample(
            &text,
            r#"trackd_records_write_failures_total{store="embedded"}"#
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"trackd_records_queued{store="embedded"}"#),
        Some(0.0),
        "{text}"
    );
    // Each batch write is timed (recorded before it counts as written).
    assert_at_least(
        &text,
        r#"trackd_records_batch_write_seconds_count{store="embedded"}"#,
        1.0,
    );
    assert_at_least(
        &text,
        r#"trackd_records_batch_write_seconds_bucket{store="embedded",le="+Inf"}"#,
        1.0,
    );

    for name in [
        "trackd_http_requests_total",
        "trackd_http_request_duration_seconds_bucket",
        "trackd_tracking_numbers_issued_total",
        "trackd_sequence_blocks_reserved_total",
        "trackd_sequence_block_size",
        "trackd_sequence_numbers_buffered",
        "trackd_sequence_store_latency_seconds_bucket",
        "trackd_build_info",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    for help in [
        "# HELP trackd_http_requests_total ",
        "# TYPE trackd_http_requests_total counter",
        "# TYPE trackd_http_request_duration_seconds histogram",
        "# TYPE trackd_sequence_store_latency_seconds histogram",
        "# TYPE trackd_sequence_numbers_buffered gauge",
    ] {
        assert!(text.contains(help), "{help}:\n{text}");
    }
    let issued_201 = sample(
        &text,
        r#"trackd_http_requests_total{route="/api/next-tracking-number/",method="GET",status="201"}"#,
    )
    .unwrap_or_else(|| panic!("no 201 series:\n{text}"));
    assert!(issued_201 >= 5.0, "{issued_201}");
    assert!(text.contains(r#"route="unmatched""#), "{text}");
    assert!(text.contains(r#"status="400""#), "{text}");
    assert!(
        sample(&text, "trackd_tracking_numbers_issued_total").unwrap() >= 5.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"trackd_sequence_blocks_reserved_total{store="embedded"}"#
        )
        .unwrap()
            >= 1.0
    );
    assert!(text.contains(r#"trackd_build_info{version=""#), "{text}");
    // Never an id, a number or customer data in a label.
    for n in &numbers {
        assert!(!text.contains(n.as_str()));
    }
    for secret in ["de619854", "redbox", "RedBox", "MYID123", "/no/such"] {
        assert!(!text.contains(secret), "{secret} leaked into metrics");
    }

    if let Some(promtool) = promtool() {
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics failed:\n{}{}\n--- scraped text:\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn request_id_is_echoed_when_sane_and_generated_otherwise() {
    let app = spawn_app().await;
    let get = |id: Option<String>| {
        let mut rb = app.client.get(app.url("/healthz"));
        if let Some(id) = id {
            rb = rb.header("x-request-id", id);
        }
        async move {
            let r = rb.send().await.unwrap();
            r.headers()["x-request-id"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(get(Some("abc-123.XYZ_7".into())).await, "abc-123.XYZ_7");
    let max = "r".repeat(128);
    assert_eq!(get(Some(max.clone())).await, max);
    let too_long = "r".repeat(129);
    let generated = get(Some(too_long.clone())).await;
    assert_ne!(generated, too_long);
    let with_space = get(Some("two words".into())).await;
    assert_ne!(with_space, "two words");
    let (a, b) = (get(None).await, get(None).await);
    assert_ne!(a, b);
    for id in [&generated, &with_space, &a, &b] {
        assert!(
            (1..=128).contains(&id.len()) && id.bytes().all(|c| (0x21..=0x7e).contains(&c)),
            "{id}"
        );
    }
    // Errors carry it too.
    let r = app
        .client
        .get(app.url("/nowhere"))
        .header("x-request-id", "err-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-request-id"], "err-1");
    app.stop().await;
}

#[tokio::test]
async fn readiness_fails_while_the_embedded_store_is_down_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let app = spawn_app_in(&dir, |s| {
        s.tracking.block_min = 10;
        s.tracking.block_max = 10;
        s.tracking.wait_timeout = Duration::from_millis(200);
    })
    .await;
    app.wait_ready(Duration::from_secs(5)).await;
    let moved = tmp.path().join("moved");
    std::fs::rename(&dir, &moved).unwrap();
    // Spend what is buffered; the store cannot refill.
    let t0 = Instant::now();
    while app.get(&format!("{PATH}?{ORDER_QUERY}")).await.status() == 201 {
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
    let r = app.admin("/readyz").await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "not ready");
    assert_eq!(v["checks"]["tracking"]["ok"], false);
    assert!(v["detail"].as_str().unwrap().contains("tracking"), "{v}");
    let text = scrape(&app).await;
    assert_at_least(
        &text,
        r#"trackd_sequence_store_errors_total{store="embedded",kind="unavailable"}"#,
        1.0,
    );
    assert_eq!(app.get("/healthz").await.status(), 200, "still alive");
    std::fs::rename(&moved, &dir).unwrap();
    app.wait_ready(Duration::from_secs(5)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_killed_allocator_actor_is_restarted_and_one_that_keeps_dying_fails_health() {
    let app = spawn_app_with(|s| {
        s.tracking.block_min = 10;
        s.tracking.block_max = 10;
    })
    .await;
    let health = std::sync::Arc::clone(app.state.issuer.numbers().allocator().health());
    let child = |restarts: u64| {
        let health = std::sync::Arc::clone(&health);
        async move {
            let t0 = Instant::now();
            loop {
                if health.restarts() >= restarts
                    && let Some(c) = health.child()
                {
                    return c;
                }
                assert!(t0.elapsed() < Duration::from_secs(5), "not restarted");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let mut numbers = std::collections::HashSet::new();
    let limit = trackd::supervise::MAX_RESTARTS as u64;
    for round in 0..limit {
        child(round).await.kill();
        child(round + 1).await;
        app.wait_ready(Duration::from_secs(5)).await;
        // Past the blocks in hand: the restarted actor refills.
        for _ in 0..25 {
            assert!(numbers.insert(app.issue().await), "a number issued twice");
        }
        let r: Value = app.admin("/readyz").await.json().await.unwrap();
        assert_eq!(r["checks"]["tracking"]["allocator_restarts"], round + 1);
        assert_eq!(app.get("/healthz").await.status(), 200);
    }
    // Once more within the window: not restarted; readiness and liveness say why.
    child(limit).await.kill();
    let t0 = Instant::now();
    while app.get("/healthz").await.status() == 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "liveness never failed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let live = app.get("/healthz").await;
    assert_eq!(live.status(), 503);
    let live: Value = live.json().await.unwrap();
    assert!(
        live["detail"].as_str().unwrap().contains("allocator actor"),
        "{live}"
    );
    let ready = app.admin("/readyz").await;
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert!(
        ready["detail"]
            .as_str()
            .unwrap()
            .contains("not restarted again"),
        "{ready}"
    );
    app.stop().await;
}

#[tokio::test]
async fn readiness_fails_while_draining() {
    let tmp = tempfile::tempdir().unwrap();
    let mut settings = test_settings(tmp.path());
    settings.server.shutdown_linger = Duration::from_millis(3000);
    trackd::telemetry::init(&settings.log);
    let app = Application::build(&settings).await.unwrap();
    let addr = app.local_addr();
    let admin = app.admin_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    // Kept-alive connections (public and operations), opened before shutdown begins.
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/readyz");
    let admin_url = format!("http://{admin}/readyz");
    // Ready once the first block is in hand.
    let t0 = Instant::now();
    while client.get(&url).send().await.unwrap().status() != 200 {
        assert!(t0.elapsed() < Duration::from_secs(5), "never ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(client.get(&admin_url).send().await.unwrap().status(), 200);
    tx.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["connection"], "close");
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"status": "not ready"}),
        "no details in public"
    );
    let r = client.get(&admin_url).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["draining"], true);
    assert!(v["detail"].as_str().unwrap().contains("draining"), "{v}");
    assert_eq!(v["checks"]["tracking"]["ok"], true, "numbers still in hand");
    server.await.unwrap();
}

#[tokio::test]
async fn readiness_follows_a_redis_outage() {
    // Append-only with fsync always: the restart below keeps the counters.
    let mut redis = crate::servers::RedisServer::start_durable();
    let tmp = tempfile::tempdir().unwrap();
    let configure = |s: &mut trackd::config::Settings| {
        s.tracking.sequence_store = SequenceStoreKind::Redis;
        s.tracking.redis_url = redis.url().into();
        s.tracking.redis_key_prefix = format!("trackd-ops-test-{}", redis.port);
        s.tracking.redis_shards = 2;
        s.tracking.block_min = 10;
        s.tracking.block_max = 10;
        s.tracking.wait_timeout = Duration::from_millis(200);
        s.tracking.store_timeout = Duration::from_millis(200);
    };
    let mut settings = test_settings(tmp.path());
    configure(&mut settings);
    let key = settings.tracking.permutation_key.unwrap();
    trackd::tracking::store::redis::RedisStore::from_settings(
        &settings.tracking,
        &key,
        Default::default(),
        Default::default(),
    )
    .init()
    .await
    .unwrap_or_else(|e| panic!("seq init: {e}\n{}", redis.log()));
    let app = spawn_app_in(&tmp.path().join("data"), configure).await;
    app.wait_ready(Duration::from_secs(5)).await;
    let before = app.issue().await;

    redis.kill();
    let t0 = Instant::now();
    while app.get(&format!("{PATH}?{ORDER_QUERY}")).await.status() == 201 {
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
    let r = app.admin("/readyz").await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["checks"]["tracking"]["store"], "redis");
    assert_eq!(v["checks"]["tracking"]["store_healthy"], false);
    let text = scrape(&app).await;
    assert!(
        sample(&text, r#"trackd_sequence_store_up{store="redis"}"#) == Some(0.0),
        "{text}"
    );

    redis.restart();
    app.wait_ready(Duration::from_secs(10)).await;
    let after = app.issue().await;
    assert!(seq_of(&after) != seq_of(&before));

    // Counter loss: every shard counter goes back to 0 (as after a restart without
    // persistence). trackd refuses them, counts `corrupt` errors, and turns not ready once
    // its buffered numbers are spent, instead of issuing numbers again.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    for shard in 0..2 {
        let key = format!("trackd-ops-test-{}:seq:{{{shard}}}", redis.port);
        let _: () = redis::cmd("SET").arg(&key).arg(0).query(&mut conn).unwrap();
    }
    let t0 = Instant::now();
    while app.get(&format!("{PATH}?{ORDER_QUERY}")).await.status() == 201 {
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
    let r = app.admin("/readyz").await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["checks"]["tracking"]["store_detail"]["in_service"], 0,
        "{v}"
    );
    let text = scrape(&app).await;
    assert_at_least(
        &text,
        r#"trackd_sequence_store_errors_total{store="redis",kind="corrupt"}"#,
        2.0,
    );
    app.stop().await;
}

#[test]
fn access_log_is_json_with_request_fields_and_no_customer_data() {
    let tmp = tempfile::tempdir().unwrap();
    let p = TrackdProcess::start(
        tmp.path(),
        &[
            ("TRACKD_LOG__FORMAT", "json"),
            ("TRACKD_LOG__LEVEL", "debug"),
        ],
    );
    let head = blocking_get(
        p.addr,
        &format!("{PATH}?{ORDER_QUERY}"),
        "X-Request-Id: log-probe-1\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    let t0 = Instant::now();
    let line = loop {
        if let Some(l) = p
            .log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("log-probe-1"))
            .cloned()
        {
            break l;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{}", p.log_text());
        std::thread::sleep(Duration::from_millis(20));
    };
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["request_id"], "log-probe-1");
    assert_eq!(v["route"], "/api/next-tracking-number/");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["status"], 201);
    assert!(v["duration_us"].is_u64(), "{line}");
    let log = p.log_text();
    for personal in ["RedBox", "redbox-logistics", "de619854", "customer"] {
        assert!(!log.contains(personal), "{personal} in the log:\n{log}");
    }
    assert_log_lines_are_json(&log);
}

/// One HTTP/1.1 request on its own connection (for tests without a runtime); returns the
/// whole response text.
fn blocking_get(addr: std::net::SocketAddr, target: &str, extra_headers: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: test\r\n{extra_headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    std::io::Read::read_to_string(&mut s, &mut buf).unwrap();
    buf
}

fn assert_log_lines_are_json(log: &str) {
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(serde_json::from_str::<Value>(l).is_ok(), "not JSON: {l}");
    }
}

#[test]
fn sigterm_logs_and_counts_the_numbers_left_in_hand() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = TrackdProcess::start(tmp.path(), &[]);
    let head = blocking_get(p.addr, &format!("{PATH}?{ORDER_QUERY}"), "");
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    let log = p.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("reserved numbers left unissued are skipped"))
        .unwrap_or_else(|| panic!("no skipped-numbers line:\n{log}"));
    assert!(line.contains("issued=1"), "{line}");
    assert!(line.contains("skipped="), "{line}");
}

#[tokio::test]
async fn openapi_describes_the_whole_contract() {
    let app = spawn_app().await;
    let r = app.get("/openapi.json").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["openapi"], "3.1.0");
    for path in [
        "/api/next-tracking-number/",
        "/customer_insurance/user_list/",
        "/customer_insurance/user_policy/{user_id}/",
        "/customer_insurance/policy_detail/{policy_id}/",
        "/customer_insurance/user_policy_dump/{user_id}/{format}/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(v["paths"][path]["get"].is_object(), "{path} not described");
    }
    // Every route template of the metrics is described (except `unmatched`).
    for t in trackd::http::route::TEMPLATES {
        assert!(
            *t == trackd::http::route::UNMATCHED || v["paths"][*t].is_object(),
            "{t}"
        );
    }
    app.stop().await;
}
