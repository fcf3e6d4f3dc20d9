//! Capturing the stack of a sampled call, in process, without allocating:
//! a frame-pointer walk checked against the thread's stack bounds, or
//! (feature `profile`) unwinding from `.eh_frame` through `backtrace`.

use core::sync::atomic::{AtomicU8, Ordering::Relaxed};

use super::store::{STACK_FP, STACK_TRUNCATED};

/// The deepest stack the profiler records.
pub(crate) const DEPTH_LIMIT: usize = 256;

/// How stacks are captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    FramePointers = 1,
    Dwarf = 2,
}

/// The method chosen at start (0: none yet).
static METHOD: AtomicU8 = AtomicU8::new(0);

pub(crate) fn set_method(method: Method) {
    METHOD.store(method as u8, Relaxed);
}

pub(crate) fn method() -> Method {
    match METHOD.load(Relaxed) {
        2 => Method::Dwarf,
        _ => Method::FramePointers,
    }
}

/// Captures the caller's stack into `buf`, leaf first (return addresses).
/// Returns the frames written and the stack's flags. `stack_hi` is the top
/// of the thread's stack (0 if unknown: the frame-pointer walk then records
/// nothing rather than read memory it cannot vouch for).
#[inline(never)]
pub(crate) fn capture(buf: &mut [usize], method: Method, stack_hi: usize) -> (usize, u16) {
    match method {
        Method::FramePointers => walk_frame_pointers(buf, stack_hi),
        Method::Dwarf => unwind(buf, stack_hi),
    }
}

/// Follows the frame-pointer chain from this function's own frame. Every
/// frame record read lies between the current stack pointer and `stack_hi`,
/// 8-aligned, above the previous one: a chain that leaves the stack (code
/// built without frame pointers keeps other values in the register) ends
/// the walk instead of faulting.
#[inline(never)]
pub(crate) fn walk_frame_pointers(buf: &mut [usize], stack_hi: usize) -> (usize, u16) {
    let (mut fp, sp) = registers();
    let mut low = sp;
    let mut n = 0;
    let mut flags = STACK_FP;
    // The first record is this function's own: it returns into `capture`.
    let mut skip = 1;
    while n < buf.len() {
        if fp == 0 {
            return (n, flags); // the outermost frame (clone, _start) zeroes it
        }
        if fp < low || fp % 8 != 0 || fp.saturating_add(16) > stack_hi {
            return (n, flags | STACK_TRUNCATED); // the chain left the stack
        }
        // SAFETY: [fp, fp + 16) lies inside this thread's stack, between the
        // current stack pointer and the top, which is mapped memory.
        let (next, ret) = unsafe { (*(fp as *const usize), *((fp + 8) as *const usize)) };
        if ret == 0 {
            return (n, flags);
        }
        if skip > 0 {
            skip -= 1;
        } else {
            buf[n] = ret;
            n += 1;
        }
        low = fp + 16;
        fp = next;
    }
    flags |= STACK_TRUNCATED;
    (n, flags)
}

/// The frame pointer and stack pointer of the calling function.
#[inline(always)]
fn registers() -> (usize, usize) {
    let (fp, sp): (usize, usize);
    // SAFETY: reads two registers into locals; no memory is touched.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        core::arch::asm!("mov {}, rbp", "mov {}, rsp", out(reg) fp, out(reg) sp, options(nomem, nostack, preserves_flags));
    }
    // SAFETY: as above.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        core::arch::asm!("mov {}, x29", "mov {}, sp", out(reg) fp, out(reg) sp, options(nomem, nostack, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let (fp, sp) = (0, 0);
    (fp, sp)
}

/// Unwinds with the `.eh_frame` tables: heapprobe's own unwinder with kept
/// rules where it is available and calibrated (`eh.rs`), else, or when it
/// meets a frame it cannot follow, libgcc's through `backtrace`.
#[cfg(feature = "profile")]
fn unwind(buf: &mut [usize], stack_hi: usize) -> (usize, u16) {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
    if FAST.load(Relaxed) == FAST_ON {
        if let Some((n, flags)) = super::eh::unwind(buf, stack_hi) {
            // Frames above `capture`'s caller, counted by calibration.
            let skip = (FAST_SKIP.load(Relaxed) as usize).min(n);
            buf.copy_within(skip..n, 0);
            return (n - skip, flags);
        }
    }
    let _ = stack_hi;
    unwind_libgcc(buf)
}

/// Unwinds through `backtrace` (libgcc's `_Unwind_Backtrace`, which finds
/// tables with glibc's lock-free `_dl_find_object` and allocates nothing).
#[cfg(feature = "profile")]
fn unwind_libgcc(buf: &mut [usize]) -> (usize, u16) {
    let mut n = 0;
    let mut flags = 0;
    // SAFETY: `trace_unsynchronized` is safe to call when no other thread
    // runs the same function concurrently with a non-reentrant unwinder; on
    // Linux it is libgcc's thread-safe `_Unwind_Backtrace`. The closure
    // neither allocates nor panics.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            if n == buf.len() {
                flags |= STACK_TRUNCATED;
                return false;
            }
            let ip = frame.ip() as usize;
            if ip == 0 {
                return false; // past the outermost frame
            }
            buf[n] = ip;
            n += 1;
            true
        });
    }
    // The first frames are this function and `backtrace`'s own: drop the
    // ones above `capture`'s caller (at most 3, counted by calibration).
    let skip = (super::sampler::dwarf_skip() as usize).min(n);
    buf.copy_within(skip..n, 0);
    (n - skip, flags)
}

/// The fast unwinder's state: off until calibrated (and while calibrating
/// libgcc's path), on once it returned the known call chain.
static FAST: AtomicU8 = AtomicU8::new(FAST_OFF);
/// Frames the fast unwinder reports above `capture`'s caller.
static FAST_SKIP: AtomicU8 = AtomicU8::new(0);
const FAST_OFF: u8 = 0;
const FAST_ON: u8 = 1;

/// Whether stacks unwound from `.eh_frame` use heapprobe's own unwinder.
pub(crate) fn fast_unwinder() -> bool {
    FAST.load(Relaxed) == FAST_ON
}

/// Stacks heapprobe's own unwinder handed to libgcc since the process
/// began (a frame whose rule it cannot follow).
pub(crate) fn fast_gave_up() -> u64 {
    #[cfg(all(feature = "profile", target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
    return super::eh::gave_up();
    #[cfg(not(all(feature = "profile", target_os = "linux", target_env = "gnu", target_arch = "x86_64")))]
    0
}

#[cfg(not(feature = "profile"))]
fn unwind(buf: &mut [usize], stack_hi: usize) -> (usize, u16) {
    walk_frame_pointers(buf, stack_hi)
}

/// Whether unwinding from `.eh_frame` is compiled in (feature `profile`).
pub(crate) const HAS_DWARF: bool = cfg!(feature = "profile");

/// What a calibration walk found.
pub(crate) struct Calibration {
    /// The frame-pointer walk recovered the return addresses of the known
    /// call chain: this build keeps frame pointers.
    pub(crate) frame_pointers: bool,
    /// Frames `backtrace` reports above `capture`'s caller.
    pub(crate) dwarf_skip: u32,
}

/// Measures whether frame pointers hold in this build: walks the stack from
/// inside a chain of three known functions and checks that the walk
/// returns into each of them. Built with the same flags as the user's code
/// (RUSTFLAGS apply to every crate), so it speaks for their frames too.
///
/// Then unwinds the same chain from `.eh_frame` with libgcc, and with
/// heapprobe's own unwinder: the latter is used only if it returns exactly
/// the frames libgcc returns. Runs once, before any stack is captured from
/// `.eh_frame`, outside the allocator path, and never on two threads at
/// once (it switches the fast unwinder on and off; `sampler::ensure_ready`
/// holds a lock around it).
pub(crate) fn calibrate(stack_hi: usize) -> Calibration {
    let mut fp = [0usize; 8];
    // libgcc's stack, then the fast unwinder's, which must agree.
    let mut dw = [[0usize; 64]; 2];
    let mut nd = [0usize; 2];
    let mut nf = 0;
    #[cfg(all(feature = "profile", target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
    let fast_possible = HAS_DWARF && stack_hi > 1 && super::eh::init();
    #[cfg(not(all(feature = "profile", target_os = "linux", target_env = "gnu", target_arch = "x86_64")))]
    let fast_possible = false;
    let mut gave_up = fast_gave_up();
    FAST_SKIP.store(0, Relaxed);
    for pass in 0..if fast_possible { 2 } else { 1 } {
        FAST.store(if pass == 0 { FAST_OFF } else { FAST_ON }, Relaxed);
        gave_up = fast_gave_up();
        (nf, nd[pass]) = calibrate_outer(&mut fp, &mut dw[pass], stack_hi);
    }
    // The walk starts at `capture`'s return into `inner`, then `inner`'s
    // into `middle`, `middle`'s into `outer`.
    let frame_pointers = nf >= 3 && known_chain(&fp[..3]);
    // Calibration runs before any skip is set: in the unwound stack, the
    // first frame inside `inner` is `capture`'s caller, and everything
    // before it is `capture` and the unwinder's own frames.
    let [gcc, fast] = &dw;
    let dwarf_skip = gcc[..nd[0]].windows(3).position(known_chain);
    let fast_skip = fast[..nd[1]].windows(3).position(known_chain);
    let agrees = match (fast_possible, dwarf_skip, fast_skip) {
        // Every frame but the return into `calibrate`, which the two passes
        // may reach from two call sites (the loop may be unrolled); the
        // frames after it follow from the rule that found it.
        (true, Some(g), Some(f)) => {
            fast_gave_up() == gave_up
                && nd[0] < gcc.len()
                && nd[1] - f == nd[0] - g
                && nd[0] - g > 4
                && fast[f..f + 3] == gcc[g..g + 3]
                && fast[f + 4..nd[1]] == gcc[g + 4..nd[0]]
        }
        _ => false,
    };
    if agrees {
        FAST_SKIP.store(fast_skip.unwrap_or(0) as u8, Relaxed);
    } else {
        FAST.store(FAST_OFF, Relaxed);
    }
    Calibration { frame_pointers, dwarf_skip: dwarf_skip.unwrap_or(0) as u32 }
}

/// Whether three return addresses return into `calibrate_inner`,
/// `calibrate_middle` and `calibrate_outer`, in that order. Return
/// addresses lie after the start of the function they return into; these
/// three are tiny.
fn known_chain(frames: &[usize]) -> bool {
    let inside = |addr: usize, f: usize| addr > f && addr < f + 512;
    let outer = calibrate_outer as fn(&mut [usize; 8], &mut [usize; 64], usize) -> (usize, usize) as usize;
    let middle = calibrate_middle as fn(&mut [usize; 8], &mut [usize; 64], usize) -> (usize, usize) as usize;
    let inner = calibrate_inner as fn(&mut [usize; 8], &mut [usize; 64], usize) -> (usize, usize) as usize;
    frames.len() >= 3 && inside(frames[0], inner) && inside(frames[1], middle) && inside(frames[2], outer)
}

#[inline(never)]
fn calibrate_outer(fp: &mut [usize; 8], dw: &mut [usize; 64], hi: usize) -> (usize, usize) {
    let r = calibrate_middle(fp, dw, hi);
    core::hint::black_box(r)
}

#[inline(never)]
fn calibrate_middle(fp: &mut [usize; 8], dw: &mut [usize; 64], hi: usize) -> (usize, usize) {
    let r = calibrate_inner(fp, dw, hi);
    core::hint::black_box(r)
}

#[inline(never)]
fn calibrate_inner(fp: &mut [usize; 8], dw: &mut [usize; 64], hi: usize) -> (usize, usize) {
    let nf = capture(fp, Method::FramePointers, hi).0;
    let nd = if HAS_DWARF { capture(dw, Method::Dwarf, hi).0 } else { 0 };
    core::hint::black_box((nf, nd))
}
