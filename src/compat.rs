//! Drop-in names for code written against `stats_alloc` and
//! `stats_alloc_helper`.
//!
//! - `stats_alloc`: replace `use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};`
//!   with `use heapprobe::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};` and the
//!   rest compiles unchanged.
//! - `stats_alloc_helper`: replace `stats_alloc::` and `stats_alloc_helper::`
//!   in the `use` lines by `heapprobe::compat::`. [`LockedAllocator`],
//!   [`memory_measured`] and [`memory_measured_future`] then keep their
//!   meaning, and [`Stats`] is stats_alloc's six-field struct, so
//!   `assert_eq!(stats, Stats { allocations: 3, .. })` literals compile.
//!   The results are exact without the lock: no other thread is blocked.

use core::alloc::{GlobalAlloc, Layout};
use core::ops::{Add, AddAssign, Deref, Sub, SubAssign};
use std::alloc::System;

use crate::alloc::Heapprobe;

pub use crate::testing::{memory_measured, memory_measured_future};

/// `stats_alloc::StatsAlloc`: the same type as [`Heapprobe`].
pub type StatsAlloc<A> = Heapprobe<A>;

/// `stats_alloc::INSTRUMENTED_SYSTEM`: a [`Heapprobe`] over [`System`], for
/// `#[global_allocator] static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;`.
pub static INSTRUMENTED_SYSTEM: Heapprobe<System> = Heapprobe::new(System);

impl Heapprobe<System> {
    /// `stats_alloc::StatsAlloc::system()`: a [`Heapprobe`] over [`System`].
    pub const fn system() -> Self {
        Self::new(System)
    }
}

/// `stats_alloc::Region`: process-wide counters relative to a starting point.
///
/// Like `stats_alloc`'s, it counts every thread. To count only the calling
/// thread exactly while others allocate, use [`Heapprobe::measure`].
pub struct Region<'a, A> {
    alloc: &'a Heapprobe<A>,
    initial: crate::Stats,
}

impl<'a, A> Region<'a, A> {
    /// Starts a region at the allocator's current counters.
    pub fn new(alloc: &'a Heapprobe<A>) -> Self {
        Self { alloc, initial: alloc.stats() }
    }

    /// The counters when the region started (or was last reset).
    pub fn initial(&self) -> crate::Stats {
        self.initial
    }

    /// The change since the region started.
    pub fn change(&self) -> crate::Stats {
        self.alloc.stats() - self.initial
    }

    /// The change since the region started, then restarts the region.
    pub fn change_and_reset(&mut self) -> crate::Stats {
        let now = self.alloc.stats();
        let change = now - self.initial;
        self.initial = now;
        change
    }

    /// Restarts the region at the allocator's current counters.
    pub fn reset(&mut self) {
        self.initial = self.alloc.stats();
    }
}

/// `stats_alloc_helper::LockedAllocator`, without the lock: a [`Heapprobe`]
/// under the name and constructor code written for stats_alloc_helper uses.
///
/// ```
/// use heapprobe::compat::{memory_measured, LockedAllocator, Stats, StatsAlloc};
/// use std::alloc::System;
///
/// #[global_allocator]
/// static GLOBAL: LockedAllocator<System> = LockedAllocator::new(StatsAlloc::system());
///
/// let stats = memory_measured(&GLOBAL, || {
///     let _ = "whoa".to_owned().replace("whoa", "wow").to_owned();
/// });
/// assert_eq!(
///     stats,
///     Stats {
///         allocations: 3,
///         deallocations: 3,
///         reallocations: 0,
///         bytes_allocated: 15,
///         bytes_deallocated: 15,
///         bytes_reallocated: 0
///     }
/// );
/// ```
///
/// stats_alloc_helper's version makes every allocator call of every thread
/// take one spin-lock, held by the measuring thread for the whole
/// measurement (and forever if the measured closure panics). This one
/// measures with per-thread counters ([`Heapprobe::measure`]): other threads
/// are never blocked, and they are not counted. It dereferences to the
/// [`Heapprobe`], so `GLOBAL.measure(..)` and `GLOBAL.stats()` work too, and
/// [`memory_measured`] on it returns the six-field [`Stats`].
#[repr(transparent)]
pub struct LockedAllocator<A>(Heapprobe<A>);

impl<A> LockedAllocator<A> {
    /// Wraps an instrumented allocator (`StatsAlloc::system()`, or any
    /// [`Heapprobe`]).
    pub const fn new(inner: StatsAlloc<A>) -> Self {
        Self(inner)
    }
}

impl<A> Deref for LockedAllocator<A> {
    type Target = Heapprobe<A>;
    fn deref(&self) -> &Heapprobe<A> {
        &self.0
    }
}

// SAFETY: forwards every call unchanged to the wrapped `Heapprobe<A>`, whose
// implementation upholds the `GlobalAlloc` contract.
unsafe impl<A: GlobalAlloc> GlobalAlloc for LockedAllocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract, forwarded.
        unsafe { self.0.alloc(layout) }
    }
    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract, forwarded.
        unsafe { self.0.alloc_zeroed(layout) }
    }
    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract, forwarded.
        unsafe { self.0.dealloc(ptr, layout) }
    }
    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract, forwarded.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

/// `stats_alloc::Stats`: the six counters stats_alloc and
/// stats_alloc_helper report, with their meaning. [`memory_measured`] returns
/// it for a [`LockedAllocator`]; `From<heapprobe::Stats>` keeps the six.
///
/// Arithmetic saturates (stats_alloc's panics on overflow in debug builds).
#[derive(Clone, Copy, Default, Debug, Hash, PartialEq, Eq)]
pub struct Stats {
    /// Successful `alloc` and `alloc_zeroed` calls.
    pub allocations: usize,
    /// `dealloc` calls.
    pub deallocations: usize,
    /// Successful `realloc` calls.
    pub reallocations: usize,
    /// Bytes handed out by allocations, plus the growth of growing reallocs.
    pub bytes_allocated: usize,
    /// Bytes returned by deallocations, plus the shrink of shrinking reallocs.
    pub bytes_deallocated: usize,
    /// Net change of size by reallocs (`new_size - old_size`, summed).
    pub bytes_reallocated: isize,
}

impl From<crate::Stats> for Stats {
    fn from(s: crate::Stats) -> Self {
        Self {
            allocations: s.allocations,
            deallocations: s.deallocations,
            reallocations: s.reallocations,
            bytes_allocated: s.bytes_allocated,
            bytes_deallocated: s.bytes_deallocated,
            bytes_reallocated: s.bytes_reallocated,
        }
    }
}

impl Stats {
    fn combine(self, rhs: Self, op: fn(usize, usize) -> usize, signed: fn(isize, isize) -> isize) -> Self {
        Self {
            allocations: op(self.allocations, rhs.allocations),
            deallocations: op(self.deallocations, rhs.deallocations),
            reallocations: op(self.reallocations, rhs.reallocations),
            bytes_allocated: op(self.bytes_allocated, rhs.bytes_allocated),
            bytes_deallocated: op(self.bytes_deallocated, rhs.bytes_deallocated),
            bytes_reallocated: signed(self.bytes_reallocated, rhs.bytes_reallocated),
        }
    }
}

impl Sub for Stats {
    type Output = Stats;
    fn sub(self, rhs: Self) -> Self {
        self.combine(rhs, usize::saturating_sub, isize::saturating_sub)
    }
}

impl SubAssign for Stats {
    fn sub_assign(&mut self, rhs: Self) {
        *self = *self - rhs;
    }
}

impl Add for Stats {
    type Output = Stats;
    fn add(self, rhs: Self) -> Self {
        self.combine(rhs, usize::saturating_add, isize::saturating_add)
    }
}

impl AddAssign for Stats {
    fn add_assign(&mut self, rhs: Self) {
        *self = *self + rhs;
    }
}
