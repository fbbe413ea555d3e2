//! `--only municipalities`: many municipalities in one exporter. The same 2,000 pull dueslag
//! run twice in one run, as 100 CVRs × 20 dueslag and as 1 CVR × 2,000 dueslag, on the
//! `amqp` backend against the emulator on RabbitMQ (which checks each message's
//! TilladtModtager against its token's CVR), with tokens from a local STS stub
//! ([`bfo_alive_exporter::sts_stub`]) over mutual TLS. Each scenario reports the start-up
//! time until every dueslag has succeeded once, STS requests per minute afterwards,
//! connections held, resident memory and CPU.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bfo_alive_exporter::sts_stub::StsStub;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::Serialize;

use crate::broker::{Broker, RunningEmulator};
use crate::child::Exporter;
use crate::stats;

const ANVENDER: &str = "cf12c051-39ce-4066-ba11-704b46fa23c4";

/// One scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Result {
    pub cvrs: usize,
    pub dueslag: usize,
    pub interval_s: f64,
    pub token_lifetime_s: f64,
    /// From the exporter's start until every dueslag has a success (the first probe of a
    /// dueslag goes at random within its interval, so this is about one interval).
    pub startup_all_succeeded_s: f64,
    /// From the exporter's start until every token is held and every connection is up
    /// (polled every 500 ms).
    pub startup_tokens_and_connections_s: f64,
    /// STS requests during start-up (until every dueslag succeeded).
    pub sts_requests_startup: u64,
    /// STS requests per minute over the window after start-up.
    pub sts_requests_per_min: f64,
    /// `bfo_alive_connection_up == 1` series at the end of the window.
    pub connections_up: usize,
    /// `bfo_alive_token_expiry_timestamp_seconds` series with a token.
    pub tokens: usize,
    pub rss_mb: f64,
    pub peak_rss_mb: f64,
    /// CPU share of one core over the window.
    pub cpu_share_of_one_core: f64,
    /// Probes per second that succeeded over the window.
    pub success_per_s: f64,
    /// Sends refused by the emulator (wrong CVR, expired token) over the window.
    pub rejected: f64,
    pub window_s: f64,
}

/// The one-line summary of a scenario.
pub fn line(r: &Result) -> String {
    format!(
        "{:>3} CVR × {:>4} dueslag: tokens and connections after {:.1} s, all succeeded after {:.1} s ({} STS requests), {:.1} STS req/min, {} connections, {} tokens, RSS {:.1} MB (peak {:.1}), CPU {:.1}% of a core, {:.1} successes/s, {} rejected",
        r.cvrs,
        r.dueslag / r.cvrs.max(1),
        r.startup_tokens_and_connections_s,
        r.startup_all_succeeded_s,
        r.sts_requests_startup,
        r.sts_requests_per_min,
        r.connections_up,
        r.tokens,
        r.rss_mb,
        r.peak_rss_mb,
        r.cpu_share_of_one_core * 100.0,
        r.success_per_s,
        r.rejected
    )
}

/// The test PKI: a CA, the stub's server certificate and the supplier's client
/// certificate (the one `[broker.tls]` certificate every municipality shares).
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &Path) -> anyhow::Result<Pki> {
    std::fs::create_dir_all(dir)?;
    let w = |name: &str, text: String| -> anyhow::Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |cn: &str, sans: Vec<String>, eku| -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(sans)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (srv, srv_key) = leaf(
        "localhost",
        vec!["localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (cli, cli_key) = leaf(
        "bench supplier",
        vec![],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    Ok(Pki {
        ca: w("ca.pem", ca_cert.pem())?,
        server_cert: w("server.pem", srv)?,
        server_key: w("server.key", srv_key)?,
        client_cert: w("client.pem", cli)?,
        client_key: w("client.key", cli_key)?,
    })
}

/// Settings of the scenario.
pub struct Run<'a> {
    pub bin: &'a Path,
    pub dir: &'a Path,
    pub interval: Duration,
    pub token_lifetime: Duration,
    pub window: Duration,
    pub startup_limit: Duration,
}

/// The CVR of municipality `i`.
fn cvr(i: usize) -> String {
    format!("{:08}", 10_000_000 + i)
}

/// Runs `cvrs` municipalities × `per_cvr` pull dueslag.
pub async fn run(b: &Broker, r: &Run<'_>, cvrs: usize, per_cvr: usize) -> anyhow::Result<Result> {
    let name = format!("municipalities-{cvrs}x{per_cvr}");
    let pki = pki(&r.dir.join(format!("{name}-pki")))?;
    let sts = StsStub::start(&pki.server_cert, &pki.server_key, &pki.ca, r.token_lifetime).await?;
    let (vhost, url) = b.vhost(&name)?;
    let result = async {
        let all: Vec<String> = (0..cvrs).map(cvr).collect();
        let mut emu = format!(
            "[emulator]\nurl = \"{url}\"\nanvendersystem = \"{ANVENDER}\"\ncvr = \"{}\"\ncvrs = [{}]\nrequire_token = true\n",
            all[0],
            all.iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut exp = format!(
            "[exporter]\ninstance = \"bench\"\n[identity]\nanvendersystem = \"{ANVENDER}\"\ncvr = \"{}\"\n[broker]\nbackend = \"amqp\"\nurl = \"{url}\"\nauth = \"plain\"\n[broker.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[token]\nsource = \"sts\"\nsts_url = \"{}\"\nsts_ca_file = \"{}\"\nafsend_entity_id = \"http://bfo.bench/afsend\"\nafhent_entity_id = \"http://bfo.bench/afhent\"\n[defaults]\ninterval = \"{}ms\"\ntimeout = \"20s\"\nsend_timeout = \"10s\"\n",
            all[0],
            pki.client_cert.display(),
            pki.client_key.display(),
            sts.url,
            pki.ca.display(),
            r.interval.as_millis()
        );
        let mut n = 0usize;
        for c in &all {
            for j in 0..per_cvr {
                n += 1;
                let queue = format!("00000000-0000-4000-8000-{n:012}");
                emu.push_str(&format!(
                    "[[dueslag]]\nname = \"m{n:05}\"\nmode = \"pull\"\nqueue = \"{queue}\"\n"
                ));
                exp.push_str(&format!(
                    "[[dueslag]]\nname = \"m{n:05}\"\nmode = \"pull\"\nqueue = \"{queue}\"\ncvr = \"{c}\"\nlabels = {{ kommune = \"k{c}\", team = \"t{}\" }}\n",
                    j % 4
                ));
            }
        }
        let path = r.dir.join(format!("{name}-emulator.toml"));
        std::fs::write(&path, emu)?;
        let emu_run = RunningEmulator::start(&path, Duration::from_secs(120)).await?;
        let t0 = Instant::now();
        let ex = Exporter::spawn(r.bin, r.dir, &name, &exp).await?;
        let dueslag = cvrs * per_cvr;
        // Start-up: until every dueslag has succeeded once, and until every token and
        // connection (2 per CVR: every dueslag is pull) is there.
        let mut ready_at = None;
        let startup = loop {
            let (text, _) = ex.scrape().await?;
            let held = |prefix: &str, pred: &dyn Fn(&str) -> bool| {
                text.lines()
                    .filter(|l| l.starts_with(prefix) && pred(l))
                    .count()
            };
            if ready_at.is_none()
                && held("bfo_alive_token_expiry_timestamp_seconds{", &|l| {
                    !l.ends_with(" 0")
                }) >= 2 * cvrs
                && held("bfo_alive_connection_up{", &|l| l.ends_with(" 1")) >= 2 * cvrs
            {
                ready_at = Some(t0.elapsed());
            }
            let ok = text
                .lines()
                .filter(|l| {
                    l.starts_with("bfo_alive_probes_total{")
                        && l.contains(r#"result="success""#)
                        && !l.ends_with(" 0")
                })
                .count();
            if ok >= dueslag && ready_at.is_some() {
                break t0.elapsed();
            }
            anyhow::ensure!(
                t0.elapsed() < r.startup_limit,
                "{ok} of {dueslag} dueslag succeeded within {:?}; see {name}.log",
                r.startup_limit
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let sts_startup = sts.total();
        eprintln!(
            "  {cvrs} CVR × {per_cvr}: all {dueslag} succeeded after {:.1} s; window {:?}…",
            startup.as_secs_f64(),
            r.window
        );
        let (a, _) = ex.scrape().await?;
        let (ta, cpu_a, sts_a) = (Instant::now(), ex.cpu_seconds(), sts.total());
        tokio::time::sleep(r.window).await;
        let (cpu_b, span, sts_b) = (ex.cpu_seconds(), ta.elapsed().as_secs_f64(), sts.total());
        let (bt, _) = ex.scrape().await?;
        let (rss, peak) = ex.memory();
        ex.stop();
        emu_run.stop().await;
        let ok = |t: &str| {
            stats::sum(t, "bfo_alive_probes_total", |l| {
                stats::label(l, "result") == Some("success")
            })
        };
        let rejected = |t: &str| {
            stats::sum(t, "bfo_alive_send_failures_total", |l| {
                matches!(stats::label(l, "reason"), Some("rejected" | "token"))
            })
        };
        let count = |t: &str, prefix: &str, pred: &dyn Fn(&str) -> bool| {
            t.lines()
                .filter(|l| l.starts_with(prefix) && pred(l))
                .count()
        };
        Ok(Result {
            cvrs,
            dueslag,
            interval_s: r.interval.as_secs_f64(),
            token_lifetime_s: r.token_lifetime.as_secs_f64(),
            startup_all_succeeded_s: startup.as_secs_f64(),
            startup_tokens_and_connections_s: ready_at.unwrap_or(startup).as_secs_f64(),
            sts_requests_startup: sts_startup,
            sts_requests_per_min: (sts_b - sts_a) as f64 * 60.0 / span,
            connections_up: count(&bt, "bfo_alive_connection_up{", &|l| l.ends_with(" 1")),
            tokens: count(&bt, "bfo_alive_token_expiry_timestamp_seconds{", &|l| {
                !l.ends_with(" 0")
            }),
            rss_mb: rss as f64 / 1e6,
            peak_rss_mb: peak as f64 / 1e6,
            cpu_share_of_one_core: (cpu_b - cpu_a) / span,
            success_per_s: (ok(&bt) - ok(&a)) / span,
            rejected: rejected(&bt) - rejected(&a),
            window_s: span,
        })
    }
    .await;
    b.drop_vhost(&vhost);
    result
}
