//! Budgets and kills: the registry the monitor enforces them from, and the counters.
//!
//! # Protocol
//!
//! 1. A task with a budget registers here when it starts (`task/mod.rs`, `Task::run_in`), with
//!    its thread and its CPU clock at start; a running task whose handle calls `cancel`
//!    registers then. A task cancelled while queued never starts (its runner sees the flag).
//! 2. The monitor ([`Kills::enforce`]) wakes when the earliest watch is due: a wall
//!    deadline, the moment a CPU budget would run out if the task ran flat out (it reads
//!    the thread's CPU clock and sleeps for what is left, so it never polls), a grace
//!    period's end, or the bound of step 7.
//! 3. A budget that has run out sets the task's cancel flag (`Control::kill`; the first
//!    reason wins) with the time it is set: the grace period counts from then, never from
//!    the deadline. The task's next `checkpoint` unwinds.
//! 4. Grace over, task not done: ask the thread to freeze (`handler/freeze.rs` step 1),
//!    and again every [`FREEZE_RETRY`] while the gate defers. The grace period is
//!    wall-clock time, but a running thread must also have had 200 µs of CPU time since
//!    the cancel (or its whole grace period, if shorter), and a task that calls
//!    `checkpoint` must have passed one since: a demoted carrier on a busy core may not
//!    have run at all, and deserves its chance to see the cancel. A monitor period before
//!    the pool's maximum deferral ends, a panicking thread may be frozen in its
//!    destructors (never one unwinding from its cancel).
//! 5. At most `max_frozen` threads are frozen per pool: past it, a kill is refused (counted
//!    in `Stats::kills_refused`), and the task runs on with its cancel flag set until it
//!    returns or step 7 comes. Each frozen thread keeps its stack reserved (and what its
//!    task allocated) until the process exits; its record goes back to the table.
//! 6. A watch whose task is done is dropped.
//! 7. **Abandon** ([`Kills::abandon`]): grace + maximum deferral + [`ABANDON_SLACK`] after
//!    the cancel, or as soon as the thread is seen twice with the pool's signal blocked
//!    (`/proc`: its handler can never run), a kill that is not done is abandoned: the
//!    task's outcome is decided and published (`Abandoned`), the thread's fate decided,
//!    the thread counted out of the pool, its slot taken from outside
//!    (`Record::begin_outside_handoff`), and only then is the thread let go if its closure
//!    returns meanwhile (`Record::await_fate`). So every budgeted join resolves within
//!    budget + grace + maximum deferral + one monitor period, whatever the closure does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::budget::KillReason;
use crate::handler::{Holder, KillLedger, Outside, Record, FATE_ABANDONED, RECORDS};
use crate::sys::{self, async_safe};
use crate::task::{drop_quietly, Supervisor, Task};

/// The "one monitor period" of rule 1: how late past grace plus the maximum deferral an
/// abandon may come.
const ABANDON_SLACK: Duration = Duration::from_millis(20);

/// A mutex for the monitor's state: std's (a futex word of its own), not parking_lot's,
/// whose contended path goes through one parking table for the whole process, shared
/// with task code that may be frozen inside it. Poisoning is ignored: every section
/// leaves its state consistent before anything in it can panic.
pub(crate) struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    pub(crate) const fn new(value: T) -> Mutex<T> {
        Mutex(std::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How often the monitor asks again while a freeze is deferred.
pub(crate) const FREEZE_RETRY: Duration = Duration::from_micros(250);

/// How long the monitor waits before asking again when the thread has not looked at its
/// last request yet (the request may have been lost to a race with the thread's record).
const UNSEEN_RETRY: Duration = Duration::from_millis(20);

/// Registries of pools that are gone, for the next pool built with the same settings.
/// A registry is never freed (a task's handle keeps a pointer to it and may outlive the
/// pool, see [`Kills::take`]), so a process that builds pools over and over reuses them
/// instead of leaking one each.
static SPARE: std::sync::Mutex<Vec<&'static Kills>> = std::sync::Mutex::new(Vec::new());

/// A pool's budgets and kills. Never freed: a task's handle keeps a pointer to it, and may
/// outlive the pool; reused by a later pool once no thread of this one can reach it.
pub(crate) struct Kills {
    /// The part the signal handler reaches.
    pub(crate) ledger: KillLedger,
    watches: Mutex<Vec<Watch>>,
    /// When the monitor next wakes for the watches (`CLOCK_MONOTONIC` ns).
    next_due: AtomicU64,
    signal: i32,
    /// Threads abandoned and still running.
    lost: Mutex<Vec<Lost>>,
    /// Runners (not abandoned) whose slot the monitor is taking from outside because
    /// they blocked the pool's signal or a syscall: record indices.
    outside: Mutex<Vec<usize>>,
    /// Another handler has replaced the pool's and does not chain to it.
    handler_replaced: AtomicBool,
    /// [`check_handler`](Kills::check_handler)'s probe in flight: the handler's run count
    /// when it was sent.
    probe: Mutex<Option<u64>>,
}

/// An abandoned thread that has not exited yet.
struct Lost {
    record: usize,
    tid: i32,
    pthread: usize,
}

struct Watch {
    task: Task,
    /// When the freeze was first asked for, and last asked for.
    first_ask: Option<u64>,
    last_ask: u64,
    /// The thread's `kill_acks` when it was last asked.
    acks: u32,
    refused: bool,
}

impl Kills {
    /// A registry for a new pool: a spare one with these settings, or a new one.
    pub(crate) fn take(signal: i32, max_frozen: usize, max_deferral: Duration) -> &'static Kills {
        let max_deferral_ns = nanos(max_deferral);
        let mut spare = SPARE.lock().unwrap_or_else(|e| e.into_inner());
        let reusable = spare.iter().position(|k| {
            k.signal == signal
                && k.ledger.max_frozen == max_frozen
                && k.ledger.max_deferral_ns == max_deferral_ns
        });
        if let Some(i) = reusable {
            return spare.swap_remove(i);
        }
        drop(spare);
        Box::leak(Box::new(Kills {
            ledger: KillLedger::new(max_frozen, max_deferral_ns),
            watches: Mutex::new(Vec::new()),
            next_due: AtomicU64::new(u64::MAX),
            signal,
            lost: Mutex::new(Vec::new()),
            outside: Mutex::new(Vec::new()),
            handler_replaced: AtomicBool::new(false),
            probe: Mutex::new(None),
        }))
    }

    /// The pool's shared state is gone: no thread of the pool is left, running, frozen or
    /// abandoned (each holds that state), and nothing but a stale task handle can reach
    /// the registry (`JoinHandle::cancel` of a finished task, which only ever adds a
    /// watch of a done task, pruned). Cleared, and kept for the next pool.
    pub(crate) fn recycle(&'static self) {
        self.watches.lock().clear();
        self.lost.lock().clear();
        self.outside.lock().clear();
        *self.probe.lock() = None;
        self.next_due.store(u64::MAX, Ordering::Relaxed);
        self.ledger.reset();
        self.handler_replaced.store(false, Ordering::Relaxed);
        SPARE.lock().unwrap_or_else(|e| e.into_inner()).push(self);
    }

    /// Step 1: watch `task` (once) and wake the monitor if it is due before its next wake.
    ///
    /// A task about to start has its wall clock started here, under the registry's lock:
    /// a runner that waited for the lock (the monitor holds it while it works through
    /// many kills) must not find its task's deadline passed before the closure ran (the
    /// kill storm saw a 50 ms deadline expire so, and the task cancelled unstarted).
    pub(crate) fn watch(&self, task: Task, starting: bool) {
        let control = task.control();
        let budget = control.budget;
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
            let now = async_safe::monotonic_ns();
            let mut due = u64::MAX;
            if let Some(wall) = budget.wall_limit() {
                if starting {
                    control.started_ns.store(now, Ordering::Relaxed);
                }
                due = due.min(control.started_ns().saturating_add(nanos(wall)));
            }
            if let Some(cpu) = budget.cpu_limit() {
                due = due.min(now.saturating_add(nanos(cpu)));
            }
            if let Some((_, at)) = control.killed() {
                due = due.min(at.saturating_add(nanos(budget.grace_period())));
            }
            watches.push(Watch {
                task,
                first_ask: None,
                last_ask: 0,
                acks: 0,
                refused: false,
            });
            // Decided under the lock `enforce` sets `next_due` under: either it has seen
            // this watch, or this sees its `next_due` and rings.
            if due >= self.next_due.load(Ordering::Relaxed) {
                return;
            }
            self.next_due.store(due, Ordering::Relaxed);
        }
        self.ledger.ring();
    }

    /// Steps 2–7, by the monitor. `count_out` counts an abandoned thread out of the
    /// pool's live threads. Returns when it should look again (ns, `u64::MAX`: nothing
    /// to watch).
    pub(crate) fn enforce(&self, count_out: &dyn Fn()) -> u64 {
        let now = async_safe::monotonic_ns();
        let mut due = u64::MAX;
        if self.finish_outside_handoffs() {
            due = now + nanos(FREEZE_RETRY);
        }
        let done = {
            let mut watches = self.watches.lock();
            let done = extract_done(&mut watches);
            for watch in &done {
                if let Some(thread) = watch.task.control().thread() {
                    RECORDS[thread].forget_kill(watch.task.control());
                }
            }
            for watch in watches.iter_mut() {
                due = due.min(self.check(watch, now, count_out));
            }
            self.next_due.store(due, Ordering::Relaxed);
            done
        };
        drop_quietly(done);
        due
    }

    /// Step 7: abandons the watched task (it has not ended, and no safe point to freeze
    /// it came in time). In order:
    ///
    /// 0. Only a task whose closure has started (one resolved before never waits for the
    ///    monitor, see 5).
    /// 1. Decide the task's outcome (`task/mod.rs` step 2), count it, publish `Abandoned`:
    ///    its join resolves now. Lost the decision: the task ended first, nothing to do.
    /// 2. Decide the thread's fate (with its id, so a record another thread has claimed
    ///    since is never touched), and list it as lost: lost to a freeze that is under
    ///    way on the thread, nothing more to do (it freezes, and counts itself).
    /// 3. Count the thread out of the pool's live threads (shutdown no longer waits for
    ///    it) and forget the freeze asked of it.
    /// 4. Take its slot from outside (`Record::begin_outside_handoff`; finished by
    ///    [`finish_outside_handoffs`](Kills::finish_outside_handoffs), which demotes the
    ///    thread to `SCHED_IDLE` first). A carrier already is only counted out of its
    ///    slot's carriers.
    /// 5. Mark the thread as fully abandoned: if its closure returned meanwhile, it has
    ///    been waiting for this (`Record::await_fate`), then drops its value and retires.
    ///    If its handler runs again, it stops the thread for good at the first point the
    ///    gate accepts (`handler/freeze.rs`, `settle`).
    fn abandon(&self, watch: &Watch, thread: usize, count_out: &dyn Fn()) {
        let control = watch.task.control();
        let record = &RECORDS[thread];
        let Some(tid) = control.tid() else {
            return;
        };
        // Only a closure that is running: a task resolved before its closure starts (a
        // cancel while queued) never waits for the monitor, and must not be raced.
        if !control.entered() {
            return;
        }
        let cpu_now = sys::thread_cpu_ns_of(tid);
        let cpu_ns = match (cpu_now, control.cpu_start_ns()) {
            (Some(now), Some(start)) => Some(now.saturating_sub(start)),
            _ => None,
        };
        if !watch.task.decide() {
            return;
        }
        let reason = control.killed().map_or(KillReason::Cancelled, |(r, _)| r);
        self.ledger.counters.by_reason[reason.index()].fetch_add(1, Ordering::Relaxed);
        watch.task.publish_abandoned(cpu_ns);
        // From here the thread, if its closure returns, waits (`Record::await_fate`)
        // until this is done: nothing below races with it moving on.
        {
            let mut lost = self.lost.lock();
            if !record.decide_fate_of(tid, FATE_ABANDONED) {
                // A freeze under way on the thread: it stops there, and counts itself.
                return;
            }
            record
                .abandoned_cpu_at
                .store(cpu_now.unwrap_or(0), Ordering::Relaxed);
            lost.push(Lost {
                record: thread,
                tid,
                pthread: record.pthread.load(Ordering::Relaxed),
            });
        }
        count_out();
        record.forget_kill(control);
        match record.begin_outside_handoff() {
            Holder::Slot => {
                self.finish_outside_handoffs();
            }
            Holder::Carrier => {
                let mut outside = self.outside.lock();
                if let Some(i) = outside.iter().position(|&index| index == thread) {
                    // Its slot is being taken from outside already (it blocked the
                    // signal): the lost list finishes that, and counts it out of the
                    // carriers once it is granted.
                    outside.swap_remove(i);
                } else {
                    // Demoted by its own handoff already; outside the pool, not a
                    // carrier.
                    record.slot_reserve().carrier_done();
                }
            }
            Holder::Neither => {}
        }
        // Both before `abandoned_fully`, which lets the thread move on (and its record be
        // claimed by another thread).
        record.leave_line();
        record.tick_abandoned();
        record.abandoned_fully();
    }

    /// Step 7.4 for every abandoned thread whose slot is not with a standby yet; true if
    /// one is still pending.
    fn finish_outside_handoffs(&self) -> bool {
        let mut pending = false;
        // A runner that blocked the pool's signal becomes a carrier like any other.
        self.outside.lock().retain(|&index| {
            let record = &RECORDS[index];
            match record.continue_outside_handoff() {
                Some(Outside::Pending) => {
                    pending = true;
                    true
                }
                Some(Outside::Done) => false,
                None => false,
            }
        });
        let mut lost = self.lost.lock();
        // Threads that have exited (or whose record another thread has since claimed).
        lost.retain(|entry| !exited(&RECORDS[entry.record], entry.tid));
        for entry in lost.iter() {
            let record = &RECORDS[entry.record];
            match record.continue_outside_handoff() {
                Some(Outside::Pending) => pending = true,
                Some(Outside::Done) => {
                    // Outside the pool: not a carrier of its slot any more.
                    record.slot_reserve().carrier_done();
                }
                None => {}
            }
        }
        pending
    }

    /// The monitor's sweep found a runner that has run its task for a while with the
    /// pool's signal blocked (the handler can never hand it off), or blocked in a system
    /// call (no CPU time, so no tick): takes its slot from outside; the thread carries
    /// its task on, demoted, as if handed off. (A budget's kill still applies.)
    pub(crate) fn hand_off_blocked(&self, index: usize, signal_blocked: bool) {
        let record = &RECORDS[index];
        if record.begin_outside_handoff() == Holder::Slot {
            if signal_blocked {
                self.ledger
                    .counters
                    .signal_blocked
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.outside.lock().push(index);
            self.finish_outside_handoffs();
        }
    }

    /// Looks whether another handler has replaced the pool's without passing its
    /// deliveries on (by the monitor, every 100 ms). The installed action is compared
    /// with ours; if it differs, one nudge is sent to a thread of the pool and the next
    /// look checks that it reached our handler (a handler that chains, as signal-hook's
    /// does, passes it on; its own callbacks see it as they see every tick of ours).
    pub(crate) fn check_handler(&self) {
        let ours = crate::handler::on_signal as *const () as usize;
        let installed = sys::current_action(self.signal).map_or(ours, |a| a.sa_sigaction);
        let mut probe = self.probe.lock();
        if installed == ours {
            self.handler_replaced.store(false, Ordering::Relaxed);
            *probe = None;
            return;
        }
        let runs = crate::handler::HANDLER_RUNS.load(Ordering::Relaxed);
        if let Some(before) = probe.take() {
            self.handler_replaced
                .store(runs == before, Ordering::Relaxed);
            return;
        }
        if let Some(record) = RECORDS.iter().find(|r| r.serves(&self.ledger)) {
            *probe = Some(runs);
            record.nudge(self.signal);
        }
    }

    /// True while budgets cannot be enforced (see [`check_handler`](Kills::check_handler)).
    pub(crate) fn handler_replaced(&self) -> bool {
        self.handler_replaced.load(Ordering::Relaxed)
    }

    fn check(&self, watch: &mut Watch, now: u64, count_out: &dyn Fn()) -> u64 {
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
                    // The grace period counts from when the flag is set and visible (now),
                    // never from the deadline: a late look must not eat the grace.
                    control.kill(KillReason::WallDeadline, now);
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
        // A carrier waiting for its turn in the handler must run to see its cancel.
        record.wake_turn();
        let tid = record.tid.load(Ordering::Relaxed);
        control.note_cpu_at_kill(|| sys::thread_cpu_ns_of(tid));
        let freeze_at = at.saturating_add(nanos(budget.grace_period()));
        if now < freeze_at {
            return due.min(freeze_at);
        }
        // Rule 1: whatever the closure does, its join resolves by here. A freeze still
        // deferred (a lock held, inside a library, a no-freeze section, a redirect that
        // never returns, a refused kill, a thread that never sees the request) ends in
        // an abandon.
        let abandon_at = freeze_at
            .saturating_add(self.ledger.max_deferral_ns)
            .saturating_add(nanos(ABANDON_SLACK));
        // (Not a thread a freeze has claimed already: that freeze is under way on it, and
        // only waits for CPU time to publish.)
        if now >= abandon_at && !record.is_freezing() {
            self.abandon(watch, thread, count_out);
            // Resolved, or not yet abandonable (its closure not entered yet): look again.
            return due.min(now + nanos(FREEZE_RETRY));
        }
        // A thread that does not look at its requests may have blocked the pool's signal:
        // then its handler never runs, and no freeze can ever happen. The standby maker
        // looks in `/proc` every 20 ms (`runtime/monitor.rs`; not here: `/proc` reads wait for the
        // process's memory-map lock); two sightings in a row, with the latest request not
        // looked at, and a thread caught once between the kernel setting up its signal
        // frame and the handler's first store is not taken for one that blocked it.
        if watch.first_ask.is_some()
            && record.kill_acks.load(Ordering::Relaxed) == watch.acks
            && record.signal_blocked_seen() >= 2
            && record.redirect_slot.load(Ordering::Relaxed) == 0
            && !record.is_freezing()
        {
            self.ledger
                .counters
                .signal_blocked
                .fetch_add(1, Ordering::Relaxed);
            self.abandon(watch, thread, count_out);
            return due.min(now + nanos(FREEZE_RETRY));
        }
        let due = due.min(abandon_at);
        if watch.refused || record.redirect_slot.load(Ordering::Relaxed) != 0 {
            // Refused, or frozen the moment it returns from a redirected frame.
            return due.min(now + nanos(FREEZE_RETRY));
        }
        // Places taken, by freezes done and by those on their way (redirects).
        if self.ledger.reserved.load(Ordering::Relaxed) >= self.ledger.max_frozen {
            watch.refused = true;
            self.ledger.refused();
            return due;
        }
        // Ask again every FREEZE_RETRY once the last request was seen; a thread that has
        // not seen it yet (demoted, waiting for CPU) gets no pile of new ones.
        let seen =
            watch.first_ask.is_some() && record.kill_acks.load(Ordering::Relaxed) != watch.acks;
        // Rule 1's bound counts in wall-clock time from the first request: past the
        // maximum deferral, a panicking thread still unwinding may be frozen in its
        // destructors (the handler reads `kill_force`), before the abandon comes; it is
        // asked again at once, and often, whether it looked at the last request or not.
        // (Forced a little before the deferral ends, so that the freeze has the monitor's
        // period on either side of it to land before the abandon.)
        let force_after = self
            .ledger
            .max_deferral_ns
            .saturating_sub(nanos(ABANDON_SLACK));
        let forced = watch
            .first_ask
            .is_some_and(|first| now.saturating_sub(first) >= force_after);
        let newly_forced = forced && !record.kill_force.swap(true, Ordering::Relaxed);
        let wait = if seen || watch.first_ask.is_none() || forced {
            FREEZE_RETRY
        } else {
            UNSEEN_RETRY
        };
        if !newly_forced && now.saturating_sub(watch.last_ask) < nanos(wait) {
            return due.min(watch.last_ask + nanos(wait));
        }
        if watch.first_ask.is_none() {
            record.kill_force.store(false, Ordering::Relaxed);
            record.kill_force_cpu.store(u64::MAX, Ordering::Relaxed);
            watch.first_ask = Some(now);
        }
        record.kill_target.store(
            control as *const crate::handler::Control as *mut crate::handler::Control,
            Ordering::SeqCst,
        );
        if watch.task.is_done() {
            record.forget_kill(control);
            return due;
        }
        watch.last_ask = now;
        watch.acks = record.kill_acks.load(Ordering::Relaxed);
        record.nudge(self.signal);
        due.min(now + nanos(FREEZE_RETRY))
    }

    /// The monitor (or its standby maker) caught a panic of its own: counted, and
    /// reported on stderr the first time in the process.
    pub(crate) fn monitor_panicked(&self, payload: &(dyn std::any::Any + Send)) {
        self.ledger
            .counters
            .monitor_panics
            .fetch_add(1, Ordering::Relaxed);
        static REPORTED: AtomicBool = AtomicBool::new(false);
        if !REPORTED.swap(true, Ordering::Relaxed) {
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("a non-string payload");
            // Not `eprintln!`: a frozen task may hold stderr's lock for good.
            sys::write_stderr_raw(&[
                "microsched: the pool's monitor caught a panic and goes on: ",
                message,
                "\n",
            ]);
        }
    }

    /// True if `pthread` is a frozen or abandoned thread of this pool (joining it may
    /// never return).
    pub(crate) fn is_lost_thread(&self, pthread: usize) -> bool {
        self.ledger
            .frozen_threads
            .iter()
            .any(|t| t.load(Ordering::Acquire) == pthread)
            || self.lost.lock().iter().any(|l| l.pthread == pthread)
    }

    pub(crate) fn snapshot(&self) -> KillSnapshot {
        let c = &self.ledger.counters;
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Copied out: no syscall under the lock the monitor takes on every pass. Threads
        // that have exited are counted in `abandoned_cpu_exited` already.
        let running: Vec<(i32, u64)> = self
            .lost
            .lock()
            .iter()
            .filter(|l| !exited(&RECORDS[l.record], l.tid))
            .map(|l| {
                (
                    l.tid,
                    RECORDS[l.record].abandoned_cpu_at.load(Ordering::Relaxed),
                )
            })
            .collect();
        KillSnapshot {
            by_reason: c.by_reason.each_ref().map(read),
            deferred: read(&c.deferred),
            deferred_library: read(&c.deferred_library),
            deferred_panicking: read(&c.deferred_panicking),
            redirected: read(&c.redirected),
            refused: read(&c.refused),
            frozen_threads: self.ledger.frozen_count.load(Ordering::Relaxed) as u64,
            frozen_stack_bytes: read(&c.frozen_stack_bytes),
            abandoned_threads: running.len() as u64,
            abandoned_cpu_ns: read(&c.abandoned_cpu_exited)
                + running
                    .iter()
                    .filter_map(|&(tid, at)| {
                        sys::thread_cpu_ns_of(tid).map(|t| t.saturating_sub(at))
                    })
                    .sum::<u64>(),
            signal_blocked: read(&c.signal_blocked),
            handler_replaced: self.handler_replaced(),
            monitor_panics: read(&c.monitor_panics),
        }
    }
}

/// Kill counters as `Pool::stats` reports them.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct KillSnapshot {
    /// By reason: `KillReason::code() - 1`.
    pub(crate) by_reason: [u64; KillReason::COUNT],
    pub(crate) abandoned_threads: u64,
    pub(crate) abandoned_cpu_ns: u64,
    pub(crate) signal_blocked: u64,
    pub(crate) handler_replaced: bool,
    pub(crate) monitor_panics: u64,
    pub(crate) deferred: u64,
    pub(crate) deferred_library: u64,
    pub(crate) deferred_panicking: u64,
    pub(crate) redirected: u64,
    pub(crate) refused: u64,
    pub(crate) frozen_threads: u64,
    pub(crate) frozen_stack_bytes: u64,
}

/// True once abandoned thread `tid`, of `record`, has exited (its CPU time is counted).
fn exited(record: &Record, tid: i32) -> bool {
    record.abandoned_exited.load(Ordering::SeqCst) || record.tid.load(Ordering::Relaxed) != tid
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

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

impl Supervisor for Kills {
    fn watch(&self, task: Task) {
        Kills::watch(self, task, false);
    }

    fn watch_start(&self, task: Task) {
        Kills::watch(self, task, true);
    }

    fn cancelled(&self, reason: KillReason) {
        self.ledger.cancelled(reason);
    }
}
