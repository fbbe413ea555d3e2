//! The `setup` command: for each configured dueslag, the abonnement to create in the
//! Administrationsmodul (the Alive beskedtype and the RelateretObjekt filter) and for push
//! the endpoint to register, as text and as JSON, from the real binary.

mod common;

use common::*;

fn setup(config: &str, extra: &[&str]) -> Run {
    let f = ConfigFile::new(config);
    let args = ["setup", "--config.file", f.path.to_str().unwrap()];
    run_exporter(args.iter().chain(extra))
}

/// A pull dueslag by its queue, a pull dueslag with a named queue and an `id`, and a push
/// dueslag.
fn config(extra: &str) -> String {
    format!(
        "{IDENTITY}{SIM}{extra}\n{}[[dueslag]]\nname = \"named\"\nmode = \"pull\"\nqueue = \"named-queue\"\nid = \"{}\"\n{}",
        pull_dueslag("sag-pull"),
        dueslag_id("named"),
        push_dueslag("sag-push"),
    )
}

#[test]
fn prints_each_dueslags_abonnement_and_push_endpoint() {
    let r = setup(&config(""), &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let blocks: Vec<&str> = r.stdout.split("\n\n").collect();
    let block = |name: &str| {
        *blocks
            .iter()
            .find(|b| b.starts_with(&format!("dueslag {name} (")))
            .unwrap_or_else(|| panic!("no block for {name} in\n{}", r.stdout))
    };
    for (name, mode, id, queue) in [
        (
            "sag-pull",
            "pull",
            dueslag_id("sag-pull"),
            Some(dueslag_id("sag-pull")),
        ),
        (
            "named",
            "pull",
            dueslag_id("named"),
            Some("named-queue".into()),
        ),
        ("sag-push", "push", dueslag_id("sag-push"), None),
    ] {
        let mut want = format!("dueslag {name} ({mode})\n  dueslag UUID      {id}\n");
        if let Some(q) = queue {
            want += &format!("  queue             {q}\n");
        } else {
            want += &format!("  push endpoint     https://EXTERNAL-HOST/push/{name}\n");
        }
        want += &format!(
            "  abonnement\n    Beskedtype      f7e84a06-c47e-42e8-a864-fb4095d7f520 (Alive)\n    RelateretObjekt\n      ObjektId      {id} (UUIDIdentifikator)\n      ObjektType    {DUESLAG_OBJEKT_TYPE} (URNIdentifikator)"
        );
        assert_eq!(block(name).trim_end(), want, "{name}");
    }
    assert!(
        r.stdout
            .contains("https://EXTERNAL-HOST is a placeholder: set [push] external_url"),
        "{}",
        r.stdout
    );

    // With the external URL and another ObjektType, as JSON.
    let r = setup(
        &config(
            "[exporter]\nobjekt_type = \"urn:example:alive-dueslag\"\n[push]\nexternal_url = \"https://alive.example.dk\"\n",
        )
        .replacen("[exporter]\ninstance = \"test\"\n", "", 1),
        &["--output", "json"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["beskedtype"], "f7e84a06-c47e-42e8-a864-fb4095d7f520");
    let push = &j["dueslag"][2];
    assert_eq!(
        (&push["name"], &push["mode"], &push["push_endpoint"]),
        (
            &"sag-push".into(),
            &"push".into(),
            &"https://alive.example.dk/push/sag-push".into()
        )
    );
    assert_eq!(
        push["abonnement"]["relateret_objekt"],
        serde_json::json!({
            "objekt_id": dueslag_id("sag-push"),
            "objekt_id_element": "UUIDIdentifikator",
            "objekt_type": "urn:example:alive-dueslag",
            "objekt_type_element": "URNIdentifikator",
        })
    );
    assert_eq!(j["dueslag"][1]["queue"], "named-queue");
    assert!(j["dueslag"][0].get("push_endpoint").is_none());
}

#[test]
fn configuration_errors_exit_2() {
    let r = setup(
        &format!("{IDENTITY}{SIM}[[dueslag]]\nname = \"h\"\nmode = \"push\"\n"),
        &[],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("dueslag.h.id: required for a push dueslag")
            && r.stdout.is_empty(),
        "{}{}",
        r.stdout,
        r.stderr
    );
    let r = run_exporter(["setup"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("setup needs --config.file"),
        "{}",
        r.stderr
    );
}

#[test]
fn prints_the_dueslag_by_municipality() {
    let text = format!(
        "{IDENTITY}{SIM}\n{}cvr = \"55133018\"\n{}{}cvr = \"55133018\"\n",
        push_dueslag("aarhus-sag"),
        push_dueslag("home"),
        pull_dueslag("aarhus-ydelse"),
    );
    let r = setup(&text, &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let home = r
        .stdout
        .find("## municipality CVR 29189846 (1 dueslag)")
        .unwrap_or_else(|| panic!("{}", r.stdout));
    let aarhus = r
        .stdout
        .find("## municipality CVR 55133018 (2 dueslag)")
        .unwrap_or_else(|| panic!("{}", r.stdout));
    // Each dueslag under its municipality's header.
    let at = |name: &str| r.stdout.find(&format!("dueslag {name} (")).unwrap();
    assert!(home < at("home") && at("home") < aarhus, "{}", r.stdout);
    assert!(
        aarhus < at("aarhus-sag") && aarhus < at("aarhus-ydelse"),
        "{}",
        r.stdout
    );
    let r = setup(&text, &["--output", "json"]);
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let cvrs: Vec<&str> = j["dueslag"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["cvr"].as_str().unwrap())
        .collect();
    assert_eq!(cvrs, ["29189846", "55133018", "55133018"]);
}
