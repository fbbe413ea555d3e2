//! `--web.config.file` (exporter-toolkit's format) and `--web.enable-lifecycle` on the real
//! server: basic auth on every route of the main listener but the push endpoint, TLS with a
//! required client certificate, a flood of wrong passwords, and reload without the flag.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bfo_alive_exporter::server::{Server, WebOptions};
use common::*;

const PUSH: &str =
    "[[dueslag]]\nname = \"h\"\nmode = \"push\"\nid = \"5d0a4c3e-8f1b-4f7e-9a55-2b7d1c0e9f31\"\n";

fn config(extra: &str) -> String {
    format!("{IDENTITY}{SIM}\n[defaults]\ninterval = \"100ms\"\ntimeout = \"600ms\"\n{extra}")
}

/// Starts the exporter with this web config file (written next to the configuration).
async fn start_web(text: &str, web_yaml: &str) -> (Server, ConfigFile) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.yml");
    std::fs::write(&path, web_yaml).unwrap();
    let r = start_with(
        text,
        WebOptions {
            config_file: Some(path),
            enable_lifecycle: true,
        },
    )
    .await;
    // The file is read at start; the directory may go.
    drop(dir);
    r
}

async fn get_as(s: &Server, path: &str, user: Option<(&str, &str)>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(format!("{}{path}", base(s)));
    if let Some((u, p)) = user {
        req = req.basic_auth(u, Some(p));
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn basic_auth_guards_every_route_but_the_push_endpoint() {
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let (s, _f) = start_web(
        &config(PUSH),
        &format!(
            "basic_auth_users:\n  prom: {hash}\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        ),
    )
    .await;
    for path in [
        "/metrics",
        "/",
        "/dueslag/h",
        "/-/healthy",
        "/-/ready",
        "/probe?dueslag=h",
    ] {
        for who in [None, Some(("prom", "wrong")), Some(("nobody", "s3cret"))] {
            let r = get_as(&s, path, who).await;
            assert_eq!(r.status().as_u16(), 401, "{path} as {who:?}");
            assert_eq!(r.headers()["www-authenticate"], "Basic");
            assert_eq!(r.headers()["x-frame-options"], "deny");
        }
    }
    let r = reqwest::Client::new()
        .post(format!("{}/-/reload", base(&s)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "reload is guarded too");
    let r = get_as(&s, "/-/healthy", Some(("prom", "s3cret"))).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-frame-options"], "deny");
    // The simulator's push deliveries carry no credentials, and still arrive.
    wait_for(std::time::Duration::from_secs(20), || async {
        let text = get_as(&s, "/metrics", Some(("prom", "s3cret")))
            .await
            .text()
            .await
            .unwrap();
        match value(
            &text,
            r#"bfo_alive_probes_total{dueslag="h",mode="push",result="success"}"#,
        ) {
            Some(v) if v >= 2.0 => Ok(()),
            other => Err(format!("push successes {other:?}")),
        }
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn reload_answers_403_without_the_lifecycle_flag() {
    let (s, _f) = start_with(&config(""), WebOptions::default()).await;
    let r = reqwest::Client::new()
        .post(format!("{}/-/reload", base(&s)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Lifecycle API is not enabled")
    );
    s.stop().await;
}

#[tokio::test]
async fn tls_with_a_required_client_certificate() {
    let pki = pki::Pki::new();
    // Relative paths are relative to the web config file, as in exporter-toolkit.
    std::fs::write(
        pki.path("web.yml"),
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n  client_allowed_sans: [prometheus.example]\n",
    )
    .unwrap();
    let (s, _f) = start_with(
        &config(""),
        WebOptions {
            config_file: Some(pki.path("web.yml")),
            enable_lifecycle: false,
        },
    )
    .await;
    let url = format!("https://127.0.0.1:{}/metrics", s.addr.port());
    let without = pki.https_client(false).get(&url).send().await;
    assert!(without.is_err(), "no client certificate: {without:?}");
    let plain = reqwest::get(format!("http://{}/metrics", s.addr)).await;
    assert!(plain.is_err(), "plain HTTP to a TLS listener: {plain:?}");
    let r = pki.https_client(true).get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        value(
            &r.text().await.unwrap(),
            r#"bfo_alive_http_connections_rejected_total{listener="main",reason="tls_error"}"#
        )
        .unwrap()
            >= 2.0,
        "the refused handshakes are counted"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_flood_of_wrong_passwords_does_not_block_the_right_one() {
    // A real cost: each wrong password is a real bcrypt check.
    let hash = bcrypt::hash("right", 10).unwrap();
    let (s, _f) = start_web(&config(""), &format!("basic_auth_users:\n  prom: {hash}\n")).await;
    let good = Some(("prom", "right"));
    assert_eq!(get_as(&s, "/-/healthy", good).await.status().as_u16(), 200);
    const FLOOD: usize = 48;
    let done = Arc::new(AtomicUsize::new(0));
    let mut flood = vec![];
    for i in 0..FLOOD {
        let (base, done) = (base(&s), done.clone());
        flood.push(tokio::spawn(async move {
            // Each on its own connection, each a password never seen before.
            let code = reqwest::Client::new()
                .get(format!("{base}/metrics"))
                .basic_auth("prom", Some(format!("wrong-{i}")))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            done.fetch_add(1, Ordering::SeqCst);
            code
        }));
    }
    // The checks have begun: one wrong password was answered.
    wait_for(std::time::Duration::from_secs(60), || async {
        match done.load(Ordering::SeqCst) {
            0 => Err("no wrong password answered yet".to_string()),
            _ => Ok(()),
        }
    })
    .await;
    // The cached right password goes past the queue of bcrypt checks.
    assert_eq!(get_as(&s, "/-/healthy", good).await.status().as_u16(), 200);
    let answered = done.load(Ordering::SeqCst);
    assert!(
        answered < FLOOD,
        "the flood was still being checked ({answered} of {FLOOD} answered)"
    );
    for f in flood {
        let code = f.await.unwrap();
        assert!(code == 401 || code == 503, "a wrong password got {code}");
    }
    s.stop().await;
}
