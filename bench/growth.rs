//! How issuing and lookups cost as records accumulate: for the embedded store and PostgreSQL,
//! loads records up to each point (1M, 10M, 100M by default) with a fast loader, then measures
//! through the release `trackd` the issuing rate with records `async` (and how fast the writer
//! drains what was issued) and the lookup latency p50/p99 of stored numbers picked at random,
//! with what the machine read from disk per lookup meanwhile: once among all stored numbers
//! (the worst case: every lookup on a page of its own), once among the newest `--recent`
//! (default 1M: parcels in transit are the ones tracked).
//!
//! `cargo build --release && cargo run --release --example growth -- [--stores
//! embedded,postgres] [--points 1000000,10000000,100000000] [--seconds 10]
//! [--lookup-seconds 10] [--recent 1000000] [--connections 32] [--dir DIR] [--pg-server
//! URL] [--prewarm]` (`--prewarm`: read PostgreSQL's table and index into its buffers after
//! each load, as a server that has been running holds them). Needs `wrk` and, for the PostgreSQL store, a server (default
//! `postgres://postgres@127.0.0.1:5432`) that lets `postgres` in without a password.
//! Everything it creates (a directory under `--dir`, default the system's temporary one, and
//! a database per store) is removed at the end.

use redb::ReadableTable;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use trackd::config::Settings;
use trackd::records::{Batch, RecordRef};
use trackd::support::tls::Tls;
use trackd::tracking::country::CountryCode;
use trackd::tracking::number::TrackingNumber;
use trackd::tracking::permute::{Permutation, PermutationKey};
use uuid::Uuid;

const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const ISSUE_PATH: &str = "/api/next-tracking-number/?origin_country_id=MY&destination_country_id=ID\
    &weight=1.234&created_at=2018-11-20T19:29:32%2B08:00\
    &customer_id=de619854-b59b-425e-9db4-943979e1bd49&customer_name=RedBox%20Logistics\
    &customer_slug=redbox-logistics";
const COUNTRIES: [&str; 8] = ["MY", "ID", "SG", "TH", "VN", "PH", "DE", "US"];
/// Records per loader transaction (embedded) or `COPY` statement (PostgreSQL).
const LOAD_CHUNK: u64 = 200_000;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn arg_u64(name: &str, default: u64) -> u64 {
    arg(name).map_or(default, |v| v.parse().expect("a number"))
}

#[derive(Clone, Copy, PartialEq)]
enum Store {
    Embedded,
    Postgres,
}

impl Store {
    fn parse(s: &str) -> Self {
        match s {
            "embedded" => Self::Embedded,
            "postgres" => Self::Postgres,
            other => panic!("unknown store {other}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Postgres => "postgres",
        }
    }
}

/// The loaded order of sequence `seq`: varied customers and countries, derived from `seq` so
/// that a lookup can tell which number it is after.
struct Synthetic {
    permutation: Permutation,
}

impl Synthetic {
    fn number(&self, seq: u64) -> TrackingNumber {
        let o = COUNTRIES[(seq % 8) as usize];
        let d = COUNTRIES[((seq / 8) % 8) as usize];
        TrackingNumber::new(
            CountryCode::parse(o).unwrap(),
            CountryCode::parse(d).unwrap(),
            self.permutation.permute(seq),
        )
    }

    fn push(&self, batch: &mut Batch, seq: u64, issued_at: OffsetDateTime) {
        let number = self.number(seq);
        let customer = seq % 50_000;
        let name = format!("Customer {customer} Logistics");
        let slug = format!("customer-{customer}-logistics");
        batch.push(&RecordRef {
            seq,
            number: &number,
            customer_id: Uuid::from_u64_pair(0x5eed, customer),
            customer_name: &name,
            customer_slug: &slug,
            weight_grams: 1 + (seq % 30_000) as u32,
            order_created_at: Some(issued_at - time::Duration::hours(2)),
            issued_at,
            voided: None,
        });
    }
}

fn settings(dir: &Path) -> Settings {
    let env = [(
        "TRACKD_TRACKING__PERMUTATION_KEY".to_owned(),
        KEY.to_owned(),
    )];
    let overrides = trackd::config::Overrides {
        data_dir: Some(dir.to_owned()),
        ..Default::default()
    };
    Settings::load_from(None, env, &overrides).expect("settings")
}

/// Reserves `n` sequence numbers from the data directory's embedded sequence store, as trackd
/// would, so that trackd issues after them.
fn reserve(dir: &Path, n: u64) -> (u64, Permutation) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = settings(dir);
    let (store, key) =
        trackd::tracking::open_store(&s.tracking, dir, None, &Tls::default()).expect("store");
    let block = rt.block_on(store.reserve(n)).expect("reserve");
    assert_eq!(block.count, n);
    (block.first, Permutation::new(&key))
}

/// Loads `n` records straight into the redb file; the first sequence loaded.
fn load_embedded(dir: &Path, n: u64) -> u64 {
    let (first, permutation) = reserve(dir, n);
    let synth = Synthetic { permutation };
    let db = trackd::records::embedded::open(dir).expect("redb");
    let now = OffsetDateTime::now_utc();
    let mut seq = first;
    let end = first + n;
    while seq < end {
        let chunk_end = (seq + LOAD_CHUNK).min(end);
        let mut tx = db.begin_write().unwrap();
        if chunk_end < end {
            tx.set_durability(redb::Durability::None).unwrap();
        }
        {
            let mut groups = tx
                .open_table(trackd::records::embedded::RECORD_GROUPS)
                .unwrap();
            while seq < chunk_end {
                let group = seq >> trackd::records::embedded::GROUP_BITS;
                let mut batch = match groups.get(group).unwrap() {
                    Some(v) => Batch::from_bytes(v.value().to_vec()).unwrap(),
                    None => Batch::default(),
                };
                let group_end = ((group + 1) << trackd::records::embedded::GROUP_BITS).min(end);
                while seq < group_end {
                    synth.push(&mut batch, seq, now);
                    seq += 1;
                }
                groups.insert(group, batch.as_bytes()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    first
}

async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e}"));
    tokio::spawn(conn);
    client
}

/// Loads `n` records into the database through trackd's own PostgreSQL writer (binary `COPY`
/// of `LOAD_CHUNK` records per batch); the first sequence loaded.
fn load_postgres(dir: &Path, url: &str, n: u64) -> u64 {
    use trackd::records::RecordSink;
    let (first, permutation) = reserve(dir, n);
    let synth = Synthetic {
        permutation: permutation.clone(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let sink = trackd::records::postgres::PostgresRecords::new(
            url,
            Duration::from_secs(30),
            1,
            permutation,
            Tls::default(),
        );
        let now = OffsetDateTime::now_utc();
        let mut seq = first;
        let end = first + n;
        while seq < end {
            let chunk_end = (seq + LOAD_CHUNK).min(end);
            let mut batch = Batch::default();
            while seq < chunk_end {
                synth.push(&mut batch, seq, now);
                seq += 1;
            }
            sink.write(Arc::new(batch), false).await.unwrap();
        }
        pg(url)
            .await
            .batch_execute("ANALYZE tracking_records")
            .await
            .unwrap();
    });
    first
}

struct Trackd {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Trackd {
    fn start(dir: &Path, records_url: Option<&str>) -> Self {
        let mut cmd = Command::new("target/release/trackd");
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("TRACKD_TRACKING__PERMUTATION_KEY", KEY)
        .env("TRACKD_AUTH__OPEN", "true")
        .env("TRACKD_RECORDS__MODE", "async")
        .env("TRACKD_LOG__LEVEL", "warn,trackd=info")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(url) = records_url {
            cmd.env("TRACKD_RECORDS__POSTGRES_URL", url);
        }
        let mut child = cmd
            .spawn()
            .expect("target/release/trackd (cargo build --release)");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                for (which, prefix) in [(0, "listening on http://"), (1, "operations on http://")] {
                    if let Some(i) = line.find(prefix) {
                        let rest = &line[i + prefix.len()..];
                        let a = rest.split(['"', ' ']).next().unwrap_or("").to_owned();
                        let _ = tx.send((which, a));
                    }
                }
                if (line.contains("ERROR") || line.contains("WARN")) && !line.contains("auth.open")
                {
                    eprintln!("trackd: {line}");
                }
            }
        });
        let mut addrs: [Option<SocketAddr>; 2] = [None, None];
        while addrs.iter().any(Option::is_none) {
            let (which, a) = rx
                .recv_timeout(Duration::from_secs(120))
                .expect("trackd started");
            addrs[which] = Some(a.parse().unwrap());
        }
        Self {
            child,
            addr: addrs[0].unwrap(),
            admin: addrs[1].unwrap(),
        }
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, body) = get(&mut TcpStream::connect(self.admin).unwrap(), "/metrics");
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split(' ').collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 GET on a kept-alive connection: status and body.
fn get(conn: &mut TcpStream, path: &str) -> (u16, String) {
    write!(conn, "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").unwrap();
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

struct Issuing {
    req_per_s: f64,
    cpu_us_per_req: f64,
    drain_s: f64,
}

fn issue(t: &Trackd, seconds: u64, connections: u64) -> Issuing {
    let url = format!("http://{}{ISSUE_PATH}", t.addr);
    // Warm-up: connections, the first blocks, the writer.
    let _ = Command::new("wrk")
        .args(["-t2", "-c32", "-d2s", &url])
        .output()
        .expect("wrk on the PATH");
    wait_drained(t, Duration::from_secs(600));
    let written_before = t.metric("trackd_records_written_total");
    let cpu_before = t.cpu_seconds();
    let start = Instant::now();
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            &url,
        ])
        .output()
        .unwrap();
    let load_s = start.elapsed().as_secs_f64();
    let cpu = t.cpu_seconds() - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Non-2xx"), "wrk saw errors:\n{text}");
    let requests: f64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no request count from wrk:\n{text}"));
    let drain_start = Instant::now();
    wait_drained(t, Duration::from_secs(600));
    let drain_s = drain_start.elapsed().as_secs_f64();
    let written = t.metric("trackd_records_written_total") - written_before;
    assert!(
        written >= requests,
        "{requests} numbers issued, {written} records written"
    );
    Issuing {
        req_per_s: requests / load_s,
        cpu_us_per_req: cpu * 1e6 / requests,
        drain_s,
    }
}

fn wait_drained(t: &Trackd, limit: Duration) {
    let start = Instant::now();
    while t.metric("trackd_records_queued") > 0.0 {
        assert!(start.elapsed() < limit, "records not written in {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Lookups {
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
    /// KiB the whole machine read from disk per lookup (/proc/vmstat `pgpgin`): where the
    /// slow lookups' time goes once the store outgrows the page cache.
    disk_kib: f64,
}

/// KiB read from disk since boot, machine-wide.
fn pgpgin() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("pgpgin "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Random lookups of loaded numbers (`ranges`: first sequence and count of each load) from
/// `clients` threads on kept-alive connections.
fn lookups(t: &Trackd, synth: &Arc<Synthetic>, ranges: &[(u64, u64)], seconds: u64) -> Lookups {
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let clients = 4;
    let read_before = pgpgin();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let synth = Arc::clone(synth);
            let ranges = ranges.to_vec();
            let addr = t.addr;
            std::thread::spawn(move || {
                let mut conn = TcpStream::connect(addr).unwrap();
                conn.set_nodelay(true).unwrap();
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (c as u64 + 1);
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let mut i = rng % total;
                    let mut seq = 0;
                    for &(first, n) in &ranges {
                        if i < n {
                            seq = first + i;
                            break;
                        }
                        i -= n;
                    }
                    let number = synth.number(seq);
                    let start = Instant::now();
                    let (status, body) = get(&mut conn, &format!("/api/tracking-numbers/{number}"));
                    lat.push(start.elapsed().as_nanos() as u64);
                    assert_eq!(status, 200, "lookup of {number} (sequence {seq}): {body}");
                    assert!(body.contains(number.as_str()));
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let read = pgpgin().saturating_sub(read_before);
    all.sort_unstable();
    let pick = |q: f64| all[((all.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    Lookups {
        per_s: all.len() as f64 / seconds as f64,
        p50_us: pick(0.50),
        p99_us: pick(0.99),
        disk_kib: read as f64 / all.len().max(1) as f64,
    }
}

/// The newest `n` sequences of `ranges` (first sequence and count of each load, oldest first).
fn newest_of(ranges: &[(u64, u64)], mut n: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(first, count) in ranges.iter().rev() {
        let take = count.min(n);
        if take > 0 {
            out.push((first + count - take, take));
        }
        n -= take;
    }
    out
}

fn du(path: &Path) -> String {
    Command::new("du")
        .args(["-sh"])
        .arg(path)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .unwrap_or("?")
                .to_owned()
        })
        .unwrap_or_default()
}

fn pg_size(url: &str) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = pg(url).await;
        let row = c
            .query_one(
                "SELECT pg_size_pretty(pg_total_relation_size('tracking_records') \
                 + pg_total_relation_size('tracking_customers'))",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, String>(0)
    })
}

fn admin_sql(server: &str, sql: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = format!("{server}/postgres");
    rt.block_on(async { pg(&admin).await.batch_execute(sql).await.unwrap() });
}

fn main() {
    let stores: Vec<Store> = arg("--stores")
        .unwrap_or_else(|| "embedded,postgres".into())
        .split(',')
        .map(Store::parse)
        .collect();
    let points: Vec<u64> = arg("--points")
        .unwrap_or_else(|| "1000000,10000000,100000000".into())
        .split(',')
        .map(|p| p.parse().expect("a number of records"))
        .collect();
    let seconds = arg_u64("--seconds", 10);
    let lookup_seconds = arg_u64("--lookup-seconds", 10);
    let connections = arg_u64("--connections", 32);
    let recent = arg_u64("--recent", 1_000_000);
    let prewarm = std::env::args().any(|a| a == "--prewarm");
    let pg_server =
        arg("--pg-server").unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".into());
    let base = arg("--dir").map_or_else(std::env::temp_dir, PathBuf::from);
    println!(
        "growth: records async, wrk -t2 -c{connections} -d{seconds}s per issuing run, \
         4 lookup clients for {lookup_seconds}s among all stored numbers, then among the newest \
         {recent}; {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<10} {:>10} {:>8} {:>8} {:>7} {:>7} {:>9} {:>7} {:>7} {:>6} {:>8} {:>7} {:>6}",
        "store",
        "records",
        "load/s",
        "req/s",
        "µs/req",
        "drain s",
        "lookup/s",
        "p50 µs",
        "p99 µs",
        "KiB",
        "newest:",
        "p99 µs",
        "KiB",
    );
    for store in stores {
        let dir = base.join(format!(
            "trackd-growth-{}-{}",
            store.name(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let db_name = format!("trackd_growth_{}", std::process::id());
        let url = format!("{pg_server}/{db_name}");
        let records_url = (store != Store::Embedded).then_some(url.as_str());
        if records_url.is_some() {
            admin_sql(&pg_server, &format!("DROP DATABASE IF EXISTS {db_name}"));
            admin_sql(&pg_server, &format!("CREATE DATABASE {db_name}"));
        }
        // One start creates the data directory's files and the PostgreSQL schema.
        Trackd::start(&dir, records_url).stop();
        let mut loaded = 0u64;
        let mut loaded_ranges = Vec::new();
        let mut synth = None;
        for &point in &points {
            let n = point.saturating_sub(loaded);
            let start = Instant::now();
            let first = match store {
                Store::Embedded => load_embedded(&dir, n),
                Store::Postgres => load_postgres(&dir, &url, n),
            };
            let load_rate = n as f64 / start.elapsed().as_secs_f64();
            if prewarm && store == Store::Postgres {
                // A server that has run for a while holds its hot pages in its buffers; a
                // bulk load leaves them cold (COPY writes through a small ring).
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(async {
                    pg(&url)
                        .await
                        .batch_execute(
                            "CREATE EXTENSION IF NOT EXISTS pg_prewarm; \
                             SELECT pg_prewarm('tracking_records_pkey'); \
                             SELECT pg_prewarm('tracking_records'); \
                             SELECT pg_prewarm('tracking_customers')",
                        )
                        .await
                        .unwrap()
                });
            }
            loaded += n;
            loaded_ranges.push((first, n));
            let s = synth.get_or_insert_with(|| {
                let key = PermutationKey::from_hex(KEY).unwrap();
                Arc::new(Synthetic {
                    permutation: Permutation::new(&key),
                })
            });
            let t = Trackd::start(&dir, records_url);
            let i = issue(&t, seconds, connections);
            let l = lookups(&t, s, &loaded_ranges, lookup_seconds);
            let newest = lookups(&t, s, &newest_of(&loaded_ranges, recent), lookup_seconds);
            t.stop();
            let size = match records_url {
                None => du(&dir.join("trackd.redb")),
                Some(u) => pg_size(u),
            };
            println!(
                "{:<10} {:>10} {:>8.0} {:>8.0} {:>7.2} {:>7.1} {:>9.0} {:>7.0} {:>7.0} {:>6.2} {:>8.0} {:>7.0} {:>6.2}   ({size} on disk)",
                store.name(),
                loaded,
                load_rate,
                i.req_per_s,
                i.cpu_us_per_req,
                i.drain_s,
                l.per_s,
                l.p50_us,
                l.p99_us,
                l.disk_kib,
                newest.p50_us,
                newest.p99_us,
                newest.disk_kib,
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
        if records_url.is_some() {
            admin_sql(&pg_server, &format!("DROP DATABASE IF EXISTS {db_name}"));
        }
    }
}
