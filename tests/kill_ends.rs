//! Every kill ends: whatever a budgeted closure does (block in a syscall, hold one of
//! std's process-wide locks, block the pool's signal, hold a `FreezeGuard`, recurse deep,
//! swallow its cancel, ...), its join resolves in bounded time with
//! `JoinError::Killed(k)`, `k.how()` being `Cancelled`, `Frozen` or `Abandoned`, and the
//! process stays usable afterwards: printing, panicking and catching, spawning and
//! joining, reading the environment, and shutting the pool down all still work.
//!
//! Every test runs in a child process (`common::in_child`). The child leaves threads
//! frozen or abandoned (some holding stdout's lock forever), so it does not return to the
//! test harness, which writes its report to stdout: it exits with `_exit` as soon as its
//! body has passed or failed. Hangs are turned into failures with a "hang: <case>"
//! message: joins have a deadline, and watchdog threads cover everything else the main
//! thread does. The tests assert outcomes, never timings.

mod common;

use std::fmt;
use std::hint::black_box;
use std::io::Read;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::builder;
use common::killing::*;
use microsched::{checkpoint, Budget, FreezeGuard, JoinError, KillHow};

// --- 1. Blocked I/O under a wall budget: frozen in the waiting syscall. ---

#[test]
fn blocked_read_on_a_unix_socket_is_frozen() {
    child("blocked_read_on_a_unix_socket_is_frozen", || {
        let pool = pool(1);
        let (mut reader, writer) = UnixStream::pair().unwrap();
        let h = pool.spawn_with(wall_budget(), move || {
            let mut buf = [0u8; 16];
            reader.read(&mut buf).map_err(|e| e.kind())
        });
        expect_how(
            join_or_hang(h, "read on a UnixStream"),
            KillHow::Frozen,
            "read on a UnixStream",
        );
        process_still_usable(&pool, StdoutState::Usable);
        drop(writer);
    });
}

#[test]
fn blocked_tcp_accept_is_frozen() {
    child("blocked_tcp_accept_is_frozen", || {
        let pool = pool(1);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let h = pool.spawn_with(wall_budget(), move || {
            listener.accept().map(|(_, a)| a).map_err(|e| e.kind())
        });
        expect_how(
            join_or_hang(h, "TcpListener::accept"),
            KillHow::Frozen,
            "TcpListener::accept",
        );
        process_still_usable(&pool, StdoutState::Usable);
    });
}

#[test]
fn blocked_udp_recv_from_is_frozen() {
    child("blocked_udp_recv_from_is_frozen", || {
        let pool = pool(1);
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let h = pool.spawn_with(wall_budget(), move || {
            let mut buf = [0u8; 64];
            socket.recv_from(&mut buf).map_err(|e| e.kind())
        });
        expect_how(
            join_or_hang(h, "UdpSocket::recv_from"),
            KillHow::Frozen,
            "UdpSocket::recv_from",
        );
        process_still_usable(&pool, StdoutState::Usable);
    });
}

#[test]
fn blocked_tcp_read_is_frozen() {
    child("blocked_tcp_read_is_frozen", || {
        let pool = pool(1);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // The peer: accepted, kept open, never written to.
        let (server, _) = listener.accept().unwrap();
        let h = pool.spawn_with(wall_budget(), move || {
            let mut buf = [0u8; 16];
            client.read(&mut buf).map_err(|e| e.kind())
        });
        expect_how(
            join_or_hang(h, "read on a TcpStream"),
            KillHow::Frozen,
            "read on a TcpStream",
        );
        process_still_usable(&pool, StdoutState::Usable);
        drop(server);
    });
}

/// A loopback listener with a backlog of 0 that never accepts: once its accept queue is
/// full, the kernel drops further SYNs and a blocking connect waits (for minutes).
fn full_listener() -> (TcpListener, std::net::SocketAddr, Vec<TcpStream>, bool) {
    use std::os::fd::FromRawFd;
    // SAFETY: a fresh socket; bind reads a valid sockaddr_in of the size given, listen
    // and getsockname act on the socket we own; FromRawFd takes ownership of it.
    let listener = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket");
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len),
            0
        );
        assert_eq!(libc::listen(fd, 0), 0);
        TcpListener::from_raw_fd(fd)
    };
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    let mut full = false;
    for _ in 0..16 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(stream) => queued.push(stream),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    (listener, addr, queued, full)
}

/// A connect that blocks (the listener's accept queue is full) is frozen; if the queue
/// could not be filled here, the join must still resolve.
#[test]
fn a_blocked_tcp_connect_is_frozen() {
    child("a_blocked_tcp_connect_is_frozen", || {
        let pool = pool(1);
        let (listener, addr, queued, full) = full_listener();
        eprintln!("accept queue full: {full} after {} connects", queued.len());
        let h = pool.spawn_with(wall_budget(), move || {
            TcpStream::connect(addr).map(|_| ()).map_err(|e| e.kind())
        });
        let result = join_or_hang(h, "a blocked TcpStream::connect");
        if full {
            expect_how(result, KillHow::Frozen, "a blocked TcpStream::connect");
        } else {
            eprintln!("the connect did not block: {result:?}");
        }
        process_still_usable(&pool, StdoutState::Usable);
        drop((listener, queued));
    });
}

// --- 2. stdin: std's lock is held around the blocked read. ---

#[test]
fn blocked_stdin_read_line_is_abandoned() {
    child("blocked_stdin_read_line_is_abandoned", || {
        // fd 0 becomes a pipe nobody writes to; its write end stays open for good.
        let mut fds = [0i32; 2];
        // SAFETY: `pipe` writes two new descriptors into `fds`; `dup2` then makes fd 0 a
        // copy of the read end. Nothing in this child has read stdin yet.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            assert_eq!(libc::dup2(fds[0], 0), 0);
        }
        let pool = pool(1);
        let h = pool.spawn_with(wall_budget(), || {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(|e| e.kind())
        });
        expect_how(
            join_or_hang(h, "stdin().read_line"),
            KillHow::Abandoned,
            "stdin().read_line",
        );
        let stats = pool.stats();
        assert_eq!(stats.abandoned, 1, "{stats:?}");
        process_still_usable(&pool, StdoutState::Usable);
        black_box(fds[1]);
    });
}

// --- 3. A deep runaway. ---

static BOTTOM: AtomicBool = AtomicBool::new(false);

/// Recurses `n` frames deep (each frame kept: its array is used after the call), then
/// spins forever.
#[inline(never)]
fn deep(n: u32) -> u64 {
    if black_box(n) == 0 {
        BOTTOM.store(true, Ordering::SeqCst);
        spin_forever();
    }
    let frame = black_box([u64::from(n); 8]);
    deep(black_box(n - 1)).wrapping_add(black_box(frame)[3])
}

#[test]
fn a_runaway_2000_frames_deep_is_frozen() {
    child("a_runaway_2000_frames_deep_is_frozen", || {
        let pool = builder(1)
            .max_freeze_deferral(Duration::from_millis(200))
            .stack_size(64 << 20)
            .build()
            .unwrap();
        let h = pool.spawn_with(cpu_budget(), || deep(2000));
        expect_how(
            join_or_hang(h, "a runaway 2,000 frames deep"),
            KillHow::Frozen,
            "a runaway 2,000 frames deep",
        );
        assert!(
            BOTTOM.load(Ordering::SeqCst),
            "the recursion reached its bottom"
        );
        process_still_usable(&pool, StdoutState::Usable);
    });
}

// --- 4. A runaway inside println!: it holds stdout's lock forever. ---

struct Forever;

impl fmt::Display for Forever {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        spin_forever()
    }
}

#[test]
fn a_runaway_inside_println_is_abandoned() {
    child("a_runaway_inside_println_is_abandoned", || {
        let pool = pool(1);
        let h = pool.spawn_with(cpu_budget(), || println!("{}", Forever));
        expect_how(
            join_or_hang(h, "a runaway inside println!"),
            KillHow::Abandoned,
            "a runaway inside println!",
        );
        eprintln!("the main thread can still eprintln");
        let stats = pool.stats();
        assert_eq!(stats.abandoned, 1, "{stats:?}");
        process_still_usable(&pool, StdoutState::HeldForever);
    });
}

// --- 5. A task waiting to acquire stdout held by another task for good. ---

#[test]
fn a_task_waiting_for_stdout_held_by_another_task_is_frozen() {
    child(
        "a_task_waiting_for_stdout_held_by_another_task_is_frozen",
        || {
            let pool = pool(2);
            // A's own frame holds the lock for good: never frozen holding it (the gate
            // reads the lock's owner), so abandoned; stdout stays locked while it runs.
            let a = pool.spawn_with(cpu_budget(), || {
                let _guard = std::io::stdout().lock();
                spin_forever()
            });
            expect_how(
                join_or_hang(a, "a runaway holding stdout().lock() in its own frame"),
                KillHow::Abandoned,
                "a runaway holding stdout().lock() in its own frame",
            );
            still_usable(&pool, StdoutState::HeldForever);
            // B waits to acquire the lock: it holds nothing, so it is freezable.
            let b = pool.spawn_with(wall_budget(), || println!("x"));
            expect_how(
                join_or_hang(b, "println! waiting for stdout's lock"),
                KillHow::Frozen,
                "println! waiting for stdout's lock",
            );
            process_still_usable(&pool, StdoutState::HeldForever);
        },
    );
}

// --- 6. A FreezeGuard held for good. ---

#[test]
fn a_runaway_holding_a_freeze_guard_is_abandoned() {
    child("a_runaway_holding_a_freeze_guard_is_abandoned", || {
        let pool = pool(1);
        let h = pool.spawn_with(cpu_budget(), || {
            let _guard = FreezeGuard::new();
            spin_forever()
        });
        expect_how(
            join_or_hang(h, "a runaway holding a FreezeGuard"),
            KillHow::Abandoned,
            "a runaway holding a FreezeGuard",
        );
        let stats = pool.stats();
        assert_eq!(stats.abandoned, 1, "{stats:?}");
        process_still_usable(&pool, StdoutState::Usable);
    });
}

// --- 7. A task that blocks the pool's signal. ---

/// Blocks (`block`) or queries the calling thread's mask for `signal`; returns whether
/// it is blocked now.
fn signal_blocked_here(signal: i32, block: bool) -> bool {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset; pthread_sigmask only
    // reads `set` and writes `old`, both live locals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old), 0);
        if !block {
            assert_eq!(
                libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()),
                0
            );
            return libc::sigismember(&old, signal) == 1;
        }
        true
    }
}

#[test]
fn a_budgeted_runaway_blocking_the_pool_signal_is_abandoned_and_its_slot_handed_off() {
    child(
        "a_budgeted_runaway_blocking_the_pool_signal_is_abandoned_and_its_slot_handed_off",
        || {
            let pool = pool(1);
            let started = Arc::new(AtomicBool::new(false));
            let s = started.clone();
            let runaway = pool.spawn_with(cpu_budget(), move || {
                signal_blocked_here(libc::SIGALRM, true);
                s.store(true, Ordering::SeqCst);
                spin_forever()
            });
            wait_for(&started, "the signal-blocking runaway to start");
            // Queued behind it on the one slot: they run only if the slot is handed off.
            good_tasks_still_run(&pool, 20);
            expect_how(
                join_or_hang(runaway, "a runaway blocking SIGALRM"),
                KillHow::Abandoned,
                "a runaway blocking SIGALRM",
            );
            let stats = pool.stats();
            assert!(stats.signal_blocked >= 1, "{stats:?}");
            assert_eq!(stats.abandoned, 1, "{stats:?}");
            process_still_usable(&pool, StdoutState::Usable);
        },
    );
}

#[test]
fn an_unbudgeted_task_blocking_the_pool_signal_does_not_hold_its_slot() {
    child(
        "an_unbudgeted_task_blocking_the_pool_signal_does_not_hold_its_slot",
        || {
            let pool = pool(1);
            let started = Arc::new(AtomicBool::new(false));
            let stop = Arc::new(AtomicBool::new(false));
            let (s, st) = (started.clone(), stop.clone());
            let looper = pool.spawn(move || {
                signal_blocked_here(libc::SIGALRM, true);
                s.store(true, Ordering::SeqCst);
                let mut n = 0u64;
                while !st.load(Ordering::Relaxed) {
                    n = black_box(n.wrapping_add(1));
                }
                n
            });
            wait_for(&started, "the signal-blocking task to start");
            good_tasks_still_run(&pool, 20);
            let stats = pool.stats();
            assert!(stats.signal_blocked >= 1, "{stats:?}");
            // Not killed: it returns once told to.
            stop.store(true, Ordering::SeqCst);
            assert!(
                join_or_hang(looper, "the signal-blocking task after its stop").is_ok(),
                "the signal-blocking task returns"
            );
            process_still_usable(&pool, StdoutState::Usable);
        },
    );
}

// --- 8. Checkpointing tasks are cancelled, never frozen. ---

#[test]
fn two_hundred_checkpointing_tasks_are_all_cancelled() {
    child("two_hundred_checkpointing_tasks_are_all_cancelled", || {
        let pool = pool(2);
        let budget = Budget::wall(Duration::from_millis(1)).grace(Duration::from_millis(5));
        let mut runaways = Vec::new();
        let mut good = Vec::new();
        for i in 0..200u64 {
            runaways.push(pool.spawn_with(budget, || loop {
                checkpoint();
            }));
            good.push((i, pool.spawn(move || i * 2)));
        }
        for (i, h) in good {
            assert_eq!(join_or_hang(h, "a good task").unwrap(), i * 2);
        }
        let mut hows = Vec::new();
        for h in runaways {
            match join_or_hang(h, "a checkpointing task") {
                Err(JoinError::Killed(k)) => hows.push(k.how()),
                other => panic!("a checkpointing task: expected a kill, got {other:?}"),
            }
        }
        let count = |how| hows.iter().filter(|&&h| h == how).count();
        // Never frozen without having seen the cancel. (200 demoted carriers share two
        // cores at idle priority: one that gets no CPU time past the maximum deferral is
        // abandoned, which is what rule 1's bound asks for.)
        assert_eq!(
            (
                count(KillHow::Cancelled) + count(KillHow::Abandoned),
                count(KillHow::Frozen)
            ),
            (200, 0),
            "cancelled {}, frozen {}, abandoned {}",
            count(KillHow::Cancelled),
            count(KillHow::Frozen),
            count(KillHow::Abandoned)
        );
        process_still_usable(&pool, StdoutState::Usable);
    });
}

// --- 9. No queued signals allowed. ---

#[test]
fn a_zero_sigpending_limit_does_not_kill_the_process() {
    child("a_zero_sigpending_limit_does_not_kill_the_process", || {
        let pool = pool(1);
        let limit = pool.spawn(|| {
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: setrlimit reads a valid rlimit.
            unsafe { libc::setrlimit(libc::RLIMIT_SIGPENDING, &zero) }
        });
        assert_eq!(join_or_hang(limit, "setrlimit").unwrap(), 0, "setrlimit");
        let h = pool.spawn_with(cpu_budget(), || spin_forever());
        expect_hard_kill(
            join_or_hang(h, "a runaway under RLIMIT_SIGPENDING = 0"),
            "a runaway under RLIMIT_SIGPENDING = 0",
        );
        good_tasks_still_run(&pool, 50);
        process_still_usable(&pool, StdoutState::Usable);
    });
}

// --- 10 and 11. Handlers installed after the pool's. ---

static HOOKED: AtomicBool = AtomicBool::new(false);
static HOOKED_AGAIN: AtomicBool = AtomicBool::new(false);

#[test]
fn a_chaining_handler_installed_after_the_pool_keeps_kills_and_alarm_working() {
    child(
        "a_chaining_handler_installed_after_the_pool_keeps_kills_and_alarm_working",
        || {
            let pool = pool(1);
            // SAFETY: the action only stores to an atomic (async-signal-safe).
            let registered = unsafe {
                signal_hook::low_level::register(libc::SIGALRM, || {
                    HOOKED.store(true, Ordering::SeqCst)
                })
            };
            registered.expect("signal_hook::low_level::register");
            // No task runs now, so no pool tick: only the alarm can set the flag.
            HOOKED.store(false, Ordering::SeqCst);
            // SAFETY: alarm has no memory effects.
            unsafe { libc::alarm(1) };
            std::thread::sleep(Duration::from_secs(2));
            assert!(
                HOOKED.load(Ordering::SeqCst),
                "signal-hook's action saw the alarm"
            );
            // A control: a second registration returns while nothing is frozen.
            register_bounded("signal_hook::low_level::register before the kill");
            let h = pool.spawn_with(cpu_budget(), || spin_forever());
            // Abandoned: a freeze inside signal-hook's handler, which called the pool's
            // holding its registry's lock, would leave that lock held for good.
            expect_how(
                join_or_hang(h, "a runaway under a chaining handler"),
                KillHow::Abandoned,
                "a runaway under a chaining handler",
            );
            // signal-hook's registry lock is free (no thread frozen inside its handler,
            // holding its read side): a new registration returns.
            register_bounded("signal_hook::low_level::register after the kill");
            process_still_usable(&pool, StdoutState::Usable);
        },
    );
}

/// Registers one more (no-op) signal-hook action for SIGALRM on a helper thread; it must
/// return within [`JOIN`].
#[track_caller]
fn register_bounded(what: &str) {
    let (done, registered) = mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: the action only stores to an atomic (async-signal-safe).
        let r = unsafe {
            signal_hook::low_level::register(libc::SIGALRM, || {
                HOOKED_AGAIN.store(true, Ordering::SeqCst)
            })
        };
        let _ = done.send(r.is_ok());
    });
    match registered.recv_timeout(JOIN) {
        Ok(ok) => assert!(ok, "{what} failed"),
        Err(_) => panic!("hang: {what}"),
    }
}

static COUNTED: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_only(_: libc::c_int) {
    COUNTED.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn a_replacing_handler_makes_budgets_unenforceable() {
    child("a_replacing_handler_makes_budgets_unenforceable", || {
        let pool = pool(1);
        // SAFETY: installs a plain handler that only touches an atomic; `action` is a
        // zeroed, then filled, sigaction.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = count_only as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            assert_eq!(
                libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut()),
                0
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pool.stats().signal_handler_replaced {
            assert!(
                Instant::now() < deadline,
                "signal_handler_replaced stayed false for 5 s: {:?}",
                pool.stats()
            );
            // Some running tasks, so the pool has ticks to miss.
            let busy = pool.spawn(|| common::spin_for(Duration::from_millis(5)));
            join_or_hang(busy, "a short busy task").unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        let h = pool.spawn_with(cpu_budget(), || 1u32);
        match join_or_hang(h, "a budgeted spawn under a replaced handler") {
            Err(JoinError::KillsUnenforceable) => {}
            other => panic!("expected KillsUnenforceable, got {other:?}"),
        }
        eprintln!(
            "the replacing handler counted {}",
            COUNTED.load(Ordering::SeqCst)
        );
        process_still_usable(&pool, StdoutState::Usable);
    });
}

// --- 12. More adversaries. ---

/// Loops on checkpoints inside `Display::fmt`; catches the cancel's unwind and raises it
/// again with `resume_unwind`, out through `println!` (which holds stdout's lock).
struct Rethrow;

impl fmt::Display for Rethrow {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        let caught = std::panic::catch_unwind(|| loop {
            checkpoint();
        });
        if let Err(payload) = caught {
            std::panic::resume_unwind(payload);
        }
        Ok(())
    }
}

#[test]
fn a_cancel_rethrown_from_display_inside_println_is_cancelled_and_stdout_stays_usable() {
    child(
        "a_cancel_rethrown_from_display_inside_println_is_cancelled_and_stdout_stays_usable",
        || {
            let pool = pool(1);
            // A long grace: the checkpoint is reached at once; this is not about timing.
            let budget = Budget::wall(Duration::from_millis(50)).grace(Duration::from_secs(5));
            let h = pool.spawn_with(budget, || println!("{}", Rethrow));
            expect_how(
                join_or_hang(h, "a cancel rethrown through println!"),
                KillHow::Cancelled,
                "a cancel rethrown through println!",
            );
            // The unwind released stdout's lock.
            process_still_usable(&pool, StdoutState::Usable);
        },
    );
}

#[test]
fn a_loop_swallowing_its_cancel_is_frozen() {
    child("a_loop_swallowing_its_cancel_is_frozen", || {
        let pool = pool(1);
        let swallowed = Arc::new(AtomicU64::new(0));
        let s = swallowed.clone();
        let h = pool.spawn_with(cpu_budget(), move || loop {
            let caught = std::panic::catch_unwind(|| loop {
                checkpoint();
            });
            if caught.is_err() {
                s.fetch_add(1, Ordering::Relaxed);
            }
        });
        expect_how(
            join_or_hang(h, "a loop swallowing its cancel"),
            KillHow::Frozen,
            "a loop swallowing its cancel",
        );
        assert!(
            swallowed.load(Ordering::Relaxed) >= 1,
            "the cancel unwound at least once"
        );
        process_still_usable(&pool, StdoutState::Usable);
    });
}

#[test]
fn a_thread_spawning_runaway_is_frozen_and_threads_still_start() {
    child(
        "a_thread_spawning_runaway_is_frozen_and_threads_still_start",
        || {
            let pool = pool(1);
            let h = pool.spawn_with(cpu_budget(), || loop {
                // Detached; each exits at once.
                let _ = std::thread::Builder::new().spawn(|| black_box(1u8));
            });
            expect_how(
                join_or_hang(h, "a thread-spawning runaway"),
                KillHow::Frozen,
                "a thread-spawning runaway",
            );
            // `still_usable` starts std threads from the main thread and from a task.
            process_still_usable(&pool, StdoutState::Usable);
        },
    );
}

/// The calling thread's CPU affinity.
fn thread_affinity() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes the calling thread's mask
    // into it, and CPU_ISSET reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Restricts the calling thread to `cpus`.
fn set_thread_affinity(cpus: &[usize]) -> bool {
    // SAFETY: as in `thread_affinity`; CPU_SET writes into the local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The calling thread's nice value.
fn thread_nice() -> i32 {
    // SAFETY: gettid and getpriority have no memory effects.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

/// What a task sees of its thread: std's name, the kernel's name, affinity, nice.
fn thread_identity() -> (Option<String>, String, Vec<usize>, i32) {
    (
        std::thread::current().name().map(str::to_owned),
        std::fs::read_to_string("/proc/thread-self/comm")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        thread_affinity(),
        thread_nice(),
    )
}

/// A different affinity from `current`, within the CPUs this process may use.
fn another_affinity(current: &[usize]) -> Option<Vec<usize>> {
    let allowed = thread_affinity();
    if current.len() > 1 {
        return Some(vec![current[0]]);
    }
    allowed
        .iter()
        .find(|c| !current.contains(c))
        .map(|&c| vec![c])
}

#[test]
fn a_runaway_that_renames_repins_and_renices_its_thread_is_frozen_and_the_next_runner_is_the_pools()
{
    child(
        "a_runaway_that_renames_repins_and_renices_its_thread_is_frozen_and_the_next_runner_is_the_pools",
        || {
            let pool = pool(1);
            let before = join_or_hang(pool.spawn(thread_identity), "identity before")
                .unwrap();
            assert!(
                before.0.as_deref().is_some_and(|n| n.starts_with("microsched")),
                "{before:?}"
            );
            let other = another_affinity(&before.2);
            let h = pool.spawn_with(cpu_budget(), move || {
                // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes;
                // setpriority has no memory effects.
                unsafe {
                    libc::prctl(libc::PR_SET_NAME, c"rogue".as_ptr());
                    libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
                }
                if let Some(other) = &other {
                    set_thread_affinity(other);
                }
                spin_forever()
            });
            expect_how(
                join_or_hang(h, "a renaming, repinning, renicing runaway"),
                KillHow::Frozen,
                "a renaming, repinning, renicing runaway",
            );
            for _ in 0..10 {
                let after = join_or_hang(pool.spawn(thread_identity), "identity after")
                    .unwrap();
                assert_eq!(after.0, before.0, "std's thread name");
                assert_ne!(after.1, "rogue", "the kernel's thread name");
                assert_eq!(after.2, before.2, "the affinity");
                assert_eq!(after.3, before.3, "the nice value");
            }
            process_still_usable(&pool, StdoutState::Usable);
        },
    );
}

#[test]
fn a_task_that_repins_its_runner_and_returns_leaves_the_pools_affinity() {
    // The monitor restores it within a sweep (100 ms): checking after every task would
    // cost a syscall per task.
    child(
        "a_task_that_repins_its_runner_and_returns_leaves_the_pools_affinity",
        || {
            let pool = pool(1);
            let before = join_or_hang(pool.spawn(thread_identity), "identity before").unwrap();
            let Some(other) = another_affinity(&before.2) else {
                eprintln!("skipped: this process may run on one CPU only");
                return;
            };
            let repin = pool.spawn(move || set_thread_affinity(&other));
            assert!(
                join_or_hang(repin, "the repinning task").unwrap(),
                "sched_setaffinity"
            );
            std::thread::sleep(Duration::from_millis(350));
            let after = join_or_hang(pool.spawn(thread_identity), "identity after").unwrap();
            assert_eq!(after.0, before.0, "std's thread name");
            assert_eq!(after.2, before.2, "the next task's affinity");
            process_still_usable(&pool, StdoutState::Usable);
        },
    );
}

#[test]
fn a_task_that_blocks_the_signal_and_returns_leaves_no_mask_behind() {
    child(
        "a_task_that_blocks_the_signal_and_returns_leaves_no_mask_behind",
        || {
            let pool = pool(1);
            let blocker = pool.spawn(|| signal_blocked_here(libc::SIGALRM, true));
            assert!(join_or_hang(blocker, "the blocking task").unwrap());
            // The monitor's sweep (every 100 ms) finds the mask; the runner unblocks the
            // signal before its next task.
            std::thread::sleep(Duration::from_millis(350));
            let mask = pool.spawn(|| signal_blocked_here(libc::SIGALRM, false));
            assert!(
                !join_or_hang(mask, "the mask check").unwrap(),
                "the next task runs with SIGALRM blocked"
            );
            let h = pool.spawn_with(cpu_budget(), || spin_forever());
            expect_how(
                join_or_hang(h, "a runaway after a signal-blocking task"),
                KillHow::Frozen,
                "a runaway after a signal-blocking task",
            );
            process_still_usable(&pool, StdoutState::Usable);
        },
    );
}

#[test]
fn a_set_var_runaway_leaves_the_environment_usable() {
    child("a_set_var_runaway_leaves_the_environment_usable", || {
        let pool = pool(1);
        let h = pool.spawn_with(cpu_budget(), || {
            let mut i = 0u64;
            loop {
                std::env::set_var("MICROSCHED_KILL_ENDS_ROGUE", i.to_string());
                i += 1;
            }
        });
        expect_hard_kill(join_or_hang(h, "a set_var runaway"), "a set_var runaway");
        {
            let _watchdog = Watchdog::start("set_var after a set_var runaway", CHECKS);
            std::env::set_var("MICROSCHED_KILL_ENDS_AFTER", "1");
            assert_eq!(
                std::env::var("MICROSCHED_KILL_ENDS_AFTER").as_deref(),
                Ok("1")
            );
        }
        process_still_usable(&pool, StdoutState::Usable);
    });
}

#[test]
fn a_task_blocked_in_command_output_is_frozen() {
    child("a_task_blocked_in_command_output_is_frozen", || {
        let pool = pool(1);
        let h = pool.spawn_with(wall_budget(), || {
            std::process::Command::new("sleep")
                .arg("30")
                .output()
                .map(|o| o.status.code())
                .map_err(|e| e.kind())
        });
        expect_how(
            join_or_hang(h, "Command::output waiting for `sleep 30`"),
            KillHow::Frozen,
            "Command::output waiting for `sleep 30`",
        );
        // Child processes still start and are reaped.
        let status = {
            let _watchdog = Watchdog::start("running `true` after the freeze", CHECKS);
            std::process::Command::new("true").status()
        };
        assert!(status.unwrap().success(), "`true` after the freeze");
        process_still_usable(&pool, StdoutState::Usable);
    });
}

/// A value whose `Drop` never returns.
struct Sticky;

impl Drop for Sticky {
    fn drop(&mut self) {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

#[test]
fn a_detached_budgeted_task_whose_value_never_drops_stalls_no_kill() {
    child(
        "a_detached_budgeted_task_whose_value_never_drops_stalls_no_kill",
        || {
            let pool = pool(2);
            // Detached at once: the value is dropped by whoever completes the task (its
            // runner), never by the monitor, which holds budgeted tasks and must stay free
            // to enforce every other budget.
            for _ in 0..4 {
                drop(pool.spawn_with(cpu_budget(), || {
                    std::thread::sleep(Duration::from_millis(50));
                    Sticky
                }));
            }
            std::thread::sleep(Duration::from_millis(300));
            let h = pool.spawn_with(cpu_budget(), || spin_forever());
            expect_how(
                join_or_hang(h, "a runaway after stuck drops"),
                KillHow::Frozen,
                "a runaway after stuck drops",
            );
            let good = pool.spawn(|| 7);
            assert_eq!(
                join_or_hang(good, "a good task after stuck drops").unwrap(),
                7
            );
            // Their threads are still in `Drop`, and `shutdown()` waits for pool threads
            // running code that is not budgeted: a bounded shutdown reports them.
            assert!(pool.shutdown_timeout(Duration::from_secs(1)).is_err());
            std::mem::forget(pool);
        },
    );
}
