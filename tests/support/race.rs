//! Races on real threads, for the tests of what must happen once however many callers
//! race: a consume, a claim, an idempotency key.

use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// Where the racers wait for each other before each round: a barrier that those already
/// there leave within nanoseconds of each other (they spin a while before they sleep:
/// threads woken by a condition variable start microseconds apart, longer than most races
/// last), and that a racer that panicked opens for good, so that the others finish and
/// the panic is reported.
struct Meeting {
    racers: usize,
    /// The rounds begun; changed only under `state`'s lock.
    round: AtomicUsize,
    abandoned: AtomicBool,
    /// How many wait for the next round.
    state: Mutex<usize>,
    all_here: Condvar,
}

/// How long a racer spins before it sleeps (tens of microseconds).
const SPINS: u32 = 20_000;

impl Meeting {
    fn new(racers: usize) -> Self {
        Self {
            racers,
            round: AtomicUsize::new(0),
            abandoned: AtomicBool::new(false),
            state: Mutex::new(0),
            all_here: Condvar::new(),
        }
    }

    /// Waits until every racer is here.
    fn meet(&self) {
        let mut waiting = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let round = self.round.load(Ordering::SeqCst);
        *waiting += 1;
        if *waiting == self.racers {
            *waiting = 0;
            self.round.store(round + 1, Ordering::SeqCst);
            drop(waiting);
            self.all_here.notify_all();
            return;
        }
        drop(waiting);
        let here = || self.round.load(Ordering::SeqCst) == round;
        let open = || self.abandoned.load(Ordering::SeqCst);
        for _ in 0..SPINS {
            if !here() || open() {
                return;
            }
            std::hint::spin_loop();
        }
        let mut waiting = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while here() && !open() {
            waiting = self
                .all_here
                .wait(waiting)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Lets every racer through from now on.
    fn abandon(&self) {
        let _waiting = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.abandoned.store(true, Ordering::SeqCst);
        self.all_here.notify_all();
    }
}
