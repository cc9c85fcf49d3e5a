//! `Pool::builder()`: settings, their checks, and starting the runners.

use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use crate::budget::Budget;
use crate::error::BuildError;

use crate::handler::{self, CarrierLine, Preempt, TimerClock};
use crate::kill::Kills;
use crate::pool::Pool;
use crate::runtime::carrier::{self, Role};
use crate::runtime::shared::{Shared, Threads};
use crate::runtime::{monitor, signal, text_scan};
use crate::sync::reserve::Reserve;
use crate::sys;

/// The smallest runner stack accepted: the runtime's own frames plus `catch_unwind` and a
/// panic's formatting need a few pages; below this, ordinary tasks would overflow.
pub const MIN_STACK_SIZE: usize = 64 * 1024;

/// The most workers a pool may have.
pub const MAX_WORKERS: usize = 1024;

/// The longest idle spin accepted.
pub const MAX_SPIN: Duration = Duration::from_millis(10);

/// How long an idle runner spins, looking for work, before it sleeps.
///
/// Waking a sleeping runner costs 40–80 µs on the 2-vCPU VMs this was tuned on (an idle
/// vCPU must be woken), about what spawning a thread costs, while taking a task from a
/// spinning runner costs well under a microsecond. Spinning yields the core every few
/// rounds, so a spawner that shares the core still runs. See `benches/dispatch.rs` for the
/// measurement behind the value.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(20);

/// How long a task may hold its slot, while another task waits for it, before the slot is
/// handed to a standby.
///
/// With the default [`TimerClock::Contention`], a quantum costs nothing while nothing
/// waits (no timer is armed), and about one timer expiry when something does; what it sets
/// is how long a short task can wait behind a long one, and how often a task of moderate
/// length is handed off (about 130 µs of CPU each on these VMs, all told) when the pool
/// is contended, unless its history says it is about to end ([`Builder::keep_quanta`]).
/// `cargo bench --bench preempt` measures the throughput lost at this value against
/// preemption off, and how late the quantum ends.
pub const DEFAULT_QUANTUM: Duration = Duration::from_micros(500);

/// The shortest quantum accepted: below it, signal delivery alone (2–3 µs) becomes a
/// visible share of every quantum.
pub const MIN_QUANTUM: Duration = Duration::from_micros(50);

/// The longest quantum accepted.
pub const MAX_QUANTUM: Duration = Duration::from_secs(60);

/// How many quanta in all a task may keep its core by default while someone waits, when
/// the pool's recent tasks that ran as long ended within them (see
/// [`Builder::keep_quanta`]).
pub const DEFAULT_KEEP_QUANTA: u32 = 4;

/// The most accepted by [`Builder::keep_quanta`].
pub const MAX_KEEP_QUANTA: u32 = crate::handler::MAX_KEEP_QUANTA;

/// The default cap on carriers per slot (see [`Builder::max_carriers`]).
pub const DEFAULT_MAX_CARRIERS: u32 = 64;

/// Standbys kept parked per slot by default. Two absorb two long tasks in a row on one
/// slot while the monitor starts replacements, which can take milliseconds when every
/// core is busy (the monitor and the new thread must get CPU time to run).
pub const DEFAULT_STANDBYS: u32 = 2;

/// The most standbys per slot accepted.
pub const MAX_STANDBYS: u32 = 16;

/// Default of [`Builder::max_frozen`].
pub const DEFAULT_MAX_FROZEN: usize = 1024;

/// Default of [`Builder::max_freeze_deferral`].
pub const DEFAULT_MAX_FREEZE_DEFERRAL: Duration = Duration::from_secs(1);

/// Settings for a [`Pool`]. Every setting is checked by [`build`](Builder::build), which
/// returns a [`BuildError`] saying what to change rather than panicking.
#[derive(Debug, Clone)]
#[must_use = "a Builder does nothing until build() is called"]
pub struct Builder {
    workers: Option<usize>,
    cores: Option<Vec<usize>>,
    pin: bool,
    name: String,
    stack_size: Option<usize>,
    spin: Duration,
    preemption: bool,
    quantum: Duration,
    signal: i32,
    clock: TimerClock,
    max_carriers: u32,
    standbys: u32,
    keep_quanta: u32,
    default_budget: Budget,
    max_frozen: usize,
    max_freeze_deferral: Duration,
    cpu_accounting: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// The defaults: pinning on, one worker per allowed core, threads named
    /// `microsched-<slot>`, std's default stack size, [`DEFAULT_SPIN`].
    pub fn new() -> Builder {
        Builder {
            workers: None,
            cores: None,
            pin: true,
            name: "microsched".to_owned(),
            stack_size: None,
            spin: DEFAULT_SPIN,
            preemption: true,
            quantum: DEFAULT_QUANTUM,
            signal: libc::SIGALRM,
            clock: TimerClock::default(),
            max_carriers: DEFAULT_MAX_CARRIERS,
            standbys: DEFAULT_STANDBYS,
            keep_quanta: DEFAULT_KEEP_QUANTA,
            default_budget: Budget::unlimited(),
            max_frozen: DEFAULT_MAX_FROZEN,
            max_freeze_deferral: DEFAULT_MAX_FREEZE_DEFERRAL,
            cpu_accounting: false,
        }
    }

    /// The number of slots, each served by one runner thread. Default: one per core in
    /// [`cores`](Builder::cores). With pinning on, at most one per core.
    pub fn workers(mut self, workers: usize) -> Builder {
        self.workers = Some(workers);
        self
    }

    /// The cores to run on, by CPU index. Default: every core this thread may run on
    /// (its affinity mask, so `taskset` and cgroup cpusets are respected). With pinning,
    /// slot `i` is pinned to the `i`-th core of the list; without, every runner may run on
    /// any core of the list.
    pub fn cores(mut self, cores: impl IntoIterator<Item = usize>) -> Builder {
        self.cores = Some(cores.into_iter().collect());
        self
    }

    /// Pin each runner to its own core (default `true`). Pinning is what lets a slot own
    /// a core; turn it off to share cores with other work or to run more workers than cores.
    pub fn pin(mut self, pin: bool) -> Builder {
        self.pin = pin;
        self
    }

    /// The prefix of runner thread names; the slot index is appended (`prefix-0`, ...).
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Builder {
        self.name = prefix.into();
        self
    }

    /// The stack size of runner threads, in bytes; at least [`MIN_STACK_SIZE`]. Tasks run on
    /// this stack.
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack_size = Some(bytes);
        self
    }

    /// How long an idle runner spins before it sleeps (default [`DEFAULT_SPIN`], at most
    /// [`MAX_SPIN`]). Zero makes runners sleep at once: lowest CPU use, highest wake-up
    /// latency.
    pub fn spin(mut self, spin: Duration) -> Builder {
        self.spin = spin;
        self
    }

    /// Timer preemption (default on): a task that runs longer than the
    /// [`quantum`](Builder::quantum) has its slot handed to a fresh thread, and runs on
    /// demoted to `SCHED_IDLE`, so the tasks queued behind it are not held up. Off, a slot
    /// runs its tasks strictly one after another, with no timers, signals or extra threads.
    pub fn preemption(mut self, on: bool) -> Builder {
        self.preemption = on;
        self
    }

    /// How long a task may run before its slot is handed off (default
    /// [`DEFAULT_QUANTUM`], between [`MIN_QUANTUM`] and [`MAX_QUANTUM`]).
    pub fn quantum(mut self, quantum: Duration) -> Builder {
        self.quantum = quantum;
        self
    }

    /// With the default [`TimerClock::Contention`]: how many quanta in all (counted from
    /// its start) a task may keep its core while a task waits behind it, when the pool's
    /// recent history says so (default [`DEFAULT_KEEP_QUANTA`], between 1 and
    /// [`MAX_KEEP_QUANTA`]).
    ///
    /// A handoff costs about 130 µs of CPU on a VM all told (the expiry, the standby's
    /// wake, the demotion, the carrier's switches and rejoin), and the task handed off
    /// then runs only on idle time, after every task that starts later has had its
    /// quantum: right for a task that will run for long, wasteful for one that ends soon
    /// after its quantum. So the pool records how long its tasks that outlived their
    /// quantum ran in the end, and when at least three in four of the recent ones that
    /// had run as long as the task now at its quantum's end ended within this many
    /// quanta, the task keeps its core until then ([`Stats::kept`](crate::Stats::kept)).
    /// Past that bound it is handed off whatever the history says: each task ahead of a
    /// queued one holds its core at most this many quanta instead of one (a tenant that
    /// fills the history with tasks just under the bound gains no more than that, per
    /// task of its own ahead). `1` makes the quantum strict: every task queued behind a
    /// busy runner waits about a quantum per task ahead, at a handoff for every task that
    /// outlives it.
    pub fn keep_quanta(mut self, quanta: u32) -> Builder {
        self.keep_quanta = quanta;
        self
    }

    /// The signal the pool's timers raise (default `SIGALRM`). Any of `SIGALRM`,
    /// `SIGVTALRM`, `SIGPROF`, `SIGUSR1`, `SIGUSR2` or a real-time signal
    /// (`libc::SIGRTMIN()..=libc::SIGRTMAX()`). Deliveries of the signal that are not the
    /// pool's own timers (`alarm()`, `kill`) are passed on to whatever handler was
    /// installed before the pool, or get the default action, as they would have without
    /// the pool. Pick another signal here, such as a real-time one, if the embedder:
    ///
    /// - installs its own handler for the signal *after* building the pool (it replaces
    ///   the pool's, and the pool's preemption stops);
    /// - blocks the signal to take it with `sigwait` or a `signalfd` (refused at build:
    ///   [`BuildError::SignalBlocked`](crate::BuildError::SignalBlocked));
    /// - relies on the signal interrupting syscalls with `EINTR`, or on its handler
    ///   running on the normal stack: chained handlers run under the pool's action, which
    ///   has `SA_RESTART` and `SA_ONSTACK`.
    pub fn signal(mut self, signal: i32) -> Builder {
        self.signal = signal;
        self
    }

    /// Which clock drives preemption (default [`TimerClock::Contention`]: no timer while
    /// nothing waits; when a task is queued behind busy runners, their quantum ends on time,
    /// at about one timer expiry each). [`TimerClock::ThreadCpu`] ticks on the kernel's
    /// tick and hands off whether or not anything waits, between the quantum and one tick
    /// after it; [`TimerClock::Monotonic`] hands off within tens of µs of the quantum, any
    /// quantum, at one timer expiry per quantum per busy runner.
    pub fn timer_clock(mut self, clock: TimerClock) -> Builder {
        self.clock = clock;
        self
    }

    /// The most carriers (demoted threads still running a task that was handed off) a
    /// slot may have at once (default [`DEFAULT_MAX_CARRIERS`]). When a slot is at the cap,
    /// its next overrunning task keeps the slot until one of the carriers finishes: a
    /// bound on threads and memory takes precedence over fairness. Counted in
    /// [`Stats::capped`](crate::Stats::capped).
    pub fn max_carriers(mut self, carriers: u32) -> Builder {
        self.max_carriers = carriers;
        self
    }

    /// Standby threads kept parked per slot, ready to take it over (default
    /// [`DEFAULT_STANDBYS`], at most
    /// [`MAX_STANDBYS`]). More absorb bursts of handoffs on one slot without waiting for
    /// the monitor to start replacements. Carriers whose tasks end rejoin up to four
    /// times this many; those past it exit after a second without a handoff.
    pub fn standbys(mut self, standbys: u32) -> Builder {
        self.standbys = standbys;
        self
    }

    /// The budget of every task spawned with [`Pool::spawn`] (default
    /// [`Budget::unlimited`]); [`Pool::spawn_with`] overrides it per task. Needs preemption.
    pub fn default_budget(mut self, budget: Budget) -> Builder {
        self.default_budget = budget;
        self
    }

    /// The most threads this pool freezes (default [`DEFAULT_MAX_FROZEN`]). A frozen thread
    /// keeps its stack reserved and what its task owned until the process exits. Past the
    /// cap, a hard kill is refused and counted in [`Stats::kills_refused`](crate::Stats):
    /// the task keeps running with its cancel flag set, and is abandoned
    /// ([`KillHow::Abandoned`](crate::KillHow)) if it has not returned within its grace
    /// period plus [`max_freeze_deferral`](Builder::max_freeze_deferral).
    pub fn max_frozen(mut self, threads: usize) -> Builder {
        self.max_frozen = threads;
        self
    }

    /// How long, after its grace period, a kill may wait for a safe point to freeze the
    /// task's thread (default [`DEFAULT_MAX_FREEZE_DEFERRAL`]), in wall-clock time. The
    /// monitor asks again every 250 µs meanwhile. Past it, a panicking thread (one whose
    /// destructors never end) may be frozen in its destructors, and 20 ms later a kill
    /// that still found no safe point (a thread inside a lock-holding std frame, in a
    /// no-freeze section, with the pool's signal blocked, or starved of CPU) is
    /// abandoned: its handle resolves with [`KillHow::Abandoned`](crate::KillHow) and the
    /// thread runs on outside the pool. So every budgeted join resolves within budget +
    /// grace + this + 20 ms. A task unwinding from its own cancel is never frozen in its
    /// destructors.
    pub fn max_freeze_deferral(mut self, deferral: Duration) -> Builder {
        self.max_freeze_deferral = deferral;
        self
    }

    /// Measure the CPU time of every task, not only of those with a budget (default off:
    /// it costs two `clock_gettime` syscalls per task, about 1 µs on a VM). Read it with
    /// [`JoinHandle::join_with_cpu_time`](crate::JoinHandle::join_with_cpu_time).
    pub fn cpu_accounting(mut self, on: bool) -> Builder {
        self.cpu_accounting = on;
        self
    }

    /// Checks the settings, starts the runners, and returns the pool once every runner is
    /// running (pinned, if pinning is on).
    pub fn build(self) -> Result<Pool, BuildError> {
        // Called from a task, it takes the crate's own process-wide locks (the gate's
        // tables, the spare registries, the installed signals): never frozen in here.
        let _no_freeze = crate::handler::FreezeGuard::new();
        let affinities = self.check()?;
        let workers = affinities.len();
        // The process's waker thread (an awaited handle's wakes), started here, on the
        // embedder's thread, so it inherits a normal scheduling policy and the process's
        // cores, not a pool thread's. Failing is not fatal: an await starts it later.
        crate::task::ensure_waker_thread();
        let (preempt, kills) = if self.preemption {
            signal::install(self.signal).map_err(|source| BuildError::Os {
                what: "install the preemption signal handler",
                source,
            })?;
            signal::install_fault_handlers().map_err(|source| BuildError::Os {
                what: "install the stack overflow handler",
                source,
            })?;
            // Taken after the steps that may fail: a registry is never freed.
            let registry = Kills::take(self.signal, self.max_frozen, self.max_freeze_deferral);
            sys::init_time_base();
            text_scan::refresh();
            handler::install_panic_hook();
            let preempt = Preempt {
                signal: self.signal,
                clock: self.clock,
                quantum_ns: self.quantum.as_nanos() as u64,
                tick_ns: sys::kernel_tick().as_nanos() as u64,
                max_carriers: self.max_carriers,
                standbys: self.standbys,
                carrier_cpus: if self.pin {
                    let all: Vec<usize> = affinities.iter().flatten().flatten().copied().collect();
                    Some(sys::cpu_set(&all))
                } else {
                    None
                },
                reserves: (0..workers).map(|_| Reserve::new()).collect(),
                ledger: &registry.ledger,
                line: CarrierLine::new(workers),
                next_long_look: std::sync::atomic::AtomicU64::new(0),
                history: crate::handler::RunHistory::new(self.keep_quanta),
            };
            (Some(preempt), Some(registry))
        } else {
            (None, None)
        };
        let cores = affinities
            .iter()
            .map(|a| {
                if self.pin {
                    a.as_ref().map(|c| c[0])
                } else {
                    None
                }
            })
            .collect();
        let threads = Threads::new(self.name.clone(), self.stack_size, affinities);
        let shared = Arc::new(Shared::new(
            cores,
            self.spin,
            preempt,
            kills,
            threads,
            self.default_budget,
            self.cpu_accounting,
        ));
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut failure = None;
        let standbys = if self.preemption { self.standbys } else { 0 };
        'start: for index in 0..workers {
            let roles = std::iter::once(Role::Runner)
                .chain(std::iter::repeat_n(Role::Standby, standbys as usize));
            for role in roles {
                if role == Role::Standby {
                    if let Some(preempt) = &shared.preempt {
                        preempt.reserves[index].start_one();
                    }
                }
                if let Err(source) = carrier::spawn(&shared, index, role, Some(ready_tx.clone())) {
                    failure = Some(BuildError::Os {
                        what: "spawn a pool thread",
                        source,
                    });
                    // The slots with no runner must not keep their standbys waiting.
                    if let Some(preempt) = &shared.preempt {
                        for reserve in &preempt.reserves[index..] {
                            reserve.close();
                        }
                    }
                    break 'start;
                }
            }
        }
        drop(ready_tx);
        // Each started thread reports once; one that failed to set up exits at once.
        for set_up in ready_rx.iter() {
            if let (Err(source), None) = (set_up, &failure) {
                failure = Some(BuildError::Os {
                    what: "set up a pool thread (pin it, give it its timers)",
                    source,
                });
            }
        }
        if failure.is_none() && shared.preempt.is_some() {
            let monitor = thread::Builder::new().name(format!("{}-monitor", self.name));
            shared.thread_started();
            let for_monitor = shared.clone();
            match monitor.spawn(move || {
                struct Exit(Arc<Shared>);
                impl Drop for Exit {
                    fn drop(&mut self) {
                        self.0.thread_exited();
                    }
                }
                let _exit = Exit(for_monitor.clone());
                monitor::run(for_monitor);
            }) {
                Ok(handle) => shared.keep_handle(handle),
                Err(source) => {
                    shared.thread_exited();
                    failure = Some(BuildError::Os {
                        what: "spawn the monitor thread",
                        source,
                    });
                }
            }
        }
        let pool = Pool::from_shared(shared);
        match failure {
            None => Ok(pool),
            Some(err) => {
                pool.shutdown();
                Err(err)
            }
        }
    }

    /// Validates the settings; returns each slot's affinity (None: leave it alone).
    fn check(&self) -> Result<Vec<Option<Vec<usize>>>, BuildError> {
        if self.name.contains('\0') {
            return Err(BuildError::InvalidThreadName);
        }
        if let Some(requested) = self.stack_size {
            if requested < MIN_STACK_SIZE {
                return Err(BuildError::StackTooSmall {
                    requested,
                    minimum: MIN_STACK_SIZE,
                });
            }
        }
        if self.preemption {
            if !(MIN_QUANTUM..=MAX_QUANTUM).contains(&self.quantum) {
                return Err(BuildError::InvalidQuantum {
                    requested: self.quantum,
                    minimum: MIN_QUANTUM,
                    maximum: MAX_QUANTUM,
                });
            }
            if !sys::usable_timer_signal(self.signal) {
                return Err(BuildError::InvalidSignal(self.signal));
            }
            // Blocked here, the embedder most likely takes it with `sigwait` or a
            // `signalfd`: pool threads must unblock it for their timers, and would then
            // receive the embedder's own deliveries of it too.
            if sys::signal_blocked(self.signal) {
                return Err(BuildError::SignalBlocked(self.signal));
            }
            if self.max_carriers == 0 {
                return Err(BuildError::NoCarriers);
            }
            if !(1..=MAX_KEEP_QUANTA).contains(&self.keep_quanta) {
                return Err(BuildError::InvalidKeepQuanta {
                    requested: self.keep_quanta,
                    maximum: MAX_KEEP_QUANTA,
                });
            }
            if !(1..=MAX_STANDBYS).contains(&self.standbys) {
                return Err(BuildError::InvalidStandbys {
                    requested: self.standbys,
                    maximum: MAX_STANDBYS,
                });
            }
            if self.max_frozen == 0 {
                return Err(BuildError::NoFrozen);
            }
        } else if !self.default_budget.is_unlimited() {
            return Err(BuildError::BudgetNeedsPreemption);
        }
        if self.default_budget.invalid().is_some() {
            return Err(BuildError::InvalidBudget(self.default_budget));
        }
        if self.spin > MAX_SPIN {
            return Err(BuildError::SpinTooLong {
                requested: self.spin,
                maximum: MAX_SPIN,
            });
        }
        let allowed = sys::allowed_cpus().map_err(|source| BuildError::Os {
            what: "read this thread's CPU affinity mask",
            source,
        })?;
        let cores = match &self.cores {
            None => allowed.clone(),
            Some(cores) => {
                if cores.is_empty() {
                    return Err(BuildError::NoCores);
                }
                for (i, &core) in cores.iter().enumerate() {
                    if cores[..i].contains(&core) {
                        return Err(BuildError::DuplicateCore(core));
                    }
                    if !allowed.contains(&core) {
                        return Err(BuildError::CoreNotAllowed {
                            core,
                            allowed: allowed.clone(),
                        });
                    }
                }
                cores.clone()
            }
        };
        let workers = self.workers.unwrap_or(cores.len());
        if workers == 0 {
            return Err(BuildError::NoWorkers);
        }
        if workers > MAX_WORKERS {
            return Err(BuildError::WorkerLimit {
                workers,
                limit: MAX_WORKERS,
            });
        }
        if self.pin && workers > cores.len() {
            return Err(BuildError::TooManyWorkers {
                workers,
                cores: cores.len(),
            });
        }
        Ok((0..workers)
            .map(|i| {
                if self.pin {
                    Some(vec![cores[i]])
                } else if self.cores.is_some() {
                    Some(cores.clone())
                } else {
                    None
                }
            })
            .collect())
    }
}

impl Pool {
    /// A builder with the defaults: one pinned worker per core this thread may run on.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// A pool with the default settings; the same as `Pool::builder().build()`.
    pub fn new() -> Result<Pool, BuildError> {
        Builder::new().build()
    }
}
