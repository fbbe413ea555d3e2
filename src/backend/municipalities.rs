//! The AMQP backend's tokens and connections per municipality (CVR): a token per (CVR,
//! service), renewed on its own schedule, and a connection per (CVR, role), authenticated
//! by that token (ARCHITECTURE.md §2, "Many municipalities").
//!
//! KOMBIT's STS issues a token for one CVR (`Anvenderkontekst.Cvr`) and one service, and
//! the token authenticates the connection (SASL EXTERNAL), so a supplier probing many
//! municipalities needs one of each per municipality. [`Municipalities::set`] makes them for
//! the CVRs the running dueslag belong to, when a dueslag first needs them, and ends them
//! (closing the connections, stopping the renewals, removing their series) when no dueslag
//! needs them any more after a reload. Every municipality shares what is the supplier's,
//! not the municipality's: the broker URL, the client certificate of `[broker.tls]` and
//! one cap on STS requests in flight (`[token] sts_concurrency`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::token::StsClient;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{AuthKind, BrokerConfig, Config, DueslagSpec, Mode};
use crate::metrics::Metrics;
use crate::protocol::Service;
use crate::transport::amqp::{AmqpAfhenter, AmqpAfsender, Link, Settings};
use crate::transport::{Afhenter, Afsender};

/// One municipality's token manager and links.
struct Municipality {
    services: Vec<Service>,
    afsender: Arc<dyn Afsender>,
    afhenter: Arc<dyn Afhenter>,
    /// Ends its links and token renewals.
    stop: CancellationToken,
}

/// The municipalities of one AMQP backend.
pub struct Municipalities {
    /// What every municipality shares; `cvr`, `tokens` and `events` are set per
    /// municipality.
    base: Settings,
    /// The STS client every municipality's tokens come from (with its CVR), if `sts`.
    sts: Option<StsClient>,
    config: Config,
    metrics: Metrics,
    /// The backend's stop: every municipality's is a child of it.
    stop: CancellationToken,
    permits: Arc<Semaphore>,
    by_cvr: Mutex<BTreeMap<String, Municipality>>,
    /// Until the first [`Municipalities::set`]: the series of the backend this one replaces
    /// are still there (its links may report until it is stopped, just before that call).
    fresh: std::sync::atomic::AtomicBool,
}

impl Municipalities {
    pub(super) fn new(
        base: Settings,
        sts: Option<StsClient>,
        config: &Config,
        metrics: &Metrics,
        stop: CancellationToken,
    ) -> Self {
        let concurrency = config
            .token
            .as_ref()
            .map_or(crate::config::DEFAULT_STS_CONCURRENCY, |t| {
                t.sts_concurrency
            });
        Municipalities {
            base,
            sts,
            config: config.clone(),
            metrics: metrics.clone(),
            stop,
            permits: Arc::new(Semaphore::new(concurrency)),
            by_cvr: Mutex::default(),
            fresh: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Makes the tokens and connections the dueslag of `specs` need, and ends those no
    /// dueslag needs. Returns the dueslag whose municipality was remade (it needs a role
    /// it did not have: the first pull dueslag of a CVR), whose loops must restart on it.
    pub fn set(&self, specs: &[DueslagSpec]) -> Vec<String> {
        let mut wanted: BTreeMap<&str, bool> = BTreeMap::new();
        for s in specs {
            *wanted.entry(s.cvr.as_str()).or_default() |= s.mode == Mode::Pull;
        }
        let mut by_cvr = self.by_cvr.lock().unwrap();
        if self.fresh.swap(false, std::sync::atomic::Ordering::Relaxed) {
            self.metrics.clear_connections();
            self.metrics.clear_tokens();
        }
        let gone: Vec<String> = by_cvr
            .keys()
            .filter(|c| !wanted.contains_key(c.as_str()))
            .cloned()
            .collect();
        for cvr in gone {
            if let Some(m) = by_cvr.remove(&cvr) {
                self.end(&cvr, m);
            }
        }
        let mut remade = Vec::new();
        for (cvr, pull) in wanted {
            let services: Vec<Service> = Service::ALL
                .into_iter()
                .filter(|s| *s == Service::Afsend || pull)
                .collect();
            if by_cvr.get(cvr).is_some_and(|m| m.services == services) {
                continue;
            }
            if let Some(old) = by_cvr.remove(cvr) {
                self.end(cvr, old);
                remade.extend(
                    specs
                        .iter()
                        .filter(|s| s.cvr == cvr)
                        .map(|s| s.name.clone()),
                );
            }
            by_cvr.insert(cvr.to_string(), self.open(cvr, services));
        }
        remade
    }

    /// The afsender of `cvr` (made by [`Municipalities::set`] before any loop starts).
    pub fn afsender(&self, cvr: &str) -> Option<Arc<dyn Afsender>> {
        self.by_cvr
            .lock()
            .unwrap()
            .get(cvr)
            .map(|m| m.afsender.clone())
    }

    /// The afhenter of `cvr`.
    pub fn afhenter(&self, cvr: &str) -> Option<Arc<dyn Afhenter>> {
        self.by_cvr
            .lock()
            .unwrap()
            .get(cvr)
            .map(|m| m.afhenter.clone())
    }

    fn open(&self, cvr: &str, services: Vec<Service>) -> Municipality {
        let stop = self.stop.child_token();
        for &s in &services {
            self.metrics.set_connection_up(s, cvr, false);
            self.metrics.token_started(s, cvr);
        }
        let tokens = match super::tokens_for(
            &self.config,
            cvr,
            &services,
            &self.metrics,
            &stop,
            Some(self.permits.clone()),
            self.sts.as_ref(),
        ) {
            Ok(t) => t,
            Err(e) => {
                // Validated at load; a failure here (an unreadable certificate) shows on
                // every connection of the municipality as a failed connect.
                tracing::error!(cvr, error = %e, "cannot make the token source");
                None
            }
        };
        let settings = Settings {
            tokens,
            cvr: Some(cvr.to_string()),
            events: super::link_events(&self.metrics, &self.base.url, cvr, &stop),
            ..self.base.clone()
        };
        let afsend = Link::new(Service::Afsend, settings.clone());
        tokio::spawn(afsend.clone().watch(stop.clone()));
        let afhenter: Arc<dyn Afhenter> = if services.contains(&Service::Afhent) {
            let afhent = Link::new(Service::Afhent, settings);
            tokio::spawn(afhent.clone().watch(stop.clone()));
            Arc::new(AmqpAfhenter::new(afhent))
        } else {
            Arc::new(super::NoAfhent)
        };
        tracing::debug!(cvr, services = ?services, "municipality opened");
        Municipality {
            services,
            afsender: Arc::new(AmqpAfsender::new(afsend)),
            afhenter,
            stop,
        }
    }

    /// Ends a municipality's links and renewals and removes its series.
    fn end(&self, cvr: &str, m: Municipality) {
        m.stop.cancel();
        for s in Service::ALL {
            self.metrics.remove_connection(s, cvr);
            self.metrics.remove_token(s, cvr);
        }
        tracing::info!(
            cvr,
            "no dueslag of this municipality runs: its connections are closed"
        );
    }
}

/// The connection settings every municipality shares.
pub(super) fn base_settings(
    broker: &BrokerConfig,
    url: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    reconnect_max: std::time::Duration,
) -> Settings {
    Settings {
        url,
        tls,
        tokens: None,
        external: broker.auth == AuthKind::External,
        prefetch: broker.prefetch,
        max_connection_age: broker.connection_age_limit(),
        heartbeat: broker.heartbeat_secs(),
        reconnect_max,
        events: Arc::new(|_, _| {}),
        cvr: None,
    }
}
