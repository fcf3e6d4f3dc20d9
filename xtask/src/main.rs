//! `cargo xtask`: heapprobe's automation. One module per subcommand; this
//! file only parses the command line and dispatches.

mod bench;
mod diff;
mod doctor;
mod flame;
mod fold;
mod probes;
mod target;
mod test;
mod trace;
mod util;

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
    /// Trace a test, binary or running process and write a byte-weighted
    /// allocation flame graph (flamegraph.svg).
    Trace(trace::Args),
    /// Fold and render a `perf script` capture or perf.data recorded
    /// elsewhere (such as by scripts/perf-flamegraph.sh on a production host).
    Fold(fold::Args),
    /// List the SDT probes of a binary, a target or a running process
    /// (provider, name, address, file offset, semaphore, arguments).
    Probes(probes::Args),
    /// Check that this machine can trace, and that a binary (a target,
    /// PATH or --pid) is traceable; prints the exact fix for each problem.
    Doctor(doctor::Args),
    /// Measure what tracing costs: one workload untraced, under a bare
    /// uprobe and under each backend, plus folding 1 million events.
    Bench(bench::Args),
    /// Run the whole test suite: every feature set, the end-to-end tracing
    /// tests included (installs perf and bpftrace first when root).
    Test(test::Args),
    /// Compare two allocation profiles (folded files or snapshots): the
    /// stacks that grew and shrank, and a differential flame graph.
    Diff(diff::Args),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Trace(args) => trace::run(args),
        Command::Fold(args) => fold::run(args),
        Command::Probes(args) => probes::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Test(args) => test::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Diff(args) => diff::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}`: the whole cause chain on one line, without a backtrace.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
