//! Runners: the thread holding a slot, and its loop.
//!
//! # The loop ([`serve`])
//!
//! 1. Note whether the runner may exit if it finds nothing: shutdown has begun and every
//!    accepted task has finished (or queued tasks are being discarded).
//! 2. Find a task: the slot's own deque, then a batch from the injector, then a batch
//!    stolen from a peer slot (starting at a random peer). Every 61st look starts at the
//!    injector, so a slot whose tasks keep spawning cannot starve it. Finding more than one
//!    task wakes another sleeping runner to steal the surplus.
//! 3. Run it on this thread's stack under `catch_unwind` (see `task/mod.rs`). A started task
//!    never moves: it lives and dies on the thread that started it. Back to 1.
//! 4. No task, and step 1 said so: wake every sleeping peer (they may be waiting for this
//!    runner's last task to count as finished) and exit. Otherwise spin for the configured time, looking
//!    for work and yielding now and then so a thread sharing the core (a spawner) can run.
//! 5. Still nothing: sleep on the slot's word (`sync/sleep.rs`) until a spawn, shutdown, or
//!    an exiting peer wakes it.
//!
//! A task that joins a handle of its own pool runs the awaited task inline if it is still
//! queued ([`run_inline`]), and otherwise blocks; it never runs an unrelated task while
//! it waits.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_deque::Worker;

use super::shared::{Mode, Shared};
use super::steal::{self, steal};
use crate::budget::Budget;
use crate::handler::{Backlog, Record};
use crate::runtime::slot::Slot;
use crate::sync::sleep::Sleep;
use crate::task::{self, Joiner, RunEnv, Supervisor, Task};

/// While spinning, how many `pause` instructions between two looks at the queues (a look
/// is a few loads of lines that stay cached until a spawn writes them), and how many looks
/// between two `sched_yield`s, which let a thread that shares the core (often the spawner)
/// run. Tuned with `cargo bench --bench dispatch`.
const PAUSES_PER_CHECK: u32 = 4;
const SPIN_ROUNDS_PER_YIELD: u32 = 8;

thread_local! {
    /// The runner on this thread, if any, while its loop is on the stack.
    static CURRENT: Cell<*const Runner> = const { Cell::new(ptr::null()) };
}

pub(crate) struct Runner {
    pub(crate) shared: Arc<Shared>,
    index: usize,
    /// xorshift state for picking the first victim to steal from.
    rng: Cell<u32>,
    /// Looks for work so far (the steal policy's `look`, `steal.rs`).
    looks: Cell<u32>,
    /// The last task taken from the injector left more there: the task about to start
    /// has a backlog behind it (`execute`).
    injector_backlog: Cell<bool>,
    /// This thread's record for the signal handler; `None` with preemption off.
    record: Option<&'static Record>,
}

/// Why [`serve`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Shutdown: no work is left and none can come.
    Exit,
    /// The slot was handed to a standby while a task ran; that task has now returned on
    /// this thread, which no longer holds the slot.
    HandedOff,
}

/// Calls `f` with the runner on this thread, if this thread is a runner.
pub(crate) fn with_current<R>(f: impl FnOnce(Option<&Runner>) -> R) -> R {
    let ptr = CURRENT.with(Cell::get);
    // SAFETY: `CURRENT` is non-null only while `Runner::main` is on this thread's stack,
    // with the runner borrowed there; everything that reads it runs inside that call
    // (task code, inline joins), so the runner outlives `f`.
    f(unsafe { ptr.as_ref() })
}

/// A join from inside a task: if this thread is a runner of `pool`, runs `task` here (it
/// does nothing if another thread has claimed the task already). On any other thread the
/// task is left to the pool's runners.
pub(crate) fn run_inline(pool: usize, task: Task) {
    // Runtime code inside the joining task: no freeze, but in the joined closure.
    let _no_freeze = crate::handler::FreezeGuard::new();
    with_current(|runner| match runner {
        Some(runner) if runner.shared.id() == pool => runner.run_nested(task),
        _ => drop(task),
    });
}

/// Spawns `func` on the pool of `shared` with `budget`: onto the running slot's deque from
/// a task of that pool, through the gate into the injector from anywhere else.
pub(crate) fn spawn<F, T>(shared: &Arc<Shared>, budget: Budget, func: F) -> Joiner<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    // A task spawning must not be frozen inside the spawn: it may hold the gate's
    // ticket, or the slot's deque mid-push.
    let _no_freeze = crate::handler::FreezeGuard::new();
    if let Some(error) = shared.refuses(budget) {
        return task::rejected_with(func, error);
    }
    with_current(|current| match current {
        Some(runner) if Arc::ptr_eq(&runner.shared, shared) => runner.spawn_local(budget, func),
        _ => shared.spawn_outside(budget, func),
    })
}

/// True on a thread running a task of the pool of `shared`.
pub(crate) fn inside(shared: &Arc<Shared>) -> bool {
    with_current(|r| r.is_some_and(|r| Arc::ptr_eq(&r.shared, shared)))
}

impl Runner {
    /// Holds slot `index` and serves it until shutdown or a handoff.
    pub(crate) fn main(
        shared: Arc<Shared>,
        index: usize,
        record: Option<&'static Record>,
    ) -> Served {
        let runner = Runner {
            shared,
            index,
            rng: Cell::new((index as u32).wrapping_mul(0x9E37_79B9) | 1),
            looks: Cell::new(0),
            injector_backlog: Cell::new(false),
            record,
        };
        if let (Some(record), Some(preempt)) = (record, &runner.shared.preempt) {
            // Whoever sees a task queued behind busy runners finds this one through it.
            preempt.reserves[index].set_holder(record.index.load(Ordering::Relaxed));
        }
        CURRENT.with(|c| c.set(&runner));
        let served = serve(&runner, &runner.shared.sleep, index);
        CURRENT.with(|c| c.set(ptr::null()));
        served
    }

    /// Runs a task from inside another one (an inline join): part of the outer task, so
    /// the record is left alone and a handoff carries both.
    fn run_nested(&self, task: Task) {
        if self.shared.mode() == Mode::Discard {
            self.shared.discard(task);
        } else {
            task.run_in(&self.env());
        }
    }

    /// What a task run by this runner needs to know about where it runs.
    fn env(&self) -> RunEnv<'_> {
        RunEnv {
            counters: &self.slot().counters,
            record: self.record,
            supervisor: self.shared.kills.map(|k| k as &'static dyn Supervisor),
            cpu_accounting: self.shared.cpu_accounting,
            pool: Some(&*self.shared),
        }
    }

    fn slot(&self) -> &Slot {
        &self.shared.slots[self.index]
    }

    fn local(&self) -> &Worker<Task> {
        // SAFETY: called only from the serve loop, where this runner holds slot `index`
        // (a handoff ends the loop), and from `spawn_local` inside a runtime section
        // entered while holding it (no handoff until the section ends).
        unsafe { self.slot().local() }
    }

    /// After taking a batch, let a sleeping peer steal part of it.
    fn share_surplus(&self) {
        if !self.local().is_empty() {
            self.shared.sleep.notify_one();
        }
    }

    fn next_victim(&self) -> usize {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng.set(x);
        x as usize
    }

    /// A spawn from a task running on this runner: it goes to the slot's own deque.
    pub(crate) fn spawn_local<F, T>(&self, budget: Budget, func: F) -> Joiner<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        // A runtime section: the slot's deque has one holder, and a handoff in the middle
        // of a push would give it two. A carrier no longer holds the slot: it spawns like
        // any thread outside the pool.
        if let Some(record) = self.record {
            if !record.enter_runtime() {
                return self.shared.spawn_outside(budget, func);
            }
        }
        let slot = self.slot();
        let mut starts_backlog = false;
        let handle = match self.shared.gate().enter_inside(&slot.spawning) {
            None => self.shared.refuse(func),
            Some(entered) => {
                let (task, handle) = task::with_budget(func, self.shared.id(), budget);
                slot.counters.local_spawn();
                starts_backlog = self.local().is_empty();
                self.local().push(task);
                drop(entered);
                handle
            }
        };
        // Still inside the section: a handoff of this thread in the middle of arming a
        // peer's timer would leave that arming to a thread at `SCHED_IDLE`.
        if !self.shared.sleep.notify_one() && starts_backlog {
            self.shared.contended(Backlog::One);
        }
        if let Some(record) = self.record {
            record.leave_runtime();
        }
        handle
    }
}

/// What the runner loop needs from a pool. The runner implements it with the real deques;
/// `loom-tests/` implements it with a model queue, so the loop it checks is this one.
pub trait Serve {
    /// A unit of work.
    type Task;
    /// Loop step 2: take a task from any queue this runner may take from.
    fn find_task(&self) -> Option<Self::Task>;
    /// Loop step 3. False if the slot was handed off while the task ran: the loop ends.
    fn execute(&self, task: Self::Task) -> bool;
    /// Whether any queue has work, without taking it (the sleep protocol's re-check).
    fn work_visible(&self) -> bool;
    /// Whether a runner that finds no work may exit: shutdown has begun and every accepted
    /// task has finished (`DRAIN`), or queued tasks are being discarded (`DISCARD`).
    fn may_exit(&self) -> bool;
    /// Loop step 4: spin for a while; true if work showed up or the runner may exit.
    fn spin_for_work(&self) -> bool;
}

/// The runner loop, for slot `slot`.
pub fn serve<S: Serve>(runner: &S, sleep: &Sleep, slot: usize) -> Served {
    loop {
        // Step 1 comes first: shutdown publishes `DRAIN` only after every accepted spawn
        // has pushed, so a runner that saw it may exit *before* an empty look has seen
        // every task it could have missed. (Reading it after the look let a runner exit
        // past a task pushed in between: `tests/regression_drain_strands_late_push.rs`.)
        let may_exit = runner.may_exit();
        if let Some(task) = runner.find_task() {
            if !runner.execute(task) {
                return Served::HandedOff;
            }
            continue;
        }
        if may_exit {
            // Peers asleep during shutdown wait for the last task to finish; this runner's
            // tasks may have been it. Their counts were written before this wake, so a
            // woken peer sees them.
            sleep.notify_all();
            return Served::Exit;
        }
        if runner.spin_for_work() {
            continue;
        }
        sleep.sleep(slot, || runner.work_visible() || runner.may_exit());
    }
}

impl Serve for Runner {
    type Task = Task;

    fn find_task(&self) -> Option<Task> {
        let local = self.local();
        let looks = self.looks.get().wrapping_add(1);
        self.looks.set(looks);
        // The order of `steal.rs`: own deque, injector, own deque, peers.
        if !steal::injector_first(looks) {
            if let Some(task) = local.pop() {
                return Some(task);
            }
        }
        if let Some(task) = steal(|| self.shared.injector.steal_batch_and_pop(local)) {
            self.slot().counters.took_from_injector();
            // Spawns after the first of a backlog arm nobody (`Shared::spawn_outside`): the
            // runner that takes from it does, if more is left.
            self.injector_backlog
                .set(self.shared.preempt.is_some() && !self.shared.injector.is_empty());
            self.share_surplus();
            return Some(task);
        }
        if let Some(task) = local.pop() {
            return Some(task);
        }
        let slots = &self.shared.slots;
        let start = self.next_victim() % slots.len();
        for victim in steal::victims(self.index, slots.len(), start) {
            if let Some(task) = steal(|| slots[victim].stealer.steal_batch_and_pop(local)) {
                self.slot().counters.stole();
                self.share_surplus();
                return Some(task);
            }
        }
        None
    }

    /// Runs `task`, or rejects it if a shutdown ran out of time. With preemption on, the
    /// record tells the handler a task is running and since when.
    fn execute(&self, task: Task) -> bool {
        if self.shared.mode() == Mode::Discard {
            self.shared.discard(task);
            return true;
        }
        let env = self.env();
        match self.record {
            None => {
                task.run_in(&env);
                true
            }
            Some(record) => {
                record.begin_task();
                // More queued behind this task, on the slot's own deque (a batch taken, or
                // spawned by earlier tasks) or left in the injector by this runner's take:
                // the busy runners' quanta must end on time. Only while this runner's own
                // one-shot is unarmed: one load of its record, then of its own deque.
                let injector_backlog = self.injector_backlog.replace(false);
                if !record.is_armed() && (injector_backlog || !self.local().is_empty()) {
                    self.shared.contended(Backlog::Many);
                }
                self.shared.hand_off_long(record);
                task.run_in(&env);
                let kept = record.end_task();
                if kept && record.take_rewatch() {
                    // Its end disarmed the one-shot that watched a backlog: the next
                    // start looks for one even if it takes its task from elsewhere.
                    self.injector_backlog.set(true);
                }
                kept
            }
        }
    }

    fn work_visible(&self) -> bool {
        !self.shared.injector.is_empty() || self.shared.slots.iter().any(|s| !s.stealer.is_empty())
    }

    fn may_exit(&self) -> bool {
        self.shared.may_exit()
    }

    /// Polls the queues, yielding the core every few rounds.
    fn spin_for_work(&self) -> bool {
        let spin = self.shared.spin;
        // A carrier (a long task handed off, at `SCHED_IDLE`) runs only on cores that
        // nothing else wants: a spinning runner would take its core from it.
        if spin.is_zero() || self.shared.has_carriers() {
            self.pause();
            return false;
        }
        let until = Instant::now() + spin;
        let mut round = 0u32;
        loop {
            if self.work_visible() || self.may_exit() {
                return true;
            }
            round = round.wrapping_add(1);
            if round % SPIN_ROUNDS_PER_YIELD == 0 {
                // The clock is read here only: it costs as much as a look at the queues.
                if Instant::now() >= until {
                    self.pause();
                    return false;
                }
                std::thread::yield_now();
            } else {
                for _ in 0..PAUSES_PER_CHECK {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

impl Runner {
    /// About to sleep: no timer expiries while idle.
    fn pause(&self) {
        if let Some(record) = self.record {
            record.pause();
        }
    }
}
