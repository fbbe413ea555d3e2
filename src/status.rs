//! The status board: per dueslag, the last success, the last round trip, and a bounded
//! history of recent outcomes with their reasons. Rendered as the HTML page at `/` and
//! the per-dueslag history at `/dueslag/{name}`.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::message::{escape, format_time};
use crate::outcome::{Observer, Outcome, ProbeResult, ReceivedKind};

/// How many outcomes each dueslag remembers.
pub const HISTORY: usize = 50;

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
const RESULTS: [&str; 12] = [
    "success",
    "timeout",
    "send_error",
    "send_failure",
    "lost",
    "matched",
    "late",
    "duplicate",
    "out_of_order",
    "foreign",
    "unexpected",
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
    inflight: usize,
    held: usize,
    paused: bool,
    /// Allocated at exactly [`HISTORY`] on first use.
    history: VecDeque<Kept>,
}

/// The status of one dueslag.
#[derive(Debug)]
pub struct DueslagStatus {
    pub name: String,
    pub mode: &'static str,
    board: Mutex<Board>,
}

/// A copy of a dueslag's status for rendering.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: String,
    pub mode: &'static str,
    pub last_success: Option<SystemTime>,
    pub last_roundtrip: Option<Duration>,
    pub inflight: usize,
    pub held: usize,
    pub paused: bool,
    /// Newest first.
    pub history: Vec<Entry>,
}

impl DueslagStatus {
    pub fn new(name: &str, mode: &'static str) -> Self {
        DueslagStatus {
            name: name.to_string(),
            mode,
            board: Mutex::default(),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let b = self.board.lock().unwrap();
        Snapshot {
            name: self.name.clone(),
            mode: self.mode,
            last_success: b.last_success,
            last_roundtrip: b.last_roundtrip,
            inflight: b.inflight,
            held: b.held,
            paused: b.paused,
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
                        Some(roundtrip)
                    }
                    _ => None,
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
                kind,
                besked_id,
                detail,
            } if kind != ReceivedKind::Matched => {
                push(&mut b, entry(besked_id, kind.as_str(), detail, None, None));
            }
            Outcome::Lost { besked_id } => {
                push(&mut b, entry(Some(besked_id), "lost", None, None, None))
            }
            Outcome::Inflight(n) => b.inflight = n,
            Outcome::Held { count, paused } => {
                b.held = count;
                b.paused = paused;
            }
            _ => {}
        }
    }
}

fn ago(t: Option<SystemTime>) -> String {
    match t.and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(d) => format!(
            "{} ago",
            humantime::format_duration(Duration::from_secs(d.as_secs()))
        ),
        None => "never".to_string(),
    }
}

fn millis(d: Option<Duration>) -> String {
    d.map_or("–".to_string(), |d| {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    })
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em}.banner{background:#fff3cd;border:1px solid #e0b400;padding:.5em}table{border-collapse:collapse}\
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.bad{color:#b00}.ok{color:#070}";

/// The index page. `backend` is the label value of `bfo_alive_backend_info`; on the
/// simulator a banner says that nothing real is probed.
pub fn render_index(dueslag: &[Snapshot], version: &str, backend: &str) -> String {
    let banner = if backend == "sim" {
        "<p class=\"banner\">Backend: <b>sim</b>, the embedded Beskedfordeler simulator. \
         Nothing real is probed: these results come from simulated dueslag.</p>"
    } else {
        ""
    };
    let mut h = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>bfo-alive-exporter</title><style>{STYLE}</style></head><body>\
         <h1>bfo-alive-exporter</h1>{banner}<p>Version {} · backend {} · <a href=\"/metrics\">metrics</a> · <a href=\"/-/healthy\">healthy</a> · <a href=\"/-/ready\">ready</a></p>\
         <table><tr><th>dueslag</th><th>mode</th><th>last success</th><th>last round trip</th><th>in flight</th><th>held</th><th>recent failures</th></tr>",
        escape(version),
        escape(backend)
    );
    for d in dueslag {
        let failures: Vec<String> = d
            .history
            .iter()
            .filter(|e| e.result != "success" && e.result != "send_failure")
            .take(5)
            .map(|e| {
                let mut s = escape(e.result);
                if let Some(r) = &e.reason {
                    let _ = write!(s, " ({})", escape(r));
                }
                s
            })
            .collect();
        let class = if d.history.first().is_some_and(|e| e.result == "success") {
            "ok"
        } else {
            "bad"
        };
        let _ = write!(
            h,
            "<tr><td><a href=\"/dueslag/{n}\">{n}</a></td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td></tr>",
            d.mode,
            ago(d.last_success),
            millis(d.last_roundtrip),
            d.inflight,
            d.held,
            if d.paused { " (consumer paused)" } else { "" },
            if failures.is_empty() {
                "none".to_string()
            } else {
                failures.join("<br>")
            },
            n = escape(&d.name),
        );
    }
    h.push_str("</table></body></html>");
    h
}

/// The recent history of one dueslag.
pub fn render_history(d: &Snapshot) -> String {
    let mut h = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{n}</title><style>{STYLE}</style></head><body>\
         <h1>dueslag {n} ({})</h1><p><a href=\"/\">all dueslag</a></p>\
         <table><tr><th>time</th><th>BeskedId</th><th>result</th><th>reason</th><th>StatusKode</th><th>round trip</th></tr>",
        d.mode,
        n = escape(&d.name)
    );
    for e in &d.history {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            format_time(e.at),
            e.besked_id.map(|i| i.to_string()).unwrap_or_default(),
            escape(e.result),
            escape(e.reason.as_deref().unwrap_or("")),
            e.status_kode.map(|c| c.to_string()).unwrap_or_default(),
            millis(e.roundtrip),
        );
    }
    h.push_str("</table></body></html>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::SendFailure;

    #[test]
    fn history_is_bounded_and_newest_first() {
        let s = DueslagStatus::new("d<x>", "pull");
        for i in 0..(HISTORY + 10) {
            s.observe(Outcome::SendFailed {
                besked_id: Uuid::from_u128(i as u128),
                reason: SendFailure::Rejected,
                status: Some(44),
                detail: "no".into(),
            });
        }
        let snap = s.snapshot();
        assert_eq!(snap.history.len(), HISTORY);
        assert!(s.board.lock().unwrap().history.capacity() < HISTORY + 8);
        assert_eq!(
            snap.history[0].besked_id,
            Some(Uuid::from_u128((HISTORY + 9) as u128))
        );
        let page = render_history(&snap);
        assert!(page.contains("d&lt;x&gt;") && page.contains("<td>44</td>"));
        let page = render_index(&[snap], "0", "amqp");
        assert!(page.contains("never") && !page.contains("class=\"banner\""));
        assert!(render_index(&[], "0", "sim").contains("Nothing real is probed"));
    }

    #[test]
    fn kept_entries_are_compact_and_keep_what_the_page_shows() {
        assert!(
            std::mem::size_of::<Kept>() <= 40,
            "{}",
            std::mem::size_of::<Kept>()
        );
        let known = ProbeResult::LABELS
            .into_iter()
            .chain(ReceivedKind::ALL.map(ReceivedKind::as_str))
            .chain(["send_failure", "lost"]);
        for r in known {
            let e = Entry {
                at: UNIX_EPOCH,
                besked_id: None,
                result: r,
                reason: None,
                status_kode: None,
                roundtrip: None,
            };
            assert_eq!(
                Kept::new(e.clone()).entry(),
                e,
                "{r} has no place in RESULTS"
            );
        }
        let e = Entry {
            at: UNIX_EPOCH + Duration::from_millis(1_764_583_200_123),
            besked_id: Some(Uuid::from_u128(7)),
            result: "send_error",
            reason: Some("connection".into()),
            status_kode: Some(41),
            roundtrip: Some(Duration::from_micros(5_432)),
        };
        assert_eq!(Kept::new(e.clone()).entry(), e);
    }
}
