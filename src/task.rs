//! Tasks: a closure, the slot its result goes to, and the handle that reads it.
//!
//! # One allocation per task
//!
//! `spawn` makes one `Arc<TaskCell<F, T>>` and hands out two views of it: a [`Task`]
//! (`Arc<dyn Runnable>`, type-erased, what the queues carry) and a [`JoinHandle<T>`]
//! (`Arc<dyn Join<T>>`, what the caller keeps).
//!
//! # Protocol (the task word, a [`Futex`])
//!
//! The word has three bits: `CLAIMED` (some thread has taken the right to run or reject the
//! task), `COMPLETE` (the output is written) and `WAITING` (a joiner may be asleep on the
//! word).
//!
//! 1. A task can be reached twice: through its queue entry (a [`Task`]) and, while it is
//!    queued, by a joiner on a runner of the same pool, which runs it inline rather than
//!    wait for it. Whoever wins `fetch_or(CLAIMED)` takes the closure and will write the
//!    output; the loser drops its reference and does nothing else. Queues hand each entry
//!    out once, so there are at most two contenders.
//! 2. The winner writes the output, then `fetch_or(COMPLETE, Release)`. The release
//!    publishes the output to whoever acquires `COMPLETE`.
//! 3. If the word it replaced had `WAITING`, it wakes all waiters on the word. Its own
//!    `Arc` keeps the word alive across the wake.
//! 4. A joiner spins briefly on `COMPLETE` (Acquire), then `fetch_or(WAITING, Acquire)`:
//!    both read-modify-writes are totally ordered on the word, so either the joiner sees
//!    `COMPLETE` in the value it replaced and returns, or the winner sees `WAITING` in the
//!    value it replaced and wakes it. The joiner then sleeps while the word still holds the
//!    value it wrote; the kernel compares and queues atomically, so the wake cannot be
//!    lost (any other change of the word, such as `CLAIMED`, just makes it look again).
//! 5. Having observed `COMPLETE` with Acquire, the handle takes the output. `join`
//!    consumes the handle, so the output is taken at most once.

use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{JoinError, PanicPayload};
use crate::loom::{Futex, Ordering, UnsafeCell};
use crate::stats::SlotCounters;

const COMPLETE: u32 = 0b001;
const WAITING: u32 = 0b010;
const CLAIMED: u32 = 0b100;

/// How long a joiner spins on the word before it sleeps. A futex sleep plus wake costs
/// ~7 µs of latency on the machines this was tuned on (MEASURED.md), so a task that is
/// about to finish is cheaper to wait for awake; past a few µs, sleeping frees the core
/// for the runner, which may share it. Measured with `cargo bench --bench dispatch`.
const JOIN_SPIN: Duration = if cfg!(loom) {
    Duration::ZERO
} else {
    Duration::from_micros(20)
};

/// The result slot of one task and the word its joiner waits on.
pub(crate) struct JoinState<T> {
    word: Futex,
    output: UnsafeCell<Option<Result<T, JoinError>>>,
}

impl<T> JoinState<T> {
    fn new() -> Self {
        Self {
            word: Futex::new(0),
            output: UnsafeCell::new(None),
        }
    }

    /// A state that is complete from the start: a task rejected at `spawn`.
    fn completed(result: Result<T, JoinError>) -> Self {
        Self {
            word: Futex::new(CLAIMED | COMPLETE),
            output: UnsafeCell::new(Some(result)),
        }
    }

    /// Protocol step 1: true for exactly one caller.
    fn claim(&self) -> bool {
        // Acquire: the winner reads the closure, written before the task was published.
        self.word.fetch_or(CLAIMED, Ordering::Acquire) & CLAIMED == 0
    }

    /// Protocol steps 2–3. Called once, by the thread that won the claim.
    fn complete(&self, result: Result<T, JoinError>) {
        // SAFETY: step 1: only the claim's winner writes the cell, and the handle reads it
        // only after seeing `COMPLETE`, which is set below.
        self.output.with_mut(|out| unsafe { *out = Some(result) });
        let prev = self.word.fetch_or(COMPLETE, Ordering::Release);
        if prev & WAITING != 0 {
            self.word.wake_all();
        }
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.word.load(Ordering::Acquire) & COMPLETE != 0
    }

    /// Protocol step 4. Returns true once complete, false if `deadline` passed first.
    fn wait(&self, deadline: Option<Instant>) -> bool {
        if self.is_complete() {
            return true;
        }
        let mut spin_until = Instant::now() + JOIN_SPIN;
        if let Some(deadline) = deadline {
            spin_until = spin_until.min(deadline);
        }
        let mut round = 0u32;
        while round % 64 != 0 || Instant::now() < spin_until {
            std::hint::spin_loop();
            if self.is_complete() {
                return true;
            }
            round = round.wrapping_add(1);
        }
        loop {
            let prev = self.word.fetch_or(WAITING, Ordering::Acquire);
            if prev & COMPLETE != 0 {
                return true;
            }
            let timeout = match deadline {
                None => None,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return false,
                },
            };
            self.word.wait(prev | WAITING, timeout);
        }
    }

    /// Protocol step 5.
    ///
    /// # Safety
    ///
    /// The caller is the task's only `JoinHandle`, and it has seen `is_complete()` (Acquire).
    unsafe fn take(&self) -> Result<T, JoinError> {
        // SAFETY: the caller's contract: the runner wrote the cell before setting
        // `COMPLETE` and never touches it again; no other handle exists.
        match self.output.with_mut(|out| unsafe { (*out).take() }) {
            Some(result) => result,
            None => unreachable!("a complete task's output is taken once, by its only handle"),
        }
    }
}

/// A task's closure and its result slot, in one allocation.
struct TaskCell<F, T> {
    join: JoinState<T>,
    /// The pool the task was spawned on (the address of its shared state): only that
    /// pool's runners may run it inline from a join.
    pool: usize,
    func: UnsafeCell<Option<F>>,
}

// SAFETY: `Sync` lets the queue entry and the handle share `&TaskCell`. `join` is `Sync` on
// its own (below); `func` is touched only by the thread that won the claim (step 1), so no
// two threads ever reach it at once. The closure is moved to that thread, never shared, so
// `F: Send` suffices.
unsafe impl<F: Send, T: Send> Sync for TaskCell<F, T> {}

/// What the queues carry: run or reject a task without knowing its types.
trait Runnable: Send + Sync {
    /// Protocol step 1.
    fn claim(&self) -> bool;
    /// Runs the closure under `catch_unwind`, counts the outcome in `counters`, then
    /// publishes it. Only after winning the claim.
    fn run_claimed(&self, counters: &SlotCounters);
    /// Drops the closure unrun and resolves the handle with [`JoinError::Shutdown`]. Only
    /// after winning the claim.
    fn reject_claimed(&self);
}

impl<F, T> Runnable for TaskCell<F, T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    fn claim(&self) -> bool {
        self.join.claim()
    }

    fn run_claimed(&self, counters: &SlotCounters) {
        // SAFETY: step 1: this thread won the claim, so no other thread touches `func`.
        let Some(func) = self.func.with_mut(|func| unsafe { (*func).take() }) else {
            unreachable!("only the claim's winner takes the closure")
        };
        let result = panic::catch_unwind(AssertUnwindSafe(func))
            .map_err(|payload| JoinError::Panicked(PanicPayload::new(payload)));
        // Counted before publishing, so a caller that has joined every task sees them all
        // in `Pool::stats`, and shutdown can tell when every accepted task is done.
        counters.record_outcome(result.is_err());
        self.join.complete(result);
    }

    fn reject_claimed(&self) {
        // SAFETY: step 1, as in `run_claimed`.
        let func = self.func.with_mut(|func| unsafe { (*func).take() });
        drop_quietly(func);
        self.join.complete(Err(JoinError::Shutdown));
    }
}

/// A reference to a task that may run it: a queue entry, or a joiner's inline claim.
/// Dropping one without `run` or `reject` is fine only if the other reference exists;
/// every path that pops a queue entry ends in one of the two.
pub struct Task(Arc<dyn Runnable>);

impl Task {
    /// Runs the task on this thread, unless another thread claimed it first; returns
    /// whether this call ran it. Never unwinds: the closure's panic is caught and carried
    /// in the handle; a panic from dropping the last reference to the result (the handle
    /// already gone) is caught and its payload leaked.
    pub fn run(self, counters: &SlotCounters) -> bool {
        let won = self.0.claim();
        if won {
            self.0.run_claimed(counters);
        }
        drop_quietly(self.0);
        won
    }

    /// Resolves the task's handle with [`JoinError::Shutdown`] without running it, unless
    /// another thread claimed it first; returns whether this call rejected it.
    pub fn reject(self) -> bool {
        let won = self.0.claim();
        if won {
            self.0.reject_claimed();
        }
        drop_quietly(self.0);
        won
    }
}

/// Drops `value`, catching a panic from its destructor.
///
/// The runtime drops closures it rejects and results nobody will read; those destructors
/// are user code and may panic, and a runner must not unwind. The payload of such a panic
/// is leaked rather than dropped, because dropping it could panic again.
pub(crate) fn drop_quietly<V>(value: V) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(move || drop(value))) {
        mem::forget(payload);
    }
}

/// The handle's view of a task, whatever the closure's type.
trait Join<T>: Send + Sync {
    fn state(&self) -> &JoinState<T>;
    /// The pool that may run the task inline, and a second reference to run it with; `None`
    /// for a task that was never queued.
    fn inline(self: Arc<Self>) -> Option<(usize, Task)>;
}

impl<F, T> Join<T> for TaskCell<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    fn state(&self) -> &JoinState<T> {
        &self.join
    }

    fn inline(self: Arc<Self>) -> Option<(usize, Task)> {
        Some((self.pool, Task(self)))
    }
}

impl<T: Send> Join<T> for JoinState<T> {
    fn state(&self) -> &JoinState<T> {
        self
    }

    fn inline(self: Arc<Self>) -> Option<(usize, Task)> {
        None
    }
}

// SAFETY: the threads holding a task share `&JoinState`. The word is atomic. The output
// cell is written once, by the claim's winner, before `COMPLETE` is set with Release, and
// read only by the single handle after it has seen `COMPLETE` with Acquire (protocol steps
// 1-5), so no two threads touch it unsynchronised. The output is moved from the winner to
// the handle, never shared, so `T: Send` suffices.
unsafe impl<T: Send> Sync for JoinState<T> {}

/// Makes a task for `func`, spawned on the pool identified by `pool`, and the handle that
/// will receive its result.
pub fn new<F, T>(func: F, pool: usize) -> (Task, JoinHandle<T>)
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let cell = Arc::new(TaskCell {
        join: JoinState::new(),
        pool,
        func: UnsafeCell::new(Some(func)),
    });
    let handle = JoinHandle { task: cell.clone() };
    (Task(cell), handle)
}

/// A handle resolved at once with [`JoinError::Shutdown`], for a spawn on a closed pool.
pub(crate) fn rejected<F, T>(func: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    drop_quietly(func);
    JoinHandle {
        task: Arc::new(JoinState::completed(Err(JoinError::Shutdown))),
    }
}

/// The second reference a joiner would run inline (for the loom tests).
#[cfg(loom)]
pub fn inline_task<T>(handle: &JoinHandle<T>) -> Option<Task> {
    handle.task.clone().inline().map(|(_, task)| task)
}

/// An owned permission to wait for a task and take its result.
///
/// Dropping the handle detaches the task: it still runs, and its result is dropped.
#[must_use = "dropping a JoinHandle detaches the task; call join() to get its result"]
pub struct JoinHandle<T> {
    task: Arc<dyn Join<T>>,
}

impl<T> JoinHandle<T> {
    /// Waits for the task and returns its value, or why there is none.
    ///
    /// Called from inside a task of the same pool while the awaited task is still queued,
    /// it runs that task right here, on the calling runner, instead of blocking: so a task
    /// may spawn and join children even on a one-worker pool. It never runs any *other*
    /// task while it waits (a joiner that holds a lock cannot be handed an unrelated task
    /// that wants the same lock).
    pub fn join(self) -> Result<T, JoinError> {
        let state = self.task.state();
        if !state.is_complete() {
            if let Some((pool, task)) = self.task.clone().inline() {
                crate::runner::run_inline(pool, task);
            }
        }
        state.wait(None);
        // SAFETY: `wait(None)` returns only once complete; `self` is the only handle and is
        // consumed here.
        unsafe { state.take() }
    }

    /// Waits at most `timeout`. On time-out the handle comes back in `Err`, so the caller
    /// can wait again or drop it.
    ///
    /// Unlike [`join`](JoinHandle::join) it never runs the task inline, since that could
    /// not be stopped at the deadline: inside a one-worker pool, a timed join of a queued
    /// child times out, and a later `join` runs it.
    pub fn join_timeout(self, timeout: Duration) -> Result<Result<T, JoinError>, Self> {
        // A deadline too far away to represent is no deadline (still never inline).
        self.wait_and_take(Instant::now().checked_add(timeout))
    }

    /// Waits until `deadline` at the latest. On time-out the handle comes back in `Err`.
    /// Like [`join_timeout`](JoinHandle::join_timeout), it never runs the task inline.
    pub fn join_deadline(self, deadline: Instant) -> Result<Result<T, JoinError>, Self> {
        self.wait_and_take(Some(deadline))
    }

    fn wait_and_take(self, deadline: Option<Instant>) -> Result<Result<T, JoinError>, Self> {
        let state = self.task.state();
        if state.wait(deadline) {
            // SAFETY: complete; `self` is the only handle and is consumed here.
            Ok(unsafe { state.take() })
        } else {
            Err(self)
        }
    }

    /// True once the task has finished (with a value, a panic, or a rejection): `join`
    /// will then return at once.
    pub fn is_finished(&self) -> bool {
        self.task.state().is_complete()
    }
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}
