//! One service's connection to the broker over time, shared by every dueslag of that
//! service.
//!
//! A [`Link`] connects on demand, waits with capped exponential backoff between failed
//! attempts (so that a probe round during an outage fails fast instead of piling up
//! connects), and is reset when a token is renewed, because the EXTERNAL response is only
//! read at connect. It reports each change of state as a [`LinkEvent`] instead of touching
//! metrics itself, so that the transport stays I/O and the caller decides what a state means.

use std::sync::Arc;
use std::time::Duration;

use lapin::Connection;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Settings;
use super::connect::{self as sasl, AuthChoice};
use crate::backoff::Backoff;
use crate::protocol::Service;

/// A change of a link's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A new connection is open.
    Up,
    /// There is no connection now.
    Down(DownReason),
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

struct LinkState {
    conn: Option<Arc<Connection>>,
    /// Bumped at every new connection; channels remember the one they were made on.
    generation: u64,
    retry_at: Option<Instant>,
    backoff: Backoff,
}

/// One service's connection.
pub struct Link {
    service: Service,
    pub(super) settings: Settings,
    state: tokio::sync::Mutex<LinkState>,
}

impl Link {
    /// A link that is down until its first use.
    pub fn new(service: Service, settings: Settings) -> Arc<Self> {
        Arc::new(Link {
            service,
            settings,
            state: tokio::sync::Mutex::new(LinkState {
                conn: None,
                generation: 0,
                retry_at: None,
                backoff: Backoff::reconnect(),
            }),
        })
    }

    fn report(&self, event: LinkEvent) {
        (self.settings.events)(self.service, &event);
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
        let auth = match (&self.settings.tokens, self.settings.external) {
            (Some(m), true) => AuthChoice::External(m.slot(self.service)),
            _ => AuthChoice::Plain,
        };
        match sasl::connect(&self.settings.url, self.settings.tls.clone(), auth).await {
            Ok(c) => {
                let c = Arc::new(c);
                st.conn = Some(c.clone());
                st.generation += 1;
                st.retry_at = None;
                st.backoff.reset();
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

    /// Drops the connection so that the next use connects again (at once).
    pub async fn reset(&self) {
        let mut st = self.state.lock().await;
        if let Some(c) = st.conn.take() {
            let _ = c.close(200, "reconnecting".into()).await;
        }
        st.retry_at = None;
        self.report(LinkEvent::Down(DownReason::Reset));
    }

    /// Keeps the connection (and so its events) current while nobody sends: checks once a
    /// second and reconnects with backoff.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let _ = self.connection().await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        self.close().await;
    }

    /// Closes the connection for good.
    pub async fn close(&self) {
        self.reset().await;
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
