//! A panicking closure never takes a runner down, whatever it panics with, and the joiner
//! gets the payload.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{join, quiet_panics, Expected};
use microsched::Pool;

fn one_worker() -> Pool {
    common::builder(1).build().unwrap()
}

#[test]
fn str_and_string_payloads_come_back_as_messages() {
    quiet_panics();
    let pool = one_worker();
    let a = pool.spawn(|| -> u8 { panic!("expected: static str") });
    let b = pool.spawn(|| -> u8 { panic!("expected: formatted {}", 42) });
    let ea = join(a).unwrap_err();
    let eb = join(b).unwrap_err();
    assert!(ea.is_panic() && !ea.is_shutdown());
    assert_eq!(ea.panic_message(), Some("expected: static str"));
    assert_eq!(eb.panic_message(), Some("expected: formatted 42"));
    assert_eq!(eb.to_string(), "task panicked: expected: formatted 42");
    // The same runner goes on serving.
    assert_eq!(join(pool.spawn(|| 1)).unwrap(), 1);
}

#[test]
fn any_payload_type_is_kept() {
    quiet_panics();
    let pool = one_worker();
    let h = pool.spawn(|| -> () { std::panic::panic_any(Expected(7)) });
    let err = join(h).unwrap_err();
    assert_eq!(err.panic_message(), None);
    assert!(err.to_string().contains("non-string payload"));
    let payload = err.into_panic().unwrap();
    assert_eq!(payload.downcast_ref::<Expected>(), Some(&Expected(7)));
}

#[test]
fn resume_unwind_re_raises_in_the_joiner() {
    quiet_panics();
    let pool = one_worker();
    let err = join(pool.spawn(|| -> () { std::panic::panic_any(Expected(3)) })).unwrap_err();
    let payload = std::panic::AssertUnwindSafe(err.into_panic().unwrap());
    let caught = std::panic::catch_unwind(move || {
        let payload = payload;
        std::panic::resume_unwind(payload.0)
    });
    assert_eq!(
        caught.unwrap_err().downcast_ref::<Expected>(),
        Some(&Expected(3))
    );
}

/// A payload whose destructor panics too.
struct PanicsOnDrop(Arc<AtomicUsize>);

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("expected: payload destructor");
    }
}

#[test]
fn a_payload_that_panics_on_drop_does_not_kill_the_runner() {
    quiet_panics();
    let pool = one_worker();
    let drops = Arc::new(AtomicUsize::new(0));
    // Hold the only runner until every handle below is dropped, so that the runtime, not
    // this thread, drops the last reference to each payload and result.
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    drop(pool.spawn(move || blocked.recv().unwrap()));
    for _ in 0..20 {
        let drops = drops.clone();
        drop(pool.spawn(move || -> () { std::panic::panic_any(PanicsOnDrop(drops)) }));
    }
    // Results whose destructor panics, also dropped by the runtime.
    for _ in 0..20 {
        let drops = drops.clone();
        drop(pool.spawn(move || PanicsOnDrop(drops)));
    }
    release.send(()).unwrap();
    pool.shutdown();
    assert_eq!(drops.load(Ordering::SeqCst), 40);
    let stats = pool.stats();
    assert_eq!(stats.panicked, 20);
    assert_eq!(stats.completed, 21);
}

#[test]
fn a_closure_that_panics_on_drop_after_refusal_does_not_panic_in_spawn() {
    quiet_panics();
    let pool = one_worker();
    pool.shutdown();
    let drops = Arc::new(AtomicUsize::new(0));
    let guard = PanicsOnDrop(drops.clone());
    let h = pool.spawn(move || {
        let _keep = &guard;
    });
    assert!(join(h).unwrap_err().is_shutdown());
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(pool.stats().refused, 1);
}

#[test]
fn panics_on_every_runner_are_all_counted() {
    quiet_panics();
    let pool = common::builder(2).build().unwrap();
    let handles: Vec<_> = (0..1_000u32)
        .map(|i| {
            pool.spawn(move || {
                if i % 3 == 0 {
                    std::panic::panic_any(Expected(i));
                }
                i
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        match join(h) {
            Ok(v) => assert_eq!(v as usize, i),
            Err(e) => {
                assert_eq!(i % 3, 0);
                assert_eq!(
                    e.into_panic().unwrap().downcast_ref::<Expected>(),
                    Some(&Expected(i as u32))
                );
            }
        }
    }
    let stats = pool.stats();
    assert_eq!(stats.panicked, 334);
    assert_eq!(stats.completed, 666);
}
