//! All foreign calls of the crate, behind safe wrappers.
//!
//! Nothing outside this module calls `libc` directly. Each wrapper states which errors it
//! can return; none of them panics.

use std::io;
use std::mem;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Forks of this process made through `fork()` (libc's, which runs `pthread_atfork`
/// handlers), counted in the child: a pool compares it with its value at build time.
static FORKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn count_fork_in_child() {
    // Async-signal-safe: the child of a multithreaded process may only do such things.
    FORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Starts counting forks (once per process; later calls do nothing) and returns the count
/// so far. A fork made by a raw `clone` syscall, bypassing libc, is not seen.
pub(crate) fn fork_count() -> u64 {
    static WATCH: std::sync::Once = std::sync::Once::new();
    WATCH.call_once(|| {
        // SAFETY: registers a handler for the child side only; it touches one atomic. The
        // registration cannot fail except for lack of memory (ENOMEM), in which case forks
        // go uncounted: the documented behaviour for forks libc does not see.
        unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) };
    });
    FORKS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Runs `handler` in the child of every later `fork()` (libc's). The handler must be
/// async-signal-safe: the child of a multithreaded process may do nothing else. A failed
/// registration (ENOMEM) leaves forks unhandled, as for a fork libc does not see.
pub(crate) fn on_fork_child(handler: extern "C" fn()) {
    // SAFETY: registers a child-side handler only; the caller vouches that it is
    // async-signal-safe.
    unsafe { libc::pthread_atfork(None, None, Some(handler)) };
}

/// The largest CPU index a `cpu_set_t` can describe.
pub(crate) const MAX_CPUS: usize = libc::CPU_SETSIZE as usize;

/// The CPUs the calling thread may run on (`sched_getaffinity`, through nix), in
/// increasing order.
///
/// Called from the thread that builds a pool, so "the cores this process may run on" means
/// what the embedder's thread is allowed, cgroup cpusets and `taskset` included.
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
    Ok((0..nix::sched::CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect())
}

/// A CPU set holding `cpus` (indices below [`MAX_CPUS`]; others are skipped), as the
/// signal zone's raw calls take it (`async_safe::set_thread_affinity`).
pub(crate) fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    for &cpu in cpus.iter().filter(|&&c| c < MAX_CPUS) {
        // SAFETY: `cpu` is below `CPU_SETSIZE`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// Restricts the calling thread to `cpus` (`sched_setaffinity`, through nix). An index at
/// or above [`MAX_CPUS`] is `InvalidInput`; the builder checks that before any thread
/// starts.
pub(crate) fn set_current_affinity(cpus: &[usize]) -> io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for &cpu in cpus {
        set.set(cpu)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

/// `FUTEX_WAIT_PRIVATE`: sleeps while `*word == expected`, until a wake, the timeout, a
/// signal, or spuriously. Every caller re-checks the word in a loop, so all of those
/// (and `EAGAIN`, `EINTR`, `ETIMEDOUT`) mean the same thing: look again.
#[cfg_attr(loom, allow(dead_code))] // under loom, `Futex` is a mutex and a condvar
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned 32-bit atomic for the whole call (the caller holds a
    // reference); the kernel only reads it. `ts_ptr` is null or points at `ts`, which
    // outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
        );
    }
}

/// `FUTEX_WAKE_PRIVATE`: wakes up to `n` threads waiting on `word`.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: `word` is a live atomic; FUTEX_WAKE never dereferences it, it only uses the
    // address as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        );
    }
}

/// The kernel's timer interrupt period (1/HZ): the resolution of the coarse clocks, which
/// advance once per tick. Thread CPU-time timers fire only on this tick.
pub(crate) fn kernel_tick() -> Duration {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `res` is a valid out-pointer for the duration of the call.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) };
    if rc != 0 || (res.tv_sec == 0 && res.tv_nsec == 0) {
        // HZ=250, the common distribution setting (and these machines').
        return Duration::from_millis(4);
    }
    Duration::new(res.tv_sec as u64, res.tv_nsec as u32)
}

/// The signals a pool may use for its timers: `SIGALRM`, `SIGVTALRM`, `SIGPROF`,
/// `SIGUSR1`, `SIGUSR2`, and the real-time signals libc leaves to applications.
pub(crate) fn usable_timer_signal(signal: i32) -> bool {
    matches!(
        signal,
        libc::SIGALRM | libc::SIGVTALRM | libc::SIGPROF | libc::SIGUSR1 | libc::SIGUSR2
    ) || (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal)
}

/// The action installed for `signal` (`sigaction` with no new action). Raw libc here
/// and in [`install_action`] and [`signal_blocked`]: the pool's signal may be a real-time
/// one (`Builder::signal`), which nix's `Signal` cannot name.
pub(crate) fn current_action(signal: i32) -> io::Result<libc::sigaction> {
    // SAFETY: all-zero is a valid `sigaction` (SIG_DFL, empty mask, no flags).
    let mut old: libc::sigaction = unsafe { mem::zeroed() };
    // SAFETY: a null new action only queries; `old` is a valid out-pointer.
    let rc = unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) };
    if rc == 0 {
        Ok(old)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Installs `handler` for `signal` with `SA_SIGINFO | SA_ONSTACK | SA_RESTART` and an empty
/// mask; returns the action it replaced.
pub(crate) fn install_action(
    signal: i32,
    handler: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void),
) -> io::Result<libc::sigaction> {
    // SAFETY: all-zero is a valid `sigaction`; the fields that matter are set below.
    let mut new: libc::sigaction = unsafe { mem::zeroed() };
    new.sa_sigaction = handler as usize;
    new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
    // SAFETY: `sa_mask` is a valid sigset to initialise.
    unsafe { libc::sigemptyset(&mut new.sa_mask) };
    // SAFETY: as for `current_action`.
    let mut old: libc::sigaction = unsafe { mem::zeroed() };
    // SAFETY: both pointers are valid for the call; `handler` is a valid SA_SIGINFO handler
    // for the life of the process (a plain function).
    let rc = unsafe { libc::sigaction(signal, &new, &mut old) };
    if rc == 0 {
        Ok(old)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// True if `signal` is blocked on the calling thread.
pub(crate) fn signal_blocked(signal: i32) -> bool {
    // SAFETY: a null new set only queries; `old` is a valid out-pointer.
    unsafe {
        let mut old: libc::sigset_t = mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut old);
        libc::sigismember(&old, signal) == 1
    }
}

/// What `/proc/self/task/<tid>/status` says of a thread of this process.
pub(crate) struct ThreadStatus {
    name: String,
    /// The `State:` letter (`R`, `S`, `D`, …).
    state: u8,
    blocked: u64,
    /// `Cpus_allowed`, as 32-bit words, least significant first.
    cpus: Vec<u32>,
}

impl ThreadStatus {
    /// True if the thread is asleep in the kernel (`S` or `D`): blocked in a system call.
    pub(crate) fn sleeping(&self) -> bool {
        matches!(self.state, b'S' | b'D')
    }

    /// True if `signal` is blocked.
    pub(crate) fn blocks(&self, signal: i32) -> bool {
        signal > 0 && signal <= 64 && self.blocked & (1 << (signal - 1)) != 0
    }

    /// True if the thread may run on exactly `cpus`.
    pub(crate) fn allows_exactly(&self, cpus: &[usize]) -> bool {
        let allowed = |cpu: usize| {
            self.cpus
                .get(cpu / 32)
                .is_some_and(|word| word & (1 << (cpu % 32)) != 0)
        };
        let count: u32 = self.cpus.iter().map(|w| w.count_ones()).sum();
        count as usize == cpus.len() && cpus.iter().all(|&cpu| allowed(cpu))
    }

    /// True if the thread's name is `name` (as the kernel keeps it: 15 bytes at most).
    pub(crate) fn named(&self, name: &str) -> bool {
        let kept = &name.as_bytes()[..name.len().min(15)];
        self.name.as_bytes() == kept
    }
}

/// Reads `/proc/self/task/<tid>/status`; `None` if the thread has exited.
pub(crate) fn thread_status(tid: i32) -> Option<ThreadStatus> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    let field = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key))
            .map(str::trim)
    };
    let name = field("Name:")?.to_string();
    let state = field("State:")?.bytes().next()?;
    let blocked = u64::from_str_radix(field("SigBlk:")?, 16).ok()?;
    // "ffffffff,ffffffff": most significant word first.
    let cpus = field("Cpus_allowed:")?
        .rsplit(',')
        .map(|word| u32::from_str_radix(word, 16).ok())
        .collect::<Option<Vec<u32>>>()?;
    Some(ThreadStatus {
        name,
        state,
        blocked,
        cpus,
    })
}

/// Thread `tid`'s scheduling policy (`SCHED_*`), `None` if it has exited.
pub(crate) fn thread_policy(tid: i32) -> Option<i32> {
    // SAFETY: no memory is passed.
    let policy = unsafe { libc::syscall(libc::SYS_sched_getscheduler, tid) };
    (policy >= 0).then_some(policy as i32)
}

/// Puts thread `tid` back under `SCHED_OTHER`. Best effort: leaving `SCHED_IDLE` or a
/// real-time policy may need `CAP_SYS_NICE`.
pub(crate) fn set_thread_normal_policy(tid: i32) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is valid for the call; a stale tid fails with ESRCH.
    unsafe { libc::syscall(libc::SYS_sched_setscheduler, tid, libc::SCHED_OTHER, &param) };
}

/// Names thread `tid` (`/proc/self/task/<tid>/comm`; the kernel keeps 15 bytes). Best
/// effort.
pub(crate) fn set_thread_name(tid: i32, name: &str) {
    let _ = std::fs::write(format!("/proc/self/task/{tid}/comm"), name.as_bytes());
}

/// The calling thread's kernel id.
pub(crate) fn gettid() -> i32 {
    async_safe::gettid()
}

pub(crate) use async_safe::TimerId;

/// `timer_create` for a timer that signals the calling thread only (`SIGEV_THREAD_ID`) with
/// `signal`, passing `token` in `si_value`.
pub(crate) fn create_thread_timer(
    clock: libc::clockid_t,
    signal: i32,
    token: u64,
) -> io::Result<TimerId> {
    // SAFETY: all-zero is a valid `sigevent`; the fields used are set below.
    let mut event: libc::sigevent = unsafe { mem::zeroed() };
    event.sigev_notify = libc::SIGEV_THREAD_ID;
    event.sigev_signo = signal;
    event.sigev_value = libc::sigval {
        sival_ptr: token as usize as *mut libc::c_void,
    };
    event.sigev_notify_thread_id = gettid();
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: `event` and `timer` are valid for the call.
    let rc = unsafe { libc::timer_create(clock, &mut event, &mut timer) };
    if rc == 0 {
        Ok(TimerId(timer as usize))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `timer_delete`. Pending expiries of the timer are discarded by the kernel.
pub(crate) fn delete_timer(timer: TimerId) {
    // SAFETY: `timer` came from `create_thread_timer` and is deleted once (its owner's
    // record forgets it first).
    unsafe { libc::timer_delete(timer.0 as libc::timer_t) };
}

/// An alternate signal stack for the calling thread, so the handler (and a chained
/// embedder handler) never runs on a task's stack, whose headroom is unknown.
pub(crate) struct AltStack {
    base: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; which thread uses it as its
// alternate stack is decided by `install`/`uninstall`, called by the owning thread.
unsafe impl Send for AltStack {}
// SAFETY: as above; `&AltStack` exposes no access to the memory.
unsafe impl Sync for AltStack {}

impl AltStack {
    /// Maps `size` bytes plus a guard page below them.
    pub(crate) fn new(size: usize) -> io::Result<AltStack> {
        let page = 4096;
        let len = size + page;
        // SAFETY: an anonymous private mapping with no address hint; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the first page of the mapping just made; a guard against overflow.
        unsafe { libc::mprotect(base, page, libc::PROT_NONE) };
        Ok(AltStack { base, len })
    }

    /// Makes this the calling thread's alternate signal stack (raw libc: nix 0.30 does
    /// not wrap `sigaltstack`).
    pub(crate) fn install(&self) -> io::Result<()> {
        let stack = libc::stack_t {
            // SAFETY: still inside the mapping: above the guard page.
            ss_sp: unsafe { self.base.cast::<u8>().add(4096) }.cast(),
            ss_flags: 0,
            ss_size: self.len - 4096,
        };
        // SAFETY: `stack` describes memory that stays mapped while this thread may use it
        // (the owner calls `uninstall` before it lets go of the stack).
        let rc = unsafe { libc::sigaltstack(&stack, std::ptr::null_mut()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Turns the calling thread's alternate signal stack off.
    pub(crate) fn uninstall() {
        let stack = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: disabling needs no memory.
        unsafe { libc::sigaltstack(&stack, std::ptr::null_mut()) };
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer any thread's alternate stack.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Puts the calling thread back under `SCHED_OTHER` (nice unchanged). Fails with `EPERM`
/// when it was demoted and the process lacks `CAP_SYS_NICE`: unprivileged threads cannot
/// undo `SCHED_IDLE`.
pub(crate) fn restore_normal_policy() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setscheduler, 0, libc::SCHED_OTHER, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

use async_safe::BASE;

/// Sets the time base (once, outside any handler: the first pool does it).
pub(crate) fn init_time_base() {
    BASE.get_or_init(|| (async_safe::monotonic_ns(), std::time::Instant::now()));
}

/// The `Instant` of a `CLOCK_MONOTONIC` time (the clock `Instant` uses on Linux).
pub(crate) fn instant_from_monotonic_ns(ns: u64) -> std::time::Instant {
    init_time_base();
    let (base_ns, base) = BASE.get().copied().expect("set just above");
    if ns >= base_ns {
        base + std::time::Duration::from_nanos(ns - base_ns)
    } else {
        base.checked_sub(std::time::Duration::from_nanos(base_ns - ns))
            .unwrap_or(base)
    }
}

/// The CPU time thread `tid` of this process has used, in ns (its per-thread CPU clock,
/// `MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`); `None` if the thread is gone.
pub(crate) fn thread_cpu_ns_of(tid: i32) -> Option<u64> {
    async_safe::thread_cpu_ns_of(tid)
}

/// `pthread_self`, as a number.
pub(crate) fn pthread_self() -> usize {
    // SAFETY: no arguments.
    unsafe { libc::pthread_self() as usize }
}

/// The calling thread's stack: (lowest usable address, size, guard size), from
/// `pthread_getattr_np`.
pub(crate) fn current_stack() -> io::Result<(usize, usize, usize)> {
    // SAFETY: `attr` is initialised by `pthread_getattr_np` before it is read and destroyed
    // after; the out-pointers are valid.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        let rc = libc::pthread_getattr_np(libc::pthread_self(), &mut attr);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size = 0usize;
        let mut guard = 0usize;
        libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_getguardsize(&attr, &mut guard);
        libc::pthread_attr_destroy(&mut attr);
        Ok((addr as usize, size, guard))
    }
}

/// One loaded object's segments, as `dl_iterate_phdr` reports them.
pub(crate) struct LoadedObject {
    pub(crate) name: String,
    /// The load bias: add it to the object's symbol values.
    pub(crate) base: usize,
    /// Its executable segments, `[start, end)`.
    pub(crate) text: Vec<(usize, usize)>,
    /// Every loaded segment, `[start, end)`.
    pub(crate) segments: Vec<(usize, usize)>,
    /// Its `.eh_frame_hdr` (`PT_GNU_EH_FRAME`), `[start, end)`, if it has one, and a copy
    /// of its bytes, taken while the loader's lock kept the object mapped (another thread
    /// may unload it the moment `dl_iterate_phdr` returns).
    pub(crate) eh_frame_hdr: Option<(usize, usize)>,
    pub(crate) eh_frame_hdr_bytes: Vec<u8>,
}

/// Every loaded object (the executable has an empty name), and the loader's
/// (adds, subs) counters, which change when `dlopen`/`dlclose` do.
pub(crate) fn loaded_objects() -> (Vec<LoadedObject>, (u64, u64)) {
    struct Out {
        objects: Vec<LoadedObject>,
        counts: (u64, u64),
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `Out` passed below; `info` is valid during the callback,
        // with `dlpi_phnum` program headers at `dlpi_phdr`.
        unsafe {
            let out = &mut *data.cast::<Out>();
            let info = &*info;
            out.counts = (info.dlpi_adds, info.dlpi_subs);
            let name = if info.dlpi_name.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(info.dlpi_name)
                    .to_string_lossy()
                    .into_owned()
            };
            let headers = std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize);
            // Checked arithmetic: the headers are the object's own, and may be anything.
            let range = |h: &libc::Elf64_Phdr| {
                let start = (info.dlpi_addr as usize).checked_add(h.p_vaddr as usize)?;
                Some((start, start.checked_add(h.p_memsz as usize)?))
            };
            let text = headers
                .iter()
                .filter(|h| h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_X != 0)
                .filter_map(range)
                .collect();
            let segments = headers
                .iter()
                .filter(|h| h.p_type == libc::PT_LOAD)
                .filter_map(range)
                .collect();
            let eh_frame_hdr = headers
                .iter()
                .find(|h| h.p_type == libc::PT_GNU_EH_FRAME)
                .and_then(range);
            // Mapped while the callback runs: the header lies in a loaded segment.
            let eh_frame_hdr_bytes = match eh_frame_hdr {
                Some((lo, hi)) if hi > lo && hi - lo <= 1 << 20 => {
                    std::slice::from_raw_parts(lo as *const u8, hi - lo).to_vec()
                }
                _ => Vec::new(),
            };
            out.objects.push(LoadedObject {
                name,
                base: info.dlpi_addr as usize,
                text,
                segments,
                eh_frame_hdr,
                eh_frame_hdr_bytes,
            });
        }
        0
    }
    let mut out = Out {
        objects: Vec::new(),
        counts: (0, 0),
    };
    // SAFETY: `each` matches the callback type and only touches `out`, which outlives the
    // call.
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut out as *mut Out).cast()) };
    (out.objects, out.counts)
}

/// Looks `_dl_find_object` up (normal context; once is enough, repeats are harmless).
pub(crate) fn init_dl_find_object() {
    // SAFETY: a NUL-terminated name; `dlsym` with RTLD_DEFAULT only reads the loader's
    // tables.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_dl_find_object".as_ptr()) };
    async_safe::DL_FIND_OBJECT.store(f as usize, std::sync::atomic::Ordering::Relaxed);
}

/// A shared object opened with `dlopen(RTLD_NOW | RTLD_LOCAL)`, closed on drop.
pub(crate) struct Library(*mut libc::c_void);

impl Library {
    /// Opens the object at `path`, resolving every symbol now; the loader's message on
    /// failure.
    pub(crate) fn open(path: &std::path::Path) -> Result<Library, String> {
        use std::os::unix::ffi::OsStrExt;
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| "the path contains a NUL byte".to_string())?;
        // SAFETY: `c_path` is a valid C string; the flags are valid.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(dl_error());
        }
        Ok(Library(handle))
    }

    /// The address of `name`, if the object defines it.
    pub(crate) fn symbol(&self, name: &str) -> Option<*mut libc::c_void> {
        let c_name = std::ffi::CString::new(name).ok()?;
        // SAFETY: `self.0` is an open handle and `c_name` a valid C string.
        let address = unsafe { libc::dlsym(self.0, c_name.as_ptr()) };
        (!address.is_null()).then_some(address)
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: an open handle, closed once. (glibc keeps an object whose thread-local
        // destructors are registered, as a Rust cdylib's may be, loaded anyway.)
        unsafe { libc::dlclose(self.0) };
    }
}

/// The loader's last error message on this thread.
fn dl_error() -> String {
    // SAFETY: `dlerror` returns null or a valid C string owned by the loader.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        return "unknown dlopen error".into();
    }
    // SAFETY: non-null, NUL-terminated, valid until the next dl* call on this thread.
    unsafe { std::ffi::CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned()
}

/// Writes `parts` to fd 2 with `write(2)`, bypassing std's stderr lock (which a frozen
/// task may hold for good). Best effort: errors and short writes are ignored.
pub(crate) fn write_stderr_raw(parts: &[&str]) {
    for part in parts {
        // SAFETY: a valid buffer of `part.len()` bytes, for the duration of the call.
        unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
    }
}

/// libgcc's unwinder (linked by std on this target).
pub(crate) mod unwind {
    pub(crate) type Context = libc::c_void;
    pub(crate) type Trace = extern "C" fn(ctx: *mut Context, arg: *mut libc::c_void) -> i32;
    /// Keep walking.
    pub(crate) const NO_REASON: i32 = 0;
    /// Stop walking.
    pub(crate) const NORMAL_STOP: i32 = 4;

    #[link(name = "gcc_s")]
    extern "C" {
        pub(crate) fn _Unwind_Backtrace(trace: Trace, arg: *mut libc::c_void) -> i32;
        pub(crate) fn _Unwind_GetIP(ctx: *mut Context) -> usize;
        pub(crate) fn _Unwind_GetCFA(ctx: *mut Context) -> usize;
        pub(crate) fn _Unwind_GetRegionStart(ctx: *mut Context) -> usize;
    }
}

/// Installs `handler` for a fault signal (SIGSEGV, SIGBUS) with `SA_SIGINFO | SA_ONSTACK`
/// (no `SA_RESTART`: a fault interrupts no syscall), through nix; returns the action it
/// replaced, as the signal zone's chaining reads it.
pub(crate) fn install_fault_action(
    signal: i32,
    handler: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void),
) -> io::Result<libc::sigaction> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal};
    let signal = Signal::try_from(signal)?;
    // Every signal blocked while it runs: the pool's timer handler must not run inside it
    // (between taking the slot off and freezing, it would hand the slot off or freeze a
    // second time).
    let action = SigAction::new(
        SigHandler::SigAction(handler),
        SaFlags::SA_SIGINFO | SaFlags::SA_ONSTACK,
        SigSet::all(),
    );
    // SAFETY: `handler` is a valid SA_SIGINFO handler for the life of the process (a
    // plain function), async-signal-safe (the zone's fence).
    let old = unsafe { nix::sys::signal::sigaction(signal, &action) }?;
    Ok(old.into())
}

pub(crate) mod async_safe;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    /// The handler's look at the interrupted PC never faults: not at the last byte of a
    /// page followed by an unmapped one (a one-byte instruction there is legal), not on
    /// unreadable memory.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn reading_the_interrupted_pc_at_the_end_of_a_mapping_does_not_fault() {
        // SAFETY: a fresh anonymous mapping of two pages, the second made inaccessible,
        // unmapped at the end; a zeroed ucontext with only RIP and RAX set.
        unsafe {
            let page = 4096;
            let map = libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            let base = map as usize;
            *((base + page - 1) as *mut u8) = 0x0f;
            assert_eq!(
                libc::mprotect((base + page) as *mut _, page, libc::PROT_NONE),
                0
            );
            assert_eq!(async_safe::read_own(base + page - 1), None);
            assert_eq!(async_safe::read_own(base + page - 2), Some([0, 0x0f]));
            let mut uc: libc::ucontext_t = std::mem::zeroed();
            let ucp: *mut libc::ucontext_t = &mut uc;
            (*ucp).uc_mcontext.gregs[libc::REG_RIP as usize] = (base + page - 1) as i64;
            (*ucp).uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::EINTR);
            let (pc, wait) = async_safe::interrupted(ucp.cast());
            assert_eq!(pc, base + page - 1);
            assert_eq!(wait, async_safe::Wait::None);
            // Unmapped altogether.
            (*ucp).uc_mcontext.gregs[libc::REG_RIP as usize] = (base + page + 8) as i64;
            assert_eq!(
                async_safe::interrupted(ucp.cast()).1,
                async_safe::Wait::None
            );
            libc::munmap(map, 2 * page);
        }
    }

    #[test]
    fn the_affinity_mask_is_readable_and_can_be_narrowed() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        assert!(
            allowed.windows(2).all(|w| w[0] < w[1]),
            "sorted: {allowed:?}"
        );
        // On a scratch thread, so the test thread's own mask is left alone.
        let first = allowed[0];
        let narrowed = std::thread::spawn(move || {
            set_current_affinity(&[first]).unwrap();
            allowed_cpus().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(narrowed, vec![first]);
    }

    #[test]
    fn an_impossible_cpu_is_an_error_not_a_panic() {
        let err = std::thread::spawn(|| set_current_affinity(&[MAX_CPUS]))
            .join()
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn futex_wait_returns_when_the_word_differs_or_on_timeout_or_wake() {
        let word = Arc::new(AtomicU32::new(1));
        // Mismatch: returns at once.
        futex_wait(&word, 0, None);
        // Timeout: returns.
        futex_wait(&word, 1, Some(Duration::from_millis(1)));
        // Wake: a sleeper comes back once the word changes and it is woken.
        let sleeper = {
            let word = word.clone();
            std::thread::spawn(move || {
                while word.load(Ordering::Acquire) == 1 {
                    futex_wait(&word, 1, None);
                }
            })
        };
        std::thread::sleep(Duration::from_millis(5));
        word.store(2, Ordering::Release);
        futex_wake(&word, 1);
        sleeper.join().unwrap();
    }
}
