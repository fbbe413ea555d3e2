//! Configuration: the TOML file of ARCHITECTURE.md §6, parsed, defaulted and validated in one place.
//!
//! Unknown keys are errors; every error names the file and the key. Secrets (passwords in
//! the broker URL) never print: `Debug` masks them. Loading resolves what the file leaves
//! out (the `[broker] environment` preset, the default virtual host) once, so the rest of
//! the code reads plain values; [`Config::resolved`] says what was filled in.
//! [`Config::dueslag_specs`] resolves each `[[dueslag]]` against `[defaults]` into the value
//! the supervisor diffs on reload, and [`Config::backend_part`] names what forces a backend
//! rebuild.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use uuid::Uuid;

use crate::message::{ReplyShape, UnikId};
use crate::protocol::{self, Service, environment::Preset};

mod resolve;
mod validate;

/// A configuration problem, naming the file (or `<embedded demo>`) and the key.
#[derive(Debug, Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

/// The error for a file without `[broker]`: there is no default backend.
pub const NO_BACKEND: &str = "broker: no backend chosen. Add [broker] with backend = \"amqp\" and url = \"amqps://...\" to probe a Beskedfordeler (or any RabbitMQ), or backend = \"sim\" for the embedded simulator, which probes nothing real (`bfo-alive-exporter demo` runs it with example dueslag)";

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub exporter: ExporterConfig,
    pub identity: IdentityConfig,
    pub broker: Option<BrokerConfig>,
    pub token: Option<TokenConfig>,
    #[serde(default)]
    pub push: PushConfig,
    /// Limits on every HTTP listener (ARCHITECTURE.md §3); read once at start.
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub dueslag: Vec<DueslagConfig>,
    #[serde(default)]
    pub sim: SimConfig,
    /// What loading filled in that the file did not say, in order.
    #[serde(skip)]
    pub resolved: Vec<Resolved>,
}

/// A value the file did not spell out, filled in at load.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The key, e.g. `broker.url`.
    pub key: &'static str,
    /// The value; a broker URL with its password masked.
    pub value: String,
    /// Where it came from, in words.
    pub from: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExporterConfig {
    /// Goes into every Alive payload; default: the host name.
    pub instance: Option<String>,
    /// Upper bounds (seconds) of the round-trip histogram buckets.
    #[serde(default = "default_buckets")]
    pub roundtrip_buckets: Vec<f64>,
    /// Which histograms `/metrics` exposes: classic buckets, native, or both (read at start).
    #[serde(default)]
    pub histograms: Histograms,
    /// Enables `GET /probe` (it sends real messages).
    #[serde(default)]
    pub probe_endpoint: bool,
    /// The ObjektType of the RelateretObjekt that addresses each Alive message to its
    /// dueslag, a URN or a UUID; default `protocol::DUESLAG_OBJEKT_TYPE`.
    pub objekt_type: Option<String>,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        ExporterConfig {
            instance: None,
            roundtrip_buckets: default_buckets(),
            histograms: Histograms::default(),
            probe_endpoint: false,
            objekt_type: None,
        }
    }
}

/// `[exporter] histograms`: how the round-trip and send-duration histograms are exposed.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Histograms {
    /// Classic buckets (`roundtrip_buckets`) in every format, as before native histograms.
    Classic,
    /// Native histograms only: a protobuf scrape gets one native histogram per series; text
    /// and OpenMetrics get `_count`, `_sum` and the `+Inf` bucket only.
    Native,
    /// Native histograms (with the classic buckets beside them) for scrapers that ask for
    /// protobuf; classic buckets in text and OpenMetrics.
    #[default]
    Both,
}

impl Histograms {
    pub fn classic(self) -> bool {
        self != Histograms::Native
    }

    pub fn native(self) -> bool {
        self != Histograms::Classic
    }
}

/// 10 ms to 5 min, roughly ×2.5 per step.
pub fn default_buckets() -> Vec<f64> {
    vec![
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    ]
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The sending anvendersystem's UUID (BeskedAnsvarligAktoer).
    pub anvendersystem: Uuid,
    /// The authority's CVR number, 8 digits.
    pub cvr: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Amqp,
    Sim,
}

/// KOMBIT's environments, as `[broker] environment` presets them (ARCHITECTURE.md §6); the
/// values are in `protocol::environment`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Eksterntest,
    Produktion,
}

impl Environment {
    pub fn preset(self) -> &'static Preset {
        match self {
            Environment::Eksterntest => &protocol::environment::EKSTERNTEST,
            Environment::Produktion => &protocol::environment::PRODUKTION,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthKind {
    External,
    Plain,
}

/// An AMQP URL whose password never prints.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct BrokerUrl(pub String);

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask_url(&self.0))
    }
}

/// The URL with any password replaced by `***`.
pub fn mask_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable url>".to_string(),
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    pub backend: BackendKind,
    /// Fills `url`, `token.sts_url` and the entity ids that the file leaves out.
    pub environment: Option<Environment>,
    pub url: Option<BrokerUrl>,
    #[serde(default = "default_auth")]
    pub auth: AuthKind,
    pub tls: Option<BrokerTls>,
    /// Messages a pull consumer may hold unacknowledged (prefetch).
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Replace each connection by a new one before it is this old (make before break), as
    /// the Beskedfordeler ends connections after an hour; `0s` never replaces one.
    #[serde(with = "humantime_serde", default = "default_max_connection_age")]
    pub max_connection_age: Duration,
    /// The AMQP heartbeat asked of the broker, in whole seconds (the lower of this and the
    /// broker's proposal is used); a connection silent for two intervals is taken for dead
    /// and reopened. `0s` takes the broker's proposal (RabbitMQ's default is 60 s).
    #[serde(with = "humantime_serde", default = "default_heartbeat")]
    pub heartbeat: Duration,
}

fn default_max_connection_age() -> Duration {
    Duration::from_secs(protocol::DEFAULT_MAX_CONNECTION_AGE_SECS)
}

/// `[broker] heartbeat` by default: a half-open connection (a broker or network that
/// vanished without closing it) is noticed within 20 s, under the default probe interval,
/// at the cost of one 8-byte frame each way every 5 s.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

fn default_heartbeat() -> Duration {
    DEFAULT_HEARTBEAT
}

fn default_auth() -> AuthKind {
    AuthKind::External
}

fn default_prefetch() -> u16 {
    20
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrokerTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub pkcs12_file: Option<PathBuf>,
    pub pkcs12_password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenSourceKind {
    Sts,
    File,
    None,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub source: TokenSourceKind,
    pub sts_url: Option<String>,
    pub afsend_entity_id: Option<String>,
    pub afhent_entity_id: Option<String>,
    pub file: Option<PathBuf>,
    /// CA for the STS's server certificate; default: the system roots. The client
    /// certificate is the one of `[broker.tls]`.
    pub sts_ca_file: Option<PathBuf>,
    /// Renew when this share of the token's lifetime has passed.
    #[serde(default = "default_renew_at")]
    pub renew_at: f64,
    /// Each renewal comes up to this share earlier than `renew_at` says, at random, so that
    /// the tokens of many municipalities fetched together are not renewed together.
    #[serde(default = "default_renew_jitter")]
    pub renew_jitter: f64,
    /// STS requests in flight at once, over every municipality and service: at start-up
    /// and on renewals the others wait (no herd of 200 requests in one second).
    #[serde(default = "default_sts_concurrency")]
    pub sts_concurrency: usize,
}

fn default_renew_at() -> f64 {
    0.8
}

fn default_renew_jitter() -> f64 {
    0.1
}

/// `[token] sts_concurrency` by default.
pub const DEFAULT_STS_CONCURRENCY: usize = 4;

fn default_sts_concurrency() -> usize {
    DEFAULT_STS_CONCURRENCY
}

/// The placeholder of `[token] file` that each municipality's CVR replaces.
pub const CVR_PLACEHOLDER: &str = "{cvr}";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// Own address for the push endpoint; default: the main listener.
    pub listen: Option<String>,
    #[serde(default = "default_max_body")]
    pub max_body: bytesize::ByteSize,
    pub tls: Option<PushTls>,
    /// The `https://` base URL at which the Beskedfordeler reaches the push endpoint (a
    /// load balancer or ingress in front of the listener): `setup` prints
    /// `{external_url}/push/{name}` as the endpoint to register. Nothing else reads it.
    pub external_url: Option<String>,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            listen: None,
            max_body: default_max_body(),
            tls: None,
            external_url: None,
        }
    }
}

fn default_max_body() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(1)
}

/// `[http]`: what a client may cost the exporter, per listener. Defaults and why: README
/// "Slow and abusive clients".
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// From the first byte of a request (or the connection's start) to its last header.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// From the request head to the body's last byte.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A kept-alive connection with nothing to do, or a response the client stopped reading.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Open connections per listener; beyond it a new one is closed at once.
    pub max_connections: usize,
    /// Push requests read and parsed at once; beyond it (after 1 s) 503, and the
    /// Beskedfordeler delivers again.
    pub max_push_requests: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 512,
            max_push_requests: 32,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PushTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(with = "humantime_serde", default = "default_interval")]
    pub interval: Duration,
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    /// Wait for the StandardRetur of one Afsend attempt.
    #[serde(with = "humantime_serde", default = "default_send_timeout")]
    pub send_timeout: Duration,
    #[serde(default = "default_send_attempts")]
    pub send_attempts: u32,
    /// Share of the interval added or taken at random, 0..0.5.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// Probes in flight per dueslag at most; the oldest is timed out to make room.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,
    /// Unacknowledged non-Alive messages held in a pull dueslag before it stops consuming.
    #[serde(default = "default_max_held")]
    pub max_held: usize,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            interval: default_interval(),
            timeout: default_timeout(),
            send_timeout: default_send_timeout(),
            send_attempts: default_send_attempts(),
            jitter: default_jitter(),
            max_inflight: default_max_inflight(),
            max_held: default_max_held(),
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_send_timeout() -> Duration {
    Duration::from_secs(protocol::DEFAULT_SEND_TIMEOUT_SECS)
}
fn default_send_attempts() -> u32 {
    protocol::DEFAULT_SEND_ATTEMPTS
}
fn default_jitter() -> f64 {
    0.1
}
fn default_max_inflight() -> usize {
    64
}
fn default_max_held() -> usize {
    5
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Pull,
    Push,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Pull => "pull",
            Mode::Push => "push",
        }
    }
}

/// What a pull dueslag does with a message that is not an Alive message (ARCHITECTURE.md §4).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Unexpected {
    /// Keep it unacknowledged; it returns to the queue when the channel closes.
    #[default]
    Hold,
    /// `basic.nack(requeue=false)`: the broker dead-letters it to the dueslag's error queue.
    ErrorQueue,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DueslagConfig {
    pub name: String,
    pub mode: Mode,
    /// The dueslag's UUID, carried by every Alive message as its RelateretObjekt's ObjektId.
    /// Required for push; a pull dueslag's defaults to its queue (named by the UUID).
    pub id: Option<String>,
    pub queue: Option<String>,
    #[serde(with = "humantime_serde", default)]
    pub interval: Option<Duration>,
    #[serde(with = "humantime_serde", default)]
    pub timeout: Option<Duration>,
    pub unexpected: Option<Unexpected>,
    /// The municipality (authority) this dueslag belongs to, 8 digits: its Alive messages
    /// carry it (TilladtModtager, ObjektAnsvarligMyndighed) and are sent with a token and
    /// connections of this CVR. Default `[identity] cvr`.
    pub cvr: Option<String>,
    /// The sending anvendersystem (BeskedAnsvarligAktoer), where it differs from
    /// `[identity] anvendersystem`.
    pub anvendersystem: Option<Uuid>,
    /// Static labels added to every series of this dueslag (e.g. `kommune`, `team`); the
    /// same keys on every dueslag.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Where the simulator POSTs push deliveries: `{push_base}/push/{name}`, as the
    /// Beskedfordeler POSTs to the URL registered for a dueslag. Default: this exporter's
    /// own push listener. Set it to reach the exporter through a proxy in between.
    pub push_base: Option<String>,
    /// The abonnement of a dueslag, by name: what the simulated Beskedfordeler routes to it.
    /// Default `relateret-objekt`.
    #[serde(default)]
    pub abonnement: BTreeMap<String, AbonnementKind>,
    #[serde(default)]
    pub faults: BTreeMap<String, Faults>,
}

/// What a simulated abonnement (the simulator's `[sim.abonnement]`, the emulator's
/// `[[dueslag]] abonnement`) filters on besides the beskedtype (ARCHITECTURE.md §2).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AbonnementKind {
    /// The RelateretObjekt that names the dueslag (ObjektId = its UUID, ObjektType =
    /// `objekt_type`): each Alive message reaches only its own dueslag, as `setup` says to
    /// set it up.
    #[default]
    RelateretObjekt,
    /// Nothing: every message of a subscribed beskedtype (the whole system's Alive messages
    /// reach this dueslag: each counts the others' as `misrouted`).
    FanOut,
}

impl AbonnementKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AbonnementKind::RelateretObjekt => "relateret-objekt",
            AbonnementKind::FanOut => "fan-out",
        }
    }
}

/// An outage window, relative to the start of the simulator.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    #[serde(with = "humantime_serde")]
    pub start: Duration,
    #[serde(with = "humantime_serde")]
    pub length: Duration,
}

/// Fault injection for one dueslag of the simulator (or the emulator).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    #[serde(with = "humantime_serde", default)]
    pub delay: Duration,
    #[serde(with = "humantime_serde", default)]
    pub jitter: Duration,
    #[serde(default)]
    pub loss: f64,
    #[serde(default)]
    pub duplicate: f64,
    #[serde(default)]
    pub reorder: f64,
    #[serde(default)]
    pub reject: f64,
    #[serde(default = "default_reject_code")]
    pub reject_code: i32,
    /// The first this many Afsend calls are answered with `reject_code` (e.g. 41 once).
    #[serde(default)]
    pub reject_first: u32,
    /// Share of Afsend calls never answered (the sender times out).
    #[serde(default)]
    pub no_reply: f64,
    /// Share of Afsend calls returned as unroutable.
    #[serde(default)]
    pub unroutable: f64,
    /// Every StandardRetur comes this late (a slow Afsend); the sender times out when it
    /// exceeds `send_timeout`.
    #[serde(with = "humantime_serde", default)]
    pub reply_delay: Duration,
    #[serde(with = "humantime_serde", default)]
    pub business_every: Duration,
    /// Inject an Alive message of another exporter instance this often; 0s = never.
    #[serde(with = "humantime_serde", default)]
    pub foreign_every: Duration,
    #[serde(default)]
    pub outages: Vec<Outage>,
    /// How Afsend replies are written: "standard-retur" (default), "afsend-besked-output",
    /// "other-root" (all three read by the exporter), or "garbage" (`invalid_reply`).
    #[serde(default)]
    pub reply_shape: ReplyShape,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reject: 0.0,
            reject_code: default_reject_code(),
            reject_first: 0,
            no_reply: 0.0,
            unroutable: 0.0,
            reply_delay: Duration::ZERO,
            business_every: Duration::ZERO,
            foreign_every: Duration::ZERO,
            outages: Vec::new(),
            reply_shape: ReplyShape::default(),
        }
    }
}

fn default_reject_code() -> i32 {
    protocol::status::TOKEN_EXPIRED
}

/// One dueslag with every default resolved: what a probe loop runs on, and what
/// reload compares to decide whether the loop restarts.
#[derive(Debug, Clone, PartialEq)]
pub struct DueslagSpec {
    pub name: String,
    pub mode: Mode,
    /// The dueslag's UUID (`id`, or a pull dueslag's `queue`).
    pub id: Uuid,
    pub queue: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub send_timeout: Duration,
    pub send_attempts: u32,
    pub jitter: f64,
    pub max_inflight: usize,
    pub max_held: usize,
    pub unexpected: Unexpected,
    /// The municipality: `cvr`, else `[identity] cvr`.
    pub cvr: String,
    /// `anvendersystem`, else `[identity] anvendersystem`.
    pub anvendersystem: Uuid,
    /// The static labels, sorted by name.
    pub labels: Vec<(String, String)>,
}

impl DueslagConfig {
    /// The dueslag's UUID: `id`, else a pull dueslag's `queue`; `None` when neither is one
    /// (validation refuses that).
    pub fn uuid(&self) -> Option<Uuid> {
        match (&self.id, self.mode) {
            (Some(id), _) => id.parse().ok(),
            (None, Mode::Pull) => self.queue.as_deref()?.parse().ok(),
            (None, Mode::Push) => None,
        }
    }
}

impl BrokerConfig {
    /// `max_connection_age` as the transport takes it: `None` for `0s` (never replace).
    pub fn connection_age_limit(&self) -> Option<Duration> {
        Some(self.max_connection_age).filter(|d| !d.is_zero())
    }

    /// `heartbeat` as the transport takes it: whole seconds, `None` for `0s` (the broker's).
    /// Validation keeps it within what AMQP carries.
    pub fn heartbeat_secs(&self) -> Option<u16> {
        u16::try_from(self.heartbeat.as_secs())
            .ok()
            .filter(|s| *s > 0)
    }

    /// True when `max_connection_age` is not under the hour the Beskedfordeler grants a
    /// connection, so that the broker ends connections first (probes then see a reconnect
    /// and a retry instead of a replacement): worth a warning, not an error.
    pub fn exceeds_broker_limit(&self) -> bool {
        self.connection_age_limit()
            .is_some_and(|d| d >= Duration::from_secs(protocol::CONNECTION_LIFETIME_SECS))
    }

    /// The client TLS files of `[broker.tls]` (none: the system roots, no certificate).
    pub fn tls_files(&self) -> crate::tls::ClientTlsFiles {
        self.tls.as_ref().map(BrokerTls::files).unwrap_or_default()
    }
}

impl BrokerTls {
    /// The files as the TLS module takes them.
    pub fn files(&self) -> crate::tls::ClientTlsFiles {
        crate::tls::ClientTlsFiles {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            pkcs12_file: self.pkcs12_file.clone(),
            pkcs12_password_file: self.pkcs12_password_file.clone(),
        }
    }
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: file.to_string(),
            message,
        };
        let mut config: Config =
            toml::from_str(text).map_err(|e| err(describe_toml_error(&e, text)))?;
        config.resolve().map_err(err)?;
        config.validate().map_err(err)?;
        Ok(config)
    }

    /// The backend `[broker] backend` names. Validation refuses a configuration without
    /// one, so that nobody runs the simulator by forgetting a table.
    pub fn backend(&self) -> BackendKind {
        self.broker.as_ref().map_or(BackendKind::Sim, |b| b.backend)
    }

    /// The instance id written into every payload.
    pub fn instance(&self) -> String {
        self.exporter.instance.clone().unwrap_or_else(|| {
            hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "bfo-alive-exporter".to_string())
        })
    }

    /// The ObjektType that addresses Alive messages to dueslag (validated at load).
    pub fn objekt_type(&self) -> UnikId {
        self.exporter
            .objekt_type
            .as_deref()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| UnikId::Urn(protocol::DUESLAG_OBJEKT_TYPE.into()))
    }

    /// Every dueslag with its defaults resolved.
    pub fn dueslag_specs(&self) -> Vec<DueslagSpec> {
        let d = &self.defaults;
        self.dueslag
            .iter()
            .map(|ds| DueslagSpec {
                name: ds.name.clone(),
                mode: ds.mode,
                id: ds.uuid().unwrap_or_default(),
                queue: ds.queue.clone(),
                interval: ds.interval.unwrap_or(d.interval),
                timeout: ds.timeout.unwrap_or(d.timeout),
                send_timeout: d.send_timeout,
                send_attempts: d.send_attempts,
                jitter: d.jitter,
                max_inflight: d.max_inflight,
                max_held: d.max_held,
                unexpected: ds.unexpected.unwrap_or_default(),
                cvr: self.cvr_of(ds).to_string(),
                anvendersystem: ds.anvendersystem.unwrap_or(self.identity.anvendersystem),
                labels: ds
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
            .collect()
    }

    /// The CVR a dueslag belongs to: its own `cvr`, else `[identity] cvr`.
    pub fn cvr_of<'a>(&'a self, ds: &'a DueslagConfig) -> &'a str {
        ds.cvr.as_deref().unwrap_or(&self.identity.cvr)
    }

    /// The municipalities (CVRs) the dueslag belong to, each with the services it needs:
    /// afsend always, afhent when one of its dueslag is pull. `[identity] cvr` alone when
    /// no dueslag is configured.
    pub fn municipalities(&self) -> BTreeMap<String, Vec<Service>> {
        let mut pull: BTreeMap<String, bool> = BTreeMap::new();
        for ds in &self.dueslag {
            *pull.entry(self.cvr_of(ds).to_string()).or_default() |= ds.mode == Mode::Pull;
        }
        if pull.is_empty() {
            pull.insert(self.identity.cvr.clone(), false);
        }
        pull.into_iter()
            .map(|(cvr, pull)| {
                let services = Service::ALL
                    .into_iter()
                    .filter(|s| *s == Service::Afsend || pull)
                    .collect();
                (cvr, services)
            })
            .collect()
    }

    /// The shortest probe interval of any dueslag (`[defaults] interval` without any): the
    /// connections reconnect at least this often while the broker is away
    /// (`crate::backoff::Backoff::reconnect_within`).
    pub fn shortest_interval(&self) -> Duration {
        self.dueslag
            .iter()
            .map(|d| d.interval.unwrap_or(self.defaults.interval))
            .min()
            .unwrap_or(self.defaults.interval)
    }

    /// What the transports are built from: when this differs on reload, the backend is
    /// rebuilt and every loop restarts on it. Everything else applies without touching the
    /// backend: `[defaults]` and `[[dueslag]]` restart only the dueslag they change,
    /// `[exporter] instance` and `objekt_type` restart the loops (they are in every
    /// message), `[exporter] probe_endpoint` applies at once, `[sim.faults]` and
    /// `[sim.abonnement]` go to the running simulator, and `[push] external_url` is read only
    /// by `setup`.
    /// The set of [`Config::services`] is part of it: a reload that adds the first pull
    /// dueslag needs the afhent connection and token that a push-only backend never made.
    pub fn backend_part(&self) -> BackendPart<'_> {
        BackendPart {
            broker: self.broker.as_ref(),
            token: self.token.as_ref(),
            identity: &self.identity,
            push: (
                self.push.listen.as_ref(),
                self.push.max_body,
                self.push.tls.as_ref(),
            ),
            services: self.services(),
        }
    }

    /// The Beskedfordeler services this configuration uses, each with its connection and
    /// token: afsend always (every probe sends), afhent only with a pull dueslag (the BFO
    /// POSTs push deliveries; they need neither).
    pub fn services(&self) -> Vec<Service> {
        let pull = self.dueslag.iter().any(|d| d.mode == Mode::Pull);
        Service::ALL
            .into_iter()
            .filter(|s| *s == Service::Afsend || pull)
            .collect()
    }
}

/// See [`Config::backend_part`].
#[derive(Debug, PartialEq)]
pub struct BackendPart<'a> {
    pub broker: Option<&'a BrokerConfig>,
    pub token: Option<&'a TokenConfig>,
    pub identity: &'a IdentityConfig,
    /// `[push]` `listen`, `max_body` and `tls`.
    pub push: (Option<&'a String>, bytesize::ByteSize, Option<&'a PushTls>),
    pub services: Vec<Service>,
}

/// Turns a toml error into one line naming the line and the key it is about.
fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else { return msg };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    // The table this line is in: the last [header] or [[header]] above it.
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string());
    let path = match (table, key) {
        (Some(t), Some(k)) if !line.starts_with('[') => format!("{t}.{k}"),
        (None, Some(k)) => k,
        (Some(t), _) => t,
        (None, None) => line.to_string(),
    };
    format!("line {line_no}, key {path}: {msg}")
}

#[cfg(test)]
pub(crate) mod tests;
