//! # heapprobe-cli: `cargo heapprobe`, and the same commands for your xtask
//!
//! Byte-weighted allocation flame graphs of any test, binary or running
//! process that uses [heapprobe](https://crates.io/crates/heapprobe) as its
//! global allocator, recorded through heapprobe's USDT probes with `perf` or
//! `bpftrace`:
//!
//! ```sh
//! cargo install heapprobe-cli            # the `cargo heapprobe` subcommand
//! cargo heapprobe trace --test it_works  # in your project: flamegraph.svg
//! ```
//!
//! The subcommands are modules of this library, each with an `Options` (a
//! clap `Args`, `#[non_exhaustive]`, built from its `Default`) and a `run`:
//! [`trace`], [`fold`], [`probes`], [`doctor`], [`diff`]. [`Command`]
//! gathers them, so a project's own `cargo xtask` hands them over in a few
//! lines:
//!
//! ```no_run
//! use clap::Parser;
//!
//! /// This project's tasks.
//! #[derive(Parser)]
//! #[command(name = "cargo xtask", bin_name = "cargo xtask")]
//! enum Xtask {
//!     /// heapprobe's: trace, fold, probes, doctor, diff.
//!     #[command(flatten)]
//!     Heapprobe(heapprobe_cli::Command),
//!     // ... the project's own tasks
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     match Xtask::parse() {
//!         Xtask::Heapprobe(command) => heapprobe_cli::exit_code(command.run()),
//!     }
//! }
//! ```
//!
//! Or one subcommand, with its options set in code:
//!
//! ```no_run
//! let mut options = heapprobe_cli::trace::Options::default();
//! options.target.test = Some(String::from("it_works"));
//! let outcome = heapprobe_cli::trace::run(&options)?;
//! println!("{} bytes in {}", outcome.total, outcome.folded.display());
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Nothing here depends on where it was compiled: the workspace is the one
//! around the current directory (or `--manifest-path`), found with `cargo
//! metadata`, and traced builds get their profile and flags on cargo's
//! command line, so the project's files are left as they are.
#![deny(missing_docs)]

pub mod diff;
pub mod doctor;
pub mod flame;
pub mod fold;
pub mod probes;
pub mod target;
pub mod trace;
pub mod util;

/// heapprobe's subcommands, for a clap command line (flatten it into your
/// xtask's).
#[derive(clap::Subcommand, Debug, Clone)]
#[non_exhaustive]
pub enum Command {
    /// Trace a test, binary or running process and write a byte-weighted
    /// allocation flame graph (flamegraph.svg).
    Trace(Box<trace::Options>),
    /// Fold and render a perf.data or `perf script` capture recorded
    /// elsewhere (such as by scripts/perf-flamegraph.sh on a production host).
    Fold(Box<fold::Options>),
    /// List the SDT probes of a binary, a target or a running process
    /// (provider, name, address, file offset, semaphore, arguments).
    Probes(Box<probes::Options>),
    /// Check that this machine can trace, and that a binary (a target,
    /// PATH or --pid) is traceable; prints the exact fix for each problem.
    Doctor(Box<doctor::Options>),
    /// Compare two allocation profiles (folded files or snapshots): the
    /// stacks that grew and shrank, and a differential flame graph.
    Diff(Box<diff::Options>),
}

impl Command {
    /// Runs the subcommand.
    pub fn run(&self) -> anyhow::Result<()> {
        match self {
            Command::Trace(options) => trace::run(options).map(drop),
            Command::Fold(options) => fold::run(options).map(drop),
            Command::Probes(options) => probes::run(options),
            Command::Doctor(options) => doctor::run(options),
            Command::Diff(options) => diff::run(options).map(drop),
        }
    }
}

/// The exit code for a subcommand's result; an error is printed first, as
/// `error: ` and its whole chain of causes on one line.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
