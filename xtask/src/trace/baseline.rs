//! `cargo xtask trace … --baseline REF`: the same trace at git revision
//! REF (checked out in a temporary worktree) and in the working tree,
//! then their diff (`heapprobe::diff`).
//!
//! The baseline is built in its own target directory, `heapprobe-baseline/`
//! inside the working tree's, kept between runs so that dependencies are
//! built once. Not in the working tree's own: cargo judges path crates
//! fresh by modification times and paths relative to the workspace, so a
//! working tree whose files are older than the worktree's checkout would
//! reuse the baseline's build. The worktree is removed on every
//! exit path but SIGKILL; a worktree left by a killed run (its pid is in
//! its name and dead) is removed by the next run. Nothing else in the
//! repository is touched: no checkout, no stash, and the working tree's
//! uncommitted changes are what AFTER measures.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

use anyhow::{bail, Context as _};
use cargo_metadata::MetadataCommand;

use super::{perf, Args, Backend, Weight, INTERRUPTED};
use crate::util::{self, display};

/// The prefix of our worktrees' directory names (then the pid).
const PREFIX: &str = "heapprobe-baseline-";

pub fn run(args: Args, reference: &str) -> anyhow::Result<()> {
    let git = util::require_tool("GIT", "git", "git")?;
    let workspace = util::project_root();
    let top = git_output(&git, &workspace, &["rev-parse", "--show-toplevel"]).with_context(|| {
        format!(
            "--baseline compares with a git revision, but the workspace {} is not in a git repository",
            workspace.display()
        )
    })?;
    let top = PathBuf::from(top);
    sweep_stale(&git, &top);
    let commit = git_output(
        &git,
        &top,
        &["rev-parse", "--verify", "--quiet", "--end-of-options", &format!("{reference}^{{commit}}")],
    )
    .map_err(|_| {
        anyhow::anyhow!(
            "--baseline {reference:?}: no such commit in {} (in a shallow clone, fetch more history first: \
                 `git fetch --deepen=1`, or `fetch-depth: 0` in actions/checkout)",
            top.display()
        )
    })?;
    let short = git_output(&git, &top, &["rev-parse", "--short", &commit])?;
    // Where the workspace sits in the repository, to find it in the worktree.
    let canonical = |p: &Path| p.canonicalize().with_context(|| format!("cannot resolve {}", p.display()));
    let relative = canonical(&workspace)?.strip_prefix(canonical(&top)?).map(Path::to_path_buf).with_context(|| {
        format!("the workspace {} is not inside its repository {}", workspace.display(), top.display())
    })?;
    let target_dir = MetadataCommand::new()
        .current_dir(&workspace)
        .no_deps()
        .exec()
        .with_context(|| format!("`cargo metadata` failed in {}", workspace.display()))?
        .target_directory
        .into_std_path_buf()
        .join("heapprobe-baseline");

    let (before_svg, after_svg) = (sibling(&args.output, "before", "svg"), sibling(&args.output, "after", "svg"));
    let mut worktree = Worktree::add(&git, &top, &commit)?;
    // A revision without a lock file resolves its dependencies as the
    // working tree did (and offline): the code is what is compared.
    let (lock, worktree_lock) = (workspace.join("Cargo.lock"), worktree.path.join(&relative).join("Cargo.lock"));
    if lock.is_file() && !worktree_lock.exists() {
        std::fs::copy(&lock, &worktree_lock).with_context(|| format!("cannot copy {}", lock.display()))?;
    }
    eprintln!(
        "==> BEFORE: {reference} ({short}), checked out in a temporary worktree ({}), built in {}",
        worktree.path.display(),
        target_dir.display()
    );
    let before = {
        let _workspace = EnvGuard::set("HEAPPROBE_WORKSPACE", worktree.path.join(&relative).into_os_string());
        let _target = EnvGuard::set("CARGO_TARGET_DIR", target_dir.into_os_string());
        trace_side(&args, &before_svg, "before")
    }
    .with_context(|| format!("tracing the baseline {reference} ({short}) in {}", worktree.path.display()))?;
    worktree.remove()?;
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!(
            "interrupted (Ctrl-C) while tracing the baseline: the working tree is not traced; BEFORE's trace is in {}",
            before_svg.display()
        );
    }
    eprintln!("==> AFTER: the working tree, {}", workspace.display());
    let after = trace_side(&args, &after_svg, "after").context("tracing the working tree")?;

    let diff_title = format!(
        "heapprobe: {reference} ({short}) -> working tree, heapprobe:{} by {}",
        args.event,
        args.weight.count_name()
    );
    let mut options = heapprobe::diff::Options::default();
    options.title = diff_title;
    let diff = heapprobe::diff::Diff::new(before, after, &options)?;
    println!();
    print!("{diff}");
    if diff.count_totals().is_none() && args.weight == Weight::Bytes {
        println!("  (no count deltas: bpftrace sums by the weight alone; --backend perf gives them)");
    }
    diff.write_svg(&args.output)
        .with_context(|| format!("cannot write the differential flame graph to {}", args.output.display()))?;
    println!("BEFORE ({reference}): {} (and .folded)", before_svg.display());
    println!("AFTER (working tree): {} (and .folded)", after_svg.display());
    println!("differential flame graph: {}", args.output.display());
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted (Ctrl-C): the working tree's trace ended early, so the diff is of a partial run");
    }
    Ok(())
}

/// `dir/NAME.TAG.EXT` for an output `dir/NAME.svg`.
fn sibling(output: &Path, tag: &str, ext: &str) -> PathBuf {
    let stem =
        output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| String::from("flamegraph"));
    output.with_file_name(format!("{stem}.{tag}.{ext}"))
}

/// One trace, as `trace` without `--baseline` makes it, to `svg`; then its
/// folded stacks as one side of the diff, with their counts when perf
/// recorded by bytes (perf.data is folded a second time, by count).
fn trace_side(args: &Args, svg: &Path, tag: &str) -> anyhow::Result<heapprobe::diff::Side> {
    let mut side = args.clone();
    side.baseline = None;
    side.output = svg.to_path_buf();
    let counted = args.backend == Backend::Perf && args.weight == Weight::Bytes;
    side.keep = args.keep || counted;
    let traced = super::run(side);
    if counted && !args.keep && traced.is_err() {
        let _ = std::fs::remove_dir_all(super::work_dir(svg)?);
    }
    traced?;
    let folded = svg.with_extension("folded");
    let mut counts = None;
    if counted {
        let work = super::work_dir(svg)?;
        let data = work.join("perf.data");
        if data.is_file() {
            let tool = util::require_tool("PERF", "perf", "linux-perf")?;
            let recording = perf::fold(&tool, &data, Weight::Count, None, args.verbose)?;
            let path = sibling(svg, "count", "folded");
            recording.folded.write(&path, Weight::Count, &args.event)?;
            counts = Some(path);
        }
        if args.keep {
            let kept = sibling(&args.output, tag, "perf.data");
            std::fs::rename(&data, &kept)
                .with_context(|| format!("cannot move {} to {}", data.display(), kept.display()))?;
            eprintln!("kept the raw recording: {}", kept.display());
        } else {
            eprintln!("(its perf.data is folded again by count, for the diff's counts, and removed)");
        }
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(heapprobe::diff::Side::read(&folded, counts.as_deref())?)
}

/// `git -C dir ARGS`'s trimmed stdout; a failure quotes its stderr.
fn git_output(git: &str, dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(git);
    cmd.arg("-C").arg(dir).args(args);
    let out = cmd.output().with_context(|| format!("failed to run {:?}", display(&cmd)))?;
    if !out.status.success() {
        bail!("{:?} exited with {}: {}", display(&cmd), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A temporary worktree of ours, removed when dropped.
struct Worktree {
    git: String,
    top: PathBuf,
    path: PathBuf,
    removed: bool,
}

impl Worktree {
    fn add(git: &str, top: &Path, commit: &str) -> anyhow::Result<Worktree> {
        let path = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).with_context(|| format!("cannot remove the stale {}", path.display()))?;
        }
        let path_arg = path.to_string_lossy().into_owned();
        let mut worktree = Worktree { git: git.to_owned(), top: top.to_owned(), path, removed: false };
        if let Err(e) = git_output(git, top, &["worktree", "add", "--detach", "--quiet", &path_arg, commit]) {
            worktree.removed = true;
            let _ = std::fs::remove_dir_all(&worktree.path);
            return Err(e.context("cannot check the baseline out in a temporary worktree"));
        }
        Ok(worktree)
    }

    /// Removes the worktree and its registration.
    fn remove(&mut self) -> anyhow::Result<()> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        let path = self.path.to_string_lossy().into_owned();
        let removed = git_output(&self.git, &self.top, &["worktree", "remove", "--force", &path]);
        if self.path.exists() {
            std::fs::remove_dir_all(&self.path).with_context(|| format!("cannot remove {}", self.path.display()))?;
        }
        let _ = git_output(&self.git, &self.top, &["worktree", "prune"]);
        removed.map(drop).context("cannot remove the temporary worktree")
    }
}

impl Drop for Worktree {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Removes the worktrees (and their directories) of earlier runs of ours
/// that were killed: named `heapprobe-baseline-PID` with PID dead.
fn sweep_stale(git: &str, top: &Path) {
    let dead = |name: &str| {
        name.strip_prefix(PREFIX)
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
    };
    let listed = git_output(git, top, &["worktree", "list", "--porcelain"]).unwrap_or_default();
    for path in listed.lines().filter_map(|l| l.strip_prefix("worktree ")) {
        let path = Path::new(path);
        if path.file_name().and_then(|n| n.to_str()).is_some_and(dead) {
            eprintln!("removing the worktree {} left by a killed run", path.display());
            let _ = git_output(git, top, &["worktree", "remove", "--force", &path.to_string_lossy()]);
            let _ = std::fs::remove_dir_all(path);
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            if entry.file_name().to_str().is_some_and(dead) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let _ = git_output(git, top, &["worktree", "prune"]);
}

/// Sets an environment variable until dropped, then restores it.
struct EnvGuard {
    name: &'static str,
    old: Option<OsString>,
}

impl EnvGuard {
    fn set(name: &'static str, value: OsString) -> EnvGuard {
        let old = std::env::var_os(name);
        std::env::set_var(name, value);
        EnvGuard { name, old }
    }
}

impl Drop for EnvGuard {
    fn drop(&mut self) {
        match self.old.take() {
            Some(old) => std::env::set_var(self.name, old),
            None => std::env::remove_var(self.name),
        }
    }
}
