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
use common::Expected;

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
            let h = pool.spawn_with(cpu_budget(), || {
                // The crate's hook (which undoes a redirect) is gone; so is the tests'.
                std::panic::set_hook(Box::new(|_| {}));
                loop {
                    let caught =
                        std::panic::catch_unwind(AssertUnwindSafe(|| print!("{}", PanicInside)));
                    assert!(caught.is_err());
                }
            });
            expect_hard_kill(
                join_or_hang(h, "a panic out of print! under a replaced hook"),
                "a panic out of print! under a replaced hook",
            );
            assert!(pool.stats().freeze_redirected >= 1, "{:?}", pool.stats());
            let _ = std::panic::take_hook();
            process_still_usable(&pool, StdoutState::Usable);
        },
    );
}
