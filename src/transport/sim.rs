//! The `sim` backend: [`Afsender`] and [`Afhenter`] over the in-process simulator.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::{
    Afhenter, Afsender, AttemptError, ConsumeError, Delivery, DeliveryHandle, Outgoing,
    PullConsumer,
};
use crate::message::{StandardRetur, parse_afsend_reply};
use crate::sim::queue::{SimConsumer, SimDelivery};
use crate::sim::{AfsendAnswer, LocalSink, Simulator};

/// Sends into the simulator.
pub struct SimAfsender {
    pub sim: Arc<Simulator>,
}

#[async_trait]
impl Afsender for SimAfsender {
    async fn publish(
        &self,
        msg: &Outgoing,
        _correlation_id: Uuid,
        timeout: Duration,
    ) -> Result<StandardRetur, AttemptError> {
        match self.sim.afsend(&msg.body) {
            AfsendAnswer::Reply(body) => {
                parse_afsend_reply(&body).map_err(AttemptError::InvalidReply)
            }
            AfsendAnswer::Delayed(body, after) if after < timeout => {
                tokio::time::sleep(after).await;
                parse_afsend_reply(&body).map_err(AttemptError::InvalidReply)
            }
            AfsendAnswer::Outage => Err(AttemptError::Connection("simulated outage".into())),
            AfsendAnswer::Unroutable => Err(AttemptError::Unroutable),
            AfsendAnswer::NoReply | AfsendAnswer::Delayed(..) => {
                tokio::time::sleep(timeout).await;
                Err(AttemptError::Timeout)
            }
        }
    }

    async fn renew_token(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Consumes the simulator's queues.
pub struct SimAfhenter {
    pub sim: Arc<Simulator>,
    pub sink: Arc<LocalSink>,
    pub prefetch: usize,
}

#[async_trait]
impl Afhenter for SimAfhenter {
    async fn consume(&self, queue: &str) -> Result<Box<dyn PullConsumer>, ConsumeError> {
        let dueslag = self.sim.dueslag_of_queue(queue).unwrap_or_default();
        if self.sim.in_outage(&dueslag) {
            return Err(ConsumeError::connection("simulated outage"));
        }
        Ok(Box::new(SimPull {
            consumer: self.sink.queue(queue).consume(self.prefetch),
            outages: self.sim.has_outages(&dueslag),
            sim: self.sim.clone(),
            dueslag,
        }))
    }
}

struct SimPull {
    consumer: SimConsumer,
    /// Whether the dueslag has outage windows (its faults change only with a restart).
    outages: bool,
    sim: Arc<Simulator>,
    dueslag: String,
}

#[async_trait]
impl PullConsumer for SimPull {
    async fn next(&mut self) -> Option<Delivery> {
        // An outage closes the channel: checked on every delivery and once a second, only
        // for dueslag that have outage windows (10,000 idle dueslag would otherwise wake
        // 10,000 times a second).
        if !self.outages {
            let d = self.consumer.next().await;
            return Some(Delivery {
                body: d.body.clone(),
                handle: Box::new(SimHandle(d)),
            });
        }
        loop {
            if self.sim.in_outage(&self.dueslag) {
                return None;
            }
            tokio::select! {
                d = self.consumer.next() => {
                    if self.sim.in_outage(&self.dueslag) {
                        return None; // the undelivered message returns with the consumer
                    }
                    return Some(Delivery { body: d.body.clone(), handle: Box::new(SimHandle(d)) });
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

struct SimHandle(SimDelivery);

#[async_trait]
impl DeliveryHandle for SimHandle {
    async fn ack(self: Box<Self>) -> Result<(), String> {
        self.0
            .ack()
            .then_some(())
            .ok_or_else(|| "delivery tag unknown".into())
    }

    async fn reject_to_error_queue(self: Box<Self>) -> Result<(), String> {
        self.0
            .reject_to_error_queue()
            .then_some(())
            .ok_or_else(|| "delivery tag unknown".into())
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::AbonnementKind;
    use crate::config::{Faults, Mode};
    use crate::message::{AliveSpec, ProbePayload, RelateretObjekt, UnikId, build_alive};
    use crate::sim::{Abonnement, Target};

    /// An Afsend attempt of dueslag `d` on a simulator whose `d` answers `reply_delay` late.
    async fn attempt(
        reply_delay: Duration,
        timeout: Duration,
    ) -> Result<StandardRetur, AttemptError> {
        let stop = CancellationToken::new();
        let sink = LocalSink::new(stop.clone());
        let sim = Simulator::new(sink, stop.clone());
        let address = RelateretObjekt::dueslag(Uuid::from_u128(0xd), &UnikId::Urn("urn:t".into()));
        let target = Target {
            name: "d".into(),
            mode: Mode::Pull,
            queue: Some("q".into()),
            push_url: None,
            abonnement: Abonnement::alive(AbonnementKind::RelateretObjekt, Some(&address)),
            address: Some(address.clone()),
        };
        sim.set_topology(vec![(
            target,
            Faults {
                reply_delay,
                ..Faults::default()
            },
        )]);
        let payload = ProbePayload {
            instance: "i".into(),
            run: Uuid::new_v4(),
            dueslag: "d".into(),
            sequence: 1,
            sent_at: SystemTime::now(),
        };
        let besked_id = Uuid::new_v4();
        let body = build_alive(&AliveSpec {
            besked_id,
            anvendersystem: Uuid::new_v4(),
            cvr: "29189846",
            relateret_objekt: &address,
            payload: &payload,
        });
        let msg = Outgoing {
            transaction_id: Uuid::new_v4(),
            besked_id,
            dueslag: "d".into(),
            body: body.into(),
        };
        let r = SimAfsender { sim }
            .publish(&msg, Uuid::new_v4(), timeout)
            .await;
        stop.cancel();
        r
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reply_comes_late_or_times_out() {
        let (delay, timeout) = (Duration::from_millis(300), Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(attempt(delay, timeout).await, Ok(StandardRetur::ok()));
        assert!(start.elapsed() >= delay, "{:?}", start.elapsed());

        let start = Instant::now();
        assert_eq!(
            attempt(Duration::from_secs(2), timeout).await,
            Err(AttemptError::Timeout)
        );
        assert!(start.elapsed() >= timeout && start.elapsed() < Duration::from_secs(2));
    }
}
