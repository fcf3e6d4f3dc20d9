//! pprof-alloc 0.6's `PprofAlloc` as its docs install it, profiling off.
use pprof_alloc::PprofAlloc;

#[global_allocator]
static GLOBAL: PprofAlloc = PprofAlloc::new();

fn main() {
    heapprobe_bench_variants::main("pprof_off", || None);
}
