//! The wire formats: what the exporter, the simulator and the emulator write validates
//! against KOMBIT's BFO 5.10 schemas, and the Afsend reply shapes the exporter reads.
//!
//! The schemas are KOMBIT's and not part of the repository: env `BFO_XSD_DIR` names their
//! folder (`scripts/test.sh` sets it, with `BFO_XSD_REQUIRED`, when it finds them). Without
//! it the validating tests print a loud SKIPPED line; with `CI` and `BFO_XSD_REQUIRED` set
//! they fail instead. They validate real output with `xmllint`: what the builders produce,
//! and what goes over the wire — the simulator's push POSTs and the push endpoint's
//! answers, recorded by a proxy between the two, and with a test broker
//! (`BFO_TEST_AMQP_ENV`) the emulator's POSTs, queue deliveries and Afsend replies.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bfo_alive_exporter::message::{
    self, Filtreringsdata, RelateretObjekt, ReplyShape, StandardRetur, UnikId, build_afsend_reply,
    build_business_message, build_business_message_with, build_modtag_besked_input,
    build_modtag_besked_output, build_standard_retur, parse_afsend_reply,
    parse_modtag_besked_input,
};
use bfo_alive_exporter::server::Server;
use common::*;
use uuid::Uuid;

const ANVENDER: &str = "cf12c051-39ce-4066-ba11-704b46fa23c4";
const CVR: &str = "29189846";
/// Validates Haendelsesbesked, ModtagBeskedInput/Output and StandardRetur.
const ANVENDERSYSTEM_XSD: &str = "AnvendersystemOperationer.xsd";
/// Validates AfsendBeskedOutput.
const BESKEDFORDELER_XSD: &str = "BeskedfordelerOperationer.xsd";

/// KOMBIT's schemas and `xmllint`, or `None` after a loud skip.
struct Schemas {
    dir: PathBuf,
}

impl Schemas {
    fn get() -> Option<Schemas> {
        let Some(dir) = std::env::var_os("BFO_XSD_DIR").map(PathBuf::from) else {
            let required =
                std::env::var_os("CI").is_some() && std::env::var_os("BFO_XSD_REQUIRED").is_some();
            assert!(
                !required,
                "BFO_XSD_DIR is not set, but CI and BFO_XSD_REQUIRED are: point it at KOMBIT's BFO 5.10 schemas"
            );
            eprintln!(
                "\n!!!!!!!! SKIPPED: BFO_XSD_DIR is not set; point it at KOMBIT's BFO 5.10 schemas to validate the XML (see README) !!!!!!!!\n"
            );
            return None;
        };
        assert!(
            dir.join(ANVENDERSYSTEM_XSD).is_file(),
            "BFO_XSD_DIR={} holds no {ANVENDERSYSTEM_XSD}",
            dir.display()
        );
        require_tool("xmllint").then_some(Schemas { dir })
    }

    /// Runs xmllint on every document; the names of those that fail, with its complaints.
    fn failures(&self, schema: &str, docs: &[(String, Vec<u8>)]) -> Vec<String> {
        let tmp = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = docs
            .iter()
            .enumerate()
            .map(|(i, (_, body))| {
                let f = tmp.path().join(format!("{i}.xml"));
                std::fs::write(&f, body).unwrap();
                f
            })
            .collect();
        let out = Command::new("xmllint")
            .args(["--noout", "--nonet", "--schema"])
            .arg(self.dir.join(schema))
            .args(&files)
            .output()
            .expect("xmllint runs");
        let report = String::from_utf8_lossy(&out.stderr);
        assert!(
            !report.contains("failed to compile") && !report.contains("WXS schema"),
            "xmllint could not use {schema}: {report}"
        );
        files
            .iter()
            .zip(docs)
            .filter(|(f, _)| !report.contains(&format!("{} validates", f.display())))
            .map(|(f, (name, body))| {
                let why: Vec<&str> = report
                    .lines()
                    .filter(|l| l.starts_with(&*f.to_string_lossy()))
                    .collect();
                format!(
                    "{name}: {}\n    {}",
                    why.join("\n    "),
                    String::from_utf8_lossy(body)
                )
            })
            .collect()
    }

    /// Every document validates against `schema`.
    fn assert_valid(&self, schema: &str, docs: &[(String, Vec<u8>)]) {
        assert!(!docs.is_empty(), "nothing to validate against {schema}");
        let failed = self.failures(schema, docs);
        assert!(
            failed.is_empty(),
            "{} of {} documents are not valid against {schema}:\n{}",
            failed.len(),
            docs.len(),
            failed.join("\n")
        );
        eprintln!("{} documents valid against {schema}", docs.len());
    }
}

fn doc(name: &str, body: impl Into<Vec<u8>>) -> (String, Vec<u8>) {
    (name.to_string(), body.into())
}

#[test]
fn the_builders_write_valid_xml() {
    let Some(xsd) = Schemas::get() else { return };
    let alive = alive_to("sag-pull <&>", "exp-1");
    let business = build_business_message(Uuid::new_v4(), Uuid::new_v4());
    // Everything an abonnement can filter on, RelateretObjekt with a role and by URN.
    let filtered = build_business_message_with(
        Uuid::new_v4(),
        Uuid::new_v4(),
        &Filtreringsdata {
            ansvarlig_aktoer: Some(ANVENDER.parse().unwrap()),
            tilladt_modtager: vec![UnikId::Urn(format!("urn:oio:cvr-nr:{CVR}"))],
            relateret_objekt: vec![
                RelateretObjekt {
                    objekt_id: UnikId::Urn("urn:example:sag:1".into()),
                    objekt_type: UnikId::Uuid(Uuid::new_v4()),
                    objekt_rolle: Some(UnikId::Urn("urn:example:rolle".into())),
                },
                RelateretObjekt::dueslag(Uuid::new_v4(), &UnikId::Urn(DUESLAG_OBJEKT_TYPE.into())),
            ],
        },
    );
    // The exporter's Alive message carries the RelateretObjekt where the schema wants it.
    let at = |needle: &str| {
        alive
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle} in {alive}"))
    };
    assert!(at("</TilladtModtager><RelateretObjekt>") < at("<ObjektRegistrering>"));
    assert!(alive.contains(&format!(
        "<ObjektType><sd:URNIdentifikator>{DUESLAG_OBJEKT_TYPE}</sd:URNIdentifikator></ObjektType>"
    )));
    let refused = StandardRetur::error(40, "not an Alive message <&>");
    let mut docs = vec![
        doc("Alive Haendelsesbesked", alive.clone()),
        doc("business stand-in", business.clone()),
        doc("business with Filtreringsdata", filtered),
        doc(
            "ModtagBeskedInput(Alive)",
            build_modtag_besked_input(&alive),
        ),
        doc(
            "ModtagBeskedInput(business)",
            build_modtag_besked_input(&business),
        ),
        doc(
            "ModtagBeskedOutput 20",
            build_modtag_besked_output(&StandardRetur::ok()),
        ),
        doc(
            "ModtagBeskedOutput 40",
            build_modtag_besked_output(&refused),
        ),
        doc(
            "StandardRetur 20",
            build_standard_retur(&StandardRetur::ok()),
        ),
        doc("StandardRetur 40", build_standard_retur(&refused)),
    ];
    docs.extend([StandardRetur::ok(), refused.clone()].map(|r| {
        doc(
            "Afsend reply standard-retur",
            build_afsend_reply(&r, ReplyShape::StandardRetur),
        )
    }));
    xsd.assert_valid(ANVENDERSYSTEM_XSD, &docs);
    let outputs = [StandardRetur::ok(), refused].map(|r| {
        doc(
            "Afsend reply afsend-besked-output",
            build_afsend_reply(&r, ReplyShape::AfsendBeskedOutput),
        )
    });
    xsd.assert_valid(BESKEDFORDELER_XSD, &outputs);

    // The validator does catch what is wrong: the business stand-in as it used to be
    // written, without Leveranceinformation, and a StandardRetur out of order.
    let old_business = business.replace(
        &business[business.find("<k:Leveranceinformation>").unwrap()
            ..business.find("</k:Beskedkuvert>").unwrap()],
        "",
    );
    let swapped = r#"<StandardRetur xmlns="urn:oio:sagdok:3.0.0"><FejlbeskedTekst>x</FejlbeskedTekst><StatusKode>40</StatusKode></StandardRetur>"#;
    let bad = [
        doc("without Leveranceinformation", old_business),
        doc("StatusKode after FejlbeskedTekst", swapped),
    ];
    assert_eq!(xsd.failures(ANVENDERSYSTEM_XSD, &bad).len(), bad.len());
}

/// One POST that passed the [`Tap`]: the request and the answer, as sent.
#[derive(Debug, Clone)]
struct Exchange {
    path: String,
    request: Bytes,
    status: u16,
    answer: Bytes,
}

/// A recording HTTP proxy: the sender POSTs to it, it forwards to the push endpoint and
/// keeps both sides. Until the upstream is known it answers 503 (the sender delivers again).
#[derive(Default)]
struct Tap {
    /// The push endpoint's base URL, and a client made once the server runs (it installs
    /// the TLS crypto provider the HTTP client needs).
    upstream: OnceLock<(String, reqwest::Client)>,
    seen: Mutex<Vec<Exchange>>,
}

impl Tap {
    /// Listens on 127.0.0.1:0; returns the tap and its base URL.
    async fn start() -> (Arc<Tap>, String) {
        let tap = Arc::new(Tap::default());
        let url = serve(
            axum::Router::new()
                .fallback(forward)
                .with_state(tap.clone()),
        )
        .await;
        (tap, url)
    }

    fn forward_to(&self, server: &Server) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let _ = self
            .upstream
            .set((format!("http://{}", server.push_addr), client));
    }

    fn seen(&self) -> Vec<Exchange> {
        self.seen.lock().unwrap().clone()
    }
}

async fn forward(State(tap): State<Arc<Tap>>, uri: Uri, body: Bytes) -> Response {
    let Some((base, client)) = tap.upstream.get() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let r = client
        .post(format!("{base}{uri}"))
        .header(header::CONTENT_TYPE, "application/xml")
        .body(body.clone())
        .send()
        .await;
    let Ok(r) = r else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = r.status().as_u16();
    let answer = r.bytes().await.unwrap_or_default();
    tap.seen.lock().unwrap().push(Exchange {
        path: uri.path().to_string(),
        request: body,
        status,
        answer: answer.clone(),
    });
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/xml")],
        answer,
    )
        .into_response()
}

/// What a POST carried: our Alive message, another instance's, or business traffic.
fn kind_of(request: &[u8]) -> &'static str {
    match parse_modtag_besked_input(request) {
        Ok(m) if !m.is_alive() => "business",
        Ok(m) if m.probe.as_ref().is_some_and(|p| p.instance == "test") => "ours",
        Ok(_) => "foreign",
        Err(_) => "unreadable",
    }
}

/// Waits until the tap has seen a POST of every kind in `kinds`, each answered 20 when it
/// is ours or foreign and 40 when it is business traffic.
async fn wait_for_kinds(tap: &Tap, kinds: &[&str]) -> Vec<Exchange> {
    wait_for(Duration::from_secs(30), || async {
        let seen = tap.seen();
        for kind in kinds {
            let want = if *kind == "business" { 400 } else { 200 };
            if !seen
                .iter()
                .any(|e| kind_of(&e.request) == *kind && e.status == want)
            {
                return Err(format!("no {kind} POST answered {want} yet: {seen:?}"));
            }
        }
        Ok(seen)
    })
    .await
}

/// The requests and answers of the push endpoint that the tap saw, plus the answers to an
/// unknown dueslag, an unreadable body and an oversized one.
async fn push_documents(seen: &[Exchange], server: &Server) -> Vec<(String, Vec<u8>)> {
    let mut docs = vec![];
    for e in seen {
        let kind = kind_of(&e.request);
        docs.push(doc(&format!("{kind} POST {}", e.path), e.request.to_vec()));
        docs.push(doc(
            &format!("answer {} to {kind} POST {}", e.status, e.path),
            e.answer.to_vec(),
        ));
    }
    let client = reqwest::Client::new();
    let push = format!("http://{}", server.push_addr);
    for (path, body, want) in [
        (
            "/push/nope",
            build_modtag_besked_input(&alive_to("nope", "test")),
            404,
        ),
        ("/push/h", "<unreadable".to_string(), 400),
        ("/push/h", "x".repeat(2 << 20), 413),
    ] {
        let r = client
            .post(format!("{push}{path}"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{path}");
        docs.push(doc(
            &format!("answer {want} to {path}"),
            r.bytes().await.unwrap().to_vec(),
        ));
    }
    docs
}

#[tokio::test]
async fn the_simulator_and_the_push_endpoint_write_valid_xml() {
    let Some(xsd) = Schemas::get() else { return };
    let (tap, tap_url) = Tap::start().await;
    let config = format!(
        r#"{IDENTITY}{SIM}
[defaults]
interval = "200ms"
timeout = "5s"

{}
[sim]
push_base = "{tap_url}"

[sim.faults.h]
business_every = "300ms"
foreign_every = "300ms"
"#,
        push_dueslag("h")
    );
    let (s, _f) = start(&config).await;
    tap.forward_to(&s);
    let seen = wait_for_kinds(&tap, &["ours", "foreign", "business"]).await;
    // The simulator POSTs through the tap: probes succeed.
    wait_metric(
        &s,
        r#"bfo_alive_probes_total{dueslag="h",mode="push",result="success"}"#,
        1.0,
    )
    .await;
    let docs = push_documents(&seen, &s).await;
    s.stop().await;
    xsd.assert_valid(ANVENDERSYSTEM_XSD, &docs);
}

const SHAPES: [(&str, &str); 4] = [
    ("s", "standard-retur"),
    ("o", "afsend-besked-output"),
    ("r", "other-root"),
    ("g", "garbage"),
];

/// `[[dueslag]]` (pull, queue [`dueslag_id`]) and `[FAULTS.NAME] reply_shape` for every shape;
/// the garbage dueslag's messages arrive after its send has failed.
fn shaped_dueslag(faults: &str) -> (String, String) {
    let mut dueslag = String::new();
    let mut shapes = String::new();
    for (name, shape) in SHAPES {
        dueslag += &pull_dueslag(name);
        shapes += &format!("[{faults}.{name}]\nreply_shape = \"{shape}\"\n");
    }
    shapes += "delay = \"300ms\"\n";
    (dueslag, shapes)
}

/// Three shapes succeed; garbage is `invalid_reply`, never `connection` (that it is not
/// retried is a unit test of `send.rs`: attempts are not visible from outside).
async fn assert_shapes_read(s: &Server) {
    for (name, _) in &SHAPES[..3] {
        wait_metric(
            s,
            &format!(r#"bfo_alive_probes_total{{dueslag="{name}",mode="pull",result="success"}}"#),
            2.0,
        )
        .await;
    }
    let text = wait_metric(
        s,
        r#"bfo_alive_send_failures_total{dueslag="g",reason="invalid_reply"}"#,
        2.0,
    )
    .await;
    let series = |name: &str, reason: &str| {
        value(
            &text,
            &format!(r#"bfo_alive_send_failures_total{{dueslag="{name}",reason="{reason}"}}"#),
        )
    };
    // A failure reason is a series from its first failure on: none here.
    for (name, _) in SHAPES {
        assert_eq!(series(name, "connection"), None, "{name}");
        assert_eq!(series(name, "timeout"), None, "{name}");
    }
    for (name, _) in &SHAPES[..3] {
        assert_eq!(series(name, "invalid_reply"), None, "{name}");
    }
    assert_eq!(
        value(
            &text,
            r#"bfo_alive_probes_total{dueslag="g",mode="pull",result="success"}"#
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn every_reply_shape_on_the_simulator() {
    let (dueslag, shapes) = shaped_dueslag("sim.faults");
    let config = format!(
        "{}{SIM}\n[defaults]\ninterval = \"200ms\"\ntimeout = \"5s\"\n\n{dueslag}\n{shapes}",
        IDENTITY.replacen("[exporter]\n", "[exporter]\nprobe_endpoint = true\n", 1)
    );
    let (s, _f) = start(&config).await;
    assert_shapes_read(&s).await;
    // The probe trace shows the reply's first bytes and what to check.
    let (code, trace) = get(&s, "/probe?dueslag=g&debug=true").await;
    assert_eq!(code, 200);
    assert!(
        trace.contains("[FAIL] publish")
            && trace.contains(": invalid_reply: unreadable Afsend reply: the reply's root")
            && trace.contains(
                "the reply begins: <?xml version=\"1.0\" encoding=\"UTF-8\"?><soap:Envelope"
            )
            && trace.contains(
                "what to check: something answered the message, but not with a StandardRetur"
            ),
        "{trace}"
    );
    let head = trace.split("the reply begins: ").nth(1).unwrap();
    let head = head.lines().next().unwrap();
    assert!(head.len() <= message::REPLY_HEAD_BYTES, "{head}");
    s.stop().await;
}

/// Publishes Alive messages to the afsend exchange as the exporter would, one per
/// dueslag name, and returns the emulator's reply to each, as it came.
async fn emulator_replies(url: &str, names: &[&str]) -> Vec<(String, Vec<u8>)> {
    let bodies: Vec<String> = names.iter().map(|n| alive_to(n, "schema-test")).collect();
    let bodies: Vec<&[u8]> = bodies.iter().map(|b| b.as_bytes()).collect();
    let replies = emulator::afsend_calls(url, &bodies).await;
    names.iter().map(|n| n.to_string()).zip(replies).collect()
}

#[tokio::test]
async fn the_emulator_writes_valid_xml_and_every_reply_shape_is_read_over_amqp() {
    let Some(xsd) = Schemas::get() else { return };
    let Some(b) = broker::Broker::get() else {
        return;
    };
    let url = b.vhost("schema");
    let (tap, tap_url) = Tap::start().await;
    let (dueslag, shapes) = shaped_dueslag("faults");
    let emulated = format!(
        r#"
[emulator]
url = "{url}"
anvendersystem = "{ANVENDER}"
cvr = "{CVR}"
require_token = false

{}
[[dueslag]]
name = "h"
mode = "push"
id = "{h}"
push_url = "{tap_url}/push/h"

{idle}
{shapes}
[faults.h]
business_every = "300ms"
foreign_every = "300ms"

[faults.idle]
business_every = "200ms"
foreign_every = "200ms"
"#,
        dueslag,
        h = dueslag_id("h"),
        idle = pull_dueslag("idle"),
    );
    let emu = emulator::start_emulator(&emulated).await;
    let exporter = format!(
        "{IDENTITY}[broker]\nbackend = \"amqp\"\nurl = \"{url}\"\nauth = \"plain\"\n\n[defaults]\ninterval = \"200ms\"\ntimeout = \"5s\"\nsend_timeout = \"2s\"\n\n{dueslag}{}",
        push_dueslag("h")
    );
    let (s, _f) = start(&exporter).await;
    tap.forward_to(&s);
    assert_shapes_read(&s).await;
    let seen = wait_for_kinds(&tap, &["ours", "foreign", "business"]).await;
    let mut docs = push_documents(&seen, &s).await;
    s.stop().await;

    // What the emulator put into a queue nobody consumes: injected business and foreign
    // Alive messages.
    let queued = queue_bodies_at_least(&url, &dueslag_id("idle"), 2).await;
    docs.extend(
        queued
            .into_iter()
            .map(|b| doc("queued in the idle dueslag", b)),
    );
    // Its Afsend replies, one per shape.
    let names: Vec<&str> = SHAPES.iter().map(|(n, _)| *n).collect();
    let replies = emulator_replies(&url, &names).await;
    emu.cancel();
    let reply = |name: &str| {
        replies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
            .unwrap()
    };
    docs.push(doc("emulator reply standard-retur", reply("s")));
    xsd.assert_valid(ANVENDERSYSTEM_XSD, &docs);
    xsd.assert_valid(
        BESKEDFORDELER_XSD,
        &[doc("emulator reply afsend-besked-output", reply("o"))],
    );
    for name in ["s", "o", "r"] {
        assert_eq!(
            parse_afsend_reply(&reply(name)),
            Ok(StandardRetur::ok()),
            "{name}"
        );
    }
    assert!(parse_afsend_reply(&reply("g")).is_err());
}

/// The bodies in a queue, once it holds at least `n`.
async fn queue_bodies_at_least(url: &str, queue: &str, n: usize) -> Vec<Vec<u8>> {
    wait_for(Duration::from_secs(20), || async {
        let bodies = emulator::queue_bodies(url, queue).await;
        if bodies.len() >= n {
            Ok(bodies)
        } else {
            Err(format!("{} messages in {queue}", bodies.len()))
        }
    })
    .await
}
