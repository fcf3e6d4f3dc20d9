//! No bogus probe sites: a binary that never calls `measure()` (the
//! fixture's `heapprobe-workload`) carries no SDT note left by code the
//! linker discarded (the note of `scope_end` pointed into the ELF header,
//! and every bpftrace one-liner warned about it), in a dev and a release
//! build, with either probe backend and either linker; and a binary that
//! does measure (the fixture) has valid `scope_begin` and `scope_end` sites.
//! Needs no privileges.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use heapprobe_sdt::{Binary, Site};
use support::{build_fixture, root, Backend, Linker};

/// The workload built in release, with frame pointers, where the trace
/// tests build the release fixture.
fn release_workload() -> PathBuf {
    let target = root().join("target/release-frame-pointers");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--release", "--package", "heapprobe-fixture", "--bin", "heapprobe-workload"])
        .arg("--target-dir")
        .arg(&target)
        .env("RUSTFLAGS", "-C force-frame-pointers=yes")
        .current_dir(root())
        .status()
        .unwrap();
    assert!(status.success());
    target.join("release/heapprobe-workload")
}

fn sites(exe: &Path, name: &str) -> (usize, Vec<String>) {
    let binary = Binary::open(exe).unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
    let ours: Vec<_> = binary.probes.iter().filter(|p| p.provider == "heapprobe").collect();
    let bogus = ours
        .iter()
        .filter_map(|p| match &p.site {
            Site::Bogus(why) => Some(format!("{} at {:#x}: {why}", p.name, p.address)),
            Site::Valid { .. } => None,
        })
        .collect();
    (ours.iter().filter(|p| p.name == name && matches!(p.site, Site::Valid { .. })).count(), bogus)
}

#[test]
fn a_binary_that_never_measures_has_no_bogus_probe_site() {
    let builds = [
        ("dev, probe backend, rust-lld", build_fixture(Linker::Default, Backend::Probe)),
        ("dev, usdt backend, rust-lld", build_fixture(Linker::Default, Backend::Usdt)),
        ("dev, probe backend, GNU ld", build_fixture(Linker::Bfd, Backend::Probe)),
    ];
    for (what, fixture) in &builds {
        let workload = fixture.with_file_name("heapprobe-workload");
        let (allocs, bogus) = sites(&workload, "alloc");
        assert!(allocs > 0, "{what}: the workload has alloc sites");
        assert_eq!(bogus, Vec::<String>::new(), "{what}: bogus sites in {}", workload.display());
        // The positive control: the fixture measures, and its scope sites are there.
        for probe in ["scope_begin", "scope_end"] {
            let (valid, bogus) = sites(fixture, probe);
            assert!(valid > 0, "{what}: no valid {probe} site in {}", fixture.display());
            assert_eq!(bogus, Vec::<String>::new(), "{what}: bogus sites in {}", fixture.display());
        }
    }
    let release = release_workload();
    let (allocs, bogus) = sites(&release, "alloc");
    assert!(allocs > 0);
    assert_eq!(bogus, Vec::<String>::new(), "release: bogus sites in {}", release.display());
}
