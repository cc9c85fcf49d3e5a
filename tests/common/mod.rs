//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Once;
use std::time::Duration;

use microsched::{JoinError, JoinHandle};

/// Long enough that only a real hang reaches it on a loaded 2-vCPU machine.
pub const HANG: Duration = Duration::from_secs(60);

/// A panic payload the tests raise on purpose; the hook installed by [`quiet_panics`]
/// does not print it.
#[derive(Debug, PartialEq, Eq)]
pub struct Expected(pub u32);

/// Silences the default hook's message for panics with an [`Expected`] payload (or a
/// message starting with "expected:"), and only for those.
pub fn quiet_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let expected = payload.is::<Expected>()
                || payload
                    .downcast_ref::<&str>()
                    .is_some_and(|s| s.starts_with("expected:"))
                || payload
                    .downcast_ref::<String>()
                    .is_some_and(|s| s.starts_with("expected:"));
            if !expected {
                default(info);
            }
        }));
    });
}

/// Joins, turning a hang into a test failure instead of a stuck CI run.
#[track_caller]
pub fn join<T>(handle: JoinHandle<T>) -> Result<T, JoinError> {
    match handle.join_timeout(HANG) {
        Ok(result) => result,
        Err(_) => panic!("a task did not resolve within {HANG:?}: hang"),
    }
}

/// A builder for `workers` slots, pinned when this process may use that many cores (so the
/// tests also run, unpinned, on a one-core machine).
pub fn builder(workers: usize) -> microsched::Builder {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    microsched::Pool::builder()
        .workers(workers)
        .pin(workers <= cores)
}

/// Runs `body` in a child process: the test binary re-run with only this test selected.
///
/// For tests with process-wide effects (signal handlers, `alarm`, dropped capabilities,
/// demoted threads): a failure, hang or stray signal there cannot take down or leak into
/// the rest of the suite. In the parent, this spawns the child, kills it after [`HANG`],
/// and fails with the child's output unless it exited with success. In the child (the
/// environment says which test it is for), it just runs `body`.
#[track_caller]
pub fn in_child(test: &str, body: impl FnOnce()) {
    const VAR: &str = "MICROSCHED_CHILD_TEST";
    if std::env::var(VAR).as_deref() == Ok(test) {
        body();
        return;
    }
    let output = child_output(test, VAR);
    assert!(
        output.status.success(),
        "child for {test} failed ({:?})\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// [`in_child`], with no other child of this test binary running at the same time: for
/// tests that assert a freeze (not an abandon), which needs the runaway to get CPU time
/// within the maximum deferral. Run side by side on a loaded two-core machine, such
/// children starved each other into abandons now and then.
#[track_caller]
pub fn in_child_alone(test: &str, body: impl FnOnce()) {
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    in_child(test, body);
}

/// Spawns the child for `test` and waits for it (at most [`HANG`]).
pub fn child_output(test: &str, var: &str) -> std::process::Output {
    use std::io::Read;
    use std::process::{Command, Stdio};
    // One child at a time per test binary: each runs a pool on every core, and a dozen of
    // them at once on two cores starve their own demoted threads past the kill's bound
    // (their kills then end abandoned, which is right, but not what these tests check).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(var, test)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("re-run the test binary");
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = std::time::Instant::now() + HANG;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().expect("reap the child");
            panic!(
                "child for {test} hung for {HANG:?} and was killed ({status:?})\n{}",
                String::from_utf8_lossy(&err.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// CPU-bound work for `wall`, returning `(rounds, checksum)`; [`check_spin`] recomputes the
/// checksum from the rounds, so a result torn by preemption shows.
pub fn spin_for(wall: Duration) -> (u64, u64) {
    let start = std::time::Instant::now();
    let mut rounds = 0u64;
    let mut sum = 0u64;
    while start.elapsed() < wall {
        for _ in 0..1000 {
            rounds += 1;
            sum = step(sum, rounds);
        }
    }
    (rounds, sum)
}

fn step(sum: u64, round: u64) -> u64 {
    sum.rotate_left(7) ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The checksum `spin_for` must have returned for `rounds`.
pub fn check_spin(rounds: u64) -> u64 {
    (1..=rounds).fold(0, step)
}

/// A pool under constant preemption, for tests that need ticks and handoffs to land inside
/// task code as often as possible: the `Monotonic` clock at a 100 µs quantum, with extra
/// standbys so handoffs seldom wait for one.
pub fn constantly_preempted(workers: usize) -> microsched::Pool {
    builder(workers)
        .quantum(Duration::from_micros(100))
        .timer_clock(microsched::TimerClock::Monotonic)
        .standbys(4)
        .build()
        .expect("build a constantly preempted pool")
}
pub mod killing;
