//! [`connect`] against the private RabbitMQ of `scripts/rabbitmq.sh`: PLAIN over plain
//! AMQP, PLAIN over mutual TLS (PEM and PKCS#12 identities), refusal without a client
//! certificate, and SASL EXTERNAL with a multi-KB token (the broker's `initial_frame_max`).
//!
//! Run: `scripts/rabbitmq.sh start DIR && BFO_TEST_AMQP_ENV=DIR/env cargo test broker_tests`.
//! Without `BFO_TEST_AMQP_ENV` the tests print "SKIPPED: no broker", or fail when `CI` is set.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};

use super::connect::{AuthChoice, connect, connect_tuned};
use crate::testkit::broker::Broker;
use crate::tls::{self, ClientTlsFiles};
use crate::token::{Token, TokenSlot};

const LIMIT: Duration = Duration::from_secs(30);

fn tls_config(files: &ClientTlsFiles) -> Arc<rustls::ClientConfig> {
    Arc::new(tls::client_config(files).expect("client TLS config"))
}

fn pem_identity(b: &Broker) -> ClientTlsFiles {
    ClientTlsFiles {
        ca_file: Some(b.path("AMQP_CA")),
        cert_file: Some(b.path("AMQP_CLIENT_CERT")),
        key_file: Some(b.path("AMQP_CLIENT_KEY")),
        ..Default::default()
    }
}

/// PLAIN over mutual TLS with these files.
async fn plain_over_tls(b: &Broker, files: &ClientTlsFiles) -> lapin::Result<Connection> {
    connect_in_time(
        b.var("AMQPS_URL"),
        Some(tls_config(files)),
        AuthChoice::Plain,
    )
    .await
}

async fn connect_in_time(
    uri: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    auth: AuthChoice,
) -> lapin::Result<Connection> {
    tokio::time::timeout(LIMIT, connect(uri, tls, auth))
        .await
        .unwrap_or_else(|_| panic!("connect to {uri} did not finish within {LIMIT:?}"))
}

/// Proves the connection works: a server-named queue, a confirmed publish, a get.
async fn round_trip(conn: &Connection) {
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
    ch.confirm_select(Default::default())
        .await
        .expect("confirm.select");
    // Once confirmed, the message is in the queue: one basic.get finds it.
    ch.basic_publish(
        "".into(),
        q.name().clone(),
        BasicPublishOptions::default(),
        b"alive?",
        BasicProperties::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    let got = ch
        .basic_get(q.name().clone(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get");
    assert_eq!(got.expect("message back").delivery.data, b"alive?");
    conn.close(200, "bye".into()).await.expect("close");
}

#[tokio::test]
async fn plain_auth_over_plain_amqp() {
    let Some(b) = Broker::get() else { return };
    let conn = connect_in_time(b.var("AMQP_URL"), None, AuthChoice::Plain)
        .await
        .expect("PLAIN over amqp://");
    round_trip(&conn).await;
}

#[tokio::test]
async fn the_heartbeat_asked_for_is_negotiated_and_the_uri_wins() {
    let Some(b) = Broker::get() else { return };
    let url = b.var("AMQP_URL");
    for (uri, asked, want) in [
        (url.to_string(), Some(3), 3),
        // RabbitMQ proposes 60 s; lapin keeps the lower.
        (url.to_string(), None, 60),
        (format!("{url}?heartbeat=7"), Some(3), 7),
    ] {
        let conn = tokio::time::timeout(
            LIMIT,
            connect_tuned(
                &uri,
                None,
                AuthChoice::Plain,
                lapin::ConnectionProperties::default(),
                asked,
            ),
        )
        .await
        .unwrap()
        .expect("connects");
        assert_eq!(conn.configuration().heartbeat(), want, "{asked:?}");
        conn.close(200, "bye".into()).await.expect("close");
    }
}

#[tokio::test]
async fn wrong_password_is_refused() {
    let Some(b) = Broker::get() else { return };
    let url = b.var("AMQP_URL");
    let uri = url.replace(&format!(":{}@", b.var("AMQP_PASSWORD")), ":wrong@");
    assert_ne!(uri, url);
    let e = connect_in_time(&uri, None, AuthChoice::Plain)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ACCESS_REFUSED"), "{e}");
}

#[tokio::test]
async fn plain_auth_over_mutual_tls_pem() {
    let Some(b) = Broker::get() else { return };
    let conn = plain_over_tls(&b, &pem_identity(&b))
        .await
        .expect("PLAIN over amqps:// with a PEM client certificate");
    round_trip(&conn).await;
}

#[tokio::test]
async fn plain_auth_over_mutual_tls_pkcs12() {
    let Some(b) = Broker::get() else { return };
    // An OpenSSL-made PKCS#12 (AES-256-CBC, PBKDF2: OpenSSL 3's default).
    let files = ClientTlsFiles {
        ca_file: Some(b.path("AMQP_CA")),
        pkcs12_file: Some(b.path("AMQP_CLIENT_P12")),
        pkcs12_password_file: Some(b.path("AMQP_CLIENT_P12_PASSWORD_FILE")),
        ..Default::default()
    };
    let summary = tls::client_certificate_summary(&files).unwrap().unwrap();
    assert!(
        summary.subject.contains(b.var("AMQP_CERT_USER")),
        "{summary:?}"
    );
    let conn = plain_over_tls(&b, &files)
        .await
        .expect("PLAIN over amqps:// with a PKCS#12 client certificate");
    round_trip(&conn).await;
}

#[tokio::test]
async fn mutual_tls_without_client_certificate_is_refused() {
    let Some(b) = Broker::get() else { return };
    let files = ClientTlsFiles {
        ca_file: Some(b.path("AMQP_CA")),
        ..Default::default()
    };
    let e = plain_over_tls(&b, &files)
        .await
        .expect_err("the broker must refuse a TLS client without certificate");
    eprintln!("refused as expected: {e}");
}

#[tokio::test]
async fn external_with_multi_kb_token_over_mutual_tls() {
    let Some(b) = Broker::get() else { return };
    // RabbitMQ's EXTERNAL (rabbitmq_auth_mechanism_ssl) takes the user from the certificate
    // and ignores the response; what matters here is that a 12 KB start-ok passes the
    // broker's pre-auth frame limit, as a real SAML token must.
    let xml = format!(
        r#"<saml2:Assertion xmlns:saml2="urn:oasis:names:tc:SAML:2.0:assertion"><saml2:Issuer>test</saml2:Issuer><saml2:Subject>{}</saml2:Subject></saml2:Assertion>"#,
        "x".repeat(12_000)
    );
    let slot = TokenSlot::with_token(Token::from_xml(xml, "test").unwrap());
    let conn = connect_in_time(
        b.var("AMQPS_EXTERNAL_URL"),
        Some(tls_config(&pem_identity(&b))),
        AuthChoice::External(slot),
    )
    .await
    .expect("EXTERNAL with a 12 KB token over amqps://");
    round_trip(&conn).await;
}
