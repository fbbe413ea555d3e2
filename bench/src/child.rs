//! The exporter under test as a separate process: spawned from the release binary with a
//! generated configuration on a free loopback port, measured through `/proc/PID` (CPU
//! time from `stat`, resident and peak resident memory from `status`), scraped over HTTP,
//! and killed by its PID when done.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running exporter process.
pub struct Exporter {
    child: Child,
    pub pid: u32,
    pub base: String,
    http: reqwest::Client,
}

/// A port free on loopback right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The `bfo-alive-exporter` binary next to this one (both are built by `cargo build --release`).
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("bfo-alive-exporter")))
        .unwrap_or_else(|| PathBuf::from("target/release/bfo-alive-exporter"))
}

/// A child process serving HTTP on a loopback port, ready once its `/-/ready` answers:
/// how the exporter and the benchmark's Prometheus servers are started.
pub struct Served {
    pub child: Child,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub http: reqwest::Client,
}

impl Served {
    /// Starts `cmd` (its output to `log`) and waits up to 120 s for `/-/ready` on `port`;
    /// fails at once when it exits first. `what` names it in errors; `timeout` bounds each
    /// later request through [`Served::http`].
    pub async fn spawn(
        mut cmd: Command,
        port: u16,
        log: std::fs::File,
        what: &str,
        timeout: Duration,
    ) -> anyhow::Result<Served> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let pid = child.id();
        let mut me = Served {
            child,
            pid,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder().timeout(timeout).build()?,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = me.child.try_wait()? {
                bail!("{what} exited during start-up ({status})");
            }
            let ok = me
                .http
                .get(format!("{}/-/ready", me.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!("{what} did not become ready within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Exporter {
    /// Writes `config` to `dir/NAME.toml`, starts the exporter on it and waits until it
    /// answers `/-/ready` (every dueslag is started before the listener serves).
    pub async fn spawn(bin: &Path, dir: &Path, name: &str, config: &str) -> anyhow::Result<Self> {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, config)?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let port = free_port()?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config.file")
            .arg(&cfg)
            .arg("--web.listen-address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--log.level")
            .arg("warn");
        let s = Served::spawn(cmd, port, log, "the exporter", Duration::from_secs(120))
            .await
            .with_context(|| format!("{} (see {name}.log)", bin.display()))?;
        Ok(Exporter {
            child: s.child,
            pid: s.pid,
            base: s.base,
            http: s.http,
        })
    }

    /// User + system CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        procfs::process::Process::new(self.pid as i32)
            .and_then(|p| p.stat())
            .map_or(0.0, |s| {
                (s.utime + s.stime) as f64 / procfs::ticks_per_second() as f64
            })
    }

    /// (VmRSS, VmHWM) in bytes.
    pub fn memory(&self) -> (u64, u64) {
        procfs::process::Process::new(self.pid as i32)
            .and_then(|p| p.status())
            .map_or((0, 0), |s| {
                (s.vmrss.unwrap_or(0) * 1024, s.vmhwm.unwrap_or(0) * 1024)
            })
    }

    /// GET /metrics: the body and how long the whole request took.
    pub async fn scrape(&self) -> anyhow::Result<(String, Duration)> {
        let t = Instant::now();
        let body = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok((body, t.elapsed()))
    }

    /// GET /metrics asking for `accept`: the body's length, its content type and how long
    /// the whole request took (render + transfer, to the last byte).
    pub async fn scrape_as(&self, accept: &str) -> anyhow::Result<(usize, String, Duration)> {
        let t = Instant::now();
        let r = self
            .http
            .get(format!("{}/metrics", self.base))
            .header("Accept", accept)
            .send()
            .await?
            .error_for_status()?;
        let kind = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = r.bytes().await?;
        Ok((body.len(), kind, t.elapsed()))
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process (by its PID, through the handle) and reaps it.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.kill();
    }
}
