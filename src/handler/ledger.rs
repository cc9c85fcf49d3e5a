//! The half of a pool's kill registry that the signal handler reaches: the monitor's
//! bells, the frozen places and the kill counters, all atomics. The monitor's half (the
//! watches, the lost threads, under locks) is `kill.rs`'s `Kills`, which holds this one.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::budget::KillReason;
use crate::sync::loom::Futex;

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
    /// The walk met code of an object loaded since the tables were last refreshed (a
    /// `dlopen` the monitor has not seen yet).
    Unrecorded,
    /// The thread holds its slot and no standby is parked yet.
    NoStandby,
    /// The task has not yet had its grace period of CPU time since the cancel.
    Grace,
    /// The return slot did not hold the return address the unwinder reported.
    Mismatch,
}

/// Kill counters, by reason and by how.
#[derive(Debug, Default)]
pub(crate) struct KillCounters {
    /// Kills by reason (`KillReason::code() - 1`), however they ended.
    pub(crate) by_reason: [AtomicU64; KillReason::COUNT],
    pub(crate) deferred: AtomicU64,
    pub(crate) deferred_library: AtomicU64,
    pub(crate) deferred_panicking: AtomicU64,
    pub(crate) redirected: AtomicU64,
    pub(crate) monitor_panics: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) frozen_stack_bytes: AtomicU64,
    /// CPU time abandoned threads used between their abandon and their exit (ns).
    pub(crate) abandoned_cpu_exited: AtomicU64,
    pub(crate) signal_blocked: AtomicU64,
}

impl KillCounters {
    pub(super) fn reset(&self) {
        for c in self.by_reason.iter().chain([
            &self.deferred,
            &self.deferred_library,
            &self.deferred_panicking,
            &self.redirected,
            &self.monitor_panics,
            &self.refused,
            &self.frozen_stack_bytes,
            &self.abandoned_cpu_exited,
            &self.signal_blocked,
        ]) {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// The handler's half of a pool's kill registry. Never freed (its `Kills` is leaked).
pub(crate) struct KillLedger {
    /// The monitor sleeps on this word; handoffs, watches and freezes ring it.
    pub(crate) bell: Futex,
    /// The standby maker sleeps on this one (`runtime/monitor.rs`); rung with the other.
    pub(crate) standby_bell: Futex,
    pub(crate) max_deferral_ns: u64,
    pub(crate) max_frozen: usize,
    /// Frozen places taken (a place is taken before a freeze and kept for good).
    pub(crate) reserved: AtomicUsize,
    /// The `pthread_t` of every frozen thread (0: an empty place), for shutdown.
    pub(crate) frozen_threads: &'static [AtomicUsize],
    pub(crate) frozen_count: AtomicUsize,
    pub(crate) counters: KillCounters,
}

impl KillLedger {
    // Ordinary context: a pool's build (it allocates the frozen places, leaked with the
    // registry that holds this ledger).
    #[allow(
        clippy::disallowed_types,
        clippy::disallowed_macros,
        clippy::disallowed_methods
    )]
    pub(crate) fn new(max_frozen: usize, max_deferral_ns: u64) -> KillLedger {
        KillLedger {
            bell: Futex::new(0),
            standby_bell: Futex::new(0),
            max_deferral_ns,
            max_frozen,
            reserved: AtomicUsize::new(0),
            frozen_threads: Box::leak((0..max_frozen).map(|_| AtomicUsize::new(0)).collect()),
            frozen_count: AtomicUsize::new(0),
            counters: KillCounters::default(),
        }
    }

    /// Clears it for reuse by another pool (ordinary context, no thread of the old pool
    /// left).
    pub(crate) fn reset(&self) {
        self.reserved.store(0, Ordering::Relaxed);
        for t in self.frozen_threads.iter() {
            t.store(0, Ordering::Relaxed);
        }
        self.frozen_count.store(0, Ordering::Relaxed);
        self.counters.reset();
    }

    /// Wakes the monitor. Async-signal-safe.
    pub(crate) fn ring(&self) {
        self.bell.fetch_add(1, Ordering::Release);
        self.bell.wake_one();
        self.standby_bell.fetch_add(1, Ordering::Release);
        self.standby_bell.wake_one();
    }

    /// Takes a frozen place; false at the cap. Async-signal-safe.
    #[must_use = "false: the frozen cap is reached and the kill must be refused"]
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
        self.counters.by_reason[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a frozen task, and remembers its thread (`thread`: once per thread, for the
    /// innermost of the tasks frozen with it). Async-signal-safe.
    pub(crate) fn frozen(&self, reason: KillReason) {
        self.counters.by_reason[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a frozen thread and remembers it, for shutdown. Async-signal-safe.
    pub(crate) fn frozen_thread(&self, stack_bytes: usize, pthread: usize) {
        let c = &self.counters;
        c.frozen_stack_bytes
            .fetch_add(stack_bytes as u64, Ordering::Relaxed);
        let place = self.frozen_count.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = self.frozen_threads.get(place) {
            slot.store(pthread, Ordering::Release);
        }
    }
}
