//! The profile routes' worker: a thread of its own (`heapprobe-profile`),
//! started at the first profile request, that runs the [`Profiler`](super::Profiler)
//! calls one at a time. The thread that answers requests (the standalone
//! server's, or a framework's runtime worker) only awaits a channel, so it
//! goes on answering `/metrics` and `/stats` while a profile is rendered.
//!
//! Each job carries an [`Interrupt`]: dropping the future that awaits the
//! job (the client closed its connection, the connection's lifetime ran
//! out, the server shut down) cancels it, and its deadline is the route's
//! time bound; the profile's rendering loops check both. The symbol caches
//! that naming a profile fills (tens of MiB of parsed DWARF) are kept while
//! requests keep coming, so that a scraper does not parse the binary again
//! every few seconds, and released (`profile::release_symbols`) once no
//! profile request came for [`Endpoints::symbols_kept_for`](super::Endpoints::symbols_kept_for)
//! (at once when that is zero). After each job the worker publishes its own
//! counters, which the server adds to its overhead.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use super::endpoints::Response;
use super::Source;
use crate::profile::interrupt::{self, Interrupt, Stop};
use crate::Stats;

type Job = Box<dyn FnOnce() -> Response + Send>;

struct Task {
    job: Job,
    interrupt: Arc<Interrupt>,
    reply: tokio::sync::oneshot::Sender<Response>,
}

/// One [`Endpoints`](super::Endpoints)' worker.
pub(crate) struct Worker {
    source: &'static dyn Source,
    queue: OnceLock<Mutex<mpsc::Sender<Task>>>,
    /// The worker thread's counters after its last job.
    stats: Arc<Mutex<Option<Stats>>>,
    /// How long the symbol caches are kept after a job, in milliseconds.
    keep_ms: Arc<AtomicU64>,
}

impl Worker {
    pub(crate) fn new(source: &'static dyn Source) -> Self {
        let keep_ms = Arc::new(AtomicU64::new(super::endpoints::SYMBOLS_KEPT_FOR.as_millis() as u64));
        Worker { source, queue: OnceLock::new(), stats: Arc::new(Mutex::new(None)), keep_ms }
    }

    /// Keeps the symbol caches this long after each job (see the module).
    pub(crate) fn keep_symbols_for(&self, keep: Duration) {
        self.keep_ms.store(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX), Relaxed);
    }

    /// The worker thread's counters as of its last job (`None` before its
    /// first, or if it has no counter slot).
    pub(crate) fn stats(&self) -> Option<Stats> {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue(&self) -> Option<mpsc::Sender<Task>> {
        let queue = self.queue.get_or_init(|| {
            let (send, receive) = mpsc::channel::<Task>();
            let (source, stats, keep_ms) = (self.source, Arc::clone(&self.stats), Arc::clone(&self.keep_ms));
            // If the thread cannot start, the receiver is dropped and every
            // send fails: each request then says so.
            let _ = std::thread::Builder::new()
                .name(String::from("heapprobe-profile"))
                .spawn(move || serve(&receive, source, &stats, &keep_ms));
            Mutex::new(send)
        });
        Some(queue.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Runs `job` on the worker, within `limit` from now; the future
    /// answers its response. Dropping the future cancels the job.
    pub(crate) fn run(
        &self,
        job: Job,
        limit: Duration,
    ) -> impl std::future::Future<Output = Response> + Send + 'static {
        let interrupt = Arc::new(Interrupt::new(limit));
        let (reply, answer) = tokio::sync::oneshot::channel();
        let task = Task { job, interrupt: Arc::clone(&interrupt), reply };
        let sent = self.queue().is_some_and(|queue| queue.send(task).is_ok());
        let cancel = CancelOnDrop(interrupt);
        async move {
            let _cancel = cancel;
            if !sent {
                return unavailable();
            }
            answer.await.unwrap_or_else(|_| unavailable())
        }
    }
}

struct CancelOnDrop(Arc<Interrupt>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

fn unavailable() -> Response {
    Response::text(503, "heapprobe: the profile routes' worker thread is not running (it could not start)\n")
}

fn serve(queue: &mpsc::Receiver<Task>, source: &'static dyn Source, stats: &Mutex<Option<Stats>>, keep_ms: &AtomicU64) {
    let own_stats = catch_unwind(AssertUnwindSafe(|| source.thread_stats())).is_ok();
    // Whether the symbol caches hold what the last job named.
    let mut filled = false;
    loop {
        let task = if filled {
            match queue.recv_timeout(Duration::from_millis(keep_ms.load(Relaxed))) {
                Ok(task) => task,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // No profile request for the keeping time: free them.
                    crate::profile::release_symbols();
                    filled = false;
                    publish(own_stats, source, stats);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match queue.recv() {
                Ok(task) => task,
                Err(_) => break,
            }
        };
        let Task { job, interrupt, reply } = task;
        let response = match interrupt.stopped() {
            // Cancelled or expired while it waited: not started.
            Some(stop) => stopped(stop),
            None => {
                let response = interrupt::within(&interrupt, || {
                    catch_unwind(AssertUnwindSafe(job)).unwrap_or_else(|_| super::endpoints::panicked())
                });
                // A stopped rendering returned early: its result is partial.
                interrupt.stopped().map_or(response, stopped)
            }
        };
        filled = true;
        if keep_ms.load(Relaxed) == 0 {
            crate::profile::release_symbols();
            filled = false;
        }
        publish(own_stats, source, stats);
        // The receiver is gone when the request was dropped.
        let _ = reply.send(response);
    }
    crate::profile::release_symbols();
}

/// Publishes the worker thread's counters (when it has a counter slot).
fn publish(own_stats: bool, source: &'static dyn Source, stats: &Mutex<Option<Stats>>) {
    if own_stats {
        *stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(source.thread_stats());
    }
}

/// The answer of a job that stopped (sent only if the request is still
/// there: a cancelled one has no client left to read it).
pub(crate) fn stopped(stop: Stop) -> Response {
    match stop {
        Stop::Gone => Response::text(
            499,
            "heapprobe: stopped: the client closed the connection (or the server dropped the request) before the \
             answer was ready\n",
        ),
        Stop::Deadline(limit) => Response::text(
            503,
            format!(
                "heapprobe: stopped: the answer was not ready within the profile routes' time bound ({} ms, \
                 export::Options::profile_timeout); ask for less (/debug/heap/live?limit=N) or raise the bound\n",
                limit.as_millis()
            ),
        ),
    }
}
