//! `cargo heapprobe trace`: from a test, a binary or a live PID to a
//! byte-weighted `flamegraph.svg`.

mod baseline;
mod bpftrace;
pub mod perf;
pub mod perf_data;
mod symbols;
mod unwind;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Instant;

use anyhow::{bail, Context as _};
use heapprobe_sdt::{Binary, UprobeGroup};

use crate::flame::{self, Folded, Graph};
use crate::target::{self, Build, Target};
use crate::util::{self, Progress};

/// The provider heapprobe's probes belong to.
pub const PROVIDER: &str = "heapprobe";

/// Options of `cargo heapprobe trace`. Build one from
/// [`Default::default`] and set what differs (the fields are public; more
/// may come, so it cannot be written as a literal).
#[derive(clap::Args, Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// What to build and run.
    #[command(flatten)]
    pub target: Target,
    /// Where and how to build it.
    #[command(flatten)]
    pub build: Build,
    /// Attach to this running process (it must use heapprobe) instead of
    /// building and running a target. Default: none.
    #[arg(long, value_name = "PID", conflicts_with = "target")]
    pub pid: Option<u32>,
    /// With --pid: stop recording after this many seconds. Default: at
    /// Ctrl-C.
    #[arg(long, value_name = "SECS", requires = "pid")]
    pub duration: Option<f64>,
    /// The probe to record: alloc, dealloc, realloc, alloc_locked (only
    /// allocations inside measured scopes), local_alloc, ... (see
    /// `probes/heapprobe.d`). Default: `alloc`.
    #[arg(long, default_value = "alloc", hide_default_value = true)]
    pub event: String,
    /// Only the hits whose `id` argument is N: one `Local` instance (the
    /// `local_*` probes), or one measured scope (`scope_begin`, `scope_end`).
    /// Default: every hit.
    #[arg(long, value_name = "N")]
    pub id: Option<u64>,
    /// What each stack is weighted by. Default: `bytes`.
    #[arg(long, value_enum, default_value_t = Weight::Bytes, hide_default_value = true)]
    pub weight: Weight,
    /// Where to write the flame graph; the folded stacks go next to it
    /// (`flamegraph.folded`). Default: `flamegraph.svg`.
    #[arg(short, long, default_value = "flamegraph.svg", hide_default_value = true)]
    pub output: PathBuf,
    /// The recorder: `perf` (events streamed to user space, then folded) or
    /// `bpftrace` (stacks and sums aggregated in the kernel). Default: `perf`.
    #[arg(long, value_enum, default_value_t = Backend::Perf, hide_default_value = true)]
    pub backend: Backend,
    /// How perf records stacks: `fp` (the kernel follows frame pointers;
    /// small and fast, what the builds `trace` makes have) or `dwarf` (perf
    /// copies the top --stack-size bytes of the stack at every event, and
    /// heapprobe unwinds them with the binaries' `.eh_frame`: for binaries
    /// built without frame pointers, such as a release build traced with
    /// --pid; far larger recordings, so more events lost at high rates).
    /// Stacks left unknown or truncated are counted, and fail the trace
    /// past --max-lost. Default: `fp`.
    #[arg(long, value_enum, default_value_t = CallGraph::Fp, hide_default_value = true)]
    pub call_graph: CallGraph,
    /// With `--call-graph dwarf`: how many bytes of each event's stack perf
    /// copies (up to 65528, a multiple of 8). A stack deeper than this is
    /// drawn under `[truncated]`. Default: `8192` (perf's).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_STACK_SIZE, hide_default_value = true)]
    pub stack_size: u32,
    /// Keep the raw recording (perf.data) next to the output. Default:
    /// `false`.
    #[arg(long)]
    pub keep: bool,
    /// Fail when more than this share of the events, in percent, was lost:
    /// dropped by the kernel, missing from the recorder's output, or (with
    /// bpftrace) left without a stack. Losses are always reported. Default:
    /// `1`.
    #[arg(long, value_name = "PERCENT", default_value_t = DEFAULT_MAX_LOST, hide_default_value = true)]
    pub max_lost: f64,
    /// How the flame graph is drawn.
    #[command(flatten)]
    pub graph: Graph,
    /// Echo the commands run. Default: `false`.
    #[arg(short, long)]
    pub verbose: bool,
    /// Also trace the same target at this git revision (checked out in a
    /// temporary worktree of the workspace's repository, built in
    /// `heapprobe-baseline/` of its target directory), then write their
    /// differential flame graph to --output, the two traces next to it
    /// (`NAME.before.*`, `NAME.after.*`) and the diff summary. Default: none.
    #[arg(long, value_name = "REF", conflicts_with = "pid")]
    pub baseline: Option<String>,
    /// With perf: also fold the recording by count, into `NAME.count.folded`
    /// (`--baseline` does, for the diff's count deltas).
    #[arg(skip)]
    pub(crate) count_folded: bool,
    /// Run the built program through a link of the same file name in this
    /// directory (`--baseline` gives both sides directories of one length,
    /// so that what a program allocates for its own `argv[0]` is the same
    /// on both sides, wherever each was built). `None`: run it where it is.
    #[arg(skip)]
    pub(crate) run_from: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            target: Target::default(),
            build: Build::default(),
            pid: None,
            duration: None,
            event: String::from("alloc"),
            id: None,
            weight: Weight::Bytes,
            output: PathBuf::from("flamegraph.svg"),
            backend: Backend::Perf,
            call_graph: CallGraph::Fp,
            stack_size: DEFAULT_STACK_SIZE,
            keep: false,
            max_lost: DEFAULT_MAX_LOST,
            graph: Graph::default(),
            verbose: false,
            baseline: None,
            count_folded: false,
            run_from: None,
        }
    }
}

/// What a trace wrote, and its totals.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Outcome {
    /// The flame graph (`None` when nothing weighed anything).
    pub svg: Option<PathBuf>,
    /// The folded stacks.
    pub folded: PathBuf,
    /// Probe hits folded.
    pub events: u64,
    /// Their summed weight (bytes, calls or bytes copied).
    pub total: u64,
    /// The count-weighted folded stacks of the same recording
    /// (`NAME.count.folded`), when written (`--baseline` with perf, for the
    /// diff's count deltas). `None` otherwise.
    pub counts: Option<PathBuf>,
    /// With `--baseline`: the differential flame graph (the rest of the
    /// outcome is the working tree's trace). `None` otherwise.
    pub diff: Option<PathBuf>,
}

/// `--max-lost`'s default, in percent of the events recorded.
pub const DEFAULT_MAX_LOST: f64 = 1.0;

/// `--stack-size`'s default: perf's own for `--call-graph dwarf`.
pub const DEFAULT_STACK_SIZE: u32 = 8192;

/// The largest stack copy perf takes (`perf record --call-graph dwarf,SIZE`:
/// `u16::MAX` rounded down to 8).
pub const MAX_STACK_SIZE: u32 = 65528;

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
    /// Bytes copied by reallocs that moved the block (`realloc`,
    /// `realloc_locked`, and `Local`'s `local_grow` and `local_shrink`).
    Moved,
}

/// The probes `--weight moved` takes: those with the four arguments of a
/// move (`old_ptr`, `new_ptr`, `old_size`, `new_size`).
pub fn moves(probe: &str) -> bool {
    matches!(probe, "realloc" | "realloc_locked" | "local_grow" | "local_shrink")
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
            Weight::Moved if !moves(probe) => Err(String::from(
                "is not a realloc probe: --weight moved needs --event realloc, realloc_locked, local_grow or \
                 local_shrink",
            )),
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

impl Recording {
    /// An error when more than `max_lost` percent of the events were lost
    /// or the totals disagree ([`Recorded::check`]), or when more than
    /// `max_lost` percent of the weight sits on stacks that are unknown or
    /// truncated.
    pub fn check(&self, max_lost: f64, weight: Weight) -> anyhow::Result<()> {
        self.recorded.check(max_lost, weight)?;
        let folded = &self.folded;
        let share = folded.unknown_or_truncated_percent();
        let (unknown, truncated) = (folded.unknown_stacks, folded.truncated_stacks);
        if unknown.events + truncated.events > 0 && share > max_lost {
            bail!(
                "{share:.2}% of the {} sit on stacks that are unknown ({} events) or truncated ({} events), more \
                 than --max-lost {max_lost}%: the flame graph cannot say who allocated them ({}; or raise \
                 --max-lost)",
                weight.count_name(),
                unknown.events,
                truncated.events,
                stack_advice(folded)
            );
        }
        Ok(())
    }
}

/// What to do about unknown and truncated stacks, for the summary and the
/// error.
fn stack_advice(folded: &Folded) -> String {
    let mut advice = Vec::new();
    if folded.unknown_stacks.events > 0 {
        advice.push(if folded.unwound > 0 {
            "unknown stacks with --call-graph dwarf: a file the process mapped was rebuilt or deleted since (its \
                 unwind tables are gone), or its code has none; keep the binary that ran"
        } else {
            "unknown stacks with frame pointers: the binary was built without them; record with --call-graph \
                 dwarf, or build with RUSTFLAGS=\"-C force-frame-pointers=yes\" (`cargo heapprobe trace` does for \
                 the targets it builds)"
        });
    }
    if folded.truncated_stacks.events > 0 {
        advice.push(
            "truncated stacks (drawn under [truncated]): the stack copy ended before the thread's first frame; \
                 record with a larger --stack-size (up to 65528)",
        );
    }
    advice.join("; ")
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
    /// Events the recorder wrote twice, recognised as exact copies and left
    /// out of `parsed_events` (perf 6.1's reader race; see
    /// [`perf_data::fold`]). Counted in `events`, not lost.
    pub duplicates: u64,
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
        self.events.map_or(0, |e| e.abs_diff(self.parsed_events + self.duplicates))
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
            (Some(events), None) => {
                lines.push(format!("recorded: {events} {}; {} events read back", self.source, self.parsed_events))
            }
            (None, _) => lines.push(String::from(
                "recorded: unknown (a text capture without a heapprobe-capture line: fold the perf.data itself, or \
                 a capture written by scripts/perf-flamegraph.sh, to check the totals against perf's own count)",
            )),
        }
        if self.duplicates > 0 {
            lines.push(format!(
                "note: the recorder wrote {} event(s) twice (perf record reads its ring buffer's head twice and can \
                 copy a record again); the copies are byte for byte identical, event id and nanosecond included, \
                 and were left out",
                self.duplicates
            ));
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
                "record for less time, or with smaller events: --call-graph fp, or a smaller --stack-size with \
                 --call-graph dwarf"
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

/// Set when Ctrl-C was pressed (a recording ends early, and `--baseline`
/// stops after it).
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The pid of a program we run ourselves (not through the recorder) while it
/// runs, for forwarding Ctrl-C to it instead: the recorder ends with it.
pub static TARGET_PID: AtomicU32 = AtomicU32::new(0);

/// Traces what `options` names and writes the flame graph and the folded
/// stacks; prints progress on stderr and the summary on stdout. Fails (after
/// writing what was recorded) when the traced program failed, or when more
/// events were lost than `--max-lost` allows.
pub fn run(options: &Options) -> anyhow::Result<Outcome> {
    if let Some(reference) = &options.baseline {
        return baseline::run(options, reference);
    }
    let args = options;
    check_event(&args.event, args.weight, args.id)?;
    if !(0.0..=100.0).contains(&args.max_lost) {
        bail!("--max-lost is a percentage: give a number from 0 to 100, not {}", args.max_lost);
    }
    if args.stack_size == 0 || args.stack_size > MAX_STACK_SIZE || !args.stack_size.is_multiple_of(8) {
        bail!("--stack-size {}: perf copies a multiple of 8 bytes, from 8 to {MAX_STACK_SIZE}", args.stack_size);
    }
    if args.call_graph == CallGraph::Dwarf && args.backend == Backend::Bpftrace {
        bail!(
            "--call-graph dwarf is perf's: bpftrace's ustack follows frame pointers only (use --backend perf, or \
             --call-graph fp with a build that has frame pointers)"
        );
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
    let built = match args.pid {
        Some(pid) => {
            let exe = target::inspected_exe(None, Some(pid), &args.target, &args.build, args.verbose)?
                .expect("a pid was given");
            target::Built { exe, args: Vec::new(), label: format!("pid {pid}"), dir: None, env: Vec::new() }
        }
        None => {
            if !args.target.is_set() {
                bail!(
                    "choose what to trace: --test NAME, --bin NAME, --example NAME, --bench NAME, --lib or --pid PID"
                );
            }
            progress.step(&format!(
                "building (profile `{}`: {}debuginfo and frame pointers)",
                args.build.profile(),
                if args.build.release { "optimised, with " } else { "" }
            ));
            let mut built = target::build(&args.target, &args.build, args.verbose)?;
            warn_without_frame_pointers(&built.exe);
            if let Some(dir) = &args.run_from {
                built.exe = link_into(dir, &built.exe)?;
            }
            built
        }
    };
    let (exe, run_args, label) = (&built.exe, &built.args, &built.label);

    let binary = Binary::open(exe)?;
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
    if args.pid.is_none() {
        refuse_dark_semaphores(&binary, exe, &args.event)?;
    }
    progress.step(&format!("recording {label} ({sites} probe sites of heapprobe:{}, {:?})", args.event, args.backend));
    let started = Instant::now();
    let (mut recording, work) = match args.backend {
        Backend::Perf => record_with_perf(args, &tool, &binary, &built, &setpriv, &progress)?,
        Backend::Bpftrace => {
            let workload = bpftrace::Workload {
                exe,
                args: run_args,
                dir: built.dir.as_deref(),
                env: &built.env,
                pid: args.pid,
                duration: args.duration,
                id: args.id,
            };
            (bpftrace::record(&tool, &binary, &args.event, args.weight, &workload, &progress, args.verbose)?, None)
        }
    };
    let elapsed = started.elapsed();
    // With --pid --duration the probes were on for the duration asked
    // (perf: from its acknowledged enable to the SIGINT; bpftrace: its
    // interval after attaching), unless the process exited first.
    let recorded_for = match (args.pid, args.duration) {
        (Some(pid), Some(secs)) if Path::new(&format!("/proc/{pid}")).exists() => Some(secs),
        _ => None,
    };
    let mut counts = None;
    if let Some(work) = work {
        let data = work.join("perf.data");
        if args.count_folded {
            let folded = write_count_folded(args, &data);
            if folded.is_err() && !args.keep {
                let _ = std::fs::remove_dir_all(&work);
            }
            counts = Some(folded?);
        }
        if args.keep {
            eprintln!("kept the raw recording: {}", data.display());
        } else {
            let _ = std::fs::remove_dir_all(&work);
        }
    }
    if !args.graph.keep_allocator_frames {
        recording.folded.trim_allocator_frames();
    }

    let folded_path = args.output.with_extension("folded");
    recording.folded.write(&folded_path, args.weight, &args.event)?;
    let weight = args.weight;
    let totals = summary_line(&recording.folded, weight);
    let title = format!("heapprobe: {label}, heapprobe:{} by {}", args.event, weight.count_name());
    let mut outcome = Outcome {
        svg: None,
        folded: folded_path.clone(),
        events: recording.folded.events,
        total: recording.folded.total,
        counts,
        diff: None,
    };
    if recording.folded.total == 0 {
        print_summary(&recording, weight, &args.event, args.pid, &folded_path, None, elapsed, recorded_for);
        recording.check(args.max_lost, weight)?;
        bail!(
            "recorded {} heapprobe:{} events but nothing to weigh by {}: no flame graph written",
            recording.folded.events,
            args.event,
            weight.count_name()
        );
    }
    recording.folded.render(&args.output, &title, &totals, weight.count_name(), &args.graph)?;
    outcome.svg = Some(args.output.clone());
    print_summary(&recording, weight, &args.event, args.pid, &folded_path, Some(&args.output), elapsed, recorded_for);
    args.graph.open_if_asked(&args.output);
    match recording.status {
        Some(ended) if ended != Ended::Exited(0) => bail!(
            "the traced {} ended badly ({ended}); the profile of what it allocated until then is in {}",
            if label.starts_with("test") { "test" } else { "program" },
            args.output.display()
        ),
        _ => recording.check(args.max_lost, weight).map(|()| outcome),
    }
}

/// Folds perf's recording `data` a second time, by count (the same
/// stacks, trimmed the same way), into `NAME.count.folded` next to the
/// output; returns its path.
fn write_count_folded(args: &Options, data: &Path) -> anyhow::Result<PathBuf> {
    let mut decoded = perf_data::fold(data, Some(&args.event), Weight::Count, args.id)?;
    if !args.graph.keep_allocator_frames {
        decoded.folded.trim_allocator_frames();
    }
    let stem = args.output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let path = args.output.with_file_name(format!("{stem}.count.folded"));
    decoded.folded.write(&path, Weight::Count, &args.event)?;
    Ok(path)
}

/// Fails when a semaphore of `event`'s sites sits in a file page that an
/// earlier writable segment (RELRO) maps too: traced from its start, the
/// program's semaphore would never be set (the kernel counts in RELRO's
/// copy), and every guarded site would stay dark (DEVELOPERS.md, trap 4).
fn refuse_dark_semaphores(binary: &Binary, exe: &Path, event: &str) -> anyhow::Result<()> {
    let pages: Vec<String> = binary
        .valid_probes(Some(PROVIDER))
        .filter(|p| p.name == event)
        .filter_map(|p| p.semaphore.and_then(|sem| crate::doctor::shared_relro_page(&binary.segments, sem)))
        .map(|page| format!("{page:#x}"))
        .collect();
    if let Some(page) = pages.first() {
        bail!(
            "the semaphores of heapprobe:{event} in {} sit in a file page ({page}) that its RELRO segment maps too: \
             traced from its start, the kernel would set the RELRO copy and every guarded site would stay dark (0 \
             events). Link it with `-C link-arg=-Wl,-z,separate-loadable-segments` (in RUSTFLAGS), or build \
             heapprobe with its default `probe` feature (no semaphores), or start the program yourself and trace \
             it with --pid once it runs (the RELRO copy is read-only by then)",
            exe.display()
        );
    }
    Ok(())
}

/// Warns when `exe`'s own functions mostly lack frame pointers (the
/// user's cargo configuration overrode the flag: `target.<triple>.rustflags`
/// wins over the `build.rustflags` it goes into).
fn warn_without_frame_pointers(exe: &Path) {
    let Ok(data) = std::fs::read(exe) else { return };
    if let Some((own, with_fp)) = crate::doctor::frame_pointers(&data) {
        if own > 0 && u64::from(with_fp) * 100 < u64::from(own) * 80 {
            eprintln!(
                "warning: only {with_fp} of the {own} functions of {} set up a frame pointer, so stacks will skip \
                 callers: a `target.<triple>.rustflags` in your cargo configuration replaces the `build.rustflags` \
                 that add `-C force-frame-pointers=yes`; set RUSTFLAGS=\"-C force-frame-pointers=yes\" for this \
                 command (or add the flag there)",
                exe.display()
            );
        }
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
const SCRATCH: [&str; 2] = [WORK_PREFIX, ".heapprobe-write-test-"];

/// The scratch directory of a run's raw recording, next to its output (then
/// the run's pid).
const WORK_PREFIX: &str = ".heapprobe-trace-";

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
    args: &Options,
    perf: &str,
    binary: &Binary,
    built: &target::Built,
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
            exe: &built.exe,
            args: &built.args,
            dir: built.dir.as_deref(),
            env: &built.env,
            setpriv,
            pid: args.pid,
            duration: args.duration,
            call_graph: args.call_graph,
            stack_size: args.stack_size,
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
    let ticker = progress.live("reading perf.data and folding:");
    let recording = perf::fold(&data, &args.event, args.weight, args.id, status);
    drop(ticker);
    match recording {
        Ok((recording, decoded)) => {
            report_decoding(&decoded);
            Ok((recording, Some(work)))
        }
        Err(e) if args.keep => Err(e.context(format!("the recording is kept in {}", data.display()))),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            Err(e)
        }
    }
}

/// Warnings about what a perf.data held beyond the probe's samples: files
/// rebuilt since, throttling, records of unknown kinds.
pub fn report_decoding(decoded: &perf_data::Decoded) {
    for path in &decoded.rebuilt {
        eprintln!(
            "warning: {} was rebuilt since it was recorded (its build id differs): its frames are [unknown]",
            path.display()
        );
    }
    if decoded.throttled > 0 {
        eprintln!(
            "warning: the kernel throttled the events {} time(s): samples were dropped uncounted (raise \
             kernel.perf_event_max_sample_rate)",
            decoded.throttled
        );
    }
    for (kind, n) in &decoded.unknown_records {
        eprintln!("note: {n} record(s) of a kind this reader does not know ({kind}) were skipped");
    }
}

/// Checks `event`, `weight` and `id` against the probe table.
pub fn check_event(event: &str, weight: Weight, id: Option<u64>) -> anyhow::Result<()> {
    let Some((_, arg_list)) = heapprobe::probes::PROBES.iter().find(|(name, _)| *name == event) else {
        let names = heapprobe::probes::PROBES.iter().map(|(n, _)| *n);
        bail!("no heapprobe probe named {event:?}{}", target::closest(event, names));
    };
    if id.is_some() && !arg_list.contains(&"id") {
        bail!(
            "heapprobe:{event} has no id argument: --id picks one `Local` instance (--event local_alloc, \
             local_dealloc, local_grow, local_shrink, local_failed) or one scope (scope_begin, scope_end)"
        );
    }
    match weight {
        Weight::Bytes if !arg_list.iter().any(|a| *a == "size" || *a == "new_size") => {
            bail!("heapprobe:{event} has no size argument: use --weight count")
        }
        Weight::Moved if !moves(event) => bail!(
            "--weight moved needs a probe of moves: add --event realloc (or realloc_locked, local_grow, local_shrink)"
        ),
        _ => Ok(()),
    }
}

/// The directory `output` goes to.
pub(crate) fn output_dir(output: &Path) -> &Path {
    output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// A symbolic link to `exe` with its file name, in `dir` (created).
fn link_into(dir: &Path, exe: &Path) -> anyhow::Result<PathBuf> {
    let name = exe.file_name().with_context(|| format!("{} has no file name", exe.display()))?;
    let link = dir.join(name);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(exe, &link)
        .with_context(|| format!("cannot link {} to {}", link.display(), exe.display()))?;
    Ok(link)
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
    if !dir.exists() {
        bail!(
            "cannot write {}: the directory {} does not exist (create it with `mkdir -p {}`, or give another -o)",
            output.display(),
            dir.display(),
            dir.display()
        );
    }
    if !dir.is_dir() {
        bail!("cannot write {}: {} is a file, not a directory", output.display(), dir.display());
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
    let work = output_dir(output).join(format!("{WORK_PREFIX}{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    // Absolute: the recorder may run the program in another directory.
    work.canonicalize().with_context(|| format!("cannot resolve {}", work.display()))
}

/// Ctrl-C stops the recording, not us: the recorder gets SIGINT (from the
/// terminal, or forwarded here when only we were signalled), finishes, and
/// we fold what it recorded and remove the probes.
fn install_ctrlc_forwarding() -> anyhow::Result<()> {
    // Once per process: a second handler is an error, and `--baseline`
    // (or a task of the user's) traces more than once.
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    // ctrlc runs this on a thread of its own, not in the signal handler.
    ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
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
/// `elapsed` is the recorder's whole run; `recorded_for`, with `--pid
/// --duration`, how long its probes were on (the rest is its start and
/// stop).
#[allow(clippy::too_many_arguments)]
pub fn print_summary(
    recording: &Recording,
    weight: Weight,
    event: &str,
    pid: Option<u32>,
    folded_path: &Path,
    svg: Option<&Path>,
    elapsed: std::time::Duration,
    recorded_for: Option<f64>,
) {
    let folded = &recording.folded;
    println!();
    match recorded_for {
        Some(secs) => println!(
            "heapprobe:{event}: {} recorded for {secs:.1} s ({:.1} s with the recorder's start and stop)",
            summary_line(folded, weight),
            elapsed.as_secs_f64()
        ),
        None => println!("heapprobe:{event}: {} in {:.1} s", summary_line(folded, weight), elapsed.as_secs_f64()),
    }
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
    if folded.filtered > 0 {
        println!("other ids: {} hits of heapprobe:{event} whose id is not --id's (not drawn)", folded.filtered);
    }
    let unknown = folded.unknown_percent();
    println!("unsymbolised frames: {unknown:.1}%");
    let (unknown_stacks, truncated) = (folded.unknown_stacks, folded.truncated_stacks);
    if unknown_stacks.events + truncated.events == 0 {
        println!("unknown or truncated stacks: 0");
    } else {
        let of = |share: flame::Share| match weight {
            Weight::Count => format!("{} calls", share.events),
            _ => format!("{} events, {} bytes", share.events, share.weight),
        };
        println!(
            "unknown or truncated stacks: {:.2}% of the {}: {} unknown (no frame beyond the allocator and the \
             standard library), {} truncated ({})",
            folded.unknown_or_truncated_percent(),
            weight.count_name(),
            of(unknown_stacks),
            of(truncated),
            stack_advice(folded)
        );
    }
    if unknown > 10.0 && folded.unwound == 0 {
        println!(
            "warning: more than 10% of frames are [unknown]: build with debuginfo and frame pointers \
             (`cargo heapprobe trace` does this for the targets it builds; for other binaries use \
             RUSTFLAGS=\"-C force-frame-pointers=yes\" and `debug = true`, or record with --call-graph dwarf)"
        );
    } else if unknown > 10.0 {
        println!(
            "warning: more than 10% of frames are [unknown]: the binary (or a library) has no symbols, or was \
             rebuilt since it ran; build with `debug = true` (or at least without `strip`)"
        );
    }
    if folded.unwound == 0 && folded.stacks_added > 0 && folded.frames < 4 * folded.stacks_added {
        println!(
            "warning: stacks average {:.1} frames: the program was probably built without frame pointers \
             (build it with RUSTFLAGS=\"-C force-frame-pointers=yes\"; `cargo heapprobe trace` does for \
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
            // Names come from the binary's symbols: escaped, so that none
            // can send the terminal an escape sequence.
            println!("  {amount:>10} {share:5.1}%  {}", heapprobe::diff::printable(&flame::allocation_site(stack)));
        }
    }
    println!("\nfolded stacks: {}", folded_path.display());
    if let Some(svg) = svg {
        println!("flame graph:   {}", svg.display());
    }
}
