//! Dispatch cost: microsched against rayon's `ThreadPool` and `std::thread`, in one run.
//!
//! 1. Round trip: spawn a trivial closure and wait for its result, one at a time.
//!    microsched: `spawn` + `JoinHandle::join`. rayon: `ThreadPool::spawn` + a send on a
//!    long-lived std channel, received by the caller (rayon's `spawn` returns nothing, and
//!    one channel for all tasks is its cheapest way back), received either blocking
//!    (`recv`) or by busy-polling `try_recv`, which spares rayon a futex wake-up; the
//!    ratio is taken against whichever of the two is faster in that round, the strongest
//!    baseline. std: `thread::spawn` + `join`.
//! 2. Tiny tasks: spawn 100,000 trivial closures, then collect every result.
//!
//! The schedulers take turns within each round (interleaved, so machine noise hits all of
//! them alike) and the summary reports medians of the per-round ratios.
//!
//! `cargo bench --bench dispatch` (add `-- --quick` for a short run). The idle spin of
//! microsched's runners can be overridden with `MICROSCHED_SPIN_US` to compare settings.

use std::hint::black_box;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use microsched::Pool;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, trips, thread_trips, tiny) = if quick {
        (3, 2_000, 200, 20_000)
    } else {
        (9, 10_000, 1_000, 100_000)
    };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());

    let mut builder = Pool::builder().workers(workers);
    if let Some(us) = std::env::var("MICROSCHED_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder = builder.spin(Duration::from_micros(us));
    }
    let pool = builder.build().expect("build the microsched pool");
    let rayon = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .expect("build the rayon pool");

    let mut rt_ms = Vec::new();
    let mut rt_rayon = Vec::new();
    let mut rt_rayon_block = Vec::new();
    let mut rt_rayon_poll = Vec::new();
    let mut rt_thread = Vec::new();
    let mut rt_ratio = Vec::new();
    let mut tiny_ms = Vec::new();
    let mut tiny_rayon = Vec::new();
    let mut tiny_ratio = Vec::new();
    let mut p99_ms = Vec::new();
    let mut p99_rayon = Vec::new();

    for round in 0..rounds {
        let ms = round_trips_microsched(&pool, trips);
        let ry_block = round_trips_rayon(&rayon, trips, false);
        let ry_poll = round_trips_rayon(&rayon, trips, true);
        let (b50, p50) = (percentile(&ry_block, 0.5), percentile(&ry_poll, 0.5));
        rt_rayon_block.push(b50);
        rt_rayon_poll.push(p50);
        let ry = if b50 <= p50 { ry_block } else { ry_poll };
        let th = round_trips_thread(thread_trips);
        let (ms50, ry50) = (percentile(&ms, 0.5), percentile(&ry, 0.5));
        rt_ratio.push(ms50 / ry50);
        rt_ms.push(ms50);
        rt_rayon.push(ry50);
        rt_thread.push(percentile(&th, 0.5));
        p99_ms.push(percentile(&ms, 0.99));
        p99_rayon.push(percentile(&ry, 0.99));

        // Alternate which goes first, so neither always meets a cold or a warm machine.
        let (tm, tr) = if round % 2 == 0 {
            let tm = tiny_microsched(&pool, tiny);
            (tm, tiny_rayon_run(&rayon, tiny))
        } else {
            let tr = tiny_rayon_run(&rayon, tiny);
            (tiny_microsched(&pool, tiny), tr)
        };
        tiny_ms.push(tm);
        tiny_rayon.push(tr);
        tiny_ratio.push(tm / tr);
        eprintln!(
            "round {round}: round trip µs microsched {ms50:.2} rayon {b50:.2} (recv) {p50:.2} (try_recv) thread {:.1}; tiny tasks Mtasks/s microsched {:.2} rayon {:.2}",
            rt_thread.last().unwrap(),
            tm / 1e6,
            tr / 1e6
        );
    }

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!();
    println!(
        "environment: {workers} workers (all cores this process may use), Linux {}, {rounds} interleaved rounds, spin {}, \
         cross-thread atomic ping-pong round trip {:.0} ns (measured now)",
        kernel.trim(),
        std::env::var("MICROSCHED_SPIN_US")
            .map(|v| format!("{v} µs (MICROSCHED_SPIN_US)"))
            .unwrap_or_else(|_| format!("{:?} (default)", microsched::DEFAULT_SPIN)),
        ping_pong_ns()
    );
    println!();
    println!("round trip of a trivial closure, spawn → result ({trips} per round; thread: {thread_trips})");
    println!("  {:<22} {:>12} {:>12}", "", "median µs", "p99 µs");
    println!(
        "  {:<22} {:>12.2} {:>12.2}",
        "microsched",
        median(&rt_ms),
        median(&p99_ms)
    );
    println!(
        "  {:<22} {:>12.2} {:>12.2}",
        "rayon (best of the two)",
        median(&rt_rayon),
        median(&p99_rayon)
    );
    println!("  {:<22} {:>12.2}", "rayon, recv", median(&rt_rayon_block));
    println!(
        "  {:<22} {:>12.2}",
        "rayon, try_recv poll",
        median(&rt_rayon_poll)
    );
    println!("  {:<22} {:>12.2}", "std::thread", median(&rt_thread));
    println!();
    println!("{tiny} tiny tasks, all spawned then all collected");
    println!("  {:<12} {:>12}", "", "Mtasks/s");
    println!("  {:<12} {:>12.2}", "microsched", median(&tiny_ms) / 1e6);
    println!("  {:<12} {:>12.2}", "rayon", median(&tiny_rayon) / 1e6);
    println!();
    let stats = pool.stats();
    println!(
        "microsched stats: spawned {} completed {} stolen {} parks {} unparks {}",
        stats.spawned, stats.completed, stats.stolen, stats.parks, stats.unparks
    );
    println!(
        "SUMMARY dispatch ratio_vs_rayon={:.3} microsched_us={:.2} rayon_us={:.2} thread_spawn_us={:.1} tiny_tasks_ratio_vs_rayon={:.3}",
        median(&rt_ratio),
        median(&rt_ms),
        median(&rt_rayon),
        median(&rt_thread),
        median(&tiny_ratio)
    );
}

/// Microseconds per round trip; the first tenth is warm-up and dropped.
fn round_trips_microsched(pool: &Pool, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let start = Instant::now();
        let v = pool.spawn(move || black_box(i)).join().unwrap();
        let elapsed = start.elapsed();
        assert_eq!(v, i);
        if i >= n / 10 {
            out.push(elapsed.as_secs_f64() * 1e6);
        }
    }
    out
}

fn round_trips_rayon(pool: &rayon::ThreadPool, n: usize, poll: bool) -> Vec<f64> {
    let (tx, rx) = mpsc::channel();
    let mut out = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let start = Instant::now();
        let tx = tx.clone();
        pool.spawn(move || tx.send(black_box(i)).unwrap());
        let v = if poll {
            loop {
                match rx.try_recv() {
                    Ok(v) => break v,
                    Err(_) => std::hint::spin_loop(),
                }
            }
        } else {
            rx.recv().unwrap()
        };
        let elapsed = start.elapsed();
        assert_eq!(v, i);
        if i >= n / 10 {
            out.push(elapsed.as_secs_f64() * 1e6);
        }
    }
    out
}

fn round_trips_thread(n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let start = Instant::now();
        let v = std::thread::spawn(move || black_box(i)).join().unwrap();
        let elapsed = start.elapsed();
        assert_eq!(v, i);
        if i >= n / 10 {
            out.push(elapsed.as_secs_f64() * 1e6);
        }
    }
    out
}

/// Tasks per second.
fn tiny_microsched(pool: &Pool, n: usize) -> f64 {
    let start = Instant::now();
    let handles: Vec<_> = (0..n).map(|i| pool.spawn(move || black_box(i))).collect();
    let mut sum = 0usize;
    for h in handles {
        sum = sum.wrapping_add(h.join().unwrap());
    }
    let elapsed = start.elapsed();
    assert_eq!(sum, n * (n - 1) / 2);
    n as f64 / elapsed.as_secs_f64()
}

fn tiny_rayon_run(pool: &rayon::ThreadPool, n: usize) -> f64 {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    for i in 0..n {
        let tx = tx.clone();
        pool.spawn(move || tx.send(black_box(i)).unwrap());
    }
    drop(tx);
    let sum = rx.iter().take(n).fold(0usize, usize::wrapping_add);
    let elapsed = start.elapsed();
    assert_eq!(sum, n * (n - 1) / 2);
    n as f64 / elapsed.as_secs_f64()
}

/// The floor under any hand-off between two threads on this machine: one atomic bounced
/// between two spinning threads, median nanoseconds per round trip.
fn ping_pong_ns() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    const N: u64 = 100_000;
    let flag = Arc::new(AtomicU64::new(0));
    let peer = {
        let flag = flag.clone();
        std::thread::spawn(move || {
            for i in 0..N {
                while flag.load(Ordering::Acquire) != 2 * i + 1 {
                    std::hint::spin_loop();
                }
                flag.store(2 * i + 2, Ordering::Release);
            }
        })
    };
    let mut samples = Vec::with_capacity(N as usize / 100);
    for batch in 0..N / 100 {
        let start = Instant::now();
        for j in 0..100 {
            let i = batch * 100 + j;
            flag.store(2 * i + 1, Ordering::Release);
            while flag.load(Ordering::Acquire) != 2 * i + 2 {
                std::hint::spin_loop();
            }
        }
        samples.push(start.elapsed().as_secs_f64() * 1e9 / 100.0);
    }
    peer.join().unwrap();
    median(&samples)
}

fn percentile(samples: &[f64], q: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}

fn median(samples: &[f64]) -> f64 {
    percentile(samples, 0.5)
}
