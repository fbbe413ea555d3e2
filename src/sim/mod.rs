//! The simulated Beskedfordeler: Afsend with fault injection, routing of each accepted
//! Alive message to its dueslag, and injected business and foreign messages.
//!
//! The core decides *what* happens ([`faults`]) and *when*; a [`Sink`] decides *how* a
//! message reaches a dueslag. The in-process sink ([`LocalSink`]) feeds [`queue::SimQueue`]s
//! and POSTs to push endpoints over real HTTP; the emulator's sink publishes to RabbitMQ.
//!
//! Routing is by abonnement, as the Beskedfordeler's (ARCHITECTURE.md §2): each accepted
//! message goes to every dueslag whose [`Abonnement`] matches its Filtreringsdata
//! (beskedtype, TilladtModtager, RelateretObjekt), and to none when none does ("accepted,
//! delivered nowhere", logged). By default a dueslag's abonnement selects the Alive messages
//! whose RelateretObjekt names it; `fan-out` selects every Alive message, as an abonnement
//! without that filter does on a real Beskedfordeler. Faults are those of the dueslag the
//! message is addressed to (its RelateretObjekt), wherever the message is delivered.
//!
//! Afsend replies are documents, written in the dueslag's `reply_shape`, so the sender
//! reads them as it reads the Beskedfordeler's. Everything else the simulator writes is
//! valid against KOMBIT's schemas.

pub mod faults;
pub mod push;
pub mod queue;
pub mod timer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{AbonnementKind, DueslagSpec, Faults, Mode, SimConfig};
use crate::message::{
    Haendelsesbesked, RelateretObjekt, ReplyShape, StandardRetur, UnikId, build_afsend_reply,
    build_business_message, parse_haendelsesbesked,
};
use crate::protocol::{ALIVE_BESKEDTYPE, status};
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
    /// The RelateretObjekt that addresses a message to this dueslag (its UUID and the
    /// dueslag ObjektType); `None` for a dueslag without a UUID (the emulator's).
    pub address: Option<RelateretObjekt>,
    pub abonnement: Abonnement,
}

impl Target {
    /// True when the message's RelateretObjekt names this dueslag.
    fn addressed_by(&self, m: &Haendelsesbesked) -> bool {
        self.address
            .as_ref()
            .is_some_and(|a| names(&m.relateret_objekt, a))
    }
}

/// A RelateretObjekt among `all` with `want`'s ObjektId and ObjektType (the role aside).
fn names(all: &[RelateretObjekt], want: &RelateretObjekt) -> bool {
    all.iter()
        .any(|r| r.objekt_id == want.objekt_id && r.objekt_type == want.objekt_type)
}

/// The filter of one dueslag's abonnement: what the Beskedfordeler delivers to it. Each
/// field that is set must match the message's Filtreringsdata.
#[derive(Debug, Clone, PartialEq)]
pub struct Abonnement {
    /// The beskedtyper it selects.
    pub beskedtyper: Vec<Uuid>,
    /// A TilladtModtager the message must carry (e.g. `urn:oio:cvr-nr:…`).
    pub tilladt_modtager: Option<UnikId>,
    /// A RelateretObjekt the message must carry; `None`: any (fan-out).
    pub relateret_objekt: Option<RelateretObjekt>,
}

impl Abonnement {
    /// The abonnement on the Alive beskedtype of a dueslag with `address`: filtering on it
    /// (`relateret-objekt`, as `setup` prints it) or on nothing more (`fan-out`).
    pub fn alive(kind: AbonnementKind, address: Option<&RelateretObjekt>) -> Self {
        Abonnement {
            beskedtyper: vec![ALIVE_BESKEDTYPE.parse().expect("a UUID")],
            tilladt_modtager: None,
            relateret_objekt: match kind {
                AbonnementKind::RelateretObjekt => address.cloned(),
                AbonnementKind::FanOut => None,
            },
        }
    }

    /// True when the message is delivered to a dueslag with this abonnement.
    pub fn matches(&self, m: &Haendelsesbesked) -> bool {
        m.beskedtype.is_some_and(|t| self.beskedtyper.contains(&t))
            && self
                .tilladt_modtager
                .as_ref()
                .is_none_or(|t| m.tilladt_modtager.contains(t))
            && self
                .relateret_objekt
                .as_ref()
                .is_none_or(|r| names(&m.relateret_objekt, r))
    }
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

/// An Alive message as another exporter instance would send it to this dueslag.
fn foreign_alive(target: &Target) -> String {
    let payload = crate::message::ProbePayload {
        instance: "another-instance".into(),
        run: Uuid::new_v4(),
        dueslag: target.name.clone(),
        sequence: 1,
        sent_at: std::time::SystemTime::now(),
    };
    let address = target.address.clone().unwrap_or_else(|| {
        RelateretObjekt::dueslag(
            Uuid::new_v4(),
            &UnikId::Urn(crate::protocol::DUESLAG_OBJEKT_TYPE.into()),
        )
    });
    crate::message::build_alive(&crate::message::AliveSpec {
        besked_id: Uuid::new_v4(),
        anvendersystem: Uuid::nil(),
        cvr: "00000000",
        relateret_objekt: &address,
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
                        Injected::ForeignAlive => foreign_alive(&t),
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
        let (targets, fate, shape, reply_delay) = {
            let mut slots = self.slots.lock().unwrap();
            let targets: Vec<Target> = slots
                .values()
                .filter(|s| s.target.abonnement.matches(&msg))
                .map(|s| s.target.clone())
                .collect();
            match slots.values_mut().find(|s| s.target.addressed_by(&msg)) {
                Some(slot) => {
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
                        targets,
                        fate,
                        slot.faults.reply_shape,
                        slot.faults.reply_delay,
                    )
                }
                // Addressed to no dueslag known here: no faults.
                None => (
                    targets,
                    faults::decide(&Faults::default(), Duration::ZERO, &mut rand::rng()),
                    ReplyShape::default(),
                    Duration::ZERO,
                ),
            }
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
                if targets.is_empty() {
                    tracing::info!(
                        besked_id = %msg.besked_id,
                        beskedtype = %msg.beskedtype.map_or("none".into(), |t| t.to_string()),
                        relateret_objekt = msg.relateret_objekt.len(),
                        "accepted, delivered nowhere: no dueslag's abonnement matches its Filtreringsdata"
                    );
                }
                let body = Bytes::copy_from_slice(body);
                for target in targets {
                    self.deliver_planned(target, body.clone(), &plan);
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

    /// Delivers one accepted message into one dueslag as its fault plan says: each copy
    /// after its delay, or held back behind the dueslag's next message (reordering).
    fn deliver_planned(self: &Arc<Self>, target: Target, body: Bytes, plan: &faults::Plan) {
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
            for delay in &plan.copies {
                self.schedule(target.clone(), body.clone(), *delay);
            }
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

/// The simulator's view of the configured dueslag: where each is delivered, its
/// abonnement (`[sim.abonnement]`, on its RelateretObjekt of type `objekt_type` by default),
/// and the faults `[sim.faults.NAME]` injects into it.
pub fn targets(
    specs: &[DueslagSpec],
    sim: &SimConfig,
    push_base: &str,
    objekt_type: &UnikId,
) -> Vec<(Target, Faults)> {
    specs
        .iter()
        .map(|s| {
            let address = RelateretObjekt::dueslag(s.id, objekt_type);
            let kind = sim.abonnement.get(&s.name).copied().unwrap_or_default();
            (
                Target {
                    name: s.name.clone(),
                    mode: s.mode,
                    queue: s.queue.clone(),
                    push_url: (s.mode == Mode::Push)
                        .then(|| format!("{}/push/{}", push_base.trim_end_matches('/'), s.name)),
                    abonnement: Abonnement::alive(kind, Some(&address)),
                    address: Some(address),
                },
                sim.faults.get(&s.name).cloned().unwrap_or_default(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AliveSpec, ProbePayload, build_alive};
    use crate::protocol::DUESLAG_OBJEKT_TYPE;

    /// Records what is delivered where.
    #[derive(Default)]
    struct Recording(Mutex<Vec<String>>);

    impl Sink for Recording {
        fn deliver(&self, target: &Target, _body: Bytes) {
            self.0.lock().unwrap().push(target.name.clone());
        }
    }

    fn objekt_type() -> UnikId {
        UnikId::Urn(DUESLAG_OBJEKT_TYPE.into())
    }

    fn target(name: &str, id: u128, kind: AbonnementKind) -> Target {
        let address = RelateretObjekt::dueslag(Uuid::from_u128(id), &objekt_type());
        Target {
            name: name.into(),
            mode: Mode::Pull,
            queue: Some(name.into()),
            push_url: None,
            abonnement: Abonnement::alive(kind, Some(&address)),
            address: Some(address),
        }
    }

    /// An Alive message addressed to the dueslag with UUID `to`.
    fn alive_to(to: u128) -> String {
        build_alive(&AliveSpec {
            besked_id: Uuid::new_v4(),
            anvendersystem: Uuid::nil(),
            cvr: "29189846",
            relateret_objekt: &RelateretObjekt::dueslag(Uuid::from_u128(to), &objekt_type()),
            payload: &ProbePayload {
                instance: "i".into(),
                run: Uuid::nil(),
                dueslag: "whatever the payload says".into(),
                sequence: 1,
                sent_at: std::time::SystemTime::now(),
            },
        })
    }

    fn status(answer: AfsendAnswer) -> i32 {
        match answer {
            AfsendAnswer::Reply(r) => crate::message::parse_afsend_reply(&r).unwrap().status_kode,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn routes_by_abonnement_with_the_faults_of_the_addressed_dueslag() {
        let stop = CancellationToken::new();
        let sink = Arc::new(Recording::default());
        let sim = Simulator::with_timer(sink.clone(), stop.clone(), DeliveryTimer::tokio());
        let rejecting = Faults {
            reject: 1.0,
            reject_code: 44,
            ..Faults::default()
        };
        sim.set_topology(vec![
            (
                target("a", 1, AbonnementKind::RelateretObjekt),
                Faults::default(),
            ),
            (target("b", 2, AbonnementKind::RelateretObjekt), rejecting),
            (target("c", 3, AbonnementKind::FanOut), Faults::default()),
        ]);
        let delivered = |to: u128| {
            let code = status(sim.afsend(alive_to(to).as_bytes()));
            let mut names = std::mem::take(&mut *sink.0.lock().unwrap());
            names.sort();
            (code, names)
        };
        // By RelateretObjekt, not by the payload's name; fan-out takes everything.
        assert_eq!(delivered(1), (20, vec!["a".into(), "c".into()]));
        // The faults are the addressed dueslag's, wherever the message would go.
        assert_eq!(delivered(2), (44, vec![]));
        assert_eq!(delivered(3), (20, vec!["c".into()]));
        // Addressed to no dueslag: accepted, only the fan-out abonnement takes it.
        assert_eq!(delivered(99), (20, vec!["c".into()]));
        // Another beskedtype: accepted, delivered nowhere (every abonnement here is Alive's).
        let business = build_business_message(Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(status(sim.afsend(business.as_bytes())), 20);
        assert!(sink.0.lock().unwrap().is_empty());
        stop.cancel();
    }

    #[test]
    fn an_abonnement_filters_on_each_field_it_names() {
        let sag: Uuid = Uuid::from_u128(0x5a9);
        let cvr = |c: &str| UnikId::Urn(format!("urn:oio:cvr-nr:{c}"));
        let abonnement = Abonnement {
            beskedtyper: vec![sag],
            tilladt_modtager: Some(cvr("11111111")),
            relateret_objekt: None,
        };
        let message = |t: Uuid, modtagere: Vec<UnikId>| {
            let f = crate::message::Filtreringsdata {
                tilladt_modtager: modtagere,
                ..Default::default()
            };
            parse_haendelsesbesked(
                crate::message::build_business_message_with(Uuid::new_v4(), t, &f).as_bytes(),
            )
            .unwrap()
        };
        assert!(abonnement.matches(&message(sag, vec![cvr("2"), cvr("11111111")])));
        assert!(!abonnement.matches(&message(sag, vec![cvr("22222222")])));
        assert!(!abonnement.matches(&message(sag, vec![])));
        assert!(!abonnement.matches(&message(Uuid::new_v4(), vec![cvr("11111111")])));
        let alive = parse_haendelsesbesked(alive_to(1).as_bytes()).unwrap();
        let own = target("a", 1, AbonnementKind::RelateretObjekt);
        assert!(own.abonnement.matches(&alive) && own.addressed_by(&alive));
        let other = target("b", 2, AbonnementKind::RelateretObjekt);
        assert!(!other.abonnement.matches(&alive) && !other.addressed_by(&alive));
        let fan_out = target("c", 3, AbonnementKind::FanOut);
        assert!(fan_out.abonnement.matches(&alive) && !fan_out.addressed_by(&alive));
        // The same ObjektId under another ObjektType names no dueslag.
        let mut typed = target("a", 1, AbonnementKind::RelateretObjekt);
        let other_type =
            RelateretObjekt::dueslag(Uuid::from_u128(1), &UnikId::Urn("urn:x:y".into()));
        typed.abonnement.relateret_objekt = Some(other_type.clone());
        typed.address = Some(other_type);
        assert!(!typed.abonnement.matches(&alive) && !typed.addressed_by(&alive));
    }
}
