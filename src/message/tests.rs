//! Tests of building and parsing: namespaces and prefixes, the envelopes, hostile input.

use super::*;
use std::time::Duration;

fn payload() -> ProbePayload {
    ProbePayload {
        instance: "exp-1 <&>".into(),
        run: Uuid::new_v4(),
        dueslag: "sag-pull".into(),
        sequence: 42,
        sent_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_790_000_000_123),
    }
}

/// The dueslag the test messages are addressed to.
const DUESLAG: Uuid = Uuid::from_u128(0xd);

fn dueslag_type() -> UnikId {
    UnikId::Urn(crate::protocol::DUESLAG_OBJEKT_TYPE.into())
}

fn alive(p: &ProbePayload) -> (Uuid, String) {
    let id = Uuid::new_v4();
    let xml = build_alive(&AliveSpec {
        besked_id: id,
        anvendersystem: Uuid::nil(),
        cvr: "29189846",
        relateret_objekt: &RelateretObjekt::dueslag(DUESLAG, &dueslag_type()),
        payload: p,
    });
    (id, xml)
}

#[test]
fn alive_round_trips() {
    let p = payload();
    let (id, xml) = alive(&p);
    let m = parse_haendelsesbesked(xml.as_bytes()).unwrap();
    assert_eq!(m.besked_id, id);
    assert!(m.is_alive());
    assert_eq!(m.ansvarlig_aktoer, Some(Uuid::nil()));
    assert_eq!(
        m.tilladt_modtager,
        [UnikId::Urn("urn:oio:cvr-nr:29189846".into())]
    );
    assert_eq!(
        m.relateret_objekt,
        [RelateretObjekt::dueslag(DUESLAG, &dueslag_type())]
    );
    assert_eq!(m.addressed_to(&dueslag_type()), Some(DUESLAG));
    assert_eq!(
        m.addressed_to(&UnikId::Urn("urn:example:other".into())),
        None
    );
    assert_eq!(m.probe, Some(p));
    assert!(m.dannelsestidspunkt.unwrap().ends_with(".123Z"));
}

/// The same message as another sender might write it: the envelope prefixed, the
/// sagdok leaves in a default namespace, and our payload under a prefix.
const OTHER_PREFIXES: &str = r#"<?xml version="1.0"?>
<ns2:Haendelsesbesked xmlns:ns2="urn:oio:besked:kuvert:1.0" xmlns:p="urn:bfo-alive-exporter:probe:1">
  <ns2:BeskedId><UUIDIdentifikator xmlns="urn:oio:sagdok:3.0.0">0b1c3a42-8d2e-4f51-9a3b-1c2d3e4f5a6b</UUIDIdentifikator></ns2:BeskedId>
  <ns2:BeskedVersion>1.0</ns2:BeskedVersion>
  <ns2:Beskedkuvert><ns2:Filtreringsdata>
<ns2:Beskedtype><UUIDIdentifikator xmlns="urn:oio:sagdok:3.0.0">f7e84a06-c47e-42e8-a864-fb4095d7f520</UUIDIdentifikator></ns2:Beskedtype>
<ns2:TilladtModtager><q:URNIdentifikator xmlns:q="urn:oio:sag-dok:3.0.0">urn:oio:cvr-nr:29189846</q:URNIdentifikator></ns2:TilladtModtager>
<ns2:RelateretObjekt><ns2:ObjektId><q:UUIDIdentifikator xmlns:q="urn:oio:sag-dok:3.0.0">00000000-0000-0000-0000-00000000000D</q:UUIDIdentifikator></ns2:ObjektId>
<ns2:ObjektType><URNIdentifikator xmlns="urn:oio:sagdok:3.0.0">urn:bfo-alive-exporter:dueslag</URNIdentifikator></ns2:ObjektType></ns2:RelateretObjekt>
<ns2:RelateretObjekt><ns2:ObjektId><URNIdentifikator xmlns="urn:oio:sagdok:3.0.0">urn:oio:cpr:x</URNIdentifikator></ns2:ObjektId>
<ns2:ObjektType><UUIDIdentifikator xmlns="urn:oio:sagdok:3.0.0">00000000-0000-0000-0000-000000000007</UUIDIdentifikator></ns2:ObjektType>
<ns2:ObjektRolle><URNIdentifikator xmlns="urn:oio:sagdok:3.0.0">urn:example:rolle</URNIdentifikator></ns2:ObjektRolle></ns2:RelateretObjekt>
<ns2:RelateretObjekt><ns2:ObjektId><UUIDIdentifikator xmlns="urn:example:other">00000000-0000-0000-0000-000000000009</UUIDIdentifikator></ns2:ObjektId>
<ns2:ObjektType><URNIdentifikator xmlns="urn:oio:sagdok:3.0.0">urn:bfo-alive-exporter:dueslag</URNIdentifikator></ns2:ObjektType></ns2:RelateretObjekt>
  </ns2:Filtreringsdata></ns2:Beskedkuvert>
  <ns2:Beskeddata><p:AliveProbe><p:Instance>x</p:Instance><p:Run>00000000-0000-0000-0000-000000000001</p:Run>
<p:Dueslag>d</p:Dueslag><p:Sequence>7</p:Sequence><p:SentAt>2026-12-01T06:00:00.5Z</p:SentAt></p:AliveProbe></ns2:Beskeddata>
</ns2:Haendelsesbesked>"#;

#[test]
fn prefixes_do_not_matter_but_namespaces_do() {
    let m = parse_haendelsesbesked(OTHER_PREFIXES.as_bytes()).unwrap();
    assert!(m.is_alive());
    assert_eq!(
        m.besked_id.to_string(),
        "0b1c3a42-8d2e-4f51-9a3b-1c2d3e4f5a6b"
    );
    assert_eq!(
        m.tilladt_modtager,
        [UnikId::Urn("urn:oio:cvr-nr:29189846".into())]
    );
    // The RelateretObjekt, its leaves in the variant namespace and a default one; the one
    // whose ObjektId is in a foreign namespace is unreadable and left out.
    assert_eq!(m.addressed_to(&dueslag_type()), Some(DUESLAG));
    assert_eq!(m.relateret_objekt.len(), 2);
    assert_eq!(
        m.relateret_objekt[1],
        RelateretObjekt {
            objekt_id: UnikId::Urn("urn:oio:cpr:x".into()),
            objekt_type: UnikId::Uuid(Uuid::from_u128(7)),
            objekt_rolle: Some(UnikId::Urn("urn:example:rolle".into())),
        }
    );
    let probe = m.probe.unwrap();
    assert_eq!((probe.sequence, probe.dueslag.as_str()), (7, "d"));

    let wrong_root = OTHER_PREFIXES.replace("urn:oio:besked:kuvert:1.0", "urn:example:other");
    assert!(matches!(
        parse_haendelsesbesked(wrong_root.as_bytes()),
        Err(ParseError::WrongRoot { .. })
    ));
    // The Beskedtype leaf in a foreign namespace is not an Alive beskedtype.
    let wrong_leaf = OTHER_PREFIXES.replacen(
        r#"<ns2:Beskedtype><UUIDIdentifikator xmlns="urn:oio:sagdok:3.0.0">"#,
        r#"<ns2:Beskedtype><UUIDIdentifikator xmlns="urn:example:other">"#,
        1,
    );
    assert!(
        !parse_haendelsesbesked(wrong_leaf.as_bytes())
            .unwrap()
            .is_alive()
    );
    // The payload in another namespace is not ours.
    let wrong_payload = OTHER_PREFIXES.replace("urn:bfo-alive-exporter:probe:1", "urn:example:p");
    assert!(
        parse_haendelsesbesked(wrong_payload.as_bytes())
            .unwrap()
            .probe
            .is_none()
    );
}

#[test]
fn business_message_is_not_alive() {
    let xml = build_business_message(Uuid::new_v4(), Uuid::new_v4());
    let m = parse_haendelsesbesked(xml.as_bytes()).unwrap();
    assert!(!m.is_alive());
    assert!(m.probe.is_none());
    assert!(m.tilladt_modtager.is_empty() && m.relateret_objekt.is_empty());
}

#[test]
fn business_message_carries_what_an_abonnement_filters_on() {
    let sag = RelateretObjekt {
        objekt_id: UnikId::Uuid(Uuid::from_u128(5)),
        objekt_type: UnikId::Urn("urn:example:sag".into()),
        objekt_rolle: Some(UnikId::Urn("urn:example:part".into())),
    };
    let f = Filtreringsdata {
        ansvarlig_aktoer: Some(Uuid::from_u128(1)),
        tilladt_modtager: vec![
            UnikId::Urn("urn:oio:cvr-nr:11111111".into()),
            UnikId::Urn("urn:oio:cvr-nr:22222222".into()),
        ],
        relateret_objekt: vec![sag.clone()],
    };
    let xml = build_business_message_with(Uuid::new_v4(), Uuid::from_u128(9), &f);
    let m = parse_haendelsesbesked(xml.as_bytes()).unwrap();
    assert_eq!(m.beskedtype, Some(Uuid::from_u128(9)));
    assert_eq!(m.ansvarlig_aktoer, Some(Uuid::from_u128(1)));
    assert_eq!(m.tilladt_modtager, f.tilladt_modtager);
    assert_eq!(m.relateret_objekt, [sag]);
}

#[test]
fn unik_ids_are_uuids_or_urns() {
    assert_eq!(
        "C82E55B4-D9AA-4C15-90CF-F4FBC0F85037".parse::<UnikId>(),
        Ok(UnikId::Uuid(
            "c82e55b4-d9aa-4c15-90cf-f4fbc0f85037".parse().unwrap()
        ))
    );
    let urn: UnikId = "urn:bfo-alive-exporter:dueslag".parse().unwrap();
    assert_eq!(urn.element(), "URNIdentifikator");
    assert_eq!(urn.to_string(), "urn:bfo-alive-exporter:dueslag");
    for bad in [
        "",
        "dueslag",
        "urn:",
        "urn:x",
        "urn::x",
        "urn:a b:c",
        "http://x",
    ] {
        assert!(bad.parse::<UnikId>().is_err(), "{bad:?}");
    }
}

#[test]
fn refuses_dtd_and_entities() {
    let xml = r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><Haendelsesbesked xmlns="urn:oio:besked:kuvert:1.0">&e;</Haendelsesbesked>"#;
    assert!(matches!(
        parse_haendelsesbesked(xml.as_bytes()),
        Err(ParseError::Xml(_))
    ));
    let bomb = r#"<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><x>&b;</x>"#;
    assert!(matches!(
        parse_haendelsesbesked(bomb.as_bytes()),
        Err(ParseError::Xml(_))
    ));
}

#[test]
fn bounds_size_and_depth() {
    let deep = "<a>".repeat(MAX_XML_DEPTH + 1) + &"</a>".repeat(MAX_XML_DEPTH + 1);
    assert_eq!(
        parse_haendelsesbesked(deep.as_bytes()),
        Err(ParseError::TooDeep)
    );
    let ok_depth = "<a>".repeat(MAX_XML_DEPTH) + &"</a>".repeat(MAX_XML_DEPTH);
    assert!(matches!(
        parse_haendelsesbesked(ok_depth.as_bytes()),
        Err(ParseError::WrongRoot { .. })
    ));
    let big = vec![b' '; MAX_XML_BYTES + 1];
    assert_eq!(
        parse_haendelsesbesked(&big),
        Err(ParseError::TooLarge(MAX_XML_BYTES + 1))
    );
    assert_eq!(
        parse_haendelsesbesked(&[0xff, 0xfe]),
        Err(ParseError::NotUtf8)
    );
    assert!(matches!(
        parse_haendelsesbesked(b"<unclosed"),
        Err(ParseError::Xml(_))
    ));
}

#[test]
fn objekt_registrering_id_is_its_own_uuid() {
    let (id, xml) = alive(&payload());
    let doc = Document::parse(&xml).unwrap();
    let reg = doc
        .descendants()
        .find(|n| is(n, NS_KUVERT, "ObjektRegistreringId"))
        .and_then(|n| sagdok_child(n, "UUIDIdentifikator"))
        .and_then(text_of)
        .and_then(|t| t.parse::<Uuid>().ok())
        .unwrap();
    assert_ne!(reg, id);
}

#[test]
fn standard_retur_both_namespaces() {
    let ours = build_standard_retur(&StandardRetur::error(41, "token <expired>"));
    assert_eq!(
        parse_afsend_reply(ours.as_bytes()).unwrap(),
        StandardRetur::error(41, "token <expired>")
    );
    let variant = r#"<s:StandardRetur xmlns:s="urn:oio:sag-dok:3.0.0"><s:StatusKode> 20 </s:StatusKode></s:StandardRetur>"#;
    assert_eq!(
        parse_afsend_reply(variant.as_bytes()).unwrap(),
        StandardRetur::ok()
    );
    let missing = r#"<StandardRetur xmlns="urn:oio:sagdok:3.0.0"/>"#;
    let err = parse_afsend_reply(missing.as_bytes()).unwrap_err();
    assert_eq!(err.why, "missing or invalid StandardRetur/StatusKode");
    assert_eq!(err.head, missing);
}

#[test]
fn afsend_reply_in_every_shape() {
    let r = StandardRetur::error(44, "no <such> dueslag");
    for shape in [
        ReplyShape::StandardRetur,
        ReplyShape::AfsendBeskedOutput,
        ReplyShape::OtherRoot,
    ] {
        let xml = build_afsend_reply(&r, shape);
        assert_eq!(parse_afsend_reply(xml.as_bytes()), Ok(r.clone()), "{xml}");
    }
    // KOMBIT's schema's AfsendBeskedOutput, and a wrapper of another name, prefixed,
    // around the variant namespace.
    let output = r#"<bf:AfsendBeskedOutput xmlns:bf="urn:oio:sts:beskedfordeler:1.0.0"><sd:StandardRetur xmlns:sd="urn:oio:sagdok:3.0.0"><sd:StatusKode>20</sd:StatusKode></sd:StandardRetur></bf:AfsendBeskedOutput>"#;
    assert_eq!(
        parse_afsend_reply(output.as_bytes()),
        Ok(StandardRetur::ok())
    );
    let wrapper = r#"<Svar><v:StandardRetur xmlns:v="urn:oio:sag-dok:3.0.0"><v:StatusKode>41</v:StatusKode><v:FejlbeskedTekst>expired</v:FejlbeskedTekst></v:StandardRetur></Svar>"#;
    assert_eq!(
        parse_afsend_reply(wrapper.as_bytes()),
        Ok(StandardRetur::error(41, "expired"))
    );
    // A root of any name whose children are the StandardRetur's.
    let other = r#"<AfsendBeskedResponse xmlns:sd="urn:oio:sagdok:3.0.0"><sd:StatusKode>20</sd:StatusKode></AfsendBeskedResponse>"#;
    assert_eq!(
        parse_afsend_reply(other.as_bytes()),
        Ok(StandardRetur::ok())
    );
}

#[test]
fn garbage_is_an_invalid_reply() {
    let soap = build_afsend_reply(&StandardRetur::ok(), ReplyShape::Garbage);
    let err = parse_afsend_reply(soap.as_bytes()).unwrap_err();
    assert!(
        err.why
            .contains("holds neither a StatusKode nor a StandardRetur"),
        "{err}"
    );
    assert!(err.head.starts_with("<?xml"), "{}", err.head);
    // A StatusKode in a foreign namespace, or too deep, is not one.
    for xml in [
        r#"<StandardRetur xmlns="urn:example:other"><StatusKode>20</StatusKode></StandardRetur>"#,
        r#"<a><b><StandardRetur xmlns="urn:oio:sagdok:3.0.0"><StatusKode>20</StatusKode></StandardRetur></b></a>"#,
        r#"<StandardRetur xmlns="urn:oio:sagdok:3.0.0"><StatusKode>twenty</StatusKode></StandardRetur>"#,
        "not xml at all",
        "",
    ] {
        assert!(parse_afsend_reply(xml.as_bytes()).is_err(), "{xml}");
    }
    let err = parse_afsend_reply(&[0xff, 0xfe, b'<']).unwrap_err();
    assert_eq!(err.why, "document is not UTF-8");
}

#[test]
fn reply_head_is_short_printable_and_never_a_token() {
    let long = format!("<x>\n{}</x>", "é".repeat(300));
    let head = reply_head(long.as_bytes());
    assert!(head.len() <= REPLY_HEAD_BYTES && head.len() > REPLY_HEAD_BYTES - 2);
    assert!(head.starts_with("<x> é"), "{head}");
    let err = parse_afsend_reply(long.as_bytes()).unwrap_err();
    assert_eq!(err.head, head);
    assert!(
        !err.to_string().contains('é'),
        "Display shows why, not the bytes"
    );
    let token = r#"<saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_t"><saml:Issuer>https://sts</saml:Issuer></saml:Assertion>"#;
    let head = parse_afsend_reply(token.as_bytes()).unwrap_err().head;
    assert!(!head.contains("saml"), "{head}");
}

#[test]
fn push_envelopes_round_trip() {
    let p = payload();
    let (id, xml) = alive(&p);
    let input = build_modtag_besked_input(&xml);
    assert_eq!(input.matches("<?xml").count(), 1);
    let m = parse_modtag_besked_input(input.as_bytes()).unwrap();
    assert_eq!(m.besked_id, id);
    assert!(parse_modtag_besked_input(xml.as_bytes()).is_err());
    let out = build_modtag_besked_output(&StandardRetur::ok());
    assert_eq!(
        parse_modtag_besked_output(out.as_bytes()).unwrap(),
        StandardRetur::ok()
    );
}

#[test]
fn text_xml_cannot_carry_is_replaced_so_answers_stay_readable() {
    let why = "malformed XML: a non-XML character '\0' found, and \u{1}\u{FFFE}\t";
    let out = build_modtag_besked_output(&StandardRetur::error(40, why));
    let r = parse_modtag_besked_output(out.as_bytes()).expect("readable");
    assert_eq!(
        r.fejlbesked_tekst.as_deref(),
        Some("malformed XML: a non-XML character '\u{FFFD}' found, and \u{FFFD}\u{FFFD}")
    );
}
