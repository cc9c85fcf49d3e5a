//! Where a freeze must not happen: the text of the system libraries (a thread interrupted
//! there may hold one of their process-wide locks: malloc's arenas, the loader's lock,
//! stdio's) and the std functions that hold the stdout or stderr lock while they call user
//! code (`println!` formats user `Display` values under it).
//!
//! Both tables are built here, outside any signal handler, and read by `handler/freeze.rs`
//! with loads only. They only grow: an entry is written before the count that publishes it
//! (Release, read with Acquire), so the handler never reads a half-written entry. A range
//! of a library unloaded later stays in the table, which only makes the gate stricter.
//!
//! - **Libraries**: every executable `PT_LOAD` segment of libc, the dynamic loader,
//!   libgcc_s, libstdc++, libm, libpthread, librt, libdl and the vDSO, from
//!   `dl_iterate_phdr`. The monitor re-reads them when the loader's add/remove counters
//!   change (after a `dlopen`).
//! - **Lock holders**: found by a probe at the first build, not from symbol names, so it
//!   works on stripped binaries. The probe formats an empty `Display` value through
//!   `print!`, `eprint!` and `write!` to `stdout()` and `stderr()`, and records the
//!   functions on the stack while its `fmt` runs; it does the same through `format!`, and
//!   the functions seen only on the stdio paths are the lock holders (`core::fmt::write`
//!   also serves `format!`, and holds nothing). It prints nothing.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::sys::{self, unwind};

const MAX_RANGES: usize = 128;
const MAX_HOLDERS: usize = 64;

static RANGES: [[AtomicUsize; 2]; MAX_RANGES] =
    [const { [AtomicUsize::new(0), AtomicUsize::new(0)] }; MAX_RANGES];
static RANGE_COUNT: AtomicUsize = AtomicUsize::new(0);
static HOLDERS: [AtomicUsize; MAX_HOLDERS] = [const { AtomicUsize::new(0) }; MAX_HOLDERS];
static HOLDER_COUNT: AtomicUsize = AtomicUsize::new(0);
/// The loader's (adds, subs) when the ranges were last read, packed.
static LOADER_SEEN: AtomicU64 = AtomicU64::new(u64::MAX);
/// Serialises writers.
static WRITER: Mutex<()> = Mutex::new(());

/// Library names (file name prefixes) whose text is gated.
const GATED: &[&str] = &[
    "libc.so",
    "libc-",
    "ld-linux",
    "ld64.so",
    "libgcc_s",
    "libstdc++",
    "libm.so",
    "libpthread",
    "librt",
    "libdl",
    "linux-vdso",
    "linux-gate",
];

/// True if `pc` is in the text of a gated library. Async-signal-safe.
pub(crate) fn in_library(pc: usize) -> bool {
    let count = RANGE_COUNT.load(Ordering::Acquire).min(MAX_RANGES);
    RANGES[..count]
        .iter()
        .any(|[lo, hi]| pc >= lo.load(Ordering::Relaxed) && pc < hi.load(Ordering::Relaxed))
}

/// True if a function starting at `start` holds std's stdout or stderr lock while it runs
/// user code. Async-signal-safe.
pub(crate) fn is_lock_holder(start: usize) -> bool {
    let count = HOLDER_COUNT.load(Ordering::Acquire).min(MAX_HOLDERS);
    start != 0
        && HOLDERS[..count]
            .iter()
            .any(|h| h.load(Ordering::Relaxed) == start)
}

/// Builds both tables (once for the holders), or refreshes the ranges if the set of loaded
/// objects changed since the last call. Cheap when nothing changed.
pub(crate) fn refresh() {
    let _writer = WRITER.lock().unwrap_or_else(|e| e.into_inner());
    if HOLDER_COUNT.load(Ordering::Relaxed) == 0 {
        probe_holders();
    }
    let (objects, (adds, subs)) = sys::loaded_objects();
    let packed = (adds << 32) ^ subs;
    if LOADER_SEEN.swap(packed, Ordering::Relaxed) == packed {
        return;
    }
    for object in objects {
        let file = object.name.rsplit('/').next().unwrap_or("");
        if !GATED.iter().any(|prefix| file.starts_with(prefix)) {
            continue;
        }
        for (lo, hi) in object.text {
            add_range(lo, hi);
        }
    }
}

fn add_range(lo: usize, hi: usize) {
    let count = RANGE_COUNT.load(Ordering::Relaxed);
    let known = RANGES[..count]
        .iter()
        .any(|[l, h]| l.load(Ordering::Relaxed) == lo && h.load(Ordering::Relaxed) == hi);
    if known || count == MAX_RANGES {
        return;
    }
    RANGES[count][0].store(lo, Ordering::Relaxed);
    RANGES[count][1].store(hi, Ordering::Relaxed);
    RANGE_COUNT.store(count + 1, Ordering::Release);
}

/// Function starts on the stack while [`Probe::fmt`] runs, from the last probe.
static SEEN: Mutex<Vec<usize>> = Mutex::new(Vec::new());

struct Probe;

impl fmt::Display for Probe {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        extern "C" fn each(ctx: *mut unwind::Context, arg: *mut libc::c_void) -> i32 {
            // SAFETY: `arg` is the vector below; `ctx` is the unwinder's frame context.
            unsafe {
                let seen = &mut *arg.cast::<Vec<usize>>();
                seen.push(unwind::_Unwind_GetRegionStart(ctx));
                if seen.len() > 256 {
                    return unwind::NORMAL_STOP;
                }
            }
            unwind::NO_REASON
        }
        let mut seen = Vec::with_capacity(64);
        // SAFETY: `each` matches the callback type and only touches `seen`.
        unsafe { unwind::_Unwind_Backtrace(each, (&mut seen as *mut Vec<usize>).cast()) };
        *SEEN.lock().unwrap_or_else(|e| e.into_inner()) = seen;
        Ok(())
    }
}

fn seen() -> Vec<usize> {
    std::mem::take(&mut *SEEN.lock().unwrap_or_else(|e| e.into_inner()))
}

#[inline(never)]
fn probe_holders() {
    let mut stdio = Vec::new();
    print!("{Probe}");
    stdio.extend(seen());
    eprint!("{Probe}");
    stdio.extend(seen());
    let _ = write!(std::io::stdout(), "{Probe}");
    stdio.extend(seen());
    let _ = write!(std::io::stderr(), "{Probe}");
    stdio.extend(seen());
    let _ = std::hint::black_box(format!("{Probe}"));
    let plain = seen();
    let mut holders: Vec<usize> = stdio
        .into_iter()
        .filter(|start| *start != 0 && !plain.contains(start))
        .collect();
    holders.sort_unstable();
    holders.dedup();
    for (slot, start) in HOLDERS.iter().zip(holders) {
        slot.store(start, Ordering::Relaxed);
        HOLDER_COUNT.fetch_add(1, Ordering::Release);
    }
}

/// How many lock-holding functions the probe found.
#[cfg(test)]
fn holder_count() -> usize {
    HOLDER_COUNT.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_finds_stdio_lock_holders_and_the_libraries() {
        refresh();
        assert!(holder_count() >= 2, "found {}", holder_count());
        assert!(in_library(libc::malloc as *const () as usize));
        assert!(!in_library(refresh as *const () as usize));
        assert!(!is_lock_holder(refresh as *const () as usize));
    }
}
