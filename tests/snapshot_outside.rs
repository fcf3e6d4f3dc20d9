//! Allocation snapshots as a user gets them: a cargo project outside this
//! workspace with a test that calls `assert_allocation_snapshot!`, run
//! with plain `cargo test`. The snapshot lands in the project's own
//! `tests/snapshots/`; a growth fails with the diff and writes its flame
//! graph under the project's `target/heapprobe-reports/`; `HEAPPROBE_UPDATE=1`
//! accepts; a shrink passes and says so on stderr, through the harness's
//! capture; with `CI=true` a missing snapshot fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "support/mod.rs"]
mod support;

/// `build(N)`: N blocks of 100 bytes, in a Vec of N `Vec<u8>` (24 bytes each).
const TEST: &str = r#"
use heapprobe::{assert_allocation_snapshot, Heapprobe};
use std::alloc::System;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

#[inline(never)]
fn build(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|_| std::hint::black_box(vec![0u8; 100])).collect()
}

#[test]
fn user_snapshot() {
    let v = assert_allocation_snapshot!(GLOBAL, "user_build", { build(BLOCKS) });
    assert_eq!(v.len(), BLOCKS);
}
"#;

/// The user's project, under this workspace's target directory (kept
/// between runs so that its dependencies are built once).
fn project() -> PathBuf {
    let dir = support::root().join("target/snapshot-outside/user-project");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    let manifest = format!(
        "[package]\nname = \"user-project\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
         [dev-dependencies]\nheapprobe = {{ path = {:?}, features = [\"profile\"] }}\n\n[workspace]\n",
        support::root().display().to_string()
    );
    write_if_changed(&dir.join("Cargo.toml"), &manifest);
    write_if_changed(&dir.join("src/lib.rs"), "");
    if !dir.join("Cargo.lock").exists() {
        std::fs::copy(support::root().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    }
    dir
}

fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).unwrap();
    }
}

/// `cargo test` of the user's test with `BLOCKS = blocks`, as a user runs it
/// (no RUSTFLAGS, no inherited target directory), with `env` set.
fn cargo_test(dir: &Path, blocks: usize, env: &[(&str, &str)]) -> (Output, String, String) {
    write_if_changed(&dir.join("tests/user.rs"), &TEST.replace("BLOCKS", &blocks.to_string()));
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["test", "--quiet", "--test", "user"])
        .current_dir(dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("HEAPPROBE_UPDATE")
        .env_remove("HEAPPROBE_PROFILE")
        .env_remove("CI");
    for (key, value) in env {
        cmd.env(key, value);
    }
    let out = cmd.output().expect("failed to run cargo test");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    eprintln!("$ cargo test (BLOCKS = {blocks}, {env:?})\n--- stdout\n{stdout}--- stderr\n{stderr}");
    (out, stdout, stderr)
}

#[test]
fn the_snapshot_workflow_in_a_users_project() {
    let dir = project();
    let snapshots = dir.join("tests/snapshots");
    let file = snapshots.join("user_build.allocs");
    let _ = std::fs::remove_dir_all(&snapshots);

    // Created in the project's tests/snapshots/, and said so (through the capture).
    let (out, _, stderr) = cargo_test(&dir, 3, &[]);
    assert!(out.status.success());
    assert!(
        stderr.contains("heapprobe: allocation snapshot `user_build` (tests/snapshots/user_build.allocs)"),
        "{stderr}"
    );
    assert!(stderr.contains("created (4 allocations, 372 bytes allocated): review and commit it"), "{stderr}");
    let created = std::fs::read_to_string(&file).unwrap();
    assert!(created.contains("\nallocations: 4\n") && created.contains("\nbytes_allocated: 372\n"), "{created}");
    assert!(created.contains("\nuser::user_snapshot::{{closure}};user::build;"), "{created}");

    // The same code passes silently.
    let (out, _, stderr) = cargo_test(&dir, 3, &[]);
    assert!(out.status.success());
    assert!(!stderr.contains("heapprobe:"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), created);

    // More: a failure with the diff and its flame graph in the project's target/.
    let svg = dir.join("target/heapprobe-reports/user_build.diff.svg");
    let _ = std::fs::remove_file(&svg);
    let (out, stdout, _) = cargo_test(&dir, 5, &[]);
    assert!(!out.status.success());
    assert!(stdout.contains("allocations: 4 -> 6 (+2; tolerance none)   GREW beyond the tolerance"), "{stdout}");
    assert!(
        stdout.contains("+200 B  +2  user::build::{{closure}} <- user::build <- user::user_snapshot::{{closure}}"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("differential flame graph: {}", svg.display())), "{stdout}");
    assert!(svg.is_file());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), created, "a failure leaves the snapshot alone");

    // HEAPPROBE_UPDATE=1 accepts it.
    let (out, _, stderr) = cargo_test(&dir, 5, &[("HEAPPROBE_UPDATE", "1")]);
    assert!(out.status.success());
    assert!(stderr.contains("updated (6 allocations, 620 bytes allocated)"), "{stderr}");
    assert!(std::fs::read_to_string(&file).unwrap().contains("\nallocations: 6\n"));

    // Less: a pass that says the snapshot can be lowered.
    let (out, _, stderr) = cargo_test(&dir, 2, &[]);
    assert!(out.status.success());
    assert!(stderr.contains("allocates less than its snapshot: lower the snapshot"), "{stderr}");
    assert!(stderr.contains("  bytes_allocated: 620 -> 248 (-372; tolerance none)   smaller"), "{stderr}");

    // In CI, a missing snapshot fails instead of being written.
    std::fs::remove_file(&file).unwrap();
    let (out, stdout, _) = cargo_test(&dir, 2, &[("CI", "true")]);
    assert!(!out.status.success());
    assert!(stdout.contains("there is no snapshot, and CI is set, so none is written"), "{stdout}");
    assert!(!file.exists());
}
