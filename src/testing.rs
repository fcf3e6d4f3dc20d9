//! The test-facing API, on top of measured scopes: [`memory_measured`],
//! [`memory_measured_future`], the [`expect`] builder, [`assert_allocations!`](crate::assert_allocations),
//! [`deny_allocations`] and [`assert_no_leaks`].
//!
//! Everything here measures first and checks afterwards, outside the scope:
//! nothing is added to the allocator path, and no check ever runs (or
//! panics) inside the allocator.

use core::fmt;
use core::future::Future;
use core::panic::Location;
use std::thread::Thread;

use crate::alloc::Heapprobe;
use crate::histogram::Histogram;
use crate::profile::Recording;
use crate::stats::Stats;

mod sealed {
    pub trait Sealed {}
}

/// An allocator the functions of this module can measure with: a
/// [`Heapprobe`], a [`LockedAllocator`](crate::LockedAllocator), or a
/// reference to one (as in `static GLOBAL: &StatsAlloc<System>`).
///
/// Sealed: implemented only by heapprobe's types.
pub trait Instrumented: sealed::Sealed {
    /// The allocator wrapped by the [`Heapprobe`].
    type Inner;
    /// What [`memory_measured`] and [`memory_measured_future`] return:
    /// heapprobe's full [`Stats`] for a [`Heapprobe`], stats_alloc's
    /// six-field [`compat::Stats`](crate::compat::Stats) for a
    /// [`LockedAllocator`](crate::LockedAllocator).
    type Stats: From<Stats>;
    /// The [`Heapprobe`] that does the counting.
    fn heapprobe(&self) -> &Heapprobe<Self::Inner>;
}

impl<A> sealed::Sealed for Heapprobe<A> {}

impl<A> Instrumented for Heapprobe<A> {
    type Inner = A;
    type Stats = Stats;
    fn heapprobe(&self) -> &Heapprobe<A> {
        self
    }
}

impl<T: sealed::Sealed + ?Sized> sealed::Sealed for &T {}

impl<T: Instrumented + ?Sized> Instrumented for &T {
    type Inner = T::Inner;
    type Stats = T::Stats;
    fn heapprobe(&self) -> &Heapprobe<T::Inner> {
        (**self).heapprobe()
    }
}

impl<A> sealed::Sealed for crate::compat::LockedAllocator<A> {}

impl<A> Instrumented for crate::compat::LockedAllocator<A> {
    type Inner = A;
    type Stats = crate::compat::Stats;
    fn heapprobe(&self) -> &Heapprobe<A> {
        self
    }
}

/// The allocator calls the calling thread makes while `f` runs, exactly,
/// however many other threads (other tests included) allocate meanwhile.
///
/// stats_alloc_helper's function of the same name and shape, without its
/// lock: no other thread is ever blocked, and a panic in `f` leaves nothing
/// locked. It is [`Heapprobe::measure`] without the closure's result.
///
/// ```
/// use heapprobe::{memory_measured, Heapprobe};
/// use std::alloc::System;
///
/// #[global_allocator]
/// static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
///
/// let stats = memory_measured(&GLOBAL, || {
///     let _ = "whoa".to_owned().replace("whoa", "wow").to_owned();
/// });
/// assert_eq!((stats.allocations, stats.deallocations, stats.bytes_allocated), (3, 3, 15));
/// ```
///
/// # Panics
/// As [`Heapprobe::measure`]; a panic in `f` continues after the scope ends.
pub fn memory_measured<M: Instrumented + ?Sized>(alloc: &M, f: impl FnOnce()) -> M::Stats {
    let ((), stats) = alloc.heapprobe().measure(f);
    stats.into()
}

/// The allocator calls made inside every poll of `fut`, on whichever thread
/// polls it, summed: exact on a multi-threaded runtime where the future moves
/// between workers.
///
/// Runtime-agnostic: it polls `fut` in place, on the caller's runtime, with
/// no runtime of its own, no `spawn_blocking` and no lock, so it cannot
/// deadlock with tasks it waits for (stats_alloc_helper's version blocks
/// every other thread's allocations until the future completes).
/// [`Heapprobe::measure_future`] says exactly what is and is not counted.
///
/// ```
/// # use heapprobe::{memory_measured_future, Heapprobe};
/// # use std::alloc::System;
/// # #[global_allocator]
/// # static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
/// # let runtime = tokio::runtime::Builder::new_multi_thread().build().unwrap();
/// # runtime.block_on(async {
/// let stats = memory_measured_future(&GLOBAL, async {
///     let _ = vec![1i32, 2, 3, 4];
/// })
/// .await;
/// assert_eq!((stats.allocations, stats.bytes_allocated), (1, 16));
/// # });
/// ```
pub async fn memory_measured_future<M: Instrumented + ?Sized, F: Future<Output = ()>>(alloc: &M, fut: F) -> M::Stats {
    let ((), stats) = alloc.heapprobe().measure_future(fut).await;
    stats.into()
}

/// Starts a list of expectations about what a closure or future allocates,
/// checked by [`Expect::check`] or [`Expect::check_future`].
///
/// ```
/// # use heapprobe::{expect, Heapprobe};
/// # use std::alloc::System;
/// # #[global_allocator]
/// # static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
/// let s = expect(&GLOBAL)
///     .at_most(3).allocations()
///     .exactly(15).bytes_allocated()
///     .no_leaks()
///     .check(|| "whoa".to_owned().replace("whoa", "wow").to_owned().len());
/// assert_eq!(s, 3);
/// ```
pub fn expect<M: Instrumented + ?Sized>(alloc: &M) -> Expect<'_, M::Inner> {
    Expect { alloc: alloc.heapprobe(), limits: [None; MAX_LIMITS], no_calls: false, no_leaks: false }
}

/// How many limits one [`Expect`] holds. They live in the builder itself,
/// so that checking allocates nothing unless it fails: an `expect(..)` inside
/// another measured scope adds nothing to it.
const MAX_LIMITS: usize = 16;

/// Expectations about a measured scope, built by [`expect`]. Nothing is
/// measured until [`check`](Self::check) or
/// [`check_future`](Self::check_future). Checking a scope that meets every
/// expectation allocates nothing.
#[must_use = "nothing is checked until `.check(...)` or `.check_future(...)`"]
pub struct Expect<'a, A> {
    alloc: &'a Heapprobe<A>,
    limits: [Option<Limit>; MAX_LIMITS],
    no_calls: bool,
    no_leaks: bool,
}

/// A bound waiting for the counter it applies to, such as
/// `.at_most(3)` in `.at_most(3).allocations()`.
#[must_use = "name the counter the bound applies to, e.g. `.allocations()`"]
pub struct Bound<'a, A> {
    expect: Expect<'a, A>,
    op: Op,
    value: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    AtMost,
    AtLeast,
    Exactly,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::AtMost => "<=",
            Op::AtLeast => ">=",
            Op::Exactly => "==",
        }
    }
    fn holds(self, measured: u128, limit: u128) -> bool {
        match self {
            Op::AtMost => measured <= limit,
            Op::AtLeast => measured >= limit,
            Op::Exactly => measured == limit,
        }
    }
}

#[derive(Clone, Copy)]
struct Limit {
    counter: &'static str,
    get: fn(&Stats) -> u128,
    op: Op,
    value: usize,
}

impl<'a, A> Expect<'a, A> {
    /// The next counter named must be at most `n`.
    pub fn at_most(self, n: usize) -> Bound<'a, A> {
        Bound { expect: self, op: Op::AtMost, value: n }
    }

    /// The next counter named must be at least `n`.
    pub fn at_least(self, n: usize) -> Bound<'a, A> {
        Bound { expect: self, op: Op::AtLeast, value: n }
    }

    /// The next counter named must be exactly `n`.
    pub fn exactly(self, n: usize) -> Bound<'a, A> {
        Bound { expect: self, op: Op::Exactly, value: n }
    }

    /// No allocator call at all: no allocation, reallocation or
    /// deallocation (see [`deny_allocations`]).
    pub fn no_allocator_calls(mut self) -> Self {
        self.no_calls = true;
        self
    }

    /// Everything allocated inside the scope is freed by its end (see
    /// [`assert_no_leaks`]).
    pub fn no_leaks(mut self) -> Self {
        self.no_leaks = true;
        self
    }

    /// Runs `f` in a measured scope on this thread, then checks every
    /// expectation and returns `f`'s result.
    ///
    /// # Panics
    /// After `f` returns, if an expectation does not hold, with the full
    /// measured [`Stats`], each expectation next to its measured value, and
    /// the `cargo heapprobe trace` command that shows where the scope allocated.
    /// Also as [`Heapprobe::measure`].
    #[track_caller]
    pub fn check<R>(self, f: impl FnOnce() -> R) -> R {
        let location = Location::caller();
        let (result, stats, recording) = self.alloc.measure_recorded(f);
        self.verdict("expect(..).check", &stats, location, &std::thread::current(), Some(recording));
        result
    }

    /// [`check`](Self::check) for a future: every poll of `fut` is measured
    /// on whichever thread polls it ([`Heapprobe::measure_future`]); the
    /// expectations are checked when it completes.
    ///
    /// # Panics
    /// When `fut` completes, if an expectation does not hold (see
    /// [`check`](Self::check)).
    #[track_caller]
    pub fn check_future<F: Future + 'a>(self, fut: F) -> impl Future<Output = F::Output> + 'a {
        let location = Location::caller();
        // The name of the test, while we are still on its thread.
        let thread = std::thread::current();
        async move {
            let (output, stats) = self.alloc.measure_future(fut).await;
            self.verdict("expect(..).check_future", &stats, location, &thread, None);
            output
        }
    }

    /// Every expectation with its measured value. Only called to report.
    fn checks(&self, stats: &Stats) -> Vec<Check> {
        let mut checks = Vec::new();
        for limit in self.limits.iter().flatten() {
            let measured = (limit.get)(stats);
            checks.push(Check {
                what: Label::Limit(limit.counter, limit.op, limit.value),
                measured: measured as i128,
                ok: limit.op.holds(measured, limit.value as u128),
            });
        }
        if self.no_calls {
            let calls = allocator_calls(stats);
            checks.push(Check { what: Label::Text("allocator_calls == 0"), measured: calls as i128, ok: calls == 0 });
        }
        if self.no_leaks {
            checks.extend(leak_checks(stats));
        }
        checks
    }

    #[track_caller]
    fn verdict(
        &self,
        api: &str,
        stats: &Stats,
        location: &Location<'_>,
        thread: &Thread,
        recording: Option<Recording>,
    ) {
        let holds = self.limits.iter().flatten().all(|l| l.op.holds((l.get)(stats), l.value as u128))
            && (!self.no_calls || allocator_calls(stats) == 0)
            && (!self.no_leaks || leak_checks(stats).iter().all(|c| c.ok));
        if !holds {
            fail(api, stats, &self.checks(stats), "", location, thread, recording);
        }
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident => $get:expr;)+) => {
        impl<'a, A> Bound<'a, A> {
            $(
                $(#[$doc])*
                ///
                /// # Panics
                /// If the builder already holds 16 limits.
                pub fn $name(mut self) -> Expect<'a, A> {
                    let limit = Limit { counter: stringify!($name), get: $get, op: self.op, value: self.value };
                    match self.expect.limits.iter_mut().find(|l| l.is_none()) {
                        Some(free) => *free = Some(limit),
                        None => panic!("heapprobe::expect holds at most {MAX_LIMITS} limits"),
                    }
                    self.expect
                }
            )+
        }
    };
}

counters! {
    /// Successful `alloc` and `alloc_zeroed` calls.
    allocations => |s| s.allocations as u128;
    /// `dealloc` calls.
    deallocations => |s| s.deallocations as u128;
    /// Successful `realloc` calls.
    reallocations => |s| s.reallocations as u128;
    /// Reallocs whose block moved (its contents were copied).
    reallocations_moved => |s| s.reallocations_moved as u128;
    /// Every allocator call: allocations, deallocations, reallocations and failures.
    allocator_calls => |s| allocator_calls(s);
    /// Bytes allocated (reallocs' growth included).
    bytes_allocated => |s| s.bytes_allocated as u128;
    /// Bytes deallocated (reallocs' shrink included).
    bytes_deallocated => |s| s.bytes_deallocated as u128;
    /// Bytes copied by moving reallocs.
    bytes_moved => |s| s.bytes_moved as u128;
    /// Bytes the scope left allocated at its end.
    current => |s| s.current as u128;
    /// The most bytes the scope had allocated at once.
    peak => |s| s.peak as u128;
    /// Calls for which the inner allocator returned null.
    allocation_failures => |s| s.allocation_failures as u128;
}

fn allocator_calls(s: &Stats) -> u128 {
    [s.allocations, s.deallocations, s.reallocations, s.allocation_failures].iter().map(|n| *n as u128).sum()
}

/// Blocks and bytes the scope allocated and had not freed by its end.
fn leak_checks(s: &Stats) -> [Check; 2] {
    let blocks = s.net_allocations().max(0);
    let bytes = s.net_bytes().max(0);
    [
        Check { what: Label::Text("blocks remaining == 0"), measured: blocks, ok: blocks == 0 },
        Check { what: Label::Text("bytes remaining == 0"), measured: bytes, ok: bytes == 0 },
    ]
}

/// Runs `f` and panics, after it returned, if it made any allocator call:
/// a guard for code that must not allocate, such as a real-time path.
///
/// Every call counts, deallocations and reallocations too: a `free` takes
/// the allocator's locks just like a `malloc`. The check runs after `f`, on
/// the measured [`Stats`]; nothing is added to the allocator path and the
/// allocator never panics (unwinding out of `GlobalAlloc` would be undefined
/// behaviour), so `f` runs to its end even when it allocates.
///
/// The report gives the number of calls of each kind, the allocation sizes
/// (log2 buckets), the location of this guard, and the `cargo heapprobe trace`
/// command whose flame graph shows each allocating call site; the call
/// sites themselves are not recorded, which would cost every allocation.
///
/// ```
/// # use heapprobe::{deny_allocations, Heapprobe};
/// # use std::alloc::System;
/// # #[global_allocator]
/// # static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
/// let mut buffer = Vec::with_capacity(64);
/// deny_allocations(&GLOBAL, || buffer.extend_from_slice(b"fits in the capacity"));
///
/// let caught = std::panic::catch_unwind(move || {
///     deny_allocations(&GLOBAL, || buffer.extend_from_slice(&[0; 100])) // grows: a realloc
/// });
/// assert!(caught.is_err());
/// ```
///
/// # Panics
/// After `f` returns, if it made an allocator call. Also as
/// [`Heapprobe::measure`].
#[track_caller]
pub fn deny_allocations<M: Instrumented + ?Sized, R>(alloc: &M, f: impl FnOnce() -> R) -> R {
    let location = Location::caller();
    let (result, stats, recording) = alloc.heapprobe().measure_recorded(f);
    let calls = allocator_calls(&stats);
    if calls != 0 {
        let notes = format!(
            "  {} allocation{} ({} B), {} reallocation{} (+{} / -{} B), {} deallocation{} ({} B), {} failure{}\n  \
             allocation sizes (log2 buckets, lower bound: count): {}\n  \
             the allocating call sites are not recorded in the process: the trace below shows them\n",
            stats.allocations,
            plural(stats.allocations),
            stats.bytes_allocated.saturating_sub(stats.bytes_grown),
            stats.reallocations,
            plural(stats.reallocations),
            stats.bytes_grown,
            stats.bytes_shrunk,
            stats.deallocations,
            plural(stats.deallocations),
            stats.bytes_deallocated.saturating_sub(stats.bytes_shrunk),
            stats.allocation_failures,
            plural(stats.allocation_failures),
            Sizes(&stats.size_histogram),
        );
        let checks = [Check { what: Label::Text("allocator_calls == 0"), measured: calls as i128, ok: false }];
        fail("deny_allocations", &stats, &checks, &notes, location, &std::thread::current(), Some(recording));
    }
    result
}

/// Runs `f` and panics, after it returned, if the scope did not free
/// everything it allocated, with the number of blocks and bytes remaining.
///
/// Blocks: allocations minus deallocations inside the scope. Bytes: bytes
/// allocated minus bytes deallocated, so a realloc that grew an older block
/// and kept it counts as bytes remaining. Both are counted, not tracked by
/// address: a scope that frees an older block and leaves a new one of the
/// same size behind passes (the heap did not grow). A value that `f`
/// returns is still allocated when the scope ends, and counts.
///
/// ```
/// # use heapprobe::{assert_no_leaks, Heapprobe};
/// # use std::alloc::System;
/// # #[global_allocator]
/// # static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
/// assert_no_leaks(&GLOBAL, || drop(vec![0u8; 100]));
/// let caught = std::panic::catch_unwind(|| assert_no_leaks(&GLOBAL, || std::mem::forget(vec![0u8; 100])));
/// assert!(caught.is_err()); // 1 block and 100 bytes remaining
/// ```
///
/// # Panics
/// After `f` returns, if blocks or bytes remain. Also as
/// [`Heapprobe::measure`].
#[track_caller]
pub fn assert_no_leaks<M: Instrumented + ?Sized, R>(alloc: &M, f: impl FnOnce() -> R) -> R {
    let location = Location::caller();
    let (result, stats, recording) = alloc.heapprobe().measure_recorded(f);
    let checks = leak_checks(&stats);
    if checks.iter().any(|c| !c.ok) {
        fail("assert_no_leaks", &stats, &checks, "", location, &std::thread::current(), Some(recording));
    }
    result
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The non-empty buckets of a histogram, as `{16: 1, 1K: 2}`.
struct Sizes<'h>(&'h Histogram);

impl fmt::Display for Sizes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// What a check says, for the report.
enum Label {
    Text(&'static str),
    Limit(&'static str, Op, usize),
}

impl Label {
    /// Whether the check is about what the scope left allocated.
    fn is_about_leaks(&self) -> bool {
        match self {
            Label::Text(text) => text.contains("remaining") || text.starts_with("current"),
            Label::Limit(counter, _, _) => *counter == "current",
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Label::Text(text) => f.write_str(text),
            Label::Limit(counter, op, value) => write!(f, "{counter} {} {value}", op.symbol()),
        }
    }
}

/// One expectation and how it fared (public only for [`assert_allocations!`](crate::assert_allocations)).
pub struct Check {
    what: Label,
    measured: i128,
    ok: bool,
}

/// Panics with the report: every check with its measured value, `notes`
/// (whole lines), the full [`Stats`], and the command that shows where the
/// scope allocated. `#[track_caller]`, so that the harness's "panicked at"
/// line names the test's line too (except after a future, polled elsewhere).
#[track_caller]
fn fail(
    api: &str,
    stats: &Stats,
    checks: &[Check],
    notes: &str,
    location: &Location<'_>,
    thread: &Thread,
    recording: Option<Recording>,
) -> ! {
    use fmt::Write;
    let mut report = format!("heapprobe: {api} failed at {location}\n");
    for check in checks {
        let verdict = if check.ok { "ok    " } else { "FAILED" };
        let _ = writeln!(report, "  {verdict}  {}   (measured {})", check.what, check.measured);
    }
    report.push_str(notes);
    let _ = writeln!(report, "measured Stats of the scope:");
    for line in stats.to_string().lines() {
        let _ = writeln!(report, "  {line}");
    }
    if let Some(recording) = recording {
        let leaks = checks.iter().any(|c| !c.ok && c.what.is_about_leaks());
        report.push_str(&recording.write_for_failure(&test_name(thread), stats, location, leaks));
    }
    let _ = writeln!(report, "to see where the scope allocated (a flame graph of its allocations):");
    let _ = write!(report, "  {}", trace_command(thread));
    panic!("{report}");
}

/// `cargo heapprobe trace --test NAME --event alloc_locked` for the test
/// running on `thread` (libtest names each test's thread after the test),
/// such that it works where the user ran `cargo test`: with the package's
/// `-p` when that directory is another package's or the workspace's, with
/// `--manifest-path` when it is outside the workspace. cargo tells a test
/// its package (`CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`) and keeps the shell's
/// directory in `PWD` (it runs tests in the package's directory).
pub(crate) fn trace_command(thread: &Thread) -> String {
    let mut command = String::from("cargo heapprobe trace");
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    if let (Some(dir), Some(package)) = (var("CARGO_MANIFEST_DIR"), std::env::var("CARGO_PKG_NAME").ok()) {
        let manifest = var("CARGO_MANIFEST_PATH").unwrap_or_else(|| dir.join("Cargo.toml"));
        // The Cargo.toml cargo would find from the user's directory.
        let nearest = var("PWD").and_then(|pwd| pwd.ancestors().map(|d| d.join("Cargo.toml")).find(|m| m.is_file()));
        match nearest {
            Some(found) if found == manifest => {}
            // A workspace (or other member) around the package: `-p`.
            Some(found) if found.parent().is_some_and(|root| dir.starts_with(root)) => {
                command.push_str(" -p ");
                command.push_str(&package);
            }
            _ => {
                command.push_str(" --manifest-path ");
                command.push_str(&shell_word(&manifest.to_string_lossy()));
            }
        }
    }
    command.push_str(&format!(" --test {} --event alloc_locked", test_name(thread)));
    command
}

/// `word`, quoted for a POSIX shell when it needs to be.
fn shell_word(word: &str) -> String {
    if word.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b)) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The test's path (`module::test_fn`) when `thread` is a libtest thread;
/// otherwise (the main thread with `--test-threads=1`, a runtime's worker)
/// the test target, from the test binary's name (`tests/NAME.rs` builds
/// `deps/NAME-<hash>`).
fn test_name(thread: &Thread) -> String {
    let is_path = |name: &str| {
        name != "main"
            && name.split("::").all(|part| {
                part.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_alphanumeric() || c == '_')
            })
    };
    if let Some(name) = thread.name().filter(|n| is_path(n)) {
        return name.to_owned();
    }
    let exe = std::env::current_exe().ok();
    let stem = exe.as_deref().and_then(|p| p.file_stem()).and_then(|s| s.to_str()).unwrap_or("NAME");
    match stem.rsplit_once('-') {
        Some((target, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => target.to_owned(),
        _ => stem.to_owned(),
    }
}

/// Support for [`assert_allocations!`](crate::assert_allocations); not a stable API.
pub mod __private {
    use super::*;
    pub use crate::profile::Recording;

    /// Measures `f` on `alloc`, recording the scope's stacks (see [`Recording`]).
    pub fn measure<M: Instrumented + ?Sized, R>(alloc: &M, f: impl FnOnce() -> R) -> (R, Stats, Recording) {
        alloc.heapprobe().measure_recorded(f)
    }

    /// One `field op value` of the macro: its text, the measured value and
    /// whether it held.
    pub fn check(what: &'static str, measured: i128, ok: bool) -> Check {
        Check { what: Label::Text(what), measured, ok }
    }

    /// Panics with the report if any check failed.
    #[track_caller]
    pub fn verdict(stats: &Stats, checks: &[Check], recording: Recording) {
        if checks.iter().any(|c| !c.ok) {
            fail(
                "assert_allocations!",
                stats,
                checks,
                "",
                Location::caller(),
                &std::thread::current(),
                Some(recording),
            );
        }
    }
}

/// Measures a block and asserts comparisons on the fields of its [`Stats`];
/// evaluates to the block's value.
///
/// `assert_allocations!(ALLOCATOR, { code }, field op value, ...)`, where
/// `field` is any integer field of [`Stats`] and `op` any comparison
/// operator. The block runs in a measured scope on this thread (exact while
/// other threads allocate); the comparisons are checked after it, and the
/// first failure panics with every comparison, the full measured `Stats` and
/// the `cargo heapprobe trace --test NAME --event alloc_locked` command that
/// shows where the block allocated.
///
/// ```
/// use heapprobe::{assert_allocations, Heapprobe};
/// use std::alloc::System;
///
/// #[global_allocator]
/// static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
///
/// let len = assert_allocations!(GLOBAL, {
///     "whoa".to_owned().replace("whoa", "wow").to_owned().len()
/// }, allocations <= 3, bytes_allocated == 15, current == 0);
/// assert_eq!(len, 3);
/// ```
#[macro_export]
macro_rules! assert_allocations {
    ($alloc:expr, $body:block $(, $field:ident $op:tt $value:expr)+ $(,)?) => {{
        let (result, stats, recording) = $crate::__private::measure(&$alloc, || $body);
        let checks = [$(
            $crate::__private::check(
                concat!(stringify!($field), " ", stringify!($op), " ", stringify!($value)),
                stats.$field as i128,
                (stats.$field) $op ($value),
            )
        ),+];
        $crate::__private::verdict(&stats, &checks, recording);
        result
    }};
}
