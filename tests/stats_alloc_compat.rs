//! Code written for stats_alloc compiles and runs with only its `use` line
//! changed (this file is stats_alloc's README example with that one change).
//!
//! `Region` counts every thread, as stats_alloc's does, so this binary has
//! one test: a second one (or the harness spawning its thread) allocates
//! while the region is open, and made the exact asserts fail 1 run in 6.

use heapprobe::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn region_example_from_stats_alloc() {
    let mut reg = Region::new(GLOBAL);
    let x: Vec<u8> = Vec::with_capacity(1024);
    let change = reg.change();
    assert_eq!(change.allocations, 1);
    assert_eq!(change.bytes_allocated, 1024);
    assert_eq!(change.deallocations, 0);
    drop(x);
    let change = reg.change_and_reset();
    assert_eq!((change.allocations, change.deallocations, change.bytes_deallocated), (1, 1, 1024));
    assert_eq!(reg.change().allocations, 0);
    assert_eq!(reg.initial(), reg.initial());
    reg.reset();
    let _ = StatsAlloc::system();
    let _: heapprobe::Stats = GLOBAL.stats();
    memory_measured_takes_the_stats_alloc_static_and_counts_only_this_thread();
}

fn memory_measured_takes_the_stats_alloc_static_and_counts_only_this_thread() {
    let stats = heapprobe::memory_measured(GLOBAL, || drop(Vec::<u8>::with_capacity(1024)));
    assert_eq!((stats.allocations, stats.deallocations, stats.bytes_allocated), (1, 1, 1024));
    assert_eq!(stats.size_histogram.count_for(1024), 1);
}
