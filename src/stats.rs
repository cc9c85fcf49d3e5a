//! Counters, and the snapshot [`Pool::stats`](crate::Pool::stats) returns.
//!
//! Each slot's counters are written by the thread holding the slot, and an outcome also by
//! a carrier that finishes one of the slot's tasks after a handoff, so they are `Relaxed`
//! read-modify-writes on a cache line of their own. Every event is counted exactly once:
//! a spawn when its task is accepted, an outcome by the thread that won the task's claim,
//! before the handle resolves. So a caller that has joined N tasks sees at least N
//! outcomes, and shutdown uses "finished = accepted" to know that no task is left
//! (`runtime/shared.rs`, shutdown step 3). No ordering is promised between different counters while
//! the pool runs; once it is quiescent (every handle joined, or after shutdown) they are
//! exact.

use crate::budget::KillReason;
use crate::counters::{PoolCounters, SlotCounters};
use crate::sync::loom::{AtomicU64, Ordering};

/// A snapshot of a pool's counters. Counters are read one by one while the pool runs, so a
/// snapshot taken mid-flight may be off by the tasks in flight; after shutdown it is exact.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Tasks accepted. Once the pool is quiescent,
    /// `spawned == completed + panicked + cancelled + frozen + abandoned + discarded`.
    pub spawned: u64,
    /// Tasks that returned a value.
    pub completed: u64,
    /// Tasks whose closure panicked.
    pub panicked: u64,
    /// Tasks killed cooperatively: unwound from a `checkpoint`, or cancelled before they
    /// started.
    pub cancelled: u64,
    /// Tasks killed by freezing their thread.
    pub frozen: u64,
    /// Tasks whose kill found no safe point to freeze them in time: their handles
    /// resolved with [`KillHow::Abandoned`](crate::KillHow::Abandoned) and their threads
    /// run on outside the pool.
    pub abandoned: u64,
    /// Abandoned threads still running (they exit when their closure returns).
    pub abandoned_threads: u64,
    /// The CPU time abandoned threads have used since they were abandoned, in ns (those
    /// that have exited included).
    pub abandoned_cpu_ns: u64,
    /// Runners found running a task with the pool's signal blocked (the monitor handed
    /// their slot off from outside, or abandoned the task if it had a budget).
    pub signal_blocked: u64,
    /// True while another handler that does not pass the pool's deliveries on has
    /// replaced the pool's signal handler: nothing can be preempted or hard-killed then,
    /// and spawns with a budget are refused with
    /// [`JoinError::KillsUnenforceable`](crate::JoinError::KillsUnenforceable).
    pub signal_handler_replaced: bool,
    /// Process-wide: waker threads left stuck in a wake that never returned (an awaited
    /// handle's waker, the executor's or a tenant's) and replaced, still alive. Each is a
    /// thread lost for good, like a frozen one; past 64, later wakes wait behind the
    /// stuck one.
    pub stuck_waker_threads: u64,
    /// Times the pool's monitor caught a panic of its own (a bug: reported on stderr the
    /// first time). It goes on enforcing budgets after each.
    pub monitor_panics: u64,
    /// Kills (cancelled, frozen or abandoned) because a CPU budget ran out.
    pub kills_cpu_budget: u64,
    /// Kills because a wall-clock budget ran out.
    pub kills_wall_deadline: u64,
    /// Kills asked for by `JoinHandle::cancel`.
    pub kills_cancel: u64,
    /// Tasks frozen because they overflowed their stack.
    pub kills_stack_overflow: u64,
    /// Freeze attempts the gate deferred (in a system library, panicking, in a runtime
    /// section, no standby yet, …).
    pub freeze_deferred: u64,
    /// Of those, the ones inside a system library, not blocked in a waiting syscall.
    pub freeze_deferred_library: u64,
    /// Of those, the ones while the thread was panicking.
    pub freeze_deferred_panicking: u64,
    /// Freezes made by redirecting a return to the freeze: of the frame holding std's
    /// stdout/stderr lock, or of the system library the task was interrupted in (malloc),
    /// so the thread freezes the moment it is back in the task's own code.
    pub freeze_redirected: u64,
    /// Hard kills refused because the pool had `max_frozen` frozen threads.
    pub kills_refused: u64,
    /// Threads frozen so far (they stay, blocked, until the process exits).
    pub frozen_threads: u64,
    /// The stack bytes (stack, guard, alternate signal stack) frozen threads keep
    /// reserved: virtual memory, of which only the pages they touched are resident.
    pub frozen_stack_bytes: u64,
    /// Spawns refused because the pool was shut down (not counted in `spawned`).
    pub refused: u64,
    /// Accepted tasks dropped unrun because a `shutdown_timeout` ran out while they were
    /// queued.
    pub discarded: u64,
    /// Successful steals from another slot's queue (each takes a batch of tasks).
    pub stolen: u64,
    /// Times a runner went to sleep for lack of work.
    pub parks: u64,
    /// Times a spawn (or shutdown) woke a sleeping runner. `parks - unparks` runners are
    /// asleep right now.
    pub unparks: u64,
    /// Preemption timer deliveries that found a task running (the handler's decisions).
    pub ticks: u64,
    /// Every delivery of the pool's timer signal to a runner, whatever it found (a task,
    /// none, the runner between two): what preemption costs in interrupts.
    pub expiries: u64,
    /// Runners' one-shot timers armed because work was queued behind them (by the
    /// spawner, a peer, or their own handler looking again) or their task ran past its
    /// quantum ([`TimerClock::Contention`](crate::TimerClock::Contention)).
    pub timer_arms: u64,
    /// Slots handed to a standby because their task ran past the quantum.
    pub handoffs: u64,
    /// Of the handoffs, slots given up early by a task about to block: a join that had to
    /// wait, or [`block_in_place`](crate::block_in_place).
    pub blocking_handoffs: u64,
    /// Overruns seen while the task was inside the runtime (a spawn), handed off as soon
    /// as it left.
    pub deferred: u64,
    /// Overruns that found no parked standby (retried shortly after).
    pub no_standby: u64,
    /// Overruns left alone because the slot already had
    /// [`max_carriers`](crate::Builder::max_carriers) carriers.
    pub capped: u64,
    /// Tasks that outlived their quantum while a task waited behind them, and kept their
    /// core until they ended: the pool's history said they were about to end (see
    /// [`Builder::keep_quanta`](crate::Builder::keep_quanta);
    /// [`TimerClock::Contention`](crate::TimerClock::Contention)).
    pub kept: u64,
    /// Carriers that waited for their turn (older carriers were running: carriers run
    /// oldest first).
    pub carrier_waits: u64,
    /// Of those, waits cut short because the carriers ahead had stopped making progress.
    pub carrier_waits_cut: u64,
    /// Carriers alive now: threads still running a task that was handed off.
    pub carriers: u64,
    /// Standbys ready to take a slot over now (parked, or about to park).
    pub standbys: u64,
    /// Carriers that got their priority back after their task and rejoined the standbys.
    pub rejoined: u64,
    /// Carriers that exited after their task (no privilege to undo `SCHED_IDLE`, enough
    /// standbys already, or shutdown).
    pub retired: u64,
    /// Standby threads started, at build and by the monitor.
    pub standbys_started: u64,
    /// The same counters for each slot, in slot order.
    pub slots: Vec<SlotStats>,
}

/// One slot's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlotStats {
    /// The core the slot's runner is pinned to, if pinning is on.
    pub core: Option<usize>,
    /// Tasks this slot ran that returned a value.
    pub completed: u64,
    /// Tasks this slot ran that panicked.
    pub panicked: u64,
    /// Tasks this slot ran (or picked up) that were cancelled.
    pub cancelled: u64,
    /// Tasks this slot ran that were frozen.
    pub frozen: u64,
    /// Tasks this slot ran that were abandoned.
    pub abandoned: u64,
    /// Tasks spawned from inside this slot's tasks (pushed to its local queue).
    pub local_spawns: u64,
    /// Batches this slot took from the global injector.
    pub from_injector: u64,
    /// Successful steals from other slots' queues (each takes a batch of tasks).
    pub stolen: u64,
    /// Times this slot's runner went to sleep.
    pub parks: u64,
    /// Times it was woken by a spawn or by shutdown.
    pub unparks: u64,
    /// Preemption ticks that found one of this slot's tasks running.
    pub ticks: u64,
    /// Times this slot was handed to a standby.
    pub handoffs: u64,
    /// Carriers this slot has shed that are still running their task.
    pub carriers: u64,
    /// Standbys parked for this slot.
    pub standbys: u64,
}

impl SlotStats {
    /// `parks` and `unparks` live beside the slot's sleep word (`sync/sleep.rs`).
    pub(crate) fn of(
        counters: &SlotCounters,
        core: Option<usize>,
        (parks, unparks): (u64, u64),
        preempt: PreemptSnapshot,
    ) -> SlotStats {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SlotStats {
            core,
            completed: read(&counters.completed),
            panicked: read(&counters.panicked),
            cancelled: read(&counters.cancelled),
            frozen: read(&counters.frozen),
            abandoned: read(&counters.abandoned),
            local_spawns: read(&counters.local_spawns),
            from_injector: read(&counters.from_injector),
            stolen: read(&counters.stolen),
            parks,
            unparks,
            ticks: preempt.ticks,
            handoffs: preempt.handoffs,
            carriers: preempt.carriers,
            standbys: preempt.standbys,
        }
    }
}

/// A slot's preemption counters, as read by [`Stats`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PreemptSnapshot {
    pub(crate) ticks: u64,
    pub(crate) expiries: u64,
    pub(crate) arms: u64,
    pub(crate) handoffs: u64,
    pub(crate) blocking_handoffs: u64,
    pub(crate) deferred: u64,
    pub(crate) no_standby: u64,
    pub(crate) capped: u64,
    pub(crate) kept: u64,
    pub(crate) carrier_waits: u64,
    pub(crate) carrier_waits_cut: u64,
    pub(crate) carriers: u64,
    pub(crate) standbys: u64,
    pub(crate) rejoined: u64,
    pub(crate) retired: u64,
    pub(crate) started: u64,
}

impl PreemptSnapshot {
    pub(crate) fn of(reserve: &crate::sync::reserve::Reserve) -> PreemptSnapshot {
        let c = &reserve.counters;
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PreemptSnapshot {
            ticks: read(&c.ticks),
            expiries: read(&c.expiries),
            arms: read(&c.arms),
            handoffs: read(&c.handoffs),
            blocking_handoffs: read(&c.blocking_handoffs),
            deferred: read(&c.deferred),
            no_standby: read(&c.no_standby),
            capped: read(&c.at_cap),
            kept: read(&c.kept),
            carrier_waits: read(&c.turn_waits),
            carrier_waits_cut: read(&c.turn_cuts),
            carriers: u64::from(reserve.carriers()),
            standbys: u64::from(reserve.ready()),
            rejoined: read(&c.rejoined),
            retired: read(&c.retired),
            started: read(&c.started),
        }
    }
}

impl Stats {
    /// `injected`: tasks accepted from threads that hold no slot of the pool.
    pub(crate) fn collect(
        injected: u64,
        pool: &PoolCounters,
        slots: Vec<SlotStats>,
        preempt: &[PreemptSnapshot],
        kills: crate::kill::KillSnapshot,
    ) -> Stats {
        let sum = |f: fn(&SlotStats) -> u64| slots.iter().map(f).sum::<u64>();
        let total = |f: fn(&PreemptSnapshot) -> u64| preempt.iter().map(f).sum::<u64>();
        Stats {
            spawned: injected + sum(|s| s.local_spawns),
            completed: sum(|s| s.completed),
            panicked: sum(|s| s.panicked),
            cancelled: sum(|s| s.cancelled),
            frozen: sum(|s| s.frozen),
            abandoned: sum(|s| s.abandoned),
            abandoned_threads: kills.abandoned_threads,
            abandoned_cpu_ns: kills.abandoned_cpu_ns,
            signal_blocked: kills.signal_blocked,
            signal_handler_replaced: kills.handler_replaced,
            stuck_waker_threads: crate::task::stuck_waker_threads(),
            monitor_panics: kills.monitor_panics,
            kills_cpu_budget: kills.by_reason[KillReason::CpuBudget.index()],
            kills_wall_deadline: kills.by_reason[KillReason::WallDeadline.index()],
            kills_cancel: kills.by_reason[KillReason::Cancelled.index()],
            kills_stack_overflow: kills.by_reason[KillReason::StackOverflow.index()],
            freeze_deferred: kills.deferred,
            freeze_deferred_library: kills.deferred_library,
            freeze_deferred_panicking: kills.deferred_panicking,
            freeze_redirected: kills.redirected,
            kills_refused: kills.refused,
            frozen_threads: kills.frozen_threads,
            frozen_stack_bytes: kills.frozen_stack_bytes,
            refused: pool.refused.load(Ordering::Relaxed),
            discarded: pool.discarded.load(Ordering::Relaxed),
            stolen: sum(|s| s.stolen),
            parks: sum(|s| s.parks),
            unparks: sum(|s| s.unparks),
            ticks: total(|p| p.ticks),
            expiries: total(|p| p.expiries),
            timer_arms: total(|p| p.arms),
            handoffs: total(|p| p.handoffs),
            blocking_handoffs: total(|p| p.blocking_handoffs),
            deferred: total(|p| p.deferred),
            no_standby: total(|p| p.no_standby),
            capped: total(|p| p.capped),
            kept: total(|p| p.kept),
            carrier_waits: total(|p| p.carrier_waits),
            carrier_waits_cut: total(|p| p.carrier_waits_cut),
            carriers: total(|p| p.carriers),
            standbys: total(|p| p.standbys),
            rejoined: total(|p| p.rejoined),
            retired: total(|p| p.retired),
            standbys_started: total(|p| p.started),
            slots,
        }
    }
}
