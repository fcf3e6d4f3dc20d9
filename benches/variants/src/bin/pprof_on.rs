//! pprof-alloc 0.6 with pprof on at its default sample rate.
use pprof_alloc::PprofAlloc;

#[global_allocator]
static GLOBAL: PprofAlloc = PprofAlloc::new().with_pprof();

fn main() {
    heapprobe_bench_variants::main("pprof_on", || None);
}
