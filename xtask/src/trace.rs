//! `cargo xtask trace`: from a test, a binary or a live PID to a
//! byte-weighted `flamegraph.svg`.

mod bpftrace;
pub mod perf;
pub mod perf_data;
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
#[derive(clap::Args, Debug)]
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
    /// Fail when more than this share of the events, in percent, was lost:
    /// dropped by the kernel, missing from the recorder's output, or (with
    /// bpftrace) left without a stack. Losses are always reported.
    #[arg(long, value_name = "PERCENT", default_value_t = DEFAULT_MAX_LOST)]
    max_lost: f64,
    /// Echo the commands run.
    #[arg(short, long)]
    verbose: bool,
}

/// `--max-lost`'s default, in percent of the events recorded.
pub const DEFAULT_MAX_LOST: f64 = 1.0;

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

    /// The weight of one hit of `probe` with arguments `args` (by name), or
    /// what is missing for it.
    pub fn of(self, probe: &str, args: &dyn Fn(&str) -> Option<u64>) -> Result<u64, String> {
        match self {
            Weight::Count => Ok(1),
            // `sample` carries the bytes it stands for (the profiler's un-biased weight).
            Weight::Bytes => args("weight").or_else(|| args("size")).or_else(|| args("new_size")).ok_or_else(|| {
                String::from(
                    "has no size= (or new_size=) argument: the capture must name the probe's arguments as \
                     probes/heapprobe.d does (an older scripts/perf-flamegraph.sh named them arg0, arg1, ...: \
                     record again, or fold with --weight count)",
                )
            }),
            Weight::Moved if !probe.starts_with("realloc") => {
                Err(String::from("is not a realloc probe: --weight moved needs --event realloc (or realloc_locked)"))
            }
            Weight::Moved => match (args("old_ptr"), args("new_ptr"), args("old_size"), args("new_size")) {
                (Some(old), Some(new), Some(old_size), Some(new_size)) => {
                    Ok(if old != new { old_size.min(new_size) } else { 0 })
                }
                _ => Err(String::from("lacks one of old_ptr=, new_ptr=, old_size=, new_size=")),
            },
        }
    }
}

/// What a recording produced.
pub struct Recording {
    /// Folded stacks.
    pub folded: Folded,
    /// The recorder's own count, to check the folded totals against.
    pub recorded: Recorded,
    /// How the traced program ended (`None` when attached by pid).
    pub status: Option<Ended>,
}

/// What the recorder counted itself, beside what was parsed from its output.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    /// What the count is (`samples in perf.data`, ...); empty when there is
    /// none (a `perf script` text capture without a heapprobe-capture line).
    pub source: &'static str,
    /// Events the recorder kept, by its own count (`None`: unknown).
    pub events: Option<u64>,
    /// The weight the recorder summed itself (bpftrace's `@total`).
    pub total: Option<u64>,
    /// Events the recorder says were dropped (perf's lost samples).
    pub dropped: u64,
    /// Events parsed from the recorder's output (of every probe in it).
    pub parsed_events: u64,
    /// The weight parsed from the recorder's output, stackless included.
    pub parsed_total: Option<u64>,
    /// Events whose stack the recorder lost (bpftrace: the kernel's stack
    /// table had a collision); their weight is known and drawn as
    /// [`STACK_LOST`].
    pub stackless: u64,
    /// The weight of those events.
    pub stackless_weight: u64,
    /// What it means when the output holds fewer (or more) events than the
    /// recorder counted: `"… missing from …"`.
    pub unparsed_why: &'static str,
}

/// The frame that stands for events whose stack was lost.
pub const STACK_LOST: &str = "[stack lost]";

impl Recorded {
    /// Events the recorder kept that its output does not account for (or
    /// accounts for too many of).
    pub fn unparsed(&self) -> u64 {
        self.events.map_or(0, |e| e.abs_diff(self.parsed_events))
    }

    /// Every event lost, one way or another.
    pub fn lost(&self) -> u64 {
        self.dropped + self.unparsed() + self.stackless
    }

    /// [`lost`](Self::lost) in percent of all the events there were.
    pub fn lost_percent(&self) -> f64 {
        let all = self.events.unwrap_or(self.parsed_events) + self.dropped;
        if all == 0 {
            0.0
        } else {
            100.0 * self.lost() as f64 / all as f64
        }
    }

    /// Whether the recorder's summed weight disagrees with the parsed one.
    pub fn total_mismatch(&self) -> Option<(u64, u64)> {
        match (self.total, self.parsed_total) {
            (Some(recorded), Some(parsed)) if recorded != parsed => Some((recorded, parsed)),
            _ => None,
        }
    }

    /// The lines that compare the recorder's count with what was parsed.
    fn summary(&self, weight: Weight) -> Vec<String> {
        let mut lines = Vec::new();
        let unit = weight.count_name();
        match (self.events, self.total) {
            (Some(events), Some(total)) => lines.push(format!(
                "recorded: {events} events, {total} {unit} ({}); the stacks read back: {} events, {} {unit}",
                self.source,
                self.parsed_events,
                self.parsed_total.unwrap_or(0)
            )),
            (Some(events), None) => lines.push(format!(
                "recorded: {events} {}; {} events read back by perf script",
                self.source, self.parsed_events
            )),
            (None, _) => lines.push(String::from(
                "recorded: unknown (a text capture without a heapprobe-capture line: fold the perf.data itself, or \
                 a capture written by scripts/perf-flamegraph.sh, to check the totals against perf's own count)",
            )),
        }
        let mut causes = Vec::new();
        if self.dropped > 0 {
            causes.push(format!("{} dropped by the kernel (the recorder's buffer overflowed)", self.dropped));
        }
        if self.unparsed() > 0 {
            causes.push(format!("{} {}", self.unparsed(), self.unparsed_why));
        }
        if self.stackless > 0 {
            causes.push(format!(
                "{} whose stacks the kernel's stack table lost (hash collisions; their {} {unit} are drawn as {STACK_LOST})",
                self.stackless, self.stackless_weight
            ));
        }
        let lost = self.lost();
        if lost == 0 {
            lines.push(String::from("lost events: 0"));
        } else {
            lines.push(format!("lost events: {lost} ({:.2}%): {}", self.lost_percent(), causes.join("; ")));
        }
        if let Some((recorded, parsed)) = self.total_mismatch() {
            lines.push(format!(
                "warning: the recorder summed {recorded} {unit}, the stacks read back add up to {parsed} {unit}: \
                 {} {unit} unaccounted for",
                recorded.abs_diff(parsed)
            ));
        }
        lines
    }

    /// An error when more than `max_lost` percent of the events were lost,
    /// or the totals disagree.
    pub fn check(&self, max_lost: f64, weight: Weight) -> anyhow::Result<()> {
        let share = self.lost_percent();
        if self.lost() > 0 && share > max_lost {
            let advice = if self.stackless > 0 {
                "the perf backend (--backend perf) keeps every stack"
            } else if self.dropped > 0 {
                "record for less time, or with --call-graph fp (smaller events)"
            } else {
                "keep the recording (--keep) and report this"
            };
            bail!(
                "{} of the events ({share:.2}%) were lost, more than --max-lost {max_lost}%: the flame graph \
                 undercounts them ({advice}; or raise --max-lost)",
                self.lost()
            );
        }
        if let Some((recorded, parsed)) = self.total_mismatch() {
            bail!(
                "the recorder counted {recorded} {unit}, its stacks add up to {parsed}: the flame graph is off by {}",
                recorded.abs_diff(parsed),
                unit = weight.count_name()
            );
        }
        Ok(())
    }
}

/// How a traced program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signalled(i32),
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
        }
    }
}

/// The pid of the recording tool, for forwarding Ctrl-C (0 = none).
pub static RECORDER_PID: AtomicU32 = AtomicU32::new(0);

/// The pid of a program we run ourselves (not through the recorder) while it
/// runs, for forwarding Ctrl-C to it instead: the recorder ends with it.
pub static TARGET_PID: AtomicU32 = AtomicU32::new(0);

pub fn run(args: Args) -> anyhow::Result<()> {
    check_event(&args)?;
    if !(0.0..=100.0).contains(&args.max_lost) {
        bail!("--max-lost is a percentage: give a number from 0 to 100, not {}", args.max_lost);
    }
    // Before anything slow: a run must not record for minutes, then fail
    // to write its result.
    check_output_writable(&args.output)?;
    util::check_tracing_privileges(match args.backend {
        Backend::Perf => "perf",
        Backend::Bpftrace => "bpftrace",
    })?;
    let tool = match args.backend {
        Backend::Perf => util::require_tool("PERF", "perf", "linux-perf")?,
        Backend::Bpftrace => util::require_tool("BPFTRACE", "bpftrace", "bpftrace")?,
    };
    let setpriv = util::require_setpriv()?;
    sweep_stale_state(&args.output)?;
    install_ctrlc_forwarding()?;

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
    let (recording, work) = match args.backend {
        Backend::Perf => record_with_perf(&args, &tool, &binary, &exe, &run_args, &setpriv, &progress)?,
        Backend::Bpftrace => {
            let workload = bpftrace::Workload { exe: &exe, args: &run_args, pid: args.pid, duration: args.duration };
            (bpftrace::record(&tool, &binary, &args.event, args.weight, &workload, &progress, args.verbose)?, None)
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
    recording.folded.write(&folded_path)?;
    let weight = args.weight;
    let totals = summary_line(&recording.folded, weight);
    let title = format!("heapprobe: {label}, heapprobe:{} by {}", args.event, weight.count_name());
    if recording.folded.total == 0 {
        print_summary(&recording, weight, &args.event, args.pid, &folded_path, None, elapsed);
        recording.recorded.check(args.max_lost, weight)?;
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
        _ => recording.recorded.check(args.max_lost, weight),
    }
}

/// Sweeps what killed runs left: uprobe groups of dead xtasks (reporting,
/// and leaving, those an orphaned recorder still holds), and scratch
/// folders next to the output.
fn sweep_stale_state(output: &Path) -> anyhow::Result<()> {
    let sweep = heapprobe_sdt::sweep_stale_groups()?;
    if !sweep.removed.is_empty() {
        eprintln!("removed {} uprobes left by an earlier run that was killed", sweep.removed.len());
    }
    for group in &sweep.busy {
        eprintln!(
            "warning: left uprobe group {} in place: the run that made it (pid {}) is gone, but {}, so the kernel \
             refuses to remove it (EBUSY). This run uses a group of its own; the next run removes that one once \
             {}.",
            group.name,
            group.pid,
            describe_holders(&group.holders, &group.name),
            if group.holders.is_empty() { "nothing holds it" } else { "the holder exits (or is killed)" }
        );
    }
    let dir = output_dir(output);
    let removed = sweep_scratch(dir);
    if !removed.is_empty() {
        eprintln!(
            "removed {} scratch folder(s) left in {} by runs that were killed: {}",
            removed.len(),
            dir.display(),
            removed.join(", ")
        );
    }
    Ok(())
}

/// Who holds a stale group open, for messages.
pub fn describe_holders(holders: &[heapprobe_sdt::Holder], group: &str) -> String {
    if holders.is_empty() {
        return format!(
            "a process still has its events open (none names {group} on its command line: look for perf or \
             bpftrace with `ps -ef`)"
        );
    }
    let each: Vec<String> = holders
        .iter()
        .map(|h| {
            let mut cmdline: String = h.cmdline.chars().take(100).collect();
            if cmdline.len() < h.cmdline.len() {
                cmdline.push_str("...");
            }
            format!("pid {} (`{cmdline}`)", h.pid)
        })
        .collect();
    format!("{} still {} its events open", each.join(" and "), if holders.len() == 1 { "has" } else { "have" })
}

/// The prefixes of the scratch entries a run makes next to its output, each
/// followed by the run's pid.
const SCRATCH: [&str; 2] = [".heapprobe-trace-", ".heapprobe-write-test-"];

/// Removes the scratch entries in `dir` whose run is gone; returns their names.
fn sweep_scratch(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = SCRATCH.iter().find_map(|p| name.strip_prefix(p)).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        let gone = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        match gone {
            Ok(()) => removed.push(name),
            Err(e) => eprintln!("warning: cannot remove {}, left by a killed run: {e}", path.display()),
        }
    }
    removed.sort();
    removed
}

/// Records with perf; returns the recording and the scratch directory.
fn record_with_perf(
    args: &Args,
    perf: &str,
    binary: &Binary,
    exe: &Path,
    run_args: &[String],
    setpriv: &Path,
    progress: &Progress,
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
        &perf::Workload {
            exe,
            args: run_args,
            setpriv,
            pid: args.pid,
            duration: args.duration,
            call_graph: args.call_graph,
        },
        &data,
        &work,
        progress,
        args.verbose,
    );
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
    let recording = perf::fold(perf, &data, args.weight, status, args.verbose);
    drop(ticker);
    match recording {
        Ok(recording) => Ok((recording, Some(work))),
        Err(e) if args.keep => Err(e.context(format!("the recording is kept in {}", data.display()))),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            Err(e)
        }
    }
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

/// Fails when `output` (or the folded file next to it) cannot be written:
/// a directory there, a directory that does not exist, or one we may not
/// write to.
pub fn check_output_writable(output: &Path) -> anyhow::Result<()> {
    let folded = output.with_extension("folded");
    for path in [output, folded.as_path()] {
        if path.is_dir() {
            bail!(
                "cannot write {}: it is a directory (give a file name, such as {}/flamegraph.svg)",
                path.display(),
                path.display()
            );
        }
    }
    let dir = output_dir(output);
    if !dir.is_dir() {
        bail!("cannot write {}: {} is not a directory", output.display(), dir.display());
    }
    let probe = dir.join(format!(".heapprobe-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| {
        format!("cannot write {}: the directory {} is not writable", output.display(), dir.display())
    })?;
    let _ = std::fs::remove_file(probe);
    for path in [output, folded.as_path()] {
        if path.exists() {
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .with_context(|| format!("cannot write {}: the file exists and is not writable", path.display()))?;
        }
    }
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
    // ctrlc runs this on a thread of its own, not in the signal handler.
    ctrlc::set_handler(|| {
        let target = TARGET_PID.load(Ordering::SeqCst);
        if target != 0 {
            // A program of ours ends, and the recorder with it.
            // SAFETY: kill(2) with a pid we spawned and SIGINT has no memory effects.
            unsafe { libc::kill(target as libc::pid_t, libc::SIGINT) };
            return;
        }
        // bpftrace 0.17 can miss a SIGINT that lands while it is busy (it
        // then waits for output that may never come): as a user would, press
        // again every 2 s while the same recorder runs.
        let recorder = RECORDER_PID.load(Ordering::SeqCst);
        for _ in 0..30 {
            if recorder == 0 || RECORDER_PID.load(Ordering::SeqCst) != recorder {
                return;
            }
            // SAFETY: as above.
            unsafe { libc::kill(recorder as libc::pid_t, libc::SIGINT) };
            std::thread::sleep(std::time::Duration::from_secs(2));
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
    for line in recording.recorded.summary(weight) {
        println!("{line}");
    }
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
