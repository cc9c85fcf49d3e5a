//! Errors: why a task has no value, and why a pool could not be built.

use std::any::Any;
use std::fmt;
use std::io;

use crate::budget::Killed;

/// Why [`JoinHandle::join`](crate::JoinHandle::join) returned no value.
///
/// More variants may come, so match with a wildcard arm or use the `is_*` methods.
#[non_exhaustive]
pub enum JoinError {
    /// The closure panicked. The payload is kept as given to `panic!` or
    /// [`std::panic::panic_any`], whatever its type; the runner that ran it lives on.
    Panicked(PanicPayload),
    /// The pool was shut down before the task started: it was spawned after
    /// [`Pool::shutdown`](crate::Pool::shutdown) began, or it was still queued when a
    /// [`Pool::shutdown_timeout`](crate::Pool::shutdown_timeout) ran out. The closure was
    /// dropped without running.
    Shutdown,
    /// The task was killed: its budget ran out, its handle cancelled it, or it overflowed
    /// its stack. [`Killed`] says why and how.
    Killed(Killed),
    /// The task was spawned with a [`Budget`](crate::Budget) on a pool built with
    /// preemption off, which has no timers to enforce it; it was dropped unrun.
    BudgetUnsupported,
    /// The task was spawned with a budget that has a zero limit or one longer than
    /// [`MAX_BUDGET`](crate::MAX_BUDGET); it was dropped unrun.
    InvalidBudget(crate::Budget),
    /// The task was spawned with a budget while the pool cannot enforce one: a signal
    /// handler installed after the pool's, which does not pass the pool's deliveries on,
    /// has replaced it ([`Stats::signal_handler_replaced`](crate::Stats)). It was dropped
    /// unrun.
    KillsUnenforceable,
    /// This process is a child forked after the pool was built, and the pool's threads
    /// exist only in the parent (fork copies only the calling thread): a task spawned
    /// here was dropped unrun, and a task not finished at the fork never finishes here.
    /// Build a new pool in the child.
    Forked,
}

impl JoinError {
    /// True if the task panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, JoinError::Panicked(_))
    }

    /// True if the task never ran because the pool was shut down.
    pub fn is_shutdown(&self) -> bool {
        matches!(self, JoinError::Shutdown)
    }

    /// True if the task was killed (cancelled or frozen).
    pub fn is_killed(&self) -> bool {
        matches!(self, JoinError::Killed(_))
    }

    /// How and why the task was killed, if it was.
    pub fn killed(&self) -> Option<Killed> {
        match self {
            JoinError::Killed(killed) => Some(*killed),
            _ => None,
        }
    }

    /// The panic payload, if the task panicked; pass it to [`std::panic::resume_unwind`] to
    /// re-raise the panic in the joining thread.
    pub fn into_panic(self) -> Option<Box<dyn Any + Send + 'static>> {
        match self {
            JoinError::Panicked(payload) => Some(payload.into_inner()),
            _ => None,
        }
    }

    /// The panic message, when the payload is a `&str` or a `String` (what `panic!` makes).
    pub fn panic_message(&self) -> Option<&str> {
        match self {
            JoinError::Panicked(payload) => payload.message(),
            _ => None,
        }
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Panicked(payload) => f.debug_tuple("Panicked").field(payload).finish(),
            JoinError::Shutdown => f.write_str("Shutdown"),
            JoinError::Killed(killed) => f.debug_tuple("Killed").field(killed).finish(),
            JoinError::BudgetUnsupported => f.write_str("BudgetUnsupported"),
            JoinError::KillsUnenforceable => f.write_str("KillsUnenforceable"),
            JoinError::Forked => f.write_str("Forked"),
            JoinError::InvalidBudget(b) => f.debug_tuple("InvalidBudget").field(b).finish(),
        }
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Panicked(payload) => match payload.message() {
                Some(msg) => write!(f, "task panicked: {msg}"),
                None => f.write_str("task panicked with a non-string payload (see into_panic)"),
            },
            JoinError::Shutdown => f.write_str(
                "task not run: the pool was shut down before it started; \
                 spawn only on a pool that is still running",
            ),
            JoinError::Killed(killed) => fmt::Display::fmt(killed, f),
            JoinError::InvalidBudget(budget) => write!(
                f,
                "task not run: {budget:?} has a zero limit or one longer than MAX_BUDGET; \
                 limits must be above zero (Budget::unlimited() for none)"
            ),
            JoinError::BudgetUnsupported => f.write_str(
                "task not run: budgets need preemption, and this pool was built with \
                 preemption(false); build it with preemption on to spawn with a budget",
            ),
            JoinError::KillsUnenforceable => f.write_str(
                "task not run: another signal handler that does not chain to the pool's \
                 has replaced it, so no budget can be enforced; install your handler \
                 before building the pool, or have it call the previous one (as \
                 signal-hook does), or build the pool with another signal",
            ),
            JoinError::Forked => f.write_str(
                "task not run: this process is a fork of the one that built the pool, and \
                 the pool's threads did not come along; build a new pool in the child",
            ),
        }
    }
}

impl std::error::Error for JoinError {}

/// What a task panicked with.
///
/// The payload of `panic!` is a `&'static str` or a `String`, readable with
/// [`message`](PanicPayload::message); [`std::panic::panic_any`] can raise any `Send` type,
/// which comes back whole from [`into_inner`](PanicPayload::into_inner).
///
/// `PanicPayload` is `Sync` (so [`JoinError`] is an ordinary `Error + Send + Sync`) even
/// though an arbitrary payload need not be: a payload of another type is never reachable
/// through a shared reference, only by value.
pub struct PanicPayload(Payload);

enum Payload {
    Str(&'static str),
    String(String),
    Other(Exclusive<Box<dyn Any + Send + 'static>>),
}

/// A value reachable only by moving it out, never through `&`.
struct Exclusive<T>(T);

// SAFETY: `Sync` promises that `&Exclusive<T>` may be used from several threads. No method
// of `Exclusive` (or of `PanicPayload`) hands out `&T`: the value is only ever moved out
// (`PanicPayload::into_inner`, which takes `self`). Sharing a reference therefore shares
// nothing of `T`, so only `T: Send` is needed.
unsafe impl<T: Send> Sync for Exclusive<T> {}

impl PanicPayload {
    pub(crate) fn new(payload: Box<dyn Any + Send + 'static>) -> Self {
        let payload = match payload.downcast::<&'static str>() {
            Ok(s) => Payload::Str(*s),
            Err(payload) => match payload.downcast::<String>() {
                Ok(s) => Payload::String(*s),
                Err(payload) => Payload::Other(Exclusive(payload)),
            },
        };
        PanicPayload(payload)
    }

    /// The message, when the payload is a `&str` or a `String`.
    pub fn message(&self) -> Option<&str> {
        match &self.0 {
            Payload::Str(s) => Some(s),
            Payload::String(s) => Some(s),
            Payload::Other(_) => None,
        }
    }

    /// The payload as the panic raised it, for downcasting or
    /// [`std::panic::resume_unwind`].
    pub fn into_inner(self) -> Box<dyn Any + Send + 'static> {
        match self.0 {
            Payload::Str(s) => Box::new(s),
            Payload::String(s) => Box::new(s),
            Payload::Other(Exclusive(payload)) => payload,
        }
    }
}

impl fmt::Debug for PanicPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.message() {
            Some(msg) => fmt::Debug::fmt(msg, f),
            None => f.write_str("<non-string payload>"),
        }
    }
}

/// Why [`Builder::build`](crate::Builder::build) could not make a pool.
#[non_exhaustive]
#[derive(Debug)]
pub enum BuildError {
    /// `workers(0)`: a pool needs at least one slot.
    NoWorkers,
    /// `cores([])`: an explicit core list must name at least one core.
    NoCores,
    /// With pinning on, each slot owns one core, so there cannot be more slots than cores.
    TooManyWorkers {
        /// Slots asked for.
        workers: usize,
        /// Cores available to pin them to.
        cores: usize,
    },
    /// More workers than [`MAX_WORKERS`](crate::MAX_WORKERS).
    WorkerLimit {
        /// Slots asked for.
        workers: usize,
        /// The most accepted.
        limit: usize,
    },
    /// A core in `cores(..)` that this process may not run on (see `taskset`, cgroup
    /// cpusets).
    CoreNotAllowed {
        /// The core asked for.
        core: usize,
        /// The cores this thread may run on.
        allowed: Vec<usize>,
    },
    /// The same core named twice in `cores(..)`.
    DuplicateCore(usize),
    /// `stack_size` below the minimum a runner needs.
    StackTooSmall {
        /// Bytes asked for.
        requested: usize,
        /// The smallest accepted size.
        minimum: usize,
    },
    /// The thread name prefix contains a NUL byte, which thread names cannot hold.
    InvalidThreadName,
    /// `spin` longer than the accepted maximum: an idle runner would burn its core.
    SpinTooLong {
        /// The spin asked for.
        requested: std::time::Duration,
        /// The longest accepted spin.
        maximum: std::time::Duration,
    },
    /// `quantum` outside the accepted range.
    InvalidQuantum {
        /// The quantum asked for.
        requested: std::time::Duration,
        /// The shortest accepted.
        minimum: std::time::Duration,
        /// The longest accepted.
        maximum: std::time::Duration,
    },
    /// `signal(n)` with a signal the pool cannot use for its timers.
    InvalidSignal(i32),
    /// The pool's signal is blocked on the thread building it: the embedder most likely
    /// takes it with `sigwait` or a `signalfd`, and the pool's threads (which must unblock
    /// it) would steal those deliveries.
    SignalBlocked(i32),
    /// `max_carriers(0)`: a handoff always makes one carrier; turn preemption off instead.
    NoCarriers,
    /// `keep_quanta(n)` outside `1..=MAX_KEEP_QUANTA`.
    InvalidKeepQuanta {
        /// Quanta asked for.
        requested: u32,
        /// The most accepted.
        maximum: u32,
    },
    /// `standbys(n)` outside `1..=MAX_STANDBYS`.
    InvalidStandbys {
        /// Standbys asked for.
        requested: u32,
        /// The most accepted.
        maximum: u32,
    },
    /// `default_budget(..)` with a zero or over-long limit (see
    /// [`MAX_BUDGET`](crate::MAX_BUDGET)), or `spawn_with` one.
    InvalidBudget(crate::Budget),
    /// `default_budget(..)` on a pool with preemption off: budgets need its timers.
    BudgetNeedsPreemption,
    /// `max_frozen(0)`: every hard kill would be refused; allow at least 1.
    NoFrozen,
    /// The OS refused something the pool needs: reading the affinity mask, creating a
    /// pool thread, pinning it, installing the signal handler or creating its timers.
    Os {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::NoWorkers => f.write_str("workers(0): a pool needs at least one worker"),
            BuildError::NoCores => f.write_str("cores([]): name at least one core, or leave cores unset to use all allowed cores"),
            BuildError::TooManyWorkers { workers, cores } => write!(
                f,
                "{workers} workers but only {cores} cores to pin them to: with pinning on, each worker owns one core; \
                 ask for at most {cores} workers, or turn pinning off with pin(false)"
            ),
            BuildError::WorkerLimit { workers, limit } => write!(
                f,
                "{workers} workers is above the limit of {limit}; a pool's workers are meant to match its cores"
            ),
            BuildError::CoreNotAllowed { core, allowed } => write!(
                f,
                "core {core} is not in this process's affinity mask (allowed: {allowed:?}); pick cores from that list"
            ),
            BuildError::DuplicateCore(core) => {
                write!(f, "core {core} is listed twice in cores(..); list each core once")
            }
            BuildError::StackTooSmall { requested, minimum } => write!(
                f,
                "stack_size({requested}) is below the minimum of {minimum} bytes a runner needs"
            ),
            BuildError::InvalidThreadName => {
                f.write_str("the thread name prefix contains a NUL byte; thread names cannot")
            }
            BuildError::SpinTooLong { requested, maximum } => write!(
                f,
                "spin({requested:?}) is longer than the maximum {maximum:?}: an idle runner would burn its core; use a shorter spin"
            ),
            BuildError::InvalidQuantum { requested, minimum, maximum } => write!(
                f,
                "quantum({requested:?}) is outside {minimum:?}..={maximum:?}; pick a quantum in that range, or turn preemption off"
            ),
            BuildError::InvalidSignal(signal) => write!(
                f,
                "signal({signal}) cannot drive the pool's timers; use SIGALRM, SIGVTALRM, SIGPROF, SIGUSR1, SIGUSR2 or a real-time signal (SIGRTMIN..=SIGRTMAX)"
            ),
            BuildError::SignalBlocked(signal) => write!(
                f,
                "signal {signal} is blocked on this thread, so the program probably waits for it with sigwait or a signalfd; \
                 give the pool a signal of its own with Builder::signal (a real-time one such as SIGRTMIN()+1)"
            ),
            BuildError::NoCarriers => f.write_str(
                "max_carriers(0) would forbid every handoff; allow at least 1, or turn preemption off with preemption(false)",
            ),
            BuildError::InvalidKeepQuanta { requested, maximum } => write!(
                f,
                "keep_quanta({requested}) is outside 1..={maximum}; 1 makes the quantum strict"
            ),
            BuildError::InvalidStandbys { requested, maximum } => write!(
                f,
                "standbys({requested}) is outside 1..={maximum}; a preemptible slot needs at least one parked standby"
            ),
            BuildError::InvalidBudget(budget) => write!(
                f,
                "{budget:?} has a zero limit or one longer than MAX_BUDGET; limits must be above zero \
                 (use Budget::unlimited() for none)"
            ),
            BuildError::BudgetNeedsPreemption => f.write_str(
                "default_budget(..) needs preemption (its timers enforce budgets); remove preemption(false) or the budget",
            ),
            BuildError::NoFrozen => f.write_str(
                "max_frozen(0) would refuse every hard kill; allow at least 1",
            ),
            BuildError::Os { what, source } => write!(f, "could not {what}: {source}"),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::Os { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// [`Pool::shutdown_timeout`](crate::Pool::shutdown_timeout) ran out while some runners
/// were still inside a task.
///
/// Those runners were detached: they finish their current task in the background and then
/// exit. Every task that was still queued was rejected with [`JoinError::Shutdown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownTimedOut {
    pub(crate) busy_runners: usize,
}

impl ShutdownTimedOut {
    /// How many runners were still running a task at the deadline.
    pub fn busy_runners(&self) -> usize {
        self.busy_runners
    }
}

impl fmt::Display for ShutdownTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shutdown timed out with {} runner(s) still inside a task; they were detached and \
             queued tasks were rejected",
            self.busy_runners
        )
    }
}

impl std::error::Error for ShutdownTimedOut {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_keep_their_type_and_message() {
        let p = PanicPayload::new(Box::new("static"));
        assert_eq!(p.message(), Some("static"));
        assert_eq!(p.into_inner().downcast_ref::<&str>(), Some(&"static"));
        let p = PanicPayload::new(Box::new(String::from("owned")));
        assert_eq!(format!("{p:?}"), "\"owned\"");
        assert_eq!(
            p.into_inner().downcast_ref::<String>().map(String::as_str),
            Some("owned")
        );
        let p = PanicPayload::new(Box::new(17u64));
        assert_eq!(p.message(), None);
        assert_eq!(format!("{p:?}"), "<non-string payload>");
        assert_eq!(p.into_inner().downcast_ref::<u64>(), Some(&17));
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = BuildError::TooManyWorkers {
            workers: 3,
            cores: 2,
        };
        assert!(e.to_string().contains("at most 2 workers"));
        let e = ShutdownTimedOut { busy_runners: 1 };
        assert!(e.to_string().contains("1 runner(s)"));
        let e = BuildError::Os {
            what: "spawn a runner thread",
            source: io::Error::from(io::ErrorKind::OutOfMemory),
        };
        assert!(std::error::Error::source(&e).is_some());
    }
}
