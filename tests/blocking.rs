//! Blocking inside a task never stalls its slot: `block_in_place`, and joins that have to
//! wait, give the slot to a standby first, so the tasks queued behind still run.
//!
//! Each case would deadlock (or wait out its timeout) if the blocked task kept its slot;
//! every wait has a deadline far beyond what the case needs, and the assertions are on
//! outcomes (a value instead of a time-out), never on timings.

mod common;

use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

use common::{builder, join};
use microsched::{block_in_place, Pool, TimerClock};

/// Far longer than any case needs; reaching it is the failure.
const LONG: Duration = Duration::from_secs(20);

/// Both clocks: with `ThreadCpu` a blocked task uses no CPU, so no tick ever comes to
/// hand its slot off; with `Contention` the one-shot armed for the queued task would,
/// a quantum later.
const CLOCKS: [TimerClock; 2] = [TimerClock::ThreadCpu, TimerClock::Contention];

fn pool(workers: usize, clock: TimerClock) -> Pool {
    builder(workers).timer_clock(clock).build().unwrap()
}

/// On a one-worker pool, a task blocks (in `block_in_place`) on a channel that only a task
/// queued behind it will send on.
#[test]
fn block_in_place_lets_the_task_queued_behind_run() {
    for clock in CLOCKS {
        block_in_place_case(clock);
    }
}

fn block_in_place_case(clock: TimerClock) {
    let pool = pool(1, clock);
    let (tx, rx) = mpsc::channel::<u32>();
    let waiter = pool.spawn(move || block_in_place(|| rx.recv_timeout(LONG)));
    let sender = pool.spawn(move || tx.send(7).is_ok());
    assert!(join(sender).unwrap(), "{clock:?}: the sender ran");
    assert_eq!(
        join(waiter).unwrap(),
        Ok(7),
        "{clock:?}: the blocked task got the value"
    );
    let stats = pool.stats();
    assert_eq!(stats.blocking_handoffs, 1, "{clock:?}: {stats:?}");
    // The pool still serves afterwards.
    let hs: Vec<_> = (0..100u32).map(|i| pool.spawn(move || i + 1)).collect();
    for (i, h) in hs.into_iter().enumerate() {
        assert_eq!(join(h).unwrap(), i as u32 + 1);
    }
}

/// Every slot's task spawns children (queued on its own slot) and waits for them with a
/// timed join, which never runs a child inline: the slots must go on serving their
/// queues meanwhile.
#[test]
fn timed_joins_on_queued_children_do_not_stall_the_slots() {
    for clock in CLOCKS {
        timed_joins_case(clock);
    }
}

fn timed_joins_case(clock: TimerClock) {
    let pool = pool(2, clock);
    let handle = pool.handle();
    // Both parents hold their slots before either spawns: no idle slot steals a child.
    let both = Arc::new(Barrier::new(2));
    let parents: Vec<_> = (0..2u64)
        .map(|p| {
            let handle = handle.clone();
            let both = both.clone();
            pool.spawn(move || {
                both.wait();
                let children: Vec<_> = (0..4u64)
                    .map(|c| handle.spawn(move || p * 100 + c))
                    .collect();
                children
                    .into_iter()
                    .map(|h| match h.join_timeout(LONG) {
                        Ok(result) => result.ok(),
                        Err(_) => None,
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (p, h) in parents.into_iter().enumerate() {
        let p = p as u64;
        let got = join(h).unwrap();
        assert_eq!(
            got,
            (0..4).map(|c| Some(p * 100 + c)).collect::<Vec<_>>(),
            "{clock:?}: parent {p}: every child's value, none timed out"
        );
    }
}
