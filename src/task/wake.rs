//! Waking an awaited [`JoinHandle`](crate::JoinHandle): the waker slot, and the deferred
//! wakes of outcomes published where no waker may run.
//!
//! A `Waker` is the executor's code: waking one may take a lock, allocate or, for a waker
//! a tenant made itself, do anything at all. So it is woken only on ordinary threads:
//!
//! - **Directly** by the thread that completes the task in the ordinary way: the runner
//!   whose closure returned or unwound, or the thread rejecting it at shutdown (what a
//!   rayon job that sends on a tokio oneshot does too).
//! - **Deferred** for the two outcomes published elsewhere: a freeze (in the signal
//!   handler, on the frozen thread, where nothing but atomics and raw syscalls may run)
//!   and an abandon (on the monitor, which must never run code it does not own: a waker
//!   that blocks would stop every later kill). They push the slot on a lock-free list and
//!   wake the process's waker thread with one `FUTEX_WAKE`; that thread wakes the
//!   executor. A deferred wake is as late as the kernel takes to run a woken thread at
//!   normal priority: tens of µs on an idle core, up to a scheduler slice (a few ms) when
//!   every core is busy.
//!
//! The slot is allocated on the first poll that finds the task unfinished, so a task
//! nobody awaits carries one null pointer.

use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, Ordering};
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
        if !ensure_waker_thread() {
            drain();
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

/// Wakes every slot on the deferred list, on this (ordinary) thread.
fn drain() {
    let mut node = PENDING.swap(ptr::null_mut(), Ordering::Acquire);
    while !node.is_null() {
        // SAFETY: every node on the list holds the count `defer` added; it is given up
        // below, after the last use.
        let slot = unsafe { Arc::from_raw(node.cast_const()) };
        node = slot.next.load(Ordering::Relaxed);
        slot.wake_here();
    }
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
    let started = std::thread::Builder::new()
        .name("microsched-wake".into())
        .spawn(|| loop {
            let seen = PUSHED.load(Ordering::Acquire);
            drain();
            crate::sys::futex_wait(&PUSHED, seen, None);
        })
        .is_ok();
    if started {
        RUNNING.store(pid, Ordering::Release);
    }
    started
}
