//! Drop-in names for code written against `stats_alloc`.
//!
//! Replace `use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};` with
//! `use heapprobe::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};` and the rest
//! compiles unchanged.

use std::alloc::System;

use crate::alloc::Heapprobe;
use crate::stats::Stats;

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
    initial: Stats,
}

impl<'a, A> Region<'a, A> {
    /// Starts a region at the allocator's current counters.
    pub fn new(alloc: &'a Heapprobe<A>) -> Self {
        Self { alloc, initial: alloc.stats() }
    }

    /// The counters when the region started (or was last reset).
    pub fn initial(&self) -> Stats {
        self.initial
    }

    /// The change since the region started.
    pub fn change(&self) -> Stats {
        self.alloc.stats() - self.initial
    }

    /// The change since the region started, then restarts the region.
    pub fn change_and_reset(&mut self) -> Stats {
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
