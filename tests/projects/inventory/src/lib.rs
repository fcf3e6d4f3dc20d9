//! A user's library: what it allocates is known exactly.

use std::hint::black_box;

/// 100 boxed pages of 4096 bytes, and the `Vec` of their 100 pointers:
/// 101 allocations, 410,400 bytes.
#[inline(never)]
pub fn build_inventory() -> Vec<Box<[u8; 4096]>> {
    let mut pages = Vec::with_capacity(100);
    for i in 0..100 {
        pages.push(black_box(Box::new([i as u8; 4096])));
    }
    pages
}
