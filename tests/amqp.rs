//! The real protocol against a real RabbitMQ: the exporter's `amqp` backend, the emulator
//! playing the Beskedfordeler, and the push endpoint over HTTP. Each test has its own vhost.

mod common;

use std::time::Duration;

use bfo_alive_exporter::server::Server;
use common::broker::*;
use common::emulator::*;
use common::*;
use tokio_util::sync::CancellationToken;

const ANVENDER: &str = "cf12c051-39ce-4066-ba11-704b46fa23c4";

/// The emulator's dueslag: `p` by pull, and `h` by push to `push` (`http(s)://host:port`)
/// when the test has an exporter for it to push to.
fn emulator_config(url: &str, require_token: bool, push: Option<&str>, faults: &str) -> String {
    let h = push
        .map(|base| {
            format!("[[dueslag]]\nname = \"h\"\nmode = \"push\"\nid = \"9c1d3e5f-0a2b-4c4d-8e6f-7a8b9c0d1e02\"\npush_url = \"{base}/push/h\"\n")
        })
        .unwrap_or_default();
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
id = "9c1d3e5f-0a2b-4c4d-8e6f-7a8b9c0d1e01"
{h}{faults}
"#
    )
}

/// The exporter on the `amqp` backend; its push endpoint listens on a port of its own,
/// bound on :0 (the emulator learns it from [`Server::push_addr`]).
fn exporter_config(url: &str, extra: &str, dueslag: &str) -> String {
    format!(
        r#"{IDENTITY}
[broker]
backend = "amqp"
url = "{url}"
auth = "plain"
{extra}
[push]
listen = "127.0.0.1:0"

[defaults]
interval = "200ms"
timeout = "3s"
send_timeout = "1s"
{dueslag}"#
    )
}

fn push_base(s: &Server) -> String {
    format!("http://{}", s.push_addr)
}

/// The exporter first (its pull queue declared ahead), then the emulator, which pushes to
/// the exporter's bound address.
async fn start_both(
    url: &str,
    require_token: bool,
    faults: &str,
    extra: &str,
    dueslag: &str,
) -> (Server, ConfigFile, CancellationToken) {
    declare_queues(url, &["q-pull"]).await;
    let (s, f) = start(&exporter_config(url, extra, dueslag)).await;
    let emu = start_emulator(&emulator_config(
        url,
        require_token,
        Some(&push_base(&s)),
        faults,
    ))
    .await;
    (s, f, emu)
}

/// Waits until the ready messages of a queue are `want` (the broker requeues a closed
/// consumer's unacknowledged messages after the close).
async fn wait_queue(url: &str, queue: &str, want: &[&[u8]]) {
    wait_for(Duration::from_secs(10), || async {
        let bodies = queue_bodies(url, queue).await;
        (bodies == want).then_some(()).ok_or_else(|| {
            format!(
                "{queue} holds {} message(s), not {}",
                bodies.len(),
                want.len()
            )
        })
    })
    .await
}

const BOTH: &str = "[[dueslag]]\nname = \"p\"\nmode = \"pull\"\nqueue = \"q-pull\"\nid = \"9c1d3e5f-0a2b-4c4d-8e6f-7a8b9c0d1e01\"\n[[dueslag]]\nname = \"h\"\nmode = \"push\"\nid = \"9c1d3e5f-0a2b-4c4d-8e6f-7a8b9c0d1e02\"\n";

#[tokio::test]
async fn pull_and_push_round_trips_through_the_emulator() {
    let Some(b) = Broker::get() else { return };
    let url = b.vhost("roundtrip");
    let (s, _f, emu) = start_both(&url, false, "", "", BOTH).await;
    let text = wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#,
        3.0,
    )
    .await;
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
    wait_queue(&url, "q-pull", &[]).await;
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
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token.xml");
    std::fs::write(&token_file, saml("2020-01-01T00:00:00Z")).unwrap();
    let extra = format!(
        "[token]\nsource = \"file\"\nfile = \"{}\"\n",
        token_file.display()
    );
    let pull = "[[dueslag]]\nname = \"p\"\nmode = \"pull\"\nqueue = \"q-pull\"\nid = \"9c1d3e5f-0a2b-4c4d-8e6f-7a8b9c0d1e01\"\n";
    let (s, _f, emu) = start_both(&url, true, "", &extra, pull).await;
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
            r#"bfo_alive_token_expiry_timestamp_seconds{service="afsend",cvr="29189846"}"#
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
            r#"bfo_alive_token_expiry_timestamp_seconds{service="afsend",cvr="29189846"}"#
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
    let push = "[[dueslag]]\nname = \"h\"\nmode = \"push\"\nid = \"9c1d3e5f-0a2b-4c4d-8e6f-7a8b9c0d1e02\"\n";
    let faults = "[faults.h]\nreject = 1.0\nreject_code = 44\n";
    let (s, _f, emu) = start_both(&url, false, faults, "", push).await;
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
    let push = "[[dueslag]]\nname = \"h\"\nmode = \"push\"\nid = \"9c1d3e5f-0a2b-4c4d-8e6f-7a8b9c0d1e02\"\n";
    let (s, _f) = start(&exporter_config(&url, "", push)).await;
    let emu = start_emulator(
        &emulator_config(&url, false, Some(&push_base(&s)), "")
            .replace(ANVENDER, "00000000-0000-0000-0000-000000000001"),
    )
    .await;
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
    // The exchange exists (the exporter never declares it), but no queue is bound to it.
    declare_unbound_exchange(&url).await;
    let push = "[[dueslag]]\nname = \"h\"\nmode = \"push\"\nid = \"9c1d3e5f-0a2b-4c4d-8e6f-7a8b9c0d1e02\"\n";
    let (s, _f) = start(&exporter_config(&url, "", push)).await;
    let text = wait_metric(
        &s,
        r#"bfo_alive_send_failures_total{dueslag="h",reason="unroutable"}"#,
        2.0,
    )
    .await;
    // No connection failure: that reason has no series (it appears at its first failure).
    assert_eq!(
        value(
            &text,
            r#"bfo_alive_send_failures_total{dueslag="h",reason="connection"}"#
        ),
        None
    );
    s.stop().await;
}

#[tokio::test]
async fn closed_connections_are_survived_and_counted() {
    let Some(b) = Broker::get() else { return };
    let url = b.vhost("close");
    let (s, _f, emu) = start_both(&url, false, "", "", BOTH).await;
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
        value(
            &text,
            r#"bfo_alive_connection_up{connection="afsend",cvr="29189846"}"#
        ),
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
    // Only the pull dueslag: the emulator pushes nowhere.
    let emu = start_emulator(&emulator_config(&url, false, None, "")).await;
    let business = bfo_alive_exporter::message::build_business_message(
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );
    publish_to_queue(&url, "q-pull", business.as_bytes()).await;
    let pull = "[[dueslag]]\nname = \"p\"\nmode = \"pull\"\nqueue = \"q-pull\"\nid = \"9c1d3e5f-0a2b-4c4d-8e6f-7a8b9c0d1e01\"\n";
    let (s, _f) = start(&exporter_config(&url, "", pull)).await;
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
    // The business message is back in the dueslag once the consumer has closed.
    wait_queue(&url, "q-pull", &[business.as_bytes()]).await;

    // With unexpected = "error-queue" it is dead-lettered to the error queue, still not acknowledged.
    let emu = start_emulator(&emulator_config(&url, false, None, "")).await;
    let pull = "[[dueslag]]\nname = \"p\"\nmode = \"pull\"\nqueue = \"q-pull\"\nid = \"9c1d3e5f-0a2b-4c4d-8e6f-7a8b9c0d1e01\"\nunexpected = \"error-queue\"\n";
    let (s, _f) = start(&exporter_config(&url, "", pull)).await;
    wait_metric(
        &s,
        r#"bfo_alive_received_total{dueslag="p",mode="pull",kind="unexpected"}"#,
        1.0,
    )
    .await;
    s.stop().await;
    emu.cancel();
    wait_queue(&url, "q-pull.error", &[business.as_bytes()]).await;
    assert!(queue_bodies(&url, "q-pull").await.is_empty());
}

#[tokio::test]
async fn mutual_tls_to_the_broker() {
    let Some(b) = Broker::get() else { return };
    let plain = b.vhost("tls");
    let vhost = vhost_of(&plain);
    let tls_url = b.url_for(&vhost, true);
    let extra = format!(
        "[broker.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        b.var("AMQP_CA"),
        b.var("AMQP_CLIENT_CERT"),
        b.var("AMQP_CLIENT_KEY")
    );
    declare_queues(&plain, &["q-pull"]).await;
    let (s, _f) = start(&exporter_config(&tls_url, &extra, BOTH)).await;
    let emu = start_emulator(&emulator_config(&plain, false, Some(&push_base(&s)), "")).await;
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
    let (s, _f) = start(&exporter_config(&tls_url, &extra, BOTH)).await;
    let text = wait_metric(
        &s,
        r#"bfo_alive_send_failures_total{dueslag="h",reason="connection"}"#,
        1.0,
    )
    .await;
    assert_eq!(
        value(
            &text,
            r#"bfo_alive_connection_up{connection="afsend",cvr="29189846"}"#
        ),
        Some(0.0)
    );
    s.stop().await;
    emu.cancel();
}

#[tokio::test]
async fn push_over_mutual_tls_from_the_emulator() {
    let Some(b) = Broker::get() else { return };
    let url = b.vhost("pushtls");
    // The broker's test PKI: the server certificate is for localhost/127.0.0.1.
    let tls_dir = b.path("AMQP_CA").parent().unwrap().to_path_buf();
    let extra = format!(
        "[push.tls]\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\nclient_ca_file = \"{ca}\"\n",
        d = tls_dir.display(),
        ca = b.var("AMQP_CA")
    );
    let cfg = exporter_config(&url, "", "[[dueslag]]\nname = \"h\"\nmode = \"push\"\nid = \"9c1d3e5f-0a2b-4c4d-8e6f-7a8b9c0d1e02\"\n")
        .replace("[push]\n", &format!("{extra}[push]\n"));
    let (s, _f) = start(&cfg).await;
    let push = format!("https://localhost:{}", s.push_addr.port());
    let emu_cfg = emulator_config(&url, false, Some(&push), "").replace(
        "require_token = false",
        &format!(
            "require_token = false\n[emulator.push_tls]\nca_file = \"{ca}\"\ncert_file = \"{d}/client.pem\"\nkey_file = \"{d}/client.key\"",
            ca = b.var("AMQP_CA"),
            d = tls_dir.display()
        ),
    );
    let emu = start_emulator(&emu_cfg).await;
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
        .post(format!("{push}/push/h"))
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
