//! The system calls the signal handler may make: raw syscalls, vDSO reads and plain
//! loads, nothing that allocates, locks or touches `errno` without restoring it. The zone
//! (`src/handler/`) calls `sys` only through this module (`tools/fence.py` checks it).

// Part of the zone: the same lints as at the top of `handler/mod.rs`.
#![cfg_attr(
    not(test),
    deny(
        clippy::disallowed_types,
        clippy::disallowed_macros,
        clippy::disallowed_methods
    )
)]

/// A POSIX timer (`timer_t`), stored as an integer so it fits in an atomic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimerId(pub(crate) usize);

// Built in ordinary context: set once by `sys::init_time_base` before any handler runs;
// the handler only reads it (`OnceLock::get` is a load).
#[allow(
    clippy::disallowed_types,
    clippy::disallowed_macros,
    clippy::disallowed_methods
)]
/// A process-wide time base: `CLOCK_MONOTONIC` ns and the `Instant` read together, so a
/// kill time stored as ns (all a signal handler can read) converts back to an `Instant`.
pub(super) static BASE: std::sync::OnceLock<(u64, std::time::Instant)> = std::sync::OnceLock::new();

/// glibc's `struct dl_find_object` (2.35 and later).
#[repr(C)]
pub(super) struct DlFindObject {
    flags: u64,
    map_start: *mut libc::c_void,
    map_end: *mut libc::c_void,
    link_map: *mut libc::c_void,
    eh_frame: *mut libc::c_void,
    reserved: [u64; 7],
}

pub(super) type DlFindObjectFn =
    unsafe extern "C" fn(*mut libc::c_void, *mut DlFindObject) -> libc::c_int;

/// glibc's `_dl_find_object`, if this glibc has it (2.35 and later): looked up at run
/// time, so the crate still loads on older ones (where the handler's walk then finds
/// nothing walkable, and such kills end abandoned).
pub(super) static DL_FIND_OBJECT: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// The calling thread's CPU time in ns (`CLOCK_THREAD_CPUTIME_ID`: a real syscall,
/// about 0.5 µs on a VM).
pub(crate) fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or(0)
}

/// Thread `tid`'s CPU time in ns (its CPU-time clock, `MAKE_THREAD_CPUCLOCK(tid,
/// CPUCLOCK_SCHED)`), `None` once it has exited. Async-signal-safe.
pub(crate) fn thread_cpu_ns_of(tid: i32) -> Option<u64> {
    clock_ns(((!(tid as libc::clockid_t)) << 3) | 6)
}

/// `clock_gettime(clock)` in ns; `None` for a clock that does not exist (a thread's
/// CPU clock after it exited). Async-signal-safe.
#[inline]
pub(crate) fn clock_ns(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; an invalid clock is an error, not UB.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Whether thread `tid` of this process is runnable (state `R` in
/// `/proc/self/task/<tid>/stat`): running or waiting for a CPU, as opposed to blocked in
/// the kernel. `None` if that cannot be read (the thread exited). Async-signal-safe: the
/// path is built on the stack, and `open`, `read` and `close` are plain syscalls.
pub(crate) fn thread_runnable(tid: i32) -> Option<bool> {
    const PREFIX: &[u8] = b"/proc/self/task/";
    const SUFFIX: &[u8] = b"/stat\0";
    let mut path = [0u8; 48];
    path[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut at = PREFIX.len();
    let mut digits = [0u8; 12];
    let mut n = u32::try_from(tid).ok()?;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &digit in digits[..len].iter().rev() {
        path[at] = digit;
        at += 1;
    }
    path[at..at + SUFFIX.len()].copy_from_slice(SUFFIX);
    // SAFETY: `path` is NUL-terminated; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for `buf.len()` bytes; `fd` is open.
    let read = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    let text = buf.get(..usize::try_from(read).ok()?)?;
    // "pid (comm) S ...": the state follows the last ')' (a name may hold parentheses).
    let close = text.iter().rposition(|&b| b == b')')?;
    text.get(close + 2).map(|&state| state == b'R')
}

/// Blocks every signal on the calling thread, for good (the freeze).
pub(crate) fn block_all_signals() {
    // SAFETY: all-ones is a valid sigset (the kernel ignores SIGKILL and SIGSTOP).
    let all: libc::sigset_t = unsafe { core::mem::transmute([u64::MAX; 16]) };
    sigmask(libc::SIG_BLOCK, Some(&all));
}

/// `timer_delete` (a plain syscall for `SIGEV_THREAD_ID` timers).
pub(crate) fn delete_timer(timer: TimerId) {
    // SAFETY: `timer` is one of the calling thread's own timers, deleted once.
    unsafe { libc::timer_delete(timer.0 as libc::timer_t) };
}

/// Sleeps for `ns` (a raw `nanosleep`).
pub(crate) fn sleep_ns(ns: u64) {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is valid for the call; no remainder is asked for.
    unsafe {
        libc::syscall(
            libc::SYS_nanosleep,
            &ts,
            core::ptr::null_mut::<libc::timespec>(),
        )
    };
}

/// Blocks the calling thread forever: the end of a freeze. All its signals are
/// blocked, so nothing but `SIGKILL` of the whole process ends the wait.
pub(crate) fn block_forever() -> ! {
    let word = core::sync::atomic::AtomicU32::new(0);
    loop {
        // SAFETY: `word` lives on this (never unwound) stack; nobody wakes it.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                0u32,
                core::ptr::null::<libc::timespec>(),
            )
        };
    }
}

/// What a signal interrupted: the program counter, and whether the thread was blocked
/// in a system call (judged from the context: `syscall` just executed and failed with
/// `EINTR`, or the PC rewound onto it to restart it), and whether that is a `futex`.
///
/// # Safety
///
/// `context` is the `ucontext_t` the kernel passed to an `SA_SIGINFO` handler.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn interrupted(context: *mut libc::c_void) -> (usize, Wait) {
    // SAFETY: the caller's contract.
    let uc = unsafe { &*context.cast::<libc::ucontext_t>() };
    let pc = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize;
    let ax = uc.uc_mcontext.gregs[libc::REG_RAX as usize];
    // `pc` is the address of the instruction the thread was about to run, but the
    // byte after it may be on an unmapped page (a one-byte instruction at the end of
    // one), and text may be execute-only (protection keys): read with a syscall that
    // fails instead of faulting. Unreadable bytes are no `syscall`.
    let here = read_own(pc).unwrap_or([0, 0]);
    let before = if ax == -i64::from(libc::EINTR) {
        pc.checked_sub(2).and_then(read_own).unwrap_or([0, 0])
    } else {
        [0, 0]
    };
    const SYSCALL: [u8; 2] = [0x0f, 0x05];
    // Blocked in a system call: the kernel rewinds the PC onto the `syscall`
    // instruction (with the call's number back in rax) to restart it after the
    // handler, or leaves it just past it with `-EINTR` in rax. A thread interrupted
    // just *before* a `syscall` looks the same, so the number decides too: only the
    // calls that wait for something outside the thread (input, a peer, a child, a
    // lock word, time), which a thin libc wrapper makes holding nothing of libc's.
    // (`clone`, `madvise` and the like are made by libc with its locks held: never.)
    // The frames around it decide the rest (`handler/freeze.rs`).
    let si = uc.uc_mcontext.gregs[libc::REG_RSI as usize];
    let wait = if here == SYSCALL {
        waiting(ax, si)
    } else if before == SYSCALL && ax == -i64::from(libc::EINTR) {
        // Returning from one that was interrupted: which one is not known any more,
        // so only the tightest frame rule applies.
        Wait::Other
    } else {
        Wait::None
    };
    (pc, wait)
}

/// The stack pointer of the context a signal interrupted.
///
/// # Safety
///
/// `context` is the `ucontext_t` the kernel passed to an `SA_SIGINFO` handler.
pub(crate) unsafe fn interrupted_sp(context: *mut libc::c_void) -> usize {
    // SAFETY: the caller's contract.
    let uc = unsafe { &*context.cast::<libc::ucontext_t>() };
    #[cfg(target_arch = "x86_64")]
    {
        uc.uc_mcontext.gregs[libc::REG_RSP as usize] as usize
    }
    #[cfg(target_arch = "aarch64")]
    {
        uc.uc_mcontext.sp as usize
    }
}

/// The `.eh_frame_hdr` of the object loaded at `pc` now, from glibc's
/// `_dl_find_object` (async-signal-safe by its contract: lock-free). `None` if no
/// object is loaded there, or this glibc has no such function.
pub(crate) fn eh_frame_hdr_at(pc: usize) -> Option<usize> {
    let f = DL_FIND_OBJECT.load(std::sync::atomic::Ordering::Relaxed);
    if f == 0 {
        return None;
    }
    // SAFETY: a non-null `dlsym` result for `_dl_find_object`, whose type this is.
    let f: DlFindObjectFn = unsafe { std::mem::transmute(f) };
    // SAFETY: all-zero is a valid `dl_find_object`.
    let mut found: DlFindObject = unsafe { std::mem::zeroed() };
    // SAFETY: `found` is a valid out-pointer; the address is only looked up.
    let rc = unsafe { f(pc as *mut libc::c_void, &mut found) };
    (rc == 0 && !found.eh_frame.is_null()).then_some(found.eh_frame as usize)
}

/// Two bytes of this process's memory at `at`, or `None` where they are not both
/// readable (`process_vm_readv` on itself: an error, never a fault).
/// Async-signal-safe.
pub(crate) fn read_own(at: usize) -> Option<[u8; 2]> {
    let mut out = [0u8; 2];
    let local = libc::iovec {
        iov_base: out.as_mut_ptr().cast(),
        iov_len: 2,
    };
    let remote = libc::iovec {
        iov_base: at as *mut libc::c_void,
        iov_len: 2,
    };
    // SAFETY: `local` is a valid 2-byte buffer; the remote range is only read by the
    // kernel, which reports a bad address instead of faulting.
    let n = unsafe {
        libc::syscall(
            libc::SYS_process_vm_readv,
            libc::getpid(),
            &local as *const libc::iovec,
            1usize,
            &remote as *const libc::iovec,
            1usize,
            0usize,
        )
    };
    (n == 2).then_some(out)
}

/// What kind of waiting syscall a thread was interrupted in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Wait {
    /// Not in one.
    None,
    /// A `futex` wait: a lock or a condition; only lock-free when called straight
    /// from Rust (std's locks and parking), not from inside libc (its private locks).
    Futex,
    /// A sleep (`nanosleep`, `clock_nanosleep`, and its restart): glibc's wrapper
    /// is two frames deep.
    Sleep,
    /// Waiting for input, a peer, a child or a signal: a one-frame wrapper.
    Other,
}

/// Which kind of wait system call `nr` is (with `arg1`, its second argument, for
/// `futex`'s operation), or [`Wait::None`] for one that is not a wait.
#[cfg(target_arch = "x86_64")]
pub(crate) fn waiting(nr: i64, arg1: i64) -> Wait {
    const FUTEX_CMD_MASK: i64 = 0x7f;
    match nr {
        libc::SYS_futex => match (arg1 & FUTEX_CMD_MASK) as i32 {
            libc::FUTEX_WAIT | libc::FUTEX_WAIT_BITSET => Wait::Futex,
            _ => Wait::None,
        },
        libc::SYS_nanosleep | libc::SYS_clock_nanosleep | libc::SYS_restart_syscall => Wait::Sleep,
        libc::SYS_read
        | libc::SYS_readv
        | libc::SYS_pread64
        | libc::SYS_preadv
        | libc::SYS_preadv2
        | libc::SYS_write
        | libc::SYS_writev
        | libc::SYS_pwrite64
        | libc::SYS_recvfrom
        | libc::SYS_recvmsg
        | libc::SYS_recvmmsg
        | libc::SYS_sendto
        | libc::SYS_sendmsg
        | libc::SYS_sendmmsg
        | libc::SYS_accept
        | libc::SYS_accept4
        | libc::SYS_connect
        | libc::SYS_open
        | libc::SYS_openat
        | libc::SYS_poll
        | libc::SYS_ppoll
        | libc::SYS_select
        | libc::SYS_pselect6
        | libc::SYS_epoll_wait
        | libc::SYS_epoll_pwait
        | libc::SYS_epoll_pwait2
        | libc::SYS_wait4
        | libc::SYS_waitid
        | libc::SYS_pause
        | libc::SYS_rt_sigsuspend
        | libc::SYS_rt_sigtimedwait
        | libc::SYS_flock
        | libc::SYS_msgrcv
        | libc::SYS_msgsnd
        | libc::SYS_semop
        | libc::SYS_semtimedop
        | libc::SYS_mq_timedreceive
        | libc::SYS_mq_timedsend
        | libc::SYS_io_getevents => Wait::Other,
        _ => Wait::None,
    }
}

/// On other architectures only the program counter is read, and a thread blocked in
/// libc is never taken for freezable.
///
/// # Safety
///
/// `context` is the `ucontext_t` the kernel passed to an `SA_SIGINFO` handler.
#[cfg(target_arch = "aarch64")]
pub(crate) unsafe fn interrupted(context: *mut libc::c_void) -> (usize, Wait) {
    // SAFETY: the caller's contract.
    let uc = unsafe { &*context.cast::<libc::ucontext_t>() };
    (uc.uc_mcontext.pc as usize, Wait::None)
}

/// The fault address of a SIGSEGV or SIGBUS.
///
/// # Safety
///
/// `info` is the `siginfo_t` the kernel passed to an `SA_SIGINFO` handler of a fault.
pub(crate) unsafe fn fault_address(info: *const libc::siginfo_t) -> usize {
    // SAFETY: the caller's contract; `si_addr` is the fault member.
    unsafe { (*info).si_addr() as usize }
}

/// `gettid` (a raw syscall; the libc wrapper caches nothing either way).
pub(crate) fn gettid() -> i32 {
    // SAFETY: no arguments, no memory.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// `CLOCK_MONOTONIC` in nanoseconds (vDSO; `clock_gettime` is async-signal-safe).
#[inline]
pub(crate) fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(0)
}

/// `timer_settime`: first expiry `value_ns` from now (or at that absolute
/// `CLOCK_MONOTONIC` time with `absolute`), then every `interval_ns` (0: one-shot).
/// `value_ns == 0` disarms. Async-signal-safe by POSIX.
pub(crate) fn set_timer(timer: TimerId, value_ns: u64, interval_ns: u64, absolute: bool) {
    let ts = |ns: u64| libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    let spec = libc::itimerspec {
        it_interval: ts(interval_ns),
        it_value: ts(value_ns),
    };
    let flags = if absolute { libc::TIMER_ABSTIME } else { 0 };
    // SAFETY: `timer` is a live timer of this process: only the thread that owns it
    // arms it (from its own code or its own signal handler), and it deletes its timers
    // only after it stops using them. `spec` is valid for the call.
    unsafe { libc::timer_settime(timer.0 as libc::timer_t, flags, &spec, std::ptr::null_mut()) };
}

/// `sched_setscheduler(0, SCHED_IDLE)`: the calling thread runs only when its core has
/// nothing else to run. Lowering a thread's own priority never needs privileges.
pub(crate) fn demote_to_idle() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is valid for the call.
    unsafe { libc::syscall(libc::SYS_sched_setscheduler, 0, libc::SCHED_IDLE, &param) == 0 }
}

/// Whether the calling thread runs at `SCHED_IDLE` (a carrier, or an abandoned thread).
pub(crate) fn demoted() -> bool {
    // SAFETY: pid 0 is the calling thread; no memory is passed.
    unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0) == libc::SCHED_IDLE as libc::c_long }
}

/// `sched_yield`: lets the scheduler pick another thread now.
pub(crate) fn yield_now() {
    // SAFETY: no arguments, no memory.
    unsafe { libc::syscall(libc::SYS_sched_yield) };
}

/// `sched_setaffinity(0, cpus)`: lets the calling thread run on any of `cpus`.
pub(crate) fn widen_affinity(cpus: &libc::cpu_set_t) {
    // SAFETY: pid 0 is the calling thread; `cpus` is a valid set for the call.
    unsafe {
        libc::syscall(
            libc::SYS_sched_setaffinity,
            0,
            core::mem::size_of::<libc::cpu_set_t>(),
            cpus as *const libc::cpu_set_t,
        )
    };
}

/// The calling thread's `errno`.
pub(crate) fn errno() -> i32 {
    // SAFETY: `__errno_location` returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

/// Restores the calling thread's `errno`.
pub(crate) fn set_errno(value: i32) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value };
}

/// A copy of the kernel's `siginfo_t` prefix (64-bit layout) for the two kinds of
/// delivery the pool makes: `SI_TIMER` (the `_timer` member: timer id, overrun,
/// value) and `SI_QUEUE` (the `_rt` member: sender pid, sender uid, value). The value
/// sits at the same offset in both.
#[repr(C)]
struct QueuedInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    /// Timer id for `SI_TIMER`, sender pid for `SI_QUEUE`.
    id_or_pid: i32,
    _overrun_or_uid: i32,
    value: usize,
}

/// The token in `si_value`, for a delivery the pool may have made: a timer expiry
/// (`SI_TIMER`), or a nudge queued by this very process (`SI_QUEUE` from our pid, see
/// [`nudge`]).
///
/// # Safety
///
/// `info` is the `siginfo_t` the kernel passed to an `SA_SIGINFO` handler.
pub(crate) unsafe fn pool_token(info: *const libc::siginfo_t) -> Option<u64> {
    // SAFETY: the caller's contract; `siginfo_t` is 128 bytes, larger than
    // `QueuedInfo`, whose layout is the kernel's for these two codes.
    let info = unsafe { &*info.cast::<QueuedInfo>() };
    let ours =
        info.code == libc::SI_TIMER || (info.code == libc::SI_QUEUE && info.id_or_pid == getpid());
    ours.then_some(info.value as u64)
}

/// True for a delivery queued by `sigqueue`-like calls (`SI_QUEUE`): a nudge.
///
/// # Safety
///
/// `info` is the `siginfo_t` the kernel passed to an `SA_SIGINFO` handler.
pub(crate) unsafe fn queued(info: *const libc::siginfo_t) -> bool {
    // SAFETY: the caller's contract; see `pool_token`.
    unsafe { (*info.cast::<QueuedInfo>()).code == libc::SI_QUEUE }
}

/// True for a delivery whose `siginfo` the kernel could not queue (a signal below
/// `SIGRTMIN` past `RLIMIT_SIGPENDING`): it arrives as `SI_USER` from pid 0, uid 0.
///
/// # Safety
///
/// `info` is the `siginfo_t` the kernel passed to an `SA_SIGINFO` handler.
pub(crate) unsafe fn info_lost(info: *const libc::siginfo_t) -> bool {
    // SAFETY: the caller's contract; see `pool_token`.
    let info = unsafe { &*info.cast::<QueuedInfo>() };
    info.code == libc::SI_USER && info.id_or_pid == 0 && info._overrun_or_uid == 0
}

/// The handler installed for `signal` now (`rt_sigaction` with no new action).
pub(crate) fn installed_handler(signal: i32) -> usize {
    // SAFETY: all-zero is a valid sigaction; a null new action only queries; 8 is the
    // kernel's sigset size.
    unsafe {
        let mut old: libc::sigaction = core::mem::zeroed();
        let rc = libc::syscall(
            libc::SYS_rt_sigaction,
            signal,
            core::ptr::null::<libc::sigaction>(),
            &mut old as *mut libc::sigaction,
            8usize,
        );
        if rc == 0 {
            old.sa_sigaction
        } else {
            0
        }
    }
}

/// This process's id (a raw syscall).
pub(crate) fn getpid() -> i32 {
    // SAFETY: no arguments, no memory.
    unsafe { libc::syscall(libc::SYS_getpid) as i32 }
}

/// Queues `signal` for thread `tid` of this process with `SI_QUEUE` and `token` in
/// `si_value` (`rt_tgsigqueueinfo`). It touches nothing of the target but its pending
/// signals; if `tid` has exited, the call fails with `ESRCH` and nothing happens.
pub(crate) fn nudge(tid: i32, signal: i32, token: u64) {
    // SAFETY: all-zero is a valid siginfo; the fields the kernel reads for SI_QUEUE
    // are set through the same layout the handler reads.
    unsafe {
        let mut info: libc::siginfo_t = core::mem::zeroed();
        let raw = (&mut info as *mut libc::siginfo_t).cast::<QueuedInfo>();
        (*raw).signo = signal;
        (*raw).code = libc::SI_QUEUE;
        (*raw).id_or_pid = getpid();
        (*raw)._overrun_or_uid = libc::getuid() as i32;
        (*raw).value = token as usize;
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            getpid(),
            tid,
            signal,
            &info as *const libc::siginfo_t,
        );
    }
}

/// `rt_sigprocmask(how, set)` on the calling thread; returns the mask before the call.
fn sigmask(how: i32, set: Option<&libc::sigset_t>) -> libc::sigset_t {
    // SAFETY: all-zero is a valid sigset.
    let mut old: libc::sigset_t = unsafe { core::mem::zeroed() };
    let set = set.map_or(core::ptr::null(), |s| s as *const libc::sigset_t);
    // SAFETY: `set` is null or a valid sigset, `old` a valid out-pointer; 8 is the
    // kernel's sigset size.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            how,
            set,
            &mut old as *mut libc::sigset_t,
            8usize,
        )
    };
    old
}

/// Runs the previous action of `signal` the way the kernel would have, given that it
/// was `SIG_DFL`: nothing for signals whose default is to ignore, otherwise reset the
/// action to `SIG_DFL` and re-raise on this thread with the signal unblocked, which
/// ends the process with that signal as its status, as it would have without us.
pub(crate) fn default_action(signal: i32) {
    if matches!(
        signal,
        libc::SIGCHLD | libc::SIGURG | libc::SIGWINCH | libc::SIGCONT
    ) {
        return;
    }
    // SAFETY: raw syscalls on valid, initialised arguments.
    unsafe {
        let mut dfl: libc::sigaction = core::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(signal, &dfl, core::ptr::null_mut());
        libc::syscall(libc::SYS_tgkill, libc::getpid(), gettid(), signal);
    }
    // SAFETY: `set` was initialised above.
    let set = unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        set
    };
    sigmask(libc::SIG_UNBLOCK, Some(&set));
}

/// Calls an embedder's handler as the kernel would have: with its `sa_mask` added to
/// the blocked set (and `signal` unblocked if it asked for `SA_NODEFER`), restored after.
///
/// # Safety
///
/// `action` is the embedder's installed action for `signal`, with a handler (not
/// `SIG_DFL`/`SIG_IGN`); `info` and `context` are what the kernel passed to us.
pub(crate) unsafe fn call_handler(
    signal: i32,
    action: &libc::sigaction,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    let old = sigmask(libc::SIG_BLOCK, None);
    let mut during = old;
    // SAFETY: `during` and the embedder's `sa_mask` are valid, initialised sigsets.
    unsafe {
        // 64: the kernel's highest signal number (`SIGRTMAX`), as a constant because the
        // libc function is not on the async-signal-safe list.
        for s in 1..=64 {
            if libc::sigismember(&action.sa_mask, s) == 1 {
                libc::sigaddset(&mut during, s);
            }
        }
        if action.sa_flags & libc::SA_NODEFER != 0 {
            libc::sigdelset(&mut during, signal);
        } else {
            libc::sigaddset(&mut during, signal);
        }
    }
    sigmask(libc::SIG_SETMASK, Some(&during));
    if action.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the caller's contract: `sa_sigaction` is a three-argument handler.
        let f: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { core::mem::transmute(action.sa_sigaction) };
        f(signal, info, context);
    } else {
        // SAFETY: the caller's contract: `sa_handler` is a one-argument handler.
        let f: extern "C" fn(i32) = unsafe { core::mem::transmute(action.sa_sigaction) };
        f(signal);
    }
    sigmask(libc::SIG_SETMASK, Some(&old));
}

/// `CLOCK_MONOTONIC` ns as ns since the time base (0 before it is set). Async-signal-safe.
pub(crate) fn since_base_ns(ns: u64) -> u64 {
    ns.saturating_sub(BASE.get().map_or(0, |b| b.0))
}

/// The inverse of [`since_base_ns`].
pub(crate) fn from_base_ns(ns: u64) -> u64 {
    ns + BASE.get().map_or(0, |b| b.0)
}

/// Unblocks `signal` on the calling thread: threads inherit their creator's mask, and an
/// embedder that blocks the pool's signal on the thread that builds it must not silence
/// the pool's timers.
pub(crate) fn unblock_signal(signal: i32) {
    // SAFETY: `set` is initialised by `sigemptyset` before use; the pointers are valid.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Puts thread `tid` of this process under `SCHED_IDLE` (lowering another thread's
/// priority needs no privilege). Best effort: a thread that has exited is no error.
pub(crate) fn demote_thread(tid: i32) {
    // 0 would be the calling thread.
    if tid <= 0 {
        return;
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is valid for the call; a stale tid fails with ESRCH.
    unsafe { libc::syscall(libc::SYS_sched_setscheduler, tid, libc::SCHED_IDLE, &param) };
}

/// Lets thread `tid` of this process run on `cpus`. Best effort, as [`demote_thread`].
pub(crate) fn set_thread_affinity(tid: i32, cpus: &libc::cpu_set_t) {
    // 0 would be the calling thread.
    if tid <= 0 {
        return;
    }
    // SAFETY: `cpus` is a valid set for the call; a stale tid fails with ESRCH.
    unsafe {
        libc::syscall(
            libc::SYS_sched_setaffinity,
            tid,
            std::mem::size_of::<libc::cpu_set_t>(),
            cpus as *const libc::cpu_set_t,
        )
    };
}
