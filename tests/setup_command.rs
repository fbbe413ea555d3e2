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
