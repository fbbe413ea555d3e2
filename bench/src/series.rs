//! What a dueslag costs in Prometheus (`--only series`, not in the default set: it takes
//! `--series-duration`, 10 minutes, plus start-up): two exporters side by side in one run,
//! N simulator dueslag each, one with `[exporter] histograms = "classic"` and one with
//! `"native"`, each scraped by its own real Prometheus (`--enable-feature=native-histograms`
//! on both, so both scrape protobuf; the same scrape interval). At the end: series per
//! dueslag in Prometheus (`count by (dueslag)`), the Prometheus servers' head series and
//! resident memory, the exporters' memory and CPU, and `/metrics` render time in text and
//! in protobuf (after the Prometheus servers stopped). Then an exporter with `"both"` (the
//! default) alone: memory, CPU and render times.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use super::child::{Exporter, Served, free_port};
use super::scale::{SimSetup, sim_config};
use super::stats;

const MB: f64 = 1024.0 * 1024.0;
const TEXT: &str = "text/plain;version=0.0.4";
const PROTOBUF: &str =
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";
/// GETs per format for the render time (the median is reported).
const RENDERS: usize = 5;

/// What the run is given.
pub struct SeriesRun<'a> {
    pub bin: &'a Path,
    pub prometheus: &'a Path,
    pub dir: &'a Path,
    pub dueslag: usize,
    pub interval: Duration,
    pub scrape_interval: Duration,
    pub duration: Duration,
    /// The CPU window of the `both` exporter.
    pub window: Duration,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Render {
    pub text_ms: f64,
    pub text_ms_max: f64,
    pub text_mb: f64,
    pub protobuf_ms: f64,
    pub protobuf_ms_max: f64,
    pub protobuf_mb: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Side {
    pub histograms: String,
    pub dueslag: usize,
    /// `count by (dueslag) ({__name__=~"bfo_alive_.+", dueslag!=""})` in Prometheus.
    pub series_per_dueslag_median: f64,
    pub series_per_dueslag_max: f64,
    pub dueslag_seen: usize,
    pub prometheus_head_series: f64,
    pub prometheus_rss_mb: f64,
    pub prometheus_peak_rss_mb: f64,
    pub prometheus_cpu_share: f64,
    /// What Prometheus measured of its scrapes of the exporter, at the end.
    pub scrape_duration_s: f64,
    pub scrape_samples: f64,
    pub exporter_rss_mb: f64,
    pub exporter_peak_rss_mb: f64,
    pub exporter_cpu_share: f64,
    pub probes_per_s: f64,
    pub render: Render,
    /// (seconds since start, Prometheus head series, Prometheus RSS MB, exporter RSS MB).
    pub checkpoints: Vec<(f64, f64, f64, f64)>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Alone {
    pub histograms: String,
    pub dueslag: usize,
    pub rss_mb: f64,
    pub peak_rss_mb: f64,
    pub cpu_share: f64,
    pub probes_per_s: f64,
    pub render: Render,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SeriesResult {
    pub dueslag: usize,
    pub interval_s: f64,
    pub scrape_interval_s: f64,
    pub duration_s: f64,
    pub prometheus_version: String,
    pub sides: Vec<Side>,
    pub both: Option<Alone>,
}

/// A Prometheus server of the run, stopped (by its PID, through the handle) when dropped.
struct Prometheus {
    child: Child,
    pid: u32,
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    async fn spawn(bin: &Path, dir: &Path, target: &str, every: Duration) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("data"))?;
        let cfg = dir.join("prometheus.yml");
        let secs = every.as_secs().max(1);
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: {secs}s\n  scrape_timeout: {}s\nscrape_configs:\n  - job_name: bfo-alive\n    static_configs:\n      - targets: [\"{target}\"]\n",
                secs.min(10)
            ),
        )?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--enable-feature=native-histograms")
            .arg("--log.level=warn");
        let s = Served::spawn(cmd, port, log, "prometheus", Duration::from_secs(300))
            .await
            .with_context(|| format!("{} (see {})", bin.display(), dir.display()))?;
        Ok(Prometheus {
            child: s.child,
            pid: s.pid,
            base: s.base,
            http: s.http,
        })
    }

    /// An instant query's result vector.
    async fn query(&self, q: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let v: serde_json::Value = self
            .http
            .get(reqwest::Url::parse_with_params(
                &format!("{}/api/v1/query", self.base),
                &[("query", q)],
            )?)
            .send()
            .await?
            .json()
            .await?;
        if v["status"] != "success" {
            bail!("query {q}: {}", v["error"]);
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    async fn scalar(&self, q: &str) -> f64 {
        self.query(q)
            .await
            .ok()
            .and_then(|r| r.first().and_then(value))
            .unwrap_or(f64::NAN)
    }

    /// Its own exposition.
    async fn own_metrics(&self) -> String {
        match self.http.get(format!("{}/metrics", self.base)).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    async fn head_series(&self) -> f64 {
        stats::sum(
            &self.own_metrics().await,
            "prometheus_tsdb_head_series",
            |_| true,
        )
    }

    fn memory(&self) -> (f64, f64) {
        proc_memory(self.pid)
    }

    fn cpu_seconds(&self) -> f64 {
        proc_cpu(self.pid)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn value(v: &serde_json::Value) -> Option<f64> {
    v["value"][1].as_str().and_then(|s| s.parse().ok())
}

/// (VmRSS, VmHWM) of a process in MB.
fn proc_memory(pid: u32) -> (f64, f64) {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.status())
        .map_or((0.0, 0.0), |s| {
            (
                s.vmrss.unwrap_or(0) as f64 * 1024.0 / MB,
                s.vmhwm.unwrap_or(0) as f64 * 1024.0 / MB,
            )
        })
}

fn proc_cpu(pid: u32) -> f64 {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .map_or(0.0, |s| {
            (s.utime + s.stime) as f64 / procfs::ticks_per_second() as f64
        })
}

fn config(run: &SeriesRun<'_>, histograms: &str) -> String {
    sim_config(&SimSetup {
        dueslag: run.dueslag,
        interval: run.interval,
        delay: Duration::from_millis(5),
        loss: 0.0,
        duplicate: 0.0,
        buckets: None,
    })
    .replacen(
        "[exporter]\n",
        &format!("[exporter]\nhistograms = \"{histograms}\"\n"),
        1,
    )
}

fn probes(text: &str) -> f64 {
    stats::sum(text, "bfo_alive_probes_total", |_| true)
}

/// Median and largest of `RENDERS` GETs of each format (protobuf only when the exporter
/// offers it: not with `classic`).
async fn render(ex: &Exporter, protobuf: bool) -> anyhow::Result<Render> {
    let mut r = Render {
        protobuf_ms: f64::NAN,
        protobuf_ms_max: f64::NAN,
        protobuf_mb: f64::NAN,
        ..Render::default()
    };
    for (accept, ms, max, mb) in [
        (TEXT, &mut r.text_ms, &mut r.text_ms_max, &mut r.text_mb),
        (
            PROTOBUF,
            &mut r.protobuf_ms,
            &mut r.protobuf_ms_max,
            &mut r.protobuf_mb,
        ),
    ] {
        if accept == PROTOBUF && !protobuf {
            continue;
        }
        let mut times = vec![];
        for _ in 0..RENDERS {
            let (len, kind, d) = ex.scrape_as(accept).await?;
            let protobuf = kind.starts_with("application/vnd.google.protobuf");
            anyhow::ensure!(
                protobuf == (accept == PROTOBUF),
                "asked for {accept}, got {kind}"
            );
            times.push(d.as_secs_f64() * 1e3);
            *mb = len as f64 / 1e6;
        }
        *max = times.iter().copied().fold(0.0, f64::max);
        *ms = stats::percentile(&mut times, 0.5).unwrap_or(0.0);
    }
    Ok(r)
}

pub async fn run(run: &SeriesRun<'_>) -> anyhow::Result<SeriesResult> {
    let version = Command::new(run.prometheus)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let mut out = SeriesResult {
        dueslag: run.dueslag,
        interval_s: run.interval.as_secs_f64(),
        scrape_interval_s: run.scrape_interval.as_secs_f64(),
        duration_s: run.duration.as_secs_f64(),
        prometheus_version: version,
        ..SeriesResult::default()
    };
    let modes = ["classic", "native"];
    let mut exporters = vec![];
    for m in modes {
        eprintln!(
            "series: starting the {m} exporter ({} dueslag)…",
            run.dueslag
        );
        exporters.push(
            Exporter::spawn(run.bin, run.dir, &format!("series-{m}"), &config(run, m)).await?,
        );
    }
    // Every loop in its steady state before Prometheus starts counting.
    tokio::time::sleep(run.interval + Duration::from_secs(2)).await;
    let mut proms = vec![];
    for (m, ex) in modes.iter().zip(&exporters) {
        let target = ex.base.trim_start_matches("http://").to_string();
        proms.push(
            Prometheus::spawn(
                run.prometheus,
                &run.dir.join(format!("prometheus-{m}")),
                &target,
                run.scrape_interval,
            )
            .await?,
        );
    }
    let started = Instant::now();
    let cpu0: Vec<(f64, f64)> = exporters
        .iter()
        .zip(&proms)
        .map(|(e, p)| (e.cpu_seconds(), p.cpu_seconds()))
        .collect();
    let mut probes0 = vec![];
    for e in &exporters {
        probes0.push(probes(&e.scrape().await?.0));
    }
    let mut sides: Vec<Side> = modes
        .iter()
        .map(|m| Side {
            histograms: m.to_string(),
            dueslag: run.dueslag,
            ..Side::default()
        })
        .collect();
    let every = Duration::from_secs(60).min(run.duration);
    while started.elapsed() < run.duration {
        tokio::time::sleep(every.min(run.duration.saturating_sub(started.elapsed()))).await;
        let at = started.elapsed().as_secs_f64();
        let mut line = format!("  {at:>4.0} s:");
        for ((side, p), e) in sides.iter_mut().zip(&proms).zip(&exporters) {
            let head = p.head_series().await;
            let (prss, _) = p.memory();
            let (erss, _) = e.memory();
            side.checkpoints.push((at, head, prss, erss as f64 / MB));
            line += &format!(
                " {} head {head:.0} series, prometheus {prss:.0} MB, exporter {:.1} MB;",
                side.histograms,
                erss as f64 / MB
            );
        }
        eprintln!("{line}");
    }
    let span = started.elapsed().as_secs_f64();
    for (i, ((side, p), e)) in sides.iter_mut().zip(&proms).zip(&exporters).enumerate() {
        let per = match p
            .query(r#"count by (dueslag) ({__name__=~"bfo_alive_.+", dueslag!=""})"#)
            .await
        {
            Ok(per) => per,
            Err(e) => {
                eprintln!("  {}: {e:#}", side.histograms);
                vec![]
            }
        };
        let mut counts: Vec<f64> = per.iter().filter_map(value).collect();
        side.dueslag_seen = counts.len();
        side.series_per_dueslag_max = counts.iter().copied().fold(0.0, f64::max);
        side.series_per_dueslag_median = stats::percentile(&mut counts, 0.5).unwrap_or(0.0);
        side.prometheus_head_series = p.head_series().await;
        (side.prometheus_rss_mb, side.prometheus_peak_rss_mb) = p.memory();
        side.prometheus_cpu_share = (p.cpu_seconds() - cpu0[i].1) / span;
        side.scrape_duration_s = p
            .scalar(r#"scrape_duration_seconds{job="bfo-alive"}"#)
            .await;
        side.scrape_samples = p.scalar(r#"scrape_samples_scraped{job="bfo-alive"}"#).await;
        let (rss, hwm) = e.memory();
        side.exporter_rss_mb = rss as f64 / MB;
        side.exporter_peak_rss_mb = hwm as f64 / MB;
        side.exporter_cpu_share = (e.cpu_seconds() - cpu0[i].0) / span;
        side.probes_per_s = (probes(&e.scrape().await?.0) - probes0[i]) / span;
    }
    // Render times with the Prometheus servers gone (they would share the cores).
    drop(proms);
    for (side, e) in sides.iter_mut().zip(&exporters) {
        side.render = render(e, side.histograms != "classic").await?;
    }
    drop(exporters);
    out.sides = sides;

    eprintln!("series: the both exporter alone ({} dueslag)…", run.dueslag);
    let ex = Exporter::spawn(run.bin, run.dir, "series-both", &config(run, "both")).await?;
    tokio::time::sleep(run.interval + Duration::from_secs(2)).await;
    let (a, _) = ex.scrape().await?;
    let (t, cpu) = (Instant::now(), ex.cpu_seconds());
    tokio::time::sleep(run.window).await;
    let cpu = ex.cpu_seconds() - cpu;
    let span = t.elapsed().as_secs_f64();
    let (b, _) = ex.scrape().await?;
    let render = render(&ex, true).await?;
    let (rss, hwm) = ex.memory();
    ex.stop();
    out.both = Some(Alone {
        histograms: "both".into(),
        dueslag: run.dueslag,
        rss_mb: rss as f64 / MB,
        peak_rss_mb: hwm as f64 / MB,
        cpu_share: cpu / span,
        probes_per_s: (probes(&b) - probes(&a)) / span,
        render,
    });
    Ok(out)
}

/// The human table.
pub fn table(r: &SeriesResult) -> String {
    let mut o = String::new();
    o += &format!(
        "What a dueslag costs in Prometheus: {} sim dueslag per exporter, probes every {:.0} s, scraped every {:.0} s for {:.0} s by {}\n",
        r.dueslag, r.interval_s, r.scrape_interval_s, r.duration_s, r.prometheus_version
    );
    o += "| histograms | series/dueslag median | max | head series | Prometheus RSS MB | peak | Prometheus CPU % core | scrape s (Prometheus) | exporter RSS MB | peak | exporter CPU % core | probes/s | text ms | text MB | protobuf ms | protobuf MB |\n";
    o += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for s in &r.sides {
        o += &format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1}% | {:.2} | {:.1} | {:.1} | {:.1}% | {:.1} | {:.0} | {:.1} | {:.0} | {:.1} |\n",
            s.histograms,
            s.series_per_dueslag_median,
            s.series_per_dueslag_max,
            s.prometheus_head_series,
            s.prometheus_rss_mb,
            s.prometheus_peak_rss_mb,
            s.prometheus_cpu_share * 100.0,
            s.scrape_duration_s,
            s.exporter_rss_mb,
            s.exporter_peak_rss_mb,
            s.exporter_cpu_share * 100.0,
            s.probes_per_s,
            s.render.text_ms,
            s.render.text_mb,
            s.render.protobuf_ms,
            s.render.protobuf_mb,
        )
        .replace("| NaN ", "| n/a ");
    }
    if let Some(b) = &r.both {
        o += &format!(
            "| both (alone, no Prometheus) | | | | | | | | {:.1} | {:.1} | {:.1}% | {:.1} | {:.0} | {:.1} | {:.0} | {:.1} |\n",
            b.rss_mb,
            b.peak_rss_mb,
            b.cpu_share * 100.0,
            b.probes_per_s,
            b.render.text_ms,
            b.render.text_mb,
            b.render.protobuf_ms,
            b.render.protobuf_mb,
        );
    }
    o += "Render: median (max) of 5 GETs per format, client side to the last byte, after the Prometheus servers stopped: ";
    for s in &r.sides {
        o += &format!(
            "{} text {:.0} ({:.0}) ms, protobuf {:.0} ({:.0}) ms; ",
            s.histograms,
            s.render.text_ms,
            s.render.text_ms_max,
            s.render.protobuf_ms,
            s.render.protobuf_ms_max
        )
        .replace("NaN", "n/a");
    }
    if let Some(b) = &r.both {
        o += &format!(
            "both text {:.0} ({:.0}) ms, protobuf {:.0} ({:.0}) ms",
            b.render.text_ms, b.render.text_ms_max, b.render.protobuf_ms, b.render.protobuf_ms_max
        );
    }
    o.push('\n');
    o
}
