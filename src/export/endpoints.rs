//! The routes of the standalone server, as a table any framework can mount.

use std::fmt::Write as _;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{header, Method, StatusCode};

use super::prometheus::{render, to_prometheus_text, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};
use super::worker::Worker;
use super::{Overhead, Source};
use crate::{Heapprobe, Stats};

/// An HTTP response, independent of any framework.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// Other headers (name in lower case).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with this status, content type and body.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self { status, content_type, headers: Vec::new(), body: body.into() }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body.into().into_bytes())
    }

    /// Adds a header (`name` in lower case, such as `"content-disposition"`).
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// What a route answers: a response now, or [`Work`] for heapprobe's
/// profile worker (the profile routes), maybe after a wait (a delta
/// profile: `?seconds=N`) that must not block a thread.
#[non_exhaustive]
pub enum Reply {
    /// Send this.
    Now(Response),
    /// Wait [`Work::wait`] (asynchronously), then send what the work
    /// answers; it runs on the profile worker, not on the calling thread.
    Later(Work),
}

impl Reply {
    /// The response, waiting with `sleep` first if there is a wait; for
    /// frameworks other than the `http`-based ones [`Endpoints::handle`]
    /// serves (with tokio: `reply.resolve(tokio::time::sleep).await`).
    /// Work runs on the profile worker while this future waits for it
    /// (without blocking the thread that polls it); dropping the future
    /// cancels the work.
    pub async fn resolve<F: Future>(self, sleep: impl FnOnce(Duration) -> F) -> Response {
        match self {
            Reply::Now(response) => response,
            Reply::Later(work) => {
                if !work.wait.is_zero() {
                    sleep(work.wait).await;
                }
                work.worker.run(work.job, work.limit).await
            }
        }
    }
}

/// A profile route's work: a [`Profiler`] call, run on the profile worker,
/// `heapprobe-profile`, a thread of the [`Endpoints`]' own (started at the
/// first profile request), one call at a time, so that the thread that
/// answers requests goes on answering `/metrics` while a profile is
/// rendered. It is bounded in time by [`Endpoints::profile_timeout`] from
/// the request (its wait not included), and cancelled when the future
/// that awaits it is dropped (the client closed the connection): the
/// in-process profiler's rendering checks both and stops part way.
pub struct Work {
    wait: Duration,
    limit: Duration,
    job: Box<dyn FnOnce() -> Response + Send>,
    worker: Arc<Worker>,
}

impl Work {
    /// How long to wait before the work starts (a delta profile's
    /// `seconds`); zero for none.
    pub fn wait(&self) -> Duration {
        self.wait
    }
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work").field("wait", &self.wait).field("limit", &self.limit).finish_non_exhaustive()
    }
}

/// The two pprof profiles, as in Go's `net/http/pprof`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Pprof {
    /// `/debug/pprof/heap`: in-use bytes and objects by stack.
    Heap,
    /// `/debug/pprof/allocs`: allocated bytes and objects by stack.
    Allocs,
}

impl Pprof {
    /// The route that serves this profile.
    pub const fn path(self) -> &'static str {
        match self {
            Pprof::Heap => "/debug/pprof/heap",
            Pprof::Allocs => "/debug/pprof/allocs",
        }
    }
}

/// The in-process profiler, as the routes that need it see it.
///
/// Every method has a default that answers `501 Not Implemented` with a body
/// that says what is missing, so an implementation provides what it has.
/// The routes check the method and the query (`seconds` is validated
/// against [`Endpoints::max_profile_seconds`]) before calling these.
pub trait Profiler: Send + Sync + 'static {
    /// The calls below run on the profile worker ([`Work`]), one at a time;
    /// the in-process profiler's rendering stops part way when the request
    /// is cancelled or past its time bound, other implementations run to
    /// their end (and their answer is then replaced by `503`).
    ///
    /// `GET /debug/pprof/heap` or `/debug/pprof/allocs`: a gzipped pprof
    /// protobuf (`Response::new(200, "application/octet-stream", bytes)`).
    fn pprof(&self, kind: Pprof) -> Response {
        not_attached(kind.path())
    }

    /// `GET …?seconds=N`: called when the request arrives (take the first
    /// snapshot here); the returned function is called `N` seconds later and
    /// answers with the difference, as Go's delta profiles do. An `Err` is
    /// sent at once.
    #[allow(clippy::type_complexity)]
    fn pprof_delta(&self, kind: Pprof) -> Result<Box<dyn FnOnce() -> Response + Send>, Response> {
        Err(not_attached(kind.path()))
    }

    /// `GET /debug/heap/live`: the live blocks as JSON, in the shape of the
    /// stats_alloc memory-map fork (`length_memory_array`,
    /// `memory: [[address, size], …]`, `memory_allocated`, `total_memory`),
    /// plus thread, age and stack where known. `query` is the raw query string.
    fn live(&self, query: Option<&str>) -> Response {
        let _ = query;
        not_attached("/debug/heap/live")
    }

    /// `POST /profiler/start`.
    fn start(&self) -> Response {
        not_attached("/profiler/start")
    }

    /// `POST /profiler/stop`.
    fn stop(&self) -> Response {
        not_attached("/profiler/stop")
    }
}

fn not_attached(path: &str) -> Response {
    Response::text(
        501,
        format!(
            "heapprobe: {path} needs heapprobe's in-process profiler, and none is attached to this server \
             (export::Options::profiler, or Endpoints::profiler). /metrics and /stats work without it.\n"
        ),
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Index,
    Metrics,
    Stats,
    Pprof(Pprof),
    Live,
    ResetPeak,
    Start,
    Stop,
}

struct RouteInfo {
    path: &'static str,
    route: Route,
    post: bool,
    what: &'static str,
}

const ROUTES: [RouteInfo; 9] = [
    RouteInfo { path: "/", route: Route::Index, post: false, what: "this list" },
    RouteInfo {
        path: "/metrics",
        route: Route::Metrics,
        post: false,
        what: "the exact counters as OpenMetrics text, for Prometheus",
    },
    RouteInfo {
        path: "/stats",
        route: Route::Stats,
        post: false,
        what: "the exact counters as JSON: {\"process\": Stats, \"endpoint\": the server's own}",
    },
    RouteInfo {
        path: "/debug/pprof/heap",
        route: Route::Pprof(Pprof::Heap),
        post: false,
        what: "in-use bytes and objects by stack, pprof (profiler); ?seconds=N for a delta",
    },
    RouteInfo {
        path: "/debug/pprof/allocs",
        route: Route::Pprof(Pprof::Allocs),
        post: false,
        what: "allocated bytes and objects by stack, pprof (profiler); ?seconds=N for a delta",
    },
    RouteInfo { path: "/debug/heap/live", route: Route::Live, post: false, what: "the live blocks as JSON (profiler)" },
    RouteInfo {
        path: "/reset-peak",
        route: Route::ResetPeak,
        post: true,
        what: "restart the process-wide peak at the current use",
    },
    RouteInfo { path: "/profiler/start", route: Route::Start, post: true, what: "start the profiler" },
    RouteInfo { path: "/profiler/stop", route: Route::Stop, post: true, what: "stop the profiler" },
];

/// What only the standalone server knows.
pub(crate) struct ServerSide {
    /// The server's thread: the only one whose counters are its own.
    pub thread: ThreadId,
    /// Whether that thread has a counter slot (`thread_stats` works).
    pub own_stats: bool,
    /// Listening on loopback: only local Host names are answered.
    pub loopback: bool,
    pub requests: AtomicU64,
}

/// heapprobe's routes, for the standalone server and for any framework.
///
/// | Route | Method | Answer |
/// |---|---|---|
/// | `/` | GET | the list of routes |
/// | `/metrics` | GET | the exact counters as OpenMetrics text (Prometheus) |
/// | `/stats` | GET | the exact counters as JSON |
/// | `/debug/pprof/heap` | GET | in-use bytes and objects by stack (pprof); needs a [`Profiler`] |
/// | `/debug/pprof/allocs` | GET | allocated bytes and objects by stack (pprof), `?seconds=N` for a delta; needs a [`Profiler`] |
/// | `/debug/heap/live` | GET | the live blocks as JSON; needs a [`Profiler`] |
/// | `/reset-peak` | POST | restarts the process-wide peak at the current use |
/// | `/profiler/start`, `/profiler/stop` | POST | start or stop the profiler; needs a [`Profiler`] |
///
/// Bounds: `/`, `/metrics`, `/stats` and `/reset-peak` answer at once
/// from the counters (a few KiB) on the calling thread. The routes that
/// need a profiler run as [`Work`] on a worker thread of the `Endpoints`'
/// own, one at a time, so they never hold up the others; each is bounded
/// in time by [`profile_timeout`](Self::profile_timeout) (20 s; then `503`),
/// cancelled when its request is dropped, and in size by the profiler's
/// tables (pprof) or `HeapProfiler::live_max_bytes`
/// (the live map, 64 MiB, its truncation stated in the body).
///
/// Read-only routes answer GET and HEAD, the others POST only; any other
/// method gets `405` with an `Allow` header, an unknown path `404` with the
/// list. Routes that need a profiler answer `501` until one is attached.
///
/// In an `http`-based framework (axum, hyper, warp, …), route
/// [`Endpoints::PATHS`] to [`Endpoints::handle`]; `examples/axum.rs` does
/// it in a few lines. Elsewhere, [`Endpoints::respond`] takes the method,
/// path and query as strings.
pub struct Endpoints {
    source: &'static dyn Source,
    profiler: Option<Arc<dyn Profiler>>,
    max_profile_seconds: u64,
    profile_timeout: Duration,
    worker: Arc<Worker>,
    pub(crate) server: Option<ServerSide>,
}

/// The default time bound of a profile route ([`Endpoints::profile_timeout`]).
pub const PROFILE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the names of a profile's addresses are kept after the last
/// profile request, by default ([`Endpoints::symbols_kept_for`]).
pub const SYMBOLS_KEPT_FOR: Duration = Duration::from_secs(30);

impl Endpoints {
    /// Every path the routes answer.
    pub const PATHS: [&'static str; 9] = {
        let mut paths = [""; 9];
        let mut i = 0;
        while i < ROUTES.len() {
            paths[i] = ROUTES[i].path;
            i += 1;
        }
        paths
    };

    /// The routes over `probe` (usually your `#[global_allocator]` static),
    /// with no profiler and `?seconds=` up to 60.
    pub fn new<A: Sync>(probe: &'static Heapprobe<A>) -> Self {
        Self::from_source(probe)
    }

    pub(crate) fn from_source(source: &'static dyn Source) -> Self {
        Self {
            source,
            profiler: None,
            max_profile_seconds: 60,
            profile_timeout: PROFILE_TIMEOUT,
            worker: Arc::new(Worker::new(source)),
            server: None,
        }
    }

    /// Serves the profile routes from `profiler`.
    pub fn profiler(mut self, profiler: Arc<dyn Profiler>) -> Self {
        self.profiler = Some(profiler);
        self
    }

    /// The longest delta profile (`?seconds=N`) answered; larger `N` get
    /// `400`. Default is 60.
    pub fn max_profile_seconds(mut self, seconds: u64) -> Self {
        self.max_profile_seconds = seconds;
        self
    }

    /// The longest a profile route may take, from its request (or the end
    /// of a delta profile's wait) to its answer: past it, the in-process
    /// profiler stops rendering and the route answers `503`, saying so.
    /// The time spent queued behind another profile request counts. Default
    /// is [`PROFILE_TIMEOUT`] (20 s, under the standalone server's 30 s
    /// connection lifetime, which also cancels the work).
    pub fn profile_timeout(mut self, timeout: Duration) -> Self {
        self.profile_timeout = timeout;
        self
    }

    /// How long the names of a profile's addresses (the symbol caches:
    /// the binary's parsed DWARF, tens of MiB for a large binary) are kept
    /// after the last profile request. A scraper that asks every few
    /// seconds then pays for parsing once; once no profile request came
    /// for this long, they are freed, so a process profiled now and then
    /// keeps no heap for it. Zero frees them at the end of every request.
    /// Default is [`SYMBOLS_KEPT_FOR`] (30 s).
    pub fn symbols_kept_for(self, keep: Duration) -> Self {
        self.worker.keep_symbols_for(keep);
        self
    }

    pub(crate) fn set_profiler(&mut self, profiler: Option<Arc<dyn Profiler>>) {
        self.profiler = profiler;
    }

    /// Answers one request: `method` as sent (`"GET"`), `path` without the
    /// query, `query` after the `?` if there was one, and the `Accept`
    /// header if there was one (`/metrics` answers OpenMetrics to clients
    /// that ask for it, as Prometheus does, and the Prometheus text format
    /// 0.0.4 to the others).
    pub fn respond(&self, method: &str, path: &str, query: Option<&str>, accept: Option<&str>) -> Reply {
        let Some(info) = ROUTES.iter().find(|r| r.path == path) else {
            return Reply::Now(Response::text(
                404,
                format!("heapprobe: no route {path:?}. The routes:\n{}", self.index()),
            ));
        };
        let allowed = if info.post { method == "POST" } else { method == "GET" || method == "HEAD" };
        if !allowed {
            let allow = if info.post { "POST" } else { "GET, HEAD" };
            let why = if info.post { "it changes state, so it takes POST only" } else { "it only reads" };
            return Reply::Now(
                Response::text(
                    405,
                    format!("heapprobe: {} {path:?} refused: {why} (Allow: {allow})\n", method.escape_debug()),
                )
                .with_header("allow", allow),
            );
        }
        let profiler = self.profiler.clone();
        let owned = query.map(str::to_owned);
        let on_worker = |job: fn(&dyn Profiler, Option<&str>) -> Response| match profiler {
            Some(profiler) => self.later(Duration::ZERO, Box::new(move || job(&*profiler, owned.as_deref()))),
            None => Reply::Now(not_attached(path)),
        };
        Reply::Now(match info.route {
            Route::Index => Response::text(200, self.index()),
            Route::Metrics => {
                let (stats, own) = self.snapshot();
                let openmetrics = render(&stats, own.as_ref());
                if accept.is_some_and(wants_openmetrics) {
                    Response::new(200, OPENMETRICS_CONTENT_TYPE, openmetrics)
                } else {
                    match to_prometheus_text(&openmetrics) {
                        Ok(text) => Response::new(200, PROMETHEUS_CONTENT_TYPE, text),
                        Err(e) => Response::text(500, format!("heapprobe: cannot convert to the text format: {e}\n")),
                    }
                }
            }
            Route::Stats => {
                let (stats, own) = self.snapshot();
                Response::new(200, "application/json", stats_document(&stats, own.as_ref()))
            }
            Route::Pprof(kind) => return self.pprof(kind, query),
            Route::Live => return on_worker(|p, query| p.live(query)),
            Route::ResetPeak => {
                let before = self.source.stats().peak;
                self.source.reset_peak();
                let after = self.source.stats();
                Response::text(
                    200,
                    format!(
                        "heapprobe: peak reset; it was {before} bytes, it is now {} bytes (current: {} bytes)\n",
                        after.peak, after.current
                    ),
                )
            }
            Route::Start => return on_worker(|p, _| p.start()),
            Route::Stop => return on_worker(|p, _| p.stop()),
        })
    }

    fn later(&self, wait: Duration, job: Box<dyn FnOnce() -> Response + Send>) -> Reply {
        Reply::Later(Work { wait, limit: self.profile_timeout, job, worker: Arc::clone(&self.worker) })
    }

    fn pprof(&self, kind: Pprof, query: Option<&str>) -> Reply {
        let path = kind.path();
        let mut seconds = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "seconds" => match value.parse::<u64>() {
                    Ok(n) if (1..=self.max_profile_seconds).contains(&n) => seconds = Some(n),
                    _ => {
                        return Reply::Now(Response::text(
                            400,
                            format!(
                                "heapprobe: {path}: seconds must be a whole number from 1 to {}; got {:?}\n",
                                self.max_profile_seconds, value
                            ),
                        ))
                    }
                },
                // Go's net/http/pprof collects garbage first; there is none here.
                "gc" => {}
                _ => {
                    return Reply::Now(Response::text(
                        400,
                        format!(
                            "heapprobe: {path}: unknown parameter {key:?}; it takes seconds=N (a delta profile over \
                             N seconds) and gc (ignored). Read the profile with `go tool pprof`.\n"
                        ),
                    ))
                }
            }
        }
        let Some(profiler) = self.profiler.clone() else { return Reply::Now(not_attached(path)) };
        match seconds {
            None => self.later(Duration::ZERO, Box::new(move || profiler.pprof(kind))),
            // The first snapshot is taken now, when the request arrives (a
            // copy of the tables, not named: short).
            Some(n) => match catch_unwind(AssertUnwindSafe(|| profiler.pprof_delta(kind)))
                .unwrap_or_else(|_| Err(panicked()))
            {
                Ok(then) => self.later(Duration::from_secs(n), then),
                Err(response) => Reply::Now(response),
            },
        }
    }

    /// The process's counters and, on the server's own thread, the
    /// server's share of them.
    fn snapshot(&self) -> (Stats, Option<Overhead>) {
        match &self.server {
            Some(side) if side.own_stats && std::thread::current().id() == side.thread => {
                // This thread first, then the process, with no allocation in
                // between: the process figures hold exactly this thread's.
                // The profile worker's, as of its last request, first: they
                // are already in what this thread then reads.
                let worker = self.worker.stats();
                let own = self.source.thread_stats();
                let stats = self.source.stats();
                let own = worker.map_or(own, |worker| own + worker);
                (stats, Some(Overhead { requests: side.requests.load(Relaxed), stats: own }))
            }
            _ => (self.source.stats(), None),
        }
    }

    fn index(&self) -> String {
        let mut out = String::new();
        for info in &ROUTES {
            let method = if info.post { "POST" } else { "GET " };
            let _ = writeln!(out, "{method} {:<22} {}", info.path, info.what);
        }
        if self.profiler.is_none() {
            out.push_str("(no profiler attached: the routes marked \"profiler\" answer 501)\n");
        }
        out
    }

    /// Answers an [`http::Request`](hyper::Request): for axum, hyper, warp
    /// and the other frameworks built on the `http` crate. Waits (with
    /// tokio's timer) when the route asks for it (`?seconds=N`).
    ///
    /// Refuses with `403` a POST that carries an `Origin` header: browsers
    /// send one, so a web page cannot make the browser change state here
    /// (programs such as curl do not send it).
    pub fn handle<B>(
        &self,
        request: &hyper::Request<B>,
    ) -> impl Future<Output = hyper::Response<Full<Bytes>>> + Send + '_ {
        self.handle_with(request, None)
    }

    /// [`handle`](Self::handle), adding any wait to `allowance`
    /// (milliseconds), which bounds the connection's lifetime. The request
    /// is read before the future is made, so the future holds no borrow of
    /// it (axum's request body is not `Sync`).
    pub(crate) fn handle_with<B>(
        &self,
        request: &hyper::Request<B>,
        allowance: Option<&AtomicU64>,
    ) -> impl Future<Output = hyper::Response<Full<Bytes>>> + Send + '_ {
        if let Some(side) = &self.server {
            side.requests.fetch_add(1, Relaxed);
        }
        let reply = match self.refuse(request) {
            Some(refused) => Reply::Now(refused),
            None => {
                let (uri, method) = (request.uri(), request.method().as_str());
                // A header that is not text is taken as absent.
                let accept = request.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
                let reply = catch_unwind(AssertUnwindSafe(|| self.respond(method, uri.path(), uri.query(), accept)))
                    .unwrap_or_else(|_| Reply::Now(panicked()));
                if let (Reply::Later(work), Some(allowance)) = (&reply, allowance) {
                    allowance.fetch_add(work.wait.as_millis() as u64, Relaxed);
                }
                reply
            }
        };
        async move { into_http(reply.resolve(tokio::time::sleep).await) }
    }

    fn refuse<B>(&self, request: &hyper::Request<B>) -> Option<Response> {
        if request.method() == Method::POST && request.headers().contains_key(header::ORIGIN) {
            return Some(Response::text(
                403,
                "heapprobe: refused a POST with an Origin header (sent by web browsers): routes that change state \
                 answer programs such as curl, not web pages\n",
            ));
        }
        if self.server.as_ref().is_some_and(|s| s.loopback) {
            if let Some(host) = request.headers().get(header::HOST) {
                if !host_is_local(host.as_bytes()) {
                    return Some(Response::text(
                        403,
                        format!(
                            "heapprobe: refused Host {:?}: a server listening on loopback answers to localhost and \
                             IP addresses only (this blocks DNS rebinding by web pages)\n",
                            String::from_utf8_lossy(host.as_bytes())
                        ),
                    ));
                }
            }
        }
        None
    }
}

/// Whether an `Accept` header asks for OpenMetrics (with a q-value above 0).
fn wants_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let refused = parts.any(|p| p.strip_prefix("q=").is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q <= 0.0)));
        media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

/// `localhost` or an IP literal, with or without a port.
fn host_is_local(host: &[u8]) -> bool {
    let Ok(host) = core::str::from_utf8(host) else { return false };
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, "")) => v6,
            Some((v6, port)) if port.starts_with(':') => v6,
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

pub(crate) fn panicked() -> Response {
    Response::text(500, "heapprobe: the handler panicked (the message went to stderr); the server goes on\n")
}

fn into_http(response: Response) -> hyper::Response<Full<Bytes>> {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = hyper::Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, response.content_type)
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    for (name, value) in &response.headers {
        builder = builder.header(*name, value.as_str());
    }
    builder.body(Full::new(Bytes::from(response.body))).unwrap_or_else(|_| {
        let mut fallback = hyper::Response::new(Full::new(Bytes::from_static(
            b"heapprobe: a route built an invalid response header\n",
        )));
        *fallback.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        fallback
    })
}

#[derive(serde::Serialize)]
struct StatsDocument<'a> {
    process: &'a Stats,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<EndpointDocument<'a>>,
}

#[derive(serde::Serialize)]
struct EndpointDocument<'a> {
    requests: u64,
    #[serde(flatten)]
    stats: &'a Stats,
}

/// `{"process": Stats, "endpoint": {"requests": n, …Stats}}`.
fn stats_document(stats: &Stats, own: Option<&Overhead>) -> Vec<u8> {
    let document = StatsDocument {
        process: stats,
        endpoint: own.map(|own| EndpointDocument { requests: own.requests, stats: &own.stats }),
    };
    let mut body = serde_json::to_vec(&document).unwrap_or_default();
    body.push(b'\n');
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_hosts() {
        for host in ["localhost", "LOCALHOST:6060", "127.0.0.1", "127.0.0.1:80", "[::1]", "[::1]:6060", "10.1.2.3:9"] {
            assert!(host_is_local(host.as_bytes()), "{host}");
        }
        for host in ["evil.example", "evil.example:6060", "localhost.evil.example", "[::1", "[::1]x", "", "\u{ff}"] {
            assert!(!host_is_local(host.as_bytes()), "{host}");
        }
        assert!(!host_is_local(b"\xff\xfe"));
    }

    #[test]
    fn paths_are_the_route_table() {
        assert_eq!(Endpoints::PATHS.len(), ROUTES.len());
        assert!(Endpoints::PATHS.iter().zip(&ROUTES).all(|(p, r)| *p == r.path));
    }
}
