//! Log2 size histograms.

use core::fmt;

/// Number of buckets: one per power of two a `usize` size can reach.
pub const BUCKETS: usize = 64;

/// A histogram of sizes on log2 buckets.
///
/// Bucket `i` counts sizes in `[2^i, 2^(i+1))`; bucket 0 also holds size 0.
/// Its `Display` prints bpftrace-style ASCII bars for the non-empty range.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Histogram {
    #[cfg_attr(feature = "serde", serde(with = "serde_buckets"))]
    buckets: [u64; BUCKETS],
}

impl Histogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Self { buckets: [0; BUCKETS] }
    }

    /// The bucket that `size` falls in: `floor(log2(size))`, and 0 for 0.
    #[inline(always)]
    pub const fn bucket_of(size: usize) -> usize {
        // `| 1` maps 0 to bucket 0 without a branch; the mask keeps the index
        // provably in range so the allocator path has no bounds-check panic.
        (usize::BITS - 1 - (size | 1).leading_zeros()) as usize & (BUCKETS - 1)
    }

    /// The counts of every bucket, index = log2 of the lower bound.
    pub const fn buckets(&self) -> &[u64; BUCKETS] {
        &self.buckets
    }

    /// The count of the bucket holding `size`.
    pub const fn count_for(&self, size: usize) -> u64 {
        self.buckets[Self::bucket_of(size)]
    }

    /// The sum of all buckets.
    pub fn total(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, b| a.wrapping_add(*b))
    }

    /// Builds a histogram from raw bucket counts.
    pub const fn from_buckets(buckets: [u64; BUCKETS]) -> Self {
        Self { buckets }
    }

    pub(crate) fn combine(&self, other: &Self, op: fn(u64, u64) -> u64) -> Self {
        let mut buckets = [0; BUCKETS];
        for (i, slot) in buckets.iter_mut().enumerate() {
            *slot = op(self.buckets[i], other.buckets[i]);
        }
        Self { buckets }
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (i, n) in self.buckets.iter().enumerate().filter(|(_, n)| **n != 0) {
            map.entry(&format_args!("{}", Bound(i)), n);
        }
        map.finish()
    }
}

/// The lower bound of bucket `i`, in human units.
struct Bound(usize);

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (value, unit) = match self.0 {
            0 => return f.write_str("0"),
            i @ 0..=9 => (1u64 << i, ""),
            i @ 10..=19 => (1u64 << (i - 10), "K"),
            i @ 20..=29 => (1u64 << (i - 20), "M"),
            i @ 30..=39 => (1u64 << (i - 30), "G"),
            i @ 40..=49 => (1u64 << (i - 40), "T"),
            i @ 50..=59 => (1u64 << (i - 50), "P"),
            i => (1u64 << (i - 60), "E"),
        };
        write!(f, "{value}{unit}")
    }
}

impl fmt::Display for Histogram {
    /// bpftrace-style bars: `[lo, hi)   count |@@@@@     |`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const WIDTH: u64 = 40;
        let Some(first) = self.buckets.iter().position(|n| *n != 0) else {
            return writeln!(f, "    (empty)");
        };
        let last = self.buckets.iter().rposition(|n| *n != 0).unwrap_or(first);
        let max = self.buckets[first..=last].iter().copied().max().unwrap_or(1).max(1);
        for i in first..=last {
            let n = self.buckets[i];
            let bar = (n.saturating_mul(WIDTH) / max) as usize;
            let range = if i + 1 < BUCKETS {
                format!("[{}, {})", Bound(i), Bound(i + 1))
            } else {
                format!("[{}, ...)", Bound(i))
            };
            writeln!(f, "    {range:<14}{n:>10} |{:<w$}|", "@".repeat(bar), w = WIDTH as usize)?;
        }
        Ok(())
    }
}

#[cfg(feature = "serde")]
mod serde_buckets {
    pub fn serialize<S: serde::Serializer>(buckets: &[u64; super::BUCKETS], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(buckets.iter())
    }
}
