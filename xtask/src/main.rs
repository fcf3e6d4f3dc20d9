//! `cargo heapprobe`: the subcommand cargo runs as `cargo-heapprobe
//! heapprobe ARGS`. Parses the command line and hands it to the library.

use clap::Parser;

/// Allocation flame graphs of any test, binary or process that uses
/// heapprobe, recorded with perf or bpftrace.
#[derive(Parser)]
#[command(name = "cargo heapprobe", bin_name = "cargo heapprobe", version, about)]
struct Cli {
    #[command(subcommand)]
    command: heapprobe_cli::Command,
}

fn main() -> std::process::ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Run by cargo as `cargo-heapprobe heapprobe ...`; run directly without it.
    if args.get(1).is_some_and(|a| a == "heapprobe") {
        args.remove(1);
    }
    heapprobe_cli::exit_code(Cli::parse_from(args).command.run())
}
