//! Cancels and deadlines: `cancel()` stops queued and running tasks; a cancelled mutex
//! holder poisons its mutex (a frozen one keeps it); a task asleep past its wall deadline
//! and one unwinding slowly from its own panic are frozen; a freeze inside an inline join
//! ends every task on the thread.
//!
//! Every test runs in a child process (`common::in_child`): they freeze threads, overflow
//! stacks and install signal handlers. They assert outcomes and counts, never timings.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::killing::{good_tasks_still_run, killed, pool, SHORT};
use common::{in_child_alone, join, quiet_panics};
use microsched::{checkpoint, Budget, KillHow, KillReason};

#[test]
fn a_mutex_holder_poisons_it_when_cancelled_and_keeps_it_when_frozen() {
    in_child_alone(
        "a_mutex_holder_poisons_it_when_cancelled_and_keeps_it_when_frozen",
        || {
            quiet_panics();
            let pool = pool(2);
            // Cancelled: it unwinds from its checkpoint while holding the guard.
            let shared = Arc::new(Mutex::new(0u64));
            let s = shared.clone();
            let holder = pool.spawn_with(Budget::cpu(SHORT), move || {
                let mut guard = s.lock().unwrap();
                loop {
                    *guard += 1;
                    checkpoint();
                }
            });
            let k = killed(join(holder));
            assert_eq!(k.how(), KillHow::Cancelled);
            let s = shared.clone();
            let later = pool.spawn(move || match s.lock() {
                Ok(_) => panic!("expected: a poisoned mutex"),
                Err(poisoned) => *poisoned.into_inner() > 0,
            });
            assert!(
                join(later).unwrap(),
                "the later task reads the data through the poison"
            );

            // Frozen: the guard is never dropped, the mutex stays locked for good.
            let shared = Arc::new(Mutex::new(0u64));
            let s = shared.clone();
            let holder = pool.spawn_with(Budget::cpu(SHORT).grace(Duration::ZERO), move || {
                let mut guard = s.lock().unwrap();
                loop {
                    *guard = black_box(guard.wrapping_add(1));
                }
            });
            let k = killed(join(holder));
            assert_eq!(k.how(), KillHow::Frozen);
            let s = shared.clone();
            let tries = pool
                .spawn(move || matches!(s.try_lock(), Err(std::sync::TryLockError::WouldBlock)));
            assert!(join(tries).unwrap(), "try_lock sees the mutex still held");
            // A task that blocks on it waits in a futex: freezable when its budget ends.
            let s = shared.clone();
            let blocked = pool.spawn_with(Budget::wall(SHORT).grace(Duration::ZERO), move || {
                *s.lock().unwrap() + 1
            });
            let k = killed(join(blocked));
            assert_eq!(
                (k.reason(), k.how()),
                (KillReason::WallDeadline, KillHow::Frozen)
            );
            good_tasks_still_run(&pool, 100);
            pool.shutdown();
        },
    );
}

#[test]
fn a_task_sleeping_past_its_wall_deadline_is_frozen() {
    in_child_alone("a_task_sleeping_past_its_wall_deadline_is_frozen", || {
        let pool = pool(1);
        let sleeper = pool.spawn_with(Budget::wall(SHORT).grace(Duration::from_millis(2)), || {
            std::thread::sleep(Duration::from_secs(3600));
        });
        good_tasks_still_run(&pool, 100);
        let k = killed(join(sleeper));
        assert_eq!(
            (k.reason(), k.how()),
            (KillReason::WallDeadline, KillHow::Frozen)
        );
        assert!(
            k.cpu_time().unwrap() < SHORT,
            "a sleeper uses almost no CPU"
        );
        pool.shutdown();
    });
}

#[test]
fn a_task_unwinding_slowly_from_its_own_panic_is_frozen_after_the_maximum_deferral() {
    in_child_alone(
        "a_task_unwinding_slowly_from_its_own_panic_is_frozen_after_the_maximum_deferral",
        || {
            quiet_panics();
            struct Slow;
            impl Drop for Slow {
                fn drop(&mut self) {
                    // A destructor that never ends, calling checkpoint: which must not
                    // start a second unwind (that would abort the process).
                    let mut x = 0u64;
                    loop {
                        x = black_box(x.wrapping_add(1));
                        checkpoint();
                    }
                }
            }
            let pool = pool(1);
            let h = pool.spawn_with(Budget::cpu(SHORT).grace(Duration::ZERO), || {
                let _slow = Slow;
                panic!("expected: a panic with a slow destructor");
            });
            good_tasks_still_run(&pool, 100);
            let k = killed(join(h));
            assert_eq!(
                (k.reason(), k.how()),
                (KillReason::CpuBudget, KillHow::Frozen)
            );
            let stats = pool.stats();
            assert!(stats.freeze_deferred_panicking > 0, "{stats:?}");
            good_tasks_still_run(&pool, 100);
            pool.shutdown();
        },
    );
}

#[test]
fn cancel_stops_queued_and_running_tasks() {
    in_child_alone("cancel_stops_queued_and_running_tasks", || {
        let pool = pool(1);
        let ran = Arc::new(AtomicUsize::new(0));
        // Cooperative: unwinds at its checkpoint.
        let r = ran.clone();
        let polite = pool.spawn(move || {
            r.fetch_add(1, Ordering::SeqCst);
            loop {
                checkpoint();
                std::hint::spin_loop();
            }
        });
        while ran.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        polite.cancel();
        let k = killed(join(polite));
        assert_eq!(
            (k.reason(), k.how()),
            (KillReason::Cancelled, KillHow::Cancelled)
        );
        // A task cancelled while queued never runs. The slot is held by a task blocked on
        // a channel (a blocked task is not handed off), so the next one stays queued.
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let blocker = pool.spawn(move || blocked.recv().is_ok());
        let r = ran.clone();
        let queued = pool.spawn(move || {
            r.fetch_add(100, Ordering::SeqCst);
        });
        queued.cancel();
        release.send(()).unwrap();
        assert!(join(blocker).unwrap());
        let k = killed(join(queued));
        assert_eq!(k.reason(), KillReason::Cancelled);
        // A task with no checkpoint and no budget: frozen after the default grace.
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        let rude = pool.spawn(move || {
            s.store(1, Ordering::SeqCst);
            #[allow(clippy::empty_loop)]
            loop {}
        });
        while started.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        rude.cancel();
        let k = killed(join(rude));
        assert_eq!(
            (k.reason(), k.how()),
            (KillReason::Cancelled, KillHow::Frozen)
        );
        // Cancelling a finished task changes nothing.
        let done = pool.spawn(|| 5);
        while !done.is_finished() {
            std::thread::yield_now();
        }
        done.cancel();
        assert_eq!(join(done).unwrap(), 5);
        assert!(
            ran.load(Ordering::SeqCst) < 100,
            "the cancelled queued task ran"
        );
        pool.shutdown();
    });
}

/// A task frozen while it runs inside another through an inline join: both resolve
/// (frozen), and shutdown does not wait for either.
#[test]
fn a_freeze_inside_an_inline_join_ends_every_task_on_the_thread() {
    in_child_alone(
        "a_freeze_inside_an_inline_join_ends_every_task_on_the_thread",
        || {
            let pool = pool(1);
            let handle = pool.handle();
            let outer = pool.spawn_with(Budget::wall(Duration::from_secs(3600)), move || {
                // Queued on this slot, so the join runs it right here.
                let inner = handle.spawn_with(Budget::cpu(SHORT), || {
                    #[allow(clippy::empty_loop)]
                    loop {}
                });
                inner.join().map(|_: ()| 1u32)
            });
            let k = killed(join(outer));
            assert_eq!(
                (k.reason(), k.how()),
                (KillReason::CpuBudget, KillHow::Frozen)
            );
            good_tasks_still_run(&pool, 100);
            let stats = pool.stats();
            assert_eq!((stats.frozen, stats.frozen_threads), (2, 1), "{stats:?}");
            pool.shutdown();
        },
    );
}
