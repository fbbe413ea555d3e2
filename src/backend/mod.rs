//! Builds the transports a configuration asks for: the in-process simulator, or the AMQP
//! connections to a Beskedfordeler (or any RabbitMQ), with their token source and TLS, per
//! municipality ([`municipalities`]).

mod municipalities;

pub use municipalities::Municipalities;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use std::time::{Duration, SystemTime};

use crate::config::{BackendKind, BrokerConfig, Config, DueslagSpec, TokenSourceKind};
use crate::metrics::{CertificateUse, Metrics};
use crate::protocol::Service;
use crate::sim::{self, LocalSink, Simulator};
use crate::tls;
use crate::token::{
    StsClient, StsConfig, TokenCallbacks, TokenManager, TokenManagerConfig, TokenSource,
};
use crate::transport::amqp::{DownReason, LinkEvent, LinkEvents};
use crate::transport::sim::{SimAfhenter, SimAfsender};
use crate::transport::{Afhenter, Afsender, Backend, ConsumeError, PullConsumer};

/// A backend and what reload needs to reconfigure it.
pub struct Built {
    pub kind: BackendKind,
    pub backend: Backend,
    /// Present for the `sim` backend: the simulator, and where it POSTs push deliveries
    /// unless `[sim] push_base` says otherwise.
    sim: Option<(Arc<Simulator>, String)>,
    /// Present for the `amqp` backend: the tokens and connections per municipality.
    municipalities: Option<Municipalities>,
}

impl Built {
    /// Tells the backend which dueslag run. The AMQP backend makes the tokens and
    /// connections of their municipalities and ends those no dueslag needs; it returns the
    /// dueslag whose municipality was remade. A real Beskedfordeler is configured in its
    /// administration module, so only the simulator listens; it returns the dueslag whose
    /// simulated set-up (target, `[sim.abonnement]` or `[sim.faults]`) changed. The loops
    /// of the returned dueslag must restart.
    pub fn set_dueslag(
        &self,
        config: &Config,
        specs: &[DueslagSpec],
        metrics: &Metrics,
    ) -> Vec<String> {
        if let Some(m) = &self.municipalities {
            return m.set(specs);
        }
        match &self.sim {
            Some((sim, push_base)) => {
                // The simulator has no connections; its series say up for each municipality.
                metrics.clear_connections();
                metrics.clear_tokens();
                for s in specs {
                    for role in Service::ALL {
                        metrics.set_connection_up(role, &s.cvr, true);
                        metrics.token_started(role, &s.cvr);
                    }
                }
                let base = config.sim.push_base.as_deref().unwrap_or(push_base);
                sim.set_topology(sim::targets(
                    specs,
                    &config.sim,
                    base,
                    &config.objekt_type(),
                ))
            }
            None => Vec::new(),
        }
    }

    /// What the dueslag of municipality `cvr` send with.
    pub fn afsender(&self, cvr: &str) -> Arc<dyn Afsender> {
        self.municipalities
            .as_ref()
            .and_then(|m| m.afsender(cvr))
            .unwrap_or_else(|| self.backend.afsender.clone())
    }

    /// What the pull dueslag of municipality `cvr` consume with.
    pub fn afhenter(&self, cvr: &str) -> Arc<dyn Afhenter> {
        self.municipalities
            .as_ref()
            .and_then(|m| m.afhenter(cvr))
            .unwrap_or_else(|| self.backend.afhenter.clone())
    }
}

/// Builds backends. It knows what the server knows and a backend may need beyond the
/// configuration: where the push endpoint is reached.
pub struct Factory {
    /// `http(s)://host:port` of the push listener; the simulator POSTs there.
    pub push_base: String,
}

impl Factory {
    /// Builds the backend of `config`, and sets `bfo_alive_backend_info` and the expiry of
    /// the client certificate it holds.
    pub async fn build(&self, config: &Config, metrics: &Metrics) -> Result<Built, String> {
        let built = build(config, metrics, &self.push_base)?;
        metrics.set_backend(backend_name(built.kind));
        for (use_, not_after) in client_certificate_expiry(config) {
            metrics.set_certificate_expiry(use_, not_after);
        }
        Ok(built)
    }
}

/// When the client certificate of `[broker.tls]` expires, for each use that holds it: the
/// broker connection (backend `amqp` over `amqps:`) and the STS (token source `sts`, which
/// authenticates with the same certificate). `None` for a use that holds no certificate.
pub fn client_certificate_expiry(config: &Config) -> [(CertificateUse, Option<SystemTime>); 2] {
    let broker = config
        .broker
        .as_ref()
        .filter(|b| b.backend == BackendKind::Amqp);
    let not_after = broker
        .and_then(|b| {
            tls::client_certificate_summary(&b.tls_files())
                .ok()
                .flatten()
        })
        .map(|s| s.not_after);
    let amqps = broker
        .and_then(|b| b.url.as_ref())
        .is_some_and(|u| u.0.starts_with("amqps:"));
    let sts = config
        .token
        .as_ref()
        .is_some_and(|t| t.source == TokenSourceKind::Sts);
    [
        (CertificateUse::Broker, not_after.filter(|_| amqps)),
        (CertificateUse::Sts, not_after.filter(|_| sts)),
    ]
}

/// The label value of `bfo_alive_backend_info`, and how logs name the backend.
pub fn backend_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Amqp => "amqp",
        BackendKind::Sim => "sim",
    }
}

fn build(config: &Config, metrics: &Metrics, push_base: &str) -> Result<Built, String> {
    let stop = CancellationToken::new();
    match config.backend() {
        BackendKind::Sim => {
            let sink = LocalSink::new(stop.clone());
            let simulator = Simulator::new(sink.clone(), stop.clone());
            let prefetch = config.broker.as_ref().map_or(20, |b| b.prefetch);
            metrics.clear_tokens();
            Ok(Built {
                kind: BackendKind::Sim,
                backend: Backend {
                    afsender: Arc::new(SimAfsender {
                        sim: simulator.clone(),
                    }),
                    afhenter: Arc::new(SimAfhenter {
                        sim: simulator.clone(),
                        sink: sink.clone(),
                        prefetch: usize::from(prefetch),
                    }),
                    stop,
                },
                sim: Some((simulator, push_base.to_string())),
                municipalities: None,
            })
        }
        BackendKind::Amqp => build_amqp(config, metrics, stop),
    }
}

/// The token path of `cvr`: `[token] file` with [`crate::config::CVR_PLACEHOLDER`] replaced.
pub fn token_file(file: &std::path::Path, cvr: &str) -> std::path::PathBuf {
    let text = file.to_string_lossy();
    if text.contains(crate::config::CVR_PLACEHOLDER) {
        text.replace(crate::config::CVR_PLACEHOLDER, cvr).into()
    } else {
        file.to_path_buf()
    }
}

/// The token manager of municipality `cvr` for `services`, or `None` without a token
/// source; its STS requests wait for one of `permits`. With `sts` (the backend's client)
/// it is shared for this CVR rather than made from the configuration again.
pub fn tokens_for(
    config: &Config,
    cvr: &str,
    services: &[Service],
    metrics: &Metrics,
    stop: &CancellationToken,
    permits: Option<Arc<tokio::sync::Semaphore>>,
    sts: Option<&StsClient>,
) -> Result<Option<Arc<TokenManager>>, String> {
    let Some(t) = &config.token else {
        return Ok(None);
    };
    let source = match t.source {
        TokenSourceKind::None => return Ok(None),
        TokenSourceKind::File => {
            TokenSource::File(token_file(t.file.as_deref().expect("validated"), cvr))
        }
        TokenSourceKind::Sts => TokenSource::Sts(Arc::new(match sts {
            Some(client) => client.for_cvr(cvr),
            None => sts_client(config, cvr)?,
        })),
    };
    Ok(Some(start_tokens(
        config, cvr, services, source, metrics, stop, permits,
    )))
}

/// The STS client of municipality `cvr` (validation made sure `[token]` is `sts`).
fn sts_client(config: &Config, cvr: &str) -> Result<StsClient, String> {
    let t = config.token.as_ref().expect("a [token] table");
    let mut files = config
        .broker
        .as_ref()
        .map(BrokerConfig::tls_files)
        .unwrap_or_default();
    files.ca_file = t.sts_ca_file.clone();
    StsClient::new(StsConfig {
        url: t.sts_url.clone().expect("validated"),
        cvr: cvr.to_string(),
        afsend_entity_id: t.afsend_entity_id.clone().expect("validated"),
        afhent_entity_id: t.afhent_entity_id.clone().expect("validated"),
        tls: files,
        timeout: Duration::from_secs(30),
    })
    .map_err(|e| format!("token: {e}"))
}

/// Starts the token manager of municipality `cvr` on `source`, reporting to `metrics`.
fn start_tokens(
    config: &Config,
    cvr: &str,
    services: &[Service],
    source: TokenSource,
    metrics: &Metrics,
    stop: &CancellationToken,
    permits: Option<Arc<tokio::sync::Semaphore>>,
) -> Arc<TokenManager> {
    let (m1, m2) = (metrics.clone(), metrics.clone());
    let (c1, c2): (Arc<str>, Arc<str>) = (Arc::from(cvr), Arc::from(cvr));
    let callbacks = TokenCallbacks {
        on_expiry: Arc::new(move |s, at| {
            // The manager reports every service at start; only used ones get a series.
            if at.is_some() {
                m1.set_token_expiry(s, &c1, at)
            }
        }),
        on_failure: Arc::new(move |s, e| {
            tracing::warn!(service = s.as_str(), cvr = %c2, error = %e, "token renewal failed");
            m2.token_renewal_failed(s, &c2);
        }),
    };
    let mut cfg = TokenManagerConfig {
        sts_permits: permits,
        ..TokenManagerConfig::default()
    };
    if let Some(t) = &config.token {
        cfg.renew_fraction = t.renew_at;
        cfg.renew_jitter = t.renew_jitter;
    }
    Arc::new(TokenManager::start(
        source,
        services,
        cfg,
        callbacks,
        stop.clone(),
    ))
}

fn build_amqp(
    config: &Config,
    metrics: &Metrics,
    stop: CancellationToken,
) -> Result<Built, String> {
    let broker = config.broker.as_ref().expect("amqp has a [broker]");
    let url = broker.url.as_ref().expect("validated").0.clone();
    let tls = if url.starts_with("amqps:") {
        let files = broker.tls_files();
        Some(Arc::new(
            tls::client_config(&files).map_err(|e| format!("broker.tls: {e}"))?,
        ))
    } else {
        None
    };
    if broker.exceeds_broker_limit() {
        tracing::warn!(
            max_connection_age = %humantime::format_duration(broker.max_connection_age),
            "broker.max_connection_age is not under the hour the Beskedfordeler grants a connection: \
             it will end connections first, and probes then reconnect and retry"
        );
    }
    // The STS client every municipality shares (the certificate is the supplier's): made,
    // or refused, here at build (and so at reload), not once per municipality later.
    let sts = if config
        .token
        .as_ref()
        .is_some_and(|t| t.source == TokenSourceKind::Sts)
    {
        Some(sts_client(config, &config.identity.cvr)?)
    } else {
        None
    };
    let base = municipalities::base_settings(broker, url, tls, config.shortest_interval());
    let municipalities = Municipalities::new(base, sts, config, metrics, stop.clone());
    Ok(Built {
        kind: BackendKind::Amqp,
        backend: Backend {
            // Every dueslag sends and consumes with its municipality's ([`Built::afsender`]).
            afsender: Arc::new(NoMunicipality),
            afhenter: Arc::new(NoAfhent),
            stop,
        },
        sim: None,
        municipalities: Some(municipalities),
    })
}

/// The afsender where no municipality is made: [`Built::set_dueslag`] makes every running
/// dueslag's before its loop starts, so nothing sends with it.
struct NoMunicipality;

#[async_trait::async_trait]
impl Afsender for NoMunicipality {
    async fn publish(
        &self,
        _msg: &crate::transport::Outgoing,
        _correlation_id: uuid::Uuid,
        _timeout: Duration,
    ) -> Result<crate::message::StandardRetur, crate::transport::AttemptError> {
        Err(crate::transport::AttemptError::Connection(
            "no connection is made for this dueslag's municipality".into(),
        ))
    }

    async fn renew_token(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The afhenter of a configuration without pull dueslag: no connection is opened. Reload
/// rebuilds the backend when a pull dueslag is added ([`Config::backend_part`]), so nothing
/// asks it to consume.
struct NoAfhent;

#[async_trait::async_trait]
impl Afhenter for NoAfhent {
    async fn consume(&self, queue: &str) -> Result<Box<dyn PullConsumer>, ConsumeError> {
        Err(ConsumeError::connection(format!(
            "cannot consume {queue}: no pull dueslag is configured, so the afhent connection is not opened"
        )))
    }
}

/// Link events become `bfo_alive_connection_up`, `bfo_alive_connection_rotations_total` and
/// one log line each. Events of a backend that was replaced (its `stop` cancelled) are
/// dropped: its links' last "down" must not overwrite what the new backend's links report.
fn link_events(metrics: &Metrics, url: &str, cvr: &str, stop: &CancellationToken) -> LinkEvents {
    let metrics = metrics.clone();
    let stop = stop.clone();
    let cvr: Arc<str> = Arc::from(cvr);
    // Masked once here: the URL may carry the PLAIN password.
    let url = crate::config::mask_url(url);
    Arc::new(move |service, event| {
        if stop.is_cancelled() {
            return;
        }
        let connection = service.as_str();
        let cvr = &*cvr;
        match event {
            LinkEvent::Up => tracing::info!(connection, cvr, url = %url, "connected"),
            LinkEvent::Down(DownReason::Lost) => tracing::warn!(connection, cvr, "connection lost"),
            LinkEvent::Down(DownReason::ConnectFailed { error, retry_in }) => {
                tracing::warn!(connection, cvr, error = %error, retry_in = ?retry_in, "cannot connect")
            }
            // Asked for (token renewal, shutdown): nothing went wrong.
            LinkEvent::Down(DownReason::Reset) => {}
            LinkEvent::Rotated { age } => {
                tracing::info!(connection, cvr, age = ?age, "connection replaced before max_connection_age");
                metrics.connection_rotated(service, cvr);
            }
            LinkEvent::RotationFailed { error, retry_in } => tracing::warn!(
                connection,
                cvr,
                error = %error,
                retry_in = ?retry_in,
                "cannot open the replacement connection; the current one keeps serving"
            ),
        }
        let up = !matches!(event, LinkEvent::Down(_));
        metrics.set_connection_up(service, cvr, up);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{PULL, PUSH, amqp};
    use crate::token::testutil::{S, scripted, token};

    fn config(dueslag: &str) -> Config {
        let text = amqp("environment = \"eksterntest\"", "source = \"sts\"", dueslag);
        Config::parse(&text, "t.toml").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_push_only_configuration_asks_for_the_afsend_token_only() {
        let metrics = Metrics::new(&[1.0], crate::config::Histograms::default());
        for (dueslag, afhent_calls) in [(PUSH.to_string(), 0), (format!("{PUSH}{PULL}"), 1)] {
            let (source, tokens) = scripted(|_, n| token(n, Some(3600 * S)));
            let stop = CancellationToken::new();
            let c = config(&dueslag);
            let mgr = start_tokens(
                &c,
                &c.identity.cvr,
                &c.services(),
                tokens,
                &metrics,
                &stop,
                None,
            );
            assert!(mgr.wait_for_token(Service::Afsend, S).await.is_some());
            // Virtual time (paused): a minute in which no other token may be asked for.
            tokio::time::sleep(60 * S).await;
            assert_eq!(source.count(Service::Afsend), 1, "{dueslag}");
            assert_eq!(source.count(Service::Afhent), afhent_calls, "{dueslag}");
            stop.cancel();
            mgr.stopped().await;
        }
    }

    use crate::tls::testpki;

    fn tls_config(pki: &testpki::Pki, url: &str, token: &str) -> Config {
        let text = format!(
            r#"
[identity]
anvendersystem = "cf12c051-39ce-4066-ba11-704b46fa23c4"
cvr = "29189846"

[broker]
backend = "amqp"
url = "{url}"
[broker.tls]
cert_file = "{cert}"
key_file = "{key}"

{token}
"#,
            cert = pki.client_cert.display(),
            key = pki.client_key.display(),
        );
        Config::parse(&text, "test.toml").unwrap()
    }

    const STS: &str = r#"[token]
source = "sts"
sts_url = "https://sts.invalid/runtime"
afsend_entity_id = "http://bfo.invalid/service/afsend/1"
afhent_entity_id = "http://bfo.invalid/service/afhent/1""#;

    #[test]
    fn the_client_certificate_is_reported_for_each_use_that_holds_it() {
        let pki = testpki::make();
        let expiry = crate::tls::client_certificate_summary(&pki.client_files())
            .unwrap()
            .unwrap()
            .not_after;
        // One certificate, two uses: the AMQPS connection and the STS.
        let both = client_certificate_expiry(&tls_config(&pki, "amqps://bfo.invalid:5671/BF", STS));
        assert_eq!(
            both,
            [
                (CertificateUse::Broker, Some(expiry)),
                (CertificateUse::Sts, Some(expiry))
            ]
        );
        // Plain AMQP with a token file: the certificate is held by nothing.
        let file = "[token]\nsource = \"file\"\nfile = \"/run/token\"";
        let none = client_certificate_expiry(&tls_config(&pki, "amqp://bfo.invalid:5672/BF", file));
        assert_eq!(
            none,
            [(CertificateUse::Broker, None), (CertificateUse::Sts, None)]
        );
        // The simulator holds no certificate, whatever [broker.tls] says.
        let mut sim = tls_config(&pki, "amqps://bfo.invalid:5671/BF", STS);
        sim.broker.as_mut().unwrap().backend = BackendKind::Sim;
        assert_eq!(
            client_certificate_expiry(&sim),
            [(CertificateUse::Broker, None), (CertificateUse::Sts, None)]
        );
    }
}
