//! Dispatch cost: microsched against rayon's `ThreadPool` and `std::thread`, in one run.
//!
//! 1. Round trip: spawn a trivial closure and wait for its result, one at a time.
//!    microsched: `spawn` + `JoinHandle::join`. rayon: `ThreadPool::spawn` + a send on a
//!    long-lived std channel (rayon's `spawn` returns nothing, and one channel for all
//!    tasks is its cheapest way back), received either blocking (`recv`) or by
//!    busy-polling `try_recv`, which spares rayon a futex wake-up; the ratio is taken
//!    against whichever of the two is faster in that round, the strongest baseline. std:
//!    `thread::spawn` + `join`.
//! 2. Round trip after an idle gap: the same, with the caller sleeping 200 µs between
//!    trips, so idle workers have time to go to sleep (this is what the idle spin is for).
//! 3. Tiny tasks: spawn 100,000 trivial closures, then collect every result.
//!
//! Besides wall time, each measurement reports the CPU time the whole process spent per
//! task (all threads): spinning idle workers buy latency with CPU, and this shows the
//! price. The schedulers take turns within each round, in an order that alternates from
//! round to round, and the summary reports medians of the per-round ratios.
//!
//! `cargo bench --bench dispatch` (add `-- --quick` for a short run). The idle spin of
//! microsched's runners can be overridden with `MICROSCHED_SPIN_US` to compare settings.

use std::hint::black_box;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use microsched::Pool;

/// One measurement: per-operation wall times (µs) and process CPU time per operation (µs).
struct Run {
    samples: Vec<f64>,
    cpu_us: f64,
}

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

    let mut rt = Table::default();
    let mut gt = Table::default();
    let mut tt = Table::default();
    for round in 0..rounds {
        // Round trips, in an order that alternates between rounds.
        let mut order: Vec<&str> = vec!["microsched", "rayon recv", "rayon try_recv"];
        if round % 2 == 1 {
            order.reverse();
        }
        for name in order {
            let run = match name {
                "microsched" => round_trips_microsched(&pool, trips),
                "rayon recv" => round_trips_rayon(&rayon, trips, false),
                _ => round_trips_rayon(&rayon, trips, true),
            };
            rt.add(name, run);
        }
        rt.add("std::thread", round_trips_thread(thread_trips));
        rt.ratio_vs_best_rayon("microsched");

        let gap = Duration::from_micros(200);
        let gap_trips = trips / 20;
        let mut order = ["microsched", "rayon recv"];
        if round % 2 == 1 {
            order.reverse();
        }
        for name in order {
            let run = if name == "microsched" {
                gapped(gap_trips, gap, |i| round_trip_microsched(&pool, i))
            } else {
                gapped(gap_trips, gap, |i| round_trip_rayon(&rayon, i))
            };
            gt.add(name, run);
        }

        let mut order = vec!["microsched", "rayon"];
        if round % 2 == 1 {
            order.reverse();
        }
        for name in order {
            let run = match name {
                "microsched" => tiny_microsched(&pool, tiny),
                _ => tiny_rayon_run(&rayon, tiny),
            };
            tt.add(name, run);
        }
        let ratio = tt.last("rayon") / tt.last("microsched"); // time per task: rayon / ours
        tt.ratios.push(ratio);
        eprintln!(
            "round {round}: round trip µs microsched {:.2} rayon {:.2} (recv) {:.2} (try_recv) thread {:.1}; \
             tiny tasks ns/task microsched {:.0} rayon {:.0}",
            rt.last("microsched"),
            rt.last("rayon recv"),
            rt.last("rayon try_recv"),
            rt.last("std::thread"),
            tt.last("microsched") * 1e3,
            tt.last("rayon") * 1e3,
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
    println!(
        "  {:<16} {:>10} {:>10} {:>16}",
        "", "median µs", "p99 µs", "CPU µs per trip"
    );
    for name in ["microsched", "rayon recv", "rayon try_recv", "std::thread"] {
        println!(
            "  {:<16} {:>10.2} {:>10.2} {:>16.2}",
            name,
            median(&rt.medians(name)),
            median(&rt.p99s(name)),
            median(&rt.cpus(name))
        );
    }
    println!();
    println!(
        "round trip after a 200 µs idle gap ({} per round)",
        trips / 20
    );
    println!("  {:<16} {:>10} {:>10}", "", "median µs", "p99 µs");
    for name in ["microsched", "rayon recv"] {
        println!(
            "  {:<16} {:>10.2} {:>10.2}",
            name,
            median(&gt.medians(name)),
            median(&gt.p99s(name))
        );
    }
    println!();
    println!("{tiny} tiny tasks, all spawned then all collected");
    println!("  {:<16} {:>10} {:>16}", "", "Mtasks/s", "CPU µs per task");
    for name in ["microsched", "rayon"] {
        println!(
            "  {:<16} {:>10.2} {:>16.3}",
            name,
            1.0 / median(&tt.medians(name)),
            median(&tt.cpus(name))
        );
    }
    println!();
    let stats = pool.stats();
    println!(
        "microsched stats: spawned {} completed {} steals {} parks {} unparks {}",
        stats.spawned, stats.completed, stats.stolen, stats.parks, stats.unparks
    );
    println!(
        "SUMMARY dispatch ratio_vs_rayon={:.3} microsched_us={:.2} rayon_us={:.2} thread_spawn_us={:.1} tiny_tasks_ratio_vs_rayon={:.3} tiny_cpu_us_per_task_microsched={:.3} tiny_cpu_us_per_task_rayon={:.3}",
        median(&rt.ratios),
        median(&rt.medians("microsched")),
        median(&rt.best_rayon),
        median(&rt.medians("std::thread")),
        median(&tt.ratios),
        median(&tt.cpus("microsched")),
        median(&tt.cpus("rayon"))
    );
}

/// Per-scheduler results of every round, and per-round ratios.
#[derive(Default)]
struct Table {
    runs: Vec<(&'static str, f64, f64, f64)>, // name, median, p99, cpu per op
    ratios: Vec<f64>,
    best_rayon: Vec<f64>,
}

impl Table {
    fn add(&mut self, name: &'static str, run: Run) {
        let (m, p) = (
            percentile(&run.samples, 0.5),
            percentile(&run.samples, 0.99),
        );
        self.runs.push((name, m, p, run.cpu_us));
    }

    fn last(&self, name: &str) -> f64 {
        self.runs.iter().rev().find(|r| r.0 == name).unwrap().1
    }

    fn column(&self, name: &str, f: impl Fn(&(&str, f64, f64, f64)) -> f64) -> Vec<f64> {
        self.runs.iter().filter(|r| r.0 == name).map(f).collect()
    }

    fn medians(&self, name: &str) -> Vec<f64> {
        self.column(name, |r| r.1)
    }

    fn p99s(&self, name: &str) -> Vec<f64> {
        self.column(name, |r| r.2)
    }

    fn cpus(&self, name: &str) -> Vec<f64> {
        self.column(name, |r| r.3)
    }

    /// This round's ratio of `ours` to the faster rayon variant.
    fn ratio_vs_best_rayon(&mut self, ours: &str) {
        let best = self.last("rayon recv").min(self.last("rayon try_recv"));
        self.best_rayon.push(best);
        self.ratios.push(self.last(ours) / best);
    }
}

/// CPU time of the whole process (every thread), in µs.
fn process_cpu_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

/// Runs `n` timed operations after `n / 10` untimed warm-up ones.
fn measure(n: usize, mut op: impl FnMut(usize)) -> Run {
    for i in 0..n / 10 {
        op(i);
    }
    let mut samples = Vec::with_capacity(n);
    let cpu = process_cpu_us();
    for i in 0..n {
        let start = Instant::now();
        op(i);
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Run {
        samples,
        cpu_us: (process_cpu_us() - cpu) / n as f64,
    }
}

fn round_trips_microsched(pool: &Pool, n: usize) -> Run {
    measure(n, |i| {
        let v = pool.spawn(move || black_box(i)).join().unwrap();
        assert_eq!(v, i);
    })
}

fn round_trips_rayon(pool: &rayon::ThreadPool, n: usize, poll: bool) -> Run {
    let (tx, rx) = mpsc::channel();
    measure(n, |i| {
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
        assert_eq!(v, i);
    })
}

/// One round trip per call, timed by the caller.
fn round_trip_microsched(pool: &Pool, i: usize) {
    assert_eq!(pool.spawn(move || black_box(i)).join().unwrap(), i);
}

fn round_trip_rayon(pool: &rayon::ThreadPool, i: usize) {
    let (tx, rx) = mpsc::channel();
    pool.spawn(move || tx.send(black_box(i)).unwrap());
    assert_eq!(rx.recv().unwrap(), i);
}

/// `n` round trips, each after the caller slept for `gap` (not timed).
fn gapped(n: usize, gap: Duration, mut trip: impl FnMut(usize)) -> Run {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        std::thread::sleep(gap);
        let start = Instant::now();
        trip(i);
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Run {
        samples,
        cpu_us: f64::NAN, // dominated by the gaps; not reported
    }
}

fn round_trips_thread(n: usize) -> Run {
    measure(n, |i| {
        let v = std::thread::spawn(move || black_box(i)).join().unwrap();
        assert_eq!(v, i);
    })
}

/// One sample: µs per task over a batch of `n`.
fn tiny_microsched(pool: &Pool, n: usize) -> Run {
    let mut run = measure(1, |_| {
        let handles: Vec<_> = (0..n).map(|i| pool.spawn(move || black_box(i))).collect();
        let mut sum = 0usize;
        for h in handles {
            sum = sum.wrapping_add(h.join().unwrap());
        }
        assert_eq!(sum, n * (n - 1) / 2);
    });
    per_task(&mut run, n);
    run
}

fn tiny_rayon_run(pool: &rayon::ThreadPool, n: usize) -> Run {
    let mut run = measure(1, |_| {
        let (tx, rx) = mpsc::channel();
        for i in 0..n {
            let tx = tx.clone();
            pool.spawn(move || tx.send(black_box(i)).unwrap());
        }
        drop(tx);
        let sum = rx.iter().take(n).fold(0usize, usize::wrapping_add);
        assert_eq!(sum, n * (n - 1) / 2);
    });
    per_task(&mut run, n);
    run
}

fn per_task(run: &mut Run, n: usize) {
    for s in &mut run.samples {
        *s /= n as f64;
    }
    run.cpu_us /= n as f64;
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
