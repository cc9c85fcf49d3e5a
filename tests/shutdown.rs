//! Shutdown: accepted work finishes, later spawns are refused through the handle, and
//! nothing hangs, including shutdown from inside a task and with a task that will not end.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::join;

#[test]
fn queued_tasks_run_before_shutdown_returns() {
    let pool = common::builder(2).build().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..5_000)
        .map(|_| {
            let ran = ran.clone();
            pool.spawn(move || {
                ran.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    pool.shutdown();
    assert_eq!(ran.load(Ordering::Relaxed), 5_000);
    assert!(handles.iter().all(|h| h.is_finished()));
    let stats = pool.stats();
    assert_eq!(stats.completed, 5_000);
    assert_eq!(
        stats.spawned,
        stats.completed + stats.panicked + stats.discarded
    );
}

#[test]
fn spawning_after_shutdown_is_an_error_not_a_panic() {
    let pool = common::builder(1).build().unwrap();
    let handle = pool.handle();
    assert!(!pool.is_shutdown());
    pool.shutdown();
    assert!(pool.is_shutdown() && handle.is_shutdown());
    let err = join(pool.spawn(|| 1)).unwrap_err();
    assert!(err.is_shutdown());
    assert!(err.to_string().contains("shut down"));
    assert!(join(handle.spawn(|| 1)).unwrap_err().is_shutdown());
    assert_eq!(pool.stats().refused, 2);
    // Shutting down twice is fine.
    pool.shutdown();
}

#[test]
fn drop_shuts_down_gracefully() {
    let ran = Arc::new(AtomicUsize::new(0));
    let handle;
    {
        let pool = common::builder(2).build().unwrap();
        handle = pool.handle();
        for _ in 0..1_000 {
            let ran = ran.clone();
            drop(pool.spawn(move || ran.fetch_add(1, Ordering::Relaxed)));
        }
    }
    assert_eq!(ran.load(Ordering::Relaxed), 1_000);
    assert!(join(handle.spawn(|| 0)).unwrap_err().is_shutdown());
}

#[test]
fn a_running_task_waiting_on_a_queued_one_finishes_during_shutdown() {
    // P spawns C and then waits for it through a channel, not a join, so only another
    // runner can run C. Shutdown starts while C is queued: the other runner must not exit
    // until every accepted task has finished.
    for _ in 0..200 {
        let pool = common::builder(2).build().unwrap();
        let (spawned_tx, spawned_rx) = std::sync::mpsc::channel();
        let handle = pool.handle();
        let p = pool.spawn(move || {
            let (tx, rx) = std::sync::mpsc::channel();
            drop(handle.spawn(move || tx.send(7).unwrap()));
            spawned_tx.send(()).unwrap();
            rx.recv_timeout(common::HANG).expect("C ran while P waited")
        });
        spawned_rx.recv().unwrap();
        pool.shutdown();
        assert_eq!(join(p).unwrap(), 7);
        let stats = pool.stats();
        assert_eq!(stats.completed, 2);
        assert_eq!(stats.spawned, 2);
    }
}

#[test]
fn shutdown_from_inside_a_task_returns() {
    let pool = Arc::new(common::builder(2).build().unwrap());
    let inner = pool.clone();
    let h = pool.spawn(move || {
        inner.shutdown();
        // The pool is closed now: spawns from the task itself are refused too.
        inner.spawn(|| 1).join().unwrap_err().is_shutdown()
    });
    assert!(join(h).unwrap());
    pool.shutdown();
}

#[test]
fn the_last_pool_reference_dropped_inside_a_task_does_not_deadlock() {
    let pool = Arc::new(common::builder(1).build().unwrap());
    let handle = pool.handle();
    let gate = Arc::new(Barrier::new(2));
    let inner = pool.clone();
    let h = pool.spawn({
        let gate = gate.clone();
        move || {
            gate.wait();
            drop(inner); // the last reference: Pool::drop runs on the runner itself
            7
        }
    });
    drop(pool);
    gate.wait();
    assert_eq!(join(h).unwrap(), 7);
    assert!(handle.is_shutdown());
}

#[test]
fn shutdown_timeout_discards_queued_work_and_detaches_a_stuck_runner() {
    // Without preemption, so the stuck task keeps the slot and the queue stays queued (with
    // it, a standby would take the slot over and run the queue: `tests/preemption.rs`).
    let pool = common::builder(1).preemption(false).build().unwrap();
    let release = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Barrier::new(2));
    let stuck = pool.spawn({
        let (release, started) = (release.clone(), started.clone());
        move || {
            started.wait();
            while !release.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            "released"
        }
    });
    started.wait();
    let queued: Vec<_> = (0..100).map(|i| pool.spawn(move || i)).collect();

    let err = pool
        .shutdown_timeout(Duration::from_millis(50))
        .unwrap_err();
    assert_eq!(err.busy_runners(), 1);
    for h in queued {
        assert!(
            join(h).unwrap_err().is_shutdown(),
            "queued work was discarded"
        );
    }
    assert_eq!(pool.stats().discarded, 100);
    assert!(!stuck.is_finished());

    release.store(true, Ordering::Release);
    assert_eq!(join(stuck).unwrap(), "released");
    // Dropping the pool after a timed-out shutdown does not wait again.
    drop(pool);
}

#[test]
fn shutdown_timeout_that_is_long_enough_is_ok() {
    let pool = common::builder(2).build().unwrap();
    let handles: Vec<_> = (0..100u64).map(|i| pool.spawn(move || i)).collect();
    pool.shutdown_timeout(Duration::from_secs(60)).unwrap();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(join(h).unwrap(), i as u64);
    }
}

#[test]
fn shutdown_races_with_spawners_and_every_handle_resolves() {
    for _ in 0..50 {
        let pool = Arc::new(common::builder(2).build().unwrap());
        let spawners: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    (0..200u32)
                        .map(|i| pool.spawn(move || i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_micros(50));
        pool.shutdown();
        let mut ran = 0;
        let mut refused = 0;
        for s in spawners {
            for (i, h) in s.join().unwrap().into_iter().enumerate() {
                match join(h) {
                    Ok(v) => {
                        assert_eq!(v as usize, i);
                        ran += 1;
                    }
                    Err(e) => {
                        assert!(e.is_shutdown());
                        refused += 1;
                    }
                }
            }
        }
        let stats = pool.stats();
        assert_eq!(ran + refused, 400);
        assert_eq!(stats.completed, ran);
        assert_eq!(stats.refused, refused);
        assert_eq!(stats.spawned, ran);
    }
}
