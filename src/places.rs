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
//!   change (after a `dlopen`, within 100 ms). A return out of libc, libm or the vDSO may
//!   be redirected to the freeze; out of the loader, libgcc_s or libstdc++ it may not.
//! - **Lock holders**, two ways. From the symbol tables of the executable and of every
//!   object loaded later (a service has a std of its own), by name: every
//!   function of `std::io::stdio` (so `write_all` paths too), std's `getenv`/`setenv`/
//!   `unsetenv` (its environment lock) and the panic entry points (the hook lock). And by a
//!   probe at the first build, which also works on stripped binaries: it formats an empty
//!   `Display` value through `print!`, `eprint!` and `write!` to `stdout()` and
//!   `stderr()`, and records the
//!   functions on the stack while its `fmt` runs; it does the same through `format!`, and
//!   the functions seen only on the stdio paths are the lock holders (`core::fmt::write`
//!   also serves `format!`, and holds nothing). It prints nothing.

use std::collections::HashSet;
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::sys::{self, unwind};

const MAX_HOLDERS: usize = 64;

/// A table of address ranges, each with a flag, written by one writer at a time (under
/// `WRITER`) and read by the signal handler with loads only: an entry is written before
/// the count that publishes it (Release, read with Acquire). It only grows.
struct Ranges<const N: usize> {
    bounds: [[AtomicUsize; 2]; N],
    flags: [AtomicBool; N],
    count: AtomicUsize,
}

impl<const N: usize> Ranges<N> {
    const fn new() -> Self {
        Ranges {
            bounds: [const { [AtomicUsize::new(0), AtomicUsize::new(0)] }; N],
            flags: [const { AtomicBool::new(false) }; N],
            count: AtomicUsize::new(0),
        }
    }

    fn published(&self) -> usize {
        self.count.load(Ordering::Acquire).min(N)
    }

    /// Adds `[lo, hi)` with `flag`, unless the table is full. Under `WRITER`.
    fn push(&self, lo: usize, hi: usize, flag: bool) {
        let count = self.count.load(Ordering::Relaxed);
        if count >= N {
            return;
        }
        self.bounds[count][0].store(lo, Ordering::Relaxed);
        self.bounds[count][1].store(hi, Ordering::Relaxed);
        self.flags[count].store(flag, Ordering::Relaxed);
        self.count.store(count + 1, Ordering::Release);
    }

    /// True if `[lo, hi)` is in the table already. Under `WRITER`.
    fn contains(&self, lo: usize, hi: usize) -> bool {
        self.bounds[..self.published()]
            .iter()
            .any(|[l, h]| l.load(Ordering::Relaxed) == lo && h.load(Ordering::Relaxed) == hi)
    }

    /// The flag of the range `ip` is in, if any. Async-signal-safe.
    fn find(&self, ip: usize) -> Option<bool> {
        self.bounds[..self.published()]
            .iter()
            .position(|[lo, hi]| {
                ip >= lo.load(Ordering::Relaxed) && ip < hi.load(Ordering::Relaxed)
            })
            .map(|i| self.flags[i].load(Ordering::Relaxed))
    }
}

/// The gated libraries' text, flagged with whether a return out of each range may be
/// redirected to the freeze: libc's functions (malloc, memcpy, syscall wrappers) return
/// to their caller normally and hold nothing after; the loader's and the unwinder's
/// (libgcc_s, libstdc++) may not return at all, or are read by an unwind in progress.
static LIBRARIES: Ranges<128> = Ranges::new();
static HOLDERS: [AtomicUsize; MAX_HOLDERS] = [const { AtomicUsize::new(0) }; MAX_HOLDERS];
static HOLDER_COUNT: AtomicUsize = AtomicUsize::new(0);
/// Lock-holding std functions found by name in the symbol tables, flagged with whether
/// each is a stdio or environment function (one that takes its lock itself, so a thread
/// blocked *acquiring* that lock inside it holds nothing yet), as opposed to a panic
/// entry point or process spawning (which may hold a lock taken in an outer frame).
static NAMED_HOLDERS: Ranges<8192> = Ranges::new();
/// std's lock-acquisition slow paths (a contended mutex, rwlock or reentrant lock, and
/// the futex wait they park in), by name: a thread blocked in a futex wait under these
/// is waiting for a lock, not holding it. Flagged with whether the range is where the
/// wait happens (a futex wait, a contended lock), which must come first, innermost.
static ACQUIRING: Ranges<256> = Ranges::new();
/// The panic runtime's cleanup after a caught unwind (`catch_unwind`'s `do_catch`,
/// `__rust_panic_cleanup`): a thread inside them is finishing an unwind, though std no
/// longer counts it as panicking.
static CLEANUP: Ranges<64> = Ranges::new();
/// The loader's (adds, subs) when the ranges were last read, packed.
static LOADER_SEEN: AtomicU64 = AtomicU64::new(u64::MAX);
/// Serialises writers.
static WRITER: Mutex<()> = Mutex::new(());

/// Library names (file name prefixes) whose text is gated, and whether a return out of
/// each may be redirected to the freeze (see `LIBRARIES`).
const GATED: &[(&str, bool)] = &[
    ("libc.so", true),
    ("libc-", true),
    ("libm.so", true),
    ("libpthread", true),
    ("librt", true),
    ("libdl", true),
    ("linux-vdso", true),
    ("linux-gate", true),
    ("ld-linux", false),
    ("ld64.so", false),
    ("libgcc_s", false),
    ("libstdc++", false),
];

/// True if `pc` is in the text of a gated library. Async-signal-safe.
pub(crate) fn in_library(pc: usize) -> bool {
    library(pc).is_some()
}

/// `Some(redirectable)` if `pc` is in the text of a gated library: whether a return out of
/// it may be redirected to the freeze. Async-signal-safe.
pub(crate) fn library(pc: usize) -> Option<bool> {
    LIBRARIES.find(pc)
}

/// What a frame is to the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    /// Holds no process-wide lock of std's.
    No,
    /// A std function that holds a process-wide lock while it runs, which it takes
    /// itself (stdio, the environment): blocked in acquiring it, it holds nothing yet.
    Acquires,
    /// A std function that may hold a process-wide lock it took in an outer frame (the
    /// panic entry points).
    Holds,
}

/// Whether a function starting at `start` (the frame's IP: `ip`) holds one of std's
/// process-wide locks while it runs: stdout, stderr, stdin, the environment, the panic
/// hook. Async-signal-safe.
pub(crate) fn lock_holder(start: usize, ip: usize) -> Holder {
    let count = HOLDER_COUNT.load(Ordering::Acquire).min(MAX_HOLDERS);
    if start != 0
        && HOLDERS[..count]
            .iter()
            .any(|h| h.load(Ordering::Relaxed) == start)
    {
        // Found by the stdio probe.
        return Holder::Acquires;
    }
    match NAMED_HOLDERS.find(ip) {
        None => Holder::No,
        Some(true) => Holder::Acquires,
        Some(false) => Holder::Holds,
    }
}

/// True if `ip` is in the panic runtime's cleanup of a caught unwind. Async-signal-safe.
pub(crate) fn in_unwind_cleanup(ip: usize) -> bool {
    CLEANUP.find(ip).is_some()
}

/// `Some(entry)` if `ip` is in one of std's lock-acquisition slow paths: whether it is
/// where the wait happens (a futex wait, a contended lock) or around it (the reentrant
/// lock). Async-signal-safe.
pub(crate) fn acquiring(ip: usize) -> Option<bool> {
    ACQUIRING.find(ip)
}

/// Builds both tables (once for the holders), or refreshes the ranges if the set of loaded
/// objects changed since the last call. Cheap when nothing changed.
pub(crate) fn refresh() {
    let _writer = WRITER.lock().unwrap_or_else(|e| e.into_inner());
    let (objects, (adds, subs)) = sys::loaded_objects();
    if HOLDER_COUNT.load(Ordering::Relaxed) == 0 {
        probe_holders();
    }
    let packed = (adds << 32) ^ subs;
    if LOADER_SEEN.swap(packed, Ordering::Relaxed) == packed {
        return;
    }
    // Objects whose std symbols were read already, by (file, load address).
    static SCANNED: Mutex<Option<HashSet<(String, usize)>>> = Mutex::new(None);
    let mut scanned = SCANNED.lock().unwrap_or_else(|e| e.into_inner());
    let scanned = scanned.get_or_insert_with(HashSet::new);
    for object in objects {
        let file = object.name.rsplit('/').next().unwrap_or("");
        if let Some(&(_, redirectable)) = GATED.iter().find(|(prefix, _)| file.starts_with(prefix))
        {
            for (lo, hi) in object.text {
                add_range(lo, hi, redirectable);
            }
            continue;
        }
        // The executable, and objects loaded later (services: Rust cdylibs with a std of
        // their own, whose stdio, environment and panic locks are theirs): their std lock
        // holders by name.
        if !scanned.insert((object.name.clone(), object.base)) {
            continue;
        }
        let path = if object.name.is_empty() {
            "/proc/self/exe"
        } else {
            object.name.as_str()
        };
        if let Ok(elf) = std::fs::read(path) {
            for (lo, hi, kind) in named_functions(&elf) {
                let (lo, hi) = (object.base + lo, object.base + hi);
                match kind {
                    Named::Cleanup => CLEANUP.push(lo, hi, false),
                    Named::AcquireEntry => ACQUIRING.push(lo, hi, true),
                    Named::Acquire => ACQUIRING.push(lo, hi, false),
                    Named::HolderAcquires => NAMED_HOLDERS.push(lo, hi, true),
                    Named::HolderHolds => NAMED_HOLDERS.push(lo, hi, false),
                }
            }
        }
    }
}

fn add_range(lo: usize, hi: usize, redirectable: bool) {
    if !LIBRARIES.contains(lo, hi) {
        LIBRARIES.push(lo, hi, redirectable);
    }
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

/// True for the mangled name of a std function that holds a process-wide lock while it
/// runs code the gate might interrupt: everything in `std::io::stdio` (the stdout and
/// stderr locks, `write_all` paths included), the environment's `getenv`/`setenv`/
/// `unsetenv` (std's environment lock), and the panic entry points (the hook lock).
#[cfg(test)]
fn is_holder_name(name: &str) -> bool {
    classify(name).is_some_and(|k| matches!(k, Named::HolderAcquires | Named::HolderHolds))
}

/// What a function's mangled name makes it to the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    /// Takes a stdio or environment lock itself and holds it while it runs.
    HolderAcquires,
    /// A panic entry point: may hold the hook lock.
    HolderHolds,
    /// Where std's lock-acquisition slow paths wait: a futex wait, a contended lock.
    AcquireEntry,
    /// The reentrant lock's acquisition around them (stdio's locks).
    Acquire,
    /// The panic runtime's cleanup of a caught unwind.
    Cleanup,
}

fn classify(name: &str) -> Option<Named> {
    let std = name.starts_with("_ZN3std") || name.starts_with("_RN") && name.contains("_3std");
    let stdio = name.contains("std..io..stdio") || name.contains("2io5stdio");
    // The environment: `getenv`/`setenv`/`unsetenv`, and `env::vars` (std's
    // `sys::env::..::env`), each of which takes the environment lock itself.
    let env = name.contains("6getenv")
        || name.contains("6setenv")
        || name.contains("8unsetenv")
        || name.contains("3sys3env");
    if stdio || std && env {
        return Some(Named::HolderAcquires);
    }
    // The panic entry points (the hook lock), and process spawning, which holds the
    // environment's read lock around `fork`/`posix_spawn` in frames of its own.
    let spawn = name.contains("7process")
        && (name.contains("5spawn")
            || name.contains("11posix_spawn")
            || name.contains("7do_exec")
            || name.contains("7do_fork"));
    if std && (name.contains("14rust_panic_with_hook") || name.contains("12default_hook") || spawn)
    {
        return Some(Named::HolderHolds);
    }
    let sync = name.contains("4sync");
    if std
        && (sync
            && (name.contains("14lock_contended")
                || name.contains("14read_contended")
                || name.contains("15write_contended"))
            || name.contains("5futex10futex_wait"))
    {
        return Some(Named::AcquireEntry);
    }
    if std && sync && name.contains("14reentrant_lock") {
        return Some(Named::Acquire);
    }
    if name.contains("__rust_panic_cleanup")
        || std && name.contains("8do_catch")
        || name.contains("12panic_unwind") && name.contains("7cleanup")
    {
        return Some(Named::Cleanup);
    }
    None
}

/// The `[start, end)` of every function of the executable whose name [`classify`] knows,
/// from its ELF symbol table (none if it is stripped: the probe's list remains).
fn named_functions(elf: &[u8]) -> Vec<(usize, usize, Named)> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    };
    let mut out = Vec::new();
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return out;
    }
    let (Some(shoff), Some(shentsize), Some(shnum)) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c))
    else {
        return out;
    };
    let section = |i: usize| shoff + i * usize::from(shentsize);
    for i in 0..usize::from(shnum) {
        let sh = section(i);
        if u32_at(sh + 4) != Some(2) {
            continue; // not SHT_SYMTAB
        }
        let (Some(off), Some(size), Some(link)) =
            (u64_at(sh + 24), u64_at(sh + 32), u32_at(sh + 40))
        else {
            continue;
        };
        let Some(strtab) = u64_at(section(link as usize) + 24) else {
            continue;
        };
        for sym in (off..off + size).step_by(24) {
            let (Some(name), Some(info), Some(value), Some(len)) = (
                u32_at(sym),
                elf.get(sym + 4),
                u64_at(sym + 8),
                u64_at(sym + 16),
            ) else {
                break;
            };
            if info & 0xf != 2 || len == 0 {
                continue; // not STT_FUNC
            }
            let start = strtab + name as usize;
            let Some(bytes) = elf.get(start..) else {
                continue;
            };
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(0);
            if let Some(kind) = std::str::from_utf8(&bytes[..end]).ok().and_then(classify) {
                out.push((value, value + len, kind));
            }
        }
    }
    out
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
        let f = refresh as *const () as usize;
        assert_eq!(lock_holder(f, f), Holder::No);
        assert_eq!(
            classify("_ZN3std3sys4sync5mutex5futex5Mutex14lock_contended17h0123456789abcdefE"),
            Some(Named::AcquireEntry)
        );
        assert_eq!(
            classify("_ZN3std3sys3pal4unix5futex10futex_wait17h0123456789abcdefE"),
            Some(Named::AcquireEntry)
        );
        assert_eq!(
            classify("_ZN3std3sys3env4unix3env17h0123456789abcdefE"),
            Some(Named::HolderAcquires)
        );
        assert_eq!(
            classify("_ZN3std9panicking12default_hook17h0123456789abcdefE"),
            Some(Named::HolderHolds)
        );
        // Self-checking lists: a toolchain that renamed these would disarm the gate's
        // rules for them silently; this fails instead.
        assert!(ACQUIRING.published() >= 1);
        assert!(CLEANUP.published() >= 1);
        assert!(in_unwind_cleanup(
            CLEANUP.bounds[0][0].load(Ordering::Relaxed)
        ));
        assert!(NAMED_HOLDERS.published() >= 10);
        assert!(is_holder_name(
            "_ZN3std2io5stdio6_print17h0123456789abcdefE"
        ));
        assert!(is_holder_name(
            "_ZN61_$LT$std..io..stdio..StdoutLock$u20$as$u20$std..io..Write$GT$9write_all17h0E"
        ));
        assert!(!is_holder_name("_ZN3std9panicking3try7do_call17h0E"));
        assert!(!is_holder_name("_ZN4core3fmt5write17h0E"));
    }
}
