//! Make heap allocations observable, from a unit test to a production
//! process, with one build and no restart.
//!
//! # Setup
//!
//! Wrap any [`GlobalAlloc`](core::alloc::GlobalAlloc) (`System`, jemalloc,
//! mimalloc) and make it the global allocator:
//!
//! ```
//! use heapprobe::Heapprobe;
//! use std::alloc::System;
//!
//! #[global_allocator]
//! static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
//! # fn main() {}
//! ```
//!
//! # Measuring
//!
//! [`Heapprobe::stats`] gives process-wide [`Stats`] (threads that exited
//! included), [`Heapprobe::thread_stats`] the calling thread's, and
//! [`Heapprobe::measure`] exactly the calls the calling thread makes while a
//! closure runs, however hard other threads allocate meanwhile:
//!
//! ```
//! # use heapprobe::Heapprobe;
//! # use std::alloc::System;
//! # #[global_allocator]
//! # static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
//! let ((), stats) = GLOBAL.measure(|| {
//!     let _ = vec![1i32, 2, 3, 4];
//! });
//! assert_eq!(stats.allocations, 1);
//! assert_eq!(stats.bytes_allocated, 16);
//! assert_eq!(stats.deallocations, 1);
//! println!("{stats}"); // counts, bytes, realloc classes and ASCII histograms
//! ```
//!
//! Code written for `stats_alloc` ports by changing its `use` line to
//! `heapprobe` ([`Region`], [`StatsAlloc`], [`INSTRUMENTED_SYSTEM`]); code
//! written for `stats_alloc_helper`, by importing from [`compat`] instead.
//!
//! # Allocation tests
//!
//! Built on measured scopes, so exact while the test harness runs other
//! tests in parallel, and lock-free: [`memory_measured`],
//! [`memory_measured_future`] (each poll measured on the thread that polls
//! it), [`assert_allocations!`], the [`expect`] builder, [`deny_allocations`]
//! for code that must not touch the allocator, and [`assert_no_leaks`]. A
//! failure reports the full [`Stats`] next to each expectation, and the
//! `cargo heapprobe trace --test NAME --event alloc_locked` command that
//! shows where the scope allocated (`cargo install heapprobe-cli` installs
//! `cargo heapprobe`).
//!
//! ```
//! # use heapprobe::Heapprobe;
//! # use std::alloc::System;
//! # #[global_allocator]
//! # static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
//! use heapprobe::{assert_allocations, deny_allocations, expect};
//!
//! let len = assert_allocations!(GLOBAL, { format!("{}", 42).len() }, allocations <= 1, current == 0);
//! assert_eq!(len, 2);
//! expect(&GLOBAL).exactly(1).allocations().no_leaks().check(|| drop(vec![0u8; 8]));
//! deny_allocations(&GLOBAL, || 6 * 7);
//! ```
//!
//! # Local allocators
//!
//! With the `allocator-api2` feature, `Local` wraps any
//! `allocator_api2::Allocator` (allocator-api2 0.2: hashbrown 0.16,
//! bumpalo 3; `allocator-api2-03` and `allocator-api2-04` add those
//! versions' traits) and is one itself: the same [`Stats`] per instance,
//! measured scopes (`Local::measure`), `local_*` probes carrying the
//! instance id, safe to share between threads. Its calls never reach the global
//! wrapper's figures, unless the inner allocator itself uses the global
//! allocator (then those inner calls are counted there, once). The README's
//! "Local allocators" section has the seed experiment (a pool against the
//! global allocator) as an example and a benchmark.
//!
//! # valgrind and the heap summary
//!
//! `HEAPPROBE_SUMMARY=1` in the environment, or
//! [`Heapprobe::summary_at_exit`] called once in `main`, prints valgrind's
//! HEAP SUMMARY figures ([`HeapSummary`]) on stderr when the process exits,
//! by returning from `main` or through `std::process::exit`:
//!
//! ```text
//! heapprobe: HEAP SUMMARY:
//! heapprobe:     in use at exit: 844 bytes in 4 blocks
//! heapprobe:   total heap usage: 11 allocs, 7 frees, 1,162 bytes allocated
//! heapprobe:           reallocs: 2, 48 bytes grown (valgrind counts each as 1 alloc + 1 free)
//! ```
//!
//! "In use at exit" agrees with valgrind's; its totals also count libc's
//! own calls and a realloc as an alloc plus a free (the README explains the
//! difference). The repository's `cargo xtask test` runs the library's test
//! binaries under valgrind's memcheck and LeakSanitizer.
//! # Profiling without root
//!
//! [`profile`]: an in-process sampling heap profiler. Off by default (and
//! then it costs the allocator one compare per allocation); started from code
//! ([`Heapprobe::start_profiler`]) or from the environment
//! (`HEAPPROBE_PROFILE=rate=524288,out=/tmp/heap`), it samples a thread's
//! allocations every 512 KiB on average (exponential gaps; `rate = 1`
//! records everything), un-biases each sample on its own, captures stacks
//! by frame pointers or `.eh_frame` (feature `profile`), and gives
//! allocated, in-use and peak views per stack and thread as folded stacks,
//! an SVG flame graph (feature `profile`), gzipped pprof (feature `pprof`)
//! or JSON. Every summary puts the estimate beside the exact counters.
//! [`Heapprobe::profile`] records one scope exactly, and with the `profile`
//! feature a failing allocation assertion writes its scope's flame graph to
//! `target/heapprobe-reports/<test>.svg`. Sampled calls fire `heapprobe:sample` and
//! `heapprobe:sample_free` (and, feature `otel`, `otel_memory:alloc` /
//! `otel_memory:free`).
//!
//! # Catching regressions
//!
//! With the `diff` feature (which `profile` turns on), `heapprobe::diff`
//! compares two folded profiles (from `cargo heapprobe trace`, `fold` or the
//! profiler) stack by stack: a summary of the stacks that grew and shrank,
//! with signed byte and count deltas, and a differential flame graph
//! coloured by each frame's inclusive change, where stacks that vanished
//! keep their width. Allocation snapshots (feature `profile`:
//! `heapprobe::snapshot`, `assert_allocation_snapshot!`) store a block's
//! exact `Stats` and stacks under the crate's `tests/snapshots/` and fail
//! when it allocates more, with that diff and its flame graph:
//!
//! ```no_run
//! # use heapprobe::Heapprobe;
//! # use std::alloc::System;
//! # #[global_allocator]
//! # static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
//! let words = heapprobe::assert_allocation_snapshot!(GLOBAL, "split_words", {
//!     "a b c".split(' ').map(str::to_owned).collect::<Vec<_>>()
//! });
//! # drop(words);
//! ```
//!
//! # Probes
//!
//! Every call fires a USDT (SystemTap SDT) probe of provider `heapprobe`,
//! defined once in `probes/heapprobe.d`: `alloc`, `dealloc`, `realloc`, the
//! `*_locked` variants inside measured scopes, `scope_begin`, `scope_end` and
//! `alloc_failed`, and the `local_*` probes of `Local` allocators. All
//! arguments are integers. An untraced probe is a `nop`.
//! Cargo features pick the backend: `probe` (default, no semaphore), `usdt`
//! (semaphore-guarded), or neither (probes compiled out). [`probes::BACKEND`]
//! says which one this build has.
//!
//! # Tracing
//!
//! perf 6.1's `perf probe sdt_heapprobe:*` misplaces probes in binaries
//! linked by rust-lld (the default linker): use `cargo heapprobe trace`
//! (the heapprobe-cli crate), or bpftrace `usdt:` probes, which compute the
//! file offsets correctly.
//!
//! # Production
//!
//! With the `server` feature, `heapprobe::serve(&GLOBAL, "127.0.0.1:6060")`
//! starts an HTTP server on a thread of its own: `/metrics` for Prometheus,
//! `/stats` as JSON, `POST /reset-peak`, and the routes of the in-process
//! profiler. The `export` module has the same routes for any `http`-based
//! framework, a `prometheus-client` collector (feature `prometheus`) and
//! `Stats` as JSON (feature `json`).
//!
//! # Overhead
//!
//! Each thread counts into its own cache-aligned slot with plain loads and
//! stores, so threads never contend on a shared line. The price is that the
//! process-wide peak is published in steps of [`GLOBAL_PEAK_GRANULE`] bytes
//! per thread; every other figure, and per-thread and scoped peaks, is exact.
//! Every thread gets a slot, however many are alive: slots live in blocks of
//! 64 that heapprobe maps itself, reused as threads exit
//! ([`Heapprobe::slot_memory`]).
//!
//! An alloc+free pair of 32 bytes executes 1.24× the instructions of
//! `System` alone (callgrind, `cargo bench --bench instructions`); see the
//! README's tables for the other workloads, the peers and the time.
#![deny(missing_docs)]
#![warn(unsafe_op_in_unsafe_fn)]

mod alloc;
pub mod compat;
#[cfg(feature = "diff")]
pub mod diff;
#[cfg(any(feature = "prometheus", feature = "json"))]
pub mod export;
mod future;
mod histogram;
#[cfg(any(feature = "allocator-api2", feature = "allocator-api2-03", feature = "allocator-api2-04"))]
mod local;
pub mod probes;
pub mod profile;
mod scope;
#[cfg(feature = "profile")]
pub mod snapshot;
mod stats;
mod summary;
mod tally;
mod testing;
mod thread;

#[allow(deprecated)]
pub use crate::alloc::MAX_THREADS;
pub use crate::alloc::{Heapprobe, GLOBAL_PEAK_GRANULE};
pub use crate::compat::{LockedAllocator, Region, StatsAlloc, INSTRUMENTED_SYSTEM};
#[cfg(feature = "server")]
pub use crate::export::{serve, serve_with};
pub use crate::future::MeasuredFuture;
pub use crate::histogram::{Histogram, BUCKETS};
#[cfg(any(feature = "allocator-api2", feature = "allocator-api2-03", feature = "allocator-api2-04"))]
pub use crate::local::Local;
pub use crate::stats::Stats;
pub use crate::summary::HeapSummary;
#[doc(hidden)]
pub use crate::testing::__private;
pub use crate::testing::{
    assert_no_leaks, deny_allocations, expect, memory_measured, memory_measured_future, Bound, Expect, Instrumented,
};

/// The README's Rust examples run as doctests, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
