//! Head-of-line blocking, with and without preemption: one slot, a task that runs for
//! 200 ms, and ten short requests arriving behind it.
//!
//! `cargo run --release --example preemption`

use std::time::{Duration, Instant};

use microsched::{Pool, TimerClock};

/// CPU-bound work for about `wall`.
fn busy(wall: Duration) -> u64 {
    let start = Instant::now();
    let mut x = 1u64;
    while start.elapsed() < wall {
        for i in 0..1000 {
            x = std::hint::black_box(x.rotate_left(5) ^ i);
        }
    }
    x
}

fn run(name: &str, pool: Pool) -> Result<(), Box<dyn std::error::Error>> {
    let long = pool.spawn(|| busy(Duration::from_millis(200)));
    std::thread::sleep(Duration::from_millis(1)); // the long task is running now
    let arrived = Instant::now();
    let shorts: Vec<_> = (0..10)
        .map(|_| pool.spawn(move || arrived.elapsed()))
        .collect();
    let mut waits = Vec::new();
    for short in shorts {
        waits.push(short.join()?);
    }
    long.join()?;
    let stats = pool.stats();
    println!(
        "{name:<22} short requests waited {:>8.2?} (first) to {:>8.2?} (last); handoffs {}",
        waits[0],
        waits[waits.len() - 1],
        stats.handoffs
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    run(
        "preemption off (FCFS)",
        Pool::builder().workers(1).preemption(false).build()?,
    )?;
    // The default: 500 µs, armed when the short requests are queued behind the long one.
    run(
        "preemption on (500 µs)",
        Pool::builder().workers(1).build()?,
    )?;
    // The previous default looks at a task only on the kernel tick (4 ms at HZ=250).
    run(
        "ThreadCpu, 2 ms",
        Pool::builder()
            .workers(1)
            .quantum(Duration::from_millis(2))
            .timer_clock(TimerClock::ThreadCpu)
            .build()?,
    )?;
    Ok(())
}
