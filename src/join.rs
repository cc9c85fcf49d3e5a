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
}

impl<T> JoinHandle<T> {
    pub(crate) fn new(task: Joiner<T>) -> JoinHandle<T> {
        JoinHandle { task }
    }

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

    fn wait_and_take(self, deadline: Option<Instant>) -> Result<Result<T, JoinError>, Self> {
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

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        self.task.state().detach();
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
