//! The instrumented path never re-enters the global allocator.
//!
//! `Heapprobe::reentrant_calls` counts calls that arrive while the same
//! thread is inside the wrapper's slow path: a thread's first call (which
//! claims a slot: `mmap`, pthread key), every call inside a measured scope,
//! and calls diverted for the profiler. All of heapprobe's code that calls
//! out of line runs there; the fast path (anything else) calls nothing but
//! the inner allocator and out-of-line counting functions (publications,
//! new highs, failures), which the slow path runs too. So the workload below
//! runs every such function inside measured scopes, and the count must stay
//! 0. A positive control proves the detector works: an inner allocator that
//! allocates through the global allocator is caught.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

use heapprobe::Heapprobe;

thread_local! {
    /// When set, the next inner `alloc` on this thread allocates through the
    /// global allocator once (the positive control).
    static REENTER_ONCE: Cell<bool> = const { Cell::new(false) };
}

/// System, but able to misbehave on request.
struct Misbehaving;

// SAFETY: forwards to System; the misbehaviour allocates and frees a Box
// through the global allocator, which is legal if recursive.
unsafe impl GlobalAlloc for Misbehaving {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if REENTER_ONCE.with(|r| r.replace(false)) {
            drop(black_box(Box::new(0u64)));
        }
        // SAFETY: caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Heapprobe<Misbehaving> = Heapprobe::new(Misbehaving);

#[test]
fn instrumented_path_never_reenters_and_the_detector_works() {
    // Every path: first call of new threads (slot claim, a new block of
    // slots + pthread key), thread exit (key destructor), churn, scopes,
    // panics in scopes, reads, realloc, alloc_zeroed; and inside scopes, the
    // out-of-line bookkeeping: new highs, publications of the net by a new
    // high (256 KiB) and by frees (256 KiB in 1 KiB steps).
    let handles: Vec<_> = (0..64)
        .map(|i| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                for j in 0..100 {
                    v.push(vec![0u8; i + j]);
                    v.last_mut().unwrap().extend_from_slice(&[1, 2, 3]);
                }
                let ((), s) = GLOBAL.measure(|| drop(black_box(vec![0u16; 10])));
                assert_eq!(s.allocations, 1);
                let ((), s) = GLOBAL.measure(|| {
                    let big = black_box(vec![0u8; 256 << 10]);
                    let small: Vec<Vec<u8>> = (0..256).map(|_| vec![0u8; 1024]).collect();
                    drop(small);
                    let mut v = vec![0u64; 4];
                    v.extend(0..100_000);
                    drop((big, v));
                });
                assert_eq!(s.allocations, 259);
                let _ = std::panic::catch_unwind(|| GLOBAL.measure(|| panic!("inside a scope")));
                black_box(GLOBAL.thread_stats());
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    black_box(GLOBAL.stats());
    // SAFETY: valid layout, freed with the same layout.
    unsafe {
        let l = Layout::from_size_align(4096, 4096).unwrap();
        GLOBAL.dealloc(GLOBAL.alloc_zeroed(l), l);
    }
    assert_eq!(GLOBAL.reentrant_calls(), 0, "the instrumented path re-entered the global allocator");

    // Positive control: an inner allocator that allocates through the global
    // allocator must be caught, and counted exactly once per re-entry.
    REENTER_ONCE.with(|r| r.set(true));
    let ((), stats) = GLOBAL.measure(|| drop(black_box(Box::new([0u8; 48]))));
    assert_eq!(GLOBAL.reentrant_calls(), 2, "the re-entrant alloc and its dealloc");
    // Re-entrant calls are still counted exactly.
    assert_eq!((stats.allocations, stats.deallocations), (2, 2));
    assert_eq!(stats.bytes_allocated, 48 + 8);
}
