//! The preemption clocks: the public [`TimerClock`], and everything that differs between
//! them, as methods of it: which timers a pool thread keeps, when a task's start or end
//! arms or disarms one, and when a tick near the quantum is sharpened by a one-shot. A new
//! clock is a new variant plus its arms in the `match`es of this file (the compiler lists
//! them); nothing else in the crate names a variant.
//!
//! Every pool thread also has a *precise* timer on [`PRECISE_CLOCK`]: the one-shot, or
//! (with [`TimerClock::Monotonic`]) the periodic timer itself.

/// The clock of every pool thread's precise timer.
pub(crate) const PRECISE_CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;

/// Which clock drives a pool's preemption ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TimerClock {
    /// Each thread's own CPU-time clock, which the kernel checks on its tick, plus a
    /// one-shot monotonic timer armed only for a task that is about to reach its quantum.
    /// The tick rides on timer interrupts the kernel takes anyway and never fires for an
    /// idle or blocked thread, so the cost is close to nothing. A task is handed off at
    /// its quantum if a tick lands in the second half of it (always, once the quantum is
    /// two ticks or more), otherwise at the first tick after: with the default 2 ms
    /// quantum and HZ=250, between 2 and 5 ms after it started. (A runner that was asleep
    /// sees its first tick about one tick after it wakes: an idle core's tick restarts
    /// then.) A task that blocks in a syscall uses no CPU,
    /// so it is handed off only if a one-shot was armed for it; other slots still steal
    /// its queue.
    #[default]
    ThreadCpu,
    /// A periodic monotonic timer per runner, every quantum, armed while the runner is
    /// awake. Preempts blocked tasks too, and allows quanta below the kernel tick, but every
    /// expiry costs a timer interrupt (30–40 µs of CPU on the virtual machines of
    /// `cargo bench --bench preempt`): 3–4 % of a busy runner at a 1 ms quantum. A task is handed off between one and two quanta after it started.
    Monotonic,
}

impl TimerClock {
    /// A timer the thread keeps running for its whole life, if this clock has one: its
    /// clock and its period in ns.
    ///
    /// `ThreadCpu`: the thread's CPU-time clock. The period counts this thread's CPU time,
    /// and expiries are only noticed on the kernel tick. A period of a whole tick would put
    /// the first expiry after a task starts anywhere up to two ticks later; an eighth of a
    /// tick makes every tick that finds the thread busy deliver one (the kernel folds the
    /// rest into the overrun count), so the handler looks at each running task once per
    /// tick.
    pub(crate) fn lifelong_timer(self, tick_ns: u64) -> Option<(libc::clockid_t, u64)> {
        match self {
            TimerClock::ThreadCpu => Some((libc::CLOCK_THREAD_CPUTIME_ID, (tick_ns / 8).max(1))),
            TimerClock::Monotonic => None,
        }
    }

    /// The period to arm the precise timer with when a task starts on a runner whose
    /// timer is not armed yet, if this clock arms one then.
    ///
    /// `Monotonic`: the quantum, periodic while the runner is awake (it is disarmed when
    /// the runner sleeps). `ThreadCpu`: nothing: a syscall per task is what that clock
    /// avoids, and even one per wake-up (to catch the first task after a sleep before the
    /// core's restarted tick does) cost 10–15 µs per wake-up round trip here.
    pub(crate) fn arm_at_task_start(self, quantum_ns: u64) -> Option<u64> {
        match self {
            TimerClock::ThreadCpu => None,
            TimerClock::Monotonic => Some(quantum_ns),
        }
    }

    /// Whether a task's end disarms a one-shot armed for it (`ThreadCpu`); the periodic
    /// timer of `Monotonic` stays armed while the runner is awake.
    pub(crate) fn disarm_at_task_end(self) -> bool {
        match self {
            TimerClock::ThreadCpu => true,
            TimerClock::Monotonic => false,
        }
    }

    /// On a tick that finds a task short of its quantum (it started at `start_ns` and has
    /// run `ran_ns`): the `CLOCK_MONOTONIC` time to arm a one-shot at, if this clock
    /// sharpens such a tick.
    ///
    /// `ThreadCpu`: when the next tick would come after the quantum, and the task has run
    /// at least half of it. Arming and disarming the one-shot costs about 20 µs here (the
    /// hrtimer is reprogrammed twice, VM exits included), so a task that has run less than
    /// half its quantum, most likely a short one, is left to the next tick. `Monotonic`:
    /// never (its ticks come every quantum).
    pub(crate) fn sharpen(
        self,
        start_ns: u64,
        ran_ns: u64,
        quantum_ns: u64,
        tick_ns: u64,
    ) -> Option<u64> {
        match self {
            TimerClock::ThreadCpu => (ran_ns.saturating_add(tick_ns) > quantum_ns
                && ran_ns >= quantum_ns / 2)
                .then(|| start_ns.saturating_add(quantum_ns)),
            TimerClock::Monotonic => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn the_cpu_clock_keeps_a_timer_of_an_eighth_tick_and_arms_nothing_per_task() {
        let clock = TimerClock::ThreadCpu;
        assert_eq!(
            clock.lifelong_timer(4 * MS),
            Some((libc::CLOCK_THREAD_CPUTIME_ID, MS / 2))
        );
        assert_eq!(
            clock.lifelong_timer(0).map(|t| t.1),
            Some(1),
            "never a zero period"
        );
        assert_eq!(clock.arm_at_task_start(2 * MS), None);
        assert!(clock.disarm_at_task_end());
    }

    #[test]
    fn the_monotonic_clock_ticks_every_quantum_while_awake() {
        let clock = TimerClock::Monotonic;
        assert_eq!(clock.lifelong_timer(4 * MS), None);
        assert_eq!(clock.arm_at_task_start(2 * MS), Some(2 * MS));
        assert!(!clock.disarm_at_task_end());
        assert_eq!(clock.sharpen(0, 1_900_000, 2 * MS, 4 * MS), None);
    }

    #[test]
    fn a_tick_is_sharpened_only_past_half_the_quantum_and_when_the_next_comes_too_late() {
        let clock = TimerClock::ThreadCpu;
        let (quantum, tick) = (2 * MS, 4 * MS);
        // Less than half the quantum: likely a short task, left to the next tick.
        assert_eq!(clock.sharpen(100, MS - 1, quantum, tick), None);
        // Past half, and the next tick would be late: a one-shot at the quantum's end.
        assert_eq!(clock.sharpen(100, MS, quantum, tick), Some(100 + quantum));
        // A tick much shorter than the quantum comes in time on its own.
        assert_eq!(clock.sharpen(100, 10 * MS, 20 * MS, MS), None);
        assert_eq!(
            clock.sharpen(100, 19_500_000, 20 * MS, MS),
            Some(100 + 20 * MS)
        );
    }
}
