//! The task and join protocol of `src/task/mod.rs`, explored by loom: every handle resolves
//! exactly once with the task's own outcome, and a join never sleeps through a completion.
#![cfg(loom)]

use std::time::Duration;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use microsched::__loom::{inline_task, new_task, SlotCounters};

#[test]
fn join_sees_the_value_whether_it_waits_or_not() {
    loom::model(|| {
        let (task, handle) = new_task(|| 7u32, 0);
        let runner = thread::spawn(move || {
            task.run(&SlotCounters::default());
        });
        assert_eq!(handle.join().unwrap(), 7);
        runner.join().unwrap();
    });
}

#[test]
fn a_rejected_task_resolves_its_handle_with_shutdown() {
    loom::model(|| {
        let (task, handle) = new_task(|| 7u32, 0);
        let rejecter = thread::spawn(move || task.reject());
        assert!(handle.join().unwrap_err().is_shutdown());
        rejecter.join().unwrap();
    });
}

#[test]
fn a_timed_out_join_can_be_joined_again_from_another_thread() {
    loom::model(|| {
        let (task, handle) = new_task(|| 11u32, 0);
        let runner = thread::spawn(move || {
            task.run(&SlotCounters::default());
        });
        // A zero timeout leaves the WAITING bit set and hands the handle back; the second
        // join, on another thread, must still be woken.
        let value = match handle.join_timeout(Duration::ZERO) {
            Ok(result) => result.unwrap(),
            Err(handle) => thread::spawn(move || handle.join().unwrap())
                .join()
                .unwrap(),
        };
        assert_eq!(value, 11);
        runner.join().unwrap();
    });
}

#[test]
fn a_panic_reaches_the_joiner_and_is_counted() {
    loom::model(|| {
        let (task, handle) = new_task(|| -> u32 { std::panic::panic_any(5u8) }, 0);
        let counters = Arc::new(SlotCounters::default());
        let runner = {
            let counters = counters.clone();
            thread::spawn(move || task.run(&counters))
        };
        let err = handle.join().unwrap_err();
        assert_eq!(err.into_panic().unwrap().downcast_ref::<u8>(), Some(&5));
        assert!(
            runner.join().unwrap(),
            "the queue entry won the claim and ran it"
        );
        assert_eq!(counters.accepted_and_finished().1, 1);
    });
}

#[test]
fn a_joiner_running_the_task_inline_races_the_queue_and_it_runs_once() {
    loom::model(|| {
        let runs = Arc::new(AtomicUsize::new(0));
        let (task, handle) = {
            let runs = runs.clone();
            new_task(
                move || {
                    runs.fetch_add(1, Ordering::Relaxed);
                    3u32
                },
                0,
            )
        };
        let runner = thread::spawn(move || task.run(&SlotCounters::default()));
        // What `JoinHandle::join` does on a runner of the task's pool.
        let inline = inline_task(&handle).expect("a queued task can be run inline");
        let ran_inline = inline.run(&SlotCounters::default());
        assert_eq!(handle.join().unwrap(), 3);
        let ran_queued = runner.join().unwrap();
        assert!(ran_inline ^ ran_queued, "exactly one of the two ran it");
        assert_eq!(runs.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn a_reject_racing_an_inline_run_resolves_the_handle_once() {
    loom::model(|| {
        let (task, handle) = new_task(|| 4u32, 0);
        let rejecter = thread::spawn(move || task.reject());
        let inline = inline_task(&handle).unwrap();
        let ran = inline.run(&SlotCounters::default());
        let rejected = rejecter.join().unwrap();
        assert!(ran ^ rejected);
        match handle.join() {
            Ok(v) => assert!(ran && v == 4),
            Err(e) => assert!(rejected && e.is_shutdown()),
        }
    });
}

#[test]
fn a_result_nobody_joins_is_dropped_exactly_once() {
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let value = Counted(drops.clone());
        let (task, handle) = new_task(move || value, 0);
        let runner = thread::spawn(move || {
            task.run(&SlotCounters::default());
        });
        drop(handle);
        runner.join().unwrap();
        assert_eq!(drops.load(Ordering::Relaxed), 1);
    });
}

/// Counts its drops.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_detached_value_is_dropped_exactly_once_whoever_goes_last() {
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let d = drops.clone();
        let (task, handle) = new_task(move || Counted(d), 0);
        let runner = thread::spawn(move || {
            task.run(&SlotCounters::default());
        });
        // Detached while the task may or may not have completed: the value is dropped by
        // the runner or by this drop, once.
        drop(handle);
        runner.join().unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn an_abandon_racing_the_task_resolves_the_handle_once_and_drops_the_value_once() {
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let d = drops.clone();
        let (task, handle) = new_task(move || Counted(d), 0);
        let monitor_side = inline_task(&handle).expect("a queued task");
        let runner = thread::spawn(move || {
            task.run(&SlotCounters::default());
        });
        let monitor = thread::spawn(move || microsched::__loom::abandon(&monitor_side));
        let abandoned = monitor.join().unwrap();
        match handle.join() {
            Ok(value) => {
                assert!(!abandoned);
                drop(value);
            }
            Err(err) => {
                assert!(abandoned, "{err:?}");
                assert_eq!(
                    err.killed().map(|k| k.how()),
                    Some(microsched::KillHow::Abandoned)
                );
            }
        }
        runner.join().unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}
