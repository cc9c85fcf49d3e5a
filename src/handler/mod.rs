//! The signal handler and everything it reaches. **The zone: async-signal-safe only.**
//!
//! The handler interrupts task code at an arbitrary instruction, possibly inside `malloc`,
//! inside a `RefCell` borrow, or holding std's stdout lock. So everything in this folder,
//! and everything it calls, may only:
//!
//! - load, store and read-modify-write atomics;
//! - make raw syscalls and vDSO reads (`sys::async_safe`: `clock_gettime`, `timer_settime`
//!   on this pool's timers (another thread's only through `Record::arm_precise_from_anywhere`,
//!   which its owner waits out before deleting it), `sched_setscheduler`,
//!   `sched_setaffinity`, `sched_yield`, `futex`, `gettid`, `getpid`, `tgkill`,
//!   `rt_sigprocmask`, `sigaction`, `process_vm_readv` on itself, and `open`/`read`/`close`
//!   of a thread's `/proc` stat);
//! - walk the interrupted thread's stack with `walk.rs` (`gimli` over unwind tables that
//!   `runtime/text_scan.rs` recorded in `places.rs` in normal context; reads of the
//!   thread's own stack only);
//! - call [`Reserve::take_standby`], [`Reserve::give_back`], [`Reserve::grant`],
//!   [`Reserve::want`] and [`Reserve::unwant`] (`sync/reserve.rs`: atomics, a fence, and a
//!   futex wake through `Futex::wake_one`, which is the raw `sys::futex_wake` syscall
//!   outside loom).
//!
//! It must not allocate, lock (std or parking_lot), panic, format, touch a lazily
//! initialised thread-local, or unwind; it saves and restores `errno`.
//!
//! The fence (`tools/fence.py`, run by CI): files here import only this folder,
//! `budget`, `counters`, `sync::{loom, reserve}` and `sys::async_safe`; nothing in the
//! folder above it (the runtime, the task layer, the kill registry) is reachable from
//! here except through the traits this zone defines ([`FrozenTask`], [`FrozenPool`]); and
//! zone code allocates, locks, formats and unwraps nowhere but in items marked
//! `// Ordinary context:` (they run only on ordinary threads; the handler never calls
//! them) or `// Built in ordinary context:` (values made and dropped outside the handler,
//! which it only reads). Everything else here is async-signal-safe whichever thread runs
//! it: the runner calls `Record::start_task` per task, the monitor `Record::nudge`.
//! Clippy holds the same line by type (`clippy.toml`, the `deny` below): each marked item
//! carries the matching `#[allow]`.
//!
//! The files: `mod.rs` (the entry, [`on_signal`]), `tick.rs` (steps 1–4 below), `timer.rs`
//! (the clocks' policy), `record.rs` (the records, [`Preempt`], [`Running`] and the
//! traits), `control.rs` (a task's kill word), `ledger.rs` (the handler's half of the kill
//! registry), `freeze.rs` (the gated freeze, the trampoline, the fault handler),
//! `frames.rs` (the gate's verdict over frames), `walk.rs` (the stack walk), `places.rs`
//! (the tables the gate reads), `chain.rs` (deliveries for the previous action). It never switches
//! the thread to other code: a handoff only changes *who holds the slot*, and the
//! interrupted task resumes on this thread when the handler returns (the crate docs'
//! "Soundness").
//!
//! # Records
//!
//! Every thread of every pool (runner, standby, carrier) owns one [`Record`] from a static
//! table while it lives. The runner writes its state there per task (two stores and a
//! compare-exchange, no syscall); its timers carry the record's index in `si_value`, with a
//! per-process magic number above it, so the handler finds the record without a
//! thread-local and recognises deliveries that are not ours. Records are never freed, only
//! reused, so a stale index still points at valid memory; the handler also checks that the
//! record belongs to the thread it is running on.
//!
//! # On a tick ([`on_tick`])
//!
//! 1. No task running (idle, spinning, or a carrier's already-demoted task): return.
//!    With the default clock (`TimerClock::Contention`), the tick is the one-shot that
//!    someone armed when work was queued behind this runner: if nothing is queued any
//!    more (and no peer saw the task past its quantum), return, and stop the CPU-time
//!    ticks if they ran; if a newer task runs, hand the watch to the thread's CPU-time
//!    ticks (`timer.rs`); if the closure is not running yet (or any more), look again a
//!    quantum later, or at the next tick.
//! 2. The task has run less than the quantum: return. With the CPU-time clock, which only
//!    fires on the kernel tick, if the quantum will end before the next tick and the task
//!    has already run half of it, arm the thread's one-shot monotonic timer for the exact
//!    moment it ends. (Arming and disarming costs ~20 µs on a VM; doing it for every task
//!    a tick lands in cost 0.5 % of throughput on short tasks. A task that had run less
//!    than half its quantum is caught by the next tick instead: at most `tick − q/2` late.)
//! 3. It has run the quantum and the runner is inside a runtime section (a spawn pushing to
//!    the slot's deque): set `pending`; the section hands off as it ends.
//! 4. Otherwise hand off (`sync/reserve.rs` steps 3–5): mark the record `CARRIED`, grant the
//!    slot to a standby, and demote this thread to `SCHED_IDLE`, so the kernel runs the
//!    standby ahead of it on the same core. The task runs on here, in the gaps, and this
//!    thread may now use idle time on any core of the pool (the task never leaves it).
//!    The new carrier takes a ticket of the pool's line (`record.rs`, `CarrierLine`).
//! 5. After the tick (`on_delivery`): a carrier whose turn has not come waits for it in
//!    the handler where the freeze gate would accept a freeze (`freeze.rs`,
//!    `await_turn`), or looks again a millisecond later.

// The zone: no allocation, lock, printing or panicking helper (clippy.toml), except in
// items marked `// Ordinary context:` or `// Built in ordinary context:`, which allow them.
#![cfg_attr(
    not(test),
    deny(
        clippy::disallowed_types,
        clippy::disallowed_macros,
        clippy::disallowed_methods
    )
)]

use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::async_safe;

mod chain;
mod control;
mod frames;
mod freeze;
mod history;
mod ledger;
pub(crate) mod places;
mod record;
mod tick;
mod timer;
#[cfg(target_arch = "x86_64")]
mod walk;

pub(crate) use chain::{chain, PREVIOUS};
pub(crate) use control::Control;
pub use freeze::FreezeGuard;
pub(crate) use freeze::{
    hand_off_before_blocking, install_panic_hook, is_cancel_unwind, mark_monitor, on_fault,
    set_this_record, unwind_cancelled,
};
pub(crate) use history::{RunHistory, MAX_KEEP_QUANTA};

/// Whether the handler asked for the loaded objects' tables to be refreshed now (it met
/// code of an object loaded since the last refresh), clearing the ask.
pub(crate) fn take_refresh_wanted() -> bool {
    places::REFRESH_WANTED.swap(false, std::sync::atomic::Ordering::Relaxed)
}
pub(crate) use ledger::KillLedger;
pub(crate) use record::{
    init_magic, token, CarrierLine, FrozenPool, FrozenTask, Holder, Outside, Preempt, Record,
    Running, FATE_ABANDONED, MAX_THREADS, NO_TIMER, RECORDS,
};
pub(crate) use tick::{hand_off_long, on_contention, poke, Backlog};
pub use timer::TimerClock;
pub(crate) use timer::PRECISE_CLOCK;

use record::record_of;
use tick::on_tick;

/// The process-wide handler for every signal a pool uses.
pub(crate) extern "C" fn on_signal(
    signal: i32,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    let errno = async_safe::errno();
    // SAFETY: the kernel passes a valid `siginfo_t` to an SA_SIGINFO handler.
    let token = unsafe { async_safe::pool_token(info) };
    let ours = match token.and_then(record_of) {
        Some(record) => {
            // SAFETY: as above.
            if unsafe { async_safe::queued(info) } {
                record.take_nudge();
            }
            Some(record)
        }
        // SAFETY: as above.
        None if unsafe { async_safe::info_lost(info) } => {
            // A nudge of ours whose `siginfo` the kernel could not queue, or not ours.
            let tid = async_safe::gettid();
            RECORDS
                .iter()
                .find(|r| r.in_use.load(Ordering::Relaxed) && r.tid.load(Ordering::Relaxed) == tid)
                .filter(|r| r.take_nudge())
        }
        None => None,
    };
    match ours {
        Some(record) => {
            HANDLER_RUNS.fetch_add(1, Ordering::Relaxed);
            // A delivery for a record this thread no longer owns (a timer deleted with an
            // expiry still queued, a nudge that raced with the record changing hands) is
            // ours too, and simply dropped.
            if record.tid.load(Ordering::Relaxed) == async_safe::gettid() {
                record.handling.store(true, Ordering::SeqCst);
                on_delivery(record, context);
                record.handling.store(false, Ordering::SeqCst);
            }
        }
        None => chain(signal, info, context, on_signal as *const () as usize),
    }
    async_safe::set_errno(errno);
}

/// A delivery of ours, on the record's own thread.
fn on_delivery(record: &Record, context: *mut libc::c_void) {
    // Never freeze inside a handler installed after ours that called ours (signal-hook
    // does, holding its registry's lock while it does): the freeze waits for a delivery
    // that reaches ours directly (or the kill ends in an abandon).
    let direct = || {
        async_safe::installed_handler(record.preempt().signal) == on_signal as *const () as usize
    };
    if record.fate() == FATE_ABANDONED {
        // Outside the pool now: no handoff, no freeze of its task (already resolved).
        // But if it reaches a point the gate accepts, it stops there for good instead of
        // burning idle CPU (it keeps its ticks until then).
        if direct() {
            freeze::settle(record, context);
        }
        return;
    }
    if !record.kill_target.load(Ordering::Relaxed).is_null() && direct() {
        record.tick_for_kill();
        // Returns only if the freeze is deferred (or not for this task).
        freeze::attempt(record, context);
    }
    on_tick(record, context);
    // A carrier just handed off, or looking again: it waits for its turn here if it may.
    freeze::await_turn(record, context);
}

/// Deliveries of the pool's own signals that reached [`on_signal`] (directly, or through
/// a handler installed later that chains to it): the monitor's probe for a handler that
/// replaced ours without chaining (`kill.rs`).
pub(crate) static HANDLER_RUNS: AtomicU64 = AtomicU64::new(0);
