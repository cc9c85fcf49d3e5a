//! What the kill tests share: child bodies with watchdogs and `_exit`, joins with
//! deadlines, outcome checks, and the checks that the process is still usable.

use std::fmt;
use std::hint::black_box;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{builder, in_child, quiet_panics, Expected};
use microsched::{Budget, JoinError, JoinHandle, KillHow, Killed, Pool};

/// How long a join may take before the case counts as a hang.
pub const JOIN: Duration = Duration::from_secs(20);
/// How long `pool.shutdown()` may take.
pub const SHUTDOWN: Duration = Duration::from_secs(30);
/// How long the main thread's own usability checks may take.
pub const CHECKS: Duration = Duration::from_secs(30);
/// How long a whole child body may take (under `common::HANG`, so the message is ours).
pub const BODY: Duration = Duration::from_secs(50);
/// The variable `common::in_child` sets in the child: always there to read.
pub const CHILD_VAR: &str = "MICROSCHED_CHILD_TEST";

pub fn pool(workers: usize) -> Pool {
    builder(workers)
        .max_freeze_deferral(Duration::from_millis(200))
        .build()
        .unwrap()
}

/// The budget for tasks that block: 50 ms of wall-clock time, 10 ms of grace.
pub fn wall_budget() -> Budget {
    Budget::wall(Duration::from_millis(50)).grace(Duration::from_millis(10))
}

/// The budget for tasks that spin: 50 ms of CPU time, 10 ms of grace.
pub fn cpu_budget() -> Budget {
    Budget::cpu(Duration::from_millis(50)).grace(Duration::from_millis(10))
}

/// Writes `parts` to fd 2 without std's stderr lock or an allocation, then exits at once.
pub fn die(parts: &[&str]) -> ! {
    for part in parts.iter().copied().chain(["\n"]) {
        // SAFETY: writing a valid, live buffer of `part.len()` bytes to fd 2.
        unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
    }
    // SAFETY: ends the process without running anything else (no atexit handlers, no
    // stdout flush, which could block on a lock a frozen thread holds).
    unsafe { libc::_exit(1) }
}

/// A thread that ends the process with "hang: <what>" unless dropped within `limit`.
pub struct Watchdog {
    _disarm: mpsc::Sender<()>,
}

impl Watchdog {
    pub fn start(what: &'static str, limit: Duration) -> Watchdog {
        let (disarm, armed) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("kill-ends-watchdog".into())
            .spawn(move || {
                if armed.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
                    die(&["hang: ", what, " did not finish in time"]);
                }
            })
            .expect("start a watchdog thread");
        Watchdog { _disarm: disarm }
    }
}

/// True for the panics the tests raise on purpose (see `common::quiet_panics`).
pub fn is_expected(payload: &(dyn std::any::Any + Send)) -> bool {
    payload.is::<Expected>()
        || payload
            .downcast_ref::<&str>()
            .is_some_and(|s| s.starts_with("expected:"))
        || payload
            .downcast_ref::<String>()
            .is_some_and(|s| s.starts_with("expected:"))
}

/// A failure on the test's own thread ends the child right after its message is
/// printed: unwinding would drop the pool, whose `Drop` waits for tasks that may never
/// end.
pub fn exit_on_failure() {
    let test_thread = std::thread::current().id();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        if std::thread::current().id() == test_thread && !is_expected(info.payload()) {
            die(&["kill_ends: child FAILED"]);
        }
    }));
}

/// `common::in_child`, with a watchdog over the whole body, and an `_exit` right after
/// it (0 if it passed, 1 if it panicked: the panic message is already on stderr).
pub fn child(test: &'static str, body: impl FnOnce()) {
    in_child(test, || {
        let _watchdog = Watchdog::start("the test body", BODY);
        quiet_panics();
        exit_on_failure();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(body));
        let (message, code) = match outcome {
            Ok(()) => ("kill_ends: child passed\n", 0),
            Err(_) => ("kill_ends: child FAILED\n", 1),
        };
        // SAFETY: as in `die`.
        unsafe {
            libc::write(2, message.as_ptr().cast(), message.len());
            libc::_exit(code)
        }
    });
}

/// Joins with a deadline: a hang is a failure naming `case`.
#[track_caller]
pub fn join_or_hang<T>(handle: JoinHandle<T>, case: &str) -> Result<T, JoinError> {
    match handle.join_timeout(JOIN) {
        Ok(result) => result,
        Err(_) => panic!("hang: {case}: the join did not resolve within {JOIN:?}"),
    }
}

/// The kill in `result`, which must be one with `how`.
#[track_caller]
pub fn expect_how<T: fmt::Debug>(result: Result<T, JoinError>, how: KillHow, case: &str) -> Killed {
    match result {
        Err(JoinError::Killed(k)) if k.how() == how => k,
        other => panic!("{case}: expected a kill with how = {how:?}, got {other:?}"),
    }
}

/// The kill in `result`, which must be a hard one (`Frozen` or `Abandoned`).
#[track_caller]
pub fn expect_hard_kill<T: fmt::Debug>(result: Result<T, JoinError>, case: &str) -> Killed {
    match result {
        Err(JoinError::Killed(k)) if matches!(k.how(), KillHow::Frozen | KillHow::Abandoned) => {
            eprintln!("{case}: {:?}", k.how());
            k
        }
        other => panic!("{case}: expected a frozen or abandoned kill, got {other:?}"),
    }
}

/// Whether stdout may still be written to: not after a test has left its lock held by a
/// thread for good.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StdoutState {
    Usable,
    HeldForever,
}

/// Spawns `n` good tasks and checks every result, each join with a deadline.
pub fn good_tasks_still_run(pool: &Pool, n: u64) {
    let handles: Vec<_> = (0..n).map(|i| pool.spawn(move || i * 3 + 1)).collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(
            join_or_hang(h, "a good task").unwrap(),
            i as u64 * 3 + 1,
            "a good task's result"
        );
    }
}

/// The process is still usable, from this thread and from new pool tasks; the pool stays
/// up. Never touches stdin; touches stdout only if `stdout` says it is usable.
pub fn still_usable(pool: &Pool, stdout: StdoutState) {
    let _watchdog = Watchdog::start("the main thread's usability checks", CHECKS);
    // The main thread.
    if stdout == StdoutState::Usable {
        println!("usable: println from the main thread");
    }
    eprintln!("usable: eprintln from the main thread");
    let caught = std::panic::catch_unwind(|| std::panic::panic_any(Expected(1)));
    assert!(
        caught.is_err_and(|p| p.downcast_ref::<Expected>() == Some(&Expected(1))),
        "a panic caught on the main thread"
    );
    assert!(std::env::vars().count() > 0, "std::env::vars() is empty");
    black_box(std::env::var("PATH").ok());
    assert!(std::env::var(CHILD_VAR).is_ok(), "{CHILD_VAR} is set");
    let thread = std::thread::spawn(|| 5u32);
    assert_eq!(
        thread.join().unwrap(),
        5,
        "a std thread from the main thread"
    );
    // New pool tasks.
    let ok = stdout == StdoutState::Usable;
    let task = pool.spawn(move || {
        if ok {
            println!("usable: println from a pool task");
        }
        eprintln!("usable: eprintln from a pool task");
        let caught = std::panic::catch_unwind(|| std::panic::panic_any(Expected(2)))
            .is_err_and(|p| p.downcast_ref::<Expected>() == Some(&Expected(2)));
        let vars = std::env::vars().count();
        black_box(std::env::var("PATH").ok());
        let child_var = std::env::var(CHILD_VAR).is_ok();
        let thread = std::thread::spawn(|| 3u32).join().unwrap_or(0);
        (caught, vars > 0, child_var, thread)
    });
    assert_eq!(
        join_or_hang(task, "the usability task").unwrap(),
        (true, true, true, 3),
        "(caught a panic, env vars, {CHILD_VAR}, a std thread) in a pool task"
    );
    let panics = pool.spawn(|| -> u32 { std::panic::panic_any(Expected(3)) });
    match join_or_hang(panics, "a panicking task") {
        Err(JoinError::Panicked(p)) => assert_eq!(
            p.into_inner().downcast_ref::<Expected>(),
            Some(&Expected(3))
        ),
        other => panic!("a panicking task: expected its panic, got {other:?}"),
    }
    // A task that spawns onto the pool and joins (inline: the inner task is queued on
    // the outer one's slot; the outer join has the deadline).
    let handle = pool.handle();
    let nested = pool.spawn(move || handle.spawn(|| 20u32).join().ok());
    assert_eq!(
        join_or_hang(nested, "a nested spawn").unwrap(),
        Some(20),
        "a task spawning and joining another"
    );
    good_tasks_still_run(pool, 50);
}

/// Runs `pool.shutdown()` on a helper thread; it must return within [`SHUTDOWN`].
pub fn shutdown_bounded(pool: &Pool) {
    let (done, finished) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || {
            pool.shutdown();
            let _ = done.send(());
        });
        if finished.recv_timeout(SHUTDOWN).is_err() {
            die(&["hang: pool.shutdown() did not return within 30 s"]);
        }
    });
}

/// [`still_usable`], then the pool shuts down (bounded).
pub fn process_still_usable(pool: &Pool, stdout: StdoutState) {
    still_usable(pool, stdout);
    shutdown_bounded(pool);
    eprintln!("usable: after shutdown {:?}", pool.stats());
}

/// Waits (with a deadline) until `flag` is set.
pub fn wait_for(flag: &AtomicBool, what: &str) {
    let deadline = Instant::now() + JOIN;
    while !flag.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "hang: waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn spin_forever() -> ! {
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

/// A short budget, for runaways that should be killed soon.
pub const SHORT: Duration = Duration::from_millis(20);

#[track_caller]
pub fn killed(result: Result<impl std::fmt::Debug, JoinError>) -> Killed {
    match result {
        Err(JoinError::Killed(k)) => k,
        other => panic!("expected a kill, got {other:?}"),
    }
}

/// Recursion with no end: overflows the stack of whatever thread runs it.
#[inline(never)]
#[allow(unconditional_recursion)]
pub fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 32]);
    recurse(black_box(depth + 1)).wrapping_add(frame[7])
}
