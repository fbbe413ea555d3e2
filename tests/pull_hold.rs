//! A business message in a probed pull dueslag is never acknowledged or swallowed
//! (DESIGN §3), on the simulator's in-process queues with RabbitMQ's semantics.

use std::sync::Arc;
use std::time::Duration;

use bfo_alive_exporter::config::{Config, Unexpected};
use bfo_alive_exporter::message::build_business_message;
use bfo_alive_exporter::outcome::{Observer, Outcome, ReceivedKind, Recorder};
use bfo_alive_exporter::probe::{self, DueslagProbe, ProbeContext};
use bfo_alive_exporter::receive::pull as receiver;
use bfo_alive_exporter::sim::{self, LocalSink, Simulator};
use bfo_alive_exporter::transport::sim::{SimAfhenter, SimAfsender};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

const CONFIG: &str = r#"
[broker]
backend = "sim"
[identity]
anvendersystem = "cf12c051-39ce-4066-ba11-704b46fa23c4"
cvr = "29189846"
[defaults]
interval = "50ms"
timeout = "1s"
max_held = 2
[[dueslag]]
name = "p"
mode = "pull"
queue = "q"
"#;

struct Rig {
    sink: Arc<LocalSink>,
    probe: Arc<DueslagProbe>,
    recorder: Arc<Recorder>,
    stop_send: CancellationToken,
    stop_recv: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn rig(unexpected: Unexpected) -> Rig {
    let config = Config::parse(CONFIG, "test").unwrap();
    let mut spec = config.dueslag_specs().remove(0);
    spec.unexpected = unexpected;
    let stop = CancellationToken::new();
    let sink = LocalSink::new(stop.clone());
    let simulator = Simulator::new(sink.clone(), stop);
    simulator.set_topology(sim::targets(
        std::slice::from_ref(&spec),
        &config.sim.faults,
        "http://unused",
    ));
    let recorder = Arc::new(Recorder::default());
    let ctx = Arc::new(ProbeContext {
        instance: "i".into(),
        run: uuid::Uuid::new_v4(),
        anvendersystem: uuid::Uuid::nil(),
        cvr: "29189846".into(),
    });
    let probe = DueslagProbe::new(spec, ctx, recorder.clone() as Arc<dyn Observer>);
    let (stop_send, stop_recv) = (CancellationToken::new(), CancellationToken::new());
    let tasks = vec![
        tokio::spawn(probe::run(
            probe.clone(),
            Arc::new(SimAfsender {
                sim: simulator.clone(),
            }),
            stop_send.clone(),
        )),
        tokio::spawn(receiver::run_pull(
            probe.clone(),
            Arc::new(SimAfhenter {
                sim: simulator,
                sink: sink.clone(),
                prefetch: 10,
            }),
            stop_recv.clone(),
        )),
    ];
    Rig {
        sink,
        probe,
        recorder,
        stop_send,
        stop_recv,
        tasks,
    }
}

fn business() -> Bytes {
    Bytes::from(build_business_message(
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    ))
}

fn count(outcomes: &[Outcome], pred: impl Fn(&Outcome) -> bool) -> usize {
    outcomes.iter().filter(|o| pred(o)).count()
}

fn is_success(o: &Outcome) -> bool {
    matches!(
        o,
        Outcome::Received {
            kind: ReceivedKind::Matched | ReceivedKind::OutOfOrder,
            ..
        }
    )
}

#[tokio::test]
async fn held_business_messages_stay_in_the_queue_and_alive_keeps_flowing() {
    let r = rig(Unexpected::Hold);
    let q = r.sink.queue("q");
    let (b1, b2) = (business(), business());
    q.publish(b1.clone());
    q.publish(b2.clone());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let seen = r.recorder.take();
    assert_eq!(
        count(&seen, |o| matches!(
            o,
            Outcome::Received {
                kind: ReceivedKind::Unexpected,
                ..
            }
        )),
        2
    );
    assert!(
        count(&seen, is_success) >= 3,
        "Alive messages stopped flowing behind held ones"
    );
    assert_eq!(
        q.unacked(),
        2,
        "both business messages are held unacknowledged"
    );
    assert!(seen.contains(&Outcome::Held {
        count: 2,
        paused: false
    }));
    r.stop_send.cancel();
    r.stop_recv.cancel();
    for t in r.tasks {
        t.await.unwrap();
    }
    // Closed: the held messages are back in the queue, untouched, in order.
    assert_eq!(q.ready(), vec![b1, b2]);
    assert!(q.error_queue().is_empty());
    drop(r.probe);
}

#[tokio::test]
async fn too_many_held_messages_pause_the_dueslag() {
    let r = rig(Unexpected::Hold);
    let q = r.sink.queue("q");
    for _ in 0..3 {
        q.publish(business());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = r.recorder.take();
    assert!(
        seen.contains(&Outcome::Held {
            count: 3,
            paused: true
        }),
        "{seen:?}"
    );
    assert_eq!(q.unacked(), 3);
    r.stop_recv.cancel();
    r.stop_send.cancel();
    for t in r.tasks {
        t.await.unwrap();
    }
    assert_eq!(
        q.ready().len() - count_alive(&q.ready()),
        3,
        "all three business messages are back"
    );
}

fn count_alive(msgs: &[Bytes]) -> usize {
    msgs.iter()
        .filter(|m| {
            bfo_alive_exporter::message::parse_haendelsesbesked(m).is_ok_and(|h| h.is_alive())
        })
        .count()
}

#[tokio::test]
async fn error_queue_mode_dead_letters_without_acknowledging() {
    let r = rig(Unexpected::ErrorQueue);
    let q = r.sink.queue("q");
    let b = business();
    q.publish(b.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(q.error_queue(), vec![b]);
    r.stop_send.cancel();
    r.stop_recv.cancel();
    for t in r.tasks {
        t.await.unwrap();
    }
}
