//! Runs the exporter: load the configuration, bind the listeners, start the supervisor,
//! serve HTTP, reload on SIGHUP, `POST /-/reload` or (with a watch interval) when the
//! configuration file changes, and stop gracefully.
//!
//! [`start`] returns once everything listens, with the bound addresses and a handle to
//! stop it, so tests run the real server on `127.0.0.1:0`.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::Factory;
use crate::config::{BackendKind, Config, ConfigError};
use crate::http::{self, AppState, ReloadRequest};
use crate::metrics::{CertificateUse, Metrics};
use crate::shard::Shard;
use crate::supervisor::{Registry, Supervisor};
use crate::web::{self, auth::Guard, toolkit::WebConfig};

/// Where the configuration comes from, and comes again on reload.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    /// Built-in text (the demo), with a name for error messages.
    Embedded {
        name: String,
        text: String,
    },
    /// An already parsed configuration (the `probe` command's one dueslag).
    Fixed(Box<Config>),
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            ConfigSource::File(p) => Config::load(p),
            ConfigSource::Embedded { name, text } => Config::parse(text, name),
            ConfigSource::Fixed(c) => Ok((**c).clone()),
        }
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub source: ConfigSource,
    pub listen: String,
    pub shard: Option<Shard>,
    /// False for the one-shot `probe` command: dueslag receive, but send nothing by themselves.
    pub probe_loops: bool,
    /// `--config.watch-interval`: how often to look whether the configuration file's
    /// content changed, and reload if it did (as on SIGHUP). `None`: never.
    pub watch_interval: Option<Duration>,
    pub web: WebOptions,
}

/// The main listener's `--web.*` flags beyond its address.
#[derive(Debug, Clone, Default)]
pub struct WebOptions {
    /// `--web.config.file`: TLS, basic auth and headers in exporter-toolkit's format; read
    /// again on every reload.
    pub config_file: Option<PathBuf>,
    /// `--web.enable-lifecycle`: without it `POST /-/reload` answers 403 (SIGHUP still
    /// reloads).
    pub enable_lifecycle: bool,
}

/// A running exporter.
pub struct Server {
    pub addr: SocketAddr,
    pub push_addr: SocketAddr,
    pub metrics: Metrics,
    pub registry: Arc<Registry>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    /// Stops gracefully and waits until everything has drained.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// `:9632` means every interface, as Prometheus exporters spell it.
pub fn normalize_listen(addr: &str) -> String {
    if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    }
}

async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let addr = normalize_listen(addr);
    TcpListener::bind(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// The address the simulator POSTs to: a wildcard listener is reached on loopback.
fn reachable(addr: SocketAddr, tls: bool) -> String {
    let ip = if addr.ip().is_unspecified() {
        if addr.is_ipv4() {
            "127.0.0.1".to_string()
        } else {
            "[::1]".to_string()
        }
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{ip}:{}", addr.port())
}

/// Loads the configuration, binds, starts every dueslag and serves.
pub async fn start(opts: Options) -> anyhow::Result<Server> {
    crate::tls::install_crypto_provider();
    // What the watched file holds before it is read: a change while it loads is reloaded.
    let watched = match (&opts.source, opts.watch_interval) {
        (ConfigSource::File(path), Some(every)) => Some((path.clone(), every, digest(path).await)),
        _ => None,
    };
    let config = opts.source.load()?;
    let backend = crate::backend::backend_name(config.backend());
    match config.backend() {
        BackendKind::Sim => tracing::warn!(
            backend,
            dueslag = config.dueslag.len(),
            "starting on the embedded Beskedfordeler simulator: nothing real is probed"
        ),
        BackendKind::Amqp => tracing::info!(backend, dueslag = config.dueslag.len(), "starting"),
    }
    // Once, at start: what the file left out and loading filled in (preset, virtual host).
    for r in &config.resolved {
        tracing::info!(key = r.key, value = %r.value, from = %r.from, "configuration resolved");
    }
    let metrics = Metrics::new(
        &config.exporter.roundtrip_buckets,
        config.exporter.histograms,
    );
    let main = bind(&opts.listen).await?;
    let addr = main.local_addr()?;
    let push_listener = match &config.push.listen {
        Some(l) => Some(bind(l).await?),
        None => None,
    };
    let push_addr = push_listener
        .as_ref()
        .map_or(Ok(addr), |l| l.local_addr())?;
    let push_tls = match &config.push.tls {
        Some(t) => Some(
            crate::tls::server_config(&t.cert_file, &t.key_file, t.client_ca_file.as_deref())
                .map_err(|e| anyhow::anyhow!("push.tls: {e}"))?,
        ),
        None => None,
    };
    // Read once, like the listener's TLS: the certificate it serves until the next start.
    metrics.set_certificate_expiry(
        CertificateUse::Push,
        config.push.tls.as_ref().and_then(|t| {
            crate::tls::certificate_file_summary(&t.cert_file)
                .ok()
                .flatten()
                .map(|s| s.not_after)
        }),
    );
    metrics.set_shard(opts.shard);
    let web = match &opts.web.config_file {
        Some(path) => Some(load_web(path.clone()).await.map_err(anyhow::Error::msg)?),
        None => None,
    };

    let registry = Arc::new(Registry::default());
    let backends = Factory {
        push_base: reachable(push_addr, config.push.tls.is_some()),
    };
    let mut supervisor = Supervisor::new(
        metrics.clone(),
        registry.clone(),
        backends,
        opts.shard,
        opts.probe_loops,
    );
    supervisor
        .apply(config.clone())
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    metrics.config_loaded(true);

    let (reload_tx, reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let ready = Arc::new(AtomicBool::new(true));
    let probe_endpoint = Arc::new(AtomicBool::new(config.exporter.probe_endpoint));
    let limits = web::Limits::from(&config.http);
    let main_metrics = metrics.http("main");
    let push_metrics = match push_listener {
        Some(_) => metrics.http("push"),
        None => main_metrics.clone(),
    };
    let state = AppState {
        metrics: metrics.clone(),
        registry: registry.clone(),
        reload: reload_tx,
        ready: ready.clone(),
        max_body: config.push.max_body.as_u64() as usize,
        probe_endpoint: probe_endpoint.clone(),
        lifecycle: opts.web.enable_lifecycle,
        push_gate: web::PushGate::new(config.http.max_push_requests, push_metrics.clone()),
    };
    let shutdown = CancellationToken::new();
    let http_stop = CancellationToken::new();
    let (trigger, hup) = mpsc::channel(1);
    hangups(trigger.clone());
    if let Some((path, every, seen)) = watched {
        watch(path, every, seen, trigger, shutdown.clone());
    }
    let guard = web
        .as_ref()
        .filter(|w| w.policy.is_active())
        .map(|w| Guard::new(w.policy.clone()));
    let main_tls = web
        .as_ref()
        .and_then(|w| w.tls.clone())
        .map(|c| Arc::new(RwLock::new(Arc::new(c))));
    let mut servers = vec![web::serve(
        web::Listener {
            name: "main",
            tcp: main,
            tls: main_tls.clone(),
            router: http::router(state.clone(), push_listener.is_none(), guard.clone()),
            http2: web.as_ref().is_none_or(|w| w.http2),
            limits,
            metrics: main_metrics,
        },
        http_stop.clone(),
    )];
    if let Some(l) = push_listener {
        servers.push(web::serve(
            web::Listener {
                name: "push",
                tcp: l,
                tls: push_tls.map(|c| Arc::new(RwLock::new(Arc::new(c)))),
                router: http::push_router(state),
                http2: true,
                limits,
                metrics: push_metrics,
            },
            http_stop.clone(),
        ));
    }
    tracing::info!(%addr, %push_addr, tls = main_tls.is_some(), auth = guard.is_some(), "listening");
    let web = opts.web.config_file.map(|path| WebReload {
        path,
        tls: main_tls,
        guard,
    });

    let task = tokio::spawn(
        Control {
            source: opts.source,
            supervisor,
            metrics: metrics.clone(),
            reload_rx,
            shutdown: shutdown.clone(),
            ready,
            probe_endpoint,
            http_stop,
            servers,
            hup,
            web,
        }
        .run(),
    );
    Ok(Server {
        addr,
        push_addr,
        metrics,
        registry,
        shutdown,
        task,
    })
}

/// Reads the web config file (bcrypt for its decoy hash: off the runtime's workers).
async fn load_web(path: PathBuf) -> Result<WebConfig, String> {
    tokio::task::spawn_blocking(move || web::toolkit::load(&path))
        .await
        .map_err(|e| e.to_string())?
}

/// What a reload reads again from `--web.config.file`: the certificate and the policy.
/// Whether the main listener speaks TLS, whether a policy applies at all, and HTTP/2 are
/// fixed at start.
struct WebReload {
    path: PathBuf,
    tls: Option<web::TlsSlot>,
    guard: Option<Arc<Guard>>,
}

impl WebReload {
    async fn apply(&self) -> Result<(), String> {
        let new = load_web(self.path.clone()).await?;
        let restart = |what: &str| {
            Err(format!(
                "{}: {what} takes effect at the next start; the old web configuration stays",
                self.path.display()
            ))
        };
        if new.tls.is_some() != self.tls.is_some() {
            return restart("turning TLS on or off");
        }
        if new.policy.is_active() != self.guard.is_some() {
            return restart("turning basic auth, headers or the rate limit on or off");
        }
        if let (Some(slot), Some(c)) = (&self.tls, new.tls) {
            *slot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(c);
        }
        if let Some(g) = &self.guard {
            g.replace(new.policy);
        }
        Ok(())
    }
}

/// The control task: reloads on request, then drains on shutdown.
struct Control {
    source: ConfigSource,
    supervisor: Supervisor,
    metrics: Metrics,
    reload_rx: mpsc::Receiver<ReloadRequest>,
    shutdown: CancellationToken,
    ready: Arc<AtomicBool>,
    probe_endpoint: Arc<AtomicBool>,
    http_stop: CancellationToken,
    servers: Vec<JoinHandle<()>>,
    /// Reloads without an answer: SIGHUP and a changed file.
    hup: mpsc::Receiver<()>,
    web: Option<WebReload>,
}

impl Control {
    async fn run(self) {
        let Control {
            source,
            mut supervisor,
            metrics,
            mut reload_rx,
            shutdown,
            ready,
            probe_endpoint,
            http_stop,
            servers,
            mut hup,
            web,
        } = self;
        loop {
            let reply = tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(tx) = reload_rx.recv() => Some(tx),
                Some(()) = hup.recv() => None,
            };
            let result = match source.load() {
                Ok(c) => {
                    let on_demand = c.exporter.probe_endpoint;
                    let r = supervisor.apply(c).await;
                    if r.is_ok() {
                        probe_endpoint.store(on_demand, Ordering::Relaxed);
                    }
                    r
                }
                Err(e) => Err(e.to_string()),
            };
            let result = match (result, &web) {
                (Ok(()), Some(w)) => w.apply().await,
                (r, _) => r,
            };
            match &result {
                Ok(()) => tracing::info!("configuration reloaded"),
                Err(e) => tracing::error!(error = %e, "reload failed; the old configuration stays"),
            }
            metrics.config_loaded(result.is_ok());
            if let Some(tx) = reply {
                let _ = tx.send(result);
            }
        }
        ready.store(false, Ordering::Relaxed);
        tracing::info!("stopping: no new probes; waiting for in-flight probes up to their timeout");
        supervisor.shutdown().await;
        http_stop.cancel();
        for s in servers {
            let _ = s.await;
        }
        tracing::info!("stopped");
    }
}

/// SIGHUP as reload triggers on `tx` (never fires where there are no signals). The handler
/// is installed before this returns, so call it before serving: a SIGHUP that comes after
/// the first scrape must reload, not kill the process (the default action).
fn hangups(tx: mpsc::Sender<()>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        if tx.send(()).await.is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler; reload with POST /-/reload");
            }
        }
    }
    #[cfg(not(unix))]
    drop(tx);
}

/// What the file holds now, as a hash; `None` when it cannot be read.
async fn digest(path: &Path) -> Option<u64> {
    let bytes = tokio::fs::read(path).await.ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

/// Every `every`, reads the configuration file and sends a reload trigger when its content
/// differs from the last look (`seen`, first taken before the file was loaded): the same
/// path as SIGHUP. Content, not the modification time, so that a ConfigMap update (kubelet
/// swaps a symlink to a new directory) counts and a touch without change does not. A change is reloaded once, even if the new file
/// is invalid (that reload fails, keeps the old configuration and says so in
/// `bfo_alive_config_last_reload_successful`); the next change is tried again.
fn watch(
    path: PathBuf,
    every: Duration,
    mut seen: Option<u64>,
    tx: mpsc::Sender<()>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = digest(&path).await;
            if now != seen {
                seen = now;
                tracing::info!(file = %path.display(), "configuration file changed; reloading");
                if tx.send(()).await.is_err() {
                    return;
                }
            }
        }
    });
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
