//! TLS material shared by AMQP, HTTPS clients and the push listener, on one crypto
//! provider (ring).

/// Installs ring as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
