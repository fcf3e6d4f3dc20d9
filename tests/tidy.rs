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
            "alloc_failed"
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
        if path.extension().is_none_or(|e| e != "bt") {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        for (i, _) in text.match_indices(":heapprobe:") {
            let name: String =
                text[i + ":heapprobe:".len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            assert!(PROBES.iter().any(|(n, _)| *n == name), "{}: unknown probe heapprobe:{name}", path.display());
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
