//! Slots: the per-core right to run tasks, separate from the thread that exercises it.
//!
//! A slot owns a local FIFO deque (crossbeam `Worker`), the `Stealer` other slots and the
//! shutdown sweep take from, and its counters. The deque's `Worker` end may only be used by
//! the slot's *holder*, the one runner thread that holds the slot at the time. The holder
//! changes when preemption hands the slot to a standby mid-task (`handler/tick.rs`, or the
//! monitor from outside, `kill.rs`), which is why the deque lives here and not on the
//! runner's stack: it moves with the slot.

use std::cell::UnsafeCell;

use crossbeam_deque::{Stealer, Worker};

use crate::counters::SlotCounters;
use crate::sync::loom::AtomicBool;
use crate::task::Task;

pub(crate) struct Slot {
    local: UnsafeCell<Worker<Task>>,
    /// Up while a task of this slot is spawning (shutdown step 1, in `runtime/shared.rs`).
    pub(crate) spawning: Flag,
    pub(crate) stealer: Stealer<Task>,
    /// The core the holder is pinned to, if pinning is on.
    pub(crate) core: Option<usize>,
    pub(crate) counters: SlotCounters,
}

/// A flag on a cache line of its own: the holder writes it on every spawn, while peers
/// read the slot's stealer.
#[repr(align(128))]
pub(crate) struct Flag(AtomicBool);

impl std::ops::Deref for Flag {
    type Target = AtomicBool;

    fn deref(&self) -> &AtomicBool {
        &self.0
    }
}

// SAFETY: the only `!Sync` part is the `Worker`, and it is reached only through `local`,
// whose contract is that the caller holds the slot: one thread at a time. Everything else
// is `Sync`.
unsafe impl Sync for Slot {}

impl Slot {
    pub(crate) fn new(core: Option<usize>) -> Self {
        // FIFO: a slot runs its own tasks in the order they were spawned. Stealers take from
        // the same (oldest) end.
        let local = Worker::new_fifo();
        Self {
            stealer: local.stealer(),
            local: UnsafeCell::new(local),
            spawning: Flag(AtomicBool::new(false)),
            core,
            counters: SlotCounters::default(),
        }
    }

    /// The slot's local deque.
    ///
    /// # Safety
    ///
    /// The calling thread holds this slot, and keeps holding it while the reference lives.
    pub(crate) unsafe fn local(&self) -> &Worker<Task> {
        // SAFETY: the caller holds the slot, so no other thread uses the `Worker`; shared
        // references on the holder's own thread are fine (`Worker`'s methods take `&self`).
        unsafe { &*self.local.get() }
    }
}
