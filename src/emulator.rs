//! The BFO emulator: the simulator core playing the Beskedfordeler on a real RabbitMQ.
//!
//! `bfo-alive-exporter emulate --config FILE` declares the afsend exchange and queue, the
//! dueslag queues (each with a dead-letter error queue `<queue>.error`), consumes what is
//! published to the exchange, validates it as the Beskedfordeler would, answers a
//! StandardRetur on `reply_to` (written in the dueslag's `reply_shape`; a refusal by its
//! own validation is always a bare StandardRetur), and routes each accepted message by
//! abonnement, as the Beskedfordeler does: to every dueslag whose abonnement matches its
//! Filtreringsdata (beskedtype, TilladtModtager, RelateretObjekt), published to the queue
//! (pull) or POSTed as ModtagBeskedInput (push), again until the receiver answers 20; a
//! message no abonnement matches is accepted and delivered nowhere (logged). It accepts the
//! Alive beskedtype and those of `[emulator] beskedtyper`, so other systems' messages can be
//! routed too. Faults come from the same [`Faults`] as the simulator's.
//!
//! **Dataafgrænsning.** KOMBIT's STS issues a token for one CVR, and the Beskedfordeler
//! lets a connection send only what that CVR may. The emulator checks the same on what it
//! sees of the token: the `token` header of every published message (the token the
//! connection was opened with, as the exporter sends the same one in both places). When
//! the token names a CVR (the OIOSAML attribute `crate::protocol::sts::CVR_ATTRIBUTE`) and
//! the message's TilladtModtager is not that CVR, the message is refused with StatusKode 40
//! and a reason naming both CVRs: a test catches a message sent under the wrong
//! municipality. RabbitMQ does not hand the SASL response to the emulator, so what a
//! connection *consumes* is not checked against its token here; the exporter's pull
//! dueslag count an Alive message of another municipality as misrouted.
//!
//! **Connection age.** The Beskedfordeler ends each client connection when the hour its
//! connection authoriser granted is over. With `[emulator] max_connection_age` the emulator
//! does the same to every client connection in its virtual host (its own, named
//! [`CONNECTION_NAME`], excepted), so that a client's reconnects and retries can be tested
//! offline. It does so with `rabbitmqctl` (`list_connections` for each connection's
//! `connected_at`, `close_connection` when it is old enough), run as `[emulator.rabbitmqctl]`
//! says, because nothing else does it on a plain RabbitMQ: a client cannot close another
//! client's connection over AMQP; RabbitMQ's per-vhost and per-user limits bound how many
//! connections and channels there are, never how long a connection lives; and the HTTP
//! management API needs a plugin that the test broker (and many nodes) do not run, while
//! every node comes with rabbitmqctl. Each call starts an Erlang VM (about half a second of
//! CPU), so the emulator lists only when the next connection can be due, not on a fixed
//! short tick.

use std::collections::{BTreeMap, HashSet};
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
use lapin::{BasicProperties, Channel, ConnectionProperties, ExchangeKind};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backoff::{Backoff, RECONNECT_START};
use crate::config::{AbonnementKind, ConfigError, Faults, Mode};
use crate::message::{
    RelateretObjekt, StandardRetur, UnikId, build_standard_retur, parse_haendelsesbesked,
};
use crate::protocol::{
    AFSEND_EXCHANGE, ALIVE_BESKEDTYPE, CVR_URN_PREFIX, DUESLAG_OBJEKT_TYPE, TOKEN_HEADER, status,
};
use crate::sim::push::Redelivery;
use crate::sim::{Abonnement, AfsendAnswer, Simulator, Sink, Target, push};
use crate::tls::ClientTlsFiles;
use crate::token::Token;
use crate::transport::amqp::connect::{self as sasl, AuthChoice};

/// The queue bound to the afsend exchange that the emulator consumes.
pub const AFSEND_QUEUE: &str = "AFSEND_BESKED_QUEUE";

/// The `connection_name` client property of the emulator's own connection: the one
/// connection of its virtual host that `max_connection_age` never ends.
pub const CONNECTION_NAME: &str = "bfo-emulator";

/// The shortest wait between two looks at the connections (each runs rabbitmqctl).
const MIN_CONNECTION_CHECK: Duration = Duration::from_millis(200);
/// The wait after rabbitmqctl failed, before it is tried again.
const RABBITMQCTL_RETRY: Duration = Duration::from_secs(5);
/// The longest one rabbitmqctl call may take.
const RABBITMQCTL_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The authority whose Alive messages it accepts (TilladtModtager).
    pub cvr: String,
    /// More authorities it accepts Alive messages of (municipalities of one supplier).
    /// Whatever the list, a message whose token names a CVR must be addressed to that CVR
    /// (module doc, "Dataafgrænsning").
    #[serde(default)]
    pub cvrs: Vec<String>,
    /// Beskedtyper it accepts besides Alive (other systems' messages, for their own
    /// receivers); any other is refused with 40.
    #[serde(default)]
    pub beskedtyper: Vec<Uuid>,
    /// The ObjektType of the RelateretObjekt that names a dueslag (ObjektId = its UUID);
    /// default the exporter's, `urn:bfo-alive-exporter:dueslag`.
    pub objekt_type: Option<String>,
    /// Refuse messages without a `token` header, or with an expired one (StatusKode 41).
    #[serde(default = "yes")]
    pub require_token: bool,
    /// Client certificate and CA for POSTs to push endpoints over mutual TLS.
    pub push_tls: Option<PushClientTls>,
    /// End every other client connection in the virtual host once it is this old, as the
    /// Beskedfordeler does after an hour (module doc); absent: never.
    #[serde(with = "humantime_serde", default)]
    pub max_connection_age: Option<Duration>,
    /// How to run rabbitmqctl against the broker's node, for `max_connection_age`.
    #[serde(default)]
    pub rabbitmqctl: Rabbitmqctl,
}

/// How to run `rabbitmqctl` against one node.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rabbitmqctl {
    /// The program; default `rabbitmqctl` on `PATH`.
    pub path: Option<PathBuf>,
    /// The node (`-n`); default rabbitmqctl's own choice.
    pub node: Option<String>,
    /// Environment of the calls, e.g. `HOME` (where the Erlang cookie is) and
    /// `ERL_EPMD_PORT`. Values never print: one could be a cookie.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl std::fmt::Debug for Rabbitmqctl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rabbitmqctl")
            .field("path", &self.path)
            .field("node", &self.node)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One client connection as `rabbitmqctl list_connections` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConnection {
    /// What `close_connection` takes.
    pub pid: String,
    pub vhost: String,
    /// The client's `connection_name` property, if it gave one.
    pub name: Option<String>,
    pub connected_at: SystemTime,
}

impl Rabbitmqctl {
    /// The command with program, node and environment, quiet; the caller adds arguments.
    pub fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(
            self.path
                .clone()
                .unwrap_or_else(|| PathBuf::from("rabbitmqctl")),
        );
        cmd.envs(&self.env).arg("-q");
        if let Some(node) = &self.node {
            cmd.args(["-n", node]);
        }
        cmd
    }

    /// Runs one command; its standard output, or what went wrong.
    pub async fn run(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = tokio::process::Command::from(self.command());
        cmd.args(args).kill_on_drop(true);
        let out = tokio::time::timeout(RABBITMQCTL_TIMEOUT, cmd.output())
            .await
            .map_err(|_| format!("rabbitmqctl {args:?}: no answer within {RABBITMQCTL_TIMEOUT:?}"))?
            .map_err(|e| format!("rabbitmqctl {args:?}: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let err: String = err.trim().chars().take(400).collect();
            return Err(format!("rabbitmqctl {args:?}: {}: {err}", out.status));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every client connection of the node.
    pub async fn connections(&self) -> Result<Vec<ClientConnection>, String> {
        let out = self
            .run(&[
                "list_connections",
                "--no-table-headers",
                "pid",
                "vhost",
                "connected_at",
                "client_properties",
            ])
            .await?;
        parse_connections(&out)
    }

    /// Closes one connection; the client is told `reason`.
    pub async fn close_connection(&self, pid: &str, reason: &str) -> Result<(), String> {
        self.run(&["close_connection", pid, reason]).await.map(drop)
    }
}

/// Reads `list_connections --no-table-headers pid vhost connected_at client_properties`:
/// one tab-separated line per connection. The table, not `--formatter json`, because only
/// the table writes the pid as `close_connection` takes it (`<node.1.2.0>`, where JSON
/// has `#PID<…>`).
fn parse_connections(table: &str) -> Result<Vec<ClientConnection>, String> {
    table
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let bad = || format!("rabbitmqctl list_connections: unreadable line {line:?}");
            let mut cols = line.splitn(4, '\t');
            let (Some(pid), Some(vhost), Some(at), props) =
                (cols.next(), cols.next(), cols.next(), cols.next())
            else {
                return Err(bad());
            };
            let at: u64 = at.trim().parse().map_err(|_| bad())?;
            Ok(ClientConnection {
                pid: pid.to_string(),
                vhost: vhost.to_string(),
                name: props.and_then(connection_name),
                connected_at: SystemTime::UNIX_EPOCH + Duration::from_millis(at),
            })
        })
        .collect()
}

/// The `connection_name` in the client properties as the table writes them:
/// `[{"capabilities",[…]},{"connection_name","bfo-emulator"},…]`.
fn connection_name(props: &str) -> Option<String> {
    const KEY: &str = "{\"connection_name\",\"";
    let rest = &props[props.find(KEY)? + KEY.len()..];
    Some(rest[..rest.find("\"}")?].to_string())
}

/// Ends every client connection of `vhost` but the emulator's own once it is `max_age`
/// old, until `stop`. It looks again when the youngest surviving connection can be due,
/// or `max_age` after a look that found none (a new connection is due no sooner).
async fn end_old_connections(
    ctl: Rabbitmqctl,
    vhost: String,
    max_age: Duration,
    stop: CancellationToken,
) {
    // Closed already but perhaps still listed while they close.
    let mut ended: HashSet<String> = HashSet::new();
    loop {
        let wait = match ctl.connections().await {
            Ok(all) => {
                let now = SystemTime::now();
                let mut next = max_age;
                let clients: Vec<_> = all
                    .into_iter()
                    .filter(|c| c.vhost == vhost && c.name.as_deref() != Some(CONNECTION_NAME))
                    .collect();
                ended.retain(|pid| clients.iter().any(|c| &c.pid == pid));
                for c in &clients {
                    if ended.contains(&c.pid) {
                        continue;
                    }
                    let age = now.duration_since(c.connected_at).unwrap_or_default();
                    if age < max_age {
                        next = next.min(max_age - age);
                        continue;
                    }
                    let reason =
                        "max_connection_age reached (the emulated Beskedfordeler ends connections)";
                    match ctl.close_connection(&c.pid, reason).await {
                        Ok(()) => {
                            tracing::info!(pid = %c.pid, name = c.name.as_deref().unwrap_or(""), age = ?age, "ended a client connection at max_connection_age");
                            ended.insert(c.pid.clone());
                        }
                        Err(e) => {
                            tracing::warn!(pid = %c.pid, error = %e, "cannot end a client connection")
                        }
                    }
                }
                next
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?RABBITMQCTL_RETRY, "cannot list the broker's connections");
                RABBITMQCTL_RETRY
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait.max(MIN_CONNECTION_CHECK)) => {}
        }
    }
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
    /// The dueslag's UUID; a pull dueslag's defaults to its queue when that is a UUID.
    pub id: Option<Uuid>,
    /// Pull: the queue to declare and deliver to.
    pub queue: Option<String>,
    /// Push: the endpoint to POST to.
    pub push_url: Option<String>,
    /// What its abonnement filters on besides the beskedtype: `relateret-objekt` (default:
    /// the RelateretObjekt naming this dueslag, so that each Alive message reaches only its
    /// own dueslag) or `fan-out` (nothing: every message of its beskedtyper).
    #[serde(default)]
    pub abonnement: AbonnementKind,
    /// The beskedtyper its abonnement selects; default Alive only.
    pub beskedtyper: Option<Vec<Uuid>>,
    /// A TilladtModtager its abonnement requires, e.g. `urn:oio:cvr-nr:29189846`.
    pub tilladt_modtager: Option<String>,
}

impl EmulatedDueslag {
    /// `id`, else a pull dueslag's queue when that is a UUID.
    fn uuid(&self) -> Option<Uuid> {
        self.id
            .or_else(|| self.queue.as_deref().and_then(|q| q.parse().ok()))
    }
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
        for cvr in std::iter::once(&c.emulator.cvr).chain(&c.emulator.cvrs) {
            if cvr.len() != 8 || !cvr.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(format!(
                    "emulator.cvrs: {cvr:?} is not an 8-digit CVR number"
                )));
            }
        }
        if let Some(t) = &c.emulator.objekt_type {
            t.parse::<UnikId>()
                .map_err(|e| err(format!("emulator.objekt_type: {e}")))?;
        }
        let alive: Uuid = ALIVE_BESKEDTYPE.parse().expect("a UUID");
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
            if d.abonnement == AbonnementKind::RelateretObjekt && d.uuid().is_none() {
                return Err(err(format!(
                    "dueslag[{i}].id: required with abonnement = \"relateret-objekt\" (the default): the dueslag's UUID, which its abonnement selects as RelateretObjekt (a pull dueslag's defaults to its queue when that is a UUID); or abonnement = \"fan-out\""
                )));
            }
            for t in d.beskedtyper.iter().flatten() {
                if *t != alive && !c.emulator.beskedtyper.contains(t) {
                    return Err(err(format!(
                        "dueslag[{i}].beskedtyper: {t} is neither Alive nor in emulator.beskedtyper, so no such message is ever accepted"
                    )));
                }
            }
            if let Some(m) = &d.tilladt_modtager {
                m.parse::<UnikId>()
                    .map_err(|e| err(format!("dueslag[{i}].tilladt_modtager: {e}")))?;
            }
        }
        for name in c.faults.keys() {
            if !c.dueslag.iter().any(|d| &d.name == name) {
                return Err(err(format!("faults.{name}: no dueslag is named {name:?}")));
            }
        }
        if c.emulator.max_connection_age.is_some_and(|d| d.is_zero()) {
            return Err(err(
                "emulator.max_connection_age: must be more than 0s (leave it out to keep connections)"
                    .into(),
            ));
        }
        Ok(c)
    }

    /// The ObjektType that names a dueslag.
    fn objekt_type(&self) -> UnikId {
        self.emulator
            .objekt_type
            .as_deref()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| UnikId::Urn(DUESLAG_OBJEKT_TYPE.into()))
    }

    fn targets(&self) -> Vec<(Target, Faults)> {
        let objekt_type = self.objekt_type();
        self.dueslag
            .iter()
            .map(|d| {
                let address = d
                    .uuid()
                    .map(|id| RelateretObjekt::dueslag(id, &objekt_type));
                let mut abonnement = Abonnement::alive(d.abonnement, address.as_ref());
                if let Some(t) = &d.beskedtyper {
                    abonnement.beskedtyper = t.clone();
                }
                abonnement.tilladt_modtager =
                    d.tilladt_modtager.as_deref().and_then(|m| m.parse().ok());
                (
                    Target {
                        name: d.name.clone(),
                        mode: d.mode,
                        queue: d.queue.clone(),
                        push_url: d.push_url.clone(),
                        address,
                        abonnement,
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
    let mut token_cvr = None;
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
            Ok(t) => token_cvr = t.cvr,
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
    if !m.is_alive() && !m.beskedtype.is_some_and(|t| cfg.beskedtyper.contains(&t)) {
        return Err(StandardRetur::error(
            status::INVALID_INPUT,
            format!(
                "beskedtype {} is neither Alive nor one of emulator.beskedtyper",
                m.beskedtype.map_or("(none)".into(), |t| t.to_string())
            ),
        ));
    }
    if m.ansvarlig_aktoer != Some(cfg.anvendersystem) {
        return Err(StandardRetur::error(
            status::INVALID_INPUT,
            "BeskedAnsvarligAktoer is not the configured anvendersystem",
        ));
    }
    // An Alive message goes to the sender's own authority (AliveBesked's rule); other
    // beskedtyper name whom they like, for abonnements to filter on.
    let urn = |cvr: &str| UnikId::Urn(format!("{CVR_URN_PREFIX}{cvr}"));
    if m.is_alive()
        && !std::iter::once(&cfg.cvr)
            .chain(&cfg.cvrs)
            .any(|c| m.tilladt_modtager.contains(&urn(c)))
    {
        return Err(StandardRetur::error(
            status::INVALID_INPUT,
            "TilladtModtager is not the configured CVR",
        ));
    }
    if let Some(cvr) = token_cvr
        && !m.tilladt_modtager.contains(&urn(&cvr))
    {
        let to: Vec<String> = m.tilladt_modtager.iter().map(|u| u.to_string()).collect();
        return Err(StandardRetur::error(
            status::INVALID_INPUT,
            format!(
                "dataafgrænsning: the token is issued for CVR {cvr}, and the message's TilladtModtager is {}: a connection may only send for its token's municipality",
                to.join(", ")
            ),
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
    if let Some(max_age) = cfg.emulator.max_connection_age {
        let vhost = cfg
            .emulator
            .url
            .0
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|e| anyhow::anyhow!("emulator.url: {e}"))?
            .vhost;
        tokio::spawn(end_old_connections(
            cfg.emulator.rabbitmqctl.clone(),
            vhost,
            max_age,
            stop.clone(),
        ));
    }
    // Capped at 2 s, not the exporter's 30 s: the emulator stands in for the Beskedfordeler,
    // which is the broker's own side, so it serves again as soon as its broker is back, and a
    // fault test measures the exporter's recovery, not the emulator's.
    let mut backoff = Backoff::new(RECONNECT_START, Duration::from_secs(2));
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
    let conn = sasl::connect_with_properties(
        &cfg.emulator.url.0,
        None,
        AuthChoice::Plain,
        ConnectionProperties::default().with_connection_name(CONNECTION_NAME.into()),
    )
    .await?;
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
                AfsendAnswer::Delayed(r, after) => {
                    // Later, while the next calls are served.
                    tokio::spawn(reply(channel.clone(), d.properties.clone(), r, after));
                    None
                }
                // The emulator cannot make the broker return or drop a connection: an outage
                // and an unroutable fault both go unanswered.
                AfsendAnswer::Outage | AfsendAnswer::NoReply | AfsendAnswer::Unroutable => None,
            },
        };
        if let Some(r) = answer {
            reply(channel.clone(), d.properties.clone(), r, Duration::ZERO).await;
        }
        d.acker.ack(BasicAckOptions::default()).await?;
    }
}

/// Answers a call on its `reply_to` with its correlation id, `after` a while.
async fn reply(channel: Channel, call: BasicProperties, body: Bytes, after: Duration) {
    let Some(reply_to) = call.reply_to().clone() else {
        return;
    };
    if !after.is_zero() {
        tokio::time::sleep(after).await;
    }
    let mut props = BasicProperties::default().with_content_type("application/xml".into());
    if let Some(c) = call.correlation_id().clone() {
        props = props.with_correlation_id(c);
    }
    if let Err(e) = channel
        .basic_publish(
            "".into(),
            reply_to,
            BasicPublishOptions::default(),
            &body,
            props,
        )
        .await
    {
        tracing::warn!(error = %e, "reply failed");
    }
}

#[cfg(test)]
#[path = "emulator_tests.rs"]
mod tests;
