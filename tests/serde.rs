//! `Stats` serialises with the `serde` feature.
#![cfg(feature = "serde")]

use std::alloc::System;
use std::hint::black_box;

use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

#[test]
fn stats_serialize_to_json_with_every_field() {
    let ((), stats) = GLOBAL.measure(|| drop(black_box(vec![0u8; 100])));
    let json = serde_json::to_value(stats).unwrap();
    assert_eq!(json["allocations"], 1);
    assert_eq!(json["bytes_allocated"], 100);
    assert_eq!(json["bytes_reallocated"], 0);
    assert_eq!(json["peak"], 100);
    let buckets = json["size_histogram"]["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), heapprobe::BUCKETS);
    assert_eq!(buckets[6], 1, "100 bytes is in [64, 128)");
}
