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
//! Waker threads are started only where a thread inherits nothing bad: by a pool's build,
//! on the embedder's thread, and by a pool's monitor (started there too). A thread started
//! from a runner would be pinned to its core, and from a carrier stuck at `SCHED_IDLE`.
//!
//! A wake that keeps the waker thread more than [`STUCK`] is left to it: the next monitor
//! pass starts a new waker thread of the next generation, which goes on from where the
//! stuck one was; the stuck one exits if its wake ever returns. At most [`MAX_STUCK`]
//! stuck threads live at once ([`stuck_waker_threads`]); past that, later wakes wait
//! behind the stuck one. Pools with preemption off have no monitor: their waker thread is
//! never replaced.
//!
//! In a child forked from the process, a `pthread_atfork` handler forgets the parent's
//! pending wakes and the waker thread (fork copies only the calling thread): a pool built
//! in the child starts its own.
//!
//! The slot is allocated on the first poll that finds the task unfinished, so a task
//! nobody awaits carries one null pointer.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Once};
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
/// Bumped after each push and at each change of waker thread; the waker thread sleeps on
/// it.
static PUSHED: AtomicU32 = AtomicU32::new(0);
/// A waker thread of the current generation runs.
static RUNNING: AtomicBool = AtomicBool::new(false);
/// Held while starting a waker thread (a flag, not a mutex: the fork handler clears it).
static STARTING: AtomicBool = AtomicBool::new(false);
/// The current waker thread's generation: a thread whose generation is past exits.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// The waker thread in a wake: its generation in the top 16 bits, and when the wake began
/// (µs since boot, 48 bits); 0 between wakes. Cleared only by the thread that set it
/// (compare-exchange), so a stuck thread's mark survives an older thread's return.
static BUSY: AtomicU64 = AtomicU64::new(0);
/// Waker threads left stuck in a wake and replaced, still alive.
static STUCK_ALIVE: AtomicU64 = AtomicU64::new(0);
/// Slots taken off the pending list and not woken yet (the waker threads only: a
/// replacement goes on from where a stuck one was).
static TAKEN: Taken = Taken {
    locked: AtomicBool::new(false),
    forked: AtomicBool::new(false),
    slots: UnsafeCell::new(VecDeque::new()),
};
/// How long one wake may keep the waker thread before it is replaced.
pub(crate) const STUCK: std::time::Duration = std::time::Duration::from_millis(100);
/// How many replaced, stuck waker threads may live at once.
pub(crate) const MAX_STUCK: u64 = 64;

/// The taken slots behind a flag lock (the fork handler clears it; a mutex held by the
/// parent's waker thread at the fork would stay locked in the child for good).
struct Taken {
    locked: AtomicBool,
    /// Set in a forked child: the slots are the parent's, and are forgotten, not woken.
    forked: AtomicBool,
    slots: UnsafeCell<VecDeque<usize>>,
}

// SAFETY: `slots` is touched only by the holder of `locked` (acquired with Acquire,
// released with Release), one thread at a time.
unsafe impl Sync for Taken {}

impl Taken {
    /// Runs `f` on the slots, holding the flag (waker threads only; held for a few µs).
    fn with<R>(&self, f: impl FnOnce(&mut VecDeque<usize>) -> R) -> R {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::thread::yield_now();
        }
        // SAFETY: this thread holds the flag.
        let slots = unsafe { &mut *self.slots.get() };
        if self.forked.swap(false, Ordering::Relaxed) {
            // The parent's: their counts are leaked, their wakers not run here.
            slots.clear();
        }
        let out = f(slots);
        self.locked.store(false, Ordering::Release);
        out
    }
}

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
    /// `AWAITING`). The waker's own code (its clone, a wake if one races) runs here.
    ///
    /// If no waker thread runs (none could be started, or this is a forked child that has
    /// built no pool), a wake would never come: the caller is woken at once, so its
    /// executor polls again (a busy wait, until a pool's build or monitor starts one).
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
        if !RUNNING.load(Ordering::Acquire) {
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

/// Microseconds of `CLOCK_MONOTONIC`, for [`BUSY`].
fn now_us() -> u64 {
    crate::sys::async_safe::monotonic_ns() / 1_000
}

/// Wakes every slot on the pending list, oldest first, while `generation` is current.
fn drain(generation: u64) {
    loop {
        // Nothing is taken by a thread that is no longer current.
        if GENERATION.load(Ordering::Acquire) != generation {
            return;
        }
        let next = TAKEN.with(|taken| {
            let mut node = PENDING.swap(ptr::null_mut(), Ordering::Acquire);
            let at = taken.len();
            while !node.is_null() {
                taken.push_back(node as usize);
                // SAFETY: on the list, so it holds the count `defer` added.
                node = unsafe { &*node }.next.load(Ordering::Relaxed);
            }
            // The list is a stack: the batch just added is newest first.
            taken.make_contiguous()[at..].reverse();
            taken.pop_front()
        });
        let Some(next) = next else {
            return;
        };
        // SAFETY: every slot taken off the list holds the count `defer` added; it is given
        // up below, after the wake.
        let slot = unsafe { Arc::from_raw(next as *const WakeSlot) };
        let mark = (generation << 48) | (now_us().max(1) & ((1 << 48) - 1));
        BUSY.store(mark, Ordering::Relaxed);
        slot.wake_here();
        // Only our own mark: a newer thread's stays.
        let _ = BUSY.compare_exchange(mark, 0, Ordering::Relaxed, Ordering::Relaxed);
        drop(slot);
    }
}

/// The waker thread of `generation`: drains, sleeps, and exits once it is not current.
fn waker_thread(generation: u64) {
    loop {
        let seen = PUSHED.load(Ordering::Acquire);
        if GENERATION.load(Ordering::Acquire) != generation {
            break;
        }
        drain(generation);
        if GENERATION.load(Ordering::Acquire) != generation {
            break;
        }
        crate::sys::futex_wait(&PUSHED, seen, None);
    }
    // Replaced (stuck in a wake, or judged so): gone now.
    if generation < GENERATION.load(Ordering::Acquire) {
        let _ =
            STUCK_ALIVE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// A monitor's pass: replaces the waker thread if one wake has kept it longer than
/// [`STUCK`] (a waker that never returns), and starts one if none runs. Never blocks.
pub(crate) fn watch_waker_thread() {
    let busy = BUSY.load(Ordering::Relaxed);
    let (generation, since) = (busy >> 48, busy & ((1 << 48) - 1));
    let stuck = busy != 0
        && generation == GENERATION.load(Ordering::Acquire)
        && STUCK_ALIVE.load(Ordering::Relaxed) < MAX_STUCK
        && now_us().saturating_sub(since) >= STUCK.as_micros() as u64;
    if !stuck {
        if !RUNNING.load(Ordering::Acquire) {
            start(false);
        }
        return;
    }
    start(true);
}

/// Starts the process's waker thread unless one runs (a pool's build, on the embedder's
/// thread). Waits for another thread that is starting one.
pub(crate) fn ensure_waker_thread() -> bool {
    while !RUNNING.load(Ordering::Acquire) {
        if start(false) {
            return true;
        }
        if !STARTING.load(Ordering::Relaxed) {
            // Not busy, and it failed: the process is out of threads.
            return false;
        }
        std::thread::yield_now();
    }
    true
}

/// Starts a waker thread: of the next generation if `replace` (the current one is stuck
/// in a wake), else only if none runs. False if another thread is starting one, or the
/// spawn failed.
fn start(replace: bool) -> bool {
    static FORK_HANDLER: Once = Once::new();
    FORK_HANDLER.call_once(|| crate::sys::on_fork_child(forget_after_fork));
    if STARTING
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return false;
    }
    let mut generation = GENERATION.load(Ordering::Acquire);
    let started = if replace || !RUNNING.load(Ordering::Acquire) {
        if replace {
            // The stuck thread exits if its wake ever returns; a new one takes over.
            generation += 1;
            GENERATION.store(generation, Ordering::Release);
            STUCK_ALIVE.fetch_add(1, Ordering::Relaxed);
            BUSY.store(0, Ordering::Relaxed);
            RUNNING.store(false, Ordering::Release);
        }
        let spawned = std::thread::Builder::new()
            .name("microsched-wake".into())
            .spawn(move || waker_thread(generation))
            .is_ok();
        if spawned {
            RUNNING.store(true, Ordering::Release);
        }
        spawned
    } else {
        true
    };
    STARTING.store(false, Ordering::Release);
    // Whatever was pushed meanwhile, and any older thread asleep: it looks, and exits.
    PUSHED.fetch_add(1, Ordering::Release);
    crate::sys::futex_wake(&PUSHED, i32::MAX);
    started
}

/// `pthread_atfork`'s child handler: the parent's waker thread and its pending wakes do
/// not exist here. Async-signal-safe: stores only.
extern "C" fn forget_after_fork() {
    PENDING.store(ptr::null_mut(), Ordering::Relaxed);
    BUSY.store(0, Ordering::Relaxed);
    RUNNING.store(false, Ordering::Relaxed);
    STARTING.store(false, Ordering::Relaxed);
    STUCK_ALIVE.store(0, Ordering::Relaxed);
    TAKEN.forked.store(true, Ordering::Relaxed);
    TAKEN.locked.store(false, Ordering::Relaxed);
}

/// Waker threads replaced while stuck in a wake that never returned, still alive
/// (process-wide).
pub(crate) fn stuck_waker_threads() -> u64 {
    STUCK_ALIVE.load(Ordering::Relaxed)
}
