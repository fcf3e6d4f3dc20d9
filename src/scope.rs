//! Measured scopes: exact counts of one thread's calls while a closure runs.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::alloc::Heapprobe;
use crate::probes;
use crate::stats::Stats;
use crate::tally::Slot;

/// Scope ids, for the `scope_begin` / `scope_end` probes. Starts at 1.
static NEXT_SCOPE_ID: AtomicU64 = AtomicU64::new(1);

/// Closes a scope on every exit path, unwinding included.
struct ScopeGuard<'a> {
    slot: &'a Slot,
    id: u64,
    outer_high: i64,
}

impl Drop for ScopeGuard<'_> {
    fn drop(&mut self) {
        let slot = self.slot;
        slot.scope_depth.store(slot.scope_depth.load(Relaxed).saturating_sub(1), Relaxed);
        // The enclosing scope's high-water mark includes this scope's.
        let high = slot.scope_high.load(Relaxed).max(self.outer_high);
        slot.scope_high.store(high, Relaxed);
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
    /// # Panics
    /// If the thread has no counter slot (more than
    /// [`MAX_THREADS`](crate::MAX_THREADS) live threads), before running `f`.
    pub fn measure<R>(&self, f: impl FnOnce() -> R) -> (R, Stats) {
        let slot = self.own_slot("measure");
        let id = NEXT_SCOPE_ID.fetch_add(1, Relaxed);
        let start = slot.tally.load();
        let start_net = slot.net.load(Relaxed);
        let guard = ScopeGuard { slot, id, outer_high: slot.scope_high.load(Relaxed) };
        slot.scope_high.store(start_net, Relaxed);
        slot.scope_depth.store(slot.scope_depth.load(Relaxed).saturating_add(1), Relaxed);
        probes::scope_begin(id);

        let result = f();

        let mut stats = slot.tally.load() - start;
        stats.current = slot.net.load(Relaxed).wrapping_sub(start_net).max(0) as usize;
        stats.peak = slot.scope_high.load(Relaxed).wrapping_sub(start_net).max(0) as usize;
        drop(guard);
        (result, stats)
    }
}
