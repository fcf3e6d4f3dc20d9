//! `cargo xtask trace` end to end, for real: root, perf, the kernel's
//! uprobes. With `CI=true` a missing tool fails; elsewhere these tests skip
//! with one loud line. They share kernel state, so they take turns.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use support::{assert_no_heapprobe_uprobes, root, tracing_available, TempDir};

static KERNEL: Mutex<()> = Mutex::new(());

fn xtask() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cargo-heapprobe"));
    cmd.current_dir(root());
    cmd
}

fn run(args: &[&str]) -> Output {
    let out = xtask().args(args).output().expect("failed to run the xtask binary");
    eprintln!(
        "$ cargo xtask {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Folded file → (frame-containing predicate) → summed weight. Its first
/// line is the header that records the weight (`# heapprobe: weight=…`).
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

fn weight_through(stacks: &HashMap<String, u64>, frame: &str) -> u64 {
    stacks.iter().filter(|(s, _)| s.split(';').any(|f| f == frame)).map(|(_, w)| w).sum()
}

fn available(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    let guard = KERNEL.lock().unwrap_or_else(|e| e.into_inner());
    tracing_available(test, &["perf"]).then_some(guard)
}

/// The README's main command, with exact byte totals for the frames the
/// `it_works` test allocates through.
#[test]
fn trace_it_works_writes_an_exact_byte_weighted_flamegraph() {
    let Some(_kernel) = available("trace_it_works_writes_an_exact_byte_weighted_flamegraph") else { return };
    let tmp = TempDir::new("xtask-trace-it-works");
    let svg = tmp.path().join("flamegraph.svg");
    let out = run(&["trace", "--test", "it_works", "--keep", "-o", svg.to_str().unwrap()]);
    assert!(out.status.success(), "trace failed");
    let stacks = folded(&svg.with_extension("folded"));
    // 100 pages of 4096 bytes and the Vec of 100 pointers.
    assert_eq!(weight_through(&stacks, "it_works::build_inventory"), 100 * 4096 + 100 * 8);
    // The allocator's own frames are trimmed: every tower through
    // build_inventory ends at it or just above (`Vec::with_capacity`, `Box::new`).
    for stack in stacks.keys().filter(|s| s.contains("it_works::build_inventory")) {
        let frames: Vec<&str> = stack.split(';').collect();
        let at = frames.iter().position(|f| *f == "it_works::build_inventory").unwrap();
        assert!(frames.len() - at <= 2, "a tower goes on above build_inventory: {stack}");
    }
    // The kept perf.data, folded again by `fold` (read directly, as trace
    // read it), gives the same stacks.
    let kept = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("perf.data"))
        .find(|p| p.is_file())
        .expect("--keep kept perf.data");
    let refolded = tmp.path().join("refolded.svg");
    let out2 = run(&["fold", kept.to_str().unwrap(), "-o", refolded.to_str().unwrap()]);
    assert!(out2.status.success(), "fold of the kept perf.data failed");
    assert_eq!(folded(&refolded.with_extension("folded")), stacks, "fold of perf.data vs trace");
    assert!(String::from_utf8_lossy(&out2.stdout).contains("lost events: 0"));
    // With the allocator's frames kept, the towers end in heapprobe's wrapper.
    let out3 = run(&["fold", kept.to_str().unwrap(), "--keep-allocator-frames", "-o", refolded.to_str().unwrap()]);
    assert!(out3.status.success());
    let kept_frames = folded(&refolded.with_extension("folded"));
    assert_eq!(weight_through(&kept_frames, "it_works::build_inventory"), 100 * 4096 + 100 * 8);
    assert!(kept_frames.keys().all(|s| s.rsplit(';').next().unwrap().contains("heapprobe::alloc")), "{kept_frames:?}");
    // A Vec of 50 Strings (24 bytes each) and 50 lines of 64 bytes.
    assert_eq!(weight_through(&stacks, "it_works::render_report"), 50 * 24 + 50 * 64);
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.contains("it_works::build_inventory"), "the SVG names the frame");
    assert!(svg_text.contains("heapprobe: test it_works, heapprobe:alloc by bytes"), "title");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("lost events: 0"), "summary reports lost events");
    assert!(stdout.contains("it_works::build_inventory <- "), "top stacks name the allocation site");
    assert!(stdout.contains("traced program: exited with status 0"));
    assert_no_heapprobe_uprobes();
}

/// `--test NAME` naming a test function, `--event alloc_locked` (only
/// allocations inside measured scopes) and `--weight count`: exactly the
/// 101 + 50 allocations the two scopes of `it_works` make.
#[test]
fn a_test_function_filter_with_scoped_allocations_counted() {
    let Some(_kernel) = available("a_test_function_filter_with_scoped_allocations_counted") else { return };
    let tmp = TempDir::new("xtask-trace-locked");
    let svg = tmp.path().join("locked.svg");
    // `it_works` is both a target and a function name; the scope test's
    // function is only a function.
    let out = run(&[
        "trace",
        "--test",
        "it_works",
        "--event",
        "alloc_locked",
        "--weight",
        "count",
        "-o",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let stacks = folded(&svg.with_extension("folded"));
    assert_eq!(stacks.values().sum::<u64>(), 101 + 51);
    assert_eq!(weight_through(&stacks, "it_works::build_inventory"), 101);
    assert_eq!(weight_through(&stacks, "it_works::render_report"), 51);

    let out = run(&[
        "trace",
        "--test",
        "empty_scope_counts_nothing_and_positive_control_counts_one",
        "--event",
        "alloc_locked",
        "--weight",
        "count",
        "-o",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    // The positive control's one allocation, and nothing from other tests of
    // the same binary (which were filtered out, exactly).
    assert_eq!(folded(&svg.with_extension("folded")).values().sum::<u64>(), 1);
    assert_no_heapprobe_uprobes();
}

#[test]
fn bad_input_fails_clearly_and_leaves_nothing_behind() {
    let Some(_kernel) = available("bad_input_fails_clearly_and_leaves_nothing_behind") else { return };
    let tmp = TempDir::new("xtask-trace-bad");
    let svg = tmp.path().join("fg.svg");
    let o = svg.to_str().unwrap();
    let cases: [(&[&str], &str); 8] = [
        (
            &["trace", "--test", "it_work", "-o", o],
            "no test target and no test function named \"it_work\"; closest: `it_works`",
        ),
        (
            &["trace", "--bin", "xtask", "-o", o],
            "no bin target named \"xtask\" (looked in heapprobe, heapprobe-fixture",
        ),
        (&["trace", "--example", "nope", "-o", o], "no example target named \"nope\""),
        (
            &["trace", "--test", "it_works", "-o", "/nonexistent/fg.svg"],
            "the directory /nonexistent does not exist (create it with `mkdir -p /nonexistent`",
        ),
        (&["trace", "--test", "it_works", "-o", "/etc/hostname/fg.svg"], "/etc/hostname is a file, not a directory"),
        (&["trace", "--pid", "999999999", "-o", o], "no process with pid 999999999"),
        (&["trace", "--test", "it_works", "--event", "alocc", "-o", o], "no heapprobe probe named \"alocc\""),
        (&["trace", "--test", "it_works", "--event", "scope_begin", "-o", o], "use --weight count"),
    ];
    for (args, expected) in cases {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: stderr lacks {expected:?}");
        assert!(!svg.exists() && !svg.with_extension("folded").exists(), "{args:?} wrote output");
        assert_no_heapprobe_uprobes();
    }
    // A process that does not use heapprobe.
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let out = run(&["trace", "--pid", &sleeper.id().to_string(), "-o", o]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no heapprobe probes in /proc/"));
    // perf that does not run (`$PERF` overrides the program).
    let out = xtask().args(["trace", "--test", "it_works", "-o", o]).env("PERF", "/nonexistent/perf").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("$PERF is \"/nonexistent/perf\", which does not run"));
    let out = xtask()
        .args(["trace", "--backend", "bpftrace", "--test", "it_works", "-o", o])
        .env("BPFTRACE", "/nonexistent/bpftrace")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("$BPFTRACE is \"/nonexistent/bpftrace\", which does not run"));
    // Not root and no capabilities: says what is needed.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(env!("CARGO_BIN_EXE_cargo-heapprobe"))
        .args(["trace", "--pid", "1", "-o", "/tmp/never.svg"])
        .output()
        .expect("setpriv (util-linux)");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("tracing with perf needs root, or the CAP_PERFMON and CAP_DAC_OVERRIDE capabilities"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_heapprobe_uprobes();
    // A directory we cannot write to (as root, a read-only bind is the
    // reliable way; a path under /proc is never writable).
    let out = run(&["trace", "--test", "it_works", "-o", "/proc/heapprobe.svg"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not writable"));
}

/// A target that crashes: non-zero exit, a clear status, the profile up to
/// the crash kept, no probes left.
#[test]
fn a_crashing_target_keeps_its_profile_and_fails() {
    let Some(_kernel) = available("a_crashing_target_keeps_its_profile_and_fails") else { return };
    let tmp = TempDir::new("xtask-trace-crash");
    let svg = tmp.path().join("crash.svg");
    let out = run(&["trace", "--bin", "heapprobe-fixture", "-o", svg.to_str().unwrap(), "--", "--crash"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("killed by signal 11"), "names the signal");
    assert!(svg.exists());
    // `known_pattern` ran once before the crash: 1000 × 4096 bytes.
    assert_eq!(weight_through(&folded(&svg.with_extension("folded")), "heapprobe_fixture::known_pattern"), 4_096_000);
    assert_no_heapprobe_uprobes();
}

/// A fixture service looping `known_pattern` (1000 × 4096 bytes every 20 ms).
struct Service(std::process::Child);

impl Service {
    fn start() -> Self {
        // Built by the crash test's `--bin heapprobe-fixture` or here, with
        // the trace profile (frame pointers), through the xtask itself.
        let exe = fixture_with_frame_pointers();
        let mut child = Command::new(exe)
            .arg("--loop")
            .stderr(Stdio::piped())
            .spawn()
            .expect("failed to start the fixture service");
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        Self(child)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fixture_with_frame_pointers() -> PathBuf {
    support::build_fixture_with_frame_pointers()
}

#[test]
fn pid_with_duration_records_a_running_service() {
    let Some(_kernel) = available("pid_with_duration_records_a_running_service") else { return };
    let service = Service::start();
    let tmp = TempDir::new("xtask-trace-pid");
    let pid = service.0.id().to_string();
    let backends: &[&str] = if tracing_available("pid_with_duration_records_a_running_service", &["bpftrace"]) {
        &["perf", "bpftrace"]
    } else {
        &["perf"]
    };
    for backend in backends {
        let svg = tmp.path().join(format!("pid-{backend}.svg"));
        let out = run(&[
            "trace",
            "--pid",
            &pid,
            "--duration",
            "1",
            "--weight",
            "count",
            "--backend",
            backend,
            "-o",
            svg.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{backend}");
        let stacks = folded(&svg.with_extension("folded"));
        let calls = weight_through(&stacks, "heapprobe_fixture::known_pattern");
        assert!(calls >= 1000, "{backend}: about 50 rounds of 1000 allocations in a second, got {calls}");
        assert_eq!(stacks.values().sum::<u64>(), calls, "{backend}: the loop allocates nowhere else");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("traced process {pid}: still running")));
        // The second the probes were on, not the recorder's whole run.
        assert!(stdout.contains(" calls recorded for 1.0 s ("), "{backend}: {stdout}");
        assert_no_heapprobe_uprobes();
    }
}

/// The README's way to trace without being root: a user's own process,
/// traced by that user with just CAP_PERFMON and CAP_DAC_OVERRIDE (perf
/// backend); the bpftrace backend says it needs root.
#[test]
fn a_user_with_two_capabilities_traces_their_own_process() {
    let Some(_kernel) = available("a_user_with_two_capabilities_traces_their_own_process") else { return };
    let tmp = TempDir::new("xtask-trace-caps");
    // SAFETY: chown/chmod on our own scratch directory, paths NUL-terminated.
    let dir = std::ffi::CString::new(tmp.path().to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::chown(dir.as_ptr(), 65534, 65534) }, 0);
    let exe = tmp.path().join("fixture");
    std::fs::copy(fixture_with_frame_pointers(), &exe).unwrap();
    let as_nobody = |caps: &str, program: &Path| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"))
            .arg(program)
            .current_dir(tmp.path());
        cmd
    };
    let mut service = as_nobody("-all", &exe).arg("--loop").stderr(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(service.stderr.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let pid = service.id().to_string();
    let xtask = Path::new(env!("CARGO_BIN_EXE_cargo-heapprobe"));
    let svg = tmp.path().join("caps.svg");
    let traced = as_nobody("+perfmon,+dac_override", xtask)
        // `--max-lost 50`: as an unprivileged user, perf's ring buffer is
        // held to perf_event_mlock_kb, and under load it drops a few percent
        // of the service's 50 000 events a second (3.5% once in 20 runs
        // with both cores busy), which the tool reports and by default fails
        // on; what this test checks is the capabilities' path.
        .args(["trace", "--pid", &pid, "--duration", "1", "--weight", "count", "--max-lost", "50", "-o"])
        .arg(&svg)
        .output()
        .unwrap();
    let refused = as_nobody("+perfmon,+dac_override", xtask)
        .args(["trace", "--backend", "bpftrace", "--pid", &pid, "--duration", "1", "-o", svg.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = service.kill();
    let _ = service.wait();
    eprintln!("{}", String::from_utf8_lossy(&traced.stderr));
    assert!(traced.status.success());
    let calls = weight_through(&folded(&svg.with_extension("folded")), "heapprobe_fixture::known_pattern");
    assert!(calls >= 1000, "about 50 rounds of 1000 allocations in a second, got {calls}");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("the bpftrace backend needs root"));
    assert_no_heapprobe_uprobes();
}

/// A killed run's group (its pid is gone) is swept at start; a group that is
/// not ours is never touched.
#[test]
fn stale_groups_are_swept_and_foreign_probes_kept() {
    let Some(_kernel) = available("stale_groups_are_swept_and_foreign_probes_kept") else { return };
    let exe = fixture_with_frame_pointers();
    let binary = heapprobe_sdt::Binary::open(&exe).unwrap();
    let offset = binary
        .valid_probes(Some("heapprobe"))
        .find_map(|p| match p.site {
            heapprobe_sdt::Site::Valid { offset, .. } => Some(offset),
            _ => None,
        })
        .unwrap();
    let tracefs = heapprobe_sdt::tracefs().unwrap();
    let events = tracefs.join("uprobe_events");
    // pid_max is at most 2^22, so this pid cannot be alive.
    let stale = format!("p:heapprobe_4194399_trace0/alloc__0 {}:{offset:#x}\n", exe.display());
    let foreign = format!("p:notheapprobe_test/alloc {}:{offset:#x}\n", exe.display());
    for line in [&stale, &foreign] {
        std::fs::OpenOptions::new().append(true).open(&events).unwrap().write_all(line.as_bytes()).unwrap();
    }
    let tmp = TempDir::new("xtask-trace-sweep");
    let svg = tmp.path().join("sweep.svg");
    let out = run(&["trace", "--bin", "heapprobe-fixture", "-o", svg.to_str().unwrap()]);
    let listed = std::fs::read_to_string(&events).unwrap();
    // Clean up the foreign probe before asserting anything.
    std::fs::OpenOptions::new().append(true).open(&events).unwrap().write_all(b"-:notheapprobe_test/alloc\n").unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("removed 1 uprobes left by an earlier run"));
    assert!(listed.contains("notheapprobe_test/alloc"), "a foreign probe was removed: {listed}");
    assert!(!listed.contains("heapprobe_4194399_"), "the stale group survived: {listed}");
    assert_no_heapprobe_uprobes();
}

/// `cargo xtask probes PATH` lists every probe of the definition with its
/// argument names and file offset, and explains the rust-lld layout; a
/// binary without probes is an error. Needs no privileges.
#[test]
fn probes_lists_the_sites_of_a_binary() {
    let exe = fixture_with_frame_pointers();
    let out = run(&["probes", exe.to_str().unwrap()]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (name, args) in heapprobe::probes::PROBES {
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}"));
        for arg in *args {
            assert!(row.contains(&format!("{arg}=")), "{row}: no {arg}");
        }
    }
    assert!(stdout.contains("would misplace these probes"), "the rust-lld layout note");

    let out = run(&["probes", env!("CARGO_BIN_EXE_cargo-heapprobe")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no heapprobe probes in"));
}

/// The two backends produce the same folded format and, on the fixture's
/// deterministic workload, exactly the same totals, whether the fixture is
/// linked by rust-lld (code mapped 4 KiB above its file offset, where
/// `perf probe sdt_…` misplaces probes) or by GNU ld (bfd); bpftrace's stacks
/// are symbolised after the process exited, and even after it crashed (from
/// the probe sites alone).
#[test]
fn perf_and_bpftrace_agree_exactly_on_the_fixture() {
    let Some(_kernel) = available("perf_and_bpftrace_agree_exactly_on_the_fixture") else { return };
    if !tracing_available("perf_and_bpftrace_agree_exactly_on_the_fixture", &["bpftrace"]) {
        return;
    }
    let tmp = TempDir::new("xtask-trace-backends");
    for (linker, rustflags, target_dir) in
        [("rust-lld", "", None), ("bfd", "-C link-arg=-fuse-ld=bfd", Some(root().join("target/trace-bfd")))]
    {
        let with_linker = |args: &[&str]| {
            let mut cmd = xtask();
            cmd.args(args).env("RUSTFLAGS", rustflags);
            if let Some(dir) = &target_dir {
                cmd.env("CARGO_TARGET_DIR", dir);
            }
            let out = cmd.output().unwrap();
            eprintln!("{linker}: $ cargo xtask {}\n{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
            out
        };
        // The layouts really differ.
        let probes = with_linker(&["probes", "--bin", "heapprobe-fixture"]);
        assert!(probes.status.success());
        let misplaced_by_perf_probe = String::from_utf8_lossy(&probes.stdout).contains("would misplace");
        assert_eq!(misplaced_by_perf_probe, linker == "rust-lld", "{linker}'s layout");

        let mut totals = Vec::new();
        for backend in ["perf", "bpftrace"] {
            for weight in ["bytes", "count"] {
                let svg = tmp.path().join(format!("{linker}-{backend}-{weight}.svg"));
                let out = with_linker(&[
                    "trace",
                    "--bin",
                    "heapprobe-fixture",
                    "--backend",
                    backend,
                    "--weight",
                    weight,
                    "-o",
                    svg.to_str().unwrap(),
                ]);
                assert!(out.status.success(), "{linker} {backend} {weight}: the target must not crash");
                let stacks = folded(&svg.with_extension("folded"));
                let known = weight_through(&stacks, "heapprobe_fixture::known_pattern");
                assert_eq!(known, if weight == "bytes" { 4_096_000 } else { 1000 }, "{linker} {backend} {weight}");
                let unknown: u64 = stacks.iter().filter(|(s, _)| s.contains("[unknown]")).map(|(_, w)| w).sum();
                assert_eq!(unknown, 0, "{linker} {backend} {weight}: unsymbolised frames");
                let image = std::fs::read_to_string(&svg).unwrap();
                assert!(image.starts_with("<?xml") && image.trim_end().ends_with("</svg>"));
                assert!(image.contains("heapprobe_fixture::known_pattern"), "{linker} {backend} {weight}: SVG frame");
                totals.push((weight, stacks.values().sum::<u64>()));
            }
        }
        assert_eq!(totals[..2], totals[2..], "{linker}: perf vs bpftrace totals");
    }

    let svg = tmp.path().join("crash.svg");
    let out = run(&[
        "trace",
        "--bin",
        "heapprobe-fixture",
        "--backend",
        "bpftrace",
        "-o",
        svg.to_str().unwrap(),
        "--",
        "--crash",
    ]);
    assert!(!out.status.success());
    // Launched by the xtask itself, its real end is known.
    assert!(String::from_utf8_lossy(&out.stderr).contains("killed by signal 11"));
    assert_eq!(weight_through(&folded(&svg.with_extension("folded")), "heapprobe_fixture::known_pattern"), 4_096_000);
    assert_no_heapprobe_uprobes();
}

/// heapprobe-service (tests/fixture/src/bin), built in release with frame
/// pointers: the allocator is inlined into several probe sites per probe, as
/// in a production binary. It runs a phase per command and reports its own
/// exact counters for the phase.
struct ReleaseService {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

/// A phase's report: `allocations`, `alloc_bytes`, `reallocations`, `deallocations`.
type Report = HashMap<String, u64>;

impl ReleaseService {
    fn start() -> Self {
        let mut child = Command::new(release_service_exe())
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("failed to start heapprobe-service");
        let stdin = child.stdin.take().unwrap();
        let lines = lines_of(child.stderr.take().unwrap());
        let mut service = Self { child, stdin, lines };
        let ready = service.next_line();
        assert_eq!(ready, format!("ready pid={}", service.pid()));
        service
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn next_line(&mut self) -> String {
        self.lines.recv_timeout(Duration::from_secs(300)).expect("heapprobe-service said nothing for 300 s")
    }

    /// Runs a phase (`mixed 50`, `stacks 12`) and returns its report.
    fn phase(&mut self, command: &str) -> Report {
        writeln!(self.stdin, "{command}").unwrap();
        let line = self.next_line();
        let rest = line.strip_prefix("done ").unwrap_or_else(|| panic!("{command}: {line}"));
        rest.split_whitespace()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_owned(), v.parse().unwrap())
            })
            .collect()
    }
}

impl Drop for ReleaseService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines `reader` gives, as they come.
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

fn release_service_exe() -> PathBuf {
    let target = root().join("target/release-frame-pointers");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--release", "--package", "heapprobe-fixture", "--bin", "heapprobe-service"])
        .arg("--target-dir")
        .arg(&target)
        .env("RUSTFLAGS", "-C force-frame-pointers=yes")
        .current_dir(root())
        .status()
        .unwrap();
    assert!(status.success());
    target.join("release/heapprobe-service")
}

/// A `cargo xtask trace` running in the background.
struct Tracing {
    child: Child,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
    stdout: mpsc::Receiver<String>,
}

impl Tracing {
    fn start(args: &[&str]) -> Self {
        Self::start_with(xtask().args(args))
    }

    fn start_with(cmd: &mut Command) -> Self {
        eprintln!("$ {cmd:?} &");
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = lines_of(child.stderr.take().unwrap());
        let stdout = lines_of(child.stdout.take().unwrap());
        Self { child, stderr, seen: Vec::new(), stdout }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line of its stderr that contains `needle`.
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(e) => {
                    let stdout: Vec<String> = self.stdout.try_iter().collect();
                    panic!(
                        "no {needle:?} from the trace ({e}); its stderr:\n{}\n--- its stdout:\n{}",
                        self.seen.join("\n"),
                        stdout.join("\n")
                    )
                }
            }
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.pid() as libc::pid_t, signal) }, 0);
    }

    /// Waits for it to end; returns its status, stdout and whole stderr.
    fn finish(mut self) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + Duration::from_secs(300);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the trace did not end");
            std::thread::sleep(Duration::from_millis(20));
        };
        // What is left in the pipes (which processes that outlive the
        // xtask may hold open: a bounded wait).
        let drain = |lines: &mpsc::Receiver<String>| {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut all = Vec::new();
            while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                all.push(line);
            }
            all
        };
        self.seen.extend(drain(&self.stderr));
        let stdout: String = drain(&self.stdout).iter().map(|l| format!("{l}\n")).collect();
        let stderr = self.seen.join("\n");
        eprintln!("--- trace stdout\n{stdout}--- trace stderr\n{stderr}");
        (status, stdout, stderr)
    }
}

/// `/proc/PID/stat`'s state letter (`R`, `S`, `T`, `Z`...), or None once the
/// process is gone.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

/// Every descendant of `pid` (children, theirs, ...).
fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

/// Waits until `pid` is gone (or a zombie), failing if it is seen stopped
/// for 10 s.
fn assert_ends_and_is_never_left_stopped(pid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match state(pid) {
            None | Some('Z') | Some('X') => return,
            Some(s) => assert!(Instant::now() < deadline, "{what} (pid {pid}) is still there, in state {s}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The backends this machine can test (bpftrace too unless it is missing
/// outside CI).
fn backends(test: &str) -> &'static [&'static str] {
    if tracing_available(test, &["bpftrace"]) {
        &["perf", "bpftrace"]
    } else {
        &["perf"]
    }
}

/// A release build traced by --pid: perf right-aligns event names, and
/// with the allocator inlined into sites `alloc__0` ... `alloc__14` the
/// shorter names' lines start with a space. They were taken for stack
/// frames: "recorded 0 events". Both backends must now match the service's
/// own counters exactly, and Ctrl-C (SIGINT to the xtask) ends the trace.
#[test]
fn a_release_build_traced_by_pid_matches_its_own_counters_exactly() {
    let test = "a_release_build_traced_by_pid_matches_its_own_counters_exactly";
    let Some(_kernel) = available(test) else { return };
    let mut service = ReleaseService::start();
    // The trap is really there: sites of `alloc` whose event names differ in width.
    let binary = heapprobe_sdt::Binary::open(release_service_exe()).unwrap();
    let widths: Vec<usize> = binary
        .valid_probes(Some("heapprobe"))
        .enumerate()
        .filter(|(_, p)| p.name == "alloc")
        .map(|(i, _)| i.to_string().len())
        .collect();
    assert!(widths.contains(&1) && widths.contains(&2), "alloc sites {widths:?}: no right-aligned names to test");
    let tmp = TempDir::new("xtask-trace-release");
    let pid = service.pid().to_string();
    for backend in backends(test) {
        for weight in ["bytes", "count"] {
            let svg = tmp.path().join(format!("{backend}-{weight}.svg"));
            let mut trace = Tracing::start(&[
                "trace",
                "--pid",
                &pid,
                "--backend",
                backend,
                "--weight",
                weight,
                "-o",
                svg.to_str().unwrap(),
            ]);
            trace.wait_for("attached: recording");
            let report = service.phase("mixed 50");
            trace.signal(libc::SIGINT);
            let (status, stdout, stderr) = trace.finish();
            assert!(status.success(), "{backend} {weight}: {status}: {stderr}");
            let (events, bytes) = (report["allocations"], report["alloc_bytes"]);
            let expected = if weight == "bytes" { bytes } else { events };
            let stacks = folded(&svg.with_extension("folded"));
            assert_eq!(stacks.values().sum::<u64>(), expected, "{backend} {weight}: {stacks:#?}");
            assert_eq!(weight_through(&stacks, "heapprobe_service::mixed_round"), expected, "{backend} {weight}");
            assert!(stdout.contains(&format!("heapprobe:alloc: {events} ")), "{backend} {weight}: {stdout}");
            assert!(stdout.contains("lost events: 0"), "{backend} {weight}");
            let recorded = match *backend {
                // perf 6.1 can write a sample twice: the tool counts the
                // byte-identical copy once and says so.
                "perf" => {
                    let copies = perf_copies(&stdout);
                    format!("recorded: {} samples in perf.data; {events} events read back", events + copies)
                }
                _ => format!("recorded: {events} events, {expected} "),
            };
            assert!(stdout.contains(&recorded), "{backend} {weight}: {stdout}");
            assert!(stdout.contains(&format!("traced process {pid}: still running")));
            assert_eq!(state(service.pid()), Some('S'), "the service waits for its next command");
            assert_no_heapprobe_uprobes();
        }
    }
    // Still answering.
    assert!(service.phase("mixed 1")["allocations"] > 0);
}

/// Thousands of distinct stacks: bpftrace 0.17's stack table has hash
/// collisions, and the stacks it loses come back as one `@stacks[]` entry,
/// which swallowed `@total` ("lost events: 0" while 3% were gone). Now every
/// event is accounted for: kept with its stack, or counted as lost with its
/// weight (drawn as `[stack lost]`), and beyond 1% lost the run fails, saying
/// so. perf keeps them all. Printing them takes bpftrace a while: progress
/// says so.
#[test]
fn thousands_of_distinct_stacks_are_kept_or_counted_as_lost() {
    let test = "thousands_of_distinct_stacks_are_kept_or_counted_as_lost";
    let Some(_kernel) = available(test) else { return };
    let mut service = ReleaseService::start();
    let tmp = TempDir::new("xtask-trace-stacks");
    for backend in backends(test) {
        let svg = tmp.path().join(format!("{backend}.svg"));
        let mut trace = Tracing::start(&[
            "trace",
            "--pid",
            &service.pid().to_string(),
            "--backend",
            backend,
            "-o",
            svg.to_str().unwrap(),
        ]);
        trace.wait_for("attached: recording");
        let report = service.phase("stacks 12");
        assert_eq!((report["allocations"], report["alloc_bytes"]), (4096, 409_600));
        trace.signal(libc::SIGINT);
        let (status, stdout, stderr) = trace.finish();
        let stacks = folded(&svg.with_extension("folded"));
        let kept = weight_through(&stacks, "heapprobe_service::leaf");
        let lost_bytes = weight_through(&stacks, "[stack lost]");
        assert_eq!(kept + lost_bytes, 409_600, "{backend}: every byte kept or counted as lost");
        assert_eq!(stacks.values().sum::<u64>(), 409_600, "{backend}: nothing else");
        assert_eq!(lost_bytes % 100, 0);
        let lost = lost_bytes / 100;
        let distinct = stacks.keys().filter(|s| s.contains("heapprobe_service::leaf")).count() as u64;
        assert_eq!(distinct, 4096 - lost, "{backend}: one stack per kept event");
        let line = stdout.lines().find(|l| l.starts_with("lost events: ")).expect("a lost events line");
        if lost == 0 {
            assert_eq!(line, "lost events: 0", "{backend}");
            assert!(status.success(), "{backend}: {stderr}");
        } else {
            assert_eq!(*backend, "bpftrace", "perf keeps every stack");
            let share = 100.0 * lost as f64 / 4096.0;
            assert!(line.starts_with(&format!("lost events: {lost} ({share:.2}%): {lost} whose stacks")), "{line}");
            assert_eq!(status.success(), share <= 1.0, "{backend}: beyond --max-lost 1% the run fails: {stderr}");
            if share > 1.0 {
                assert!(stderr.contains("more than --max-lost 1%"), "{stderr}");
            }
        }
        assert!(stdout.contains("recorded: 4096 "), "{backend}: {stdout}");
        if *backend == "bpftrace" {
            assert!(stderr.contains("reading bpftrace's stacks"), "progress while bpftrace prints its stacks");
        }
        assert_no_heapprobe_uprobes();
    }
}

/// `--event alloc_failed` on a debug build: the fixture's one failed
/// allocation of 2^46 bytes must be there, with either backend. (When
/// written, the failure path had three inlined sites, `__2`, `__5` and
/// `__10`, whose `perf script` names perf right-aligned; the allocator now
/// has one out-of-line failure path, so one site, and the perf backend reads
/// perf.data itself, not `perf script`'s text. Right-aligned names are
/// checked where text is still parsed: tests/fold.rs and trace/perf.rs.)
#[test]
fn alloc_failed_is_recorded_exactly() {
    let test = "alloc_failed_is_recorded_exactly";
    let Some(_kernel) = available(test) else { return };
    let binary = heapprobe_sdt::Binary::open(fixture_with_frame_pointers()).unwrap();
    let sites = binary.valid_probes(Some("heapprobe")).filter(|p| p.name == "alloc_failed").count();
    assert!(sites >= 1, "alloc_failed has no site");
    let tmp = TempDir::new("xtask-trace-failed");
    for backend in backends(test) {
        let svg = tmp.path().join(format!("{backend}.svg"));
        let out = run(&[
            "trace",
            "--bin",
            "heapprobe-fixture",
            "--event",
            "alloc_failed",
            "--backend",
            backend,
            "-o",
            svg.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{backend}");
        let stacks = folded(&svg.with_extension("folded"));
        assert_eq!(weight_through(&stacks, "heapprobe_fixture::failing_alloc"), 1 << 46, "{backend}");
        assert_eq!(stacks.values().sum::<u64>(), 1 << 46, "{backend}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("heapprobe:alloc_failed: 1 events"), "{backend}");
    }
    assert_no_heapprobe_uprobes();
}

/// SIGTERM (`kill PID`, `timeout`) and SIGHUP (a closed terminal) end a
/// trace as Ctrl-C does: the recording is folded, exactly, and the probes
/// are removed. (Before, either signal killed the xtask outright and left
/// its uprobes registered until the next trace swept them.)
#[test]
fn sigterm_and_sighup_end_a_trace_like_ctrl_c_and_remove_the_probes() {
    let test = "sigterm_and_sighup_end_a_trace_like_ctrl_c_and_remove_the_probes";
    let Some(_kernel) = available(test) else { return };
    let tmp = TempDir::new("xtask-trace-sigterm");
    for backend in backends(test) {
        for signal in [libc::SIGTERM, libc::SIGHUP] {
            let mut service = ReleaseService::start();
            let svg = tmp.path().join(format!("{backend}-{signal}.svg"));
            let pid = service.pid().to_string();
            let mut trace =
                Tracing::start(&["trace", "--pid", &pid, "--backend", backend, "-o", svg.to_str().unwrap()]);
            trace.wait_for("attached: recording");
            let report = service.phase("mixed 10");
            let xtask = format!("{}{}_", heapprobe_sdt::GROUP_PREFIX, trace.pid());
            trace.signal(signal);
            let (status, _, stderr) = trace.finish();
            assert!(status.success(), "{backend}, signal {signal}: {stderr}");
            assert_eq!(
                folded(&svg.with_extension("folded")).values().sum::<u64>(),
                report["alloc_bytes"],
                "{backend}, signal {signal}"
            );
            let events = std::fs::read_to_string(heapprobe_sdt::tracefs().unwrap().join("uprobe_events")).unwrap();
            assert!(!events.contains(&xtask), "{backend}, signal {signal}: the group is left: {events}");
            assert_eq!(state(service.pid()), Some('S'), "{backend}: the service runs on");
        }
    }
    assert_no_heapprobe_uprobes();
}

/// SIGKILL of the xtask while it records a process attached by --pid: the
/// recorder dies with it, the process keeps running (never stopped), and
/// the next trace succeeds, sweeping the group and the scratch folder the
/// killed run left. With bpftrace, the worst moment too: the process exits
/// while the xtask is frozen (it used to be stopped at `_exit` until the
/// xtask sent SIGCONT; killed, the xtask never did).
#[test]
fn sigkill_of_a_pid_trace_never_stops_the_process_and_the_next_trace_works() {
    let test = "sigkill_of_a_pid_trace_never_stops_the_process_and_the_next_trace_works";
    let Some(_kernel) = available(test) else { return };
    let tmp = TempDir::new("xtask-trace-sigkill-pid");
    let svg = tmp.path().join("killed.svg");
    for backend in backends(test) {
        let mut service = ReleaseService::start();
        let pid = service.pid().to_string();
        let mut trace = Tracing::start(&["trace", "--pid", &pid, "--backend", backend, "-o", svg.to_str().unwrap()]);
        trace.wait_for("attached: recording");
        service.phase("mixed 5");
        let recorders = descendants(trace.pid());
        assert!(!recorders.is_empty(), "{backend}: no recorder under the xtask");
        let killed_group = format!("{}{}_", heapprobe_sdt::GROUP_PREFIX, trace.pid());
        trace.signal(libc::SIGKILL);
        let (status, _, _) = trace.finish();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        for recorder in recorders {
            assert_ends_and_is_never_left_stopped(recorder, "the killed xtask's recorder");
        }
        assert_eq!(state(service.pid()), Some('S'), "{backend}: the service runs on, waiting for commands");
        assert!(service.phase("mixed 1")["allocations"] > 0, "{backend}: the service still works");

        // The next trace works, and sweeps what the killed one left. (A
        // trace of another checkout running beside this one may sweep the
        // killed run's group first: then ours has none to name.)
        let uprobe_events = heapprobe_sdt::tracefs().unwrap().join("uprobe_events");
        let group_left = std::fs::read_to_string(&uprobe_events).unwrap().contains(&killed_group);
        let next = tmp.path().join("next.svg");
        let mut trace = Tracing::start(&["trace", "--pid", &pid, "--backend", backend, "-o", next.to_str().unwrap()]);
        trace.wait_for("attached: recording");
        let report = service.phase("mixed 10");
        trace.signal(libc::SIGINT);
        let (status, _, stderr) = trace.finish();
        assert!(status.success(), "{backend}: {stderr}");
        assert_eq!(folded(&next.with_extension("folded")).values().sum::<u64>(), report["alloc_bytes"]);
        if *backend == "perf" && group_left {
            assert!(stderr.contains("uprobes left by an earlier run that was killed"), "{stderr}");
        }
        if *backend == "perf" {
            assert!(stderr.contains("scratch folder(s) left in"), "{stderr}");
        }
        assert!(std::fs::read_dir(tmp.path())
            .unwrap()
            .all(|e| { !e.unwrap().file_name().to_string_lossy().starts_with(".heapprobe-trace-") }));
        assert_no_heapprobe_uprobes();
    }

    if !backends(test).contains(&"bpftrace") {
        return;
    }
    // bpftrace, and the process exits while the xtask is frozen.
    let mut service = ReleaseService::start();
    let service_pid = service.pid();
    let mut trace = Tracing::start(&[
        "trace",
        "--pid",
        &service_pid.to_string(),
        "--backend",
        "bpftrace",
        "-o",
        svg.to_str().unwrap(),
    ]);
    trace.wait_for("attached: recording");
    service.phase("mixed 5");
    trace.signal(libc::SIGSTOP);
    writeln!(service.stdin, "exit").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = service.child.try_wait().unwrap() {
            break status;
        }
        assert_ne!(state(service_pid), Some('T'), "the service is stopped at its exit");
        assert!(Instant::now() < deadline, "the service did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "the service exited by itself, normally");
    let recorders = descendants(trace.pid());
    trace.signal(libc::SIGKILL);
    trace.finish();
    for recorder in recorders {
        assert_ends_and_is_never_left_stopped(recorder, "the killed xtask's bpftrace");
    }
    assert_no_heapprobe_uprobes();
}

/// SIGKILL of the xtask while it runs a program it launched: the program
/// dies with it (it can never be left stopped, nor run on unwatched), and
/// so does the recorder. With bpftrace, at the worst moment: the program is
/// stopped at `_exit` (for its map to be read) and the xtask, frozen, cannot
/// resume it.
#[test]
fn sigkill_of_a_trace_that_launched_its_program_takes_the_program_along() {
    let test = "sigkill_of_a_trace_that_launched_its_program_takes_the_program_along";
    let Some(_kernel) = available(test) else { return };
    let fixture = fixture_with_frame_pointers();
    let tmp = TempDir::new("xtask-trace-sigkill-launched");
    for backend in backends(test) {
        let svg = tmp.path().join(format!("{backend}.svg"));
        let mut trace = Tracing::start_with(
            xtask()
                .args(["trace", "--bin", "heapprobe-fixture", "--backend", backend, "-o", svg.to_str().unwrap()])
                .args(["--", "--wait"])
                .stdin(Stdio::piped()),
        );
        // The fixture prints `ready` (on the stderr it shares with the xtask)
        // once it runs, traced.
        trace.wait_for("ready");
        let program = descendants(trace.pid())
            .into_iter()
            .find(|p| std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == fixture))
            .expect("the fixture runs under the xtask");
        let everything = descendants(trace.pid());
        if *backend == "bpftrace" {
            // Freeze the xtask, let the program run to `_exit`, where
            // bpftrace stops it until the xtask reads its map.
            trace.signal(libc::SIGSTOP);
            writeln!(trace.child.stdin.as_mut().unwrap(), "go").unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while state(program) != Some('T') {
                assert!(Instant::now() < deadline, "the program was not stopped at _exit: {:?}", state(program));
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        trace.signal(libc::SIGKILL);
        trace.finish();
        assert_ends_and_is_never_left_stopped(program, "the launched program");
        for pid in everything {
            assert_ends_and_is_never_left_stopped(pid, "a process the killed xtask started");
        }
        // The next trace works.
        let out = run(&["trace", "--bin", "heapprobe-fixture", "--backend", backend, "-o", svg.to_str().unwrap()]);
        assert!(out.status.success(), "{backend}");
        assert_eq!(
            weight_through(&folded(&svg.with_extension("folded")), "heapprobe_fixture::known_pattern"),
            4_096_000
        );
        assert_no_heapprobe_uprobes();
    }
}

/// A stale group (its run's pid is gone) that a process still holds open:
/// the kernel refuses to remove it (EBUSY). It used to fail every later
/// trace, even an unrelated one. Now the trace leaves it, says why and names
/// the holder, and records with its own group; `doctor` reports it too.
#[test]
fn a_busy_stale_group_is_left_with_its_holder_named_and_blocks_nothing() {
    let test = "a_busy_stale_group_is_left_with_its_holder_named_and_blocks_nothing";
    let Some(_kernel) = available(test) else { return };
    let mut service = ReleaseService::start();
    let exe = release_service_exe();
    let binary = heapprobe_sdt::Binary::open(&exe).unwrap();
    let offset = binary
        .valid_probes(Some("heapprobe"))
        .find_map(|p| match p.site {
            heapprobe_sdt::Site::Valid { offset, .. } if p.name == "alloc" => Some(offset),
            _ => None,
        })
        .unwrap();
    let events = heapprobe_sdt::tracefs().unwrap().join("uprobe_events");
    // The group's "run" is a process of ours, alive (so that no sweep, of
    // this or another checkout's runs on the machine, removes the group)
    // until the holder has its events open; then it dies, as a killed run.
    let mut owner = Command::new("sleep").arg("3600").spawn().unwrap();
    let group = format!("heapprobe_{}_trace0", owner.id());
    let write = |line: &str| {
        std::fs::OpenOptions::new().append(true).open(&events).unwrap().write_all(line.as_bytes()).unwrap()
    };
    write(&format!("p:{group}/alloc__0 {}:{offset:#x}\n", exe.display()));
    let tmp = TempDir::new("xtask-trace-busy");
    // The holder: a perf recording the group, as a run's orphan would. Its
    // acknowledgement on the control FIFO says its events are open.
    let (ctl, ack) = (tmp.path().join("ctl"), tmp.path().join("ack"));
    for fifo in [&ctl, &ack] {
        assert!(Command::new("mkfifo").arg(fifo).status().unwrap().success());
    }
    let holder = Command::new("perf")
        .args(["record", "-q", "-e", &format!("{group}:*"), "-p", &service.pid().to_string(), "-D", "-1"])
        .arg("--control")
        .arg(format!("fifo:{},{}", ctl.display(), ack.display()))
        .arg("-o")
        .arg(tmp.path().join("holder.data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut holder = Holder { child: holder, events: events.clone(), group: group.clone() };
    let mut control = std::fs::OpenOptions::new().write(true).open(&ctl).unwrap();
    let mut acked = std::fs::File::open(&ack).unwrap();
    control.write_all(b"enable\n").unwrap();
    let mut answer = [0u8; 5];
    std::io::Read::read_exact(&mut acked, &mut answer).unwrap();
    assert_eq!(&answer[..4], b"ack\n", "perf acknowledged");
    let _ = owner.kill();
    let _ = owner.wait();
    let group = group.as_str();

    let svg = tmp.path().join("busy.svg");
    let mut trace = Tracing::start(&["trace", "--pid", &service.pid().to_string(), "-o", svg.to_str().unwrap()]);
    trace.wait_for("attached: recording");
    let report = service.phase("mixed 10");
    trace.signal(libc::SIGINT);
    let (status, _, stderr) = trace.finish();
    assert!(status.success(), "a busy stale group must not stop an unrelated trace: {stderr}");
    assert_eq!(folded(&svg.with_extension("folded")).values().sum::<u64>(), report["alloc_bytes"]);
    let holder_pid = holder.child.id();
    assert!(stderr.contains(&format!("left uprobe group {group} in place")), "{stderr}");
    assert!(stderr.contains(&format!("pid {holder_pid} (`perf record")), "names the holder: {stderr}");
    let out = run(&["doctor"]);
    let doctor = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "a stale group is a warning: {doctor}");
    let line = doctor.lines().find(|l| l.contains("stale uprobes")).expect("a stale uprobes line");
    assert!(line.starts_with("WARN") && line.contains(group) && line.contains(&format!("pid {holder_pid}")), "{line}");
    assert!(doctor.contains(&format!("fix: `kill {holder_pid}`")), "{doctor}");

    // Once the holder is gone, the next trace sweeps the group.
    let _ = holder.child.kill();
    let _ = holder.child.wait();
    let out = run(&["trace", "--pid", &service.pid().to_string(), "--duration", "1", "-o", svg.to_str().unwrap()]);
    assert!(out.status.success() || String::from_utf8_lossy(&out.stderr).contains("nothing to weigh"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("removed 1 uprobes left by an earlier run"));
    assert!(!std::fs::read_to_string(&events).unwrap().contains(group));
    assert_no_heapprobe_uprobes();
}

/// The holder of a stale group, killed and the group removed on drop (a
/// failed assertion must not leave them to the other tests).
struct Holder {
    child: Child,
    events: PathBuf,
    group: String,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::fs::read_to_string(&self.events).is_ok_and(|t| t.contains(&self.group)) {
            let line = format!("-:{}/alloc__0\n", self.group);
            let _ =
                std::fs::OpenOptions::new().append(true).open(&self.events).map(|mut f| f.write_all(line.as_bytes()));
        }
    }
}

/// `-o` naming a directory fails at once: before building or recording.
#[test]
fn an_output_that_is_a_directory_fails_before_recording() {
    let Some(_kernel) = available("an_output_that_is_a_directory_fails_before_recording") else { return };
    let tmp = TempDir::new("xtask-trace-outdir");
    let started = Instant::now();
    for backend in ["perf", "bpftrace"] {
        let out = run(&["trace", "--test", "it_works", "--backend", backend, "-o", tmp.path().to_str().unwrap()]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("it is a directory"), "{stderr}");
        assert!(!stderr.contains("building") && !stderr.contains("recording"), "{stderr}");
    }
    assert!(started.elapsed() < Duration::from_secs(30), "it failed only after working");
    assert_no_heapprobe_uprobes();
}

/// Scratch folders left by killed runs (`.heapprobe-trace-PID`, their pid
/// gone) are swept from where the output goes; a live run's is kept.
#[test]
fn scratch_folders_of_killed_runs_are_swept() {
    let Some(_kernel) = available("scratch_folders_of_killed_runs_are_swept") else { return };
    let tmp = TempDir::new("xtask-trace-scratch");
    let dead = tmp.path().join(".heapprobe-trace-4194397");
    let live = tmp.path().join(format!(".heapprobe-trace-{}", std::process::id()));
    for dir in [&dead, &live] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("perf.data"), b"left behind").unwrap();
    }
    let svg = tmp.path().join("fg.svg");
    let out = run(&["trace", "--bin", "heapprobe-fixture", "-o", svg.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(".heapprobe-trace-4194397"));
    assert!(!dead.exists(), "the killed run's folder was swept");
    assert!(live.exists(), "a live run's folder is not ours to remove");
    assert_no_heapprobe_uprobes();
}

/// The fixture's `known_local`: `Local::with_id(4242, arena)`, 20 × (allocate
/// 64, grow 64→256, shrink 256→32, deallocate); the arena's grow and shrink
/// always move the block (allocator-api2's defaults: a new block, the bytes
/// copied). `--id` keeps one instance's hits (counting the others), and
/// `--weight moved` takes `local_grow` and `local_shrink`, on both backends.
#[test]
fn local_probes_by_id_and_weighted_by_the_bytes_they_copy() {
    let Some(_kernel) = available("local_probes_by_id_and_weighted_by_the_bytes_they_copy") else { return };
    let tmp = TempDir::new("xtask-trace-local");
    let svg = tmp.path().join("local.svg");
    let o = svg.to_str().unwrap();
    for backend in backends("local_probes_by_id_and_weighted_by_the_bytes_they_copy") {
        let trace = |args: &[&str]| {
            run(&[&["trace", "--bin", "heapprobe-fixture", "--backend", backend, "-o", o], args].concat())
        };
        for (args, known) in [
            (&["--event", "local_alloc", "--id", "4242"][..], 20 * 64),
            (&["--event", "local_grow", "--weight", "moved"], 20 * 64),
            (&["--event", "local_shrink", "--weight", "moved", "--id", "4242"], 20 * 32),
            (&["--event", "local_grow"], 20 * 256),
        ] {
            let out = trace(args);
            assert!(out.status.success(), "{backend} {args:?}");
            let stacks = folded(&svg.with_extension("folded"));
            assert_eq!(weight_through(&stacks, "heapprobe_fixture::known_local"), known, "{backend} {args:?}");
            assert_eq!(stacks.values().sum::<u64>(), known, "{backend} {args:?}: only known_local's instance");
        }
        // Another instance's id: nothing to draw, and the summary says why.
        let out = trace(&["--event", "local_alloc", "--id", "7"]);
        assert!(!out.status.success(), "{backend}");
        if *backend == "perf" {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains("other ids: 20 hits of heapprobe:local_alloc"), "{backend}: {stdout}");
        }
        assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to weigh"), "{backend}");
    }
    // --id needs a probe with an id; --weight moved one that moves blocks.
    for (args, expected) in [
        (&["--event", "alloc", "--id", "1"][..], "heapprobe:alloc has no id argument"),
        (&["--event", "local_alloc", "--weight", "moved"], "--weight moved needs a probe of moves"),
    ] {
        let out = run(&[&["trace", "--bin", "heapprobe-fixture", "-o", o], args].concat());
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(expected), "{args:?}");
    }
    assert_no_heapprobe_uprobes();
}

/// The samples perf wrote twice, by the trace's note (0 without one).
fn perf_copies(stdout: &str) -> u64 {
    let note = stdout.lines().find_map(|l| l.strip_prefix("note: the recorder wrote "));
    note.map_or(0, |rest| {
        let n = rest.split_once(" event(s) twice").unwrap_or_else(|| panic!("note not understood: {rest:?}")).0;
        n.parse().unwrap_or_else(|_| panic!("note not understood: {rest:?}"))
    })
}
