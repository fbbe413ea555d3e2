//! The probe of one dueslag: builds Alive messages, tracks them in flight, classifies what
//! arrives, and runs the send loop. It emits [`Outcome`]s and never touches a metric.
//!
//! A [`DueslagProbe`] is shared by its loop ([`run`]), its receiver (pull consumer or push
//! endpoint) and the HTTP status page.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::stream::{FuturesUnordered, StreamExt};
use rand::Rng;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::DueslagSpec;
use crate::matcher::{Identity, Matcher};
use crate::message::{self, AliveSpec, ProbePayload, RelateretObjekt, UnikId};
use crate::outcome::{Observer, Outcome, ReceivedKind};
use crate::send::{self, SendReport};
use crate::transport::{Afsender, Outgoing};

/// What every probe of this exporter run has in common.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeContext {
    pub instance: String,
    /// New at every start of the exporter.
    pub run: Uuid,
    /// The ObjektType of the RelateretObjekt that addresses each message to its dueslag.
    pub objekt_type: UnikId,
}

/// How a body arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// A bare Haendelsesbesked (pull).
    Haendelsesbesked,
    /// A ModtagBeskedInput holding one (push).
    ModtagBeskedInput,
}

/// What the receiver must do with an arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An Alive message: recorded; acknowledge it (pull) or answer 20 (push).
    Take,
    /// Not ours to take: hold or dead-letter it (pull), answer non-20 (push).
    Refuse(String),
}

/// Logs something at most once per period, counting what it kept quiet.
#[derive(Debug, Default)]
struct Quiet {
    last: Option<Instant>,
    suppressed: u64,
}

impl Quiet {
    /// `Some(suppressed since the last time)` when it is time to log again.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < QUIET_PERIOD)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

const QUIET_PERIOD: Duration = Duration::from_secs(60);

/// On-demand probes waiting for their message, by BeskedId. They use sequence 0 and
/// bypass the matcher, so the loop's accounting (sequence, metrics) stays undisturbed.
#[derive(Default)]
struct OnDemand {
    waiting: HashMap<Uuid, oneshot::Sender<Instant>>,
    /// Ids whose waiter gave up: a late arrival is taken quietly.
    abandoned: VecDeque<Uuid>,
}

/// How many abandoned on-demand ids are remembered.
const ABANDONED: usize = 128;

/// The payload's dueslag name of a message addressed to no configured dueslag
/// ([`DueslagProbe::on_demand_elsewhere`]): outside `[a-z0-9_-]`, so no dueslag has it.
pub const NO_DUESLAG: &str = "(abonnement check)";

/// The shared state of one dueslag's probe.
pub struct DueslagProbe {
    pub spec: DueslagSpec,
    ctx: Arc<ProbeContext>,
    matcher: Mutex<Matcher>,
    observer: Arc<dyn Observer>,
    seq: AtomicU64,
    quiet: Mutex<Quiet>,
    /// The misrouted log line's own rate limit.
    quiet_misrouted: Mutex<Quiet>,
    /// Misrouted arrivals so far (an on-demand probe reports those during its wait).
    misrouted: AtomicU64,
    on_demand: Mutex<OnDemand>,
}

impl DueslagProbe {
    pub fn new(
        spec: DueslagSpec,
        ctx: Arc<ProbeContext>,
        observer: Arc<dyn Observer>,
    ) -> Arc<Self> {
        let matcher = Matcher::new(
            Identity {
                instance: ctx.instance.clone(),
                run: ctx.run,
                dueslag: spec.name.clone(),
                id: spec.id,
            },
            spec.max_inflight,
            // A timed-out probe may still arrive for another timeout before it is lost.
            spec.timeout,
        );
        Arc::new(DueslagProbe {
            spec,
            ctx,
            matcher: Mutex::new(matcher),
            observer,
            seq: AtomicU64::new(0),
            quiet: Mutex::new(Quiet::default()),
            quiet_misrouted: Mutex::new(Quiet::default()),
            misrouted: AtomicU64::new(0),
            on_demand: Mutex::default(),
        })
    }

    /// Reports an outcome that happened outside the probe (e.g. a refused push body).
    pub fn observe(&self, outcome: Outcome) {
        self.observer.observe(outcome);
    }

    fn emit(&self, out: Vec<Outcome>) {
        for o in out {
            self.observer.observe(o);
        }
    }

    /// Builds the next Alive message of this dueslag.
    pub fn next_message(&self) -> Outgoing {
        let sequence = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.message(sequence)
    }

    fn message(&self, sequence: u64) -> Outgoing {
        self.message_to(&self.spec.name, self.spec.id, sequence)
    }

    /// An Alive message of this dueslag's loop, addressed to dueslag `name` with UUID `id`.
    fn message_to(&self, name: &str, id: Uuid, sequence: u64) -> Outgoing {
        let besked_id = Uuid::new_v4();
        let payload = ProbePayload {
            instance: self.ctx.instance.clone(),
            run: self.ctx.run,
            dueslag: name.to_string(),
            sequence,
            sent_at: SystemTime::now(),
        };
        let body = message::build_alive(&AliveSpec {
            besked_id,
            anvendersystem: self.spec.anvendersystem,
            cvr: &self.spec.cvr,
            relateret_objekt: &RelateretObjekt::dueslag(id, &self.ctx.objekt_type),
            payload: &payload,
        });
        Outgoing {
            transaction_id: Uuid::new_v4(),
            besked_id,
            dueslag: self.spec.name.clone(),
            body: body.into(),
        }
    }

    /// Records a probe in flight, just before it is sent.
    pub fn begin(&self, msg: &Outgoing) {
        let mut out = vec![Outcome::Attempt {
            besked_id: msg.besked_id,
            at: SystemTime::now(),
        }];
        self.matcher.lock().unwrap().begin(
            msg.besked_id,
            Instant::now(),
            self.spec.timeout,
            &mut out,
        );
        self.emit(out);
    }

    /// Records how the send of a probe ended.
    pub fn sent(&self, besked_id: Uuid, report: &SendReport) {
        let mut out = vec![];
        match report {
            SendReport::Accepted { duration, .. } => out.push(Outcome::Sent {
                duration: *duration,
            }),
            SendReport::Failed {
                reason,
                status,
                detail,
                ..
            } => {
                tracing::warn!(dueslag = %self.spec.name, %besked_id, reason = reason.as_str(), status, detail, "send failed");
                out.push(Outcome::SendFailed {
                    besked_id,
                    reason: *reason,
                    status: *status,
                    detail: detail.clone(),
                });
                self.matcher
                    .lock()
                    .unwrap()
                    .send_failed(besked_id, *reason, &mut out);
            }
        }
        self.emit(out);
    }

    /// Classifies an arrival. Never logs the body: it may hold business data.
    pub fn on_arrival(&self, body: &[u8], envelope: Envelope) -> Verdict {
        // The arrival time, before parsing: the round trip must not include our own work.
        let arrived = Instant::now();
        let parsed = match envelope {
            Envelope::Haendelsesbesked => message::parse_haendelsesbesked(body),
            Envelope::ModtagBeskedInput => message::parse_modtag_besked_input(body),
        };
        let why = match parsed {
            Ok(m) if m.is_alive() && self.take_on_demand(m.besked_id) => return Verdict::Take,
            Ok(m) if m.is_alive() => {
                let mut out = vec![];
                self.matcher.lock().unwrap().arrive(
                    m.besked_id,
                    m.probe.as_ref(),
                    m.addressed_to(&self.ctx.objekt_type),
                    arrived,
                    &mut out,
                );
                if let Some(Outcome::Received {
                    kind: ReceivedKind::Misrouted,
                    detail,
                    ..
                }) = out.first()
                {
                    self.misrouted.fetch_add(1, Ordering::Relaxed);
                    self.log_misrouted(m.besked_id, detail.as_deref().unwrap_or(""));
                }
                self.emit(out);
                return Verdict::Take;
            }
            Ok(m) => format!(
                "not an Alive message (BeskedId {}, beskedtype {})",
                m.besked_id,
                m.beskedtype
                    .map_or("missing".to_string(), |t| t.to_string())
            ),
            Err(e) => format!("not a readable Haendelsesbesked: {e}"),
        };
        self.observer.observe(Outcome::Received {
            kind: ReceivedKind::Unexpected,
            besked_id: None,
            detail: Some(why.clone()),
        });
        self.log_unexpected(&why);
        Verdict::Refuse(why)
    }

    fn log_unexpected(&self, why: &str) {
        let Some(suppressed) = self.quiet.lock().unwrap().due() else {
            return;
        };
        tracing::warn!(
            dueslag = %self.spec.name,
            mode = self.spec.mode.as_str(),
            reason = why,
            suppressed_since_last = suppressed,
            "a message that is not this exporter's Alive message arrived; it is left with the Beskedfordeler"
        );
    }

    fn log_misrouted(&self, besked_id: Uuid, detail: &str) {
        let Some(suppressed) = self.quiet_misrouted.lock().unwrap().due() else {
            return;
        };
        tracing::warn!(
            dueslag = %self.spec.name,
            id = %self.spec.id,
            %besked_id,
            detail,
            suppressed_since_last = suppressed,
            "an Alive message of this exporter for another dueslag arrived (misrouted): set this dueslag's abonnement to filter on RelateretObjekt (bfo-alive-exporter setup prints it)"
        );
    }

    /// Misrouted arrivals since the dueslag started.
    pub fn misrouted(&self) -> u64 {
        self.misrouted.load(Ordering::Relaxed)
    }

    fn take_on_demand(&self, besked_id: Uuid) -> bool {
        let mut od = self.on_demand.lock().unwrap();
        if let Some(tx) = od.waiting.remove(&besked_id) {
            let _ = tx.send(Instant::now());
            return true;
        }
        od.abandoned.contains(&besked_id)
    }

    /// An on-demand Alive message (sequence 0: outside the loop's sequence numbers,
    /// in-flight table and metrics) and what fires when it arrives. Used by
    /// [`crate::diagnose::on_demand`].
    pub fn on_demand(&self) -> (Outgoing, oneshot::Receiver<Instant>) {
        self.await_on_demand(self.message(0))
    }

    /// An on-demand Alive message addressed to no dueslag (payload [`NO_DUESLAG`], a new
    /// UUID as RelateretObjekt), and what fires if it arrives here anyway: then this
    /// dueslag's abonnement does not filter on RelateretObjekt. Used by the `probe` command.
    pub fn on_demand_elsewhere(&self) -> (Outgoing, oneshot::Receiver<Instant>) {
        self.await_on_demand(self.message_to(NO_DUESLAG, Uuid::new_v4(), 0))
    }

    /// Registers an on-demand message: its arrival is taken by the waiter, not the matcher.
    fn await_on_demand(&self, msg: Outgoing) -> (Outgoing, oneshot::Receiver<Instant>) {
        let (tx, rx) = oneshot::channel();
        self.on_demand
            .lock()
            .unwrap()
            .waiting
            .insert(msg.besked_id, tx);
        (msg, rx)
    }

    /// Stops waiting for an on-demand message; if it still arrives, it is taken quietly.
    pub fn abandon_on_demand(&self, besked_id: Uuid) {
        let mut od = self.on_demand.lock().unwrap();
        if od.waiting.remove(&besked_id).is_some() {
            od.abandoned.push_back(besked_id);
            while od.abandoned.len() > ABANDONED {
                od.abandoned.pop_front();
            }
        }
    }

    /// Reports messages held unacknowledged in a pull dueslag.
    pub fn held(&self, count: usize, paused: bool) {
        self.observer.observe(Outcome::Held { count, paused });
    }

    /// Times out probes past their deadline.
    pub fn expire(&self) {
        let mut out = vec![];
        self.matcher
            .lock()
            .unwrap()
            .expire(Instant::now(), &mut out);
        self.emit(out);
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.matcher.lock().unwrap().next_deadline()
    }

    pub fn has_pending(&self) -> bool {
        self.matcher.lock().unwrap().has_pending()
    }

    pub fn inflight(&self) -> usize {
        self.matcher.lock().unwrap().inflight()
    }
}

/// The interval with up to ±`jitter` of it at random.
fn jittered(interval: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return interval;
    }
    let f = rand::rng().random_range(-jitter..=jitter);
    interval.mul_f64(1.0 + f)
}

/// Runs the send loop of one dueslag until `stop`, then waits for in-flight probes to
/// arrive or time out. Sends run concurrently with the sweep, so a slow Afsend never
/// delays a deadline or the next probe.
pub async fn run(probe: Arc<DueslagProbe>, afsender: Arc<dyn Afsender>, stop: CancellationToken) {
    // Copies of what the loop reads (not the whole spec: 10,000 loops hold this).
    let (interval, jitter) = (probe.spec.interval, probe.spec.jitter);
    let (attempts, timeout) = (probe.spec.send_attempts, probe.spec.send_timeout);
    // Spread the first probes of many dueslag over one interval.
    let first = interval.mul_f64(rand::rng().random_range(0.0..1.0));
    let mut next_tick = Instant::now() + first;
    let mut sends = FuturesUnordered::new();
    let mut stopping = false;
    loop {
        let deadline = probe.next_deadline();
        tokio::select! {
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
            }
            _ = tokio::time::sleep_until(next_tick), if !stopping => {
                let msg = probe.next_message();
                probe.begin(&msg);
                let afsender = afsender.clone();
                sends.push(async move {
                    let report = send::send(afsender.as_ref(), &msg, attempts, timeout).await;
                    (msg.besked_id, report)
                });
                next_tick = Instant::now() + jittered(interval, jitter);
            }
            Some((id, report)) = sends.next(), if !sends.is_empty() => {
                probe.sent(id, &report);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                probe.expire();
            }
        }
        if stopping && sends.is_empty() && !probe.has_pending() {
            break;
        }
    }
}

#[cfg(test)]
mod tests;
