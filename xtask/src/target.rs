//! Choosing and building what to trace, in any cargo workspace: the one
//! around the current directory or `--manifest-path`, a package with `-p`,
//! `--features`, `--release`; targets with `--test`, `--bin`, `--example`,
//! `--bench`, `--lib`. Executables are found from cargo's
//! `--message-format=json` artifacts, never by guessing paths.
//!
//! The build's profile and flags go on cargo's command line, so the user's
//! files stay as they are: a profile of its own (`heapprobe`, or
//! `heapprobe-release` with `--release`) in its own directory of the user's
//! target directory, so that ordinary builds are neither slowed down nor
//! invalidated.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};
use cargo_metadata::{DependencyKind, Message, Metadata, MetadataCommand, Package, PackageId, TargetKind};

use crate::util::{cargo, display};

/// The profile of traced builds: the `dev` profile with full debuginfo
/// (symbols for every frame) and never stripped. Defined on cargo's command
/// line ([`Build::profile_config`]), so it needs nothing in the user's
/// Cargo.toml, and built into `target/heapprobe/`.
pub const PROFILE: &str = "heapprobe";

/// The profile of traced `--release` builds: `release`, plus debuginfo, never
/// stripped; built into `target/heapprobe-release/`.
pub const RELEASE_PROFILE: &str = "heapprobe-release";

/// The flag added to rustc's for traced builds: frame pointers make call
/// stacks cheap to record (perf `--call-graph fp`, bpftrace `ustack`).
pub const FRAME_POINTERS: [&str; 2] = ["-C", "force-frame-pointers=yes"];

/// The package that provides the allocator wrapper and its probes.
const HEAPPROBE: &str = "heapprobe";

/// This tool's own package: it depends on heapprobe for the probe table
/// only, so depending on it does not make a package a heapprobe user.
const TOOL: &str = "heapprobe-cli";

/// Which target to build and run.
#[derive(clap::Args, Debug, Default, Clone)]
#[non_exhaustive]
pub struct Target {
    /// An integration-test target, or else the name of a test function to
    /// run on its own (exactly, ignored or not) in whichever test binary has
    /// it. Default: none.
    #[arg(long, value_name = "NAME", group = "target")]
    pub test: Option<String>,
    /// A binary target. Default: none.
    #[arg(long, value_name = "NAME", group = "target")]
    pub bin: Option<String>,
    /// An example. Default: none.
    #[arg(long, value_name = "NAME", group = "target")]
    pub example: Option<String>,
    /// A benchmark target (run in test mode unless you pass `-- --bench`).
    /// Default: none.
    #[arg(long, value_name = "NAME", group = "target")]
    pub bench: Option<String>,
    /// The package's library unit tests. Default: `false`.
    #[arg(long, group = "target")]
    pub lib: bool,
    /// Arguments passed to the traced program. Default: none.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

impl Target {
    /// Whether any target was chosen.
    pub fn is_set(&self) -> bool {
        self.test.is_some() || self.bin.is_some() || self.example.is_some() || self.bench.is_some() || self.lib
    }
}

/// Which workspace and package to build, and how: cargo's own flags.
#[derive(clap::Args, Debug, Default, Clone)]
#[non_exhaustive]
pub struct Build {
    /// The Cargo.toml of the workspace, or of one of its packages (then that
    /// package is looked in first). Default: the one cargo finds from the
    /// current directory.
    #[arg(long, value_name = "PATH")]
    pub manifest_path: Option<PathBuf>,
    /// The package whose target it is. Default: the package of the current
    /// directory (or of `--manifest-path`) if it has the target, else
    /// whichever package of the workspace that uses heapprobe has it.
    #[arg(short, long, value_name = "SPEC")]
    pub package: Option<String>,
    /// Features to activate, space or comma separated (as cargo's
    /// `--features`). Default: none.
    #[arg(short = 'F', long, value_name = "FEATURES")]
    pub features: Vec<String>,
    /// Activate every feature. Default: `false`.
    #[arg(long)]
    pub all_features: bool,
    /// Do not activate the `default` feature. Default: `false`.
    #[arg(long)]
    pub no_default_features: bool,
    /// Build optimised: the `release` profile plus debuginfo and frame
    /// pointers, in `target/heapprobe-release/`. Default: `false` (the `dev`
    /// profile plus debuginfo and frame pointers, in `target/heapprobe/`).
    #[arg(long)]
    pub release: bool,
    /// The directory cargo runs in, where its configuration is found (and,
    /// without `manifest_path`, the workspace). `None`: the current one.
    /// Set by `trace --baseline` for the revision's worktree.
    #[arg(skip)]
    pub(crate) dir: Option<PathBuf>,
    /// The target directory to build in (cargo's `--target-dir`). `None`:
    /// the workspace's. Set by `trace --baseline`, which builds the revision
    /// apart.
    #[arg(skip)]
    pub(crate) target_dir: Option<PathBuf>,
}

impl Build {
    /// The profile the build uses: [`PROFILE`] or [`RELEASE_PROFILE`].
    pub fn profile(&self) -> &'static str {
        if self.release {
            RELEASE_PROFILE
        } else {
            PROFILE
        }
    }

    /// The `--config` arguments that define [`profile`](Self::profile) on
    /// cargo's command line.
    pub fn profile_config(&self) -> Vec<String> {
        let (name, inherits) = if self.release { (RELEASE_PROFILE, "release") } else { (PROFILE, "dev") };
        [format!("inherits=\"{inherits}\""), String::from("debug=true"), String::from("strip=false")]
            .iter()
            .flat_map(|setting| [String::from("--config"), format!("profile.{name}.{setting}")])
            .collect()
    }

    /// The arguments of a `cargo` command (after the subcommand) that builds
    /// as traced builds do: the manifest, features, the profile and frame
    /// pointers (in `build.rustflags`, added to the user's own; see
    /// [`rustflags_env`]).
    pub fn cargo_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(manifest) = &self.manifest_path {
            args.push("--manifest-path".into());
            args.push(manifest.into());
        }
        if let Some(dir) = &self.target_dir {
            args.push("--target-dir".into());
            args.push(dir.into());
        }
        for features in &self.features {
            args.push("--features".into());
            args.push(features.into());
        }
        if self.all_features {
            args.push("--all-features".into());
        }
        if self.no_default_features {
            args.push("--no-default-features".into());
        }
        args.extend(self.profile_config().into_iter().map(OsString::from));
        args.push("--profile".into());
        args.push(self.profile().into());
        if rustflags_env().is_none() {
            let flags: Vec<String> = FRAME_POINTERS.iter().map(|f| format!("{f:?}")).collect();
            args.push("--config".into());
            args.push(format!("build.rustflags=[{}]", flags.join(", ")).into());
        }
        args
    }
}

/// `RUSTFLAGS` (or `CARGO_ENCODED_RUSTFLAGS`) with the frame-pointer flags
/// added, when the environment sets one (even empty): cargo then ignores
/// the configuration's `build.rustflags`, so they go there. `None` when
/// neither is set.
pub fn rustflags_env() -> Option<(&'static str, String)> {
    if let Ok(flags) = std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        let ours = FRAME_POINTERS.join("\x1f");
        return Some(("CARGO_ENCODED_RUSTFLAGS", if flags.is_empty() { ours } else { format!("{flags}\x1f{ours}") }));
    }
    let flags = std::env::var("RUSTFLAGS").ok()?;
    Some(("RUSTFLAGS", format!("{} {}", flags.trim(), FRAME_POINTERS.join(" ")).trim_start().to_owned()))
}

/// A built executable and how to run it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Built {
    /// The executable.
    pub exe: PathBuf,
    /// Its arguments (a test filter, then the user's).
    pub args: Vec<String>,
    /// What was built, for titles and messages: `test it_works`.
    pub label: String,
    /// The directory to run it in: the package's, for tests and benches (as
    /// `cargo test` does); `None` (the current one) for binaries and
    /// examples (as `cargo run` does).
    pub dir: Option<PathBuf>,
    /// The variables cargo sets for a program it runs (`CARGO_MANIFEST_DIR`,
    /// `CARGO_PKG_NAME`, ...), so that the program runs as under `cargo
    /// test` or `cargo run`.
    pub env: Vec<(String, OsString)>,
}

/// Which binary `probes` and `doctor` inspect: a PATH, a running process or a
/// target to build.
#[derive(clap::Args, Debug, Default, Clone)]
#[non_exhaustive]
pub struct Inspect {
    /// The target to build and inspect.
    #[command(flatten)]
    pub target: Target,
    /// How to build it.
    #[command(flatten)]
    pub build: Build,
    /// A binary to inspect (instead of building a target). Default: none.
    #[arg(value_name = "PATH", conflicts_with_all = ["test", "bin", "example", "bench", "lib", "pid"])]
    pub path: Option<PathBuf>,
    /// The executable of this running process. Default: none.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Echo the commands run. Default: `false`.
    #[arg(short, long)]
    pub verbose: bool,
}

impl Inspect {
    /// The executable chosen: `path` if given, else the running process
    /// `pid`'s, else the built target's; `None` when none was chosen.
    pub fn exe(&self) -> anyhow::Result<Option<PathBuf>> {
        inspected_exe(self.path.clone(), self.pid, &self.target, &self.build, self.verbose)
    }
}

/// The executable a subcommand inspects: `path` if given, else the running
/// process `pid`'s, else the built `target`'s; `None` when none was chosen.
pub fn inspected_exe(
    path: Option<PathBuf>,
    pid: Option<u32>,
    target: &Target,
    build_options: &Build,
    verbose: bool,
) -> anyhow::Result<Option<PathBuf>> {
    if let Some(path) = path {
        if !path.exists() {
            bail!("{} does not exist", path.display());
        }
        return Ok(Some(path));
    }
    if let Some(pid) = pid {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process with pid {pid}");
        }
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        if let Err(error) = std::fs::metadata(&exe) {
            bail!("{}", unreadable_exe(pid, &exe, &error));
        }
        return Ok(Some(exe));
    }
    if target.is_set() {
        return Ok(Some(build(target, build_options, verbose)?.exe));
    }
    Ok(None)
}

/// Why `/proc/PID/exe` could not be read, as exactly as the kernel says:
/// a zombie (it has exited) and a kernel thread have no executable at all,
/// whoever asks; only a refusal to someone who is not root is about
/// privileges.
fn unreadable_exe(pid: u32, exe: &Path, error: &std::io::Error) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // `PID (COMM) STATE ...`: COMM may hold spaces and parentheses.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    match state {
        Some("Z") => format!(
            "pid {pid} is a zombie: it has exited and waits for its parent to reap it, so it has no executable and \
             nothing to trace"
        ),
        Some("X") => format!("pid {pid} is exiting: nothing is left to trace"),
        _ if error.kind() == std::io::ErrorKind::NotFound => format!(
            "pid {pid} has no executable ({} does not resolve: a kernel thread, or a process that is exiting)",
            exe.display()
        ),
        _ if error.kind() == std::io::ErrorKind::PermissionDenied && !crate::util::is_root() => format!(
            "cannot read the executable of pid {pid} ({}: {error}): a process of another user needs root or \
             CAP_SYS_PTRACE",
            exe.display()
        ),
        _ => format!(
            "cannot read the executable of pid {pid} ({}): {error}{}",
            exe.display(),
            if error.kind() == std::io::ErrorKind::PermissionDenied {
                " (refused even to root: a Yama ptrace_scope of 3, or a security module such as AppArmor or SELinux)"
            } else {
                ""
            }
        ),
    }
}

/// The workspace a build happens in, as `cargo metadata` describes it.
pub struct Workspace {
    metadata: Metadata,
    /// The members that use heapprobe (depend on it, directly or through
    /// other packages, not counting this tool), by name.
    users: BTreeSet<String>,
    /// The member whose manifest is `--manifest-path`, or the nearest
    /// Cargo.toml above the current directory, if that is a member's.
    current: Option<String>,
}

impl Workspace {
    /// Reads the workspace around the current directory, or the one
    /// `manifest_path` belongs to.
    pub fn load(manifest_path: Option<&Path>) -> anyhow::Result<Self> {
        Self::load_in(manifest_path, None)
    }

    /// [`load`](Self::load), as from the directory `dir` (`None`: the
    /// current one).
    pub fn load_in(manifest_path: Option<&Path>, dir: Option<&Path>) -> anyhow::Result<Self> {
        let cwd = match dir {
            Some(dir) => dir.to_path_buf(),
            None => std::env::current_dir().context("cannot read the current directory")?,
        };
        let nearest = match manifest_path {
            Some(path) => {
                if !path.is_file() {
                    bail!(
                        "--manifest-path {} is not a file: give the path of a Cargo.toml (a workspace's, or one of \
                         its packages')",
                        path.display()
                    );
                }
                Some(path.canonicalize().with_context(|| format!("cannot resolve {}", path.display()))?)
            }
            None => cwd.ancestors().map(|d| d.join("Cargo.toml")).find(|m| m.is_file()),
        };
        let Some(manifest) = nearest else {
            bail!(
                "no Cargo.toml in {} or any directory above it: run this inside a cargo project, or give \
                 --manifest-path PATH/Cargo.toml",
                cwd.display()
            );
        };
        let mut command = MetadataCommand::new();
        command.manifest_path(&manifest).current_dir(&cwd);
        let metadata = command.exec().map_err(|error| match error {
            cargo_metadata::Error::CargoMetadata { stderr } => anyhow::anyhow!(
                "cannot read the cargo workspace of {}: `cargo metadata` failed: {}; fix that (`cargo build` reports \
                 the same), or give --manifest-path another Cargo.toml",
                manifest.display(),
                stderr.trim().trim_start_matches("error: ")
            ),
            other => anyhow::Error::new(other)
                .context(format!("cannot read the cargo workspace of {} (`cargo metadata`)", manifest.display())),
        })?;
        let users = heapprobe_users(&metadata);
        let current = metadata
            .workspace_packages()
            .into_iter()
            .find(|p| p.manifest_path.as_std_path() == manifest)
            .map(|p| p.name.to_string());
        Ok(Self { metadata, users, current })
    }

    /// The workspace's root directory.
    pub fn root(&self) -> &Path {
        self.metadata.workspace_root.as_std_path()
    }

    /// The workspace's root manifest, for messages.
    pub fn manifest(&self) -> PathBuf {
        self.metadata.workspace_root.as_std_path().join("Cargo.toml")
    }

    /// The target directory cargo builds into (`CARGO_TARGET_DIR`,
    /// `build.target-dir`, or `target/`).
    pub fn target_directory(&self) -> &Path {
        self.metadata.target_directory.as_std_path()
    }

    fn members(&self) -> Vec<&Package> {
        self.metadata.workspace_packages()
    }

    fn member(&self, name: &str) -> Option<&Package> {
        self.members().into_iter().find(|p| p.name.as_str() == name)
    }

    /// The packages to look in, best first: `-p`'s, else the current package
    /// (if it uses heapprobe), then the other heapprobe users. Fails with a
    /// message naming the workspace when there is none.
    fn candidates(&self, package: Option<&str>) -> anyhow::Result<Vec<&Package>> {
        let names = || self.members().iter().map(|p| p.name.to_string()).collect::<Vec<_>>().join(", ");
        if let Some(spec) = package {
            let Some(chosen) = self.member(spec) else {
                bail!(
                    "no package named {spec:?} in the workspace of {} (its packages: {}){}",
                    self.manifest().display(),
                    names(),
                    closest(spec, self.members().iter().map(|p| p.name.as_str()))
                );
            };
            if !self.users.contains(spec) {
                bail!(
                    "package {spec} ({}) does not depend on heapprobe, so its programs fire no heapprobe probe: add \
                     `heapprobe` to its [dependencies] and make `heapprobe::Heapprobe` its `#[global_allocator]`",
                    chosen.manifest_path
                );
            }
            return Ok(vec![chosen]);
        }
        if self.users.is_empty() {
            bail!(
                "no package of the workspace of {} depends on heapprobe (its packages: {}), so none fires heapprobe's \
                 probes: add `heapprobe` to the [dependencies] of the package you want to trace and make \
                 `heapprobe::Heapprobe` its `#[global_allocator]`",
                self.manifest().display(),
                names()
            );
        }
        let mut all: Vec<&Package> =
            self.members().into_iter().filter(|p| self.users.contains(p.name.as_str())).collect();
        if let Some(current) = &self.current {
            if let Some(at) = all.iter().position(|p| p.name.as_str() == current) {
                let package = all.remove(at);
                all.insert(0, package);
            }
        }
        Ok(all)
    }

    fn describe(&self, packages: &[&Package]) -> String {
        let names: Vec<&str> = packages.iter().map(|p| p.name.as_str()).collect();
        format!("in {} of the workspace of {}", names.join(", "), self.manifest().display())
    }
}

/// The members that use heapprobe: heapprobe itself, and every package that
/// depends on one that does (normal or dev dependencies), except through
/// this tool, whose dependency on heapprobe is for its probe table only.
fn heapprobe_users(metadata: &Metadata) -> BTreeSet<String> {
    let Some(resolve) = &metadata.resolve else { return BTreeSet::new() };
    let name_of = |id: &PackageId| metadata.packages.iter().find(|p| &p.id == id).map(|p| p.name.as_str());
    let mut users: HashSet<&PackageId> =
        resolve.nodes.iter().filter(|n| name_of(&n.id) == Some(HEAPPROBE)).map(|n| &n.id).collect();
    loop {
        let before = users.len();
        for node in &resolve.nodes {
            if users.contains(&node.id) || name_of(&node.id) == Some(TOOL) {
                continue;
            }
            let uses = node.deps.iter().any(|dep| {
                users.contains(&dep.pkg)
                    && dep
                        .dep_kinds
                        .iter()
                        .any(|k| matches!(k.kind, DependencyKind::Normal | DependencyKind::Development))
            });
            if uses {
                users.insert(&node.id);
            }
        }
        if users.len() == before {
            break;
        }
    }
    metadata.workspace_packages().iter().filter(|p| users.contains(&p.id)).map(|p| p.name.to_string()).collect()
}

/// Builds the chosen target with the traced profile and finds its executable.
pub fn build(target: &Target, options: &Build, verbose: bool) -> anyhow::Result<Built> {
    let workspace = Workspace::load_in(options.manifest_path.as_deref(), options.dir.as_deref())?;
    let candidates = workspace.candidates(options.package.as_deref())?;

    let (kind, name, cargo_flags, label): (TargetKind, Option<&str>, Vec<&str>, String) =
        if let Some(name) = &target.test {
            (TargetKind::Test, Some(name), vec!["test", "--no-run", "--test", name], format!("test {name}"))
        } else if let Some(name) = &target.bin {
            (TargetKind::Bin, Some(name), vec!["build", "--bin", name], format!("bin {name}"))
        } else if let Some(name) = &target.example {
            (TargetKind::Example, Some(name), vec!["build", "--example", name], format!("example {name}"))
        } else if let Some(name) = &target.bench {
            (TargetKind::Bench, Some(name), vec!["test", "--no-run", "--bench", name], format!("bench {name}"))
        } else if target.lib {
            (TargetKind::Lib, None, vec!["test", "--no-run", "--lib"], String::from("lib tests"))
        } else {
            bail!("choose what to trace: --test NAME, --bin NAME, --example NAME, --bench NAME, --lib or --pid PID");
        };

    let package = match name {
        Some(name) => owner(&workspace, &candidates, &kind, name)?,
        None => {
            let with_lib: Vec<&Package> =
                candidates.iter().copied().filter(|p| p.targets.iter().any(|t| is_lib(&t.kind))).collect();
            match (options.package.is_some() || workspace.current.is_some(), with_lib.as_slice()) {
                (_, []) => bail!("no library {}", workspace.describe(&candidates)),
                (true, [first, ..]) | (false, [first]) => Some(*first),
                (false, many) => bail!(
                    "packages {} each have a library: pick one with -p",
                    many.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            }
        }
    };
    let Some(package) = package else {
        // `--test NAME` where NAME is no test target: a test function.
        let name = target.test.as_deref().expect("only --test falls back to a function");
        return build_test_filter(&workspace, &candidates, target, options, name, verbose);
    };
    let artifacts = cargo_build(&[package], options, &cargo_flags, verbose)?;
    // Cargo builds more than the target asked for: a package's binaries
    // for its integration tests and benches (`CARGO_BIN_EXE_*`), build
    // scripts, examples for `cargo test`. The one to run is the artifact
    // of that package whose target has the kind and name asked for (for
    // `--lib`, the library built as a test).
    let wanted = |a: &Executable| {
        a.package == package.id
            && match name {
                Some(name) => a.name == name && a.kinds.contains(&kind),
                None => a.test && is_lib(&a.kinds),
            }
    };
    let (exe, from) = single(&artifacts, wanted, &label, package)?;
    Ok(built(&workspace, from, exe, target.args.clone(), label, kind != TargetKind::Bin && kind != TargetKind::Example))
}

/// Whether a target with these kinds is a library, of any crate type.
fn is_lib(kinds: &[TargetKind]) -> bool {
    kinds.iter().any(|k| {
        matches!(
            k,
            TargetKind::Lib
                | TargetKind::RLib
                | TargetKind::DyLib
                | TargetKind::CDyLib
                | TargetKind::StaticLib
                | TargetKind::ProcMacro
        )
    })
}

/// A kind of target other than a test named `name`, for messages (`a bin
/// target named "x"`).
fn other_kind_named(packages: &[&Package], name: &str) -> Option<String> {
    packages.iter().flat_map(|p| &p.targets).find(|t| t.name == name).map(|t| {
        let kind = t.kind.first().map(|k| k.to_string()).unwrap_or_default();
        format!("a {kind} target named {name:?}: use --{kind} {name}")
    })
}

/// The runnable executable, with cargo's environment for it.
fn built(
    workspace: &Workspace,
    package: PackageId,
    exe: PathBuf,
    args: Vec<String>,
    label: String,
    test: bool,
) -> Built {
    let package = workspace.metadata.packages.iter().find(|p| p.id == package);
    let mut env = Vec::new();
    let mut dir = None;
    if let Some(package) = package {
        let manifest = package.manifest_path.as_std_path();
        let root = manifest.parent().unwrap_or(Path::new("/"));
        env.push((String::from("CARGO_MANIFEST_DIR"), root.as_os_str().to_owned()));
        env.push((String::from("CARGO_MANIFEST_PATH"), manifest.as_os_str().to_owned()));
        env.push((String::from("CARGO_PKG_NAME"), package.name.to_string().into()));
        env.push((String::from("CARGO_PKG_VERSION"), package.version.to_string().into()));
        if test {
            dir = Some(root.to_path_buf());
        }
    }
    env.push((String::from("CARGO"), cargo().into()));
    Built { exe, args, label, dir, env }
}

/// `--test NAME` where NAME is not a test target: find the test binaries
/// that contain a test with that name and run it alone, exactly (ignored or
/// not: it was asked for by name). Fails before recording when nothing
/// matches (the harness would exit 0).
fn build_test_filter(
    workspace: &Workspace,
    candidates: &[&Package],
    target: &Target,
    options: &Build,
    name: &str,
    verbose: bool,
) -> anyhow::Result<Built> {
    let artifacts = cargo_build(candidates, options, &["test", "--no-run", "--tests"], verbose)?;
    let mut matches = Vec::new();
    let mut all = Vec::new();
    // Only the harnesses: `--tests` also builds the packages' binaries as
    // programs (`CARGO_BIN_EXE_*`), which must never be run to be listed.
    let ours = |a: &&Executable| a.test && candidates.iter().any(|p| p.id == a.package);
    for artifact in artifacts.iter().filter(ours) {
        for test in list_tests(&artifact.exe)? {
            if test == name || test.rsplit("::").next() == Some(name) {
                matches.push((artifact.exe.clone(), artifact.package.clone(), test.clone()));
            }
            all.push(test);
        }
    }
    // The current package's match wins over other packages' (as cargo
    // prefers the package of the current directory).
    if matches.len() > 1 {
        let first = candidates.first().map(|p| p.id.clone());
        if candidates.len() > 1
            && workspace.current.is_some()
            && matches.iter().filter(|m| Some(&m.1) == first.as_ref()).count() == 1
        {
            matches.retain(|m| Some(&m.1) == first.as_ref());
        }
    }
    match matches.len() {
        0 => bail!(
            "no test target and no test function named {name:?}{} (looked {}){}",
            closest(name, all.iter().map(|t| t.rsplit("::").next().unwrap_or(t))),
            workspace.describe(candidates),
            other_kind_named(candidates, name).map(|hint| format!("; there is {hint}")).unwrap_or_default()
        ),
        1 => {
            let (exe, package, test) = matches.remove(0);
            let mut args = vec![test.clone(), String::from("--exact"), String::from("--include-ignored")];
            args.extend(target.args.iter().cloned());
            Ok(built(workspace, package, exe, args, format!("test {test}"), true))
        }
        _ => bail!(
            "{name:?} names {} tests; pick one with its full path, or the package with -p: {}",
            matches.len(),
            matches.iter().map(|(e, _, t)| format!("{t} (in {})", e.display())).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The names of the tests in a libtest binary.
fn list_tests(exe: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new(exe)
        .args(["--list", "--format=terse"])
        .output()
        .with_context(|| format!("failed to run {} --list", exe.display()))?;
    if !out.status.success() {
        // Not a libtest harness (harness = false): it has no named tests.
        return Ok(Vec::new());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

/// The package among `candidates` (best first) that has a `kind` target
/// named `name`: the first one if it has it, else the only other one.
fn owner<'w>(
    workspace: &Workspace,
    candidates: &[&'w Package],
    kind: &TargetKind,
    name: &str,
) -> anyhow::Result<Option<&'w Package>> {
    let has = |p: &&Package| p.targets.iter().any(|t| t.name == name && t.kind.contains(kind));
    let owners: Vec<&Package> = candidates.iter().copied().filter(has).collect();
    let preferred = candidates.first().filter(|p| has(p) && workspace.current.as_deref() == Some(p.name.as_str()));
    if let Some(package) = preferred {
        return Ok(Some(package));
    }
    match owners.as_slice() {
        [] if *kind == TargetKind::Test => Ok(None),
        [] => {
            let names =
                candidates.iter().flat_map(|p| &p.targets).filter(|t| t.kind.contains(kind)).map(|t| t.name.as_str());
            bail!("no {kind} target named {name:?}{} (looked {})", closest(name, names), workspace.describe(candidates))
        }
        [one] => Ok(Some(one)),
        many => bail!(
            "packages {} all have a {kind} target named {name:?}: pick one with -p",
            many.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// `": did you mean ...?"` with the up to five closest names, or nothing.
pub fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let mut scored: Vec<(f64, &str)> =
        candidates.map(|c| (strsim::normalized_damerau_levenshtein(name, c), c)).filter(|(s, _)| *s > 0.3).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    if scored.is_empty() {
        return String::new();
    }
    let names: Vec<String> = scored.iter().take(5).map(|(_, c)| format!("`{c}`")).collect();
    format!("; closest: {}", names.join(", "))
}

/// An executable that cargo built, with the target it was built for.
struct Executable {
    exe: PathBuf,
    package: PackageId,
    /// The target's name (a library's is its `[lib] name`).
    name: String,
    kinds: Vec<TargetKind>,
    /// Built as a test harness (`cargo test`'s build of a target).
    test: bool,
}

/// Runs `cargo FLAGS -p PACKAGE... --profile heapprobe
/// --message-format=json-render-diagnostics` and returns every executable
/// it produced, in order, with the target each was built for.
fn cargo_build(
    packages: &[&Package],
    options: &Build,
    flags: &[&str],
    verbose: bool,
) -> anyhow::Result<Vec<Executable>> {
    let mut cmd = Command::new(cargo());
    cmd.args(flags);
    if let Some(dir) = &options.dir {
        cmd.current_dir(dir);
    }
    for package in packages {
        cmd.args(["--package", package.name.as_str()]);
    }
    cmd.args(options.cargo_args()).arg("--message-format=json-render-diagnostics").stdout(Stdio::piped());
    if let Some((var, flags)) = rustflags_env() {
        cmd.env(var, flags);
    }
    if verbose {
        eprintln!("$ {}", display(&cmd));
    }
    let mut child = cmd.spawn().with_context(|| format!("failed to run {:?}", display(&cmd)))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut exes = Vec::new();
    for message in Message::parse_stream(BufReader::new(stdout)) {
        if let Message::CompilerArtifact(artifact) = message.context("reading cargo's JSON messages")? {
            if let Some(exe) = artifact.executable {
                exes.push(Executable {
                    exe: exe.into_std_path_buf(),
                    package: artifact.package_id,
                    name: artifact.target.name,
                    kinds: artifact.target.kind,
                    test: artifact.profile.test,
                });
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{:?} exited with {status}; see cargo's errors above", display(&cmd));
    }
    Ok(exes)
}

/// The one executable among `artifacts` that is `wanted`; the error names
/// what cargo built instead.
fn single(
    artifacts: &[Executable],
    wanted: impl Fn(&Executable) -> bool,
    label: &str,
    package: &Package,
) -> anyhow::Result<(PathBuf, PackageId)> {
    let chosen: Vec<&Executable> = artifacts.iter().filter(|a| wanted(a)).collect();
    let describe = |list: &mut dyn Iterator<Item = &Executable>| {
        list.map(|a| {
            let kind = a.kinds.first().map(|k| k.to_string()).unwrap_or_default();
            let mode = if a.test { " (test)" } else { "" };
            format!("{kind} {}{mode}: {}", a.name, a.exe.display())
        })
        .collect::<Vec<_>>()
        .join(", ")
    };
    match chosen.as_slice() {
        [one] => Ok((one.exe.clone(), one.package.clone())),
        [] => bail!(
            "cargo built no executable for {label} of package {} ({}); it built: {}",
            package.name,
            package.manifest_path,
            if artifacts.is_empty() { String::from("nothing") } else { describe(&mut artifacts.iter()) }
        ),
        many => bail!(
            "cargo built {} executables for {label} of package {} ({}): {}; this is a bug of heapprobe, please report \
             it with this message",
            many.len(),
            package.name,
            package.manifest_path,
            describe(&mut many.iter().copied())
        ),
    }
}
