//! How long the pool's tasks that outlived their quantum ran in the end, and the handoff
//! decision it informs (`TimerClock::Contention`).
//!
//! A handoff costs about 130 µs of CPU on these VMs (an expiry, a standby's wake, the
//! demotion, the carrier's rejoin), and the task handed off then runs on idle time only,
//! after every task that starts later has had its own quantum. That is the right trade
//! for a task that will run 50 ms more. For one that ends a few hundred microseconds
//! after its quantum (a 1 ms request beside 10 µs ones) it costs more than it saves:
//! measured on the 50/50 workload of `benches/tail.rs` at load 0.7 (`--fairness
//! --workload 50-50 --stats`), its long class had a p99 5.2× the FCFS pool's with a
//! 500 µs quantum, and 1.06× with 2 ms, where those tasks were never handed off.
//!
//! So a runner whose quantum has ended while someone waits keeps its task when most of
//! the recent tasks that had run as long ended within the pool's bound
//! (`Builder::keep_quanta` quanta in all; the Gittins-index argument: a task that has
//! run this long is about to end, so the core goes to it first), and is looked at again
//! at the bound. Past it, it is handed off whatever the history says: a tenant that
//! fills the history with tasks just under the bound can delay a queued task by at most
//! that many quanta, not indefinitely. A pool starts with no history, and hands off.

use std::sync::atomic::{AtomicU32, Ordering};

/// The most quanta a pool may let a task keep its core while someone waits.
pub(crate) const MAX_KEEP_QUANTA: u32 = 16;

/// Buckets per quantum of run time.
const PER_QUANTUM: u64 = 4;

/// The buckets below the largest bound; one more counts every longer run.
const BUCKETS: usize = MAX_KEEP_QUANTA as usize * PER_QUANTUM as usize;

/// Judged runs counted before the counts are halved: the history follows a change of
/// workload within about two windows of tasks that outlive their quantum. With 256, the
/// tail bench's 50/50 points right after its bimodal sweep (whose 50 ms tasks had filled
/// the history) still handed their 1 ms tasks off at loads 0.1 and 0.2, where few tasks
/// are judged: long p99 1.63× and 1.88× the FCFS pool's, against 1.06× and 1.02× on a
/// fresh pool.
const WINDOW: u32 = 64;

/// Runs that must be known past a task's age before it may be kept.
const MIN_SAMPLES: u32 = 8;

/// Run times of the tasks that were still running when a quantum ended with someone
/// waiting (the only tasks the decision is ever asked about), in buckets of a quarter
/// quantum up to the bound, and one for all longer. Atomics only: written by the threads
/// whose tasks end, read by the handler.
pub(crate) struct RunHistory {
    /// The bound, in quanta from the task's start (`1..=MAX_KEEP_QUANTA`).
    keep_quanta: u64,
    buckets: [AtomicU32; BUCKETS + 1],
    counted: AtomicU32,
}

impl RunHistory {
    /// `keep_quanta` is clamped to `1..=MAX_KEEP_QUANTA` (the builder refuses others).
    pub(crate) const fn new(keep_quanta: u32) -> RunHistory {
        let keep_quanta = if keep_quanta == 0 {
            1
        } else if keep_quanta > MAX_KEEP_QUANTA {
            MAX_KEEP_QUANTA
        } else {
            keep_quanta
        };
        RunHistory {
            keep_quanta: keep_quanta as u64,
            buckets: [const { AtomicU32::new(0) }; BUCKETS + 1],
            counted: AtomicU32::new(0),
        }
    }

    /// The bucket of runs past the bound.
    fn past(&self) -> usize {
        (self.keep_quanta * PER_QUANTUM) as usize
    }

    fn bucket(&self, ran_ns: u64, quantum_ns: u64) -> usize {
        let width = (quantum_ns / PER_QUANTUM).max(1);
        ((ran_ns / width).min(self.past() as u64)) as usize
    }

    /// The bound: how long after its start a task kept may run before it is looked at
    /// again (and handed off).
    pub(crate) fn bound_ns(&self, quantum_ns: u64) -> u64 {
        self.keep_quanta.saturating_mul(quantum_ns)
    }

    /// A judged task ended after `ran_ns` of running in all.
    pub(crate) fn record(&self, ran_ns: u64, quantum_ns: u64) {
        if let Some(b) = self.buckets.get(self.bucket(ran_ns, quantum_ns)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        if self.counted.fetch_add(1, Ordering::Relaxed) + 1 >= WINDOW {
            // Racy with other recorders, harmlessly: a count added meanwhile may be
            // halved or not.
            self.counted.store(0, Ordering::Relaxed);
            for b in &self.buckets {
                b.store(b.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
            }
        }
    }

    /// Whether a task that has run `ran_ns` is past the time it could keep its core (see
    /// [`keep`](RunHistory::keep)). Such a task is counted at once, as longer than the
    /// bound: a runaway that is then killed never ends, and must still tell the history.
    pub(crate) fn past_bound(&self, ran_ns: u64, quantum_ns: u64) -> bool {
        ran_ns.saturating_add(quantum_ns / 2) >= self.bound_ns(quantum_ns)
    }

    /// Whether a task that has run `ran_ns` with someone waiting keeps its core until
    /// the bound: it is more than half a quantum short of
    /// that bound (a one-shot armed for the bound fires a little early), enough recent
    /// tasks ran longer than it has, and at least three in four of those ended within
    /// the bound.
    pub(crate) fn keep(&self, ran_ns: u64, quantum_ns: u64) -> bool {
        if self.past_bound(ran_ns, quantum_ns) {
            return false;
        }
        // Runs in the task's own bucket count as longer, and ending within the bound.
        let from = self.bucket(ran_ns, quantum_ns);
        let past = self.past();
        let (mut longer, mut within) = (0u32, 0u32);
        for (i, b) in self.buckets.iter().enumerate().take(past + 1).skip(from) {
            let n = b.load(Ordering::Relaxed);
            longer = longer.saturating_add(n);
            if i < past {
                within = within.saturating_add(n);
            }
        }
        longer >= MIN_SAMPLES && u64::from(within) * 4 >= u64::from(longer) * 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: u64 = 500_000;
    const K: u64 = 4;

    #[test]
    fn out_of_range_bounds_are_clamped() {
        assert_eq!(RunHistory::new(0).bound_ns(Q), Q);
        assert_eq!(
            RunHistory::new(u32::MAX).bound_ns(Q),
            u64::from(MAX_KEEP_QUANTA) * Q
        );
        // Every bucket reachable, none out of bounds.
        let h = RunHistory::new(MAX_KEEP_QUANTA);
        h.record(u64::MAX, 1);
        h.record(0, 0);
        assert!(!h.keep(0, 0));
    }

    #[test]
    fn one_quantum_is_strict() {
        let h = RunHistory::new(1);
        for _ in 0..20 {
            h.record(300_000, Q);
        }
        assert!(!h.keep(400_000, Q));
        assert!(h.past_bound(400_000, Q));
    }

    #[test]
    fn no_history_hands_off() {
        let h = RunHistory::new(K as u32);
        assert!(!h.keep(Q, Q));
    }

    #[test]
    fn tasks_that_end_soon_after_their_quantum_are_kept_until_the_bound() {
        let h = RunHistory::new(K as u32);
        for _ in 0..20 {
            h.record(1_100_000, Q);
        }
        assert!(h.keep(400_000, Q));
        assert!(h.keep(1_000_000, Q));
        // Past every recorded run: nothing is known about tasks this long.
        assert!(!h.keep(1_300_000, Q));
        // The bound holds whatever the history says.
        for _ in 0..20 {
            h.record(K * Q - 1, Q);
        }
        assert!(h.keep(K * Q - Q, Q));
        assert!(!h.keep(K * Q - Q / 2, Q));
        assert!(!h.keep(K * Q, Q));
    }

    #[test]
    fn long_tasks_are_handed_off() {
        let h = RunHistory::new(K as u32);
        for _ in 0..20 {
            h.record(50_000_000, Q);
        }
        assert!(!h.keep(400_000, Q));
        // One in three long hands off; one in four still keeps (three in four ended
        // within the bound).
        let h = RunHistory::new(K as u32);
        for i in 0..30 {
            h.record(if i % 3 == 0 { 50_000_000 } else { 900_000 }, Q);
        }
        assert!(!h.keep(400_000, Q));
        let h = RunHistory::new(K as u32);
        for i in 0..40 {
            h.record(if i % 4 == 0 { 50_000_000 } else { 900_000 }, Q);
        }
        assert!(h.keep(400_000, Q));
    }

    #[test]
    fn too_few_samples_hand_off() {
        let h = RunHistory::new(K as u32);
        for _ in 0..MIN_SAMPLES - 1 {
            h.record(900_000, Q);
        }
        assert!(!h.keep(400_000, Q));
        h.record(900_000, Q);
        assert!(h.keep(400_000, Q));
    }

    #[test]
    fn the_history_follows_a_change_of_workload() {
        let h = RunHistory::new(K as u32);
        for _ in 0..WINDOW * 2 {
            h.record(900_000, Q);
        }
        assert!(h.keep(400_000, Q));
        // Runaways from now on: within a window they outnumber the halved past.
        for _ in 0..WINDOW {
            h.record(u64::MAX, Q);
        }
        assert!(!h.keep(400_000, Q));
    }
}
