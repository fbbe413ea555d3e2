//! The transports: small traits that the probe logic talks to, with one file per backend.
//!
//! - [`Afsender`] publishes one attempt of an Alive message and returns the StandardRetur.
//! - [`Afhenter`] opens a pull consumer on a dueslag queue; a [`Delivery`] is acknowledged,
//!   held (kept unacknowledged) or dead-lettered to the error queue by the caller.
//!
//! Backends: `sim` (the in-process Beskedfordeler of [`crate::sim`]) and `amqp` (the real
//! protocol of ARCHITECTURE.md §2, also usable against any RabbitMQ). Push needs no trait: the
//! Beskedfordeler POSTs to the HTTP endpoint.

pub mod amqp;
pub mod sim;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use uuid::Uuid;

use crate::message::{InvalidReply, StandardRetur};
use crate::outcome::ConsumeFailure;

/// One Alive message to send; the same for every attempt.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// `message_id`: one per message, kept across retries.
    pub transaction_id: Uuid,
    pub besked_id: Uuid,
    /// The dueslag whose probe this is (for logs and the simulator's routing).
    pub dueslag: String,
    /// The Haendelsesbesked XML.
    pub body: Bytes,
}

/// Why one attempt got no readable StandardRetur.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttemptError {
    #[error("no reply within the send timeout")]
    Timeout,
    /// The connection or channel failed (publish refused, closed while waiting for the
    /// reply, no connection): the policy reconnects and retries within the attempts.
    #[error("no connection to the broker: {0}")]
    Connection(String),
    #[error("the broker returned the message as unroutable")]
    Unroutable,
    /// The broker refused the publish because the exchange does not exist (AMQP
    /// `NOT_FOUND`): nothing can route the message, as with [`AttemptError::Unroutable`].
    #[error("the broker has no Afsend exchange: {0}")]
    NoExchange(String),
    #[error("no token: {0}")]
    NoToken(String),
    /// A reply came that is none of the shapes `message::parse_afsend_reply` reads. Its
    /// `Display` never includes the reply's bytes (they go to the debug log only).
    #[error("unreadable Afsend reply: {0}")]
    InvalidReply(InvalidReply),
}

/// Sends to the Beskedfordeler's Afsend service.
#[async_trait]
pub trait Afsender: Send + Sync {
    /// Publishes one attempt and waits up to `timeout` for its StandardRetur.
    async fn publish(
        &self,
        msg: &Outgoing,
        correlation_id: Uuid,
        timeout: Duration,
    ) -> Result<StandardRetur, AttemptError>;

    /// Gets a new token and reconnects (after StatusKode 41).
    async fn renew_token(&self) -> Result<(), String>;
}

/// Why a pull consumer could not start, or why a running one ended. `Display` is the
/// detail: what the broker or the network said, never a message body.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{detail}")]
pub struct ConsumeError {
    pub reason: ConsumeFailure,
    pub detail: String,
}

impl ConsumeError {
    pub fn new(reason: ConsumeFailure, detail: impl Into<String>) -> Self {
        ConsumeError {
            reason,
            detail: detail.into(),
        }
    }

    /// No connection or channel (the most common cause, and the one a transport that
    /// cannot tell reports).
    pub fn connection(detail: impl Into<String>) -> Self {
        ConsumeError::new(ConsumeFailure::Connection, detail)
    }
}

/// Opens pull consumers (the Afhent service).
#[async_trait]
pub trait Afhenter: Send + Sync {
    /// Starts consuming the queue with manual acknowledgement.
    async fn consume(&self, queue: &str) -> Result<Box<dyn PullConsumer>, ConsumeError>;
}

/// A running pull consumer. Dropping it returns every unacknowledged delivery to the queue.
#[async_trait]
pub trait PullConsumer: Send {
    /// The next delivery; `None` when the consumer ended (connection or channel lost).
    async fn next(&mut self) -> Option<Delivery>;

    /// Resolves when the connection under this consumer has been replaced by a newer one
    /// (`[broker] max_connection_age`): the receiver then opens a consumer on the new
    /// connection before it drops this one (make before break). Owned, so that it can be
    /// awaited beside [`PullConsumer::next`]. Never resolves by default.
    fn moved(&self) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }

    /// After [`PullConsumer::next`] returned `None`: why the consumer ended.
    fn ended(&self) -> ConsumeError {
        ConsumeError::connection("the consumer ended")
    }
}

/// A message taken from a dueslag queue, not yet acknowledged.
pub struct Delivery {
    pub body: Bytes,
    pub handle: Box<dyn DeliveryHandle>,
}

/// Settles one delivery. Dropping the handle unsettled holds the message: it stays
/// unacknowledged until the consumer's channel closes, then returns to the queue.
#[async_trait]
pub trait DeliveryHandle: Send {
    async fn ack(self: Box<Self>) -> Result<(), String>;
    /// `basic.nack(requeue=false)`: the broker dead-letters it to the error queue.
    async fn reject_to_error_queue(self: Box<Self>) -> Result<(), String>;
}

/// The transports a configuration runs on.
#[derive(Clone)]
pub struct Backend {
    pub afsender: Arc<dyn Afsender>,
    pub afhenter: Arc<dyn Afhenter>,
    /// Stops the backend's own tasks (connections, token renewal, simulator timers).
    pub stop: tokio_util::sync::CancellationToken,
}
