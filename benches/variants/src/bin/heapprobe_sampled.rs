//! `Heapprobe<System>` with the in-process profiler on at its default rate
//! (512 KiB), started before the workload.
use heapprobe::profile::Options;
use heapprobe::Heapprobe;
use std::alloc::System;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

fn main() {
    GLOBAL.start_profiler(Options::default()).expect("the profiler starts");
    heapprobe_bench_variants::main("heapprobe_sampled", || {
        let s = GLOBAL.thread_stats();
        Some((s.allocations as u64, s.deallocations as u64))
    });
    let profile = GLOBAL.stop_profiler().expect("the profiler ran");
    eprintln!("{} samples", profile.samples());
}
