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

/// `n` allocations of 32 bytes, each freed before the next: the malloc
/// path. (With `Box::new([0u8; 32])` LLVM calls `alloc_zeroed`, which is
/// calloc, and glibc's calloc bypasses its thread cache.)
fn alloc_free_32b(n: usize) {
    for _ in 0..n {
        drop(black_box(Box::new(black_box([1u8; 32]))));
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
        b.iter_custom(two_threads);
    });
    group.finish();
}

/// `iters` iterations of [`PER_THREAD`] 32-byte alloc+free pairs on each of
/// [`THREADS`] threads at once. Both threads are spawned, warm up (so thread
/// start-up and any per-thread setup in a wrapper stay untimed), meet at a
/// barrier, then time their work. Returns the slower thread's time: the wall
/// time of the contended run.
fn two_threads(iters: u64) -> Duration {
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
}

fn bench_hashmap_100k(c: &mut Criterion) {
    let mut group = c.benchmark_group("hashmap_100k");
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    each_variant(&mut group, |b| b.iter(hashmap_100k));
    group.finish();
}

/// One workload of the interleaved table: its README label, how many rounds
/// to take, and one timed run of it.
struct Workload {
    label: &'static str,
    rounds: usize,
    run: fn() -> Duration,
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        label: "(1) alloc+free 32 B, ×10 000",
        rounds: 41,
        run: || {
            let start = Instant::now();
            alloc_free_32b(10_000);
            start.elapsed()
        },
    },
    Workload {
        label: "(2) `Vec<u64>` growth to 1000, ×100",
        rounds: 41,
        run: || {
            let start = Instant::now();
            for _ in 0..100 {
                drop(black_box(vec_u64_growth_1000()));
            }
            start.elapsed()
        },
    },
    Workload { label: "(3) workload 1 on 2 threads, ×100 000 each", rounds: 21, run: || two_threads(1) },
    Workload {
        label: "(4) `HashMap<String, Vec<u8>>` 100k built+dropped",
        rounds: 15,
        run: || {
            let start = Instant::now();
            drop(black_box(hashmap_100k()));
            start.elapsed()
        },
    },
];

/// Criterion runs the variants one after another, so on a machine whose
/// speed drifts (a shared VM) its per-variant times are not comparable. This
/// table is: each round runs every variant back to back (in a rotating
/// order), each variant's ratio to `system` is taken within the round, and
/// the table shows the median over rounds. It is printed as Markdown, ready
/// for the README.
fn interleaved_table(_: &mut Criterion) {
    println!("\ninterleaved medians (ratio to system within each round, then the median):\n");
    println!("| Workload | System | heapprobe | heapster `full` | stats_alloc |");
    println!("|---|---|---|---|---|");
    for workload in &WORKLOADS {
        (workload.run)(); // warm up
        let mut times = vec![Vec::new(); VARIANTS.len()];
        let mut ratios = vec![Vec::new(); VARIANTS.len()];
        for round in 0..workload.rounds {
            let mut this_round = [Duration::ZERO; VARIANTS.len()];
            for k in 0..VARIANTS.len() {
                let index = (round + k) % VARIANTS.len();
                select(VARIANTS[index].0);
                this_round[index] = (workload.run)();
            }
            select(SYSTEM_MODE);
            for (index, time) in this_round.iter().enumerate() {
                times[index].push(time.as_secs_f64());
                ratios[index].push(time.as_secs_f64() / this_round[0].as_secs_f64());
            }
        }
        let mut row = format!("| {} | {} |", workload.label, human(median(&mut times[0])));
        for index in 1..VARIANTS.len() {
            row += &format!(" {} ({:.2}×) |", human(median(&mut times[index])), median(&mut ratios[index]));
        }
        println!("{row}");
    }
    println!();
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn human(secs: f64) -> String {
    match secs {
        s if s >= 1e-3 => format!("{:.2} ms", s * 1e3),
        s => format!("{:.1} µs", s * 1e6),
    }
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
        bench_hashmap_100k,
        interleaved_table
}
criterion_main!(benches);
