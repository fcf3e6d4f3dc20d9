//! Tidy checks: the probe definition in `probes/heapprobe.d`, the README's
//! probe table, `scripts/` and the SDT notes in a built binary agree.

use std::alloc::System;
use std::fs;

use heapprobe::probes::{BACKEND, PROBES};
use heapprobe::Heapprobe;
use heapprobe_sdt::Binary;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_definition_declares_the_documented_provider() {
    let names: Vec<&str> = PROBES.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "alloc",
            "dealloc",
            "realloc",
            "alloc_locked",
            "dealloc_locked",
            "realloc_locked",
            "scope_begin",
            "scope_end",
            "alloc_failed",
            "local_alloc",
            "local_dealloc",
            "local_grow",
            "local_shrink",
            "local_failed"
        ]
    );
    let d = fs::read_to_string(root().join("probes/heapprobe.d")).unwrap();
    assert!(d.contains("provider heapprobe {"));
}

#[test]
fn readme_probe_table_lists_every_probe_with_its_arguments() {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    for (name, args) in PROBES {
        let row = format!("| `{name}` | `{}` |", args.join(", "));
        assert!(readme.contains(&row), "README.md has no probe table row starting {row:?}");
    }
    let table: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("| Probe | Arguments |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert_eq!(table.len(), PROBES.len(), "the README's probe table has rows for probes that do not exist: {table:#?}");
}

#[test]
fn scripts_use_only_defined_probes() {
    let Ok(entries) = fs::read_dir(root().join("scripts")) else { return };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "README.md") {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        for (i, _) in text.match_indices(":heapprobe:") {
            let name: String =
                text[i + ":heapprobe:".len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            assert!(PROBES.iter().any(|(n, _)| *n == name), "{}: unknown probe heapprobe:{name}", path.display());
        }
        // perf-flamegraph.sh takes a probe name and knows each one's weight.
        if path.file_name().is_some_and(|n| n == "perf-flamegraph.sh") {
            let cases = text.split("case $event in").nth(1).and_then(|t| t.split("esac").next()).unwrap_or_default();
            let words: Vec<&str> = cases.split(|c: char| !(c.is_alphanumeric() || c == '_')).collect();
            for (name, _) in PROBES {
                assert!(words.contains(name), "perf-flamegraph.sh's `case $event in` does not handle heapprobe:{name}");
            }
        }
    }
}

/// The test binary itself carries the probes its backend promises: every
/// probe with at least one valid site, or none at all when compiled out.
#[test]
fn this_binary_has_the_probes_of_its_backend() {
    // Make sure the scope probes are linked in.
    let ((), stats) = GLOBAL.measure(|| drop(std::hint::black_box(vec![1u8])));
    assert_eq!(stats.allocations, 1);
    // And the local ones (`heapprobe::Local`: every method, one failure).
    let local = heapprobe::Local::new(allocator_api2::alloc::Global);
    let mut v = allocator_api2::vec::Vec::<u8, _>::with_capacity_in(1, &local);
    v.extend([1, 2, 3]);
    v.shrink_to_fit();
    drop(v);
    let huge = std::alloc::Layout::from_size_align(1 << 46, 8).unwrap();
    assert!(allocator_api2::alloc::Allocator::allocate(&local, huge).is_err());
    assert_eq!(local.stats().allocation_failures, 1);
    let binary = Binary::open("/proc/self/exe").unwrap();
    let ours: Vec<&str> = binary.valid_probes(Some("heapprobe")).map(|p| p.name.as_str()).collect();
    if BACKEND == "none" {
        assert!(binary.probes.iter().all(|p| p.provider != "heapprobe"), "probes compiled out, yet found {ours:?}");
        return;
    }
    for (name, args) in PROBES {
        assert!(ours.contains(name), "backend {BACKEND}: no valid site for heapprobe:{name}");
        for probe in binary.valid_probes(Some("heapprobe")).filter(|p| p.name == *name) {
            assert_eq!(probe.args().unwrap().len(), args.len(), "{name}: {}", probe.arguments);
        }
    }
}

/// Every program in `scripts/` starts with a bpftrace-tools-style header
/// (`NAME<TAB>purpose`, USAGE, an example output, the overhead) and has its
/// one-line entry in `scripts/README.md`, which lists nothing else.
#[test]
fn every_script_has_its_header_and_an_index_line() {
    let dir = root().join("scripts");
    let index = fs::read_to_string(dir.join("README.md")).unwrap();
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name == "README.md" {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        let header: String =
            text.lines().take_while(|l| !l.trim().is_empty() || l.starts_with('#')).collect::<Vec<_>>().join("\n");
        let comment = if name.ends_with(".bt") { " * " } else { "# " };
        assert!(header.contains(&format!("{comment}{name}\t")), "{name}: no `{comment}{name}<TAB>purpose` header line");
        for part in ["USAGE: ", "Example output", "Overhead: "] {
            assert!(header.contains(part), "{name}: its header has no {part:?}");
        }
        if name.ends_with(".bt") {
            assert!(text.contains("printf(\"Tracing PID %d"), "{name}: no \"Tracing PID …\" banner");
            assert!(text.contains("Hit Ctrl-C to end."), "{name}: the banner must say how to end it");
            assert!(text.contains("Bounds: "), "{name}: its header does not say what bounds its maps");
        }
        let line = format!("- `{name}`: ");
        assert_eq!(index.matches(&line).count(), 1, "scripts/README.md needs one line starting {line:?}");
        names.push(name);
    }
    for listed in index.lines().filter_map(|l| l.strip_prefix("- `")).filter_map(|l| l.split_once("`: ")) {
        assert!(names.iter().any(|n| *n == listed.0), "scripts/README.md lists {} which does not exist", listed.0);
    }
}
