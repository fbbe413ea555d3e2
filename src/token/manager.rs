//! The [`TokenManager`]: one task per token source that fetches, publishes into the
//! [`TokenSlot`]s, reports to the metrics callbacks and waits for the next fetch.
//!
//! The tasks only carry out what [`super::schedule`] decides, on tokio's clock
//! (`tokio::time::Instant`, `sleep_until`), never `std::time::Instant`: so tests can pause
//! and advance time, and the schedule stays a pure function. Wall-clock time appears once,
//! when a token arrives: its expiry becomes "time left" ([`Token::remaining`]).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::file::read_token_file;
use super::model::{Token, TokenError, TokenSlot};
use super::schedule::{self, Next, Outcome, TokenManagerConfig};
use crate::protocol::Service;
use crate::secret::Secret;

/// Issues one token per service on request: the STS client in production. A trait so the
/// manager's tests can script the answers and run on a paused clock.
#[async_trait]
pub trait TokenIssuer: fmt::Debug + Send + Sync {
    async fn issue(&self, service: Service) -> Result<Token, TokenError>;
}

/// Where tokens come from.
pub enum TokenSource {
    /// KOMBIT STS ([`super::StsClient`]), one token per service.
    Sts(Arc<dyn TokenIssuer>),
    /// A file kept fresh by another tool; one token for both services. It is read every
    /// `file_poll_interval` and on demand, and a new content is published. The tool should
    /// replace it atomically (write a temporary file, rename it): a half-written file is
    /// reported as a failure until the next read.
    File(PathBuf),
}

impl TokenSource {
    fn kind(&self) -> &'static str {
        match self {
            TokenSource::Sts(_) => "sts",
            TokenSource::File(_) => "file",
        }
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Sts(c) => f.debug_tuple("Sts").field(c).finish(),
            TokenSource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// Called with the new expiry whenever a service's token changes (and with `None` at start).
pub type ExpiryCallback = Arc<dyn Fn(Service, Option<SystemTime>) + Send + Sync>;
/// Called on every failed fetch (for the file source: when a failure starts or changes, and
/// on demand).
pub type FailureCallback = Arc<dyn Fn(Service, &TokenError) + Send + Sync>;

/// Hooks for metrics.
#[derive(Clone)]
pub struct TokenCallbacks {
    pub on_expiry: ExpiryCallback,
    pub on_failure: FailureCallback,
}

impl Default for TokenCallbacks {
    fn default() -> Self {
        TokenCallbacks {
            on_expiry: Arc::new(|_, _| {}),
            on_failure: Arc::new(|_, _| {}),
        }
    }
}

impl fmt::Debug for TokenCallbacks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenCallbacks")
    }
}

/// Why [`TokenManager::renew_and_wait`] has no new token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenewError {
    #[error("no {0} token is kept: the configuration does not use that service")]
    NotUsed(Service),
    #[error("no token renewal within {0:?}")]
    Timeout(Duration),
    #[error("token renewal failed: {0}")]
    Failed(String),
    #[error("token manager stopped")]
    Stopped,
}

/// Outcome of the last fetch of a service, numbered so waiters see new ones.
#[derive(Debug, Clone, Default)]
struct Attempt {
    seq: u64,
    error: Option<String>,
}

struct Inner {
    kind: &'static str,
    /// The services fetched for; the others' slots stay empty.
    services: Vec<Service>,
    slots: [TokenSlot; 2],
    attempts: [watch::Sender<Attempt>; 2],
    renew: [Notify; 2],
    callbacks: TokenCallbacks,
    config: TokenManagerConfig,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Inner {
    fn publish(&self, service: Service, token: Token) {
        let expires = token.expires_at;
        tracing::info!(
            service = service.as_str(),
            expires_at = ?expires.map(time::OffsetDateTime::from),
            issuer = token.issuer.as_deref().unwrap_or("-"),
            "new token"
        );
        self.slots[service.index()].set(Some(Arc::new(token)));
        (self.callbacks.on_expiry)(service, expires);
        self.attempted(service, None);
    }

    fn unchanged(&self, service: Service) {
        self.attempted(service, None);
    }

    fn failed(&self, service: Service, error: &TokenError, report: bool) {
        if report {
            tracing::warn!(service = service.as_str(), error = %error, "token renewal failed");
            (self.callbacks.on_failure)(service, error);
        }
        self.attempted(service, Some(error.to_string()));
    }

    fn attempted(&self, service: Service, error: Option<String>) {
        self.attempts[service.index()].send_modify(|a| {
            a.seq += 1;
            a.error = error;
        });
    }
}

/// Keeps one token per used [`Service`] in its [`TokenSlot`]: fetches at start, renews at
/// `renew_fraction` of the lifetime and on demand ([`TokenManager::renew`], e.g. after BFO
/// StatusKode 41), backs off on failure, reports through [`TokenCallbacks`]. A service it
/// was not started for is never fetched (a push-only exporter needs no afhent token). Cheap
/// to clone; tasks end when the `CancellationToken` given to [`TokenManager::start`] fires.
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TokenManager");
        d.field("source", &self.inner.kind);
        for s in Service::ALL {
            d.field(s.as_str(), &self.inner.slots[s.index()]);
        }
        d.finish()
    }
}

impl TokenManager {
    /// Starts the manager's tasks for `services` (needs a Tokio runtime). The first fetch
    /// starts at once; use [`TokenManager::wait_for_token`] to wait for it. Every service's
    /// expiry is reported as `None` at start, used or not.
    pub fn start(
        source: TokenSource,
        services: &[Service],
        config: TokenManagerConfig,
        callbacks: TokenCallbacks,
        cancel: CancellationToken,
    ) -> TokenManager {
        let services: Vec<Service> = Service::ALL
            .into_iter()
            .filter(|s| services.contains(s))
            .collect();
        let inner = Arc::new(Inner {
            kind: source.kind(),
            services,
            slots: [TokenSlot::new(), TokenSlot::new()],
            attempts: [
                watch::Sender::new(Attempt::default()),
                watch::Sender::new(Attempt::default()),
            ],
            renew: [Notify::new(), Notify::new()],
            callbacks,
            config,
            cancel,
            tasks: TaskTracker::new(),
        });
        for s in Service::ALL {
            (inner.callbacks.on_expiry)(s, None);
        }
        match source {
            TokenSource::Sts(issuer) => {
                for &s in &inner.services {
                    inner
                        .tasks
                        .spawn(issue_task(inner.clone(), issuer.clone(), s));
                }
            }
            TokenSource::File(path) => {
                inner.tasks.spawn(file_task(inner.clone(), path));
            }
        }
        inner.tasks.close();
        TokenManager { inner }
    }

    /// The slot of `service`, for [`crate::transport::amqp::connect::TokenExternalAuth`] and the `token` header.
    pub fn slot(&self, service: Service) -> TokenSlot {
        self.inner.slots[service.index()].clone()
    }

    /// The current token of `service`.
    pub fn token(&self, service: Service) -> Option<Arc<Token>> {
        self.inner.slots[service.index()].get()
    }

    #[cfg(test)]
    /// The current token's expiry.
    pub fn expires_at(&self, service: Service) -> Option<SystemTime> {
        self.token(service).and_then(|t| t.expires_at)
    }

    /// The source kind: "sts", "file" or "none".
    pub fn source_kind(&self) -> &'static str {
        self.inner.kind
    }

    /// The services this manager keeps a token for.
    pub fn services(&self) -> &[Service] {
        &self.inner.services
    }

    /// Asks for a new token for `service` soon (at most one fetch per `min_renew_interval`).
    /// Returns at once; a no-op with source "none".
    pub fn renew(&self, service: Service) {
        self.inner.renew[service.index()].notify_one();
    }

    /// [`TokenManager::renew`], then waits for the outcome of that fetch: the (new) token,
    /// or why there is none.
    pub async fn renew_and_wait(
        &self,
        service: Service,
        timeout: Duration,
    ) -> Result<Arc<Token>, RenewError> {
        if !self.inner.services.contains(&service) {
            return Err(RenewError::NotUsed(service));
        }
        let mut rx = self.inner.attempts[service.index()].subscribe();
        let before = rx.borrow_and_update().seq;
        self.renew(service);
        let wait = async {
            loop {
                if rx.changed().await.is_err() {
                    return Err(RenewError::Stopped);
                }
                let a = rx.borrow_and_update().clone();
                if a.seq > before {
                    return match a.error {
                        Some(e) => Err(RenewError::Failed(e)),
                        None => self.token(service).ok_or(RenewError::Stopped),
                    };
                }
            }
        };
        tokio::select! {
            r = wait => r,
            _ = tokio::time::sleep(timeout) => Err(RenewError::Timeout(timeout)),
            _ = self.inner.cancel.cancelled() => Err(RenewError::Stopped),
        }
    }

    /// Waits until `service` has a token (returns at once when it has one, or when the
    /// manager keeps none for that service).
    pub async fn wait_for_token(&self, service: Service, timeout: Duration) -> Option<Arc<Token>> {
        if !self.inner.services.contains(&service) {
            return None;
        }
        let mut rx = self.inner.slots[service.index()].subscribe();
        let wait = async {
            loop {
                if let Some(t) = rx.borrow_and_update().clone() {
                    return Some(t);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    #[cfg(test)]
    /// Waits until the manager's tasks have ended (after cancellation).
    pub async fn stopped(&self) {
        self.inner.tasks.wait().await;
    }
}

/// Why [`wait_next`] returned.
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    /// The timer of the schedule fired.
    Timer,
    /// Someone asked for a renewal (and the schedule's floor for that has passed).
    Demand,
    Cancelled,
}

/// Sleeps until `next.at`, cut short by an on-demand renewal of one of `services` when
/// [`Next::on_demand`] allows.
async fn wait_next(inner: &Inner, services: &[Service], next: Next) -> Wake {
    let mut deadline = next.at;
    let mut demanded = false;
    loop {
        let renew = async {
            match services {
                [one] => inner.renew[one.index()].notified().await,
                _ => tokio::select! {
                    _ = inner.renew[0].notified() => {},
                    _ = inner.renew[1].notified() => {},
                },
            }
        };
        tokio::select! {
            _ = inner.cancel.cancelled() => return Wake::Cancelled,
            _ = tokio::time::sleep_until(deadline) => {
                return if demanded { Wake::Demand } else { Wake::Timer };
            }
            _ = renew => {
                let now = Instant::now();
                let at = next.on_demand(now);
                if at <= now {
                    return Wake::Demand;
                }
                demanded = true;
                deadline = deadline.min(at);
            }
        }
    }
}

/// The task of one service of an issuing source (the STS): fetch, publish or report, wait.
async fn issue_task(inner: Arc<Inner>, issuer: Arc<dyn TokenIssuer>, service: Service) {
    let mut failures = 0u32;
    loop {
        // At most `sts_concurrency` requests in flight over every manager of the backend:
        // the others wait here, their start counted from when they got their turn.
        let permit = match &inner.config.sts_permits {
            Some(permits) => tokio::select! {
                _ = inner.cancel.cancelled() => return,
                p = permits.clone().acquire_owned() => p.ok(),
            },
            None => None,
        };
        let started = Instant::now();
        let result = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            r = issuer.issue(service) => r,
        };
        drop(permit);
        let outcome = match result {
            Ok(token) => {
                failures = 0;
                let expires_in = token.remaining();
                inner.publish(service, token);
                Outcome::Token { expires_in }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                inner.failed(service, &e, true);
                Outcome::Failed {
                    consecutive: failures,
                    jitter: rand::random_range(schedule::JITTER),
                }
            }
        };
        let now = Instant::now();
        let mut next = schedule::after_fetch(&inner.config, started, now, outcome);
        if matches!(outcome, Outcome::Token { .. }) && inner.config.renew_jitter > 0.0 {
            next = schedule::spread(next, now, inner.config.renew_jitter, rand::random());
        }
        if wait_next(&inner, &[service], next).await == Wake::Cancelled {
            return;
        }
    }
}

/// What the file source last saw: the content, or the failure it reported.
#[derive(PartialEq)]
enum FileState {
    Start,
    Content(Secret<String>),
    Failed(String),
}

/// The task of the file source, for both services: read, publish a new content or report
/// a new failure, wait.
async fn file_task(inner: Arc<Inner>, path: PathBuf) {
    let mut state = FileState::Start;
    // An on-demand read counts as an attempt even when nothing changed, and reports a
    // failure again; a timed poll reports a failure only when it starts or changes.
    let mut on_demand = false;
    loop {
        let read_at = Instant::now();
        match read_token_file(&path) {
            Ok(token) => {
                if state != FileState::Content(token.xml.clone()) {
                    state = FileState::Content(token.xml.clone());
                    for &s in &inner.services {
                        inner.publish(s, token.clone());
                    }
                } else if on_demand {
                    for &s in &inner.services {
                        inner.unchanged(s);
                    }
                }
            }
            Err(e) => {
                let text = e.to_string();
                let report = on_demand || state != FileState::Failed(text.clone());
                for &s in &inner.services {
                    inner.failed(s, &e, report);
                }
                state = FileState::Failed(text);
            }
        }
        let next = schedule::after_file_read(&inner.config, read_at);
        match wait_next(&inner, &inner.services, next).await {
            Wake::Cancelled => return,
            Wake::Timer => on_demand = false,
            Wake::Demand => on_demand = true,
        }
    }
}

/// All on tokio's paused clock: the runtime jumps from timer to timer whenever every task
/// waits, so the times and counts asserted here are exact and no test waits in real time.
/// Only expiries are wall-clock (`SystemTime`), so renewals at a fraction of a lifetime may
/// come a few microseconds early; those are checked with `SLACK`.
#[cfg(test)]
mod tests {
    use super::super::testutil::{
        Harness, MARK, MS, S, SLACK, assert_times, assertion, down, number, scripted, timing, token,
    };
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use std::path::Path;

    #[tokio::test(start_paused = true)]
    async fn renews_at_the_fraction_of_the_lifetime_or_the_fixed_interval() {
        // Afsend: 100 s lifetimes, renewed at half. Afhent: no expiry, every 30 s.
        let (source, tokens) = scripted(|service, n| match service {
            Service::Afsend => token(n, Some(100 * S)),
            Service::Afhent => token(n, None),
        });
        let h = Harness::start(tokens, timing());
        h.run_until(175 * S).await;

        let expected: Vec<Duration> = [0, 50, 100, 150].map(|s| s * S).into();
        assert_times(&h.calls(&source, Service::Afsend), &expected, SLACK);
        let expected: Vec<Duration> = [0, 30, 60, 90, 120, 150].map(|s| s * S).into();
        assert_eq!(h.calls(&source, Service::Afhent), expected);
        assert_eq!(number(&h.mgr.token(Service::Afsend).unwrap()), 3);
        assert_eq!(number(&h.mgr.token(Service::Afhent).unwrap()), 5);
        // Every new token is reported with its expiry; never a failure.
        let expiries = h.expiries();
        assert_eq!(expiries.len(), 2 + 4 + 6);
        let afsend: Vec<_> = expiries
            .iter()
            .filter(|(s, e)| *s == Service::Afsend && e.is_some())
            .collect();
        assert_eq!(afsend.len(), 4);
        assert_eq!(afsend.last().unwrap().1, h.mgr.expires_at(Service::Afsend));
        assert!(h.rec.failures.lock().unwrap().is_empty());
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_token_is_renewed_every_retry_min() {
        let (source, tokens) = scripted(|_, n| token(n, Some(Duration::ZERO)));
        let h = Harness::start(tokens, timing());
        h.run_until(4500 * MS).await;
        let expected: Vec<Duration> = [0, 1, 2, 3, 4].map(|s| s * S).into();
        assert_eq!(h.calls(&source, Service::Afsend), expected);
        assert_eq!(h.calls(&source, Service::Afhent), expected);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_to_the_cap_and_reset_after_a_token() {
        // Afsend: six failures, a token, one failure, then tokens. Afhent: always a token.
        let (source, tokens) = scripted(|service, n| match (service, n) {
            (Service::Afsend, 0..=5 | 7) => down(),
            (Service::Afsend, _) => token(n, Some(100 * S)),
            (Service::Afhent, _) => token(n, Some(3600 * S)),
        });
        let h = Harness::start(tokens, timing());
        // Backoff 1, 2, 4, 8 (retry_max), 8, 8 s, each ±10 %: the token comes at 27.9 to
        // 34.1 s, and the next renewal is due 50 s after it.
        h.run_until(40 * S).await;
        let calls = h.calls(&source, Service::Afsend);
        assert_eq!(calls.len(), 7, "{calls:?}");
        for (gap, base) in calls
            .windows(2)
            .map(|w| w[1] - w[0])
            .zip([1, 2, 4, 8, 8, 8])
        {
            assert!(
                gap >= base * S * 9 / 10 && gap <= base * S * 11 / 10,
                "{calls:?}"
            );
        }
        let failures = h.failures(Service::Afsend);
        assert_eq!(failures.len(), 6);
        assert!(failures.iter().all(|e| e.contains("500")), "{failures:?}");
        assert_eq!(number(&h.mgr.token(Service::Afsend).unwrap()), 6);
        // The other service is untouched by it.
        assert_eq!(h.calls(&source, Service::Afhent), [Duration::ZERO]);
        assert!(h.failures(Service::Afhent).is_empty());

        // On demand, the waiter learns why there is no new token; the old one stays.
        h.renewal_fails(Service::Afsend, "500").await;
        assert_eq!(h.elapsed(), 40 * S);
        assert_eq!(number(&h.mgr.token(Service::Afsend).unwrap()), 6);

        // The token reset the failure count: the next retry is 1 s away, not 16.
        h.run_until(45 * S).await;
        let calls = h.calls(&source, Service::Afsend);
        assert_eq!(calls.len(), 9, "{calls:?}");
        assert!(calls[8] >= 40 * S + 900 * MS && calls[8] <= 40 * S + 1100 * MS);
        assert_eq!(number(&h.mgr.token(Service::Afsend).unwrap()), 8);
        assert_eq!(h.failures(Service::Afsend).len(), 7);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn on_demand_renewal_waits_for_min_renew_interval() {
        let (source, tokens) = scripted(|_, n| token(n, Some(3600 * S)));
        let config = TokenManagerConfig {
            min_renew_interval: 10 * S,
            ..timing()
        };
        let h = Harness::start(tokens, config);
        let first = h.mgr.wait_for_token(Service::Afsend, S).await.unwrap();
        let afhent = h.mgr.wait_for_token(Service::Afhent, S).await.unwrap();

        // A BFO answering 41 in a loop: three demands at once make one fetch, 10 s after
        // the last.
        for _ in 0..3 {
            h.mgr.renew(Service::Afsend);
        }
        h.run_until(20 * S).await;
        assert_eq!(h.calls(&source, Service::Afsend), [Duration::ZERO, 10 * S]);
        assert_eq!(h.calls(&source, Service::Afhent), [Duration::ZERO]);

        // Once the interval has passed, a demand is served at once.
        let renewed = h.mgr.renew_and_wait(Service::Afsend, S).await.unwrap();
        assert_eq!(h.elapsed(), 20 * S);
        assert_eq!(number(&first), 0);
        assert_eq!(number(&renewed), 2);
        assert_eq!(
            h.mgr.token(Service::Afsend).unwrap().xml.expose(),
            renewed.xml.expose()
        );
        assert_eq!(h.mgr.expires_at(Service::Afsend), renewed.expires_at);
        // The other service keeps its token.
        assert_eq!(
            h.mgr.token(Service::Afhent).unwrap().xml.expose(),
            afhent.xml.expose()
        );

        // Expiry callback: None for both at start, then each new token.
        let expiries = h.expiries();
        assert_eq!(
            &expiries[..2],
            &[(Service::Afsend, None), (Service::Afhent, None)]
        );
        let afsend = expiries
            .iter()
            .filter(|(s, e)| *s == Service::Afsend && e.is_some());
        assert_eq!(afsend.count(), 3);

        let dbg = format!("{:?}", h.mgr);
        assert!(!dbg.contains(MARK) && dbg.contains("sts"), "{dbg}");
        h.stop().await;
    }

    /// As a token tool should write: a temporary file renamed over the old one.
    fn write_atomic(path: &Path, text: String) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn file_source_publishes_changes_and_reports_failures_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.xml");
        let exp1 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        write_atomic(&path, assertion("file", Some(exp1), "FIRST") + "\n");

        // Polls every 5 s; a demand is served 1 s after the last read at the earliest.
        let h = Harness::start(TokenSource::File(path.clone()), timing());
        let t1 = h.mgr.wait_for_token(Service::Afsend, S).await.unwrap();
        assert!(t1.xml.expose().contains("FIRST") && !t1.xml.expose().ends_with('\n'));
        assert_eq!(t1.expires_at, Some(exp1));
        // One token for both services.
        let h1 = h.mgr.wait_for_token(Service::Afhent, S).await.unwrap();
        assert_eq!(h1.xml.expose(), t1.xml.expose());

        // Same length, new content: seen by content, at the next poll.
        let mut rx = h.mgr.slot(Service::Afhent).subscribe();
        rx.borrow_and_update();
        write_atomic(&path, assertion("file", Some(exp1), "SECND"));
        tokio::time::timeout(10 * S, rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(h.elapsed(), 5 * S);
        let t2 = h.mgr.token(Service::Afhent).unwrap();
        assert!(t2.xml.expose().contains("SECND"));
        assert_eq!(
            h.mgr.token(Service::Afsend).unwrap().xml.expose(),
            t2.xml.expose()
        );

        // Unchanged file: five more polls, no new publication (2 at start + 2 + 2).
        h.run_until(32 * S).await;
        assert_eq!(h.expiries().len(), 6);

        // Missing file: six polls, one failure report per service (not one per poll);
        // the token is kept.
        std::fs::remove_file(&path).unwrap();
        h.run_until(62 * S).await;
        let failures = h.rec.failures.lock().unwrap().clone();
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].1.contains("token.xml"));
        assert!(h.mgr.token(Service::Afsend).is_some());
        // On demand: read at once (the last poll was at 60 s), reported again, and the
        // waiter learns why.
        h.renewal_fails(Service::Afsend, "token.xml").await;
        assert_eq!(h.elapsed(), 62 * S);
        assert_eq!(h.rec.failures.lock().unwrap().len(), 4);

        // Base64 content works too; this demand comes right after the last read, so it
        // waits for the 1 s floor.
        write_atomic(&path, BASE64.encode(assertion("file", None, "THIRD")));
        let t3 = h.mgr.renew_and_wait(Service::Afsend, 10 * S).await.unwrap();
        assert!(t3.xml.expose().contains("THIRD"));
        assert_eq!(h.elapsed(), 63 * S);

        let dbg = format!("{:?}", h.mgr);
        assert!(
            !dbg.contains("THIRD") && !dbg.contains("Assertion"),
            "{dbg}"
        );
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_services_it_was_started_for_are_fetched() {
        let (source, tokens) = scripted(|_, n| token(n, Some(100 * S)));
        let h = Harness::start_for(tokens, &[Service::Afsend], timing());
        h.run_until(120 * S).await;
        assert_eq!(h.calls(&source, Service::Afsend).len(), 3);
        assert!(h.calls(&source, Service::Afhent).is_empty());
        assert_eq!(h.mgr.services(), [Service::Afsend]);
        // No afhent token, and nobody waits for one.
        assert!(h.mgr.token(Service::Afhent).is_none());
        assert!(h.mgr.wait_for_token(Service::Afhent, S).await.is_none());
        assert_eq!(
            h.mgr.renew_and_wait(Service::Afhent, S).await.unwrap_err(),
            RenewError::NotUsed(Service::Afhent)
        );
        assert_eq!(h.elapsed(), 120 * S);
        // Both expiries start at "none" all the same.
        assert_eq!(
            &h.expiries()[..2],
            &[(Service::Afsend, None), (Service::Afhent, None)]
        );

        // The file source publishes to the used services only.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.xml");
        write_atomic(&path, assertion("file", None, "FILE"));
        let f = Harness::start_for(TokenSource::File(path), &[Service::Afsend], timing());
        assert!(f.mgr.wait_for_token(Service::Afsend, S).await.is_some());
        f.run_until(6 * S).await;
        assert!(f.mgr.token(Service::Afhent).is_none());
        h.stop().await;
        f.stop().await;
    }

    /// An STS that takes a second per request and records how many are in flight.
    #[derive(Debug, Default)]
    struct SlowSts {
        now: std::sync::atomic::AtomicUsize,
        max: std::sync::atomic::AtomicUsize,
        total: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl TokenIssuer for SlowSts {
        async fn issue(&self, _service: Service) -> Result<Token, TokenError> {
            use std::sync::atomic::Ordering::SeqCst;
            let n = self.now.fetch_add(1, SeqCst) + 1;
            self.max.fetch_max(n, SeqCst);
            tokio::time::sleep(S).await;
            self.now.fetch_sub(1, SeqCst);
            let i = self.total.fetch_add(1, SeqCst);
            token(i, Some(600 * S))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_sts_concurrency_cap_holds_over_every_manager_at_start_and_on_renewal() {
        use std::sync::atomic::Ordering::SeqCst;
        // 50 municipalities × 2 services, 4 requests at a time, a second each.
        let sts = Arc::new(SlowSts::default());
        let permits = Arc::new(tokio::sync::Semaphore::new(4));
        let config = TokenManagerConfig {
            renew_fraction: 0.5,
            renew_jitter: 0.1,
            sts_permits: Some(permits),
            ..TokenManagerConfig::default()
        };
        let cancel = CancellationToken::new();
        let t0 = Instant::now();
        let managers: Vec<TokenManager> = (0..50)
            .map(|_| {
                TokenManager::start(
                    TokenSource::Sts(sts.clone()),
                    &Service::ALL,
                    config.clone(),
                    TokenCallbacks::default(),
                    cancel.clone(),
                )
            })
            .collect();
        for m in &managers {
            for s in Service::ALL {
                assert!(m.wait_for_token(s, 60 * S).await.is_some());
            }
        }
        // 100 requests, 4 at a time, a second each: 25 s until the last token, never more
        // than 4 in flight.
        assert_eq!(Instant::now() - t0, 25 * S);
        assert_eq!(sts.max.load(SeqCst), 4);
        assert_eq!(sts.total.load(SeqCst), 100);
        // Renewals (at half of 600 s, up to 10 % earlier) stay under the cap too, and are
        // spread: a herd of 100 at one instant would take 25 s again.
        tokio::time::sleep_until(t0 + 330 * S).await;
        assert_eq!(sts.total.load(SeqCst), 200);
        assert_eq!(sts.max.load(SeqCst), 4);
        cancel.cancel();
        for m in &managers {
            m.stopped().await;
        }
    }
}
