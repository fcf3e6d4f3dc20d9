//! Per-thread counters ("slots"), the blocks of memory they live in, and the
//! arithmetic of one allocator call.
//!
//! A slot is written by exactly one thread, its owner, with plain relaxed
//! load + store pairs: no read-modify-write, no lock prefix, no cache line
//! shared with another writer. Readers sum all slots. A slot outlives its
//! thread: when the thread exits its slot is released, keeping its counts,
//! and the next thread that claims it continues from them, so global sums
//! never lose an exited thread and never count one twice. Per-thread figures
//! subtract the `baseline` taken at claim time.
//!
//! Slots live in blocks of [`BLOCK_SLOTS`] that heapprobe maps itself
//! (`mmap`; never the global allocator), chained from the instance. The chain
//! only grows and a block is never unmapped, so readers can walk it without
//! a lock, and any number of threads can hold a slot at the same time.

use core::ptr;
use core::sync::atomic::{AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

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
///
/// Counts that equal the total of a histogram are not kept separately:
/// `allocations` is the total of `sizes` (every successful allocation falls
/// in exactly one bucket), `reallocations_grown` of `grows` and
/// `reallocations_shrunk` of `shrinks`. That is one store less per call.
pub(crate) struct Tally {
    deallocations: AtomicU64,
    reallocations: AtomicU64,
    bytes_allocated: AtomicU64,
    bytes_deallocated: AtomicU64,
    bytes_reallocated: AtomicU64,
    bytes_grown: AtomicU64,
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
            deallocations: ZERO,
            reallocations: ZERO,
            bytes_allocated: ZERO,
            bytes_deallocated: ZERO,
            bytes_reallocated: ZERO,
            bytes_grown: ZERO,
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
        self.allocated_bytes(size, writer);
        self.allocated_size(size, writer);
    }

    /// The first half of [`allocated`](Self::allocated): the bytes.
    #[inline(always)]
    pub(crate) fn allocated_bytes(&self, size: usize, writer: Writer) {
        bump(&self.bytes_allocated, size as u64, writer);
    }

    /// Bytes allocated so far (realloc growth included), cumulative.
    #[inline(always)]
    pub(crate) fn bytes_allocated(&self) -> u64 {
        self.bytes_allocated.load(Relaxed)
    }

    /// The second half of [`allocated`](Self::allocated): the size
    /// histogram, which is also the count of allocations.
    #[inline(always)]
    pub(crate) fn allocated_size(&self, size: usize, writer: Writer) {
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
            bump(&self.bytes_grown, growth as u64, writer);
            bump(&self.bytes_allocated, growth as u64, writer);
            bump(&self.grows[Histogram::bucket_of(growth)], 1, writer);
        } else if new_size < old_size {
            let shrink = old_size - new_size;
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
        let (sizes, grows, shrinks) = (h(&self.sizes), h(&self.grows), h(&self.shrinks));
        Stats {
            allocations: sizes.total() as usize,
            deallocations: n(&self.deallocations),
            reallocations: n(&self.reallocations),
            bytes_allocated: n(&self.bytes_allocated),
            bytes_deallocated: n(&self.bytes_deallocated),
            bytes_reallocated: self.bytes_reallocated.load(Relaxed) as i64 as isize,
            reallocations_grown: grows.total() as usize,
            bytes_grown: n(&self.bytes_grown),
            reallocations_shrunk: shrinks.total() as usize,
            bytes_shrunk: n(&self.bytes_shrunk),
            reallocations_moved: n(&self.reallocations_moved),
            bytes_moved: n(&self.bytes_moved),
            allocation_failures: n(&self.allocation_failures),
            current: 0,
            peak: 0,
            size_histogram: sizes,
            grow_histogram: grows,
            shrink_histogram: shrinks,
        }
    }

    /// Overwrites every counter with `stats` (owner only: a baseline copy).
    /// The derived counts follow from the histograms.
    pub(crate) fn store(&self, stats: &Stats) {
        let s = |c: &AtomicU64, v: usize| c.store(v as u64, Relaxed);
        let h = |b: &[AtomicU64; BUCKETS], v: &Histogram| {
            for (c, v) in b.iter().zip(v.buckets()) {
                c.store(*v, Relaxed);
            }
        };
        s(&self.deallocations, stats.deallocations);
        s(&self.reallocations, stats.reallocations);
        s(&self.bytes_allocated, stats.bytes_allocated);
        s(&self.bytes_deallocated, stats.bytes_deallocated);
        self.bytes_reallocated.store(stats.bytes_reallocated as i64 as u64, Relaxed);
        s(&self.bytes_grown, stats.bytes_grown);
        s(&self.bytes_shrunk, stats.bytes_shrunk);
        s(&self.reallocations_moved, stats.reallocations_moved);
        s(&self.bytes_moved, stats.bytes_moved);
        s(&self.allocation_failures, stats.allocation_failures);
        h(&self.sizes, &stats.size_histogram);
        h(&self.grows, &stats.grow_histogram);
        h(&self.shrinks, &stats.shrink_histogram);
    }
}

/// One thread's counters. Aligned to two cache lines so that neighbouring
/// slots never share a line (adjacent-line prefetch included).
///
/// Net bytes (`bytes_allocated - bytes_deallocated` of `tally`) are not kept
/// separately, and neither is the high-water mark: `headroom` is how far the
/// net is below its highest value since the last *mark*, so an allocation
/// lowers it (and clamps it at 0: a new high) and a free raises it, with no
/// compare against a separate peak. A mark (a scope begins or ends, a peak is
/// reset, the net is published) folds that high into `thread_carry` and
/// `scope_carry` and restarts it from the current net, which lets one high
/// serve the thread's peak and every open scope's peak exactly.
#[repr(C, align(128))]
pub(crate) struct Slot {
    /// `high - net`, where `high` is the highest net since the last mark.
    /// Never negative between calls.
    headroom: Owned<i64>,
    /// Bytes this slot may still free (or shrink by) before its net is next
    /// published to the instance's global net. Negative: publish now.
    pub(crate) budget: Owned<i64>,
    pub(crate) tally: Tally,
    /// The part of the net already added to the instance's global net.
    pub(crate) published: AtomicI64,
    /// Highest net between the owner's peak start (claim or
    /// `reset_thread_peak`) and the last mark.
    thread_carry: AtomicI64,
    /// Highest net between the start of the innermost open measured scope
    /// and the last mark.
    pub(crate) scope_carry: AtomicI64,
    /// Measured scopes open on the owner thread.
    pub(crate) scope_depth: AtomicU32,
    /// `tally` when the owner claimed the slot.
    pub(crate) baseline: Tally,
    /// The net when the owner claimed the slot.
    pub(crate) baseline_net: AtomicI64,
    /// The block holding this slot, set before the block is published.
    block: AtomicPtr<Block>,
    /// The in-process profiler's next sample, as a value of the cumulative
    /// `tally.bytes_allocated`: the fast path's allocation that takes the
    /// bytes above it calls the profiler (`Heapprobe::alloc_crossed`).
    /// `u64::MAX` (never) while the profiler is off; 0 (the next
    /// allocation) when the owner must decide again: a new owner, or the
    /// profiler started or stopped (`crate::alloc::resample_all`, the only
    /// writer other than the owner). The owner writes it only off the fast
    /// path, in `profile::hooks::slot_crossed`.
    pub(crate) sample_at: AtomicU64,
}

impl Slot {
    /// Net bytes: allocated minus freed, realloc growth and shrink included.
    #[inline(always)]
    pub(crate) fn net(&self) -> i64 {
        self.tally.bytes_allocated.load(Relaxed).wrapping_sub(self.tally.bytes_deallocated.load(Relaxed)) as i64
    }

    /// The net went up by `by` (> 0). Owner only. Returns false if the net
    /// passed its high: the caller must then call [`at_high`](Self::at_high).
    #[inline(always)]
    pub(crate) fn grew(&self, by: i64) -> bool {
        let headroom = self.headroom.get().wrapping_sub(by);
        self.headroom.set(headroom);
        headroom >= 0
    }

    /// The net is at a new high (headroom 0). Owner only.
    pub(crate) fn at_high(&self) {
        self.headroom.set(0);
    }

    /// Spends `bytes` of the publication budget. Owner only. Returns false
    /// when it is used up: the net must be published.
    #[inline(always)]
    pub(crate) fn spend(&self, bytes: i64) -> bool {
        let budget = self.budget.get().wrapping_sub(bytes);
        self.budget.set(budget);
        budget >= 0
    }

    /// The net went down by `by` (>= 0). Owner only.
    #[inline(always)]
    pub(crate) fn shrank(&self, by: i64) {
        self.headroom.set(self.headroom.get().wrapping_add(by));
    }

    /// The highest net since the last mark.
    fn high(&self) -> i64 {
        self.net().wrapping_add(self.headroom.get())
    }

    /// A mark: folds the high since the last mark into both carries and
    /// restarts it at the current net. Owner only. Returns the scope carry.
    pub(crate) fn mark(&self) -> i64 {
        let high = self.high();
        self.headroom.set(0);
        self.thread_carry.store(self.thread_carry.load(Relaxed).max(high), Relaxed);
        let scope = self.scope_carry.load(Relaxed).max(high);
        self.scope_carry.store(scope, Relaxed);
        scope
    }

    /// The highest net since the owner's peak start.
    pub(crate) fn thread_high(&self) -> i64 {
        self.thread_carry.load(Relaxed).max(self.high())
    }

    /// The highest net since the innermost open scope began.
    pub(crate) fn scope_high(&self) -> i64 {
        self.scope_carry.load(Relaxed).max(self.high())
    }

    /// Restarts the owner's peak at the current net (open scopes keep theirs).
    pub(crate) fn reset_thread_high(&self) {
        self.mark();
        self.thread_carry.store(self.net(), Relaxed);
    }

    /// Called by the new owner right after it claimed the slot.
    pub(crate) fn start_owner(&self) {
        self.baseline.store(&self.tally.load());
        let net = self.net();
        self.baseline_net.store(net, Relaxed);
        self.headroom.set(0);
        self.thread_carry.store(net, Relaxed);
        self.scope_carry.store(net, Relaxed);
        self.scope_depth.store(0, Relaxed);
        // The new owner decides on its first fast-path allocation.
        self.sample_at.store(0, SeqCst);
    }

    /// Gives the slot back (its owner thread is exiting), keeping its counts
    /// for the readers and for the next owner.
    pub(crate) fn release(&self) {
        let block = self.block.load(Relaxed);
        // SAFETY: `block` was set, before the block was published, to the
        // block that holds this slot; blocks are never unmapped.
        let Some(block) = (unsafe { block.as_ref() }) else { return };
        let index = (self as *const Slot as usize).wrapping_sub(block.slots.as_ptr() as usize) / SLOT_SIZE;
        // Release: the next owner's claim (Acquire) sees every count we wrote.
        block.used.fetch_and(!(1u64 << (index % BLOCK_SLOTS)), Release);
    }
}

/// A value only the slot's owner thread reads and writes: plain memory, so
/// that an update is one read-modify-write instruction whose flags the
/// following branch uses (relaxed atomics compile to a load, an operation
/// and a store).
///
/// Ownership moves between threads only through [`Block::used`]: the old
/// owner's release (`Release`) happens before the new owner's claim
/// (`Acquire`), so accesses by successive owners never race. Readers of
/// other threads (`Heapprobe::stats`) read the `tally` atomics only.
#[repr(transparent)]
pub(crate) struct Owned<T>(core::cell::UnsafeCell<T>);

// SAFETY: see the type's documentation: only the owner thread of the slot
// holding the value accesses it, and ownership is handed over with
// release/acquire synchronisation.
unsafe impl<T: Send> Sync for Owned<T> {}

impl<T: Copy> Owned<T> {
    /// Owner only.
    #[inline(always)]
    pub(crate) fn get(&self) -> T {
        // SAFETY: only the owner thread calls this (see the type's docs),
        // so there is no concurrent write.
        unsafe { *self.0.get() }
    }

    /// Owner only.
    #[inline(always)]
    pub(crate) fn set(&self, value: T) {
        // SAFETY: only the owner thread calls this, so there is no
        // concurrent access.
        unsafe { *self.0.get() = value }
    }
}

const SLOT_SIZE: usize = core::mem::size_of::<Slot>();

/// Slots per block: one bit each in [`Block::used`].
pub(crate) const BLOCK_SLOTS: usize = 64;

/// A block of slots in memory mapped by heapprobe.
#[repr(C)]
pub(crate) struct Block {
    /// Bit `i`: `slots[i]` has an owner.
    used: AtomicU64,
    /// One more than the highest index ever claimed: readers sum
    /// `slots[..claimed]` (the others are still all zero).
    claimed: AtomicUsize,
    /// The next block of the chain, or null.
    next: AtomicPtr<Block>,
    slots: [Slot; BLOCK_SLOTS],
}

impl Block {
    /// Maps a new, zeroed block (all zeros is a valid block: every slot
    /// free with zero counts) and points its slots at it.
    fn map() -> Option<&'static Block> {
        let size = core::mem::size_of::<Block>();
        #[cfg(unix)]
        // SAFETY: an anonymous private mapping with no address hint has no
        // preconditions; the result is checked against MAP_FAILED.
        let block = unsafe {
            let p = libc::mmap(
                ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return None;
            }
            p as *mut Block
        };
        // Without mmap, the platform allocator (never the global allocator,
        // which may be this very wrapper).
        #[cfg(not(unix))]
        // SAFETY: `Layout::new::<Block>()` has a non-zero size.
        let block = unsafe {
            use std::alloc::{GlobalAlloc, Layout, System};
            let p = System.alloc_zeroed(Layout::new::<Block>()) as *mut Block;
            if p.is_null() {
                return None;
            }
            p
        };
        let _ = size;
        // SAFETY: `block` points to a fresh, zeroed, suitably aligned (page
        // or allocator aligned) region of `size_of::<Block>()` bytes, which
        // is a valid `Block`; it is never unmapped, hence `'static`.
        let block: &'static Block = unsafe { &*block };
        for slot in &block.slots {
            slot.block.store(block as *const Block as *mut Block, Relaxed);
        }
        Some(block)
    }

    /// Claims a free slot of this block, if any.
    fn claim(&self) -> Option<&Slot> {
        let mut used = self.used.load(Relaxed);
        loop {
            let index = (!used).trailing_zeros() as usize;
            let slot = self.slots.get(index)?; // None when all 64 are used
                                               // Acquire: see the counts the previous owner left (its Release).
            match self.used.compare_exchange_weak(used, used | 1 << index, Acquire, Relaxed) {
                Ok(_) => {
                    self.claimed.fetch_max(index + 1, Release);
                    return Some(slot);
                }
                Err(now) => used = now,
            }
        }
    }

    /// The slots ever claimed.
    fn claimed(&self) -> &[Slot] {
        let n = self.claimed.load(Acquire).min(BLOCK_SLOTS);
        &self.slots[..n]
    }
}

/// An instance's chain of blocks.
pub(crate) struct Slots {
    head: AtomicPtr<Block>,
}

impl Slots {
    pub(crate) const fn new() -> Self {
        Self { head: AtomicPtr::new(ptr::null_mut()) }
    }

    /// Claims a free slot, mapping a new block at the end of the chain if
    /// every slot is taken. Lock-free and allocation-free. `None` only if
    /// the system refuses to map memory.
    pub(crate) fn claim(&self) -> Option<&'static Slot> {
        let mut link = &self.head;
        loop {
            let mut block = link.load(Acquire);
            if block.is_null() {
                let new = Block::map()? as *const Block as *mut Block;
                // AcqRel: publishes the block's slot pointers to later walkers.
                match link.compare_exchange(ptr::null_mut(), new, AcqRel, Acquire) {
                    Ok(_) => block = new,
                    Err(winner) => {
                        // Another thread linked a block first: use it. Ours
                        // was never shared, so it can go back.
                        Block::unmap(new);
                        block = winner;
                    }
                }
            }
            // SAFETY: a non-null link points to a block mapped by `Block::map`,
            // never unmapped once linked.
            let block: &'static Block = unsafe { &*block };
            if let Some(slot) = block.claim() {
                return Some(slot);
            }
            link = &block.next;
        }
    }

    /// Every slot ever claimed, in every block.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Slot> {
        let mut block = self.head.load(Acquire);
        core::iter::from_fn(move || {
            // SAFETY: as in `claim`: linked blocks are valid forever.
            let b: &Block = unsafe { block.as_ref()? };
            block = b.next.load(Acquire);
            Some(b.claimed())
        })
        .flatten()
    }

    /// How many blocks are mapped, and their total size in bytes.
    pub(crate) fn mapped(&self) -> (usize, usize) {
        let mut n = 0;
        let mut block = self.head.load(Acquire);
        // SAFETY: as in `claim`.
        while let Some(b) = unsafe { block.as_ref() } {
            n += 1;
            block = b.next.load(Acquire);
        }
        (n, n * core::mem::size_of::<Block>())
    }
}

impl Block {
    /// Returns a block that was mapped but never linked into a chain.
    fn unmap(block: *mut Block) {
        #[cfg(unix)]
        // SAFETY: `block` is a whole mapping made by `map` that nobody else
        // has seen (its link CAS failed).
        unsafe {
            libc::munmap(block as *mut libc::c_void, core::mem::size_of::<Block>());
        }
        #[cfg(not(unix))]
        // SAFETY: allocated by `map` with this layout and never shared.
        unsafe {
            use std::alloc::{GlobalAlloc, Layout, System};
            System.dealloc(block as *mut u8, Layout::new::<Block>());
        }
    }
}
