//! Folding weighted call stacks, rendering them with inferno, and the
//! terminal summary. Shared by every backend, so they all produce the same
//! `*.folded` format.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;

use anyhow::Context as _;
use inferno::flamegraph;

use crate::trace::Weight;

/// The frame name used where a return address could not be symbolised.
pub const UNKNOWN: &str = "[unknown]";

/// The outermost frame of a stack whose unwinding stopped before the
/// thread's first frame (`--call-graph dwarf`: the stack copy ended, or no
/// unwind table covered a frame).
pub const TRUNCATED: &str = "[truncated]";

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
    /// Hits of the probe left out by an `--id` filter (another instance).
    pub filtered: u64,
    /// Hits whose stack names nobody who allocated: no frame but the
    /// allocator's, the standard library's and [`UNKNOWN`] (see
    /// [`is_unknown_stack`]), and their weight.
    pub unknown_stacks: Share,
    /// Hits whose stack ends in [`TRUNCATED`] (and is not unknown), and their
    /// weight: the code that allocated is known, not all its callers.
    pub truncated_stacks: Share,
    /// Hits whose stack was unwound here from a copy of the thread's stack
    /// (`--call-graph dwarf`), not walked by the kernel.
    pub unwound: u64,
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

    /// Adds `events` probe hits that share the stack `frames` (innermost
    /// first) and weigh `weight` together: the same as adding each.
    pub fn add_repeated(&mut self, frames_leaf_first: &[impl AsRef<str>], weight: u64, events: u64) {
        self.events += events;
        self.add_stack_times(frames_leaf_first, weight, events);
    }

    fn add_stack(&mut self, frames_leaf_first: &[impl AsRef<str>], weight: u64) {
        self.add_stack_times(frames_leaf_first, weight, 1);
    }

    fn add_stack_times(&mut self, frames_leaf_first: &[impl AsRef<str>], weight: u64, times: u64) {
        self.stacks_added += times;
        // An empty stack is drawn as one [unknown] frame, and counted so:
        // a graph of nothing but [unknown] never reads "0% unsymbolised".
        let frames = frames_leaf_first.len().max(1) as u64;
        let unknown = match frames_leaf_first.len() {
            0 => 1,
            _ => frames_leaf_first.iter().filter(|f| f.as_ref() == UNKNOWN).count() as u64,
        };
        self.frames += times * frames;
        self.unknown_frames += times * unknown;
        if is_unknown_stack(frames_leaf_first.iter().map(AsRef::as_ref)) {
            self.unknown_stacks.add(times, weight);
        } else if frames_leaf_first.last().is_some_and(|f| f.as_ref() == TRUNCATED) {
            self.truncated_stacks.add(times, weight);
        }
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

    /// The weight of the unknown and truncated stacks, in percent of the
    /// total (of the events when nothing weighs anything).
    pub fn unknown_or_truncated_percent(&self) -> f64 {
        let (part, all) = if self.total > 0 {
            (self.unknown_stacks.weight + self.truncated_stacks.weight, self.total)
        } else {
            (self.unknown_stacks.events + self.truncated_stacks.events, self.events)
        };
        if all == 0 {
            0.0
        } else {
            100.0 * part as f64 / all as f64
        }
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
    /// `cargo heapprobe diff` checks; see `heapprobe::diff`), then the stacks.
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

    /// Renders the flame graph SVG: `title` and `subtitle` unless `graph`
    /// gives its own title, weights counted in `count_name`.
    pub fn render(
        &self,
        path: &Path,
        title: &str,
        subtitle: &str,
        count_name: &str,
        graph: &Graph,
    ) -> anyhow::Result<()> {
        let mut options = flamegraph::Options::default();
        options.title = graph.title.clone().unwrap_or_else(|| title.to_owned());
        options.subtitle = Some(subtitle.to_owned());
        options.count_name = count_name.to_owned();
        options.colors = graph.palette.parse().map_err(|e: String| anyhow::anyhow!("--palette: {e}"))?;
        options.min_width = graph.min_width;
        options.reverse_stack_order = graph.reverse;
        if graph.inverted {
            options.direction = flamegraph::Direction::Inverted;
        }
        options.deterministic = true;
        let lines = self.lines();
        if lines.is_empty() {
            anyhow::bail!("no stacks to draw: the traced program made no {count_name}-weighted probe hits");
        }
        let file = File::create(path).with_context(|| format!("cannot write the flame graph to {}", path.display()))?;
        flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), BufWriter::new(file))
            .with_context(|| format!("inferno could not render {}", path.display()))
    }

    /// Removes the allocator's own frames from the top of every stack (see
    /// [`allocator_frames`]), merging the stacks that become the same.
    pub fn trim_allocator_frames(&mut self) {
        let stacks = std::mem::take(&mut self.stacks);
        for (stack, weight) in stacks {
            let frames: Vec<&str> = stack.split(';').collect();
            let keep = frames.len() - allocator_frames(frames.iter().rev().copied());
            let key = if keep == frames.len() { stack.clone() } else { frames[..keep].join(";") };
            *self.stacks.entry(key).or_insert(0) += weight;
        }
    }
}

/// A number of probe hits and their summed weight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Share {
    /// Probe hits.
    pub events: u64,
    /// Their summed weight.
    pub weight: u64,
}

impl Share {
    fn add(&mut self, events: u64, weight: u64) {
        self.events += events;
        self.weight += weight;
    }
}

/// Whether a stack (innermost first) says nothing about who allocated:
/// every frame is the allocator's (heapprobe, `__rust_alloc`), the standard
/// library's, [`UNKNOWN`] or [`TRUNCATED`]; an empty stack too. A stack
/// that is only the recorder's stand-in for a lost one (`[stack lost]`,
/// counted among the lost events) is not.
pub fn is_unknown_stack<'a>(frames_leaf_first: impl Iterator<Item = &'a str>) -> bool {
    let mut frames = frames_leaf_first.peekable();
    if frames.peek() == Some(&crate::trace::STACK_LOST) {
        return false;
    }
    frames.all(|f| f == UNKNOWN || f == TRUNCATED || is_allocator_frame(f) || is_std_frame(f))
}

/// How the flame graph is drawn (what cargo-flamegraph users reach for).
#[derive(clap::Args, Debug, Clone)]
#[non_exhaustive]
pub struct Graph {
    /// Keep the allocator's own frames atop each tower (heapprobe's wrapper,
    /// `__rust_alloc`, and the standard library's plumbing under the
    /// collection method the code called). Default: `false`: every tower
    /// ends at the allocation site.
    #[arg(long)]
    pub keep_allocator_frames: bool,
    /// The title. Default: what was traced, the probe and the weight.
    #[arg(long, value_name = "TEXT")]
    pub title: Option<String>,
    /// Leave out boxes narrower than this many pixels (of 1200). Default: `0.1`.
    #[arg(long, value_name = "PIXELS", default_value_t = 0.1, hide_default_value = true)]
    pub min_width: f64,
    /// Stack-reversed: allocation sites at the base, their callers above
    /// (which sites allocate most, whoever calls them). Default: `false`.
    #[arg(long)]
    pub reverse: bool,
    /// An icicle graph: drawn from the top down. Default: `false`.
    #[arg(long)]
    pub inverted: bool,
    /// inferno's colour palette: mem, hot, io, red, green, blue, aqua,
    /// yellow, purple, orange, rust, java, js, perl, python, wakeup. Default:
    /// `mem`.
    #[arg(long, value_name = "NAME", default_value = "mem", hide_default_value = true,
          value_parser = clap::builder::PossibleValuesParser::new(PALETTES))]
    pub palette: String,
    /// Open the flame graph when done (with `xdg-open`). Default: `false`.
    #[arg(long)]
    pub open: bool,
}

/// The palettes `--palette` takes (inferno's).
pub const PALETTES: [&str; 16] = [
    "mem", "hot", "io", "red", "green", "blue", "aqua", "yellow", "purple", "orange", "rust", "java", "js", "perl",
    "python", "wakeup",
];

impl Default for Graph {
    fn default() -> Self {
        Self {
            keep_allocator_frames: false,
            title: None,
            min_width: 0.1,
            reverse: false,
            inverted: false,
            palette: String::from("mem"),
            open: false,
        }
    }
}

impl Graph {
    /// Opens `svg` with `xdg-open` when asked to (`--open`); a failure to
    /// open is a warning, not an error: the graph is written.
    pub fn open_if_asked(&self, svg: &Path) {
        if !self.open {
            return;
        }
        let opened = std::process::Command::new("xdg-open")
            .arg(svg)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Err(e) = opened {
            eprintln!("warning: --open: cannot run xdg-open ({e}); open {} yourself", svg.display());
        }
    }
}

/// How many of `frames_leaf_first` are the allocator's own, to trim from the
/// top of a tower. The rule:
///
/// 1. heapprobe's frames (`heapprobe::…`: the `GlobalAlloc` wrapper, its slow
///    and cold paths, `Local`'s `Allocator` impl) and the global allocator's
///    shims (`__rust_alloc`, `__rustc::__rust_realloc`, `__rdl_alloc`, …) go;
/// 2. then, of the standard library's frames left on top (crates `alloc`,
///    `core`, `std`, and `hashbrown`, std's map), only the outermost stays:
///    the method the code called (`Vec::with_capacity`, `Box::new`,
///    `HashMap::insert`), not `RawVec`, `Global::alloc_impl` or
///    `box_new_uninit` under it.
///
/// It stops at the first other frame (the code that allocated, or
/// `[unknown]`), and never takes every frame: a stack of allocator frames
/// only keeps its outermost.
pub fn allocator_frames<'a>(frames_leaf_first: impl Iterator<Item = &'a str>) -> usize {
    let frames: Vec<&str> = frames_leaf_first.collect();
    let mut trimmed = frames.iter().take_while(|f| is_allocator_frame(f)).count();
    let library = frames[trimmed..].iter().take_while(|f| is_std_frame(f)).count();
    trimmed += library.saturating_sub(1);
    trimmed.min(frames.len().saturating_sub(1))
}

/// heapprobe's own frames and the global allocator's shims.
fn is_allocator_frame(frame: &str) -> bool {
    let name = frame.strip_prefix("__rustc::").unwrap_or(frame);
    crate_of(frame) == Some("heapprobe")
        || name.starts_with("__rust_")
        || name.starts_with("__rdl_")
        || name.starts_with("__rg_")
}

/// The standard library's frames (and hashbrown's: std's maps are it).
fn is_std_frame(frame: &str) -> bool {
    matches!(crate_of(frame), Some("alloc" | "core" | "std" | "hashbrown"))
}

/// The crate a demangled frame belongs to (heapprobe's own rule, which
/// `diff` trims by as well).
pub use heapprobe::diff::crate_of;

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

    /// A graph of `[unknown]` is never clean: an empty stack is one unknown
    /// frame, and stacks that name nobody who allocated, or end in
    /// [`TRUNCATED`], are counted with their weight.
    #[test]
    fn unknown_and_truncated_stacks_are_counted_with_their_weight() {
        let mut folded = Folded::default();
        folded.add(&stack(&[]), 100);
        folded.add(&stack(&["heapprobe::alloc::Heapprobe<A>::allocated", "[unknown]"]), 50);
        folded.add(&stack(&["alloc::raw_vec::RawVec<T,A>::grow_one", "[unknown]", "[unknown]"]), 25);
        folded.add(&stack(&["__rustc::__rust_alloc", "my_app::build", "[truncated]"]), 20);
        folded.add(&stack(&["__rustc::__rust_alloc", "my_app::build", "main", "_start"]), 5);
        folded.add(&stack(&[crate::trace::STACK_LOST]), 7);
        assert_eq!(folded.unknown_stacks, Share { events: 3, weight: 175 });
        assert_eq!(folded.truncated_stacks, Share { events: 1, weight: 20 });
        assert_eq!((folded.frames, folded.unknown_frames), (14, 4));
        assert!((folded.unknown_percent() - 100.0 * 4.0 / 14.0).abs() < 1e-9);
        assert!((folded.unknown_or_truncated_percent() - 100.0 * 195.0 / 207.0).abs() < 1e-9);
        assert!(folded.lines().contains(&String::from("[unknown] 100")), "{:?}", folded.lines());
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

    /// The frames of `it_works`'s stacks in a dev build (leaf first).
    #[test]
    fn allocator_frames_are_trimmed_down_to_the_method_called() {
        let trim = |stack: &str| {
            let frames: Vec<&str> = stack.split(';').collect();
            let n = allocator_frames(frames.iter().rev().copied());
            frames[..frames.len() - n].join(";")
        };
        assert_eq!(
            trim("main;it_works::build_inventory;alloc::vec::Vec<T>::with_capacity;alloc::vec::Vec<T,A>::with_capacity_in;\
                  alloc::raw_vec::RawVecInner<A>::try_allocate_in;<alloc::alloc::Global as core::alloc::Allocator>::allocate;\
                  alloc::alloc::Global::alloc_impl_runtime;alloc::alloc::alloc;__rustc::__rust_alloc;\
                  <heapprobe::alloc::Heapprobe<A> as core::alloc::global::GlobalAlloc>::alloc;heapprobe::alloc::cold"),
            "main;it_works::build_inventory;alloc::vec::Vec<T>::with_capacity"
        );
        assert_eq!(
            trim(
                "main;it_works::build_inventory;alloc::boxed::box_new_uninit;alloc::alloc::Global::alloc_impl_runtime;\
                  __rustc::__rust_alloc;<heapprobe::alloc::Heapprobe<A> as core::alloc::global::GlobalAlloc>::alloc"
            ),
            "main;it_works::build_inventory;alloc::boxed::box_new_uninit"
        );
        // A user's impl of a std trait is the user's code.
        assert_eq!(
            trim(
                "main;<app::Doc as core::clone::Clone>::clone;<alloc::string::String as core::clone::Clone>::clone;\
                  <[T] as alloc::slice::hack::ConvertVec>::to_vec;alloc::alloc::alloc;__rust_alloc"
            ),
            "main;<app::Doc as core::clone::Clone>::clone;<alloc::string::String as core::clone::Clone>::clone"
        );
        // Unknown frames and stacks of allocator frames only.
        assert_eq!(trim("main;[unknown];__rust_alloc"), "main;[unknown]");
        assert_eq!(trim("alloc::alloc::alloc;__rust_alloc"), "alloc::alloc::alloc");
        assert_eq!(trim("__rust_alloc"), "__rust_alloc");
        assert_eq!(trim("main;app::f"), "main;app::f");
    }

    #[test]
    fn frames_belong_to_crates() {
        assert_eq!(crate_of("alloc::vec::Vec<T,A>::push"), Some("alloc"));
        assert_eq!(
            crate_of("<heapprobe::alloc::Heapprobe<A> as core::alloc::global::GlobalAlloc>::alloc"),
            Some("heapprobe")
        );
        assert_eq!(crate_of("<[T] as alloc::slice::hack::ConvertVec>::to_vec"), Some("alloc"));
        assert_eq!(crate_of("<alloc::vec::Vec<T,A> as core::ops::drop::Drop>::drop"), Some("alloc"));
        assert_eq!(crate_of("<app::X<[u8; 4]> as core::fmt::Debug>::fmt"), Some("app"));
        assert_eq!(crate_of("<std::collections::hash::map::HashMap<K,V,S>>::insert"), Some("std"));
        assert_eq!(crate_of("[unknown]"), None);
        assert_eq!(crate_of("main"), None);
    }

    #[test]
    fn trimming_merges_the_stacks_that_become_the_same() {
        let mut folded = Folded::default();
        folded.add(
            &stack(&["heapprobe::a", "__rust_alloc", "alloc::raw_vec::x", "alloc::vec::Vec<T>::push", "app::f"]),
            8,
        );
        folded.add(
            &stack(&["heapprobe::a", "__rust_realloc", "alloc::raw_vec::y", "alloc::vec::Vec<T>::push", "app::f"]),
            16,
        );
        folded.trim_allocator_frames();
        assert_eq!(folded.lines(), ["app::f;alloc::vec::Vec<T>::push 24"]);
        assert_eq!(folded.total, 24);
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
