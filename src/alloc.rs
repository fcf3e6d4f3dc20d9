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
//!
//! The in-process profiler (`src/profile`) costs the idle fast path one
//! compare, on allocations: the slot's cumulative allocated bytes against
//! the slot's `sample_at`, which is `u64::MAX` while the profiler is off.
//! While it is on, `sample_at` is where the thread's next sample falls, and
//! the allocation that passes it calls the profiler out of line
//! ([`Heapprobe::alloc_crossed`]). Allocations are never diverted. Frees
//! and reallocs are: while the profiler is on, every registered instance's
//! `free_key` is diverted ([`divert_all`]), so `dealloc` and `realloc`
//! miss their one compare; a thread that would otherwise have matched
//! stays on the fast path after one more compare and a check of the
//! profiler's free filter, in the branch that the miss takes. Every other
//! call takes the slow path, which runs the profiler's hooks.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};

use crate::probes;
use crate::stats::Stats;
use crate::tally::{Slot, Slots, Tally, Writer};
use crate::thread::{self, ThreadState, BUSY, EXITED, NO_SLOT, UNBOUND};

/// The bit of [`Switch::free_key`] that diverts frees and reallocs.
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
    /// What a thread's fast word must equal for the fast path of `alloc`
    /// and `alloc_zeroed`: this instance's address (set when it binds its
    /// first thread; 0 before, which no fast word equals). Read by every
    /// allocation, written once.
    key: AtomicUsize,
    /// The key of `dealloc` and `realloc`, and the slots.
    switch: Switch,
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
            switch: Switch { free_key: AtomicUsize::new(0), slots: Slots::new() },
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
        for slot in self.switch.slots.iter() {
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
    /// `*_locked` probes fire), or inside the profiler's sampled work (stack
    /// capture and its tables). All of heapprobe's own work that calls out
    /// of line runs there, so this is 0 unless the inner allocator allocates
    /// through the global allocator inside a measured scope; the test suite
    /// asserts it stays 0, with a positive control.
    ///
    /// Other calls take the fast path (with, while the profiler is on, its
    /// countdown and free check), which marks nothing around the inner call
    /// (that would cost two stores and a register on every call) and calls
    /// nothing but the inner allocator: an inner allocator that re-enters
    /// there is counted exactly, but not here.
    pub fn reentrant_calls(&self) -> u64 {
        self.reentered.load(Relaxed)
    }

    /// Diverts every thread's frees and reallocs while `on`, at no cost to
    /// the fast path: the key their one compare reads stops matching any
    /// thread's fast word. The profiler diverts every registered instance
    /// at once with [`divert_all`]; this one is for tests.
    #[cfg(test)]
    pub(crate) fn divert(&self, on: bool) {
        set_diverted(&self.switch.free_key, on);
    }

    /// Whether this instance's frees and reallocs are diverted now (the
    /// profiler is on, or was when the instance bound its first thread).
    /// For tests of the profiler's switch; not a stable API.
    #[doc(hidden)]
    pub fn diverted(&self) -> bool {
        self.switch.free_key.load(SeqCst) & DIVERTED != 0
    }

    /// How much memory this instance has mapped for counter slots: the
    /// number of blocks of 64 slots, and their size in bytes.
    pub fn slot_memory(&self) -> (usize, usize) {
        self.switch.slots.mapped()
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
        let slot = self.switch.slots.claim()?;
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
        // The first bound thread switches the fast path on, frees and
        // reallocs diverted while the profiler is on.
        if self.key.load(Relaxed) == 0 {
            self.enable_fast_path();
        }
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

    /// Registers the instance for [`divert_all`] and [`resample_all`] and
    /// sets its keys to its address, `free_key` with [`DIVERTED`] set while
    /// the profiler is on. An instance that cannot be registered (the
    /// registry is full) keeps keys of 0: every call takes the slow path,
    /// where the profiler sees it.
    ///
    /// Race-free with [`divert_all`]: the instance is registered before its
    /// free key is set, so a change of the switch after the key is set
    /// reaches it; a change between reading the switch and setting the key
    /// is seen by the second read, which sets it again. Its slots need no
    /// such care: each starts at "decide again" (`Slot::start_owner`).
    #[cold]
    #[inline(never)]
    fn enable_fast_path(&self) {
        // SAFETY: a `Heapprobe` that binds threads is never dropped while
        // registered: `Drop` unregisters it (and a `static` never drops).
        if !unsafe { register(&self.switch) } {
            return;
        }
        loop {
            let on = DIVERT_ALL.load(SeqCst);
            self.switch.free_key.swap(if on { self.id() | DIVERTED } else { self.id() }, SeqCst);
            if DIVERT_ALL.load(SeqCst) == on {
                break;
            }
        }
        self.key.store(self.id(), SeqCst);
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

    /// The calling thread's state, if it may take this instance's fast
    /// path for an allocation.
    #[inline(always)]
    fn fast_state(&self) -> Option<&ThreadState> {
        // SAFETY: `current` returns this thread's live thread-local.
        let state = unsafe { &*thread::current()? };
        (state.fast.get() == self.key.load(Relaxed)).then_some(state)
    }

    /// For a free or a realloc: the calling thread's state, and whether the
    /// call is diverted (the profiler is on), if the thread may take this
    /// instance's fast path (bound to it, no measured scope open, not inside
    /// an allocator call). `None`: the slow path.
    #[inline(always)]
    fn free_state(&self) -> Option<(&ThreadState, bool)> {
        // SAFETY: `current` returns this thread's live thread-local.
        let state = unsafe { &*thread::current()? };
        let key = self.switch.free_key.load(Relaxed);
        if state.fast.get() == key {
            return Some((state, false));
        }
        // Read again rather than kept in a register from the compare
        // above, which can then read it from memory: one instruction less
        // on the fast path.
        // SAFETY: `as_ptr` of this thread's own `Cell`, valid and aligned;
        // no reference to its contents is live.
        let fast = unsafe { core::ptr::read_volatile(state.fast.as_ptr()) };
        (fast | DIVERTED == key).then_some((state, true))
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
    /// slot, if any, is the calling thread's own. `sample`: the fast path,
    /// which runs the profiler's countdown.
    #[inline(always)]
    fn count_alloc(&self, slot: Option<&Slot>, locked: bool, sample: bool, ptr: *mut u8, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        if ptr.is_null() {
            return self.failed(slot, size, align);
        }
        probes::alloc(ptr as u64, size as u64, align as u64);
        if locked {
            probes::alloc_locked(ptr as u64, size as u64, align as u64);
        }
        let Some(slot) = slot else {
            self.overflow.allocated(size, Writer::Shared);
            self.shared_net(size as i64);
            return ptr;
        };
        slot.tally.allocated_bytes(size, Writer::Owner);
        // The profiler's countdown (issue 13): one compare, against
        // `u64::MAX` while the profiler is off. Measured alternatives per
        // alloc+free pair (callgrind): a flag field of `self` tested here
        // and in `dealloc`, whose cold path is a tail call, +6; the same as
        // a `static` (a GOT load) +8; a cold call the hot path returns from
        // +18; diverting every call off the fast path 0 while off, but +38
        // while on.
        if sample && slot.tally.bytes_allocated() > slot.sample_at.load(Relaxed) {
            return self.alloc_crossed(slot, ptr, size);
        }
        self.count_alloc_rest(slot, ptr, size)
    }

    /// The end of [`count_alloc`](Self::count_alloc) for a thread's own
    /// slot, after the bytes: the peak and the histogram.
    #[inline(always)]
    fn count_alloc_rest(&self, slot: &Slot, ptr: *mut u8, size: usize) -> *mut u8 {
        // The histogram last: by then the size is needed nowhere else.
        if slot.grew(size as i64) {
            slot.tally.allocated_size(size, Writer::Owner);
            return ptr;
        }
        // A new high (every allocation of a growing phase): inline, and a
        // branch rather than a select, so the common case pays nothing more.
        // Laid out after the common case, which then ends in the return
        // rather than a jump to it: one instruction less (one more here).
        unlikely();
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
    /// `sample`: the fast path, which runs the profiler's countdown.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn count_realloc(
        &self,
        slot: Option<&Slot>,
        locked: bool,
        sample: bool,
        ptr: *mut u8,
        new_ptr: *mut u8,
        layout: Layout,
        new_size: usize,
    ) -> *mut u8 {
        let (old_size, align) = (layout.size(), layout.align());
        if new_ptr.is_null() {
            return self.failed(slot, new_size, align);
        }
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
            // The profiler's countdown: see `count_alloc`.
            if sample && slot.tally.bytes_allocated() > slot.sample_at.load(Relaxed) {
                return self.realloc_crossed(slot, ptr, new_ptr, old_size, new_size);
            }
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

/// Marks the branch that calls it as the unlikely one, for the layout of
/// the fast path (`#[cold]` on a function inlined into it).
#[cold]
#[inline(always)]
fn unlikely() {}

/// Runs the profiler's sampled work `f` for a fast-path call, with the
/// thread marked inside an allocator call: an allocation `f` made would be
/// re-entrant, and counted by [`Heapprobe::reentrant_calls`].
#[cold]
#[inline(never)]
fn profiler_busy(state: &ThreadState, f: impl FnOnce()) {
    let fast = state.fast.get();
    state.fast.set(fast | BUSY);
    f();
    state.fast.set(fast);
}

impl<A> Heapprobe<A> {
    /// A fast-path allocation took the slot's allocated bytes past the
    /// profiler's next sample (`Slot::sample_at`): the profiler decides and,
    /// if sampled, records it with the thread marked busy; then the rest of
    /// the counting. A tail call from the hot path.
    #[cold]
    #[inline(never)]
    fn alloc_crossed(&self, slot: &Slot, ptr: *mut u8, size: usize) -> *mut u8 {
        if let Some(state) = thread::current() {
            // SAFETY: `current` returns this thread's live thread-local.
            let state = unsafe { &*state };
            profiler_busy(state, || {
                let total = slot.tally.bytes_allocated();
                if let Some(rate) = crate::profile::hooks::slot_crossed(&slot.sample_at, total, size as u64) {
                    crate::profile::hooks::fast_sampled_alloc(self, ptr, size, rate);
                }
            });
        }
        self.count_alloc_rest(slot, ptr, size)
    }

    /// A fast-path realloc's growth took the slot's allocated bytes past
    /// the profiler's next sample: as [`alloc_crossed`](Self::alloc_crossed),
    /// then the rest of the counting of a growth.
    #[cold]
    #[inline(never)]
    fn realloc_crossed(
        &self,
        slot: &Slot,
        ptr: *mut u8,
        new_ptr: *mut u8,
        old_size: usize,
        new_size: usize,
    ) -> *mut u8 {
        if let Some(state) = thread::current() {
            // SAFETY: `current` returns this thread's live thread-local.
            let state = unsafe { &*state };
            profiler_busy(state, || {
                let (total, growth) = (slot.tally.bytes_allocated(), new_size.saturating_sub(old_size));
                if let Some(rate) = crate::profile::hooks::slot_crossed(&slot.sample_at, total, growth as u64) {
                    crate::profile::hooks::fast_sampled_realloc(self, ptr, new_ptr, old_size, new_size, Some(rate));
                }
            });
        }
        let delta = (new_size as i64).wrapping_sub(old_size as i64);
        if !slot.grew(delta) {
            return self.new_high(slot, new_ptr);
        }
        new_ptr
    }
}

impl<A: GlobalAlloc> Heapprobe<A> {
    /// A diverted fast-path `dealloc` of a block the profiler may track: it
    /// leaves the profiler's tables before the inner allocator can reuse it.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_sampled(ptr: *mut u8, layout: Layout, this: &Self, state: &ThreadState) {
        profiler_busy(state, || crate::profile::hooks::freed(ptr as usize));
        // SAFETY: the thread matched the fast path's key but for the
        // diversion bit (`free_state`), so `slot` is its live slot here.
        let slot = unsafe { &*state.slot.get() };
        if this.count_dealloc(Some(slot), false, ptr, layout) {
            this.publish(slot);
        }
        // SAFETY: the caller guarantees `ptr` came from this allocator (and so
        // from `inner`) with `layout`.
        unsafe { this.inner.dealloc(ptr, layout) }
    }

    /// A diverted fast-path `realloc` of a block the profiler may track: the
    /// block leaves the profiler's tables before the inner call, and goes
    /// back (moved, and its growth perhaps sampled) after it, null included.
    #[cold]
    #[inline(never)]
    unsafe fn realloc_sampled(
        ptr: *mut u8,
        layout: Layout,
        new_size: usize,
        this: &Self,
        state: &ThreadState,
    ) -> *mut u8 {
        profiler_busy(state, || crate::profile::hooks::detach(ptr as usize));
        // SAFETY: the caller guarantees `realloc`'s contract for `ptr`,
        // `layout` and `new_size`; we forward them unchanged.
        let new_ptr = unsafe { this.inner.realloc(ptr, layout, new_size) };
        // SAFETY: as in `dealloc_sampled`.
        let slot = unsafe { &*state.slot.get() };
        let old_size = layout.size();
        let growth = new_size.saturating_sub(old_size) as u64;
        profiler_busy(state, || {
            // The countdown of `count_realloc`, done here before the counting.
            let total = slot.tally.bytes_allocated().wrapping_add(growth);
            let rate = match new_ptr.is_null() || growth == 0 || total <= slot.sample_at.load(Relaxed) {
                true => None,
                false => crate::profile::hooks::slot_crossed(&slot.sample_at, total, growth),
            };
            crate::profile::hooks::fast_sampled_realloc(this, ptr, new_ptr, old_size, new_size, rate);
        });
        this.count_realloc(Some(slot), false, false, ptr, new_ptr, layout, new_size)
    }

    /// `alloc` or `alloc_zeroed` on the slow path.
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
        // The profiler's hook (src/profile), null included.
        if crate::profile::active() {
            crate::profile::hooks::on_alloc(this, ptr, layout.size());
        }
        let ptr = this.count_alloc(slow.slot, slow.in_scope(), false, ptr, layout);
        // The profiler's hook sampled these bytes with the thread's own
        // countdown: the fast path's waits (`slot_defer`).
        if let (Some(slot), false) = (slow.slot, ptr.is_null()) {
            crate::profile::hooks::slot_defer(&slot.sample_at, layout.size() as u64);
        }
        this.leave_slow(&slow);
        ptr
    }

    /// `dealloc` on the slow path.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_slow(ptr: *mut u8, layout: Layout, this: &Self) {
        let slow = this.enter_slow();
        // The profiler's hook (src/profile), before the block can be reused:
        // a sampled block leaves its tables before another thread can be
        // handed its address.
        if crate::profile::active() {
            crate::profile::hooks::on_dealloc(ptr);
        }
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

    /// `realloc` on the slow path.
    #[cold]
    #[inline(never)]
    unsafe fn realloc_slow(ptr: *mut u8, layout: Layout, new_size: usize, this: &Self) -> *mut u8 {
        let slow = this.enter_slow();
        // The profiler's hooks (src/profile): the old block leaves its
        // tables before it can be reused, and the second half runs after,
        // null included.
        let profiling = crate::profile::active();
        if profiling {
            crate::profile::hooks::on_realloc_start(ptr);
        }
        // SAFETY: the caller guarantees `realloc`'s contract for `ptr`,
        // `layout` and `new_size`; we forward them unchanged.
        let new_ptr = unsafe { this.inner.realloc(ptr, layout, new_size) };
        if profiling {
            crate::profile::hooks::on_realloc(this, ptr, new_ptr, layout.size(), new_size);
        }
        let new_ptr = this.count_realloc(slow.slot, slow.in_scope(), false, ptr, new_ptr, layout, new_size);
        // As in `alloc_slow`.
        if let (Some(slot), false) = (slow.slot, new_ptr.is_null()) {
            crate::profile::hooks::slot_defer(&slot.sample_at, new_size.saturating_sub(layout.size()) as u64);
        }
        this.leave_slow(&slow);
        new_ptr
    }
}

impl<A> Drop for Heapprobe<A> {
    /// Leaves the profiler's registry (a `static` never drops).
    fn drop(&mut self) {
        unregister(&self.switch);
    }
}

/// What the profiler's switch reaches of an instance, whatever its inner
/// allocator: the key of `dealloc` and `realloc`, and the slots, whose
/// countdowns it resets.
pub(crate) struct Switch {
    /// What a thread's fast word must equal for the fast path of `dealloc`
    /// and `realloc`: `Heapprobe::key`, with [`DIVERTED`] set while the
    /// profiler is on, which sends a thread that would have matched through
    /// the profiler's free check (`Heapprobe::free_state`). Read by every
    /// free, written when the profiler starts or stops.
    free_key: AtomicUsize,
    /// Per-thread counters, in blocks mapped on demand.
    slots: Slots,
}

/// How many instances [`divert_all`] can reach. Others never take the fast
/// path (their keys stay 0), so the profiler still sees all their calls.
const REGISTRY: usize = 64;

/// The instances that took the fast path, for [`divert_all`] and [`resample_all`].
static KEYS: [AtomicPtr<Switch>; REGISTRY] = [const { AtomicPtr::new(core::ptr::null_mut()) }; REGISTRY];
/// Whether every registered instance is diverted (written under [`SWITCH`]).
static DIVERT_ALL: AtomicBool = AtomicBool::new(false);
/// Serialises [`divert_all`] and [`unregister`]. Never taken on the
/// allocator path: the threads that hold it are switching the profiler on
/// or off (outside any allocator call), and allocate nothing while they do.
static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`SWITCH`], held across a `fork()` (`profile/fork.rs`).
pub(crate) type SwitchGuard = std::sync::MutexGuard<'static, ()>;

pub(crate) fn lock_switch() -> SwitchGuard {
    SWITCH.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn set_diverted(key: &AtomicUsize, on: bool) {
    if on {
        key.fetch_or(DIVERTED, SeqCst);
    } else {
        key.fetch_and(!DIVERTED, SeqCst);
    }
}

/// Runs `change` (which returns whether the profiler is now on) and diverts
/// or restores every registered `Heapprobe` to match, as one step: calls
/// are serialised, so the last one decides, and an instance that registers
/// meanwhile reads the switch after registering ([`Heapprobe::enable_fast_path`]).
pub(crate) fn divert_all(change: impl FnOnce() -> bool) {
    let _switch = lock_switch();
    let on = change();
    if DIVERT_ALL.load(SeqCst) == on {
        return;
    }
    DIVERT_ALL.store(on, SeqCst);
    for entry in &KEYS {
        let switch = entry.load(SeqCst);
        if !switch.is_null() {
            // SAFETY: registered switches belong to live instances: `Drop`
            // unregisters under `SWITCH`, which this thread holds.
            set_diverted(unsafe { &(*switch).free_key }, on);
        }
    }
}

/// Resets every registered instance's slots to "decide again" (0), after
/// the global profiler started or stopped (a new `EPOCH`): each thread's
/// next fast-path allocation calls the profiler, which draws a new gap at
/// the new rate, or stops its countdown (`profile::hooks::slot_crossed`).
/// Slots claimed later start at 0 themselves (`Slot::start_owner`).
pub(crate) fn resample_all() {
    let _switch = lock_switch();
    for entry in &KEYS {
        let switch = entry.load(SeqCst);
        // SAFETY: as in `divert_all`.
        if let Some(switch) = unsafe { switch.as_ref() } {
            for slot in switch.slots.iter() {
                slot.sample_at.store(0, SeqCst);
            }
        }
    }
}

/// Whether every registered instance is diverted now.
#[allow(dead_code)] // used by tests of the profiler's switch
pub(crate) fn diverting() -> bool {
    DIVERT_ALL.load(SeqCst)
}

/// Adds `switch` to the registry (once); false if the registry is full.
/// Lock-free: it runs on the allocator path (a thread's first call).
///
/// # Safety
/// `switch` must stay valid until [`unregister`] removes it.
unsafe fn register(switch: &Switch) -> bool {
    let ptr = switch as *const Switch as *mut Switch;
    if KEYS.iter().any(|entry| entry.load(SeqCst) == ptr) {
        return true;
    }
    // Two threads binding the instance's first threads at once may both
    // add it: one listed twice is diverted twice, harmlessly.
    KEYS.iter().any(|entry| entry.compare_exchange(core::ptr::null_mut(), ptr, SeqCst, SeqCst).is_ok())
}

fn unregister(switch: &Switch) {
    let ptr = switch as *const Switch as *mut Switch;
    if !KEYS.iter().any(|entry| entry.load(SeqCst) == ptr) {
        return;
    }
    // A child forked meanwhile must not inherit `SWITCH` held.
    crate::profile::fork_register();
    let _switch = lock_switch();
    for entry in &KEYS {
        let _ = entry.compare_exchange(ptr, core::ptr::null_mut(), SeqCst, SeqCst);
    }
}

/// The instances in the registry (the exit profile: is there one here?).
#[cfg_attr(not(all(target_os = "linux", heapprobe_profiler)), allow(dead_code))]
pub(crate) fn registered() -> usize {
    KEYS.iter().filter(|entry| !entry.load(SeqCst).is_null()).count()
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
        // Before the inner call (which cannot change it: the slot of a
        // thread on the fast path changes only on the slow path), so that
        // the slot is what stays in a register across it, not the way to
        // the thread-local: one instruction less.
        // SAFETY: the fast word matched this instance, so `slot` is the
        // thread's live slot in it (`ThreadState::fast`'s invariant).
        let slot = unsafe { &*state.slot.get() };
        // SAFETY: forwarded with the caller's layout, which meets `alloc`'s contract.
        let ptr = unsafe { self.inner.alloc(layout) };
        self.count_alloc(Some(slot), false, true, ptr, layout)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let Some(state) = self.fast_state() else {
            // SAFETY: the caller's contract, forwarded.
            return unsafe { Self::alloc_slow(layout, true, self) };
        };
        // SAFETY: as in `alloc`.
        let slot = unsafe { &*state.slot.get() };
        // SAFETY: forwarded with the caller's layout, which meets `alloc_zeroed`'s contract.
        let ptr = unsafe { self.inner.alloc_zeroed(layout) };
        self.count_alloc(Some(slot), false, true, ptr, layout)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Bookkeeping first, so that the call to `inner` is a tail call.
        let Some((state, diverted)) = self.free_state() else {
            // SAFETY: the caller's contract, forwarded.
            return unsafe { Self::dealloc_slow(ptr, layout, self) };
        };
        // The profiler is on: a block it may track leaves its tables first.
        if diverted && crate::profile::hooks::free_due(ptr) {
            // SAFETY: the caller's contract, forwarded.
            return unsafe { Self::dealloc_sampled(ptr, layout, self, state) };
        }
        // SAFETY: the fast word matched this instance's free key, but for
        // the diversion bit: `slot` is the thread's live slot in it
        // (`ThreadState::fast`'s invariant).
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
        let Some((state, diverted)) = self.free_state() else {
            // SAFETY: the caller's contract, forwarded.
            return unsafe { Self::realloc_slow(ptr, layout, new_size, self) };
        };
        // As in `dealloc`.
        if diverted && crate::profile::hooks::free_due(ptr) {
            // SAFETY: the caller's contract, forwarded.
            return unsafe { Self::realloc_sampled(ptr, layout, new_size, self, state) };
        }
        // SAFETY: the caller guarantees `realloc`'s contract for `ptr`,
        // `layout` and `new_size`; we forward them unchanged.
        let new_ptr = unsafe { self.inner.realloc(ptr, layout, new_size) };
        // SAFETY: as in `dealloc`.
        let slot = unsafe { &*state.slot.get() };
        self.count_realloc(Some(slot), false, true, ptr, new_ptr, layout, new_size)
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
    fn divert_sends_calls_off_the_fast_path_and_counts_them_the_same() {
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
            assert!(PROBE.diverted());
            // Frees diverted (the profiler's free check on the fast path's
            // branch for diverted calls): counted, not flagged.
            pair();
            assert_eq!(PROBE.reentrant_calls(), 2);
            // Diverted inside a measured scope: the slow path, flagged.
            let ((), scoped) = PROBE.measure(pair);
            assert_eq!(PROBE.reentrant_calls(), 4);
            assert_eq!((scoped.allocations, scoped.deallocations, scoped.bytes_allocated), (2, 2, 48 + 8));
            PROBE.divert(false);
            assert!(!PROBE.diverted());
            pair(); // fast again
            assert_eq!(PROBE.reentrant_calls(), 4);
            let d = PROBE.thread_stats() - before;
            assert_eq!((d.allocations, d.deallocations, d.bytes_allocated), (8, 8, 4 * (48 + 8)));
            assert_eq!((d.current, PROBE.thread_stats().peak - before.peak), (0, 0));
        })
        .join()
        .unwrap();
    }

    static MARKED: Heapprobe<System> = Heapprobe::new(System);

    /// The fast path runs the profiler's sampled work with the thread marked
    /// inside an allocator call: an allocation made there is re-entrant and
    /// counted as such (positive control: the same call unmarked is not).
    #[test]
    fn profiler_busy_marks_the_thread() {
        std::thread::spawn(|| {
            let l = Layout::from_size_align(24, 8).unwrap();
            // SAFETY: a valid layout, freed with the same layout.
            let pair = || unsafe { MARKED.dealloc(MARKED.alloc(l), l) };
            pair(); // binds this thread
            let (state, _) = MARKED.own_slot("test");
            pair();
            assert_eq!(MARKED.reentrant_calls(), 0);
            profiler_busy(state, pair);
            assert_eq!(MARKED.reentrant_calls(), 2);
            assert_eq!(state.fast.get(), MARKED.id(), "the fast word is restored");
            pair();
            assert_eq!(MARKED.reentrant_calls(), 2);
            assert_eq!(MARKED.thread_stats().allocations, 4);
        })
        .join()
        .unwrap();
    }
}
