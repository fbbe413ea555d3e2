//! Integration tests against the private RabbitMQ of `scripts/rabbitmq.sh`: PLAIN over
//! plain AMQP, PLAIN over mutual TLS (PEM and PKCS#12 identities), refusal without a client
//! certificate, and SASL EXTERNAL with a multi-KB token (the broker's `initial_frame_max`).
//!
//! Run: `scripts/rabbitmq.sh start DIR && BFO_TEST_AMQP_ENV=DIR/env cargo test --test broker`.
//! Without `BFO_TEST_AMQP_ENV` the tests print "SKIPPED: no broker", or fail when `CI` is set.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod common;

use bfo_alive_exporter::tls::{self, ClientTlsFiles};
use bfo_alive_exporter::token::{Token, TokenSlot};
use bfo_alive_exporter::transport::amqp::connect::{AuthChoice, connect};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};

const LIMIT: Duration = Duration::from_secs(30);

/// The broker's DIR/env as a map, or `None` (a loud skip) when not configured outside CI.
fn broker() -> Option<HashMap<String, String>> {
    common::broker::Broker::get().map(|b| b.env)
}

fn path(env: &HashMap<String, String>, key: &str) -> PathBuf {
    PathBuf::from(
        env.get(key)
            .unwrap_or_else(|| panic!("{key} missing from the broker env")),
    )
}

fn tls_config(files: &ClientTlsFiles) -> Arc<rustls::ClientConfig> {
    Arc::new(tls::client_config(files).expect("client TLS config"))
}

fn pem_identity(env: &HashMap<String, String>) -> ClientTlsFiles {
    ClientTlsFiles {
        ca_file: Some(path(env, "AMQP_CA")),
        cert_file: Some(path(env, "AMQP_CLIENT_CERT")),
        key_file: Some(path(env, "AMQP_CLIENT_KEY")),
        ..Default::default()
    }
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

/// Proves the connection works: a server-named queue, a publish, a get.
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
    ch.basic_publish(
        "".into(),
        q.name().clone(),
        BasicPublishOptions::default(),
        b"alive?",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let mut got = None;
    for _ in 0..50 {
        got = ch
            .basic_get(q.name().clone(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get");
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got.expect("message back").delivery.data, b"alive?");
    conn.close(200, "bye".into()).await.expect("close");
}

#[tokio::test]
async fn plain_auth_over_plain_amqp() {
    let Some(env) = broker() else { return };
    let conn = connect_in_time(&env["AMQP_URL"], None, AuthChoice::Plain)
        .await
        .expect("PLAIN over amqp://");
    round_trip(&conn).await;
}

#[tokio::test]
async fn wrong_password_is_refused() {
    let Some(env) = broker() else { return };
    let uri = env["AMQP_URL"].replace(&format!(":{}@", env["AMQP_PASSWORD"]), ":wrong@");
    assert_ne!(uri, env["AMQP_URL"]);
    let e = connect_in_time(&uri, None, AuthChoice::Plain)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ACCESS_REFUSED"), "{e}");
}

#[tokio::test]
async fn plain_auth_over_mutual_tls_pem() {
    let Some(env) = broker() else { return };
    let conn = connect_in_time(
        &env["AMQPS_URL"],
        Some(tls_config(&pem_identity(&env))),
        AuthChoice::Plain,
    )
    .await
    .expect("PLAIN over amqps:// with a PEM client certificate");
    round_trip(&conn).await;
}

#[tokio::test]
async fn plain_auth_over_mutual_tls_pkcs12() {
    let Some(env) = broker() else { return };
    // An OpenSSL-made PKCS#12 (AES-256-CBC, PBKDF2: OpenSSL 3's default).
    let files = ClientTlsFiles {
        ca_file: Some(path(&env, "AMQP_CA")),
        pkcs12_file: Some(path(&env, "AMQP_CLIENT_P12")),
        pkcs12_password_file: Some(path(&env, "AMQP_CLIENT_P12_PASSWORD_FILE")),
        ..Default::default()
    };
    let summary = tls::client_certificate_summary(&files).unwrap().unwrap();
    assert!(
        summary.subject.contains(&env["AMQP_CERT_USER"]),
        "{summary:?}"
    );
    let conn = connect_in_time(
        &env["AMQPS_URL"],
        Some(tls_config(&files)),
        AuthChoice::Plain,
    )
    .await
    .expect("PLAIN over amqps:// with a PKCS#12 client certificate");
    round_trip(&conn).await;
}

#[tokio::test]
async fn mutual_tls_without_client_certificate_is_refused() {
    let Some(env) = broker() else { return };
    let files = ClientTlsFiles {
        ca_file: Some(path(&env, "AMQP_CA")),
        ..Default::default()
    };
    let r = connect_in_time(
        &env["AMQPS_URL"],
        Some(tls_config(&files)),
        AuthChoice::Plain,
    )
    .await;
    let e = r.expect_err("the broker must refuse a TLS client without certificate");
    eprintln!("refused as expected: {e}");
}

#[tokio::test]
async fn external_with_multi_kb_token_over_mutual_tls() {
    let Some(env) = broker() else { return };
    // RabbitMQ's EXTERNAL (rabbitmq_auth_mechanism_ssl) takes the user from the certificate
    // and ignores the response; what matters here is that a 12 KB start-ok passes the
    // broker's pre-auth frame limit, as a real SAML token must.
    let xml = format!(
        r#"<saml2:Assertion xmlns:saml2="urn:oasis:names:tc:SAML:2.0:assertion"><saml2:Issuer>test</saml2:Issuer><saml2:Subject>{}</saml2:Subject></saml2:Assertion>"#,
        "x".repeat(12_000)
    );
    let slot = TokenSlot::with_token(Token::from_xml(xml, "test").unwrap());
    let conn = connect_in_time(
        &env["AMQPS_EXTERNAL_URL"],
        Some(tls_config(&pem_identity(&env))),
        AuthChoice::External(slot),
    )
    .await
    .expect("EXTERNAL with a 12 KB token over amqps://");
    round_trip(&conn).await;
}
