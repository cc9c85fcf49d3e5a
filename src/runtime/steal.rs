//! Where a runner looks for its next task: the steal policy, as pure functions of the look
//! count and the slots ([`injector_first`], [`victims`]; `order` in the tests is the whole
//! sequence `Runner::find_task` follows), and the retry loop around one steal ([`steal`]).
//!
//! A new policy is an edit of those functions and their tests. The runner spells the
//! sequence out in straight-line code rather than walking an iterator of places: the
//! iterator cost 5–7 % of a dispatch round trip (`cargo bench --bench dispatch`).

use crossbeam_deque::Steal;

/// A runner looks at the injector first every this many looks, so a slot whose tasks
/// keep spawning (its own deque never empty) cannot starve the global queue (as Go's
/// scheduler does with its global run queue).
pub(crate) const INJECTOR_EVERY: u32 = 61;

/// Whether the runner's `look`-th search for work starts at the injector rather than at
/// its own deque: every [`INJECTOR_EVERY`]-th look.
#[inline]
pub(crate) fn injector_first(look: u32) -> bool {
    look % INJECTOR_EVERY == 0
}

/// The slots a runner of slot `me` (of `slots`) steals from, in order: every other slot
/// once, round robin from `start` (a random slot, so idle runners spread their steals).
pub(crate) fn victims(me: usize, slots: usize, start: usize) -> impl Iterator<Item = usize> {
    (0..slots)
        .map(move |i| (start + i) % slots)
        .filter(move |&victim| victim != me)
}

/// A place a runner may take a task from (for the tests' view of the whole order).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Local,
    Injector,
    Victim(usize),
}

/// The whole order `Runner::find_task` follows on its `look`-th search: its own deque
/// (unless [`injector_first`]); the injector; its own deque again (a batch from the
/// injector lands there); then the [`victims`].
#[cfg(test)]
fn order(look: u32, me: usize, slots: usize, start: usize) -> impl Iterator<Item = Source> {
    (!injector_first(look))
        .then_some(Source::Local)
        .into_iter()
        .chain([Source::Injector, Source::Local])
        .chain(victims(me, slots, start).map(Source::Victim))
}

/// One steal from a queue, retried while a concurrent operation gets in the way
/// (`Steal::Retry` does not mean the queue is empty).
pub(crate) fn steal<T>(mut attempt: impl FnMut() -> Steal<T>) -> Option<T> {
    loop {
        match attempt() {
            Steal::Success(task) => return Some(task),
            Steal::Empty => return None,
            Steal::Retry => std::hint::spin_loop(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn victims(order: impl Iterator<Item = Source>) -> Vec<usize> {
        order
            .filter_map(|s| match s {
                Source::Victim(v) => Some(v),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_runner_looks_at_its_own_deque_first_then_the_injector_then_its_peers() {
        let seen: Vec<Source> = order(1, 0, 3, 1).collect();
        assert_eq!(
            seen,
            [
                Source::Local,
                Source::Injector,
                Source::Local,
                Source::Victim(1),
                Source::Victim(2)
            ]
        );
    }

    #[test]
    fn every_61st_look_starts_at_the_injector() {
        for look in [0, INJECTOR_EVERY, 7 * INJECTOR_EVERY] {
            assert_eq!(
                order(look, 0, 2, 0).next(),
                Some(Source::Injector),
                "look {look}"
            );
        }
        for look in [1, INJECTOR_EVERY - 1, INJECTOR_EVERY + 1] {
            assert_eq!(
                order(look, 0, 2, 0).next(),
                Some(Source::Local),
                "look {look}"
            );
        }
    }

    #[test]
    fn every_other_slot_is_a_victim_once_from_the_start_and_never_itself() {
        for slots in 1..6 {
            for me in 0..slots {
                for start in 0..slots + 3 {
                    let v = victims(order(5, me, slots, start));
                    let mut sorted = v.clone();
                    sorted.sort_unstable();
                    let others: Vec<usize> = (0..slots).filter(|&s| s != me).collect();
                    assert_eq!(sorted, others, "slots {slots} me {me} start {start}");
                    if let Some(&first) = v.first() {
                        let expected = (0..slots).map(|i| (start + i) % slots).find(|&s| s != me);
                        assert_eq!(Some(first), expected);
                    }
                }
            }
        }
    }

    #[test]
    fn a_steal_is_retried_until_it_succeeds_or_finds_the_queue_empty() {
        let mut answers = vec![Steal::Retry, Steal::Retry, Steal::Success(7)].into_iter();
        assert_eq!(steal(|| answers.next().unwrap_or(Steal::Empty)), Some(7));
        let mut answers = vec![Steal::Retry, Steal::<u8>::Empty].into_iter();
        assert_eq!(steal(|| answers.next().unwrap_or(Steal::Empty)), None);
    }
}
