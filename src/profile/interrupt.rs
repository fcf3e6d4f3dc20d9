//! Stopping a profile's rendering part way: a flag (the client went away)
//! and a deadline (the route's time bound), which the rendering loops of
//! [`Profile`](super::Profile) check through [`stopped`]. The server's
//! profile worker sets them around each request ([`within`]); everywhere
//! else nothing is set and [`stopped`] is always `None`, so a profile read
//! from code is rendered whole.
//!
//! A stopped rendering returns early with a partial result, which the
//! caller must discard (it asks [`stopped`] once more at the end).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Why a rendering stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The request's client closed its connection (or the server dropped
    /// the request: the connection's lifetime ran out, or it shut down).
    Gone,
    /// The route's time bound ran out.
    Deadline(Duration),
}

/// One request's switch.
#[derive(Debug)]
pub(crate) struct Interrupt {
    gone: AtomicBool,
    started: Instant,
    limit: Duration,
}

impl Interrupt {
    /// A switch whose deadline is `limit` from now.
    pub(crate) fn new(limit: Duration) -> Self {
        Interrupt { gone: AtomicBool::new(false), started: Instant::now(), limit }
    }

    /// The request was dropped: stop.
    pub(crate) fn cancel(&self) {
        self.gone.store(true, Ordering::Relaxed);
    }

    /// Whether, and why, the work should stop now.
    pub(crate) fn stopped(&self) -> Option<Stop> {
        if self.gone.load(Ordering::Relaxed) {
            Some(Stop::Gone)
        } else if self.started.elapsed() >= self.limit {
            Some(Stop::Deadline(self.limit))
        } else {
            None
        }
    }
}

thread_local! {
    // Const-initialised, no destructor: read from any thread that renders a
    // profile, at exit included.
    static CURRENT: Cell<*const Interrupt> = const { Cell::new(std::ptr::null()) };
}

/// Runs `f` with `interrupt` as this thread's switch.
pub(crate) fn within<R>(interrupt: &Interrupt, f: impl FnOnce() -> R) -> R {
    struct Restore(*const Interrupt);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(interrupt)));
    f()
}

/// Whether this thread's rendering should stop, and why (`None` outside
/// [`within`]).
pub(crate) fn stopped() -> Option<Stop> {
    let current = CURRENT.with(Cell::get);
    // SAFETY: a non-null pointer was set by `within` from a reference that
    // outlives the call of `f` it wraps, and is restored before it returns
    // (or unwinds).
    unsafe { current.as_ref() }.and_then(Interrupt::stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_inside_within() {
        assert_eq!(stopped(), None);
        let interrupt = Interrupt::new(Duration::from_secs(3600));
        within(&interrupt, || {
            assert_eq!(stopped(), None);
            interrupt.cancel();
            assert_eq!(stopped(), Some(Stop::Gone));
        });
        assert_eq!(stopped(), None);
        let expired = Interrupt::new(Duration::ZERO);
        assert_eq!(within(&expired, stopped), Some(Stop::Deadline(Duration::ZERO)));
    }
}
