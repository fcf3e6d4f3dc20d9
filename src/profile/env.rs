//! Starting the profiler from the environment, without a rebuild:
//! `HEAPPROBE_PROFILE=rate=524288,out=/tmp/heap ./service` starts it before
//! `main` and writes the profile when the process exits (`exit`, or a
//! return from `main`; not `_exit` or a fatal signal).

#[cfg(all(target_os = "linux", heapprobe_profiler))]
mod imp {
    use std::sync::Mutex;

    use super::super::{global_snapshot, sampler, Options, View, ENV_VAR};
    use crate::stats::Stats;

    /// Where the profile goes at exit (`out=`), set by the constructor.
    static OUT: Mutex<Option<String>> = Mutex::new(None);

    /// [`OUT`], held across a `fork()` (`fork.rs`).
    pub(crate) type OutGuard = std::sync::MutexGuard<'static, Option<String>>;

    pub(crate) fn lock_out() -> OutGuard {
        OUT.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs before `main` (an ELF constructor): reads the variable with
    /// `getenv` and starts the profiler if it is set.
    #[used]
    #[link_section = ".init_array"]
    static START: extern "C" fn() = start_from_env;

    extern "C" fn start_from_env() {
        // SAFETY: the name is NUL-terminated; constructors run before any
        // thread of the program could change the environment.
        let value = unsafe { libc::getenv(c"HEAPPROBE_PROFILE".as_ptr()) };
        if value.is_null() {
            return;
        }
        // SAFETY: a non-null getenv result is a NUL-terminated string.
        let text = unsafe { core::ffi::CStr::from_ptr(value) }.to_string_lossy();
        if text.trim() == "0" || text.trim().is_empty() {
            return;
        }
        // Registered before anything allocates, so that it runs after the
        // handlers registered later (atexit runs them in reverse order),
        // such as the heap summary's, which the global allocator registers
        // on its first call when `HEAPPROBE_SUMMARY` asks for it: the
        // summary's figures come before what writing the profile allocates.
        // SAFETY: `write_at_exit` is an `extern "C" fn()` that lives for the
        // whole program.
        unsafe { libc::atexit(write_at_exit) };
        let (options, out) = match Options::parse(&text) {
            Ok(parsed) => parsed,
            Err(e) => {
                eprintln!("heapprobe: {e}; the profiler stays off");
                return;
            }
        };
        // The allocator instance is not known yet: the first sample registers
        // the `#[global_allocator]` as the source of exact counters. Before
        // `main`, its counters are (next to) zero.
        let source = sampler::Source::none();
        if let Err(e) = sampler::start(&options, source, Stats::default()) {
            eprintln!("heapprobe: {ENV_VAR}={text}: {e}");
            return;
        }
        // Copied now that the profiler runs, so that every block this
        // process keeps is in its tables (the live map's sum is the exact
        // current use); the copy made before the start is freed.
        let out = match out {
            Some(out) => out.as_str().to_owned(),
            // SAFETY: getpid has no preconditions.
            None => format!("heapprobe-profile-{}", unsafe { libc::getpid() }),
        };
        *lock_out() = Some(out);
    }

    extern "C" fn write_at_exit() {
        let Some(out) = lock_out().take() else { return };
        // The first sample names the allocator whose exact counters the
        // profile is checked against. Without one, a process with a
        // `Heapprobe` allocator (registered when it bound its first thread)
        // sampled nothing yet, and still gets its (empty) profile; a process
        // that links heapprobe without one (a tool, a build script) says
        // nothing.
        let source = sampler::GLOBAL.with(|g| g.source);
        if source.is_none() && crate::alloc::registered() == 0 {
            return;
        }
        let exact = source.map(|source| move || source.stats());
        let Some(profile) = global_snapshot(exact.as_ref().map(|read| read as &dyn Fn() -> Stats)) else { return };
        sampler::stop();
        let mut written = Vec::new();
        let mut write = |path: String, result: std::io::Result<()>| match result {
            Ok(()) => written.push(path),
            Err(e) => eprintln!("heapprobe: cannot write {path}: {e}"),
        };
        write(format!("{out}.folded"), profile.write_folded(format!("{out}.folded"), View::AllocatedBytes));
        write(format!("{out}.inuse.folded"), profile.write_folded(format!("{out}.inuse.folded"), View::InUseBytes));
        // The allocations per stack, beside the bytes: `cargo heapprobe diff`'s
        // count deltas.
        write(
            format!("{out}.count.folded"),
            profile.write_folded(format!("{out}.count.folded"), View::AllocatedObjects),
        );
        write(format!("{out}.json"), std::fs::write(format!("{out}.json"), profile.live_json()));
        #[cfg(feature = "profile")]
        write(
            format!("{out}.svg"),
            profile.write_flamegraph(format!("{out}.svg"), View::AllocatedBytes, "heapprobe: bytes allocated"),
        );
        #[cfg(feature = "pprof")]
        write(format!("{out}.pb.gz"), profile.write_pprof(format!("{out}.pb.gz")));
        eprintln!("{profile}");
        let samples = match profile.samples() {
            0 => format!("no sample: no thread allocated the {} bytes between two samples", profile.rate()),
            1 => String::from("1 sample"),
            n => format!("{n} samples"),
        };
        if written.is_empty() {
            eprintln!("heapprobe: no profile file written ({samples})");
        } else {
            eprintln!("heapprobe: wrote {} ({samples})", written.join(", "));
        }
    }
}

#[cfg(all(target_os = "linux", heapprobe_profiler))]
pub(crate) use imp::{lock_out, OutGuard};
