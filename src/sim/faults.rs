//! Fault decisions: what happens to one Afsend call on a dueslag with given [`Faults`].
//! Shared by the in-process simulator and the emulator on RabbitMQ.

use std::time::Duration;

use rand::Rng;

use crate::config::Faults;

/// The fate of one Afsend call.
#[derive(Debug, Clone, PartialEq)]
pub enum Fate {
    /// The dueslag is in an outage window: the connection fails.
    Outage,
    /// The broker returns the message as unroutable.
    Unroutable,
    /// The call is never answered.
    NoReply,
    /// Answered with this StatusKode (not 20).
    Reject(i32),
    /// Answered 20, then delivered as planned.
    Accept(Plan),
}

/// How an accepted message reaches its dueslag.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// One delay per copy: empty when lost, two when duplicated.
    pub copies: Vec<Duration>,
    /// Held back until the next message of the dueslag has been delivered.
    pub reorder: bool,
}

/// True while `since_start` falls in one of the outage windows.
pub fn in_outage(f: &Faults, since_start: Duration) -> bool {
    f.outages
        .iter()
        .any(|o| since_start >= o.start && since_start < o.start + o.length)
}

/// Decides the fate of one call.
pub fn decide(f: &Faults, since_start: Duration, rng: &mut impl Rng) -> Fate {
    if in_outage(f, since_start) {
        return Fate::Outage;
    }
    let mut hit = |p: f64| p > 0.0 && rng.random::<f64>() < p;
    if hit(f.unroutable) {
        return Fate::Unroutable;
    }
    if hit(f.no_reply) {
        return Fate::NoReply;
    }
    if hit(f.reject) {
        return Fate::Reject(f.reject_code);
    }
    if hit(f.loss) {
        return Fate::Accept(Plan {
            copies: vec![],
            reorder: false,
        });
    }
    let duplicate = hit(f.duplicate);
    let reorder = hit(f.reorder);
    let mut delay = || {
        let jitter = if f.jitter.is_zero() {
            Duration::ZERO
        } else {
            f.jitter.mul_f64(rng.random::<f64>())
        };
        f.delay + jitter
    };
    let mut copies = vec![delay()];
    if duplicate {
        copies.push(delay());
    }
    Fate::Accept(Plan { copies, reorder })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Outage;
    use rand::SeedableRng;

    fn count(f: &Faults, n: usize, pred: impl Fn(&Fate) -> bool) -> usize {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        (0..n)
            .filter(|_| pred(&decide(f, Duration::ZERO, &mut rng)))
            .count()
    }

    #[test]
    fn rates_are_roughly_honoured() {
        let f = Faults {
            loss: 0.25,
            ..Faults::default()
        };
        let lost = count(
            &f,
            4000,
            |x| matches!(x, Fate::Accept(p) if p.copies.is_empty()),
        );
        assert!((900..1100).contains(&lost), "{lost}");
        let f = Faults {
            reject: 1.0,
            reject_code: 44,
            ..Faults::default()
        };
        assert_eq!(count(&f, 10, |x| *x == Fate::Reject(44)), 10);
        assert_eq!(
            count(
                &Faults::default(),
                100,
                |x| matches!(x, Fate::Accept(p) if p.copies.len() == 1)
            ),
            100
        );
    }

    #[test]
    fn delay_stays_within_jitter() {
        let f = Faults {
            delay: Duration::from_millis(40),
            jitter: Duration::from_millis(10),
            duplicate: 1.0,
            ..Faults::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let Fate::Accept(p) = decide(&f, Duration::ZERO, &mut rng) else {
                panic!()
            };
            assert_eq!(p.copies.len(), 2);
            assert!(
                p.copies
                    .iter()
                    .all(|d| *d >= Duration::from_millis(40) && *d <= Duration::from_millis(50))
            );
        }
    }

    #[test]
    fn outage_windows() {
        let f = Faults {
            outages: vec![Outage {
                start: Duration::from_secs(60),
                length: Duration::from_secs(30),
            }],
            ..Faults::default()
        };
        assert!(!in_outage(&f, Duration::from_secs(59)));
        assert!(in_outage(&f, Duration::from_secs(60)));
        assert!(in_outage(&f, Duration::from_secs(89)));
        assert!(!in_outage(&f, Duration::from_secs(90)));
    }
}
