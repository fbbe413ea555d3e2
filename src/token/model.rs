//! What a token is, independent of where it came from: the SAML assertion text, what we
//! read from it (expiry, issuer), the errors of getting one, and the [`TokenSlot`] through
//! which the manager hands it to the AMQP side.
//!
//! The STS and the file source both end here, so reading the assertion and decoding token
//! text (XML or base64 of XML) live once, in this file. The text stays inside a [`Secret`]
//! and no `Debug` here shows it.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::sync::watch;

use crate::protocol::sts;
use crate::secret::Secret;
use crate::tls::TlsError;

/// What went wrong getting a token. Never contains token text.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the STS needs a client certificate (cert_file + key_file, or pkcs12_file)")]
    NoClientCertificate,
    #[error("sts_url {url:?}: {detail}")]
    BadUrl { url: String, detail: String },
    #[error("STS request to {url} failed: {detail}")]
    Http { url: String, detail: String },
    #[error("STS at {url} answered HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("STS at {url} sent an unusable answer: {detail}")]
    BadResponse { url: String, detail: String },
    #[error("cannot read token file {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token from {origin} is not XML: {detail}")]
    NotXml { origin: String, detail: String },
}

/// A SAML token: the decoded assertion XML, and what we read from it.
#[derive(Debug, Clone)]
pub struct Token {
    /// The decoded assertion XML, sent as is.
    pub xml: Secret<String>,
    /// `Conditions/@NotOnOrAfter` (or the STS response lifetime).
    pub expires_at: Option<SystemTime>,
    /// The assertion's `Issuer`.
    pub issuer: Option<String>,
    /// The CVR the token is issued for ([`sts::CVR_ATTRIBUTE`]), when it names one.
    pub cvr: Option<String>,
}

impl Token {
    /// Parses a token from its XML. Namespaces are resolved (prefixes do not matter); DTDs
    /// are refused. Expiry and issuer are `None` when the XML holds no SAML 2.0 assertion
    /// with them. `origin` names the source in errors.
    pub fn from_xml(xml: String, origin: &str) -> Result<Token, TokenError> {
        let (expires_at, issuer, cvr) = {
            let doc = roxmltree::Document::parse(&xml).map_err(|e| TokenError::NotXml {
                origin: origin.to_owned(),
                detail: e.to_string(),
            })?;
            let assertion = doc
                .descendants()
                .find(|n| n.has_tag_name((sts::SAML2_NS, sts::ASSERTION)));
            match assertion {
                None => (None, None, None),
                Some(a) => {
                    let issuer = a
                        .children()
                        .find(|n| n.has_tag_name((sts::SAML2_NS, sts::SAML_ISSUER)))
                        .and_then(|n| n.text())
                        .map(|t| t.trim().to_owned());
                    let expires = a
                        .children()
                        .find(|n| n.has_tag_name((sts::SAML2_NS, sts::SAML_CONDITIONS)))
                        .and_then(|n| n.attribute(sts::SAML_NOT_ON_OR_AFTER))
                        .and_then(parse_time);
                    let cvr = a
                        .descendants()
                        .find(|n| {
                            n.has_tag_name((sts::SAML2_NS, sts::SAML_ATTRIBUTE))
                                && n.attribute(sts::SAML_ATTRIBUTE_NAME) == Some(sts::CVR_ATTRIBUTE)
                        })
                        .and_then(|n| {
                            n.children().find(|v| {
                                v.has_tag_name((sts::SAML2_NS, sts::SAML_ATTRIBUTE_VALUE))
                            })
                        })
                        .and_then(|v| v.text())
                        .map(|t| t.trim().to_owned());
                    (expires, issuer, cvr)
                }
            }
        };
        Ok(Token {
            xml: Secret::new(xml),
            expires_at,
            issuer,
            cvr,
        })
    }

    /// Time left before expiry (zero when expired), `None` when unknown.
    pub fn remaining(&self) -> Option<Duration> {
        self.expires_at
            .map(|e| e.duration_since(SystemTime::now()).unwrap_or_default())
    }
}

/// An xs:dateTime as SAML and WS-Trust write it (RFC 3339, UTC).
pub(super) fn parse_time(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some(SystemTime::from(t))
}

/// Token text as found in a response or file: XML as is, or base64 of XML (whitespace
/// and line breaks allowed). Surrounding white space is dropped.
pub(super) fn decode_token_text(text: &str) -> Option<String> {
    let t = text.trim();
    if t.starts_with('<') {
        return Some(t.to_owned());
    }
    let compact: String = t.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = BASE64.decode(compact.as_bytes()).ok()?;
    let xml = String::from_utf8(bytes).ok()?;
    let xml = xml.trim();
    // A UTF-8 byte order mark may precede the XML.
    let xml = xml.strip_prefix('\u{feff}').unwrap_or(xml);
    xml.starts_with('<').then(|| xml.to_owned())
}

/// The current token of one service, shared between the [`super::TokenManager`] (writer)
/// and the AMQP side (readers). Cloning is cheap (an `Arc`). Reading is synchronous, as
/// lapin's `AuthProvider::auth_starter` needs: the slot is a `tokio::sync::watch` channel,
/// i.e. an `RwLock` with change notification for [`TokenSlot::subscribe`].
#[derive(Clone)]
pub struct TokenSlot {
    tx: Arc<watch::Sender<Option<Arc<Token>>>>,
}

impl Default for TokenSlot {
    fn default() -> Self {
        TokenSlot {
            tx: Arc::new(watch::Sender::new(None)),
        }
    }
}

impl TokenSlot {
    pub fn new() -> Self {
        Self::default()
    }

    #[cfg(test)]
    /// A slot already holding `token` (tests, fixed tokens).
    pub fn with_token(token: Token) -> Self {
        let slot = Self::new();
        slot.set(Some(Arc::new(token)));
        slot
    }

    /// The current token, if any. Synchronous and cheap.
    pub fn get(&self) -> Option<Arc<Token>> {
        self.tx.borrow().clone()
    }

    /// Replaces the token and wakes subscribers.
    pub fn set(&self, token: Option<Arc<Token>>) {
        self.tx.send_replace(token);
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Token>>> {
        self.tx.subscribe()
    }
}

impl fmt::Debug for TokenSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.get() {
            None => f.write_str("TokenSlot(empty)"),
            Some(t) => f
                .debug_struct("TokenSlot")
                .field("expires_at", &t.expires_at)
                .field("issuer", &t.issuer)
                .finish_non_exhaustive(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{MARK, assertion};
    use super::*;

    fn secs(t: SystemTime) -> u64 {
        t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn parses_assertion_by_namespace() {
        let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let t = Token::from_xml(assertion("https://sts.example", Some(exp), MARK), "test").unwrap();
        assert_eq!(t.expires_at, Some(exp));
        assert_eq!(t.issuer.as_deref(), Some("https://sts.example"));

        // Other prefix, fractional seconds, default namespace.
        let xml = r#"<Assertion xmlns="urn:oasis:names:tc:SAML:2.0:assertion"><Issuer> me </Issuer><Conditions NotOnOrAfter="2030-01-01T08:00:00.123Z"/></Assertion>"#;
        let t = Token::from_xml(xml.into(), "test").unwrap();
        assert_eq!(t.issuer.as_deref(), Some("me"));
        assert_eq!(secs(t.expires_at.unwrap()), 1_893_484_800);

        // Right local names, wrong namespace: not an assertion.
        let xml = r#"<Assertion xmlns="urn:other"><Issuer>me</Issuer><Conditions NotOnOrAfter="2030-01-01T08:00:00Z"/></Assertion>"#;
        let t = Token::from_xml(xml.into(), "test").unwrap();
        assert_eq!((t.expires_at, t.issuer), (None, None));
    }

    #[test]
    fn refuses_non_xml_and_dtd() {
        let e = Token::from_xml("not xml".into(), "f.xml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.xml") && e.contains("not XML"), "{e}");
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>"#;
        assert!(Token::from_xml(xxe.into(), "x").is_err());
    }

    #[test]
    fn debug_never_shows_token_text() {
        let t = Token::from_xml(assertion("iss", None, MARK), "test").unwrap();
        let slot = TokenSlot::with_token(t.clone());
        let dbg = format!("{t:?} {slot:?}");
        assert!(!dbg.contains(MARK) && dbg.contains("<secret>"), "{dbg}");
    }

    #[test]
    fn decodes_base64_and_trims() {
        let xml = assertion("i", None, MARK);
        let b64 = BASE64.encode(xml.as_bytes());
        let wrapped: String = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap().to_owned() + "\n")
            .collect();
        assert_eq!(decode_token_text(&wrapped).unwrap(), xml);
        assert_eq!(decode_token_text(&format!("\n {xml}\n")).unwrap(), xml);
        assert_eq!(decode_token_text("bm90IHhtbA=="), None); // "not xml"
    }
}
