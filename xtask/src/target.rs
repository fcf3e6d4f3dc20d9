//! Choosing and building what to trace: `--test`, `--bin`, `--example`,
//! `--bench`, `--lib`, `-p`. Executables are found from cargo's
//! `--message-format=json` artifacts, never by guessing paths.

use std::io::BufReader;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};
use cargo_metadata::{Message, Metadata, MetadataCommand, Package};

use crate::util::{cargo, display, project_root};

/// The cargo profile traced builds use (defined in the workspace
/// `Cargo.toml`): debuginfo on, in its own target directory, so that the
/// frame-pointer flags below never invalidate ordinary builds.
pub const PROFILE: &str = "trace";

/// Flags added to `RUSTFLAGS` for traced builds: frame pointers make call
/// stacks cheap to record (perf `--call-graph fp`, bpftrace `ustack`).
pub const TRACE_RUSTFLAGS: &str = "-C force-frame-pointers=yes";

/// Which target to build and run.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct TargetArgs {
    /// An integration-test target, or else the name of a test function to
    /// run on its own (exactly) in whichever test binary has it.
    #[arg(long, value_name = "NAME", group = "target")]
    pub test: Option<String>,
    /// A binary target.
    #[arg(long, value_name = "NAME", group = "target")]
    pub bin: Option<String>,
    /// An example.
    #[arg(long, value_name = "NAME", group = "target")]
    pub example: Option<String>,
    /// A benchmark target (run in test mode unless you pass `-- --bench`).
    #[arg(long, value_name = "NAME", group = "target")]
    pub bench: Option<String>,
    /// The package's library unit tests.
    #[arg(long, group = "target")]
    pub lib: bool,
    /// The package whose target to trace (default: as cargo decides).
    #[arg(short, long, value_name = "SPEC")]
    pub package: Option<String>,
    /// Arguments passed to the traced program.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

impl TargetArgs {
    /// Whether any target was chosen.
    pub fn is_set(&self) -> bool {
        self.test.is_some() || self.bin.is_some() || self.example.is_some() || self.bench.is_some() || self.lib
    }
}

/// A built executable and how to run it.
#[derive(Debug)]
pub struct Built {
    /// The executable.
    pub exe: PathBuf,
    /// Its arguments (a test filter, then the user's).
    pub args: Vec<String>,
    /// What was built, for titles and messages: `test it_works`.
    pub label: String,
}

/// Which binary `probes` and `doctor` inspect: a PATH, a running process or a
/// target to build.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// A binary to inspect (instead of building a target).
    #[arg(value_name = "PATH", conflicts_with_all = ["test", "bin", "example", "bench", "lib", "pid"])]
    path: Option<PathBuf>,
    /// The executable of this running process.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// Echo the commands run.
    #[arg(short, long)]
    pub verbose: bool,
}

impl InspectArgs {
    /// The executable chosen: `path` if given, else the running process
    /// `pid`'s, else the built target's; `None` when none was chosen.
    pub fn exe(&self) -> anyhow::Result<Option<PathBuf>> {
        inspected_exe(self.path.clone(), self.pid, &self.target, self.verbose)
    }
}

/// The executable a subcommand inspects: `path` if given, else the running
/// process `pid`'s, else the built `target`'s; `None` when none was chosen.
pub fn inspected_exe(
    path: Option<PathBuf>,
    pid: Option<u32>,
    target: &TargetArgs,
    verbose: bool,
) -> anyhow::Result<Option<PathBuf>> {
    if let Some(path) = path {
        if !path.exists() {
            bail!("{} does not exist", path.display());
        }
        return Ok(Some(path));
    }
    if let Some(pid) = pid {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process with pid {pid}");
        }
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        if std::fs::metadata(&exe).is_err() {
            bail!(
                "cannot read the executable of pid {pid} ({}): a process of another user needs root or \
                 CAP_SYS_PTRACE",
                exe.display()
            );
        }
        return Ok(Some(exe));
    }
    if target.is_set() {
        return Ok(Some(build(target, verbose)?.exe));
    }
    Ok(None)
}

/// Builds the chosen target with the trace profile and finds its executable.
pub fn build(target: &TargetArgs, verbose: bool) -> anyhow::Result<Built> {
    let metadata = MetadataCommand::new()
        .current_dir(project_root())
        .no_deps()
        .exec()
        .context("`cargo metadata` failed: is this run inside the heapprobe workspace?")?;
    let packages = selected_packages(&metadata, target.package.as_deref())?;

    if let Some(name) = &target.test {
        if let Some(package) = owner(&packages, "test", name)? {
            let exes = cargo_build(Some(package), &["test", "--no-run", "--test", name], verbose)?;
            return single(exes, format!("test {name}"), &target.args);
        }
        return build_test_filter(target, name, verbose);
    }
    // (cargo flags, the target kind and name to check first, label)
    let (flags, check, label): (Vec<&str>, Option<(&str, &str)>, String) = if let Some(name) = &target.bin {
        (vec!["build", "--bin", name], Some(("bin", name)), format!("bin {name}"))
    } else if let Some(name) = &target.example {
        (vec!["build", "--example", name], Some(("example", name)), format!("example {name}"))
    } else if let Some(name) = &target.bench {
        (vec!["test", "--no-run", "--bench", name], Some(("bench", name)), format!("bench {name}"))
    } else if target.lib {
        (vec!["test", "--no-run", "--lib"], None, String::from("lib tests"))
    } else {
        bail!("choose what to trace: --test NAME, --bin NAME, --example NAME, --bench NAME, --lib or --pid PID");
    };
    let mut package = target.package.as_deref();
    if let Some((kind, name)) = check {
        package = owner(&packages, kind, name)?;
        if package.is_none() {
            let names = packages
                .iter()
                .flat_map(|p| &p.targets)
                .filter(|t| t.kind.iter().any(|k| k.to_string() == kind))
                .map(|t| t.name.as_str());
            bail!("no {kind} target named {name:?}{}", closest(name, names));
        }
    }
    let exes = cargo_build(package, &flags, verbose)?;
    single(exes, label, &target.args)
}

/// `--test NAME` where NAME is not a test target: find the test binaries
/// that contain a test with that name and run it alone, exactly. Fails
/// before recording when nothing matches (the harness would exit 0).
fn build_test_filter(target: &TargetArgs, name: &str, verbose: bool) -> anyhow::Result<Built> {
    let exes =
        cargo_build(Some(target.package.as_deref().unwrap_or(WORKSPACE)), &["test", "--no-run", "--tests"], verbose)?;
    let mut matches = Vec::new();
    let mut all = Vec::new();
    for exe in &exes {
        for test in list_tests(exe)? {
            if test == name || test.rsplit("::").next() == Some(name) {
                matches.push((exe.clone(), test.clone()));
            }
            all.push(test);
        }
    }
    match matches.len() {
        0 => bail!(
            "no test target and no test function named {name:?}{}",
            closest(name, all.iter().map(|t| t.rsplit("::").next().unwrap_or(t)))
        ),
        1 => {
            let (exe, test) = matches.remove(0);
            let mut args = vec![test.clone(), String::from("--exact")];
            args.extend(target.args.iter().cloned());
            Ok(Built { exe, args, label: format!("test {test}") })
        }
        _ => bail!(
            "{name:?} names {} tests; pick one with its full path: {}",
            matches.len(),
            matches.iter().map(|(e, t)| format!("{t} (in {})", e.display())).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The names of the tests in a libtest binary.
fn list_tests(exe: &PathBuf) -> anyhow::Result<Vec<String>> {
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

fn selected_packages<'m>(metadata: &'m Metadata, spec: Option<&str>) -> anyhow::Result<Vec<&'m Package>> {
    let members: Vec<&Package> = metadata.workspace_packages();
    let Some(spec) = spec else { return Ok(members) };
    let chosen: Vec<&Package> = members.iter().copied().filter(|p| p.name.as_str() == spec).collect();
    if chosen.is_empty() {
        bail!("no workspace package named {spec:?}{}", closest(spec, members.iter().map(|p| p.name.as_str())));
    }
    Ok(chosen)
}

/// The package that has a `kind` target named `name`, if one does.
fn owner<'m>(packages: &[&'m Package], kind: &str, name: &str) -> anyhow::Result<Option<&'m str>> {
    let owners: Vec<&str> = packages.iter().filter(|p| has_target(p, kind, name)).map(|p| p.name.as_str()).collect();
    match owners.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => bail!("packages {} all have a {kind} target named {name:?}: pick one with -p", many.join(", ")),
    }
}

fn has_target(package: &Package, kind: &str, name: &str) -> bool {
    package.targets.iter().any(|t| t.name == name && t.kind.iter().any(|k| k.to_string() == kind))
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

/// `cargo_build`'s package argument for "every workspace member".
const WORKSPACE: &str = "--workspace";

/// Runs `cargo FLAGS --profile trace --message-format=json-render-diagnostics`
/// and returns the executables it produced, in order.
fn cargo_build(package: Option<&str>, flags: &[&str], verbose: bool) -> anyhow::Result<Vec<PathBuf>> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(project_root())
        .args(flags)
        .args(["--profile", PROFILE, "--message-format=json-render-diagnostics"])
        .env("RUSTFLAGS", rustflags())
        .stdout(Stdio::piped());
    match package {
        Some(WORKSPACE) => cmd.arg("--workspace"),
        Some(package) => cmd.args(["--package", package]),
        None => &mut cmd,
    };
    if verbose {
        eprintln!("$ {}", display(&cmd));
    }
    let mut child = cmd.spawn().with_context(|| format!("failed to run {:?}", display(&cmd)))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut exes = Vec::new();
    for message in Message::parse_stream(BufReader::new(stdout)) {
        if let Message::CompilerArtifact(artifact) = message.context("reading cargo's JSON messages")? {
            if let Some(exe) = artifact.executable {
                exes.push(exe.into_std_path_buf());
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{:?} exited with {status}; see cargo's errors above", display(&cmd));
    }
    Ok(exes)
}

fn rustflags() -> String {
    match std::env::var("RUSTFLAGS") {
        Ok(flags) if !flags.trim().is_empty() => format!("{flags} {TRACE_RUSTFLAGS}"),
        _ => String::from(TRACE_RUSTFLAGS),
    }
}

fn single(mut exes: Vec<PathBuf>, label: String, args: &[String]) -> anyhow::Result<Built> {
    match exes.len() {
        1 => Ok(Built { exe: exes.remove(0), args: args.to_vec(), label }),
        0 => bail!("cargo built no executable for {label}"),
        n => bail!(
            "{label} built {n} executables ({}); narrow it with -p/--package",
            exes.iter().map(|e| e.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}
