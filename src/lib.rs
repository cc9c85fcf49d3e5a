//! Run Rust closures ("microservices") on worker threads pinned to cores, Linux only.
//!
//! This is the system of Boucher et al., *Putting the "Micro" Back in Microservice*
//! (USENIX ATC'18): Rust's type system, not a process boundary, isolates one function from
//! another, so launching one costs microseconds rather than a `fork`.
//!
//! # The model
//!
//! - A [`Pool`] has one **slot** per core: the right to run tasks on that core, with its
//!   own FIFO queue. One **runner** thread holds each slot, pinned to the slot's core, and
//!   runs task closures directly on its stack: no context switch and no syscall per task.
//! - [`Pool::spawn`] from outside the pool pushes to a global queue; from inside a task it
//!   pushes to the running slot's queue. Idle slots take batches from the global queue and
//!   steal from each other; an idle runner spins briefly, then sleeps until a spawn wakes
//!   it.
//! - A task that has started never moves to another thread. A panic is caught at the task
//!   boundary and handed to the joiner with its payload; the runner goes on.
//! - [`JoinHandle::join`] inside a task of the same pool runs the awaited task inline if it
//!   is still queued (so fan-out and join works on one worker), and never runs any other
//!   task while it waits.
//! - [`Pool::shutdown`] (and dropping the pool) refuses new spawns, runs every task
//!   accepted before it, and joins the runners; [`Pool::shutdown_timeout`] bounds the
//!   wait and resolves what is still queued with [`JoinError::Shutdown`].
//! - **Preemption.** A task that runs past the quantum ([`Builder::quantum`], default
//!   [`DEFAULT_QUANTUM`], 500 µs) while other tasks wait has its slot handed off: a timer
//!   signal lands on its runner, and the handler gives the slot (its queue, its place in
//!   stealing) to a parked **standby** thread pinned to the same core, then demotes the
//!   old runner to `SCHED_IDLE`. That thread becomes the task's **carrier**: the task runs
//!   on there, where it was interrupted, in the gaps the new runner leaves; carriers run
//!   oldest first. A short task queued behind a long one waits about one quantum, not for
//!   the long one to end. A monitor thread keeps the standbys stocked. With the default
//!   clock ([`TimerClock::Contention`]) no timer runs while nothing is queued: whoever
//!   queues a task behind busy runners arms the one-shot of the one whose quantum ends
//!   first, and a stream of queued tasks is then watched by the runner's CPU-time ticks,
//!   which ride the kernel's own tick.
//! - **Budgets and kills.** [`Pool::spawn_with`] gives a task a [`Budget`] of CPU and/or
//!   wall-clock time ([`Builder::default_budget`] for every spawn). When it runs out, or
//!   [`JoinHandle::cancel`] is called, the task's next [`checkpoint`] unwinds (destructors
//!   run, mutexes are poisoned). A task still running after the grace period is
//!   **frozen**: its thread stops for good, at a point where it holds no process-wide
//!   lock the runtime can see, and the handle resolves with [`JoinError::Killed`]. A
//!   stack overflow in a task freezes it too; the process lives on.
//! - **Services from shared objects.** [`Service`] loads a Rust `cdylib` built with the
//!   `microsched-service` crate's `export_service!` (bytes in, bytes out; its panics stay
//!   on its side) and checks its ABI version; [`ServiceCache`] keeps them warm. A cold
//!   start is a `dlopen`: tens of microseconds, not a process.
//!
//! ```
//! let pool = microsched::Pool::builder().workers(1).build()?;
//! let answer = pool.spawn(|| 6 * 7);
//! let oops = pool.spawn(|| -> u32 { panic!("no such service") });
//! assert_eq!(answer.join()?, 42);
//! assert_eq!(oops.join().unwrap_err().panic_message(), Some("no such service"));
//! pool.shutdown();
//! assert!(pool.spawn(|| 1).join().unwrap_err().is_shutdown());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Soundness
//!
//! Every task runs on one OS thread from start to end, and a thread never switches
//! between two tasks asynchronously: the kernel does every switch, so thread-local state,
//! `errno` and lock ownership are never torn. (An inline join is a plain nested call.) A
//! handoff changes only which thread holds the slot; the interrupted task resumes on its
//! own thread when the handler returns. The signal handler touches only atomics and raw
//! syscalls (`src/handler/` is the zone, fenced by `tools/fence.py`), chains deliveries that are not its own
//! to the handler installed before it, and stays out of the way of the embedder's signals
//! (see [`Builder::signal`]).
//! The crate never unwinds a task from an arbitrary instruction; destructors run only on
//! the normal and the panic paths and at a [`checkpoint`]. A hard kill *freezes* the
//! thread instead (it blocks forever with its signals masked; its stack and thread-locals
//! stay mapped, what it owned is leaked, the locks it held stay held), and only where the
//! gate finds no process-wide lock held: not inside libc, the loader, libgcc_s,
//! libstdc++ or the vDSO, not inside one of std's process-wide locks (stdout, stderr,
//! stdin, the environment, the backtrace lock, the panic hook, the thread-info and exit
//! locks, process spawning) or parking_lot's parking table, not in a runtime section or
//! under a [`FreezeGuard`], not while unwinding (for a while), not in code the handler
//! cannot walk (no unwind tables, as a JIT's; a stack that is not the thread's own, as a
//! coroutine's). Inside a lock holder the kill waits for the holder to return: its return
//! address is redirected to a trampoline whose unwind info makes the frame unwind exactly
//! like the original, whoever starts the unwind. Where no safe point comes in time, the
//! kill ends *abandoned*: the handle resolves, and the thread, given up by the pool and
//! demoted, runs on until its closure returns or it reaches a safe point. So every
//! budgeted join resolves within budget + grace + [`Builder::max_freeze_deferral`] +
//! 20 ms, whatever the closure does. The handler walks the stack with its own unwinder
//! over tables built in normal context: it never calls libgcc's, never allocates, never
//! locks. The monitor runs no user code (values and panic payloads are dropped by the
//! threads that complete or detach them) and survives a panic of its own. The README's
//! "Budgets and kills" section tables what each kind of runaway gets.
//!
//! What is **not** guaranteed:
//!
//! - A lock the task holds *in its own frames* stays held when it is frozen: a task that
//!   holds one of its own `Mutex` guards (or stdin's lock) when the freeze comes leaves it
//!   locked for good. stdout's and stderr's locks are the exception: the gate reads their
//!   owner, so a thread holding either, in any frame, is never frozen (one that never lets
//!   go is abandoned, and keeps it while it runs). A task
//!   that never leaves a lock holder (a `Display` that loops inside `println!`, a panic
//!   hook that never returns) keeps that lock while it runs on, abandoned.
//! - Anything the task may do to the whole process with safe code, kills or no kills:
//!   `std::process::exit`, replacing the panic hook (every later panic runs its hook),
//!   changing the working directory, closing file descriptors it does not own.
//! - A freeze leaks the thread: its stack, TLS and everything it owned (bounded by
//!   [`Builder::max_frozen`]; past it, hard kills are refused and counted).
//! - In a stripped binary only the stdio locks' holders are known (by a probe): the
//!   other locks' holders are found by name in the symbol tables.
//!
//! # Platform
//!
//! Linux (x86_64 and aarch64, 64-bit): the crate uses `futex`, `sched_setaffinity`,
//! `sched_setscheduler`, per-thread POSIX timers (`SIGEV_THREAD_ID`) and signals directly.
//! Restoring a carrier's priority needs `CAP_SYS_NICE`; without it carriers exit after
//! their task and fresh standbys replace them. `--cfg loom` swaps its synchronisation
//! primitives for loom's (see `loom-tests/`).
//!
//! Hard kills have preconditions, checked by the build script where it can: glibc 2.27 or
//! later (the stack `pthread_getattr_np` reports excludes the guard page, which the
//! handler's walk never reads past), and 2.35 or later for freezes that need a walk (its
//! `_dl_find_object` tells the handler, lock-free, which object is loaded at an address
//! now; without it those kills end abandoned), x86_64 (the freeze trampoline and the handler's own
//! walk; elsewhere every freeze that needs a walk defers, and the kill ends abandoned),
//! unwind tables in the binary (`.eh_frame_hdr`, which Rust and C toolchains emit by
//! default), and `process_vm_readv` allowed (a seccomp filter that forbids it makes
//! blocked system calls look running: such kills end abandoned instead of frozen).

#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "microsched runs on Linux only: it relies on futex, sched_setaffinity and per-thread timers"
);

#[cfg(not(target_pointer_width = "64"))]
compile_error!(
    "microsched supports 64-bit Linux only: its signal handler reads the 64-bit siginfo layout"
);

mod alloc;
mod budget;
mod builder;
mod counters;
mod error;
mod handler;
mod join;
mod kill;
mod pool;
mod runtime;
mod service;
mod stats;
mod sync;
mod sys;
mod task;

pub use alloc::NoFreezeAlloc;
pub use budget::{Budget, KillHow, KillReason, Killed, DEFAULT_GRACE, MAX_BUDGET};
pub use builder::{
    Builder, DEFAULT_KEEP_QUANTA, DEFAULT_MAX_CARRIERS, DEFAULT_MAX_FREEZE_DEFERRAL,
    DEFAULT_MAX_FROZEN, DEFAULT_QUANTUM, DEFAULT_SPIN, DEFAULT_STANDBYS, MAX_KEEP_QUANTA,
    MAX_QUANTUM, MAX_SPIN, MAX_STANDBYS, MAX_WORKERS, MIN_QUANTUM, MIN_STACK_SIZE,
};
pub use error::{BuildError, JoinError, PanicPayload, ShutdownTimedOut};
pub use handler::{FreezeGuard, TimerClock};
pub use join::JoinHandle;
pub use pool::{block_in_place, Handle, Pool};
pub use service::{CallError, LoadError, Service, ServiceCache, MAX_OUTPUT};
pub use stats::{SlotStats, Stats};
pub use task::checkpoint;

/// The README's examples are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The internals that `loom-tests/` model-checks. Not part of the API.
#[cfg(loom)]
#[doc(hidden)]
pub mod __loom {
    pub use crate::counters::SlotCounters;
    pub use crate::join::{inline_task, new_task};
    pub use crate::runtime::runner::{serve, Serve, Served};
    pub use crate::sync::reserve::{Reserve, Woken};
    pub use crate::sync::sleep::Sleep;
    pub use crate::sync::spawn_gate::Gate;
    pub use crate::task::{abandon, Task};
}
