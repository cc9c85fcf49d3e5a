//! The handler's own walk of the interrupted thread's frames. **Part of the handler's
//! zone.** It never calls the unwinder (libgcc's `_Unwind_Find_FDE` takes a mutex
//! once anything has registered frames with `__register_frame`, as every JIT does: a
//! handler walking with it on a thread interrupted inside it deadlocks, and every later
//! unwind in the process with it). Instead it reads the unwind tables of the loaded
//! objects (`.eh_frame_hdr`'s binary search table, then the FDE and CIE) with `gimli`,
//! without allocating (the rules live on the handler's stack), from tables of objects
//! recorded in normal context (`places::unwind_tables`, filled by `runtime/text_scan.rs`). Frames of code with no tables
//! there (a JIT's, registered at run time) are unwalkable: the gate defers.
//!
//! Memory it reads: those objects' tables, and the thread's own stack, never anything
//! outside `[stack_lo, stack_hi)`: a frame on another stack (a stackful coroutine's) is
//! unwalkable too. An object's tables are used only if glibc's `_dl_find_object` (lock-free)
//! says the object loaded at the address now is the one recorded: one unloaded since, its
//! addresses reused, is unwalkable until the monitor's next refresh.

use core::ops::ControlFlow;

use super::frames::Frame;

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, Register, RegisterRule,
    UnwindContext, UnwindContextStorage, UnwindSection, UnwindTableRow,
};

use crate::handler::places;

/// DWARF register numbers on x86_64: rbx, rbp, rsp, r12–r15, and the return address.
const RBX: usize = 3;
const RBP: usize = 6;
const RSP: usize = 7;
const RA: usize = 16;
/// The registers a caller's frame is restored from (callee-saved, plus rsp and the
/// return address).
const RESTORED: [usize; 7] = [RBX, RBP, 12, 13, 14, 15, RA];

/// The rules of one unwind table row, on the stack: no allocation in the handler.
struct OnStack;

impl<T: gimli::ReaderOffset> UnwindContextStorage<T> for OnStack {
    type Rules = [(Register, RegisterRule<T>); 24];
    type Stack = [UnwindTableRow<T, Self>; 4];
}

/// How a walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    /// The visitor stopped it.
    Stopped,
    /// A frame could not be walked past: no unwind tables for its code, a rule the walk
    /// does not follow, a stack pointer outside the thread's stack or not going up, or
    /// the outermost frame.
    Unwalkable,
    /// A frame's code belongs to an object loaded since the tables were last refreshed:
    /// a refresh would make it walkable.
    Unrecorded,
}

/// The registers the walk tracks (DWARF numbering, 0–16).
pub(super) type Registers = [usize; 17];

/// The registers of the context a signal interrupted.
///
/// # Safety
///
/// `context` is the `ucontext_t` the kernel passed to an `SA_SIGINFO` handler.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn registers(context: *mut libc::c_void) -> Registers {
    // SAFETY: the caller's contract.
    let g = unsafe { &(*context.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
    let r = |i: i32| g[i as usize] as usize;
    [
        r(libc::REG_RAX),
        r(libc::REG_RDX),
        r(libc::REG_RCX),
        r(libc::REG_RBX),
        r(libc::REG_RSI),
        r(libc::REG_RDI),
        r(libc::REG_RBP),
        r(libc::REG_RSP),
        r(libc::REG_R8),
        r(libc::REG_R9),
        r(libc::REG_R10),
        r(libc::REG_R11),
        r(libc::REG_R12),
        r(libc::REG_R13),
        r(libc::REG_R14),
        r(libc::REG_R15),
        r(libc::REG_RIP),
    ]
}

/// A redirected return the walk must see through: a return address equal to `stub`,
/// in the slot `slot`, stands for `ret`.
#[derive(Clone, Copy)]
pub(super) struct Redirect {
    pub(super) slot: usize,
    pub(super) stub: usize,
    pub(super) ret: usize,
}

/// Walks from the interrupted context `regs` outwards, calling `visit` with each frame
/// until it breaks, reading no memory outside `stack` (`[lo, hi)`). The interrupted
/// stack pointer may be lower, down to `floor` (a stack overflow faults below the
/// stack). Async-signal-safe.
pub(super) fn walk(
    mut regs: Registers,
    stack: (usize, usize),
    floor: usize,
    redirect: Option<Redirect>,
    mut visit: impl FnMut(Frame) -> ControlFlow<()>,
) -> End {
    let (lo, hi) = stack;
    let read = |at: usize| -> Option<usize> {
        if at % 8 != 0 || at < lo || at.checked_add(8)? > hi {
            return None;
        }
        // SAFETY: an aligned word inside the thread's own stack, which stays mapped.
        Some(unsafe { core::ptr::read_volatile(at as *const usize) })
    };
    let mut ctx = UnwindContext::<usize, OnStack>::new_in();
    let mut first = true;
    loop {
        let ip = regs[RA];
        let sp = regs[RSP];
        if sp < lo.min(floor) || (sp < lo && !first) || sp >= hi || ip == 0 {
            return End::Unwalkable;
        }
        // A return address points after its call: look up the call. The interrupted
        // frame's PC is the instruction itself.
        let lookup = if first { ip } else { ip - 1 };
        let Some(tables) = places::unwind_tables(lookup) else {
            return if crate::sys::async_safe::eh_frame_hdr_at(lookup).is_some() {
                End::Unrecorded
            } else {
                End::Unwalkable
            };
        };
        let Some((start, row)) = row_for(&tables, lookup, &mut ctx) else {
            return End::Unwalkable;
        };
        if visit(Frame { ip, sp, start }).is_break() {
            return End::Stopped;
        }
        let cfa = match row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } => {
                let Some(&base) = regs.get(usize::from(register.0)) else {
                    return End::Unwalkable;
                };
                base.wrapping_add(*offset as usize)
            }
            CfaRule::Expression(_) => return End::Unwalkable,
        };
        // Frames only go up the stack.
        if cfa <= sp || cfa > hi {
            return End::Unwalkable;
        }
        let mut next = regs;
        for reg in RESTORED {
            next[reg] = match row.register(Register(reg as u16)) {
                // No rule: the register keeps its value (callee-saved and untouched);
                // but a return address must have one.
                RegisterRule::Undefined if reg == RA => return End::Unwalkable,
                RegisterRule::Undefined | RegisterRule::SameValue => regs[reg],
                RegisterRule::Offset(o) => match read(cfa.wrapping_add(o as usize)) {
                    Some(v) => v,
                    None => return End::Unwalkable,
                },
                RegisterRule::ValOffset(o) => cfa.wrapping_add(o as usize),
                RegisterRule::Register(r) => match regs.get(usize::from(r.0)) {
                    Some(&v) => v,
                    None => return End::Unwalkable,
                },
                _ => return End::Unwalkable,
            };
        }
        next[RSP] = cfa;
        // A return redirected to the freeze trampoline stands for the one it replaced.
        if let Some(r) = redirect {
            if next[RA] == r.stub && cfa == r.slot + 8 {
                next[RA] = r.ret;
            }
        }
        regs = next;
        first = false;
    }
}

/// The start of the function holding `pc`, and its unwind row there.
fn row_for<'ctx>(
    tables: &places::UnwindTables,
    pc: usize,
    ctx: &'ctx mut UnwindContext<usize, OnStack>,
) -> Option<(usize, &'ctx UnwindTableRow<usize, OnStack>)> {
    let (hdr_at, hdr_len) = tables.hdr;
    let (eh_at, eh_len) = tables.eh_frame;
    // SAFETY: the tables of a loaded object, recorded from its program headers in normal
    // context (`places.rs`); an object is not unloaded while its code is on a stack.
    let (hdr, eh) = unsafe {
        (
            core::slice::from_raw_parts(hdr_at as *const u8, hdr_len),
            core::slice::from_raw_parts(eh_at as *const u8, eh_len),
        )
    };
    let bases = BaseAddresses::default()
        .set_eh_frame_hdr(hdr_at as u64)
        .set_eh_frame(eh_at as u64)
        .set_text(tables.text_lo as u64);
    let hdr = EhFrameHdr::new(hdr, LittleEndian)
        .parse(&bases, core::mem::size_of::<usize>() as u8)
        .ok()?;
    let mut eh_frame = EhFrame::new(eh, LittleEndian);
    eh_frame.set_address_size(core::mem::size_of::<usize>() as u8);
    let fde = hdr
        .table()?
        .fde_for_address(&eh_frame, &bases, pc as u64, EhFrame::cie_from_offset)
        .ok()?;
    let start = usize::try_from(fde.initial_address()).ok()?;
    let row = fde
        .unwind_info_for_address(&eh_frame, &bases, ctx, pc as u64)
        .ok()?;
    Some((start, row))
}
