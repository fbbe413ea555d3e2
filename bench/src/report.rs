//! The benchmark report: every result of one run, the targets of the benchmark issue
//! checked against them, and the human table (the JSON is the same struct, serialised).

use std::fmt::Write as _;

use serde::Serialize;

use super::broker::RateResult;
use super::scale::{AccuracyResult, ScaleResult, SoakResult};

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub want: String,
    pub got: String,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub started: String,
    pub command: String,
    pub machine: String,
    pub mode: String,
    pub scale: Vec<ScaleResult>,
    pub accuracy: Option<AccuracyResult>,
    pub broker: Vec<RateResult>,
    pub broker_error: Option<String>,
    pub soak: Option<SoakResult>,
    pub targets: Vec<Target>,
}

fn target(name: &str, want: &str, got: String, met: bool) -> Target {
    Target {
        name: name.into(),
        want: want.into(),
        got,
        met,
    }
}

impl Report {
    /// Checks the targets of the issue against what was measured.
    pub fn evaluate(&mut self) {
        let mut t = vec![];
        if let Some(s) = self.scale.iter().find(|s| s.dueslag >= 10_000) {
            t.push(target(
                "10k dueslag @1/10s: probe rate",
                ">= 0.99 x configured",
                format!(
                    "{:.1}/s of {:.0}/s ({:.3}x)",
                    s.achieved_probes_per_s,
                    s.configured_probes_per_s,
                    s.achieved_probes_per_s / s.configured_probes_per_s
                ),
                s.achieved_probes_per_s >= 0.99 * s.configured_probes_per_s,
            ));
            t.push(target(
                "10k dueslag: peak RSS",
                "<= 150 MB",
                format!("{:.1} MB", s.peak_rss_mb),
                s.peak_rss_mb <= 150.0,
            ));
            t.push(target(
                "10k dueslag: CPU",
                "<= 25% of one core",
                format!("{:.1}%", s.cpu_share_of_one_core * 100.0),
                s.cpu_share_of_one_core <= 0.25,
            ));
            t.push(target(
                "10k dueslag: /metrics render",
                "<= 250 ms",
                format!("{:.0} ms (max {:.0})", s.scrape_ms, s.scrape_ms_max),
                s.scrape_ms <= 250.0,
            ));
        }
        if let Some(a) = &self.accuracy {
            t.push(target(
                "accuracy: error p99",
                "<= 2 ms",
                format!("{:.2} ms (p50 {:.2} ms)", a.error_p99_ms, a.error_p50_ms),
                a.error_p99_ms.abs() <= 2.0,
            ));
        }
        if !self.broker.is_empty() {
            let worst_tp = self
                .broker
                .iter()
                .map(|r| r.throughput_ratio)
                .fold(f64::INFINITY, f64::min);
            let worst_p50 = self.broker.iter().map(|r| r.p50_ratio).fold(0.0, f64::max);
            t.push(target(
                "RabbitMQ: throughput vs raw baseline (worst step)",
                ">= 0.8x",
                format!("{worst_tp:.2}x"),
                worst_tp >= 0.8,
            ));
            t.push(target(
                "RabbitMQ: p50 vs raw baseline (worst step)",
                "<= 1.2x",
                format!("{worst_p50:.2}x"),
                worst_p50 <= 1.2,
            ));
        }
        if let Some(s) = &self.soak {
            let growth = s.rss_mb_last - s.rss_mb_first;
            t.push(target(
                "soak: memory flat",
                "RSS growth after warm-up <= 10%",
                format!(
                    "{:.1} -> {:.1} MB ({:+.1}%), max {:.1} MB",
                    s.rss_mb_first,
                    s.rss_mb_last,
                    growth / s.rss_mb_first * 100.0,
                    s.rss_mb_max
                ),
                growth <= 0.1 * s.rss_mb_first,
            ));
            t.push(target(
                "soak: no probe loop stalls",
                "0 dueslag with an unmoved last_attempt",
                format!(
                    "{} stalled; oldest last attempt {:.1} s (interval {:.0} s)",
                    s.stalled_dueslag, s.max_attempt_age_s, s.interval_s
                ),
                s.stalled_dueslag == 0,
            ));
        }
        self.targets = t;
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "bfo-alive-bench {} ({})", self.started, self.mode);
        let _ = writeln!(o, "machine: {}", self.machine);
        let _ = writeln!(o, "command: {}\n", self.command);
        if !self.scale.is_empty() {
            let _ = writeln!(
                o,
                "Scale on the simulator (exporter process, 5 ms injected delay)"
            );
            let _ = writeln!(
                o,
                "| dueslag | configured/s | achieved/s | success | CPU s/1000 probes | CPU % core | peak RSS MB | /metrics ms | /metrics MB | series |"
            );
            let _ = writeln!(o, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for s in &self.scale {
                let _ = writeln!(
                    o,
                    "| {} | {:.1} | {:.1} | {:.2}% | {:.3} | {:.1}% | {:.1} | {:.0} | {:.1} | {} |",
                    s.dueslag,
                    s.configured_probes_per_s,
                    s.achieved_probes_per_s,
                    s.success_share * 100.0,
                    s.cpu_seconds_per_1000_probes,
                    s.cpu_share_of_one_core * 100.0,
                    s.peak_rss_mb,
                    s.scrape_ms,
                    s.scrape_bytes as f64 / 1e6,
                    s.series
                );
            }
            o.push('\n');
        }
        if let Some(a) = &self.accuracy {
            let _ = writeln!(o, "Accuracy (simulator delay vs measured round trip)");
            let _ = writeln!(
                o,
                "| dueslag | probes/s | injected ms | samples | measured p50 ms | measured p99 ms | error p50 ms | error p99 ms |"
            );
            let _ = writeln!(o, "|---:|---:|---:|---:|---:|---:|---:|---:|");
            let _ = writeln!(
                o,
                "| {} | {:.0} | {:.1} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                a.dueslag,
                a.probes_per_s,
                a.injected_delay_ms,
                a.samples,
                a.measured_p50_ms,
                a.measured_p99_ms,
                a.error_p50_ms,
                a.error_p99_ms
            );
        }
        if !self.broker.is_empty() || self.broker_error.is_some() {
            let _ = writeln!(o, "RabbitMQ: exporter (+ emulator) vs raw lapin baseline");
            let _ = writeln!(
                o,
                "| offered/s | dueslag | exporter/s | baseline/s | throughput ratio | exporter p50 / p99 ms | baseline p50 / p99 ms | p50 ratio | p99 ratio | exporter CPU % |"
            );
            let _ = writeln!(o, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for r in &self.broker {
                let _ = writeln!(
                    o,
                    "| {:.0} | {} | {:.1} | {:.1} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} | {:.2} | {:.0}% |",
                    r.rate,
                    r.dueslag,
                    r.exporter.delivered_per_s,
                    r.baseline.delivered_per_s,
                    r.throughput_ratio,
                    r.exporter.p50_ms,
                    r.exporter.p99_ms,
                    r.baseline.p50_ms,
                    r.baseline.p99_ms,
                    r.p50_ratio,
                    r.p99_ratio,
                    r.exporter.cpu_share_of_one_core.unwrap_or(0.0) * 100.0
                );
            }
            if let Some(e) = &self.broker_error {
                let _ = writeln!(o, "broker scenario failed: {e}");
            }
            o.push('\n');
        }
        if let Some(s) = &self.soak {
            let _ = writeln!(
                o,
                "Soak: {} dueslag @1/{:.0}s, {:.0}% loss, {:.0}% duplicates, {:.0} s",
                s.dueslag,
                s.interval_s,
                s.loss * 100.0,
                s.duplicate * 100.0,
                s.duration_s
            );
            let _ = writeln!(
                o,
                "| t s | RSS MB | inflight | oldest last attempt s | unmoved | probes/s |"
            );
            let _ = writeln!(o, "|---:|---:|---:|---:|---:|---:|");
            for c in &s.checkpoints {
                let _ = writeln!(
                    o,
                    "| {:.0} | {:.1} | {:.0} | {:.1} | {} | {:.0} |",
                    c.at_s, c.rss_mb, c.inflight, c.oldest_attempt_age_s, c.unmoved, c.probes_per_s
                );
            }
            let fmt = |v: &[(String, f64)]| {
                v.iter()
                    .map(|(k, n)| format!("{k}={n:.0}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let _ = writeln!(
                o,
                "results: {}; received: {}; lost={:.0}; peak RSS {:.1} MB; CPU {:.1}% of a core\n",
                fmt(&s.results),
                fmt(&s.received),
                s.lost,
                s.peak_rss_mb,
                s.cpu_share_of_one_core * 100.0
            );
        }
        let _ = writeln!(o, "Targets");
        let _ = writeln!(o, "| target | want | got | met |");
        let _ = writeln!(o, "|---|---|---|---|");
        for t in &self.targets {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                t.name,
                t.want,
                t.got,
                if t.met { "yes" } else { "**no**" }
            );
        }
        o
    }
}
