//! Issue 21: `stop_profiler` from racing threads hands out each session's
//! profile once. Eight threads start and stop the global profiler over and
//! over; every successful start is matched by exactly one `Some` from a
//! stop (before, two stops that both saw the same session running both
//! returned its profile: 3,823 `Some` for 3,781 starts).

use std::alloc::System;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use heapprobe::profile::Options;
use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

#[test]
fn each_session_is_stopped_and_handed_out_once() {
    let (starts, profiles) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..500 {
                    if GLOBAL.start_profiler(Options::default()).is_ok() {
                        starts.fetch_add(1, Relaxed);
                    }
                    if GLOBAL.stop_profiler().is_some() {
                        profiles.fetch_add(1, Relaxed);
                    }
                }
            });
        }
    });
    if GLOBAL.stop_profiler().is_some() {
        profiles.fetch_add(1, Relaxed);
    }
    let (starts, profiles) = (starts.into_inner(), profiles.into_inner());
    assert!(starts > 0);
    assert_eq!(profiles, starts, "{profiles} profiles handed out for {starts} sessions");
}
