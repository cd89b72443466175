//! Label runs of 100,000 numbers: how long one streamed run takes with records `async` and
//! `durable` (embedded store), its numbers per second, and the server's memory during it.
//!
//!   cargo build --release && cargo run --release --example label_run -- [--count 100000]
//!       [--rounds 3] [--format ndjson|csv|json]
//!
//! Each round starts a fresh release trackd per mode (alternating async, durable), warms it
//! with a run of 1,000, then times one run from the request to its last byte. Memory: the
//! server's resident set before the run and its peak (VmHWM) after it, from /proc. CPU: the
//! server's user + system time over the run, per number. Medians over the rounds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn trackd_bin() -> PathBuf {
    std::env::var_os("TRACKD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/trackd"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(dir: &Path, mode: &str) -> Self {
        let port = free_port();
        let child = Command::new(trackd_bin())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("TRACKD_STORAGE__DATA_DIR", dir)
            .env("TRACKD_RECORDS__MODE", mode)
            .env("TRACKD_LOG__LEVEL", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the release trackd (cargo build --release)");
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "trackd did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    /// A `/proc/<pid>/status` field in KiB.
    fn status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// User + system CPU time in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let s =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Run {
    seconds: f64,
    numbers: u64,
    rss_before_kib: u64,
    peak_kib: u64,
    cpu_us_per_number: f64,
}

async fn one_run(client: &reqwest::Client, s: &Server, count: u64, accept: &str) -> Run {
    let body = serde_json::json!({
        "origin_country_id": "MY", "destination_country_id": "ID", "weight": 1.25,
        "customer_id": "de619854-b59b-425e-9db4-943979e1bd49",
        "customer_name": "RedBox Logistics", "customer_slug": "redbox-logistics",
        "count": count,
    });
    let url = format!("http://127.0.0.1:{}/api/tracking-numbers", s.port);
    let rss_before_kib = s.status_kib("VmRSS:");
    let ticks0 = s.cpu_ticks();
    let t0 = Instant::now();
    let mut r = client
        .post(&url)
        .header("accept", accept)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 201, "the run was refused");
    let mut lines = 0u64;
    let mut bytes = 0usize;
    while let Some(chunk) = r.chunk().await.expect("the whole body") {
        lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        bytes += chunk.len();
    }
    let seconds = t0.elapsed().as_secs_f64();
    let ticks = s.cpu_ticks() - ticks0;
    let numbers = match accept {
        "text/csv" => lines.saturating_sub(1),
        "application/x-ndjson" => lines,
        _ => count,
    };
    assert!(
        bytes > 0 && numbers == count,
        "{numbers} of {count} numbers"
    );
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Run {
        seconds,
        numbers,
        rss_before_kib,
        peak_kib: s.status_kib("VmHWM:"),
        cpu_us_per_number: ticks as f64 / hz * 1e6 / numbers as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let count: u64 = arg("--count", "100000").parse().expect("--count");
    let rounds: usize = arg("--rounds", "3").parse().expect("--rounds");
    let accept = match arg("--format", "ndjson").as_str() {
        "csv" => "text/csv",
        "json" => "application/json",
        _ => "application/x-ndjson",
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let client = reqwest::Client::new();
    let modes = ["async", "durable"];
    let mut runs: Vec<Vec<Run>> = modes.iter().map(|_| Vec::new()).collect();
    println!("label run of {count} numbers as {accept}, {rounds} rounds, modes alternated");
    for round in 0..rounds {
        for (m, mode) in modes.iter().enumerate() {
            let dir = tmp.path().join(format!("{mode}-{round}"));
            let s = Server::start(&dir, mode);
            one_run(&client, &s, 1000, accept).await;
            let r = one_run(&client, &s, count, accept).await;
            println!(
                "  round {round} {mode:>7}: {:.3} s, {:>9.0} numbers/s, server CPU {:.2} µs/number, \
                 RSS {:.1} MiB before, peak {:.1} MiB",
                r.seconds,
                r.numbers as f64 / r.seconds,
                r.cpu_us_per_number,
                r.rss_before_kib as f64 / 1024.0,
                r.peak_kib as f64 / 1024.0,
            );
            runs[m].push(r);
        }
    }
    println!("medians:");
    for (m, mode) in modes.iter().enumerate() {
        let rs = &runs[m];
        let secs = median(rs.iter().map(|r| r.seconds).collect());
        println!(
            "  {mode:>7}: {:.3} s for {count} numbers ({:.0} numbers/s), server CPU {:.2} µs/number, \
             peak RSS {:.1} MiB (+{:.1} MiB over its resident set before the run)",
            secs,
            count as f64 / secs,
            median(rs.iter().map(|r| r.cpu_us_per_number).collect()),
            median(rs.iter().map(|r| r.peak_kib as f64 / 1024.0).collect()),
            median(
                rs.iter()
                    .map(|r| (r.peak_kib.saturating_sub(r.rss_before_kib)) as f64 / 1024.0)
                    .collect()
            ),
        );
    }
}
