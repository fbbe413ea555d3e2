//! `[http]` on the real server: a slow request head, a slow push body, an idle kept-alive
//! connection, a TLS handshake that never comes and connections beyond the cap are cut,
//! and each is counted in `bfo_alive_http_connections_rejected_total{listener,reason}`.
//! The limits are tiny so that the tests wait little; what is asserted is that the
//! server closes the connection and counts why, never how fast.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bfo_alive_exporter::server::Server;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PUSH: &str =
    "[[dueslag]]\nname = \"h\"\nmode = \"push\"\nid = \"5d0a4c3e-8f1b-4f7e-9a55-2b7d1c0e9f31\"\n";

fn config(http: &str, extra: &str) -> String {
    format!("{IDENTITY}{SIM}\n[defaults]\ninterval = \"1h\"\n[http]\n{http}\n{extra}")
}

/// Everything the server sends until it closes the connection. The bound only keeps a
/// broken server from hanging the test.
async fn until_closed(c: &mut TcpStream) -> String {
    let mut out = vec![];
    tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// The exporter with a push dueslag on its own listener, and these `[http]` limits.
async fn start_with_push(http: &str) -> (Server, ConfigFile) {
    start(&config(
        http,
        &format!("[push]\nlisten = \"127.0.0.1:0\"\n{PUSH}"),
    ))
    .await
}

async fn rejected(s: &Server, listener: &str, reason: &str) -> f64 {
    let series = format!(
        r#"bfo_alive_http_connections_rejected_total{{listener="{listener}",reason="{reason}"}}"#
    );
    value(&scrape(s).await, &series).unwrap_or_else(|| panic!("no {series}"))
}

#[tokio::test]
async fn a_slow_request_head_is_cut_and_counted() {
    let (s, _f) = start(&config("header_timeout = \"300ms\"", "")).await;
    assert_eq!(rejected(&s, "main", "header_timeout").await, 0.0);
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut c).await;
    assert!(answer.is_empty(), "no answer to half a head: {answer:?}");
    // A connection that never sends a byte is cut the same way.
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    until_closed(&mut silent).await;
    assert_eq!(rejected(&s, "main", "header_timeout").await, 2.0);
    s.stop().await;
}

#[tokio::test]
async fn a_slow_push_body_is_cut_and_counted() {
    let (s, _f) = start_with_push("body_timeout = \"300ms\"").await;
    let mut c = TcpStream::connect(s.push_addr).await.unwrap();
    c.write_all(b"POST /push/h HTTP/1.1\r\nHost: x\r\nContent-Type: application/xml\r\nContent-Length: 100\r\n\r\n<")
        .await
        .unwrap();
    let answer = until_closed(&mut c).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(rejected(&s, "push", "body_timeout").await, 1.0);
    // Nothing arrived in the dueslag: a slow client is not an unexpected message.
    assert_eq!(
        value(
            &scrape(&s).await,
            r#"bfo_alive_received_total{dueslag="h",mode="push",kind="unexpected"}"#
        ),
        Some(0.0)
    );
    s.stop().await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_and_counted() {
    let (s, _f) = start(&config("idle_timeout = \"300ms\"", "")).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut c).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("Healthy\n"),
        "{answer}"
    );
    assert_eq!(rejected(&s, "main", "idle").await, 1.0);
    s.stop().await;
}

async fn open(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).await.unwrap();
    c.set_nodelay(true).unwrap();
    c
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_and_counted() {
    let (s, _f) = start_with_push("max_connections = 2").await;
    let (_a, _b) = (open(s.push_addr).await, open(s.push_addr).await);
    wait_metric(
        &s,
        r#"bfo_alive_http_connections_open{listener="push"}"#,
        2.0,
    )
    .await;
    let mut third = open(s.push_addr).await;
    assert_eq!(until_closed(&mut third).await, "");
    assert_eq!(rejected(&s, "push", "limit").await, 1.0);
    // The main listener has its own cap: scrapes went on throughout.
    assert_eq!(rejected(&s, "main", "limit").await, 0.0);
    s.stop().await;
}

#[tokio::test]
async fn a_tls_handshake_that_never_comes_is_cut_and_counted() {
    let pki = pki::Pki::new();
    let (s, _f) = start(&config(
        "tls_handshake_timeout = \"300ms\"",
        &format!(
            "[push]\nlisten = \"127.0.0.1:0\"\n[push.tls]\ncert_file = {:?}\nkey_file = {:?}\n{PUSH}",
            pki.path("server.pem"),
            pki.path("server.key")
        ),
    ))
    .await;
    let mut c = open(s.push_addr).await;
    assert_eq!(until_closed(&mut c).await, "");
    assert_eq!(rejected(&s, "push", "tls_handshake").await, 1.0);
    s.stop().await;
}
