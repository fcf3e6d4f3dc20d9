//! `cargo heapprobe trace --call-graph dwarf` end to end: a release build
//! without frame pointers (heapprobe-service, tests/fixture/src/bin),
//! traced by `--pid`, drawn with its real stacks, and the stacks that
//! cannot be drawn counted. Needs root and perf: with `CI=true` a missing
//! tool fails; elsewhere these tests skip with one loud line. They share
//! kernel state, so they take turns.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use support::{assert_no_heapprobe_uprobes, root, tracing_available, TempDir};

static KERNEL: Mutex<()> = Mutex::new(());

/// The function every allocation of a `mixed` or `paced` phase is made
/// under.
const MARKER: &str = "heapprobe_service::mixed_round";

fn available(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    let guard = KERNEL.lock().unwrap_or_else(|e| e.into_inner());
    tracing_available(test, &["perf"]).then_some(guard)
}

/// heapprobe-service built with `--release` and without frame pointers
/// (whatever RUSTFLAGS the caller has), in a target directory of its own.
fn service_without_frame_pointers() -> PathBuf {
    let target = root().join("target/release-no-frame-pointers");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--release", "--package", "heapprobe-fixture", "--bin", "heapprobe-service"])
        .arg("--target-dir")
        .arg(&target)
        .env("RUSTFLAGS", "-C force-frame-pointers=no")
        .current_dir(root())
        .status()
        .unwrap();
    assert!(status.success(), "cargo build of heapprobe-service exited with {status}");
    let exe = target.join("release/heapprobe-service");
    // The premise: its own functions do not set up frame pointers.
    let (own, with_fp) = heapprobe_cli::doctor::frame_pointers(&std::fs::read(&exe).unwrap()).unwrap();
    assert!(own > 10 && with_fp * 10 < own, "{}: {with_fp} of {own} functions have frame pointers", exe.display());
    exe
}

/// The service, driven phase by phase on its stdin; it answers on stderr.
struct Service {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Service {
    fn start(exe: &Path) -> Self {
        let mut child =
            Command::new(exe).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start heapprobe-service");
        let stdin = child.stdin.take().unwrap();
        let lines = lines_of(child.stderr.take().unwrap());
        let service = Self { child, stdin, lines };
        let ready = service.lines.recv_timeout(Duration::from_secs(60)).expect("heapprobe-service is not ready");
        assert_eq!(ready, format!("ready pid={}", service.pid()));
        service
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs a phase and returns its report (`allocations`, `alloc_bytes`,
    /// ..., `elapsed_ns` for `paced`).
    fn phase(&mut self, command: &str) -> HashMap<String, u64> {
        writeln!(self.stdin, "{command}").unwrap();
        let line = self.lines.recv_timeout(Duration::from_secs(300)).expect("heapprobe-service said nothing");
        let rest = line.strip_prefix("done ").unwrap_or_else(|| panic!("{command}: {line}"));
        rest.split_whitespace()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_owned(), v.parse().unwrap())
            })
            .collect()
    }

    /// `/proc/PID/stat`'s state letter.
    fn state(&self) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines_of(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// What a trace of one phase printed and wrote.
struct Traced {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// The folded stacks, by stack.
    stacks: HashMap<String, u64>,
    /// The service's report of the phase.
    report: HashMap<String, u64>,
}

/// Traces `service` by pid with `args` while it runs `phase`: waits for
/// "attached: recording", runs the phase, then Ctrl-C (SIGINT) ends the
/// trace.
fn trace_phase(service: &mut Service, tmp: &Path, name: &str, args: &[&str], phase: &str) -> Traced {
    let svg = tmp.join(format!("{name}.svg"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cargo-heapprobe"));
    cmd.current_dir(root()).args(["trace", "--pid", &service.pid().to_string(), "-o"]).arg(&svg).args(args);
    eprintln!("$ {cmd:?} &");
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = lines_of(child.stderr.take().unwrap());
    let stdout = lines_of(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let line = stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|e| panic!("no \"attached: recording\" from the trace ({e}): {}", seen.join("\n")));
        let attached = line.contains("attached: recording");
        seen.push(line);
        if attached {
            break;
        }
    }
    let report = service.phase(phase);
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the trace did not end");
        std::thread::sleep(Duration::from_millis(20));
    };
    let drain = |lines: &mpsc::Receiver<String>| -> Vec<String> {
        let until = Instant::now() + Duration::from_secs(10);
        std::iter::from_fn(|| lines.recv_timeout(until.saturating_duration_since(Instant::now())).ok()).collect()
    };
    seen.extend(drain(&stderr));
    let stdout: String = drain(&stdout).iter().map(|l| format!("{l}\n")).collect();
    let stderr = seen.join("\n");
    eprintln!("--- {name}: {status}\n--- stdout\n{stdout}--- stderr\n{stderr}\n--- report {report:?}");
    let stacks = folded(&svg.with_extension("folded"));
    assert_eq!(service.state(), Some('S'), "the service waits for its next command, never left stopped");
    assert_no_heapprobe_uprobes();
    Traced { status, stdout, stderr, stacks, report }
}

/// The folded file's stacks and weights (after its header line).
fn folded(path: &Path) -> HashMap<String, u64> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.starts_with("# heapprobe: weight="), "{}: no header", path.display());
    text.lines()
        .skip(1)
        .map(|line| {
            let (stack, weight) = line.rsplit_once(' ').expect("`stack weight`");
            (stack.to_owned(), weight.parse().expect("numeric weight"))
        })
        .collect()
}

fn weight_where(stacks: &HashMap<String, u64>, keep: impl Fn(&[&str]) -> bool) -> u64 {
    stacks.iter().filter(|(s, _)| keep(&s.split(';').collect::<Vec<_>>())).map(|(_, w)| w).sum()
}

fn weight_through(stacks: &HashMap<String, u64>, frame: &str) -> u64 {
    weight_where(stacks, |frames| frames.contains(&frame))
}

/// The numbers of the summary's lines: `heapprobe:alloc: E events, ...
/// (B bytes)`, `recorded: S samples in perf.data; R events read back`,
/// `lost events: L`, and `unknown or truncated stacks: ...: U events, UB
/// bytes unknown ..., T events, TB bytes truncated`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    events: u64,
    bytes: u64,
    samples: u64,
    read_back: u64,
    lost: u64,
    unknown: (u64, u64),
    truncated: (u64, u64),
}

fn summary(stdout: &str) -> Summary {
    let numbers = |line: &str| -> Vec<u64> {
        line.split(|c: char| !c.is_ascii_digit() && c != '.')
            .filter(|w| !w.is_empty() && !w.contains('.'))
            .map(|w| w.parse().unwrap())
            .collect()
    };
    let line = |prefix: &str| {
        stdout.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} line: {stdout}"))
    };
    let mut s = Summary::default();
    let totals = numbers(line("heapprobe:alloc: "));
    (s.events, s.bytes) = (totals[0], totals[totals.len() - 1]);
    let recorded = numbers(line("recorded: "));
    (s.samples, s.read_back) = (recorded[0], recorded[1]);
    s.lost = numbers(line("lost events: ")).first().copied().unwrap_or(0);
    let stacks = line("unknown or truncated stacks: ");
    if stacks != "unknown or truncated stacks: 0" {
        let (_, counts) = stacks.split_once("of the bytes: ").expect("a share of the bytes");
        let n = numbers(counts);
        (s.unknown, s.truncated) = ((n[0], n[1]), (n[2], n[3]));
    }
    s
}

/// The case: a release build without frame pointers, traced by
/// `--pid`, which frame pointers draw as `[unknown]`. With `--call-graph
/// dwarf` every byte sits under the function that allocated it, up to
/// `_start`, and the totals are the service's own. With perf's default
/// 8 KiB stack copy the same stacks end in `[truncated]` (the service's
/// `main` keeps 8.4 KiB on the stack, so the copy ends inside its frame):
/// still under the allocating function, counted, and the trace fails
/// saying what to do.
#[test]
fn dwarf_draws_the_real_stacks_of_a_release_build_without_frame_pointers() {
    let test = "dwarf_draws_the_real_stacks_of_a_release_build_without_frame_pointers";
    let Some(_kernel) = available(test) else { return };
    let mut service = Service::start(&service_without_frame_pointers());
    let tmp = TempDir::new("xtask-dwarf");

    let t =
        trace_phase(&mut service, tmp.path(), "dwarf", &["--call-graph", "dwarf", "--stack-size", "16384"], "mixed 50");
    assert!(t.status.success(), "{}", t.stderr);
    let (events, bytes) = (t.report["allocations"], t.report["alloc_bytes"]);
    let s = summary(&t.stdout);
    let copies = s.samples - s.read_back;
    assert!(copies <= 1, "perf wrote {copies} samples twice: {s:?}");
    assert_eq!(
        s,
        Summary { events, bytes, samples: events + copies, read_back: events, ..Summary::default() },
        "{}",
        t.stdout
    );
    assert_eq!(t.stacks.values().sum::<u64>(), bytes);
    assert_eq!(weight_through(&t.stacks, MARKER), bytes, "every byte under {MARKER}: {:#?}", t.stacks);
    // Unwound to the thread's first frame, through libc's.
    let rooted = weight_where(&t.stacks, |f| f[0] == "_start" && f.contains(&"heapprobe_service::main"));
    assert_eq!(rooted, bytes, "{:#?}", t.stacks);
    assert!(t.stdout.contains("unsymbolised frames: 0.0%"), "{}", t.stdout);

    // perf's default stack copy: truncated, counted, and a failure that says why.
    let t = trace_phase(&mut service, tmp.path(), "dwarf-8k", &["--call-graph", "dwarf"], "mixed 50");
    assert!(!t.status.success(), "more than --max-lost truncated must fail: {}", t.stdout);
    let (events, bytes) = (t.report["allocations"], t.report["alloc_bytes"]);
    let s = summary(&t.stdout);
    assert_eq!((s.events, s.bytes, s.lost, s.unknown), (events, bytes, 0, (0, 0)), "{}", t.stdout);
    assert_eq!(s.truncated, (events, bytes), "{}", t.stdout);
    assert_eq!(weight_where(&t.stacks, |f| f[0] == "[truncated]" && f.contains(&MARKER)), bytes, "{:#?}", t.stacks);
    assert!(t.stdout.contains("larger --stack-size"), "{}", t.stdout);
    assert!(
        t.stderr.contains("100.00% of the bytes sit on stacks that are unknown (0 events) or truncated")
            && t.stderr.contains("--stack-size"),
        "{}",
        t.stderr
    );
}

/// The same build at 200,000 allocations a second, with 16 KiB of stack
/// copied per event: perf cannot write that fast and the kernel drops
/// events. The tool says how many (perf's own count: kept + lost = the
/// service's allocations), fails past --max-lost (here raised to 100 to
/// keep the graph), and what was kept sits under the allocating function.
#[test]
fn dwarf_at_200000_allocations_a_second_loses_events_and_says_so() {
    let test = "dwarf_at_200000_allocations_a_second_loses_events_and_says_so";
    let Some(_kernel) = available(test) else { return };
    let mut service = Service::start(&service_without_frame_pointers());
    let tmp = TempDir::new("xtask-dwarf-rate");
    let args = ["--call-graph", "dwarf", "--stack-size", "16384", "--max-lost", "100"];
    // 600,000 allocations in 3 s.
    let t = trace_phase(&mut service, tmp.path(), "rate", &args, "paced 100000 200000");
    assert!(t.status.success(), "{}", t.stderr);
    let (events, elapsed) = (t.report["allocations"], t.report["elapsed_ns"]);
    let rate = events as f64 / (elapsed as f64 / 1e9);
    eprintln!("ran at {rate:.0} allocations a second");
    assert!(rate > 150_000.0, "the service ran at {rate:.0} allocations a second, not 200,000");
    let s = summary(&t.stdout);
    let copies = s.samples - s.read_back;
    assert!(s.lost > 0, "perf kept up with 3.2 GB/s of stacks? {s:?}");
    assert_eq!(s.read_back + s.lost, events, "kept + lost = the service's allocations: {s:?}");
    assert_eq!(s.events, s.read_back, "{s:?}");
    assert!(copies <= 1, "{s:?}");
    let line = t.stdout.lines().find(|l| l.starts_with("lost events: ")).unwrap();
    assert!(line.contains("dropped by the kernel"), "{line}");
    let total = t.stacks.values().sum::<u64>();
    assert_eq!(total, s.bytes);
    let under = weight_through(&t.stacks, MARKER);
    assert!(under * 10 >= total * 9, "{under} of {total} bytes under {MARKER}: {:#?}", t.stacks);
    assert_eq!(s.unknown.0 + s.truncated.0, 0, "{}", t.stdout);
}

/// The same build recorded with frame pointers (the default): the graph is
/// mostly `[unknown]`, and the summary says so instead of "0.0%": the
/// unknown stacks are counted to the byte, the advice names `--call-graph
/// dwarf`, and the trace fails past --max-lost.
#[test]
fn frame_pointers_on_a_build_without_them_count_the_unknown_stacks_and_fail() {
    let test = "frame_pointers_on_a_build_without_them_count_the_unknown_stacks_and_fail";
    let Some(_kernel) = available(test) else { return };
    let mut service = Service::start(&service_without_frame_pointers());
    let tmp = TempDir::new("xtask-dwarf-fp");
    let t = trace_phase(&mut service, tmp.path(), "fp", &[], "mixed 50");
    assert!(!t.status.success(), "a graph of [unknown] must not pass: {}", t.stdout);
    let (events, bytes) = (t.report["allocations"], t.report["alloc_bytes"]);
    let s = summary(&t.stdout);
    assert_eq!((s.events, s.bytes, s.lost), (events, bytes, 0), "{}", t.stdout);
    assert_eq!(t.stacks.values().sum::<u64>(), bytes);
    // Unknown: no frame but [unknown] (the allocator's were trimmed).
    let unknown = weight_where(&t.stacks, |f| f.iter().all(|f| *f == "[unknown]"));
    assert_eq!(s.unknown.1, unknown, "{:#?}", t.stacks);
    assert!(unknown * 2 > bytes, "{unknown} of {bytes} bytes unknown: {:#?}", t.stacks);
    assert_eq!(s.truncated, (0, 0));
    assert!(!t.stdout.contains("unsymbolised frames: 0.0%"), "{}", t.stdout);
    assert!(t.stdout.contains("record with --call-graph dwarf"), "{}", t.stdout);
    assert!(t.stderr.contains("sit on stacks that are unknown"), "{}", t.stderr);
}
