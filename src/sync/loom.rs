//! The one place where the concurrency primitives of the crate come from.
//!
//! Under `--cfg loom` they are loom's model-checked versions, so the code that the
//! `loom-tests/` crate explores is the production code, not a copy: the task word's
//! protocol (`task/mod.rs`: claim, decide, complete, join, detach, abandon), the runner
//! loop with the sleep protocol (`runtime/runner.rs`'s `serve` over `sync/sleep.rs`), the
//! spawn gate (`sync/spawn_gate.rs`) and the standby reserve (`sync/reserve.rs`). Everything else in the crate (deques, thread spawning, pinning) stays on std and is
//! simply not run inside a loom model.

#[cfg(loom)]
pub(crate) use loom::thread::yield_now;
#[cfg(not(loom))]
pub(crate) use std::thread::yield_now;

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

/// An `UnsafeCell` with loom's closure-based access API, so that loom can check that no two
/// threads touch the same cell at once without synchronisation.
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// A 32-bit atomic that threads can block on, like a Linux futex word.
///
/// In production `wait` and `wake` are the raw `FUTEX_WAIT`/`FUTEX_WAKE` syscalls on the
/// word itself (no per-waiter registration, so whoever holds a slot or a join handle can
/// wait on it, and a waker needs no thread identity). Under loom they are a mutex and a
/// condition variable: the waiter checks the value under the mutex and the waker takes the
/// mutex after changing the value, which gives the same no-lost-wake-up guarantee the kernel
/// gives by comparing the value atomically with queueing the waiter.
#[derive(Debug)]
pub(crate) struct Futex {
    value: AtomicU32,
    #[cfg(loom)]
    lock: loom::sync::Mutex<()>,
    #[cfg(loom)]
    cond: loom::sync::Condvar,
}

impl Futex {
    pub(crate) fn new(value: u32) -> Self {
        Self {
            value: AtomicU32::new(value),
            #[cfg(loom)]
            lock: loom::sync::Mutex::new(()),
            #[cfg(loom)]
            cond: loom::sync::Condvar::new(),
        }
    }

    /// Blocks while the word equals `expected`; returns when woken, after `timeout`, or
    /// spuriously. Callers always re-check the word in a loop.
    pub(crate) fn wait(&self, expected: u32, timeout: Option<std::time::Duration>) {
        #[cfg(not(loom))]
        crate::sys::futex_wait(&self.value, expected, timeout);
        #[cfg(loom)]
        {
            let guard = self.lock.lock().unwrap();
            if self.value.load(Ordering::SeqCst) == expected {
                if timeout.is_some() {
                    // A timed wait that times out at once: allowed behaviour of the real one.
                    drop(guard);
                    loom::thread::yield_now();
                } else {
                    drop(self.cond.wait(guard).unwrap());
                }
            }
        }
    }

    /// Wakes one thread blocked in `wait` on this word.
    pub(crate) fn wake_one(&self) {
        #[cfg(not(loom))]
        crate::sys::futex_wake(&self.value, 1);
        #[cfg(loom)]
        {
            let _guard = self.lock.lock().unwrap();
            self.cond.notify_one();
        }
    }

    /// Wakes every thread blocked in `wait` on this word.
    pub(crate) fn wake_all(&self) {
        #[cfg(not(loom))]
        crate::sys::futex_wake(&self.value, i32::MAX);
        #[cfg(loom)]
        {
            let _guard = self.lock.lock().unwrap();
            self.cond.notify_all();
        }
    }
}

impl std::ops::Deref for Futex {
    type Target = AtomicU32;

    fn deref(&self) -> &AtomicU32 {
        &self.value
    }
}
