//! Slow clients against the push endpoint (RELIABILITY.md): N connections to
//! `POST /push/{dueslag}` on the push listener that send their request head, or their
//! body, one byte a second, while `/metrics` is scraped on the main listener. It reports
//! how many the exporter cut and how fast, its file descriptors and resident memory
//! before, during and after, and the scrape latency throughout. Loopback only; every
//! client gives up after `hold`, so the run ends by itself.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::child::{Exporter, free_port};
use crate::stats::{label, percentile, samples};

#[derive(Debug, Clone, Serialize)]
pub struct SlowResult {
    pub clients: usize,
    pub max_connections: usize,
    /// Clients whose connection the exporter closed, and the longest it took.
    pub cut: usize,
    pub cut_within_s: f64,
    /// Clients still connected when they gave up (`hold`).
    pub not_cut: usize,
    pub connect_failed: usize,
    /// The exporter's own count, by reason (listener push).
    pub rejected: Vec<(String, f64)>,
    pub fds_before: usize,
    pub fds_peak: usize,
    /// 2 s after the last client, and when back within 2 of the baseline (the
    /// simulator's own push connections, refused during the attack, are kept alive until
    /// `idle_timeout`).
    pub fds_after: usize,
    pub fds_settled: usize,
    pub fds_settled_after_s: f64,
    pub rss_before_mb: f64,
    pub rss_peak_mb: f64,
    pub rss_after_mb: f64,
    pub scrapes: usize,
    pub scrape_failures: usize,
    pub scrape_p50_ms: f64,
    pub scrape_p99_ms: f64,
    pub scrape_max_ms: f64,
    pub duration_s: f64,
}

fn config(push_port: u16, max_connections: usize) -> String {
    let mut c = format!(
        "[exporter]\ninstance = \"bench-slow\"\n\n[identity]\nanvendersystem = \"cf12c051-39ce-4066-ba11-704b46fa23c4\"\ncvr = \"29189846\"\n\n[broker]\nbackend = \"sim\"\n\n[defaults]\ninterval = \"1s\"\ntimeout = \"10s\"\n\n[push]\nlisten = \"127.0.0.1:{push_port}\"\n\n[http]\nmax_connections = {max_connections}\n\n[[dueslag]]\nname = \"h\"\nmode = \"push\"\nid = \"5d0a4c3e-8f1b-4f7e-9a55-2b7d1c0e9f31\"\n"
    );
    for i in 0..20 {
        c.push_str(&format!(
            "\n[[dueslag]]\nname = \"p{i}\"\nmode = \"pull\"\nqueue = \"q-{i}\"\n"
        ));
    }
    c
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// One slow client: the time from connect until the exporter closed it, or `None` when
/// it was still open after `hold`.
async fn slow_client(
    addr: String,
    body: bool,
    gap: Duration,
    hold: Duration,
) -> Result<Option<Duration>, ()> {
    let mut c = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&addr))
        .await
        .map_err(|_| ())?
        .map_err(|_| ())?;
    let start = Instant::now();
    let head = if body {
        "POST /push/h HTTP/1.1\r\nHost: bench\r\nContent-Type: application/xml\r\nContent-Length: 1000000\r\n\r\n"
    } else {
        "POST /push/h HTTP/1.1\r\n"
    };
    if c.write_all(head.as_bytes()).await.is_err() {
        return Ok(Some(start.elapsed()));
    }
    let mut buf = [0u8; 4096];
    while start.elapsed() < hold {
        match tokio::time::timeout(gap, c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(Some(start.elapsed())),
            // An answer (408, 503): the close follows.
            Ok(Ok(_)) => continue,
            Err(_) => {}
        }
        let byte: &[u8] = if body { b"<" } else { b"X" };
        if c.write_all(byte).await.is_err() {
            return Ok(Some(start.elapsed()));
        }
    }
    Ok(None)
}

pub async fn run(
    bin: &Path,
    dir: &Path,
    clients: usize,
    max_connections: usize,
    hold: Duration,
) -> anyhow::Result<SlowResult> {
    let push_port = free_port()?;
    let name = format!("slow-{clients}-cap{max_connections}");
    let exp = Exporter::spawn(bin, dir, &name, &config(push_port, max_connections)).await?;
    // Settle: the dueslag have started and probed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    exp.scrape().await?;
    let fds_before = fds(exp.pid);
    let rss_before = exp.memory().0;
    let began = Instant::now();
    let addr = format!("127.0.0.1:{push_port}");
    let mut tasks = vec![];
    for i in 0..clients {
        // Ramp: 200 connections per 100 ms, half slow heads and half slow bodies.
        if i > 0 && i % 200 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tasks.push(tokio::spawn(slow_client(
            addr.clone(),
            i % 2 == 1,
            Duration::from_secs(1),
            hold,
        )));
    }
    let all_done = Arc::new(Mutex::new(false));
    let sampler = {
        let (all_done, pid, base) = (all_done.clone(), exp.pid, exp.base.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a client");
            let (mut lat, mut failures, mut fds_peak, mut rss_peak) = (vec![], 0, 0, 0u64);
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            while !*all_done.lock().await {
                tick.tick().await;
                let t = Instant::now();
                let ok = match http.get(format!("{base}/metrics")).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                } else {
                    failures += 1;
                }
                fds_peak = fds_peak.max(fds(pid));
                let rss = procfs::process::Process::new(pid as i32)
                    .and_then(|p| p.status())
                    .map_or(0, |s| s.vmrss.unwrap_or(0) * 1024);
                rss_peak = rss_peak.max(rss);
            }
            (lat, failures, fds_peak, rss_peak)
        })
    };
    let (mut cut, mut not_cut, mut failed, mut slowest) = (0, 0, 0, Duration::ZERO);
    for t in tasks {
        match t.await? {
            Ok(Some(d)) => {
                cut += 1;
                slowest = slowest.max(d);
            }
            Ok(None) => not_cut += 1,
            Err(()) => failed += 1,
        }
    }
    // Let the exporter close its side, then measure what is left, and until when.
    let ended = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fds_after = fds(exp.pid);
    let mut fds_settled = fds_after;
    while fds_settled > fds_before + 2 && ended.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        fds_settled = fds(exp.pid);
    }
    let fds_settled_after_s = ended.elapsed().as_secs_f64();
    *all_done.lock().await = true;
    let (mut lat, scrape_failures, fds_peak, rss_peak) = sampler.await?;
    let rss_after = exp.memory().0;
    let (text, _) = exp.scrape().await?;
    let rejected = samples(&text)
        .filter(|s| {
            s.name == "bfo_alive_http_connections_rejected_total"
                && label(s.labels, "listener") == Some("push")
                && s.value > 0.0
        })
        .map(|s| (label(s.labels, "reason").unwrap_or("").to_string(), s.value))
        .collect();
    let duration_s = began.elapsed().as_secs_f64();
    exp.stop();
    let mb = |b: u64| b as f64 / 1e6;
    Ok(SlowResult {
        clients,
        max_connections,
        cut,
        cut_within_s: slowest.as_secs_f64(),
        not_cut,
        connect_failed: failed,
        rejected,
        fds_before,
        fds_peak,
        fds_after,
        fds_settled,
        fds_settled_after_s,
        rss_before_mb: mb(rss_before),
        rss_peak_mb: mb(rss_peak),
        rss_after_mb: mb(rss_after),
        scrapes: lat.len(),
        scrape_failures,
        scrape_p50_ms: percentile(&mut lat, 0.5).unwrap_or(0.0),
        scrape_p99_ms: percentile(&mut lat, 0.99).unwrap_or(0.0),
        scrape_max_ms: lat.iter().copied().fold(0.0, f64::max),
        duration_s,
    })
}

/// One line per run for the terminal and report.
pub fn line(r: &SlowResult) -> String {
    format!(
        "{} slow clients, cap {}: {} cut within {:.1} s, {} not cut, {} connect failures; exporter counted {:?}; fds {} → peak {} → {} (2 s after) → {} ({:.0} s after); RSS {:.1} → peak {:.1} → {:.1} MB; /metrics {} scrapes ({} failed) p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {:.0} s",
        r.clients,
        r.max_connections,
        r.cut,
        r.cut_within_s,
        r.not_cut,
        r.connect_failed,
        r.rejected,
        r.fds_before,
        r.fds_peak,
        r.fds_after,
        r.fds_settled,
        r.fds_settled_after_s,
        r.rss_before_mb,
        r.rss_peak_mb,
        r.rss_after_mb,
        r.scrapes,
        r.scrape_failures,
        r.scrape_p50_ms,
        r.scrape_p99_ms,
        r.scrape_max_ms,
        r.duration_s
    )
}
