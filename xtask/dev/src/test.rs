//! `cargo xtask test`: the whole test suite, as CI runs it.

mod current_bpftrace;
mod repeat;
mod valgrind;

use std::path::Path;
use std::process::Command;

use anyhow::bail;

use crate::project_root;
use heapprobe_cli::util::{display, exec, has_tool, is_root};

/// The system packages the tracing tests need, by the program they provide.
const TOOLS: [(&str, &str); 6] = [
    ("perf", "linux-perf"),
    ("bpftrace", "bpftrace"),
    ("ld.bfd", "binutils"),
    ("rustfilt", "rustfilt"),
    ("debootstrap", "debootstrap"),
    // xtask/tests/baseline.rs: a throwaway repository for trace --baseline.
    ("git", "git"),
];

/// Options of `cargo xtask test`.
#[derive(clap::Args)]
pub struct Args {
    /// Never run apt-get; stop with the command to run instead.
    #[arg(long)]
    no_install: bool,
    /// Skip the second run of the scripts and trace tests (tests/scripts.rs,
    /// xtask/tests/trace.rs) with a current bpftrace: Debian unstable's,
    /// unpacked with debootstrap into target/bpftrace-current the first time
    /// (about 600 MB).
    #[arg(long)]
    no_current_bpftrace: bool,
    /// Instead of the suites: build the workspace's test binaries, run each
    /// N times in a row, and report every failure (which binary, which
    /// tests, in how many runs, with logs). For finding flaky tests: run it
    /// while other work keeps the cores busy.
    #[arg(long, value_name = "N")]
    repeat: Option<u32>,
    /// Extra arguments for every `cargo test` run (after `--`), such as a filter.
    #[arg(last = true)]
    test_args: Vec<String>,
}

/// Runs every test suite: default features (the `probe` backend, with the
/// end-to-end tracing tests for both linkers and the `usdt` backend), probes
/// compiled out, the `serde` feature, and the scripts and trace tests again
/// with a current bpftrace.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(times) = args.repeat {
        prepare_tracing(args.no_install, false)?;
        return repeat::run(times, &args.test_args);
    }
    prepare_tracing(args.no_install, !args.no_current_bpftrace)?;
    let root = project_root();
    let suites: [(&str, &[&str]); 4] = [
        ("default features", &["--workspace"]),
        ("probes compiled out", &["--package", "heapprobe", "--no-default-features"]),
        ("serde", &["--package", "heapprobe", "--features", "serde", "--test", "serde"]),
        ("server (the endpoint)", &["--package", "heapprobe", "--features", "server", "--lib", "--test", "endpoint_*"]),
    ];
    let cargo_test = |flags: &[&str]| {
        let mut cmd = Command::new(heapprobe_cli::util::cargo());
        cmd.current_dir(&root).arg("test").args(flags);
        if !args.test_args.is_empty() {
            cmd.arg("--").args(&args.test_args);
        }
        cmd
    };
    for (name, flags) in suites {
        eprintln!("\n==> cargo test, {name}");
        exec(&mut cargo_test(flags))?;
    }
    valgrind::run(!args.no_install)?;
    if args.no_current_bpftrace {
        eprintln!("\nskipping the scripts and trace tests with a current bpftrace (--no-current-bpftrace)");
    } else if !is_root() {
        // They need root: they would only skip.
        eprintln!("\nnote: not root, so the scripts and trace tests with a current bpftrace do not run");
    } else {
        // scripts/ and `cargo xtask trace --backend bpftrace` must work with
        // Debian 12's bpftrace 0.17 (above) and with a current one.
        let current = current_bpftrace::prepare(!args.no_install)?;
        eprintln!("\n==> cargo test, scripts and trace tests with a current bpftrace ({})", current.version);
        let flags = ["--package", "heapprobe", "--package", "heapprobe-cli", "--test", "scripts", "--test", "trace"];
        exec(cargo_test(&flags).env("BPFTRACE", &current.program))?;
    }
    eprintln!("\nall test suites passed");
    Ok(())
}

/// Makes sure perf, bpftrace, GNU ld, rustfilt, git, libc's symbols, tracefs
/// and (to unpack a current bpftrace) debootstrap are there, installing the
/// packages with apt-get when we are root on a Debian-like system.
fn prepare_tracing(no_install: bool, current_bpftrace: bool) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| !has_tool(tool))
        .map(|(_, package)| *package)
        .filter(|package| {
            *package != "debootstrap" || (current_bpftrace && is_root() && !current_bpftrace::home().exists())
        })
        .collect();
    // libc's full symbol table (for `start_thread` and friends in stacks) is
    // in its detached debug file; the trace tests expect no [unknown] frame.
    let dpkg_says = Command::new("dpkg").args(["-s", "libc6-dbg"]).output();
    if dpkg_says.is_ok_and(|o| !o.status.success()) {
        missing.push("libc6-dbg");
    }
    if !missing.is_empty() {
        let install = format!("apt-get update && apt-get install -y {}", missing.join(" "));
        let can_install = !no_install && is_root() && Path::new("/usr/bin/apt-get").exists();
        if !can_install {
            bail!(
                "the tracing tests need {}: run `{install}` as root (or `sudo`), then run `cargo xtask test` again",
                missing.join(", ")
            );
        }
        eprintln!("==> installing {} with apt-get (we are root)", missing.join(" "));
        exec(Command::new("apt-get").arg("update").arg("-q"))?;
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "-q"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive");
        exec(&mut cmd)?;
    }
    let tracefs = Path::new("/sys/kernel/tracing");
    if is_root() && !tracefs.join("uprobe_events").exists() {
        let mut cmd = Command::new("mount");
        cmd.args(["-t", "tracefs", "nodev"]).arg(tracefs);
        eprintln!("==> mounting tracefs: {}", display(&cmd));
        exec(&mut cmd)?;
    }
    if !is_root() {
        eprintln!(
            "note: not root, so the tracing tests will skip (CI=true makes that a failure); run `sudo -E cargo xtask test` for the whole suite"
        );
    }
    Ok(())
}
