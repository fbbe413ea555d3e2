//! Helpers shared by the integration tests: start the real server on 127.0.0.1:0 with a
//! configuration file, scrape it over HTTP, and wait for conditions.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use bfo_alive_exporter::server::{self, ConfigSource, Options, Server};

pub const IDENTITY: &str = r#"
[exporter]
instance = "test"

[identity]
anvendersystem = "cf12c051-39ce-4066-ba11-704b46fa23c4"
cvr = "29189846"
"#;

/// Chooses the embedded simulator (a configuration must name its backend).
pub const SIM: &str = "[broker]\nbackend = \"sim\"\n";

/// A config file in a temporary directory that lives as long as the value.
pub struct ConfigFile {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl ConfigFile {
    pub fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        ConfigFile { dir, path }
    }

    pub fn write(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
    }
}

/// Starts the exporter on loopback with this configuration text.
pub async fn start(text: &str) -> (Server, ConfigFile) {
    let file = ConfigFile::new(text);
    let server = server::start(Options {
        source: ConfigSource::File(file.path.clone()),
        listen: "127.0.0.1:0".into(),
        shard: None,
        probe_loops: true,
        watch_interval: None,
    })
    .await
    .expect("server starts");
    (server, file)
}

pub fn base(s: &Server) -> String {
    format!("http://{}", s.addr)
}

/// Serves `app` on 127.0.0.1:0 until the runtime ends; its base URL.
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// GET a path of the server: status and body.
pub async fn get(s: &Server, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("{}{path}", base(s))).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

pub async fn scrape(s: &Server) -> String {
    reqwest::get(format!("{}/metrics", base(s)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one series, written exactly as exposed (labels in exposition order).
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Waits until a series reaches at least `min`.
pub async fn wait_metric(s: &Server, series: &str, min: f64) -> String {
    let limit = Duration::from_secs(20);
    wait_for(limit, || async {
        let text = scrape(s).await;
        match value(&text, series) {
            Some(v) if v >= min => Ok(text),
            other => Err(format!("{series} = {other:?}")),
        }
    })
    .await
}

pub mod broker;
pub mod emulator;
mod wait;

pub use wait::wait_for;

/// Fails in CI (env CI set) and skips loudly elsewhere when a tool is missing.
pub fn require_tool(name: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{name} is required in CI but was not found on PATH");
        }
        eprintln!(
            "\n!!!!!!!! SKIPPED: {name} not found on PATH; install it (see README) !!!!!!!!\n"
        );
    }
    found
}
