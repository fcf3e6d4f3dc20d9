//! Helpers shared by the subcommands.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// The workspace root: `HEAPPROBE_WORKSPACE` when set (how `trace
/// --baseline` points a trace at its temporary worktree, and the tests at a
/// throwaway project), else the parent of `xtask/`.
pub fn project_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("HEAPPROBE_WORKSPACE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
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

/// Linux capability numbers (`linux/capability.h`).
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_PERFMON: u32 = 38;

/// What this process may do for tracing.
#[derive(Clone, Copy, Debug)]
pub struct Privileges {
    /// Effective uid 0.
    pub root: bool,
    /// CAP_PERFMON: perf may record tracepoint (uprobe) events.
    pub perfmon: bool,
    /// CAP_DAC_OVERRIDE: tracefs (mode 0700) is reachable and
    /// `uprobe_events` writable.
    pub dac_override: bool,
}

/// How to get the capabilities the perf backend needs without running
/// everything as root (tested in `xtask/tests/trace.rs`).
pub const CAPABILITY_RECIPE: &str = "sudo -E env PATH=\"$PATH\" setpriv --reuid=$(id -u) --regid=$(id -g) \
     --init-groups --inh-caps=+perfmon,+dac_override --ambient-caps=+perfmon,+dac_override cargo xtask trace ...";

impl Privileges {
    /// This process's.
    pub fn current() -> Self {
        let caps = effective_capabilities();
        let has = |cap: u32| caps & (1 << cap) != 0;
        Self { root: is_root(), perfmon: has(CAP_PERFMON), dac_override: has(CAP_DAC_OVERRIDE) }
    }

    /// Whether the perf backend can work: root, or CAP_PERFMON and
    /// CAP_DAC_OVERRIDE.
    pub fn can_use_perf(self) -> bool {
        self.root || (self.perfmon && self.dac_override)
    }

    /// What is missing for `backend` (`"perf"` or `"bpftrace"`), with the
    /// way to get it; `None` when nothing is.
    pub fn missing_for(self, backend: &str) -> Option<String> {
        match backend {
            "bpftrace" if !self.root => Some(String::from(
                "the bpftrace backend needs root (bpftrace 0.17 refuses to run otherwise): run it with sudo \
                 (`sudo -E env PATH=\"$PATH\" cargo xtask trace --backend bpftrace ...`), or use the perf backend, \
                 which works with two capabilities",
            )),
            "perf" if !self.can_use_perf() => Some(format!(
                "tracing with perf needs root, or the CAP_PERFMON and CAP_DAC_OVERRIDE capabilities (to record \
                 uprobe events and to write /sys/kernel/tracing/uprobe_events); this process has{}{}: run it with \
                 sudo, or as yourself with just those two capabilities: `{CAPABILITY_RECIPE}`",
                if self.perfmon { " CAP_PERFMON" } else { " not CAP_PERFMON" },
                if self.dac_override { " and CAP_DAC_OVERRIDE" } else { " and not CAP_DAC_OVERRIDE" },
            )),
            _ => None,
        }
    }
}

/// Tracing with `backend` needs privileges and tracefs; says what is missing
/// and how to get it, and mounts tracefs when it is missing and we may.
pub fn check_tracing_privileges(backend: &str) -> anyhow::Result<()> {
    if let Some(missing) = Privileges::current().missing_for(backend) {
        bail!("{missing}");
    }
    if heapprobe_sdt::find_tracefs().is_none() {
        let dir = heapprobe_sdt::mount_tracefs()?;
        eprintln!("tracefs was not mounted: mounted it at {}", dir.display());
    }
    Ok(())
}

/// The effective capability set (`CapEff` in /proc/self/status).
fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .unwrap_or(0)
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

    /// On a terminal, a line that counts the seconds `what` has been running
    /// until the returned guard is dropped; elsewhere nothing.
    pub fn live(&self, what: &str) -> Ticker {
        if !self.tty {
            return Ticker(None);
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let what = what.to_owned();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                eprint!("\r\x1b[K    {what} {:.0} s", started.elapsed().as_secs_f64());
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            eprint!("\r\x1b[K");
        });
        Ticker(Some((stop, thread)))
    }
}

/// Stops [`Progress::live`]'s line when dropped.
#[derive(Default)]
pub struct Ticker(Option<(std::sync::Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<()>)>);

impl Drop for Ticker {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.0.take() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}
