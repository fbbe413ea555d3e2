//! `bfo-alive-exporter probe`: test one dueslag by hand, step by step, on the production
//! code path — configuration, token, TLS, AMQP connection, then N on-demand Alive messages
//! sent and awaited by the same probe, sender and receiver the exporter runs — and say in
//! plain words where the chain breaks.
//!
//! [`on_demand`] is the one-message probe both this command and `GET /probe` run;
//! [`trace`] records the steps and holds the plain-words hints.

pub mod on_demand;
pub mod trace;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{AuthKind, BackendKind, Config, mask_url};
use crate::metrics::Metrics;
use crate::protocol::Service;
use crate::server::{self, ConfigSource, Options};
use crate::tls::{self, CertSummary};
use crate::transport::amqp::connect::{self as sasl, AuthChoice};
use trace::{Trace, hints};

/// What to probe.
#[derive(Debug, Clone)]
pub struct ProbeArgs {
    pub config_file: PathBuf,
    pub dueslag: String,
    pub count: u32,
    pub timeout: Option<Duration>,
    /// Where the push listener (for push dueslag) listens while the command runs.
    pub listen: String,
}

/// The machine-readable result (`--output json`).
#[derive(Debug, Serialize)]
pub struct Report {
    pub dueslag: String,
    pub sent: u32,
    pub arrived: u32,
    /// 0 = all arrived, 1 = some failed, 2 = configuration or usage error.
    pub exit_code: u8,
    #[serde(flatten)]
    pub trace: Trace,
}

fn describe(c: &CertSummary) -> String {
    format!(
        "{} (valid until {})",
        c.subject,
        crate::message::format_time(c.not_after)
    )
}

/// Runs the whole probe and returns the report.
pub async fn run(args: ProbeArgs) -> Report {
    let mut trace = Trace::default();
    let report = |trace, sent, arrived, exit_code| Report {
        dueslag: args.dueslag.clone(),
        sent,
        arrived,
        exit_code,
        trace,
    };
    let mut config = match Config::load(&args.config_file) {
        Ok(c) => c,
        Err(e) => {
            trace.fail(
                "config",
                e.to_string(),
                "fix the configuration file (bfo-alive-exporter --config.check)",
            );
            return report(trace, 0, 0, 2);
        }
    };
    trace.ok(
        "config",
        format!(
            "{} loaded: backend {:?}, {} dueslag",
            args.config_file.display(),
            config.backend(),
            config.dueslag.len()
        ),
    );
    let Some(ds) = config
        .dueslag
        .iter()
        .find(|d| d.name == args.dueslag)
        .cloned()
    else {
        let names: Vec<&str> = config.dueslag.iter().map(|d| d.name.as_str()).collect();
        trace.fail(
            "dueslag",
            format!("no dueslag named {:?}", args.dueslag),
            format!("configured: {}", names.join(", ")),
        );
        return report(trace, 0, 0, 2);
    };
    trace.ok(
        "dueslag",
        format!(
            "{} ({}{}, id {})",
            ds.name,
            ds.mode.as_str(),
            ds.queue
                .as_deref()
                .map(|q| format!(", queue {q}"))
                .unwrap_or_default(),
            ds.uuid().map_or("none".into(), |u| u.to_string())
        ),
    );
    let cvr = config.cvr_of(&ds).to_string();
    if config.backend() == BackendKind::Amqp && !preflight(&config, &cvr, &mut trace).await {
        return report(trace, 0, 0, 1);
    }
    if config.backend() == BackendKind::Sim {
        trace.ok(
            "backend",
            "the embedded Beskedfordeler simulator (no broker)",
        );
    }

    // Only this dueslag, receiving but not probing by itself.
    config.dueslag.retain(|d| d.name == args.dueslag);
    config.sim.faults.retain(|name, _| name == &args.dueslag);
    let server = match server::start(Options {
        source: ConfigSource::Fixed(Box::new(config)),
        listen: args.listen.clone(),
        shard: None,
        probe_loops: false,
        watch_interval: None,
        web: Default::default(),
    })
    .await
    {
        Ok(s) => s,
        Err(e) => {
            trace.fail(
                "start",
                format!("{e:#}"),
                "check the listen addresses and the TLS files of [push]",
            );
            return report(trace, 0, 0, 1);
        }
    };
    let running = server
        .registry
        .get(&args.dueslag)
        .expect("the one dueslag runs");
    if running.probe.spec.mode == crate::config::Mode::Push {
        trace.ok(
            "push listener",
            format!(
                "POST {}/push/{} is served for the duration of the probe",
                server.push_addr, args.dueslag
            ),
        );
    }
    let timeout = args.timeout.unwrap_or(running.probe.spec.timeout);
    let check = AbonnementCheck::send(&running.probe, running.afsender.as_ref(), timeout).await;
    let mut arrived = 0;
    let mut took = Duration::ZERO;
    for _ in 0..args.count.max(1) {
        let started = Instant::now();
        if on_demand::probe_once(
            &running.probe,
            running.afsender.as_ref(),
            timeout,
            &mut trace,
        )
        .await
        {
            arrived += 1;
            took = started.elapsed();
        }
    }
    let filters = match check {
        Some(check) if arrived > 0 => {
            // At least a second: deliveries are not ordered, and on a loaded host a message
            // sent first can still come a little after fast probes.
            let grace = took.max(Duration::from_secs(1));
            check.conclude(&running.probe, grace, &mut trace).await
        }
        _ => true,
    };
    server.stop().await;
    let sent = args.count.max(1);
    let code = if arrived == sent && filters { 0 } else { 1 };
    report(trace, sent, arrived, code)
}

/// Whether the dueslag's abonnement filters on RelateretObjekt: an Alive message addressed
/// to no dueslag (a new UUID as RelateretObjekt) is sent before the probes; if it arrives
/// in the dueslag all the same, the abonnement would let every other dueslag's Alive
/// messages in too (each counted there as `misrouted`).
struct AbonnementCheck {
    besked_id: uuid::Uuid,
    address: String,
    arrival: tokio::sync::oneshot::Receiver<Instant>,
}

impl AbonnementCheck {
    /// Sends the message; `None` when the Beskedfordeler did not accept it (the probes will
    /// show why), so there is nothing to check.
    async fn send(
        probe: &crate::probe::DueslagProbe,
        afsender: &dyn crate::transport::Afsender,
        timeout: Duration,
    ) -> Option<AbonnementCheck> {
        let (msg, arrival) = probe.on_demand_elsewhere();
        let spec = &probe.spec;
        let report = crate::send::send(
            afsender,
            &msg,
            spec.send_attempts,
            spec.send_timeout.min(timeout),
        )
        .await;
        let address = crate::message::parse_haendelsesbesked(&msg.body)
            .ok()
            .and_then(|m| m.relateret_objekt.into_iter().next())
            .map(|r| format!("ObjektId {}, ObjektType {}", r.objekt_id, r.objekt_type))
            .unwrap_or_default();
        if !matches!(report, crate::send::SendReport::Accepted { .. }) {
            probe.abandon_on_demand(msg.besked_id);
            return None;
        }
        Some(AbonnementCheck {
            besked_id: msg.besked_id,
            address,
            arrival,
        })
    }

    /// After the probes, at least one of which arrived: waits up to `grace` (as long as a
    /// probe took, at least a second; the message was sent before them) and traces the
    /// verdict. True when the
    /// message stayed away, i.e. the abonnement filters.
    async fn conclude(
        self,
        probe: &crate::probe::DueslagProbe,
        grace: Duration,
        trace: &mut Trace,
    ) -> bool {
        let came = tokio::time::timeout(grace, self.arrival)
            .await
            .is_ok_and(|r| r.is_ok());
        probe.abandon_on_demand(self.besked_id);
        let name = &probe.spec.name;
        if came {
            trace.fail(
                "abonnement",
                format!(
                    "an Alive message addressed to another dueslag (RelateretObjekt {}) arrived in dueslag {name} too",
                    self.address
                ),
                hints::MISROUTED,
            );
        } else {
            trace.ok(
                "abonnement",
                format!(
                    "an Alive message addressed to another dueslag (RelateretObjekt {}), sent first, did not arrive in dueslag {name}: its abonnement filters on RelateretObjekt",
                    self.address
                ),
            );
        }
        !came
    }
}

/// Token (of the dueslag's municipality, `cvr`), TLS and AMQP connection, each traced.
/// False when one failed.
async fn preflight(config: &Config, cvr: &str, trace: &mut Trace) -> bool {
    let broker = config.broker.as_ref().expect("amqp has [broker]");
    let url = broker.url.as_ref().expect("validated").0.clone();
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let metrics = Metrics::new(&[1.0], crate::config::Histograms::default());
    let services = config.services();
    let tokens =
        match crate::backend::tokens_for(config, cvr, &services, &metrics, &stop, None, None) {
            Ok(t) => t,
            Err(e) => {
                trace.fail("token", e, hints::TOKEN_FETCH);
                return false;
            }
        };
    if let Some(m) = &tokens {
        for &service in m.services() {
            match m.wait_for_token(service, Duration::from_secs(30)).await {
                Some(t) => trace.ok(
                    "token",
                    format!(
                        "{} token for CVR {cvr} from {}: issuer {}, expires {}",
                        service.as_str(),
                        m.source_kind(),
                        t.issuer.as_deref().unwrap_or("unknown"),
                        t.expires_at
                            .map_or("unknown".into(), crate::message::format_time)
                    ),
                ),
                None => {
                    trace.fail(
                        "token",
                        format!("no {} token within 30s", service.as_str()),
                        hints::TOKEN_FETCH,
                    );
                    return false;
                }
            }
        }
    } else {
        trace.ok(
            "token",
            "none configured (PLAIN authentication, no token header)",
        );
    }
    let tls_config = if url.starts_with("amqps:") {
        let files = broker.tls_files();
        let cfg = match tls::client_config(&files) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                trace.fail("tls", e.to_string(), hints::TLS);
                return false;
            }
        };
        match handshake(&url, cfg.clone()).await {
            Ok(peer) => {
                let ours = tls::client_certificate_summary(&files).ok().flatten();
                trace.ok(
                    "tls",
                    format!(
                        "peer {}; ours {}",
                        peer.as_ref().map_or("without certificate".into(), describe),
                        ours.as_ref().map_or("none".into(), describe)
                    ),
                );
            }
            Err(e) => {
                trace.fail("tls", e, hints::TLS);
                return false;
            }
        }
        Some(cfg)
    } else {
        None
    };
    let auth = match (&tokens, broker.auth) {
        (Some(m), AuthKind::External) => AuthChoice::External(m.slot(Service::Afsend)),
        _ => AuthChoice::Plain,
    };
    let started = Instant::now();
    match sasl::connect(&url, tls_config, auth).await {
        Ok(conn) => {
            let vhost = url::Url::parse(&url)
                .ok()
                .map(|u| u.path().trim_start_matches('/').to_string())
                .unwrap_or_default();
            trace.ok_timed(
                "amqp",
                format!("connected to {}, virtual host {vhost:?}", mask_url(&url)),
                started.elapsed(),
            );
            let _ = conn.close(200, "probe preflight done".into()).await;
            true
        }
        Err(e) => {
            trace.fail("amqp", format!("{}: {e}", mask_url(&url)), hints::AMQP);
            false
        }
    }
}

/// A TLS handshake with the broker, to show its certificate.
async fn handshake(
    url: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<Option<CertSummary>, String> {
    let u = url::Url::parse(url).map_err(|e| e.to_string())?;
    let host = u.host_str().ok_or("no host in broker.url")?.to_string();
    let port = u.port().unwrap_or(5671);
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| format!("TCP connect to {host}:{port} timed out"))?
    .map_err(|e| format!("TCP connect to {host}:{port}: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| format!("TLS handshake with {host}:{port} timed out"))?
    .map_err(|e| format!("TLS handshake with {host}:{port}: {e}"))?;
    Ok(tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| tls::describe_certificate(c)))
}
