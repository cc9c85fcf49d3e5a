//! What preemption costs and what it buys, in one run.
//!
//! 1. **Bare timer expiry**: a CPU-bound thread pinned to a core does a fixed amount of
//!    work, with and without a periodic per-thread `CLOCK_MONOTONIC` timer (100 µs) whose
//!    handler is empty. Extra wall time divided by expiries = what one expiry costs on this
//!    machine (the environment line: about 19 µs on the VMs this was written on, most of it
//!    the virtualised timer interrupt).
//! 2. **Expiry through microsched's handler**: a one-slot pool with the `Monotonic` clock
//!    at a 250 µs quantum runs 50 µs tasks (fixed work, so not handed off), against the
//!    same pool with preemption off. Extra wall time divided by the handler's tick count.
//! 3. **Tax**: batches of fixed-work CPU tasks on every core, pool at default settings
//!    against preemption off, in interleaved rounds. Throughput lost = 1 − t_off / t_on,
//!    median over rounds. Two batches: heavy-tailed (90 % 20 µs, 9 % 200 µs, 1 % 10 ms:
//!    every cost of the mechanism, handoffs of the long tasks included) and uniform 50 µs
//!    (ticks and per-task bookkeeping alone). The summary reports the larger of the two.
//! 4. **Head-of-line**: one slot; a runaway task starts, 20 short tasks are spawned right
//!    behind it; each short task's start delay (start − spawn) is recorded, over many
//!    trials, each after an idle gap of a random 0–6 ms (so runaways start at every phase
//!    of the kernel tick, and on runners both asleep and still spinning), and back to back
//!    (the worst phase). Default settings, the `Monotonic` clock, and preemption off (FCFS)
//!    for comparison. The summary reports the worse p99 of the two default rows.
//!
//! `cargo bench --bench preempt` (add `-- --quick` for a short run). Ends with one
//! `SUMMARY preempt ...` line. `MICROSCHED_QUANTUM_US=<µs>` replaces the default quantum
//! in the "default" pools, to compare settings.

#[path = "common/sys.rs"]
mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use microsched::{Builder, Pool, TimerClock, DEFAULT_QUANTUM};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 15 };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per_us = calibrate();
    println!(
        "preempt bench: {workers} cores, quantum {} µs, {rounds} rounds{}",
        quantum().as_micros(),
        if quick { " (quick)" } else { "" }
    );

    // 1 and 2, interleaved.
    let mut raw = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..rounds {
        raw.push(bare_expiry_cost(per_us));
        ours.push(handler_expiry_cost(per_us));
    }
    let raw_us = median(&mut raw);
    let ours_us = median(&mut ours);
    println!(
        "\nenv: bare timer expiry {raw_us:.1} µs (100 µs CLOCK_MONOTONIC timer, empty handler)"
    );
    println!("cost per expiry through microsched's handler: {ours_us:.1} µs");

    // 3.
    let tasks = if quick { 2_000 } else { 8_000 };
    let on = quantum_override(Pool::builder())
        .workers(workers)
        .build()
        .expect("pool");
    let off = Pool::builder()
        .workers(workers)
        .preemption(false)
        .build()
        .expect("pool");
    println!(
        "\ntax: throughput lost at the default settings against preemption off, {workers} slots"
    );
    let mut worst_tax = f64::MIN;
    for (name, batch) in [
        (
            "heavy-tailed (1% 10 ms, 9% 200 µs, 90% 20 µs)",
            heavy_tailed(tasks),
        ),
        (
            "uniform 50 µs (no task reaches the quantum)",
            vec![50.0; tasks],
        ),
    ] {
        let before = on.stats();
        let mut taxes = Vec::new();
        let mut cpu_extra = Vec::new();
        let (mut t_on_all, mut t_off_all) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let ((t_on, c_on), (t_off, c_off)) = if round % 2 == 0 {
                let a = run_batch(&on, &batch, per_us);
                (a, run_batch(&off, &batch, per_us))
            } else {
                let b = run_batch(&off, &batch, per_us);
                (run_batch(&on, &batch, per_us), b)
            };
            taxes.push((1.0 - t_off / t_on) * 100.0);
            cpu_extra.push((c_on / c_off - 1.0) * 100.0);
            t_on_all.push(t_on);
            t_off_all.push(t_off);
        }
        let after = on.stats();
        let tax = median(&mut taxes);
        worst_tax = worst_tax.max(tax);
        println!(
            "  {name}: {tasks} tasks, on {:.1} ms, off {:.1} ms; lost {tax:.2} % (median of per-round ratios: {})",
            median(&mut t_on_all) * 1e3,
            median(&mut t_off_all) * 1e3,
            taxes.iter().map(|t| format!("{t:.1}")).collect::<Vec<_>>().join(" "),
        );
        println!(
            "    process CPU time per batch, on vs off: {:+.2} % (median)",
            median(&mut cpu_extra)
        );
        println!(
            "    per round: {} ticks, {} handoffs, {} overruns without a standby at hand",
            (after.ticks - before.ticks) / rounds as u64,
            (after.handoffs - before.handoffs) / rounds as u64,
            (after.no_standby - before.no_standby) / rounds as u64,
        );
    }
    let tax = worst_tax;
    drop(on);
    drop(off);

    // 4.
    let trials = if quick { 30 } else { 300 };
    // The one-slot pools below run on the first core; the spawner stays off it, or it
    // would share the core with the runaway and only get to spawn once it was demoted.
    // (A pool's cores must be in its builder's affinity mask: each pool is built first,
    // then the spawner pins itself, and unpins after.)
    let cores = common::allowed_cores();
    println!("\nhead-of-line: start delay of 20 short tasks spawned behind a runaway, one slot, {trials} trials (µs)");
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9}",
        "", "p50", "p99", "max", "handoffs"
    );
    let mut hol_p99 = 0.0f64;
    let mut hol_kept_p99 = f64::NAN;
    // A runaway runs at least 20 ms whether or not the short tasks are done (stopped as
    // soon as they were, it would be a task that ends just after its quantum, which the
    // pool learns to let keep its core: the last two rows).
    let runaway = (Duration::from_millis(20), Duration::from_secs(5));
    let medium = (Duration::from_millis(1), Duration::from_millis(1));
    for (name, builder, gaps, (least, most)) in [
        (
            "default (Contention clock)",
            quantum_override(Pool::builder()),
            true,
            runaway,
        ),
        (
            "default, back to back",
            quantum_override(Pool::builder()),
            false,
            runaway,
        ),
        (
            "Monotonic clock",
            Pool::builder().timer_clock(TimerClock::Monotonic),
            true,
            runaway,
        ),
        (
            "preemption off (FCFS)",
            Pool::builder().preemption(false),
            true,
            (Duration::from_millis(20), Duration::from_millis(20)),
        ),
        (
            "default, behind 1 ms tasks",
            quantum_override(Pool::builder()),
            true,
            medium,
        ),
        (
            "keep_quanta(1), behind 1 ms tasks",
            quantum_override(Pool::builder()).keep_quanta(1),
            true,
            medium,
        ),
    ] {
        let fcfs = name.starts_with("preemption off");
        let (mut delays, handoffs) =
            head_of_line(builder, &cores, !fcfs, gaps, trials, least, most);
        let p99 = percentile(&mut delays, 0.99);
        println!(
            "{name:<34} {:>9.0} {p99:>9.0} {:>9.0} {handoffs:>9}",
            percentile(&mut delays, 0.50),
            percentile(&mut delays, 1.0)
        );
        if name == "default, behind 1 ms tasks" {
            hol_kept_p99 = p99;
        } else if name.starts_with("default") {
            hol_p99 = hol_p99.max(p99);
        }
    }
    println!(
        "(back to back: each trial starts right after the last one's handoff, with the runners"
    );
    println!(
        " still awake. The default clock arms the runaway's one-shot when the short tasks are"
    );
    println!(" spawned behind it. With preemption off the runaway was cut to 20 ms. Behind");
    println!(" 1 ms tasks, the default pool learns that tasks past their quantum end soon after,");
    println!(" and lets them keep their core, up to 4 quanta: a handoff would cost more than the");
    println!(" rest of their run. keep_quanta(1) makes the quantum strict.)");

    println!(
        "\nSUMMARY preempt quantum_us={} tax_pct={tax:.2} cost_per_expiry_us={ours_us:.1} raw_expiry_us={raw_us:.1} hol_p99_us={hol_p99:.0} hol_p99_us_behind_kept_tasks={hol_kept_p99:.0}",
        quantum().as_micros()
    );
}

/// The quantum under test: the default, or `MICROSCHED_QUANTUM_US` to compare settings.
fn quantum() -> Duration {
    std::env::var("MICROSCHED_QUANTUM_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(DEFAULT_QUANTUM, Duration::from_micros)
}

fn quantum_override(builder: Builder) -> Builder {
    builder.quantum(quantum())
}

/// Fixed CPU work: `iters` rounds of a dependent integer chain.
fn burn(iters: u64) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..iters {
        x = black_box(x.rotate_left(5) ^ i).wrapping_mul(0xA24B_AED4_963E_E407);
    }
    x
}

/// Rounds of `burn` per microsecond on this machine (best of several tries).
fn calibrate() -> f64 {
    let iters = 2_000_000;
    let best = (0..5)
        .map(|_| {
            let t = Instant::now();
            black_box(burn(iters));
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min);
    iters as f64 / (best * 1e6)
}

fn work_for(us: f64, per_us: f64) -> u64 {
    (us * per_us) as u64
}

/// Section 1: µs of wall time per bare expiry, on the last core.
fn bare_expiry_cost(per_us: f64) -> f64 {
    let work = work_for(200_000.0, per_us);
    common::bare_expiry_cost_us(
        100,
        libc::SIGRTMIN() + 7,
        common::allowed_cores().last().copied(),
        move || {
            black_box(burn(work));
        },
    )
}

/// Section 2: µs of wall time per tick through microsched's handler.
fn handler_expiry_cost(per_us: f64) -> f64 {
    let work = work_for(50.0, per_us);
    let tasks = 4_000;
    let run = |builder: Builder| {
        let pool = builder.workers(1).build().expect("pool");
        // Warm up: threads started, timers created.
        pool.spawn(move || burn(work)).join().expect("task");
        let t = Instant::now();
        let handles: Vec<_> = (0..tasks).map(|_| pool.spawn(move || burn(work))).collect();
        for h in handles {
            black_box(h.join().expect("task"));
        }
        let wall = t.elapsed().as_secs_f64();
        (wall, pool.stats())
    };
    let (off, _) = run(Pool::builder().preemption(false));
    let (on, stats) = run(Pool::builder()
        .quantum(Duration::from_micros(250))
        .timer_clock(TimerClock::Monotonic));
    // A rare task stretched past the quantum (by the host, or by ticks landing in it) is
    // handed off; those cost more than a tick, so rounds with many are not clean.
    if stats.handoffs * 100 > stats.ticks {
        eprintln!(
            "(handler expiry round with {} handoffs in {} ticks)",
            stats.handoffs, stats.ticks
        );
    }
    (on - off) * 1e6 / stats.ticks.max(1) as f64
}

/// Section 3's batch: task lengths in µs.
fn heavy_tailed(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| match i % 100 {
            0 => 10_000.0,
            1..=9 => 200.0,
            _ => 20.0,
        })
        .collect()
}

/// Runs the batch; returns its wall time and the process CPU time it took (seconds).
fn run_batch(pool: &Pool, batch: &[f64], per_us: f64) -> (f64, f64) {
    let cpu = process_cpu();
    let t = Instant::now();
    let handles: Vec<_> = batch
        .iter()
        .map(|&us| {
            let work = work_for(us, per_us);
            pool.spawn(move || burn(work))
        })
        .collect();
    for h in handles {
        black_box(h.join().expect("task"));
    }
    (t.elapsed().as_secs_f64(), process_cpu() - cpu)
}

/// CPU time of the whole process so far, in seconds (all threads, user and system).
fn process_cpu() -> f64 {
    common::clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID) as f64 * 1e-9
}

/// Section 4: start delays (µs) of short tasks behind a long task, and the handoffs made.
/// The long task runs at least `least`, then until the short tasks are done, at most
/// `most` in all.
fn head_of_line(
    builder: Builder,
    cores: &[usize],
    preemptive: bool,
    gaps: bool,
    trials: usize,
    least: Duration,
    most: Duration,
) -> (Vec<f64>, u64) {
    let pool = builder.workers(1).cores([cores[0]]).build().expect("pool");
    common::set_affinity(&cores[cores.len() - 1..]);
    let mut delays = Vec::new();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..trials {
        // Start each trial as a pool that has been idle a moment: no carrier left from
        // the last trial, a standby parked.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stats = pool.stats();
            let settled = stats.carriers == 0 && (!preemptive || stats.standbys >= 1);
            if settled || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let gap = Duration::from_micros(if gaps { rng % 6_000 } else { 0 });
        let t = Instant::now();
        while t.elapsed() < gap {
            std::thread::sleep(
                gap.saturating_sub(t.elapsed())
                    .min(Duration::from_micros(500)),
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicBool::new(false));
        let long = {
            let (stop, started) = (stop.clone(), started.clone());
            pool.spawn(move || {
                started.store(true, Ordering::Release);
                let t = Instant::now();
                while t.elapsed() < least || (!stop.load(Ordering::Relaxed) && t.elapsed() < most) {
                    black_box(burn(100));
                }
            })
        };
        while !started.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        let shorts: Vec<_> = (0..20)
            .map(|_| {
                let spawned = Instant::now();
                pool.spawn(move || spawned.elapsed())
            })
            .collect();
        for s in shorts {
            delays.push(s.join().expect("short task").as_secs_f64() * 1e6);
        }
        stop.store(true, Ordering::Relaxed);
        long.join().expect("runaway");
    }
    let handoffs = pool.stats().handoffs;
    common::set_affinity(cores);
    (delays, handoffs)
}

fn median(v: &mut [f64]) -> f64 {
    percentile(v, 0.5)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}
