//! `cargo heapprobe trace … --baseline HEAD~1` on a throwaway git
//! repository made here: a user's project (a workspace of its own, outside
//! this one, depending on heapprobe by path) whose `HEAD~1` allocates 100 ×
//! 1 KiB in `kilobyte_blocks` and 512 B in `old_block`, and whose `HEAD`
//! allocates 150 × 1 KiB, plus 4 KiB in the new `new_block`, and no
//! `old_block`. The tool runs as a user runs it: `cargo heapprobe` from
//! `PATH`, in the project's directory, with none of this workspace's
//! variables. The diff says +51200 B, +4096 B (new) and −512 B (gone) in
//! those frames and nothing else (perf: with the count deltas +50, +1, −1);
//! the flame graph holds them, red, red and blue; the temporary worktree is
//! gone afterwards, whether the run succeeded, failed to build the
//! revision, or was interrupted; so are the uprobes, and the repository is
//! as it was. Needs root, perf and bpftrace (CI=true: a failure without
//! them); the errors (no such revision, no repository, a worktree left by a
//! killed run) need none.

#[path = "../../tests/support/mod.rs"]
mod support;
#[path = "../../tests/support/svg.rs"]
mod svg;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use support::{assert_no_heapprobe_uprobes, root, tracing_available, TempDir};

const MANIFEST: &str = r#"[package]
name = "known-change"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
heapprobe = { path = "HEAPPROBE" }

[workspace]
"#;

const SAME_PROGRAM: &str = r#"#[global_allocator]
static GLOBAL: heapprobe::Heapprobe<std::alloc::System> = heapprobe::Heapprobe::new(std::alloc::System);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::hint::black_box(args);
}
"#;

const REVISION_A: &str = r#"use heapprobe::Heapprobe;
use std::alloc::System;
use std::hint::black_box;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

#[inline(never)]
fn kilobyte_blocks(n: usize, keep: &mut Vec<Box<[u8]>>) {
    for _ in 0..n {
        keep.push(black_box(vec![1u8; 1024].into_boxed_slice()));
    }
}

#[inline(never)]
fn old_block(keep: &mut Vec<Box<[u8]>>) {
    keep.push(black_box(vec![2u8; 512].into_boxed_slice()));
}

fn main() {
    let mut keep: Vec<Box<[u8]>> = Vec::with_capacity(200);
    kilobyte_blocks(100, &mut keep);
    old_block(&mut keep);
    black_box(&keep);
}
"#;

const REVISION_B: &str = r#"use heapprobe::Heapprobe;
use std::alloc::System;
use std::hint::black_box;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

#[inline(never)]
fn kilobyte_blocks(n: usize, keep: &mut Vec<Box<[u8]>>) {
    for _ in 0..n {
        keep.push(black_box(vec![1u8; 1024].into_boxed_slice()));
    }
}

#[inline(never)]
fn new_block(keep: &mut Vec<Box<[u8]>>) {
    keep.push(black_box(vec![3u8; 4096].into_boxed_slice()));
}

fn main() {
    let mut keep: Vec<Box<[u8]>> = Vec::with_capacity(200);
    kilobyte_blocks(150, &mut keep);
    new_block(&mut keep);
    black_box(&keep);
}
"#;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The throwaway repository: revision A, then B on top.
fn repository(dir: &Path) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    git(dir, &["init", "--quiet"]);
    git(dir, &["config", "user.email", "test@heapprobe.invalid"]);
    git(dir, &["config", "user.name", "heapprobe tests"]);
    git(dir, &["config", "commit.gpgsign", "false"]);
    let manifest = MANIFEST.replace("HEAPPROBE", &root().display().to_string());
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    // The workspace's lock file: the same dependency versions, no surprises.
    std::fs::copy(root().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::write(dir.join(".gitignore"), "/target\n").unwrap();
    std::fs::write(dir.join("src/main.rs"), REVISION_A).unwrap();
    // A program that is the same at both revisions and allocates for its
    // own arguments, `argv[0]` included (as a test harness does; libtest
    // itself is not used here: its console allocates a little differently
    // from run to run).
    std::fs::create_dir_all(dir.join("src/bin")).unwrap();
    std::fs::write(dir.join("src/bin/same.rs"), SAME_PROGRAM).unwrap();
    // Pruned to this project's dependencies by cargo now, not by the first build.
    let status = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "cargo metadata in the throwaway project");
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "--quiet", "-m", "A: 100 KiB and the old block"]);
    std::fs::write(dir.join("src/main.rs"), REVISION_B).unwrap();
    git(dir, &["commit", "--quiet", "-am", "B: 150 KiB and the new block"]);
}

/// `cargo heapprobe ARGS` as a user runs it in `dir`: found on `PATH` (the
/// binary cargo built for these tests), `PWD` is `dir`, none of the
/// variables the test's own cargo set; the project builds in a target
/// directory kept between runs (its dependencies are built once).
fn cargo_heapprobe(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("heapprobe").args(args).current_dir(dir).env("PWD", dir);
    for (var, _) in std::env::vars_os() {
        let var = var.to_string_lossy().into_owned();
        if (var.starts_with("CARGO_") && var != "CARGO_HOME") || var == "CARGO" || var == "RUSTFLAGS" {
            cmd.env_remove(&var);
        }
    }
    let tool = Path::new(env!("CARGO_BIN_EXE_cargo-heapprobe")).parent().unwrap().to_path_buf();
    let cargo = Path::new(env!("CARGO")).parent().unwrap().to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = [tool, cargo].into_iter().chain(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(dirs).unwrap());
    cmd.env("CARGO_TARGET_DIR", root().join("target/baseline-project"));
    cmd
}

/// Runs `cargo heapprobe ARGS` in `dir`; its output and pid.
fn run(dir: &Path, args: &[&str]) -> (Output, u32) {
    let child = cargo_heapprobe(dir, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run cargo");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "$ cargo heapprobe {args:?}\n--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, pid)
}

/// One test at a time: they share the kernel's uprobes and the target
/// directory, a run sweeps the worktree directories of dead pids, and the
/// error test makes one on purpose.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where the tool run as process `pid` checks a revision out.
fn worktree_dir(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("heapprobe-baseline-{pid}"))
}

/// The tool's pid, given `cargo heapprobe`'s: cargo replaces itself with
/// `cargo-heapprobe` (exec), or runs it as its child.
fn tool_pid(cargo: u32) -> u32 {
    let is_tool =
        |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "cargo-heapprobe");
    if is_tool(&cargo.to_string()) {
        return cargo;
    }
    let children = std::fs::read_to_string(format!("/proc/{cargo}/task/{cargo}/children")).unwrap_or_default();
    let tool = children.split_whitespace().find(|pid| is_tool(pid)).and_then(|pid| pid.parse().ok());
    tool.unwrap_or_else(|| panic!("no cargo-heapprobe process under cargo (pid {cargo})"))
}

/// The temporary worktree a run names on stderr; it must be gone.
fn assert_worktree_removed(stderr: &str) {
    let worktree = stderr
        .lines()
        .find_map(|l| l.split("checked out in a temporary worktree (").nth(1))
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("the worktree is not named in:\n{stderr}"));
    assert!(worktree.contains("heapprobe-baseline-"), "{worktree}");
    assert!(!Path::new(worktree).exists(), "{worktree} is left");
}

/// The repository has its one worktree again, and nothing changed in it.
fn assert_repository_untouched(repo: &Path) {
    assert_eq!(git(repo, &["worktree", "list", "--porcelain"]).matches("worktree ").count(), 1);
    assert_eq!(git(repo, &["status", "--porcelain"]), "");
}

#[test]
fn baseline_head_1_shows_the_known_change() {
    let _serial = serial();
    if !tracing_available("baseline_head_1_shows_the_known_change", &["bpftrace", "git"]) {
        return;
    }
    known_change_against_head_1("bpftrace");
}

/// A program that did not change shows no change, though the baseline's
/// executable sits at a longer path (`heapprobe-baseline/` in the target
/// directory) and it allocates for its `argv[0]`: both sides run it from
/// paths of one length.
#[test]
fn an_unchanged_program_shows_no_change_whatever_its_path() {
    let _serial = serial();
    if !tracing_available("an_unchanged_program_shows_no_change_whatever_its_path", &["perf", "git"]) {
        return;
    }
    let tmp = TempDir::new("xtask-baseline-same");
    let repo = tmp.path().join("repo");
    repository(&repo);
    let svg = tmp.path().join("same.svg");
    let (out, _) = run(&repo, &["trace", "--bin", "same", "--baseline", "HEAD~1", "-o", svg.to_str().unwrap()]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("  change: +0 B ("), "{stdout}");
    assert!(stdout.contains("  stacks: 0 grew, 0 shrank, "), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_worktree_removed(&stderr);
    // The links both sides ran through are gone too.
    let worktree = stderr.split("checked out in a temporary worktree (").nth(1).and_then(|r| r.split(')').next());
    let links = format!("{}.run", worktree.expect("the worktree is named"));
    assert!(!Path::new(&links).exists(), "{links} left behind");
    assert_no_heapprobe_uprobes();
}

/// With perf, the count deltas too: perf.data is folded a second time, by
/// count (every event of this program's is under a right-aligned name in
/// `perf script`; perf.data is read directly).
#[test]
fn baseline_head_1_shows_the_known_change_with_counts_under_perf() {
    let _serial = serial();
    if !tracing_available("baseline_head_1_shows_the_known_change_with_counts_under_perf", &["perf", "git"]) {
        return;
    }
    known_change_against_head_1("perf");
}

fn known_change_against_head_1(backend: &str) {
    let tmp = TempDir::new(&format!("xtask-baseline-{backend}"));
    let repo = tmp.path().join("repo");
    repository(&repo);
    let out_dir = tmp.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let svg_path = out_dir.join("diff.svg");
    let o = svg_path.to_str().unwrap();
    let (out, _) =
        run(&repo, &["trace", "--bin", "known-change", "--backend", backend, "--baseline", "HEAD~1", "-o", o]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The diff's summary, after the two traces' own.
    let summary =
        &stdout[stdout.find("\nheapprobe diff (bytes): ").unwrap_or_else(|| panic!("no diff in:\n{stdout}"))..];
    let line = |frame: &str| {
        let needle = format!("  known_change::{frame} <- ");
        summary.lines().find(|l| l.contains(&needle)).unwrap_or_else(|| panic!("no {frame} line in:\n{stdout}"))
    };
    // perf gives the count deltas as well; bpftrace sums by bytes alone.
    let (kb, new, old) = match backend {
        "perf" => ("+51200 B  +50  ", "+4096 B   +1  ", "-512 B  -1  "),
        _ => ("+51200 B  ", "+4096 B  ", "-512 B  "),
    };
    assert!(line("kilobyte_blocks").trim_start().starts_with(kb), "{stdout}");
    assert!(line("new_block").trim_start().starts_with(new) && line("new_block").ends_with("(new)"), "{stdout}");
    assert!(line("old_block").trim_start().starts_with(old) && line("old_block").ends_with("(gone)"), "{stdout}");
    if backend == "perf" {
        assert!(stdout.contains(", count +50 ("), "{stdout}");
        for side in ["before", "after"] {
            let counts = std::fs::read_to_string(out_dir.join(format!("diff.{side}.count.folded"))).unwrap();
            assert!(counts.starts_with("# heapprobe: weight=count event=alloc\n"), "{counts}");
        }
    } else {
        assert!(stdout.contains("no count deltas: bpftrace sums by the weight alone"), "{stdout}");
    }
    // Nothing else changed: the rest of the program allocates the same.
    assert!(
        stdout.contains("top 2 stacks that grew (of 2):\n") && stdout.contains("top 1 stack that shrank (of 1):\n"),
        "{stdout}"
    );
    assert!(stdout.contains("  change: +54784 B ("), "{stdout}");
    // Both sides lost nothing (each trace's own check, printed in its summary).
    assert_eq!(stdout.matches("lost events: 0\n").count(), 2, "{stdout}");

    let frames = svg::frames(&std::fs::read_to_string(&svg_path).unwrap());
    let one = |name: &str| {
        let found = svg::named(&frames, &format!("known_change::{name}"));
        assert_eq!(found.len(), 1, "one {name} frame");
        found[0].clone()
    };
    assert!(one("kilobyte_blocks").is_red() && one("kilobyte_blocks").delta == 51200);
    assert!(one("new_block").is_red() && one("new_block").class.contains("new"));
    assert!(one("old_block").is_blue() && one("old_block").class.contains("gone"));
    // Both traces are there too, with their weight recorded.
    for side in ["before", "after"] {
        let folded = std::fs::read_to_string(out_dir.join(format!("diff.{side}.folded"))).unwrap();
        assert!(folded.starts_with("# heapprobe: weight=bytes event=alloc\n"), "{folded}");
        assert!(out_dir.join(format!("diff.{side}.svg")).is_file());
    }
    // The revision was built apart, in the project's target directory.
    assert!(
        stderr.contains(&format!("built in {}", root().join("target/baseline-project/heapprobe-baseline").display()))
    );
    // No scratch left next to the output: only what the run wrote.
    let mut written: Vec<String> =
        std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    written.sort();
    let mut expected = vec!["diff.after.folded", "diff.after.svg", "diff.before.folded", "diff.before.svg", "diff.svg"];
    if backend == "perf" {
        expected.extend(["diff.after.count.folded", "diff.before.count.folded"]);
        expected.sort();
    }
    assert_eq!(written, expected);
    // The worktree is gone, and the repository is as it was.
    assert_worktree_removed(&stderr);
    assert_repository_untouched(&repo);
    assert_no_heapprobe_uprobes();
}

/// Every other exit path removes the worktree too: a revision that does
/// not build, and Ctrl-C (SIGINT to the tool alone, as `kill -INT` sends
/// it) while the baseline is built and traced.
#[test]
fn a_failed_or_interrupted_baseline_leaves_no_worktree() {
    let _serial = serial();
    if !tracing_available("a_failed_or_interrupted_baseline_leaves_no_worktree", &["perf", "git"]) {
        return;
    }
    let tmp = TempDir::new("xtask-baseline-exits");
    let repo = tmp.path().join("repo");
    repository(&repo);
    let svg_path = tmp.path().join("diff.svg");
    let o = svg_path.to_str().unwrap();

    // HEAD~1 does not compile.
    std::fs::write(repo.join("src/main.rs"), "fn main() { this is not rust }\n").unwrap();
    git(&repo, &["commit", "--quiet", "-am", "C: broken"]);
    std::fs::write(repo.join("src/main.rs"), REVISION_B).unwrap();
    git(&repo, &["commit", "--quiet", "-am", "D: B again"]);
    let (out, _) = run(&repo, &["trace", "--bin", "known-change", "--baseline", "HEAD~1", "-o", o]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: tracing the baseline HEAD~1 ("), "{stderr}");
    assert!(stderr.contains("see cargo's errors above"), "{stderr}");
    assert_worktree_removed(&stderr);
    assert!(!svg_path.exists());
    assert_repository_untouched(&repo);

    // Ctrl-C while the baseline is built (or traced): the run stops after
    // it, says so, and removes the worktree.
    let mut child = cargo_heapprobe(&repo, &["trace", "--bin", "known-change", "--baseline", "HEAD~2", "-o", o])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap());
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.starts_with("==> BEFORE: HEAD~2") {
            let tool = tool_pid(child.id());
            // SAFETY: kill(2) with a pid of ours and SIGINT has no memory effects.
            assert_eq!(unsafe { libc::kill(tool as libc::pid_t, libc::SIGINT) }, 0);
        }
        line.clear();
    }
    let status = child.wait().unwrap();
    let stdout = reader.join().unwrap();
    eprintln!("$ cargo heapprobe trace … --baseline HEAD~2, interrupted\n--- stdout\n{stdout}--- stderr\n{seen}");
    assert!(seen.contains("==> BEFORE: HEAD~2"), "{seen}");
    assert!(!status.success());
    // Stopped after the baseline (the usual case: the signal lands while it
    // builds), or, on a slow machine, while it records (the program dies of
    // the forwarded SIGINT) or during the working tree's trace (then the
    // diff of what was recorded is written, and the run still fails).
    assert!(seen.contains("error: interrupted (Ctrl-C)"), "{seen}");
    if !seen.contains("==> AFTER") {
        assert!(!svg_path.exists(), "no diff without the working tree's trace");
    }
    assert_worktree_removed(&seen);
    assert_repository_untouched(&repo);
    assert_no_heapprobe_uprobes();
}

#[test]
fn a_bad_revision_or_no_repository_is_a_clear_error_and_stale_worktrees_are_swept() {
    let _serial = serial();
    let tmp = TempDir::new("xtask-baseline-errors");
    let repo = tmp.path().join("repo");
    repository(&repo);
    // A worktree left by a run that was killed: its pid is dead.
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale = worktree_dir(dead_pid);
    git(&repo, &["worktree", "add", "--detach", "--quiet", stale.to_str().unwrap(), "HEAD~1"]);
    let svg_path = tmp.path().join("never.svg");
    let o = svg_path.to_str().unwrap();

    // Tracing needs root: without it the run stops there (and says how),
    // before any checkout; the sweep is a root run's.
    let (out, _) = run(&repo, &["trace", "--bin", "known-change", "--baseline", "no-such-ref", "-o", o]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !support::in_ci() && unsafe { libc::geteuid() } != 0 {
        assert!(stderr.contains("needs root"), "{stderr}");
        eprintln!("\n========== SKIPPED the rest of this test: needs root ==========\n");
        return;
    }
    assert!(stderr.contains("--baseline \"no-such-ref\": no such commit in"), "{stderr}");
    assert!(stderr.contains("left by a killed run"), "{stderr}");
    assert!(!stale.exists(), "the stale worktree is removed");
    assert_repository_untouched(&repo);

    let plain = tmp.path().join("not-a-repository");
    std::fs::create_dir_all(plain.join("src")).unwrap();
    std::fs::write(plain.join("Cargo.toml"), MANIFEST.replace("HEAPPROBE", &root().display().to_string())).unwrap();
    std::fs::write(plain.join("src/main.rs"), REVISION_A).unwrap();
    std::fs::copy(root().join("Cargo.lock"), plain.join("Cargo.lock")).unwrap();
    let (out, _) = run(&plain, &["trace", "--bin", "known-change", "--baseline", "HEAD~1", "-o", o]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "--baseline compares with a git revision, but the workspace {} is not in a git repository",
            plain.display()
        )),
        "{stderr}"
    );
    let (out, _) = run(&repo, &["trace", "--pid", "1", "--baseline", "HEAD~1", "-o", o]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"), "--baseline and --pid");
    assert!(!svg_path.exists());
}
