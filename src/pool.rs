//! The pool: [`Pool`], the owner that shuts it down, and [`Handle`], a spawner.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::budget::Budget;
use crate::error::ShutdownTimedOut;
use crate::join::JoinHandle;
use crate::kill::Kills;
use crate::runtime::runner;
use crate::runtime::shared::{Mode, Shared};
use crate::stats::{PreemptSnapshot, SlotStats, Stats};

/// A pool of runner threads, one per slot, each pinned to its own core.
///
/// See the [crate documentation](crate) for the model. Dropping the pool shuts it down
/// gracefully: see [`Pool::shutdown`].
pub struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Pool {
        Pool { shared }
    }

    /// Runs `func` on the pool and returns a handle to its result.
    ///
    /// From a thread outside the pool the task goes to the global queue; from a task of
    /// this pool it goes to the running slot's own queue (idle slots steal from it). Never
    /// blocks and never panics: after [`shutdown`](Pool::shutdown) has begun, the handle
    /// resolves at once with [`JoinError::Shutdown`](crate::JoinError::Shutdown) and `func`
    /// is dropped unrun.
    pub fn spawn<F, T>(&self, func: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        JoinHandle::new(runner::spawn(
            &self.shared,
            self.shared.default_budget,
            func,
        ))
    }

    /// Like [`spawn`](Pool::spawn), with a [`Budget`] of CPU and/or wall-clock time for
    /// this task instead of the pool's default ([`Builder::default_budget`](crate::Builder::default_budget)). When it runs
    /// out, the task is cancelled (its next [`checkpoint`](crate::checkpoint) unwinds),
    /// and frozen if it has not returned within the budget's grace period; the handle then
    /// resolves with [`JoinError::Killed`](crate::JoinError::Killed). On a pool built with preemption off, a task
    /// with a budget is not run: its handle resolves with [`JoinError::BudgetUnsupported`](crate::JoinError::BudgetUnsupported).
    pub fn spawn_with<F, T>(&self, budget: Budget, func: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        JoinHandle::new(runner::spawn(&self.shared, budget, func))
    }

    /// A cheap, cloneable handle that can spawn onto this pool from anywhere, including
    /// from inside its own tasks.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// The number of slots (and runner threads).
    pub fn workers(&self) -> usize {
        self.shared.slots.len()
    }

    /// A snapshot of the pool's counters.
    pub fn stats(&self) -> Stats {
        stats(&self.shared)
    }

    /// True once shutdown has begun: spawns are refused from then on.
    pub fn is_shutdown(&self) -> bool {
        self.shared.is_closed()
    }

    /// Shuts the pool down gracefully and waits for it.
    ///
    /// New spawns are refused from the moment this is called; every task accepted before
    /// runs to completion (queued tasks included), then the runner threads exit and are
    /// joined. It waits as long as the running tasks take; use
    /// [`shutdown_timeout`](Pool::shutdown_timeout) to bound that. Calling it again, or
    /// from several threads, is fine. Called from inside a task of this pool it closes the
    /// pool and returns without waiting, since the caller's own runner is busy running it.
    pub fn shutdown(&self) {
        // Without a deadline the wait cannot time out.
        let _ = self.shutdown_until(None);
    }

    /// Like [`shutdown`](Pool::shutdown), but waits at most `timeout` for the tasks to
    /// finish. At the deadline, tasks still queued are dropped unrun and their handles
    /// resolve with [`JoinError::Shutdown`](crate::JoinError::Shutdown); runners still
    /// inside a task are detached, exit when it returns, and are counted in the error.
    pub fn shutdown_timeout(&self, timeout: Duration) -> Result<(), ShutdownTimedOut> {
        self.shutdown_until(Instant::now().checked_add(timeout))
    }

    fn shutdown_until(&self, deadline: Option<Instant>) -> Result<(), ShutdownTimedOut> {
        let inside = runner::inside(&self.shared);
        self.shared.shutdown_until(deadline, inside)
    }
}

impl Drop for Pool {
    /// [`shutdown`](Pool::shutdown), unless a [`shutdown_timeout`](Pool::shutdown_timeout)
    /// already gave up on some runners: those stay detached.
    fn drop(&mut self) {
        if self.shared.mode() != Mode::Discard {
            self.shutdown();
        }
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.workers())
            .field("shut_down", &self.is_shutdown())
            .finish()
    }
}

/// A cloneable handle for spawning onto a [`Pool`] without owning it.
///
/// It keeps the pool's queues alive but not its runners: once the pool is shut down,
/// spawns through a handle are refused like any other.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// The same as [`Pool::spawn`].
    pub fn spawn<F, T>(&self, func: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        JoinHandle::new(runner::spawn(
            &self.shared,
            self.shared.default_budget,
            func,
        ))
    }

    /// The same as [`Pool::spawn_with`].
    pub fn spawn_with<F, T>(&self, budget: Budget, func: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        JoinHandle::new(runner::spawn(&self.shared, budget, func))
    }

    /// The same as [`Pool::stats`].
    pub fn stats(&self) -> Stats {
        stats(&self.shared)
    }

    /// The same as [`Pool::is_shutdown`].
    pub fn is_shutdown(&self) -> bool {
        self.shared.is_closed()
    }

    /// A handle to the pool whose task is running on this thread, if any.
    pub fn current() -> Option<Handle> {
        runner::with_current(|r| {
            r.map(|r| Handle {
                shared: r.shared.clone(),
            })
        })
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("workers", &self.shared.slots.len())
            .field("shut_down", &self.is_shutdown())
            .finish()
    }
}

/// A snapshot of the pool's counters.
fn stats(shared: &Shared) -> Stats {
    // Called from task code too: no freeze while it holds the monitor's locks.
    let _no_freeze = crate::handler::FreezeGuard::new();
    let preempt: Vec<PreemptSnapshot> = (0..shared.slots.len())
        .map(|i| {
            shared
                .preempt
                .as_ref()
                .map_or_else(PreemptSnapshot::default, |p| {
                    PreemptSnapshot::of(&p.reserves[i])
                })
        })
        .collect();
    let slots = shared
        .slots
        .iter()
        .enumerate()
        .map(|(i, slot)| {
            SlotStats::of(
                &slot.counters,
                slot.core,
                shared.sleep.counts(i),
                preempt[i],
            )
        })
        .collect();
    let kills = shared.kills.map(Kills::snapshot).unwrap_or_default();
    Stats::collect(
        shared.gate().injected(),
        &shared.counters,
        slots,
        &preempt,
        kills,
    )
}

/// Runs `func`, which is about to block (a read, a lock, a wait on another task's
/// channel), after giving the calling task's slot to a standby thread: the slot goes on
/// serving its queue while `func` blocks. tokio's function of the same name does the same
/// for its workers.
///
/// The calling thread carries on as a carrier (the state of a task handed off past its
/// quantum): after `func` returns, the rest of the task runs in the idle time of the
/// pool's cores, and the thread rejoins the pool's threads when the task ends. So call
/// it around the blocking part only, near the task's end if it can be.
///
/// Elsewhere it just runs `func`: outside a pool's task, on a pool with preemption off (it
/// has no standbys), on a carrier already, at the slot's cap of carriers, or when no
/// standby is parked. [`Stats::blocking_handoffs`](crate::Stats::blocking_handoffs)
/// counts the slots it gave up.
///
/// A [`join`](crate::JoinHandle::join) (or a timed join) inside a task that has to sleep
/// does the same on its own.
pub fn block_in_place<R>(func: impl FnOnce() -> R) -> R {
    crate::handler::hand_off_before_blocking();
    func()
}
