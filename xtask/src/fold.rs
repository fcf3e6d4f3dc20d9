//! `cargo xtask fold`: a `perf script` capture (or a `perf.data`) recorded
//! elsewhere, such as on a production host by `scripts/perf-flamegraph.sh`,
//! folded and rendered exactly as `cargo xtask trace` would.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _};

use crate::trace::{self, perf, perf_data, Weight};
use crate::util;

/// Options of `cargo xtask fold`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The capture: `perf script -F event,trace,ip,sym --no-demangle` output,
    /// or a `perf.data` file (read with the local perf), or `-` for stdin.
    #[arg(value_name = "INPUT")]
    input: PathBuf,
    /// The probe whose hits to fold.
    #[arg(long, default_value = "alloc")]
    event: String,
    /// What each stack is weighted by.
    #[arg(long, value_enum, default_value_t = Weight::Bytes)]
    weight: Weight,
    /// Where to write the flame graph; the folded stacks go next to it.
    #[arg(short, long, default_value = "flamegraph.svg")]
    output: PathBuf,
    /// Fail when more than this share of the events, in percent, was lost
    /// (by perf's own count: in a perf.data, or on the `# heapprobe-capture`
    /// line that scripts/perf-flamegraph.sh writes atop its captures).
    #[arg(long, value_name = "PERCENT", default_value_t = trace::DEFAULT_MAX_LOST)]
    max_lost: f64,
    /// Echo the commands run.
    #[arg(short, long)]
    verbose: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    trace::check_output_writable(&args.output)?;
    let (text, counts) = read_capture(&args)?;
    let script = perf::parse_script(&text, args.weight, Some(&args.event))
        .with_context(|| format!("{} is not a capture this can fold", args.input.display()))?;
    if script.probes.is_empty() {
        bail!(
            "{} holds no probe hits: give `perf script -F {} --no-demangle` output, or the perf.data itself",
            args.input.display(),
            perf::SCRIPT_FIELDS
        );
    }
    if script.folded.events == 0 {
        let seen: Vec<String> = script.probes.iter().map(|(name, hits)| format!("{name} ({hits})")).collect();
        bail!(
            "no heapprobe:{} hits in {}; it holds: {} (pick one with --event)",
            args.event,
            args.input.display(),
            seen.join(", ")
        );
    }
    let recording = script.into_recording(counts, None);
    let folded_path = args.output.with_extension("folded");
    recording.folded.write(&folded_path)?;
    let svg = (recording.folded.total > 0).then_some(args.output.as_path());
    if let Some(svg) = svg {
        let title =
            format!("heapprobe: {}, heapprobe:{} by {}", args.input.display(), args.event, args.weight.count_name());
        recording.folded.render(
            svg,
            &title,
            &trace::summary_line(&recording.folded, args.weight),
            args.weight.count_name(),
        )?;
    }
    trace::print_summary(&recording, args.weight, &args.event, None, &folded_path, svg, started.elapsed());
    if svg.is_none() {
        bail!("nothing to weigh by {}: no flame graph written", args.weight.count_name());
    }
    recording.recorded.check(args.max_lost, args.weight)
}

/// The capture as `perf script` text, and perf's own count when the input is
/// a perf.data.
fn read_capture(args: &Args) -> anyhow::Result<(String, Option<perf_data::Counts>)> {
    if args.input.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read the capture from stdin")?;
        return Ok((text, None));
    }
    let data = std::fs::read(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?;
    if data.starts_with(b"PERFILE2") {
        let perf = util::require_tool("PERF", "perf", "linux-perf")?;
        let counts = perf_data::count(&args.input)?;
        return Ok((perf::run_script(&perf, &args.input, args.verbose)?, Some(counts)));
    }
    let text = String::from_utf8(data)
        .with_context(|| format!("{} is neither perf.data nor `perf script` text", args.input.display()))?;
    Ok((text, None))
}
