//! The Afsend policy of ARCHITECTURE.md §2 on top of any [`Afsender`]: a new correlation id per
//! attempt, renew the token and retry on 41, retry on no reply, reconnect and retry on a
//! connection error, give up after the configured attempts, and classify the failure.
//!
//! A connection error is retried because a broker ends connections by design (KOMBIT's
//! connection authoriser grants one for 3600 s, and KOMBIT's own sample reconnects and
//! retries the Afsend): the first retry goes at once, on the connection the [`Afsender`]
//! opens again; a further one waits the reconnect backoff (0.5 s, 1 s, …), so that each
//! retry meets the link's next connect attempt instead of its backoff window.
//!
//! An unreadable reply (`invalid_reply`) is **not** retried. It is an answer, not a lost
//! one: the Beskedfordeler received the message and may well have accepted it, so a retry
//! would send a second copy (an extra arrival) to learn nothing new, since a reply format
//! the exporter cannot read comes back the same way every time. Like `rejected`, it is
//! reported at once; the next probe tries again.

use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::outcome::SendFailure;
use crate::protocol::status;
use crate::transport::{Afsender, AttemptError, Outgoing};

/// How an Afsend ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SendReport {
    /// StatusKode 20; `duration` is publish → reply of the accepted attempt.
    Accepted { duration: Duration, attempts: u32 },
    Failed {
        reason: SendFailure,
        status: Option<i32>,
        detail: String,
        attempts: u32,
        /// For `invalid_reply`: the reply's first bytes (`message::REPLY_HEAD_BYTES`), for
        /// the probe trace. Never in `detail`, which is logged at warn and shown on the
        /// status page.
        reply_head: Option<String>,
    },
}

/// Sends one message with retries.
pub async fn send(
    afsender: &dyn Afsender,
    msg: &Outgoing,
    attempts: u32,
    timeout: Duration,
) -> SendReport {
    let attempts = attempts.max(1);
    let mut last = (SendFailure::Timeout, None, String::new());
    // Set at the first connection error: the retry after it goes at once, later ones wait.
    let mut reconnect_pause: Option<Backoff> = None;
    for attempt in 1..=attempts {
        let started = Instant::now();
        match afsender.publish(msg, Uuid::new_v4(), timeout).await {
            Ok(r) if r.status_kode == status::OK => {
                return SendReport::Accepted {
                    duration: started.elapsed(),
                    attempts: attempt,
                };
            }
            Ok(r) if r.status_kode == status::TOKEN_EXPIRED => {
                last = (
                    SendFailure::Token,
                    Some(r.status_kode),
                    r.fejlbesked_tekst.unwrap_or_else(|| "token expired".into()),
                );
                if attempt < attempts
                    && let Err(e) = afsender.renew_token().await
                {
                    return failed(
                        SendFailure::Token,
                        Some(r.status_kode),
                        format!("token renewal failed: {e}"),
                        attempt,
                    );
                }
            }
            Ok(r) => {
                let text = r.fejlbesked_tekst.unwrap_or_default();
                return failed(SendFailure::Rejected, Some(r.status_kode), text, attempt);
            }
            Err(AttemptError::Timeout) => {
                last = (
                    SendFailure::Timeout,
                    None,
                    AttemptError::Timeout.to_string(),
                );
            }
            Err(e @ AttemptError::Connection(_)) => {
                last = (SendFailure::Connection, None, e.to_string());
                if attempt < attempts {
                    match &mut reconnect_pause {
                        None => reconnect_pause = Some(Backoff::reconnect()),
                        Some(pause) => tokio::time::sleep(pause.next_delay()).await,
                    }
                }
            }
            Err(e @ (AttemptError::Unroutable | AttemptError::NoExchange(_))) => {
                return failed(SendFailure::Unroutable, None, e.to_string(), attempt);
            }
            Err(e @ AttemptError::NoToken(_)) => {
                return failed(SendFailure::Token, None, e.to_string(), attempt);
            }
            Err(AttemptError::InvalidReply(r)) => {
                tracing::debug!(
                    dueslag = %msg.dueslag,
                    besked_id = %msg.besked_id,
                    attempt,
                    why = %r.why,
                    reply_head = %r.head,
                    "the Afsend reply is not a StandardRetur"
                );
                return SendReport::Failed {
                    reason: SendFailure::InvalidReply,
                    status: None,
                    detail: AttemptError::InvalidReply(r.clone()).to_string(),
                    attempts: attempt,
                    reply_head: Some(r.head),
                };
            }
        }
    }
    failed(last.0, last.1, last.2, attempts)
}

fn failed(reason: SendFailure, status: Option<i32>, detail: String, attempts: u32) -> SendReport {
    SendReport::Failed {
        reason,
        status,
        detail,
        attempts,
        reply_head: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::StandardRetur;
    use async_trait::async_trait;
    use std::sync::Mutex;

    /// Answers from a script, one entry per attempt.
    struct Scripted {
        answers: Mutex<Vec<Result<StandardRetur, AttemptError>>>,
        correlation_ids: Mutex<Vec<Uuid>>,
        /// The transaction id (`message_id`) and the (paused) time of each attempt.
        attempts: Mutex<Vec<(Uuid, Instant)>>,
        renewals: Mutex<u32>,
        renew_ok: bool,
    }

    impl Scripted {
        fn new(mut answers: Vec<Result<StandardRetur, AttemptError>>, renew_ok: bool) -> Self {
            answers.reverse();
            Scripted {
                answers: Mutex::new(answers),
                correlation_ids: Mutex::default(),
                attempts: Mutex::default(),
                renewals: Mutex::default(),
                renew_ok,
            }
        }
    }

    #[async_trait]
    impl Afsender for Scripted {
        async fn publish(
            &self,
            msg: &Outgoing,
            c: Uuid,
            _: Duration,
        ) -> Result<StandardRetur, AttemptError> {
            self.correlation_ids.lock().unwrap().push(c);
            self.attempts
                .lock()
                .unwrap()
                .push((msg.transaction_id, Instant::now()));
            self.answers
                .lock()
                .unwrap()
                .pop()
                .expect("more attempts than scripted")
        }
        async fn renew_token(&self) -> Result<(), String> {
            *self.renewals.lock().unwrap() += 1;
            if self.renew_ok {
                Ok(())
            } else {
                Err("sts down".into())
            }
        }
    }

    fn msg() -> Outgoing {
        Outgoing {
            transaction_id: Uuid::new_v4(),
            besked_id: Uuid::new_v4(),
            dueslag: "d".into(),
            body: "<x/>".into(),
        }
    }

    async fn run(s: &Scripted) -> SendReport {
        send(s, &msg(), 3, Duration::from_secs(1)).await
    }

    #[tokio::test]
    async fn token_expiry_renews_and_retries_with_new_correlation_ids() {
        let s = Scripted::new(
            vec![
                Ok(StandardRetur::error(41, "expired")),
                Ok(StandardRetur::ok()),
            ],
            true,
        );
        assert!(matches!(
            run(&s).await,
            SendReport::Accepted { attempts: 2, .. }
        ));
        assert_eq!(*s.renewals.lock().unwrap(), 1);
        let ids = s.correlation_ids.lock().unwrap();
        assert_ne!(ids[0], ids[1]);
    }

    #[tokio::test]
    async fn persistent_41_is_a_token_failure() {
        let s = Scripted::new(vec![Ok(StandardRetur::error(41, "x")); 3], true);
        let r = run(&s).await;
        assert!(
            matches!(
                r,
                SendReport::Failed {
                    reason: SendFailure::Token,
                    status: Some(41),
                    attempts: 3,
                    ..
                }
            ),
            "{r:?}"
        );
        let s = Scripted::new(vec![Ok(StandardRetur::error(41, "x"))], false);
        assert!(matches!(
            run(&s).await,
            SendReport::Failed {
                reason: SendFailure::Token,
                attempts: 1,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn other_codes_are_rejections_at_once() {
        let s = Scripted::new(vec![Ok(StandardRetur::error(44, "no such dueslag"))], true);
        let r = run(&s).await;
        assert_eq!(
            r,
            SendReport::Failed {
                reason: SendFailure::Rejected,
                status: Some(44),
                detail: "no such dueslag".into(),
                attempts: 1,
                reply_head: None,
            }
        );
    }

    #[tokio::test]
    async fn timeouts_retry_then_fail() {
        let s = Scripted::new(
            vec![Err(AttemptError::Timeout), Ok(StandardRetur::ok())],
            true,
        );
        assert!(matches!(
            run(&s).await,
            SendReport::Accepted { attempts: 2, .. }
        ));
        let s = Scripted::new(vec![Err(AttemptError::Timeout); 3], true);
        assert!(matches!(
            run(&s).await,
            SendReport::Failed {
                reason: SendFailure::Timeout,
                attempts: 3,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn unroutable_and_unreadable_replies_do_not_retry() {
        let s = Scripted::new(vec![Err(AttemptError::Unroutable)], true);
        assert!(matches!(
            run(&s).await,
            SendReport::Failed {
                reason: SendFailure::Unroutable,
                ..
            }
        ));
        // The broker answered: it may have taken the message, so no second copy is sent.
        let invalid = crate::message::parse_afsend_reply(b"<x/>").unwrap_err();
        let s = Scripted::new(vec![Err(AttemptError::InvalidReply(invalid))], true);
        assert!(matches!(
            run(&s).await,
            SendReport::Failed {
                reason: SendFailure::InvalidReply,
                attempts: 1,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn an_invalid_reply_is_reported_at_once_with_its_head() {
        let invalid =
            crate::message::parse_afsend_reply(b"<html>502 Bad Gateway</html>").unwrap_err();
        let s = Scripted::new(vec![Err(AttemptError::InvalidReply(invalid))], true);
        let r = run(&s).await;
        let SendReport::Failed {
            reason,
            status,
            detail,
            attempts,
            reply_head,
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(
            (reason, status, attempts),
            (SendFailure::InvalidReply, None, 1)
        );
        assert!(detail.contains("holds neither a StatusKode"), "{detail}");
        assert!(
            !detail.contains("502"),
            "the bytes stay out of the detail: {detail}"
        );
        assert_eq!(reply_head.as_deref(), Some("<html>502 Bad Gateway</html>"));
        assert_eq!(*s.renewals.lock().unwrap(), 0);
    }

    fn down() -> Result<StandardRetur, AttemptError> {
        Err(AttemptError::Connection(
            "channel closed by the broker".into(),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_error_is_retried_at_once_with_the_same_message_id() {
        let s = Scripted::new(vec![down(), Ok(StandardRetur::ok())], true);
        let m = msg();
        let start = Instant::now();
        let r = send(&s, &m, 3, Duration::from_secs(1)).await;
        assert!(
            matches!(r, SendReport::Accepted { attempts: 2, .. }),
            "{r:?}"
        );
        let attempts = s.attempts.lock().unwrap();
        assert_eq!(
            attempts.iter().map(|a| a.0).collect::<Vec<_>>(),
            [m.transaction_id; 2],
            "one message_id for every attempt"
        );
        assert_eq!(attempts[1].1, start, "the first retry does not wait");
        let ids = s.correlation_ids.lock().unwrap();
        assert_ne!(ids[0], ids[1], "a new correlation id per attempt");
        assert_eq!(*s.renewals.lock().unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn connection_errors_fail_only_when_the_attempts_are_used_up() {
        let s = Scripted::new(vec![down(), down(), down(), down()], true);
        let start = Instant::now();
        let r = send(&s, &msg(), 4, Duration::from_secs(1)).await;
        assert!(
            matches!(
                &r,
                SendReport::Failed {
                    reason: SendFailure::Connection,
                    status: None,
                    attempts: 4,
                    detail,
                    ..
                } if detail.contains("closed by the broker")
            ),
            "{r:?}"
        );
        // At once, then the reconnect backoff: 0.5 s, 1 s; nothing after the last attempt.
        let at: Vec<Duration> = s
            .attempts
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.1 - start)
            .collect();
        // Tokio's timer may round a deadline up to its next millisecond tick.
        let want = [0, 0, 500, 1500].map(Duration::from_millis);
        assert!(
            at.iter()
                .zip(want)
                .all(|(at, want)| want <= *at && *at <= want + Duration::from_millis(2)),
            "attempts at {at:?}, want {want:?}"
        );
        assert_eq!(start.elapsed(), at[3], "no wait after the last attempt");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_error_mixes_with_the_other_answers() {
        let t = Err(AttemptError::Timeout);
        let expired = Ok(StandardRetur::error(41, "expired"));
        // Each script, how it ends (attempts of an acceptance, or the failure's reason), and
        // the token renewals on the way.
        let cases = [
            // Cut while waiting, then no reply on the new connection: the budget ends on
            // the timeout, which is what the last attempt saw.
            (vec![down(), t.clone(), t], Err(SendFailure::Timeout), 0),
            // A 41 after a reconnect still renews the token.
            (vec![down(), expired, Ok(StandardRetur::ok())], Ok(3), 1),
        ];
        for (script, want, renewals) in cases {
            let s = Scripted::new(script, true);
            let got = match run(&s).await {
                SendReport::Accepted { attempts, .. } => Ok(attempts),
                SendReport::Failed { reason, .. } => Err(reason),
            };
            assert_eq!(got, want);
            assert_eq!(*s.renewals.lock().unwrap(), renewals);
        }
    }
}
