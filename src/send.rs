//! The Afsend policy of ARCHITECTURE.md §2 on top of any [`Afsender`]: a new correlation id per
//! attempt, renew the token and retry on 41, retry on no reply, give up after the
//! configured attempts, and classify the failure.
//!
//! An unreadable reply (`invalid_reply`) is **not** retried. It is an answer, not a lost
//! one: the Beskedfordeler received the message and may well have accepted it, so a retry
//! would send a second copy (an extra arrival) to learn nothing new, since a reply format
//! the exporter cannot read comes back the same way every time. Like `rejected`, it is
//! reported at once; the next probe tries again.

use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

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
                return failed(SendFailure::Connection, None, e.to_string(), attempt);
            }
            Err(e @ AttemptError::Unroutable) => {
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
        renewals: Mutex<u32>,
        renew_ok: bool,
    }

    impl Scripted {
        fn new(mut answers: Vec<Result<StandardRetur, AttemptError>>, renew_ok: bool) -> Self {
            answers.reverse();
            Scripted {
                answers: Mutex::new(answers),
                correlation_ids: Mutex::default(),
                renewals: Mutex::default(),
                renew_ok,
            }
        }
    }

    #[async_trait]
    impl Afsender for Scripted {
        async fn publish(
            &self,
            _: &Outgoing,
            c: Uuid,
            _: Duration,
        ) -> Result<StandardRetur, AttemptError> {
            self.correlation_ids.lock().unwrap().push(c);
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
    async fn unroutable_and_connection_do_not_retry() {
        let s = Scripted::new(vec![Err(AttemptError::Unroutable)], true);
        assert!(matches!(
            run(&s).await,
            SendReport::Failed {
                reason: SendFailure::Unroutable,
                ..
            }
        ));
        let s = Scripted::new(vec![Err(AttemptError::Connection("down".into()))], true);
        assert!(matches!(
            run(&s).await,
            SendReport::Failed {
                reason: SendFailure::Connection,
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
}
