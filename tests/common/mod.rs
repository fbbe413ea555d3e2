//! Helpers shared by the integration tests: start the real server on 127.0.0.1:0 with a
//! configuration file, scrape it over HTTP, and wait for conditions.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use bfo_alive_exporter::server::{self, ConfigSource, Options, Server, WebOptions};

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

/// Starts the exporter on loopback with this configuration text (and `POST /-/reload`).
pub async fn start(text: &str) -> (Server, ConfigFile) {
    start_with(
        text,
        WebOptions {
            enable_lifecycle: true,
            ..WebOptions::default()
        },
    )
    .await
}

/// Starts the exporter on loopback with this configuration text and these `--web.*` flags.
pub async fn start_with(text: &str, web: WebOptions) -> (Server, ConfigFile) {
    let file = ConfigFile::new(text);
    let server = server::start(Options {
        source: ConfigSource::File(file.path.clone()),
        listen: "127.0.0.1:0".into(),
        shard: None,
        probe_loops: true,
        watch_interval: None,
        web,
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

/// A dueslag UUID made from its name (FNV-1a), so that a test's exporter, emulator and
/// queue names agree on it without a table.
pub fn dueslag_id(name: &str) -> String {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("00000000-0000-4000-8000-{:012x}", hash & 0xffff_ffff_ffff)
}

/// A pull `[[dueslag]]` whose queue (and so its id) is [`dueslag_id`] of its name.
pub fn pull_dueslag(name: &str) -> String {
    format!(
        "[[dueslag]]\nname = \"{name}\"\nmode = \"pull\"\nqueue = \"{}\"\n",
        dueslag_id(name)
    )
}

/// A push `[[dueslag]]` whose id is [`dueslag_id`] of its name.
pub fn push_dueslag(name: &str) -> String {
    format!(
        "[[dueslag]]\nname = \"{name}\"\nmode = \"push\"\nid = \"{}\"\n",
        dueslag_id(name)
    )
}

/// The exporter's ObjektType for a dueslag, spelled out: a test must fail when it drifts.
pub const DUESLAG_OBJEKT_TYPE: &str = "urn:bfo-alive-exporter:dueslag";

/// An Alive message of exporter `instance` (run: new) for dueslag `dueslag`, addressed to
/// its [`dueslag_id`], from the sender of [`IDENTITY`].
pub fn alive_to(dueslag: &str, instance: &str) -> String {
    use bfo_alive_exporter::message::{
        AliveSpec, ProbePayload, RelateretObjekt, UnikId, build_alive,
    };
    let address = RelateretObjekt::dueslag(
        dueslag_id(dueslag).parse().unwrap(),
        &UnikId::Urn(DUESLAG_OBJEKT_TYPE.into()),
    );
    build_alive(&AliveSpec {
        besked_id: uuid::Uuid::new_v4(),
        anvendersystem: "cf12c051-39ce-4066-ba11-704b46fa23c4".parse().unwrap(),
        cvr: "29189846",
        relateret_objekt: &address,
        payload: &ProbePayload {
            instance: instance.into(),
            run: uuid::Uuid::new_v4(),
            dueslag: dueslag.into(),
            sequence: 1,
            sent_at: std::time::SystemTime::now(),
        },
    })
}

pub mod broker;
pub mod emulator;
pub mod pki;
mod wait;

pub use wait::wait_for;

/// What a run of the exporter's binary gave.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the exporter's binary with these arguments, to its end.
pub fn run_exporter<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bfo-alive-exporter"))
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

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
