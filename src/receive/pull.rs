//! The pull receiver of one dueslag: consume, classify, settle, and reconnect with backoff.
//!
//! An Alive message is acknowledged only after its outcome is recorded. Anything else is
//! never acknowledged (ARCHITECTURE.md §4): with `unexpected = "hold"` it stays unacknowledged, so
//! the Alive messages behind it keep flowing within the prefetch window, and it returns to
//! the queue when the consumer closes; above `max_held` the dueslag stops consuming and
//! says so (`bfo_alive_consumer_paused`). With `"error-queue"` it is nacked without
//! requeue, and the broker dead-letters it to the dueslag's error queue.
//!
//! When the connection under the consumer is replaced (`[broker] max_connection_age`), the
//! receiver opens a consumer on the new connection before it closes the old one, so the
//! queue always has a consumer.
//!
//! **Failures** (no connection, the queue missing, a refusal, the broker cancelling the
//! consumer) are each logged with what the broker said and counted as an
//! [`Outcome::ConsumeFailed`] (`bfo_alive_consume_failures_total{reason}`), then retried
//! with the reconnect backoff (0.5 s doubling to 30 s). A consumer that ran for at least
//! [`STABLE`] and then ended is replaced at once with the backoff started over; one that
//! ends sooner counts as a failed attempt, so a queue whose consumer the broker ends at
//! once is retried at a falling rate, never in a loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::Unexpected;
use crate::outcome::Outcome;
use crate::probe::{DueslagProbe, Envelope, Verdict};
use crate::transport::{Afhenter, ConsumeError, DeliveryHandle, PullConsumer};

/// How long a consumer must have run for its end to be replaced at once (module doc).
pub const STABLE: Duration = Duration::from_secs(10);

/// Logs and counts one consume failure.
fn failed(probe: &DueslagProbe, queue: &str, e: ConsumeError, retry_in: Option<Duration>) {
    let reason = e.reason.as_str();
    match retry_in {
        Some(retry_in) => {
            tracing::warn!(dueslag = %probe.spec.name, queue, reason, error = %e.detail, retry_in = ?retry_in, "cannot consume")
        }
        None => {
            tracing::warn!(dueslag = %probe.spec.name, queue, reason, error = %e.detail, "consumer ended; consuming again")
        }
    }
    probe.observe(Outcome::ConsumeFailed {
        reason: e.reason,
        detail: e.detail,
    });
}

/// Consumes the dueslag's queue until `stop`.
pub async fn run_pull(
    probe: Arc<DueslagProbe>,
    afhenter: Arc<dyn Afhenter>,
    stop: CancellationToken,
) {
    let queue = probe.spec.queue.clone().unwrap_or_default();
    let mut backoff = Backoff::reconnect_within(probe.spec.interval);
    // A consumer already open on a newer connection: the next one to read (make before
    // break, when the link replaced its connection).
    let mut ready: Option<Box<dyn PullConsumer>> = None;
    while !stop.is_cancelled() {
        let mut consumer = match ready.take() {
            Some(c) => c,
            None => {
                let consumer = tokio::select! {
                    _ = stop.cancelled() => return,
                    c = afhenter.consume(&queue) => c,
                };
                match consumer {
                    Ok(c) => {
                        tracing::info!(dueslag = %probe.spec.name, queue, "consuming");
                        c
                    }
                    Err(e) => {
                        failed(&probe, &queue, e, Some(backoff.current()));
                        if !backoff.wait(&stop).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        let opened = Instant::now();
        let mut moved = consumer.moved();
        // Set when the consumer ended by itself (not stopped, not moved).
        let mut ended = None;
        let mut held: Vec<Box<dyn DeliveryHandle>> = Vec::new();
        let mut paused = false;
        loop {
            let delivery = tokio::select! {
                _ = stop.cancelled() => break,
                _ = &mut moved => {
                    // The new consumer first; the old channel closes below, and what it
                    // held returns to the queue for the new one.
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        c = afhenter.consume(&queue) => match c {
                            Ok(c) => {
                                tracing::debug!(dueslag = %probe.spec.name, queue, "consuming on the new connection");
                                ready = Some(c);
                            }
                            Err(e) => {
                                tracing::warn!(dueslag = %probe.spec.name, queue, error = %e, "cannot consume on the new connection; reconnecting");
                            }
                        },
                    }
                    break;
                }
                // Paused: only stop is awaited; held messages stay unacknowledged meanwhile.
                d = consumer.next(), if !paused => d,
            };
            let Some(d) = delivery else {
                ended = Some(consumer.ended());
                break;
            };
            match probe.on_arrival(&d.body, Envelope::Haendelsesbesked) {
                Verdict::Take => {
                    if let Err(e) = d.handle.ack().await {
                        tracing::warn!(dueslag = %probe.spec.name, error = %e, "ack failed");
                    }
                }
                Verdict::Refuse(_) => match probe.spec.unexpected {
                    Unexpected::ErrorQueue => {
                        if let Err(e) = d.handle.reject_to_error_queue().await {
                            tracing::warn!(dueslag = %probe.spec.name, error = %e, "nack to the error queue failed");
                        }
                    }
                    Unexpected::Hold => {
                        held.push(d.handle);
                        paused = held.len() > probe.spec.max_held;
                        if paused {
                            tracing::error!(
                                dueslag = %probe.spec.name,
                                queue,
                                held = held.len(),
                                "too many non-Alive messages held: this dueslag is evidently not dedicated to Alive; \
                                 stopped consuming it (the messages stay in the broker)"
                            );
                        }
                        probe.held(held.len(), paused);
                    }
                },
            }
        }
        // Closing the consumer returns held messages to the queue.
        drop(held);
        drop(consumer);
        probe.held(0, false);
        if let Some(e) = ended {
            if opened.elapsed() >= STABLE {
                backoff.reset();
                failed(&probe, &queue, e, None);
            } else {
                failed(&probe, &queue, e, Some(backoff.current()));
                if !backoff.wait(&stop).await {
                    return;
                }
            }
        } else if ready.is_some() {
            backoff.reset();
        }
    }
}

#[cfg(test)]
#[path = "pull_tests.rs"]
mod tests;
