//! The profiler's sampled USDT probes fire under bpftrace with the expected
//! counts and weights: `heapprobe:sample` / `heapprobe:sample_free`, and
//! (feature `otel`) the same events as `otel_memory:alloc` / `otel_memory:free`.
//! The fixture is started with the profiler switched on from the
//! environment (`HEAPPROBE_PROFILE`), as a service would be.
//!
//! Needs root and bpftrace. With `CI=true` a missing one fails the test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[path = "support/mod.rs"]
mod support;

/// The fixture with `--features otel`, in a target directory of its own.
fn fixture_with_otel() -> PathBuf {
    let target = support::root().join("target/fixture-otel");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--package", "heapprobe-fixture", "--features", "otel", "--target-dir"])
        .arg(&target)
        .current_dir(support::root())
        .status()
        .expect("failed to run cargo build for the fixture");
    assert!(status.success(), "cargo build of the fixture (otel) exited with {status}");
    target.join("debug/heapprobe-fixture")
}

/// `@name: value` lines of bpftrace's map dump (the first of each name:
/// bpftrace 0.17 prints cleared maps again, empty, as it exits).
fn scalars(stdout: &str) -> HashMap<String, i64> {
    let mut maps = HashMap::new();
    for (k, v) in stdout.lines().filter_map(|l| l.strip_prefix('@')?.split_once(": ")) {
        if let Ok(v) = v.trim().parse() {
            maps.entry(k.to_owned()).or_insert(v);
        }
    }
    maps
}

/// Runs the fixture (`--wait`) with `HEAPPROBE_PROFILE=profile`, attaches
/// bpftrace with `program` (a file or `-e` text) by pid, releases the
/// fixture once bpftrace printed `marker`, and returns bpftrace's stdout.
fn trace(exe: &Path, profile: &str, program: &[&str], marker: &str) -> String {
    let dir = support::TempDir::new("profile-probes");
    let mut fixture = Command::new(exe)
        .arg("--wait")
        .env("HEAPPROBE_PROFILE", format!("{profile},out={}", dir.path().join("p").display()))
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to start the fixture");
    // The fixture talks on stderr (its stdout is never touched).
    let mut fixture_err = BufReader::new(fixture.stderr.take().unwrap());
    let mut line = String::new();
    fixture_err.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let pid = fixture.id().to_string();
    let mut bpftrace = Command::new(std::env::var("BPFTRACE").unwrap_or_else(|_| String::from("bpftrace")))
        .args(["-q", "-p", &pid])
        .args(program.iter().map(|a| a.replace("PID", &pid)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to run bpftrace");
    let mut out = BufReader::new(bpftrace.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "bpftrace ended before {marker:?}: {seen}");
        seen.push_str(&line);
        if line.contains(marker) {
            break;
        }
    }
    writeln!(fixture.stdin.take().unwrap()).unwrap();
    let _ = std::io::read_to_string(fixture_err);
    let status = fixture.wait().unwrap();
    assert!(status.success(), "the fixture exited with {status}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let bt_status = bpftrace.wait().unwrap();
    let stderr = std::io::read_to_string(bpftrace.stderr.take().unwrap()).unwrap();
    assert!(bt_status.success(), "bpftrace exited with {bt_status}: {stderr}\n{seen}{rest}");
    seen + &rest
}

const COUNTS: &str =
    "usdt:/proc/PID/exe:heapprobe:sample /arg1 == 4096/ { @n = count(); @w = sum(arg2); @weights[arg2] = count(); }
usdt:/proc/PID/exe:heapprobe:sample_free { @f = count(); }
usdt:/proc/PID/exe:otel_memory:alloc /arg1 == 4096/ { @on = count(); @ow = sum(arg2); }
usdt:/proc/PID/exe:otel_memory:free { @of = count(); }
BEGIN { printf(\"go\\n\"); }";

#[test]
fn sampled_probes_fire_with_exact_counts_and_weights_under_bpftrace() {
    if !support::tracing_available("sampled_probes_fire_with_exact_counts_and_weights_under_bpftrace", &["bpftrace"]) {
        return;
    }
    let exe = fixture_with_otel();
    // Rate 1: every allocation is a sample of weight = its size. The
    // fixture's known_pattern makes 1000 allocations of 4096 bytes.
    let out = trace(&exe, "rate=1", &["-e", COUNTS], "go");
    let maps = scalars(&out);
    assert_eq!(maps.get("n"), Some(&1000), "{out}");
    assert_eq!(maps.get("w"), Some(&4_096_000), "{out}");
    assert_eq!(maps.get("on"), Some(&1000), "otel_memory:alloc\n{out}");
    assert_eq!(maps.get("ow"), Some(&4_096_000), "{out}");
    // Every sampled block freed fires both free probes, the same number of times.
    assert!(maps.get("f").is_some_and(|f| *f >= 1000), "{out}");
    assert_eq!(maps.get("f"), maps.get("of"), "{out}");

    // At 64 KiB a 4096-byte sample stands for 4096 / (1 - e^(-1/16)) bytes,
    // and there are about 1000 / 16 of them.
    let out = trace(&exe, "rate=64k,seed=7", &["-e", COUNTS], "go");
    let maps = scalars(&out);
    let expected_weight = (4096.0 / -(-4096.0f64 / 65536.0).exp_m1()).round() as i64;
    assert!(out.contains(&format!("@weights[{expected_weight}]: ")), "expected weight {expected_weight}:\n{out}");
    let n = maps["n"];
    assert!((20..=200).contains(&n), "{n} samples of 4096 bytes at 64 KiB:\n{out}");
    assert_eq!(maps["w"], n * expected_weight, "{out}");
}

#[test]
fn sampled_heap_script_reports_the_known_pattern() {
    if !support::tracing_available("sampled_heap_script_reports_the_known_pattern", &["bpftrace"]) {
        return;
    }
    // Frame pointers, so that bpftrace's ustack tells known_pattern's
    // stack apart from the others.
    let exe = support::build_fixture_with_frame_pointers();
    let script = support::root().join("scripts/sampled_heap.bt");
    let out = trace(&exe, "rate=1", &[script.to_str().unwrap(), "PID"], "Hit Ctrl-C to end.");
    assert!(out.contains("Top 10 stacks by estimated bytes:"), "{out}");
    // The heaviest stack is known_pattern's, with its exact bytes at rate 1
    // (frames are addresses or names depending on the fixture's build).
    let maps = scalars(&out);
    assert!(maps.get("samples").is_some_and(|s| *s > 1000), "{out}");
    assert!(maps.get("estimated_bytes").is_some_and(|b| *b > 4_096_000), "{out}");
    assert!(maps.contains_key("live_bytes"), "{out}");
    assert!(out.contains("]: 4096000\n"), "no stack with known_pattern's 4096000 bytes:\n{out}");
}

#[test]
fn cargo_xtask_trace_event_sample_weighs_by_the_samples_estimate() {
    if !support::tracing_available("cargo_xtask_trace_event_sample_weighs_by_the_samples_estimate", &["bpftrace"]) {
        return;
    }
    let dir = support::TempDir::new("xtask-sample");
    let svg = dir.path().join("sample.svg");
    let output = Command::new(env!("CARGO"))
        .args(["xtask", "trace", "--bin", "heapprobe-fixture", "--event", "sample", "--backend", "bpftrace", "-o"])
        .arg(&svg)
        .env("HEAPPROBE_PROFILE", "rate=1")
        .current_dir(support::root())
        .output()
        .expect("failed to run cargo xtask trace");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cargo xtask trace exited with {}: {}\n{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let folded = std::fs::read_to_string(dir.path().join("sample.folded")).unwrap();
    let known: u64 = folded
        .lines()
        .filter(|l| l.contains("known_pattern"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert_eq!(known, 4_096_000, "{folded}");
}
