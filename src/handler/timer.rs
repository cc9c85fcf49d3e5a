//! The preemption clocks: the public [`TimerClock`], and everything that differs between
//! them, as methods of it: which timers a pool thread keeps, when a task's start or end
//! arms or disarms one, and when a tick near the quantum is sharpened by a one-shot. A new
//! clock is a new variant plus its arms in the `match`es of this file (the compiler lists
//! them); nothing else in the crate names a variant.
//!
//! Every pool thread also has a *precise* timer on [`PRECISE_CLOCK`]: the one-shot, or
//! (with [`TimerClock::Monotonic`]) the periodic timer itself.

/// `Contention`: the longest streak of expiries that found a newer task, as a power of two
/// of the quantum (8 quanta: 4 ms at the default quantum, about a kernel tick).
pub(crate) const MAX_STREAK: u32 = 3;

/// How long a handoff takes from the expiry that starts it to the standby running the
/// slot, about: the expiry's own lateness, the handler, the standby's wake-up (50–150 µs
/// in `cargo bench --bench preempt`'s head-of-line test on the VMs this was tuned on).
/// `Contention` arms its one-shot this much before the quantum's end.
pub(crate) const HANDOFF_LEAD_NS: u64 = 100_000;

/// The clock of every pool thread's precise timer.
pub(crate) const PRECISE_CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;

/// Which clock drives a pool's preemption ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TimerClock {
    /// No tick at all until someone waits. A task that runs while every queue is empty
    /// never sees a timer. When a task is queued and every runner is busy (the spawner
    /// sees it as it pushes; a runner sees it as it starts a task with more queued behind
    /// it), each busy runner's one-shot `CLOCK_MONOTONIC` timer is armed, by whoever saw
    /// it, for the end of that runner's quantum (POSIX timers belong to the process, so
    /// any thread may arm them). When it fires, the handler hands the slot off if work is
    /// still queued and the task has used its quantum; if a newer task is running, it
    /// re-arms for that task's quantum, after a longer wait each time this happens in a
    /// row (quantum × 2, × 4, × 8 at most): a stream of short tasks keeps the queue busy
    /// but never needs preempting, and this keeps its cost to about one expiry per 8
    /// quanta per runner. The streak ends when the runner goes idle or hands off. No
    /// timer syscall on a task's own path: a task that ends before its quantum leaves the
    /// timer to fire once and find it gone.
    #[default]
    Contention,
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
    /// its queue. Hands off at the quantum whether or not anything waits.
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
            TimerClock::ThreadCpu => Some(Self::cpu_ticks(tick_ns)),
            TimerClock::Monotonic | TimerClock::Contention => None,
        }
    }

    /// The CPU-time timer's clock and period: an eighth of a kernel tick, so that every
    /// tick that finds the thread running delivers one expiry.
    pub(crate) fn cpu_ticks(tick_ns: u64) -> (libc::clockid_t, u64) {
        (libc::CLOCK_THREAD_CPUTIME_ID, (tick_ns / 8).max(1))
    }

    /// A CPU-time timer the thread keeps *disarmed*, if this clock has one: armed (by the
    /// thread's own handler) only once a kill targets the thread, so that while the kill
    /// waits for a point where it may freeze, the handler looks again at every kernel tick
    /// the thread runs, as `ThreadCpu`'s lifelong timer does, and not only when the
    /// monitor asks again. `Contention` has no other tick a deferred freeze could ride on.
    pub(crate) fn kill_timer(self, tick_ns: u64) -> Option<(libc::clockid_t, u64)> {
        match self {
            TimerClock::Contention => Some(Self::cpu_ticks(tick_ns)),
            TimerClock::ThreadCpu | TimerClock::Monotonic => None,
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
            TimerClock::ThreadCpu | TimerClock::Contention => None,
            TimerClock::Monotonic => Some(quantum_ns),
        }
    }

    /// Whether a task's end disarms a one-shot armed for it (`ThreadCpu`); the periodic
    /// timer of `Monotonic` stays armed while the runner is awake, and the one-shot of
    /// `Contention` is left to fire (a syscall per task costs more than the rare expiry
    /// that finds its task gone).
    pub(crate) fn disarm_at_task_end(self) -> bool {
        match self {
            TimerClock::ThreadCpu => true,
            TimerClock::Monotonic | TimerClock::Contention => false,
        }
    }

    /// Whether ticks come only when someone waits: armed by whoever sees a task queued
    /// behind busy runners, and a tick hands off only while work is queued.
    pub(crate) fn arms_on_contention(self) -> bool {
        matches!(self, TimerClock::Contention)
    }

    /// `Contention`: the `CLOCK_MONOTONIC` time to arm a busy runner's one-shot at, for
    /// its task that started at `start_ns`, after `streak` expiries in a row that found a
    /// newer task than the one they were armed for: the quantum's end, later by a factor
    /// of 2, 4, 8 as the streak grows (and never before `now_ns`), less [`HANDOFF_LEAD_NS`]
    /// (at most half the quantum), so that the slot changes hands at the quantum's end
    /// rather than that much after it.
    pub(crate) fn contention_deadline(
        start_ns: u64,
        quantum_ns: u64,
        streak: u32,
        now_ns: u64,
    ) -> u64 {
        let wait = (quantum_ns << streak.min(MAX_STREAK)) - Self::lead(quantum_ns);
        start_ns.saturating_add(wait).max(now_ns)
    }

    /// `Contention`: how long a task must have run for an expiry to hand it off (the
    /// quantum less the lead its one-shot was armed with).
    pub(crate) fn contention_due(quantum_ns: u64) -> u64 {
        quantum_ns - Self::lead(quantum_ns)
    }

    fn lead(quantum_ns: u64) -> u64 {
        HANDOFF_LEAD_NS.min(quantum_ns / 2)
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
            TimerClock::Monotonic | TimerClock::Contention => None,
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
    fn the_contention_clock_keeps_no_timer_and_touches_none_per_task() {
        let clock = TimerClock::Contention;
        assert_eq!(TimerClock::default(), clock);
        assert_eq!(clock.lifelong_timer(4 * MS), None);
        assert_eq!(clock.arm_at_task_start(MS / 2), None);
        assert!(!clock.disarm_at_task_end());
        assert!(clock.arms_on_contention());
        assert!(!TimerClock::ThreadCpu.arms_on_contention());
        // Only a kill arms the CPU-time timer.
        assert_eq!(
            clock.kill_timer(4 * MS),
            Some((libc::CLOCK_THREAD_CPUTIME_ID, MS / 2))
        );
        assert_eq!(TimerClock::ThreadCpu.kill_timer(4 * MS), None);
        assert_eq!(clock.sharpen(0, 1_900_000, 2 * MS, 4 * MS), None);
    }

    #[test]
    fn a_contention_deadline_is_the_quantum_end_backed_off_by_the_streak() {
        let q = MS / 2;
        let lead = HANDOFF_LEAD_NS;
        assert_eq!(
            TimerClock::contention_deadline(100, q, 0, 0),
            100 + q - lead
        );
        assert_eq!(
            TimerClock::contention_deadline(100, q, 1, 0),
            100 + 2 * q - lead
        );
        assert_eq!(
            TimerClock::contention_deadline(100, q, 3, 0),
            100 + 8 * q - lead
        );
        assert_eq!(
            TimerClock::contention_deadline(100, q, 9, 0),
            100 + 8 * q - lead
        );
        // The lead is at most half a short quantum.
        assert_eq!(TimerClock::contention_deadline(0, 100_000, 0, 0), 50_000);
        // Past already: now.
        assert_eq!(TimerClock::contention_deadline(100, q, 0, 10 * MS), 10 * MS);
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
