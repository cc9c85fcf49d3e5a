//! What the benches share: CPU affinity, and the cost of one bare timer expiry (the
//! environment line every preemption number is read against).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// `clock` (`CLOCK_MONOTONIC`, `CLOCK_THREAD_CPUTIME_ID`, ...) in ns.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; every clock the benches pass exists.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The cores the calling thread may run on.
pub fn allowed_cores() -> Vec<usize> {
    // SAFETY: a valid, zeroed cpu_set_t, filled by the kernel for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Restricts the calling thread to `cpus`.
pub fn set_affinity(cpus: &[usize]) {
    // SAFETY: a valid cpu_set_t with indices below CPU_SETSIZE; the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

static EXPIRIES: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_expiry(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    EXPIRIES.fetch_add(1, Ordering::Relaxed);
}

/// µs of wall time one expiry of a periodic `CLOCK_MONOTONIC` timer (period `period_us`,
/// empty handler on `signal`, a real-time signal nothing else uses) costs a thread doing
/// fixed work: `work` is timed without the timer and with it, on a scratch thread pinned to
/// `core` if given, and the extra time is divided by the expiries.
pub fn bare_expiry_cost_us(
    period_us: u64,
    signal: i32,
    core: Option<usize>,
    work: impl Fn() + Send + 'static,
) -> f64 {
    std::thread::spawn(move || {
        if let Some(core) = core {
            set_affinity(&[core]);
        }
        // SAFETY: a handler that only bumps an atomic, and a timer aimed at this thread,
        // deleted below.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = count_expiry as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
        let t = Instant::now();
        work();
        let without = t.elapsed().as_secs_f64();
        // SAFETY: a per-thread timer with a valid sigevent; deleted below.
        let timer = unsafe {
            let mut event: libc::sigevent = std::mem::zeroed();
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_signo = signal;
            event.sigev_notify_thread_id = libc::syscall(libc::SYS_gettid) as i32;
            let mut timer: libc::timer_t = std::ptr::null_mut();
            assert_eq!(
                libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer),
                0
            );
            let period = libc::timespec {
                tv_sec: 0,
                tv_nsec: (period_us * 1_000) as libc::c_long,
            };
            let spec = libc::itimerspec {
                it_interval: period,
                it_value: period,
            };
            libc::timer_settime(timer, 0, &spec, std::ptr::null_mut());
            timer
        };
        let before = EXPIRIES.load(Ordering::Relaxed);
        let t = Instant::now();
        work();
        let with = t.elapsed().as_secs_f64();
        let expiries = EXPIRIES.load(Ordering::Relaxed) - before;
        // SAFETY: the timer made above.
        unsafe { libc::timer_delete(timer) };
        (with - without).max(0.0) * 1e6 / expiries.max(1) as f64
    })
    .join()
    .expect("bare expiry thread")
}
