//! The heap summary at exit, on the fixture's `heapprobe-leaks` (3 blocks of
//! 100 bytes leaked, 5 × 50 bytes allocated and freed, a vector grown by two
//! reallocs and freed): exact figures on a normal return and on
//! `std::process::exit`, nothing when not asked, and the same "in use at
//! exit" as valgrind's HEAP SUMMARY.
//!
//! Exact whatever the Rust runtime allocates itself: each figure is checked
//! against a control run of the same program without the pattern.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Backend, Linker};

/// The fixture's leaks program (built once per test binary run).
fn leaks_program() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| support::build_fixture(Linker::Default, Backend::Probe).with_file_name("heapprobe-leaks"))
        .clone()
}

/// A summary as printed, parsed strictly: every `heapprobe:` line must be
/// one of the four the format has, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Printed {
    in_use_bytes: u64,
    in_use_blocks: u64,
    allocs: u64,
    frees: u64,
    bytes_allocated: u64,
    reallocs: u64,
    bytes_grown: u64,
}

fn number(s: &str) -> u64 {
    s.replace(',', "").parse().unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// Parses the one summary in `stderr`; `None` if there is no `heapprobe:` line.
fn parse_summary(stderr: &str) -> Option<Printed> {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("heapprobe:")).collect();
    if lines.is_empty() {
        return None;
    }
    assert_eq!(lines.len(), 4, "one summary of 4 lines expected:\n{stderr}");
    assert_eq!(lines[0], "heapprobe: HEAP SUMMARY:");
    let words = |l: &str, prefix: &str| -> Vec<String> {
        l.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("unexpected line {l:?}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let w = words(lines[1], "heapprobe:     in use at exit: ");
    assert_eq!((w.len(), w[1].as_str(), w[2].as_str(), w[4].as_str()), (5, "bytes", "in", "blocks"), "{}", lines[1]);
    let u = words(lines[2], "heapprobe:   total heap usage: ");
    assert_eq!(
        (u.len(), u[1].as_str(), u[3].as_str(), u[5].as_str(), u[6].as_str()),
        (7, "allocs,", "frees,", "bytes", "allocated"),
        "{}",
        lines[2]
    );
    let r = words(lines[3], "heapprobe:           reallocs: ");
    assert_eq!(r[2..].join(" "), "bytes grown (valgrind counts each as 1 alloc + 1 free)", "{}", lines[3]);
    let reallocs = r[0].strip_suffix(',').unwrap_or_else(|| panic!("`N,` expected: {}", lines[3]));
    Some(Printed {
        in_use_bytes: number(&w[0]),
        in_use_blocks: number(&w[3]),
        allocs: number(&u[0]),
        frees: number(&u[2]),
        bytes_allocated: number(&u[4]),
        reallocs: number(reallocs),
        bytes_grown: number(&r[1]),
    })
}

/// Runs the leaks program; returns its exit code and stderr.
fn run(mode: &str, empty: bool, prefix: &[&str]) -> (i32, String) {
    let program = leaks_program();
    let mut cmd = match prefix.split_first() {
        Some((tool, args)) => {
            let mut cmd = Command::new(tool);
            cmd.args(args).arg(&program);
            cmd
        }
        None => Command::new(&program),
    };
    cmd.env_remove("HEAPPROBE_SUMMARY").env("LEAKS_MODE", mode).env("LEAKS_EMPTY", if empty { "1" } else { "0" });
    let out = cmd.output().unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"));
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn difference(with: Printed, without: Printed) -> Printed {
    Printed {
        in_use_bytes: with.in_use_bytes - without.in_use_bytes,
        in_use_blocks: with.in_use_blocks - without.in_use_blocks,
        allocs: with.allocs - without.allocs,
        frees: with.frees - without.frees,
        bytes_allocated: with.bytes_allocated - without.bytes_allocated,
        reallocs: with.reallocs - without.reallocs,
        bytes_grown: with.bytes_grown - without.bytes_grown,
    }
}

/// What the known pattern adds: 3 + 5 + 1 allocs; 5 + 1 frees; 2 reallocs;
/// 300 + 250 + 16 bytes allocated plus 16 + 32 of realloc growth.
const PATTERN: Printed = Printed {
    in_use_bytes: 300,
    in_use_blocks: 3,
    allocs: 9,
    frees: 6,
    bytes_allocated: 614,
    reallocs: 2,
    bytes_grown: 48,
};

#[test]
fn printed_when_main_returns_with_the_exact_figures() {
    let (code, stderr) = run("return", false, &[]);
    assert_eq!(code, 0, "{stderr}");
    let with = parse_summary(&stderr).expect("a summary");
    let (_, control) = run("return", true, &[]);
    let without = parse_summary(&control).expect("a summary in the control run");
    assert_eq!(difference(with, without), PATTERN, "{stderr}\n{control}");
    // The summary comes last: after the program's own output.
    assert!(stderr.trim_end().ends_with("(valgrind counts each as 1 alloc + 1 free)"), "{stderr}");
}

#[test]
fn printed_on_process_exit_with_the_exact_figures() {
    let (code, stderr) = run("exit", false, &[]);
    assert_eq!(code, 3, "{stderr}");
    let with = parse_summary(&stderr).expect("a summary on process::exit");
    let (_, control) = run("exit", true, &[]);
    assert_eq!(difference(with, parse_summary(&control).expect("control")), PATTERN, "{stderr}\n{control}");
    // process::exit runs no destructors: the live 10-byte vector is in use.
    let (_, returned) = run("return", false, &[]);
    let returned = parse_summary(&returned).unwrap();
    assert_eq!((with.in_use_bytes, with.in_use_blocks), (returned.in_use_bytes + 10, returned.in_use_blocks + 1));
}

#[test]
fn silent_when_not_asked() {
    let (code, stderr) = run("silent", false, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.starts_with("before "), "the program ran: {stderr}");
    assert_eq!(parse_summary(&stderr), None, "{stderr}");
    assert!(!stderr.contains("HEAP SUMMARY"), "{stderr}");
}

#[test]
fn printed_when_the_environment_asks_with_no_call_in_main() {
    // LEAKS_MODE=silent: the program never calls `summary_at_exit`; the
    // global wrapper arms the summary on its first allocation.
    let with_env = |empty: bool, value: &str| {
        let mut cmd = Command::new(leaks_program());
        cmd.env("HEAPPROBE_SUMMARY", value)
            .env("LEAKS_MODE", "silent")
            .env("LEAKS_EMPTY", if empty { "1" } else { "0" });
        let out = cmd.output().unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"));
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = with_env(false, "1");
    let with = parse_summary(&stderr).expect("HEAPPROBE_SUMMARY=1 prints the summary");
    let control = with_env(true, "1");
    assert_eq!(difference(with, parse_summary(&control).expect("control")), PATTERN, "{stderr}\n{control}");
    // `0` and empty mean no.
    for value in ["0", ""] {
        let stderr = with_env(false, value);
        assert_eq!(parse_summary(&stderr), None, "HEAPPROBE_SUMMARY={value:?}: {stderr}");
    }
}

/// valgrind's figures from its own HEAP SUMMARY and LEAK SUMMARY.
#[derive(Debug)]
struct Valgrind {
    in_use_bytes: u64,
    in_use_blocks: u64,
    allocs: u64,
    frees: u64,
    definitely_lost: (u64, u64),
}

fn parse_valgrind(stderr: &str) -> Valgrind {
    // `==PID==     in use at exit: 844 bytes in 4 blocks`
    let field = |label: &str| -> Vec<u64> {
        let line = stderr
            .lines()
            .filter(|l| l.starts_with("==") && !l.contains("heapprobe:"))
            .find_map(|l| l.split_once(label).map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("valgrind printed no {label:?}:\n{stderr}"));
        line.split_whitespace().filter_map(|w| w.trim_end_matches(',').replace(',', "").parse().ok()).collect()
    };
    let in_use = field("in use at exit: ");
    let usage = field("total heap usage: ");
    let lost = field("definitely lost: ");
    Valgrind {
        in_use_bytes: in_use[0],
        in_use_blocks: in_use[1],
        allocs: usage[0],
        frees: usage[1],
        definitely_lost: (lost[0], lost[1]),
    }
}

fn valgrind_available() -> bool {
    if Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    let message = "SKIPPED: needs valgrind (apt-get install -y valgrind). `bash .ci/run` installs it.";
    assert!(!support::in_ci(), "CI=true, so a missing tool is a failure: {message}");
    eprintln!("\n========== {message} ==========\n");
    false
}

/// Compares heapprobe's summary with valgrind's HEAP SUMMARY of one run.
/// Returns both, for the caller's own checks.
fn agree_with_valgrind(program: &Path, args: &[&str], env: &[(&str, &str)]) -> (Printed, Valgrind, String) {
    let out = Command::new("valgrind")
        .args(["--tool=memcheck", "--leak-check=full"])
        .arg(program)
        .args(args)
        .env_remove("HEAPPROBE_SUMMARY")
        .envs(env.iter().copied())
        .output()
        .expect("failed to run valgrind");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let ours = parse_summary(&stderr).unwrap_or_else(|| panic!("no heapprobe summary:\n{stderr}"));
    let theirs = parse_valgrind(&stderr);
    // Rust's allocations all go through the wrapper, and whatever libc
    // allocated itself (before main: glibc's pthread_getattr_np reading
    // /proc/self/maps for std's stack guard) it has freed by exit: so what
    // is in use at exit is the same set of blocks.
    assert_eq!((ours.in_use_bytes, ours.in_use_blocks), (theirs.in_use_bytes, theirs.in_use_blocks), "{stderr}");
    // valgrind counts a realloc as one alloc and one free, and also counts
    // libc's own calls; both sides balance to the blocks in use.
    assert!(theirs.allocs >= ours.allocs + ours.reallocs, "{stderr}");
    assert_eq!(theirs.allocs - theirs.frees, ours.allocs - ours.frees, "{stderr}");
    (ours, theirs, stderr)
}

#[test]
fn agrees_with_valgrind_heap_summary() {
    if !valgrind_available() {
        return;
    }
    let (ours, theirs, stderr) = agree_with_valgrind(&leaks_program(), &[], &[("LEAKS_MODE", "return")]);
    // valgrind finds exactly the pattern's 3 leaked blocks.
    assert_eq!(theirs.definitely_lost, (300, 3), "{stderr}");
    assert!(ours.in_use_bytes >= 300, "{stderr}");
}

/// The seed-style example (`examples/protocol.rs`): the summary it prints
/// at exit and valgrind's agree on what is in use, and valgrind finds no
/// leak in it.
#[test]
fn the_protocol_example_agrees_with_valgrind() {
    if !valgrind_available() {
        return;
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--package", "heapprobe", "--example", "protocol"])
        .current_dir(support::root())
        .status()
        .expect("failed to run cargo build --example protocol");
    assert!(status.success(), "cargo build --example protocol exited with {status}");
    let example = support::root().join("target/debug/examples/protocol");
    let (ours, theirs, stderr) = agree_with_valgrind(&example, &["10000"], &[]);
    assert_eq!(theirs.definitely_lost, (0, 0), "{stderr}");
    // 10,000 messages through each allocator: the global run's 10,000
    // boxes are among the allocs, the pool's are not.
    assert!(ours.allocs >= 10_000 && ours.allocs < 11_000, "{stderr}");
}
