//! The push receiver (BeskedFåTilsendt): the Beskedfordeler POSTs a ModtagBeskedInput to
//! `/push/{dueslag}`; the answer is a ModtagBeskedOutput whose StandardRetur is 20 only
//! after the Alive message is recorded. Anything else gets a non-20 StatusKode, so the
//! Beskedfordeler keeps the message and nothing is swallowed.

use axum::body::{Body, to_bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::config::Mode;
use crate::http::AppState;
use crate::message::{StandardRetur, build_modtag_besked_output};
use crate::outcome::{Outcome, ReceivedKind};
use crate::probe::{Envelope, Verdict};
use crate::protocol::status;

fn xml(code: StatusCode, retur: StandardRetur) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        build_modtag_besked_output(&retur),
    )
        .into_response()
}

/// `answer`, telling the client that the connection closes after it: the rest of a body
/// over `max_body` is left unread, so the server closes the connection, and a client that
/// reused it for its next POST would lose that one.
fn closing(mut answer: Response) -> Response {
    answer.headers_mut().insert(
        header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    answer
}

/// BeskedFåTilsendt: answers 20 only after the Alive message is recorded; anything else
/// gets a non-20 StatusKode so the Beskedfordeler keeps the message.
pub async fn handle(State(s): State<AppState>, Path(name): Path<String>, body: Body) -> Response {
    let Some(running) = s
        .registry
        .get(&name)
        .filter(|r| r.probe.spec.mode == Mode::Push)
    else {
        // The body first (up to the limit): a client still sending it would otherwise see
        // the connection close under it instead of reading the answer.
        let read = to_bytes(body, s.max_body).await;
        let answer = xml(
            StatusCode::NOT_FOUND,
            StandardRetur::error(
                status::NOT_FOUND,
                format!("no push dueslag named {name:?} here"),
            ),
        );
        return if read.is_ok() {
            answer
        } else {
            closing(answer)
        };
    };
    // A bounded number read and parse at once; the Beskedfordeler delivers a 503 again.
    let Some(_slot) = s.push_gate.enter().await else {
        return xml(
            StatusCode::SERVICE_UNAVAILABLE,
            StandardRetur::error(
                status::INVALID_INPUT,
                "busy: too many push requests at once; deliver again",
            ),
        );
    };
    let bytes = match to_bytes(body, s.max_body).await {
        Ok(b) => b,
        // A slow client, counted as such; nothing arrived.
        Err(e) if crate::web::is_body_timeout(&e) => {
            return xml(
                StatusCode::REQUEST_TIMEOUT,
                StandardRetur::error(status::INVALID_INPUT, e.to_string()),
            );
        }
        Err(e) => {
            let why = format!("body refused (limit {} bytes): {e}", s.max_body);
            running.probe.observe(Outcome::Received {
                kind: ReceivedKind::Unexpected,
                besked_id: None,
                detail: Some(why.clone()),
            });
            return closing(xml(
                StatusCode::PAYLOAD_TOO_LARGE,
                StandardRetur::error(status::INVALID_INPUT, why),
            ));
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
