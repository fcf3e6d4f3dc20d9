//! `cargo xtask fold`: a `perf script` capture (or a `perf.data`) recorded
//! elsewhere, such as on a production host by `scripts/perf-flamegraph.sh`,
//! folded and rendered exactly as `cargo xtask trace` would.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _};

use crate::trace::perf::{self, Script};
use crate::trace::{self, Recording, Weight};
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
    /// Echo the commands run.
    #[arg(short, long)]
    verbose: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let text = read_capture(&args)?;
    let Script { folded, lost, probes } = perf::parse_script(&text, args.weight, Some(&args.event));
    if probes.is_empty() {
        bail!(
            "{} holds no probe hits: give `perf script -F {} --no-demangle` output, or the perf.data itself",
            args.input.display(),
            perf::SCRIPT_FIELDS
        );
    }
    if folded.events == 0 {
        let seen: Vec<String> = probes.iter().map(|(name, hits)| format!("{name} ({hits})")).collect();
        bail!(
            "no heapprobe:{} hits in {}; it holds: {} (pick one with --event)",
            args.event,
            args.input.display(),
            seen.join(", ")
        );
    }
    let recording = Recording { folded, lost, status: None };
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
        )?;
    }
    trace::print_summary(&recording, args.weight, &args.event, None, &folded_path, svg, started.elapsed());
    if svg.is_none() {
        bail!("nothing to weigh by {}: no flame graph written", args.weight.count_name());
    }
    Ok(())
}

/// The capture as `perf script` text.
fn read_capture(args: &Args) -> anyhow::Result<String> {
    if args.input.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read the capture from stdin")?;
        return Ok(text);
    }
    let data = std::fs::read(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?;
    if data.starts_with(b"PERFILE2") {
        let perf = util::require_tool("PERF", "perf", "linux-perf")?;
        return perf::run_script(&perf, &args.input, args.verbose);
    }
    String::from_utf8(data)
        .with_context(|| format!("{} is neither perf.data nor `perf script` text", args.input.display()))
}
