//! On-demand probes: one Alive message sent and awaited outside a dueslag's loop, with
//! every step traced. The `probe` command runs them in its own short-lived exporter, and the
//! running exporter offers them on `GET /probe` (opt-in: they send real messages).
//!
//! An on-demand probe does not touch the loop's sequence numbers, in-flight table or
//! metrics: its message carries sequence 0 and is matched by the probe's on-demand hooks
//! before the matcher sees it.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::trace::{Trace, hints};
use crate::config::Mode;
use crate::outcome::SendFailure;
use crate::probe::DueslagProbe;
use crate::protocol::SCRAPE_TIMEOUT_HEADER;
use crate::send::{self, SendReport};
use crate::supervisor::Running;
use crate::transport::Afsender;

/// On-demand probes of one dueslag start at most this often.
pub const SPACING: Duration = Duration::from_secs(5);

/// The plain-words hint for a failed Afsend.
fn send_hint(reason: SendFailure) -> &'static str {
    match reason {
        SendFailure::Token => hints::TOKEN_41,
        SendFailure::Rejected => hints::REJECTED,
        SendFailure::Unroutable => hints::UNROUTABLE,
        SendFailure::Timeout => hints::SEND_TIMEOUT,
        SendFailure::Connection => hints::CONNECTION,
        SendFailure::InvalidReply => hints::INVALID_REPLY,
    }
}

/// Sends one on-demand Alive message on `probe`'s dueslag and waits up to `timeout` for it,
/// tracing the publish and the delivery, and any Alive message of this run for another
/// dueslag that arrived meanwhile (misrouted: the abonnement does not filter on
/// RelateretObjekt). True when it arrived.
pub async fn probe_once(
    probe: &DueslagProbe,
    afsender: &dyn Afsender,
    timeout: Duration,
    trace: &mut Trace,
) -> bool {
    let (msg, arrival) = probe.on_demand();
    let id = msg.besked_id;
    let misrouted_before = probe.misrouted();
    let spec = &probe.spec;
    let started = Instant::now();
    let send_timeout = spec.send_timeout.min(timeout);
    let report = send::send(afsender, &msg, spec.send_attempts, send_timeout).await;
    let arrived = match &report {
        SendReport::Accepted { duration, attempts } => {
            trace.ok_timed(
                "publish",
                format!("BeskedId {id}: StandardRetur 20 after {attempts} attempt(s)"),
                *duration,
            );
            tokio::time::timeout_at(started + timeout, arrival)
                .await
                .ok()
                .and_then(Result::ok)
        }
        SendReport::Failed {
            reason,
            status,
            detail,
            reply_head,
            ..
        } => {
            let code = status
                .map(|c| format!("StandardRetur {c}: "))
                .unwrap_or_default();
            let head = reply_head
                .as_ref()
                .map(|h| format!("; the reply begins: {h}"))
                .unwrap_or_default();
            trace.fail(
                "publish",
                format!("BeskedId {id}: {}: {code}{detail}{head}", reason.as_str()),
                send_hint(*reason),
            );
            None
        }
    };
    probe.abandon_on_demand(id);
    let ok = match arrived {
        Some(at) => {
            trace.ok_timed(
                "delivery",
                format!("arrived by {} in dueslag {}", spec.mode.as_str(), spec.name),
                at.duration_since(started),
            );
            true
        }
        None => {
            if matches!(report, SendReport::Accepted { .. }) {
                let hint = match spec.mode {
                    Mode::Pull => hints::NOTHING_PULL,
                    Mode::Push => hints::NOTHING_PUSH,
                };
                trace.fail(
                    "delivery",
                    format!(
                        "nothing arrived in dueslag {} within {}",
                        spec.name,
                        humantime::format_duration(timeout)
                    ),
                    hint,
                );
            }
            false
        }
    };
    let misrouted = probe.misrouted() - misrouted_before;
    if misrouted > 0 {
        trace.fail(
            "abonnement",
            format!(
                "{misrouted} Alive message(s) of this exporter for other dueslag arrived in dueslag {} meanwhile (misrouted)",
                spec.name
            ),
            hints::MISROUTED,
        );
    }
    ok
}

/// `GET /probe?dueslag=NAME[&debug=true]` for a running dueslag: rate-limited to one per
/// [`SPACING`], bounded by Prometheus' scrape timeout, answered blackbox-style with
/// `probe_success` and `probe_duration_seconds`, or with the trace when `debug`.
pub async fn http_probe(running: &Running, headers: &HeaderMap, debug: bool) -> Response {
    let spec = &running.probe.spec;
    {
        let mut last = running.last_on_demand.lock().unwrap();
        let now = Instant::now();
        if let Some(wait) = last.map(|l| SPACING.saturating_sub(now.duration_since(l)))
            && !wait.is_zero()
        {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())],
                format!(
                    "dueslag {:?} was probed less than {}s ago\n",
                    spec.name,
                    SPACING.as_secs()
                ),
            )
                .into_response();
        }
        *last = Some(now);
    }
    // Bounded by the scrape timeout, with half a second left to answer.
    let scrape_timeout = headers
        .get(SCRAPE_TIMEOUT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(|v| Duration::from_secs_f64((v - 0.5).max(0.5)));
    let timeout = scrape_timeout.map_or(spec.timeout, |t| t.min(spec.timeout));
    let started = Instant::now();
    let mut trace = Trace::default();
    trace.ok(
        "dueslag",
        format!(
            "{} ({}), timeout {}",
            spec.name,
            spec.mode.as_str(),
            humantime::format_duration(timeout)
        ),
    );
    let ok = probe_once(
        &running.probe,
        running.afsender.as_ref(),
        timeout,
        &mut trace,
    )
    .await;
    let took = started.elapsed().as_secs_f64();
    if debug {
        let verdict = if ok { "success" } else { "failure" };
        return format!("{}probe {verdict} in {took:.3}s\n", trace.render_text()).into_response();
    }
    let body = format!(
        "# HELP probe_success Whether the on-demand probe succeeded.\n# TYPE probe_success gauge\nprobe_success {}\n\
         # HELP probe_duration_seconds How long the on-demand probe took.\n# TYPE probe_duration_seconds gauge\nprobe_duration_seconds {took}\n",
        u8::from(ok)
    );
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        body,
    )
        .into_response()
}
