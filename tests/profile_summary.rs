//! The heap summary at exit lists the top live stacks when the in-process
//! profiler is on: the fixture's `heapprobe-leaks` leaks 3 blocks of 100
//! bytes from `known_pattern`; started with `HEAPPROBE_PROFILE=rate=1` (every
//! allocation recorded) and `HEAPPROBE_SUMMARY=1`, its summary names that
//! function with exactly those bytes and blocks. Without the profiler, the
//! summary has no such section.

mod support;

use std::path::PathBuf;
use std::process::Command;

/// The fixture with the profiler's names (feature `profile`), built once,
/// as a user would: no RUSTFLAGS, so stacks come from `.eh_frame`.
fn leaks_program() -> PathBuf {
    let target = support::root().join("target/fixture-profile");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--package", "heapprobe-fixture", "--features", "server,pprof", "--target-dir"])
        .arg(&target)
        .env_remove("RUSTFLAGS")
        .current_dir(support::root())
        .status()
        .expect("failed to run cargo build for the fixture");
    assert!(status.success(), "cargo build of the fixture (server, pprof) exited with {status}");
    target.join("debug/heapprobe-leaks")
}

fn run(profile: Option<&str>) -> String {
    let dir = support::TempDir::new("profile-summary");
    let mut cmd = Command::new(leaks_program());
    cmd.env("HEAPPROBE_SUMMARY", "1").env("LEAKS_MODE", "silent").env("LEAKS_EMPTY", "0");
    match profile {
        Some(p) => cmd.env("HEAPPROBE_PROFILE", format!("{p},out={}", dir.path().join("p").display())),
        None => cmd.env_remove("HEAPPROBE_PROFILE"),
    };
    let out = cmd.output().unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{cmd:?} exited with {}: {stderr}", out.status);
    stderr
}

#[test]
fn the_summary_names_the_leaking_function_with_its_exact_bytes() {
    let stderr = run(Some("rate=1"));
    let lines: Vec<&str> = stderr.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.starts_with("heapprobe: top live stacks ("))
        .unwrap_or_else(|| panic!("no live stacks after the summary:\n{stderr}"));
    assert!(lines[..head].contains(&"heapprobe: HEAP SUMMARY:"), "the figures come first:\n{stderr}");
    assert!(lines[head].contains("exact: rate 1"), "{stderr}");
    // The entry whose allocating frame is known_pattern: exactly its leak.
    let entries: Vec<(&str, &str)> = lines[head + 1..]
        .windows(2)
        .filter(|w| w[0].starts_with("heapprobe:   ") && w[0].ends_with(" blocks"))
        .map(|w| (w[0], w[1]))
        .collect();
    let known: Vec<&(&str, &str)> =
        entries.iter().filter(|(_, at)| at.contains("at heapprobe_leaks::known_pattern")).collect();
    assert_eq!(known.len(), 1, "one stack allocates the leak in known_pattern:\n{stderr}");
    assert_eq!(known[0].0, "heapprobe:   300 bytes in 3 blocks", "{stderr}");
    // Every block live at exit was recorded (the profiler started before
    // `main`, and keeps nothing of its own on the heap): when every stack
    // is listed, they add up to the summary's "in use at exit".
    let (listed, of) = lines[head]
        .strip_prefix("heapprobe: top live stacks (")
        .and_then(|rest| rest.split_once(','))
        .and_then(|(counts, _)| counts.split_once(" of "))
        .map(|(n, m)| (n.parse::<usize>().unwrap(), m.parse::<usize>().unwrap()))
        .unwrap_or_else(|| panic!("unexpected head {:?}", lines[head]));
    assert_eq!(listed, entries.len(), "{stderr}");
    if listed == of {
        let number = |s: &str| s.replace(',', "").parse::<u64>().unwrap();
        let (mut bytes, mut blocks) = (0, 0);
        for (entry, _) in &entries {
            let w: Vec<&str> = entry.split_whitespace().collect();
            bytes += number(w[1]);
            blocks += number(w[4]);
        }
        let in_use = lines[..head]
            .iter()
            .find_map(|l| l.strip_prefix("heapprobe:     in use at exit: "))
            .unwrap_or_else(|| panic!("no in-use line:\n{stderr}"));
        let w: Vec<&str> = in_use.split_whitespace().collect();
        assert_eq!((bytes, blocks), (number(w[0]), number(w[3])), "{stderr}");
    }
}

#[test]
fn no_live_stacks_without_the_profiler() {
    let stderr = run(None);
    assert!(stderr.contains("heapprobe: HEAP SUMMARY:"), "{stderr}");
    assert!(!stderr.contains("top live stacks"), "{stderr}");
}
