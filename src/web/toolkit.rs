//! `--web.config.file`: the web configuration file that Prometheus exporters share
//! (prometheus/exporter-toolkit's `docs/web-configuration.md`), so an operator reuses the
//! file of their node_exporter. Read with the same rules: unknown keys are errors, relative
//! paths are relative to the file's directory, an empty `tls_server_config` means plain
//! HTTP, and only five response headers may be set.
//!
//! Where rustls cannot do what Go's crypto/tls does, the file is refused with a reason
//! rather than served differently: TLS 1.0 and 1.1, the curve P-521, and CBC cipher
//! suites. A verifying `client_auth_type` needs a CA (`client_ca_file` or `client_ca`;
//! Go would fall back to the system roots, which is rarely what an operator meant).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use serde::Deserialize;

use super::auth::Policy;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tls_server_config: Option<TlsServer>,
    #[serde(default)]
    http_server_config: Option<HttpServer>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
    #[serde(default)]
    rate_limit: Option<RateLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsServer {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpServer {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimit {
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    #[serde(default)]
    burst: u32,
}

/// A web configuration, loaded and checked.
pub(crate) struct WebConfig {
    /// `None`: plain HTTP.
    pub tls: Option<ServerConfig>,
    pub http2: bool,
    pub policy: Policy,
}

/// The headers exporter-toolkit lets a file set, and the values it allows (none: any).
const HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// Reads and checks the file: every error names the file and the key.
pub(crate) fn load(path: &Path) -> Result<WebConfig, String> {
    let at = |e: String| format!("{}: {e}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| at(format!("cannot read: {e}")))?;
    let file: File = if text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    }) {
        File::default()
    } else {
        serde_norway::from_str(&text).map_err(|e| at(e.to_string()))?
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let http = file.http_server_config.unwrap_or_default();
    let http2 = http.http2.unwrap_or(true);
    let tls = match file.tls_server_config {
        Some(t) if t.enabled() => Some(tls_config(t, dir, http2).map_err(at)?),
        _ => None,
    };
    let users = file.basic_auth_users.unwrap_or_default();
    let mut cost = 0;
    for (user, hash) in &users {
        let parts: bcrypt::HashParts = hash.parse().map_err(|e| {
            at(format!(
                "basic_auth_users.{user}: not a bcrypt hash ({e}); make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`"
            ))
        })?;
        cost = cost.max(parts.get_cost());
    }
    // Unknown users are checked against this, at the users' cost: no timing difference.
    let decoy = if users.is_empty() {
        String::new()
    } else {
        bcrypt::hash(uuid::Uuid::new_v4().to_string(), cost).map_err(|e| at(e.to_string()))?
    };
    let mut headers = vec![];
    for (name, value) in http.headers.unwrap_or_default() {
        let Some((_, allowed)) = HEADERS.iter().find(|(h, _)| *h == name) else {
            return Err(at(format!(
                "http_server_config.headers: HTTP header {name:?} can not be configured (only {})",
                HEADERS.map(|h| h.0).join(", ")
            )));
        };
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(at(format!(
                "http_server_config.headers.{name}: expected one of {allowed:?}, got {value:?}"
            )));
        }
        if value.is_empty() {
            continue;
        }
        let v = HeaderValue::from_str(&value)
            .map_err(|e| at(format!("http_server_config.headers.{name}: {e}")))?;
        headers.push((HeaderName::from_static(lower(&name)), v));
    }
    let rate = match file.rate_limit {
        Some(RateLimit {
            interval: Some(i),
            burst,
        }) if !i.is_zero() => {
            if burst == 0 {
                return Err(at(
                    "rate_limit.burst: must be at least 1 with an interval (0 would refuse every request)".into(),
                ));
            }
            Some((i, burst))
        }
        _ => None,
    };
    Ok(WebConfig {
        tls,
        http2,
        policy: Policy {
            users,
            decoy,
            headers,
            rate,
        },
    })
}

fn lower(name: &str) -> &'static str {
    match name {
        "Strict-Transport-Security" => "strict-transport-security",
        "X-Content-Type-Options" => "x-content-type-options",
        "X-Frame-Options" => "x-frame-options",
        "X-XSS-Protection" => "x-xss-protection",
        _ => "content-security-policy",
    }
}

impl TlsServer {
    /// As exporter-toolkit: any TLS key set turns TLS on.
    fn enabled(&self) -> bool {
        self.cert.is_some()
            || self.key.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.client_ca.is_some()
            || self.client_ca_file.is_some()
            || self
                .client_auth_type
                .as_deref()
                .is_some_and(|s| !s.is_empty())
    }
}

fn pem(
    inline: Option<String>,
    file: Option<PathBuf>,
    dir: &Path,
    key: &str,
) -> Result<Option<Vec<u8>>, String> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(format!(
            "tls_server_config: {key} and {key}_file are both set; use one"
        )),
        (Some(text), None) => Ok(Some(text.into_bytes())),
        (None, Some(f)) => {
            let f = dir.join(f);
            std::fs::read(&f).map(Some).map_err(|e| {
                format!(
                    "tls_server_config.{key}_file: cannot read {}: {e}",
                    f.display()
                )
            })
        }
        (None, None) => Ok(None),
    }
}

fn certificates(bytes: &[u8], key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls_server_config.{key}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("tls_server_config.{key}: no PEM certificate in it"));
    }
    Ok(certs)
}

fn version(v: Option<&str>, key: &str, default: u16) -> Result<u16, String> {
    match v {
        None | Some("") => Ok(default),
        Some("TLS12") => Ok(12),
        Some("TLS13") => Ok(13),
        Some("TLS10" | "TLS11") => Err(format!(
            "tls_server_config.{key}: {} is not supported (rustls speaks TLS12 and TLS13)",
            v.unwrap_or_default()
        )),
        Some(other) => Err(format!(
            "tls_server_config.{key}: unknown TLS version {other:?} (TLS12, TLS13)"
        )),
    }
}

fn tls_config(t: TlsServer, dir: &Path, http2: bool) -> Result<ServerConfig, String> {
    let cert = pem(t.cert, t.cert_file, dir, "cert")?
        .ok_or("tls_server_config: missing one of cert or cert_file")?;
    let key = pem(t.key, t.key_file, dir, "key")?
        .ok_or("tls_server_config: missing one of key or key_file")?;
    let chain = certificates(&cert, "cert")?;
    let key = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| format!("tls_server_config.key: no usable PEM private key: {e}"))?;
    let min = version(t.min_version.as_deref(), "min_version", 12)?;
    let max = version(t.max_version.as_deref(), "max_version", 13)?;
    if min > max {
        return Err("tls_server_config: min_version is above max_version".into());
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, p)| p)
            .collect();
    let provider = Arc::new(provider(
        t.cipher_suites.as_deref(),
        t.curve_preferences.as_deref(),
    )?);
    let ca = match pem(t.client_ca, t.client_ca_file, dir, "client_ca")? {
        Some(bytes) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(&bytes, "client_ca")? {
                roots
                    .add(c)
                    .map_err(|e| format!("tls_server_config.client_ca: {e}"))?;
            }
            Some(Arc::new(roots))
        }
        None => None,
    };
    let verifier = verifier(
        t.client_auth_type.as_deref().unwrap_or(""),
        ca,
        t.client_allowed_sans,
        &provider,
    )?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls_server_config: certificate and key: {e}"))?;
    config.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(true);
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// ring's suites and groups, narrowed and ordered as the file says. TLS 1.3 suites are not
/// configurable (as in Go): they stay, and naming one is accepted.
fn provider(
    suites: Option<&[String]>,
    curves: Option<&[String]>,
) -> Result<CryptoProvider, String> {
    let mut p = rustls::crypto::ring::default_provider();
    if let Some(names) = suites.filter(|s| !s.is_empty()) {
        let all = p.cipher_suites.clone();
        let name = |s: &rustls::SupportedCipherSuite| s.suite().as_str().unwrap_or("").to_string();
        let mut chosen: Vec<_> = all
            .iter()
            .filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls13(_)))
            .copied()
            .collect();
        for n in names {
            match all.iter().find(|s| name(s) == *n) {
                Some(s) if !chosen.contains(s) => chosen.push(*s),
                Some(_) => {}
                None => {
                    return Err(format!(
                        "tls_server_config.cipher_suites: {n:?} is not supported; supported: {}",
                        all.iter().map(name).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
        p.cipher_suites = chosen;
    }
    if let Some(names) = curves.filter(|c| !c.is_empty()) {
        let mut groups = vec![];
        for n in names {
            let g = match n.as_str() {
                "X25519" => rustls::crypto::ring::kx_group::X25519,
                "CurveP256" => rustls::crypto::ring::kx_group::SECP256R1,
                "CurveP384" => rustls::crypto::ring::kx_group::SECP384R1,
                _ => {
                    return Err(format!(
                        "tls_server_config.curve_preferences: {n:?} is not supported (X25519, CurveP256, CurveP384)"
                    ));
                }
            };
            groups.push(g);
        }
        p.kx_groups = groups;
    }
    Ok(p)
}

fn verifier(
    auth: &str,
    ca: Option<Arc<RootCertStore>>,
    sans: Option<Vec<String>>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let verifying = |optional: bool| -> Result<Arc<dyn ClientCertVerifier>, String> {
        let roots = ca.clone().ok_or(format!(
            "tls_server_config.client_auth_type: {auth} needs client_ca_file (or client_ca)"
        ))?;
        let b = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
        let b = if optional {
            b.allow_unauthenticated()
        } else {
            b
        };
        b.build()
            .map_err(|e| format!("tls_server_config.client_ca: {e}"))
    };
    let (chain, mandatory) = match auth {
        "" | "NoClientCert" => {
            if ca.is_some() {
                return Err("tls_server_config: client CA's have been configured without a Client Auth Policy (client_auth_type)".into());
            }
            if sans.is_some() {
                return Err(SANS_NEED.into());
            }
            return Ok(WebPkiClientVerifier::no_client_auth());
        }
        "RequestClientCert" => (None, false),
        "RequireAnyClientCert" | "RequireClientCert" => (None, true),
        "VerifyClientCertIfGiven" => (Some(verifying(true)?), false),
        "RequireAndVerifyClientCert" => (Some(verifying(false)?), true),
        other => {
            return Err(format!(
                "tls_server_config.client_auth_type: invalid ClientAuth {other:?} (NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
            ));
        }
    };
    if sans.is_some() && !mandatory {
        return Err(SANS_NEED.into());
    }
    Ok(Arc::new(ClientAuth {
        chain,
        mandatory,
        allowed_sans: sans,
        algorithms: provider.signature_verification_algorithms,
    }))
}

const SANS_NEED: &str = "tls_server_config.client_allowed_sans: requires client_auth_type to be one of RequireAnyClientCert or RequireAndVerifyClientCert";

/// Client certificates as `client_auth_type` asks: the chain verified against the CA
/// (`chain`), or any certificate (`RequestClientCert`, `RequireAnyClientCert`: only that
/// the client holds its key); then, with `client_allowed_sans`, one of these DNS names,
/// e-mail addresses, IP addresses or URIs in it.
#[derive(Debug)]
struct ClientAuth {
    chain: Option<Arc<dyn ClientCertVerifier>>,
    mandatory: bool,
    allowed_sans: Option<Vec<String>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientAuth {
    fn san_allowed(allowed: &[String], der: &[u8]) -> bool {
        use x509_parser::extensions::GeneralName;
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return false;
        };
        let Ok(Some(san)) = cert.subject_alternative_name() else {
            return false;
        };
        san.value.general_names.iter().any(|n| {
            let v = match n {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    s.to_string()
                }
                GeneralName::IPAddress(b) => match <[u8; 4]>::try_from(*b) {
                    Ok(v4) => std::net::Ipv4Addr::from(v4).to_string(),
                    Err(_) => match <[u8; 16]>::try_from(*b) {
                        Ok(v6) => std::net::Ipv6Addr::from(v6).to_string(),
                        Err(_) => return false,
                    },
                },
                _ => return false,
            };
            allowed.contains(&v)
        })
    }
}

impl ClientCertVerifier for ClientAuth {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.as_ref().map_or(&[], |c| c.root_hint_subjects())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Some(c) = &self.chain {
            c.verify_client_cert(end_entity, intermediates, now)?;
        }
        match &self.allowed_sans {
            Some(allowed) if !Self::san_allowed(allowed, end_entity) => {
                Err(rustls::Error::General(format!(
                    "could not find allowed SANs in client cert, allowed: {allowed:?}"
                )))
            }
            _ => Ok(ClientCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
