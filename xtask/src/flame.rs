//! Folding weighted call stacks, rendering them with inferno, and the
//! terminal summary. Shared by every backend, so they all produce the same
//! `*.folded` format.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;

use anyhow::Context as _;
use inferno::flamegraph::{self, color::BasicPalette, Palette};

use crate::trace::Weight;

/// The frame name used where a return address could not be symbolised.
pub const UNKNOWN: &str = "[unknown]";

/// Weighted stacks, folded: `root;...;leaf` → total weight.
#[derive(Debug, Default)]
pub struct Folded {
    stacks: HashMap<String, u64>,
    /// Probe hits seen (whatever their weight).
    pub events: u64,
    /// Sum of the weights.
    pub total: u64,
    /// Frames seen, and how many of them were [`UNKNOWN`].
    pub frames: u64,
    /// See `frames`.
    pub unknown_frames: u64,
    /// Stacks added (events, or distinct stacks when aggregated elsewhere).
    pub stacks_added: u64,
    /// Scratch space for building keys.
    key: String,
}

impl Folded {
    /// Adds one probe hit whose stack is `frames`, innermost first.
    /// A zero weight counts the event but adds no stack.
    pub fn add(&mut self, frames_leaf_first: &[impl AsRef<str>], weight: u64) {
        self.events += 1;
        self.add_stack(frames_leaf_first, weight);
    }

    /// Adds a stack already aggregated elsewhere (in the kernel, by
    /// bpftrace): its total weight, without counting events (the caller sets
    /// [`events`](Self::events)).
    pub fn add_aggregate(&mut self, frames_leaf_first: &[impl AsRef<str>], weight: u64) {
        self.add_stack(frames_leaf_first, weight);
    }

    fn add_stack(&mut self, frames_leaf_first: &[impl AsRef<str>], weight: u64) {
        self.stacks_added += 1;
        self.frames += frames_leaf_first.len() as u64;
        self.unknown_frames += frames_leaf_first.iter().filter(|f| f.as_ref() == UNKNOWN).count() as u64;
        if weight == 0 {
            return;
        }
        self.total += weight;
        // One buffer for every key: a million events are folded with about
        // as many allocations as there are distinct stacks.
        let key = &mut self.key;
        key.clear();
        for (i, frame) in frames_leaf_first.iter().rev().enumerate() {
            if i > 0 {
                key.push(';');
            }
            // `;` separates frames in the folded format; Rust paths may hold it
            // only inside array types (`[u8; 4]`).
            let frame = frame.as_ref();
            if frame.contains(';') {
                key.push_str(&frame.replace(';', ","));
            } else {
                key.push_str(frame);
            }
        }
        if key.is_empty() {
            key.push_str(UNKNOWN);
        }
        match self.stacks.get_mut(key.as_str()) {
            Some(total) => *total += weight,
            None => {
                self.stacks.insert(key.clone(), weight);
            }
        }
    }

    /// The folded lines, sorted by stack (inferno's expected order).
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.stacks.iter().map(|(stack, weight)| format!("{stack} {weight}")).collect();
        lines.sort();
        lines
    }

    /// The heaviest stacks, heaviest first.
    pub fn top(&self, n: usize) -> Vec<(&str, u64)> {
        let mut all: Vec<(&str, u64)> = self.stacks.iter().map(|(s, w)| (s.as_str(), *w)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        all.truncate(n);
        all
    }

    /// Share of frames that could not be symbolised, in percent.
    pub fn unknown_percent(&self) -> f64 {
        if self.frames == 0 {
            0.0
        } else {
            100.0 * self.unknown_frames as f64 / self.frames as f64
        }
    }

    /// Writes the folded file: a header that records what the weights are
    /// (`# heapprobe: weight=bytes event=alloc`, which inferno skips and
    /// `cargo xtask diff` checks; see `heapprobe::diff`), then the stacks.
    pub fn write(&self, path: &Path, weight: Weight, event: &str) -> anyhow::Result<()> {
        let mut out = BufWriter::new(
            File::create(path).with_context(|| format!("cannot write the folded stacks to {}", path.display()))?,
        );
        let weight = match weight {
            Weight::Bytes => heapprobe::diff::Weight::Bytes,
            Weight::Count => heapprobe::diff::Weight::Count,
            Weight::Moved => heapprobe::diff::Weight::Moved,
        };
        out.write_all(heapprobe::diff::header(weight, &[("event", event)]).as_bytes())?;
        for line in self.lines() {
            writeln!(out, "{line}")?;
        }
        out.flush().with_context(|| format!("cannot write {}", path.display()))
    }

    /// Renders the flame graph SVG with inferno's `mem` palette.
    pub fn render(&self, path: &Path, title: &str, subtitle: &str, count_name: &str) -> anyhow::Result<()> {
        let mut options = flamegraph::Options::default();
        options.title = title.to_owned();
        options.subtitle = Some(subtitle.to_owned());
        options.count_name = count_name.to_owned();
        options.colors = Palette::Basic(BasicPalette::Mem);
        options.deterministic = true;
        let file = File::create(path).with_context(|| format!("cannot write the flame graph to {}", path.display()))?;
        let lines = self.lines();
        if lines.is_empty() {
            anyhow::bail!("no stacks to draw: the traced program made no {count_name}-weighted probe hits");
        }
        flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), BufWriter::new(file))
            .with_context(|| format!("inferno could not render {}", path.display()))
    }
}

/// Where a folded stack allocated: its innermost frame that is not allocator
/// machinery (`heapprobe::`, `__rust_alloc`, `alloc::`...), then up to two
/// callers, as `site <- caller <- caller`.
pub fn allocation_site(stack: &str) -> String {
    const MACHINERY: [&str; 9] =
        ["heapprobe::", "<heapprobe::", "__rust", "__rdl_", "alloc::", "<alloc::", "core::", "<core::", "std::alloc::"];
    let frames: Vec<&str> = stack.rsplit(';').collect();
    let site = frames.iter().position(|f| !MACHINERY.iter().any(|m| f.starts_with(m))).unwrap_or(0);
    frames[site..].iter().take(3).copied().collect::<Vec<_>>().join(" <- ")
}

/// Short human form of a byte count.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A Rust symbol without its hash (`{:#}`), or the symbol unchanged.
pub fn demangle(symbol: &str) -> String {
    match rustc_demangle::try_demangle(symbol) {
        Ok(d) => format!("{d:#}"),
        Err(_) => symbol.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(frames: &[&str]) -> Vec<String> {
        frames.iter().map(|f| (*f).to_owned()).collect()
    }

    #[test]
    fn folds_leaf_first_stacks_root_first_and_sums_weights() {
        let mut folded = Folded::default();
        folded.add(&stack(&["alloc", "make_vec", "main"]), 32);
        folded.add(&stack(&["alloc", "make_vec", "main"]), 16);
        folded.add(&stack(&["alloc", "[unknown]", "main"]), 8);
        folded.add(&stack(&["alloc", "main"]), 0);
        assert_eq!(folded.lines(), ["main;[unknown];alloc 8", "main;make_vec;alloc 48"]);
        assert_eq!((folded.events, folded.total, folded.frames, folded.unknown_frames), (4, 56, 11, 1));
        assert_eq!(folded.top(1), [("main;make_vec;alloc", 48)]);
    }

    #[test]
    fn allocation_site_skips_allocator_machinery() {
        assert_eq!(
            allocation_site(
                "main;it_works::make_report;alloc::raw_vec::finish_grow;__rustc::__rust_alloc;heapprobe::x"
            ),
            "it_works::make_report <- main"
        );
    }
}
