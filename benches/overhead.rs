//! Allocator overhead, side by side in one run:
//!
//! - `system`: plain [`System`];
//! - `heapprobe`: [`Heapprobe<System>`] with this crate's default features
//!   (USDT probes compiled in, nobody tracing them, so each is a `nop`);
//! - `heapster_full`: `heapster::Heapster<System>` with heapster's `full`
//!   features (counters, histograms, current/peak use, realloc moves);
//! - `stats_alloc`: `stats_alloc::StatsAlloc<System>`.
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench overhead
//! ```
//!
//! (about a minute and a half on a quiet 2-core machine; criterion's usual
//! flags such as `--measurement-time` and a name filter work, except that
//! the `two_threads_*` and `hashmap_*` groups pin their own sample size).
//!
//! # Design
//!
//! A process has one `#[global_allocator]`, so this binary installs
//! [`Switch`], which reads [`MODE`] (one `Relaxed` load) on every call and
//! forwards to one of four statics. All four variants pay that same load and
//! branch, `system` included, so the ratios between them measure only what
//! each wrapper adds on top of `System`.
//!
//! The mode is changed only at the start of a benchmark function, before
//! criterion runs its routine, and never while a workload is running. Blocks
//! that outlive a switch (criterion's own bookkeeping, for instance) may be
//! allocated through one wrapper and freed through another. That is sound,
//! because every wrapper hands each call unchanged to `System`, so the
//! block is always freed by the allocator that made it; only the wrappers'
//! counters may skew, and nothing here reads them except [`check_routing`],
//! which compares counters before and after its own allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode};
use heapprobe::Heapprobe;
use heapster::Heapster;

const SYSTEM_MODE: u8 = 0;
const HEAPPROBE_MODE: u8 = 1;
const HEAPSTER_MODE: u8 = 2;
const STATS_ALLOC_MODE: u8 = 3;

/// The variants, in the order each group runs them: (mode, function name).
const VARIANTS: [(u8, &str); 4] = [
    (SYSTEM_MODE, "system"),
    (HEAPPROBE_MODE, "heapprobe"),
    (HEAPSTER_MODE, "heapster_full"),
    (STATS_ALLOC_MODE, "stats_alloc"),
];

/// Which allocator [`Switch`] forwards to. Written only by [`select`].
static MODE: AtomicU8 = AtomicU8::new(SYSTEM_MODE);

static SYSTEM: System = System;
static HEAPPROBE: Heapprobe<System> = Heapprobe::new(System);
// Heapster keeps its counters in process-global statics, so this instance is
// only a handle; `Heapster::new` is a `const fn`.
static HEAPSTER: Heapster<System> = Heapster::new(System);
// `StatsAlloc::new` is `const` only with stats_alloc's `nightly` feature;
// `system()` is `const` on stable.
static STATS_ALLOC: stats_alloc::StatsAlloc<System> = stats_alloc::StatsAlloc::system();

/// The global allocator: forwards every call to the allocator [`MODE`] picks.
struct Switch;

#[global_allocator]
static GLOBAL: Switch = Switch;

// SAFETY: every method forwards its arguments unchanged to the same method of
// one of four allocators, each of which ends in `System` with the same
// arguments. So any block, whichever variant allocated it, was allocated by
// `System` with the caller's layout, and freeing or reallocating it through
// any variant hands it back to `System` with that layout: the `GlobalAlloc`
// contract holds even across a change of `MODE`.
unsafe impl GlobalAlloc for Switch {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller meets `alloc`'s contract; forwarded unchanged.
        unsafe {
            match MODE.load(Relaxed) {
                HEAPPROBE_MODE => HEAPPROBE.alloc(layout),
                HEAPSTER_MODE => HEAPSTER.alloc(layout),
                STATS_ALLOC_MODE => STATS_ALLOC.alloc(layout),
                _ => SYSTEM.alloc(layout),
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller meets `alloc_zeroed`'s contract; forwarded unchanged.
        unsafe {
            match MODE.load(Relaxed) {
                HEAPPROBE_MODE => HEAPPROBE.alloc_zeroed(layout),
                HEAPSTER_MODE => HEAPSTER.alloc_zeroed(layout),
                STATS_ALLOC_MODE => STATS_ALLOC.alloc_zeroed(layout),
                _ => SYSTEM.alloc_zeroed(layout),
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller guarantees `ptr` came from this allocator with
        // `layout`, hence from `System` with `layout` (see the impl's comment).
        unsafe {
            match MODE.load(Relaxed) {
                HEAPPROBE_MODE => HEAPPROBE.dealloc(ptr, layout),
                HEAPSTER_MODE => HEAPSTER.dealloc(ptr, layout),
                STATS_ALLOC_MODE => STATS_ALLOC.dealloc(ptr, layout),
                _ => SYSTEM.dealloc(ptr, layout),
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller meets `realloc`'s contract for `ptr`, `layout`
        // and `new_size`; `ptr` came from `System` (see the impl's comment).
        unsafe {
            match MODE.load(Relaxed) {
                HEAPPROBE_MODE => HEAPPROBE.realloc(ptr, layout, new_size),
                HEAPSTER_MODE => HEAPSTER.realloc(ptr, layout, new_size),
                STATS_ALLOC_MODE => STATS_ALLOC.realloc(ptr, layout, new_size),
                _ => SYSTEM.realloc(ptr, layout, new_size),
            }
        }
    }
}

/// Routes allocator calls to `mode`'s allocator from now on. Call it only
/// between workloads (at the start of a benchmark function).
fn select(mode: u8) {
    MODE.store(mode, Relaxed);
}

/// Runs `routine` once per variant in `group`, switching allocators first.
fn each_variant(group: &mut BenchmarkGroup<'_, WallTime>, mut routine: impl FnMut(&mut criterion::Bencher<'_>)) {
    for (mode, name) in VARIANTS {
        group.bench_function(name, |b| {
            select(mode);
            routine(b);
        });
    }
    select(SYSTEM_MODE);
}

/// `n` allocations of 32 bytes, each freed before the next.
fn alloc_free_32b(n: usize) {
    for _ in 0..n {
        drop(black_box(Box::new([0u8; 32])));
    }
}

/// Pushes 1000 `u64` into a fresh `Vec` (one alloc, then a realloc at each
/// doubling), returned so the drop (one dealloc) is measured too.
fn vec_u64_growth_1000() -> Vec<u64> {
    let mut v = Vec::new();
    for i in 0..1000u64 {
        v.push(black_box(i));
    }
    v
}

/// 100_000 entries of `String` → 16 zeroed bytes (`alloc_zeroed`), plus the
/// table's own growth; returned so the drop is measured too.
fn hashmap_100k() -> HashMap<String, Vec<u8>> {
    let mut map = HashMap::new();
    for i in 0..100_000u32 {
        map.insert(i.to_string(), vec![0u8; 16]);
    }
    map
}

/// Fails loudly if [`Switch`] does not route calls where [`MODE`] says.
fn check_routing(_: &mut Criterion) {
    let one_alloc = || drop(black_box(Box::new(0u64)));

    select(HEAPPROBE_MODE);
    let before = HEAPPROBE.thread_stats().allocations;
    one_alloc();
    assert!(HEAPPROBE.thread_stats().allocations > before, "heapprobe not routed");

    select(HEAPSTER_MODE);
    let before = HEAPSTER.alloc_count();
    one_alloc();
    assert!(HEAPSTER.alloc_count() > before, "heapster not routed");

    select(STATS_ALLOC_MODE);
    let before = STATS_ALLOC.stats().allocations;
    one_alloc();
    assert!(STATS_ALLOC.stats().allocations > before, "stats_alloc not routed");

    select(SYSTEM_MODE);
    let (probe, heapster, stats) =
        (HEAPPROBE.stats().allocations, HEAPSTER.alloc_count(), STATS_ALLOC.stats().allocations);
    one_alloc();
    assert_eq!(
        (probe, heapster, stats),
        (HEAPPROBE.stats().allocations, HEAPSTER.alloc_count(), STATS_ALLOC.stats().allocations),
        "system mode reached a wrapper"
    );
}

fn bench_alloc_free_32b(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc_free_32b");
    each_variant(&mut group, |b| b.iter(|| alloc_free_32b(1000)));
    group.finish();
}

fn bench_vec_u64_growth_1000(c: &mut Criterion) {
    let mut group = c.benchmark_group("vec_u64_growth_1000");
    each_variant(&mut group, |b| b.iter(vec_u64_growth_1000));
    group.finish();
}

/// Alloc+free pairs per thread per iteration of `two_threads_alloc_free_32b`.
const PER_THREAD: usize = 100_000;
const THREADS: usize = 2;

fn bench_two_threads_alloc_free_32b(c: &mut Criterion) {
    let mut group = c.benchmark_group("two_threads_alloc_free_32b");
    // One iteration is ~milliseconds: take fewer, equal-sized samples.
    group.sampling_mode(SamplingMode::Flat).sample_size(20);
    each_variant(&mut group, |b| {
        // Both threads are spawned once per sample, warm up (so thread
        // start-up and any per-thread setup in a wrapper stay untimed), meet
        // at a barrier, and then time `iters` iterations each. The sample is
        // the slower thread's time: the wall time of the contended run.
        b.iter_custom(|iters| {
            let barrier = Barrier::new(THREADS);
            thread::scope(|s| {
                let workers: Vec<_> = (0..THREADS)
                    .map(|_| {
                        s.spawn(|| {
                            alloc_free_32b(1000);
                            barrier.wait();
                            let start = Instant::now();
                            for _ in 0..iters {
                                alloc_free_32b(PER_THREAD);
                            }
                            start.elapsed()
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().expect("worker panicked")).max().unwrap_or_default()
            })
        });
    });
    group.finish();
}

fn bench_hashmap_100k(c: &mut Criterion) {
    let mut group = c.benchmark_group("hashmap_100k");
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    each_variant(&mut group, |b| b.iter(hashmap_100k));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = check_routing,
        bench_alloc_free_32b,
        bench_vec_u64_growth_1000,
        bench_two_threads_alloc_free_32b,
        bench_hashmap_100k
}
criterion_main!(benches);
