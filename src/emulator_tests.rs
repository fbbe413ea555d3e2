//! Tests of the emulator: reading rabbitmqctl's connection table, its configuration (every
//! dueslag's abonnement, the beskedtyper it accepts), and what it refuses as the
//! Beskedfordeler would.

use super::*;

#[test]
fn connections_are_read_from_the_rabbitmqctl_table() {
    // As rabbitmqctl 3.10 writes it (the capabilities shortened).
    let table = concat!(
        "<rabbit@host.1796139872.2034.0>\tBF\t1700000000000\t",
        r#"[{"capabilities",[{"basic.nack",true}]},{"connection_name","bfo-alive-exporter afsend"},{"product","lapin"}]"#,
        "\n<rabbit@host.1796139872.2040.0>\tother\t1700000001500\t",
        r#"[{"connection_name","bfo-emulator"}]"#,
        "\n<rabbit@host.1796139872.2051.0>\tBF\t1700000002000\t[]\n",
    );
    let got = parse_connections(table).unwrap();
    let at = |ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    assert_eq!(
        got,
        [
            ClientConnection {
                pid: "<rabbit@host.1796139872.2034.0>".into(),
                vhost: "BF".into(),
                name: Some("bfo-alive-exporter afsend".into()),
                connected_at: at(1_700_000_000_000),
            },
            ClientConnection {
                pid: "<rabbit@host.1796139872.2040.0>".into(),
                vhost: "other".into(),
                name: Some(CONNECTION_NAME.into()),
                connected_at: at(1_700_000_001_500),
            },
            ClientConnection {
                pid: "<rabbit@host.1796139872.2051.0>".into(),
                vhost: "BF".into(),
                name: None,
                connected_at: at(1_700_000_002_000),
            },
        ]
    );
    assert_eq!(parse_connections("\n").unwrap(), []);
    assert!(parse_connections("<x>\tBF\tyesterday\t[]").is_err());
    assert!(parse_connections("<x>\tBF").is_err());
}

/// An emulator file on a broker nobody connects to, with `rest` after `[emulator]`.
fn load(rest: &str) -> Result<EmulatorConfig, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.toml");
    std::fs::write(
        &path,
        format!(
            "[emulator]\nurl = \"amqp://u:p@127.0.0.1:1/BF\"\nanvendersystem = \"{}\"\ncvr = \"29189846\"\n{rest}",
            Uuid::nil()
        ),
    )
    .unwrap();
    EmulatorConfig::load(&path).map_err(|e| e.message)
}

#[test]
fn a_dueslag_needs_a_uuid_to_filter_on_and_subscribes_only_to_accepted_types() {
    let named = "[[dueslag]]\nname = \"p\"\nmode = \"pull\"\nqueue = \"q-p\"\n";
    let e = load(named).unwrap_err();
    assert!(
        e.starts_with("dueslag[0].id: required with abonnement = \"relateret-objekt\""),
        "{e}"
    );
    load(&format!("{named}abonnement = \"fan-out\"\n")).unwrap();
    let c = load(&format!("{named}id = \"{}\"\n", Uuid::from_u128(7))).unwrap();
    let (target, _) = &c.targets()[0];
    assert_eq!(
        target.abonnement.relateret_objekt,
        Some(RelateretObjekt::dueslag(
            Uuid::from_u128(7),
            &UnikId::Urn(DUESLAG_OBJEKT_TYPE.into())
        ))
    );
    // A UUID queue is the id.
    let c = load(&format!(
        "[[dueslag]]\nname = \"p\"\nmode = \"pull\"\nqueue = \"{}\"\n",
        Uuid::from_u128(8)
    ))
    .unwrap();
    assert_eq!(
        c.targets()[0]
            .0
            .address
            .as_ref()
            .map(|a| a.objekt_id.clone()),
        Some(UnikId::Uuid(Uuid::from_u128(8)))
    );
    let sag = Uuid::from_u128(0x5a9);
    let subscribes = format!(
        "[[dueslag]]\nname = \"s\"\nmode = \"pull\"\nqueue = \"s\"\nabonnement = \"fan-out\"\nbeskedtyper = [\"{sag}\"]\ntilladt_modtager = \"urn:oio:cvr-nr:11111111\"\n"
    );
    let e = load(&subscribes).unwrap_err();
    assert!(
        e.contains("dueslag[0].beskedtyper:")
            && e.contains("neither Alive nor in emulator.beskedtyper"),
        "{e}"
    );
    let c = load(&format!("beskedtyper = [\"{sag}\"]\n{subscribes}")).unwrap();
    let (target, _) = &c.targets()[0];
    assert_eq!(target.abonnement.beskedtyper, [sag]);
    assert_eq!(
        target.abonnement.tilladt_modtager,
        Some(UnikId::Urn("urn:oio:cvr-nr:11111111".into()))
    );
    assert_eq!(target.abonnement.relateret_objekt, None);
    let e = load(&format!("objekt_type = \"dueslag\"\n{named}")).unwrap_err();
    assert!(e.starts_with("emulator.objekt_type:"), "{e}");
}

#[test]
fn accepts_configured_beskedtyper_and_checks_the_cvr_only_of_alive() {
    let sag = Uuid::from_u128(0x5a9);
    let mut cfg = load("").unwrap().emulator;
    let props = BasicProperties::default()
        .with_correlation_id("c".into())
        .with_message_id("m".into());
    cfg.require_token = false;
    let business = |t: Uuid, aktoer: Uuid| {
        crate::message::build_business_message_with(
            Uuid::new_v4(),
            t,
            &crate::message::Filtreringsdata {
                ansvarlig_aktoer: Some(aktoer),
                tilladt_modtager: vec![UnikId::Urn("urn:oio:cvr-nr:11111111".into())],
                relateret_objekt: vec![],
            },
        )
    };
    let refused = validate(&cfg, &props, business(sag, Uuid::nil()).as_bytes()).unwrap_err();
    assert_eq!(refused.status_kode, 40);
    cfg.beskedtyper = vec![sag];
    // Another authority's TilladtModtager is fine for another beskedtype ...
    assert_eq!(
        validate(&cfg, &props, business(sag, Uuid::nil()).as_bytes()),
        Ok(())
    );
    // ... but the sender must be the anvendersystem.
    let other = validate(&cfg, &props, business(sag, Uuid::from_u128(1)).as_bytes());
    assert!(
        other
            .unwrap_err()
            .fejlbesked_tekst
            .unwrap()
            .contains("BeskedAnsvarligAktoer")
    );
}

#[test]
fn an_alive_message_must_go_to_the_municipality_its_token_is_issued_for() {
    let cfg = load("cvrs = [\"11111111\", \"22222222\"]\n")
        .unwrap()
        .emulator;
    let alive = |cvr: &str| {
        crate::message::build_alive(&crate::message::AliveSpec {
            besked_id: Uuid::new_v4(),
            anvendersystem: Uuid::nil(),
            cvr,
            relateret_objekt: &RelateretObjekt::dueslag(
                Uuid::from_u128(7),
                &UnikId::Urn(DUESLAG_OBJEKT_TYPE.into()),
            ),
            payload: &crate::message::ProbePayload {
                instance: "t".into(),
                run: Uuid::new_v4(),
                dueslag: "d".into(),
                sequence: 1,
                sent_at: SystemTime::now(),
            },
        })
    };
    let with_token = |cvr: Option<&str>| {
        let until = SystemTime::now() + Duration::from_secs(600);
        let xml = match cvr {
            Some(c) => crate::sts_stub::assertion(c, until),
            // A token that names no CVR: nothing to hold the message to.
            None => crate::sts_stub::assertion("x", until)
                .replace(crate::protocol::sts::CVR_ATTRIBUTE, "other"),
        };
        let mut headers = FieldTable::default();
        headers.insert(TOKEN_HEADER.into(), AMQPValue::LongString(xml.into()));
        BasicProperties::default()
            .with_correlation_id("c".into())
            .with_message_id("m".into())
            .with_headers(headers)
    };
    // Each accepted municipality under its own token.
    for cvr in ["29189846", "11111111", "22222222"] {
        assert_eq!(
            validate(&cfg, &with_token(Some(cvr)), alive(cvr).as_bytes()),
            Ok(())
        );
    }
    assert_eq!(
        validate(&cfg, &with_token(None), alive("11111111").as_bytes()),
        Ok(())
    );
    // Another accepted municipality's message under this token: refused, naming both.
    let r = validate(
        &cfg,
        &with_token(Some("11111111")),
        alive("22222222").as_bytes(),
    )
    .unwrap_err();
    assert_eq!(r.status_kode, 40);
    let text = r.fejlbesked_tekst.unwrap();
    assert!(
        text.contains("issued for CVR 11111111") && text.contains("urn:oio:cvr-nr:22222222"),
        "{text}"
    );
    // A municipality the emulator does not accept at all.
    let r = validate(
        &cfg,
        &with_token(Some("33333333")),
        alive("33333333").as_bytes(),
    );
    assert!(
        r.unwrap_err()
            .fejlbesked_tekst
            .unwrap()
            .contains("not the configured CVR")
    );
}

#[test]
fn rabbitmqctl_env_values_never_print() {
    let ctl = Rabbitmqctl {
        path: None,
        node: Some("rabbit@localhost".into()),
        env: [(
            "RABBITMQ_ERLANG_COOKIE".to_string(),
            "s3cret-cookie".to_string(),
        )]
        .into(),
    };
    let shown = format!("{ctl:?}");
    assert!(
        shown.contains("RABBITMQ_ERLANG_COOKIE") && !shown.contains("s3cret"),
        "{shown}"
    );
    let cmd = ctl.command();
    let args: Vec<_> = cmd.get_args().collect();
    assert_eq!(args, ["-q", "-n", "rabbit@localhost"]);
    assert_eq!(cmd.get_program(), "rabbitmqctl");
}
