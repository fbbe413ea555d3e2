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

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::Unexpected;
use crate::probe::{DueslagProbe, Envelope, Verdict};
use crate::transport::{Afhenter, DeliveryHandle, PullConsumer};

/// Consumes the dueslag's queue until `stop`.
pub async fn run_pull(
    probe: Arc<DueslagProbe>,
    afhenter: Arc<dyn Afhenter>,
    stop: CancellationToken,
) {
    let queue = probe.spec.queue.clone().unwrap_or_default();
    let mut backoff = Backoff::reconnect();
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
                        tracing::warn!(dueslag = %probe.spec.name, queue, error = %e, retry_in = ?backoff.current(), "cannot consume");
                        if !backoff.wait(&stop).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        backoff.reset();
        let mut moved = consumer.moved();
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
                tracing::warn!(dueslag = %probe.spec.name, queue, "consumer ended; reconnecting");
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
    }
}

#[cfg(test)]
#[path = "pull_tests.rs"]
mod tests;
