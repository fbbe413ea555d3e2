//! Afhent over AMQP: pull consumers on dueslag queues, and the handles that settle their
//! deliveries.
//!
//! Each consumer has its own channel with `basic.qos(prefetch)` and manual ack, so that
//! closing the channel when the consumer is dropped returns exactly its unacknowledged
//! (held) deliveries to the queue. A consumer knows the connection generation it runs on:
//! when the link installs a newer connection, [`PullConsumer::moved`] tells the receiver to
//! open its next consumer there before dropping this one (make before break), and the old
//! connection is closed once no consumer or attempt holds it.
//!
//! Failures say why ([`ConsumeError`]): no connection, the queue missing (`NOT_FOUND`, e.g.
//! deleted), another refusal by the broker, or a running consumer cancelled by the broker
//! while the connection stayed up (RabbitMQ cancels the consumers of a deleted queue).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::{Link, broker_refusal};
use crate::outcome::ConsumeFailure;
use crate::transport::{Afhenter, ConsumeError, Delivery, DeliveryHandle, PullConsumer};

/// Why a consume step on `queue` failed, from lapin's error.
fn consume_error(queue: &str, step: &str, e: &lapin::Error) -> ConsumeError {
    use lapin::protocol::AMQPSoftError as Soft;
    match broker_refusal(e) {
        Some(Soft::NOTFOUND) => ConsumeError::new(
            ConsumeFailure::QueueMissing,
            format!(
                "the queue {queue} does not exist on the broker (deleted, or never declared): {e}"
            ),
        ),
        Some(_) => ConsumeError::new(
            ConsumeFailure::Refused,
            format!("the broker refused {step} on {queue}: {e}"),
        ),
        None => ConsumeError::connection(format!("{step} on {queue}: {e}")),
    }
}

/// Consumes dueslag queues over the afhent link.
pub struct AmqpAfhenter {
    link: Arc<Link>,
}

impl AmqpAfhenter {
    pub fn new(link: Arc<Link>) -> Self {
        AmqpAfhenter { link }
    }
}

#[async_trait]
impl Afhenter for AmqpAfhenter {
    async fn consume(&self, queue: &str) -> Result<Box<dyn PullConsumer>, ConsumeError> {
        let (conn, generation) = self
            .link
            .connection()
            .await
            .map_err(ConsumeError::connection)?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| consume_error(queue, "channel.open", &e))?;
        channel
            .basic_qos(self.link.settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| consume_error(queue, "basic.qos", &e))?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                format!("bfo-alive-{queue}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| consume_error(queue, "basic.consume", &e))?;
        Ok(Box::new(AmqpPull {
            queue: queue.to_string(),
            channel,
            consumer,
            error: None,
            generation,
            generations: self.link.generations(),
            _connection: conn,
        }))
    }
}

struct AmqpPull {
    queue: String,
    channel: Channel,
    consumer: lapin::Consumer,
    /// The error that ended the consumer, if one did.
    error: Option<ConsumeError>,
    /// The connection generation the consumer runs on, and the link's current one.
    generation: u64,
    generations: tokio::sync::watch::Receiver<u64>,
    /// Held until the consumer is dropped, so that the link closes a replaced connection
    /// only after the consumer moved off it.
    _connection: Arc<Connection>,
}

#[async_trait]
impl PullConsumer for AmqpPull {
    async fn next(&mut self) -> Option<Delivery> {
        match self.consumer.next().await {
            Some(Ok(d)) => Some(Delivery {
                body: Bytes::from(d.data),
                handle: Box::new(AmqpHandle(d.acker)),
            }),
            Some(Err(e)) => {
                self.error = Some(consume_error(&self.queue, "consuming", &e));
                None
            }
            None => None,
        }
    }

    fn ended(&self) -> ConsumeError {
        if let Some(e) = &self.error {
            e.clone()
        } else if !self._connection.status().connected() {
            ConsumeError::connection("the connection under the consumer was lost")
        } else if !self.channel.status().connected() {
            ConsumeError::new(
                ConsumeFailure::Cancelled,
                format!(
                    "the broker closed the channel of the consumer on {}",
                    self.queue
                ),
            )
        } else {
            ConsumeError::new(
                ConsumeFailure::Cancelled,
                format!(
                    "the broker cancelled the consumer on {} (basic.cancel: the queue was deleted?)",
                    self.queue
                ),
            )
        }
    }

    fn moved(&self) -> BoxFuture<'static, ()> {
        let mut generations = self.generations.clone();
        let mine = self.generation;
        Box::pin(async move {
            if generations.wait_for(|g| *g > mine).await.is_err() {
                // The link is gone: the consumer ends with its connection instead.
                std::future::pending::<()>().await;
            }
        })
    }
}

impl Drop for AmqpPull {
    /// Closing the channel returns every unacknowledged (held) delivery to the queue.
    fn drop(&mut self) {
        super::close_channel_later(self.channel.clone(), "consumer stopped");
    }
}

struct AmqpHandle(lapin::Acker);

#[async_trait]
impl DeliveryHandle for AmqpHandle {
    async fn ack(self: Box<Self>) -> Result<(), String> {
        self.0
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn reject_to_error_queue(self: Box<Self>) -> Result<(), String> {
        self.0
            .nack(BasicNackOptions {
                requeue: false,
                ..BasicNackOptions::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
