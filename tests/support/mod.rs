//! Helpers shared by the tests that need root, perf or bpftrace.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// True when running in CI (`CI=true`), where a missing tool is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Checks that the tracing prerequisites hold. In CI a missing one panics;
/// elsewhere the test prints one loud line and is skipped (returns false).
pub fn tracing_available(test: &str, tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push(String::from("root (run the tests as root, or `sudo -E cargo test`)"));
    }
    for tool in tools {
        let ok = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
        if !ok {
            let package = if *tool == "perf" { "linux-perf" } else { tool };
            missing.push(format!("{tool} (apt-get install -y {package})"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let message = format!("SKIPPED {test}: needs {}. `bash .ci/run` installs everything.", missing.join(", "));
    if in_ci() {
        panic!("CI=true, so a missing tool is a failure: {message}");
    }
    eprintln!("\n========== {message} ==========\n");
    false
}

/// The workspace root.
pub fn root() -> PathBuf {
    // This module is also compiled into xtask's tests (`#[path]`), whose
    // manifest directory is `xtask/`.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match manifest.file_name() {
        Some(name) if name == "xtask" => manifest.parent().expect("xtask/ has a parent").to_path_buf(),
        _ => manifest,
    }
}

/// Which linker built a fixture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linker {
    /// rustc's default (rust-lld on x86_64-unknown-linux-gnu).
    Default,
    /// GNU ld, through `-C link-arg=-fuse-ld=bfd`.
    Bfd,
}

/// Which probe backend the fixture is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// heapprobe's default: the `probe` crate, no semaphores.
    Probe,
    /// The `usdt` crate: semaphore-guarded probes.
    Usdt,
}

/// Builds the fixture binary with `linker` and `backend` in its own target
/// directory and returns the executable's path.
pub fn build_fixture(linker: Linker, backend: Backend) -> PathBuf {
    let (dir, flags) = match linker {
        Linker::Default => ("fixture-default", ""),
        Linker::Bfd => ("fixture-bfd", "-C link-arg=-fuse-ld=bfd"),
    };
    let (dir, features) = match backend {
        Backend::Probe => (dir.to_owned(), ""),
        Backend::Usdt => (format!("{dir}-usdt"), "usdt"),
    };
    let target_dir = root().join("target").join(dir);
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--package", "heapprobe-fixture", "--features", features, "--target-dir"])
        .arg(&target_dir)
        .env("RUSTFLAGS", flags)
        .current_dir(root())
        .status()
        .expect("failed to run cargo build for the fixture");
    assert!(status.success(), "cargo build of the fixture ({linker:?}, {backend:?}) exited with {status}");
    let exe = target_dir.join("debug").join("heapprobe-fixture");
    assert!(exe.exists(), "{} missing after build", exe.display());
    exe
}

/// Asserts that no heapprobe uprobe is left registered by this process or by
/// one that has exited (such as an xtask run). Groups are named
/// `heapprobe_PID_…` after the process that registered them; those of other
/// live processes (a trace running beside the tests) are not ours to judge.
pub fn assert_no_heapprobe_uprobes() {
    let tracefs = heapprobe_sdt::tracefs().expect("tracefs");
    let events = std::fs::read_to_string(tracefs.join("uprobe_events")).unwrap_or_default();
    let left_behind = |line: &&str| {
        let Some(at) = line.find(heapprobe_sdt::GROUP_PREFIX) else { return false };
        let pid = line[at + heapprobe_sdt::GROUP_PREFIX.len()..].split('_').next().and_then(|p| p.parse::<u32>().ok());
        match pid {
            Some(pid) => pid == std::process::id() || !Path::new(&format!("/proc/{pid}")).exists(),
            None => true,
        }
    };
    let ours: Vec<&str> = events.lines().filter(left_behind).collect();
    assert!(ours.is_empty(), "uprobes left behind: {ours:#?}");
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("heapprobe-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds the fixture as `cargo xtask trace` builds programs: the `trace`
/// profile (debuginfo) with frame pointers, in `target/trace/`, so that
/// bpftrace's `ustack` walks it. Returns the executable's path.
pub fn build_fixture_with_frame_pointers() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--package", "heapprobe-fixture", "--profile", "trace"])
        .env("RUSTFLAGS", "-C force-frame-pointers=yes")
        .current_dir(root())
        .status()
        .expect("failed to run cargo build for the fixture");
    assert!(status.success(), "cargo build of the fixture with frame pointers exited with {status}");
    let exe = root().join("target/trace/heapprobe-fixture");
    assert!(exe.exists(), "{} missing after build", exe.display());
    exe
}
