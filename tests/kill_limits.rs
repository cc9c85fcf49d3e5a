//! The limits of kills: shutdown does not wait for frozen threads, and past `max_frozen`
//! a hard kill is refused and the task runs on.
//!
//! Every test runs in a child process (`common::in_child`): they freeze threads, overflow
//! stacks and install signal handlers. They assert outcomes and counts, never timings.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::killing::{good_tasks_still_run, killed, SHORT};
use common::{builder, in_child_alone, join};
use microsched::{Budget, KillHow};

#[test]
fn shutdown_does_not_wait_for_frozen_threads() {
    in_child_alone("shutdown_does_not_wait_for_frozen_threads", || {
        let pool = builder(1)
            .default_budget(Budget::cpu(SHORT))
            .build()
            .unwrap();
        let runaways: Vec<_> = (0..4)
            .map(|_| {
                pool.spawn(|| {
                    #[allow(clippy::empty_loop)]
                    loop {}
                })
            })
            .collect();
        for h in runaways {
            assert_eq!(killed(join(h)).how(), KillHow::Frozen);
        }
        let counter = Arc::new(AtomicU64::new(0));
        let c = counter.clone();
        let h = pool.spawn(move || c.fetch_add(1, Ordering::SeqCst));
        assert_eq!(join(h).unwrap(), 0);
        // Returns: the four frozen threads are detached, not joined.
        pool.shutdown();
        assert_eq!(pool.stats().frozen_threads, 4);
    });
}

/// Past `max_frozen`, a hard kill is refused: the task runs on (demoted, its cancel flag
/// set) and its handle resolves when it returns.
#[test]
fn past_max_frozen_a_hard_kill_is_refused_and_the_task_runs_on() {
    in_child_alone(
        "past_max_frozen_a_hard_kill_is_refused_and_the_task_runs_on",
        || {
            let pool = builder(1).max_frozen(1).build().unwrap();
            let budget = Budget::cpu(SHORT).grace(Duration::from_millis(1));
            let first = pool.spawn_with(budget, || {
                #[allow(clippy::empty_loop)]
                loop {}
            });
            assert_eq!(killed(join(first)).how(), KillHow::Frozen);
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let s = stop.clone();
            let second = pool.spawn_with(budget, move || {
                let mut n = 0u64;
                while !s.load(Ordering::Relaxed) {
                    n = black_box(n.wrapping_add(1));
                }
                n
            });
            while pool.stats().kills_refused == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            good_tasks_still_run(&pool, 100);
            stop.store(true, Ordering::Relaxed);
            // It was cancelled (no checkpoint to see it) and not frozen: it returned.
            assert!(join(second).unwrap() > 0);
            let stats = pool.stats();
            assert_eq!(
                (stats.frozen, stats.frozen_threads, stats.kills_refused),
                (1, 1, 1)
            );
            pool.shutdown();
        },
    );
}
