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
