//! What a tick does (the handler's steps 1–4, see `handler/mod.rs`), the one-shot that
//! sharpens a tick near the quantum, the handoff itself, and the deferred tick at the end
//! of a runtime section.

use std::sync::atomic::{compiler_fence, Ordering};

use super::record::{Preempt, Record, CARRIED, IN_TASK, RECORDED, RECORDS, TICKS_CONTENTION};
use crate::sync::reserve::Reserve;
use crate::sys::async_safe;

/// Steps 1–4 of the module docs, for the record of the thread the handler interrupted.
///
/// `context` is the handler's third argument (null from [`Record::leave_runtime`]): a
/// carrier waits for its turn only where the freeze gate, which reads it, accepts.
pub(super) fn on_tick(record: &Record, context: *mut libc::c_void) {
    let preempt = record.preempt();
    let contention = preempt.clock.arms_on_contention();
    // Carriers' and abandoned threads' deliveries are not counted (their reserve is the
    // slot's they left; a runner's is read once it is known to hold one).
    let state = record.state.load(Ordering::Relaxed);
    if state == IN_TASK || state == super::record::IDLE {
        record
            .reserve()
            .counters
            .expiries
            .fetch_add(1, Ordering::Relaxed);
    }
    if state != IN_TASK {
        if state == CARRIED && record.contention_ticks() {
            // Handed off from outside (the monitor took a blocked runner's slot): a
            // carrier needs no watching.
            record.stop_cpu_ticks(TICKS_CONTENTION);
        }
        if contention {
            // The one-shot found the runner between tasks, or a carrier (an arming that
            // raced with its handoff is void: a carrier has no quantum; one looking again
            // for a point to wait for its turn at is served by the handler's entry,
            // `freeze.rs`, `await_turn`): the next contention arms it again. (A runner
            // whose CPU-time ticks watch it stays watched: they end when it sleeps.)
            record.armed.store(false, Ordering::SeqCst);
        }
        return;
    }
    let reserve = record.reserve();
    reserve.counters.ticks.fetch_add(1, Ordering::Relaxed);
    let now = async_safe::monotonic_ns();
    let start = record.start_ns.load(Ordering::Relaxed);
    let ran = now.saturating_sub(start);
    if contention {
        // `armed` first, then the queues: a spawner pushes, then reads `armed` (both
        // SeqCst), so either this sees its task or it sees the timer disarmed and arms it.
        record.bound_for.store(0, Ordering::Relaxed);
        record.armed.store(false, Ordering::SeqCst);
        let ticking = record.contention_ticks();
        if !record.in_closure() {
            // Runtime code around a task (its start, where it may wait for the monitor's
            // lock, or its end): handing off now would demote the thread before the
            // closure even runs, and the queues cannot be read from here (no closure, no
            // pool). Look again a quantum from now, or at the next tick.
            record.long_seen.store(false, Ordering::Relaxed);
            look_again(record, preempt, ticking, now);
            return;
        }
        let long_seen = record.long_seen.swap(false, Ordering::Relaxed);
        let waiting = record.work_waiting();
        let due = super::timer::TimerClock::contention_due(preempt.quantum_ns);
        if !waiting && (!long_seen || ran < due) {
            // Nobody waits (and no peer saw this task run long, or it has ended since):
            // no handoff, and no timer until someone waits again. (The ticks stop first,
            // then the queues are read again: a runner that queued a task and saw the
            // ticks still on, so armed nothing, is seen here.)
            if ticking {
                record.stop_cpu_ticks(TICKS_CONTENTION);
                if record.work_waiting() {
                    record.start_cpu_ticks(TICKS_CONTENTION);
                }
            }
            return;
        }
        if ran < due {
            // A newer task than the one the one-shot was armed for: a stream of tasks is
            // queued behind this runner, most of them too short to preempt. From now on
            // the thread's CPU-time ticks watch it (`timer.rs`): one expiry per kernel
            // tick it runs, riding that tick, instead of a one-shot's own interrupt per
            // quantum. They stop once one finds nothing queued, or the runner sleeps.
            // (A spawn that starts a backlog still arms the one-shot, for the quantum of
            // the task running then: `on_contention`.)
            if !ticking {
                record.start_cpu_ticks(TICKS_CONTENTION);
            }
            return;
        }
        // The quantum has ended with someone waiting (or a peer saw the task run long).
        // The task's total run goes to the pool's history when it ends (`history.rs`).
        if record.judged_cpu_ns.load(Ordering::Relaxed) == 0 {
            record.judged_ran_ns.store(ran, Ordering::Relaxed);
            record
                .judged_cpu_ns
                .store(async_safe::thread_cpu_ns().max(1), Ordering::Relaxed);
        }
        if preempt.history.keep(ran, preempt.quantum_ns) {
            // Most recent tasks that had run this long ended soon after: this one keeps
            // its core until the bound, where its one-shot looks again (the CPU-time
            // ticks, if they watch it, could come a kernel tick past the bound). Its end
            // disarms it (`Record::end_task`).
            arm_for_bound(record, preempt, start, now);
            return;
        }
        if preempt.history.past_bound(ran, preempt.quantum_ns)
            && record.judged_cpu_ns.swap(RECORDED, Ordering::Relaxed) != RECORDED
        {
            preempt.history.record(u64::MAX, preempt.quantum_ns);
        }
    } else if ran < preempt.quantum_ns {
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
    if !handoff(record, preempt, reserve, context) && contention {
        // No standby parked (one will poke this runner when it parks), or the slot has
        // its maximum of carriers: look again a quantum from now, or at the next tick.
        look_again(record, preempt, record.contention_ticks(), now);
    }
}

/// `Contention`, in the handler: the runner is to be looked at again, by its CPU-time
/// ticks if they watch it already, or else by its one-shot a quantum from `now`.
fn look_again(record: &Record, preempt: &Preempt, ticking: bool, now: u64) {
    if !ticking {
        arm_contention(record, preempt, now, now);
    }
}

/// `Contention`: arms the record's one-shot for the task that started at `start` (from
/// its own handler, or from whichever thread saw contention), unless it is armed already.
fn arm_contention(record: &Record, preempt: &Preempt, start: u64, now: u64) {
    arm_contention_for(record, preempt, start, now, 0);
}

/// [`arm_contention`], and if this thread arms it, the start time of the task it is
/// armed for the bound of (`bound_for`; 0: for a quantum), stored before the timer can
/// fire.
fn arm_contention_for(record: &Record, preempt: &Preempt, start: u64, now: u64, bound_for: u64) {
    if record
        .armed
        .compare_exchange(false, true, Ordering::SeqCst, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    record.bound_for.store(bound_for, Ordering::Relaxed);
    let at = super::timer::TimerClock::contention_deadline(start, preempt.quantum_ns, now);
    record.arm_precise_from_anywhere(at, 0);
    record
        .reserve()
        .counters
        .arms
        .fetch_add(1, Ordering::Relaxed);
}

/// Someone waits (`TimerClock::Contention`): arms the one-shot of the slot holder whose
/// task started first, for the end of its quantum: its quantum ends first. Then either it
/// is handed off and its slot's next runner takes a queued task, or its task had ended
/// and the runner took one already; that runner, if more is queued behind, arms the next
/// oldest (`Backlog::Many`), and looks at its peers' tasks past their quanta
/// (`hand_off_long`). One arming per backlog, not one per busy runner: most backlogs
/// clear before any quantum ends, and each arming costs a `timer_settime`, and another
/// to disarm it when the runner sleeps (with every busy runner armed, `cargo bench
/// --bench tail -- --fairness --stats` counted 3,200 armings at load 0.7 against 240
/// expiries).
///
/// `Backlog::One`: a task was just queued, and no sleeping runner was woken for it. If a
/// holder is between tasks (spinning), or its slot is changing hands, that runner will
/// take it, and nothing is armed. The oldest is armed even if its CPU-time ticks watch
/// it: the task running then gets its quantum's end.
///
/// `Backlog::Many`: a runner has just started a task with more queued behind it on its
/// own deque or in the injector, more than one free runner would take: the oldest busy
/// holder (this one, if it is alone) is armed, unless it is armed already or its
/// CPU-time ticks watch it.
///
/// Called on ordinary threads; async-signal-safe (atomics and `timer_settime`).
pub(crate) fn on_contention(preempt: &Preempt, backlog: Backlog) {
    let mut oldest: Option<&'static Record> = None;
    for reserve in preempt.reserves.iter() {
        match busy_holder(reserve, preempt) {
            None if backlog == Backlog::One => return,
            Some(record)
                if oldest.is_none_or(|o| {
                    record.start_ns.load(Ordering::Relaxed) < o.start_ns.load(Ordering::Relaxed)
                }) =>
            {
                oldest = Some(record);
            }
            _ => {}
        }
    }
    let Some(record) = oldest else {
        return;
    };
    // Its CPU-time ticks watch a task only while it runs: one that has outlived its
    // quantum by a kernel tick and is still here is blocked in the kernel (or starved),
    // and gets its one-shot (whose signal interrupts the wait).
    if record.armed.load(Ordering::SeqCst) {
        return;
    }
    let start = record.start_ns.load(Ordering::Relaxed);
    let now = async_safe::monotonic_ns();
    if backlog == Backlog::Many
        && record.contention_ticks()
        && now.saturating_sub(start) < preempt.quantum_ns.saturating_add(preempt.tick_ns)
    {
        return;
    }
    // A demoted thread (a carrier spawning) arms nothing: it may get no CPU for a long
    // while in the middle of an arming, and a runner that exits or freezes waits for
    // armings in flight before it deletes its timer. The runners arm each other as they
    // start tasks with more queued. (Asked only when there is something to arm: it is a
    // syscall.)
    if async_safe::demoted() {
        return;
    }
    // A task the history says will end before the bound (`history.rs`) would only be
    // kept at its quantum's end: its one-shot is armed for the bound instead, and most
    // likely disarmed by its end, with no expiry at all.
    if preempt.history.keep(
        now.saturating_sub(start).max(due_ran(preempt)),
        preempt.quantum_ns,
    ) {
        arm_for_bound(record, preempt, start, now);
        return;
    }
    arm_contention(record, preempt, start, now);
}

/// How long a task has run when its quantum's one-shot fires.
fn due_ran(preempt: &Preempt) -> u64 {
    super::timer::TimerClock::contention_due(preempt.quantum_ns)
}

/// `Contention`: arms the record's one-shot (unless it is armed already) for the end of
/// the time the task that started at `start` may keep its core while someone waits
/// (`history.rs`).
fn arm_for_bound(record: &Record, preempt: &Preempt, start: u64, now: u64) {
    let bound = preempt
        .history
        .bound_ns(preempt.quantum_ns)
        .saturating_sub(preempt.quantum_ns);
    arm_contention_for(record, preempt, start.saturating_add(bound), now, start);
}

/// The record of the thread holding `reserve`'s slot, if it is one of `preempt`'s pool
/// and running a task (a holder between tasks, or one whose slot is changing hands, is
/// not busy).
fn busy_holder(reserve: &Reserve, preempt: &Preempt) -> Option<&'static Record> {
    let record = RECORDS.get(reserve.holder()?)?;
    (std::ptr::eq(record.preempt.load(Ordering::Relaxed), preempt)
        && record.state.load(Ordering::SeqCst) == IN_TASK)
        .then_some(record)
}

/// A runner that starts a task (and has not looked for a quantum's half) looks at its
/// peers: a task that has run past its quantum on one is handed off now
/// (`TimerClock::Contention`), even if nothing is queued at that instant. Requests keep
/// arriving on a pool whose runners start tasks, and a task that has shown itself long
/// should run on the cores' idle time as a carrier, oldest first, not at the priority of
/// the runners and of the threads that submit the requests (an accept loop, a load
/// generator), which it would otherwise delay by up to a kernel slice each time they
/// wake. A pool where nothing else starts never looks. Called on a runner's thread, with
/// the start time of its own task just read.
pub(crate) fn hand_off_long(preempt: &Preempt, now: u64) {
    if now < preempt.next_long_look.load(Ordering::Relaxed) {
        return;
    }
    preempt.next_long_look.store(
        now.saturating_add(preempt.quantum_ns / 2),
        Ordering::Relaxed,
    );
    for reserve in preempt.reserves.iter() {
        // A closure running: a task that has returned (its join may already have resolved,
        // and the next task be starting here) is not long.
        let Some(record) = busy_holder(reserve, preempt).filter(|r| r.in_closure()) else {
            continue;
        };
        let ran = now.saturating_sub(record.start_ns.load(Ordering::Relaxed));
        // A task the history says is about to end is left to end (`history.rs`).
        if ran >= preempt.quantum_ns
            && !preempt.history.keep(ran, preempt.quantum_ns)
            && !record.long_seen.swap(true, Ordering::Relaxed)
        {
            // The handler looks now (a one-shot at a time already past fires at once).
            record.armed.store(true, Ordering::SeqCst);
            record.arm_precise_from_anywhere(now, 0);
            record
                .reserve()
                .counters
                .arms
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What [`on_contention`] was told about the queued work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backlog {
    /// One task was just queued.
    One,
    /// A runner's own deque still holds tasks as it starts one.
    Many,
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

/// Step 4, `sync/reserve.rs` steps 3–5. False if the slot could not be handed off (no
/// standby parked, or the slot has its maximum of carriers).
fn handoff(
    record: &Record,
    preempt: &Preempt,
    reserve: &Reserve,
    context: *mut libc::c_void,
) -> bool {
    if reserve.carriers() >= preempt.max_carriers {
        reserve.counters.at_cap.fetch_add(1, Ordering::Relaxed);
        return false;
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
            return false;
        }
    }
    reserve.unwant(index);
    finish_handoff(record, preempt, reserve, context, false)
}

/// The handoff of `record`'s slot to a standby, now, because its task is about to block
/// (`freeze.rs`, `hand_off_before_blocking`, which says when). On the record's own thread.
pub(super) fn hand_off_now(record: &Record) -> bool {
    if !record.in_closure()
        || record.state.load(Ordering::Relaxed) != IN_TASK
        || record.depth.load(Ordering::SeqCst) > 0
    {
        return false;
    }
    let preempt = record.preempt();
    let reserve = record.reserve();
    if reserve.carriers() >= preempt.max_carriers || !reserve.take_standby() {
        return false;
    }
    let handed = finish_handoff(record, preempt, reserve, std::ptr::null_mut(), true);
    if handed {
        reserve
            .counters
            .blocking_handoffs
            .fetch_add(1, Ordering::Relaxed);
    }
    handed
}

/// The rest of a handoff, once a standby is taken. `blocking`: the task is about to block
/// (`hand_off_now`); it takes its place in the carriers' line, but is not sent to wait for
/// its turn in the handler meanwhile: a delivery inside its blocking call would hold it
/// there, in line, after what it waited for had come.
fn finish_handoff(
    record: &Record,
    preempt: &Preempt,
    reserve: &Reserve,
    context: *mut libc::c_void,
    blocking: bool,
) -> bool {
    if record
        .state
        .compare_exchange(IN_TASK, CARRIED, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        reserve.give_back();
        return true;
    }
    compiler_fence(Ordering::SeqCst);
    // A carrier needs no quantum timer: its task is already demoted.
    if record.armed.swap(false, Ordering::Relaxed) {
        if let Some(timer) = record.precise() {
            async_safe::set_timer(timer, 0, 0, false);
        }
    }
    reserve.counters.handoffs.fetch_add(1, Ordering::Relaxed);
    // A carrier needs no watching either (a kill's ticks go on).
    if record.contention_ticks() {
        record.stop_cpu_ticks(TICKS_CONTENTION);
    }
    // A place in the carriers' line, taken before the slot goes: once demoted this thread
    // may not run again for a while, and the carriers handed off meanwhile are younger.
    record.ticket.store(preempt.line.take(), Ordering::Relaxed);
    record.in_line.store(true, Ordering::SeqCst);
    if !record.fate_undecided() {
        // The monitor abandoned this thread between the state change above and here: its
        // `leave_line` found no ticket yet, so leave now (its task is resolved already).
        record.leave_line();
    }
    record
        .turn_looks
        .store(super::record::TURN_LOOKS, Ordering::Relaxed);
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
    // The handler's entry then waits for this carrier's turn (`freeze.rs`, `await_turn`);
    // from the end of a runtime section (no handler context), at its next expiry.
    if context.is_null() && !blocking {
        record.arm_precise_from_anywhere(async_safe::monotonic_ns() + 1_000_000, 0);
    }
    true
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
            on_tick(self, std::ptr::null_mut());
        }
    }
}
