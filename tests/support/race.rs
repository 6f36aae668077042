//! Races on real threads, for the tests of what must happen once however many callers
//! race: a consume, a claim, an idempotency key.

use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};

/// Runs `rounds` rounds of a race between `racers` threads: in round `r` each thread `n`
/// runs `attempt(r, n)`, all of them at once, and the next round starts once every thread
/// has finished this one. What the attempts returned, by round then thread.
///
/// Threads, not tasks: futures joined on one task run one after the other between awaits
/// (a test of them passes without any lock), and tasks spawned together mostly queue on
/// the worker that woke them. The threads meet before each round and are woken together;
/// a lock-free store loses a race only when two threads pass through a window a few
/// microseconds wide at once, hence the rounds. Call it from a multi-threaded runtime,
/// which drives the attempts' I/O.
pub async fn race<T, F, A>(racers: usize, rounds: usize, attempt: A) -> Vec<Vec<T>>
where
    A: Fn(usize, usize) -> F + Send + Sync + 'static,
    F: Future<Output = T>,
    T: Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    let attempt = Arc::new(attempt);
    let meeting = Arc::new(Meeting::new(racers));
    let threads: Vec<_> = (0..racers)
        .map(|n| {
            let (runtime, attempt, meeting) = (runtime.clone(), attempt.clone(), meeting.clone());
            std::thread::Builder::new()
                .name(format!("racer {n}"))
                .spawn(move || {
                    let run = catch_unwind(AssertUnwindSafe(|| {
                        let mut outputs = Vec::with_capacity(rounds);
                        for round in 0..rounds {
                            meeting.meet();
                            outputs.push(runtime.block_on(attempt(round, n)));
                        }
                        outputs
                    }));
                    run.unwrap_or_else(|panic| {
                        meeting.abandon();
                        resume_unwind(panic)
                    })
                })
                .expect("start a racer")
        })
        .collect();
    let by_racer: Vec<Vec<T>> = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|panic| resume_unwind(panic)))
            .collect()
    })
    .await
    .unwrap_or_else(|e| resume_unwind(e.into_panic()));
    let mut by_round: Vec<Vec<T>> = (0..rounds).map(|_| Vec::with_capacity(racers)).collect();
    for outputs in by_racer {
        for (round, output) in outputs.into_iter().enumerate() {
            by_round[round].push(output);
        }
    }
    by_round
}

/// Where the racers wait for each other before each round (a barrier that a racer that
/// panicked can open for good, so that the others finish and the panic is reported).
struct Meeting {
    racers: usize,
    state: Mutex<Arrivals>,
    all_here: Condvar,
}

#[derive(Default)]
struct Arrivals {
    waiting: usize,
    round: usize,
    abandoned: bool,
}

impl Meeting {
    fn new(racers: usize) -> Self {
        Self {
            racers,
            state: Mutex::new(Arrivals::default()),
            all_here: Condvar::new(),
        }
    }

    /// Waits until every racer is here, then wakes them all at once.
    fn meet(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.waiting += 1;
        if state.waiting == self.racers {
            state.waiting = 0;
            state.round += 1;
            self.all_here.notify_all();
            return;
        }
        let round = state.round;
        while state.round == round && !state.abandoned {
            state = self.all_here.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Lets every racer through from now on.
    fn abandon(&self) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .abandoned = true;
        self.all_here.notify_all();
    }
}
