//! The embedder's signals stay the embedder's: deliveries that are not the pool's timers
//! reach the handler installed before the pool, and a pool on a real-time signal leaves
//! SIGALRM alone. Each test runs in a child process.

mod common;

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{builder, check_spin, child_output, in_child, join, spin_for};

static EMBEDDER_CALLS: AtomicU64 = AtomicU64::new(0);
static LAST_CODE: AtomicI32 = AtomicI32::new(0);

extern "C" fn embedder_handler(signal: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    if signal == libc::SIGALRM {
        EMBEDDER_CALLS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
        LAST_CODE.store(unsafe { (*info).si_code }, Ordering::SeqCst);
    }
}

fn install_embedder_handler() {
    // SAFETY: installing a plain SA_SIGINFO handler that only touches atomics.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = embedder_handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut()),
            0
        );
    }
}

fn current_sigalrm_handler() -> usize {
    // SAFETY: querying only.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGALRM, std::ptr::null(), &mut old);
        old.sa_sigaction
    }
}

/// Long tasks on a preemptible pool, so its own ticks and handoffs happen meanwhile.
fn preempt_some(pool: &microsched::Pool) -> u64 {
    let longs: Vec<_> = (0..4)
        .map(|_| pool.spawn(|| spin_for(Duration::from_millis(30))))
        .collect();
    for long in longs {
        let (rounds, sum) = join(long).unwrap();
        assert_eq!(sum, check_spin(rounds));
    }
    pool.stats().handoffs
}

fn wait_for_calls(n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while EMBEDDER_CALLS.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "the embedder's handler saw {} of {n} signals",
            EMBEDDER_CALLS.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn an_embedders_sigalrm_handler_still_gets_alarm_and_kill() {
    in_child(
        "an_embedders_sigalrm_handler_still_gets_alarm_and_kill",
        || {
            install_embedder_handler();
            let pool = builder(1)
                .quantum(Duration::from_millis(1))
                .build()
                .unwrap();
            // The pool took SIGALRM over and chains to the embedder.
            assert_ne!(
                current_sigalrm_handler(),
                embedder_handler as *const () as usize
            );
            assert!(preempt_some(&pool) >= 1);
            assert_eq!(
                EMBEDDER_CALLS.load(Ordering::SeqCst),
                0,
                "pool ticks leaked to the embedder"
            );
            // kill(): SI_USER.
            for i in 1..=5 {
                // SAFETY: signalling our own process with a handled signal.
                unsafe { libc::kill(libc::getpid(), libc::SIGALRM) };
                wait_for_calls(i);
            }
            assert_eq!(LAST_CODE.load(Ordering::SeqCst), libc::SI_USER);
            // alarm(): the kernel's own SIGALRM, while the pool keeps preempting.
            // SAFETY: alarm has no memory effects.
            unsafe { libc::alarm(1) };
            // Three busy tasks on the one slot: each of the first two has another waiting
            // behind it, so each is handed off at its quantum (a task alone is not).
            let busy: Vec<_> = (0..3)
                .map(|_| pool.spawn(|| spin_for(Duration::from_millis(450))))
                .collect();
            wait_for_calls(6);
            for handle in busy {
                join(handle).unwrap();
            }
            assert!(pool.stats().handoffs >= 2);
            assert_eq!(EMBEDDER_CALLS.load(Ordering::SeqCst), 6);
        },
    );
}

#[test]
fn a_pool_on_a_realtime_signal_leaves_sigalrm_untouched() {
    in_child(
        "a_pool_on_a_realtime_signal_leaves_sigalrm_untouched",
        || {
            let before = current_sigalrm_handler();
            assert_eq!(before, libc::SIG_DFL);
            let pool = builder(1)
                .quantum(Duration::from_millis(1))
                .signal(libc::SIGRTMIN() + 3)
                .build()
                .unwrap();
            assert!(preempt_some(&pool) >= 1);
            assert_eq!(current_sigalrm_handler(), before, "SIGALRM was touched");
            // Installed after the pool, the embedder's handler gets alarm() directly.
            install_embedder_handler();
            // SAFETY: as above.
            unsafe { libc::alarm(1) };
            wait_for_calls(1);
            assert!(preempt_some(&pool) >= 2);
        },
    );
}

/// A SIGALRM that nobody handled still ends the process the way the kernel would: killed
/// by SIGALRM, even though the pool's handler is installed for it.
#[test]
fn an_unhandled_sigalrm_still_kills_the_process() {
    const VAR: &str = "MICROSCHED_CHILD_TEST";
    const NAME: &str = "an_unhandled_sigalrm_still_kills_the_process";
    if std::env::var(VAR).as_deref() == Ok(NAME) {
        let pool = builder(1)
            .quantum(Duration::from_millis(1))
            .build()
            .unwrap();
        assert!(preempt_some(&pool) >= 1);
        // SAFETY: signalling our own process.
        unsafe { libc::kill(libc::getpid(), libc::SIGALRM) };
        std::thread::sleep(Duration::from_secs(5));
        println!("still alive");
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let output = child_output(NAME, VAR);
    assert_eq!(output.status.signal(), Some(libc::SIGALRM), "{output:?}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("still alive"));
}

#[test]
fn invalid_signals_are_refused() {
    for signal in [0, libc::SIGKILL, libc::SIGSEGV, libc::SIGSTOP, 65, -1] {
        let err = builder(1).signal(signal).build().unwrap_err();
        assert!(err.to_string().contains("signal("), "{err}");
    }
    // With preemption off the signal is not used, so it is not checked either.
    builder(1).preemption(false).signal(0).build().unwrap();
}

#[test]
fn a_signal_blocked_on_the_building_thread_is_refused() {
    let err = std::thread::spawn(|| {
        // SAFETY: blocking a signal on this scratch thread only.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGRTMIN() + 4);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        builder(1).signal(libc::SIGRTMIN() + 4).build().unwrap_err()
    })
    .join()
    .unwrap();
    assert!(
        matches!(err, microsched::BuildError::SignalBlocked(_)),
        "{err}"
    );
    assert!(err.to_string().contains("sigwait"), "{err}");
}

/// An embedder that installs its handler after one pool is gone, then builds another: the
/// new pool takes the signal back and chains to that handler.
#[test]
fn a_later_pool_reinstalls_over_a_handler_installed_in_between() {
    in_child(
        "a_later_pool_reinstalls_over_a_handler_installed_in_between",
        || {
            let first = builder(1)
                .quantum(Duration::from_millis(1))
                .build()
                .unwrap();
            assert!(preempt_some(&first) >= 1);
            drop(first);
            install_embedder_handler();
            let second = builder(1)
                .quantum(Duration::from_millis(1))
                .build()
                .unwrap();
            assert_ne!(
                current_sigalrm_handler(),
                embedder_handler as *const () as usize
            );
            assert!(
                preempt_some(&second) >= 1,
                "the second pool's ticks never arrived"
            );
            assert_eq!(
                EMBEDDER_CALLS.load(Ordering::SeqCst),
                0,
                "pool ticks leaked to the embedder"
            );
            // SAFETY: signalling our own process with a handled signal.
            unsafe { libc::kill(libc::getpid(), libc::SIGALRM) };
            wait_for_calls(1);
        },
    );
}
