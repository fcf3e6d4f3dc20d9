//! The profiler's options, and their environment-variable form.

use core::fmt;

/// How the profiler captures stacks.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Unwinder {
    /// Measure at start: walk frame pointers if this build keeps them (a
    /// calibration walk through known frames says so), else unwind from
    /// `.eh_frame` (feature `profile`), else walk frame pointers anyway and
    /// say that stacks may be short.
    #[default]
    Auto,
    /// Always walk frame pointers (about 12-130 ns per stack; needs
    /// `RUSTFLAGS="-C force-frame-pointers=yes"` for full stacks).
    FramePointers,
    /// Always unwind from `.eh_frame` (feature `profile`; works in any
    /// build). On x86_64 Linux with glibc 2.35+, heapprobe's own unwinder
    /// with cached rules: about 60 instructions per frame once a frame's
    /// code was seen. Elsewhere libgcc's: microseconds per stack.
    Dwarf,
}

/// Options of the sampling heap profiler, for
/// [`Heapprobe::start_profiler`](crate::Heapprobe::start_profiler).
///
/// ```
/// let mut options = heapprobe::profile::Options::default();
/// options.rate = 64 * 1024;
/// assert_eq!(options.max_depth, 64);
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Mean number of bytes allocated by a thread between two of its
    /// samples; the gaps are drawn from an exponential distribution, so
    /// every byte has the same chance to be sampled. `1` records every
    /// allocation exactly. `0` is taken as `1` here (the summary then says
    /// "every allocation (rate 1)"); [`Options::parse`] refuses `rate=0`.
    ///
    /// Default is `524288` (512 KiB, as Go, tcmalloc and Datadog's sampler).
    pub rate: u64,
    /// The deepest stack recorded, in frames, at most 256. Deeper stacks
    /// keep their innermost frames and are reported as truncated.
    ///
    /// Default is `64`.
    pub max_depth: usize,
    /// How stacks are captured.
    ///
    /// Default is [`Unwinder::Auto`].
    pub unwinder: Unwinder,
    /// Seed of the threads' random gaps. With a seed, a thread's sequence of
    /// gaps depends only on the seed and on the order in which threads first
    /// allocated, so a single-threaded run samples the same calls every time.
    ///
    /// Default is `None` (seeded from the clock).
    pub seed: Option<u64>,
    /// How many distinct stacks are kept. Samples with a new stack beyond
    /// this are counted under `[dropped: stack table full]`.
    ///
    /// Default is `16384`.
    pub max_stacks: usize,
    /// How many (stack, thread) sites are kept; beyond, samples are counted
    /// under the dropped site.
    ///
    /// Default is `32768`.
    pub max_sites: usize,
    /// How many live sampled blocks are tracked by address (for the in-use
    /// and peak views). Beyond, a sample still counts as allocated and its
    /// bytes are reported as untracked.
    ///
    /// Default is `65536`.
    pub max_live: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rate: DEFAULT_RATE,
            max_depth: 64,
            unwinder: Unwinder::Auto,
            seed: None,
            max_stacks: 16384,
            max_sites: 32768,
            max_live: 65536,
        }
    }
}

/// The default sampling rate: 512 KiB.
pub const DEFAULT_RATE: u64 = 512 * 1024;

/// The environment variable that starts the profiler when the process
/// starts (Linux): `HEAPPROBE_PROFILE=rate=524288,out=/tmp/heap` (see
/// [`Options::parse`]). The profile is written when the process exits.
pub const ENV_VAR: &str = "HEAPPROBE_PROFILE";

/// A setting of [`ENV_VAR`] that could not be understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The `key=value` item, as given.
    pub item: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{ENV_VAR}: cannot use {:?}: {}; expected comma-separated rate=BYTES, depth=FRAMES, \
             unwinder=auto|fp|dwarf, seed=N, stacks=N, sites=N, live=N, out=PATH_PREFIX (or `1` for the defaults)",
            self.item, self.reason
        )
    }
}

impl std::error::Error for ParseError {}

impl Options {
    /// Parses the [`ENV_VAR`] form: comma-separated `key=value` items,
    /// `rate=BYTES` (`k`, `m` suffixes allowed), `depth=FRAMES`,
    /// `unwinder=auto|fp|dwarf`, `seed=N`, `stacks=N`, `sites=N`, `live=N`;
    /// `out=PATH_PREFIX` is returned beside the options (where the
    /// environment-started profile is written). `1`, `on` or an empty value
    /// mean the defaults. Unknown keys are errors.
    ///
    /// ```
    /// use heapprobe::profile::Options;
    /// let (options, out) = Options::parse("rate=64k,depth=32,out=/tmp/heap").unwrap();
    /// assert_eq!((options.rate, options.max_depth), (65536, 32));
    /// assert_eq!(out.as_deref(), Some("/tmp/heap"));
    /// assert!(Options::parse("rte=1").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<(Options, Option<String>), ParseError> {
        let mut options = Options::default();
        let mut out = None;
        let text = text.trim();
        if text.is_empty() || text == "1" || text == "on" || text == "true" {
            return Ok((options, out));
        }
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let err = |reason| ParseError { item: item.to_owned(), reason };
            let (key, value) = item.split_once('=').ok_or_else(|| err("not key=value"))?;
            let number = || parse_size(value).ok_or_else(|| err("not a number (k, m, g suffixes allowed)"));
            match key.trim() {
                "rate" => match number()? {
                    0 => return Err(err("rate=0 would sample nothing; rate=1 records every allocation")),
                    rate => options.rate = rate,
                },
                "depth" => options.max_depth = number()? as usize,
                "seed" => options.seed = Some(number()?),
                "stacks" => options.max_stacks = number()? as usize,
                "sites" => options.max_sites = number()? as usize,
                "live" => options.max_live = number()? as usize,
                "unwinder" => {
                    options.unwinder = match value.trim() {
                        "auto" => Unwinder::Auto,
                        "fp" | "frame-pointers" => Unwinder::FramePointers,
                        "dwarf" | "eh_frame" => Unwinder::Dwarf,
                        _ => return Err(err("the unwinder is auto, fp or dwarf")),
                    }
                }
                "out" => out = Some(value.trim().to_owned()),
                _ => return Err(err("unknown key")),
            }
        }
        Ok((options, out))
    }
}

fn parse_size(value: &str) -> Option<u64> {
    let value = value.trim().to_ascii_lowercase();
    let (digits, unit) = match value.strip_suffix("kib").or(value.strip_suffix("k")) {
        Some(d) => (d.to_owned(), 1 << 10),
        None => match value.strip_suffix("mib").or(value.strip_suffix("m")) {
            Some(d) => (d.to_owned(), 1 << 20),
            None => match value.strip_suffix("gib").or(value.strip_suffix("g")) {
                Some(d) => (d.to_owned(), 1 << 30),
                None => (value.clone(), 1),
            },
        },
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::Options;

    /// `rate=0` is refused, saying what to write instead, never silently
    /// taken as exact.
    #[test]
    fn rate_zero_is_refused_with_the_alternative() {
        let err = Options::parse("rate=0,out=/tmp/x").unwrap_err();
        assert_eq!(err.item, "rate=0");
        assert!(err.to_string().contains("rate=0 would sample nothing; rate=1 records every allocation"), "{err}");
        assert_eq!(Options::parse("rate=1").unwrap().0.rate, 1);
        assert!(Options::parse("rate=0k").is_err());
    }
}
