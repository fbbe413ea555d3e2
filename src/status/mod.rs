//! The status board: per dueslag, its state (ok, failing since when, or waiting for a first
//! result), the last success, the last round trip, and a bounded history of recent outcomes
//! with their reasons. Rendered as the page at `/` for the person on call — worst first,
//! filtered by name and paged, so it stays small at 10,000 dueslag — and as the per-dueslag
//! history at `/dueslag/{name}`. Each dueslag's last outcomes are drawn as an inline SVG:
//! no JavaScript, no external assets.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use uuid::Uuid;

use crate::message::{escape, format_time};
use crate::outcome::{Observer, Outcome, ProbeResult, ReceivedKind};

/// How many outcomes each dueslag remembers.
pub const HISTORY: usize = 50;

/// Rows on one page of `/`. A row with its picture is about 1 KB, so a page stays near
/// 100 KB however many dueslag run (one row each for 10,000 was 1.4 MB without pictures).
pub const PAGE_SIZE: usize = 100;

/// One remembered event.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub at: SystemTime,
    pub besked_id: Option<Uuid>,
    pub result: &'static str,
    pub reason: Option<String>,
    pub status_kode: Option<i32>,
    pub roundtrip: Option<Duration>,
}

/// Every result an entry can have: an entry keeps its index. The last one stands for
/// any other.
const RESULTS: [&str; 14] = [
    "success",
    "timeout",
    "send_error",
    "send_failure",
    "lost",
    "matched",
    "late",
    "duplicate",
    "out_of_order",
    "misrouted",
    "foreign",
    "unexpected",
    "consume_failure",
    "other",
];

/// An [`Entry`] as kept in memory. 10,000 dueslag keep half a million of them, so it is
/// packed into 40 bytes instead of 104: the time in whole milliseconds, the round trip in
/// whole microseconds and the StatusKode in 16 bits (each with a sentinel for "none"), the
/// result as an index into [`RESULTS`], and the rare reason behind one thin pointer.
#[derive(Debug)]
struct Kept {
    at_ms: u64,
    #[allow(clippy::redundant_allocation)] // a thin pointer: 8 bytes instead of 16
    reason: Option<Box<Box<str>>>,
    besked_id: Option<Uuid>,
    roundtrip_us: u32,
    status_kode: i16,
    result: u8,
}

const NO_ROUNDTRIP: u32 = u32::MAX;
const NO_STATUS: i16 = i16::MIN;

impl Kept {
    fn new(e: Entry) -> Self {
        let last = RESULTS.len() - 1;
        Kept {
            at_ms: e
                .at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            reason: e.reason.map(|r| Box::new(r.into_boxed_str())),
            besked_id: e.besked_id,
            roundtrip_us: e.roundtrip.map_or(NO_ROUNDTRIP, |d| {
                u32::try_from(d.as_micros()).unwrap_or(NO_ROUNDTRIP - 1)
            }),
            status_kode: e.status_kode.map_or(NO_STATUS, |c| {
                i16::try_from(c).unwrap_or(if c < 0 { NO_STATUS + 1 } else { i16::MAX })
            }),
            result: RESULTS.iter().position(|r| *r == e.result).unwrap_or(last) as u8,
        }
    }

    fn entry(&self) -> Entry {
        Entry {
            at: UNIX_EPOCH + Duration::from_millis(self.at_ms),
            besked_id: self.besked_id,
            result: RESULTS[usize::from(self.result)],
            reason: self.reason.as_deref().map(|r| r.to_string()),
            status_kode: (self.status_kode != NO_STATUS).then_some(i32::from(self.status_kode)),
            roundtrip: (self.roundtrip_us != NO_ROUNDTRIP)
                .then(|| Duration::from_micros(u64::from(self.roundtrip_us))),
        }
    }
}

#[derive(Debug, Default)]
struct Board {
    last_success: Option<SystemTime>,
    last_roundtrip: Option<Duration>,
    /// Whether the last finished probe succeeded; `None` before the first one finished.
    last_ok: Option<bool>,
    /// When the current run of failed probes began: the first failure after a success (or
    /// after the start). `None` while the last probe succeeded.
    failing_since: Option<SystemTime>,
    inflight: usize,
    held: usize,
    paused: bool,
    /// Misrouted arrivals since the start, and when the last one came.
    misrouted: u64,
    last_misrouted: Option<SystemTime>,
    /// When a misrouted arrival last went into the history.
    misrouted_entry: Option<SystemTime>,
    /// Allocated at exactly [`HISTORY`] on first use.
    history: VecDeque<Kept>,
}

/// A misrouted arrival goes into the history at most this often: with an abonnement that
/// does not filter on RelateretObjekt, every other dueslag's probes arrive, and would push
/// the dueslag's own outcomes out of its history. They are all counted.
const MISROUTED_ENTRY_EVERY: Duration = Duration::from_secs(60);

/// How a dueslag stands. The order is the page's: worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    /// Its last finished probe failed (timeout or send error).
    Failing,
    /// No probe has finished yet.
    Waiting,
    /// Its last finished probe succeeded.
    Ok,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Failing => "failing",
            State::Waiting => "waiting",
            State::Ok => "ok",
        }
    }
}

/// A dueslag's state without its history: cheap enough to take for 10,000 dueslag on
/// every request of `/`.
#[derive(Debug, Clone)]
pub struct Summary {
    pub state: State,
    /// When the current run of failed probes began (`Some` exactly when failing).
    pub failing_since: Option<SystemTime>,
    /// `None`: never succeeded since the dueslag started.
    pub last_success: Option<SystemTime>,
    pub last_roundtrip: Option<Duration>,
    /// Probes sent and not yet back or timed out.
    pub inflight: usize,
    /// Non-Alive messages held unacknowledged (pull), and whether consuming stopped.
    pub held: usize,
    pub paused: bool,
    /// Alive messages for other dueslag that arrived here (its abonnement does not filter
    /// on RelateretObjekt), and when the last one came.
    pub misrouted: u64,
    pub last_misrouted: Option<SystemTime>,
}

/// The status of one dueslag.
#[derive(Debug)]
pub struct DueslagStatus {
    pub name: String,
    pub mode: &'static str,
    /// When this dueslag started (a reload that changes it starts it again).
    pub started: SystemTime,
    board: Mutex<Board>,
}

/// A copy of a dueslag's status for rendering.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: String,
    pub mode: &'static str,
    pub started: SystemTime,
    pub summary: Summary,
    /// Newest first.
    pub history: Vec<Entry>,
}

impl Board {
    fn summary(&self) -> Summary {
        Summary {
            state: match self.last_ok {
                None => State::Waiting,
                Some(true) => State::Ok,
                Some(false) => State::Failing,
            },
            failing_since: self.failing_since,
            last_success: self.last_success,
            last_roundtrip: self.last_roundtrip,
            inflight: self.inflight,
            held: self.held,
            paused: self.paused,
            misrouted: self.misrouted,
            last_misrouted: self.last_misrouted,
        }
    }
}

impl DueslagStatus {
    pub fn new(name: &str, mode: &'static str) -> Self {
        DueslagStatus {
            name: name.to_string(),
            mode,
            started: SystemTime::now(),
            board: Mutex::default(),
        }
    }

    pub fn summary(&self) -> Summary {
        self.board.lock().unwrap().summary()
    }

    pub fn snapshot(&self) -> Snapshot {
        let b = self.board.lock().unwrap();
        Snapshot {
            name: self.name.clone(),
            mode: self.mode,
            started: self.started,
            summary: b.summary(),
            history: b.history.iter().rev().map(Kept::entry).collect(),
        }
    }
}

fn push(b: &mut Board, e: Entry) {
    if b.history.capacity() == 0 {
        b.history.reserve_exact(HISTORY);
    }
    if b.history.len() == HISTORY {
        b.history.pop_front();
    }
    b.history.push_back(Kept::new(e));
}

impl Observer for DueslagStatus {
    fn observe(&self, outcome: Outcome) {
        let mut b = self.board.lock().unwrap();
        let now = SystemTime::now();
        let entry =
            |besked_id, result: &'static str, reason: Option<String>, status_kode, roundtrip| {
                Entry {
                    at: now,
                    besked_id,
                    result,
                    reason,
                    status_kode,
                    roundtrip,
                }
            };
        match outcome {
            Outcome::Finished {
                besked_id,
                result,
                at,
            } => {
                let rt = match result {
                    ProbeResult::Success { roundtrip } => {
                        b.last_success = Some(at);
                        b.last_roundtrip = Some(roundtrip);
                        b.last_ok = Some(true);
                        b.failing_since = None;
                        Some(roundtrip)
                    }
                    _ => {
                        b.last_ok = Some(false);
                        b.failing_since.get_or_insert(at);
                        None
                    }
                };
                let reason = match result {
                    ProbeResult::SendError(r) => Some(r.as_str().to_string()),
                    _ => None,
                };
                push(
                    &mut b,
                    entry(Some(besked_id), result.label(), reason, None, rt),
                );
            }
            Outcome::SendFailed {
                besked_id,
                reason,
                status,
                detail,
            } => push(
                &mut b,
                entry(
                    Some(besked_id),
                    "send_failure",
                    Some(format!("{}: {detail}", reason.as_str())),
                    status,
                    None,
                ),
            ),
            Outcome::Received {
                kind: ReceivedKind::Misrouted,
                besked_id,
                detail,
            } => {
                b.misrouted += 1;
                b.last_misrouted = Some(now);
                let due = b.misrouted_entry.is_none_or(
                    |t| !matches!(now.duration_since(t), Ok(d) if d < MISROUTED_ENTRY_EVERY),
                );
                if due {
                    b.misrouted_entry = Some(now);
                    let kind = ReceivedKind::Misrouted.as_str();
                    push(&mut b, entry(besked_id, kind, detail, None, None));
                }
            }
            Outcome::Received {
                kind,
                besked_id,
                detail,
            } if kind != ReceivedKind::Matched => {
                push(&mut b, entry(besked_id, kind.as_str(), detail, None, None));
            }
            Outcome::Lost { besked_id } => {
                push(&mut b, entry(Some(besked_id), "lost", None, None, None))
            }
            Outcome::ConsumeFailed { reason, detail } => push(
                &mut b,
                entry(
                    None,
                    "consume_failure",
                    Some(format!("{}: {detail}", reason.as_str())),
                    None,
                    None,
                ),
            ),
            Outcome::Inflight(n) => b.inflight = n,
            Outcome::Held { count, paused } => {
                b.held = count;
                b.paused = paused;
            }
            _ => {}
        }
    }
}

mod page;
#[cfg(test)]
mod tests;

pub use page::{IndexQuery, render_history, render_index};
