//! The task and join protocol of `src/task.rs`, explored by loom: every handle resolves
//! exactly once with the task's own outcome, and a join never sleeps through a completion.
#![cfg(loom)]

use std::time::Duration;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use microsched::__loom::{new_task, SlotCounters};

#[test]
fn join_sees_the_value_whether_it_waits_or_not() {
    loom::model(|| {
        let (task, handle) = new_task(|| 7u32);
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
        let (task, handle) = new_task(|| 7u32);
        let rejecter = thread::spawn(move || task.reject());
        assert!(handle.join().unwrap_err().is_shutdown());
        rejecter.join().unwrap();
    });
}

#[test]
fn a_timed_out_join_can_be_joined_again_from_another_thread() {
    loom::model(|| {
        let (task, handle) = new_task(|| 11u32);
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
        let (task, handle) = new_task(|| -> u32 { std::panic::panic_any(5u8) });
        let counters = Arc::new(SlotCounters::default());
        let runner = {
            let counters = counters.clone();
            thread::spawn(move || task.run(&counters))
        };
        let err = handle.join().unwrap_err();
        assert_eq!(err.into_panic().unwrap().downcast_ref::<u8>(), Some(&5));
        assert!(runner.join().unwrap(), "run reports the panic");
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
        let (task, handle) = new_task(move || value);
        let runner = thread::spawn(move || {
            task.run(&SlotCounters::default());
        });
        drop(handle);
        runner.join().unwrap();
        assert_eq!(drops.load(Ordering::Relaxed), 1);
    });
}
