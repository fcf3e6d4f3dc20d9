//! A current bpftrace for the second run of the scripts tests.
//!
//! Debian 12 ships bpftrace 0.17, which `scripts/` must keep working with;
//! users on newer distributions run a current one. The newest bpftrace Debian
//! packages (unstable's, else testing's) is unpacked with `debootstrap` into
//! `target/bpftrace-current/root` and run in place, with that tree's own
//! loader and libraries, through a small wrapper script: nothing on the
//! machine changes, and the wrapper sees the same files and processes as the
//! system bpftrace does.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::project_root;
use heapprobe_cli::util::{display, has_tool, is_root, Progress};

/// Debian suites to take bpftrace from, newest first: testing when
/// unstable cannot be installed on the day (it is mid-transition at times).
const SUITES: [&str; 2] = ["sid", "testing"];

/// Where the packages come from.
const MIRROR: &str = "http://deb.debian.org/debian";

/// A bpftrace that runs from its unpacked tree.
pub struct CurrentBpftrace {
    /// The wrapper to use as `$BPFTRACE`.
    pub program: PathBuf,
    /// What it says of itself (`bpftrace v0.27.1`).
    pub version: String,
}

/// `target/bpftrace-current` (honouring `$CARGO_TARGET_DIR`).
pub fn home() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    project_root().join(target).join("bpftrace-current")
}

/// The unpacked bpftrace, unpacking it first when it is not there yet and
/// `may_install` (which needs root and `debootstrap`).
pub fn prepare(may_install: bool) -> anyhow::Result<CurrentBpftrace> {
    let home = home();
    let program = home.join("bpftrace");
    if let Some(version) = version_of(&program) {
        eprintln!(
            "==> current bpftrace: {version}, unpacked earlier in {} (delete it to fetch a newer one)",
            home.display()
        );
        return Ok(CurrentBpftrace { program, version });
    }
    if !may_install {
        bail!(
            "no current bpftrace in {}: run `sudo cargo xtask test` once to unpack one (with debootstrap), \
             or pass --no-current-bpftrace",
            home.display()
        );
    }
    if !is_root() {
        bail!("unpacking a current bpftrace needs root (debootstrap): run `sudo -E cargo xtask test` once");
    }
    if !has_tool("debootstrap") {
        bail!("debootstrap is not installed: run `apt-get install -y debootstrap`");
    }
    std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    let root = home.join("root");
    let mut failures = Vec::new();
    for suite in SUITES {
        match unpack(&home, suite) {
            Ok(()) => break,
            Err(error) => {
                eprintln!("warning: bpftrace from Debian {suite}: {error:#}");
                failures.push(format!("{suite}: {error:#}"));
            }
        }
    }
    if failures.len() == SUITES.len() {
        bail!("could not unpack a current bpftrace from Debian {}", failures.join("; "));
    }
    write_wrapper(&root, &program)?;
    let version = version_of(&program).with_context(|| {
        format!("{} --version failed after unpacking: delete {} and retry", program.display(), home.display())
    })?;
    eprintln!("==> current bpftrace: {version}, in {}", home.display());
    Ok(CurrentBpftrace { program, version })
}

/// `program --version`, when it runs.
fn version_of(program: &Path) -> Option<String> {
    let out = Command::new(program).arg("--version").output().ok()?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !version.is_empty()).then_some(version)
}

/// debootstrap's minimal base of `suite`, with bpftrace, into `home/root`.
fn unpack(home: &Path, suite: &str) -> anyhow::Result<()> {
    let partial = home.join("root.partial");
    let root = home.join("root");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    let log_path = home.join(format!("debootstrap-{suite}.log"));
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = Command::new("debootstrap");
    cmd.args(["--variant=minbase", "--include=bpftrace", suite]).arg(&partial).arg(MIRROR);
    cmd.stdout(log.try_clone()?).stderr(log);
    eprintln!(
        "==> unpacking bpftrace from Debian {suite} (about 600 MB, under a minute here; log: {})",
        log_path.display()
    );
    eprintln!("$ {}", display(&cmd));
    let ticker = Progress::new().live("debootstrap");
    let status = cmd.status().with_context(|| format!("failed to run {}", display(&cmd)))?;
    drop(ticker);
    if !status.success() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
        bail!("{} exited with {status}; its log ends:\n{}", display(&cmd), tail.join("\n"));
    }
    if root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    std::fs::rename(&partial, &root).with_context(|| format!("renaming {} to {}", partial.display(), root.display()))
}

/// A script that runs `root`'s bpftrace with `root`'s dynamic loader and
/// libraries, so that it needs no chroot (and no bind mounts to undo).
fn write_wrapper(root: &Path, program: &Path) -> anyhow::Result<()> {
    let libs = subdirs(&root.join("usr/lib"))
        .into_iter()
        .find(|dir| dir.join("libc.so.6").exists())
        .with_context(|| format!("no libc.so.6 in {}/usr/lib/*", root.display()))?;
    let loader = [root.join("usr/lib64"), libs.clone()]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok))
        .map(|entry| entry.path())
        .find(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("ld-linux")))
        .with_context(|| format!("no ld-linux* dynamic loader in {}", root.display()))?;
    let bpftrace = root.join("usr/bin/bpftrace");
    if !bpftrace.exists() {
        bail!("{} is missing: debootstrap did not install bpftrace", bpftrace.display());
    }
    let script = format!(
        "#!/bin/sh\n\
         # A current bpftrace, unpacked by `cargo xtask test`; runs in place.\n\
         exec '{}' --library-path '{}' '{}' \"$@\"\n",
        loader.display(),
        libs.display(),
        bpftrace.display()
    );
    std::fs::write(program, script).with_context(|| format!("writing {}", program.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(program, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", program.display()))
}

/// The directories in `parent`, sorted.
fn subdirs(parent: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(parent).into_iter().flatten().filter_map(Result::ok);
    let mut dirs: Vec<PathBuf> = entries.map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    dirs
}
