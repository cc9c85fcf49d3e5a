//! Awaiting a `JoinHandle` from async code: on tokio and on a second executor
//! (`futures::executor`), with every outcome a task can have (a value, a panic, a cancel, a
//! freeze from the signal handler, a freeze on stack overflow, an abandon by the monitor, a
//! rejection at shutdown), and 10,000 awaits pending at once with no thread added per
//! await.
//!
//! Every test runs in a child process (`common::killing::child`): kills leave frozen
//! threads behind, and the thread count must not see other tests' pools. A watchdog in
//! the child turns a wake that never comes into a "hang: ..." failure.

mod common;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::killing::*;
use common::Expected;
use microsched::{checkpoint, JoinError, KillHow, KillReason};

/// Runs `future` to its end on a current-thread tokio runtime.
fn on_tokio<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

/// Runs `future` to its end on `futures`' own executor (parks this thread between polls).
fn on_futures<F: Future>(future: F) -> F::Output {
    futures::executor::block_on(future)
}

struct Forever;

impl fmt::Display for Forever {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        spin_forever()
    }
}

/// Every outcome, each awaited while it is still pending (so the wake, not the first
/// poll, resolves it), on the executor `run` drives. Leaves stdout's lock held for good
/// (the abandoned task), so it runs last in its child.
fn every_outcome(run: fn(std::pin::Pin<Box<dyn Future<Output = ()>>>)) {
    let pool = Arc::new(pool(2));
    let p = pool.clone();
    run(Box::pin(async move {
        // A value, from a task that is still running when first polled.
        let started = Arc::new(AtomicBool::new(false));
        let s = started.clone();
        let value = p.spawn(move || {
            s.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(30));
            41u64 + 1
        });
        assert_eq!(value.await.unwrap(), 42, "a value");
        assert!(started.load(Ordering::SeqCst));

        // Many values at once, awaited in order.
        let many: Vec<_> = (0..1_000u64).map(|i| p.spawn(move || i * 3)).collect();
        for (i, h) in many.into_iter().enumerate() {
            assert_eq!(h.await.unwrap(), i as u64 * 3, "value {i}");
        }

        // A panic, with its payload.
        let panics = p.spawn(|| -> u32 {
            std::thread::sleep(Duration::from_millis(20));
            std::panic::panic_any(Expected(9))
        });
        match panics.await {
            Err(JoinError::Panicked(payload)) => assert_eq!(
                payload.into_inner().downcast_ref::<Expected>(),
                Some(&Expected(9))
            ),
            other => panic!("a panic: got {other:?}"),
        }

        // A cooperative cancel.
        let running = Arc::new(AtomicBool::new(false));
        let r = running.clone();
        let cancelled = p.spawn(move || loop {
            r.store(true, Ordering::SeqCst);
            checkpoint();
            std::hint::spin_loop();
        });
        wait_for(&running, "the cancelled task to start");
        cancelled.cancel();
        let k = killed(cancelled.await);
        assert_eq!(k.how(), KillHow::Cancelled, "a cancel: {k:?}");

        // A freeze from the signal handler: a CPU runaway, awaited before its budget ends.
        let runaway = p.spawn_with(cpu_budget(), || spin_forever());
        let k = killed(runaway.await);
        assert_eq!(
            (k.reason(), k.how()),
            (KillReason::CpuBudget, KillHow::Frozen),
            "a frozen runaway"
        );

        // A freeze on stack overflow: no budget, so the monitor never watches it; only the
        // fault handler publishes it.
        let deep = p.spawn(|| recurse(0));
        let k = killed(deep.await);
        assert_eq!(
            (k.reason(), k.how()),
            (KillReason::StackOverflow, KillHow::Frozen),
            "a stack overflow"
        );

        // Good tasks still come back.
        for i in 0..100u64 {
            assert_eq!(p.spawn(move || i + 1).await.unwrap(), i + 1);
        }

        // An abandon by the monitor: a runaway inside println! holds stdout's lock, where
        // no freeze is allowed.
        let abandoned = p.spawn_with(cpu_budget(), || println!("{}", Forever));
        let k = killed(abandoned.await);
        assert_eq!(k.how(), KillHow::Abandoned, "an abandoned runaway");

        // Still usable after all that.
        assert_eq!(p.spawn(|| 7u8).await.unwrap(), 7);
    }));
    shutdown_bounded(&pool);
    // A rejection: spawned after shutdown, resolved at once.
    let after = pool.spawn(|| 1u8);
    run(Box::pin(async move {
        assert!(
            matches!(after.await, Err(JoinError::Shutdown)),
            "after shutdown"
        );
    }));
}

#[test]
fn tokio_awaits_every_outcome() {
    child("tokio_awaits_every_outcome", || {
        every_outcome(on_tokio);
    });
}

#[test]
fn futures_executor_awaits_every_outcome() {
    child("futures_executor_awaits_every_outcome", || {
        every_outcome(on_futures);
    });
}

#[test]
fn many_tokio_tasks_await_at_once() {
    child("many_tokio_tasks_await_at_once", || {
        let pool = Arc::new(pool(2));
        let p = pool.clone();
        let total = on_tokio(async move {
            let waiters: Vec<_> = (0..2_000u64)
                .map(|i| {
                    let h = p.spawn(move || i * 2);
                    tokio::spawn(async move { h.await.unwrap() })
                })
                .collect();
            let mut total = 0;
            for w in waiters {
                total += w.await.unwrap();
            }
            total
        });
        assert_eq!(total, (0..2_000u64).map(|i| i * 2).sum::<u64>());
        shutdown_bounded(&pool);
    });
}

/// Dropping a pending future detaches the task: it still runs to its end, and its value
/// is dropped (once).
#[test]
fn dropping_an_awaiting_future_detaches() {
    child("dropping_an_awaiting_future_detaches", || {
        static DROPPED: AtomicUsize = AtomicUsize::new(0);
        struct Counted;
        impl Drop for Counted {
            fn drop(&mut self) {
                DROPPED.fetch_add(1, Ordering::SeqCst);
            }
        }
        let pool = pool(2);
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let gate = Arc::new(AtomicBool::new(false));
        let g = gate.clone();
        let mut handle = pool.spawn(move || {
            while !g.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            r.store(true, Ordering::SeqCst);
            Counted
        });
        // One poll, pending: the waker is registered; then the future is dropped.
        let polled = futures::FutureExt::now_or_never(&mut handle);
        assert!(polled.is_none(), "the task cannot have finished yet");
        drop(handle);
        gate.store(true, Ordering::SeqCst);
        wait_for(&ran, "the detached task to run");
        shutdown_bounded(&pool);
        assert_eq!(DROPPED.load(Ordering::SeqCst), 1, "its value dropped once");
    });
}

/// Threads of this process, from `/proc/self/task`.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .count()
}

/// 10,000 awaits pending at once, on one tokio thread: no thread is added per await
/// (one `microsched-wake` thread per process, started by the first await that waits).
/// Preemption is off so the pool itself adds none either: with it on, queued tasks
/// that block on the gate are handed off past their quantum to carriers and standbys.
#[test]
fn ten_thousand_pending_awaits_add_no_thread() {
    child("ten_thousand_pending_awaits_add_no_thread", || {
        const N: u64 = 10_000;
        let pool = Arc::new(common::builder(2).preemption(false).build().unwrap());
        let gate = Arc::new(AtomicBool::new(false));
        let (p, g) = (pool.clone(), gate.clone());
        let sum = on_tokio(async move {
            // One await that waits, so the waker thread exists before the baseline.
            let first = p.spawn(|| std::thread::sleep(Duration::from_millis(5)));
            first.await.unwrap();
            let baseline = threads();
            let pending = Arc::new(AtomicUsize::new(0));
            let waiters: Vec<_> = (0..N)
                .map(|i| {
                    let g = g.clone();
                    let h = p.spawn(move || {
                        while !g.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        i
                    });
                    let pending = pending.clone();
                    tokio::spawn(async move {
                        pending.fetch_add(1, Ordering::SeqCst);
                        h.await.unwrap()
                    })
                })
                .collect();
            // Let every waiter be polled once (each is then pending on its handle).
            while pending.load(Ordering::SeqCst) < N as usize {
                tokio::task::yield_now().await;
            }
            tokio::task::yield_now().await;
            let during = threads();
            assert_eq!(
                during, baseline,
                "threads with {N} awaits pending: {during}, before: {baseline}"
            );
            g.store(true, Ordering::SeqCst);
            let mut sum = 0;
            for w in waiters {
                sum += w.await.unwrap();
            }
            sum
        });
        assert_eq!(sum, (0..N).sum::<u64>());
        shutdown_bounded(&pool);
    });
}

/// A task may itself block on a future of a child (a tenant running an executor inside
/// its closure): the child runs on the other worker and wakes it.
#[test]
fn a_task_awaits_its_child_with_block_on() {
    child("a_task_awaits_its_child_with_block_on", || {
        let pool = pool(2);
        let handle = pool.handle();
        let outer = pool.spawn(move || {
            let child = handle.spawn(|| {
                std::thread::sleep(Duration::from_millis(10));
                5u32
            });
            futures::executor::block_on(child).ok()
        });
        assert_eq!(
            join_or_hang(outer, "a task awaiting its child").unwrap(),
            Some(5)
        );
        shutdown_bounded(&pool);
    });
}

/// A waker whose `wake` never returns: tenant code can make one, and poll a handle with it
/// from any thread it starts.
struct WakesForever;

impl std::task::Wake for WakesForever {
    fn wake(self: Arc<Self>) {
        spin_forever()
    }
}

/// Polls `handle` once with a waker that never returns (the task must still be running).
fn poll_with_forever<T>(handle: &mut microsched::JoinHandle<T>) {
    let waker = std::task::Waker::from(Arc::new(WakesForever));
    let mut cx = std::task::Context::from_waker(&waker);
    let polled = std::pin::Pin::new(handle).poll(&mut cx);
    assert!(polled.is_pending(), "the task cannot have finished yet");
}

/// No thread of a pool runs a waker (the process's waker thread does): one that never
/// returns holds no slot, and the pool goes on serving and shuts down.
#[test]
fn a_waker_that_never_returns_does_not_hold_the_slot() {
    child("a_waker_that_never_returns_does_not_hold_the_slot", || {
        let pool = pool(1);
        let mut handle = pool.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            1u8
        });
        // From a thread of the tenant's own, as an attacker would.
        std::thread::scope(|s| {
            s.spawn(|| poll_with_forever(&mut handle));
        });
        std::mem::forget(handle);
        // The task ends, its runner wakes the waker, which never returns: the tasks
        // queued behind must still run.
        good_tasks_still_run(&pool, 100);
        shutdown_bounded(&pool);
    });
}

/// A frozen task's waker is woken by the process's waker thread: one that never returns
/// is left to it, and a new waker thread takes over, so later kills still wake their
/// awaiters.
#[test]
fn a_waker_that_never_returns_does_not_stop_later_wakes() {
    child(
        "a_waker_that_never_returns_does_not_stop_later_wakes",
        || {
            let pool = pool(2);
            // Starts the waker thread.
            on_futures(async {
                pool.spawn(|| std::thread::sleep(Duration::from_millis(5)))
                    .await
                    .unwrap()
            });
            let mut first = pool.spawn_with(cpu_budget(), || spin_forever());
            poll_with_forever(&mut first);
            std::mem::forget(first);
            // A second runaway, awaited properly: its wake must come, from a new thread.
            let second = pool.spawn_with(cpu_budget(), || spin_forever());
            let k = killed(on_futures(second));
            assert_eq!(k.how(), KillHow::Frozen, "{k:?}");
            good_tasks_still_run(&pool, 20);
            std::mem::forget(pool);
        },
    );
}

/// A waker that blocks for a while and then returns must not hide one that never returns
/// from the watch: the waker thread is replaced again, and a later kill still wakes its
/// awaiter.
#[test]
fn a_slow_waker_returning_late_does_not_blind_the_watch() {
    child(
        "a_slow_waker_returning_late_does_not_blind_the_watch",
        || {
            struct Slow;
            impl std::task::Wake for Slow {
                fn wake(self: Arc<Self>) {
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
            let pool = pool(2);
            let mut slow = pool.spawn_with(cpu_budget(), || spin_forever());
            let waker = std::task::Waker::from(Arc::new(Slow));
            let polled =
                std::pin::Pin::new(&mut slow).poll(&mut std::task::Context::from_waker(&waker));
            assert!(polled.is_pending());
            let mut stuck = pool.spawn_with(cpu_budget(), || spin_forever());
            poll_with_forever(&mut stuck);
            std::mem::forget((slow, stuck));
            std::thread::sleep(Duration::from_millis(400));
            let later = pool.spawn_with(cpu_budget(), || spin_forever());
            let k = killed(on_futures(later));
            assert_eq!(k.how(), KillHow::Frozen, "{k:?}");
            std::mem::forget(pool);
        },
    );
}
