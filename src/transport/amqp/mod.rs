//! The `amqp` backend: the Beskedfordeler protocol of DESIGN §2 on lapin.
//!
//! One connection per role (afsend, afhent), shared by every dueslag; a channel per dueslag.
//! A [`Link`] owns one role's connection: it connects on demand with capped exponential
//! backoff, keeps `bfo_alive_connection_up` true to the state, and is reset when a token is
//! renewed (the EXTERNAL response is read at connect) or the connection fails.
//!
//! Afsend: a channel in confirm mode consumes `amq.rabbitmq.reply-to` (no-ack) before its
//! first publish; each attempt publishes mandatory with a fresh correlation id, the
//! transaction id as `message_id` and the token in the `token` header, and waits for the
//! StandardRetur whose correlation id matches. A `basic.return` is "unroutable".
//! Afhent: `basic.consume` with manual ack and `prefetch` on the dueslag's queue.

pub mod connect;

#[cfg(test)]
mod broker_tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::oneshot;
use tokio::time::Instant;
use uuid::Uuid;

use self::connect as sasl;
use self::connect::AuthChoice;
use super::{Afhenter, Afsender, AttemptError, Delivery, DeliveryHandle, Outgoing, PullConsumer};
use crate::message::{StandardRetur, parse_standard_retur};
use crate::metrics::Metrics;
use crate::protocol::Service;
use crate::protocol::{AFSEND_EXCHANGE, AFSEND_ROUTING_KEY, DIRECT_REPLY_TO, TOKEN_HEADER};
use crate::token::TokenManager;

/// How long a 41 waits for the token source to produce a new token.
const RENEW_WAIT: Duration = Duration::from_secs(30);
/// Reconnect backoff of a link.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

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
    pub metrics: Metrics,
}

struct LinkState {
    conn: Option<Arc<Connection>>,
    /// Bumped at every new connection; channels remember the one they were made on.
    generation: u64,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// One role's connection.
pub struct Link {
    role: Service,
    settings: Settings,
    state: tokio::sync::Mutex<LinkState>,
}

impl Link {
    pub fn new(role: Service, settings: Settings) -> Arc<Self> {
        settings.metrics.set_connection_up(role, false);
        Arc::new(Link {
            role,
            settings,
            state: tokio::sync::Mutex::new(LinkState {
                conn: None,
                generation: 0,
                retry_at: None,
                backoff: BACKOFF_START,
            }),
        })
    }

    /// The open connection and its generation, connecting if needed.
    pub async fn connection(&self) -> Result<(Arc<Connection>, u64), String> {
        let mut st = self.state.lock().await;
        if let Some(c) = &st.conn {
            if c.status().connected() {
                return Ok((c.clone(), st.generation));
            }
            tracing::warn!(connection = self.role.as_str(), "connection lost");
            st.conn = None;
            self.settings.metrics.set_connection_up(self.role, false);
        }
        if let Some(at) = st.retry_at
            && Instant::now() < at
        {
            return Err(format!(
                "{} connection down; next attempt in {:?}",
                self.role.as_str(),
                at - Instant::now()
            ));
        }
        let auth = match (&self.settings.tokens, self.settings.external) {
            (Some(m), true) => AuthChoice::External(m.slot(self.role)),
            _ => AuthChoice::Plain,
        };
        match sasl::connect(&self.settings.url, self.settings.tls.clone(), auth).await {
            Ok(c) => {
                let c = Arc::new(c);
                st.conn = Some(c.clone());
                st.generation += 1;
                st.retry_at = None;
                st.backoff = BACKOFF_START;
                self.settings.metrics.set_connection_up(self.role, true);
                tracing::info!(connection = self.role.as_str(), url = %crate::config::mask_url(&self.settings.url), "connected");
                Ok((c, st.generation))
            }
            Err(e) => {
                st.retry_at = Some(Instant::now() + st.backoff);
                tracing::warn!(connection = self.role.as_str(), error = %e, retry_in = ?st.backoff, "cannot connect");
                st.backoff = (st.backoff * 2).min(BACKOFF_MAX);
                self.settings.metrics.set_connection_up(self.role, false);
                Err(format!("cannot connect ({}): {e}", self.role.as_str()))
            }
        }
    }

    /// Drops the connection so that the next use connects again (at once).
    pub async fn reset(&self) {
        let mut st = self.state.lock().await;
        if let Some(c) = st.conn.take() {
            let _ = c.close(200, "reconnecting".into()).await;
        }
        st.retry_at = None;
        self.settings.metrics.set_connection_up(self.role, false);
    }

    /// Keeps the connection (and `bfo_alive_connection_up`) current while nobody sends:
    /// checks once a second and reconnects with backoff.
    pub async fn watch(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            let _ = self.connection().await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        self.close().await;
    }

    /// Closes the connection for good.
    pub async fn close(&self) {
        self.reset().await;
    }

    /// The current token's XML for the `token` header, if tokens are in use.
    fn token(&self) -> Option<String> {
        let m = self.settings.tokens.as_ref()?;
        m.slot(self.role).get().map(|t| t.xml.expose().clone())
    }
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Bytes>>>>;

/// A dueslag's afsend channel with its reply-to consumer.
struct SendChannel {
    channel: Channel,
    generation: u64,
    pending: Pending,
}

/// Sends over the afsend link.
pub struct AmqpAfsender {
    link: Arc<Link>,
    channels: tokio::sync::Mutex<HashMap<String, Arc<SendChannel>>>,
}

impl AmqpAfsender {
    pub fn new(link: Arc<Link>) -> Self {
        AmqpAfsender {
            link,
            channels: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn channel(&self, dueslag: &str) -> Result<Arc<SendChannel>, AttemptError> {
        let (conn, generation) = self
            .link
            .connection()
            .await
            .map_err(AttemptError::Connection)?;
        let mut channels = self.channels.lock().await;
        if let Some(c) = channels.get(dueslag)
            && c.generation == generation
            && c.channel.status().connected()
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
                if let Some(tx) = p.lock().unwrap().remove(&corr) {
                    let _ = tx.send(Bytes::from(d.data));
                }
            }
        });
        let sc = Arc::new(SendChannel {
            channel,
            generation,
            pending,
        });
        channels.insert(dueslag.to_string(), sc.clone());
        Ok(sc)
    }

    async fn forget_channel(&self, dueslag: &str) {
        if let Some(c) = self.channels.lock().await.remove(dueslag) {
            let _ = c.channel.close(200, "reopening".into()).await;
        }
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
        let sc = self.channel(&msg.dueslag).await?;
        let corr = correlation_id.to_string();
        let (tx, rx) = oneshot::channel();
        sc.pending.lock().unwrap().insert(corr.clone(), tx);
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
        let deadline = Instant::now() + timeout;
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
            Ok(Err(e)) => Err(AttemptError::Connection(e.to_string())),
            Ok(Ok(confirm)) if confirm.is_nack() => Err(AttemptError::Connection(
                "the broker nacked the publish".into(),
            )),
            Ok(Ok(confirm)) => {
                if confirm.take_message().is_some() {
                    Err(AttemptError::Unroutable)
                } else {
                    match tokio::time::timeout_at(deadline, rx).await {
                        Ok(Ok(body)) => parse_standard_retur(&body).map_err(|e| {
                            AttemptError::Connection(format!("unreadable StandardRetur: {e}"))
                        }),
                        Ok(Err(_)) => {
                            Err(AttemptError::Connection("the reply channel closed".into()))
                        }
                        Err(_) => Err(AttemptError::Timeout),
                    }
                }
            }
        };
        sc.pending.lock().unwrap().remove(&corr);
        match &result {
            // A missing reply: the next attempt gets a fresh channel (and reply consumer).
            Err(AttemptError::Timeout) => self.forget_channel(&msg.dueslag).await,
            Err(AttemptError::Connection(_)) => {
                self.forget_channel(&msg.dueslag).await;
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
        self.channels.lock().await.clear();
        Ok(())
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
    async fn consume(&self, queue: &str) -> Result<Box<dyn PullConsumer>, String> {
        let (conn, _) = self.link.connection().await?;
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        channel
            .basic_qos(self.link.settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                format!("bfo-alive-{queue}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("basic.consume on {queue}: {e}"))?;
        Ok(Box::new(AmqpPull { channel, consumer }))
    }
}

struct AmqpPull {
    channel: Channel,
    consumer: lapin::Consumer,
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
                tracing::warn!(error = %e, "consumer failed");
                None
            }
            None => None,
        }
    }
}

impl Drop for AmqpPull {
    /// Closing the channel returns every unacknowledged (held) delivery to the queue.
    fn drop(&mut self) {
        let channel = self.channel.clone();
        tokio::spawn(async move {
            let _ = channel.close(200, "consumer stopped".into()).await;
        });
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
