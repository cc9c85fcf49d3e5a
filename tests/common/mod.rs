//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Once;
use std::time::Duration;

use microsched::{JoinError, JoinHandle};

/// Long enough that only a real hang reaches it on a loaded 2-vCPU machine.
pub const HANG: Duration = Duration::from_secs(60);

/// A panic payload the tests raise on purpose; the hook installed by [`quiet_panics`]
/// does not print it.
#[derive(Debug, PartialEq, Eq)]
pub struct Expected(pub u32);

/// Silences the default hook's message for panics with an [`Expected`] payload (or a
/// message starting with "expected:"), and only for those.
pub fn quiet_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let expected = payload.is::<Expected>()
                || payload
                    .downcast_ref::<&str>()
                    .is_some_and(|s| s.starts_with("expected:"))
                || payload
                    .downcast_ref::<String>()
                    .is_some_and(|s| s.starts_with("expected:"));
            if !expected {
                default(info);
            }
        }));
    });
}

/// Joins, turning a hang into a test failure instead of a stuck CI run.
#[track_caller]
pub fn join<T>(handle: JoinHandle<T>) -> Result<T, JoinError> {
    match handle.join_timeout(HANG) {
        Ok(result) => result,
        Err(_) => panic!("a task did not resolve within {HANG:?}: hang"),
    }
}

/// A builder for `workers` slots, pinned when this process may use that many cores (so the
/// tests also run, unpinned, on a one-core machine).
pub fn builder(workers: usize) -> microsched::Builder {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    microsched::Pool::builder()
        .workers(workers)
        .pin(workers <= cores)
}
