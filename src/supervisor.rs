//! The supervisor: one probe loop (and, for pull, one receiver) per dueslag, started,
//! stopped and restarted by diffing configurations on reload.
//!
//! Reload rules (ARCHITECTURE.md §6): added dueslag start, removed ones stop and their
//! series go away, changed ones restart; a change of what the backend is built from
//! ([`Config::backend_part`]: broker, token, identity, push) restarts every loop on a new
//! backend, and a new `[exporter] instance` or `objekt_type` (both in every message)
//! restarts every loop on the old one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::{Built, Factory};
use crate::config::{BackendKind, Config, DueslagSpec, Mode};
use crate::metrics::Metrics;
use crate::outcome::{Fanout, Observer};
use crate::probe::{self, DueslagProbe, ProbeContext};
use crate::receive::pull as receiver;
use crate::shard::Shard;
use crate::status::DueslagStatus;
use crate::transport::Afsender;

/// A running dueslag as the HTTP surface sees it.
pub struct Running {
    pub probe: Arc<DueslagProbe>,
    pub status: Arc<DueslagStatus>,
    /// The backend's sender, for on-demand probes.
    pub afsender: Arc<dyn Afsender>,
    /// Rate limit of on-demand probes: when the last one started.
    pub last_on_demand: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// The running dueslag by name, and the backend they run on, shared with the HTTP surface.
#[derive(Default)]
pub struct Registry {
    running: RwLock<BTreeMap<String, Arc<Running>>>,
    backend: RwLock<Option<BackendKind>>,
}

impl Registry {
    /// The backend of the applied configuration.
    pub fn backend(&self) -> Option<BackendKind> {
        *self.backend.read().unwrap()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Running>> {
        self.running.read().unwrap().get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Running>> {
        self.running.read().unwrap().values().cloned().collect()
    }
}

struct Loop {
    spec: DueslagSpec,
    stop_sending: CancellationToken,
    stop_receiving: CancellationToken,
    sender: Option<JoinHandle<()>>,
    receiver: Option<JoinHandle<()>>,
}

/// Owns the loops and the backend.
pub struct Supervisor {
    metrics: Metrics,
    registry: Arc<Registry>,
    run: uuid::Uuid,
    backends: Factory,
    shard: Option<Shard>,
    /// False for a one-shot `probe`: receivers run, the periodic loops do not.
    loops_enabled: bool,
    config: Option<Config>,
    built: Option<Built>,
    /// What the running loops were started with.
    ctx: Option<Arc<ProbeContext>>,
    loops: HashMap<String, Loop>,
}

impl Supervisor {
    pub fn new(
        metrics: Metrics,
        registry: Arc<Registry>,
        backends: Factory,
        shard: Option<Shard>,
        loops_enabled: bool,
    ) -> Self {
        Supervisor {
            metrics,
            registry,
            run: uuid::Uuid::new_v4(),
            backends,
            shard,
            loops_enabled,
            config: None,
            built: None,
            ctx: None,
            loops: HashMap::new(),
        }
    }

    /// The dueslag of `config` that this shard runs.
    fn specs(&self, config: &Config) -> Vec<DueslagSpec> {
        config
            .dueslag_specs()
            .into_iter()
            .filter(|s| self.shard.is_none_or(|sh| sh.owns(&s.name)))
            .collect()
    }

    /// Applies a configuration: the first one, or a reload.
    pub async fn apply(&mut self, config: Config) -> Result<(), String> {
        let rebuild = self
            .config
            .as_ref()
            .is_none_or(|c| c.backend_part() != config.backend_part());
        if rebuild {
            let built = self.backends.build(&config, &self.metrics).await?;
            let names: Vec<String> = self.loops.keys().cloned().collect();
            for name in names {
                self.stop_now(&name);
            }
            if let Some(old) = self.built.take() {
                old.backend.stop.cancel();
            }
            *self.registry.backend.write().unwrap() = Some(built.kind);
            self.built = Some(built);
        }
        let ctx = Arc::new(ProbeContext {
            instance: config.instance(),
            run: self.run,
            objekt_type: config.objekt_type(),
        });
        let ctx_changed = self.ctx.as_ref().is_none_or(|c| **c != *ctx);
        let specs = self.specs(&config);
        let built = self.built.as_ref().expect("built above");
        let reset = built.set_dueslag(&config, &specs, &self.metrics);
        let wanted: BTreeMap<&str, &DueslagSpec> =
            specs.iter().map(|s| (s.name.as_str(), s)).collect();
        let names: Vec<String> = self.loops.keys().cloned().collect();
        for name in names {
            match wanted.get(name.as_str()) {
                Some(spec)
                    if self.loops[&name].spec == **spec
                        && !ctx_changed
                        && !reset.contains(&name) => {}
                _ => self.stop_now(&name),
            }
        }
        for spec in specs {
            if !self.loops.contains_key(&spec.name) {
                self.start(spec, ctx.clone());
            }
        }
        tracing::info!(dueslag = self.loops.len(), "configuration applied");
        self.ctx = Some(ctx);
        self.config = Some(config);
        Ok(())
    }

    fn start(&mut self, spec: DueslagSpec, ctx: Arc<ProbeContext>) {
        let built = self
            .built
            .as_ref()
            .expect("a backend is built before loops start");
        let status = Arc::new(DueslagStatus::new(&spec.name, spec.mode.as_str()));
        let observer: Arc<dyn Observer> = Arc::new(Fanout(vec![
            self.metrics
                .dueslag_labelled(&spec.name, spec.mode, &spec.labels)
                as Arc<dyn Observer>,
            status.clone(),
        ]));
        // The no-success alert measures a dueslag without a success from here, not from
        // the process start: a dueslag added or changed by a reload gets its full chance.
        self.metrics.dueslag_started(
            &spec.name,
            spec.interval,
            spec.timeout,
            std::time::SystemTime::now(),
        );
        let probe = DueslagProbe::new(spec.clone(), ctx, observer);
        let stop_sending = CancellationToken::new();
        let stop_receiving = CancellationToken::new();
        let sender = self.loops_enabled.then(|| {
            tokio::spawn(probe::run(
                probe.clone(),
                built.afsender(&spec.cvr),
                stop_sending.clone(),
            ))
        });
        let receiver = (spec.mode == Mode::Pull).then(|| {
            tokio::spawn(receiver::run_pull(
                probe.clone(),
                built.afhenter(&spec.cvr),
                stop_receiving.clone(),
            ))
        });
        self.registry.running.write().unwrap().insert(
            spec.name.clone(),
            Arc::new(Running {
                probe,
                status,
                afsender: built.afsender(&spec.cvr),
                last_on_demand: std::sync::Mutex::new(None),
            }),
        );
        tracing::info!(dueslag = %spec.name, mode = spec.mode.as_str(), interval = ?spec.interval, "dueslag started");
        self.loops.insert(
            spec.name.clone(),
            Loop {
                spec,
                stop_sending,
                stop_receiving,
                sender,
                receiver,
            },
        );
    }

    /// Stops a dueslag at once (reload) and removes its series.
    fn stop_now(&mut self, name: &str) {
        if let Some(l) = self.loops.remove(name) {
            l.stop_sending.cancel();
            l.stop_receiving.cancel();
            if let Some(s) = &l.sender {
                s.abort();
            }
            self.registry.running.write().unwrap().remove(name);
            self.metrics.remove_dueslag(name, l.spec.mode);
            tracing::info!(dueslag = name, "dueslag stopped");
            // The receiver closes its consumer on cancel, returning held messages.
            drop(l.receiver);
        }
    }

    /// Graceful stop: no new probes; in-flight probes get up to their timeout; then the
    /// receivers close (held messages return to their queues).
    pub async fn shutdown(&mut self) {
        let loops: Vec<Loop> = self.loops.drain().map(|(_, l)| l).collect();
        for l in &loops {
            l.stop_sending.cancel();
        }
        let mut receivers = vec![];
        for l in loops {
            if let Some(s) = l.sender {
                let _ = s.await;
            }
            l.stop_receiving.cancel();
            receivers.extend(l.receiver);
        }
        for r in receivers {
            let _ = r.await;
        }
        if let Some(b) = self.built.take() {
            b.backend.stop.cancel();
        }
    }
}
