//! Binding a thread to its slot, and releasing the slot when the thread exits.
//!
//! The thread-local is const-initialised and has no destructor, so touching
//! it never registers a TLS destructor (which could allocate). Thread exit is
//! seen through a pthread key destructor instead: `pthread_key_create` and
//! `pthread_setspecific` never call Rust's global allocator.

use core::cell::Cell;
use core::ptr;
use core::sync::atomic::Ordering::Relaxed;

use crate::tally::Slot;

/// `ThreadState::fast` of a thread that must take the slow path: not bound,
/// or inside a measured scope. No instance key is ever 2 (keys are aligned
/// addresses), and unlike 0 it cannot match the key of an instance that has
/// not bound a thread yet.
pub(crate) const SLOW: usize = 2;

/// The bit set in `ThreadState::fast` while the thread is inside an
/// allocator call of any `Heapprobe` (a call that arrives then is
/// re-entrant). Instance addresses are aligned, so the bit is free; setting
/// and clearing it needs no register.
pub(crate) const BUSY: usize = 1;

/// `ThreadState::instance` before the thread's first call.
pub(crate) const UNBOUND: usize = 0;
/// `ThreadState::instance` after the thread's slot was released at exit.
pub(crate) const EXITED: usize = 1;
/// `ThreadState::instance` when no slot could be had (the system refused to
/// map memory): calls are counted through shared atomics.
pub(crate) const NO_SLOT: usize = 2;

/// What a thread knows about itself.
pub(crate) struct ThreadState {
    /// The address of the `Heapprobe` whose fast path this thread takes:
    /// the thread is bound to it and has no measured scope open. Else
    /// [`SLOW`]; the [`BUSY`] bit is set on top while a slow-path call is
    /// inside the inner allocator. Each call compares it with the instance's
    /// key, which is the instance's address unless every thread is being
    /// diverted to the slow path (`Heapprobe::divert`): one compare decides.
    ///
    /// Invariant: when this equals an instance's key, `instance` holds the
    /// instance's address and `slot` the thread's live slot in it.
    pub(crate) fast: Cell<usize>,
    /// The address of the `Heapprobe` this thread's slot belongs to, or
    /// [`UNBOUND`], [`EXITED`], [`NO_SLOT`].
    pub(crate) instance: Cell<usize>,
    /// The thread's slot (null unless bound).
    pub(crate) slot: Cell<*const Slot>,
}

std::thread_local! {
    static THREAD: ThreadState = const {
        ThreadState { fast: Cell::new(SLOW), instance: Cell::new(UNBOUND), slot: Cell::new(ptr::null()) }
    };
}

/// The calling thread's state. `None` only if the thread-local is gone
/// (never, for a const thread-local without destructor; handled anyway).
#[inline(always)]
pub(crate) fn current() -> Option<*const ThreadState> {
    THREAD.try_with(|t| t as *const ThreadState).ok()
}

/// What [`ThreadState::fast`] should hold for a thread that is not inside
/// an allocator call: the address of the instance it is bound to if it may
/// take that instance's fast path (no measured scope open), else [`SLOW`].
pub(crate) fn fast_value(state: &ThreadState) -> usize {
    let instance = state.instance.get();
    if instance <= NO_SLOT {
        return SLOW;
    }
    // SAFETY: the thread is bound (`instance` is an address), so `slot` is
    // its live slot.
    let slot = unsafe { &*state.slot.get() };
    if slot.scope_depth.load(Relaxed) == 0 {
        instance
    } else {
        SLOW
    }
}

/// The pthread key destructor: runs when a thread that owns a slot exits.
#[cfg(unix)]
pub(crate) unsafe extern "C" fn release(slot: *mut libc::c_void) {
    if let Some(state) = current() {
        // SAFETY: `current` returns this thread's live thread-local.
        let state = unsafe { &*state };
        if state.slot.get() == slot as *const Slot {
            state.fast.set(SLOW);
            state.instance.set(EXITED);
            state.slot.set(ptr::null());
        }
    }
    // SAFETY: the value registered with the key is the address of a slot in
    // a block mapped by heapprobe, which is never unmapped.
    let slot = unsafe { &*(slot as *const Slot) };
    slot.release();
}
