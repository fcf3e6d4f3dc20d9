//! `heapprobe::Local`: a local allocator's calls counted exactly, checked
//! against what a counting inner allocator saw itself, with hashbrown and
//! bumpalo on top; measured scopes; threads; and what reaches the global
//! wrapper when the inner allocator uses the global allocator.

use std::alloc::{Layout, System};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Barrier};

use allocator_api2::alloc::{AllocError, Allocator, Global};
use heapprobe::{Heapprobe, Local, Stats};

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

/// What an inner allocator saw, counted by itself.
#[derive(Default, Debug)]
struct Seen {
    allocs: AtomicUsize,
    alloc_bytes: AtomicUsize,
    deallocs: AtomicUsize,
    dealloc_bytes: AtomicUsize,
    grows: AtomicUsize,
    grown_bytes: AtomicUsize,
    shrinks: AtomicUsize,
    shrunk_bytes: AtomicUsize,
    moved: AtomicUsize,
    failures: AtomicUsize,
    net: AtomicI64,
    peak: AtomicI64,
}

impl Seen {
    fn add_net(&self, delta: i64) {
        let net = self.net.fetch_add(delta, Relaxed) + delta;
        self.peak.fetch_max(net, Relaxed);
    }

    /// The `Stats` the wrapper must report for these calls.
    fn expected(&self) -> (usize, usize, usize, usize, usize, usize, usize, usize, usize, usize) {
        let n = |a: &AtomicUsize| a.load(Relaxed);
        (
            n(&self.allocs),
            n(&self.deallocs),
            n(&self.grows) + n(&self.shrinks),
            n(&self.alloc_bytes) + n(&self.grown_bytes),
            n(&self.dealloc_bytes) + n(&self.shrunk_bytes),
            n(&self.grows),
            n(&self.shrinks),
            n(&self.moved),
            n(&self.failures),
            self.net.load(Relaxed).max(0) as usize,
        )
    }
}

fn measured(s: &Stats) -> (usize, usize, usize, usize, usize, usize, usize, usize, usize, usize) {
    (
        s.allocations,
        s.deallocations,
        s.reallocations,
        s.bytes_allocated,
        s.bytes_deallocated,
        s.reallocations_grown,
        s.reallocations_shrunk,
        s.reallocations_moved,
        s.allocation_failures,
        s.current,
    )
}

/// A mock inner allocator: forwards to `A` and counts every call itself,
/// each method as the one it is (its `grow` is `A`'s `grow`, not the
/// trait's default allocate + copy + deallocate on itself).
struct Counting<A> {
    inner: A,
    seen: Seen,
    /// Requests of this size fail, as from an exhausted allocator.
    failing_size: usize,
}

impl<A> Counting<A> {
    fn new(inner: A) -> Self {
        Self { inner, seen: Seen::default(), failing_size: usize::MAX }
    }
}

// SAFETY: forwards every call to `A` unchanged, except that it fails
// (allowed) for one size.
unsafe impl<A: Allocator> Allocator for Counting<A> {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == self.failing_size {
            self.seen.failures.fetch_add(1, Relaxed);
            return Err(AllocError);
        }
        let p = self.inner.allocate(layout)?;
        self.seen.allocs.fetch_add(1, Relaxed);
        self.seen.alloc_bytes.fetch_add(layout.size(), Relaxed);
        self.seen.add_net(layout.size() as i64);
        Ok(p)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        self.seen.deallocs.fetch_add(1, Relaxed);
        self.seen.dealloc_bytes.fetch_add(layout.size(), Relaxed);
        self.seen.add_net(-(layout.size() as i64));
        // SAFETY: forwarded unchanged.
        unsafe { self.inner.deallocate(ptr, layout) }
    }

    unsafe fn grow(&self, ptr: NonNull<u8>, old: Layout, new: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if new.size() == self.failing_size {
            self.seen.failures.fetch_add(1, Relaxed);
            return Err(AllocError);
        }
        // SAFETY: forwarded unchanged.
        let p = unsafe { self.inner.grow(ptr, old, new) }?;
        self.seen.grows.fetch_add(1, Relaxed);
        self.seen.grown_bytes.fetch_add(new.size() - old.size(), Relaxed);
        if p.cast::<u8>() != ptr {
            self.seen.moved.fetch_add(1, Relaxed);
        }
        self.seen.add_net((new.size() - old.size()) as i64);
        Ok(p)
    }

    unsafe fn grow_zeroed(&self, ptr: NonNull<u8>, old: Layout, new: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if new.size() == self.failing_size {
            self.seen.failures.fetch_add(1, Relaxed);
            return Err(AllocError);
        }
        // SAFETY: forwarded unchanged.
        let p = unsafe { self.inner.grow_zeroed(ptr, old, new) }?;
        self.seen.grows.fetch_add(1, Relaxed);
        self.seen.grown_bytes.fetch_add(new.size() - old.size(), Relaxed);
        if p.cast::<u8>() != ptr {
            self.seen.moved.fetch_add(1, Relaxed);
        }
        self.seen.add_net((new.size() - old.size()) as i64);
        Ok(p)
    }

    unsafe fn shrink(&self, ptr: NonNull<u8>, old: Layout, new: Layout) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: forwarded unchanged.
        let p = unsafe { self.inner.shrink(ptr, old, new) }?;
        self.seen.shrinks.fetch_add(1, Relaxed);
        self.seen.shrunk_bytes.fetch_add(old.size() - new.size(), Relaxed);
        if p.cast::<u8>() != ptr {
            self.seen.moved.fetch_add(1, Relaxed);
        }
        self.seen.add_net(-((old.size() - new.size()) as i64));
        Ok(p)
    }
}

fn assert_same(stats: &Stats, seen: &Seen, what: &str) {
    assert_eq!(measured(stats), seen.expected(), "{what}: the wrapper's Stats vs the mock's counts\n{stats}\n{seen:?}");
    assert_eq!(stats.peak as i64, seen.peak.load(Relaxed), "{what}: peak\n{stats}");
    assert_same_counts(stats, seen, what);
}

/// As [`assert_same`] but for the peak, which is exact only while one
/// thread at a time uses an instance.
fn assert_same_counts(stats: &Stats, seen: &Seen, what: &str) {
    assert_eq!(measured(stats), seen.expected(), "{what}: the wrapper's Stats vs the mock's counts\n{stats}\n{seen:?}");
    assert_eq!(stats.size_histogram.total() as usize, seen.allocs.load(Relaxed), "{what}: histogram");
}

/// hashbrown 0.16 through `&Local`: 1000 inserts, then drop. The wrapper's
/// figures are the mock's, and the global wrapper sees the same calls once
/// each (the mock allocates through `Global`): never twice.
#[test]
fn hashbrown_counts_equal_what_the_inner_allocator_saw() {
    let local = Local::new(Counting::new(Global));
    let ((), global) = GLOBAL.measure(|| {
        let mut map = hashbrown::HashMap::new_in(&local);
        for i in 0..1000u64 {
            map.insert(i, i * 2);
        }
        assert_eq!(map[&999], 1998);
        drop(map);
    });
    let stats = local.stats();
    let seen = &local.inner().seen;
    assert_same(&stats, seen, "hashbrown");
    // Known shape: a table that doubled from 4 to 2048 buckets (1024 hold
    // at most 7/8 of that, 896 entries), every one allocated anew and freed.
    assert_eq!(stats.allocations, 10, "{stats}");
    assert_eq!((stats.deallocations, stats.current, stats.reallocations), (10, 0, 0));
    assert!(stats.bytes_allocated > 16 * 1000, "{stats}");
    // Every inner call reached the global wrapper exactly once.
    assert_eq!((global.allocations, global.deallocations), (stats.allocations, stats.deallocations));
    assert_eq!(global.bytes_allocated, stats.bytes_allocated);
}

/// bumpalo's `Bump` (through `&Bump`, which implements allocator-api2 0.2's
/// `Allocator`) under the same mock and the same map, then a vector that
/// bumpalo grows in place and shrinks.
#[test]
fn bumpalo_counts_equal_what_the_inner_allocator_saw() {
    let mut bump = bumpalo::Bump::new();
    let local = Local::new(Counting::new(&bump));
    let ((), global) = GLOBAL.measure(|| {
        let mut map = hashbrown::HashMap::new_in(&local);
        for i in 0..1000u64 {
            map.insert(i, i * 2);
        }
        drop(map);
        let mut v = allocator_api2::vec::Vec::with_capacity_in(10, &local);
        v.extend(0..100u32);
        v.truncate(3);
        v.shrink_to_fit();
        assert_eq!(v, [0, 1, 2]);
    });
    let stats = local.stats();
    let seen = &local.inner().seen;
    assert_same(&stats, seen, "bumpalo");
    assert_eq!(stats.allocations, 10 + 1, "{stats}"); // the map's tables, the vector
    assert!(stats.reallocations_grown >= 1 && stats.reallocations_shrunk == 1, "{stats}");
    assert_eq!(stats.current, 0, "{stats}");
    // The global wrapper saw bumpalo's chunks only, never the objects.
    assert!(global.allocations >= 1 && global.allocations < stats.allocations, "{global}");
    assert_eq!(global.allocations, bump.iter_allocated_chunks().count(), "{global}");
}

/// Every method, with its counts, sizes, alignment and failures.
#[test]
fn every_method_is_forwarded_and_counted() {
    let mut counting = Counting::new(Global);
    counting.failing_size = 4096;
    let local = Local::new(counting);
    let l = |size, align| Layout::from_size_align(size, align).unwrap();
    // SAFETY: each block is used with the layout it currently has, then freed.
    unsafe {
        let a = local.allocate(l(100, 8)).unwrap().cast::<u8>();
        let z = local.allocate_zeroed(l(64, 64)).unwrap();
        assert!(z.as_ref().iter().take(64).all(|b| *b == 0));
        let a = local.grow(a, l(100, 8), l(300, 8)).unwrap().cast::<u8>();
        let a = local.shrink(a, l(300, 8), l(50, 8)).unwrap().cast::<u8>();
        let a = local.grow_zeroed(a, l(50, 8), l(80, 8)).unwrap().cast::<u8>();
        assert!(local.allocate(l(4096, 8)).is_err());
        assert!(local.grow(a, l(80, 8), l(4096, 8)).is_err());
        let empty = local.allocate(l(0, 1)).unwrap().cast::<u8>();
        local.deallocate(empty, l(0, 1));
        local.deallocate(a, l(80, 8));
        local.deallocate(z.cast(), l(64, 64));
    }
    let s = local.stats();
    assert_same(&s, &local.inner().seen, "every method");
    assert_eq!((s.allocations, s.deallocations, s.reallocations, s.allocation_failures), (3, 3, 3, 2));
    assert_eq!((s.bytes_allocated, s.bytes_deallocated), (100 + 64 + 200 + 30, 80 + 64 + 250));
    assert_eq!((s.reallocations_grown, s.bytes_grown, s.reallocations_shrunk, s.bytes_shrunk), (2, 230, 1, 250));
    assert_eq!((s.current, s.peak), (0, 364));
    assert_eq!(s.size_histogram.count_for(100), 2); // 100 and 64: [64, 128)
    assert_eq!(s.size_histogram.count_for(0), 1);
    assert_ne!(local.id(), Local::new(Global).id(), "instance ids are unique");
}

/// A scope counts only the calling thread's calls to its own instance,
/// while another thread hammers the same instance; it nests, and a panic
/// inside ends it cleanly.
#[test]
fn measured_scopes_are_exact_per_thread_and_instance() {
    let local = Arc::new(Local::new(Global));
    let other = Local::new(Global);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Arc::new(Barrier::new(2));
    let noise = {
        let (local, stop, started) = (local.clone(), stop.clone(), started.clone());
        std::thread::spawn(move || {
            let mut first = true;
            while !stop.load(Relaxed) {
                let v = allocator_api2::vec::Vec::<u8, _>::with_capacity_in(48, &*local);
                drop(std::hint::black_box(v));
                if std::mem::take(&mut first) {
                    started.wait();
                }
            }
        })
    };
    started.wait();
    for _ in 0..200 {
        let (outer_keep, outer) = local.measure(|| {
            let keep = allocator_api2::boxed::Box::new_in([7u8; 100], &*local);
            let ((), inner) = local.measure(|| {
                let v = allocator_api2::vec::Vec::<u64, _>::with_capacity_in(4, &*local);
                drop(v);
                let _ = allocator_api2::boxed::Box::new_in(1u32, &other);
            });
            assert_eq!((inner.allocations, inner.deallocations, inner.bytes_allocated), (1, 1, 32));
            assert_eq!((inner.current, inner.peak), (0, 32));
            keep
        });
        assert_eq!((outer.allocations, outer.deallocations, outer.bytes_allocated), (2, 1, 132));
        assert_eq!((outer.current, outer.peak), (100, 132));
        drop(outer_keep);
    }
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        local.measure(|| {
            let _b = allocator_api2::boxed::Box::new_in(5u64, &*local);
            panic!("inside a scope");
        })
    }));
    assert!(caught.is_err());
    let ((), after) = local.measure(|| drop(allocator_api2::boxed::Box::new_in(5u16, &*local)));
    assert_eq!((after.allocations, after.deallocations, after.bytes_allocated), (1, 1, 2));
    stop.store(true, Relaxed);
    noise.join().unwrap();
    assert_eq!(other.stats().allocations, 200);
}

/// Several threads share one instance (one owner, the others through the
/// shared counters): the totals are exactly what the mock saw.
#[test]
fn threads_sharing_an_instance_are_counted_exactly() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 2000;
    let local = Arc::new(Local::new(Counting::new(Global)));
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (local, start) = (local.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut keep = allocator_api2::vec::Vec::new_in(&*local);
                for i in 0..ROUNDS {
                    let mut v = allocator_api2::vec::Vec::<u8, _>::with_capacity_in(8 + t * 8, &*local);
                    v.extend(std::iter::repeat(1).take(20 + i % 7));
                    if i % 100 == 0 {
                        keep.push(v);
                    }
                }
                keep.len()
            })
        })
        .collect();
    let kept: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(kept, THREADS * ROUNDS / 100);
    let stats = local.stats();
    assert_same_counts(&stats, &local.inner().seen, "4 threads");
    // Each thread: ROUNDS vectors, plus its `keep` vector.
    assert_eq!(stats.allocations, THREADS * (ROUNDS + 1), "{stats}");
}

/// The same `Local` implements the `Allocator` of allocator-api2 0.2, 0.3
/// and 0.4 (features `allocator-api2`, `allocator-api2-03`,
/// `allocator-api2-04`): each version's own `Vec`, growing by `grow`.
#[test]
fn every_allocator_api2_version_is_counted_the_same() {
    macro_rules! pushes {
        ($api:ident) => {{
            let local = Local::new($api::alloc::Global);
            let mut v = $api::vec::Vec::<u64, _>::new_in(&local);
            for i in 0..100 {
                v.push(i);
            }
            let grown = local.stats();
            drop(v);
            (grown, local.stats())
        }};
    }
    for (version, (grown, freed)) in
        [("0.2", pushes!(allocator_api2)), ("0.3", pushes!(allocator_api2_03)), ("0.4", pushes!(allocator_api2_04))]
    {
        // Capacity 4, then doubled five times to 128 elements of 8 bytes.
        assert_eq!(
            (grown.allocations, grown.reallocations_grown, grown.bytes_allocated, grown.current),
            (1, 5, 1024, 1024),
            "allocator-api2 {version}: {grown}"
        );
        assert_eq!((freed.deallocations, freed.current, freed.peak), (1, 0, 1024), "allocator-api2 {version}");
    }
}
