//! `cargo heapprobe fold`: a `perf.data`, or a `perf script` capture,
//! recorded elsewhere (such as on a production host by
//! `scripts/perf-flamegraph.sh`), folded and rendered exactly as `cargo
//! heapprobe trace` would.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};

use crate::flame::Graph;
use crate::trace::{self, perf, perf_data, Recorded, Recording, Weight};

/// Options of `cargo heapprobe fold`. Build one from [`Options::new`] and
/// set what differs.
#[derive(clap::Args, Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// The capture: a `perf.data` (read directly; symbols from the files it
    /// names, on this machine), or `perf script -F event,trace,ip,sym
    /// --no-demangle` text (symbols resolved where it was recorded), or `-`
    /// for text on stdin.
    #[arg(value_name = "INPUT")]
    pub input: PathBuf,
    /// The probe whose hits to fold. Default: `alloc`.
    #[arg(long, default_value = "alloc", hide_default_value = true)]
    pub event: String,
    /// Only the hits whose `id` argument is N (one `Local` instance, or one
    /// measured scope). Default: every hit.
    #[arg(long, value_name = "N")]
    pub id: Option<u64>,
    /// What each stack is weighted by. Default: `bytes`.
    #[arg(long, value_enum, default_value_t = Weight::Bytes, hide_default_value = true)]
    pub weight: Weight,
    /// Where to write the flame graph; the folded stacks go next to it.
    /// Default: `flamegraph.svg`.
    #[arg(short, long, default_value = "flamegraph.svg", hide_default_value = true)]
    pub output: PathBuf,
    /// Fail when more than this share of the events, in percent, was lost
    /// (by perf's own count: in a perf.data, or on the `# heapprobe-capture`
    /// line that scripts/perf-flamegraph.sh writes atop its captures).
    /// Default: `1`.
    #[arg(long, value_name = "PERCENT", default_value_t = trace::DEFAULT_MAX_LOST, hide_default_value = true)]
    pub max_lost: f64,
    /// How the flame graph is drawn.
    #[command(flatten)]
    pub graph: Graph,
    /// Echo the commands run. Default: `false`.
    #[arg(short, long)]
    pub verbose: bool,
}

impl Options {
    /// Folds `input` with every other option at its default.
    pub fn new(input: impl Into<PathBuf>) -> Self {
        Self {
            input: input.into(),
            event: String::from("alloc"),
            id: None,
            weight: Weight::Bytes,
            output: PathBuf::from("flamegraph.svg"),
            max_lost: trace::DEFAULT_MAX_LOST,
            graph: Graph::default(),
            verbose: false,
        }
    }
}

/// Folds and renders the capture `options` names; prints the summary on
/// stdout. Fails when the capture holds no hit of the probe, when a line or
/// record is not what it must be, or when more events were lost than
/// `--max-lost` allows (after writing the graph of what there is).
pub fn run(options: &Options) -> anyhow::Result<trace::Outcome> {
    let args = options;
    let started = Instant::now();
    trace::check_event(&args.event, args.weight, args.id)?;
    trace::check_output_writable(&args.output)?;
    let (mut recording, probes) = read_capture(args)?;
    if probes.is_empty() {
        bail!(
            "{} holds no probe hits: give a perf.data of heapprobe's probes, or `perf script -F {} --no-demangle` \
             output",
            args.input.display(),
            perf::SCRIPT_FIELDS
        );
    }
    if recording.folded.events == 0 && recording.folded.filtered == 0 {
        let seen: Vec<String> = probes.iter().map(|(name, hits)| format!("{name} ({hits})")).collect();
        bail!(
            "no heapprobe:{} hits in {}; it holds: {} (pick one with --event)",
            args.event,
            args.input.display(),
            seen.join(", ")
        );
    }
    if !args.graph.keep_allocator_frames {
        recording.folded.trim_allocator_frames();
    }
    let folded_path = args.output.with_extension("folded");
    recording.folded.write(&folded_path, args.weight, &args.event)?;
    let svg = (recording.folded.total > 0).then_some(args.output.as_path());
    if let Some(svg) = svg {
        let title =
            format!("heapprobe: {}, heapprobe:{} by {}", args.input.display(), args.event, args.weight.count_name());
        recording.folded.render(
            svg,
            &title,
            &trace::summary_line(&recording.folded, args.weight),
            args.weight.count_name(),
            &args.graph,
        )?;
    }
    trace::print_summary(&recording, args.weight, &args.event, None, &folded_path, svg, started.elapsed(), None);
    let Some(svg) = svg else {
        bail!("nothing to weigh by {}: no flame graph written", args.weight.count_name());
    };
    args.graph.open_if_asked(svg);
    recording.check(args.max_lost, args.weight)?;
    Ok(trace::Outcome {
        svg: Some(svg.to_path_buf()),
        folded: folded_path,
        events: recording.folded.events,
        total: recording.folded.total,
        counts: None,
        diff: None,
    })
}

/// The capture, folded, with every probe it holds and its number of hits.
fn read_capture(args: &Options) -> anyhow::Result<(Recording, Vec<(String, u64)>)> {
    let text = if args.input.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read the capture from stdin")?;
        text
    } else {
        let data = std::fs::read(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?;
        if data.starts_with(b"PERFILE2") {
            drop(data);
            return read_perf_data(&args.input, args);
        }
        String::from_utf8(data)
            .with_context(|| format!("{} is neither perf.data nor `perf script` text", args.input.display()))?
    };
    let script = perf::parse_script_filtered(&text, args.weight, Some(&args.event), args.id)
        .with_context(|| format!("{} is not a capture this can fold", args.input.display()))?;
    let probes = script.probes.iter().map(|(k, v)| (k.clone(), *v)).collect();
    Ok((script.into_recording(None, None), probes))
}

/// A perf.data, read directly.
fn read_perf_data(path: &Path, args: &Options) -> anyhow::Result<(Recording, Vec<(String, u64)>)> {
    let counts = perf_data::count(path)?;
    let mut decoded = perf_data::fold(path, Some(&args.event), args.weight, args.id)?;
    trace::report_decoding(&decoded);
    let recorded = Recorded {
        source: "samples in perf.data",
        events: Some(counts.samples),
        total: None,
        dropped: counts.lost.max(decoded.lost),
        parsed_events: decoded.samples,
        duplicates: decoded.duplicates,
        parsed_total: None,
        stackless: 0,
        stackless_weight: 0,
        unparsed_why: "in perf.data but not decoded by heapprobe's reader, or the other way round (please report \
                       this, with the recording)",
    };
    let probes = std::mem::take(&mut decoded.probes).into_iter().collect();
    Ok((Recording { folded: std::mem::take(&mut decoded.folded), recorded, status: None }, probes))
}
