//! Issue 21, point 4: reading a profile keeps no heap. A pprof request
//! names the profile's addresses (the `backtrace` crate parses the
//! binary's DWARF, tens of MiB, into a global cache it keeps for the life
//! of the process unless told); the profile worker releases what naming
//! filled at the end of each request. Here the process's exact current
//! use (`Stats::current`) after the first and after the fifth pprof
//! request is within 1 MiB of what it was before the first (the tolerance
//! is for the server's connection buffers, freed as the connection ends).

mod endpoint_support;
mod support;

use std::alloc::System;
use std::net::SocketAddr;
use std::time::Duration;

use endpoint_support::status_of;
use heapprobe::export::Options;
use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

const TOLERANCE: i64 = 1 << 20;

fn get(address: SocketAddr, path: &str) -> (u16, usize) {
    let (bytes, closed) = endpoint_support::raw(
        address,
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(300),
    );
    assert!(closed, "GET {path}: no complete answer");
    (status_of(&bytes).expect("a status line"), bytes.len())
}

#[inline(never)]
fn kept_blocks() -> Vec<Vec<u8>> {
    (0..1000).map(|i| vec![1u8; 100 + i]).collect()
}

#[test]
fn a_pprof_request_keeps_no_heap() {
    let mut profile = heapprobe::profile::Options::default();
    profile.rate = 4096;
    GLOBAL.start_profiler(profile).unwrap();
    let kept = kept_blocks();

    // Kept for none: freed at the end of every request.
    let mut options = Options::default();
    options.address.set_port(0);
    options.symbols_kept_for = Duration::ZERO;
    let server = heapprobe::serve_with(&GLOBAL, options).unwrap();
    let address = server.local_addr();
    // The runtime's and the worker's first allocations (the worker thread
    // starts at the first profile request), which stay: a first request of
    // each kind that names nothing (409 would too; `start` while running
    // answers 409 on the worker).
    assert_eq!(get(address, "/metrics").0, 200);
    assert_eq!(endpoint_support::post(&format!("http://{address}/profiler/start")).status, 409);
    let before = GLOBAL.stats().current as i64;
    for round in 1..=5 {
        let (status, length) = get(address, "/debug/pprof/heap");
        assert_eq!(status, 200);
        assert!(length > 1000, "{length} bytes");
        let kept_now = GLOBAL.stats().current as i64 - before;
        eprintln!("after pprof request {round}: {kept_now} bytes more in use than before the first");
        assert!(
            kept_now < TOLERANCE,
            "after pprof request {round}, {kept_now} bytes more are in use than before the first"
        );
    }
    server.shutdown().unwrap();

    // Kept for a while (as by default, 30 s): a scraper's next request
    // finds the names; once no request came for that long, they are freed.
    let mut options = Options::default();
    options.address.set_port(0);
    options.symbols_kept_for = Duration::from_secs(10);
    let server = heapprobe::serve_with(&GLOBAL, options).unwrap();
    let address = server.local_addr();
    assert_eq!(get(address, "/metrics").0, 200);
    assert_eq!(endpoint_support::post(&format!("http://{address}/profiler/start")).status, 409);
    let before = GLOBAL.stats().current as i64;
    assert_eq!(get(address, "/debug/pprof/heap").0, 200);
    let kept_now = GLOBAL.stats().current as i64 - before;
    assert!(kept_now >= TOLERANCE, "the names are kept after the request: {kept_now} bytes");
    // The worker frees them 10 s after the request: wait for that (bounded).
    let freed = (0..2400).any(|_| {
        let now = GLOBAL.stats().current as i64 - before;
        now < TOLERANCE || {
            std::thread::sleep(Duration::from_millis(50));
            false
        }
    });
    assert!(freed, "the names were not freed within 2 minutes of a 10 s keeping time");
    server.shutdown().unwrap();
    let _ = GLOBAL.stop_profiler();
    drop(kept);
}
