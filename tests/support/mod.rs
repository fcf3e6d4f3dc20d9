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
        // `heapprobe_<pid>_…`, or a script's `heapprobe_sh_<pid>`.
        let group = line[at..].split('/').next().unwrap_or_default();
        match heapprobe_sdt::group_pid(group) {
            Some(pid) if pid == std::process::id() => true,
            Some(pid) if Path::new(&format!("/proc/{pid}")).exists() => false,
            // A dead process's group: ours if it probes a binary of this
            // checkout or of this process's scratch directories. Another
            // checkout's test run beside this one kills traces on purpose
            // and sweeps after them; its groups are not ours to judge.
            _ => line.contains(root().to_str().unwrap_or("\0")) || line.contains(&format!("-{}/", std::process::id())),
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

/// Builds the fixture as `cargo heapprobe trace` builds programs: the
/// `heapprobe` profile (debuginfo; the workspace's Cargo.toml defines it as
/// the tool does on cargo's command line) with frame pointers in
/// `build.rustflags`, in `target/heapprobe/`, so that bpftrace's `ustack`
/// walks it and the tool's own builds reuse it. Returns the executable's path.
pub fn build_fixture_with_frame_pointers() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--package", "heapprobe-fixture", "--profile", "heapprobe"])
        .args(["--config", r#"build.rustflags=["-C", "force-frame-pointers=yes"]"#])
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .current_dir(root())
        .status()
        .expect("failed to run cargo build for the fixture");
    assert!(status.success(), "cargo build of the fixture with frame pointers exited with {status}");
    let exe = root().join("target/heapprobe/heapprobe-fixture");
    assert!(exe.exists(), "{} missing after build", exe.display());
    exe
}

/// Threads that allocate and free in a loop (keeping up to 64 strings live)
/// until dropped, to prove a measurement exact while other threads allocate.
pub struct Noise {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Loop rounds completed by all noise threads together.
    rounds: std::sync::Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Noise {
    /// Starts `n` threads; returns once every one has completed a round.
    pub fn start(n: usize) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::{Arc, Barrier};
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let started = Arc::new(Barrier::new(n + 1));
        let threads = (0..n)
            .map(|i| {
                let (stop, rounds, started) = (stop.clone(), rounds.clone(), started.clone());
                std::thread::spawn(move || {
                    let mut first = true;
                    let mut keep = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let v: Vec<u8> = std::hint::black_box(vec![i as u8; 16 + i * 24]);
                        keep.push(std::hint::black_box(format!("{i}-{}", v.len())));
                        if keep.len() > 64 {
                            keep.clear();
                        }
                        rounds.fetch_add(1, Ordering::Relaxed);
                        if std::mem::take(&mut first) {
                            started.wait();
                        }
                    }
                })
            })
            .collect();
        started.wait();
        Self { stop, rounds, threads }
    }

    /// Runs `measure` at least `min_runs` times, and until the noise threads
    /// have completed another 1000 rounds meanwhile, so the measurements
    /// really overlapped with other threads' allocations (on a loaded 2-core
    /// machine the scheduler may otherwise starve them). Returns the runs.
    pub fn overlap(&self, min_runs: usize, mut measure: impl FnMut()) -> usize {
        use std::sync::atomic::Ordering;
        let before = self.rounds.load(Ordering::Relaxed);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let mut runs = 0;
        while runs < min_runs || self.rounds.load(Ordering::Relaxed) < before + 1000 {
            measure();
            runs += 1;
            assert!(std::time::Instant::now() < deadline, "the noise threads made no progress in 120 s");
        }
        runs
    }
}

impl Drop for Noise {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
    }
}
