//! Allocation snapshots (feature `profile`): a test records what a block of
//! code allocates, exactly, in a text file under the crate's
//! `tests/snapshots/`, and fails when a later run allocates more.
//!
//! ```no_run
//! use heapprobe::{assert_allocation_snapshot, Heapprobe};
//! use std::alloc::System;
//!
//! #[global_allocator]
//! static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
//!
//! # fn parse_config(_: &str) -> Vec<String> { Vec::new() }
//! #[test]
//! fn parsing_allocates_no_more_than_before() {
//!     let config = assert_allocation_snapshot!(GLOBAL, "parse_config", { parse_config("a = 1") });
//!     assert!(config.is_empty());
//! }
//! ```
//!
//! The first run writes `tests/snapshots/parse_config.allocs`: the block's
//! exact [`Stats`] (every counter of a measured scope) and its exact
//! profile, every stack that allocated with its bytes and allocations. The
//! file is plain text, deterministic and meant to be committed and reviewed
//! like code: no addresses, no thread ids, stacks cut below the snapshot's
//! closure (the test harness and the thread start are left out) and above
//! the allocation site (heapprobe's frames, the allocator shims and the
//! standard library's plumbing under the method the code called, such as
//! `Vec::with_capacity`), closure names spelled one way (`{{closure}}`).
//! Stacks depend on the build: compare snapshots made with the same
//! toolchain and profile (`cargo test`'s debug build, say).
//!
//! Later runs compare with it:
//!
//! - **more allocations or bytes allocated** than the stored figures plus
//!   the test's [`Tolerance`] (none by default): the test fails, printing
//!   both figures, the diff summary of the stacks (which grew, which are
//!   new, which are gone; [`crate::diff`]), and writing the differential
//!   flame graph to `target/heapprobe-reports/NAME.diff.svg` and the new
//!   snapshot to `target/heapprobe-reports/NAME.allocs.new`;
//! - **fewer**: the test passes and says, on stderr (not captured by the
//!   test harness), that the snapshot can be lowered;
//! - growth within the tolerance, or other changes (a different peak, the
//!   same bytes from other stacks): the test passes and says so.
//!
//! `HEAPPROBE_UPDATE=1 cargo test` writes every snapshot anew (review the
//! change with `git diff`). `HEAPPROBE_UPDATE=0` never writes one: a missing
//! snapshot fails. Unset, a missing snapshot is created, except with `CI`
//! set to `true` or `1`, where it fails (a snapshot written on a CI machine
//! would be lost, and the test would check nothing). [`Snapshot::update`]
//! sets this in code.
//!
//! Each snapshot name belongs to one check: a second check of the same
//! file in the same run of the tests (in any test binary) fails, naming
//! both places, rather than overwrite the first with `HEAPPROBE_UPDATE=1`.
//!
//! Only the calling thread's allocations are recorded, as in
//! [`Heapprobe::measure`](crate::Heapprobe::measure), and every one of them
//! ([`Heapprobe::profile`](crate::Heapprobe::profile), rate 1); the
//! snapshot checks that the profile's sums equal the exact counters.

mod claims;

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::panic::Location;
use std::path::{Path, PathBuf};

use crate::diff::snapshot_file::{counters, side, Stacks, Stored, FIRST_LINE, STACKS_COMMENT};
use crate::diff::{self, Diff, Side};
use crate::profile::{Profile, View};
use crate::stats::Stats;
use crate::testing::Instrumented;

/// The name of the function every snapshot's closure runs under: stacks
/// are cut below it.
const MARKER: &str = "heapprobe::snapshot::scope_marker";

/// Snapshot files' extension.
pub const EXTENSION: &str = "allocs";

/// How much a snapshot's allocations or bytes may grow before the test
/// fails. The default, [`Tolerance::NONE`], allows no growth at all.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance(Allowance);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Allowance {
    None,
    Absolute(u64),
    Percent(f64),
}

impl Tolerance {
    /// No growth: any increase fails.
    pub const NONE: Tolerance = Tolerance(Allowance::None);

    /// Up to `n` more (allocations, or bytes).
    pub const fn absolute(n: u64) -> Tolerance {
        Tolerance(Allowance::Absolute(n))
    }

    /// Up to `percent` % more than the stored figure (rounded down).
    ///
    /// # Panics
    /// If `percent` is negative or not a number.
    #[track_caller]
    pub fn percent(percent: f64) -> Tolerance {
        assert!(percent >= 0.0, "heapprobe: Tolerance::percent({percent}): give a percentage of 0 or more");
        Tolerance(Allowance::Percent(percent))
    }

    /// The largest figure that passes when `stored` was recorded.
    pub fn limit(self, stored: u64) -> u64 {
        match self.0 {
            Allowance::None => stored,
            Allowance::Absolute(n) => stored.saturating_add(n),
            Allowance::Percent(p) => {
                let limit = (stored as f64 * (1.0 + p / 100.0)).floor();
                if limit >= u64::MAX as f64 {
                    u64::MAX
                } else {
                    (limit as u64).max(stored)
                }
            }
        }
    }
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance::NONE
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Allowance::None => f.write_str("none"),
            Allowance::Absolute(n) => write!(f, "+{n}"),
            Allowance::Percent(p) => write!(f, "+{p}%"),
        }
    }
}

/// When a snapshot file is written.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// A missing snapshot is created (a failure when `CI` is `true` or
    /// `1`); an existing one is only compared with. `HEAPPROBE_UPDATE`
    /// unset or empty.
    Auto,
    /// Every snapshot is written anew: `HEAPPROBE_UPDATE=1` (or `yes`,
    /// `true`, `always`).
    Always,
    /// No snapshot is written; a missing one fails: `HEAPPROBE_UPDATE=0`
    /// (or `no`, `false`, `never`).
    Never,
}

impl Update {
    /// What `HEAPPROBE_UPDATE` asks for (and `CI`, for [`Auto`](Self::Auto)).
    ///
    /// # Errors
    /// A message when `HEAPPROBE_UPDATE` holds anything else.
    pub fn from_env() -> Result<Update, String> {
        let value = std::env::var("HEAPPROBE_UPDATE").unwrap_or_default();
        match value.trim().to_ascii_lowercase().as_str() {
            "" => Ok(Update::Auto),
            "1" | "yes" | "true" | "always" => Ok(Update::Always),
            "0" | "no" | "false" | "never" => Ok(Update::Never),
            _ => Err(format!("HEAPPROBE_UPDATE={value:?}: use 1 to write snapshots, 0 never to, or leave it unset")),
        }
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1"))
}

/// What a snapshot check found.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// There was no snapshot; it was written. Passes.
    Created,
    /// The snapshot is exactly what was recorded. Passes.
    Matched,
    /// Fewer allocations or bytes than stored, none more: passes, and says
    /// that the snapshot can be lowered.
    Smaller,
    /// More, within the tolerance: passes, and says so.
    GrewWithinTolerance,
    /// The same allocations and bytes, something else changed (the peak,
    /// the stacks): passes, and says so.
    Differs,
    /// `HEAPPROBE_UPDATE=1` (or [`Update::Always`]) wrote it anew. Passes.
    Updated,
    /// More allocations or bytes than stored plus the tolerance. Fails.
    Grew,
    /// There is no snapshot and none may be written (CI, or
    /// `HEAPPROBE_UPDATE=0`). Fails.
    Missing,
    /// The stored snapshot cannot be read, the recording is not exact, the
    /// file cannot be written, or another check of the same run (in this
    /// test binary or another) uses the same snapshot name. Fails.
    Error,
}

impl Outcome {
    /// Whether the test passes.
    pub fn passed(self) -> bool {
        !matches!(self, Outcome::Grew | Outcome::Missing | Outcome::Error)
    }
}

/// The result of [`Snapshot::run`]: what was found, and the message that
/// [`Snapshot::check`] prints (on a pass) or panics with (on a failure).
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct Verdict {
    /// What was found.
    pub outcome: Outcome,
    /// The report; empty when the snapshot matched.
    pub message: String,
    /// The snapshot file.
    pub path: PathBuf,
    /// The exact counters of the block.
    pub stats: Stats,
    /// The differential flame graph, when one was written (a failure).
    pub diff_svg: Option<PathBuf>,
}

/// An allocation snapshot check, built by
/// [`assert_allocation_snapshot!`](crate::assert_allocation_snapshot) or in code:
///
/// ```no_run
/// # use heapprobe::Heapprobe;
/// # use std::alloc::System;
/// # #[global_allocator]
/// # static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
/// use heapprobe::snapshot::{Snapshot, Tolerance};
///
/// let n = Snapshot::new(env!("CARGO_MANIFEST_DIR"), "sum_of_squares")
///     .bytes(Tolerance::percent(10.0))
///     .check(&GLOBAL, || (1..=10u64).map(|i| i * i).collect::<Vec<_>>().iter().sum::<u64>());
/// assert_eq!(n, 385);
/// ```
#[must_use = "nothing is checked until `.check(...)` or `.run(...)`"]
#[derive(Clone, Debug)]
pub struct Snapshot {
    dir: PathBuf,
    name: String,
    allocations: Tolerance,
    bytes: Tolerance,
    update: Option<Update>,
}

impl Snapshot {
    /// The snapshot `name` of the crate whose manifest directory is
    /// `manifest_dir` (pass `env!("CARGO_MANIFEST_DIR")`, which the macro
    /// does): `manifest_dir/tests/snapshots/NAME.allocs`.
    ///
    /// # Panics
    /// If `name` is empty or holds anything but ASCII letters, digits, `_`,
    /// `-` and `.` (it names a file), or starts with `.`.
    #[track_caller]
    pub fn new(manifest_dir: impl AsRef<Path>, name: &str) -> Snapshot {
        Snapshot::in_dir(manifest_dir.as_ref().join("tests").join("snapshots"), name)
    }

    /// The snapshot `name` in the directory `dir`.
    ///
    /// # Panics
    /// As [`new`](Self::new).
    #[track_caller]
    pub fn in_dir(dir: impl Into<PathBuf>, name: &str) -> Snapshot {
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        assert!(
            valid,
            "heapprobe: snapshot name {name:?}: use ASCII letters, digits, `_`, `-` and `.` (it names a file), \
             not starting with `.`"
        );
        Snapshot {
            dir: dir.into(),
            name: name.to_owned(),
            allocations: Tolerance::NONE,
            bytes: Tolerance::NONE,
            update: None,
        }
    }

    /// How much both allocations and bytes may grow. Default: none.
    pub fn tolerance(mut self, tolerance: Tolerance) -> Self {
        self.allocations = tolerance;
        self.bytes = tolerance;
        self
    }

    /// How much the number of allocations may grow. Default: none.
    pub fn allocations(mut self, tolerance: Tolerance) -> Self {
        self.allocations = tolerance;
        self
    }

    /// How much the bytes allocated may grow. Default: none.
    pub fn bytes(mut self, tolerance: Tolerance) -> Self {
        self.bytes = tolerance;
        self
    }

    /// When to write the snapshot. Default: what `HEAPPROBE_UPDATE` says.
    pub fn update(mut self, update: Update) -> Self {
        self.update = Some(update);
        self
    }

    /// The snapshot file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.{EXTENSION}", self.name))
    }

    /// Runs `f` on this thread, recording its allocations exactly, and
    /// compares them with the snapshot; returns `f`'s result. A pass that
    /// has something to say (created, smaller, within the tolerance,
    /// updated) says it on stderr, outside the test harness's capture.
    ///
    /// # Panics
    /// When the check fails (see [`Outcome`]), with the report.
    #[track_caller]
    pub fn check<M: Instrumented + ?Sized, R>(self, alloc: &M, f: impl FnOnce() -> R) -> R {
        let location = Location::caller();
        let (result, verdict) = self.run_at(alloc, f, location);
        if !verdict.outcome.passed() {
            panic!("{}", verdict.message);
        }
        if !verdict.message.is_empty() {
            // Straight to the file descriptor: the harness captures only
            // the print macros, and a hint nobody sees is no hint.
            let _ = std::io::stderr().write_all(verdict.message.as_bytes());
        }
        result
    }

    /// As [`check`](Self::check), without panicking or printing: the
    /// [`Verdict`] says what happened.
    #[track_caller]
    pub fn run<M: Instrumented + ?Sized, R>(self, alloc: &M, f: impl FnOnce() -> R) -> (R, Verdict) {
        self.run_at(alloc, f, Location::caller())
    }

    fn run_at<M: Instrumented + ?Sized, R>(
        self,
        alloc: &M,
        f: impl FnOnce() -> R,
        location: &Location<'_>,
    ) -> (R, Verdict) {
        let path = self.path();
        let update = self.update.map_or_else(Update::from_env, Ok);
        let stored = match std::fs::read_to_string(&path) {
            Ok(text) => Some(Ok(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(e)),
        };
        let (result, profile) = alloc.heapprobe().profile(|| scope_marker(f));
        let stats = profile.exact().copied().unwrap_or_default();
        let mut verdict = Verdict { outcome: Outcome::Matched, message: String::new(), path, stats, diff_svg: None };
        let mut say = |outcome: Outcome, message: String| {
            verdict.outcome = outcome;
            verdict.message = message;
        };
        let display = display_path(&verdict.path);
        let head = format!("heapprobe: allocation snapshot `{}` ({display}) at {location}", self.name);
        if let Err(e) = claims::claim(&verdict.path, location) {
            say(Outcome::Error, format!("{head}: {e}\n"));
            return (result, verdict);
        }
        let update = match update {
            Ok(update) => update,
            Err(e) => {
                say(Outcome::Error, format!("{head}: {e}\n"));
                return (result, verdict);
            }
        };
        let record = match Record::from_profile(&self.name, stats, &profile) {
            Ok(record) => record,
            Err(e) => {
                say(Outcome::Error, format!("{head}: {e}\n"));
                return (result, verdict);
            }
        };
        let text = record.render();
        let stored = match stored {
            None if update == Update::Never || (update == Update::Auto && in_ci()) => {
                let why = if update == Update::Never { "HEAPPROBE_UPDATE=0" } else { "CI is set" };
                say(
                    Outcome::Missing,
                    format!(
                        "{head}: there is no snapshot, and {why}, so none is written: run the test locally, \
                         then review and commit {display}\n  recorded: {}\n",
                        figures(&stats)
                    ),
                );
                return (result, verdict);
            }
            None => {
                let (outcome, message) = match write_file(&verdict.path, &text) {
                    Ok(()) => {
                        (Outcome::Created, format!("{head}: created ({}): review and commit it\n", figures(&stats)))
                    }
                    Err(e) => (Outcome::Error, format!("{head}: cannot write it: {e}\n")),
                };
                say(outcome, message);
                return (result, verdict);
            }
            Some(Err(e)) => {
                say(Outcome::Error, format!("{head}: cannot read it: {e}\n"));
                return (result, verdict);
            }
            Some(Ok(stored)) => stored,
        };
        if update == Update::Always {
            if stored != text {
                let (outcome, message) = match write_file(&verdict.path, &text) {
                    Ok(()) => (Outcome::Updated, format!("{head}: updated ({})\n", figures(&stats))),
                    Err(e) => (Outcome::Error, format!("{head}: cannot write it: {e}\n")),
                };
                say(outcome, message);
            }
            return (result, verdict);
        }
        if stored == text {
            return (result, verdict);
        }
        let old = match Stored::parse(&stored, &display) {
            Ok(old) => old,
            Err(e) => {
                say(
                    Outcome::Error,
                    format!("{head}: the stored snapshot is not one this heapprobe reads: {e}; rewrite it with HEAPPROBE_UPDATE=1\n"),
                );
                return (result, verdict);
            }
        };
        let (new_allocations, new_bytes) = (stats.allocations as u64, stats.bytes_allocated as u64);
        let rows = [
            ("allocations", old.allocations, new_allocations, self.allocations),
            ("bytes_allocated", old.bytes, new_bytes, self.bytes),
        ];
        let grew_beyond = rows.iter().any(|(_, old, new, tolerance)| *new > tolerance.limit(*old));
        let mut report = String::new();
        for (name, old, new, tolerance) in rows {
            let mark = match new.cmp(&old) {
                _ if new > tolerance.limit(old) => "   GREW beyond the tolerance",
                std::cmp::Ordering::Greater => "   grew, within the tolerance",
                std::cmp::Ordering::Less => "   smaller",
                std::cmp::Ordering::Equal => "",
            };
            let _ = writeln!(
                report,
                "  {name}: {old} -> {new} ({:+}; tolerance {tolerance}){mark}",
                new as i128 - old as i128
            );
        }
        let smaller = new_allocations < old.allocations || new_bytes < old.bytes;
        let grew = new_allocations > old.allocations || new_bytes > old.bytes;
        if !grew_beyond {
            let (outcome, what) = if smaller && !grew {
                (Outcome::Smaller, "allocates less than its snapshot: lower the snapshot")
            } else if grew {
                (Outcome::GrewWithinTolerance, "grew within its tolerance: to record the new figures")
            } else {
                (Outcome::Differs, "has the same totals but differs (the peak, the stacks, …): to record it")
            };
            say(
                outcome,
                format!("{head} {what}, run the tests with HEAPPROBE_UPDATE=1 and commit {display}\n{report}"),
            );
            return (result, verdict);
        }
        let _ = writeln!(report, "the stacks, stored -> now:");
        let out_dir = crate::profile::target_dir().join(crate::profile::REPORTS_DIR);
        let new_path = out_dir.join(format!("{}.{EXTENSION}.new", self.name));
        let svg_path = out_dir.join(format!("{}.diff.svg", self.name));
        match (old.side(&display), record.side(&format!("{} (now)", self.name))) {
            (Ok(before), Ok(after)) => {
                let options = diff::Options {
                    title: format!("heapprobe: allocation snapshot {}, stored -> now", self.name),
                    ..Default::default()
                };
                match Diff::new(before, after, &options) {
                    Ok(diff) => {
                        for line in diff.summary().lines() {
                            let _ = writeln!(report, "  {line}");
                        }
                        let written = write_file(&svg_path, &diff.svg());
                        match written {
                            Ok(()) => {
                                let _ = writeln!(report, "differential flame graph: {}", svg_path.display());
                                verdict.diff_svg = Some(svg_path.clone());
                            }
                            Err(e) => {
                                let _ = writeln!(report, "cannot write {}: {e}", svg_path.display());
                            }
                        }
                    }
                    Err(e) => {
                        let _ = writeln!(report, "  (no diff: {e})");
                    }
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                let _ = writeln!(report, "  (no diff of the stacks: {e})");
            }
        }
        match write_file(&new_path, &text) {
            Ok(()) => {
                let _ = writeln!(report, "the new snapshot: {}", new_path.display());
            }
            Err(e) => {
                let _ = writeln!(report, "cannot write {}: {e}", new_path.display());
            }
        }
        let _ = write!(
            report,
            "if the growth is intended, accept it: HEAPPROBE_UPDATE=1 cargo test, then review and commit {display}"
        );
        verdict.outcome = Outcome::Grew;
        verdict.message = format!("{head} grew:\n{report}");
        (result, verdict)
    }
}

/// The function every snapshot's closure runs under; stacks are cut below
/// it. Never inlined, and not a tail call (`black_box` after), so that it
/// is a frame of every stack the closure allocates in.
#[inline(never)]
fn scope_marker<R>(f: impl FnOnce() -> R) -> R {
    std::hint::black_box(f())
}

/// A path relative to the current directory when under it (`cargo test`
/// runs tests in the package's directory), for short messages.
fn display_path(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(|p| p.display().to_string()))
        .unwrap_or_else(|| path.display().to_string())
}

/// `N allocations, B bytes allocated`.
fn figures(stats: &Stats) -> String {
    format!("{} allocations, {} bytes allocated", stats.allocations, stats.bytes_allocated)
}

/// Writes `text` to `path` through a temporary file and a rename, so that
/// a reader never sees half a snapshot.
fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{name}.tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// What a run recorded.
struct Record {
    name: String,
    stats: Stats,
    /// The stacks, or why there are none.
    stacks: Result<Stacks, String>,
}

impl Record {
    fn from_profile(name: &str, stats: Stats, profile: &Profile) -> Result<Record, String> {
        if let Some(note) = &profile.note {
            // The profiler could not record (an unsupported platform, say):
            // the counters alone.
            return Ok(Record { name: name.to_owned(), stats, stacks: Err(note.clone()) });
        }
        let (stacks_dropped, sites_dropped, _) = profile.drops();
        if stacks_dropped + sites_dropped > 0 {
            return Err(format!(
                "the profiler's tables were full ({stacks_dropped} stacks, {sites_dropped} sites dropped): the \
                 snapshot would not be exact; snapshot a smaller block\n{profile}"
            ));
        }
        let mut stacks = Stacks::new();
        for (view, slot) in [(View::AllocatedBytes, 0), (View::AllocatedObjects, 1)] {
            for line in profile.folded(view).lines() {
                let (stack, weight) =
                    line.rsplit_once(' ').ok_or_else(|| format!("unexpected folded line {line:?}"))?;
                let weight: u64 = weight.parse().map_err(|_| format!("unexpected folded line {line:?}"))?;
                let entry = stacks.entry(normalize_stack(stack)).or_default();
                if slot == 0 {
                    entry.0 += weight;
                } else {
                    entry.1 += weight;
                }
            }
        }
        // The profile is exact at rate 1: its sums are the counters.
        let (bytes, count) = stacks.values().fold((0u64, 0u64), |(b, c), (x, y)| (b + x, c + y));
        if bytes != stats.bytes_allocated as u64 || count != stats.allocations as u64 {
            return Err(format!(
                "the recorded stacks sum to {bytes} bytes in {count} allocations, the exact counters say {} in {}: \
                 the snapshot would not be exact (please report this)\n{profile}",
                stats.bytes_allocated, stats.allocations
            ));
        }
        Ok(Record { name: name.to_owned(), stats, stacks: Ok(stacks) })
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{FIRST_LINE}: review changes like code; HEAPPROBE_UPDATE=1 cargo test rewrites it");
        let _ = writeln!(out, "name: {}", self.name);
        for (key, value) in counters(&self.stats) {
            let _ = writeln!(out, "{key}: {value}");
        }
        match &self.stacks {
            Ok(stacks) => {
                let _ = writeln!(out, "{STACKS_COMMENT}");
                let _ = writeln!(out, "stacks:");
                for (stack, (bytes, count)) in stacks {
                    let _ = writeln!(out, "{stack} {bytes} {count}");
                }
            }
            Err(why) => {
                let _ = writeln!(out, "stacks: not recorded ({})", why.replace('\n', " "));
            }
        }
        out
    }

    fn side(&self, origin: &str) -> Result<Side, diff::Error> {
        match &self.stacks {
            Ok(stacks) => side(stacks, origin),
            Err(why) => Err(diff::Error::Empty { origin: format!("{origin} (stacks not recorded: {why})") }),
        }
    }
}

/// A profile's stack (root first) as a snapshot stores it: cut below the
/// snapshot's closure and above the allocation site, with names that do
/// not depend on the machine or the mangling scheme.
pub(crate) fn normalize_stack(stack: &str) -> String {
    let frames: Vec<&str> = stack.split(';').collect();
    let start = frames.iter().rposition(|f| f.starts_with(MARKER)).map_or(0, |i| i + 1);
    let frames: Vec<String> = frames[start..].iter().map(|f| normalize_frame(f)).collect();
    if frames.is_empty() {
        return String::from("[unknown]");
    }
    diff::trim_allocator_frames(&frames.join(";"))
}

/// One frame's name without what varies between machines and mangling
/// schemes: `{closure#0}` (v0) is `{{closure}}` (legacy), `{shim:vtable#0}`
/// is `{{vtable.shim}}`, and an unresolved address is `[unknown]`.
fn normalize_frame(frame: &str) -> String {
    let hex = frame.strip_prefix("0x").is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if hex {
        return String::from("[unknown]");
    }
    let mut out = String::with_capacity(frame.len());
    let mut rest = frame;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let replaced =
            [("{closure#", "{{closure}}"), ("{shim:vtable#", "{{vtable.shim}}")].iter().find_map(|(prefix, with)| {
                let digits = tail.strip_prefix(prefix)?;
                let end = digits.find('}')?;
                digits[..end].bytes().all(|b| b.is_ascii_digit()).then(|| (*with, prefix.len() + end + 1))
            });
        match replaced {
            Some((with, len)) => {
                out.push_str(with);
                rest = &tail[len..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Runs a block, recording what it allocates, and compares that with the
/// allocation snapshot `NAME` of the calling crate
/// (`tests/snapshots/NAME.allocs`, created on the first run); evaluates to
/// the block's value. Fails when the block allocates more (allocations or
/// bytes) than the snapshot plus the tolerance (none by default), printing
/// the diff of the stacks and writing its flame graph under
/// `target/heapprobe-reports/`. See [`snapshot`](crate::snapshot) (feature `profile`).
///
/// `assert_allocation_snapshot!(ALLOCATOR, "NAME", { code } [, option = value]...)`,
/// where each option is a [`Snapshot`](crate::snapshot::Snapshot) builder
/// method: `tolerance`, `allocations` or `bytes` with a
/// [`Tolerance`](crate::snapshot::Tolerance), or `update` with an
/// [`Update`](crate::snapshot::Update).
///
/// ```no_run
/// use heapprobe::snapshot::Tolerance;
/// use heapprobe::{assert_allocation_snapshot, Heapprobe};
/// use std::alloc::System;
///
/// #[global_allocator]
/// static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
///
/// let words = assert_allocation_snapshot!(GLOBAL, "split_words", {
///     "a b c".split(' ').map(str::to_owned).collect::<Vec<_>>()
/// });
/// assert_eq!(words.len(), 3);
/// // Up to 10% more bytes may pass; any more allocations fail.
/// assert_allocation_snapshot!(GLOBAL, "join_words", { words.join(",") }, bytes = Tolerance::percent(10.0));
/// ```
#[macro_export]
macro_rules! assert_allocation_snapshot {
    ($alloc:expr, $name:expr, $body:block $(, $option:ident = $value:expr)* $(,)?) => {
        $crate::snapshot::Snapshot::new(env!("CARGO_MANIFEST_DIR"), $name)
            $(.$option($value))*
            .check(&$alloc, || $body)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_are_cut_at_the_marker_and_the_allocation_site_and_spelled_one_way() {
        let stack = "clone3;start_thread;test::run_test::{closure#1};my::test;heapprobe::profile::<impl heapprobe::alloc::Heapprobe<A>>::profile;heapprobe::snapshot::scope_marker;my::test::{{closure}};my::work::{closure#0};alloc::vec::from_elem;<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem;alloc::raw_vec::RawVecInner<A>::try_allocate_in;alloc::alloc::alloc;__rustc::__rust_alloc;<heapprobe::alloc::Heapprobe<A> as core::alloc::global::GlobalAlloc>::alloc;heapprobe::alloc::Heapprobe<A>::alloc_slow";
        assert_eq!(normalize_stack(stack), "my::test::{{closure}};my::work::{{closure}};alloc::vec::from_elem");
        assert_eq!(
            normalize_stack("0x55d0c0ffee;my::f;0x7f00;alloc::alloc::alloc"),
            "[unknown];my::f;[unknown];alloc::alloc::alloc"
        );
        assert_eq!(
            normalize_frame("<F as FnOnce>::call_once{shim:vtable#0}"),
            "<F as FnOnce>::call_once{{vtable.shim}}"
        );
        assert_eq!(normalize_frame("a::{closure#12}::{closure#0}"), "a::{{closure}}::{{closure}}");
        assert_eq!(normalize_frame("a::<impl {x}>"), "a::<impl {x}>");
    }

    #[test]
    fn tolerances_allow_what_they_say() {
        assert_eq!(Tolerance::NONE.limit(100), 100);
        assert_eq!(Tolerance::absolute(5).limit(100), 105);
        assert_eq!(Tolerance::percent(10.0).limit(100), 110);
        assert_eq!(Tolerance::percent(10.0).limit(15), 16);
        assert_eq!(Tolerance::percent(0.0).limit(7), 7);
        assert_eq!(Tolerance::absolute(1).limit(u64::MAX), u64::MAX);
    }

    #[test]
    fn a_rendered_record_parses_back() {
        let stats = Stats { allocations: 3, bytes_allocated: 300, ..Stats::default() };
        let mut stacks = Stacks::new();
        stacks.insert(String::from("t::{{closure}};t::f"), (200, 2));
        stacks.insert(String::from("t::{{closure}};<T as alloc::Foo>::g"), (100, 1));
        let record = Record { name: String::from("n"), stats, stacks: Ok(stacks.clone()) };
        let text = record.render();
        let stored = Stored::parse(&text, "n.allocs").unwrap();
        assert_eq!((stored.allocations, stored.bytes, stored.stacks), (3, 300, Some(stacks)));
        let err = |t: &str| Stored::parse(t, "x.allocs").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err("hello\n").contains("not a heapprobe allocation snapshot"));
        assert!(err(&text.replace("peak: 0", "peak: lots")).contains("not an integer"));
        assert!(err(&text.replace("peak: 0", "speed: 0")).contains("unknown key"));
        assert!(err(&text.replace("t::f 200 2", "t::f 200")).contains("not `STACK BYTES ALLOCATIONS`"));
        assert!(err(&text.replace("allocations: 3\n", "")).contains("missing"));
    }
}
