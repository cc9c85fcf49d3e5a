//! Regression: a task spawned just before `shutdown` could be stranded in the global queue.
//!
//! A runner looked for work (found none), then read the pool's mode, saw `DRAIN` and
//! exited. A spawn that landed between the two looks was accepted, but every runner had
//! already decided to exit, so `shutdown` returned with the task still queued and its
//! handle never resolved. Runners now read the mode *before* looking for work, so an exit
//! decision always follows a look that saw every task accepted before the close.
//! (Found by `proptest_mix` as a hang after `shutdown` returned.)

mod common;

use std::time::Duration;

#[test]
fn tasks_spawned_right_before_shutdown_all_run() {
    for round in 0..10_000u32 {
        // Busy runners finishing tasks while the last spawns land: the window was between a
        // runner's empty look and its mode check.
        let spin = if round % 2 == 0 {
            Duration::ZERO
        } else {
            microsched::DEFAULT_SPIN
        };
        // The drain protocol is what is under test; preemption only adds threads per pool.
        let pool = common::builder(2)
            .spin(spin)
            .preemption(false)
            .build()
            .unwrap();
        let n = 1 + round % 16;
        let handles: Vec<_> = (0..n).map(|i| pool.spawn(move || round + i)).collect();
        pool.shutdown();
        for (i, h) in handles.into_iter().enumerate() {
            assert!(
                h.is_finished(),
                "round {round}: task {i} still queued after shutdown returned"
            );
            assert_eq!(common::join(h).unwrap(), round + i as u32);
        }
    }
}
