use std::alloc::System;
use std::time::Duration;

use heapprobe::{
    assert_allocations, assert_no_leaks, deny_allocations, expect, memory_measured, memory_measured_future, Heapprobe,
};

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

#[test]
fn replace_allocates_three_strings() {
    // Exact while the other tests of this binary allocate on their threads.
    let stats = memory_measured(&GLOBAL, || {
        let _ = "whoa".to_owned().replace("whoa", "wow").to_owned();
    });
    assert_eq!((stats.allocations, stats.deallocations, stats.bytes_allocated), (3, 3, 15));
}

#[test]
fn parsing_stays_within_its_budget() {
    let numbers = assert_allocations!(
        GLOBAL,
        { "1,2,3".split(',').map(|s| s.parse::<u32>().unwrap()).collect::<Vec<_>>() },
        allocations <= 1,
        bytes_allocated == 16
    );
    assert_eq!(numbers, [1, 2, 3]);
}

#[test]
fn formatting_reads_like_a_sentence() {
    let len =
        expect(&GLOBAL).at_most(1).allocations().at_most(64).peak().no_leaks().check(|| format!("{}-{}", 1, 2).len());
    assert_eq!(len, 3);
}

#[test]
fn the_audio_callback_does_not_touch_the_allocator() {
    let samples = vec![1.0f32; 256];
    let mut out = vec![0.0f32; 256];
    deny_allocations(&GLOBAL, || {
        for (o, s) in out.iter_mut().zip(&samples) {
            *o = s * 0.5;
        }
    });
    assert_eq!(out[0], 0.5);
}

#[test]
fn a_cache_frees_what_it_allocated() {
    assert_no_leaks(&GLOBAL, || {
        let mut cache = std::collections::HashMap::new();
        cache.insert(1, String::from("one"));
        assert_eq!(cache[&1], "one");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_is_measured_on_every_thread_that_polls_it() {
    let stats = memory_measured_future(&GLOBAL, async {
        let v = vec![1u8; 100];
        tokio::time::sleep(Duration::from_millis(1)).await;
        let s = String::from("after the sleep");
        drop((v, s));
    })
    .await;
    assert_eq!((stats.allocations, stats.bytes_allocated, stats.peak, stats.current), (2, 115, 115, 0));
}
