//! SAML tokens for the BFO: the token model, the shared slot the AMQP side reads, the token
//! sources (KOMBIT STS over mutual TLS, a file, none) and the [`TokenManager`] that keeps one
//! fresh token per BFO service.
//!
//! A token is the decoded SAML assertion XML. It is sent as the SASL EXTERNAL response
//! ([`crate::sasl`]) and in the `token` header of each Afsend message. Its text lives only
//! in a [`Secret`]; nothing here logs it or shows it in `Debug`.
//!
//! The STS protocol (paths, JSON field names, URIs) is kept in [`sts`], so it can be
//! corrected from KOMBIT's documentation without touching the logic.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::secret::Secret;
use crate::tls::{self, ClientTlsFiles, TlsError};

/// KOMBIT STS ("adgangsstyring") REST issue call: every path, JSON field name and URI.
///
/// Request (POST, JSON, mutual TLS with the system certificate):
/// `{ RequestType, AppliesTo: { EndpointReference: { Address } }, TokenType, KeyType,
///    UseKey, Anvenderkontekst: { Cvr } }`.
/// Response: `{ RequestedSecurityToken: { Assertion: <base64 XML> }, Lifetime: { Expires } }`
/// (`Lifetime` is read only when the assertion has no `Conditions/@NotOnOrAfter`).
/// Response field names are matched case-insensitively as a fallback.
pub mod sts {
    /// Appended to the configured `sts_url` (e.g. `https://adgangsstyring.<env>/runtime`).
    pub const ISSUE_PATH: &str = "/api/rest/wstrust/v1/issue";

    pub const REQUEST_TYPE: &str = "RequestType";
    pub const REQUEST_TYPE_ISSUE: &str = "http://docs.oasis-open.org/ws-sx/ws-trust/200512/Issue";
    pub const APPLIES_TO: &str = "AppliesTo";
    pub const ENDPOINT_REFERENCE: &str = "EndpointReference";
    pub const ADDRESS: &str = "Address";
    pub const TOKEN_TYPE: &str = "TokenType";
    pub const TOKEN_TYPE_SAML2: &str =
        "http://docs.oasis-open.org/wss/oasis-wss-saml-token-profile-1.1#SAMLV2.0";
    pub const KEY_TYPE: &str = "KeyType";
    pub const KEY_TYPE_PUBLIC_KEY: &str =
        "http://docs.oasis-open.org/ws-sx/ws-trust/200512/PublicKey";
    /// Base64 of the DER client certificate.
    pub const USE_KEY: &str = "UseKey";
    /// Some public samples spell it `AnvenderKontekst`; KOMBIT's own Java sample uses this.
    pub const ANVENDERKONTEKST: &str = "Anvenderkontekst";
    pub const CVR: &str = "Cvr";

    pub const REQUESTED_SECURITY_TOKEN: &str = "RequestedSecurityToken";
    pub const ASSERTION: &str = "Assertion";
    pub const LIFETIME: &str = "Lifetime";
    pub const EXPIRES: &str = "Expires";

    /// SAML 2.0 assertion namespace: `Assertion`, `Issuer`, `Conditions`.
    pub const SAML2_NS: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
    pub const SAML_ISSUER: &str = "Issuer";
    pub const SAML_CONDITIONS: &str = "Conditions";
    pub const SAML_NOT_ON_OR_AFTER: &str = "NotOnOrAfter";
}

use crate::protocol::Service;

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
    #[error("token source is \"none\"")]
    NoSource,
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
}

impl Token {
    /// Parses a token from its XML. Namespaces are resolved (prefixes do not matter); DTDs
    /// are refused. Expiry and issuer are `None` when the XML holds no SAML 2.0 assertion
    /// with them. `origin` names the source in errors.
    pub fn from_xml(xml: String, origin: &str) -> Result<Token, TokenError> {
        let (expires_at, issuer) = {
            let doc = roxmltree::Document::parse(&xml).map_err(|e| TokenError::NotXml {
                origin: origin.to_owned(),
                detail: e.to_string(),
            })?;
            let assertion = doc
                .descendants()
                .find(|n| n.has_tag_name((sts::SAML2_NS, sts::ASSERTION)));
            match assertion {
                None => (None, None),
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
                    (expires, issuer)
                }
            }
        };
        Ok(Token {
            xml: Secret::new(xml),
            expires_at,
            issuer,
        })
    }

    /// Time left before expiry (zero when expired), `None` when unknown.
    pub fn remaining(&self) -> Option<Duration> {
        self.expires_at
            .map(|e| e.duration_since(SystemTime::now()).unwrap_or_default())
    }
}

/// An xs:dateTime as SAML and WS-Trust write it (RFC 3339, UTC).
fn parse_time(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some(SystemTime::from(t))
}

/// The current token of one service, shared between the [`TokenManager`] (writer) and the
/// AMQP side (readers). Cloning is cheap (an `Arc`). Reading is synchronous, as lapin's
/// `AuthProvider::auth_starter` needs: the slot is a `tokio::sync::watch` channel, i.e. an
/// `RwLock` with change notification for [`TokenSlot::subscribe`].
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

// ------------------------------------------------------------------------------- STS

/// Settings of the STS source.
#[derive(Debug, Clone)]
pub struct StsConfig {
    /// Base URL, e.g. `https://adgangsstyring.eksterntest-stoettesystemerne.dk/runtime`;
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
        token.expires_at = field(&v, sts::LIFETIME)
            .and_then(|l| field(l, sts::EXPIRES))
            .and_then(Value::as_str)
            .and_then(parse_time);
    }
    Ok(token)
}

/// Token text as found in a response or file: XML as is, or base64 of XML (whitespace
/// and line breaks allowed). Surrounding white space is dropped.
fn decode_token_text(text: &str) -> Option<String> {
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

/// Reads a token file: XML (or base64 of XML), surrounding white space dropped.
pub fn read_token_file(path: &Path) -> Result<Token, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::File {
        path: path.to_owned(),
        source,
    })?;
    let origin = path.display().to_string();
    let xml = decode_token_text(&text).ok_or_else(|| TokenError::NotXml {
        origin: origin.clone(),
        detail: if text.trim().is_empty() {
            "the file is empty".into()
        } else {
            "neither XML nor base64 of XML".into()
        },
    })?;
    Token::from_xml(xml, &origin)
}

// ------------------------------------------------------------------------------- manager

/// Where tokens come from.
pub enum TokenSource {
    /// KOMBIT STS, one token per service.
    Sts(Arc<StsClient>),
    /// A file kept fresh by another tool; one token for both services. It is read every
    /// `file_poll_interval` and on demand, and a new content is published. The tool should
    /// replace it atomically (write a temporary file, rename it): a half-written file is
    /// reported as a failure until the next read.
    File(PathBuf),
    /// No token (PLAIN auth).
    None,
}

impl TokenSource {
    fn kind(&self) -> &'static str {
        match self {
            TokenSource::Sts(_) => "sts",
            TokenSource::File(_) => "file",
            TokenSource::None => "none",
        }
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Sts(c) => f.debug_tuple("Sts").field(c).finish(),
            TokenSource::File(p) => f.debug_tuple("File").field(p).finish(),
            TokenSource::None => f.write_str("None"),
        }
    }
}

/// Timing of the [`TokenManager`].
#[derive(Debug, Clone)]
pub struct TokenManagerConfig {
    /// Renew when this fraction of the token's lifetime (from fetch to expiry) has passed.
    pub renew_fraction: f64,
    /// First retry delay after a failed fetch; doubles up to `retry_max` (±10 % jitter).
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Renewal interval of an STS token whose expiry is unknown.
    pub renew_without_expiry: Duration,
    /// On-demand renewals ([`TokenManager::renew`]) wait until this long after the last
    /// fetch, so a BFO answering 41 in a loop does not hammer the STS.
    pub min_renew_interval: Duration,
    /// How often the file source reads its file.
    pub file_poll_interval: Duration,
}

impl Default for TokenManagerConfig {
    fn default() -> Self {
        TokenManagerConfig {
            renew_fraction: 0.8,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            renew_without_expiry: Duration::from_secs(3600),
            min_renew_interval: Duration::from_secs(10),
            file_poll_interval: Duration::from_secs(5),
        }
    }
}

/// Called with the new expiry whenever a service's token changes (and with `None` at start).
pub type ExpiryCallback = Arc<dyn Fn(Service, Option<SystemTime>) + Send + Sync>;
/// Called on every failed fetch (for the file source: when a failure starts or changes, and
/// on demand).
pub type FailureCallback = Arc<dyn Fn(Service, &TokenError) + Send + Sync>;

/// Hooks for metrics.
#[derive(Clone)]
pub struct TokenCallbacks {
    pub on_expiry: ExpiryCallback,
    pub on_failure: FailureCallback,
}

impl Default for TokenCallbacks {
    fn default() -> Self {
        TokenCallbacks {
            on_expiry: Arc::new(|_, _| {}),
            on_failure: Arc::new(|_, _| {}),
        }
    }
}

impl fmt::Debug for TokenCallbacks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenCallbacks")
    }
}

/// Why [`TokenManager::renew_and_wait`] has no new token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenewError {
    #[error("token source is \"none\"")]
    NoSource,
    #[error("no token renewal within {0:?}")]
    Timeout(Duration),
    #[error("token renewal failed: {0}")]
    Failed(String),
    #[error("token manager stopped")]
    Stopped,
}

/// Outcome of the last fetch of a service, numbered so waiters see new ones.
#[derive(Debug, Clone, Default)]
struct Attempt {
    seq: u64,
    error: Option<String>,
}

struct Inner {
    kind: &'static str,
    slots: [TokenSlot; 2],
    attempts: [watch::Sender<Attempt>; 2],
    renew: [Notify; 2],
    callbacks: TokenCallbacks,
    config: TokenManagerConfig,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Inner {
    fn publish(&self, service: Service, token: Token) {
        let expires = token.expires_at;
        tracing::info!(
            service = service.as_str(),
            expires_at = ?expires.map(time::OffsetDateTime::from),
            issuer = token.issuer.as_deref().unwrap_or("-"),
            "new token"
        );
        self.slots[service.index()].set(Some(Arc::new(token)));
        (self.callbacks.on_expiry)(service, expires);
        self.attempts[service.index()].send_modify(|a| {
            a.seq += 1;
            a.error = None;
        });
    }

    fn unchanged(&self, service: Service) {
        self.attempts[service.index()].send_modify(|a| {
            a.seq += 1;
            a.error = None;
        });
    }

    fn failed(&self, service: Service, error: &TokenError, report: bool) {
        if report {
            tracing::warn!(service = service.as_str(), error = %error, "token renewal failed");
            (self.callbacks.on_failure)(service, error);
        }
        let text = error.to_string();
        self.attempts[service.index()].send_modify(|a| {
            a.seq += 1;
            a.error = Some(text);
        });
    }

    fn backoff(&self, failures: u32) -> Duration {
        let base = self
            .config
            .retry_min
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(self.config.retry_max);
        let jitter: f64 = rand::random_range(0.9..1.1);
        base.mul_f64(jitter)
    }

    /// When to renew a token just fetched.
    fn renew_delay(&self, token: &Token) -> Duration {
        match token.remaining() {
            None => self.config.renew_without_expiry,
            Some(left) => left
                .mul_f64(self.config.renew_fraction.clamp(0.0, 1.0))
                .max(self.config.retry_min),
        }
    }
}

/// Keeps one token per [`Service`] in its [`TokenSlot`]: fetches at start, renews at
/// `renew_fraction` of the lifetime and on demand ([`TokenManager::renew`], e.g. after BFO
/// StatusKode 41), backs off on failure, reports through [`TokenCallbacks`]. Cheap to
/// clone; tasks end when the `CancellationToken` given to [`TokenManager::start`] fires.
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TokenManager");
        d.field("source", &self.inner.kind);
        for s in Service::ALL {
            d.field(s.as_str(), &self.inner.slots[s.index()]);
        }
        d.finish()
    }
}

impl TokenManager {
    /// Starts the manager's tasks (needs a Tokio runtime). The first fetch starts at once;
    /// use [`TokenManager::wait_for_token`] to wait for it.
    pub fn start(
        source: TokenSource,
        config: TokenManagerConfig,
        callbacks: TokenCallbacks,
        cancel: CancellationToken,
    ) -> TokenManager {
        let inner = Arc::new(Inner {
            kind: source.kind(),
            slots: [TokenSlot::new(), TokenSlot::new()],
            attempts: [
                watch::Sender::new(Attempt::default()),
                watch::Sender::new(Attempt::default()),
            ],
            renew: [Notify::new(), Notify::new()],
            callbacks,
            config,
            cancel,
            tasks: TaskTracker::new(),
        });
        for s in Service::ALL {
            (inner.callbacks.on_expiry)(s, None);
        }
        match source {
            TokenSource::None => {}
            TokenSource::Sts(client) => {
                for s in Service::ALL {
                    inner
                        .tasks
                        .spawn(sts_task(inner.clone(), client.clone(), s));
                }
            }
            TokenSource::File(path) => {
                inner.tasks.spawn(file_task(inner.clone(), path));
            }
        }
        inner.tasks.close();
        TokenManager { inner }
    }

    /// The slot of `service`, for [`crate::transport::amqp::connect::TokenExternalAuth`] and the `token` header.
    pub fn slot(&self, service: Service) -> TokenSlot {
        self.inner.slots[service.index()].clone()
    }

    /// The current token of `service`.
    pub fn token(&self, service: Service) -> Option<Arc<Token>> {
        self.inner.slots[service.index()].get()
    }

    /// The current token's expiry.
    pub fn expires_at(&self, service: Service) -> Option<SystemTime> {
        self.token(service).and_then(|t| t.expires_at)
    }

    /// The source kind: "sts", "file" or "none".
    pub fn source_kind(&self) -> &'static str {
        self.inner.kind
    }

    /// Asks for a new token for `service` soon (at most one fetch per `min_renew_interval`).
    /// Returns at once; a no-op with source "none".
    pub fn renew(&self, service: Service) {
        self.inner.renew[service.index()].notify_one();
    }

    /// [`TokenManager::renew`], then waits for the outcome of that fetch: the (new) token,
    /// or why there is none.
    pub async fn renew_and_wait(
        &self,
        service: Service,
        timeout: Duration,
    ) -> Result<Arc<Token>, RenewError> {
        if self.inner.kind == "none" {
            return Err(RenewError::NoSource);
        }
        let mut rx = self.inner.attempts[service.index()].subscribe();
        let before = rx.borrow_and_update().seq;
        self.renew(service);
        let wait = async {
            loop {
                if rx.changed().await.is_err() {
                    return Err(RenewError::Stopped);
                }
                let a = rx.borrow_and_update().clone();
                if a.seq > before {
                    return match a.error {
                        Some(e) => Err(RenewError::Failed(e)),
                        None => self.token(service).ok_or(RenewError::Stopped),
                    };
                }
            }
        };
        tokio::select! {
            r = wait => r,
            _ = tokio::time::sleep(timeout) => Err(RenewError::Timeout(timeout)),
            _ = self.inner.cancel.cancelled() => Err(RenewError::Stopped),
        }
    }

    /// Waits until `service` has a token (returns at once when it has one).
    pub async fn wait_for_token(&self, service: Service, timeout: Duration) -> Option<Arc<Token>> {
        let mut rx = self.inner.slots[service.index()].subscribe();
        let wait = async {
            loop {
                if let Some(t) = rx.borrow_and_update().clone() {
                    return Some(t);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// Waits until the manager's tasks have ended (after cancellation).
    pub async fn stopped(&self) {
        self.inner.tasks.wait().await;
    }
}

/// Why [`wait_next`] returned.
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    /// The deadline passed.
    Timer,
    /// Someone asked for a renewal (and `earliest` has passed).
    Demand,
    Cancelled,
}

/// Sleeps until `deadline`, cut short by an on-demand renewal of one of `services` (but not
/// before `earliest`).
async fn wait_next(
    inner: &Inner,
    services: &[Service],
    deadline: Instant,
    earliest: Instant,
) -> Wake {
    let mut deadline = deadline;
    let mut demanded = false;
    loop {
        let renew = async {
            match services {
                [one] => inner.renew[one.index()].notified().await,
                _ => tokio::select! {
                    _ = inner.renew[0].notified() => {},
                    _ = inner.renew[1].notified() => {},
                },
            }
        };
        tokio::select! {
            _ = inner.cancel.cancelled() => return Wake::Cancelled,
            _ = tokio::time::sleep_until(deadline.into()) => {
                return if demanded { Wake::Demand } else { Wake::Timer };
            }
            _ = renew => {
                if Instant::now() >= earliest {
                    return Wake::Demand;
                }
                demanded = true;
                deadline = deadline.min(earliest);
            }
        }
    }
}

async fn sts_task(inner: Arc<Inner>, client: Arc<StsClient>, service: Service) {
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            r = client.issue(service) => r,
        };
        let delay = match result {
            Ok(token) => {
                failures = 0;
                let d = inner.renew_delay(&token);
                inner.publish(service, token);
                d
            }
            Err(e) => {
                failures += 1;
                inner.failed(service, &e, true);
                inner.backoff(failures)
            }
        };
        let earliest = started + inner.config.min_renew_interval;
        if wait_next(&inner, &[service], Instant::now() + delay, earliest).await == Wake::Cancelled
        {
            return;
        }
    }
}

/// What the file source last saw: the content, or the failure it reported.
#[derive(PartialEq)]
enum FileState {
    Start,
    Content(Secret<String>),
    Failed(String),
}

async fn file_task(inner: Arc<Inner>, path: PathBuf) {
    let mut state = FileState::Start;
    // An on-demand read counts as an attempt even when nothing changed, and reports a
    // failure again; a timed poll reports a failure only when it starts or changes.
    let mut on_demand = false;
    loop {
        let read_at = Instant::now();
        match read_token_file(&path) {
            Ok(token) => {
                if state != FileState::Content(token.xml.clone()) {
                    state = FileState::Content(token.xml.clone());
                    for s in Service::ALL {
                        inner.publish(s, token.clone());
                    }
                } else if on_demand {
                    for s in Service::ALL {
                        inner.unchanged(s);
                    }
                }
            }
            Err(e) => {
                let text = e.to_string();
                let report = on_demand || state != FileState::Failed(text.clone());
                for s in Service::ALL {
                    inner.failed(s, &e, report);
                }
                state = FileState::Failed(text);
            }
        }
        let poll = inner.config.file_poll_interval;
        let earliest = read_at + inner.config.min_renew_interval.min(poll);
        match wait_next(&inner, &Service::ALL, read_at + poll, earliest).await {
            Wake::Cancelled => return,
            Wake::Timer => on_demand = false,
            Wake::Demand => on_demand = true,
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Sample assertions for tests.
    use std::time::SystemTime;

    pub fn rfc3339(t: SystemTime) -> String {
        time::OffsetDateTime::from(t)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    }

    /// A SAML 2.0 assertion (prefix `saml2`) with the given issuer, expiry and marker text.
    pub fn assertion(issuer: &str, not_on_or_after: Option<SystemTime>, marker: &str) -> String {
        let conditions = match not_on_or_after {
            Some(t) => format!(
                r#"<saml2:Conditions NotBefore="2020-01-01T00:00:00Z" NotOnOrAfter="{}"><saml2:AudienceRestriction><saml2:Audience>http://beskedfordeler.test/service/afsend/1</saml2:Audience></saml2:AudienceRestriction></saml2:Conditions>"#,
                rfc3339(t)
            ),
            None => String::new(),
        };
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><saml2:Assertion xmlns:saml2="urn:oasis:names:tc:SAML:2.0:assertion" ID="_{marker}" Version="2.0" IssueInstant="2020-01-01T00:00:00Z"><saml2:Issuer>{issuer}</saml2:Issuer><saml2:Subject><saml2:NameID>{marker}</saml2:NameID></saml2:Subject>{conditions}<saml2:AttributeStatement><saml2:Attribute Name="x"><saml2:AttributeValue>{marker}</saml2:AttributeValue></saml2:Attribute></saml2:AttributeStatement></saml2:Assertion>"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{assertion, rfc3339};
    use super::*;
    use crate::tls::testpki;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const MARK: &str = "TOPSECRETMARKER";

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
        assert!(!format!("{:?}", TokenError::NoSource).contains(MARK));
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

    // --------------------------------------------------------------- manager

    fn fast_config() -> TokenManagerConfig {
        TokenManagerConfig {
            renew_fraction: 0.8,
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_millis(200),
            renew_without_expiry: Duration::from_secs(3600),
            min_renew_interval: Duration::from_millis(10),
            file_poll_interval: Duration::from_millis(50),
        }
    }

    #[derive(Default)]
    struct Recorded {
        expiry: Mutex<Vec<(Service, Option<SystemTime>)>>,
        failures: Mutex<Vec<(Service, String)>>,
    }

    fn callbacks(rec: &Arc<Recorded>) -> TokenCallbacks {
        let (a, b) = (rec.clone(), rec.clone());
        TokenCallbacks {
            on_expiry: Arc::new(move |s, e| a.expiry.lock().unwrap().push((s, e))),
            on_failure: Arc::new(move |s, e| b.failures.lock().unwrap().push((s, e.to_string()))),
        }
    }

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
            fast_config(),
            callbacks(&rec),
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

    #[tokio::test]
    async fn manager_sts_renews_before_expiry() {
        let pki = testpki::make();
        let stub = stub(
            &pki,
            Arc::new(|_| {
                let exp = SystemTime::now() + Duration::from_millis(1500);
                (200, ok_response(&assertion("sts", Some(exp), MARK), None))
            }),
        )
        .await;
        let cancel = CancellationToken::new();
        let client = StsClient::new(sts_config(&pki, &stub.base)).unwrap();
        let mut cfg = fast_config();
        cfg.renew_fraction = 0.5;
        let mgr = TokenManager::start(
            TokenSource::Sts(Arc::new(client)),
            cfg,
            TokenCallbacks::default(),
            cancel.clone(),
        );
        mgr.wait_for_token(Service::Afsend, Duration::from_secs(10))
            .await
            .unwrap();
        // Lifetime 1.5 s, renewal after 0.75 s: about 3 more fetches per service.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let n = stub.seen.lock().unwrap().len();
        assert!(n >= 6, "only {n} STS calls");
        cancel.cancel();
    }

    #[tokio::test]
    async fn manager_sts_failure_is_reported_to_waiter() {
        let pki = testpki::make();
        let stub = stub(&pki, Arc::new(|_| (500, "down".into()))).await;
        let rec = Arc::new(Recorded::default());
        let cancel = CancellationToken::new();
        let client = StsClient::new(sts_config(&pki, &stub.base)).unwrap();
        let mgr = TokenManager::start(
            TokenSource::Sts(Arc::new(client)),
            fast_config(),
            callbacks(&rec),
            cancel.clone(),
        );
        let e = mgr
            .renew_and_wait(Service::Afsend, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, RenewError::Failed(m) if m.contains("500")),
            "{e}"
        );
        assert!(mgr.token(Service::Afsend).is_none());
        // Backoff: a handful of retries in 300 ms, not hundreds.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = rec.failures.lock().unwrap().len();
        assert!((2..=20).contains(&n), "{n} failures");
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), mgr.stopped())
            .await
            .unwrap();
    }

    /// As a token tool should write: a temporary file renamed over the old one.
    fn write_atomic(path: &Path, text: String) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[tokio::test]
    async fn manager_file_source_detects_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.xml");
        let exp1 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        write_atomic(&path, assertion("file", Some(exp1), "FIRST") + "\n");

        let rec = Arc::new(Recorded::default());
        let cancel = CancellationToken::new();
        let mgr = TokenManager::start(
            TokenSource::File(path.clone()),
            fast_config(),
            callbacks(&rec),
            cancel.clone(),
        );
        let t1 = mgr
            .wait_for_token(Service::Afsend, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(t1.xml.expose().contains("FIRST") && !t1.xml.expose().ends_with('\n'));
        assert_eq!(t1.expires_at, Some(exp1));
        // One token for both services.
        let h1 = mgr
            .wait_for_token(Service::Afhent, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(h1.xml.expose(), t1.xml.expose());

        // Same length, new content: detected by content.
        let mut rx = mgr.slot(Service::Afhent).subscribe();
        rx.borrow_and_update();
        write_atomic(&path, assertion("file", Some(exp1), "SECND"));
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        let t2 = mgr.token(Service::Afhent).unwrap();
        assert!(t2.xml.expose().contains("SECND"));
        assert_eq!(
            mgr.token(Service::Afsend).unwrap().xml.expose(),
            t2.xml.expose()
        );

        // Unchanged file: no new publication.
        let before = rec.expiry.lock().unwrap().len();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(rec.expiry.lock().unwrap().len(), before);

        // Missing file: one failure report per service (not one per poll); token kept.
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let failures = rec.failures.lock().unwrap().clone();
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].1.contains("token.xml"));
        assert!(mgr.token(Service::Afsend).is_some());
        // On demand: reported again, and the waiter learns why.
        let e = mgr
            .renew_and_wait(Service::Afsend, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, RenewError::Failed(m) if m.contains("token.xml")),
            "{e}"
        );

        // Base64 content works too.
        write_atomic(&path, BASE64.encode(assertion("file", None, "THIRD")));
        let t3 = mgr
            .renew_and_wait(Service::Afsend, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(t3.xml.expose().contains("THIRD"));

        let dbg = format!("{mgr:?}");
        assert!(
            !dbg.contains("THIRD") && !dbg.contains("Assertion"),
            "{dbg}"
        );
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), mgr.stopped())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn manager_none_source() {
        let cancel = CancellationToken::new();
        let mgr = TokenManager::start(
            TokenSource::None,
            fast_config(),
            TokenCallbacks::default(),
            cancel.clone(),
        );
        assert!(mgr.token(Service::Afsend).is_none());
        assert_eq!(
            mgr.renew_and_wait(Service::Afsend, Duration::from_millis(10))
                .await
                .unwrap_err(),
            RenewError::NoSource
        );
        assert!(
            mgr.wait_for_token(Service::Afhent, Duration::from_millis(20))
                .await
                .is_none()
        );
        cancel.cancel();
        mgr.stopped().await;
    }
}
