//! heapprobe's profiler as a user gets it: a cargo project outside this
//! workspace that depends on heapprobe with the `profile` feature and sets
//! no RUSTFLAGS (so most of its functions have no frame pointers).
//!
//! - `cargo test`: a failing allocation assertion writes the scope's flame
//!   graph under the project's own target directory, and it holds the
//!   user's function with its exact bytes.
//! - `cargo build --release` (no frame pointers, no debuginfo): the
//!   profiler runs at rate 1 without crashing and its stacks still reach
//!   the allocating function.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "support/mod.rs"]
mod support;

const MAIN: &str = r#"
use heapprobe::profile::{Options, View};
use heapprobe::Heapprobe;
use std::alloc::System;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

#[inline(never)]
fn user_allocates(keep: &mut Vec<Vec<u8>>) {
    for _ in 0..100 {
        keep.push(std::hint::black_box(Vec::with_capacity(1000)));
    }
}

fn main() {
    let mut options = Options::default();
    options.rate = 1;
    let mut keep = Vec::with_capacity(100);
    GLOBAL.start_profiler(options).expect("start");
    user_allocates(&mut keep);
    let profile = GLOBAL.stop_profiler().expect("running");
    println!("through user_allocates: {}", profile.total_through(View::AllocatedBytes, "user_allocates"));
    println!("unwinder: {}", profile.unwinder());
    eprintln!("{profile}");
    drop(keep);
}
"#;

const TEST: &str = r#"
use heapprobe::{assert_allocations, Heapprobe};
use std::alloc::System;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

#[inline(never)]
fn user_function() -> Vec<Vec<u8>> {
    (0..3).map(|_| std::hint::black_box(Vec::with_capacity(512))).collect()
}

#[test]
fn user_test() {
    assert_allocations!(GLOBAL, { drop(user_function()) }, bytes_allocated <= 10);
}
"#;

/// The user's project, under this workspace's target directory (kept
/// between runs so that its dependencies are built once).
fn project() -> PathBuf {
    let dir = support::root().join("target/profile-outside/user-project");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    let manifest = format!(
        "[package]\nname = \"user-project\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
         [dependencies]\nheapprobe = {{ path = {:?}, features = [\"profile\"] }}\n\n[workspace]\n",
        support::root().display().to_string()
    );
    write_if_changed(&dir.join("Cargo.toml"), &manifest);
    write_if_changed(&dir.join("src/main.rs"), MAIN);
    write_if_changed(&dir.join("tests/user.rs"), TEST);
    // The workspace's lock file: the same dependency versions, no surprises.
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

/// `cargo ARGS` in the user's project, as a user runs it: no RUSTFLAGS, no
/// target directory inherited from this test's cargo.
fn cargo(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("HEAPPROBE_PROFILE")
        .output()
        .expect("failed to run cargo")
}

#[test]
fn a_plain_cargo_test_gets_the_failing_assertions_flame_graph_with_the_users_bytes() {
    let dir = project();
    // A directory of their own, not the traced builds' target/heapprobe.
    let folded = dir.join("target/heapprobe-reports/user_test.folded");
    let _ = std::fs::remove_file(&folded);
    let out = cargo(&dir, &["test", "--quiet", "--test", "user"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "the user's assertion must fail:\n{stdout}");
    assert!(stdout.contains("flame graph (alloc_space): "), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&folded.display().to_string()), "{stdout}");
    let text = std::fs::read_to_string(&folded).unwrap();
    let bytes: u64 = text
        .lines()
        .filter(|l| l.contains("user_function"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    // 3 × 512 bytes, plus the Vec of 3 Vecs (72 bytes), all under user_function.
    assert_eq!(bytes, 3 * 512 + 72, "{text}");
    let svg = std::fs::read_to_string(dir.join("target/heapprobe-reports/user_test.svg")).unwrap();
    // The subtitle gives the total once with its unit ("1.6 KiB", never "1.6 KiB bytes").
    assert!(svg.contains(" samples, rate ") && !svg.contains("B bytes"), "{svg}");
    // Built without frame pointers, so the stacks came from .eh_frame.
    assert!(stdout.contains("stacks by .eh_frame"), "{stdout}");
}

#[test]
fn a_release_build_without_frame_pointers_profiles_without_crashing_and_reaches_the_allocating_function() {
    let dir = project();
    let out = cargo(&dir, &["run", "--quiet", "--release"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the release binary failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("through user_allocates: 100000\n"), "{stdout}\n{stderr}");
    assert!(stdout.contains("unwinder: .eh_frame"), "{stdout}");
}
