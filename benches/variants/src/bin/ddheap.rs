//! Datadog's libdd-profiling-heap-allocator 1.2 (sampling on, its default).
use libdd_profiling_heap_allocator::SampledAllocator;
use std::alloc::System;

#[global_allocator]
static GLOBAL: SampledAllocator<System> = SampledAllocator::<System>::DEFAULT;

fn main() {
    heapprobe_bench_variants::main("ddheap", || None);
}
