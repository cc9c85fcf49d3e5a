//! A slot's standby reserve: parked threads pinned to the slot's core, ready to take the
//! slot over when its runner is preempted, and the count of carriers the slot has shed.
//!
//! # Protocol
//!
//! `ready` counts parked standbys that no handoff has claimed yet; `grants` is a [`Futex`]
//! word holding the number of handoffs granted and not yet taken, plus a `CLOSED` bit.
//!
//! Standby (a thread with no slot):
//!
//! 1. `ready += 1`: it may now be promised to a handoff.
//! 2. Loop: read `grants`. A grant is there: CAS it one lower (Acquire) and hold the slot.
//!    Otherwise `CLOSED`: `ready -= 1` and exit. Otherwise block on the word while it
//!    still holds the value read.
//!    2b. A standby that has waited its idle time out with no grant may leave: CAS `ready`
//!    one lower, only while it is above the reserve's target, and exit.
//!
//! Handoff (the signal handler on the slot's runner, inside task code):
//!
//! 3. Take a standby: CAS `ready` one lower, only if it is above zero. None: no handoff
//!    (the caller asks the monitor for more and retries later).
//! 4. Mark the runner's own record `CARRIED` (`handler/tick.rs`). Lost that race to a nested
//!    handler invocation: give the standby back (`ready += 1`) and stop.
//! 5. `grants += 1` (Release) and wake one waiter. From the Release on, the old runner
//!    never touches the slot again; the standby's Acquire in step 2 makes every write the
//!    old runner made to the slot's deque visible to it, so the deque has one holder at a
//!    time, in order.
//!
//! Close (the slot's last runner, leaving at the end of shutdown):
//!
//! 6. `grants |= CLOSED`, wake all. No grant can be pending then: a grant exists only
//!    between a handoff and a standby taking it, and during that time no thread holds the
//!    slot, so none can be closing it.
//!
//! No wake-up is lost: a standby blocks only while the word still has the value it
//! checked, and every change that concerns it (a grant, `CLOSED`) is followed by a wake.
//! Each step-3 reservation is matched by one grant or one give-back, so the grants never
//! outnumber the standbys that counted themselves in step 1. `loom-tests/` model-checks
//! this protocol.
//!
//! A handoff that finds no standby records the runner in `wanted` ([`Reserve::want`]);
//! a standby that parks after that (step 1) pokes the runner's timer, so the handoff is
//! retried the moment a standby exists. On one side `want` and a second step 3, on the
//! other step 1 and the read of `wanted`, are separated by SeqCst fences, so at least
//! one side sees the other.
//!
//! The handler calls steps 3–5 ([`Reserve::take_standby`], [`Reserve::give_back`],
//! [`Reserve::grant`]), [`Reserve::want`] and [`Reserve::unwant`]: atomics, a fence and
//! one futex wake, nothing else. They are part of the
//! signal handler's zone (see `handler/mod.rs`; `tools/fence.py` checks it).

use crate::sync::loom::{fence, AtomicU32, AtomicU64, AtomicUsize, Futex, Ordering};

const CLOSED: u32 = 1 << 31;

/// What a standby got when it stopped waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// A handoff: the caller now holds the slot.
    Granted,
    /// The slot is closed for good (shutdown): the caller should exit.
    Closed,
    /// The standby waited its idle time out while more than the reserve's target were
    /// parked, and took itself out of `ready` (step 2b): the caller should exit.
    Spare,
}

/// One slot's standbys and carriers.
#[repr(align(128))]
#[derive(Debug)]
pub struct Reserve {
    ready: AtomicU32,
    /// Standbys the monitor has started that have not reached step 1 yet.
    starting: AtomicU32,
    grants: Futex,
    carriers: AtomicU32,
    /// A runner whose task overran while no standby was parked: its record index + 1
    /// (0: none). The next standby to park pokes it (`handler::poke`), so the handoff
    /// happens as soon as a standby exists, without the runner polling for one.
    wanted: AtomicUsize,
    /// The record index + 1 of the thread that holds the slot now (0: none yet), written
    /// by that thread as it takes the slot: whoever sees a task queued behind busy runners
    /// reads it to arm their one-shots (`handler/tick.rs`, `on_contention`).
    holder: AtomicUsize,
    pub(crate) counters: PreemptCounters,
}

/// Counts kept per slot by the handler and the thread lifecycle (Relaxed: statistics).
#[derive(Debug, Default)]
pub(crate) struct PreemptCounters {
    /// Timer deliveries that found a task running.
    pub(crate) ticks: AtomicU64,
    /// Every delivery of the pool's timer signal to the slot's runners, whatever it found.
    pub(crate) expiries: AtomicU64,
    /// One-shots of the slot's runners armed because work was queued behind them, or a
    /// task of theirs ran past its quantum (`TimerClock::Contention`).
    pub(crate) arms: AtomicU64,
    /// Slots handed to a standby.
    pub(crate) handoffs: AtomicU64,
    /// Of those, slots given up by a task about to block (a join that has to wait,
    /// `block_in_place`).
    pub(crate) blocking_handoffs: AtomicU64,
    /// Overruns seen inside a runtime section, handed off when it ended.
    pub(crate) deferred: AtomicU64,
    /// Overruns with no standby parked at that moment (retried shortly).
    pub(crate) no_standby: AtomicU64,
    /// Overruns left alone because the slot had its maximum of carriers.
    pub(crate) at_cap: AtomicU64,
    /// Tasks that outlived their quantum with someone waiting and kept their core until
    /// they ended (`handler/history.rs`).
    pub(crate) kept: AtomicU64,
    /// Carriers that waited for their turn, and waits cut short (`handler/tick.rs`).
    pub(crate) turn_waits: AtomicU64,
    pub(crate) turn_cuts: AtomicU64,
    /// Carriers that got their priority back and rejoined the reserve.
    pub(crate) rejoined: AtomicU64,
    /// Carriers that exited after their task.
    pub(crate) retired: AtomicU64,
    /// Standby threads started.
    pub(crate) started: AtomicU64,
    /// Standby threads that started but could not set themselves up.
    pub(crate) setup_failures: AtomicU64,
}

impl Default for Reserve {
    fn default() -> Self {
        Self::new()
    }
}

impl Reserve {
    /// An empty reserve.
    pub fn new() -> Self {
        Self {
            ready: AtomicU32::new(0),
            starting: AtomicU32::new(0),
            grants: Futex::new(0),
            carriers: AtomicU32::new(0),
            wanted: AtomicUsize::new(0),
            holder: AtomicUsize::new(0),
            counters: PreemptCounters::default(),
        }
    }

    /// The thread with record `record` holds the slot now.
    pub(crate) fn set_holder(&self, record: usize) {
        self.holder.store(record + 1, Ordering::SeqCst);
    }

    /// The record index of the slot's holder, if one has taken it.
    pub(crate) fn holder(&self) -> Option<usize> {
        self.holder.load(Ordering::SeqCst).checked_sub(1)
    }

    /// Step 1. Also ends a start that [`starting`](Reserve::starting) counted, if `started`.
    pub fn park_ready(&self, started: bool) {
        self.ready.fetch_add(1, Ordering::SeqCst);
        if started {
            self.starting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Step 2: blocks until the caller is granted the slot or the slot closes. (The pool's
    /// standbys use [`wait_or_retire`](Reserve::wait_or_retire); this is the loom model's.)
    #[cfg_attr(not(loom), allow(dead_code))]
    pub fn wait(&self) -> Woken {
        self.wait_for(None)
    }

    /// Step 2 for a standby that may retire: as [`wait`](Reserve::wait), but each time
    /// `idle` passes with no grant, if more than `keep` standbys are parked and unclaimed,
    /// it takes itself out of `ready` (step 2b: CAS `ready` one lower, only while it is
    /// above `keep`) and returns [`Woken::Spare`]. Sound like step 3: `ready` counts
    /// parked standbys less the handoffs promised one, so one that leaves while `ready`
    /// is above zero leaves enough parked standbys for every promised grant.
    ///
    /// Standbys are kept for `idle` past the target, instead of a carrier retiring at
    /// once when the reserve is full, so that a burst of handoffs reuses the carriers of
    /// the last one rather than starting a thread each (`cargo bench --bench tail --
    /// --fairness --workload 50-50 --stats` counted one thread started and one ended per
    /// two handoffs at load 0.8).
    pub fn wait_or_retire(&self, keep: u32, idle: std::time::Duration) -> Woken {
        self.wait_for(Some((keep, idle)))
    }

    /// Step 2, and step 2b if `retire` is `(keep, idle)`.
    fn wait_for(&self, retire: Option<(u32, std::time::Duration)>) -> Woken {
        let mut until = retire.map(|(_, idle)| std::time::Instant::now() + idle);
        loop {
            let word = self.grants.load(Ordering::Acquire);
            if word & !CLOSED != 0 {
                // Acquire: see the old holder's writes to the slot (step 5).
                if self
                    .grants
                    .compare_exchange(word, word - 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Woken::Granted;
                }
                continue;
            }
            if word & CLOSED != 0 {
                self.ready.fetch_sub(1, Ordering::SeqCst);
                return Woken::Closed;
            }
            let timeout = match (retire, until) {
                (Some((keep, idle)), Some(at)) => {
                    let now = std::time::Instant::now();
                    if now >= at {
                        if self.take_ready_above(keep) {
                            return Woken::Spare;
                        }
                        until = Some(now + idle);
                    }
                    until.map(|at| at.saturating_duration_since(now))
                }
                _ => None,
            };
            self.grants.wait(word, timeout);
        }
    }

    /// Step 3: promises one parked standby to a handoff. Async-signal-safe.
    pub fn take_standby(&self) -> bool {
        self.take_ready_above(0)
    }

    /// Takes one from `ready`, only while it is above `floor` (step 3 with 0, step 2b with
    /// the target). Async-signal-safe.
    fn take_ready_above(&self, floor: u32) -> bool {
        let mut ready = self.ready.load(Ordering::Relaxed);
        while ready > floor {
            match self.ready.compare_exchange_weak(
                ready,
                ready - 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => ready = now,
            }
        }
        false
    }

    /// Records that the runner with record `index` wants a standby; the caller then tries
    /// [`take_standby`](Reserve::take_standby) once more. Async-signal-safe.
    pub fn want(&self, index: usize) {
        self.wanted.store(index + 1, Ordering::SeqCst);
        // Store-buffer pattern with `park_ready` + `take_wanted`: each side writes one
        // word and then reads the other's, with a SeqCst fence in between, so at least
        // one of them sees the other.
        fence(Ordering::SeqCst);
    }

    /// The runner with record `index` got a standby after all: forget its `want`, unless
    /// another runner's has replaced it. Async-signal-safe.
    pub fn unwant(&self, index: usize) {
        let _ = self
            .wanted
            .compare_exchange(index + 1, 0, Ordering::SeqCst, Ordering::Relaxed);
    }

    /// After step 1: the record index of a runner waiting for a standby, if any (and
    /// forgets it).
    pub fn take_wanted(&self) -> Option<usize> {
        fence(Ordering::SeqCst);
        match self.wanted.swap(0, Ordering::SeqCst) {
            0 => None,
            n => Some(n - 1),
        }
    }

    /// Step 4's give-back. Async-signal-safe.
    pub fn give_back(&self) {
        self.ready.fetch_add(1, Ordering::SeqCst);
    }

    /// Step 5: the promised standby may take the slot. Async-signal-safe.
    pub fn grant(&self) {
        self.carriers.fetch_add(1, Ordering::Relaxed);
        // Release: publishes the old holder's writes to the slot's deque.
        self.grants.fetch_add(1, Ordering::Release);
        self.grants.wake_one();
    }

    /// Step 6.
    pub fn close(&self) {
        self.grants.fetch_or(CLOSED, Ordering::Release);
        self.grants.wake_all();
    }

    /// A carrier's task has ended.
    pub(crate) fn carrier_done(&self) {
        self.carriers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Carriers alive (their task still running).
    pub(crate) fn carriers(&self) -> u32 {
        self.carriers.load(Ordering::Relaxed)
    }

    /// Parked standbys not promised to a handoff.
    pub fn ready(&self) -> u32 {
        self.ready.load(Ordering::Relaxed)
    }

    /// Standbys being started.
    pub(crate) fn starting(&self) -> u32 {
        self.starting.load(Ordering::Relaxed)
    }

    /// The monitor is about to start a standby for this slot.
    pub(crate) fn start_one(&self) {
        self.starting.fetch_add(1, Ordering::SeqCst);
        self.counters.started.fetch_add(1, Ordering::Relaxed);
    }

    /// A start failed (no thread): forget it.
    pub(crate) fn start_failed(&self) {
        self.starting.fetch_sub(1, Ordering::SeqCst);
    }

    /// A started standby could not set itself up (alternate stack, timers, a record):
    /// forget it,
    /// and count it so the monitor backs off instead of retrying at once.
    pub(crate) fn setup_failed(&self) {
        self.counters.setup_failures.fetch_add(1, Ordering::Relaxed);
        self.start_failed();
    }

    /// Standbys that failed to set up, so far.
    pub(crate) fn setup_failures(&self) -> u64 {
        self.counters.setup_failures.load(Ordering::Relaxed)
    }

    /// True once step 6 happened.
    pub(crate) fn is_closed(&self) -> bool {
        self.grants.load(Ordering::Acquire) & CLOSED != 0
    }
}
