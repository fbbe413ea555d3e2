//! The pull receiver ([`run_pull`]) on paused tokio time: first on a scripted Afhent whose
//! deliveries record how they were settled, then on the simulator's queues, whose
//! RabbitMQ semantics show where held messages end up.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::*;
use crate::config::Mode;
use crate::outcome::{ConsumeFailure, Outcome, ProbeResult, ReceivedKind};
use crate::testkit::{Watch, business, pick, spec};
use crate::transport::{Delivery, PullConsumer};

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Acked,
    ToErrorQueue,
    /// Dropped unsettled: back to the queue when the consumer closes.
    Released,
}

/// One settlement: the body, how, and how many outcomes had been reported by then.
#[derive(Debug)]
struct Settlement {
    body: Bytes,
    how: Settled,
    outcomes_before: usize,
}

/// One `consume` call: when, and the feed of its consumer (`None` when it failed).
struct Opened {
    at: Instant,
    feed: Option<mpsc::UnboundedSender<Bytes>>,
}

/// Opens consumers from a script (`Err` = the call fails; once it runs out, every call
/// succeeds). The test feeds each consumer; dropping the feed ends it.
struct ScriptedAfhenter {
    script: Mutex<VecDeque<Result<(), String>>>,
    opened: mpsc::UnboundedSender<Opened>,
    settled: mpsc::UnboundedSender<Settlement>,
    watch: Arc<Watch>,
}

#[async_trait]
impl Afhenter for ScriptedAfhenter {
    async fn consume(&self, queue: &str) -> Result<Box<dyn PullConsumer>, ConsumeError> {
        assert_eq!(queue, "q");
        let at = Instant::now();
        if let Some(Err(e)) = self.script.lock().unwrap().pop_front() {
            let _ = self.opened.send(Opened { at, feed: None });
            return Err(ConsumeError::new(ConsumeFailure::QueueMissing, e));
        }
        let (feed, deliveries) = mpsc::unbounded_channel();
        let _ = self.opened.send(Opened {
            at,
            feed: Some(feed),
        });
        Ok(Box::new(FakeConsumer {
            deliveries,
            settled: self.settled.clone(),
            watch: self.watch.clone(),
        }))
    }
}

struct FakeConsumer {
    deliveries: mpsc::UnboundedReceiver<Bytes>,
    settled: mpsc::UnboundedSender<Settlement>,
    watch: Arc<Watch>,
}

#[async_trait]
impl PullConsumer for FakeConsumer {
    async fn next(&mut self) -> Option<Delivery> {
        let body = self.deliveries.recv().await?;
        Some(Delivery {
            body: body.clone(),
            handle: Box::new(FakeHandle {
                body,
                settled: self.settled.clone(),
                watch: self.watch.clone(),
                done: false,
            }),
        })
    }
}

struct FakeHandle {
    body: Bytes,
    settled: mpsc::UnboundedSender<Settlement>,
    watch: Arc<Watch>,
    done: bool,
}

impl FakeHandle {
    fn settle(&mut self, how: Settled) {
        self.done = true;
        let _ = self.settled.send(Settlement {
            body: self.body.clone(),
            how,
            outcomes_before: self.watch.outcomes().len(),
        });
    }
}

#[async_trait]
impl DeliveryHandle for FakeHandle {
    async fn ack(mut self: Box<Self>) -> Result<(), String> {
        self.settle(Settled::Acked);
        Ok(())
    }

    async fn reject_to_error_queue(mut self: Box<Self>) -> Result<(), String> {
        self.settle(Settled::ToErrorQueue);
        Ok(())
    }
}

impl Drop for FakeHandle {
    fn drop(&mut self) {
        if !self.done {
            self.settle(Settled::Released);
        }
    }
}

/// A pull receiver on a scripted Afhent.
struct Rig {
    probe: Arc<DueslagProbe>,
    watch: Arc<Watch>,
    opened: mpsc::UnboundedReceiver<Opened>,
    settled: mpsc::UnboundedReceiver<Settlement>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

fn rig(spec: crate::config::DueslagSpec, script: Vec<Result<(), String>>) -> Rig {
    let (probe, watch) = crate::testkit::probe(spec);
    let (opened_tx, opened) = mpsc::unbounded_channel();
    let (settled_tx, settled) = mpsc::unbounded_channel();
    let afhenter = Arc::new(ScriptedAfhenter {
        script: Mutex::new(script.into()),
        opened: opened_tx,
        settled: settled_tx,
        watch: watch.clone(),
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_pull(probe.clone(), afhenter, stop.clone()));
    Rig {
        probe,
        watch,
        opened,
        settled,
        stop,
        task,
    }
}

impl Rig {
    async fn feed(&mut self) -> mpsc::UnboundedSender<Bytes> {
        let o = self.opened.recv().await.expect("consume is called");
        o.feed.expect("consume succeeds")
    }

    /// An Alive message of a probe in flight.
    fn alive(&self) -> Bytes {
        let msg = self.probe.next_message();
        self.probe.begin(&msg);
        msg.body
    }

    async fn stop(mut self) -> Vec<(Bytes, Settled)> {
        self.stop.cancel();
        self.task.await.unwrap();
        let mut rest = vec![];
        while let Ok(s) = self.settled.try_recv() {
            rest.push((s.body, s.how));
        }
        rest
    }
}

fn held(outcomes: &[Outcome]) -> Vec<(usize, bool)> {
    pick(outcomes, |o| match o {
        Outcome::Held { count, paused } => Some((*count, *paused)),
        _ => None,
    })
}

fn kinds(outcomes: &[Outcome]) -> Vec<ReceivedKind> {
    pick(outcomes, |o| match o {
        Outcome::Received { kind, .. } => Some(*kind),
        _ => None,
    })
}

#[tokio::test(start_paused = true)]
async fn an_alive_message_is_acknowledged_after_its_outcome_is_recorded() {
    let mut r = rig(spec(Mode::Pull), vec![]);
    let feed = r.feed().await;
    let alive = r.alive();
    feed.send(alive.clone()).unwrap();
    let s = r.settled.recv().await.unwrap();
    assert_eq!((&s.body, s.how), (&alive, Settled::Acked));
    let outcomes = r.watch.outcomes();
    // Attempt and Inflight(1) from the probe, then Finished, Received and Inflight(0).
    assert_eq!(s.outcomes_before, 5, "{outcomes:?}");
    assert!(matches!(
        outcomes[2],
        Outcome::Finished {
            result: ProbeResult::Success { .. },
            ..
        }
    ));
    assert_eq!(kinds(&outcomes), [ReceivedKind::Matched]);
    assert_eq!(r.stop().await, []);
}

#[tokio::test(start_paused = true)]
async fn business_messages_are_held_never_acknowledged_and_alive_keeps_flowing() {
    let mut r = rig(spec(Mode::Pull), vec![]);
    let feed = r.feed().await;
    let (b1, b2) = (business(), business());
    let alive = r.alive();
    for m in [&b1, &b2, &alive] {
        feed.send(m.clone()).unwrap();
    }
    let s = r.settled.recv().await.unwrap();
    assert_eq!((s.body, s.how), (alive, Settled::Acked));
    assert_eq!(
        kinds(&r.watch.outcomes()),
        [
            ReceivedKind::Unexpected,
            ReceivedKind::Unexpected,
            ReceivedKind::Matched
        ]
    );
    // Held as long as the consumer runs, however long that is.
    assert!(
        r.watch
            .none_within(Duration::from_secs(3600), |_| true)
            .await
    );
    assert!(r.settled.try_recv().is_err(), "a held message was settled");
    // Stopping closes the consumer: the held messages go back, unacknowledged.
    let watch = r.watch.clone();
    let rest = r.stop().await;
    assert_eq!(rest, [(b1, Settled::Released), (b2, Settled::Released)]);
    assert_eq!(
        held(&watch.outcomes()),
        [(1, false), (2, false), (0, false)]
    );
}

#[tokio::test(start_paused = true)]
async fn above_max_held_the_dueslag_stops_consuming() {
    let mut r = rig(spec(Mode::Pull), vec![]);
    let feed = r.feed().await;
    let business: Vec<Bytes> = (0..3).map(|_| business()).collect();
    for b in &business {
        feed.send(b.clone()).unwrap();
    }
    r.watch
        .next(|o| matches!(o, Outcome::Held { paused: true, .. }))
        .await;
    // Paused: an Alive message behind them is not taken, however long it waits.
    feed.send(r.alive()).unwrap();
    assert!(
        r.watch
            .none_within(Duration::from_secs(3600), |o| matches!(
                o,
                Outcome::Received { .. }
            ))
            .await
    );
    let watch = r.watch.clone();
    let rest = r.stop().await;
    // The three go back unacknowledged; the Alive message was never delivered.
    let released: Vec<(Bytes, Settled)> = business
        .into_iter()
        .map(|b| (b, Settled::Released))
        .collect();
    assert_eq!(rest, released);
    assert_eq!(
        held(&watch.outcomes()),
        [(1, false), (2, false), (3, true), (0, false)]
    );
}

#[tokio::test(start_paused = true)]
async fn error_queue_mode_dead_letters_business_messages_without_acknowledging() {
    let mut s = spec(Mode::Pull);
    s.unexpected = crate::config::Unexpected::ErrorQueue;
    let mut r = rig(s, vec![]);
    let feed = r.feed().await;
    let b = business();
    let alive = r.alive();
    feed.send(b.clone()).unwrap();
    feed.send(alive.clone()).unwrap();
    let first = r.settled.recv().await.unwrap();
    let second = r.settled.recv().await.unwrap();
    assert_eq!(
        [(first.body, first.how), (second.body, second.how)],
        [(b, Settled::ToErrorQueue), (alive, Settled::Acked)]
    );
    let watch = r.watch.clone();
    assert_eq!(r.stop().await, []);
    // Nothing was held; closing reports the empty hold.
    assert_eq!(held(&watch.outcomes()), [(0, false)]);
}

#[tokio::test(start_paused = true)]
async fn the_probe_interval_caps_the_reconnect_delay() {
    let refused = || Err("NOT_FOUND - no queue 'q'".to_string());
    let mut s = spec(Mode::Pull);
    s.interval = Duration::from_secs(1);
    let mut r = rig(s, vec![refused(), refused(), refused(), refused(), Ok(())]);
    let t0 = Instant::now();
    let mut calls = vec![];
    loop {
        let o = r.opened.recv().await.unwrap();
        calls.push(o.at - t0);
        if o.feed.is_some() {
            break;
        }
    }
    let ms = |v: u64| Duration::from_millis(v);
    // 500 ms, then the 1 s interval: a queue back is consumed within one interval.
    assert_eq!(calls, [ms(0), ms(500), ms(1500), ms(2500), ms(3500)]);
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn reconnects_with_backoff_and_at_once_after_a_stable_consumer_ends() {
    let refused = || Err("NOT_FOUND - no queue 'q'".to_string());
    let mut r = rig(
        spec(Mode::Pull),
        vec![refused(), refused(), Ok(()), refused(), Ok(()), Ok(())],
    );
    let t0 = Instant::now();
    let mut calls = vec![];
    let feed = loop {
        let o = r.opened.recv().await.unwrap();
        calls.push(o.at - t0);
        if let Some(f) = o.feed {
            break f;
        }
    };
    // A held message on the consumer that ends goes back when it ends.
    let b = business();
    feed.send(b.clone()).unwrap();
    r.watch
        .next(|o| matches!(o, Outcome::Held { count: 1, .. }))
        .await;
    // Virtual time (paused): the consumer has run long enough to count as stable.
    tokio::time::sleep(STABLE).await;
    drop(feed);
    let s = r.settled.recv().await.unwrap();
    assert_eq!((s.body, s.how), (b, Settled::Released));
    calls.push(r.opened.recv().await.unwrap().at - t0);
    // This consumer ends at once: a failed attempt, so the backoff goes on.
    let o = r.opened.recv().await.unwrap();
    let _ = o.feed.expect("consume succeeds");
    calls.push(o.at - t0);
    let last = r.opened.recv().await.unwrap();
    calls.push(last.at - t0);
    let ms = |v: u64| Duration::from_millis(v);
    // 500 ms doubling while it fails; at once when a stable consumer ends, and the
    // backoff starts over; after a consumer that ended at once, the next delay.
    assert_eq!(
        calls,
        [ms(0), ms(500), ms(1500), ms(11_500), ms(12_000), ms(13_000)]
    );
    let watch = r.watch.clone();
    r.stop().await;
    drop(last);
    let outcomes = watch.outcomes();
    assert_eq!(
        held(&outcomes),
        [(1, false), (0, false), (0, false), (0, false)]
    );
    // Every failed consume and every consumer that ended counted, with its reason.
    let failures = pick(&outcomes, |o| match o {
        Outcome::ConsumeFailed { reason, .. } => Some(*reason),
        _ => None,
    });
    use ConsumeFailure::*;
    assert_eq!(
        failures,
        [
            QueueMissing,
            QueueMissing,
            Connection,
            QueueMissing,
            Connection
        ]
    );
}

/// The receiver and the probe loop on the simulator's queues, with a delivery delay on
/// the simulator's timer driven by tokio's paused clock.
mod on_the_simulator {
    use super::*;
    use crate::config::Unexpected;
    use crate::probe;
    use crate::sim::queue::SimQueue;
    use crate::sim::timer::DeliveryTimer;
    use crate::sim::{self, LocalSink, Simulator};
    use crate::transport::sim::{SimAfhenter, SimAfsender};

    const DELAY: Duration = Duration::from_millis(20);

    struct Rig {
        queue: Arc<SimQueue>,
        watch: Arc<Watch>,
        stop_send: CancellationToken,
        stop_recv: CancellationToken,
        tasks: Vec<JoinHandle<()>>,
    }

    fn rig(unexpected: Unexpected) -> Rig {
        let mut spec = spec(Mode::Pull);
        spec.interval = Duration::from_millis(50);
        spec.timeout = Duration::from_secs(1);
        spec.unexpected = unexpected;
        let stop = CancellationToken::new();
        let sink = LocalSink::new(stop.clone());
        let simulator = Simulator::with_timer(sink.clone(), stop, DeliveryTimer::tokio());
        let sim_config = crate::config::SimConfig {
            faults: [(
                spec.name.clone(),
                crate::config::Faults {
                    delay: DELAY,
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        };
        simulator.set_topology(sim::targets(
            std::slice::from_ref(&spec),
            &sim_config,
            "http://unused",
            &crate::message::UnikId::Urn(crate::protocol::DUESLAG_OBJEKT_TYPE.into()),
        ));
        let (probe, watch) = crate::testkit::probe(spec);
        let (stop_send, stop_recv) = (CancellationToken::new(), CancellationToken::new());
        let tasks = vec![
            tokio::spawn(probe::run(
                probe.clone(),
                Arc::new(SimAfsender {
                    sim: simulator.clone(),
                }),
                stop_send.clone(),
            )),
            tokio::spawn(run_pull(
                probe,
                Arc::new(SimAfhenter {
                    sim: simulator,
                    sink: sink.clone(),
                    prefetch: 10,
                }),
                stop_recv.clone(),
            )),
        ];
        Rig {
            queue: sink.queue("q"),
            watch,
            stop_send,
            stop_recv,
            tasks,
        }
    }

    impl Rig {
        /// Stops as the supervisor does: the loop first (it waits for its probes), then
        /// the receiver.
        async fn stop(self) {
            self.stop_send.cancel();
            let mut tasks = self.tasks.into_iter();
            tasks.next().unwrap().await.unwrap();
            self.stop_recv.cancel();
            tasks.next().unwrap().await.unwrap();
        }
    }

    fn is_alive(m: &Bytes) -> bool {
        crate::message::parse_haendelsesbesked(m).is_ok_and(|h| h.is_alive())
    }

    fn success(o: &Outcome) -> bool {
        matches!(
            o,
            Outcome::Finished {
                result: ProbeResult::Success { .. },
                ..
            }
        )
    }

    #[tokio::test(start_paused = true)]
    async fn held_business_messages_stay_in_the_queue_and_alive_keeps_flowing() {
        let r = rig(Unexpected::Hold);
        let (b1, b2) = (business(), business());
        r.queue.publish(b1.clone());
        r.queue.publish(b2.clone());
        for _ in 0..3 {
            let (_, o) = r.watch.next(success).await;
            let Outcome::Finished {
                result: ProbeResult::Success { roundtrip },
                ..
            } = o
            else {
                unreachable!()
            };
            // Exactly the simulator's delay: its timer runs on the same (paused) clock.
            assert_eq!(roundtrip, DELAY);
        }
        let outcomes = r.watch.outcomes();
        assert_eq!(
            kinds(&outcomes)[..2],
            [ReceivedKind::Unexpected, ReceivedKind::Unexpected]
        );
        assert_eq!(held(&outcomes), [(1, false), (2, false)]);
        assert_eq!(r.queue.unacked(), 2, "both are held unacknowledged");
        let queue = r.queue.clone();
        r.stop().await;
        // Closed: the held messages are back in the queue, untouched, in order.
        assert_eq!(queue.ready(), vec![b1, b2]);
        assert!(queue.error_queue().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn too_many_held_messages_pause_the_dueslag_and_probes_time_out() {
        let r = rig(Unexpected::Hold);
        let business: Vec<Bytes> = (0..3).map(|_| business()).collect();
        for b in &business {
            r.queue.publish(b.clone());
        }
        r.watch
            .next(|o| {
                *o == Outcome::Held {
                    count: 3,
                    paused: true,
                }
            })
            .await;
        assert_eq!(r.queue.unacked(), 3);
        // Nothing is taken any more: the next probe times out.
        r.watch
            .next(|o| {
                matches!(
                    o,
                    Outcome::Finished {
                        result: ProbeResult::Timeout,
                        ..
                    }
                )
            })
            .await;
        assert!(!r.watch.outcomes().iter().any(success));
        let queue = r.queue.clone();
        r.stop().await;
        // The three are back at the head, the Alive messages that piled up behind them.
        let ready = queue.ready();
        assert_eq!(ready[..3], business[..]);
        assert!(
            ready.len() > 3 && ready[3..].iter().all(is_alive),
            "{ready:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn error_queue_mode_dead_letters_without_acknowledging() {
        let r = rig(Unexpected::ErrorQueue);
        let b = business();
        r.queue.publish(b.clone());
        // The consumer takes messages in order: by a round trip, the business one is settled.
        r.watch.next(success).await;
        assert_eq!(r.queue.error_queue(), vec![b]);
        assert_eq!(r.queue.unacked(), 0);
        let queue = r.queue.clone();
        r.stop().await;
        assert!(queue.ready().is_empty());
    }
}
