//! End-to-end tests of the exporter on its simulator backend: the real server on
//! 127.0.0.1:0, scraped over HTTP, with faults injected per dueslag.

mod common;

use common::*;

fn config(dueslag: &str) -> String {
    format!(
        "{IDENTITY}{SIM}
[defaults]
interval = \"100ms\"
timeout = \"600ms\"
send_timeout = \"100ms\"
jitter = 0.0
{dueslag}"
    )
}

/// A pull dueslag whose simulated queue has a name, so it needs an `id`.
const PULL: &str = "[[dueslag]]\nname = \"p\"\nmode = \"pull\"\nqueue = \"q-p\"\nid = \"3f7d0c52-7a43-4d0e-9b1a-51a3c0d6e001\"\n";
const PUSH: &str =
    "[[dueslag]]\nname = \"h\"\nmode = \"push\"\nid = \"3f7d0c52-7a43-4d0e-9b1a-51a3c0d6e002\"\n";

#[tokio::test]
async fn healthy_pull_and_push_round_trips() {
    let (s, _f) = start(&config(&format!(
        "{PULL}{PUSH}[sim.faults.p]\ndelay = \"20ms\"\n"
    )))
    .await;
    for (d, m) in [("p", "pull"), ("h", "push")] {
        let text = wait_metric(
            &s,
            &format!(r#"bfo_alive_probes_total{{dueslag="{d}",mode="{m}",result="success"}}"#),
            3.0,
        )
        .await;
        assert!(
            value(
                &text,
                &format!(
                    r#"bfo_alive_roundtrip_duration_seconds_count{{dueslag="{d}",mode="{m}"}}"#
                )
            )
            .unwrap()
                >= 3.0
        );
        assert!(
            value(
                &text,
                &format!(r#"bfo_alive_last_success_timestamp_seconds{{dueslag="{d}",mode="{m}"}}"#)
            )
            .unwrap()
                > 1.7e9
        );
        assert_eq!(
            value(
                &text,
                &format!(r#"bfo_alive_probe_success{{dueslag="{d}",mode="{m}"}}"#)
            ),
            Some(1.0)
        );
        assert!(
            value(
                &text,
                &format!(r#"bfo_alive_send_duration_seconds_count{{dueslag="{d}"}}"#)
            )
            .unwrap()
                >= 3.0
        );
        assert_eq!(
            value(
                &text,
                &format!(r#"bfo_alive_probes_total{{dueslag="{d}",mode="{m}",result="timeout"}}"#)
            ),
            Some(0.0)
        );
    }
    // The pull round trip includes the injected 20 ms delay.
    let text = scrape(&s).await;
    let sum = value(
        &text,
        r#"bfo_alive_roundtrip_duration_seconds_sum{dueslag="p",mode="pull"}"#,
    )
    .unwrap();
    let count = value(
        &text,
        r#"bfo_alive_roundtrip_duration_seconds_count{dueslag="p",mode="pull"}"#,
    )
    .unwrap();
    assert!(sum / count >= 0.02, "mean round trip {} s", sum / count);
    // The status page shows both dueslag.
    let page = reqwest::get(base(&s)).await.unwrap().text().await.unwrap();
    assert!(page.contains(r#"href="/dueslag/p""#) && page.contains(r#"href="/dueslag/h""#));
    let hist = get(&s, "/dueslag/p").await.1;
    assert!(hist.contains("<td>success</td>"), "{hist}");
    s.stop().await;
}

#[tokio::test]
async fn exemplars_only_when_openmetrics_is_asked_for() {
    let (s, _f) = start(&config(PULL)).await;
    wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#,
        1.0,
    )
    .await;
    let client = reqwest::Client::new();
    let om = client
        .get(format!("{}/metrics", base(&s)))
        .header(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert!(
        om.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let om = om.text().await.unwrap();
    assert!(om.contains("# {besked_id=\""), "no exemplar in\n{om}");
    assert!(om.trim_end().ends_with("# EOF"));
    let plain = scrape(&s).await;
    assert!(!plain.contains("besked_id") && !plain.contains("# EOF"));
    s.stop().await;
}

#[tokio::test]
async fn loss_times_out_and_counts_lost() {
    let (s, _f) = start(&config(&format!("{PULL}[sim.faults.p]\nloss = 1.0\n"))).await;
    let text = wait_metric(&s, r#"bfo_alive_lost_total{dueslag="p",mode="pull"}"#, 1.0).await;
    assert!(
        value(
            &text,
            r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="timeout"}"#
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        value(
            &text,
            r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&text, r#"bfo_alive_probe_success{dueslag="p",mode="pull"}"#),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            r#"bfo_alive_last_success_timestamp_seconds{dueslag="p",mode="pull"}"#
        ),
        Some(0.0)
    );
    s.stop().await;
}

#[tokio::test]
async fn duplicates_reordering_and_late_arrivals_are_classified() {
    let faults = "[sim.faults.p]\nduplicate = 1.0\nforeign_every = \"200ms\"\n[sim.faults.h]\nreorder = 0.5\n";
    let (s, _f) = start(&config(&format!("{PULL}{PUSH}{faults}"))).await;
    wait_metric(
        &s,
        r#"bfo_alive_received_total{dueslag="p",mode="pull",kind="duplicate"}"#,
        2.0,
    )
    .await;
    wait_metric(
        &s,
        r#"bfo_alive_received_total{dueslag="h",mode="push",kind="out_of_order"}"#,
        1.0,
    )
    .await;
    wait_metric(
        &s,
        r#"bfo_alive_received_total{dueslag="p",mode="pull",kind="foreign"}"#,
        1.0,
    )
    .await;
    s.stop().await;

    let late = "[[dueslag]]\nname = \"l\"\nmode = \"pull\"\nqueue = \"3f7d0c52-7a43-4d0e-9b1a-51a3c0d6e003\"\ntimeout = \"150ms\"\n[sim.faults.l]\ndelay = \"300ms\"\n";
    let (s, _f) = start(&config(late)).await;
    let text = wait_metric(
        &s,
        r#"bfo_alive_received_total{dueslag="l",mode="pull",kind="late"}"#,
        2.0,
    )
    .await;
    assert!(
        value(
            &text,
            r#"bfo_alive_probes_total{dueslag="l",mode="pull",result="timeout"}"#
        )
        .unwrap()
            >= 2.0
    );
    s.stop().await;
}

#[tokio::test]
async fn send_failures_have_reasons() {
    let cases = [
        ("reject = 1.0\nreject_code = 44", "rejected"),
        ("reject = 1.0\nreject_code = 41", "token"),
        ("unroutable = 1.0", "unroutable"),
        ("no_reply = 1.0", "timeout"),
        (
            "outages = [{ start = \"0s\", length = \"1h\" }]",
            "connection",
        ),
    ];
    for (fault, reason) in cases {
        let (s, _f) = start(&config(&format!("{PUSH}[sim.faults.h]\n{fault}\n"))).await;
        let text = wait_metric(
            &s,
            &format!(r#"bfo_alive_send_failures_total{{dueslag="h",reason="{reason}"}}"#),
            1.0,
        )
        .await;
        assert!(
            value(
                &text,
                r#"bfo_alive_probes_total{dueslag="h",mode="push",result="send_error"}"#
            )
            .unwrap()
                >= 1.0,
            "{reason}"
        );
        assert_eq!(
            value(
                &text,
                r#"bfo_alive_probes_total{dueslag="h",mode="push",result="success"}"#
            ),
            Some(0.0),
            "{reason}"
        );
        let page = get(&s, "/dueslag/h").await.1;
        assert!(page.contains(&format!("<td>{reason}:")), "{reason}: {page}");
        s.stop().await;
    }
}

#[tokio::test]
async fn a_pull_dueslag_survives_an_outage() {
    let faults = "[sim.faults.p]\noutages = [{ start = \"300ms\", length = \"1s\" }]\n";
    let (s, _f) = start(&config(&format!("{PULL}{faults}"))).await;
    wait_metric(
        &s,
        r#"bfo_alive_send_failures_total{dueslag="p",reason="connection"}"#,
        1.0,
    )
    .await;
    let before = value(
        &scrape(&s).await,
        r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#,
    )
    .unwrap();
    // After the outage the consumer reconnects and probes succeed again.
    wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#,
        before + 3.0,
    )
    .await;
    s.stop().await;
}

async fn post(
    s: &bfo_alive_exporter::server::Server,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", base(s)))
        .header("Content-Type", "application/xml")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn push_endpoint_refuses_what_is_not_ours_and_counts_it() {
    use bfo_alive_exporter::message::*;
    // A long interval: the test's own POSTs are the only traffic.
    let (s, _f) = start(&format!(
        "{IDENTITY}{SIM}\n[defaults]\ninterval = \"1h\"\n[push]\nmax_body = \"2KiB\"\n{PUSH}{PULL}"
    ))
    .await;
    let unexpected = r#"bfo_alive_received_total{dueslag="h",mode="push",kind="unexpected"}"#;

    let business = build_modtag_besked_input(&build_business_message(
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    ));
    let (code, body) = post(&s, "/push/h", business).await;
    assert_eq!(code, 400);
    let retur = parse_modtag_besked_output(body.as_bytes()).unwrap();
    assert_eq!(retur.status_kode, 40);
    assert!(
        retur
            .fejlbesked_tekst
            .unwrap()
            .contains("not an Alive message")
    );

    let (code, body) = post(&s, "/push/h", "this is not xml").await;
    assert_eq!(code, 400);
    assert_ne!(
        parse_modtag_besked_output(body.as_bytes())
            .unwrap()
            .status_kode,
        20
    );

    // An Alive message in a foreign namespace is not an Alive message.
    let p = ProbePayload {
        instance: "someone-else".into(),
        run: uuid::Uuid::new_v4(),
        dueslag: "h".into(),
        sequence: 1,
        sent_at: std::time::SystemTime::now(),
    };
    let alive = build_alive(&AliveSpec {
        besked_id: uuid::Uuid::new_v4(),
        anvendersystem: uuid::Uuid::nil(),
        cvr: "29189846",
        relateret_objekt: &RelateretObjekt::dueslag(
            "3f7d0c52-7a43-4d0e-9b1a-51a3c0d6e002".parse().unwrap(),
            &UnikId::Urn("urn:bfo-alive-exporter:dueslag".into()),
        ),
        payload: &p,
    });
    let wrong_ns = build_modtag_besked_input(
        &alive.replace("urn:oio:besked:kuvert:1.0", "urn:example:kuvert"),
    );
    assert_eq!(post(&s, "/push/h", wrong_ns).await.0, 400);

    let big = "x".repeat(3000);
    let (code, body) = post(&s, "/push/h", big).await;
    assert_eq!(code, 413);
    assert!(body.contains("limit 2048 bytes"), "{body}");

    let text = scrape(&s).await;
    assert_eq!(value(&text, unexpected), Some(4.0));

    // A foreign Alive message is taken (20) and counted as foreign.
    let (code, body) = post(&s, "/push/h", build_modtag_besked_input(&alive)).await;
    assert_eq!(
        (
            code,
            parse_modtag_besked_output(body.as_bytes())
                .unwrap()
                .status_kode
        ),
        (200, 20)
    );
    let text = scrape(&s).await;
    assert_eq!(
        value(
            &text,
            r#"bfo_alive_received_total{dueslag="h",mode="push",kind="foreign"}"#
        ),
        Some(1.0)
    );

    // Unknown dueslag, and a pull dueslag, are not push endpoints.
    for path in ["/push/nope", "/push/p"] {
        let (code, body) = post(&s, path, build_modtag_besked_input(&alive)).await;
        assert_eq!(code, 404, "{path}");
        assert_eq!(
            parse_modtag_besked_output(body.as_bytes())
                .unwrap()
                .status_kode,
            44
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn push_on_its_own_listener() {
    let (s, _f) = start(&config(&format!(
        "[push]\nlisten = \"127.0.0.1:0\"\n{PUSH}"
    )))
    .await;
    assert_ne!(s.addr, s.push_addr);
    wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="h",mode="push",result="success"}"#,
        2.0,
    )
    .await;
    // The main listener does not serve push, and the push listener does not serve metrics.
    let r = reqwest::Client::new()
        .post(format!("{}/push/h", base(&s)))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = reqwest::get(format!("http://{}/metrics", s.push_addr))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    s.stop().await;
}

#[tokio::test]
async fn reload_applies_a_diff_and_keeps_the_old_config_on_error() {
    let (s, f) = start(&config(&format!("{PULL}{PUSH}"))).await;
    wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="h",mode="push",result="success"}"#,
        1.0,
    )
    .await;
    let text = scrape(&s).await;
    assert_eq!(
        value(&text, "bfo_alive_config_last_reload_successful"),
        Some(1.0)
    );

    // Remove h, add n.
    f.write(&config(&format!(
        "{PULL}[[dueslag]]\nname = \"n\"\nmode = \"push\"\nid = \"3f7d0c52-7a43-4d0e-9b1a-51a3c0d6e004\"\n"
    )));
    let (code, _) = post(&s, "/-/reload", "").await;
    assert_eq!(code, 200);
    let text = wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="n",mode="push",result="success"}"#,
        1.0,
    )
    .await;
    assert!(
        !text.contains(r#"dueslag="h""#),
        "series of a removed dueslag remain"
    );
    // p kept running: its counter did not restart from 0.
    assert!(
        value(
            &text,
            r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#
        )
        .unwrap()
            >= 1.0
    );

    f.write("[identity]\nanvendersystem = \"not-a-uuid\"\n");
    let (code, body) = post(&s, "/-/reload", "").await;
    assert_eq!(code, 500);
    assert!(
        body.contains("config.toml") && body.contains("anvendersystem"),
        "{body}"
    );
    let text = scrape(&s).await;
    assert_eq!(
        value(&text, "bfo_alive_config_last_reload_successful"),
        Some(0.0)
    );
    let n = value(
        &text,
        r#"bfo_alive_probes_total{dueslag="n",mode="push",result="success"}"#,
    )
    .unwrap();
    wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="n",mode="push",result="success"}"#,
        n + 2.0,
    )
    .await;
    s.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let (s, _f) = start(&config(PULL)).await;
    for p in ["/-/healthy", "/-/ready"] {
        assert_eq!(
            reqwest::get(format!("{}{p}", base(&s)))
                .await
                .unwrap()
                .status()
                .as_u16(),
            200
        );
    }
    assert_eq!(get(&s, "/dueslag/none").await.0, 404);
    s.stop().await;
}

#[tokio::test]
async fn promtool_finds_the_exposition_clean() {
    if !require_tool("promtool") {
        return;
    }
    let (s, _f) = start(&config(&format!("{PULL}{PUSH}"))).await;
    let text = wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#,
        1.0,
    )
    .await;
    s.stop().await;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn exporter_knobs_apply_without_restarting_loops() {
    const P_OK: &str = r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#;
    let (s, f) = start(&config(PULL)).await;
    let text = wait_metric(&s, P_OK, 5.0).await;
    let before = value(&text, P_OK).unwrap();
    assert_eq!(
        value(&text, r#"bfo_alive_backend_info{backend="sim"}"#),
        Some(1.0)
    );
    let (_, page) = get(&s, "/").await;
    assert!(page.contains("Nothing real is probed"), "{page}");
    assert_eq!(get(&s, "/probe?dueslag=p").await.0, 404);

    f.write(&config(PULL).replacen("[exporter]\n", "[exporter]\nprobe_endpoint = true\n", 1));
    assert_eq!(post(&s, "/-/reload", "").await.0, 200);
    // A restarted loop would have started its counters again from 0.
    let after = value(&scrape(&s).await, P_OK).unwrap();
    assert!(after >= before, "the loop restarted: {after} < {before}");
    let (code, body) = get(&s, "/probe?dueslag=p").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("probe_success 1"), "{body}");
    s.stop().await;
}
