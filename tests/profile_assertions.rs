//! A failing allocation assertion writes its scope's flame graph, recorded
//! in process (no perf, no root), and says where.

use std::alloc::System;
use std::hint::black_box;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use heapprobe::{assert_allocations, assert_no_leaks, Heapprobe};

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

#[inline(never)]
fn allocating_frame() -> Vec<Vec<u8>> {
    (0..10).map(|_| black_box(Vec::with_capacity(1000))).collect()
}

/// The panic message of `f`.
fn panic_message(f: impl FnOnce()) -> String {
    let caught = catch_unwind(AssertUnwindSafe(f)).expect_err("the assertion must fail");
    caught.downcast_ref::<String>().cloned().expect("a formatted panic message")
}

/// The path printed after `label` in `report`.
fn path_after(report: &str, label: &str) -> PathBuf {
    let line = report.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no {label:?} in:\n{report}"));
    PathBuf::from(line.rsplit_once(": ").unwrap().1.trim())
}

fn weight_through(folded: &str, function: &str) -> u64 {
    folded
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(stack, _)| stack.split(';').any(|f| f.contains(function)))
        .map(|(_, w)| w.parse::<u64>().unwrap())
        .sum()
}

#[test]
fn a_failing_assertion_writes_the_scopes_flame_graph_with_the_allocating_frame() {
    let report = panic_message(|| {
        assert_allocations!(GLOBAL, { drop(allocating_frame()) }, bytes_allocated <= 100);
    });
    let folded_path = path_after(&report, "folded stacks (alloc_space)");
    let svg_path = path_after(&report, "flame graph (alloc_space)");
    // The test's name, under the target directory.
    assert!(folded_path.ends_with(
        "heapprobe-reports/a_failing_assertion_writes_the_scopes_flame_graph_with_the_allocating_frame.folded"
    ));
    assert!(folded_path.parent().unwrap().parent().unwrap().join("CACHEDIR.TAG").is_file(), "{report}");
    let folded = std::fs::read_to_string(&folded_path).unwrap();
    // 10 × 1000 bytes, plus the outer Vec's 10 × 24 bytes, both under the frame.
    assert_eq!(weight_through(&folded, "allocating_frame"), 10 * 1000 + 10 * 24, "{folded}");
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<?xml") && svg.contains("allocating_frame"), "{}", svg_path.display());
    // The top sites are in the report itself.
    assert!(report.contains("allocating_frame"), "{report}");
}

#[test]
fn a_leak_check_also_writes_the_in_use_flame_graph() {
    #[inline(never)]
    fn leaky() -> Vec<u8> {
        black_box(vec![7u8; 4321])
    }
    let report = panic_message(|| {
        assert_no_leaks(&GLOBAL, || std::mem::forget(leaky()));
    });
    let inuse = std::fs::read_to_string(path_after(&report, "folded stacks (inuse_space)")).unwrap();
    assert_eq!(weight_through(&inuse, "leaky"), 4321, "{inuse}");
}

#[test]
fn passing_checks_allocate_nothing_and_nest_inside_measured_scopes() {
    // Positive control: the outer scope sees the inner allocation...
    let ((), outer) = GLOBAL.measure(|| {
        assert_allocations!(GLOBAL, { drop(black_box(vec![1u8; 64])) }, allocations == 1, bytes_allocated == 64);
    });
    // ...and nothing else: recording the inner scope allocates nothing.
    assert_eq!((outer.allocations, outer.bytes_allocated), (1, 64));
}
