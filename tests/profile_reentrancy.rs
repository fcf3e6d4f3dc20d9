//! The profiler's sampled path (stack capture, .eh_frame unwinding, table
//! updates) never re-enters the global allocator, at rate 1 on every path:
//! new threads, scopes, realloc, frees from other threads. The detector is
//! `Heapprobe::reentrant_calls`, with a positive control.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

use heapprobe::profile::{Options, View};
use heapprobe::Heapprobe;

thread_local! {
    static REENTER_ONCE: Cell<bool> = const { Cell::new(false) };
}

/// System, but able to allocate through the global allocator on request.
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
fn the_profiler_never_reenters_the_allocator_and_the_detector_works() {
    let mut options = Options::default();
    options.rate = 1;
    GLOBAL.start_profiler(options).unwrap();
    let (sender, receiver) = std::sync::mpsc::channel::<Vec<u8>>();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let sender = sender.clone();
            std::thread::spawn(move || {
                let mut v = Vec::new();
                for j in 0..100 {
                    v.push(vec![0u8; i + j]);
                    v.last_mut().unwrap().extend_from_slice(&[1, 2, 3]); // realloc
                }
                sender.send(vec![1u8; 100]).unwrap(); // freed by another thread
                let (_, scoped) = GLOBAL.profile(|| drop(black_box(vec![0u16; 10])));
                assert_eq!(scoped.total(View::AllocatedBytes), 20.0);
                let _ = std::panic::catch_unwind(|| GLOBAL.profile(|| panic!("inside a profiled scope")));
            })
        })
        .collect();
    drop(sender);
    for h in handles {
        h.join().unwrap();
    }
    let received: Vec<Vec<u8>> = receiver.iter().collect();
    drop(received);
    // SAFETY: valid layout, freed with the same layout.
    unsafe {
        let l = Layout::from_size_align(4096, 4096).unwrap();
        GLOBAL.dealloc(GLOBAL.alloc_zeroed(l), l);
    }
    let profile = GLOBAL.stop_profiler().unwrap();
    assert!(profile.samples() > 16 * 200, "{profile}");
    assert_eq!(GLOBAL.reentrant_calls(), 0, "the profiler re-entered the global allocator");

    // Positive control: with the profiler on, an inner allocator that
    // allocates through the global allocator from the slow path (here, a
    // measured scope), where the profiler's hooks run, is caught. (Outside
    // scopes a diverted call takes the lean path, which like the fast path
    // marks nothing around the inner call: such re-entry is counted, not
    // flagged. The profiler's sampled work runs marked on every path; the
    // library's unit test `profiler_busy_marks_the_thread` proves the lean
    // path's marking.)
    let mut options = Options::default();
    options.rate = 1;
    GLOBAL.start_profiler(options).unwrap();
    REENTER_ONCE.with(|r| r.set(true));
    let ((), scoped) = GLOBAL.measure(|| drop(black_box(Box::new([0u8; 48]))));
    assert_eq!((scoped.allocations, scoped.bytes_allocated), (2, 48 + 8));
    let profile = GLOBAL.stop_profiler().unwrap();
    assert_eq!(GLOBAL.reentrant_calls(), 2, "the re-entrant alloc and its dealloc");
    // The nested calls were not recorded by the profiler (its thread was busy).
    assert!(profile.total(View::AllocatedBytes) >= 48.0);
}
