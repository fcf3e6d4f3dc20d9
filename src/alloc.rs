//! [`Heapprobe`]: the `GlobalAlloc` wrapper.
//!
//! Every method has a fast path, inlined into `__rust_alloc` and friends,
//! for the common case: the calling thread has a slot in this instance, no
//! measured scope is open on it, and it is not already inside an allocator
//! call. One compare of a thread-local word against the instance's address
//! decides it ([`ThreadState::fast`]). Everything else (a thread's first
//! call, calls inside a measured scope, which also fire the `*_locked`
//! probes, re-entrant calls, threads without a slot) takes the slow path, a
//! separate function with the same counting code.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::*};

use crate::probes;
use crate::stats::Stats;
use crate::tally::{Slot, Slots, Tally, Writer};
use crate::thread::{self, ThreadState, BUSY, EXITED, NO_SLOT, UNBOUND};

/// The bit of [`Heapprobe::key`] that diverts every thread to the slow path.
const DIVERTED: usize = 4;

/// Formerly the most threads that could hold a private counter slot at once.
///
/// There is no such limit any more: slots live in blocks of memory that
/// heapprobe maps itself, and a new block is mapped whenever every slot is
/// taken, so every thread gets one and is counted, measured and exact, with
/// the same cost per call, however many threads are alive. Slots are still
/// reused when threads exit.
#[deprecated(note = "no longer a limit: every thread gets a counter slot, from blocks heapprobe maps itself")]
pub const MAX_THREADS: usize = 256;

/// A thread publishes its net allocated bytes to the process-wide peak
/// tracker whenever they have moved by this much since it last did (up past
/// its high-water mark, or down by frees).
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
    /// What a thread's fast word must equal for the fast path: this
    /// instance's address (set when it binds its first thread; 0 before,
    /// which no fast word equals), with [`DIVERTED`] set to send every call
    /// through the slow path. Read by every call, written almost never.
    key: AtomicUsize,
    /// Per-thread counters, in blocks mapped on demand.
    slots: Slots,
    /// Counters of calls from threads without a slot of this instance.
    overflow: Tally,
    /// Net bytes published by threads (see [`GLOBAL_PEAK_GRANULE`]).
    global_net: AtomicI64,
    global_peak: AtomicI64,
    /// Calls that arrived while the same thread was already inside this wrapper.
    reentered: AtomicU64,
    /// The pthread key whose destructor releases slots, plus one (0 = none yet).
    exit_key: AtomicUsize,
}

impl<A> Heapprobe<A> {
    /// Wraps `inner`. Everything starts at zero, so a `static` of this type
    /// lives in `.bss` and costs no file size. Counter slots are mapped when
    /// threads first call it, 64 at a time.
    pub const fn new(inner: A) -> Self {
        Self {
            inner,
            key: AtomicUsize::new(0),
            slots: Slots::new(),
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

    /// This instance's address: the value of [`ThreadState::fast`] that
    /// selects its fast path.
    #[inline(always)]
    fn id(&self) -> usize {
        self as *const Self as usize
    }

    /// Process-wide counters, including threads that have exited.
    ///
    /// Exact once the threads being counted are quiescent; a read racing
    /// with allocator calls sees each counter at some recent value.
    pub fn stats(&self) -> Stats {
        let mut total = self.overflow.load();
        for slot in self.slots.iter() {
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
    /// If this thread's counters belong to another `Heapprobe` instance (a
    /// thread is counted per thread by the first instance it calls; its
    /// calls to others count in their [`stats`](Self::stats) only), or if
    /// the system refuses to map memory for a new block of counter slots.
    pub fn thread_stats(&self) -> Stats {
        let slot = self.own_slot("thread_stats").1;
        let mut stats = slot.tally.load() - slot.baseline.load();
        let base = slot.baseline_net.load(Relaxed);
        stats.current = slot.net().wrapping_sub(base).max(0) as usize;
        stats.peak = slot.thread_high().wrapping_sub(base).max(0) as usize;
        stats
    }

    /// Sets the calling thread's peak to its current use.
    ///
    /// # Panics
    /// As [`thread_stats`](Self::thread_stats).
    pub fn reset_thread_peak(&self) {
        self.own_slot("reset_thread_peak").1.reset_thread_high();
    }

    /// Calls that entered this wrapper while the same thread was inside the
    /// slow path of a `Heapprobe` call: a thread's first call (which claims
    /// its counter slot), or any call inside a measured scope (where the
    /// `*_locked` probes fire). All of heapprobe's own work that calls out of
    /// line runs there, so this is 0 unless the inner allocator allocates
    /// through the global allocator inside a measured scope; the test suite
    /// asserts it stays 0, with a positive control.
    ///
    /// Other calls take the fast path, which marks nothing (that would cost
    /// two stores and a register on every call) and calls nothing but the
    /// inner allocator: an inner allocator that re-enters there is counted
    /// exactly, but not here.
    pub fn reentrant_calls(&self) -> u64 {
        self.reentered.load(Relaxed)
    }

    /// Sends every thread's calls through the slow path while `on`, at no
    /// cost to the fast path: the key its one compare reads stops matching
    /// any thread's fast word. For a hook that must see every call (the
    /// sampling profiler of issue 13): place it in the slow path only.
    #[allow(dead_code)] // the profiler's switch; not used by anything else yet
    pub(crate) fn divert(&self, on: bool) {
        let key = if on { self.id() | DIVERTED } else { self.id() };
        self.key.store(key, Relaxed);
    }

    /// How much memory this instance has mapped for counter slots: the
    /// number of blocks of 64 slots, and their size in bytes.
    pub fn slot_memory(&self) -> (usize, usize) {
        self.slots.mapped()
    }

    /// This thread's state and slot, claiming a slot if the thread has none
    /// (also on a thread that is exiting, or whose earlier attempt failed).
    pub(crate) fn own_slot(&self, what: &str) -> (&ThreadState, &Slot) {
        let Some(state) = thread::current() else {
            panic!("heapprobe: {what} called while this thread's thread-locals are being destroyed");
        };
        // SAFETY: `current` returns this thread's live thread-local.
        let state = unsafe { &*state };
        let instance = state.instance.get();
        if instance == self.id() {
            // SAFETY: bound to this instance, so `slot` is the thread's live slot.
            return (state, unsafe { &*state.slot.get() });
        }
        if !matches!(instance, UNBOUND | EXITED | NO_SLOT) {
            panic!(
                "heapprobe: {what} on a Heapprobe instance this thread is not counted by: its calls are counted \
                 per thread by the first instance it called (at {instance:#x}), not this one ({:#x})",
                self.id()
            );
        }
        match self.bind(state) {
            Some(slot) => {
                state.fast.set(thread::fast_value(state));
                (state, slot)
            }
            None => panic!("heapprobe: {what} needs a counter slot, and the system refused to map memory for one"),
        }
    }

    /// Claims a free slot for the calling thread, mapping a new block if
    /// all are taken. Allocation-free: the only calls out are `mmap`,
    /// `pthread_key_create` and `pthread_setspecific`.
    #[cold]
    #[inline(never)]
    fn bind(&self, state: &ThreadState) -> Option<&Slot> {
        let key = self.exit_key()?;
        let slot = self.slots.claim()?;
        slot.start_owner();
        #[cfg(unix)]
        {
            // SAFETY: `key` is a live key created by `exit_key`; the value is
            // the address of a slot, which is never unmapped.
            if unsafe {
                libc::pthread_setspecific(key as libc::pthread_key_t, slot as *const Slot as *const libc::c_void)
            } != 0
            {
                slot.release();
                return None;
            }
        }
        #[cfg(not(unix))]
        let _ = key;
        state.instance.set(self.id());
        state.slot.set(slot);
        // The first bound thread switches the fast path on (unless diverted).
        let _ = self.key.compare_exchange(0, self.id(), Relaxed, Relaxed);
        // `HEAPPROBE_SUMMARY=1`: the first instance to bind a thread (the
        // `#[global_allocator]`, which std's runtime uses before `main`)
        // prints the heap summary at exit. One relaxed load once the
        // environment has been read.
        #[cfg(unix)]
        // SAFETY: a `Heapprobe` that binds threads is a `static` (slots
        // already rely on it), so it is valid until the process exits.
        unsafe {
            crate::summary::arm_from_env(self)
        };
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
    /// slot (and new blocks are mapped as threads come).
    #[cfg(not(unix))]
    fn exit_key(&self) -> Option<usize> {
        Some(0)
    }

    /// The calling thread's state, if it may take this instance's fast path.
    #[inline(always)]
    fn fast_state(&self) -> Option<&ThreadState> {
        // SAFETY: `current` returns this thread's live thread-local.
        let state = unsafe { &*thread::current()? };
        (state.fast.get() == self.key.load(Relaxed)).then_some(state)
    }

    /// Enters the slow path: marks the thread busy (unless the call is
    /// re-entrant, which it counts) and finds its slot, binding one on the
    /// thread's first call.
    #[inline(always)]
    fn enter_slow(&self) -> Slow<'_> {
        let Some(state) = thread::current() else {
            return Slow { state: None, reentrant: false, slot: None };
        };
        // SAFETY: `current` returns this thread's live thread-local.
        let state = unsafe { &*state };
        let prev = state.fast.get();
        let reentrant = prev & BUSY != 0;
        state.fast.set(prev | BUSY);
        if reentrant {
            self.reentered.fetch_add(1, Relaxed);
        }
        let slot = match state.instance.get() {
            // SAFETY: bound to this instance, so `slot` is the thread's live slot.
            instance if instance == self.id() => Some(unsafe { &*state.slot.get() }),
            UNBOUND => self.bind(state).or_else(|| {
                state.instance.set(NO_SLOT);
                None
            }),
            // Exiting, no memory for a slot, or counted by another instance.
            _ => None,
        };
        Slow { state: Some(state), reentrant, slot }
    }

    /// Leaves the slow path: the outermost call restores the fast word.
    #[inline(always)]
    fn leave_slow(&self, slow: &Slow<'_>) {
        if let (Some(state), false) = (slow.state, slow.reentrant) {
            state.fast.set(thread::fast_value(state));
        }
    }

    /// Publishes the slot's net to the instance's global net and peak,
    /// refills its budget and marks its high (see [`Slot::mark`]). Owner only.
    ///
    /// A slot publishes when it has freed [`GLOBAL_PEAK_GRANULE`] bytes since
    /// it last did (the budget, spent by frees and shrinks), and when its net
    /// reaches a new high that far above what it published (growth is seen
    /// at new highs only, which the hot path detects anyway: the mark here
    /// restarts the high at the published net, so any rise above it is a new
    /// high). So the published net is always within the granule of the net.
    #[cold]
    #[inline(never)]
    fn publish(&self, slot: &Slot) {
        slot.mark();
        let net = slot.net();
        let pending = net.wrapping_sub(slot.published.load(Relaxed));
        slot.published.store(net, Relaxed);
        slot.budget.set(GLOBAL_PEAK_GRANULE);
        let global = self.global_net.fetch_add(pending, Relaxed).wrapping_add(pending);
        if pending > 0 {
            self.global_peak.fetch_max(global, Relaxed);
        }
    }

    /// [`publish`](Self::publish), then returns `ptr`: a tail call from the
    /// hot path, so that nothing must be kept in registers across it.
    #[cold]
    #[inline(never)]
    fn publish_returning(&self, slot: &Slot, ptr: *mut u8) -> *mut u8 {
        self.publish(slot);
        ptr
    }

    /// An allocation took the slot's net above its high: the high moves up
    /// to the net (headroom 0), and the net is published if it is now a
    /// granule above what was. A tail call from the hot path, like
    /// [`publish_returning`](Self::publish_returning).
    #[cold]
    #[inline(never)]
    fn new_high(&self, slot: &Slot, ptr: *mut u8) -> *mut u8 {
        slot.at_high();
        if slot.net().wrapping_sub(slot.published.load(Relaxed)) >= GLOBAL_PEAK_GRANULE {
            self.publish(slot);
        }
        ptr
    }

    /// Adds `delta` to the global net directly (threads without a slot).
    fn shared_net(&self, delta: i64) {
        let global = self.global_net.fetch_add(delta, Relaxed).wrapping_add(delta);
        if delta > 0 {
            self.global_peak.fetch_max(global, Relaxed);
        }
    }

    /// Counts a call for which the inner allocator returned null.
    #[cold]
    #[inline(never)]
    fn failed(&self, slot: Option<&Slot>, size: usize, align: usize) -> *mut u8 {
        match slot {
            Some(slot) => slot.tally.failed(Writer::Owner),
            None => self.overflow.failed(Writer::Shared),
        }
        probes::alloc_failed(size as u64, align as u64);
        core::ptr::null_mut()
    }

    /// Counts an `alloc` or `alloc_zeroed` that returned `ptr`, fires its
    /// probes (`locked`: a measured scope is open) and returns `ptr`. The
    /// slot, if any, is the calling thread's own.
    #[inline(always)]
    fn count_alloc(&self, slot: Option<&Slot>, locked: bool, ptr: *mut u8, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        if ptr.is_null() {
            return self.failed(slot, size, align);
        }
        // The profiler's hook (issue 13) goes here. Cheapest: none at all
        // on the fast path; `divert(true)` sends every call to the slow
        // path (`alloc_slow`, `dealloc_slow`, `realloc_slow`), where a hook
        // costs nothing while the profiler is off. A flag tested here and
        // in `dealloc` instead, measured per alloc+free pair (callgrind):
        // +6 instructions as a field of `self` whose cold path is a tail
        // call doing the rest (1.26x System: over issue 13's 1.25x), +8 as
        // a `static` of this crate (a GOT load), +18 when the cold path is
        // a call the hot path returns from (a stack frame).
        probes::alloc(ptr as u64, size as u64, align as u64);
        if locked {
            probes::alloc_locked(ptr as u64, size as u64, align as u64);
        }
        let Some(slot) = slot else {
            self.overflow.allocated(size, Writer::Shared);
            self.shared_net(size as i64);
            return ptr;
        };
        // The histogram last: by then the size is needed nowhere else.
        slot.tally.allocated_bytes(size, Writer::Owner);
        if slot.grew(size as i64) {
            slot.tally.allocated_size(size, Writer::Owner);
            return ptr;
        }
        // A new high (every allocation of a growing phase): inline, and a
        // branch rather than a select, so the common case pays nothing more.
        slot.at_high();
        slot.tally.allocated_size(size, Writer::Owner);
        if slot.net().wrapping_sub(slot.published.load(Relaxed)) >= GLOBAL_PEAK_GRANULE {
            return self.publish_returning(slot, ptr);
        }
        ptr
    }

    /// Counts a `dealloc` and fires its probes. Returns true if the slot
    /// must now [`publish`](Self::publish) (left to the caller, so that the
    /// hot path's inner call can stay a tail call).
    #[inline(always)]
    fn count_dealloc(&self, slot: Option<&Slot>, locked: bool, ptr: *mut u8, layout: Layout) -> bool {
        let (size, align) = (layout.size(), layout.align());
        // The profiler's hook (issue 13) goes here: see `count_alloc`.
        probes::dealloc(ptr as u64, size as u64, align as u64);
        if locked {
            probes::dealloc_locked(ptr as u64, size as u64, align as u64);
        }
        let Some(slot) = slot else {
            self.overflow.deallocated(size, Writer::Shared);
            self.shared_net((size as i64).wrapping_neg());
            return false;
        };
        slot.tally.deallocated(size, Writer::Owner);
        slot.shrank(size as i64);
        !slot.spend(size as i64)
    }

    /// Counts a `realloc` of `ptr` (with `layout`) to `new_size` that
    /// returned `new_ptr`, fires its probes and returns `new_ptr`.
    #[inline(always)]
    fn count_realloc(
        &self,
        slot: Option<&Slot>,
        locked: bool,
        ptr: *mut u8,
        new_ptr: *mut u8,
        layout: Layout,
        new_size: usize,
    ) -> *mut u8 {
        let (old_size, align) = (layout.size(), layout.align());
        if new_ptr.is_null() {
            return self.failed(slot, new_size, align);
        }
        // The profiler's hook (issue 13) goes here: see `count_alloc`.
        probes::realloc(ptr as u64, new_ptr as u64, old_size as u64, new_size as u64, align as u64);
        if locked {
            probes::realloc_locked(ptr as u64, new_ptr as u64, old_size as u64, new_size as u64, align as u64);
        }
        let delta = (new_size as i64).wrapping_sub(old_size as i64);
        let Some(slot) = slot else {
            self.overflow.reallocated(old_size, new_size, new_ptr != ptr, Writer::Shared);
            self.shared_net(delta);
            return new_ptr;
        };
        slot.tally.reallocated(old_size, new_size, new_ptr != ptr, Writer::Owner);
        if delta > 0 {
            if !slot.grew(delta) {
                return self.new_high(slot, new_ptr);
            }
        } else {
            slot.shrank(delta.wrapping_neg());
            if !slot.spend(delta.wrapping_neg()) {
                return self.publish_returning(slot, new_ptr);
            }
        }
        new_ptr
    }
}

impl<A: GlobalAlloc> Heapprobe<A> {
    /// `alloc` or `alloc_zeroed` off the fast path.
    #[cold]
    #[inline(never)]
    unsafe fn alloc_slow(layout: Layout, zeroed: bool, this: &Self) -> *mut u8 {
        let slow = this.enter_slow();
        // SAFETY: forwarded with the caller's layout, which meets the
        // contract of `alloc` (and `alloc_zeroed`).
        let ptr = unsafe {
            if zeroed {
                this.inner.alloc_zeroed(layout)
            } else {
                this.inner.alloc(layout)
            }
        };
        let ptr = this.count_alloc(slow.slot, slow.in_scope(), ptr, layout);
        this.leave_slow(&slow);
        ptr
    }

    /// `dealloc` off the fast path.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_slow(ptr: *mut u8, layout: Layout, this: &Self) {
        let slow = this.enter_slow();
        if this.count_dealloc(slow.slot, slow.in_scope(), ptr, layout) {
            if let Some(slot) = slow.slot {
                this.publish(slot);
            }
        }
        this.leave_slow(&slow);
        // SAFETY: the caller guarantees `ptr` came from this allocator (and so
        // from `inner`) with `layout`.
        unsafe { this.inner.dealloc(ptr, layout) }
    }

    /// The end of a fast-path `dealloc` whose slot must publish.
    #[cold]
    #[inline(never)]
    unsafe fn publish_and_dealloc(ptr: *mut u8, layout: Layout, slot: &Slot, this: &Self) {
        this.publish(slot);
        // SAFETY: as in `dealloc`, whose arguments these are.
        unsafe { this.inner.dealloc(ptr, layout) }
    }

    /// `realloc` off the fast path.
    #[cold]
    #[inline(never)]
    unsafe fn realloc_slow(ptr: *mut u8, layout: Layout, new_size: usize, this: &Self) -> *mut u8 {
        let slow = this.enter_slow();
        // SAFETY: the caller guarantees `realloc`'s contract for `ptr`,
        // `layout` and `new_size`; we forward them unchanged.
        let new_ptr = unsafe { this.inner.realloc(ptr, layout, new_size) };
        let new_ptr = this.count_realloc(slow.slot, slow.in_scope(), ptr, new_ptr, layout, new_size);
        this.leave_slow(&slow);
        new_ptr
    }
}

/// One slow-path call's view of its thread.
struct Slow<'a> {
    state: Option<&'a ThreadState>,
    /// The thread was already inside an allocator call (counted).
    reentrant: bool,
    /// The thread's slot in this instance, if it has one.
    slot: Option<&'a Slot>,
}

impl Slow<'_> {
    fn in_scope(&self) -> bool {
        self.slot.is_some_and(|s| s.scope_depth.load(Relaxed) != 0)
    }
}

// SAFETY: every method forwards to the same method of `inner` with the
// caller's arguments unchanged and returns its result unchanged, so `inner`'s
// guarantees are ours. The bookkeeping around it never allocates, never
// panics (wrapping arithmetic, checked indices, no unwrap) and never blocks.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Heapprobe<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(state) = self.fast_state() else {
            // SAFETY: the caller's contract, forwarded.
            return unsafe { Self::alloc_slow(layout, false, self) };
        };
        // SAFETY: forwarded with the caller's layout, which meets `alloc`'s contract.
        let ptr = unsafe { self.inner.alloc(layout) };
        // SAFETY: the fast word matched this instance, so `slot` is the
        // thread's live slot in it (`ThreadState::fast`'s invariant).
        let slot = unsafe { &*state.slot.get() };
        self.count_alloc(Some(slot), false, ptr, layout)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let Some(state) = self.fast_state() else {
            // SAFETY: the caller's contract, forwarded.
            return unsafe { Self::alloc_slow(layout, true, self) };
        };
        // SAFETY: forwarded with the caller's layout, which meets `alloc_zeroed`'s contract.
        let ptr = unsafe { self.inner.alloc_zeroed(layout) };
        // SAFETY: as in `alloc`.
        let slot = unsafe { &*state.slot.get() };
        self.count_alloc(Some(slot), false, ptr, layout)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Bookkeeping first, so that the call to `inner` is a tail call.
        let Some(state) = self.fast_state() else {
            // SAFETY: the caller's contract, forwarded.
            return unsafe { Self::dealloc_slow(ptr, layout, self) };
        };
        // SAFETY: as in `alloc`.
        let slot = unsafe { &*state.slot.get() };
        if self.count_dealloc(Some(slot), false, ptr, layout) {
            // SAFETY: the caller's contract, forwarded.
            return unsafe { Self::publish_and_dealloc(ptr, layout, slot, self) };
        }
        // SAFETY: the caller guarantees `ptr` came from this allocator (and so
        // from `inner`) with `layout`.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(state) = self.fast_state() else {
            // SAFETY: the caller's contract, forwarded.
            return unsafe { Self::realloc_slow(ptr, layout, new_size, self) };
        };
        // SAFETY: the caller guarantees `realloc`'s contract for `ptr`,
        // `layout` and `new_size`; we forward them unchanged.
        let new_ptr = unsafe { self.inner.realloc(ptr, layout, new_size) };
        // SAFETY: as in `alloc`.
        let slot = unsafe { &*state.slot.get() };
        self.count_realloc(Some(slot), false, ptr, new_ptr, layout, new_size)
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

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicBool;
    use std::alloc::System;

    /// When set, the next inner `alloc` allocates and frees 8 bytes through
    /// [`PROBE`] itself: a re-entrant call, which only the slow path sees.
    static REENTER: AtomicBool = AtomicBool::new(false);

    struct Reentering;

    // SAFETY: forwards to System; the re-entrant calls are a valid alloc and
    // dealloc pair through `PROBE`, which also forwards to System.
    unsafe impl GlobalAlloc for Reentering {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if REENTER.swap(false, Relaxed) {
                let l = Layout::new::<u64>();
                // SAFETY: a valid layout, freed with the same layout.
                unsafe { PROBE.dealloc(PROBE.alloc(l), l) };
            }
            // SAFETY: caller's contract, forwarded.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: caller's contract, forwarded.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    static PROBE: Heapprobe<Reentering> = Heapprobe::new(Reentering);

    #[test]
    fn divert_sends_calls_through_the_slow_path_and_counts_them_the_same() {
        std::thread::spawn(|| {
            let l = Layout::from_size_align(48, 8).unwrap();
            let pair = || {
                REENTER.store(true, Relaxed);
                // SAFETY: a valid layout, freed with the same layout.
                unsafe { PROBE.dealloc(PROBE.alloc(l), l) };
            };
            pair(); // binds this thread (slow path): re-entry seen
            assert_eq!(PROBE.reentrant_calls(), 2);
            let before = PROBE.thread_stats();
            pair(); // fast path: the re-entrant pair is counted, not flagged
            assert_eq!(PROBE.reentrant_calls(), 2);
            PROBE.divert(true);
            pair(); // diverted: slow path, flagged
            assert_eq!(PROBE.reentrant_calls(), 4);
            PROBE.divert(false);
            pair(); // fast again
            assert_eq!(PROBE.reentrant_calls(), 4);
            let d = PROBE.thread_stats() - before;
            assert_eq!((d.allocations, d.deallocations, d.bytes_allocated), (6, 6, 3 * (48 + 8)));
            assert_eq!((d.current, PROBE.thread_stats().peak - before.peak), (0, 0));
        })
        .join()
        .unwrap();
    }
}
