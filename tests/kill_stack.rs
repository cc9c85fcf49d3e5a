//! Stack overflows: a task's unbounded recursion freezes it with `StackOverflow` and the
//! process lives; another thread's overflow still reaches std's report.
//!
//! Every test runs in a child process (`common::in_child`): they freeze threads, overflow
//! stacks and install signal handlers. They assert outcomes and counts, never timings.

mod common;

use common::killing::{good_tasks_still_run, killed, pool, recurse};
use common::{in_child, join};
use microsched::{KillHow, KillReason};

#[test]
fn unbounded_recursion_freezes_with_stack_overflow_and_the_process_lives() {
    in_child(
        "unbounded_recursion_freezes_with_stack_overflow_and_the_process_lives",
        || {
            let pool = pool(1);
            let deep: Vec<_> = (0..3).map(|i| pool.spawn(move || recurse(i))).collect();
            good_tasks_still_run(&pool, 100);
            for h in deep {
                let k = killed(join(h));
                assert_eq!(
                    (k.reason(), k.how()),
                    (KillReason::StackOverflow, KillHow::Frozen)
                );
            }
            let stats = pool.stats();
            assert_eq!((stats.kills_stack_overflow, stats.frozen_threads), (3, 3));
            good_tasks_still_run(&pool, 100);
            pool.shutdown();
        },
    );
}

/// A stack overflow on a thread that is not the pool's still gets std's report and
/// aborts: only a pool task's overflow is turned into a freeze.
#[test]
fn other_threads_stack_overflow_still_reaches_std() {
    const TEST: &str = "other_threads_stack_overflow_still_reaches_std";
    if std::env::var("MICROSCHED_CHILD_TEST").as_deref() == Ok(TEST) {
        let _pool = pool(1);
        std::thread::Builder::new()
            .name("not-ours".into())
            .spawn(|| recurse(0))
            .unwrap()
            .join()
            .unwrap();
        return;
    }
    let output = common::child_output(TEST, "MICROSCHED_CHILD_TEST");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("'not-ours'") && stderr.contains("overflowed its stack"),
        "{stderr}"
    );
}
