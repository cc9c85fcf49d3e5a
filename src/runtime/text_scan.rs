//! Builds the freeze gate's tables (`handler/places.rs`), outside any signal handler:
//! which loaded objects are system libraries, which functions hold or acquire one of
//! std's process-wide locks (by demangled name in each object's symbol table, and by a
//! probe that also works on stripped binaries), where std's stdio lock owners live, and
//! each object's unwind tables. The monitor calls [`refresh`] every 100 ms; it is cheap
//! when no object was loaded or unloaded since.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::handler::places::{
    self, UnwindSource, ACQUIRES, ACQUIRE_ENTRY, ACQUIRING, CLEANUP, HOLDERS, HOLDER_COUNT, HOLDS,
    LIBRARIES, NAMED_HOLDERS, STDIO_OWNERS,
};
use crate::sys::{self, unwind};

/// The loader's (adds, subs) when the ranges were last read, packed.
static LOADER_SEEN: AtomicU64 = AtomicU64::new(u64::MAX);
/// Serialises writers.
static WRITER: Mutex<()> = Mutex::new(());

/// Where an object's `.eh_frame` is, `(start, len)`: from its `.eh_frame_hdr`, to the end
/// of the loaded segment it is in. `None` if the header is not one the walk can use (no
/// binary search table, or pointers outside the object).
fn eh_frame_of(object: &sys::LoadedObject) -> Option<(usize, usize)> {
    use gimli::{BaseAddresses, EhFrameHdr, LittleEndian, Pointer};
    let (hdr_lo, hdr_hi) = object.eh_frame_hdr?;
    let within = |lo: usize, hi: usize| object.segments.iter().any(|&(s, e)| lo >= s && hi <= e);
    if hdr_hi <= hdr_lo || !within(hdr_lo, hdr_hi) {
        return None;
    }
    // The copy taken while the object was certainly mapped: it may be unloaded by now.
    let bytes = object.eh_frame_hdr_bytes.as_slice();
    let bases = BaseAddresses::default().set_eh_frame_hdr(hdr_lo as u64);
    let hdr = EhFrameHdr::new(bytes, LittleEndian)
        .parse(&bases, std::mem::size_of::<usize>() as u8)
        .ok()?;
    hdr.table()?;
    let Pointer::Direct(start) = hdr.eh_frame_ptr() else {
        return None;
    };
    let start = usize::try_from(start).ok()?;
    let end = object
        .segments
        .iter()
        .find(|&&(s, e)| start >= s && start < e)?
        .1;
    Some((start, end - start))
}

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

/// Records the unwind tables of `objects` (those loaded now) for the handler's walk.
fn record_unwind_tables(objects: &[sys::LoadedObject]) {
    let frames: Vec<_> = objects.iter().map(eh_frame_of).collect();
    let sources: Vec<UnwindSource<'_>> = objects
        .iter()
        .zip(&frames)
        .filter_map(|(object, &eh_frame)| {
            Some(UnwindSource {
                text: &object.text,
                hdr: object.eh_frame_hdr?,
                eh_frame: eh_frame?,
            })
        })
        .collect();
    places::record_unwind_tables(&sources);
}

/// Builds both tables (once for the holders), or refreshes the ranges if the set of loaded
/// objects changed since the last call. Cheap when nothing changed.
pub(crate) fn refresh() {
    let _writer = WRITER.lock().unwrap_or_else(|e| e.into_inner());
    let (objects, (adds, subs)) = sys::loaded_objects();
    if HOLDER_COUNT.load(Ordering::Relaxed) == 0 {
        sys::init_dl_find_object();
        probe_holders();
        probe_stdio_owners(&objects);
    }
    let packed = (adds << 32) ^ subs;
    if LOADER_SEEN.swap(packed, Ordering::Relaxed) == packed {
        return;
    }
    record_unwind_tables(&objects);
    // The named functions of each loaded object whose symbols were read, by (file, load
    // address): rebuilt into the tables from the objects loaded now, so an unloaded
    // service's entries go.
    type Scanned = HashMap<(String, usize), Vec<(usize, usize, Named)>>;
    static SCANNED: Mutex<Option<Scanned>> = Mutex::new(None);
    let mut scanned = SCANNED.lock().unwrap_or_else(|e| e.into_inner());
    let scanned = scanned.get_or_insert_with(HashMap::new);
    scanned.retain(|(name, base), _| objects.iter().any(|o| &o.name == name && o.base == *base));
    let mut libraries = Vec::new();
    for object in &objects {
        let file = object.name.rsplit('/').next().unwrap_or("");
        if let Some(&(_, redirectable)) = GATED.iter().find(|(prefix, _)| file.starts_with(prefix))
        {
            libraries.extend(
                object
                    .text
                    .iter()
                    .map(|&(lo, hi)| (lo, hi, u8::from(redirectable))),
            );
            continue;
        }
        // The executable, and objects loaded later (services: Rust cdylibs with a std of
        // their own, whose stdio, environment and panic locks are theirs): their std lock
        // holders by name.
        let key = (object.name.clone(), object.base);
        if scanned.contains_key(&key) {
            continue;
        }
        let path = if object.name.is_empty() {
            "/proc/self/exe"
        } else {
            object.name.as_str()
        };
        let functions = std::fs::read(path)
            .map(|elf| {
                named_functions(&elf)
                    .into_iter()
                    .filter_map(|(lo, hi, kind)| {
                        Some((
                            object.base.checked_add(lo)?,
                            object.base.checked_add(hi)?,
                            kind,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        scanned.insert(key, functions);
    }
    let (mut holders, mut acquiring, mut cleanup) = (Vec::new(), Vec::new(), Vec::new());
    for &(lo, hi, kind) in scanned.values().flatten() {
        match kind {
            Named::Cleanup => cleanup.push((lo, hi, 0)),
            Named::AcquireEntry => acquiring.push((lo, hi, ACQUIRE_ENTRY)),
            Named::Acquire => acquiring.push((lo, hi, 0)),
            Named::HolderAcquires => holders.push((lo, hi, ACQUIRES)),
            Named::HolderHolds => holders.push((lo, hi, HOLDS)),
        }
    }
    LIBRARIES.replace(libraries);
    NAMED_HOLDERS.replace(holders);
    ACQUIRING.replace(acquiring);
    CLEANUP.replace(cleanup);
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

/// The calling thread's std thread id, as std's reentrant locks record their owner.
pub(crate) fn current_thread_id() -> u64 {
    // `ThreadId`'s value is not public; its `Debug` is `ThreadId(<n>)`.
    let id = format!("{:?}", std::thread::current().id());
    id.trim_start_matches("ThreadId(")
        .trim_end_matches(')')
        .parse()
        .unwrap_or(0)
}

/// Finds the owner words of std's stdout and stderr locks in the executable's statics:
/// the word that holds this thread's id while it holds the lock, and zero before. Checked
/// by the probe itself (exactly one such word), so a std that lays its locks out another
/// way disables this (the frames still tell) instead of misleading the gate.
fn probe_stdio_owners(objects: &[sys::LoadedObject]) {
    let Some(exe) = objects.iter().find(|o| o.name.is_empty()) else {
        return;
    };
    let Ok(elf) = std::fs::read("/proc/self/exe") else {
        return;
    };
    let mut statics = [(0usize, 0usize); 2];
    for_each_symbol(&elf, |name, kind, value, size| {
        if kind != STT_OBJECT_KIND {
            return;
        }
        let name = format!("{:#}", rustc_demangle::demangle(name));
        let slot = match name.as_str() {
            "std::io::stdio::STDOUT" => 0,
            "std::io::stdio::stderr::INSTANCE" => 1,
            _ => return,
        };
        if let Some(at) = exe.base.checked_add(value) {
            statics[slot] = (at, size.min(512));
        }
    });
    let me = current_thread_id();
    if me == 0 {
        return;
    }
    let read = |(at, size): (usize, usize)| -> Vec<u64> {
        (0..size / 8)
            // SAFETY: inside a static of the executable, aligned (statics holding a u64
            // are 8-aligned), read with atomic loads as std writes them.
            .map(|i| unsafe { (*((at + i * 8) as *const AtomicU64)).load(Ordering::SeqCst) })
            .collect()
    };
    for (i, &(at, size)) in statics.iter().enumerate() {
        if at == 0 || at % 8 != 0 || size < 8 {
            continue;
        }
        let lock = || -> Box<dyn std::any::Any> {
            if i == 0 {
                Box::new(std::io::stdout().lock())
            } else {
                Box::new(std::io::stderr().lock())
            }
        };
        // Initialised (a first lock), then not held, then held by this thread.
        drop(lock());
        let before = read((at, size));
        let guard = lock();
        let held = read((at, size));
        drop(guard);
        let words: Vec<usize> = (0..held.len())
            .filter(|&k| held[k] == me && before[k] == 0)
            .collect();
        if let [k] = words[..] {
            STDIO_OWNERS[i].store(at + k * 8, Ordering::Relaxed);
        }
    }
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

/// True for the name of a std function that may hold a process-wide lock ([`HOLDERS`]).
#[cfg(test)]
fn is_holder_name(name: &str) -> bool {
    classify(name).is_some_and(|k| matches!(k, Named::HolderAcquires | Named::HolderHolds))
}

/// What a function's name makes it to the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    /// Takes a stdio or environment lock itself and holds it while it runs.
    HolderAcquires,
    /// May hold a process-wide lock, taken there or in an outer frame.
    HolderHolds,
    /// Where std's lock-acquisition slow paths wait: a futex wait, a contended lock.
    AcquireEntry,
    /// The reentrant lock's acquisition around them (stdio's locks).
    Acquire,
    /// The panic runtime's cleanup of a caught unwind.
    Cleanup,
}

/// std's process-wide locks, and the code that holds each: by module, never by single
/// function where a module will do, so a function std adds or renames there is covered
/// too. A name matches if the pattern is anywhere in it (demangled, without the hash):
/// an instantiation of std's generic code over a stdio type (the one-time
/// initialisation of `STDOUT`, a `ReentrantLock` of a stdio stream) counts as well.
///
/// Every pattern is checked against the symbols of the test binary (a toolchain that
/// renamed one fails the test instead of disarming the gate), and every lock-like
/// `static` of std's in it must fall under one (`places::tests`).
const LOCK_HOLDERS: &[(&str, Named)] = &[
    // `STDOUT`, stderr's and stdin's `INSTANCE` (and their one-time initialisation).
    ("std::io::stdio::", Named::HolderAcquires),
    // `ENV_LOCK`, and the public functions over it.
    ("std::sys::env::", Named::HolderAcquires),
    ("std::env::", Named::HolderAcquires),
    // `HOOK`: read while a hook runs, written by `set_hook`/`take_hook`.
    ("std::panicking::panic_with_hook", Named::HolderHolds),
    ("std::panicking::rust_panic_with_hook", Named::HolderHolds),
    ("std::panicking::set_hook", Named::HolderHolds),
    ("std::panicking::take_hook", Named::HolderHolds),
    ("std::panicking::update_hook", Named::HolderHolds),
    // The backtrace lock: taken by the default hook, by capturing or resolving a
    // `Backtrace`, and by the walk and the symbolizer under them.
    ("std::panicking::default_hook", Named::HolderHolds),
    ("std::sys::backtrace::", Named::HolderHolds),
    ("std::backtrace::", Named::HolderHolds),
    ("std::backtrace_rs::", Named::HolderHolds),
    // The thread-info lock (guard pages by thread, for the stack overflow message).
    ("std::sys::pal::unix::stack_overflow::", Named::HolderHolds),
    // The exit guard.
    ("std::sys::exit::", Named::HolderHolds),
    // Not std's, but as process-wide: parking_lot's parking table (one for the whole
    // process), whose bucket locks its slow paths hold, whatever crate calls them.
    ("parking_lot_core::parking_lot::", Named::HolderHolds),
    ("parking_lot_core::word_lock::", Named::HolderHolds),
];

/// Patterns of [`LOCK_HOLDERS`] that only some toolchains have (one of each group is enough).
#[cfg(test)]
const HOLDER_ALTERNATIVES: &[&[&str]] = &[
    &[
        "std::panicking::panic_with_hook",
        "std::panicking::rust_panic_with_hook",
    ],
    &["std::panicking::update_hook"],
    // Present only in binaries that use parking_lot.
    &["parking_lot_core::parking_lot::"],
    &["parking_lot_core::word_lock::"],
];

/// What the function named `name` (mangled or not) is to the gate.
fn classify(name: &str) -> Option<Named> {
    // Every pattern below names std, the panic runtime or parking_lot, and so does the
    // mangled name of any function it matches: the rest (most of a binary) is not
    // demangled at all.
    if !["std", "panic", "parking_lot"]
        .iter()
        .any(|p| name.contains(p))
    {
        return None;
    }
    let name = format!("{:#}", rustc_demangle::demangle(name));
    let name = name.as_str();
    if name.contains("__rust_panic_cleanup")
        || name.contains("std::panicking::catch_unwind::do_catch")
        || name.contains("std::panicking::try::do_catch")
        || name.contains("panic_unwind::") && name.contains("cleanup")
    {
        return Some(Named::Cleanup);
    }
    // The frames that start a thread's and a panic's short backtraces call the code
    // they wrap, and hold nothing.
    if name.contains("__rust_begin_short_backtrace") || name.contains("__rust_end_short_backtrace")
    {
        return None;
    }
    if let Some(&(_, kind)) = LOCK_HOLDERS
        .iter()
        .find(|(pattern, _)| name.contains(pattern))
    {
        return Some(kind);
    }
    // Process spawning holds the environment's read lock around `fork`/`posix_spawn`
    // (and while it copies the environment) in frames of its own.
    if name.contains("std::")
        && name.contains("::process::")
        && ["spawn", "do_exec", "do_fork", "capture_env"]
            .iter()
            .any(|p| name.contains(p))
    {
        return Some(Named::HolderHolds);
    }
    if name.contains("std::sys::sync::")
        && ["lock_contended", "read_contended", "write_contended"]
            .iter()
            .any(|p| name.contains(p))
        || name.contains("std::sys::") && name.contains("futex::futex_wait")
    {
        return Some(Named::AcquireEntry);
    }
    if name.contains("std::sync::reentrant_lock::") {
        return Some(Named::Acquire);
    }
    None
}

/// The `[start, end)` of every function of the executable whose name [`classify`] knows,
/// from its ELF symbol table (none if it is stripped: the probe's list remains).
fn named_functions(elf: &[u8]) -> Vec<(usize, usize, Named)> {
    let mut out = Vec::new();
    for_each_symbol(elf, |name, kind, value, len| {
        if kind != STT_FUNC || len == 0 {
            return;
        }
        let Some(hi) = value.checked_add(len) else {
            return;
        };
        if let Some(named) = classify(name) {
            out.push((value, hi, named));
        }
    });
    out
}

const STT_FUNC: u8 = 2;
const STT_OBJECT_KIND: u8 = 1;
#[cfg(test)]
const STT_OBJECT: u8 = STT_OBJECT_KIND;

/// Calls `each(name, type, value, size)` for every symbol of the ELF file `elf`'s symbol
/// tables.
fn for_each_symbol(elf: &[u8], mut each: impl FnMut(&str, u8, usize, usize)) {
    // Every offset and size comes from the file: checked arithmetic throughout, so a
    // malformed object yields fewer names, never a panic (this runs on the monitor).
    let bytes = |o: usize, n: usize| elf.get(o..o.checked_add(n)?);
    let u16_at = |o: usize| bytes(o, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| bytes(o, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |o: usize| {
        bytes(o, 8).and_then(|b| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            usize::try_from(u64::from_le_bytes(w)).ok()
        })
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return;
    }
    let (Some(shoff), Some(shentsize), Some(shnum)) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c))
    else {
        return;
    };
    let section = |i: usize| shoff.checked_add(i.checked_mul(usize::from(shentsize))?);
    for i in 0..usize::from(shnum) {
        let Some(sh) = section(i) else {
            break;
        };
        let field = |at: usize| sh.checked_add(at);
        if field(4).and_then(u32_at) != Some(2) {
            continue; // not SHT_SYMTAB
        }
        let (Some(off), Some(size), Some(link)) = (
            field(24).and_then(u64_at),
            field(32).and_then(u64_at),
            field(40).and_then(u32_at),
        ) else {
            continue;
        };
        let Some(strtab) = section(link as usize)
            .and_then(|s| s.checked_add(24))
            .and_then(u64_at)
        else {
            continue;
        };
        let Some(end) = off.checked_add(size) else {
            continue;
        };
        for sym in (off..end).step_by(24) {
            let (Some(name), Some(info), Some(value), Some(len)) = (
                u32_at(sym),
                sym.checked_add(4).and_then(|o| elf.get(o)),
                sym.checked_add(8).and_then(u64_at),
                sym.checked_add(16).and_then(u64_at),
            ) else {
                break;
            };
            let Some(name) = strtab
                .checked_add(name as usize)
                .and_then(|start| elf.get(start..))
            else {
                continue;
            };
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(0)];
            if let Ok(name) = std::str::from_utf8(name) {
                each(name, info & 0xf, value, len);
            }
        }
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
    use crate::handler::places::*;
    use std::sync::atomic::AtomicBool;

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
        assert!(ACQUIRING.len() >= 1);
        assert!(CLEANUP.len() >= 1);
        assert!(NAMED_HOLDERS.len() >= 10);
        assert!(is_holder_name(
            "_ZN3std2io5stdio6_print17h0123456789abcdefE"
        ));
        assert!(is_holder_name(
            "_ZN61_$LT$std..io..stdio..StdoutLock$u20$as$u20$std..io..Write$GT$9write_all17h0123456789abcdefE"
        ));
        assert!(!is_holder_name("_ZN3std9panicking3try7do_call17h0E"));
        assert!(!is_holder_name("_ZN4core3fmt5write17h0E"));
        assert!(!is_holder_name(
            "_ZN3std3sys9backtrace28__rust_begin_short_backtrace17h0E"
        ));
    }

    /// Self-checking: the probe finds the owner words of stdout's and stderr's locks in
    /// this std (a layout change fails here), and they tell who holds each lock.
    #[test]
    fn the_stdio_lock_owners_are_found_and_read() {
        refresh();
        assert_ne!(
            STDIO_OWNERS[0].load(Ordering::Relaxed),
            0,
            "stdout's owner word"
        );
        assert_ne!(
            STDIO_OWNERS[1].load(Ordering::Relaxed),
            0,
            "stderr's owner word"
        );
        let me = current_thread_id();
        assert_ne!(me, 0);
        {
            let _out = std::io::stdout().lock();
            assert!(stdio_held_by(me));
        }
        {
            let _err = std::io::stderr().lock();
            assert!(stdio_held_by(me));
        }
        // Not held by this thread now (another test's thread may hold it: not this id).
        assert!(!stdio_held_by(me));
        let other = std::thread::spawn(current_thread_id).join().unwrap();
        assert_ne!(other, me);
    }

    /// The handler's walk finds this binary's unwind tables, and only while the object
    /// loaded at an address is the one they were recorded for.
    #[test]
    fn unwind_tables_are_found_for_loaded_code_only() {
        refresh();
        let pc = refresh as *const () as usize;
        let tables = unwind_tables(pc).expect("this binary's unwind tables");
        assert_eq!(Some(tables.hdr.0), sys::async_safe::eh_frame_hdr_at(pc));
        assert!(tables.eh_frame.1 > 0);
        // No object at all there.
        assert!(unwind_tables(16).is_none());
    }

    /// Reading the loaded objects' tables races with other threads' `dlclose`: the
    /// header is copied while the loader's lock keeps the object mapped (a read after
    /// `dl_iterate_phdr` returned faulted now and then).
    #[test]
    fn refreshing_while_objects_are_loaded_and_unloaded_does_not_fault() {
        let libm = std::fs::read("/lib/x86_64-linux-gnu/libm.so.6")
            .or_else(|_| std::fs::read("/usr/lib/x86_64-linux-gnu/libm.so.6"))
            .expect("read libm");
        let path = std::env::temp_dir().join(format!("microsched-churn-{}.so", std::process::id()));
        std::fs::write(&path, libm).unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let churn = {
            let (stop, path) = (stop.clone(), path.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    // A copy nothing else uses: each open maps it, each close unmaps it.
                    drop(sys::Library::open(&path).expect("dlopen the copy"));
                    n += 1;
                }
                n
            })
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < until {
            LOADER_SEEN.store(u64::MAX, Ordering::Relaxed);
            refresh();
        }
        stop.store(true, Ordering::Relaxed);
        assert!(churn.join().unwrap() > 10);
        let _ = std::fs::remove_file(&path);
    }

    /// The symbols of this test binary: (demangled name without hash, type).
    fn own_symbols() -> Vec<(String, u8)> {
        let elf = std::fs::read("/proc/self/exe").expect("read the test binary");
        let mut out = Vec::new();
        for_each_symbol(&elf, |name, kind, _, _| {
            out.push((format!("{:#}", rustc_demangle::demangle(name)), kind));
        });
        out
    }

    /// Self-checking: every pattern of the holder list names functions that exist in a
    /// binary built with this toolchain (one of each group of alternatives), so a rename
    /// in std fails here instead of silently disarming the gate for that lock.
    #[test]
    fn every_lock_holder_pattern_matches_functions_of_this_std() {
        let symbols = own_symbols();
        let functions: Vec<&str> = symbols
            .iter()
            .filter(|(_, kind)| *kind == STT_FUNC)
            .map(|(name, _)| name.as_str())
            .collect();
        assert!(
            functions.len() > 1000,
            "no symbol table? {}",
            functions.len()
        );
        let found = |pattern: &str| functions.iter().any(|f| f.contains(pattern));
        for (pattern, _) in LOCK_HOLDERS {
            let group = HOLDER_ALTERNATIVES
                .iter()
                .find(|g| g.contains(pattern))
                .copied()
                .unwrap_or(&[]);
            if group.is_empty() {
                assert!(
                    found(pattern),
                    "no function of this std matches {pattern:?}"
                );
            } else if group.len() > 1 {
                assert!(
                    group.iter().any(|p| found(p)),
                    "no function of this std matches any of {group:?}"
                );
            }
        }
        // The acquisition and cleanup rules too.
        for name in [
            "lock_contended",
            "futex_wait",
            "std::sync::reentrant_lock::",
            "__rust_panic_cleanup",
        ] {
            assert!(found(name), "no function of this std matches {name:?}");
        }
        let spawn = functions
            .iter()
            .any(|f| f.contains("std::") && f.contains("::process::") && f.contains("spawn"));
        assert!(spawn, "no process spawning function in this std");
    }

    /// Self-checking the other way: every lock of std's in this binary (a `static` named
    /// like one) is held only in code the holder list covers: its own module.
    #[test]
    fn every_lock_of_this_std_is_covered_by_the_holder_list() {
        // Process-wide statics of std's that are not locks (an atomic pointer), or whose
        // takers are listed one by one (the panic hook's: `set_hook`, `take_hook`, the
        // panic entry point; checked by the test above).
        const NOT_LOCKS: &[&str] = &["std::alloc::HOOK", "std::panicking::HOOK"];
        let symbols = own_symbols();
        let locks: Vec<&str> = symbols
            .iter()
            .filter(|(name, kind)| *kind == STT_OBJECT && name.starts_with("std::"))
            .map(|(name, _)| name.as_str())
            .filter(|name| {
                let last = name.rsplit("::").next().unwrap_or("");
                [
                    "LOCK",
                    "HOOK",
                    "INSTANCE",
                    "STDOUT",
                    "STDERR",
                    "STDIN",
                    "THREAD_INFO",
                ]
                .iter()
                .any(|l| last.contains(l))
            })
            .filter(|name| !NOT_LOCKS.contains(name))
            .collect();
        for expected in ["std::io::stdio::STDOUT", "std::sys::backtrace::lock::LOCK"] {
            assert!(
                locks.contains(&expected),
                "{expected} not found in {locks:?}"
            );
        }
        for lock in &locks {
            // A function of the lock's module (the code that takes it).
            let module = lock.rsplit_once("::").map_or("", |(m, _)| m);
            let function = format!("{module}::f");
            assert!(
                is_holder_name(&function),
                "{lock}: its module's functions are not lock holders to the gate"
            );
        }
        // The environment's and the panic hook's locks, whose takers live elsewhere.
        assert!(symbols.iter().any(|(n, _)| n.ends_with("ENV_LOCK")));
        assert!(is_holder_name("std::sys::env::unix::getenv"));
        assert!(symbols.iter().any(|(n, _)| n == "std::panicking::HOOK"));
    }
}
