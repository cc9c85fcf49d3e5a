//! The monitor: one small thread per preemptible pool, like Go's sysmon. It keeps every
//! slot's reserve stocked with parked standbys, so a handoff never waits for
//! `pthread_create`, and joins pool threads that have exited.
//!
//! 1. Read the bell (a handoff, a closing slot, or a failed start rings it).
//! 2. For each open slot, start standbys until parked plus starting reaches the target.
//!    Standbys are created here, by a thread at normal priority: threads inherit their
//!    creator's scheduling policy, and a demoted carrier must never create one.
//! 3. Join pool threads that have exited (carriers that retired).
//! 4. Enforce budgets (`kill.rs`): cancel tasks whose budget ran out, ask for freezes
//!    when grace periods end. Every 100 ms, re-read the loaded libraries for the freeze
//!    gate (`places.rs`).
//! 5. Every slot closed (shutdown has ended all runners) and no budget left to enforce:
//!    exit. Otherwise sleep on the bell while it still reads what step 1 read, until the
//!    next budget is due, or until a timeout.
//!
//! When the OS refuses a thread, or a started standby cannot set itself up (no timer, no
//! record, no alternate stack), the monitor starts nothing for a while, backing
//! off from 10 ms to 1 s, rather than spin creating threads that fail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::carrier::{self, Role};
use crate::loom::Ordering;
use crate::places;
use crate::pool::Shared;
use crate::sys::{self, async_safe};

/// How often the monitor re-reads the loaded libraries for the freeze gate (a `dlopen`).
const REFRESH: Duration = Duration::from_millis(100);

/// How long to wait before retrying after the OS refused a thread or a thread could not
/// set itself up; doubled on each failure in a row, up to `IDLE`.
const RETRY: Duration = Duration::from_millis(10);
/// How long to sleep with nothing to do (only to join exited threads now and then).
const IDLE: Duration = Duration::from_secs(1);

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
fn sweep(shared: &Shared, preempt: &crate::handler::Preempt) {
    let kills = preempt.kills;
    let now = async_safe::monotonic_ns();
    let busy = (BUSY.as_nanos() as u64).max(preempt.quantum_ns.saturating_mul(4));
    for (index, record) in crate::handler::RECORDS.iter().enumerate() {
        if !record.serves(kills) {
            continue;
        }
        let Some(slot) = record.serving_slot() else {
            continue;
        };
        let tid = record.tid.load(Ordering::Relaxed);
        let Some(status) = sys::thread_status(tid) else {
            continue;
        };
        if status.blocks(preempt.signal) && !record.in_handler() {
            match record.busy_since() {
                Some(start) if now.saturating_sub(start) >= busy => {
                    kills.hand_off_blocked(index, tid, true);
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
            if let Some(start) = record.busy_since() {
                if now.saturating_sub(start) >= busy {
                    kills.hand_off_blocked(index, tid, false);
                    continue;
                }
            }
        }
        if let Some(cpus) = &shared.threads.affinity[slot] {
            if !status.allows_exactly(cpus) && record.serving_slot().is_some() {
                sys::set_thread_affinity(tid, &sys::cpu_set(cpus));
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
}

pub(crate) fn run(shared: Arc<Shared>) {
    let Some(preempt) = &shared.preempt else {
        return;
    };
    let failures = || -> u64 { preempt.reserves.iter().map(|r| r.setup_failures()).sum() };
    let mut seen_failures = failures();
    let mut backoff = RETRY;
    let mut retry_at: Option<Instant> = None;
    let mut next_refresh = Instant::now();
    loop {
        let bell = preempt.bell().load(Ordering::Acquire);
        let now = Instant::now();
        // A standby that failed to set up rang the bell: back off before trying again.
        let failures_now = failures();
        if failures_now != seen_failures {
            seen_failures = failures_now;
            retry_at = Some(now + backoff);
            backoff = (backoff * 2).min(IDLE);
        }
        let may_start = retry_at.is_none_or(|at| now >= at);
        if may_start && retry_at.is_some() {
            retry_at = None;
        }
        let mut open = false;
        for (index, reserve) in preempt.reserves.iter().enumerate() {
            if reserve.is_closed() {
                continue;
            }
            open = true;
            while may_start
                && retry_at.is_none()
                && reserve.ready() + reserve.starting() < preempt.standbys
            {
                reserve.start_one();
                if carrier::spawn(&shared, index, Role::Standby, None).is_err() {
                    reserve.start_failed();
                    retry_at = Some(now + backoff);
                    backoff = (backoff * 2).min(IDLE);
                }
            }
        }
        // Healthy again (every open slot stocked): the next failure starts a fresh backoff.
        if preempt
            .reserves
            .iter()
            .all(|r| r.is_closed() || r.ready() >= preempt.standbys)
        {
            backoff = RETRY;
        }
        shared.join_exited();
        // Budgets, cancels and freezes (`kill.rs`); a library loaded since the last look
        // joins the freeze gate's ranges.
        let due = preempt.kills.enforce(&|| shared.thread_frozen());
        if now >= next_refresh {
            places::refresh();
            preempt.kills.check_handler();
            sweep(&shared, preempt);
            next_refresh = now + REFRESH;
        }
        // Tasks detached by a `shutdown_timeout` still have their budgets enforced.
        if !open && due == u64::MAX {
            return;
        }
        let mut timeout = retry_at.map_or(IDLE, |at| at.saturating_duration_since(Instant::now()));
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
