//! Personal data protected by default: API keys with scopes on every route family (401/403 as
//! JSON, nothing issued or leaked), operations on the admin listener only, idempotency keys
//! that belong to their client, refusal to serve real data open, a private data directory,
//! TOML errors that never echo a secret, TLS to Redis and PostgreSQL, and dumps safe to open.

use crate::helpers::{ORDER_QUERY, spawn_app_with};
use crate::policy::{TestDb, connect, spawn_policy_app, wait_loaded};
use crate::servers::{PgDatabase, PrivatePostgres, RedisServer, run_seq};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;
use trackd::auth::{Scope, new_key};
use trackd::config::{SequenceStoreKind, Settings};

const NEXT: &str = "/api/next-tracking-number/";

struct Clients {
    issuer: String,
    reader: String,
    insurer: String,
    voider: String,
    entries: Vec<String>,
}

fn clients() -> Clients {
    let (issuer, a) = new_key("issuer", &[Scope::Issue]).unwrap();
    let (reader, b) = new_key("reader", &[Scope::Lookup]).unwrap();
    let (insurer, c) = new_key("insurer", &[Scope::Policy]).unwrap();
    let (voider, d) = new_key("voider", &[Scope::Void]).unwrap();
    Clients {
        issuer,
        reader,
        insurer,
        voider,
        entries: vec![a, b, c, d],
    }
}

fn with_keys(entries: &[String]) -> impl FnOnce(&mut Settings) + use<> {
    let entries = entries.to_vec();
    move |s: &mut Settings| {
        s.auth.open = false;
        s.auth.keys = entries.iter().map(|e| e.as_str().into()).collect();
    }
}

fn run_body() -> Value {
    json!({
        "origin_country_id": "MY", "destination_country_id": "ID", "weight": "1.5",
        "customer_id": "de619854-b59b-425e-9db4-943979e1bd49",
        "customer_name": "Secret Customer Name", "customer_slug": "secret", "count": 2
    })
}

#[tokio::test]
async fn every_route_family_needs_a_key_with_its_scope() {
    let c = clients();
    let keys = with_keys(&c.entries);
    // Durable: the number's record is there once it is answered.
    let app = spawn_app_with(move |s| {
        keys(s);
        s.records.mode = trackd::config::RecordsMode::Durable;
    })
    .await;
    let client = &app.client;
    // One number issued with the right key, to look up.
    let issued: Value = client
        .get(app.url(&format!("{NEXT}?{ORDER_QUERY}")))
        .bearer_auth(&c.issuer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let number = issued["tracking_number"].as_str().unwrap().to_owned();
    let issued_before = app.state.issuer.numbers().allocator().issued();

    // (method, path, body, the key that may, the key that may not, the error shape)
    let lookup = format!("/api/tracking-numbers/{number}");
    type Case<'a> = (&'a str, String, Option<Value>, &'a str, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "GET",
            format!("{NEXT}?{ORDER_QUERY}"),
            None,
            &c.issuer,
            &c.reader,
            "detail",
        ),
        (
            "POST",
            "/api/tracking-numbers".into(),
            Some(run_body()),
            &c.issuer,
            &c.insurer,
            "detail",
        ),
        ("GET", lookup.clone(), None, &c.reader, &c.issuer, "detail"),
        (
            "GET",
            "/customer_insurance/user_list/".into(),
            None,
            &c.insurer,
            &c.reader,
            "data",
        ),
        (
            "GET",
            "/customer_insurance/user_policy/3/".into(),
            None,
            &c.insurer,
            &c.issuer,
            "data",
        ),
        (
            "GET",
            "/customer_insurance/policy_detail/3/".into(),
            None,
            &c.insurer,
            &c.reader,
            "data",
        ),
        (
            "GET",
            "/customer_insurance/user_policy_dump/3/csv/".into(),
            None,
            &c.insurer,
            &c.issuer,
            "data",
        ),
        (
            "POST",
            format!("{lookup}/void"),
            Some(json!({"reason": "cancelled"})),
            &c.voider,
            &c.reader,
            "detail",
        ),
    ];
    for (method, path, body, good, other, shape) in &cases {
        let send = |auth: Option<String>| {
            let mut req = match *method {
                "POST" => client.post(app.url(path)).json(body.as_ref().unwrap()),
                _ => client.get(app.url(path)),
            };
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            req.send()
        };
        for auth in [
            None,
            Some("Bearer trk_0000".to_owned()),
            Some(format!("Bearer {good}x")),
            Some(format!("Basic {good}")),
            Some(good.to_string()),
        ] {
            let r = send(auth.clone()).await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} {auth:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"trackd\"");
            assert_eq!(r.headers()["content-type"], "application/json");
            let text = r.text().await.unwrap();
            let v: Value = serde_json::from_str(&text).unwrap();
            assert!(v.get(*shape).is_some(), "{path}: {text}");
            assert!(!text.contains("Secret") && !text.contains("Zo"), "{text}");
        }
        let r = send(Some(format!("Bearer {other}"))).await.unwrap();
        assert_eq!(r.status(), 403, "{method} {path} with another scope");
        let v: Value = r.json().await.unwrap();
        assert!(v.get(*shape).is_some(), "{v}");
        let r = send(Some(format!("Bearer {good}"))).await.unwrap();
        assert!(r.status().is_success(), "{method} {path}: {}", r.status());
    }
    // Only the requests with the issuing key issued numbers: the GET and the run of two.
    assert_eq!(
        app.state.issuer.numbers().allocator().issued(),
        issued_before + 3
    );
    // What needs no key: liveness, the plain readiness status, the contract.
    for open in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(app.get(open).await.status(), 200, "{open}");
    }
    app.stop().await;
}

#[tokio::test]
async fn operations_are_on_the_admin_listener_and_nothing_else_is() {
    let app = spawn_app_with(|_| {}).await;
    for path in ["/metrics", "/metrics/", "/METRICS"] {
        assert_eq!(app.get(path).await.status(), 404, "public {path}");
    }
    app.wait_ready(Duration::from_secs(10)).await;
    let public: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(public, json!({"status": "ready"}), "no details in public");
    let admin: Value = app.admin("/readyz").await.json().await.unwrap();
    assert!(
        admin["checks"]["tracking"]["buffered_numbers"].is_number(),
        "{admin}"
    );
    let metrics = app.admin("/metrics").await;
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("trackd_ready"));
    assert_eq!(app.admin("/healthz").await.status(), 200);
    for path in [
        format!("{NEXT}?{ORDER_QUERY}"),
        "/customer_insurance/user_list/".into(),
        "/openapi.json".into(),
    ] {
        assert_eq!(app.admin(&path).await.status(), 404, "admin {path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_belongs_to_its_client() {
    let (a, entry_a) = new_key("client-a", &[Scope::Issue]).unwrap();
    let (b, entry_b) = new_key("client-b", &[Scope::Issue]).unwrap();
    let app = spawn_app_with(with_keys(&[entry_a, entry_b])).await;
    let get = |key: &str, query: String| {
        app.client
            .get(app.url(&format!("{NEXT}?{query}")))
            .bearer_auth(key)
            .header("idempotency-key", "order-1")
            .send()
    };
    let first = get(&a, ORDER_QUERY.into()).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    // Another client with the same key name and other parameters: its own key, no 422.
    let other = ORDER_QUERY.replace("weight=1.234", "weight=2");
    let theirs = get(&b, other.clone()).await.unwrap();
    assert_eq!(theirs.status(), 201);
    assert!(theirs.headers().get("idempotent-replayed").is_none());
    let theirs: Value = theirs.json().await.unwrap();
    assert_ne!(theirs["tracking_number"], first["tracking_number"]);
    // Each client's retry replays its own answer.
    let again: Value = get(&a, ORDER_QUERY.into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again, first);
    let again: Value = get(&b, other).await.unwrap().json().await.unwrap();
    assert_eq!(again, theirs);
    app.stop().await;
}

#[tokio::test]
async fn real_data_without_keys_is_refused_unless_declared_open() {
    let tmp = tempfile::tempdir().unwrap();
    let db = PgDatabase::create();
    let mut s = crate::helpers::test_settings(tmp.path());
    s.auth.open = false;
    s.records.postgres_url = db.url().into();
    let err = trackd::app::Application::build(&s)
        .await
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("records.postgres_url") && text.contains("auth.open"),
        "{text}"
    );
    // The binary says the same and exits non-zero.
    let out = Command::new(env!("CARGO_BIN_EXE_trackd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", ""])
        .arg("--data-dir")
        .arg(tmp.path().join("bin"))
        .env(
            "TRACKD_POLICY__DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/x",
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policy.database_url") && err.contains("auth.open"),
        "{err}"
    );
    // Declared open: it starts.
    s.auth.open = true;
    s.storage.data_dir = tmp.path().join("open");
    assert!(trackd::app::Application::build(&s).await.is_ok());
}

#[tokio::test]
async fn the_data_directory_and_its_files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let app = crate::helpers::spawn_app_in(&dir, |_| {}).await;
    app.issue().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.stop().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let mut files = 0;
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                assert_eq!(mode(&p), 0o700, "{}", p.display());
                stack.push(p);
            } else {
                assert_eq!(mode(&p), 0o600, "{}", p.display());
                files += 1;
            }
        }
    }
    assert!(
        files >= 5,
        "sequence, key, LOCK, trackd.redb, journal files: {files}"
    );
    // A directory others can read is refused, naming the fix.
    let mut s = crate::helpers::test_settings(&dir);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    s.storage.data_dir = dir.clone();
    let err = trackd::app::Application::build(&s)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("chmod 700"), "{err}");
}

#[test]
fn a_broken_configuration_file_never_echoes_its_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("trackd.toml");
    let (_, entry) = new_key("a", &[Scope::Issue]).unwrap();
    std::fs::write(
        &file,
        format!(
            "[tracking]\npermutation_key = \"5f1e0c2d9a8b7c6d5e4f30211203f4e5\n[auth]\nkeys = [\"{entry}\"]\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trackd"))
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line ") && err.contains("not shown"), "{err}");
    assert!(
        !err.contains("5f1e0c2d") && !err.contains(&entry[10..]),
        "{err}"
    );
}

/// A certificate authority and a server certificate for `localhost` and 127.0.0.1 (PEM).
struct Certs {
    ca: String,
    cert: String,
    key: String,
    dir: tempfile::TempDir,
}

impl Certs {
    /// A server certificate for `localhost`, and for 127.0.0.1 too if `with_ip`.
    fn new(with_ip: bool) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        if with_ip {
            params
                .subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        }
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let c = Self {
            ca: ca.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
            dir,
        };
        for (name, pem) in [
            ("ca.crt", &c.ca),
            ("server.crt", &c.cert),
            ("server.key", &c.key),
        ] {
            std::fs::write(c.dir.path().join(name), pem).unwrap();
        }
        c
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

#[tokio::test]
async fn the_redis_store_is_reached_over_tls() {
    let certs = Certs::new(true);
    let port = crate::servers::free_port().to_string();
    let (cert, key, ca) = (
        certs.path("server.crt"),
        certs.path("server.key"),
        certs.path("ca.crt"),
    );
    let redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--tls-port",
        &port,
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-ca-cert-file",
        ca.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]);
    let tls_url = format!("rediss://127.0.0.1:{port}");
    let env: Vec<(String, String)> = [
        ("TRACKD_TRACKING__SEQUENCE_STORE", "redis".to_owned()),
        ("TRACKD_TRACKING__REDIS_URL", tls_url.clone()),
        ("TRACKD_TLS__CA_FILE", ca.display().to_string()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.clone()))
    .collect();
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out) = run_seq(&["init"], &env, tmp.path());
    assert!(ok, "seq init over TLS: {out}");
    let url = tls_url.clone();
    let app = spawn_app_with(move |s| {
        s.tracking.sequence_store = SequenceStoreKind::Redis;
        s.tracking.redis_url = url.into();
        s.tls.ca_file = ca;
    })
    .await;
    assert_eq!(
        app.get(&format!("{NEXT}?{ORDER_QUERY}")).await.status(),
        201
    );
    app.stop().await;
    // Without the authority the server's certificate is not trusted: nothing is issued.
    let (ok, out) = run_seq(&["init"], &env[..2], tmp.path());
    assert!(!ok, "an untrusted certificate is refused: {out}");
    drop(redis);
}

#[tokio::test]
async fn the_postgres_stores_are_reached_over_tls_and_verified() {
    // For `localhost` only: reached as 127.0.0.1, the name does not match.
    let certs = Certs::new(false);
    let pg = PrivatePostgres::start_tls(&certs.cert, &certs.key);
    let base = format!("postgres://postgres@localhost:{}/postgres", pg.port());
    let ca = certs.path("ca.crt");
    // One instance (its sequence goes on), reached with each mode in turn.
    let data = tempfile::tempdir().unwrap();
    for mode in ["require", "verify-ca", "verify-full"] {
        let url = format!("{base}?sslmode={mode}");
        let (u, ca2) = (url.clone(), ca.clone());
        let app = crate::helpers::spawn_app_in(data.path(), move |s| {
            s.records.postgres_url = u.into();
            s.tls.ca_file = ca2;
        })
        .await;
        let n = app.issue().await;
        // The record is written over TLS and found again.
        let mut found = false;
        for _ in 0..100 {
            if app
                .get(&format!("/api/tracking-numbers/{n}"))
                .await
                .status()
                == 200
            {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(found, "{mode}: record of {n} not found");
        app.stop().await;
    }
    // verify-full to a name the certificate does not carry is refused; verify-ca is not.
    let wrong = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full",
        pg.port()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_trackd"))
        .args(["db", "migrate", "--database-url", &wrong])
        .env("TRACKD_TLS__CA_FILE", &ca)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a wrong name is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_trackd"))
        .args(["db", "migrate", "--database-url"])
        .arg(wrong.replace("verify-full", "verify-ca"))
        .env("TRACKD_TLS__CA_FILE", &ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify-ca checks the chain only: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the authority, verification fails.
    let out = Command::new(env!("CARGO_BIN_EXE_trackd"))
        .args(["db", "migrate", "--database-url"])
        .arg(format!("{base}?sslmode=verify-full"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unknown authority is refused");
}

#[tokio::test]
async fn dumps_are_safe_to_open_in_a_spreadsheet() {
    let db = TestDb::with_sample().await;
    let c = connect(&db.url).await;
    c.batch_execute(
        "UPDATE \"user\" SET first_name = '=HYPERLINK(\"http://evil\",\"x\")' WHERE id = 3",
    )
    .await
    .unwrap();
    let app = spawn_policy_app(&db.url, |_| {}).await;
    wait_loaded(&app).await;
    // The change is loaded (NOTIFY), then the dumps.
    let mut csv = String::new();
    for _ in 0..100 {
        csv = app
            .get("/customer_insurance/user_policy_dump/3/csv/")
            .await
            .text()
            .await
            .unwrap();
        if csv.contains("HYPERLINK") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rows = ::csv::Reader::from_reader(csv.as_bytes());
    let first = rows.records().next().unwrap().unwrap();
    assert_eq!(&first[0], "'=HYPERLINK(\"http://evil\",\"x\")", "{csv}");
    // XLSX keeps it a string cell (never a formula).
    let xlsx = app
        .get("/customer_insurance/user_policy_dump/3/xlsx/")
        .await
        .bytes()
        .await
        .unwrap();
    use calamine::{Reader, Xlsx};
    let mut book: Xlsx<_> = Xlsx::new(std::io::Cursor::new(xlsx.to_vec())).unwrap();
    let sheet = book.sheet_names()[0].clone();
    let range = book.worksheet_range(&sheet).unwrap();
    let cell = range.get((1, 0)).unwrap();
    assert!(
        matches!(cell, calamine::Data::String(s) if s.starts_with("=HYPERLINK")),
        "{cell:?}"
    );
    let formulas = book.worksheet_formula(&sheet).unwrap();
    assert!(
        formulas.used_cells().all(|(_, _, f)| f.is_empty()),
        "no formula"
    );
    app.stop().await;
}
