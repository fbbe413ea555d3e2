//! The emulator in-process on the test broker, and direct AMQP access to its queues.
#![allow(dead_code)]

use std::path::PathBuf;

use bfo_alive_exporter::emulator::{self, EmulatorConfig, Rabbitmqctl};

use super::broker::Broker;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

/// Starts the emulator with this configuration text; it runs until the token is cancelled.
pub async fn start_emulator(text: &str) -> CancellationToken {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("emulator.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = EmulatorConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let stop = CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let s = stop.clone();
    tokio::spawn(async move {
        emulator::run(cfg, s, Some(tx)).await.unwrap();
    });
    tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
        .await
        .expect("the emulator declares its topology in time");
    stop
}

/// A connection to the vhost of `url`, and a channel on it.
pub async fn open(url: &str) -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// Declares dueslag queues as the emulator does, so that an exporter started before the
/// emulator (which needs the exporter's bound push address) consumes from its first try.
pub async fn declare_queues(url: &str, queues: &[&str]) {
    let (conn, ch) = open(url).await;
    for q in queues {
        emulator::declare_dueslag_queue(&ch, q).await.unwrap();
    }
    conn.close(200, "done".into()).await.unwrap();
}

/// Messages ready in a queue, and the bodies (taken with basic.get and requeued by closing).
pub async fn queue_bodies(url: &str, queue: &str) -> Vec<Vec<u8>> {
    use lapin::options::BasicGetOptions;
    let (conn, ch) = open(url).await;
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut bodies = vec![];
    for _ in 0..q.message_count() {
        if let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            bodies.push(m.delivery.data.clone());
        }
    }
    // Closing without ack puts them back.
    conn.close(200, "done".into()).await.unwrap();
    bodies
}

/// The afsend exchange as the emulator declares it, with nothing bound to it: every publish
/// is unroutable. (The exporter never declares it.)
pub async fn declare_unbound_exchange(url: &str) {
    let emu = start_emulator(&format!(
        "[emulator]\nurl = \"{url}\"\nanvendersystem = \"{}\"\ncvr = \"29189846\"\nrequire_token = false\n",
        uuid::Uuid::nil()
    ))
    .await;
    emu.cancel();
    let (conn, ch) = open(url).await;
    ch.queue_delete(emulator::AFSEND_QUEUE.into(), Default::default())
        .await
        .unwrap();
    conn.close(200, "ok".into()).await.unwrap();
}

/// Publishes a body straight into a queue.
pub async fn publish_to_queue(url: &str, queue: &str, body: &[u8]) {
    let (conn, ch) = open(url).await;
    ch.confirm_select(Default::default()).await.unwrap();
    ch.basic_publish(
        "".into(),
        queue.into(),
        Default::default(),
        body,
        Default::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    conn.close(200, "done".into()).await.unwrap();
}

/// Publishes each body to the afsend exchange as the exporter does (direct reply-to, a
/// correlation and a message id) and returns the emulator's reply to each, as it came.
pub async fn afsend_calls(url: &str, bodies: &[&[u8]]) -> Vec<Vec<u8>> {
    use futures::StreamExt;
    use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
    let (conn, ch) = open(url).await;
    // Direct reply-to, as the exporter does: consumed without acks before the first publish.
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let reply_to = "amq.rabbitmq.reply-to";
    let mut replies = ch
        .basic_consume(
            reply_to.into(),
            "test-afsend".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out = vec![];
    for body in bodies {
        let props = lapin::BasicProperties::default()
            .with_correlation_id(uuid::Uuid::new_v4().to_string().into())
            .with_message_id(uuid::Uuid::new_v4().to_string().into())
            .with_reply_to(reply_to.into());
        ch.basic_publish(
            "AFSEND_BESKED_EXCHANGE".into(),
            "".into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .unwrap();
        let reply = tokio::time::timeout(std::time::Duration::from_secs(10), replies.next())
            .await
            .expect("the emulator answers")
            .unwrap()
            .unwrap();
        out.push(reply.data);
    }
    conn.close(200, "done".into()).await.unwrap();
    out
}

/// rabbitmqctl for the test node, as the emulator's `[emulator.rabbitmqctl]` takes it.
pub fn rabbitmqctl(b: &Broker) -> Rabbitmqctl {
    Rabbitmqctl {
        path: Some(PathBuf::from(b.var("RABBITMQ_SBIN")).join("rabbitmqctl")),
        node: Some(b.var("RABBITMQ_NODENAME").to_string()),
        env: [
            ("HOME".to_string(), b.var("RABBITMQ_HOME_DIR").to_string()),
            (
                "ERL_EPMD_PORT".to_string(),
                b.var("ERL_EPMD_PORT").to_string(),
            ),
        ]
        .into(),
    }
}

/// [`rabbitmqctl`] as the `[emulator.rabbitmqctl]` table of an emulator file.
pub fn rabbitmqctl_toml(b: &Broker) -> String {
    let ctl = rabbitmqctl(b);
    let env: Vec<String> = ctl
        .env
        .iter()
        .map(|(k, v)| format!("{k} = {v:?}"))
        .collect();
    format!(
        "[emulator.rabbitmqctl]\npath = {:?}\nnode = {:?}\nenv = {{ {} }}\n",
        ctl.path.unwrap(),
        ctl.node.unwrap(),
        env.join(", ")
    )
}
