//! The gated freeze. **Part of the handler's zone**: everything here is reached from the
//! signal handler and may only use atomics, raw syscalls and its own stack walk
//! (`walk.rs`: never libgcc's unwinder, which takes a lock once a JIT has registered
//! frames). The items that run only in normal context are marked `// Ordinary context:`.
//!
//! # Protocol (the crate docs' "Soundness": a hard kill freezes, only where it is safe)
//!
//! 1. The monitor wants a task frozen (its grace period is over): it stores the task's
//!    control in the thread's record (`kill_target`) and queues the pool's signal to the
//!    thread. It repeats every `kill::FREEZE_RETRY` until the task is done.
//! 2. The handler ([`attempt`]) checks that the target is the task whose closure is running
//!    on the thread (not a later one, not runtime code), that no redirect is on its way
//!    (one an unwind went through is forgotten), that a running task has had its
//!    chance to see the cancel (200 µs of CPU time, and a checkpoint passed if it calls
//!    `checkpoint`), then the gate, in order:
//!    - the thread's no-freeze counter is zero (the opt-in allocator wrapper, and our
//!      panic hook while it runs the embedder's);
//!    - the interrupted PC is not in a system library (`places.rs`), unless the thread is
//!      blocked in a waiting system call there (judged from the context: the PC on the
//!      `syscall` instruction and a wait's number, `sys::async_safe::waiting`);
//!    - the thread is not panicking, until a monitor period before the maximum deferral
//!      ends (then a thread running its unwinding destructors may be frozen: std holds no
//!      lock there, and the hook, which may, runs under the no-freeze counter), and not
//!      unwinding from its own cancel at all;
//!    - a walk of the task's frames (`walk.rs`, from the interrupted context to the frame
//!      that called the closure, `Running::closure_frame`, however deep, inside the
//!      thread's own stack only; the interrupted frame must be the task's, not the
//!      runtime's around it) finds no frame in a system library past the one- or
//!      two-frame wrapper of a blocked call, none on the way from a cancel to the
//!      unwinder, none in the panic runtime's cleanup, and no frame it cannot walk
//!      (code without unwind tables, a coroutine's stack);
//!    - no frame holds a process-wide lock (`places.rs`: std's stdio, environment,
//!      backtrace, panic hook, thread-info and exit locks, process spawning, and
//!      parking_lot's parking table), unless the thread is blocked *acquiring* a stdio or
//!      environment lock in the frames that take it. If one does (the thread is inside
//!      `println!`), the return address of the outermost such frame is redirected to its
//!      record's trampoline stub, so the thread freezes the moment it returns from it,
//!      with the lock released (x86_64; elsewhere the freeze waits, and the kill ends
//!      abandoned). The stubs' unwind info makes a redirected frame unwind like the
//!      original, whoever unwinds it.
//!
//!    Any check failing defers: the handler returns and the task goes on until the next
//!    try.
//! 3. A slot the thread still holds is handed to a standby first; with none parked, it asks
//!    for one and defers.
//! 4. [`freeze`]: block every signal, delete the thread's timers, hand off, publish the
//!    outcome (`Killed { how: Frozen }`), count it, count the thread out of the pool, and
//!    block forever. The stack, the alternate stack and the thread's TLS stay mapped.

use std::cell::Cell;
use std::panic;
use std::ptr;
use std::sync::atomic::{compiler_fence, Ordering};

use super::chain::chain;
use super::frames::{Places, Walk};
use super::ledger::Defer;
use super::places::Holder;
use super::record::{
    CarrierLine, Preempt, Record, Running, CARRIED, FATE_ABANDONED, IN_TASK, MAX_THREADS, NO_TIMER,
    RECORDS,
};
use crate::budget::KillReason;
use crate::handler::places;
use crate::sys::async_safe::{self, Wait};

thread_local! {
    /// This thread's record, for the code below that runs in normal context (the
    /// trampoline, the panic hook, the allocator wrapper, `checkpoint`). Const, no
    /// destructor: no lazy initialisation.
    static THIS_RECORD: Cell<*const Record> = const { Cell::new(ptr::null()) };
}

/// Sets the calling thread's record (pool threads, at setup and teardown).
pub(crate) fn set_this_record(record: Option<&'static Record>) {
    THIS_RECORD.with(|r| r.set(record.map_or(ptr::null(), |r| r as *const Record)));
}

fn this_record() -> Option<&'static Record> {
    // SAFETY: set from a `&'static Record` by this thread.
    THIS_RECORD.with(|r| unsafe { r.get().as_ref() })
}

/// Gives the calling thread's slot to a standby now, because its task is about to block
/// (a join that has to wait, `block_in_place`): the handoff a tick makes past the
/// quantum, made early. The thread goes on as a carrier, and rejoins the pool's threads
/// when its task ends. False (and nothing changed) on a thread that runs no task of a pool
/// with preemption, in runtime code, already a carrier, at the slot's cap of carriers, or
/// with no standby parked: the task then blocks on its slot, as it would have. Ordinary
/// context (the task's own thread, in a call into the runtime); async-signal-safe anyway.
pub(crate) fn hand_off_before_blocking() -> bool {
    let Some(record) = this_record() else {
        return false;
    };
    // No freeze while the slot is between holders: a kill waits the few µs this takes.
    let _no_freeze = FreezeGuard::new();
    super::tick::hand_off_now(record)
}

/// Before a cooperative unwind (normal context): marks the thread as unwinding from its
/// cancel. A return redirected for a freeze stays as it is: the stubs' unwind info lets the
/// unwind go through it, and the crate never writes a return slot back (after an unwind
/// it may be a local of the task's by then).
pub(crate) fn before_unwind() {
    if let Some(record) = this_record() {
        record.cancel_unwinding.store(true, Ordering::Relaxed);
    }
}

thread_local! {
    /// This thread is a pool's monitor or standby maker (const, no destructor).
    static ON_MONITOR: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as a monitor: a panic of its own (a bug) is reported without
/// the embedder's hook, which may lock stderr, held for good by a frozen task.
pub(crate) fn mark_monitor() {
    ON_MONITOR.with(|m| m.set(true));
}

/// Raises the calling pool thread's no-freeze counter for its lifetime: wrap code that may
/// take a process-wide lock the gate cannot see (an allocator linked into the binary).
/// The runtime holds one across every call task code makes into it (spawn, cancel, an
/// inline join's bookkeeping, shutdown). Does nothing on other threads.
///
/// A task that holds one for good is not frozen: its kill ends abandoned, in the same
/// bound as any other deferral. The guard belongs to the thread that made it: it is
/// neither `Send` nor `Sync`.
///
/// ```compile_fail
/// let guard = microsched::FreezeGuard::new();
/// std::thread::spawn(move || drop(guard));
/// ```
pub struct FreezeGuard(Option<&'static Record>, std::marker::PhantomData<*const ()>);

impl FreezeGuard {
    /// Raises the counter (on a pool thread) until the guard is dropped.
    #[inline]
    pub fn new() -> FreezeGuard {
        let record = this_record();
        if let Some(record) = record {
            // Only this thread writes its counter (the handler reads it): no locked RMW.
            let n = record.no_freeze.load(Ordering::Relaxed);
            // Saturating: guards forgotten by the billion must not wrap it to zero.
            record
                .no_freeze
                .store(n.saturating_add(1), Ordering::Relaxed);
            compiler_fence(Ordering::SeqCst);
        }
        FreezeGuard(record, std::marker::PhantomData)
    }
}

impl Default for FreezeGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FreezeGuard {
    #[inline]
    fn drop(&mut self) {
        if let Some(record) = self.0 {
            compiler_fence(Ordering::SeqCst);
            let n = record.no_freeze.load(Ordering::Relaxed);
            // Saturating: a guard forgotten in one task and dropped by another on the
            // thread (through a thread-local) must not wrap the counter.
            record
                .no_freeze
                .store(n.saturating_sub(1), Ordering::Relaxed);
        }
    }
}

// Ordinary context: the pool's build, once.
#[allow(
    clippy::disallowed_types,
    clippy::disallowed_macros,
    clippy::disallowed_methods
)]
/// Installs (once) a panic hook around the current one. It runs the previous hook under
/// the no-freeze counter (hooks lock stderr and std's backtrace lock), except on a
/// monitor thread, where it runs none.
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if ON_MONITOR.with(Cell::get) {
                // Counted and reported once by the monitor's catch (`Kills::monitor_panicked`).
                return;
            }
            let _guard = FreezeGuard::new();
            previous(info);
        }));
    });
}

/// True if the redirected return slot `slot` still belongs to a live frame of the
/// thread's stack, whose stack pointer is `sp` now: above it, and still holding the
/// stub's address. An unwind that went through the redirected frame (the stubs'
/// unwind info lets it) leaves the slot below the stack pointer, and the next call
/// overwrites it. Async-signal-safe (reads the thread's own stack).
fn redirect_live(record: &Record, slot: usize, sp: usize) -> bool {
    let (lo, hi) = record.stack_range();
    slot >= sp
        && slot >= lo
        && slot + 8 <= hi
        // SAFETY: inside the thread's own stack, which stays mapped; aligned.
        && unsafe { ptr::read_volatile(slot as *const usize) }
            == trampoline_address(record.index.load(Ordering::Relaxed))
}

/// In the handler: true if a redirect is on its way (the frame has not returned yet), and
/// forgets one an unwind took.
fn redirect_pending(record: &Record, sp: usize) -> bool {
    let slot = record.redirect_slot.load(Ordering::Relaxed);
    if slot == 0 {
        return false;
    }
    if redirect_live(record, slot, sp) {
        return true;
    }
    if record
        .redirect_slot
        .compare_exchange(slot, 0, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        record.preempt().ledger.unreserve_frozen();
    }
    false
}

/// Step 2, from the handler: freezes the thread now (never returns), redirects a
/// lock-holding frame, or defers.
pub(super) fn attempt(record: &Record, context: *mut libc::c_void) {
    record.kill_acks.fetch_add(1, Ordering::Relaxed);
    let target = record.kill_target.load(Ordering::Relaxed);
    let running = record.running.load(Ordering::Relaxed);
    let kills = record.preempt().ledger;
    // SAFETY: `running` is null or points at the `Running` of the closure that this
    // thread (which the handler interrupted) is inside; it cannot be popped under us.
    let Some(running) = (unsafe { running.as_ref() }) else {
        kills.deferred(Defer::Runtime);
        return;
    };
    // The target may be this task or one it runs inside (an inline join): the freeze
    // stops the whole chain.
    let Some(targeted) = running.chain().find(|r| ptr::eq(r.task.control(), target)) else {
        return;
    };
    let control = targeted.task.control();
    // SAFETY: `context` is the handler's third argument.
    let sp = unsafe { async_safe::interrupted_sp(context) };
    // SAFETY: as above.
    let (pc, wait) = unsafe { async_safe::interrupted(context) };
    // In the trampoline first: there the slot holds what the stub pushed, and the redirect
    // would look like one an unwind took.
    if in_trampoline(pc) || redirect_pending(record, sp) {
        return;
    }
    // Only a task whose own kill is due: the target may be stale, its memory reused by
    // the task running now (see `Record::forget_kill`).
    let Some((_, at)) = control.killed() else {
        return;
    };
    let grace = control.budget.grace_period().as_nanos() as u64;
    if async_safe::monotonic_ns() < at.saturating_add(grace) {
        return;
    }
    let blocked = wait != Wait::None;
    // The grace period is wall-clock time. But a demoted carrier on a busy core may not
    // have run at all since the cancel was set: it first gets a little CPU time
    // (`GRACE_RUN`) to reach a checkpoint. (A thread that is not running cannot be frozen
    // anyway: the handler runs when it does. One starved past the bound is abandoned.) A
    // thread blocked in a wait cannot reach a checkpoint: it goes at once.
    if !blocked {
        // A task that calls `checkpoint` and has not passed one since its cancel has not
        // run since (its next one unwinds): it is not frozen before it has had the chance,
        // however much CPU time interrupts and signals took in its name. (One that never
        // gets it is abandoned at the bound.)
        if control.cancel_unseen() {
            kills.deferred(Defer::Grace);
            return;
        }
        if let Some(at_cpu) = control.cpu_at_kill() {
            if async_safe::thread_cpu_ns() < at_cpu.saturating_add(grace.min(GRACE_RUN_NS)) {
                kills.deferred(Defer::Grace);
                return;
            }
        }
    }
    let verdict = gate(record, running, context, wait, false);
    match verdict {
        Verdict::Defer(why) => kills.deferred(why),
        Verdict::Redirect { slot, ret } => {
            // At the cap the monitor sees it too, and counts the refusal once.
            if kills.reserve_frozen() {
                redirect(record, slot, ret);
            }
        }
        Verdict::Now => {
            let Some(reserved) = take_slot_off(record) else {
                kills.deferred(Defer::NoStandby);
                return;
            };
            if !kills.reserve_frozen() {
                if reserved {
                    record.reserve().give_back();
                }
                return;
            }
            freeze(record, running, None, reserved);
        }
    }
}

/// The stack the trampoline and the freeze use below a redirected slot, with a wide margin
/// (they take a few KiB in a debug build).
const TRAMPOLINE_STACK: usize = 64 * 1024;

/// The CPU time a cancelled task gets to reach a checkpoint before it may be frozen
/// (at most its grace period).
const GRACE_RUN_NS: u64 = 200_000;

/// The freeze gate's verdict on one attempt.
enum Verdict {
    Defer(Defer),
    Redirect { slot: usize, ret: usize },
    Now,
}

/// Step 2's checks. `overflow`: for a stack overflow, which cannot wait: no redirect, and
/// a panicking thread is judged by its frames alone.
fn gate(
    record: &Record,
    running: &Running<'_>,
    context: *mut libc::c_void,
    wait: Wait,
    overflow: bool,
) -> Verdict {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `context` is the handler's third argument (the gate's callers' contract).
    let regs = unsafe { super::walk::registers(context) };
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (record, running, context, wait, overflow);
        return Verdict::Defer(Defer::Unwalkable);
    }
    let pc = regs[16];
    let blocked = wait != Wait::None;
    if record.no_freeze.load(Ordering::Relaxed) > running.no_freeze_base
        || record.depth.load(Ordering::Relaxed) > 0
    {
        return Verdict::Defer(Defer::NoFreeze);
    }

    // The maximum deferral is counted in the thread's CPU time while it runs (a demoted
    // thread may get none for a long while), in wall-clock time while it waits.
    let forced = || {
        // The maximum deferral has passed in wall-clock time since the first request.
        if record.kill_force.load(Ordering::Relaxed) {
            return true;
        }
        if blocked {
            return false;
        }
        let now = async_safe::thread_cpu_ns();
        let mut until = record.kill_force_cpu.load(Ordering::Relaxed);
        if until == u64::MAX {
            // The first deferral for panicking: the clock starts now.
            until = now.saturating_add(record.preempt().ledger.max_deferral_ns);
            record.kill_force_cpu.store(until, Ordering::Relaxed);
        }
        now >= until
    };
    let panicking = std::thread::panicking();
    // A task unwinding from its cancel has seen it, and is running its destructors
    // (releasing what it holds, poisoning its mutexes): it is never frozen in them, only
    // abandoned if it is still at it when the bound is reached. Another panic's unwind
    // may be frozen in, past the maximum deferral.
    let cancel_unwinding = record.cancel_unwinding.load(Ordering::Relaxed);
    if panicking && !overflow && (cancel_unwinding || !forced()) {
        return Verdict::Defer(Defer::Panicking);
    }
    // Never redirect a return while unwinding: the unwinder reads return addresses.
    let may_redirect = cfg!(target_arch = "x86_64") && !panicking && !overflow;
    let lib_pc = places::in_library(pc);
    // (A service's own panic is invisible to `panicking`, which reads this std's count;
    // its unwinder is in libgcc_s, whose frames are never redirected.)
    if lib_pc && !blocked && !may_redirect {
        return Verdict::Defer(Defer::Library);
    }
    // Between the runtime's frames around the closure and the closure's: outside its
    // closure (just starting, or returned and publishing) the task is the runtime's.
    let (Some(inner_boundary), Some(boundary)) = (
        running.closure_frame(),
        running.chain().last().and_then(|r| r.closure_frame()),
    ) else {
        return Verdict::Defer(Defer::Runtime);
    };
    let mut walk = Walk::new(
        boundary,
        inner_boundary,
        wait,
        lib_pc && !blocked,
        panicking,
    );
    // The handler's own walk, never the unwinder (`walk.rs`), and never outside the
    // thread's own stack.
    let redirect = record.redirect_slot.load(Ordering::Relaxed);
    let redirect = (redirect != 0).then(|| super::walk::Redirect {
        slot: redirect,
        stub: trampoline_address(record.index.load(Ordering::Relaxed)),
        ret: record.redirect_ret.load(Ordering::Relaxed),
    });
    // Reads stay in the stack glibc reports (which excludes the guard area since glibc
    // 2.27: a platform precondition, checked by `build.rs`).
    let (lo, hi) = record.stack_range();
    let floor = record.guard_lo.load(Ordering::Relaxed);
    let end = super::walk::walk(regs, (lo, hi), floor, redirect, |frame| {
        walk.each(&LivePlaces, frame)
    });
    if let Some(why) = walk.defer {
        return Verdict::Defer(why);
    }
    if !walk.reached_boundary {
        if end == super::walk::End::Unrecorded {
            // A `dlopen` the monitor has not seen yet: ask it to look now.
            places::REFRESH_WANTED.store(true, Ordering::Relaxed);
            record.preempt().ring();
            return Verdict::Defer(Defer::Unrecorded);
        }
        return Verdict::Defer(Defer::Unwalkable);
    }
    // The outermost lock holder first: by the time it returns, so have the library
    // frames inside it.
    // The trampoline runs on the task's stack, below the redirected slot: never redirect
    // where it would not have room (a task that recursed to just above its guard page).
    let (stack_lo, _) = record.stack_range();
    let room = |cfa: usize| cfa.saturating_sub(stack_lo) >= TRAMPOLINE_STACK;
    if walk.want_ret || walk.holder_cfa != 0 {
        return if may_redirect && walk.holder_ret != 0 && room(walk.holder_cfa) {
            Verdict::Redirect {
                slot: walk.holder_cfa - 8,
                ret: walk.holder_ret,
            }
        } else {
            Verdict::Defer(Defer::LockHeld)
        };
    }
    // The thread holds stdout's or stderr's lock, in whatever frame (a guard the task
    // keeps in its own frame included): not frozen until it lets go. (A redirect is
    // fine: the trampoline looks again.)
    let stdio_held = places::stdio_held_by(record.std_thread_id.load(Ordering::Relaxed));
    if lib_pc && !blocked {
        return if walk.lib_exit_ret != 0 && room(walk.lib_exit_cfa) {
            Verdict::Redirect {
                slot: walk.lib_exit_cfa - 8,
                ret: walk.lib_exit_ret,
            }
        } else {
            Verdict::Defer(Defer::Library)
        };
    }
    if stdio_held {
        return Verdict::Defer(Defer::LockHeld);
    }
    Verdict::Now
}

/// Whether the thread could be frozen right here, as the freeze gate judges it (no lock of
/// the process held, not in runtime code, not unwinding): a carrier waiting for its turn
/// waits only at such a point (`tick.rs`, `wait_turn`). `context` is the handler's third
/// argument.
pub(super) fn may_stop_here(record: &Record, context: *mut libc::c_void) -> bool {
    if context.is_null() || std::thread::panicking() {
        return false;
    }
    let running = record.running.load(Ordering::Relaxed);
    // SAFETY: as in `attempt`.
    let Some(running) = (unsafe { running.as_ref() }) else {
        return false;
    };
    // SAFETY: `context` is the handler's third argument.
    let (_, wait) = unsafe { async_safe::interrupted(context) };
    matches!(gate(record, running, context, wait, false), Verdict::Now)
}

/// How long a carrier waiting for its turn sleeps between looks at its kill state and at
/// the progress of the carriers running ahead of it.
const TURN_LOOK_NS: u64 = 5_000_000;

/// How long a waiting carrier that is not next in line sleeps between looks at its kill
/// state and at the carriers ahead when nothing wakes it (the line moving, or the monitor
/// for a kill, wake it).
const TURN_IDLE_LOOK_NS: u64 = 100_000_000;

/// The longest a carrier waits for its turn: then it runs beside the older ones. Far above
/// a long task's usual wait (tens of ms), and a bound where the carriers ahead never end.
const MAX_TURN_WAIT_NS: u64 = 1_000_000_000;

/// Carriers running ahead of a waiting one that together get less CPU time than this
/// share of a look's wall time (in ‰) have stopped making progress (blocked, perhaps on a
/// lock the waiting one holds): the waiting one runs too.
const TURN_PROGRESS_PER_MILLE: u64 = 50;

/// A new carrier takes a ticket of the pool's line (`record.rs`, [`CarrierLine`]) and, if
/// its turn has not come, waits for it here, in the handler, so the carriers handed off
/// before it finish first instead of all sharing the idle time as equals. It waits only
/// where the freeze gate would accept a freeze (no lock of the process held, not in
/// runtime code, not unwinding), and stops waiting as soon as a kill targets its task (the
/// kill then proceeds as for any carrier), or when the carriers ahead of it stop making
/// progress (they may be blocked on a lock of the task's own that this one holds): so it
/// can never deadlock, and it costs nothing but its place in line.
///
/// [`CarrierLine`]: CarrierLine
pub(super) fn await_turn(record: &Record, context: *mut libc::c_void) {
    let looks = record.turn_looks.load(Ordering::Relaxed);
    if looks == 0 || record.state.load(Ordering::Relaxed) != CARRIED {
        return;
    }
    let preempt = record.preempt();
    let line = &preempt.line;
    let ticket = record.ticket.load(Ordering::Relaxed);
    if CarrierLine::may_run(ticket, line.limit()) {
        record.turn_looks.store(0, Ordering::Relaxed);
        return;
    }
    if !may_stop_here(record, context) || record.kill_pending() {
        // Not here: look again in a millisecond (the precise timer is free: carriers
        // have no quantum), up to `TURN_LOOKS` times; meanwhile it runs.
        record.turn_looks.store(looks - 1, Ordering::Relaxed);
        if looks > 1 {
            record.arm_precise_from_anywhere(async_safe::monotonic_ns() + 1_000_000, 0);
        }
        return;
    }
    record.turn_looks.store(0, Ordering::Relaxed);
    let reserve = record.reserve();
    reserve.counters.turn_waits.fetch_add(1, Ordering::Relaxed);
    record.waiting_turn.store(true, Ordering::SeqCst);
    // Every waiter watches the carriers ahead for a stall, against its own baseline (their
    // CPU time and the line's limit at the start of a look; while the limit stays put, the
    // same carriers run): the next in line every `TURN_LOOK_NS`, the others every
    // `TURN_IDLE_LOOK_NS` (dozens of waiters scanning every few milliseconds took CPU time
    // from the carriers running). Only the next in line watching let a waiter further
    // back that holds the lock everyone ahead is blocked on wait for good.
    let waited_from = async_safe::monotonic_ns();
    let mut ahead = (carriers_ahead_cpu(preempt), line.limit());
    let mut look_started = waited_from;
    loop {
        let seen = line.seen(ticket);
        let limit = line.limit();
        if CarrierLine::may_run(ticket, limit) || record.kill_pending() {
            break;
        }
        let period = if ticket == limit {
            TURN_LOOK_NS
        } else {
            TURN_IDLE_LOOK_NS
        };
        line.wait(ticket, seen, period);
        let now = async_safe::monotonic_ns();
        if now.saturating_sub(waited_from) >= MAX_TURN_WAIT_NS {
            // Carriers ahead that never end (a task meant to run for good, a runaway
            // without a budget) must not hold the ones behind forever.
            reserve.counters.turn_cuts.fetch_add(1, Ordering::Relaxed);
            break;
        }
        let wall = now.saturating_sub(look_started);
        if wall < period {
            continue;
        }
        let now_ahead = (carriers_ahead_cpu(preempt), line.limit());
        // Starved by busy runners is not stalled: only carriers that made no progress and
        // are all blocked in the kernel (on a lock this one may hold) are. (Whether they
        // are blocked is asked only of carriers that made no progress: a read of each
        // one's `/proc` stat costs tens of µs, their CPU clocks one syscall each.)
        if now_ahead.1 == ahead.1
            && now_ahead.0.saturating_sub(ahead.0) * 1000 < wall * TURN_PROGRESS_PER_MILLE
            && !any_ahead_runnable(preempt)
        {
            reserve.counters.turn_cuts.fetch_add(1, Ordering::Relaxed);
            break;
        }
        ahead = now_ahead;
        look_started = now;
    }
    record.waiting_turn.store(false, Ordering::SeqCst);
}

/// The thread ids of the carriers of `preempt`'s pool that hold a ticket and are not
/// waiting (the ones a waiting carrier depends on). Async-signal-safe (atomic loads).
fn carriers_ahead(preempt: &Preempt) -> impl Iterator<Item = libc::pid_t> + '_ {
    RECORDS.iter().filter_map(move |r| {
        (std::ptr::eq(r.preempt.load(Ordering::Relaxed), preempt)
            && r.in_line.load(Ordering::SeqCst)
            && !r.waiting_turn.load(Ordering::SeqCst))
        .then(|| r.tid.load(Ordering::Relaxed))
        .filter(|&tid| tid != 0)
    })
}

/// The CPU time of the carriers ahead, in ns. Async-signal-safe (a `clock_gettime` per
/// carrier).
fn carriers_ahead_cpu(preempt: &Preempt) -> u64 {
    carriers_ahead(preempt)
        .map(|tid| async_safe::thread_cpu_ns_of(tid).unwrap_or(0))
        .sum()
}

/// Whether any carrier ahead is runnable (not blocked in the kernel). Async-signal-safe
/// (a read of each one's `/proc` stat, until one is).
fn any_ahead_runnable(preempt: &Preempt) -> bool {
    carriers_ahead(preempt).any(|tid| async_safe::thread_runnable(tid).unwrap_or(false))
}

/// The gate's frame verdicts read the live tables.
struct LivePlaces;

impl Places for LivePlaces {
    fn library(&self, ip: usize) -> Option<bool> {
        places::library(ip)
    }

    fn in_unwind_cleanup(&self, ip: usize) -> bool {
        places::in_unwind_cleanup(ip)
    }

    fn lock_holder(&self, start: usize, ip: usize) -> Holder {
        places::lock_holder(start, ip)
    }

    fn acquiring(&self, ip: usize) -> Option<bool> {
        places::acquiring(ip)
    }

    fn is_cancel_entry(&self, start: usize) -> bool {
        start == cancel_entry()
    }
}

/// Points a lock holder's return address at the trampoline, if it still holds `ret`.
fn redirect(record: &Record, slot: usize, ret: usize) {
    // `slot` is CFA - 8 of a frame of the interrupted task on this very thread's stack
    // (x86_64: the caller's return address sits just below the CFA), which cannot change
    // while the handler runs.
    // SAFETY: a live, aligned stack slot of this thread, checked to hold `ret` first.
    unsafe {
        if ptr::read_volatile(slot as *const usize) != ret {
            record.preempt().ledger.unreserve_frozen();
            record.preempt().ledger.deferred(Defer::Mismatch);
            return;
        }
        record.redirect_ret.store(ret, Ordering::Relaxed);
        record.redirect_slot.store(slot, Ordering::Relaxed);
        ptr::write_volatile(
            slot as *mut usize,
            trampoline_address(record.index.load(Ordering::Relaxed)),
        );
    }
    record.preempt().ledger.redirected();
}

// The trampolines: one stub per record (`MAX_THREADS` of them, 32 bytes each), and the
// body they share. A redirected return goes to the stub of the thread's record, one byte
// into it.
//
// The stubs are unwind-transparent: their unwind info describes the frame a return into
// them stands for, so an unwind started by anyone (`resume_unwind`, a panic under a hook
// that is not ours, a foreign exception, a backtrace) goes through a redirected frame
// exactly as through the original. In a stub, the stack pointer is the one the
// redirected frame returned with, and the return address is the record's
// `redirect_ret`, computed by a DWARF expression (`DW_CFA_val_expression`): the stub's
// start is the return address the unwinder found (register 16, the one it stands for)
// rounded down to 32 bytes, and the stub holds, at offset 16, the distance from there to
// its record's `redirect_ret` (a link-time constant: no relocation at load time). The
// unwinder looks a return address up one byte before it, so each stub's unwind info
// starts with a `nop` before its entry. The shared body has none: nothing unwinds
// through it (the thread freezes, or goes back to the real return address).
#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".pushsection .text.microsched_freeze_trampoline,\"ax\",@progbits",
    ".p2align 5",
    ".globl microsched_trampolines",
    ".hidden microsched_trampolines",
    "microsched_trampolines:",
    ".set microsched_k, 0",
    ".rept {n}",
    ".p2align 5",
    ".cfi_startproc",
    // The CFA is 8 above the stack pointer the frame returned with, and the stack
    // pointer is given as a value (CFA - 8, DW_CFA_val_offset): the CFA must differ from
    // the one the unwinder reports for the frame the stub stands for (its callee's, the
    // stack pointer itself), which identifies the frame that catches; with a CFA equal
    // to it, libgcc took the stub for the catching frame and aborted.
    ".cfi_def_cfa %rsp, 8",
    ".cfi_escape 0x14, 0x07, 0x01",
    // DW_CFA_val_expression, register 16 (the return address), 11 bytes:
    // DW_OP_breg16 0; DW_OP_const1s -32; DW_OP_and; DW_OP_plus_uconst 16; DW_OP_dup;
    // DW_OP_deref; DW_OP_plus; DW_OP_deref.
    ".cfi_escape 0x16, 0x10, 0x0b, 0x80, 0x00, 0x09, 0xe0, 0x1a, 0x23, 0x10, 0x12, 0x06, 0x22, 0x06",
    "nop",
    "pushq $microsched_k",
    ".cfi_adjust_cfa_offset 8",
    "jmp microsched_trampoline_body",
    ".cfi_endproc",
    ".p2align 4",
    ".quad {records} + microsched_k * {size} + {ret} - .",
    ".set microsched_k, microsched_k + 1",
    ".endr",
    ".p2align 4",
    ".type microsched_trampoline_body,@function",
    "microsched_trampoline_body:",
    // (%rsp): the record's index; %rsp + 8: the stack pointer the redirected frame
    // returned with. The return values (rax, rdx, xmm0, xmm1) are kept for the way back.
    "pushq %rbp",
    "movq %rsp, %rbp",
    "andq $-16, %rsp",
    "subq $48, %rsp",
    "movq %rax, (%rsp)",
    "movq %rdx, 8(%rsp)",
    "movdqu %xmm0, 16(%rsp)",
    "movdqu %xmm1, 32(%rsp)",
    "movq 8(%rbp), %rdi",
    "leaq 16(%rbp), %rsi",
    "call {entry}",
    // Not frozen: on to the real return address, as if returned to it.
    "movq %rax, %r11",
    "movq (%rsp), %rax",
    "movq 8(%rsp), %rdx",
    "movdqu 16(%rsp), %xmm0",
    "movdqu 32(%rsp), %xmm1",
    "movq %rbp, %rsp",
    "popq %rbp",
    "leaq 8(%rsp), %rsp",
    "jmp *%r11",
    ".size microsched_trampoline_body, .-microsched_trampoline_body",
    ".globl microsched_trampolines_end",
    ".hidden microsched_trampolines_end",
    "microsched_trampolines_end:",
    ".popsection",
    n = const MAX_THREADS,
    records = sym RECORDS,
    size = const std::mem::size_of::<Record>(),
    ret = const std::mem::offset_of!(Record, redirect_ret),
    entry = sym trampoline_entry,
    options(att_syntax),
);

#[cfg(target_arch = "x86_64")]
extern "C" {
    static microsched_trampolines: [u8; 0];
    static microsched_trampolines_end: [u8; 0];
}

/// The size of one stub.
const STUB: usize = 32;

/// Where record `index`'s redirected returns go (its stub's entry).
fn trampoline_address(index: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let base = std::ptr::addr_of!(microsched_trampolines) as usize;
        base + index * STUB + 1
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = index;
        0
    }
}

/// True if `pc` is in the trampolines (the stubs or their body): a thread there is on its
/// way to its freeze. Async-signal-safe.
pub(super) fn in_trampoline(pc: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let start = std::ptr::addr_of!(microsched_trampolines) as usize;
        let end = std::ptr::addr_of!(microsched_trampolines_end) as usize;
        pc >= start && pc < end
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = pc;
        false
    }
}

/// Where a redirected frame returns to, through its record's stub. **Normal context**: the
/// thread has just left the frame that held a lock (or was in a library), inside its
/// task's closure; `sp` is the stack pointer it returned with, `index` the record whose
/// stub it came through. It blocks its signals first, so the handler never runs on it
/// again, waits for a standby if it still holds its slot, and freezes. Returns (to the
/// body, which goes on there) the real return address if no freeze is due after all.
extern "C" fn trampoline_entry(index: usize, sp: usize) -> usize {
    let record = this_record().filter(|r| r.index.load(Ordering::Relaxed) == index);
    let Some(record) = record else {
        // Another thread's stub, or no pool thread: a return address copied off the
        // thread that was redirected (a stackful coroutine moved between threads). The
        // real one is not known here: the thread stops for good rather than run on at a
        // wrong address.
        async_safe::block_all_signals();
        async_safe::block_forever()
    };
    let ret = record.redirect_ret.load(Ordering::Relaxed);
    if record.redirect_slot.load(Ordering::Relaxed) != sp - 8 {
        // Not the frame redirected last (one whose redirect was undone, or a copy): its
        // real return address is not known either.
        async_safe::block_all_signals();
        async_safe::block_forever()
    }
    let target = record.kill_target.load(Ordering::Relaxed);
    // SAFETY: null or the `Running` of the closure running on this thread (see `attempt`).
    let running = unsafe { record.running.load(Ordering::Relaxed).as_ref() };
    // Still holding stdout's or stderr's lock (a guard in the task's own frame): not
    // here; the monitor asks again.
    let stdio_held = places::stdio_held_by(record.std_thread_id.load(Ordering::Relaxed));
    let due = !stdio_held
        && running.is_some_and(|r| r.chain().any(|t| ptr::eq(t.task.control(), target)));
    if !due && (stdio_held || record.fate() != FATE_ABANDONED) {
        // No task of this thread is to be frozen (its kill is over): go on.
        if record
            .redirect_slot
            .compare_exchange(sp - 8, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            record.preempt().ledger.unreserve_frozen();
        }
        return ret;
    }
    // Claimed before the signals are blocked and the redirect is cleared: the monitor
    // would otherwise see a thread with every signal blocked, and no freeze on its way,
    // and abandon it.
    if !record.claim_freeze() {
        // The monitor gave up on the freeze before the frame returned: the thread is
        // outside the pool already, and stops here for good, in the frozen place the
        // redirect took (as in `settle`).
        stop_abandoned(record);
    }
    async_safe::block_all_signals();
    record.redirect_slot.store(0, Ordering::Relaxed);
    let Some(running) = running else {
        stop_abandoned(record);
    };
    loop {
        if let Some(reserved) = take_slot_off(record) {
            freeze(record, running, None, reserved);
        }
        async_safe::sleep_ns(100_000);
    }
}

/// From the handler, on an abandoned thread: if its closure is still running and the
/// gate would freeze it now, it stops here for good (no outcome to publish: its handle
/// resolved when it was abandoned). It stays counted as abandoned.
pub(super) fn settle(record: &Record, context: *mut libc::c_void) {
    let running = record.running.load(Ordering::Relaxed);
    // SAFETY: as in `attempt`.
    let Some(running) = (unsafe { running.as_ref() }) else {
        return;
    };
    // Only while every task on the thread is resolved: the closure may have returned into
    // one that joined it inline, whose own join is still to come.
    if !running.chain().all(|r| r.task.is_done()) {
        return;
    }
    // SAFETY: `context` is the handler's third argument.
    let (_, wait) = unsafe { async_safe::interrupted(context) };
    // A frozen place, like any freeze (past the cap it runs on).
    if matches!(gate(record, running, context, wait, false), Verdict::Now)
        && record.preempt().ledger.reserve_frozen()
    {
        stop_abandoned(record);
    }
}

/// An abandoned thread stops for good (it holds a frozen place): counted as a frozen
/// thread (so shutdown detaches it), its CPU time since the abandon counted as the
/// abandoned threads' that exited, and its record given back once the monitor is done
/// with it (a pending outside handoff). Async-signal-safe; never returns.
fn stop_abandoned(record: &Record) -> ! {
    async_safe::block_all_signals();
    drop_timers(record);
    while record.outside.load(Ordering::SeqCst) {
        record.preempt().ring();
        async_safe::sleep_ns(1_000_000);
    }
    let kills = record.preempt().ledger;
    record.abandoned_thread_exits();
    kills.frozen_thread(
        record.stack_bytes.load(Ordering::Relaxed),
        record.pthread.load(Ordering::Relaxed),
    );
    record.release();
    async_safe::block_forever()
}

/// Deletes the thread's own timers (the freeze, and an abandoned thread's first tick).
/// Async-signal-safe.
pub(super) fn drop_timers(record: &Record) {
    let cpu = record.cpu_timer.swap(NO_TIMER, Ordering::Relaxed);
    if cpu != NO_TIMER {
        async_safe::delete_timer(async_safe::TimerId(cpu));
    }
    // Other threads may be arming the precise timer (`TimerClock::Contention`).
    if let Some(precise) = record.close_precise_timer() {
        async_safe::delete_timer(precise);
    }
    record.armed.store(false, Ordering::Relaxed);
}

/// Step 3: if the thread still holds its slot, takes a standby for it (granted in
/// `freeze`). `None` if none is parked (one is asked for); else whether one was taken.
fn take_slot_off(record: &Record) -> Option<bool> {
    if record.state.load(Ordering::Relaxed) != IN_TASK {
        return Some(false);
    }
    let reserve = record.reserve();
    let index = record.index.load(Ordering::Relaxed);
    if reserve.take_standby() {
        reserve.unwant(index);
        return Some(true);
    }
    reserve.want(index);
    record.preempt().ring();
    None
}

/// Step 4. The caller has reserved a frozen place and, if the thread holds its slot, a
/// standby (`reserved`). Never returns.
fn freeze(record: &Record, running: &Running<'_>, reason: Option<KillReason>, reserved: bool) -> ! {
    // Claimed before the signals are blocked (see `trampoline_entry`).
    let claimed = record.claim_freeze();
    async_safe::block_all_signals();
    drop_timers(record);
    let preempt = record.preempt();
    let reserve = record.reserve();
    if !claimed {
        // The monitor abandoned the thread meanwhile (from outside: the slot and the
        // thread's count are dealt with). Stop here for good all the same, in the frozen
        // place the caller took.
        if reserved {
            reserve.give_back();
        }
        stop_abandoned(record);
    }
    // Only this thread sets `IN_TASK` (between tasks), and only the monitor abandoning it
    // takes it away from outside, which the fate above rules out: so `reserved` means the
    // thread holds its slot.
    if reserved {
        if record
            .state
            .compare_exchange(IN_TASK, CARRIED, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
        {
            reserve.counters.handoffs.fetch_add(1, Ordering::Relaxed);
            reserve.grant();
        } else {
            reserve.give_back();
        }
    }
    // A slot the monitor is taking from outside (the sweep found the thread blocked) is
    // given to a standby first: the monitor reads this record until then, and counts the
    // thread as a carrier only once it has granted it.
    while record.outside.load(Ordering::SeqCst) {
        preempt.ring();
        async_safe::sleep_ns(1_000_000);
    }
    // It was, or just became, a carrier; it will never finish as one.
    reserve.carrier_done();
    record.leave_line();
    // Every task on the thread ends here: the one running and those it runs inside (an
    // inline join). Each keeps its own kill reason; one without takes the freeze's.
    let now = async_safe::monotonic_ns();
    let reason = reason
        .or_else(|| {
            let target = record.kill_target.load(Ordering::Relaxed);
            running
                .chain()
                .find(|r| ptr::eq(r.task.control(), target))
                .and_then(|r| r.task.control().killed())
                .map(|(reason, _)| reason)
        })
        .unwrap_or(KillReason::Cancelled);
    // Counted before the outcomes are published, so a joiner sees the counts. A task the
    // monitor abandoned a moment ago (or that returned into an outer one) is not ours.
    preempt.ledger.frozen_thread(
        record.stack_bytes.load(Ordering::Relaxed),
        record.pthread.load(Ordering::Relaxed),
    );
    for task in running.chain() {
        let control = task.task.control();
        control.kill(reason, now);
        if task.task.decide() {
            let own = control.killed().map_or(reason, |(r, _)| r);
            preempt.ledger.frozen(own);
            task.task.publish_frozen(task.counters, own);
        }
    }
    if let Some(pool) = running.pool {
        pool.thread_frozen();
    }
    preempt.ring();
    // The record goes back to the table: the thread never runs another instruction of
    // ours or of the task's, its timers are gone and its signals blocked, so nothing
    // reads it through the record again (a storm of kills would otherwise use up the
    // table's `MAX_THREADS` records for good).
    record.release();
    async_safe::block_forever()
}

// Ordinary context: the task's own thread, at a checkpoint.
#[allow(
    clippy::disallowed_types,
    clippy::disallowed_macros,
    clippy::disallowed_methods
)]
/// The payload a cancelled task unwinds with: private, so no one else raises it.
struct CancelUnwind;

/// Where [`unwind_cancelled`] starts: the freeze gate never freezes a thread with it on the
/// stack (between the cancel and the unwind). Async-signal-safe.
fn cancel_entry() -> usize {
    unwind_cancelled as *const () as usize
}

// Ordinary context: the task's own thread, at a checkpoint (the handler only compares
// return addresses with this function's start).
#[allow(
    clippy::disallowed_types,
    clippy::disallowed_macros,
    clippy::disallowed_methods
)]
#[cold]
#[inline(never)]
pub(crate) fn unwind_cancelled() {
    // A second unwind while unwinding aborts the process.
    if std::thread::panicking() {
        return;
    }
    // Held until the unwind leaves this frame (its landing pad drops it): by then the
    // thread counts as panicking, and as unwinding from its cancel, so no freeze comes
    // between the cancel and the unwind.
    let _no_freeze = FreezeGuard::new();
    // A freeze on its way (a redirected return address) is called off.
    before_unwind();
    panic::resume_unwind(Box::new(CancelUnwind));
}

/// True for the payload [`unwind_cancelled`] raises.
pub(crate) fn is_cancel_unwind(payload: &(dyn std::any::Any + Send)) -> bool {
    payload.is::<CancelUnwind>()
}

/// The handler for SIGSEGV and SIGBUS. A fault in the guard area below the stack of a pool
/// thread running a task's closure is that task overflowing its stack: the thread is
/// frozen (it cannot go on: returning would fault again). That freeze is not gated: the
/// alternative is the end of the process. Every other fault goes to the previous handler
/// (std's, which reports a stack overflow of other threads and aborts).
/// How long a stack overflow waits for the monitor to record the unwind tables of an
/// object loaded since its last refresh (its period is 100 ms) before the process ends as
/// it would have without us.
const OVERFLOW_REFRESH_WAIT_NS: u64 = 1_000_000_000;

/// Whether an overflow that met unrecorded code may wait more for the refresh: the first
/// time starts the clock.
fn waits_for_refresh(record: &Record) -> bool {
    let now = async_safe::monotonic_ns();
    let since = record.overflow_wait_since.load(Ordering::Relaxed);
    if since == 0 {
        record
            .overflow_wait_since
            .store(now.max(1), Ordering::Relaxed);
        return true;
    }
    now.saturating_sub(since) < OVERFLOW_REFRESH_WAIT_NS
}

pub(crate) extern "C" fn on_fault(
    signal: i32,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    let errno = async_safe::errno();
    // SAFETY: the kernel passes a valid `siginfo_t` to a fault handler.
    let address = unsafe { async_safe::fault_address(info) };
    let tid = async_safe::gettid();
    let record = RECORDS
        .iter()
        .find(|r| r.in_use.load(Ordering::Relaxed) && r.tid.load(Ordering::Relaxed) == tid);
    if let Some(record) = record {
        let in_guard = address >= record.guard_lo.load(Ordering::Relaxed)
            && address < record.guard_hi.load(Ordering::Relaxed);
        let running = record.running.load(Ordering::Relaxed);
        // SAFETY: as in `attempt`.
        if let (true, Some(running)) = (in_guard, unsafe { running.as_ref() }) {
            let kills = record.preempt().ledger;
            // The same gate as a kill's, but nothing can wait: where a freeze could leave
            // a process-wide lock held (an overflow inside malloc, inside `println!`, in a
            // runtime section), the process ends as it would have without us (std's
            // message and abort) rather than deadlock later.
            match gate(record, running, context, Wait::None, true) {
                Verdict::Now => {}
                Verdict::Defer(Defer::Unrecorded) if waits_for_refresh(record) => {
                    // Its code's tables are not recorded yet: come back once the monitor
                    // has refreshed them (asked just now). Returning re-runs the faulting
                    // instruction, which faults again.
                    async_safe::yield_now();
                    async_safe::set_errno(errno);
                    return;
                }
                _ => {
                    chain(signal, info, context, on_fault as *const () as usize);
                    async_safe::set_errno(errno);
                    return;
                }
            }
            record.overflow_wait_since.store(0, Ordering::Relaxed);
            let Some(reserved) = take_slot_off(record) else {
                // Come back when a standby has parked: returning re-runs the faulting
                // instruction, which faults again.
                async_safe::yield_now();
                async_safe::set_errno(errno);
                return;
            };
            // A freeze on its way (a redirected return) already holds a place.
            if record.redirect_slot.swap(0, Ordering::Relaxed) != 0 || kills.reserve_frozen() {
                // The thread's fate first, then the kill: the monitor abandons a killed
                // task only while its thread's fate is undecided, and a carrier at
                // `SCHED_IDLE` may get no CPU between the two for longer than the maximum
                // deferral (the kill storm saw an overflow end abandoned so).
                let _ = record.claim_freeze();
                running
                    .task
                    .control()
                    .kill(KillReason::StackOverflow, async_safe::monotonic_ns());
                freeze(record, running, Some(KillReason::StackOverflow), reserved);
            }
            if reserved {
                record.reserve().give_back();
            }
            kills.refused();
        }
    }
    chain(signal, info, context, on_fault as *const () as usize);
    async_safe::set_errno(errno);
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::sys::unwind;

    /// A record no test thread claims (tests never start `MAX_THREADS` pool threads).
    const K: usize = MAX_THREADS - 1;

    /// The return-address slot of the frame of `function` on the calling thread's stack,
    /// and the return address in it.
    fn return_slot(function: usize) -> (usize, usize) {
        struct Find {
            function: usize,
            found: bool,
            out: (usize, usize),
        }
        extern "C" fn each(ctx: *mut unwind::Context, arg: *mut libc::c_void) -> i32 {
            // SAFETY: `arg` is the `Find` below; `ctx` is the unwinder's context.
            unsafe {
                let find = &mut *arg.cast::<Find>();
                if find.found {
                    find.out = (unwind::_Unwind_GetCFA(ctx) - 8, unwind::_Unwind_GetIP(ctx));
                    return unwind::NORMAL_STOP;
                }
                find.found = unwind::_Unwind_GetRegionStart(ctx) == find.function;
            }
            unwind::NO_REASON
        }
        let mut find = Find {
            function,
            found: false,
            out: (0, 0),
        };
        // SAFETY: `each` matches the callback type and only touches `find`.
        unsafe { unwind::_Unwind_Backtrace(each, (&mut find as *mut Find).cast()) };
        find.out
    }

    /// Redirects its own return to record `K`'s stub, as the handler would, then unwinds.
    #[inline(never)]
    fn redirected_then_unwinds(capture: &mut String) {
        let (slot, ret) = return_slot(redirected_then_unwinds as *const () as usize);
        assert_ne!(slot, 0);
        // SAFETY: `slot` is this frame's return-address slot on this thread's stack.
        assert_eq!(unsafe { ptr::read_volatile(slot as *const usize) }, ret);
        RECORDS[K].redirect_ret.store(ret, Ordering::Relaxed);
        // SAFETY: as above; the stub's unwind info gives `ret` back to any unwinder.
        unsafe { ptr::write_volatile(slot as *mut usize, trampoline_address(K)) };
        *capture = std::backtrace::Backtrace::force_capture().to_string();
        std::panic::resume_unwind(Box::new(7u32));
    }

    #[inline(never)]
    fn caller_of_the_redirected_frame(capture: &mut String) -> Option<u32> {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            redirected_then_unwinds(capture)
        }));
        black_box_value(
            caught
                .err()
                .and_then(|p| p.downcast::<u32>().ok())
                .map(|b| *b),
        )
    }

    #[inline(never)]
    fn black_box_value<T>(v: T) -> T {
        std::hint::black_box(v)
    }

    #[test]
    fn an_unwind_goes_through_a_redirected_frame_like_through_the_original() {
        let mut capture = String::new();
        assert_eq!(caller_of_the_redirected_frame(&mut capture), Some(7));
        // A backtrace taken under the redirect sees the real caller too.
        assert!(
            capture.contains("caller_of_the_redirected_frame"),
            "{capture}"
        );
    }
}
