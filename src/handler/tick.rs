//! What a tick does (the handler's steps 1–4, see `handler/mod.rs`), the one-shot that
//! sharpens a tick near the quantum, the handoff itself, and the deferred tick at the end
//! of a runtime section.

use std::sync::atomic::{compiler_fence, Ordering};

use super::record::{Preempt, Record, CARRIED, IN_TASK, RECORDS};
use crate::sync::reserve::Reserve;
use crate::sys::async_safe;

/// Steps 1–4 of the module docs, for the record of the thread the handler interrupted.
pub(super) fn on_tick(record: &Record) {
    if record.state.load(Ordering::Relaxed) != IN_TASK {
        return;
    }
    let preempt = record.preempt();
    let reserve = record.reserve();
    reserve.counters.ticks.fetch_add(1, Ordering::Relaxed);
    let now = async_safe::monotonic_ns();
    let ran = now.saturating_sub(record.start_ns.load(Ordering::Relaxed));
    if ran < preempt.quantum_ns {
        // The clock's policy (`timer.rs`) may sharpen a tick that comes too late.
        let start = record.start_ns.load(Ordering::Relaxed);
        if let Some(at) = preempt
            .clock
            .sharpen(start, ran, preempt.quantum_ns, preempt.tick_ns)
        {
            if !record.armed.load(Ordering::Relaxed) {
                arm_once(record, at, true);
            }
        }
        return;
    }
    if record.depth.load(Ordering::Relaxed) > 0 {
        record.pending.store(true, Ordering::Relaxed);
        reserve.counters.deferred.fetch_add(1, Ordering::Relaxed);
        return;
    }
    handoff(record, preempt, reserve);
}

/// Arms the one-shot precise timer (for a clock that sharpens its ticks).
fn arm_once(record: &Record, at_ns: u64, absolute: bool) {
    if let Some(timer) = record.precise() {
        record.armed.store(true, Ordering::Relaxed);
        async_safe::set_timer(timer, at_ns, 0, absolute);
    }
}

/// Makes the thread owning record `index` look at its task again now, by queueing the
/// pool's signal to it with the record's token (`sys::async_safe::nudge`). Called by a
/// standby that parks while a runner wants one. Nothing of the target is touched (its
/// timers stay its own); if the record changed hands or its thread exited meanwhile, the
/// handler of whichever thread gets it finds the record not its own, or no task past its
/// quantum, and returns.
pub(crate) fn poke(index: usize, preempt: &Preempt) {
    let Some(record) = RECORDS.get(index) else {
        return;
    };
    // The index may be stale: its runner may have exited since, and the record serve a
    // thread of another pool, or of none (its `preempt` then points at settings that may
    // be gone). Only a record of the caller's own pool is nudged, with the caller's
    // settings: nothing is read through the record's pointer.
    let tid = record.tid.load(Ordering::Relaxed);
    if tid == 0 || !std::ptr::eq(record.preempt.load(Ordering::Relaxed), preempt) {
        return;
    }
    record.nudge(preempt.signal);
}

/// Step 4, `sync/reserve.rs` steps 3–5.
fn handoff(record: &Record, preempt: &Preempt, reserve: &Reserve) {
    if reserve.carriers() >= preempt.max_carriers {
        reserve.counters.at_cap.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let index = record.index.load(Ordering::Relaxed);
    if !reserve.take_standby() {
        // The next standby to park pokes this runner (see `sync/reserve.rs`); the next tick
        // retries too. Look once more after saying so, in case one parked in between
        // (its poke will then be a harmless extra look).
        reserve.want(index);
        if !reserve.take_standby() {
            reserve.counters.no_standby.fetch_add(1, Ordering::Relaxed);
            preempt.ring();
            return;
        }
    }
    reserve.unwant(index);
    if record
        .state
        .compare_exchange(IN_TASK, CARRIED, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        reserve.give_back();
        return;
    }
    compiler_fence(Ordering::SeqCst);
    // A carrier needs no quantum timer: its task is already demoted.
    if record.armed.swap(false, Ordering::Relaxed) {
        if let Some(timer) = record.precise() {
            async_safe::set_timer(timer, 0, 0, false);
        }
    }
    reserve.counters.handoffs.fetch_add(1, Ordering::Relaxed);
    // Grant first: demoted, this thread could be preempted by any normal thread woken on
    // its core and not get the CPU back for a long time, leaving the slot with no holder.
    // The standby woken by the grant does not preempt this thread while it is still at
    // normal priority, and changing the running thread's policy to SCHED_IDLE does not
    // reschedule (the class stays "fair"), so yield once demoted: the standby then runs
    // at once instead of at the next tick (measured: 0.5-4 ms later without the yield).
    reserve.grant();
    preempt.ring();
    async_safe::demote_to_idle();
    if let Some(cpus) = &preempt.carrier_cpus {
        async_safe::widen_affinity(cpus);
    }
    async_safe::yield_now();
}

impl Record {
    /// Leaves a runtime section; hands the slot off now if an overrun was seen inside it.
    pub(crate) fn leave_runtime(&self) {
        compiler_fence(Ordering::SeqCst);
        // Release: the section's pushes to the deque happen-before a monitor that reads
        // `depth == 0` and then grants the slot from outside.
        let depth = self.depth.fetch_sub(1, Ordering::Release) - 1;
        compiler_fence(Ordering::SeqCst);
        if depth == 0 && self.pending.swap(false, Ordering::Relaxed) {
            on_tick(self);
        }
    }
}
