//! `bfo-alive-bench`: overhead, scale and footprint of the exporter, side by side with a
//! raw AMQP baseline (BENCHMARKS.md has the method and the figures).
//!
//! One run measures, each against the release `bfo-alive-exporter` binary in its own
//! process ([`child`]):
//! - scale on the simulator: N dueslag at a configured rate ([`scale::scale`]);
//! - accuracy: injected simulator delay vs measured round trip ([`scale::accuracy`]);
//! - RabbitMQ: exporter + emulator vs a raw lapin baseline at increasing rates ([`broker`]);
//! - the soak: N dueslag with loss and duplicates, memory and stalled loops ([`scale::soak`]);
//! - slow clients (`--only slow`, not in the default set): N connections sending a byte a
//!   second to the push endpoint, cut by the exporter's limits ([`slow`], RELIABILITY.md);
//! - series (`--only series`, not in the default set: 10 minutes): what a dueslag costs in
//!   a real Prometheus, classic against native histograms side by side ([`series`]).
//!
//! - many municipalities (`--only municipalities`, not in the default set): 100 CVRs × 20
//!   dueslag and 1 CVR × 2,000 dueslag on RabbitMQ with a local STS ([`municipalities`]).
//!
//! It prints a table, and writes `report.txt` and `report.json` (plus every generated
//! configuration and exporter log) to `--out`. It reports; it asserts nothing.

mod broker;
mod child;
mod municipalities;
mod report;
mod scale;
mod series;
mod slow;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use report::Report;

#[derive(Debug, Parser)]
#[command(
    name = "bfo-alive-bench",
    about = "Benchmark of bfo-alive-exporter (see BENCHMARKS.md)"
)]
pub struct Args {
    /// Short mode: shorter windows, a 2-minute soak, fewer broker rates (a few minutes).
    #[arg(long)]
    pub quick: bool,
    /// Scenarios to run, comma-separated: scale, accuracy, broker, soak; and slow (slow
    /// clients against the push endpoint, RELIABILITY.md) and series (classic vs native
    /// histograms in a real Prometheus), which only run when named.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "scale,accuracy,broker,soak"
    )]
    pub only: Vec<String>,
    /// Where the report, configurations and logs go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// The exporter binary (default: bfo-alive-exporter next to this binary).
    #[arg(long)]
    pub exporter: Option<PathBuf>,
    /// Dueslag counts of the scale scenario.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    pub scale: Vec<usize>,
    /// Probe interval of every dueslag in the scale and soak scenarios.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Measurement window of each scale and broker step (default 60 s, quick 20 s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub window: Option<Duration>,
    /// Dueslag of the accuracy scenario (each probes once a second).
    #[arg(long, default_value_t = 1000)]
    pub accuracy_dueslag: usize,
    /// Simulator delay of the accuracy scenario.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub accuracy_delay: Duration,
    /// Soak duration (default 10 min, quick 2 min).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub soak_duration: Option<Duration>,
    /// Dueslag of the soak.
    #[arg(long, default_value_t = 10_000)]
    pub soak_dueslag: usize,
    /// Offered probe rates (per second) of the RabbitMQ scenario (default 250,500,1000,2000;
    /// quick 250,1000).
    #[arg(long, value_delimiter = ',')]
    pub rates: Option<Vec<f64>>,
    /// Dueslag of the RabbitMQ scenario (the interval follows from the rate).
    #[arg(long, default_value_t = 100)]
    pub broker_dueslag: usize,
    /// Use the broker of this env file (scripts/rabbitmq.sh) instead of starting one.
    #[arg(long)]
    pub amqp_env: Option<PathBuf>,
    /// Slow clients of the slow scenario.
    #[arg(long, default_value_t = 2000)]
    pub slow_clients: usize,
    /// `[http] max_connections` of each slow run: the default, and one above the clients
    /// (so that only the timeouts cut).
    #[arg(long, value_delimiter = ',', default_value = "512,4096")]
    pub slow_caps: Vec<usize>,
    /// How long a slow client keeps going before it gives up (bounds the run).
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    pub slow_hold: Duration,
    /// The municipality layouts of `--only municipalities`, as CVRsxDUESLAG_PER_CVR.
    #[arg(long, value_delimiter = ',', default_value = "100x20,1x2000")]
    pub municipalities: Vec<String>,
    /// Probe interval of the municipalities scenario.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub municipalities_interval: Duration,
    /// Lifetime of the STS stub's tokens in the municipalities scenario (short, so that the
    /// window sees renewals; KOMBIT's last hours).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub token_lifetime: Duration,
    /// Window after start-up of each municipalities layout.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    pub municipalities_window: Duration,
    /// Dueslag of each exporter of the series scenario.
    #[arg(long, default_value_t = 10_000)]
    pub series_dueslag: usize,
    /// How long the Prometheus servers of the series scenario scrape.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub series_duration: Duration,
    /// Their scrape interval.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub series_scrape_interval: Duration,
    /// The Prometheus binary of the series scenario (2.42 or later).
    #[arg(long, default_value = "prometheus")]
    pub prometheus: PathBuf,
    /// The script that starts and stops a private RabbitMQ.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/rabbitmq.sh"))]
    pub rabbitmq_script: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bfo-alive-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    use procfs::Current as _;
    let mem = procfs::Meminfo::current()
        .map(|m| m.mem_total / (1024 * 1024 * 1024))
        .unwrap_or(0);
    format!(
        "{} cores ({cpu}), {mem} GiB",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let stamp = time::OffsetDateTime::now_utc();
    let dir = args.out.join(
        stamp
            .format(time::macros::format_description!(
                "[year][month][day]-[hour][minute][second]"
            ))
            .unwrap_or_default(),
    );
    std::fs::create_dir_all(&dir)?;
    let bin = args.exporter.clone().unwrap_or_else(child::default_binary);
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it first (cargo build --release --bins)",
        bin.display()
    );
    let quick = args.quick;
    let window = args
        .window
        .unwrap_or(Duration::from_secs(if quick { 20 } else { 60 }));
    let wants = |s: &str| args.only.iter().any(|o| o == s);
    let mut rep = Report {
        started: stamp
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: machine(),
        mode: if quick { "quick" } else { "full" }.into(),
        ..Report::default()
    };
    eprintln!(
        "bfo-alive-bench: exporter {}, output in {}",
        bin.display(),
        dir.display()
    );
    if wants("scale") {
        for &n in &args.scale {
            eprintln!("scale: {n} dueslag every {:?}…", args.interval);
            let r = scale::scale(&bin, &dir, n, args.interval, window).await?;
            eprintln!(
                "  {:.1}/s of {:.1}/s, {:.3} CPU s/1000, {:.1}% core, peak {:.1} MB, /metrics {:.0} ms {:.1} MB",
                r.achieved_probes_per_s,
                r.configured_probes_per_s,
                r.cpu_seconds_per_1000_probes,
                r.cpu_share_of_one_core * 100.0,
                r.peak_rss_mb,
                r.scrape_ms,
                r.scrape_bytes as f64 / 1e6
            );
            rep.scale.push(r);
        }
    }
    if wants("accuracy") {
        eprintln!(
            "accuracy: {} dueslag every 1 s, {:?} injected…",
            args.accuracy_dueslag, args.accuracy_delay
        );
        let a = scale::accuracy(
            &bin,
            &dir,
            args.accuracy_dueslag,
            Duration::from_secs(1),
            args.accuracy_delay,
            window,
        )
        .await?;
        eprintln!(
            "  error p50 {:.2} ms, p99 {:.2} ms over {:.0} samples",
            a.error_p50_ms, a.error_p99_ms, a.samples
        );
        rep.accuracy = Some(a);
    }
    if wants("broker") {
        let rates = args.rates.clone().unwrap_or_else(|| {
            if quick {
                vec![250.0, 1000.0]
            } else {
                vec![250.0, 500.0, 1000.0, 2000.0]
            }
        });
        let b = match &args.amqp_env {
            Some(env) => broker::Broker::existing(env),
            None => {
                eprintln!("broker: starting a private RabbitMQ…");
                broker::Broker::start(&args.rabbitmq_script, &dir.join("rabbitmq"))
            }
        };
        match b {
            Ok(b) => {
                let run = broker::BrokerRun {
                    bin: &bin,
                    dir: &dir,
                    dueslag: args.broker_dueslag,
                    warmup: Duration::from_secs(5),
                    window,
                };
                for rate in rates {
                    match broker::run_rate(&b, &run, rate).await {
                        Ok(r) => rep.broker.push(r),
                        Err(e) => {
                            rep.broker_error = Some(format!("at {rate}/s: {e:#}"));
                            break;
                        }
                    }
                }
                b.stop();
            }
            Err(e) => rep.broker_error = Some(format!("{e:#}")),
        }
    }
    if wants("soak") {
        let d = args
            .soak_duration
            .unwrap_or(Duration::from_secs(if quick { 120 } else { 600 }));
        eprintln!(
            "soak: {} dueslag every {:?}, 1% loss, 1% duplicates, {:?}…",
            args.soak_dueslag, args.interval, d
        );
        rep.soak = Some(
            scale::soak(
                &bin,
                &dir,
                args.soak_dueslag,
                args.interval,
                d,
                Duration::from_secs(if quick { 20 } else { 60 }),
            )
            .await?,
        );
    }
    if wants("municipalities") {
        let b = match &args.amqp_env {
            Some(env) => broker::Broker::existing(env)?,
            None => {
                eprintln!("municipalities: starting a private RabbitMQ…");
                broker::Broker::start(&args.rabbitmq_script, &dir.join("rabbitmq"))?
            }
        };
        let run = municipalities::Run {
            bin: &bin,
            dir: &dir,
            interval: args.municipalities_interval,
            token_lifetime: args.token_lifetime,
            window: args.municipalities_window,
            startup_limit: Duration::from_secs(300),
        };
        let mut lines = vec![];
        let mut results = vec![];
        for layout in &args.municipalities {
            let (c, d) = layout
                .split_once('x')
                .and_then(|(c, d)| Some((c.parse::<usize>().ok()?, d.parse::<usize>().ok()?)))
                .ok_or_else(|| anyhow::anyhow!("--municipalities {layout:?}: not CVRSxDUESLAG"))?;
            eprintln!(
                "municipalities: {c} CVR × {d} dueslag every {:?}…",
                run.interval
            );
            match municipalities::run(&b, &run, c, d).await {
                Ok(r) => {
                    let line = municipalities::line(&r);
                    eprintln!("  {line}");
                    lines.push(line);
                    results.push(r);
                }
                Err(e) => {
                    let line = format!("{c} CVR × {d} dueslag: failed: {e:#}");
                    eprintln!("  {line}");
                    lines.push(line);
                }
            }
        }
        if args.amqp_env.is_none() {
            b.stop();
        }
        std::fs::write(dir.join("municipalities.txt"), lines.join("\n") + "\n")?;
        std::fs::write(
            dir.join("municipalities.json"),
            serde_json::to_string_pretty(&results)?,
        )?;
        if args.only.iter().all(|o| o == "municipalities") {
            println!("{}", lines.join("\n"));
            return Ok(());
        }
    }
    let mut slow_lines = vec![];
    if wants("slow") {
        for &cap in &args.slow_caps {
            eprintln!(
                "slow: {} clients a byte a second against the push endpoint, max_connections {cap}…",
                args.slow_clients
            );
            let r = slow::run(&bin, &dir, args.slow_clients, cap, args.slow_hold).await?;
            let line = slow::line(&r);
            eprintln!("  {line}");
            slow_lines.push(line);
            std::fs::write(
                dir.join(format!("slow-cap{cap}.json")),
                serde_json::to_string_pretty(&r)?,
            )?;
        }
        if args.only.iter().all(|o| o == "slow") {
            std::fs::write(dir.join("slow.txt"), slow_lines.join("\n") + "\n")?;
            println!("{}", slow_lines.join("\n"));
            return Ok(());
        }
    }
    if wants("series") {
        let r = series::run(&series::SeriesRun {
            bin: &bin,
            prometheus: &args.prometheus,
            dir: &dir,
            dueslag: args.series_dueslag,
            interval: args.interval,
            scrape_interval: args.series_scrape_interval,
            duration: args.series_duration,
            window,
        })
        .await?;
        let mut table = format!(
            "bfo-alive-bench {} series\nmachine: {}\ncommand: {}\n\n",
            rep.started, rep.machine, rep.command
        );
        table += &series::table(&r);
        std::fs::write(dir.join("series.txt"), &table)?;
        std::fs::write(dir.join("series.json"), serde_json::to_string_pretty(&r)?)?;
        println!("{table}");
        if args.only.iter().all(|o| o == "series") {
            return Ok(());
        }
    }
    rep.evaluate();
    let table = rep.table();
    println!("{table}");
    std::fs::write(dir.join("report.txt"), &table)?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&rep)?)?;
    eprintln!("report: {}/report.txt and report.json", dir.display());
    Ok(())
}
