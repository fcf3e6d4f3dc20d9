//! A fast `.eh_frame` unwinder for x86_64 Linux with glibc 2.35 or later
//! (feature `profile`): the unwind rule of each return address is computed
//! once with gimli from the tables glibc's `_dl_find_object` finds, then
//! kept in a fixed table, so that the next sample through the same code
//! costs a lookup and two stack reads per frame instead of libgcc's
//! `_Unwind_Backtrace`, which parses the CIE and FDE and runs their CFA
//! programs for every frame of every sample (about 30 000 instructions for
//! a 20-frame stack here).
//!
//! What it cannot follow (a CFA or register given by a DWARF expression, as
//! in signal trampolines and PLT stubs, or a stack read outside the
//! thread's stack) makes it give up, and the caller then unwinds the whole
//! stack with libgcc: a sample is never recorded from a guess. Code without
//! unwind tables ends the stack, as it does for libgcc. The calibration
//! checks that it returns the known call chain, or it stays off.
//!
//! Nothing here allocates or locks: gimli parses in place with its context
//! on the stack, `_dl_find_object` is lock-free, and the rule table is a
//! static array (heapprobe's own memory) updated under a per-entry sequence
//! number. Only rules of the module that holds heapprobe itself and of
//! libc (every thread's outermost frames) are kept: neither can be unloaded
//! while heapprobe runs, so a kept rule never outlives its code (a
//! `dlclose`d library's addresses may be reused); other libraries' frames
//! are computed each time.

use core::ffi::{c_int, c_void};
use core::sync::atomic::{fence, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, EndianSlice, NativeEndian, Pointer, Register, RegisterRule,
    UnwindContext, UnwindContextStorage, UnwindSection, UnwindTableRow, X86_64,
};

use super::store::STACK_TRUNCATED;

/// glibc's `struct dl_find_object` (dlfcn.h, glibc 2.35).
#[repr(C)]
struct DlFindObject {
    flags: u64,
    map_start: *mut c_void,
    map_end: *mut c_void,
    link_map: *mut c_void,
    eh_frame: *mut c_void,
    reserved: [u64; 7],
}

type FindObject = unsafe extern "C" fn(*mut c_void, *mut DlFindObject) -> c_int;

/// `_dl_find_object`, looked up at run time (0: not there, older glibc or
/// another libc; then libgcc unwinds).
static FIND: AtomicUsize = AtomicUsize::new(0);
/// The address ranges whose rules are kept: the module that holds this
/// code, and libc's (which holds every thread's outermost frames).
static KEEP: [[AtomicUsize; 2]; 2] =
    [[AtomicUsize::new(0), AtomicUsize::new(0)], [AtomicUsize::new(0), AtomicUsize::new(0)]];
/// 0: not looked up; 1: usable; 2: not available.
static STATE: AtomicU8 = AtomicU8::new(0);
/// Stacks this unwinder handed back to libgcc (a rule it cannot follow).
static GAVE_UP: AtomicU64 = AtomicU64::new(0);

/// Looks up `_dl_find_object` and this module's range. Runs outside the
/// allocator path (the profiler's start); glibc's `dlsym` allocates, if at
/// all, with libc's own `malloc`, never through Rust's global allocator.
pub(crate) fn init() -> bool {
    match STATE.load(Acquire) {
        1 => return true,
        2 => return false,
        _ => {}
    }
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no
    // other preconditions.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_dl_find_object".as_ptr()) };
    let mut usable = false;
    if !sym.is_null() {
        // SAFETY: glibc exports `_dl_find_object` with exactly this type.
        let find: FindObject = unsafe { core::mem::transmute::<*mut c_void, FindObject>(sym) };
        if let Some(own) = find_object(find, init as *const () as usize) {
            KEEP[0][0].store(own.map_start as usize, Relaxed);
            KEEP[0][1].store(own.map_end as usize, Relaxed);
            FIND.store(sym as usize, Relaxed);
            usable = !own.eh_frame.is_null();
        }
        // SAFETY: as above.
        let libc_start = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__libc_start_main".as_ptr()) };
        if let Some(libc) = (!libc_start.is_null()).then(|| find_object(find, libc_start as usize)).flatten() {
            KEEP[1][0].store(libc.map_start as usize, Relaxed);
            KEEP[1][1].store(libc.map_end as usize, Relaxed);
        }
    }
    STATE.store(if usable { 1 } else { 2 }, Release);
    usable
}

/// How many stacks this unwinder handed to libgcc since the process began.
pub(crate) fn gave_up() -> u64 {
    GAVE_UP.load(Relaxed)
}

fn find_object(find: FindObject, pc: usize) -> Option<DlFindObject> {
    let mut out = DlFindObject {
        flags: 0,
        map_start: core::ptr::null_mut(),
        map_end: core::ptr::null_mut(),
        link_map: core::ptr::null_mut(),
        eh_frame: core::ptr::null_mut(),
        reserved: [0; 7],
    };
    // SAFETY: `_dl_find_object` only writes `out`; it is lock-free and
    // async-signal-safe by glibc's contract.
    (unsafe { find(pc as *mut c_void, &mut out) } == 0).then_some(out)
}

/// How to step from a frame to its caller.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rule {
    /// The caller's frame: CFA = (RBP if `cfa_rbp`, else RSP) + `cfa_off`;
    /// the return address at CFA - 8; RBP restored from CFA + `rbp_off`
    /// when `rbp_saved`, else unchanged.
    Step { cfa_rbp: bool, cfa_off: i32, rbp_saved: bool, rbp_off: i16 },
    /// The outermost frame, or code without unwind tables.
    End,
}

impl Rule {
    const VALID: u64 = 1;
    const CFA_RBP: u64 = 2;
    const RBP_SAVED: u64 = 4;
    const END: u64 = 8;

    fn pack(self) -> u64 {
        match self {
            Rule::End => Self::VALID | Self::END,
            Rule::Step { cfa_rbp, cfa_off, rbp_saved, rbp_off } => {
                Self::VALID
                    | if cfa_rbp { Self::CFA_RBP } else { 0 }
                    | if rbp_saved { Self::RBP_SAVED } else { 0 }
                    | ((rbp_off as u16 as u64) << 16)
                    | ((cfa_off as u32 as u64) << 32)
            }
        }
    }

    fn unpack(bits: u64) -> Option<Rule> {
        if bits & Self::VALID == 0 {
            return None;
        }
        if bits & Self::END != 0 {
            return Some(Rule::End);
        }
        Some(Rule::Step {
            cfa_rbp: bits & Self::CFA_RBP != 0,
            cfa_off: (bits >> 32) as u32 as i32,
            rbp_saved: bits & Self::RBP_SAVED != 0,
            rbp_off: (bits >> 16) as u16 as i16,
        })
    }
}

/// One kept rule: `seq` is odd while a writer fills the entry.
struct Entry {
    seq: AtomicU64,
    pc: AtomicU64,
    rule: AtomicU64,
}

const TABLE_BITS: u32 = 12;
/// Distinct return addresses kept (24 bytes each, 96 KiB of `.bss`, only
/// the touched pages resident).
const TABLE_LEN: usize = 1 << TABLE_BITS;

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Entry = Entry { seq: AtomicU64::new(0), pc: AtomicU64::new(0), rule: AtomicU64::new(0) };
static TABLE: [Entry; TABLE_LEN] = [EMPTY; TABLE_LEN];

fn slot(pc: usize) -> &'static Entry {
    &TABLE[((pc as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - TABLE_BITS)) as usize]
}

fn cached(pc: usize) -> Option<Rule> {
    let entry = slot(pc);
    let before = entry.seq.load(Acquire);
    if before & 1 != 0 {
        return None;
    }
    let key = entry.pc.load(Relaxed);
    let bits = entry.rule.load(Relaxed);
    fence(Acquire);
    if entry.seq.load(Relaxed) != before || key != pc as u64 {
        return None;
    }
    Rule::unpack(bits)
}

fn keep(pc: usize, rule: Rule) {
    let entry = slot(pc);
    let seq = entry.seq.load(Relaxed);
    // Another thread is writing it: this one is not kept, which is fine.
    if seq & 1 != 0 || entry.seq.compare_exchange(seq, seq + 1, Acquire, Relaxed).is_err() {
        return;
    }
    fence(Release);
    entry.pc.store(pc as u64, Relaxed);
    entry.rule.store(rule.pack(), Relaxed);
    entry.seq.store(seq + 2, Release);
}

/// gimli's unwind context, all in place (no `Box`): at most 32 register
/// rules and 4 remembered states, more than any x86_64 FDE uses.
struct InPlace;

impl UnwindContextStorage<usize> for InPlace {
    type Rules = [(Register, RegisterRule<usize>); 32];
    type Stack = [UnwindTableRow<usize, Self>; 4];
}

/// The rule for `pc` (a return address minus one, or the first frame's own
/// address), or `None` if it is one this unwinder cannot follow.
fn rule_for(pc: usize, find: FindObject) -> Option<Rule> {
    let keepable = KEEP.iter().any(|[start, end]| (start.load(Relaxed)..end.load(Relaxed)).contains(&pc));
    if keepable {
        if let Some(rule) = cached(pc) {
            return Some(rule);
        }
    }
    let rule = compute(pc, find)?;
    if keepable {
        keep(pc, rule);
    }
    Some(rule)
}

#[inline(never)]
fn compute(pc: usize, find: FindObject) -> Option<Rule> {
    let Some(object) = find_object(find, pc) else { return Some(Rule::End) };
    let (end, hdr) = (object.map_end as usize, object.eh_frame as usize);
    if hdr == 0 {
        return Some(Rule::End);
    }
    // glibc's range is not always the whole object: when rust-lld starts
    // the code segment on a page of its own, `_dl_find_object` gives the
    // code segment alone, and `.eh_frame_hdr` (PT_GNU_EH_FRAME, in the
    // read-only segment) lies below `start`. The header is the loader's
    // own pointer into this object, so it bounds the object from below.
    if hdr >= end {
        return None;
    }
    // SAFETY: `[hdr, end)` runs from the object's unwind header, which the
    // loader mapped, to the end of its code as glibc reports it. gimli
    // reads only the header, its table, and the entries the table points
    // to, which the loader mapped with the module (every PT_LOAD below the
    // end of the code); nothing else of the range is read.
    let hdr_bytes = unsafe { core::slice::from_raw_parts(hdr as *const u8, end - hdr) };
    let bases = BaseAddresses::default().set_eh_frame_hdr(hdr as u64);
    let parsed = EhFrameHdr::new(hdr_bytes, NativeEndian).parse(&bases, 8).ok()?;
    let eh_frame = match parsed.eh_frame_ptr() {
        Pointer::Direct(address) => address as usize,
        Pointer::Indirect(_) => return None,
    };
    if !(hdr..end).contains(&eh_frame) {
        return None;
    }
    // SAFETY: as above, `[eh_frame, end)` is inside the module's mapping.
    let frame_bytes = unsafe { core::slice::from_raw_parts(eh_frame as *const u8, end - eh_frame) };
    let mut section = EhFrame::from(EndianSlice::new(frame_bytes, NativeEndian));
    section.set_address_size(8);
    let bases = bases.set_eh_frame(eh_frame as u64);
    let table = parsed.table()?;
    let mut context = UnwindContext::<usize, InPlace>::new_in();
    let row = match table.unwind_info_for_address(&section, &bases, &mut context, pc as u64, EhFrame::cie_from_offset) {
        Ok(row) => row,
        Err(gimli::Error::NoUnwindInfoForAddress) => return Some(Rule::End),
        Err(_) => return None,
    };
    let (cfa_rbp, cfa_off) = match *row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RSP => (false, offset),
        CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RBP => (true, offset),
        _ => return None,
    };
    match row.register(X86_64::RA) {
        Some(RegisterRule::Offset(-8)) => {}
        Some(RegisterRule::Undefined) => return Some(Rule::End),
        _ => return None,
    }
    let (rbp_saved, rbp_off) = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) => (false, 0),
        Some(RegisterRule::Offset(offset)) => (true, i16::try_from(offset).ok()?),
        _ => return None,
    };
    Some(Rule::Step { cfa_rbp, cfa_off: i32::try_from(cfa_off).ok()?, rbp_saved, rbp_off })
}

/// Unwinds the calling thread's stack into `buf` (return addresses, leaf
/// first, starting with the return into this function's caller), reading
/// only between the current stack pointer and `stack_hi`. `None`: the
/// unwinder is not available, or met a frame it cannot follow; the caller
/// then uses libgcc.
#[inline(never)]
pub(crate) fn unwind(buf: &mut [usize], stack_hi: usize) -> Option<(usize, u16)> {
    let find = FIND.load(Relaxed);
    if find == 0 || stack_hi <= 1 {
        return None;
    }
    // SAFETY: FIND holds `_dl_find_object`'s address, stored by `init`.
    let find: FindObject = unsafe { core::mem::transmute::<usize, FindObject>(find) };
    let (pc, mut sp, mut fp): (usize, usize, usize);
    // SAFETY: reads the instruction pointer and two registers into locals;
    // no memory is touched.
    unsafe {
        core::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {fp}, rbp",
            pc = out(reg) pc,
            sp = out(reg) sp,
            fp = out(reg) fp,
            options(nomem, nostack, preserves_flags)
        );
    }
    let mut n = 0;
    // The first frame's address is an instruction of this function; every
    // later one is a return address, looked up at the call before it.
    let mut lookup = pc;
    loop {
        let result = match rule_for(lookup, find) {
            None => None,
            Some(Rule::End) => return Some((n, 0)),
            Some(Rule::Step { cfa_rbp, cfa_off, rbp_saved, rbp_off }) => {
                let cfa = (if cfa_rbp { fp } else { sp }).wrapping_add_signed(cfa_off as isize);
                // The caller's frame is above this one and inside the stack.
                if cfa <= sp || cfa > stack_hi || cfa % 8 != 0 {
                    None
                } else {
                    // SAFETY: `cfa - 8` is 8-aligned and lies in
                    // [sp, stack_hi), this thread's mapped stack.
                    let ra = unsafe { *((cfa - 8) as *const usize) };
                    let saved = cfa.wrapping_add_signed(rbp_off as isize);
                    if !rbp_saved {
                        Some((ra, cfa, fp))
                    } else if saved < sp || saved.saturating_add(8) > stack_hi || saved % 8 != 0 {
                        None
                    } else {
                        // SAFETY: as above, `saved` is inside the stack.
                        Some((ra, cfa, unsafe { *(saved as *const usize) }))
                    }
                }
            }
        };
        let Some((ra, cfa, next_fp)) = result else {
            GAVE_UP.fetch_add(1, Relaxed);
            return None;
        };
        if ra == 0 {
            return Some((n, 0));
        }
        if n == buf.len() {
            return Some((n, STACK_TRUNCATED));
        }
        buf[n] = ra;
        n += 1;
        lookup = ra - 1;
        sp = cfa;
        fp = next_fp;
    }
}

#[cfg(test)]
mod tests {
    use core::hint::black_box;

    /// Recurses `depth` times, then runs `f`: stacks of known depth.
    #[inline(never)]
    fn deep(depth: usize, f: &mut dyn FnMut()) {
        if depth == 0 {
            f();
        } else {
            deep(depth - 1, f);
        }
        black_box(depth);
    }

    /// Every frame the fast unwinder returns, from the closure's caller to
    /// the end of the stack, is libgcc's, at stacks of many depths; its
    /// rules are then kept, and the second unwind still agrees.
    #[test]
    fn the_fast_unwinder_returns_exactly_libgccs_frames() {
        assert!(super::init(), "_dl_find_object is missing: glibc 2.35 or later is needed");
        let (_, hi) = super::super::sys::stack_bounds().expect("the test thread's stack bounds");
        for depth in [0, 1, 2, 7, 40, 200] {
            for round in 0..2 {
                deep(depth, &mut || {
                    let mut fast = [0usize; 512];
                    let mut gcc = [0usize; 512];
                    let fast_result = super::unwind(&mut fast, hi);
                    let mut n_gcc = 0;
                    // SAFETY: libgcc's `_Unwind_Backtrace` is thread-safe;
                    // the closure only writes the local array.
                    unsafe {
                        backtrace::trace_unsynchronized(|frame| {
                            gcc[n_gcc] = frame.ip() as usize;
                            n_gcc += 1;
                            n_gcc < gcc.len()
                        });
                    }
                    let (n_fast, flags) = fast_result.expect("the fast unwinder gave up");
                    assert_eq!(flags, 0, "depth {depth}: truncated");
                    // fast[0] returns into this closure, right after the call
                    // above; fast[1] into `deep`, which libgcc reports too.
                    assert!(n_fast > depth + 2, "depth {depth}: only {n_fast} frames");
                    let at = gcc[..n_gcc].iter().position(|&ip| ip == fast[1]).unwrap_or_else(|| {
                        panic!(
                            "depth {depth}: libgcc never returns into `deep` at {:#x}: {:x?}",
                            fast[1],
                            &gcc[..n_gcc]
                        )
                    });
                    let n_gcc = gcc[..n_gcc].iter().rposition(|&ip| ip != 0).map_or(0, |i| i + 1);
                    assert_eq!(
                        &fast[1..n_fast],
                        &gcc[at..n_gcc],
                        "depth {depth}, round {round}: the fast unwinder and libgcc disagree"
                    );
                });
            }
        }
    }

    /// A stack through a signal frame (libc's `__restore_rt`, whose rules
    /// are DWARF expressions) is handed to libgcc and counted, never guessed.
    #[test]
    fn a_signal_frame_hands_the_stack_to_libgcc() {
        use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
        static HI: AtomicU64 = AtomicU64::new(0);
        static RESULT: AtomicU64 = AtomicU64::new(0);
        extern "C" fn handler(_: libc::c_int) {
            let mut buf = [0usize; 64];
            // Encoded: 1 if the unwinder gave up, 2 if it returned a stack.
            let outcome = if super::unwind(&mut buf, HI.load(SeqCst) as usize).is_none() { 1 } else { 2 };
            RESULT.store(outcome, SeqCst);
        }
        assert!(super::init());
        let (_, hi) = super::super::sys::stack_bounds().expect("the test thread's stack bounds");
        HI.store(hi as u64, SeqCst);
        let gave_up = super::gave_up();
        // SAFETY: installs a handler for SIGUSR2 that only touches atomics
        // and its own stack, raises it synchronously on this thread, then
        // restores the default disposition.
        unsafe {
            let mut action: libc::sigaction = core::mem::zeroed();
            action.sa_sigaction = handler as *const () as libc::sighandler_t;
            assert_eq!(libc::sigaction(libc::SIGUSR2, &action, core::ptr::null_mut()), 0);
            assert_eq!(libc::raise(libc::SIGUSR2), 0);
            libc::signal(libc::SIGUSR2, libc::SIG_DFL);
        }
        assert_eq!(RESULT.load(SeqCst), 1, "the unwinder followed a signal frame it has no rule for");
        assert!(super::gave_up() > gave_up, "the stack handed to libgcc was not counted");
    }

    /// Every rule survives its packing.
    #[test]
    fn rules_pack_and_unpack() {
        use super::Rule;
        for rule in [
            Rule::End,
            Rule::Step { cfa_rbp: false, cfa_off: 8, rbp_saved: false, rbp_off: 0 },
            Rule::Step { cfa_rbp: true, cfa_off: 16, rbp_saved: true, rbp_off: -16 },
            Rule::Step { cfa_rbp: false, cfa_off: i32::MAX, rbp_saved: true, rbp_off: i16::MIN },
            Rule::Step { cfa_rbp: false, cfa_off: -4, rbp_saved: true, rbp_off: i16::MAX },
        ] {
            assert_eq!(Rule::unpack(rule.pack()), Some(rule));
        }
        assert_eq!(Rule::unpack(0), None);
    }
}
