//! Tests of parsing, presets, validation and what a reload compares.

use super::*;

pub const MINIMAL: &str = r#"
[broker]
backend = "sim"

[identity]
anvendersystem = "cf12c051-39ce-4066-ba11-704b46fa23c4"
cvr = "29189846"

[[dueslag]]
name = "a"
mode = "pull"
queue = "c82e55b4-d9aa-4c15-90cf-f4fbc0f85037"
"#;

#[test]
fn minimal_is_sim_with_defaults() {
    let c = Config::parse(MINIMAL, "m.toml").unwrap();
    assert_eq!(c.backend(), BackendKind::Sim);
    let s = &c.dueslag_specs()[0];
    assert_eq!(s.interval, Duration::from_secs(30));
    assert_eq!(s.timeout, Duration::from_secs(120));
    assert_eq!(s.unexpected, Unexpected::Hold);
}

#[test]
fn a_dueslag_belongs_to_its_own_municipality_or_the_identity_s() {
    let text = format!(
        "{MINIMAL}labels = {{ kommune = \"home\" }}\n\
         [[dueslag]]\nname = \"aarhus\"\nmode = \"push\"\nid = \"6d5a5d9e-3f0b-4a55-9d6e-0c1f2b3a4d5e\"\n\
         cvr = \"55133018\"\nanvendersystem = \"0f2b3a4d-3f0b-4a55-9d6e-6d5a5d9e0c1f\"\n\
         labels = {{ kommune = \"aarhus\" }}\n"
    );
    let c = Config::parse(&text, "m.toml").unwrap();
    let specs = c.dueslag_specs();
    assert_eq!(specs[0].cvr, "29189846");
    assert_eq!(specs[0].anvendersystem, c.identity.anvendersystem);
    assert_eq!(
        specs[0].labels,
        [("kommune".to_string(), "home".to_string())]
    );
    assert_eq!(specs[1].cvr, "55133018");
    assert_eq!(
        specs[1].anvendersystem.to_string(),
        "0f2b3a4d-3f0b-4a55-9d6e-6d5a5d9e0c1f"
    );
    // Each municipality with the services its dueslag need: afhent only for a pull one.
    let m = c.municipalities();
    assert_eq!(m["29189846"], [Service::Afsend, Service::Afhent]);
    assert_eq!(m["55133018"], [Service::Afsend]);
    assert_eq!(m.len(), 2);
    // Without dueslag, the identity's alone.
    let mut none = c.clone();
    none.dueslag.clear();
    assert_eq!(
        none.municipalities().keys().collect::<Vec<_>>(),
        ["29189846"]
    );
    let mut on_amqp = c.clone();
    on_amqp.broker.as_mut().unwrap().backend = BackendKind::Amqp;
    let summary = on_amqp.resolution_summary().join("\n");
    assert!(
        summary.contains("municipalities: 2 (CVR), 3 tokens and 3 connections"),
        "{summary}"
    );
    // Adding a municipality is no backend rebuild: its tokens and connections are made
    // beside the running ones.
    let mut more = c.clone();
    more.dueslag[1].cvr = Some("35209115".into());
    assert_eq!(c.backend_part(), more.backend_part());
}

#[test]
fn no_backend_is_refused_with_how_to_choose() {
    let text = MINIMAL.replace("[broker]\nbackend = \"sim\"\n", "");
    let e = Config::parse(&text, "m.toml").unwrap_err().to_string();
    assert!(
        e.starts_with("m.toml: broker: no backend chosen")
            && e.contains("backend = \"amqp\"")
            && e.contains("backend = \"sim\""),
        "{e}"
    );
}

#[test]
fn backend_part_ignores_exporter_knobs_and_dueslag() {
    let a = Config::parse(MINIMAL, "m.toml").unwrap();
    let mut b = a.clone();
    b.exporter.probe_endpoint = true;
    b.dueslag[0].name = "b".into();
    b.dueslag[0].interval = Some(Duration::from_secs(5));
    b.defaults.interval = Duration::from_secs(1);
    assert_eq!(a.backend_part(), b.backend_part());
    b.identity.cvr = "12345678".into();
    assert_ne!(a.backend_part(), b.backend_part());
}

/// An amqp configuration on the eksterntest preset, with `extra` lines in `[broker]`
/// and `token` as the `[token]` table.
pub(crate) fn amqp(extra: &str, token: &str, dueslag: &str) -> String {
    format!(
        r#"
[identity]
anvendersystem = "cf12c051-39ce-4066-ba11-704b46fa23c4"
cvr = "29189846"

[broker]
backend = "amqp"
{extra}
[broker.tls]
cert_file = "client.pem"
key_file = "client.key"

[token]
{token}
{dueslag}"#
    )
}

/// The error loading `text` gives.
fn load_error(text: &str) -> String {
    Config::parse(text, "t.toml").unwrap_err().to_string()
}

pub(crate) const PULL: &str = "[[dueslag]]\nname = \"a\"\nmode = \"pull\"\nqueue = \"c82e55b4-d9aa-4c15-90cf-f4fbc0f85037\"\n";
pub(crate) const PUSH: &str =
    "[[dueslag]]\nname = \"h\"\nmode = \"push\"\nid = \"6d5a5d9e-3f0b-4a55-9d6e-0c1f2b3a4d5e\"\n";

fn entity_ids(t: &TokenConfig) -> [Option<&str>; 2] {
    [t.afsend_entity_id.as_deref(), t.afhent_entity_id.as_deref()]
}

#[test]
fn eksterntest_fills_url_sts_and_entity_ids() {
    let text = amqp("environment = \"eksterntest\"", "source = \"sts\"", PULL);
    let c = Config::parse(&text, "e.toml").unwrap();
    let b = c.broker.as_ref().unwrap();
    assert_eq!(
        b.url.as_ref().unwrap().0,
        "amqps://beskedfordeler.eksterntest-stoettesystemerne.dk:5671/BF"
    );
    let t = c.token.as_ref().unwrap();
    assert_eq!(
        t.sts_url.as_deref(),
        Some("https://n2adgangsstyring.eksterntest-stoettesystemerne.dk/runtime")
    );
    assert_eq!(
        entity_ids(t),
        [
            Some("http://beskedfordeler.eksterntest-stoettesystemerne.dk/service/afsend/1"),
            Some("http://beskedfordeler.eksterntest-stoettesystemerne.dk/service/afhent/1"),
        ]
    );
    let keys: Vec<&str> = c.resolved.iter().map(|r| r.key).collect();
    assert_eq!(
        keys,
        [
            "broker.url",
            "token.sts_url",
            "token.afsend_entity_id",
            "token.afhent_entity_id"
        ]
    );
    let summary = c.resolution_summary().join("\n");
    assert!(
        summary.contains(
            "token.sts_url = https://n2adgangsstyring.eksterntest-stoettesystemerne.dk/runtime (environment = \"eksterntest\"); tokens from POST https://n2adgangsstyring.eksterntest-stoettesystemerne.dk/runtime/api/rest/wstrust/v1/issue"
        ) && summary.contains("services: afsend, afhent"),
        "{summary}"
    );
}

#[test]
fn explicit_keys_override_the_preset() {
    let text = amqp(
        "environment = \"eksterntest\"\nurl = \"amqps://user:hunter2@broker.example:5671/X\"",
        "source = \"sts\"\nsts_url = \"https://sts.example/runtime\"\nafsend_entity_id = \"http://entityid.kombit.dk/service/afsend/2\"",
        PUSH,
    );
    let c = Config::parse(&text, "e.toml").unwrap();
    assert_eq!(
        c.broker.as_ref().unwrap().url.as_ref().unwrap().0,
        "amqps://user:hunter2@broker.example:5671/X"
    );
    let t = c.token.as_ref().unwrap();
    assert_eq!(t.sts_url.as_deref(), Some("https://sts.example/runtime"));
    assert_eq!(
        entity_ids(t),
        [
            Some("http://entityid.kombit.dk/service/afsend/2"),
            Some("http://beskedfordeler.eksterntest-stoettesystemerne.dk/service/afhent/1"),
        ]
    );
    assert_eq!(c.resolved.len(), 1);
    let summary = c.resolution_summary().join("\n");
    assert!(
        !summary.contains("hunter2")
            && summary.contains("broker.url = amqps://user:***@broker.example:5671/X\n")
            && summary.contains("services: afsend (no pull dueslag"),
        "{summary}"
    );
}

#[test]
fn produktion_requires_what_public_sources_disagree_on() {
    let produktion = "environment = \"produktion\"";
    let url = "\nurl = \"amqps://bfo.example:5671/BF\"";
    for (extra, expected) in [
        (
            produktion.to_string(),
            "t.toml: broker.url: required with environment = \"produktion\": public sources disagree",
        ),
        (
            format!("{produktion}{url}"),
            "t.toml: token.afsend_entity_id: required with environment = \"produktion\": public sources disagree",
        ),
    ] {
        let e = load_error(&amqp(&extra, "source = \"sts\"", PULL));
        assert!(e.starts_with(expected), "{e}");
    }
    // With both, only the STS comes from the preset.
    let c = Config::parse(
        &amqp(
            &format!("{produktion}{url}"),
            "source = \"sts\"\nafsend_entity_id = \"s\"\nafhent_entity_id = \"h\"",
            PULL,
        ),
        "p.toml",
    )
    .unwrap();
    assert_eq!(
        c.token.as_ref().unwrap().sts_url.as_deref(),
        Some("https://n2adgangsstyring.stoettesystemerne.dk/runtime")
    );
    assert_eq!(c.resolved.len(), 1);
    // A file token needs no STS settings, so none are filled in.
    let c = Config::parse(
        &amqp(
            "environment = \"eksterntest\"",
            "source = \"file\"\nfile = \"t.xml\"",
            PULL,
        ),
        "f.toml",
    )
    .unwrap();
    assert_eq!(c.token.as_ref().unwrap().sts_url, None);
    assert_eq!(c.resolved.len(), 1);
}

#[test]
fn a_url_without_a_virtual_host_means_bf() {
    for (url, want) in [
        ("amqps://bfo.example:5671", "amqps://bfo.example:5671/BF"),
        ("amqps://bfo.example:5671/", "amqps://bfo.example:5671/BF"),
        (
            "amqps://u:hunter2@bfo.example:5671?heartbeat=30",
            "amqps://u:hunter2@bfo.example:5671/BF?heartbeat=30",
        ),
        (
            "amqps://bfo.example:5671/other",
            "amqps://bfo.example:5671/other",
        ),
        ("amqp://localhost:5672/%2f", "amqp://localhost:5672/%2f"),
    ] {
        let text = amqp(
            &format!("url = \"{url}\""),
            "source = \"sts\"\nsts_url = \"https://s\"\nafsend_entity_id = \"s\"\nafhent_entity_id = \"h\"",
            PULL,
        );
        let c = Config::parse(&text, "v.toml").unwrap();
        assert_eq!(c.broker.as_ref().unwrap().url.as_ref().unwrap().0, want);
        let noted = c.resolved.iter().any(|r| {
            r.key == "broker.url"
                && r.from.contains("no virtual host")
                && !r.value.contains("hunter2")
        });
        assert_eq!(noted, url != want, "{url}");
    }
}

#[test]
fn refuses_what_cannot_work_against_kombit() {
    let sts = "source = \"sts\"";
    let sim = MINIMAL.replace(
        "backend = \"sim\"",
        "backend = \"sim\"\nenvironment = \"eksterntest\"",
    );
    for (text, expected) in [
        (
            amqp("url = \"amqp://u:hunter2@bfo.example:5671/BF\"", sts, PULL),
            "broker.url: amqp://u:***@bfo.example:5671/BF speaks plain AMQP to port 5671, the TLS port; use amqps://u:***@bfo.example:5671/BF",
        ),
        (
            amqp("environment = \"staging\"", sts, PULL),
            "unknown variant `staging`, expected `eksterntest` or `produktion`",
        ),
        (
            amqp(
                "environment = \"eksterntest\"",
                "source = \"sts\"\nsts_url = \"http://sts.example/runtime\"",
                PULL,
            ),
            "token.sts_url \"http://sts.example/runtime\": must be an https:// URL",
        ),
        (sim, "broker.environment: presets a real Beskedfordeler"),
    ] {
        let e = load_error(&text);
        assert!(e.contains(expected) && !e.contains("hunter2"), "{e}");
    }
}

#[test]
fn a_file_token_over_amqps_needs_the_system_certificate() {
    let file = "source = \"file\"\nfile = \"t.xml\"";
    let without = amqp("environment = \"eksterntest\"", file, PULL).replace(
        "cert_file = \"client.pem\"\nkey_file = \"client.key\"\n",
        "",
    );
    let e = load_error(&without);
    assert!(
        e.contains("broker.tls: token.source = \"file\" over amqps:// needs the system certificate (broker.tls.cert_file and key_file, or pkcs12_file)"),
        "{e}"
    );
    Config::parse(&amqp("environment = \"eksterntest\"", file, PULL), "f.toml").unwrap();
    let pkcs12 = without.replace(
        "[broker.tls]\n",
        "[broker.tls]\npkcs12_file = \"c.p12\"\npkcs12_password_file = \"p\"\n",
    );
    Config::parse(&pkcs12, "f.toml").unwrap();
    // Plain AMQP (a test broker) is not KOMBIT's.
    let plain = without.replace(
        "environment = \"eksterntest\"",
        "url = \"amqp://localhost:5672/t\"\nauth = \"plain\"",
    );
    Config::parse(&plain, "f.toml").unwrap();
}

#[test]
fn services_follow_the_modes_and_adding_pull_rebuilds_the_backend() {
    let text = |d: &str| amqp("environment = \"eksterntest\"", "source = \"sts\"", d);
    let push = Config::parse(&text(PUSH), "p.toml").unwrap();
    assert_eq!(push.services(), [Service::Afsend]);
    let both = Config::parse(&text(&format!("{PUSH}{PULL}")), "p.toml").unwrap();
    assert_eq!(both.services(), Service::ALL);
    assert_ne!(push.backend_part(), both.backend_part());
    // Another push dueslag changes nothing global.
    let more = Config::parse(
        &text(&format!(
            "{PUSH}{}",
            PUSH.replace("\"h\"", "\"h2\"")
                .replace("6d5a5d9e", "7d5a5d9e")
        )),
        "p.toml",
    )
    .unwrap();
    assert_eq!(push.backend_part(), more.backend_part());
}

#[test]
fn max_connection_age_defaults_to_55m_and_0s_turns_it_off() {
    let c = Config::parse(MINIMAL, "m.toml").unwrap();
    let b = c.broker.as_ref().unwrap();
    assert_eq!(b.max_connection_age, Duration::from_secs(55 * 60));
    assert_eq!(b.connection_age_limit(), Some(Duration::from_secs(3300)));
    assert!(!b.exceeds_broker_limit());

    let with = |age: &str| {
        let text = MINIMAL.replace(
            "backend = \"sim\"\n",
            &format!("backend = \"sim\"\nmax_connection_age = \"{age}\"\n"),
        );
        Config::parse(&text, "m.toml")
    };
    let off = with("0s").unwrap();
    let b = off.broker.as_ref().unwrap();
    assert_eq!(b.connection_age_limit(), None);
    assert!(!b.exceeds_broker_limit());
    let long = with("1h").unwrap();
    assert!(long.broker.as_ref().unwrap().exceeds_broker_limit());
    assert_eq!(
        with("2s").unwrap().broker.unwrap().connection_age_limit(),
        Some(Duration::from_secs(2))
    );
    let e = with("500ms").unwrap_err().to_string();
    assert!(
        e.contains("broker.max_connection_age") && e.contains("0s"),
        "{e}"
    );
    let e = with("soon").unwrap_err().to_string();
    assert!(e.contains("max_connection_age"), "{e}");
}

#[test]
fn heartbeat_defaults_to_10s_and_0s_takes_the_brokers() {
    let c = Config::parse(MINIMAL, "m.toml").unwrap();
    assert_eq!(c.broker.as_ref().unwrap().heartbeat_secs(), Some(10));
    let with = |hb: &str| {
        let text = MINIMAL.replace(
            "backend = \"sim\"\n",
            &format!("backend = \"sim\"\nheartbeat = \"{hb}\"\n"),
        );
        Config::parse(&text, "m.toml")
    };
    assert_eq!(with("0s").unwrap().broker.unwrap().heartbeat_secs(), None);
    assert_eq!(
        with("2s").unwrap().broker.unwrap().heartbeat_secs(),
        Some(2)
    );
    for bad in ["1500ms", "70000s"] {
        let e = with(bad).unwrap_err().to_string();
        assert!(e.contains("broker.heartbeat"), "{bad}: {e}");
    }
}

#[test]
fn broker_password_is_masked() {
    let u = BrokerUrl("amqp://user:hunter2@host:5672/BF".into());
    let shown = format!("{u:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("***"));
}

#[test]
fn every_dueslag_has_a_unique_uuid_and_pull_takes_its_queue() {
    let c = Config::parse(&format!("{MINIMAL}{PUSH}"), "m.toml").unwrap();
    let ids: Vec<String> = c.dueslag_specs().iter().map(|s| s.id.to_string()).collect();
    assert_eq!(
        ids,
        [
            "c82e55b4-d9aa-4c15-90cf-f4fbc0f85037",
            "6d5a5d9e-3f0b-4a55-9d6e-0c1f2b3a4d5e"
        ]
    );
    // A pull dueslag's own id wins over its queue.
    let own = MINIMAL.replace(
        "mode = \"pull\"\n",
        "mode = \"pull\"\nid = \"0e6bb0c4-6a51-4c3e-9d0c-62c4d2d3a1b0\"\n",
    );
    let c = Config::parse(&own, "m.toml").unwrap();
    assert_eq!(
        c.dueslag_specs()[0].id.to_string(),
        "0e6bb0c4-6a51-4c3e-9d0c-62c4d2d3a1b0"
    );
    // A queue that is no UUID needs an id, and the error says why.
    let named = MINIMAL.replace("c82e55b4-d9aa-4c15-90cf-f4fbc0f85037", "q-a");
    let e = load_error(&named);
    assert!(
        e.contains("dueslag.a.id: required, as queue \"q-a\" is not a UUID")
            && e.contains("RelateretObjekt"),
        "{e}"
    );
    let fixed = named.replace(
        "mode = \"pull\"\n",
        "mode = \"pull\"\nid = \"0e6bb0c4-6a51-4c3e-9d0c-62c4d2d3a1b0\"\n",
    );
    Config::parse(&fixed, "m.toml").unwrap();
    let e = load_error(&MINIMAL.replace("queue =", "id = \"x\"\nqueue ="));
    assert!(e.contains("dueslag.a.id: \"x\" is not a UUID"), "{e}");
    let e = load_error(&format!(
        "{MINIMAL}{}",
        PUSH.replace(
            "6d5a5d9e-3f0b-4a55-9d6e-0c1f2b3a4d5e",
            "C82E55B4-D9AA-4C15-90CF-F4FBC0F85037"
        )
    ));
    assert!(
        e.contains(
            "dueslag.h.id: c82e55b4-d9aa-4c15-90cf-f4fbc0f85037 is also the id of dueslag \"a\""
        ),
        "{e}"
    );
    let e = load_error(&format!(
        "{MINIMAL}[[dueslag]]\nname = \"h\"\nmode = \"push\"\n"
    ));
    assert!(
        e.contains("dueslag.h.id: required for a push dueslag"),
        "{e}"
    );
}

#[test]
fn objekt_type_is_a_urn_or_a_uuid() {
    let c = Config::parse(MINIMAL, "m.toml").unwrap();
    assert_eq!(
        c.objekt_type(),
        UnikId::Urn("urn:bfo-alive-exporter:dueslag".into())
    );
    let with = |t: &str| {
        MINIMAL.replace(
            "[broker]",
            &format!("[exporter]\nobjekt_type = \"{t}\"\n\n[broker]"),
        )
    };
    let c = Config::parse(&with("e2b5f4a0-1c3d-4e5f-8a9b-0c1d2e3f4a5b"), "m.toml").unwrap();
    assert_eq!(c.objekt_type().element(), "UUIDIdentifikator");
    let c = Config::parse(&with("urn:example:dueslag"), "m.toml").unwrap();
    assert_eq!(c.objekt_type(), UnikId::Urn("urn:example:dueslag".into()));
    let e = load_error(&with("dueslag"));
    assert!(
        e.contains("exporter.objekt_type: \"dueslag\" is neither a UUID nor a URN"),
        "{e}"
    );
    // It goes into every message, so it is not part of the backend.
    let a = Config::parse(MINIMAL, "m.toml").unwrap();
    let b = Config::parse(&with("urn:example:dueslag"), "m.toml").unwrap();
    assert_eq!(a.backend_part(), b.backend_part());
}

#[test]
fn external_url_is_https_and_leaves_the_backend_alone() {
    let with = |u: &str| format!("{MINIMAL}\n[push]\nexternal_url = \"{u}\"\n");
    let a = Config::parse(MINIMAL, "m.toml").unwrap();
    let b = Config::parse(&with("https://alive.example.dk/bfo"), "m.toml").unwrap();
    assert_eq!(a.backend_part(), b.backend_part());
    for bad in [
        "http://alive.example.dk",
        "alive.example.dk",
        "https://x.dk/?a=b",
    ] {
        let e = load_error(&with(bad));
        assert!(
            e.contains("push.external_url:") && e.contains("https://"),
            "{e}"
        );
    }
}

#[test]
fn sim_abonnement_names_a_dueslag_and_needs_the_simulator() {
    let with = |t: &str| format!("{MINIMAL}\n[sim.abonnement]\n{t}\n");
    let c = Config::parse(&with("a = \"fan-out\""), "m.toml").unwrap();
    assert_eq!(c.sim.abonnement["a"], AbonnementKind::FanOut);
    let e = load_error(&with("b = \"fan-out\""));
    assert!(
        e.contains("sim.abonnement.b: no dueslag is named \"b\""),
        "{e}"
    );
    let e = load_error(&with("a = \"everything\""));
    assert!(e.contains("sim.abonnement"), "{e}");
    let amqp = amqp(
        "environment = \"eksterntest\"",
        "source = \"sts\"",
        &format!("{PULL}\n[sim.abonnement]\na = \"fan-out\"\n"),
    );
    let e = load_error(&amqp);
    assert!(
        e.contains("sim.abonnement: only with [broker] backend = \"sim\""),
        "{e}"
    );
}
