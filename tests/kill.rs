//! Budgets and kills: runaways are cancelled at a checkpoint or frozen, good tasks keep
//! flowing, and the process lives on.
//!
//! Every test runs in a child process (`common::in_child`): they freeze threads, overflow
//! stacks and install signal handlers. They assert outcomes and counts, never timings.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{builder, in_child, join, quiet_panics};
use microsched::{checkpoint, Budget, JoinError, KillHow, KillReason, Pool};

const SHORT: Duration = Duration::from_millis(20);

fn pool(workers: usize) -> Pool {
    builder(workers)
        .max_freeze_deferral(Duration::from_millis(200))
        .build()
        .unwrap()
}

/// Spawns `n` good tasks and checks every result.
fn good_tasks_still_run(pool: &Pool, n: u64) {
    let handles: Vec<_> = (0..n).map(|i| pool.spawn(move || i * 3 + 1)).collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(join(h).unwrap(), i as u64 * 3 + 1);
    }
}

#[track_caller]
fn killed(result: Result<impl std::fmt::Debug, JoinError>) -> microsched::Killed {
    match result {
        Err(JoinError::Killed(k)) => k,
        other => panic!("expected a kill, got {other:?}"),
    }
}

#[test]
fn a_bare_loop_is_frozen_and_good_tasks_keep_flowing() {
    in_child("a_bare_loop_is_frozen_and_good_tasks_keep_flowing", || {
        let pool = pool(1);
        let runaway = pool.spawn_with(Budget::cpu(SHORT).grace(Duration::from_millis(5)), || {
            #[allow(clippy::empty_loop)]
            loop {}
        });
        good_tasks_still_run(&pool, 100);
        let k = killed(join(runaway));
        assert_eq!(
            (k.reason(), k.how()),
            (KillReason::CpuBudget, KillHow::Frozen)
        );
        assert!(k.cpu_time().unwrap() >= SHORT);
        good_tasks_still_run(&pool, 100);
        let stats = pool.stats();
        assert_eq!(stats.frozen, 1);
        assert_eq!(stats.frozen_threads, 1);
        assert_eq!(stats.kills_cpu_budget, 1);
        assert!(stats.frozen_stack_bytes > 0);
        pool.shutdown();
    });
}

#[test]
fn a_loop_with_a_checkpoint_is_cancelled_and_its_destructors_run() {
    in_child(
        "a_loop_with_a_checkpoint_is_cancelled_and_its_destructors_run",
        || {
            struct Counted(Arc<AtomicUsize>);
            impl Drop for Counted {
                fn drop(&mut self) {
                    self.0.fetch_add(1, Ordering::SeqCst);
                }
            }
            let pool = pool(1);
            let dropped = Arc::new(AtomicUsize::new(0));
            let d = dropped.clone();
            let runaway = pool.spawn_with(Budget::wall(SHORT), move || {
                let _guard = Counted(d);
                let mut x = 0u64;
                loop {
                    x = black_box(x.wrapping_add(1));
                    checkpoint();
                }
            });
            good_tasks_still_run(&pool, 50);
            let k = killed(join(runaway));
            assert_eq!(
                (k.reason(), k.how()),
                (KillReason::WallDeadline, KillHow::Cancelled)
            );
            assert_eq!(dropped.load(Ordering::SeqCst), 1);
            let stats = pool.stats();
            assert_eq!((stats.cancelled, stats.frozen), (1, 0));
            pool.shutdown();
        },
    );
}

#[test]
fn an_allocate_and_free_loop_is_frozen_outside_malloc() {
    in_child("an_allocate_and_free_loop_is_frozen_outside_malloc", || {
        // One malloc arena for every thread: a thread frozen inside malloc would leave
        // the allocator locked for all of them, and the checks below would hang.
        // SAFETY: mallopt is safe to call at any time; this only limits arenas.
        assert_eq!(unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) }, 1);
        let pool = pool(2);
        let runaway = pool.spawn_with(Budget::cpu(SHORT).grace(Duration::ZERO), || loop {
            let v: Vec<u64> = Vec::with_capacity(black_box(4096));
            black_box(&v);
            let s = black_box(String::from("allocation"));
            drop(s);
        });
        good_tasks_still_run(&pool, 200);
        let k = killed(join(runaway));
        assert_eq!(
            (k.reason(), k.how()),
            (KillReason::CpuBudget, KillHow::Frozen)
        );
        // Allocation still works everywhere: no allocator lock was left held.
        let big = pool.spawn(|| {
            vec![7u8; 1 << 20]
                .iter()
                .map(|&b| u64::from(b))
                .sum::<u64>()
        });
        assert_eq!(join(big).unwrap(), 7 << 20);
        assert_eq!(vec![1u32; 1000].len(), 1000);
        pool.shutdown();
    });
}

/// A `Display` that takes a while: a thread printing it is inside `println!` (holding
/// std's stdout lock) nearly all the time.
struct Slow(u64);

impl std::fmt::Display for Slow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut x = self.0;
        for _ in 0..20_000 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        write!(f, "{}", x % 10)
    }
}

#[test]
fn a_println_loop_is_frozen_after_it_leaves_the_stdout_lock() {
    in_child(
        "a_println_loop_is_frozen_after_it_leaves_the_stdout_lock",
        || {
            let pool = pool(2);
            let plain = pool.spawn_with(Budget::cpu(SHORT), || {
                let mut i = 0u64;
                loop {
                    println!("plain {i}");
                    i += 1;
                }
            });
            let slow = pool.spawn_with(Budget::cpu(SHORT), || {
                let mut i = 0u64;
                loop {
                    println!("slow {}", Slow(i));
                    i += 1;
                }
            });
            good_tasks_still_run(&pool, 100);
            for h in [plain, slow] {
                let k = killed(join(h));
                assert_eq!(
                    (k.reason(), k.how()),
                    (KillReason::CpuBudget, KillHow::Frozen)
                );
            }
            // Nearly always inside `_print`: only the redirect can freeze it there.
            assert!(pool.stats().freeze_redirected >= 1, "{:?}", pool.stats());
            // The lock is free: printing from a task and from here still works.
            let printed = pool.spawn(|| {
                println!("after the freeze");
                eprintln!("after the freeze");
                1
            });
            assert_eq!(join(printed).unwrap(), 1);
            println!("main thread after the freeze");
            pool.shutdown();
        },
    );
}

#[test]
fn a_format_loop_is_frozen() {
    in_child("a_format_loop_is_frozen", || {
        let pool = pool(1);
        let runaway = pool.spawn_with(Budget::wall(SHORT).grace(Duration::from_millis(1)), || {
            let mut i = 0u64;
            loop {
                let s = format!("{} {:?} {}", i, Slow(i), i * 2);
                black_box(s);
                i += 1;
            }
        });
        good_tasks_still_run(&pool, 100);
        let k = killed(join(runaway));
        assert_eq!(
            (k.reason(), k.how()),
            (KillReason::WallDeadline, KillHow::Frozen)
        );
        assert_eq!(format!("{}", 42), "42");
        pool.shutdown();
    });
}

impl std::fmt::Debug for Slow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Recursion with no end: overflows the stack of whatever thread runs it.
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 32]);
    recurse(black_box(depth + 1)).wrapping_add(frame[7])
}

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

#[test]
fn a_mutex_holder_poisons_it_when_cancelled_and_keeps_it_when_frozen() {
    in_child(
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
    in_child("a_task_sleeping_past_its_wall_deadline_is_frozen", || {
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
    in_child(
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
    in_child("cancel_stops_queued_and_running_tasks", || {
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

#[test]
fn shutdown_does_not_wait_for_frozen_threads() {
    in_child("shutdown_does_not_wait_for_frozen_threads", || {
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

/// The kinds of runaway the storm mixes.
#[derive(Clone, Copy, Debug)]
enum Runaway {
    Bare,
    Alloc,
    Println,
    Format,
    Recursion,
    MutexCheckpoint,
    Checkpoint,
    Sleep,
}

const KINDS: [Runaway; 8] = [
    Runaway::Bare,
    Runaway::Alloc,
    Runaway::Println,
    Runaway::Format,
    Runaway::Recursion,
    Runaway::MutexCheckpoint,
    Runaway::Checkpoint,
    Runaway::Sleep,
];

fn run_away(kind: Runaway) -> u64 {
    let mut i = 0u64;
    match kind {
        Runaway::Bare => loop {
            i = black_box(i.wrapping_add(1));
        },
        Runaway::Alloc => loop {
            black_box(vec![i as u8; 512]);
            i += 1;
        },
        Runaway::Println => loop {
            println!("runaway {i}");
            i += 1;
        },
        Runaway::Format => loop {
            black_box(format!("{i:>20}"));
            i += 1;
        },
        Runaway::Recursion => recurse(0),
        Runaway::MutexCheckpoint => {
            let m = Mutex::new(0u64);
            let mut g = m.lock().unwrap();
            loop {
                *g += 1;
                checkpoint();
            }
        }
        Runaway::Checkpoint => loop {
            i = black_box(i.wrapping_add(1));
            checkpoint();
        },
        Runaway::Sleep => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
    }
}

/// 1,000 runaways of every kind mixed with 10,000 good tasks: every good result is right,
/// every runaway is reported killed, the counts in `stats()` match, and the process exits
/// normally.
#[test]
fn a_storm_of_runaways_among_good_tasks() {
    in_child("a_storm_of_runaways_among_good_tasks", || {
        const RUNAWAYS: usize = 1000;
        const GOOD: u64 = 10_000;
        let pool = builder(2)
            .max_frozen(RUNAWAYS)
            .max_freeze_deferral(Duration::from_millis(100))
            .build()
            .unwrap();
        let budget = Budget::cpu(Duration::from_millis(2))
            .and_wall(Duration::from_millis(50))
            .grace(Duration::from_millis(2));
        let mut runaways = Vec::new();
        let mut good = Vec::new();
        for i in 0..GOOD {
            good.push((i, pool.spawn(move || i.wrapping_mul(2654435761) % 1000)));
            if i % 10 == 0 && runaways.len() < RUNAWAYS {
                let kind = KINDS[runaways.len() % KINDS.len()];
                // Deep recursion takes a while: a budget it cannot reach first.
                let budget = match kind {
                    Runaway::Recursion => Budget::cpu(Duration::from_secs(10)),
                    _ => budget,
                };
                runaways.push((kind, pool.spawn_with(budget, move || run_away(kind))));
            }
        }
        for (i, h) in good {
            assert_eq!(join(h).unwrap(), i.wrapping_mul(2654435761) % 1000);
        }
        let (mut cancelled, mut frozen, mut abandoned) = (0u64, 0u64, 0u64);
        for (kind, h) in runaways {
            let k = killed(join(h));
            match kind {
                // Cancelled at its next checkpoint, unless starved of CPU past the
                // maximum deferral (see below); never frozen without having seen it.
                Runaway::Checkpoint | Runaway::MutexCheckpoint => assert!(
                    matches!(k.how(), KillHow::Cancelled | KillHow::Abandoned),
                    "{kind:?} {k:?}"
                ),
                Runaway::Recursion => {
                    assert_eq!(
                        (k.reason(), k.how()),
                        (KillReason::StackOverflow, KillHow::Frozen)
                    )
                }
                // A carrier starved of CPU past the maximum deferral (hundreds of them
                // share two saturated cores here) is abandoned rather than waited for.
                _ => assert!(
                    matches!(k.how(), KillHow::Frozen | KillHow::Abandoned),
                    "{kind:?} {k:?}"
                ),
            }
            match k.how() {
                KillHow::Cancelled => cancelled += 1,
                KillHow::Abandoned => abandoned += 1,
                _ => frozen += 1,
            }
        }
        pool.shutdown();
        let s = pool.stats();
        assert_eq!(s.completed, GOOD);
        assert_eq!(
            (s.cancelled, s.frozen, s.abandoned),
            (cancelled, frozen, abandoned)
        );
        assert_eq!(cancelled + frozen + abandoned, RUNAWAYS as u64);
        // An abandoned thread that later reaches a safe point is frozen too.
        assert!(s.frozen_threads >= frozen);
        assert_eq!(
            s.kills_cpu_budget + s.kills_wall_deadline + s.kills_stack_overflow,
            RUNAWAYS as u64
        );
        assert_eq!(s.spawned, GOOD + RUNAWAYS as u64);
        assert_eq!(s.kills_refused, 0);
        eprintln!("storm: {s:?}");
    });
}

/// Past `max_frozen`, a hard kill is refused: the task runs on (demoted, its cancel flag
/// set) and its handle resolves when it returns.
#[test]
fn past_max_frozen_a_hard_kill_is_refused_and_the_task_runs_on() {
    in_child(
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

/// A task frozen while it runs inside another through an inline join: both resolve
/// (frozen), and shutdown does not wait for either.
#[test]
fn a_freeze_inside_an_inline_join_ends_every_task_on_the_thread() {
    in_child(
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

/// A runaway that keeps spawning (and allocating, and writing to stdout through
/// `write_all`, and reading the environment) is frozen outside every lock the runtime
/// and std hold; spawning, printing, reading the environment and shutting down still
/// work afterwards.
#[test]
fn runaways_in_runtime_and_std_calls_leave_no_lock_held() {
    in_child(
        "runaways_in_runtime_and_std_calls_leave_no_lock_held",
        || {
            // SAFETY: as in the allocation test.
            assert_eq!(unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) }, 1);
            let pool = pool(2);
            let handle = pool.handle();
            let budget = Budget::cpu(SHORT).grace(Duration::ZERO);
            let spawner = pool.spawn_with(budget, move || loop {
                drop(handle.spawn(|| 1u8));
            });
            let writer = pool.spawn_with(budget, || {
                use std::io::Write;
                loop {
                    let _ = std::io::stdout().write_all(b"write_all runaway\n");
                }
            });
            let env_reader = pool.spawn_with(budget, || loop {
                black_box(std::env::var_os("PATH"));
            });
            for h in [spawner, writer, env_reader] {
                assert_eq!(killed(join(h)).how(), KillHow::Frozen);
            }
            good_tasks_still_run(&pool, 100);
            println!("stdout still works");
            assert!(std::env::var_os("PATH").is_some());
            // SAFETY: no other thread of this child reads the environment concurrently
            // except the frozen one, which is stopped for good.
            unsafe { std::env::set_var("MICROSCHED_TEST_ENV", "1") };
            pool.shutdown();
        },
    );
}
