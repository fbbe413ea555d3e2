//! The simulator's delivery timer: runs each delivery at its due time, to within tens of
//! microseconds.
//!
//! tokio's timer wheel ticks in whole milliseconds and rounds every deadline up, which
//! added 0–1 ms (about 0.9 ms on average) to every injected delay, so a configured 5 ms
//! arrived after 5.9 ms. One dedicated thread that sleeps on a condition variable until the
//! earliest deadline keeps to the configured delay. Jobs run on that thread inside the
//! runtime's context, so they may spawn tasks; they must be quick.
//!
//! Tests on paused tokio time use [`DeliveryTimer::tokio`] instead: one task on tokio's
//! clock, with the same ordering, so `tokio::time::pause` drives the deliveries too (the
//! thread follows the real clock and would deliver while virtual time stands still).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send>;

struct Scheduled {
    due: Instant,
    seq: u64,
    job: Job,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed, so the max-heap pops the earliest (and, at equal times, the first) job.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

#[derive(Default)]
struct State {
    jobs: BinaryHeap<Scheduled>,
    seq: u64,
    stopped: bool,
}

/// What the timer does next.
enum Next {
    Stop,
    Run(Job),
    Wait(Option<Instant>),
}

impl State {
    fn next(&mut self, now: Instant) -> Next {
        if self.stopped {
            return Next::Stop;
        }
        match self.jobs.peek().map(|j| j.due) {
            Some(due) if due <= now => Next::Run(self.jobs.pop().expect("peeked").job),
            due => Next::Wait(due),
        }
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Wakes the task of [`DeliveryTimer::tokio`].
    wake_task: tokio::sync::Notify,
}

impl Shared {
    fn wake(&self) {
        self.wake.notify_one();
        self.wake_task.notify_one();
    }
}

/// Which clock the timer follows.
#[derive(Clone, Copy)]
enum Clock {
    /// The real clock, on a dedicated thread.
    Thread,
    #[cfg(test)]
    /// tokio's clock (paused in tests), in a task.
    Tokio,
}

/// A timer thread (or task); dropping it stops it and drops the jobs not yet due.
pub struct DeliveryTimer {
    shared: Arc<Shared>,
    clock: Clock,
}

impl DeliveryTimer {
    /// Starts the thread. Jobs run inside `runtime`'s context.
    pub fn start(runtime: tokio::runtime::Handle) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::Builder::new()
            .name("sim-timer".into())
            .spawn(move || {
                let _context = runtime.enter();
                run(&s);
            })?;
        Ok(DeliveryTimer {
            shared,
            clock: Clock::Thread,
        })
    }

    #[cfg(test)]
    /// A timer on tokio's clock, for tests on paused time; whole milliseconds, like every
    /// tokio timer. Must be called inside a tokio runtime.
    pub fn tokio() -> Self {
        let shared = Arc::new(Shared::default());
        tokio::spawn(run_on_tokio(shared.clone()));
        DeliveryTimer {
            shared,
            clock: Clock::Tokio,
        }
    }

    /// Runs `job` once `delay` has passed from now (at once for no delay), on the timer's
    /// clock. Jobs due at the same time run in the order they were added.
    pub fn after(&self, delay: Duration, job: impl FnOnce() + Send + 'static) {
        let due = match self.clock {
            Clock::Thread => Instant::now(),
            #[cfg(test)]
            Clock::Tokio => tokio_now(),
        } + delay;
        let mut st = self.shared.state.lock().unwrap();
        st.seq += 1;
        let seq = st.seq;
        let earliest = st.jobs.peek().is_none_or(|j| due < j.due);
        st.jobs.push(Scheduled {
            due,
            seq,
            job: Box::new(job),
        });
        drop(st);
        if earliest {
            self.shared.wake();
        }
    }
}

impl Drop for DeliveryTimer {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock().unwrap();
        st.stopped = true;
        st.jobs.clear();
        drop(st);
        self.shared.wake();
    }
}

fn run(shared: &Shared) {
    let mut st = shared.state.lock().unwrap();
    loop {
        let now = Instant::now();
        st = match st.next(now) {
            Next::Stop => return,
            Next::Run(job) => {
                drop(st);
                job();
                shared.state.lock().unwrap()
            }
            Next::Wait(None) => shared.wake.wait(st).unwrap(),
            Next::Wait(Some(due)) => shared.wake.wait_timeout(st, due - now).unwrap().0,
        };
    }
}

/// tokio's now, as the `std` instant its (possibly paused) clock stands at.
#[cfg(test)]
fn tokio_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
async fn run_on_tokio(shared: Arc<Shared>) {
    loop {
        // Created before looking, so a job added meanwhile still wakes this task.
        let woken = shared.wake_task.notified();
        let next = shared.state.lock().unwrap().next(tokio_now());
        match next {
            Next::Stop => return,
            Next::Run(job) => job(),
            Next::Wait(None) => woken.await,
            Next::Wait(Some(due)) => {
                let due = tokio::time::Instant::from_std(due);
                tokio::select! {
                    _ = woken => {}
                    _ = tokio::time::sleep_until(due) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn jobs_run_in_due_order_and_not_early() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let timer = DeliveryTimer::start(rt.handle().clone()).unwrap();
        let (tx, rx) = mpsc::channel();
        for (i, ms) in [30u64, 10, 20, 10].into_iter().enumerate() {
            let tx = tx.clone();
            let delay = Duration::from_millis(ms);
            let due = Instant::now() + delay;
            timer.after(delay, move || tx.send((i, due, Instant::now())).unwrap());
        }
        let got: Vec<_> = (0..4)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        let order: Vec<usize> = got.iter().map(|g| g.0).collect();
        assert_eq!(order, [1, 3, 2, 0]);
        assert!(got.iter().all(|(_, due, ran)| ran >= due));
    }

    #[test]
    fn dropping_the_timer_drops_pending_jobs() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let timer = DeliveryTimer::start(rt.handle().clone()).unwrap();
        let (tx, rx) = mpsc::channel::<()>();
        timer.after(Duration::from_millis(50), move || tx.send(()).unwrap());
        drop(timer);
        // The job and its sender are dropped, never run.
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(1)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn on_tokio_time_jobs_run_in_due_order_at_their_virtual_due_time() {
        let timer = DeliveryTimer::tokio();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let t0 = tokio::time::Instant::now();
        // An hour: only a timer on the paused clock delivers that within the test.
        for (i, ms) in [30u64, 10, 3_600_000, 20, 10].into_iter().enumerate() {
            let tx = tx.clone();
            timer.after(Duration::from_millis(ms), move || {
                tx.send((i, tokio::time::Instant::now())).unwrap()
            });
        }
        let mut got = vec![];
        for _ in 0..5 {
            let (i, at) = rx.recv().await.unwrap();
            got.push((i, (at - t0).as_millis()));
        }
        assert_eq!(got, [(1, 10), (4, 10), (3, 20), (0, 30), (2, 3_600_000)]);
    }

    #[tokio::test(start_paused = true)]
    async fn on_tokio_time_dropping_the_timer_drops_pending_jobs() {
        let timer = DeliveryTimer::tokio();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        timer.after(Duration::from_millis(50), move || tx.send(()).unwrap());
        drop(timer);
        // The job and its sender are dropped, never run.
        assert_eq!(rx.recv().await, None);
    }
}
