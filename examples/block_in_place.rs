//! Blocking inside a task without stalling its slot.
//!
//! Two cases, each run 20 times on fresh pools with both timer clocks, timed from the
//! first spawn to the last result:
//!
//! 1. On a one-worker pool, a task blocks (in [`block_in_place`]) on a channel that only
//!    the task queued behind it sends on.
//! 2. On a two-worker pool, each slot's task spawns four children onto its own queue and
//!    waits for them with timed joins (which never run a child inline).
//!
//! Both give the slot to a standby as they block, so the queued tasks run at once. Without
//! that, the slot is taken only from outside: a quantum later with the default clock, and
//! with `TimerClock::ThreadCpu` (a blocked task burns no CPU, so no tick comes) when the
//! monitor's sweep notices, about 200 ms later.
//!
//! `cargo run --release --example block_in_place`

use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use microsched::{block_in_place, Pool, TimerClock};

const LONG: Duration = Duration::from_secs(20);

fn main() {
    for clock in [TimerClock::Contention, TimerClock::ThreadCpu] {
        let mut channel = Vec::new();
        let mut joins = Vec::new();
        for _ in 0..20 {
            let pool = Pool::builder()
                .workers(1)
                .timer_clock(clock)
                .build()
                .expect("a pool");
            let (tx, rx) = mpsc::channel::<u32>();
            let t0 = Instant::now();
            let waiter = pool.spawn(move || block_in_place(|| rx.recv_timeout(LONG)));
            let sender = pool.spawn(move || tx.send(7).is_ok());
            assert!(sender.join().expect("the sender"));
            assert_eq!(waiter.join().expect("the waiter"), Ok(7));
            channel.push(t0.elapsed());

            let pool = Pool::builder()
                .workers(2)
                .timer_clock(clock)
                .build()
                .expect("a pool");
            let handle = pool.handle();
            let both = Arc::new(Barrier::new(2));
            let t0 = Instant::now();
            let parents: Vec<_> = (0..2u64)
                .map(|p| {
                    let (handle, both) = (handle.clone(), both.clone());
                    pool.spawn(move || {
                        both.wait();
                        let children: Vec<_> = (0..4u64)
                            .map(|c| handle.spawn(move || p * 100 + c))
                            .collect();
                        children
                            .into_iter()
                            .map(|h| h.join_timeout(LONG).ok().and_then(Result::ok))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for (p, h) in parents.into_iter().enumerate() {
                let got = h.join().expect("a parent");
                assert!(got.iter().all(Option::is_some), "parent {p}: {got:?}");
            }
            joins.push(t0.elapsed());
        }
        channel.sort();
        joins.sort();
        println!(
            "{clock:?}: block_in_place on a channel: median {:?}, max {:?}; timed joins on queued children: median {:?}, max {:?}",
            channel[10], channel[19], joins[10], joins[19]
        );
    }
}
