//! The test-facing API on closures: `memory_measured`, `assert_allocations!`,
//! `expect(..).check`, `deny_allocations` and `assert_no_leaks`. Exact at
//! volume while other threads allocate, after panics, nested and on 16
//! threads; every "nothing allocated" has a positive control; the failure
//! reports are checked for their content.

use std::alloc::System;
use std::hint::black_box;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Barrier};
use std::thread;

mod support;

use support::Noise;

use heapprobe::{assert_allocations, assert_no_leaks, deny_allocations, expect, memory_measured, Heapprobe, Stats};

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

fn six(s: &Stats) -> (usize, usize, usize, usize, usize, isize) {
    (s.allocations, s.deallocations, s.reallocations, s.bytes_allocated, s.bytes_deallocated, s.bytes_reallocated)
}

/// The panic message of `f`, which must panic.
fn panic_message<R>(f: impl FnOnce() -> R) -> String {
    let Err(payload) = catch_unwind(AssertUnwindSafe(f)) else { panic!("expected a panic") };
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&str>().map(|s| s.to_string()).unwrap_or_default(),
    }
}

/// How the command the reports must print for the test running on this
/// thread ends (it starts with `cargo heapprobe trace`, and says `-p` or
/// `--manifest-path` when the directory `cargo test` ran in needs it:
/// tests/projects.rs of heapprobe-cli runs such a command as printed).
fn expected_trace_command() -> String {
    let name = match thread::current().name() {
        Some(name) if name != "main" => name.to_owned(),
        // `--test-threads=1` runs tests on the main thread: the report names the target.
        _ => String::from("alloc_assertions"),
    };
    format!("--test {name} --event alloc_locked")
}

#[test]
fn ground_truths_are_exact_1000_times_while_eight_threads_allocate() {
    let noise = Noise::start(8);
    let runs = noise.overlap(1000, || {
        let stats = memory_measured(&GLOBAL, || {
            let _ = black_box("whoa".to_owned().replace("whoa", "wow").to_owned());
        });
        assert_eq!(six(&stats), (3, 3, 0, 15, 15, 0), "{stats}");
        assert_eq!((stats.current, stats.allocation_failures), (0, 0));

        let stats = memory_measured(&GLOBAL, || {
            let _ = black_box(vec![1i32, 2, 3, 4]);
        });
        assert_eq!(six(&stats), (1, 1, 0, 16, 16, 0), "{stats}");
        assert_eq!((stats.peak, stats.current, stats.size_histogram.count_for(16)), (16, 0, 1));

        assert_allocations!(
            GLOBAL,
            {
                let _ = black_box("whoa".to_owned().replace("whoa", "wow").to_owned());
            },
            allocations == 3,
            deallocations == 3,
            bytes_allocated == 15,
            bytes_deallocated == 15,
            reallocations == 0
        );
        expect(&GLOBAL)
            .exactly(1)
            .allocations()
            .exactly(16)
            .bytes_allocated()
            .exactly(16)
            .peak()
            .no_leaks()
            .check(|| drop(black_box(vec![1i32, 2, 3, 4])));
    });
    assert!(runs >= 1000);
}

#[test]
fn memory_measured_matches_measure_and_counts_reallocs() {
    let stats = memory_measured(&GLOBAL, || {
        let mut v = black_box(vec![1i32, 2, 3, 4, 5]);
        v.push(6);
        black_box(&v);
    });
    // stats_alloc_helper's own second example: 20 bytes, grown by a realloc to 40.
    assert_eq!(six(&stats), (1, 1, 1, 40, 40, 20));
    assert_eq!((stats.reallocations_grown, stats.bytes_grown, stats.peak), (1, 20, 40));
}

#[test]
fn empty_scopes_count_nothing_and_their_positive_controls_count() {
    let empty = memory_measured(&GLOBAL, || {
        black_box(1 + 1);
    });
    assert_eq!(empty, Stats::default());
    let control = memory_measured(&GLOBAL, || drop(black_box(Box::new(7u64))));
    assert_eq!(six(&control), (1, 1, 0, 8, 8, 0));

    assert_allocations!(GLOBAL, { black_box(1 + 1) }, allocations == 0, deallocations == 0);
    let message = panic_message(|| {
        assert_allocations!(GLOBAL, { drop(black_box(Box::new(7u64))) }, allocations == 0);
    });
    assert!(message.contains("FAILED  allocations == 0   (measured 1)"), "{message}");

    expect(&GLOBAL).exactly(0).allocator_calls().check(|| black_box(2 * 21));
    let message = panic_message(|| expect(&GLOBAL).exactly(0).allocator_calls().check(|| black_box(vec![0u8; 3])));
    assert!(message.contains("FAILED  allocator_calls == 0   (measured 1)"), "{message}");
}

#[test]
fn deny_allocations_passes_code_that_does_not_allocate_and_reports_code_that_does() {
    let mut buffer: Vec<u8> = Vec::with_capacity(64);
    let len = deny_allocations(&GLOBAL, || {
        buffer.extend_from_slice(b"within capacity");
        buffer.len()
    });
    assert_eq!(len, 15);

    // Positive control: the same guard around code that allocates 24 and 300
    // bytes, grows a block and frees one.
    let line = line!() + 2;
    let message = panic_message(|| {
        deny_allocations(&GLOBAL, || {
            let a = black_box(vec![0u8; 24]);
            let b = black_box(vec![0u8; 300]);
            buffer.extend_from_slice(&[1; 100]); // 64 -> 128: one growing realloc
            drop(a);
            std::mem::forget(b);
        })
    });
    assert!(message.starts_with(&format!("heapprobe: deny_allocations failed at {}:{line}:", file!())), "{message}");
    assert!(message.contains("\n  FAILED  allocator_calls == 0   (measured 4)\n"), "{message}");
    assert!(
        message.contains(
            "\n  2 allocations (324 B), 1 reallocation (+64 / -0 B), 1 deallocation (24 B), 0 failures\n  \
             allocation sizes (log2 buckets, lower bound: count): {16: 1, 256: 1}\n"
        ),
        "{message}"
    );
    assert!(message.contains("measured Stats of the scope:\n  allocations               2  388 B\n"), "{message}");
    assert!(message.contains("  realloc growth (bytes):\n      [64, 128)              1 |"), "{message}");
    assert!(message.ends_with(&expected_trace_command()), "{message}");
}

#[test]
fn deny_allocations_counts_a_free_as_an_allocator_call() {
    let v = black_box(vec![0u8; 40]);
    let message = panic_message(move || deny_allocations(&GLOBAL, move || drop(v)));
    assert!(message.contains("FAILED  allocator_calls == 0   (measured 1)"), "{message}");
    assert!(message.contains("  0 allocations (0 B), 0 reallocations (+0 / -0 B), 1 deallocation (40 B)"), "{message}");
}

#[test]
fn assert_no_leaks_passes_balanced_scopes_and_reports_what_remains() {
    let n = assert_no_leaks(&GLOBAL, || {
        let v = black_box(vec![0u8; 1000]);
        let s = black_box(format!("{}", v.len()));
        s.len()
    });
    assert_eq!(n, 4);

    // Positive control: two blocks (100 + 28 bytes) left behind.
    let message = panic_message(|| {
        assert_no_leaks(&GLOBAL, || {
            std::mem::forget(black_box(vec![0u8; 100]));
            std::mem::forget(black_box(vec![0u32; 7]));
            drop(black_box(vec![0u8; 5]));
        })
    });
    assert!(message.contains("FAILED  blocks remaining == 0   (measured 2)"), "{message}");
    assert!(message.contains("FAILED  bytes remaining == 0   (measured 128)"), "{message}");
    assert!(message.contains("peak 133 B"), "{message}");
    assert!(message.ends_with(&expected_trace_command()), "{message}");

    // Freeing older memory is not a leak, and does not go negative.
    let old = black_box(vec![0u8; 64]);
    assert_no_leaks(&GLOBAL, move || drop(old));
}

#[test]
fn assert_allocations_reports_every_comparison_the_stats_and_the_trace_command() {
    let line = line!() + 2;
    let message = panic_message(|| {
        assert_allocations!(
            GLOBAL,
            {
                let _ = black_box("whoa".to_owned().replace("whoa", "wow").to_owned());
            },
            allocations <= 2,
            bytes_allocated == 15,
            peak < 10
        );
    });
    let expected = format!(
        "heapprobe: assert_allocations! failed at {}:{line}:9\n  \
         FAILED  allocations <= 2   (measured 3)\n  \
         ok      bytes_allocated == 15   (measured 15)\n  \
         FAILED  peak < 10   (measured 15)\n\
         measured Stats of the scope:\n  \
         allocations               3  15 B\n  \
         deallocations             3  15 B\n",
        file!()
    );
    assert!(message.starts_with(&expected), "{message}\n--- expected to start with ---\n{expected}");
    assert!(message.contains("  allocation sizes (bytes):\n"), "{message}");
    assert!(message.ends_with(&expected_trace_command()), "{message}");
    assert!(
        message
            .contains("to see where the scope allocated (a flame graph of its allocations):\n  cargo heapprobe trace "),
        "{message}"
    );
}

#[test]
fn expect_reports_limits_with_their_measured_values() {
    let message = panic_message(|| {
        expect(&GLOBAL).at_most(3).allocations().at_least(100).bytes_allocated().check(|| {
            drop(black_box(vec![0u8; 10]));
        })
    });
    assert!(message.contains("ok      allocations <= 3   (measured 1)"), "{message}");
    assert!(message.contains("FAILED  bytes_allocated >= 100   (measured 10)"), "{message}");
    assert!(message.contains("measured Stats of the scope:"), "{message}");
    assert!(message.ends_with(&expected_trace_command()), "{message}");
}

#[test]
fn a_report_on_a_thread_that_is_not_a_test_names_the_test_target() {
    let message = thread::Builder::new()
        .name(String::from("worker-1"))
        .spawn(|| panic_message(|| expect(&GLOBAL).exactly(0).allocations().check(|| black_box(vec![1u8]))))
        .unwrap()
        .join()
        .unwrap();
    assert!(message.ends_with(" --test alloc_assertions --event alloc_locked"), "{message}");
    assert!(message.lines().last().unwrap().starts_with("  cargo heapprobe trace "), "{message}");
}

#[test]
fn a_panicking_closure_ends_its_scope_and_the_next_measurement_is_exact() {
    for _ in 0..100 {
        let caught = catch_unwind(|| {
            memory_measured(&GLOBAL, || {
                let _v = black_box(vec![0u8; 64]);
                panic!("boom");
            })
        });
        assert!(caught.is_err());
        let caught = catch_unwind(|| assert_allocations!(GLOBAL, { panic!("boom in a block") }, allocations == 0));
        assert!(caught.is_err());
        let caught = catch_unwind(|| deny_allocations(&GLOBAL, || panic!("boom in a guard")));
        assert!(caught.is_err());
        let stats = memory_measured(&GLOBAL, || drop(black_box(vec![0u8; 24])));
        assert_eq!(six(&stats), (1, 1, 0, 24, 24, 0));
        assert_eq!(stats.peak, 24);
    }
}

#[test]
fn nested_scopes_of_every_kind_each_count_their_own_calls() {
    let outer = memory_measured(&GLOBAL, || {
        let a = black_box(vec![0u8; 10]);
        let kept = expect(&GLOBAL).exactly(2).allocations().exactly(1).deallocations().check(|| {
            let b = black_box(vec![0u8; 100]);
            let inner = assert_allocations!(
                GLOBAL,
                { memory_measured(&GLOBAL, || drop(black_box(vec![0u8; 1000]))) },
                allocations == 1,
                bytes_allocated == 1000,
                peak == 1000
            );
            assert_eq!(six(&inner), (1, 1, 0, 1000, 1000, 0));
            deny_allocations(&GLOBAL, || black_box(0));
            b
        });
        // Checking allocated nothing: the outer scope sees only the vectors.
        assert_no_leaks(&GLOBAL, || drop(kept));
        drop(a);
    });
    assert_eq!(six(&outer), (3, 3, 0, 1110, 1110, 0));
    assert_eq!(outer.peak, 1110);
}

#[test]
fn concurrent_scopes_on_sixteen_threads_are_each_exact() {
    let start = Arc::new(Barrier::new(16));
    let handles: Vec<_> = (0..16usize)
        .map(|i| {
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                for _ in 0..200 {
                    let size = 32 + i;
                    let stats = memory_measured(&GLOBAL, || {
                        for _ in 0..=i {
                            drop(black_box(vec![0u8; size]));
                        }
                    });
                    assert_eq!(six(&stats), (i + 1, i + 1, 0, (i + 1) * size, (i + 1) * size, 0), "thread {i}");
                    assert_eq!(stats.peak, size);
                    assert_allocations!(
                        GLOBAL,
                        {
                            let kept = black_box(vec![0u8; size]);
                            drop(black_box(vec![0u8; size]));
                            kept
                        },
                        allocations == 2,
                        deallocations == 1,
                        current == size
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// The README's "Allocation tests" example is `tests/allocation_tests_example.rs`,
/// which runs as a test; the README shows exactly that file.
#[test]
fn readme_shows_the_example_test_file() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("tests/allocation_tests_example.rs")).unwrap();
    let section = readme
        .split("\n## Allocation tests\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README.md has a `## Allocation tests` section");
    let block = section
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the section starts with a rust code block");
    assert_eq!(
        block.trim_end(),
        example.trim_end(),
        "README.md's example differs from tests/allocation_tests_example.rs"
    );
    let after = readme.split("\n## Allocation tests\n").nth(1).unwrap();
    assert!(after.contains("\n## Feature flags\n"), "`## Allocation tests` comes right before `## Feature flags`");
}

#[test]
fn expect_holds_sixteen_limits_and_says_so_at_the_seventeenth() {
    let mut e = expect(&GLOBAL);
    for _ in 0..16 {
        e = e.at_most(1).allocations();
    }
    e.check(|| drop(black_box(Box::new(1u8))));
    let message = panic_message(|| {
        let mut e = expect(&GLOBAL);
        for _ in 0..17 {
            e = e.at_most(1).allocations();
        }
    });
    assert_eq!(message, "heapprobe::expect holds at most 16 limits");
}
