//! Many municipalities in one exporter, on a real RabbitMQ with the emulator checking each
//! message's TilladtModtager against the CVR its token names (dataafgrænsning): tokens per
//! (CVR, service) from a local STS over mutual TLS, one connection per (CVR, role), static
//! labels on every series of a dueslag, a reload that ends a municipality's connections,
//! and a dueslag whose token names another municipality refused with a reason.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use bfo_alive_exporter::server::Server;
use bfo_alive_exporter::sts_stub::{self, StsStub};
use common::broker::*;
use common::emulator::*;
use common::pki::Pki;
use common::*;

const ANVENDER: &str = "cf12c051-39ce-4066-ba11-704b46fa23c4";
/// Three municipalities: A is `[identity]`'s, B and C are named by their dueslag.
const A: &str = "29189846";
const B: &str = "11111111";
const C: &str = "22222222";

/// The emulator accepting Alive messages of the three, and checking tokens.
fn emulator(url: &str, dueslag: &[(&str, &str)]) -> String {
    let mut t = format!(
        "[emulator]\nurl = \"{url}\"\nanvendersystem = \"{ANVENDER}\"\ncvr = \"{A}\"\ncvrs = [\"{B}\", \"{C}\"]\nrequire_token = true\n"
    );
    for (name, _) in dueslag {
        t.push_str(&pull_dueslag(name));
    }
    t
}

/// The exporter's pull dueslag `(name, cvr)`, each with a `kommune` label.
fn dueslag_tables(dueslag: &[(&str, &str)]) -> String {
    dueslag
        .iter()
        .map(|(name, cvr)| {
            format!(
                "{}cvr = \"{cvr}\"\nlabels = {{ kommune = \"k{cvr}\" }}\n",
                pull_dueslag(name)
            )
        })
        .collect()
}

fn exporter(url: &str, token: &str, dueslag: &[(&str, &str)]) -> String {
    format!(
        "{IDENTITY}\n{}{token}\n[defaults]\ninterval = \"300ms\"\ntimeout = \"5s\"\nsend_timeout = \"2s\"\n{}",
        amqp_broker_table(url),
        dueslag_tables(dueslag)
    )
}

/// The exporter's connections in `vhost`, by their `connection_name`.
fn connection_names(b: &Broker, vhost: &str) -> Vec<String> {
    b.ctl(&[
        "list_connections",
        "--no-table-headers",
        "vhost",
        "client_properties",
    ])
    .lines()
    .filter(|l| l.split('\t').next() == Some(vhost))
    .filter_map(|l| {
        const KEY: &str = "{\"connection_name\",\"";
        let rest = &l[l.find(KEY)? + KEY.len()..];
        Some(rest[..rest.find("\"}")?].to_string())
    })
    .filter(|n| n.starts_with("bfo-alive-exporter "))
    .collect()
}

fn success(name: &str, cvr: &str) -> String {
    format!(
        r#"bfo_alive_probes_total{{dueslag="{name}",kommune="k{cvr}",mode="pull",result="success"}}"#
    )
}

async fn post_reload(s: &Server) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/-/reload", base(s)))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn several_municipalities_each_under_its_own_token_and_connections() {
    let Some(b) = Broker::get() else { return };
    let url = b.vhost("municipalities");
    let vhost = vhost_of(&url);
    let pki = Pki::new();
    let (cert, key) = pki.client_files();
    let sts = StsStub::start(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        &pki.path("ca.pem"),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let token = format!(
        "[broker.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[token]\nsource = \"sts\"\nsts_url = \"{}\"\nsts_ca_file = \"{}\"\nafsend_entity_id = \"http://bfo.test/afsend\"\nafhent_entity_id = \"http://bfo.test/afhent\"\nsts_concurrency = 2\n",
        cert.display(),
        key.display(),
        sts.url,
        pki.path("ca.pem").display()
    );
    let all = [("a1", A), ("a2", A), ("b1", B), ("b2", B), ("c1", C)];
    let queues: Vec<String> = all.iter().map(|(n, _)| dueslag_id(n)).collect();
    declare_queues(&url, &queues.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let emu = start_emulator(&emulator(&url, &all)).await;
    let (s, file) = start(&exporter(&url, &token, &all)).await;

    // Every dueslag succeeds: its messages went out under its own municipality's token,
    // or the emulator would have refused them.
    for (name, cvr) in all {
        wait_metric(&s, &success(name, cvr), 2.0).await;
    }
    let text = scrape(&s).await;
    // A failure reason's series appears at its first failure: none yet, or at 0.
    assert_eq!(
        value(
            &text,
            r#"bfo_alive_send_failures_total{dueslag="b1",kommune="k11111111",reason="rejected"}"#
        )
        .unwrap_or(0.0),
        0.0,
        "{text}"
    );
    // A token per (CVR, service), each from the STS for its CVR, and a connection per
    // (CVR, role), all up.
    let requests = sts.requests();
    for cvr in [A, B, C] {
        assert_eq!(
            requests.get(cvr),
            Some(&2),
            "STS requests by CVR: {requests:?}"
        );
        for service in ["afsend", "afhent"] {
            let expiry = format!(
                r#"bfo_alive_token_expiry_timestamp_seconds{{service="{service}",cvr="{cvr}"}}"#
            );
            assert!(
                value(&text, &expiry).is_some_and(|v| v > 0.0),
                "{expiry}\n{text}"
            );
            let up = format!(r#"bfo_alive_connection_up{{connection="{service}",cvr="{cvr}"}}"#);
            assert_eq!(value(&text, &up), Some(1.0), "{up}\n{text}");
        }
    }
    // The static label is on every series of a dueslag.
    for line in text.lines().filter(|l| l.contains(r#"dueslag="c1""#)) {
        assert!(line.contains(r#"kommune="k22222222""#), "{line}");
    }
    let names: BTreeSet<String> = connection_names(&b, &vhost).into_iter().collect();
    let want: BTreeSet<String> = [A, B, C]
        .iter()
        .flat_map(|c| ["afsend", "afhent"].map(|r| format!("bfo-alive-exporter {r} {c}")))
        .collect();
    assert_eq!(names, want, "one connection per (CVR, role)");

    // A reload without C's dueslag ends C's connections and series; A and B go on.
    let kept = [("a1", A), ("a2", A), ("b1", B), ("b2", B)];
    file.write(&exporter(&url, &token, &kept));
    assert_eq!(post_reload(&s).await, 200);
    wait_for(Duration::from_secs(20), || async {
        let names = connection_names(&b, &vhost);
        let c_left: Vec<&String> = names.iter().filter(|n| n.ends_with(C)).collect();
        (c_left.is_empty() && names.len() == 4)
            .then_some(())
            .ok_or_else(|| format!("connections: {names:?}"))
    })
    .await;
    let text = scrape(&s).await;
    assert!(!text.contains(C), "C's series remain:\n{text}");
    let before = value(&text, &success("b1", B)).unwrap_or(0.0);
    wait_metric(&s, &success("b1", B), before + 2.0).await;
    s.stop().await;
    emu.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dueslag_sent_under_another_municipality_s_token_is_refused_with_the_reason() {
    let Some(b) = Broker::get() else { return };
    let url = b.vhost("wrong-cvr");
    let dir = tempfile::tempdir().unwrap();
    let until = SystemTime::now() + Duration::from_secs(3600);
    // B's token file holds a token issued for A: a mix-up of files.
    std::fs::write(
        dir.path().join(format!("{A}.xml")),
        sts_stub::assertion(A, until),
    )
    .unwrap();
    std::fs::write(
        dir.path().join(format!("{B}.xml")),
        sts_stub::assertion(A, until),
    )
    .unwrap();
    let token = format!(
        "[token]\nsource = \"file\"\nfile = \"{}/{{cvr}}.xml\"\n",
        dir.path().display()
    );
    let all = [("a1", A), ("b1", B)];
    declare_queues(&url, &[&dueslag_id("a1"), &dueslag_id("b1")]).await;
    let emu = start_emulator(&emulator(&url, &all)).await;
    let (s, _file) = start(&exporter(&url, &token, &all)).await;

    wait_metric(&s, &success("a1", A), 2.0).await;
    let rejected =
        r#"bfo_alive_send_failures_total{dueslag="b1",kommune="k11111111",reason="rejected"}"#;
    let text = wait_metric(&s, rejected, 2.0).await;
    assert_eq!(value(&text, &success("b1", B)), Some(0.0), "{text}");
    // The dueslag's history names the emulator's reason.
    let (_, page) = get(&s, "/dueslag/b1").await;
    assert!(page.contains(&format!("issued for CVR {A}")), "{page}");
    s.stop().await;
    emu.cancel();
}
