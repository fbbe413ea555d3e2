//! The binary as an operator runs it: SIGHUP reloads, SIGTERM stops gracefully with
//! exit code 0, and the demo starts and serves metrics.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// Kills the child if a failing assertion leaves it running; a no-op once it has exited.
struct Reaper(u32);

impl Drop for Reaper {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

/// The binary, running on 127.0.0.1:0.
struct Exporter {
    child: Child,
    /// The address it bound, from its `listening` log line.
    addr: SocketAddr,
    /// Its log (stderr), whole once it has exited.
    log: std::thread::JoinHandle<String>,
    _reaper: Reaper,
}

/// Starts the binary with `args` on 127.0.0.1:0 and waits for the address it bound.
fn spawn(args: &[&str], stdout: Stdio) -> Exporter {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bfo-alive-exporter"))
        .args(args)
        .args(["--web.listen-address", "127.0.0.1:0"])
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reaper = Reaper(child.id());
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut log = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = listening_addr(&line) {
                let _ = tx.send(addr);
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a `listening` log line with the bound address");
    Exporter {
        child,
        addr,
        log,
        _reaper: reaper,
    }
}

/// `addr` of the log line `message=listening addr=127.0.0.1:PORT push_addr=...`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("message=listening") {
        return None;
    }
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .and_then(|a| a.trim_matches('"').parse().ok())
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

async fn fetch(url: &str) -> Result<String, String> {
    // reqwest here has no TLS provider of its own; the process default is ring, as in
    // the exporter.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match reqwest::get(url).await {
        Ok(r) => r.text().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// The exit code within `limit`, or `None` (and the child killed).
fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        // Real time: a child process, and std has no wait with a timeout. A bounded poll.
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

#[tokio::test]
async fn sighup_reloads_and_sigterm_exits_zero() {
    let cfg = ConfigFile::new(&format!(
        "{IDENTITY}{SIM}\n[defaults]\ninterval = \"100ms\"\n[[dueslag]]\nname = \"a\"\nmode = \"push\"\nid = \"5b1e2a80-0c7d-4f4e-8a55-2f9e6c3d1a01\"\n"
    ));
    let e = spawn(
        &["--config.file", cfg.path.to_str().unwrap()],
        Stdio::null(),
    );
    let url = format!("http://{}/metrics", e.addr);
    wait_for(Duration::from_secs(20), || async {
        let t = fetch(&url).await?;
        t.contains(r#"dueslag="a""#)
            .then_some(())
            .ok_or("no a".to_string())
    })
    .await;
    cfg.write(&format!(
        "{IDENTITY}{SIM}\n[defaults]\ninterval = \"100ms\"\n[[dueslag]]\nname = \"b\"\nmode = \"push\"\nid = \"5b1e2a80-0c7d-4f4e-8a55-2f9e6c3d1a02\"\n"
    ));
    let mut child = e.child;
    signal(&child, "HUP");
    wait_for(Duration::from_secs(10), || async {
        let t = fetch(&url).await?;
        (t.contains(r#"dueslag="b""#) && !t.contains(r#"dueslag="a""#))
            .then_some(())
            .ok_or("not reloaded".to_string())
    })
    .await;
    signal(&child, "TERM");
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
    let log = e.log.join().unwrap();
    assert_eq!(code, Some(0), "log:\n{log}");
    assert!(
        log.contains("configuration reloaded") && log.contains("stopped"),
        "{log}"
    );
}

#[tokio::test]
async fn demo_runs_and_prints_where_to_look() {
    let e = spawn(&["demo"], Stdio::piped());
    let url = format!("http://{}/metrics", e.addr);
    let text = wait_for(Duration::from_secs(20), || async {
        let t = fetch(&url).await?;
        match value(
            &t,
            r#"bfo_alive_probes_total{dueslag="sag-pull",kommune="koebenhavn",mode="pull",result="success"}"#,
        ) {
            Some(v) if v >= 1.0 => Ok(t),
            v => Err(format!("{v:?}")),
        }
    })
    .await;
    for d in ["sag-pull", "sag-push", "flaky-pull", "flaky-push"] {
        assert!(text.contains(&format!(r#"dueslag="{d}""#)), "{d}");
    }
    let mut child = e.child;
    signal(&child, "INT");
    let (code, stdout) = tokio::task::spawn_blocking(move || {
        let code = wait_exit(&mut child, Duration::from_secs(15));
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        (code, stdout)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0));
    // It prints the address it bound, the same one it logs.
    assert!(stdout.contains(&url), "{stdout}");
}
