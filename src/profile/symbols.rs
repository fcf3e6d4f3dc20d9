//! Names for return addresses, resolved off the hot path, in process.
//!
//! With the `profile` feature: `backtrace`'s resolver (gimli's addr2line
//! over the binary's DWARF, else its symbol table), inlined frames
//! expanded, Rust names demangled without their hash. Without it: the
//! addresses in hex.

use std::sync::{Mutex, MutexGuard};

/// One function at an address (several when calls were inlined).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) name: String,
    pub(crate) file: Option<String>,
    pub(crate) line: u32,
}

/// [`resolve`], remembered until [`release`]: a profile names each
/// address once however many stacks hold it, and the profile routes
/// release the names at the end of each request (`export`'s worker), so
/// that reading a profile keeps no heap (issue 21). Taken only by threads
/// reading a profile, never on the allocator path.
pub(crate) fn resolve_cached(addr: usize) -> Vec<Frame> {
    if let Some(frames) = lock_cache().as_ref().and_then(|c| c.get(&addr)) {
        return frames.clone();
    }
    // Resolved without the lock: two readers may both name an address.
    let frames = resolve(addr);
    lock_cache().get_or_insert_with(Cache::new).insert(addr, frames.clone());
    frames
}

type Cache = std::collections::HashMap<usize, Vec<Frame>>;

/// [`resolve_cached`]'s names.
static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

/// Held while `backtrace` names an address: its own lock and caches must
/// not be held by another thread when the process forks (`fork.rs`), and
/// only this lock can be taken around a `fork()`.
static RESOLVING: Mutex<()> = Mutex::new(());

/// [`CACHE`], held across a `fork()` (`fork.rs`).
pub(crate) type CacheGuard = MutexGuard<'static, Option<Cache>>;
/// [`RESOLVING`], held across a `fork()` (`fork.rs`).
pub(crate) type ResolvingGuard = MutexGuard<'static, ()>;

pub(crate) fn lock_cache() -> CacheGuard {
    CACHE.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn lock_resolving() -> ResolvingGuard {
    RESOLVING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Frees what naming addresses keeps: [`resolve_cached`]'s names, and the
/// `backtrace` crate's global cache (the parsed DWARF of up to four loaded
/// objects, tens of MiB for a large binary, which it otherwise keeps for
/// the life of the process). Under [`RESOLVING`], as every use of
/// `backtrace`'s caches is.
pub(crate) fn release() {
    drop(lock_cache().take());
    #[cfg(feature = "profile")]
    {
        let _resolving = lock_resolving();
        backtrace::clear_symbol_cache();
    }
}

/// The frames at `addr`, innermost first. `addr` is a return address, so
/// the call instruction is looked up one byte before it.
pub(crate) fn resolve(addr: usize) -> Vec<Frame> {
    let lookup = addr.saturating_sub(1);
    #[cfg(feature = "profile")]
    {
        let mut frames = Vec::new();
        let _resolving = lock_resolving();
        backtrace::resolve(lookup as *mut core::ffi::c_void, |symbol| {
            if let Some(name) = symbol.name() {
                frames.push(Frame {
                    name: printable(&format!("{name:#}")).into_owned(),
                    file: symbol.filename().map(|f| printable(&f.display().to_string()).into_owned()),
                    line: symbol.lineno().unwrap_or(0),
                });
            }
        });
        if !frames.is_empty() {
            return frames;
        }
    }
    let _ = lookup;
    vec![Frame { name: format!("{addr:#x}"), file: None, line: 0 }]
}

/// `name` with every character that a terminal would act on (C0 and C1
/// controls, DEL: escape sequences) or that XML 1.0 forbids (those, and
/// U+FFFE, U+FFFF) written as a visible `\u{…}` escape: a frame name
/// reaches terminals, folded files, JSON and SVG, and must be safe in all.
pub fn printable(name: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || matches!(c, '\u{fffe}' | '\u{ffff}');
    if !name.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Whether a frame is the profiler's own (or its unwinder's, or the
/// wrapper's cold or slow path that called it): these sit above the
/// allocator's entry (`<heapprobe::alloc::Heapprobe<A> as GlobalAlloc>::alloc`,
/// which stays) in every captured stack and are left out, so that a stack
/// reads the same whichever path sampled it.
///
/// A build with `debug = "line-tables-only"` names functions without their
/// path (`capture`, `realloc_crossed`), so a frame is also the profiler's
/// own when its file is one of heapprobe's sources (as compiled: the path
/// cargo built this crate from): `src/profile/`, or `src/alloc.rs` other
/// than the allocator's entries.
pub(crate) fn is_own(frame: &Frame) -> bool {
    frame.name.starts_with("heapprobe::profile::")
        || frame.name.starts_with("backtrace::")
        || frame.name.starts_with("heapprobe::alloc::Heapprobe<")
        || frame.name.starts_with("heapprobe::alloc::profiler_busy")
        || is_own_source(frame)
}

fn is_own_source(frame: &Frame) -> bool {
    let Some(file) = frame.file.as_deref() else { return false };
    let Some(source) = file.strip_prefix(env!("CARGO_MANIFEST_DIR")).and_then(|rest| rest.strip_prefix('/')) else {
        return false;
    };
    let entry = frame.name.starts_with("<heapprobe::alloc::Heapprobe")
        || matches!(frame.name.as_str(), "alloc" | "dealloc" | "realloc" | "alloc_zeroed");
    source.starts_with("src/profile/") || (source == "src/alloc.rs" && !entry)
}

/// Whether a frame is allocator machinery (the wrapper, Rust's allocation
/// glue, the collections' growth code) rather than the code that asked.
pub(crate) fn is_machinery(frame: &str) -> bool {
    const MACHINERY: [&str; 10] = [
        "heapprobe::",
        "<heapprobe::",
        "__rust",
        "__rdl_",
        "alloc::",
        "<alloc::",
        "core::",
        "<core::",
        "std::alloc::",
        "[truncated]",
    ];
    MACHINERY.iter().any(|m| frame.starts_with(m))
}

/// Where a folded stack (root first) allocated: its innermost frame that is
/// not allocator machinery, then up to two callers, as `site <- caller <- caller`.
pub(crate) fn site_of(stack: &str) -> String {
    let frames: Vec<&str> = stack.rsplit(';').collect();
    let site = frames.iter().position(|f| !is_machinery(f)).unwrap_or(0);
    frames[site..].iter().take(3).copied().collect::<Vec<_>>().join(" <- ")
}

#[cfg(test)]
mod tests {
    use super::{is_own, printable, Frame};

    /// Escape sequences and the characters XML forbids become visible
    /// escapes; everything else, Unicode included, is kept.
    #[test]
    fn names_are_printable_on_a_terminal_and_in_xml() {
        assert_eq!(printable("a\u{1b}[31mred\u{1b}[0m"), "a\\u{1b}[31mred\\u{1b}[0m");
        assert_eq!(printable("x\u{fffe}y\u{ffff}\u{9b}z\u{7f}"), "x\\u{fffe}y\\u{ffff}\\u{9b}z\\u{7f}");
        assert_eq!(printable("<T as Trait>::f — é"), "<T as Trait>::f — é");
        assert!(matches!(printable("plain"), std::borrow::Cow::Borrowed(_)));
    }

    fn frame(name: &str, source: Option<&str>) -> Frame {
        Frame { name: name.to_owned(), file: source.map(|s| format!("{}/{s}", env!("CARGO_MANIFEST_DIR"))), line: 1 }
    }

    /// Names with their paths, and the short names of a line-tables-only
    /// build, both tell the profiler's frames from the allocator's entry
    /// and from the user's.
    #[test]
    fn own_frames_are_known_by_name_or_by_source() {
        assert!(is_own(&frame("heapprobe::profile::sampler::sampled_alloc", None)));
        assert!(is_own(&frame("heapprobe::alloc::Heapprobe<A>::realloc_crossed", None)));
        assert!(is_own(&frame("capture", Some("src/profile/sampler.rs"))));
        assert!(is_own(&frame("realloc_crossed", Some("src/alloc.rs"))));
        assert!(is_own(&frame("profiler_busy", Some("src/alloc.rs"))));
        assert!(!is_own(&frame("realloc", Some("src/alloc.rs"))));
        assert!(!is_own(&frame("<heapprobe::alloc::Heapprobe<A> as core::alloc::global::GlobalAlloc>::alloc", None)));
        assert!(!is_own(&frame("capture", Some("../elsewhere/src/profile/sampler.rs"))));
        assert!(!is_own(&frame("grow", None)));
        let mut user = frame("capture", None);
        user.file = Some("/home/user/app/src/profile/sampler.rs".to_owned());
        assert!(!is_own(&user));
    }
}
