//! `cargo xtask test --repeat N`: every test binary of the workspace, run N
//! times in a row, to find flaky tests (run it while something else keeps
//! the cores busy). Reports, per binary, how many runs failed and which
//! tests failed how often, with the log of each failed run.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cargo_metadata::Message;

use crate::project_root;
use heapprobe_cli::util::{cargo, display};

/// A test binary cargo built.
struct TestBinary {
    /// `package/kind/name`, as in the report.
    name: String,
    exe: PathBuf,
    /// The package's directory: cargo runs tests there.
    dir: PathBuf,
    /// The package's name, which cargo gives its tests (`CARGO_PKG_NAME`).
    package: String,
}

/// What N runs of one binary gave.
struct Outcome {
    name: String,
    runs: u32,
    failed_runs: u32,
    /// Failed test → in how many runs.
    failed_tests: BTreeMap<String, u32>,
    logs: Vec<PathBuf>,
    elapsed: Duration,
}

/// Builds the workspace's test binaries (default features) and runs each
/// `times` times with `test_args`.
pub fn run(times: u32, test_args: &[String]) -> anyhow::Result<()> {
    if times == 0 {
        bail!("--repeat needs at least 1 run");
    }
    let binaries = build()?;
    let logs = project_root().join("target").join("repeat-logs");
    // Only this run's logs: an old failure must not pass for a new one.
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    eprintln!(
        "\n==> running each of {} test binaries {times} times (failed runs' logs go to {})",
        binaries.len(),
        logs.display()
    );
    let mut outcomes = Vec::new();
    for binary in &binaries {
        let outcome = repeat(binary, times, test_args, &logs)?;
        eprintln!(
            "{:<48} {:>3}/{} runs passed  {:>6.1} s{}",
            outcome.name,
            outcome.runs - outcome.failed_runs,
            outcome.runs,
            outcome.elapsed.as_secs_f64(),
            if outcome.failed_runs > 0 { "  FLAKY OR FAILING" } else { "" }
        );
        outcomes.push(outcome);
    }
    let failing: Vec<&Outcome> = outcomes.iter().filter(|o| o.failed_runs > 0).collect();
    eprintln!("\n==> {} test binaries, {times} runs each", outcomes.len());
    if failing.is_empty() {
        eprintln!("no failure in {} runs", outcomes.len() as u32 * times);
        return Ok(());
    }
    for outcome in &failing {
        eprintln!("{}: {} of {} runs failed", outcome.name, outcome.failed_runs, outcome.runs);
        for (test, count) in &outcome.failed_tests {
            eprintln!("    {test}: failed in {count} run(s)");
        }
        if outcome.failed_tests.is_empty() {
            eprintln!("    (no `test ... FAILED` line: the binary itself failed; see its log)");
        }
        for log in &outcome.logs {
            eprintln!("    log: {}", log.display());
        }
    }
    bail!("{} of {} test binaries failed at least once in {times} runs", failing.len(), outcomes.len())
}

/// `cargo test --workspace --no-run`, and the test binaries it built.
fn build() -> anyhow::Result<Vec<TestBinary>> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(project_root())
        .args(["test", "--workspace", "--no-run", "--message-format=json-render-diagnostics"])
        .stdout(Stdio::piped());
    eprintln!("$ {}", display(&cmd));
    let mut child = cmd.spawn().with_context(|| format!("failed to run {:?}", display(&cmd)))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let metadata = cargo_metadata::MetadataCommand::new()
        .current_dir(project_root())
        .no_deps()
        .exec()
        .context("`cargo metadata` failed")?;
    let package_of = |manifest: &cargo_metadata::camino::Utf8Path| {
        metadata.packages.iter().find(|p| p.manifest_path == manifest).map_or("?", |p| p.name.as_str()).to_owned()
    };
    let mut binaries = Vec::new();
    for message in Message::parse_stream(BufReader::new(stdout)) {
        if let Message::CompilerArtifact(artifact) = message.context("reading cargo's JSON messages")? {
            if let (Some(exe), true) = (artifact.executable, artifact.profile.test) {
                let kind = artifact.target.kind.first().map(|k| k.to_string()).unwrap_or_default();
                let package = package_of(&artifact.manifest_path);
                let dir =
                    artifact.manifest_path.parent().map(|d| d.as_std_path().to_path_buf()).unwrap_or_else(project_root);
                binaries.push(TestBinary {
                    name: format!("{package}/{kind}/{}", artifact.target.name),
                    exe: exe.into_std_path_buf(),
                    dir,
                    package,
                });
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{:?} exited with {status}; see cargo's errors above", display(&cmd));
    }
    binaries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(binaries)
}

fn repeat(binary: &TestBinary, times: u32, test_args: &[String], logs: &Path) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut outcome = Outcome {
        name: binary.name.clone(),
        runs: times,
        failed_runs: 0,
        failed_tests: BTreeMap::new(),
        logs: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for run in 1..=times {
        let out = Command::new(&binary.exe)
            .args(test_args)
            .current_dir(&binary.dir)
            .env("CARGO_MANIFEST_DIR", &binary.dir)
            .env("CARGO_MANIFEST_PATH", binary.dir.join("Cargo.toml"))
            .env("CARGO_PKG_NAME", &binary.package)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("failed to run {}", binary.exe.display()))?;
        if out.status.success() {
            continue;
        }
        outcome.failed_runs += 1;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let failed = failed_tests(&stdout);
        for test in &failed {
            *outcome.failed_tests.entry((*test).to_owned()).or_insert(0) += 1;
        }
        let log = logs.join(format!("{}-run{run}.log", binary.name.replace('/', "-")));
        let text = format!(
            "$ {} (run {run} of {times}): {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
            binary.exe.display(),
            out.status
        );
        std::fs::write(&log, text).with_context(|| format!("cannot write {}", log.display()))?;
        eprintln!(
            "    {} run {run}/{times} failed ({}): {}",
            binary.name,
            out.status,
            if failed.is_empty() { String::from("the binary itself") } else { failed.join(", ") }
        );
        outcome.logs.push(log);
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

/// The tests libtest reports as failed (`test NAME ... FAILED`).
fn failed_tests(stdout: &str) -> Vec<&str> {
    stdout.lines().filter_map(|l| l.strip_prefix("test ").and_then(|l| l.strip_suffix(" ... FAILED"))).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn failed_tests_are_read_from_libtest_s_output() {
        let stdout = "\nrunning 3 tests\ntest a ... ok\ntest m::b ... FAILED\ntest c ... ignored\n\nfailures:\n\n---- m::b stdout ----\n";
        assert_eq!(super::failed_tests(stdout), ["m::b"]);
    }
}
