//! The test `cargo xtask trace --test it_works` traces (see the README).
//!
//! It allocates through functions with recognisable names, in amounts known
//! exactly, and checks those amounts with heapprobe's own counters, so the
//! flame graph has a ground truth: `build_inventory` allocates 100 blocks of
//! 4096 bytes, `render_report` a `Vec` of 50 `String`s and 50 strings of 64 bytes.

use std::alloc::System;
use std::hint::black_box;

use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

/// 100 boxed pages: 100 allocations of 4096 bytes.
#[inline(never)]
fn build_inventory() -> Vec<Box<[u8; 4096]>> {
    let mut pages = Vec::with_capacity(100);
    for i in 0..100 {
        pages.push(black_box(Box::new([i as u8; 4096])));
    }
    pages
}

/// 50 strings with 64 bytes of capacity each.
#[inline(never)]
fn render_report(pages: &[Box<[u8; 4096]>]) -> Vec<String> {
    let mut lines = Vec::with_capacity(50);
    for page in pages.iter().take(50) {
        let mut line = String::with_capacity(64);
        line.push_str(if page[0] % 2 == 0 { "even page" } else { "odd page" });
        lines.push(black_box(line));
    }
    lines
}

#[test]
fn it_works() {
    let (pages, inventory) = GLOBAL.measure(build_inventory);
    // The Vec of 100 pointers, then the 100 pages.
    assert_eq!(inventory.allocations, 101);
    assert_eq!(inventory.bytes_allocated, 100 * 8 + 100 * 4096);

    let (lines, report) = GLOBAL.measure(|| render_report(&pages));
    // The Vec of 50 Strings, then 50 lines of 64 bytes.
    assert_eq!(report.size_histogram.count_for(64), 50);
    assert_eq!(report.allocations, 1 + 50);
    assert_eq!(report.bytes_allocated, 50 * std::mem::size_of::<String>() + 50 * 64);
    assert_eq!(lines.len(), 50);
}
