//! The seed experiment as a benchmark: boxing protocol messages through a
//! pool allocator or through the global allocator, each bare and wrapped by
//! heapprobe (`Local<Pool>`; `Heapprobe<System>` as the global allocator),
//! side by side in one run.
//!
//! ```text
//! cargo bench --bench local               # 41 rounds of 200,000 messages
//! cargo bench --bench local -- 11 50000   # ROUNDS MESSAGES
//! ```
//!
//! Each round runs the four variants back to back, in an order that
//! rotates from round to round; ratios are taken within a round (this kind
//! of machine drifts by ±30% between minutes) and the median over rounds is
//! reported, with the median time per message.
//!
//! One process has one `#[global_allocator]`: this one is [`Switch`], which
//! forwards to `System` or to a `Heapprobe<System>` after one relaxed load.
//! Both global variants pay that load, so their ratio is what heapprobe adds.

#[path = "../examples/support/pool.rs"]
mod pool;
#[path = "../examples/support/protocol.rs"]
mod protocol;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use allocator_api2::alloc::Global;
use heapprobe::{Heapprobe, Local};
use pool::Pool;
use protocol::{exchange, IN_FLIGHT};

static WRAPPED: AtomicBool = AtomicBool::new(false);
static HEAPPROBE: Heapprobe<System> = Heapprobe::new(System);

/// The global allocator: `System`, or `HEAPPROBE` while [`WRAPPED`] is set.
/// Switched only between runs of the workload; blocks allocated through one
/// and freed through the other are sound (both end in `System`).
struct Switch;

#[global_allocator]
static GLOBAL: Switch = Switch;

// SAFETY: forwards every call unchanged to `System` or to a wrapper of it.
unsafe impl GlobalAlloc for Switch {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe {
            if WRAPPED.load(Relaxed) {
                HEAPPROBE.alloc(layout)
            } else {
                System.alloc(layout)
            }
        }
    }
    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe {
            if WRAPPED.load(Relaxed) {
                HEAPPROBE.dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }
    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe {
            if WRAPPED.load(Relaxed) {
                HEAPPROBE.realloc(ptr, layout, new_size)
            } else {
                System.realloc(ptr, layout, new_size)
            }
        }
    }
}

const NAMES: [&str; 4] = ["pool, bare", "pool, Local<Pool>", "global System, bare", "global Heapprobe<System>"];

/// Runs variant `v` on `messages` messages; returns ns per message.
fn run(v: usize, messages: usize, pool: &Pool<32>, local: &Local<Pool<32>>) -> f64 {
    WRAPPED.store(v == 3, Relaxed);
    let start = Instant::now();
    let sum = match v {
        0 => exchange(pool, messages),
        1 => exchange(local, messages),
        _ => exchange(Global, messages),
    };
    let ns = start.elapsed().as_nanos() as f64 / messages as f64;
    WRAPPED.store(false, Relaxed);
    black_box(sum);
    ns
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; numbers are ours.
    let numbers: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rounds = numbers.first().copied().unwrap_or(41);
    let messages = numbers.get(1).copied().unwrap_or(200_000);
    let pool = Pool::<32>::new(IN_FLIGHT + 1);
    let local = Local::new(Pool::<32>::new(IN_FLIGHT + 1));

    // The counters are right before anything is timed.
    let before = HEAPPROBE.stats();
    run(3, 1000, &pool, &local);
    let global = HEAPPROBE.stats() - before;
    assert_eq!((global.allocations, global.deallocations), (1000, 1000), "the switch routes to Heapprobe");
    run(1, 1000, &pool, &local);
    assert_eq!((local.stats().allocations, local.stats().peak), (1000, (IN_FLIGHT + 1) * 24));

    for v in 0..4 {
        run(v, messages / 10, &pool, &local); // warm-up
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); 4];
    let mut pool_ratio = Vec::new();
    let mut global_ratio = Vec::new();
    let mut wrapped_ratio = Vec::new();
    let mut bare_ratio = Vec::new();
    for round in 0..rounds {
        let mut t = [0.0; 4];
        for i in 0..4 {
            let v = (round + i) % 4;
            t[v] = run(v, messages, &pool, &local);
        }
        for v in 0..4 {
            times[v].push(t[v]);
        }
        pool_ratio.push(t[1] / t[0]);
        global_ratio.push(t[3] / t[2]);
        bare_ratio.push(t[0] / t[2]);
        wrapped_ratio.push(t[1] / t[3]);
    }
    println!("{rounds} rounds of {messages} messages ({IN_FLIGHT} in flight), medians:");
    println!("| variant | ns per message (alloc + free) |");
    println!("|---|---:|");
    for v in 0..4 {
        println!("| {} | {:.2} |", NAMES[v], median(times[v].clone()));
    }
    println!();
    println!(
        "what heapprobe adds: Local<Pool> / pool {:.2}×, Heapprobe<System> / System {:.2}×",
        median(pool_ratio),
        median(global_ratio)
    );
    println!("pool / global: bare {:.2}×, both wrapped {:.2}×", median(bare_ratio), median(wrapped_ratio));
}
