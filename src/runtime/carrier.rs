//! The life of a pool thread: runner, carrier, standby, and back.
//!
//! ```text
//!            build / monitor
//!                  │
//!     ┌────────► STANDBY ──(slot closed, or idle 1 s past the target)──► exit
//!     │            │ granted a slot (reserve.rs step 2)
//!     │            ▼
//!     │         RUNNER ──(shutdown: no work left)──► close the slot's reserve, exit
//!     │            │ handed off inside a task (handler/tick.rs)
//!     │            ▼
//!     │         CARRIER: runs its one task on at SCHED_IDLE
//!     │            │ task returned
//!     │            ▼
//!     └── priority restored, pool running, reserve not full? ──no──► exit
//! ```
//!
//! 1. A runner that is handed off keeps running its task, demoted to `SCHED_IDLE` by the
//!    handler and allowed on every core of the pool, and never touches the slot again
//!    (`sync/reserve.rs` step 5).
//! 2. When the task returns, the carrier is counted out of the slot's carriers. During
//!    shutdown it wakes the sleeping runners: they may be waiting for this very task to
//!    count as finished.
//! 3. It rejoins the reserve only if the pool is still running, the reserve holds fewer
//!    than four times the target of parked standbys, and it can get its normal priority
//!    back. (Standbys past the target exit after a second without a handoff.)
//!    It then counts itself in and re-pins itself to the slot's core (the same CPUs the
//!    runner pinned to, so that cannot fail in practice; if it did, it would serve the
//!    slot unpinned).
//!    Unprivileged threads cannot undo `SCHED_IDLE` (`EPERM` without `CAP_SYS_NICE`), and
//!    threads inherit their creator's policy, so a thread that stays demoted never becomes
//!    or creates a standby: it exits, and the monitor starts a fresh standby instead.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread;

use super::shared::{Mode, Shared};
use crate::handler::{self, Record, NO_TIMER, RECORDS};
use crate::runtime::runner::{Runner, Served};
use crate::sync::reserve::Woken;
use crate::sys::{self, async_safe, AltStack, TimerId};

/// A carrier whose task has ended rejoins its slot's standbys while fewer than this many
/// times the pool's target (`Builder::standbys`) are parked or starting; the ones past the
/// target exit after [`STANDBY_KEEP_ALIVE`] without a handoff. A burst of handoffs then
/// reuses the carriers of the last burst instead of starting a thread for each
/// (`sync/reserve.rs`, `wait_or_retire`).
const KEPT_STANDBYS_FACTOR: u32 = 4;

/// How long a standby past the pool's target stays parked without a handoff.
const STANDBY_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// Alternate signal stack per pool thread: the handler needs little, but a chained
/// embedder handler may need more, and issue-4 stack walks tens of KB.
const ALT_STACK: usize = 64 * 1024;

/// What a new thread starts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Runner,
    Standby,
}

/// Starts a pool thread for slot `index`. `ready` hears once whether it is set up: its
/// timers created if preemption is on, and pinned if it is a runner (a standby pins itself
/// once it has counted itself in).
pub(crate) fn spawn(
    shared: &Arc<Shared>,
    index: usize,
    role: Role,
    ready: Option<Sender<io::Result<()>>>,
) -> io::Result<()> {
    let mut builder = thread::Builder::new().name(format!("{}-{index}", shared.threads.name));
    if let Some(bytes) = shared.threads.stack_size {
        builder = builder.stack_size(bytes);
    }
    shared.thread_started();
    let shared2 = shared.clone();
    match builder.spawn(move || main(shared2, index, role, ready)) {
        Ok(handle) => {
            shared.keep_handle(handle);
            Ok(())
        }
        Err(err) => {
            shared.thread_exited();
            Err(err)
        }
    }
}

/// Counts the thread out of the pool however it ends (unless the monitor did already:
/// an abandoned thread).
struct Exit(Arc<Shared>, bool);

impl Drop for Exit {
    fn drop(&mut self) {
        if !self.1 {
            self.0.thread_exited();
        }
    }
}

fn main(shared: Arc<Shared>, index: usize, role: Role, ready: Option<Sender<io::Result<()>>>) {
    let mut exit = Exit(shared.clone(), false);
    // A runner pins itself before it serves; a standby after it has counted itself in
    // (`lifecycle`), so it is available at once instead of after it gets CPU time on its
    // slot's core, which the runner there is keeping busy.
    let thread_state = match setup(&shared, index, role == Role::Runner) {
        Ok(state) => {
            if let Some(ready) = ready {
                let _ = ready.send(Ok(()));
            }
            state
        }
        Err(err) => {
            if let Some(ready) = ready {
                let _ = ready.send(Err(err));
            }
            if let Some(preempt) = &shared.preempt {
                if role == Role::Runner {
                    // No runner will ever hold this slot: let its standbys and the monitor go.
                    preempt.reserves[index].close();
                } else {
                    preempt.reserves[index].setup_failed();
                }
                preempt.ring();
            }
            return;
        }
    };
    // The runtime catches every task panic; an unwind reaching here is a bug in this
    // crate, and a thread that vanished would leave its slot unserved. Abort instead.
    let bomb = AbortOnUnwind;
    exit.1 = lifecycle(&shared, index, role, thread_state.record);
    drop(thread_state);
    std::mem::forget(bomb);
    drop(exit);
}

/// Returns true if the thread was counted out of the pool already (abandoned).
fn lifecycle(
    shared: &Arc<Shared>,
    index: usize,
    mut role: Role,
    record: Option<&'static Record>,
) -> bool {
    if role == Role::Standby {
        if let Some(preempt) = &shared.preempt {
            stand_by(shared, preempt, index, true);
        }
    }
    loop {
        match role {
            Role::Runner => match Runner::main(shared.clone(), index, record) {
                Served::Exit => {
                    if let Some(preempt) = &shared.preempt {
                        preempt.reserves[index].close();
                        preempt.ring();
                    }
                    return false;
                }
                Served::HandedOff => {
                    // Step 2.
                    let (Some(preempt), Some(record)) = (&shared.preempt, record) else {
                        unreachable!("only a preemptible runner is handed off")
                    };
                    let reserve = &preempt.reserves[index];
                    // A slot taken from outside: given to a standby before this thread
                    // may move on (the monitor reads its record until then).
                    record.await_outside_handoff();
                    if record.is_abandoned() {
                        // Its task was abandoned (`kill.rs` step 7) and has now returned:
                        // counted out of the pool and its slot's carriers by the monitor,
                        // it retires once the monitor has given its slot away.
                        record.await_outside_handoff();
                        record.abandoned_thread_exits();
                        reserve.counters.retired.fetch_add(1, Ordering::Relaxed);
                        return true;
                    }
                    record.set_idle();
                    reserve.carrier_done();
                    record.leave_line();
                    // The task's outcome was counted before this fence, shutdown stores
                    // `DRAIN` before the sleepers' fence: either this read sees `DRAIN` and
                    // wakes them, or their re-check sees the count.
                    crate::sync::loom::fence(Ordering::SeqCst);
                    if shared.mode() != Mode::Running {
                        shared.sleep.notify_all();
                    }
                    // Step 3. Count in before re-pinning, as a fresh standby does: the
                    // pin moves this thread onto the slot's busy core.
                    let room = reserve.ready() + reserve.starting()
                        < KEPT_STANDBYS_FACTOR * preempt.standbys;
                    if shared.mode() == Mode::Running
                        && room
                        && sys::restore_normal_policy().is_ok()
                    {
                        reserve.counters.rejoined.fetch_add(1, Ordering::Relaxed);
                        stand_by(shared, preempt, index, false);
                        role = Role::Standby;
                    } else {
                        reserve.counters.retired.fetch_add(1, Ordering::Relaxed);
                        return false;
                    }
                }
            },
            Role::Standby => {
                let Some(preempt) = &shared.preempt else {
                    return false;
                };
                let reserve = &preempt.reserves[index];
                match reserve.wait_or_retire(preempt.standbys, STANDBY_KEEP_ALIVE) {
                    Woken::Granted => {
                        if let Some(record) = record {
                            record.bind(preempt, index);
                        }
                        role = Role::Runner;
                    }
                    Woken::Closed => return false,
                    Woken::Spare => {
                        reserve.counters.retired.fetch_add(1, Ordering::Relaxed);
                        return false;
                    }
                }
            }
        }
    }
}

/// Joins slot `index`'s reserve (`sync/reserve.rs` step 1; `started`: a fresh thread the
/// monitor or the builder counted as starting), then pins itself to the slot's core and,
/// if a runner of the slot overran while no standby was there, makes it look again now.
///
/// Counting in comes before pinning: the pin moves the thread onto the slot's core, which
/// its runner keeps busy, and a standby promised to a handoff gets that core at once (the
/// handoff demotes the runner). The CPUs are the ones the slot's runner pinned itself to,
/// so the pin cannot fail in practice; if it did, the standby would serve the slot unpinned.
fn stand_by(shared: &Shared, preempt: &handler::Preempt, index: usize, started: bool) {
    preempt.reserves[index].park_ready(started);
    let _ = pin(shared, index);
    if let Some(runner) = preempt.reserves[index].take_wanted() {
        handler::poke(runner, preempt);
    }
}

/// What a pool thread sets up for itself and takes down before it exits.
struct ThreadState {
    record: Option<&'static Record>,
    alt: Option<AltStack>,
}

/// Pins the thread and, with preemption on, gives it a record, an alternate signal stack
/// and its timers.
///
/// Pinning comes last (and for a standby, later still): everything before it runs
/// wherever the thread was started (the monitor's core), not on the slot's core, where it
/// would take CPU from the runner, and could take the kernel tick that should have found
/// the runner's task.
fn setup(shared: &Shared, index: usize, pin_now: bool) -> io::Result<ThreadState> {
    let Some(preempt) = &shared.preempt else {
        pin(shared, index)?;
        return Ok(ThreadState {
            record: None,
            alt: None,
        });
    };
    let alt = AltStack::new(ALT_STACK)?;
    alt.install()?;
    async_safe::unblock_signal(preempt.signal);
    let mut state = ThreadState {
        record: None,
        alt: Some(alt),
    };
    let (index_in_table, record) = claim_record()?;
    state.record = Some(record);
    record.index.store(index_in_table, Ordering::Relaxed);
    record.tid.store(sys::gettid(), Ordering::Relaxed);
    record.reset_fate(sys::gettid());
    record.pthread.store(sys::pthread_self(), Ordering::Relaxed);
    record
        .std_thread_id
        .store(super::text_scan::current_thread_id(), Ordering::Relaxed);
    // The guard area: std checks both sides of the reported stack start, since glibc
    // versions differ on whether the guard is inside the reported stack.
    let (low, size, guard) = sys::current_stack()?;
    let guard = guard.max(4096);
    record
        .guard_lo
        .store(low.saturating_sub(guard), Ordering::Relaxed);
    record.guard_hi.store(low + guard, Ordering::Relaxed);
    record.stack_lo.store(low, Ordering::Relaxed);
    record.stack_hi.store(low + size, Ordering::Relaxed);
    record
        .stack_bytes
        .store(size + guard + ALT_STACK, Ordering::Relaxed);
    handler::set_this_record(Some(record));
    record.bind(preempt, index);
    let token = handler::token(index_in_table);
    let precise = sys::create_thread_timer(handler::PRECISE_CLOCK, preempt.signal, token)?;
    record.precise_timer.store(precise.0, Ordering::Relaxed);
    if let Some((clock, period)) = preempt.clock.lifelong_timer(preempt.tick_ns) {
        let timer = sys::create_thread_timer(clock, preempt.signal, token)?;
        record.cpu_timer.store(timer.0, Ordering::Relaxed);
        async_safe::set_timer(timer, period, period, false);
    } else if let Some((clock, _)) = preempt.clock.demand_ticks(preempt.tick_ns) {
        // Left disarmed until a kill targets this thread (`Record::tick_for_kill`).
        let timer = sys::create_thread_timer(clock, preempt.signal, token)?;
        record.cpu_timer.store(timer.0, Ordering::Relaxed);
    }
    if pin_now {
        pin(shared, index)?;
    }
    Ok(state)
}

/// Pins the calling thread to slot `index`'s CPUs, if the pool pins.
fn pin(shared: &Shared, index: usize) -> io::Result<()> {
    match &shared.threads.affinity[index] {
        Some(cpus) => sys::set_current_affinity(cpus),
        None => Ok(()),
    }
}

fn claim_record() -> io::Result<(usize, &'static Record)> {
    RECORDS
        .iter()
        .enumerate()
        .find(|(_, r)| {
            r.in_use
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })
        .ok_or_else(|| {
            io::Error::other(format!(
                "more than {} preemptible pool threads in this process",
                handler::MAX_THREADS
            ))
        })
}

impl Drop for ThreadState {
    fn drop(&mut self) {
        // Timers first, so no expiry can find the record after it is released.
        if let Some(record) = self.record.take() {
            handler::set_this_record(None);
            let cpu = record.cpu_timer.swap(NO_TIMER, Ordering::Relaxed);
            if cpu != NO_TIMER {
                sys::delete_timer(TimerId(cpu));
            }
            // Other threads may be arming the precise timer (`TimerClock::Contention`).
            if let Some(precise) = record.close_precise_timer() {
                sys::delete_timer(precise);
            }
            record.release();
        }
        if self.alt.is_some() {
            AltStack::uninstall();
        }
    }
}

struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        eprintln!(
            "microsched: a pool thread unwound outside a task (a bug in microsched); aborting"
        );
        std::process::abort();
    }
}
