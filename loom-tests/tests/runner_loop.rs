//! The runner loop of `src/runner.rs` (`serve`), over a model queue, explored by loom:
//! every task accepted before shutdown runs before the runners exit, and no runner
//! sleeps through work or through shutdown.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use microsched::__loom::{serve, Serve, Sleep};

/// A stand-in for the pool: a queue of `pushed - taken` tasks and the shutdown mode.
#[derive(Default)]
struct Model {
    pushed: AtomicUsize,
    taken: AtomicUsize,
    executed: AtomicUsize,
    stopping: AtomicBool,
}

impl Model {
    /// A spawn: push, then wake a sleeper (as `Shared::spawn_outside` does).
    fn spawn(&self, sleep: &Sleep) {
        self.pushed.fetch_add(1, Ordering::Release);
        sleep.notify_one();
    }

    /// Shutdown steps 3: publish `DRAIN` after every push, then wake everyone.
    fn shutdown(&self, sleep: &Sleep) {
        self.stopping.store(true, Ordering::SeqCst);
        sleep.notify_all();
    }
}

impl Serve for Model {
    type Task = ();

    fn find_task(&self) -> Option<()> {
        let mut taken = self.taken.load(Ordering::Relaxed);
        loop {
            if taken >= self.pushed.load(Ordering::Acquire) {
                return None;
            }
            match self
                .taken
                .compare_exchange(taken, taken + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(()),
                Err(now) => taken = now,
            }
        }
    }

    fn execute(&self, (): ()) {
        self.executed.fetch_add(1, Ordering::Relaxed);
    }

    fn work_visible(&self) -> bool {
        self.taken.load(Ordering::Acquire) < self.pushed.load(Ordering::Acquire)
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn spin_for_work(&self) -> bool {
        false
    }
}

#[test]
fn spawns_just_before_shutdown_all_run() {
    loom::model(|| {
        let model = Arc::new(Model::default());
        let sleep = Arc::new(Sleep::new(1));
        let runner = {
            let (model, sleep) = (model.clone(), sleep.clone());
            thread::spawn(move || serve(&*model, &sleep, 0))
        };
        model.spawn(&sleep);
        model.spawn(&sleep);
        model.shutdown(&sleep);
        runner.join().unwrap();
        assert_eq!(model.executed.load(Ordering::Relaxed), 2);
    });
}

#[test]
fn two_runners_drain_and_exit() {
    loom::model(|| {
        let model = Arc::new(Model::default());
        let sleep = Arc::new(Sleep::new(2));
        let runners: Vec<_> = (0..2)
            .map(|slot| {
                let (model, sleep) = (model.clone(), sleep.clone());
                thread::spawn(move || serve(&*model, &sleep, slot))
            })
            .collect();
        model.spawn(&sleep);
        model.shutdown(&sleep);
        for runner in runners {
            runner.join().unwrap();
        }
        assert_eq!(model.executed.load(Ordering::Relaxed), 1);
    });
}
