//! Pool threads as the handler sees them: one [`Record`] per thread in a static table
//! ([`RECORDS`]), the pool's preemption settings it points at ([`Preempt`]), and the task
//! whose closure runs on it ([`Running`]), with the traits through which a freeze reaches
//! that task and its pool. Every field is an atomic: the handler reads them on the
//! record's own thread, and ordinary threads (the runner, the monitor) write them.

use std::sync::atomic::{
    compiler_fence, AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
    Ordering,
};

use super::control::Control;
use super::history::RunHistory;
use super::ledger::KillLedger;
use super::timer::TimerClock;
use crate::budget::KillReason;
use crate::counters::SlotCounters;
use crate::sync::loom::Futex;
use crate::sync::reserve::Reserve;
use crate::sys::async_safe::{self, TimerId};

/// How many pool threads a process may have at once, over all its pools.
pub(crate) const MAX_THREADS: usize = 4096;

/// A pool's preemption settings and the state its handler uses. Lives in the pool's
/// shared state; records point at it while their thread holds a reference to the pool.
pub(crate) struct Preempt {
    pub(crate) signal: i32,
    pub(crate) clock: TimerClock,
    pub(crate) quantum_ns: u64,
    pub(crate) tick_ns: u64,
    pub(crate) max_carriers: u32,
    /// Parked standbys to keep per slot.
    pub(crate) standbys: u32,
    /// Every core of the pool, when its slots are pinned: a carrier may run on any of
    /// them (it only takes idle time), so long tasks handed off on one slot do not pile
    /// up on that slot's core while another core has nothing to do.
    pub(crate) carrier_cpus: Option<libc::cpu_set_t>,
    // Built in ordinary context: with the pool; the handler reads its slots' reserves.
    #[allow(
        clippy::disallowed_types,
        clippy::disallowed_macros,
        clippy::disallowed_methods
    )]
    pub(crate) reserves: Box<[Reserve]>,
    /// Budgets, cancels and freezes; leaked, so task handles may reach it for good.
    pub(crate) ledger: &'static KillLedger,
    /// The order in which carriers run (`tick.rs`, `wait_turn`).
    pub(crate) line: CarrierLine,
    /// `CLOCK_MONOTONIC` ns before which no runner looks for long tasks on its peers
    /// again (`tick.rs`, `hand_off_long`).
    pub(crate) next_long_look: AtomicU64,
    /// How long the tasks that outlived their quantum ran in the end (`history.rs`).
    pub(crate) history: RunHistory,
}

/// How many times a carrier whose turn has not come looks for a point where it may wait
/// for it (the gate refused: it was in a library, holding a lock, ...), a millisecond
/// apart, before it runs beside the older ones.
pub(super) const TURN_LOOKS: u32 = 8;

/// Carriers run oldest first. Each carrier the handler hands off takes a ticket; a ticket
/// below `limit` may run, and `limit` starts at the number of slots plus one (as many
/// carriers as cores run at once, on the cores' idle time, and one more, so that a core
/// whose runner sleeps has a carrier to run while another is stuck behind a busy runner:
/// with exactly one per core, `cargo bench --bench preempt` lost 12.7 % of its
/// heavy-tailed batch's throughput to idle cores, with one more 5.6 %, as without a line)
/// and moves up by one as each carrier with a ticket leaves the line (its task ended, froze, or was abandoned). A carrier whose turn
/// has not come waits in the handler, where the freeze gate would accept a freeze, so it
/// holds no lock of the process while it waits (`tick.rs`, `wait_turn`). Sharing the
/// idle time as equals instead (the kernel's way among `SCHED_IDLE` threads) makes equal
/// long tasks all finish late together, where oldest first finishes most of them early.
pub(crate) struct CarrierLine {
    next: AtomicU32,
    limit: AtomicU32,
    /// Waiting carriers sleep on the word of their ticket (`ticket % WORDS`), so each
    /// step of the line wakes the one whose turn it is, not every waiting carrier: with
    /// one word for all, each step woke dozens of `SCHED_IDLE` threads that then took CPU
    /// time from the carriers running.
    words: [Futex; LINE_WORDS],
}

/// `Record::judged_cpu_ns` of a task the history has counted already.
pub(super) const RECORDED: u64 = u64::MAX;

/// How many futex words a [`CarrierLine`] spreads its waiters over.
const LINE_WORDS: usize = 64;

impl CarrierLine {
    /// The line of a pool of `slots` slots.
    pub(crate) fn new(slots: usize) -> CarrierLine {
        CarrierLine {
            next: AtomicU32::new(0),
            limit: AtomicU32::new(slots.saturating_add(1).min(u32::MAX as usize) as u32),
            words: std::array::from_fn(|_| Futex::new(0)),
        }
    }

    /// A ticket for a new carrier.
    pub(super) fn take(&self) -> u32 {
        self.next.fetch_add(1, Ordering::SeqCst)
    }

    /// The line's limit now (for [`may_run`](CarrierLine::may_run)).
    pub(super) fn limit(&self) -> u32 {
        self.limit.load(Ordering::SeqCst)
    }

    fn word(&self, ticket: u32) -> &Futex {
        &self.words[ticket as usize % LINE_WORDS]
    }

    /// The value of `ticket`'s word, read before the limit and passed to
    /// [`wait`](CarrierLine::wait): a step of the line after the read changes it.
    pub(super) fn seen(&self, ticket: u32) -> u32 {
        self.word(ticket).load(Ordering::SeqCst)
    }

    /// Whether `ticket` may run under `limit` (wrapping: tickets are only compared
    /// with a limit at most 2^31 apart).
    pub(super) fn may_run(ticket: u32, limit: u32) -> bool {
        (ticket.wrapping_sub(limit) as i32) < 0
    }

    /// Waits until `ticket`'s word moves from `seen`, or `timeout_ns` passes.
    pub(super) fn wait(&self, ticket: u32, seen: u32, timeout_ns: u64) {
        self.word(ticket)
            .wait(seen, Some(std::time::Duration::from_nanos(timeout_ns)));
    }

    /// A carrier with a ticket has left the line: the next one may run (its word moves,
    /// and its sleepers wake).
    fn advance(&self) {
        let turn = self.limit.fetch_add(1, Ordering::SeqCst);
        let word = self.word(turn);
        word.fetch_add(1, Ordering::SeqCst);
        word.wake_all();
    }

    /// Wakes every waiting carrier to look at its kill state.
    fn wake(&self) {
        for word in &self.words {
            word.fetch_add(1, Ordering::SeqCst);
            word.wake_all();
        }
    }
}

impl Preempt {
    /// Wakes the monitor (it replenishes standbys, and enforces budgets). Async-signal-safe.
    pub(crate) fn ring(&self) {
        self.ledger.ring();
    }

    pub(crate) fn bell(&self) -> &Futex {
        &self.ledger.bell
    }
}

/// What a freeze needs of a task whose closure it stops (the task layer implements it).
pub(crate) trait FrozenTask: Sync {
    /// The task's kill state.
    fn control(&self) -> &Control;
    /// The task word's decision (its protocol step 2): true for exactly one caller, who
    /// must then publish. Async-signal-safe.
    #[must_use = "the winner of the decision must publish the outcome"]
    fn decide(&self) -> bool;
    /// True once the task's outcome is published (by anyone).
    fn is_done(&self) -> bool;
    /// Publishes a freeze, after winning [`decide`](FrozenTask::decide): counts it in
    /// `counters` and resolves the handle with `Killed { how: Frozen }`, the reason being
    /// the task's own kill reason or `reason_if_none`. Called on the frozen thread, from
    /// the handler or the trampoline, while the closure stays on the stack for good.
    /// Async-signal-safe.
    fn publish_frozen(&self, counters: &SlotCounters, reason_if_none: KillReason);
}

/// What a freeze needs of the pool whose thread it stops (the runtime implements it).
pub(crate) trait FrozenPool: Sync {
    /// The thread will never run again: shutdown stops waiting for it, and sleepers look
    /// again. Async-signal-safe (atomics and futex wakes).
    fn thread_frozen(&self);
    /// Whether a task is queued that no runner has taken yet. Async-signal-safe (atomic
    /// loads of the queues' ends).
    fn work_waiting(&self) -> bool;
}

/// The task whose closure is running on a thread, as the freeze sees it: a struct on the
/// stack of `task/mod.rs`'s `run_claimed`, alive (and, once frozen, forever) while the closure
/// runs. Its address is also the stack boundary of the closure's frames.
pub(crate) struct Running<'a> {
    pub(crate) task: &'a dyn FrozenTask,
    pub(crate) counters: &'a SlotCounters,
    /// The pool the thread serves (none for a task run outside a pool thread).
    pub(crate) pool: Option<&'a dyn FrozenPool>,
    /// The task this one runs inside (an inline join), or null. A freeze stops them all.
    pub(crate) outer: *const Running<'static>,
    /// The thread's no-freeze counter when the closure started: the runtime code around
    /// an inline join holds it up by one, and the joined closure may still be frozen.
    pub(crate) no_freeze_base: u32,
    /// An address in the frame that calls the closure (`task/mod.rs`, `call_user`), while the
    /// closure is on the stack; 0 before and after. Frames below it are the task's; the
    /// ones above are the runtime's, around the closure.
    pub(crate) closure_frame: AtomicUsize,
}

impl Running<'_> {
    /// [`closure_frame`](Running::closure_frame), while the closure runs.
    pub(crate) fn closure_frame(&self) -> Option<usize> {
        match self.closure_frame.load(Ordering::Relaxed) {
            0 => None,
            frame => Some(frame),
        }
    }

    /// This task and the ones it runs inside, innermost first.
    pub(crate) fn chain(&self) -> impl Iterator<Item = &Running<'_>> {
        let mut next: *const Running<'_> = self;
        std::iter::from_fn(move || {
            // SAFETY: each `outer` points at the `Running` of a task whose closure is
            // still on this thread's stack, below which this one runs.
            let current = unsafe { next.as_ref() }?;
            next = current.outer;
            Some(current)
        })
    }
}

/// A record's timer slot with no timer in it (0 is a valid kernel timer id).
pub(crate) const NO_TIMER: usize = usize::MAX;

/// Record states.
pub(super) const FREE: u8 = 0;
/// Between tasks (looking for work, spinning, asleep), or a standby.
pub(super) const IDLE: u8 = 1;
/// Running a task while holding the slot.
pub(crate) const IN_TASK: u8 = 2;
/// Running a task after handing the slot off.
pub(crate) const CARRIED: u8 = 3;

/// One pool thread's state, as the handler sees it. All fields are atomics: the handler
/// runs on the record's own thread, interrupting it, so `Relaxed` plus compiler fences
/// give it program order. Other threads read only `in_use` (claiming a record) and `tid`
/// and `preempt` (to nudge it, [`poke`]); they never touch its timers.
pub(crate) struct Record {
    pub(crate) in_use: AtomicBool,
    pub(crate) tid: AtomicI32,
    /// This record's index in [`RECORDS`].
    pub(crate) index: AtomicUsize,
    pub(super) state: AtomicU8,
    /// Runtime sections the thread is inside (no handoff while above zero).
    pub(super) depth: AtomicU32,
    /// An overrun was seen inside a runtime section.
    pub(super) pending: AtomicBool,
    /// The precise timer is armed (one-shot with `ThreadCpu` and `Contention`, periodic
    /// with `Monotonic`).
    pub(super) armed: AtomicBool,
    /// Why the on-demand CPU-time timer (`TimerClock::demand_ticks`) is armed:
    /// [`TICKS_KILL`], [`TICKS_CONTENTION`], both, or neither (disarmed).
    pub(super) cpu_ticks: AtomicU8,
    /// The thread is a carrier holding a ticket of its pool's [`CarrierLine`]; and it is
    /// waiting for its turn in the handler.
    pub(super) in_line: AtomicBool,
    pub(super) waiting_turn: AtomicBool,
    /// The carrier's ticket, and how many more times it may look for a point to wait at
    /// (`tick.rs`, `await_turn`).
    pub(super) ticket: AtomicU32,
    pub(super) turn_looks: AtomicU32,
    /// A peer found this runner's task past its quantum: hand it off even if nothing is
    /// queued at the expiry (`tick.rs`, `hand_off_long`).
    pub(super) long_seen: AtomicBool,
    /// The thread's CPU clock when its handler first found the task past its quantum
    /// with someone waiting (0: not yet), and how long the task had run then: its total
    /// run, recorded in the pool's [`RunHistory`] when it ends, is that plus the CPU
    /// time since (a carrier's wall time would count the waiting).
    /// ([`RECORDED`]: the task is in the history already, as longer than the bound.)
    pub(super) judged_cpu_ns: AtomicU64,
    pub(super) judged_ran_ns: AtomicU64,
    /// The start time of the task whose one-shot is armed for the end of the time it
    /// may keep its core (`history.rs`; 0: none). If that task outlives its quantum,
    /// its end disarms it rather than leave an expiry to land on a later task.
    pub(super) bound_for: AtomicU64,
    /// See [`take_rewatch`](Record::take_rewatch). The thread's own.
    rewatch: AtomicBool,
    /// Threads arming this record's precise timer from outside right now: the thread
    /// deletes its timers only once this is zero (`close_precise_timer`).
    pub(super) armers: AtomicU32,
    pub(super) start_ns: AtomicU64,
    pub(crate) cpu_timer: AtomicUsize,
    pub(crate) precise_timer: AtomicUsize,
    pub(super) preempt: AtomicPtr<Preempt>,
    pub(super) slot: AtomicUsize,
    /// The task closure running on this thread (null between tasks and in runtime code).
    pub(super) running: AtomicPtr<Running<'static>>,
    /// Sections where a freeze could leave a process-wide lock held: the opt-in allocator
    /// wrapper ([`FreezeGuard`]). A freeze waits for zero.
    pub(crate) no_freeze: AtomicU32,
    /// The control of the task the monitor wants frozen (null: none).
    pub(crate) kill_target: AtomicPtr<Control>,
    /// The maximum deferral has passed in wall-clock time: a panicking thread blocked in
    /// a wait may be frozen (see `freeze.rs`).
    pub(crate) kill_force: AtomicBool,
    /// The thread's CPU clock past which the maximum deferral has passed for a running
    /// panicking thread (`u64::MAX`: not yet known).
    pub(crate) kill_force_cpu: AtomicU64,
    /// Freeze requests the handler has looked at (the monitor asks again only once the
    /// last one was seen, so requests never pile up behind a starved thread).
    pub(crate) kill_acks: AtomicU32,
    /// A lock-holding frame's return slot redirected to the freeze trampoline, and the
    /// return address it held (0: none).
    pub(crate) redirect_slot: AtomicUsize,
    pub(crate) redirect_ret: AtomicUsize,
    /// This thread's `pthread_t`, and the lowest and highest address of the guard area
    /// below its stack (a fault there is a stack overflow).
    pub(crate) pthread: AtomicUsize,
    pub(crate) guard_lo: AtomicUsize,
    pub(crate) guard_hi: AtomicUsize,
    /// The lowest and highest address of the thread's own stack: the handler reads no
    /// stack memory outside it (a frame outside it is on a stack of a coroutine library,
    /// and unwalkable).
    pub(crate) stack_lo: AtomicUsize,
    pub(crate) stack_hi: AtomicUsize,
    /// The thread's std thread id (as std's reentrant locks record their owner).
    pub(crate) std_thread_id: AtomicU64,
    /// The thread's stack size, for the frozen-bytes count.
    pub(crate) stack_bytes: AtomicUsize,
    /// How the thread's kill ended it, once one did: [`FATE_NONE`], [`FATE_FROZEN`] (the
    /// freeze, on the thread) or [`FATE_ABANDONED`] (the monitor, from outside), below
    /// the thread's id (`tid << 8 | fate`). One compare-exchange from `FATE_NONE` with
    /// the thread's id decides, so a thread is never both, and a decision meant for a
    /// thread that has gone (its record reused) fails. Set with the id when a thread
    /// claims the record; kept when it releases it.
    pub(super) fate: AtomicU64,
    /// The monitor has finished abandoning the thread (counted it out, taken its slot):
    /// the thread, whose task the monitor decided, waits for this before it moves on.
    pub(super) abandon_done: AtomicBool,
    /// An outside handoff of the slot is pending (see `begin_outside_handoff`).
    pub(super) outside: AtomicBool,
    /// When a stack overflow of this thread first found code whose unwind tables are not
    /// recorded yet (monotonic ns; 0: none): the fault handler waits for the monitor's
    /// refresh until a bound (`freeze.rs`, `on_fault`).
    pub(super) overflow_wait_since: AtomicU64,
    /// The handler is running on this thread (with the pool's signal blocked).
    pub(super) handling: AtomicBool,
    /// Times in a row the standby maker found this thread, asked to freeze, with the
    /// pool's signal blocked (`runtime/monitor.rs`).
    pub(super) sigblocked_seen: AtomicU8,
    /// The running task is unwinding from its cancel (`checkpoint`); cleared when its
    /// closure ends.
    pub(crate) cancel_unwinding: AtomicBool,
    /// An abandoned thread: its CPU clock when it was abandoned, and whether its closure
    /// has since returned and it is on its way out.
    pub(crate) abandoned_cpu_at: AtomicU64,
    pub(crate) abandoned_exited: AtomicBool,
    /// The monitor found the pool's signal blocked on this runner between tasks: it
    /// unblocks it before its next task.
    pub(super) tainted: AtomicBool,
    /// Nudges queued to this thread and not yet seen by its handler: a nudge whose
    /// `siginfo` the kernel dropped (`RLIMIT_SIGPENDING` reached: it then arrives as a
    /// bare `SI_USER` from pid 0) is still recognised as ours.
    pub(super) nudges: AtomicU32,
}

/// The thread has not been killed.
pub(crate) const FATE_NONE: u8 = 0;
/// The thread is frozen (or being frozen).
pub(crate) const FATE_FROZEN: u8 = 1;
/// The thread was abandoned: counted out of the pool, its slot taken from it from
/// outside; it runs on until its closure returns, then retires.
pub(crate) const FATE_ABANDONED: u8 = 2;

/// What the thread held when the monitor took its slot from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    /// Its slot (an outside handoff has begun).
    Slot,
    /// No slot: it was a carrier already.
    Carrier,
    /// Neither: between tasks (not possible for a thread whose task is undecided).
    Neither,
}

/// What an outside handoff ([`Record::continue_outside_handoff`]) achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Outside {
    /// The slot is with a standby now (or was not the thread's to give).
    Done,
    /// The slot is taken from the thread, but no standby has it yet: the thread is still
    /// inside a runtime section, or no standby is parked. Call again.
    Pending,
}

impl Record {
    const fn new() -> Record {
        Record {
            in_use: AtomicBool::new(false),
            tid: AtomicI32::new(0),
            index: AtomicUsize::new(0),
            state: AtomicU8::new(FREE),
            depth: AtomicU32::new(0),
            pending: AtomicBool::new(false),
            armed: AtomicBool::new(false),
            armers: AtomicU32::new(0),
            cpu_ticks: AtomicU8::new(0),
            in_line: AtomicBool::new(false),
            waiting_turn: AtomicBool::new(false),
            ticket: AtomicU32::new(0),
            turn_looks: AtomicU32::new(0),
            long_seen: AtomicBool::new(false),
            judged_cpu_ns: AtomicU64::new(0),
            judged_ran_ns: AtomicU64::new(0),
            bound_for: AtomicU64::new(0),
            rewatch: AtomicBool::new(false),
            start_ns: AtomicU64::new(0),
            cpu_timer: AtomicUsize::new(NO_TIMER),
            precise_timer: AtomicUsize::new(NO_TIMER),
            preempt: AtomicPtr::new(std::ptr::null_mut()),
            slot: AtomicUsize::new(0),
            running: AtomicPtr::new(std::ptr::null_mut()),
            no_freeze: AtomicU32::new(0),
            kill_target: AtomicPtr::new(std::ptr::null_mut()),
            kill_force: AtomicBool::new(false),
            kill_force_cpu: AtomicU64::new(u64::MAX),
            kill_acks: AtomicU32::new(0),
            redirect_slot: AtomicUsize::new(0),
            redirect_ret: AtomicUsize::new(0),
            pthread: AtomicUsize::new(0),
            guard_lo: AtomicUsize::new(0),
            guard_hi: AtomicUsize::new(0),
            stack_lo: AtomicUsize::new(0),
            stack_hi: AtomicUsize::new(0),
            std_thread_id: AtomicU64::new(0),
            stack_bytes: AtomicUsize::new(0),
            fate: AtomicU64::new(0),
            abandon_done: AtomicBool::new(false),
            outside: AtomicBool::new(false),
            overflow_wait_since: AtomicU64::new(0),
            nudges: AtomicU32::new(0),
            handling: AtomicBool::new(false),
            sigblocked_seen: AtomicU8::new(0),
            cancel_unwinding: AtomicBool::new(false),
            abandoned_cpu_at: AtomicU64::new(0),
            abandoned_exited: AtomicBool::new(false),
            tainted: AtomicBool::new(false),
        }
    }

    /// A thread claims this record: its fate is undecided.
    pub(crate) fn reset_fate(&self, tid: i32) {
        self.overflow_wait_since.store(0, Ordering::Relaxed);
        self.abandon_done.store(false, Ordering::SeqCst);
        self.abandoned_exited.store(false, Ordering::SeqCst);
        self.fate.store(
            u64::from(tid as u32) << 8 | u64::from(FATE_NONE),
            Ordering::SeqCst,
        );
    }

    /// Decides the fate of thread `tid`, if this record is still its own and its fate
    /// undecided; true if this call decided it. Async-signal-safe.
    #[must_use = "false: another kill decided the thread's fate first"]
    pub(crate) fn decide_fate_of(&self, tid: i32, fate: u8) -> bool {
        let undecided = u64::from(tid as u32) << 8 | u64::from(FATE_NONE);
        self.fate
            .compare_exchange(
                undecided,
                undecided | u64::from(fate),
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }

    /// [`decide_fate_of`](Record::decide_fate_of) on the record's own thread.
    /// Async-signal-safe.
    #[must_use = "false: another kill decided the thread's fate first"]
    pub(crate) fn decide_fate(&self, fate: u8) -> bool {
        self.decide_fate_of(self.tid.load(Ordering::Relaxed), fate)
    }

    pub(super) fn fate(&self) -> u8 {
        self.fate.load(Ordering::SeqCst) as u8
    }

    /// True while no kill has decided the thread's fate.
    pub(crate) fn fate_undecided(&self) -> bool {
        self.fate() == FATE_NONE
    }

    /// The freeze's claim on the thread (on the thread itself, from the handler or the
    /// trampoline): true if its fate is, or now becomes, frozen. Async-signal-safe.
    #[must_use = "false: the thread was abandoned, not frozen"]
    pub(crate) fn claim_freeze(&self) -> bool {
        self.decide_fate(FATE_FROZEN) || self.fate() == FATE_FROZEN
    }

    /// True while the monitor asks this thread to freeze a task.
    pub(crate) fn freeze_asked(&self) -> bool {
        !self.kill_target.load(Ordering::Relaxed).is_null()
    }

    /// One more sighting (or none) of the pool's signal blocked on this thread.
    pub(crate) fn saw_signal_blocked(&self, blocked: bool) {
        let seen = self.sigblocked_seen.load(Ordering::Relaxed);
        let seen = if blocked { seen.saturating_add(1) } else { 0 };
        self.sigblocked_seen.store(seen, Ordering::Relaxed);
    }

    /// Sightings in a row of the pool's signal blocked on this thread.
    pub(crate) fn signal_blocked_seen(&self) -> u8 {
        self.sigblocked_seen.load(Ordering::Relaxed)
    }

    /// True while the handler runs on this record's thread.
    pub(crate) fn in_handler(&self) -> bool {
        self.handling.load(Ordering::SeqCst)
    }

    /// For the monitor's sweep: when the task running on this thread while it holds its
    /// slot started (`CLOCK_MONOTONIC` ns), if one is.
    pub(crate) fn busy_since(&self) -> Option<u64> {
        (self.state.load(Ordering::Relaxed) == IN_TASK)
            .then(|| self.start_ns.load(Ordering::Relaxed))
    }

    /// For the monitor's sweep: the slot this thread serves, if it holds one or stands by
    /// for one (not a carrier, which is demoted and unpinned on purpose).
    pub(crate) fn serving_slot(&self) -> Option<usize> {
        matches!(self.state.load(Ordering::Relaxed), IDLE | IN_TASK)
            .then(|| self.slot.load(Ordering::Relaxed))
    }

    /// The monitor found the pool's signal blocked on this thread: it unblocks it itself
    /// before its next task (only a thread can change its own mask).
    pub(crate) fn taint(&self) {
        self.tainted.store(true, Ordering::Relaxed);
    }

    /// True once a freeze has claimed this thread.
    pub(crate) fn is_freezing(&self) -> bool {
        self.fate() == FATE_FROZEN
    }

    /// True once the monitor has abandoned this thread.
    pub(crate) fn is_abandoned(&self) -> bool {
        self.fate() == FATE_ABANDONED
    }

    /// Called by the thread when its task's outcome was decided by someone else while the
    /// closure ran (the monitor abandoned it): waits until the monitor has marked the
    /// thread, which it does right after deciding. Normal context.
    pub(crate) fn await_fate(&self) {
        while !self.abandon_done.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
    }

    /// Takes the slot from this record's thread **from another thread** (the monitor
    /// abandoning its task), for a thread that may never take a signal again (it blocked
    /// the pool's signal) or never reach a point where it could freeze. Normal context.
    ///
    /// 1. `IN_TASK` → `CARRIED` by compare-exchange: the same word the thread's own
    ///    handoff and `end_task` change, so exactly one of them wins. From here the
    ///    thread never *enters* a runtime section (`enter_runtime` reads the state) and
    ///    ends its task as a carrier. If it was a carrier already, there is no slot to
    ///    give, and step 3 only counts it out of the slot's carriers.
    /// 2. A runtime section it entered before step 1 may still be pushing to the slot's
    ///    deque. The thread enters one with a SeqCst increment of `depth` then a SeqCst
    ///    load of the state; this side writes the state (SeqCst) then loads `depth`
    ///    (SeqCst): a Dekker pair, so either the thread sees `CARRIED` and backs out, or
    ///    this side sees its `depth`. `depth == 0` (its decrement is a Release, this load
    ///    acquires it) then means no section is in progress and its pushes are visible.
    /// 3. A standby is taken and granted, as the handler's handoff does.
    ///
    /// Steps 2–3 may have to wait (a section in progress, no standby parked): the slot
    /// then has no holder meanwhile (the other slots still steal its queue), and the
    /// monitor calls [`continue_outside_handoff`](Record::continue_outside_handoff) on
    /// each pass. The thread, if its closure returns first, waits for it before it exits
    /// ([`await_outside_handoff`](Record::await_outside_handoff)), so the record stays
    /// its own until then.
    #[must_use]
    pub(crate) fn begin_outside_handoff(&self) -> Holder {
        // Raised first: a thread that sees `CARRIED` must also see that a handoff is on
        // its way, and wait for it before it moves on. (Already up: one begun earlier, by
        // the sweep, is still pending, and stays so.)
        let pending = self.outside.swap(true, Ordering::SeqCst);
        match self
            .state
            .compare_exchange(IN_TASK, CARRIED, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => Holder::Slot,
            Err(state) => {
                if !pending {
                    self.outside.store(false, Ordering::SeqCst);
                }
                if state == CARRIED {
                    Holder::Carrier
                } else {
                    Holder::Neither
                }
            }
        }
    }

    /// Steps 2–3, by the monitor: `None` if nothing is pending, else whether it is done
    /// now.
    pub(crate) fn continue_outside_handoff(&self) -> Option<Outside> {
        if !self.outside.load(Ordering::SeqCst) {
            return None;
        }
        if self.depth.load(Ordering::SeqCst) > 0 {
            return Some(Outside::Pending);
        }
        let reserve = self.reserve();
        if !reserve.take_standby() {
            self.preempt().ring();
            return Some(Outside::Pending);
        }
        // Demoted (and let onto every core of the pool, like any carrier) before the flag
        // drops: the thread waits for it before it may move on and get its priority back
        // (a demotion arriving after that would leave a runner at idle priority).
        let tid = self.tid.load(Ordering::Relaxed);
        async_safe::demote_thread(tid);
        if let Some(cpus) = self.carrier_cpus() {
            async_safe::set_thread_affinity(tid, &cpus);
        }
        self.outside.store(false, Ordering::SeqCst);
        reserve.counters.handoffs.fetch_add(1, Ordering::Relaxed);
        reserve.grant();
        self.preempt().ring();
        Some(Outside::Done)
    }

    /// The monitor has finished abandoning this thread (see `abandon_done`).
    pub(crate) fn abandoned_fully(&self) {
        self.abandon_done.store(true, Ordering::SeqCst);
    }

    // Ordinary context: the abandoned thread, retiring.
    #[allow(
        clippy::disallowed_types,
        clippy::disallowed_macros,
        clippy::disallowed_methods
    )]
    /// The abandoned thread retiring waits for the monitor to finish its outside handoff
    /// (the monitor reads this record until then).
    pub(crate) fn await_outside_handoff(&self) {
        while self.outside.load(Ordering::SeqCst) {
            self.preempt().ring();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Queues the pool's `signal` to this record's thread with the record's token
    /// (`sys::async_safe::nudge`), counted first so the handler knows it even if the
    /// kernel drops its `siginfo`. Async-signal-safe.
    pub(crate) fn nudge(&self, signal: i32) {
        self.nudges.fetch_add(1, Ordering::SeqCst);
        let tid = self.tid.load(Ordering::Relaxed);
        async_safe::nudge(tid, signal, token(self.index.load(Ordering::Relaxed)));
    }

    /// True if this record's thread serves the pool whose kill registry is `kills`.
    pub(crate) fn serves(&self, kills: &KillLedger) -> bool {
        if !self.in_use.load(Ordering::Acquire)
            || self.tid.load(Ordering::Relaxed) == 0
            || !self.fate_undecided()
        {
            return false;
        }
        let preempt = self.preempt.load(Ordering::Relaxed);
        // SAFETY: non-null `preempt` points at the `Preempt` of a pool whose threads keep
        // it alive; a record in use belongs to such a thread.
        let preempt = unsafe { preempt.as_ref() };
        preempt.is_some_and(|p| std::ptr::eq(p.ledger, kills))
    }

    /// One nudge seen; false if none was outstanding. Async-signal-safe.
    pub(super) fn take_nudge(&self) -> bool {
        self.nudges
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// The slot this record's thread holds or last held.
    pub(crate) fn slot_reserve(&self) -> &Reserve {
        self.reserve()
    }

    /// The pool's cores, for a carrier (`None`: not pinned).
    pub(crate) fn carrier_cpus(&self) -> Option<libc::cpu_set_t> {
        self.preempt().carrier_cpus
    }

    /// The closure running on this thread, if any (for an inline join's `Running::outer`),
    /// and the no-freeze counter now.
    pub(crate) fn current(&self) -> (*const Running<'static>, u32) {
        (
            self.running.load(Ordering::Relaxed),
            self.no_freeze.load(Ordering::Relaxed),
        )
    }

    /// The task's closure is about to run on this thread (`task/mod.rs`). From here until
    /// [`leave_user`](Record::leave_user) the thread may be frozen.
    pub(crate) fn enter_user(&self, running: &Running<'_>) {
        compiler_fence(Ordering::SeqCst);
        // Only this thread writes `running` (the handler only reads it): a plain store.
        self.running.store(
            running as *const Running<'_> as *mut Running<'static>,
            Ordering::Relaxed,
        );
        compiler_fence(Ordering::SeqCst);
    }

    /// The closure has returned or unwound: no freeze of it from here on; the closure of
    /// the task that joined it inline, if any, is the running one again.
    pub(crate) fn leave_user(&self, running: &Running<'_>) {
        compiler_fence(Ordering::SeqCst);
        self.running
            .store(running.outer as *mut Running<'static>, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        self.cancel_unwinding.store(false, Ordering::Relaxed);
        // A redirect still pending in this closure's frames (below its `Running`) belongs
        // to a frame that is gone: an unwind took it without running its return. Forget
        // it, and give its frozen place back.
        let slot = self.redirect_slot.load(Ordering::Relaxed);
        if slot != 0
            && slot < running as *const Running<'_> as usize
            && self
                .redirect_slot
                .compare_exchange(slot, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.preempt().ledger.unreserve_frozen();
        }
    }

    /// Forgets a freeze asked for a task that has completed. Not needed for soundness (the
    /// handler freezes only the running task, and only once its own kill is due, so a
    /// stale target whose memory a later task reuses does nothing before that task's own
    /// kill is due), only to spare the handler the look.
    pub(crate) fn forget_kill(&self, control: &Control) {
        let control = control as *const Control as *mut Control;
        if self
            .kill_target
            .compare_exchange(
                control,
                std::ptr::null_mut(),
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
        {
            self.kill_force.store(false, Ordering::Relaxed);
            self.kill_force_cpu.store(u64::MAX, Ordering::Relaxed);
        }
    }

    /// The thread's own stack, `[lo, hi)`. Async-signal-safe.
    pub(crate) fn stack_range(&self) -> (usize, usize) {
        (
            self.stack_lo.load(Ordering::Relaxed),
            self.stack_hi.load(Ordering::Relaxed),
        )
    }

    /// The pool settings this record's thread serves.
    pub(super) fn preempt(&self) -> &Preempt {
        // SAFETY: set by `bind` before the thread's timers are armed and never cleared
        // while they exist; the thread keeps the pool's shared state (which owns the
        // `Preempt`) alive for as long as it has a record.
        unsafe { &*self.preempt.load(Ordering::Relaxed) }
    }

    pub(super) fn reserve(&self) -> &Reserve {
        &self.preempt().reserves[self.slot.load(Ordering::Relaxed)]
    }

    /// Ties the record to a pool and a slot. Called by its thread before it arms timers
    /// and whenever it takes a slot.
    pub(crate) fn bind(&self, preempt: &Preempt, slot: usize) {
        self.preempt
            .store(preempt as *const Preempt as *mut Preempt, Ordering::Relaxed);
        self.slot.store(slot, Ordering::Relaxed);
        self.state.store(IDLE, Ordering::Relaxed);
    }

    /// Forgets the thread's timers and marks the record free, as `new` made it (the next
    /// thread to claim it sets the rest). Called by its thread once the timers are
    /// deleted: as it exits, or at the end of its freeze (then from the handler, or the
    /// trampoline, with every signal blocked). Async-signal-safe.
    pub(crate) fn release(&self) {
        self.leave_line();
        self.running.store(std::ptr::null_mut(), Ordering::Relaxed);
        self.no_freeze.store(0, Ordering::Relaxed);
        self.depth.store(0, Ordering::Relaxed);
        self.pending.store(false, Ordering::Relaxed);
        self.redirect_slot.store(0, Ordering::Relaxed);
        self.handling.store(false, Ordering::Relaxed);
        self.sigblocked_seen.store(0, Ordering::Relaxed);
        self.cancel_unwinding.store(false, Ordering::Relaxed);
        self.nudges.store(0, Ordering::Relaxed);
        self.tainted.store(false, Ordering::Relaxed);
        self.outside.store(false, Ordering::Relaxed);
        self.kill_target
            .store(std::ptr::null_mut(), Ordering::Relaxed);
        self.kill_force.store(false, Ordering::Relaxed);
        self.kill_force_cpu.store(u64::MAX, Ordering::Relaxed);
        self.state.store(FREE, Ordering::Relaxed);
        self.tid.store(0, Ordering::Relaxed);
        self.armed.store(false, Ordering::Relaxed);
        self.cpu_ticks.store(0, Ordering::Relaxed);
        self.long_seen.store(false, Ordering::Relaxed);
        self.judged_cpu_ns.store(0, Ordering::Relaxed);
        self.bound_for.store(0, Ordering::Relaxed);
        self.rewatch.store(false, Ordering::Relaxed);
        self.turn_looks.store(0, Ordering::Relaxed);
        self.in_use.store(false, Ordering::Release);
    }

    /// An abandoned thread of a clock with no lifelong tick (`Contention`, `Monotonic`
    /// once handed off) gets a periodic one, once per kernel tick, so that its handler
    /// looks now and then for a point where it may stop for good (`freeze.rs`, `settle`)
    /// instead of burning idle CPU until its closure returns. Called by the monitor.
    pub(crate) fn tick_abandoned(&self) {
        let preempt = self.preempt();
        // A thread whose handler ran for the kill ticks on its CPU clock already.
        if preempt.clock.lifelong_timer(preempt.tick_ns).is_none()
            && self.cpu_ticks.load(Ordering::Relaxed) & TICKS_KILL == 0
        {
            let tick = preempt.tick_ns.max(1);
            self.arm_precise_from_anywhere(async_safe::monotonic_ns() + tick, tick);
        }
    }

    /// Whether the precise timer is armed, or the CPU-time ticks watch this runner
    /// (`TimerClock::Contention`: someone saw this runner busy while work waited).
    pub(crate) fn is_armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed) || self.contention_ticks()
    }

    /// When the task on this runner started (`CLOCK_MONOTONIC` ns).
    pub(crate) fn started_ns(&self) -> u64 {
        self.start_ns.load(Ordering::Relaxed)
    }

    /// A kill of the task on this thread is under way: the monitor asks for a freeze, or
    /// the thread's fate is decided, or its task's cancel flag is set (it must run to see
    /// it).
    pub(super) fn kill_pending(&self) -> bool {
        if !self.kill_target.load(Ordering::Relaxed).is_null() || !self.fate_undecided() {
            return true;
        }
        // SAFETY: as in `work_waiting`.
        let running = unsafe { self.running.load(Ordering::Relaxed).as_ref() };
        running.is_some_and(|r| r.chain().any(|r| r.task.control().killed().is_some()))
    }

    /// If this thread is a carrier waiting for its turn (`freeze.rs`, `await_turn`), wakes
    /// it to look at its kill state. Called by the monitor.
    pub(crate) fn wake_turn(&self) {
        if self.waiting_turn.load(Ordering::SeqCst) {
            self.preempt().line.wake();
        }
    }

    /// The carrier on this thread leaves its pool's line (its task ended, froze, or was
    /// abandoned): the next carrier may run. Async-signal-safe (atomics, a futex wake).
    pub(crate) fn leave_line(&self) {
        if self.in_line.swap(false, Ordering::SeqCst) {
            self.preempt().line.advance();
        }
    }

    /// A kill targets this thread: with a clock whose CPU-time timer waits for one, the
    /// handler looks again at every kernel tick the thread runs until the freeze is done
    /// (`TimerClock::demand_ticks`). On the record's own thread (the handler).
    /// Async-signal-safe.
    pub(super) fn tick_for_kill(&self) {
        self.start_cpu_ticks(TICKS_KILL);
    }

    /// Whether the CPU-time ticks watch this runner for tasks queued behind it
    /// (`tick.rs`).
    pub(crate) fn contention_ticks(&self) -> bool {
        self.cpu_ticks.load(Ordering::SeqCst) & TICKS_CONTENTION != 0
    }

    /// Adds `why` ([`TICKS_KILL`], [`TICKS_CONTENTION`]) to the reasons for the on-demand
    /// CPU-time timer (`TimerClock::demand_ticks`; nothing with a clock that has none),
    /// and arms it if it was the first. On the record's own thread, in the handler or not
    /// (`leave_runtime`). Async-signal-safe.
    pub(super) fn start_cpu_ticks(&self, why: u8) {
        let preempt = self.preempt();
        if preempt.clock.demand_ticks(preempt.tick_ns).is_none() {
            return;
        }
        if self.cpu_ticks.fetch_or(why, Ordering::SeqCst) == 0 {
            self.sync_cpu_ticks();
        }
    }

    /// Removes `why` from the reasons for the on-demand CPU-time timer, and disarms it if
    /// none is left. On the record's own thread, in the handler or not. Async-signal-safe.
    #[cold]
    pub(super) fn stop_cpu_ticks(&self, why: u8) {
        let old = self.cpu_ticks.fetch_and(!why, Ordering::SeqCst);
        if old & why == 0 || old & !why != 0 {
            return;
        }
        self.sync_cpu_ticks();
    }

    /// Arms or disarms the on-demand CPU-time timer to match the reasons, until they stay
    /// put across the `timer_settime`: called outside the handler, the thread can be
    /// interrupted between its look and the syscall by a handler that starts or stops
    /// ticks (and does its own syscall first), and the last word must be the reasons' now.
    fn sync_cpu_ticks(&self) {
        let preempt = self.preempt();
        let Some((_, period)) = preempt.clock.demand_ticks(preempt.tick_ns) else {
            return;
        };
        let id = self.cpu_timer.load(Ordering::Relaxed);
        if id == NO_TIMER {
            return;
        }
        loop {
            let on = self.cpu_ticks.load(Ordering::SeqCst) != 0;
            let period = if on { period } else { 0 };
            async_safe::set_timer(TimerId(id), period, period, false);
            compiler_fence(Ordering::SeqCst);
            if (self.cpu_ticks.load(Ordering::SeqCst) != 0) == on {
                return;
            }
        }
    }

    /// Takes the precise timer's id out of the record, so no other thread arms it any
    /// more, and waits until none is in the middle of doing so: the caller may then delete
    /// it. Async-signal-safe (the wait spans one `timer_settime` of the other thread).
    pub(crate) fn close_precise_timer(&self) -> Option<TimerId> {
        let id = self.precise_timer.swap(NO_TIMER, Ordering::SeqCst);
        while self.armers.load(Ordering::SeqCst) != 0 {
            async_safe::yield_now();
        }
        (id != NO_TIMER).then_some(TimerId(id))
    }

    /// Arms this record's one-shot from any thread, if the timer still exists (see
    /// [`close_precise_timer`](Record::close_precise_timer)): at `at_ns` on
    /// `CLOCK_MONOTONIC`, then every `interval_ns` if that is not 0. Async-signal-safe.
    pub(crate) fn arm_precise_from_anywhere(&self, at_ns: u64, interval_ns: u64) {
        self.armers.fetch_add(1, Ordering::SeqCst);
        let id = self.precise_timer.load(Ordering::SeqCst);
        if id != NO_TIMER {
            async_safe::set_timer(TimerId(id), at_ns, interval_ns, true);
        }
        self.armers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether a task's closure is running on this thread (not runtime code around it).
    /// Any thread may ask (one atomic load).
    pub(super) fn in_closure(&self) -> bool {
        !self.running.load(Ordering::Relaxed).is_null()
    }

    /// Whether a task of this thread's pool is queued that no runner has taken (true if
    /// that cannot be told: no closure of a pool is running). On the record's own thread
    /// (the handler). Async-signal-safe.
    pub(super) fn work_waiting(&self) -> bool {
        // SAFETY: null or the `Running` of the closure running on this thread, which stays
        // on this thread's stack while the pointer is set (see `freeze.rs`, `attempt`).
        let running = unsafe { self.running.load(Ordering::Relaxed).as_ref() };
        match running.and_then(|r| r.pool) {
            Some(pool) => pool.work_waiting(),
            None => true,
        }
    }

    pub(crate) fn precise(&self) -> Option<TimerId> {
        match self.precise_timer.load(Ordering::Relaxed) {
            NO_TIMER => None,
            id => Some(TimerId(id)),
        }
    }

    /// A task starts on the slot's runner.
    #[inline]
    pub(crate) fn begin_task(&self) {
        if self.cpu_ticks.load(Ordering::Relaxed) & TICKS_KILL != 0 {
            // A kill's ticks outlived it (its task ended unfrozen): stop them.
            self.stop_cpu_ticks(TICKS_KILL);
        }
        if self.tainted.load(Ordering::Relaxed) {
            // A task before this one blocked the pool's signal and returned (one load on
            // the common path; the monitor's sweep sets it).
            self.tainted.store(false, Ordering::Relaxed);
            async_safe::unblock_signal(self.preempt().signal);
        }
        self.start_ns
            .store(async_safe::monotonic_ns(), Ordering::Relaxed);
        self.pending.store(false, Ordering::Relaxed);
        // The handler must see the new start time before it sees `IN_TASK`.
        compiler_fence(Ordering::SeqCst);
        // Release: a slot taken from outside (`begin_outside_handoff`, whose
        // compare-exchange reads this) comes with this runner's pops from its deque.
        self.state.store(IN_TASK, Ordering::Release);
        compiler_fence(Ordering::SeqCst);
        // The clock's policy (`timer.rs`): a periodic timer while awake, or nothing.
        let preempt = self.preempt();
        if let Some(period) = preempt.clock.arm_at_task_start(preempt.quantum_ns) {
            if !self.armed.load(Ordering::Relaxed) {
                if let Some(timer) = self.precise() {
                    self.armed.store(true, Ordering::Relaxed);
                    async_safe::set_timer(timer, period, period, false);
                }
            }
        }
    }

    /// The task has returned. False if the slot was handed off while it ran: the thread is
    /// now the task's carrier and must not touch the slot again.
    #[inline]
    #[must_use = "false: the slot was handed off, and the thread must not touch it again"]
    pub(crate) fn end_task(&self) -> bool {
        compiler_fence(Ordering::SeqCst);
        let kept = self
            .state
            .compare_exchange(IN_TASK, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        compiler_fence(Ordering::SeqCst);
        // A load, not a swap, on this per-task path: once the state is `IDLE` the handler
        // arms nothing, so nothing can set `armed` between the load and the store.
        if kept && self.preempt().clock.disarm_at_task_end() && self.armed.load(Ordering::Relaxed) {
            self.armed.store(false, Ordering::Relaxed);
            if let Some(timer) = self.precise() {
                async_safe::set_timer(timer, 0, 0, false);
            }
        }
        // A task judged past its quantum (with someone waiting) tells the history how
        // long it ran in all, on the runner or on its carrier alike.
        let judged = self.judged_cpu_ns.load(Ordering::Relaxed);
        // This task's one-shot was armed for the end of the time it may keep its core.
        // If it outlived its quantum, it kept its core past it (`Stats::kept`), it is
        // disarmed now (one syscall, instead of an expiry on a later task), the runner
        // looks for a backlog to watch as it starts its next task (`take_rewatch`), and
        // the task, if it was kept without ever being judged, tells the history how long
        // it ran (at normal priority: its wall time is its run). A task that ended sooner
        // leaves it armed: a stream of short tasks behind the backlog is watched by it,
        // as by the quantum's one-shot, with no syscall per task.
        let start = self.start_ns.load(Ordering::Relaxed);
        if kept && self.bound_for.load(Ordering::Relaxed) == start {
            self.bound_for.store(0, Ordering::Relaxed);
            let preempt = self.preempt();
            let ran = async_safe::monotonic_ns().saturating_sub(start);
            if ran >= TimerClock::contention_due(preempt.quantum_ns) {
                self.reserve().counters.kept.fetch_add(1, Ordering::Relaxed);
                self.disarm_precise();
                self.rewatch.store(true, Ordering::Relaxed);
                if judged == 0 {
                    preempt.history.record(ran, preempt.quantum_ns);
                }
            }
        }
        if judged == RECORDED {
            self.judged_cpu_ns.store(0, Ordering::Relaxed);
        } else if judged != 0 {
            self.judged_cpu_ns.store(0, Ordering::Relaxed);
            let since = async_safe::thread_cpu_ns().saturating_sub(judged);
            let preempt = self.preempt();
            preempt.history.record(
                self.judged_ran_ns
                    .load(Ordering::Relaxed)
                    .saturating_add(since),
                preempt.quantum_ns,
            );
        }
        kept
    }

    /// The runner is about to sleep: stop the periodic timer (no expiries while idle),
    /// and the CPU-time ticks that watched a stream of queued tasks (it has ended).
    pub(crate) fn pause(&self) {
        if self.contention_ticks() {
            self.stop_cpu_ticks(TICKS_CONTENTION);
        }
        self.disarm_precise();
    }

    /// Disarms the one-shot if it is armed. The timer first, then the flag: while the
    /// flag is set no other thread arms it (`arm_contention`'s compare-exchange), so an
    /// arming from outside cannot land between the two and be wiped, leaving the flag
    /// set with no timer behind it (nothing would ever arm this runner again).
    fn disarm_precise(&self) {
        if self.armed.load(Ordering::SeqCst) {
            if let Some(timer) = self.precise() {
                async_safe::set_timer(timer, 0, 0, false);
            }
            self.armed.store(false, Ordering::SeqCst);
        }
    }

    /// Whether the last task's end disarmed a one-shot that watched a backlog: the runner
    /// then looks for one to watch as it starts its next task, wherever it takes it from.
    pub(crate) fn take_rewatch(&self) -> bool {
        self.rewatch.swap(false, Ordering::Relaxed)
    }

    /// Enters a runtime section: no handoff until the matching [`leave_runtime`]. Returns
    /// false (and enters nothing) if the slot was already handed off.
    ///
    /// [`leave_runtime`]: Record::leave_runtime
    #[must_use = "true: the section was entered and must be left with `leave_runtime`"]
    pub(crate) fn enter_runtime(&self) -> bool {
        // SeqCst, both: against the monitor taking the slot from outside (it writes the
        // state, then reads `depth`; see `begin_outside_handoff`). On x86_64 the RMW is
        // a locked instruction and the load a plain one either way.
        self.depth.fetch_add(1, Ordering::SeqCst);
        compiler_fence(Ordering::SeqCst);
        if matches!(self.state.load(Ordering::SeqCst), IDLE | IN_TASK) {
            return true;
        }
        compiler_fence(Ordering::SeqCst);
        self.depth.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// An abandoned thread's closure has returned, or the thread has stopped for good at a
    /// safe point (`freeze.rs`, `stop_abandoned`): it leaves the lost list (its CPU time
    /// since the abandon is added to the total). On that thread; async-signal-safe
    /// (atomics and a clock read).
    ///
    /// No lock: the thread is demoted, and a lock it held while the kernel gave it no CPU
    /// time would stall the monitor. The monitor drops its entry once the record is no
    /// longer its (`finish_outside_handoffs`).
    pub(crate) fn abandoned_thread_exits(&self) {
        let at = self.abandoned_cpu_at.load(Ordering::Relaxed);
        let used = async_safe::thread_cpu_ns().saturating_sub(at);
        self.preempt()
            .ledger
            .counters
            .abandoned_cpu_exited
            .fetch_add(used, Ordering::Relaxed);
        self.abandoned_exited.store(true, Ordering::SeqCst);
    }
    /// The carrier has finished its task and is a plain thread of the pool again.
    pub(crate) fn set_idle(&self) {
        self.state.store(IDLE, Ordering::Relaxed);
        // An arming that raced with the handoff, and a kill's ticks, end with the task.
        self.armed.store(false, Ordering::SeqCst);
        if self.cpu_ticks.load(Ordering::Relaxed) != 0 {
            self.stop_cpu_ticks(TICKS_KILL | TICKS_CONTENTION);
        }
    }
}

/// A reason for the on-demand CPU-time timer (`Record::cpu_ticks`): a kill waits for a
/// point where it may freeze the thread.
pub(super) const TICKS_KILL: u8 = 1;
/// A reason for the on-demand CPU-time timer: tasks are queued behind this runner, and a
/// one-shot found a newer task than the one it was armed for (`tick.rs`).
pub(super) const TICKS_CONTENTION: u8 = 2;

/// Every pool thread's record. Static, so the handler can reach one from an index.
pub(crate) static RECORDS: [Record; MAX_THREADS] = [const { Record::new() }; MAX_THREADS];

/// Tokens are `MAGIC << 32 | index`; `MAGIC` is chosen once per process so a timer or
/// `sigqueue` of the embedder's that happens to use the same signal is not taken for ours.
static MAGIC: AtomicU32 = AtomicU32::new(0);

/// Sets the per-process magic number, once (non-zero).
pub(crate) fn init_magic(seed: u32) {
    let _ = MAGIC.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
}

pub(crate) fn token(index: usize) -> u64 {
    pack_token(MAGIC.load(Ordering::Relaxed), index)
}

/// The token of record `index` under `magic`.
fn pack_token(magic: u32, index: usize) -> u64 {
    (u64::from(magic) << 32) | (index as u64 & 0xffff_ffff)
}

/// The record index a token names, if it carries `magic` (set: non-zero) and names a
/// record of the table.
fn index_of(magic: u32, token: u64) -> Option<usize> {
    if magic == 0 || (token >> 32) as u32 != magic {
        return None;
    }
    let index = (token & 0xffff_ffff) as usize;
    (index < MAX_THREADS).then_some(index)
}

pub(super) fn record_of(token: u64) -> Option<&'static Record> {
    RECORDS.get(index_of(MAGIC.load(Ordering::Relaxed), token)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_record_under_its_magic_only() {
        let magic = 0x5eed_0001;
        for index in [0, 1, 77, MAX_THREADS - 1] {
            assert_eq!(index_of(magic, pack_token(magic, index)), Some(index));
            // Another process's (or an embedder's) value on the same signal.
            assert_eq!(index_of(magic ^ 2, pack_token(magic, index)), None);
        }
        assert_eq!(
            index_of(magic, pack_token(magic, MAX_THREADS)),
            None,
            "past the table"
        );
        assert_eq!(index_of(0, pack_token(0, 3)), None, "no magic set yet");
        assert_eq!(index_of(magic, 0), None, "a zero sigval");
    }
}
