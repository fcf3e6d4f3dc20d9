//! The heap summary at exit: valgrind's "HEAP SUMMARY" figures, from the
//! global wrapper's counters, at native speed.
//!
//! One instance is registered (the first one asked), with `atexit`, which
//! glibc runs both when `main` returns and on `std::process::exit` (not on
//! `_exit`, `abort` or a fatal signal). The handler reads the counters, then
//! formats into a buffer on its own stack and `write`s it to stderr: nothing
//! after the read allocates, through the wrapper or otherwise. With the
//! in-process profiler started, the top live stacks follow the figures
//! (`LIVE_STACKS`); reading the profile and naming its frames allocates,
//! after the figures were read and written.

use core::fmt::{self, Write as _};
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering::*};

use crate::alloc::Heapprobe;
use crate::stats::Stats;

/// What a heap summary says: valgrind's HEAP SUMMARY figures, for the
/// allocator calls the wrapper counted (those made through Rust's global
/// allocator; not libc's own, nor those of C libraries calling `malloc`).
///
/// `Display` prints it as valgrind does (numbers with thousands separators),
/// without allocating:
///
/// ```text
/// heapprobe: HEAP SUMMARY:
/// heapprobe:     in use at exit: 300 bytes in 3 blocks
/// heapprobe:   total heap usage: 10 allocs, 7 frees, 1,300 bytes allocated
/// heapprobe:           reallocs: 0, 0 bytes grown (valgrind counts each as 1 alloc + 1 free)
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub struct HeapSummary {
    /// Bytes allocated and not freed: [`Stats::current`].
    pub in_use_bytes: usize,
    /// Blocks allocated and not freed: allocations minus deallocations
    /// (a realloc keeps its block), at least 0.
    pub in_use_blocks: usize,
    /// Successful `alloc` and `alloc_zeroed` calls.
    pub allocs: usize,
    /// `dealloc` calls.
    pub frees: usize,
    /// Successful `realloc` calls, which valgrind counts as one alloc of
    /// the new size plus one free each.
    pub reallocs: usize,
    /// Bytes allocated: the sizes of the allocs, plus what growing reallocs
    /// added ([`Stats::bytes_allocated`]).
    pub bytes_allocated: usize,
    /// What growing reallocs added to [`bytes_allocated`](Self::bytes_allocated)
    /// ([`Stats::bytes_grown`]): the allocs' own bytes are the difference,
    /// which is what a trace of the `alloc` probe adds up to.
    pub bytes_grown: usize,
}

impl HeapSummary {
    /// The summary of `stats` (process-wide counters, usually).
    pub fn from_stats(stats: &Stats) -> Self {
        Self {
            in_use_bytes: stats.current,
            in_use_blocks: stats.allocations.saturating_sub(stats.deallocations),
            allocs: stats.allocations,
            frees: stats.deallocations,
            reallocs: stats.reallocations,
            bytes_allocated: stats.bytes_allocated,
            bytes_grown: stats.bytes_grown,
        }
    }
}

impl From<Stats> for HeapSummary {
    fn from(stats: Stats) -> Self {
        Self::from_stats(&stats)
    }
}

/// `1234567` as `1,234,567`, without allocating.
struct Thousands(usize);

impl fmt::Display for Thousands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut digits = [0u8; 20];
        let mut n = self.0;
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in (0..len).rev() {
            f.write_char(digits[i] as char)?;
            if i != 0 && i % 3 == 0 {
                f.write_char(',')?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for HeapSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = Thousands;
        writeln!(f, "heapprobe: HEAP SUMMARY:")?;
        writeln!(
            f,
            "heapprobe:     in use at exit: {} bytes in {} blocks",
            t(self.in_use_bytes),
            t(self.in_use_blocks)
        )?;
        writeln!(
            f,
            "heapprobe:   total heap usage: {} allocs, {} frees, {} bytes allocated",
            t(self.allocs),
            t(self.frees),
            t(self.bytes_allocated)
        )?;
        writeln!(
            f,
            "heapprobe:           reallocs: {}, {} bytes grown (valgrind counts each as 1 alloc + 1 free)",
            t(self.reallocs),
            t(self.bytes_grown)
        )
    }
}

impl<A> Heapprobe<A> {
    /// The heap summary's figures now: [`HeapSummary::from_stats`] of
    /// [`stats`](Self::stats). Allocates nothing.
    pub fn heap_summary(&self) -> HeapSummary {
        HeapSummary::from_stats(&self.stats())
    }
}

#[cfg(unix)]
impl<A: Sync + 'static> Heapprobe<A> {
    /// Prints the [`HeapSummary`] of this instance on stderr when the
    /// process exits, valgrind-style: when `main` returns and on
    /// [`std::process::exit`] (through libc's `atexit`; not on `_exit`,
    /// an abort or a fatal signal). Call it once, early in `main`:
    ///
    /// ```no_run
    /// use heapprobe::Heapprobe;
    /// use std::alloc::System;
    ///
    /// #[global_allocator]
    /// static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
    ///
    /// fn main() {
    ///     GLOBAL.summary_at_exit();
    ///     std::mem::forget(vec![0u8; 100]);
    /// }
    /// // stderr, at exit:
    /// // heapprobe: HEAP SUMMARY:
    /// // heapprobe:     in use at exit: 100 bytes in 1 blocks
    /// // ...
    /// ```
    ///
    /// Setting `HEAPPROBE_SUMMARY=1` in the environment asks for the same
    /// thing without this call. One instance prints, the first one
    /// registered: this returns `false` (and does nothing) if one already
    /// was, or if `atexit` failed. The counters are read inside the handler,
    /// after the exiting thread's thread-local destructors ran and before
    /// libc's own teardown; formatting and printing allocate nothing. With
    /// the in-process profiler started (from code or `HEAPPROBE_PROFILE`),
    /// the top stacks of what is still live follow the figures (which were
    /// read and written first: naming the frames allocates).
    pub fn summary_at_exit(&'static self) -> bool {
        // SAFETY: `self` is `'static`.
        unsafe { arm(self) }
    }
}

/// The registered instance (type-erased) and its reader.
static INSTANCE: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
static READER: AtomicUsize = AtomicUsize::new(0);
/// 0: nothing registered; 1: being registered; 2: registered.
static ARMED: AtomicU8 = AtomicU8::new(0);
/// What `HEAPPROBE_SUMMARY` said, read once: 0 unread, 1 no, 2 yes.
static ENV_WANTS: AtomicU8 = AtomicU8::new(0);

/// Where the in-process profiler plugs in: a function that writes the top
/// stacks of the blocks still live. Set when the global profiler starts
/// (`crate::profile::register_live_stacks`); nothing is printed while
/// unset. It runs after the figures were read and formatted, so what it
/// allocates (a copy of the profiler's tables, symbol names) does not
/// change them.
pub(crate) static LIVE_STACKS: AtomicUsize = AtomicUsize::new(0);

/// The signature of [`LIVE_STACKS`].
pub(crate) type LiveStacks = fn(&mut dyn fmt::Write) -> fmt::Result;

fn read<A>(instance: *const ()) -> Stats {
    // SAFETY: `instance` was registered by `arm::<A>`, whose caller
    // guarantees it stays valid until the process exits. `stats` reads
    // atomic counters only, never the inner allocator.
    unsafe { &*(instance as *const Heapprobe<A>) }.stats()
}

/// Registers `instance` and the exit handler, unless an instance already
/// is. Allocation-free and lock-free (glibc's `atexit` uses a static block
/// for its first 32 handlers, and its own `calloc` beyond, never Rust's
/// global allocator), so the global wrapper may call it on its allocator
/// path.
///
/// # Safety
/// `instance` must stay valid until the process exits (a `static`, as a
/// `#[global_allocator]` is).
#[cfg(unix)]
pub(crate) unsafe fn arm<A>(instance: *const Heapprobe<A>) -> bool {
    if ARMED.compare_exchange(0, 1, AcqRel, Acquire).is_err() {
        return false;
    }
    INSTANCE.store(instance as *mut (), Release);
    READER.store(read::<A> as fn(*const ()) -> Stats as usize, Release);
    // SAFETY: `at_exit` is an `extern "C" fn()` that never unwinds.
    if unsafe { libc::atexit(at_exit) } != 0 {
        ARMED.store(0, Release);
        return false;
    }
    ARMED.store(2, Release);
    true
}

/// Registers `instance` if `HEAPPROBE_SUMMARY` asks for the summary (any
/// value but empty or `0`). The environment is read once, with `getenv`
/// (no allocation); later calls cost one relaxed load. Meant for the global
/// wrapper's first allocation on a thread (its cold path), where `self` is
/// the `#[global_allocator]` static: `crate::summary::arm_from_env(self)`.
///
/// # Safety
/// As [`arm`]: `instance` stays valid until the process exits.
#[cfg(unix)]
pub(crate) unsafe fn arm_from_env<A>(instance: *const Heapprobe<A>) {
    if env_wants_summary() {
        // SAFETY: the caller's guarantee.
        unsafe { arm(instance) };
    }
}

/// Whether `HEAPPROBE_SUMMARY` is set to anything but empty or `0`.
#[cfg(unix)]
pub(crate) fn env_wants_summary() -> bool {
    match ENV_WANTS.load(Relaxed) {
        1 => return false,
        2 => return true,
        _ => {}
    }
    // SAFETY: a NUL-terminated name; the result is read before returning
    // and only if non-null.
    let wants = unsafe {
        let value = libc::getenv(c"HEAPPROBE_SUMMARY".as_ptr());
        !value.is_null() && *value != 0 && !(*value == b'0' as libc::c_char && *value.add(1) == 0)
    };
    ENV_WANTS.store(if wants { 2 } else { 1 }, Relaxed);
    wants
}

/// A `fmt::Write` that buffers on the stack and writes to a file
/// descriptor when full and when dropped.
struct FdWriter {
    fd: i32,
    buf: [u8; 512],
    len: usize,
}

impl FdWriter {
    fn flush(&mut self) {
        let mut done = 0;
        while done < self.len {
            // SAFETY: the pointer and length describe initialised bytes of `buf`.
            let n = unsafe { libc::write(self.fd, self.buf[done..].as_ptr().cast(), self.len - done) };
            if n <= 0 {
                break; // nowhere to report a failure at exit: drop the rest
            }
            done += n as usize;
        }
        self.len = 0;
    }
}

impl fmt::Write for FdWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(self.buf.len()) {
            if self.len + chunk.len() > self.buf.len() {
                self.flush();
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len();
        }
        Ok(())
    }
}

impl Drop for FdWriter {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The `atexit` handler.
#[cfg(unix)]
extern "C" fn at_exit() {
    let reader = READER.load(Acquire);
    let instance = INSTANCE.load(Acquire);
    if ARMED.load(Acquire) != 2 || reader == 0 {
        return;
    }
    // SAFETY: `READER` holds a `fn(*const ()) -> Stats` stored by `arm`.
    let reader: fn(*const ()) -> Stats = unsafe { core::mem::transmute(reader) };
    let summary = HeapSummary::from_stats(&reader(instance));
    // Nothing below allocates: a stack buffer, core::fmt, write(2).
    let mut out = FdWriter { fd: 2, buf: [0; 512], len: 0 };
    let _ = write!(out, "{summary}");
    let live = LIVE_STACKS.load(Acquire);
    if live != 0 {
        // The figures go out first, as they were.
        out.flush();
        // SAFETY: `LIVE_STACKS` holds a `LiveStacks` stored by the profiler.
        let live: LiveStacks = unsafe { core::mem::transmute(live) };
        let _ = live(&mut out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::alloc::{GlobalAlloc, Layout};
    use std::alloc::System;
    use std::process::Command;

    /// Not the global allocator: only the calls made through it directly.
    static COUNTED: Heapprobe<System> = Heapprobe::new(System);

    /// The child of [`the_environment_asks_for_the_summary`]: leaks 3 × 100
    /// bytes through `COUNTED`, frees one more block of 50, registers from
    /// the environment and returns (or exits, with `CHILD=exit`).
    #[test]
    #[ignore = "run as a child process by the_environment_asks_for_the_summary"]
    fn env_child() {
        let layout = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: non-zero sizes; the 50-byte block is freed with its layout;
        // the others are leaked on purpose.
        unsafe {
            for _ in 0..3 {
                assert!(!COUNTED.alloc(layout).is_null());
            }
            let small = Layout::from_size_align(50, 8).unwrap();
            COUNTED.dealloc(COUNTED.alloc(small), small);
        }
        // SAFETY: `COUNTED` is a static.
        unsafe {
            arm_from_env(&COUNTED);
            arm_from_env(&COUNTED); // a second call changes nothing
        }
        if std::env::var("CHILD").is_ok_and(|v| v == "exit") {
            std::process::exit(0);
        }
    }

    fn child(summary: Option<&str>, exit: bool) -> String {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--ignored", "--exact", "summary::tests::env_child", "--test-threads=1", "-q"]);
        cmd.env_remove("HEAPPROBE_SUMMARY").env("CHILD", if exit { "exit" } else { "return" });
        if let Some(value) = summary {
            cmd.env("HEAPPROBE_SUMMARY", value);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    }

    /// `HEAPPROBE_SUMMARY=1` (any value but empty or `0`) arms the summary
    /// of the instance that asks; unset, empty or `0` leaves it silent.
    #[test]
    fn the_environment_asks_for_the_summary() {
        let expected = "heapprobe: HEAP SUMMARY:\n\
                        heapprobe:     in use at exit: 300 bytes in 3 blocks\n\
                        heapprobe:   total heap usage: 4 allocs, 1 frees, 350 bytes allocated\n\
                        heapprobe:           reallocs: 0, 0 bytes grown (valgrind counts each as 1 alloc + 1 free)\n";
        for (value, exit) in [("1", false), ("yes", false), ("1", true)] {
            assert_eq!(child(Some(value), exit), expected, "HEAPPROBE_SUMMARY={value}, exit: {exit}");
        }
        for value in [None, Some(""), Some("0")] {
            assert_eq!(child(value, false), "", "HEAPPROBE_SUMMARY={value:?}");
        }
    }

    #[test]
    fn thousands_separators_as_valgrind_prints_them() {
        let s = |n| {
            let mut out = String::new();
            write!(out, "{}", Thousands(n)).unwrap();
            out
        };
        assert_eq!(s(0), "0");
        assert_eq!(s(999), "999");
        assert_eq!(s(1000), "1,000");
        assert_eq!(s(1_234_567), "1,234,567");
        assert_eq!(s(usize::MAX), "18,446,744,073,709,551,615");
    }
}
