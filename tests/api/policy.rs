//! The customer-insurance API against real PostgreSQL: every test gets its own database on
//! 127.0.0.1:5432 (dropped on drop, even when the test fails) or, to stop PostgreSQL under a
//! running trackd, its own private PostgreSQL instance on a free port.

use crate::helpers::*;
use crate::servers::PrivatePostgres;
use serde_json::{Value, json};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;
use trackd::policy::{migrate, sample::SampleData, seed};

const SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432";
/// A database of its own on the shared server, dropped when the guard is.
pub struct TestDb {
    name: String,
    pub url: String,
}

static DB_SEQ: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    async fn create() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "trackd_test_{}_{}_{nanos}",
            std::process::id(),
            DB_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let admin = connect(&format!("{SERVER_URL}/postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = format!("{SERVER_URL}/{name}");
        Self { name, url }
    }

    /// Creates the database, applies the migrations and loads the bundled sample.
    pub async fn with_sample() -> Self {
        let db = Self::create().await;
        prepare(&db.url).await;
        db
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) =
                    tokio_postgres::connect(&format!("{SERVER_URL}/postgres"), NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(conn);
    c
}

/// Migrates (twice: the second run must be a no-op) and seeds the sample.
async fn prepare(url: &str) {
    let mut c = connect(url).await;
    let applied = migrate::migrate(&mut c).await.expect("migrate");
    assert_eq!(applied.len(), migrate::MIGRATIONS.len());
    assert!(migrate::migrate(&mut c).await.unwrap().is_empty());
    seed::seed_sample(&mut c, &SampleData::bundled().unwrap())
        .await
        .expect("seed sample");
}

pub async fn spawn_policy_app(
    url: &str,
    customize: impl FnOnce(&mut trackd::config::Settings),
) -> TestApp {
    let url = url.to_owned();
    spawn_app_with(move |s| {
        s.policy.database_url = url.into();
        s.policy.retry = Duration::from_millis(200);
        s.policy.connect_timeout = Duration::from_millis(1000);
        customize(s);
    })
    .await
}

/// Waits until the policy routes answer (the first load is done).
pub async fn wait_loaded(app: &TestApp) {
    let start = Instant::now();
    loop {
        let r = app.admin("/readyz").await;
        if r.status() == 200 {
            return;
        }
        let body: Value = r.json().await.unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "policy cache not loaded: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let r = if path == "/readyz" {
        app.admin(path).await
    } else {
        app.get(path).await
    };
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(ct.as_deref(), Some("application/json"), "{path}");
    (status, r.json().await.unwrap())
}

const P: &str = "/customer_insurance";

#[tokio::test]
async fn every_route_and_error_from_postgres() {
    let db = TestDb::with_sample().await;
    let app = spawn_policy_app(&db.url, |_| {}).await;
    wait_loaded(&app).await;
    let sample = SampleData::bundled().unwrap();

    // user_policy: with and without trailing slash, non-ASCII names, null expiry.
    for path in [format!("{P}/user_policy/4/"), format!("{P}/user_policy/4")] {
        let (s, v) = get_json(&app, &path).await;
        assert_eq!(s, 200);
        assert_eq!(v["status"], true);
        let rows = v["data"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["user__first_name"], "李");
        assert_eq!(rows[0]["user_id"], 4);
        assert_eq!(rows[0]["policy_id"], 2);
        assert_eq!(rows[0]["policy__name"], "Whole Life Plus");
        assert_eq!(rows[0]["policy_number"], "TA-02-0004-01");
        assert_eq!(rows[0]["start_date_time"], "2018-05-01T04:52:00Z");
        assert_eq!(rows[0]["expiry_date_time"], Value::Null);
        assert_eq!(
            rows[0]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>()
                .len(),
            7
        );
    }
    // A known user without policies.
    assert_eq!(
        get_json(&app, &format!("{P}/user_policy/9/")).await,
        (200, json!({"data": [], "status": true}))
    );

    // policy_detail.
    let (s, v) = get_json(&app, &format!("{P}/policy_detail/7/")).await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"data": [{
            "id": 7, "name": "Voyage Assist – Schengen", "policy_product_code": "TRV-SCH-01",
            "description": "Medical, baggage and trip-delay cover for Schengen visas; multi-line\ndescription.",
            "policy_category__name": "Travel",
            "tnc": "Claims within 30 days of return; €30,000 minimum medical cover.",
            "coverage_years": 0
        }], "status": true})
    );

    // user_list: everything, streamed, in id order.
    let r = app.get(&format!("{P}/user_list/")).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-length").is_none(), "streamed");
    let v: Value = r.json().await.unwrap();
    let ids: Vec<i64> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect();
    let mut expected: Vec<i64> = sample.users.iter().map(|u| u.id).collect();
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(v["status"], true);
    assert_eq!(
        v["data"][2],
        json!({"id": 3, "first_name": "Zoë", "last_name": "Ünal", "profession": "Architect",
               "email": "zoe.unal@example.de", "mobile": "+49 30 1234567"})
    );

    // Keyset pages walk the same list.
    let mut walked: Vec<i64> = Vec::new();
    let mut after: Option<i64> = None;
    loop {
        let q = match after {
            Some(a) => format!("{P}/user_list?limit=5&after_id={a}"),
            None => format!("{P}/user_list/?limit=5"),
        };
        let (s, v) = get_json(&app, &q).await;
        assert_eq!(s, 200, "{v}");
        let page: Vec<i64> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_i64().unwrap())
            .collect();
        assert!(page.len() <= 5);
        walked.extend(&page);
        match v["next_after_id"].as_i64() {
            Some(n) => {
                assert_eq!(Some(&n), page.last());
                after = Some(n);
            }
            None => break,
        }
    }
    assert_eq!(walked, expected);
    let (_, v) = get_json(&app, &format!("{P}/user_list?after_id=10")).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["next_after_id"], Value::Null);

    // 400s.
    for path in [
        "/user_policy/abc/",
        "/user_policy/-1/",
        "/user_policy/1.5",
        "/user_policy/99999999999999999999/",
        "/policy_detail/x/",
        "/user_policy_dump/x/csv/",
        "/user_policy_dump/1/pdf/",
        "/user_list/?limit=0",
        "/user_list/?limit=abc",
        "/user_list/?limit=1001",
        "/user_list/?limit=-5",
        "/user_list/?after_id=-1",
        "/user_list/?limit=1&limit=2",
    ] {
        let (s, v) = get_json(&app, &format!("{P}{path}")).await;
        assert_eq!(s, 400, "{path}: {v}");
        assert_eq!(v["status"], false, "{path}");
        assert!(v["data"].as_str().unwrap().len() > 10, "{path}: {v}");
    }
    // 404s: unknown user or policy in the contract's shape, unknown paths in the general one.
    for path in [
        "/user_policy/12345/",
        "/policy_detail/999/",
        "/user_policy_dump/12345/csv/",
    ] {
        let (s, v) = get_json(&app, &format!("{P}{path}")).await;
        assert_eq!(s, 404, "{path}");
        assert_eq!(v["status"], false);
    }
    for path in [
        "/customer_insurance/",
        "/customer_insurance/nope/",
        "/customer_insurance/user_list/4/",
        "/customer_insurance/user_policy/",
        "/customer_insurance/user_policy/1/2/",
        "/customer_insurance/user_policy_dump/1/",
    ] {
        assert_eq!(
            get_json(&app, path).await,
            (404, json!({"detail": "Not found."})),
            "{path}"
        );
    }
    // 405 with Allow; HEAD is fine.
    let r = app
        .client
        .post(app.url(&format!("{P}/user_policy/1/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"detail": "Method \"POST\" not allowed."})
    );
    let r = app
        .client
        .head(app.url(&format!("{P}/policy_detail/1")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Readiness reports the cache.
    let (_, v) = get_json(&app, "/readyz").await;
    assert_eq!(v["checks"]["policy"]["ok"], true);
    assert_eq!(v["checks"]["policy"]["source"], "postgres");
    assert_eq!(
        v["checks"]["policy"]["user_policies"],
        sample.user_policies.len()
    );
    app.stop().await;
}

#[tokio::test]
async fn changes_in_postgres_are_served_within_a_second() {
    let db = TestDb::with_sample().await;
    // A long interval: only NOTIFY can make the change visible in time.
    let app = spawn_policy_app(&db.url, |s| {
        s.policy.refresh_interval = Duration::from_secs(3600)
    })
    .await;
    wait_loaded(&app).await;
    let c = connect(&db.url).await;

    async fn until(app: &TestApp, path: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            let (_, v) = get_json(app, path).await;
            if ok(&v) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "{what} not visible after 1 s: {v}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    c.execute(
        "UPDATE policy SET name = 'Medicare Platinum' WHERE id = 3",
        &[],
    )
    .await
    .unwrap();
    until(&app, &format!("{P}/policy_detail/3/"), "update", |v| {
        v["data"][0]["name"] == "Medicare Platinum"
    })
    .await;

    c.execute(
        "INSERT INTO \"user\" (id, first_name, email) VALUES (500, 'Ngozi', 'n@example.ng')",
        &[],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO user_policy (policy_number, amount_insured, start_date_time, policy_id, user_id)
         VALUES ('NEW-1', 1000, '2024-02-29T12:00:00Z', 2, 500)",
        &[],
    )
    .await
    .unwrap();
    until(&app, &format!("{P}/user_policy/500/"), "insert", |v| {
        v["data"][0]["policy_number"] == "NEW-1"
            && v["data"][0]["start_date_time"] == "2024-02-29T12:00:00Z"
    })
    .await;

    c.execute("DELETE FROM \"user\" WHERE id = 500", &[])
        .await
        .unwrap();
    until(&app, &format!("{P}/user_policy/500/"), "delete", |v| {
        v["status"] == false
    })
    .await;
    app.stop().await;
}

/// Reads the rows of an XLSX dump back (dates as `YYYY-MM-DD`, empty cells as "").
fn xlsx_rows(bytes: &[u8]) -> Vec<Vec<String>> {
    use calamine::{Data, Reader, Xlsx, open_workbook_from_rs};
    let mut wb: Xlsx<_> = open_workbook_from_rs(std::io::Cursor::new(bytes.to_vec())).unwrap();
    assert_eq!(wb.sheet_names(), ["User Policies"]);
    let range = wb.worksheet_range("User Policies").unwrap();
    range
        .rows()
        .map(|row| {
            row.iter()
                .map(|c| match c {
                    Data::Empty => String::new(),
                    Data::String(s) => s.clone(),
                    Data::Float(f) => format!("{f}"),
                    Data::Int(i) => i.to_string(),
                    Data::DateTime(d) => {
                        let epoch = time::macros::date!(1899 - 12 - 30);
                        (epoch + time::Duration::days(d.as_f64() as i64)).to_string()
                    }
                    other => panic!("unexpected cell {other:?}"),
                })
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn the_three_dump_formats_carry_the_same_rows() {
    let db = TestDb::with_sample().await;
    let app = spawn_policy_app(&db.url, |_| {}).await;
    wait_loaded(&app).await;
    // 6: a 273-character first name and a null expiry; 4: CJK names; 9: no policies.
    for user in [6, 4, 9, 10] {
        let mut tables = Vec::new();
        for format in ["csv", "JSON", "Xlsx"] {
            let r = app
                .get(&format!("{P}/user_policy_dump/{user}/{format}/"))
                .await;
            assert_eq!(r.status(), 200, "{user} {format}");
            let h = r.headers().clone();
            let cd = h["content-disposition"].to_str().unwrap().to_owned();
            let ext = format.to_ascii_lowercase();
            assert!(
                cd.starts_with(&format!("attachment; filename=\"UserPolicies-{user}-")),
                "{cd}"
            );
            assert!(cd.contains(&format!(".{ext}\"")), "{cd}");
            let expected_ct = match ext.as_str() {
                "csv" => "text/csv; charset=utf-8",
                "json" => "application/json",
                _ => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            };
            assert_eq!(h["content-type"], expected_ct);
            let bytes = r.bytes().await.unwrap();
            let table: Vec<Vec<String>> = match ext.as_str() {
                "csv" => {
                    let mut rd = csv::ReaderBuilder::new()
                        .has_headers(false)
                        .from_reader(&bytes[..]);
                    rd.records()
                        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
                        .collect()
                }
                "json" => {
                    let v: Vec<serde_json::Map<String, Value>> =
                        serde_json::from_slice(&bytes).unwrap();
                    // Keys appear in column order (the parsed map sorts them).
                    let text = std::str::from_utf8(&bytes).unwrap();
                    let end = text.find('}').unwrap_or(0);
                    let pos: Vec<Option<usize>> = trackd::policy::export::COLUMNS
                        .iter()
                        .map(|c| text[..end].find(&format!("\"{c}\":")))
                        .collect();
                    if !v.is_empty() {
                        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{text}");
                    }
                    let header: Vec<String> = trackd::policy::export::COLUMNS
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                    std::iter::once(header.clone())
                        .chain(v.iter().map(|row| {
                            assert_eq!(row.len(), header.len());
                            header
                                .iter()
                                .map(|k| match &row[k] {
                                    Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                })
                                .collect()
                        }))
                        .collect()
                }
                _ => xlsx_rows(&bytes),
            };
            tables.push(table);
        }
        assert_eq!(tables[0], tables[1], "csv vs json for user {user}");
        assert_eq!(tables[0], tables[2], "csv vs xlsx for user {user}");
        let t = &tables[0];
        assert_eq!(t[0], trackd::policy::export::COLUMNS);
        let (_, v) = get_json(&app, &format!("{P}/user_policy/{user}/")).await;
        assert_eq!(t.len() - 1, v["data"].as_array().unwrap().len());
        for (row, api) in t[1..].iter().zip(v["data"].as_array().unwrap()) {
            assert_eq!(row[0], api["user__first_name"].as_str().unwrap());
            assert_eq!(row[4], api["policy_number"].as_str().unwrap());
            let day = |x: &Value| x.as_str().map(|s| s[..10].to_owned()).unwrap_or_default();
            assert_eq!(row[5], day(&api["start_date_time"]));
            assert_eq!(row[6], day(&api["expiry_date_time"]));
        }
        if user == 6 {
            assert!(t[1][0].chars().count() > 250);
            assert!(t.iter().any(|r| r[6].is_empty()), "a null expiry");
        }
    }
    // Non-ASCII names get an RFC 5987 filename* next to an ASCII one.
    let r = app.get(&format!("{P}/user_policy_dump/3/csv")).await;
    let cd = r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        cd,
        "attachment; filename=\"UserPolicies-3-Zo_.csv\"; filename*=UTF-8''UserPolicies-3-Zo%C3%AB.csv"
    );
    app.stop().await;
}

#[tokio::test]
async fn answers_503_until_the_first_load() {
    // Nothing listens on port 1: every load fails.
    let app = spawn_policy_app("postgres://postgres@127.0.0.1:1/none", |_| {}).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for path in [
        "/user_list/",
        "/user_policy/1/",
        "/user_policy_dump/1/xlsx/",
    ] {
        let r = app.get(&format!("{P}{path}")).await;
        assert_eq!(r.status(), 503, "{path}");
        assert!(r.headers().contains_key("retry-after"));
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], false);
        assert!(v["data"].as_str().unwrap().contains("not been loaded"));
    }
    // Argument errors of known routes still come after readiness; unknown paths are 404.
    assert_eq!(app.get(&format!("{P}/nope/")).await.status(), 404);
    let r = app.admin("/readyz").await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["checks"]["policy"]["ok"], false);
    assert!(v["checks"]["policy"]["last_error"].is_string(), "{v}");
    // The tracking API is unaffected.
    assert_eq!(
        app.get(&format!("/api/next-tracking-number/?{ORDER_QUERY}"))
            .await
            .status(),
        201
    );
    app.stop().await;
}

#[tokio::test]
async fn sample_data_is_served_without_a_database() {
    let app = spawn_app().await; // policy.database_url = "" by default
    let (s, v) = get_json(&app, &format!("{P}/user_policy/3/")).await;
    assert_eq!(s, 200);
    assert_eq!(v["data"][0]["user__first_name"], "Zoë");
    let (_, v) = get_json(&app, "/readyz").await;
    assert_eq!(v["checks"]["policy"]["source"], "sample");
    app.stop().await;
}

#[tokio::test]
async fn the_cache_keeps_serving_when_postgres_stops() {
    let Some(bin) = PrivatePostgres::bin_dir() else {
        eprintln!("SKIPPED: no PostgreSQL server binaries under /usr/lib/postgresql");
        return;
    };
    let pg = PrivatePostgres::start(bin);
    prepare(&pg.url()).await;
    let app = spawn_policy_app(&pg.url(), |s| {
        s.policy.refresh_interval = Duration::from_secs(1);
        s.policy.retry = Duration::from_millis(100);
    })
    .await;
    wait_loaded(&app).await;
    let (_, before) = get_json(&app, &format!("{P}/user_policy/6/")).await;
    assert_eq!(before["status"], true);

    pg.stop();
    // Several refresh attempts (interval 1 s, retries every 100 ms) fail meanwhile.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2500) {
        let (s, v) = get_json(&app, &format!("{P}/user_policy/6/")).await;
        assert_eq!(s, 200, "{v}\nPostgreSQL log:\n{}", pg.log());
        assert_eq!(v, before);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = app.get(&format!("{P}/user_policy_dump/6/xlsx/")).await;
    assert_eq!(r.status(), 200);
    let (s, v) = get_json(&app, "/readyz").await;
    assert_eq!(s, 200, "still ready with the last good snapshot: {v}");
    assert!(
        v["checks"]["policy"]["last_error"].is_string(),
        "the failed refreshes are reported: {v}"
    );
    app.stop().await;
}

#[tokio::test]
async fn db_migrate_and_seed_commands() {
    let db = TestDb::create().await;
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_trackd"))
            .args(["db"])
            .args(args)
            .args(["--database-url", &db.url])
            .env("TRACKD_LOG__LEVEL", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "trackd db {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(run(&["migrate"]).contains("applied 0001_policy"));
    assert!(run(&["migrate"]).contains("up to date"));
    run(&["seed", "--sample", "--users", "40"]);
    run(&["seed", "--sample"]); // idempotent
    let c = connect(&db.url).await;
    let count = |sql: &'static str| {
        let c = &c;
        async move { c.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let sample = SampleData::bundled().unwrap();
    assert_eq!(
        count("SELECT count(*) FROM \"user\"").await,
        sample.users.len() as i64 + 40
    );
    assert_eq!(
        count("SELECT count(*) FROM user_policy").await,
        sample.user_policies.len() as i64 + 40 * 5
    );
    // Identity sequences continue after the seeded ids.
    let id: i64 = c
        .query_one(
            "INSERT INTO \"user\" (first_name) VALUES ('Next') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(id, sample.users.len() as i64 + 41);
    // The generated users load and serve.
    let app = spawn_policy_app(&db.url, |_| {}).await;
    wait_loaded(&app).await;
    let (s, v) = get_json(
        &app,
        &format!("{P}/user_policy/{}/", sample.users.len() + 1),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), 5);
    app.stop().await;
}
