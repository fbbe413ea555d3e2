//! The simulated Beskedfordeler: Afsend with fault injection, routing of each accepted
//! Alive message to its dueslag, and injected business and foreign messages.
//!
//! The core decides *what* happens ([`faults`]) and *when*; a [`Sink`] decides *how* a
//! message reaches a dueslag. The in-process sink ([`LocalSink`]) feeds [`queue::SimQueue`]s
//! and POSTs to push endpoints over real HTTP; the emulator's sink publishes to RabbitMQ.
//!
//! Routing: every dueslag's abonnement is taken to filter on its own name, so an Alive
//! message reaches the dueslag named in its probe payload.
//!
//! Afsend replies are documents, written in the dueslag's `reply_shape`, so the sender
//! reads them as it reads the Beskedfordeler's. Everything else the simulator writes is
//! valid against KOMBIT's schemas.

pub mod faults;
pub mod push;
pub mod queue;
pub mod timer;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{DueslagSpec, Faults, Mode};
use crate::message::{
    ReplyShape, StandardRetur, build_afsend_reply, build_business_message, parse_haendelsesbesked,
};
use crate::protocol::status;
use faults::Fate;
use push::Redelivery;
use queue::SimQueue;
use timer::DeliveryTimer;

/// A dueslag as the Beskedfordeler knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    pub mode: Mode,
    /// Pull: the queue name.
    pub queue: Option<String>,
    /// Push: the endpoint URL.
    pub push_url: Option<String>,
}

/// Delivers a message into a dueslag.
pub trait Sink: Send + Sync + 'static {
    fn deliver(&self, target: &Target, body: Bytes);
}

/// The answer to one Afsend call.
#[derive(Debug, Clone, PartialEq)]
pub enum AfsendAnswer {
    /// The reply document, written in the dueslag's `reply_shape`: the sender reads it as it
    /// would read the Beskedfordeler's.
    Reply(Bytes),
    /// The reply, to be given this much later (fault `reply_delay`).
    Delayed(Bytes, Duration),
    Outage,
    Unroutable,
    NoReply,
}

/// What an injector puts into a dueslag.
#[derive(Debug, Clone, Copy)]
enum Injected {
    /// A non-Alive message: stands in for business traffic.
    Business,
    /// An Alive message of another exporter instance.
    ForeignAlive,
}

fn reply(r: StandardRetur, shape: ReplyShape) -> AfsendAnswer {
    AfsendAnswer::Reply(Bytes::from(build_afsend_reply(&r, shape)))
}

/// An Alive message as another exporter instance would send it.
fn foreign_alive(dueslag: &str) -> String {
    let payload = crate::message::ProbePayload {
        instance: "another-instance".into(),
        run: Uuid::new_v4(),
        dueslag: dueslag.to_string(),
        sequence: 1,
        sent_at: std::time::SystemTime::now(),
    };
    crate::message::build_alive(&crate::message::AliveSpec {
        besked_id: Uuid::new_v4(),
        anvendersystem: Uuid::nil(),
        cvr: "00000000",
        payload: &payload,
    })
}

struct Slot {
    target: Target,
    faults: Faults,
    /// Afsend calls so far (for `reject_first`).
    calls: u64,
    reordered: Option<Bytes>,
    injectors: Vec<JoinHandle<()>>,
}

/// The simulator core.
pub struct Simulator {
    started: Instant,
    sink: Arc<dyn Sink>,
    slots: Mutex<HashMap<String, Slot>>,
    rng: Mutex<StdRng>,
    stop: CancellationToken,
    timer: DeliveryTimer,
}

impl Simulator {
    /// Must be called inside a tokio runtime: deliveries run in its context.
    pub fn new(sink: Arc<dyn Sink>, stop: CancellationToken) -> Arc<Self> {
        let timer = DeliveryTimer::start(tokio::runtime::Handle::current())
            .expect("cannot start the simulator's timer thread");
        Simulator::with_timer(sink, stop, timer)
    }

    /// With another delivery timer: [`DeliveryTimer::tokio`] for tests on paused time.
    pub fn with_timer(
        sink: Arc<dyn Sink>,
        stop: CancellationToken,
        timer: DeliveryTimer,
    ) -> Arc<Self> {
        Arc::new(Simulator {
            timer,
            started: Instant::now(),
            sink,
            slots: Mutex::new(HashMap::new()),
            rng: Mutex::new(StdRng::from_os_rng()),
            stop,
        })
    }

    /// Sets the dueslag and their faults; starts or stops the injection of business and
    /// foreign messages. Returns the names of dueslag that existed before and whose target
    /// or faults changed: their consumers must reconnect to see the change (e.g. outages).
    pub fn set_topology(self: &Arc<Self>, dueslag: Vec<(Target, Faults)>) -> Vec<String> {
        let mut slots = self.slots.lock().unwrap();
        let mut old: HashMap<String, Slot> = std::mem::take(&mut *slots);
        let mut changed_names = Vec::new();
        for (target, faults) in dueslag {
            let slot = match old.remove(&target.name) {
                Some(s) if s.target == target && s.faults == faults => s,
                changed => {
                    if changed.is_some() {
                        changed_names.push(target.name.clone());
                    }
                    let reordered = changed.and_then(|s| {
                        s.injectors.iter().for_each(JoinHandle::abort);
                        s.reordered
                    });
                    let injectors = [
                        (faults.business_every, Injected::Business),
                        (faults.foreign_every, Injected::ForeignAlive),
                    ]
                    .into_iter()
                    .filter(|(every, _)| !every.is_zero())
                    .map(|(every, kind)| self.spawn_injector(target.name.clone(), every, kind))
                    .collect();
                    Slot {
                        target: target.clone(),
                        faults,
                        calls: 0,
                        reordered,
                        injectors,
                    }
                }
            };
            slots.insert(target.name.clone(), slot);
        }
        for (_, s) in old {
            s.injectors.iter().for_each(JoinHandle::abort);
        }
        changed_names
    }

    fn spawn_injector(
        self: &Arc<Self>,
        name: String,
        every: Duration,
        kind: Injected,
    ) -> JoinHandle<()> {
        let me = Arc::downgrade(self);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(sim) = me.upgrade() else { return };
                let target = sim
                    .slots
                    .lock()
                    .unwrap()
                    .get(&name)
                    .map(|s| s.target.clone());
                if let Some(t) = target {
                    let body = match kind {
                        Injected::Business => {
                            build_business_message(Uuid::new_v4(), Uuid::new_v4())
                        }
                        Injected::ForeignAlive => foreign_alive(&t.name),
                    };
                    sim.sink.deliver(&t, Bytes::from(body));
                }
            }
        })
    }

    /// Handles one Afsend call.
    pub fn afsend(self: &Arc<Self>, body: &[u8]) -> AfsendAnswer {
        let msg = match parse_haendelsesbesked(body) {
            Ok(m) => m,
            Err(e) => {
                return reply(
                    StandardRetur::error(
                        status::INVALID_INPUT,
                        format!("invalid Haendelsesbesked: {e}"),
                    ),
                    ReplyShape::default(),
                );
            }
        };
        let Some(name) = msg.probe.as_ref().map(|p| p.dueslag.clone()) else {
            // No abonnement matches: accepted, delivered nowhere.
            return reply(StandardRetur::ok(), ReplyShape::default());
        };
        let (target, fate, shape, reply_delay) = {
            let mut slots = self.slots.lock().unwrap();
            let Some(slot) = slots.get_mut(&name) else {
                return reply(StandardRetur::ok(), ReplyShape::default());
            };
            slot.calls += 1;
            let fate = if slot.calls <= u64::from(slot.faults.reject_first) {
                Fate::Reject(slot.faults.reject_code)
            } else {
                faults::decide(
                    &slot.faults,
                    self.started.elapsed(),
                    &mut *self.rng.lock().unwrap(),
                )
            };
            (
                slot.target.clone(),
                fate,
                slot.faults.reply_shape,
                slot.faults.reply_delay,
            )
        };
        let answer = match fate {
            Fate::Outage => AfsendAnswer::Outage,
            Fate::Unroutable => AfsendAnswer::Unroutable,
            Fate::NoReply => AfsendAnswer::NoReply,
            Fate::Reject(code) => reply(
                StandardRetur::error(code, "rejected by the simulator's fault injection"),
                shape,
            ),
            Fate::Accept(plan) => {
                let body = Bytes::copy_from_slice(body);
                if plan.reorder {
                    let displaced = self
                        .slots
                        .lock()
                        .unwrap()
                        .get_mut(&target.name)
                        .and_then(|s| s.reordered.replace(body.clone()));
                    if let Some(d) = displaced {
                        self.sink.deliver(&target, d);
                    }
                    // The reordered copy goes after the next message; extra copies still go.
                    for delay in plan.copies.iter().skip(1) {
                        self.schedule(target.clone(), body.clone(), *delay);
                    }
                } else {
                    for delay in plan.copies {
                        self.schedule(target.clone(), body.clone(), delay);
                    }
                }
                reply(StandardRetur::ok(), shape)
            }
        };
        match answer {
            AfsendAnswer::Reply(r) if !reply_delay.is_zero() => {
                AfsendAnswer::Delayed(r, reply_delay)
            }
            answer => answer,
        }
    }

    /// The dueslag whose queue this is.
    pub fn dueslag_of_queue(&self, queue: &str) -> Option<String> {
        let slots = self.slots.lock().unwrap();
        slots
            .values()
            .find(|s| s.target.queue.as_deref() == Some(queue))
            .map(|s| s.target.name.clone())
    }

    /// True when the dueslag has outage windows at all.
    pub fn has_outages(&self, name: &str) -> bool {
        let slots = self.slots.lock().unwrap();
        slots
            .get(name)
            .is_some_and(|s| !s.faults.outages.is_empty())
    }

    /// True while the dueslag is in one of its outage windows.
    pub fn in_outage(&self, name: &str) -> bool {
        let slots = self.slots.lock().unwrap();
        slots
            .get(name)
            .is_some_and(|s| faults::in_outage(&s.faults, self.started.elapsed()))
    }

    /// Delivers after `delay`, counted from now (the Afsend call), not from when a task
    /// gets to run; with no delay, at once and in order.
    fn schedule(self: &Arc<Self>, target: Target, body: Bytes, delay: Duration) {
        if delay.is_zero() {
            self.deliver_with_reordered(&target, body);
            return;
        }
        let me: Weak<Self> = Arc::downgrade(self);
        self.timer.after(delay, move || {
            if let Some(me) = me.upgrade().filter(|m| !m.stop.is_cancelled()) {
                me.deliver_with_reordered(&target, body);
            }
        });
    }

    /// Delivers a message, then the one held back behind it (reordering), if any.
    fn deliver_with_reordered(&self, target: &Target, body: Bytes) {
        self.sink.deliver(target, body);
        let held = self
            .slots
            .lock()
            .unwrap()
            .get_mut(&target.name)
            .and_then(|s| s.reordered.take());
        if let Some(h) = held {
            self.sink.deliver(target, h);
        }
    }
}

/// The in-process sink: pull dueslag are [`SimQueue`]s, push dueslag get real HTTP POSTs.
pub struct LocalSink {
    queues: Mutex<HashMap<String, Arc<SimQueue>>>,
    http: reqwest::Client,
    redelivery: Redelivery,
    stop: CancellationToken,
}

impl LocalSink {
    pub fn new(stop: CancellationToken) -> Arc<Self> {
        crate::tls::install_crypto_provider();
        Arc::new(LocalSink {
            queues: Mutex::new(HashMap::new()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a plain HTTP client builds"),
            redelivery: Redelivery::default(),
            stop,
        })
    }

    /// The queue of that name, created on first use (queues outlive reloads).
    pub fn queue(&self, name: &str) -> Arc<SimQueue> {
        self.queues
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .clone()
    }
}

impl Sink for LocalSink {
    fn deliver(&self, target: &Target, body: Bytes) {
        match target.mode {
            Mode::Pull => {
                if let Some(q) = &target.queue {
                    self.queue(q).publish(body);
                }
            }
            Mode::Push => {
                if let Some(url) = target.push_url.clone() {
                    tokio::spawn(push::deliver(
                        self.http.clone(),
                        url,
                        body,
                        self.redelivery,
                        self.stop.clone(),
                    ));
                }
            }
        }
    }
}

/// The simulator's view of the configured dueslag: where each is delivered, and the
/// faults `[sim.faults.NAME]` injects into it.
pub fn targets(
    specs: &[DueslagSpec],
    faults: &BTreeMap<String, Faults>,
    push_base: &str,
) -> Vec<(Target, Faults)> {
    specs
        .iter()
        .map(|s| {
            (
                Target {
                    name: s.name.clone(),
                    mode: s.mode,
                    queue: s.queue.clone(),
                    push_url: (s.mode == Mode::Push)
                        .then(|| format!("{}/push/{}", push_base.trim_end_matches('/'), s.name)),
                },
                faults.get(&s.name).cloned().unwrap_or_default(),
            )
        })
        .collect()
}
