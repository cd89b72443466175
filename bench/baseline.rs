//! The benchmark baseline: a bare hyper 1.x keep-alive server (HTTP/1.1, and HTTP/2 with prior
//! knowledge on the same port, as trackd) that answers every request with the same
//! `201 Created` JSON body that trackd sends on success.
//!
//! It mirrors trackd's runtime and per-connection set-up (a multi-thread tokio runtime with one
//! worker per core, `TCP_NODELAY`, hyper's `http1::Builder` with the same timer, head-read
//! timeout, buffer limit and keep-alive) but does no routing, validation, allocation or
//! encoding, so `bench/run tracking` can express trackd's throughput as a fraction of what the
//! same stack does with no work at all.
//!
//! Usage: `cargo run --release --example baseline -- [--listen ADDR] [--body-file FILE]
//! [--status CODE] [--content-type TYPE]` (default `127.0.0.1:18090`, the 201 body above).
//! `bench/run policy` passes the exact bytes trackd answered for the route under test, so
//! both sides send the same body.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use tokio::net::TcpListener;

/// Same shape and byte size as trackd's success body (189 bytes).
const BODY: &[u8] = br#"{"tracking_number":"MYIDLSA52BGYURXA","customer_id":"de619854-b59b-425e-9db4-943979e1bd49","origin_country_id":"MY","destination_country_id":"ID","created_at":"2026-11-23T09:33:19.791235Z"}"#;

/// trackd's defaults for `server.header_read_timeout_ms` and `server.max_header_bytes`.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER_BYTES: usize = 16384;

const DEFAULT_LISTEN: &str = "127.0.0.1:18090";

/// The answer: status, content type and body (the tracking 201 unless overridden).
struct Answer {
    status: StatusCode,
    content_type: HeaderValue,
    body: Bytes,
}

static ANSWER: std::sync::OnceLock<Answer> = std::sync::OnceLock::new();

fn main() -> ExitCode {
    let (addr, answer) = match parse_args(std::env::args().skip(1)) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            println!(
                "usage: baseline [--listen ADDR] [--body-file FILE] [--status CODE] [--content-type TYPE]   (default {DEFAULT_LISTEN})"
            );
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("baseline: {e}");
            return ExitCode::from(64);
        }
    };
    let _ = ANSWER.set(answer);
    // trackd's default: `server.worker_threads = 0`, i.e. tokio's default of one per core.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baseline: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("baseline: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!("baseline: listening on http://{addr}");
        serve(listener).await;
        ExitCode::SUCCESS
    })
}

/// `Ok(None)` for `--help`.
fn parse_args(
    mut args: impl Iterator<Item = String>,
) -> Result<Option<(SocketAddr, Answer)>, String> {
    let mut listen = DEFAULT_LISTEN.to_owned();
    let mut answer = Answer {
        status: StatusCode::CREATED,
        content_type: HeaderValue::from_static("application/json"),
        body: Bytes::from_static(BODY),
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?,
            "--body-file" => {
                let f = args.next().ok_or("--body-file needs a file")?;
                answer.body = std::fs::read(&f)
                    .map_err(|e| format!("cannot read {f}: {e}"))?
                    .into();
            }
            "--status" => {
                let v = args.next().ok_or("--status needs a code")?;
                answer.status = v
                    .parse::<u16>()
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .ok_or(format!("bad --status {v:?}"))?;
            }
            "--content-type" => {
                let v = args.next().ok_or("--content-type needs a value")?;
                answer.content_type =
                    HeaderValue::from_str(&v).map_err(|_| format!("bad --content-type {v:?}"))?;
            }
            "-h" | "--help" => return Ok(None),
            other => match other.strip_prefix("--listen=") {
                Some(v) => listen = v.to_owned(),
                None => return Err(format!("unknown argument {other:?}")),
            },
        }
    }
    listen
        .parse()
        .map(|a| Some((a, answer)))
        .map_err(|e| format!("bad --listen address {listen:?}: {e}"))
}

async fn serve(listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                eprintln!("baseline: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .keep_alive(true);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(128)
                .max_header_list_size(MAX_HEADER_BYTES as u32);
            let _ = builder
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

async fn answer(_req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(a) = ANSWER.get() else {
        return Ok(Response::new(Full::new(Bytes::from_static(BODY))));
    };
    let mut r = Response::new(Full::new(a.body.clone()));
    *r.status_mut() = a.status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, a.content_type.clone());
    Ok(r)
}
