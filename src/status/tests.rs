//! Tests of the status board and its pages.

use super::page::{bar_height, sparkline, url_encode};
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
        render_index(none, &IndexQuery::default(), "0", "sim").contains("Nothing real is probed")
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
        .chain(["send_failure", "lost", "consume_failure"]);
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

#[test]
fn misrouted_arrivals_are_counted_shown_and_kept_out_of_the_way() {
    let s = DueslagStatus::new("a", "pull");
    finish(&s, 1, 0, OK);
    for i in 0..30 {
        s.observe(Outcome::Received {
            kind: ReceivedKind::Misrouted,
            besked_id: Some(Uuid::from_u128(100 + i)),
            detail: Some("addressed to dueslag \"b\": this dueslag's abonnement does not filter on RelateretObjekt".into()),
        });
    }
    let snap = s.snapshot();
    assert_eq!(snap.summary.misrouted, 30);
    assert!(snap.summary.last_misrouted.is_some());
    // One history entry a minute, not thirty: the dueslag's own outcomes stay visible.
    let results: Vec<&str> = snap.history.iter().map(|e| e.result).collect();
    assert_eq!(results, ["misrouted", "success"]);
    let page = render_history(&snap);
    assert!(
        page.contains("<p id=\"misrouted\">")
            && page.contains("30 misrouted")
            && page.contains("does not filter on RelateretObjekt"),
        "{page}"
    );
    let index = render_index([&s], &IndexQuery::default(), "0", "amqp");
    assert!(
        index.contains("data-state=\"ok\"") && index.contains("30 misrouted"),
        "{index}"
    );
    // A dueslag without misrouted arrivals says nothing about them.
    let quiet = DueslagStatus::new("b", "pull");
    let index = render_index([&quiet], &IndexQuery::default(), "0", "amqp");
    assert!(!index.contains("misrouted"));
}
