//! Keep this test forever: it is what catches anyone who adds same-thread task switching.
//!
//! Thread-local state (`RefCell`, `Cell`, `Rc` counts) is only sound if a thread never
//! switches between two tasks asynchronously (the crate docs' "Soundness"). Here tasks hammer
//! thread-locals while preemption ticks land inside them at least 10,000 times and slots
//! are handed off at least 1,000 times; a second task entering the same thread's state
//! mid-update would show as a violation.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{constantly_preempted, in_child, join};

thread_local! {
    static BUSY: Cell<bool> = const { Cell::new(false) };
    static LOG: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    static SHARED: Rc<u64> = Rc::new(7);
}

static VIOLATIONS: AtomicU64 = AtomicU64::new(0);

fn violation() {
    VIOLATIONS.fetch_add(1, Ordering::Relaxed);
}

/// Updates thread-local state in steps that must never interleave with another task's.
fn hammer(wall: Duration, seed: u64) -> u64 {
    let start = Instant::now();
    let mut sum = seed;
    while start.elapsed() < wall {
        for i in 0..64u64 {
            if BUSY.with(|b| b.replace(true)) {
                violation();
            }
            LOG.with(|log| match log.try_borrow_mut() {
                Err(_) => violation(),
                Ok(mut log) => {
                    let len = log.len();
                    log.push(sum);
                    log.push(i);
                    sum = sum.wrapping_add(log[len] ^ log[len + 1]);
                    if log.len() != len + 2 {
                        violation();
                    }
                    log.truncate(len);
                }
            });
            SHARED.with(|rc| {
                let before = Rc::strong_count(rc);
                let extra = rc.clone();
                if Rc::strong_count(rc) != before + 1 {
                    violation();
                }
                drop(extra);
                if Rc::strong_count(rc) != before {
                    violation();
                }
            });
            BUSY.with(|b| b.set(false));
        }
    }
    sum
}

#[test]
fn thread_locals_stay_consistent_under_ticks_and_handoffs() {
    in_child(
        "thread_locals_stay_consistent_under_ticks_and_handoffs",
        || {
            let pool = constantly_preempted(2);
            let deadline = Instant::now() + Duration::from_secs(40);
            let mut batches = 0;
            loop {
                // Half the tasks outlive the quantum (handoffs), half end inside it.
                let tasks: Vec<_> = (0..400u64)
                    .map(|i| {
                        let wall = Duration::from_micros(if i % 2 == 0 { 400 } else { 60 });
                        pool.spawn(move || hammer(wall, i))
                    })
                    .collect();
                for task in tasks {
                    join(task).unwrap();
                }
                batches += 1;
                let stats = pool.stats();
                if stats.ticks >= 10_000 && stats.handoffs >= 1_000 {
                    eprintln!(
                        "{batches} batches: {} ticks, {} handoffs",
                        stats.ticks, stats.handoffs
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "too few ticks or handoffs after {batches} batches: {stats:?}"
                );
            }
            pool.shutdown();
            assert_eq!(VIOLATIONS.load(Ordering::Relaxed), 0);
        },
    );
}
