//! The workloads of the instruction-count benchmark, shared by one binary per
//! allocator (`src/bin/*.rs`). `benches/instructions.rs` runs each binary
//! under `valgrind --tool=callgrind --toggle-collect=<workload>`, so only the
//! instructions executed inside the workload function (allocator included)
//! are counted.

use std::collections::HashMap;
use std::hint::black_box;

/// `n` allocations of 32 bytes (the malloc path: `Box::new` of a value, not
/// `alloc_zeroed`), each freed before the next.
#[no_mangle]
#[inline(never)]
pub extern "C" fn hp_bench_alloc_free_32b(n: u64) {
    alloc_free_32b(n);
}

/// [`hp_bench_alloc_free_32b`] on a thread started after 1000 others that
/// are still alive (each allocated, so each holds whatever a wrapper keeps
/// per thread): what the 1001st thread pays.
#[no_mangle]
#[inline(never)]
pub extern "C" fn hp_bench_alloc_free_32b_thread_1001(n: u64) {
    // Not the same code as `hp_bench_alloc_free_32b`, which the linker would
    // otherwise fold into one function (one name for callgrind).
    black_box(1001);
    alloc_free_32b(n);
}

#[inline(always)]
fn alloc_free_32b(n: u64) {
    for _ in 0..n {
        // A non-zero value, read through `black_box`: with `[0u8; 32]` LLVM
        // turns the allocation into `alloc_zeroed` (calloc, which bypasses
        // glibc's tcache and costs twice as much).
        drop(black_box(Box::new(black_box([1u8; 32]))));
    }
}

/// `n` times: push 1000 `u64` into a fresh `Vec` (one alloc, then a realloc
/// at each doubling), then drop it.
#[no_mangle]
#[inline(never)]
pub extern "C" fn hp_bench_vec_growth_1000(n: u64) {
    for _ in 0..n {
        let mut v = Vec::new();
        for i in 0..1000u64 {
            v.push(black_box(i));
        }
        drop(black_box(v));
    }
}

/// `n` times: a `HashMap<String, Vec<u8>>` of 10 000 entries (each a short
/// string and 16 zeroed bytes, `alloc_zeroed`), plus the table's own growth,
/// built and dropped.
#[no_mangle]
#[inline(never)]
pub extern "C" fn hp_bench_hashmap_10k(n: u64) {
    for _ in 0..n {
        let mut map = HashMap::new();
        for i in 0..10_000u32 {
            map.insert(i.to_string(), vec![0u8; 16]);
        }
        drop(black_box(map));
    }
}

/// Allocator calls one repetition of each workload makes, for the variants
/// that can count them (the routing check): (allocations incl. zeroed,
/// deallocations, reallocations).
pub fn expected_calls(workload: &str) -> Option<(u64, u64, u64)> {
    match workload {
        "alloc_free_32b" | "alloc_free_32b_thread_1001" => Some((1, 1, 0)),
        _ => None,
    }
}

/// The command line of every variant: `VARIANT WORKLOAD N`. Runs the workload
/// `N` times and prints one line. `calls` reads the variant's own counters
/// (allocations, deallocations), if it keeps any, so the runner can check
/// that the calls really went through it.
pub fn main(variant: &str, calls: impl Fn() -> Option<(u64, u64)> + Sync) {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: {variant} alloc_free_32b|alloc_free_32b_thread_1001|vec_growth_1000|hashmap_10k N");
        std::process::exit(2)
    };
    let (Some(workload), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<u64>().ok())) else { usage() };
    let workload = workload.as_str();
    let work: extern "C" fn(u64) = match workload {
        "alloc_free_32b" => hp_bench_alloc_free_32b,
        "alloc_free_32b_thread_1001" => hp_bench_alloc_free_32b_thread_1001,
        "vec_growth_1000" => hp_bench_vec_growth_1000,
        "hashmap_10k" => hp_bench_hashmap_10k,
        _ => usage(),
    };
    // The calls are checked on the thread that makes them.
    let run = || {
        let before = calls();
        work(n);
        let after = calls();
        match (before, after, expected_calls(workload)) {
            (Some((a0, d0)), Some((a1, d1)), Some((a, d, _))) => {
                let got = (a1 - a0, d1 - d0);
                if got != (a * n, d * n) {
                    eprintln!(
                        "{variant}: {workload} ×{n} made {got:?} (allocations, deallocations), expected {:?}",
                        (a * n, d * n)
                    );
                    std::process::exit(1);
                }
                println!("{variant} {workload} {n} calls-checked");
            }
            _ => println!("{variant} {workload} {n}"),
        }
    };
    if workload == "alloc_free_32b_thread_1001" {
        on_thread_1001(run);
    } else {
        run();
    }
}

/// Runs `work` on a new thread while 1000 others, started first, are alive
/// and have each allocated; returns when all have ended.
fn on_thread_1001(work: impl FnOnce() + Send) {
    use std::sync::Barrier;
    const OTHERS: usize = 1000;
    let started = Barrier::new(OTHERS + 1);
    let finished = Barrier::new(OTHERS + 1);
    std::thread::scope(|s| {
        for _ in 0..OTHERS {
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn_scoped(s, || {
                    black_box(Box::new(1u64));
                    started.wait();
                    finished.wait();
                })
                .expect("cannot spawn a thread");
        }
        started.wait();
        std::thread::Builder::new().spawn_scoped(s, work).expect("cannot spawn a thread").join().unwrap();
        finished.wait();
    });
}
