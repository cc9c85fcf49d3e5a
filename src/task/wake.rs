//! Waking an awaited [`JoinHandle`](crate::JoinHandle): the waker slot, and the process's
//! waker thread that runs every wake.
//!
//! A `Waker` is the executor's code, or a tenant's: a task can make one whose `wake` never
//! returns, and poll a handle with it from any thread it starts. So no thread of a pool
//! ever runs one. Whoever completes a task (its runner, the signal handler freezing it, the
//! monitor abandoning it, a rejection at shutdown) pushes the slot on a lock-free list and
//! wakes the process's waker thread, `microsched-wake`, with one `FUTEX_WAKE`; that thread
//! wakes the executor. All of it is async-signal-safe: two atomic read-modify-writes, a
//! compare-exchange loop and a raw syscall.
//!
//! The hop costs nothing measurable against rayon + a tokio oneshot, whose worker wakes
//! the executor itself (`cargo bench --bench async`). A wake is as late as the kernel
//! takes to run a woken thread at normal priority: tens of µs on an idle core, up to a
//! scheduler slice (a few ms) when every core is busy.
//!
//! A wake that keeps the waker thread more than [`STUCK`] is left to it: the next look
//! (every pool's monitor pass, every await that registers) starts a new waker thread,
//! which goes on from where the stuck one was; the stuck one exits if its wake ever
//! returns. At most [`MAX_STUCK`] are replaced so: a waker thread is a thread, and past
//! that the process stops paying for tenants' wakers (the later wakes wait behind the
//! stuck one).
//!
//! The slot is allocated on the first poll that finds the task unfinished, so a task
//! nobody awaits carries one null pointer.

use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use atomic_waker::AtomicWaker;

/// Where an awaiting handle leaves its waker. Shared (an `Arc` behind a raw pointer) by the
/// task's join state and, while a wake is pending, the list below.
pub(crate) struct WakeSlot {
    waker: AtomicWaker,
    /// The next slot on the pending list; written by the pusher before the slot is
    /// published, read by the waker thread after taking the list.
    next: AtomicPtr<WakeSlot>,
}

/// The pending list's head (a Treiber stack; the waker thread takes it whole, so a slot is
/// never popped while pushed: no ABA).
static PENDING: AtomicPtr<WakeSlot> = AtomicPtr::new(ptr::null_mut());
/// Bumped after each push; the waker thread sleeps on it.
static PUSHED: AtomicU32 = AtomicU32::new(0);
/// The waker thread of the current generation runs, in the process whose fork count was
/// this value plus one (0: none). A child forked after it started has no such thread
/// (fork copies only the calling thread): its first await starts its own.
static RUNNING: AtomicU64 = AtomicU64::new(0);
/// Held (briefly, by ordinary threads) while starting a waker thread.
static STARTING: Mutex<()> = Mutex::new(());
/// The current waker thread's generation: a thread whose generation is past exits.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// The waker thread in a wake: its generation in the top 16 bits, and when the wake began
/// (µs since the process's time base, 48 bits); 0 between wakes. Cleared only by the
/// thread that set it (compare-exchange), so a stuck thread's mark survives an older
/// thread's return.
static BUSY: AtomicU64 = AtomicU64::new(0);
/// Slots taken off the pending list and not woken yet (the waker threads only: a
/// replacement goes on from where a stuck one was).
static TAKEN: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// How long one wake may keep the waker thread before it is replaced.
pub(crate) const STUCK: std::time::Duration = std::time::Duration::from_millis(100);
/// How many stuck waker threads are replaced at most in a process's life.
pub(crate) const MAX_STUCK: u64 = 64;

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
    /// If the waker thread cannot be started (the process is out of threads), a wake
    /// would never come: the caller is woken at once, so its executor polls again (a busy
    /// wait, only until a later poll manages to start the thread).
    pub(crate) fn register(&self, waker: &Waker) {
        // The waker's own code (its clone, a wake if one races) runs here, outside any
        // freeze guard: a task looping in it can be frozen like anywhere else.
        self.waker.register(waker);
        let running = {
            // Runtime code that may run inside a task: not frozen holding `STARTING`.
            let _no_freeze = crate::handler::FreezeGuard::new();
            watch_waker_thread();
            ensure_waker_thread()
        };
        if !running {
            waker.wake_by_ref();
        }
    }

    /// Drops the registered waker, if any (the handle is done with the slot: a waker left
    /// behind would be dropped by whoever drops the task last, the monitor among them).
    pub(crate) fn clear(&self) {
        drop(self.waker.take());
    }

    /// Wakes the registered waker on this thread (the waker thread), catching a panic
    /// from the executor's code.
    fn wake_here(&self) {
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

/// Microseconds since the time base, for [`BUSY`].
fn now_us() -> u64 {
    crate::sys::async_safe::monotonic_ns() / 1_000
}

/// Wakes every slot on the pending list, oldest first; returns early once a newer waker
/// thread than `generation` has taken over.
fn drain(generation: u64) {
    loop {
        let next = {
            let mut taken = TAKEN
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut node = PENDING.swap(ptr::null_mut(), Ordering::Acquire);
            let at = taken.len();
            while !node.is_null() {
                taken.push(node as usize);
                // SAFETY: on the list, so it holds the count `defer` added.
                node = unsafe { &*node }.next.load(Ordering::Relaxed);
            }
            // The list is a stack: the batch just added is newest first.
            taken[at..].reverse();
            if taken.is_empty() {
                return;
            }
            taken.remove(0)
        };
        // SAFETY: every slot taken off the list holds the count `defer` added; it is given
        // up below, after the wake.
        let slot = unsafe { Arc::from_raw(next as *const WakeSlot) };
        let mark = (generation << 48) | (now_us().max(1) & ((1 << 48) - 1));
        BUSY.store(mark, Ordering::Relaxed);
        slot.wake_here();
        // Only our own mark: a replacement's stays.
        let _ = BUSY.compare_exchange(mark, 0, Ordering::Relaxed, Ordering::Relaxed);
        drop(slot);
        if GENERATION.load(Ordering::Acquire) != generation {
            return;
        }
    }
}

/// Replaces the waker thread if one wake has kept it longer than [`STUCK`] (a waker that
/// never returns), at most [`MAX_STUCK`] times. Called by every pool's monitor pass and
/// every await that registers; never blocks (a look that finds another under way leaves
/// it to that one).
pub(crate) fn watch_waker_thread() {
    let busy = BUSY.load(Ordering::Relaxed);
    if busy == 0 {
        return;
    }
    let (generation, since) = (busy >> 48, busy & ((1 << 48) - 1));
    let current = GENERATION.load(Ordering::Acquire);
    if generation != current
        || current >= MAX_STUCK
        || now_us().saturating_sub(since) < STUCK.as_micros() as u64
    {
        return;
    }
    let Ok(_starting) = STARTING.try_lock() else {
        return;
    };
    if GENERATION
        .compare_exchange(current, current + 1, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    // The stuck thread exits if its wake ever returns; a new one takes over.
    RUNNING.store(0, Ordering::Release);
    start_locked();
}

/// Starts the process's waker thread unless it runs; false if it cannot be started.
pub(crate) fn ensure_waker_thread() -> bool {
    let here = crate::sys::fork_count() + 1;
    if RUNNING.load(Ordering::Acquire) == here {
        return true;
    }
    let _starting = STARTING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if RUNNING.load(Ordering::Acquire) == here {
        return true;
    }
    start_locked()
}

/// Starts a waker thread of the current generation. The caller holds `STARTING`.
fn start_locked() -> bool {
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
        RUNNING.store(crate::sys::fork_count() + 1, Ordering::Release);
        // Whatever was pushed while no thread ran.
        PUSHED.fetch_add(1, Ordering::Release);
        crate::sys::futex_wake(&PUSHED, 1);
    }
    started
}
