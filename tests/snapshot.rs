//! Allocation snapshots in process: create, match, grow (a failure with the
//! diff and its flame graph), grow within a tolerance, shrink (a pass that
//! says the snapshot can be lowered), update; the file is the same on every
//! run and every thread; a missing or corrupt snapshot fails. The workload
//! allocates a known pattern: `n` blocks of 1000 bytes in `blocks`, kept in
//! a Vec of capacity `n` (24 bytes a slot).
//!
//! tests/snapshot_outside.rs drives the macro, `HEAPPROBE_UPDATE` and `CI`
//! in a user's project.

#[path = "support/svg.rs"]
mod svg;

use std::alloc::System;
use std::hint::black_box;
use std::path::{Path, PathBuf};

use heapprobe::snapshot::{Outcome, Snapshot, Tolerance, Update, Verdict};
use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

#[inline(never)]
fn blocks(n: usize, keep: &mut Vec<Vec<u8>>) {
    for _ in 0..n {
        keep.push(black_box(vec![7u8; 1000]));
    }
}

#[inline(never)]
fn workload(n: usize) -> usize {
    let mut keep = Vec::with_capacity(n);
    blocks(n, &mut keep);
    keep.len()
}

/// The snapshot check every test makes (one closure, so one stack name).
/// Each test's snapshot has its own name (the file under `dir`, and the
/// diff under `target/heapprobe-reports/`), so that tests running at once never
/// share a file.
fn take(dir: &Path, n: usize, update: Update, tolerance: Option<Tolerance>) -> Verdict {
    let name = dir.file_name().unwrap().to_str().unwrap().split('-').nth(2).unwrap().to_owned();
    let mut snapshot = Snapshot::in_dir(dir, &name).update(update);
    if let Some(tolerance) = tolerance {
        snapshot = snapshot.tolerance(tolerance);
    }
    let (len, verdict) = snapshot.run(&GLOBAL, || workload(n));
    assert_eq!(len, n, "the block's value comes back");
    verdict
}

/// A scratch directory of this test.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("heapprobe-snapshot-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn available() -> bool {
    let ((), profile) = GLOBAL.profile(|| drop(black_box(vec![0u8; 8])));
    if profile.samples() == 0 {
        eprintln!("SKIPPED: the in-process profiler is unavailable here:\n{profile}");
    }
    profile.samples() > 0
}

/// The stack line of `blocks`' allocations.
fn blocks_line(text: &str) -> &str {
    text.lines()
        .find(|l| l.starts_with("snapshot::take::{{closure}};snapshot::workload;snapshot::blocks;"))
        .unwrap_or_else(|| panic!("no blocks stack in:\n{text}"))
}

#[test]
fn create_match_grow_shrink_and_update() {
    if !available() {
        return;
    }
    let dir = scratch("cycle");
    let path = dir.join("cycle.allocs");

    // Create: the exact figures of 10 blocks and the Vec.
    let v = take(&dir, 10, Update::Always, None);
    assert_eq!(v.outcome, Outcome::Created, "{}", v.message);
    assert_eq!(v.path, path);
    let created = std::fs::read_to_string(&path).unwrap();
    assert!(created.starts_with("# heapprobe allocation snapshot"), "{created}");
    assert!(created.contains("\nname: cycle\nallocations: 11\ndeallocations: 11\n"), "{created}");
    assert!(created.contains("\nbytes_allocated: 10240\n") && created.contains("\ncurrent: 0\n"), "{created}");
    // The Vec and the blocks were freed at the end of workload: peak is all of it.
    assert!(created.contains("\npeak: 10240\n"), "{created}");
    assert!(blocks_line(&created).ends_with(" 10000 10"), "{created}");
    assert!(v.message.contains("created (11 allocations, 10240 bytes allocated)"), "{}", v.message);

    // The same code: a match, silently, and the file untouched.
    let v = take(&dir, 10, Update::Auto, None);
    assert_eq!((v.outcome, v.message.as_str()), (Outcome::Matched, ""));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), created);

    // Grow: a failure with both figures, the diff of the stacks and its flame graph.
    let v = take(&dir, 15, Update::Auto, None);
    assert_eq!(v.outcome, Outcome::Grew, "{}", v.message);
    assert!(!v.outcome.passed());
    let m = &v.message;
    assert!(m.contains("  allocations: 11 -> 16 (+5; tolerance none)   GREW beyond the tolerance\n"), "{m}");
    assert!(
        m.contains("  bytes_allocated: 10240 -> 15360 (+5120; tolerance none)   GREW beyond the tolerance\n"),
        "{m}"
    );
    let grew_line = m.lines().find(|l| l.contains("snapshot::blocks <- ")).unwrap_or_else(|| panic!("{m}"));
    assert!(grew_line.trim_start().starts_with("+5000 B  +5  snapshot::blocks <- snapshot::workload"), "{m}");
    assert!(m.contains("HEAPPROBE_UPDATE=1 cargo test"), "{m}");
    let svg_path = v.diff_svg.clone().expect("a diff flame graph");
    assert!(svg_path.ends_with("heapprobe-reports/cycle.diff.svg"), "{}", svg_path.display());
    assert!(svg_path.parent().unwrap().parent().unwrap().join("CACHEDIR.TAG").is_file(), "under target/");
    let frames = svg::frames(&std::fs::read_to_string(&svg_path).unwrap());
    let b = svg::named(&frames, "snapshot::blocks");
    assert!(b.len() == 1 && b[0].is_red() && b[0].delta == 5000, "{b:?}");
    let new = svg_path.with_file_name("cycle.allocs.new");
    assert!(blocks_line(&std::fs::read_to_string(new).unwrap()).ends_with(" 15000 15"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), created, "a failure leaves the snapshot alone");

    // Growth within the stated tolerance passes, and says so.
    let v = take(&dir, 11, Update::Auto, Some(Tolerance::percent(10.0)));
    assert_eq!(v.outcome, Outcome::GrewWithinTolerance, "{}", v.message);
    assert!(v.message.contains("allocations: 11 -> 12 (+1; tolerance +10%)   grew, within the tolerance"));
    // ... and beyond it fails.
    let v = take(&dir, 12, Update::Auto, Some(Tolerance::absolute(1)));
    assert_eq!(v.outcome, Outcome::Grew, "{}", v.message);

    // Shrink: a pass that says the snapshot can be lowered.
    let v = take(&dir, 5, Update::Auto, None);
    assert_eq!(v.outcome, Outcome::Smaller, "{}", v.message);
    assert!(v.outcome.passed());
    assert!(
        v.message
            .contains("allocates less than its snapshot: lower the snapshot, run the tests with HEAPPROBE_UPDATE=1"),
        "{}",
        v.message
    );
    assert!(v.message.contains("  allocations: 11 -> 6 (-5; tolerance none)   smaller\n"), "{}", v.message);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), created);

    // Update: the new figures are written, and match from then on.
    let v = take(&dir, 5, Update::Always, None);
    assert_eq!(v.outcome, Outcome::Updated, "{}", v.message);
    let updated = std::fs::read_to_string(&path).unwrap();
    assert!(updated.contains("\nallocations: 6\n") && blocks_line(&updated).ends_with(" 5000 5"), "{updated}");
    assert_eq!(take(&dir, 5, Update::Never, None).outcome, Outcome::Matched);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_file_is_the_same_on_every_run_and_every_thread() {
    if !available() {
        return;
    }
    let dirs: Vec<PathBuf> = (0..4).map(|i| scratch(&format!("stable-{i}"))).collect();
    assert_eq!(take(&dirs[0], 7, Update::Always, None).outcome, Outcome::Created);
    assert_eq!(take(&dirs[1], 7, Update::Always, None).outcome, Outcome::Created);
    // Other threads: other thread ids and names.
    std::thread::scope(|s| {
        s.spawn(|| assert_eq!(take(&dirs[2], 7, Update::Always, None).outcome, Outcome::Created));
        std::thread::Builder::new()
            .name(String::from("another-name"))
            .spawn_scoped(s, || assert_eq!(take(&dirs[3], 7, Update::Always, None).outcome, Outcome::Created))
            .unwrap();
    });
    let texts: Vec<String> = dirs.iter().map(|d| std::fs::read_to_string(d.join("stable.allocs")).unwrap()).collect();
    for text in &texts[1..] {
        assert_eq!(text, &texts[0]);
    }
    // Nothing in it that depends on the machine, the thread or the harness.
    let text = &texts[0];
    assert!(!text.contains("0x"), "no addresses:\n{text}");
    for word in ["tid", "another-name", "test::run_test", "start_thread", "clone3", "heapprobe::", "__rust"] {
        assert!(!text.contains(word), "{word} in:\n{text}");
    }
    // Every stack starts at the snapshot's closure.
    let stacks: Vec<&str> = text.lines().skip_while(|l| *l != "stacks:").skip(1).collect();
    assert!(!stacks.is_empty() && stacks.iter().all(|l| l.starts_with("snapshot::take::{{closure}};")), "{text}");
    // Sums: the stacks add up to the counters.
    let sum = |i: usize| stacks.iter().map(|l| l.rsplit(' ').nth(i).unwrap().parse::<u64>().unwrap()).sum::<u64>();
    assert_eq!((sum(1), sum(0)), (7 * 1000 + 7 * 24, 8), "{text}");
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn a_missing_snapshot_fails_when_none_may_be_written() {
    if !available() {
        return;
    }
    let dir = scratch("missing");
    let v = take(&dir, 3, Update::Never, None);
    assert_eq!(v.outcome, Outcome::Missing, "{}", v.message);
    assert!(v.message.contains("there is no snapshot, and HEAPPROBE_UPDATE=0, so none is written"), "{}", v.message);
    assert!(!dir.join("missing.allocs").exists());
}

#[test]
fn a_corrupt_snapshot_fails_and_says_how_to_rewrite_it() {
    if !available() {
        return;
    }
    let dir = scratch("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("corrupt.allocs"), "# heapprobe allocation snapshot\nallocations: many\n").unwrap();
    let v = take(&dir, 3, Update::Auto, None);
    assert_eq!(v.outcome, Outcome::Error, "{}", v.message);
    assert!(v.message.contains("corrupt.allocs:2: the value is not an integer"), "{}", v.message);
    assert!(v.message.contains("rewrite it with HEAPPROBE_UPDATE=1"), "{}", v.message);
    let _ = std::fs::remove_dir_all(dir);
}

/// A snapshot check that panics on failure, as tests use it.
fn checked(dir: &Path, n: usize, update: Update) -> usize {
    Snapshot::in_dir(dir, "panics").update(update).check(&GLOBAL, || workload(n))
}

#[test]
fn check_panics_with_the_report_when_the_block_grew() {
    if !available() {
        return;
    }
    let dir = scratch("panics");
    assert_eq!(checked(&dir, 2, Update::Always), 2);
    let caught = std::panic::catch_unwind(|| checked(&dir, 3, Update::Auto)).expect_err("a growth fails");
    let message = caught.downcast_ref::<String>().unwrap();
    assert!(message.contains("heapprobe: allocation snapshot `panics`"), "{message}");
    assert!(message.contains("at tests/snapshot.rs:"), "the line of the check: {message}");
    assert!(
        message.contains("+1000 B  +1  snapshot::blocks <- snapshot::workload <- snapshot::checked::{{closure}}"),
        "{message}"
    );
    // A pass returns the block's value.
    assert_eq!(checked(&dir, 2, Update::Auto), 2);
    let _ = std::fs::remove_dir_all(dir);
}
