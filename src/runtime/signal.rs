//! Installing the process-wide handler, once per signal.
//!
//! A pool's threads receive its timer signal (SIGALRM unless the builder chose another).
//! The first pool that uses a signal records the action installed before (the embedder's,
//! or the default) and installs [`handler::on_signal`] with `SA_SIGINFO | SA_ONSTACK |
//! SA_RESTART`. The handler stays installed for the life of the process: once no pool uses
//! the signal, every delivery is simply passed on to the recorded action, as the kernel
//! would have delivered it (`handler::chain`). An embedder that installs its own handler
//! for the signal *after* building a pool replaces ours, and that pool's preemption stops;
//! pick another signal with `Builder::signal` to share.
//!
//! Two copies of this crate in one binary would each record the other's handler and chain
//! in circles; `links = "microsched"` in `Cargo.toml` makes Cargo refuse to build that.

use std::io;
use std::sync::Mutex;

use crate::handler::{self, PREVIOUS};
use crate::sys;

/// Signals already installed by this process.
static INSTALLED: Mutex<[bool; 65]> = Mutex::new([false; 65]);

/// Installs the handler for `signal` unless it is installed already. `signal` was checked by the
/// builder (`sys::usable_timer_signal`).
pub(crate) fn install(signal: i32) -> io::Result<()> {
    handler::init_magic(seed());
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    let Some(done) = installed.get_mut(signal as usize) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    let ours = handler::on_signal as *const () as usize;
    let current = sys::current_action(signal)?;
    if *done && current.sa_sigaction == ours {
        return Ok(());
    }
    // First use, or someone replaced our handler since an earlier pool (then that is the
    // action to chain to now). Record it before ours can run, so a delivery in between is
    // chained.
    if current.sa_sigaction != ours {
        PREVIOUS[signal as usize].store(&current);
    }
    let replaced = sys::install_action(signal, handler::on_signal)?;
    if replaced.sa_sigaction != current.sa_sigaction && replaced.sa_sigaction != ours {
        // Someone changed the action between the two calls: chain to what we replaced.
        PREVIOUS[signal as usize].store(&replaced);
    }
    *done = true;
    Ok(())
}

/// A per-process value for the token magic: not secret, only unlikely to collide with an
/// embedder's own `si_value` on the same signal.
fn seed() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let here = &INSTALLED as *const _ as usize as u32;
    (std::process::id().wrapping_mul(0x9E37_79B9) ^ nanos ^ here.rotate_left(13)) | 1
}

/// Installs (once per process) the SIGSEGV and SIGBUS handler that turns a task's stack
/// overflow into a freeze and passes every other fault to the handler installed before
/// (std's reports overflows of other threads and aborts).
pub(crate) fn install_fault_handlers() -> io::Result<()> {
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    for signal in [libc::SIGSEGV, libc::SIGBUS] {
        let ours = handler::on_fault as *const () as usize;
        let current = sys::current_action(signal)?;
        if installed[signal as usize] && current.sa_sigaction == ours {
            continue;
        }
        if current.sa_sigaction != ours {
            PREVIOUS[signal as usize].store(&current);
        }
        sys::install_fault_action(signal, handler::on_fault)?;
        installed[signal as usize] = true;
    }
    Ok(())
}
