//! The accept loops (the public listener and the operations one) and the per-connection
//! driver: HTTP/1.1, or HTTP/2 with prior knowledge (h2c) on the same port; connection caps, request-head size and time limits, the idle keep-alive timeout, a
//! write timeout for clients that stop reading, and graceful draining on shutdown.

use super::router;
use super::state::AppState;
use crate::config::ServerSettings;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

/// Limits of the HTTP server (from `[server]` in the configuration).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// A response the client stops reading for this long closes its connection.
    pub write_timeout: Duration,
    pub shutdown_grace: Duration,
    pub shutdown_linger: Duration,
}

impl From<&ServerSettings> for Limits {
    fn from(s: &ServerSettings) -> Self {
        Self {
            max_connections: s.max_connections,
            max_header_bytes: s.max_header_bytes,
            header_read_timeout: s.header_read_timeout,
            idle_timeout: s.idle_timeout,
            write_timeout: s.write_timeout,
            shutdown_grace: s.shutdown_grace,
            shutdown_linger: s.shutdown_linger.min(s.shutdown_grace),
        }
    }
}

/// Which listener a connection came in on: the public API, or operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Public,
    Admin,
}

/// Concurrent HTTP/2 streams per connection at most (each is a task of its own).
const H2_MAX_STREAMS: u32 = 128;

/// Open connections of the operations listener at most (a few scrapers and probes).
const ADMIN_CONNECTIONS: usize = 64;

/// Serves the public listener (and the operations one, if any) until `shutdown` completes,
/// then drains: stops accepting, lets in-flight requests finish (answered with
/// `Connection: close`), closes idle connections after the linger time, and returns when all
/// connections are closed or the grace period is over.
pub async fn serve(
    public: TcpListener,
    admin: Option<TcpListener>,
    state: Arc<AppState>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut loops = tokio::task::JoinSet::new();
    let mut permits = Vec::new();
    for (listener, side, cap) in std::iter::once((public, Side::Public, limits.max_connections))
        .chain(admin.map(|a| (a, Side::Admin, ADMIN_CONNECTIONS)))
    {
        let sem = Arc::new(Semaphore::new(cap));
        permits.push((Arc::clone(&sem), cap));
        loops.spawn(accept_loop(
            listener,
            side,
            sem,
            Arc::clone(&state),
            limits.clone(),
            drain_rx.clone(),
        ));
    }
    shutdown.await;
    state.draining.store(true, Ordering::SeqCst);
    let _ = drain_tx.send(true);
    // The listeners close as their loops end.
    while loops.join_next().await.is_some() {}
    let open = |permits: &[(Arc<Semaphore>, usize)]| {
        permits
            .iter()
            .map(|(s, cap)| cap - s.available_permits())
            .sum::<usize>()
    };
    tracing::info!(open_connections = open(&permits), "draining");
    let all = async {
        for (sem, cap) in &permits {
            let _ = sem.acquire_many(*cap as u32).await;
        }
    };
    match tokio::time::timeout(limits.shutdown_grace, all).await {
        Ok(()) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!(
            open_connections = open(&permits),
            "shutdown grace period over; closing remaining connections"
        ),
    }
}

/// Accepts connections (at most `permits` open at once) until draining begins.
async fn accept_loop(
    listener: TcpListener,
    side: Side,
    permits: Arc<Semaphore>,
    state: Arc<AppState>,
    limits: Limits,
    mut drain: watch::Receiver<bool>,
) {
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = drain.changed() => return,
        };
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = drain.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let limits = limits.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            serve_connection(stream, side, state, &limits, drain).await;
            drop(permit);
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    side: Side,
    state: Arc<AppState>,
    limits: &Limits,
    mut drain: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(ActivityStream {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let svc = service_fn(move |req| router::handle(req, &state, side));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(limits.max_header_bytes as u32);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);

    let mut closing = false;
    let mut draining = *drain.borrow();
    let far = Duration::from_secs(86400 * 365);
    let mut linger_until = if draining {
        Instant::now() + limits.shutdown_linger
    } else {
        Instant::now() + far
    };
    // The stream counts its reads and blocked writes (no clock on the request path); a
    // check every `tick` tells from the counts how long nothing was read, or a write has
    // waited. A limit is thus enforced within a quarter more than itself.
    let tick = (limits.idle_timeout.min(limits.write_timeout) / 4).max(Duration::from_millis(10));
    let mut check_at = started + tick;
    let (mut reads_seen, mut idle_since) = (0, started);
    let (mut blocked_seen, mut blocked_since) = (0, None::<Instant>);
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            changed = drain.changed(), if !draining => {
                if changed.is_err() || *drain.borrow() {
                    draining = true;
                    linger_until = Instant::now() + limits.shutdown_linger;
                }
            }
            _ = tokio::time::sleep_until(linger_until), if draining && !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep_until(check_at) => {
                let now = Instant::now();
                let blocked = activity.blocked.load(Ordering::Relaxed);
                // Odd: a write is waiting; the same count as last time: the same write.
                if blocked % 2 == 1 {
                    let since = match blocked_since {
                        Some(t) if blocked == blocked_seen => t,
                        _ => now,
                    };
                    if now - since >= limits.write_timeout {
                        // The client stopped reading its response: nothing more can be sent.
                        tracing::debug!("closing a connection whose client stopped reading");
                        return;
                    }
                    blocked_since = Some(since);
                } else {
                    blocked_since = None;
                }
                blocked_seen = blocked;
                let reads = activity.reads.load(Ordering::Relaxed);
                if reads != reads_seen {
                    (reads_seen, idle_since) = (reads, now);
                }
                if !closing && now - idle_since >= limits.idle_timeout {
                    // Lets a request in progress finish, closes an idle connection at once.
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                check_at = now + tick;
            }
        }
    }
}

/// What a connection's stream did, as counts: reads that brought bytes, and writes that had
/// to wait (odd while one waits, even once it went through).
#[derive(Default)]
struct Activity {
    reads: AtomicU64,
    blocked: AtomicU64,
}

/// Adds one to a count only the stream writes (no read-modify-write instruction needed: the
/// connection's task is its only writer, and its checker only reads).
fn bump(count: &AtomicU64) {
    count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// A TCP stream that counts its reads (for the idle timeout) and its blocked writes (for the
/// write timeout).
struct ActivityStream {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl ActivityStream {
    /// Notes whether a write went through or has to wait for the client.
    fn wrote<T>(&self, res: &Poll<T>) {
        let blocked = &self.activity.blocked;
        let waiting = blocked.load(Ordering::Relaxed) % 2 == 1;
        if res.is_pending() != waiting {
            bump(blocked);
        }
    }
}

impl AsyncRead for ActivityStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            bump(&this.activity.reads);
        }
        res
    }
}

impl AsyncWrite for ActivityStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&res);
        res
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&res);
        res
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
