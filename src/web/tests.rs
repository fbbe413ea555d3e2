//! The web config file as exporter-toolkit reads it: what it accepts, what it refuses and
//! how the refusal reads.

use std::path::PathBuf;

use super::toolkit::{WebConfig, load};
use crate::tls::testpki;

fn write(dir: &std::path::Path, text: &str) -> PathBuf {
    let p = dir.join("web.yml");
    std::fs::write(&p, text).unwrap();
    p
}

fn try_load(text: &str) -> Result<WebConfig, String> {
    let dir = tempfile::tempdir().unwrap();
    load(&write(dir.path(), text))
}

fn err(text: &str) -> String {
    match try_load(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn an_empty_file_asks_nothing() {
    for text in ["", "# nothing yet\n", "---\n", "tls_server_config:\n"] {
        let c = try_load(text).unwrap();
        assert!(
            c.tls.is_none() && c.http2 && !c.policy.is_active(),
            "{text:?}"
        );
    }
}

#[test]
fn users_headers_and_rate_limit() {
    let hash = bcrypt::hash("pw", 4).unwrap();
    let c = try_load(&format!(
        "basic_auth_users:\n  alice: {hash}\nhttp_server_config:\n  http2: false\n  headers:\n    X-Content-Type-Options: nosniff\n    Strict-Transport-Security: max-age=31536000\nrate_limit:\n  interval: 100ms\n  burst: 5\n"
    ))
    .unwrap();
    assert!(!c.http2);
    assert_eq!(c.policy.users["alice"], hash);
    assert!(bcrypt::verify("anything", &c.policy.decoy).is_ok());
    assert_eq!(c.policy.headers.len(), 2);
    assert_eq!(
        c.policy.rate,
        Some((std::time::Duration::from_millis(100), 5))
    );
}

#[test]
fn refusals_name_the_key() {
    for (text, needle) in [
        (
            "basic_auth_user:\n  a: b\n",
            "unknown field `basic_auth_user`",
        ),
        (
            "tls_server_config:\n  certfile: x\n",
            "unknown field `certfile`",
        ),
        (
            "basic_auth_users:\n  bob: plain\n",
            "basic_auth_users.bob: not a bcrypt hash",
        ),
        (
            "http_server_config:\n  headers:\n    Server: me\n",
            "HTTP header \"Server\" can not be configured",
        ),
        (
            "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
            "X-Frame-Options: expected one of",
        ),
        ("rate_limit:\n  interval: 1s\n", "rate_limit.burst"),
        (
            "tls_server_config:\n  key_file: k.pem\n",
            "missing one of cert or cert_file",
        ),
    ] {
        let e = err(text);
        assert!(e.contains(needle), "{text:?}: {e}");
        assert!(e.contains("web.yml"), "{e}");
    }
}

fn tls(extra: &str) -> Result<WebConfig, String> {
    let pki = testpki::make();
    let text =
        format!("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n{extra}");
    load(&write(pki.dir.path(), &text))
}

#[test]
fn tls_settings_map_to_rustls_or_are_refused() {
    let c = tls("  min_version: TLS13\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n  curve_preferences: [X25519, CurveP256]\n").unwrap();
    let server = c.tls.unwrap();
    assert_eq!(
        server.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    assert!(server.ignore_client_order);
    assert!(tls("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n  client_allowed_sans: [a.example]\n").is_ok());
    assert!(tls("  client_auth_type: RequireAnyClientCert\n").is_ok());
    assert!(tls("  client_auth_type: RequestClientCert\n").is_ok());
    assert!(tls("  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.pem\n").is_ok());
    for (extra, needle) in [
        ("  min_version: TLS10\n", "TLS10 is not supported"),
        (
            "  min_version: TLS13\n  max_version: TLS12\n",
            "min_version is above max_version",
        ),
        (
            "  curve_preferences: [CurveP521]\n",
            "\"CurveP521\" is not supported",
        ),
        (
            "  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n",
            "is not supported; supported:",
        ),
        ("  client_ca_file: ca.pem\n", "without a Client Auth Policy"),
        (
            "  client_auth_type: RequireAndVerifyClientCert\n",
            "needs client_ca_file",
        ),
        ("  client_auth_type: Maybe\n", "invalid ClientAuth"),
        (
            "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.pem\n  client_allowed_sans: [a]\n",
            "client_allowed_sans: requires",
        ),
        ("  cert: inline\n", "cert and cert_file are both set"),
    ] {
        match tls(extra) {
            Ok(_) => panic!("accepted {extra:?}"),
            Err(e) => assert!(e.contains(needle), "{extra:?}: {e}"),
        }
    }
}
