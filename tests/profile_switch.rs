//! Switching the profiler on and off from many threads at once: scoped
//! profiles (each one switches it on for its span), starts and stops of the
//! global profiler, all racing while other threads allocate. While any of
//! them is on, the instance is diverted; when all are off, it is not; every
//! count stays exact throughout.

use std::alloc::System;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use heapprobe::profile::{is_running, Options, View};
use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

/// 100 blocks of 64 bytes, then freed.
#[inline(never)]
fn pattern() {
    let blocks: Vec<Box<[u8; 64]>> = (0..100).map(|_| black_box(Box::new([1u8; 64]))).collect();
    drop(black_box(blocks));
}

#[test]
fn concurrent_scoped_profiles_starts_and_stops_leave_nothing_diverted_and_counts_exact() {
    assert!(!GLOBAL.diverted());
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Allocating threads: each round's figures are exact, whatever the
        // switch is doing (fast, lean or slow path).
        let allocators: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let mut rounds = 0u64;
                    while !done.load(Relaxed) || rounds < 200 {
                        let before = GLOBAL.thread_stats();
                        pattern();
                        let d = GLOBAL.thread_stats() - before;
                        // The Vec of boxes: 1 allocation of 800 bytes.
                        assert_eq!(
                            (d.allocations, d.deallocations, d.bytes_allocated, d.bytes_deallocated, d.current),
                            (101, 101, 100 * 64 + 800, 100 * 64 + 800, 0)
                        );
                        rounds += 1;
                    }
                    rounds
                })
            })
            .collect();
        // Scoped profiles: while one is open the instance is diverted, and
        // the scope records exactly its own calls.
        let scopes: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    for i in 0..300 {
                        let (diverted, profile) = GLOBAL.profile(|| {
                            pattern();
                            GLOBAL.diverted()
                        });
                        assert!(diverted, "a scoped profile is open: every call must reach the profiler");
                        assert_eq!(profile.total(View::AllocatedBytes), 7200.0, "{profile}");
                        if i % 50 == 0 {
                            // Symbolised (slower): the bytes are `pattern`'s.
                            assert_eq!(profile.total_through(View::AllocatedBytes, "pattern"), 7200.0, "{profile}");
                        }
                    }
                })
            })
            .collect();
        // Starts and stops of the global profiler, racing each other.
        let switches: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..300 {
                        if GLOBAL.start_profiler(Options::default()).is_ok() {
                            // This thread's start holds the switch on until a
                            // stop (this thread's or the other's) ends it.
                            black_box(GLOBAL.diverted());
                        }
                        drop(GLOBAL.stop_profiler());
                    }
                })
            })
            .collect();
        for h in scopes.into_iter().chain(switches) {
            h.join().unwrap();
        }
        done.store(true, Relaxed);
        for h in allocators {
            assert!(h.join().unwrap() >= 200);
        }
    });
    assert!(!is_running());
    assert!(!GLOBAL.diverted(), "every scope closed and the profiler stopped: back on the fast path");

    // Positive control: a running profiler diverts.
    GLOBAL.start_profiler(Options::default()).unwrap();
    assert!(GLOBAL.diverted());
    drop(GLOBAL.stop_profiler());
    assert!(!GLOBAL.diverted());
}
