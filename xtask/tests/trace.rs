//! `cargo xtask trace` end to end, for real: root, perf, the kernel's
//! uprobes. With `CI=true` a missing tool fails; elsewhere these tests skip
//! with one loud line. They share kernel state, so they take turns.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{assert_no_heapprobe_uprobes, root, tracing_available, TempDir};

static KERNEL: Mutex<()> = Mutex::new(());

fn xtask() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
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
    let out = run(&["trace", "--test", "it_works", "-o", svg.to_str().unwrap()]);
    assert!(out.status.success(), "trace failed");
    let stacks = folded(&svg.with_extension("folded"));
    // 100 pages of 4096 bytes and the Vec of 100 pointers.
    assert_eq!(weight_through(&stacks, "it_works::build_inventory"), 100 * 4096 + 100 * 8);
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
    let cases: [(&[&str], &str); 7] = [
        (
            &["trace", "--test", "it_work", "-o", o],
            "no test target and no test function named \"it_work\"; closest: `it_works`",
        ),
        (&["trace", "--bin", "xtask", "-o", o], "no heapprobe probes in"),
        (&["trace", "--example", "nope", "-o", o], "no example target named \"nope\""),
        (&["trace", "--test", "it_works", "-o", "/nonexistent/fg.svg"], "/nonexistent is not a directory"),
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
        .arg(env!("CARGO_BIN_EXE_xtask"))
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
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--package", "heapprobe-fixture", "--profile", "trace"])
        .env("RUSTFLAGS", "-C force-frame-pointers=yes")
        .current_dir(root())
        .status()
        .unwrap();
    assert!(status.success());
    root().join("target/trace/heapprobe-fixture")
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
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("traced process {pid}: still running")));
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
    let xtask = Path::new(env!("CARGO_BIN_EXE_xtask"));
    let svg = tmp.path().join("caps.svg");
    let traced = as_nobody("+perfmon,+dac_override", xtask)
        .args(["trace", "--pid", &pid, "--duration", "1", "--weight", "count", "-o", svg.to_str().unwrap()])
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

/// Ctrl-C (SIGINT to the xtask alone) ends the recording; the profile is
/// folded and rendered, and no uprobe stays registered.
#[test]
fn sigint_ends_the_recording_and_removes_the_probes() {
    let Some(_kernel) = available("sigint_ends_the_recording_and_removes_the_probes") else { return };
    let service = Service::start();
    let tmp = TempDir::new("xtask-trace-sigint");
    let svg = tmp.path().join("int.svg");
    let mut trace = xtask()
        .args(["trace", "--pid", &service.0.id().to_string(), "-o", svg.to_str().unwrap()])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(trace.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("recording") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "the trace ended before recording");
    }
    // Let perf attach and record some rounds.
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(trace.id() as libc::pid_t, libc::SIGINT) }, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = trace.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the trace did not end after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    let rest = std::io::read_to_string(stderr).unwrap_or_default();
    assert!(status.success(), "trace after SIGINT: {status}: {rest}");
    let bytes = weight_through(&folded(&svg.with_extension("folded")), "heapprobe_fixture::known_pattern");
    assert!(bytes > 0 && bytes.is_multiple_of(4096), "{bytes}");
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

    let out = run(&["probes", env!("CARGO_BIN_EXE_xtask")]);
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
    assert!(String::from_utf8_lossy(&out.stderr).contains("ended without calling _exit"));
    assert_eq!(weight_through(&folded(&svg.with_extension("folded")), "heapprobe_fixture::known_pattern"), 4_096_000);
    assert_no_heapprobe_uprobes();
}
