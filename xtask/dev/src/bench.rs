//! `cargo xtask bench`: what tracing costs. Runs one workload (the fixture
//! package's `heapprobe-workload`: rounds of 1000 × alloc/dealloc 4096)
//! untraced, under a bare bpftrace uprobe, and under `cargo xtask trace`
//! with each backend, timing the workload inside its own process; then times
//! folding and rendering the perf recording (read directly, and through
//! `perf script` for comparison). Prints a Markdown table.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use heapprobe_cli::flame::Graph;
use heapprobe_cli::target::{self, Build, Target};
use heapprobe_cli::trace::perf::{self, Script};
use heapprobe_cli::trace::{perf_data, Weight, PROVIDER};
use heapprobe_cli::util;

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rounds of 1000 allocations: 1000 makes the 1 million events the
    /// folding figure is quoted for.
    #[arg(long, default_value_t = 1000)]
    rounds: u64,
    /// Runs of each variant (the median is shown).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Echo the commands run.
    #[arg(short, long)]
    verbose: bool,
}

/// One measured variant.
struct Row {
    what: String,
    /// The workload's own time (median over runs).
    workload: Duration,
    /// The whole command's wall time (median over runs).
    wall: Duration,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    util::check_tracing_privileges("bpftrace")?;
    let perf = util::require_tool("PERF", "perf", "linux-perf")?;
    let bpftrace = util::require_tool("BPFTRACE", "bpftrace", "bpftrace")?;
    if args.runs == 0 || args.rounds == 0 {
        bail!("--runs and --rounds must be at least 1");
    }
    let progress = util::Progress::new();
    progress.step("building heapprobe-workload (profile `heapprobe`)");
    let mut workload = Target::default();
    workload.bin = Some(String::from("heapprobe-workload"));
    let exe = target::build(&workload, &Build::default(), args.verbose)?.exe;
    let scratch = std::env::temp_dir().join(format!("heapprobe-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
    let rounds = args.rounds.to_string();
    let xtask = std::env::current_exe().context("cannot find the xtask's own executable")?;
    let events = args.rounds * 1000;

    let mut rows = Vec::new();
    let mut measure = |what: String, make: &dyn Fn() -> Command| -> anyhow::Result<()> {
        progress.step(&format!("{what}: {} run(s) of {events} allocations", args.runs));
        let mut runs = Vec::new();
        for _ in 0..args.runs {
            let mut cmd = make();
            if args.verbose {
                eprintln!("$ {}", util::display(&cmd));
            }
            let started = Instant::now();
            let out = cmd.output().with_context(|| format!("failed to run {:?}", util::display(&cmd)))?;
            let wall = started.elapsed();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            if !out.status.success() {
                bail!("{what}: {:?} exited with {}:\n{text}", util::display(&cmd), out.status);
            }
            let Some(ns) = field(&text, "workload_ns=") else {
                bail!("{what}: the workload did not report its time:\n{text}");
            };
            if field(&text, "allocations=") != Some(events) {
                bail!("{what}: the workload did not make exactly {events} allocations:\n{text}");
            }
            runs.push((Duration::from_nanos(ns), wall));
        }
        rows.push(Row { what, workload: median(runs.iter().map(|r| r.0)), wall: median(runs.iter().map(|r| r.1)) });
        Ok(())
    };

    measure(String::from("untraced"), &|| {
        let mut cmd = Command::new(&exe);
        cmd.arg(&rounds);
        cmd
    })?;
    let bare = format!("usdt:{}:{PROVIDER}:alloc {{ }}", exe.display());
    measure(format!("bare uprobe: `bpftrace -e '{PROVIDER}:alloc {{ }}'`"), &|| {
        let mut cmd = Command::new(&bpftrace);
        cmd.args(["-e", &bare, "-c", &format!("{} {rounds}", exe.display())]);
        cmd
    })?;
    for backend in ["bpftrace", "perf"] {
        let svg = scratch.join(format!("{backend}.svg"));
        measure(format!("`cargo xtask trace --backend {backend}`"), &|| {
            let mut cmd = Command::new(&xtask);
            cmd.args(["trace", "--bin", "heapprobe-workload", "--backend", backend, "--keep", "-o"])
                .arg(&svg)
                .args(["--", &rounds]);
            cmd
        })?;
    }

    progress.step("folding and rendering the perf recording");
    let fold = time_folding(&perf, &scratch, events, args.verbose)?;
    let _ = std::fs::remove_dir_all(&scratch);
    print_table(&rows, &fold, events, args.runs);
    Ok(())
}

/// Times of the folding stages for one recording.
struct Folding {
    /// perf.data read directly: counted, decoded, symbolised and folded.
    read: Duration,
    /// Writing the folded file and rendering the SVG.
    render: Duration,
    /// The old way, for comparison: `perf script`, then parsing its text.
    script: Duration,
    parse: Duration,
    events: u64,
}

/// Folding and rendering the last kept perf recording in `scratch`, read
/// directly; then `perf script` and its parse, for comparison.
fn time_folding(perf: &str, scratch: &Path, events: u64, verbose: bool) -> anyhow::Result<Folding> {
    let data = std::fs::read_dir(scratch)?
        .filter_map(Result::ok)
        .map(|e| e.path().join("perf.data"))
        .find(|p| p.exists())
        .context("the perf run kept no perf.data")?;
    let started = Instant::now();
    let counts = perf_data::count(&data)?;
    let mut decoded = perf_data::fold(&data, Some("alloc"), Weight::Bytes, None)?;
    decoded.folded.trim_allocator_frames();
    let read = started.elapsed();
    let folded = decoded.folded;
    if folded.events < events || counts.samples != decoded.samples {
        bail!(
            "the perf recording holds {} alloc events ({} samples decoded, {} by perf's count), not the {events} made",
            folded.events,
            decoded.samples,
            counts.samples
        );
    }
    let started = Instant::now();
    let svg = scratch.join("fold-bench.svg");
    folded.write(&svg.with_extension("folded"), Weight::Bytes, "alloc")?;
    folded.render(&svg, "heapprobe bench", "fold and render", "bytes", &Graph::default())?;
    let render = started.elapsed();

    let started = Instant::now();
    let text = perf::run_script(perf, &data, verbose)?;
    let script = started.elapsed();
    let started = Instant::now();
    let Script { folded: by_text, .. } = perf::parse_script(&text, Weight::Bytes, Some("alloc"))
        .with_context(|| format!("parsing `perf script` of {}", data.display()))?;
    let parse = started.elapsed();
    if (by_text.events, by_text.total) != (folded.events, folded.total) {
        bail!(
            "perf script's text folds to {} events, {} bytes; perf.data read directly to {}, {}",
            by_text.events,
            by_text.total,
            folded.events,
            folded.total
        );
    }
    Ok(Folding { read, render, script, parse, events: folded.events })
}

fn print_table(rows: &[Row], fold: &Folding, events: u64, runs: usize) {
    let untraced = rows[0].workload.as_secs_f64();
    let bare = rows[1].workload.as_secs_f64();
    println!("\n{events} allocations (alloc + dealloc of 4096 bytes), median of {runs} run(s):\n");
    println!("| variant | workload time | per allocation | × untraced | × bare uprobe | whole command |");
    println!("|---|---:|---:|---:|---:|---:|");
    for row in rows {
        let secs = row.workload.as_secs_f64();
        println!(
            "| {} | {:.3} s | {:.0} ns | {:.1}× | {} | {:.1} s |",
            row.what,
            secs,
            secs * 1e9 / events as f64,
            secs / untraced,
            if row.what == "untraced" { String::from("-") } else { format!("{:.2}×", secs / bare) },
            row.wall.as_secs_f64()
        );
    }
    println!(
        "\nFolding and rendering the {} events recorded by perf: perf.data read, symbolised and folded {:.2} s, \
         written and rendered {:.2} s; {:.2} s in all. Through `perf script` instead (the same totals): \
         `perf script` {:.2} s, parsing and folding its text {:.2} s.",
        fold.events,
        fold.read.as_secs_f64(),
        fold.render.as_secs_f64(),
        (fold.read + fold.render).as_secs_f64(),
        fold.script.as_secs_f64(),
        fold.parse.as_secs_f64()
    );
}

/// The number after `key` in `text`.
fn field(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    text[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn median(values: impl Iterator<Item = Duration>) -> Duration {
    let mut all: Vec<Duration> = values.collect();
    all.sort();
    all[all.len() / 2]
}
