//! The profiler's switch reaches every `Heapprobe` instance, whenever it
//! binds its first thread: while the profiler is on, every instance is
//! diverted off its fast path (where the profiler has no hook), and no
//! instance stays diverted once it is off. Here the instances are called
//! explicitly (the global allocator is `System`), so each one binds its first
//! thread exactly when the test says.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Barrier;

use heapprobe::profile::{Options, View};
use heapprobe::Heapprobe;

/// Its first thread binds after the profiler started.
static LATE: Heapprobe<System> = Heapprobe::new(System);
/// Each binds its first thread at the moment the profiler starts or stops.
static RACING: [Heapprobe<System>; 32] = [const { Heapprobe::new(System) }; 32];
/// More instances than the registry holds (64).
static CROWD: [Heapprobe<System>; 70] = [const { Heapprobe::new(System) }; 70];

fn exact() -> Options {
    let mut options = Options::default();
    options.rate = 1;
    options
}

/// `n` blocks of 4096 bytes from `heap`; every other one freed at once.
#[inline(never)]
fn late_pattern(heap: &Heapprobe<System>, n: usize) -> Vec<*mut u8> {
    let layout = Layout::from_size_align(4096, 8).unwrap();
    let mut kept = Vec::new();
    for i in 0..n {
        // SAFETY: a valid layout; freed below or by `free_all` with it.
        let p = black_box(unsafe { heap.alloc(layout) });
        assert!(!p.is_null());
        if i % 2 == 0 {
            kept.push(p);
        } else {
            // SAFETY: allocated just above with `layout`.
            unsafe { heap.dealloc(p, layout) };
        }
    }
    kept
}

fn free_all(heap: &Heapprobe<System>, blocks: Vec<*mut u8>) {
    let layout = Layout::from_size_align(4096, 8).unwrap();
    for p in blocks {
        // SAFETY: each came from `late_pattern` with this layout.
        unsafe { heap.dealloc(p, layout) };
    }
}

/// Sends raw pointers back from a thread.
struct Blocks(Vec<*mut u8>);
// SAFETY: the pointers are plain heap blocks, freed by whoever holds them.
unsafe impl Send for Blocks {}

/// One test, in this order: the registry holds 64 instances, and the last
/// part fills it.
#[test]
fn the_profilers_switch_reaches_every_instance() {
    an_instance_that_binds_after_the_profiler_started_is_diverted_and_every_call_recorded();
    instances_that_bind_while_the_profiler_starts_or_stops_end_up_switched_with_it();
    an_instance_beyond_the_registry_is_never_fast_so_the_profiler_still_sees_it();
}

fn an_instance_that_binds_after_the_profiler_started_is_diverted_and_every_call_recorded() {
    LATE.start_profiler(exact()).unwrap();
    let blocks = std::thread::spawn(|| {
        // The thread's first call of any Heapprobe: it binds LATE's first thread.
        let kept = late_pattern(&LATE, 1000);
        assert!(LATE.diverted(), "an instance bound while the profiler runs is diverted");
        // Counted exactly on the lean path too.
        let s = LATE.thread_stats();
        assert_eq!((s.allocations, s.deallocations, s.bytes_allocated, s.current), (1000, 500, 4_096_000, 2_048_000));
        Blocks(kept)
    })
    .join()
    .unwrap();
    let profile = LATE.stop_profiler().unwrap();
    assert!(!LATE.diverted(), "the profiler is off: the fast path again");
    // Every call reached the profiler: all 1000 allocations, exactly, and
    // the 500 frees.
    assert_eq!(profile.total_through(View::AllocatedBytes, "late_pattern"), 4_096_000.0, "{profile}");
    assert_eq!(profile.total_through(View::AllocatedObjects, "late_pattern"), 1000.0, "{profile}");
    assert_eq!(profile.total_through(View::InUseBytes, "late_pattern"), 2_048_000.0, "{profile}");
    free_all(&LATE, blocks.0);
    assert!(!LATE.diverted());
}

fn instances_that_bind_while_the_profiler_starts_or_stops_end_up_switched_with_it() {
    let layout = Layout::from_size_align(64, 8).unwrap();
    for (i, heap) in RACING.iter().enumerate() {
        // Half the rounds race a start, half a stop.
        let starting = i % 2 == 0;
        if !starting {
            heap.start_profiler(Options::default()).unwrap();
        }
        let barrier = Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                // SAFETY: a valid layout, freed with it.
                unsafe { heap.dealloc(heap.alloc(layout), layout) };
            });
            barrier.wait();
            if starting {
                heap.start_profiler(Options::default()).unwrap();
            } else {
                heap.stop_profiler().unwrap();
            }
        });
        assert_eq!(
            heap.diverted(),
            starting,
            "instance {i}, bound while the profiler {}",
            ["stopped", "started"][starting as usize]
        );
        assert_eq!((heap.stats().allocations, heap.stats().deallocations), (1, 1), "instance {i}");
        let _ = heap.stop_profiler();
        assert!(!heap.diverted(), "instance {i} after the profiler stopped");
    }
}

fn an_instance_beyond_the_registry_is_never_fast_so_the_profiler_still_sees_it() {
    // Bind every instance (one thread each), the profiler off.
    std::thread::scope(|s| {
        for heap in &CROWD {
            s.spawn(move || free_all(heap, late_pattern(heap, 2)));
        }
    });
    CROWD[0].start_profiler(exact()).unwrap();
    let before = CROWD.iter().filter(|h| h.diverted()).count();
    let kept: Vec<Blocks> = std::thread::scope(|s| {
        let handles: Vec<_> = CROWD.iter().map(|heap| s.spawn(move || Blocks(late_pattern(heap, 2)))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let profile = CROWD[0].stop_profiler().unwrap();
    // LATE and RACING hold 33 of the registry's 64 entries: 31 of the crowd
    // are registered and diverted, the other 39 never took the fast path.
    assert_eq!(before, 64 - 1 - RACING.len(), "diverted instances of the crowd");
    // Each instance allocated 2 blocks of 4096 bytes: all of them recorded.
    assert_eq!(profile.total_through(View::AllocatedObjects, "late_pattern"), 2.0 * CROWD.len() as f64, "{profile}");
    for (heap, blocks) in CROWD.iter().zip(kept) {
        free_all(heap, blocks.0);
        assert!(!heap.diverted());
    }
}
