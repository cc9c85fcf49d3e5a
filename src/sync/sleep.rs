//! How idle runners sleep and how spawns wake them, with no lost wake-ups.
//!
//! Each slot has a state word, a [`Futex`]: `AWAKE`, `SLEEPING` or `NOTIFIED`. The word
//! belongs to the slot, not to a thread, so whichever thread holds the slot sleeps on it and
//! a waker needs no thread handle. `sleepers` counts slots in `SLEEPING`, so a spawn that
//! finds nobody asleep pays one fence and one load.
//!
//! # Protocol
//!
//! Sleeper (the slot's holder, after it found no work and spun for a while):
//!
//! 1. `state = SLEEPING`, `sleepers += 1`, then a SeqCst fence.
//! 2. Re-check for work (and for shutdown) with the caller's `recheck`.
//! 3. Work found: `swap(AWAKE)`. If the old value was `SLEEPING`, it takes itself off
//!    `sleepers`; if it was `NOTIFIED`, the waker already did. Either way it goes back to
//!    work, and the wake-up it may have absorbed is harmless: it is awake and will look at
//!    every queue before it sleeps again.
//! 4. No work: block on the word until it reads `NOTIFIED`, then `state = AWAKE`.
//!
//! Waker (after pushing a task):
//!
//! 5. SeqCst fence, then load `sleepers`; zero means nobody is past step 1, done.
//! 6. Otherwise CAS some slot's word `SLEEPING → NOTIFIED` (starting at a rotating index, so
//!    wake-ups spread), take it off `sleepers`, and `FUTEX_WAKE` it.
//!
//! Why no wake-up is lost: the push and step 5 on one side, step 1 and step 2 on the other,
//! are each separated by a SeqCst fence. In the single total order of SeqCst fences, if the
//! sleeper's fence comes first the waker's load sees `sleepers > 0` and the word
//! `SLEEPING` (or the sleeper is already past step 3); if the waker's fence comes first,
//! the sleeper's re-check sees the pushed task. The word goes to `NOTIFIED` only by a CAS
//! from `SLEEPING`, and step 4 compares and blocks atomically in the kernel, so a wake sent
//! between the check and the block is not missed. `loom-tests/` model-checks all of this.

use crate::sync::loom::{fence, AtomicU64, AtomicUsize, Futex, Ordering};

const AWAKE: u32 = 0;
const SLEEPING: u32 = 1;
const NOTIFIED: u32 = 2;

/// One slot's word, with the two counters the sleeper writes next to it: `parks` just
/// before it blocks, `unparks` once it is woken (Relaxed: statistics). Both are written by
/// the sleeper, so `parks - unparks` (0 or 1) says whether the slot is asleep right now.
#[repr(align(128))]
struct SlotWord {
    word: Futex,
    parks: AtomicU64,
    unparks: AtomicU64,
}

/// The sleep states of a pool's slots.
pub struct Sleep {
    words: Box<[SlotWord]>,
    sleepers: AtomicUsize,
    next: AtomicUsize,
}

/// What [`Sleep::sleep`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slept {
    /// The re-check found work or shutdown; the slot never blocked.
    Cancelled,
    /// Blocked, and was woken by a waker.
    Woken,
}

impl Sleep {
    /// Sleep states for `slots` slots, all awake.
    pub fn new(slots: usize) -> Self {
        Self {
            words: (0..slots)
                .map(|_| SlotWord {
                    word: Futex::new(AWAKE),
                    parks: AtomicU64::new(0),
                    unparks: AtomicU64::new(0),
                })
                .collect(),
            sleepers: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
        }
    }

    /// Steps 1–4 for slot `slot`, called only by the slot's holder. `recheck` returns true
    /// if there is work (or a reason to stop) after all.
    pub fn sleep(&self, slot: usize, recheck: impl FnOnce() -> bool) -> Slept {
        let word = &self.words[slot].word;
        word.store(SLEEPING, Ordering::SeqCst);
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);

        if recheck() {
            if word.swap(AWAKE, Ordering::SeqCst) == SLEEPING {
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
            return Slept::Cancelled;
        }

        self.words[slot].parks.fetch_add(1, Ordering::Relaxed);
        // Acquire pairs with the waker's CAS, so everything it did before (its push) is
        // visible once we see NOTIFIED.
        while word.load(Ordering::Acquire) != NOTIFIED {
            word.wait(SLEEPING, None);
        }
        word.store(AWAKE, Ordering::Relaxed);
        self.words[slot].unparks.fetch_add(1, Ordering::Relaxed);
        Slept::Woken
    }

    /// Steps 5–6: wakes one sleeping slot, if any. Returns true if it woke one.
    pub fn notify_one(&self) -> bool {
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let n = self.words.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).any(|i| self.wake((start + i) % n))
    }

    /// Wakes every sleeping slot (shutdown).
    pub fn notify_all(&self) {
        fence(Ordering::SeqCst);
        for slot in 0..self.words.len() {
            self.wake(slot);
        }
    }

    fn wake(&self, slot: usize) -> bool {
        let word = &self.words[slot].word;
        if word
            .compare_exchange(SLEEPING, NOTIFIED, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
        {
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
            word.wake_one();
            true
        } else {
            false
        }
    }

    /// `(parks, unparks)` of `slot`.
    pub(crate) fn counts(&self, slot: usize) -> (u64, u64) {
        let w = &self.words[slot];
        (
            w.parks.load(Ordering::Relaxed),
            w.unparks.load(Ordering::Relaxed),
        )
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_recheck_that_finds_work_cancels_the_sleep() {
        let sleep = Sleep::new(2);
        assert_eq!(sleep.sleep(1, || true), Slept::Cancelled);
        assert_eq!(sleep.sleepers.load(Ordering::SeqCst), 0);
        assert!(!sleep.notify_one(), "nobody is asleep");
        assert_eq!(sleep.counts(1), (0, 0));
    }

    #[test]
    fn notify_one_wakes_a_sleeper_and_counts_it() {
        let sleep = Arc::new(Sleep::new(1));
        let sleeper = {
            let sleep = sleep.clone();
            std::thread::spawn(move || sleep.sleep(0, || false))
        };
        while !sleep.notify_one() {
            std::thread::yield_now();
        }
        assert_eq!(sleeper.join().unwrap(), Slept::Woken);
        assert_eq!(sleep.counts(0), (1, 1));
        assert_eq!(sleep.sleepers.load(Ordering::SeqCst), 0);
    }
}
