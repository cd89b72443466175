//! The policy cache load benchmark: seeds N users × 5 policies (default 1,000,000 users, so
//! 6,000,000 rows with the user rows) into a database of its own, loads the whole cache the
//! way the loader actor does (binary COPY, one read-only transaction, index build), and
//! reports load time, rows/s and resident memory per user-policy (RSS after the load minus
//! RSS before, divided by user-policies; the snapshot's own heap count is printed beside it).
//!
//! Usage: `cargo run --release --example policy_load -- [--users N]
//! [--server-url postgres://postgres@127.0.0.1:5432] [--database trackd_bench_policy]
//! [--reuse] [--keep] [--loads 2]`. `--reuse` skips seeding when the database already holds
//! N generated users; `--keep` keeps the database afterwards.

use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;
use trackd::policy::{load, migrate, sample::SampleData, seed};

struct Args {
    users: u64,
    server_url: String,
    database: String,
    reuse: bool,
    keep: bool,
    loads: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        users: 1_000_000,
        server_url: "postgres://postgres@127.0.0.1:5432".into(),
        database: "trackd_bench_policy".into(),
        reuse: false,
        keep: false,
        loads: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--users" => {
                a.users = val("--users")?
                    .parse()
                    .map_err(|e| format!("--users: {e}"))?
            }
            "--server-url" => a.server_url = val("--server-url")?,
            "--database" => a.database = val("--database")?,
            "--loads" => {
                a.loads = val("--loads")?
                    .parse()
                    .map_err(|e| format!("--loads: {e}"))?
            }
            "--reuse" => a.reuse = true,
            "--keep" => a.keep = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !a
        .database
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        return Err("--database: lower-case letters and _ only".into());
    }
    Ok(a)
}

/// Resident set size of this process in bytes (`VmRSS` of /proc/self/status).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

async fn client(url: &str) -> Result<tokio_postgres::Client, String> {
    let (c, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    tokio::spawn(conn);
    Ok(c)
}

async fn run(a: Args) -> Result<(), String> {
    let url = format!("{}/{}", a.server_url, a.database);
    let admin = client(&format!("{}/postgres", a.server_url)).await?;
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&a.database],
        )
        .await
        .map_err(|e| e.to_string())?
        .is_some();
    let mut have = 0i64;
    if a.reuse && exists {
        let c = client(&url).await?;
        have = c
            .query_one("SELECT count(*) FROM \"user\"", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
    }
    if !(a.reuse && have >= a.users as i64) {
        // Separate statements: CREATE DATABASE cannot run in a multi-statement batch.
        for sql in [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", a.database),
            format!("CREATE DATABASE {}", a.database),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .map_err(|e| trackd::support::pg::message(&e))?;
        }
        let mut c = client(&url).await?;
        migrate::migrate(&mut c)
            .await
            .map_err(|e| trackd::support::pg::message(&e))?;
        let data = SampleData::bundled().map_err(|e| e.to_string())?;
        let started = Instant::now();
        seed::seed_users(&mut c, &data, a.users)
            .await
            .map_err(|e| e.to_string())?;
        let secs = started.elapsed().as_secs_f64();
        let rows = a.users * (1 + seed::POLICIES_PER_USER);
        println!(
            "seed:    {} users × {} policies = {rows} rows in {secs:.1} s ({:.0} rows/s, COPY FROM STDIN)",
            a.users,
            seed::POLICIES_PER_USER,
            rows as f64 / secs
        );
    } else {
        println!("seed:    reusing {} ({have} users)", a.database);
    }

    let mut best = f64::MAX;
    for i in 1..=a.loads {
        let before = rss_bytes();
        let started = Instant::now();
        let snap = load::load(&url, Duration::from_secs(10), &Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let secs = started.elapsed().as_secs_f64();
        let after = rss_bytes();
        best = best.min(secs);
        let c = snap.counts();
        let ups = c.user_policies.max(1) as f64;
        println!(
            "load {i}:  {} rows ({} users, {} user-policies, {} policies, {} categories) in {secs:.2} s = {:.0} rows/s",
            c.rows(),
            c.users,
            c.user_policies,
            c.policies,
            c.categories,
            c.rows() as f64 / secs
        );
        println!(
            "memory {i}: RSS {:.1} MiB -> {:.1} MiB, delta {:.1} MiB = {:.1} bytes per user-policy (users included); snapshot heap {:.1} MiB = {:.1} bytes per user-policy",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            after.saturating_sub(before) as f64 / 1048576.0,
            after.saturating_sub(before) as f64 / ups,
            snap.heap_bytes() as f64 / 1048576.0,
            snap.heap_bytes() as f64 / ups
        );
        drop(snap);
    }
    let rows = a.users * (1 + seed::POLICIES_PER_USER);
    println!(
        "best:    {best:.2} s = {:.0} rows/s (target >= 500000 rows/s; memory target <= 200 bytes per user-policy)",
        rows as f64 / best
    );
    if !a.keep {
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                a.database
            ))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("policy_load: {e}");
            return ExitCode::from(64);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("policy_load: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("policy_load: {e}");
            ExitCode::FAILURE
        }
    }
}
