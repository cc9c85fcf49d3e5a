//! Awaiting tasks from async code: microsched's `JoinHandle` as a `Future`, against the
//! two bridges a tokio service uses without it, in one run.
//!
//! Each round spawns `N` trivial closures from a task on a current-thread tokio runtime
//! (the service's reactor) and awaits every result, in order:
//!
//! - **await**: `pool.spawn(f)`, then `handle.await`;
//! - **rayon + oneshot**: `rayon_pool.spawn(move || tx.send(f()))`, then `rx.await` (the
//!   usual bridge from a CPU pool to async code; rayon's worker wakes the reactor);
//! - **spawn_blocking + join**: `pool.spawn(f)`, then
//!   `tokio::task::spawn_blocking(move || handle.join()).await` (what a user of a pool whose
//!   handle is not a future must do: one blocking thread per pending join).
//!
//! Then round trips, one task at a time (spawn, await, the next), where every await
//! finds its task unfinished and costs a wake: await against rayon + oneshot.
//!
//! Both pools have as many workers as the machine has cores. The three take turns within
//! each round, in an order that rotates from round to round; the SUMMARY reports the
//! median round time of each (µs for `N` tasks) and the median of the per-round ratios of
//! await to rayon + oneshot. Process CPU per task is reported beside the wall times.
//!
//! `cargo bench --bench async` (add `-- --quick` for a short run).

use std::time::Instant;

use microsched::Pool;

#[path = "common/sys.rs"]
#[allow(dead_code)]
mod sys;

const N: usize = 1_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Way {
    Await,
    RayonOneshot,
    SpawnBlocking,
    /// One at a time: spawn, await, the next (every await finds its task unfinished, so
    /// each costs a wake).
    AwaitTrip,
    RayonOneshotTrip,
}

const WAYS: [Way; 3] = [Way::Await, Way::RayonOneshot, Way::SpawnBlocking];
const TRIPS: [Way; 2] = [Way::AwaitTrip, Way::RayonOneshotTrip];

fn work(i: u64) -> u64 {
    std::hint::black_box(i).wrapping_mul(2_654_435_761)
}

/// One round of `way`: wall µs for `N` tasks and process CPU µs per task.
fn round(
    way: Way,
    rt: &tokio::runtime::Runtime,
    pool: &Pool,
    rayon: &rayon::ThreadPool,
) -> (f64, f64) {
    let cpu0 = sys::clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID);
    let t0 = Instant::now();
    let sum = rt.block_on(async {
        let mut sum = 0u64;
        match way {
            Way::Await => {
                let handles: Vec<_> = (0..N as u64).map(|i| pool.spawn(move || work(i))).collect();
                for h in handles {
                    sum = sum.wrapping_add(h.await.expect("a trivial task"));
                }
            }
            Way::RayonOneshot => {
                let receivers: Vec<_> = (0..N as u64)
                    .map(|i| {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        rayon.spawn(move || {
                            let _ = tx.send(work(i));
                        });
                        rx
                    })
                    .collect();
                for rx in receivers {
                    sum = sum.wrapping_add(rx.await.expect("a rayon task"));
                }
            }
            Way::SpawnBlocking => {
                let joins: Vec<_> = (0..N as u64)
                    .map(|i| {
                        let h = pool.spawn(move || work(i));
                        tokio::task::spawn_blocking(move || h.join())
                    })
                    .collect();
                for j in joins {
                    let value = j.await.expect("a blocking join").expect("a trivial task");
                    sum = sum.wrapping_add(value);
                }
            }
            Way::AwaitTrip => {
                for i in 0..N as u64 {
                    let value = pool.spawn(move || work(i)).await;
                    sum = sum.wrapping_add(value.expect("a trivial task"));
                }
            }
            Way::RayonOneshotTrip => {
                for i in 0..N as u64 {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    rayon.spawn(move || {
                        let _ = tx.send(work(i));
                    });
                    sum = sum.wrapping_add(rx.await.expect("a rayon task"));
                }
            }
        }
        sum
    });
    let wall_us = t0.elapsed().as_secs_f64() * 1e6;
    let cpu_us = (sys::clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu0) as f64 / 1e3;
    let expected = (0..N as u64).fold(0u64, |s, i| s.wrapping_add(work(i)));
    assert_eq!(sum, expected, "{way:?}: every result");
    (wall_us, cpu_us / N as f64)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 7 } else { 41 };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pool = Pool::builder()
        .workers(workers)
        .build()
        .expect("build the microsched pool");
    let rayon = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .expect("build the rayon pool");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("build the tokio runtime");

    // Warm-up: every way once (threads started, the waker slot's thread, allocator pools).
    for way in WAYS.iter().chain(&TRIPS) {
        round(*way, &rt, &pool, &rayon);
    }
    let mut trip_wall = [Vec::new(), Vec::new()];
    let mut trip_ratios = Vec::new();
    let mut wall = [Vec::new(), Vec::new(), Vec::new()];
    let mut cpu = [Vec::new(), Vec::new(), Vec::new()];
    let mut ratios = Vec::new();
    for r in 0..rounds {
        let mut this = [0.0; 3];
        for k in 0..3 {
            let i = (r + k) % 3;
            let (w, c) = round(WAYS[i], &rt, &pool, &rayon);
            wall[i].push(w);
            cpu[i].push(c);
            this[i] = w;
        }
        ratios.push(this[0] / this[1]);
        let mut trip = [0.0; 2];
        for k in 0..2 {
            let i = (r + k) % 2;
            trip[i] = round(TRIPS[i], &rt, &pool, &rayon).0;
            trip_wall[i].push(trip[i]);
        }
        trip_ratios.push(trip[0] / trip[1]);
    }
    println!(
        "{} workers, {N} trivial tasks per round, {rounds} rounds (medians; spread p10-p90)",
        workers
    );
    println!(
        "{:<24} {:>12} {:>18} {:>16}",
        "way", "round µs", "spread µs", "CPU µs/task"
    );
    for i in 0..3 {
        let mut sorted = wall[i].clone();
        sorted.sort_by(f64::total_cmp);
        let p10 = sorted[sorted.len() / 10];
        let p90 = sorted[sorted.len() * 9 / 10];
        println!(
            "{:<24} {:>12.0} {:>8.0}-{:<9.0} {:>16.2}",
            match WAYS[i] {
                Way::Await => "await",
                Way::RayonOneshot => "rayon + oneshot",
                Way::SpawnBlocking => "spawn_blocking + join",
                Way::AwaitTrip => "await, one at a time",
                Way::RayonOneshotTrip => "rayon + oneshot, one at a time",
            },
            median(&wall[i]),
            p10,
            p90,
            median(&cpu[i])
        );
    }
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "await / rayon + oneshot per round: median {:.2}, p10 {:.2}, p90 {:.2}",
        median(&ratios),
        sorted[sorted.len() / 10],
        sorted[sorted.len() * 9 / 10]
    );
    println!(
        "round trips (spawn, await, the next; {N} per round): await {:.0} µs, rayon + oneshot {:.0} µs; ratio median {:.2}",
        median(&trip_wall[0]),
        median(&trip_wall[1]),
        median(&trip_ratios)
    );
    println!(
        "SUMMARY async await_us={:.0} rayon_oneshot_us={:.0} spawn_blocking_us={:.0} ratio_vs_rayon_oneshot={:.2}",
        median(&wall[0]),
        median(&wall[1]),
        median(&wall[2]),
        median(&ratios)
    );
}
