//! `cargo xtask trace`: from a test, a binary or a live PID to a
//! byte-weighted `flamegraph.svg`.

mod baseline;
mod bpftrace;
pub mod perf;
mod symbols;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use anyhow::{bail, Context as _};
use heapprobe_sdt::{Binary, UprobeGroup};

use crate::flame::{self, Folded};
use crate::target::{self, TargetArgs};
use crate::util::{self, Progress};

/// The provider heapprobe's probes belong to.
pub const PROVIDER: &str = "heapprobe";

/// Options of `cargo xtask trace`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    target: TargetArgs,
    /// Attach to this running process (it must use heapprobe) instead of
    /// building and running a target.
    #[arg(long, value_name = "PID", conflicts_with = "target")]
    pid: Option<u32>,
    /// With --pid: stop recording after this many seconds (default: at Ctrl-C).
    #[arg(long, value_name = "SECS", requires = "pid")]
    duration: Option<f64>,
    /// The probe to record: alloc, dealloc, realloc, alloc_locked (only
    /// allocations inside measured scopes), ... (see `probes/heapprobe.d`).
    #[arg(long, default_value = "alloc")]
    event: String,
    /// What each stack is weighted by.
    #[arg(long, value_enum, default_value_t = Weight::Bytes)]
    weight: Weight,
    /// Where to write the flame graph; the folded stacks go next to it
    /// (`flamegraph.folded`).
    #[arg(short, long, default_value = "flamegraph.svg")]
    output: PathBuf,
    /// The recorder: `perf` (events streamed to user space, then folded) or
    /// `bpftrace` (stacks and sums aggregated in the kernel).
    #[arg(long, value_enum, default_value_t = Backend::Perf)]
    backend: Backend,
    /// How perf unwinds stacks: `fp` (frame pointers; small and fast, what
    /// traced builds have) or `dwarf` (for binaries built without frame
    /// pointers; copies 8 KiB of stack per event).
    #[arg(long, value_enum, default_value_t = CallGraph::Fp)]
    call_graph: CallGraph,
    /// Keep the raw recording (perf.data) next to the output.
    #[arg(long)]
    keep: bool,
    /// Echo the commands run.
    #[arg(short, long)]
    verbose: bool,
    /// Trace the same target at this git revision too (checked out in a
    /// temporary worktree, built in `target/heapprobe-baseline/`), then
    /// write their differential flame graph to --output, the two traces
    /// next to it (`NAME.before.*`, `NAME.after.*`), and the diff summary.
    #[arg(long, value_name = "REF", conflicts_with = "pid")]
    baseline: Option<String>,
}

/// Which tool records.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `perf record` on uprobes registered at correct file offsets.
    Perf,
    /// bpftrace `usdt:` probes with in-kernel aggregation.
    Bpftrace,
}

/// perf's stack unwinding method.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallGraph {
    /// Frame pointers.
    Fp,
    /// DWARF CFI over a copy of the user stack.
    Dwarf,
}

/// How a probe hit is weighted.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weight {
    /// The probe's size argument (`size`, or `new_size` for realloc; for
    /// `sample`, its `weight`: the bytes the sample stands for).
    Bytes,
    /// One per probe hit.
    Count,
    /// Bytes copied by reallocs that moved the block (realloc probes only).
    Moved,
}

impl Weight {
    /// What the weight counts, for titles and summaries.
    pub fn count_name(self) -> &'static str {
        match self {
            Weight::Bytes => "bytes",
            Weight::Count => "calls",
            Weight::Moved => "bytes copied",
        }
    }

    /// The weight of one hit of `probe` with arguments `args` (by name).
    pub fn of(self, probe: &str, args: &dyn Fn(&str) -> Option<u64>) -> u64 {
        match self {
            Weight::Count => 1,
            // `sample` carries the bytes it stands for (the profiler's un-biased weight).
            Weight::Bytes => args("weight").or_else(|| args("size")).or_else(|| args("new_size")).unwrap_or(0),
            Weight::Moved => match (args("old_ptr"), args("new_ptr"), args("old_size"), args("new_size")) {
                (Some(old), Some(new), Some(old_size), Some(new_size))
                    if old != new && probe.starts_with("realloc") =>
                {
                    old_size.min(new_size)
                }
                _ => 0,
            },
        }
    }
}

/// What a recording produced.
pub struct Recording {
    /// Folded stacks.
    pub folded: Folded,
    /// Events the kernel or the tool dropped.
    pub lost: u64,
    /// How the traced program ended (`None` when attached by pid).
    pub status: Option<Ended>,
}

/// How a traced program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signalled(i32),
    /// It ended without calling `_exit` (bpftrace cannot tell more: a crash
    /// or a kill).
    Vanished,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Ended::Exited(code) => write!(f, "exited with status {code}"),
            Ended::Signalled(signal) => {
                // SAFETY: strsignal returns a pointer to a static (or
                // thread-local) NUL-terminated string, or null.
                let name = unsafe { libc::strsignal(signal) };
                let name = if name.is_null() {
                    String::from("unknown signal")
                } else {
                    // SAFETY: non-null, NUL-terminated, read right away.
                    unsafe { std::ffi::CStr::from_ptr(name) }.to_string_lossy().into_owned()
                };
                write!(f, "killed by signal {signal} ({name})")
            }
            Ended::Vanished => write!(f, "ended without calling _exit (crashed or killed)"),
        }
    }
}

/// The pid of the recording tool, for forwarding Ctrl-C (0 = none).
pub static RECORDER_PID: AtomicU32 = AtomicU32::new(0);

/// Set when Ctrl-C was pressed (a recording ends early, and `--baseline`
/// stops after it).
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(reference) = args.baseline.clone() {
        return baseline::run(args, &reference);
    }
    check_event(&args)?;
    util::check_tracing_privileges(match args.backend {
        Backend::Perf => "perf",
        Backend::Bpftrace => "bpftrace",
    })?;
    let tool = match args.backend {
        Backend::Perf => util::require_tool("PERF", "perf", "linux-perf")?,
        Backend::Bpftrace => util::require_tool("BPFTRACE", "bpftrace", "bpftrace")?,
    };
    let swept = heapprobe_sdt::sweep_stale_groups()?;
    if !swept.is_empty() {
        eprintln!("removed {} uprobes left by an earlier run that was killed", swept.len());
    }
    install_ctrlc_forwarding()?;
    check_output_writable(&args.output)?;

    let progress = Progress::new();
    let (exe, run_args, label) = match args.pid {
        Some(pid) => {
            let exe = target::inspected_exe(None, Some(pid), &args.target, args.verbose)?.expect("a pid was given");
            (exe, Vec::new(), format!("pid {pid}"))
        }
        None => {
            if !args.target.is_set() {
                bail!(
                    "choose what to trace: --test NAME, --bin NAME, --example NAME, --bench NAME, --lib or --pid PID"
                );
            }
            progress.step("building (profile `trace`: debuginfo and frame pointers)");
            let built = target::build(&args.target, args.verbose)?;
            (built.exe, built.args, built.label)
        }
    };

    let binary = Binary::open(&exe)?;
    let sites = binary.valid_probes(Some(PROVIDER)).filter(|p| p.name == args.event).count();
    if sites == 0 {
        if binary.valid_probes(Some(PROVIDER)).next().is_none() {
            bail!(
                "no heapprobe probes in {}: is `Heapprobe` the `#[global_allocator]` (with the default `probe` \
                 or the `usdt` feature)?",
                exe.display()
            );
        }
        bail!(
            "{} has heapprobe probes, but none named {:?} (this build may predate it, or the code that fires it \
             was optimised out)",
            exe.display(),
            args.event
        );
    }
    progress.step(&format!("recording {label} ({sites} probe sites of heapprobe:{}, {:?})", args.event, args.backend));
    let started = Instant::now();
    // A live clock while attached to a service (a program run here shows its
    // own output instead).
    let ticker = match (args.pid, args.duration) {
        (Some(_), Some(secs)) => progress.live(&format!("recording for {secs} s:")),
        (Some(_), None) => progress.live("recording until Ctrl-C:"),
        (None, _) => util::Ticker::default(),
    };
    let (recording, work) = match args.backend {
        Backend::Perf => record_with_perf(&args, &tool, &binary, &exe, &run_args, &progress, ticker)?,
        Backend::Bpftrace => {
            let workload = bpftrace::Workload { exe: &exe, args: &run_args, pid: args.pid, duration: args.duration };
            let recording = bpftrace::record(&tool, &binary, &args.event, args.weight, &workload, args.verbose);
            drop(ticker);
            (recording?, None)
        }
    };
    let elapsed = started.elapsed();
    if let Some(work) = work {
        if args.keep {
            eprintln!("kept the raw recording: {}", work.join("perf.data").display());
        } else {
            let _ = std::fs::remove_dir_all(&work);
        }
    }

    let folded_path = args.output.with_extension("folded");
    recording.folded.write(&folded_path, args.weight, &args.event)?;
    let weight = args.weight;
    let totals = summary_line(&recording.folded, weight);
    let title = format!("heapprobe: {label}, heapprobe:{} by {}", args.event, weight.count_name());
    if recording.folded.total == 0 {
        print_summary(&recording, weight, &args.event, args.pid, &folded_path, None, elapsed);
        bail!(
            "recorded {} heapprobe:{} events but nothing to weigh by {}: no flame graph written",
            recording.folded.events,
            args.event,
            weight.count_name()
        );
    }
    recording.folded.render(&args.output, &title, &totals, weight.count_name())?;
    print_summary(&recording, weight, &args.event, args.pid, &folded_path, Some(&args.output), elapsed);
    match recording.status {
        Some(ended) if ended != Ended::Exited(0) => bail!(
            "the traced program ended badly ({ended}); the profile of what it allocated until then is in {}",
            args.output.display()
        ),
        _ => Ok(()),
    }
}

/// Records with perf; returns the recording and the scratch directory.
fn record_with_perf(
    args: &Args,
    perf: &str,
    binary: &Binary,
    exe: &Path,
    run_args: &[String],
    progress: &Progress,
    ticker: util::Ticker,
) -> anyhow::Result<(Recording, Option<PathBuf>)> {
    let mut group = UprobeGroup::new("trace")?;
    let added = group.add_probes(binary, PROVIDER, |name| name == args.event, heapprobe::probes::arg_names)?;
    if args.verbose {
        eprintln!("registered {added} uprobe(s) in group {}", group.name());
    }
    let work = work_dir(&args.output)?;
    let data = work.join("perf.data");
    let recorded = perf::record(
        perf,
        &group,
        &perf::Workload { exe, args: run_args, pid: args.pid, duration: args.duration, call_graph: args.call_graph },
        &data,
        args.verbose,
    );
    drop(ticker);
    // Kernel state is borrowed: the probes go as soon as recording ends.
    let removed = group.remove();
    let status = match recorded {
        Ok(status) => status,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
    };
    removed.context("could not remove the uprobes this run registered")?;
    progress.step("folding stacks");
    let ticker = progress.live("perf script and folding:");
    let recording = perf::fold(perf, &data, args.weight, status, args.verbose)?;
    drop(ticker);
    Ok((recording, Some(work)))
}

fn check_event(args: &Args) -> anyhow::Result<()> {
    let Some((_, arg_list)) = heapprobe::probes::PROBES.iter().find(|(name, _)| *name == args.event) else {
        let names = heapprobe::probes::PROBES.iter().map(|(n, _)| *n);
        bail!("no heapprobe probe named {:?}{}", args.event, target::closest(&args.event, names));
    };
    match args.weight {
        Weight::Bytes if !arg_list.iter().any(|a| *a == "size" || *a == "new_size") => {
            bail!("heapprobe:{} has no size argument: use --weight count", args.event)
        }
        Weight::Moved if !args.event.starts_with("realloc") => {
            bail!("--weight moved needs a realloc probe: add --event realloc (or realloc_locked)")
        }
        _ => Ok(()),
    }
}

/// The directory `output` goes to.
fn output_dir(output: &Path) -> &Path {
    output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

fn check_output_writable(output: &Path) -> anyhow::Result<()> {
    let dir = output_dir(output);
    if !dir.is_dir() {
        bail!("cannot write {}: {} is not a directory", output.display(), dir.display());
    }
    let probe = dir.join(format!(".heapprobe-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| {
        format!("cannot write {}: the directory {} is not writable", output.display(), dir.display())
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// A scratch directory for the raw recording, next to the output.
fn work_dir(output: &Path) -> anyhow::Result<PathBuf> {
    let work = output_dir(output).join(format!(".heapprobe-trace-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    Ok(work)
}

/// Ctrl-C stops the recording, not us: the recorder gets SIGINT (from the
/// terminal, or forwarded here when only we were signalled), finishes, and
/// we fold what it recorded and remove the probes.
fn install_ctrlc_forwarding() -> anyhow::Result<()> {
    // Once per process: `--baseline` traces twice.
    static INSTALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        let pid = RECORDER_PID.load(Ordering::SeqCst);
        if pid != 0 {
            // SAFETY: kill(2) with a pid we spawned and SIGINT has no memory effects.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        }
    })
    .context("cannot install the Ctrl-C handler")
}

/// `N events, X MiB (B bytes)`, or `N calls`.
pub fn summary_line(folded: &Folded, weight: Weight) -> String {
    match weight {
        Weight::Count => format!("{} calls", folded.total),
        _ => format!("{} events, {} ({} bytes)", folded.events, flame::human_bytes(folded.total), folded.total),
    }
}

/// The terminal summary: totals, how the target ended, lost events, the
/// share of unknown frames, the top 10 stacks, and where the files are.
pub fn print_summary(
    recording: &Recording,
    weight: Weight,
    event: &str,
    pid: Option<u32>,
    folded_path: &Path,
    svg: Option<&Path>,
    elapsed: std::time::Duration,
) {
    let folded = &recording.folded;
    println!();
    println!("heapprobe:{event}: {} in {:.1} s", summary_line(folded, weight), elapsed.as_secs_f64());
    match (&recording.status, pid) {
        (Some(status), _) => println!("traced program: {status}"),
        (None, Some(pid)) if !Path::new(&format!("/proc/{pid}")).exists() => {
            println!("traced process {pid}: exited during the trace (the profile up to its exit is kept)")
        }
        (None, Some(pid)) => println!("traced process {pid}: still running"),
        (None, None) => {}
    }
    println!("lost events: {}", recording.lost);
    let unknown = folded.unknown_percent();
    println!("unsymbolised frames: {unknown:.1}%");
    if unknown > 10.0 {
        println!(
            "warning: more than 10% of frames are [unknown]: build with debuginfo and frame pointers \
             (`cargo xtask trace` does this for workspace targets; for other binaries use \
             RUSTFLAGS=\"-C force-frame-pointers=yes\" and `debug = true`)"
        );
    }
    if folded.stacks_added > 0 && folded.frames < 4 * folded.stacks_added {
        println!(
            "warning: stacks average {:.1} frames: the program was probably built without frame pointers \
             (build it with RUSTFLAGS=\"-C force-frame-pointers=yes\"; `cargo xtask trace` does for \
             workspace targets)",
            folded.frames as f64 / folded.stacks_added as f64
        );
    }
    let top = folded.top(10);
    if !top.is_empty() {
        println!("\ntop {} stacks by {}:", top.len(), weight.count_name());
        for (stack, w) in top {
            let share = 100.0 * w as f64 / folded.total.max(1) as f64;
            let amount = match weight {
                Weight::Count => format!("{w}"),
                _ => flame::human_bytes(w),
            };
            println!("  {amount:>10} {share:5.1}%  {}", flame::allocation_site(stack));
        }
    }
    println!("\nfolded stacks: {}", folded_path.display());
    if let Some(svg) = svg {
        println!("flame graph:   {}", svg.display());
    }
}
