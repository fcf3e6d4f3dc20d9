//! Binding a thread to its slot, and releasing the slot when the thread exits.
//!
//! The thread-local is const-initialised and has no destructor, so touching
//! it never registers a TLS destructor (which could allocate). Thread exit is
//! seen through a pthread key destructor instead: `pthread_key_create` and
//! `pthread_setspecific` never call Rust's global allocator.

use core::cell::Cell;
use core::sync::atomic::Ordering::Release;

use crate::tally::{Slot, FREE};

/// `ThreadState::slot` before the thread's first call.
pub(crate) const UNBOUND: usize = 0;
/// `ThreadState::slot` after the thread's slot was released at exit.
pub(crate) const EXITED: usize = 1;

/// What a thread knows about itself.
pub(crate) struct ThreadState {
    /// Address of the `Heapprobe` this thread's slot belongs to.
    pub(crate) instance: Cell<usize>,
    /// Address of the slot, or [`UNBOUND`] / [`EXITED`].
    pub(crate) slot: Cell<usize>,
    /// True while this thread is inside a `Heapprobe` call.
    pub(crate) busy: Cell<bool>,
}

std::thread_local! {
    static THREAD: ThreadState = const {
        ThreadState { instance: Cell::new(0), slot: Cell::new(UNBOUND), busy: Cell::new(false) }
    };
}

/// The calling thread's state. `None` only if the thread-local is gone
/// (never, for a const thread-local without destructor; handled anyway).
#[inline(always)]
pub(crate) fn current() -> Option<*const ThreadState> {
    THREAD.try_with(|t| t as *const ThreadState).ok()
}

/// The pthread key destructor: runs when a thread that owns a slot exits.
#[cfg(unix)]
pub(crate) unsafe extern "C" fn release(slot: *mut libc::c_void) {
    if let Some(state) = current() {
        // SAFETY: `current` returns this thread's live thread-local.
        unsafe { (*state).slot.set(EXITED) };
    }
    // SAFETY: the value registered with the key is the address of a slot
    // inside a `Heapprobe`, which is a static and therefore outlives threads.
    let slot = unsafe { &*(slot as *const Slot) };
    slot.state.store(FREE, Release);
}
