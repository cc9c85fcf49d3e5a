//! Waking an awaited [`JoinHandle`](crate::JoinHandle): the waker slot, and the deferred
//! wakes of outcomes published where no waker may run.
//!
//! A `Waker` is the executor's code: waking one may take a lock, allocate or, for a waker
//! a tenant made itself, do anything at all. So it is woken only on ordinary threads:
//!
//! - **Directly** by the runner whose closure returned or unwound (what a rayon job that
//!   sends on a tokio oneshot does too), with its record saying a closure runs again
//!   (`task/mod.rs`, `run_claimed`): a waker that never returns (a tenant can make one,
//!   and poll a handle with it from any thread) is then preempted like a runaway, its
//!   slot handed to a standby, instead of holding the slot for good.
//! - **Deferred** for the outcomes published elsewhere: a freeze (in the signal handler,
//!   on the frozen thread, where nothing but atomics and raw syscalls may run), an abandon
//!   (on the monitor, which must never run code it does not own: a waker that blocks would
//!   stop every later kill), a cancel before the task started and a rejection at
//!   shutdown. They push the slot on a lock-free list and wake the process's waker thread
//!   with one `FUTEX_WAKE`; that thread wakes the executor. A deferred wake is as late as
//!   the kernel takes to run a woken thread at normal priority: tens of µs on an idle
//!   core, up to a scheduler slice (a few ms) when every core is busy. A waker that keeps
//!   the waker thread more than [`STUCK`] is left to it: the thread is replaced (by the
//!   next look, from a pool's monitor or an await), and the stuck one exits if its wake
//!   ever returns.
//!
//! The slot is allocated on the first poll that finds the task unfinished, so a task
//! nobody awaits carries one null pointer.

use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use atomic_waker::AtomicWaker;

/// Where an awaiting handle leaves its waker. Shared (an `Arc` behind a raw pointer) by the
/// task's join state and, while a deferred wake is pending, the list below.
pub(crate) struct WakeSlot {
    waker: AtomicWaker,
    /// The next slot on the deferred list; written by the pusher before the slot is
    /// published, read by the waker thread after taking the list.
    next: AtomicPtr<WakeSlot>,
}

/// How the thread that completes a task wakes its awaiting handle.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum WakeHow {
    /// An ordinary thread that may run the executor's waker.
    Direct,
    /// The signal handler or the monitor: defer to the waker thread.
    Deferred,
}

/// The deferred list's head (a Treiber stack; the waker thread takes it whole).
static PENDING: AtomicPtr<WakeSlot> = AtomicPtr::new(ptr::null_mut());
/// Bumped after each push; the waker thread sleeps on it.
static PUSHED: AtomicU32 = AtomicU32::new(0);
/// The process whose waker thread runs (0: none yet). A child forked after it started has
/// no such thread (fork copies only the calling thread): its first await starts its own.
static RUNNING: AtomicI32 = AtomicI32::new(0);
/// Held while starting it.
static STARTING: Mutex<()> = Mutex::new(());
/// The current waker thread's generation: a thread whose generation is past exits.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// When the waker thread began the wake it is in (monotonic ns since the time base), 0
/// between wakes.
static BUSY_SINCE: AtomicU64 = AtomicU64::new(0);
/// The slots taken off the pending list and not woken yet (ordinary threads only: a
/// replacement waker thread goes on from where a stuck one was).
static TAKEN: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// How long one wake may keep the waker thread before it is replaced.
pub(crate) const STUCK: std::time::Duration = std::time::Duration::from_millis(100);

impl WakeSlot {
    /// A new slot, as the raw pointer the join state owns (one strong count).
    pub(crate) fn new_raw() -> *mut WakeSlot {
        Arc::into_raw(Arc::new(WakeSlot {
            waker: AtomicWaker::new(),
            next: AtomicPtr::new(ptr::null_mut()),
        }))
        .cast_mut()
    }

    /// Leaves `waker` to be woken by the next wake (the awaiting handle, before it sets
    /// `AWAITING`).
    ///
    /// If the waker thread cannot be started (the process is out of threads), a deferred
    /// wake would never come: the pending list is drained here and the caller is woken at
    /// once, so its executor polls again (a busy wait, only until a later poll manages to
    /// start the thread).
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
        watch_waker_thread();
        if !ensure_waker_thread() {
            drain(u64::MAX);
            waker.wake_by_ref();
        }
    }

    /// Wakes the registered waker on this thread (an ordinary one), catching a panic from
    /// the executor's code: the caller may be a runner, which must not unwind.
    pub(crate) fn wake_here(&self) {
        if let Err(payload) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.waker.wake()))
        {
            std::mem::forget(payload);
        }
    }

    /// Drops the join state's strong count.
    ///
    /// # Safety
    ///
    /// `slot` came from [`new_raw`](WakeSlot::new_raw), and its owner gives its count up.
    pub(crate) unsafe fn release(slot: *mut WakeSlot) {
        // SAFETY: the caller's contract: one strong count of a live `Arc<WakeSlot>`.
        drop(unsafe { Arc::from_raw(slot.cast_const()) });
    }
}

/// Hands `slot`'s wake to the waker thread. Async-signal-safe: two atomic read-modify-writes,
/// a compare-exchange loop and a raw `FUTEX_WAKE`; no allocation, no lock.
///
/// # Safety
///
/// `slot` is live (the caller's join state holds a count), and is not on the list already
/// (a task completes once).
pub(crate) unsafe fn defer(slot: *mut WakeSlot) {
    // The list's own count, given up by the waker thread after the wake.
    // SAFETY: the caller's contract: `slot` is a live `Arc<WakeSlot>` pointer.
    unsafe { Arc::increment_strong_count(slot.cast_const()) };
    // SAFETY: live, as above.
    let node = unsafe { &*slot };
    let mut head = PENDING.load(Ordering::Relaxed);
    loop {
        node.next.store(head, Ordering::Relaxed);
        // Release: the waker thread's Acquire swap sees `next` and the slot's waker.
        match PENDING.compare_exchange_weak(head, slot, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => break,
            Err(now) => head = now,
        }
    }
    PUSHED.fetch_add(1, Ordering::Release);
    crate::sys::futex_wake(&PUSHED, 1);
}

/// Wakes every slot on the deferred list, on this (ordinary) thread; returns early if a
/// newer waker thread than `generation` has taken over (`u64::MAX`: never).
fn drain(generation: u64) {
    loop {
        let next = {
            let mut taken = TAKEN
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut node = PENDING.swap(ptr::null_mut(), Ordering::Acquire);
            let mut batch = Vec::new();
            while !node.is_null() {
                batch.push(node as usize);
                // SAFETY: on the list, so it holds the count `defer` added.
                node = unsafe { &*node }.next.load(Ordering::Relaxed);
            }
            // Oldest first (the list is a stack).
            taken.extend(batch.into_iter().rev());
            if taken.is_empty() {
                return;
            }
            taken.remove(0)
        };
        // SAFETY: every slot taken off the list holds the count `defer` added; it is given
        // up below, after the wake.
        let slot = unsafe { Arc::from_raw(next as *const WakeSlot) };
        BUSY_SINCE.store(
            crate::sys::async_safe::monotonic_ns().max(1),
            Ordering::Relaxed,
        );
        slot.wake_here();
        BUSY_SINCE.store(0, Ordering::Relaxed);
        drop(slot);
        if GENERATION.load(Ordering::Acquire) != generation && generation != u64::MAX {
            return;
        }
    }
}

/// Replaces the waker thread if one wake has kept it longer than [`STUCK`] (a waker that
/// never returns). Called by each pool's monitor, and by every await that registers.
pub(crate) fn watch_waker_thread() {
    let since = BUSY_SINCE.load(Ordering::Relaxed);
    if since == 0
        || crate::sys::async_safe::monotonic_ns().saturating_sub(since) < STUCK.as_nanos() as u64
    {
        return;
    }
    let _starting = STARTING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if BUSY_SINCE.load(Ordering::Relaxed) != since {
        return;
    }
    // The stuck thread exits if its wake ever returns; a new one takes over.
    BUSY_SINCE.store(0, Ordering::Relaxed);
    GENERATION.fetch_add(1, Ordering::AcqRel);
    RUNNING.store(0, Ordering::Release);
    drop(_starting);
    ensure_waker_thread();
    PUSHED.fetch_add(1, Ordering::Release);
    crate::sys::futex_wake(&PUSHED, 1);
}

/// Starts the process's waker thread unless it runs; false if it cannot be started.
fn ensure_waker_thread() -> bool {
    let pid = std::process::id() as i32;
    if RUNNING.load(Ordering::Acquire) == pid {
        return true;
    }
    let _starting = STARTING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if RUNNING.load(Ordering::Acquire) == pid {
        return true;
    }
    let generation = GENERATION.load(Ordering::Acquire);
    let started = std::thread::Builder::new()
        .name("microsched-wake".into())
        .spawn(move || loop {
            let seen = PUSHED.load(Ordering::Acquire);
            drain(generation);
            if GENERATION.load(Ordering::Acquire) != generation {
                return;
            }
            crate::sys::futex_wait(&PUSHED, seen, None);
        })
        .is_ok();
    if started {
        RUNNING.store(pid, Ordering::Release);
    }
    started
}
