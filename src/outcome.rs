//! Outcomes: what probe loops and receivers report, as plain data.
//!
//! Probe logic never touches a metric. It emits [`Outcome`]s to an [`Observer`]; the
//! metrics module and the status board each turn them into their own view.

use std::time::{Duration, SystemTime};

use uuid::Uuid;

/// Why an Afsend failed (label `reason` of `bfo_alive_send_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SendFailure {
    /// A StatusKode other than 20 (and other than 41 after renewal).
    Rejected,
    /// 41 persisted after renewal, or no token could be had.
    Token,
    /// No StandardRetur within the send timeout, after every attempt.
    Timeout,
    /// No connection or channel to the broker.
    Connection,
    /// The broker returned the message (`basic.return`).
    Unroutable,
    /// A reply came, but it is no StandardRetur the exporter can read (ARCHITECTURE.md §2).
    InvalidReply,
}

impl SendFailure {
    pub const ALL: [SendFailure; 6] = [
        SendFailure::Rejected,
        SendFailure::Token,
        SendFailure::Timeout,
        SendFailure::Connection,
        SendFailure::Unroutable,
        SendFailure::InvalidReply,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SendFailure::Rejected => "rejected",
            SendFailure::Token => "token",
            SendFailure::Timeout => "timeout",
            SendFailure::Connection => "connection",
            SendFailure::Unroutable => "unroutable",
            SendFailure::InvalidReply => "invalid_reply",
        }
    }
}

/// Why a pull dueslag is not consuming (label `reason` of
/// `bfo_alive_consume_failures_total`): a `basic.consume` that failed, or a running consumer
/// that the broker or the network ended. Each counts once per attempt, so the rate shows
/// the receiver's retry rate, bounded by the reconnect backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsumeFailure {
    /// No connection or channel to the broker, or it was lost under the consumer.
    Connection,
    /// The dueslag's queue does not exist (AMQP `NOT_FOUND`): deleted, or never made.
    QueueMissing,
    /// The broker refused the consumer for another reason (access, an exclusive consumer).
    Refused,
    /// The broker ended a running consumer while the connection stayed up
    /// (`basic.cancel`, e.g. its queue was deleted, or the channel closed).
    Cancelled,
}

impl ConsumeFailure {
    pub const ALL: [ConsumeFailure; 4] = [
        ConsumeFailure::Connection,
        ConsumeFailure::QueueMissing,
        ConsumeFailure::Refused,
        ConsumeFailure::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConsumeFailure::Connection => "connection",
            ConsumeFailure::QueueMissing => "queue_missing",
            ConsumeFailure::Refused => "refused",
            ConsumeFailure::Cancelled => "cancelled",
        }
    }
}

/// The result of one probe (label `result` of `bfo_alive_probes_total`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProbeResult {
    Success { roundtrip: Duration },
    Timeout,
    SendError(SendFailure),
}

impl ProbeResult {
    pub const LABELS: [&'static str; 3] = ["success", "timeout", "send_error"];

    pub fn label(&self) -> &'static str {
        match self {
            ProbeResult::Success { .. } => "success",
            ProbeResult::Timeout => "timeout",
            ProbeResult::SendError(_) => "send_error",
        }
    }
}

/// How an arrival was classified (label `kind` of `bfo_alive_received_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceivedKind {
    Matched,
    Late,
    Duplicate,
    OutOfOrder,
    /// This exporter run's Alive message for another of its dueslag: the dueslag's
    /// abonnement does not filter on RelateretObjekt (ARCHITECTURE.md §4).
    Misrouted,
    /// An Alive message of another exporter instance or an earlier run, or without a
    /// readable payload.
    Foreign,
    Unexpected,
}

impl ReceivedKind {
    pub const ALL: [ReceivedKind; 7] = [
        ReceivedKind::Matched,
        ReceivedKind::Late,
        ReceivedKind::Duplicate,
        ReceivedKind::OutOfOrder,
        ReceivedKind::Misrouted,
        ReceivedKind::Foreign,
        ReceivedKind::Unexpected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReceivedKind::Matched => "matched",
            ReceivedKind::Late => "late",
            ReceivedKind::Duplicate => "duplicate",
            ReceivedKind::OutOfOrder => "out_of_order",
            ReceivedKind::Misrouted => "misrouted",
            ReceivedKind::Foreign => "foreign",
            ReceivedKind::Unexpected => "unexpected",
        }
    }
}

/// One thing that happened on a dueslag.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A probe started (its message is about to be sent).
    Attempt { besked_id: Uuid, at: SystemTime },
    /// The Afsend reply came back with 20.
    Sent { duration: Duration },
    /// The Afsend failed; `status` is the StatusKode when there was one.
    SendFailed {
        besked_id: Uuid,
        reason: SendFailure,
        status: Option<i32>,
        detail: String,
    },
    /// A probe ended.
    Finished {
        besked_id: Uuid,
        result: ProbeResult,
        at: SystemTime,
    },
    /// Something arrived in the dueslag.
    Received {
        kind: ReceivedKind,
        besked_id: Option<Uuid>,
        detail: Option<String>,
    },
    /// A probe that timed out never arrived, even late.
    Lost { besked_id: Uuid },
    /// Probes currently in flight.
    Inflight(usize),
    /// Non-Alive messages held unacknowledged, and whether consuming stopped because of them.
    Held { count: usize, paused: bool },
    /// The pull consumer could not start or was ended (pull dueslag only); `detail` says
    /// what the broker said.
    ConsumeFailed {
        reason: ConsumeFailure,
        detail: String,
    },
}

/// Receives the outcomes of one dueslag.
pub trait Observer: Send + Sync {
    fn observe(&self, outcome: Outcome);
}

/// Forwards every outcome to several observers.
pub struct Fanout(pub Vec<std::sync::Arc<dyn Observer>>);

impl Observer for Fanout {
    fn observe(&self, outcome: Outcome) {
        if let Some((last, rest)) = self.0.split_last() {
            for o in rest {
                o.observe(outcome.clone());
            }
            last.observe(outcome);
        }
    }
}

/// Keeps every outcome; for unit tests of code that emits outcomes.
#[derive(Default)]
pub struct Recorder(pub std::sync::Mutex<Vec<Outcome>>);

impl Observer for Recorder {
    fn observe(&self, outcome: Outcome) {
        self.0.lock().unwrap().push(outcome);
    }
}

impl Recorder {
    pub fn take(&self) -> Vec<Outcome> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}
