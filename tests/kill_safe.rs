//! Nothing a kill does can take the process down: whatever a budgeted closure does while
//! it is being killed (unwind through a frame whose return was redirected for its freeze,
//! replace the panic hook, hold one of std's process-wide locks, run inside the unwinder,
//! run on a stack of its own), the process neither aborts nor hangs, every join resolves,
//! and every process-wide facility (printing, panicking, backtraces, the environment,
//! spawning processes and threads) still works from other threads afterwards.
//!
//! Each test runs in a child process (`common::killing::child`), with a deadline on
//! every wait; the tests assert outcomes, never timings.

mod common;

use std::fmt;
use std::hint::black_box;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use common::killing::*;
use common::{builder, Expected};
use microsched::KillHow;

/// Spins for `ms` milliseconds of wall-clock time.
fn spin_for(ms: u64) {
    let until = Instant::now() + Duration::from_millis(ms);
    let mut x = 0u64;
    while Instant::now() < until {
        x = black_box(x.wrapping_add(1));
    }
}

/// A `Display` that spins a while inside `print!` (holding stdout's lock, so a kill
/// redirects the return of `print!`'s frame), then unwinds out of it with
/// `resume_unwind`, which never calls a panic hook.
struct ResumeUnwindInside;

impl fmt::Display for ResumeUnwindInside {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        spin_for(30);
        std::panic::resume_unwind(Box::new(Expected(40)))
    }
}

/// A `Display` that spins a while inside `print!`, then panics (under whatever hook is
/// installed).
struct PanicInside;

impl fmt::Display for PanicInside {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        spin_for(30);
        std::panic::panic_any(Expected(41))
    }
}

// --- 1. Unwinding through a redirected return. ---

#[test]
fn resume_unwind_through_a_redirected_frame_does_not_abort() {
    child(
        "resume_unwind_through_a_redirected_frame_does_not_abort",
        || {
            let pool = pool(1);
            let h = pool.spawn_with(cpu_budget(), || loop {
                let caught =
                    std::panic::catch_unwind(AssertUnwindSafe(|| print!("{}", ResumeUnwindInside)));
                assert!(caught.is_err());
            });
            let k = expect_hard_kill(
                join_or_hang(h, "resume_unwind out of print!"),
                "resume_unwind out of print!",
            );
            assert!(pool.stats().freeze_redirected >= 1, "{:?}", pool.stats());
            eprintln!("resume_unwind out of print!: {:?}", k.how());
            process_still_usable(&pool, StdoutState::Usable);
        },
    );
}

#[test]
fn a_panic_under_a_replaced_hook_through_a_redirected_frame_does_not_abort() {
    child(
        "a_panic_under_a_replaced_hook_through_a_redirected_frame_does_not_abort",
        || {
            let pool = pool(1);
            // Where the kill lands is up to timing: most often inside `print!` (and the
            // freeze is redirected), sometimes at a point of the loop it may freeze at
            // directly. Runaways follow one another until one was redirected (every one
            // must end killed, and none may abort the process).
            for _ in 0..10 {
                let h = pool.spawn_with(cpu_budget(), || {
                    // The crate's hook (which undoes a redirect) is gone; so is the tests'.
                    std::panic::set_hook(Box::new(|_| {}));
                    loop {
                        let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            print!("{}", PanicInside)
                        }));
                        assert!(caught.is_err());
                    }
                });
                expect_hard_kill(
                    join_or_hang(h, "a panic out of print! under a replaced hook"),
                    "a panic out of print! under a replaced hook",
                );
                if pool.stats().freeze_redirected >= 1 {
                    break;
                }
            }
            assert!(pool.stats().freeze_redirected >= 1, "{:?}", pool.stats());
            let _ = std::panic::take_hook();
            process_still_usable(&pool, StdoutState::Usable);
        },
    );
}

// --- 2. std's process-wide locks: a runaway inside each is never frozen holding it. ---

/// Other threads use every process-wide facility of std's (with deadlines): a panic
/// through the default hook (the backtrace lock), a captured and printed backtrace, the
/// panic hook's lock (`take_hook`/`set_hook`), the environment's (read and write), and
/// process spawning.
fn std_facilities_still_work() {
    let _watchdog = Watchdog::start("std's facilities from other threads", CHECKS);
    let panicked = std::thread::spawn(|| panic!("deliberate: a panic through the default hook"))
        .join()
        .is_err();
    assert!(panicked, "a panic through the default hook");
    let trace = std::thread::spawn(|| std::backtrace::Backtrace::force_capture().to_string())
        .join()
        .expect("a backtrace");
    assert!(!trace.is_empty());
    let hook = std::panic::take_hook();
    std::panic::set_hook(hook);
    std::env::set_var("MICROSCHED_KILL_SAFE", "1");
    assert_eq!(std::env::var("MICROSCHED_KILL_SAFE").as_deref(), Ok("1"));
    assert!(std::env::vars().count() > 0);
    let status = std::process::Command::new("true")
        .status()
        .expect("spawn `true`");
    assert!(status.success());
}

/// Runs `runaway` with a CPU budget on a one-worker pool, expects a hard kill (frozen or
/// abandoned), then uses std's facilities from other threads and checks the process.
fn kill_then_use_std(case: &str, runaway: impl FnOnce() + Send + 'static) {
    let pool = pool(1);
    let h = pool.spawn_with(cpu_budget(), runaway);
    expect_hard_kill(join_or_hang(h, case), case);
    std_facilities_still_work();
    process_still_usable(&pool, StdoutState::Usable);
}

#[test]
fn a_runaway_capturing_backtraces_leaves_the_backtrace_lock_free() {
    child(
        "a_runaway_capturing_backtraces_leaves_the_backtrace_lock_free",
        || {
            kill_then_use_std("backtrace loop", || loop {
                black_box(std::backtrace::Backtrace::force_capture().to_string());
            });
        },
    );
}

#[test]
fn a_runaway_reading_the_environment_leaves_its_lock_free() {
    child(
        "a_runaway_reading_the_environment_leaves_its_lock_free",
        || {
            kill_then_use_std("env::vars loop", || loop {
                black_box(std::env::vars_os().count());
                black_box(std::env::var_os("PATH"));
            });
        },
    );
}

#[test]
fn a_runaway_spawning_processes_leaves_the_environment_lock_free() {
    child(
        "a_runaway_spawning_processes_leaves_the_environment_lock_free",
        || {
            kill_then_use_std("spawn loop", || loop {
                if let Ok(mut child) = std::process::Command::new("true").spawn() {
                    let _ = child.wait();
                }
            });
        },
    );
}

#[test]
fn a_runaway_inside_its_own_panic_hook_leaves_the_hook_lock_free() {
    child(
        "a_runaway_inside_its_own_panic_hook_leaves_the_hook_lock_free",
        || {
            kill_then_use_std("a spinning panic hook", || {
                let me = std::thread::current().id();
                let previous = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    if std::thread::current().id() == me {
                        // Spins inside the hook (std holds the hook's lock), well past
                        // the kill's bound, then returns. (A hook that never returns
                        // holds the lock for good, kill or no kill: a tenant that
                        // replaces the process's panic hook owns every later panic.)
                        spin_for(2_000);
                    }
                    previous(info);
                }));
                std::panic::panic_any(Expected(42));
            });
        },
    );
}

// --- 3. The handler never re-enters the unwinder. ---

extern "C" {
    /// libgcc's registration of unwind info for code made at run time (what JITs call).
    fn __register_frame(begin: *const u8);
}

/// Registers `n` objects of unwind info for made-up code ranges, as a JIT would: from
/// then on libgcc (before GCC 13) takes a global mutex in every FDE lookup, and searches
/// these objects under it.
fn register_jit_frames(n: usize) {
    for i in 0..n {
        // A CIE (code alignment 1, data alignment -8, return address in r16, CFA = rsp+8,
        // RA at CFA-8), one FDE for 16 bytes at a high made-up address, a terminator.
        let mut eh = Vec::<u8>::new();
        let cie: [u8; 20] = [
            16, 0, 0, 0, // length
            0, 0, 0, 0, // CIE id
            1, 0, // version, augmentation ""
            1, 0x78, 16, // code align, data align (-8), RA column
            0x0c, 7, 8, // DW_CFA_def_cfa rsp, 8
            0x90, 1, // DW_CFA_offset r16, 1
            0, 0, // DW_CFA_nop
        ];
        eh.extend_from_slice(&cie);
        let pc = 0x7fff_0000_0000u64 + (i as u64) * 64;
        let fde_start = eh.len();
        eh.extend_from_slice(&20u32.to_le_bytes()); // length
        eh.extend_from_slice(&((fde_start + 4) as u32).to_le_bytes()); // CIE pointer
        eh.extend_from_slice(&pc.to_le_bytes());
        eh.extend_from_slice(&16u64.to_le_bytes());
        eh.extend_from_slice(&0u32.to_le_bytes()); // terminator
        let eh: &'static [u8] = Box::leak(eh.into_boxed_slice());
        // SAFETY: a well-formed .eh_frame list (CIE, FDE, zero terminator) that lives for
        // ever, as `__register_frame` requires.
        unsafe { __register_frame(eh.as_ptr()) };
    }
}

#[test]
fn a_kill_inside_the_unwinder_with_jit_frames_registered_does_not_deadlock() {
    child(
        "a_kill_inside_the_unwinder_with_jit_frames_registered_does_not_deadlock",
        || {
            register_jit_frames(2000);
            // The unwinder still works with them registered.
            let caught = std::panic::catch_unwind(|| std::panic::panic_any(Expected(43)));
            assert!(caught.is_err());
            // Every frame of every capture looks its FDE up under libgcc's mutex.
            kill_then_use_std("a backtrace loop with JIT frames registered", || loop {
                let _ = black_box(std::backtrace::Backtrace::force_capture());
            });
        },
    );
}

// --- 4. Task frames on a stack that is not the thread's own. ---

/// Prints nothing, slowly, inside `print!` (holding stdout's lock).
struct SlowEmpty;

impl fmt::Display for SlowEmpty {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        spin_for(1);
        Ok(())
    }
}

#[test]
fn a_runaway_on_a_coroutine_stack_is_never_frozen_holding_stdout() {
    child(
        "a_runaway_on_a_coroutine_stack_is_never_frozen_holding_stdout",
        || {
            let pool = pool(1);
            let h = pool.spawn_with(cpu_budget(), || {
                let mut co: corosensei::Coroutine<(), (), ()> =
                    corosensei::Coroutine::new(|_, ()| loop {
                        print!("{}", SlowEmpty);
                    });
                let _ = co.resume(());
            });
            expect_hard_kill(
                join_or_hang(h, "a print! loop on a coroutine's stack"),
                "a print! loop on a coroutine's stack",
            );
            // Never frozen holding stdout, and no return left redirected on the thread:
            // tasks run there after (one worker) and print.
            let later = pool.spawn(|| {
                for _ in 0..100 {
                    print!("{}", SlowEmpty);
                }
                7u32
            });
            assert_eq!(join_or_hang(later, "a later printing task").unwrap(), 7);
            process_still_usable(&pool, StdoutState::Usable);
        },
    );
}

/// Inside `print!`, runs a coroutine that spins for ever on its own stack.
struct CoroutineInside;

impl fmt::Display for CoroutineInside {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut co: corosensei::Coroutine<(), (), ()> = corosensei::Coroutine::new(|_, ()| {
            let mut x = 0u64;
            loop {
                x = black_box(x.wrapping_add(1));
            }
        });
        let _ = co.resume(());
        Ok(())
    }
}

#[test]
fn a_runaway_in_a_coroutine_inside_println_is_never_frozen_holding_stdout() {
    child(
        "a_runaway_in_a_coroutine_inside_println_is_never_frozen_holding_stdout",
        || {
            let pool = pool(2);
            let h = pool.spawn_with(cpu_budget(), || print!("{}", CoroutineInside));
            let k = expect_hard_kill(
                join_or_hang(h, "a coroutine spinning inside print!"),
                "a coroutine spinning inside print!",
            );
            // Frozen there, it would hold stdout's lock for good. (Abandoned, it spins
            // on holding it: nothing else could end it.)
            assert_eq!(k.how(), KillHow::Abandoned, "{k:?}");
        },
    );
}

// --- 5. The monitor and the runtime's bookkeeping never run user code. ---

/// A value whose `Drop` never returns.
struct DropsNever;

impl Drop for DropsNever {
    fn drop(&mut self) {
        loop {
            std::thread::park();
        }
    }
}

#[test]
fn user_drops_never_run_on_the_monitor_or_in_another_tasks_bookkeeping() {
    child(
        "user_drops_never_run_on_the_monitor_or_in_another_tasks_bookkeeping",
        || {
            let pool = pool(3);
            let handle = pool.handle();
            // 300 budgeted tasks (past the 256 at which the watch list is pruned in a
            // spawning task's bookkeeping) whose handles stay alive until they are done:
            // the watch list then holds the last references to cells whose values and
            // panic payloads were handed out already. Spawned from a task, so the pruning
            // happens in a task's bookkeeping.
            let spawner = pool.spawn(move || {
                let handles: Vec<_> = (0..300u32)
                    .map(|i| {
                        handle.spawn_with(cpu_budget(), move || {
                            if i % 2 == 0 {
                                std::panic::panic_any(Expected(44));
                            }
                            i
                        })
                    })
                    .collect();
                handles.into_iter().filter_map(|h| h.join().ok()).count()
            });
            assert_eq!(join_or_hang(spawner, "the spawner").unwrap(), 150);
            // Detached tasks whose values and payloads never finish dropping: dropped by
            // the thread that completes each (detached before they complete), never by
            // the monitor.
            for i in 0..2u32 {
                drop(pool.spawn_with(cpu_budget(), move || {
                    std::thread::sleep(Duration::from_millis(100));
                    if i % 2 == 0 {
                        std::panic::panic_any(DropsNever);
                    }
                    DropsNever
                }));
            }
            std::thread::sleep(Duration::from_millis(300));
            // Budgets, freezes and standbys still work (one slot is still free).
            let h = pool.spawn_with(cpu_budget(), || loop {
                black_box(0u64);
            });
            expect_hard_kill(join_or_hang(h, "a runaway after stuck drops"), "runaway");
            let good = pool.spawn(|| 7);
            assert_eq!(join_or_hang(good, "a good task").unwrap(), 7);
            std::mem::forget(pool);
        },
    );
}

// --- 7. A malformed shared object never stops the monitor. ---

#[test]
fn a_malformed_shared_object_does_not_stop_the_monitor() {
    child(
        "a_malformed_shared_object_does_not_stop_the_monitor",
        || {
            let pool = pool(1);
            // A copy of libm whose section headers (which the loader never reads, and the
            // monitor does, for std's lock holders) point far past the end of the file, and
            // count 65,535.
            let mut elf = std::fs::read("/lib/x86_64-linux-gnu/libm.so.6")
                .or_else(|_| std::fs::read("/usr/lib/x86_64-linux-gnu/libm.so.6"))
                .expect("read libm");
            elf[0x28..0x30].copy_from_slice(&0xffff_ffff_ffff_ff00u64.to_le_bytes());
            elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
            elf[0x3c..0x3e].copy_from_slice(&0xffffu16.to_le_bytes());
            let path = std::env::temp_dir()
                .join(format!("microsched-malformed-{}.so", std::process::id()));
            std::fs::write(&path, &elf).unwrap();
            let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: a copy of libm, whose initialisers are libm's.
            let handle =
                unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            assert!(!handle.is_null(), "dlopen of the malformed copy");
            // The monitor reads it within its next refresh (100 ms).
            std::thread::sleep(Duration::from_millis(500));
            let h = pool.spawn_with(cpu_budget(), || loop {
                black_box(0u64);
            });
            expect_hard_kill(
                join_or_hang(h, "a runaway after a malformed object"),
                "runaway",
            );
            assert_eq!(pool.stats().monitor_panics, 0, "{:?}", pool.stats());
            let _ = std::fs::remove_file(&path);
            process_still_usable(&pool, StdoutState::Usable);
        },
    );
}

// --- 8. No leak per pool. ---

/// The process's resident set, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn building_and_dropping_pools_does_not_leak_their_kill_registries() {
    child(
        "building_and_dropping_pools_does_not_leak_their_kill_registries",
        || {
            // A large frozen-thread table (1.6 MB a registry) makes a leak plain.
            let build = || {
                builder(1)
                    .max_frozen(200_000)
                    .build()
                    .expect("build a pool")
            };
            let run_one = || {
                let pool = build();
                let h = pool.spawn_with(cpu_budget(), || 1u32);
                assert_eq!(join_or_hang(h, "a budgeted task").unwrap(), 1);
                pool.shutdown();
            };
            // Warm up (the first registry, thread stacks, allocator arenas).
            for _ in 0..20 {
                run_one();
            }
            let before = rss_kib();
            for _ in 0..300 {
                run_one();
            }
            let grown = rss_kib().saturating_sub(before);
            // 300 leaked registries would be 480 MB.
            assert!(
                grown < 64 * 1024,
                "the process grew by {grown} KiB over 300 pools"
            );
        },
    );
}

// --- Also checked. ---

/// The fault handler runs with every signal blocked: the pool's timer handler never
/// runs inside it.
#[test]
fn the_fault_handler_blocks_the_pools_signal_while_it_runs() {
    child(
        "the_fault_handler_blocks_the_pools_signal_while_it_runs",
        || {
            let pool = pool(1);
            // SAFETY: reading the current action into a zeroed struct.
            let action = unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                assert_eq!(
                    libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut action),
                    0
                );
                action
            };
            // SAFETY: a valid, initialised mask.
            let blocked = unsafe { libc::sigismember(&action.sa_mask, libc::SIGALRM) };
            assert_eq!(blocked, 1, "SIGALRM is not blocked in the SIGSEGV handler");
            drop(pool);
        },
    );
}

#[test]
fn a_runaway_contending_a_parking_lot_mutex_leaves_the_parking_table_usable() {
    child(
        "a_runaway_contending_a_parking_lot_mutex_leaves_the_parking_table_usable",
        || {
            let pool = pool(2);
            let h = pool.spawn_with(cpu_budget(), || {
                let lock = std::sync::Arc::new(parking_lot::Mutex::new(0u64));
                let other = lock.clone();
                // A helper that keeps the lock contended, so the runaway spends its time
                // in parking_lot's slow paths (under its parking table's bucket locks).
                std::thread::spawn(move || loop {
                    *other.lock() += 1;
                });
                loop {
                    *lock.lock() += 1;
                }
            });
            expect_hard_kill(
                join_or_hang(h, "parking_lot contention"),
                "parking_lot contention",
            );
            // Every bucket of the table, by way of many contended mutexes.
            let _watchdog = Watchdog::start("parking_lot from other threads", CHECKS);
            let locks: std::sync::Arc<Vec<parking_lot::Mutex<u32>>> =
                std::sync::Arc::new((0..4096).map(|_| parking_lot::Mutex::new(0)).collect());
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let locks = locks.clone();
                    std::thread::spawn(move || {
                        for _ in 0..50 {
                            for l in locks.iter() {
                                *l.lock() += 1;
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().unwrap();
            }
            process_still_usable(&pool, StdoutState::Usable);
        },
    );
}

#[path = "../examples/support/services.rs"]
mod support;

#[test]
fn a_runaway_looking_services_up_leaves_the_cache_usable() {
    let dir = support::build(false).expect("build the example services");
    child(
        "a_runaway_looking_services_up_leaves_the_cache_usable",
        move || {
            // SAFETY: the directory holds the example services.
            let cache = std::sync::Arc::new(unsafe { microsched::ServiceCache::new(&dir, 1) });
            let pool = pool(1);
            let in_task = cache.clone();
            // Capacity 1 and two names: every lookup misses, loads and evicts.
            let h = pool.spawn_with(cpu_budget(), move || loop {
                let _ = black_box(in_task.get("svc_hash").unwrap());
                let _ = black_box(in_task.get("svc_json").unwrap());
            });
            expect_hard_kill(join_or_hang(h, "service lookups"), "service lookups");
            // Capacity 2: every lookup hits, so most of the time goes to the cache's lock
            // (frozen in its unlock, outside the no-freeze guard, the lock stayed held).
            // SAFETY: as above.
            let hits = std::sync::Arc::new(unsafe { microsched::ServiceCache::new(&dir, 2) });
            for _ in 0..30 {
                let in_task = hits.clone();
                let h = pool.spawn_with(cpu_budget(), move || loop {
                    let _ = black_box(in_task.get("svc_hash").unwrap());
                    let _ = black_box(in_task.get("svc_json").unwrap());
                });
                expect_hard_kill(join_or_hang(h, "service hits"), "service hits");
                let _watchdog = Watchdog::start("a service hit after a kill", CHECKS);
                hits.get("svc_hash").expect("a hit after the kill");
            }
            let _watchdog = Watchdog::start("service lookups from the main thread", CHECKS);
            cache
                .get("svc_hash")
                .expect("look up a service after the kill");
            cache
                .get("svc_json")
                .expect("look up another service after the kill");
            process_still_usable(&pool, StdoutState::Usable);
        },
    );
}

/// An abandoned runaway (it held a `FreezeGuard` nearly all the time) is never stopped
/// for good inside a guarded section: the lock it takes there stays usable.
#[test]
fn an_abandoned_runaway_is_never_stopped_inside_a_freeze_guard() {
    child(
        "an_abandoned_runaway_is_never_stopped_inside_a_freeze_guard",
        || {
            static LOCK: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
            let pool = pool(1);
            let h = pool.spawn_with(cpu_budget(), || {
                let until = Instant::now() + Duration::from_secs(3);
                while Instant::now() < until {
                    let _guard = microsched::FreezeGuard::new();
                    let mut n = LOCK.lock().unwrap_or_else(|e| e.into_inner());
                    for _ in 0..200_000 {
                        *n = black_box(n.wrapping_add(1));
                    }
                }
            });
            expect_hard_kill(join_or_hang(h, "a guarded runaway"), "a guarded runaway");
            // Within its 3 s it returns by itself, unless stopped holding the lock.
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if LOCK.try_lock().is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "hang: the guarded lock stayed held"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_secs(4));
            let deadline = Instant::now() + Duration::from_secs(20);
            while LOCK.try_lock().is_err() {
                assert!(
                    Instant::now() < deadline,
                    "hang: the guarded lock stayed held"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        },
    );
}

/// Prints nothing, slowly: `write!` on a stdout lock guard spends its time inside it.
struct SlowNothing;

impl fmt::Display for SlowNothing {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        spin_for(1);
        Ok(())
    }
}

/// A runaway writing through a `StdoutLock` it takes for one statement at a time (the
/// guard lives in the task's own frame) is never frozen while it holds it.
#[test]
fn a_runaway_holding_a_stdout_lock_guard_in_its_frame_is_not_frozen_holding_it() {
    child(
        "a_runaway_holding_a_stdout_lock_guard_in_its_frame_is_not_frozen_holding_it",
        || {
            use std::io::Write;
            let pool = pool(1);
            for _ in 0..10 {
                let h = pool.spawn_with(cpu_budget(), || loop {
                    let _ = write!(std::io::stdout().lock(), "{SlowNothing}");
                    spin_for(1);
                });
                expect_hard_kill(
                    join_or_hang(h, "writes through a guard"),
                    "writes through a guard",
                );
                let _watchdog = Watchdog::start("println after a kill", CHECKS);
                println!();
            }
            process_still_usable(&pool, StdoutState::Usable);
        },
    );
}
