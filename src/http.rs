//! The HTTP surface (axum): `/metrics`, the status page, `/-/healthy`, `/-/ready`,
//! `/-/reload`, and the push endpoint `POST /push/{dueslag}`, which may be served on its
//! own listener.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{mpsc, oneshot};

use crate::config::Mode;
use crate::message::{StandardRetur, build_modtag_besked_output};
use crate::metrics::{Metrics, VERSION};
use crate::outcome::{Outcome, ReceivedKind};
use crate::probe::{Envelope, Verdict};
use crate::protocol::status;
use crate::status::{render_history, render_index};
use crate::supervisor::Registry;

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
}

/// The main router; with `with_push` it serves the push endpoint too.
pub fn router(state: AppState, with_push: bool) -> Router {
    let r = Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .route("/dueslag/{name}", get(history))
        .route("/-/healthy", get(|| async { "Healthy\n" }))
        .route("/-/ready", get(ready))
        .route("/-/reload", post(reload).put(reload));
    let r = if with_push { r.merge(push_routes()) } else { r };
    r.with_state(state)
}

fn push_routes() -> Router<AppState> {
    Router::new().route("/push/{dueslag}", post(push))
}

/// The push endpoint alone, for its own listener.
pub fn push_router(state: AppState) -> Router {
    push_routes().with_state(state)
}

async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (body, ctype) = if wants_openmetrics {
        (
            s.metrics.render_openmetrics(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            s.metrics.render_text(),
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )
    };
    ([(header::CONTENT_TYPE, ctype)], body).into_response()
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

fn xml(code: StatusCode, retur: StandardRetur) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        build_modtag_besked_output(&retur),
    )
        .into_response()
}

/// BeskedFåTilsendt: answers 20 only after the Alive message is recorded; anything else
/// gets a non-20 StatusKode so the Beskedfordeler keeps the message.
async fn push(State(s): State<AppState>, Path(name): Path<String>, body: Body) -> Response {
    let Some(running) = s
        .registry
        .get(&name)
        .filter(|r| r.probe.spec.mode == Mode::Push)
    else {
        return xml(
            StatusCode::NOT_FOUND,
            StandardRetur::error(
                status::NOT_FOUND,
                format!("no push dueslag named {name:?} here"),
            ),
        );
    };
    let bytes = match to_bytes(body, s.max_body).await {
        Ok(b) => b,
        Err(e) => {
            let why = format!("body refused (limit {} bytes): {e}", s.max_body);
            running.probe.observe(Outcome::Received {
                kind: ReceivedKind::Unexpected,
                besked_id: None,
                detail: Some(why.clone()),
            });
            return xml(
                StatusCode::PAYLOAD_TOO_LARGE,
                StandardRetur::error(status::INVALID_INPUT, why),
            );
        }
    };
    match running
        .probe
        .on_arrival(&bytes, Envelope::ModtagBeskedInput)
    {
        Verdict::Take => xml(StatusCode::OK, StandardRetur::ok()),
        Verdict::Refuse(why) => xml(
            StatusCode::BAD_REQUEST,
            StandardRetur::error(status::INVALID_INPUT, why),
        ),
    }
}
