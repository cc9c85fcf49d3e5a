//! 1,000 runaways of eight kinds among 10,000 good tasks: every good result is right, every
//! runaway is reported killed, and the counts in `stats()` match.
//!
//! Every test runs in a child process (`common::in_child`): they freeze threads, overflow
//! stacks and install signal handlers. They assert outcomes and counts, never timings.

mod common;

use std::hint::black_box;
use std::sync::Mutex;
use std::time::Duration;

use common::killing::{killed, recurse};
use common::{builder, in_child, join};
use microsched::{checkpoint, Budget, KillHow, KillReason};

/// The kinds of runaway the storm mixes.
#[derive(Clone, Copy, Debug)]
enum Runaway {
    Bare,
    Alloc,
    Println,
    Format,
    Recursion,
    MutexCheckpoint,
    Checkpoint,
    Sleep,
}

const KINDS: [Runaway; 8] = [
    Runaway::Bare,
    Runaway::Alloc,
    Runaway::Println,
    Runaway::Format,
    Runaway::Recursion,
    Runaway::MutexCheckpoint,
    Runaway::Checkpoint,
    Runaway::Sleep,
];

fn run_away(kind: Runaway) -> u64 {
    let mut i = 0u64;
    match kind {
        Runaway::Bare => loop {
            i = black_box(i.wrapping_add(1));
        },
        Runaway::Alloc => loop {
            black_box(vec![i as u8; 512]);
            i += 1;
        },
        Runaway::Println => loop {
            println!("runaway {i}");
            i += 1;
        },
        Runaway::Format => loop {
            black_box(format!("{i:>20}"));
            i += 1;
        },
        Runaway::Recursion => recurse(0),
        Runaway::MutexCheckpoint => {
            let m = Mutex::new(0u64);
            let mut g = m.lock().unwrap();
            loop {
                *g += 1;
                checkpoint();
            }
        }
        Runaway::Checkpoint => loop {
            i = black_box(i.wrapping_add(1));
            checkpoint();
        },
        Runaway::Sleep => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
    }
}

/// 1,000 runaways of every kind mixed with 10,000 good tasks: every good result is right,
/// every runaway is reported killed, the counts in `stats()` match, and the process exits
/// normally.
#[test]
fn a_storm_of_runaways_among_good_tasks() {
    in_child("a_storm_of_runaways_among_good_tasks", || {
        const RUNAWAYS: usize = 1000;
        const GOOD: u64 = 10_000;
        let pool = builder(2)
            .max_frozen(RUNAWAYS)
            .max_freeze_deferral(Duration::from_millis(100))
            .build()
            .unwrap();
        let budget = Budget::cpu(Duration::from_millis(2))
            .and_wall(Duration::from_millis(50))
            .grace(Duration::from_millis(2));
        let mut runaways = Vec::new();
        let mut good = Vec::new();
        for i in 0..GOOD {
            good.push((i, pool.spawn(move || i.wrapping_mul(2654435761) % 1000)));
            if i % 10 == 0 && runaways.len() < RUNAWAYS {
                let kind = KINDS[runaways.len() % KINDS.len()];
                // Deep recursion takes a while: a budget it cannot reach first.
                let budget = match kind {
                    Runaway::Recursion => Budget::cpu(Duration::from_secs(10)),
                    _ => budget,
                };
                runaways.push((kind, pool.spawn_with(budget, move || run_away(kind))));
            }
        }
        for (i, h) in good {
            assert_eq!(join(h).unwrap(), i.wrapping_mul(2654435761) % 1000);
        }
        let (mut cancelled, mut frozen, mut abandoned) = (0u64, 0u64, 0u64);
        for (kind, h) in runaways {
            let k = killed(join(h));
            match kind {
                // Cancelled at its next checkpoint, unless starved of CPU past the
                // maximum deferral (see below); never frozen without having seen it.
                Runaway::Checkpoint | Runaway::MutexCheckpoint => assert!(
                    matches!(k.how(), KillHow::Cancelled | KillHow::Abandoned),
                    "{kind:?} {k:?}"
                ),
                Runaway::Recursion => {
                    assert_eq!(
                        (k.reason(), k.how()),
                        (KillReason::StackOverflow, KillHow::Frozen)
                    )
                }
                // A carrier starved of CPU past the maximum deferral (hundreds of them
                // share two saturated cores here) is abandoned rather than waited for.
                _ => assert!(
                    matches!(k.how(), KillHow::Frozen | KillHow::Abandoned),
                    "{kind:?} {k:?}"
                ),
            }
            match k.how() {
                KillHow::Cancelled => cancelled += 1,
                KillHow::Abandoned => abandoned += 1,
                _ => frozen += 1,
            }
        }
        pool.shutdown();
        let s = pool.stats();
        assert_eq!(s.completed, GOOD);
        assert_eq!(
            (s.cancelled, s.frozen, s.abandoned),
            (cancelled, frozen, abandoned)
        );
        assert_eq!(cancelled + frozen + abandoned, RUNAWAYS as u64);
        // An abandoned thread that later reaches a safe point is frozen too.
        assert!(s.frozen_threads >= frozen);
        assert_eq!(
            s.kills_cpu_budget + s.kills_wall_deadline + s.kills_stack_overflow,
            RUNAWAYS as u64
        );
        assert_eq!(s.spawned, GOOD + RUNAWAYS as u64);
        assert_eq!(s.kills_refused, 0);
        eprintln!("storm: {s:?}");
    });
}
