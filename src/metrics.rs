//! The metrics contract of ARCHITECTURE.md §5: the registry, and the one place where outcomes
//! become series.
//!
//! Built on `prometheus-client` (the Prometheus org's crate: maintained, OpenMetrics with
//! exemplars, and a 0.0.4 text encoder). Every known label set of a dueslag is created at 0
//! when the dueslag starts and removed when it stops, so a removed dueslag's series vanish;
//! the failure reasons are exposed only once they count ([`SparseCounter`]). Native
//! histograms and the protobuf exposition of the per-dueslag series: [`crate::native`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Metric, Registry, Unit};
use prost::Message as _;

use crate::config::{Histograms, Mode};
use crate::native::{self, NativeHistogram};
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
type Classic = HistogramWithExemplars<BeskedExemplar>;

/// Makes classic histograms with a fixed set of buckets.
#[derive(Clone, Debug)]
pub struct Buckets(Arc<[f64]>);

impl MetricConstructor<Classic> for Buckets {
    fn new_metric(&self) -> Classic {
        HistogramWithExemplars::new(self.0.iter().copied())
    }
}

/// Makes native histograms, with the given classic buckets beside them (`+Inf` only when
/// empty): text and OpenMetrics, which cannot carry native buckets, encode those.
#[derive(Clone, Debug)]
pub struct NativeBuckets(Arc<[f64]>);

impl MetricConstructor<NativeHistogram> for NativeBuckets {
    fn new_metric(&self) -> NativeHistogram {
        NativeHistogram::new(&self.0)
    }
}

/// One latency histogram of a dueslag, as `[exporter] histograms` wants it: classic
/// buckets with exemplars (text and OpenMetrics), native buckets (protobuf; with `native`
/// also the text formats' `+Inf` bucket), or both.
#[derive(Clone, Debug)]
pub struct Latency {
    classic: Option<Classic>,
    native: Option<NativeHistogram>,
}

impl Latency {
    fn observe(&self, v: f64, exemplar: impl FnOnce() -> BeskedExemplar, at: Option<SystemTime>) {
        if let Some(c) = &self.classic {
            c.observe(v, Some(exemplar()), at);
        }
        if let Some(n) = &self.native {
            n.observe(v);
        }
    }
}

/// The families behind [`Latency`].
#[derive(Clone, Debug)]
struct LatencyFamily<K> {
    classic: Option<Family<K, Classic, Buckets>>,
    native: Option<Family<K, NativeHistogram, NativeBuckets>>,
}

impl<K> LatencyFamily<K>
where
    K: Clone + std::hash::Hash + Eq + EncodeLabelSet + fmt::Debug + Send + Sync + 'static,
{
    fn new(mode: Histograms, buckets: &[f64]) -> Self {
        // `native`: the classic side is the `+Inf` bucket (with `_count` and `_sum`) for
        // text scrapers; `both`: the protobuf histogram carries the classic buckets too,
        // as client_golang's does (Prometheus keeps them with scrape_classic_histograms).
        let beside: &[f64] = if mode == Histograms::Native {
            &[]
        } else {
            buckets
        };
        LatencyFamily {
            classic: (mode != Histograms::Native)
                .then(|| Family::new_with_constructor(Buckets(buckets.into()))),
            native: mode
                .native()
                .then(|| Family::new_with_constructor(NativeBuckets(beside.into()))),
        }
    }

    /// The text formats get the classic histograms (exemplars and all) when there are
    /// any, else the native ones' `+Inf` bucket; protobuf is written from the native ones
    /// ([`Metrics::encode_protobuf`]).
    fn register(&self, reg: &mut Parts, name: &'static str, help: &str) {
        if let Some(f) = &self.classic {
            reg.register_with_unit(name, help, Unit::Seconds, f.clone());
        } else if let Some(f) = &self.native {
            reg.register_with_unit(name, help, Unit::Seconds, f.clone());
        }
    }

    fn get_or_create(&self, k: &K) -> Latency {
        Latency {
            classic: self.classic.as_ref().map(|f| f.get_or_create_owned(k)),
            native: self.native.as_ref().map(|f| f.get_or_create_owned(k)),
        }
    }

    fn remove(&self, k: &K) {
        if let Some(f) = &self.classic {
            f.remove(k);
        }
        if let Some(f) = &self.native {
            f.remove(k);
        }
    }
}

/// A counter that is exposed only once it has counted: the rare reasons of a dueslag
/// (`send_failures`, `consume_failures`) cost no series while they do not happen.
/// Kept in its family from the start, so it goes with the dueslag like every other series.
#[derive(Clone, Debug, Default)]
pub struct SparseCounter(Counter);

impl SparseCounter {
    fn inc(&self) {
        self.0.inc();
    }
}

impl TypedMetric for SparseCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for SparseCounter {
    fn encode(&self, encoder: MetricEncoder) -> fmt::Result {
        if self.0.get() == 0 {
            return Ok(());
        }
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Which expositions a registry part is in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Scope {
    /// Every format: the global families (protobuf through `prometheus-client`).
    #[default]
    All,
    /// The per-dueslag families: text 0.0.4 and OpenMetrics; protobuf writes them itself.
    Text,
}

/// The exposition as small registries, one per family (and one for the process
/// collector), so that the protobuf exposition can take the global ones from the crate
/// and write the per-dueslag ones itself.
#[derive(Debug, Default)]
struct Parts {
    parts: Vec<(Scope, Registry)>,
    /// Where the next registered family goes.
    scope: Scope,
    /// The help of every per-dueslag family, by its registered name, as the crate writes it.
    helps: HashMap<&'static str, String>,
}

impl Parts {
    fn part(&mut self, name: &'static str, help: &str) -> &mut Registry {
        if self.scope == Scope::Text {
            self.helps.insert(name, format!("{help}."));
        }
        self.parts
            .push((self.scope, Registry::with_prefix("bfo_alive")));
        &mut self.parts.last_mut().expect("just pushed").1
    }

    fn register(&mut self, name: &'static str, help: &str, metric: impl Metric) {
        self.part(name, help).register(name, help, metric);
    }

    fn register_with_unit(
        &mut self,
        name: &'static str,
        help: &str,
        unit: Unit,
        metric: impl Metric,
    ) {
        self.part(name, help)
            .register_with_unit(name, help, unit, metric);
    }
}

/// Send (publish → StandardRetur) buckets: 5 ms to 30 s.
const SEND_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every family of the contract. Cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    parts: Arc<Vec<(Scope, Registry)>>,
    helps: Arc<HashMap<&'static str, String>>,
    histograms: Histograms,
    /// Every running dueslag's series, by name: what the protobuf exposition walks.
    index: Arc<RwLock<BTreeMap<Arc<str>, Arc<DueslagMetrics>>>>,
    probes: Family<ProbeLabels, Counter>,
    roundtrip: LatencyFamily<DueslagMode>,
    send_duration: LatencyFamily<DueslagLabel>,
    send_failures: Family<ReasonLabels, SparseCounter>,
    consume_failures: Family<ReasonLabels, SparseCounter>,
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
}

/// Version and revision of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = match option_env!("BFO_ALIVE_REVISION") {
    Some(r) => r,
    None => "unknown",
};

impl Metrics {
    /// A registry with every global series; `roundtrip_buckets` in seconds, classic
    /// buckets as `histograms` wants them.
    pub fn new(roundtrip_buckets: &[f64], histograms: Histograms) -> Metrics {
        let mut process = Registry::default();
        process.register_collector(Box::new(ProcessCollector::new()));
        let mut parts = Parts::default();
        parts.parts.push((Scope::All, process));
        let reg = &mut parts;
        reg.scope = Scope::Text;

        let m = Metrics {
            parts: Arc::new(Vec::new()),
            helps: Arc::default(),
            histograms,
            index: Arc::default(),
            probes: Family::default(),
            roundtrip: LatencyFamily::new(histograms, roundtrip_buckets),
            send_duration: LatencyFamily::new(histograms, &SEND_BUCKETS),
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
        };
        reg.register("probes", "Finished probes by result.", m.probes.clone());
        m.roundtrip.register(
            reg,
            "roundtrip_duration",
            "Time from sending an Alive message to receiving it in the dueslag.",
        );
        m.send_duration.register(
            reg,
            "send_duration",
            "Time from publishing to the Afsend StandardRetur reply with StatusKode 20.",
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
        // The global series, from here on.
        reg.scope = Scope::All;
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
            helps: Arc::new(std::mem::take(&mut parts.helps)),
            parts: Arc::new(parts.parts),
            ..m
        }
    }

    /// Creates every series of a dueslag at 0 and returns its observer.
    pub fn dueslag(&self, name: &str, mode: Mode) -> Arc<DueslagMetrics> {
        self.dueslag_labelled(name, mode, &[])
    }

    /// [`Metrics::dueslag`] with static labels on every series (`[[dueslag]] labels`).
    pub fn dueslag_labelled(
        &self,
        name: &str,
        mode: Mode,
        labels: &[(String, String)],
    ) -> Arc<DueslagMetrics> {
        let k = SeriesKeys::new(DueslagKey::new(name, labels), mode);
        let d = Arc::new(DueslagMetrics {
            key: k.dl.dueslag.clone(),
            mode: mode.as_str(),
            probes: k.probes.map(|l| self.probes.get_or_create_owned(&l)),
            roundtrip: self.roundtrip.get_or_create(&k.dm),
            send_duration: self.send_duration.get_or_create(&k.dl),
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
            // A push dueslag has no consumer: nothing is held, nothing pauses.
            held: (mode == Mode::Pull).then(|| self.held.get_or_create_owned(&k.dl)),
            consumer_paused: (mode == Mode::Pull)
                .then(|| self.consumer_paused.get_or_create_owned(&k.dl)),
            interval: self.probe_interval.get_or_create_owned(&k.dl),
            timeout: self.probe_timeout.get_or_create_owned(&k.dl),
            started: self.dueslag_started.get_or_create_owned(&k.dl),
        });
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d.key.name.clone(), d.clone());
        d
    }

    /// Removes every series of a dueslag.
    pub fn remove_dueslag(&self, name: &str, mode: Mode) {
        // The key the series were made with, even after a reload changed the labels.
        let removed = self
            .index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        let key = removed.map_or_else(|| DueslagKey::new(name, &[]), |d| d.key.clone());
        let k = SeriesKeys::new(key, mode);
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
        let key = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|d| d.key.clone());
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

    /// The registries of the text expositions (all), or those protobuf takes from the
    /// crate (the global ones).
    fn parts(&self, protobuf: bool) -> impl Iterator<Item = &Registry> {
        self.parts
            .iter()
            .filter(move |(scope, _)| !protobuf || *scope == Scope::All)
            .map(|(_, r)| r)
    }

    /// Writes the whole exposition in `format` (text or OpenMetrics) to `out`.
    pub fn encode(&self, format: Format, out: &mut impl fmt::Write) -> fmt::Result {
        use prometheus_client::encoding::{prometheus_text, text};
        for r in self.parts(false) {
            match format {
                Format::OpenMetrics => text::encode_registry(out, r)?,
                _ => prometheus_text::encode(out, r)?,
            }
        }
        if format == Format::OpenMetrics {
            text::encode_eof(out)?;
        }
        Ok(())
    }

    /// Whether `/metrics` offers protobuf: only with native histograms (`native`, `both`);
    /// `classic` answers as before them, in text or OpenMetrics.
    pub fn protobuf(&self) -> bool {
        self.histograms.native()
    }

    /// Writes the whole exposition as length-delimited protobuf `MetricFamily` messages:
    /// the global families through `prometheus-client`, the per-dueslag ones (nearly all
    /// of it) written straight into the wire format ([`crate::native`]), one family at a
    /// time, so a scrape holds one family's bytes.
    pub fn encode_protobuf(&self, out: &mut impl io::Write) -> io::Result<()> {
        let mut buf = Vec::new();
        for r in self.parts(true) {
            let families = prometheus_client::encoding::prometheus_protobuf::encode(r)
                .map_err(|_| io::Error::other("encoding a metric family failed"))?;
            buf.clear();
            for f in families.iter().filter(|f| !f.metric.is_empty()) {
                f.encode_length_delimited(&mut buf)
                    .map_err(io::Error::other)?;
            }
            out.write_all(&buf)?;
        }
        let all: Vec<Arc<DueslagMetrics>> = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        use native::Kind::{Counter as C, Gauge as G, Histogram as H};
        type Each<'a> = &'a dyn Fn(&DueslagMetrics, &mut native::Family);
        let classic = self.histograms.classic();
        let families: [(&str, &str, native::Kind, Each); 16] = [
            ("probes", "bfo_alive_probes_total", C, &|d, f| {
                for (r, c) in ProbeResult::LABELS.iter().zip(&d.probes) {
                    f.value(d.labels(&[("mode", d.mode), ("result", r)]), c.get() as f64);
                }
            }),
            (
                "roundtrip_duration",
                "bfo_alive_roundtrip_duration_seconds",
                H,
                &|d, f| {
                    if let Some(h) = &d.roundtrip.native {
                        f.histogram(d.labels(&[("mode", d.mode)]), h, classic);
                    }
                },
            ),
            (
                "send_duration",
                "bfo_alive_send_duration_seconds",
                H,
                &|d, f| {
                    if let Some(h) = &d.send_duration.native {
                        f.histogram(d.labels(&[]), h, classic);
                    }
                },
            ),
            (
                "send_failures",
                "bfo_alive_send_failures_total",
                C,
                &|d, f| {
                    for (r, c) in SendFailure::ALL.iter().zip(&d.send_failures) {
                        let n = c.0.get();
                        if n > 0 {
                            f.value(d.labels(&[("reason", r.as_str())]), n as f64);
                        }
                    }
                },
            ),
            (
                "consume_failures",
                "bfo_alive_consume_failures_total",
                C,
                &|d, f| {
                    for (r, c) in ConsumeFailure::ALL
                        .iter()
                        .zip(d.consume_failures.iter().flatten())
                    {
                        let n = c.0.get();
                        if n > 0 {
                            f.value(d.labels(&[("reason", r.as_str())]), n as f64);
                        }
                    }
                },
            ),
            ("received", "bfo_alive_received_total", C, &|d, f| {
                for (k, c) in ReceivedKind::ALL.iter().zip(&d.received) {
                    f.value(
                        d.labels(&[("mode", d.mode), ("kind", k.as_str())]),
                        c.get() as f64,
                    );
                }
            }),
            ("lost", "bfo_alive_lost_total", C, &|d, f| {
                f.value(d.labels(&[("mode", d.mode)]), d.lost.get() as f64);
            }),
            (
                "last_success_timestamp",
                "bfo_alive_last_success_timestamp_seconds",
                G,
                &|d, f| {
                    f.value(d.labels(&[("mode", d.mode)]), d.last_success.get());
                },
            ),
            (
                "last_attempt_timestamp",
                "bfo_alive_last_attempt_timestamp_seconds",
                G,
                &|d, f| {
                    f.value(d.labels(&[("mode", d.mode)]), d.last_attempt.get());
                },
            ),
            ("probe_success", "bfo_alive_probe_success", G, &|d, f| {
                f.value(d.labels(&[("mode", d.mode)]), d.probe_success.get() as f64);
            }),
            ("inflight", "bfo_alive_inflight", G, &|d, f| {
                f.value(d.labels(&[]), d.inflight.get() as f64);
            }),
            ("held_messages", "bfo_alive_held_messages", G, &|d, f| {
                if let Some(g) = &d.held {
                    f.value(d.labels(&[]), g.get() as f64);
                }
            }),
            (
                "consumer_paused",
                "bfo_alive_consumer_paused",
                G,
                &|d, f| {
                    if let Some(g) = &d.consumer_paused {
                        f.value(d.labels(&[]), g.get() as f64);
                    }
                },
            ),
            (
                "probe_interval",
                "bfo_alive_probe_interval_seconds",
                G,
                &|d, f| {
                    f.value(d.labels(&[]), d.interval.get());
                },
            ),
            (
                "probe_timeout",
                "bfo_alive_probe_timeout_seconds",
                G,
                &|d, f| {
                    f.value(d.labels(&[]), d.timeout.get());
                },
            ),
            (
                "dueslag_started_timestamp",
                "bfo_alive_dueslag_started_timestamp_seconds",
                G,
                &|d, f| {
                    f.value(d.labels(&[]), d.started.get());
                },
            ),
        ];
        for (short, name, kind, each) in families {
            let help = self.helps.get(short).map_or("", String::as_str);
            let mut f = native::Family::new(name, help, kind);
            for d in &all {
                each(d, &mut f);
            }
            buf.clear();
            f.finish(&mut buf);
            out.write_all(&buf)?;
        }
        Ok(())
    }

    /// The protobuf exposition as one buffer (tests).
    pub fn render_protobuf(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_protobuf(&mut out)
            .expect("writing to a Vec cannot fail");
        out
    }

    /// The whole text or OpenMetrics exposition as one string (tests and small
    /// registries; `/metrics` streams it instead, see [`crate::exposition`]).
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
    /// Prometheus protobuf (`io.prometheus.client.MetricFamily`, length-delimited): the only
    /// format with native histograms.
    Protobuf,
}

impl Format {
    /// The format the scraper's `Accept` header prefers (highest `q`; on a tie protobuf,
    /// then OpenMetrics), text 0.0.4 when it names none of ours; protobuf only when
    /// `protobuf` is offered. Prometheus asks for protobuf first when its native
    /// histograms are on.
    pub fn negotiate(accept: Option<&str>, protobuf: bool) -> Format {
        let mut best: Option<(f64, u8, Format)> = None;
        for range in accept.unwrap_or("").split(',') {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0;
            let (mut proto, mut encoding) = (None, None);
            for p in params {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.parse().unwrap_or(0.0),
                    "proto" => proto = Some(v.to_string()),
                    "encoding" => encoding = Some(v.to_string()),
                    _ => {}
                }
            }
            let candidate = match media.as_str() {
                "application/vnd.google.protobuf"
                    if protobuf
                        && proto.as_deref() == Some("io.prometheus.client.MetricFamily")
                        && encoding.as_deref() == Some("delimited") =>
                {
                    (2, Format::Protobuf)
                }
                "application/openmetrics-text" => (1, Format::OpenMetrics),
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(bq, bp, _)| q > bq || (q == bq && candidate.0 > bp)) {
                best = Some((q, candidate.0, candidate.1));
            }
        }
        best.map_or(Format::Text, |(_, _, f)| f)
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Protobuf => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
            }
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
    /// `dueslag` and the static labels, first on every series.
    key: DueslagKey,
    mode: &'static str,
    /// success, timeout, send_error: as [`ProbeResult::LABELS`].
    probes: [Counter; 3],
    roundtrip: Latency,
    send_duration: Latency,
    send_failures: [SparseCounter; SendFailure::ALL.len()],
    consume_failures: Option<[SparseCounter; ConsumeFailure::ALL.len()]>,
    received: [Counter; ReceivedKind::ALL.len()],
    lost: Counter,
    last_success: Timestamp,
    last_attempt: Timestamp,
    probe_success: Gauge,
    inflight: Gauge,
    held: Option<Gauge>,
    consumer_paused: Option<Gauge>,
    interval: Seconds,
    timeout: Seconds,
    started: Timestamp,
}

impl DueslagMetrics {
    /// This dueslag's label pairs for one series: `dueslag`, its static labels, then
    /// `rest` (the protobuf exposition's, in the order the text one writes them).
    fn labels<'a>(
        &'a self,
        rest: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        std::iter::once(("dueslag", &*self.key.name))
            .chain(
                self.key
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .chain(rest.iter().copied())
    }
}

impl Observer for DueslagMetrics {
    fn observe(&self, outcome: Outcome) {
        match outcome {
            Outcome::Attempt { at, .. } => {
                self.last_attempt.set(unix_seconds(at));
            }
            Outcome::Sent { duration } => {
                if let Some(c) = &self.send_duration.classic {
                    c.observe(duration.as_secs_f64(), None, None);
                }
                if let Some(n) = &self.send_duration.native {
                    n.observe(duration.as_secs_f64());
                }
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
                        || BeskedExemplar {
                            besked_id: besked_id.to_string(),
                        },
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
                if let (Some(h), Some(p)) = (&self.held, &self.consumer_paused) {
                    h.set(count as i64);
                    p.set(i64::from(paused));
                }
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
#[path = "metrics_tests.rs"]
mod tests;
