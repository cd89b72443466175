//! Heap allocations per request: trackd (in this process, behind a counting global allocator)
//! answers requests from a client thread that itself allocates nothing per request, and the
//! allocator's counts over the measured requests, divided by their number, are printed per
//! route, beside a bare hyper server on the same runtime answering a fixed body (what the
//! stack itself costs).
//!
//! `cargo run --release --example allocs -- [--requests 100000]`

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use trackd::config::{Overrides, RecordsMode, Settings};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const TRACK: &str = "/api/next-tracking-number/?origin_country_id=MY&destination_country_id=ID\
    &weight=1.234&created_at=2018-11-20T19:29:32%2B08:00\
    &customer_id=de619854-b59b-425e-9db4-943979e1bd49&customer_name=RedBox%20Logistics\
    &customer_slug=redbox-logistics";

/// Sends `n` requests for `path` on one kept-alive connection, reading each whole answer into
/// a fixed buffer (no allocation on this side once connected); panics on another status.
fn drive(addr: SocketAddr, path: &str, n: u64, status: &[u8; 3]) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_nodelay(true).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes();
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..n {
        conn.write_all(&request).unwrap();
        let mut filled = 0;
        loop {
            let got = conn.read(&mut buf[filled..]).unwrap();
            assert!(got > 0, "connection closed");
            filled += got;
            let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = &buf[..end];
            assert_eq!(&head[9..12], status, "{}", String::from_utf8_lossy(head));
            let len = content_length(head);
            if filled >= end + 4 + len {
                assert_eq!(filled, end + 4 + len, "one answer at a time");
                break;
            }
        }
    }
}

fn content_length(head: &[u8]) -> usize {
    let name = b"content-length:";
    head.split(|&b| b == b'\n')
        .find(|l| l.len() > name.len() && l[..name.len()].eq_ignore_ascii_case(name))
        .map(|l| {
            l[name.len()..]
                .iter()
                .filter(|d| d.is_ascii_digit())
                .fold(0, |n, d| n * 10 + (d - b'0') as usize)
        })
        .unwrap_or(0)
}

/// Allocations and bytes per request over `n` requests (after a warm-up of `n / 10`).
fn measure(addr: SocketAddr, path: &str, n: u64, status: &[u8; 3]) -> (f64, f64) {
    drive(addr, path, n / 10, status);
    // Let background work started by the warm-up (timers, the record writer) settle.
    std::thread::sleep(Duration::from_millis(300));
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    drive(addr, path, n, status);
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    ((a1 - a0) as f64 / n as f64, (b1 - b0) as f64 / n as f64)
}

fn settings(dir: &std::path::Path, records: RecordsMode) -> Settings {
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some(String::new()),
        data_dir: Some(dir.to_owned()),
        ..Default::default()
    };
    let env = [
        ("TRACKD_AUTH__OPEN".to_owned(), "true".to_owned()),
        ("TRACKD_LOG__LEVEL".to_owned(), "warn".to_owned()),
    ];
    let mut s = Settings::load_from(None, env, &overrides).expect("settings");
    s.records.mode = records;
    s
}

/// A bare hyper server with trackd's connection set-up, answering `body` with 201.
async fn bare(listener: tokio::net::TcpListener) {
    static BODY: &[u8] = br#"{"tracking_number":"MYIDLSA52BGYURXA","customer_id":"de619854-b59b-425e-9db4-943979e1bd49","origin_country_id":"MY","destination_country_id":"ID","created_at":"2026-11-23T09:33:19.791235Z"}"#;
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(16384)
                .keep_alive(true);
            let svc = hyper::service::service_fn(|_req| async {
                let mut r = hyper::Response::new(Full::new(Bytes::from_static(BODY)));
                *r.status_mut() = hyper::StatusCode::CREATED;
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                Ok::<_, std::convert::Infallible>(r)
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args
        .iter()
        .position(|a| a == "--requests")
        .and_then(|i| args.get(i + 1))
        .map_or(100_000, |v| v.parse().expect("a number"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("allocations per request ({n} requests on one kept-alive connection)");
    println!("{:<44} {:>10} {:>12}", "case", "allocs/req", "bytes/req");
    let row = |name: &str, (a, b): (f64, f64)| println!("{name:<44} {a:>10.2} {b:>12.0}");

    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(bare(listener));
    row("bare hyper (fixed 201 body)", measure(addr, "/", n, b"201"));

    for (mode, label) in [
        (RecordsMode::Off, "tracking GET, records off"),
        (RecordsMode::Async, "tracking GET, records async (embedded)"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let app = rt
            .block_on(trackd::app::Application::build(&settings(tmp.path(), mode)))
            .expect("trackd starts");
        let addr = app.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let running = rt.spawn(app.run_until_stopped(async {
            let _ = rx.await;
        }));
        row(label, measure(addr, TRACK, n, b"201"));
        if mode == RecordsMode::Off {
            for path in [
                "/healthz",
                "/customer_insurance/policy_detail/3/",
                "/customer_insurance/user_policy/8/",
                "/customer_insurance/user_list/?limit=10&after_id=0",
            ] {
                row(path, measure(addr, path, n, b"200"));
            }
        }
        let _ = tx.send(());
        rt.block_on(running).unwrap();
    }
}
