//! The HTTP surface (axum): routing only. `/metrics`, the status page, `/-/healthy`,
//! `/-/ready`, `/-/reload` and `GET /probe` are answered here or by the module that owns
//! them; the push endpoint `POST /push/{dueslag}` ([`crate::receive::push`]) may be served
//! on its own listener. `--web.config.file` ([`crate::web::auth`]) guards every route of
//! the main listener except the push endpoint, whose client is the Beskedfordeler.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::diagnose;
use crate::exposition;
use crate::metrics::{Format, Metrics, VERSION};
use crate::receive;
use crate::status::{IndexQuery, render_history, render_index};
use crate::supervisor::Registry;
use crate::web::PushGate;
use crate::web::auth::{self, Guard};

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
    /// `--web.enable-lifecycle`: `POST /-/reload` answers only with it, as in Prometheus.
    pub lifecycle: bool,
    /// `[http] max_push_requests`.
    pub push_gate: PushGate,
}

/// The main router; with `with_push` it serves the push endpoint too. `guard` (the web
/// config) applies to everything but the push endpoint.
pub fn router(state: AppState, with_push: bool, guard: Option<Arc<Guard>>) -> Router {
    let r = Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .route("/dueslag/{name}", get(history))
        .route("/-/healthy", get(|| async { "Healthy\n" }))
        .route("/-/ready", get(ready))
        .route("/-/reload", post(reload).put(reload))
        .route("/probe", get(probe));
    let r = match guard {
        Some(g) => r.layer(axum::middleware::from_fn_with_state(g, auth::layer)),
        None => r,
    };
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
    let format = Format::negotiate(accept, s.metrics.protobuf());
    (
        [(header::CONTENT_TYPE, format.content_type())],
        exposition::body(s.metrics.clone(), format),
    )
        .into_response()
}

/// `GET /[?q=NAME-PART][&page=N]`: worst first, one page of [`crate::status::PAGE_SIZE`].
async fn index(State(s): State<AppState>, Query(q): Query<IndexQuery>) -> Html<String> {
    let running = s.registry.all();
    let backend = s
        .registry
        .backend()
        .map_or("none", crate::backend::backend_name);
    Html(render_index(
        running.iter().map(|r| &*r.status),
        &q,
        VERSION,
        backend,
    ))
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
    if !s.lifecycle {
        return (
            StatusCode::FORBIDDEN,
            "Lifecycle API is not enabled: start with --web.enable-lifecycle, or send SIGHUP\n",
        )
            .into_response();
    }
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

/// `GET /probe?dueslag=NAME[&debug=true]`: see [`diagnose::on_demand::http_probe`].
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
    diagnose::on_demand::http_probe(&running, &headers, q.debug).await
}
