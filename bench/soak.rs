//! A bounded soak of the shared Redis store: several trackd instances behind concurrent
//! clients, random SIGKILLs of the instances and of Redis (each restarted: an instance with its
//! data directory, Redis from its append-only file), every issued number collected. Prints the
//! numbers issued, the faults injected, the duplicates (must be 0) and the 503s answered.
//!
//! `cargo build --release && cargo run --release --example soak -- [--seconds 180]
//! [--instances 3] [--clients 12] [--seed N]`; needs `redis-server` on the PATH. Exits 1 on a
//! duplicate.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trackd::tracking::number::TrackingNumber;
use trackd::tracking::permute::{Permutation, PermutationKey};

const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const QUERY: &str = "origin_country_id=MY&destination_country_id=ID&weight=1.234\
    &customer_id=de619854-b59b-425e-9db4-943979e1bd49&customer_name=Soak&customer_slug=soak";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A tiny deterministic generator (xorshift), so a run can be repeated with `--seed`.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

struct Redis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("redis directory");
        let mut r = Self {
            port: free_port(),
            dir: dir.to_owned(),
            child: None,
        };
        r.launch();
        r
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH");
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

struct Instance {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn trackd_bin() -> PathBuf {
    std::env::var_os("TRACKD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/trackd"))
}

fn trackd(args: &[&str], redis: &str, dir: &Path) -> Command {
    let mut c = Command::new(trackd_bin());
    c.args(args)
        .env("TRACKD_TRACKING__SEQUENCE_STORE", "redis")
        .env("TRACKD_TRACKING__REDIS_URL", redis)
        .env("TRACKD_TRACKING__PERMUTATION_KEY", KEY)
        .env("TRACKD_TRACKING__BLOCK_MIN", "50")
        .env("TRACKD_TRACKING__BLOCK_MAX", "5000")
        .env("TRACKD_TRACKING__WAIT_TIMEOUT_MS", "300")
        .env("TRACKD_LOG__LEVEL", "error")
        .env("TRACKD_STORAGE__DATA_DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

impl Instance {
    fn launch(&mut self, redis: &str) {
        let listen = format!("127.0.0.1:{}", self.port);
        let child = trackd(&["serve", "--listen", &listen], redis, &self.dir)
            .spawn()
            .expect("the release trackd (cargo build --release)");
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "trackd did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Default)]
struct Counts {
    issued: AtomicU64,
    unavailable: AtomicU64,
    unavailable_redis_down: AtomicU64,
    refused_connections: AtomicU64,
}

#[tokio::main]
async fn main() {
    let seconds = arg("--seconds", 180);
    let n_instances = arg("--instances", 3) as usize;
    let clients = arg("--clients", 12) as usize;
    let mut rng = Rng(arg("--seed", 0x5eed_1234_abcd_ef01).max(1));
    let tmp = std::env::temp_dir().join(format!("trackd-soak-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let mut redis = Redis::start(&tmp.join("redis"));
    let init = trackd(&["seq", "init"], &redis.url(), &tmp.join("init"))
        .status()
        .expect("trackd seq init");
    assert!(init.success(), "trackd seq init failed");
    let mut instances: Vec<Instance> = (0..n_instances)
        .map(|i| Instance {
            port: free_port(),
            dir: tmp.join(format!("i{i}")),
            child: None,
        })
        .collect();
    for i in &mut instances {
        i.launch(&redis.url());
    }
    let ports: Vec<u16> = instances.iter().map(|i| i.port).collect();

    let numbers: Arc<Mutex<Vec<String>>> = Arc::default();
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let redis_down = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut workers = Vec::new();
    for w in 0..clients {
        let (numbers, counts, stop, redis_down, client, ports) = (
            numbers.clone(),
            counts.clone(),
            stop.clone(),
            redis_down.clone(),
            client.clone(),
            ports.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let port = ports[i % ports.len()];
                i += 1;
                let url = format!("http://127.0.0.1:{port}/api/next-tracking-number/?{QUERY}");
                match client.get(url).send().await {
                    Ok(r) if r.status() == 201 => {
                        if let Ok(v) = r.json::<serde_json::Value>().await
                            && let Some(n) = v["tracking_number"].as_str()
                        {
                            mine.push(n.to_owned());
                            counts.issued.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(r) if r.status() == 503 => {
                        counts.unavailable.fetch_add(1, Ordering::Relaxed);
                        if redis_down.load(Ordering::Relaxed) {
                            counts
                                .unavailable_redis_down
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => {
                        counts.refused_connections.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
            numbers.lock().expect("numbers").extend(mine);
        }));
    }

    let (mut trackd_kills, mut redis_kills) = (0u32, 0u32);
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(2_000 + rng.below(4_000))).await;
        if Instant::now() >= end {
            break;
        }
        let pause = Duration::from_millis(300 + rng.below(1_500));
        if rng.below(3) == 0 {
            redis.kill();
            redis_down.store(true, Ordering::Relaxed);
            redis_kills += 1;
            tokio::time::sleep(pause).await;
            redis.launch();
            redis_down.store(false, Ordering::Relaxed);
        } else {
            let i = rng.below(instances.len() as u64) as usize;
            instances[i].kill();
            trackd_kills += 1;
            tokio::time::sleep(pause).await;
            instances[i].launch(&redis.url());
        }
        println!(
            "t={:>4.0}s issued {:>9} faults: {trackd_kills} trackd, {redis_kills} redis",
            started.elapsed().as_secs_f64(),
            counts.issued.load(Ordering::Relaxed)
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    for i in &mut instances {
        i.kill();
    }
    redis.kill();

    let permutation = Permutation::new(&PermutationKey::from_hex(KEY).expect("key"));
    let numbers = numbers.lock().expect("numbers");
    let mut seen = HashSet::with_capacity(numbers.len());
    let mut duplicates = 0u64;
    for n in numbers.iter() {
        let seq = TrackingNumber::parse(n)
            .map(|t| permutation.invert(t.code()))
            .expect("a well-formed number");
        if !seen.insert(seq) {
            duplicates += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "soak: {secs:.0} s, {n_instances} instances, {clients} clients\n\
         numbers issued:           {}\n\
         faults injected:          {} ({trackd_kills} trackd SIGKILLs, {redis_kills} Redis SIGKILLs)\n\
         duplicates:               {duplicates}\n\
         503s answered:            {} ({} while Redis was down)\n\
         connections refused:      {} (instances being restarted)",
        numbers.len(),
        trackd_kills + redis_kills,
        counts.unavailable.load(Ordering::Relaxed),
        counts.unavailable_redis_down.load(Ordering::Relaxed),
        counts.refused_connections.load(Ordering::Relaxed),
    );
    let _ = std::fs::remove_dir_all(&tmp);
    if duplicates > 0 {
        std::process::exit(1);
    }
}
