//! The counters every layer bumps: per slot (by the thread holding the slot, and by the
//! thread that decides a task's outcome, the signal handler included) and per pool.
//! Relaxed read-modify-writes on a cache line of their own per slot; [`crate::Stats`]
//! reads them (see `stats.rs` for what is exact when). Async-signal-safe: atomics only.

use crate::budget::KillHow;
use crate::sync::loom::{AtomicU64, Ordering};

/// Per-slot counters, padded so two slots never share a cache line.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct SlotCounters {
    pub(crate) completed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) frozen: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) local_spawns: AtomicU64,
    pub(crate) from_injector: AtomicU64,
    pub(crate) stolen: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl SlotCounters {
    pub(crate) fn record_outcome(&self, panicked: bool) {
        bump(if panicked {
            &self.panicked
        } else {
            &self.completed
        });
    }

    /// A killed task's outcome. Async-signal-safe (the freeze counts from the handler).
    pub(crate) fn record_kill(&self, how: KillHow) {
        bump(match how {
            KillHow::Cancelled => &self.cancelled,
            KillHow::Frozen => &self.frozen,
            KillHow::Abandoned => &self.abandoned,
        });
    }

    pub(crate) fn local_spawn(&self) {
        bump(&self.local_spawns);
    }

    pub(crate) fn took_from_injector(&self) {
        bump(&self.from_injector);
    }

    pub(crate) fn stole(&self) {
        bump(&self.stolen);
    }

    /// Tasks this slot accepted from its own tasks' spawns, and tasks it finished.
    pub fn accepted_and_finished(&self) -> (u64, u64) {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (
            read(&self.local_spawns),
            read(&self.completed)
                + read(&self.panicked)
                + read(&self.cancelled)
                + read(&self.frozen)
                + read(&self.abandoned),
        )
    }
}

/// Pool-wide counters that no slot owns.
#[derive(Debug, Default)]
pub(crate) struct PoolCounters {
    /// Spawns refused because the pool was shut down.
    pub(crate) refused: AtomicU64,
    /// Accepted tasks dropped unrun because a shutdown ran out of time.
    pub(crate) discarded: AtomicU64,
}
