//! The handle to a task's result: [`JoinHandle`].

use std::time::{Duration, Instant};

use crate::budget::KillReason;
use crate::error::JoinError;
use crate::sys::async_safe;
use crate::task::Joiner;

/// An owned permission to wait for a task and take its result.
///
/// Dropping the handle detaches the task: it still runs, and its result is dropped.
#[must_use = "dropping a JoinHandle detaches the task; call join() to get its result"]
pub struct JoinHandle<T> {
    task: Joiner<T>,
    /// The result was taken by a poll that returned `Ready`.
    taken: bool,
    /// The process's fork count when the handle was made (`sys::fork_count`).
    forks: u64,
}

impl<T> JoinHandle<T> {
    pub(crate) fn new(task: Joiner<T>) -> JoinHandle<T> {
        JoinHandle {
            task,
            taken: false,
            forks: crate::sys::fork_count(),
        }
    }

    /// In a child forked since the handle was made, a task not finished at the fork never
    /// finishes here: no thread of its pool came along.
    fn orphaned(&self) -> bool {
        crate::sys::fork_count() != self.forks && !self.task.state().is_complete()
    }

    /// Panics if a poll took the result already (a misuse of the future's contract).
    #[track_caller]
    fn not_taken(&self) {
        assert!(
            !self.taken,
            "microsched: JoinHandle used after its future returned Ready"
        );
    }

    /// Waits for the task and returns its value, or why there is none.
    ///
    /// Called from inside a task of the same pool while the awaited task is still queued,
    /// it runs that task right here, on the calling runner, instead of blocking: so a task
    /// may spawn and join children even on a one-worker pool. It never runs any *other*
    /// task while it waits (a joiner that holds a lock cannot be handed an unrelated task
    /// that wants the same lock).
    ///
    /// # Panics
    ///
    /// If the handle, polled as a future, has returned `Ready` already.
    #[track_caller]
    pub fn join(self) -> Result<T, JoinError> {
        self.not_taken();
        if self.orphaned() {
            return Err(JoinError::Forked);
        }
        let state = self.task.state();
        if !state.is_complete() {
            if let Some((pool, task)) = self.task.clone().inline() {
                crate::runtime::runner::run_inline(pool, task);
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

    #[track_caller]
    fn wait_and_take(self, deadline: Option<Instant>) -> Result<Result<T, JoinError>, Self> {
        self.not_taken();
        if self.orphaned() {
            return Ok(Err(JoinError::Forked));
        }
        let state = self.task.state();
        if state.wait(deadline) {
            // SAFETY: complete; `self` is the only handle and is consumed here.
            Ok(unsafe { state.take() })
        } else {
            Err(self)
        }
    }

    /// Like [`join`](JoinHandle::join), and also returns the CPU time the task used, when
    /// it was measured: for a task with a [`Budget`](crate::Budget), or for every task of a pool built
    /// with [`Builder::cpu_accounting`](crate::Builder::cpu_accounting). (Measuring costs
    /// two `clock_gettime` syscalls per task, about 1 µs on a VM, more than a short task's
    /// whole dispatch.)
    pub fn join_with_cpu_time(self) -> (Result<T, JoinError>, Option<Duration>) {
        let task = self.task.clone();
        let result = self.join();
        (result, task.state().cpu_time())
    }

    /// Asks the task to stop: sets its cancel flag, so its next
    /// [`checkpoint`](crate::checkpoint) unwinds, and freezes it if it has not returned when its budget's
    /// grace period has passed (the pool default's, for a task spawned without one). A task
    /// still queued never starts. Returns at once; `join` tells the outcome, which is
    /// [`Killed`](crate::Killed) with [`KillReason::Cancelled`](crate::KillReason::Cancelled) unless the task finished (or its budget
    /// ran out) first. Without preemption only the cooperative part applies.
    pub fn cancel(&self) {
        // Runtime code (the monitor's registry lock): no freeze of a task calling this.
        let _no_freeze = crate::handler::FreezeGuard::new();
        crate::sys::init_time_base();
        let Some(task) = self.task.clone().task() else {
            return;
        };
        let control = task.control();
        if control.kill(KillReason::Cancelled, async_safe::monotonic_ns())
            && control.thread().is_some()
        {
            // Set before `thread`, which was read after it (SeqCst).
            if let Some(supervisor) = task.supervisor() {
                supervisor.watch(task);
            }
        }
    }

    /// True once the task has finished (with a value, a panic, or a rejection): `join`
    /// will then return at once.
    pub fn is_finished(&self) -> bool {
        self.task.state().is_complete()
    }
}

/// Awaiting a handle waits for the task without blocking a thread: the handle leaves the
/// task's waker in its join state, and the task's end wakes it. Works on any executor.
///
/// Whoever completes the task (its runner, the signal handler freezing it, the monitor
/// abandoning it) hands the wake to the process's waker thread, `microsched-wake`, which
/// wakes the executor: no thread of a pool ever runs a waker (it is the executor's code,
/// or a tenant's, and may lock, allocate or never return). The wake is as late as the
/// kernel takes to run a woken thread: tens of µs on an idle core, up to a scheduler slice
/// (a few ms) when every core is busy. A waker that keeps that thread more than 100 ms
/// is left to it, and a new waker thread takes over.
///
/// Dropping the handle (or a future that owns it) detaches the task, as
/// [`JoinHandle`]'s `Drop` always does. Awaiting never runs the task inline, unlike
/// [`join`](JoinHandle::join); a task that awaits its own queued child with a blocking
/// executor on a one-worker pool waits until a later `join` or a free worker runs it.
///
/// # Panics
///
/// Polling again after `Ready` panics, like tokio's `JoinHandle`.
impl<T> std::future::Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    #[track_caller]
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        this.not_taken();
        if this.orphaned() {
            this.taken = true;
            return std::task::Poll::Ready(Err(JoinError::Forked));
        }
        let state = this.task.state();
        if !state.is_complete() && !state.register(cx.waker()) {
            return std::task::Poll::Pending;
        }
        this.taken = true;
        state.clear_waker();
        // SAFETY: complete (seen with Acquire, by `is_complete` or by `register`'s
        // read-modify-write); this is the only handle, and `taken` keeps it from taking
        // twice.
        std::task::Poll::Ready(unsafe { state.take() })
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        let state = self.task.state();
        state.clear_waker();
        state.detach();
    }
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// The second reference a joiner would run inline (for the loom tests).
#[cfg(loom)]
pub fn inline_task<T>(handle: &JoinHandle<T>) -> Option<crate::task::Task> {
    handle.task.clone().inline().map(|(_, task)| task)
}

/// A task and its handle (for the loom tests).
#[cfg(loom)]
pub fn new_task<F, T>(func: F, pool: usize) -> (crate::task::Task, JoinHandle<T>)
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (task, joiner) = crate::task::new(func, pool);
    (task, JoinHandle::new(joiner))
}
