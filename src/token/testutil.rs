//! Test helpers shared by the token files: sample assertions, a recorder for the
//! manager's callbacks, and the scripted token source and harness that run the manager
//! on tokio's paused clock. One copy, so each file's tests speak of the same tokens and
//! the same timing.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::manager::{RenewError, TokenIssuer};
use super::model::TokenError;
use super::{Token, TokenCallbacks, TokenManager, TokenManagerConfig, TokenSource};
use crate::protocol::Service;
use crate::secret::Secret;

/// Marker text inside test tokens: a test fails if it shows up in `Debug` or an error.
pub const MARK: &str = "TOPSECRETMARKER";

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

/// What the manager reported through its [`TokenCallbacks`], in order.
#[derive(Default)]
pub struct Recorded {
    pub expiry: Mutex<Vec<(Service, Option<SystemTime>)>>,
    pub failures: Mutex<Vec<(Service, String)>>,
}

impl Recorded {
    pub fn callbacks(self: &Arc<Self>) -> TokenCallbacks {
        let (a, b) = (self.clone(), self.clone());
        TokenCallbacks {
            on_expiry: Arc::new(move |s, e| a.expiry.lock().unwrap().push((s, e))),
            on_failure: Arc::new(move |s, e| b.failures.lock().unwrap().push((s, e.to_string()))),
        }
    }
}

pub const S: Duration = Duration::from_secs(1);
pub const MS: Duration = Duration::from_millis(1);
/// How early a renewal computed from a wall-clock expiry may come.
pub const SLACK: Duration = Duration::from_millis(100);

/// The timing of the schedule's and the manager's tests: small round numbers, so the
/// expected times can be read off the test.
pub fn timing() -> TokenManagerConfig {
    TokenManagerConfig {
        renew_fraction: 0.5,
        retry_min: S,
        retry_max: 8 * S,
        renew_without_expiry: 30 * S,
        min_renew_interval: S,
        file_poll_interval: 5 * S,
        renew_jitter: 0.0,
        sts_permits: None,
    }
}

pub type Script = Box<dyn Fn(Service, usize) -> Result<Token, TokenError> + Send + Sync>;

/// A token source that answers from a script, given the service and its call number
/// (from 0), and records when each service asked, on tokio's clock.
pub struct Scripted {
    script: Script,
    calls: Mutex<Vec<(Service, Instant)>>,
}

impl fmt::Debug for Scripted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scripted")
    }
}

#[async_trait]
impl TokenIssuer for Scripted {
    async fn issue(&self, service: Service) -> Result<Token, TokenError> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            calls.push((service, Instant::now()));
            calls.iter().filter(|(s, _)| *s == service).count() - 1
        };
        (self.script)(service, n)
    }
}

impl Scripted {
    /// How often `service` was asked for a token.
    pub fn count(&self, service: Service) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|(s, _)| *s == service).count()
    }
}

pub fn scripted(
    script: impl Fn(Service, usize) -> Result<Token, TokenError> + Send + Sync + 'static,
) -> (Arc<Scripted>, TokenSource) {
    let source = Arc::new(Scripted {
        script: Box::new(script),
        calls: Mutex::default(),
    });
    (source.clone(), TokenSource::Sts(source))
}

/// Token number `n`, expiring `lifetime` from now (wall clock), or never saying when.
pub fn token(n: usize, lifetime: Option<Duration>) -> Result<Token, TokenError> {
    Ok(Token {
        xml: Secret::new(format!("<t>{MARK}{n}</t>")),
        expires_at: lifetime.map(|l| SystemTime::now() + l),
        issuer: Some("scripted".into()),
        cvr: None,
    })
}

pub fn down() -> Result<Token, TokenError> {
    Err(TokenError::Status {
        url: "https://sts.test/issue".into(),
        status: 500,
        body: "down".into(),
    })
}

/// The number `token` gave the token.
pub fn number(t: &Token) -> usize {
    let text = t.xml.expose();
    text[3 + MARK.len()..text.len() - 4].parse().unwrap()
}

/// A started manager, its recorded callbacks and the instant it started.
pub struct Harness {
    pub mgr: TokenManager,
    pub rec: Arc<Recorded>,
    cancel: CancellationToken,
    t0: Instant,
}

impl Harness {
    pub fn start(source: TokenSource, config: TokenManagerConfig) -> Harness {
        Harness::start_for(source, &Service::ALL, config)
    }

    /// A manager that keeps tokens for `services` only.
    pub fn start_for(
        source: TokenSource,
        services: &[Service],
        config: TokenManagerConfig,
    ) -> Harness {
        let rec = Arc::new(Recorded::default());
        let cancel = CancellationToken::new();
        let t0 = Instant::now();
        let mgr = TokenManager::start(source, services, config, rec.callbacks(), cancel.clone());
        Harness {
            mgr,
            rec,
            cancel,
            t0,
        }
    }

    /// Lets virtual time run to `offset` after the start. On the paused clock this is
    /// no real wait: the runtime fires every earlier timer in order first, so all the
    /// manager does before then has been done when this returns.
    pub async fn run_until(&self, offset: Duration) {
        tokio::time::sleep_until(self.t0 + offset).await;
    }

    pub fn elapsed(&self) -> Duration {
        Instant::now() - self.t0
    }

    /// When `service` asked `source`, as offsets from the start.
    pub fn calls(&self, source: &Scripted, service: Service) -> Vec<Duration> {
        let calls = source.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(s, _)| *s == service)
            .map(|(_, at)| *at - self.t0)
            .collect()
    }

    pub fn failures(&self, service: Service) -> Vec<String> {
        let failures = self.rec.failures.lock().unwrap();
        failures
            .iter()
            .filter(|(s, _)| *s == service)
            .map(|(_, e)| e.clone())
            .collect()
    }

    pub fn expiries(&self) -> Vec<(Service, Option<SystemTime>)> {
        self.rec.expiry.lock().unwrap().clone()
    }

    /// Asks for a renewal of `service` and expects it to fail with `why` in the message.
    pub async fn renewal_fails(&self, service: Service, why: &str) {
        let e = self.mgr.renew_and_wait(service, 10 * S).await.unwrap_err();
        assert!(
            matches!(&e, RenewError::Failed(m) if m.contains(why)),
            "{e}"
        );
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        self.mgr.stopped().await;
    }
}

/// Each of `actual` is `expected` or at most `early` before it.
pub fn assert_times(actual: &[Duration], expected: &[Duration], early: Duration) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert!(*a <= *e && *a + early >= *e, "{actual:?} vs {expected:?}");
    }
}
