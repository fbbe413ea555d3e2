//! The real protocol against a real RabbitMQ: the exporter's `amqp` backend, the emulator
//! playing the Beskedfordeler, and the push endpoint over HTTP. Each test has its own vhost.

mod common;

use std::time::Duration;

use common::broker::*;
use common::*;

const ANVENDER: &str = "cf12c051-39ce-4066-ba11-704b46fa23c4";

fn emulator_config(url: &str, require_token: bool, push_port: u16, faults: &str) -> String {
    format!(
        r#"
[emulator]
url = "{url}"
anvendersystem = "{ANVENDER}"
cvr = "29189846"
require_token = {require_token}

[[dueslag]]
name = "p"
mode = "pull"
queue = "q-pull"

[[dueslag]]
name = "h"
mode = "push"
push_url = "http://127.0.0.1:{push_port}/push/h"
{faults}
"#
    )
}

fn exporter_config(url: &str, push_port: u16, extra: &str, dueslag: &str) -> String {
    format!(
        r#"{IDENTITY}
[broker]
backend = "amqp"
url = "{url}"
auth = "plain"
{extra}
[push]
listen = "127.0.0.1:{push_port}"

[defaults]
interval = "200ms"
timeout = "3s"
send_timeout = "1s"
{dueslag}"#
    )
}

const BOTH: &str = "[[dueslag]]\nname = \"p\"\nmode = \"pull\"\nqueue = \"q-pull\"\n[[dueslag]]\nname = \"h\"\nmode = \"push\"\n";

#[tokio::test]
async fn pull_and_push_round_trips_through_the_emulator() {
    let Some(b) = Broker::get() else { return };
    let url = b.vhost("roundtrip");
    let port = free_port();
    let emu = start_emulator(&emulator_config(&url, false, port, "")).await;
    let (s, _f) = start(&exporter_config(&url, port, "", BOTH)).await;
    let text = wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#,
        3.0,
    )
    .await;
    assert_eq!(
        value(&text, r#"bfo_alive_connection_up{connection="afsend"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&text, r#"bfo_alive_connection_up{connection="afhent"}"#),
        Some(1.0)
    );
    wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="h",mode="push",result="success"}"#,
        3.0,
    )
    .await;
    let text = scrape(&s).await;
    assert!(
        value(
            &text,
            r#"bfo_alive_send_duration_seconds_count{dueslag="p"}"#
        )
        .unwrap()
            >= 3.0
    );
    s.stop().await;
    emu.cancel();
    // Every Alive message was acknowledged: nothing is left in the dueslag queue.
    assert!(queue_bodies(&url, "q-pull").await.is_empty());
}

fn saml(not_on_or_after: &str) -> String {
    format!(
        r#"<saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_t" Version="2.0" IssueInstant="2026-01-01T00:00:00Z"><saml:Issuer>https://sts.test</saml:Issuer><saml:Conditions NotBefore="2026-01-01T00:00:00Z" NotOnOrAfter="{not_on_or_after}"/></saml:Assertion>"#
    )
}

#[tokio::test]
async fn token_expiry_41_then_renewed_token_succeeds() {
    let Some(b) = Broker::get() else { return };
    let url = b.vhost("token");
    let port = free_port();
    let emu = start_emulator(&emulator_config(&url, true, port, "")).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token.xml");
    std::fs::write(&token_file, saml("2020-01-01T00:00:00Z")).unwrap();
    let extra = format!(
        "[token]\nsource = \"file\"\nfile = \"{}\"\n",
        token_file.display()
    );
    let pull = "[[dueslag]]\nname = \"p\"\nmode = \"pull\"\nqueue = \"q-pull\"\n";
    let (s, _f) = start(&exporter_config(&url, port, &extra, pull)).await;
    // The expired token is answered 41, renewed (the file still holds it), and in the end
    // counted as a token failure.
    wait_metric(
        &s,
        r#"bfo_alive_send_failures_total{dueslag="p",reason="token"}"#,
        1.0,
    )
    .await;
    let text = scrape(&s).await;
    assert_eq!(
        value(
            &text,
            r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            r#"bfo_alive_token_expiry_timestamp_seconds{service="afsend"}"#
        ),
        Some(1577836800.0)
    );
    // Another tool renews the token file: the next 41 renews from it and probes succeed.
    std::fs::write(&token_file, saml("2099-01-01T00:00:00Z")).unwrap();
    let text = wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#,
        2.0,
    )
    .await;
    assert_eq!(
        value(
            &text,
            r#"bfo_alive_token_expiry_timestamp_seconds{service="afsend"}"#
        ),
        Some(4070908800.0)
    );
    // The token never shows up in the exposition or the status page.
    let page = get(&s, "/dueslag/p").await.1;
    assert!(!text.contains("Assertion") && !page.contains("Assertion"));
    s.stop().await;
    emu.cancel();
}

#[tokio::test]
async fn rejection_codes_are_counted_with_the_code() {
    let Some(b) = Broker::get() else { return };
    let url = b.vhost("reject");
    let port = free_port();
    let emu = start_emulator(&emulator_config(
        &url,
        false,
        port,
        "[faults.h]\nreject = 1.0\nreject_code = 44\n",
    ))
    .await;
    let push = "[[dueslag]]\nname = \"h\"\nmode = \"push\"\n";
    let (s, _f) = start(&exporter_config(&url, port, "", push)).await;
    let text = wait_metric(
        &s,
        r#"bfo_alive_send_failures_total{dueslag="h",reason="rejected"}"#,
        2.0,
    )
    .await;
    assert_eq!(
        value(
            &text,
            r#"bfo_alive_probes_total{dueslag="h",mode="push",result="success"}"#
        ),
        Some(0.0)
    );
    // Push only: the afhent connection is never opened, so it has no series to alert on.
    assert_eq!(
        value(&text, r#"bfo_alive_connection_up{connection="afsend"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&text, r#"bfo_alive_connection_up{connection="afhent"}"#),
        None
    );
    let page = get(&s, "/dueslag/h").await.1;
    assert!(page.contains("<td>44</td>"), "{page}");
    s.stop().await;
    emu.cancel();
}

#[tokio::test]
async fn emulator_refuses_a_foreign_sender() {
    let Some(b) = Broker::get() else { return };
    let url = b.vhost("sender");
    let port = free_port();
    let emu = start_emulator(
        &emulator_config(&url, false, port, "")
            .replace(ANVENDER, "00000000-0000-0000-0000-000000000001"),
    )
    .await;
    let push = "[[dueslag]]\nname = \"h\"\nmode = \"push\"\n";
    let (s, _f) = start(&exporter_config(&url, port, "", push)).await;
    wait_metric(
        &s,
        r#"bfo_alive_send_failures_total{dueslag="h",reason="rejected"}"#,
        1.0,
    )
    .await;
    let page = get(&s, "/dueslag/h").await.1;
    assert!(
        page.contains("BeskedAnsvarligAktoer") && page.contains("<td>40</td>"),
        "{page}"
    );
    s.stop().await;
    emu.cancel();
}

#[tokio::test]
async fn unroutable_when_nothing_is_bound_to_the_exchange() {
    let Some(b) = Broker::get() else { return };
    let url = b.vhost("unroutable");
    // The exchange exists (declared here, as the exporter never declares), but no queue is bound.
    declare_unbound_exchange(&url).await;
    let push = "[[dueslag]]\nname = \"h\"\nmode = \"push\"\n";
    let (s, _f) = start(&exporter_config(&url, free_port(), "", push)).await;
    let text = wait_metric(
        &s,
        r#"bfo_alive_send_failures_total{dueslag="h",reason="unroutable"}"#,
        2.0,
    )
    .await;
    assert_eq!(
        value(
            &text,
            r#"bfo_alive_send_failures_total{dueslag="h",reason="connection"}"#
        ),
        Some(0.0)
    );
    s.stop().await;
}

#[tokio::test]
async fn closed_connections_are_survived_and_counted() {
    let Some(b) = Broker::get() else { return };
    let url = b.vhost("close");
    let port = free_port();
    let emu = start_emulator(&emulator_config(&url, false, port, "")).await;
    let (s, _f) = start(&exporter_config(&url, port, "", BOTH)).await;
    wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#,
        2.0,
    )
    .await;
    b.ctl(&[
        "close_all_connections",
        "--vhost",
        &vhost_of(&url),
        "test: network cut",
    ]);
    // The emulator reconnects too; probes resume on both dueslag.
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
    wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#,
        p + 5.0,
    )
    .await;
    let text = wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="h",mode="push",result="success"}"#,
        h + 5.0,
    )
    .await;
    assert_eq!(
        value(&text, r#"bfo_alive_connection_up{connection="afsend"}"#),
        Some(1.0)
    );
    let failures: f64 = ["p", "h"]
        .iter()
        .flat_map(|d| {
            ["connection", "timeout"]
                .map(|r| format!(r#"bfo_alive_send_failures_total{{dueslag="{d}",reason="{r}"}}"#))
        })
        .filter_map(|series| value(&text, &series))
        .sum();
    eprintln!("send failures during the cut: {failures}");
    s.stop().await;
    emu.cancel();
}

#[tokio::test]
async fn a_business_message_in_a_pull_dueslag_is_never_taken() {
    let Some(b) = Broker::get() else { return };
    let url = b.vhost("business");
    let port = free_port();
    let emu = start_emulator(&emulator_config(&url, false, port, "")).await;
    let business = bfo_alive_exporter::message::build_business_message(
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );
    publish_to_queue(&url, "q-pull", business.as_bytes()).await;
    let pull = "[[dueslag]]\nname = \"p\"\nmode = \"pull\"\nqueue = \"q-pull\"\n";
    let (s, _f) = start(&exporter_config(&url, port, "", pull)).await;
    // Held, and the Alive messages behind it keep flowing.
    let text = wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#,
        3.0,
    )
    .await;
    assert_eq!(
        value(
            &text,
            r#"bfo_alive_received_total{dueslag="p",mode="pull",kind="unexpected"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, r#"bfo_alive_held_messages{dueslag="p"}"#),
        Some(1.0)
    );
    s.stop().await;
    emu.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = queue_bodies(&url, "q-pull").await;
    assert_eq!(
        left,
        vec![business.clone().into_bytes()],
        "the business message must still be in the dueslag"
    );

    // With unexpected = "error-queue" it is dead-lettered to the error queue, still not acknowledged.
    let emu = start_emulator(&emulator_config(&url, false, port, "")).await;
    let pull = "[[dueslag]]\nname = \"p\"\nmode = \"pull\"\nqueue = \"q-pull\"\nunexpected = \"error-queue\"\n";
    let (s, _f) = start(&exporter_config(&url, port, "", pull)).await;
    wait_metric(
        &s,
        r#"bfo_alive_received_total{dueslag="p",mode="pull",kind="unexpected"}"#,
        1.0,
    )
    .await;
    s.stop().await;
    emu.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        queue_bodies(&url, "q-pull.error").await,
        vec![business.into_bytes()]
    );
    assert!(queue_bodies(&url, "q-pull").await.is_empty());
}

#[tokio::test]
async fn mutual_tls_to_the_broker() {
    let Some(b) = Broker::get() else { return };
    let plain = b.vhost("tls");
    let vhost = vhost_of(&plain);
    let tls_url = b.url_for(&vhost, true);
    let port = free_port();
    let emu = start_emulator(&emulator_config(&plain, false, port, "")).await;
    let extra = format!(
        "[broker.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        b.var("AMQP_CA"),
        b.var("AMQP_CLIENT_CERT"),
        b.var("AMQP_CLIENT_KEY")
    );
    let (s, _f) = start(&exporter_config(&tls_url, port, &extra, BOTH)).await;
    wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#,
        2.0,
    )
    .await;
    wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="h",mode="push",result="success"}"#,
        2.0,
    )
    .await;
    s.stop().await;

    // Without a client certificate the broker refuses the TLS connection: connection failures.
    let extra = format!("[broker.tls]\nca_file = \"{}\"\n", b.var("AMQP_CA"));
    let (s, _f) = start(&exporter_config(&tls_url, port, &extra, BOTH)).await;
    let text = wait_metric(
        &s,
        r#"bfo_alive_send_failures_total{dueslag="h",reason="connection"}"#,
        1.0,
    )
    .await;
    assert_eq!(
        value(&text, r#"bfo_alive_connection_up{connection="afsend"}"#),
        Some(0.0)
    );
    s.stop().await;
    emu.cancel();
}

#[tokio::test]
async fn push_over_mutual_tls_from_the_emulator() {
    let Some(b) = Broker::get() else { return };
    let url = b.vhost("pushtls");
    let port = free_port();
    // The broker's test PKI: the server certificate is for localhost/127.0.0.1.
    let tls_dir = b.path("AMQP_CA").parent().unwrap().to_path_buf();
    let emu_cfg = emulator_config(&url, false, port, "")
        .replace(&format!("http://127.0.0.1:{port}"), &format!("https://localhost:{port}"))
        .replace(
            "require_token = false",
            &format!(
                "require_token = false\n[emulator.push_tls]\nca_file = \"{ca}\"\ncert_file = \"{d}/client.pem\"\nkey_file = \"{d}/client.key\"",
                ca = b.var("AMQP_CA"),
                d = tls_dir.display()
            ),
        );
    let emu = start_emulator(&emu_cfg).await;
    let extra = format!(
        "[push.tls]\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\nclient_ca_file = \"{ca}\"\n",
        d = tls_dir.display(),
        ca = b.var("AMQP_CA")
    );
    let cfg = exporter_config(
        &url,
        port,
        "",
        "[[dueslag]]\nname = \"h\"\nmode = \"push\"\n",
    )
    .replace("[push]\n", &format!("{extra}[push]\n"));
    let (s, _f) = start(&cfg).await;
    wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="h",mode="push",result="success"}"#,
        2.0,
    )
    .await;

    // A client without a certificate does not get through the handshake.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(b.var("AMQP_CA")).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let r = client
        .post(format!("https://localhost:{port}/push/h"))
        .body("<x/>")
        .send()
        .await;
    assert!(
        r.is_err(),
        "a client without a certificate was let in: {r:?}"
    );
    // /metrics stays plain on the main listener.
    assert_eq!(get(&s, "/metrics").await.0, 200);
    s.stop().await;
    emu.cancel();
}
