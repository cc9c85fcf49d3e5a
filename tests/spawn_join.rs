//! Spawning and joining: values come back, in any number, from any thread, nested, and
//! joined from inside tasks.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::join;
use microsched::{Handle, Pool};

fn pool(workers: usize) -> Pool {
    common::builder(workers).build().unwrap()
}

#[test]
fn values_come_back_from_every_task() {
    let pool = pool(2);
    let handles: Vec<_> = (0..10_000u64).map(|i| pool.spawn(move || i * 3)).collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(join(h).unwrap(), i as u64 * 3);
    }
    let stats = pool.stats();
    assert_eq!(stats.spawned, 10_000);
    assert_eq!(stats.completed, 10_000);
}

#[test]
fn owned_values_and_unit_results() {
    let pool = pool(2);
    let text = pool.spawn(|| "hello".repeat(3));
    let vec = pool.spawn(|| vec![1u8; 1 << 20]);
    let unit = pool.spawn(|| ());
    assert_eq!(join(text).unwrap(), "hellohellohello");
    assert_eq!(join(vec).unwrap().len(), 1 << 20);
    join(unit).unwrap();
}

#[test]
fn many_threads_spawn_at_once() {
    let pool = Arc::new(pool(2));
    let barrier = Arc::new(Barrier::new(4));
    let spawners: Vec<_> = (0..4u64)
        .map(|t| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let hs: Vec<_> = (0..2_000u64)
                    .map(|i| pool.spawn(move || t * 10_000 + i))
                    .collect();
                hs.into_iter()
                    .enumerate()
                    .all(|(i, h)| join(h).unwrap() == t * 10_000 + i as u64)
            })
        })
        .collect();
    for s in spawners {
        assert!(s.join().unwrap());
    }
    assert_eq!(pool.stats().completed, 8_000);
}

#[test]
fn nested_spawns_go_to_the_local_queue() {
    // Without preemption: a parent handed off mid-loop would spawn the rest from its
    // carrier, through the global queue, and the counts below would differ.
    let pool = common::builder(2).preemption(false).build().unwrap();
    let handle = pool.handle();
    let parent = pool.spawn(move || {
        let children: Vec<_> = (0..1_000u64)
            .map(|i| {
                handle.spawn(move || {
                    // Enough work that the other slot has time to steal.
                    (0..2_000u64).fold(i, |a, b| a.wrapping_mul(31).wrapping_add(b))
                })
            })
            .collect();
        children
            .into_iter()
            .map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    });
    let got = join(parent).unwrap();
    let want: Vec<u64> = (0..1_000u64)
        .map(|i| (0..2_000u64).fold(i, |a, b| a.wrapping_mul(31).wrapping_add(b)))
        .collect();
    assert_eq!(got, want);
    let stats = pool.stats();
    assert_eq!(stats.spawned, 1_001);
    assert_eq!(
        stats.slots.iter().map(|s| s.local_spawns).sum::<u64>(),
        1_000,
        "spawns from inside a task use the slot's local queue"
    );
    assert_eq!(stats.completed, 1_001);
}

#[test]
fn an_idle_slot_steals_from_a_busy_slots_queue() {
    // Without preemption, so the blocked parent keeps its slot (with it, a rare handoff
    // would let the parent's own slot run the child).
    let pool = common::builder(2).preemption(false).build().unwrap();
    let handle = pool.handle();
    let parent = pool.spawn(move || {
        // The child goes to this slot's local queue; this runner then blocks (without
        // helping), so only the other slot can run the child: by stealing it.
        let (tx, rx) = std::sync::mpsc::channel();
        let child = handle.spawn(move || tx.send(std::thread::current().name().map(str::to_owned)));
        let child_thread = rx
            .recv_timeout(common::HANG)
            .expect("the child was stolen and ran");
        join(child).unwrap().unwrap();
        (
            std::thread::current().name().map(str::to_owned),
            child_thread,
        )
    });
    let (parent_thread, child_thread) = join(parent).unwrap();
    assert_ne!(parent_thread, child_thread);
    assert_eq!(pool.stats().stolen, 1);
}

#[test]
fn joining_inside_a_one_worker_pool_runs_the_queued_child() {
    // Unless the join ran the queued child inline, the only runner would block on a child
    // queued behind it: deadlock.
    let pool = pool(1);
    let handle = pool.handle();
    let parent = pool.spawn(move || {
        let child = handle.spawn(|| 21);
        let grandchild_sum = handle
            .spawn({
                let handle = handle.clone();
                move || handle.spawn(|| 1).join().unwrap() + 1
            })
            .join()
            .unwrap();
        child.join().unwrap() * 2 + grandchild_sum - 2
    });
    assert_eq!(join(parent).unwrap(), 42);
}

#[test]
fn a_join_inside_a_task_never_runs_an_unrelated_task() {
    // One worker. P holds a lock and joins X; U, queued before X, wants the same lock. A
    // join that "helped" by running whatever was queued would run U on P's stack, under
    // P's lock: a deadlock. The join runs only X, the task it waits for.
    let pool = pool(1);
    let lock = Arc::new(std::sync::Mutex::new(0));
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (x_tx, x_rx) = std::sync::mpsc::channel::<microsched::JoinHandle<i32>>();
    let p = pool.spawn({
        let lock = lock.clone();
        move || {
            let mut guard = lock.lock().unwrap();
            locked_tx.send(()).unwrap();
            let x = x_rx.recv().unwrap();
            *guard += x.join().unwrap();
            *guard
        }
    });
    locked_rx.recv().unwrap();
    let u = pool.spawn({
        let lock = lock.clone();
        move || *lock.lock().unwrap() * 10
    });
    x_tx.send(pool.spawn(|| 2)).unwrap();
    assert_eq!(join(p).unwrap(), 2);
    assert_eq!(join(u).unwrap(), 20);
}

#[test]
fn a_timed_join_inside_a_one_worker_pool_times_out_then_join_runs_the_child() {
    // Without preemption: with it, the parent blocked in the timed join would be handed
    // off and the standby would run the child.
    let pool = common::builder(1).preemption(false).build().unwrap();
    let handle = pool.handle();
    let parent = pool.spawn(move || {
        let child = handle.spawn(|| 5);
        // A timed join never runs the child inline, and nobody else can run it.
        let child = child
            .join_timeout(Duration::from_millis(20))
            .expect_err("the only runner is busy with the parent");
        child.join().unwrap()
    });
    assert_eq!(join(parent).unwrap(), 5);
}

#[test]
fn a_task_that_keeps_spawning_does_not_starve_the_global_queue() {
    // One worker whose local queue never empties: a poller that re-spawns itself until a
    // flag is set. The task that sets the flag comes from outside, through the injector.
    fn poll(handle: Handle, stop: Arc<std::sync::atomic::AtomicBool>, rounds: Arc<AtomicUsize>) {
        rounds.fetch_add(1, Ordering::Relaxed);
        if !stop.load(Ordering::Acquire) {
            let next = handle.clone();
            drop(handle.spawn(move || poll(next, stop, rounds)));
        }
    }
    let pool = pool(1);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    drop(pool.spawn({
        let (handle, stop, rounds) = (pool.handle(), stop.clone(), rounds.clone());
        move || poll(handle, stop, rounds)
    }));
    while rounds.load(Ordering::Relaxed) < 1_000 {
        std::thread::yield_now();
    }
    let setter = pool.spawn({
        let stop = stop.clone();
        move || stop.store(true, Ordering::Release)
    });
    join(setter).unwrap();
    pool.shutdown();
    assert!(stop.load(Ordering::Acquire));
}

#[test]
fn join_timeout_gives_the_handle_back() {
    let pool = pool(1);
    let gate = Arc::new(Barrier::new(2));
    let h = pool.spawn({
        let gate = gate.clone();
        move || {
            gate.wait();
            5
        }
    });
    let h = h
        .join_timeout(Duration::from_millis(10))
        .expect_err("the task is blocked on the barrier");
    assert!(!h.is_finished());
    gate.wait();
    assert_eq!(join(h).unwrap(), 5);
}

#[test]
fn join_timeout_from_another_thread_after_a_timeout() {
    let pool = pool(1);
    let gate = Arc::new(Barrier::new(2));
    let h = pool.spawn({
        let gate = gate.clone();
        move || {
            gate.wait();
            9
        }
    });
    let h = h.join_timeout(Duration::ZERO).unwrap_err();
    let joiner = std::thread::spawn(move || join(h).unwrap());
    gate.wait();
    assert_eq!(joiner.join().unwrap(), 9);
}

#[test]
fn is_finished_turns_true_and_join_returns_at_once() {
    let pool = pool(1);
    let h = pool.spawn(|| 3);
    while !h.is_finished() {
        std::thread::yield_now();
    }
    assert_eq!(h.join_timeout(Duration::ZERO).unwrap().unwrap(), 3);
}

#[test]
fn dropped_handles_still_run_their_tasks() {
    let pool = pool(2);
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..500 {
        let ran = ran.clone();
        drop(pool.spawn(move || ran.fetch_add(1, Ordering::Relaxed)));
    }
    pool.shutdown();
    assert_eq!(ran.load(Ordering::Relaxed), 500);
}

#[test]
fn handle_current_is_the_running_pool() {
    let pool = pool(2);
    assert!(Handle::current().is_none());
    let h = pool.spawn(|| {
        let me = Handle::current().expect("inside a task");
        me.spawn(|| 7).join().unwrap()
    });
    assert_eq!(join(h).unwrap(), 7);
}

#[test]
fn a_task_of_one_pool_can_spawn_onto_another() {
    let a = pool(1);
    let b = pool(1);
    let hb = b.handle();
    let h = a.spawn(move || hb.spawn(|| 40).join().unwrap() + 2);
    assert_eq!(join(h).unwrap(), 42);
    assert_eq!(
        b.stats().slots[0].local_spawns,
        0,
        "b's spawn came from outside b"
    );
}

#[test]
fn sleeping_runners_wake_for_every_spawn() {
    // spin(0): runners sleep as soon as they are idle, so each round trip goes through the
    // sleep protocol; a lost wake-up would hang here.
    let pool = common::builder(2).spin(Duration::ZERO).build().unwrap();
    for round in 0..2_000u32 {
        assert_eq!(join(pool.spawn(move || round)).unwrap(), round);
        if round % 100 == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let stats = pool.stats();
    assert!(stats.parks > 0, "runners slept: {stats:?}");
    assert!(stats.unparks > 0, "and were woken: {stats:?}");
}

#[test]
fn runners_are_pinned_to_their_cores() {
    let allowed = allowed_cpus_of_this_thread();
    let pool = Pool::builder().build().unwrap();
    assert_eq!(pool.workers(), allowed.len());
    let stats = pool.stats();
    for (slot, stats) in stats.slots.iter().enumerate() {
        assert_eq!(stats.core, Some(allowed[slot]));
    }
    // Every runner, asked many times, reports a mask of exactly its one core.
    let masks: Vec<_> = (0..200)
        .map(|_| pool.spawn(allowed_cpus_of_this_thread))
        .map(|h| join(h).unwrap())
        .collect();
    for mask in masks {
        assert_eq!(mask.len(), 1, "runner mask {mask:?}");
        assert!(allowed.contains(&mask[0]));
    }
}

#[test]
fn unpinned_runners_keep_the_inherited_mask() {
    let allowed = allowed_cpus_of_this_thread();
    let pool = Pool::builder().pin(false).workers(3).build().unwrap();
    assert!(pool.stats().slots.iter().all(|s| s.core.is_none()));
    assert_eq!(
        join(pool.spawn(allowed_cpus_of_this_thread)).unwrap(),
        allowed
    );
}

#[test]
fn unpinned_runners_with_a_core_list_may_run_on_any_of_those_cores() {
    let allowed = allowed_cpus_of_this_thread();
    let last = *allowed.last().unwrap();
    let pool = Pool::builder()
        .pin(false)
        .cores([last])
        .workers(2)
        .build()
        .unwrap();
    for _ in 0..20 {
        assert_eq!(
            join(pool.spawn(allowed_cpus_of_this_thread)).unwrap(),
            vec![last]
        );
    }
}

/// The `Cpus_allowed_list` of the calling thread, from procfs.
fn allowed_cpus_of_this_thread() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    list.split(',')
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<usize>>(),
            None => vec![part.parse().unwrap()],
        })
        .collect()
}
