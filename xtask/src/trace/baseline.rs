//! `cargo heapprobe trace … --baseline REF`: the same trace at git revision
//! REF (checked out in a temporary worktree of the workspace's repository)
//! and in the working tree, then their diff ([`heapprobe::diff`]).
//!
//! The repository is the one holding the workspace that `trace` would
//! trace (around the current directory, or `--manifest-path`'s): the
//! revision's copy of the same manifest is built, as from the same
//! directory (so that the revision's own `.cargo/config.toml` applies),
//! with the same options. It is built in its own target directory,
//! `heapprobe-baseline/` inside the workspace's, kept between runs so that
//! dependencies are built once; not in the workspace's own, since cargo
//! judges path crates fresh by modification times and by paths relative
//! to the workspace, so a working tree whose files are older than the
//! worktree's checkout would reuse the baseline's build.
//!
//! The worktree (`heapprobe-baseline-PID` in the temporary directory) is
//! removed on every exit path but SIGKILL; one left by a killed run (its
//! pid is dead) is removed by the next run in any repository. Nothing else
//! in the repository is touched: no checkout, no stash, and the working
//! tree's uncommitted changes are what AFTER measures.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

use anyhow::{bail, Context as _};

use super::{output_dir, Backend, Options, Outcome, Weight, INTERRUPTED};
use crate::target::Workspace;
use crate::util::{self, display};

/// The prefix of our worktrees' directory names (then the pid).
pub const PREFIX: &str = "heapprobe-baseline-";

/// Traces `options`' target at `reference` and in the working tree, and
/// writes their diff to `options.output`; the outcome is the working
/// tree's trace, with the diff's path.
pub fn run(options: &Options, reference: &str) -> anyhow::Result<Outcome> {
    if options.pid.is_some() {
        bail!("--baseline builds the target at another revision: it cannot attach to a running process (--pid)");
    }
    if !options.target.is_set() {
        bail!("choose what to trace at both revisions: --test NAME, --bin NAME, --example NAME, --bench NAME or --lib");
    }
    // What the two traces would each refuse, before any checkout or build.
    super::check_event(&options.event, options.weight, options.id)?;
    super::check_output_writable(&options.output)?;
    util::check_tracing_privileges(match options.backend {
        Backend::Perf => "perf",
        Backend::Bpftrace => "bpftrace",
    })?;
    super::install_ctrlc_forwarding()?;
    let git = util::require_tool("GIT", "git", "git")?;

    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let workspace = Workspace::load(options.build.manifest_path.as_deref())?;
    let root = workspace.root().to_path_buf();
    let top = git_output(&git, &root, &["rev-parse", "--show-toplevel"]).map_err(|e| {
        anyhow::anyhow!(
            "--baseline compares with a git revision, but the workspace {} is not in a git repository ({e:#})",
            root.display()
        )
    })?;
    let top = canonical(Path::new(&top))?;
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

    // The manifest `trace` starts from (`--manifest-path`, or the nearest
    // Cargo.toml above the current directory, as `Workspace::load` finds
    // it), and where it sits in the repository: the revision's copy of it
    // is built.
    let manifest = match &options.build.manifest_path {
        Some(path) => canonical(path)?,
        None => canonical(
            &cwd.ancestors()
                .map(|d| d.join("Cargo.toml"))
                .find(|m| m.is_file())
                .unwrap_or_else(|| workspace.manifest()),
        )?,
    };
    let in_repository = |path: &Path| -> anyhow::Result<PathBuf> {
        let path = canonical(path)?;
        path.strip_prefix(&top).map(Path::to_path_buf).map_err(|_| {
            anyhow::anyhow!(
                "{} is not inside its repository {}: --baseline cannot map it",
                path.display(),
                top.display()
            )
        })
    };
    let manifest_in_repository = in_repository(&manifest)?;
    let target_dir = workspace.target_directory().join("heapprobe-baseline");

    let (before_svg, after_svg) = (sibling(&options.output, "before", "svg"), sibling(&options.output, "after", "svg"));
    let mut worktree = Worktree::add(&git, &top, &commit)?;
    let before_manifest = worktree.path.join(&manifest_in_repository);
    if !before_manifest.is_file() {
        bail!(
            "{reference} ({short}) has no {}: the workspace is not there at that revision",
            manifest_in_repository.display()
        );
    }
    // A revision without a lock file resolves its dependencies as the
    // working tree does: the code is what is compared.
    let lock = root.join("Cargo.lock");
    if let Ok(root_in_repository) = in_repository(&root) {
        let before_lock = worktree.path.join(root_in_repository).join("Cargo.lock");
        if lock.is_file() && !before_lock.exists() && before_lock.parent().is_some_and(Path::is_dir) {
            std::fs::copy(&lock, &before_lock).with_context(|| format!("cannot copy {}", lock.display()))?;
        }
    }
    // cargo runs as from the same directory of the revision (the nearest
    // one it has), for the revision's own cargo configuration.
    let before_dir = match cwd.canonicalize().ok().and_then(|c| c.strip_prefix(&top).ok().map(Path::to_path_buf)) {
        Some(relative) => {
            worktree.path.join(relative).ancestors().find(|d| d.is_dir()).unwrap_or(&worktree.path).to_path_buf()
        }
        None => cwd.clone(),
    };
    // Both sides run their program through links in directories of one
    // length: a program that allocates for its `argv[0]` (a test harness
    // does) must not show a change for the worktree's longer path.
    let links = RunLinks(std::env::temp_dir().join(format!("{PREFIX}{}.run", std::process::id())));
    let mut before_options = options.clone();
    before_options.run_from = Some(links.0.join("b"));
    before_options.build.manifest_path = Some(before_manifest);
    before_options.build.dir = Some(before_dir);
    before_options.build.target_dir = Some(target_dir.clone());

    eprintln!(
        "==> BEFORE: {reference} ({short}), checked out in a temporary worktree ({}), built in {}",
        worktree.path.display(),
        target_dir.display()
    );
    let before = trace_side(&before_options, &before_svg, "before")
        .with_context(|| format!("tracing the baseline {reference} ({short}) in {}", worktree.path.display()))
        .map_err(interrupted)?;
    worktree.remove()?;
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!(
            "interrupted (Ctrl-C) while tracing the baseline: the working tree is not traced; BEFORE's trace is in {}",
            before_svg.display()
        );
    }
    eprintln!("==> AFTER: the working tree, {}", root.display());
    let mut after_options = options.clone();
    after_options.run_from = Some(links.0.join("a"));
    let (after, mut outcome) =
        trace_side(&after_options, &after_svg, "after").context("tracing the working tree").map_err(interrupted)?;
    drop(links);

    let mut diff_options = heapprobe::diff::Options::default();
    diff_options.title = options.graph.title.clone().unwrap_or_else(|| {
        format!(
            "heapprobe: {reference} ({short}) -> working tree, heapprobe:{} by {}",
            options.event,
            options.weight.count_name()
        )
    });
    diff_options.keep_allocator_frames = options.graph.keep_allocator_frames;
    diff_options.min_width = options.graph.min_width;
    let diff = heapprobe::diff::Diff::new(before.0, after, &diff_options)?;
    println!();
    print!("{diff}");
    if diff.count_totals().is_none() && options.weight == Weight::Bytes {
        println!("  (no count deltas: bpftrace sums by the weight alone; --backend perf gives them)");
    }
    diff.write_svg(&options.output)
        .with_context(|| format!("cannot write the differential flame graph to {}", options.output.display()))?;
    println!("BEFORE ({reference}): {} (and .folded)", before_svg.display());
    println!("AFTER (working tree): {} (and .folded)", after_svg.display());
    println!("differential flame graph: {}", options.output.display());
    options.graph.open_if_asked(&options.output);
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted (Ctrl-C): the working tree's trace ended early, so the diff is of a partial run");
    }
    outcome.diff = Some(options.output.clone());
    Ok(outcome)
}

/// A side's error, said to follow a Ctrl-C when one came (the traced
/// program or the build may have died of it).
fn interrupted(error: anyhow::Error) -> anyhow::Error {
    if INTERRUPTED.load(Ordering::SeqCst) {
        error.context("interrupted (Ctrl-C)")
    } else {
        error
    }
}

/// `path`, absolute and with its links resolved.
fn canonical(path: &Path) -> anyhow::Result<PathBuf> {
    path.canonicalize().with_context(|| format!("cannot resolve {}", path.display()))
}

/// `dir/NAME.TAG.EXT` for an output `dir/NAME.svg`.
fn sibling(output: &Path, tag: &str, ext: &str) -> PathBuf {
    let stem =
        output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| String::from("flamegraph"));
    output.with_file_name(format!("{stem}.{tag}.{ext}"))
}

/// One trace, as `trace` without `--baseline` makes it, to `svg`, as one
/// side of the diff: its folded stacks, with their counts when perf
/// recorded by bytes (perf.data is folded a second time, by count). With
/// `--keep`, its perf.data is kept as `NAME.TAG.perf.data` beside the
/// output (both sides record into the same scratch directory).
fn trace_side(options: &Options, svg: &Path, tag: &str) -> anyhow::Result<(heapprobe::diff::Side, Outcome)> {
    let mut side = options.clone();
    side.baseline = None;
    side.output = svg.to_path_buf();
    side.graph.open = false;
    side.count_folded = options.backend == Backend::Perf && options.weight == Weight::Bytes;
    let outcome = super::run(&side)?;
    if options.keep && options.backend == Backend::Perf {
        let work = output_dir(svg).join(format!("{}{}", super::WORK_PREFIX, std::process::id()));
        let (data, kept) = (work.join("perf.data"), sibling(&options.output, tag, "perf.data"));
        std::fs::rename(&data, &kept)
            .with_context(|| format!("cannot move {} to {}", data.display(), kept.display()))?;
        let _ = std::fs::remove_dir(&work);
        eprintln!("(moved to {})", kept.display());
    }
    let side = heapprobe::diff::Side::read(&outcome.folded, outcome.counts.as_deref())?;
    Ok((side, outcome))
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
            let _ = git_output(git, top, &["worktree", "prune"]);
        }
        let path_arg = path.to_string_lossy().into_owned();
        let mut worktree = Worktree { git: git.to_owned(), top: top.to_owned(), path, removed: false };
        if let Err(e) = git_output(git, top, &["worktree", "add", "--detach", "--quiet", &path_arg, commit]) {
            worktree.removed = true;
            let _ = std::fs::remove_dir_all(&worktree.path);
            let _ = git_output(git, top, &["worktree", "prune"]);
            return Err(e.context("cannot check the baseline out in a temporary worktree"));
        }
        // Resolved: the manifest's path inside it is joined to this.
        worktree.path = canonical(&worktree.path)?;
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

/// The directory of the links both sides run their programs through
/// (`heapprobe-baseline-PID.run`), removed when dropped.
struct RunLinks(PathBuf);

impl Drop for RunLinks {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether `name` is one of our worktrees' (or link directories') whose
/// run is gone.
fn stale(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .map(|rest| rest.strip_suffix(".run").unwrap_or(rest))
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes the worktrees (and their directories) of earlier runs of ours
/// that were killed: named `heapprobe-baseline-PID` with PID dead; those
/// of `top`'s repository are unregistered too.
fn sweep_stale(git: &str, top: &Path) {
    let listed = git_output(git, top, &["worktree", "list", "--porcelain"]).unwrap_or_default();
    for path in listed.lines().filter_map(|l| l.strip_prefix("worktree ")) {
        let path = Path::new(path);
        if path.file_name().and_then(|n| n.to_str()).is_some_and(stale) {
            eprintln!("removing the worktree {} left by a killed run", path.display());
            let _ = git_output(git, top, &["worktree", "remove", "--force", &path.to_string_lossy()]);
            let _ = std::fs::remove_dir_all(path);
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            if entry.file_name().to_str().is_some_and(stale) {
                eprintln!("removing {}, left by a killed run", entry.path().display());
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let _ = git_output(git, top, &["worktree", "prune"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sides_go_next_to_the_output() {
        assert_eq!(sibling(Path::new("out/diff.svg"), "before", "svg"), Path::new("out/diff.before.svg"));
        assert_eq!(sibling(Path::new("diff.svg"), "after", "perf.data"), Path::new("diff.after.perf.data"));
    }

    #[test]
    fn only_worktrees_of_dead_runs_are_stale() {
        let mut dead = Command::new("true").spawn().unwrap();
        let pid = dead.id();
        dead.wait().unwrap();
        assert!(stale(&format!("{PREFIX}{pid}")));
        assert!(stale(&format!("{PREFIX}{pid}.run")), "a dead run's links");
        // Not stale: ours, a live run's (pid 1), and names of other shapes.
        assert!(!stale(&format!("{PREFIX}{}", std::process::id())));
        assert!(!stale(&format!("{PREFIX}1")));
        assert!(!stale(&format!("{PREFIX}1.run")));
        assert!(!stale(&format!("{PREFIX}xtask-{pid}")));
        assert!(!stale(&format!("heapprobe-other-{pid}")));
    }
}
