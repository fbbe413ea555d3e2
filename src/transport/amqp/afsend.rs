//! Afsend over AMQP: one publish of an Alive message and the wait for its StandardRetur.
//!
//! Each dueslag has its own channel in confirm mode that consumes `amq.rabbitmq.reply-to`
//! (no-ack) before its first publish, because RabbitMQ refuses a publish whose reply-to is
//! `amq.rabbitmq.reply-to` on a channel that does not consume it. Each attempt publishes
//! mandatory with a fresh correlation id, the transaction id as `message_id` and the token
//! in the `token` header, and waits for the reply whose correlation id matches, read as
//! `message::parse_afsend_reply` reads it. A `basic.return` is "unroutable".
//!
//! An attempt ends within the send timeout once it has a connection, opening its channel
//! included: a broker that stopped answering (a half-open connection, a frozen node) costs
//! one attempt's time, not a send that waits until the heartbeat finds the connection dead.
//! Waiting for the link's connect is not cut short (the connect is bounded by its own
//! timeout, and abandoning it would only start another); nor is a channel close awaited
//! on the attempt's path.
//! A publish the broker refuses because the exchange does not exist (`NOT_FOUND`) is
//! `NoExchange`, counted as `unroutable`, not as a connection error: the connection is up.
//!
//! When the channel or connection closes while attempts wait for their reply, they end at
//! once as a connection error (not at the send timeout), so that `send.rs` retries them on a
//! new connection. When the link replaces its connection (`max_connection_age`), the next
//! attempt of each dueslag opens a channel on the new one, while attempts already waiting on
//! the old channel keep it, and with it the old connection, until they end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::oneshot;
use tokio::time::Instant;
use uuid::Uuid;

use super::{Link, broker_refusal};
use crate::message::{StandardRetur, parse_afsend_reply};
use crate::protocol::Service;
use crate::protocol::{AFSEND_EXCHANGE, AFSEND_ROUTING_KEY, DIRECT_REPLY_TO, TOKEN_HEADER};
use crate::transport::{Afsender, AttemptError, Outgoing};

/// How long a 41 waits for the token source to produce a new token.
const RENEW_WAIT: Duration = Duration::from_secs(30);

/// The attempts of one channel waiting for their reply, by correlation id.
#[derive(Default)]
struct Waiting {
    /// The reply consumer ended (channel or connection closed): nothing will be answered.
    closed: bool,
    by_correlation: HashMap<String, oneshot::Sender<Bytes>>,
}

type Pending = Arc<Mutex<Waiting>>;

/// A dueslag's afsend channel with its reply-to consumer.
struct SendChannel {
    channel: Channel,
    generation: u64,
    pending: Pending,
    /// Held while an attempt may use the channel, so that the link closes a replaced
    /// connection only once no attempt waits on it.
    _connection: Arc<Connection>,
}

impl SendChannel {
    fn usable(&self, generation: u64) -> bool {
        self.generation == generation
            && self.channel.status().connected()
            && !self.pending.lock().unwrap().closed
    }
}

/// The channels of the current connection's generation, by dueslag.
#[derive(Default)]
struct Channels {
    generation: u64,
    by_dueslag: HashMap<String, Arc<SendChannel>>,
}

/// Sends over the afsend link.
pub struct AmqpAfsender {
    link: Arc<Link>,
    channels: tokio::sync::Mutex<Channels>,
}

impl AmqpAfsender {
    pub fn new(link: Arc<Link>) -> Self {
        AmqpAfsender {
            link,
            channels: tokio::sync::Mutex::default(),
        }
    }

    /// The dueslag's channel on `conn` (of `generation`), opened if needed.
    async fn channel(
        &self,
        dueslag: &str,
        conn: Arc<Connection>,
        generation: u64,
    ) -> Result<Arc<SendChannel>, AttemptError> {
        let mut channels = self.channels.lock().await;
        if channels.generation != generation {
            // A new connection: forget the old one's channels, so that it is closed as soon
            // as the attempts still waiting on it end.
            channels.by_dueslag.clear();
            channels.generation = generation;
        }
        if let Some(c) = channels.by_dueslag.get(dueslag)
            && c.usable(generation)
        {
            return Ok(c.clone());
        }
        let conn_err = |e: lapin::Error| AttemptError::Connection(e.to_string());
        let channel = conn.create_channel().await.map_err(conn_err)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(conn_err)?;
        let mut replies = channel
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                format!("bfo-alive-reply-{dueslag}").into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(conn_err)?;
        let pending: Pending = Arc::default();
        let p = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = replies.next().await {
                let Some(corr) = d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.to_string())
                else {
                    continue;
                };
                if let Some(tx) = p.lock().unwrap().by_correlation.remove(&corr) {
                    let _ = tx.send(Bytes::from(d.data));
                }
            }
            // Closed: every attempt still waiting learns it now (its sender is dropped).
            let mut p = p.lock().unwrap();
            p.closed = true;
            p.by_correlation.clear();
        });
        let sc = Arc::new(SendChannel {
            channel,
            generation,
            pending,
            _connection: conn,
        });
        channels.by_dueslag.insert(dueslag.to_string(), sc.clone());
        Ok(sc)
    }

    /// Closes `sc` and forgets it, unless a newer channel took its place meanwhile.
    async fn forget_channel(&self, dueslag: &str, sc: &Arc<SendChannel>) {
        let mut channels = self.channels.lock().await;
        if channels
            .by_dueslag
            .get(dueslag)
            .is_some_and(|c| Arc::ptr_eq(c, sc))
        {
            channels.by_dueslag.remove(dueslag);
        }
        drop(channels);
        // Not awaited: a broker that stopped answering would hold the attempt (and its task)
        // until the connection is found dead.
        super::close_channel_later(sc.channel.clone(), "reopening");
    }
}

#[async_trait]
impl Afsender for AmqpAfsender {
    async fn publish(
        &self,
        msg: &Outgoing,
        correlation_id: Uuid,
        timeout: Duration,
    ) -> Result<StandardRetur, AttemptError> {
        if !self.link.token_ready(timeout).await {
            return Err(AttemptError::NoToken(
                "no afsend token yet within the send timeout".into(),
            ));
        }
        let (conn, generation) = self
            .link
            .connection()
            .await
            .map_err(AttemptError::Connection)?;
        let deadline = Instant::now() + timeout;
        let sc = tokio::time::timeout_at(deadline, self.channel(&msg.dueslag, conn, generation))
            .await
            .map_err(|_| {
                AttemptError::Connection("no channel to the broker within the send timeout".into())
            })??;
        let corr = correlation_id.to_string();
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = sc.pending.lock().unwrap();
            if waiting.closed {
                return Err(AttemptError::Connection(
                    "the channel closed before the publish".into(),
                ));
            }
            waiting.by_correlation.insert(corr.clone(), tx);
        }
        let mut headers = FieldTable::default();
        if let Some(token) = self.link.token() {
            headers.insert(TOKEN_HEADER.into(), AMQPValue::LongString(token.into()));
        }
        let props = BasicProperties::default()
            .with_correlation_id(corr.clone().into())
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_message_id(msg.transaction_id.to_string().into())
            .with_content_type("application/xml".into())
            .with_content_encoding("utf-8".into())
            .with_headers(headers);
        let published = async {
            let confirm = sc
                .channel
                .basic_publish(
                    AFSEND_EXCHANGE.into(),
                    AFSEND_ROUTING_KEY.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &msg.body,
                    props,
                )
                .await?
                .await?;
            Ok::<_, lapin::Error>(confirm)
        };
        let result = match tokio::time::timeout_at(deadline, published).await {
            Err(_) => Err(AttemptError::Timeout),
            Ok(Err(e)) if broker_refusal(&e) == Some(lapin::protocol::AMQPSoftError::NOTFOUND) => {
                Err(AttemptError::NoExchange(e.to_string()))
            }
            Ok(Err(e)) => Err(AttemptError::Connection(e.to_string())),
            Ok(Ok(confirm)) if confirm.is_nack() => Err(AttemptError::Connection(
                "the broker nacked the publish".into(),
            )),
            Ok(Ok(confirm)) => {
                if confirm.take_message().is_some() {
                    Err(AttemptError::Unroutable)
                } else {
                    match tokio::time::timeout_at(deadline, rx).await {
                        // The channel is fine: an unreadable reply keeps it.
                        Ok(Ok(body)) => {
                            parse_afsend_reply(&body).map_err(AttemptError::InvalidReply)
                        }
                        Ok(Err(_)) => Err(AttemptError::Connection(
                            "the channel closed while waiting for the StandardRetur".into(),
                        )),
                        Err(_) => Err(AttemptError::Timeout),
                    }
                }
            }
        };
        sc.pending.lock().unwrap().by_correlation.remove(&corr);
        match &result {
            // A missing reply: the next attempt gets a fresh channel (and reply consumer).
            Err(AttemptError::Timeout) => self.forget_channel(&msg.dueslag, &sc).await,
            // The broker closed the channel: a new one next time.
            Err(AttemptError::NoExchange(_)) => self.forget_channel(&msg.dueslag, &sc).await,
            Err(AttemptError::Connection(_)) => {
                self.forget_channel(&msg.dueslag, &sc).await;
                if !sc.channel.status().connected() {
                    // Let the link notice a dead connection on the next use.
                    let _ = self.link.connection().await;
                }
            }
            _ => {}
        }
        result
    }

    async fn renew_token(&self) -> Result<(), String> {
        if let Some(m) = &self.link.settings.tokens {
            m.renew_and_wait(Service::Afsend, RENEW_WAIT)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.link.reset().await;
        self.channels.lock().await.by_dueslag.clear();
        Ok(())
    }
}
