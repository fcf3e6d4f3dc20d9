//! dhat 0.3's heap profiler, running (testing mode: no file is written).
#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    heapprobe_bench_variants::main("dhat", || {
        let s = dhat::HeapStats::get();
        Some((s.total_blocks, s.total_blocks - s.curr_blocks as u64))
    });
}
