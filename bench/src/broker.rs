//! The real-broker scenario: round trips through RabbitMQ at increasing rates, once by
//! the exporter (a separate process on the `amqp` backend, with the emulator in this
//! process playing the Beskedfordeler) and once by a raw lapin baseline that makes the
//! same hops with no exporter logic:
//!
//! publish to an exchange (confirm mode, mandatory, direct reply-to RPC) → a raw consumer
//! answers on the reply-to and republishes the body (persistent) to the dueslag's durable
//! queue → a raw consumer per dueslag (manual ack, prefetch 20) takes it.
//!
//! Each step gets a fresh vhost. The broker is the one of `--amqp-env`, or a private one
//! started with `scripts/rabbitmq.sh` and stopped afterwards.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ExchangeKind};
use rand::Rng;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::child::Exporter;
use super::stats::{self, Buckets};
use bfo_alive_exporter::emulator::{self, EmulatorConfig};

const ANVENDER: &str = "cf12c051-39ce-4066-ba11-704b46fa23c4";
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The broker of this run.
pub struct Broker {
    env: HashMap<String, String>,
    /// Set when this run started it (and so stops it).
    started: Option<(PathBuf, PathBuf)>,
}

fn read_env(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

impl Broker {
    pub fn existing(env: &Path) -> anyhow::Result<Broker> {
        Ok(Broker {
            env: read_env(env)?,
            started: None,
        })
    }

    /// Starts a private RabbitMQ in `dir` with `script start DIR`.
    pub fn start(script: &Path, dir: &Path) -> anyhow::Result<Broker> {
        let st = Command::new(script)
            .arg("start")
            .arg(dir)
            .status()
            .with_context(|| format!("running {}", script.display()))?;
        if !st.success() {
            bail!("{} start {} failed ({st})", script.display(), dir.display());
        }
        Ok(Broker {
            env: read_env(&dir.join("env"))?,
            started: Some((script.to_path_buf(), dir.to_path_buf())),
        })
    }

    fn var(&self, k: &str) -> anyhow::Result<&str> {
        self.env
            .get(k)
            .map(String::as_str)
            .with_context(|| format!("{k} missing from the broker env"))
    }

    fn ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new(format!("{}/rabbitmqctl", self.var("RABBITMQ_SBIN")?))
            .env("HOME", self.var("RABBITMQ_HOME_DIR")?)
            .env("ERL_EPMD_PORT", self.var("ERL_EPMD_PORT")?)
            .args(["-q", "-n", self.var("RABBITMQ_NODENAME")?])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A fresh vhost with full rights for the test user; its AMQP URL.
    pub fn vhost(&self, name: &str) -> anyhow::Result<(String, String)> {
        let vhost = format!("bench-{name}-{}", uuid::Uuid::new_v4().simple());
        self.ctl(&["add_vhost", &vhost])?;
        self.ctl(&[
            "set_permissions",
            "-p",
            &vhost,
            self.var("AMQP_USER")?,
            ".*",
            ".*",
            ".*",
        ])?;
        let (base, _) = self
            .var("AMQP_URL")?
            .rsplit_once('/')
            .context("AMQP_URL has no vhost")?;
        Ok((vhost.clone(), format!("{base}/{vhost}")))
    }

    pub fn drop_vhost(&self, vhost: &str) {
        let _ = self.ctl(&["delete_vhost", vhost]);
    }

    /// Stops the broker if this run started it.
    pub fn stop(self) {
        if let Some((script, dir)) = &self.started {
            let _ = Command::new(script).arg("stop").arg(dir).status();
        }
    }
}

/// One rate step of one side.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub offered_per_s: f64,
    pub delivered_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub samples: f64,
    /// Exporter only: its CPU share of one core during the window.
    pub cpu_share_of_one_core: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RateResult {
    pub rate: f64,
    pub dueslag: usize,
    pub interval_ms: f64,
    pub exporter: Step,
    pub baseline: Step,
    pub throughput_ratio: f64,
    pub p50_ratio: f64,
    pub p99_ratio: f64,
}

/// Settings of the broker scenario.
pub struct BrokerRun<'a> {
    pub bin: &'a Path,
    pub dir: &'a Path,
    pub dueslag: usize,
    pub warmup: Duration,
    pub window: Duration,
}

fn names(n: usize) -> impl Iterator<Item = (String, String)> {
    (1..=n).map(|i| (format!("b{i:05}"), format!("bq{i:05}")))
}

/// Latency buckets for the exporter: ×1.05 from 0.1 ms to 60 s.
fn fine_buckets() -> Vec<f64> {
    stats::geometric(0.0001, 60.0, 1.05)
}

pub async fn run_rate(b: &Broker, r: &BrokerRun<'_>, rate: f64) -> anyhow::Result<RateResult> {
    let interval = Duration::from_secs_f64(r.dueslag as f64 / rate);
    eprintln!(
        "  broker: {rate}/s = {} dueslag every {:?}: exporter…",
        r.dueslag, interval
    );
    let exporter = exporter_step(b, r, interval, rate).await?;
    eprintln!(
        "    exporter {:.0}/s p50 {:.2} ms p99 {:.2} ms; baseline…",
        exporter.delivered_per_s, exporter.p50_ms, exporter.p99_ms
    );
    let baseline = baseline_step(b, r, interval, rate).await?;
    eprintln!(
        "    baseline {:.0}/s p50 {:.2} ms p99 {:.2} ms",
        baseline.delivered_per_s, baseline.p50_ms, baseline.p99_ms
    );
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    Ok(RateResult {
        rate,
        dueslag: r.dueslag,
        interval_ms: interval.as_secs_f64() * 1e3,
        throughput_ratio: ratio(exporter.delivered_per_s, baseline.delivered_per_s),
        p50_ratio: ratio(exporter.p50_ms, baseline.p50_ms),
        p99_ratio: ratio(exporter.p99_ms, baseline.p99_ms),
        exporter,
        baseline,
    })
}

async fn exporter_step(
    b: &Broker,
    r: &BrokerRun<'_>,
    interval: Duration,
    rate: f64,
) -> anyhow::Result<Step> {
    let (vhost, url) = b.vhost("exporter")?;
    let result = async {
        let mut emu = format!(
            "[emulator]\nurl = \"{url}\"\nanvendersystem = \"{ANVENDER}\"\ncvr = \"29189846\"\nrequire_token = false\n"
        );
        let mut exp = format!(
            "[exporter]\ninstance = \"bench\"\nroundtrip_buckets = [{}]\n[identity]\nanvendersystem = \"{ANVENDER}\"\ncvr = \"29189846\"\n[broker]\nbackend = \"amqp\"\nurl = \"{url}\"\nauth = \"plain\"\n[defaults]\ninterval = \"{}us\"\ntimeout = \"10s\"\nsend_timeout = \"5s\"\n",
            fine_buckets()
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            interval.as_micros()
        );
        for (i, (name, queue)) in names(r.dueslag).enumerate() {
            // The queues have names, so each dueslag gets a UUID of its own: the
            // RelateretObjekt the emulator routes it by.
            let d = format!(
                "[[dueslag]]\nname = \"{name}\"\nmode = \"pull\"\nqueue = \"{queue}\"\nid = \"00000000-0000-4000-8000-{i:012}\"\n"
            );
            emu.push_str(&d);
            exp.push_str(&d);
        }
        let path = r.dir.join("emulator.toml");
        std::fs::write(&path, emu)?;
        let emu = RunningEmulator::start(&path, Duration::from_secs(60)).await?;
        let ex = Exporter::spawn(r.bin, r.dir, &format!("broker-{rate}"), &exp).await?;
        tokio::time::sleep(r.warmup.max(interval * 2)).await;
        let (a, _) = ex.scrape().await?;
        let (ta, cpu_a) = (Instant::now(), ex.cpu_seconds());
        tokio::time::sleep(r.window).await;
        let (cpu_b, span) = (ex.cpu_seconds(), ta.elapsed().as_secs_f64());
        let (bt, _) = ex.scrape().await?;
        ex.stop();
        emu.stop().await;
        let ok = |t: &str| {
            stats::sum(t, "bfo_alive_probes_total", |l| {
                stats::label(l, "result") == Some("success")
            })
        };
        let name = "bfo_alive_roundtrip_duration_seconds_bucket";
        let h = Buckets::from_text(&bt, name).minus(&Buckets::from_text(&a, name));
        let ms = |q| h.quantile(q).unwrap_or(f64::NAN) * 1e3;
        Ok(Step {
            offered_per_s: rate,
            delivered_per_s: (ok(&bt) - ok(&a)) / span,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            samples: h.count(),
            cpu_share_of_one_core: Some((cpu_b - cpu_a) / span),
        })
    }
    .await;
    b.drop_vhost(&vhost);
    result
}

/// What the baseline's consumers record.
#[derive(Default)]
struct Recorder {
    recording: AtomicBool,
    delivered: AtomicU64,
    latencies: Mutex<Vec<f64>>,
}

const BASE_EXCHANGE: &str = "bench.afsend";
const BASE_QUEUE: &str = "bench.afsend.queue";

async fn baseline_step(
    b: &Broker,
    r: &BrokerRun<'_>,
    interval: Duration,
    rate: f64,
) -> anyhow::Result<Step> {
    let (vhost, url) = b.vhost("baseline")?;
    // Bounded: a wedged connection ends the step with an error instead of hanging the run.
    let limit = r.warmup.max(interval * 2) + r.window + Duration::from_secs(60);
    let result = tokio::time::timeout(limit, baseline(&url, r, interval, rate))
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "the baseline step did not finish within {limit:?}"
            ))
        });
    b.drop_vhost(&vhost);
    result
}

async fn baseline(
    url: &str,
    r: &BrokerRun<'_>,
    interval: Duration,
    rate: f64,
) -> anyhow::Result<Step> {
    // Plain AMQP with PLAIN auth: the baseline is lapin and nothing of the exporter.
    let connect = || lapin::Connection::connect(url, lapin::ConnectionProperties::default());
    let (send_conn, relay_conn, recv_conn) = (connect().await?, connect().await?, connect().await?);
    // The topology, as the emulator declares it.
    let ch = relay_conn.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.exchange_declare(
        BASE_EXCHANGE.into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(BASE_QUEUE.into(), durable, FieldTable::default())
        .await?;
    ch.queue_bind(
        BASE_QUEUE.into(),
        BASE_EXCHANGE.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    for (_, q) in names(r.dueslag) {
        emulator::declare_dueslag_queue(&ch, &q).await?;
    }
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let rec = Arc::new(Recorder::default());
    let epoch = Instant::now();
    let mut tasks = vec![tokio::spawn(relay(
        ch,
        relay_conn.create_channel().await?,
        stop.clone(),
    ))];
    // Consumers first, then senders.
    for (_, q) in names(r.dueslag) {
        let c = recv_conn.create_channel().await?;
        tasks.push(tokio::spawn(receive(
            c,
            q,
            rec.clone(),
            epoch,
            stop.clone(),
        )));
    }
    // A body the size of an Alive message.
    let size = bfo_alive_exporter::message::build_alive(&bfo_alive_exporter::message::AliveSpec {
        besked_id: uuid::Uuid::new_v4(),
        anvendersystem: uuid::Uuid::new_v4(),
        cvr: "29189846",
        relateret_objekt: &bfo_alive_exporter::message::RelateretObjekt::dueslag(
            uuid::Uuid::new_v4(),
            &bfo_alive_exporter::message::UnikId::Urn("urn:bfo-alive-exporter:dueslag".into()),
        ),
        payload: &bfo_alive_exporter::message::ProbePayload {
            instance: "bench".into(),
            run: uuid::Uuid::new_v4(),
            dueslag: "b00001".into(),
            sequence: 1,
            sent_at: std::time::SystemTime::now(),
        },
    })
    .len();
    for (i, (_, q)) in names(r.dueslag).enumerate() {
        let c = send_conn.create_channel().await?;
        tasks.push(tokio::spawn(send(
            c,
            i,
            q,
            size,
            interval,
            epoch,
            stop.clone(),
        )));
    }
    tokio::time::sleep(r.warmup.max(interval * 2)).await;
    rec.recording.store(true, Ordering::SeqCst);
    let ta = Instant::now();
    tokio::time::sleep(r.window).await;
    rec.recording.store(false, Ordering::SeqCst);
    let span = ta.elapsed().as_secs_f64();
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    for c in [send_conn, relay_conn, recv_conn] {
        let _ = c.close(200, "bench done".into()).await;
    }
    let mut lat = std::mem::take(&mut *rec.latencies.lock().unwrap());
    let n = lat.len() as f64;
    Ok(Step {
        offered_per_s: rate,
        delivered_per_s: rec.delivered.load(Ordering::SeqCst) as f64 / span,
        p50_ms: stats::percentile(&mut lat, 0.5).unwrap_or(f64::NAN),
        p99_ms: stats::percentile(&mut lat, 0.99).unwrap_or(f64::NAN),
        samples: n,
        cpu_share_of_one_core: None,
    })
}

/// The Beskedfordeler double: answer on reply-to, republish the body to its queue, ack.
async fn relay(ch: Channel, out: Channel, stop: CancellationToken) -> anyhow::Result<()> {
    let mut consumer = ch
        .basic_consume(
            BASE_QUEUE.into(),
            "bench-relay".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let reply = b"<StandardRetur><StatusKode>20</StatusKode></StandardRetur>";
    loop {
        let d = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            d = consumer.next() => d,
        };
        let Some(Ok(d)) = d else { return Ok(()) };
        if let Some(reply_to) = d.properties.reply_to().clone() {
            let mut props = BasicProperties::default().with_content_type("application/xml".into());
            if let Some(c) = d.properties.correlation_id().clone() {
                props = props.with_correlation_id(c);
            }
            ch.basic_publish(
                "".into(),
                reply_to,
                BasicPublishOptions::default(),
                reply,
                props,
            )
            .await?;
        }
        // The queue is named in the first field of the body.
        let queue = String::from_utf8_lossy(&d.data[..7]).to_string();
        out.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            &d.data,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/xml".into()),
        )
        .await?;
        d.acker.ack(BasicAckOptions::default()).await?;
    }
}

/// One dueslag's consumer: manual ack, prefetch 20, latency from the send time in the body.
async fn receive(
    ch: Channel,
    queue: String,
    rec: Arc<Recorder>,
    epoch: Instant,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    ch.basic_qos(20, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            format!("bench-{queue}").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let d = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            d = consumer.next() => d,
        };
        let Some(Ok(d)) = d else { return Ok(()) };
        let now = epoch.elapsed().as_nanos() as f64;
        let sent: f64 = std::str::from_utf8(&d.data[8..28])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(now);
        if rec.recording.load(Ordering::Relaxed) {
            rec.delivered.fetch_add(1, Ordering::Relaxed);
            rec.latencies.lock().unwrap().push((now - sent) / 1e6);
        }
        d.acker.ack(BasicAckOptions::default()).await?;
    }
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

/// One dueslag's sender: every interval (±10 %), a confirmed mandatory publish with a
/// direct reply-to RPC, waiting for the reply like the exporter's Afsend.
async fn send(
    ch: Channel,
    index: usize,
    queue: String,
    size: usize,
    interval: Duration,
    epoch: Instant,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut replies = ch
        .basic_consume(
            DIRECT_REPLY_TO.into(),
            format!("bench-reply-{index}").as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let pending: Pending = Arc::default();
    let p = pending.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(d)) = replies.next().await {
            if let Some(c) = d.properties.correlation_id().as_ref()
                && let Some(tx) = p.lock().unwrap().remove(c.as_str())
            {
                let _ = tx.send(());
            }
        }
    });
    let first = interval.mul_f64(rand::rng().random_range(0.0..1.0));
    let mut next = tokio::time::Instant::now() + first;
    let mut inflight = futures::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {
                let sent = epoch.elapsed().as_nanos();
                let mut body = String::with_capacity(size);
                let _ = write!(body, "{queue} {sent:020} ");
                while body.len() < size {
                    body.push('x');
                }
                let corr = uuid::Uuid::new_v4().to_string();
                let (tx, rx) = oneshot::channel();
                pending.lock().unwrap().insert(corr.clone(), tx);
                let props = BasicProperties::default()
                    .with_correlation_id(corr.as_str().into())
                    .with_reply_to(DIRECT_REPLY_TO.into())
                    .with_message_id(uuid::Uuid::new_v4().to_string().into())
                    .with_content_type("application/xml".into());
                let ch = ch.clone();
                inflight.push(async move {
                    let confirm = ch
                        .basic_publish(
                            BASE_EXCHANGE.into(),
                            "".into(),
                            BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                            body.as_bytes(),
                            props,
                        )
                        .await?
                        .await?;
                    let _ = confirm;
                    let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
                    Ok::<_, lapin::Error>(())
                });
                let f = rand::rng().random_range(-0.1..=0.1);
                next = tokio::time::Instant::now() + interval.mul_f64(1.0 + f);
            }
            Some(_) = inflight.next(), if !inflight.is_empty() => {}
        }
    }
    reader.abort();
    Ok(())
}

/// The emulator of a scenario, in this process: started on the configuration at a path,
/// serving once it has declared its topology, stopped by [`RunningEmulator::stop`] (or
/// when dropped, on an error path).
pub struct RunningEmulator {
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    stop: tokio_util::sync::DropGuard,
}

impl RunningEmulator {
    /// Starts it and waits up to `within` for its topology.
    pub async fn start(path: &Path, within: Duration) -> anyhow::Result<RunningEmulator> {
        let cfg = EmulatorConfig::load(path)?;
        let stop = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let s = stop.clone();
        let task = tokio::spawn(async move { emulator::run(cfg, s, Some(tx)).await });
        let me = RunningEmulator {
            task,
            stop: stop.drop_guard(),
        };
        tokio::time::timeout(within, rx.recv())
            .await
            .context("the emulator did not declare its topology in time")?;
        Ok(me)
    }

    /// Stops it and waits until it has.
    pub async fn stop(self) {
        drop(self.stop);
        let _ = self.task.await;
    }
}
