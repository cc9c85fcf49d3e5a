//! Killing runaway tasks while good ones keep flowing.
//!
//! `cargo run --release --example runaway`
//!
//! A generator keeps a stream of small, checked tasks going on the pool (a slot per
//! core). Every 20 ms a runaway of one kind joins them, with a budget of 10 ms of CPU and
//! 100 ms of wall-clock time and a grace period of 5 ms:
//!
//! | kind | what it does | expected end |
//! |---|---|---|
//! | `loop` | `loop {}` | frozen (CPU budget) |
//! | `alloc` | allocates and frees in a loop (mostly inside malloc) | frozen, outside malloc |
//! | `print` | `print!` of a slow, empty `Display` (inside std's stdout lock nearly all the time) | frozen as it leaves the lock, or while it waits for it |
//! | `format` | `format!` in a loop | frozen |
//! | `recursion` | recursion without end | frozen (stack overflow) |
//! | `mutex` | holds a shared `Mutex` in a loop with a `checkpoint()` | cancelled; the next task to lock it sees it poisoned |
//! | `checkpoint` | a loop with a `checkpoint()` and a value to drop | cancelled, destructor run |
//! | `sleep` | sleeps for an hour | frozen (wall-clock budget) |
//! | `unwinding` | panics, then loops in a destructor | frozen once the freeze deferral is over |
//! | `cancel` | `loop {}` with no limit, cancelled through its handle | frozen (cancelled) |
//! | `io` | blocked reading a socket nobody writes to | frozen in the syscall (wall-clock budget) |
//! | `deep` | `loop {}` 2,000 frames deep | frozen |
//! | `signalblock` | blocks the pool's signal, then loops | abandoned: its handler never runs |
//! | `display` | `println!` of a `Display` that loops | abandoned: it never leaves stdout's lock |
//! | `guard` | loops holding a `FreezeGuard` | abandoned: it never leaves the no-freeze section |
//!
//! The abandoned kinds give up after half a second, long after their joins resolved: their
//! threads then exit. While a `display` runaway holds stdout's lock, nothing else can
//! print: the progress lines go to stderr, the table to stdout once they are done.
//!
//! The last line is the summary: every runaway killed (none hung past its bound), every
//! good result right, and the 99th percentile of the time from the budget's expiry (or the
//! cancel) to the joiner having the result.

use std::ops::AddAssign;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use microsched::{Budget, JoinError, KillHow, Pool};

#[path = "support/runaways.rs"]
mod runaways;

use runaways::{Kind, KINDS};

const ROUNDS: usize = 20;
const GRACE: Duration = Duration::from_millis(5);
/// The pool's maximum freeze deferral: a panicking task is frozen in its destructors after
/// this (the default is 1 s, for destructors that are merely slow), and a kill that finds
/// no safe point within grace + this + the monitor's period is abandoned.
const MAX_DEFERRAL: Duration = Duration::from_millis(50);
/// Rule 1's "one monitor period" (20 ms, `kill.rs`), plus 10 ms of scheduling noise (the
/// joiner's own wake-up included) on two cores shared with everything else here.
const SLACK: Duration = Duration::from_millis(30);
/// A join that has not resolved this long after its budget ran out is counted as hung.
const HUNG: Duration = Duration::from_secs(10);
/// Time between two runaways. Each may use 10 ms of CPU before it is cancelled, plus
/// its grace: at this spacing the runaways take about half of the two cores, and the
/// good tasks the rest.
const SPACING: Duration = Duration::from_millis(20);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    runaways::quiet_unwinding_panics();
    let pool = Pool::builder()
        .max_frozen(4 * KINDS.len() * ROUNDS)
        .max_freeze_deferral(MAX_DEFERRAL)
        .build()?;
    let shared = runaways::Shared::new();
    let budget = Budget::cpu(Duration::from_millis(10))
        .and_wall(Duration::from_millis(100))
        .grace(GRACE);

    // Good tasks: one every 200 µs, each checked.
    let stop = Arc::new(AtomicBool::new(false));
    let generator = {
        let stop = stop.clone();
        let handle = pool.handle();
        std::thread::spawn(move || {
            let (mut ok, mut total) = (0u64, 0u64);
            let mut pending = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let n = total;
                pending.push((n, handle.spawn(move || n.wrapping_mul(0x9E37_79B9) >> 7)));
                total += 1;
                if pending.len() >= 64 {
                    for (n, h) in pending.drain(..) {
                        ok += u64::from(h.join().ok() == Some(n.wrapping_mul(0x9E37_79B9) >> 7));
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            for (n, h) in pending {
                ok += u64::from(h.join().ok() == Some(n.wrapping_mul(0x9E37_79B9) >> 7));
            }
            (ok, total)
        })
    };

    // Runaways, one every SPACING, each with a thread that records when its join returns.
    let mut joiners = Vec::new();
    for round in 0..ROUNDS {
        for kind in KINDS {
            let handle = pool.handle();
            let h = runaways::spawn(&handle, kind, budget, &shared);
            let shared = shared.clone();
            joiners.push((
                kind,
                std::thread::spawn(move || {
                    // Bounded well past the kill's own bound: a join still waiting then
                    // is a hang.
                    let result = h.join_timeout(HUNG).ok();
                    let returned = Instant::now();
                    if kind == Kind::Mutex && result.is_some() {
                        shared.check_poison(&handle);
                    }
                    (result, returned)
                }),
            ));
            std::thread::sleep(SPACING);
        }
        if round == 0 {
            eprintln!("round 1 of {ROUNDS} started; the rest follow");
        }
    }

    let mut by_kind: Vec<(Kind, Vec<u128>, [usize; 3])> =
        KINDS.iter().map(|&k| (k, Vec::new(), [0; 3])).collect();
    let (mut cancelled, mut frozen, mut abandoned, mut not_killed) = (0, 0, 0, 0);
    let mut latencies = Vec::new();
    let mut hung = 0;
    for (kind, joiner) in joiners {
        let (result, returned) = joiner.join().expect("joiner thread");
        let entry = by_kind.iter_mut().find(|(k, _, _)| *k == kind).unwrap();
        let Some(result) = result else {
            hung += 1;
            continue;
        };
        match result.as_ref().err().and_then(JoinError::killed) {
            Some(k) => {
                let how = match k.how() {
                    KillHow::Cancelled => 0,
                    KillHow::Frozen => 1,
                    _ => 2,
                };
                [&mut cancelled, &mut frozen, &mut abandoned][how].add_assign(1);
                entry.2[how] += 1;
                let latency = returned
                    .saturating_duration_since(k.expired_at())
                    .as_micros();
                if Duration::from_micros(latency as u64) > HUNG {
                    hung += 1;
                }
                latencies.push(latency);
                entry.1.push(latency);
            }
            None => not_killed += 1,
        }
    }
    // The abandoned kinds give up on their own: their threads leave (and stdout is free).
    std::thread::sleep(runaways::give_up_after());
    stop.store(true, Ordering::SeqCst);
    let (good_ok, good_total) = generator.join().expect("generator thread");

    println!();
    println!(
        "{:<12} {:>4} {:>9} {:>7} {:>9} {:>12} {:>12}   expected",
        "kind", "n", "cancelled", "frozen", "abandoned", "p50 latency", "max latency"
    );
    for (kind, mut lat, [c, f, a]) in by_kind {
        lat.sort_unstable();
        let (expected, why) = kind.expected();
        println!(
            "{:<12} {:>4} {:>9} {:>7} {:>9} {:>9} µs {:>9} µs   {expected:?} {why}",
            kind.name(),
            lat.len(),
            c,
            f,
            a,
            runaways::quantile(&lat, 0.5),
            lat.last().copied().unwrap_or(0),
        );
    }
    let stats = pool.stats();
    println!();
    println!(
        "destructors run by cancelled `checkpoint` tasks: {}; later tasks that found the \
         cancelled holder's mutex poisoned: {}",
        shared.dropped.load(Ordering::SeqCst),
        shared.poisoned_seen.load(Ordering::SeqCst)
    );
    println!(
        "stats: cancelled {} frozen {} (threads {}, {} MiB of stack reserved) abandoned {} \
         (threads still running {}, CPU used since {} ms, signal-blocked runners {}), by \
         reason: cpu {} wall {} cancel {} stack overflow {}; freezes deferred {} (in libc {}, \
         panicking {}), returns redirected to the freeze (out of the stdout lock or libc) {}",
        stats.cancelled,
        stats.frozen,
        stats.frozen_threads,
        stats.frozen_stack_bytes >> 20,
        stats.abandoned,
        stats.abandoned_threads,
        stats.abandoned_cpu_ns / 1_000_000,
        stats.signal_blocked,
        stats.kills_cpu_budget,
        stats.kills_wall_deadline,
        stats.kills_cancel,
        stats.kills_stack_overflow,
        stats.freeze_deferred,
        stats.freeze_deferred_library,
        stats.freeze_deferred_panicking,
        stats.freeze_redirected,
    );
    pool.shutdown();

    latencies.sort_unstable();
    let p99 = runaways::quantile(&latencies, 0.99);
    let bound = (GRACE + MAX_DEFERRAL + SLACK).as_micros();
    let max = latencies.last().copied().unwrap_or(0);
    println!(
        "kill latency bound (grace + maximum deferral + monitor period and noise): {bound} µs; \
         p99 {p99} µs, max {max} µs: {}",
        if max <= bound {
            "met"
        } else {
            "NOT met by every kill"
        }
    );
    let runaways = cancelled + frozen + abandoned + not_killed + hung;
    println!(
        "SUMMARY kill runaways={runaways} cancelled={cancelled} frozen={frozen} abandoned={abandoned} good_ok={good_ok}/{good_total} hung={hung} kill_latency_p99_us={p99}"
    );
    if not_killed + hung > 0 || good_ok != good_total {
        return Err(format!("{not_killed} runaways not killed, {hung} hung").into());
    }
    Ok(())
}
