//! The send loop ([`run`]) on paused tokio time, with a scripted Afsend: when probes go out,
//! when they time out, how send failures are reported, and what a graceful stop waits for.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::*;
use crate::config::Mode;
use crate::message::StandardRetur;
use crate::outcome::{ProbeResult, SendFailure};
use crate::testkit::{Watch, pick, plain, spec, until};
use crate::transport::AttemptError;

type Answer = Result<StandardRetur, AttemptError>;

/// How the scripted Afsend answers one attempt.
enum Reply {
    Now(Answer),
    /// Never: the attempt times out after the send timeout, as a real one would.
    Never,
    /// When the test sends the answer (a timeout if it does not in time).
    Later(oneshot::Receiver<Answer>),
}

/// One attempt as the Afsend saw it.
struct Published {
    at: Instant,
    msg: Outgoing,
}

/// Answers attempts from a script, in order; once it runs out, with StatusKode 20.
struct ScriptedAfsender {
    script: Mutex<VecDeque<Reply>>,
    published: mpsc::UnboundedSender<Published>,
    renewals: AtomicU32,
}

#[async_trait]
impl Afsender for ScriptedAfsender {
    async fn publish(&self, msg: &Outgoing, _: Uuid, timeout: Duration) -> Answer {
        let _ = self.published.send(Published {
            at: Instant::now(),
            msg: msg.clone(),
        });
        let reply = self.script.lock().unwrap().pop_front();
        match reply.unwrap_or(Reply::Now(Ok(StandardRetur::ok()))) {
            Reply::Now(answer) => answer,
            Reply::Never => {
                let _ = tokio::time::timeout(timeout, std::future::pending::<()>()).await;
                Err(AttemptError::Timeout)
            }
            Reply::Later(rx) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(answer)) => answer,
                _ => Err(AttemptError::Timeout),
            },
        }
    }

    async fn renew_token(&self) -> Result<(), String> {
        self.renewals.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A probe loop on a scripted Afsend.
struct Rig {
    probe: Arc<DueslagProbe>,
    watch: Arc<Watch>,
    afsender: Arc<ScriptedAfsender>,
    published: mpsc::UnboundedReceiver<Published>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

fn rig(spec: DueslagSpec, script: Vec<Reply>) -> Rig {
    let (probe, watch) = crate::testkit::probe(spec);
    let (tx, published) = mpsc::unbounded_channel();
    let afsender = Arc::new(ScriptedAfsender {
        script: Mutex::new(script.into()),
        published: tx,
        renewals: AtomicU32::new(0),
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(probe.clone(), afsender.clone(), stop.clone()));
    Rig {
        probe,
        watch,
        afsender,
        published,
        stop,
        task,
    }
}

/// A loop whose first probe goes out within the hour, then none for an hour.
fn one_probe(mut spec: DueslagSpec) -> DueslagSpec {
    spec.interval = Duration::from_secs(3600);
    spec
}

/// A loop told to stop right after its first probe went out.
async fn stopped_after_first_probe(spec: DueslagSpec, script: Vec<Reply>) -> (Rig, Published) {
    let mut r = rig(one_probe(spec), script);
    let p = r.next_published().await;
    r.stop.cancel();
    (r, p)
}

impl Rig {
    async fn next_published(&mut self) -> Published {
        self.published.recv().await.expect("the loop publishes")
    }

    /// Stops the loop and waits for it.
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }

    /// Lets (virtual) time run to `t`, and checks that the stopped loop still waits.
    async fn still_running_at(&self, t: Instant, why: &str) {
        until(t).await;
        assert!(!self.task.is_finished(), "the loop ended with {why}");
    }

    fn nothing_more_published(&mut self) {
        assert!(
            self.published.try_recv().is_err(),
            "a probe started after stop"
        );
    }

    /// The message arrives in the dueslag, as a pull receiver hands it over.
    fn arrive(&self, msg: &Outgoing) {
        let verdict = self.probe.on_arrival(&msg.body, Envelope::Haendelsesbesked);
        assert_eq!(verdict, Verdict::Take);
    }
}

fn is_finished(o: &Outcome) -> bool {
    matches!(o, Outcome::Finished { .. })
}

const INTERVAL: Duration = Duration::from_secs(10);

#[tokio::test(start_paused = true)]
async fn probes_start_within_one_interval_then_follow_at_the_interval() {
    let start = Instant::now();
    let mut r = rig(spec(Mode::Pull), vec![]);
    let mut times = vec![];
    let mut ids = vec![];
    for _ in 0..4 {
        let p = r.next_published().await;
        r.arrive(&p.msg);
        times.push(p.at);
        ids.push(p.msg.besked_id);
    }
    assert!(
        times[0] - start < INTERVAL,
        "first probe after {:?}",
        times[0] - start
    );
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, [INTERVAL; 3]);
    // Each probe: begun, sent, arrived at once.
    let per_probe = |id| {
        vec![
            Outcome::Attempt {
                besked_id: id,
                at: SystemTime::UNIX_EPOCH,
            },
            Outcome::Inflight(1),
            Outcome::Sent {
                duration: Duration::ZERO,
            },
            Outcome::Finished {
                besked_id: id,
                result: ProbeResult::Success {
                    roundtrip: Duration::ZERO,
                },
                at: SystemTime::UNIX_EPOCH,
            },
            Outcome::Received {
                kind: ReceivedKind::Matched,
                besked_id: Some(id),
                detail: None,
            },
            Outcome::Inflight(0),
        ]
    };
    let want: Vec<Outcome> = ids.iter().flat_map(|id| per_probe(*id)).collect();
    assert_eq!(r.watch.outcomes(), want);
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_the_interval_within_its_bounds() {
    let mut s = spec(Mode::Pull);
    s.jitter = 0.2;
    s.timeout = Duration::from_secs(1);
    let mut r = rig(s, vec![]);
    let mut times = vec![];
    for _ in 0..41 {
        times.push(r.next_published().await.at);
    }
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // ±20 %, and tokio's timer rounds a deadline up to the next millisecond.
    let (low, high) = (
        INTERVAL.mul_f64(0.8),
        INTERVAL.mul_f64(1.2) + Duration::from_millis(1),
    );
    assert!(gaps.iter().all(|g| (low..=high).contains(g)), "{gaps:?}");
    // Spread both ways (a fixed interval, or a one-sided jitter, fails this).
    assert!(gaps.iter().any(|g| *g < INTERVAL), "{gaps:?}");
    assert!(gaps.iter().any(|g| *g > INTERVAL), "{gaps:?}");
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_never_arrives_times_out_at_its_deadline_and_is_lost_later() {
    let mut s = one_probe(spec(Mode::Pull));
    s.timeout = Duration::from_secs(3);
    let mut r = rig(s, vec![]);
    let p = r.next_published().await;
    let id = p.msg.besked_id;
    let (timed_out, _) = r.watch.next(is_finished).await;
    assert_eq!(timed_out - p.at, Duration::from_secs(3));
    // Lost once it could no longer arrive late: another timeout after the deadline.
    let (lost, _) = r.watch.next(|o| matches!(o, Outcome::Lost { .. })).await;
    assert_eq!(lost - p.at, Duration::from_secs(6));
    assert_eq!(
        r.watch.outcomes(),
        [
            Outcome::Attempt {
                besked_id: id,
                at: SystemTime::UNIX_EPOCH
            },
            Outcome::Inflight(1),
            Outcome::Sent {
                duration: Duration::ZERO
            },
            Outcome::Finished {
                besked_id: id,
                result: ProbeResult::Timeout,
                at: SystemTime::UNIX_EPOCH
            },
            Outcome::Inflight(0),
            Outcome::Lost { besked_id: id },
        ]
    );
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn send_failures_are_reported_by_reason() {
    let invalid = crate::message::parse_afsend_reply(b"<html>502</html>").unwrap_err();
    let invalid_detail = AttemptError::InvalidReply(invalid.clone()).to_string();
    let rejected = |code, text| Reply::Now(Ok(StandardRetur::error(code, text)));
    let script = vec![
        rejected(44, "no such dueslag"),
        // 41, renewal, 41 again: a token failure after both attempts.
        rejected(41, "expired"),
        rejected(41, "expired"),
        Reply::Never,
        Reply::Never,
        // A connection error is retried on a new connection: both attempts meet one.
        Reply::Now(Err(AttemptError::Connection("down".into()))),
        Reply::Now(Err(AttemptError::Connection("down".into()))),
        Reply::Now(Err(AttemptError::Unroutable)),
        Reply::Now(Err(AttemptError::NoToken("sts down".into()))),
        Reply::Now(Err(AttemptError::InvalidReply(invalid.clone()))),
    ];
    let mut r = rig(spec(Mode::Push), script);
    for _ in 0..7 {
        r.watch.next(is_finished).await;
    }
    let mut attempts: Vec<(Uuid, Instant)> = vec![];
    while let Ok(p) = r.published.try_recv() {
        attempts.push((p.msg.besked_id, p.at));
    }
    let outcomes = r.watch.outcomes();
    let ids = pick(&outcomes, |o| match o {
        Outcome::Attempt { besked_id, .. } => Some(*besked_id),
        _ => None,
    });
    let failed = pick(&outcomes, |o| match o {
        Outcome::SendFailed {
            besked_id,
            reason,
            status,
            detail,
        } => Some((*besked_id, *reason, *status, detail.as_str())),
        _ => None,
    });
    use SendFailure::*;
    assert_eq!(
        failed,
        [
            (ids[0], Rejected, Some(44), "no such dueslag"),
            (ids[1], Token, Some(41), "expired"),
            (ids[2], Timeout, None, "no reply within the send timeout"),
            (
                ids[3],
                Connection,
                None,
                "no connection to the broker: down"
            ),
            (
                ids[4],
                Unroutable,
                None,
                "the broker returned the message as unroutable"
            ),
            (ids[5], Token, None, "no token: sts down"),
            (ids[6], InvalidReply, None, invalid_detail.as_str()),
        ]
    );
    let results = pick(&outcomes, |o| match o {
        Outcome::Finished { result, .. } => Some(*result),
        _ => None,
    });
    assert_eq!(
        results,
        [
            Rejected,
            Token,
            Timeout,
            Connection,
            Unroutable,
            Token,
            InvalidReply
        ]
        .map(ProbeResult::SendError)
    );
    assert!(!outcomes.iter().any(|o| matches!(o, Outcome::Sent { .. })));
    // Only 41 renews the token, once between the two attempts.
    assert_eq!(r.afsender.renewals.load(Ordering::Relaxed), 1);
    // Two attempts for 41, for no reply and for a lost connection, one for every other
    // failure; the two unanswered attempts take one send timeout each.
    let per_probe: Vec<usize> = ids
        .iter()
        .map(|id| attempts.iter().filter(|(a, _)| a == id).count())
        .collect();
    assert_eq!(per_probe, [1, 2, 2, 2, 1, 1, 1]);
    let timeouts: Vec<Instant> = attempts
        .iter()
        .filter(|(a, _)| *a == ids[2])
        .map(|(_, at)| *at)
        .collect();
    assert_eq!(timeouts[1] - timeouts[0], Duration::from_secs(1));
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn graceful_stop_waits_for_the_probe_in_flight() {
    let (mut r, p) = stopped_after_first_probe(spec(Mode::Pull), vec![]).await;
    r.still_running_at(p.at + Duration::from_secs(2), "a probe in flight")
        .await;
    r.arrive(&p.msg);
    // It ends by the probe's deadline at the latest (it is not woken by the arrival, so it
    // ends at the deadline today); it does not wait for the next interval.
    (&mut r.task).await.unwrap();
    assert!(Instant::now() <= p.at + Duration::from_secs(5));
    let (_, finished) = r.watch.next(is_finished).await;
    assert_eq!(
        plain(finished),
        Outcome::Finished {
            besked_id: p.msg.besked_id,
            result: ProbeResult::Success {
                roundtrip: Duration::from_secs(2)
            },
            at: SystemTime::UNIX_EPOCH
        }
    );
    r.nothing_more_published();
}

#[tokio::test(start_paused = true)]
async fn graceful_stop_waits_for_a_slow_send_and_then_the_deadline() {
    let mut s = spec(Mode::Pull);
    s.send_timeout = Duration::from_secs(4);
    let (answer, later) = oneshot::channel();
    let (mut r, p) = stopped_after_first_probe(s, vec![Reply::Later(later)]).await;
    r.still_running_at(p.at + Duration::from_secs(1), "a send in flight")
        .await;
    answer.send(Ok(StandardRetur::ok())).unwrap();
    let (sent_at, sent) = r.watch.next(|o| matches!(o, Outcome::Sent { .. })).await;
    assert_eq!(
        (sent_at - p.at, sent),
        (
            Duration::from_secs(1),
            Outcome::Sent {
                duration: Duration::from_secs(1)
            }
        )
    );
    // Accepted but never arriving: the loop waits for the deadline, then ends.
    (&mut r.task).await.unwrap();
    assert_eq!(Instant::now() - p.at, Duration::from_secs(5));
    let (_, finished) = r.watch.next(is_finished).await;
    assert!(
        matches!(
            finished,
            Outcome::Finished {
                result: ProbeResult::Timeout,
                ..
            }
        ),
        "{finished:?}"
    );
    r.nothing_more_published();
}

#[tokio::test(start_paused = true)]
async fn stopping_before_the_first_probe_sends_nothing() {
    let start = Instant::now();
    let mut r = rig(one_probe(spec(Mode::Pull)), vec![]);
    r.stop.cancel();
    (&mut r.task).await.unwrap();
    assert_eq!(Instant::now(), start);
    r.nothing_more_published();
    assert_eq!(r.watch.outcomes(), []);
}

/// This run's message for another dueslag is taken and counted as misrouted; the same
/// message from another run is foreign; the probe's own is matched. Every one is taken.
#[tokio::test]
async fn arrivals_for_another_dueslag_are_misrouted_only_when_they_are_this_runs() {
    let (probe, watch) = crate::testkit::probe(spec(Mode::Pull));
    let mut other_spec = spec(Mode::Pull);
    other_spec.name = "e".into();
    other_spec.id = Uuid::from_u128(0xe);
    let sibling = DueslagProbe::new(other_spec, probe.ctx.clone(), watch.clone());
    let mut other_ctx = (*probe.ctx).clone();
    other_ctx.run = Uuid::new_v4();
    let earlier_run = DueslagProbe::new(spec(Mode::Pull), Arc::new(other_ctx), watch.clone());

    let own = probe.next_message();
    probe.begin(&own);
    for (msg, want) in [
        (sibling.next_message(), ReceivedKind::Misrouted),
        (earlier_run.next_message(), ReceivedKind::Foreign),
        (own, ReceivedKind::Matched),
    ] {
        assert_eq!(
            probe.on_arrival(&msg.body, Envelope::Haendelsesbesked),
            Verdict::Take
        );
        let (_, got) = watch.next(|o| matches!(o, Outcome::Received { .. })).await;
        assert!(
            matches!(&got, Outcome::Received { kind, .. } if *kind == want),
            "{got:?}"
        );
    }
    assert_eq!(probe.misrouted(), 1);
    // A message addressed to no dueslag (the probe command's abonnement check) is taken
    // by the probe that waits for it, and leaves the accounting alone.
    let (elsewhere, arrived) = probe.on_demand_elsewhere();
    let m = message::parse_haendelsesbesked(&elsewhere.body).unwrap();
    assert_eq!(m.probe.as_ref().unwrap().dueslag, NO_DUESLAG);
    assert_ne!(m.addressed_to(&probe.ctx.objekt_type), Some(probe.spec.id));
    assert_eq!(
        probe.on_arrival(&elsewhere.body, Envelope::Haendelsesbesked),
        Verdict::Take
    );
    assert!(arrived.await.is_ok());
    assert_eq!(probe.misrouted(), 1);
}
