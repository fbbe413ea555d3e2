//! The HTTP surface (axum): `/metrics`, the status page, `/-/healthy`, `/-/ready`,
//! `/-/reload`, and the push endpoint `POST /push/{dueslag}`, which may be served on its
//! own listener.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::exposition;
use crate::metrics::{Format, Metrics, VERSION};
use crate::protocol::SCRAPE_TIMEOUT_HEADER;
use crate::receive;
use crate::status::{render_history, render_index};
use crate::supervisor::Registry;
use crate::trace::Trace;

/// A reload request; the answer says whether the new configuration was applied.
pub type ReloadRequest = oneshot::Sender<Result<(), String>>;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Metrics,
    pub registry: Arc<Registry>,
    pub reload: mpsc::Sender<ReloadRequest>,
    pub ready: Arc<AtomicBool>,
    pub max_body: usize,
    /// `[exporter] probe_endpoint`: `GET /probe` sends real messages, so it is opt-in.
    pub probe_endpoint: Arc<AtomicBool>,
}

/// On-demand probes of one dueslag start at most this often.
pub const ON_DEMAND_SPACING: Duration = Duration::from_secs(5);

/// The main router; with `with_push` it serves the push endpoint too.
pub fn router(state: AppState, with_push: bool) -> Router {
    let r = Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .route("/dueslag/{name}", get(history))
        .route("/-/healthy", get(|| async { "Healthy\n" }))
        .route("/-/ready", get(ready))
        .route("/-/reload", post(reload).put(reload))
        .route("/probe", get(probe));
    let r = if with_push { r.merge(push_routes()) } else { r };
    r.with_state(state)
}

fn push_routes() -> Router<AppState> {
    Router::new().route("/push/{dueslag}", post(receive::push::handle))
}

/// The push endpoint alone, for its own listener.
pub fn push_router(state: AppState) -> Router {
    push_routes().with_state(state)
}

async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        exposition::body(s.metrics.clone(), format),
    )
        .into_response()
}

async fn index(State(s): State<AppState>) -> Html<String> {
    let snaps: Vec<_> = s
        .registry
        .all()
        .iter()
        .map(|r| r.status.snapshot())
        .collect();
    Html(render_index(&snaps, VERSION))
}

async fn history(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    match s.registry.get(&name) {
        Some(r) => Html(render_history(&r.status.snapshot())).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("no dueslag named {name:?}\n"),
        )
            .into_response(),
    }
}

async fn ready(State(s): State<AppState>) -> Response {
    if s.ready.load(Ordering::Relaxed) {
        "Ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Not ready\n").into_response()
    }
}

async fn reload(State(s): State<AppState>) -> Response {
    let (tx, rx) = oneshot::channel();
    if s.reload.send(tx).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match rx.await {
        Ok(Ok(())) => "configuration reloaded\n".into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload failed, old configuration kept: {e}\n"),
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct ProbeQuery {
    dueslag: Option<String>,
    #[serde(default)]
    debug: bool,
}

/// `GET /probe?dueslag=NAME[&debug=true]`: one on-demand Alive message on that dueslag,
/// answered blackbox-style with `probe_success` and `probe_duration_seconds`, or with the
/// step-by-step trace when `debug=true`.
async fn probe(
    State(s): State<AppState>,
    Query(q): Query<ProbeQuery>,
    headers: HeaderMap,
) -> Response {
    if !s.probe_endpoint.load(Ordering::Relaxed) {
        return (
            StatusCode::NOT_FOUND,
            "the /probe endpoint is off: it sends real messages; enable it with [exporter] probe_endpoint = true\n",
        )
            .into_response();
    }
    let Some(name) = q.dueslag else {
        return (StatusCode::BAD_REQUEST, "missing ?dueslag=NAME\n").into_response();
    };
    let Some(running) = s.registry.get(&name) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no dueslag named {name:?}\n"),
        )
            .into_response();
    };
    {
        let mut last = running.last_on_demand.lock().unwrap();
        let now = Instant::now();
        if let Some(wait) = last.map(|l| ON_DEMAND_SPACING.saturating_sub(now.duration_since(l)))
            && !wait.is_zero()
        {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())],
                format!(
                    "dueslag {name:?} was probed less than {}s ago\n",
                    ON_DEMAND_SPACING.as_secs()
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
    let timeout = scrape_timeout.map_or(running.probe.spec.timeout, |t| {
        t.min(running.probe.spec.timeout)
    });
    let started = Instant::now();
    let mut trace = Trace::default();
    trace.ok(
        "dueslag",
        format!(
            "{name} ({}), timeout {}",
            running.probe.spec.mode.as_str(),
            humantime::format_duration(timeout)
        ),
    );
    let ok = running
        .probe
        .probe_once(running.afsender.as_ref(), timeout, &mut trace)
        .await;
    let took = started.elapsed().as_secs_f64();
    if q.debug {
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
