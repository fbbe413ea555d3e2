//! A broker restart in the middle of a run: probes fail with reason "connection", the
//! connection gauges fall to 0, and everything resumes when the broker is back. Its own
//! test binary, because stopping the broker would disturb other tests running beside it.

mod common;

use std::time::Duration;

use common::broker::*;
use common::emulator::*;
use common::*;

/// The dueslag of both sides; the emulator adds the push URL to the last, `h`.
const DUESLAG: &str = "[[dueslag]]\nname = \"p\"\nmode = \"pull\"\nqueue = \"q-restart\"\nid = \"7a0e4c1d-2b3f-4a5e-8c6d-9e0f1a2b3c01\"\n[[dueslag]]\nname = \"h\"\nmode = \"push\"\nid = \"7a0e4c1d-2b3f-4a5e-8c6d-9e0f1a2b3c02\"\n";

#[tokio::test]
async fn broker_stop_and_start_is_survived() {
    let Some(b) = Broker::get() else { return };
    let url = b.vhost("restart");
    declare_queues(&url, &["q-restart"]).await;
    let (s, _f) = start(&format!(
        r#"{IDENTITY}
[broker]
backend = "amqp"
url = "{url}"
auth = "plain"
[push]
listen = "127.0.0.1:0"
[defaults]
interval = "200ms"
timeout = "3s"
send_timeout = "1s"
{DUESLAG}"#
    ))
    .await;
    // The emulator pushes to the address the exporter bound.
    let emu = start_emulator(&format!(
        r#"
[emulator]
url = "{url}"
anvendersystem = "cf12c051-39ce-4066-ba11-704b46fa23c4"
cvr = "29189846"
require_token = false
{DUESLAG}push_url = "http://{}/push/h"
"#,
        s.push_addr
    ))
    .await;
    wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#,
        2.0,
    )
    .await;

    b.ctl(&["stop_app"]);
    let text = wait_metric(
        &s,
        r#"bfo_alive_send_failures_total{dueslag="p",reason="connection"}"#,
        2.0,
    )
    .await;
    assert_eq!(
        value(
            &text,
            r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="send_error"}"#
        )
        .map(|v| v >= 2.0),
        Some(true)
    );
    wait_for(Duration::from_secs(10), || async {
        let t = scrape(&s).await;
        match value(
            &t,
            r#"bfo_alive_connection_up{connection="afhent",cvr="29189846"}"#,
        ) {
            Some(0.0) => Ok(()),
            v => Err(format!("afhent up = {v:?}")),
        }
    })
    .await;
    b.ctl(&["start_app"]);
    b.ctl(&["await_startup"]);

    let text = scrape(&s).await;
    let p = value(
        &text,
        r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#,
    )
    .unwrap();
    let h = value(
        &text,
        r#"bfo_alive_probes_total{dueslag="h",mode="push",result="success"}"#,
    )
    .unwrap();
    // Backoff is capped at 30 s; allow for one full step.
    let limit = Duration::from_secs(60);
    for (series, min) in [
        (
            r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#,
            p + 3.0,
        ),
        (
            r#"bfo_alive_probes_total{dueslag="h",mode="push",result="success"}"#,
            h + 3.0,
        ),
    ] {
        wait_for(limit, || async {
            let t = scrape(&s).await;
            match value(&t, series) {
                Some(v) if v >= min => Ok(()),
                v => Err(format!("{series} = {v:?}")),
            }
        })
        .await;
    }
    let text = scrape(&s).await;
    assert_eq!(
        value(
            &text,
            r#"bfo_alive_connection_up{connection="afsend",cvr="29189846"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            r#"bfo_alive_connection_up{connection="afhent",cvr="29189846"}"#
        ),
        Some(1.0)
    );
    s.stop().await;
    emu.cancel();
}
