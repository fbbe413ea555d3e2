//! The `amqp` backend: the Beskedfordeler protocol of ARCHITECTURE.md §2 on lapin.
//!
//! One connection per service (afsend, afhent), shared by every dueslag; a channel per
//! dueslag. The files split it by job, so that each can be read alone:
//!
//! - [`connect`]: opening one AMQP connection (TLS, SASL PLAIN or EXTERNAL with the token).
//! - `link`: one service's connection over time: connect on demand with backoff, reset on
//!   token renewal or failure, replace it before `max_connection_age` (make before break),
//!   and report up, down and replaced as [`LinkEvent`]s.
//! - `afsend`: publish with a confirm and wait for the StandardRetur by direct reply-to.
//! - `afhent`: pull consumers on dueslag queues, moved to a replacing connection, and the
//!   handles that settle deliveries.
//!
//! The transport does I/O only: what its link state means for metrics and logs is decided
//! by whoever builds it ([`crate::backend`]), through [`Settings::events`].

mod afhent;
mod afsend;
pub mod connect;
mod link;

#[cfg(test)]
mod broker_tests;

use std::sync::Arc;
use std::time::Duration;

use crate::token::TokenManager;

pub use self::afhent::AmqpAfhenter;
pub use self::afsend::AmqpAfsender;
pub use self::link::{DownReason, Link, LinkEvent, LinkEvents};

use lapin::protocol::{AMQPErrorKind, AMQPSoftError};

/// The longest a close waits for the broker's close-ok: a broker that stopped answering
/// must not keep a task (or the link's state) waiting until the heartbeat gives up.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Closes a channel in the background, waiting at most [`CLOSE_WAIT`].
fn close_channel_later(channel: lapin::Channel, why: &'static str) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(CLOSE_WAIT, channel.close(200, why.into())).await;
    });
}

/// Closes a connection, waiting at most [`CLOSE_WAIT`] for the broker.
async fn close_in_time(conn: &lapin::Connection, why: &str) {
    let _ = tokio::time::timeout(CLOSE_WAIT, conn.close(200, why.into())).await;
}

/// The channel-level (soft) AMQP error with which the broker refused an operation, if
/// that is what `e` is: `NOT_FOUND` for a missing exchange or queue, `ACCESS_REFUSED`...
fn broker_refusal(e: &lapin::Error) -> Option<AMQPSoftError> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(soft) => Some(soft.clone()),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

/// What both links need to connect.
#[derive(Clone)]
pub struct Settings {
    pub url: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// SASL EXTERNAL with tokens from here, or PLAIN when `None`.
    pub tokens: Option<Arc<TokenManager>>,
    /// Tokens are sent in the `token` header even with PLAIN when a manager exists.
    pub external: bool,
    pub prefetch: u16,
    /// Replace a connection before it is this old (`[broker] max_connection_age`); `None`
    /// keeps it until the broker or the network ends it.
    pub max_connection_age: Option<Duration>,
    /// The AMQP heartbeat to ask for, in seconds (`[broker] heartbeat`); `None` takes the
    /// broker's proposal.
    pub heartbeat: Option<u16>,
    /// The longest wait between reconnects: the shortest probe interval when it is built
    /// (a reload that shortens intervals keeps the old bound until the backend is rebuilt).
    pub reconnect_max: Duration,
    /// Told every change of a link's state.
    pub events: LinkEvents,
    /// The municipality whose token the links use; it goes into the connection name.
    pub cvr: Option<String>,
}
