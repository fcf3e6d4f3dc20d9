//! `cargo xtask diff BEFORE AFTER`: what changed between two allocation
//! profiles, and where: the terminal summary and a differential flame
//! graph, both from `heapprobe::diff` (the library does the work; this is
//! its command line).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use heapprobe::diff::{Diff, Options, Side};

/// Options of `cargo xtask diff`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The profile before: a folded file (written by `trace`, `fold` or the
    /// in-process profiler) or an allocation snapshot (`*.allocs`).
    #[arg(value_name = "BEFORE")]
    pub before: PathBuf,
    /// The profile after, of the same kind.
    #[arg(value_name = "AFTER")]
    pub after: PathBuf,
    /// Count-weighted profiles of the same two recordings (`--weight count`,
    /// or the profiler's `.count.folded`), for count deltas beside the byte
    /// deltas. Snapshots carry their counts.
    #[arg(long, num_args = 2, value_names = ["BEFORE_COUNTS", "AFTER_COUNTS"])]
    pub counts: Vec<PathBuf>,
    /// Scale BEFORE to AFTER's total first, to compare the shapes of runs of
    /// different lengths. Default: off (heapprobe's totals are exact).
    #[arg(long)]
    pub normalize: bool,
    /// How many stacks to list as grown and as shrunk.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// The flame graph's title. Default: `heapprobe diff: BEFORE -> AFTER`.
    #[arg(long, value_name = "TEXT")]
    pub title: Option<String>,
    /// Keep the allocator's own frames atop each stack (heapprobe's wrapper,
    /// `__rust_alloc`, the standard library's plumbing under the method the
    /// code called). Default: trimmed, so every tower ends at its
    /// allocation site.
    #[arg(long)]
    pub keep_allocator_frames: bool,
    /// Where to write the differential flame graph.
    #[arg(short, long, default_value = "diff.svg")]
    pub output: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (before_counts, after_counts) = match args.counts.as_slice() {
        [before, after] => (Some(before.as_path()), Some(after.as_path())),
        _ => (None, None),
    };
    let before = read(&args.before, before_counts)?;
    let after = read(&args.after, after_counts)?;
    let mut options = Options::default();
    options.normalize = args.normalize;
    options.top = args.top;
    options.keep_allocator_frames = args.keep_allocator_frames;
    options.title = args
        .title
        .clone()
        .unwrap_or_else(|| format!("heapprobe diff: {} -> {}", args.before.display(), args.after.display()));
    let diff = Diff::new(before, after, &options)?;
    print!("{diff}");
    diff.write_svg(&args.output)
        .with_context(|| format!("cannot write the differential flame graph to {}", args.output.display()))?;
    println!("differential flame graph: {}", args.output.display());
    Ok(())
}

/// One side, from its file and (optionally) its counts.
pub fn read(path: &Path, counts: Option<&Path>) -> anyhow::Result<Side> {
    Ok(Side::read(path, counts)?)
}
