//! An opt-in global allocator wrapper that keeps freezes out of the allocator.
//!
//! The freeze gate recognises the system libraries' text (glibc's malloc included) and
//! never freezes a thread there. An allocator linked into the executable (mimalloc,
//! jemalloc) is invisible to that check: a thread frozen inside it would leave its lock
//! held and every later allocation in the process waiting. Wrapping it in
//! [`NoFreezeAlloc`] raises the calling pool thread's no-freeze counter for the length of
//! each call, so the freeze waits until the call is over.
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: microsched::NoFreezeAlloc<mimalloc::MiMalloc> =
//!     microsched::NoFreezeAlloc(mimalloc::MiMalloc);
//! ```

use std::alloc::{GlobalAlloc, Layout};

use crate::handler::FreezeGuard;

/// A [`GlobalAlloc`] that runs the allocator it wraps with freezes held off (see the
/// module docs). It costs two relaxed read-modify-writes and a thread-local read per call.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFreezeAlloc<A>(pub A);

// SAFETY: every method forwards to the wrapped allocator with the same arguments, so it
// upholds `GlobalAlloc`'s contract exactly as `A` does. The guard neither allocates nor
// panics (a const thread-local read and atomics).
unsafe impl<A: GlobalAlloc> GlobalAlloc for NoFreezeAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _guard = FreezeGuard::new();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _guard = FreezeGuard::new();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _guard = FreezeGuard::new();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _guard = FreezeGuard::new();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}
