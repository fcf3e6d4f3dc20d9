//! The bpftrace backend: stacks and sums are aggregated in the kernel
//! (`@stacks[ustack] = stats(size)`: a count and a sum per distinct stack),
//! so only one entry per distinct stack crosses to user space. bpftrace's own
//! `@events` and `@total` are printed beside them, and the stacks must add up
//! to both; stacks bpftrace lost (bpftrace 0.17's stack table has hash
//! collisions: `ERROR: failed to look up stack id`, and a `@stacks[]` entry)
//! are counted as lost, their weight drawn as `[stack lost]`.
//!
//! Stacks are symbolised here, from the process's memory map: bpftrace
//! cannot symbolise a process once it is gone. bpftrace always attaches by
//! pid (`-p`), and nothing it does can leave a process stopped:
//!
//! - A program we launch starts stopped right after its `exec`
//!   (`PTRACE_TRACEME`) until bpftrace has attached, and is stopped again at
//!   libc's `_exit` for a moment so that its map can be read. It gets SIGKILL
//!   when we die (`PR_SET_PDEATHSIG`, like bpftrace itself), so if we are
//!   killed it dies too; and one found stopped for a second is resumed.
//! - A process attached by `--pid` is never stopped: its map is read when we
//!   attach and every half second while we record.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use heapprobe_sdt::{Binary, Site};

use super::symbols::{parse_maps, Mapping, Symbolizer};
use super::{Ended, Recorded, Recording, Weight, RECORDER_PID, STACK_LOST};
use crate::flame::Folded;
use crate::util::{self, display, Progress};

/// Distinct stacks bpftrace may keep (its map size).
const MAX_STACKS: u32 = 65_536;

/// The lines the program prints to talk to us.
const ATTACHED: &str = "heapprobe-attached";
const EXITING: &str = "heapprobe-exiting ";
const MAPS_BEGIN: &str = "heapprobe-maps";
const MAPS_END: &str = "heapprobe-end";

/// What to record.
pub struct Workload<'a> {
    /// The program to launch (or the executable of `pid`).
    pub exe: &'a Path,
    /// Its arguments.
    pub args: &'a [String],
    /// Where to launch it (`None`: here).
    pub dir: Option<&'a Path>,
    /// Variables to set for it.
    pub env: &'a [(String, std::ffi::OsString)],
    /// Attach to this process instead of launching `exe`.
    pub pid: Option<u32>,
    /// With `pid`: how long to record (`None`: until Ctrl-C).
    pub duration: Option<f64>,
    /// Only the hits whose `id` argument is this (one `Local` instance).
    pub id: Option<u64>,
}

/// Runs bpftrace on `event` of `binary`, then symbolises and folds.
pub fn record(
    bpftrace: &str,
    binary: &Binary,
    event: &str,
    weight: Weight,
    workload: &Workload<'_>,
    progress: &Progress,
    verbose: bool,
) -> anyhow::Result<Recording> {
    let exe = workload.exe.canonicalize().with_context(|| format!("cannot resolve {}", workload.exe.display()))?;
    // A program of ours starts stopped, and bpftrace attaches to it by pid
    // like to any other process (not with `-c`, whose child is bpftrace's:
    // it could outlive us, and bpftrace 0.17 finds no usdt probes in it
    // when it runs through a wrapper).
    let mut launched = match workload.pid {
        Some(_) => None,
        None => Some(Launched::start(&exe, workload, verbose)?),
    };
    let pid = match (&launched, workload.pid) {
        (Some(launched), _) => launched.pid,
        (None, Some(pid)) => pid,
        (None, None) => unreachable!("either launched or attached"),
    };
    let libc = match workload.pid {
        Some(pid) => libc_of(pid)?,
        // Not mapped yet (it is stopped right after exec): it links ours.
        None => libc_path()?,
    };
    let program = program(event, weight, workload.id, pid, launched.is_some(), workload.duration, &libc)?;
    let mut cmd = Command::new(bpftrace);
    cmd.args(["--unsafe", "-B", "line", "-e", &program, "-p", &pid.to_string()])
        // The map size: 0.17 reads the first name, current versions the second.
        .env("BPFTRACE_MAP_KEYS_MAX", MAX_STACKS.to_string())
        .env("BPFTRACE_MAX_MAP_KEYS", MAX_STACKS.to_string())
        // bpftrace 0.17 re-reads a live process's symbols for every address
        // unless told to cache them (safe: one process is traced): 4096
        // stacks took 33 s to print without, 2 s with.
        .env("BPFTRACE_CACHE_USER_SYMBOLS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    raise_memlock_limit();
    if verbose {
        eprintln!("$ {}", display(&cmd));
    }
    let mut child = util::spawn_tied(&mut cmd)?;
    RECORDER_PID.store(child.id(), Ordering::SeqCst);
    let stderr = child.stderr.take().context("bpftrace's stderr")?;
    let stderr_reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let maps = Arc::new(Mutex::new(Vec::new()));
    // A program of ours is watched from its release on (it maps its
    // libraries in its first milliseconds).
    let mut watcher = workload.pid.map(|pid| MapsWatcher::start(pid, maps.clone(), false));
    let read = read_output(&mut child, workload, launched.as_mut(), &maps, &mut watcher, progress, verbose);
    if read.is_err() {
        // The trace has failed: nothing is left to wait for.
        let _ = child.kill();
        if let Some(launched) = &launched {
            launched.kill();
        }
    }
    let status = child.wait();
    RECORDER_PID.store(0, Ordering::SeqCst);
    // A program of ours ends when it ends; bpftrace ends with it.
    let ended = launched.map(Launched::finish).transpose();
    drop(watcher);
    let status = status.context("waiting for bpftrace")?;
    let stderr = stderr_reader.join().unwrap_or_default();
    // bpftrace's own stderr, minus its routine lines (the memlock warning is
    // moot: the limit was raised).
    let stderr: String = stderr.lines().filter(|l| verbose || !is_routine(l)).collect::<Vec<_>>().join("\n");
    let dump = read?;
    let Some(dump) = dump else {
        bail!("{:?} exited with {status} before printing its maps: {}", display(&cmd), stderr.trim());
    };
    let ended = ended?;
    if !stderr.trim().is_empty() {
        eprintln!("{}", stderr.trim());
    }

    let parsed = parse_output(&dump).context("parsing bpftrace's maps")?;
    let mut maps = std::mem::take(&mut *maps.lock().unwrap_or_else(|e| e.into_inner()));
    if maps.is_empty() {
        maps = infer_exe_mapping(binary, &exe, event, &parsed.stacks);
    }
    let mut symbolizer = Symbolizer::new(maps);
    let mut folded = Folded::default();
    let (mut parsed_events, mut parsed_total) = (0, 0);
    for stack in &parsed.stacks {
        let frames: Vec<String> =
            stack.frames.iter().enumerate().map(|(i, address)| symbolizer.name(*address, i == 0)).collect();
        folded.add_aggregate(&frames, stack.total);
        parsed_events += stack.count;
        parsed_total += stack.total;
    }
    if parsed.stackless.count > 0 {
        folded.add_aggregate(&[STACK_LOST], parsed.stackless.total);
    }
    folded.events = parsed_events + parsed.stackless.count;
    let recorded = Recorded {
        source: "by bpftrace's own @events and @total",
        events: Some(parsed.events),
        total: Some(parsed.total),
        dropped: 0,
        parsed_events: parsed_events + parsed.stackless.count,
        duplicates: 0,
        parsed_total: Some(parsed_total + parsed.stackless.total),
        stackless: parsed.stackless.count,
        stackless_weight: parsed.stackless.total,
        unparsed_why: "counted in bpftrace's @events but not in its stack map, or the other way round (the map \
                       holds at most 65536 distinct stacks)",
    };
    Ok(Recording { folded, recorded, status: ended })
}

/// A program we run for bpftrace to trace. It starts stopped right after
/// its exec (`PTRACE_TRACEME`: the kernel stops it before its first
/// instruction), so that bpftrace can attach to it by pid before it runs,
/// and gets SIGKILL when we die (`PR_SET_PDEATHSIG`, set by us, its parent):
/// whatever stops it (bpftrace does, at `_exit`, until we read its map), it
/// cannot outlive us stopped.
struct Launched {
    pid: u32,
    /// Until [`release`](Self::release).
    child: Option<std::process::Child>,
    /// After: waits for it to end (a zombie would keep bpftrace waiting).
    reaper: Option<std::thread::JoinHandle<std::io::Result<std::process::ExitStatus>>>,
}

impl Launched {
    fn start(exe: &Path, workload: &Workload<'_>, verbose: bool) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let mut cmd = Command::new(exe);
        cmd.args(workload.args).envs(workload.env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = workload.dir {
            cmd.current_dir(dir);
        }
        // SAFETY: ptrace(PTRACE_TRACEME) is async-signal-safe and allocates
        // nothing; it runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::ptrace(libc::PTRACE_TRACEME, 0, std::ptr::null_mut::<libc::c_void>(), 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if verbose {
            eprintln!("$ {} (started stopped, for bpftrace -p)", display(&cmd));
        }
        let mut child = util::spawn_tied(&mut cmd)?;
        let pid = child.id();
        let mut status = 0;
        // SAFETY: waitpid on our own child, into a valid int.
        let waited = loop {
            let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
            if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break r;
        };
        if waited != pid as libc::pid_t || !libc::WIFSTOPPED(status) {
            let _ = child.kill();
            bail!("{} did not start (wait status {status:#x})", exe.display());
        }
        Ok(Self { pid, child: Some(child), reaper: None })
    }

    /// Lets it run (bpftrace is attached), and starts reaping it.
    fn release(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        // SAFETY: it is our tracee, stopped; detaching resumes it.
        let detached = unsafe {
            libc::ptrace(libc::PTRACE_DETACH, self.pid as libc::pid_t, std::ptr::null_mut::<libc::c_void>(), 0)
        };
        if detached != 0 {
            let error = std::io::Error::last_os_error();
            let _ = child.kill();
            let _ = child.wait();
            return Err(error).context("cannot start the traced program (PTRACE_DETACH)");
        }
        super::TARGET_PID.store(self.pid, Ordering::SeqCst);
        self.reaper = Some(std::thread::spawn(move || child.wait()));
        Ok(())
    }

    /// Kills it (SIGKILL ends a stopped process too).
    fn kill(&self) {
        // SAFETY: kill(2) on our own child; no memory effects.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
    }

    /// How it ended. Never released (bpftrace failed to attach), it is
    /// killed: it never ran.
    fn finish(mut self) -> anyhow::Result<Ended> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the program was not run: bpftrace did not attach to it");
        }
        // Stopped at `_exit` by a bpftrace that ended before we resumed it.
        // SAFETY: kill(2) on our own child; no memory effects.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGCONT) };
        let status = self.reaper.take().expect("released").join().expect("the reaper thread does not panic");
        super::TARGET_PID.store(0, Ordering::SeqCst);
        use std::os::unix::process::ExitStatusExt as _;
        let status = status.context("waiting for the traced program")?;
        Ok(match status.code() {
            Some(code) => Ended::Exited(code),
            None => Ended::Signalled(status.signal().unwrap_or(0)),
        })
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads bpftrace's stdout: our lines are acted on, and the map dump
/// (between [`MAPS_BEGIN`] and [`MAPS_END`]) returned.
fn read_output(
    child: &mut std::process::Child,
    workload: &Workload<'_>,
    mut launched: Option<&mut Launched>,
    maps: &Arc<Mutex<Vec<Mapping>>>,
    watcher: &mut Option<MapsWatcher>,
    progress: &Progress,
    verbose: bool,
) -> anyhow::Result<Option<String>> {
    let stdout = child.stdout.take().context("bpftrace's stdout")?;
    let mut dump: Option<String> = None;
    let mut dumped = false;
    let mut ticker = util::Ticker::default();
    let mut stacks = 0u64;
    let mut last_note = std::time::Instant::now();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading bpftrace's output")?;
        if let Some(text) = dump.as_mut().filter(|_| !dumped) {
            if line == MAPS_END {
                dumped = true;
                drop(std::mem::take(&mut ticker));
                continue;
            }
            if line.starts_with("@stacks[") {
                stacks += 1;
                // Off a terminal, a note now and then that it is not stuck.
                if last_note.elapsed() > Duration::from_secs(10) {
                    progress.note(&format!("{stacks} stacks read so far"));
                    last_note = std::time::Instant::now();
                }
            }
            text.push_str(&line);
            text.push('\n');
            continue;
        }
        if dumped {
            // After our dump, bpftrace 0.17 prints the maps we cleared at
            // exit (`@events: 0`): nothing else may come.
            if line.trim().is_empty() || is_cleared_map(&line) {
                continue;
            }
            bail!("bpftrace printed after its maps: {line:?}");
        }
        if line == ATTACHED {
            progress.note("attached: recording");
            if let Some(launched) = launched.as_mut() {
                launched.release()?;
                *watcher = Some(MapsWatcher::start(launched.pid, maps.clone(), true));
            } else {
                ticker = match workload.duration {
                    Some(secs) => progress.live(&format!("recording for {secs} s:")),
                    None => progress.live("recording until Ctrl-C:"),
                };
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix(EXITING) {
            let pid = rest.split_whitespace().next().and_then(|f| f.parse::<u32>().ok());
            let Some(pid) = pid else {
                bail!("bpftrace printed a malformed exit line: {line:?}");
            };
            merge_maps(maps, read_maps(pid));
            if launched.is_some() {
                // Stopped at `_exit` for this read: let it go.
                // SAFETY: kill(2) has no memory effects; the pid is our child's.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
            }
            continue;
        }
        if line == MAPS_BEGIN {
            // Ending already: Ctrl-C has nothing more to tell it.
            RECORDER_PID.store(0, Ordering::SeqCst);
            drop(std::mem::take(&mut ticker));
            if workload.pid.is_some() {
                merge_maps(maps, read_maps(workload.pid.unwrap_or_default()));
            }
            progress.step(
                "reading bpftrace's stacks (bpftrace resolves the symbols of each stack as it prints it: \
                 thousands of stacks take a while)",
            );
            ticker = progress.live("stacks printed by bpftrace:");
            dump = Some(String::new());
            continue;
        }
        if line.trim().is_empty() || line.starts_with("Attaching ") {
            continue;
        }
        if verbose {
            eprintln!("bpftrace: {line}");
        }
        bail!("bpftrace printed an unexpected line: {line:?}");
    }
    drop(ticker);
    if dump.is_some() && !dumped {
        bail!("bpftrace's output ended in the middle of its maps (no {MAPS_END:?} line)");
    }
    Ok(dump)
}

/// `@name: 0`: a map bpftrace 0.17 prints at exit after we cleared it.
fn is_cleared_map(line: &str) -> bool {
    line.strip_prefix('@')
        .and_then(|l| l.split_once(": "))
        .is_some_and(|(name, value)| name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && value == "0")
}

/// bpftrace's lines that say nothing new: the memlock warning (the limit was
/// raised), "Attaching/Attached N probes", newer bpftrace's note that it
/// cannot list kernel functions (the program attaches to usdt probes only),
/// its warnings about the bogus probe sites that code the linker discarded
/// leaves (skipped; `cargo xtask probes` lists them), and its errors about
/// stacks it lost (counted from its maps, and reported in the summary).
fn is_routine(line: &str) -> bool {
    line.contains("RLIMIT_MEMLOCK")
        || line.starts_with("Attaching ")
        || line.starts_with("Attached ")
        || line.contains("available_filter_functions")
        || (line.starts_with("WARNING: invalid address") && line.contains("for probe (heapprobe,"))
        || line.starts_with("ERROR: failed to look up stack id")
}

/// The bpftrace program.
fn program(
    event: &str,
    weight: Weight,
    id: Option<u64>,
    pid: u32,
    launched: bool,
    duration: Option<f64>,
    libc: &Path,
) -> anyhow::Result<String> {
    let args = heapprobe::probes::arg_names(event);
    let arg = |name: &str| args.iter().position(|a| *a == name).map(|i| format!("arg{i}"));
    let only = match id {
        Some(id) => format!(" && {} == {id}", arg("id").context("this probe has no id argument")?),
        None => String::new(),
    };
    let value = match weight {
        Weight::Count => String::from("1"),
        Weight::Bytes => arg("weight")
            .or_else(|| arg("size"))
            .or_else(|| arg("new_size"))
            .context("this probe has no size argument")?,
        Weight::Moved => {
            let (Some(old), Some(new), Some(old_size), Some(new_size)) =
                (arg("old_ptr"), arg("new_ptr"), arg("old_size"), arg("new_size"))
            else {
                bail!("--weight moved needs a realloc probe");
            };
            format!("({old} != {new} ? ({old_size} < {new_size} ? {old_size} : {new_size}) : 0)")
        }
    };
    // With -p, bpftrace 0.27 attaches a probe given by the executable's own
    // path twice (as the path and as /proc/PID/root/path): every event
    // counted twice. /proc/PID/exe attaches once, with 0.17 too.
    let exe = format!("/proc/{pid}/exe");
    // A program of ours is stopped at `_exit` until we have read its map
    // (bpftrace cannot symbolise it once it is gone; it dies with us, so it
    // cannot be left stopped); a process we attached to is never stopped.
    let at_exit = if launched { "signal(\"SIGSTOP\");" } else { "" };
    // Every event is kept, zero weights too (non-moving reallocs by
    // `--weight moved`), so that the stacks' counts add up to @events.
    let mut program = format!(
        "BEGIN {{ printf(\"{ATTACHED}\\n\"); }}\n\
         usdt:{exe}:heapprobe:{event} /pid == {pid}{only}/ {{\n\
         \t$w = {value};\n\
         \t@events = count();\n\
         \t@total = sum($w);\n\
         \t@stacks[ustack(perf, 127)] = stats($w);\n\
         }}\n\
         uprobe:{libc}:_exit /pid == {pid}/ {{\n\
         \tprintf(\"{EXITING}%d %d\\n\", pid, arg0);\n\
         \t{at_exit}\n\
         }}\n\
         END {{\n\
         \tprintf(\"{MAPS_BEGIN}\\n\");\n\
         \tprint(@events);\n\
         \tprint(@total);\n\
         \tprint(@stacks);\n\
         \tprintf(\"{MAPS_END}\\n\");\n\
         \tclear(@events);\n\
         \tclear(@total);\n\
         \tclear(@stacks);\n\
         }}\n",
        libc = libc.display(),
    );
    if let Some(secs) = duration {
        let ms = (secs * 1000.0).round().max(1.0) as u64;
        program.push_str(&format!("interval:ms:{ms} {{ exit(); }}\n"));
    }
    Ok(program)
}

/// One distinct stack of the map dump.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stack {
    /// Raw addresses, innermost first.
    pub frames: Vec<u64>,
    /// Events with this stack.
    pub count: u64,
    /// Their summed weight.
    pub total: u64,
}

/// What bpftrace printed at the end.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub stacks: Vec<Stack>,
    /// The events whose stack bpftrace lost (the `@stacks[]` entry), if any.
    pub stackless: Stack,
    /// bpftrace's own `@events` and `@total`.
    pub events: u64,
    pub total: u64,
}

/// A line of bpftrace's map dump that is not what it should be.
#[derive(Debug)]
pub struct LineError {
    /// 1-based, within the dump.
    pub line: usize,
    pub text: String,
    pub why: &'static str,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {} of the map dump: {}: {:?}", self.line, self.why, self.text)
    }
}

impl std::error::Error for LineError {}

/// Parses the map dump: `@events: N`, `@total: N`, and `@stacks[` blocks of
/// frame lines (`\tADDRESS SYMBOL (MODULE)`) closed by `]: STATS`, or
/// `@stacks[]: STATS` for the stacks bpftrace lost. STATS is `count N,
/// average A, total T` (bpftrace 0.17) or `{ .count = N, .average = A,
/// .total = T }` (current bpftrace). Any other line is an error that quotes
/// it; a map printed twice is one too. `@total` is absent (0.17 prints a
/// never-written sum as nothing) only when `@events` is 0.
pub fn parse_output(text: &str) -> Result<Output, LineError> {
    let mut out = Output::default();
    let (mut events, mut total, mut stackless) = (None, None, false);
    let mut stack: Option<Vec<u64>> = None;
    for (i, line) in text.lines().enumerate() {
        let error = |why: &'static str| LineError { line: i + 1, text: line.to_owned(), why };
        if let Some(frames) = stack.as_mut() {
            if let Some(stats) = line.strip_prefix("]: ") {
                let (count, sum) = parse_stats(stats).ok_or_else(|| error("a stack's statistics are unreadable"))?;
                out.stacks.push(Stack { frames: std::mem::take(frames), count, total: sum });
                stack = None;
            } else {
                let address = line
                    .strip_prefix('\t')
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|a| u64::from_str_radix(a, 16).ok())
                    .ok_or_else(|| error("expected a stack frame (`\\tADDRESS SYMBOL`) or `]: STATS`"))?;
                frames.push(address);
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        if line == "@stacks[" {
            stack = Some(Vec::new());
        } else if let Some(stats) = line.strip_prefix("@stacks[]: ") {
            if std::mem::replace(&mut stackless, true) {
                return Err(error("a second entry for lost stacks"));
            }
            let (count, sum) = parse_stats(stats).ok_or_else(|| error("the lost stacks' statistics are unreadable"))?;
            out.stackless = Stack { frames: Vec::new(), count, total: sum };
        } else if let Some(n) = line.strip_prefix("@events: ") {
            let n = n.trim().parse().map_err(|_| error("@events is not a number"))?;
            if events.replace(n).is_some() {
                return Err(error("@events printed twice"));
            }
        } else if let Some(n) = line.strip_prefix("@total: ") {
            let n = n.trim().parse().map_err(|_| error("@total is not a number"))?;
            if total.replace(n).is_some() {
                return Err(error("@total printed twice"));
            }
        } else {
            return Err(error("expected `@events: N`, `@total: N`, `@stacks[` or `@stacks[]: STATS`"));
        }
    }
    if stack.is_some() {
        return Err(LineError { line: text.lines().count(), text: String::new(), why: "the dump ends inside a stack" });
    }
    out.events = events.ok_or(LineError { line: 0, text: String::new(), why: "@events is missing" })?;
    out.total = match total {
        Some(total) => total,
        None if out.events == 0 => 0,
        None => return Err(LineError { line: 0, text: String::new(), why: "@total is missing" }),
    };
    Ok(out)
}

/// `count 3, average 4096, total 12288` or
/// `{ .count = 3, .average = 4096, .total = 12288 }` → (3, 12288).
fn parse_stats(text: &str) -> Option<(u64, u64)> {
    let text = text.trim();
    let text = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')).unwrap_or(text);
    let (mut count, mut total, mut average) = (None, None, false);
    for field in text.split(',') {
        let field = field.trim();
        let (name, value) = field.split_once(" = ").or_else(|| field.split_once(' '))?;
        let value: i64 = value.trim().parse().ok()?;
        match name.trim().trim_start_matches('.') {
            "count" => count = Some(u64::try_from(value).ok()?),
            "total" => total = Some(u64::try_from(value).ok()?),
            "average" => average = true,
            _ => return None,
        }
    }
    average.then_some(())?;
    Some((count?, total?))
}

/// `/proc/PID/stat`'s state letter (`S`, `R`, `T` for stopped...).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

fn read_maps(pid: u32) -> Vec<Mapping> {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).map(|m| parse_maps(&m)).unwrap_or_default()
}

/// Adds a newer snapshot of a process's map to what we know: the new
/// mappings, and the old ones they do not overlap (unmapped since).
fn merge_maps(known: &Mutex<Vec<Mapping>>, newer: Vec<Mapping>) {
    if newer.is_empty() {
        return;
    }
    let mut known = known.lock().unwrap_or_else(|e| e.into_inner());
    let old = std::mem::take(&mut *known);
    known.extend(old.into_iter().filter(|o| !newer.iter().any(|n| n.start < o.end && o.start < n.end)));
    known.extend(newer);
}

/// Reads a process's map until dropped: at once, then every millisecond for
/// a tenth of a second, then every half second (a program we launched maps
/// its libraries in its first milliseconds, and may crash soon after). Libraries loaded while
/// traced are symbolised too, and a process that ends during the trace was
/// mapped moments before.
struct MapsWatcher {
    /// Dropping it wakes and stops the thread.
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MapsWatcher {
    /// With `resume_stopped` (a program of ours), one found stopped twice in
    /// a row is resumed, its map read first: bpftrace stops it at `_exit`
    /// and we resume it when bpftrace says so, but should that line be lost,
    /// it must not stay stopped (bpftrace would wait for it to exit, and we
    /// for bpftrace).
    fn start(pid: u32, maps: Arc<Mutex<Vec<Mapping>>>, resume_stopped: bool) -> Self {
        merge_maps(&maps, read_maps(pid));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut was_stopped = false;
            loop {
                let early = started.elapsed() < Duration::from_millis(100);
                let pause = Duration::from_millis(if early { 1 } else { 500 });
                if stopped.recv_timeout(pause) != Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                    return;
                }
                merge_maps(&maps, read_maps(pid));
                let is_stopped = resume_stopped && process_state(pid) == Some('T');
                if is_stopped && was_stopped {
                    // SAFETY: kill(2) on our own child; no memory effects.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
                }
                was_stopped = is_stopped;
            }
        });
        Self { stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for MapsWatcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Without a captured map (the process crashed), the executable's load
/// address still follows from any stack's first frame: it is one of the
/// probe sites, whose virtual addresses the notes give.
fn infer_exe_mapping(binary: &Binary, exe: &Path, event: &str, stacks: &[Stack]) -> Vec<Mapping> {
    let sites: Vec<u64> = binary
        .valid_probes(Some(super::PROVIDER))
        .filter(|p| p.name == event && matches!(p.site, Site::Valid { .. }))
        .map(|p| p.address)
        .collect();
    let base = stacks
        .iter()
        .filter_map(|s| s.frames.first())
        .find_map(|leaf| sites.iter().map(|site| leaf.wrapping_sub(*site)).find(|base| base % 4096 == 0));
    let Some(base) = base else { return Vec::new() };
    binary
        .segments
        .iter()
        .filter(|s| s.executable)
        .map(|s| Mapping {
            start: base + s.vaddr,
            end: base + s.vaddr + s.mem_size,
            offset: s.offset,
            path: exe.to_path_buf(),
        })
        .collect()
}

/// The C library our own process uses: the programs we launch link the same.
fn libc_path() -> anyhow::Result<PathBuf> {
    find_libc(&std::fs::read_to_string("/proc/self/maps")?)
        .context("cannot find the C library in /proc/self/maps (is this a glibc system?)")
}

/// The C library process `pid` uses, by the path its map gives (bpftrace
/// 0.17 cannot attach through `/proc/PID/root/...`).
fn libc_of(pid: u32) -> anyhow::Result<PathBuf> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("cannot read /proc/{pid}/maps"))?;
    find_libc(&maps).with_context(|| {
        format!("process {pid} maps no C library (libc.so.*): the bpftrace backend needs a glibc program")
    })
}

fn find_libc(maps: &str) -> Option<PathBuf> {
    parse_maps(maps)
        .into_iter()
        .map(|m| m.path)
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libc.so")))
}

/// bpftrace warns when it cannot raise RLIMIT_MEMLOCK; as root we raise it
/// for it (children inherit it), so users see no alarming error line.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads a valid rlimit; failure is harmless here.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_map_dump_of_bpftrace_0_17() {
        let text = "\
@events: 3
@total: 4128

@stacks[
\t55e3ef93218f 0x55e3ef93218f ([unknown])
\t7fbf2f4d724a __libc_start_call_main+122 (/usr/lib/x86_64-linux-gnu/libc.so.6)
]: count 1, average 4096, total 4096
@stacks[
\t55e3ef93218f 0x55e3ef93218f ([unknown])
]: count 2, average 16, total 32

";
        assert_eq!(
            parse_output(text).unwrap(),
            Output {
                stacks: vec![
                    Stack { frames: vec![0x55e3ef93218f, 0x7fbf2f4d724a], count: 1, total: 4096 },
                    Stack { frames: vec![0x55e3ef93218f], count: 2, total: 32 }
                ],
                stackless: Stack::default(),
                events: 3,
                total: 4128
            }
        );
    }

    /// bpftrace 0.17's stack table has hash collisions: the stacks it lost
    /// are one `@stacks[]` entry (with `ERROR: failed to look up stack id`
    /// on stderr). It used to swallow `@total` and count nothing as lost.
    #[test]
    fn lost_stacks_are_counted_and_current_bpftrace_stats_read() {
        let text = "\
@events: 70
@total: 7000
@stacks[
\t55b73c17a9c0 _RNvCsfLfy6EI15iL_7___rustc12___rust_alloc+352 (/x)
]: { .count = 4, .average = 100, .total = 400 }
@stacks[]: count 66, average 100, total 6600
";
        let out = parse_output(text).unwrap();
        assert_eq!((out.events, out.total), (70, 7000));
        assert_eq!(out.stacks, [Stack { frames: vec![0x55b73c17a9c0], count: 4, total: 400 }]);
        assert_eq!(out.stackless, Stack { frames: vec![], count: 66, total: 6600 });
    }

    #[test]
    fn an_unexpected_line_is_an_error_that_quotes_it() {
        for (text, why) in [
            ("@events: 1\n@total: 1\nhello\n", "expected `@events: N`"),
            ("@events: 1\n@total: 1\n@stacks[\n\tnot-an-address f\n]: count 1, average 1, total 1\n", "stack frame"),
            ("@events: 1\n@total: 1\n@stacks[\n\t1 f\n]: 1\n", "statistics"),
            ("@events: 1\n@total: 1\n@stacks[\n\t1 f\n", "ends inside a stack"),
            ("@total: 1\n", "@events is missing"),
            ("@events: 1\n", "@total is missing"),
            ("@events: 1\n@events: 1\n@total: 1\n", "printed twice"),
            ("@events: x\n", "not a number"),
        ] {
            let message = parse_output(text).unwrap_err().to_string();
            assert!(message.contains(why), "{text:?}: {message}");
        }
        assert!(parse_output("@events: 1\n@total: 1\nhello\n").unwrap_err().to_string().contains("\"hello\""));
        // 0.17 prints nothing for a sum never written.
        assert_eq!(parse_output("@events: 0\n\n\n").unwrap(), Output::default());
    }

    #[test]
    fn cleared_maps_printed_at_exit_are_recognised() {
        assert!(is_cleared_map("@events: 0"));
        assert!(!is_cleared_map("@events: 3"));
        assert!(!is_cleared_map("@stacks[]: count 1, average 1, total 1"));
    }
}
