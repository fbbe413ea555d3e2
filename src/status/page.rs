//! The pages of the status board: the index at `/` (worst first, filtered, paged, one inline
//! SVG of recent outcomes per dueslag) and the history of one dueslag at `/dueslag/{name}`.
//! Plain HTML with inline styles: no JavaScript, no external assets.

use super::*;

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
pub(super) fn bar_height(rt: Option<Duration>) -> f64 {
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

/// What a dueslag that receives other dueslag's Alive messages must be told: its abonnement
/// does not filter on RelateretObjekt. Empty when none came.
fn misrouted_note(s: &Summary) -> String {
    if s.misrouted == 0 {
        return String::new();
    }
    format!(
        "<span class=\"bad\" title=\"Alive messages of this exporter for other dueslag arrived here: this dueslag's abonnement does not filter on RelateretObjekt (bfo-alive-exporter setup prints the filter)\">{} misrouted, the last {}: the abonnement does not filter on RelateretObjekt</span>",
        s.misrouted,
        ago(s.last_misrouted)
    )
}

/// Percent-encodes a query value (everything but unreserved characters).
pub(super) fn url_encode(s: &str) -> String {
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
            "<tr class=\"{state}\" data-state=\"{state}\" data-dueslag=\"{n}\"><td><a href=\"/dueslag/{n}\">{n}</a></td><td>{}</td><td class=\"{}\">{state}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td></tr>",
            d.mode,
            if s.state == State::Ok { "ok" } else { "bad" },
            Some(misrouted_note(s))
                .filter(|n| !n.is_empty())
                .map(|n| format!("<br><small>{n}</small>"))
                .unwrap_or_default(),
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
         <p id=\"state\" data-state=\"{}\">{state} · last success {} · running since {}</p>{}{}\
         <table><tr><th>time</th><th>BeskedId</th><th>result</th><th>reason</th><th>StatusKode</th><th>round trip</th></tr>",
        d.mode,
        s.state.as_str(),
        ago(s.last_success),
        format_time(d.started),
        Some(misrouted_note(s))
            .filter(|n| !n.is_empty())
            .map(|n| format!("<p id=\"misrouted\">{n}</p>"))
            .unwrap_or_default(),
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
