//! The simulator's delivery timer: runs each delivery at its due time, to within tens of
//! microseconds.
//!
//! tokio's timer wheel ticks in whole milliseconds and rounds every deadline up, which
//! added 0–1 ms (about 0.9 ms on average) to every injected delay, so a configured 5 ms
//! arrived after 5.9 ms. One dedicated thread that sleeps on a condition variable until the
//! earliest deadline keeps to the configured delay. Jobs run on that thread inside the
//! runtime's context, so they may spawn tasks; they must be quick.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

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

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// A timer thread; dropping it stops the thread and drops the jobs not yet due.
pub struct DeliveryTimer {
    shared: Arc<Shared>,
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
        Ok(DeliveryTimer { shared })
    }

    /// Runs `job` at `due` (at once if `due` has passed).
    pub fn at(&self, due: Instant, job: impl FnOnce() + Send + 'static) {
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
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for DeliveryTimer {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock().unwrap();
        st.stopped = true;
        st.jobs.clear();
        drop(st);
        self.shared.wake.notify_one();
    }
}

fn run(shared: &Shared) {
    let mut st = shared.state.lock().unwrap();
    loop {
        if st.stopped {
            return;
        }
        let now = Instant::now();
        let next_due = st.jobs.peek().map(|j| j.due);
        st = match next_due {
            None => shared.wake.wait(st).unwrap(),
            Some(due) if due <= now => {
                let job = st.jobs.pop().expect("peeked").job;
                drop(st);
                job();
                shared.state.lock().unwrap()
            }
            Some(due) => shared.wake.wait_timeout(st, due - now).unwrap().0,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn jobs_run_in_due_order_and_not_early() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let timer = DeliveryTimer::start(rt.handle().clone()).unwrap();
        let (tx, rx) = mpsc::channel();
        let t0 = Instant::now();
        for (i, ms) in [30u64, 10, 20, 10].into_iter().enumerate() {
            let tx = tx.clone();
            let due = t0 + Duration::from_millis(ms);
            timer.at(due, move || tx.send((i, due, Instant::now())).unwrap());
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
        timer.at(Instant::now() + Duration::from_millis(50), move || {
            tx.send(()).unwrap()
        });
        drop(timer);
        // The job and its sender are dropped, never run.
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(1)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
