//! A pool's shared state (`Shared`): its queues and slots, spawning, and shutdown.
//!
//! # Shutdown protocol
//!
//! 1. Close the gate (`sync/spawn_gate.rs`): from here on every spawn is refused.
//! 2. Wait until every spawn that got through the gate has pushed and counted its task.
//!    From here on the set of accepted tasks is final, and so are the counters that count
//!    them.
//! 3. `mode = DRAIN`, and wake every sleeping runner. Runners keep running tasks, and exit
//!    once they find none *and* every accepted task has finished (completed + panicked +
//!    discarded = accepted, from the counters). Waiting for the others' tasks, not just
//!    for empty queues, matters: a running task may still be waiting for a queued one
//!    (through a channel, say), or hold a batch it is moving between queues. A runner that
//!    exits wakes the sleepers so they can re-check.
//! 4. Wait for the runners to exit (all of them, or until a deadline).
//! 5. Deadline passed: `mode = DISCARD`; queued tasks are taken from every queue (by this
//!    thread, through the stealers, and by runners as they come back from their current
//!    task) and resolved with `JoinError::Shutdown`. Runners exit as soon as they find no
//!    work; those still inside a task are detached and exit when it returns.
//!
//! `shutdown` called from inside a task of the pool does steps 1–3 and returns: a runner
//! cannot wait for itself to finish the task it is running.

use std::thread;
use std::time::{Duration, Instant};

use crate::kill::{Kills, Mutex};
use crossbeam_deque::Injector;

use super::slot::Slot;
use super::steal::steal;
use crate::budget::Budget;
use crate::counters::PoolCounters;
use crate::error::JoinError;
use crate::error::ShutdownTimedOut;
use crate::handler::{self, Backlog, FrozenPool, Preempt};
use crate::sync::loom::{AtomicU8, Futex, Ordering};
use crate::sync::sleep::Sleep;
use crate::sync::spawn_gate::Gate;
use crate::task::{self, Joiner, Task};

/// Where a pool is in its life; see the shutdown protocol. Only ever moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Running,
    Drain,
    Discard,
}

const RUNNING: u8 = 0;
const DRAIN: u8 = 1;
const DISCARD: u8 = 2;

/// State shared by the pool, its handles and its runners.
pub(crate) struct Shared {
    pub(crate) injector: Injector<Task>,
    pub(crate) slots: Box<[Slot]>,
    pub(crate) sleep: Sleep,
    gate: Gate,
    /// Unique per pool for the life of the process (an address could be reused).
    id: usize,
    /// `RUNNING`, `DRAIN` or `DISCARD`; only ever increases.
    mode: AtomicU8,
    pub(crate) counters: PoolCounters,
    /// Pool threads (runners, standbys, carriers, the monitor) that have neither exited
    /// nor been frozen; shutdown waits on this word for zero. A futex, not a mutex: a
    /// freeze counts its thread out from the signal handler.
    live: Futex,
    pub(crate) spin: Duration,
    /// The budget of a task spawned without one.
    pub(crate) default_budget: Budget,
    /// Measure every task's CPU time.
    pub(crate) cpu_accounting: bool,
    /// Preemption settings and per-slot reserves; `None` with preemption off.
    pub(crate) preempt: Option<Preempt>,
    /// The kill registry (its handler half is `preempt`'s ledger); `None` with
    /// preemption off.
    pub(crate) kills: Option<&'static Kills>,
    pub(crate) threads: Threads,
    /// The process's fork count when the pool was built (`sys::fork_count`): a different
    /// one means this is a forked child, where the pool has no threads.
    forks: u64,
}

/// How the pool makes threads, and the handles of those it made.
pub(crate) struct Threads {
    pub(crate) name: String,
    pub(crate) stack_size: Option<usize>,
    /// Each slot's CPU affinity (`None`: leave it alone).
    pub(crate) affinity: Vec<Option<Vec<usize>>>,
    handles: Mutex<Vec<thread::JoinHandle<()>>>,
}

impl Threads {
    pub(crate) fn new(
        name: String,
        stack_size: Option<usize>,
        affinity: Vec<Option<Vec<usize>>>,
    ) -> Threads {
        Threads {
            name,
            stack_size,
            affinity,
            handles: Mutex::new(Vec::new()),
        }
    }
}

impl Drop for Shared {
    /// The last reference is gone: every pool thread has exited (a frozen or abandoned
    /// one holds a reference for as long as it lives), so the kill registry goes back for
    /// reuse.
    fn drop(&mut self) {
        if let Some(kills) = self.kills {
            // Maybe in a task (the last handle dropped there): the spare list's lock.
            let _no_freeze = crate::handler::FreezeGuard::new();
            kills.recycle();
        }
    }
}

impl Shared {
    pub(crate) fn new(
        cores: Vec<Option<usize>>,
        spin: Duration,
        preempt: Option<Preempt>,
        kills: Option<&'static Kills>,
        threads: Threads,
        default_budget: Budget,
        cpu_accounting: bool,
    ) -> Self {
        let workers = cores.len();
        Self {
            injector: Injector::new(),
            slots: cores.into_iter().map(Slot::new).collect(),
            sleep: Sleep::new(workers),
            gate: Gate::new(),
            id: {
                static NEXT: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(1);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
            mode: AtomicU8::new(RUNNING),
            counters: PoolCounters::default(),
            live: Futex::new(0),
            spin,
            default_budget,
            cpu_accounting,
            preempt,
            kills,
            threads,
            forks: crate::sys::fork_count(),
        }
    }

    /// True in a child forked after the pool was built: its threads did not come along
    /// (fork copies only the calling thread), so nothing would ever run a task.
    pub(crate) fn forked(&self) -> bool {
        crate::sys::fork_count() != self.forks
    }

    /// Why a spawn with `budget` must be refused at once, if it must: a forked child of
    /// the process that built the pool, an invalid budget, a budget on a pool without
    /// preemption, or kills another handler has made unenforceable.
    pub(crate) fn refuses(&self, budget: Budget) -> Option<JoinError> {
        if self.forked() {
            return Some(JoinError::Forked);
        }
        if budget.invalid().is_some() {
            return Some(JoinError::InvalidBudget(budget));
        }
        if budget.is_unlimited() {
            return None;
        }
        match self.kills {
            None => Some(JoinError::BudgetUnsupported),
            Some(kills) if kills.handler_replaced() => Some(JoinError::KillsUnenforceable),
            Some(_) => None,
        }
    }

    /// A spawn from a thread that holds no slot of this pool: through the gate into the
    /// injector.
    pub(crate) fn spawn_outside<F, T>(&self, budget: Budget, func: F) -> Joiner<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let Some(entered) = self.gate.enter_outside() else {
            return self.refuse(func);
        };
        let (task, handle) = task::with_budget(func, self.id, budget);
        // Only the task that starts a backlog looks at the runners: the ones after it find
        // them armed already (or a runner free, which arms them as it starts with more
        // queued behind it). Looking at every spawn cost 10-15 % of tiny-task throughput
        // (the runners' state words are written by every task).
        let was_empty = self.injector.is_empty();
        self.injector.push(task);
        drop(entered);
        // Alone after the push counts too (read only when no sleeper was woken): a runner
        // may have taken the task that was there before this one, and found nothing
        // behind it to arm anyone for.
        if !self.sleep.notify_one() && (was_empty || self.injector.len() == 1) {
            self.contended(Backlog::One);
        }
        handle
    }

    /// Whether any slot has a carrier: a long task handed off, which runs on the idle time
    /// of the pool's cores (one load per slot).
    pub(crate) fn has_carriers(&self) -> bool {
        self.preempt
            .as_ref()
            .is_some_and(|p| p.reserves.iter().any(|r| r.carriers() > 0))
    }

    /// A runner has started a task (`record` is its own): tasks past their quantum on its
    /// peers go to the idle time (`handler::hand_off_long`).
    #[inline]
    pub(crate) fn hand_off_long(&self, record: &handler::Record) {
        if let Some(preempt) = &self.preempt {
            if preempt.clock.arms_on_contention() {
                handler::hand_off_long(preempt, record.started_ns());
            }
        }
    }

    /// Work is queued that no sleeping runner was woken for: the busy runners' quanta
    /// must end on time (`TimerClock::Contention`, `handler/tick.rs`).
    #[inline]
    pub(crate) fn contended(&self, backlog: Backlog) {
        if let Some(preempt) = &self.preempt {
            if preempt.clock.arms_on_contention() {
                handler::on_contention(preempt, backlog);
            }
        }
    }

    pub(crate) fn refuse<F, T>(&self, func: F) -> Joiner<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        task::rejected(func)
    }

    /// Rejects a queued task (counted only if no joiner claimed it first).
    pub(crate) fn discard(&self, task: Task) {
        if task.reject() {
            self.counters.discarded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The pool's identity, stored in its tasks so a join runs a task inline only on a
    /// runner of the pool that spawned it.
    pub(crate) fn id(&self) -> usize {
        self.id
    }

    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.gate.is_closed()
    }

    /// Acquire: a runner that sees `DRAIN` sees every push and count that shutdown step 2
    /// waited for.
    pub(crate) fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Acquire) {
            RUNNING => Mode::Running,
            DRAIN => Mode::Drain,
            _ => Mode::Discard,
        }
    }

    /// Shutdown step 3's exit condition for a runner that found no work.
    pub(crate) fn may_exit(&self) -> bool {
        match self.mode() {
            Mode::Running => false,
            Mode::Drain => self.all_finished(),
            Mode::Discard => true,
        }
    }

    /// Every accepted task has finished. Called after `mode()` returned `DRAIN`, so the
    /// accepted counts are final (shutdown step 2). A finished count read stale only delays
    /// the answer: the runner that finished the task counted it before its next sleep
    /// fence, so either its own re-check or ours sees both counts (the fence argument of
    /// `sync/sleep.rs`), and a runner that exits wakes every sleeper, which then acquires its
    /// counts from the wake (`runner::serve`).
    fn all_finished(&self) -> bool {
        self.unfinished() == 0
    }

    /// Shutdown steps 1–3. Idempotent.
    fn close(&self) {
        self.gate
            .close(self.slots.iter().map(|slot| &*slot.spawning));
        let _ = self
            .mode
            .compare_exchange(RUNNING, DRAIN, Ordering::SeqCst, Ordering::SeqCst);
        self.sleep.notify_all();
    }

    /// Shutdown step 5.
    fn discard_queued(&self) {
        self.mode.store(DISCARD, Ordering::SeqCst);
        self.sleep.notify_all();
        let stealers = self.slots.iter().map(|s| &s.stealer);
        loop {
            let mut found = false;
            while let Some(task) = steal(|| self.injector.steal()) {
                self.discard(task);
                found = true;
            }
            for stealer in stealers.clone() {
                while let Some(task) = steal(|| stealer.steal()) {
                    self.discard(task);
                    found = true;
                }
            }
            if !found {
                break;
            }
        }
    }

    /// Counts a pool thread in, before it is spawned.
    pub(crate) fn thread_started(&self) {
        self.live.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts a pool thread out, however it ends (or if it never started).
    /// Async-signal-safe.
    pub(crate) fn thread_exited(&self) {
        if self.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.live.wake_all();
        }
    }

    pub(crate) fn keep_handle(&self, handle: thread::JoinHandle<()>) {
        self.threads.handles.lock().push(handle);
    }

    /// Joins the threads that have finished (retired carriers), so their handles do not
    /// pile up.
    pub(crate) fn join_exited(&self) {
        let finished: Vec<_> = {
            let mut handles = self.threads.handles.lock();
            let (done, running) = handles.drain(..).partition(|h| h.is_finished());
            *handles = running;
            done
        };
        for handle in finished {
            let _ = handle.join();
        }
    }

    /// Tasks accepted and not finished (running, or queued).
    fn unfinished(&self) -> u64 {
        let mut accepted = self.gate.injected();
        let mut finished = self.counters.discarded.load(Ordering::Relaxed);
        for slot in self.slots.iter() {
            let (spawned, done) = slot.counters.accepted_and_finished();
            accepted += spawned;
            finished += done;
        }
        accepted.saturating_sub(finished)
    }

    /// Shutdown step 4: true if every pool thread exited (or was frozen) before
    /// `deadline`.
    fn wait_for_threads(&self, deadline: Option<Instant>) -> bool {
        loop {
            let live = self.live.load(Ordering::SeqCst);
            if live == 0 {
                return true;
            }
            let Some(timeout) = task::time_left(deadline) else {
                return false;
            };
            self.live.wait(live, timeout);
        }
    }

    /// True if `handle` is a frozen thread's: joining it would never return.
    fn is_frozen(&self, handle: &thread::JoinHandle<()>) -> bool {
        use std::os::unix::thread::JoinHandleExt;
        self.kills
            .is_some_and(|kills| kills.is_lost_thread(handle.as_pthread_t() as usize))
    }

    /// Shutdown steps 1–5 (see the module docs); from inside a task of the pool, 1–3.
    /// `inside`: called from a task of this pool, whose runner cannot wait for itself.
    pub(crate) fn shutdown_until(
        &self,
        deadline: Option<Instant>,
        inside: bool,
    ) -> Result<(), ShutdownTimedOut> {
        let _no_freeze = crate::handler::FreezeGuard::new();
        let shared = self;
        if shared.forked() {
            // No thread of the pool exists here to wait for, and nothing here may touch
            // its gate or queues: a parent thread may have been halfway through a spawn at
            // the fork, and would never finish it here. Spawns are refused already
            // (`refuses`), and handles made before the fork resolve with `Forked`
            // (`JoinHandle`).
            return Ok(());
        }
        shared.close();
        if inside {
            return Ok(());
        }
        if !shared.wait_for_threads(deadline) {
            shared.discard_queued();
            return Err(ShutdownTimedOut {
                busy_runners: shared.unfinished() as usize,
            });
        }
        let handles = std::mem::take(&mut *shared.threads.handles.lock());
        for thread in handles {
            if self.is_frozen(&thread) {
                // Detached: a frozen thread never exits.
                continue;
            }
            // A pool thread never unwinds (it aborts instead), so join cannot fail.
            let _ = thread.join();
        }
        Ok(())
    }
}

impl FrozenPool for Shared {
    /// A frozen thread: counted out (it never exits), and the runners woken, since its
    /// task now counts as finished and shutdown may be waiting for it. Async-signal-safe.
    fn thread_frozen(&self) {
        self.sleep.notify_all();
        self.thread_exited();
    }

    /// Loads of the queues' ends only (crossbeam's `is_empty`).
    fn work_waiting(&self) -> bool {
        !self.injector.is_empty() || self.slots.iter().any(|s| !s.stealer.is_empty())
    }
}
