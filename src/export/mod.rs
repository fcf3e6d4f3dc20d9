//! The counters for monitoring systems: Prometheus/OpenMetrics text,
//! `Stats` as JSON, and (with the `server` feature) a standalone HTTP server
//! and a route table to mount in any `http`-based framework.
//!
//! | Feature | What it adds |
//! |---|---|
//! | `prometheus` | `Collector` for an existing `prometheus-client` registry (one line), `openmetrics_text`, `prometheus_text` |
//! | `json` | `stats_json` |
//! | `server` | `heapprobe::serve`, `serve_with`, `Endpoints`, the `Profiler` plug-in |
//! | `server` + `pprof` | `HeapProfiler`: the in-process profiler behind the profile routes, attached by `serve` |
//!
//! # Metric names
//!
//! They follow the conventions of Go's `go_memstats_*` and the jemalloc
//! exporters: counters end in `_total`, sizes are in bytes (the base unit)
//! and say so in their name, current and peak use are gauges, and the
//! allocation sizes are a real histogram (`_bucket`, `_sum`, `_count`).
//!
//! | Metric | Type | `Stats` field |
//! |---|---|---|
//! | `heapprobe_allocations_total` | counter | `allocations` |
//! | `heapprobe_allocated_bytes_total` | counter | `bytes_allocated` |
//! | `heapprobe_deallocations_total` | counter | `deallocations` |
//! | `heapprobe_deallocated_bytes_total` | counter | `bytes_deallocated` |
//! | `heapprobe_reallocations_total` | counter | `reallocations` |
//! | `heapprobe_reallocations_grown_total`, `heapprobe_realloc_grown_bytes_total` | counter | `reallocations_grown`, `bytes_grown` |
//! | `heapprobe_reallocations_shrunk_total`, `heapprobe_realloc_shrunk_bytes_total` | counter | `reallocations_shrunk`, `bytes_shrunk` |
//! | `heapprobe_reallocations_moved_total`, `heapprobe_realloc_moved_bytes_total` | counter | `reallocations_moved`, `bytes_moved` |
//! | `heapprobe_allocation_failures_total` | counter | `allocation_failures` |
//! | `heapprobe_current_bytes` | gauge | `current` |
//! | `heapprobe_peak_bytes` | gauge | `peak` |
//! | `heapprobe_allocation_size_bytes` | histogram | `size_histogram` |
//!
//! The histogram's buckets are heapprobe's log2 buckets, exactly: bucket
//! `i` of [`Histogram`](crate::Histogram) holds sizes in `[2^i, 2^(i+1))`,
//! which is `le="2^(i+1)-1"` (sizes are integers), for the first
//! `SIZE_BUCKETS` (32) buckets (up to 4 GiB); larger sizes are counted in
//! `le="+Inf"`. `_count` is the number of allocations and `_sum` their
//! bytes (`bytes_allocated - bytes_grown`: realloc growth is not an
//! allocation size). `bytes_reallocated` is not exported: it is
//! `realloc_grown - realloc_shrunk`.
//!
//! The standalone server adds its own overhead, measured exactly on its
//! threads (the server's, and the profile routes' worker as of its last
//! request): `heapprobe_endpoint_requests_total`,
//! `heapprobe_endpoint_allocations_total`,
//! `heapprobe_endpoint_allocated_bytes_total`,
//! `heapprobe_endpoint_deallocations_total`,
//! `heapprobe_endpoint_deallocated_bytes_total` and
//! `heapprobe_endpoint_current_bytes`. They are *included* in the process
//! figures above (which are what the allocator saw); subtract them to leave
//! the endpoint out, e.g.
//! `heapprobe_allocations_total - heapprobe_endpoint_allocations_total`.

#[cfg(feature = "server")]
mod endpoints;
#[cfg(feature = "json")]
mod json;
#[cfg(all(feature = "server", feature = "pprof"))]
mod profiler;
#[cfg(feature = "prometheus")]
mod prometheus;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
mod worker;

#[cfg(feature = "server")]
pub use self::endpoints::{Endpoints, Pprof, Profiler, Reply, Response, Work, PROFILE_TIMEOUT, SYMBOLS_KEPT_FOR};
#[cfg(feature = "json")]
pub use self::json::stats_json;
#[cfg(all(feature = "server", feature = "pprof"))]
pub use self::profiler::{HeapProfiler, LIVE_LIMIT, LIVE_MAX_BYTES};
#[cfg(feature = "prometheus")]
pub use self::prometheus::{
    openmetrics_text, prometheus_text, Collector, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE, SIZE_BUCKETS,
};
#[cfg(feature = "server")]
pub use self::server::{serve, serve_with, Options, Server};

#[cfg(feature = "prometheus")]
use crate::{Heapprobe, Stats};

/// What the renderers read, without the allocator's type parameter.
#[cfg(feature = "prometheus")]
pub(crate) trait Source: Sync {
    fn stats(&self) -> Stats;
    /// Panics if the calling thread has no counter slot.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    fn thread_stats(&self) -> Stats;
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    fn reset_peak(&self);
}

#[cfg(feature = "prometheus")]
impl<A: Sync> Source for Heapprobe<A> {
    fn stats(&self) -> Stats {
        Heapprobe::stats(self)
    }
    fn thread_stats(&self) -> Stats {
        Heapprobe::thread_stats(self)
    }
    fn reset_peak(&self) {
        Heapprobe::reset_peak(self)
    }
}

/// The endpoint's own share: what the thread that serves requests
/// allocated, read on that thread.
#[cfg(feature = "prometheus")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Overhead {
    /// Requests answered, the one being answered included.
    pub requests: u64,
    /// The serving thread's counters since it started.
    pub stats: Stats,
}
