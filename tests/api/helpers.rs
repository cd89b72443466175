//! Test harness: `spawn_app()` runs the application in-process on port 0 with its own data
//! directory; `TrackdProcess` runs the real binary and keeps its log for failure messages.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::sync::oneshot;
use trackd::app::Application;
pub use trackd::config::SequenceStoreKind;
use trackd::config::{Overrides, Settings};
use trackd::tracking::number::TrackingNumber;
use trackd::tracking::permute::{Permutation, PermutationKey};

/// The permutation key the tests configure, so they can decode sequence numbers.
pub const KEY_HEX: &str = "5f1e0c2d9a8b7c6d5e4f30211203f4e5";

pub fn permutation() -> Permutation {
    Permutation::new(&PermutationKey::from_hex(KEY_HEX).unwrap())
}

/// The sequence number behind a tracking number issued with [`KEY_HEX`].
pub fn seq_of(number: &str) -> u64 {
    let n = TrackingNumber::parse(number).unwrap_or_else(|e| panic!("{number} is not valid: {e}"));
    permutation().invert(n.code())
}

pub const ORDER_QUERY: &str = "origin_country_id=MY&destination_country_id=ID&weight=1.234\
    &created_at=2018-11-20T19:29:32%2B08:00&customer_id=de619854-b59b-425e-9db4-943979e1bd49\
    &customer_name=RedBox%20Logistics&customer_slug=redbox-logistics";

/// Makes an existing directory private (0700), as trackd requires of its data directory
/// (`tempfile`'s directories are 0755).
pub fn make_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if dir.exists() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}

pub fn test_settings(data_dir: &Path) -> Settings {
    make_private(data_dir);
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data_dir.to_owned()),
        ..Default::default()
    };
    let mut s = Settings::load_from(None, Vec::new(), &overrides).expect("default settings");
    s.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    // Tests of other things run open, whatever stores they use (the security tests set keys).
    s.auth.open = true;
    s.tracking.permutation_key = PermutationKey::from_hex(KEY_HEX);
    s.log.level = "warn".into();
    s
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// The operations listener.
    pub admin_addr: SocketAddr,
    /// The running application's state (its services, for tests that reach inside).
    pub state: Arc<trackd::http::state::AppState>,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    _tmp: Option<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// A GET on the operations listener (`/readyz` with details, `/metrics`).
    pub async fn admin(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("http://{}{path}", self.admin_addr))
            .send()
            .await
            .expect("request")
    }

    /// Waits until the operations listener's `/readyz` is 200 (a number in hand, records and
    /// policies served).
    pub async fn wait_ready(&self, limit: Duration) {
        let t0 = std::time::Instant::now();
        loop {
            let r = self.admin("/readyz").await;
            if r.status() == 200 {
                return;
            }
            assert!(
                t0.elapsed() < limit,
                "not ready after {limit:?}: {}",
                r.text().await.unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Issues one number and returns it.
    pub async fn issue(&self) -> String {
        let r = self
            .get(&format!("/api/next-tracking-number/?{ORDER_QUERY}"))
            .await;
        assert_eq!(r.status(), 201);
        let v: serde_json::Value = r.json().await.unwrap();
        v["tracking_number"].as_str().unwrap().to_owned()
    }

    /// Stops the server and waits for it to finish draining.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let mut app = spawn_app_in(&dir, customize).await;
    app._tmp = Some(tmp);
    app
}

/// Runs the app on an existing data directory (for restart tests).
pub async fn spawn_app_in(dir: &Path, customize: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings(dir);
    customize(&mut settings);
    trackd::telemetry::init(&settings.log);
    let app = Application::build(&settings).await.expect("app builds");
    let addr = app.local_addr();
    let admin_addr = app
        .admin_addr()
        .expect("the tests' settings have an admin listener");
    let state = app.state();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        admin_addr,
        state,
        client: reqwest::Client::new(),
        data_dir: dir.to_owned(),
        _tmp: None,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

/// The real `trackd` binary, with its stderr captured.
pub struct TrackdProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// The operations listener.
    pub admin: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl TrackdProcess {
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        make_private(data_dir);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trackd"));
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("TRACKD_TRACKING__PERMUTATION_KEY", KEY_HEX)
        .env("TRACKD_AUTH__OPEN", "true")
        .env("TRACKD_LOG__LEVEL", "info")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn trackd");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for (which, prefix) in [(0, "listening on http://"), (1, "operations on http://")] {
                    if let Some(i) = line.find(prefix) {
                        // Text or JSON log line: the address ends at a quote or a space.
                        let rest = &line[i + prefix.len()..];
                        let addr = rest.split(['"', ' ']).next().unwrap_or("").to_owned();
                        let _ = addr_tx.send((which, addr));
                    }
                }
                log2.lock().unwrap().push(line);
            }
        });
        let mut addrs: [Option<SocketAddr>; 2] = [None, None];
        while addrs.iter().any(Option::is_none) {
            match addr_rx.recv_timeout(Duration::from_secs(20)) {
                Ok((which, a)) => match a.parse() {
                    Ok(addr) => addrs[which] = Some(addr),
                    Err(e) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!("no address in the log line ({e}): {a}");
                    }
                },
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "trackd did not start; log:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        }
        let [Some(addr), Some(admin)] = addrs else {
            unreachable!("both addresses were read")
        };
        Self {
            child,
            addr,
            admin,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "trackd did not exit within {limit:?}; log:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for TrackdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The label run's JSON body for the tests' order, with `count` if given.
pub fn order_body(count: Option<u64>) -> serde_json::Value {
    let mut v = serde_json::json!({
        "origin_country_id": "MY",
        "destination_country_id": "ID",
        "weight": 1.25,
        "customer_id": "de619854-b59b-425e-9db4-943979e1bd49",
        "customer_name": "RedBox Logistics",
        "customer_slug": "redbox-logistics",
    });
    if let Some(c) = count {
        v["count"] = serde_json::json!(c);
    }
    v
}
