//! Deliveries that are not the pool's: passed on to the action installed before ours,
//! as the kernel would have delivered them.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};

use crate::sys::async_safe;

/// The action that was installed for each signal before ours, for chaining. Written once
/// per signal by `runtime/signal.rs` before our handler is installed for it.
pub(crate) struct Previous {
    handler: AtomicUsize,
    flags: AtomicI32,
    /// The action's `sa_mask`, word by word (atomics, so a re-store while the handler
    /// reads is not a data race; a reader may mix two masks only in that instant).
    mask: [AtomicU64; MASK_WORDS],
    set: AtomicBool,
}

const MASK_WORDS: usize = std::mem::size_of::<libc::sigset_t>() / 8;

impl Previous {
    const fn new() -> Previous {
        Previous {
            handler: AtomicUsize::new(libc::SIG_DFL),
            flags: AtomicI32::new(0),
            mask: [const { AtomicU64::new(0) }; MASK_WORDS],
            set: AtomicBool::new(false),
        }
    }

    /// Records `action` as the one to chain to. Called by `runtime/signal.rs` under its
    /// installation lock, before the handler is installed.
    pub(crate) fn store(&self, action: &libc::sigaction) {
        // SAFETY: `sigset_t` is plain bits, `MASK_WORDS` u64 long.
        let words: [u64; MASK_WORDS] = unsafe { std::mem::transmute(action.sa_mask) };
        for (slot, word) in self.mask.iter().zip(words) {
            slot.store(word, Ordering::Relaxed);
        }
        self.handler.store(action.sa_sigaction, Ordering::Relaxed);
        self.flags.store(action.sa_flags, Ordering::Relaxed);
        self.set.store(true, Ordering::Release);
    }

    /// The recorded action, if any.
    fn load(&self) -> Option<libc::sigaction> {
        if !self.set.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: all-zero is a valid `sigaction`.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = self.handler.load(Ordering::Relaxed);
        action.sa_flags = self.flags.load(Ordering::Relaxed);
        let words: [u64; MASK_WORDS] =
            std::array::from_fn(|i| self.mask[i].load(Ordering::Relaxed));
        // SAFETY: any bit pattern is a valid `sigset_t`.
        action.sa_mask = unsafe { std::mem::transmute::<[u64; MASK_WORDS], libc::sigset_t>(words) };
        Some(action)
    }
}

/// Signal numbers go up to 64 on Linux.
pub(crate) static PREVIOUS: [Previous; 65] = [const { Previous::new() }; 65];

/// Passes a delivery that is not ours to the action installed before ours, as the kernel
/// would have delivered it. `ours`: the address of the handler of ours that got it.
pub(crate) fn chain(
    signal: i32,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
    ours: usize,
) {
    let Some(previous) = PREVIOUS.get(signal as usize) else {
        return;
    };
    let Some(action) = previous.load() else {
        return;
    };
    match action.sa_sigaction {
        libc::SIG_IGN => {}
        libc::SIG_DFL if async_safe::installed_handler(signal) != ours => {
            // Reached through a handler installed after ours that passes deliveries on
            // (signal-hook does): it has handled this one already. The default action
            // (for SIGALRM, the end of the process) is not what the embedder asked for.
        }
        libc::SIG_DFL => async_safe::default_action(signal),
        _ => {
            if action.sa_flags & libc::SA_RESETHAND != 0 {
                previous.handler.store(libc::SIG_DFL, Ordering::Relaxed);
            }
            // SAFETY: `action` is the embedder's own handler for this signal, and `info` and
            // `context` are what the kernel gave us.
            unsafe { async_safe::call_handler(signal, &action, info, context) }
        }
    }
}
