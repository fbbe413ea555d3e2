//! An in-process dueslag queue with RabbitMQ's delivery semantics: per-consumer prefetch,
//! manual ack, nack to a dead-letter error queue, and every unacknowledged message back
//! at the head of the queue when its consumer goes away.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    ready: VecDeque<Bytes>,
    /// delivery tag → (consumer id, message), in delivery order.
    unacked: BTreeMap<u64, (u64, Bytes)>,
    error_queue: Vec<Bytes>,
    next_tag: u64,
    next_consumer: u64,
}

/// One queue.
#[derive(Default)]
pub struct SimQueue {
    state: Mutex<State>,
    notify: Notify,
}

impl SimQueue {
    #[cfg(test)]
    pub fn new() -> Arc<Self> {
        Arc::new(SimQueue::default())
    }

    /// Appends a message.
    pub fn publish(&self, body: Bytes) {
        self.state.lock().unwrap().ready.push_back(body);
        self.notify.notify_waiters();
    }

    #[cfg(test)]
    /// Messages waiting to be delivered.
    pub fn ready(&self) -> Vec<Bytes> {
        self.state.lock().unwrap().ready.iter().cloned().collect()
    }

    #[cfg(test)]
    /// Messages delivered and not yet settled.
    pub fn unacked(&self) -> usize {
        self.state.lock().unwrap().unacked.len()
    }

    #[cfg(test)]
    /// Messages dead-lettered by `nack(requeue=false)`.
    pub fn error_queue(&self) -> Vec<Bytes> {
        self.state.lock().unwrap().error_queue.clone()
    }

    /// Starts a consumer that may hold up to `prefetch` unacknowledged messages.
    pub fn consume(self: &Arc<Self>, prefetch: usize) -> SimConsumer {
        let mut s = self.state.lock().unwrap();
        s.next_consumer += 1;
        SimConsumer {
            queue: self.clone(),
            id: s.next_consumer,
            prefetch: prefetch.max(1),
        }
    }

    fn settle(&self, tag: u64, to_error_queue: bool) -> bool {
        let mut s = self.state.lock().unwrap();
        let Some((_, body)) = s.unacked.remove(&tag) else {
            return false;
        };
        if to_error_queue {
            s.error_queue.push(body);
        }
        drop(s);
        self.notify.notify_waiters();
        true
    }
}

/// A consumer on a [`SimQueue`].
pub struct SimConsumer {
    queue: Arc<SimQueue>,
    id: u64,
    prefetch: usize,
}

/// A delivered message: settle it through the tag.
pub struct SimDelivery {
    pub body: Bytes,
    pub tag: u64,
    pub queue: Arc<SimQueue>,
}

impl SimDelivery {
    pub fn ack(&self) -> bool {
        self.queue.settle(self.tag, false)
    }

    pub fn reject_to_error_queue(&self) -> bool {
        self.queue.settle(self.tag, true)
    }
}

impl SimConsumer {
    /// Waits for the next message within the prefetch window.
    pub async fn next(&mut self) -> SimDelivery {
        loop {
            let notified = self.queue.notify.notified();
            {
                let mut s = self.queue.state.lock().unwrap();
                let mine = s.unacked.values().filter(|(c, _)| *c == self.id).count();
                if mine < self.prefetch
                    && let Some(body) = s.ready.pop_front()
                {
                    s.next_tag += 1;
                    let tag = s.next_tag;
                    s.unacked.insert(tag, (self.id, body.clone()));
                    return SimDelivery {
                        body,
                        tag,
                        queue: self.queue.clone(),
                    };
                }
            }
            notified.await;
        }
    }
}

impl Drop for SimConsumer {
    fn drop(&mut self) {
        let mut s = self.queue.state.lock().unwrap();
        let mine: Vec<u64> = s
            .unacked
            .iter()
            .filter(|(_, (c, _))| *c == self.id)
            .map(|(t, _)| *t)
            .collect();
        // Back to the head of the queue, in their original order.
        for tag in mine.into_iter().rev() {
            if let Some((_, body)) = s.unacked.remove(&tag) {
                s.ready.push_front(body);
            }
        }
        drop(s);
        self.queue.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefetch_ack_requeue_and_error_queue() {
        let q = SimQueue::new();
        for b in ["a", "b", "c"] {
            q.publish(Bytes::from(b));
        }
        let mut c = q.consume(2);
        let a = c.next().await;
        let b = c.next().await;
        // Prefetch 2 reached: nothing more until one is settled.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), c.next())
                .await
                .is_err()
        );
        assert!(b.ack());
        let third = c.next().await;
        assert_eq!(third.body, "c");
        assert!(third.reject_to_error_queue());
        assert_eq!(q.error_queue(), vec![Bytes::from("c")]);
        // "a" is held; when the consumer goes away it is back at the head.
        assert_eq!(q.unacked(), 1);
        drop(c);
        assert_eq!(q.ready(), vec![Bytes::from("a")]);
        assert!(!a.ack(), "a settled tag of a dead consumer is gone");
    }
}
