//! Push delivery as the Beskedfordeler does it: POST a ModtagBeskedInput to the endpoint
//! registered for the dueslag, and deliver it again later unless the answer is a
//! ModtagBeskedOutput with StatusKode 20.

use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::message::{build_modtag_besked_input, parse_modtag_besked_output};
use crate::protocol::status;

/// Redelivery schedule: the first retry after `first`, doubling up to `max`, at most
/// `attempts` deliveries in all.
#[derive(Debug, Clone, Copy)]
pub struct Redelivery {
    pub first: Duration,
    pub max: Duration,
    pub attempts: u32,
}

impl Default for Redelivery {
    fn default() -> Self {
        Redelivery {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
            attempts: 10,
        }
    }
}

/// What one POST got back.
#[derive(Debug, Clone, PartialEq)]
pub enum PushAnswer {
    Taken,
    Refused {
        http: u16,
        status_kode: Option<i32>,
        text: String,
    },
    Failed(String),
}

/// POSTs a Haendelsesbesked once.
pub async fn post_once(client: &reqwest::Client, url: &str, haendelsesbesked: &[u8]) -> PushAnswer {
    let body = build_modtag_besked_input(&String::from_utf8_lossy(haendelsesbesked));
    let resp = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/xml")
        .body(body)
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return PushAnswer::Failed(e.to_string()),
    };
    let http = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    match parse_modtag_besked_output(&bytes) {
        Ok(r) if r.status_kode == status::OK && http < 300 => PushAnswer::Taken,
        Ok(r) => PushAnswer::Refused {
            http,
            status_kode: Some(r.status_kode),
            text: r.fejlbesked_tekst.unwrap_or_default(),
        },
        Err(e) => PushAnswer::Refused {
            http,
            status_kode: None,
            text: format!("unreadable answer: {e}"),
        },
    }
}

/// POSTs until the receiver takes the message, the schedule ends, or `stop` fires.
/// Returns the last answer.
pub async fn deliver(
    client: reqwest::Client,
    url: String,
    body: Bytes,
    schedule: Redelivery,
    stop: CancellationToken,
) -> PushAnswer {
    let mut wait = schedule.first;
    let mut answer = PushAnswer::Failed("not attempted".into());
    for attempt in 1..=schedule.attempts.max(1) {
        answer = post_once(&client, &url, &body).await;
        if answer == PushAnswer::Taken {
            return answer;
        }
        tracing::debug!(
            url,
            attempt,
            ?answer,
            "push not taken; the message will be delivered again"
        );
        if attempt == schedule.attempts {
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(schedule.max);
    }
    tracing::warn!(url, ?answer, "push delivery given up");
    answer
}
