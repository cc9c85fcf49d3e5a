//! The tour: spawn a few tasks, nest spawns, see a panic reported, watch a long task get
//! preempted so the short ones behind it run, read the stats.
//!
//! `cargo run --release --example quickstart`

use std::time::{Duration, Instant};

fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One pinned worker per core this process may use.
    let pool = microsched::Pool::builder()
        .thread_name("quickstart")
        .build()?;
    println!("pool: {} workers", pool.workers());

    // A few independent tasks.
    let handles: Vec<_> = (20..26).map(|n| (n, pool.spawn(move || fib(n)))).collect();
    for (n, handle) in handles {
        println!("fib({n}) = {}", handle.join()?);
    }

    // A task that fans out: its spawns go to its own slot's queue, idle slots steal them,
    // and a join inside a task runs the awaited task inline if it is still queued.
    let handle = pool.handle();
    let total = pool.spawn(move || {
        let parts: Vec<_> = (0..8u64).map(|i| handle.spawn(move || i * i)).collect();
        parts
            .into_iter()
            .map(|p| p.join().unwrap_or(0))
            .sum::<u64>()
    });
    println!("sum of squares 0..8 = {}", total.join()?);

    // A panic is caught at the task boundary, with its payload, and the runner lives on.
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {})); // keep the demo's output tidy
    let bad = pool.spawn(|| -> u64 { panic!("service crashed: bad input") });
    match bad.join() {
        Ok(v) => println!("unexpected value {v}"),
        Err(e) => println!("task failed as expected: {e}"),
    }
    std::panic::set_hook(previous_hook);

    // A handle can be waited on with a timeout; on time-out it comes back.
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let slow = pool.spawn(move || {
        wait.recv().ok();
        "slow result"
    });
    let slow = match slow.join_timeout(Duration::from_millis(1)) {
        Ok(_) => unreachable!("the task waits for our go"),
        Err(handle) => {
            println!("not ready after 1 ms; letting it finish");
            handle
        }
    };
    go.send(())?;
    println!("then: {}", slow.join()?);

    // Preemption: one long task per slot, then short ones queued behind them. Each long
    // task runs past the quantum (2 ms by default), so a timer signal hands its slot to a
    // fresh thread; the long task runs on, demoted, and the short ones start at once.
    let started = Instant::now();
    let longs: Vec<_> = (0..pool.workers())
        .map(|_| pool.spawn(|| fib(38)))
        .collect();
    std::thread::sleep(Duration::from_millis(1));
    let queued = Instant::now();
    let shorts: Vec<_> = (0..20)
        .map(|_| pool.spawn(move || queued.elapsed()))
        .collect();
    let waits: Vec<Duration> = shorts
        .into_iter()
        .map(|h| h.join())
        .collect::<Result<_, _>>()?;
    let worst = waits.iter().max().copied().unwrap_or_default();
    for long in longs {
        long.join()?;
    }
    println!(
        "20 short tasks behind {} long ones: all started within {worst:.1?}; the long ones took {:.0?}",
        pool.workers(),
        started.elapsed()
    );

    pool.shutdown();
    let late = pool.spawn(|| 0u64).join();
    println!("spawn after shutdown: {}", late.unwrap_err());

    let stats = pool.stats();
    println!(
        "stats: spawned={} completed={} panicked={} refused={} stolen={} parks={} unparks={} ticks={} handoffs={}",
        stats.spawned,
        stats.completed,
        stats.panicked,
        stats.refused,
        stats.stolen,
        stats.parks,
        stats.unparks,
        stats.ticks,
        stats.handoffs
    );
    for (i, slot) in stats.slots.iter().enumerate() {
        println!(
            "  slot {i} (core {:?}): completed={} panicked={} local_spawns={} from_injector={} stolen={}",
            slot.core, slot.completed, slot.panicked, slot.local_spawns, slot.from_injector, slot.stolen
        );
    }
    assert_eq!(stats.completed + stats.panicked, stats.spawned);
    Ok(())
}
