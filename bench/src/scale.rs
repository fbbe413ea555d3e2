//! The simulator scenarios: scale (N dueslag at a configured probe rate), accuracy (the
//! simulator's injected delay against the measured round trip) and the soak (N dueslag
//! with loss and duplicates for a long while: memory and stalled loops). Each runs the
//! release exporter as its own process on a generated `sim` configuration.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::child::Exporter;
use super::stats::{self, Buckets};
use bfo_alive_exporter::outcome::{ProbeResult, ReceivedKind};

const ANVENDER: &str = "cf12c051-39ce-4066-ba11-704b46fa23c4";
const MB: f64 = 1024.0 * 1024.0;

/// What a generated `sim` configuration contains.
pub struct SimSetup<'a> {
    pub dueslag: usize,
    pub interval: Duration,
    pub delay: Duration,
    pub loss: f64,
    pub duplicate: f64,
    /// Round-trip buckets; `None` = the default ones.
    pub buckets: Option<&'a [f64]>,
}

/// The configuration text (backend `sim`).
pub fn sim_config(s: &SimSetup<'_>) -> String {
    let mut t = String::with_capacity(s.dueslag * 140 + 512);
    t.push_str("[exporter]\ninstance = \"bench\"\n");
    if let Some(b) = s.buckets {
        let list: Vec<String> = b.iter().map(|v| format!("{v}")).collect();
        let _ = writeln!(t, "roundtrip_buckets = [{}]", list.join(", "));
    }
    let _ = write!(
        t,
        "[identity]\nanvendersystem = \"{ANVENDER}\"\ncvr = \"29189846\"\n\n[broker]\nbackend = \"sim\"\n\n[defaults]\ninterval = \"{}ms\"\ntimeout = \"30s\"\n\n",
        s.interval.as_millis()
    );
    for i in 1..=s.dueslag {
        let _ = writeln!(
            t,
            "[[dueslag]]\nname = \"d{i:05}\"\nmode = \"pull\"\nqueue = \"q{i:05}\"\nid = \"00000000-0000-4000-8000-{i:012}\""
        );
    }
    for i in 1..=s.dueslag {
        let _ = writeln!(
            t,
            "[sim.faults.d{i:05}]\ndelay = \"{}us\"\nloss = {}\nduplicate = {}",
            s.delay.as_micros(),
            s.loss,
            s.duplicate
        );
    }
    t
}

fn finished(text: &str, result: &str) -> f64 {
    stats::sum(text, "bfo_alive_probes_total", |l| {
        stats::label(l, "result") == Some(result)
    })
}

fn all_finished(text: &str) -> f64 {
    stats::sum(text, "bfo_alive_probes_total", |_| true)
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleResult {
    pub dueslag: usize,
    pub interval_s: f64,
    pub configured_probes_per_s: f64,
    pub achieved_probes_per_s: f64,
    pub success_share: f64,
    pub cpu_seconds_per_1000_probes: f64,
    pub cpu_share_of_one_core: f64,
    pub peak_rss_mb: f64,
    pub rss_mb_end: f64,
    pub startup_s: f64,
    /// GET /metrics, client side (render + transfer over loopback), median of 3.
    pub scrape_ms: f64,
    pub scrape_ms_max: f64,
    pub scrape_bytes: usize,
    pub series: usize,
    pub window_s: f64,
}

/// N dueslag at `interval` each: rates, CPU, memory and `/metrics`.
pub async fn scale(
    bin: &Path,
    dir: &Path,
    n: usize,
    interval: Duration,
    window: Duration,
) -> anyhow::Result<ScaleResult> {
    let cfg = sim_config(&SimSetup {
        dueslag: n,
        interval,
        delay: Duration::from_millis(5),
        loss: 0.0,
        duplicate: 0.0,
        buckets: None,
    });
    let t = Instant::now();
    let ex = Exporter::spawn(bin, dir, &format!("scale-{n}"), &cfg).await?;
    let startup = t.elapsed();
    // The first probes are spread over one interval; let every loop reach its steady state.
    tokio::time::sleep(interval + Duration::from_secs(2)).await;
    // Counters are read when a scrape starts; CPU is read between the two scrapes.
    let t0 = Instant::now();
    let (a, _) = ex.scrape().await?;
    let (ta, cpu_a) = (Instant::now(), ex.cpu_seconds());
    tokio::time::sleep(window).await;
    let (cpu_b, tb) = (ex.cpu_seconds(), Instant::now());
    let (b, _) = ex.scrape().await?;
    let span = tb.duration_since(t0).as_secs_f64();
    let cpu_span = tb.duration_since(ta).as_secs_f64();
    let probes = all_finished(&b) - all_finished(&a);
    let success = finished(&b, "success") - finished(&a, "success");
    let cpu = cpu_b - cpu_a;
    let mut times = vec![];
    let mut bytes = 0;
    let mut series = 0;
    for _ in 0..3 {
        let (text, d) = ex.scrape().await?;
        times.push(d.as_secs_f64() * 1e3);
        bytes = text.len();
        series = stats::samples(&text).count();
    }
    let (rss, hwm) = ex.memory();
    ex.stop();
    let scrape_max = times.iter().copied().fold(0.0, f64::max);
    Ok(ScaleResult {
        dueslag: n,
        interval_s: interval.as_secs_f64(),
        configured_probes_per_s: n as f64 / interval.as_secs_f64(),
        achieved_probes_per_s: probes / span,
        success_share: if probes > 0.0 { success / probes } else { 0.0 },
        cpu_seconds_per_1000_probes: if probes > 0.0 {
            cpu / probes * 1000.0
        } else {
            0.0
        },
        cpu_share_of_one_core: cpu / cpu_span,
        peak_rss_mb: hwm as f64 / MB,
        rss_mb_end: rss as f64 / MB,
        startup_s: startup.as_secs_f64(),
        scrape_ms: stats::percentile(&mut times, 0.5).unwrap_or(0.0),
        scrape_ms_max: scrape_max,
        scrape_bytes: bytes,
        series,
        window_s: span,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct AccuracyResult {
    pub dueslag: usize,
    pub probes_per_s: f64,
    pub injected_delay_ms: f64,
    pub samples: f64,
    pub measured_p50_ms: f64,
    pub measured_p99_ms: f64,
    /// measured − injected.
    pub error_p50_ms: f64,
    pub error_p99_ms: f64,
    pub bucket_resolution_ms: f64,
}

/// The injected delay against the exporter's own round-trip histogram, read with
/// 0.1 ms buckets around the delay.
pub async fn accuracy(
    bin: &Path,
    dir: &Path,
    n: usize,
    interval: Duration,
    delay: Duration,
    window: Duration,
) -> anyhow::Result<AccuracyResult> {
    let d = delay.as_secs_f64();
    let step = 0.0001;
    let mut buckets: Vec<f64> = (0..=150)
        .map(|i| ((d + i as f64 * step) * 1e7).round() / 1e7)
        .collect();
    buckets.extend([d + 0.025, d + 0.05, d + 0.1, d + 0.5, d + 1.0, d + 5.0]);
    buckets
        .iter_mut()
        .for_each(|b| *b = (*b * 1e7).round() / 1e7);
    let cfg = sim_config(&SimSetup {
        dueslag: n,
        interval,
        delay,
        loss: 0.0,
        duplicate: 0.0,
        buckets: Some(&buckets),
    });
    let ex = Exporter::spawn(bin, dir, "accuracy", &cfg).await?;
    tokio::time::sleep(interval + Duration::from_secs(2)).await;
    let (a, _) = ex.scrape().await?;
    let ta = Instant::now();
    tokio::time::sleep(window).await;
    let (b, _) = ex.scrape().await?;
    let span = ta.elapsed().as_secs_f64();
    ex.stop();
    let name = "bfo_alive_roundtrip_duration_seconds_bucket";
    let h = Buckets::from_text(&b, name).minus(&Buckets::from_text(&a, name));
    let ms = |q| h.quantile(q).unwrap_or(f64::NAN) * 1e3;
    let (p50, p99) = (ms(0.5), ms(0.99));
    Ok(AccuracyResult {
        dueslag: n,
        probes_per_s: h.count() / span,
        injected_delay_ms: d * 1e3,
        samples: h.count(),
        measured_p50_ms: p50,
        measured_p99_ms: p99,
        error_p50_ms: p50 - d * 1e3,
        error_p99_ms: p99 - d * 1e3,
        bucket_resolution_ms: step * 1e3,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Checkpoint {
    pub at_s: f64,
    pub rss_mb: f64,
    pub inflight: f64,
    /// The oldest `bfo_alive_last_attempt_timestamp_seconds` of any dueslag, as an age.
    pub oldest_attempt_age_s: f64,
    /// Dueslag whose last attempt did not move since the previous checkpoint.
    pub unmoved: usize,
    pub probes_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakResult {
    pub dueslag: usize,
    pub interval_s: f64,
    pub duration_s: f64,
    pub loss: f64,
    pub duplicate: f64,
    pub checkpoints: Vec<Checkpoint>,
    /// RSS at the first checkpoint after warm-up, at the end, and the largest.
    pub rss_mb_first: f64,
    pub rss_mb_last: f64,
    pub rss_mb_max: f64,
    pub peak_rss_mb: f64,
    pub max_inflight: f64,
    pub max_attempt_age_s: f64,
    /// Dueslag that ever failed to move between two checkpoints.
    pub stalled_dueslag: usize,
    pub received: Vec<(String, f64)>,
    pub results: Vec<(String, f64)>,
    pub lost: f64,
    pub cpu_share_of_one_core: f64,
}

type Previous = (Vec<(String, f64)>, f64, Instant);

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn last_attempts(text: &str) -> Vec<(String, f64)> {
    stats::samples(text)
        .filter(|s| s.name == "bfo_alive_last_attempt_timestamp_seconds")
        .filter_map(|s| Some((stats::label(s.labels, "dueslag")?.to_string(), s.value)))
        .collect()
}

/// N dueslag with loss and duplicates for `duration`: memory stays flat and every probe
/// loop keeps attempting. Checkpoints every `every` (each scrapes every series).
pub async fn soak(
    bin: &Path,
    dir: &Path,
    n: usize,
    interval: Duration,
    duration: Duration,
    every: Duration,
) -> anyhow::Result<SoakResult> {
    let (loss, duplicate) = (0.01, 0.01);
    let cfg = sim_config(&SimSetup {
        dueslag: n,
        interval,
        delay: Duration::from_millis(5),
        loss,
        duplicate,
        buckets: None,
    });
    let mut ex = Exporter::spawn(bin, dir, "soak", &cfg).await?;
    let start = Instant::now();
    let cpu0 = ex.cpu_seconds();
    let mut checkpoints: Vec<Checkpoint> = vec![];
    // The previous checkpoint: last attempts by dueslag, finished probes, when.
    let mut prev: Option<Previous> = None;
    let mut stalled = std::collections::BTreeSet::new();
    let mut last_text;
    // The first checkpoint after one interval (every loop has attempted once).
    let mut next = start + interval + Duration::from_secs(2);
    loop {
        tokio::time::sleep_until(next.into()).await;
        if !ex.alive() {
            anyhow::bail!("the exporter died during the soak; see soak.log");
        }
        let (text, _) = ex.scrape().await?;
        let now = now_unix();
        let attempts = last_attempts(&text);
        let oldest = attempts.iter().map(|(_, t)| now - t).fold(0.0, f64::max);
        let total = all_finished(&text);
        let mut unmoved = 0;
        let mut rate = 0.0;
        if let Some((p, ptotal, pt)) = &prev {
            // Only a gap longer than an interval plus its jitter must see every loop move.
            if pt.elapsed() >= interval.mul_f64(1.5) {
                let before: std::collections::HashMap<&str, f64> =
                    p.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                for (name, t) in &attempts {
                    if before.get(name.as_str()).is_some_and(|b| b >= t) {
                        unmoved += 1;
                        stalled.insert(name.clone());
                    }
                }
            }
            rate = (total - ptotal) / pt.elapsed().as_secs_f64();
        }
        let (rss, _) = ex.memory();
        checkpoints.push(Checkpoint {
            at_s: start.elapsed().as_secs_f64(),
            rss_mb: rss as f64 / MB,
            inflight: stats::sum(&text, "bfo_alive_inflight", |_| true),
            oldest_attempt_age_s: oldest,
            unmoved,
            probes_per_s: rate,
        });
        let c = checkpoints.last().unwrap();
        eprintln!(
            "  soak t={:>4.0}s rss={:.1} MB inflight={} oldest attempt {:.1}s ago, unmoved={} probes/s={:.0}",
            c.at_s, c.rss_mb, c.inflight, c.oldest_attempt_age_s, c.unmoved, c.probes_per_s
        );
        prev = Some((attempts, total, Instant::now()));
        last_text = text;
        if start.elapsed() >= duration {
            break;
        }
        next += every;
    }
    let cpu = ex.cpu_seconds() - cpu0;
    let (_, hwm) = ex.memory();
    let elapsed = start.elapsed().as_secs_f64();
    ex.stop();
    let by_label = |name: &str, key: &str, values: &[&str]| -> Vec<(String, f64)> {
        values
            .iter()
            .map(|v| {
                (
                    v.to_string(),
                    stats::sum(&last_text, name, |l| stats::label(l, key) == Some(v)),
                )
            })
            .collect()
    };
    let rss: Vec<f64> = checkpoints.iter().map(|c| c.rss_mb).collect();
    Ok(SoakResult {
        dueslag: n,
        interval_s: interval.as_secs_f64(),
        duration_s: elapsed,
        loss,
        duplicate,
        rss_mb_first: rss.first().copied().unwrap_or(0.0),
        rss_mb_last: rss.last().copied().unwrap_or(0.0),
        rss_mb_max: rss.iter().copied().fold(0.0, f64::max),
        peak_rss_mb: hwm as f64 / MB,
        max_inflight: checkpoints.iter().map(|c| c.inflight).fold(0.0, f64::max),
        max_attempt_age_s: checkpoints
            .iter()
            .map(|c| c.oldest_attempt_age_s)
            .fold(0.0, f64::max),
        stalled_dueslag: stalled.len(),
        received: by_label(
            "bfo_alive_received_total",
            "kind",
            &ReceivedKind::ALL.map(ReceivedKind::as_str),
        ),
        results: by_label("bfo_alive_probes_total", "result", &ProbeResult::LABELS),
        lost: stats::sum(&last_text, "bfo_alive_lost_total", |_| true),
        cpu_share_of_one_core: cpu / elapsed,
        checkpoints,
    })
}
