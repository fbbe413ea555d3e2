//! One connection's clock: which phase it is in (waiting for a request, reading a request
//! head, busy with requests), since when, and so which deadline applies and why it would
//! be cut. The I/O wrapper [`Tracked`] moves it on every byte read or written, the
//! request and response guards on every request; `super::drive` sleeps until the deadline.
//!
//! Why not hyper's own `header_read_timeout`: its timer also runs while a kept-alive
//! connection waits for its next request, so an idle connection and a slow request head
//! end alike, and neither can be told apart for the metric nor given its own limit.

use std::error::Error;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::{Limits, Reason};
use crate::metrics::HttpMetrics;

/// How long a response to a request whose body timed out may take to go out before the
/// connection is closed anyway (the client is, evidently, slow).
const DOOMED_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in progress and no byte of the next one read.
    Waiting,
    /// Bytes of a request head arrived; the head is not complete.
    Head,
    /// At least one request is being handled or its response written.
    Busy,
}

#[derive(Debug)]
struct Clock {
    phase: Phase,
    /// When the phase began.
    since: Instant,
    requests: u64,
    /// Requests whose handler runs.
    handling: usize,
    /// Requests whose response body is being written.
    responding: usize,
    last_io: Instant,
    /// When a request body timed out: the connection ends soon after.
    doomed: Option<Instant>,
}

/// Shared between the connection task, its I/O and its requests.
#[derive(Debug)]
pub(crate) struct ConnState {
    clock: Mutex<Clock>,
    /// Wakes the connection task when the deadline may have moved earlier.
    pub(crate) changed: Notify,
    limits: Limits,
}

impl ConnState {
    pub(crate) fn new(limits: Limits) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(ConnState {
            clock: Mutex::new(Clock {
                phase: Phase::Waiting,
                since: now,
                requests: 0,
                handling: 0,
                responding: 0,
                last_io: now,
                doomed: None,
            }),
            changed: Notify::new(),
            limits,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Clock) -> T) -> T {
        f(&mut self.clock.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn read(&self, n: usize) {
        if n == 0 {
            return;
        }
        let woke = self.with(|c| {
            c.last_io = Instant::now();
            if c.phase == Phase::Waiting {
                c.phase = Phase::Head;
                c.since = c.last_io;
                return true;
            }
            false
        });
        if woke {
            self.changed.notify_one();
        }
    }

    fn wrote(&self, n: usize) {
        if n > 0 {
            self.with(|c| c.last_io = Instant::now());
        }
    }

    /// A request head is complete: its handler starts.
    pub(crate) fn begin(self: &Arc<Self>) -> Handling {
        self.with(|c| {
            c.requests += 1;
            c.handling += 1;
            c.phase = Phase::Busy;
        });
        self.changed.notify_one();
        Handling(Some(self.clone()))
    }

    fn finished(&self, f: impl FnOnce(&mut Clock)) {
        self.with(|c| {
            f(c);
            if c.handling == 0 && c.responding == 0 {
                c.phase = Phase::Waiting;
                c.since = Instant::now();
            }
        });
        self.changed.notify_one();
    }

    /// A request body timed out: let its response go out, then close.
    pub(crate) fn doom(&self) {
        self.with(|c| c.doomed = c.doomed.or(Some(Instant::now())));
        self.changed.notify_one();
    }

    /// When the connection is to be cut, and the reason to count (`None`: already counted);
    /// no deadline while a handler runs (its body has its own).
    pub(crate) fn deadline(&self) -> Option<(Instant, Option<Reason>)> {
        let l = &self.limits;
        self.with(|c| {
            if let Some(at) = c.doomed {
                return Some((at + DOOMED_GRACE, None));
            }
            match c.phase {
                Phase::Waiting if c.requests == 0 => {
                    Some((c.since + l.header_timeout, Some(Reason::HeaderTimeout)))
                }
                Phase::Waiting => Some((c.since + l.idle_timeout, Some(Reason::Idle))),
                Phase::Head => Some((c.since + l.header_timeout, Some(Reason::HeaderTimeout))),
                Phase::Busy if c.handling > 0 => None,
                // Only responses are left to write: a client that stops reading is idle.
                Phase::Busy => Some((c.last_io + l.idle_timeout, Some(Reason::Idle))),
            }
        })
    }
}

/// A running handler; becomes [`Responding`] with its response, or ends the request when
/// dropped without one (the connection went away).
pub(crate) struct Handling(Option<Arc<ConnState>>);

impl Handling {
    pub(crate) fn responding(mut self) -> Responding {
        let state = self.0.take().expect("a handling guard is used once");
        state.with(|c| {
            c.handling -= 1;
            c.responding += 1;
        });
        Responding(Some(state))
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.finished(|c| c.handling -= 1);
        }
    }
}

/// A response being written; the request ends when it drops.
pub(crate) struct Responding(Option<Arc<ConnState>>);

impl Responding {
    fn done(&mut self) {
        if let Some(s) = self.0.take() {
            s.finished(|c| c.responding -= 1);
        }
    }
}

impl Drop for Responding {
    fn drop(&mut self) {
        self.done();
    }
}

/// A response body that ends its request when it is finished or dropped.
pub(crate) struct ResponseBody {
    pub(crate) inner: axum::body::Body,
    pub(crate) guard: Responding,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let r = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if r.is_none() {
            self.guard.done();
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error a request body gives when `body_timeout` passed before its last byte.
#[derive(Debug)]
pub(crate) struct BodyTimeout;

impl fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body did not arrive within http.body_timeout")
    }
}

impl Error for BodyTimeout {}

/// True when `e`, or anything it wraps, is a [`BodyTimeout`].
pub(crate) fn is_body_timeout(e: &(dyn Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<BodyTimeout>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// A request body with one deadline for all of it (not per chunk: a byte a second would
/// pass any per-chunk timeout).
pub(crate) struct DeadlineBody {
    inner: hyper::body::Incoming,
    sleep: Option<Pin<Box<Sleep>>>,
    deadline: Instant,
    state: Arc<ConnState>,
    metrics: HttpMetrics,
}

impl DeadlineBody {
    pub(crate) fn new(
        inner: hyper::body::Incoming,
        deadline: Instant,
        state: Arc<ConnState>,
        metrics: HttpMetrics,
    ) -> Self {
        DeadlineBody {
            inner,
            sleep: None,
            deadline,
            state,
            metrics,
        }
    }
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(r.map(|f| f.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        self.metrics.rejected(Reason::BodyTimeout);
        self.state.doom();
        Poll::Ready(Some(Err(Box::new(BodyTimeout))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's I/O that moves its clock.
pub(crate) struct Tracked<IO> {
    pub(crate) io: IO,
    pub(crate) state: Arc<ConnState>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = ready!(Pin::new(&mut self.io).poll_read(cx, buf));
        self.state.read(buf.filled().len() - before);
        Poll::Ready(r)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = ready!(Pin::new(&mut self.io).poll_write(cx, buf));
        if let Ok(n) = &r {
            self.state.wrote(*n);
        }
        Poll::Ready(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, bufs));
        if let Ok(n) = &r {
            self.state.wrote(*n);
        }
        Poll::Ready(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
