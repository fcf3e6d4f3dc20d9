//! `Stats` as JSON.

use crate::Stats;

/// `stats` as one JSON object: every field of [`Stats`] by its name, the
/// histograms as arrays of their 64 log2 bucket counts (index `i` counts
/// sizes in `[2^i, 2^(i+1))`).
///
/// ```
/// let json = heapprobe::export::stats_json(&heapprobe::Stats::default());
/// assert!(json.starts_with(r#"{"allocations":0,"deallocations":0,"#));
/// ```
pub fn stats_json(stats: &Stats) -> String {
    // Integers and arrays of integers only: serialization cannot fail.
    serde_json::to_string(stats).unwrap_or_default()
}
