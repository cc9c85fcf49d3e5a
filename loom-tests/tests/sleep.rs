//! The sleep protocol of `src/sleep.rs`, explored by loom: a runner never sleeps through
//! queued work, and a shutdown wakes every sleeper. A lost wake-up shows up as a loom
//! deadlock (a runner blocked forever).
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use microsched::__loom::Sleep;

/// A stand-in for the deques: `pushed` items have been queued, `taken` handed out.
struct Queue {
    pushed: AtomicUsize,
    taken: AtomicUsize,
}

impl Queue {
    fn push(&self) {
        self.pushed.fetch_add(1, Ordering::Release);
    }

    fn pop(&self) -> bool {
        let mut taken = self.taken.load(Ordering::Relaxed);
        loop {
            if taken >= self.pushed.load(Ordering::Acquire) {
                return false;
            }
            match self
                .taken
                .compare_exchange(taken, taken + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => taken = now,
            }
        }
    }

    fn non_empty(&self) -> bool {
        self.taken.load(Ordering::Acquire) < self.pushed.load(Ordering::Acquire)
    }
}

/// The runner loop of `src/runner.rs` with the spin left out (it only delays sleeping).
fn runner(slot: usize, sleep: &Sleep, queue: &Queue, stop: &AtomicBool, total: usize) {
    loop {
        if queue.pop() {
            if queue.taken.load(Ordering::Acquire) == total {
                // Last item: behave like shutdown, which wakes everyone.
                stop.store(true, Ordering::Release);
                sleep.notify_all();
            }
            continue;
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
        sleep.sleep(slot, || queue.non_empty() || stop.load(Ordering::Acquire));
    }
}

#[test]
fn one_runner_never_sleeps_through_a_push() {
    loom::model(|| {
        let sleep = Arc::new(Sleep::new(1));
        let queue = Arc::new(Queue {
            pushed: AtomicUsize::new(0),
            taken: AtomicUsize::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let r = {
            let (sleep, queue, stop) = (sleep.clone(), queue.clone(), stop.clone());
            thread::spawn(move || runner(0, &sleep, &queue, &stop, 2))
        };
        for _ in 0..2 {
            queue.push();
            sleep.notify_one();
        }
        r.join().unwrap();
        assert_eq!(queue.taken.load(Ordering::Relaxed), 2);
    });
}

#[test]
fn two_runners_take_everything_and_both_exit() {
    loom::model(|| {
        let sleep = Arc::new(Sleep::new(2));
        let queue = Arc::new(Queue {
            pushed: AtomicUsize::new(0),
            taken: AtomicUsize::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let runners: Vec<_> = (0..2)
            .map(|slot| {
                let (sleep, queue, stop) = (sleep.clone(), queue.clone(), stop.clone());
                thread::spawn(move || runner(slot, &sleep, &queue, &stop, 1))
            })
            .collect();
        queue.push();
        sleep.notify_one();
        for r in runners {
            r.join().unwrap();
        }
        assert_eq!(queue.taken.load(Ordering::Relaxed), 1);
    });
}
