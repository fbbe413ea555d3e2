//! The `probe` command and `GET /probe`: success, 41 then success, rejection, unroutable
//! and nothing arriving — on the simulator and on the emulator over RabbitMQ — with exit
//! codes, the JSON shape, and no secret in any output.

mod common;

use common::broker::*;
use common::emulator::*;
use common::*;

fn probe(config: &str, dueslag: &str, extra: &[&str]) -> Run {
    let f = ConfigFile::new(config);
    let path = f.path.to_str().unwrap();
    let args = [
        "probe",
        "--config.file",
        path,
        "--dueslag",
        dueslag,
        "--web.listen-address",
        "127.0.0.1:0",
        "--timeout",
        "2s",
    ];
    run_exporter(args.iter().chain(extra))
}

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

fn sim(faults: &str) -> String {
    format!(
        "{IDENTITY}{SIM}\n{}{}{faults}",
        pull_dueslag("p"),
        push_dueslag("h")
    )
}

#[test]
fn succeeds_on_the_simulator_with_json() {
    let r = probe(&sim(""), "h", &["--count", "3", "--output", "json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let j = json(&r);
    assert_eq!(
        (
            j["dueslag"].as_str(),
            j["sent"].as_u64(),
            j["arrived"].as_u64(),
            j["exit_code"].as_u64()
        ),
        (Some("h"), Some(3), Some(3), Some(0))
    );
    let steps = j["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "config",
            "dueslag",
            "backend",
            "push listener",
            "publish",
            "delivery",
            "publish",
            "delivery",
            "publish",
            "delivery",
            "abonnement"
        ]
    );
    assert!(steps.iter().all(|s| s["ok"] == true));
    assert!(steps[5]["millis"].as_f64().is_some());
    assert!(
        steps[10]["detail"]
            .as_str()
            .unwrap()
            .contains("did not arrive in dueslag h: its abonnement filters on RelateretObjekt"),
        "{}",
        steps[10]
    );
    let text = probe(&sim(""), "p", &[]);
    assert_eq!(text.code, 0);
    assert!(
        text.stdout.contains("[ok  ] delivery")
            && text.stdout.contains("1 of 1 Alive messages arrived in p"),
        "{}",
        text.stdout
    );
}

#[test]
fn explains_failures_on_the_simulator() {
    let cases = [
        (
            "[sim.faults.p]\nreject = 1.0\nreject_code = 41\n",
            1,
            "service agreement",
        ),
        (
            "[sim.faults.p]\nreject = 1.0\nreject_code = 44\n",
            1,
            "sender identity",
        ),
        ("[sim.faults.p]\nunroutable = 1.0\n", 1, "unroutable"),
        (
            "[sim.faults.p]\nloss = 1.0\n",
            1,
            "subscription (abonnement)",
        ),
    ];
    for (faults, code, hint) in cases {
        let r = probe(&sim(faults), "p", &["--output", "json"]);
        assert_eq!(r.code, code, "{faults}: {}", r.stdout);
        let j = json(&r);
        let failed: Vec<&serde_json::Value> = j["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["ok"] == false)
            .collect();
        assert_eq!(failed.len(), 1, "{faults}");
        assert!(
            failed[0]["hint"].as_str().unwrap().contains(hint),
            "{faults}: {}",
            failed[0]
        );
    }
    // 41 once: the token is renewed and the retry succeeds.
    let r = probe(
        &sim("[sim.faults.p]\nreject_first = 1\nreject_code = 41\n"),
        "p",
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.contains("after 2 attempt(s)"), "{}", r.stdout);
}

/// A dueslag whose abonnement does not filter on RelateretObjekt lets in a message addressed
/// to another dueslag: the probes arrive, but the trace fails the abonnement step with what
/// to set up, and the command exits 1.
#[test]
fn a_fan_out_abonnement_is_found_on_the_simulator() {
    for (dueslag, cfg) in [
        ("p", sim("[sim.abonnement]\np = \"fan-out\"\n")),
        ("h", sim("[sim.abonnement]\nh = \"fan-out\"\n")),
    ] {
        let r = probe(&cfg, dueslag, &["--count", "2", "--output", "json"]);
        assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
        let j = json(&r);
        assert_eq!(
            (j["sent"].as_u64(), j["arrived"].as_u64()),
            (Some(2), Some(2))
        );
        let steps = j["steps"].as_array().unwrap();
        let last = steps.last().unwrap();
        assert_eq!(
            (last["step"].as_str(), last["ok"].as_bool()),
            (Some("abonnement"), Some(false))
        );
        let detail = last["detail"].as_str().unwrap();
        assert!(
            detail.contains("addressed to another dueslag (RelateretObjekt ObjektId ")
                && detail.contains(&format!("arrived in dueslag {dueslag} too"))
                && last["hint"]
                    .as_str()
                    .unwrap()
                    .contains("does not filter on RelateretObjekt"),
            "{last}"
        );
        assert_eq!(
            steps.iter().filter(|s| s["ok"] == false).count(),
            1,
            "{steps:?}"
        );
    }
}

#[test]
fn usage_and_config_errors_exit_2() {
    let r = probe(&sim(""), "nope", &[]);
    assert_eq!(r.code, 2);
    assert!(
        r.stdout.contains("no dueslag named \"nope\"") && r.stdout.contains("configured: p, h"),
        "{}",
        r.stdout
    );
    let r = probe("[identity]\ncvr = 1\n", "p", &["--output", "json"]);
    assert_eq!(r.code, 2);
    assert_eq!(json(&r)["steps"][0]["ok"], false);
}

fn amqp_config(url: &str, extra: &str) -> String {
    format!(
        "{IDENTITY}\n[broker]\nbackend = \"amqp\"\nurl = \"{url}\"\nauth = \"plain\"\n{extra}\n[defaults]\nsend_timeout = \"1s\"\n{}",
        pull_dueslag("p")
    )
}

fn emulator(url: &str, faults: &str) -> String {
    format!(
        "[emulator]\nurl = \"{url}\"\nanvendersystem = \"cf12c051-39ce-4066-ba11-704b46fa23c4\"\ncvr = \"29189846\"\nrequire_token = false\n{}{faults}",
        pull_dueslag("p")
    )
}

#[tokio::test]
async fn explains_outcomes_against_the_emulator_and_never_prints_secrets() {
    let Some(b) = Broker::get() else { return };
    let password = b.var("AMQP_PASSWORD").to_string();
    let cases = [
        ("", 0, None),
        ("[faults.p]\nreject_first = 1\nreject_code = 41\n", 0, None),
        (
            "[faults.p]\nreject = 1.0\nreject_code = 44\n",
            1,
            Some("sender identity"),
        ),
        (
            "[faults.p]\nloss = 1.0\n",
            1,
            Some("subscription (abonnement)"),
        ),
        // Into p's [[dueslag]] table: its abonnement lets in every Alive message.
        (
            "abonnement = \"fan-out\"\n",
            1,
            Some("does not filter on RelateretObjekt"),
        ),
    ];
    for (faults, code, hint) in cases {
        let url = b.vhost("probecmd");
        let emu = start_emulator(&emulator(&url, faults)).await;
        let cfg = amqp_config(&url, "");
        let r = tokio::task::spawn_blocking(move || probe(&cfg, "p", &["--output", "json"]))
            .await
            .unwrap();
        emu.cancel();
        assert_eq!(r.code, code, "{faults}: {}{}", r.stdout, r.stderr);
        let j = json(&r);
        let names: Vec<&str> = j["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step"].as_str().unwrap())
            .collect();
        assert_eq!(
            &names[..4],
            ["config", "dueslag", "token", "amqp"],
            "{faults}"
        );
        if let Some(h) = hint {
            assert!(r.stdout.contains(h), "{faults}: {}", r.stdout);
        }
        assert!(
            !r.stdout.contains(&password) && !r.stderr.contains(&password),
            "the broker password leaked"
        );
    }

    // Unroutable: the exchange exists, nothing is bound.
    let url = b.vhost("probecmd-unroutable");
    declare_unbound_exchange(&url).await;
    let cfg = amqp_config(&url, "");
    let r = tokio::task::spawn_blocking(move || probe(&cfg, "p", &[]))
        .await
        .unwrap();
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("unroutable") && r.stdout.contains("what to check"),
        "{}",
        r.stdout
    );

    // A token file: the trace names its issuer and expiry, never its content.
    let url = b.vhost("probecmd-token");
    let emu = start_emulator(
        &emulator(&url, "").replace("require_token = false", "require_token = true"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token.xml");
    std::fs::write(
        &token,
        r#"<saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="SECRET-TOKEN-MARKER"><saml:Issuer>https://sts.test</saml:Issuer><saml:Conditions NotOnOrAfter="2099-01-01T00:00:00Z"/></saml:Assertion>"#,
    )
    .unwrap();
    let cfg = amqp_config(
        &url,
        &format!(
            "[token]\nsource = \"file\"\nfile = \"{}\"\n",
            token.display()
        ),
    );
    let r = tokio::task::spawn_blocking(move || probe(&cfg, "p", &["--log.level", "debug"]))
        .await
        .unwrap();
    emu.cancel();
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("issuer https://sts.test, expires 2099-01-01T00:00:00.000Z"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("SECRET-TOKEN-MARKER") && !r.stderr.contains("SECRET-TOKEN-MARKER"),
        "the token leaked"
    );
    assert!(!r.stderr.contains(&password), "the broker password leaked");

    // Over mutual TLS the trace shows both certificates.
    let url = b.vhost("probecmd-tls");
    let emu = start_emulator(&emulator(&url, "")).await;
    let tls_url = b.url_for(&vhost_of(&url), true);
    let tls = format!(
        "[broker.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        b.var("AMQP_CA"),
        b.var("AMQP_CLIENT_CERT"),
        b.var("AMQP_CLIENT_KEY")
    );
    let cfg = amqp_config(&tls_url, &tls);
    let r = tokio::task::spawn_blocking(move || probe(&cfg, "p", &["--output", "json"]))
        .await
        .unwrap();
    emu.cancel();
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let j = json(&r);
    let tls_step = j["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "tls")
        .expect("a tls step");
    let detail = tls_step["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("peer CN=")
            && detail.contains("; ours CN=")
            && detail.contains("valid until"),
        "{detail}"
    );
}

#[tokio::test]
async fn on_demand_probe_endpoint() {
    // Off by default.
    let quiet = "[defaults]\ninterval = \"1h\"\n";
    let (s, _f) = start(&format!("{}\n{quiet}", sim(""))).await;
    let r = reqwest::get(format!("{}/probe?dueslag=p", base(&s)))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.text().await.unwrap().contains("probe_endpoint = true"));
    s.stop().await;

    let cfg = sim("[sim.faults.h]\nloss = 1.0\n")
        .replace("[exporter]\n", "[exporter]\nprobe_endpoint = true\n");
    let (s, _f) = start(&format!("{cfg}\n{quiet}")).await;
    let before = scrape(&s).await;
    let r = reqwest::get(format!("{}/probe?dueslag=p", base(&s)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        r.contains("probe_success 1") && r.contains("probe_duration_seconds "),
        "{r}"
    );
    // The loop's accounting is untouched.
    let after = scrape(&s).await;
    for series in [
        r#"bfo_alive_probes_total{dueslag="p",mode="pull",result="success"}"#,
        r#"bfo_alive_received_total{dueslag="p",mode="pull",kind="matched"}"#,
    ] {
        assert_eq!(value(&before, series), value(&after, series), "{series}");
    }
    // Rate-limited per dueslag.
    let r = reqwest::get(format!("{}/probe?dueslag=p&debug=true", base(&s)))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // Debug trace, bounded by the scrape timeout header, on a dueslag that loses everything.
    let r = reqwest::Client::new()
        .get(format!("{}/probe?dueslag=h&debug=true", base(&s)))
        .header("X-Prometheus-Scrape-Timeout-Seconds", "1.5")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        r.contains("[ok  ] publish") && r.contains("nothing arrived in dueslag h within 1s"),
        "{r}"
    );
    assert!(
        r.contains("push endpoint registration") && r.trim_end().contains("probe failure"),
        "{r}"
    );
    assert_eq!(get(&s, "/probe?dueslag=zz").await.0, 404);
    s.stop().await;
}
