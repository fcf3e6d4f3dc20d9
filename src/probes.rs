//! USDT probe glue, generated from `probes/heapprobe.d` by `build.rs`.
//!
//! Three backends, chosen by cargo features:
//! - `probe` (default): the `probe` crate's `probe!`, a bare `nop` per site
//!   with the arguments already in registers and no semaphore, so every tracer
//!   (perf, bpftrace, SystemTap) sees the probe without having to switch it on.
//! - `usdt`: the `usdt` crate's semaphore-guarded probes (wins if both are on).
//! - neither: probes are compiled out; the counters work the same.
//!
//! Every argument is a `u64`: an enabled probe never allocates.

#[cfg(feature = "usdt")]
usdt::dtrace_provider!("probes/heapprobe.d");

#[cfg(feature = "usdt")]
macro_rules! fire {
    ($name:ident, $($arg:expr),+) => {
        heapprobe::$name!(|| ($($arg),+))
    };
}

#[cfg(all(feature = "probe", not(feature = "usdt")))]
macro_rules! fire {
    ($name:ident, $($arg:expr),+) => {
        probe::probe!(heapprobe, $name, $($arg),+)
    };
}

#[cfg(not(any(feature = "probe", feature = "usdt")))]
macro_rules! fire {
    ($name:ident, $($arg:expr),+) => {
        let _ = ($($arg),+);
    };
}

include!(concat!(env!("OUT_DIR"), "/probes.rs"));

/// The argument names of `probe`, in order, as `probes/heapprobe.d` gives
/// them (`["ptr", "size", "align"]` for `alloc`); empty for an unknown name.
pub fn arg_names(probe: &str) -> &'static [&'static str] {
    PROBES.iter().find(|(name, _)| *name == probe).map_or(&[], |(_, args)| args)
}

/// The probe backend compiled into this build: `"probe"`, `"usdt"` or `"none"`.
pub const BACKEND: &str = if cfg!(feature = "usdt") {
    "usdt"
} else if cfg!(feature = "probe") {
    "probe"
} else {
    "none"
};
