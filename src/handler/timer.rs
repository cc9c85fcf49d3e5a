//! The preemption clocks: the public [`TimerClock`], and everything that differs between
//! them, as methods of it: which timers a pool thread keeps, when a task's start or end
//! arms or disarms one, and when a tick near the quantum is sharpened by a one-shot. A new
//! clock is a new variant plus its arms in the `match`es of this file (the compiler lists
//! them); nothing else in the crate names a variant.
//!
//! Every pool thread also has a *precise* timer on [`PRECISE_CLOCK`]: the one-shot, or
//! (with [`TimerClock::Monotonic`]) the periodic timer itself.

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
    /// still queued and the task has used its quantum. If a newer task is running (a
    /// stream of tasks keeps the queue busy, most of them short), the runner's own
    /// CPU-time timer takes over from the one-shot: it is checked on the kernel's tick
    /// (HZ=250: every 4 ms of the thread's CPU time), and an expiry that rides the tick
    /// the kernel takes anyway costs about a third of a one-shot's own interrupt on
    /// virtual machines. A task is then handed off at the first tick past its quantum,
    /// or at its quantum if another runner starts a task meanwhile (it looks at its
    /// peers). The ticks stop when one finds nothing queued, or the runner sleeps or
    /// hands off. No timer syscall on a task's own path: a task that ends before its
    /// quantum leaves the timer to fire once and find it gone.
    #[default]
    Contention,
    /// Each thread's own CPU-time clock, which the kernel checks on its tick, plus a
    /// one-shot monotonic timer armed only for a task that is about to reach its quantum.
    /// The tick rides on timer interrupts the kernel takes anyway and never fires for an
    /// idle or blocked thread, so the cost is close to nothing. A task is handed off at
    /// its quantum if a tick lands in the second half of it (always, once the quantum is
    /// two ticks or more), otherwise at the first tick after: with a 2 ms quantum (the
    /// default when this clock was) and HZ=250, between 2 and 5 ms after it started. (A runner that was asleep
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
    /// thread's own handler) only on demand, so that the handler looks again at every
    /// kernel tick the thread runs, as `ThreadCpu`'s lifelong timer does: while a kill
    /// waits for a point where it may freeze (`Contention` has no other tick a deferred
    /// freeze could ride on), and while tasks are queued behind a runner that a one-shot
    /// found running a newer task than the one it was armed for.
    pub(crate) fn demand_ticks(self, tick_ns: u64) -> Option<(libc::clockid_t, u64)> {
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
    /// its task that started at `start_ns`: the quantum's end (never before `now_ns`),
    /// less [`HANDOFF_LEAD_NS`] (at most half the quantum), so that the slot changes
    /// hands at the quantum's end rather than that much after it.
    pub(crate) fn contention_deadline(start_ns: u64, quantum_ns: u64, now_ns: u64) -> u64 {
        start_ns
            .saturating_add(Self::contention_due(quantum_ns))
            .max(now_ns)
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
        // The CPU-time timer is armed on demand only.
        assert_eq!(
            clock.demand_ticks(4 * MS),
            Some((libc::CLOCK_THREAD_CPUTIME_ID, MS / 2))
        );
        assert_eq!(TimerClock::ThreadCpu.demand_ticks(4 * MS), None);
        assert_eq!(clock.sharpen(0, 1_900_000, 2 * MS, 4 * MS), None);
    }

    #[test]
    fn a_contention_deadline_is_the_quantum_end_less_the_lead() {
        let q = MS / 2;
        let lead = HANDOFF_LEAD_NS;
        assert_eq!(TimerClock::contention_deadline(100, q, 0), 100 + q - lead);
        assert_eq!(TimerClock::contention_due(q), q - lead);
        // The lead is at most half a short quantum.
        assert_eq!(TimerClock::contention_deadline(0, 100_000, 0), 50_000);
        // Past already: now.
        assert_eq!(TimerClock::contention_deadline(100, q, 10 * MS), 10 * MS);
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
