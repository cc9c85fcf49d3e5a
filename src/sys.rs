//! All foreign calls of the crate, behind safe wrappers.
//!
//! Nothing outside this module calls `libc` directly. Each wrapper states which errors it
//! can return; none of them panics.

use std::io;
use std::mem;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// The largest CPU index a `cpu_set_t` can describe.
pub(crate) const MAX_CPUS: usize = libc::CPU_SETSIZE as usize;

/// The CPUs the calling thread may run on (`sched_getaffinity`), in increasing order.
///
/// Called from the thread that builds a pool, so "the cores this process may run on" means
/// what the embedder's thread is allowed, cgroup cpusets and `taskset` included.
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: `cpu_set_t` is a plain bit array; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: the pointer and size describe `set`, which lives across the call; pid 0 is
    // the calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `CPU_ISSET` only reads the set, and every index is below `CPU_SETSIZE`.
    Ok((0..MAX_CPUS)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Restricts the calling thread to `cpus` (`sched_setaffinity`). Every index must be below
/// [`MAX_CPUS`]; the builder checks that before any thread starts.
pub(crate) fn set_current_affinity(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    for &cpu in cpus {
        if cpu >= MAX_CPUS {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: `cpu` is below `CPU_SETSIZE`, checked just above.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: the pointer and size describe `set`; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

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
