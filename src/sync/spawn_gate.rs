//! The spawn gate: how shutdown stops accepting tasks and learns that the set of accepted
//! tasks is final (shutdown steps 1–2 in `runtime/shared.rs`).
//!
//! # Protocol
//!
//! The gate word holds `CLOSED` and, above it, the number of spawns from outside the pool
//! that are between their check and their push (`IN_FLIGHT` each). Each slot has a
//! `spawning` flag for spawns from inside its tasks.
//!
//! 1. Outside spawn: `fetch_add(IN_FLIGHT)`. If the old value had `CLOSED`, take it back
//!    and refuse; else push, count, and `fetch_sub(IN_FLIGHT, Release)`. The add, the
//!    close's `fetch_or` and the sub are read-modify-writes of one word, so they are
//!    totally ordered: the spawn either sees `CLOSED` or is counted in the word that step
//!    4 waits on.
//! 2. Inside spawn (the slot's holder): `spawning = true`, SeqCst fence, read `CLOSED`.
//!    Closed: lower the flag, refuse. Else push, count, `spawning = false` (Release).
//! 3. Close: `fetch_or(CLOSED)`, SeqCst fence.
//! 4. Wait until the word has no `IN_FLIGHT` and every flag is down (Acquire, so every
//!    push and count of an accepted spawn happens-before the wait's end).
//!
//! Steps 2 and 3 are the two halves of a Dekker handshake: each side writes, fences,
//! then reads the other's location. In the single order of SeqCst fences, if the spawn's
//! fence comes first the close's read sees the flag up and waits for it; if the close's
//! fence comes first the spawn's read sees `CLOSED`. (A SeqCst load without the fences is
//! not enough: an Acquire or even SeqCst load may be reordered before the earlier store on
//! some aarch64 builds, and loom, which models only fences exactly, finds the miss.)
//! `loom-tests/tests/gate.rs` checks both halves.

use crate::sync::loom::{fence, yield_now, AtomicBool, AtomicU64, AtomicUsize, Ordering};

const CLOSED: usize = 1;
const IN_FLIGHT: usize = 2;

/// What every spawn from outside the pool writes, on a cache line of its own: runners read
/// the mode and the slot list on every task, and must not lose those lines to spawners.
#[repr(align(128))]
pub struct Gate {
    word: AtomicUsize,
    /// Tasks accepted through the gate from outside (Relaxed; final after `close`).
    injected: AtomicU64,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// An open gate.
    pub fn new() -> Self {
        Gate {
            word: AtomicUsize::new(0),
            injected: AtomicU64::new(0),
        }
    }

    /// True once `close` has begun.
    pub fn is_closed(&self) -> bool {
        self.word.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Step 1, for a spawn from outside the pool: `Some` if the gate is open. Push the task
    /// before dropping the ticket; `close` waits for the ticket.
    pub fn enter_outside(&self) -> Option<Entered<'_>> {
        // A closed gate stays closed: refuse without touching the word, so a stream of
        // refused spawns does not hold up `close`'s wait.
        if self.is_closed() {
            return None;
        }
        if self.word.fetch_add(IN_FLIGHT, Ordering::SeqCst) & CLOSED != 0 {
            self.word.fetch_sub(IN_FLIGHT, Ordering::Release);
            return None;
        }
        self.injected.fetch_add(1, Ordering::Relaxed);
        Some(Entered(Ticket::Outside(&self.word)))
    }

    /// Step 2, for a spawn from inside a task, by the holder of the slot whose flag
    /// `spawning` is: `Some` if the gate is open. Push the task before dropping the
    /// ticket; `close` waits for it.
    pub fn enter_inside<'a>(&self, spawning: &'a AtomicBool) -> Option<Entered<'a>> {
        spawning.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.word.load(Ordering::Relaxed) & CLOSED != 0 {
            spawning.store(false, Ordering::Release);
            return None;
        }
        Some(Entered(Ticket::Inside(spawning)))
    }

    /// Steps 3–4. Idempotent. The waits last as long as a push, unless the OS deschedules
    /// a spawner in the middle of one: then until it runs again.
    pub fn close<'a>(&self, flags: impl IntoIterator<Item = &'a AtomicBool>) {
        self.word.fetch_or(CLOSED, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        while self.word.load(Ordering::Acquire) & !CLOSED != 0 {
            yield_now();
        }
        for flag in flags {
            while flag.load(Ordering::Acquire) {
                yield_now();
            }
        }
    }

    /// Tasks accepted from outside so far (counted at `enter_outside`).
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }
}

/// Proof that a spawn got through the gate; dropping it tells `close` the push is done.
#[must_use = "push the task, then drop the ticket"]
pub struct Entered<'a>(Ticket<'a>);

enum Ticket<'a> {
    Outside(&'a AtomicUsize),
    Inside(&'a AtomicBool),
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        // Release: the push and the counts happen-before `close`'s Acquire wait ends.
        match self.0 {
            Ticket::Outside(word) => {
                word.fetch_sub(IN_FLIGHT, Ordering::Release);
            }
            Ticket::Inside(flag) => flag.store(false, Ordering::Release),
        }
    }
}
