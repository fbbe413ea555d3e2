//! Fuzzed input for what faces the network: the XML parsers (`parse_haendelsesbesked`,
//! `parse_modtag_besked_input`, `parse_afsend_reply`, `parse_modtag_besked_output`, which
//! reads a push receiver's StandardRetur) and the push endpoint, through the real server on
//! the simulator, over HTTP.
//!
//! Inputs ([`input`]): valid messages (ours, captured from the simulator's pushes, and
//! built ones) mutated byte- and token-wise, random bytes, deep nesting, huge attributes,
//! entity tricks (internal and external entities, billion laughs, parameter entities,
//! XInclude), wrong and mixed namespaces, and invalid UTF-8 (stray bytes, overlong forms,
//! UTF-16, Latin-1). What must hold ([`check_parsers`], [`Push::check`]):
//!
//! - nothing panics, and nothing hangs (each case is one call);
//! - every refusal has a reason in words (a parser error's text, a push answer's
//!   `FejlbeskedTekst`); a push answer is a ModtagBeskedOutput, StatusKode 20 exactly when
//!   HTTP 200, else HTTP 400, 404 or 413;
//! - what is taken is an Alive message: a push answered 20 holds one, and the only probe
//!   successes are our own messages (this instance, run and dueslag) while in flight.
//!
//! The default case counts keep the normal suite at a few seconds. `fuzz_a_million`
//! (ignored) runs `BFO_FUZZ_CASES` (1,000,000) cases through every parser and the push
//! endpoint and prints the figures of RELIABILITY.md:
//! `cargo test --release --test fuzz_input -- --ignored --nocapture fuzz_a_million`.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use bfo_alive_exporter::message::{self, ParseError, ProbePayload, ReplyShape, StandardRetur};
use bfo_alive_exporter::server::Server;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use uuid::Uuid;

const NS_KUVERT: &str = "urn:oio:besked:kuvert:1.0";
const NS_SAGDOK: &str = "urn:oio:sagdok:3.0.0";
const NS_STS: &str = "urn:oio:sts:1.0.0";
const NS_PROBE: &str = "urn:bfo-alive-exporter:probe:1";
/// The push endpoint's default `[push] max_body`.
const MAX_BODY: usize = 1 << 20;

// ---------------------------------------------------------------- seeds

/// An Alive message as another sender might write it: prefixes of its own, whitespace
/// between elements. `{ID}`, `{INSTANCE}`, `{RUN}` and `{DUESLAG}` are filled in.
const ALIVE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<k:Haendelsesbesked xmlns:k="urn:oio:besked:kuvert:1.0" xmlns:s="urn:oio:sagdok:3.0.0">
  <k:BeskedId><s:UUIDIdentifikator>{ID}</s:UUIDIdentifikator></k:BeskedId>
  <k:BeskedVersion>1.0</k:BeskedVersion>
  <k:Beskedkuvert>
    <k:Filtreringsdata>
      <k:Beskedtype><s:UUIDIdentifikator>f7e84a06-c47e-42e8-a864-fb4095d7f520</s:UUIDIdentifikator></k:Beskedtype>
      <k:BeskedAnsvarligAktoer><s:UUIDIdentifikator>cf12c051-39ce-4066-ba11-704b46fa23c4</s:UUIDIdentifikator></k:BeskedAnsvarligAktoer>
      <k:TilladtModtager><s:URNIdentifikator>urn:oio:cvr-nr:29189846</s:URNIdentifikator></k:TilladtModtager>
    </k:Filtreringsdata>
    <k:Leveranceinformation>
      <k:Dannelsestidspunkt><s:TidsstempelDatoTid>2026-12-01T12:00:00.000Z</s:TidsstempelDatoTid></k:Dannelsestidspunkt>
    </k:Leveranceinformation>
  </k:Beskedkuvert>
  <k:Beskeddata>
    <p:AliveProbe xmlns:p="urn:bfo-alive-exporter:probe:1">
      <p:Instance>{INSTANCE}</p:Instance><p:Run>{RUN}</p:Run><p:Dueslag>{DUESLAG}</p:Dueslag>
      <p:Sequence>7</p:Sequence><p:SentAt>2026-12-01T12:00:00.000Z</p:SentAt>
    </p:AliveProbe>
  </k:Beskeddata>
</k:Haendelsesbesked>"#;

/// An Alive message of `instance`/`run` for dueslag `d` ([`ALIVE`]; not the exporter's
/// builder, so the seeds stay what they are when the builder grows).
fn alive(instance: &str, run: Uuid, d: &str) -> String {
    ALIVE
        .replace("{ID}", &Uuid::new_v4().to_string())
        .replace("{INSTANCE}", instance)
        .replace("{RUN}", &run.to_string())
        .replace("{DUESLAG}", d)
}

/// Valid documents of every kind the parsers read; `ours` are pushes of the running
/// exporter (empty without one).
fn seeds(ours: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let foreign = alive("other", Uuid::new_v4(), "h");
    let mut s: Vec<Vec<u8>> = vec![
        foreign.clone().into_bytes(),
        message::build_modtag_besked_input(&foreign).into_bytes(),
        message::build_business_message(Uuid::new_v4(), Uuid::new_v4()).into_bytes(),
        message::build_modtag_besked_input(&message::build_business_message(
            Uuid::new_v4(),
            Uuid::new_v4(),
        ))
        .into_bytes(),
        message::build_modtag_besked_output(&StandardRetur::ok()).into_bytes(),
        message::build_modtag_besked_output(&StandardRetur::error(40, "nej")).into_bytes(),
    ];
    for shape in [
        ReplyShape::StandardRetur,
        ReplyShape::AfsendBeskedOutput,
        ReplyShape::OtherRoot,
        ReplyShape::Garbage,
    ] {
        s.push(message::build_afsend_reply(&StandardRetur::ok(), shape).into_bytes());
    }
    s.extend(ours.iter().cloned());
    s
}

// ---------------------------------------------------------------- inputs

/// Fragments that XML parsers trip over, spliced into documents.
const TOKENS: &[&str] = &[
    "<",
    ">",
    "&",
    "&amp;",
    "&lt;",
    "&#0;",
    "&#x110000;",
    "&#xD800;",
    "&undefined;",
    "]]>",
    "<![CDATA[x]]>",
    "<!-- -- -->",
    "<?pi x?>",
    "<?xml version=\"1.0\"?>",
    "<!DOCTYPE x [<!ENTITY a \"b\">]>",
    "<!DOCTYPE x SYSTEM \"file:///etc/passwd\">",
    "<!ENTITY % p SYSTEM \"http://127.0.0.1:1/x\">",
    "xmlns=\"\"",
    "xmlns=\"urn:x\"",
    "xmlns:sd=\"urn:oio:sag-dok:3.0.0\"",
    "xmlns:k=\"urn:oio:besked:kuvert:1.0\"",
    "xmlns:xi=\"http://www.w3.org/2001/XInclude\"",
    "<xi:include href=\"/etc/passwd\"/>",
    "f7e84a06-c47e-42e8-a864-fb4095d7f520",
    "00000000-0000-0000-0000-000000000000",
    "<StatusKode>20</StatusKode>",
    "<UUIDIdentifikator>",
    "</Haendelsesbesked>",
    "\u{0}",
    "\u{FEFF}",
    "\u{FFFE}",
    "\u{1F600}",
    "\r\n",
];

/// Byte sequences that are not UTF-8, or not what they claim.
const BAD_BYTES: &[&[u8]] = &[
    b"\xFF",
    b"\xC0\xAF",         // overlong '/'
    b"\xED\xA0\x80",     // a surrogate
    b"\xF4\x90\x80\x80", // above U+10FFFF
    b"\xE2\x82",         // truncated
    b"\xFE\xFF",         // a UTF-16 BOM
    b"\x80",
];

/// One change to a document; positions are fractions of its length.
#[derive(Debug, Clone)]
enum Edit {
    Flip(u32, u8),
    Insert(u32, Vec<u8>),
    Token(u32, usize),
    Bad(u32, usize),
    Delete(u32, u16),
    Repeat(u32, u16, u8),
    Truncate(u32),
    /// Replaces every occurrence of one namespace with another (or with nothing).
    Namespace(usize, usize),
    /// Swaps the prefix-less default namespace declaration for a prefixed one.
    Prefix(u32),
}

fn at(frac: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        (frac as usize) % (len + 1)
    }
}

const NAMESPACES: &[&str] = &[
    NS_KUVERT,
    NS_SAGDOK,
    NS_STS,
    NS_PROBE,
    "urn:oio:sag-dok:3.0.0",
    "urn:oio:besked:kuvert:2.0",
    "URN:OIO:BESKED:KUVERT:1.0",
    "urn:oio:sts:beskedfordeler:1.0.0",
    "",
];

fn apply(doc: &mut Vec<u8>, e: &Edit) {
    match e {
        Edit::Flip(p, x) => {
            if !doc.is_empty() {
                // Within ASCII, so that most flips reach the XML parser; `Bad` makes the
                // invalid UTF-8.
                let i = (*p as usize) % doc.len();
                doc[i] ^= (x & 0x7F) | 1;
            }
        }
        Edit::Insert(p, bytes) => {
            let i = at(*p, doc.len());
            doc.splice(i..i, bytes.iter().copied());
        }
        Edit::Token(p, t) => {
            let i = at(*p, doc.len());
            doc.splice(i..i, TOKENS[t % TOKENS.len()].bytes());
        }
        Edit::Bad(p, b) => {
            let i = at(*p, doc.len());
            doc.splice(i..i, BAD_BYTES[b % BAD_BYTES.len()].iter().copied());
        }
        Edit::Delete(p, n) => {
            let i = at(*p, doc.len());
            let j = (i + *n as usize).min(doc.len());
            doc.drain(i..j);
        }
        Edit::Repeat(p, n, times) => {
            let i = at(*p, doc.len());
            let j = (i + *n as usize).min(doc.len());
            let part = doc[i..j].to_vec();
            for _ in 0..(*times % 8) {
                doc.splice(j..j, part.iter().copied());
            }
        }
        Edit::Truncate(p) => {
            let i = at(*p, doc.len());
            doc.truncate(i);
        }
        Edit::Namespace(from, to) => {
            let from = NAMESPACES[from % NAMESPACES.len()];
            let to = NAMESPACES[to % NAMESPACES.len()];
            if !from.is_empty() {
                let text = String::from_utf8_lossy(doc).replace(from, to);
                *doc = text.into_bytes();
            }
        }
        Edit::Prefix(p) => {
            let text = String::from_utf8_lossy(doc);
            let n = text.matches("xmlns=\"").count();
            if n > 0 {
                let k = (*p as usize) % n;
                let mut out = String::with_capacity(text.len() + 8);
                for (i, part) in text.split("xmlns=\"").enumerate() {
                    if i > 0 {
                        out.push_str(if i - 1 == k { "xmlns:q=\"" } else { "xmlns=\"" });
                    }
                    out.push_str(part);
                }
                *doc = out.into_bytes();
            }
        }
    }
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<u32>(), any::<u8>()).prop_map(|(p, x)| Edit::Flip(p, x)),
        2 => (any::<u32>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(p, b)| Edit::Insert(p, b)),
        4 => (any::<u32>(), any::<usize>()).prop_map(|(p, t)| Edit::Token(p, t)),
        2 => (any::<u32>(), any::<usize>()).prop_map(|(p, b)| Edit::Bad(p, b)),
        2 => (any::<u32>(), any::<u16>()).prop_map(|(p, n)| Edit::Delete(p, n % 256)),
        1 => (any::<u32>(), any::<u16>(), any::<u8>())
            .prop_map(|(p, n, t)| Edit::Repeat(p, n % 512, t)),
        1 => any::<u32>().prop_map(Edit::Truncate),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(f, t)| Edit::Namespace(f, t)),
        1 => any::<u32>().prop_map(Edit::Prefix),
    ]
}

/// Elements nested `depth` deep, in the kuvert namespace, inside a Haendelsesbesked (or a
/// ModtagBeskedInput around it).
fn nested(depth: usize, push: bool, unclosed: bool) -> Vec<u8> {
    let mut s = String::new();
    if push {
        s += &format!("<ModtagBeskedInput xmlns=\"{NS_STS}\">");
    }
    s += &format!("<k:Haendelsesbesked xmlns:k=\"{NS_KUVERT}\">");
    s += &"<k:BeskedId>".repeat(depth);
    if !unclosed {
        s += &"</k:BeskedId>".repeat(depth);
        s += "</k:Haendelsesbesked>";
        if push {
            s += "</ModtagBeskedInput>";
        }
    }
    s.into_bytes()
}

/// An Alive message whose `BeskedVersion` element carries an attribute of `size` bytes.
fn huge_attribute(size: usize, push: bool) -> Vec<u8> {
    let doc = alive("test", Uuid::new_v4(), "h");
    let doc = doc.replacen(
        "<k:BeskedVersion>",
        &format!("<k:BeskedVersion a=\"{}\">", "x".repeat(size)),
        1,
    );
    let doc = if push {
        message::build_modtag_besked_input(&doc)
    } else {
        doc
    };
    doc.into_bytes()
}

/// Entity tricks: `levels` of billion laughs, external entities, parameter entities,
/// XInclude, each around (or inside) an Alive message.
fn entities(kind: u8, levels: u8, push: bool) -> Vec<u8> {
    let doc = alive("test", Uuid::new_v4(), "h");
    let body = doc.trim_start_matches(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let dtd = match kind % 5 {
        0 => {
            let mut d = String::from("<!DOCTYPE Haendelsesbesked [<!ENTITY l0 \"lol\">");
            for i in 1..=levels.max(1) {
                d += &format!("<!ENTITY l{i} \"{}\">", format!("&l{};", i - 1).repeat(10));
            }
            d + "]>"
        }
        1 => "<!DOCTYPE Haendelsesbesked [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>".into(),
        2 => {
            "<!DOCTYPE Haendelsesbesked [<!ENTITY % p SYSTEM \"http://127.0.0.1:1/evil.dtd\"> %p;]>"
                .into()
        }
        3 => "<!DOCTYPE Haendelsesbesked SYSTEM \"http://127.0.0.1:1/x.dtd\">".into(),
        _ => String::new(),
    };
    let reference = match kind % 5 {
        0 => format!("&l{};", levels.max(1)),
        1 => "&x;".into(),
        4 => {
            "<xi:include xmlns:xi=\"http://www.w3.org/2001/XInclude\" href=\"/etc/passwd\"/>".into()
        }
        _ => String::new(),
    };
    let body = body.replacen("<k:Beskeddata>", &format!("<k:Beskeddata>{reference}"), 1);
    let doc = format!("{dtd}{body}");
    let doc = if push && dtd.is_empty() {
        message::build_modtag_besked_input(&doc)
    } else if push {
        // The DTD must come first: it goes around the envelope.
        format!(
            "{dtd}<ModtagBeskedInput xmlns=\"{NS_STS}\">{body}</ModtagBeskedInput>",
            body = doc.trim_start_matches(&dtd)
        )
    } else {
        doc
    };
    doc.into_bytes()
}

/// A document in another encoding: UTF-16 (with its BOM), or Latin-1 declared as such.
fn encoded(utf16: bool, push: bool) -> Vec<u8> {
    let doc = alive("test", Uuid::new_v4(), "h").replace("<p:Instance>test", "<p:Instance>tæst");
    let doc = if push {
        message::build_modtag_besked_input(&doc)
    } else {
        doc
    };
    if utf16 {
        let mut out = vec![0xFF, 0xFE];
        for u in doc.encode_utf16() {
            out.extend_from_slice(&u.to_le_bytes());
        }
        out
    } else {
        doc.replace("encoding=\"UTF-8\"", "encoding=\"ISO-8859-1\"")
            .chars()
            .map(|c| if (c as u32) < 256 { c as u8 } else { b'?' })
            .collect()
    }
}

/// Every kind of input; `seeds` are valid documents to mutate.
fn input(seeds: Arc<Vec<Vec<u8>>>, huge: bool) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    let mutated = (0..n, prop::collection::vec(edit(), 0..6)).prop_map(move |(i, edits)| {
        let mut doc = seeds[i].clone();
        for e in &edits {
            apply(&mut doc, e);
        }
        doc
    });
    let max_huge = if huge { 5 << 20 } else { 64 << 10 };
    prop_oneof![
        60 => mutated,
        15 => prop::collection::vec(any::<u8>(), 0..2048),
        5 => (1usize..3000, any::<bool>(), any::<bool>()).prop_map(|(d, p, u)| nested(d, p, u)),
        1 => (1usize..max_huge, any::<bool>()).prop_map(|(s, p)| huge_attribute(s, p)),
        8 => (any::<u8>(), 1u8..12, any::<bool>()).prop_map(|(k, l, p)| entities(k, l, p)),
        3 => (any::<bool>(), any::<bool>()).prop_map(|(u, p)| encoded(u, p)),
    ]
}

// ---------------------------------------------------------------- what must hold

/// What happened to the inputs, for the report: for each parser, and the push endpoint
/// ([`PUSH`]: by HTTP status and reason), how many ended how (`ok`, `ok_alive`, or the
/// reason of the refusal).
#[derive(Default, Debug)]
struct Tally {
    cases: u64,
    bytes: u64,
    by: BTreeMap<&'static str, BTreeMap<String, u64>>,
}

const PUSH: &str = "POST /push/{dueslag}";

impl Tally {
    fn of(&mut self, what: &'static str) -> &mut BTreeMap<String, u64> {
        self.by.entry(what).or_default()
    }

    fn has(&self, what: &str, key: &str) -> bool {
        self.by
            .get(what)
            .is_some_and(|m| m.keys().any(|k| k.starts_with(key)))
    }
}

fn bump(m: &mut BTreeMap<String, u64>, k: impl Into<String>) {
    *m.entry(k.into()).or_default() += 1;
}

fn reason(e: &ParseError) -> String {
    match e {
        ParseError::TooLarge(_) => "too_large".into(),
        ParseError::NotUtf8 => "not_utf8".into(),
        ParseError::Xml(_) => "malformed_xml".into(),
        ParseError::TooDeep => "too_deep".into(),
        ParseError::WrongRoot { .. } => "wrong_root".into(),
        ParseError::Missing(what) => format!("missing {what}"),
    }
}

/// The reason words of a refusal text (a push answer, an Afsend reply's `why`).
fn reason_of_text(why: &str) -> &'static str {
    [
        ("over the limit", "too_large"),
        ("limit", "body_too_large"),
        ("not UTF-8", "not_utf8"),
        ("malformed XML", "malformed_xml"),
        ("nest deeper", "too_deep"),
        ("root element", "wrong_root"),
        ("holds neither", "wrong_root"),
        ("missing or invalid", "missing"),
        ("not an Alive message", "not_alive"),
        ("no push dueslag", "no_such_dueslag"),
    ]
    .iter()
    .find(|(needle, _)| why.contains(needle))
    .map_or("other", |(_, r)| r)
}

/// Every parser on `bytes`: no panic, a reason for every refusal, and only what the
/// document holds for every success.
fn check_parsers(bytes: &[u8], t: &mut Tally) -> Result<(), TestCaseError> {
    let text = std::str::from_utf8(bytes).ok();
    let well_formed_only = |what: &str| -> Result<(), TestCaseError> {
        let text = text.ok_or_else(|| TestCaseError::fail(format!("{what}: Ok for non-UTF-8")))?;
        // No DTD, so no entity was expanded: a parser that refuses DTDs reads it too (the
        // text "<!DOCTYPE" alone proves nothing: it may sit in a comment or a PI).
        prop_assert!(
            roxmltree::Document::parse(text).is_ok(),
            "{what}: Ok for what a parser without DTDs refuses"
        );
        prop_assert!(
            bytes.len() <= message::MAX_XML_BYTES,
            "{what}: Ok above the limit"
        );
        Ok(())
    };
    for (name, parsed) in [
        (
            "parse_haendelsesbesked",
            message::parse_haendelsesbesked(bytes),
        ),
        (
            "parse_modtag_besked_input",
            message::parse_modtag_besked_input(bytes),
        ),
    ] {
        let tally = t.of(name);
        match parsed {
            Ok(m) => {
                well_formed_only(name)?;
                prop_assert!(text.unwrap().contains("Haendelsesbesked"), "{name}");
                bump(tally, if m.is_alive() { "ok_alive" } else { "ok" });
            }
            Err(e) => {
                prop_assert!(!e.to_string().is_empty(), "{name}: a refusal without words");
                bump(tally, reason(&e));
            }
        }
    }
    let reply = message::parse_afsend_reply(bytes);
    if let Err(e) = &reply {
        prop_assert!(e.head.len() <= message::REPLY_HEAD_BYTES);
        prop_assert!(
            !e.head.contains("Assertion"),
            "a token-like head is withheld"
        );
    }
    // The StandardRetur readers: the reason of a refusal, as words and as a tally key.
    for (name, read) in [
        (
            "parse_afsend_reply",
            reply
                .map(drop)
                .map_err(|e| (e.why.clone(), reason_of_text(&e.why).to_string())),
        ),
        (
            "parse_modtag_besked_output",
            message::parse_modtag_besked_output(bytes)
                .map(drop)
                .map_err(|e| (e.to_string(), reason(&e))),
        ),
    ] {
        let tally = t.of(name);
        match read {
            Ok(()) => {
                well_formed_only(name)?;
                prop_assert!(text.unwrap().contains("StatusKode"), "{name}");
                bump(tally, "ok");
            }
            Err((why, key)) => {
                prop_assert!(!why.is_empty(), "{name}: a refusal without words");
                bump(tally, key);
            }
        }
    }
    t.cases += 1;
    t.bytes += bytes.len() as u64;
    Ok(())
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

fn cases_from_env(default: u32) -> u32 {
    std::env::var("BFO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn parsers_never_panic_and_explain_every_refusal() {
    let seeds = Arc::new(seeds(&[alive("test", Uuid::new_v4(), "h").into_bytes()]));
    let tally = Mutex::new(Tally::default());
    TestRunner::new(config(cases_from_env(2000)))
        .run(&input(seeds, true), |bytes| {
            check_parsers(&bytes, &mut tally.lock().unwrap())
        })
        .unwrap();
    let t = tally.into_inner().unwrap();
    // The generators reach both sides of every parser.
    assert!(t.has("parse_haendelsesbesked", "ok_alive"), "{t:?}");
    assert!(t.has("parse_haendelsesbesked", "malformed_xml"), "{t:?}");
    assert!(t.has("parse_afsend_reply", "ok"), "{t:?}");
}

// ---------------------------------------------------------------- the push endpoint

/// The exporter's configuration: the simulator, one push dueslag `h` whose own pushes go
/// to `recorder`. `h` carries an `id` (its UUID, required of a push dueslag where dueslag
/// are addressed by RelateretObjekt) when the configuration knows the key.
fn push_config(recorder: &str) -> String {
    let text = |id: &str| {
        format!(
            "{IDENTITY}{SIM}\n[defaults]\ninterval = \"100ms\"\ntimeout = \"1h\"\n\n\
             [[dueslag]]\nname = \"h\"\nmode = \"push\"\n{id}\n[sim]\npush_base = \"{recorder}\"\n"
        )
    };
    let with_id = text("id = \"00000000-0000-4000-8000-00000000000a\"\n");
    if bfo_alive_exporter::config::Config::parse(&with_id, "fuzz.toml").is_ok() {
        with_id
    } else {
        text("")
    }
}

/// The exporter on the simulator with one push dueslag `h`, whose own pushes go to a
/// recorder (so its probes stay in flight and the recorded ones are "ours" to replay).
struct Push {
    rt: tokio::runtime::Runtime,
    server: Option<Server>,
    _file: ConfigFile,
    client: reqwest::Client,
    base: String,
    ours: Vec<Vec<u8>>,
}

async fn record(State(seen): State<Arc<Mutex<Vec<Vec<u8>>>>>, body: Bytes) -> impl IntoResponse {
    seen.lock().unwrap().push(body.to_vec());
    (
        [(axum::http::header::CONTENT_TYPE, "application/xml")],
        message::build_modtag_besked_output(&StandardRetur::ok()),
    )
}

impl Push {
    fn start() -> Push {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (server, file, ours) = rt.block_on(async {
            let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
            let recorder = serve(
                axum::Router::new()
                    .fallback(record)
                    .with_state(seen.clone()),
            )
            .await;
            let (server, file) = start(&push_config(&recorder)).await;
            let ours = wait_for(Duration::from_secs(20), || async {
                let seen = seen.lock().unwrap().clone();
                if seen.len() >= 8 {
                    Ok(seen)
                } else {
                    Err(format!("{} pushes recorded", seen.len()))
                }
            })
            .await;
            (server, file, ours)
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let base = format!("http://{}", server.push_addr);
        Push {
            rt,
            server: Some(server),
            _file: file,
            client,
            base,
            ours,
        }
    }

    /// The instance and run of the exporter's own messages.
    fn ours_payload(&self) -> ProbePayload {
        message::parse_modtag_besked_input(&self.ours[0])
            .unwrap()
            .probe
            .unwrap()
    }

    /// POSTs `bytes` to `/push/{name}`; checks the answer.
    fn check(&self, name: &str, bytes: &[u8], t: &mut Tally) -> Result<(), TestCaseError> {
        let post = || async {
            let r = self
                .client
                .post(format!("{}/push/{name}", self.base))
                .header("content-type", "application/xml")
                .body(bytes.to_vec())
                .send()
                .await?;
            let status = r.status().as_u16();
            Ok::<_, reqwest::Error>((status, r.bytes().await?))
        };
        // Above max_body the server answers 413 after reading that much and closes the
        // connection on the rest, which a client still sending may see before the answer:
        // once more on a new connection, and a close counts as the refusal. Any other
        // input must be answered at the first try (a handler that panics is not).
        let over = bytes.len() > MAX_BODY;
        let answered = self.rt.block_on(async {
            match post().await {
                Err(_) if over => {
                    bump(t.of(PUSH), "413: sent again, over max_body");
                    post().await
                }
                other => other,
            }
        });
        let (status, answer) = match answered {
            Ok(a) => a,
            Err(_) if over => {
                bump(t.of(PUSH), "413 or closed: over max_body");
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(format!("no answer (a panic?): {e}"))),
        };
        let retur = message::parse_modtag_besked_output(&answer).map_err(|e| {
            TestCaseError::fail(format!("answer {status} is no ModtagBeskedOutput: {e}"))
        })?;
        if status == 200 {
            prop_assert_eq!(retur.status_kode, 20);
            let m = message::parse_modtag_besked_input(bytes)
                .map_err(|e| TestCaseError::fail(format!("20 for an unreadable body: {e}")))?;
            prop_assert!(m.is_alive(), "20 for a message that is not Alive");
            let p = self.ours_payload();
            let ours = m
                .probe
                .as_ref()
                .is_some_and(|q| q.instance == p.instance && q.run == p.run && q.dueslag == name);
            bump(
                t.of(PUSH),
                if ours {
                    "200 ours"
                } else {
                    "200 foreign alive"
                },
            );
        } else {
            prop_assert!(
                [400, 404, 413].contains(&status),
                "HTTP {status} for a refusal"
            );
            prop_assert_ne!(retur.status_kode, 20);
            let why = retur.fejlbesked_tekst.unwrap_or_default();
            prop_assert!(!why.is_empty(), "a refusal without FejlbeskedTekst");
            bump(t.of(PUSH), format!("{status} {}", reason_of_text(&why)));
        }
        Ok(())
    }

    /// Probe successes so far: only our own messages may have made any.
    fn successes(&self) -> f64 {
        let s = self.server.as_ref().unwrap();
        self.rt.block_on(async {
            value(
                &scrape(s).await,
                r#"bfo_alive_probes_total{dueslag="h",mode="push",result="success"}"#,
            )
            .unwrap_or(0.0)
        })
    }
}

impl Drop for Push {
    /// Not a graceful stop, which would wait the hour for the probes in flight: the
    /// runtime ends with every task of the server.
    fn drop(&mut self) {
        drop(self.server.take());
    }
}

/// Fuzzes the push endpoint (and the parsers) with `cases` inputs; the tally.
fn fuzz_push(cases: u32, huge: bool) -> (Tally, f64, usize, Duration) {
    let push = Push::start();
    let seeds = Arc::new(seeds(&push.ours));
    let tally = Mutex::new(Tally::default());
    let started = Instant::now();
    // Most inputs go to the push dueslag; some to a name that is none.
    let names = prop_oneof![9 => Just("h"), 1 => Just("no-such-dueslag")];
    TestRunner::new(config(cases))
        .run(&(names, input(seeds, huge)), |(name, bytes)| {
            let mut t = tally.lock().unwrap();
            check_parsers(&bytes, &mut t)?;
            push.check(name, &bytes, &mut t)
        })
        .unwrap();
    let took = started.elapsed();
    let mut t = tally.into_inner().unwrap();
    let successes = push.successes();
    // Only our own messages, replayed while in flight, can have made a success.
    let ours = t.of(PUSH).get("200 ours").copied().unwrap_or(0) as f64;
    assert!(
        successes <= ours,
        "{successes} probe successes, from {ours} of our messages"
    );
    (t, successes, push.ours.len(), took)
}

#[test]
fn the_push_endpoint_answers_every_input_with_a_reason() {
    let (t, _, _, _) = fuzz_push(cases_from_env(300), false);
    assert!(t.has(PUSH, "200"), "{t:?}");
    assert!(t.has(PUSH, "400"), "{t:?}");
}

/// The long run: `BFO_FUZZ_CASES` (1,000,000) inputs through every parser and the push
/// endpoint, in release mode; prints the figures.
#[test]
#[ignore = "long: run in release mode, see the module doc"]
fn fuzz_a_million() {
    let cases = cases_from_env(1_000_000);
    let (t, successes, ours, took) = fuzz_push(cases, true);
    eprintln!(
        "\n==== fuzz: {} cases in {:.1} s ====",
        t.cases,
        took.as_secs_f64()
    );
    eprintln!(
        "bytes {} (mean {}); panics 0; probe successes {successes} (from {ours} recorded own messages replayed among the inputs)",
        t.bytes,
        t.bytes / t.cases.max(1)
    );
    for (name, m) in &t.by {
        eprintln!("{name}: {m:?}");
    }
    eprintln!("==========================\n");
}
