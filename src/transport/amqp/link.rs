//! One service's connection to the broker over time, shared by every dueslag of that
//! service.
//!
//! A [`Link`] connects on demand, waits with capped exponential backoff between failed
//! attempts (so that a probe round during an outage fails fast instead of piling up
//! connects), and is reset when a token is renewed, because the EXTERNAL response is only
//! read at connect. It reports each change of state as a [`LinkEvent`] instead of touching
//! metrics itself, so that the transport stays I/O and the caller decides what a state means.
//!
//! **Connection age** (`[broker] max_connection_age`, ARCHITECTURE.md §2): the Beskedfordeler
//! ends a connection after the 3600 s its connection authoriser granted. So that no probe
//! sees that cut, the link replaces a connection before it is that old, make before break:
//! it opens the next connection while the old one keeps serving, then hands the new one out.
//! New Afsend attempts and pull consumers go to the new connection (consumers learn of it
//! through [`Link::generations`]); the old one is *retired*: it stays open while anyone
//! still holds it (an attempt waiting for its StandardRetur, a consumer not yet moved) and
//! is closed once nobody does, or after [`RETIRE_LIMIT`] at the latest.

use std::sync::Arc;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Settings;
use super::connect::{self as sasl, AuthChoice};
use crate::backoff::Backoff;
use crate::protocol::Service;

/// How often [`Link::watch`] checks the connection: that it is up, its age, retired ones.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The longest a replaced connection stays open for attempts still waiting on it. An
/// attempt cut by this is retried on the new connection (`send.rs`).
pub const RETIRE_LIMIT: Duration = Duration::from_secs(60);

/// The `connection_name` client property of a service's connections, with the
/// municipality (CVR) whose token they use, so that a broker operator (or a test, or the
/// emulator) can tell them apart. A name only: what authorises a connection is its token.
pub fn connection_name(service: Service, cvr: Option<&str>) -> String {
    match cvr {
        Some(cvr) => format!("bfo-alive-exporter {} {cvr}", service.as_str()),
        None => format!("bfo-alive-exporter {}", service.as_str()),
    }
}

/// A change of a link's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A new connection is open.
    Up,
    /// There is no connection now.
    Down(DownReason),
    /// The connection reached `max_connection_age` and a new one replaced it; the link
    /// stayed up. `age` is how old the replaced connection was.
    Rotated { age: Duration },
    /// Opening the replacement failed; the old connection keeps serving, and no new
    /// replacement is tried before `retry_in`.
    RotationFailed { error: String, retry_in: Duration },
}

/// Why a link is down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// The open connection was found closed (by the broker or the network).
    Lost,
    /// A connect attempt failed; no new attempt is made before `retry_in`.
    ConnectFailed { error: String, retry_in: Duration },
    /// Dropped on purpose: to connect again with a renewed token, or to shut down.
    Reset,
}

/// Receives every [`LinkEvent`] of every link, with the link's service.
pub type LinkEvents = Arc<dyn Fn(Service, &LinkEvent) + Send + Sync>;

/// A replaced connection, open until nobody uses it.
struct Retired {
    conn: Arc<Connection>,
    since: Instant,
}

struct LinkState {
    conn: Option<Arc<Connection>>,
    /// When `conn` was opened.
    opened_at: Instant,
    /// Bumped at every new connection; channels remember the one they were made on.
    generation: u64,
    retry_at: Option<Instant>,
    /// After a failed replacement, none is tried before this.
    rotate_at: Option<Instant>,
    backoff: Backoff,
    retired: Vec<Retired>,
}

/// One service's connection.
pub struct Link {
    service: Service,
    pub(super) settings: Settings,
    state: tokio::sync::Mutex<LinkState>,
    /// The current generation, for consumers waiting to move to a newer connection.
    generations: watch::Sender<u64>,
}

impl Link {
    /// A link that is down until its first use.
    pub fn new(service: Service, settings: Settings) -> Arc<Self> {
        let backoff = Backoff::reconnect_within(settings.reconnect_max);
        Arc::new(Link {
            service,
            settings,
            state: tokio::sync::Mutex::new(LinkState {
                conn: None,
                opened_at: Instant::now(),
                generation: 0,
                retry_at: None,
                rotate_at: None,
                backoff,
                retired: Vec::new(),
            }),
            generations: watch::Sender::new(0),
        })
    }

    fn report(&self, event: LinkEvent) {
        (self.settings.events)(self.service, &event);
    }

    /// Opens one connection with this link's authentication and name.
    async fn open(&self) -> lapin::Result<Connection> {
        let auth = match (&self.settings.tokens, self.settings.external) {
            (Some(m), true) => AuthChoice::External(m.slot(self.service)),
            _ => AuthChoice::Plain,
        };
        let properties = ConnectionProperties::default().with_connection_name(
            connection_name(self.service, self.settings.cvr.as_deref()).into(),
        );
        sasl::connect_tuned(
            &self.settings.url,
            self.settings.tls.clone(),
            auth,
            properties,
            self.settings.heartbeat,
        )
        .await
    }

    /// Makes `conn` the current connection.
    fn install(&self, st: &mut LinkState, conn: Connection) -> Arc<Connection> {
        let conn = Arc::new(conn);
        st.conn = Some(conn.clone());
        st.opened_at = Instant::now();
        st.generation += 1;
        st.retry_at = None;
        st.rotate_at = None;
        st.backoff.reset();
        self.generations.send_replace(st.generation);
        conn
    }

    /// The open connection and its generation, connecting if needed.
    pub async fn connection(&self) -> Result<(Arc<Connection>, u64), String> {
        let mut st = self.state.lock().await;
        if let Some(c) = &st.conn {
            if c.status().connected() {
                return Ok((c.clone(), st.generation));
            }
            st.conn = None;
            self.report(LinkEvent::Down(DownReason::Lost));
        }
        if let Some(at) = st.retry_at
            && Instant::now() < at
        {
            return Err(format!(
                "{} connection down; next attempt in {:?}",
                self.service.as_str(),
                at - Instant::now()
            ));
        }
        match self.open().await {
            Ok(c) => {
                let c = self.install(&mut st, c);
                self.report(LinkEvent::Up);
                Ok((c, st.generation))
            }
            Err(e) => {
                let retry_in = st.backoff.next_delay();
                st.retry_at = Some(Instant::now() + retry_in);
                self.report(LinkEvent::Down(DownReason::ConnectFailed {
                    error: e.to_string(),
                    retry_in,
                }));
                Err(format!("cannot connect ({}): {e}", self.service.as_str()))
            }
        }
    }

    /// The generation of the current connection, changing whenever a new one is installed
    /// (after a loss, a reset or a replacement at `max_connection_age`).
    pub fn generations(&self) -> watch::Receiver<u64> {
        self.generations.subscribe()
    }

    /// Replaces the connection when it is within one check of `max_connection_age`, so the
    /// new one is open before that age: make before break (module doc).
    async fn rotate_if_old(&self) {
        let Some(max_age) = self.settings.max_connection_age else {
            return;
        };
        let generation = {
            let st = self.state.lock().await;
            match &st.conn {
                Some(c) if c.status().connected() => {}
                _ => return,
            }
            if st.opened_at.elapsed() + CHECK_EVERY < max_age
                || st.rotate_at.is_some_and(|at| Instant::now() < at)
            {
                return;
            }
            st.generation
        };
        // Opened without holding the state: the old connection serves meanwhile.
        let made = self.open().await;
        let mut st = self.state.lock().await;
        match made {
            // Lost and reconnected meanwhile: the fresh connection stays, this one is not
            // needed.
            Ok(c) if st.generation != generation => {
                tokio::spawn(async move { super::close_in_time(&c, "not needed").await });
            }
            Ok(c) => {
                let age = st.opened_at.elapsed();
                if let Some(old) = st.conn.take() {
                    st.retired.push(Retired {
                        conn: old,
                        since: Instant::now(),
                    });
                }
                self.install(&mut st, c);
                self.report(LinkEvent::Rotated { age });
            }
            Err(e) => {
                let retry_in = st.backoff.next_delay();
                st.rotate_at = Some(Instant::now() + retry_in);
                self.report(LinkEvent::RotationFailed {
                    error: e.to_string(),
                    retry_in,
                });
            }
        }
    }

    /// Closes the retired connections that nobody holds any more, that were closed
    /// already, or that reached [`RETIRE_LIMIT`].
    async fn close_retired(&self, all: bool) {
        let done: Vec<Retired> = {
            let mut st = self.state.lock().await;
            let (done, keep) = std::mem::take(&mut st.retired).into_iter().partition(|r| {
                all || Arc::strong_count(&r.conn) == 1
                    || !r.conn.status().connected()
                    || r.since.elapsed() >= RETIRE_LIMIT
            });
            st.retired = keep;
            done
        };
        for r in done {
            if r.conn.status().connected() {
                super::close_in_time(&r.conn, "replaced").await;
            }
        }
    }

    /// Drops the connection so that the next use connects again (at once).
    pub async fn reset(&self) {
        let mut st = self.state.lock().await;
        if let Some(c) = st.conn.take() {
            super::close_in_time(&c, "reconnecting").await;
        }
        st.retry_at = None;
        self.report(LinkEvent::Down(DownReason::Reset));
    }

    /// Keeps the connection (and so its events) current while nobody sends: checks once a
    /// second, reconnects with backoff, replaces it at `max_connection_age` and closes
    /// retired ones.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let _ = self.connection().await;
            self.rotate_if_old().await;
            self.close_retired(false).await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(CHECK_EVERY) => {}
            }
        }
        self.close().await;
    }

    /// Closes the connection, and any retired one, for good.
    pub async fn close(&self) {
        self.reset().await;
        self.close_retired(true).await;
    }

    /// Waits up to `timeout` for this link's first token when tokens are in use (at
    /// start-up many municipalities' tokens queue for the STS): false when there is still
    /// none, so that nothing is sent that must be refused for want of one.
    pub(super) async fn token_ready(&self, timeout: Duration) -> bool {
        match &self.settings.tokens {
            Some(m) => m.wait_for_token(self.service, timeout).await.is_some(),
            None => true,
        }
    }

    /// The current token's XML for the `token` header, if tokens are in use.
    pub(super) fn token(&self) -> Option<String> {
        let m = self.settings.tokens.as_ref()?;
        m.slot(self.service).get().map(|t| t.xml.expose().clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    type Seen = Arc<Mutex<Vec<(Service, LinkEvent)>>>;

    /// A link to a port where nothing listens, recording its events.
    fn unreachable_link() -> (Arc<Link>, Seen) {
        let seen: Seen = Arc::default();
        let s = seen.clone();
        let settings = Settings {
            url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
            tls: None,
            tokens: None,
            external: false,
            prefetch: 1,
            max_connection_age: None,
            heartbeat: None,
            reconnect_max: crate::backoff::RECONNECT_MAX,
            cvr: None,
            events: Arc::new(move |service, event| {
                s.lock().unwrap().push((service, event.clone()))
            }),
        };
        (Link::new(Service::Afhent, settings), seen)
    }

    fn retry_in(event: &(Service, LinkEvent)) -> Duration {
        match event {
            (Service::Afhent, LinkEvent::Down(DownReason::ConnectFailed { retry_in, .. })) => {
                *retry_in
            }
            other => panic!("not a failed connect of afhent: {other:?}"),
        }
    }

    #[tokio::test]
    async fn failed_connects_report_down_once_each_and_back_off() {
        let (link, seen) = unreachable_link();
        assert!(
            seen.lock().unwrap().is_empty(),
            "no event before the first use"
        );

        assert!(link.connection().await.is_err());
        // Inside the backoff window nothing is attempted, so nothing new is reported.
        let err = link.connection().await.unwrap_err();
        assert!(err.contains("next attempt in"), "{err}");
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 1);
            assert_eq!(retry_in(&seen[0]), Duration::from_millis(500));
        }

        // A reset allows an attempt at once but keeps the backoff growing.
        link.reset().await;
        assert!(link.connection().await.is_err());
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(
            seen[1],
            (Service::Afhent, LinkEvent::Down(DownReason::Reset))
        );
        assert_eq!(retry_in(&seen[2]), Duration::from_secs(1));
    }
}
