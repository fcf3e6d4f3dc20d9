//! Scoped measurement: exact counts of the calling thread's calls, while
//! other threads allocate heavily, with nesting and panics.

use std::alloc::System;
use std::hint::black_box;
use std::thread;

mod support;

use support::Noise;

use heapprobe::{Heapprobe, Stats};

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

fn six(s: &Stats) -> (usize, usize, usize, usize, usize, isize) {
    (s.allocations, s.deallocations, s.reallocations, s.bytes_allocated, s.bytes_deallocated, s.bytes_reallocated)
}

#[test]
fn ground_truth_string_replace_while_four_threads_allocate() {
    Noise::start(4).overlap(200, || {
        let ((), stats) = GLOBAL.measure(|| {
            let _ = black_box("whoa".to_owned().replace("whoa", "wow").to_owned());
        });
        assert_eq!(six(&stats), (3, 3, 0, 15, 15, 0), "{stats}");
        assert_eq!(stats.current, 0);
        assert_eq!(stats.allocation_failures, 0);
    });
}

#[test]
fn ground_truth_vec_of_four_i32_while_four_threads_allocate() {
    Noise::start(4).overlap(200, || {
        let ((), stats) = GLOBAL.measure(|| {
            let _ = black_box(vec![1i32, 2, 3, 4]);
        });
        assert_eq!(six(&stats), (1, 1, 0, 16, 16, 0), "{stats}");
        assert_eq!(stats.size_histogram.count_for(16), 1);
        assert_eq!(stats.size_histogram.total(), 1);
        assert_eq!(stats.peak, 16);
        assert_eq!(stats.current, 0);
    });
}

#[test]
fn empty_scope_counts_nothing_and_positive_control_counts_one() {
    let ((), empty) = GLOBAL.measure(|| {
        black_box(1 + 1);
    });
    assert_eq!(empty, Stats::default());
    let ((), control) = GLOBAL.measure(|| drop(black_box(Box::new(7u64))));
    assert_eq!(six(&control), (1, 1, 0, 8, 8, 0));
}

#[test]
fn result_is_returned_and_what_it_keeps_is_current() {
    let (v, stats) = GLOBAL.measure(|| black_box(Vec::<u8>::with_capacity(1000)));
    assert_eq!(v.capacity(), 1000);
    assert_eq!((stats.allocations, stats.deallocations), (1, 0));
    assert_eq!((stats.current, stats.peak), (1000, 1000));
    let ((), freed) = GLOBAL.measure(move || drop(v));
    assert_eq!((freed.deallocations, freed.bytes_deallocated), (1, 1000));
    assert_eq!(freed.current, 0, "freeing older memory never makes current negative");
    assert_eq!(freed.net_bytes(), -1000);
}

#[test]
fn nested_scopes_each_count_their_own_calls() {
    let ((inner, middle), outer) = GLOBAL.measure(|| {
        let a = black_box(vec![0u8; 10]);
        let (inner_and_middle, middle) = GLOBAL.measure(|| {
            let b = black_box(vec![0u8; 100]);
            let ((), inner) = GLOBAL.measure(|| drop(black_box(vec![0u8; 1000])));
            drop(b);
            inner
        });
        drop(a);
        (inner_and_middle, middle)
    });
    assert_eq!(six(&inner), (1, 1, 0, 1000, 1000, 0));
    assert_eq!(inner.peak, 1000);
    assert_eq!(six(&middle), (2, 2, 0, 1100, 1100, 0));
    assert_eq!(middle.peak, 1100);
    assert_eq!(six(&outer), (3, 3, 0, 1110, 1110, 0));
    assert_eq!(outer.peak, 1110);
}

#[test]
fn panic_inside_scope_ends_it_cleanly() {
    let caught = std::panic::catch_unwind(|| {
        GLOBAL.measure(|| {
            let _v = black_box(vec![0u8; 64]);
            panic!("boom");
        })
    });
    assert!(caught.is_err());
    // The next scope starts clean and is exact.
    let ((), stats) = GLOBAL.measure(|| drop(black_box(vec![0u8; 24])));
    assert_eq!(six(&stats), (1, 1, 0, 24, 24, 0));
    assert_eq!(stats.peak, 24);
}

#[test]
fn realloc_classes_are_exact() {
    let ((), stats) = GLOBAL.measure(|| {
        let mut v: Vec<u8> = Vec::with_capacity(16);
        v.reserve_exact(64); // len 0: 16 -> 64, grow by 48
        v.shrink_to(8); // 64 -> 8: shrink (len 0, so shrinks to 8)
        v.reserve_exact(8); // cap 8 already: no call
        black_box(&v);
    });
    assert_eq!(stats.allocations, 1);
    assert_eq!(stats.reallocations, 2);
    assert_eq!((stats.reallocations_grown, stats.bytes_grown), (1, 48));
    assert_eq!((stats.reallocations_shrunk, stats.bytes_shrunk), (1, 56));
    assert_eq!(stats.bytes_reallocated, 48 - 56);
    assert_eq!(stats.bytes_allocated, 16 + 48);
    assert_eq!(stats.bytes_deallocated, 56 + 8);
    assert_eq!(stats.grow_histogram.count_for(48), 1);
    assert_eq!(stats.shrink_histogram.count_for(56), 1);
    assert_eq!(stats.peak, 64);
    // Moves depend on where the allocator put the block; they are bounded here
    // and exact in `tests/counters.rs` with a deterministic inner allocator.
    assert!(stats.reallocations_moved <= 2);
}

#[test]
fn scopes_on_sixteen_threads_are_each_exact() {
    let handles: Vec<_> = (0..16usize)
        .map(|i| {
            thread::spawn(move || {
                (0..100)
                    .map(|_| {
                        GLOBAL
                            .measure(|| {
                                for _ in 0..=i {
                                    drop(black_box(vec![0u8; 32 + i]));
                                }
                            })
                            .1
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        for stats in h.join().unwrap() {
            assert_eq!(six(&stats), (i + 1, i + 1, 0, (i + 1) * (32 + i), (i + 1) * (32 + i), 0));
        }
    }
}
