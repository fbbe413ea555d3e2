//! The test broker started by `scripts/rabbitmq.sh` (found through `BFO_TEST_AMQP_ENV`):
//! its settings, `rabbitmqctl`, and a fresh vhost per test.
//!
//! Shared by the integration tests and the crate's unit tests (`src/testkit.rs` includes
//! this file), so it names nothing of the crate: one way to find the broker, skip loudly
//! without it, and fail in CI.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

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

    /// Runs rabbitmqctl against the test node; panics on failure.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(format!("{}/rabbitmqctl", self.var("RABBITMQ_SBIN")))
            .env("HOME", self.var("RABBITMQ_HOME_DIR"))
            .env("ERL_EPMD_PORT", self.var("ERL_EPMD_PORT"))
            .args(["-q", "-n", self.var("RABBITMQ_NODENAME")])
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
