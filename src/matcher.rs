//! The in-flight table of one dueslag, and the classification of ARCHITECTURE.md §4.
//!
//! Pure data: it is handed the time and returns [`Outcome`]s, so every rule is unit-tested
//! without a clock or a broker. The table is bounded: at `max_inflight` the oldest probe
//! is timed out to make room, and the memory of finished probes (for late and duplicate
//! detection) keeps a fixed number of entries.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use uuid::Uuid;

use crate::message::ProbePayload;
use crate::outcome::{Outcome, ProbeResult, ReceivedKind, SendFailure};

/// Finished probes are remembered (for late and duplicate arrivals) this many times the
/// grace period `lost_after`.
const MEMORY_FACTOR: u32 = 4;

/// Who this matcher's probes are from, and the dueslag they are addressed to.
#[derive(Debug, Clone)]
pub struct Identity {
    pub instance: String,
    pub run: Uuid,
    pub dueslag: String,
    /// The dueslag's UUID: the RelateretObjekt its Alive messages carry.
    pub id: Uuid,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    sent: Instant,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Finished {
    Matched,
    /// Timed out; counted lost at `lost_at` unless it arrives before.
    TimedOut {
        lost_at: Instant,
    },
    /// Timed out and never arrived.
    Lost,
    /// Arrived after its deadline.
    Late,
    /// The send failed; an arrival is still possible (the broker may have taken it).
    SendFailed,
}

/// The in-flight table and the memory of finished probes.
#[derive(Debug)]
pub struct Matcher {
    id: Identity,
    max_inflight: usize,
    /// How long after its deadline a timed-out probe may still arrive before it is lost.
    lost_after: Duration,
    inflight: HashMap<Uuid, Pending>,
    finished: HashMap<Uuid, Finished>,
    /// Finished probes in the order they finished, with when.
    finished_order: VecDeque<(Uuid, Instant)>,
    finished_cap: usize,
    max_seq_seen: u64,
}

impl Matcher {
    pub fn new(id: Identity, max_inflight: usize, lost_after: Duration) -> Self {
        Matcher {
            id,
            max_inflight,
            lost_after,
            // Usually one probe is in flight: grow on demand (64 preallocated slots per
            // dueslag were 6 KB each, 60 MB at 10,000 dueslag).
            inflight: HashMap::new(),
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            finished_cap: max_inflight * 4 + 16,
            max_seq_seen: 0,
        }
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Records a probe about to be sent. At capacity the oldest probe times out first.
    pub fn begin(
        &mut self,
        besked_id: Uuid,
        now: Instant,
        timeout: Duration,
        out: &mut Vec<Outcome>,
    ) {
        self.forget_old(now, out);
        while self.inflight.len() >= self.max_inflight {
            let Some(oldest) = self
                .inflight
                .iter()
                .min_by_key(|(_, p)| p.sent)
                .map(|(id, _)| *id)
            else {
                break;
            };
            self.time_out(oldest, now, out);
        }
        self.inflight.insert(
            besked_id,
            Pending {
                sent: now,
                deadline: now + timeout,
            },
        );
        out.push(Outcome::Inflight(self.inflight.len()));
    }

    /// The send of a probe failed: it ends as `send_error` unless it already arrived.
    pub fn send_failed(&mut self, besked_id: Uuid, reason: SendFailure, out: &mut Vec<Outcome>) {
        if self.inflight.remove(&besked_id).is_some() {
            self.remember(besked_id, Finished::SendFailed, Instant::now(), out);
            out.push(Outcome::Finished {
                besked_id,
                result: ProbeResult::SendError(reason),
                at: SystemTime::now(),
            });
            out.push(Outcome::Inflight(self.inflight.len()));
        }
    }

    /// Classifies an Alive message that arrived in this dueslag. `addressed_to` is the
    /// dueslag UUID of its RelateretObjekt, if it has one.
    ///
    /// This exporter run's message for another dueslag (its payload names another, or its
    /// RelateretObjekt another UUID) is `misrouted`: it reached this dueslag because the
    /// dueslag's abonnement does not filter on RelateretObjekt. Another instance's or an
    /// earlier run's is `foreign`: nothing this run can match, whatever it is addressed to.
    pub fn arrive(
        &mut self,
        besked_id: Uuid,
        probe: Option<&ProbePayload>,
        addressed_to: Option<Uuid>,
        now: Instant,
        out: &mut Vec<Outcome>,
    ) {
        let Some(payload) =
            probe.filter(|p| p.instance == self.id.instance && p.run == self.id.run)
        else {
            out.push(received(ReceivedKind::Foreign, besked_id));
            return;
        };
        let elsewhere = addressed_to.filter(|a| *a != self.id.id);
        if payload.dueslag != self.id.dueslag || elsewhere.is_some() {
            let to = elsewhere.map_or(String::new(), |a| format!(" (RelateretObjekt {a})"));
            out.push(Outcome::Received {
                kind: ReceivedKind::Misrouted,
                besked_id: Some(besked_id),
                detail: Some(format!(
                    "addressed to dueslag {:?}{to}: this dueslag's abonnement does not filter on RelateretObjekt",
                    payload.dueslag
                )),
            });
            return;
        }
        let out_of_order = payload.sequence < self.max_seq_seen;
        self.max_seq_seen = self.max_seq_seen.max(payload.sequence);
        if let Some(p) = self.inflight.remove(&besked_id) {
            if now > p.deadline {
                // The sweep has not run yet: it is a timeout that arrived late.
                out.push(finished(besked_id, ProbeResult::Timeout));
                out.push(received(ReceivedKind::Late, besked_id));
                self.remember(besked_id, Finished::Late, now, out);
            } else {
                out.push(finished(
                    besked_id,
                    ProbeResult::Success {
                        roundtrip: now.saturating_duration_since(p.sent),
                    },
                ));
                let kind = if out_of_order {
                    ReceivedKind::OutOfOrder
                } else {
                    ReceivedKind::Matched
                };
                out.push(received(kind, besked_id));
                self.remember(besked_id, Finished::Matched, now, out);
            }
            out.push(Outcome::Inflight(self.inflight.len()));
            return;
        }
        let kind = match self.finished.get(&besked_id) {
            Some(Finished::Matched | Finished::Late) => ReceivedKind::Duplicate,
            // Timed out, lost, send failed, or too old to remember: it came, but late.
            _ => ReceivedKind::Late,
        };
        if kind == ReceivedKind::Late {
            self.remember(besked_id, Finished::Late, now, out);
        }
        out.push(received(kind, besked_id));
    }

    /// Times out probes past their deadline and declares lost those that never came.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Outcome>) {
        self.forget_old(now, out);
        let due: Vec<Uuid> = self
            .inflight
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.time_out(id, now, out);
        }
        let lost: Vec<Uuid> = self
            .finished
            .iter()
            .filter(|(_, f)| matches!(f, Finished::TimedOut { lost_at } if *lost_at <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.finished.insert(id, Finished::Lost);
            out.push(Outcome::Lost { besked_id: id });
        }
    }

    /// When [`Matcher::expire`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let inflight = self.inflight.values().map(|p| p.deadline);
        let lost = self.finished.values().filter_map(|f| match f {
            Finished::TimedOut { lost_at } => Some(*lost_at),
            _ => None,
        });
        inflight.chain(lost).min()
    }

    /// True while a probe still waits for its answer or deadline.
    pub fn has_pending(&self) -> bool {
        !self.inflight.is_empty()
    }

    fn time_out(&mut self, id: Uuid, now: Instant, out: &mut Vec<Outcome>) {
        if self.inflight.remove(&id).is_some() {
            out.push(finished(id, ProbeResult::Timeout));
            out.push(Outcome::Inflight(self.inflight.len()));
            self.remember(
                id,
                Finished::TimedOut {
                    lost_at: now + self.lost_after,
                },
                now,
                out,
            );
        }
    }

    fn remember(&mut self, id: Uuid, f: Finished, now: Instant, out: &mut Vec<Outcome>) {
        if self.finished.insert(id, f).is_none() {
            self.finished_order.push_back((id, now));
        }
        while self.finished_order.len() > self.finished_cap {
            self.forget_front(out);
        }
    }

    /// Forgets probes that finished more than [`MEMORY_FACTOR`] × `lost_after` ago, so the
    /// memory of a dueslag holds minutes of probes, not `finished_cap` (which a dueslag
    /// probing every 10 s would only reach after 45 minutes, at ~16 KB).
    fn forget_old(&mut self, now: Instant, out: &mut Vec<Outcome>) {
        let horizon = self.lost_after * MEMORY_FACTOR;
        while self
            .finished_order
            .front()
            .is_some_and(|(_, at)| *at + horizon <= now)
        {
            self.forget_front(out);
        }
        if self.finished_order.capacity() > 4 * self.finished_order.len().max(8) {
            self.finished_order.shrink_to_fit();
            self.finished.shrink_to_fit();
        }
    }

    fn forget_front(&mut self, out: &mut Vec<Outcome>) {
        if let Some((old, _)) = self.finished_order.pop_front()
            && let Some(Finished::TimedOut { .. }) = self.finished.remove(&old)
        {
            // Forgotten before its grace ended: it never arrived.
            out.push(Outcome::Lost { besked_id: old });
        }
    }
}

fn finished(besked_id: Uuid, result: ProbeResult) -> Outcome {
    Outcome::Finished {
        besked_id,
        result,
        at: SystemTime::now(),
    }
}

fn received(kind: ReceivedKind, besked_id: Uuid) -> Outcome {
    Outcome::Received {
        kind,
        besked_id: Some(besked_id),
        detail: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    fn matcher() -> Matcher {
        Matcher::new(
            Identity {
                instance: "i".into(),
                run: Uuid::from_u128(1),
                dueslag: "d".into(),
                id: Uuid::from_u128(10),
            },
            4,
            T,
        )
    }

    fn payload(m: &Matcher, seq: u64) -> ProbePayload {
        ProbePayload {
            instance: m.id.instance.clone(),
            run: m.id.run,
            dueslag: m.id.dueslag.clone(),
            sequence: seq,
            sent_at: SystemTime::now(),
        }
    }

    fn kinds(out: &[Outcome]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Outcome::Received { kind, .. } => Some(kind.as_str().to_string()),
                Outcome::Finished { result, .. } => Some(result.label().to_string()),
                Outcome::Lost { .. } => Some("lost".to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn success_then_duplicate() {
        let mut m = matcher();
        let t0 = Instant::now();
        let id = Uuid::new_v4();
        let mut out = vec![];
        m.begin(id, t0, T, &mut out);
        m.arrive(
            id,
            Some(&payload(&m, 1)),
            None,
            t0 + Duration::from_millis(250),
            &mut out,
        );
        assert!(out.contains(&Outcome::Finished {
            besked_id: id,
            result: ProbeResult::Success {
                roundtrip: Duration::from_millis(250)
            },
            at: match out.iter().find(|o| matches!(o, Outcome::Finished { .. })) {
                Some(Outcome::Finished { at, .. }) => *at,
                _ => unreachable!(),
            }
        }));
        m.arrive(
            id,
            Some(&payload(&m, 1)),
            None,
            t0 + Duration::from_secs(1),
            &mut out,
        );
        assert_eq!(kinds(&out), ["success", "matched", "duplicate"]);
        assert_eq!(m.inflight(), 0);
    }

    #[test]
    fn timeout_then_late_and_never_lost() {
        let mut m = matcher();
        let t0 = Instant::now();
        let id = Uuid::new_v4();
        let mut out = vec![];
        m.begin(id, t0, T, &mut out);
        assert_eq!(m.next_deadline(), Some(t0 + T));
        m.expire(t0 + T - Duration::from_millis(1), &mut out);
        assert!(kinds(&out).is_empty());
        m.expire(t0 + T, &mut out);
        m.arrive(
            id,
            Some(&payload(&m, 1)),
            None,
            t0 + T + Duration::from_secs(1),
            &mut out,
        );
        m.expire(t0 + T * 3, &mut out);
        m.arrive(id, Some(&payload(&m, 1)), None, t0 + T * 3, &mut out);
        assert_eq!(kinds(&out), ["timeout", "late", "duplicate"]);
    }

    #[test]
    fn timeout_never_arriving_is_lost_once() {
        let mut m = matcher();
        let t0 = Instant::now();
        let id = Uuid::new_v4();
        let mut out = vec![];
        m.begin(id, t0, T, &mut out);
        m.expire(t0 + T, &mut out);
        assert_eq!(m.next_deadline(), Some(t0 + T * 2));
        m.expire(t0 + T * 2, &mut out);
        m.expire(t0 + T * 5, &mut out);
        assert_eq!(kinds(&out), ["timeout", "lost"]);
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn out_of_order_is_still_a_success() {
        let mut m = matcher();
        let t0 = Instant::now();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut out = vec![];
        m.begin(a, t0, T, &mut out);
        m.begin(b, t0, T, &mut out);
        m.arrive(b, Some(&payload(&m, 2)), None, t0, &mut out);
        m.arrive(a, Some(&payload(&m, 1)), None, t0, &mut out);
        assert_eq!(
            kinds(&out),
            ["success", "matched", "success", "out_of_order"]
        );
    }

    #[test]
    fn foreign_alive_messages() {
        let mut m = matcher();
        let mut out = vec![];
        let now = Instant::now();
        let mut other_run = payload(&m, 1);
        other_run.run = Uuid::from_u128(2);
        let mut other_instance = payload(&m, 1);
        other_instance.instance = "j".into();
        // Another instance's or run's message is foreign whatever it is addressed to: this
        // one, another dueslag, or nothing.
        for p in [&other_run, &other_instance] {
            for to in [Some(m.id.id), Some(Uuid::from_u128(11)), None] {
                m.arrive(Uuid::new_v4(), Some(p), to, now, &mut out);
            }
        }
        m.arrive(Uuid::new_v4(), None, Some(m.id.id), now, &mut out);
        assert_eq!(kinds(&out), ["foreign"; 7]);
    }

    #[test]
    fn this_runs_message_for_another_dueslag_is_misrouted() {
        let mut m = matcher();
        let t0 = Instant::now();
        let mut out = vec![];
        let mut other_dueslag = payload(&m, 1);
        other_dueslag.dueslag = "e".into();
        // By the payload, by the RelateretObjekt, or by both.
        m.arrive(Uuid::new_v4(), Some(&other_dueslag), None, t0, &mut out);
        m.arrive(
            Uuid::new_v4(),
            Some(&payload(&m, 1)),
            Some(Uuid::from_u128(11)),
            t0,
            &mut out,
        );
        m.arrive(
            Uuid::new_v4(),
            Some(&other_dueslag),
            Some(Uuid::from_u128(11)),
            t0,
            &mut out,
        );
        assert_eq!(kinds(&out), ["misrouted"; 3]);
        let details: Vec<&str> = out
            .iter()
            .filter_map(|o| match o {
                Outcome::Received { detail, .. } => detail.as_deref(),
                _ => None,
            })
            .collect();
        assert!(
            details[1].contains("\"d\" (RelateretObjekt 00000000-0000-0000-0000-00000000000b)")
                && details
                    .iter()
                    .all(|d| d.contains("does not filter on RelateretObjekt")),
            "{details:?}"
        );
        // Misrouted messages leave this dueslag's accounting alone: its own probe still
        // matches, in order, addressed to it.
        let id = Uuid::new_v4();
        let mut out = vec![];
        m.begin(id, t0, T, &mut out);
        m.arrive(id, Some(&payload(&m, 1)), Some(m.id.id), t0, &mut out);
        assert_eq!(kinds(&out), ["success", "matched"]);
    }

    #[test]
    fn send_failure_ends_the_probe_but_a_later_arrival_is_late() {
        let mut m = matcher();
        let t0 = Instant::now();
        let id = Uuid::new_v4();
        let mut out = vec![];
        m.begin(id, t0, T, &mut out);
        m.send_failed(id, SendFailure::Timeout, &mut out);
        m.send_failed(id, SendFailure::Timeout, &mut out);
        m.arrive(id, Some(&payload(&m, 1)), None, t0, &mut out);
        assert_eq!(kinds(&out), ["send_error", "late"]);
    }

    #[test]
    fn table_is_bounded() {
        let mut m = matcher();
        let t0 = Instant::now();
        let mut out = vec![];
        let ids: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
        for (i, id) in ids.iter().enumerate() {
            m.begin(*id, t0 + Duration::from_millis(i as u64), T, &mut out);
        }
        assert_eq!(m.inflight(), 4);
        assert_eq!(kinds(&out), ["timeout", "timeout"]);
        // The evicted ones are the oldest.
        m.arrive(ids[0], Some(&payload(&m, 1)), None, t0, &mut out);
        assert_eq!(kinds(&out).last().unwrap(), "late");
        // The memory of finished probes is bounded too.
        let mut out = vec![];
        for i in 0..200 {
            let id = Uuid::new_v4();
            m.begin(id, t0, T, &mut out);
            m.arrive(id, Some(&payload(&m, 10 + i)), None, t0, &mut out);
        }
        assert!(m.finished.len() <= m.finished_cap);
        assert_eq!(m.finished.len(), m.finished_order.len());
    }
}
