//! Budgets: how much a task may use before it is cancelled, then frozen.
//!
//! A [`Budget`] bounds a task's CPU time, its wall-clock time since it started, or both.
//! When either runs out (or [`JoinHandle::cancel`](crate::JoinHandle::cancel) is called),
//! the task's cancel flag is set: its next [`checkpoint`](crate::checkpoint) unwinds from
//! that call, so its destructors run and the mutexes it holds are poisoned, and the
//! handle resolves with [`Killed`] `{ how: KillHow::Cancelled, .. }`. A task that has not
//! returned when the grace period after that has passed is **frozen**: its thread stops
//! for good, at a point where it holds no process-wide lock (see `kill.rs`), and the
//! handle resolves with `how: KillHow::Frozen`.

use std::fmt;
use std::time::{Duration, Instant};

/// The grace period a [`Budget`] gives unless told otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_millis(10);

/// The largest budget or grace period accepted (a year): anything longer is a mistake,
/// and would overflow the monitor's nanosecond deadlines.
pub const MAX_BUDGET: Duration = Duration::from_secs(365 * 24 * 3600);

/// How much CPU time and wall-clock time a task may use, and how long it has to return
/// once cancelled before it is frozen.
///
/// ```
/// use std::time::Duration;
/// use microsched::Budget;
/// let b = Budget::cpu(Duration::from_millis(100))
///     .and_wall(Duration::from_secs(1))
///     .grace(Duration::from_millis(5));
/// assert_eq!(b.cpu_limit(), Some(Duration::from_millis(100)));
/// assert!(Budget::unlimited().is_unlimited());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    cpu: Option<Duration>,
    wall: Option<Duration>,
    grace: Duration,
}

impl Budget {
    /// No limit: the task runs until it returns (it can still be cancelled through its
    /// handle).
    pub const fn unlimited() -> Budget {
        Budget {
            cpu: None,
            wall: None,
            grace: DEFAULT_GRACE,
        }
    }

    /// At most `limit` of CPU time (the task's thread's CPU-time clock, from when the task
    /// starts).
    pub const fn cpu(limit: Duration) -> Budget {
        Budget::unlimited().and_cpu(limit)
    }

    /// At most `limit` of wall-clock time from when the task starts running (time spent
    /// queued does not count).
    pub const fn wall(limit: Duration) -> Budget {
        Budget::unlimited().and_wall(limit)
    }

    /// This budget with a CPU-time limit too.
    pub const fn and_cpu(mut self, limit: Duration) -> Budget {
        self.cpu = Some(limit);
        self
    }

    /// This budget with a wall-clock limit too.
    pub const fn and_wall(mut self, limit: Duration) -> Budget {
        self.wall = Some(limit);
        self
    }

    /// How long a cancelled task has to return before it is frozen (default
    /// [`DEFAULT_GRACE`]). Zero freezes at once, at the first point where that is safe.
    pub const fn grace(mut self, grace: Duration) -> Budget {
        self.grace = grace;
        self
    }

    /// The CPU-time limit, if any.
    pub fn cpu_limit(&self) -> Option<Duration> {
        self.cpu
    }

    /// The wall-clock limit, if any.
    pub fn wall_limit(&self) -> Option<Duration> {
        self.wall
    }

    /// The grace period between the cancel and the freeze.
    pub fn grace_period(&self) -> Duration {
        self.grace
    }

    /// True if neither CPU nor wall time is limited.
    pub fn is_unlimited(&self) -> bool {
        self.cpu.is_none() && self.wall.is_none()
    }

    /// The first limit that is zero or longer than [`MAX_BUDGET`], if any.
    pub(crate) fn invalid(&self) -> Option<Duration> {
        [self.cpu, self.wall, Some(self.grace)]
            .into_iter()
            .flatten()
            .find(|d| *d > MAX_BUDGET)
            .or([self.cpu, self.wall]
                .into_iter()
                .flatten()
                .find(|d| d.is_zero()))
    }
}

impl Default for Budget {
    fn default() -> Budget {
        Budget::unlimited()
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("cpu", &self.cpu)
            .field("wall", &self.wall)
            .field("grace", &self.grace)
            .finish()
    }
}

/// Why a task was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KillReason {
    /// It used its CPU-time budget.
    CpuBudget,
    /// It ran past its wall-clock budget.
    WallDeadline,
    /// [`JoinHandle::cancel`](crate::JoinHandle::cancel) was called.
    Cancelled,
    /// It overflowed its thread's stack (always frozen: nothing can run on that stack).
    StackOverflow,
}

impl KillReason {
    /// Every reason, in code order: tables of counts are sized by it, so a new reason is
    /// one edit here (and a compile error in each `match` below until it is handled).
    pub(crate) const ALL: [KillReason; 4] = [
        KillReason::CpuBudget,
        KillReason::WallDeadline,
        KillReason::Cancelled,
        KillReason::StackOverflow,
    ];
    /// How many reasons there are.
    pub(crate) const COUNT: usize = KillReason::ALL.len();

    /// This reason's place in a table of `COUNT` entries. Async-signal-safe.
    pub(crate) const fn index(self) -> usize {
        self.code() as usize - 1
    }

    pub(crate) const fn code(self) -> u8 {
        match self {
            KillReason::CpuBudget => 1,
            KillReason::WallDeadline => 2,
            KillReason::Cancelled => 3,
            KillReason::StackOverflow => 4,
        }
    }

    pub(crate) const fn from_code(code: u8) -> Option<KillReason> {
        match code {
            1 => Some(KillReason::CpuBudget),
            2 => Some(KillReason::WallDeadline),
            3 => Some(KillReason::Cancelled),
            4 => Some(KillReason::StackOverflow),
            _ => None,
        }
    }
}

/// How a killed task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KillHow {
    /// It unwound from a [`checkpoint`](crate::checkpoint) (or was cancelled before it
    /// started): its destructors ran.
    Cancelled,
    /// Its thread was frozen: it will never run again, what it owned is leaked and the
    /// locks it held stay held. Its stack stays mapped until the process exits.
    Frozen,
    /// No point came in time where its thread could be frozen without risk to the
    /// process (it held one of std's process-wide locks, sat inside a system library,
    /// blocked the pool's signal, or held a [`FreezeGuard`](crate::FreezeGuard)), so
    /// the handle was resolved without it: its thread gave up its slot, was demoted to
    /// idle priority and counted out of the pool, and runs on in the background until
    /// the closure returns (its result is then dropped on that thread, which exits) or
    /// the process ends. [`Stats::abandoned_cpu_ns`](crate::Stats::abandoned_cpu_ns)
    /// counts the CPU time such threads use after they are abandoned.
    Abandoned,
}

/// A killed task: why, how, and what it used.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Killed {
    pub(crate) reason: KillReason,
    pub(crate) how: KillHow,
    pub(crate) cpu_ns: Option<u64>,
    /// `CLOCK_MONOTONIC` nanoseconds when the budget ran out (or the cancel came).
    pub(crate) expired_ns: u64,
}

impl Killed {
    /// Why it was killed.
    pub fn reason(&self) -> KillReason {
        self.reason
    }

    /// How it ended.
    pub fn how(&self) -> KillHow {
        self.how
    }

    /// The CPU time the task used, when it was measured (tasks with a budget, or every
    /// task with [`Builder::cpu_accounting`](crate::Builder::cpu_accounting)).
    pub fn cpu_time(&self) -> Option<Duration> {
        self.cpu_ns.map(Duration::from_nanos)
    }

    /// When the budget ran out, or the cancel was asked for. For a wall-clock budget this
    /// is the deadline itself; for a CPU budget, the moment the monitor found it spent
    /// (it checks when the budget would run out at full speed, so that is at most its
    /// timer slack late for a task that never stops running).
    pub fn expired_at(&self) -> Instant {
        crate::sys::instant_from_monotonic_ns(self.expired_ns)
    }
}

impl fmt::Debug for Killed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Killed")
            .field("reason", &self.reason)
            .field("how", &self.how)
            .field("cpu_time", &self.cpu_time())
            .finish()
    }
}

impl fmt::Display for Killed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.reason {
            KillReason::CpuBudget => "it used its CPU budget",
            KillReason::WallDeadline => "it ran past its wall-clock budget",
            KillReason::Cancelled => "its handle cancelled it",
            KillReason::StackOverflow => "it overflowed its stack",
        };
        match self.how {
            KillHow::Cancelled => write!(f, "task cancelled because {why}; its destructors ran"),
            KillHow::Frozen => write!(
                f,
                "task frozen because {why} (it did not reach a checkpoint within its grace \
                 period); what it owned is leaked"
            ),
            KillHow::Abandoned => write!(
                f,
                "task abandoned because {why}: no safe point to freeze it came in time, so \
                 it runs on in the background at idle priority, outside the pool"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reason codes round-trip, and every reason has its own place in a table sized by
    /// `COUNT` (the kill word stores the code; the counters index by `index`).
    #[test]
    fn reason_codes_and_indices_cover_every_reason_once() {
        let mut seen = [false; KillReason::COUNT];
        for (i, reason) in KillReason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason:?}: ALL is in code order");
            assert_eq!(KillReason::from_code(reason.code()), Some(reason));
            assert!(!seen[reason.index()]);
            seen[reason.index()] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(KillReason::from_code(0), None);
        assert_eq!(KillReason::from_code(KillReason::COUNT as u8 + 1), None);
    }

    #[test]
    fn a_budget_is_invalid_with_a_zero_limit_or_any_part_past_the_maximum() {
        let ms = Duration::from_millis(1);
        let over = MAX_BUDGET + Duration::from_nanos(1);
        assert_eq!(Budget::unlimited().invalid(), None);
        assert_eq!(Budget::cpu(ms).and_wall(ms).invalid(), None);
        assert_eq!(
            Budget::cpu(MAX_BUDGET)
                .and_wall(MAX_BUDGET)
                .grace(MAX_BUDGET)
                .invalid(),
            None
        );
        // A zero grace freezes at once: allowed. A zero limit would never let it start.
        assert_eq!(Budget::cpu(ms).grace(Duration::ZERO).invalid(), None);
        assert_eq!(Budget::cpu(Duration::ZERO).invalid(), Some(Duration::ZERO));
        assert_eq!(Budget::wall(Duration::ZERO).invalid(), Some(Duration::ZERO));
        assert_eq!(Budget::cpu(over).invalid(), Some(over));
        assert_eq!(Budget::wall(over).invalid(), Some(over));
        assert_eq!(Budget::cpu(ms).grace(over).invalid(), Some(over));
        assert_eq!(Budget::unlimited().grace(over).invalid(), Some(over));
        // Past the maximum is reported before a zero limit.
        assert_eq!(
            Budget::cpu(Duration::ZERO).and_wall(over).invalid(),
            Some(over)
        );
    }
}
