//! Broker faults on the real RabbitMQ, with the emulator playing the Beskedfordeler: the
//! Afsend exchange deleted and declared again, a dueslag queue deleted, a TCP proxy between
//! exporter and broker that adds latency, stalls and resets connections, the node killed
//! with SIGKILL and started again, and the node stopped with SIGSTOP for 60 s (a half-open
//! connection that only AMQP heartbeats notice).
//!
//! For each fault the test records what the metrics say while it lasts
//! (`bfo_alive_connection_up`, the failures by reason, the probe results), asserts that
//! the probe loops never stall (`bfo_alive_last_attempt_timestamp_seconds` keeps moving),
//! that probes succeed again within two intervals plus the reconnect backoff once the fault
//! ends, and that tasks, threads and memory do not grow; and prints the figures
//! (`cargo test --test broker_faults -- --nocapture`, RELIABILITY.md). `BFO_FAULTS`
//! picks faults to rerun (see [`wanted`]); `BFO_FAULTS_TRACE=1` prints the process's tasks,
//! threads and memory every 250 ms of a fault; `BFO_FAULTS_LOG=info` (a tracing filter)
//! prints the exporters' and the emulator's log.
//!
//! One test drives every fault in turn: killing or stopping the node would disturb any
//! other test of this binary beside it (cargo runs test binaries one after another). The
//! node is started again by `scripts/rabbitmq.sh restart`, which keeps its name, ports and
//! data; a guard continues (SIGCONT) or restarts it should the test fail halfway.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bfo_alive_exporter::emulator;
use bfo_alive_exporter::server::Server;
use common::broker::*;
use common::emulator::*;
use common::*;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::FieldTable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The Beskedfordeler's Afsend exchange, as ARCHITECTURE.md §2 names it.
const AFSEND_EXCHANGE: &str = "AFSEND_BESKED_EXCHANGE";

/// The probe rhythm of every exporter here.
const INTERVAL: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(3);
/// The longest reconnect backoff (`backoff::RECONNECT_MAX`).
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Probes succeed again within two intervals of a fault's end, plus a reconnect backoff
/// that may have grown to its cap during the fault, plus one probe timeout; with slack for
/// a busy machine. A bound, not a speed target.
fn recovery_limit() -> Duration {
    2 * INTERVAL + BACKOFF_MAX + TIMEOUT + Duration::from_secs(10)
}

/// The exporter under test: a pull dueslag `p` and a push dueslag `h`, directly on the
/// broker, with the default heartbeat.
const DUESLAG: &str = "[[dueslag]]\nname = \"p\"\nmode = \"pull\"\nqueue = \"q-p\"\n\
                       id = \"7c1a0d4e-2b6f-4e1a-9c3d-5f7a8b9c0d11\"\n\
                       [[dueslag]]\nname = \"h\"\nmode = \"push\"\n\
                       id = \"7c1a0d4e-2b6f-4e1a-9c3d-5f7a8b9c0d12\"\n";
/// The exporter behind the proxy: a pull dueslag `x`.
const PROXIED: &str = "[[dueslag]]\nname = \"x\"\nmode = \"pull\"\nqueue = \"q-x\"\n\
                       id = \"7c1a0d4e-2b6f-4e1a-9c3d-5f7a8b9c0d13\"\n";

fn exporter_config(url: &str, dueslag: &str, broker_extra: &str) -> String {
    format!(
        "{IDENTITY}{}{broker_extra}\n[defaults]\ninterval = \"{}ms\"\ntimeout = \"{}s\"\n\
         send_timeout = \"1s\"\n\n{dueslag}",
        amqp_broker_table(url),
        INTERVAL.as_millis(),
        TIMEOUT.as_secs(),
    )
}

fn ok_series(d: &str) -> String {
    let mode = if d == "h" { "push" } else { "pull" };
    format!(r#"bfo_alive_probes_total{{dueslag="{d}",mode="{mode}",result="success"}}"#)
}

fn attempt_series(d: &str) -> String {
    let mode = if d == "h" { "push" } else { "pull" };
    format!(r#"bfo_alive_last_attempt_timestamp_seconds{{dueslag="{d}",mode="{mode}"}}"#)
}

fn up_series(service: &str) -> String {
    format!(r#"bfo_alive_connection_up{{connection="{service}",cvr="29189846"}}"#)
}

/// Every counter series that says something failed or arrived oddly, with its value.
fn counters(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| {
            [
                "bfo_alive_send_failures_total{",
                "bfo_alive_consume_failures_total{",
                "bfo_alive_probes_total{",
                "bfo_alive_lost_total{",
                "bfo_alive_received_total{",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            Some((series.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The counters that changed between two scrapes, by how much.
fn changed(before: &str, after: &str) -> BTreeMap<String, f64> {
    let b = counters(before);
    counters(after)
        .into_iter()
        .filter_map(|(k, v)| {
            let d = v - b.get(&k).copied().unwrap_or(0.0);
            (d != 0.0).then_some((k, d))
        })
        .collect()
}

/// Short names for the report: `send_failures{p,connection}` and so on.
fn short(series: &str) -> String {
    let (name, labels) = series.split_once('{').unwrap_or((series, ""));
    let name = name
        .trim_start_matches("bfo_alive_")
        .trim_end_matches("_total");
    let values: Vec<&str> = labels
        .trim_end_matches('}')
        .split(',')
        .filter_map(|kv| kv.split_once('=').map(|(_, v)| v.trim_matches('"')))
        .filter(|v| *v != "pull" && *v != "push")
        .collect();
    format!("{name}{{{}}}", values.join(","))
}

/// Tasks, threads and resident memory of this process (exporters, emulator, proxy), and
/// the HTTP connections open to the exporter's listener (the emulator's pooled push
/// connections: two tasks each, one per side, kept while idle).
#[derive(Debug, Clone, Copy)]
struct Usage {
    tasks: usize,
    threads: u64,
    rss_kb: u64,
    http_conns: usize,
}

/// Established TCP connections whose local port is `port` (IPv4, this network namespace).
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap_or_default();
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // local address, remote address, state (01 = ESTABLISHED)
            cols.len() > 3 && cols[1].ends_with(&port) && cols[3] == "01"
        })
        .count()
}

/// The port of the exporter's main listener, for [`Usage::http_conns`].
static HTTP_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

fn usage() -> Usage {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Usage {
        tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        threads: field("Threads:"),
        rss_kb: field("VmRSS:"),
        http_conns: established_to(HTTP_PORT.load(Ordering::Relaxed)),
    }
}

/// What one fault did.
struct Row {
    fault: String,
    /// The lowest `connection_up` of each connection while the fault lasted.
    lowest_up: BTreeMap<&'static str, f64>,
    /// The counters that moved while the fault lasted (and recovery, for the late ones).
    during: BTreeMap<String, f64>,
    /// From the fault's end until every watched dueslag succeeded again, twice.
    recovery: Duration,
    before: Usage,
    /// The most threads and the most memory seen while the fault lasted.
    peak: Usage,
    after: Usage,
}

/// One exporter and the dueslag whose probes it watches.
struct Watched<'a> {
    s: &'a Server,
    dueslag: &'a [&'a str],
    services: &'a [&'static str],
}

impl Watched<'_> {
    async fn successes(&self) -> Vec<f64> {
        let t = scrape(self.s).await;
        self.dueslag
            .iter()
            .map(|d| value(&t, &ok_series(d)).unwrap_or(0.0))
            .collect()
    }

    /// Waits until every dueslag has `more` successes beyond `since`; how long it took.
    async fn succeed_again(&self, since: &[f64], more: f64, limit: Duration) -> Duration {
        let start = Instant::now();
        wait_for(limit, || async {
            let now = self.successes().await;
            if now.iter().zip(since).all(|(n, s)| *n >= s + more) {
                Ok(())
            } else {
                Err(format!(
                    "successes of {:?}: {now:?}, want {more} beyond {since:?}",
                    self.dueslag
                ))
            }
        })
        .await;
        start.elapsed()
    }

    /// Runs `fault` (which returns once the fault is over) while watching the metrics every
    /// 250 ms: the lowest `connection_up`, and that every dueslag's last attempt moves.
    /// Then waits for the probes to succeed again and reports.
    async fn through<F: Future<Output = ()>>(&self, name: &str, fault: F) -> Row {
        let before_text = scrape(self.s).await;
        let before = usage();
        let attempts_at = |t: &str| -> Vec<f64> {
            self.dueslag
                .iter()
                .map(|d| value(t, &attempt_series(d)).unwrap_or(0.0))
                .collect()
        };
        let first_attempts = attempts_at(&before_text);
        let mut lowest_up: BTreeMap<&'static str, f64> =
            self.services.iter().map(|s| (*s, 1.0)).collect();
        let mut last_text = before_text.clone();
        let fault_started = Instant::now();
        let mut peak = before;
        {
            tokio::pin!(fault);
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = &mut fault => break,
                    _ = tick.tick() => {
                        let t = scrape(self.s).await;
                        for (service, low) in lowest_up.iter_mut() {
                            let v = value(&t, &up_series(service)).unwrap_or(-1.0);
                            *low = low.min(v);
                        }
                        last_text = t;
                        let u = usage();
                        peak.tasks = peak.tasks.max(u.tasks);
                        peak.threads = peak.threads.max(u.threads);
                        peak.rss_kb = peak.rss_kb.max(u.rss_kb);
                        if std::env::var_os("BFO_FAULTS_TRACE").is_some() {
                            eprintln!("{name} +{:.1}s: {u:?}", fault_started.elapsed().as_secs_f64());
                        }
                    }
                }
            }
        }
        let fault_took = fault_started.elapsed();
        let end_text = scrape(self.s).await;
        // No stuck loop: every dueslag kept attempting through the fault.
        let moved = attempts_at(&last_text);
        if fault_took > 4 * INTERVAL {
            for ((d, first), now) in self.dueslag.iter().zip(&first_attempts).zip(&moved) {
                assert!(
                    now > first,
                    "{name}: the probe loop of {d} stalled (last attempt {first} → {now})"
                );
            }
        }
        let since: Vec<f64> = self
            .dueslag
            .iter()
            .map(|d| value(&end_text, &ok_series(d)).unwrap_or(0.0))
            .collect();
        let recovery = self.succeed_again(&since, 2.0, recovery_limit()).await;
        let text = scrape(self.s).await;
        for service in self.services {
            assert_eq!(
                value(&text, &up_series(service)),
                Some(1.0),
                "{name}: {service} is up again"
            );
        }
        // Let what the fault left behind (retries, timeouts of probes sent during it,
        // closes waiting for the broker) end before counting tasks: up to 20 s.
        tokio::time::sleep(TIMEOUT + INTERVAL).await;
        let settling = Instant::now();
        let mut after = usage();
        while after.tasks > before.tasks + 5 && settling.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            after = usage();
        }
        Row {
            fault: name.to_string(),
            lowest_up,
            during: changed(&before_text, &scrape(self.s).await),
            recovery,
            before,
            peak,
            after,
        }
    }
}

impl Row {
    /// Both connections were seen down while the fault lasted.
    fn assert_went_down(&self) {
        for service in ["afsend", "afhent"] {
            assert_eq!(
                self.lowest_up.get(service),
                Some(&0.0),
                "{}: {service} never seen down: {:?}",
                self.fault,
                self.lowest_up
            );
        }
    }
}

fn report(rows: &[Row]) {
    eprintln!("\n==== broker faults ====");
    for r in rows {
        eprintln!(
            "{}: recovery {:.1} s; lowest connection_up {:?}; tasks {} -> {} (peak {}), \
             threads {} -> {} (peak {}), VmRSS {} -> {} KiB (peak {}), push connections {} -> {}",
            r.fault,
            r.recovery.as_secs_f64(),
            r.lowest_up,
            r.before.tasks,
            r.after.tasks,
            r.peak.tasks,
            r.before.threads,
            r.after.threads,
            r.peak.threads,
            r.before.rss_kb,
            r.after.rss_kb,
            r.peak.rss_kb,
            r.before.http_conns,
            r.after.http_conns
        );
        let moved: Vec<String> = r
            .during
            .iter()
            .filter(|(k, _)| !k.contains("result=\"success\"") && !k.contains("kind=\"matched\""))
            .map(|(k, v)| format!("{} +{v}", short(k)))
            .collect();
        eprintln!("    moved: {}", moved.join(", "));
    }
    eprintln!("=======================\n");
}

/// No growth: tasks and threads back near where they were, memory within a generous
/// margin (a fault may leave allocator arenas larger; a leak per probe or connection
/// would exceed it over these runs).
fn assert_no_growth(r: &Row) {
    // The emulator's push client may keep more idle connections after a backlog.
    let pooled = 2 * r.after.http_conns.saturating_sub(r.before.http_conns);
    assert!(
        r.after.tasks <= r.before.tasks + pooled + 10,
        "{}: tasks {} -> {} ({} more pooled HTTP connections)",
        r.fault,
        r.before.tasks,
        r.after.tasks,
        pooled / 2
    );
    assert!(
        r.after.threads <= r.before.threads + 4,
        "{}: threads {} -> {}",
        r.fault,
        r.before.threads,
        r.after.threads
    );
    assert!(
        r.after.rss_kb <= r.before.rss_kb + 64 * 1024,
        "{}: VmRSS {} -> {} KiB",
        r.fault,
        r.before.rss_kb,
        r.after.rss_kb
    );
}

fn sum(during: &BTreeMap<String, f64>, prefix: &str, needle: &str) -> f64 {
    during
        .iter()
        .filter(|(k, _)| k.starts_with(prefix) && k.contains(needle))
        .map(|(_, v)| v)
        .sum()
}

// ---------------------------------------------------------------- the node

/// The broker node's process, continued or started again if the test ends while it is
/// stopped or dead.
struct Node {
    dir: PathBuf,
    stopped: bool,
    killed: bool,
}

impl Node {
    fn new() -> Node {
        let env = std::env::var_os(ENV_VAR).expect("broker env");
        Node {
            dir: PathBuf::from(env).parent().unwrap().to_path_buf(),
            stopped: false,
            killed: false,
        }
    }

    /// The node's PID now (it changes with a restart).
    fn pid(&self) -> String {
        let b = Broker::get().unwrap();
        let pid = b.var("RABBITMQ_PID").to_string();
        assert!(!pid.is_empty(), "RABBITMQ_PID is in the broker env");
        pid
    }

    fn signal(&self, sig: &str) {
        let st = std::process::Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .unwrap();
        assert!(st.success(), "kill {sig}");
    }

    fn stop(&mut self) {
        self.signal("-STOP");
        self.stopped = true;
    }

    fn cont(&mut self) {
        self.signal("-CONT");
        self.stopped = false;
    }

    fn kill(&mut self) {
        let pid = self.pid();
        self.signal("-KILL");
        self.killed = true;
        // Gone before anything else happens.
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq.sh")
    }

    /// Starts the node again; async, so the exporter runs on meanwhile.
    async fn restart(&mut self) {
        let out = tokio::process::Command::new(Self::script())
            .args(["restart", self.dir.to_str().unwrap()])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "rabbitmq.sh restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.killed = false;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.stopped {
            self.signal("-CONT");
        }
        if self.killed {
            let _ = std::process::Command::new(Self::script())
                .args(["restart", self.dir.to_str().unwrap()])
                .status();
        }
    }
}

// ---------------------------------------------------------------- the proxy

/// A TCP proxy to the broker that can add latency to every chunk, stall (forward nothing,
/// either way, on old and new connections), and reset every connection (RST).
struct Proxy {
    addr: SocketAddr,
    latency_ms: Arc<AtomicU64>,
    stalled: watch::Sender<bool>,
    resets: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let latency_ms = Arc::new(AtomicU64::new(0));
        let stalled = watch::Sender::new(false);
        let resets = watch::Sender::new(0);
        let (l, s, r) = (latency_ms.clone(), stalled.clone(), resets.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(pipe(
                    client,
                    server,
                    l.clone(),
                    s.subscribe(),
                    r.subscribe(),
                ));
            }
        });
        Proxy {
            addr,
            latency_ms,
            stalled,
            resets,
            task,
        }
    }

    fn reset_all(&self) {
        self.resets.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.reset_all();
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    latency_ms: Arc<AtomicU64>,
    stalled: watch::Receiver<bool>,
    mut resets: watch::Receiver<u64>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let reset = {
        let up = pump(&mut cr, &mut sw, &latency_ms, stalled.clone());
        let down = pump(&mut sr, &mut cw, &latency_ms, stalled);
        tokio::select! {
            _ = up => false,
            _ = down => false,
            _ = resets.changed() => true,
        }
    };
    if reset {
        // Closing with a zero linger sends RST instead of FIN.
        let _ = cw.as_ref().set_zero_linger();
        let _ = sw.as_ref().set_zero_linger();
    }
}

async fn pump(
    r: &mut OwnedReadHalf,
    w: &mut OwnedWriteHalf,
    latency_ms: &AtomicU64,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let ms = latency_ms.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        // Data read before a stall is held back until it ends.
        if stalled.wait_for(|s| !*s).await.is_err() || w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------- the faults

/// Whether to run the fault whose name contains `key`: all of them, or those named in
/// `BFO_FAULTS` (comma-separated keys: exchange, queue, proxy, kill, stop), to rerun one.
fn wanted(key: &str) -> bool {
    std::env::var("BFO_FAULTS").map_or(true, |v| v.split(',').any(|k| k.trim() == key))
}

#[tokio::test]
async fn broker_faults_are_survived() {
    let Some(b) = Broker::get() else { return };
    if let Ok(filter) = std::env::var("BFO_FAULTS_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let started = Instant::now();
    let url = b.vhost("faults");
    let vhost = vhost_of(&url);
    declare_queues(&url, &["q-p", "q-x"]).await;
    let (s, _f) = start(&exporter_config(&url, DUESLAG, "")).await;
    HTTP_PORT.store(s.addr.port(), Ordering::Relaxed);
    let emulator_config = format!(
        "{}{DUESLAG}push_url = \"http://{}/push/h\"\n{PROXIED}",
        emulator_table(&url),
        s.addr
    );
    let emu = start_emulator(&emulator_config).await;
    let w = Watched {
        s: &s,
        dueslag: &["p", "h"],
        services: &["afsend", "afhent"],
    };
    w.succeed_again(&[0.0, 0.0], 2.0, Duration::from_secs(30))
        .await;
    // Sends that failed before the emulator was up may still be retrying.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut rows = vec![];

    // The Afsend exchange deleted, then declared and bound again (the Beskedfordeler's
    // operators restoring it): sends fail as unroutable while the connection stays up.
    if wanted("exchange") {
        let row = w
            .through("afsend exchange deleted 5 s", async {
                let (conn, ch) = open(&url).await;
                ch.exchange_delete(AFSEND_EXCHANGE.into(), Default::default())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_secs(5)).await;
                ch.exchange_declare(
                    AFSEND_EXCHANGE.into(),
                    lapin::ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
                ch.queue_bind(
                    emulator::AFSEND_QUEUE.into(),
                    AFSEND_EXCHANGE.into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
                conn.close(200, "done".into()).await.unwrap();
            })
            .await;
        assert!(
            sum(&row.during, "bfo_alive_send_failures_total", "unroutable") >= 2.0,
            "{:?}",
            row.during
        );
        assert_eq!(
            sum(&row.during, "bfo_alive_send_failures_total", "connection"),
            0.0,
            "a missing exchange is not a connection failure: {:?}",
            row.during
        );
        assert_eq!(row.lowest_up.get("afsend"), Some(&1.0));
        rows.push(row);
    }

    // A dueslag queue deleted, then declared again: the consumer says so and retries with
    // backoff, not in a loop.
    if wanted("queue") {
        let row = w
            .through("dueslag queue deleted 8 s", async {
                let (conn, ch) = open(&url).await;
                ch.queue_delete("q-p".into(), Default::default())
                    .await
                    .unwrap();
                conn.close(200, "done".into()).await.unwrap();
                tokio::time::sleep(Duration::from_secs(8)).await;
                declare_queues(&url, &["q-p"]).await;
            })
            .await;
        let missing = sum(
            &row.during,
            "bfo_alive_consume_failures_total",
            "queue_missing",
        );
        // The consumer retries at most once a probe interval (500 ms here): 8 s is at most
        // 16 attempts, and a few more while the deletion and the declaration are seen; at
        // once in a loop it would be thousands.
        assert!(
            (1.0..=20.0).contains(&missing),
            "consume attempts on the missing queue: {missing}: {:?}",
            row.during
        );
        assert!(
            sum(&row.during, "bfo_alive_consume_failures_total", "cancelled") >= 1.0,
            "the broker's cancel is reported: {:?}",
            row.during
        );
        rows.push(row);
    }

    // The proxy: a second exporter, pull dueslag `x`, through it, with a 2 s heartbeat and
    // a 2 s connect timeout.
    if wanted("proxy") {
        let upstream: SocketAddr = format!("127.0.0.1:{}", b.var("AMQP_PORT")).parse().unwrap();
        let proxy = Proxy::start(upstream).await;
        let proxied_url = format!(
            "amqp://{}:{}@{}/{vhost}?connection_timeout=2000",
            b.var("AMQP_USER"),
            b.var("AMQP_PASSWORD"),
            proxy.addr
        );
        let (x, _xf) = start(&exporter_config(
            &proxied_url,
            PROXIED,
            "heartbeat = \"2s\"\n",
        ))
        .await;
        let wx = Watched {
            s: &x,
            dueslag: &["x"],
            services: &["afsend", "afhent"],
        };
        wx.succeed_again(&[0.0], 2.0, Duration::from_secs(30)).await;

        let row = wx
            .through("proxy: 300 ms latency per chunk 5 s", async {
                proxy.latency_ms.store(300, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(5)).await;
                proxy.latency_ms.store(0, Ordering::Relaxed);
            })
            .await;
        assert_eq!(
            row.lowest_up.get("afsend"),
            Some(&1.0),
            "latency is no outage"
        );
        rows.push(row);

        let row = wx
            .through("proxy: stalled 10 s", async {
                proxy.stalled.send_replace(true);
                tokio::time::sleep(Duration::from_secs(10)).await;
                proxy.stalled.send_replace(false);
            })
            .await;
        // Two heartbeats of 2 s without a frame: the connections were found dead.
        row.assert_went_down();
        rows.push(row);

        let row = wx
            .through("proxy: every connection reset, 3 times", async {
                for _ in 0..3 {
                    proxy.reset_all();
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            })
            .await;
        rows.push(row);
        x.stop().await;
    }

    let mut node = Node::new();

    // SIGKILL: the node dies without closing anything, and starts again with its data.
    if wanted("kill") {
        let row = w
            .through("node killed (SIGKILL) and restarted", async {
                node.kill();
                tokio::time::sleep(Duration::from_secs(2)).await;
                node.restart().await;
            })
            .await;
        row.assert_went_down();
        assert!(
            sum(&row.during, "bfo_alive_send_failures_total", "connection") >= 1.0,
            "{:?}",
            row.during
        );
        rows.push(row);
    }

    // SIGSTOP for 60 s: every TCP connection stays open and silent, so only the heartbeat
    // (10 s by default: two of them) finds them dead; a new connect hangs in its handshake
    // until its timeout.
    if wanted("stop") {
        let row = w
            .through("node stopped (SIGSTOP) 60 s", async {
                node.stop();
                tokio::time::sleep(Duration::from_secs(60)).await;
                node.cont();
            })
            .await;
        row.assert_went_down();
        rows.push(row);
    }

    report(&rows);
    for r in rows
        .iter()
        .filter(|_| std::env::var_os("BFO_FAULTS_TRACE").is_none())
    {
        assert_no_growth(r);
    }
    eprintln!("broker faults took {:?}", started.elapsed());
    s.stop().await;
    emu.cancel();
}
