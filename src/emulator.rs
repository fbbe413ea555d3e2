//! The BFO emulator: the simulator core playing the Beskedfordeler on a real RabbitMQ.
//!
//! `bfo-alive-exporter emulate --config FILE` declares the afsend exchange and queue, the
//! dueslag queues (each with a dead-letter error queue `<queue>.error`), consumes what is
//! published to the exchange, validates it as the Beskedfordeler would, answers a
//! StandardRetur on `reply_to` (written in the dueslag's `reply_shape`; a refusal by its
//! own validation is always a bare StandardRetur), and routes each accepted Alive message
//! to its dueslag: published to the queue (pull) or POSTed as ModtagBeskedInput (push),
//! again until the receiver answers 20. Faults come from the same [`Faults`] as the
//! simulator's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backoff::{Backoff, RECONNECT_START};
use crate::config::{ConfigError, Faults, Mode};
use crate::message::{StandardRetur, build_standard_retur, parse_haendelsesbesked};
use crate::protocol::{AFSEND_EXCHANGE, CVR_URN_PREFIX, TOKEN_HEADER, status};
use crate::sim::push::Redelivery;
use crate::sim::{AfsendAnswer, Simulator, Sink, Target, push};
use crate::tls::ClientTlsFiles;
use crate::token::Token;
use crate::transport::amqp::connect::{self as sasl, AuthChoice};

/// The queue bound to the afsend exchange that the emulator consumes.
pub const AFSEND_QUEUE: &str = "AFSEND_BESKED_QUEUE";

/// The emulator's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulatorConfig {
    pub emulator: EmulatorSection,
    #[serde(default)]
    pub dueslag: Vec<EmulatedDueslag>,
    #[serde(default)]
    pub faults: BTreeMap<String, Faults>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulatorSection {
    /// The broker to play on (PLAIN credentials in the URL).
    pub url: crate::config::BrokerUrl,
    /// The sender it accepts (BeskedAnsvarligAktoer).
    pub anvendersystem: Uuid,
    /// The authority whose messages it accepts (TilladtModtager).
    pub cvr: String,
    /// Refuse messages without a `token` header, or with an expired one (StatusKode 41).
    #[serde(default = "yes")]
    pub require_token: bool,
    /// Client certificate and CA for POSTs to push endpoints over mutual TLS.
    pub push_tls: Option<PushClientTls>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushClientTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmulatedDueslag {
    pub name: String,
    pub mode: Mode,
    /// Pull: the queue to declare and deliver to.
    pub queue: Option<String>,
    /// Push: the endpoint to POST to.
    pub push_url: Option<String>,
}

impl EmulatorConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let err = |message: String| ConfigError {
            file: file.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let c: EmulatorConfig = toml::from_str(&text).map_err(|e| err(e.message().to_string()))?;
        for (i, d) in c.dueslag.iter().enumerate() {
            match d.mode {
                Mode::Pull if d.queue.is_none() => {
                    return Err(err(format!("dueslag[{i}].queue: required for pull")));
                }
                Mode::Push if d.push_url.is_none() => {
                    return Err(err(format!("dueslag[{i}].push_url: required for push")));
                }
                _ => {}
            }
        }
        for name in c.faults.keys() {
            if !c.dueslag.iter().any(|d| &d.name == name) {
                return Err(err(format!("faults.{name}: no dueslag is named {name:?}")));
            }
        }
        Ok(c)
    }

    fn targets(&self) -> Vec<(Target, Faults)> {
        self.dueslag
            .iter()
            .map(|d| {
                (
                    Target {
                        name: d.name.clone(),
                        mode: d.mode,
                        queue: d.queue.clone(),
                        push_url: d.push_url.clone(),
                    },
                    self.faults.get(&d.name).cloned().unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Delivers into RabbitMQ queues and push endpoints.
struct AmqpSink {
    channel: Channel,
    http: reqwest::Client,
    stop: CancellationToken,
}

impl Sink for AmqpSink {
    fn deliver(&self, target: &Target, body: Bytes) {
        match target.mode {
            Mode::Pull => {
                let (channel, queue) = (
                    self.channel.clone(),
                    target.queue.clone().unwrap_or_default(),
                );
                tokio::spawn(async move {
                    let props = BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/xml".into());
                    let r = channel
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions::default(),
                            &body,
                            props,
                        )
                        .await;
                    if let Err(e) = r {
                        tracing::warn!(queue, error = %e, "delivery to the dueslag queue failed");
                    }
                });
            }
            Mode::Push => {
                if let Some(url) = target.push_url.clone() {
                    tokio::spawn(push::deliver(
                        self.http.clone(),
                        url,
                        body,
                        Redelivery::default(),
                        self.stop.clone(),
                    ));
                }
            }
        }
    }
}

/// Why a published message is refused, as the Beskedfordeler would answer.
fn validate(
    cfg: &EmulatorSection,
    props: &BasicProperties,
    body: &[u8],
) -> Result<(), StandardRetur> {
    let header = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(TOKEN_HEADER).cloned());
    if cfg.require_token {
        let token = match header {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).to_string(),
            Some(AMQPValue::ShortString(s)) => s.to_string(),
            _ => {
                return Err(StandardRetur::error(
                    status::TOKEN_EXPIRED,
                    "no token header",
                ));
            }
        };
        match Token::from_xml(token, "token header") {
            Err(e) => {
                return Err(StandardRetur::error(
                    status::TOKEN_EXPIRED,
                    format!("token unreadable: {e}"),
                ));
            }
            Ok(t) if t.expires_at.is_some_and(|e| e <= SystemTime::now()) => {
                return Err(StandardRetur::error(status::TOKEN_EXPIRED, "token expired"));
            }
            Ok(_) => {}
        }
    }
    if props.correlation_id().is_none() {
        return Err(StandardRetur::error(
            status::INVALID_INPUT,
            "no correlation_id",
        ));
    }
    if props.message_id().is_none() {
        return Err(StandardRetur::error(
            status::INVALID_INPUT,
            "no message_id (transaction id)",
        ));
    }
    let m = parse_haendelsesbesked(body).map_err(|e| {
        StandardRetur::error(
            status::INVALID_INPUT,
            format!("invalid Haendelsesbesked: {e}"),
        )
    })?;
    if !m.is_alive() {
        return Err(StandardRetur::error(
            status::INVALID_INPUT,
            "not the Alive beskedtype",
        ));
    }
    if m.ansvarlig_aktoer != Some(cfg.anvendersystem) {
        return Err(StandardRetur::error(
            status::INVALID_INPUT,
            "BeskedAnsvarligAktoer is not the configured anvendersystem",
        ));
    }
    if m.tilladt_modtager.as_deref() != Some(&format!("{CVR_URN_PREFIX}{}", cfg.cvr)) {
        return Err(StandardRetur::error(
            status::INVALID_INPUT,
            "TilladtModtager is not the configured CVR",
        ));
    }
    Ok(())
}

/// Declares the Beskedfordeler's topology on the broker.
async fn declare(channel: &Channel, cfg: &EmulatorConfig) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .exchange_declare(
            AFSEND_EXCHANGE.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(AFSEND_QUEUE.into(), durable, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            AFSEND_QUEUE.into(),
            AFSEND_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for q in cfg.dueslag.iter().filter_map(|d| d.queue.as_deref()) {
        declare_dueslag_queue(channel, q).await?;
    }
    Ok(())
}

/// Declares a pull dueslag's durable queue and its error queue `<queue>.error`, where a
/// message rejected without requeue is dead-lettered, as the Beskedfordeler sets them up.
pub async fn declare_dueslag_queue(channel: &Channel, queue: &str) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let error_queue = format!("{queue}.error");
    channel
        .queue_declare(error_queue.as_str().into(), durable, FieldTable::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(error_queue.into()),
    );
    channel.queue_declare(queue.into(), durable, args).await?;
    Ok(())
}

/// Runs until `stop`, reconnecting after broker failures. `ready` fires after each
/// successful declaration.
pub async fn run(
    cfg: EmulatorConfig,
    stop: CancellationToken,
    ready: Option<tokio::sync::mpsc::Sender<()>>,
) -> anyhow::Result<()> {
    crate::tls::install_crypto_provider();
    let http = match &cfg.emulator.push_tls {
        Some(t) => crate::tls::reqwest_client(
            &ClientTlsFiles {
                ca_file: t.ca_file.clone(),
                cert_file: t.cert_file.clone(),
                key_file: t.key_file.clone(),
                ..ClientTlsFiles::default()
            },
            Duration::from_secs(10),
        )?,
        None => reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
    };
    // Capped at 10 s, not the exporter's 30 s: the emulator is a test fixture, and should be
    // serving again soon after its broker comes back.
    let mut backoff = Backoff::new(RECONNECT_START, Duration::from_secs(10));
    while !stop.is_cancelled() {
        match session(&cfg, &http, &stop, ready.as_ref()).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.current(), "emulator session ended");
                if !backoff.wait(&stop).await {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

async fn session(
    cfg: &EmulatorConfig,
    http: &reqwest::Client,
    stop: &CancellationToken,
    ready: Option<&tokio::sync::mpsc::Sender<()>>,
) -> anyhow::Result<()> {
    let conn = sasl::connect(&cfg.emulator.url.0, None, AuthChoice::Plain).await?;
    let channel = conn.create_channel().await?;
    declare(&channel, cfg).await?;
    let session_stop = stop.child_token();
    let sink = Arc::new(AmqpSink {
        channel: conn.create_channel().await?,
        http: http.clone(),
        stop: session_stop.clone(),
    });
    let sim = Simulator::new(sink, session_stop.clone());
    sim.set_topology(cfg.targets());
    let mut consumer = channel
        .basic_consume(
            AFSEND_QUEUE.into(),
            "bfo-emulator".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(url = %crate::config::mask_url(&cfg.emulator.url.0), dueslag = cfg.dueslag.len(), "emulator ready");
    if let Some(r) = ready {
        let _ = r.try_send(());
    }
    let _guard = session_stop.clone().drop_guard();
    loop {
        let d = tokio::select! {
            _ = stop.cancelled() => {
                let _ = conn.close(200, "emulator stopping".into()).await;
                return Ok(());
            }
            d = consumer.next() => d,
        };
        let d = match d {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the afsend consumer ended"),
        };
        let answer = match validate(&cfg.emulator, &d.properties, &d.data) {
            Err(r) => {
                tracing::info!(
                    status = r.status_kode,
                    reason = r.fejlbesked_tekst.as_deref().unwrap_or(""),
                    "refused a message"
                );
                Some(Bytes::from(build_standard_retur(&r)))
            }
            Ok(()) => match sim.afsend(&d.data) {
                AfsendAnswer::Reply(r) => Some(r),
                // The emulator cannot make the broker return or drop a connection: an outage
                // and an unroutable fault both go unanswered.
                AfsendAnswer::Outage | AfsendAnswer::NoReply | AfsendAnswer::Unroutable => None,
            },
        };
        if let (Some(r), Some(reply_to)) = (answer, d.properties.reply_to().clone()) {
            let mut props = BasicProperties::default().with_content_type("application/xml".into());
            if let Some(c) = d.properties.correlation_id().clone() {
                props = props.with_correlation_id(c);
            }
            if let Err(e) = channel
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    &r,
                    props,
                )
                .await
            {
                tracing::warn!(error = %e, "reply failed");
            }
        }
        d.acker.ack(BasicAckOptions::default()).await?;
    }
}
