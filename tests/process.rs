//! The binary as an operator runs it: SIGHUP reloads, SIGTERM stops gracefully with
//! exit code 0, and the demo starts and serves metrics.

mod common;

use std::io::{BufRead, BufReader};
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

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

async fn fetch(url: &str) -> Result<String, String> {
    bfo_alive_exporter::tls::install_crypto_provider();
    match reqwest::get(url).await {
        Ok(r) => r.text().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

#[tokio::test]
async fn sighup_reloads_and_sigterm_exits_zero() {
    let cfg = ConfigFile::new(&format!(
        "{IDENTITY}{SIM}\n[defaults]\ninterval = \"100ms\"\n[[dueslag]]\nname = \"a\"\nmode = \"push\"\n"
    ));
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bfo-alive-exporter"))
        .args([
            "--config.file",
            cfg.path.to_str().unwrap(),
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _reaper = Reaper(child.id());
    let url = format!("http://127.0.0.1:{port}/metrics");
    wait_for(Duration::from_secs(20), || async {
        let t = fetch(&url).await?;
        t.contains(r#"dueslag="a""#)
            .then_some(())
            .ok_or("no a".to_string())
    })
    .await;
    cfg.write(&format!(
        "{IDENTITY}{SIM}\n[defaults]\ninterval = \"100ms\"\n[[dueslag]]\nname = \"b\"\nmode = \"push\"\n"
    ));
    signal(&child, "HUP");
    wait_for(Duration::from_secs(10), || async {
        let t = fetch(&url).await?;
        (t.contains(r#"dueslag="b""#) && !t.contains(r#"dueslag="a""#))
            .then_some(())
            .ok_or("not reloaded".to_string())
    })
    .await;
    signal(&child, "TERM");
    let code = tokio::task::spawn_blocking(move || {
        let code = wait_exit(&mut child, Duration::from_secs(15));
        let mut log = String::new();
        for line in BufReader::new(child.stderr.take().unwrap()).lines() {
            log.push_str(&line.unwrap());
            log.push('\n');
        }
        (code, log)
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(0), "log:\n{}", code.1);
    assert!(
        code.1.contains("configuration reloaded") && code.1.contains("stopped"),
        "{}",
        code.1
    );
}

#[tokio::test]
async fn demo_runs_and_prints_where_to_look() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bfo-alive-exporter"))
        .args(["demo", "--web.listen-address", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _reaper = Reaper(child.id());
    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = wait_for(Duration::from_secs(20), || async {
        let t = fetch(&url).await?;
        match value(
            &t,
            r#"bfo_alive_probes_total{dueslag="sag-pull",mode="pull",result="success"}"#,
        ) {
            Some(v) if v >= 1.0 => Ok(t),
            v => Err(format!("{v:?}")),
        }
    })
    .await;
    for d in ["sag-pull", "sag-push", "flaky-pull", "flaky-push"] {
        assert!(text.contains(&format!(r#"dueslag="{d}""#)), "{d}");
    }
    signal(&child, "INT");
    let out = tokio::task::spawn_blocking(move || {
        let code = wait_exit(&mut child, Duration::from_secs(15));
        let mut stdout = String::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            stdout.push_str(&line.unwrap());
            stdout.push('\n');
        }
        (code, stdout)
    })
    .await
    .unwrap();
    assert_eq!(out.0, Some(0));
    assert!(
        out.1.contains(&format!("http://127.0.0.1:{port}/metrics")),
        "{}",
        out.1
    );
}
