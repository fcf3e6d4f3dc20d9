use std::alloc::System;

use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

#[test]
fn it_works() {
    let (buffers, stats) = GLOBAL.measure(left::make);
    assert_eq!(stats.allocations, buffers.len() + 1);
}
