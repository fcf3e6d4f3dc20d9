//! `cargo xtask trace … --baseline HEAD~1` on a throwaway git repository:
//! a user's project whose `HEAD~1` allocates 100 × 1 KiB in
//! `kilobyte_blocks` and 512 B in `old_block`, and whose `HEAD` allocates
//! 150 × 1 KiB, plus 4 KiB in the new `new_block`, and no `old_block`. The
//! diff says +51200 B, +4096 B (new) and −512 B (gone) in those frames and
//! nothing else; the flame graph holds them, red, red and blue; the
//! temporary worktree is gone afterwards, and so are the uprobes.
//! Needs root and bpftrace (CI=true: a failure without them); the errors
//! (no such revision, no repository, a worktree left by a killed run)
//! need neither.

#[path = "../../tests/support/mod.rs"]
mod support;
#[path = "../../tests/support/svg.rs"]
mod svg;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use support::{assert_no_heapprobe_uprobes, root, tracing_available, TempDir};

const MANIFEST: &str = r#"[package]
name = "known-change"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
heapprobe = { path = "HEAPPROBE" }

[profile.trace]
inherits = "dev"
debug = true

[workspace]
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
    // Pruned to this project's dependencies by cargo now, not by the first build.
    let status = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "cargo metadata in the throwaway project");
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "--quiet", "-m", "A: 100 KiB and the old block"]);
    std::fs::write(dir.join("src/main.rs"), REVISION_B).unwrap();
    git(dir, &["commit", "--quiet", "-am", "B: 150 KiB and the new block"]);
}

/// The xtask with the workspace set to `repo`, building in a target
/// directory kept between runs (dependencies built once).
fn xtask(repo: &Path, args: &[&str]) -> (Output, u32) {
    let child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(repo)
        .env("HEAPPROBE_WORKSPACE", repo)
        .env("CARGO_TARGET_DIR", root().join("target/baseline-project"))
        .env_remove("RUSTFLAGS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the xtask");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "$ cargo xtask {args:?}\n--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, pid)
}

/// One test at a time: a run sweeps the worktree directories of dead pids,
/// and the error test makes one on purpose.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn worktree_dir(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("heapprobe-baseline-{pid}"))
}

#[test]
fn baseline_head_1_shows_the_known_change() {
    if !tracing_available("baseline_head_1_shows_the_known_change", &["bpftrace", "git"]) {
        return;
    }
    known_change_against_head_1("bpftrace");
}

/// With perf, the count deltas too (perf.data is folded a second time, by
/// count). Ignored on this branch: its perf script parser drops the events
/// whose name perf right-aligns (`alloc__8` under `alloc__12`), which is
/// every event of this program; heapprobe-cli's parser reads them.
#[test]
#[ignore = "needs the perf parser that reads right-aligned event names (heapprobe-cli)"]
fn baseline_head_1_shows_the_known_change_with_counts_under_perf() {
    if !tracing_available("baseline_head_1_shows_the_known_change_with_counts_under_perf", &["perf", "git"]) {
        return;
    }
    known_change_against_head_1("perf");
}

fn known_change_against_head_1(backend: &str) {
    let _serial = serial();
    let tmp = TempDir::new(&format!("xtask-baseline-{backend}"));
    let repo = tmp.path().join("repo");
    repository(&repo);
    let out_dir = tmp.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let svg_path = out_dir.join("diff.svg");
    let (out, pid) = xtask(
        &repo,
        &[
            "trace",
            "--bin",
            "known-change",
            "--backend",
            backend,
            "--baseline",
            "HEAD~1",
            "-o",
            svg_path.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |frame: &str| {
        let needle = format!("  known_change::{frame} <- ");
        stdout.lines().find(|l| l.contains(&needle)).unwrap_or_else(|| panic!("no {frame} line in:\n{stdout}"))
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
        let counts = std::fs::read_to_string(out_dir.join("diff.after.count.folded")).unwrap();
        assert!(counts.starts_with("# heapprobe: weight=count event=alloc\n"), "{counts}");
    } else {
        assert!(stdout.contains("no count deltas: bpftrace sums by the weight alone"), "{stdout}");
    }
    assert!(
        stdout.contains("top 2 stacks that grew (of 2):\n") && stdout.contains("top 1 stack that shrank (of 1):\n")
    );
    assert!(stdout.contains("  change: +54784 B ("), "{stdout}");

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
    // The worktree is gone, and the repository is as it was.
    assert!(!worktree_dir(pid).exists());
    assert_eq!(git(&repo, &["worktree", "list", "--porcelain"]).matches("worktree ").count(), 1);
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
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

    let (out, _) = xtask(&repo, &["trace", "--bin", "known-change", "--baseline", "no-such-ref"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--baseline \"no-such-ref\": no such commit in"), "{stderr}");
    assert!(stderr.contains("left by a killed run"), "{stderr}");
    assert!(!stale.exists(), "the stale worktree is removed");
    assert_eq!(git(&repo, &["worktree", "list", "--porcelain"]).matches("worktree ").count(), 1);

    let plain = tmp.path().join("not-a-repository");
    std::fs::create_dir_all(&plain).unwrap();
    let (out, _) = xtask(&plain, &["trace", "--bin", "known-change", "--baseline", "HEAD~1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not in a git repository"), "{stderr}");
}
