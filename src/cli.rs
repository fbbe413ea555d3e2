//! The command line: Prometheus-style flags (`--config.file`, `--config.check`,
//! `--config.watch-interval`, `--web.listen-address`, `--web.config.file`,
//! `--web.enable-lifecycle`, `--log.*`, `--shard`) and the
//! subcommands `demo` (the exporter on its embedded simulator), `probe` (one dueslag tested
//! by hand), `setup` (the abonnements to set up in the Administrationsmodul) and `emulate`
//! (the Beskedfordeler emulator on a RabbitMQ broker).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::server::{self, ConfigSource, Options};
use crate::shard::ShardArg;

/// The demo configuration, built into the binary.
pub const DEMO_CONFIG: &str = include_str!("../examples/demo.toml");

#[derive(Debug, Parser)]
#[command(
    name = "bfo-alive-exporter",
    version,
    about = "Prometheus exporter that probes Beskedfordeler dueslag with AliveBesked round trips"
)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long = "config.file", value_name = "FILE", global = true)]
    pub config_file: Option<PathBuf>,
    /// Validate the configuration and exit (0 = valid, 2 = invalid).
    #[arg(long = "config.check")]
    pub config_check: bool,
    /// Reload when the configuration file's content changes, checked this often (e.g. 10s;
    /// 0s = only on SIGHUP or POST /-/reload). For a file that another process replaces,
    /// such as a Kubernetes ConfigMap mounted as a directory.
    #[arg(long = "config.watch-interval", value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    pub config_watch_interval: std::time::Duration,
    /// Address for /metrics, the status page and (by default) the push endpoint.
    #[arg(long = "web.listen-address", default_value = ":9632", global = true)]
    pub listen: String,
    /// Web configuration file (YAML, the exporter-toolkit format node_exporter uses): TLS,
    /// basic auth, response headers and a rate limit for the main listener; read again
    /// on every reload. Not for the push endpoint (`[push] listen` and `[push.tls]`).
    #[arg(long = "web.config.file", value_name = "FILE", global = true)]
    pub web_config_file: Option<PathBuf>,
    /// Answer POST /-/reload (as Prometheus, off by default: 403). SIGHUP always reloads.
    #[arg(long = "web.enable-lifecycle", global = true)]
    pub web_enable_lifecycle: bool,
    /// Log level: error, warn, info, debug.
    #[arg(long = "log.level", default_value = "info", global = true)]
    pub log_level: String,
    #[arg(
        long = "log.format",
        value_enum,
        default_value = "logfmt",
        global = true
    )]
    pub log_format: LogFormat,
    /// Run only shard i of n (1-based) of the configured dueslag, by a stable hash of the
    /// name. auto/n: i is the pod's StatefulSet ordinal + 1, from $POD_NAME or the host name.
    #[arg(long = "shard", value_name = "i/n|auto/n", global = true)]
    pub shard: Option<ShardArg>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the exporter on the embedded Beskedfordeler simulator with example dueslag.
    Demo,
    /// Test one dueslag by hand: send Alive messages, wait for each, and trace every step.
    /// Exit 0 = all arrived, 1 = some failed, 2 = configuration or usage error.
    Probe {
        /// The dueslag (its configured name).
        #[arg(long)]
        dueslag: String,
        /// How many Alive messages to send, one after another.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// How long to wait for each (default: the dueslag's timeout).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Print what to set up in the Beskedfordeler's Administrationsmodul for each configured
    /// dueslag: its abonnement on the Alive beskedtype (with the RelateretObjekt filter) and,
    /// for push, the endpoint to register. Exit 0, or 2 for a configuration error.
    Setup {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Play the Beskedfordeler on a RabbitMQ broker, for offline tests of any system.
    Emulate {
        /// Emulator configuration (TOML; see examples/emulator.toml).
        #[arg(long = "config", value_name = "FILE")]
        config: PathBuf,
    },
}

fn init_logging(level: &str, format: LogFormat) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_new(format!(
        "{level},lapin=warn,amq_protocol=warn,hyper=warn,reqwest=warn"
    ))
    .map_err(|e| format!("--log.level {level:?}: {e}"))?;
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Logfmt => registry
            .with(
                tracing_logfmt::builder()
                    .layer()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    }
    .map_err(|e| e.to_string())
}

/// Parses the command line and runs; the process exit code.
pub fn main() -> ExitCode {
    crate::allocator::tune();
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli.log_level, cli.log_format) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    if let Some(Command::Emulate { config }) = &cli.command {
        return emulate(config).await;
    }
    if let Some(Command::Setup { output }) = &cli.command {
        return setup(cli.config_file.as_deref(), *output);
    }
    if let Some(Command::Probe {
        dueslag,
        count,
        timeout,
        output,
    }) = &cli.command
    {
        let Some(config_file) = cli.config_file.clone() else {
            eprintln!("probe needs --config.file");
            return ExitCode::from(2);
        };
        let report = crate::diagnose::run(crate::diagnose::ProbeArgs {
            config_file,
            dueslag: dueslag.clone(),
            count: *count,
            timeout: *timeout,
            listen: cli.listen.clone(),
        })
        .await;
        match output {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("a report serializes")
            ),
            Output::Text => {
                print!("{}", report.trace.render_text());
                println!(
                    "{} of {} Alive messages arrived in {}",
                    report.arrived, report.sent, report.dueslag
                );
            }
        }
        return ExitCode::from(report.exit_code);
    }
    let source = match (&cli.command, &cli.config_file) {
        (Some(Command::Demo), _) => ConfigSource::Embedded {
            name: "<embedded demo config>".into(),
            text: DEMO_CONFIG.into(),
        },
        (_, Some(f)) => ConfigSource::File(f.clone()),
        (_, None) => {
            eprintln!("--config.file is required (or run `bfo-alive-exporter demo`)");
            return ExitCode::from(2);
        }
    };
    if cli.config_check {
        if let Some(w) = &cli.web_config_file {
            match crate::web::toolkit::load(w) {
                Ok(c) => println!(
                    "web configuration OK: {}, {} basic auth users",
                    if c.tls.is_some() { "TLS" } else { "plain HTTP" },
                    c.policy.users.len()
                ),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            }
        }
        return match source.load() {
            Ok(c) => {
                println!(
                    "configuration OK: backend {}, {} dueslag",
                    crate::backend::backend_name(c.backend()),
                    c.dueslag.len()
                );
                for line in c.resolution_summary() {
                    println!("  {line}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        };
    }
    let demo = matches!(cli.command, Some(Command::Demo));
    let shard = match cli.shard.map(|s| s.resolve(pod_name().as_deref())) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            eprintln!("--shard: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(s) = shard {
        tracing::info!(shard = %s, "running one shard of the configured dueslag");
    }
    let opts = Options {
        source,
        listen: cli.listen.clone(),
        shard,
        probe_loops: true,
        watch_interval: Some(cli.config_watch_interval).filter(|d| !d.is_zero()),
        web: server::WebOptions {
            config_file: cli.web_config_file.clone(),
            enable_lifecycle: cli.web_enable_lifecycle,
        },
    };
    // Before the server answers anything: a SIGTERM right after the first scrape stops it
    // gracefully instead of killing it.
    let signalled = terminated();
    let server = match server::start(opts).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    if demo {
        let base = format!("http://{}", display_addr(server.addr));
        println!("bfo-alive-exporter demo: four dueslag on the embedded Beskedfordeler simulator.");
        println!("  status page   {base}/");
        println!("  metrics       {base}/metrics");
        println!("  push endpoint {base}/push/{{dueslag}}");
        println!(
            "Probes run every 2 s; the flaky dueslag move every failure counter within a few minutes."
        );
        println!("Stop with Ctrl-C.");
    }
    let stop = server.shutdown_token();
    tokio::spawn(async move {
        signalled.await;
        stop.cancel();
    });
    server.wait().await;
    ExitCode::SUCCESS
}

fn setup(config_file: Option<&std::path::Path>, output: Output) -> ExitCode {
    let Some(path) = config_file else {
        eprintln!("setup needs --config.file");
        return ExitCode::from(2);
    };
    let config = match crate::config::Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let setup = crate::setup::setup(&config);
    let text = match output {
        Output::Json => serde_json::to_string_pretty(&setup).expect("a setup serializes") + "\n",
        Output::Text => setup.render_text(&path.display().to_string()),
    };
    // Written, not printed: a reader that stops early (`| head`) is no error.
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

async fn emulate(path: &std::path::Path) -> ExitCode {
    let cfg = match crate::emulator::EmulatorConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let signalled = terminated();
    tokio::spawn(async move {
        signalled.await;
        s.cancel();
    });
    match crate::emulator::run(cfg, stop, None).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// This pod's name for `--shard=auto/n`: `$POD_NAME` (the manifests set it from the downward
/// API), else the host name, which a StatefulSet sets to the pod name.
fn pod_name() -> Option<String> {
    std::env::var("POD_NAME")
        .ok()
        .filter(|p| !p.is_empty())
        .or_else(|| hostname::get().ok().and_then(|h| h.into_string().ok()))
}

fn display_addr(a: std::net::SocketAddr) -> String {
    if a.ip().is_unspecified() {
        format!("localhost:{}", a.port())
    } else {
        a.to_string()
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed before this returns, so a
/// signal that comes before the future is first polled is still seen.
fn terminated() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_flags_are_global() {
        for args in [
            &[
                "bfo-alive-exporter",
                "demo",
                "--web.enable-lifecycle",
                "--web.config.file=w.yml",
            ][..],
            &[
                "bfo-alive-exporter",
                "--web.config.file",
                "w.yml",
                "--web.enable-lifecycle",
                "demo",
            ],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert!(cli.web_enable_lifecycle);
            assert_eq!(cli.web_config_file, Some(PathBuf::from("w.yml")));
        }
    }

    #[test]
    fn shard_auto_and_the_config_watch_parse() {
        let cli = Cli::try_parse_from([
            "bfo-alive-exporter",
            "--config.file=c.toml",
            "--shard=auto/3",
            "--config.watch-interval=10s",
        ])
        .unwrap();
        assert_eq!(cli.shard, Some(ShardArg::Auto { count: 3 }));
        assert_eq!(
            cli.config_watch_interval,
            std::time::Duration::from_secs(10)
        );
        let plain = Cli::try_parse_from(["bfo-alive-exporter", "--shard=2/3"]).unwrap();
        assert!(matches!(plain.shard, Some(ShardArg::Fixed(_))));
        assert!(plain.config_watch_interval.is_zero());
        assert!(!plain.web_enable_lifecycle && plain.web_config_file.is_none());
        assert!(Cli::try_parse_from(["bfo-alive-exporter", "--shard=auto"]).is_err());
    }
}
