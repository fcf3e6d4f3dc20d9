//! One snapshot name, two checks (issue 21, point 7): with
//! `HEAPPROBE_UPDATE=1` each would write the file in turn, the last writer
//! winning, and the next run would pass every check that allocates less.
//! The second check to claim a name fails, naming both places, whether
//! the two are in one test binary or in two processes of one run.

use std::alloc::System;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;

use heapprobe::snapshot::{Outcome, Snapshot, Update, Verdict};
use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

fn available() -> bool {
    let ((), profile) = GLOBAL.profile(|| drop(black_box(vec![0u8; 8])));
    if profile.samples() == 0 {
        eprintln!("SKIPPED: the in-process profiler is unavailable here:\n{profile}");
    }
    profile.samples() > 0
}

/// `FILE:LINE:` of the check in `function` (on the line after its `fn`).
fn site(function: &str) -> String {
    let source = include_str!("snapshot_names.rs");
    let line = source.lines().position(|l| l.starts_with(&format!("fn {function}("))).unwrap() + 2;
    format!("{}:{line}:", file!())
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("heapprobe-names-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn small(dir: &Path) -> Verdict {
    Snapshot::in_dir(dir, "shared").update(Update::Always).run(&GLOBAL, || black_box(vec![0u8; 10])).1
}

fn large(dir: &Path) -> Verdict {
    Snapshot::in_dir(dir, "shared").update(Update::Always).run(&GLOBAL, || black_box(vec![0u8; 5000])).1
}

#[test]
fn two_checks_of_one_name_in_one_binary_fail_with_both_locations() {
    if !available() {
        return;
    }
    let dir = scratch("one");
    // The same check again (a loop, a rerun) is no collision.
    for _ in 0..2 {
        let first = large(&dir);
        assert!(first.outcome.passed(), "{}", first.message);
    }
    let written = std::fs::read_to_string(dir.join("shared.allocs")).unwrap();
    let second = small(&dir);
    assert_eq!(second.outcome, Outcome::Error, "{}", second.message);
    let message = &second.message;
    assert!(message.contains(&format!("checked at {}", site("large"))), "the first check's line: {message}");
    assert!(message.contains(&format!("here at {}", site("small"))), "the second check's line: {message}");
    assert!(message.contains("two_checks_of_one_name_in_one_binary_fail_with_both_locations"), "{message}");
    assert_eq!(std::fs::read_to_string(dir.join("shared.allocs")).unwrap(), written, "not overwritten");
    let _ = std::fs::remove_dir_all(dir);
}

/// Run by `two_processes_…` in a process of its own: checks the snapshot
/// named in the environment from one of two places.
#[test]
fn child_check() {
    let (Some(dir), Some(site)) = (std::env::var_os("HEAPPROBE_NAMES_DIR"), std::env::var_os("HEAPPROBE_NAMES_SITE"))
    else {
        return;
    };
    let dir = PathBuf::from(dir);
    let verdict = if site == "large" { large(&dir) } else { small(&dir) };
    assert!(verdict.outcome.passed(), "{}", verdict.message);
}

#[test]
fn two_processes_of_one_run_sharing_a_name_fail_with_both_locations() {
    if !available() {
        return;
    }
    let dir = scratch("two");
    let exe = std::env::current_exe().unwrap();
    let run = |site: &str| {
        Command::new(&exe)
            .args(["--exact", "child_check", "--nocapture"])
            .env("HEAPPROBE_NAMES_DIR", &dir)
            .env("HEAPPROBE_NAMES_SITE", site)
            .env_remove("CI")
            .output()
            .unwrap()
    };
    let first = run("large");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let second = run("small");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second process passed:\n{stderr}");
    assert!(stderr.contains(&format!("checked at {}", site("large"))), "{stderr}");
    assert!(stderr.contains(&format!("here at {}", site("small"))), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}
