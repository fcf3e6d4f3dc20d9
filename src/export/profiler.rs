//! The in-process profiler (`crate::profile`) behind the profile routes:
//! `/debug/pprof/heap`, `/debug/pprof/allocs` (with `?seconds=N` deltas),
//! `/debug/heap/live` and `POST /profiler/start|stop`. Features `server`
//! and `pprof`.

use std::fmt;

use super::endpoints::{Pprof, Profiler, Response};
use super::worker::stopped;
use crate::profile::{self, interrupt, Options, Profile, ProfileError, View};
use crate::Heapprobe;

/// The default most blocks `/debug/heap/live` lists (`?limit=N` changes it
/// per request).
pub const LIVE_LIMIT: usize = 100_000;

/// The default largest `/debug/heap/live` body, in bytes (64 MiB): blocks
/// beyond it are left out, the smallest first, and the body says so
/// (`"truncated_by": [… "size"]`, `"max_body_bytes"`).
pub const LIVE_MAX_BYTES: usize = 64 << 20;

/// The in-process profiler over one `Heapprobe` instance (usually the
/// `#[global_allocator]`), for [`Endpoints::profiler`](super::Endpoints::profiler)
/// and [`Options::profiler`](super::Options::profiler). [`serve`](super::serve)
/// and [`serve_with`](super::serve_with) attach one by default.
///
/// | Route | Answer |
/// |---|---|
/// | `GET /debug/pprof/heap` | gzipped pprof, default sample type `inuse_space` (Go's four heap types) |
/// | `GET /debug/pprof/allocs` | the same, default sample type `alloc_space` |
/// | `GET …?seconds=N` | what was allocated (and how the in-use view changed) during the next `N` seconds |
/// | `GET /debug/heap/live` | the live blocks as JSON ([`Profile::live_map_json`]); `?limit=N`; at most [`live_max_bytes`](Self::live_max_bytes) |
/// | `POST /profiler/start` | starts the profiler with [`start_options`](Self::start_options) |
/// | `POST /profiler/stop` | stops it and answers its summary |
///
/// The profile routes read the profiler while it runs (and, after it
/// stopped, what it recorded); they answer `409` with what to do when it
/// never ran. Start it with `POST /profiler/start`, from code
/// ([`Heapprobe::start_profiler`]) or with `HEAPPROBE_PROFILE` in the
/// environment. With `rate = 1` (`HEAPPROBE_PROFILE=rate=1`, or
/// `start_options` with `rate = 1`), `/debug/heap/live` is the exact live
/// map: every block allocated since the start and still live, with its
/// address, size, thread, age and stack, in a table of bounded size
/// ([`Options::max_live`]; `"truncated": true` when it overflowed).
pub struct HeapProfiler {
    heap: &'static dyn Instance,
    start_options: Options,
    live_limit: usize,
    live_max_bytes: usize,
}

impl HeapProfiler {
    /// The profiler over `heap`, whose exact counters its profiles are
    /// checked against. `POST /profiler/start` uses the default
    /// [`Options`] (512 KiB).
    pub fn new<A: Sync>(heap: &'static Heapprobe<A>) -> Self {
        Self { heap, start_options: Options::default(), live_limit: LIVE_LIMIT, live_max_bytes: LIVE_MAX_BYTES }
    }

    /// The options `POST /profiler/start` starts the profiler with. Default
    /// is [`Options::default()`] (rate 512 KiB); `rate = 1` serves the exact
    /// live map.
    pub fn start_options(mut self, options: Options) -> Self {
        self.start_options = options;
        self
    }

    /// The most blocks `/debug/heap/live` lists (the largest first) unless
    /// the request asks for fewer with `?limit=N`. Default is [`LIVE_LIMIT`]
    /// (100 000).
    pub fn live_limit(mut self, limit: usize) -> Self {
        self.live_limit = limit;
        self
    }

    /// The largest `/debug/heap/live` body, in bytes (at least 4 KiB):
    /// blocks that do not fit are left out, the smallest first, and the body
    /// says so (`"truncated_by"` holds `"size"`). Rendering it holds at most
    /// twice this. Default is [`LIVE_MAX_BYTES`] (64 MiB).
    pub fn live_max_bytes(mut self, bytes: usize) -> Self {
        self.live_max_bytes = bytes;
        self
    }
}

impl fmt::Debug for HeapProfiler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeapProfiler")
            .field("start_options", &self.start_options)
            .field("live_limit", &self.live_limit)
            .field("live_max_bytes", &self.live_max_bytes)
            .finish_non_exhaustive()
    }
}

/// A `Heapprobe` instance without its type parameter.
trait Instance: Sync {
    fn snapshot(&self) -> Option<Profile>;
    fn start(&self, options: Options) -> Result<(), ProfileError>;
    fn stop(&self) -> Option<Profile>;
}

impl<A: Sync> Instance for Heapprobe<A> {
    fn snapshot(&self) -> Option<Profile> {
        self.profile_snapshot()
    }
    fn start(&self, options: Options) -> Result<(), ProfileError> {
        self.start_profiler(options)
    }
    fn stop(&self) -> Option<Profile> {
        self.stop_profiler()
    }
}

fn never_ran(path: &str) -> Response {
    Response::text(
        409,
        format!(
            "heapprobe: {path}: the in-process profiler has not run in this process. Start it with \
             `curl -X POST http://HOST/profiler/start`, from code (GLOBAL.start_profiler) or with \
             HEAPPROBE_PROFILE=rate=524288 in the environment (rate=1: every allocation).\n"
        ),
    )
}

fn pprof_response(kind: Pprof, profile: &Profile) -> Response {
    let (view, name) = match kind {
        Pprof::Heap => (View::InUseBytes, "heap"),
        Pprof::Allocs => (View::AllocatedBytes, "allocs"),
    };
    let body = profile.pprof_as(view);
    if let Some(stop) = interrupt::stopped() {
        return stopped(stop);
    }
    Response::new(200, "application/octet-stream", body)
        .with_header("content-disposition", format!("attachment; filename=\"{name}\""))
}

impl Profiler for HeapProfiler {
    fn pprof(&self, kind: Pprof) -> Response {
        match self.heap.snapshot() {
            Some(profile) => pprof_response(kind, &profile),
            None => never_ran(kind.path()),
        }
    }

    fn pprof_delta(&self, kind: Pprof) -> Result<Box<dyn FnOnce() -> Response + Send>, Response> {
        if !profile::is_running() {
            return Err(Response::text(
                409,
                format!(
                    "heapprobe: {}?seconds=N: the in-process profiler is not running, so nothing would be \
                     recorded during those seconds. Start it first (`curl -X POST http://HOST/profiler/start`).\n",
                    kind.path()
                ),
            ));
        }
        let before = self.heap.snapshot().ok_or_else(|| never_ran(kind.path()))?;
        let heap = self.heap;
        Ok(Box::new(move || match heap.snapshot().and_then(|after| after.delta_since(&before)) {
            Some(delta) => pprof_response(kind, &delta),
            None => Response::text(
                409,
                format!(
                    "heapprobe: {}?seconds=N: the profiler stopped or restarted during those seconds; ask again.\n",
                    kind.path()
                ),
            ),
        }))
    }

    fn live(&self, query: Option<&str>) -> Response {
        let mut limit = self.live_limit;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=').map(|(key, n)| (key, n.parse::<usize>())) {
                Some(("limit", Ok(n))) => limit = n,
                _ => {
                    return Response::text(
                        400,
                        format!(
                            "heapprobe: /debug/heap/live takes limit=N (the most blocks listed, the largest first); \
                             got {pair:?}\n"
                        ),
                    )
                }
            }
        }
        match self.heap.snapshot() {
            Some(profile) => {
                let body = profile.live_map_json_bounded(limit, self.live_max_bytes);
                match interrupt::stopped() {
                    Some(stop) => stopped(stop),
                    None => Response::new(200, "application/json", body),
                }
            }
            None => never_ran("/debug/heap/live"),
        }
    }

    fn start(&self) -> Response {
        match self.heap.start(self.start_options.clone()) {
            Ok(()) => Response::text(200, format!("heapprobe: profiler started, rate {}\n", self.start_options.rate)),
            Err(ProfileError::AlreadyRunning) => {
                Response::text(409, "heapprobe: the profiler is already running (POST /profiler/stop first)\n")
            }
            Err(e @ ProfileError::Unavailable) => Response::text(501, format!("heapprobe: {e}\n")),
            Err(e) => Response::text(500, format!("heapprobe: cannot start the profiler: {e}\n")),
        }
    }

    fn stop(&self) -> Response {
        match self.heap.stop() {
            Some(profile) => Response::text(200, format!("heapprobe: profiler stopped.\n{profile}")),
            None => Response::text(409, "heapprobe: the profiler is not running (POST /profiler/start)\n"),
        }
    }
}
