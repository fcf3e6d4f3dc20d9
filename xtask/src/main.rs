//! `cargo xtask`: heapprobe's automation. One module per subcommand; this
//! file only parses the command line and dispatches.

mod test;
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
    /// Run the whole test suite: every feature set, the end-to-end tracing
    /// tests included (installs perf and bpftrace first when root).
    Test(test::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Test(args) => test::run(args),
    }
}
