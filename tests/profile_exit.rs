//! The profile written at exit (`HEAPPROBE_PROFILE=…,out=PREFIX`, issue 21,
//! point 5): a run that took no sample still writes its (empty) profile
//! and says how many samples there were; and the heap summary printed at
//! exit (`HEAPPROBE_SUMMARY=1`), which names stacks while the profiler
//! still runs, adds nothing of its own to the profile. The program is this
//! test binary, run again with the variables set (`exit_program`).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;

use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<std::alloc::System> = Heapprobe::new(std::alloc::System);

/// The program: a few small blocks, some kept until exit.
#[test]
fn exit_program() {
    if std::env::var_os("HEAPPROBE_EXIT_PROGRAM").is_none() {
        return;
    }
    let kept: Vec<Vec<u8>> = (0..3).map(|i| black_box(vec![i as u8; 100])).collect();
    std::mem::forget(kept);
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("heapprobe-exit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the program with `HEAPPROBE_PROFILE=PROFILE,out=DIR/p` (and the
/// summary, if `summary`); returns its stderr.
fn run(dir: &Path, profile: &str, summary: bool) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "exit_program", "--test-threads=1"])
        .env("HEAPPROBE_EXIT_PROGRAM", "1")
        .env("HEAPPROBE_PROFILE", format!("{profile},out={}", dir.join("p").display()));
    if summary {
        cmd.env("HEAPPROBE_SUMMARY", "1");
    } else {
        cmd.env_remove("HEAPPROBE_SUMMARY");
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{cmd:?} exited with {}: {stderr}", out.status);
    stderr
}

#[test]
fn a_run_without_a_sample_writes_its_empty_profile_and_says_so() {
    let dir = scratch("empty");
    let stderr = run(&dir, "rate=16g", false);
    for file in ["p.folded", "p.inuse.folded", "p.count.folded", "p.json", "p.svg"] {
        assert!(dir.join(file).is_file(), "{file} not written:\n{stderr}");
    }
    assert!(stderr.contains("heapprobe: wrote "), "{stderr}");
    assert!(stderr.contains("(no sample: no thread allocated the 17179869184 bytes between two samples)"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn naming_the_summarys_stacks_is_not_in_the_profile() {
    let dir = scratch("summary");
    let stderr = run(&dir, "rate=1", true);
    assert!(stderr.contains("heapprobe: top live stacks ("), "the summary named its stacks:\n{stderr}");
    let wrote = stderr.lines().find(|l| l.starts_with("heapprobe: wrote ")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(wrote.ends_with(" samples)"), "{wrote}");
    let folded = std::fs::read_to_string(dir.join("p.folded")).unwrap();
    // The symboliser's frames, and heapprobe's summary and readers. (The
    // string naming where the profile goes, allocated by the constructor
    // that starts the profiler, stays: a block live until exit, listed so
    // that the in-use view adds up to the exact counters.)
    let ours = ["gimli::", "addr2line::", "backtrace::", "heapprobe::summary::", "heapprobe::profile::report::"];
    let own: Vec<&str> = folded
        .lines()
        .filter(|l| l.split(';').any(|f| ours.iter().any(|o| f.trim_start_matches('<').starts_with(o))))
        .collect();
    assert!(own.is_empty(), "heapprobe's own work in the profile ({} stacks), first: {:?}", own.len(), own.first());
    let _ = std::fs::remove_dir_all(dir);
}
