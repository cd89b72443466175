//! No panic on any input, no stuck connection, bounded storage: instants outside the years
//! 0001–9999 refused (with and without an `Idempotency-Key`), a slowly sent body answered 408
//! (and unable to hold the connection slots), a client that stops reading a streamed list
//! cut off (its snapshot let go), records past their retention removed from PostgreSQL, and a
//! full disk failing closed and recovering.

use crate::helpers::{ORDER_QUERY, TestApp, permutation, spawn_app_in, spawn_app_with};
use crate::policy::{TestDb, connect, spawn_policy_app, wait_loaded};
use crate::servers::PgDatabase;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trackd::records::{Batch, Lookup, Record, RecordSink};
use trackd::tracking::number::TrackingNumber;

const NEXT: &str = "/api/next-tracking-number/";

#[tokio::test]
async fn instants_outside_the_four_digit_years_are_refused_never_a_panic() {
    let app = spawn_app_with(|_| {}).await;
    for created in [
        "9999-12-31T23:59:59-23:59",
        "0000-01-01T00:00:00%2B01:00",
        "0000-12-31T23:59:59Z",
    ] {
        let query = format!("{ORDER_QUERY}&created_at={created}").replacen(
            "created_at=2018-11-20T19:29:32%2B08:00&",
            "",
            1,
        );
        for key in [None, Some("range-key")] {
            let mut req = app.client.get(app.url(&format!("{NEXT}?{query}")));
            if let Some(k) = key {
                req = req.header("idempotency-key", k);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 400, "{created} {key:?}");
            let v: Value = r.json().await.unwrap();
            assert!(
                v["created_at"][0]
                    .as_str()
                    .unwrap()
                    .contains("0001 to 9999"),
                "{v}"
            );
        }
        let body = json!({
            "origin_country_id": "MY", "destination_country_id": "ID", "weight": 1,
            "customer_id": "de619854-b59b-425e-9db4-943979e1bd49", "customer_name": "A",
            "customer_slug": "a", "created_at": created.replace("%2B", "+"), "count": 2
        });
        let r = app
            .client
            .post(app.url("/api/tracking-numbers"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "POST {created}");
    }
    // The edges of the range are accepted and looked up as they were sent.
    let query = ORDER_QUERY.replace("2018-11-20T19:29:32%2B08:00", "0001-01-01T00:00:00Z");
    let v: Value = app
        .get(&format!("{NEXT}?{query}"))
        .await
        .json()
        .await
        .unwrap();
    let n = v["tracking_number"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rec: Value = app
        .get(&format!("/api/tracking-numbers/{n}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rec["order_created_at"], "0001-01-01T00:00:00.000000Z");
    app.stop().await;
}

/// Opens a connection and sends a POST whose body is announced but never finished.
async fn slow_post(app: &TestApp) -> TcpStream {
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(
        b"POST /api/tracking-numbers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{\"count\"",
    )
    .await
    .unwrap();
    s
}

#[tokio::test]
async fn a_body_sent_slowly_gets_408_and_cannot_hold_the_connection_slots() {
    let app = spawn_app_with(|s| {
        s.server.body_read_timeout = Duration::from_millis(400);
        s.server.max_connections = 3;
    })
    .await;
    let t0 = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..3 {
        slow.push(slow_post(&app).await);
    }
    let mut first = slow.remove(0);
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf))
        .await
        .expect("answered, not held")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("did not arrive within 400 ms"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // Every slot was taken by a slow body; a normal request still gets served once they
    // are answered.
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        app.client.get(app.url("/healthz")).send(),
    )
    .await
    .expect("served after the slow bodies timed out")
    .unwrap();
    assert_eq!(r.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_a_streamed_list_is_cut_off() {
    let db = TestDb::with_sample().await;
    {
        let mut c = connect(&db.url).await;
        let data = trackd::policy::sample::SampleData::bundled().unwrap();
        trackd::policy::seed::seed_users(&mut c, &data, 40_000)
            .await
            .unwrap();
    }
    let app = spawn_policy_app(&db.url, |s| {
        s.server.write_timeout = Duration::from_millis(500);
    })
    .await;
    wait_loaded(&app).await;
    let snapshot = app.state.policy.cache.current().unwrap();
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /customer_insurance/user_list/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Reads nothing while the server writes, and the buffers fill up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // What was buffered arrives; then the connection ends before the list does.
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the connection was closed by the server");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(
        !text.trim_end().ends_with("\"status\":true}"),
        "the list was cut off ({} bytes)",
        got.len()
    );
    // The stream let its snapshot go.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        Arc::strong_count(&snapshot),
        2,
        "the cache's and this test's"
    );
    app.stop().await;
}

fn record(seq: u64, issued_at: time::OffsetDateTime) -> Record {
    let number = TrackingNumber::new(
        trackd::tracking::country::CountryCode::parse("MY").unwrap(),
        trackd::tracking::country::CountryCode::parse("ID").unwrap(),
        permutation().permute(seq),
    );
    Record {
        seq,
        number,
        customer_id: uuid::Uuid::from_u128(seq as u128),
        customer_name: format!("Customer {seq}"),
        customer_slug: "c".into(),
        weight_grams: 1_000,
        order_created_at: None,
        issued_at,
        voided: None,
    }
}

#[tokio::test]
async fn records_past_their_retention_are_removed_from_postgres() {
    let db = PgDatabase::create();
    let sink = pg_records(&db);
    let now = time::OffsetDateTime::now_utc();
    let old: Vec<Record> = (0..12_000)
        .map(|s| record(s, now - time::Duration::days(100)))
        .collect();
    let new: Vec<Record> = (12_000..12_500)
        .map(|s| record(s, now - time::Duration::days(2)))
        .collect();
    for chunk in old.chunks(1_000).chain(new.chunks(250)) {
        let mut b = Batch::default();
        for r in chunk {
            b.push(&r.as_ref());
        }
        sink.write(Arc::new(b), false).await.unwrap();
    }
    let void = trackd::records::Void {
        at: now,
        reason: None,
    };
    assert!(matches!(
        sink.void(&old[7].number, void).await.unwrap(),
        trackd::records::Voiding::Voided(_)
    ));
    let cutoff = now - time::Duration::days(90);
    assert_eq!(sink.expire(cutoff).await.unwrap(), 12_000);
    let voids: i64 = connect(&db.url())
        .await
        .query_one("SELECT count(*) FROM tracking_voids", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(voids, 0, "an expired record's void goes with it");
    assert_eq!(sink.expire(cutoff).await.unwrap(), 0);
    match sink.lookup(&old[5].number).await.unwrap() {
        Lookup::Missing {
            expired_before: Some(t),
        } => assert_eq!(t.unix_timestamp(), cutoff.unix_timestamp()),
        other => panic!("{other:?}"),
    }
    for r in new.iter().step_by(50) {
        assert_eq!(
            sink.lookup(&r.number).await.unwrap(),
            Lookup::Found(r.to_json())
        );
    }
}

fn pg_records(db: &PgDatabase) -> trackd::records::postgres::PostgresRecords {
    trackd::records::postgres::PostgresRecords::new(
        &db.url(),
        Duration::from_secs(2),
        2,
        permutation(),
        Default::default(),
    )
}

fn batch_of(records: &[Record]) -> Arc<Batch> {
    let mut b = Batch::default();
    for r in records {
        b.push(&r.as_ref());
    }
    Arc::new(b)
}

#[tokio::test]
async fn a_retried_postgres_batch_keeps_its_committed_rows_and_refuses_other_orders() {
    let db = PgDatabase::create();
    let sink = pg_records(&db);
    let now = time::OffsetDateTime::now_utc();
    let records: Vec<Record> = (0..300).map(|s| record(s, now)).collect();
    sink.write(batch_of(&records), false).await.unwrap();
    // The first attempt committed but its answer was lost: the retry must neither fail on the
    // rows already there nor add any.
    sink.write(batch_of(&records), true).await.unwrap();
    let client = connect(&db.url()).await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM tracking_records", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 300);
    let customers: i64 = client
        .query_one("SELECT count(*) FROM tracking_customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(customers, 300, "one row per customer, written once");
    // Other orders under the same sequences: another deployment writes here.
    let mut other = records[..10].to_vec();
    for r in &mut other {
        r.customer_name.push_str(" (elsewhere)");
    }
    match sink.write(batch_of(&other), true).await {
        Err(trackd::records::SinkError::Rejected(why)) => {
            assert!(why.contains("another deployment"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    for r in records.iter().step_by(37) {
        assert_eq!(
            sink.lookup(&r.number).await.unwrap(),
            Lookup::Found(r.to_json())
        );
    }
}

#[tokio::test]
async fn records_in_the_wide_table_of_earlier_releases_are_migrated_on_first_use() {
    let db = PgDatabase::create();
    let client = connect(&db.url()).await;
    client
        .batch_execute(
            "CREATE TABLE tracking_numbers (
                seq bigint PRIMARY KEY,
                tracking_number char(16) NOT NULL,
                customer_id uuid NOT NULL,
                customer_name text NOT NULL,
                customer_slug text NOT NULL,
                origin_country_id char(2) NOT NULL,
                destination_country_id char(2) NOT NULL,
                weight_grams integer NOT NULL,
                order_created_at timestamptz,
                issued_at timestamptz NOT NULL,
                voided_at timestamptz,
                void_reason text)",
        )
        .await
        .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let mut records: Vec<Record> = (0..50).map(|s| record(s, now)).collect();
    records[3].voided = Some(trackd::records::Void {
        at: now,
        reason: Some("label cancelled".into()),
    });
    records[4].order_created_at = Some(now - time::Duration::hours(1));
    // Two numbers of one customer: migrated to one customer row.
    records[6].customer_id = records[5].customer_id;
    records[6].customer_name = records[5].customer_name.clone();
    for r in &records {
        client
            .execute(
                "INSERT INTO tracking_numbers VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                 $11, $12)",
                &[
                    &(r.seq as i64),
                    &r.number.as_str(),
                    &r.customer_id,
                    &r.customer_name,
                    &r.customer_slug,
                    &r.origin(),
                    &r.destination(),
                    &(r.weight_grams as i32),
                    &r.order_created_at,
                    &r.issued_at,
                    &r.voided.as_ref().map(|v| v.at),
                    &r.voided.as_ref().and_then(|v| v.reason.clone()),
                ],
            )
            .await
            .unwrap();
    }
    let highest = trackd::records::postgres::highest_seq(
        &db.url(),
        Duration::from_secs(2),
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(highest, Some(49), "read from the table not yet migrated");
    let sink = pg_records(&db);
    for r in &records {
        assert_eq!(
            sink.lookup(&r.number).await.unwrap(),
            Lookup::Found(r.to_json()),
            "{}",
            r.seq
        );
    }
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM tracking_records").await, 50);
    assert_eq!(count("SELECT count(*) FROM tracking_customers").await, 49);
    assert_eq!(count("SELECT count(*) FROM tracking_voids").await, 1);
    assert_eq!(
        count("SELECT count(*) FROM tracking_numbers_migrated").await,
        50,
        "the old table is kept for the operator"
    );
    // New records go on after the migrated ones, and a second instance migrates nothing.
    let more: Vec<Record> = (50..60).map(|s| record(s, now)).collect();
    sink.write(batch_of(&more), false).await.unwrap();
    let again = pg_records(&db);
    assert_eq!(
        again.lookup(&more[9].number).await.unwrap(),
        Lookup::Found(more[9].to_json())
    );
    assert_eq!(count("SELECT count(*) FROM tracking_records").await, 60);
}

/// A tmpfs of `mib` MiB mounted for the test (unmounted on drop), or `None` where mounting is
/// not allowed.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u32) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .ok()?;
        out.status.success().then_some(Self { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system of `dir` (a file of zeros until it is full).
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_closed_and_service_resumes_once_space_is_freed() {
    let Some(disk) = SmallDisk::mount(48) else {
        eprintln!("skipped: a tmpfs cannot be mounted here (needs CAP_SYS_ADMIN)");
        return;
    };
    let data = disk.dir.path().join("data");
    let durable = |s: &mut trackd::config::Settings| {
        s.records.mode = trackd::config::RecordsMode::Durable;
        s.records.wait_timeout = Duration::from_millis(500);
        s.tracking.block_min = 50;
        s.tracking.block_max = 50;
        s.tracking.wait_timeout = Duration::from_millis(300);
    };
    let app = spawn_app_in(&data, durable).await;
    let mut acknowledged = Vec::new();
    for _ in 0..200 {
        acknowledged.push(app.issue().await);
    }
    let filler = fill(disk.dir.path());
    // Full: answers turn to 503 (numbers in hand may still be recorded in the journal's
    // preallocated space); never a 201 without its record.
    let t0 = Instant::now();
    let mut refused = 0;
    while t0.elapsed() < Duration::from_secs(4) {
        let r = app.get(&format!("{NEXT}?{ORDER_QUERY}")).await;
        match r.status().as_u16() {
            201 => {
                let v: Value = r.json().await.unwrap();
                acknowledged.push(v["tracking_number"].as_str().unwrap().to_owned());
            }
            503 => refused += 1,
            s => panic!("unexpected {s}"),
        }
    }
    assert!(refused > 0, "a full disk refuses issuing");
    let ready = app.admin("/readyz").await;
    assert_eq!(ready.status(), 503);
    let text = ready.text().await.unwrap();
    assert!(text.contains("No space left on device"), "{text}");
    // Space again: service resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    let t0 = Instant::now();
    loop {
        let r = app.get(&format!("{NEXT}?{ORDER_QUERY}")).await;
        if r.status() == 201 {
            let v: Value = r.json().await.unwrap();
            acknowledged.push(v["tracking_number"].as_str().unwrap().to_owned());
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "not serving again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..100 {
        acknowledged.push(app.issue().await);
    }
    app.stop().await;
    // Every acknowledged number's record is there, after a restart too.
    let app = spawn_app_in(&data, durable).await;
    for n in &acknowledged {
        let r = app.get(&format!("/api/tracking-numbers/{n}")).await;
        assert_eq!(r.status(), 200, "{n}: {}", r.text().await.unwrap());
    }
    eprintln!(
        "{} acknowledged numbers all recorded; {refused} requests refused while the disk was full",
        acknowledged.len()
    );
    app.stop().await;
}
