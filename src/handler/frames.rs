//! The freeze gate's verdict over the frames of the interrupted thread, innermost first:
//! a pure function of the frames and of what the gate's tables say of each address
//! ([`Places`]), so it is tested over made-up frames. The handler feeds it from its own
//! walker (`walk.rs`) with the live tables (`freeze.rs`'s `LivePlaces`).

use std::ops::ControlFlow;

use super::ledger::Defer;
use super::places::Holder;
use crate::sys::async_safe::Wait;

/// One frame of the walk: where it is (`ip`: the interrupted PC for the first, a return
/// address for the others), its stack pointer (the CFA of the frame below it), and the
/// start of its function.
#[derive(Clone, Copy, Debug)]
pub(super) struct Frame {
    pub(super) ip: usize,
    pub(super) sp: usize,
    pub(super) start: usize,
}

/// What the verdict needs to know of an address. Async-signal-safe in the handler's
/// implementation (lookups in tables built beforehand).
pub(super) trait Places {
    /// `Some(redirectable)` for an address in a system library's text (see
    /// `places::library`).
    fn library(&self, ip: usize) -> Option<bool>;
    /// The panic runtime's cleanup after a caught unwind.
    fn in_unwind_cleanup(&self, ip: usize) -> bool;
    /// Whether the function at `start` holds one of std's process-wide locks.
    fn lock_holder(&self, start: usize, ip: usize) -> Holder;
    /// `Some(entry)` inside std's lock-acquisition slow paths.
    fn acquiring(&self, ip: usize) -> Option<bool>;
    /// The function a cancelled task unwinds from (`unwind_cancelled`).
    fn is_cancel_entry(&self, start: usize) -> bool;
}

/// The state of one walk of the interrupted thread's frames; after the walk, its verdict.
pub(super) struct Walk {
    /// Frames whose CFA is above this belong to the runtime, not the task.
    boundary: usize,
    /// The same for the innermost task: the interrupted frame must be below it.
    inner_boundary: usize,
    /// Still in the innermost frames of a blocked syscall, which may be in libc.
    inner_libs: bool,
    /// How many of those frames a waiting syscall's wrapper may have.
    wrapper_frames: u32,
    /// Still in the innermost frames of a running thread interrupted inside a library
    /// (malloc, memcpy): they hold whatever they hold only until they return to the task.
    lib_prefix: bool,
    /// Where the outermost of those returns to the task: the CFA of that frame and the
    /// return address below it.
    pub(super) lib_exit_cfa: usize,
    pub(super) lib_exit_ret: usize,
    frames: u32,
    pub(super) defer: Option<Defer>,
    /// The CFA of the outermost lock-holding frame, and the return address stored just
    /// below it (the next frame's IP).
    pub(super) holder_cfa: usize,
    /// The CFA of the last task frame seen (each must be above the one before).
    last_cfa: usize,
    pub(super) holder_ret: usize,
    pub(super) want_ret: bool,
    pub(super) reached_boundary: bool,
    acquiring: Acquiring,
    /// The thread is unwinding.
    panicking: bool,
}

/// Where the walk is in the frames of a thread blocked acquiring one of std's locks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Acquiring {
    /// Blocked in a futex wait, in the libc wrapper's frame so far.
    Maybe,
    /// In std's lock slow path.
    Slow,
    /// In the stdio or environment functions that are taking the lock.
    Taker,
    /// Past them, or not blocked acquiring a lock.
    Ended,
}

impl Walk {
    /// A walk of the frames of a thread whose task's frames lie below `boundary` (the
    /// outermost task's closure frame) and whose innermost task's lie below
    /// `inner_boundary`. `wait`: the system call it is blocked in, if any.
    /// `in_library`: it was interrupted running (not blocked) inside a system library.
    pub(super) fn new(
        boundary: usize,
        inner_boundary: usize,
        wait: Wait,
        in_library: bool,
        panicking: bool,
    ) -> Walk {
        Walk {
            // Every task frame, those of the tasks this one runs inside included.
            boundary,
            inner_boundary,
            inner_libs: wait != Wait::None,
            lib_prefix: in_library,
            lib_exit_cfa: 0,
            lib_exit_ret: 0,
            // std's locks and parking call `syscall(SYS_futex)` straight from Rust: one
            // libc frame. A futex wait deeper in libc is one of its private locks
            // (malloc's), whose waiter may hold another. `nanosleep` → `clock_nanosleep`
            // is two.
            wrapper_frames: if wait == Wait::Sleep { 2 } else { 1 },
            // Every frame down to the closure's, however deep the recursion went, with
            // no cap (one would defer a deep runaway for ever): frames only go up the
            // stack, whose size bounds the walk.
            frames: 0,
            defer: None,
            holder_cfa: 0,
            last_cfa: 0,
            holder_ret: 0,
            want_ret: false,
            reached_boundary: false,
            panicking,
            acquiring: if wait == Wait::Futex {
                Acquiring::Maybe
            } else {
                Acquiring::Ended
            },
        }
    }

    /// Looks at `frames`, innermost first, until the verdict is in; the walk's fields
    /// then hold it. For tests: the handler feeds [`each`](Walk::each) from its walker.
    #[cfg(test)]
    fn over(mut self, places: &impl Places, frames: &[Frame]) -> Walk {
        for &frame in frames {
            if self.each(places, frame).is_break() {
                break;
            }
        }
        self
    }

    /// The gate's look at one frame of the walk (`walk.rs`), innermost first.
    pub(super) fn each(&mut self, places: &impl Places, frame: Frame) -> ControlFlow<()> {
        let walk = self;
        let Frame { ip, sp: cfa, start } = frame;
        // With each frame comes its stack pointer: the CFA of the frame it came from (the
        // callee), just above the slot that holds the return address into this frame.
        if walk.want_ret {
            walk.holder_cfa = cfa;
            walk.holder_ret = ip;
            walk.want_ret = false;
        }
        if cfa > walk.boundary {
            walk.reached_boundary = true;
            return ControlFlow::Break(());
        }
        // The interrupted frame is the runtime's (around the innermost closure, which has
        // not started or has returned): not the task's to freeze in.
        if walk.frames == 0 && cfa > walk.inner_boundary {
            walk.defer = Some(Defer::Runtime);
            return ControlFlow::Break(());
        }
        // The stack only grows down: a walk whose frames stop going up (bad unwind info, a
        // loop) could go on for ever with no frame cap. It defers.
        if cfa <= walk.last_cfa {
            walk.defer = Some(Defer::Unwalkable);
            return ControlFlow::Break(());
        }
        walk.last_cfa = cfa;
        let library = places.library(ip);
        let in_library = library.is_some();
        if walk.lib_prefix && !in_library {
            walk.lib_prefix = false;
            walk.lib_exit_cfa = cfa;
            walk.lib_exit_ret = ip;
        }
        if walk.lib_prefix && library == Some(false) {
            // Inside the loader or the unwinder: no return out of it may be redirected.
            walk.defer = Some(Defer::Library);
            return ControlFlow::Break(());
        }
        if in_library && walk.lib_prefix {
            // Inside the library the running thread was interrupted in.
        } else if in_library {
            // A waiting syscall's wrapper is one or two frames deep (`syscall`; `nanosleep`
            // and `clock_nanosleep`); more means the wait is inside library code that may
            // hold a lock while it waits for another.
            walk.inner_libs &= walk.frames < walk.wrapper_frames;
            if !walk.inner_libs {
                walk.defer = Some(Defer::Library);
                return ControlFlow::Break(());
            }
        } else {
            walk.inner_libs = false;
        }
        // On its way from the cancel to the unwinder (`panicking` is not set yet): it has
        // seen its cancel, and is about to run its destructors. (A thread already panicking
        // only passes through: `cancel_here` returns at once then.)
        if places.is_cancel_entry(start) && !walk.panicking {
            walk.defer = Some(Defer::NoFreeze);
            return ControlFlow::Break(());
        }
        // Finishing a caught unwind (std no longer counts the thread as panicking): the
        // closure's destructors have run, and the runtime is about to publish.
        if places.in_unwind_cleanup(ip) {
            walk.defer = Some(Defer::Panicking);
            return ControlFlow::Break(());
        }
        let holder = places.lock_holder(start, ip);
        // A thread blocked in a futex wait inside std's lock slow path is waiting for that
        // lock: the stdio or environment functions right around it are the ones taking it,
        // and hold nothing yet. The first other frame ends that run; a holder past it holds.
        let acquiring = if in_library {
            None
        } else {
            places.acquiring(ip)
        };
        walk.acquiring = match (walk.acquiring, acquiring) {
            // The run starts where the wait is (a futex wait, a contended lock), and may go
            // on through the reentrant lock around it.
            (Acquiring::Maybe, Some(true)) | (Acquiring::Slow, Some(_)) => Acquiring::Slow,
            (Acquiring::Slow | Acquiring::Taker, _) if holder == Holder::Acquires => {
                Acquiring::Taker
            }
            (Acquiring::Maybe, _) if in_library => Acquiring::Maybe,
            _ => Acquiring::Ended,
        };
        if holder != Holder::No && walk.acquiring != Acquiring::Taker {
            walk.holder_cfa = 0;
            walk.holder_ret = 0;
            walk.want_ret = true;
        }
        walk.frames += 1;
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made-up address space: libc at 0x1000.., the loader at 0x2000.., a std lock
    /// holder at 0x3000.. (takes its lock itself), a panic entry at 0x3500.. (holds one
    /// taken outside), std's lock slow path at 0x4000.. (the wait at 0x4000..0x4100),
    /// the unwind cleanup at 0x5000.., the cancel entry at 0x6000, task code elsewhere.
    struct Fake;

    impl Places for Fake {
        fn library(&self, ip: usize) -> Option<bool> {
            match ip {
                0x1000..0x2000 => Some(true),
                0x2000..0x3000 => Some(false),
                _ => None,
            }
        }
        fn in_unwind_cleanup(&self, ip: usize) -> bool {
            (0x5000..0x6000).contains(&ip)
        }
        fn lock_holder(&self, _start: usize, ip: usize) -> Holder {
            match ip {
                0x3000..0x3500 => Holder::Acquires,
                0x3500..0x4000 => Holder::Holds,
                _ => Holder::No,
            }
        }
        fn acquiring(&self, ip: usize) -> Option<bool> {
            match ip {
                0x4000..0x4100 => Some(true),
                0x4100..0x5000 => Some(false),
                _ => None,
            }
        }
        fn is_cancel_entry(&self, start: usize) -> bool {
            start == 0x6000
        }
    }

    const TASK: usize = 0x9000;
    /// The closure frame's marker: task frames lie below it.
    const BOUNDARY: usize = 0x8_0000;

    fn frame(ip: usize, sp: usize) -> Frame {
        Frame {
            ip,
            sp,
            start: ip & !0xff,
        }
    }

    fn running() -> Walk {
        Walk::new(BOUNDARY, BOUNDARY, Wait::None, false, false)
    }

    #[test]
    fn task_frames_up_to_the_closure_are_freezable() {
        let frames = [
            frame(TASK, 0x7_0000),
            frame(TASK + 8, 0x7_1000),
            frame(TASK, BOUNDARY + 16),
        ];
        let walk = running().over(&Fake, &frames);
        assert!(walk.reached_boundary);
        assert!(walk.defer.is_none());
        assert_eq!((walk.holder_cfa, walk.want_ret), (0, false));
    }

    #[test]
    fn a_walk_that_stops_going_up_the_stack_defers_as_unwalkable() {
        let frames = [
            frame(TASK, 0x7_0000),
            frame(TASK, 0x7_0000),
            frame(TASK, BOUNDARY + 16),
        ];
        let walk = running().over(&Fake, &frames);
        assert!(matches!(walk.defer, Some(Defer::Unwalkable)));
    }

    #[test]
    fn an_interrupted_frame_above_the_innermost_closure_is_the_runtimes() {
        let walk = Walk::new(BOUNDARY, 0x6_0000, Wait::None, false, false)
            .over(&Fake, &[frame(TASK, 0x7_0000)]);
        assert!(matches!(walk.defer, Some(Defer::Runtime)));
    }

    #[test]
    fn a_lock_holder_on_the_stack_asks_for_its_return_to_be_redirected() {
        // The holder's frame, then its caller: the return slot is the caller's CFA - 8.
        let frames = [
            frame(TASK, 0x7_0000),
            frame(0x3600, 0x7_1000),
            frame(TASK + 16, 0x7_2000),
            frame(TASK, BOUNDARY + 16),
        ];
        let walk = running().over(&Fake, &frames);
        assert!(walk.defer.is_none());
        assert!(walk.reached_boundary);
        assert_eq!((walk.holder_cfa, walk.holder_ret), (0x7_2000, TASK + 16));
    }

    #[test]
    fn the_outermost_of_two_lock_holders_is_the_one_redirected() {
        let frames = [
            frame(0x3600, 0x7_0000),
            frame(TASK, 0x7_1000),
            frame(0x3600, 0x7_2000),
            frame(TASK + 32, 0x7_3000),
            frame(TASK, BOUNDARY + 16),
        ];
        let walk = running().over(&Fake, &frames);
        assert_eq!((walk.holder_cfa, walk.holder_ret), (0x7_3000, TASK + 32));
    }

    #[test]
    fn a_thread_blocked_acquiring_a_stdio_lock_holds_nothing() {
        // The libc futex wrapper, std's slow path (the wait, then around it), the stdio
        // function taking the lock, then the task.
        let frames = [
            frame(0x1100, 0x7_0000),
            frame(0x4010, 0x7_0100),
            frame(0x4200, 0x7_0200),
            frame(0x3010, 0x7_0300),
            frame(TASK, 0x7_1000),
            frame(TASK, BOUNDARY + 16),
        ];
        let walk = Walk::new(BOUNDARY, BOUNDARY, Wait::Futex, false, false).over(&Fake, &frames);
        assert!(walk.defer.is_none());
        assert!(walk.reached_boundary);
        assert_eq!(
            (walk.holder_cfa, walk.want_ret),
            (0, false),
            "the taker holds nothing yet"
        );
    }

    #[test]
    fn a_futex_wait_deep_inside_libc_may_hold_its_private_lock() {
        let frames = [
            frame(0x1100, 0x7_0000),
            frame(0x1200, 0x7_0100),
            frame(TASK, 0x7_1000),
            frame(TASK, BOUNDARY + 16),
        ];
        let walk = Walk::new(BOUNDARY, BOUNDARY, Wait::Futex, false, false).over(&Fake, &frames);
        assert!(matches!(walk.defer, Some(Defer::Library)));
        // A sleep's wrapper is two frames deep.
        let walk = Walk::new(BOUNDARY, BOUNDARY, Wait::Sleep, false, false).over(&Fake, &frames);
        assert!(walk.defer.is_none());
    }

    #[test]
    fn a_running_thread_in_libc_is_redirected_where_libc_returns_to_the_task() {
        let frames = [
            frame(0x1100, 0x7_0000),
            frame(0x1200, 0x7_0100),
            frame(TASK + 48, 0x7_0200),
            frame(TASK, BOUNDARY + 16),
        ];
        let walk = Walk::new(BOUNDARY, BOUNDARY, Wait::None, true, false).over(&Fake, &frames);
        assert!(walk.defer.is_none());
        assert_eq!(
            (walk.lib_exit_cfa, walk.lib_exit_ret),
            (0x7_0200, TASK + 48)
        );
    }

    #[test]
    fn inside_the_loader_or_unwinder_nothing_is_redirected() {
        let frames = [frame(0x2100, 0x7_0000), frame(TASK, 0x7_0100)];
        let walk = Walk::new(BOUNDARY, BOUNDARY, Wait::None, true, false).over(&Fake, &frames);
        assert!(matches!(walk.defer, Some(Defer::Library)));
    }

    #[test]
    fn a_task_on_its_way_from_its_cancel_to_the_unwinder_is_not_frozen() {
        let frames = [frame(0x6010, 0x7_0000), frame(TASK, BOUNDARY + 16)];
        let walk = running().over(&Fake, &frames);
        assert!(matches!(walk.defer, Some(Defer::NoFreeze)));
        // Already panicking, it only passes through: judged by its other frames.
        let walk = Walk::new(BOUNDARY, BOUNDARY, Wait::None, false, true).over(&Fake, &frames);
        assert!(walk.defer.is_none());
    }

    #[test]
    fn a_thread_finishing_a_caught_unwind_defers_as_panicking() {
        let frames = [frame(0x5010, 0x7_0000), frame(TASK, BOUNDARY + 16)];
        let walk = running().over(&Fake, &frames);
        assert!(matches!(walk.defer, Some(Defer::Panicking)));
    }
}
