//! Golden tests: real `perf script` captures of the fixture (stored in
//! `tests/data/`, recorded by `cargo xtask trace --keep` on this project's
//! CI machine) folded by `cargo xtask fold` must equal the stored folded
//! files, and their totals the fixture's known allocations. Needs no root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data").join(name)
}

fn fold(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).arg("fold").args(args).output().expect("run the xtask");
    eprintln!(
        "$ cargo xtask fold {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("heapprobe-fold-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Folds `capture` for `event` by `weight`; returns the folded text after
/// checking the SVG is there and names `frame`.
fn folded(capture: &str, event: &str, weight: &str, frame: &str) -> String {
    let dir = scratch(&format!("{event}-{weight}"));
    let svg = dir.join("out.svg");
    let out =
        fold(&[data(capture).to_str().unwrap(), "--event", event, "--weight", weight, "-o", svg.to_str().unwrap()]);
    assert!(out.status.success());
    let image = std::fs::read_to_string(&svg).unwrap();
    assert!(image.starts_with("<?xml") && image.trim_end().ends_with("</svg>"));
    assert!(image.contains(frame), "the SVG shows {frame}");
    let text = std::fs::read_to_string(svg.with_extension("folded")).unwrap();
    let _ = std::fs::remove_dir_all(dir);
    // The header records the weight and the event (`cargo xtask diff` checks it).
    let header = format!("# heapprobe: weight={weight} event={event}\n");
    text.strip_prefix(&header).unwrap_or_else(|| panic!("the folded file starts with {header:?}:\n{text}")).to_owned()
}

fn total(folded: &str) -> u64 {
    folded.lines().map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap()).sum()
}

#[test]
fn realloc_capture_folds_to_the_stored_stacks_by_each_weight() {
    // The fixture's reallocs: `known_reallocs` makes 100 × (100→300, 300→200)
    // with align 32 (always moved: System reallocates over-aligned blocks by
    // copying), `measured_scope` 5 × 777→1000 (moved here).
    for (weight, known) in
        [("bytes", 100 * 300 + 100 * 200 + 5 * 1000), ("count", 205), ("moved", 100 * 100 + 100 * 200 + 5 * 777)]
    {
        let text = folded("perf-script-realloc.txt", "realloc", weight, "known_reallocs");
        let expected = std::fs::read_to_string(data(&format!("perf-script-realloc.{weight}.folded"))).unwrap();
        assert_eq!(text, expected, "--weight {weight}");
        assert_eq!(total(&text), known, "--weight {weight}");
    }
}

#[test]
fn scoped_capture_folds_to_the_measured_scope_alone() {
    let text = folded("perf-script-alloc_locked.txt", "alloc_locked", "bytes", "measured_scope");
    assert_eq!(text, std::fs::read_to_string(data("perf-script-alloc_locked.bytes.folded")).unwrap());
    // 10 × 777 bytes, through the scope's closure; Rust v0 (`_RNv…`) and
    // legacy names demangled, without hashes.
    assert_eq!(total(&text), 7770);
    assert!(text.contains(";heapprobe_fixture::measured_scope::{{closure}};alloc::alloc::alloc;__rustc::__rust_alloc;"));
    assert!(!text.contains("17h"), "hashes are stripped");
}

#[test]
fn a_capture_without_the_event_says_what_it_holds() {
    let out = fold(&[data("perf-script-alloc_locked.txt").to_str().unwrap(), "-o", "/tmp/never-written.svg"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("it holds: alloc_locked (10) (pick one with --event)"));
    let out = fold(&[env!("CARGO_MANIFEST_DIR"), "-o", "/tmp/never-written.svg"]);
    assert!(!out.status.success());
    assert!(!Path::new("/tmp/never-written.svg").exists());
}
