//! A local stand-in for KOMBIT's STS, for tests and the benchmark: the issue endpoint over
//! mutual TLS, answering each request with a SAML assertion that names the request's
//! `Anvenderkontekst.Cvr` (the OIOSAML attribute `crate::protocol::sts::CVR_ATTRIBUTE`) and
//! expires after a set lifetime, and counting the requests per CVR.
//!
//! Nothing signs the assertion: the emulator reads what a token names, as the
//! Beskedfordeler's dataafgrænsning does, but trusts it. It is not a security component;
//! it lets a test see that each municipality's messages go out under a token of that
//! municipality, and the benchmark count STS requests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::protocol::sts;

/// A running stub.
pub struct StsStub {
    /// The base URL to configure as `[token] sts_url`.
    pub url: String,
    requests: Arc<Mutex<BTreeMap<String, u64>>>,
    stop: CancellationToken,
}

#[derive(Clone)]
struct Shared {
    lifetime: Duration,
    requests: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl StsStub {
    /// Serves on 127.0.0.1 (a free port) with the server certificate `cert_file`/`key_file`,
    /// asking clients for a certificate issued by `client_ca_file`; every token expires
    /// `lifetime` after it is issued. Needs a Tokio runtime; stops when dropped.
    pub async fn start(
        cert_file: &Path,
        key_file: &Path,
        client_ca_file: &Path,
        lifetime: Duration,
    ) -> anyhow::Result<StsStub> {
        crate::tls::install_crypto_provider();
        let config = crate::tls::server_config(cert_file, key_file, Some(client_ca_file))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let shared = Shared {
            lifetime,
            requests: Arc::default(),
        };
        let router = axum::Router::new()
            .route(&format!("/runtime{}", sts::ISSUE_PATH), post(issue))
            .with_state(shared.clone());
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let (acceptor, router, s) = (acceptor.clone(), router.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let mut router = router.clone();
                            async move {
                                let req = req.map(axum::body::Body::new);
                                tower_service::Service::call(&mut router, req).await
                            }
                        },
                    );
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    tokio::select! {
                        _ = s.cancelled() => {}
                        _ = builder.serve_connection(TokioIo::new(tls), service) => {}
                    }
                });
            }
        });
        Ok(StsStub {
            url: format!("https://localhost:{port}/runtime"),
            requests: shared.requests,
            stop,
        })
    }

    /// Requests so far, by CVR.
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests so far, over every CVR.
    pub fn total(&self) -> u64 {
        self.requests.lock().unwrap().values().sum()
    }
}

impl Drop for StsStub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A SAML 2.0 assertion for `cvr` from issuer `https://sts.stub`, valid until `until`: what
/// the stub issues, and what tests write into token files.
pub fn assertion(cvr: &str, until: SystemTime) -> String {
    let f = &time::format_description::well_known::Rfc3339;
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let until = time::OffsetDateTime::from(until)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (now, until) = (
        now.format(f).unwrap_or_default(),
        until.format(f).unwrap_or_default(),
    );
    format!(
        r#"<saml:Assertion xmlns:saml="{ns}" ID="_{id}" Version="2.0" IssueInstant="{now}"><saml:Issuer>https://sts.stub</saml:Issuer><saml:Conditions NotBefore="{now}" NotOnOrAfter="{until}"/><saml:AttributeStatement><saml:Attribute Name="{attr}"><saml:AttributeValue>{cvr}</saml:AttributeValue></saml:Attribute></saml:AttributeStatement></saml:Assertion>"#,
        ns = sts::SAML2_NS,
        id = uuid::Uuid::new_v4().simple(),
        attr = sts::CVR_ATTRIBUTE,
    )
}

async fn issue(
    State(shared): State<Shared>,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, String) {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(cvr) = request
        .get(sts::ANVENDERKONTEKST)
        .and_then(|a| a.get(sts::CVR))
        .and_then(Value::as_str)
    else {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            r#"{"message":"no Anvenderkontekst.Cvr"}"#.into(),
        );
    };
    *shared
        .requests
        .lock()
        .unwrap()
        .entry(cvr.to_string())
        .or_default() += 1;
    let xml = assertion(cvr, SystemTime::now() + shared.lifetime);
    let answer = serde_json::json!({
        sts::REQUESTED_SECURITY_TOKEN: { sts::ASSERTION: BASE64.encode(xml.as_bytes()) },
        sts::TOKEN_TYPE: sts::TOKEN_TYPE_SAML2,
    });
    (axum::http::StatusCode::OK, answer.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Service;
    use crate::tls::testpki;
    use crate::token::{StsClient, StsConfig, Token};

    #[tokio::test]
    async fn issues_a_token_naming_the_requested_cvr() {
        let pki = testpki::make();
        let stub = StsStub::start(
            &pki.server_cert,
            &pki.server_key,
            &pki.ca,
            Duration::from_secs(300),
        )
        .await
        .unwrap();
        for cvr in ["11111111", "22222222", "22222222"] {
            let client = StsClient::new(StsConfig {
                url: stub.url.clone(),
                cvr: cvr.into(),
                afsend_entity_id: "http://bfo.test/afsend".into(),
                afhent_entity_id: "http://bfo.test/afhent".into(),
                tls: pki.client_files(),
                timeout: Duration::from_secs(10),
            })
            .unwrap();
            let t: Token = client.issue(Service::Afsend).await.unwrap();
            assert_eq!(t.cvr.as_deref(), Some(cvr));
            let left = t.remaining().unwrap();
            assert!(left > Duration::from_secs(290) && left <= Duration::from_secs(300));
        }
        let counts = stub.requests();
        assert_eq!(counts.get("11111111"), Some(&1));
        assert_eq!(counts.get("22222222"), Some(&2));
        assert_eq!(stub.total(), 3);
    }
}
