//! Plain `System`: the baseline.
use std::alloc::System;

#[global_allocator]
static GLOBAL: System = System;

fn main() {
    heapprobe_bench_variants::main("system", || None);
}
