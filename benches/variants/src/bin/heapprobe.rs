//! `Heapprobe<System>` with the default features (USDT probes, untraced).
use heapprobe::Heapprobe;
use std::alloc::System;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

fn main() {
    heapprobe_bench_variants::main("heapprobe", || {
        let s = GLOBAL.thread_stats();
        Some((s.allocations as u64, s.deallocations as u64))
    });
}
