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
    /// Whether the last finished probe succeeded; `None` before the first one finished.
    last_ok: Option<bool>,
    /// When the current run of failed probes began: the first failure after a success (or
    /// after the start). `None` while the last probe succeeded.
    failing_since: Option<SystemTime>,
    inflight: usize,
    held: usize,
    paused: bool,
    /// Allocated at exactly [`HISTORY`] on first use.
    history: VecDeque<Kept>,
}

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

/// How an entry is drawn and whether it is a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// A round trip: a green bar as high as the round trip was long (log scale).
    Success,
    /// The probe failed (timeout or send error): a full red bar.
    Failure,
    /// Any other event: a failed send attempt, a lost message (of a probe that already
    /// timed out), something that arrived late, twice or from elsewhere: a short orange bar.
    Other,
}

fn mark(result: &str) -> Mark {
    match result {
        "success" => Mark::Success,
        "timeout" | "send_error" => Mark::Failure,
        _ => Mark::Other,
    }
}

const SPARK_STEP: usize = 3;
const SPARK_HEIGHT: f64 = 20.0;

/// A round trip's bar height: 2 px at 1 ms up to 18 px at 10 s and more, on a log scale,
/// so that rows compare at a glance.
fn bar_height(rt: Option<Duration>) -> f64 {
    let ms = rt.map_or(1.0, |d| d.as_secs_f64() * 1000.0).max(1.0);
    (2.0 + 16.0 * (ms.log10() / 4.0).min(1.0)).round()
}

/// The last outcomes (newest first in `history`) as an inline SVG, oldest on the left:
/// one path per colour, so a picture of 50 outcomes is well under 1 KB.
pub fn sparkline(history: &[Entry]) -> String {
    let mut paths = [String::new(), String::new(), String::new()];
    let (mut ok, mut failed, mut max_rt) = (0, 0, Duration::ZERO);
    for (i, e) in history.iter().take(HISTORY).rev().enumerate() {
        let x = i * SPARK_STEP + 1;
        let (slot, h) = match mark(e.result) {
            Mark::Success => {
                ok += 1;
                max_rt = max_rt.max(e.roundtrip.unwrap_or_default());
                (0, bar_height(e.roundtrip))
            }
            Mark::Failure => {
                failed += 1;
                (1, SPARK_HEIGHT - 2.0)
            }
            Mark::Other => (2, 6.0),
        };
        let _ = write!(paths[slot], "M{x} {SPARK_HEIGHT}v-{h}");
    }
    let width = HISTORY * SPARK_STEP;
    let title = if history.is_empty() {
        "no outcomes yet".to_string()
    } else {
        format!(
            "last {}: {ok} round trips (slowest {}), {failed} failures; green bar height: round trip, 1 ms to 10 s, log scale",
            history.len().min(HISTORY),
            millis(Some(max_rt)),
        )
    };
    let mut svg = format!(
        "<svg class=\"spark\" width=\"{width}\" height=\"{SPARK_HEIGHT}\" viewBox=\"0 0 {width} {SPARK_HEIGHT}\" role=\"img\"><title>{title}</title>"
    );
    for (d, colour) in paths.iter().zip(["#2a2", "#c00", "#e90"]) {
        if !d.is_empty() {
            let _ = write!(
                svg,
                "<path d=\"{d}\" stroke=\"{colour}\" stroke-width=\"2\"/>"
            );
        }
    }
    svg.push_str("</svg>");
    svg
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

/// `2026-12-01T10:00:00.000Z (for 5m 3s)`.
fn since(t: SystemTime) -> String {
    let d = SystemTime::now().duration_since(t).unwrap_or_default();
    format!(
        "{} (for {})",
        format_time(t),
        humantime::format_duration(Duration::from_secs(d.as_secs()))
    )
}

fn millis(d: Option<Duration>) -> String {
    d.map_or("–".to_string(), |d| {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    })
}

/// The newest failure of a history, with its reason, cut to a line.
fn last_failure(history: &[Entry]) -> String {
    let Some(e) = history.iter().find(|e| mark(e.result) == Mark::Failure) else {
        return "none".to_string();
    };
    let mut s = e.result.to_string();
    if let Some(r) = &e.reason {
        let r: String = r.chars().take(120).collect();
        let _ = write!(s, " ({r})");
    }
    format!("{} {}", escape(&s), ago(Some(e.at)))
}

/// Percent-encodes a query value (everything but unreserved characters).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em}.banner{background:#fff3cd;border:1px solid #e0b400;padding:.5em}table{border-collapse:collapse}\
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:middle}td.bad,span.bad,b.bad{color:#b00}td.ok,span.ok,b.ok{color:#070}\
tr.failing td{background:#fdecec}.spark{display:block;background:#f6f6f6;margin:4px 0}";

fn head(title: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>",
        escape(title)
    )
}

/// `GET /`: `q` keeps the dueslag whose name contains it; `page` (from 1) picks a page of
/// [`PAGE_SIZE`]. Both are optional, and a page number that is not one shows page 1.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct IndexQuery {
    pub q: Option<String>,
    pub page: Option<String>,
}

/// Counts over every dueslag, for the summary line. "Never succeeded" includes those
/// still waiting for a first result, as `bfo_alive_last_success_timestamp_seconds` 0 does.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    ok: usize,
    failing: usize,
    waiting: usize,
    never_succeeded: usize,
}

impl Counts {
    fn add(&mut self, s: &Summary) {
        self.total += 1;
        match s.state {
            State::Ok => self.ok += 1,
            State::Failing => self.failing += 1,
            State::Waiting => self.waiting += 1,
        }
        if s.last_success.is_none() {
            self.never_succeeded += 1;
        }
    }
}

/// Worst first: failing before waiting before ok, the longest failing first, then by name.
fn worst_first(a: &(&DueslagStatus, Summary), b: &(&DueslagStatus, Summary)) -> std::cmp::Ordering {
    a.1.state
        .cmp(&b.1.state)
        .then(a.1.failing_since.cmp(&b.1.failing_since))
        .then_with(|| a.0.name.cmp(&b.0.name))
}

/// The index page. `backend` is the label value of `bfo_alive_backend_info`; on the
/// simulator a banner says that nothing real is probed.
pub fn render_index<'a>(
    dueslag: impl IntoIterator<Item = &'a DueslagStatus>,
    query: &IndexQuery,
    version: &str,
    backend: &str,
) -> String {
    let mut counts = Counts::default();
    let filter = query
        .q
        .as_deref()
        .map(str::trim)
        .unwrap_or("")
        .to_lowercase();
    let mut rows: Vec<(&DueslagStatus, Summary)> = dueslag
        .into_iter()
        .map(|d| (d, d.summary()))
        .inspect(|(_, s)| counts.add(s))
        .filter(|(d, _)| d.name.contains(filter.as_str()))
        .collect();
    rows.sort_unstable_by(worst_first);
    let pages = rows.len().div_ceil(PAGE_SIZE).max(1);
    let page = query
        .page
        .as_deref()
        .and_then(|p| p.trim().parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, pages);
    let first = (page - 1) * PAGE_SIZE;
    let shown = &rows[first..rows.len().min(first + PAGE_SIZE)];

    let banner = if backend == "sim" {
        "<p class=\"banner\">Backend: <b>sim</b>, the embedded Beskedfordeler simulator. \
         Nothing real is probed: these results come from simulated dueslag.</p>"
    } else {
        ""
    };
    let mut h = head("bfo-alive-exporter");
    let _ = write!(
        h,
        "<h1>bfo-alive-exporter</h1>{banner}<p>Version {} · backend {} · <a href=\"/metrics\">metrics</a> · <a href=\"/-/healthy\">healthy</a> · <a href=\"/-/ready\">ready</a></p>\
         <p id=\"summary\" data-total=\"{t}\" data-ok=\"{o}\" data-failing=\"{f}\" data-never=\"{n}\" data-waiting=\"{w}\"><b>{t} dueslag</b>: <span class=\"ok\">{o} ok</span> · <span class=\"bad\">{f} failing</span> · {n} never succeeded · {w} waiting for a first result</p>\
         <form method=\"get\" action=\"/\"><input name=\"q\" value=\"{q}\" placeholder=\"name contains\"> <button>Filter</button></form>",
        escape(version),
        escape(backend),
        t = counts.total,
        o = counts.ok,
        f = counts.failing,
        n = counts.never_succeeded,
        w = counts.waiting,
        q = escape(&filter),
    );
    let nav = pager(&filter, page, pages, first, shown.len(), rows.len());
    h.push_str(&nav);
    h.push_str(
        "<table id=\"dueslag\"><tr><th>dueslag</th><th>mode</th><th>state</th><th>failing since</th><th>last success</th><th>last round trip</th><th>in flight</th><th>held</th><th>last 50 outcomes</th><th>last failure</th></tr>",
    );
    for (d, s) in shown {
        let history = d.snapshot().history;
        let state = s.state.as_str();
        let _ = write!(
            h,
            "<tr class=\"{state}\" data-state=\"{state}\" data-dueslag=\"{n}\"><td><a href=\"/dueslag/{n}\">{n}</a></td><td>{}</td><td class=\"{}\">{state}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td></tr>",
            d.mode,
            if s.state == State::Ok { "ok" } else { "bad" },
            s.failing_since.map(since).unwrap_or_default(),
            ago(s.last_success),
            millis(s.last_roundtrip),
            s.inflight,
            s.held,
            if s.paused { " (consumer paused)" } else { "" },
            sparkline(&history),
            last_failure(&history),
            n = escape(&d.name),
        );
    }
    h.push_str("</table>");
    h.push_str(&nav);
    h.push_str("</body></html>");
    h
}

/// "dueslag 101–200 of 2345 · page 2 of 24 · ‹ previous · next ›", links keeping the filter.
fn pager(
    filter: &str,
    page: usize,
    pages: usize,
    first: usize,
    shown: usize,
    matching: usize,
) -> String {
    let link = |p: usize, text: &str| {
        let q = if filter.is_empty() {
            String::new()
        } else {
            format!("q={}&amp;", url_encode(filter))
        };
        format!("<a href=\"/?{q}page={p}\">{text}</a>")
    };
    let mut s = format!(
        "<p class=\"pages\">dueslag {}–{} of {matching}",
        first + shown.min(1),
        first + shown
    );
    if !filter.is_empty() {
        let _ = write!(s, " whose name contains “{}”", escape(filter));
    }
    let _ = write!(s, " · page {page} of {pages}");
    if page > 1 {
        let _ = write!(
            s,
            " · {} · {}",
            link(1, "« first"),
            link(page - 1, "‹ previous")
        );
    }
    if page < pages {
        let _ = write!(
            s,
            " · {} · {}",
            link(page + 1, "next ›"),
            link(pages, "last »")
        );
    }
    s.push_str("</p>");
    s
}

/// The recent history of one dueslag.
pub fn render_history(d: &Snapshot) -> String {
    let s = &d.summary;
    let state = match (s.state, s.failing_since) {
        (State::Failing, Some(t)) => format!("<b class=\"bad\">failing</b> since {}", since(t)),
        (st, _) => format!(
            "<b class=\"{}\">{}</b>",
            if st == State::Ok { "ok" } else { "bad" },
            st.as_str()
        ),
    };
    let mut h = head(&d.name);
    let _ = write!(
        h,
        "<h1>dueslag {n} ({})</h1><p><a href=\"/\">all dueslag</a></p>\
         <p id=\"state\" data-state=\"{}\">{state} · last success {} · running since {}</p>{}\
         <table><tr><th>time</th><th>BeskedId</th><th>result</th><th>reason</th><th>StatusKode</th><th>round trip</th></tr>",
        d.mode,
        s.state.as_str(),
        ago(s.last_success),
        format_time(d.started),
        sparkline(&d.history),
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

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_764_583_200 + secs)
    }

    fn finish(s: &DueslagStatus, id: u128, when: u64, result: ProbeResult) {
        s.observe(Outcome::Finished {
            besked_id: Uuid::from_u128(id),
            result,
            at: at(when),
        });
    }

    const OK: ProbeResult = ProbeResult::Success {
        roundtrip: Duration::from_millis(40),
    };

    /// The dueslag names in the order the page lists them.
    fn order(page: &str) -> Vec<&str> {
        page.split("data-dueslag=\"")
            .skip(1)
            .map(|r| &r[..r.find('"').unwrap()])
            .collect()
    }

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
        assert!(page.contains("<svg") && page.contains("data-state=\"waiting\""));
        let page = render_index([&s], &IndexQuery::default(), "0", "amqp");
        assert!(page.contains("never") && !page.contains("class=\"banner\""));
        let none: [&DueslagStatus; 0] = [];
        assert!(
            render_index(none, &IndexQuery::default(), "0", "sim")
                .contains("Nothing real is probed")
        );
    }

    /// The on-call defect: the page listed 10,000 dueslag by name, a failing one anywhere.
    /// Failing dueslag come first, the longest failing first; then those without a result
    /// yet; then the healthy ones.
    #[test]
    fn failing_dueslag_come_first_longest_failing_first() {
        let healthy = DueslagStatus::new("a-healthy", "pull");
        finish(&healthy, 1, 10, ProbeResult::Timeout);
        finish(&healthy, 2, 20, OK);
        let recent = DueslagStatus::new("b-recent", "push");
        finish(&recent, 3, 30, OK);
        finish(&recent, 4, 300, ProbeResult::SendError(SendFailure::Token));
        let long = DueslagStatus::new("c-long", "pull");
        finish(&long, 5, 100, ProbeResult::Timeout);
        finish(&long, 6, 400, ProbeResult::Timeout);
        let waiting = DueslagStatus::new("d-waiting", "pull");

        // A run of failures keeps its first time; a success ends it.
        let l = long.summary();
        assert_eq!(
            (l.state, l.failing_since, l.last_success),
            (State::Failing, Some(at(100)), None)
        );
        let h = healthy.summary();
        assert_eq!(
            (h.state, h.failing_since, h.last_success),
            (State::Ok, None, Some(at(20)))
        );
        assert_eq!(recent.summary().failing_since, Some(at(300)));
        assert_eq!(waiting.summary().state, State::Waiting);

        let all = [&healthy, &recent, &long, &waiting];
        let page = render_index(all, &IndexQuery::default(), "0", "amqp");
        assert_eq!(
            order(&page),
            ["c-long", "b-recent", "d-waiting", "a-healthy"]
        );
        assert!(
            page.contains(&format!("{} (for ", format_time(at(100)))),
            "{page}"
        );
        assert!(page.contains(
            "data-total=\"4\" data-ok=\"1\" data-failing=\"2\" data-never=\"2\" data-waiting=\"1\""
        ));
        assert!(page.contains("send_error (token)"), "{page}");
        assert_eq!(page.matches("<svg").count(), 4);
        assert!(!page.contains("<script"));

        let q = |q: &str, p: &str| IndexQuery {
            q: Some(q.into()),
            page: Some(p.into()),
        };
        let filtered = render_index(all, &q("-RE", "x"), "0", "amqp");
        assert_eq!(order(&filtered), ["b-recent"]);
        // The summary counts every dueslag, not only those shown.
        assert!(filtered.contains("data-total=\"4\"") && filtered.contains("value=\"-re\""));
    }

    fn busy(name: String, failing: bool) -> DueslagStatus {
        let s = DueslagStatus::new(&name, "pull");
        for i in 0..HISTORY as u64 {
            let result = if i % 7 == 3 {
                ProbeResult::Timeout
            } else {
                ProbeResult::Success {
                    roundtrip: Duration::from_micros(5_000 + i * 977),
                }
            };
            finish(&s, u128::from(i), i, result);
        }
        if failing {
            finish(
                &s,
                99,
                1000,
                ProbeResult::SendError(SendFailure::Connection),
            );
        }
        s
    }

    /// The on-call defect: at 10,000 dueslag the page was 1.4 MB of table, and a picture
    /// each would have made it tens of MB. Now a page is at most [`PAGE_SIZE`] rows.
    #[test]
    fn the_page_at_10000_dueslag_stays_under_1_mb() {
        let all: Vec<DueslagStatus> = (0..10_000)
            .map(|i| busy(format!("dueslag-{i:05}"), i % 2_500 == 1))
            .collect();
        let start = std::time::Instant::now();
        let page = render_index(&all, &IndexQuery::default(), "0", "amqp");
        let took = start.elapsed();
        // A figure for the record (cargo test -- --nocapture); no test asserts speed.
        eprintln!(
            "status page at 10,000 dueslag with 50 outcomes each: {} bytes, rendered in {took:?}",
            page.len()
        );
        assert!(page.len() < 1_000_000, "{} bytes", page.len());
        assert_eq!(page.matches("<svg").count(), PAGE_SIZE);
        let rows = order(&page);
        assert_eq!(rows.len(), PAGE_SIZE);
        assert_eq!(
            rows[..4],
            [
                "dueslag-00001",
                "dueslag-02501",
                "dueslag-05001",
                "dueslag-07501"
            ]
        );
        assert!(page.contains("data-total=\"10000\" data-ok=\"9996\" data-failing=\"4\""));
        assert!(page.contains("page 1 of 100") && page.contains("href=\"/?page=2\""));

        let q = |q: Option<&str>, p: &str| IndexQuery {
            q: q.map(str::to_string),
            page: Some(p.into()),
        };
        let last = render_index(&all, &q(None, "100"), "0", "amqp");
        assert_eq!(order(&last).last(), Some(&"dueslag-09999"));
        assert!(render_index(&all, &q(None, "9999"), "0", "amqp").contains("page 100 of 100"));
        let some = render_index(&all, &q(Some("dueslag-01"), "2"), "0", "amqp");
        assert_eq!(order(&some).len(), 100);
        assert!(some.contains("of 1000 whose name contains") && some.contains("page 2 of 10"));
        assert!(some.contains("href=\"/?q=dueslag-01&amp;page=3\""));
    }

    #[test]
    fn the_picture_draws_round_trips_failures_and_other_arrivals() {
        let e = |result: &'static str, rt_ms: Option<u64>| Entry {
            at: UNIX_EPOCH,
            besked_id: None,
            result,
            reason: None,
            status_kode: None,
            roundtrip: rt_ms.map(Duration::from_millis),
        };
        // Newest first, as a snapshot holds them: drawn oldest on the left.
        let svg = sparkline(&[
            e("duplicate", None),
            e("timeout", None),
            e("success", Some(1)),
        ]);
        assert!(
            svg.contains("<path d=\"M1 20v-2\" stroke=\"#2a2\""),
            "{svg}"
        );
        assert!(
            svg.contains("<path d=\"M4 20v-18\" stroke=\"#c00\""),
            "{svg}"
        );
        assert!(
            svg.contains("<path d=\"M7 20v-6\" stroke=\"#e90\""),
            "{svg}"
        );
        assert_eq!(bar_height(Some(Duration::from_secs(10))), 18.0);
        assert_eq!(bar_height(Some(Duration::from_secs(600))), 18.0);
        assert_eq!(bar_height(Some(Duration::from_millis(100))), 10.0);
        let empty = sparkline(&[]);
        assert!(empty.contains("no outcomes yet") && !empty.contains("<path"));
        let full: Vec<Entry> = (0..HISTORY).map(|_| e("success", Some(12_345))).collect();
        assert!(sparkline(&full).len() < 1_000, "{}", sparkline(&full).len());
        assert_eq!(url_encode("a b&c/ø"), "a%20b%26c%2F%C3%B8");
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
