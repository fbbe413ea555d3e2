//! The metrics contract of ARCHITECTURE.md §5: the registry, and the one place where outcomes
//! become series.
//!
//! Built on `prometheus-client` (the Prometheus org's crate: maintained, OpenMetrics with
//! exemplars, and a 0.0.4 text encoder). Every known label set of a dueslag is created at 0
//! when the dueslag starts and removed when it stops, so a removed dueslag's series vanish.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::config::Mode;
use crate::outcome::{ConsumeFailure, Observer, Outcome, ProbeResult, ReceivedKind, SendFailure};
use crate::process::ProcessCollector;
use crate::protocol::Service;
use crate::web::Reason;

/// The labels every series of a dueslag starts with: `dueslag`, then its static labels
/// (`[[dueslag]] labels`, sorted by name). One shared allocation per dueslag.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct DueslagKey {
    pub name: Arc<str>,
    pub labels: Arc<[(String, String)]>,
}

impl DueslagKey {
    pub fn new(name: &str, labels: &[(String, String)]) -> Self {
        DueslagKey {
            name: Arc::from(name),
            labels: Arc::from(labels),
        }
    }
}

impl EncodeLabelSet for DueslagKey {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("dueslag", &*self.name).encode(encoder.encode_label())?;
        for (k, v) in self.labels.iter() {
            (k.as_str(), v.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DueslagLabel {
    #[prometheus(flatten)]
    pub dueslag: DueslagKey,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DueslagMode {
    #[prometheus(flatten)]
    pub dueslag: DueslagKey,
    pub mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    #[prometheus(flatten)]
    pub dueslag: DueslagKey,
    pub mode: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    #[prometheus(flatten)]
    pub dueslag: DueslagKey,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    #[prometheus(flatten)]
    pub dueslag: DueslagKey,
    pub mode: &'static str,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: &'static str,
    /// The municipality the token is issued for.
    pub cvr: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabel {
    pub connection: &'static str,
    /// The municipality whose token authenticates the connection.
    pub cvr: Arc<str>,
}

/// `listener` (and `reason`) of the HTTP series, as label pairs.
type ListenerLabel = [(&'static str, &'static str); 1];
type RejectLabels = [(&'static str, &'static str); 2];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabel {
    pub r#use: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    pub shard: String,
    pub shards: String,
}

/// What a certificate the exporter holds is for: `broker` and `sts` are the client
/// certificate of `[broker.tls]` (one file, two uses), `push` the push listener's server
/// certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateUse {
    Broker,
    Push,
    Sts,
}

impl CertificateUse {
    pub const ALL: [CertificateUse; 3] = [
        CertificateUse::Broker,
        CertificateUse::Push,
        CertificateUse::Sts,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CertificateUse::Broker => "broker",
            CertificateUse::Push => "push",
            CertificateUse::Sts => "sts",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub revision: &'static str,
}

/// The exemplar attached to latency observations.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BeskedExemplar {
    pub besked_id: String,
}

type Timestamp = Gauge<f64, AtomicU64>;
type Seconds = Gauge<f64, AtomicU64>;
type Latency = HistogramWithExemplars<BeskedExemplar>;

/// Makes histograms with a fixed set of buckets.
#[derive(Clone, Debug)]
pub struct Buckets(Arc<[f64]>);

impl MetricConstructor<Latency> for Buckets {
    fn new_metric(&self) -> Latency {
        HistogramWithExemplars::new(self.0.iter().copied())
    }
}

/// Send (publish → StandardRetur) buckets: 5 ms to 30 s.
const SEND_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every family of the contract. Cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    probes: Family<ProbeLabels, Counter>,
    roundtrip: Family<DueslagMode, Latency, Buckets>,
    send_duration: Family<DueslagLabel, Latency, Buckets>,
    send_failures: Family<ReasonLabels, Counter>,
    consume_failures: Family<ReasonLabels, Counter>,
    received: Family<KindLabels, Counter>,
    lost: Family<DueslagMode, Counter>,
    last_success: Family<DueslagMode, Timestamp>,
    last_attempt: Family<DueslagMode, Timestamp>,
    probe_success: Family<DueslagMode, Gauge>,
    inflight: Family<DueslagLabel, Gauge>,
    held: Family<DueslagLabel, Gauge>,
    consumer_paused: Family<DueslagLabel, Gauge>,
    probe_interval: Family<DueslagLabel, Seconds>,
    probe_timeout: Family<DueslagLabel, Seconds>,
    dueslag_started: Family<DueslagLabel, Timestamp>,
    certificate_expiry: Family<CertificateLabel, Timestamp>,
    shard_info: Family<ShardLabels, Gauge>,
    shards: Gauge,
    token_expiry: Family<ServiceLabel, Timestamp>,
    token_renewal_failures: Family<ServiceLabel, Counter>,
    connection_up: Family<ConnectionLabel, Gauge>,
    connection_rotations: Family<ConnectionLabel, Counter>,
    backend: Family<BackendLabel, Gauge>,
    http_rejected: Family<RejectLabels, Counter>,
    http_open: Family<ListenerLabel, Gauge>,
    reload_ok: Gauge,
    reload_time: Timestamp,
    /// The label prefix each running dueslag's series were created with, by name: what
    /// removes them again, even after a reload changed its static labels.
    keys: Arc<std::sync::Mutex<std::collections::HashMap<String, DueslagKey>>>,
}

/// Version and revision of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = match option_env!("BFO_ALIVE_REVISION") {
    Some(r) => r,
    None => "unknown",
};

impl Metrics {
    /// A registry with every global series; `roundtrip_buckets` in seconds.
    pub fn new(roundtrip_buckets: &[f64]) -> Metrics {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector::new()));
        let reg = root.sub_registry_with_prefix("bfo_alive");

        let rt = Buckets(roundtrip_buckets.into());
        let send = Buckets(SEND_BUCKETS.as_slice().into());
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            probes: Family::default(),
            roundtrip: Family::new_with_constructor(rt),
            send_duration: Family::new_with_constructor(send),
            send_failures: Family::default(),
            consume_failures: Family::default(),
            received: Family::default(),
            lost: Family::default(),
            last_success: Family::default(),
            last_attempt: Family::default(),
            probe_success: Family::default(),
            inflight: Family::default(),
            held: Family::default(),
            consumer_paused: Family::default(),
            probe_interval: Family::default(),
            probe_timeout: Family::default(),
            dueslag_started: Family::default(),
            certificate_expiry: Family::default(),
            shard_info: Family::default(),
            shards: Gauge::default(),
            token_expiry: Family::default(),
            token_renewal_failures: Family::default(),
            connection_up: Family::default(),
            connection_rotations: Family::default(),
            backend: Family::default(),
            http_rejected: Family::default(),
            http_open: Family::default(),
            reload_ok: Gauge::default(),
            reload_time: Timestamp::default(),
            keys: Arc::default(),
        };
        reg.register("probes", "Finished probes by result.", m.probes.clone());
        reg.register_with_unit(
            "roundtrip_duration",
            "Time from sending an Alive message to receiving it in the dueslag.",
            Unit::Seconds,
            m.roundtrip.clone(),
        );
        reg.register_with_unit(
            "send_duration",
            "Time from publishing to the Afsend StandardRetur reply with StatusKode 20.",
            Unit::Seconds,
            m.send_duration.clone(),
        );
        reg.register(
            "send_failures",
            "Failed Afsend calls by reason.",
            m.send_failures.clone(),
        );
        reg.register(
            "consume_failures",
            "Pull consumers of a dueslag that could not start or were ended, by reason.",
            m.consume_failures.clone(),
        );
        reg.register(
            "received",
            "Messages that arrived in a dueslag, by kind.",
            m.received.clone(),
        );
        reg.register(
            "lost",
            "Probes that timed out and never arrived, not even late.",
            m.lost.clone(),
        );
        reg.register_with_unit(
            "last_success_timestamp",
            "When the last probe succeeded (Unix time).",
            Unit::Seconds,
            m.last_success.clone(),
        );
        reg.register_with_unit(
            "last_attempt_timestamp",
            "When the last probe was sent (Unix time).",
            Unit::Seconds,
            m.last_attempt.clone(),
        );
        reg.register(
            "probe_success",
            "Outcome of the last finished probe (1 = success).",
            m.probe_success.clone(),
        );
        reg.register(
            "inflight",
            "Probes sent and not yet received or timed out.",
            m.inflight.clone(),
        );
        reg.register(
            "held_messages",
            "Non-Alive messages held unacknowledged in a pull dueslag (they stay in the broker).",
            m.held.clone(),
        );
        reg.register(
            "consumer_paused",
            "1 when a pull dueslag stopped consuming because too many non-Alive messages are held.",
            m.consumer_paused.clone(),
        );
        // What the no-success alert scales its limit by and counts from.
        for (name, help, family) in [
            (
                "probe_interval",
                "Configured time between two probes of the dueslag.",
                &m.probe_interval,
            ),
            (
                "probe_timeout",
                "Configured time a probe waits for its message before it times out.",
                &m.probe_timeout,
            ),
            (
                "dueslag_started_timestamp",
                "When the probe loop of the dueslag (re)started: at start, or a reload that added or changed it (Unix time).",
                &m.dueslag_started,
            ),
        ] {
            reg.register_with_unit(name, help, Unit::Seconds, family.clone());
        }
        reg.register_with_unit(
            "certificate_expiry_timestamp",
            "When a certificate the exporter holds expires (notAfter, Unix time), by use: broker, sts (the client certificate of [broker.tls]), push (the push listener's).",
            Unit::Seconds,
            m.certificate_expiry.clone(),
        );
        reg.register(
            "shard_info",
            "1 for this replica's shard of --shard=i/n (1 of 1 without --shard).",
            m.shard_info.clone(),
        );
        reg.register(
            "shards",
            "Number of shards the dueslag are split into (n of --shard=i/n, 1 without).",
            m.shards.clone(),
        );
        reg.register_with_unit(
            "token_expiry_timestamp",
            "When the current token expires (Unix time).",
            Unit::Seconds,
            m.token_expiry.clone(),
        );
        reg.register(
            "token_renewal_failures",
            "Failed attempts to obtain or renew a token.",
            m.token_renewal_failures.clone(),
        );
        reg.register(
            "connection_up",
            "1 when the broker connection is open.",
            m.connection_up.clone(),
        );
        reg.register(
            "connection_rotations",
            "Connections replaced by a new one at [broker] max_connection_age (make before break).",
            m.connection_rotations.clone(),
        );
        reg.register(
            "config_last_reload_successful",
            "1 when the last configuration (re)load succeeded.",
            m.reload_ok.clone(),
        );
        reg.register_with_unit(
            "config_last_reload_success_timestamp",
            "When the configuration was last loaded successfully (Unix time).",
            Unit::Seconds,
            m.reload_time.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: VERSION,
                revision: REVISION,
            })
            .set(1);
        reg.register(
            "exporter_build_info",
            "Version and revision of the exporter.",
            build,
        );
        reg.register(
            "backend_info",
            "1 for the backend the dueslag are probed on: amqp (a Beskedfordeler or RabbitMQ) or sim (the embedded simulator, nothing real).",
            m.backend.clone(),
        );
        reg.register(
            "http_connections_rejected",
            "HTTP connections and requests cut or refused, by listener and reason (limit, header_timeout, body_timeout, idle, tls_handshake, tls_error, push_busy).",
            m.http_rejected.clone(),
        );
        reg.register(
            "http_connections_open",
            "Open HTTP connections, by listener (main, push).",
            m.http_open.clone(),
        );
        // The token and connection series appear per municipality (`cvr`) when the
        // backend makes its tokens and connections (crate::backend).
        m.set_shard(None);
        Metrics {
            registry: Arc::new(root),
            ..m
        }
    }

    /// Creates every series of a dueslag at 0 and returns its observer.
    pub fn dueslag(&self, name: &str, mode: Mode) -> DueslagMetrics {
        self.dueslag_labelled(name, mode, &[])
    }

    /// [`Metrics::dueslag`] with static labels on every series (`[[dueslag]] labels`).
    pub fn dueslag_labelled(
        &self,
        name: &str,
        mode: Mode,
        labels: &[(String, String)],
    ) -> DueslagMetrics {
        let key = DueslagKey::new(name, labels);
        self.keys
            .lock()
            .unwrap()
            .insert(name.to_string(), key.clone());
        let k = SeriesKeys::new(key, mode);
        DueslagMetrics {
            probes: k.probes.map(|l| self.probes.get_or_create_owned(&l)),
            roundtrip: self.roundtrip.get_or_create_owned(&k.dm),
            send_duration: self.send_duration.get_or_create_owned(&k.dl),
            send_failures: k
                .reasons
                .map(|l| self.send_failures.get_or_create_owned(&l)),
            consume_failures: k
                .consume_reasons
                .map(|ls| ls.map(|l| self.consume_failures.get_or_create_owned(&l))),
            received: k.kinds.map(|l| self.received.get_or_create_owned(&l)),
            lost: self.lost.get_or_create_owned(&k.dm),
            last_success: self.last_success.get_or_create_owned(&k.dm),
            last_attempt: self.last_attempt.get_or_create_owned(&k.dm),
            probe_success: self.probe_success.get_or_create_owned(&k.dm),
            inflight: self.inflight.get_or_create_owned(&k.dl),
            held: self.held.get_or_create_owned(&k.dl),
            consumer_paused: self.consumer_paused.get_or_create_owned(&k.dl),
        }
    }

    /// Removes every series of a dueslag.
    pub fn remove_dueslag(&self, name: &str, mode: Mode) {
        let key = self.keys.lock().unwrap().remove(name);
        let k = SeriesKeys::new(key.unwrap_or_else(|| DueslagKey::new(name, &[])), mode);
        for l in &k.probes {
            self.probes.remove(l);
        }
        for l in &k.reasons {
            self.send_failures.remove(l);
        }
        for l in k.consume_reasons.iter().flatten() {
            self.consume_failures.remove(l);
        }
        for l in &k.kinds {
            self.received.remove(l);
        }
        self.roundtrip.remove(&k.dm);
        self.lost.remove(&k.dm);
        for family in [&self.last_success, &self.last_attempt] {
            family.remove(&k.dm);
        }
        self.probe_success.remove(&k.dm);
        self.send_duration.remove(&k.dl);
        for family in [&self.inflight, &self.held, &self.consumer_paused] {
            family.remove(&k.dl);
        }
        for family in [
            &self.probe_interval,
            &self.probe_timeout,
            &self.dueslag_started,
        ] {
            family.remove(&k.dl);
        }
    }

    /// Records that the loop of a dueslag (re)started `at`, with its interval and timeout:
    /// what the no-success alert measures a dueslag that has not succeeded yet from, and
    /// scales its threshold by.
    pub fn dueslag_started(
        &self,
        name: &str,
        interval: Duration,
        timeout: Duration,
        at: SystemTime,
    ) {
        let key = self.keys.lock().unwrap().get(name).cloned();
        let l = DueslagLabel {
            dueslag: key.unwrap_or_else(|| DueslagKey::new(name, &[])),
        };
        self.probe_interval
            .get_or_create(&l)
            .set(interval.as_secs_f64());
        self.probe_timeout
            .get_or_create(&l)
            .set(timeout.as_secs_f64());
        self.dueslag_started.get_or_create(&l).set(unix_seconds(at));
    }

    /// Sets when the certificate of `use_` expires; `None` removes the series (no such
    /// certificate is held).
    pub fn set_certificate_expiry(&self, use_: CertificateUse, not_after: Option<SystemTime>) {
        let l = CertificateLabel {
            r#use: use_.as_str(),
        };
        match not_after {
            Some(t) => {
                self.certificate_expiry
                    .get_or_create(&l)
                    .set(unix_seconds(t));
            }
            None => {
                self.certificate_expiry.remove(&l);
            }
        }
    }

    /// Sets `bfo_alive_shard_info` and `bfo_alive_shards` for `--shard=i/n` (1 of 1 without).
    pub fn set_shard(&self, shard: Option<crate::shard::Shard>) {
        let (index, count) = shard.map_or((1, 1), |s| (s.index, s.count));
        self.shard_info.clear();
        self.shard_info
            .get_or_create(&ShardLabels {
                shard: index.to_string(),
                shards: count.to_string(),
            })
            .set(1);
        self.shards.set(i64::from(count));
    }

    /// The HTTP series of one listener (`main`, `push`), every reason at 0.
    pub fn http(&self, listener: &'static str) -> HttpMetrics {
        HttpMetrics {
            rejected: Reason::ALL.map(|r| {
                self.http_rejected
                    .get_or_create_owned(&[("listener", listener), ("reason", r.as_str())])
            }),
            open: self
                .http_open
                .get_or_create_owned(&[("listener", listener)]),
        }
    }

    /// Sets `bfo_alive_backend_info`: one series, for the backend in use.
    pub fn set_backend(&self, backend: &'static str) {
        self.backend.clear();
        self.backend.get_or_create(&BackendLabel { backend }).set(1);
    }

    pub fn set_connection_up(&self, role: Service, cvr: &str, up: bool) {
        self.connection_up
            .get_or_create(&connection_label(role, cvr))
            .set(i64::from(up));
    }

    /// Removes the `bfo_alive_connection_up` series of a connection the backend does not
    /// open (afhent without a pull dueslag, a municipality no dueslag belongs to any
    /// more), so that no alert waits for it to come up.
    pub fn remove_connection(&self, role: Service, cvr: &str) {
        let l = connection_label(role, cvr);
        self.connection_up.remove(&l);
        self.connection_rotations.remove(&l);
    }

    /// Removes every connection series (a new backend reports its own).
    pub fn clear_connections(&self) {
        self.connection_up.clear();
        self.connection_rotations.clear();
    }

    /// Counts a connection replaced before `max_connection_age`.
    pub fn connection_rotated(&self, role: Service, cvr: &str) {
        self.connection_rotations
            .get_or_create(&connection_label(role, cvr))
            .inc();
    }

    pub fn set_token_expiry(&self, role: Service, cvr: &str, expiry: Option<SystemTime>) {
        self.token_expiry
            .get_or_create(&service_label(role, cvr))
            .set(expiry.map_or(0.0, unix_seconds));
    }

    /// Creates the token series of (`role`, `cvr`) at 0: no token yet, no failure.
    pub fn token_started(&self, role: Service, cvr: &str) {
        let l = service_label(role, cvr);
        self.token_expiry.get_or_create(&l).set(0.0);
        let _ = self.token_renewal_failures.get_or_create(&l);
    }

    pub fn token_renewal_failed(&self, role: Service, cvr: &str) {
        self.token_renewal_failures
            .get_or_create(&service_label(role, cvr))
            .inc();
    }

    /// Removes the token series of a municipality no dueslag belongs to any more.
    pub fn remove_token(&self, role: Service, cvr: &str) {
        let l = service_label(role, cvr);
        self.token_expiry.remove(&l);
        self.token_renewal_failures.remove(&l);
    }

    /// Removes every token series (a new backend reports its own).
    pub fn clear_tokens(&self) {
        self.token_expiry.clear();
        self.token_renewal_failures.clear();
    }

    pub fn config_loaded(&self, ok: bool) {
        self.reload_ok.set(i64::from(ok));
        if ok {
            self.reload_time.set(unix_seconds(SystemTime::now()));
        }
    }

    /// Writes the whole exposition in `format` to `out`.
    pub fn encode(&self, format: Format, out: &mut impl fmt::Write) -> fmt::Result {
        match format {
            Format::Text => {
                prometheus_client::encoding::prometheus_text::encode(out, &self.registry)
            }
            Format::OpenMetrics => prometheus_client::encoding::text::encode(out, &self.registry),
        }
    }

    /// The whole exposition as one string (tests and small registries; `/metrics`
    /// streams it instead, see [`crate::exposition`]).
    pub fn render(&self, format: Format) -> String {
        let mut out = String::new();
        self.encode(format, &mut out)
            .expect("writing to a String cannot fail");
        out
    }
}

/// What one HTTP listener counts: connections open, and what was cut and why.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    rejected: [Counter; Reason::ALL.len()],
    open: Gauge,
}

impl HttpMetrics {
    pub fn rejected(&self, reason: Reason) {
        self.rejected[reason as usize].inc();
    }

    /// Counts a connection open until the returned guard drops.
    pub fn opened(&self) -> OpenConnection {
        self.open.inc();
        OpenConnection(self.open.clone())
    }
}

/// One open connection in `bfo_alive_http_connections_open`.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The exposition formats `/metrics` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4 (no exemplars).
    Text,
    /// OpenMetrics 1.0 text, with exemplars.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the scraper's `Accept` header asks for it, else text 0.0.4.
    pub fn negotiate(accept: Option<&str>) -> Format {
        if accept.is_some_and(|v| v.contains("application/openmetrics-text")) {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn connection_label(role: Service, cvr: &str) -> ConnectionLabel {
    ConnectionLabel {
        connection: role.as_str(),
        cvr: Arc::from(cvr),
    }
}

fn service_label(role: Service, cvr: &str) -> ServiceLabel {
    ServiceLabel {
        service: role.as_str(),
        cvr: Arc::from(cvr),
    }
}

/// Every label set of one dueslag, in the order of [`ProbeResult::LABELS`],
/// [`SendFailure::ALL`] and [`ReceivedKind::ALL`].
struct SeriesKeys {
    dm: DueslagMode,
    dl: DueslagLabel,
    probes: [ProbeLabels; 3],
    reasons: [ReasonLabels; SendFailure::ALL.len()],
    /// Pull dueslag only: a push dueslag has no consumer.
    consume_reasons: Option<[ReasonLabels; ConsumeFailure::ALL.len()]>,
    kinds: [KindLabels; ReceivedKind::ALL.len()],
}

impl SeriesKeys {
    fn new(key: DueslagKey, mode: Mode) -> Self {
        // One shared name and label list for every label set of a dueslag (10,000
        // dueslag: ~9 MB less than a String each).
        let dueslag = || key.clone();
        SeriesKeys {
            dm: DueslagMode {
                dueslag: dueslag(),
                mode: mode.as_str(),
            },
            dl: DueslagLabel { dueslag: dueslag() },
            probes: ProbeResult::LABELS.map(|result| ProbeLabels {
                dueslag: dueslag(),
                mode: mode.as_str(),
                result,
            }),
            reasons: SendFailure::ALL.map(|r| ReasonLabels {
                dueslag: dueslag(),
                reason: r.as_str(),
            }),
            consume_reasons: (mode == Mode::Pull).then(|| {
                ConsumeFailure::ALL.map(|r| ReasonLabels {
                    dueslag: dueslag(),
                    reason: r.as_str(),
                })
            }),
            kinds: ReceivedKind::ALL.map(|k| KindLabels {
                dueslag: dueslag(),
                mode: mode.as_str(),
                kind: k.as_str(),
            }),
        }
    }
}

/// The series of one dueslag; turns its outcomes into metric updates.
pub struct DueslagMetrics {
    /// success, timeout, send_error: as [`ProbeResult::LABELS`].
    probes: [Counter; 3],
    roundtrip: Latency,
    send_duration: Latency,
    send_failures: [Counter; SendFailure::ALL.len()],
    consume_failures: Option<[Counter; ConsumeFailure::ALL.len()]>,
    received: [Counter; ReceivedKind::ALL.len()],
    lost: Counter,
    last_success: Timestamp,
    last_attempt: Timestamp,
    probe_success: Gauge,
    inflight: Gauge,
    held: Gauge,
    consumer_paused: Gauge,
}

impl Observer for DueslagMetrics {
    fn observe(&self, outcome: Outcome) {
        match outcome {
            Outcome::Attempt { at, .. } => {
                self.last_attempt.set(unix_seconds(at));
            }
            Outcome::Sent { duration } => {
                self.send_duration
                    .observe(duration.as_secs_f64(), None, None)
            }
            Outcome::SendFailed { reason, .. } => {
                let i = SendFailure::ALL
                    .iter()
                    .position(|r| *r == reason)
                    .unwrap_or(0);
                self.send_failures[i].inc();
            }
            Outcome::Finished {
                besked_id,
                result,
                at,
            } => match result {
                ProbeResult::Success { roundtrip } => {
                    self.probes[0].inc();
                    self.roundtrip.observe(
                        roundtrip.as_secs_f64(),
                        Some(BeskedExemplar {
                            besked_id: besked_id.to_string(),
                        }),
                        Some(at),
                    );
                    self.last_success.set(unix_seconds(at));
                    self.probe_success.set(1);
                }
                ProbeResult::Timeout => {
                    self.probes[1].inc();
                    self.probe_success.set(0);
                }
                ProbeResult::SendError(_) => {
                    self.probes[2].inc();
                    self.probe_success.set(0);
                }
            },
            Outcome::Received { kind, .. } => {
                let i = ReceivedKind::ALL
                    .iter()
                    .position(|k| *k == kind)
                    .unwrap_or(0);
                self.received[i].inc();
            }
            Outcome::Lost { .. } => {
                self.lost.inc();
            }
            Outcome::Inflight(n) => {
                self.inflight.set(n as i64);
            }
            Outcome::Held { count, paused } => {
                self.held.set(count as i64);
                self.consumer_paused.set(i64::from(paused));
            }
            Outcome::ConsumeFailed { reason, .. } => {
                let i = ConsumeFailure::ALL
                    .iter()
                    .position(|r| *r == reason)
                    .unwrap_or(0);
                if let Some(c) = &self.consume_failures {
                    c[i].inc();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use uuid::Uuid;

    #[test]
    fn every_label_set_starts_at_zero_and_goes_away() {
        let m = Metrics::new(&crate::config::default_buckets());
        let d = m.dueslag("sag-pull", Mode::Pull);
        let text = m.render(Format::Text);
        for needle in [
            r#"bfo_alive_probes_total{dueslag="sag-pull",mode="pull",result="send_error"} 0"#,
            r#"bfo_alive_send_failures_total{dueslag="sag-pull",reason="unroutable"} 0"#,
            r#"bfo_alive_send_failures_total{dueslag="sag-pull",reason="invalid_reply"} 0"#,
            r#"bfo_alive_received_total{dueslag="sag-pull",mode="pull",kind="out_of_order"} 0"#,
            r#"bfo_alive_received_total{dueslag="sag-pull",mode="pull",kind="misrouted"} 0"#,
            r#"bfo_alive_roundtrip_duration_seconds_count{dueslag="sag-pull",mode="pull"} 0"#,
            r#"bfo_alive_consume_failures_total{dueslag="sag-pull",reason="queue_missing"} 0"#,
            r#"bfo_alive_exporter_build_info{version=""#,
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        let id = Uuid::new_v4();
        d.observe(Outcome::Finished {
            besked_id: id,
            result: ProbeResult::Success {
                roundtrip: Duration::from_millis(30),
            },
            at: SystemTime::now(),
        });
        let om = m.render(Format::OpenMetrics);
        assert!(
            om.contains(&format!("# {{besked_id=\"{id}\"}} 0.03")),
            "{om}"
        );
        assert!(!m.render(Format::Text).contains("besked_id"));
        d.observe(Outcome::ConsumeFailed {
            reason: ConsumeFailure::QueueMissing,
            detail: "NOT_FOUND".into(),
        });
        assert!(m.render(Format::Text).contains(
            r#"bfo_alive_consume_failures_total{dueslag="sag-pull",reason="queue_missing"} 1"#
        ));
        // A push dueslag has no consumer, so no consume series.
        let push = m.dueslag("sag-push", Mode::Push);
        push.observe(Outcome::ConsumeFailed {
            reason: ConsumeFailure::Connection,
            detail: String::new(),
        });
        assert!(
            !m.render(Format::Text)
                .contains(r#"bfo_alive_consume_failures_total{dueslag="sag-push""#)
        );
        m.remove_dueslag("sag-push", Mode::Push);
        m.remove_dueslag("sag-pull", Mode::Pull);
        assert!(!m.render(Format::Text).contains("sag-pull"));
    }

    #[test]
    fn static_labels_are_on_every_series_of_a_dueslag_and_go_with_it() {
        let m = Metrics::new(&[1.0]);
        let labels = [
            ("kommune".to_string(), "aarhus".to_string()),
            ("team".to_string(), "sag".to_string()),
        ];
        let _d = m.dueslag_labelled("aarhus-sag", Mode::Pull, &labels);
        m.dueslag_started(
            "aarhus-sag",
            Duration::from_secs(30),
            Duration::from_secs(120),
            SystemTime::now(),
        );
        let text = m.render(Format::Text);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(r#"dueslag="aarhus-sag""#))
            .collect();
        // Every per-dueslag family: probes, round trip, send, failures, received, lost,
        // timestamps, gauges, schedule.
        assert!(lines.len() > 40, "{text}");
        for l in &lines {
            assert!(
                l.contains(r#"dueslag="aarhus-sag",kommune="aarhus",team="sag""#),
                "{l}"
            );
        }
        m.set_token_expiry(
            Service::Afsend,
            "55133018",
            Some(UNIX_EPOCH + Duration::from_secs(5)),
        );
        m.set_connection_up(Service::Afsend, "55133018", true);
        let text = m.render(Format::Text);
        assert!(text.contains(
            r#"bfo_alive_token_expiry_timestamp_seconds{service="afsend",cvr="55133018"} 5"#
        ));
        assert!(text.contains(r#"bfo_alive_connection_up{connection="afsend",cvr="55133018"} 1"#));
        // Removed by name, with the labels it was created with.
        m.remove_dueslag("aarhus-sag", Mode::Pull);
        m.remove_connection(Service::Afsend, "55133018");
        m.remove_token(Service::Afsend, "55133018");
        let text = m.render(Format::Text);
        assert!(!text.contains("aarhus"), "{text}");
        assert!(!text.contains("55133018"), "{text}");
    }

    #[test]
    fn schedule_and_start_of_a_dueslag_go_with_it() {
        let m = Metrics::new(&[1.0]);
        let _d = m.dueslag("sag-push", Mode::Push);
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        m.dueslag_started(
            "sag-push",
            Duration::from_secs(900),
            Duration::from_millis(120_500),
            at,
        );
        let text = m.render(Format::Text);
        for needle in [
            r#"bfo_alive_probe_interval_seconds{dueslag="sag-push"} 900"#,
            r#"bfo_alive_probe_timeout_seconds{dueslag="sag-push"} 120.5"#,
            r#"bfo_alive_dueslag_started_timestamp_seconds{dueslag="sag-push"} 1800000000"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        // A restart moves the start.
        m.dueslag_started(
            "sag-push",
            Duration::from_secs(900),
            Duration::from_secs(120),
            at + Duration::from_secs(60),
        );
        assert!(m.render(Format::Text).contains(
            r#"bfo_alive_dueslag_started_timestamp_seconds{dueslag="sag-push"} 1800000060"#
        ));
        m.remove_dueslag("sag-push", Mode::Push);
        assert!(!m.render(Format::Text).contains("sag-push"));
    }

    #[test]
    fn certificate_expiry_by_use_and_shard_info() {
        let m = Metrics::new(&[1.0]);
        let text = m.render(Format::Text);
        assert!(!text.contains("bfo_alive_certificate_expiry_timestamp_seconds{"));
        assert!(text.contains(r#"bfo_alive_shard_info{shard="1",shards="1"} 1"#));
        assert!(text.contains("bfo_alive_shards 1"));

        let at = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        for u in CertificateUse::ALL {
            m.set_certificate_expiry(u, Some(at));
        }
        let text = m.render(Format::Text);
        for u in ["broker", "push", "sts"] {
            let needle = format!(
                r#"bfo_alive_certificate_expiry_timestamp_seconds{{use="{u}"}} 1900000000"#
            );
            assert!(text.contains(&needle), "missing {needle} in\n{text}");
        }
        m.set_certificate_expiry(CertificateUse::Sts, None);
        assert!(!m.render(Format::Text).contains(r#"{use="sts"}"#));

        m.set_shard(Some("2/3".parse().unwrap()));
        let text = m.render(Format::Text);
        assert!(text.contains(r#"bfo_alive_shard_info{shard="2",shards="3"} 1"#));
        assert!(!text.contains(r#"shard="1""#));
        assert!(text.contains("bfo_alive_shards 3"));
    }
}
