//! `Heapprobe<System>` with the in-process profiler at rate 1 (every
//! allocation recorded with its stack: frame pointers where the build keeps
//! them, else `.eh_frame` through the `profile` feature).
use heapprobe::profile::Options;
use heapprobe::Heapprobe;
use std::alloc::System;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

fn main() {
    let mut options = Options::default();
    options.rate = 1;
    GLOBAL.start_profiler(options).expect("the profiler starts");
    heapprobe_bench_variants::main("heapprobe_exact", || {
        let s = GLOBAL.thread_stats();
        Some((s.allocations as u64, s.deallocations as u64))
    });
    let profile = GLOBAL.stop_profiler().expect("the profiler ran");
    eprintln!("{} samples, stacks by {}", profile.samples(), profile.unwinder());
}
