//! A number's life after it is issued: voiding it (every answer, durability across a SIGKILL
//! in both record stores, idempotent retries, concurrent voids), against the real binary and
//! real PostgreSQL.

use crate::helpers::{ORDER_QUERY, TrackdProcess, spawn_app_with};
use crate::servers::PgDatabase;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Issues one number on `base` (durable records: its record is there once answered).
async fn issue(client: &reqwest::Client, base: &str) -> String {
    let r = client
        .get(format!("{base}/api/next-tracking-number/?{ORDER_QUERY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["tracking_number"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn void(
    client: &reqwest::Client,
    base: &str,
    number: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (u16, Value, bool) {
    let mut req = client.post(format!("{base}/api/tracking-numbers/{number}/void"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let replayed = r.headers().contains_key("idempotent-replayed");
    assert!(
        r.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    (status, r.json().await.unwrap(), replayed)
}

async fn lookup(client: &reqwest::Client, base: &str, number: &str) -> (u16, Value) {
    let r = client
        .get(format!("{base}/api/tracking-numbers/{number}"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Every answer of the void route, on one store (`pg`: records in that database).
async fn every_answer(pg: Option<&PgDatabase>) {
    let url = pg.map(PgDatabase::url);
    let app = spawn_app_with(|s| {
        s.records.mode = trackd::config::RecordsMode::Durable;
        if let Some(u) = &url {
            s.records.postgres_url = trackd::config::Secret::new(u.clone());
        }
    })
    .await;
    let (c, base) = (&app.client, app.url(""));
    let n = issue(c, &base).await;
    let (status, before) = lookup(c, &base, &n).await;
    assert_eq!(status, 200);
    assert_eq!(before["status"], "issued");
    assert_eq!(before["voided_at"], Value::Null);

    let t0 = time::OffsetDateTime::now_utc();
    let (status, voided, _) =
        void(c, &base, &n, Some(json!({"reason": "label damaged"})), None).await;
    assert_eq!(status, 200, "{voided}");
    assert_eq!(voided["status"], "voided");
    assert_eq!(voided["void_reason"], "label damaged");
    assert_eq!(voided["tracking_number"], n.as_str());
    let at = trackd::support::rfc3339::parse(voided["voided_at"].as_str().unwrap()).unwrap();
    assert!(at >= t0 - time::Duration::seconds(1) && at <= time::OffsetDateTime::now_utc());
    // The order data is the record's, untouched.
    for field in [
        "customer_id",
        "customer_name",
        "customer_slug",
        "weight",
        "created_at",
    ] {
        assert_eq!(voided[field], before[field], "{field}");
    }
    let (status, after) = lookup(c, &base, &n).await;
    assert_eq!(status, 200);
    assert_eq!(after, voided);

    // Again: 409 with the record and its first void.
    let (status, again, _) = void(c, &base, &n, Some(json!({"reason": "other"})), None).await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["void_reason"], "label damaged");
    assert_eq!(again["voided_at"], voided["voided_at"]);
    assert!(again["detail"].as_str().unwrap().contains("already voided"));

    // Without a body, and with an empty object: no reason.
    let m = issue(c, &base).await;
    let (status, v, _) = void(c, &base, &m, None, None).await;
    assert_eq!((status, &v["void_reason"]), (200, &Value::Null), "{v}");
    let m = issue(c, &base).await;
    let (status, v, _) = void(c, &base, &m, Some(json!({})), None).await;
    assert_eq!((status, &v["status"]), (200, &json!("voided")), "{v}");

    // Never issued: 404. (A valid number: right check character, an unused sequence.)
    let unused = {
        let p = crate::helpers::permutation();
        let cc = |c| trackd::tracking::country::CountryCode::parse(c).unwrap();
        trackd::tracking::number::TrackingNumber::new(cc("MY"), cc("ID"), p.permute(9_000_000_000))
            .to_string()
    };
    let (status, v, _) = void(c, &base, &unused, None, None).await;
    assert_eq!(status, 404, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("No tracking number"));

    // Malformed numbers and check characters: 400 naming them, as the lookup does.
    let mut typo = n.clone().into_bytes();
    typo[15] = if typo[15] == b'0' { b'1' } else { b'0' };
    for bad in [
        String::from_utf8(typo).unwrap(),
        "MYID123".into(),
        "ZZ!!".into(),
    ] {
        let (status, v, _) = void(c, &base, &bad, None, None).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(v["tracking_number"][0].as_str().is_some(), "{v}");
    }
    // Bad bodies: 400 naming the field; not JSON: 400; other content types: 415.
    let m = issue(c, &base).await;
    for (body, field) in [
        (json!({"reason": "x".repeat(256)}), "reason"),
        (json!({"reason": 7}), "reason"),
        (json!({"reason": "a\u{7}b"}), "reason"),
    ] {
        let (status, v, _) = void(c, &base, &m, Some(body), None).await;
        assert_eq!(status, 400, "{v}");
        assert!(v[field][0].as_str().is_some(), "{v}");
    }
    let r = c
        .post(app.url(&format!("/api/tracking-numbers/{m}/void")))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.json::<Value>().await.unwrap()["detail"]
            .as_str()
            .unwrap()
            .contains("JSON")
    );
    let r = c
        .post(app.url(&format!("/api/tracking-numbers/{m}/void")))
        .header("content-type", "text/plain")
        .body("reason")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // A reason of exactly 255 characters is fine; none of the refused voids took effect.
    let (status, v, _) = void(c, &base, &m, Some(json!({"reason": "é".repeat(255)})), None).await;
    assert_eq!(status, 200, "{v}");
    // GET is not the void.
    let r = app.get(&format!("/api/tracking-numbers/{m}/void")).await;
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");

    // Counted.
    let metrics = app.admin("/metrics").await.text().await.unwrap();
    let voided_total: f64 = metrics
        .lines()
        .find(|l| l.starts_with("trackd_tracking_numbers_voided_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("the void counter");
    assert!(voided_total >= 4.0, "{voided_total}");
    app.stop().await;
}

#[tokio::test]
async fn voiding_answers_200_409_404_400_in_the_embedded_store() {
    every_answer(None).await;
}

#[tokio::test]
async fn voiding_answers_200_409_404_400_in_postgres() {
    let db = PgDatabase::create();
    every_answer(Some(&db)).await;
}

/// Issues, voids, SIGKILLs right after the 200, restarts: the void is still there.
async fn void_survives_sigkill(env: &[(&str, &str)]) {
    let tmp = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut proc = TrackdProcess::start(tmp.path(), env);
    let base = proc.url("");
    let mut voided = Vec::new();
    for i in 0..20 {
        let n = issue(&client, &base).await;
        let reason = format!("cancelled {i}");
        let (status, v, _) =
            void(&client, &base, &n, Some(json!({ "reason": reason })), None).await;
        assert_eq!(status, 200, "{v}");
        voided.push((n, v));
    }
    proc.signal("KILL");
    proc.wait_exit(Duration::from_secs(5));
    let again = TrackdProcess::start(tmp.path(), env);
    let base = again.url("");
    for (n, v) in &voided {
        let (status, now) = lookup(&client, &base, n).await;
        assert_eq!(status, 200, "{n}");
        assert_eq!(&now, v, "{n}: the void survives the SIGKILL");
        let (status, _, _) = void(&client, &base, n, None, None).await;
        assert_eq!(status, 409, "{n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_answered_200_survives_a_sigkill_in_the_embedded_store() {
    void_survives_sigkill(&[("TRACKD_RECORDS__MODE", "durable")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_answered_200_survives_a_sigkill_in_postgres() {
    let db = PgDatabase::create();
    let url = db.url();
    void_survives_sigkill(&[
        ("TRACKD_RECORDS__MODE", "durable"),
        ("TRACKD_RECORDS__POSTGRES_URL", &url),
    ])
    .await;
}

/// Concurrent voids of one number: exactly one 200, the rest 409 with the same void.
async fn one_void_wins(pg: Option<&PgDatabase>) {
    let url = pg.map(PgDatabase::url);
    let app = spawn_app_with(|s| {
        s.records.mode = trackd::config::RecordsMode::Durable;
        if let Some(u) = &url {
            s.records.postgres_url = trackd::config::Secret::new(u.clone());
        }
    })
    .await;
    let base = app.url("");
    for round in 0..5 {
        let n = issue(&app.client, &base).await;
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (c, base, n) = (app.client.clone(), base.clone(), n.clone());
                tokio::spawn(async move {
                    void(
                        &c,
                        &base,
                        &n,
                        Some(json!({ "reason": format!("r{i}") })),
                        None,
                    )
                    .await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        let winners: Vec<_> = answers.iter().filter(|a| a.0 == 200).collect();
        assert_eq!(winners.len(), 1, "round {round}: {answers:?}");
        let first = &winners[0].1;
        for (status, v, _) in &answers {
            assert!(*status == 200 || *status == 409, "{status} {v}");
            assert_eq!(v["voided_at"], first["voided_at"]);
            assert_eq!(v["void_reason"], first["void_reason"]);
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_voids_of_one_number_give_exactly_one_200_embedded() {
    one_void_wins(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_voids_of_one_number_give_exactly_one_200_postgres() {
    let db = PgDatabase::create();
    one_void_wins(Some(&db)).await;
}

#[tokio::test]
async fn a_void_retried_with_its_idempotency_key_gets_the_first_answer() {
    let app = spawn_app_with(|s| s.records.mode = trackd::config::RecordsMode::Durable).await;
    let (c, base) = (&app.client, app.url(""));
    let n = issue(c, &base).await;
    let body = || Some(json!({"reason": "duplicate label"}));
    let (status, first, replayed) = void(c, &base, &n, body(), Some("void-1")).await;
    assert_eq!((status, replayed), (200, false), "{first}");
    // The retry gets the 200 again (not a 409), marked as replayed.
    let (status, again, replayed) = void(c, &base, &n, body(), Some("void-1")).await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(again, first);
    // The same key with another reason is another request: 422.
    let (status, v, _) = void(c, &base, &n, Some(json!({"reason": "x"})), Some("void-1")).await;
    assert_eq!(status, 422, "{v}");
    // Another key: the number is voided already.
    let (status, _, _) = void(c, &base, &n, body(), Some("void-2")).await;
    assert_eq!(status, 409);
    // A 404 is not remembered: once the record exists, the same key voids it.
    let async_app = spawn_app_with(|s| s.records.flush_interval = Duration::from_millis(300)).await;
    let (c2, base2) = (&async_app.client, async_app.url(""));
    let m = issue(c2, &base2).await;
    let t0 = Instant::now();
    loop {
        let (status, v, _) = void(c2, &base2, &m, None, Some("early")).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 404, "{v}");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "record never written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    async_app.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn with_records_off_the_void_route_says_why_it_cannot_void() {
    let app = spawn_app_with(|s| s.records.mode = trackd::config::RecordsMode::Off).await;
    let n = app.issue().await;
    let (status, v, _) = void(&app.client, &app.url(""), &n, None, None).await;
    assert_eq!(status, 404, "{v}");
    assert!(
        v["detail"].as_str().unwrap().contains("records.mode"),
        "{v}"
    );
    app.stop().await;
}
