//! Races on real threads, for the tests of what must happen once however many callers
//! race: a consume, a claim, an idempotency key.

use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Runs `rounds` rounds of a race between `racers` threads: in round `r` each thread `n`
/// runs `attempt(r, n)`, all of them at the same instant, and the next round starts once
/// every thread has finished this one. What the attempts returned, by round then thread.
///
/// Threads, not tasks: futures joined on one task run one after the other between awaits
/// (a test of them passes without any lock), and tasks spawned together mostly queue on
/// the worker that woke them. The threads meet at a spinning barrier before each round, so
/// that they leave it within nanoseconds of each other: threads woken by a condition
/// variable start microseconds apart, longer than a lock-free store takes to lose most
/// races. Call it from a multi-threaded runtime, which drives the attempts' I/O.
pub async fn race<T, F, A>(racers: usize, rounds: usize, attempt: A) -> Vec<Vec<T>>
where
    A: Fn(usize, usize) -> F + Send + Sync + 'static,
    F: Future<Output = T>,
    T: Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    let attempt = Arc::new(attempt);
    let arrived = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..racers)
        .map(|n| {
            let (runtime, attempt, arrived) = (runtime.clone(), attempt.clone(), arrived.clone());
            std::thread::Builder::new()
                .name(format!("racer {n}"))
                .spawn(move || {
                    let run = catch_unwind(AssertUnwindSafe(|| {
                        let mut outputs = Vec::with_capacity(rounds);
                        for round in 0..rounds {
                            arrived.fetch_add(1, Ordering::SeqCst);
                            meet(&arrived, (round + 1) * racers);
                            outputs.push(runtime.block_on(attempt(round, n)));
                        }
                        outputs
                    }));
                    run.unwrap_or_else(|panic| {
                        // Lets the others through every barrier to come, then fails.
                        arrived.store(usize::MAX / 2, Ordering::SeqCst);
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

/// Waits until `all` arrivals were counted: spinning, then (a thread that waits longer
/// waits for one that is not running) yielding its processor.
fn meet(arrived: &AtomicUsize, all: usize) {
    let mut spins = 0u32;
    while arrived.load(Ordering::SeqCst) < all {
        if spins < 10_000 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
}
