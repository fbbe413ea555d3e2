//! AMQP connection set-up for the BFO: SASL EXTERNAL with the SAML token as response
//! ([`TokenExternalAuth`]), or PLAIN from the URI, over plain TCP or over TLS with our own
//! rustls config ([`connect`]).
//!
//! lapin's built-in EXTERNAL sends an empty response; the BFO wants the decoded SAML
//! assertion, byte for byte. lapin asks for it synchronously (`auth_starter`) when the
//! broker's `connection.start` arrives, so the provider reads the current token from a
//! [`TokenSlot`] that the [`crate::token::TokenManager`] keeps fresh. A reconnect after a
//! renewal therefore sends the new token.
//!
//! **Bounded.** The whole connect, TCP, TLS and the AMQP handshake, ends within the URI's
//! `connection_timeout` or [`DEFAULT_CONNECT_TIMEOUT`]: a broker that accepts TCP but never
//! answers (a frozen node, a black hole behind a proxy) must not hold the link, which
//! waits for the connect, forever. lapin drives each connection on its own thread, which a
//! dropped connect future does not stop, so when the connect times out, or its caller gives
//! up on it (drops it), the socket is shut down through a duplicate of it kept until the
//! handshake ends ([`SocketCut`]): the thread sees the error and exits instead of lingering
//! with the socket, and of finishing a handshake (with 8 MiB of buffers) for nobody once a
//! frozen broker answers again.
//!
//! **Heartbeat.** [`connect_tuned`] asks for a heartbeat interval (`[broker] heartbeat`),
//! unless the URI names one (`?heartbeat=N`); lapin takes the lower of ours and the
//! broker's, and declares the connection dead after two intervals without a frame, which
//! is how a half-open connection (a peer that vanished without closing) is noticed.
//!
//! Logging: lapin prints incoming frames, and outgoing ones it discards, at TRACE. Keep
//! the `lapin` target at DEBUG or lower in production so no token reaches a log.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::auth::AuthProvider;
use lapin::tcp::{AsyncTcpStream, RustlsConnector};
use lapin::types::{LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};

use crate::token::TokenSlot;

/// The SASL mechanism name the BFO expects.
pub const EXTERNAL: &str = "EXTERNAL";

const NO_TOKEN: &str = "no token yet for SASL EXTERNAL (token source not ready)";

/// Limit of a whole connect (TCP, TLS, AMQP handshake) when the URI has no
/// `connection_timeout` (ms).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A duplicate of a connecting socket, held until the handshake ends, so that a handshake
/// that overran its time can be cut (module doc). Shutting a socket down through any of its
/// descriptors ends it for every holder; the duplicate is closed when this is dropped.
#[derive(Clone, Default)]
struct SocketCut(Arc<Mutex<Option<OwnedFd>>>);

impl SocketCut {
    fn keep(&self, fd: Option<OwnedFd>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = fd;
    }

    /// Forgets the duplicate (the handshake ended: the connection owns its socket alone).
    fn release(&self) {
        self.keep(None);
    }

    /// Shuts the socket down, so the connection's thread fails and exits.
    fn cut(&self) {
        if let Some(fd) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = std::net::TcpStream::from(fd).shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Cuts the socket when dropped before the handshake ended (the connect timed out, or its
/// future was dropped by a caller that gave up).
struct CutUnlessDone(SocketCut);

impl Drop for CutUnlessDone {
    fn drop(&mut self) {
        self.0.cut();
    }
}

/// SASL EXTERNAL whose response is the current token's XML, exactly.
#[derive(Clone, Debug)]
pub struct TokenExternalAuth {
    slot: TokenSlot,
}

impl TokenExternalAuth {
    pub fn new(slot: TokenSlot) -> Self {
        TokenExternalAuth { slot }
    }
}

impl AuthProvider for TokenExternalAuth {
    fn mechanism(&self) -> ShortString {
        EXTERNAL.into()
    }

    fn auth_starter(&self) -> Result<LongString, String> {
        match self.slot.get() {
            Some(token) => Ok(LongString::from(token.xml.expose().as_bytes())),
            None => Err(NO_TOKEN.into()),
        }
    }

    fn continue_auth(&self, _challenge: LongString) -> Result<LongString, String> {
        // The challenge is not echoed: it could carry anything.
        Err("the broker sent a SASL challenge; EXTERNAL with a token expects none".into())
    }

    // `valid_for` stays `None`: lapin would otherwise try `connection.update-secret`, which
    // the BFO does not offer. A renewed token is used at the next connect.
}

/// How to authenticate the AMQP connection.
#[derive(Clone, Debug)]
pub enum AuthChoice {
    /// PLAIN with the user and password in the URI (local RabbitMQ, the emulator).
    Plain,
    /// SASL EXTERNAL with the token in the slot (the BFO).
    External(TokenSlot),
}

fn other(msg: String) -> lapin::Error {
    std::io::Error::other(msg).into()
}

/// Connects to `uri` (`amqp://` or `amqps://`). For `amqps://`, `tls` is the rustls config
/// from [`crate::tls::client_config`]; `None` means the system roots and no client
/// certificate. A `tls` config with a plain `amqp://` URI is refused (it would silently
/// not be used).
pub async fn connect(
    uri: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    auth: AuthChoice,
) -> lapin::Result<Connection> {
    connect_with_properties(uri, tls, auth, ConnectionProperties::default()).await
}

/// [`connect`] with lapin properties of the caller's (connection name, auto-recover...).
/// The auth provider in `properties` is replaced according to `auth`.
pub async fn connect_with_properties(
    uri: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    auth: AuthChoice,
    properties: ConnectionProperties,
) -> lapin::Result<Connection> {
    connect_tuned(uri, tls, auth, properties, None).await
}

/// [`connect_with_properties`] asking for a heartbeat of `heartbeat` seconds, unless the URI
/// names one; `None` takes lapin's default (the broker's proposal).
pub async fn connect_tuned(
    uri: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    auth: AuthChoice,
    properties: ConnectionProperties,
    heartbeat: Option<u16>,
) -> lapin::Result<Connection> {
    let mut uri: AMQPUri = uri
        .parse()
        .map_err(|e: String| other(format!("invalid AMQP URI: {e}")))?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = heartbeat;
    }
    if uri.query.frame_max.is_none() {
        uri.query.frame_max = Some(crate::protocol::FRAME_MAX);
    }
    let connector = match (&uri.scheme, tls) {
        (AMQPScheme::AMQP, None) => None,
        (AMQPScheme::AMQP, Some(_)) => {
            return Err(other(
                "TLS settings given for an amqp:// URL; use amqps:// or drop the TLS settings"
                    .into(),
            ));
        }
        (AMQPScheme::AMQPS, Some(config)) => Some(RustlsConnector::from(config)),
        (AMQPScheme::AMQPS, None) => {
            let config = crate::tls::client_config(&crate::tls::ClientTlsFiles::default())
                .map_err(|e| other(e.to_string()))?;
            Some(RustlsConnector::from(Arc::new(config)))
        }
    };
    let properties = match auth {
        AuthChoice::Plain => properties,
        AuthChoice::External(slot) => {
            // lapin 4.12 never resolves `connect` when `auth_starter` fails (the handshake
            // promise is dropped unresolved), so refuse here instead of hanging.
            if slot.get().is_none() {
                return Err(lapin::ErrorKind::AuthProviderError(NO_TOKEN.into()).into());
            }
            properties.with_auth_provider(TokenExternalAuth::new(slot))
        }
    };
    let timeout = uri
        .query
        .connection_timeout
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let runtime = lapin::runtime::default_runtime()?;
    let (host, port) = (uri.authority.host.clone(), uri.authority.port);
    let deadline = tokio::time::Instant::now() + timeout;
    let cut = SocketCut::default();
    // TCP (and TLS), for the first connection and again for any reconnect of lapin's.
    let open = {
        let socket = cut.clone();
        let runtime = runtime.clone();
        move |uri: AMQPUri| {
            let (connector, socket, runtime) = (connector.clone(), socket.clone(), runtime.clone());
            async move {
                let host = uri.authority.host.clone();
                let port = uri.authority.port;
                let open = async {
                    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                        .await?
                        .collect();
                    let stream = AsyncTcpStream::connect(&runtime, addrs).await?;
                    if let AsyncTcpStream::Plain(s) = &stream {
                        socket.keep(s.get_ref().as_fd().try_clone_to_owned().ok());
                    }
                    match (&uri.scheme, &connector) {
                        (AMQPScheme::AMQPS, Some(c)) => stream.into_rustls(c, &host).await,
                        _ => Ok(stream),
                    }
                };
                match tokio::time::timeout(timeout, open).await {
                    Ok(Ok(stream)) => Ok(stream),
                    Ok(Err(e)) => Err(lapin::Error::from(std::io::Error::new(
                        e.kind(),
                        format!("connecting to {host}:{port}: {e}"),
                    ))),
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connecting to {host}:{port}: no connection within {timeout:?}"),
                    )
                    .into()),
                }
            }
        }
    };
    let guard = CutUnlessDone(cut.clone());
    // The first transport is opened here, before lapin is involved: lapin 4.12 leaves two
    // tasks behind for every connect whose transport fails (its RPC task is never told to
    // stop), and a refused or unreachable broker is the common failure. Handed to lapin
    // once open.
    let first = open(uri.clone()).await?;
    let first = Mutex::new(Some(first));
    let connecting = Connection::connector(
        uri,
        runtime,
        async move |uri: AMQPUri, _| {
            let ready = first.lock().unwrap_or_else(|e| e.into_inner()).take();
            match ready {
                Some(stream) => Ok(stream),
                None => open(uri).await,
            }
        },
        properties,
    );
    let result = tokio::time::timeout_at(deadline, connecting).await;
    match result {
        Ok(r) => {
            // Ended, well or not: the connection owns its socket; nothing to cut.
            cut.release();
            drop(guard);
            r
        }
        Err(_) => {
            drop(guard);
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {host}:{port}: no AMQP handshake within {timeout:?}"),
            )
            .into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{self, testpki};
    use crate::token::Token;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::sync::oneshot;

    /// What the fake broker read from the client's connection.start-ok.
    #[derive(Debug)]
    struct StartOk {
        mechanism: String,
        response: Vec<u8>,
        locale: String,
    }

    fn long_str(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s);
    }

    /// connection.start (class 10, method 10) offering `mechanisms`, as one method frame.
    fn connection_start(mechanisms: &str) -> Vec<u8> {
        let mut payload = Vec::new();
        payload.extend_from_slice(&10u16.to_be_bytes());
        payload.extend_from_slice(&10u16.to_be_bytes());
        payload.extend_from_slice(&[0, 9]); // version-major, version-minor
        payload.extend_from_slice(&0u32.to_be_bytes()); // server-properties: empty table
        long_str(&mut payload, mechanisms.as_bytes());
        long_str(&mut payload, b"en_US");
        let mut frame = vec![1u8]; // method frame
        frame.extend_from_slice(&0u16.to_be_bytes()); // channel 0
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.push(0xCE);
        frame
    }

    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> &'a [u8] {
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            a
        }
        fn u8(&mut self) -> u8 {
            self.take(1)[0]
        }
        fn u16(&mut self) -> u16 {
            u16::from_be_bytes(self.take(2).try_into().unwrap())
        }
        fn u32(&mut self) -> u32 {
            u32::from_be_bytes(self.take(4).try_into().unwrap())
        }
    }

    /// The broker side of the handshake up to connection.start-ok, then hang up.
    async fn fake_broker<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, mechanisms: &str) -> StartOk {
        let mut header = [0u8; 8];
        s.read_exact(&mut header).await.unwrap();
        assert_eq!(
            &header, b"AMQP\x00\x00\x09\x01",
            "AMQP 0-9-1 protocol header"
        );
        s.write_all(&connection_start(mechanisms)).await.unwrap();
        let mut head = [0u8; 7];
        s.read_exact(&mut head).await.unwrap();
        let mut c = Cursor(&head);
        assert_eq!(c.u8(), 1, "method frame");
        assert_eq!(c.u16(), 0, "channel 0");
        let size = c.u32() as usize;
        let mut payload = vec![0u8; size + 1];
        s.read_exact(&mut payload).await.unwrap();
        assert_eq!(payload[size], 0xCE, "frame end");
        let mut c = Cursor(&payload[..size]);
        assert_eq!((c.u16(), c.u16()), (10, 11), "connection.start-ok");
        let props = c.u32() as usize;
        c.take(props);
        let n = c.u8() as usize;
        let mechanism = String::from_utf8(c.take(n).to_vec()).unwrap();
        let n = c.u32() as usize;
        let response = c.take(n).to_vec();
        let n = c.u8() as usize;
        let locale = String::from_utf8(c.take(n).to_vec()).unwrap();
        StartOk {
            mechanism,
            response,
            locale,
        }
    }

    /// A token of about `size` bytes, with non-ASCII text, as the BFO's are several KB.
    fn big_token(size: usize) -> Token {
        let filler = "æøå-ÆØÅ-".repeat(size / 16);
        let xml = format!(
            r#"<saml2:Assertion xmlns:saml2="urn:oasis:names:tc:SAML:2.0:assertion"><saml2:Issuer>sts</saml2:Issuer><saml2:Subject>{filler}</saml2:Subject></saml2:Assertion>"#
        );
        Token::from_xml(xml, "test").unwrap()
    }

    async fn plain_listener() -> (tokio::net::TcpListener, u16) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    }

    #[tokio::test]
    async fn external_sends_the_token_byte_for_byte() {
        let token = big_token(20_000);
        let expected = token.xml.expose().as_bytes().to_vec();
        assert!(expected.len() > 16_000);
        let slot = TokenSlot::with_token(token);
        let (listener, port) = plain_listener().await;
        let (tx, rx) = oneshot::channel();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let _ = tx.send(fake_broker(s, "PLAIN EXTERNAL").await);
        });
        let client = tokio::spawn(async move {
            connect(
                &format!("amqp://127.0.0.1:{port}/BF"),
                None,
                AuthChoice::External(slot),
            )
            .await
        });
        let got = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.mechanism, "EXTERNAL");
        assert_eq!(got.locale, "en_US");
        assert!(got.response == expected, "response differs from the token");
        // The fake broker hung up after start-ok: the connect fails.
        assert!(
            tokio::time::timeout(Duration::from_secs(10), client)
                .await
                .unwrap()
                .unwrap()
                .is_err()
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_handshake_that_never_ends_is_cut_in_time() {
        let (listener, port) = plain_listener().await;
        // A peer that accepts TCP and never answers, like a frozen broker.
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let mut read = 0;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break read,
                    Ok(n) => read += n,
                }
            }
        });
        let started = std::time::Instant::now();
        let e = tokio::time::timeout(
            Duration::from_secs(10),
            connect(
                &format!("amqp://guest:guest@127.0.0.1:{port}/BF?connection_timeout=300"),
                None,
                AuthChoice::Plain,
            ),
        )
        .await
        .expect("the connect ends by itself")
        .unwrap_err()
        .to_string();
        assert!(e.contains("no AMQP handshake within"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // The socket was shut down: no connection thread lingers holding it open.
        let read = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the peer sees the connection end")
            .unwrap();
        assert_eq!(read, 8, "only the protocol header came");
    }

    #[tokio::test]
    async fn refused_connects_leave_no_task_behind() {
        // A port where nothing listens: every connect is refused.
        let (listener, port) = plain_listener().await;
        drop(listener);
        let url = format!("amqp://guest:guest@127.0.0.1:{port}/BF");
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = tasks();
        for _ in 0..10 {
            assert!(connect(&url, None, AuthChoice::Plain).await.is_err());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(tasks() <= before, "tasks {before} -> {}", tasks());
    }

    #[tokio::test]
    async fn plain_sends_user_and_password_from_uri() {
        let (listener, port) = plain_listener().await;
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let _ = tx.send(fake_broker(s, "PLAIN AMQPLAIN").await);
        });
        let client = tokio::spawn(async move {
            connect(
                &format!("amqp://alice:s%40cret@127.0.0.1:{port}/BF"),
                None,
                AuthChoice::Plain,
            )
            .await
        });
        let got = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.mechanism, "PLAIN");
        assert_eq!(got.response, b"\0alice\0s@cret");
        client.abort();
    }

    #[tokio::test]
    async fn external_without_token_fails_clearly() {
        let (listener, port) = plain_listener().await;
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let _ = tokio::time::timeout(Duration::from_secs(5), fake_broker(s, "EXTERNAL")).await;
        });
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            connect(
                &format!("amqp://127.0.0.1:{port}/BF"),
                None,
                AuthChoice::External(TokenSlot::new()),
            ),
        )
        .await
        .unwrap();
        let e = r.unwrap_err().to_string();
        assert!(e.contains("no token"), "{e}");
    }

    #[tokio::test]
    async fn external_over_mutual_tls() {
        let pki = testpki::make();
        let server = tls::server_config(&pki.server_cert, &pki.server_key, Some(&pki.ca)).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let (listener, port) = plain_listener().await;
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(s).await.unwrap();
            let has_client_cert = tls.get_ref().1.peer_certificates().is_some();
            let got = fake_broker(tls, "EXTERNAL").await;
            let _ = tx.send((has_client_cert, got));
        });
        let token = big_token(6_000);
        let expected = token.xml.expose().as_bytes().to_vec();
        let config = Arc::new(tls::client_config(&pki.client_files()).unwrap());
        let client = tokio::spawn(async move {
            connect(
                &format!("amqps://localhost:{port}/BF"),
                Some(config),
                AuthChoice::External(TokenSlot::with_token(token)),
            )
            .await
        });
        let (has_cert, got) = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap()
            .unwrap();
        assert!(has_cert);
        assert_eq!(got.mechanism, "EXTERNAL");
        assert!(got.response == expected);
        client.abort();
    }

    #[tokio::test]
    async fn tls_config_with_plain_uri_is_refused() {
        let pki = testpki::make();
        let config = Arc::new(tls::client_config(&pki.client_files()).unwrap());
        let e = connect("amqp://127.0.0.1:1/BF", Some(config), AuthChoice::Plain)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("amqps://"), "{e}");
        let e = connect("nonsense://x", None, AuthChoice::Plain)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid AMQP URI"), "{e}");
    }

    #[test]
    fn debug_hides_token() {
        let auth = TokenExternalAuth::new(TokenSlot::with_token(big_token(100)));
        let dbg = format!(
            "{auth:?} {:?}",
            AuthChoice::External(TokenSlot::with_token(big_token(100)))
        );
        assert!(!dbg.contains("Assertion") && !dbg.contains("æøå"), "{dbg}");
    }
}
