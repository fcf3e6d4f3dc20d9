//! Counter semantics over a deterministic inner allocator: forwarding of
//! every method, failures, realloc classes and moves, alignments,
//! histograms, per-thread figures, peaks, and arithmetic that never panics.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

use heapprobe::{Heapprobe, Stats};

/// Sizes for which the mock returns null, like an exhausted allocator.
const FAILING_SIZE: usize = 0xDEAD0;

thread_local! {
    /// Inner calls made on this thread, by method: alloc, alloc_zeroed, dealloc, realloc.
    static INNER_CALLS: Cell<[u64; 4]> = const { Cell::new([0; 4]) };
}

fn inner_calls() -> [u64; 4] {
    INNER_CALLS.with(Cell::get)
}

fn note(method: usize) {
    INNER_CALLS.with(|c| {
        let mut v = c.get();
        v[method] += 1;
        c.set(v);
    });
}

/// System, made deterministic: fails for [`FAILING_SIZE`], never moves a
/// shrinking realloc, always moves a growing one.
struct Mock;

// SAFETY: forwards to System, except that it returns null (allowed) for one
// size and implements realloc as alloc + copy + dealloc when growing, which
// meets realloc's contract.
unsafe impl GlobalAlloc for Mock {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(0);
        if layout.size() == FAILING_SIZE {
            return std::ptr::null_mut();
        }
        // SAFETY: caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(1);
        if layout.size() == FAILING_SIZE {
            return std::ptr::null_mut();
        }
        // SAFETY: caller's contract, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(2);
        // SAFETY: caller's contract, forwarded; System ignores the size, so a
        // block shrunk in place may be freed with its new, smaller layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(3);
        if new_size == FAILING_SIZE {
            return std::ptr::null_mut();
        }
        if new_size <= layout.size() {
            return ptr;
        }
        // SAFETY: `new` is a fresh block of at least `layout.size()` bytes;
        // the old block is valid for that many and is freed only after the copy.
        unsafe {
            let new = System.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size());
                System.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[global_allocator]
static GLOBAL: Heapprobe<Mock> = Heapprobe::new(Mock);

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

#[test]
fn every_method_is_forwarded_to_the_same_inner_method() {
    let before = inner_calls();
    let ((), stats) = GLOBAL.measure(|| {
        // SAFETY: valid layouts; each block freed with its current layout.
        unsafe {
            let a = GLOBAL.alloc(layout(10, 8));
            let z = GLOBAL.alloc_zeroed(layout(4096, 8));
            assert!(std::slice::from_raw_parts(z, 4096).iter().all(|b| *b == 0));
            let a = GLOBAL.realloc(a, layout(10, 8), 20);
            GLOBAL.dealloc(a, layout(20, 8));
            GLOBAL.dealloc(z, layout(4096, 8));
        }
    });
    let after = inner_calls();
    // The mock's growing realloc calls System directly, not itself.
    assert_eq!([after[0] - before[0], after[1] - before[1], after[2] - before[2], after[3] - before[3]], [1, 1, 2, 1]);
    assert_eq!((stats.allocations, stats.bytes_allocated), (2, 10 + 4096 + 10));
    assert_eq!((stats.reallocations, stats.deallocations), (1, 2));
}

#[test]
fn inner_null_is_a_counted_failure_not_a_panic() {
    let ((), stats) = GLOBAL.measure(|| {
        // SAFETY: valid layouts; null results are checked and not used.
        unsafe {
            assert!(GLOBAL.alloc(layout(FAILING_SIZE, 8)).is_null());
            assert!(GLOBAL.alloc_zeroed(layout(FAILING_SIZE, 8)).is_null());
            let p = GLOBAL.alloc(layout(64, 8));
            p.write_bytes(7, 64);
            assert!(GLOBAL.realloc(p, layout(64, 8), FAILING_SIZE).is_null());
            // The old block is untouched after a failed realloc.
            assert_eq!(*p.add(63), 7);
            GLOBAL.dealloc(p, layout(64, 8));
        }
    });
    assert_eq!(stats.allocation_failures, 3);
    assert_eq!((stats.allocations, stats.reallocations, stats.deallocations), (1, 0, 1));
    assert_eq!((stats.bytes_allocated, stats.bytes_deallocated, stats.current), (64, 64, 0));
    // Positive control: the same code with a size that succeeds has no failure.
    let ((), ok) = GLOBAL.measure(|| drop(black_box(vec![0u8; FAILING_SIZE - 1])));
    assert_eq!(ok.allocation_failures, 0);
    assert_eq!(ok.allocations, 1);
}

#[test]
fn realloc_grow_shrink_move_and_same_size_are_exact() {
    let ((), stats) = GLOBAL.measure(|| {
        // SAFETY: each pointer is used with the layout it currently has.
        unsafe {
            let p = GLOBAL.alloc(layout(100, 16));
            let q = GLOBAL.realloc(p, layout(100, 16), 100); // same size: no class, no move
            assert_eq!(p, q);
            let r = GLOBAL.realloc(q, layout(100, 16), 1000); // grow by 900, moves (copies 100)
            assert_ne!(q, r);
            let s = GLOBAL.realloc(r, layout(1000, 16), 10); // shrink by 990, in place
            assert_eq!(r, s);
            let t = GLOBAL.realloc(s, layout(10, 16), 50); // grow by 40, moves (copies 10)
            GLOBAL.dealloc(t, layout(50, 16));
        }
    });
    assert_eq!(stats.reallocations, 4);
    assert_eq!((stats.reallocations_grown, stats.bytes_grown), (2, 940));
    assert_eq!((stats.reallocations_shrunk, stats.bytes_shrunk), (1, 990));
    assert_eq!((stats.reallocations_moved, stats.bytes_moved), (2, 110));
    assert_eq!(stats.bytes_reallocated, 940 - 990);
    assert_eq!(stats.bytes_allocated, 100 + 940);
    assert_eq!(stats.bytes_deallocated, 990 + 50);
    assert_eq!((stats.current, stats.peak), (0, 1000));
    assert_eq!(stats.grow_histogram.count_for(900), 1);
    assert_eq!(stats.grow_histogram.count_for(40), 1);
    assert_eq!(stats.shrink_histogram.count_for(990), 1);
    assert_eq!(stats.size_histogram.total(), 1);
}

#[test]
fn alignments_up_to_one_mebibyte() {
    let ((), stats) = GLOBAL.measure(|| {
        for shift in 0..=20 {
            let l = layout(24, 1 << shift);
            // SAFETY: valid layout; freed with the same layout.
            unsafe {
                let p = GLOBAL.alloc(l);
                assert!(!p.is_null());
                assert_eq!(p as usize % l.align(), 0, "align {}", l.align());
                let z = GLOBAL.alloc_zeroed(l);
                assert_eq!(z as usize % l.align(), 0);
                GLOBAL.dealloc(p, l);
                GLOBAL.dealloc(z, l);
            }
        }
    });
    assert_eq!((stats.allocations, stats.deallocations), (42, 42));
    assert_eq!((stats.bytes_allocated, stats.current, stats.peak), (42 * 24, 0, 48));
}

#[test]
fn size_histogram_buckets_are_log2() {
    let sizes = [1usize, 2, 3, 4, 7, 8, 1023, 1024, 1025, 1 << 20];
    let ((), stats) = GLOBAL.measure(|| {
        for size in sizes {
            drop(black_box(Vec::<u8>::with_capacity(size)));
        }
    });
    let h = stats.size_histogram;
    let expect = [(0, 1), (1, 2), (2, 2), (3, 1), (9, 1), (10, 2), (20, 1)];
    for (bucket, n) in expect {
        assert_eq!(h.buckets()[bucket], n, "bucket {bucket}: {h:?}");
    }
    assert_eq!(h.total(), sizes.len() as u64);
    assert_eq!(heapprobe::Histogram::bucket_of(0), 0);
    assert_eq!(heapprobe::Histogram::bucket_of(usize::MAX), 63);
}

#[test]
fn thread_stats_are_exact_and_have_their_own_peak() {
    std::thread::spawn(|| {
        // A thread's `current` is what it allocated minus what it freed, never
        // below 0. The spawned thread starts by freeing its closure's box,
        // which the parent allocated; the ballast lifts it above 0.
        let ballast = black_box(vec![0u8; 4096]);
        let before = GLOBAL.thread_stats();
        assert!(before.current > 0);
        GLOBAL.reset_thread_peak();
        let base = GLOBAL.thread_stats().current;
        let block = black_box(vec![0u8; 1 << 20]);
        let during = GLOBAL.thread_stats();
        drop(block);
        let after = GLOBAL.thread_stats();
        assert_eq!(after.allocations - before.allocations, 1);
        assert_eq!(after.bytes_allocated - before.bytes_allocated, 1 << 20);
        assert_eq!(during.current, base + (1 << 20));
        assert_eq!(after.current, base);
        assert_eq!(after.peak, base + (1 << 20));
        GLOBAL.reset_thread_peak();
        assert_eq!(GLOBAL.thread_stats().peak, base);
        drop(ballast);
    })
    .join()
    .unwrap();
}

/// One high-water mark serves the thread and every open scope; scope
/// boundaries, `reset_thread_peak` and publications of the net (every 64 KiB
/// freed, or a new high 64 KiB up) fold it into carried values. None of that
/// may change a peak.
#[test]
fn thread_and_scope_peaks_are_exact_across_marks() {
    std::thread::spawn(|| {
        let ballast = black_box(vec![0u8; 4096]);
        GLOBAL.reset_thread_peak();
        let base = GLOBAL.thread_stats().current;
        assert_eq!(GLOBAL.thread_stats().peak, base);

        // A scope's high is the thread's high too (1 MiB: published inside).
        let ((), s) = GLOBAL.measure(|| drop(black_box(vec![0u8; 1 << 20])));
        assert_eq!((s.peak, s.current), (1 << 20, 0));
        assert_eq!(GLOBAL.thread_stats().peak, base + (1 << 20));

        // reset_thread_peak inside a scope restarts the thread's peak only.
        GLOBAL.reset_thread_peak();
        let ((), s) = GLOBAL.measure(|| {
            drop(black_box(vec![0u8; 5000]));
            GLOBAL.reset_thread_peak();
            assert_eq!(GLOBAL.thread_stats().peak, base);
            drop(black_box(vec![0u8; 1000]));
            assert_eq!(GLOBAL.thread_stats().peak, base + 1000);
        });
        assert_eq!(s.peak, 5000, "the scope keeps its high from before the reset");
        assert_eq!(GLOBAL.thread_stats().peak, base + 1000);

        // Nested scopes, frees of older memory, and publications by the
        // budget (300 KB freed in 3 KB steps) between the highs.
        let older: Vec<Vec<u8>> = (0..100).map(|_| vec![0u8; 3000]).collect();
        GLOBAL.reset_thread_peak();
        let start = GLOBAL.thread_stats().current;
        let ((inner, middle), outer) = GLOBAL.measure(|| {
            let a = black_box(vec![0u8; 200_000]);
            let (inner, middle) = GLOBAL.measure(|| {
                drop(older); // -300_000 - the Vec's own 2400
                let ((), inner) = GLOBAL.measure(|| {
                    let b = black_box(vec![0u8; 250_000]);
                    let c = black_box(vec![0u8; 60_000]);
                    drop((b, c));
                });
                let d = black_box(vec![0u8; 90_000]);
                drop(d);
                inner
            });
            drop(a);
            (inner, middle)
        });
        assert_eq!((inner.peak, inner.current), (310_000, 0));
        // The middle scope (which starts with `a` already allocated) falls
        // to -302_400, then peaks inside `inner` at -302_400 + 310_000.
        assert_eq!((middle.peak, middle.current), (7_600, 0));
        assert_eq!(middle.net_bytes(), -302_400);
        // The outer one: +200_000 for `a`, then the middle's high on top.
        assert_eq!(outer.peak, 207_600);
        assert_eq!(outer.net_bytes(), -302_400);
        assert_eq!(GLOBAL.thread_stats().peak, start + 207_600);
        assert_eq!(GLOBAL.thread_stats().current, start - 302_400);
        drop(ballast);
    })
    .join()
    .unwrap();
}

/// The process-wide peak sees a thread whose net rises again after it freed
/// (its high-water mark restarts when it publishes, so the rise is seen).
#[test]
fn global_peak_sees_a_thread_rising_again_after_freeing() {
    use std::sync::mpsc::channel;
    const MIB: usize = 1 << 20;
    let start = GLOBAL.stats().current;
    let (to_a, a_rx) = channel::<()>();
    let (to_b, b_rx) = channel::<()>();
    let (done_tx, done) = channel::<&str>();
    let a_done = done_tx.clone();
    let a = std::thread::spawn(move || {
        drop(black_box(vec![1u8; MIB])); // A: up 1 MiB and down again
        a_done.send("a freed").unwrap();
        a_rx.recv().unwrap();
        let again = black_box(vec![1u8; MIB]); // not a new high for A
        a_done.send("a holds").unwrap();
        a_rx.recv().unwrap();
        drop(again);
    });
    assert_eq!(done.recv().unwrap(), "a freed");
    let b = std::thread::spawn(move || {
        let kept = black_box(vec![1u8; MIB]);
        done_tx.send("b holds").unwrap();
        b_rx.recv().unwrap();
        drop(kept);
    });
    assert_eq!(done.recv().unwrap(), "b holds");
    to_a.send(()).unwrap();
    assert_eq!(done.recv().unwrap(), "a holds");
    // Both blocks are live now: 2 MiB above the start, within a granule
    // per thread (A, B, this one, and the harness's other test threads).
    let peak = GLOBAL.stats().peak;
    assert!(peak + 8 * heapprobe::GLOBAL_PEAK_GRANULE as usize >= start + 2 * MIB, "peak {peak}, start {start}");
    to_a.send(()).unwrap();
    to_b.send(()).unwrap();
    a.join().unwrap();
    b.join().unwrap();
}

#[test]
fn freeing_other_threads_memory_never_makes_current_negative() {
    let blocks: Vec<Vec<u8>> = std::thread::spawn(|| (0..10).map(|_| vec![1u8; 1000]).collect()).join().unwrap();
    let ((), stats) = GLOBAL.measure(move || drop(blocks));
    assert_eq!((stats.deallocations, stats.bytes_deallocated), (11, 10_000 + 10 * 24));
    assert_eq!(stats.current, 0);
    assert!(stats.net_bytes() < 0);

    // Memory the wrapper never saw allocated (straight from System), freed through it.
    std::thread::spawn(|| {
        let l = layout(5000, 8);
        let before = GLOBAL.thread_stats();
        // SAFETY: valid layout; Mock frees through System, which allocated it.
        unsafe { GLOBAL.dealloc(System.alloc(l), l) };
        let t = GLOBAL.thread_stats();
        assert_eq!(t.current, 0, "{t}");
        assert_eq!(t.bytes_deallocated - before.bytes_deallocated, 5000);
    })
    .join()
    .unwrap();
    let global = GLOBAL.stats();
    assert_eq!(global.current, global.bytes_allocated.saturating_sub(global.bytes_deallocated));
}

#[test]
fn global_peak_and_reset() {
    let big = 64 << 20;
    let start = GLOBAL.stats();
    let block = black_box(vec![0u8; big]);
    let during = GLOBAL.stats();
    drop(block);
    let after = GLOBAL.stats();
    assert!(during.current >= big, "{during}");
    assert!(after.peak >= start.current + big - 64 * 1024 * 8, "peak {} start {}", after.peak, start.current);
    assert!(after.peak >= during.current.min(after.peak));
    GLOBAL.reset_peak();
    let reset = GLOBAL.stats();
    assert!(reset.peak < after.peak, "reset_peak lowered nothing: {} -> {}", after.peak, reset.peak);
    assert!(reset.peak < big);
}

#[test]
fn stats_arithmetic_saturates_instead_of_panicking() {
    let small = Stats { allocations: 1, bytes_reallocated: isize::MIN, ..Stats::default() };
    let big = Stats { allocations: 5, current: usize::MAX, bytes_reallocated: 1, ..Stats::default() };
    let d = small - big;
    assert_eq!(d.allocations, 0);
    assert_eq!(d.bytes_reallocated, isize::MIN);
    let s = big + big;
    assert_eq!((s.allocations, s.current), (10, usize::MAX));
    assert_eq!((big - small).allocations, 4);
}

#[test]
fn display_is_human_and_shows_histogram_bars() {
    let ((), stats) = GLOBAL.measure(|| {
        for _ in 0..3 {
            drop(black_box(vec![0u8; 100]));
        }
        drop(black_box(vec![0u8; 5000]));
    });
    let text = stats.to_string();
    assert!(text.contains("allocations               4  5.2 KiB"), "{text}");
    assert!(text.contains("deallocations             4"), "{text}");
    assert!(text.contains("allocation sizes (bytes):"), "{text}");
    assert!(text.contains("[64, 128)              3 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|"), "{text}");
    assert!(text.contains("[4K, 8K)               1 |@@@@@@@@@@@@@                           |"), "{text}");
    assert!(!text.contains("realloc growth"), "empty histograms are not printed: {text}");
}
