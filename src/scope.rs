//! Measured scopes: exact counts of one thread's calls while a closure runs.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::alloc::Heapprobe;
use crate::probes;
use crate::stats::Stats;
use crate::tally::Slot;
use crate::thread::{self, ThreadState};

/// Scope ids, for the `scope_begin` / `scope_end` probes. Starts at 1.
static NEXT_SCOPE_ID: AtomicU64 = AtomicU64::new(1);

/// Closes a scope on every exit path, unwinding included.
///
/// Generic over the allocator only so that its `drop`, which holds the
/// `scope_end` probe site, is compiled where `measure` is used: a
/// non-generic `drop` was compiled into heapprobe's own code, and a binary
/// that never measures (its linker discarding that code) kept the site's
/// SDT note with a bogus address, which every tracer warned about.
struct ScopeGuard<'a, A> {
    state: &'a ThreadState,
    slot: &'a Slot,
    id: u64,
    /// The enclosing scope's carried high (see [`Slot::mark`]).
    outer_carry: i64,
    _allocator: core::marker::PhantomData<&'a Heapprobe<A>>,
}

impl<A> Drop for ScopeGuard<'_, A> {
    fn drop(&mut self) {
        let slot = self.slot;
        // This scope's high, folded into the enclosing scope's: the inner
        // scope's calls are the outer scope's calls too.
        let inner = slot.mark();
        slot.scope_carry.store(inner.max(self.outer_carry), Relaxed);
        slot.scope_depth.store(slot.scope_depth.load(Relaxed).saturating_sub(1), Relaxed);
        // The last scope closed: the thread's calls take the fast path again.
        self.state.fast.set(thread::fast_value(self.state));
        probes::scope_end(self.id);
    }
}

impl<A> Heapprobe<A> {
    /// Runs `f` and returns its result with the allocator calls the calling
    /// thread made while `f` ran, exactly.
    ///
    /// Other threads' calls are not counted and are never blocked: the scope
    /// reads and writes only this thread's slot. Scopes nest (an inner scope's
    /// calls count in the outer one too). If `f` panics, the scope ends and the
    /// panic continues; the thread's later scopes are unaffected.
    ///
    /// `current` is what `f` left allocated (never below 0) and `peak` the
    /// highest that got during `f`, relative to the start.
    /// While a scope is open the `*_locked` probes fire for this thread's
    /// calls, between `scope_begin(id)` and `scope_end(id)`.
    ///
    /// ```
    /// # use heapprobe::Heapprobe;
    /// # use std::alloc::System;
    /// # #[global_allocator]
    /// # static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
    /// let (len, stats) = GLOBAL.measure(|| {
    ///     let s = "whoa".to_owned().replace("whoa", "wow").to_owned();
    ///     s.len()
    /// });
    /// assert_eq!(len, 3);
    /// assert_eq!((stats.allocations, stats.deallocations), (3, 3));
    /// ```
    ///
    /// Any number of threads can measure at the same time: each gets its own
    /// counter slot, from memory heapprobe maps itself.
    ///
    /// # Panics
    /// Before running `f`, as [`thread_stats`](Self::thread_stats): if this
    /// thread is counted by another `Heapprobe` instance, or if no memory
    /// could be mapped for its counters.
    pub fn measure<R>(&self, f: impl FnOnce() -> R) -> (R, Stats) {
        let (state, slot) = self.own_slot("measure");
        let id = NEXT_SCOPE_ID.fetch_add(1, Relaxed);
        let start = slot.tally.load();
        let start_net = slot.net();
        // Fold the high so far into the thread's (and an enclosing scope's)
        // peak; this scope's high starts here.
        let outer_carry = slot.mark();
        let guard = ScopeGuard::<A> { state, slot, id, outer_carry, _allocator: core::marker::PhantomData };
        slot.scope_carry.store(start_net, Relaxed);
        slot.scope_depth.store(slot.scope_depth.load(Relaxed).saturating_add(1), Relaxed);
        // Calls inside a scope take the slow path, which fires `*_locked`.
        state.fast.set(thread::SLOW);
        probes::scope_begin(id);

        let result = f();

        let mut stats = slot.tally.load() - start;
        stats.current = slot.net().wrapping_sub(start_net).max(0) as usize;
        stats.peak = slot.scope_high().wrapping_sub(start_net).max(0) as usize;
        drop(guard);
        (result, stats)
    }
}
