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
//! | `print` | `print!` of a slow, empty `Display` (inside std's stdout lock nearly all the time) | frozen as it leaves the lock |
//! | `format` | `format!` in a loop | frozen |
//! | `recursion` | recursion without end | frozen (stack overflow) |
//! | `mutex` | holds a shared `Mutex` in a loop with a `checkpoint()` | cancelled; the next task to lock it sees it poisoned |
//! | `checkpoint` | a loop with a `checkpoint()` and a value to drop | cancelled, destructor run |
//! | `sleep` | sleeps for an hour | frozen (wall-clock budget) |
//! | `unwinding` | panics, then loops in a destructor | frozen once the freeze deferral is over |
//! | `cancel` | `loop {}` with no limit, cancelled through its handle | frozen (cancelled) |
//!
//! The last line is the summary: every runaway killed, every good result right, and the
//! 99th percentile of the time from the budget's expiry (or the cancel) to the joiner
//! having the result.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use microsched::{checkpoint, Budget, JoinError, JoinHandle, KillHow, Pool, DEFAULT_QUANTUM};

const ROUNDS: usize = 20;
const GRACE: Duration = Duration::from_millis(5);
/// Time between two runaways. Each may use 10 ms of CPU before it is cancelled, plus
/// its grace: at this spacing the runaways take about half of the two cores, and the
/// good tasks the rest. (Closer together, they compete with each other for CPU, and
/// with the grace period counted in CPU time too, kills take longer.)
const SPACING: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Loop,
    Alloc,
    Print,
    Format,
    Recursion,
    Mutex,
    Checkpoint,
    Sleep,
    Unwinding,
    Cancel,
}

const KINDS: [Kind; 10] = [
    Kind::Loop,
    Kind::Alloc,
    Kind::Print,
    Kind::Format,
    Kind::Recursion,
    Kind::Mutex,
    Kind::Checkpoint,
    Kind::Sleep,
    Kind::Unwinding,
    Kind::Cancel,
];

/// Formats to nothing, slowly: `print!` holds std's stdout lock while it runs.
struct Quiet;

impl std::fmt::Display for Quiet {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut x = 1u64;
        for i in 0..20_000u64 {
            x = black_box(x.rotate_left(7) ^ i);
        }
        Ok(())
    }
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 32]);
    recurse(black_box(depth + 1)).wrapping_add(frame[3])
}

struct Dropped(Arc<AtomicUsize>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Loops forever when dropped (during the unwinding of a panic).
struct SlowDrop;

impl Drop for SlowDrop {
    fn drop(&mut self) {
        let mut x = 0u64;
        loop {
            x = black_box(x.wrapping_add(1));
            checkpoint(); // does nothing while unwinding: a second unwind would abort
        }
    }
}

struct Shared {
    dropped: Arc<AtomicUsize>,
    /// The `mutex` kind's mutex: each holder is cancelled and poisons it; the next task
    /// to lock it after that sees the poison.
    mutex: Arc<Mutex<u64>>,
    poisoned_seen: AtomicUsize,
}

fn spawn_runaway(pool: &Pool, kind: Kind, shared: &Arc<Shared>) -> JoinHandle<u64> {
    let budget = Budget::cpu(Duration::from_millis(10))
        .and_wall(Duration::from_millis(100))
        .grace(GRACE);
    match kind {
        Kind::Loop => pool.spawn_with(budget, || {
            #[allow(clippy::empty_loop)]
            loop {}
        }),
        Kind::Alloc => pool.spawn_with(budget, || {
            let mut n = 0u64;
            loop {
                let v = vec![n as u8; black_box(1024)];
                n = n.wrapping_add(u64::from(v[7]) + 1);
            }
        }),
        Kind::Print => pool.spawn_with(budget, || loop {
            print!("{Quiet}");
        }),
        Kind::Format => pool.spawn_with(budget, || {
            let mut i = 0u64;
            loop {
                black_box(format!("{i:>12} {:?}", i.to_be_bytes()));
                i += 1;
            }
        }),
        Kind::Recursion => pool.spawn_with(Budget::cpu(Duration::from_secs(10)), || recurse(0)),
        Kind::Mutex => {
            let m = shared.mutex.clone();
            pool.spawn_with(budget, move || {
                let mut guard = m.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    *guard += 1;
                    checkpoint();
                }
            })
        }
        Kind::Checkpoint => {
            let dropped = shared.dropped.clone();
            pool.spawn_with(budget, move || {
                let _value = Dropped(dropped);
                let mut x = 0u64;
                loop {
                    x = black_box(x.wrapping_add(1));
                    checkpoint();
                }
            })
        }
        Kind::Sleep => {
            pool.spawn_with(Budget::wall(Duration::from_millis(20)).grace(GRACE), || {
                std::thread::sleep(Duration::from_secs(3600));
                0
            })
        }
        Kind::Unwinding => pool.spawn_with(budget, || {
            let _slow = SlowDrop;
            panic!("a runaway that panics and then never finishes unwinding");
        }),
        Kind::Cancel => {
            let started = Arc::new(AtomicBool::new(false));
            let s = started.clone();
            // No budget: only the grace period, the same as the others'.
            let h = pool.spawn_with(Budget::unlimited().grace(GRACE), move || {
                s.store(true, Ordering::SeqCst);
                #[allow(clippy::empty_loop)]
                loop {}
            });
            while !started.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            h.cancel();
            h
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Keep the panic message of the `unwinding` kind off the terminal.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let ours = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|s| s.starts_with("a runaway"));
        if !ours {
            default_hook(info);
        }
    }));
    let pool = Pool::builder()
        .max_frozen(4 * KINDS.len() * ROUNDS)
        // A panicking task is frozen in its destructors after this much CPU time (the
        // default is 1 s, for destructors that are merely slow).
        .max_freeze_deferral(Duration::from_millis(1))
        .build()?;
    let shared = Arc::new(Shared {
        dropped: Arc::new(AtomicUsize::new(0)),
        mutex: Arc::new(Mutex::new(0)),
        poisoned_seen: AtomicUsize::new(0),
    });

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
            let h = spawn_runaway(&pool, kind, &shared);
            let (shared, handle) = (shared.clone(), pool.handle());
            joiners.push((
                kind,
                std::thread::spawn(move || {
                    let result = h.join();
                    let returned = Instant::now();
                    if kind == Kind::Mutex {
                        let m = shared.mutex.clone();
                        let later = handle.spawn(move || m.lock().is_err());
                        if matches!(later.join(), Ok(true)) {
                            shared.poisoned_seen.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    (result, returned)
                }),
            ));
            std::thread::sleep(SPACING);
        }
        if round == 0 {
            println!("round 1 of {ROUNDS} started; the rest follow");
        }
    }

    let mut by_kind: Vec<(Kind, Vec<u128>, String)> = KINDS
        .iter()
        .map(|&k| (k, Vec::new(), String::new()))
        .collect();
    let (mut killed, mut cancelled, mut frozen, mut not_killed) = (0, 0, 0, 0);
    let mut latencies = Vec::new();
    for (kind, joiner) in joiners {
        let (result, returned) = joiner.join().expect("joiner thread");
        let entry = by_kind.iter_mut().find(|(k, _, _)| *k == kind).unwrap();
        match result.as_ref().err().and_then(JoinError::killed) {
            Some(k) => {
                killed += 1;
                match k.how() {
                    KillHow::Cancelled => cancelled += 1,
                    _ => frozen += 1,
                }
                let latency = returned
                    .saturating_duration_since(k.expired_at())
                    .as_micros();
                latencies.push(latency);
                entry.1.push(latency);
                entry.2 = format!("{:?} / {:?}", k.reason(), k.how());
            }
            None => not_killed += 1,
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (good_ok, good_total) = generator.join().expect("generator thread");

    println!();
    println!(
        "{:<11} {:>5} {:>14} {:>14}   outcome",
        "kind", "n", "p50 latency", "max latency"
    );
    for (kind, mut lat, outcome) in by_kind {
        lat.sort_unstable();
        let pct =
            |q: f64| lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)));
        println!(
            "{:<11} {:>5} {:>11} µs {:>11} µs   {}",
            format!("{kind:?}").to_lowercase(),
            lat.len(),
            pct(0.5).copied().unwrap_or(0),
            lat.last().copied().unwrap_or(0),
            outcome
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
        "stats: cancelled {} frozen {} (threads {}, {} MiB of stack reserved), by reason: cpu {} \
         wall {} cancel {} stack overflow {}; freezes deferred {} (in libc {}, panicking {}), \
         returns redirected to the freeze (out of the stdout lock or libc) {}",
        stats.cancelled,
        stats.frozen,
        stats.frozen_threads,
        stats.frozen_stack_bytes >> 20,
        stats.kills_cpu_budget,
        stats.kills_wall_deadline,
        stats.kills_cancel,
        stats.kills_stack_overflow,
        stats.freeze_deferred,
        stats.freeze_deferred_library,
        stats.freeze_deferred_panicking,
        stats.freeze_redirected,
    );
    assert_eq!(not_killed, 0, "a runaway was not killed");
    pool.shutdown();

    latencies.sort_unstable();
    let p99 = latencies[((latencies.len() as f64 * 0.99) as usize).min(latencies.len() - 1)];
    let bound = (DEFAULT_QUANTUM + GRACE).as_micros() + 5_000;
    println!(
        "kill latency bound (quantum + grace + 5 ms): {bound} µs; {}",
        if p99 <= bound { "met" } else { "NOT met" }
    );
    println!(
        "SUMMARY kill runaways={killed} cancelled={cancelled} frozen={frozen} good_ok={good_ok}/{good_total} kill_latency_p99_us={p99}"
    );
    Ok(())
}
