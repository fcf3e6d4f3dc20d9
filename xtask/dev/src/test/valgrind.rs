//! `cargo xtask test`'s memcheck step: the library's test binaries under
//! `valgrind --tool=memcheck --leak-check=full`, which must report 0 errors
//! and 0 bytes definitely or indirectly lost; then positive controls (a test
//! binary that leaks, and one that reads freed memory, on purpose) run the
//! same way and must be reported, or the step fails.
//!
//! Each run's valgrind log goes to `target/valgrind/NAME.log` and the test
//! binary's own output to `target/valgrind/NAME.out`. Suppressions, each
//! with its reason, are in `tests/valgrind.supp`.
//!
//! Then LeakSanitizer checks the same binaries again, at native speed: no
//! nightly, so no `-Zsanitizer`, but clang's ASan runtime from Debian's
//! `libclang-rt-14-dev`, preloaded (`LD_PRELOAD`) into the uninstrumented
//! binaries, replaces malloc and runs LeakSanitizer at exit. It finds leaks
//! only (memory accesses are not instrumented), so memcheck stays the check
//! for errors; the leak control must be reported by both. Its suppressions
//! are in `tests/lsan.supp`.

use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _};
use cargo_metadata::Message;

use crate::project_root;
use heapprobe_cli::util::{cargo, display, has_tool, is_root, require_tool};

/// The library's test binaries checked (cargo target names; `heapprobe` is
/// the library's unit tests).
pub const CHECKED: [&str; 6] = ["heapprobe", "counters", "scope", "threads", "local", "alloc_assertions"];

/// The test binary of the positive controls: its tests are `#[ignore]`d and
/// do something wrong on purpose, which memcheck must report.
const CONTROL: &str = "valgrind_control";

/// Each control test, and a line of the valgrind log that proves it was seen.
const CONTROLS: [(&str, &str); 2] = [
    ("leaks_4242_bytes", "definitely lost: 4,242 bytes in 1 blocks"),
    ("reads_freed_memory", "Invalid read of size 8"),
];

/// The memcheck command line, without the program. `possibly lost` blocks
/// are listed in the log but are not errors: the std runtime keeps one
/// (the main thread's handle, through a tagged pointer) until exit.
fn valgrind_args(root: &Path, log: &Path) -> Vec<String> {
    vec![
        String::from("--tool=memcheck"),
        String::from("--error-exitcode=1"),
        String::from("--leak-check=full"),
        // tests/threads.rs keeps 1000 threads alive at once; valgrind's
        // default limit is 500, and beyond it valgrind aborts.
        String::from("--max-threads=2000"),
        // Deep enough to reach the test function through the wrapper's lean
        // and slow paths and std's layers: the suppressions match on it
        // (the default 12 frames stopped short, so they stopped matching).
        String::from("--num-callers=40"),
        // valgrind runs one thread at a time; its default lock is unfair,
        // and a thread that loops on allocations starved alloc_assertions'
        // noise threads past their 120 s deadline (92 s of that test alone
        // here, more in CI; 24 s with fair scheduling).
        String::from("--fair-sched=yes"),
        String::from("--show-leak-kinds=definite,indirect,possible"),
        String::from("--errors-for-leak-kinds=definite,indirect"),
        format!("--suppressions={}", root.join("tests/valgrind.supp").display()),
        format!("--log-file={}", log.display()),
    ]
}

/// What memcheck's closing summary said.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Memcheck {
    /// `ERROR SUMMARY: N errors`.
    pub errors: u64,
    /// Bytes and blocks definitely lost.
    pub definitely: (u64, u64),
    /// Bytes and blocks indirectly lost.
    pub indirectly: (u64, u64),
    /// Bytes and blocks possibly lost.
    pub possibly: (u64, u64),
}

/// Parses the closing summary of one memcheck log. Every line it reads
/// must have the shape it expects; a log without an ERROR SUMMARY (valgrind
/// died, or the program was not run under it) is an error.
pub fn parse_log(log: &str) -> anyhow::Result<Memcheck> {
    let mut summary = Memcheck::default();
    let mut seen_errors = false;
    let mut seen_leaks = false;
    for line in log.lines() {
        // `==1234== ` prefix.
        let Some(text) = line.strip_prefix("==").and_then(|l| l.split_once("== ")).map(|(_, t)| t.trim()) else {
            continue;
        };
        let count = |s: &str| -> anyhow::Result<u64> {
            s.replace(',', "").parse().with_context(|| format!("unexpected number {s:?} in valgrind's line {line:?}"))
        };
        let bytes_blocks = |rest: &str| -> anyhow::Result<(u64, u64)> {
            match rest.split_whitespace().collect::<Vec<_>>()[..] {
                [bytes, "bytes", "in", blocks, "blocks"] => Ok((count(bytes)?, count(blocks)?)),
                _ => bail!("unexpected valgrind line {line:?}"),
            }
        };
        if let Some(rest) = text.strip_prefix("ERROR SUMMARY: ") {
            let n = rest.split_whitespace().next().unwrap_or_default();
            summary.errors = count(n)?;
            seen_errors = true;
        } else if let Some(rest) = text.strip_prefix("definitely lost: ") {
            summary.definitely = bytes_blocks(rest)?;
            seen_leaks = true;
        } else if let Some(rest) = text.strip_prefix("indirectly lost: ") {
            summary.indirectly = bytes_blocks(rest)?;
        } else if let Some(rest) = text.strip_prefix("possibly lost: ") {
            summary.possibly = bytes_blocks(rest)?;
        } else if text == "All heap blocks were freed -- no leaks are possible" {
            seen_leaks = true;
        }
    }
    if !seen_errors {
        bail!("valgrind's log has no ERROR SUMMARY (did valgrind run to the end?)");
    }
    if !seen_leaks {
        bail!("valgrind's log has no leak summary (is --leak-check=full on?)");
    }
    Ok(summary)
}

/// Builds the test binaries and returns `(target name, executable)` pairs.
fn build(root: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root)
        .args(["test", "--no-run", "--package", "heapprobe", "--lib", "--message-format=json-render-diagnostics"])
        .stdout(Stdio::piped());
    for name in CHECKED.iter().filter(|n| **n != "heapprobe").chain([&CONTROL]) {
        cmd.args(["--test", name]);
    }
    eprintln!("$ {}", display(&cmd));
    let mut child = cmd.spawn().with_context(|| format!("failed to run {:?}", display(&cmd)))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut built = Vec::new();
    for message in Message::parse_stream(BufReader::new(stdout)) {
        if let Message::CompilerArtifact(artifact) = message.context("reading cargo's JSON messages")? {
            if let Some(exe) = artifact.executable {
                built.push((artifact.target.name.clone(), exe.into_std_path_buf()));
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{:?} exited with {status}; see cargo's errors above", display(&cmd));
    }
    Ok(built)
}

/// Runs `exe ARGS` under memcheck; returns whether valgrind's exit status
/// was 0, the parsed summary and the log's path.
fn memcheck(root: &Path, name: &str, exe: &Path, args: &[&str]) -> anyhow::Result<(Option<i32>, Memcheck, PathBuf)> {
    let dir = root.join("target/valgrind");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let log = dir.join(format!("{name}.log"));
    let out = dir.join(format!("{name}.out"));
    let output = fs::File::create(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut cmd = Command::new("valgrind");
    cmd.args(valgrind_args(root, &log)).arg(exe).args(args).stdout(output.try_clone()?).stderr(output);
    as_cargo_test_runs_it(&mut cmd, root);
    let status = cmd.status().with_context(|| format!("failed to run {:?}", display(&cmd)))?;
    let text = fs::read_to_string(&log).with_context(|| format!("valgrind wrote no log at {}", log.display()))?;
    let summary = parse_log(&text).with_context(|| format!("reading {} (from {:?})", log.display(), display(&cmd)))?;
    Ok((status.code(), summary, log))
}

/// The log's error reports (without valgrind's banner), for the terminal.
fn excerpt(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("Parent PID") && !l.contains("Command:"))
        .skip(2)
        .filter(|l| !l.trim_end().ends_with("=="))
        .take(80)
        .collect();
    lines.join("\n")
}

/// The memcheck step of `cargo xtask test`.
pub fn run(install: bool) -> anyhow::Result<()> {
    let root = project_root();
    if !has_tool("valgrind") {
        if !(install && is_root()) {
            bail!("the memcheck step needs valgrind: run `apt-get install -y valgrind` as root, then `cargo xtask test` again");
        }
        require_tool("VALGRIND", "valgrind", "valgrind")?;
    }
    let started = Instant::now();
    eprintln!("\n==> memcheck: the library's test binaries under valgrind (logs in target/valgrind/)");
    let built = build(&root)?;
    let exe_of = |name: &str| -> anyhow::Result<&PathBuf> {
        built.iter().find(|(n, _)| n == name).map(|(_, exe)| exe).with_context(|| {
            format!("cargo built no test binary named {name} in {} (built: {built:?})", root.display())
        })
    };
    let mut failed = Vec::new();
    for name in CHECKED {
        let exe = exe_of(name)?;
        let clock = Instant::now();
        // One test at a time: valgrind runs one thread at a time anyway.
        let (code, summary, log) = memcheck(&root, name, exe, &["--test-threads=1"])?;
        let verdict =
            if code == Some(0) && summary.errors == 0 && summary.definitely == (0, 0) && summary.indirectly == (0, 0) {
                "ok"
            } else {
                failed.push((name, code, log.clone()));
                "FAILED"
            };
        eprintln!(
            "memcheck {name:<18} {verdict:<6} {} errors, definitely lost {} B, indirectly lost {} B, possibly lost {} B ({:.0} s)",
            summary.errors,
            summary.definitely.0,
            summary.indirectly.0,
            summary.possibly.0,
            clock.elapsed().as_secs_f64()
        );
    }
    for (name, code, log) in &failed {
        let out = log.with_extension("out");
        eprintln!(
            "\n--- {name}: valgrind exited with {code:?} (1: memcheck found errors; 101: a test failed); log {}, test output {}\n{}",
            log.display(),
            out.display(),
            excerpt(log)
        );
    }
    if !failed.is_empty() {
        bail!(
            "memcheck failed for {}: see the reports above and target/valgrind/; a leak or error in heapprobe must be fixed, \
             one in a dependency or the toolchain may get a suppression with its reason in tests/valgrind.supp",
            failed.iter().map(|(n, _, _)| *n).collect::<Vec<_>>().join(", ")
        );
    }
    // Positive controls: the same harness must report what is wrong on purpose.
    let control = exe_of(CONTROL)?;
    for (test, proof) in CONTROLS {
        let (code, summary, log) = memcheck(
            &root,
            &format!("{CONTROL}-{test}"),
            control,
            &["--ignored", "--exact", test, "--test-threads=1"],
        )?;
        let text = fs::read_to_string(&log)?;
        if code != Some(1) || summary.errors == 0 || !text.contains(proof) {
            bail!(
                "the positive control {CONTROL}::{test} was not reported as it must be (valgrind exited with {code:?}, \
                 {summary:?}, no {proof:?} in {}): the memcheck step cannot be trusted",
                log.display()
            );
        }
        eprintln!("memcheck control {test:<18} reported as it must be: {proof:?} (exit status 1)");
    }
    eprintln!("memcheck: all clean, both controls reported, in {:.0} s", started.elapsed().as_secs_f64());
    leak_sanitizer(&root, &built, install)
}

/// The package that ships clang's sanitizer runtimes on Debian 12.
const LSAN_PACKAGE: &str = "libclang-rt-14-dev";

/// clang's ASan runtime (which includes LeakSanitizer), if installed.
fn asan_runtime() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
        .filter_map(|e| fs::read_dir(e.path().join("lib/clang")).ok())
        .flat_map(|versions| versions.flatten())
        .map(|v| v.path().join("lib/linux/libclang_rt.asan-x86_64.so"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop()
}

/// Runs `exe ARGS` with LeakSanitizer preloaded; returns the exit code and
/// everything it printed (LeakSanitizer reports on stderr).
fn lsan(root: &Path, runtime: &Path, name: &str, exe: &Path, args: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
    let out = root.join(format!("target/valgrind/{name}.lsan.out"));
    let file = fs::File::create(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env("LD_PRELOAD", runtime)
        // The slow unwinder: Rust code has no frame pointers by default, and
        // the suppressions name test functions deep in the stack.
        .env("ASAN_OPTIONS", "detect_leaks=1:fast_unwind_on_malloc=0:malloc_context_size=40")
        .env("LSAN_OPTIONS", format!("suppressions={}:print_suppressions=0", root.join("tests/lsan.supp").display()))
        .stdout(file.try_clone()?)
        .stderr(file);
    as_cargo_test_runs_it(&mut cmd, root);
    let status = cmd.status().with_context(|| format!("failed to run {:?}", display(&cmd)))?;
    Ok((status.code(), fs::read_to_string(&out)?))
}

/// In heapprobe's directory, with the variables cargo gives its tests
/// (the failure reports name the package from them), not the xtask's own.
fn as_cargo_test_runs_it(cmd: &mut Command, root: &Path) {
    cmd.current_dir(root)
        .env("CARGO_MANIFEST_DIR", root)
        .env("CARGO_MANIFEST_PATH", root.join("Cargo.toml"))
        .env("CARGO_PKG_NAME", "heapprobe");
}

/// The LeakSanitizer pass over the binaries the memcheck step built.
fn leak_sanitizer(root: &Path, built: &[(String, PathBuf)], install: bool) -> anyhow::Result<()> {
    let runtime = match asan_runtime() {
        Some(runtime) => runtime,
        None if install && is_root() => {
            eprintln!("==> installing {LSAN_PACKAGE} (clang's sanitizer runtimes) with apt-get (we are root)");
            heapprobe_cli::util::exec(Command::new("apt-get").arg("update").arg("-q"))?;
            heapprobe_cli::util::exec(
                Command::new("apt-get").args(["install", "-y", "-q", LSAN_PACKAGE]).env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
            asan_runtime().context("libclang_rt.asan-x86_64.so is still missing after installing it")?
        }
        None => bail!(
            "the LeakSanitizer step needs clang's runtime: run `apt-get install -y {LSAN_PACKAGE}` as root, then `cargo xtask test` again"
        ),
    };
    eprintln!("\n==> LeakSanitizer: the same binaries, {} preloaded", runtime.display());
    let exe_of = |name: &str| built.iter().find(|(n, _)| n == name).map(|(_, exe)| exe.clone());
    let mut failed = Vec::new();
    for name in CHECKED {
        let exe = exe_of(name).with_context(|| format!("no test binary {name}"))?;
        let (code, output) = lsan(root, &runtime, name, &exe, &[])?;
        let leaked = output.contains("ERROR: LeakSanitizer: detected memory leaks");
        let ok = code == Some(0) && !leaked;
        eprintln!("lsan {name:<18} {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            failed.push(name);
            eprintln!(
                "--- {name}: exit status {code:?} (23: leaks; 101: a test failed), output in target/valgrind/{name}.lsan.out\n{}",
                output.lines().filter(|l| !l.starts_with("test ")).take(60).collect::<Vec<_>>().join("\n")
            );
        }
    }
    if !failed.is_empty() {
        bail!("LeakSanitizer found leaks in {} (see above); fix them, or add a suppression with its reason to tests/lsan.supp", failed.join(", "));
    }
    let control = exe_of(CONTROL).with_context(|| format!("no test binary {CONTROL}"))?;
    let (code, output) = lsan(
        root,
        &runtime,
        "valgrind_control-leaks_4242_bytes",
        &control,
        &["--ignored", "--exact", "leaks_4242_bytes"],
    )?;
    let proof = "Direct leak of 4242 byte(s) in 1 object(s)";
    if code == Some(0) || !output.contains(proof) {
        bail!(
            "the positive control {CONTROL}::leaks_4242_bytes was not reported by LeakSanitizer (exit status {code:?}, no {proof:?}): \
             the LeakSanitizer step cannot be trusted"
        );
    }
    eprintln!("lsan control leaks_4242_bytes   reported as it must be: {proof:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &str = "==7== Memcheck, a memory error detector\n\
        ==7== HEAP SUMMARY:\n\
        ==7==     in use at exit: 0 bytes in 0 blocks\n\
        ==7== All heap blocks were freed -- no leaks are possible\n\
        ==7== ERROR SUMMARY: 0 errors from 0 contexts (suppressed: 0 from 0)\n";

    const LEAKY: &str = "==9== LEAK SUMMARY:\n\
        ==9==    definitely lost: 4,242 bytes in 1 blocks\n\
        ==9==    indirectly lost: 0 bytes in 0 blocks\n\
        ==9==      possibly lost: 48 bytes in 1 blocks\n\
        ==9==    still reachable: 544 bytes in 1 blocks\n\
        ==9== ERROR SUMMARY: 1 errors from 1 contexts (suppressed: 0 from 0)\n";

    #[test]
    fn parses_memcheck_summaries() {
        assert_eq!(parse_log(CLEAN).unwrap(), Memcheck::default());
        assert_eq!(
            parse_log(LEAKY).unwrap(),
            Memcheck { errors: 1, definitely: (4242, 1), indirectly: (0, 0), possibly: (48, 1) }
        );
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        assert!(parse_log("==1== HEAP SUMMARY:\n").is_err(), "no ERROR SUMMARY");
        let odd = LEAKY.replace("4,242 bytes in 1 blocks", "4,242 bytes");
        assert!(parse_log(&odd).unwrap_err().to_string().contains("unexpected valgrind line"));
        assert!(parse_log(&CLEAN.replace("All heap blocks were freed -- no leaks are possible\n", "")).is_err());
    }
}
