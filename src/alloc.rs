//! [`Heapprobe`]: the `GlobalAlloc` wrapper.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::*};

use crate::probes;
use crate::stats::Stats;
use crate::tally::{Slot, Tally, Writer, FREE, USED};
use crate::thread::{self, ThreadState, EXITED, UNBOUND};

/// How many threads can hold a private counter slot at the same time.
///
/// Slots are reused when threads exit. A thread beyond this limit is still
/// counted exactly in the process-wide [`Stats`] (through shared atomic
/// counters, slower), but has no per-thread figures:
/// [`Heapprobe::thread_stats`] and [`Heapprobe::measure`] panic on it.
pub const MAX_THREADS: usize = 256;

/// A thread publishes its net allocated bytes to the process-wide peak
/// tracker each time they moved by this much since it last did.
///
/// This keeps the hot path free of shared writes. The process-wide peak is
/// therefore exact to within this many bytes per thread; per-thread and
/// scoped peaks are always exact.
pub const GLOBAL_PEAK_GRANULE: i64 = 64 * 1024;

/// A [`GlobalAlloc`] that counts and fires a USDT probe on every call, then
/// forwards it to the same method of `A`.
///
/// ```
/// use heapprobe::Heapprobe;
/// use std::alloc::System;
///
/// #[global_allocator]
/// static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
///
/// let (v, stats) = GLOBAL.measure(|| vec![1u8, 2, 3]);
/// assert_eq!(stats.allocations, 1);
/// assert_eq!(stats.bytes_allocated, 3);
/// assert_eq!(stats.deallocations, 0); // `v` is still alive
/// assert_eq!(stats.current, 3);
/// # drop(v);
/// ```
pub struct Heapprobe<A> {
    inner: A,
    slots: [Slot; MAX_THREADS],
    /// Slots ever claimed: readers sum `slots[..slots_used]`.
    slots_used: AtomicUsize,
    /// Counters of calls from threads without a slot.
    overflow: Tally,
    /// Net bytes published by threads (see [`GLOBAL_PEAK_GRANULE`]).
    global_net: AtomicI64,
    global_peak: AtomicI64,
    /// Calls that arrived while the same thread was already inside this wrapper.
    reentered: AtomicU64,
    /// The pthread key whose destructor releases slots, plus one (0 = none yet).
    exit_key: AtomicUsize,
}

// SAFETY: every field shared between threads is atomic; `inner` is only used
// through `&A`, which `A: Sync` makes safe to share.
unsafe impl<A: Sync> Sync for Heapprobe<A> {}

impl<A> Heapprobe<A> {
    /// Wraps `inner`. Everything starts at zero, so a `static` of this type
    /// lives in `.bss` and costs no file size.
    pub const fn new(inner: A) -> Self {
        Self {
            inner,
            slots: [const { Slot::new() }; MAX_THREADS],
            slots_used: AtomicUsize::new(0),
            overflow: Tally::new(),
            global_net: AtomicI64::new(0),
            global_peak: AtomicI64::new(0),
            reentered: AtomicU64::new(0),
            exit_key: AtomicUsize::new(0),
        }
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }

    /// Process-wide counters, including threads that have exited.
    ///
    /// Exact once the threads being counted are quiescent; a read racing
    /// with allocator calls sees each counter at some recent value.
    pub fn stats(&self) -> Stats {
        let used = self.slots_used.load(Acquire).min(MAX_THREADS);
        let mut total = self.overflow.load();
        for slot in &self.slots[..used] {
            total = total + slot.tally.load();
        }
        total.current = total.bytes_allocated.saturating_sub(total.bytes_deallocated);
        total.peak = (self.global_peak.load(Relaxed).max(0) as usize).max(total.current);
        total
    }

    /// Sets the process-wide peak to the current use.
    pub fn reset_peak(&self) {
        self.global_peak.store(self.global_net.load(Relaxed), Relaxed);
    }

    /// The calling thread's counters since it first used this allocator.
    /// Exact: only this thread writes them.
    ///
    /// # Panics
    /// If more than [`MAX_THREADS`] threads are alive and this one got no slot.
    pub fn thread_stats(&self) -> Stats {
        let slot = self.own_slot("thread_stats");
        let mut stats = slot.tally.load() - slot.baseline.load();
        let base = slot.baseline_net.load(Relaxed);
        stats.current = slot.net.load(Relaxed).wrapping_sub(base).max(0) as usize;
        stats.peak = slot.thread_high.load(Relaxed).wrapping_sub(base).max(0) as usize;
        stats
    }

    /// Sets the calling thread's peak to its current use.
    ///
    /// # Panics
    /// As [`thread_stats`](Self::thread_stats).
    pub fn reset_thread_peak(&self) {
        let slot = self.own_slot("reset_thread_peak");
        slot.thread_high.store(slot.net.load(Relaxed), Relaxed);
    }

    /// Calls that entered this wrapper while the same thread was already
    /// inside it. Always 0 unless the inner allocator allocates through the
    /// global allocator; the test suite asserts it stays 0.
    pub fn reentrant_calls(&self) -> u64 {
        self.reentered.load(Relaxed)
    }

    /// This thread's slot, claiming one if the thread has none yet.
    pub(crate) fn own_slot(&self, what: &str) -> &Slot {
        let found = thread::current().and_then(|state| {
            // SAFETY: `state` is this thread's live thread-local.
            self.slot_of(unsafe { &*state })
        });
        match found {
            Some(slot) => slot,
            None => panic!(
                "heapprobe: {what} needs a per-thread slot, but all {MAX_THREADS} are taken by \
                 live threads (or this thread is exiting, or it first allocated through \
                 another Heapprobe instance)"
            ),
        }
    }

    /// The slot of the thread whose state is `state`, binding it on first use.
    #[inline(always)]
    fn slot_of(&self, state: &ThreadState) -> Option<&Slot> {
        let slot = state.slot.get();
        if slot > EXITED && state.instance.get() == self as *const Self as usize {
            // SAFETY: a bound slot address points into `self.slots`, and
            // `self` is the instance it was bound for (checked above).
            return Some(unsafe { &*(slot as *const Slot) });
        }
        if slot == UNBOUND {
            return self.bind(state);
        }
        None
    }

    /// Claims a free slot for the calling thread. Allocation-free: the only
    /// calls out are `pthread_key_create` and `pthread_setspecific`.
    #[cold]
    #[inline(never)]
    fn bind(&self, state: &ThreadState) -> Option<&Slot> {
        let key = self.exit_key()?;
        let slot = self.slots.iter().find(|s| {
            s.state.load(Relaxed) == FREE && s.state.compare_exchange(FREE, USED, Acquire, Relaxed).is_ok()
        })?;
        slot.start_owner();
        let index = (slot as *const Slot as usize - self.slots.as_ptr() as usize) / core::mem::size_of::<Slot>();
        self.slots_used.fetch_max(index + 1, Release);
        #[cfg(unix)]
        {
            // SAFETY: `key` is a live key created by `exit_key`; the value is
            // the address of a slot in this (static) instance.
            if unsafe {
                libc::pthread_setspecific(key as libc::pthread_key_t, slot as *const Slot as *const libc::c_void)
            } != 0
            {
                slot.state.store(FREE, Release);
                return None;
            }
        }
        #[cfg(not(unix))]
        let _ = key;
        state.instance.set(self as *const Self as usize);
        state.slot.set(slot as *const Slot as usize);
        Some(slot)
    }

    /// The pthread key that releases slots at thread exit, created once.
    #[cfg(unix)]
    fn exit_key(&self) -> Option<usize> {
        match self.exit_key.load(Acquire) {
            0 => {}
            key => return Some(key - 1),
        }
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is a valid out-pointer; `release` has the signature
        // pthread destructors need.
        if unsafe { libc::pthread_key_create(&mut key, Some(thread::release)) } != 0 {
            return None;
        }
        match self.exit_key.compare_exchange(0, key as usize + 1, AcqRel, Acquire) {
            Ok(_) => Some(key as usize),
            Err(winner) => {
                // SAFETY: `key` was created above and never handed out.
                unsafe { libc::pthread_key_delete(key) };
                Some(winner - 1)
            }
        }
    }

    /// Without pthreads slots are never released, so each thread keeps its
    /// slot; counting stays exact, threads beyond [`MAX_THREADS`] overflow.
    #[cfg(not(unix))]
    fn exit_key(&self) -> Option<usize> {
        Some(0)
    }

    /// Marks this thread busy; returns its slot (if any) and whether the
    /// thread was already inside the wrapper.
    #[inline(always)]
    fn enter(&self) -> Entry<'_> {
        let Some(state) = thread::current() else {
            return Entry { state: None, slot: None };
        };
        // SAFETY: `current` returns this thread's live thread-local.
        let state = unsafe { &*state };
        if state.busy.replace(true) {
            self.reentered.fetch_add(1, Relaxed);
            // The outer call on this thread restores `busy`.
            return Entry { state: None, slot: self.slot_of(state) };
        }
        Entry { state: Some(state), slot: self.slot_of(state) }
    }

    /// Adds `delta` to this thread's net bytes; `GROWS` says whether `delta`
    /// may be positive (only then can a peak move), so that dealloc skips the
    /// peak bookkeeping entirely.
    #[inline(always)]
    fn net_changed<const GROWS: bool>(&self, entry: &Entry<'_>, delta: i64) {
        match entry.slot {
            Some(slot) => {
                let net = slot.add_net::<GROWS>(delta);
                let pending = net.wrapping_sub(slot.published.load(Relaxed));
                if !(-GLOBAL_PEAK_GRANULE..GLOBAL_PEAK_GRANULE).contains(&pending) {
                    self.publish(slot, net, pending);
                }
            }
            None => {
                let global = self.global_net.fetch_add(delta, Relaxed).wrapping_add(delta);
                if GROWS {
                    self.global_peak.fetch_max(global, Relaxed);
                }
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn publish(&self, slot: &Slot, net: i64, pending: i64) {
        slot.published.store(net, Relaxed);
        let global = self.global_net.fetch_add(pending, Relaxed).wrapping_add(pending);
        self.global_peak.fetch_max(global, Relaxed);
    }

    #[inline(always)]
    fn tally<'e>(&'e self, entry: &Entry<'e>) -> (&'e Tally, Writer) {
        match entry.slot {
            Some(slot) => (&slot.tally, Writer::Owner),
            None => (&self.overflow, Writer::Shared),
        }
    }

    #[inline(always)]
    fn in_scope(entry: &Entry<'_>) -> bool {
        entry.slot.is_some_and(|s| s.scope_depth.load(Relaxed) != 0)
    }

    #[inline(always)]
    fn allocated(&self, entry: Entry<'_>, ptr: *mut u8, layout: Layout) {
        let (size, align) = (layout.size(), layout.align());
        let (tally, writer) = self.tally(&entry);
        if ptr.is_null() {
            tally.failed(writer);
            probes::alloc_failed(size as u64, align as u64);
            return;
        }
        tally.allocated(size, writer);
        self.net_changed::<true>(&entry, size as i64);
        probes::alloc(ptr as u64, size as u64, align as u64);
        if Self::in_scope(&entry) {
            probes::alloc_locked(ptr as u64, size as u64, align as u64);
        }
    }
}

/// One call's view of its thread; leaving clears the busy flag.
struct Entry<'a> {
    /// `Some` for the outermost call on this thread, which owns `busy`.
    state: Option<&'a ThreadState>,
    slot: Option<&'a Slot>,
}

impl Drop for Entry<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(state) = self.state {
            state.busy.set(false);
        }
    }
}

// SAFETY: every method forwards to the same method of `inner` with the
// caller's arguments unchanged and returns its result unchanged, so `inner`'s
// guarantees are ours. The bookkeeping around it never allocates, never
// panics (wrapping arithmetic, masked indices, no unwrap) and never blocks.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Heapprobe<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let entry = self.enter();
        // SAFETY: forwarded with the caller's layout, which meets `alloc`'s contract.
        let ptr = unsafe { self.inner.alloc(layout) };
        // Profiler hook (src/profile): off = one relaxed load and a branch.
        if crate::profile::active() {
            crate::profile::hooks::on_alloc(self, ptr, layout.size());
        }
        self.allocated(entry, ptr, layout);
        ptr
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let entry = self.enter();
        // SAFETY: forwarded with the caller's layout, which meets `alloc_zeroed`'s contract.
        let ptr = unsafe { self.inner.alloc_zeroed(layout) };
        // Profiler hook (src/profile): off = one relaxed load and a branch.
        if crate::profile::active() {
            crate::profile::hooks::on_alloc(self, ptr, layout.size());
        }
        self.allocated(entry, ptr, layout);
        ptr
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Bookkeeping first, so that the call to `inner` can be a tail call.
        {
            let entry = self.enter();
            // Profiler hook (src/profile), before the block can be reused:
            // off = one relaxed load and a branch.
            if crate::profile::active() {
                crate::profile::hooks::on_dealloc(ptr);
            }
            let (size, align) = (layout.size(), layout.align());
            let (tally, writer) = self.tally(&entry);
            tally.deallocated(size, writer);
            self.net_changed::<false>(&entry, (size as i64).wrapping_neg());
            probes::dealloc(ptr as u64, size as u64, align as u64);
            if Self::in_scope(&entry) {
                probes::dealloc_locked(ptr as u64, size as u64, align as u64);
            }
        }
        // SAFETY: the caller guarantees `ptr` came from this allocator (and so
        // from `inner`) with `layout`.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let entry = self.enter();
        // Profiler hook (src/profile), before the old block can be reused:
        // off = one relaxed load and a branch.
        let profiling = crate::profile::active();
        if profiling {
            crate::profile::hooks::on_realloc_start(ptr);
        }
        // SAFETY: the caller guarantees `realloc`'s contract for `ptr`,
        // `layout` and `new_size`; we forward them unchanged.
        let new_ptr = unsafe { self.inner.realloc(ptr, layout, new_size) };
        // Profiler hook (src/profile): the second half, null included.
        if profiling {
            crate::profile::hooks::on_realloc(self, ptr, new_ptr, layout.size(), new_size);
        }
        let (old_size, align) = (layout.size(), layout.align());
        let (tally, writer) = self.tally(&entry);
        if new_ptr.is_null() {
            tally.failed(writer);
            probes::alloc_failed(new_size as u64, align as u64);
            return new_ptr;
        }
        tally.reallocated(old_size, new_size, new_ptr != ptr, writer);
        self.net_changed::<true>(&entry, (new_size as i64).wrapping_sub(old_size as i64));
        probes::realloc(ptr as u64, new_ptr as u64, old_size as u64, new_size as u64, align as u64);
        if Self::in_scope(&entry) {
            probes::realloc_locked(ptr as u64, new_ptr as u64, old_size as u64, new_size as u64, align as u64);
        }
        new_ptr
    }
}

// SAFETY: forwards to `Heapprobe<A>`'s implementation (as stats_alloc's
// `&StatsAlloc` does, so `static GLOBAL: &StatsAlloc<System>` keeps working).
unsafe impl<A: GlobalAlloc> GlobalAlloc for &Heapprobe<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract, forwarded.
        unsafe { (**self).alloc(layout) }
    }
    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract, forwarded.
        unsafe { (**self).alloc_zeroed(layout) }
    }
    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract, forwarded.
        unsafe { (**self).dealloc(ptr, layout) }
    }
    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract, forwarded.
        unsafe { (**self).realloc(ptr, layout, new_size) }
    }
}
