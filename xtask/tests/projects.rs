//! `cargo heapprobe` in users' projects (tests/projects: workspaces of their
//! own, depending on heapprobe by path, with nothing heapprobe-specific),
//! installed as a user installs it (`cargo install --path xtask --root
//! DIR`, once for all these tests), for real: root, perf, the kernel's
//! uprobes. With `CI=true` a missing tool fails; elsewhere these tests skip
//! with one loud line. They share kernel state and one target directory
//! (`target/projects`), so they take turns.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};

use support::{assert_no_heapprobe_uprobes, root, tracing_available, TempDir};

static KERNEL: Mutex<()> = Mutex::new(());

/// What `build_inventory` allocates: 100 pages and the Vec of their pointers.
const INVENTORY_BYTES: u64 = 100 * 4096 + 100 * 8;
/// What `right::make` allocates: 7 buffers of 2000 bytes and their Vec.
const RIGHT_BYTES: u64 = 7 * 2000 + 7 * 24;

fn available(test: &str) -> Option<MutexGuard<'static, ()>> {
    let guard = KERNEL.lock().unwrap_or_else(|e| e.into_inner());
    tracing_available(test, &["perf"]).then_some(guard)
}

fn project(name: &str) -> PathBuf {
    root().join("tests/projects").join(name)
}

/// The target directory the projects build into (`pair` names it in its
/// own `.cargo/config.toml`; the others get it from `CARGO_TARGET_DIR`).
fn shared_target() -> PathBuf {
    root().join("target/projects")
}

/// Installs `cargo-heapprobe` once, as a user would, and returns the
/// directory it is in.
fn installed() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let install_root = root().join("target/cargo-heapprobe-install");
        let out = Command::new(env!("CARGO"))
            .args(["install", "--locked", "--force", "--path"])
            .arg(root().join("xtask"))
            .arg("--root")
            .arg(&install_root)
            // Kept between runs, so that a second run does not rebuild.
            .env("CARGO_TARGET_DIR", root().join("target/install"))
            .output()
            .expect("cargo install runs");
        assert!(out.status.success(), "cargo install failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let bin = install_root.join("bin");
        assert!(bin.join("cargo-heapprobe").is_file(), "cargo install installed no cargo-heapprobe");
        bin
    })
}

/// `program ARGS` run in `dir` as from a user's shell there: `PWD` is
/// `dir`, `cargo heapprobe` is on `PATH`, and none of the variables the
/// test's own cargo set.
fn user_command(program: &str, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir).env("PWD", dir);
    for (var, _) in std::env::vars_os() {
        let var = var.to_string_lossy().into_owned();
        if (var.starts_with("CARGO_") && var != "CARGO_HOME") || var == "CARGO" || var == "RUSTFLAGS" {
            cmd.env_remove(&var);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_dir = Path::new(env!("CARGO")).parent().expect("cargo is in a directory").to_path_buf();
    let dirs = [installed().to_path_buf(), cargo_dir].into_iter().chain(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(dirs).expect("PATH"));
    cmd
}

/// `cargo ARGS` in `dir`, building into the shared target directory.
fn cargo_in(dir: &Path, args: &[&str]) -> Output {
    run(user_command("cargo", dir, args).env("CARGO_TARGET_DIR", shared_target()))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("the command runs");
    eprintln!(
        "$ {cmd:?}\n--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Folded file → stack → weight. Its first line is the header that records
/// the weight (`# heapprobe: weight=…`).
fn folded(path: &Path) -> HashMap<String, u64> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.starts_with("# heapprobe: weight="), "{}: no header", path.display());
    text.lines()
        .skip(1)
        .map(|line| {
            let (stack, weight) = line.rsplit_once(' ').expect("`stack weight`");
            (stack.to_owned(), weight.parse().expect("numeric weight"))
        })
        .collect()
}

fn weight_through(stacks: &HashMap<String, u64>, frame: &str) -> u64 {
    stacks.iter().filter(|(s, _)| s.split(';').any(|f| f == frame)).map(|(_, w)| w).sum()
}

/// Checks a flame graph of the inventory: exactly its bytes through
/// `inventory::build_inventory`, each tower through it ending at it or one
/// frame above (the allocator's own frames trimmed).
fn assert_inventory_graph(svg: &Path, what: &str) {
    let stacks = folded(&svg.with_extension("folded"));
    assert_eq!(weight_through(&stacks, "inventory::build_inventory"), INVENTORY_BYTES, "{what}");
    for stack in stacks.keys().filter(|s| s.contains("inventory::build_inventory")) {
        let frames: Vec<&str> = stack.split(';').collect();
        let at = frames.iter().position(|f| *f == "inventory::build_inventory").unwrap();
        assert!(frames.len() - at <= 2, "{what}: a tower goes on above build_inventory: {stack}");
    }
    let image = std::fs::read_to_string(svg).unwrap();
    assert!(image.contains("inventory::build_inventory"), "{what}: the SVG names the frame");
}

/// The README's main command, as a user of another project runs it: the
/// exact bytes of the project's own function; the project's files and its
/// ordinary build untouched.
#[test]
fn cargo_heapprobe_traces_a_test_of_a_users_project() {
    let Some(_kernel) = available("cargo_heapprobe_traces_a_test_of_a_users_project") else { return };
    let dir = project("inventory");
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    // An ordinary build first: tracing must not invalidate it.
    assert!(cargo_in(&dir, &["test", "--no-run"]).status.success());
    let tmp = TempDir::new("projects-inventory");
    let svg = tmp.path().join("flamegraph.svg");
    let out = cargo_in(&dir, &["heapprobe", "trace", "--test", "it_works", "--keep", "-o", svg.to_str().unwrap()]);
    assert!(out.status.success());
    assert_inventory_graph(&svg, "cargo heapprobe trace");
    assert!(String::from_utf8_lossy(&out.stdout).contains("lost events: 0"));
    // The other subcommands work there too: fold (of the kept perf.data),
    // probes and doctor (of the same test, built the same way).
    let kept = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("perf.data"))
        .find(|p| p.is_file())
        .expect("--keep kept perf.data");
    let refolded = tmp.path().join("refolded.svg");
    let out = cargo_in(&dir, &["heapprobe", "fold", kept.to_str().unwrap(), "-o", refolded.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(folded(&refolded.with_extension("folded")), folded(&svg.with_extension("folded")), "fold vs trace");
    let out = cargo_in(&dir, &["heapprobe", "probes", "--test", "it_works"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("heapprobe  alloc "));
    let out = cargo_in(&dir, &["heapprobe", "doctor", "--test", "it_works"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("0 failure(s)"));
    assert!(shared_target().join("heapprobe").is_dir(), "built in the profile's own directory");
    let again = cargo_in(&dir, &["test", "--no-run"]);
    assert!(!String::from_utf8_lossy(&again.stderr).contains("Compiling"), "the ordinary build was invalidated");
    assert_eq!(std::fs::read_to_string(dir.join("Cargo.toml")).unwrap(), manifest, "Cargo.toml was changed");
    assert_no_heapprobe_uprobes();
}

/// The project's own few-line xtask hands `trace` to the library.
#[test]
fn the_projects_own_xtask_traces_the_same() {
    let Some(_kernel) = available("the_projects_own_xtask_traces_the_same") else { return };
    let tmp = TempDir::new("projects-xtask");
    let svg = tmp.path().join("xtask.svg");
    let out = cargo_in(&project("inventory"), &["xtask", "trace", "--test", "it_works", "-o", svg.to_str().unwrap()]);
    assert!(out.status.success());
    assert_inventory_graph(&svg, "cargo xtask trace");
    assert_no_heapprobe_uprobes();
}

/// `cargo heapprobe diff`, and the project's own `cargo xtask diff`, on a
/// real trace of the project and a copy of it with one stack more and one
/// grown: both see exactly that, and write the same differential graph.
#[test]
fn diff_in_a_users_project_with_both_commands() {
    let Some(_kernel) = available("diff_in_a_users_project_with_both_commands") else { return };
    let dir = project("inventory");
    let tmp = TempDir::new("projects-diff");
    let before = tmp.path().join("before.svg");
    let out = cargo_in(&dir, &["heapprobe", "trace", "--test", "it_works", "-o", before.to_str().unwrap()]);
    assert!(out.status.success());
    let before = before.with_extension("folded");
    // After: a stack through build_inventory 4096 bytes heavier, and a new one.
    let text = std::fs::read_to_string(&before).unwrap();
    let mut grown = false;
    let mut after: Vec<String> = text
        .lines()
        .map(|line| match line.rsplit_once(' ') {
            Some((stack, weight)) if !grown && stack.contains(";inventory::build_inventory") => {
                grown = true;
                format!("{stack} {}", weight.parse::<u64>().unwrap() + 4096)
            }
            _ => line.to_owned(),
        })
        .collect();
    assert!(grown, "a stack goes through build_inventory:\n{text}");
    after.push(String::from("main;inventory::new_cache 512"));
    let after_path = tmp.path().join("after.folded");
    std::fs::write(&after_path, after.join("\n") + "\n").unwrap();
    let mut graphs = Vec::new();
    for command in [&["heapprobe", "diff"][..], &["xtask", "diff"]] {
        let svg = tmp.path().join(format!("{}.diff.svg", command[0]));
        let args = [command, &[before.to_str().unwrap(), after_path.to_str().unwrap(), "-o", svg.to_str().unwrap()]];
        let out = cargo_in(&dir, &args.concat());
        assert!(out.status.success(), "cargo {command:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("  change: +4608 B ("), "{stdout}");
        assert!(stdout.contains("  stacks: 2 grew, 0 shrank, "), "{stdout}");
        assert!(stdout.contains("\n  +4096 B  inventory::build_inventory <- "), "{stdout}");
        assert!(stdout.contains("\n   +512 B  inventory::new_cache <- main  (new)\n"), "{stdout}");
        graphs.push(std::fs::read_to_string(&svg).unwrap());
    }
    let strip_title =
        |svg: &str| svg.lines().filter(|l| !l.contains("heapprobe diff: ")).collect::<Vec<_>>().join("\n");
    assert_eq!(strip_title(&graphs[0]), strip_title(&graphs[1]), "the same graph from both commands");
    assert_no_heapprobe_uprobes();
}

/// `--manifest-path` from another directory: the graph goes to that
/// directory (`flamegraph.svg`, the default).
#[test]
fn manifest_path_from_another_directory() {
    let Some(_kernel) = available("manifest_path_from_another_directory") else { return };
    let tmp = TempDir::new("projects-manifest-path");
    let manifest = project("inventory").join("Cargo.toml");
    let out = cargo_in(
        tmp.path(),
        &["heapprobe", "trace", "--manifest-path", manifest.to_str().unwrap(), "--test", "it_works"],
    );
    assert!(out.status.success());
    assert_inventory_graph(&tmp.path().join("flamegraph.svg"), "--manifest-path");
    assert_no_heapprobe_uprobes();
}

/// `--release`: the optimised build, with the allocator inlined into
/// `__rust_alloc`, still weighs exactly, in its own profile directory.
#[test]
fn release_build() {
    let Some(_kernel) = available("release_build") else { return };
    let tmp = TempDir::new("projects-release");
    let svg = tmp.path().join("release.svg");
    let out = cargo_in(
        &project("inventory"),
        &["heapprobe", "trace", "--release", "--test", "it_works", "-o", svg.to_str().unwrap(), "-v"],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--profile heapprobe-release"), "the release profile");
    assert_inventory_graph(&svg, "--release");
    assert!(shared_target().join("heapprobe-release").is_dir());
    assert_no_heapprobe_uprobes();
}

/// A workspace of two members that both have an `it_works` test: `-p`
/// picks one, and without it the error says so; inside a member's
/// directory, that member is meant. The workspace's `build.target-dir` is
/// where it builds.
#[test]
fn p_picks_a_member_of_a_two_member_workspace() {
    let Some(_kernel) = available("p_picks_a_member_of_a_two_member_workspace") else { return };
    let dir = project("pair");
    let tmp = TempDir::new("projects-pair");
    let svg = tmp.path().join("pair.svg");
    let o = svg.to_str().unwrap();
    let pair = |dir: &Path, args: &[&str]| run(&mut user_command("cargo", dir, args));
    let out = pair(&dir, &["heapprobe", "trace", "--test", "it_works", "-o", o]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("packages left, right all have a test target named \"it_works\": pick one with -p"),
        "the ambiguity is explained"
    );
    let out = pair(&dir, &["heapprobe", "trace", "-p", "right", "--test", "it_works", "-o", o]);
    assert!(out.status.success());
    let stacks = folded(&svg.with_extension("folded"));
    assert_eq!(weight_through(&stacks, "right::make"), RIGHT_BYTES);
    assert_eq!(weight_through(&stacks, "left::make"), 0);
    assert!(shared_target().join("heapprobe").is_dir(), "the workspace's build.target-dir");
    let out = pair(&dir.join("left"), &["heapprobe", "trace", "--test", "it_works", "-o", o]);
    assert!(out.status.success());
    let stacks = folded(&svg.with_extension("folded"));
    assert_eq!(weight_through(&stacks, "left::make"), 3 * 1000 + 3 * 24);
    assert_eq!(weight_through(&stacks, "right::make"), 0);
    assert_no_heapprobe_uprobes();
}

/// The command an allocation assertion prints when it fails, from three
/// places: the package's directory (as is), the workspace root of a
/// multi-member workspace (`-p`), and outside (`--manifest-path`). Each,
/// run as printed where `cargo test` ran, draws the scope's allocations.
#[test]
fn a_failed_assertion_prints_a_command_that_works() {
    let Some(_kernel) = available("a_failed_assertion_prints_a_command_that_works") else { return };
    let tmp = TempDir::new("projects-budget");
    let inventory = project("inventory");
    let manifest = inventory.join("Cargo.toml");
    let pair = project("pair");
    // (where cargo test runs, its arguments, the variable that makes the
    // test fail, the command it must print, the frame, its bytes)
    type Case<'a> = (&'a Path, Vec<&'a str>, (&'a str, &'a str), String, &'a str, u64);
    let cases: [Case; 3] = [
        (
            &inventory,
            vec!["test", "--test", "budget"],
            ("INVENTORY_OVER_BUDGET", "1"),
            String::from("cargo heapprobe trace --test inventory_stays_within_budget --event alloc_locked"),
            "inventory::build_inventory",
            INVENTORY_BYTES,
        ),
        (
            tmp.path(),
            vec!["test", "--manifest-path", manifest.to_str().unwrap(), "--test", "budget"],
            ("INVENTORY_OVER_BUDGET", "1"),
            format!(
                "cargo heapprobe trace --manifest-path {} --test inventory_stays_within_budget --event alloc_locked",
                manifest.display()
            ),
            "inventory::build_inventory",
            INVENTORY_BYTES,
        ),
        (
            &pair,
            vec!["test", "-p", "right", "--test", "budget"],
            ("RIGHT_OVER_BUDGET", "1"),
            String::from("cargo heapprobe trace -p right --test right_stays_within_budget --event alloc_locked"),
            "right::make",
            RIGHT_BYTES,
        ),
    ];
    for (dir, test, (var, value), expected, frame, bytes) in cases {
        let mut cmd = user_command("cargo", dir, &test);
        if dir != pair {
            cmd.env("CARGO_TARGET_DIR", shared_target());
        }
        let out = run(cmd.env(var, value));
        assert!(!out.status.success(), "the budget test fails on purpose");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let printed = stdout
            .lines()
            .skip_while(|l| !l.starts_with("to see where the scope allocated"))
            .nth(1)
            .unwrap_or_else(|| panic!("no command in the report:\n{stdout}"))
            .trim();
        assert_eq!(printed, expected);
        let graph = dir.join("flamegraph.svg");
        let folded_path = graph.with_extension("folded");
        let mut shell = user_command("sh", dir, &["-c", printed]);
        if dir != pair {
            shell.env("CARGO_TARGET_DIR", shared_target());
        }
        let traced = run(shell.env(var, value));
        let stacks = folded(&folded_path);
        let graph_written = graph.is_file();
        let _ = std::fs::remove_file(&graph);
        let _ = std::fs::remove_file(&folded_path);
        // The traced test fails again, as it does under cargo test, and says so.
        assert!(!traced.status.success());
        assert!(
            String::from_utf8_lossy(&traced.stderr).contains("the traced test ended badly (exited with status 101)")
        );
        assert!(graph_written, "{printed}: no flame graph");
        assert_eq!(weight_through(&stacks, frame), bytes, "{printed}");
        assert_eq!(stacks.values().sum::<u64>(), bytes, "{printed}: only the scope's allocations");
        assert_no_heapprobe_uprobes();
    }
}

/// Bad input: a project that does not use heapprobe, a test no member has,
/// an unknown package, a broken Cargo.toml, no Cargo.toml at all. Each is a
/// clear error that names what was looked at, exits non-zero, writes
/// nothing and leaves no probe behind.
#[test]
fn bad_input_fails_clearly_and_leaves_nothing_behind() {
    let Some(_kernel) = available("bad_input_fails_clearly_and_leaves_nothing_behind") else { return };
    let tmp = TempDir::new("projects-bad");
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(broken.join("src")).unwrap();
    std::fs::write(broken.join("Cargo.toml"), "[package]\nname = \"broken\"\nversion = \n").unwrap();
    std::fs::write(broken.join("src/lib.rs"), "").unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let svg = tmp.path().join("never.svg");
    let o = svg.to_str().unwrap();
    let plain = project("plain");
    let inventory = project("inventory");
    let cases: [(&Path, &[&str], String); 5] = [
        (
            &plain,
            &["--test", "it_works"],
            format!(
                "no package of the workspace of {} depends on heapprobe (its packages: plain)",
                plain.join("Cargo.toml").display()
            ),
        ),
        (
            &inventory,
            &["--test", "no_such_test"],
            format!(
                "no test target and no test function named \"no_such_test\" (looked in inventory of the workspace of {})",
                inventory.join("Cargo.toml").display()
            ),
        ),
        (
            &inventory,
            &["-p", "nope", "--test", "it_works"],
            format!(
                "no package named \"nope\" in the workspace of {} (its packages: inventory, xtask)",
                inventory.join("Cargo.toml").display()
            ),
        ),
        (
            &broken,
            &["--test", "it_works"],
            format!("cannot read the cargo workspace of {}", broken.join("Cargo.toml").display()),
        ),
        (&empty, &["--test", "it_works"], format!("no Cargo.toml in {} or any directory above it", empty.display())),
    ];
    for (dir, args, expected) in cases {
        let out = cargo_in(dir, &[&["heapprobe", "trace", "-o", o], args].concat());
        assert!(!out.status.success(), "{args:?} in {}", dir.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&expected), "{args:?} in {}: stderr lacks {expected:?}", dir.display());
        assert!(!svg.exists() && !svg.with_extension("folded").exists(), "{args:?} wrote output");
        assert_no_heapprobe_uprobes();
    }
}

/// Writes `files` (paths relative to `dir`, contents with `{heapprobe}`
/// standing for this repository) and a copy of this repository's
/// Cargo.lock, so that heapprobe's dependencies resolve to the versions
/// already built in the shared target directory.
fn write_project(dir: &Path, files: &[(&str, &str)]) {
    let heapprobe = root().display().to_string();
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text.replace("{heapprobe}", &heapprobe)).unwrap();
    }
    std::fs::copy(root().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
}

/// A package as `cargo new` grows into, edition 2024: a library whose
/// `[lib] name` differs from the package's, which is also where the global
/// allocator is declared; binaries (`src/main.rs`, `src/bin/restock/`,
/// `src/bin/app.rs`, and one with `required-features`); integration tests,
/// one named like a binary, one with `harness = false`, one with a custom
/// `path`; an example; a bench; a build script; a proc-macro member. Every
/// target calls `shopcore::stock` once with bytes of its own, so a graph
/// with the wrong executable's bytes cannot pass.
const SHOP: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        r#"[workspace]

[package]
name = "shop"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
name = "shopcore"

[features]
extra = []

[dependencies]
heapprobe = { path = "{heapprobe}" }
shop-macros = { path = "macros" }

[[bin]]
name = "gated"
path = "src/gated.rs"
required-features = ["extra"]

[[test]]
name = "custom"
harness = false

[[test]]
name = "checks"
path = "checks/main.rs"
"#,
    ),
    ("build.rs", "fn main() {\n    println!(\"cargo::rustc-env=SHOP_SHELVES=3\");\n}\n"),
    (
        "macros/Cargo.toml",
        "[package]\nname = \"shop-macros\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n[lib]\nproc-macro = true\n",
    ),
    (
        "macros/src/lib.rs",
        r#"use proc_macro::TokenStream;

/// `double!(N)`: the literal 2N.
#[proc_macro]
pub fn double(input: TokenStream) -> TokenStream {
    let n: usize = input.to_string().trim().parse().expect("an integer literal");
    format!("{}usize", 2 * n).parse().unwrap()
}
"#,
    ),
    (
        "src/lib.rs",
        r#"use std::alloc::System;
use std::hint::black_box;

use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

/// From the build script, through the proc macro: 6.
pub const SHELVES: usize = shop_macros::double!(3);
const _: () = assert!(SHELVES == 2 * 3);

/// One allocation of exactly `bytes` bytes.
#[inline(never)]
pub fn stock(bytes: usize) -> Vec<u8> {
    assert_eq!(env!("SHOP_SHELVES"), "3");
    black_box(Vec::with_capacity(bytes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn lib_stock() {
        super::stock(1234);
    }
}
"#,
    ),
    ("src/main.rs", "fn main() {\n    shopcore::stock(1111);\n}\n"),
    ("src/bin/restock/main.rs", "fn main() {\n    shopcore::stock(2222);\n}\n"),
    ("src/bin/app.rs", "fn main() {\n    shopcore::stock(3333);\n}\n"),
    ("src/gated.rs", "fn main() {\n    shopcore::stock(4321);\n}\n"),
    ("tests/it_works.rs", "#[test]\nfn stocks_the_shelf() {\n    shopcore::stock(4444);\n}\n"),
    ("tests/app.rs", "#[test]\nfn app() {\n    shopcore::stock(5555);\n}\n"),
    ("tests/custom.rs", "fn main() {\n    shopcore::stock(6666);\n}\n"),
    ("checks/main.rs", "#[test]\nfn checked() {\n    shopcore::stock(7777);\n}\n"),
    ("examples/demo.rs", "fn main() {\n    shopcore::stock(8888);\n}\n"),
    ("benches/speed.rs", "#[test]\nfn bench_stock() {\n    shopcore::stock(9999);\n}\n"),
];

/// A virtual workspace whose target directory is set in its
/// `.cargo/config.toml`: `model` (no heapprobe), `api` (depends on
/// `model`; heapprobe only as its tests' allocator) and `server` (a binary
/// with integration tests, depending on `api`; each program declares the
/// allocator itself). `model::order(n)` allocates `n` u64s.
const DEPOT: &[(&str, &str)] = &[
    ("Cargo.toml", "[workspace]\nmembers = [\"model\", \"api\", \"server\"]\nresolver = \"2\"\n"),
    ("model/Cargo.toml", "[package]\nname = \"model\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n"),
    (
        "model/src/lib.rs",
        "/// `n` u64s: `8 n` bytes, one allocation.\n#[inline(never)]\npub fn order(n: usize) -> Vec<u64> {\n    \
         std::hint::black_box(Vec::with_capacity(n))\n}\n",
    ),
    (
        "api/Cargo.toml",
        "[package]\nname = \"api\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n[dependencies]\nmodel \
         = { path = \"../model\" }\n\n[dev-dependencies]\nheapprobe = { path = \"{heapprobe}\" }\n",
    ),
    ("api/src/lib.rs", "pub fn place(n: usize) -> Vec<u64> {\n    model::order(n)\n}\n"),
    (
        "api/tests/orders.rs",
        "#[global_allocator]\nstatic GLOBAL: heapprobe::Heapprobe<std::alloc::System> = \
         heapprobe::Heapprobe::new(std::alloc::System);\n\n#[test]\nfn places() {\n    api::place(125);\n}\n",
    ),
    (
        "server/Cargo.toml",
        "[package]\nname = \"server\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n[dependencies]\napi = \
         { path = \"../api\" }\nheapprobe = { path = \"{heapprobe}\" }\n",
    ),
    (
        "server/src/main.rs",
        "#[global_allocator]\nstatic GLOBAL: heapprobe::Heapprobe<std::alloc::System> = \
         heapprobe::Heapprobe::new(std::alloc::System);\n\nfn main() {\n    api::place(250);\n}\n",
    ),
    (
        "server/tests/serve.rs",
        "#[global_allocator]\nstatic GLOBAL: heapprobe::Heapprobe<std::alloc::System> = \
         heapprobe::Heapprobe::new(std::alloc::System);\n\n#[test]\nfn serves() {\n    \
         assert!(std::path::Path::new(env!(\"CARGO_BIN_EXE_server\")).exists());\n    api::place(375);\n}\n",
    ),
];

/// The layouts users' projects have, each target traced by the installed
/// tool as a user runs it, each with its exact bytes through the marker.
#[test]
fn every_layout_traces_the_target_asked_for() {
    let Some(_kernel) = available("every_layout_traces_the_target_asked_for") else { return };
    let tmp = TempDir::new("projects-layouts");
    let shop = tmp.path().join("shop");
    write_project(&shop, SHOP);
    let depot = tmp.path().join("depot");
    write_project(&depot, DEPOT);
    let config = format!("[build]\ntarget-dir = {:?}\n", shared_target().display().to_string());
    write_project(&depot, &[(".cargo/config.toml", &config)]);
    let svg = tmp.path().join("layout.svg");
    let o = svg.to_str().unwrap();
    // (where, the target's flags, the marker frame, its bytes); the shop
    // builds into CARGO_TARGET_DIR, the depot into its build.target-dir.
    let cases: &[(&Path, &[&str], &str, u64)] = &[
        (&shop, &["--test", "it_works"], "shopcore::stock", 4444),
        (&shop, &["--test", "stocks_the_shelf"], "shopcore::stock", 4444),
        (&shop, &["--bin", "shop"], "shopcore::stock", 1111),
        (&shop, &["--bin", "restock"], "shopcore::stock", 2222),
        (&shop, &["--bin", "app"], "shopcore::stock", 3333),
        (&shop, &["--test", "app"], "shopcore::stock", 5555),
        (&shop, &["--test", "custom"], "shopcore::stock", 6666),
        (&shop, &["--test", "checks"], "shopcore::stock", 7777),
        (&shop, &["--test", "checked"], "shopcore::stock", 7777),
        (&shop, &["--example", "demo"], "shopcore::stock", 8888),
        (&shop, &["--bench", "speed"], "shopcore::stock", 9999),
        (&shop, &["--lib"], "shopcore::stock", 1234),
        (&shop, &["--features", "extra", "--bin", "gated"], "shopcore::stock", 4321),
        (&depot, &["--test", "orders"], "model::order", 125 * 8),
        (&depot, &["--test", "serve"], "model::order", 375 * 8),
        (&depot, &["--bin", "server"], "model::order", 250 * 8),
        (&depot.join("server"), &["--test", "serves"], "model::order", 375 * 8),
        (&depot, &["-p", "api", "--test", "places"], "model::order", 125 * 8),
    ];
    for (dir, flags, frame, bytes) in cases {
        let mut cmd = user_command("cargo", dir, &[&["heapprobe", "trace", "-o", o], *flags].concat());
        if dir.starts_with(&shop) {
            cmd.env("CARGO_TARGET_DIR", shared_target());
        }
        let out = run(&mut cmd);
        let what = format!("{flags:?} in {}", dir.display());
        assert!(out.status.success(), "{what}: failed");
        let stacks = folded(&svg.with_extension("folded"));
        assert_eq!(weight_through(&stacks, frame), *bytes, "{what}: the bytes through {frame}");
        assert_no_heapprobe_uprobes();
    }
    // `probes` resolves targets the same way.
    for (dir, flags) in [(&shop, &["--test", "it_works"]), (&depot, &["--test", "serve"])] {
        let mut cmd = user_command("cargo", dir, &[&["heapprobe", "probes"], &flags[..]].concat());
        cmd.env("CARGO_TARGET_DIR", shared_target());
        let out = run(&mut cmd);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("heapprobe  alloc "),
            "{flags:?}"
        );
    }
    // What cannot be traced says why, and writes nothing.
    std::fs::remove_file(svg.with_extension("folded")).unwrap();
    std::fs::remove_file(&svg).unwrap();
    let refused: &[(&Path, &[&str], &str)] = &[
        (&shop, &["--bin", "gated"], "requires the features: `extra`"),
        (&depot, &["-p", "model", "--test", "orders"], "package model ("),
    ];
    for (dir, flags, expected) in refused {
        let mut cmd = user_command("cargo", dir, &[&["heapprobe", "trace", "-o", o], *flags].concat());
        cmd.env("CARGO_TARGET_DIR", shared_target());
        let out = run(&mut cmd);
        assert!(!out.status.success(), "{flags:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(expected), "{flags:?}: stderr lacks {expected:?}");
        assert!(!svg.exists(), "{flags:?} wrote a graph");
    }
    assert_no_heapprobe_uprobes();
}

/// Real crates from crates.io, each traced through one of its own
/// integration tests: (crate, exact version, the test target).
const REAL_CRATES: [(&str, &str, &str); 3] = [
    // No dependencies at all: string metrics over Vecs.
    ("strsim", "0.11.1", "lib"),
    // serde's derive among its dev-dependencies (a proc-macro build),
    // `should_panic` tests.
    ("slab", "0.4.12", "slab"),
    // Shared and growing buffers: as many reallocs as allocs.
    ("bytes", "1.12.2", "test_buf_mut"),
];

/// The heap summary's figures that a trace of `alloc` must match:
/// (allocs, bytes allocated minus bytes grown), from `heapprobe: ...` lines.
fn summary_allocs(stderr: &str) -> (u64, u64) {
    let number = |s: &str| s.replace(',', "").parse::<u64>().unwrap_or_else(|_| panic!("not a number: {s:?}"));
    let line = |prefix: &str| {
        let lines: Vec<&str> = stderr.lines().filter_map(|l| l.strip_prefix(prefix)).collect();
        assert_eq!(lines.len(), 1, "one {prefix:?} line:\n{stderr}");
        lines[0].split_whitespace().map(|w| w.trim_end_matches(',')).collect::<Vec<_>>()
    };
    let usage = line("heapprobe:   total heap usage: ");
    let reallocs = line("heapprobe:           reallocs: ");
    assert_eq!((usage[1], usage[6], reallocs[2]), ("allocs", "allocated", "bytes"), "{stderr}");
    (number(usage[0]), number(usage[4]) - number(reallocs[1]))
}

/// Real crates, unmodified but for the two lines a user adds: heapprobe
/// as a dev-dependency and as the `#[global_allocator]` of one integration
/// test. Fetched through cargo (`cargo vendor` of the exact versions), each
/// test is traced by the installed tool, and the trace must equal the
/// heapprobe counters of the same run (the heap summary at exit) in events
/// and bytes, with at least 99% of the bytes under symbolised frames.
#[test]
fn real_crates_from_crates_io_trace_exactly() {
    let Some(_kernel) = available("real_crates_from_crates_io_trace_exactly") else { return };
    let tmp = TempDir::new("projects-crates");
    let fetch = tmp.path().join("fetch");
    let deps: String = REAL_CRATES.iter().map(|(name, version, _)| format!("{name} = \"={version}\"\n")).collect();
    write_project(
        &fetch,
        &[
            ("Cargo.toml", &format!("[package]\nname = \"fetch\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[workspace]\n\n[dependencies]\n{deps}")),
            ("src/lib.rs", ""),
        ],
    );
    std::fs::remove_file(fetch.join("Cargo.lock")).unwrap();
    let out = cargo_in(&fetch, &["vendor", "--versioned-dirs", "--quiet", "vendor"]);
    assert!(out.status.success(), "cargo vendor (crates.io must be reachable)");
    let svg = tmp.path().join("crate.svg");
    for (name, version, test) in REAL_CRATES {
        let dir = tmp.path().join(name);
        copy_dir(&fetch.join("vendor").join(format!("{name}-{version}")), &dir);
        std::fs::remove_file(dir.join(".cargo-checksum.json")).unwrap();
        let append = |path: &Path, text: &str| {
            let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
            std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        };
        let heapprobe = root().display().to_string();
        append(
            &dir.join("Cargo.toml"),
            &format!("\n[dev-dependencies.heapprobe]\npath = {heapprobe:?}\n\n[workspace]\n"),
        );
        append(
            &dir.join("tests").join(format!("{test}.rs")),
            "\n#[global_allocator]\nstatic GLOBAL: heapprobe::Heapprobe<std::alloc::System> = \
             heapprobe::Heapprobe::new(std::alloc::System);\n",
        );
        std::fs::copy(root().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
        let mut cmd = user_command("cargo", &dir, &["heapprobe", "trace", "--test", test, "-o", svg.to_str().unwrap()]);
        let out = run(cmd.env("CARGO_TARGET_DIR", shared_target()).env("HEAPPROBE_SUMMARY", "1"));
        assert!(out.status.success(), "{name}: the trace failed");
        let (allocs, bytes) = summary_allocs(&String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let expected = format!("heapprobe:alloc: {allocs} events, ");
        let line = stdout.lines().find(|l| l.starts_with(&expected));
        let line = line.unwrap_or_else(|| panic!("{name}: the trace did not read {allocs} events:\n{stdout}"));
        assert!(line.contains(&format!(" ({bytes} bytes) in ")), "{name}: {line} against {bytes} bytes");
        let stacks = folded(&svg.with_extension("folded"));
        assert_eq!(stacks.values().sum::<u64>(), bytes, "{name}: the folded stacks add up to the counters");
        let unknown: u64 = stacks.iter().filter(|(s, _)| s.contains("[unknown]")).map(|(_, w)| w).sum();
        assert!(unknown * 100 <= bytes, "{name}: {unknown} of {bytes} bytes under unsymbolised frames");
        assert!(allocs > 100, "{name}: a real workload, not {allocs} allocations");
        assert_no_heapprobe_uprobes();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
