//! Random task mixes: values, panics, nested spawns, joins from inside tasks, and a
//! shutdown at a random point. Every handle resolves exactly once (a hang fails the test),
//! values are right, shutdown returns, and the counters add up.

mod common;

use std::time::Duration;

use common::{join, quiet_panics, Expected};
use microsched::{Handle, JoinError};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Return this value.
    Value(u32),
    /// Panic with `Expected(v)`.
    Panic(u32),
    /// Spawn children from inside the task and join them all there.
    Nested(Vec<u32>),
    /// Spawn a child that itself spawns and joins a grandchild.
    Deep(u32),
    /// Busy for a little while, so queues build up behind it.
    Spin(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u32>().prop_map(Op::Value),
        2 => any::<u32>().prop_map(Op::Panic),
        2 => prop::collection::vec(any::<u32>(), 0..6).prop_map(Op::Nested),
        1 => any::<u32>().prop_map(Op::Deep),
        1 => (0u32..20_000).prop_map(Op::Spin),
    ]
}

/// What a task returns: a value, plus how many of its own children were refused because
/// the pool shut down under it.
type Outcome = (u64, u32);

fn run(op: Op, handle: Handle) -> Outcome {
    match op {
        Op::Value(v) => (v as u64, 0),
        Op::Panic(v) => std::panic::panic_any(Expected(v)),
        Op::Nested(children) => {
            let hs: Vec<_> = children
                .iter()
                .map(|&c| handle.spawn(move || c as u64))
                .collect();
            let mut sum = 0;
            let mut refused = 0;
            for (h, &want) in hs.into_iter().zip(&children) {
                match h.join() {
                    Ok(v) => {
                        assert_eq!(v, want as u64);
                        sum += v;
                    }
                    Err(e) => {
                        assert!(e.is_shutdown(), "{e:?}");
                        refused += 1;
                    }
                }
            }
            (sum, refused)
        }
        Op::Deep(v) => {
            let inner = handle.clone();
            let child = handle.spawn(move || inner.spawn(move || v as u64 + 1).join());
            match child.join() {
                Ok(Ok(x)) => (x, 0),
                Ok(Err(e)) | Err(e) => {
                    assert!(e.is_shutdown(), "{e:?}");
                    (v as u64 + 1, 1)
                }
            }
        }
        Op::Spin(n) => (spin_work(n), 0),
    }
}

fn spin_work(n: u32) -> u64 {
    (0..n).fold(0u64, |a, b| {
        std::hint::black_box(a.wrapping_mul(31) ^ b as u64)
    })
}

fn expected_value(op: &Op) -> Option<u64> {
    match op {
        Op::Value(v) => Some(*v as u64),
        Op::Panic(_) => None,
        Op::Nested(_) => None, // depends on how many children were refused; checked inside
        Op::Deep(v) => Some(*v as u64 + 1),
        Op::Spin(n) => Some(spin_work(*n)),
    }
}

proptest! {
    // Failing cases are saved beside this file (`proptest_mix.proptest-regressions`, committed:
    // it holds the seeds of the drain bug of `regression_drain_strands_late_push.rs`).
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_handle_resolves_once_with_the_right_outcome(
        ops in prop::collection::vec(op(), 0..60),
        workers in 1usize..=2,
        spin_us in prop_oneof![Just(0u64), Just(50u64)],
        shutdown_at in any::<prop::sample::Index>(),
        use_timeout in any::<bool>(),
    ) {
        quiet_panics();
        let pool = common::builder(workers)
            .spin(Duration::from_micros(spin_us))
            .build()
            .unwrap();
        let cut = if ops.is_empty() { 0 } else { shutdown_at.index(ops.len() + 1) };
        let mut handles = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if i == cut {
                if use_timeout {
                    // Long enough never to fire: a graceful shutdown either way.
                    pool.shutdown_timeout(Duration::from_secs(60)).unwrap();
                } else {
                    pool.shutdown();
                }
            }
            let (op, h) = (op.clone(), pool.handle());
            handles.push(pool.spawn(move || run(op, h)));
        }
        pool.shutdown();

        let mut refused_inside = 0u64;
        let mut ok = 0u64;
        let mut panicked = 0u64;
        for (i, (op, h)) in ops.iter().zip(handles).enumerate() {
            let result = join(h);
            if i >= cut {
                prop_assert!(matches!(result, Err(JoinError::Shutdown)), "op {i} after shutdown: {result:?}");
                continue;
            }
            match (op, result) {
                (Op::Panic(v), Err(e)) => {
                    panicked += 1;
                    let payload = e.into_panic().unwrap();
                    prop_assert_eq!(payload.downcast_ref::<Expected>(), Some(&Expected(*v)));
                }
                (op, Ok((value, refused))) => {
                    ok += 1;
                    refused_inside += refused as u64;
                    if let Some(want) = expected_value(op) {
                        prop_assert_eq!(value, want);
                    }
                    if let Op::Nested(children) = op {
                        prop_assert!(refused as usize <= children.len());
                    }
                }
                (op, result) => prop_assert!(false, "op {op:?} gave {result:?}"),
            }
        }

        let stats = pool.stats();
        let top_refused = (ops.len() - cut.min(ops.len())) as u64;
        prop_assert_eq!(stats.refused, top_refused + refused_inside);
        prop_assert_eq!(stats.panicked, panicked);
        prop_assert_eq!(stats.discarded, 0);
        prop_assert_eq!(stats.spawned, stats.completed + stats.panicked);
        prop_assert!(stats.completed >= ok);
    }
}
