//! Process-wide totals stay exact across 10,000 short-lived threads, more
//! live threads than there are per-thread slots, and frees of blocks that
//! other threads allocated.
//!
//! The witness is the inner allocator itself: it counts every call it
//! receives with shared atomics, independently of heapprobe's per-thread
//! slots. At every quiescent point the two must agree exactly. This file
//! holds one test so that no other test allocates between the two reads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Barrier};

use heapprobe::{Heapprobe, MAX_THREADS};

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

    // More live threads than slots: the extra ones count through the shared
    // overflow block, and nothing is lost.
    let live = MAX_THREADS + 64;
    let barrier = Arc::new(Barrier::new(live));
    let handles: Vec<_> = (0..live)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                churn(i);
                barrier.wait();
                churn(i + 1);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_totals_match_witness("after more live threads than slots");

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
