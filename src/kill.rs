//! Budgets and kills: the registry the monitor enforces them from, and the counters.
//!
//! # Protocol
//!
//! 1. A task with a budget registers here when it starts (`task.rs`, `Task::run_in`), with
//!    its thread and its CPU clock at start; a running task whose handle calls `cancel`
//!    registers then. A task cancelled while queued never starts (its runner sees the flag).
//! 2. The monitor ([`Kills::enforce`]) wakes when the earliest watch is due: a wall
//!    deadline, the moment a CPU budget would run out if the task ran flat out (it reads
//!    the thread's CPU clock and sleeps for what is left, so it never polls), or a grace
//!    period's end.
//! 3. A budget that has run out sets the task's cancel flag (`Control::kill`; the first
//!    reason wins). The task's next `checkpoint` unwinds.
//! 4. Grace over, task not done: ask the thread to freeze (`handler/freeze.rs` step 1),
//!    and again every [`FREEZE_RETRY`] while the gate defers. The grace period is
//!    wall-clock time, but a running thread must also have had 200 µs of CPU time since
//!    the cancel (or its whole grace period, if shorter): a demoted carrier on a busy
//!    core may not have run at all, and deserves a chance to reach a checkpoint. After the pool's maximum deferral (CPU time while the thread
//!    runs, but at most ten times as long in wall-clock time; wall-clock time while it
//!    waits) a panicking thread may be frozen too; never
//!    one inside a system library or holding a lock the gate can see: those keep
//!    deferring, and the task keeps running demoted, on idle time only.
//! 5. At most `max_frozen` threads are frozen per pool: past it, a kill is refused (counted
//!    in `Stats::kills_refused`), and the task runs on at `SCHED_IDLE` with its cancel
//!    flag set, until it returns. Each frozen thread keeps its stack reserved (and what its
//!    task allocated) until the process exits.
//! 6. A watch whose task is done is dropped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::budget::KillReason;
use crate::handler::{self, RECORDS};
use crate::loom::Futex;
use crate::sys::{self, async_safe};
use crate::task::{drop_quietly, Task};

/// How often the monitor asks again while a freeze is deferred.
pub(crate) const FREEZE_RETRY: Duration = Duration::from_micros(250);

/// The maximum freeze deferral is CPU time for a running thread, but at most this many
/// times as long in wall-clock time.
const STARVED_FACTOR: u64 = 10;

/// How long the monitor waits before asking again when the thread has not looked at its
/// last request yet (the request may have been lost to a race with the thread's record).
const UNSEEN_RETRY: Duration = Duration::from_millis(20);

/// Why a freeze was deferred.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Defer {
    /// Runtime code, or the no-freeze counter.
    NoFreeze,
    /// Between the task's closure and the runtime (just starting or ending).
    Runtime,
    /// In a system library, not blocked in a waiting syscall.
    Library,
    /// Panicking, before the maximum deferral.
    Panicking,
    /// A stdio lock holder on the stack, and no way to redirect its return.
    LockHeld,
    /// The walk did not reach the task's first frame.
    Unwalkable,
    /// The thread holds its slot and no standby is parked yet.
    NoStandby,
    /// The task has not yet had its grace period of CPU time since the cancel.
    Grace,
    /// The walk never found the interrupted frame.
    NoStart,
    /// The return slot did not hold the return address the unwinder reported.
    Mismatch,
}

/// Kill counters, by reason and by how.
#[derive(Debug, Default)]
pub(crate) struct KillCounters {
    /// Kills by reason (`KillReason::code() - 1`), however they ended.
    by_reason: [AtomicU64; 4],
    deferred: AtomicU64,
    deferred_library: AtomicU64,
    deferred_panicking: AtomicU64,
    redirected: AtomicU64,
    refused: AtomicU64,
    frozen_stack_bytes: AtomicU64,
}

/// A pool's budgets and kills. Leaked when the pool is built: a task's handle keeps a
/// pointer to it, and may outlive the pool.
pub(crate) struct Kills {
    /// The monitor sleeps on this word; handoffs, watches and freezes ring it.
    pub(crate) bell: Futex,
    watches: Mutex<Vec<Watch>>,
    /// When the monitor next wakes for the watches (`CLOCK_MONOTONIC` ns).
    next_due: AtomicU64,
    signal: i32,
    pub(crate) max_deferral_ns: u64,
    max_frozen: usize,
    /// Frozen places taken (a place is taken before a freeze and kept for good).
    reserved: AtomicUsize,
    /// The `pthread_t` of every frozen thread (0: an empty place), for shutdown.
    frozen_threads: Box<[AtomicUsize]>,
    frozen_count: AtomicUsize,
    pub(crate) counters: KillCounters,
}

struct Watch {
    task: Task,
    /// When the freeze was first asked for, and last asked for.
    first_ask: Option<u64>,
    last_ask: u64,
    /// The thread's `kill_acks` when it was last asked.
    acks: u32,
    /// When the monitor first found a request looked at.
    first_seen: Option<u64>,
    refused: bool,
}

impl Kills {
    pub(crate) fn leak(signal: i32, max_frozen: usize, max_deferral: Duration) -> &'static Kills {
        Box::leak(Box::new(Kills {
            bell: Futex::new(0),
            watches: Mutex::new(Vec::new()),
            next_due: AtomicU64::new(u64::MAX),
            signal,
            max_deferral_ns: max_deferral.as_nanos().min(u128::from(u64::MAX)) as u64,
            max_frozen,
            reserved: AtomicUsize::new(0),
            frozen_threads: (0..max_frozen).map(|_| AtomicUsize::new(0)).collect(),
            frozen_count: AtomicUsize::new(0),
            counters: KillCounters::default(),
        }))
    }

    /// Wakes the monitor. Async-signal-safe.
    pub(crate) fn ring(&self) {
        self.bell.fetch_add(1, Ordering::Release);
        self.bell.wake_one();
    }

    /// Step 1: watch `task` (once) and wake the monitor if it is due before its next wake.
    pub(crate) fn watch(&self, task: Task) {
        let control = task.control();
        let now = async_safe::monotonic_ns();
        let budget = control.budget;
        let mut due = u64::MAX;
        if let Some(wall) = budget.wall_limit() {
            due = due.min(control.started_ns().saturating_add(nanos(wall)));
        }
        if let Some(cpu) = budget.cpu_limit() {
            due = due.min(now.saturating_add(nanos(cpu)));
        }
        if let Some((_, at)) = control.killed() {
            due = due.min(at.saturating_add(nanos(budget.grace_period())));
        }
        {
            let mut watches = self.watches.lock();
            if watches.iter().any(|w| w.task.same(&task)) {
                return;
            }
            if watches.len() >= 256 && watches.len().is_power_of_two() {
                // Budgeted tasks that finished between two wakes of the monitor.
                let done: Vec<Watch> = extract_done(&mut watches);
                drop(watches);
                drop_quietly(done);
                watches = self.watches.lock();
            }
            watches.push(Watch {
                task,
                first_ask: None,
                last_ask: 0,
                acks: 0,
                first_seen: None,
                refused: false,
            });
            // Decided under the lock `enforce` sets `next_due` under: either it has seen
            // this watch, or this sees its `next_due` and rings.
            if due >= self.next_due.load(Ordering::Relaxed) {
                return;
            }
            self.next_due.store(due, Ordering::Relaxed);
        }
        self.ring();
    }

    /// Steps 2–6, by the monitor. Returns when it should look again (ns, `u64::MAX`:
    /// nothing to watch).
    pub(crate) fn enforce(&self) -> u64 {
        let now = async_safe::monotonic_ns();
        let mut due = u64::MAX;
        let done = {
            let mut watches = self.watches.lock();
            let done = extract_done(&mut watches);
            for watch in &done {
                if let Some(thread) = watch.task.control().thread() {
                    RECORDS[thread].forget_kill(watch.task.control());
                }
            }
            for watch in watches.iter_mut() {
                due = due.min(self.check(watch, now));
            }
            self.next_due.store(due, Ordering::Relaxed);
            done
        };
        drop_quietly(done);
        due
    }

    fn check(&self, watch: &mut Watch, now: u64) -> u64 {
        let control = watch.task.control();
        let Some(thread) = control.thread() else {
            // Cancelled while queued: its runner resolves it; look again later.
            return now + 10_000_000;
        };
        let record = &RECORDS[thread];
        let budget = control.budget;
        let mut due = u64::MAX;
        if control.killed().is_none() {
            if let Some(wall) = budget.wall_limit() {
                let deadline = control.started_ns().saturating_add(nanos(wall));
                if now >= deadline {
                    control.kill(KillReason::WallDeadline, deadline);
                } else {
                    due = due.min(deadline);
                }
            }
            if let (Some(cpu), Some(start)) = (budget.cpu_limit(), control.cpu_start_ns()) {
                let tid = record.tid.load(Ordering::Relaxed);
                let used = sys::thread_cpu_ns_of(tid).map_or(0, |t| t.saturating_sub(start));
                if used >= nanos(cpu) {
                    control.kill(KillReason::CpuBudget, now);
                } else if control.killed().is_none() {
                    due = due.min(now + (nanos(cpu) - used));
                }
            }
        }
        let Some((_, at)) = control.killed() else {
            return due;
        };
        let tid = record.tid.load(Ordering::Relaxed);
        control.note_cpu_at_kill(|| sys::thread_cpu_ns_of(tid));
        let freeze_at = at.saturating_add(nanos(budget.grace_period()));
        if now < freeze_at {
            return due.min(freeze_at);
        }
        if watch.refused || record.redirect_slot.load(Ordering::Relaxed) != 0 {
            // Refused, or frozen the moment it returns from a redirected frame.
            return due.min(now + nanos(FREEZE_RETRY));
        }
        // Places taken, by freezes done and by those on their way (redirects).
        if self.reserved.load(Ordering::Relaxed) >= self.max_frozen {
            watch.refused = true;
            self.refused();
            return due;
        }
        // Ask again every FREEZE_RETRY once the last request was seen; a thread that has
        // not seen it yet (demoted, waiting for CPU) gets no pile of new ones.
        let seen =
            watch.first_ask.is_some() && record.kill_acks.load(Ordering::Relaxed) != watch.acks;
        let wait = if seen || watch.first_ask.is_none() {
            FREEZE_RETRY
        } else {
            UNSEEN_RETRY
        };
        if now.saturating_sub(watch.last_ask) < nanos(wait) {
            return due.min(watch.last_ask + nanos(wait));
        }
        if watch.first_ask.is_none() {
            record.kill_force.store(false, Ordering::Relaxed);
            record.kill_force_cpu.store(u64::MAX, Ordering::Relaxed);
            watch.first_ask = Some(now);
        }
        // The maximum deferral counts from the first request the thread looked at (a
        // demoted thread may not run, and see any, for a long time), in its CPU time while
        // it runs (the handler compares) and in wall-clock time while it waits.
        // (The handler starts the CPU-time count itself, at its first deferral.)
        if seen && watch.first_seen.is_none() {
            watch.first_seen = Some(now);
        }
        let deferred_for = watch
            .first_seen
            .map_or(0, |first| now.saturating_sub(first));
        if deferred_for >= self.max_deferral_ns {
            record.kill_force.store(true, Ordering::Relaxed);
        }
        // A running thread starved of CPU (demoted on a saturated core) would take
        // forever to use the deferral in CPU time: past this many times it in wall-clock
        // time, it goes too.
        if deferred_for >= self.max_deferral_ns.saturating_mul(STARVED_FACTOR) {
            record.kill_force_cpu.store(0, Ordering::Relaxed);
        }
        record.kill_target.store(
            control as *const crate::task::Control as *mut crate::task::Control,
            Ordering::SeqCst,
        );
        if watch.task.is_done() {
            record.forget_kill(control);
            return due;
        }
        watch.last_ask = now;
        watch.acks = record.kill_acks.load(Ordering::Relaxed);
        let index = record.index.load(Ordering::Relaxed);
        async_safe::nudge(tid, self.signal, handler::token(index));
        due.min(now + nanos(FREEZE_RETRY))
    }

    /// Takes a frozen place; false at the cap. Async-signal-safe.
    pub(crate) fn reserve_frozen(&self) -> bool {
        let taken = self.reserved.fetch_add(1, Ordering::Relaxed);
        if taken < self.max_frozen {
            return true;
        }
        self.reserved.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// Gives a place back (a redirect undone by a panic). Async-signal-safe.
    pub(crate) fn unreserve_frozen(&self) {
        self.reserved.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn deferred(&self, why: Defer) {
        let c = &self.counters;
        c.deferred.fetch_add(1, Ordering::Relaxed);
        match why {
            Defer::Library => c.deferred_library.fetch_add(1, Ordering::Relaxed),
            Defer::Panicking => c.deferred_panicking.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }

    pub(crate) fn refused(&self) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn redirected(&self) {
        self.counters.redirected.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a cooperative cancel.
    pub(crate) fn cancelled(&self, reason: KillReason) {
        self.counters.by_reason[index(reason)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a frozen task, and remembers its thread (`thread`: once per thread, for the
    /// innermost of the tasks frozen with it). Async-signal-safe.
    pub(crate) fn frozen(
        &self,
        reason: KillReason,
        stack_bytes: usize,
        pthread: usize,
        thread: bool,
    ) {
        let c = &self.counters;
        c.by_reason[index(reason)].fetch_add(1, Ordering::Relaxed);
        if !thread {
            return;
        }
        c.frozen_stack_bytes
            .fetch_add(stack_bytes as u64, Ordering::Relaxed);
        let place = self.frozen_count.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = self.frozen_threads.get(place) {
            slot.store(pthread, Ordering::Release);
        }
    }

    /// True if `pthread` is a frozen thread of this pool.
    pub(crate) fn is_frozen_thread(&self, pthread: usize) -> bool {
        self.frozen_threads
            .iter()
            .any(|t| t.load(Ordering::Acquire) == pthread)
    }

    pub(crate) fn snapshot(&self) -> KillSnapshot {
        let c = &self.counters;
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        KillSnapshot {
            by_reason: c.by_reason.each_ref().map(read),
            deferred: read(&c.deferred),
            deferred_library: read(&c.deferred_library),
            deferred_panicking: read(&c.deferred_panicking),
            redirected: read(&c.redirected),
            refused: read(&c.refused),
            frozen_threads: self.frozen_count.load(Ordering::Relaxed) as u64,
            frozen_stack_bytes: read(&c.frozen_stack_bytes),
            abandoned_threads: 0,
            abandoned_cpu_ns: 0,
            signal_blocked: 0,
            handler_replaced: false,
        }
    }
}

/// Kill counters as `Pool::stats` reports them.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct KillSnapshot {
    /// By reason: `KillReason::code() - 1`.
    pub(crate) by_reason: [u64; 4],
    pub(crate) abandoned_threads: u64,
    pub(crate) abandoned_cpu_ns: u64,
    pub(crate) signal_blocked: u64,
    pub(crate) handler_replaced: bool,
    pub(crate) deferred: u64,
    pub(crate) deferred_library: u64,
    pub(crate) deferred_panicking: u64,
    pub(crate) redirected: u64,
    pub(crate) refused: u64,
    pub(crate) frozen_threads: u64,
    pub(crate) frozen_stack_bytes: u64,
}

fn extract_done(watches: &mut Vec<Watch>) -> Vec<Watch> {
    let mut done = Vec::new();
    let mut i = 0;
    while i < watches.len() {
        if watches[i].task.is_done() {
            done.push(watches.swap_remove(i));
        } else {
            i += 1;
        }
    }
    done
}

fn index(reason: KillReason) -> usize {
    usize::from(reason.code() - 1)
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}
