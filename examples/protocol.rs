//! The seed experiment: is a local pool allocator faster than the global
//! allocator for boxing protocol messages? Both are wrapped (the pool in
//! `heapprobe::Local`, the global allocator in `heapprobe::Heapprobe`), so
//! one run answers with calls, bytes, peak and time side by side, and the
//! heap summary at exit says what was left allocated, as valgrind would.
//!
//! ```text
//! cargo run --release --example protocol            # 1,000,000 messages
//! cargo run --release --example protocol -- 10000   # any count
//! valgrind cargo-built-binary 10000                 # compare the summaries
//! ```
//!
//! For timing ratios measured over interleaved rounds, with and without the
//! wrappers, run `cargo bench --bench local`.

#[path = "support/pool.rs"]
mod pool;
#[path = "support/protocol.rs"]
mod protocol;

use std::alloc::System;
use std::time::{Duration, Instant};

use allocator_api2::alloc::Global;
use heapprobe::{Heapprobe, Local, Stats};
use pool::Pool;
use protocol::{exchange, Message, IN_FLIGHT};

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

/// `1234567` as `1,234,567`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i != 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn row(name: &str, stats: &Stats, time: Duration, messages: usize) {
    let calls = stats.allocations + stats.deallocations + stats.reallocations;
    println!(
        "{name:<26} {:>11} {:>13} {:>9} {:>10.2} ms {:>8.1}",
        thousands(calls),
        thousands(stats.bytes_allocated),
        thousands(stats.peak),
        time.as_secs_f64() * 1e3,
        time.as_nanos() as f64 / messages as f64
    );
}

fn main() {
    GLOBAL.summary_at_exit();
    let messages: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse().unwrap_or_else(|_| panic!("usage: protocol [MESSAGES] (got {arg:?})")),
        None => 1_000_000,
    };

    // The pool's one chunk comes from the global allocator, before the clock starts.
    // One more block than messages in flight: the next message is boxed
    // before the one it replaces is freed.
    let pool = Local::new(Pool::<32>::new(IN_FLIGHT + 1));
    let start = Instant::now();
    let (pool_sum, global_during_pool) = GLOBAL.measure(|| exchange(&pool, messages));
    let pool_time = start.elapsed();

    let start = Instant::now();
    let (global_sum, global) = GLOBAL.measure(|| exchange(Global, messages));
    let global_time = start.elapsed();
    assert_eq!(pool_sum, global_sum, "both runs evaluate the same messages");

    println!(
        "{} protocol messages of {} bytes, {IN_FLIGHT} in flight, each boxed and freed:",
        thousands(messages),
        size_of::<Message>()
    );
    println!("{:<26} {:>11} {:>13} {:>9} {:>13} {:>8}", "allocator", "calls", "bytes", "peak B", "time", "ns/msg");
    row(&format!("pool (Local<Pool>, id {})", pool.id()), &pool.stats(), pool_time, messages);
    row("global (Heapprobe<System>)", &global, global_time, messages);
    println!(
        "global allocator calls during the pool run: {} (the pool's calls are counted in its Local only)",
        global_during_pool.allocations + global_during_pool.deallocations + global_during_pool.reallocations
    );
    println!("one run of each on this machine, wrappers included; `cargo bench --bench local` times them over interleaved rounds");
}
