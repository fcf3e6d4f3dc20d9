//! Per-thread counter blocks ("slots") and the arithmetic of one allocator call.
//!
//! A slot is written by exactly one thread, its owner, with plain relaxed
//! load + store pairs: no read-modify-write, no lock prefix, no cache line
//! shared with another writer. Readers sum all slots. A slot outlives its
//! thread: when the thread exits its slot is released, keeping its counts,
//! and the next thread that claims it continues from them, so global sums
//! never lose an exited thread and never count one twice. Per-thread figures
//! subtract the `baseline` taken at claim time.

use core::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};

use crate::histogram::{Histogram, BUCKETS};
use crate::stats::Stats;

/// How a counter is bumped.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    /// The slot's owner: load + store, no atomic read-modify-write.
    Owner,
    /// Any thread (the shared overflow block): `fetch_add`.
    Shared,
}

#[inline(always)]
fn bump(counter: &AtomicU64, by: u64, writer: Writer) {
    match writer {
        Writer::Owner => counter.store(counter.load(Relaxed).wrapping_add(by), Relaxed),
        Writer::Shared => {
            counter.fetch_add(by, Relaxed);
        }
    }
}

/// Raw cumulative counters. `bytes_reallocated` is stored as two's complement.
pub(crate) struct Tally {
    allocations: AtomicU64,
    deallocations: AtomicU64,
    reallocations: AtomicU64,
    bytes_allocated: AtomicU64,
    bytes_deallocated: AtomicU64,
    bytes_reallocated: AtomicU64,
    reallocations_grown: AtomicU64,
    bytes_grown: AtomicU64,
    reallocations_shrunk: AtomicU64,
    bytes_shrunk: AtomicU64,
    reallocations_moved: AtomicU64,
    bytes_moved: AtomicU64,
    allocation_failures: AtomicU64,
    sizes: [AtomicU64; BUCKETS],
    grows: [AtomicU64; BUCKETS],
    shrinks: [AtomicU64; BUCKETS],
}

#[allow(clippy::declare_interior_mutable_const)] // only used to build arrays
const ZERO: AtomicU64 = AtomicU64::new(0);

impl Tally {
    pub(crate) const fn new() -> Self {
        Self {
            allocations: ZERO,
            deallocations: ZERO,
            reallocations: ZERO,
            bytes_allocated: ZERO,
            bytes_deallocated: ZERO,
            bytes_reallocated: ZERO,
            reallocations_grown: ZERO,
            bytes_grown: ZERO,
            reallocations_shrunk: ZERO,
            bytes_shrunk: ZERO,
            reallocations_moved: ZERO,
            bytes_moved: ZERO,
            allocation_failures: ZERO,
            sizes: [ZERO; BUCKETS],
            grows: [ZERO; BUCKETS],
            shrinks: [ZERO; BUCKETS],
        }
    }

    #[inline(always)]
    pub(crate) fn allocated(&self, size: usize, writer: Writer) {
        bump(&self.allocations, 1, writer);
        bump(&self.bytes_allocated, size as u64, writer);
        bump(&self.sizes[Histogram::bucket_of(size)], 1, writer);
    }

    #[inline(always)]
    pub(crate) fn deallocated(&self, size: usize, writer: Writer) {
        bump(&self.deallocations, 1, writer);
        bump(&self.bytes_deallocated, size as u64, writer);
    }

    #[inline(always)]
    pub(crate) fn reallocated(&self, old_size: usize, new_size: usize, moved: bool, writer: Writer) {
        bump(&self.reallocations, 1, writer);
        bump(&self.bytes_reallocated, (new_size as u64).wrapping_sub(old_size as u64), writer);
        if new_size > old_size {
            let growth = new_size - old_size;
            bump(&self.reallocations_grown, 1, writer);
            bump(&self.bytes_grown, growth as u64, writer);
            bump(&self.bytes_allocated, growth as u64, writer);
            bump(&self.grows[Histogram::bucket_of(growth)], 1, writer);
        } else if new_size < old_size {
            let shrink = old_size - new_size;
            bump(&self.reallocations_shrunk, 1, writer);
            bump(&self.bytes_shrunk, shrink as u64, writer);
            bump(&self.bytes_deallocated, shrink as u64, writer);
            bump(&self.shrinks[Histogram::bucket_of(shrink)], 1, writer);
        }
        if moved {
            bump(&self.reallocations_moved, 1, writer);
            bump(&self.bytes_moved, old_size.min(new_size) as u64, writer);
        }
    }

    #[inline(always)]
    pub(crate) fn failed(&self, writer: Writer) {
        bump(&self.allocation_failures, 1, writer);
    }

    /// Reads every counter. `current` and `peak` are left at 0 for the caller.
    pub(crate) fn load(&self) -> Stats {
        let n = |c: &AtomicU64| c.load(Relaxed) as usize;
        let h = |b: &[AtomicU64; BUCKETS]| {
            let mut out = [0u64; BUCKETS];
            for (o, c) in out.iter_mut().zip(b) {
                *o = c.load(Relaxed);
            }
            Histogram::from_buckets(out)
        };
        Stats {
            allocations: n(&self.allocations),
            deallocations: n(&self.deallocations),
            reallocations: n(&self.reallocations),
            bytes_allocated: n(&self.bytes_allocated),
            bytes_deallocated: n(&self.bytes_deallocated),
            bytes_reallocated: self.bytes_reallocated.load(Relaxed) as i64 as isize,
            reallocations_grown: n(&self.reallocations_grown),
            bytes_grown: n(&self.bytes_grown),
            reallocations_shrunk: n(&self.reallocations_shrunk),
            bytes_shrunk: n(&self.bytes_shrunk),
            reallocations_moved: n(&self.reallocations_moved),
            bytes_moved: n(&self.bytes_moved),
            allocation_failures: n(&self.allocation_failures),
            current: 0,
            peak: 0,
            size_histogram: h(&self.sizes),
            grow_histogram: h(&self.grows),
            shrink_histogram: h(&self.shrinks),
        }
    }

    /// Overwrites every counter with `stats` (owner only: a baseline copy).
    pub(crate) fn store(&self, stats: &Stats) {
        let s = |c: &AtomicU64, v: usize| c.store(v as u64, Relaxed);
        let h = |b: &[AtomicU64; BUCKETS], v: &Histogram| {
            for (c, v) in b.iter().zip(v.buckets()) {
                c.store(*v, Relaxed);
            }
        };
        s(&self.allocations, stats.allocations);
        s(&self.deallocations, stats.deallocations);
        s(&self.reallocations, stats.reallocations);
        s(&self.bytes_allocated, stats.bytes_allocated);
        s(&self.bytes_deallocated, stats.bytes_deallocated);
        self.bytes_reallocated.store(stats.bytes_reallocated as i64 as u64, Relaxed);
        s(&self.reallocations_grown, stats.reallocations_grown);
        s(&self.bytes_grown, stats.bytes_grown);
        s(&self.reallocations_shrunk, stats.reallocations_shrunk);
        s(&self.bytes_shrunk, stats.bytes_shrunk);
        s(&self.reallocations_moved, stats.reallocations_moved);
        s(&self.bytes_moved, stats.bytes_moved);
        s(&self.allocation_failures, stats.allocation_failures);
        h(&self.sizes, &stats.size_histogram);
        h(&self.grows, &stats.grow_histogram);
        h(&self.shrinks, &stats.shrink_histogram);
    }
}

/// Slot states.
pub(crate) const FREE: u8 = 0;
pub(crate) const USED: u8 = 1;

/// One thread's counters. Aligned to two cache lines so that neighbouring
/// slots never share a line (adjacent-line prefetch included).
#[repr(align(128))]
pub(crate) struct Slot {
    /// Hot fields first, on the owner's cache lines.
    /// Cumulative `bytes_allocated - bytes_deallocated` of this slot.
    pub(crate) net: AtomicI64,
    /// Highest `net` since the owner claimed the slot or reset its peak.
    pub(crate) thread_high: AtomicI64,
    /// Highest `net` since the innermost measured scope began.
    pub(crate) scope_high: AtomicI64,
    /// The part of `net` already added to the instance's global net.
    pub(crate) published: AtomicI64,
    /// Measured scopes open on the owner thread.
    pub(crate) scope_depth: AtomicU32,
    /// [`FREE`] or [`USED`].
    pub(crate) state: AtomicU8,
    pub(crate) tally: Tally,
    /// `tally` when the owner claimed the slot.
    pub(crate) baseline: Tally,
    /// `net` when the owner claimed the slot.
    pub(crate) baseline_net: AtomicI64,
}

impl Slot {
    pub(crate) const fn new() -> Self {
        Self {
            net: AtomicI64::new(0),
            thread_high: AtomicI64::new(0),
            scope_high: AtomicI64::new(0),
            published: AtomicI64::new(0),
            scope_depth: AtomicU32::new(0),
            state: AtomicU8::new(FREE),
            tally: Tally::new(),
            baseline: Tally::new(),
            baseline_net: AtomicI64::new(0),
        }
    }

    /// Adds `delta` to `net` and, if `GROWS` and `delta > 0`, raises the
    /// high-water marks. Owner only. Returns the new `net`.
    #[inline(always)]
    pub(crate) fn add_net<const GROWS: bool>(&self, delta: i64) -> i64 {
        let net = self.net.load(Relaxed).wrapping_add(delta);
        self.net.store(net, Relaxed);
        if GROWS && delta > 0 {
            if net > self.thread_high.load(Relaxed) {
                self.thread_high.store(net, Relaxed);
            }
            if net > self.scope_high.load(Relaxed) {
                self.scope_high.store(net, Relaxed);
            }
        }
        net
    }

    /// Called by the new owner right after it claimed the slot.
    pub(crate) fn start_owner(&self) {
        self.baseline.store(&self.tally.load());
        let net = self.net.load(Relaxed);
        self.baseline_net.store(net, Relaxed);
        self.thread_high.store(net, Relaxed);
        self.scope_high.store(net, Relaxed);
        self.scope_depth.store(0, Relaxed);
    }
}
