//! The counters heapprobe reports: [`Stats`].

use core::fmt;
use core::ops::{Add, Sub};

use crate::histogram::Histogram;

/// A snapshot of allocator activity: for the whole process
/// ([`Heapprobe::stats`](crate::Heapprobe::stats)), one thread
/// ([`Heapprobe::thread_stats`](crate::Heapprobe::thread_stats)) or one
/// measured scope ([`Heapprobe::measure`](crate::Heapprobe::measure)).
///
/// The first six fields have `stats_alloc`'s meaning: a growing realloc adds
/// its growth to `bytes_allocated`, a shrinking one adds its shrink to
/// `bytes_deallocated`, and `bytes_reallocated` is the net signed change.
/// Only calls that succeed are counted; failures go to `allocation_failures`.
///
/// `Sub` gives the change between two snapshots and `Add` combines two
/// changes; both saturate (never panic, never wrap) and apply to every field,
/// `current` and `peak` included.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
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
    /// Reallocs to a larger size.
    pub reallocations_grown: usize,
    /// Bytes added by growing reallocs.
    pub bytes_grown: usize,
    /// Reallocs to a smaller size.
    pub reallocations_shrunk: usize,
    /// Bytes removed by shrinking reallocs.
    pub bytes_shrunk: usize,
    /// Reallocs whose block moved to a new address, so its contents were copied.
    pub reallocations_moved: usize,
    /// Bytes copied by moving reallocs: `min(old_size, new_size)` each.
    pub bytes_moved: usize,
    /// Calls for which the inner allocator returned null.
    pub allocation_failures: usize,
    /// Bytes in use: `bytes_allocated - bytes_deallocated`, never below 0.
    pub current: usize,
    /// The highest `current` since the start or the last peak reset.
    ///
    /// Exact for a thread and for a measured scope. For the whole process it
    /// is exact to within [`GLOBAL_PEAK_GRANULE`](crate::GLOBAL_PEAK_GRANULE)
    /// bytes per live thread: see the crate docs, "Overhead".
    pub peak: usize,
    /// Sizes of allocations (log2 buckets).
    pub size_histogram: Histogram,
    /// Growth of growing reallocs, `new_size - old_size` (log2 buckets).
    pub grow_histogram: Histogram,
    /// Shrink of shrinking reallocs, `old_size - new_size` (log2 buckets).
    pub shrink_histogram: Histogram,
}

impl Stats {
    /// Bytes allocated minus bytes deallocated, signed: what a scope left
    /// live (positive) or freed of older memory (negative).
    pub const fn net_bytes(&self) -> i128 {
        self.bytes_allocated as i128 - self.bytes_deallocated as i128
    }

    /// Allocations not yet matched by a deallocation (signed).
    pub const fn net_allocations(&self) -> i128 {
        self.allocations as i128 - self.deallocations as i128
    }

    fn combine(self, rhs: Self, op: fn(u64, u64) -> u64, signed: fn(isize, isize) -> isize) -> Self {
        let u = |a: usize, b: usize| op(a as u64, b as u64) as usize;
        Self {
            allocations: u(self.allocations, rhs.allocations),
            deallocations: u(self.deallocations, rhs.deallocations),
            reallocations: u(self.reallocations, rhs.reallocations),
            bytes_allocated: u(self.bytes_allocated, rhs.bytes_allocated),
            bytes_deallocated: u(self.bytes_deallocated, rhs.bytes_deallocated),
            bytes_reallocated: signed(self.bytes_reallocated, rhs.bytes_reallocated),
            reallocations_grown: u(self.reallocations_grown, rhs.reallocations_grown),
            bytes_grown: u(self.bytes_grown, rhs.bytes_grown),
            reallocations_shrunk: u(self.reallocations_shrunk, rhs.reallocations_shrunk),
            bytes_shrunk: u(self.bytes_shrunk, rhs.bytes_shrunk),
            reallocations_moved: u(self.reallocations_moved, rhs.reallocations_moved),
            bytes_moved: u(self.bytes_moved, rhs.bytes_moved),
            allocation_failures: u(self.allocation_failures, rhs.allocation_failures),
            current: u(self.current, rhs.current),
            peak: u(self.peak, rhs.peak),
            size_histogram: self.size_histogram.combine(&rhs.size_histogram, op),
            grow_histogram: self.grow_histogram.combine(&rhs.grow_histogram, op),
            shrink_histogram: self.shrink_histogram.combine(&rhs.shrink_histogram, op),
        }
    }
}

impl Sub for Stats {
    type Output = Stats;
    fn sub(self, rhs: Self) -> Self {
        self.combine(rhs, u64::saturating_sub, isize::saturating_sub)
    }
}

impl Add for Stats {
    type Output = Stats;
    fn add(self, rhs: Self) -> Self {
        self.combine(rhs, u64::saturating_add, isize::saturating_add)
    }
}

/// Bytes in human units, exact below 1 KiB.
pub(crate) struct Bytes(pub u128);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.1} {}", UNITS[unit])
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = |n: usize| Bytes(n as u128);
        writeln!(f, "allocations    {:>12}  {}", self.allocations, b(self.bytes_allocated))?;
        writeln!(f, "deallocations  {:>12}  {}", self.deallocations, b(self.bytes_deallocated))?;
        let sign = if self.bytes_reallocated < 0 { "-" } else { "+" };
        writeln!(
            f,
            "reallocations  {:>12}  net {sign}{}",
            self.reallocations,
            Bytes(self.bytes_reallocated.unsigned_abs() as u128)
        )?;
        writeln!(f, "  grown        {:>12}  {}", self.reallocations_grown, b(self.bytes_grown))?;
        writeln!(f, "  shrunk       {:>12}  {}", self.reallocations_shrunk, b(self.bytes_shrunk))?;
        writeln!(f, "  moved        {:>12}  {} copied", self.reallocations_moved, b(self.bytes_moved))?;
        writeln!(f, "failures       {:>12}", self.allocation_failures)?;
        writeln!(f, "current        {:>12}  peak {}", b(self.current).to_string(), b(self.peak))?;
        for (title, histogram) in [
            ("allocation sizes", &self.size_histogram),
            ("realloc growth", &self.grow_histogram),
            ("realloc shrink", &self.shrink_histogram),
        ] {
            if histogram.total() != 0 {
                writeln!(f, "{title} (bytes):")?;
                write!(f, "{histogram}")?;
            }
        }
        Ok(())
    }
}
