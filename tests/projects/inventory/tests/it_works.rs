use std::alloc::System;

use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

#[test]
fn it_works() {
    let (pages, stats) = GLOBAL.measure(inventory::build_inventory);
    assert_eq!((stats.allocations, stats.bytes_allocated), (101, 100 * 4096 + 100 * 8));
    assert_eq!(pages.len(), 100);
}
