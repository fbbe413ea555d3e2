//! Serving HTTP on a listener so that no client costs more than it is allowed: a cap on
//! open connections, deadlines for a request's head and its whole body, an idle timeout,
//! a TLS handshake timeout, and a cap on push requests parsed at once (ARCHITECTURE.md §3,
//! "Slow and abusive clients"). Every cut is counted in
//! `bfo_alive_http_connections_rejected_total{listener,reason}`.
//!
//! axum routes; hyper-util's `auto::Builder` speaks HTTP/1.1 and HTTP/2 on each accepted
//! connection; this module owns the accept loop and each connection's clock
//! ([`conn::ConnState`]). `toolkit` reads `--web.config.file` (exporter-toolkit's format)
//! and `auth` applies it to the main listener.

pub(crate) mod auth;
pub(crate) mod conn;
pub(crate) mod toolkit;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HttpConfig;
use crate::metrics::HttpMetrics;
use conn::{ConnState, DeadlineBody, ResponseBody, Tracked};

pub(crate) use conn::is_body_timeout;

/// Why a connection or request was cut: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `max_connections` were open: closed at once.
    Limit,
    /// The request head (or, on a new connection, its first byte) took longer than
    /// `header_timeout`.
    HeaderTimeout,
    /// The request body took longer than `body_timeout`.
    BodyTimeout,
    /// Kept alive with nothing to do, or a response the client stopped reading, for
    /// `idle_timeout`.
    Idle,
    /// The TLS handshake took longer than `tls_handshake_timeout`.
    TlsHandshake,
    /// The TLS handshake failed (e.g. no or an untrusted client certificate).
    TlsError,
    /// `max_push_requests` were being read and parsed: 503.
    PushBusy,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::Limit,
        Reason::HeaderTimeout,
        Reason::BodyTimeout,
        Reason::Idle,
        Reason::TlsHandshake,
        Reason::TlsError,
        Reason::PushBusy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Limit => "limit",
            Reason::HeaderTimeout => "header_timeout",
            Reason::BodyTimeout => "body_timeout",
            Reason::Idle => "idle",
            Reason::TlsHandshake => "tls_handshake",
            Reason::TlsError => "tls_error",
            Reason::PushBusy => "push_busy",
        }
    }
}

/// The `[http]` limits as one listener applies them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
}

impl From<&HttpConfig> for Limits {
    fn from(c: &HttpConfig) -> Self {
        Limits {
            header_timeout: c.header_timeout,
            body_timeout: c.body_timeout,
            idle_timeout: c.idle_timeout,
            tls_handshake_timeout: c.tls_handshake_timeout,
            max_connections: c.max_connections,
        }
    }
}

/// The TLS configuration of a listener, replaced on reload (the web config's certificate).
pub(crate) type TlsSlot = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// One listener to serve.
pub(crate) struct Listener {
    /// `main` or `push`: the `listener` label.
    pub name: &'static str,
    pub tcp: TcpListener,
    pub tls: Option<TlsSlot>,
    pub router: Router,
    /// HTTP/2 besides HTTP/1.1 (`http_server_config.http2`).
    pub http2: bool,
    pub limits: Limits,
    pub metrics: HttpMetrics,
}

struct Shared {
    name: &'static str,
    tls: Option<TlsSlot>,
    router: Router,
    builder: auto::Builder<TokioExecutor>,
    limits: Limits,
    metrics: HttpMetrics,
    /// When a TLS failure was last logged (seconds since start): at most one a minute.
    last_tls_warning: AtomicU64,
    start: tokio::time::Instant,
}

/// Serves `l` until `stop`, then lets open requests finish (idle connections close at once).
pub(crate) fn serve(l: Listener, stop: CancellationToken) -> JoinHandle<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Requests here are small; a head larger than this is refused (hyper's default is
    // ~400 KiB, which times the connection cap is a lot of memory for nothing).
    builder.http1().max_buf_size(64 * 1024);
    if !l.http2 {
        builder = builder.http1_only();
    }
    let shared = Arc::new(Shared {
        name: l.name,
        tls: l.tls,
        router: l.router,
        builder,
        limits: l.limits,
        metrics: l.metrics,
        last_tls_warning: AtomicU64::new(0),
        start: tokio::time::Instant::now(),
    });
    let tcp = l.tcp;
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(shared.limits.max_connections));
        let tracker = TaskTracker::new();
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                r = tcp.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // E.g. out of file descriptors: let some connections end first.
                        tracing::warn!(listener = shared.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                shared.metrics.rejected(Reason::Limit);
                drop(stream);
                continue;
            };
            tracker.spawn(connection(
                stream,
                peer,
                shared.clone(),
                permit,
                stop.clone(),
            ));
        }
        drop(tcp);
        tracker.close();
        tracker.wait().await;
    })
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
    stop: CancellationToken,
) {
    let _open = shared.metrics.opened();
    let _ = stream.set_nodelay(true);
    let Some(slot) = &shared.tls else {
        return drive(stream, &shared, stop).await;
    };
    let config = slot.read().unwrap_or_else(|p| p.into_inner()).clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshake =
        tokio::time::timeout(shared.limits.tls_handshake_timeout, acceptor.accept(stream));
    tokio::select! {
        _ = stop.cancelled() => {}
        r = handshake => match r {
            Ok(Ok(tls)) => drive(tls, &shared, stop).await,
            Ok(Err(e)) => {
                shared.metrics.rejected(Reason::TlsError);
                shared.tls_warning(peer, &e.to_string());
            }
            Err(_) => shared.metrics.rejected(Reason::TlsHandshake),
        }
    }
}

impl Shared {
    fn tls_warning(&self, peer: SocketAddr, error: &str) {
        let now = self.start.elapsed().as_secs() + 60;
        let last = self.last_tls_warning.load(Ordering::Relaxed);
        if now >= last + 60
            && self
                .last_tls_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(listener = self.name, %peer, error, "TLS handshake refused (logged at most once a minute; bfo_alive_http_connections_rejected_total{{reason=\"tls_error\"}} counts them all)");
        } else {
            tracing::debug!(listener = self.name, %peer, error, "TLS handshake refused");
        }
    }
}

/// Serves HTTP on one connection until it ends, is cut by its clock, or drains on `stop`.
async fn drive<IO>(io: IO, shared: &Arc<Shared>, stop: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = ConnState::new(shared.limits);
    let io = TokioIo::new(Tracked {
        io,
        state: state.clone(),
    });
    let service = {
        let (shared, state) = (shared.clone(), state.clone());
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let (shared, state) = (shared.clone(), state.clone());
            async move {
                let handling = state.begin();
                let deadline = tokio::time::Instant::now() + shared.limits.body_timeout;
                let req = req.map(|b| {
                    axum::body::Body::new(DeadlineBody::new(
                        b,
                        deadline,
                        state.clone(),
                        shared.metrics.clone(),
                    ))
                });
                let mut router = shared.router.clone();
                let resp = tower_service::Service::call(&mut router, req).await;
                let guard = handling.responding();
                resp.map(|r| r.map(|inner| ResponseBody { inner, guard }))
            }
        })
    };
    let conn = shared.builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let deadline = state.deadline();
        let sleep = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(listener = shared.name, error = %e, "HTTP connection ended");
                }
                return;
            }
            _ = stop.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = state.changed.notified() => {}
            _ = sleep => {
                // The clock may have moved on while we slept: cut only if it still says so.
                if let Some((at, reason)) = state.deadline()
                    && at <= tokio::time::Instant::now()
                {
                    if let Some(r) = reason {
                        shared.metrics.rejected(r);
                    }
                    return;
                }
            }
        }
    }
}

/// The cap on push requests read and parsed at once.
#[derive(Clone)]
pub(crate) struct PushGate {
    slots: Arc<Semaphore>,
    metrics: HttpMetrics,
}

/// How long a push request waits for a slot before it is answered 503.
const PUSH_WAIT: Duration = Duration::from_secs(1);

impl PushGate {
    pub(crate) fn new(max: usize, metrics: HttpMetrics) -> Self {
        PushGate {
            slots: Arc::new(Semaphore::new(max)),
            metrics,
        }
    }

    /// A slot, or `None` (counted) when none freed within [`PUSH_WAIT`].
    pub(crate) async fn enter(&self) -> Option<OwnedSemaphorePermit> {
        match tokio::time::timeout(PUSH_WAIT, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Some(p),
            _ => {
                self.metrics.rejected(Reason::PushBusy);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
