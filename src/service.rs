//! Services from shared objects: the paper's other half. A function is a Rust `cdylib`
//! loaded into the running process, so a cold start costs a `dlopen`, not a process.
//!
//! A service exports the C ABI of the `microsched-service` crate (its
//! `export_service!` macro): an ABI version symbol, checked at load, and one entry point,
//! bytes in and bytes out through buffers the host provides. The service has its own copy
//! of std, so its panics are caught on its side and come back as [`CallError::Panicked`].
//!
//! Call a service from a pool task with a budget: a runaway service is then cancelled and
//! frozen like any task (its code is not a system library, so the freeze gate treats it as
//! task code), and a stack overflow inside it freezes the task, not the process.
//!
//! ```no_run
//! use std::time::Duration;
//! use microsched::{Budget, Pool, ServiceCache};
//!
//! let pool = Pool::new()?;
//! // SAFETY: target/release holds the services this workspace builds.
//! let services = unsafe { ServiceCache::new("target/release", 16) };
//! let hash = services.get("svc_hash")?;                 // target/release/libsvc_hash.so
//! let h = pool.spawn_with(Budget::cpu(Duration::from_millis(50)), move || hash.call(b"hello"));
//! let digest = h.join()??;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::kill::Mutex;
use microsched_service as abi;

use crate::sys::Library;

/// The first output buffer a call offers; a larger answer is asked for again once, with a
/// buffer of its size.
const FIRST_OUTPUT: usize = 64 * 1024;
/// The largest answer accepted.
pub const MAX_OUTPUT: usize = 16 << 20;

/// A service loaded from a shared object.
pub struct Service {
    call: abi::CallFn,
    path: PathBuf,
    // Last: unloaded after everything that points into it.
    _library: Library,
}

// SAFETY: the library handle is only closed on drop, and the entry point is a plain
// function of safe Rust code (`export_service!`), callable from any thread at once.
unsafe impl Send for Service {}
// SAFETY: as above; `&Service` only calls the entry point.
unsafe impl Sync for Service {}

/// Why a service could not be loaded.
#[derive(Debug)]
#[non_exhaustive]
pub enum LoadError {
    /// The name has characters other than ASCII letters, digits, `_` and `-` (it becomes
    /// part of a file name).
    BadName(String),
    /// `dlopen` failed: no such file, not a shared object, unresolved symbols.
    Open {
        /// The file.
        path: PathBuf,
        /// What the loader said.
        reason: String,
    },
    /// The object lacks a symbol the ABI requires: not built with `export_service!`.
    MissingSymbol {
        /// The file.
        path: PathBuf,
        /// The symbol.
        symbol: &'static str,
    },
    /// The object speaks another version of the ABI.
    WrongAbi {
        /// The file.
        path: PathBuf,
        /// The version it exports.
        found: u32,
        /// The version this host speaks.
        expected: u32,
    },
    /// Copying the object for a cold load failed.
    Copy {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::BadName(name) => write!(
                f,
                "service name {name:?} is not valid: use ASCII letters, digits, '_' and '-'"
            ),
            LoadError::Open { path, reason } => {
                write!(f, "could not load service {}: {reason}", path.display())
            }
            LoadError::MissingSymbol { path, symbol } => write!(
                f,
                "{} is not a microsched service: it has no `{symbol}` (build it with \
                 microsched_service::export_service!)",
                path.display()
            ),
            LoadError::WrongAbi {
                path,
                found,
                expected,
            } => write!(
                f,
                "{} speaks service ABI {found}, this host speaks {expected}: rebuild it \
                 against the same microsched-service",
                path.display()
            ),
            LoadError::Copy { path, source } => {
                write!(
                    f,
                    "could not copy {} for a cold load: {source}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// Why a call returned no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError {
    /// The service returned an error, with its message.
    Failed(String),
    /// The service panicked (caught on its side), with the panic message.
    Panicked(String),
    /// The answer is longer than [`MAX_OUTPUT`].
    TooLarge {
        /// Its length.
        needed: usize,
    },
    /// The service broke the ABI (an unknown status).
    Abi(i32),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Failed(m) => write!(f, "the service failed: {m}"),
            CallError::Panicked(m) => write!(f, "the service panicked: {m}"),
            CallError::TooLarge { needed } => write!(
                f,
                "the service's answer is {needed} bytes, more than the {MAX_OUTPUT} accepted"
            ),
            CallError::Abi(status) => write!(f, "the service returned unknown status {status}"),
        }
    }
}

impl std::error::Error for CallError {}

impl Service {
    /// Loads the service in the shared object at `path` (`dlopen`, resolving every
    /// symbol now) and checks its ABI version.
    ///
    /// # Safety
    ///
    /// Loading a shared object runs its initialisers, and calling it trusts its symbols'
    /// types: `path` must be a service built with `microsched_service::export_service!`
    /// (as every `lib*.so` in a directory of services is, by the one who put it there).
    /// The ABI version check catches a service built against another ABI, or an object
    /// that is not a service at all, but not an object that lies about its symbols.
    pub unsafe fn load(path: impl AsRef<Path>) -> Result<Service, LoadError> {
        let path = path.as_ref().to_path_buf();
        let library = Library::open(&path).map_err(|reason| LoadError::Open {
            path: path.clone(),
            reason,
        })?;
        let missing = |symbol| LoadError::MissingSymbol {
            path: path.clone(),
            symbol,
        };
        let version = library
            .symbol(abi::ABI_SYMBOL)
            .ok_or_else(|| missing("MICROSCHED_SERVICE_ABI"))?;
        // SAFETY: `export_service!` defines this symbol as a `u32` static.
        let found = unsafe { version.cast::<u32>().read() };
        if found != abi::ABI_VERSION {
            return Err(LoadError::WrongAbi {
                path,
                found,
                expected: abi::ABI_VERSION,
            });
        }
        let call = library
            .symbol(abi::CALL_SYMBOL)
            .ok_or_else(|| missing("microsched_service_call"))?;
        // SAFETY: with the right ABI version, this symbol is the entry point
        // `export_service!` defines, of type `CallFn`.
        let call = unsafe { std::mem::transmute::<*mut libc::c_void, abi::CallFn>(call) };
        Ok(Service {
            call,
            path,
            _library: library,
        })
    }

    /// Loads a fresh copy of the object at `path`: copied to a new file in `scratch`
    /// first, so the loader maps and relocates it anew instead of reusing a loaded copy
    /// (a cold start, for measurement). The copy is removed once loaded.
    ///
    /// # Safety
    ///
    /// As [`Service::load`].
    pub unsafe fn load_cold(
        path: impl AsRef<Path>,
        scratch: impl AsRef<Path>,
    ) -> Result<Service, LoadError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = path.as_ref();
        let copy = scratch.as_ref().join(format!(
            "cold-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("service.so")
        ));
        std::fs::copy(path, &copy).map_err(|source| LoadError::Copy {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: a copy of the caller's object, which the caller vouches for.
        let service = unsafe { Service::load(&copy) };
        let _ = std::fs::remove_file(&copy);
        service
    }

    /// Calls the service with `input` and returns its answer.
    ///
    /// An answer longer than 64 KiB makes the service run a second time with a buffer
    /// of its size, so services should be deterministic.
    pub fn call(&self, input: &[u8]) -> Result<Vec<u8>, CallError> {
        let mut cap = FIRST_OUTPUT;
        loop {
            // Not zeroed: the service writes what it answers, and only that is read.
            let mut output = Vec::<u8>::with_capacity(cap);
            let mut len = 0usize;
            // SAFETY: `input` is valid for its length, `output` has `cap` bytes of spare
            // capacity and does not overlap it; `len` is a valid out-pointer; `call` is the
            // service's entry point (checked at load).
            let status = unsafe {
                (self.call)(
                    input.as_ptr(),
                    input.len(),
                    output.as_mut_ptr(),
                    cap,
                    &mut len,
                )
            };
            // The service wrote the first `min(len, cap)` bytes for every status that carries
            // a payload (OK, FAILED, PANICKED); for the others nothing is read.
            let written = |mut output: Vec<u8>| {
                // SAFETY: as just said; `min(len, cap)` is within the capacity.
                unsafe { output.set_len(len.min(cap)) };
                output
            };
            return match status {
                abi::OK => Ok(written(output)),
                abi::TOO_SMALL if len > MAX_OUTPUT => Err(CallError::TooLarge { needed: len }),
                abi::TOO_SMALL if len > cap => {
                    cap = len;
                    continue;
                }
                abi::FAILED => Err(CallError::Failed(
                    String::from_utf8_lossy(&written(output)).into_owned(),
                )),
                abi::PANICKED => Err(CallError::Panicked(
                    String::from_utf8_lossy(&written(output)).into_owned(),
                )),
                other => Err(CallError::Abi(other)),
            };
        }
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service").field("path", &self.path).finish()
    }
}

/// Loaded services, by name, kept warm: at most `capacity`, the least recently used
/// dropped first (its object is unloaded once no running call holds it).
pub struct ServiceCache {
    dir: PathBuf,
    capacity: usize,
    /// Each name with its service, or the load in flight for it, and when it was last
    /// asked for.
    entries: Mutex<Vec<(String, Entry, u64)>>,
    tick: AtomicU64,
    loads: AtomicU64,
}

/// A name in the cache: loaded, or being loaded by one caller while the others wait.
enum Entry {
    Ready(Arc<Service>),
    Loading(Arc<Flight>),
}

/// One load in flight: `done` (a futex word) becomes 1 when its loader has put the
/// service in the cache or removed the name after a failure.
struct Flight {
    done: crate::sync::loom::Futex,
}

/// How long a caller waits for another caller's load of the same name before it loads
/// the name itself: long enough for any `dlopen`, short enough that a loader frozen or
/// abandoned mid-load (a task killed there) delays the others only once.
const FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Ends a flight however its loader leaves (a return, or an unwind from a cancel): the
/// name is removed unless the load put the service in, and the waiters are woken.
struct Landing<'a> {
    cache: &'a ServiceCache,
    name: &'a str,
    flight: Arc<Flight>,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        {
            let _no_freeze = crate::handler::FreezeGuard::new();
            let mut entries = self.cache.entries.lock();
            if let Some(i) = entries.iter().position(|e| {
                e.0 == self.name
                    && matches!(&e.1, Entry::Loading(f) if Arc::ptr_eq(f, &self.flight))
            }) {
                entries.swap_remove(i);
            }
        }
        self.flight.done.store(1, Ordering::Release);
        self.flight.done.wake_all();
    }
}

impl ServiceCache {
    /// A cache of the services in `dir`, where service `name` is the file `lib<name>.so`
    /// (what Cargo builds for a `cdylib` package `name`, with `-` as `_`).
    ///
    /// # Safety
    ///
    /// Every `lib*.so` in `dir` that the cache may be asked for must be a service, as for
    /// [`Service::load`]: the directory is trusted like code.
    pub unsafe fn new(dir: impl Into<PathBuf>, capacity: usize) -> ServiceCache {
        ServiceCache {
            dir: dir.into(),
            capacity: capacity.max(1),
            entries: Mutex::new(Vec::new()),
            tick: AtomicU64::new(0),
            loads: AtomicU64::new(0),
        }
    }

    /// The file of service `name`.
    pub fn path_of(&self, name: &str) -> Result<PathBuf, LoadError> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(LoadError::BadName(name.to_string()));
        }
        Ok(self.dir.join(format!("lib{}.so", name.replace('-', "_"))))
    }

    /// Service `name`, loaded now if it is not in the cache (warm after the first call).
    ///
    /// Concurrent first requests for one name load it once: the first caller loads, the
    /// others wait for it (at most 5 s each, then they load it themselves) and share the
    /// object. A failed load is not cached: each caller then gets its own error.
    ///
    /// Callable from inside a task: the cache's lock is held under the no-freeze guard (a
    /// task frozen holding it would stop every later lookup), and no service code runs
    /// under it (an evicted service is unloaded after the lock is released). A task
    /// waiting for another's load waits in a futex, where a kill may freeze it.
    pub fn get(&self, name: &str) -> Result<Arc<Service>, LoadError> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut waited = std::time::Duration::ZERO;
        let flight = loop {
            let waiting = {
                let _no_freeze = crate::handler::FreezeGuard::new();
                // A named guard, dropped before `_no_freeze` (a temporary in the block's
                // tail expression would outlive it, and be unlocked unguarded).
                let mut entries = self.entries.lock();
                match entries.iter_mut().find(|e| e.0 == name) {
                    Some(entry) => {
                        entry.2 = tick;
                        match &entry.1 {
                            Entry::Ready(service) => return Ok(service.clone()),
                            Entry::Loading(flight) if waited < FLIGHT_WAIT => flight.clone(),
                            // Waited long enough: load it ourselves, outside the flight.
                            Entry::Loading(_) => break None,
                        }
                    }
                    None => {
                        let flight = Arc::new(Flight {
                            done: crate::sync::loom::Futex::new(0),
                        });
                        entries.push((name.to_string(), Entry::Loading(flight.clone()), tick));
                        break Some(flight);
                    }
                }
            };
            let started = std::time::Instant::now();
            if waiting.done.load(Ordering::Acquire) == 0 {
                // A load takes 50 µs to a few ms: the first 2 ms are waited on the slot
                // (a handoff costs ~130 µs of CPU and a thread, per waiter); a longer wait
                // gives the slot to a standby first.
                if waited.is_zero() {
                    let first = std::time::Duration::from_millis(2);
                    waiting.done.wait(0, Some(first));
                } else {
                    let slice = std::time::Duration::from_millis(50);
                    crate::block_in_place(|| waiting.done.wait(0, Some(slice)));
                }
            }
            waited += started.elapsed();
        };
        let landing = flight.map(|flight| Landing {
            cache: self,
            name,
            flight,
        });
        // Loaded outside the lock: a `dlopen` takes a while, and other names stay served.
        // SAFETY: `new`'s contract: the directory holds services.
        let service = Arc::new(unsafe { Service::load(self.path_of(name)?) }?);
        self.loads.fetch_add(1, Ordering::Relaxed);
        let (service, unload) = {
            let _no_freeze = crate::handler::FreezeGuard::new();
            let mut entries = self.entries.lock();
            let (service, mut unload) = match entries.iter_mut().find(|e| e.0 == name) {
                // Loaded by someone else meanwhile (we had stopped waiting for them): ours
                // is dropped (unloaded) below, unlocked.
                Some((_, Entry::Ready(theirs), _)) => (theirs.clone(), vec![service]),
                // Ours, or a flight we gave up on: the loaded service wins.
                Some(entry) => {
                    entry.1 = Entry::Ready(service.clone());
                    (service, Vec::new())
                }
                None => {
                    entries.push((name.to_string(), Entry::Ready(service.clone()), tick));
                    (service, Vec::new())
                }
            };
            // The bound, on loaded services only: the least recently asked for go.
            loop {
                let ready = entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.0 != name && matches!(e.1, Entry::Ready(_)));
                if ready.clone().count() < self.capacity {
                    break;
                }
                let Some(oldest) = ready.min_by_key(|(_, e)| e.2).map(|(i, _)| i) else {
                    break;
                };
                if let (_, Entry::Ready(old), _) = entries.swap_remove(oldest) {
                    unload.push(old);
                }
            }
            (service, unload)
        };
        // Wakes the waiters (the entry is `Ready` now, so the landing removes nothing).
        drop(landing);
        drop(unload);
        Ok(service)
    }

    /// Loads service `name` fresh, bypassing the cache (see [`Service::load_cold`]).
    pub fn get_cold(&self, name: &str, scratch: impl AsRef<Path>) -> Result<Service, LoadError> {
        // SAFETY: `new`'s contract: the directory holds services.
        unsafe { Service::load_cold(self.path_of(name)?, scratch) }
    }

    /// How many loads the cache has made (misses).
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for ServiceCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceCache")
            .field("dir", &self.dir)
            .field("capacity", &self.capacity)
            .field(
                "loaded",
                &self
                    .entries
                    .lock()
                    .iter()
                    .filter(|e| matches!(e.1, Entry::Ready(_)))
                    .count(),
            )
            .finish()
    }
}
