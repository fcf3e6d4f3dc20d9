//! A real pprof client reads heapprobe's profile: `go tool pprof -top`
//! shows the known function with its known figures for each of Go's four
//! heap sample types (rate 1, so they are exact).

use std::alloc::System;
use std::hint::black_box;
use std::process::Command;

use heapprobe::profile::Options;
use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

#[path = "support/mod.rs"]
mod support;

#[inline(never)]
fn known_pattern(keep: &mut Vec<Vec<u8>>) {
    for _ in 0..1000 {
        keep.push(black_box(Vec::with_capacity(4096)));
    }
}

/// `go tool pprof -top` of `file` for `sample_index`, cumulative, raw units,
/// focused on `known_pattern`: its line.
fn pprof_top(file: &std::path::Path, sample_index: &str) -> String {
    let output = Command::new("go")
        .args(["tool", "pprof", "-top", "-cum", "-nodecount=200"])
        .args(sample_index.ends_with("_space").then_some("-unit=B"))
        .arg(format!("-sample_index={sample_index}"))
        .arg("-focus=known_pattern")
        .arg(file)
        .env("PPROF_TMPDIR", file.parent().unwrap())
        .output()
        .expect("failed to run go tool pprof");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "go tool pprof exited with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find(|l| l.ends_with("::known_pattern"))
        .unwrap_or_else(|| panic!("no known_pattern row:\n{stdout}"))
        .to_owned()
}

#[test]
fn go_tool_pprof_reads_the_known_pattern_for_each_sample_type() {
    let go = Command::new("go").arg("version").output().is_ok_and(|o| o.status.success());
    if !go {
        let message = "SKIPPED go_tool_pprof_reads_the_known_pattern: needs Go (apt-get install -y golang-go); `bash .ci/run` installs it";
        assert!(!support::in_ci(), "CI=true, so a missing tool is a failure: {message}");
        eprintln!("\n========== {message} ==========\n");
        return;
    }
    let mut options = Options::default();
    options.rate = 1;
    let mut keep = Vec::with_capacity(1000);
    GLOBAL.start_profiler(options).unwrap();
    known_pattern(&mut keep);
    keep.truncate(500);
    let profile = GLOBAL.stop_profiler().unwrap();
    let dir = support::TempDir::new("pprof");
    let file = dir.path().join("heap.pb.gz");
    profile.write_pprof(&file).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");

    // `-top -cum` rows: flat flat% sum% cum cum% name; the cum column of the
    // known function's row carries its figures.
    for (index, expected) in
        [("alloc_space", "4096000B"), ("inuse_space", "2048000B"), ("alloc_objects", "1000"), ("inuse_objects", "500")]
    {
        let row = pprof_top(&file, index);
        let cum = row.split_whitespace().nth(3).unwrap();
        assert_eq!(cum, expected, "{index}: {row}");
    }
    // The header names the period (the rate) and the build-id'd mapping reads.
    let raw =
        Command::new("go").args(["tool", "pprof", "-raw"]).arg(&file).env("PPROF_TMPDIR", dir.path()).output().unwrap();
    let raw = String::from_utf8_lossy(&raw.stdout);
    assert!(raw.contains("PeriodType: space bytes") && raw.contains("Period: 1"), "{}", &raw[..raw.len().min(2000)]);
    assert!(
        raw.contains("Samples:\nalloc_objects/count alloc_space/bytes inuse_objects/count inuse_space/bytes"),
        "{}",
        &raw[..raw.len().min(2000)]
    );
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let mapping = raw
        .lines()
        .find(|l| l.contains(&*exe.to_string_lossy()))
        .unwrap_or_else(|| panic!("no mapping of {}:\n{raw}", exe.display()));
    // `1: start/limit/offset path build-id [FN][FL][LN][IN]`
    let build_id = mapping.split_whitespace().nth(3).unwrap();
    assert!(
        build_id.len() >= 16 && build_id.chars().all(|c| c.is_ascii_hexdigit()),
        "mapping without build-id: {mapping}"
    );
    drop(keep);

    // A live table too small for what is in use: the bytes it had no room
    // for are in the in-use view under a frame that says so, as in the
    // summary ("+N untracked"), not dropped.
    let mut options = Options::default();
    options.rate = 1;
    options.max_live = 16;
    let mut keep = Vec::with_capacity(1000);
    GLOBAL.start_profiler(options).unwrap();
    known_pattern(&mut keep);
    let profile = GLOBAL.stop_profiler().unwrap();
    let live: serde_json::Value = serde_json::from_str(&profile.live_map_json(usize::MAX)).unwrap();
    let untracked = live["untracked_bytes"].as_f64().unwrap();
    assert!(untracked >= 984.0 * 4096.0, "at most 16 of the 1000 blocks tracked: {untracked}");
    let file = dir.path().join("untracked.pb.gz");
    profile.write_pprof(&file).unwrap();
    let top = Command::new("go")
        .args(["tool", "pprof", "-top", "-unit=B", "-sample_index=inuse_space", "-nodecount=200"])
        .arg(&file)
        .env("PPROF_TMPDIR", dir.path())
        .output()
        .unwrap();
    let top = String::from_utf8_lossy(&top.stdout);
    let row = top
        .lines()
        .find(|l| l.ends_with("[untracked: the live table was full]"))
        .unwrap_or_else(|| panic!("no untracked row:\n{top}"));
    assert_eq!(row.split_whitespace().next().unwrap(), format!("{untracked}B"), "{row}");
    drop(keep);
}
