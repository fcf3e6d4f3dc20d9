//! The fast path's countdown follows the profiler's starts and stops.
//! Allocations are never diverted: each thread's slot holds its next
//! sample, "never" while the profiler is off, and a start or stop resets
//! every slot so that the thread decides again. Here one thread, bound to
//! the instance long before the profiler starts and running across every
//! start and stop, is recorded exactly at rate 1 in each of three sessions,
//! allocations and realloc growth alike (the global allocator is `System`,
//! so the instance is called explicitly).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

use heapprobe::profile::{Options, View};
use heapprobe::Heapprobe;

static HEAP: Heapprobe<System> = Heapprobe::new(System);

fn exact() -> Options {
    let mut options = Options::default();
    options.rate = 1;
    options
}

/// `n` blocks of `size` bytes; every other one freed at once.
#[inline(never)]
fn known_pattern(n: usize, size: usize) -> Vec<*mut u8> {
    let layout = Layout::from_size_align(size, 8).unwrap();
    let mut kept = Vec::new();
    for i in 0..n {
        // SAFETY: a valid layout; freed below or by `free_all` with it.
        let p = black_box(unsafe { HEAP.alloc(layout) });
        assert!(!p.is_null());
        if i % 2 == 0 {
            kept.push(p);
        } else {
            // SAFETY: allocated just above with `layout`.
            unsafe { HEAP.dealloc(p, layout) };
        }
    }
    kept
}

/// Grows each block from `from` to `to` bytes.
#[inline(never)]
fn grow_blocks(blocks: Vec<*mut u8>, from: usize, to: usize) -> Vec<*mut u8> {
    let layout = Layout::from_size_align(from, 8).unwrap();
    blocks
        .into_iter()
        .map(|p| {
            // SAFETY: each block came from `known_pattern` with `layout`.
            let q = black_box(unsafe { HEAP.realloc(p, layout, to) });
            assert!(!q.is_null());
            q
        })
        .collect()
}

fn free_all(blocks: Vec<*mut u8>, size: usize) {
    let layout = Layout::from_size_align(size, 8).unwrap();
    for p in blocks {
        // SAFETY: each came from `known_pattern` (or `grow_blocks`) with this size.
        unsafe { HEAP.dealloc(p, layout) };
    }
}

#[test]
fn a_running_thread_is_recorded_exactly_in_every_session() {
    std::thread::spawn(|| {
        // Bound with the profiler off; these blocks predate every session.
        free_all(known_pattern(10, 64), 64);
        for session in 0..3 {
            let old = known_pattern(200, 1024);
            HEAP.start_profiler(exact()).unwrap();
            let kept = known_pattern(100, 4096);
            // Blocks from before the session (not tracked): their growth is
            // sampled by the fast path's countdown itself.
            let grown = grow_blocks(old, 1024, 3072);
            let profile = HEAP.stop_profiler().unwrap();
            assert!(!HEAP.diverted(), "session {session}: stopped");
            let through = |view, f| profile.total_through(view, f);
            assert_eq!(through(View::AllocatedBytes, "known_pattern"), 409_600.0, "session {session}: {profile}");
            assert_eq!(through(View::AllocatedObjects, "known_pattern"), 100.0, "session {session}: {profile}");
            assert_eq!(through(View::InUseBytes, "known_pattern"), 204_800.0, "session {session}: {profile}");
            assert_eq!(through(View::AllocatedBytes, "grow_blocks"), 100.0 * 2048.0, "session {session}: {profile}");
            // Allocations while stopped, before the next session's start.
            free_all(known_pattern(50, 4096), 4096);
            free_all(kept, 4096);
            free_all(grown, 3072);
        }
        let s = HEAP.thread_stats();
        assert_eq!(s.current, 0);
        assert_eq!(s.allocations, 10 + 3 * (200 + 100 + 50));
    })
    .join()
    .unwrap();
}
