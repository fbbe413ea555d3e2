//! Configuration: the TOML file of ARCHITECTURE.md §6, parsed, defaulted and validated in one place.
//!
//! Unknown keys are errors; every error names the file and the key. Secrets (passwords in
//! the broker URL) never print: `Debug` masks them. Loading resolves what the file leaves
//! out (the `[broker] environment` preset, the default virtual host) once, so the rest of
//! the code reads plain values; [`Config::resolved`] says what was filled in.
//! [`Config::dueslag_specs`] resolves each `[[dueslag]]` against `[defaults]` into the value
//! the supervisor diffs on reload, and [`Config::backend_part`] names what forces a backend
//! rebuild.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use uuid::Uuid;

use crate::message::ReplyShape;
use crate::protocol::{self, Service, environment::Preset};

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
    /// Enables `GET /probe` (it sends real messages).
    #[serde(default)]
    pub probe_endpoint: bool,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        ExporterConfig {
            instance: None,
            roundtrip_buckets: default_buckets(),
            probe_endpoint: false,
        }
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
/// values are in [`protocol::environment`].
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
}

fn default_renew_at() -> f64 {
    0.8
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// Own address for the push endpoint; default: the main listener.
    pub listen: Option<String>,
    #[serde(default = "default_max_body")]
    pub max_body: bytesize::ByteSize,
    pub tls: Option<PushTls>,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            listen: None,
            max_body: default_max_body(),
            tls: None,
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
    pub queue: Option<String>,
    #[serde(with = "humantime_serde", default)]
    pub interval: Option<Duration>,
    #[serde(with = "humantime_serde", default)]
    pub timeout: Option<Duration>,
    pub unexpected: Option<Unexpected>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Where the simulator POSTs push deliveries: `{push_base}/push/{name}`, as the
    /// Beskedfordeler POSTs to the URL registered for a dueslag. Default: this exporter's
    /// own push listener. Set it to reach the exporter through a proxy in between.
    pub push_base: Option<String>,
    #[serde(default)]
    pub faults: BTreeMap<String, Faults>,
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
    pub queue: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub send_timeout: Duration,
    pub send_attempts: u32,
    pub jitter: f64,
    pub max_inflight: usize,
    pub max_held: usize,
    pub unexpected: Unexpected,
}

impl BrokerConfig {
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

    /// Fills what the file leaves out, once, before validation: the `[broker] environment`
    /// preset (for keys the file does not set) and the virtual host of a URL without one.
    /// Every filled value is recorded in [`Config::resolved`].
    fn resolve(&mut self) -> Result<(), String> {
        let Config {
            broker,
            token,
            resolved,
            ..
        } = self;
        let Some(broker) = broker.as_mut() else {
            return Ok(());
        };
        if broker.backend != BackendKind::Amqp {
            if broker.environment.is_some() {
                return Err("broker.environment: presets a real Beskedfordeler; it has no meaning with backend = \"sim\"".into());
            }
            return Ok(());
        }
        if let Some(env) = broker.environment {
            let preset = env.preset();
            let from = format!("environment = {:?}", preset.name);
            let mut fill = |slot: &mut Option<String>, key: &'static str, value: Option<String>| {
                if slot.is_none()
                    && let Some(value) = value
                {
                    // Preset values hold no secrets.
                    resolved.push(Resolved {
                        key,
                        value: value.clone(),
                        from: from.clone(),
                    });
                    *slot = Some(value);
                }
            };
            let mut url = broker.url.take().map(|u| u.0);
            fill(&mut url, "broker.url", preset.amqp_url());
            broker.url = url.map(BrokerUrl);
            if let Some(t) = token.as_mut().filter(|t| t.source == TokenSourceKind::Sts) {
                fill(&mut t.sts_url, "token.sts_url", Some(preset.sts_url.into()));
                for (slot, key, service) in [
                    (
                        &mut t.afsend_entity_id,
                        "token.afsend_entity_id",
                        Service::Afsend,
                    ),
                    (
                        &mut t.afhent_entity_id,
                        "token.afhent_entity_id",
                        Service::Afhent,
                    ),
                ] {
                    fill(slot, key, preset.entity_id(service));
                }
            }
        }
        if let Some(url) = broker.url.as_mut()
            && let Ok(mut parsed) = url::Url::parse(&url.0)
            && matches!(parsed.scheme(), "amqp" | "amqps")
            && matches!(parsed.path(), "" | "/")
        {
            parsed.set_path(&format!("/{}", protocol::VHOST));
            url.0 = parsed.to_string();
            resolved.push(Resolved {
                key: "broker.url",
                value: mask_url(&url.0),
                from: format!("the URL names no virtual host: {}", protocol::VHOST),
            });
        }
        Ok(())
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

    fn validate(&self) -> Result<(), String> {
        if self.broker.is_none() {
            return Err(NO_BACKEND.into());
        }
        let cvr = &self.identity.cvr;
        if cvr.len() != 8 || !cvr.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "identity.cvr: {cvr:?} is not an 8-digit CVR number"
            ));
        }
        let b = &self.exporter.roundtrip_buckets;
        if b.is_empty()
            || b.windows(2).any(|w| w[0] >= w[1])
            || b.iter().any(|v| !v.is_finite() || *v <= 0.0)
        {
            return Err(
                "exporter.roundtrip_buckets: must be positive, finite and strictly increasing"
                    .into(),
            );
        }
        if let Some(broker) = &self.broker {
            if broker.backend == BackendKind::Amqp {
                let url = broker.url.as_ref().ok_or_else(|| match broker.environment {
                    Some(env) => format!(
                        "broker.url: required with environment = {:?}: {}; e.g. url = \"amqps://HOST:{}/{}\"",
                        env.preset().name,
                        env.preset().unknown_because,
                        protocol::AMQPS_PORT,
                        protocol::VHOST
                    ),
                    None => "broker.url: required with backend = \"amqp\"".into(),
                })?;
                let parsed = url::Url::parse(&url.0)
                    .map_err(|e| format!("broker.url: {} ({e})", mask_url(&url.0)))?;
                if !matches!(parsed.scheme(), "amqp" | "amqps") {
                    return Err(format!(
                        "broker.url: scheme must be amqp or amqps, not {:?}",
                        parsed.scheme()
                    ));
                }
                if parsed.scheme() == "amqp" && parsed.port() == Some(protocol::AMQPS_PORT) {
                    let mut tls = parsed.clone();
                    let _ = tls.set_scheme("amqps");
                    return Err(format!(
                        "broker.url: {} speaks plain AMQP to port {}, the TLS port; use {}",
                        mask_url(&url.0),
                        protocol::AMQPS_PORT,
                        mask_url(tls.as_str())
                    ));
                }
                let has_certificate = broker
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.cert_file.is_some() || t.pkcs12_file.is_some());
                if parsed.scheme() == "amqps"
                    && !has_certificate
                    && self
                        .token
                        .as_ref()
                        .is_some_and(|t| t.source == TokenSourceKind::File)
                {
                    return Err("broker.tls: token.source = \"file\" over amqps:// needs the system certificate (broker.tls.cert_file and key_file, or pkcs12_file): KOMBIT's broker checks the token and the certificate together".into());
                }
                if broker.auth == AuthKind::External {
                    match &self.token {
                        None => {
                            return Err("token: required with broker.auth = \"external\"".into());
                        }
                        Some(t) if t.source == TokenSourceKind::None => return Err(
                            "token.source: \"none\" cannot be used with broker.auth = \"external\""
                                .into(),
                        ),
                        _ => {}
                    }
                }
            }
            if broker.prefetch == 0 {
                return Err("broker.prefetch: must be at least 1".into());
            }
            if let Some(tls) = &broker.tls {
                if tls.cert_file.is_some() != tls.key_file.is_some() {
                    return Err("broker.tls: cert_file and key_file go together".into());
                }
                if tls.pkcs12_file.is_some() && tls.cert_file.is_some() {
                    return Err(
                        "broker.tls: use either cert_file/key_file or pkcs12_file, not both".into(),
                    );
                }
            }
        }
        if let Some(t) = &self.token {
            match t.source {
                TokenSourceKind::Sts => {
                    let environment = self.broker.as_ref().and_then(|b| b.environment);
                    for (key, v) in [
                        ("token.sts_url", &t.sts_url),
                        ("token.afsend_entity_id", &t.afsend_entity_id),
                        ("token.afhent_entity_id", &t.afhent_entity_id),
                    ] {
                        if v.is_some() {
                            continue;
                        }
                        return Err(match environment {
                            Some(env) => format!(
                                "{key}: required with environment = {:?}: {}",
                                env.preset().name,
                                env.preset().unknown_because
                            ),
                            None => format!("{key}: required with token.source = \"sts\""),
                        });
                    }
                    if let Some(u) = &t.sts_url {
                        crate::token::sts_issue_url(u).map_err(|e| format!("token.{e}"))?;
                    }
                }
                TokenSourceKind::File if t.file.is_none() => {
                    return Err("token.file: required with token.source = \"file\"".into());
                }
                _ => {}
            }
            if !(t.renew_at > 0.0 && t.renew_at < 1.0) {
                return Err("token.renew_at: must be between 0 and 1".into());
            }
        }
        let h = &self.http;
        for (key, d) in [
            ("header_timeout", h.header_timeout),
            ("body_timeout", h.body_timeout),
            ("idle_timeout", h.idle_timeout),
            ("tls_handshake_timeout", h.tls_handshake_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("http.{key}: must be > 0"));
            }
        }
        if h.max_connections == 0 || h.max_push_requests == 0 {
            return Err("http.max_connections, http.max_push_requests: must be >= 1".into());
        }
        if self.push.tls.is_some() && self.push.listen.is_none() {
            return Err("push.tls: needs push.listen (TLS applies to the push listener; the main listener's TLS comes from --web.config.file)".into());
        }
        let d = &self.defaults;
        for (key, v) in [
            ("defaults.interval", d.interval),
            ("defaults.timeout", d.timeout),
            ("defaults.send_timeout", d.send_timeout),
        ] {
            if v.is_zero() {
                return Err(format!("{key}: must be more than 0s"));
            }
        }
        if d.send_attempts == 0 {
            return Err("defaults.send_attempts: must be at least 1".into());
        }
        if !(0.0..=0.5).contains(&d.jitter) {
            return Err("defaults.jitter: must be between 0 and 0.5".into());
        }
        if d.max_inflight == 0 {
            return Err("defaults.max_inflight: must be at least 1".into());
        }
        if let Some(b) = &self.broker
            && usize::from(b.prefetch) <= d.max_held
        {
            return Err(format!(
                "broker.prefetch: must be larger than defaults.max_held ({}) so Alive messages keep flowing past held ones",
                d.max_held
            ));
        }
        let mut names = HashSet::new();
        for (i, ds) in self.dueslag.iter().enumerate() {
            let key = format!("dueslag[{i}]");
            if ds.name.is_empty()
                || !ds
                    .name
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
            {
                return Err(format!("{key}.name: {:?} must match [a-z0-9_-]+", ds.name));
            }
            if !names.insert(ds.name.as_str()) {
                return Err(format!("{key}.name: {:?} is configured twice", ds.name));
            }
            let key = format!("dueslag.{}", ds.name);
            match ds.mode {
                Mode::Pull if ds.queue.as_deref().is_none_or(str::is_empty) => {
                    return Err(format!(
                        "{key}.queue: required for a pull dueslag (the dueslag UUID)"
                    ));
                }
                Mode::Push if ds.queue.is_some() => {
                    return Err(format!("{key}.queue: only pull dueslag have a queue"));
                }
                Mode::Push if ds.unexpected.is_some() => {
                    return Err(format!(
                        "{key}.unexpected: only for pull dueslag; push answers non-20"
                    ));
                }
                _ => {}
            }
            for (k, v) in [("interval", ds.interval), ("timeout", ds.timeout)] {
                if v.is_some_and(|v| v.is_zero()) {
                    return Err(format!("{key}.{k}: must be more than 0s"));
                }
            }
        }
        for (name, f) in &self.sim.faults {
            let key = format!("sim.faults.{name}");
            if !names.contains(name.as_str()) {
                return Err(format!("{key}: no dueslag is named {name:?}"));
            }
            for (k, v) in [
                ("loss", f.loss),
                ("duplicate", f.duplicate),
                ("reorder", f.reorder),
                ("reject", f.reject),
                ("no_reply", f.no_reply),
                ("unroutable", f.unroutable),
            ] {
                if !(0.0..=1.0).contains(&v) {
                    return Err(format!("{key}.{k}: {v} is not between 0 and 1"));
                }
            }
            if f.reject_code == protocol::status::OK {
                return Err(format!(
                    "{key}.reject_code: 20 is acceptance, not a rejection"
                ));
            }
        }
        if !self.sim.faults.is_empty() && self.backend() != BackendKind::Sim {
            return Err("sim.faults: only with [broker] backend = \"sim\"".into());
        }
        if let Some(base) = &self.sim.push_base {
            if self.backend() != BackendKind::Sim {
                return Err("sim.push_base: only with [broker] backend = \"sim\"".into());
            }
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                return Err(format!(
                    "sim.push_base: {base:?} is not an http:// or https:// URL"
                ));
            }
        }
        Ok(())
    }

    /// Every dueslag with its defaults resolved.
    pub fn dueslag_specs(&self) -> Vec<DueslagSpec> {
        let d = &self.defaults;
        self.dueslag
            .iter()
            .map(|ds| DueslagSpec {
                name: ds.name.clone(),
                mode: ds.mode,
                queue: ds.queue.clone(),
                interval: ds.interval.unwrap_or(d.interval),
                timeout: ds.timeout.unwrap_or(d.timeout),
                send_timeout: d.send_timeout,
                send_attempts: d.send_attempts,
                jitter: d.jitter,
                max_inflight: d.max_inflight,
                max_held: d.max_held,
                unexpected: ds.unexpected.unwrap_or_default(),
            })
            .collect()
    }

    /// What the transports are built from: when this differs on reload, the backend is
    /// rebuilt and every loop restarts on it. Everything else applies without touching the
    /// backend: `[defaults]` and `[[dueslag]]` restart only the dueslag they change,
    /// `[exporter] instance` restarts the loops (it is in every payload),
    /// `[exporter] probe_endpoint` applies at once, and `[sim.faults]` goes to the running
    /// simulator.
    /// The set of [`Config::services`] is part of it: a reload that adds the first pull
    /// dueslag needs the afhent connection and token that a push-only backend never made.
    pub fn backend_part(&self) -> BackendPart<'_> {
        BackendPart {
            broker: self.broker.as_ref(),
            token: self.token.as_ref(),
            identity: &self.identity,
            push: &self.push,
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

    /// What `--config.check` prints: the endpoints in effect, where each came from when the
    /// file did not say it, and the services in use. Passwords are masked; a token is never
    /// part of a configuration.
    pub fn resolution_summary(&self) -> Vec<String> {
        let from = |key: &str| {
            self.resolved
                .iter()
                .rev()
                .find(|r| r.key == key)
                .map_or(String::new(), |r| format!(" ({})", r.from))
        };
        let mut lines = Vec::new();
        let Some(broker) = self
            .broker
            .as_ref()
            .filter(|b| b.backend == BackendKind::Amqp)
        else {
            return lines;
        };
        if let Some(url) = &broker.url {
            lines.push(format!(
                "broker.url = {}{}",
                mask_url(&url.0),
                from("broker.url")
            ));
        }
        if let Some(t) = self
            .token
            .as_ref()
            .filter(|t| t.source == TokenSourceKind::Sts)
        {
            if let Some(u) = &t.sts_url {
                let issue = crate::token::sts_issue_url(u)
                    .map_or(String::new(), |i| format!("; tokens from POST {i}"));
                lines.push(format!(
                    "token.sts_url = {u}{}{issue}",
                    from("token.sts_url")
                ));
            }
            for (key, v) in [
                ("token.afsend_entity_id", &t.afsend_entity_id),
                ("token.afhent_entity_id", &t.afhent_entity_id),
            ] {
                if let Some(v) = v {
                    lines.push(format!("{key} = {v}{}", from(key)));
                }
            }
        }
        let services = self.services();
        let names: Vec<&str> = services.iter().map(|s| s.as_str()).collect();
        let note = if services.contains(&Service::Afhent) {
            ""
        } else {
            " (no pull dueslag: no afhent connection, no afhent token)"
        };
        lines.push(format!("services: {}{note}", names.join(", ")));
        lines
    }
}

/// See [`Config::backend_part`].
#[derive(Debug, PartialEq)]
pub struct BackendPart<'a> {
    pub broker: Option<&'a BrokerConfig>,
    pub token: Option<&'a TokenConfig>,
    pub identity: &'a IdentityConfig,
    pub push: &'a PushConfig,
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
pub(crate) mod tests {
    use super::*;

    pub const MINIMAL: &str = r#"
[broker]
backend = "sim"

[identity]
anvendersystem = "cf12c051-39ce-4066-ba11-704b46fa23c4"
cvr = "29189846"

[[dueslag]]
name = "a"
mode = "pull"
queue = "q"
"#;

    #[test]
    fn minimal_is_sim_with_defaults() {
        let c = Config::parse(MINIMAL, "m.toml").unwrap();
        assert_eq!(c.backend(), BackendKind::Sim);
        let s = &c.dueslag_specs()[0];
        assert_eq!(s.interval, Duration::from_secs(30));
        assert_eq!(s.timeout, Duration::from_secs(120));
        assert_eq!(s.unexpected, Unexpected::Hold);
    }

    #[test]
    fn no_backend_is_refused_with_how_to_choose() {
        let text = MINIMAL.replace("[broker]\nbackend = \"sim\"\n", "");
        let e = Config::parse(&text, "m.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("m.toml: broker: no backend chosen")
                && e.contains("backend = \"amqp\"")
                && e.contains("backend = \"sim\""),
            "{e}"
        );
    }

    #[test]
    fn backend_part_ignores_exporter_knobs_and_dueslag() {
        let a = Config::parse(MINIMAL, "m.toml").unwrap();
        let mut b = a.clone();
        b.exporter.probe_endpoint = true;
        b.dueslag[0].name = "b".into();
        b.dueslag[0].interval = Some(Duration::from_secs(5));
        b.defaults.interval = Duration::from_secs(1);
        assert_eq!(a.backend_part(), b.backend_part());
        b.identity.cvr = "12345678".into();
        assert_ne!(a.backend_part(), b.backend_part());
    }

    /// An amqp configuration on the eksterntest preset, with `extra` lines in `[broker]`
    /// and `token` as the `[token]` table.
    pub(crate) fn amqp(extra: &str, token: &str, dueslag: &str) -> String {
        format!(
            r#"
[identity]
anvendersystem = "cf12c051-39ce-4066-ba11-704b46fa23c4"
cvr = "29189846"

[broker]
backend = "amqp"
{extra}
[broker.tls]
cert_file = "client.pem"
key_file = "client.key"

[token]
{token}
{dueslag}"#
        )
    }

    /// The error loading `text` gives.
    fn load_error(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    pub(crate) const PULL: &str = "[[dueslag]]\nname = \"a\"\nmode = \"pull\"\nqueue = \"q\"\n";
    pub(crate) const PUSH: &str = "[[dueslag]]\nname = \"h\"\nmode = \"push\"\n";

    fn entity_ids(t: &TokenConfig) -> [Option<&str>; 2] {
        [t.afsend_entity_id.as_deref(), t.afhent_entity_id.as_deref()]
    }

    #[test]
    fn eksterntest_fills_url_sts_and_entity_ids() {
        let text = amqp("environment = \"eksterntest\"", "source = \"sts\"", PULL);
        let c = Config::parse(&text, "e.toml").unwrap();
        let b = c.broker.as_ref().unwrap();
        assert_eq!(
            b.url.as_ref().unwrap().0,
            "amqps://beskedfordeler.eksterntest-stoettesystemerne.dk:5671/BF"
        );
        let t = c.token.as_ref().unwrap();
        assert_eq!(
            t.sts_url.as_deref(),
            Some("https://n2adgangsstyring.eksterntest-stoettesystemerne.dk/runtime")
        );
        assert_eq!(
            entity_ids(t),
            [
                Some("http://beskedfordeler.eksterntest-stoettesystemerne.dk/service/afsend/1"),
                Some("http://beskedfordeler.eksterntest-stoettesystemerne.dk/service/afhent/1"),
            ]
        );
        let keys: Vec<&str> = c.resolved.iter().map(|r| r.key).collect();
        assert_eq!(
            keys,
            [
                "broker.url",
                "token.sts_url",
                "token.afsend_entity_id",
                "token.afhent_entity_id"
            ]
        );
        let summary = c.resolution_summary().join("\n");
        assert!(
            summary.contains(
                "token.sts_url = https://n2adgangsstyring.eksterntest-stoettesystemerne.dk/runtime (environment = \"eksterntest\"); tokens from POST https://n2adgangsstyring.eksterntest-stoettesystemerne.dk/runtime/api/rest/wstrust/v1/issue"
            ) && summary.contains("services: afsend, afhent"),
            "{summary}"
        );
    }

    #[test]
    fn explicit_keys_override_the_preset() {
        let text = amqp(
            "environment = \"eksterntest\"\nurl = \"amqps://user:hunter2@broker.example:5671/X\"",
            "source = \"sts\"\nsts_url = \"https://sts.example/runtime\"\nafsend_entity_id = \"http://entityid.kombit.dk/service/afsend/2\"",
            PUSH,
        );
        let c = Config::parse(&text, "e.toml").unwrap();
        assert_eq!(
            c.broker.as_ref().unwrap().url.as_ref().unwrap().0,
            "amqps://user:hunter2@broker.example:5671/X"
        );
        let t = c.token.as_ref().unwrap();
        assert_eq!(t.sts_url.as_deref(), Some("https://sts.example/runtime"));
        assert_eq!(
            entity_ids(t),
            [
                Some("http://entityid.kombit.dk/service/afsend/2"),
                Some("http://beskedfordeler.eksterntest-stoettesystemerne.dk/service/afhent/1"),
            ]
        );
        assert_eq!(c.resolved.len(), 1);
        let summary = c.resolution_summary().join("\n");
        assert!(
            !summary.contains("hunter2")
                && summary.contains("broker.url = amqps://user:***@broker.example:5671/X\n")
                && summary.contains("services: afsend (no pull dueslag"),
            "{summary}"
        );
    }

    #[test]
    fn produktion_requires_what_public_sources_disagree_on() {
        let produktion = "environment = \"produktion\"";
        let url = "\nurl = \"amqps://bfo.example:5671/BF\"";
        for (extra, expected) in [
            (
                produktion.to_string(),
                "t.toml: broker.url: required with environment = \"produktion\": public sources disagree",
            ),
            (
                format!("{produktion}{url}"),
                "t.toml: token.afsend_entity_id: required with environment = \"produktion\": public sources disagree",
            ),
        ] {
            let e = load_error(&amqp(&extra, "source = \"sts\"", PULL));
            assert!(e.starts_with(expected), "{e}");
        }
        // With both, only the STS comes from the preset.
        let c = Config::parse(
            &amqp(
                &format!("{produktion}{url}"),
                "source = \"sts\"\nafsend_entity_id = \"s\"\nafhent_entity_id = \"h\"",
                PULL,
            ),
            "p.toml",
        )
        .unwrap();
        assert_eq!(
            c.token.as_ref().unwrap().sts_url.as_deref(),
            Some("https://n2adgangsstyring.stoettesystemerne.dk/runtime")
        );
        assert_eq!(c.resolved.len(), 1);
        // A file token needs no STS settings, so none are filled in.
        let c = Config::parse(
            &amqp(
                "environment = \"eksterntest\"",
                "source = \"file\"\nfile = \"t.xml\"",
                PULL,
            ),
            "f.toml",
        )
        .unwrap();
        assert_eq!(c.token.as_ref().unwrap().sts_url, None);
        assert_eq!(c.resolved.len(), 1);
    }

    #[test]
    fn a_url_without_a_virtual_host_means_bf() {
        for (url, want) in [
            ("amqps://bfo.example:5671", "amqps://bfo.example:5671/BF"),
            ("amqps://bfo.example:5671/", "amqps://bfo.example:5671/BF"),
            (
                "amqps://u:hunter2@bfo.example:5671?heartbeat=30",
                "amqps://u:hunter2@bfo.example:5671/BF?heartbeat=30",
            ),
            (
                "amqps://bfo.example:5671/other",
                "amqps://bfo.example:5671/other",
            ),
            ("amqp://localhost:5672/%2f", "amqp://localhost:5672/%2f"),
        ] {
            let text = amqp(
                &format!("url = \"{url}\""),
                "source = \"sts\"\nsts_url = \"https://s\"\nafsend_entity_id = \"s\"\nafhent_entity_id = \"h\"",
                PULL,
            );
            let c = Config::parse(&text, "v.toml").unwrap();
            assert_eq!(c.broker.as_ref().unwrap().url.as_ref().unwrap().0, want);
            let noted = c.resolved.iter().any(|r| {
                r.key == "broker.url"
                    && r.from.contains("no virtual host")
                    && !r.value.contains("hunter2")
            });
            assert_eq!(noted, url != want, "{url}");
        }
    }

    #[test]
    fn refuses_what_cannot_work_against_kombit() {
        let sts = "source = \"sts\"";
        let sim = MINIMAL.replace(
            "backend = \"sim\"",
            "backend = \"sim\"\nenvironment = \"eksterntest\"",
        );
        for (text, expected) in [
            (
                amqp("url = \"amqp://u:hunter2@bfo.example:5671/BF\"", sts, PULL),
                "broker.url: amqp://u:***@bfo.example:5671/BF speaks plain AMQP to port 5671, the TLS port; use amqps://u:***@bfo.example:5671/BF",
            ),
            (
                amqp("environment = \"staging\"", sts, PULL),
                "unknown variant `staging`, expected `eksterntest` or `produktion`",
            ),
            (
                amqp(
                    "environment = \"eksterntest\"",
                    "source = \"sts\"\nsts_url = \"http://sts.example/runtime\"",
                    PULL,
                ),
                "token.sts_url \"http://sts.example/runtime\": must be an https:// URL",
            ),
            (sim, "broker.environment: presets a real Beskedfordeler"),
        ] {
            let e = load_error(&text);
            assert!(e.contains(expected) && !e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn a_file_token_over_amqps_needs_the_system_certificate() {
        let file = "source = \"file\"\nfile = \"t.xml\"";
        let without = amqp("environment = \"eksterntest\"", file, PULL).replace(
            "cert_file = \"client.pem\"\nkey_file = \"client.key\"\n",
            "",
        );
        let e = load_error(&without);
        assert!(
            e.contains("broker.tls: token.source = \"file\" over amqps:// needs the system certificate (broker.tls.cert_file and key_file, or pkcs12_file)"),
            "{e}"
        );
        Config::parse(&amqp("environment = \"eksterntest\"", file, PULL), "f.toml").unwrap();
        let pkcs12 = without.replace(
            "[broker.tls]\n",
            "[broker.tls]\npkcs12_file = \"c.p12\"\npkcs12_password_file = \"p\"\n",
        );
        Config::parse(&pkcs12, "f.toml").unwrap();
        // Plain AMQP (a test broker) is not KOMBIT's.
        let plain = without.replace(
            "environment = \"eksterntest\"",
            "url = \"amqp://localhost:5672/t\"\nauth = \"plain\"",
        );
        Config::parse(&plain, "f.toml").unwrap();
    }

    #[test]
    fn services_follow_the_modes_and_adding_pull_rebuilds_the_backend() {
        let text = |d: &str| amqp("environment = \"eksterntest\"", "source = \"sts\"", d);
        let push = Config::parse(&text(PUSH), "p.toml").unwrap();
        assert_eq!(push.services(), [Service::Afsend]);
        let both = Config::parse(&text(&format!("{PUSH}{PULL}")), "p.toml").unwrap();
        assert_eq!(both.services(), Service::ALL);
        assert_ne!(push.backend_part(), both.backend_part());
        // Another push dueslag changes nothing global.
        let more = Config::parse(
            &text(&format!("{PUSH}{}", PUSH.replace("\"h\"", "\"h2\""))),
            "p.toml",
        )
        .unwrap();
        assert_eq!(push.backend_part(), more.backend_part());
    }

    #[test]
    fn broker_password_is_masked() {
        let u = BrokerUrl("amqp://user:hunter2@host:5672/BF".into());
        let shown = format!("{u:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"));
    }
}
