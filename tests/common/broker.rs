//! The test broker started by `scripts/rabbitmq.sh` (found through `BFO_TEST_AMQP_ENV`):
//! its settings, `rabbitmqctl`, a fresh vhost per test, and the emulator in-process.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use bfo_alive_exporter::emulator::{self, EmulatorConfig, Rabbitmqctl};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

pub const ENV_VAR: &str = "BFO_TEST_AMQP_ENV";

pub struct Broker {
    pub env: HashMap<String, String>,
}

impl Broker {
    /// The broker, or `None` (a loud skip) outside CI; in CI a missing broker fails.
    pub fn get() -> Option<Broker> {
        let Some(path) = std::env::var_os(ENV_VAR) else {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "{ENV_VAR} is not set; CI needs the test broker (scripts/rabbitmq.sh start DIR)"
                );
            }
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: no broker ({ENV_VAR} unset; run scripts/rabbitmq.sh start DIR and set {ENV_VAR}=DIR/env) ***\n"
            );
            return None;
        };
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{ENV_VAR}: {e}"));
        let env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Some(Broker { env })
    }

    pub fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from the broker env"))
    }

    pub fn path(&self, key: &str) -> PathBuf {
        PathBuf::from(self.var(key))
    }

    /// rabbitmqctl for the test node, as the emulator's `[emulator.rabbitmqctl]` takes it.
    pub fn rabbitmqctl(&self) -> Rabbitmqctl {
        Rabbitmqctl {
            path: Some(PathBuf::from(self.var("RABBITMQ_SBIN")).join("rabbitmqctl")),
            node: Some(self.var("RABBITMQ_NODENAME").to_string()),
            env: [
                (
                    "HOME".to_string(),
                    self.var("RABBITMQ_HOME_DIR").to_string(),
                ),
                (
                    "ERL_EPMD_PORT".to_string(),
                    self.var("ERL_EPMD_PORT").to_string(),
                ),
            ]
            .into(),
        }
    }

    /// [`Broker::rabbitmqctl`] as the `[emulator.rabbitmqctl]` table of an emulator file.
    pub fn rabbitmqctl_toml(&self) -> String {
        let ctl = self.rabbitmqctl();
        let env: Vec<String> = ctl
            .env
            .iter()
            .map(|(k, v)| format!("{k} = {v:?}"))
            .collect();
        format!(
            "[emulator.rabbitmqctl]\npath = {:?}\nnode = {:?}\nenv = {{ {} }}\n",
            ctl.path.unwrap(),
            ctl.node.unwrap(),
            env.join(", ")
        )
    }

    /// Runs rabbitmqctl against the test node; panics on failure.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self
            .rabbitmqctl()
            .command()
            .args(args)
            .output()
            .expect("rabbitmqctl runs");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// A new vhost with full rights for the test user; the AMQP URL into it.
    pub fn vhost(&self, name: &str) -> String {
        let vhost = format!("{name}-{}", uuid::Uuid::new_v4().simple());
        self.ctl(&["add_vhost", &vhost]);
        self.ctl(&[
            "set_permissions",
            "-p",
            &vhost,
            self.var("AMQP_USER"),
            ".*",
            ".*",
            ".*",
        ]);
        self.url_for(&vhost, false)
    }

    /// The plain (or TLS) URL of a vhost.
    pub fn url_for(&self, vhost: &str, tls: bool) -> String {
        let (base, _) = self
            .var(if tls { "AMQPS_URL" } else { "AMQP_URL" })
            .rsplit_once('/')
            .unwrap();
        format!("{base}/{vhost}")
    }
}

/// The `[emulator]` table on `url` that accepts the identity of [`super::IDENTITY`] and
/// needs no token; more `[emulator]` keys may follow it.
pub fn emulator_table(url: &str) -> String {
    format!(
        "[emulator]\nurl = \"{url}\"\nanvendersystem = \"cf12c051-39ce-4066-ba11-704b46fa23c4\"\n\
         cvr = \"29189846\"\nrequire_token = false\n"
    )
}

/// An exporter's `[broker]` table on `url` with PLAIN; more `[broker]` keys may follow it.
pub fn amqp_broker_table(url: &str) -> String {
    format!("[broker]\nbackend = \"amqp\"\nurl = \"{url}\"\nauth = \"plain\"\n")
}

pub fn vhost_of(url: &str) -> String {
    url.rsplit_once('/').unwrap().1.to_string()
}

/// Starts the emulator with this configuration text; it runs until the token is cancelled.
pub async fn start_emulator(text: &str) -> CancellationToken {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("emulator.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = EmulatorConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let stop = CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let s = stop.clone();
    tokio::spawn(async move {
        emulator::run(cfg, s, Some(tx)).await.unwrap();
    });
    tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
        .await
        .expect("the emulator declares its topology in time");
    stop
}

/// Messages ready in a queue, and the bodies (taken with basic.get and requeued by closing).
pub async fn queue_bodies(url: &str, queue: &str) -> Vec<Vec<u8>> {
    use lapin::options::BasicGetOptions;
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut bodies = vec![];
    for _ in 0..q.message_count() {
        if let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            bodies.push(m.delivery.data.clone());
        }
    }
    // Closing without ack puts them back.
    conn.close(200, "done".into()).await.unwrap();
    bodies
}

/// Declares the afsend exchange with no queue bound to it: every publish is unroutable.
pub async fn declare_unbound_exchange(url: &str) {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        bfo_alive_exporter::protocol::AFSEND_EXCHANGE.into(),
        lapin::ExchangeKind::Direct,
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    conn.close(200, "ok".into()).await.unwrap();
}

/// Publishes a body straight into a queue.
pub async fn publish_to_queue(url: &str, queue: &str, body: &[u8]) {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch.basic_publish(
        "".into(),
        queue.into(),
        Default::default(),
        body,
        Default::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    conn.close(200, "done".into()).await.unwrap();
}
