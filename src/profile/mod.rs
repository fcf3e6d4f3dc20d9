//! The in-process sampling heap profiler: allocation flame graphs without
//! root, perf or a rebuild.
//!
//! Off by default, and then nearly free: one compare on the allocator's
//! fast path (an allocation's cumulative bytes against the slot's next
//! sample, `u64::MAX` while off). While it runs, allocations stay on the
//! fast path, and frees and reallocs are diverted through a check of the
//! free filter, on the fast path's branch for diverted calls. Once started ([`Heapprobe::start_profiler`], or the
//! [`HEAPPROBE_PROFILE`](ENV_VAR) environment variable), each thread counts
//! down the bytes it allocates and takes a sample when an exponentially
//! distributed gap of mean [`Options::rate`] runs out (512 KiB by default,
//! as in Go and tcmalloc; `rate = 1` records every allocation). A sample
//! captures the stack and is un-biased on its own before it is added up: a
//! sample of `size` bytes stands for `1 / (1 - e^(-size/rate))` allocations
//! of that size. Sampled blocks are tracked by address, so frees are
//! matched and the in-use and peak views stay right.
//!
//! Stacks are walked by frame pointers when the build keeps them (a
//! calibration walk at start measures it), else unwound from `.eh_frame`
//! (feature `profile`), so a plain `cargo test` gets full stacks too.
//! Everything the profiler stores lives in memory it maps itself, sized
//! up front; full tables count their drops.
//!
//! ```
//! use heapprobe::profile::{Options, View};
//! use heapprobe::Heapprobe;
//! use std::alloc::System;
//!
//! #[global_allocator]
//! static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
//!
//! # fn main() {
//! let mut options = Options::default();
//! options.rate = 1; // every allocation, exactly
//! if GLOBAL.start_profiler(options).is_ok() {
//!     let v: Vec<Vec<u8>> = (0..10).map(|_| vec![0u8; 1000]).collect();
//!     let profile = GLOBAL.stop_profiler().unwrap();
//!     assert!(profile.total(View::AllocatedBytes) >= 10_000.0);
//!     println!("{profile}"); // the summary, with the self-check line
//!     let _folded = profile.folded(View::InUseBytes);
//!     drop(v);
//! }
//! # }
//! ```
//!
//! A scoped profile records every allocation of the calling thread while a
//! closure runs, exactly, and gives its flame graph; the allocation
//! assertions use it to show where a failing scope allocated:
//!
//! ```
//! # use heapprobe::Heapprobe;
//! # use std::alloc::System;
//! # #[global_allocator]
//! # static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
//! use heapprobe::profile::View;
//! let (_, profile) = GLOBAL.profile(|| vec![0u8; 4096]);
//! if profile.samples() > 0 {
//!     assert_eq!(profile.total(View::AllocatedBytes), 4096.0);
//! }
//! ```

#[cfg(all(feature = "profile", target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
mod eh;
mod env;
mod fork;
#[cfg_attr(not(feature = "server"), allow(dead_code))]
pub(crate) mod interrupt;
mod options;
#[cfg(feature = "pprof")]
mod pprof;
mod report;
mod sampler;
mod stack;
mod store;
mod symbols;
mod sys;

use core::fmt;

pub use self::options::{Options, ParseError, Unwinder, DEFAULT_RATE, ENV_VAR};
pub use self::report::{Profile, View};
use crate::alloc::Heapprobe;
use crate::stats::Stats;

pub(crate) use self::fork::register as fork_register;
pub(crate) use self::sampler::active;
pub use self::symbols::printable;

/// The hooks `src/alloc.rs` calls: on its slow path while [`active`] is
/// true, `on_*`; on its fast path, `slot_crossed` when an allocation passes
/// the slot's next sample, the inline `free_due` on a diverted free or
/// realloc, and the sampled work when one of them says so.
/// Frees the caches that naming a profile's addresses filled (the profile
/// routes call it after each request).
#[cfg_attr(not(feature = "server"), allow(dead_code))]
pub(crate) fn release_symbols() {
    symbols::release();
}

pub(crate) mod hooks {
    pub(crate) use super::sampler::{
        detach, fast_sampled_alloc, fast_sampled_realloc, free_due, freed, on_alloc, on_dealloc, on_realloc,
        on_realloc_start, slot_crossed, slot_defer,
    };
}

/// Why the profiler could not start.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProfileError {
    /// The profiler runs on Linux x86_64 and aarch64 only.
    Unavailable,
    /// The global profiler is already running: stop it first.
    AlreadyRunning,
    /// The kernel refused to map the profiler's tables (`mmap` failed).
    Map,
    /// The options need a cargo feature this build does not have.
    NeedsFeature(&'static str),
    /// `HEAPPROBE_ASSERT_PROFILE=0` turned the assertions' recording off.
    OptedOut,
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileError::Unavailable => write!(
                f,
                "the heapprobe profiler is unavailable on this platform (it needs Linux on x86_64 or aarch64); \
                 counters, scopes and probes still work"
            ),
            ProfileError::AlreadyRunning => {
                write!(f, "the heapprobe profiler is already running: stop_profiler() first")
            }
            ProfileError::Map => write!(f, "the heapprobe profiler could not map memory for its tables (mmap failed)"),
            ProfileError::OptedOut => write!(f, "HEAPPROBE_ASSERT_PROFILE=0 turned recording off"),
            ProfileError::NeedsFeature(feature) => {
                write!(f, "this needs heapprobe's `{feature}` cargo feature: features = [\"{feature}\"]")
            }
        }
    }
}

impl std::error::Error for ProfileError {}

/// Whether the global profiler is running.
pub fn is_running() -> bool {
    sampler::running()
}

impl<A> Heapprobe<A> {
    /// Starts the process-wide sampling profiler with `options`.
    ///
    /// Its profile's self-check compares against this instance's exact
    /// counters ([`stats`](Self::stats)) since now. Starting again after
    /// [`stop_profiler`](Self::stop_profiler) begins a fresh profile.
    ///
    /// # Errors
    /// If it is already running, the platform is not supported, the options
    /// need a feature this build lacks, or memory could not be mapped.
    pub fn start_profiler(&self, options: Options) -> Result<(), ProfileError> {
        sampler::start(&options, sampler::Source::of(self), self.stats())
    }

    /// Stops the profiler and returns its final profile (`None` if it was
    /// not running).
    ///
    /// Sessions have no owner: this stops whichever session runs, whoever
    /// started it (a test, the endpoint's `/profiler/stop`,
    /// `HEAPPROBE_PROFILE`). Each session is stopped once: when several
    /// threads stop at the same time, one gets its profile and the others
    /// `None` (or the profile of a session started after it), so the
    /// profiles handed out are exactly the sessions that ran.
    pub fn stop_profiler(&self) -> Option<Profile> {
        loop {
            if !sampler::running() {
                return None;
            }
            let session = sampler::session();
            let profile = self.profile_snapshot();
            if sampler::stop_session(Some(session)) {
                return profile;
            }
            // That session ended (or another began) meanwhile: look again.
        }
    }

    /// The running profiler's profile so far (`None` if it never ran).
    /// Blocks freed after this call do not change the returned profile.
    pub fn profile_snapshot(&self) -> Option<Profile> {
        global_snapshot(Some(&|| self.stats()))
    }

    /// Makes the profile's current in-use state its peak: the peak view
    /// starts over (a new stage of the program begins).
    pub fn reset_profile_peak(&self) {
        sampler::GLOBAL.with(|g| {
            if let Some(store) = g.store.as_mut() {
                store.reset_peak();
            }
        });
    }

    /// Runs `f` and returns its result with a profile of every allocator
    /// call the calling thread made meanwhile, exactly (rate 1), beside the
    /// scope's measured [`Stats`] ([`Profile::exact`]).
    ///
    /// Blocks the scope allocated and freed on this thread are matched;
    /// frees by other threads are not seen by the scope. The profile's peak
    /// view is the scope's live heap at its own high-water mark. Where the
    /// profiler is unavailable `f` still runs, and the profile is empty and
    /// says why.
    pub fn profile<R>(&self, f: impl FnOnce() -> R) -> (R, Profile) {
        let ((result, stats), store) = sampler::with_scope(|| self.measure(f));
        let profile = match store {
            Ok(store) => {
                let mut profile = Profile::from_store(report::Kind::Scope, &store, &[scope_thread(), scope_thread()]);
                profile.exact = Some(stats);
                profile
            }
            Err(e) => Profile::empty(e.to_string(), Some(stats)),
        };
        (result, profile)
    }

    /// [`measure`](Self::measure), also recording the scope's stacks (for
    /// the allocation assertions: the profile is only built if one fails).
    /// Records only with the `profile` feature (else the stacks would be
    /// bare addresses), and not when `HEAPPROBE_ASSERT_PROFILE=0`.
    pub(crate) fn measure_recorded<R>(&self, f: impl FnOnce() -> R) -> (R, Stats, Recording) {
        if !cfg!(feature = "profile") {
            let (result, stats) = self.measure(f);
            return (result, stats, Recording(Err(ProfileError::NeedsFeature("profile"))));
        }
        if assertions_opted_out() {
            let (result, stats) = self.measure(f);
            return (result, stats, Recording(Err(ProfileError::OptedOut)));
        }
        let ((result, stats), store) = sampler::with_scope(|| self.measure(f));
        (result, stats, Recording(store))
    }
}

/// The global profile so far, checked against `exact_now()` (the source's
/// counters now) minus those at the start. The counters are read under the
/// profiler's lock, just before its tables are copied (the copy's own
/// allocations skip the profiler, and come after the read): with no other
/// thread inside an allocator call at that instant, the two agree exactly.
fn global_snapshot(exact_now: Option<&dyn Fn() -> Stats>) -> Option<Profile> {
    let skipped = sampler::SKIPPED.load(core::sync::atomic::Ordering::Relaxed);
    let mut profile = sampler::GLOBAL.with(|g| {
        let store = g.store.as_ref()?;
        let now = exact_now.map(|read| read());
        let mut profile = Profile::from_store(report::Kind::Global, store, &g.threads[..=g.threads_used]);
        profile.exact = g.baseline.zip(now).map(|(base, now)| now - base);
        profile.exact_current = now.map(|s| s.current);
        profile.seconds = g.started.map(|t| t.elapsed().as_secs_f64());
        profile.max_depth = g.options.as_ref().map_or(0, |o| o.max_depth);
        profile.session = sampler::session();
        Some(profile)
    })?;
    profile.skipped = skipped;
    Some(profile)
}

/// The heap summary's top live stacks (`crate::summary::LIVE_STACKS`,
/// registered when the global profiler starts): the global profile's
/// in-use view. The summary's figures are read before this runs, so what
/// it allocates (the copy of the tables, symbols) does not change them.
fn write_live_stacks(out: &mut dyn fmt::Write) -> fmt::Result {
    // Naming and formatting the stacks is heapprobe's own work: never in
    // the profile, which still runs (and is written after this).
    sampler::unrecorded(|| write_live_stacks_unrecorded(out))
}

fn write_live_stacks_unrecorded(out: &mut dyn fmt::Write) -> fmt::Result {
    let Some(profile) = global_snapshot(None) else { return Ok(()) };
    let stopped = if sampler::running() { "" } else { " (as of when the profiler stopped)" };
    let text = profile.live_stacks_text("heapprobe: ", 5, 8);
    match text.split_once('\n') {
        Some((head, rest)) => {
            out.write_str(head.trim_end_matches(':'))?;
            out.write_str(stopped)?;
            out.write_str(":\n")?;
            out.write_str(rest)
        }
        None => out.write_str(&text),
    }
}

/// Makes the heap summary at exit print the top live stacks.
pub(crate) fn register_live_stacks() {
    let writer: crate::summary::LiveStacks = write_live_stacks;
    crate::summary::LIVE_STACKS.store(writer as usize, core::sync::atomic::Ordering::Release);
}

/// `HEAPPROBE_ASSERT_PROFILE=0` turns the assertions' recording off. Read
/// with `getenv`, which does not allocate: checking must not change an
/// enclosing measured scope.
fn assertions_opted_out() -> bool {
    #[cfg(unix)]
    {
        // SAFETY: the name is NUL-terminated; the result is only read
        // while no other code of ours changes the environment.
        let value = unsafe { libc::getenv(c"HEAPPROBE_ASSERT_PROFILE".as_ptr()) };
        // SAFETY: a non-null getenv result is a NUL-terminated string.
        !value.is_null() && unsafe { core::ffi::CStr::from_ptr(value) }.to_bytes() == b"0"
    }
    #[cfg(not(unix))]
    false
}

/// The directory of the target directory where failing assertions write
/// their profiles: not `heapprobe/`, which is `cargo heapprobe trace`'s
/// build profile's.
pub(crate) const REPORTS_DIR: &str = "heapprobe-reports";

/// A scope's recorded tables, kept unread until a check fails (support for
/// the allocation assertions; not a stable API).
#[doc(hidden)]
pub struct Recording(Result<store::Store, ProfileError>);

impl Recording {
    /// Writes the scope's flame graph and folded stacks to
    /// `target/heapprobe-reports/<test>.*` (a directory of their own, not
    /// the traced builds' `target/heapprobe/`) and says where (the lines of
    /// a failure report).
    pub(crate) fn write_for_failure(
        self,
        test: &str,
        stats: &Stats,
        location: &core::panic::Location<'_>,
        leaks: bool,
    ) -> String {
        use fmt::Write as _;
        let mut out = String::new();
        if let Err(ProfileError::NeedsFeature(feature)) = &self.0 {
            let _ = writeln!(
                out,
                "for the scope's flame graph in the report, without perf or root: enable heapprobe's `{feature}` \
                 feature (in [dev-dependencies]: heapprobe = {{ ..., features = [\"{feature}\"] }})"
            );
            return out;
        }
        if let Err(ProfileError::OptedOut) = &self.0 {
            return out;
        }
        let profile = self.into_profile(stats);
        if let Some(note) = &profile.note {
            let _ = writeln!(out, "the scope's allocations were not recorded: {note}");
            return out;
        }
        let dir = target_dir().join(REPORTS_DIR);
        let name: String = test
            .replace("::", "-")
            .chars()
            .map(|c| if c.is_alphanumeric() || "-_.".contains(c) { c } else { '_' })
            .collect();
        let mut views = vec![(View::AllocatedBytes, String::new())];
        if leaks {
            views.push((View::InUseBytes, String::from(".inuse")));
        }
        let _ = writeln!(
            out,
            "where the scope allocated, recorded in process (every allocation; stacks by {}):",
            profile.unwinder()
        );
        for (view, suffix) in views {
            let folded = dir.join(format!("{name}{suffix}.folded"));
            let written = std::fs::create_dir_all(&dir).and_then(|()| profile.write_folded(&folded, view));
            match written {
                Ok(()) => {
                    let _ = writeln!(out, "  folded stacks ({}): {}", view.name(), folded.display());
                }
                Err(e) => {
                    let _ = writeln!(out, "  cannot write {}: {e}", folded.display());
                }
            }
            #[cfg(feature = "profile")]
            {
                let svg = dir.join(format!("{name}{suffix}.svg"));
                let title = format!("heapprobe: {test}, {} of the scope at {location}", view.name());
                match profile.write_flamegraph(&svg, view, &title) {
                    Ok(()) => {
                        let _ = writeln!(out, "  flame graph ({}): {}", view.name(), svg.display());
                    }
                    Err(e) => {
                        let _ = writeln!(out, "  cannot write {}: {e}", svg.display());
                    }
                }
            }
        }
        #[cfg(not(feature = "profile"))]
        let _ = location;
        let _ = write!(out, "{}", profile.top_sites_text(View::AllocatedBytes, 5));
        out
    }

    fn into_profile(self, stats: &Stats) -> Profile {
        match self.0 {
            Ok(store) => {
                let mut profile = Profile::from_store(report::Kind::Scope, &store, &[scope_thread(), scope_thread()]);
                profile.exact = Some(*stats);
                profile
            }
            Err(e) => Profile::empty(e.to_string(), Some(*stats)),
        }
    }
}

/// The target directory of the running test: `CARGO_TARGET_DIR` if set,
/// else the nearest ancestor of the executable that cargo marked with
/// `CACHEDIR.TAG` (`target/debug/deps/NAME-HASH` lives under it, with or
/// without a `--target` triple), else `target`.
pub(crate) fn target_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return dir.into();
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.ancestors().skip(1).find(|d| d.join("CACHEDIR.TAG").is_file()) {
            return dir.to_path_buf();
        }
        if let Some(dir) = exe.parent().and_then(|deps| deps.parent()).and_then(|profile| profile.parent()) {
            return dir.to_path_buf();
        }
    }
    std::path::PathBuf::from("target")
}

fn scope_thread() -> sampler::ThreadInfo {
    sampler::ThreadInfo { tid: sys::gettid(), name: sys::thread_name() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hint of a build without the `profile` feature reads as one
    /// sentence (a lost line continuation once put 18 spaces in it).
    #[test]
    fn the_feature_hint_is_one_sentence() {
        let recording = Recording(Err(ProfileError::NeedsFeature("profile")));
        let text = recording.write_for_failure("t", &Stats::default(), core::panic::Location::caller(), false);
        assert!(text.contains("enable heapprobe's `profile` feature (in [dev-dependencies]: "), "{text}");
        assert!(!text.contains("  "), "{text}");
    }
}
