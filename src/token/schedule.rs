//! When the token manager fetches next: the renewal schedule, as pure functions.
//!
//! Nothing here reads a clock, draws a random number or does I/O: the caller passes the
//! current time, the time left on the token and the jitter. That is why every rule
//! (renewal at a fraction of the lifetime, backoff growth and cap, the floor for on-demand
//! renewals) can be tested with made-up instants, and why the manager, which only carries
//! out the result on tokio's clock, can be tested on a paused clock.

use std::time::Duration;

use tokio::time::Instant;

/// Timing of the [`super::TokenManager`]: every input of the schedule that is not about one
/// fetch.
#[derive(Debug, Clone)]
pub struct TokenManagerConfig {
    /// Renew when this fraction of the token's lifetime (from fetch to expiry) has passed.
    pub renew_fraction: f64,
    /// First retry delay after a failed fetch; doubles up to `retry_max` (±10 % jitter).
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Renewal interval of an STS token whose expiry is unknown.
    pub renew_without_expiry: Duration,
    /// On-demand renewals ([`super::TokenManager::renew`]) wait until this long after the
    /// last fetch, so a BFO answering 41 in a loop does not hammer the STS.
    pub min_renew_interval: Duration,
    /// How often the file source reads its file.
    pub file_poll_interval: Duration,
    /// Up to this share of a renewal's delay is taken off at random ([`spread`]), so that
    /// tokens fetched together (many municipalities at start-up) are renewed apart.
    pub renew_jitter: f64,
    /// Shared by every manager of a backend: STS requests in flight at once, over all
    /// municipalities and services (`[token] sts_concurrency`); `None`: no limit. Not
    /// timing, but the one other bound on when a fetch happens.
    pub sts_permits: Option<std::sync::Arc<tokio::sync::Semaphore>>,
}

impl Default for TokenManagerConfig {
    fn default() -> Self {
        TokenManagerConfig {
            renew_fraction: 0.8,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            renew_without_expiry: Duration::from_secs(3600),
            min_renew_interval: Duration::from_secs(10),
            file_poll_interval: Duration::from_secs(5),
            renew_jitter: 0.0,
            sts_permits: None,
        }
    }
}

/// The range the caller draws the backoff jitter from: retries of many exporters that
/// failed together spread out instead of hitting a recovering STS at the same moment.
pub const JITTER: std::ops::Range<f64> = 0.9..1.1;

/// No delay is longer than this (tokio's own "far future"): an absurd configuration or
/// lifetime postpones the renewal instead of overflowing an `Instant`.
pub const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// How one fetch ended, as far as the schedule cares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// A token arrived. `expires_in`: its time left at arrival (zero when already expired),
    /// `None` when it does not say.
    Token { expires_in: Option<Duration> },
    /// The fetch failed. `consecutive`: failures in a row, this one included; `jitter`: a
    /// factor drawn from [`JITTER`] (clamped into it).
    Failed { consecutive: u32, jitter: f64 },
}

/// The next fetch: on the timer at `at`, or on demand, but not before `not_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    pub at: Instant,
    pub not_before: Instant,
}

impl Next {
    /// When to fetch for a renewal asked for at `now`: at once, or at `not_before` if that
    /// is later. Not later than `at`: a demand never postpones the timer.
    pub fn on_demand(&self, now: Instant) -> Instant {
        now.max(self.not_before).min(self.at.max(now))
    }
}

/// The schedule after a fetch of the STS source that started at `started` and ended at
/// `now`.
///
/// The renewal delay counts from `now`, as a fraction of the time left then (the lifetime
/// from fetch to expiry), never less than `retry_min` so an expired or nearly expired token
/// is not fetched in a tight loop. A failure backs off from `retry_min`, doubling per
/// consecutive failure up to `retry_max`, times the jitter. The on-demand floor counts from
/// `started`, so a slow fetch does not stretch it.
pub fn after_fetch(
    config: &TokenManagerConfig,
    started: Instant,
    now: Instant,
    outcome: Outcome,
) -> Next {
    let delay = match outcome {
        Outcome::Token { expires_in: None } => config.renew_without_expiry,
        Outcome::Token {
            expires_in: Some(left),
        } => scale(left, config.renew_fraction.clamp(0.0, 1.0)).max(config.retry_min),
        Outcome::Failed {
            consecutive,
            jitter,
        } => {
            let doublings = consecutive.saturating_sub(1).min(16);
            let base = config
                .retry_min
                .saturating_mul(1u32 << doublings)
                .min(config.retry_max);
            let jitter = if jitter.is_finite() {
                jitter.clamp(JITTER.start, JITTER.end)
            } else {
                1.0
            };
            scale(base, jitter)
        }
    };
    Next {
        at: later(now, delay),
        not_before: later(started, config.min_renew_interval),
    }
}

/// `next` with its renewal brought forward by `jitter × draw` of the delay from `now`
/// (`draw` in 0..1, drawn by the caller; `jitter` clamped to 0..0.5): a token is still
/// renewed before `renew_fraction` of its lifetime, never after, and the renewals of tokens
/// fetched in the same second spread over `jitter` of their delay. The on-demand floor
/// stays.
pub fn spread(next: Next, now: Instant, jitter: f64, draw: f64) -> Next {
    let factor = 1.0 - jitter.clamp(0.0, 0.5) * draw.clamp(0.0, 1.0);
    let delay = next.at.saturating_duration_since(now);
    Next {
        at: later(now, scale(delay, factor)),
        not_before: next.not_before,
    }
}

/// The schedule after the file source read its file at `read_at`: the next poll, and an
/// on-demand floor of `min_renew_interval` (but no longer than a poll: a demand should
/// never have to wait for more than the timer would).
pub fn after_file_read(config: &TokenManagerConfig, read_at: Instant) -> Next {
    let poll = config.file_poll_interval;
    Next {
        at: later(read_at, poll),
        not_before: later(read_at, config.min_renew_interval.min(poll)),
    }
}

/// `d * factor`, as `Duration::mul_f64`, but saturating instead of panicking (a NaN or
/// negative factor gives zero).
fn scale(d: Duration, factor: f64) -> Duration {
    if factor.is_nan() || factor <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

fn later(t: Instant, d: Duration) -> Instant {
    t + d.min(FAR_FUTURE)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{MS, S, timing};
    use super::*;

    // `timing()`: renew at half the lifetime, retry 1 s doubling to 8 s, 30 s without an
    // expiry, demands 1 s apart, file polled every 5 s.

    fn token(expires_in: Option<Duration>) -> Outcome {
        Outcome::Token { expires_in }
    }

    fn failed(consecutive: u32, jitter: f64) -> Outcome {
        Outcome::Failed {
            consecutive,
            jitter,
        }
    }

    /// The delay from `now` after `outcome`, with a fetch that took no time.
    fn delay(config: &TokenManagerConfig, outcome: Outcome) -> Duration {
        let now = Instant::now();
        after_fetch(config, now, now, outcome).at - now
    }

    /// Every duration `d`, as if configured by someone who meant "never" or "at once".
    fn uniform(d: Duration) -> TokenManagerConfig {
        TokenManagerConfig {
            renew_fraction: 1.0,
            retry_min: d,
            retry_max: d,
            renew_without_expiry: d,
            min_renew_interval: d,
            file_poll_interval: d,
            renew_jitter: 0.0,
            sts_permits: None,
        }
    }

    #[test]
    fn spread_brings_renewals_forward_by_at_most_the_jitter() {
        let now = Instant::now();
        let next = after_fetch(&timing(), now, now, token(Some(200 * S)));
        assert_eq!(next.at, now + 100 * S);
        // No jitter, or a draw of 0: unchanged.
        assert_eq!(spread(next, now, 0.0, 0.7), next);
        assert_eq!(spread(next, now, 0.1, 0.0), next);
        // The extremes of a 10 % jitter: 90 s to 100 s, never later.
        assert_eq!(spread(next, now, 0.1, 1.0).at, now + 90 * S);
        assert_eq!(spread(next, now, 0.1, 0.5).at, now + 95 * S);
        // Out-of-range inputs are clamped: at most half the delay comes off.
        assert_eq!(spread(next, now, 3.0, 9.0).at, now + 50 * S);
        assert_eq!(spread(next, now, 0.1, 1.0).not_before, next.not_before);
        // Many draws spread the renewals of tokens fetched together over the window.
        let ats: std::collections::BTreeSet<Instant> = (0..100)
            .map(|i| spread(next, now, 0.1, f64::from(i) / 100.0).at)
            .collect();
        assert_eq!(ats.len(), 100);
        assert!(
            ats.iter()
                .all(|a| *a > now + 90 * S - MS && *a <= now + 100 * S)
        );
    }

    #[test]
    fn renews_at_the_fraction_of_the_time_left() {
        let c = timing();
        for (left, expected) in [
            (3600 * S, 1800 * S),
            (100 * S, 50 * S),
            (10 * S, 5 * S),
            (2500 * MS, 1250 * MS),
            (2 * S, S),
        ] {
            assert_eq!(delay(&c, token(Some(left))), expected, "left {left:?}");
        }
        // The fraction applies to what is left at arrival, counted from arrival.
        let started = Instant::now();
        let now = started + 5 * S;
        let next = after_fetch(&c, started, now, token(Some(100 * S)));
        assert_eq!(next.at, now + 50 * S);
    }

    #[test]
    fn expired_or_nearly_expired_waits_retry_min() {
        let c = timing();
        for left in [Duration::ZERO, MS, 500 * MS, 1999 * MS] {
            assert_eq!(delay(&c, token(Some(left))), c.retry_min, "left {left:?}");
        }
    }

    #[test]
    fn unknown_expiry_renews_after_the_fixed_interval() {
        let c = timing();
        assert_eq!(delay(&c, token(None)), 30 * S);
        // Not floored by retry_min: the configured interval is taken as it is.
        let short = TokenManagerConfig {
            renew_without_expiry: 10 * MS,
            ..timing()
        };
        assert_eq!(delay(&short, token(None)), 10 * MS);
    }

    #[test]
    fn fraction_outside_zero_to_one_is_clamped() {
        let left = Some(100 * S);
        for (fraction, expected) in [
            (0.0, S),
            (-1.0, S),
            (f64::NAN, S),
            (0.8, 80 * S),
            (1.0, 100 * S),
            (1.5, 100 * S),
            (f64::INFINITY, 100 * S),
        ] {
            let c = TokenManagerConfig {
                renew_fraction: fraction,
                ..timing()
            };
            assert_eq!(delay(&c, token(left)), expected, "fraction {fraction}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_retry_max() {
        let c = timing();
        for (n, secs) in (1..).zip([1, 2, 4, 8, 8, 8]) {
            assert_eq!(delay(&c, failed(n, 1.0)), secs * S, "failure {n}");
        }
        // Zero is read as the first failure; a huge count neither overflows nor panics.
        assert_eq!(delay(&c, failed(0, 1.0)), S);
        assert_eq!(delay(&c, failed(u32::MAX, 1.0)), 8 * S);
    }

    #[test]
    fn backoff_doubles_at_most_sixteen_times() {
        let c = TokenManagerConfig {
            retry_max: Duration::MAX,
            ..timing()
        };
        assert_eq!(delay(&c, failed(16, 1.0)), 32_768 * S);
        assert_eq!(delay(&c, failed(17, 1.0)), 65_536 * S);
        assert_eq!(delay(&c, failed(40, 1.0)), 65_536 * S);
    }

    #[test]
    fn jitter_scales_the_backoff_within_ten_percent() {
        let c = timing();
        assert_eq!(delay(&c, failed(3, 0.9)), 3600 * MS);
        assert_eq!(delay(&c, failed(3, 1.1)), 4400 * MS);
        // Out of range is clamped; NaN or infinity means none.
        assert_eq!(delay(&c, failed(3, 0.0)), 3600 * MS);
        assert_eq!(delay(&c, failed(3, 2.0)), 4400 * MS);
        assert_eq!(delay(&c, failed(3, f64::NAN)), 4 * S);
        assert_eq!(delay(&c, failed(3, f64::INFINITY)), 4 * S);
        // At the cap, the jitter may go past retry_max.
        assert_eq!(delay(&c, failed(20, 1.1)), 8800 * MS);
    }

    #[test]
    fn on_demand_floor_counts_from_the_start_of_the_fetch() {
        let c = TokenManagerConfig {
            min_renew_interval: 10 * S,
            ..timing()
        };
        let started = Instant::now();
        let now = started + 3 * S;
        for outcome in [token(Some(3600 * S)), token(None), failed(1, 1.0)] {
            let next = after_fetch(&c, started, now, outcome);
            assert_eq!(next.not_before, started + 10 * S, "{outcome:?}");
        }
        // A fetch slower than the floor: a demand right after it is served at once.
        let next = after_fetch(&c, started, started + 20 * S, token(Some(3600 * S)));
        assert_eq!(next.on_demand(started + 20 * S), started + 20 * S);
    }

    #[test]
    fn on_demand_waits_for_the_floor_but_never_past_the_timer() {
        let t0 = Instant::now();
        let next = Next {
            at: t0 + 100 * S,
            not_before: t0 + 10 * S,
        };
        assert_eq!(next.on_demand(t0), t0 + 10 * S);
        assert_eq!(next.on_demand(t0 + 9 * S), t0 + 10 * S);
        assert_eq!(next.on_demand(t0 + 10 * S), t0 + 10 * S);
        assert_eq!(next.on_demand(t0 + 50 * S), t0 + 50 * S);
        // The timer is sooner than the floor (a short backoff): the timer wins.
        let soon = Next {
            at: t0 + S,
            not_before: t0 + 10 * S,
        };
        assert_eq!(soon.on_demand(t0), t0 + S);
        // Asked after both have passed: at once.
        assert_eq!(soon.on_demand(t0 + 60 * S), t0 + 60 * S);
    }

    #[test]
    fn huge_durations_are_capped_instead_of_overflowing() {
        let now = Instant::now();
        let c = uniform(Duration::MAX);
        let far = Next {
            at: now + FAR_FUTURE,
            not_before: now + FAR_FUTURE,
        };
        for outcome in [
            token(Some(Duration::MAX)),
            token(Some(Duration::ZERO)),
            token(None),
            failed(u32::MAX, 1.1),
        ] {
            assert_eq!(after_fetch(&c, now, now, outcome), far, "{outcome:?}");
        }
        assert_eq!(after_file_read(&c, now), far);
    }

    #[test]
    fn zero_durations_mean_at_once() {
        let now = Instant::now();
        let c = uniform(Duration::ZERO);
        let at_once = Next {
            at: now,
            not_before: now,
        };
        for outcome in [token(Some(Duration::ZERO)), token(None), failed(5, 1.1)] {
            assert_eq!(after_fetch(&c, now, now, outcome), at_once, "{outcome:?}");
        }
        assert_eq!(after_file_read(&c, now), at_once);
    }

    #[test]
    fn file_polls_on_its_interval_and_serves_demands_after_the_floor() {
        let read_at = Instant::now();
        let next = after_file_read(&timing(), read_at);
        assert_eq!((next.at, next.not_before), (read_at + 5 * S, read_at + S));
        assert_eq!(next.on_demand(read_at + 500 * MS), read_at + S);
        assert_eq!(next.on_demand(read_at + 3 * S), read_at + 3 * S);
        // A floor longer than a poll: the poll interval is the floor.
        let slow = TokenManagerConfig {
            min_renew_interval: 10 * S,
            ..timing()
        };
        let next = after_file_read(&slow, read_at);
        assert_eq!(next.not_before, read_at + 5 * S);
    }
}
