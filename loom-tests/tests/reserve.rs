//! The standby reserve of `src/sync/reserve.rs`, explored by loom: a handoff's grant reaches
//! exactly one standby, no wake-up is lost, the slot's state passes from the old holder to
//! the new one in order, and a runner that found no standby is always noticed by the next
//! standby to park (or finds it itself).
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;
use microsched::__loom::{Reserve, Woken};

/// The slot's deque, as far as ownership goes: only its holder may touch it.
struct Slot(UnsafeCell<u32>);

// SAFETY: loom's `UnsafeCell` checks every access; the protocol under test is what makes
// them exclusive.
unsafe impl Sync for Slot {}

#[test]
fn a_grant_hands_the_slot_to_the_standby_in_order() {
    loom::model(|| {
        let reserve = Arc::new(Reserve::new());
        let slot = Arc::new(Slot(UnsafeCell::new(0)));
        let standby = {
            let (reserve, slot) = (reserve.clone(), slot.clone());
            thread::spawn(move || {
                reserve.park_ready(false);
                match reserve.wait() {
                    Woken::Granted => {
                        // The new holder sees everything the old one wrote.
                        let seen = slot.0.with_mut(|v| unsafe {
                            let seen = *v;
                            *v = 2;
                            seen
                        });
                        assert_eq!(seen, 1);
                        true
                    }
                    Woken::Closed => false,
                    Woken::Spare => unreachable!("`wait` never retires"),
                }
            })
        };
        // The old holder uses the slot, then (in its signal handler) hands it off, if a
        // standby has parked yet.
        slot.0.with_mut(|v| unsafe { *v = 1 });
        let handed_off = reserve.take_standby();
        if handed_off {
            reserve.grant();
        } else {
            // No standby yet: the holder keeps the slot and, at shutdown, closes it.
            reserve.close();
        }
        let granted = standby.join().unwrap();
        assert_eq!(granted, handed_off);
        assert_eq!(reserve.ready(), 0);
    });
}

#[test]
fn one_grant_wakes_exactly_one_of_two_standbys_and_close_releases_the_other() {
    loom::model(|| {
        let reserve = Arc::new(Reserve::new());
        // Both standbys have counted themselves in before the handoff.
        reserve.park_ready(false);
        reserve.park_ready(false);
        let standbys: Vec<_> = (0..2)
            .map(|_| {
                let reserve = reserve.clone();
                thread::spawn(move || match reserve.wait() {
                    Woken::Granted => {
                        // The new holder runs until shutdown, then closes the slot.
                        reserve.close();
                        1
                    }
                    Woken::Closed => 0,
                    Woken::Spare => unreachable!("`wait` never retires"),
                })
            })
            .collect();
        assert!(reserve.take_standby());
        reserve.grant();
        let granted: u32 = standbys.into_iter().map(|s| s.join().unwrap()).sum();
        assert_eq!(granted, 1);
        assert_eq!(reserve.ready(), 0);
    });
}

#[test]
fn a_runner_without_a_standby_is_seen_by_the_next_standby_or_sees_it() {
    loom::model(|| {
        let reserve = Arc::new(Reserve::new());
        let standby = {
            let reserve = reserve.clone();
            thread::spawn(move || {
                reserve.park_ready(false);
                reserve.take_wanted()
            })
        };
        // The handler's path in `handler::handoff`.
        let mut got = reserve.take_standby();
        if !got {
            reserve.want(7);
            got = reserve.take_standby();
        }
        let poked = standby.join().unwrap();
        assert!(
            got || poked == Some(7),
            "the overrun and the parked standby missed each other"
        );
    });
}

#[test]
fn a_spare_standby_retires_only_while_one_is_left_for_every_grant() {
    loom::model(|| {
        let reserve = Arc::new(Reserve::new());
        reserve.park_ready(false);
        reserve.park_ready(false);
        // One standby may retire (idle at once, a target of one), the other may not; a
        // handoff takes one of them meanwhile. Whoever is granted the slot closes it at
        // shutdown, which releases a standby still waiting.
        let run = |reserve: Arc<Reserve>, spare: bool| {
            thread::spawn(move || {
                let woken = if spare {
                    reserve.wait_or_retire(1, std::time::Duration::ZERO)
                } else {
                    reserve.wait()
                };
                if woken == Woken::Granted {
                    reserve.close();
                }
                woken
            })
        };
        let spare = run(reserve.clone(), true);
        let other = run(reserve.clone(), false);
        assert!(reserve.take_standby());
        reserve.grant();
        let outcomes = [spare.join().unwrap(), other.join().unwrap()];
        let granted = outcomes.iter().filter(|w| **w == Woken::Granted).count();
        assert_eq!(granted, 1, "{outcomes:?}");
        assert_eq!(reserve.ready(), 0);
    });
}
