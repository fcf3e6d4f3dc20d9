//! Names for return addresses, resolved off the hot path, in process.
//!
//! With the `profile` feature: `backtrace`'s resolver (gimli's addr2line
//! over the binary's DWARF, else its symbol table), inlined frames
//! expanded, Rust names demangled without their hash. Without it: the
//! addresses in hex.

/// The frames at `addr`, innermost first. `addr` is a return address
/// (except for a stack's first frame when `exact`), so the call instruction
/// is looked up one byte before it.
pub(crate) fn resolve(addr: usize, exact: bool) -> Vec<String> {
    let lookup = if exact { addr } else { addr.saturating_sub(1) };
    #[cfg(feature = "profile")]
    {
        let mut names = Vec::new();
        backtrace::resolve(lookup as *mut core::ffi::c_void, |symbol| {
            if let Some(name) = symbol.name() {
                names.push(format!("{name:#}"));
            }
        });
        if !names.is_empty() {
            return names;
        }
    }
    let _ = lookup;
    vec![format!("{addr:#x}")]
}

/// Where a folded stack (root first) allocated: its innermost frame that is
/// not allocator machinery, then up to two callers, as `site <- caller <- caller`.
pub(crate) fn site_of(stack: &str) -> String {
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
    let frames: Vec<&str> = stack.rsplit(';').collect();
    let site = frames.iter().position(|f| !MACHINERY.iter().any(|m| f.starts_with(m))).unwrap_or(0);
    frames[site..].iter().take(3).copied().collect::<Vec<_>>().join(" <- ")
}
