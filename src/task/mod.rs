//! Tasks: a closure, the slot its result goes to, and the handle that reads it.
//!
//! # One allocation per task
//!
//! `spawn` makes one `Arc<TaskCell<F, T>>` and hands out two views of it: a [`Task`]
//! (`Arc<dyn Runnable>`, type-erased, what the queues carry) and a [`JoinHandle<T>`]
//! (`Arc<dyn Join<T>>`, what the caller keeps).
//!
//! # Lifecycle
//!
//! A task's state lives in three words, each written by one protocol, so each race has
//! one winner. (`docs/DESIGN.md`, "A task's life", tells the same story in prose.)
//!
//! | word | where | bits / fields | who may change it |
//! |---|---|---|---|
//! | task word | [`JoinState`], this file | `CLAIMED` `DECIDED` `COMPLETE` `WAITING` `AWAITING` `DETACHED` | `CLAIMED`: a queue's consumer or an inline joiner. `DECIDED`: the closure's thread (it returned or unwound), the freeze on that thread, or the monitor abandoning it. `COMPLETE`: `DECIDED`'s winner only. `WAITING`: the joiner. `AWAITING`: the handle polled as a future. `DETACHED`: the handle's drop. Each bit is set once, by `fetch_or`. |
//! | kill word | `Control`, `handler/control.rs` | reason and time of the first kill (one compare-exchange), the thread running the task, CPU clocks, checkpoint counts | The kill: [`JoinHandle::cancel`](crate::JoinHandle::cancel), the monitor (a budget ran out), a freeze (`reason_if_none`). The thread, CPU start and start time: the runner, before the closure starts (`thread` last, SeqCst). Checkpoint count: the task's thread. The CPU clock at the kill: the monitor. |
//! | thread record | `Record`, `handler/record.rs` | `state` (`IDLE`, `IN_TASK`, `CARRIED`), the running closure, the freeze asked for, a pending redirect, `fate` (none, frozen, abandoned) | `state`: the runner (`IDLE` ↔ `IN_TASK`); `IN_TASK` → `CARRIED` by the handler's handoff or the monitor's outside handoff, racing the runner's `end_task` on one compare-exchange. `fate`: the freeze (on the thread) or the monitor, one compare-exchange with the thread's id. |
//!
//! The states a task goes through, and what moves it on:
//!
//! ```text
//! queued ──claim──▶ running ──returns or unwinds───────────────▶ decided by its thread ─┐
//!   │                 │ budget out, or cancel: kill word set                              │
//!   │ cancelled       ▼                                                                   │
//!   │ before the  cancelled ──unwinds at a checkpoint───────────▶ decided by its thread ─┤
//!   │ claim: never    │ grace period over                                                 │
//!   │ starts          ▼                                                                   │
//!   │             freeze asked ──the gate says now──▶ frozen (fate, then decided) ────────┤
//!   │                 │ deferred, or a holder's return redirected: asked again            │
//!   │                 │ the bound passed                                                  │
//!   │                 ▼                                                                   │
//!   │             abandoned (decided, then fate) ─────────────────────────────────────────┤
//!   │ shutdown out of time                                                                ▼
//!   └───────────▶ rejected ───────────────────────────────────────▶ COMPLETE: the joiner wakes
//! ```
//!
//! The orderings every path keeps:
//!
//! 1. The kill word is set (SeqCst) before anyone acts on it: the claim's winner checks it
//!    before starting the closure; `cancel` reads `thread` after setting it, and the runner
//!    writes `thread` after the registry, so one of the two hands the task to the monitor.
//! 2. `DECIDED` comes before the outcome is written, `COMPLETE` after (Release), and the
//!    handle reads it after seeing `COMPLETE` (Acquire). The loser of `DECIDED` writes
//!    nothing: a closure that returns after its task was frozen or abandoned drops its
//!    value on its own thread.
//! 3. A freeze first claims the thread's fate, then decides each task on the thread (an
//!    inline join stacks several). The monitor first decides the task, then claims the
//!    thread's fate; if a freeze got the fate first, the freeze counts the thread.
//! 4. A thread whose task was decided by the monitor waits for the monitor to finish with
//!    its record (`Record::await_fate`) before it moves on.
//!
//! Results a caller must act on are `#[must_use]`: winning a claim, a decision, a fate
//! or a frozen place, keeping the slot at a task's end, entering a runtime section.
//!
//! # Protocol (the task word, a [`Futex`])
//!
//! The word has three bits: `CLAIMED` (some thread has taken the right to run or reject the
//! task), `COMPLETE` (the output is written) and `WAITING` (a joiner may be asleep on the
//! word).
//!
//! 1. A task can be reached twice: through its queue entry (a [`Task`]) and, while it is
//!    queued, by a joiner on a runner of the same pool, which runs it inline rather than
//!    wait for it. Whoever wins `fetch_or(CLAIMED)` takes the closure and will write the
//!    output; the loser drops its reference and does nothing else. Queues hand each entry
//!    out once, so there are at most two contenders.
//! 2. Whoever wins `fetch_or(DECIDED)` writes the output, then `fetch_or(COMPLETE,
//!    Release)`. The release publishes the output to whoever acquires `COMPLETE`. The
//!    contenders are the claim's winner (the closure returned or unwound), a freeze of its
//!    thread (the signal handler, on that thread) and the monitor abandoning the task
//!    (`kill.rs`). A winner that is not the closure's thread leaves the closure running;
//!    when it ends, its thread loses the decision and drops the value it returned.
//! 3. If the word it replaced had `WAITING`, it wakes all waiters on the word. Its own
//!    `Arc` keeps the word alive across the wake. If it had `AWAITING`, it pushes the
//!    handle's waker slot on the waker thread's list (`wake.rs`; async-signal-safe).
//! 4. A joiner spins briefly on `COMPLETE` (Acquire), then `fetch_or(WAITING, Acquire)`:
//!    both read-modify-writes are totally ordered on the word, so either the joiner sees
//!    `COMPLETE` in the value it replaced and returns, or the winner sees `WAITING` in the
//!    value it replaced and wakes it. The joiner then sleeps while the word still holds the
//!    value it wrote; the kernel compares and queues atomically, so the wake cannot be
//!    lost (any other change of the word, such as `CLAIMED`, just makes it look again).
//!    Inside a task of a pool, before it sleeps, it gives its slot to a standby
//!    (`handler::hand_off_before_blocking`). A handle polled as a future does the same
//!    with `AWAITING` instead of `WAITING`, after leaving its waker in the slot: either
//!    the poll sees `COMPLETE` and returns `Ready`, or the winner sees `AWAITING` and
//!    hands the wake on.
//! 5. Having observed `COMPLETE` with Acquire, the handle takes the output. `join`
//!    consumes the handle, so the output is taken at most once.

use std::cell::Cell;
use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicU64 as StdAtomicU64, AtomicUsize as StdAtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::budget::{Budget, KillHow, KillReason};
use crate::counters::SlotCounters;
use crate::error::{JoinError, PanicPayload};
use crate::handler::{Control, FrozenPool, FrozenTask, Record, Running};
use crate::sync::loom::{Futex, Ordering, UnsafeCell};
use crate::sys;

mod wake;

use wake::WakeSlot;
pub(crate) use wake::{ensure_waker_thread, stuck_waker_threads, watch_waker_thread};

const COMPLETE: u32 = 0b001;
const WAITING: u32 = 0b010;
const CLAIMED: u32 = 0b100;
/// The handle was dropped (the task detached): whoever sees the other side's bit last
/// drops the output, on its own thread, so no task's value is ever dropped by the runtime
/// elsewhere (the monitor, which holds budgeted tasks, must never run a tenant's `Drop`).
const DETACHED: u32 = 0b1_0000;
/// Some thread has taken the right to write the output (step 2): the claim's winner when
/// the closure returns or unwinds, the freeze, or the monitor abandoning the task.
const DECIDED: u32 = 0b1000;
/// The handle, polled as a future, has left a waker in the state's [`WakeSlot`] (protocol
/// step 4 for futures): whoever sets `COMPLETE` hands its wake to the process's waker
/// thread (`wake.rs`).
const AWAITING: u32 = 0b10_0000;

/// How long a joiner spins on the word before it sleeps. A futex sleep plus wake costs
/// ~7 µs of latency on the machines this was tuned on, so a task that is
/// about to finish is cheaper to wait for awake; past a few µs, sleeping frees the core
/// for the runner, which may share it. Measured with `cargo bench --bench dispatch`.
const JOIN_SPIN: Duration = if cfg!(loom) {
    Duration::ZERO
} else {
    Duration::from_micros(20)
};

/// The result slot of one task and the word its joiner waits on.
pub(crate) struct JoinState<T> {
    word: Futex,
    output: UnsafeCell<Option<Result<T, JoinError>>>,
    /// CPU time the task used in ns, `NO_CPU` if not measured. Written before `COMPLETE`.
    cpu_ns: StdAtomicU64,
    /// The awaiting handle's waker slot (an `Arc<WakeSlot>` this state owns one count of),
    /// null until the handle is first polled unfinished. Written only by the handle, before
    /// it sets `AWAITING` (AcqRel); read by the completer after it saw `AWAITING`.
    waker: std::sync::atomic::AtomicPtr<WakeSlot>,
}

const NO_CPU: u64 = u64::MAX;

impl<T> JoinState<T> {
    fn new() -> Self {
        Self {
            word: Futex::new(0),
            output: UnsafeCell::new(None),
            cpu_ns: StdAtomicU64::new(NO_CPU),
            waker: std::sync::atomic::AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// A state that is complete from the start: a task rejected at `spawn`.
    fn completed(result: Result<T, JoinError>) -> Self {
        Self {
            word: Futex::new(CLAIMED | DECIDED | COMPLETE),
            output: UnsafeCell::new(Some(result)),
            cpu_ns: StdAtomicU64::new(NO_CPU),
            waker: std::sync::atomic::AtomicPtr::new(ptr::null_mut()),
        }
    }

    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        match self.cpu_ns.load(Ordering::Relaxed) {
            NO_CPU => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    #[must_use = "the claim's winner must run or reject the task"]
    /// Protocol step 1: true for exactly one caller.
    fn claim(&self) -> bool {
        // Acquire: the winner reads the closure, written before the task was published.
        self.word.fetch_or(CLAIMED, Ordering::Acquire) & CLAIMED == 0
    }

    /// Protocol step 2's decision: true for exactly one caller, who must then `complete`.
    /// Async-signal-safe.
    #[must_use = "the decision's winner must publish the outcome"]
    pub(crate) fn decide(&self) -> bool {
        self.word.fetch_or(DECIDED, Ordering::AcqRel) & DECIDED == 0
    }

    /// Protocol steps 2–3. Called once, by the thread that won `decide`. Async-signal-safe
    /// when `result` is a [`JoinError::Killed`] (the freeze publishes with it from the
    /// signal handler): the cell holds `None` until now, so the store drops nothing, and
    /// the rest is atomics and futex wakes. An awaiting handle's waker is never woken
    /// here, whoever completes: it goes to the process's waker thread (`wake.rs`).
    ///
    /// Returns the output back if the handle was dropped before: the caller drops it, on
    /// its own thread (see [`DETACHED`]).
    #[must_use = "a detached task's output comes back, for the caller to drop"]
    fn complete(
        &self,
        result: Result<T, JoinError>,
        cpu_ns: Option<u64>,
    ) -> Option<Result<T, JoinError>> {
        if let Some(ns) = cpu_ns {
            self.cpu_ns.store(ns, Ordering::Relaxed);
        }
        // SAFETY: step 2: only the decision's winner writes the cell, and the handle reads it
        // only after seeing `COMPLETE`, which is set below.
        self.output
            .with_mut(|out| unsafe { ptr::write(out, Some(result)) });
        // AcqRel: Release publishes the output; Acquire orders the take below after the
        // handle's detach.
        let prev = self.word.fetch_or(COMPLETE, Ordering::AcqRel);
        if prev & WAITING != 0 {
            self.word.wake_all();
        }
        if prev & AWAITING != 0 {
            // Stored before `AWAITING`, which this thread's read-modify-write has seen.
            let slot = self.waker.load(std::sync::atomic::Ordering::Acquire);
            if !slot.is_null() {
                // SAFETY: the slot lives while this state does (it holds a count); a task
                // completes once, so the slot is not on the deferred list already.
                unsafe { wake::defer(slot) };
            }
        }
        if prev & DETACHED != 0 {
            // SAFETY: the handle is gone and saw no `COMPLETE` (the two read-modify-writes
            // are ordered on one word): nothing else will touch the cell.
            return self.output.with_mut(|out| unsafe { (*out).take() });
        }
        None
    }

    /// The handle is dropped: if the task is complete, its output is dropped here (the
    /// caller's thread); otherwise whoever completes it drops it.
    pub(crate) fn detach(&self) {
        let prev = self.word.fetch_or(DETACHED, Ordering::AcqRel);
        if prev & COMPLETE != 0 {
            // SAFETY: complete (Acquire above), and this is the only handle, being dropped:
            // the completer saw no `DETACHED` and never touches the cell again. (After a
            // join the cell is empty already.)
            let output = self.output.with_mut(|out| unsafe { (*out).take() });
            drop_quietly(output);
        }
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.word.load(Ordering::Acquire) & COMPLETE != 0
    }

    /// Protocol step 4 for a future: leaves `waker` to be woken when the task completes.
    /// Returns true if it is complete already (then nobody will wake it). Only the handle
    /// calls this.
    pub(crate) fn register(&self, waker: &std::task::Waker) -> bool {
        let mut slot = self.waker.load(std::sync::atomic::Ordering::Relaxed);
        if slot.is_null() {
            slot = WakeSlot::new_raw();
            // Published to the completer by the `AWAITING` read-modify-write below.
            self.waker.store(slot, std::sync::atomic::Ordering::Relaxed);
        }
        // SAFETY: the slot lives while this state does, and the caller holds the state.
        unsafe { &*slot }.register(waker);
        // AcqRel: Release publishes the slot and its waker to the completer, which sees
        // `AWAITING` in the value its `COMPLETE` replaced, or Acquire here sees `COMPLETE`:
        // both read-modify-writes are ordered on the word, so one of the two happens.
        self.word.fetch_or(AWAITING, Ordering::AcqRel) & COMPLETE != 0
    }

    /// Protocol step 4. Returns true once complete, false if `deadline` passed first.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        if self.is_complete() {
            return true;
        }
        let mut spin_until = Instant::now() + JOIN_SPIN;
        if let Some(deadline) = deadline {
            spin_until = spin_until.min(deadline);
        }
        let mut round = 0u32;
        while round % 64 != 0 || Instant::now() < spin_until {
            std::hint::spin_loop();
            if self.is_complete() {
                return true;
            }
            round = round.wrapping_add(1);
        }
        // A task about to sleep here gives its slot to a standby first, so the slot
        // serves its queue meanwhile (the children it may be waiting for among them).
        let mut handed_off = false;
        loop {
            let prev = self.word.fetch_or(WAITING, Ordering::Acquire);
            if prev & COMPLETE != 0 {
                return true;
            }
            let Some(timeout) = time_left(deadline) else {
                return false;
            };
            if !handed_off {
                handed_off = true;
                if crate::handler::hand_off_before_blocking() {
                    // The handoff took a while: look again before sleeping.
                    continue;
                }
            }
            self.word.wait(prev | WAITING, timeout);
        }
    }

    /// The handle is done with its waker (it took the output, or it is dropped): drops
    /// the waker left in the slot, if any, here, rather than wherever the task's last
    /// reference goes (the monitor holds some). Only the handle calls this.
    pub(crate) fn clear_waker(&self) {
        let slot = self.waker.load(std::sync::atomic::Ordering::Relaxed);
        if !slot.is_null() {
            // SAFETY: the slot lives while this state does, and the caller holds the state.
            unsafe { &*slot }.clear();
        }
    }

    /// Protocol step 5.
    ///
    /// # Safety
    ///
    /// The caller is the task's only `JoinHandle`, and it has seen `is_complete()` (Acquire).
    pub(crate) unsafe fn take(&self) -> Result<T, JoinError> {
        // SAFETY: the caller's contract: the runner wrote the cell before setting
        // `COMPLETE` and never touches it again; no other handle exists.
        match self.output.with_mut(|out| unsafe { (*out).take() }) {
            Some(result) => result,
            None => unreachable!("a complete task's output is taken once, by its only handle"),
        }
    }
}

thread_local! {
    /// The control of the task running on this thread, for [`checkpoint`]. Const and
    /// without a destructor: no lazy initialisation, no allocation.
    static CURRENT: Cell<*const Control> = const { Cell::new(ptr::null()) };
}

/// Calls the task's closure one frame below a marked one, so the freeze gate can tell the
/// closure's frames from the runtime's around it (`Running::closure_frame`): whatever the
/// unwinder reports as a frame's CFA (its stack pointer or its canonical frame address),
/// `invoke`'s is at or below the marker, and this function's and its callers' above.
#[inline(never)]
fn call_user<F: FnOnce() -> T, T>(frame: &StdAtomicUsize, func: F) -> T {
    let marker = 0u8;
    frame.store(
        std::hint::black_box(&marker) as *const u8 as usize,
        Ordering::Relaxed,
    );
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    let value = invoke(func);
    // Keeps this frame alive across the call (no tail call into `invoke`).
    std::hint::black_box(&marker);
    value
}

#[inline(never)]
fn invoke<F: FnOnce() -> T, T>(func: F) -> T {
    func()
}

/// Clears `Running::closure_frame` when the closure returns or unwinds.
struct ClosureFrame<'a>(&'a StdAtomicUsize);

impl Drop for ClosureFrame<'_> {
    fn drop(&mut self) {
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        self.0.store(0, Ordering::Relaxed);
    }
}

/// A cooperative cancellation point, for long-running task code.
///
/// Cheap: one thread-local read, a load and a store. If the running task has been cancelled (its
/// budget ran out, or [`JoinHandle::cancel`](crate::JoinHandle::cancel) was called), it unwinds from here with a
/// private payload, so destructors run and the mutexes the task holds are poisoned; its
/// handle resolves with [`Killed`](crate::Killed) and [`KillHow::Cancelled`]. Outside a task of a pool,
/// and while the thread is already panicking, it does nothing. A task that catches the unwind (with `catch_unwind`) and goes on is
/// unwound again at its next checkpoint, and frozen when its grace period is over.
#[inline]
pub fn checkpoint() {
    let control = CURRENT.with(Cell::get);
    if control.is_null() {
        return;
    }
    // SAFETY: `CURRENT` points at the control of the task running on this thread, set by
    // `run_claimed` before it calls the closure and cleared after; the task cell outlives
    // that call.
    let control = unsafe { &*control };
    // Counted (only this thread writes it: a plain load and store), so the freeze gate
    // can tell a task that checkpoints but has not run since its cancel.
    let n = control.checkpoints.load(Ordering::Relaxed);
    control
        .checkpoints
        .store(n.wrapping_add(1) | 1, Ordering::Relaxed);
    if control.is_cancelled() {
        crate::handler::unwind_cancelled();
    }
}

/// The timeout for a futex wait until `deadline`: `Some(None)` for no deadline, `None` if
/// it has passed.
pub(crate) fn time_left(deadline: Option<Instant>) -> Option<Option<Duration>> {
    match deadline {
        None => Some(None),
        Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some(Some(left)),
            _ => None,
        },
    }
}

/// A task's closure and its result slot, in one allocation.
struct TaskCell<F, T> {
    join: JoinState<T>,
    /// The pool the task was spawned on (the address of its shared state): only that
    /// pool's runners may run it inline from a join.
    pool: usize,
    control: Control,
    /// The registry of the pool running the task, once it has started on a pool thread
    /// with a record (for [`JoinHandle::cancel`](crate::JoinHandle::cancel) to hand the
    /// task to the monitor). Written once, by the claim's winner, before it publishes
    /// `control.thread` (SeqCst); read only by whoever has seen `thread` set.
    supervisor: std::cell::UnsafeCell<Option<&'static dyn Supervisor>>,
    func: UnsafeCell<Option<F>>,
}

// SAFETY: `Sync` lets the queue entry and the handle share `&TaskCell`. `join` is `Sync` on
// its own (below); `func` is touched only by the thread that won the claim (step 1), so no
// two threads ever reach it at once. The closure is moved to that thread, never shared, so
// `F: Send` suffices. `supervisor` is written once by the claim's winner before a SeqCst
// store of `control.thread`, and read only after a SeqCst load has seen that store.
unsafe impl<F: Send, T: Send> Sync for TaskCell<F, T> {}

/// Where a task runs: the slot whose counters count its outcome, and with preemption on,
/// the thread's record and the pool's kill registry.
pub(crate) struct RunEnv<'a> {
    pub(crate) counters: &'a SlotCounters,
    pub(crate) record: Option<&'static Record>,
    pub(crate) supervisor: Option<&'static dyn Supervisor>,
    /// Measure every task's CPU time, not only budgeted ones.
    pub(crate) cpu_accounting: bool,
    /// The pool, for a freeze.
    pub(crate) pool: Option<&'a dyn FrozenPool>,
}

/// What a task needs of the pool's kill registry (`kill.rs` implements it): registries are
/// never freed, so a task may keep a reference for good.
pub(crate) trait Supervisor: Sync {
    /// Watches a started task whose budget or cancel may need enforcing.
    fn watch(&self, task: Task);
    /// Watches a task about to start whose budget may need enforcing, and starts its wall
    /// clock once registered (a wait for the registry does not count).
    fn watch_start(&self, task: Task);
    /// Counts a cooperative cancel.
    fn cancelled(&self, reason: KillReason);
}

/// What the queues carry: run or reject a task without knowing its types.
pub(crate) trait Runnable: FrozenTask + Send {
    #[must_use = "the claim's winner must run or reject the task"]
    /// Protocol step 1.
    fn claim(&self) -> bool;
    /// Runs the closure under `catch_unwind`, counts the outcome in `counters`, then
    /// publishes it. Only after winning the claim.
    fn run_claimed(&self, env: &RunEnv<'_>);
    /// Publishes an abandon (the monitor, after winning [`decide`](FrozenTask::decide)):
    /// counts it in the slot's counters and resolves the handle with
    /// `Killed { how: Abandoned }`. The closure is still running on its thread.
    fn publish_abandoned(&self, cpu_ns: Option<u64>);
    /// Records the registry of the pool the task starts on.
    ///
    /// # Safety
    ///
    /// Called once, by the claim's winner, before it stores `control.thread`.
    unsafe fn set_supervisor(&self, supervisor: &'static dyn Supervisor);
    /// The registry of the pool the task started on, once `control.thread` is set.
    fn supervisor(&self) -> Option<&'static dyn Supervisor>;
    /// Drops the closure unrun and resolves the handle with [`JoinError::Shutdown`]. Only
    /// after winning the claim.
    fn reject_claimed(&self);
}

impl<F, T> Runnable for TaskCell<F, T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    fn claim(&self) -> bool {
        self.join.claim()
    }

    fn run_claimed(&self, env: &RunEnv<'_>) {
        // SAFETY: step 1: this thread won the claim, so no other thread touches `func`.
        let Some(func) = self.func.with_mut(|func| unsafe { (*func).take() }) else {
            unreachable!("only the claim's winner takes the closure")
        };
        let control = &self.control;
        // SeqCst (in `killed`): see `run_in`.
        if control.killed().is_some() {
            // Cancelled while queued: never started. The closure's captures drop here.
            drop_quietly(func);
            if !self.join.decide() {
                return;
            }
            env.counters.record_kill(KillHow::Cancelled);
            let killed = control.killed_outcome(KillHow::Cancelled, None);
            if let Some(supervisor) = env.supervisor {
                supervisor.cancelled(killed.reason);
            }
            drop_quietly(self.join.complete(Err(JoinError::Killed(killed)), None));
            return;
        }
        let outer_control = CURRENT.with(|c| c.replace(control));
        let (outer, no_freeze_base) = env
            .record
            .map_or((ptr::null(), 0), |record| record.current());
        let running = Running {
            task: self,
            counters: env.counters,
            pool: env.pool,
            outer,
            no_freeze_base,
            closure_frame: StdAtomicUsize::new(0),
        };
        if let Some(record) = env.record {
            record.enter_user(&running);
        }
        control.entered.store(true, Ordering::SeqCst);
        let frame = &running.closure_frame;
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            let _closed = ClosureFrame(frame);
            call_user(frame, func)
        }));
        if let Some(record) = env.record {
            record.leave_user(&running);
        }
        CURRENT.with(|c| c.set(outer_control));
        let cpu_ns = control.cpu_used_ns();
        let result = result.map_err(|payload| {
            if crate::handler::is_cancel_unwind(&*payload) {
                JoinError::Killed(control.killed_outcome(KillHow::Cancelled, cpu_ns))
            } else {
                JoinError::Panicked(PanicPayload::new(payload))
            }
        });
        if !self.join.decide() {
            // Abandoned by the monitor while it ran (`kill.rs`): its handle has resolved,
            // its outcome was counted. The value is dropped here, on this thread; the
            // thread learns it was abandoned (the monitor marks it right after deciding)
            // and retires.
            drop_quietly(result);
            if let Some(record) = env.record {
                record.await_fate();
            }
            return;
        }
        // Counted before publishing, so a caller that has joined every task sees them all
        // in `Pool::stats`, and shutdown can tell when every accepted task is done.
        match &result {
            Ok(_) => env.counters.record_outcome(false),
            Err(JoinError::Killed(killed)) => {
                env.counters.record_kill(KillHow::Cancelled);
                if let Some(supervisor) = env.supervisor {
                    supervisor.cancelled(killed.reason);
                }
            }
            Err(_) => env.counters.record_outcome(true),
        }
        drop_quietly(self.join.complete(result, cpu_ns));
    }

    unsafe fn set_supervisor(&self, supervisor: &'static dyn Supervisor) {
        // SAFETY: the caller's contract: the only write, before `thread` publishes it.
        unsafe { *self.supervisor.get() = Some(supervisor) };
    }

    fn supervisor(&self) -> Option<&'static dyn Supervisor> {
        // SeqCst load of `thread`, after the SeqCst store that follows the write.
        self.control.thread()?;
        // SAFETY: written once before `thread` was set, which this thread has seen; never
        // written again.
        unsafe { *self.supervisor.get() }
    }

    fn publish_abandoned(&self, cpu_ns: Option<u64>) {
        let control = &self.control;
        let killed = control.killed_outcome(KillHow::Abandoned, cpu_ns);
        // SAFETY: set when the task started, to the slot counters in the pool's shared
        // state, which the task's thread keeps alive while the task is undecided (the
        // caller has just won the decision).
        if let Some(counters) = unsafe { control.counters.load(Ordering::Relaxed).as_ref() } {
            counters.record_kill(KillHow::Abandoned);
        }
        // A detached task's outcome comes back: a `Killed`, which owns nothing.
        std::mem::forget(self.join.complete(Err(JoinError::Killed(killed)), cpu_ns));
    }

    fn reject_claimed(&self) {
        // SAFETY: step 1, as in `run_claimed`.
        let func = self.func.with_mut(|func| unsafe { (*func).take() });
        drop_quietly(func);
        if self.join.decide() {
            drop_quietly(self.join.complete(Err(JoinError::Shutdown), None));
        }
    }
}

impl<F, T> FrozenTask for TaskCell<F, T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    fn control(&self) -> &Control {
        &self.control
    }

    fn decide(&self) -> bool {
        self.join.decide()
    }

    fn is_done(&self) -> bool {
        self.join.is_complete()
    }

    fn publish_frozen(&self, counters: &SlotCounters, reason_if_none: KillReason) {
        let control = &self.control;
        control.kill(reason_if_none, sys::async_safe::monotonic_ns());
        let cpu_ns = control.cpu_used_ns();
        let killed = control.killed_outcome(KillHow::Frozen, cpu_ns);
        counters.record_kill(KillHow::Frozen);
        // A detached task's outcome comes back: a `Killed`, which owns nothing (and the
        // signal handler drops nothing).
        std::mem::forget(self.join.complete(Err(JoinError::Killed(killed)), cpu_ns));
    }
}

/// A reference to a task that may run it: a queue entry, or a joiner's inline claim.
/// Dropping one without `run` or `reject` is fine only if the other reference exists;
/// every path that pops a queue entry ends in one of the two.
pub struct Task(Arc<dyn Runnable>);

impl Task {
    /// Runs the task on this thread, unless another thread claimed it first; returns
    /// whether this call ran it. Never unwinds: the closure's panic is caught and carried
    /// in the handle; a panic from dropping the last reference to the result (the handle
    /// already gone) is caught and its payload leaked.
    #[cfg_attr(not(loom), allow(dead_code))]
    pub fn run(self, counters: &SlotCounters) -> bool {
        self.run_in(&RunEnv {
            counters,
            record: None,
            supervisor: None,
            cpu_accounting: false,
            pool: None,
        })
    }

    /// [`run`](Task::run) on a pool thread: with a record and a kill registry, the task's
    /// budget is watched and it can be cancelled and frozen.
    pub(crate) fn run_in(self, env: &RunEnv<'_>) -> bool {
        let won = self.0.claim();
        if won {
            let control = self.0.control();
            let budgeted = !control.budget.is_unlimited();
            if budgeted || env.cpu_accounting {
                control
                    .cpu_start_ns
                    .store(sys::async_safe::thread_cpu_ns(), Ordering::Relaxed);
            }
            if let (Some(record), Some(supervisor)) = (env.record, env.supervisor) {
                // Only a wall-clock budget needs the start time (a clock read per task).
                if control.budget.wall_limit().is_some() {
                    control
                        .started_ns
                        .store(sys::async_safe::monotonic_ns(), Ordering::Relaxed);
                }
                // SAFETY: this thread won the claim; `thread` is stored below.
                unsafe { self.0.set_supervisor(supervisor) };
                control.counters.store(
                    env.counters as *const SlotCounters as *mut SlotCounters,
                    Ordering::Relaxed,
                );
                control
                    .tid
                    .store(record.tid.load(Ordering::Relaxed), Ordering::Relaxed);
                // SeqCst, against `JoinHandle::cancel`: it sets the flag, then reads this.
                // Either it sees the thread and registers the task with the monitor, or
                // `run_claimed` sees the flag and never starts the closure.
                control.thread.store(
                    record.index.load(Ordering::Relaxed) as u32 + 1,
                    Ordering::SeqCst,
                );
                if budgeted {
                    // A runtime section: a handoff here would demote this thread while it
                    // holds the monitor's registry lock, and stall the monitor.
                    let section = record.enter_runtime();
                    supervisor.watch_start(Task(self.0.clone()));
                    if section {
                        record.leave_runtime();
                    }
                }
            }
            self.0.run_claimed(env);
        }
        drop_quietly(self.0);
        won
    }

    pub(crate) fn control(&self) -> &Control {
        self.0.control()
    }

    pub(crate) fn is_done(&self) -> bool {
        self.0.is_done()
    }

    /// Protocol step 2's decision, for the monitor abandoning the task: false if it was
    /// decided already (it returned, unwound or was frozen). On true, call
    /// [`publish_abandoned`](Task::publish_abandoned).
    #[must_use = "the decision's winner must publish the outcome"]
    pub(crate) fn decide(&self) -> bool {
        self.0.decide()
    }

    /// Resolves the handle with `Killed { how: Abandoned }`, after winning
    /// [`decide`](Task::decide).
    pub(crate) fn publish_abandoned(&self, cpu_ns: Option<u64>) {
        self.0.publish_abandoned(cpu_ns);
    }

    /// The registry of the pool the task started on, once it has.
    pub(crate) fn supervisor(&self) -> Option<&'static dyn Supervisor> {
        self.0.supervisor()
    }

    /// The same task, for the monitor's registry.
    pub(crate) fn same(&self, other: &Task) -> bool {
        ptr::addr_eq(Arc::as_ptr(&self.0), Arc::as_ptr(&other.0))
    }

    /// Resolves the task's handle with [`JoinError::Shutdown`] without running it, unless
    /// another thread claimed it first; returns whether this call rejected it.
    pub fn reject(self) -> bool {
        let won = self.0.claim();
        if won {
            self.0.reject_claimed();
        }
        drop_quietly(self.0);
        won
    }
}

/// Drops `value`, catching a panic from its destructor.
///
/// The runtime drops closures it rejects and results nobody will read; those destructors
/// are user code and may panic, and a runner must not unwind. The payload of such a panic
/// is leaked rather than dropped, because dropping it could panic again.
pub(crate) fn drop_quietly<V>(value: V) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(move || drop(value))) {
        mem::forget(payload);
    }
}

/// The handle's view of a task, whatever the closure's type (`join.rs`'s `JoinHandle`
/// holds one).
pub(crate) trait Join<T>: Send + Sync {
    fn state(&self) -> &JoinState<T>;
    /// The task as the monitor holds it; `None` for a task that was never queued.
    fn task(self: Arc<Self>) -> Option<Task>;
    /// The pool that may run the task inline, and a second reference to run it with; `None`
    /// for a task that was never queued.
    fn inline(self: Arc<Self>) -> Option<(usize, Task)>;
}

impl<F, T> Join<T> for TaskCell<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    fn state(&self) -> &JoinState<T> {
        &self.join
    }

    fn task(self: Arc<Self>) -> Option<Task> {
        Some(Task(self))
    }

    fn inline(self: Arc<Self>) -> Option<(usize, Task)> {
        Some((self.pool, Task(self)))
    }
}

impl<T: Send> Join<T> for JoinState<T> {
    fn state(&self) -> &JoinState<T> {
        self
    }

    fn task(self: Arc<Self>) -> Option<Task> {
        None
    }

    fn inline(self: Arc<Self>) -> Option<(usize, Task)> {
        None
    }
}

impl<T> Drop for JoinState<T> {
    fn drop(&mut self) {
        let slot = *self.waker.get_mut();
        if !slot.is_null() {
            // SAFETY: the state's own count; a pending deferred wake holds another.
            unsafe { WakeSlot::release(slot) };
        }
    }
}

// SAFETY: the threads holding a task share `&JoinState`. The word is atomic. The output
// cell is written once, by the claim's winner, before `COMPLETE` is set with Release, and
// read only by the single handle after it has seen `COMPLETE` with Acquire (protocol steps
// 1-5), so no two threads touch it unsynchronised. The output is moved from the winner to
// the handle, never shared, so `T: Send` suffices.
unsafe impl<T: Send> Sync for JoinState<T> {}

/// The task's result side, for a `JoinHandle`.
pub(crate) type Joiner<T> = Arc<dyn Join<T>>;

/// Makes a task for `func`, spawned on the pool identified by `pool`, and the handle that
/// will receive its result.
#[cfg_attr(not(loom), allow(dead_code))]
pub(crate) fn new<F, T>(func: F, pool: usize) -> (Task, Joiner<T>)
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    with_budget(func, pool, Budget::unlimited())
}

/// [`new`] with a budget.
pub(crate) fn with_budget<F, T>(func: F, pool: usize, budget: Budget) -> (Task, Joiner<T>)
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let cell = Arc::new(TaskCell {
        join: JoinState::new(),
        pool,
        control: Control::new(budget),
        supervisor: std::cell::UnsafeCell::new(None),
        func: UnsafeCell::new(Some(func)),
    });
    let joiner: Joiner<T> = cell.clone();
    (Task(cell), joiner)
}

/// A handle resolved at once with [`JoinError::Shutdown`], for a spawn on a closed pool.
pub(crate) fn rejected<F, T>(func: F) -> Joiner<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    rejected_with(func, JoinError::Shutdown)
}

/// A handle resolved at once with `error`; `func` is dropped unrun.
pub(crate) fn rejected_with<F, T>(func: F, error: JoinError) -> Joiner<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    drop_quietly(func);
    Arc::new(JoinState::completed(Err(error)))
}

/// The monitor's abandon of a task, as `kill.rs` does it (for the loom tests): decide,
/// then publish. False if the task was decided already.
#[cfg(loom)]
pub fn abandon(task: &Task) -> bool {
    if !task.decide() {
        return false;
    }
    task.publish_abandoned(None);
    true
}
