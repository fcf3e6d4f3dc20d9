use std::alloc::System;

use heapprobe::{expect, Heapprobe};

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

/// Over its budget on purpose when `RIGHT_OVER_BUDGET` is set.
#[test]
fn right_stays_within_budget() {
    let limit = if std::env::var_os("RIGHT_OVER_BUDGET").is_some() { 2 } else { 8 };
    let buffers = expect(&GLOBAL).at_most(limit).allocations().check(right::make);
    assert_eq!(buffers.len(), 7);
}
