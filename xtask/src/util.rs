//! Helpers shared by the subcommands.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// The workspace root (the parent of `xtask/`).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ has a parent").to_path_buf()
}

/// Runs `cmd` with inherited stdio, echoing it first; fails on a non-zero exit.
pub fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {}", display(cmd));
    let status = cmd.status().with_context(|| format!("failed to run {:?}", display(cmd)))?;
    if !status.success() {
        bail!("{:?} exited with {status}", display(cmd));
    }
    Ok(())
}

/// Whether `program --version` runs successfully.
pub fn has_tool(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Whether we run as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// The command line as a shell would show it.
pub fn display(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// The cargo that runs us (`$CARGO`), or `cargo` from `PATH`.
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| String::from("cargo"))
}

/// `$VAR` if set (such as `$PERF`), else `default`: lets users point the
/// xtask at another build of a tool.
pub fn tool(var: &str, default: &str) -> String {
    std::env::var(var).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

/// The program to run for `default` (honouring `$VAR`, such as `$PERF`),
/// after making sure it works. When it is missing and we are root on a
/// Debian-like system, installs `package` with apt-get, saying so; otherwise
/// fails with the exact command to run.
pub fn require_tool(var: &str, default: &str, package: &str) -> anyhow::Result<String> {
    let program = tool(var, default);
    if has_tool(&program) {
        return Ok(program);
    }
    let install = format!("apt-get install -y {package}");
    if program == default && is_root() && Path::new("/usr/bin/apt-get").exists() {
        eprintln!("{default} is not installed: installing it as root with `apt-get update && {install}`");
        exec(Command::new("apt-get").arg("update").arg("-q"))?;
        exec(Command::new("apt-get").args(["install", "-y", "-q", package]).env("DEBIAN_FRONTEND", "noninteractive"))?;
        if has_tool(&program) {
            return Ok(program);
        }
    }
    if program != default {
        bail!("${var} is {program:?}, which does not run (`{program} --version` failed)");
    }
    bail!("{default} is not installed: run `{install}` as root (or with sudo), then try again")
}

/// Tracing needs root (or CAP_PERFMON + CAP_BPF) and tracefs; says what is
/// missing and how to get it.
pub fn check_tracing_privileges() -> anyhow::Result<()> {
    if !is_root() && !has_capabilities(&[38, 39]) {
        bail!(
            "tracing needs root, or the CAP_PERFMON and CAP_BPF capabilities: run it with sudo \
             (`sudo -E cargo xtask ...`)"
        );
    }
    heapprobe_sdt::tracefs()
        .map_err(|e| anyhow::anyhow!("{e}: mount it with `mount -t tracefs nodev /sys/kernel/tracing` (as root)"))?;
    Ok(())
}

/// Whether the effective capability set holds every capability number given.
fn has_capabilities(caps: &[u32]) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    let Some(hex) = status.lines().find_map(|l| l.strip_prefix("CapEff:")) else { return false };
    let Ok(bits) = u64::from_str_radix(hex.trim(), 16) else { return false };
    caps.iter().all(|c| bits & (1 << c) != 0)
}

/// Step-by-step progress on stderr ("[1] building ...", with elapsed time
/// when stderr is a terminal).
pub struct Progress {
    started: std::time::Instant,
    step: std::cell::Cell<u32>,
    tty: bool,
}

impl Progress {
    pub fn new() -> Self {
        use std::io::IsTerminal as _;
        Self { started: std::time::Instant::now(), step: std::cell::Cell::new(0), tty: std::io::stderr().is_terminal() }
    }

    pub fn step(&self, what: &str) {
        self.step.set(self.step.get() + 1);
        if self.tty {
            eprintln!("\x1b[1m[{}]\x1b[0m {what} ({:.1} s)", self.step.get(), self.started.elapsed().as_secs_f64());
        } else {
            eprintln!("[{}] {what}", self.step.get());
        }
    }
}
