//! The whole server on the simulator, where a test has to look inside: what a graceful stop
//! leaves behind is no longer served over HTTP.

use std::time::Duration;

use super::*;
use crate::testkit::wait::wait_for;

/// Deliveries take 400 ms, probes go out every 100 ms: from the first one on, some are
/// always in flight.
const CONFIG: &str = r#"
[broker]
backend = "sim"
[identity]
anvendersystem = "cf12c051-39ce-4066-ba11-704b46fa23c4"
cvr = "29189846"
[defaults]
interval = "100ms"
timeout = "600ms"
send_timeout = "100ms"
jitter = 0.0
[[dueslag]]
name = "p"
mode = "pull"
queue = "q-p"
id = "2e4c6a8b-0d1f-4a3c-8e5b-7d9f1a3c5e01"
[sim.faults.p]
delay = "400ms"
"#;

#[tokio::test]
async fn graceful_stop_waits_for_inflight_probes_while_receivers_still_run() {
    // Real time: the server runs as in production, with the simulator's timer thread.
    let s = start(Options {
        source: ConfigSource::Embedded {
            name: "test".into(),
            text: CONFIG.into(),
        },
        listen: "127.0.0.1:0".into(),
        shard: None,
        probe_loops: true,
        watch_interval: None,
        web: Default::default(),
    })
    .await
    .expect("server starts");
    let registry = s.registry.clone();
    let status = move || registry.get("p").expect("p runs").status.snapshot();
    let now = status.clone();
    wait_for(Duration::from_secs(10), move || {
        let inflight = now().summary.inflight;
        async move {
            (inflight > 0)
                .then_some(())
                .ok_or_else(|| "nothing in flight yet".to_string())
        }
    })
    .await;
    s.stop().await;
    // Every probe begun has finished, and each one arrived: the receiver ran until the
    // last of them was in.
    let after = status();
    assert_eq!(after.summary.inflight, 0);
    let results: Vec<&str> = after.history.iter().map(|e| e.result).collect();
    assert!(
        !results.is_empty() && results.iter().all(|r| *r == "success"),
        "{results:?}"
    );
}
