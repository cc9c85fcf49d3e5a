//! The monitor: one small thread per preemptible pool, like Go's sysmon, and the standby
//! maker it starts beside it.
//!
//! The standby maker keeps every slot's reserve stocked with parked standbys, so a
//! handoff never waits for `pthread_create`:
//!
//! 1. Read its bell (a handoff, a freeze, a closing slot, or a failed start rings it).
//! 2. For each open slot, start standbys until parked plus starting reaches the target.
//!    Standbys are created here, by a thread at normal priority: threads inherit their
//!    creator's scheduling policy, and a demoted carrier must never create one.
//! 3. Every slot closed (shutdown has ended all runners): exit. Otherwise sleep on the
//!    bell while it still reads what step 1 read, or until its next chore.
//!
//! When the OS refuses a thread, or a started standby cannot set itself up (no timer, no
//! record, no alternate stack), it starts nothing for a while, backing off from 10 ms to
//! 1 s, rather than spin creating threads that fail. It is a thread of its own because
//! `pthread_create` in a process with thousands of (frozen) threads on busy cores was
//! measured taking up to 2 s here, and the monitor's kills must not wait behind it.
//!
//! The monitor:
//!
//! 1. Read the bell.
//! 2. Enforce budgets (`kill.rs`): cancel tasks whose budget ran out, ask for freezes
//!    when grace periods end, abandon kills that found no safe point in time.
//! 3. Every 100 ms: re-read the loaded libraries for the freeze gate (`handler/places.rs`), and
//!    look for a handler that replaced the pool's.
//!
//! The standby maker also does the chores that wait for the process's memory-map lock
//! ([`Chores`]): every 100 ms it joins pool threads that have exited and sweeps the
//! runners ([`sweep`]); every 20 ms it looks at threads asked to freeze for a blocked
//! signal.
//! 4. Every slot closed and no budget left to enforce: exit. Otherwise sleep on the bell
//!    while it still reads what step 1 read, until the next budget is due, or until the
//!    next 100 ms.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::text_scan;
use crate::handler::FrozenPool;
use crate::kill::Kills;
use crate::runtime::carrier::{self, Role};
use crate::runtime::shared::Shared;
use crate::sync::loom::Ordering;
use crate::sys::{self, async_safe};

/// How often the monitor re-reads the loaded libraries for the freeze gate (a `dlopen`).
const REFRESH: Duration = Duration::from_millis(100);

/// How long to wait before retrying after the OS refused a thread or a thread could not
/// set itself up; doubled on each failure in a row, up to `IDLE`.
const RETRY: Duration = Duration::from_millis(10);
/// How long to sleep with nothing to do (only to join exited threads now and then).
const IDLE: Duration = Duration::from_secs(1);
/// After a caught panic, the next pass comes this soon.
const PANIC_PAUSE: Duration = Duration::from_millis(10);

/// A runner busy with one task this long without a handoff is looked at: has it blocked
/// the pool's signal? (At least this, and four quanta.)
const BUSY: Duration = Duration::from_millis(20);

/// Step 4's sweep over the pool's runners and standbys (every `REFRESH`), from what
/// `/proc/self/task/<tid>` says of each:
///
/// - a runner that has run one task for a while with the pool's signal blocked (its
///   handler can never hand it off), or blocked in a system call (no CPU time, so no
///   tick), has its slot taken from outside (`kill.rs`);
/// - a thread whose CPU affinity, scheduling policy or name a task changed gets the
///   pool's back, from here (the kernel lets a thread of the process set them);
/// - a runner found between tasks with the pool's signal blocked unblocks it itself
///   before its next task (no thread can change another's mask).
///
/// A task that changes one of these and returns may leave it to the tasks that follow on
/// that runner until the next sweep (at most `REFRESH`): checking after every task would
/// cost a syscall per task.
///
/// A runner is handed off only when two sweeps in a row found it so, in the same task
/// (`suspects`: record index → the task's start): a thread caught inside the handler, or
/// a task that has just replaced another, is not taken for one that blocks.
fn sweep(
    shared: &Shared,
    preempt: &crate::handler::Preempt,
    kills: &Kills,
    suspects: &mut std::collections::HashMap<usize, u64>,
) {
    let now = async_safe::monotonic_ns();
    let busy = (BUSY.as_nanos() as u64).max(preempt.quantum_ns.saturating_mul(4));
    let mut seen = std::collections::HashMap::new();
    for (index, record) in crate::handler::RECORDS.iter().enumerate() {
        if !record.serves(&kills.ledger) {
            continue;
        }
        let Some(slot) = record.serving_slot() else {
            continue;
        };
        let tid = record.tid.load(Ordering::Relaxed);
        let Some(status) = sys::thread_status(tid) else {
            continue;
        };
        let busy_since = record.busy_since();
        // Long enough in one task, and the same task as the last sweep found.
        let long =
            |start: u64| now.saturating_sub(start) >= busy && record.busy_since() == Some(start);
        if status.blocks(preempt.signal) && !record.in_handler() {
            match busy_since {
                Some(start) if long(start) => {
                    seen.insert(index, start);
                    if suspects.get(&index) == Some(&start) {
                        kills.hand_off_blocked(index, true);
                    }
                    continue;
                }
                Some(_) => {}
                None => record.taint(),
            }
        }
        // (Looked at again just before each change: a handoff in between demotes the
        // thread and widens its affinity on purpose.)
        // Blocked in a system call (a read, a lock a frozen task holds) for a while: it
        // uses no CPU time, so no tick of the CPU-time clock comes to hand it off.
        if status.sleeping() {
            if let Some(start) = busy_since.filter(|&start| long(start)) {
                seen.insert(index, start);
                let reserve = &preempt.reserves[slot];
                if suspects.get(&index) == Some(&start) && reserve.carriers() < preempt.max_carriers
                {
                    kills.hand_off_blocked(index, false);
                }
                continue;
            }
        }
        if let Some(cpus) = &shared.threads.affinity[slot] {
            if !status.allows_exactly(cpus) && record.serving_slot().is_some() {
                async_safe::set_thread_affinity(tid, &sys::cpu_set(cpus));
            }
        }
        if sys::thread_policy(tid) != Some(libc::SCHED_OTHER) && record.serving_slot().is_some() {
            sys::set_thread_normal_policy(tid);
        }
        let name = format!("{}-{slot}", shared.threads.name);
        if !status.named(&name) {
            sys::set_thread_name(tid, &name);
        }
    }
    *suspects = seen;
}

pub(crate) fn run(shared: Arc<Shared>) {
    let (Some(preempt), Some(kills)) = (&shared.preempt, shared.kills) else {
        return;
    };
    crate::handler::mark_monitor();
    // The standby maker; if no thread can be had for it, this thread makes standbys
    // between its passes.
    let mut maker = Some(Maker::new());
    {
        let for_maker = shared.clone();
        shared.thread_started();
        let started = std::thread::Builder::new()
            .name(format!("{}-standby", shared.threads.name))
            .spawn(move || {
                crate::handler::mark_monitor();
                let _exit = ExitGuard(for_maker.clone());
                let mut maker = Maker::new();
                let (Some(preempt), Some(kills)) = (&for_maker.preempt, for_maker.kills) else {
                    return;
                };
                let mut chores = Chores::new();
                loop {
                    let bell = preempt.ledger.standby_bell.load(Ordering::Acquire);
                    // A panic of ours here (a bug) must not end the standby supply.
                    let pass = catch_unwind(AssertUnwindSafe(|| {
                        let (open, timeout) = maker.pass(&for_maker, preempt);
                        (open, timeout.min(chores.run(&for_maker, preempt)))
                    }));
                    let (open, timeout) = pass.unwrap_or_else(|payload| {
                        kills.monitor_panicked(&*payload);
                        (true, PANIC_PAUSE)
                    });
                    if !open {
                        return;
                    }
                    preempt.ledger.standby_bell.wait(bell, Some(timeout));
                }
            });
        match started {
            Ok(handle) => {
                shared.keep_handle(handle);
                maker = None;
            }
            Err(_) => shared.thread_exited(),
        }
    }
    let mut next_refresh = Instant::now();
    let mut chores = Chores::new();
    loop {
        let bell = preempt.bell().load(Ordering::Acquire);
        let now = Instant::now();
        // A panic of ours in a pass (a bug, or a malformed object it reads) is caught,
        // counted and reported once: the monitor must never die, or no runaway would be
        // killed again.
        let pass = catch_unwind(AssertUnwindSafe(|| {
            let mut timeout = IDLE;
            if let Some(maker) = &mut maker {
                timeout = maker.pass(&shared, preempt).1;
                timeout = timeout.min(chores.run(&shared, preempt));
            }
            // Budgets, cancels, freezes and abandons (`kill.rs`).
            let due = kills.enforce(&|| shared.thread_frozen());
            // A waker that never returns keeps the process's waker thread: replace it.
            crate::task::watch_waker_thread();
            // A library loaded since the last look joins the freeze gate's tables at the
            // period, or at once when the handler met its code (an overflow waits in its
            // fault handler for this).
            let wanted = crate::handler::take_refresh_wanted();
            if now >= next_refresh || wanted {
                // Every REFRESH, not every pass: after a storm of kills the handles of
                // thousands of frozen threads are kept (they never finish), and a pass may
                // come every 250 µs while freezes are deferred.
                // A library loaded since the last look joins the freeze gate's ranges.
                text_scan::refresh();
                kills.check_handler();
                next_refresh = now + REFRESH;
            }
            (timeout, due)
        }));
        let (mut timeout, due) = pass.unwrap_or_else(|payload| {
            kills.monitor_panicked(&*payload);
            next_refresh = now + REFRESH;
            let pause = PANIC_PAUSE.as_nanos() as u64;
            (
                PANIC_PAUSE,
                async_safe::monotonic_ns().saturating_add(pause),
            )
        });
        let open = preempt.reserves.iter().any(|r| !r.is_closed());
        // Tasks detached by a `shutdown_timeout` still have their budgets enforced.
        if !open && due == u64::MAX {
            return;
        }
        // The libraries and the signal handler are looked at every REFRESH.
        timeout = timeout.min(next_refresh.saturating_duration_since(Instant::now()));
        if due != u64::MAX {
            let left = due.saturating_sub(async_safe::monotonic_ns());
            timeout = timeout.min(Duration::from_nanos(left));
        }
        if !timeout.is_zero() {
            preempt.bell().wait(bell, Some(timeout));
        }
    }
}

/// The chores that read `/proc` or unmap stacks, done by the standby maker (or by the
/// monitor if it has none): `/proc` reads and `munmap` wait for the process's memory-map
/// lock, which thousands of threads being created, faulting and exiting keep busy (up to
/// 400 ms was measured here in a storm of kills), and the monitor's kills must not wait
/// behind them.
struct Chores {
    next_sweep: Instant,
    next_look: Instant,
    suspects: std::collections::HashMap<usize, u64>,
}

impl Chores {
    fn new() -> Chores {
        let now = Instant::now();
        Chores {
            next_sweep: now,
            next_look: now,
            suspects: std::collections::HashMap::new(),
        }
    }

    /// Every 100 ms: join exited pool threads, sweep the runners. Every 20 ms: look for
    /// kill targets that blocked the pool's signal. Returns how long until the next.
    fn run(&mut self, shared: &Shared, preempt: &crate::handler::Preempt) -> Duration {
        let now = Instant::now();
        if now >= self.next_sweep {
            shared.join_exited();
            if let Some(kills) = shared.kills {
                sweep(shared, preempt, kills, &mut self.suspects);
            }
            self.next_sweep = now + REFRESH;
        }
        if now >= self.next_look {
            look_for_blocked_signals(preempt);
            self.next_look = now + LOOK;
        }
        self.next_sweep
            .min(self.next_look)
            .saturating_duration_since(Instant::now())
    }
}

/// How often threads asked to freeze are looked at for a blocked signal.
const LOOK: Duration = Duration::from_millis(20);

/// A thread asked to freeze that has the pool's signal blocked (and is not inside the
/// handler, which blocks it too) is seen once more (`Record::sigblocked_seen`); the
/// monitor abandons its task at the second sighting in a row (`kill.rs`).
fn look_for_blocked_signals(preempt: &crate::handler::Preempt) {
    for record in crate::handler::RECORDS.iter() {
        if !record.serves(preempt.ledger) || !record.freeze_asked() {
            continue;
        }
        let tid = record.tid.load(Ordering::Relaxed);
        let blocked = sys::thread_status(tid).is_some_and(|s| s.blocks(preempt.signal))
            && !record.in_handler();
        record.saw_signal_blocked(blocked);
    }
}

/// Counts a thread the monitor started out of the pool when it ends.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.thread_exited();
    }
}

/// The standby maker's state: its backoff after failures.
struct Maker {
    seen_failures: Option<u64>,
    backoff: Duration,
    retry_at: Option<Instant>,
}

impl Maker {
    fn new() -> Maker {
        Maker {
            seen_failures: None,
            backoff: RETRY,
            retry_at: None,
        }
    }

    /// Steps 1–2 of the standby maker: whether any slot is open, and how long to sleep.
    fn pass(
        &mut self,
        shared: &Arc<Shared>,
        preempt: &crate::handler::Preempt,
    ) -> (bool, Duration) {
        let now = Instant::now();
        // A standby that failed to set up rang the bell: back off before trying again.
        let failures: u64 = preempt.reserves.iter().map(|r| r.setup_failures()).sum();
        if self.seen_failures.is_some_and(|seen| seen != failures) {
            self.retry_at = Some(now + self.backoff);
            self.backoff = (self.backoff * 2).min(IDLE);
        }
        self.seen_failures = Some(failures);
        if self.retry_at.is_some_and(|at| now >= at) {
            self.retry_at = None;
        }
        let mut open = false;
        for (index, reserve) in preempt.reserves.iter().enumerate() {
            if reserve.is_closed() {
                continue;
            }
            open = true;
            while self.retry_at.is_none() && reserve.ready() + reserve.starting() < preempt.standbys
            {
                reserve.start_one();
                if carrier::spawn(shared, index, Role::Standby, None).is_err() {
                    reserve.start_failed();
                    self.retry_at = Some(now + self.backoff);
                    self.backoff = (self.backoff * 2).min(IDLE);
                }
            }
        }
        // Healthy again (every open slot stocked): the next failure starts a fresh backoff.
        if preempt
            .reserves
            .iter()
            .all(|r| r.is_closed() || r.ready() >= preempt.standbys)
        {
            self.backoff = RETRY;
        }
        let timeout = self
            .retry_at
            .map_or(IDLE, |at| at.saturating_duration_since(Instant::now()));
        (open, timeout)
    }
}
