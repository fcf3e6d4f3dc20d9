//! Differential allocation profiles: what changed between two folded
//! profiles, and where (feature `diff`, which `profile` turns on).
//!
//! Both sides are folded stacks (`root;…;leaf WEIGHT` per line), such as
//! `cargo heapprobe trace` and `cargo heapprobe fold` write, or the in-process
//! profiler ([`Profile::write_folded`](crate::profile::Profile::write_folded)).
//! [`Diff`] lines them up stack by stack and gives:
//!
//! - a terminal summary ([`Diff`]'s `Display`): the totals before and after,
//!   and the top stacks that grew and that shrank, with signed weight deltas
//!   and, when both sides carry counts, signed count deltas;
//! - a differential flame graph ([`Diff::svg`]), drawn by this module (not
//!   by inferno, whose differential mode colours only each stack's leaf and
//!   takes the widths from the new profile, so that a stack that vanished
//!   has no width at all). Here every frame's colour is its *inclusive*
//!   change, the change of everything above it: a parent is red when its
//!   subtree grew, even if it allocates nothing itself; blue when it shrank;
//!   grey when it did not change; the stronger the colour, the larger the
//!   change. Each stack is as wide as the larger of its two sides, so a
//!   stack that exists only BEFORE is drawn too (with a dashed outline), as
//!   is one that is new (solid outline). Hovering a frame shows its weight
//!   before and after and its change; clicking zooms into it.
//!
//! # The folded format and its header
//!
//! A folded file may start with a header that records what its numbers
//! are, which heapprobe's writers all emit:
//!
//! ```text
//! # heapprobe: weight=bytes event=alloc
//! main;my_crate::parse;alloc::vec::Vec<T,A>::with_capacity 4096
//! ```
//!
//! `weight` is `bytes`, `count` (allocations, calls, objects) or `moved`
//! (bytes copied by moving reallocs); the other `key=value` pairs say where
//! the numbers came from (`event=` for a trace, `view=` for the profiler).
//! The header is optional on read, so files from other tools diff too; when
//! both sides have one, their weights must agree (bytes against counts is
//! an error, not a diff). inferno ignores the header (a line that does not
//! end in a number), so a file with a header renders as before. Other
//! lines starting with `#` are comments. Any other line must be a stack, a
//! space and a non-negative integer; anything else is an error that names
//! the file and quotes the line.
//!
//! # Counts
//!
//! A folded file carries one number per stack. For count deltas beside
//! byte deltas, give each side a second, count-weighted file of the same
//! recording ([`Side::with_counts`]): `cargo heapprobe trace --weight count`,
//! `cargo heapprobe fold --weight count` on the same capture, the profiler's
//! [`View::AllocatedObjects`], or
//! the `.count.folded` file that `HEAPPROBE_PROFILE=…,out=` writes. An
//! allocation snapshot (`tests/snapshots/*.allocs`) carries both
//! ([`Side::read`] reads it).
//!
//! # Normalisation
//!
//! Off by default: heapprobe's byte totals are exact, and a diff of exact
//! totals is the point. [`Options::normalize`] scales BEFORE to AFTER's
//! total first (and its counts to AFTER's count), for profiles of runs of
//! different lengths, where only the shape can be compared.
//!
//! ```
//! use heapprobe::diff::{Diff, Folded, Options, Side};
//!
//! let before = Folded::parse("# heapprobe: weight=bytes\nmain;parse 1000\nmain;old 512\n", "before")?;
//! let after = Folded::parse("# heapprobe: weight=bytes\nmain;parse 1500\nmain;new 4096\n", "after")?;
//! let diff = Diff::new(Side::new(before), Side::new(after), &Options::default())?;
//! assert_eq!(diff.grew(10)[0].stack, "main;new");
//! assert_eq!(diff.grew(10)[0].delta(), 4096);
//! assert_eq!(diff.shrank(10)[0].delta(), -512);
//! println!("{diff}"); // the summary
//! let svg = diff.svg(); // the differential flame graph
//! # assert!(svg.starts_with("<?xml"));
//! # Ok::<(), heapprobe::diff::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use crate::profile::{Profile, View};

pub(crate) mod snapshot_file;

/// What the numbers of a folded profile count.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Weight {
    /// Bytes: allocated, in use, at the peak.
    Bytes,
    /// Events: allocations, calls, objects.
    Count,
    /// Bytes copied by reallocations that moved their block.
    Moved,
}

impl Weight {
    /// The header's name for it: `bytes`, `count`, `moved`.
    pub fn name(self) -> &'static str {
        match self {
            Weight::Bytes => "bytes",
            Weight::Count => "count",
            Weight::Moved => "moved",
        }
    }

    /// The weight a header names, if it is one.
    pub fn from_name(name: &str) -> Option<Weight> {
        match name {
            "bytes" => Some(Weight::Bytes),
            "count" => Some(Weight::Count),
            "moved" => Some(Weight::Moved),
            _ => None,
        }
    }

    /// A signed amount of this weight: `+4096 B`, `-3`.
    fn signed(self, value: i128) -> String {
        match self {
            Weight::Bytes | Weight::Moved => format!("{value:+} B"),
            Weight::Count => format!("{value:+}"),
        }
    }

    /// An amount of this weight: `4096 B`, `3`.
    fn amount(self, value: impl Into<u128>) -> String {
        let value = value.into();
        match self {
            Weight::Bytes | Weight::Moved => format!("{value} B"),
            Weight::Count => format!("{value}"),
        }
    }
}

/// How every heapprobe header line starts.
pub const HEADER: &str = "# heapprobe:";

/// The header line (with its newline) that records a folded file's weight
/// and where it came from: `header(Weight::Bytes, &[("event", "alloc")])`
/// is `# heapprobe: weight=bytes event=alloc`. Keys and values must not
/// hold whitespace or `=` (they are replaced by `_`).
pub fn header(weight: Weight, source: &[(&str, &str)]) -> String {
    let clean = |s: &str| s.chars().map(|c| if c.is_whitespace() || c == '=' { '_' } else { c }).collect::<String>();
    let mut line = format!("{HEADER} weight={}", weight.name());
    for (key, value) in source {
        let _ = write!(line, " {}={}", clean(key), clean(value));
    }
    line.push('\n');
    line
}

/// Why a profile could not be read or two profiles could not be compared.
/// Each message names the file and says what to do.
#[non_exhaustive]
#[derive(Debug)]
pub enum Error {
    /// A file could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The input holds no stack at all.
    Empty {
        /// Where it came from.
        origin: String,
    },
    /// A line is neither a stack with its weight, a comment nor the header.
    Malformed {
        /// Where it came from.
        origin: String,
        /// The line number, from 1.
        line: usize,
        /// The line itself.
        text: String,
        /// What is wrong with it.
        why: String,
    },
    /// The two sides (or a side and its counts) weigh different things.
    Weights {
        /// What was compared with what, and how to fix it.
        message: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            Error::Empty { origin } => write!(
                f,
                "{origin} holds no stacks: a folded profile has one `root;…;leaf WEIGHT` line per stack \
                 (record one with `cargo heapprobe trace`, `cargo heapprobe fold` or the in-process profiler)"
            ),
            Error::Malformed { origin, line, text, why } => {
                let shown: String = text.chars().take(200).collect();
                let more = if shown.len() < text.len() { "…" } else { "" };
                write!(f, "{origin}:{line}: {why}: {shown:?}{more}")
            }
            Error::Weights { message } => f.write_str(message),
        }
    }
}

/// No [`source`](std::error::Error::source): the message already says what
/// the OS said, and a reporter that prints the chain (anyhow's `{:#}`)
/// would say it twice.
impl std::error::Error for Error {}

/// A folded profile: stacks (frames root first, joined by `;`) and their
/// weights, plus what its header says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    stacks: BTreeMap<String, u64>,
    weight: Option<Weight>,
    source: Vec<(String, String)>,
    origin: String,
}

impl Folded {
    /// An empty profile of `weight` (`None`: not recorded), named `origin`
    /// in messages; fill it with [`add`](Self::add).
    pub fn new(weight: Option<Weight>, origin: &str) -> Folded {
        Folded { stacks: BTreeMap::new(), weight, source: Vec::new(), origin: origin.to_owned() }
    }

    /// Parses folded text; `origin` names it in errors (a path, `BEFORE`).
    ///
    /// # Errors
    /// [`Error::Malformed`] for the first line that is not a stack with a
    /// non-negative integer weight, a comment or (first) the header;
    /// [`Error::Empty`] if there is no stack.
    pub fn parse(text: &str, origin: &str) -> Result<Folded, Error> {
        let mut folded = Folded::new(None, origin);
        let malformed = |line: usize, text: &str, why: &str| Error::Malformed {
            origin: origin.to_owned(),
            line,
            text: text.to_owned(),
            why: why.to_owned(),
        };
        let mut seen_stack = false;
        let mut seen_header = false;
        // Every sum over the stacks (a stack's repeated lines, the total,
        // a frame's inclusive weight) then fits in a u64.
        let mut total = 0u64;
        for (index, raw) in text.lines().enumerate() {
            let number = index + 1;
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix(HEADER) {
                if seen_stack || seen_header {
                    return Err(malformed(number, line, "a second heapprobe header, or one after the stacks"));
                }
                seen_header = true;
                for pair in rest.split_whitespace() {
                    let Some((key, value)) = pair.split_once('=') else {
                        return Err(malformed(number, line, "the header holds `key=value` pairs only"));
                    };
                    if key == "weight" {
                        folded.weight = Some(Weight::from_name(value).ok_or_else(|| {
                            malformed(number, line, "unknown weight (this heapprobe knows bytes, count and moved)")
                        })?);
                    } else {
                        folded.source.push((key.to_owned(), value.to_owned()));
                    }
                }
                if folded.weight.is_none() {
                    return Err(malformed(number, line, "the heapprobe header has no weight="));
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let Some((stack, weight)) = line.trim_end().rsplit_once([' ', '\t']) else {
                return Err(malformed(number, line, "not `STACK WEIGHT`: no space before a weight"));
            };
            let stack = stack.trim_end();
            let weight: u64 = weight.parse().map_err(|_| {
                let why = if weight.parse::<f64>().is_ok() {
                    "the weight is not a non-negative integer"
                } else {
                    "not `STACK WEIGHT`: the last field is not a number"
                };
                malformed(number, line, why)
            })?;
            if stack.is_empty() {
                return Err(malformed(number, line, "a weight without a stack"));
            }
            if let Some((_, last)) = stack.rsplit_once([' ', '\t']) {
                if last.parse::<f64>().is_ok() {
                    return Err(malformed(
                        number,
                        line,
                        "two numbers after the stack: this is a differential file (as inferno-diff-folded \
                         writes); give the two profiles it was made from",
                    ));
                }
            }
            total = total.checked_add(weight).ok_or_else(|| {
                malformed(
                    number,
                    line,
                    "the weights add up past 18446744073709551615 (u64::MAX) here: the profile's total \
                     cannot be represented",
                )
            })?;
            seen_stack = true;
            folded.add(stack, weight);
        }
        if folded.stacks.is_empty() {
            return Err(Error::Empty { origin: origin.to_owned() });
        }
        Ok(folded)
    }

    /// Reads and parses a folded file (see [`parse`](Self::parse)).
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be read, else as [`parse`](Self::parse).
    pub fn read(path: impl AsRef<Path>) -> Result<Folded, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
        Folded::parse(&text, &path.display().to_string())
    }

    /// Adds `weight` to `stack` (frames root first, joined by `;`),
    /// saturating at `u64::MAX` ([`parse`](Self::parse) rejects a file
    /// whose weights add up past it).
    pub fn add(&mut self, stack: &str, weight: u64) {
        let entry = self.stacks.entry(stack.to_owned()).or_insert(0);
        *entry = entry.saturating_add(weight);
    }

    /// The weight its header records (`None`: no header).
    pub fn weight(&self) -> Option<Weight> {
        self.weight
    }

    /// The header's other `key=value` pairs (`event=alloc`, `view=alloc_space`).
    pub fn source(&self) -> &[(String, String)] {
        &self.source
    }

    /// Where it came from (for messages).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The stacks and their weights, sorted by stack.
    pub fn stacks(&self) -> impl Iterator<Item = (&str, u64)> {
        self.stacks.iter().map(|(s, w)| (s.as_str(), *w))
    }

    /// The weight of one stack (0 if absent).
    pub fn get(&self, stack: &str) -> u64 {
        self.stacks.get(stack).copied().unwrap_or(0)
    }

    /// The sum of the weights, saturating at `u64::MAX` (never reached by
    /// a parsed file).
    pub fn total(&self) -> u64 {
        self.stacks.values().fold(0u64, |a, w| a.saturating_add(*w))
    }

    /// The folded text: the header (when the weight is known), then one
    /// line per stack, sorted.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if let Some(weight) = self.weight {
            let source: Vec<(&str, &str)> = self.source.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            out.push_str(&header(weight, &source));
        }
        for (stack, weight) in &self.stacks {
            let _ = writeln!(out, "{stack} {weight}");
        }
        out
    }
}

/// One side of a diff: a profile, and optionally a count-weighted profile
/// of the same recording for count deltas.
#[derive(Clone, Debug)]
pub struct Side {
    weights: Folded,
    counts: Option<Folded>,
}

impl Side {
    /// A side without counts.
    pub fn new(weights: Folded) -> Side {
        Side { weights, counts: None }
    }

    /// A side with counts.
    ///
    /// # Errors
    /// [`Error::Weights`] if `counts`' header says it is not
    /// count-weighted, if `weights` is count-weighted itself, or if the two
    /// share no stack (they cannot be of the same recording).
    pub fn with_counts(weights: Folded, counts: Folded) -> Result<Side, Error> {
        if let Some(w) = counts.weight.filter(|w| *w != Weight::Count) {
            return Err(Error::Weights {
                message: format!(
                    "{} is weighted by {}, not count: the counts must come from a count-weighted profile \
                     (`--weight count`, or the profiler's alloc_objects view)",
                    counts.origin,
                    w.name()
                ),
            });
        }
        if weights.weight == Some(Weight::Count) {
            return Err(Error::Weights {
                message: format!(
                    "{} is count-weighted already: give counts only beside a bytes-weighted profile",
                    weights.origin
                ),
            });
        }
        if !counts.stacks.keys().any(|s| weights.stacks.contains_key(s)) {
            return Err(Error::Weights {
                message: format!(
                    "{} and {} share no stack: the counts must be of the same recording as the weights",
                    counts.origin, weights.origin
                ),
            });
        }
        Ok(Side { weights, counts: Some(counts) })
    }

    /// Reads a side from a file: an allocation snapshot (`*.allocs`, bytes
    /// and counts), or a folded file (with the count-weighted `counts`
    /// file, if given).
    ///
    /// # Errors
    /// As [`Folded::read`] and [`Side::with_counts`]; a malformed snapshot
    /// is [`Error::Malformed`].
    pub fn read(path: impl AsRef<Path>, counts: Option<&Path>) -> Result<Side, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
        let origin = path.display().to_string();
        if text.starts_with(snapshot_file::FIRST_LINE) {
            let side = snapshot_file::side_of(&text, &origin)?;
            if let Some(counts) = counts {
                return Err(Error::Weights {
                    message: format!(
                        "{origin} is an allocation snapshot, which carries its counts: drop {}",
                        counts.display()
                    ),
                });
            }
            return Ok(side);
        }
        let weights = Folded::parse(&text, &origin)?;
        match counts {
            Some(counts) => Side::with_counts(weights, Folded::read(counts)?),
            None => Ok(Side::new(weights)),
        }
    }

    /// A side from the in-process profiler: `view`'s folded stacks, with
    /// the matching objects view as its counts when `view` weighs bytes
    /// (`alloc_space` with `alloc_objects`, and so on).
    ///
    /// # Errors
    /// [`Error::Empty`] if the profile holds no stack of `view`.
    pub fn from_profile(profile: &Profile, view: View, origin: &str) -> Result<Side, Error> {
        let folded = |view: View, origin: &str| {
            let weight = if view.unit() == "bytes" { Weight::Bytes } else { Weight::Count };
            let text = header(weight, &[("view", view.name())]) + &profile.folded(view);
            Folded::parse(&text, origin)
        };
        let counts = match view {
            View::AllocatedBytes => Some(View::AllocatedObjects),
            View::InUseBytes => Some(View::InUseObjects),
            View::PeakBytes => Some(View::PeakObjects),
            _ => None,
        };
        let weights = folded(view, origin)?;
        match counts {
            Some(counts) => Side::with_counts(weights, folded(counts, &format!("{origin} ({})", counts.name()))?),
            None => Ok(Side::new(weights)),
        }
    }

    /// The side with allocator frames trimmed ([`trim_allocator_frames`]).
    fn trimmed(self) -> Side {
        let trim = |folded: Folded| {
            let Folded { stacks, weight, source, origin } = folded;
            let mut out = Folded { stacks: BTreeMap::new(), weight, source, origin };
            for (stack, weight) in stacks {
                out.add(&trim_allocator_frames(&stack), weight);
            }
            out
        };
        Side { weights: trim(self.weights), counts: self.counts.map(trim) }
    }

    /// The profile.
    pub fn weights(&self) -> &Folded {
        &self.weights
    }

    /// Its counts, if it has them.
    pub fn counts(&self) -> Option<&Folded> {
        self.counts.as_ref()
    }
}

/// Options of a [`Diff`] and its flame graph. Build one from
/// [`Default::default`] and change what differs.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct Options {
    /// Scale BEFORE (and its counts) to AFTER's total before comparing, for
    /// profiles of runs of different lengths. Default is `false`: heapprobe's
    /// totals are exact, so the raw difference is the finding.
    pub normalize: bool,
    /// How many stacks the summary lists as grown and as shrunk. Default is `10`.
    pub top: usize,
    /// The flame graph's title. Default is `"heapprobe: allocation diff"`.
    pub title: String,
    /// The flame graph's width in pixels. Default is `1200`.
    pub width: u32,
    /// Leave frames narrower than this many pixels out of the flame graph
    /// (they stay in the summary). Default is `0.1`.
    pub min_width: f64,
    /// Keep the allocator's own frames atop each stack: heapprobe's
    /// wrapper, `__rust_alloc` and the standard library's plumbing under
    /// the method the code called (`Vec::with_capacity`, `Box::new`). Default
    /// is `false`: they are trimmed (as `cargo heapprobe trace` does by
    /// default, and allocation snapshots always do), so every tower ends at
    /// the allocation site; stacks that become the same are merged.
    pub keep_allocator_frames: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            normalize: false,
            top: 10,
            title: String::from("heapprobe: allocation diff"),
            width: 1200,
            min_width: 0.1,
            keep_allocator_frames: false,
        }
    }
}

/// One stack of a diff.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The stack, frames root first joined by `;`.
    pub stack: String,
    /// Its weight before (scaled, with [`Options::normalize`]).
    pub before: u64,
    /// Its weight after.
    pub after: u64,
    /// Its count before, when both sides have counts.
    pub before_count: Option<u64>,
    /// Its count after, when both sides have counts.
    pub after_count: Option<u64>,
}

impl Row {
    /// `after - before`.
    pub fn delta(&self) -> i128 {
        self.after as i128 - self.before as i128
    }

    /// `after_count - before_count`, when counted.
    pub fn count_delta(&self) -> Option<i128> {
        Some(self.after_count? as i128 - self.before_count? as i128)
    }

    /// Whether the stack grew (its weight, or with an equal weight its count).
    fn grew(&self) -> bool {
        self.delta() > 0 || (self.delta() == 0 && self.count_delta().unwrap_or(0) > 0)
    }

    fn shrank(&self) -> bool {
        self.delta() < 0 || (self.delta() == 0 && self.count_delta().unwrap_or(0) < 0)
    }

    /// Where the stack allocated: its innermost frame that is not
    /// allocator machinery, then up to two callers (`site <- caller <- caller`).
    pub fn site(&self) -> String {
        site(&self.stack)
    }
}

/// Two profiles lined up stack by stack. Its `Display` is the terminal
/// summary.
#[derive(Clone, Debug)]
pub struct Diff {
    weight: Option<Weight>,
    before_name: String,
    after_name: String,
    rows: Vec<Row>,
    /// Raw totals (before normalisation): weights, then counts.
    before_total: u64,
    after_total: u64,
    before_count: Option<u64>,
    after_count: Option<u64>,
    scale: Option<f64>,
    notes: Vec<String>,
    options: Options,
}

impl Diff {
    /// Lines `before` and `after` up.
    ///
    /// # Errors
    /// [`Error::Weights`] when the two record different weights (bytes
    /// against counts), or only one of them has counts.
    pub fn new(before: Side, after: Side, options: &Options) -> Result<Diff, Error> {
        let (before, after) =
            if options.keep_allocator_frames { (before, after) } else { (before.trimmed(), after.trimmed()) };
        let (b, a) = (&before.weights, &after.weights);
        let weight = match (b.weight, a.weight) {
            (Some(x), Some(y)) if x != y => {
                return Err(Error::Weights {
                    message: format!(
                        "{} is weighted by {} and {} by {}: a diff compares like with like; record both with \
                         the same weight (`--weight {}` on both, or the same profiler view)",
                        b.origin,
                        x.name(),
                        a.origin,
                        y.name(),
                        x.name()
                    ),
                })
            }
            (x, y) => x.or(y),
        };
        let mut notes = Vec::new();
        for (key, value) in &b.source {
            if let Some((_, other)) = a.source.iter().find(|(k, v)| k == key && v != value) {
                notes.push(format!("BEFORE records {key}={value}, AFTER {key}={other}: they measure different things"));
            }
        }
        match (b.weight, a.weight, weight) {
            (None, None, _) => notes.push(format!(
                "no `{HEADER} weight=…` header in {} or {}: what the numbers count is not recorded, so they \
                 are shown plain",
                b.origin, a.origin
            )),
            (None, _, Some(w)) | (_, None, Some(w)) => {
                let missing = if b.weight.is_none() { &b.origin } else { &a.origin };
                notes.push(format!(
                    "no `{HEADER} weight=…` header in {missing}: its numbers are taken to be {}, as the other \
                     side's",
                    w.name()
                ));
            }
            _ => {}
        }
        let counts = match (&before.counts, &after.counts) {
            (Some(x), Some(y)) => Some((x, y)),
            (None, None) => None,
            (Some(c), None) | (None, Some(c)) => {
                return Err(Error::Weights {
                    message: format!(
                        "counts were given for one side only ({}): give both sides' counts, or neither",
                        c.origin
                    ),
                })
            }
        };
        let (before_total, after_total) = (b.total(), a.total());
        let scale = (options.normalize && before_total > 0).then(|| after_total as f64 / before_total as f64);
        let count_scale =
            counts.and_then(|(x, y)| (options.normalize && x.total() > 0).then(|| y.total() as f64 / x.total() as f64));
        let scaled = |w: u64, s: Option<f64>| s.map_or(w, |s| (w as f64 * s).round() as u64);
        let mut stacks: Vec<&String> = b.stacks.keys().chain(a.stacks.keys()).collect();
        if let Some((x, y)) = counts {
            stacks.extend(x.stacks.keys().chain(y.stacks.keys()));
        }
        stacks.sort_unstable();
        stacks.dedup();
        let rows = stacks
            .into_iter()
            .map(|stack| Row {
                stack: stack.clone(),
                before: scaled(b.get(stack), scale),
                after: a.get(stack),
                before_count: counts.map(|(x, _)| scaled(x.get(stack), count_scale)),
                after_count: counts.map(|(_, y)| y.get(stack)),
            })
            .collect();
        Ok(Diff {
            weight,
            before_name: b.origin.clone(),
            after_name: a.origin.clone(),
            rows,
            before_total,
            after_total,
            before_count: counts.map(|(x, _)| x.total()),
            after_count: counts.map(|(_, y)| y.total()),
            scale,
            notes,
            options: options.clone(),
        })
    }

    /// The weight both sides record (`None`: neither has a header).
    pub fn weight(&self) -> Option<Weight> {
        self.weight
    }

    /// Every stack, sorted by stack.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The weight totals before (unscaled) and after.
    pub fn totals(&self) -> (u64, u64) {
        (self.before_total, self.after_total)
    }

    /// The count totals before (unscaled) and after, when both sides have counts.
    pub fn count_totals(&self) -> Option<(u64, u64)> {
        self.before_count.zip(self.after_count)
    }

    /// The `n` stacks that grew most, largest growth first.
    pub fn grew(&self, n: usize) -> Vec<&Row> {
        let mut grew: Vec<&Row> = self.rows.iter().filter(|r| r.grew()).collect();
        grew.sort_by(|x, y| {
            y.delta().cmp(&x.delta()).then(y.count_delta().cmp(&x.count_delta())).then(x.stack.cmp(&y.stack))
        });
        grew.truncate(n);
        grew
    }

    /// The `n` stacks that shrank most, largest shrink first.
    pub fn shrank(&self, n: usize) -> Vec<&Row> {
        let mut shrank: Vec<&Row> = self.rows.iter().filter(|r| r.shrank()).collect();
        shrank.sort_by(|x, y| {
            x.delta().cmp(&y.delta()).then(x.count_delta().cmp(&y.count_delta())).then(x.stack.cmp(&y.stack))
        });
        shrank.truncate(n);
        shrank
    }

    /// The terminal summary (also the `Display`).
    pub fn summary(&self) -> String {
        self.to_string()
    }

    fn weight_or_plain(&self) -> Weight {
        self.weight.unwrap_or(Weight::Count)
    }

    fn weight_label(&self) -> &'static str {
        match self.weight {
            Some(Weight::Bytes) => "bytes",
            Some(Weight::Count) => "count",
            Some(Weight::Moved) => "bytes copied by moving reallocs",
            None => "weight not recorded",
        }
    }

    /// The differential flame graph, as SVG text (see the module docs).
    pub fn svg(&self) -> String {
        svg::render(self)
    }

    /// Writes [`svg`](Self::svg) to `path`.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn write_svg(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.svg())
    }
}

fn percent(before: impl Into<u128>, after: impl Into<u128>) -> String {
    let (before, after) = (before.into(), after.into());
    if before == 0 {
        return if after == 0 { String::from("unchanged") } else { String::from("new") };
    }
    format!("{:+.1}%", 100.0 * (after as f64 - before as f64) / before as f64)
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.weight_or_plain();
        let (before, after) =
            (crate::profile::printable(&self.before_name), crate::profile::printable(&self.after_name));
        writeln!(f, "heapprobe diff ({}): {before} -> {after}", self.weight_label())?;
        let counted = |n: Option<u64>| n.map(|n| format!(", count {n}")).unwrap_or_default();
        writeln!(f, "  before: {}{}", w.amount(self.before_total), counted(self.before_count))?;
        writeln!(f, "  after:  {}{}", w.amount(self.after_total), counted(self.after_count))?;
        let count_change = match self.count_totals() {
            Some((x, y)) => format!(", count {:+} ({})", y as i128 - x as i128, percent(x, y)),
            None => String::new(),
        };
        writeln!(
            f,
            "  change: {} ({}){count_change}",
            w.signed(self.after_total as i128 - self.before_total as i128),
            percent(self.before_total, self.after_total)
        )?;
        if let Some(scale) = self.scale {
            writeln!(
                f,
                "  normalised: BEFORE scaled by {scale:.4} to AFTER's total; the stacks' changes below are in \
                 shape, not in absolute amounts"
            )?;
        }
        let (grew, shrank) =
            (self.rows.iter().filter(|r| r.grew()).count(), self.rows.iter().filter(|r| r.shrank()).count());
        writeln!(
            f,
            "  stacks: {grew} grew, {shrank} shrank, {} unchanged, {} in all",
            self.rows.len() - grew - shrank,
            self.rows.len()
        )?;
        if self.count_totals().is_none() {
            writeln!(f, "  counts: not given (pass each side's count-weighted profile for count deltas)")?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        for (label, rows, total) in
            [("grew", self.grew(self.options.top), grew), ("shrank", self.shrank(self.options.top), shrank)]
        {
            if rows.is_empty() {
                continue;
            }
            let noun = if rows.len() == 1 { "stack" } else { "stacks" };
            writeln!(f, "top {} {noun} that {label} (of {total}):", rows.len())?;
            let amounts: Vec<String> = rows.iter().map(|r| w.signed(r.delta())).collect();
            let counts: Vec<String> =
                rows.iter().map(|r| r.count_delta().map(|c| format!("{c:+}")).unwrap_or_default()).collect();
            let aw = amounts.iter().map(String::len).max().unwrap_or(0);
            let cw = counts.iter().map(String::len).max().unwrap_or(0);
            for ((row, amount), count) in rows.iter().zip(&amounts).zip(&counts) {
                let tag = match (row.before, row.after) {
                    (0, _) => "  (new)",
                    (_, 0) => "  (gone)",
                    _ => "",
                };
                let count = if cw > 0 { format!("  {count:>cw$}") } else { String::new() };
                // A frame name from a file may hold anything: no escape
                // sequence reaches the terminal.
                writeln!(f, "  {amount:>aw$}{count}  {}{tag}", crate::profile::printable(&row.site()))?;
            }
        }
        Ok(())
    }
}

/// The crate a demangled frame belongs to: the first path segment, or for
/// `<Type as Trait>::method` the type's crate when it has a path, else the
/// trait's (`<[T] as alloc::slice::hack::ConvertVec>`). heapprobe-cli
/// trims the allocator's frames with it too.
pub fn crate_of(frame: &str) -> Option<&str> {
    fn first_segment(path: &str) -> Option<&str> {
        let end = path.find("::")?;
        let segment = &path[..end];
        (!segment.is_empty() && segment.chars().all(|c| c.is_alphanumeric() || c == '_')).then_some(segment)
    }
    let Some(qualified) = frame.strip_prefix('<') else { return first_segment(frame) };
    let mut depth = 0usize;
    for (i, b) in qualified.bytes().enumerate() {
        match b {
            b'<' | b'[' | b'(' => depth += 1,
            b'>' | b']' | b')' if depth == 0 => return first_segment(&qualified[..i]),
            b'>' | b']' | b')' => depth -= 1,
            b' ' if depth == 0 && qualified[i..].starts_with(" as ") => {
                return first_segment(&qualified[..i]).or_else(|| first_segment(&qualified[i + 4..]));
            }
            _ => {}
        }
    }
    None
}

/// heapprobe's own frames and the global allocator's shims.
pub(crate) fn is_allocator_frame(frame: &str) -> bool {
    let name = frame.strip_prefix("__rustc::").unwrap_or(frame);
    crate_of(frame) == Some("heapprobe")
        || name.starts_with("__rust_")
        || name.starts_with("__rdl_")
        || name.starts_with("__rg_")
}

/// The standard library's frames (and hashbrown's: std's maps are it).
pub(crate) fn is_std_frame(frame: &str) -> bool {
    matches!(crate_of(frame), Some("alloc" | "core" | "std" | "hashbrown"))
}

/// A stack (root first) without the allocator's own frames atop it: first
/// heapprobe's frames and the global allocator's shims (`__rust_alloc`,
/// `__rdl_alloc`, …), then, of the standard library's frames left on top,
/// all but the outermost: the method the code called (`Vec::with_capacity`,
/// `Box::new`, `HashMap::insert`) stays, `RawVec` and `Global::alloc_impl`
/// under it go. Never every frame: a stack of allocator frames only keeps
/// its outermost. (The rule of `cargo heapprobe trace`'s default.)
pub fn trim_allocator_frames(stack: &str) -> String {
    let frames: Vec<&str> = stack.split(';').collect();
    let n = frames.len();
    let allocator = frames.iter().rev().take_while(|f| is_allocator_frame(f)).count();
    let library = frames[..n - allocator].iter().rev().take_while(|f| is_std_frame(f)).count();
    let keep = n - (allocator + library.saturating_sub(1)).min(n.saturating_sub(1));
    frames[..keep].join(";")
}

/// Where a stack (root first) allocated: its innermost frame that is
/// neither the allocator's nor the standard library's, then up to two
/// callers that are not either (iterator adapters, `call_once` shims), as
/// `site <- caller <- caller`; the innermost frame if every one is.
pub(crate) fn site(stack: &str) -> String {
    let own = |f: &&str| !is_allocator_frame(f) && !is_std_frame(f) && *f != "[truncated]";
    let frames: Vec<&str> = stack.rsplit(';').filter(own).take(3).collect();
    if frames.is_empty() {
        return stack.rsplit(';').next().unwrap_or_default().to_owned();
    }
    frames.join(" <- ")
}

/// A frame name made safe for terminals, folded files, JSON and SVG: every
/// control character (escape sequences), and U+FFFE and U+FFFF (which XML
/// forbids), written as a visible `\u{…}` escape. Every output of
/// heapprobe's, and `cargo heapprobe`'s summaries, name frames through it.
pub use crate::profile::printable;

mod svg {
    //! The differential flame graph: one `<g class="f">` per frame, with
    //! its weights in `data-` attributes, a tooltip, and a small script
    //! that zooms into a clicked frame.

    use std::collections::BTreeMap;
    use std::fmt::Write as _;

    use super::Diff;

    const FRAME_HEIGHT: f64 = 16.0;
    const FONT_SIZE: f64 = 12.0;
    /// Average character width, in font sizes (inferno's figure for Verdana).
    const FONT_WIDTH: f64 = 0.59;
    const PAD: f64 = 10.0;
    const HEAD: f64 = 84.0;
    const FOOT: f64 = 24.0;

    struct Node {
        name: String,
        children: BTreeMap<String, usize>,
        // Sums over stacks, of both sides for `width`: u128, which no
        // number of u64 weights overflows.
        before: u128,
        after: u128,
        before_count: Option<u128>,
        after_count: Option<u128>,
        width: u128,
    }

    impl Node {
        fn new(name: &str) -> Node {
            Node {
                name: name.to_owned(),
                children: BTreeMap::new(),
                before: 0,
                after: 0,
                before_count: None,
                after_count: None,
                width: 0,
            }
        }
        fn delta(&self) -> i128 {
            self.after as i128 - self.before as i128
        }
    }

    /// The frames: every stack's frames merged into a tree, each node
    /// with the inclusive weights before and after and the width (the sum
    /// over its stacks of the larger side). Node 0 is the root, `all`.
    fn tree(diff: &Diff) -> Vec<Node> {
        let mut nodes = vec![Node::new("all")];
        for row in &diff.rows {
            let width = u128::from(row.before.max(row.after));
            let add = |node: &mut Node| {
                node.before += u128::from(row.before);
                node.after += u128::from(row.after);
                node.width += width;
                if let (Some(b), Some(a)) = (row.before_count, row.after_count) {
                    *node.before_count.get_or_insert(0) += u128::from(b);
                    *node.after_count.get_or_insert(0) += u128::from(a);
                }
            };
            let mut at = 0;
            add(&mut nodes[at]);
            for frame in row.stack.split(';') {
                let next = nodes.len();
                let child = *nodes[at].children.entry(frame.to_owned()).or_insert(next);
                if child == next {
                    nodes.push(Node::new(frame));
                }
                at = child;
                add(&mut nodes[at]);
            }
        }
        nodes
    }

    fn escape(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&apos;"),
                // Not allowed in XML 1.0 at all.
                c if (c as u32) < 0x20 && c != '\t' && c != '\n' => out.push('\u{fffd}'),
                '\u{fffe}' | '\u{ffff}' => out.push('\u{fffd}'),
                c => out.push(c),
            }
        }
        out
    }

    /// The fill for an inclusive change: red for growth, blue for shrink,
    /// deeper the larger the change relative to the largest; grey for none.
    /// The scale is a square root, with a floor, so that a small change is
    /// still visibly red or blue.
    pub(super) fn fill(delta: i128, max: u128) -> (u8, u8, u8) {
        if delta == 0 || max == 0 {
            return (221, 221, 221);
        }
        let ratio = (delta.unsigned_abs() as f64 / max as f64).min(1.0);
        let strength = 0.25 + 0.75 * ratio.sqrt();
        let other = (60.0 + 170.0 * (1.0 - strength)).round() as u8;
        if delta > 0 {
            (255, other, other)
        } else {
            (other, other, 255)
        }
    }

    /// The label that fits `pixels`: the name, or its start and `..`.
    fn label(name: &str, pixels: f64) -> String {
        let fits = ((pixels - 6.0) / (FONT_SIZE * FONT_WIDTH)).floor();
        if fits < 3.0 {
            return String::new();
        }
        let fits = fits as usize;
        if name.chars().count() <= fits {
            return name.to_owned();
        }
        let mut short: String = name.chars().take(fits - 2).collect();
        short.push_str("..");
        short
    }

    pub(super) fn render(diff: &Diff) -> String {
        let nodes = tree(diff);
        let weight = diff.weight_or_plain();
        let options = &diff.options;
        let image_width = f64::from(options.width.max(200));
        let usable = image_width - 2.0 * PAD;
        let total = nodes[0].width.max(1) as f64;
        // Colours scale to the largest change of a frame other than the root
        // (the root's is the total, which would wash every other frame out).
        let max_delta = nodes.iter().skip(1).map(|n| n.delta().unsigned_abs()).max().unwrap_or(0);

        // Lay out: (node, depth, x in weight units), children in name order.
        let mut placed: Vec<(usize, usize, u128)> = Vec::new();
        let mut stack = vec![(0usize, 0usize, 0u128)];
        let mut max_depth = 0;
        while let Some((at, depth, x)) = stack.pop() {
            let pixels = nodes[at].width as f64 / total * usable;
            if at != 0 && pixels < options.min_width {
                continue;
            }
            placed.push((at, depth, x));
            max_depth = max_depth.max(depth);
            let mut offset = x;
            let mut children = Vec::new();
            for &child in nodes[at].children.values() {
                children.push((child, depth + 1, offset));
                offset += nodes[child].width;
            }
            stack.extend(children.into_iter().rev());
        }
        let height = HEAD + (max_depth + 1) as f64 * FRAME_HEIGHT + FOOT;

        let mut out = String::new();
        let _ = writeln!(out, r#"<?xml version="1.0" standalone="no"?>"#);
        let _ = writeln!(
            out,
            r#"<svg version="1.1" width="{image_width}" height="{height}" viewBox="0 0 {image_width} {height}" xmlns="http://www.w3.org/2000/svg" data-generator="heapprobe::diff" data-total="{}">"#,
            nodes[0].width
        );
        let _ = writeln!(
            out,
            "<style type=\"text/css\">text {{ font-family: Verdana, sans-serif; font-size: {FONT_SIZE}px; fill: rgb(0,0,0); }} \
             #title {{ font-size: 17px; text-anchor: middle; }} \
             #subtitle {{ text-anchor: middle; fill: rgb(60,60,60); }} \
             g.f {{ cursor: pointer; }} g.f:hover rect {{ stroke: rgb(0,0,0); stroke-width: 0.8; }} \
             g.gone rect {{ stroke: rgb(0,0,140); stroke-width: 0.8; stroke-dasharray: 3,2; }} \
             g.new rect {{ stroke: rgb(140,0,0); stroke-width: 0.8; }}</style>"
        );
        let _ = writeln!(out, "{}", SCRIPT);
        let _ = writeln!(out, r#"<rect x="0" y="0" width="{image_width}" height="{height}" fill="rgb(250,250,250)"/>"#);
        let _ = writeln!(out, r#"<text id="title" x="{}" y="24">{}</text>"#, image_width / 2.0, escape(&options.title));
        let change = diff.after_total as i128 - diff.before_total as i128;
        let mut subtitle = format!(
            "{} → {}: {} → {} ({}, {})",
            diff.before_name,
            diff.after_name,
            weight.amount(diff.before_total),
            weight.amount(diff.after_total),
            weight.signed(change),
            super::percent(diff.before_total, diff.after_total)
        );
        if let Some((b, a)) = diff.count_totals() {
            let _ = write!(subtitle, "; count {b} → {a} ({:+})", a as i128 - b as i128);
        }
        if let Some(scale) = diff.scale {
            let _ = write!(subtitle, "; BEFORE normalised ×{scale:.4}");
        }
        let _ = writeln!(out, r#"<text id="subtitle" x="{}" y="44">{}</text>"#, image_width / 2.0, escape(&subtitle));
        // The legend: what colour and width mean.
        let mut x = PAD;
        let legend_y = 64.0;
        for (text, rgb, class) in [
            ("grew", fill(1, 1), ""),
            ("shrank", fill(-1, 1), ""),
            ("unchanged", fill(0, 1), ""),
            ("only before (dashed)", fill(-1, 4), "gone"),
            ("new (outlined)", fill(1, 4), "new"),
        ] {
            let _ = writeln!(
                out,
                r#"<g class="{class}"><rect x="{x}" y="{}" width="14" height="12" fill="rgb({},{},{})"/></g><text class="legend" x="{}" y="{legend_y}">{text}</text>"#,
                legend_y - 10.0,
                rgb.0,
                rgb.1,
                rgb.2,
                x + 18.0
            );
            x += 24.0 + text.len() as f64 * 7.0;
        }
        let _ = writeln!(
            out,
            r#"<text class="legend" x="{x}" y="{legend_y}">colour: the change of the frame and everything above it; width: each stack's larger side; click to zoom</text>"#
        );
        let _ = writeln!(out, r#"<g id="frames">"#);
        for (at, depth, x) in placed {
            let node = &nodes[at];
            let px = PAD + x as f64 / total * usable;
            let pw = node.width as f64 / total * usable;
            let y = height - FOOT - (depth + 1) as f64 * FRAME_HEIGHT;
            let (r, g, b) = fill(node.delta(), max_delta);
            let class = match (node.before, node.after) {
                (0, a) if a > 0 => "f new",
                (b, 0) if b > 0 => "f gone",
                _ => "f",
            };
            let mut title = format!(
                "{}\nbefore: {}\nafter: {}\nchange: {} ({})",
                node.name,
                weight.amount(node.before),
                weight.amount(node.after),
                weight.signed(node.delta()),
                super::percent(node.before, node.after)
            );
            if let (Some(bc), Some(ac)) = (node.before_count, node.after_count) {
                let _ = write!(title, "\ncount: {bc} → {ac} ({:+})", ac as i128 - bc as i128);
            }
            let _ = writeln!(
                out,
                r#"<g class="{class}" data-x="{x}" data-w="{}" data-d="{depth}" data-before="{}" data-after="{}" data-delta="{:+}"><title>{}</title><rect x="{px:.2}" y="{y:.1}" width="{pw:.2}" height="{}" fill="rgb({r},{g},{b})" rx="2" ry="2"/><text x="{:.2}" y="{:.1}">{}</text></g>"#,
                node.width,
                node.before,
                node.after,
                node.delta(),
                escape(&title),
                FRAME_HEIGHT - 1.0,
                px + 3.0,
                y + FRAME_HEIGHT - 4.5,
                escape(&label(&node.name, pw)),
            );
        }
        let _ = writeln!(out, "</g>");
        let _ = writeln!(
            out,
            r#"<text id="details" x="{PAD}" y="{}">hover a frame for its figures before and after</text>"#,
            height - 8.0
        );
        out.push_str("</svg>\n");
        out
    }

    /// Zoom: a click on a frame widens it (and its subtree) to the full
    /// width, keeps its ancestors full width and hides the rest; a click
    /// on the root restores everything.
    const SCRIPT: &str = r#"<script type="text/ecmascript"><![CDATA[
(function () {
  var svg = document.documentElement;
  var frames = Array.prototype.slice.call(document.querySelectorAll("g.f"));
  var width = parseFloat(svg.getAttribute("width")), pad = 10, usable = width - 2 * pad;
  function num(g, key) { return parseFloat(g.getAttribute("data-" + key)); }
  function name(g) { return g.querySelector("title").textContent.split("\n")[0]; }
  function fit(text, px) {
    var n = Math.floor((px - 6) / (12 * 0.59));
    if (n < 3) return "";
    return text.length <= n ? text : text.slice(0, n - 2) + "..";
  }
  function place(g, x, w) {
    var rect = g.querySelector("rect"), label = g.querySelector("text");
    g.style.display = "";
    rect.setAttribute("x", (pad + x * usable).toFixed(2));
    rect.setAttribute("width", (w * usable).toFixed(2));
    label.setAttribute("x", (pad + x * usable + 3).toFixed(2));
    label.textContent = fit(name(g), w * usable);
  }
  function zoom(target) {
    var x = num(target, "x"), w = num(target, "w"), d = num(target, "d");
    if (w <= 0) return;
    frames.forEach(function (g) {
      var gx = num(g, "x"), gw = num(g, "w"), gd = num(g, "d");
      if (gd >= d && gx >= x && gx + gw <= x + w) place(g, (gx - x) / w, gw / w);
      else if (gd < d && gx <= x && gx + gw >= x + w) place(g, 0, 1);
      else g.style.display = "none";
    });
  }
  var details = document.getElementById("details");
  frames.forEach(function (g) {
    g.addEventListener("click", function () { zoom(g); });
    g.addEventListener("mouseover", function () {
      details.textContent = g.querySelector("title").textContent.split("\n").join("   ");
    });
  });
})();
]]></script>"#;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(text: &str, origin: &str) -> Side {
        Side::new(Folded::parse(text, origin).unwrap())
    }

    #[test]
    fn parses_the_header_comments_and_sums_repeated_stacks() {
        let f =
            Folded::parse("# heapprobe: weight=count event=alloc\n# a comment\n\na;b 2\na;b 3\nc 0\n", "x").unwrap();
        assert_eq!(f.weight(), Some(Weight::Count));
        assert_eq!(f.source(), &[(String::from("event"), String::from("alloc"))]);
        assert_eq!(f.stacks().collect::<Vec<_>>(), [("a;b", 5), ("c", 0)]);
        assert_eq!(f.total(), 5);
        assert_eq!(f.to_text(), "# heapprobe: weight=count event=alloc\na;b 5\nc 0\n");
        // Frames may hold spaces (a thread root `main 123`, `<T as Trait>`).
        let f = Folded::parse("main 123;<u8 as core::clone::Clone>::clone 7\n", "x").unwrap();
        assert_eq!(f.get("main 123;<u8 as core::clone::Clone>::clone"), 7);
    }

    #[test]
    fn rejects_what_it_does_not_understand_with_the_line() {
        let err = |text: &str| Folded::parse(text, "in.folded").unwrap_err().to_string();
        assert!(err("").contains("in.folded holds no stacks"), "{}", err(""));
        assert!(err("# heapprobe: weight=bytes\n# only comments\n").contains("holds no stacks"));
        assert_eq!(
            err("a;b 1\nnot a stack\n"),
            "in.folded:2: not `STACK WEIGHT`: the last field is not a number: \"not a stack\""
        );
        assert!(err("a;b\n").contains("in.folded:1: not `STACK WEIGHT`: no space"));
        assert!(err("a;b 1.5\n").contains("not a non-negative integer"));
        assert!(err("a;b -3\n").contains("not a non-negative integer"));
        assert!(err("a;b 3 4\n").contains("differential file"));
        assert!(err("a 1\n# heapprobe: weight=bytes\n").contains("a second heapprobe header, or one after"));
        assert!(err("# heapprobe: weight=furlongs\na 1\n").contains("unknown weight"));
        assert!(err("# heapprobe: event=alloc\na 1\n").contains("has no weight="));
        assert!(err("a;b 99999999999999999999999\n").contains("in.folded:1"));
    }

    /// Weights whose sum does not fit in a u64 are rejected with the file
    /// and line, not saturated; a diff of two sides that each fit draws
    /// every frame within its parent (the widths add both sides up).
    #[test]
    fn totals_past_u64_are_rejected_and_widths_never_wrap() {
        let max = u64::MAX;
        let err = Folded::parse(&format!("a;b {max}\na;b {max}\n"), "in.folded").unwrap_err().to_string();
        assert!(err.starts_with("in.folded:2: the weights add up past 18446744073709551615"), "{err}");
        let err = Folded::parse(&format!("a;b {max}\na;c 1\n"), "in.folded").unwrap_err().to_string();
        assert!(err.starts_with("in.folded:2: "), "{err}");
        assert_eq!(Folded::parse(&format!("a;b {}\na;c 1\n", max - 1), "x").unwrap().total(), max);

        let diff =
            Diff::new(side(&format!("m;a {max}\n"), "B"), side(&format!("m;b {max}\n"), "A"), &Options::default())
                .unwrap();
        assert_eq!(diff.totals(), (max, max));
        let svg = diff.svg();
        let both = 2 * u128::from(max);
        assert!(svg.contains(&format!(r#"data-total="{both}""#)), "{svg}");
        assert!(svg.contains(&format!(r#"data-w="{both}" data-d="1""#)), "m is as wide as the root");
        assert!(svg.contains(&format!(r#"data-w="{max}" data-d="2""#)), "a and b are half of it");
    }

    /// Frame names from a file may hold anything: the SVG stays valid XML
    /// (no U+FFFE, U+FFFF or control characters) and the terminal summary
    /// shows escape sequences as text.
    #[test]
    fn frame_names_cannot_break_the_svg_or_reach_the_terminal_raw() {
        let evil = "evil\u{1b}[31m\u{fffe}\u{ffff}\u{7}";
        let diff = Diff::new(side(&format!("m;{evil} 5\n"), "B"), side("m;ok 6\n", "A"), &Options::default()).unwrap();
        let svg = diff.svg();
        assert!(svg.contains("<title>evil\u{fffd}[31m\u{fffd}\u{fffd}\u{fffd}\n"), "{svg}");
        let forbidden = |c: char| (c < ' ' && c != '\n' && c != '\t') || matches!(c, '\u{fffe}' | '\u{ffff}');
        assert!(!svg.chars().any(forbidden), "a character XML forbids");
        let summary = diff.summary();
        assert!(!summary.chars().any(|c| c.is_control() && c != '\n'), "{summary:?}");
        assert!(summary.contains(r"evil\u{1b}[31m\u{fffe}\u{ffff}\u{7}"), "{summary}");
    }

    #[test]
    fn different_weights_are_an_error_and_a_missing_header_a_note() {
        let bytes = side("# heapprobe: weight=bytes\na 10\n", "b.folded");
        let count = side("# heapprobe: weight=count\na 1\n", "c.folded");
        let err = Diff::new(bytes.clone(), count, &Options::default()).unwrap_err().to_string();
        assert!(err.contains("b.folded is weighted by bytes and c.folded by count"), "{err}");
        let plain = side("a 12\n", "plain.folded");
        let diff = Diff::new(bytes, plain, &Options::default()).unwrap();
        assert_eq!(diff.weight(), Some(Weight::Bytes));
        assert!(diff.summary().contains("no `# heapprobe: weight=…` header in plain.folded"), "{diff}");
    }

    #[test]
    fn counts_must_be_counts_of_the_same_recording_on_both_sides() {
        let w = || Folded::parse("# heapprobe: weight=bytes\na 10\n", "w").unwrap();
        let c = |t: &str| Folded::parse(t, "c").unwrap();
        assert!(Side::with_counts(w(), c("# heapprobe: weight=bytes\na 1\n"))
            .unwrap_err()
            .to_string()
            .contains("not count"));
        assert!(Side::with_counts(w(), c("b 1\n")).unwrap_err().to_string().contains("share no stack"));
        let counted = Side::with_counts(w(), c("# heapprobe: weight=count\na 1\n")).unwrap();
        let err = Diff::new(counted, Side::new(w()), &Options::default()).unwrap_err().to_string();
        assert!(err.contains("one side only"), "{err}");
    }

    #[test]
    fn rows_sort_growth_and_shrink_with_signed_deltas() {
        let before = Side::with_counts(
            Folded::parse("# heapprobe: weight=bytes\nm;keep 100\nm;grow 1024\nm;old 512\n", "B").unwrap(),
            Folded::parse("m;keep 1\nm;grow 1\nm;old 1\n", "Bc").unwrap(),
        )
        .unwrap();
        let after = Side::with_counts(
            Folded::parse("# heapprobe: weight=bytes\nm;keep 100\nm;grow 2048\nm;new 4096\n", "A").unwrap(),
            Folded::parse("m;keep 1\nm;grow 2\nm;new 1\n", "Ac").unwrap(),
        )
        .unwrap();
        let diff = Diff::new(before, after, &Options::default()).unwrap();
        let grew: Vec<(&str, i128, Option<i128>)> =
            diff.grew(10).iter().map(|r| (r.stack.as_str(), r.delta(), r.count_delta())).collect();
        assert_eq!(grew, [("m;new", 4096, Some(1)), ("m;grow", 1024, Some(1))]);
        let shrank: Vec<(&str, i128)> = diff.shrank(10).iter().map(|r| (r.stack.as_str(), r.delta())).collect();
        assert_eq!(shrank, [("m;old", -512)]);
        let text = diff.summary();
        assert!(text.contains("  before: 1636 B, count 3\n"), "{text}");
        assert!(text.contains("  after:  6244 B, count 4\n"), "{text}");
        assert!(text.contains("  change: +4608 B (+281.7%), count +1 (+33.3%)\n"), "{text}");
        assert!(text.contains("  +4096 B  +1  new <- m  (new)\n"), "{text}");
        assert!(text.contains("  +1024 B  +1  grow <- m\n"), "{text}");
        assert!(text.contains("  -512 B  -1  old <- m  (gone)\n"), "{text}");
        assert!(text.contains("stacks: 2 grew, 1 shrank, 1 unchanged, 4 in all"), "{text}");
    }

    #[test]
    fn normalisation_is_an_option_that_scales_before() {
        let before = || side("a 100\nb 100\n", "B");
        let after = || side("a 200\nb 200\n", "A");
        let raw = Diff::new(before(), after(), &Options::default()).unwrap();
        assert_eq!(raw.grew(10).len(), 2);
        let options = Options { normalize: true, ..Options::default() };
        let normalised = Diff::new(before(), after(), &options).unwrap();
        assert!(normalised.grew(10).is_empty() && normalised.shrank(10).is_empty());
        assert!(normalised.summary().contains("normalised: BEFORE scaled by 2.0000"));
    }

    #[test]
    fn the_site_skips_allocator_and_standard_library_frames() {
        assert_eq!(
            site("main;app::run;app::parse;alloc::vec::Vec<T,A>::push;<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem;__rustc::__rust_alloc;<heapprobe::alloc::Heapprobe<A> as core::alloc::global::GlobalAlloc>::alloc"),
            "app::parse <- app::run <- main"
        );
        assert_eq!(crate_of("<alloc::alloc::Global as core::alloc::Allocator>::allocate"), Some("alloc"));
        assert_eq!(crate_of("<T as alloc::slice::hack::ConvertVec>::to_vec"), Some("alloc"));
        assert_eq!(crate_of("my_crate::f"), Some("my_crate"));
    }

    #[test]
    fn allocator_frames_are_trimmed_down_to_the_method_called_unless_kept() {
        let stack = "main;app::f;alloc::vec::Vec<T>::with_capacity;alloc::raw_vec::RawVecInner<A>::try_allocate_in;\
                     alloc::alloc::alloc;__rustc::__rust_alloc;<heapprobe::alloc::Heapprobe<A> as \
                     core::alloc::global::GlobalAlloc>::alloc;heapprobe::alloc::Heapprobe<A>::alloc_slow";
        assert_eq!(trim_allocator_frames(stack), "main;app::f;alloc::vec::Vec<T>::with_capacity");
        assert_eq!(trim_allocator_frames("alloc::alloc::alloc;__rust_alloc"), "alloc::alloc::alloc");
        assert_eq!(trim_allocator_frames("__rust_alloc"), "__rust_alloc");
        let before =
            format!("# heapprobe: weight=bytes\n{stack} 10\nmain;app::f;alloc::vec::Vec<T>::with_capacity 5\n");
        let side = || Side::new(Folded::parse(&before, "B").unwrap());
        let trimmed = Diff::new(side(), side(), &Options::default()).unwrap();
        assert_eq!(trimmed.rows().len(), 1, "the two stacks merge");
        assert_eq!(trimmed.rows()[0].before, 15);
        let kept = Diff::new(side(), side(), &Options { keep_allocator_frames: true, ..Options::default() }).unwrap();
        assert_eq!(kept.rows().len(), 2);
    }

    #[test]
    fn colours_are_red_for_growth_blue_for_shrink_and_never_faint() {
        let (r, g, b) = svg::fill(1, 1_000_000);
        assert!(r == 255 && g <= 190 && g == b, "{r},{g},{b}");
        let (r, g, b) = svg::fill(-1, 1_000_000);
        assert!(b == 255 && r <= 190 && r == g, "{r},{g},{b}");
        assert_eq!(svg::fill(0, 10), (221, 221, 221));
        assert_eq!(svg::fill(10, 10), (255, 60, 60));
    }

    #[test]
    fn parents_take_the_inclusive_change_and_vanished_stacks_keep_their_width() {
        let diff = Diff::new(side("m;a;x 100\nm;b 50\n", "B"), side("m;a;y 300\n", "A"), &Options::default()).unwrap();
        let svg = diff.svg();
        let frame = |name: &str| {
            let at = svg.find(&format!("<title>{name}\n")).unwrap_or_else(|| panic!("no frame {name}"));
            let start = svg[..at].rfind("<g class=").unwrap();
            svg[start..at].to_owned()
        };
        // m: 150 → 300, drawn 450 wide: x's 100 (gone), y's 300 (new), b's 50 (gone).
        assert!(frame("m").contains(r#"data-w="450" data-d="1" data-before="150" data-after="300" data-delta="+150""#));
        assert!(frame("a").contains(r#"data-w="400" data-d="2" data-before="100" data-after="300" data-delta="+200""#));
        assert!(frame("b").starts_with(r#"<g class="f gone""#) && frame("b").contains(r#"data-w="50""#));
        assert!(frame("x").contains(r#"data-delta="-100""#) && frame("x").contains("gone"));
        assert!(frame("y").starts_with(r#"<g class="f new""#));
        assert!(svg.contains(r#"data-total="450""#));
    }
}
