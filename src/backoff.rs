//! Capped exponential backoff for reconnects, written once for every place that retries a
//! broker: the AMQP link, the pull consumers and the emulator's session.
//!
//! A failing broker must not be hammered, yet a short blip should cost little: the delay
//! starts small, doubles after every failure up to a cap, and drops back to the start as
//! soon as the caller succeeds again ([`Backoff::reset`]).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The first reconnect delay after a success.
pub const RECONNECT_START: Duration = Duration::from_millis(500);
/// The longest reconnect delay: a broker back from an outage is found within this, or
/// within the probe interval when that is shorter ([`Backoff::reconnect_within`]).
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// The delays of one retrying caller.
#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Delays from `start`, doubling, never above `max`.
    pub fn new(start: Duration, max: Duration) -> Self {
        Backoff {
            start,
            max,
            current: start.min(max),
        }
    }

    /// The reconnect backoff of the link and the pull consumers, when no probe interval
    /// bounds it.
    pub fn reconnect() -> Self {
        Backoff::new(RECONNECT_START, RECONNECT_MAX)
    }

    /// The reconnect backoff of what a probe loop of `interval` waits for: its delay grows
    /// to the interval at most (and never beyond [`RECONNECT_MAX`], nor under
    /// [`RECONNECT_START`]), so a broker back from an outage is found within one interval,
    /// and probes succeed again within two. A broker that stays down is tried once an
    /// interval, as often as the probes would try it anyway.
    pub fn reconnect_within(interval: Duration) -> Self {
        Backoff::new(
            RECONNECT_START,
            interval.clamp(RECONNECT_START, RECONNECT_MAX),
        )
    }

    /// The delay that [`Backoff::next_delay`] returns next, for a log line before the wait.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// The delay to wait after this failure; the one after it is twice as long (capped).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        delay
    }

    /// Back to the start delay, after a success.
    pub fn reset(&mut self) {
        self.current = self.start.min(self.max);
    }

    /// Sleeps for the next delay; `false` when `stop` fired first, so the caller ends
    /// instead of retrying.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Tokio's timer rounds a deadline up to its next millisecond tick.
    fn assert_waited(since: Instant, want: Duration) {
        let waited = since.elapsed();
        assert!(
            want <= waited && waited <= want + ms(1),
            "waited {waited:?}, want {want:?}"
        );
    }

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::reconnect();
        let got: Vec<_> = (0..9).map(|_| b.next_delay()).collect();
        let want = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000].map(ms);
        assert_eq!(got, want);
        b.reset();
        assert_eq!(b.current(), ms(500));
        assert_eq!(b.next_delay(), ms(500));
        assert_eq!(b.next_delay(), ms(1000));
    }

    #[test]
    fn the_probe_interval_caps_the_reconnect_delay() {
        let delays = |interval| {
            let mut b = Backoff::reconnect_within(interval);
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(
            delays(ms(5000)),
            [500, 1000, 2000, 4000, 5000, 5000, 5000, 5000].map(ms)
        );
        // Never faster than the start, never slower than the ordinary cap.
        assert_eq!(delays(ms(100)), [500; 8].map(ms));
        assert_eq!(delays(Duration::from_secs(300)), {
            let mut b = Backoff::reconnect();
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        });
    }

    #[test]
    fn a_start_above_the_cap_is_capped() {
        let mut b = Backoff::new(ms(900), ms(300));
        assert_eq!(b.next_delay(), ms(300));
        b.reset();
        assert_eq!(b.next_delay(), ms(300));
    }

    #[tokio::test]
    async fn wait_sleeps_for_each_delay_in_turn() {
        tokio::time::pause();
        let stop = CancellationToken::new();
        let mut b = Backoff::new(ms(500), ms(1500));
        for want in [500, 1000, 1500, 1500].map(ms) {
            let before = Instant::now();
            assert!(b.wait(&stop).await);
            assert_waited(before, want);
        }
    }

    #[tokio::test]
    async fn wait_ends_early_when_stopped() {
        tokio::time::pause();
        let stop = CancellationToken::new();
        let mut b = Backoff::reconnect();
        b.next_delay();
        let before = Instant::now();
        let canceller = {
            let stop = stop.clone();
            tokio::spawn(async move {
                // Virtual time (paused): no real wait.
                tokio::time::sleep(ms(200)).await;
                stop.cancel();
            })
        };
        assert!(!b.wait(&stop).await);
        assert_waited(before, ms(200));
        canceller.await.unwrap();
        stop.cancel();
        assert!(!b.wait(&stop).await);
        assert_waited(before, ms(200));
    }
}
