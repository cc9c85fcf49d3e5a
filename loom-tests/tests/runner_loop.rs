//! The runner loop of `src/runtime/runner.rs` (`serve`) with the sleep protocol of `src/sync/sleep.rs`,
//! over a model queue, explored by loom: a runner never sleeps through queued work, every
//! task accepted before shutdown runs before the runners exit, and shutdown wakes every
//! sleeper. A lost wake-up shows up as a loom deadlock (a runner blocked forever).
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use microsched::__loom::{serve, Serve, Served, Sleep};

/// A stand-in for the pool: a queue of `pushed - taken` tasks and the shutdown mode.
struct Model {
    sleep: Sleep,
    pushed: AtomicUsize,
    taken: AtomicUsize,
    executed: AtomicUsize,
    stopping: AtomicBool,
    /// If set, the task that makes `executed` reach it starts the shutdown itself, so a
    /// test needs no shutdown from outside (which would wake a runner that missed a push).
    shutdown_after: Option<usize>,
}

impl Model {
    fn new(slots: usize, shutdown_after: Option<usize>) -> Arc<Model> {
        Arc::new(Model {
            sleep: Sleep::new(slots),
            pushed: AtomicUsize::new(0),
            taken: AtomicUsize::new(0),
            executed: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            shutdown_after,
        })
    }

    /// A spawn: push, then wake a sleeper (as `Shared::spawn_outside` does).
    fn spawn(&self) {
        self.pushed.fetch_add(1, Ordering::Release);
        self.sleep.notify_one();
    }

    /// Shutdown step 3: publish `DRAIN` after every push, then wake everyone.
    fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.sleep.notify_all();
    }
}

fn runners(model: &Arc<Model>, n: usize) -> Vec<thread::JoinHandle<Served>> {
    (0..n)
        .map(|slot| {
            let model = model.clone();
            thread::spawn(move || serve(&*model, &model.sleep, slot))
        })
        .collect()
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

    fn execute(&self, (): ()) -> bool {
        let done = self.executed.fetch_add(1, Ordering::Relaxed) + 1;
        if Some(done) == self.shutdown_after {
            self.shutdown();
        }
        // No preemption in this model: the runner keeps its slot.
        true
    }

    fn work_visible(&self) -> bool {
        self.taken.load(Ordering::Acquire) < self.pushed.load(Ordering::Acquire)
    }

    fn may_exit(&self) -> bool {
        // `Shared::may_exit` in `DRAIN`: shutdown has begun and every accepted task is done.
        self.stopping.load(Ordering::Acquire)
            && self.executed.load(Ordering::Relaxed) == self.pushed.load(Ordering::Relaxed)
    }

    fn spin_for_work(&self) -> bool {
        false
    }
}

#[test]
fn one_runner_never_sleeps_through_a_push() {
    loom::model(|| {
        let model = Model::new(1, Some(2));
        let runners = runners(&model, 1);
        model.spawn();
        model.spawn();
        for r in runners {
            assert_eq!(r.join().unwrap(), Served::Exit);
        }
        assert_eq!(model.executed.load(Ordering::Relaxed), 2);
    });
}

#[test]
fn two_runners_never_sleep_through_a_push() {
    loom::model(|| {
        let model = Model::new(2, Some(1));
        let runners = runners(&model, 2);
        model.spawn();
        for r in runners {
            assert_eq!(r.join().unwrap(), Served::Exit);
        }
        assert_eq!(model.executed.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn spawns_just_before_shutdown_all_run() {
    loom::model(|| {
        let model = Model::new(1, None);
        let runners = runners(&model, 1);
        model.spawn();
        model.spawn();
        model.shutdown();
        for r in runners {
            assert_eq!(r.join().unwrap(), Served::Exit);
        }
        assert_eq!(model.executed.load(Ordering::Relaxed), 2);
    });
}

#[test]
fn two_runners_drain_and_exit() {
    loom::model(|| {
        let model = Model::new(2, None);
        let runners = runners(&model, 2);
        model.spawn();
        model.shutdown();
        for r in runners {
            assert_eq!(r.join().unwrap(), Served::Exit);
        }
        assert_eq!(model.executed.load(Ordering::Relaxed), 1);
    });
}
