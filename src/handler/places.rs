//! Where a freeze must not happen, and how the handler walks: the text of the system
//! libraries (a thread interrupted there may hold one of their process-wide locks:
//! malloc's arenas, the loader's lock, stdio's), the functions that hold one of std's
//! process-wide locks, and the unwind tables of every loaded object.
//!
//! The tables live here and are read by the handler with loads only; they are built
//! outside any signal handler, by `runtime/text_scan.rs` (which scans the loaded objects,
//! their symbols and std's stdio locks) through the writers marked below. The address tables (libraries, lock holders, lock acquisition, unwind
//! cleanup) are sorted tables rebuilt from the objects loaded now and replaced whole; a
//! replaced one is freed once no lookup is in flight. The unwind tables mark an unloaded
//! object's entries dead, and reuse them under a sequence lock.
//!
//! - **Libraries**: every executable `PT_LOAD` segment of libc, the dynamic loader,
//!   libgcc_s, libstdc++, libm, libpthread, librt, libdl and the vDSO, from
//!   `dl_iterate_phdr`. The monitor re-reads them when the loader's add/remove counters
//!   change (after a `dlopen`, within 100 ms). A return out of libc, libm or the vDSO may
//!   be redirected to the freeze; out of the loader, libgcc_s or libstdc++ it may not.
//! - **Lock holders**, two ways. From the symbol tables of the executable and of every
//!   object loaded later (a service has a std of its own), by demangled name, by module
//!   wherever a module will do ([`LOCK_HOLDERS`]: stdio, the environment, the backtrace
//!   lock, the panic hook, the thread-info and exit locks, process spawning, parking_lot's
//!   parking table). Tests check the list both ways against the toolchain's std: every
//!   pattern names functions that exist, and every lock-like `static` of std's is covered.
//!   And by a probe at the first build, which also works on stripped binaries (for stdio
//!   only: a stripped binary has no names for the other locks' holders): it formats an empty
//!   `Display` value through `print!`, `eprint!` and `write!` to `stdout()` and
//!   `stderr()`, and records the
//!   functions on the stack while its `fmt` runs; it does the same through `format!`, and
//!   the functions seen only on the stdio paths are the lock holders (`core::fmt::write`
//!   also serves `format!`, and holds nothing). It prints nothing.
//! - **Unwind tables**: each loaded object's `.eh_frame_hdr` and `.eh_frame`, from its
//!   program headers, for the handler's own walk (`handler/walk.rs`).

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
// Ordinary context: the writer's retired list.
#[allow(
    clippy::disallowed_types,
    clippy::disallowed_macros,
    clippy::disallowed_methods
)]
use std::sync::Mutex;

use crate::sys::async_safe;

pub(crate) const MAX_HOLDERS: usize = 64;

/// A table of address ranges with a kind, sorted and searched by bisection: thousands of
/// std functions hold a lock, and the handler looks up every frame of a walk. Replaced
/// whole by its one writer at a time (`runtime/text_scan.rs`, under its lock), never
/// changed in place. A replaced
/// table is freed once no lookup is in flight ([`TABLE_READERS`]), so tables rebuilt as
/// services are loaded and unloaded do not pile up.
pub(crate) struct SortedRanges {
    current: AtomicPtr<Table>,
}

// Built in ordinary context: by the writer; the handler reads it through the pointer.
#[allow(
    clippy::disallowed_types,
    clippy::disallowed_macros,
    clippy::disallowed_methods
)]
type Table = Vec<(usize, usize, u8)>;

/// Lookups in flight in any [`SortedRanges`] (the handler's, on any thread).
static TABLE_READERS: AtomicUsize = AtomicUsize::new(0);
/// Replaced tables not freed yet (a lookup was in flight when they were replaced), as
/// addresses. Under the writer lock.
// Ordinary context: the writer's.
#[allow(
    clippy::disallowed_types,
    clippy::disallowed_macros,
    clippy::disallowed_methods
)]
static RETIRED: Mutex<Vec<usize>> = Mutex::new(Vec::new());

impl SortedRanges {
    const fn new() -> Self {
        SortedRanges {
            current: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The kind of the range `ip` is in, if any. Async-signal-safe.
    fn find(&self, ip: usize) -> Option<u8> {
        // SeqCst with the writer's swap and its look at the count: a table it frees was
        // replaced before this lookup loaded the pointer, or it saw this lookup counted.
        TABLE_READERS.fetch_add(1, Ordering::SeqCst);
        let table = self.current.load(Ordering::SeqCst);
        // SAFETY: null, or a table that is not freed while this lookup is counted.
        let found = unsafe { table.as_ref() }.and_then(|table| {
            let after = table.partition_point(|&(lo, _, _)| lo <= ip);
            let &(_, hi, kind) = table.get(after.checked_sub(1)?)?;
            (ip < hi).then_some(kind)
        });
        TABLE_READERS.fetch_sub(1, Ordering::SeqCst);
        found
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        // SAFETY: tests call this with no writer running.
        unsafe { self.current.load(Ordering::SeqCst).as_ref() }.map_or(0, |t| t.len())
    }

    // Ordinary context: the one writer (`runtime/text_scan.rs`, under its writer lock).
    #[allow(
        clippy::disallowed_types,
        clippy::disallowed_macros,
        clippy::disallowed_methods
    )]
    /// Replaces the table with `ranges`.
    pub(crate) fn replace(&self, mut ranges: Vec<(usize, usize, u8)>) {
        ranges.sort_unstable();
        ranges.dedup_by_key(|r| r.0);
        let old = self
            .current
            .swap(Box::into_raw(Box::new(ranges)), Ordering::SeqCst);
        let mut retired = RETIRED.lock().unwrap_or_else(|e| e.into_inner());
        if !old.is_null() {
            retired.push(old as usize);
        }
        if TABLE_READERS.load(Ordering::SeqCst) == 0 {
            for table in retired.drain(..) {
                // SAFETY: a table from `Box::into_raw` that no pointer leads to any more,
                // and no lookup was in flight after it was replaced.
                drop(unsafe { Box::from_raw(table as *mut Table) });
            }
        }
    }
}

/// The gated libraries' text, flagged with whether a return out of each range may be
/// redirected to the freeze (1) or not (0): libc's functions (malloc, memcpy, syscall
/// wrappers) return to their caller normally and hold nothing after; the loader's and the
/// unwinder's (libgcc_s, libstdc++) may not return at all, or are read by an unwind in
/// progress.
pub(crate) static LIBRARIES: SortedRanges = SortedRanges::new();
pub(crate) static HOLDERS: [AtomicUsize; MAX_HOLDERS] =
    [const { AtomicUsize::new(0) }; MAX_HOLDERS];
pub(crate) static HOLDER_COUNT: AtomicUsize = AtomicUsize::new(0);
/// Set by the handler when a walk met an object loaded since the last refresh; the
/// monitor refreshes on its next pass instead of at its period.
pub(crate) static REFRESH_WANTED: AtomicBool = AtomicBool::new(false);
/// Lock-holding std functions found by name in the symbol tables, flagged with whether
/// each is a stdio or environment function (one that takes its lock itself, so a thread
/// blocked *acquiring* that lock inside it holds nothing yet), as opposed to a panic
/// entry point or process spawning (which may hold a lock taken in an outer frame).
pub(crate) static NAMED_HOLDERS: SortedRanges = SortedRanges::new();
/// std's lock-acquisition slow paths (a contended mutex, rwlock or reentrant lock, and
/// the futex wait they park in), by name: a thread blocked in a futex wait under these
/// is waiting for a lock, not holding it. Flagged with whether the range is where the
/// wait happens (a futex wait, a contended lock), which must come first, innermost.
pub(crate) static ACQUIRING: SortedRanges = SortedRanges::new();
/// The panic runtime's cleanup after a caught unwind (`catch_unwind`'s `do_catch`,
/// `__rust_panic_cleanup`): a thread inside them is finishing an unwind, though std no
/// longer counts it as panicking.
pub(crate) static CLEANUP: SortedRanges = SortedRanges::new();
/// One executable segment of a loaded object, with its object's unwind tables, for the
/// handler's own stack walk (`handler/walk.rs`), which never calls the unwinder: its
/// text `[lo, hi)`, its `.eh_frame_hdr` and `.eh_frame` as `[start, len)` (the latter to
/// the end of the segment it is in), and whether the object is still loaded.
pub(crate) struct UnwindObject {
    /// Odd while the writer rewrites the entry (a dead one, reused): a reader that sees
    /// it odd, or changed across its reads, skips the entry (a sequence lock).
    seq: AtomicUsize,
    text: [AtomicUsize; 2],
    hdr: [AtomicUsize; 2],
    eh_frame: [AtomicUsize; 2],
    live: AtomicBool,
}

/// A loaded object's unwind tables, as the walk reads them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UnwindTables {
    pub(crate) text_lo: usize,
    pub(crate) hdr: (usize, usize),
    pub(crate) eh_frame: (usize, usize),
}

const MAX_UNWIND_OBJECTS: usize = 512;
/// Written like [`Ranges`]: entries before the count that publishes them, never changed
/// after but for `live`, which goes false when the object is unloaded.
static UNWIND: [UnwindObject; MAX_UNWIND_OBJECTS] = [const {
    UnwindObject {
        seq: AtomicUsize::new(0),
        text: [AtomicUsize::new(0), AtomicUsize::new(0)],
        hdr: [AtomicUsize::new(0), AtomicUsize::new(0)],
        eh_frame: [AtomicUsize::new(0), AtomicUsize::new(0)],
        live: AtomicBool::new(false),
    }
}; MAX_UNWIND_OBJECTS];
static UNWIND_COUNT: AtomicUsize = AtomicUsize::new(0);

/// The unwind tables of the loaded object whose text holds `pc`. Async-signal-safe.
pub(crate) fn unwind_tables(pc: usize) -> Option<UnwindTables> {
    let count = UNWIND_COUNT.load(Ordering::Acquire).min(MAX_UNWIND_OBJECTS);
    // The object loaded at `pc` now must be the one recorded: an entry whose object was
    // unloaded (and its addresses reused) since the last refresh would point at unmapped
    // or foreign memory.
    let now = async_safe::eh_frame_hdr_at(pc)?;
    UNWIND[..count].iter().find_map(|o| {
        let seq = o.seq.load(Ordering::Acquire);
        if seq % 2 == 1 {
            return None;
        }
        let found = (o.live.load(Ordering::Relaxed)
            && o.hdr[0].load(Ordering::Relaxed) == now
            && pc >= o.text[0].load(Ordering::Relaxed)
            && pc < o.text[1].load(Ordering::Relaxed))
        .then(|| UnwindTables {
            text_lo: o.text[0].load(Ordering::Relaxed),
            hdr: (
                o.hdr[0].load(Ordering::Relaxed),
                o.hdr[1].load(Ordering::Relaxed),
            ),
            eh_frame: (
                o.eh_frame[0].load(Ordering::Relaxed),
                o.eh_frame[1].load(Ordering::Relaxed),
            ),
        });
        // The reads above happen before the check that no rewrite overlapped them.
        std::sync::atomic::fence(Ordering::Acquire);
        found.filter(|_| o.seq.load(Ordering::Relaxed) == seq)
    })
}

/// What the unwind table needs of one loaded object: its executable segments, its
/// `.eh_frame_hdr` and its `.eh_frame` (both `(start, end)` and `(start, len)`).
pub(crate) struct UnwindSource<'a> {
    pub(crate) text: &'a [(usize, usize)],
    pub(crate) hdr: (usize, usize),
    pub(crate) eh_frame: (usize, usize),
}

// Ordinary context: the writer's half of the sequence lock, under `runtime/text_scan.rs`'s
// writer lock.
#[allow(
    clippy::disallowed_types,
    clippy::disallowed_macros,
    clippy::disallowed_methods
)]
/// Records the unwind tables of every loaded object not recorded yet (`loaded`), and marks
/// those of objects no longer loaded dead, for reuse.
pub(crate) fn record_unwind_tables(loaded: &[UnwindSource<'_>]) {
    let count = UNWIND_COUNT.load(Ordering::Relaxed);
    for entry in &UNWIND[..count] {
        let lo = entry.text[0].load(Ordering::Relaxed);
        let hi = entry.text[1].load(Ordering::Relaxed);
        let hdr = entry.hdr[0].load(Ordering::Relaxed);
        let still = loaded
            .iter()
            .any(|o| o.hdr.0 == hdr && o.text.contains(&(lo, hi)));
        if !still {
            entry.live.store(false, Ordering::Relaxed);
        }
    }
    for object in loaded {
        let ((hdr_lo, hdr_hi), eh_frame) = (object.hdr, object.eh_frame);
        for &(lo, hi) in object.text {
            let count = UNWIND_COUNT.load(Ordering::Relaxed);
            let known = UNWIND[..count].iter().any(|e| {
                e.live.load(Ordering::Relaxed)
                    && e.text[0].load(Ordering::Relaxed) == lo
                    && e.text[1].load(Ordering::Relaxed) == hi
                    && e.hdr[0].load(Ordering::Relaxed) == hdr_lo
            });
            if known {
                continue;
            }
            // A dead entry (its object unloaded) is reused; else a new one.
            let reuse = UNWIND[..count]
                .iter()
                .position(|e| !e.live.load(Ordering::Relaxed));
            let (entry, fresh) = match reuse {
                Some(i) => (&UNWIND[i], false),
                None if count < MAX_UNWIND_OBJECTS => (&UNWIND[count], true),
                None => continue,
            };
            // Sequence lock: odd while rewritten (the stores below may not move above it).
            entry.seq.fetch_add(1, Ordering::AcqRel);
            std::sync::atomic::fence(Ordering::Release);
            entry.text[0].store(lo, Ordering::Relaxed);
            entry.text[1].store(hi, Ordering::Relaxed);
            entry.hdr[0].store(hdr_lo, Ordering::Relaxed);
            entry.hdr[1].store(hdr_hi - hdr_lo, Ordering::Relaxed);
            entry.eh_frame[0].store(eh_frame.0, Ordering::Relaxed);
            entry.eh_frame[1].store(eh_frame.1, Ordering::Relaxed);
            entry.live.store(true, Ordering::Relaxed);
            entry.seq.fetch_add(1, Ordering::Release);
            if fresh {
                UNWIND_COUNT.store(count + 1, Ordering::Release);
            }
        }
    }
}

/// True if `pc` is in the text of a gated library. Async-signal-safe.
pub(crate) fn in_library(pc: usize) -> bool {
    library(pc).is_some()
}

/// `Some(redirectable)` if `pc` is in the text of a gated library: whether a return out of
/// it may be redirected to the freeze. Async-signal-safe.
pub(crate) fn library(pc: usize) -> Option<bool> {
    LIBRARIES.find(pc).map(|redirectable| redirectable == 1)
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
    match NAMED_HOLDERS.find(ip) {
        Some(ACQUIRES) => return Holder::Acquires,
        Some(_) => return Holder::Holds,
        None => {}
    }
    // Found by the stdio probe (a stripped binary has no names).
    let count = HOLDER_COUNT.load(Ordering::Acquire).min(MAX_HOLDERS);
    if start != 0
        && HOLDERS[..count]
            .iter()
            .any(|h| h.load(Ordering::Relaxed) == start)
    {
        return Holder::Acquires;
    }
    Holder::No
}

/// True if `ip` is in the panic runtime's cleanup of a caught unwind. Async-signal-safe.
pub(crate) fn in_unwind_cleanup(ip: usize) -> bool {
    CLEANUP.find(ip).is_some()
}

/// `Some(entry)` if `ip` is in one of std's lock-acquisition slow paths: whether it is
/// where the wait happens (a futex wait, a contended lock) or around it (the reentrant
/// lock). Async-signal-safe.
pub(crate) fn acquiring(ip: usize) -> Option<bool> {
    ACQUIRING.find(ip).map(|kind| kind == ACQUIRE_ENTRY)
}

/// Kinds in [`NAMED_HOLDERS`] and [`ACQUIRING`].
pub(crate) const HOLDS: u8 = 0;
pub(crate) const ACQUIRES: u8 = 1;
pub(crate) const ACQUIRE_ENTRY: u8 = 1;

/// The owner words of std's stdout and stderr locks (`ReentrantLock`s), found by
/// [`probe_stdio_owners`] (0: not found; then only the frames tell).
pub(crate) static STDIO_OWNERS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// True if the thread whose std thread id is `thread_id` holds stdout's or stderr's lock
/// now, in any frame: its own (`stdout().lock()` in the task) included. Async-signal-safe
/// (reads two words of std's statics).
pub(crate) fn stdio_held_by(thread_id: u64) -> bool {
    thread_id != 0
        && STDIO_OWNERS.iter().any(|w| {
            let at = w.load(Ordering::Relaxed);
            // SAFETY: an aligned word inside std's `STDOUT` or stderr `INSTANCE` static,
            // which lives as long as the process; written by std with atomics.
            at != 0 && unsafe { (*(at as *const AtomicU64)).load(Ordering::Relaxed) } == thread_id
        })
}
