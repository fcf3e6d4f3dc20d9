//! Process-wide totals stay exact across 10,000 short-lived threads, 1000
//! live threads that each measure exactly at the same time, and frees of
//! blocks that other threads allocated.
//!
//! The witness is the inner allocator itself: it counts every call it
//! receives with shared atomics, independently of heapprobe's per-thread
//! slots. At every quiescent point the two must agree exactly. This file
//! holds one test so that no other test allocates between the two reads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Barrier};

use heapprobe::{Heapprobe, Stats};

/// System, counting what it is asked for.
struct Witness {
    allocations: AtomicUsize,
    deallocations: AtomicUsize,
    reallocations: AtomicUsize,
    bytes_allocated: AtomicUsize,
    bytes_deallocated: AtomicUsize,
}

// SAFETY: forwards every call to System unchanged.
unsafe impl GlobalAlloc for Witness {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocations.fetch_add(1, Relaxed);
        self.bytes_allocated.fetch_add(layout.size(), Relaxed);
        // SAFETY: caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.allocations.fetch_add(1, Relaxed);
        self.bytes_allocated.fetch_add(layout.size(), Relaxed);
        // SAFETY: caller's contract, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.deallocations.fetch_add(1, Relaxed);
        self.bytes_deallocated.fetch_add(layout.size(), Relaxed);
        // SAFETY: caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.reallocations.fetch_add(1, Relaxed);
        if new_size > layout.size() {
            self.bytes_allocated.fetch_add(new_size - layout.size(), Relaxed);
        } else {
            self.bytes_deallocated.fetch_add(layout.size() - new_size, Relaxed);
        }
        // SAFETY: caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Heapprobe<Witness> = Heapprobe::new(Witness {
    allocations: AtomicUsize::new(0),
    deallocations: AtomicUsize::new(0),
    reallocations: AtomicUsize::new(0),
    bytes_allocated: AtomicUsize::new(0),
    bytes_deallocated: AtomicUsize::new(0),
});

#[track_caller]
fn assert_totals_match_witness(when: &str) {
    let s = GLOBAL.stats();
    let w = GLOBAL.inner();
    let witness = (
        w.allocations.load(Relaxed),
        w.deallocations.load(Relaxed),
        w.reallocations.load(Relaxed),
        w.bytes_allocated.load(Relaxed),
        w.bytes_deallocated.load(Relaxed),
    );
    assert_eq!(
        (s.allocations, s.deallocations, s.reallocations, s.bytes_allocated, s.bytes_deallocated),
        witness,
        "{when}: heapprobe vs the inner allocator's own count"
    );
}

/// What each of the 1000 live threads measures: a block it keeps while it
/// churns, then a short-lived one.
fn scoped_work(i: usize) {
    let kept = black_box(vec![0u8; 100 + i]);
    churn(i);
    drop(black_box(vec![1u16; 8]));
    drop(kept);
}

fn churn(seed: usize) {
    let mut v: Vec<String> = Vec::new();
    for i in 0..(seed % 7 + 3) {
        v.push(format!("{seed}-{i}"));
    }
    black_box(&v);
}

#[test]
fn totals_are_exact_across_threads() {
    assert_totals_match_witness("start");

    // 10,000 short-lived threads, 50 at a time, so slots are released and reused.
    for batch in 0..200 {
        let handles: Vec<_> = (0..50).map(|i| std::thread::spawn(move || churn(batch * 50 + i))).collect();
        for h in handles {
            h.join().unwrap();
        }
    }
    assert_totals_match_witness("after 10,000 short-lived threads");
    assert_eq!(GLOBAL.reentrant_calls(), 0);

    // Slots were reused: 50 threads at a time (plus the harness's two) fit
    // in the first block of 64, which is all that was mapped.
    assert_eq!(GLOBAL.slot_memory().0, 1, "short-lived threads' slots are reused");

    // 1000 live threads, each measuring exactly while all the others are
    // alive and allocating: every one gets its own slot (there used to be
    // 256, and `measure` panicked on the rest).
    const LIVE: usize = 1000;
    let all_alive = Arc::new(Barrier::new(LIVE + 1));
    let all_measured = Arc::new(Barrier::new(LIVE + 1));
    let handles: Vec<_> = (0..LIVE)
        .map(|i| {
            let (all_alive, all_measured) = (all_alive.clone(), all_measured.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    churn(i);
                    all_alive.wait();
                    let before = GLOBAL.thread_stats();
                    let ((), stats) = GLOBAL.measure(|| scoped_work(i));
                    let during = GLOBAL.thread_stats() - before;
                    all_measured.wait();
                    (stats, during)
                })
                .unwrap()
        })
        .collect();
    all_alive.wait();
    all_measured.wait();
    assert!(GLOBAL.slot_memory().0 >= LIVE / 64, "{:?}", GLOBAL.slot_memory());
    for (i, h) in handles.into_iter().enumerate() {
        let (stats, during) = h.join().unwrap();
        // Ground truth: churn's calls (measured alone) plus the two known
        // blocks; and the same work measured again here, on a quiet thread,
        // must give the very same Stats, histograms included (but not
        // realloc moves: whether a block grows in place depends on where
        // the allocator put it).
        let c = GLOBAL.measure(|| churn(i)).1;
        let six = |s: &Stats| {
            (s.allocations, s.deallocations, s.reallocations, s.bytes_allocated, s.bytes_deallocated, s.current)
        };
        assert_eq!(
            six(&stats),
            (
                c.allocations + 2,
                c.deallocations + 2,
                c.reallocations,
                c.bytes_allocated + 100 + i + 16,
                c.bytes_deallocated + 100 + i + 16,
                0
            ),
            "thread {i}"
        );
        assert_eq!(stats.peak, 100 + i + c.peak.max(16), "thread {i}");
        let unmoved = |s: Stats| Stats { reallocations_moved: 0, bytes_moved: 0, ..s };
        assert_eq!(unmoved(stats), unmoved(GLOBAL.measure(|| scoped_work(i)).1), "thread {i}");
        // The thread's own figures moved by exactly the scope's.
        assert_eq!((during.allocations, during.bytes_allocated), (stats.allocations, stats.bytes_allocated));
    }
    assert_totals_match_witness("after 1000 live measuring threads");
    // Memory for 1000 live threads (plus the harness's): 16 blocks of 64.
    let (blocks, bytes) = GLOBAL.slot_memory();
    assert_eq!(blocks, (LIVE + 2).div_ceil(64), "{bytes} bytes mapped");

    // Cross-thread frees: producers allocate, one consumer frees everything.
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let consumer = std::thread::spawn(move || {
        let before = GLOBAL.thread_stats();
        let mut freed = 0;
        for block in rx {
            freed += block.len();
        }
        let after = GLOBAL.thread_stats();
        (freed, after.bytes_deallocated - before.bytes_deallocated, after.current)
    });
    let producers: Vec<_> = (0..8)
        .map(|p| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    tx.send(vec![p as u8; 100 + i]).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    for p in producers {
        p.join().unwrap();
    }
    let (freed, counted, current) = consumer.join().unwrap();
    let expected: usize = 8 * (0..500).map(|i| 100 + i).sum::<usize>();
    assert_eq!(freed, expected);
    // The consumer also frees the channel's blocks; it frees at least the payload.
    assert!(counted >= expected, "{counted} < {expected}");
    assert_eq!(current, 0, "a thread that only frees has 0 bytes current, not less");
    assert_totals_match_witness("after cross-thread frees");
    assert_eq!(GLOBAL.reentrant_calls(), 0);
}
