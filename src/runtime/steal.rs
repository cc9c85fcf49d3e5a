//! Where a runner looks for its next task: the steal policy, as pure functions of the look
//! count and the slots ([`own_queues`], then [`victims`]; `order` in the tests is the two
//! together), and the retry loop around one steal ([`steal`]).
//!
//! A new policy is an edit of those two and their tests; the runner only walks the order
//! (drawing the random start of the steals only once it reaches them).

use crossbeam_deque::Steal;

/// A runner looks at the injector first every this many looks, so a slot whose tasks
/// keep spawning (its own deque never empty) cannot starve the global queue (as Go's
/// scheduler does with its global run queue).
pub(crate) const INJECTOR_EVERY: u32 = 61;

/// A place a runner may take a task from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The slot's own deque (LIFO end: the task spawned last, warm in cache).
    Local,
    /// A batch from the pool's global queue (spawns from outside the pool).
    Injector,
    /// A batch stolen from the deque of this other slot.
    Victim(usize),
}

/// The places a runner of slot `me` (of `slots`) looks at, in order, on its `look`-th
/// search for work: its own deque; then the injector; its own deque again (a batch from
/// the injector lands there); then every other slot once, round robin from `start` (a
/// random slot, so idle runners spread their steals). On every [`INJECTOR_EVERY`]-th look
/// the injector comes first.
#[cfg(test)]
fn order(look: u32, me: usize, slots: usize, start: usize) -> impl Iterator<Item = Source> {
    own_queues(look).chain(victims(me, slots, start))
}

/// The part of [`order`] before the steals: the slot's own deque and the injector.
pub(crate) fn own_queues(look: u32) -> impl Iterator<Item = Source> {
    let local_first = (look % INJECTOR_EVERY != 0).then_some(Source::Local);
    local_first
        .into_iter()
        .chain([Source::Injector, Source::Local])
}

/// The part of [`order`] after: every other slot once, round robin from `start`.
pub(crate) fn victims(me: usize, slots: usize, start: usize) -> impl Iterator<Item = Source> {
    (0..slots)
        .map(move |i| (start + i) % slots)
        .filter(move |&victim| victim != me)
        .map(Source::Victim)
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
