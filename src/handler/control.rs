//! The kill word and the rest of a task's kill state ([`Control`]): written by the task's
//! runner, its handle, the pool's monitor and this zone's handler, which is why it lives
//! here and holds only plain std atomics. Runs on ordinary threads too (every method is
//! atomics and, for the CPU clock, a raw `clock_gettime`).

use std::ptr;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU32 as StdAtomicU32, AtomicU64 as StdAtomicU64,
    Ordering,
};

use crate::budget::{Budget, KillHow, KillReason, Killed};
use crate::counters::SlotCounters;
use crate::sys::async_safe;

/// A task's kill state, shared by the task's runner, its handle, the pool's monitor and
/// the signal handler (which reads it, and is the reason these are plain std atomics).
///
/// The kill word holds the first [`KillReason`]'s code in its top byte and, below it, when
/// the budget ran out (ns since the process's time base, `sys::since_base_ns`): one
/// compare-exchange decides the reason and its time together. [`checkpoint`] only loads it.
pub(crate) struct Control {
    kill: StdAtomicU64,
    /// `RECORDS` index + 1 of the thread running the task; 0 until it starts, or on a pool
    /// without preemption.
    pub(crate) thread: StdAtomicU32,
    /// The thread's CPU-time clock when the task started, if measured (else `NO_CPU`).
    pub(crate) cpu_start_ns: StdAtomicU64,
    /// `CLOCK_MONOTONIC` ns when the task started.
    pub(crate) started_ns: StdAtomicU64,
    /// The thread's CPU clock when the monitor first saw the kill (`NO_CPU`: not yet).
    cpu_at_kill: StdAtomicU64,
    /// Calls to [`checkpoint`] so far (written by the task's thread only), and their
    /// number when the monitor first saw the kill: a task that checkpoints and has not
    /// passed one since has not seen its cancel yet (it has not run), and is not frozen
    /// for it (`handler/freeze.rs`).
    pub(crate) checkpoints: StdAtomicU32,
    checkpoints_at_kill: StdAtomicU32,
    /// The counters of the slot running the task, set when it starts: an abandon counts
    /// its outcome there. (They live in the pool's shared state, which the task's thread
    /// keeps alive while the task is undecided.)
    pub(crate) counters: AtomicPtr<SlotCounters>,
    /// The kernel id of the thread running the task, set when it starts (0: not yet).
    pub(crate) tid: AtomicI32,
    /// The closure has been called (its thread waits for the monitor if the monitor
    /// decides its outcome; see `kill.rs`, abandon).
    pub(crate) entered: AtomicBool,
    pub(crate) budget: Budget,
}

const REASON_SHIFT: u32 = 56;
const TIME_MASK: u64 = (1 << REASON_SHIFT) - 1;
const NO_CPU: u64 = u64::MAX;

/// The kill word for `reason` at `since_base_ns` (ns since the process's time base; only
/// its low 56 bits are kept, 2.28 years). Never 0: every reason's code is at least 1.
fn pack(reason: KillReason, since_base_ns: u64) -> u64 {
    (u64::from(reason.code()) << REASON_SHIFT) | (since_base_ns & TIME_MASK)
}

/// The reason and the time since the base in a kill word; `None` for 0 (no kill) or a
/// code no reason has.
fn unpack(word: u64) -> Option<(KillReason, u64)> {
    let reason = KillReason::from_code((word >> REASON_SHIFT) as u8)?;
    Some((reason, word & TIME_MASK))
}

impl Control {
    pub(crate) fn new(budget: Budget) -> Control {
        Control {
            kill: StdAtomicU64::new(0),
            thread: StdAtomicU32::new(0),
            cpu_start_ns: StdAtomicU64::new(NO_CPU),
            started_ns: StdAtomicU64::new(0),
            cpu_at_kill: StdAtomicU64::new(NO_CPU),
            checkpoints: StdAtomicU32::new(0),
            checkpoints_at_kill: StdAtomicU32::new(0),
            counters: AtomicPtr::new(ptr::null_mut()),
            tid: AtomicI32::new(0),
            entered: AtomicBool::new(false),
            budget,
        }
    }

    /// Sets the cancel flag with `reason`, unless it is set already; true if this call set
    /// it. `at_ns` is a `CLOCK_MONOTONIC` time. Async-signal-safe.
    pub(crate) fn kill(&self, reason: KillReason, at_ns: u64) -> bool {
        let word = pack(reason, async_safe::since_base_ns(at_ns));
        self.kill
            .compare_exchange(0, word, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.kill.load(Ordering::Relaxed) != 0
    }

    /// The reason and the `CLOCK_MONOTONIC` time of the kill, if any. Async-signal-safe.
    pub(crate) fn killed(&self) -> Option<(KillReason, u64)> {
        let (reason, since_base) = unpack(self.kill.load(Ordering::SeqCst))?;
        Some((reason, async_safe::from_base_ns(since_base)))
    }

    /// The `RECORDS` index of the thread running the task, once it has started.
    pub(crate) fn thread(&self) -> Option<usize> {
        match self.thread.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n as usize - 1),
        }
    }

    /// The running thread's CPU clock at the kill, once the monitor has noted it.
    /// Async-signal-safe.
    pub(crate) fn cpu_at_kill(&self) -> Option<u64> {
        match self.cpu_at_kill.load(Ordering::Relaxed) {
            NO_CPU => None,
            ns => Some(ns),
        }
    }

    /// Notes the running thread's CPU clock and checkpoint count at the kill, the first
    /// time (monitor).
    pub(crate) fn note_cpu_at_kill(&self, read: impl FnOnce() -> Option<u64>) {
        if self.cpu_at_kill.load(Ordering::Relaxed) == NO_CPU {
            self.checkpoints_at_kill
                .store(self.checkpoints.load(Ordering::Relaxed), Ordering::Relaxed);
            if let Some(ns) = read() {
                self.cpu_at_kill.store(ns, Ordering::Relaxed);
            }
        }
    }

    /// True for a task that calls [`checkpoint`] and has not passed one since the
    /// monitor saw its kill: it has not had the chance to see its cancel. Async-signal-safe.
    pub(crate) fn cancel_unseen(&self) -> bool {
        let at_kill = self.checkpoints_at_kill.load(Ordering::Relaxed);
        self.cpu_at_kill.load(Ordering::Relaxed) != NO_CPU
            && at_kill != 0
            && self.checkpoints.load(Ordering::Relaxed) == at_kill
    }

    /// True once the closure has been called.
    pub(crate) fn entered(&self) -> bool {
        self.entered.load(Ordering::SeqCst)
    }

    /// The kernel id of the thread running the task, once it has started on a pool
    /// thread with a record.
    pub(crate) fn tid(&self) -> Option<i32> {
        match self.tid.load(Ordering::Relaxed) {
            0 => None,
            tid => Some(tid),
        }
    }

    pub(crate) fn started_ns(&self) -> u64 {
        self.started_ns.load(Ordering::Relaxed)
    }

    pub(crate) fn cpu_start_ns(&self) -> Option<u64> {
        match self.cpu_start_ns.load(Ordering::Relaxed) {
            NO_CPU => None,
            ns => Some(ns),
        }
    }

    /// The CPU time used since the task started on this thread, if it was measured.
    /// Async-signal-safe (a `clock_gettime` syscall).
    pub(crate) fn cpu_used_ns(&self) -> Option<u64> {
        self.cpu_start_ns()
            .map(|start| async_safe::thread_cpu_ns().saturating_sub(start))
    }

    pub(crate) fn killed_outcome(&self, how: KillHow, cpu_ns: Option<u64>) -> Killed {
        let (reason, expired_ns) = self
            .killed()
            .unwrap_or((KillReason::Cancelled, async_safe::monotonic_ns()));
        Killed {
            reason,
            how,
            cpu_ns,
            expired_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kill_word_holds_its_reason_and_time_and_is_never_zero() {
        for reason in KillReason::ALL {
            for ns in [0, 1, 123_456_789, TIME_MASK] {
                let word = pack(reason, ns);
                assert_ne!(word, 0, "{reason:?} at {ns}");
                assert_eq!(unpack(word), Some((reason, ns)));
            }
        }
    }

    #[test]
    fn a_kill_word_keeps_the_low_56_bits_of_the_time() {
        let word = pack(KillReason::Cancelled, u64::MAX);
        assert_eq!(unpack(word), Some((KillReason::Cancelled, TIME_MASK)));
        assert_eq!(unpack(0), None);
        // A top byte no reason has reads as no kill, not as a wrong reason.
        assert_eq!(unpack(0xff << REASON_SHIFT), None);
    }

    #[test]
    fn the_first_kill_wins_and_later_ones_change_nothing() {
        let control = Control::new(Budget::unlimited());
        assert!(!control.is_cancelled());
        assert!(control.kill(KillReason::Cancelled, 5));
        assert!(!control.kill(KillReason::ALL[KillReason::COUNT - 1], 9));
        assert_eq!(
            control.killed().map(|(r, _)| r),
            Some(KillReason::Cancelled)
        );
        assert!(control.is_cancelled());
    }

    #[test]
    fn an_unseen_cancel_needs_a_noted_kill_and_no_checkpoint_since() {
        let control = Control::new(Budget::unlimited());
        control.checkpoints.store(3, Ordering::Relaxed);
        assert!(!control.cancel_unseen(), "not noted yet");
        control.note_cpu_at_kill(|| Some(10));
        assert!(control.cancel_unseen());
        control.checkpoints.store(5, Ordering::Relaxed);
        assert!(!control.cancel_unseen(), "a checkpoint passed since");
        let never = Control::new(Budget::unlimited());
        never.note_cpu_at_kill(|| Some(10));
        assert!(!never.cancel_unseen(), "a task that never checkpoints");
    }
}
