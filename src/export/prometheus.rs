//! Prometheus/OpenMetrics text, through the official `prometheus-client`
//! crate's encoder.

use core::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{Overhead, Source};
use crate::{Heapprobe, Stats, GLOBAL_PEAK_GRANULE};

/// The `Content-Type` of [`openmetrics_text`]'s output (and of what
/// `prometheus-client` encodes): OpenMetrics 1.0 text.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `Content-Type` of [`prometheus_text`]'s output: Prometheus text
/// format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How many of heapprobe's log2 size buckets get their own `le` bound:
/// 32, so the last finite bound is `le="4294967295"` (4 GiB - 1).
/// Larger allocations are counted in `le="+Inf"`.
pub const SIZE_BUCKETS: usize = 32;

/// A `prometheus-client` [`Collector`](prometheus_client::collector::Collector)
/// that reads the process-wide counters at every scrape.
///
/// A service with a registry adds heapprobe in one line:
///
/// ```
/// # use heapprobe::Heapprobe;
/// # use std::alloc::System;
/// # #[global_allocator]
/// # static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
/// use prometheus_client::registry::Registry;
///
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(heapprobe::export::Collector::new(&GLOBAL)));
///
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains("# TYPE heapprobe_allocations counter\n"));
/// ```
///
/// A registry made `with_prefix` adds its prefix before `heapprobe_`.
pub struct Collector {
    source: &'static dyn Source,
}

impl Collector {
    /// Reads `probe` (usually your `#[global_allocator]` static) at each scrape.
    pub fn new<A: Sync>(probe: &'static Heapprobe<A>) -> Self {
        Self { source: probe }
    }
}

impl fmt::Debug for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collector").finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        encode(&mut encoder, &self.source.stats(), None)
    }
}

/// `stats` as a complete OpenMetrics text exposition (ending in `# EOF`),
/// to serve with [`OPENMETRICS_CONTENT_TYPE`] to clients that ask for it
/// (Prometheus does, in its `Accept` header).
///
/// ```
/// let text = heapprobe::export::openmetrics_text(&heapprobe::Stats::default());
/// assert!(text.contains("# TYPE heapprobe_allocations counter\nheapprobe_allocations_total 0\n"));
/// assert!(text.ends_with("# EOF\n"));
/// ```
pub fn openmetrics_text(stats: &Stats) -> String {
    render(stats, None)
}

/// `stats` in the Prometheus text format 0.0.4, to serve with
/// [`PROMETHEUS_CONTENT_TYPE`] to every other client (`curl`,
/// `promtool check metrics`): the same samples as [`openmetrics_text`], with
/// counters' `HELP` and `TYPE` named after their `_total` sample, and no
/// `# UNIT` or `# EOF` line.
///
/// ```
/// let text = heapprobe::export::prometheus_text(&heapprobe::Stats::default());
/// assert!(text.contains("# TYPE heapprobe_allocations_total counter\nheapprobe_allocations_total 0\n"));
/// ```
pub fn prometheus_text(stats: &Stats) -> String {
    // Our own encoder's output always converts.
    to_prometheus_text(&render(stats, None)).unwrap_or_default()
}

/// The exposition with, when the server renders it on its own thread, the
/// endpoint's overhead.
pub(crate) fn render(stats: &Stats, endpoint: Option<&Overhead>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot { stats: *stats, endpoint: endpoint.copied() }));
    let mut out = String::with_capacity(8 * 1024);
    // Writing to a `String` cannot fail, and neither can our collector.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// Converts OpenMetrics text, as our collector writes it, to the Prometheus
/// text format 0.0.4. A line of any other shape is an error that quotes it.
pub(crate) fn to_prometheus_text(openmetrics: &str) -> Result<String, String> {
    let counters: Vec<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "].into_iter().find(|p| line.starts_with(p));
        match comment {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let (name, tail) = rest.split_once(' ').ok_or_else(|| format!("no text after the name: {line:?}"))?;
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(&name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None if line.starts_with("heapprobe_") && line.contains(' ') => out.push_str(line),
            None => return Err(format!("unexpected line in the OpenMetrics text: {line:?}")),
        }
        out.push('\n');
    }
    Ok(out)
}

/// Figures read once, encoded as they are.
#[derive(Debug)]
struct Snapshot {
    stats: Stats,
    endpoint: Option<Overhead>,
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        encode(&mut encoder, &self.stats, self.endpoint.as_ref())
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, value: usize) -> fmt::Result {
    let metric = ConstCounter::new(value as u64);
    metric.encode(e.encode_descriptor(name, help, unit, metric.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: usize) -> fmt::Result {
    let metric = ConstGauge::new(value as u64);
    metric.encode(e.encode_descriptor(name, help, Some(&Unit::Bytes), metric.metric_type())?)
}

fn encode(e: &mut DescriptorEncoder, s: &Stats, endpoint: Option<&Overhead>) -> fmt::Result {
    let bytes = Some(&Unit::Bytes);
    counter(e, "heapprobe_allocations", "Successful alloc and alloc_zeroed calls.", None, s.allocations)?;
    counter(
        e,
        "heapprobe_allocated",
        "Bytes handed out by allocations, plus the growth of growing reallocs.",
        bytes,
        s.bytes_allocated,
    )?;
    counter(e, "heapprobe_deallocations", "dealloc calls.", None, s.deallocations)?;
    counter(
        e,
        "heapprobe_deallocated",
        "Bytes returned by deallocations, plus the shrink of shrinking reallocs.",
        bytes,
        s.bytes_deallocated,
    )?;
    counter(e, "heapprobe_reallocations", "Successful realloc calls.", None, s.reallocations)?;
    counter(e, "heapprobe_reallocations_grown", "Reallocs to a larger size.", None, s.reallocations_grown)?;
    counter(e, "heapprobe_realloc_grown", "Bytes added by growing reallocs.", bytes, s.bytes_grown)?;
    counter(e, "heapprobe_reallocations_shrunk", "Reallocs to a smaller size.", None, s.reallocations_shrunk)?;
    counter(e, "heapprobe_realloc_shrunk", "Bytes removed by shrinking reallocs.", bytes, s.bytes_shrunk)?;
    counter(
        e,
        "heapprobe_reallocations_moved",
        "Reallocs whose block moved to a new address, so its contents were copied.",
        None,
        s.reallocations_moved,
    )?;
    counter(
        e,
        "heapprobe_realloc_moved",
        "Bytes copied by moving reallocs: min(old size, new size) each.",
        bytes,
        s.bytes_moved,
    )?;
    counter(
        e,
        "heapprobe_allocation_failures",
        "Calls for which the inner allocator returned null.",
        None,
        s.allocation_failures,
    )?;
    gauge(e, "heapprobe_current", "Bytes in use: allocated minus deallocated.", s.current)?;
    let peak_help = format!(
        "The highest bytes in use since the start or the last peak reset; process-wide it is exact to within {} \
         bytes per live thread.",
        GLOBAL_PEAK_GRANULE
    );
    gauge(e, "heapprobe_peak", &peak_help, s.peak)?;
    size_histogram(e, s)?;

    let Some(own) = endpoint else { return Ok(()) };
    counter(
        e,
        "heapprobe_endpoint_requests",
        "Requests the standalone heapprobe server answered, this one included.",
        None,
        own.requests as usize,
    )?;
    let of = "by the heapprobe server's own thread, which are included in the process-wide figures.";
    counter(e, "heapprobe_endpoint_allocations", &format!("Allocations {of}"), None, own.stats.allocations)?;
    counter(e, "heapprobe_endpoint_allocated", &format!("Bytes allocated {of}"), bytes, own.stats.bytes_allocated)?;
    counter(e, "heapprobe_endpoint_deallocations", &format!("Deallocations {of}"), None, own.stats.deallocations)?;
    counter(e, "heapprobe_endpoint_deallocated", &format!("Bytes freed {of}"), bytes, own.stats.bytes_deallocated)?;
    gauge(
        e,
        "heapprobe_endpoint_current",
        "Bytes the heapprobe server's thread allocated and has not freed.",
        own.stats.current,
    )
}

/// The size histogram with heapprobe's own bucket bounds (see the module docs).
fn size_histogram(e: &mut DescriptorEncoder, s: &Stats) -> fmt::Result {
    let counts = s.size_histogram.buckets();
    let mut buckets = [(0.0, 0); SIZE_BUCKETS + 1];
    for (i, bucket) in buckets.iter_mut().take(SIZE_BUCKETS).enumerate() {
        *bucket = (((1u64 << (i + 1)) - 1) as f64, counts[i]);
    }
    let rest = counts[SIZE_BUCKETS..].iter().fold(0u64, |a, n| a.wrapping_add(*n));
    buckets[SIZE_BUCKETS] = (f64::INFINITY, rest);
    let count = counts.iter().fold(0u64, |a, n| a.wrapping_add(*n));
    // Realloc growth is in `bytes_allocated` but is not an allocation size.
    let sum = s.bytes_allocated.saturating_sub(s.bytes_grown) as f64;
    let help = "Sizes of allocations (alloc and alloc_zeroed calls) in heapprobe's log2 buckets: \
                le=2^(i+1)-1 counts the sizes below 2^(i+1).";
    let mut metric =
        e.encode_descriptor("heapprobe_allocation_size", help, Some(&Unit::Bytes), MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}
