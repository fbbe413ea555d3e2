//! Routing by abonnement (ARCHITECTURE.md §2): every Alive message names its dueslag in a
//! RelateretObjekt, so with abonnements that filter on it each message reaches only its own
//! dueslag — no `misrouted`, no `foreign` — and with a `fan-out` abonnement (beskedtype
//! only) every dueslag gets every message: the others' count as `misrouted` while the probes
//! still succeed. On the simulator (fast), and on the emulator over a real RabbitMQ with 3
//! pull and 1 push dueslag, where other systems' beskedtyper are routed too.

mod common;

use bfo_alive_exporter::message::{
    Filtreringsdata, StandardRetur, UnikId, build_business_message_with, parse_afsend_reply,
    parse_haendelsesbesked,
};
use std::time::Duration;

use bfo_alive_exporter::server::Server;
use common::broker::*;
use common::emulator::*;
use common::*;
use uuid::Uuid;

const ANVENDER: &str = "cf12c051-39ce-4066-ba11-704b46fa23c4";
const PULLS: [&str; 3] = ["p1", "p2", "p3"];
const PUSH: &str = "h";
const ALL: [(&str, &str); 4] = [
    ("p1", "pull"),
    ("p2", "pull"),
    ("p3", "pull"),
    (PUSH, "push"),
];

fn received(text: &str, dueslag: &str, mode: &str, kind: &str) -> f64 {
    value(
        text,
        &format!(r#"bfo_alive_received_total{{dueslag="{dueslag}",mode="{mode}",kind="{kind}"}}"#),
    )
    .unwrap_or_else(|| panic!("no {kind} series for {dueslag}"))
}

fn probes(text: &str, dueslag: &str, mode: &str, result: &str) -> f64 {
    value(
        text,
        &format!(
            r#"bfo_alive_probes_total{{dueslag="{dueslag}",mode="{mode}",result="{result}"}}"#
        ),
    )
    .unwrap()
}

/// Waits until every dueslag has `n` successes, and `misrouted` each when given; returns the
/// scrape after printing the figures.
async fn wait_all(s: &Server, n: f64, misrouted: Option<f64>, what: &str) -> String {
    for (d, m) in ALL {
        wait_metric(
            s,
            &format!(r#"bfo_alive_probes_total{{dueslag="{d}",mode="{m}",result="success"}}"#),
            n,
        )
        .await;
        if let Some(k) = misrouted {
            wait_metric(
                s,
                &format!(
                    r#"bfo_alive_received_total{{dueslag="{d}",mode="{m}",kind="misrouted"}}"#
                ),
                k,
            )
            .await;
        }
    }
    let text = scrape(s).await;
    for (d, m) in ALL {
        eprintln!(
            "{what}: {d}: success {}, timeout {}, matched {}, misrouted {}, foreign {}",
            probes(&text, d, m, "success"),
            probes(&text, d, m, "timeout"),
            received(&text, d, m, "matched"),
            received(&text, d, m, "misrouted"),
            received(&text, d, m, "foreign"),
        );
    }
    text
}

/// The exporter's 3 pull and 1 push dueslag.
fn dueslag() -> String {
    let mut t: String = PULLS.iter().map(|d| pull_dueslag(d)).collect();
    t += &push_dueslag(PUSH);
    t
}

fn sim_config(extra: &str) -> String {
    format!(
        "{}{SIM}\n[defaults]\ninterval = \"100ms\"\ntimeout = \"2s\"\njitter = 0.0\n{}{extra}",
        IDENTITY.replacen("[exporter]\n", "[exporter]\nprobe_endpoint = true\n", 1),
        dueslag()
    )
}

#[tokio::test]
async fn on_the_simulator_each_message_reaches_only_its_dueslag_unless_fan_out() {
    let (s, _f) = start(&sim_config("")).await;
    let text = wait_all(&s, 10.0, None, "simulator, relateret-objekt").await;
    for (d, m) in ALL {
        assert_eq!(received(&text, d, m, "misrouted"), 0.0, "{d}");
        assert_eq!(received(&text, d, m, "foreign"), 0.0, "{d}");
    }
    let (_, page) = get(&s, "/").await;
    assert!(!page.contains("misrouted"), "{page}");
    s.stop().await;

    // Every abonnement selects every Alive message; p1's own deliveries take 300 ms, so
    // its on-demand probe waits while the others' messages come in.
    let fan_out: String = ALL
        .iter()
        .map(|(d, _)| format!("{d} = \"fan-out\"\n"))
        .collect();
    let cfg = sim_config(&format!(
        "[sim.abonnement]\n{fan_out}[sim.faults.p1]\ndelay = \"300ms\"\n"
    ));
    let (s, _f) = start(&cfg).await;
    let text = wait_all(&s, 10.0, Some(5.0), "simulator, fan-out").await;
    for (d, m) in ALL {
        assert_eq!(received(&text, d, m, "foreign"), 0.0, "{d}");
        assert_eq!(probes(&text, d, m, "timeout"), 0.0, "{d}");
    }
    let (_, page) = get(&s, "/").await;
    assert!(
        page.contains("misrouted") && page.contains("does not filter on RelateretObjekt"),
        "{page}"
    );
    let (_, hist) = get(&s, "/dueslag/h").await;
    assert!(
        hist.contains("<td>misrouted</td>") && hist.contains("<p id=\"misrouted\">"),
        "{hist}"
    );
    // The on-demand trace names the abonnement, while the probe itself succeeds.
    let (code, trace) = get(&s, "/probe?dueslag=p1&debug=true").await;
    assert_eq!(code, 200);
    assert!(
        trace.contains("[ok  ] delivery")
            && trace.contains("[FAIL] abonnement")
            && trace.contains("arrived in dueslag p1 meanwhile (misrouted)")
            && trace.contains("does not filter on RelateretObjekt")
            && trace.contains("probe success"),
        "{trace}"
    );
    s.stop().await;
}

/// The emulator's dueslag, with the push URL of `s`; `abonnement` for each.
fn emulator_config(url: &str, s: &Server, abonnement: &str) -> String {
    let mut t = emulator_table(url);
    for d in PULLS {
        t += &format!("{}abonnement = \"{abonnement}\"\n", pull_dueslag(d));
    }
    t += &format!(
        "{}abonnement = \"{abonnement}\"\npush_url = \"http://{}/push/{PUSH}\"\n",
        push_dueslag(PUSH),
        s.push_addr
    );
    t
}

/// The exporter's 3 pull and 1 push dueslag on a fresh vhost, and the emulator whose
/// abonnements are all `abonnement`, until every dueslag has 8 successes (and `misrouted`
/// each, when given, else none). In either case no message is foreign, no probe times
/// out, and every Alive message is taken: nothing is left in a dueslag queue.
async fn emulator_run(b: &Broker, abonnement: &str, misrouted: Option<f64>) {
    let url = b.vhost(abonnement);
    let queues: Vec<String> = PULLS.iter().map(|d| dueslag_id(d)).collect();
    let queues: Vec<&str> = queues.iter().map(String::as_str).collect();
    declare_queues(&url, &queues).await;
    let (s, _f) = start(&format!(
        "{IDENTITY}{}[push]\nlisten = \"127.0.0.1:0\"\n\n[defaults]\ninterval = \"200ms\"\ntimeout = \"5s\"\nsend_timeout = \"2s\"\njitter = 0.0\n\n{}",
        amqp_broker_table(&url),
        dueslag()
    ))
    .await;
    let emu = start_emulator(&emulator_config(&url, &s, abonnement)).await;
    // The probes sent before the emulator declared the exchange fail: none is awaited.
    let text = wait_all(&s, 8.0, misrouted, &format!("emulator, {abonnement}")).await;
    // Stop routing first, while the consumers still run: with fan-out, copies routed in the
    // last moment must still be taken. Then every dueslag queue must drain to empty.
    emu.cancel();
    let vhost = vhost_of(&url);
    wait_for(Duration::from_secs(20), || {
        let listing = b.ctl(&["list_queues", "-p", &vhost, "name", "messages"]);
        let left: Vec<String> = listing
            .lines()
            .filter(|l| queues.iter().any(|q| l.starts_with(q)))
            .filter(|l| l.split_whitespace().nth(1).is_some_and(|n| n != "0"))
            .map(str::to_string)
            .collect();
        async move {
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("messages left: {left:?}"))
            }
        }
    })
    .await;
    s.stop().await;
    for (d, m) in ALL {
        assert_eq!(received(&text, d, m, "foreign"), 0.0, "{d}");
        assert_eq!(probes(&text, d, m, "timeout"), 0.0, "{d}");
        if misrouted.is_none() {
            assert_eq!(received(&text, d, m, "misrouted"), 0.0, "{d}");
        }
    }
    for q in queues {
        assert!(queue_bodies(&url, q).await.is_empty(), "{q}");
    }
}

#[tokio::test]
async fn on_the_emulator_3_pull_and_1_push_dueslag_route_by_relateret_objekt() {
    let Some(b) = Broker::get() else { return };
    emulator_run(&b, "relateret-objekt", None).await;
}

/// Misrouted messages are this exporter's: acknowledged (the queues end empty), and the
/// probes succeed all the same.
#[tokio::test]
async fn on_the_emulator_a_fan_out_abonnement_is_misrouted_yet_probes_succeed() {
    let Some(b) = Broker::get() else { return };
    emulator_run(&b, "fan-out", Some(6.0)).await;
}

/// Another system's messages through the emulator: accepted when their beskedtype is
/// configured, routed by beskedtype and TilladtModtager to the dueslag whose abonnement
/// selects them, and delivered nowhere when none does; an Alive message still reaches only
/// its own dueslag.
#[tokio::test]
async fn on_the_emulator_other_beskedtyper_route_by_their_filtreringsdata() {
    let Some(b) = Broker::get() else { return };
    let url = b.vhost("beskedtyper");
    let sag: Uuid = "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d".parse().unwrap();
    let unsubscribed: Uuid = "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5e".parse().unwrap();
    let emu = start_emulator(&format!(
        "{}beskedtyper = [\"{sag}\", \"{unsubscribed}\"]\n\n{}\n\
         [[dueslag]]\nname = \"mine\"\nmode = \"pull\"\nqueue = \"mine\"\nabonnement = \"fan-out\"\n\
         beskedtyper = [\"{sag}\"]\ntilladt_modtager = \"urn:oio:cvr-nr:11111111\"\n\n\
         [[dueslag]]\nname = \"every-sag\"\nmode = \"pull\"\nqueue = \"every-sag\"\nabonnement = \"fan-out\"\n\
         beskedtyper = [\"{sag}\"]\n",
        emulator_table(&url),
        pull_dueslag("alive")
    ))
    .await;
    let business = |cvr: &str, beskedtype: Uuid| {
        build_business_message_with(
            Uuid::new_v4(),
            beskedtype,
            &Filtreringsdata {
                ansvarlig_aktoer: Some(ANVENDER.parse().unwrap()),
                tilladt_modtager: vec![UnikId::Urn(format!("urn:oio:cvr-nr:{cvr}"))],
                relateret_objekt: vec![],
            },
        )
    };
    let for_mine = business("11111111", sag);
    let for_another_cvr = business("33333333", sag);
    let for_nobody = business("11111111", unsubscribed);
    let refused = business("11111111", Uuid::new_v4());
    let alive = alive_to("alive", "another-exporter");
    let replies = afsend_calls(
        &url,
        &[
            for_mine.as_bytes(),
            for_another_cvr.as_bytes(),
            for_nobody.as_bytes(),
            refused.as_bytes(),
            alive.as_bytes(),
        ],
    )
    .await;
    let answers: Vec<StandardRetur> = replies
        .iter()
        .map(|r| parse_afsend_reply(r).unwrap())
        .collect();
    let codes: Vec<i32> = answers.iter().map(|a| a.status_kode).collect();
    assert_eq!(codes, [20, 20, 20, 40, 20]);
    assert!(
        answers[3]
            .fejlbesked_tekst
            .as_deref()
            .unwrap()
            .contains("neither Alive nor one of emulator.beskedtyper"),
        "{:?}",
        answers[3]
    );
    let id_of = |xml: &str| parse_haendelsesbesked(xml.as_bytes()).unwrap().besked_id;
    // Delivery is asynchronous: wait until every expected message is in.
    let alive_queue = dueslag_id("alive");
    let queues = wait_for(std::time::Duration::from_secs(10), || async {
        let mut got = vec![];
        for q in ["mine", "every-sag", alive_queue.as_str()] {
            let mut ids: Vec<Uuid> = queue_bodies(&url, q)
                .await
                .iter()
                .map(|b| parse_haendelsesbesked(b).unwrap().besked_id)
                .collect();
            ids.sort();
            got.push(ids);
        }
        let counts: Vec<usize> = got.iter().map(Vec::len).collect();
        (counts == [1, 2, 1])
            .then_some(got)
            .ok_or(format!("messages in mine, every-sag, alive: {counts:?}"))
    })
    .await;
    let mut every_sag = vec![id_of(&for_mine), id_of(&for_another_cvr)];
    every_sag.sort();
    assert_eq!(
        queues,
        [vec![id_of(&for_mine)], every_sag, vec![id_of(&alive)]]
    );
    emu.cancel();
}
