//! Helpers for the crate's unit tests: an observer whose outcomes a test can await on
//! paused tokio time, a dueslag spec with every knob in view, and the test broker.
//!
//! The broker is found exactly as the integration tests find it: both include
//! `tests/common/broker.rs` (and `tests/common/wait.rs`), so there is one way to find it,
//! skip loudly without it, and fail in CI.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use crate::config::{DueslagSpec, Mode, Unexpected};
use crate::outcome::{Observer, Outcome};
use crate::probe::{DueslagProbe, ProbeContext};

#[path = "../tests/common/broker.rs"]
pub mod broker;
#[path = "../tests/common/wait.rs"]
pub mod wait;

/// How long (on tokio's paused clock) [`Watch::next`] waits before it fails the test.
pub const PATIENCE: Duration = Duration::from_secs(24 * 3600);

/// Records every outcome with when it happened on tokio's clock, and lets a test await
/// them in order.
#[derive(Default)]
pub struct Watch {
    log: Mutex<Log>,
    changed: Notify,
}

#[derive(Default)]
struct Log {
    seen: Vec<(Instant, Outcome)>,
    /// Outcomes before this one were passed by [`Watch::next`].
    cursor: usize,
}

impl Observer for Watch {
    fn observe(&self, outcome: Outcome) {
        self.log
            .lock()
            .unwrap()
            .seen
            .push((Instant::now(), outcome));
        self.changed.notify_waiters();
    }
}

impl Watch {
    /// The first outcome after the last one `next` returned that matches `pred`, with when
    /// it happened. Fails the test after [`PATIENCE`] of (virtual) time.
    pub async fn next(&self, pred: impl Fn(&Outcome) -> bool) -> (Instant, Outcome) {
        match tokio::time::timeout(PATIENCE, self.wait(&pred)).await {
            Ok(found) => found,
            Err(_) => panic!(
                "no such outcome within {PATIENCE:?}; seen: {:#?}",
                self.outcomes()
            ),
        }
    }

    /// True when no new outcome matching `pred` comes within `d` (of virtual time).
    pub async fn none_within(&self, d: Duration, pred: impl Fn(&Outcome) -> bool) -> bool {
        {
            let mut log = self.log.lock().unwrap();
            log.cursor = log.seen.len();
        }
        tokio::time::timeout(d, self.wait(&pred)).await.is_err()
    }

    async fn wait(&self, pred: &impl Fn(&Outcome) -> bool) -> (Instant, Outcome) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut log = self.log.lock().unwrap();
                let from = log.cursor;
                if let Some(i) = log.seen[from..].iter().position(|(_, o)| pred(o)) {
                    log.cursor = from + i + 1;
                    return log.seen[from + i].clone();
                }
            }
            changed.await;
        }
    }

    /// Every outcome so far, with its wall-clock fields zeroed (see [`plain`]).
    pub fn outcomes(&self) -> Vec<Outcome> {
        let log = self.log.lock().unwrap();
        log.seen.iter().map(|(_, o)| plain(o.clone())).collect()
    }
}

/// What `f` picks out of each outcome that it matches.
pub fn pick<'a, T>(outcomes: &'a [Outcome], f: impl Fn(&'a Outcome) -> Option<T>) -> Vec<T> {
    outcomes.iter().filter_map(f).collect()
}

/// The outcome with its `SystemTime` fields set to the epoch, so whole lists compare.
pub fn plain(o: Outcome) -> Outcome {
    match o {
        Outcome::Attempt { besked_id, .. } => Outcome::Attempt {
            besked_id,
            at: SystemTime::UNIX_EPOCH,
        },
        Outcome::Finished {
            besked_id, result, ..
        } => Outcome::Finished {
            besked_id,
            result,
            at: SystemTime::UNIX_EPOCH,
        },
        other => other,
    }
}

/// The UUID of [`spec`]'s dueslag.
pub const DUESLAG_ID: Uuid = Uuid::from_u128(0xd);

/// A dueslag named `d` (UUID [`DUESLAG_ID`], queue `q` when pulled) probed every 10 s with a 5 s timeout, two
/// send attempts of 1 s each, no jitter, at most two held messages.
pub fn spec(mode: Mode) -> DueslagSpec {
    DueslagSpec {
        name: "d".into(),
        mode,
        id: DUESLAG_ID,
        queue: (mode == Mode::Pull).then(|| "q".into()),
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
        send_timeout: Duration::from_secs(1),
        send_attempts: 2,
        jitter: 0.0,
        max_inflight: 8,
        max_held: 2,
        unexpected: Unexpected::Hold,
        cvr: "29189846".into(),
        anvendersystem: Uuid::nil(),
        labels: Vec::new(),
    }
}

/// The probe of `spec`, reporting to a [`Watch`].
pub fn probe(spec: DueslagSpec) -> (Arc<DueslagProbe>, Arc<Watch>) {
    let watch = Arc::new(Watch::default());
    let ctx = Arc::new(ProbeContext {
        instance: "test".into(),
        run: Uuid::new_v4(),
        objekt_type: crate::message::UnikId::Urn(crate::protocol::DUESLAG_OBJEKT_TYPE.into()),
    });
    let probe = DueslagProbe::new(spec, ctx, watch.clone() as Arc<dyn Observer>);
    (probe, watch)
}

/// A business message: what a probed dueslag must never take.
pub fn business() -> Bytes {
    Bytes::from(crate::message::build_business_message(
        Uuid::new_v4(),
        Uuid::new_v4(),
    ))
}

/// Returns when tokio's clock reaches `t`. On paused time this takes no real time: the
/// runtime jumps to it once every task is idle.
pub async fn until(t: Instant) {
    tokio::time::sleep_until(t).await;
}
