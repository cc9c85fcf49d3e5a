//! The spawn gate of `src/sync/spawn_gate.rs`, explored by loom: once `close` returns, every spawn
//! that got through the gate has pushed and counted its task (so shutdown's "accepted"
//! count is final), and every later spawn is refused.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use microsched::__loom::Gate;

#[test]
fn an_inside_spawn_either_is_refused_or_finishes_before_close_returns() {
    loom::model(|| {
        let gate = Arc::new(Gate::new());
        let spawning = Arc::new(AtomicBool::new(false));
        let pushed = Arc::new(AtomicUsize::new(0));
        let spawner = {
            let (gate, spawning, pushed) = (gate.clone(), spawning.clone(), pushed.clone());
            thread::spawn(move || {
                let entered = gate.enter_inside(&spawning);
                let accepted = entered.is_some();
                if accepted {
                    pushed.fetch_add(1, Ordering::Relaxed);
                }
                drop(entered);
                accepted
            })
        };
        gate.close([&*spawning]);
        let seen_at_close = pushed.load(Ordering::Relaxed);
        let accepted = spawner.join().unwrap();
        assert_eq!(
            seen_at_close, accepted as usize,
            "close returned before an accepted push"
        );
        assert!(
            gate.enter_inside(&spawning).is_none(),
            "closed gates refuse"
        );
    });
}

#[test]
fn an_outside_spawn_either_is_refused_or_finishes_before_close_returns() {
    loom::model(|| {
        let gate = Arc::new(Gate::new());
        let pushed = Arc::new(AtomicUsize::new(0));
        let spawners: Vec<_> = (0..2)
            .map(|_| {
                let (gate, pushed) = (gate.clone(), pushed.clone());
                thread::spawn(move || match gate.enter_outside() {
                    Some(entered) => {
                        pushed.fetch_add(1, Ordering::Relaxed);
                        drop(entered);
                        true
                    }
                    None => false,
                })
            })
            .collect();
        gate.close([]);
        let seen_at_close = pushed.load(Ordering::Relaxed);
        let accepted = spawners
            .into_iter()
            .map(|s| s.join().unwrap() as usize)
            .sum::<usize>();
        assert_eq!(seen_at_close, accepted);
        assert_eq!(gate.injected(), accepted as u64);
    });
}
