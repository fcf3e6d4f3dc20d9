//! heapprobe over a real non-System allocator: mimalloc.

use std::hint::black_box;

use heapprobe::Heapprobe;
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: Heapprobe<MiMalloc> = Heapprobe::new(MiMalloc);

#[test]
fn ground_truth_over_mimalloc() {
    let ((), stats) = GLOBAL.measure(|| {
        let _ = black_box("whoa".to_owned().replace("whoa", "wow").to_owned());
    });
    assert_eq!(
        (stats.allocations, stats.deallocations, stats.reallocations, stats.bytes_allocated, stats.bytes_deallocated),
        (3, 3, 0, 15, 15)
    );
    let ((), stats) = GLOBAL.measure(|| {
        let mut v = Vec::<u64>::new();
        for i in 0..1000 {
            v.push(i);
        }
        black_box(&v);
    });
    // Vec doubles from 4 elements: 4, 8, ..., 1024 -> 1 alloc + 8 reallocs.
    assert_eq!((stats.allocations, stats.reallocations, stats.deallocations), (1, 8, 1));
    assert_eq!(stats.bytes_grown, (1024 - 4) * 8);
    assert_eq!(stats.peak, 1024 * 8);
}

#[test]
fn threads_over_mimalloc_are_counted() {
    let before = GLOBAL.stats();
    let handles: Vec<_> =
        (0..8).map(|i| std::thread::spawn(move || drop(black_box(vec![0u8; 1 << (10 + i)])))).collect();
    for h in handles {
        h.join().unwrap();
    }
    let after = GLOBAL.stats();
    assert!(after.allocations - before.allocations >= 8);
    assert!(after.bytes_allocated - before.bytes_allocated >= (1 << 18) - (1 << 10));
}
