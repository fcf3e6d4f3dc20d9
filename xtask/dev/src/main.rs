//! This repository's `cargo xtask`: `cargo heapprobe`'s commands (from the
//! heapprobe-cli library, as any project's xtask would use them), plus the
//! tasks that only make sense here. This file only parses the command line
//! and dispatches.

mod bench;
mod test;

use clap::{Parser, Subcommand};

/// heapprobe's developer tasks.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Heapprobe(heapprobe_cli::Command),
    /// Measure what tracing costs: one workload untraced, under a bare
    /// uprobe and under each backend, plus folding 1 million events.
    Bench(bench::Args),
    /// Run the whole test suite: every feature set, the end-to-end tracing
    /// tests included (installs perf and bpftrace first when root).
    Test(test::Args),
}

fn main() -> std::process::ExitCode {
    heapprobe_cli::exit_code(match Cli::parse().command {
        Command::Heapprobe(command) => command.run(),
        Command::Test(args) => test::run(args),
        Command::Bench(args) => bench::run(args),
    })
}

/// The root of this repository: the workspace around the current directory
/// (`cargo xtask` runs wherever cargo was started in it).
fn project_root() -> std::path::PathBuf {
    let out = std::process::Command::new(heapprobe_cli::util::cargo())
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .output()
        .expect("cargo locate-project runs");
    let manifest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success() && !manifest.is_empty(), "cargo locate-project found no workspace");
    std::path::PathBuf::from(manifest).parent().expect("a manifest has a directory").to_path_buf()
}
