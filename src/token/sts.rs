//! The KOMBIT STS client: the RequestSecurityToken body, the mutual-TLS POST, and reading
//! the token (and, as a fallback, its `Lifetime`) out of the answer.
//!
//! Wire names live in [`crate::protocol::sts`]; this file owns how they are put together
//! and how lenient the reading is (case-insensitive field names, XML or base64 of XML), so
//! a KOMBIT correction touches one place or the other, not both. Errors never quote a
//! successful body: it may hold the token.

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};

use super::manager::TokenIssuer;
use super::model::{Token, TokenError, decode_token_text, parse_time};
use crate::protocol::{Service, sts};
use crate::tls::{self, ClientTlsFiles};

/// Settings of the STS source.
#[derive(Debug, Clone)]
pub struct StsConfig {
    /// Base URL, e.g. `https://n2adgangsstyring.eksterntest-stoettesystemerne.dk/runtime`;
    /// [`sts::ISSUE_PATH`] is appended unless it is already there.
    pub url: String,
    /// The authority's CVR number (`Anvenderkontekst.Cvr`).
    pub cvr: String,
    pub afsend_entity_id: String,
    pub afhent_entity_id: String,
    /// Mutual TLS towards the STS: CA and the system certificate.
    pub tls: ClientTlsFiles,
    /// Per request.
    pub timeout: Duration,
}

impl StsConfig {
    pub fn entity_id(&self, service: Service) -> &str {
        match service {
            Service::Afsend => &self.afsend_entity_id,
            Service::Afhent => &self.afhent_entity_id,
        }
    }
}

/// The full issue URL for a configured base URL.
pub fn sts_issue_url(base: &str) -> Result<url::Url, TokenError> {
    let bad = |detail: String| TokenError::BadUrl {
        url: base.to_owned(),
        detail,
    };
    let trimmed = base.trim().trim_end_matches('/');
    let full = if trimmed.ends_with(sts::ISSUE_PATH) {
        trimmed.to_owned()
    } else {
        format!("{trimmed}{}", sts::ISSUE_PATH)
    };
    let url = url::Url::parse(&full).map_err(|e| bad(e.to_string()))?;
    if url.scheme() != "https" {
        return Err(bad(
            "must be an https:// URL (the STS uses mutual TLS)".into()
        ));
    }
    Ok(url)
}

/// A client for the STS issue call.
pub struct StsClient {
    http: reqwest::Client,
    url: url::Url,
    config: StsConfig,
    /// Base64 DER of our certificate (public, not a secret).
    use_key: String,
}

impl fmt::Debug for StsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StsClient")
            .field("url", &self.url.as_str())
            .field("cvr", &self.config.cvr)
            .finish_non_exhaustive()
    }
}

impl StsClient {
    pub fn new(config: StsConfig) -> Result<StsClient, TokenError> {
        let url = sts_issue_url(&config.url)?;
        let identity =
            tls::load_client_identity(&config.tls)?.ok_or(TokenError::NoClientCertificate)?;
        let use_key = BASE64.encode(identity.leaf());
        let http = tls::reqwest_client(&config.tls, config.timeout)?;
        Ok(StsClient {
            http,
            url,
            config,
            use_key,
        })
    }

    /// The same client for municipality `cvr`: the system certificate, the HTTP client and
    /// its pooled connections are the supplier's and shared; only `Anvenderkontekst.Cvr`
    /// differs. So 100 municipalities load the certificate once and share one pool.
    pub fn for_cvr(&self, cvr: &str) -> StsClient {
        StsClient {
            http: self.http.clone(),
            url: self.url.clone(),
            config: StsConfig {
                cvr: cvr.to_string(),
                ..self.config.clone()
            },
            use_key: self.use_key.clone(),
        }
    }

    /// The RequestSecurityToken JSON for `service`.
    pub fn request_body(&self, service: Service) -> Value {
        let obj = |pairs: Vec<(&str, Value)>| {
            Value::Object(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect::<Map<_, _>>(),
            )
        };
        obj(vec![
            (sts::REQUEST_TYPE, sts::REQUEST_TYPE_ISSUE.into()),
            (
                sts::APPLIES_TO,
                obj(vec![(
                    sts::ENDPOINT_REFERENCE,
                    obj(vec![(sts::ADDRESS, self.config.entity_id(service).into())]),
                )]),
            ),
            (sts::TOKEN_TYPE, sts::TOKEN_TYPE_SAML2.into()),
            (sts::KEY_TYPE, sts::KEY_TYPE_PUBLIC_KEY.into()),
            (sts::USE_KEY, self.use_key.clone().into()),
            (
                sts::ANVENDERKONTEKST,
                obj(vec![(sts::CVR, self.config.cvr.clone().into())]),
            ),
        ])
    }

    /// Issues a token for `service`.
    pub async fn issue(&self, service: Service) -> Result<Token, TokenError> {
        let url = self.url.to_string();
        let http_err = |e: reqwest::Error| TokenError::Http {
            url: url.clone(),
            detail: error_chain(&e),
        };
        let response = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&self.request_body(service))
            .send()
            .await
            .map_err(http_err)?;
        let status = response.status();
        let body = response.bytes().await.map_err(http_err)?;
        if !status.is_success() {
            return Err(TokenError::Status {
                url,
                status: status.as_u16(),
                body: excerpt(&body),
            });
        }
        parse_sts_response(&body).map_err(|detail| TokenError::BadResponse { url, detail })
    }
}

#[async_trait]
impl TokenIssuer for StsClient {
    async fn issue(&self, service: Service) -> Result<Token, TokenError> {
        StsClient::issue(self, service).await
    }
}

/// An error with its sources ("error sending request: tls handshake: ...").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// The start of an error body, on one line, for messages.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    one_line.trim().to_owned()
}

/// A JSON field by name, falling back to a case-insensitive match.
fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// Reads the token out of an STS response body. Errors never quote the body (it may hold
/// the token).
fn parse_sts_response(body: &[u8]) -> Result<Token, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON ({e})"))?;
    let assertion = field(&v, sts::REQUESTED_SECURITY_TOKEN)
        .and_then(|t| field(t, sts::ASSERTION))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            format!(
                "no {}.{} string in it",
                sts::REQUESTED_SECURITY_TOKEN,
                sts::ASSERTION
            )
        })?;
    let xml = decode_token_text(assertion)
        .ok_or_else(|| format!("{} is neither XML nor base64 of XML", sts::ASSERTION))?;
    let mut token = Token::from_xml(xml, "the STS response").map_err(|e| e.to_string())?;
    if token.expires_at.is_none() {
        // The token is usable without it: renewed at the fixed interval, with a warning
        // that says what could not be read.
        token.expires_at = lifetime_expiry(&v).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "STS response: expiry unknown");
            None
        });
    }
    Ok(token)
}

/// The expiry in an STS response's `Lifetime`: a string (`MM/DD/YYYY HH:MM:SS`, UTC) or an
/// object with `Expires` (and usually `Created`). `None` without a `Lifetime`.
fn lifetime_expiry(response: &Value) -> Result<Option<SystemTime>, String> {
    let expires = match field(response, sts::LIFETIME) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s,
        Some(obj @ Value::Object(_)) => match field(obj, sts::EXPIRES) {
            Some(Value::String(s)) => s,
            _ => {
                return Err(format!(
                    "{} is an object without an {} string",
                    sts::LIFETIME,
                    sts::EXPIRES
                ));
            }
        },
        Some(other) => {
            return Err(format!(
                "{} is neither a string nor an object but {}",
                sts::LIFETIME,
                json_kind(other)
            ));
        }
    };
    parse_lifetime_time(expires).map(Some).ok_or_else(|| {
        let shown: String = expires.chars().take(40).collect();
        format!(
            "{} {shown:?} is neither MM/DD/YYYY HH:MM:SS nor RFC 3339",
            sts::LIFETIME
        )
    })
}

/// A `Lifetime` time: RFC 3339, or [`sts::LIFETIME_STRING_FORMAT`] in UTC.
fn parse_lifetime_time(s: &str) -> Option<SystemTime> {
    if let Some(t) = parse_time(s) {
        return Some(t);
    }
    let t = time::PrimitiveDateTime::parse(s.trim(), sts::LIFETIME_STRING_FORMAT).ok()?;
    Some(SystemTime::from(t.assume_utc()))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{MARK, Recorded, assertion, rfc3339};
    use super::super::{TokenManager, TokenManagerConfig, TokenSource};
    use super::*;
    use crate::tls::testpki;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;

    #[test]
    fn issue_url() {
        let u = sts_issue_url("https://sts.example/runtime/").unwrap();
        assert_eq!(
            u.as_str(),
            "https://sts.example/runtime/api/rest/wstrust/v1/issue"
        );
        let u = sts_issue_url("https://sts.example/runtime/api/rest/wstrust/v1/issue").unwrap();
        assert_eq!(
            u.as_str(),
            "https://sts.example/runtime/api/rest/wstrust/v1/issue"
        );
        assert!(sts_issue_url("http://sts.example/runtime").is_err());
        assert!(sts_issue_url("not a url").is_err());
    }

    fn at(secs: u64) -> Option<SystemTime> {
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn lifetime_string_form_is_month_first_utc() {
        // 2025-05-27T14:03:09Z, as the n2adgangsstyring host answers.
        let v = serde_json::json!({ "Lifetime": "05/27/2025 14:03:09" });
        assert_eq!(lifetime_expiry(&v), Ok(at(1_748_354_589)));
        // Single-digit fields are written with zeros; RFC 3339 is read as well.
        let v = serde_json::json!({ "Lifetime": "2025-05-27T14:03:09Z" });
        assert_eq!(lifetime_expiry(&v), Ok(at(1_748_354_589)));
    }

    #[test]
    fn lifetime_object_form_with_or_without_created() {
        for v in [
            serde_json::json!({ "Lifetime": { "Expires": "2030-01-01T08:00:00Z" } }),
            serde_json::json!({ "Lifetime": {
                "Created": "2030-01-01T00:00:00Z", "Expires": "2030-01-01T08:00:00Z" } }),
            // Field names matched case-insensitively, the string format accepted inside.
            serde_json::json!({ "lifetime": { "expires": "01/01/2030 08:00:00" } }),
        ] {
            assert_eq!(lifetime_expiry(&v), Ok(at(1_893_484_800)), "{v}");
        }
        assert_eq!(lifetime_expiry(&serde_json::json!({})), Ok(None));
        assert_eq!(
            lifetime_expiry(&serde_json::json!({ "Lifetime": null })),
            Ok(None)
        );
    }

    #[test]
    fn lifetime_garbage_is_a_clear_error() {
        for (v, expected) in [
            (
                serde_json::json!({ "Lifetime": "next tuesday" }),
                r#"Lifetime "next tuesday" is neither MM/DD/YYYY HH:MM:SS nor RFC 3339"#,
            ),
            (
                // Day first is not the format: month 27 does not exist.
                serde_json::json!({ "Lifetime": "27/05/2025 14:03:09" }),
                "neither MM/DD/YYYY HH:MM:SS nor RFC 3339",
            ),
            (
                serde_json::json!({ "Lifetime": { "Created": "2030-01-01T00:00:00Z" } }),
                "Lifetime is an object without an Expires string",
            ),
            (
                serde_json::json!({ "Lifetime": { "Expires": 1_893_484_800 } }),
                "Lifetime is an object without an Expires string",
            ),
            (
                serde_json::json!({ "Lifetime": 28800 }),
                "Lifetime is neither a string nor an object but a number",
            ),
            (
                serde_json::json!({ "Lifetime": "\u{0}".repeat(100) }),
                "neither MM/DD/YYYY HH:MM:SS nor RFC 3339",
            ),
        ] {
            let e = lifetime_expiry(&v).unwrap_err();
            assert!(e.contains(expected), "{e}");
            assert!(e.len() < 200, "{e}");
        }
    }

    #[test]
    fn a_garbage_lifetime_leaves_the_expiry_unknown_not_the_token() {
        let xml = assertion("i", None, MARK);
        let body = serde_json::json!({
            "RequestedSecurityToken": { "Assertion": BASE64.encode(xml.as_bytes()) },
            "Lifetime": "soon",
        });
        let token = parse_sts_response(body.to_string().as_bytes()).unwrap();
        assert_eq!(token.expires_at, None);
        // The assertion's own expiry wins over any Lifetime.
        let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let body = serde_json::json!({
            "RequestedSecurityToken": {
                "Assertion": BASE64.encode(assertion("i", Some(exp), MARK).as_bytes())
            },
            "Lifetime": "01/01/2020 00:00:00",
        });
        let token = parse_sts_response(body.to_string().as_bytes()).unwrap();
        assert_eq!(token.expires_at, Some(exp));
    }

    // --------------------------------------------------------------- STS stub

    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        content_type: String,
        body: Value,
    }

    type Responder = Arc<dyn Fn(&Value) -> (u16, String) + Send + Sync>;

    struct Stub {
        base: String,
        seen: Arc<Mutex<Vec<Seen>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Stub {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// An HTTPS server on 127.0.0.1:0 that requires a client certificate from the test CA,
    /// records each request and answers with `respond`.
    async fn stub(pki: &testpki::Pki, respond: Responder) -> Stub {
        let config = tls::server_config(&pki.server_cert, &pki.server_key, Some(&pki.ca)).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen, respond) = (acceptor.clone(), seen2.clone(), respond.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        let Ok(n) = tls.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.trim()
                                    .eq_ignore_ascii_case(name)
                                    .then(|| v.trim().to_owned())
                            })
                            .unwrap_or_default()
                    };
                    let len: usize = header("content-length").parse().unwrap_or(0);
                    while buf.len() < head_end + len {
                        let Ok(n) = tls.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let mut first = head.lines().next().unwrap_or("").split(' ');
                    let body: Value = serde_json::from_slice(&buf[head_end..head_end + len])
                        .unwrap_or(Value::Null);
                    let (status, text) = respond(&body);
                    seen.lock().unwrap().push(Seen {
                        method: first.next().unwrap_or("").into(),
                        path: first.next().unwrap_or("").into(),
                        content_type: header("content-type"),
                        body,
                    });
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Stub {
            base: format!("https://localhost:{port}/runtime"),
            seen,
            task,
        }
    }

    fn sts_config(pki: &testpki::Pki, base: &str) -> StsConfig {
        StsConfig {
            url: base.into(),
            cvr: "29189846".into(),
            afsend_entity_id: "http://beskedfordeler.test/service/afsend/1".into(),
            afhent_entity_id: "http://beskedfordeler.test/service/afhent/1".into(),
            tls: pki.client_files(),
            timeout: Duration::from_secs(10),
        }
    }

    fn ok_response(xml: &str, lifetime: Option<SystemTime>) -> String {
        let mut v = serde_json::json!({
            "RequestedSecurityToken": { "Assertion": BASE64.encode(xml.as_bytes()) },
            "TokenType": sts::TOKEN_TYPE_SAML2,
        });
        if let Some(t) = lifetime {
            v["Lifetime"] =
                serde_json::json!({ "Created": "2020-01-01T00:00:00Z", "Expires": rfc3339(t) });
        }
        v.to_string()
    }

    #[tokio::test]
    async fn a_client_for_another_cvr_asks_for_that_cvr_over_the_same_certificate() {
        let pki = testpki::make();
        let xml = assertion("https://sts.test", None, MARK);
        let stub = stub(&pki, Arc::new(move |_| (200, ok_response(&xml, None)))).await;
        let base = StsClient::new(sts_config(&pki, &stub.base)).unwrap();
        let other = base.for_cvr("55133018");
        other.issue(Service::Afsend).await.unwrap();
        base.issue(Service::Afsend).await.unwrap();
        let seen = stub.seen.lock().unwrap().clone();
        let cvrs: Vec<_> = seen
            .iter()
            .map(|r| r.body[sts::ANVENDERKONTEKST][sts::CVR].clone())
            .collect();
        assert_eq!(
            cvrs,
            [serde_json::json!("55133018"), serde_json::json!("29189846")]
        );
        assert_eq!(
            other.request_body(Service::Afsend)[sts::USE_KEY],
            base.request_body(Service::Afsend)[sts::USE_KEY]
        );
    }

    #[tokio::test]
    async fn sts_issue_request_and_token() {
        let pki = testpki::make();
        let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let xml = assertion("https://sts.test", Some(exp), MARK);
        let xml2 = xml.clone();
        let stub = stub(&pki, Arc::new(move |_| (200, ok_response(&xml2, None)))).await;
        let client = StsClient::new(sts_config(&pki, &stub.base)).unwrap();
        assert!(!format!("{client:?}").contains("BEGIN"));

        let token = client.issue(Service::Afhent).await.unwrap();
        assert_eq!(token.xml.expose(), &xml);
        assert_eq!(token.expires_at, Some(exp));
        assert_eq!(token.issuer.as_deref(), Some("https://sts.test"));

        let seen = stub.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        let req = &seen[0];
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/runtime/api/rest/wstrust/v1/issue");
        assert!(
            req.content_type.starts_with("application/json"),
            "{}",
            req.content_type
        );
        let expected = serde_json::json!({
            "RequestType": "http://docs.oasis-open.org/ws-sx/ws-trust/200512/Issue",
            "AppliesTo": { "EndpointReference": { "Address": "http://beskedfordeler.test/service/afhent/1" } },
            "TokenType": "http://docs.oasis-open.org/wss/oasis-wss-saml-token-profile-1.1#SAMLV2.0",
            "KeyType": "http://docs.oasis-open.org/ws-sx/ws-trust/200512/PublicKey",
            "UseKey": BASE64.encode(&pki.client_der),
            "Anvenderkontekst": { "Cvr": "29189846" },
        });
        assert_eq!(req.body, expected);
    }

    #[tokio::test]
    async fn sts_lifetime_fallback() {
        let pki = testpki::make();
        let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_123);
        let xml = assertion("i", None, MARK);
        let stub = stub(&pki, Arc::new(move |_| (200, ok_response(&xml, Some(exp))))).await;
        let client = StsClient::new(sts_config(&pki, &stub.base)).unwrap();
        let token = client.issue(Service::Afsend).await.unwrap();
        assert_eq!(token.expires_at, Some(exp));
    }

    #[tokio::test]
    async fn sts_errors() {
        let pki = testpki::make();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let stub = stub(
            &pki,
            Arc::new(move |_| match c.fetch_add(1, Ordering::SeqCst) {
                0 => (400, r#"{"message":"unknown cvr"}"#.into()),
                1 => (503, "maintenance".into()),
                2 => (200, r#"{"RequestedSecurityToken":{}}"#.into()),
                _ => (
                    200,
                    r#"{"RequestedSecurityToken":{"Assertion":"bm90IHhtbA=="}}"#.into(),
                ),
            }),
        )
        .await;
        let client = StsClient::new(sts_config(&pki, &stub.base)).unwrap();
        let e = client.issue(Service::Afsend).await.unwrap_err();
        assert!(matches!(e, TokenError::Status { status: 400, .. }), "{e}");
        assert!(e.to_string().contains("unknown cvr"), "{e}");
        let e = client.issue(Service::Afsend).await.unwrap_err();
        assert!(matches!(e, TokenError::Status { status: 503, .. }), "{e}");
        let e = client.issue(Service::Afsend).await.unwrap_err().to_string();
        assert!(e.contains("RequestedSecurityToken.Assertion"), "{e}");
        let e = client.issue(Service::Afsend).await.unwrap_err().to_string();
        assert!(e.contains("neither XML nor base64"), "{e}");
    }

    #[tokio::test]
    async fn sts_refuses_client_without_certificate() {
        let pki = testpki::make();
        let stub = stub(&pki, Arc::new(|_| (200, "{}".into()))).await;
        // Our STS client will not even start without one...
        let mut config = sts_config(&pki, &stub.base);
        config.tls.cert_file = None;
        config.tls.key_file = None;
        let e = StsClient::new(config.clone()).unwrap_err();
        assert!(matches!(e, TokenError::NoClientCertificate), "{e}");
        // ...and the server refuses a client that has none.
        let http = tls::reqwest_client(&config.tls, Duration::from_secs(5)).unwrap();
        let url = sts_issue_url(&stub.base).unwrap();
        let r = http.post(url).json(&serde_json::json!({})).send().await;
        assert!(r.is_err(), "{r:?}");
        assert!(stub.seen.lock().unwrap().is_empty());
    }

    // ------------------------------------------------ the manager over the real client

    /// Real time, short enough for a test: the real STS stub cannot run on a paused clock
    /// (its TLS I/O would race the auto-advanced timeouts).
    fn fast_config() -> TokenManagerConfig {
        TokenManagerConfig {
            renew_fraction: 0.8,
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_millis(200),
            renew_without_expiry: Duration::from_secs(3600),
            min_renew_interval: Duration::from_millis(10),
            file_poll_interval: Duration::from_millis(50),
            renew_jitter: 0.0,
            sts_permits: None,
        }
    }

    /// End to end over TLS: the timing rules are tested on a paused clock in
    /// `manager.rs`; this checks that the real client plugs into them.
    #[tokio::test]
    async fn manager_sts_fetch_renew_backoff() {
        let pki = testpki::make();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        // The first afhent call fails (500); everything else succeeds with a long-lived
        // token whose marker is the call number.
        let failed_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stub = stub(
            &pki,
            Arc::new(move |body| {
                let n = c.fetch_add(1, Ordering::SeqCst);
                let addr = body["AppliesTo"]["EndpointReference"]["Address"]
                    .as_str()
                    .unwrap_or("");
                if addr.ends_with("afhent/1") && !failed_once.swap(true, Ordering::SeqCst) {
                    return (500, "boom".into());
                }
                let exp = SystemTime::now() + Duration::from_secs(3600);
                (
                    200,
                    ok_response(&assertion("sts", Some(exp), &format!("{MARK}{n}")), None),
                )
            }),
        )
        .await;
        let rec = Arc::new(Recorded::default());
        let cancel = CancellationToken::new();
        let client = StsClient::new(sts_config(&pki, &stub.base)).unwrap();
        let mgr = TokenManager::start(
            TokenSource::Sts(Arc::new(client)),
            &Service::ALL,
            fast_config(),
            rec.callbacks(),
            cancel.clone(),
        );

        let t_send = mgr
            .wait_for_token(Service::Afsend, Duration::from_secs(10))
            .await
            .unwrap();
        let t_hent = mgr
            .wait_for_token(Service::Afhent, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(t_send.expires_at.is_some());
        assert_eq!(rec.failures.lock().unwrap().len(), 1);
        assert_eq!(rec.failures.lock().unwrap()[0].0, Service::Afhent);
        assert!(rec.failures.lock().unwrap()[0].1.contains("500"));
        let addrs: Vec<String> = stub
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| {
                s.body["AppliesTo"]["EndpointReference"]["Address"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert!(
            addrs.iter().any(|a| a.ends_with("afsend/1"))
                && addrs.iter().any(|a| a.ends_with("afhent/1"))
        );

        // On demand (StatusKode 41): a new, different token.
        let renewed = mgr
            .renew_and_wait(Service::Afsend, Duration::from_secs(10))
            .await
            .unwrap();
        assert_ne!(renewed.xml.expose(), t_send.xml.expose());
        assert_eq!(
            mgr.token(Service::Afsend).unwrap().xml.expose(),
            renewed.xml.expose()
        );
        // The other service keeps its token.
        assert_eq!(
            mgr.token(Service::Afhent).unwrap().xml.expose(),
            t_hent.xml.expose()
        );

        // Expiry callback: None for both at start, then each new token.
        let exp = rec.expiry.lock().unwrap().clone();
        assert_eq!(
            &exp[..2],
            &[(Service::Afsend, None), (Service::Afhent, None)]
        );
        assert!(
            exp.iter()
                .filter(|(s, e)| *s == Service::Afsend && e.is_some())
                .count()
                >= 2
        );
        assert_eq!(mgr.expires_at(Service::Afsend), renewed.expires_at);

        let dbg = format!("{mgr:?}");
        assert!(!dbg.contains(MARK) && dbg.contains("sts"), "{dbg}");

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), mgr.stopped())
            .await
            .unwrap();
    }
}
