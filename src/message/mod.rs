//! The XML the Beskedfordeler carries: the Alive Haendelsesbesked with this exporter's
//! probe payload, StandardRetur (bare, or wrapped as AfsendBeskedOutput), and the push
//! envelopes ModtagBeskedInput/Output.
//!
//! Everything built here is valid against KOMBIT's BFO 5.10 schemas (`tests/schema.rs`
//! checks it with `xmllint`), except the deliberately odd Afsend replies of [`ReplyShape`].
//!
//! Parsing is namespace-aware (roxmltree): prefixes vary between senders and default
//! namespaces occur, so elements are matched on (namespace, local name), never on prefix.
//! A DTD is refused (no entity tricks), and input is bounded in size and depth. The Afsend
//! reply is read tolerantly ([`parse_afsend_reply`], ARCHITECTURE.md §2).

use std::time::SystemTime;

use roxmltree::{Document, Node, ParsingOptions};
use thiserror::Error;
use uuid::Uuid;

use crate::protocol::{
    ALIVE_BESKEDTYPE, BESKED_VERSION, CVR_URN_PREFIX, NS_KUVERT, NS_PROBE, NS_SAGDOK,
    NS_SAGDOK_VARIANT, NS_STS, NS_STS_BESKEDFORDELER,
};

/// Largest XML document this module parses.
pub const MAX_XML_BYTES: usize = 4 * 1024 * 1024;
/// Deepest element nesting this module accepts.
pub const MAX_XML_DEPTH: usize = 64;
/// Most nodes one document may have.
const MAX_XML_NODES: u32 = 100_000;

/// Why a document could not be read.
#[derive(Debug, Error, PartialEq)]
pub enum ParseError {
    #[error("document is {0} bytes, over the limit of {MAX_XML_BYTES}")]
    TooLarge(usize),
    #[error("document is not UTF-8")]
    NotUtf8,
    #[error("malformed XML: {0}")]
    Xml(String),
    #[error("elements nest deeper than {MAX_XML_DEPTH}")]
    TooDeep,
    #[error("root element is {{{ns}}}{name}, expected {{{want_ns}}}{want}")]
    WrongRoot {
        ns: String,
        name: String,
        want_ns: &'static str,
        want: &'static str,
    },
    #[error("missing or invalid {0}")]
    Missing(&'static str),
}

/// The probe payload this exporter writes into Beskeddata.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbePayload {
    /// The exporter instance that sent the message.
    pub instance: String,
    /// Changes at every start of the exporter.
    pub run: Uuid,
    /// Configured dueslag name.
    pub dueslag: String,
    /// Per-dueslag sequence number, from 1.
    pub sequence: u64,
    /// Wall-clock send time.
    pub sent_at: SystemTime,
}

/// A `sd:UnikIdType`: a `UUIDIdentifikator` or a `URNIdentifikator` (KOMBIT's schemas allow
/// either wherever an id goes: Beskedtype, TilladtModtager, ObjektId, ObjektType, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UnikId {
    Uuid(Uuid),
    /// A URN, as written (URNs are compared as written, like the Beskedfordeler's filters).
    Urn(String),
}

impl UnikId {
    /// The element name this id is written in.
    pub fn element(&self) -> &'static str {
        match self {
            UnikId::Uuid(_) => "UUIDIdentifikator",
            UnikId::Urn(_) => "URNIdentifikator",
        }
    }

    /// The UUID, when it is one.
    pub fn uuid(&self) -> Option<Uuid> {
        match self {
            UnikId::Uuid(u) => Some(*u),
            UnikId::Urn(_) => None,
        }
    }

    /// `<sd:UUIDIdentifikator>…</sd:UUIDIdentifikator>` or the URN form, with the sagdok
    /// prefix `sd` (e.g. `"sd:"`).
    fn to_xml(&self, sd: &str) -> String {
        format!(
            "<{sd}{e}>{}</{sd}{e}>",
            escape(&self.to_string()),
            e = self.element()
        )
    }
}

impl std::fmt::Display for UnikId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnikId::Uuid(u) => write!(f, "{u}"),
            UnikId::Urn(u) => f.write_str(u),
        }
    }
}

/// Why a text is no [`UnikId`].
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{0:?} is neither a UUID nor a URN (urn:…)")]
pub struct NotUnikId(pub String);

impl std::str::FromStr for UnikId {
    type Err = NotUnikId;

    /// A UUID, else a URN: `urn:` (any case) followed by at least a namespace and a name,
    /// without white space.
    fn from_str(s: &str) -> Result<Self, NotUnikId> {
        if let Ok(u) = s.parse::<Uuid>() {
            return Ok(UnikId::Uuid(u));
        }
        let urn = s.len() > 4
            && s[..4].eq_ignore_ascii_case("urn:")
            && s[4..].contains(':')
            && !s.starts_with("urn::")
            && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if urn {
            Ok(UnikId::Urn(s.to_string()))
        } else {
            Err(NotUnikId(s.to_string()))
        }
    }
}

/// A `RelateretObjekt` of Filtreringsdata: an object the message is about, which an
/// abonnement can filter on. The exporter writes one per Alive message: `ObjektId` = the
/// target dueslag's UUID, `ObjektType` = `[exporter] objekt_type` (ARCHITECTURE.md §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelateretObjekt {
    pub objekt_id: UnikId,
    pub objekt_type: UnikId,
    pub objekt_rolle: Option<UnikId>,
}

impl RelateretObjekt {
    /// The RelateretObjekt that addresses an Alive message to dueslag `id`.
    pub fn dueslag(id: Uuid, objekt_type: &UnikId) -> Self {
        RelateretObjekt {
            objekt_id: UnikId::Uuid(id),
            objekt_type: objekt_type.clone(),
            objekt_rolle: None,
        }
    }

    /// The element, with the kuvert prefix `k` and the sagdok prefix `sd` (`""`, `"k:"`, …).
    fn to_xml(&self, k: &str, sd: &str) -> String {
        let rolle = self
            .objekt_rolle
            .as_ref()
            .map(|r| format!("<{k}ObjektRolle>{}</{k}ObjektRolle>", r.to_xml(sd)))
            .unwrap_or_default();
        format!(
            "<{k}RelateretObjekt><{k}ObjektId>{}</{k}ObjektId><{k}ObjektType>{}</{k}ObjektType>{rolle}</{k}RelateretObjekt>",
            self.objekt_id.to_xml(sd),
            self.objekt_type.to_xml(sd)
        )
    }
}

/// What the exporter needs to build an Alive message.
#[derive(Debug, Clone)]
pub struct AliveSpec<'a> {
    pub besked_id: Uuid,
    pub anvendersystem: Uuid,
    pub cvr: &'a str,
    /// The target dueslag ([`RelateretObjekt::dueslag`]), on which its abonnement filters.
    pub relateret_objekt: &'a RelateretObjekt,
    pub payload: &'a ProbePayload,
}

/// The fields of a Haendelsesbesked that matter here.
#[derive(Debug, Clone, PartialEq)]
pub struct Haendelsesbesked {
    pub besked_id: Uuid,
    pub beskedtype: Option<Uuid>,
    pub ansvarlig_aktoer: Option<Uuid>,
    /// Every TilladtModtager (authorities, as `urn:oio:cvr-nr:…`), in document order.
    pub tilladt_modtager: Vec<UnikId>,
    /// Every readable RelateretObjekt, in document order.
    pub relateret_objekt: Vec<RelateretObjekt>,
    pub dannelsestidspunkt: Option<String>,
    /// Present when Beskeddata holds a well-formed probe payload of this exporter.
    pub probe: Option<ProbePayload>,
}

impl Haendelsesbesked {
    /// The dueslag this message is addressed to: the UUID `ObjektId` of its first
    /// RelateretObjekt of type `objekt_type` (ARCHITECTURE.md §2, routing by abonnement).
    pub fn addressed_to(&self, objekt_type: &UnikId) -> Option<Uuid> {
        self.relateret_objekt
            .iter()
            .find(|r| &r.objekt_type == objekt_type)
            .and_then(|r| r.objekt_id.uuid())
    }

    /// True when the beskedtype is the Alive type.
    pub fn is_alive(&self) -> bool {
        self.beskedtype.map(|t| t.to_string()) == Some(ALIVE_BESKEDTYPE.to_string())
    }
}

/// A StandardRetur: the Beskedfordeler's (or a push receiver's) answer.
#[derive(Debug, Clone, PartialEq)]
pub struct StandardRetur {
    pub status_kode: i32,
    pub fejlbesked_tekst: Option<String>,
}

impl StandardRetur {
    /// Status 20 with no text.
    pub fn ok() -> Self {
        StandardRetur {
            status_kode: crate::protocol::status::OK,
            fejlbesked_tekst: None,
        }
    }

    /// A non-20 answer with an explanation.
    pub fn error(code: i32, text: impl Into<String>) -> Self {
        StandardRetur {
            status_kode: code,
            fejlbesked_tekst: Some(text.into()),
        }
    }
}

/// Escapes text for XML element content and attribute values. A character that XML 1.0
/// cannot carry at all, escaped or not (control characters other than tab, line feed and
/// carriage return; U+FFFE, U+FFFF), becomes U+FFFD: a refusal's text may quote what a
/// sender got wrong, and the answer must stay readable XML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// RFC 3339 time with milliseconds, UTC.
pub fn format_time(t: SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).unwrap_or_default()
}

fn parse_time(text: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// The Haendelsesbesked element without an XML declaration, so it can be embedded.
/// ObjektRegistreringId is a UUID of its own, new for every message: it names the
/// registration the message reports, which for an Alive message is the message itself,
/// but it is not the BeskedId.
fn alive_element(spec: &AliveSpec<'_>) -> String {
    let p = spec.payload;
    let cvr_urn = format!("{CVR_URN_PREFIX}{}", escape(spec.cvr));
    format!(
        concat!(
            r#"<Haendelsesbesked xmlns="{kuvert}" xmlns:sd="{sagdok}">"#,
            r#"<BeskedId><sd:UUIDIdentifikator>{id}</sd:UUIDIdentifikator></BeskedId>"#,
            r#"<BeskedVersion>{version}</BeskedVersion>"#,
            r#"<Beskedkuvert><Filtreringsdata>"#,
            r#"<Beskedtype><sd:UUIDIdentifikator>{alive}</sd:UUIDIdentifikator></Beskedtype>"#,
            r#"<BeskedAnsvarligAktoer><sd:UUIDIdentifikator>{aktoer}</sd:UUIDIdentifikator></BeskedAnsvarligAktoer>"#,
            r#"<TilladtModtager><sd:URNIdentifikator>{cvr}</sd:URNIdentifikator></TilladtModtager>"#,
            r#"{relateret}"#,
            r#"<ObjektRegistrering>"#,
            r#"<ObjektRegistreringId><sd:UUIDIdentifikator>{registrering}</sd:UUIDIdentifikator></ObjektRegistreringId>"#,
            r#"<ObjektAnsvarligMyndighed><sd:URNIdentifikator>{cvr}</sd:URNIdentifikator></ObjektAnsvarligMyndighed>"#,
            r#"</ObjektRegistrering>"#,
            r#"</Filtreringsdata>"#,
            r#"<Leveranceinformation><Dannelsestidspunkt><sd:TidsstempelDatoTid>{made}</sd:TidsstempelDatoTid></Dannelsestidspunkt></Leveranceinformation>"#,
            r#"</Beskedkuvert>"#,
            r#"<Beskeddata><AliveProbe xmlns="{probe}">"#,
            r#"<Instance>{instance}</Instance><Run>{run}</Run><Dueslag>{dueslag}</Dueslag>"#,
            r#"<Sequence>{seq}</Sequence><SentAt>{sent}</SentAt>"#,
            r#"</AliveProbe></Beskeddata>"#,
            r#"</Haendelsesbesked>"#
        ),
        kuvert = NS_KUVERT,
        sagdok = NS_SAGDOK,
        probe = NS_PROBE,
        id = spec.besked_id,
        registrering = Uuid::new_v4(),
        version = BESKED_VERSION,
        alive = ALIVE_BESKEDTYPE,
        aktoer = spec.anvendersystem,
        cvr = cvr_urn,
        relateret = spec.relateret_objekt.to_xml("", "sd:"),
        made = format_time(p.sent_at),
        instance = escape(&p.instance),
        run = p.run,
        dueslag = escape(&p.dueslag),
        seq = p.sequence,
        sent = format_time(p.sent_at),
    )
}

const XML_DECL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// An Alive Haendelsesbesked as a UTF-8 XML document.
pub fn build_alive(spec: &AliveSpec<'_>) -> String {
    format!("{XML_DECL}{}", alive_element(spec))
}

/// Wraps a Haendelsesbesked document into a ModtagBeskedInput (what BFO POSTs on push).
pub fn build_modtag_besked_input(haendelsesbesked_xml: &str) -> String {
    let inner = haendelsesbesked_xml
        .trim_start()
        .strip_prefix("<?xml")
        .and_then(|rest| rest.split_once("?>").map(|(_, body)| body))
        .unwrap_or(haendelsesbesked_xml);
    format!(r#"{XML_DECL}<ModtagBeskedInput xmlns="{NS_STS}">{inner}</ModtagBeskedInput>"#)
}

/// StatusKode and FejlbeskedTekst, each element name prefixed with `prefix`.
fn standard_retur_fields(r: &StandardRetur, prefix: &str) -> String {
    let text = r
        .fejlbesked_tekst
        .as_deref()
        .map(|t| {
            format!(
                "<{prefix}FejlbeskedTekst>{}</{prefix}FejlbeskedTekst>",
                escape(t)
            )
        })
        .unwrap_or_default();
    format!(
        "<{prefix}StatusKode>{}</{prefix}StatusKode>{text}",
        r.status_kode
    )
}

fn standard_retur_element(r: &StandardRetur) -> String {
    format!(
        r#"<StandardRetur xmlns="{NS_SAGDOK}">{}</StandardRetur>"#,
        standard_retur_fields(r, "")
    )
}

/// A BasicOutput (`sd:BasicOutputType`): an element `root` in `ns` whose one child is the
/// StandardRetur.
fn basic_output(root: &str, ns: &str, r: &StandardRetur) -> String {
    format!(
        r#"{XML_DECL}<{root} xmlns="{ns}">{}</{root}>"#,
        standard_retur_element(r)
    )
}

/// A StandardRetur document (the Afsend reply as KOMBIT's samples read it).
pub fn build_standard_retur(r: &StandardRetur) -> String {
    format!("{XML_DECL}{}", standard_retur_element(r))
}

/// A ModtagBeskedOutput document (the push receiver's answer).
pub fn build_modtag_besked_output(r: &StandardRetur) -> String {
    basic_output("ModtagBeskedOutput", NS_STS, r)
}

/// How a simulated Beskedfordeler writes its Afsend reply (`reply_shape` in the simulator's
/// and the emulator's faults). The exporter reads the first three (§2); `garbage` is none of
/// them and counts as `invalid_reply`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplyShape {
    /// A bare `sd:StandardRetur`, the root KOMBIT's samples unmarshal.
    #[default]
    StandardRetur,
    /// `AfsendBeskedOutput` wrapping the StandardRetur, as KOMBIT's schemas define the answer.
    AfsendBeskedOutput,
    /// `sd:StatusKode` and `sd:FejlbeskedTekst` straight under a root of another name, which
    /// KOMBIT's sample reads too (it never checks the root's name).
    OtherRoot,
    /// A SOAP Fault: none of the above.
    Garbage,
}

/// The reply of [`ReplyShape::Garbage`].
const GARBAGE_REPLY: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?>"#,
    r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>"#,
    r#"<soap:Fault><faultcode>soap:Server</faultcode><faultstring>simulated: not a StandardRetur</faultstring></soap:Fault>"#,
    r#"</soap:Body></soap:Envelope>"#
);

/// An Afsend reply in the given shape.
pub fn build_afsend_reply(r: &StandardRetur, shape: ReplyShape) -> String {
    match shape {
        ReplyShape::StandardRetur => build_standard_retur(r),
        ReplyShape::AfsendBeskedOutput => {
            basic_output("AfsendBeskedOutput", NS_STS_BESKEDFORDELER, r)
        }
        ReplyShape::OtherRoot => format!(
            r#"{XML_DECL}<bf:AfsendBeskedRetur xmlns:bf="{NS_STS_BESKEDFORDELER}" xmlns:sd="{NS_SAGDOK}">{}</bf:AfsendBeskedRetur>"#,
            standard_retur_fields(r, "sd:")
        ),
        ReplyShape::Garbage => GARBAGE_REPLY.to_string(),
    }
}

/// Parses bytes into a document, refusing DTDs and oversized or too deep input.
fn parse_document(bytes: &[u8]) -> Result<Document<'_>, ParseError> {
    if bytes.len() > MAX_XML_BYTES {
        return Err(ParseError::TooLarge(bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| ParseError::NotUtf8)?;
    check_depth(text)?;
    let opts = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_XML_NODES,
        ..ParsingOptions::default()
    };
    Document::parse_with_options(text, opts).map_err(|e| ParseError::Xml(e.to_string()))
}

/// A cheap pre-scan bounding element depth before the tree is built.
fn check_depth(text: &str) -> Result<(), ParseError> {
    let bytes = text.as_bytes();
    let mut depth: usize = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'<' {
            let next = bytes.get(i + 1).copied().unwrap_or(b' ');
            let close = text[i..].find('>').map(|p| i + p);
            let self_closing = close.is_some_and(|c| c > i && bytes[c - 1] == b'/');
            match next {
                b'/' => depth = depth.saturating_sub(1),
                b'?' | b'!' => {}
                _ if !self_closing => {
                    depth += 1;
                    if depth > MAX_XML_DEPTH {
                        return Err(ParseError::TooDeep);
                    }
                }
                _ => {}
            }
            i = close.map_or(bytes.len(), |c| c + 1);
        } else {
            i += 1;
        }
    }
    Ok(())
}

fn is(node: &Node<'_, '_>, ns: &str, name: &str) -> bool {
    node.is_element() && node.tag_name().name() == name && node.tag_name().namespace() == Some(ns)
}

fn child<'a, 'input>(node: Node<'a, 'input>, ns: &str, name: &str) -> Option<Node<'a, 'input>> {
    node.children().find(|c| is(c, ns, name))
}

fn sagdok_child<'a, 'input>(node: Node<'a, 'input>, name: &str) -> Option<Node<'a, 'input>> {
    child(node, NS_SAGDOK, name).or_else(|| child(node, NS_SAGDOK_VARIANT, name))
}

fn text_of(node: Node<'_, '_>) -> Option<String> {
    let t = node.text()?.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Follows a path of kuvert-namespace elements, then reads a sagdok leaf.
fn kuvert_leaf(root: Node<'_, '_>, path: &[&str], leaf: &str) -> Option<String> {
    let mut node = root;
    for step in path {
        node = child(node, NS_KUVERT, step)?;
    }
    sagdok_child(node, leaf).and_then(text_of)
}

fn expect_root(node: Node<'_, '_>, ns: &'static str, name: &'static str) -> Result<(), ParseError> {
    if is(&node, ns, name) {
        Ok(())
    } else {
        Err(ParseError::WrongRoot {
            ns: node.tag_name().namespace().unwrap_or("").to_string(),
            name: node.tag_name().name().to_string(),
            want_ns: ns,
            want: name,
        })
    }
}

fn read_probe(beskeddata: Node<'_, '_>) -> Option<ProbePayload> {
    let probe = child(beskeddata, NS_PROBE, "AliveProbe")?;
    let field = |name| child(probe, NS_PROBE, name).and_then(text_of);
    Some(ProbePayload {
        instance: field("Instance")?,
        run: field("Run")?.parse().ok()?,
        dueslag: field("Dueslag")?,
        sequence: field("Sequence")?.parse().ok()?,
        sent_at: parse_time(&field("SentAt")?)?,
    })
}

/// A `sd:UnikIdType` element's id: its UUIDIdentifikator (which must hold a UUID) or its
/// URNIdentifikator.
fn read_unik_id(node: Node<'_, '_>) -> Option<UnikId> {
    if let Some(uuid) = sagdok_child(node, "UUIDIdentifikator") {
        return text_of(uuid)?.parse().ok().map(UnikId::Uuid);
    }
    sagdok_child(node, "URNIdentifikator")
        .and_then(text_of)
        .map(UnikId::Urn)
}

/// A RelateretObjekt with a readable ObjektId and ObjektType; `None` otherwise.
fn read_relateret_objekt(node: Node<'_, '_>) -> Option<RelateretObjekt> {
    let id = |name| child(node, NS_KUVERT, name).and_then(read_unik_id);
    Some(RelateretObjekt {
        objekt_id: id("ObjektId")?,
        objekt_type: id("ObjektType")?,
        objekt_rolle: id("ObjektRolle"),
    })
}

fn read_haendelsesbesked(root: Node<'_, '_>) -> Result<Haendelsesbesked, ParseError> {
    expect_root(root, NS_KUVERT, "Haendelsesbesked")?;
    let besked_id = kuvert_leaf(root, &["BeskedId"], "UUIDIdentifikator")
        .and_then(|t| t.parse().ok())
        .ok_or(ParseError::Missing("BeskedId/UUIDIdentifikator"))?;
    let filtrering = ["Beskedkuvert", "Filtreringsdata"];
    let leaf_under = |last: &str, leaf: &str| {
        let mut path = filtrering.to_vec();
        path.push(last);
        kuvert_leaf(root, &path, leaf)
    };
    let uuid_under =
        |last: &str| leaf_under(last, "UUIDIdentifikator").and_then(|t| t.parse().ok());
    let filtreringsdata =
        child(root, NS_KUVERT, "Beskedkuvert").and_then(|k| child(k, NS_KUVERT, "Filtreringsdata"));
    let all = |name: &'static str| {
        filtreringsdata
            .into_iter()
            .flat_map(move |f| f.children().filter(move |c| is(c, NS_KUVERT, name)))
    };
    Ok(Haendelsesbesked {
        besked_id,
        beskedtype: uuid_under("Beskedtype"),
        ansvarlig_aktoer: uuid_under("BeskedAnsvarligAktoer"),
        tilladt_modtager: all("TilladtModtager").filter_map(read_unik_id).collect(),
        relateret_objekt: all("RelateretObjekt")
            .filter_map(read_relateret_objekt)
            .collect(),
        dannelsestidspunkt: kuvert_leaf(
            root,
            &["Beskedkuvert", "Leveranceinformation", "Dannelsestidspunkt"],
            "TidsstempelDatoTid",
        ),
        probe: child(root, NS_KUVERT, "Beskeddata").and_then(read_probe),
    })
}

/// Parses a Haendelsesbesked document (pull delivery, Afsend body).
pub fn parse_haendelsesbesked(bytes: &[u8]) -> Result<Haendelsesbesked, ParseError> {
    let doc = parse_document(bytes)?;
    read_haendelsesbesked(doc.root_element())
}

/// Parses a ModtagBeskedInput (push body) and the Haendelsesbesked inside it.
pub fn parse_modtag_besked_input(bytes: &[u8]) -> Result<Haendelsesbesked, ParseError> {
    let doc = parse_document(bytes)?;
    let root = doc.root_element();
    expect_root(root, NS_STS, "ModtagBeskedInput")?;
    let inner = root
        .children()
        .find(|c| c.is_element())
        .ok_or(ParseError::Missing("Haendelsesbesked in ModtagBeskedInput"))?;
    read_haendelsesbesked(inner)
}

/// StatusKode and FejlbeskedTekst from the children of `node`, whatever its name.
fn read_standard_retur_fields(node: Node<'_, '_>) -> Result<StandardRetur, ParseError> {
    let status_kode = sagdok_child(node, "StatusKode")
        .and_then(text_of)
        .and_then(|t| t.parse().ok())
        .ok_or(ParseError::Missing("StandardRetur/StatusKode"))?;
    Ok(StandardRetur {
        status_kode,
        fejlbesked_tekst: sagdok_child(node, "FejlbeskedTekst").and_then(text_of),
    })
}

fn is_standard_retur(node: Node<'_, '_>) -> bool {
    is(&node, NS_SAGDOK, "StandardRetur") || is(&node, NS_SAGDOK_VARIANT, "StandardRetur")
}

fn read_standard_retur(node: Node<'_, '_>) -> Result<StandardRetur, ParseError> {
    if !is_standard_retur(node) {
        return Err(ParseError::WrongRoot {
            ns: node.tag_name().namespace().unwrap_or("").to_string(),
            name: node.tag_name().name().to_string(),
            want_ns: NS_SAGDOK,
            want: "StandardRetur",
        });
    }
    read_standard_retur_fields(node)
}

/// The most of an unreadable reply that is ever shown (debug log, probe trace).
pub const REPLY_HEAD_BYTES: usize = 200;

/// An Afsend reply that is none of the shapes [`parse_afsend_reply`] reads. `Display` shows
/// only why; `head` is the reply's first bytes, for the debug log and the probe trace.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{why}")]
pub struct InvalidReply {
    pub why: String,
    /// At most [`REPLY_HEAD_BYTES`] bytes of the reply, control characters as spaces.
    pub head: String,
}

/// The first [`REPLY_HEAD_BYTES`] bytes of a reply as one printable line of at most that
/// many bytes. A reply that looks like it holds a SAML assertion is withheld: a token never
/// reaches a log or a trace, even one a broken peer echoes back.
pub fn reply_head(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(REPLY_HEAD_BYTES)]);
    if text.contains(crate::protocol::sts::SAML2_NS) || text.contains("Assertion") {
        return "(withheld: it looks like it holds a SAML token)".into();
    }
    let mut head = String::with_capacity(REPLY_HEAD_BYTES);
    for c in text.chars().map(|c| if c.is_control() { ' ' } else { c }) {
        if head.len() + c.len_utf8() > REPLY_HEAD_BYTES {
            break;
        }
        head.push(c);
    }
    head
}

/// Reads the Afsend reply as KOMBIT's sample does, which unmarshals it as a StandardRetur
/// without checking the root's name. Accepted, in either sagdok namespace:
/// - a root whose direct children hold `sd:StatusKode`, whatever its name (a bare
///   `sd:StandardRetur` is one);
/// - a wrapper whose child is `sd:StandardRetur` (`AfsendBeskedOutput`, a BasicOutput).
///
/// Anything else is an [`InvalidReply`].
pub fn parse_afsend_reply(bytes: &[u8]) -> Result<StandardRetur, InvalidReply> {
    let invalid = |why: String| InvalidReply {
        why,
        head: reply_head(bytes),
    };
    let doc = parse_document(bytes).map_err(|e| invalid(e.to_string()))?;
    let root = doc.root_element();
    let node = Some(root)
        .filter(|r| is_standard_retur(*r))
        .or_else(|| sagdok_child(root, "StandardRetur"))
        .or_else(|| sagdok_child(root, "StatusKode").map(|_| root))
        .ok_or_else(|| {
            invalid(format!(
                "the reply's root {{{}}}{} holds neither a StatusKode nor a StandardRetur",
                root.tag_name().namespace().unwrap_or(""),
                root.tag_name().name()
            ))
        })?;
    read_standard_retur_fields(node).map_err(|e| invalid(e.to_string()))
}

/// Parses a ModtagBeskedOutput (the push receiver's answer).
pub fn parse_modtag_besked_output(bytes: &[u8]) -> Result<StandardRetur, ParseError> {
    let doc = parse_document(bytes)?;
    let root = doc.root_element();
    expect_root(root, NS_STS, "ModtagBeskedOutput")?;
    let inner = root
        .children()
        .find(|c| c.is_element())
        .ok_or(ParseError::Missing("StandardRetur in ModtagBeskedOutput"))?;
    read_standard_retur(inner)
}

/// The Filtreringsdata an abonnement can filter on, for [`build_business_message_with`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filtreringsdata {
    /// The sending anvendersystem (BeskedAnsvarligAktoer).
    pub ansvarlig_aktoer: Option<Uuid>,
    pub tilladt_modtager: Vec<UnikId>,
    pub relateret_objekt: Vec<RelateretObjekt>,
}

/// A Haendelsesbesked that is not an Alive message (a stand-in for business traffic,
/// used by the simulator and tests). It carries no real business data, and is written
/// with other prefixes than the Alive message, as another sender might.
pub fn build_business_message(besked_id: Uuid, beskedtype: Uuid) -> String {
    build_business_message_with(besked_id, beskedtype, &Filtreringsdata::default())
}

/// [`build_business_message`] with a sender, TilladtModtager and RelateretObjekt, so that
/// an abonnement has something to filter on (the emulator's routing tests).
pub fn build_business_message_with(
    besked_id: Uuid,
    beskedtype: Uuid,
    filtrering: &Filtreringsdata,
) -> String {
    let mut extra = String::new();
    if let Some(a) = filtrering.ansvarlig_aktoer {
        extra += &format!(
            "<k:BeskedAnsvarligAktoer>{}</k:BeskedAnsvarligAktoer>",
            UnikId::Uuid(a).to_xml("s:")
        );
    }
    for m in &filtrering.tilladt_modtager {
        extra += &format!("<k:TilladtModtager>{}</k:TilladtModtager>", m.to_xml("s:"));
    }
    for r in &filtrering.relateret_objekt {
        extra += &r.to_xml("k:", "s:");
    }
    format!(
        concat!(
            r#"{decl}<k:Haendelsesbesked xmlns:k="{kuvert}" xmlns:s="{sagdok}">"#,
            r#"<k:BeskedId><s:UUIDIdentifikator>{id}</s:UUIDIdentifikator></k:BeskedId>"#,
            r#"<k:BeskedVersion>1.0</k:BeskedVersion>"#,
            r#"<k:Beskedkuvert><k:Filtreringsdata><k:Beskedtype><s:UUIDIdentifikator>{t}</s:UUIDIdentifikator></k:Beskedtype>{extra}</k:Filtreringsdata>"#,
            r#"<k:Leveranceinformation><k:Dannelsestidspunkt><s:TidsstempelDatoTid>{made}</s:TidsstempelDatoTid></k:Dannelsestidspunkt></k:Leveranceinformation>"#,
            r#"</k:Beskedkuvert><k:Beskeddata/></k:Haendelsesbesked>"#
        ),
        decl = XML_DECL,
        kuvert = NS_KUVERT,
        sagdok = NS_SAGDOK,
        id = besked_id,
        t = beskedtype,
        extra = extra,
        made = format_time(SystemTime::now()),
    )
}

#[cfg(test)]
mod tests;
