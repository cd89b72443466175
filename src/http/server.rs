//! The accept loop and per-connection driver: connection cap, request-head size and time
//! limits, idle keep-alive timeout, and graceful draining on shutdown.

use super::router;
use super::state::AppState;
use crate::config::ServerSettings;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
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
            shutdown_grace: s.shutdown_grace,
            shutdown_linger: s.shutdown_linger.min(s.shutdown_grace),
        }
    }
}

/// Serves until `shutdown` completes, then drains: stops accepting, lets in-flight requests
/// finish (answered with `Connection: close`), closes idle connections after the linger time,
/// and returns when all connections are closed or the grace period is over.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (drain_tx, drain_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut shutdown => break,
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
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let limits = limits.clone();
        let drain = drain_rx.clone();
        tokio::spawn(async move {
            serve_connection(stream, state, &limits, drain).await;
            drop(permit);
        });
    }
    drop(listener);
    state.draining.store(true, Ordering::SeqCst);
    let _ = drain_tx.send(true);
    let open = limits.max_connections - permits.available_permits();
    tracing::info!(open_connections = open, "draining");
    let all = permits.acquire_many(limits.max_connections as u32);
    match tokio::time::timeout(limits.shutdown_grace, all).await {
        Ok(_) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!(
            open_connections = limits.max_connections - permits.available_permits(),
            "shutdown grace period over; closing remaining connections"
        ),
    }
}

async fn serve_connection(
    stream: TcpStream,
    state: Arc<AppState>,
    limits: &Limits,
    mut drain: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let last_read = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(ActivityStream {
        inner: stream,
        started,
        last_read: Arc::clone(&last_read),
    });
    let svc = service_fn(move |req| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(router::handle(req, &state).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true)
        .serve_connection(io, svc);
    tokio::pin!(conn);

    let mut closing = false;
    let mut draining = *drain.borrow();
    let far = Duration::from_secs(86400 * 365);
    let mut linger_until = if draining {
        Instant::now() + limits.shutdown_linger
    } else {
        Instant::now() + far
    };
    let mut idle_check = started + limits.idle_timeout;
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
            _ = tokio::time::sleep_until(idle_check), if !closing => {
                let last = started + Duration::from_millis(last_read.load(Ordering::Relaxed));
                if last.elapsed() >= limits.idle_timeout {
                    // Lets a request in progress finish, closes an idle connection at once.
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                } else {
                    idle_check = last + limits.idle_timeout;
                }
            }
        }
    }
}

/// A TCP stream that records when it last read bytes, for the idle timeout.
struct ActivityStream {
    inner: TcpStream,
    started: Instant,
    last_read: Arc<AtomicU64>,
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
            this.last_read
                .store(this.started.elapsed().as_millis() as u64, Ordering::Relaxed);
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
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
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
