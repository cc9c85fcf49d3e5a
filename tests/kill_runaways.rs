//! Each kind of runaway loop ends, and good tasks keep flowing: a loop with a checkpoint
//! is cancelled and its destructors run; a bare loop, an allocate-and-free loop, a
//! `println!` loop and a `format!` loop are frozen, outside malloc and outside the stdout
//! lock; runaways in runtime and std calls leave no lock held.
//!
//! Every test runs in a child process (`common::in_child`): they freeze threads, overflow
//! stacks and install signal handlers. They assert outcomes and counts, never timings.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::killing::{good_tasks_still_run, killed, pool, SHORT};
use common::{in_child_alone, join};
use microsched::{checkpoint, Budget, KillHow, KillReason};

#[test]
fn a_bare_loop_is_frozen_and_good_tasks_keep_flowing() {
    in_child_alone("a_bare_loop_is_frozen_and_good_tasks_keep_flowing", || {
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
    in_child_alone(
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
    in_child_alone("an_allocate_and_free_loop_is_frozen_outside_malloc", || {
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
    in_child_alone(
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
    in_child_alone("a_format_loop_is_frozen", || {
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

/// A runaway that keeps spawning (and allocating, and writing to stdout through
/// `write_all`, and reading the environment) is frozen outside every lock the runtime
/// and std hold; spawning, printing, reading the environment and shutting down still
/// work afterwards.
#[test]
fn runaways_in_runtime_and_std_calls_leave_no_lock_held() {
    in_child_alone(
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
            for (name, h) in [
                ("spawner", spawner),
                ("writer", writer),
                ("env_reader", env_reader),
            ] {
                let how = killed(join(h)).how();
                assert_eq!(how, KillHow::Frozen, "{name}: {:?}", pool.stats());
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
