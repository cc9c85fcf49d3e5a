//! A storm of runaways of every kind among a flood of good tasks: every kill must end,
//! every good result must be right, and the process must come out of it usable.
//!
//! `cargo run --release --example killstorm [runaways] [good tasks]`
//!
//! `cargo run --release --example killstorm -- --hostile`: 1,000 freezes while other
//! threads use every process-wide facility of std's (see `support/hostile.rs`).
//!
//! 10,000 runaways (the fifteen kinds of `examples/runaway.rs`, in turn) and 100,000
//! good tasks by default, spawned from four threads onto a two-slot pool. Each runaway has
//! 2 ms of CPU and 20 ms of wall-clock time, a grace period of 2 ms, and the pool's
//! maximum freeze deferral is 50 ms: so every join must resolve within about 75 ms of the
//! budget running out (grace + deferral + the monitor's period), and one still waiting
//! 10 s later counts as hung.
//!
//! It prints a table of outcomes per kind (with the time from each budget's expiry to its
//! joiner having the result: joiners take runaways in spawn order, so that includes
//! waiting behind earlier joins; `examples/runaway.rs` measures the kill itself), checks
//! the counts in `Pool::stats` against
//! what the joins said, checks that the process still prints, panics and catches, spawns
//! and reads its environment, shuts the pool down, and ends with
//! `SUMMARY killstorm runaways=<n> resolved=<n> abandoned=<a> hung=0 good_ok=<ok>/<total>`.
//! It exits with an error if any of that fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use microsched::{Budget, JoinError, JoinHandle, KillHow, Pool};

#[path = "support/runaways.rs"]
mod runaways;

#[path = "support/hostile.rs"]
mod hostile;

use runaways::{Kind, KINDS};

const GRACE: Duration = Duration::from_millis(2);
const MAX_DEFERRAL: Duration = Duration::from_millis(50);
/// A runaway's join still unresolved this long after it was spawned is hung.
const HUNG: Duration = Duration::from_secs(10);
/// Good-task spawners.
const SPAWNERS: u64 = 4;
/// Threads joining runaways, in spawn order.
const JOINERS: usize = 8;

#[derive(Default, Clone)]
struct Row {
    outcomes: [u64; 3],
    hung: u64,
    other: u64,
    latencies: Vec<u128>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("--hostile") {
        return hostile::main();
    }
    let mut args = std::env::args().skip(1);
    let runaway_count: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let good_count: u64 = args.next().map_or(Ok(100_000), |a| a.parse())?;
    runaways::quiet_unwinding_panics();
    // The abandoned kinds run on for 300 ms, spinning 50 µs of every ms.
    runaways::configure(Duration::from_millis(300), 50);
    let pool = Pool::builder()
        .max_frozen(2 * runaway_count)
        .max_freeze_deferral(MAX_DEFERRAL)
        .build()?;
    let shared = runaways::Shared::new();
    let budget = Budget::cpu(Duration::from_millis(2))
        .and_wall(Duration::from_millis(20))
        .grace(GRACE);
    let started = Instant::now();

    // Good tasks from four threads, each result checked; runaways come in between.
    let good_ok = Arc::new(AtomicU64::new(0));
    let spawners: Vec<_> = (0..SPAWNERS)
        .map(|t| {
            let (handle, good_ok) = (pool.handle(), good_ok.clone());
            std::thread::spawn(move || {
                let mine = good_count / SPAWNERS + u64::from(t < good_count % SPAWNERS);
                let mut pending = Vec::with_capacity(256);
                for i in 0..mine {
                    let n = i * SPAWNERS + t;
                    pending.push((n, handle.spawn(move || n.wrapping_mul(0x9E37_79B9) >> 5)));
                    if pending.len() == 256 {
                        check(&mut pending, &good_ok);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                check(&mut pending, &good_ok);
                mine
            })
        })
        .collect();

    // Joiners: each takes runaways in spawn order and waits for them, with a deadline.
    let (tx, rx) = mpsc::channel::<(Kind, JoinHandle<u64>, Instant)>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let joiners: Vec<_> = (0..JOINERS)
        .map(|_| {
            let rx = rx.clone();
            std::thread::spawn(move || {
                let mut rows = vec![Row::default(); KINDS.len()];
                loop {
                    let next = rx.lock().unwrap().recv();
                    let Ok((kind, h, spawned)) = next else {
                        return rows;
                    };
                    let row = &mut rows[KINDS.iter().position(|&k| k == kind).unwrap()];
                    let left = HUNG.saturating_sub(spawned.elapsed());
                    match h.join_timeout(left) {
                        Err(_) => row.hung += 1,
                        Ok(Err(JoinError::Killed(k))) => {
                            let how = match k.how() {
                                KillHow::Cancelled => 0,
                                KillHow::Frozen => 1,
                                _ => 2,
                            };
                            row.outcomes[how] += 1;
                            row.latencies.push(k.expired_at().elapsed().as_micros());
                        }
                        Ok(other) => {
                            eprintln!(
                                "a {} runaway was not killed: {other:?} ({} ms after its spawn)",
                                kind.name(),
                                spawned.elapsed().as_millis()
                            );
                            row.other += 1;
                        }
                    }
                }
            })
        })
        .collect();

    // Runaways, one every 2 ms: about what two cores can kill (most use their 2 ms of CPU
    // budget and part of their grace), so they do not pile up in the queue, where a
    // runaway's time would not count yet.
    let spacing = Duration::from_micros(2000);
    let handle = pool.handle();
    for i in 0..runaway_count {
        let kind = KINDS[i % KINDS.len()];
        let h = runaways::spawn(&handle, kind, budget, &shared);
        tx.send((kind, h, Instant::now()))?;
        std::thread::sleep(spacing);
        if (i + 1) % 1000 == 0 {
            eprintln!(
                "{} runaways spawned ({:.1} s)",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    drop(tx);
    let good_total: u64 = spawners.into_iter().map(|s| s.join().unwrap()).sum();
    let mut rows = vec![Row::default(); KINDS.len()];
    for joiner in joiners {
        for (row, theirs) in rows.iter_mut().zip(joiner.join().unwrap()) {
            for (mine, theirs) in row.outcomes.iter_mut().zip(theirs.outcomes) {
                *mine += theirs;
            }
            row.hung += theirs.hung;
            row.other += theirs.other;
            row.latencies.extend(theirs.latencies);
        }
    }
    let good_ok = good_ok.load(Ordering::SeqCst);
    // The abandoned kinds give up on their own after a while: their threads exit (and a
    // `display` runaway's hold on stdout ends).
    std::thread::sleep(runaways::give_up_after() * 2);

    println!(
        "{:<12} {:>6} {:>9} {:>7} {:>9} {:>5} {:>12} {:>12}   expected",
        "kind", "n", "cancelled", "frozen", "abandoned", "hung", "join p50 µs", "join p99 µs"
    );
    let (mut total, mut resolved, mut abandoned, mut hung, mut other) = (0, 0, 0, 0, 0);
    let mut by_how = [0u64; 3];
    for (kind, row) in KINDS.iter().zip(&mut rows) {
        row.latencies.sort_unstable();
        let n = row.outcomes.iter().sum::<u64>() + row.hung + row.other;
        let (expected, why) = kind.expected();
        println!(
            "{:<12} {:>6} {:>9} {:>7} {:>9} {:>5} {:>12} {:>12}   {expected:?} {why}",
            kind.name(),
            n,
            row.outcomes[0],
            row.outcomes[1],
            row.outcomes[2],
            row.hung,
            runaways::quantile(&row.latencies, 0.5),
            runaways::quantile(&row.latencies, 0.99),
        );
        total += n;
        resolved += row.outcomes.iter().sum::<u64>() + row.other;
        abandoned += row.outcomes[2];
        hung += row.hung;
        other += row.other;
        for (all, mine) in by_how.iter_mut().zip(row.outcomes) {
            *all += mine;
        }
    }

    // The counts the pool keeps agree with what the joins said.
    let stats = pool.stats();
    println!(
        "stats: completed {} cancelled {} frozen {} abandoned {} (threads still running {}, \
         CPU used since {} ms, signal-blocked runners {}), frozen threads {} ({} MiB of stack \
         reserved), kills refused {}, redirects {}",
        stats.completed,
        stats.cancelled,
        stats.frozen,
        stats.abandoned,
        stats.abandoned_threads,
        stats.abandoned_cpu_ns / 1_000_000,
        stats.signal_blocked,
        stats.frozen_threads,
        stats.frozen_stack_bytes >> 20,
        stats.kills_refused,
        stats.freeze_redirected,
    );
    let mut problems = Vec::new();
    if [stats.cancelled, stats.frozen, stats.abandoned] != by_how {
        problems.push(format!("stats say {stats:?}, the joins {by_how:?}"));
    }
    if other > 0 {
        problems.push(format!("{other} runaways returned instead of being killed"));
    }
    // And the process is still usable.
    println!("after the storm: stdout still prints");
    eprintln!("after the storm: stderr still prints");
    let caught =
        std::panic::catch_unwind(|| panic!("a runaway? no: a panic caught after the storm"));
    if caught.is_ok() {
        problems.push("a panic was not caught".into());
    }
    if pool.spawn(|| 6 * 7).join().ok() != Some(42) {
        problems.push("a task after the storm".into());
    }
    if std::env::vars().count() == 0 {
        problems.push("the environment after the storm".into());
    }
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        pool.shutdown();
        let _ = done_tx.send(());
    });
    if done_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        problems.push("shutdown did not return within 30 s".into());
    }
    println!(
        "SUMMARY killstorm runaways={total} resolved={resolved} abandoned={abandoned} hung={hung} good_ok={good_ok}/{good_total} seconds={:.1}",
        started.elapsed().as_secs_f64()
    );
    if hung > 0 || good_ok != good_total || resolved != total {
        problems.push(format!(
            "{hung} hung, {good_ok}/{good_total} good results right"
        ));
    }
    if !problems.is_empty() {
        return Err(problems.join("; ").into());
    }
    Ok(())
}

fn check(pending: &mut Vec<(u64, JoinHandle<u64>)>, ok: &AtomicU64) {
    for (n, h) in pending.drain(..) {
        if h.join().ok() == Some(n.wrapping_mul(0x9E37_79B9) >> 5) {
            ok.fetch_add(1, Ordering::Relaxed);
        }
    }
}
