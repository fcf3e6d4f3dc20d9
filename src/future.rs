//! Measured futures: a measured scope around every poll, on whichever thread
//! polls, summed over the future's life.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

use crate::alloc::Heapprobe;
use crate::stats::Stats;

/// The future returned by [`Heapprobe::measure_future`]: it resolves to the
/// wrapped future's output and the [`Stats`] of all its polls.
///
/// Each poll of the wrapped future runs inside [`Heapprobe::measure`] on the
/// thread that polls it, so the attribution follows the future from worker to
/// worker; nothing is shared between threads and nothing is locked.
#[must_use = "futures do nothing unless polled"]
pub struct MeasuredFuture<'a, A, F> {
    alloc: &'a Heapprobe<A>,
    /// Structurally pinned; set to `None` (dropped in place) inside the last
    /// poll's scope, so what the future frees when it ends is counted.
    inner: Option<F>,
    /// The polls' counters added up; `current` and `peak` are kept below.
    total: Stats,
    /// Net bytes since the first poll (signed: may free older memory).
    net: i64,
    /// Highest `net` reached inside any poll.
    peak: i64,
}

impl<A> Heapprobe<A> {
    /// Wraps `fut` so that every poll of it is measured, on whatever thread
    /// polls it; the wrapper resolves to `fut`'s output and the sum.
    ///
    /// What is counted: every allocator call the polling thread makes while
    /// it is inside `fut`'s `poll`, including what `fut` frees when it
    /// completes (it is dropped inside the last poll) and whatever the
    /// runtime does synchronously inside that poll on the future's behalf:
    /// cloning a waker, registering a timer or an I/O resource, or tokio's
    /// per-worker list of deferred wakers (a `Vec` that allocates the first
    /// time `yield_now` or the cooperative budget uses it on a worker thread).
    ///
    /// What is not counted: anything that runs between polls, such as the
    /// runtime scheduling or waking the task; tasks `fut` spawns (they are
    /// polled on their own; only the spawn itself counts); other threads
    /// freeing memory `fut` allocated (so `current` stays up), and the
    /// dropping of `fut` if it is cancelled before it completes.
    ///
    /// `current` is what the polls left allocated (never below 0) and `peak`
    /// the highest that got inside any poll, both relative to the first poll
    /// and exact across threads: each poll's own peak is exact, and is added
    /// to the net of the polls before it.
    ///
    /// ```
    /// # use heapprobe::Heapprobe;
    /// # use std::alloc::System;
    /// # #[global_allocator]
    /// # static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// let (len, stats) = runtime.block_on(GLOBAL.measure_future(async {
    ///     let v = vec![1u8; 100];
    ///     v.len()
    /// }));
    /// assert_eq!(len, 100);
    /// assert_eq!((stats.allocations, stats.deallocations, stats.peak), (1, 1, 100));
    /// ```
    ///
    /// # Panics
    /// A poll panics, before polling `fut`, where [`Heapprobe::measure`]
    /// would: on a thread counted by another `Heapprobe` instance, or if no
    /// memory could be mapped for its counters. If `fut` panics, that
    /// poll's scope ends and the panic continues.
    pub fn measure_future<F: Future>(&self, fut: F) -> MeasuredFuture<'_, A, F> {
        MeasuredFuture { alloc: self, inner: Some(fut), total: Stats::default(), net: 0, peak: 0 }
    }
}

impl<A, F: Future> Future for MeasuredFuture<'_, A, F> {
    type Output = (F::Output, Stats);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `inner` is the only structurally pinned field. It is never
        // moved out: it is only polled through `Pin` and dropped in place by
        // `Pin::set`. `MeasuredFuture` has no `Drop` impl, and it is `Unpin`
        // only when `F` is (the auto impl, through `Option<F>`).
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: see above; `this.inner` is pinned because `self` was.
        let mut inner = unsafe { Pin::new_unchecked(&mut this.inner) };
        let (poll, stats) = this.alloc.measure(|| {
            let Some(fut) = inner.as_mut().as_pin_mut() else {
                panic!("heapprobe::MeasuredFuture polled after it completed");
            };
            let poll = fut.poll(cx);
            if poll.is_ready() {
                inner.set(None);
            }
            poll
        });
        let start = this.net;
        this.peak = this.peak.max(start.wrapping_add(stats.peak as i64));
        this.net = start.wrapping_add((stats.bytes_allocated as i64).wrapping_sub(stats.bytes_deallocated as i64));
        this.total = this.total + stats;
        match poll {
            Poll::Pending => Poll::Pending,
            Poll::Ready(output) => {
                let mut total = this.total;
                total.current = this.net.max(0) as usize;
                total.peak = this.peak.max(0) as usize;
                Poll::Ready((output, total))
            }
        }
    }
}
