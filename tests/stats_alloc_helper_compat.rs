//! Code written for stats_alloc_helper compiles and runs with only its `use`
//! lines changed: this is stats_alloc_helper 0.3's README example and tests,
//! with `stats_alloc::` and `stats_alloc_helper::` replaced by
//! `heapprobe::compat::`. Its `LockedAllocator` serialises every thread; this
//! one blocks nobody, so the background thread below keeps allocating.

use std::alloc::System;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{sleep, spawn};
use std::time::Duration;

use heapprobe::compat::{memory_measured, memory_measured_future, LockedAllocator, Stats, StatsAlloc};

#[global_allocator]
static GLOBAL: LockedAllocator<System> = LockedAllocator::new(StatsAlloc::system());

#[test]
fn readme_example() {
    let mut length = 0;

    let stats = memory_measured(&GLOBAL, || {
        let s = "whoa".to_owned().replace("whoa", "wow").to_owned();

        length = s.len();
    });

    assert_eq!(length, 3);

    assert_eq!(
        stats,
        Stats {
            allocations: 3,
            deallocations: 3,
            reallocations: 0,
            bytes_allocated: 15,
            bytes_deallocated: 15,
            bytes_reallocated: 0
        }
    );

    let stats: Stats = memory_measured(&GLOBAL, || {
        let mut v = vec![1, 2, 3, 4, 5];

        v.push(6);

        length = v.len();
    });

    assert_eq!(length, 6);

    assert_eq!(
        stats,
        Stats {
            allocations: 1,
            deallocations: 1,
            reallocations: 1,
            bytes_allocated: 40,
            bytes_deallocated: 40,
            bytes_reallocated: 20
        }
    );
}

#[test]
fn parallel_thread_keeps_allocating_during_the_measurement() {
    let stop = Arc::new(AtomicBool::new(false));
    let pushes = Arc::new(AtomicU64::new(0));
    let background = {
        let (stop, pushes) = (stop.clone(), pushes.clone());
        spawn(move || {
            let mut vec = vec![];
            while !stop.load(Ordering::Relaxed) {
                vec.push(1);
                if vec.len() == 1000 {
                    vec = vec![];
                }
                pushes.fetch_add(1, Ordering::Relaxed);
                sleep(Duration::from_micros(1));
            }
        })
    };

    let mut length = 0;
    let mut during = 0;
    let stats = memory_measured(&GLOBAL, || {
        let s = "whoa".to_owned().replace("whoa", "wow").to_owned();
        // Until the other thread has allocated 100 more times (a handshake,
        // not a sleep: on a loaded machine it may not run for a while).
        let before = pushes.load(Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while pushes.load(Ordering::Relaxed) < before + 100 {
            assert!(std::time::Instant::now() < deadline, "the background thread made no progress in 120 s");
            sleep(Duration::from_millis(1));
        }
        during = pushes.load(Ordering::Relaxed) - before;
        length = s.len();
    });
    stop.store(true, Ordering::Relaxed);
    background.join().unwrap();

    assert_eq!(length, 3);
    assert_eq!(
        stats,
        Stats {
            allocations: 3,
            deallocations: 3,
            reallocations: 0,
            bytes_allocated: 15,
            bytes_deallocated: 15,
            bytes_reallocated: 0
        }
    );
    // Under stats_alloc_helper the wait above never ends: the lock stops the
    // other thread.
    assert!(during >= 100, "the background thread was blocked during the measurement");
}

#[test]
fn a_panicking_measurement_leaves_nothing_locked() {
    let caught = std::panic::catch_unwind(|| memory_measured(&GLOBAL, || panic!("boom")));
    assert!(caught.is_err());
    // stats_alloc_helper stays locked here, and this thread's allocation never returns.
    let other = spawn(|| vec![0u8; 10].len());
    assert_eq!(other.join().unwrap(), 10);
    let stats = memory_measured(&GLOBAL, || drop(vec![0u8; 10]));
    assert_eq!((stats.allocations, stats.bytes_allocated), (1, 10));
}

#[tokio::test]
async fn test_tokio() {
    let stats = memory_measured_future(&GLOBAL, async {
        let _ = vec![1, 2, 3, 4];
    })
    .await;

    assert_eq!(
        stats,
        Stats {
            allocations: 1,
            deallocations: 1,
            reallocations: 0,
            bytes_allocated: 16,
            bytes_deallocated: 16,
            bytes_reallocated: 0
        }
    );
}

#[tokio::test]
async fn test_tokio_sleep() {
    let duration = std::time::Duration::from_millis(100);

    let stats = memory_measured_future(&GLOBAL, async move {
        tokio::time::sleep(duration).await;
    })
    .await;

    // stats_alloc_helper's expectation on Linux, which holds here too.
    assert_eq!(
        stats,
        Stats {
            allocations: 0,
            deallocations: 0,
            reallocations: 0,
            bytes_allocated: 0,
            bytes_deallocated: 0,
            bytes_reallocated: 0
        }
    );

    // Positive control: the same sleep around an allocation registers it.
    let control = memory_measured_future(&GLOBAL, async move {
        let v = vec![0u8; 33];
        tokio::time::sleep(duration).await;
        drop(v);
    })
    .await;
    assert_eq!((control.allocations, control.deallocations, control.bytes_allocated), (1, 1, 33));
}

#[test]
fn locked_allocator_is_a_heapprobe() {
    // The full statistics are still there, through `Deref`.
    let (v, full) = GLOBAL.measure(|| vec![0u8; 100]);
    assert_eq!((full.allocations, full.current, full.size_histogram.count_for(100)), (1, 100, 1));
    let six: Stats = full.into();
    assert_eq!(six.bytes_allocated, 100);
    assert_eq!(six - six, Stats::default());
    drop(v);
}
