//! A test PKI written as PEM files: a CA, a server certificate for localhost and
//! 127.0.0.1, and a client certificate; plus rustls client configurations to use them.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub struct Pki {
    pub dir: tempfile::TempDir,
    ca_pem: String,
    client_pem: String,
    client_key: String,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "web test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(params, ca_key);
        let leaf = |sans: Vec<String>, eku| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(DnType::CommonName, "web test");
            p.extended_key_usages = vec![eku];
            (p.signed_by(&key, &issuer).unwrap(), key)
        };
        let (server, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(
            vec!["prometheus.example".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", &ca.pem());
        write("server.pem", &server.pem());
        write("server.key", &server_key.serialize_pem());
        Pki {
            dir,
            ca_pem: ca.pem(),
            client_pem: client.pem(),
            client_key: client_key.serialize_pem(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the client certificate and key (`client.pem`, `client.key`), for a client that
    /// reads files (the exporter's `[broker.tls]`); returns their paths.
    pub fn client_files(&self) -> (PathBuf, PathBuf) {
        let (cert, key) = (self.path("client.pem"), self.path("client.key"));
        std::fs::write(&cert, &self.client_pem).unwrap();
        std::fs::write(&key, &self.client_key).unwrap();
        (cert, key)
    }

    /// A client trusting the CA, with the client certificate or without.
    pub fn client_config(&self, with_certificate: bool) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        if with_certificate {
            let chain = CertificateDer::pem_slice_iter(self.client_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(self.client_key.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        } else {
            b.with_no_client_auth()
        }
    }

    pub fn https_client(&self, with_certificate: bool) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_backend_preconfigured(self.client_config(with_certificate))
            .build()
            .unwrap()
    }
}
