//! The in-process profiler on a small workload, as a service would use it:
//! started from code at a sampling rate, stopped, and written out.
//!
//! ```text
//! cargo run --release --example profile --features pprof -- docs/profile.svg
//! ```
//!
//! Writes the flame graph of bytes allocated to the given path, the folded
//! stacks next to it (`.folded`), the pprof (`.pb.gz`), and prints the
//! profile's summary with its self-check line.

use std::alloc::System;
use std::collections::HashMap;
use std::hint::black_box;

use heapprobe::profile::{Options, View};
use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

#[inline(never)]
fn parse_records(n: usize) -> Vec<Vec<String>> {
    (0..n).map(|i| format!("{i},name-{i},{}", i * 7).split(',').map(str::to_owned).collect()).collect()
}

#[inline(never)]
fn build_index(records: &[Vec<String>]) -> HashMap<String, usize> {
    records.iter().enumerate().map(|(i, r)| (r[1].clone(), i)).collect()
}

#[inline(never)]
fn render_report(index: &HashMap<String, usize>) -> String {
    let mut out = String::new();
    for (name, i) in index {
        out.push_str(&format!("{name}: {i}\n"));
    }
    out
}

#[inline(never)]
fn cache_blocks(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8; 16 * 1024]).collect()
}

fn main() {
    let svg = std::env::args().nth(1).unwrap_or_else(|| String::from("profile.svg"));
    let mut options = Options::default();
    options.rate = 64 * 1024; // a denser sample than the default, for a short run
    options.seed = Some(1);
    GLOBAL.start_profiler(options).expect("the profiler starts");
    let mut kept = Vec::new();
    for _ in 0..20 {
        let records = parse_records(20_000);
        let index = build_index(&records);
        black_box(render_report(&index));
        kept.push(cache_blocks(64));
    }
    let profile = GLOBAL.stop_profiler().expect("the profiler ran");
    println!("{profile}");
    let stem = svg.strip_suffix(".svg").unwrap_or(&svg).to_owned();
    profile.write_folded(format!("{stem}.folded"), View::AllocatedBytes).expect("write the folded stacks");
    profile
        .write_flamegraph(
            &svg,
            View::AllocatedBytes,
            "heapprobe in-process profile: bytes allocated (examples/profile.rs)",
        )
        .expect("write the flame graph");
    #[cfg(feature = "pprof")]
    profile.write_pprof(format!("{stem}.pb.gz")).expect("write the pprof");
    println!("wrote {svg}, {stem}.folded");
    drop(kept);
}
