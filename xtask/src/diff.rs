//! `cargo heapprobe diff BEFORE AFTER`: what changed between two allocation
//! profiles, and where: the terminal summary and a differential flame
//! graph, both from [`heapprobe::diff`] (the library does the work; this is
//! its command line).

use std::path::PathBuf;

use anyhow::Context as _;
use heapprobe::diff::{Diff, Side};

use crate::flame::Graph;

/// Options of `cargo heapprobe diff`. Build one from [`Default::default`]
/// and set what differs (the fields are public; more may come, so it cannot
/// be written as a literal).
#[derive(clap::Args, Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// The profile before: a folded file (written by `trace`, `fold` or the
    /// in-process profiler) or an allocation snapshot (`*.allocs`). Default:
    /// none (required on the command line).
    #[arg(value_name = "BEFORE")]
    pub before: PathBuf,
    /// The profile after, of the same kind and weight. Default: none
    /// (required on the command line).
    #[arg(value_name = "AFTER")]
    pub after: PathBuf,
    /// Count-weighted profiles of the same two recordings (`--weight count`,
    /// or the profiler's `.count.folded`), for count deltas beside the byte
    /// deltas. Snapshots carry their counts. Default: none.
    #[arg(long, num_args = 2, value_names = ["BEFORE_COUNTS", "AFTER_COUNTS"])]
    pub counts: Vec<PathBuf>,
    /// Scale BEFORE to AFTER's total first, to compare the shapes of runs of
    /// different lengths. Default: `false` (heapprobe's totals are exact).
    #[arg(long)]
    pub normalize: bool,
    /// How many stacks to list as grown and as shrunk. Default: `10`.
    #[arg(long, value_name = "N", default_value_t = 10, hide_default_value = true)]
    pub top: usize,
    /// The flame graph's title. Default: `heapprobe diff: BEFORE -> AFTER`.
    #[arg(long, value_name = "TEXT")]
    pub title: Option<String>,
    /// Keep the allocator's own frames atop each stack (heapprobe's wrapper,
    /// `__rust_alloc`, the standard library's plumbing under the method the
    /// code called). Default: `false`: trimmed, so every tower ends at its
    /// allocation site.
    #[arg(long)]
    pub keep_allocator_frames: bool,
    /// Leave out boxes narrower than this many pixels (of 1200; they stay in
    /// the summary). Default: `0.1`.
    #[arg(long, value_name = "PIXELS", default_value_t = 0.1, hide_default_value = true)]
    pub min_width: f64,
    /// Where to write the differential flame graph. Default: `diff.svg`.
    #[arg(short, long, default_value = "diff.svg", hide_default_value = true)]
    pub output: PathBuf,
    /// Open the flame graph when done (with `xdg-open`). Default: `false`.
    #[arg(long)]
    pub open: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            before: PathBuf::new(),
            after: PathBuf::new(),
            counts: Vec::new(),
            normalize: false,
            top: 10,
            title: None,
            keep_allocator_frames: false,
            min_width: 0.1,
            output: PathBuf::from("diff.svg"),
            open: false,
        }
    }
}

/// Compares the two profiles `options` names: prints the summary on stdout
/// and writes the differential flame graph. Returns the diff (its rows and
/// totals), for a task that decides what a change means.
pub fn run(options: &Options) -> anyhow::Result<Diff> {
    let (before_counts, after_counts) = match options.counts.as_slice() {
        [] => (None, None),
        [before, after] => (Some(before.as_path()), Some(after.as_path())),
        other => anyhow::bail!("--counts takes two files (BEFORE_COUNTS AFTER_COUNTS), not {}", other.len()),
    };
    if !(0.0..=1200.0).contains(&options.min_width) {
        anyhow::bail!("--min-width is in pixels of the 1200-pixel graph: give 0 to 1200, not {}", options.min_width);
    }
    let before = Side::read(&options.before, before_counts)?;
    let after = Side::read(&options.after, after_counts)?;
    let mut diff_options = heapprobe::diff::Options::default();
    diff_options.normalize = options.normalize;
    diff_options.top = options.top;
    diff_options.keep_allocator_frames = options.keep_allocator_frames;
    diff_options.min_width = options.min_width;
    diff_options.title = options
        .title
        .clone()
        .unwrap_or_else(|| format!("heapprobe diff: {} -> {}", options.before.display(), options.after.display()));
    let diff = Diff::new(before, after, &diff_options)?;
    print!("{diff}");
    diff.write_svg(&options.output)
        .with_context(|| format!("cannot write the differential flame graph to {}", options.output.display()))?;
    println!("differential flame graph: {}", options.output.display());
    Graph { open: options.open, ..Graph::default() }.open_if_asked(&options.output);
    Ok(diff)
}
