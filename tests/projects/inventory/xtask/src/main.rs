use clap::Parser;

/// This project's tasks: heapprobe's, and its own.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
enum Xtask {
    #[command(flatten)]
    Heapprobe(heapprobe_cli::Command),
}

fn main() -> std::process::ExitCode {
    match Xtask::parse() {
        Xtask::Heapprobe(command) => heapprobe_cli::exit_code(command.run()),
    }
}
