//! `cargo heapprobe diff` on real profiles of the known change
//! (tests/fixture/src/bin/heapprobe-known-change.rs, recorded exactly by
//! the in-process profiler: `HEAPPROBE_PROFILE=rate=1`): the summary shows
//! +51200 B (+50) in `kilobyte_blocks`, +4096 B (+1, new) in `new_block`,
//! −512 B (−1, gone) in `old_block`, and nothing else changed; the flame
//! graph is well-formed and holds the three frames, red, red and blue.
//! Bad input (empty, malformed, bytes against counts) is a clear error.
//! Needs no root.

#[path = "../../tests/support/mod.rs"]
mod support;
#[path = "../../tests/support/svg.rs"]
mod svg;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use support::{root, TempDir};

/// The fixture with the profiler's names, built once (the same build as
/// tests/profile_summary.rs's).
fn known_change() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let target = root().join("target/fixture-profile");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--package", "heapprobe-fixture", "--features", "server,pprof", "--target-dir"])
            .arg(&target)
            .env_remove("RUSTFLAGS")
            .current_dir(root())
            .status()
            .expect("failed to run cargo build for the fixture");
        assert!(status.success(), "cargo build of the fixture (server, pprof) exited with {status}");
        target.join("debug/heapprobe-known-change")
    })
}

/// Profiles revision `rev` into `dir/REV.folded` and `dir/REV.count.folded`.
fn profile(dir: &Path, rev: &str) -> (PathBuf, PathBuf) {
    let prefix = dir.join(rev);
    let out = Command::new(known_change())
        .arg(rev)
        .env("HEAPPROBE_PROFILE", format!("rate=1,out={}", prefix.display()))
        .output()
        .expect("run the fixture");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (prefix.with_extension("folded"), prefix.with_extension("count.folded"))
}

fn diff(args: &[&Path]) -> (Output, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_cargo-heapprobe")).arg("diff").args(args).output().expect("run the xtask");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    eprintln!("$ cargo heapprobe diff {args:?}\n--- stdout\n{stdout}--- stderr\n{stderr}");
    (out, stdout, stderr)
}

#[test]
fn the_known_change_in_the_summary_and_the_flame_graph() {
    let dir = TempDir::new("xtask-diff");
    let (a, a_counts) = profile(dir.path(), "A");
    let (b, b_counts) = profile(dir.path(), "B");
    let svg_path = dir.path().join("diff.svg");
    let (out, stdout, _) = diff(&[&a, &b, Path::new("--counts"), &a_counts, &b_counts, Path::new("-o"), &svg_path]);
    assert!(out.status.success());

    let line = |frame: &str| {
        let needle = format!("  heapprobe_known_change::{frame} <- ");
        stdout.lines().find(|l| l.contains(&needle)).unwrap_or_else(|| panic!("no {frame} line"))
    };
    assert!(line("kilobyte_blocks").trim_start().starts_with("+51200 B  +50  "), "{stdout}");
    assert!(line("new_block").trim_start().starts_with("+4096 B   +1  "), "{stdout}");
    assert!(line("new_block").ends_with("(new)"), "{stdout}");
    assert!(line("old_block").trim_start().starts_with("-512 B  -1  "), "{stdout}");
    assert!(line("old_block").ends_with("(gone)"), "{stdout}");
    // Nothing else changed: the rest of the process allocates the same.
    assert!(stdout.contains("top 2 stacks that grew (of 2):\n"), "{stdout}");
    assert!(stdout.contains("top 1 stack that shrank (of 1):\n"), "{stdout}");
    assert!(stdout.contains("  change: +54784 B ("), "{stdout}");
    assert!(stdout.contains(", count +50 ("), "{stdout}");
    assert!(stdout.ends_with(&format!("differential flame graph: {}\n", svg_path.display())), "{stdout}");

    let frames = svg::frames(&std::fs::read_to_string(&svg_path).unwrap());
    let one = |name: &str| {
        let found = svg::named(&frames, &format!("heapprobe_known_change::{name}"));
        assert_eq!(found.len(), 1, "one {name} frame");
        found[0].clone()
    };
    let kb = one("kilobyte_blocks");
    assert!(kb.is_red() && kb.delta == 51200, "{kb:?}");
    let new = one("new_block");
    assert!(new.is_red() && new.delta == 4096 && new.class.contains("new"), "{new:?}");
    let old = one("old_block");
    assert!(old.is_blue() && old.delta == -512 && old.class.contains("gone") && old.width == 512, "{old:?}");
    // main is red for its subtree's growth, though it allocates nothing itself here.
    let main = one("main");
    assert!(main.is_red() && main.delta == 51200 + 4096 - 512, "{main:?}");
    // Frames outside the change are grey.
    assert!(frames.iter().any(|f| f.is_grey() && f.delta == 0), "unchanged frames are grey");

    // Normalisation is an option: the same diff, scaled.
    let (out, stdout, _) = diff(&[&a, &b, Path::new("--normalize"), Path::new("-o"), &svg_path]);
    assert!(out.status.success());
    assert!(stdout.contains("normalised: BEFORE scaled by 1.5"), "{stdout}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = TempDir::new("xtask-diff-bad");
    let (a, a_counts) = profile(dir.path(), "A");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let svg_path = dir.path().join("never.svg");
    let fails = |args: &[&Path], expected: &str| {
        let mut all = args.to_vec();
        all.extend([Path::new("-o"), &svg_path]);
        let (out, _, stderr) = diff(&all);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr}");
        assert!(!svg_path.exists(), "{args:?} wrote a flame graph");
    };
    let empty = write("empty.folded", "");
    fails(&[&empty, &a], &format!("error: {} holds no stacks", empty.display()));
    let comments = write("comments.folded", "# heapprobe: weight=bytes event=alloc\n# nothing else\n");
    fails(&[&a, &comments], "comments.folded holds no stacks");
    let malformed = write("malformed.folded", "main;f 10\nmain;g ten\n");
    fails(&[&malformed, &a], "malformed.folded:2: not `STACK WEIGHT`: the last field is not a number: \"main;g ten\"");
    let differential = write("differential.folded", "main;f 10 20\n");
    fails(&[&a, &differential], "differential.folded:1: two numbers after the stack");
    // Bytes against counts: the headers say so.
    fails(&[&a, &a_counts], &format!("{} is weighted by bytes and {} by count", a.display(), a_counts.display()));
    // Counts that are not counts.
    fails(&[&a, &a, Path::new("--counts"), &a, &a], "is weighted by bytes, not count");
    // A file that is not there, and a directory: what the OS said, once.
    let missing = dir.path().join("missing.folded");
    fails(
        &[&missing, &a],
        &format!("error: cannot read {}: No such file or directory (os error 2)\n", missing.display()),
    );
    fails(&[dir.path(), &a], &format!("error: cannot read {}: Is a directory (os error 21)\n", dir.path().display()));
}

#[test]
fn a_snapshot_is_a_side_with_its_counts() {
    let dir = TempDir::new("xtask-diff-snap");
    let snap = |name: &str, blocks: u64| {
        let path = dir.path().join(name);
        let stacks = format!("t::{{{{closure}}}};t::f {} {blocks}\nt::{{{{closure}}}};t::g 24 1\n", 1000 * blocks);
        let text = format!(
            "# heapprobe allocation snapshot: review changes like code; HEAPPROBE_UPDATE=1 cargo test rewrites it\n\
             name: t\nallocations: {}\nbytes_allocated: {}\nstacks:\n{stacks}",
            blocks + 1,
            1000 * blocks + 24
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let (before, after) = (snap("before.allocs", 2), snap("after.allocs", 5));
    let svg_path = dir.path().join("diff.svg");
    let (out, stdout, _) = diff(&[&before, &after, Path::new("-o"), &svg_path]);
    assert!(out.status.success());
    assert!(stdout.contains("  +3000 B  +3  t::f <- t::{{closure}}\n"), "{stdout}");
    assert!(stdout.contains("  before: 2024 B, count 3\n"), "{stdout}");
}
