//! `fork()` while the profiler runs: handlers registered with
//! `pthread_atfork` (as jemalloc and tcmalloc do for their own locks), so
//! that a child never inherits a lock that a thread of the parent held at
//! the fork, which no thread of the child would ever release.
//!
//! The prepare handler takes every lock the profiler, its switch and its
//! readers use, outermost first, in the order they nest (each lock below
//! is only ever taken, if at all, while holding the ones above it, never
//! the other way round):
//!
//! 1. `env::OUT`, where the exit profile goes (held only to read or set it);
//! 2. `sampler::CALIBRATING` (a calibration may allocate, and so sample);
//! 3. `symbols::RESOLVING` and `symbols::CACHE`, the symboliser and its
//!    cache (naming allocates, and so may sample);
//! 4. the global profile's spin lock (`sampler::GLOBAL`), which the sampled
//!    path takes: once it is held, no other thread is inside an update of
//!    the tables, so the child inherits them whole;
//! 5. `alloc::SWITCH`, which `divert_all` takes under the global lock.
//!
//! The parent handler releases them; so does the child's, whose only thread
//! is the one that forked and holds them all. While it holds them the
//! forking thread is marked inside the profiler, so that an allocation made
//! meanwhile (another library's fork handler) skips the hooks instead of
//! waiting for a lock its own thread holds.
//!
//! The rest of the profiler's state is atomics and per-thread cells, which
//! a fork copies whole. In the child, the forking thread registers again
//! under its new thread id, and its stack bounds were read before the fork
//! (in the child it is the process's first thread, which
//! `sys::stack_bounds` would take for the main thread). The fast unwinder's
//! rule table (`eh.rs`) is lock-free: an entry a thread was filling at the
//! fork stays marked busy in the child and is never used, which only costs
//! that return address a recomputation each time. Threads of the parent
//! that had a scoped profile open keep the profiler's hooks on in the child
//! (their scopes never close there): a child pays the diverted path, no more.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering::*};

/// Registers the handlers once per process. Runs outside the allocator
/// path (glibc's `pthread_atfork` may use libc's own `malloc`).
pub(crate) fn register() {
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    if REGISTERED.swap(true, AcqRel) {
        return;
    }
    #[cfg(unix)]
    // SAFETY: the handlers are `extern "C" fn()` that live for the whole
    // program; they take and release the locks as described above.
    unsafe {
        libc::pthread_atfork(Some(prepare), Some(parent), Some(child));
    }
}

/// What the forking thread holds between `prepare` and `parent`/`child`.
struct Held {
    #[cfg(all(target_os = "linux", heapprobe_profiler))]
    _out: super::env::OutGuard,
    _calibrating: super::sampler::CalibratingGuard,
    _resolving: super::symbols::ResolvingGuard,
    _cache: super::symbols::CacheGuard,
    _switch: crate::alloc::SwitchGuard,
    /// The thread's busy mark before `prepare`.
    busy: bool,
}

struct HeldCell(UnsafeCell<Option<Held>>);

// SAFETY: only the forking thread touches the cell, and only while it holds
// every lock above: `prepare` fills it after taking them, and `parent` or
// `child` empties it before releasing them, so two forks never overlap here.
unsafe impl Sync for HeldCell {}

static HELD: HeldCell = HeldCell(UnsafeCell::new(None));

extern "C" fn prepare() {
    let busy = super::sampler::fork_enter();
    #[cfg(all(target_os = "linux", heapprobe_profiler))]
    let out = super::env::lock_out();
    let calibrating = super::sampler::lock_calibrating();
    let resolving = super::symbols::lock_resolving();
    let cache = super::symbols::lock_cache();
    super::sampler::GLOBAL.lock_for_fork();
    let switch = crate::alloc::lock_switch();
    let held = Held {
        #[cfg(all(target_os = "linux", heapprobe_profiler))]
        _out: out,
        _calibrating: calibrating,
        _resolving: resolving,
        _cache: cache,
        _switch: switch,
        busy,
    };
    // SAFETY: see `HeldCell`: this thread now holds every lock.
    unsafe { *HELD.0.get() = Some(held) };
}

/// Releases everything `prepare` took; `in_child` also resets what belongs
/// to the parent's identity.
fn release(in_child: bool) {
    // SAFETY: see `HeldCell`: this thread still holds every lock.
    let Some(held) = (unsafe { (*HELD.0.get()).take() }) else { return };
    // SAFETY: `prepare` took the global lock on this thread, and nothing
    // released it since.
    unsafe { super::sampler::GLOBAL.unlock_after_fork() };
    super::sampler::fork_leave(held.busy, in_child);
    drop(held);
}

extern "C" fn parent() {
    release(false);
}

extern "C" fn child() {
    release(true);
}
