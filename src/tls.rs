//! TLS material: loads CA, client identity (PEM or PKCS#12) and server certificates from
//! files into rustls configurations, for every TLS user in the exporter.
//!
//! One crypto provider for the whole process: *ring* ([`install_crypto_provider`]). Every
//! config here is also built with ring explicitly, so none depends on the process default.
//!
//! How each consumer uses it:
//! - **AMQP (lapin 4)**: lapin's own TLS entry point takes an `OwnedTLSConfig` (PEM/PKCS#12
//!   bytes) and builds its own rustls config, with its own root store selection and
//!   error messages. Instead, [`crate::transport::amqp::connect::connect`] hands lapin a transport through
//!   `lapin::Connection::connector`: it opens the TCP stream and, for `amqps://`, wraps it
//!   with `lapin::tcp::RustlsConnector::from(Arc<rustls::ClientConfig>)` built by
//!   [`client_config`]. The same closure is used again when lapin reconnects. This needs
//!   lapin's `rustls-native-certs` feature (it compiles tcp-stream's async rustls path);
//!   with `rustls--ring` alone lapin has no TLS transport and opens `amqps://` as plain TCP.
//! - **HTTPS client (reqwest 0.13, STS)**: [`reqwest_client`] passes the
//!   `rustls::ClientConfig` from [`client_config`] to
//!   `ClientBuilder::tls_backend_preconfigured` (the renamed `use_preconfigured_tls`). This
//!   needs reqwest's `rustls-no-provider` feature and the same rustls 0.23 as ours: reqwest
//!   downcasts the value, and an unknown type makes `build()` fail.
//! - **Push HTTPS listener**: [`server_config`] gives a `rustls::ServerConfig` for
//!   `tokio_rustls::TlsAcceptor::from(Arc::new(config))`; with a client CA it requires and
//!   verifies client certificates (mutual TLS, as BFO presents one).
//! - **Diagnostics**: [`describe_certificate`] and [`client_certificate_summary`] give the
//!   subject and expiry of a certificate (never key material).
//!
//! Errors name the file and say what is wrong with it. Private keys are held in
//! [`Secret`] and never printed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::secret::Secret;

/// What went wrong while loading TLS material. Every variant names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks or one DER certificate)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: {what} does not parse: {detail}", path.display())]
    BadPem {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("{}: no private key in it (expected PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: cannot open PKCS#12 file: wrong password, or not a PKCS#12 file ({detail})", path.display())]
    Pkcs12 { path: PathBuf, detail: String },
    #[error("{}: PKCS#12 file holds no private key with its certificate", path.display())]
    Pkcs12NoKey { path: PathBuf },
    #[error("{}: no usable CA certificate in it: {detail}", path.display())]
    BadCa { path: PathBuf, detail: String },
    #[error("no CA certificates found in the system store; set a CA file")]
    NoSystemRoots,
    #[error("client identity from {files}: {source}")]
    ClientIdentity {
        files: String,
        #[source]
        source: rustls::Error,
    },
    #[error("server identity from {files}: {source}")]
    ServerIdentity {
        files: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{}: client CA for mutual TLS is unusable: {detail}", path.display())]
    ClientVerifier { path: PathBuf, detail: String },
    #[error("TLS settings: {0}")]
    Settings(String),
    #[error("TLS protocol setup: {0}")]
    Protocol(#[source] rustls::Error),
    #[error("building the HTTPS client: {0}")]
    Http(#[source] reqwest::Error),
}

/// Installs ring as the process-wide rustls crypto provider. Idempotent: a provider that
/// is already installed (by us or by a library) is left in place.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The provider every config here is built with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Files for a TLS client (AMQPS towards BFO, HTTPS towards the STS). All optional:
/// no `ca_file` means the system roots; no identity means no client certificate.
/// The identity is either `cert_file` + `key_file` (PEM) or `pkcs12_file`
/// (+ `pkcs12_password_file`, whose content is trimmed; none means an empty password).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub pkcs12_file: Option<PathBuf>,
    pub pkcs12_password_file: Option<PathBuf>,
}

/// A client certificate chain (leaf first) with its private key.
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Secret<PrivateKeyDer<'static>>,
    /// Where it came from, for messages.
    pub source: String,
}

impl ClientIdentity {
    /// The leaf (our own) certificate, DER.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("source", &self.source)
            .field("certificates", &self.chain.len())
            .field(
                "subject",
                &describe_certificate(self.leaf()).map(|s| s.subject),
            )
            .field("key", &self.key)
            .finish()
    }
}

/// Subject and expiry of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    pub not_after: SystemTime,
}

/// Subject (RFC 4514 style) and notAfter of a DER certificate; `None` if it does not parse.
pub fn describe_certificate(der: &[u8]) -> Option<CertSummary> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let ts = cert.validity().not_after.timestamp();
    let not_after = if ts >= 0 {
        UNIX_EPOCH + Duration::from_secs(ts as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(ts.unsigned_abs())
    };
    Some(CertSummary {
        subject: cert.subject().to_string(),
        not_after,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_error(path: &Path, what: &'static str, e: pem::Error) -> TlsError {
    TlsError::BadPem {
        path: path.to_owned(),
        what,
        detail: e.to_string(),
    }
}

/// All certificates in a PEM file (or a single DER certificate). At least one, or an error.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    if bytes.first() == Some(&0x30) {
        // DER: a SEQUENCE. Accept it when it really is a certificate.
        if x509_parser::parse_x509_certificate(&bytes).is_ok() {
            return Ok(vec![CertificateDer::from(bytes)]);
        }
    }
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "certificate PEM", e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn load_private_key(path: &Path) -> Result<Secret<PrivateKeyDer<'static>>, TlsError> {
    let bytes = Secret::new(read(path)?);
    match PrivateKeyDer::from_pem_slice(bytes.expose()) {
        Ok(key) => Ok(Secret::new(key)),
        Err(pem::Error::NoItemsFound) => Err(TlsError::NoKey {
            path: path.to_owned(),
        }),
        Err(e) => Err(pem_error(path, "private key PEM", e)),
    }
}

fn read_password(path: &Path) -> Result<Secret<String>, TlsError> {
    let bytes = read(path)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        TlsError::Settings(format!("{}: password file is not UTF-8", path.display()))
    })?;
    Ok(Secret::new(text.trim().to_owned()))
}

/// Reads a PKCS#12 file: the private key and its certificate chain (leaf first).
pub fn load_pkcs12(path: &Path, password_file: Option<&Path>) -> Result<ClientIdentity, TlsError> {
    let der = read(path)?;
    let password = match password_file {
        Some(p) => read_password(p)?,
        None => Secret::new(String::new()),
    };
    let store = p12_keystore::KeyStore::from_pkcs12(&der, password.expose()).map_err(|e| {
        TlsError::Pkcs12 {
            path: path.to_owned(),
            detail: e.to_string(),
        }
    })?;
    let Some((_, chain)) = store.private_key_chain() else {
        return Err(TlsError::Pkcs12NoKey {
            path: path.to_owned(),
        });
    };
    if chain.chain().is_empty() {
        return Err(TlsError::Pkcs12NoKey {
            path: path.to_owned(),
        });
    }
    Ok(ClientIdentity {
        chain: chain
            .chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_der().to_vec()))
            .collect(),
        key: Secret::new(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            chain.key().to_vec(),
        ))),
        source: path.display().to_string(),
    })
}

/// The client identity the files describe, if any.
pub fn load_client_identity(files: &ClientTlsFiles) -> Result<Option<ClientIdentity>, TlsError> {
    match (&files.cert_file, &files.key_file, &files.pkcs12_file) {
        (None, None, None) => {
            if files.pkcs12_password_file.is_some() {
                return Err(TlsError::Settings(
                    "pkcs12_password_file is set but pkcs12_file is not".into(),
                ));
            }
            Ok(None)
        }
        (Some(cert), Some(key), None) => Ok(Some(ClientIdentity {
            chain: load_certificates(cert)?,
            key: load_private_key(key)?,
            source: format!("{} and {}", cert.display(), key.display()),
        })),
        (None, None, Some(p12)) => {
            load_pkcs12(p12, files.pkcs12_password_file.as_deref()).map(Some)
        }
        (Some(cert), None, None) => Err(TlsError::Settings(format!(
            "cert_file {} is set without key_file",
            cert.display()
        ))),
        (None, Some(key), None) => Err(TlsError::Settings(format!(
            "key_file {} is set without cert_file",
            key.display()
        ))),
        (_, _, Some(_)) => Err(TlsError::Settings(
            "set either cert_file + key_file or pkcs12_file, not both".into(),
        )),
    }
}

/// Subject and expiry of our own client certificate, if one is configured.
pub fn client_certificate_summary(files: &ClientTlsFiles) -> Result<Option<CertSummary>, TlsError> {
    Ok(load_client_identity(files)?.and_then(|id| describe_certificate(id.leaf())))
}

/// Subject and expiry of the first (leaf) certificate of a PEM or DER file, e.g. the push
/// listener's server certificate.
pub fn certificate_file_summary(path: &Path) -> Result<Option<CertSummary>, TlsError> {
    Ok(load_certificates(path)?
        .first()
        .and_then(|c| describe_certificate(c)))
}

fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in load_certificates(path)? {
                roots.add(cert).map_err(|e| TlsError::BadCa {
                    path: path.to_owned(),
                    detail: e.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    Ok(roots)
}

/// A rustls client config: server verified against `ca_file` (or the system roots),
/// client certificate from the identity files if any. ring provider, TLS 1.2 and 1.3.
pub fn client_config(files: &ClientTlsFiles) -> Result<ClientConfig, TlsError> {
    let roots = root_store(files.ca_file.as_deref())?;
    let identity = load_client_identity(files)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocol)?
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(id) => {
            let source = id.source.clone();
            builder
                .with_client_auth_cert(id.chain, id.key.expose().clone_key())
                .map_err(|source_err| TlsError::ClientIdentity {
                    files: source,
                    source: source_err,
                })
        }
    }
}

/// A rustls server config for the push listener. With `client_ca_file`, clients must
/// present a certificate issued by one of its CAs (mutual TLS).
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let chain = load_certificates(cert_file)?;
    let key = load_private_key(key_file)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocol)?;
    let builder = match client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = root_store(Some(ca))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::ClientVerifier {
                    path: ca.to_owned(),
                    detail: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(chain, key.expose().clone_key())
        .map_err(|source| TlsError::ServerIdentity {
            files: format!("{} and {}", cert_file.display(), key_file.display()),
            source,
        })
}

/// An HTTPS client using [`client_config`] (mutual TLS when an identity is configured),
/// with an overall request `timeout` (also the connect timeout).
pub fn reqwest_client(
    files: &ClientTlsFiles,
    timeout: Duration,
) -> Result<reqwest::Client, TlsError> {
    let tls = client_config(files)?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(TlsError::Http)
}

/// Test PKI: a CA, a server certificate for localhost/127.0.0.1, a client certificate,
/// written as PEM files (and a PKCS#12 of the client) into a temporary directory.
#[cfg(test)]
pub(crate) mod testpki {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    pub struct Pki {
        pub dir: tempfile::TempDir,
        pub ca: PathBuf,
        pub server_cert: PathBuf,
        pub server_key: PathBuf,
        pub client_cert: PathBuf,
        pub client_key: PathBuf,
        pub client_der: Vec<u8>,
        /// A second, unrelated CA with a client certificate it issued.
        pub other_ca: PathBuf,
        pub other_client_cert: PathBuf,
        pub other_client_key: PathBuf,
    }

    impl Pki {
        pub fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        pub fn client_files(&self) -> ClientTlsFiles {
            ClientTlsFiles {
                ca_file: Some(self.ca.clone()),
                cert_file: Some(self.client_cert.clone()),
                key_file: Some(self.client_key.clone()),
                ..Default::default()
            }
        }

        /// Writes a PKCS#12 of the client identity, returns (p12 path, password file path).
        pub fn write_pkcs12(&self, password: &str) -> (PathBuf, PathBuf) {
            let id = load_client_identity(&self.client_files()).unwrap().unwrap();
            let key = id.key.expose().secret_der().to_vec();
            let certs = id
                .chain
                .iter()
                .map(|c| p12_keystore::Certificate::from_der(c).unwrap());
            let chain = p12_keystore::PrivateKeyChain::new(key, [1u8, 2, 3, 4], certs);
            let mut store = p12_keystore::KeyStore::new();
            store.add_entry(
                "client",
                p12_keystore::KeyStoreEntry::PrivateKeyChain(chain),
            );
            let der = store.writer(password).write().unwrap();
            let p12 = self.path("client.p12");
            let pass = self.path("client.p12.pass");
            std::fs::write(&p12, der).unwrap();
            std::fs::write(&pass, format!("  {password}\n")).unwrap();
            (p12, pass)
        }
    }

    fn ca(cn: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        (cert, Issuer::new(params, key))
    }

    fn leaf(
        cn: &str,
        sans: Vec<String>,
        eku: ExtendedKeyUsagePurpose,
        issuer: &Issuer<'static, KeyPair>,
    ) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![eku];
        let cert = params.signed_by(&key, issuer).unwrap();
        (cert, key)
    }

    pub fn make() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let w = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let (ca_cert, ca_issuer) = ca("bfo test CA");
        let (srv, srv_key) = leaf(
            "localhost",
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca_issuer,
        );
        let (cli, cli_key) = leaf(
            "bfo test client",
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
            &ca_issuer,
        );
        let (other_ca_cert, other_issuer) = ca("other CA");
        let (ocli, ocli_key) = leaf(
            "stranger",
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
            &other_issuer,
        );
        Pki {
            ca: w("ca.pem", ca_cert.pem()),
            server_cert: w("server.pem", srv.pem()),
            server_key: w("server.key", srv_key.serialize_pem()),
            client_cert: w("client.pem", cli.pem()),
            client_key: w("client.key", cli_key.serialize_pem()),
            client_der: cli.der().to_vec(),
            other_ca: w("other-ca.pem", other_ca_cert.pem()),
            other_client_cert: w("other-client.pem", ocli.pem()),
            other_client_key: w("other-client.key", ocli_key.serialize_pem()),
            dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testpki::make;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn err_text<T>(r: Result<T, TlsError>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn install_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(CryptoProvider::get_default().is_some());
    }

    #[test]
    fn client_config_from_pem_files() {
        let pki = make();
        client_config(&pki.client_files()).unwrap();
        // Without identity: fine too.
        client_config(&ClientTlsFiles {
            ca_file: Some(pki.ca.clone()),
            ..Default::default()
        })
        .unwrap();
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let pki = make();
        let missing = pki.path("nope.pem");
        let e = err_text(client_config(&ClientTlsFiles {
            ca_file: Some(missing.clone()),
            ..Default::default()
        }));
        assert!(e.contains("nope.pem") && e.contains("cannot read"), "{e}");

        let empty = pki.path("empty.pem");
        std::fs::write(&empty, "hello\n").unwrap();
        let e = err_text(client_config(&ClientTlsFiles {
            ca_file: Some(empty.clone()),
            ..Default::default()
        }));
        assert!(
            e.contains("empty.pem") && e.contains("no certificate"),
            "{e}"
        );

        let mut files = pki.client_files();
        files.key_file = Some(pki.client_cert.clone()); // a certificate, not a key
        let e = err_text(client_config(&files));
        assert!(
            e.contains("client.pem") && e.contains("no private key"),
            "{e}"
        );

        let broken = pki.path("broken.key");
        std::fs::write(
            &broken,
            "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        files.key_file = Some(broken);
        let e = err_text(client_config(&files));
        assert!(
            e.contains("broken.key") && e.contains("does not parse"),
            "{e}"
        );

        // A key that does not belong to the certificate.
        files.key_file = Some(pki.other_client_key.clone());
        let e = err_text(client_config(&files));
        assert!(
            e.contains("other-client.key") && e.contains("client.pem"),
            "{e}"
        );

        let e = err_text(client_config(&ClientTlsFiles {
            cert_file: Some(pki.client_cert.clone()),
            ..Default::default()
        }));
        assert!(e.contains("without key_file"), "{e}");
    }

    #[test]
    fn pkcs12_identity_and_wrong_password() {
        let pki = make();
        let (p12, pass) = pki.write_pkcs12("s3cret");
        let files = ClientTlsFiles {
            ca_file: Some(pki.ca.clone()),
            pkcs12_file: Some(p12.clone()),
            pkcs12_password_file: Some(pass), // "  s3cret\n": trimmed
            ..Default::default()
        };
        client_config(&files).unwrap();
        let id = load_client_identity(&files).unwrap().unwrap();
        assert_eq!(id.leaf().as_ref(), &pki.client_der[..]);
        let dbg = format!("{id:?}");
        assert!(
            dbg.contains("<secret>") && dbg.contains("bfo test client"),
            "{dbg}"
        );

        let wrong = pki.path("wrong.pass");
        std::fs::write(&wrong, "not-it").unwrap();
        let e = err_text(client_config(&ClientTlsFiles {
            pkcs12_password_file: Some(wrong),
            ..files.clone()
        }));
        assert!(
            e.contains("client.p12") && e.contains("wrong password"),
            "{e}"
        );
        assert!(!e.contains("not-it"), "{e}");
    }

    #[test]
    fn describes_certificates() {
        let pki = make();
        let s = describe_certificate(&pki.client_der).unwrap();
        assert!(s.subject.contains("CN=bfo test client"), "{}", s.subject);
        assert!(s.not_after > SystemTime::now());
        assert_eq!(describe_certificate(b"junk"), None);
        let s2 = client_certificate_summary(&pki.client_files())
            .unwrap()
            .unwrap();
        assert_eq!(s, s2);
        assert_eq!(
            client_certificate_summary(&ClientTlsFiles::default()).unwrap(),
            None
        );
        let srv = certificate_file_summary(&pki.server_cert).unwrap().unwrap();
        assert!(srv.subject.contains("CN=localhost"), "{}", srv.subject);
        assert!(certificate_file_summary(&pki.path("missing.pem")).is_err());
    }

    /// A one-shot TLS echo-ish server: answers "ok:<peer cert present>" and closes.
    async fn tls_server(
        config: ServerConfig,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let has_peer = tls.get_ref().1.peer_certificates().is_some();
                        let _ = tls.write_all(format!("ok:{has_peer}").as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        (addr, task)
    }

    async fn try_client(
        addr: std::net::SocketAddr,
        files: &ClientTlsFiles,
    ) -> Result<String, String> {
        let config = client_config(files).map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        // With TLS 1.3 a refused client certificate shows up on the first read.
        tls.read_to_string(&mut out)
            .await
            .map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[tokio::test]
    async fn server_config_mutual_tls() {
        let pki = make();
        let config = server_config(&pki.server_cert, &pki.server_key, Some(&pki.ca)).unwrap();
        let (addr, task) = tls_server(config).await;

        assert_eq!(
            try_client(addr, &pki.client_files()).await.unwrap(),
            "ok:true"
        );

        let anonymous = ClientTlsFiles {
            ca_file: Some(pki.ca.clone()),
            ..Default::default()
        };
        assert!(try_client(addr, &anonymous).await.is_err());

        let stranger = ClientTlsFiles {
            ca_file: Some(pki.ca.clone()),
            cert_file: Some(pki.other_client_cert.clone()),
            key_file: Some(pki.other_client_key.clone()),
            ..Default::default()
        };
        assert!(try_client(addr, &stranger).await.is_err());

        // The client refuses a server its CA did not sign.
        let wrong_ca = ClientTlsFiles {
            ca_file: Some(pki.other_ca.clone()),
            ..pki.client_files()
        };
        let e = try_client(addr, &wrong_ca).await.unwrap_err();
        assert!(e.contains("certificate"), "{e}");
        task.abort();
    }

    #[tokio::test]
    async fn server_config_without_client_ca() {
        let pki = make();
        let config = server_config(&pki.server_cert, &pki.server_key, None).unwrap();
        let (addr, task) = tls_server(config).await;
        let anonymous = ClientTlsFiles {
            ca_file: Some(pki.ca.clone()),
            ..Default::default()
        };
        assert_eq!(try_client(addr, &anonymous).await.unwrap(), "ok:false");
        task.abort();
    }

    #[test]
    fn server_config_errors_name_files() {
        let pki = make();
        let e = err_text(server_config(&pki.server_cert, &pki.client_key, None));
        assert!(e.contains("server.pem") && e.contains("client.key"), "{e}");
        let e = err_text(server_config(
            &pki.server_cert,
            &pki.server_key,
            Some(&pki.server_key),
        ));
        assert!(e.contains("server.key"), "{e}");
    }

    #[test]
    fn reqwest_client_builds() {
        let pki = make();
        reqwest_client(&pki.client_files(), Duration::from_secs(5)).unwrap();
    }
}
