use std::alloc::System;

use heapprobe::{assert_allocations, Heapprobe};

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

/// Over its budget on purpose when `INVENTORY_OVER_BUDGET` is set: the
/// failure prints the command that draws where the scope allocated.
#[test]
fn inventory_stays_within_budget() {
    let limit = if std::env::var_os("INVENTORY_OVER_BUDGET").is_some() { 10 } else { 101 };
    let pages = assert_allocations!(GLOBAL, { inventory::build_inventory() }, allocations <= limit);
    assert_eq!(pages.len(), 100);
}
