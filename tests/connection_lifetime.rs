//! Connections that end while probes run, against the real RabbitMQ: closed by the broker
//! (`rabbitmqctl close_connection`), replaced by the exporter at `[broker]
//! max_connection_age` (make before break), and ended by the emulator at its own
//! `max_connection_age`, as the Beskedfordeler ends them after an hour. In every case the
//! probes keep succeeding and no failure is counted (ARCHITECTURE.md §2).
//!
//! Each test has its own vhost and touches only the connections in it. So that a cut always
//! finds Afsend attempts waiting for their StandardRetur, the emulator answers 300 ms late
//! (`reply_delay`) and more pull dueslag than the two whose successes are awaited (`p`,
//! `h`) send. The push endpoint is
//! the exporter's main listener (`127.0.0.1:0`), so the emulator starts after the exporter;
//! the probes sent before it declared the Beskedfordeler's exchange fail, which is why
//! failures are compared with a baseline taken once both dueslag succeed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bfo_alive_exporter::emulator::ClientConnection;
use bfo_alive_exporter::server::Server;
use common::broker::*;
use common::emulator::start_emulator;
use common::*;

const PULL_OK: &str = r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#;
const PUSH_OK: &str = r#"bfo_alive_probes_total{dueslag="h",mode="push",result="success"}"#;

/// What the exporter's connections are named (`connection_name`), whatever the service.
const EXPORTER_CONNECTION: &str = "bfo-alive-exporter ";

/// The pull dueslag: `p`, whose successes are awaited, and more that only add traffic.
const PULL: [&str; 5] = ["p", "more-1", "more-2", "more-3", "more-4"];

/// The `[[dueslag]]` tables: every [`PULL`] dueslag and the push dueslag `h`, with the
/// emulator's `push_url` to `s` when given.
fn dueslag_tables(push_to: Option<&Server>) -> String {
    let mut t: String = PULL
        .iter()
        .map(|d| format!("{}\n", pull_dueslag(d)))
        .collect();
    t += &push_dueslag("h");
    if let Some(s) = push_to {
        t += &format!("push_url = \"http://{}/push/h\"\n", s.addr);
    }
    t
}

fn exporter_config(url: &str, max_connection_age: &str) -> String {
    format!(
        "{IDENTITY}{}max_connection_age = \"{max_connection_age}\"\n\n\
         [defaults]\ninterval = \"100ms\"\ntimeout = \"5s\"\nsend_timeout = \"2s\"\n\n{}",
        amqp_broker_table(url),
        dueslag_tables(None)
    )
}

/// The emulator for the exporter `s`, with more `[emulator]` keys in `extra`. Every
/// StandardRetur comes 300 ms late, so attempts are in flight at any time.
fn emulator_config(url: &str, s: &Server, extra: &str) -> String {
    let slow: String = PULL
        .iter()
        .chain(&["h"])
        .map(|d| format!("[faults.{d}]\nreply_delay = \"300ms\"\n"))
        .collect();
    format!(
        "{}{extra}\n{}\n{slow}",
        emulator_table(url),
        dueslag_tables(Some(s))
    )
}

/// The failure series (see [`failures`]) whose value differs from the baseline's, with
/// both values: empty when no probe failed since.
fn new_failures(baseline: &str, text: &str) -> BTreeMap<String, (f64, f64)> {
    let before = failures(baseline);
    failures(text)
        .into_iter()
        .filter_map(|(series, v)| {
            let was = before.get(&series).copied().unwrap_or(0.0);
            (v != was).then_some((series, (was, v)))
        })
        .collect()
}

/// Every series that counts a failure of any dueslag, with its value.
fn failures(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| {
            l.starts_with("bfo_alive_send_failures_total{")
                || l.starts_with("bfo_alive_lost_total{")
                || (l.starts_with("bfo_alive_probes_total{") && !l.contains("result=\"success\""))
        })
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            Some((series.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The Alive messages that came more than once (an Afsend retried after its message was
/// taken), over every dueslag.
fn duplicates(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("bfo_alive_received_total{") && l.contains("kind=\"duplicate\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Waits until both dueslag have at least `more` successes beyond `since` (pull, push).
async fn successes_beyond(s: &Server, since: (f64, f64), more: f64) -> (f64, f64) {
    wait_for(Duration::from_secs(30), || async {
        let t = scrape(s).await;
        let now = (
            value(&t, PULL_OK).unwrap_or(0.0),
            value(&t, PUSH_OK).unwrap_or(0.0),
        );
        if now.0 >= since.0 + more && now.1 >= since.1 + more {
            Ok(now)
        } else {
            Err(format!("successes {now:?}, want {more} beyond {since:?}"))
        }
    })
    .await
}

/// The exporter and the emulator, probing.
struct Running {
    s: Server,
    _file: ConfigFile,
    emu: tokio_util::sync::CancellationToken,
    /// A scrape once both dueslag succeed: what later scrapes are compared with.
    baseline: String,
    /// Successes (pull, push) in the baseline.
    ok: (f64, f64),
}

impl Running {
    /// Asserts that no probe failed since the baseline.
    async fn assert_no_new_failures(&self, why: &str) {
        let text = scrape(&self.s).await;
        assert_eq!(
            new_failures(&self.baseline, &text),
            BTreeMap::new(),
            "{why}"
        );
    }

    async fn stop(self) {
        self.s.stop().await;
        self.emu.cancel();
    }
}

/// Runs `test` with the broker, a new vhost named after `name`, and the exporter
/// (`max_connection_age`) and the emulator (more `[emulator]` keys in `emulator_extra`)
/// probing in it, then stops them. Without a broker: a loud skip, or a failure in CI.
async fn probing(
    name: &str,
    max_connection_age: &str,
    emulator_extra: &str,
    test: impl AsyncFnOnce(&Broker, &str, &Running),
) {
    let Some(b) = Broker::get() else { return };
    let url = b.vhost(name);
    let r = warmed_up(&b, &url, max_connection_age, emulator_extra).await;
    test(&b, &vhost_of(&url), &r).await;
    r.stop().await;
}

/// Starts the exporter, then the emulator; returns once both dueslag succeed.
async fn warmed_up(
    b: &Broker,
    url: &str,
    max_connection_age: &str,
    emulator_extra: &str,
) -> Running {
    let (s, f) = start(&exporter_config(url, max_connection_age)).await;
    let extra = if emulator_extra.is_empty() {
        String::new()
    } else {
        format!("{emulator_extra}\n{}", emulator::rabbitmqctl_toml(b))
    };
    let emu = start_emulator(&emulator_config(url, &s, &extra)).await;
    successes_beyond(&s, (0.0, 0.0), 2.0).await;
    // Sends that failed before the emulator was up may still be retrying: let them end.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let baseline = scrape(&s).await;
    let ok = (
        value(&baseline, PULL_OK).unwrap(),
        value(&baseline, PUSH_OK).unwrap(),
    );
    Running {
        s,
        _file: f,
        emu,
        baseline,
        ok,
    }
}

/// The exporter's connections in `vhost`.
async fn exporter_connections(b: &Broker, vhost: &str) -> Vec<ClientConnection> {
    emulator::rabbitmqctl(b)
        .connections()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| {
            c.vhost == vhost
                && c.name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(EXPORTER_CONNECTION))
        })
        .collect()
}

fn pids(conns: &[ClientConnection]) -> BTreeSet<String> {
    conns.iter().map(|c| c.pid.clone()).collect()
}

/// Waits until the exporter has a connection for each service in `vhost`, none of them in
/// `old`; returns them.
async fn fresh_connections(
    b: &Broker,
    vhost: &str,
    old: &BTreeSet<String>,
) -> Vec<ClientConnection> {
    wait_for(Duration::from_secs(30), || async {
        let conns = exporter_connections(b, vhost).await;
        let names: BTreeSet<_> = conns
            .iter()
            .filter(|c| !old.contains(&c.pid))
            .filter_map(|c| c.name.clone())
            .collect();
        if names.len() == 2 && conns.iter().all(|c| !old.contains(&c.pid)) {
            Ok(conns)
        } else {
            Err(format!("exporter connections {conns:?}, old {old:?}"))
        }
    })
    .await
}

/// `rounds` times: waits for exporter connections not seen before (one per service),
/// closes them with rabbitmqctl when `close` (else the emulator ends them), and waits for
/// probes through their successors. Returns the connections after the last round.
async fn through_cuts(
    b: &Broker,
    vhost: &str,
    r: &Running,
    rounds: usize,
    close: bool,
) -> Vec<ClientConnection> {
    let mut seen = BTreeSet::new();
    let mut ok = r.ok;
    for _ in 0..rounds {
        let conns = fresh_connections(b, vhost, &seen).await;
        for c in conns.iter().filter(|_| close) {
            emulator::rabbitmqctl(b)
                .close_connection(&c.pid, "test: the broker ends the connection")
                .await
                .unwrap();
        }
        seen.extend(pids(&conns));
        ok = successes_beyond(&r.s, ok, 3.0).await;
    }
    let last = fresh_connections(b, vhost, &seen).await;
    successes_beyond(&r.s, ok, 3.0).await;
    last
}

#[tokio::test]
async fn connections_closed_by_the_broker_cost_no_probe() {
    probing("cut", "0s", "", async |b, vhost, r| {
        through_cuts(b, vhost, r, 3, true).await;
        r.assert_no_new_failures("no probe failed for the cuts")
            .await;
    })
    .await;
}

#[tokio::test]
async fn max_connection_age_replaces_connections_without_a_failed_probe() {
    probing("rotate", "2s", "", async |b, vhost, r| {
        let s = &r.s;
        let first = pids(&exporter_connections(b, vhost).await);

        let rotations = |t: &str, service: &str| {
            value(
                t,
                &format!(r#"bfo_alive_connection_rotations_total{{connection="{service}",cvr="29189846"}}"#),
            )
            .unwrap()
        };
        let before = (
            rotations(&r.baseline, "afsend"),
            rotations(&r.baseline, "afhent"),
        );
        wait_for(Duration::from_secs(30), || async {
            let t = scrape(s).await;
            let now = (rotations(&t, "afsend"), rotations(&t, "afhent"));
            if now.0 >= before.0 + 4.0 && now.1 >= before.1 + 4.0 {
                Ok(())
            } else {
                Err(format!("rotations {now:?}, before {before:?}"))
            }
        })
        .await;
        successes_beyond(s, r.ok, 5.0).await;
        r.assert_no_new_failures("no probe failed for a replacement")
            .await;
        let text = scrape(s).await;
        // Not even a retry: every attempt on a replaced connection got its StandardRetur there
        // (a retried attempt whose message was taken would arrive twice).
        assert_eq!(
            duplicates(&text),
            duplicates(&r.baseline),
            "no attempt was cut by a replacement"
        );
        for service in ["afsend", "afhent"] {
            assert_eq!(
                value(
                    &text,
                    &format!(r#"bfo_alive_connection_up{{connection="{service}",cvr="29189846"}}"#)
                ),
                Some(1.0)
            );
        }
        // The first connections were closed once drained, and replaced ones do not pile up:
        // at most a current and a retiring one per service.
        wait_for(Duration::from_secs(30), || async {
            let conns = exporter_connections(b, vhost).await;
            if conns.len() <= 4 && pids(&conns).is_disjoint(&first) {
                Ok(())
            } else {
                Err(format!("connections {conns:?}, first {first:?}"))
            }
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn the_emulator_ends_connections_at_its_max_connection_age() {
    // The exporter never replaces its connections: the emulator's cut is what they see.
    probing(
        "emuage",
        "0s",
        "max_connection_age = \"3s\"",
        async |b, vhost, r| {
            let now = through_cuts(b, vhost, r, 2, false).await;
            // Ended at their age, and replaced by the exporter's reconnects.
            let age = |c: &ClientConnection| c.connected_at.elapsed().unwrap_or_default();
            assert!(
                now.iter().all(|c| age(c) < Duration::from_secs(3 + 5)),
                "{now:?}"
            );
            // The emulator's own connection was kept.
            let all = emulator::rabbitmqctl(b).connections().await.unwrap();
            assert!(
                all.iter().any(|c| c.vhost == vhost
                    && c.name.as_deref() == Some(bfo_alive_exporter::emulator::CONNECTION_NAME)
                    && age(c) > Duration::from_secs(3)),
                "{all:?}"
            );
            r.assert_no_new_failures("no probe failed for the cuts")
                .await;
        },
    )
    .await;
}
