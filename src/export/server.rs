//! The standalone server: hyper's HTTP/1 on a current-thread tokio runtime,
//! on a thread of its own.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::endpoints::{Endpoints, Profiler, ServerSide};
use super::Source;
use crate::Heapprobe;

/// hyper's smallest read buffer.
const MIN_HEADER_BYTES: usize = 8192;

/// Options of [`serve_with`].
#[non_exhaustive]
#[derive(Clone)]
pub struct Options {
    /// Where to listen. Default is `127.0.0.1:6060`: loopback, so only this
    /// machine can connect. Name another address (such as `0.0.0.0:6060`) to
    /// be reachable from the network, and read the README's security notes
    /// first. Port 0 takes any free port ([`Server::local_addr`] says which).
    pub address: SocketAddr,
    /// Connections served at the same time; further ones wait in the
    /// kernel's accept queue until one ends. Default is 64.
    pub max_connections: usize,
    /// How long a client may take to send a request's head (request line
    /// and headers), and how long a kept-alive connection may sit idle
    /// before its next request. Then the connection is closed. Default is
    /// 5 seconds.
    pub header_timeout: Duration,
    /// The longest a connection stays open: then it closes after the
    /// response in progress, which gets `header_timeout` more to be
    /// written before the connection is dropped. A delta profile's
    /// `?seconds=N` extends it by `N` seconds. Default is 30 seconds.
    pub connection_timeout: Duration,
    /// The largest request head (request line and headers), in bytes;
    /// larger ones get `431`. At least 8192 (hyper's minimum). Default is
    /// 16384.
    pub max_header_bytes: usize,
    /// The longest delta profile (`?seconds=N`) answered. Default is 60.
    pub max_profile_seconds: u64,
    /// The longest a profile route (`/debug/pprof/*`, `/debug/heap/live`,
    /// `/profiler/*`) may take to answer, from its request (or the end of
    /// a delta profile's wait): then the in-process profiler stops
    /// rendering and the route answers `503`, saying so
    /// ([`Endpoints::profile_timeout`]). The profile routes run on a worker
    /// thread of their own, one at a time, so `/metrics` and `/stats` are
    /// never queued behind them. Default is 20 seconds.
    pub profile_timeout: Duration,
    /// How long the symbol caches that naming a profile fills are kept
    /// after the last profile request ([`Endpoints::symbols_kept_for`]);
    /// zero frees them at the end of every request. Default is 30 seconds.
    pub symbols_kept_for: Duration,
    /// Serves `/debug/pprof/*`, `/debug/heap/live` and `/profiler/*`.
    /// Default is `None`: with the `pprof` feature, [`serve`] and
    /// [`serve_with`] attach the in-process profiler over the instance they
    /// serve (`HeapProfiler::new(probe)`, unless
    /// [`default_profiler`](Self::default_profiler) is false); without it,
    /// or with none attached, those routes answer `501`.
    pub profiler: Option<Arc<dyn Profiler>>,
    /// Whether [`serve`] and [`serve_with`] attach the in-process profiler
    /// (`HeapProfiler`, feature `pprof`) when [`profiler`](Self::profiler)
    /// is `None`. Default is `true`.
    pub default_profiler: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, 6060)),
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            max_profile_seconds: 60,
            profile_timeout: super::PROFILE_TIMEOUT,
            symbols_kept_for: super::SYMBOLS_KEPT_FOR,
            profiler: None,
            default_profiler: true,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("address", &self.address)
            .field("max_connections", &self.max_connections)
            .field("header_timeout", &self.header_timeout)
            .field("connection_timeout", &self.connection_timeout)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("max_profile_seconds", &self.max_profile_seconds)
            .field("profile_timeout", &self.profile_timeout)
            .field("symbols_kept_for", &self.symbols_kept_for)
            .field("profiler", &self.profiler.as_ref().map(|_| "attached"))
            .field("default_profiler", &self.default_profiler)
            .finish()
    }
}

/// A running server. Dropping it leaves the server running for the rest
/// of the process; [`shutdown`](Self::shutdown) stops it.
pub struct Server {
    address: SocketAddr,
    stop: Arc<Notify>,
    thread: JoinHandle<()>,
}

impl Server {
    /// The address it listens on (with the real port if you asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Whether the server's thread is still running.
    pub fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Stops accepting, closes every connection and waits for the server's
    /// thread to end. An error means that thread panicked.
    pub fn shutdown(self) -> io::Result<()> {
        self.stop.notify_one();
        self.thread
            .join()
            .map_err(|_| io::Error::other(format!("heapprobe: the server on {} had panicked", self.address)))
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").field("address", &self.address).field("running", &self.is_running()).finish()
    }
}

/// Starts the standalone server on its own thread, listening on `address`,
/// with the other [`Options`] at their defaults. Returns once it accepts
/// connections.
///
/// ```no_run
/// use heapprobe::Heapprobe;
/// use std::alloc::System;
///
/// #[global_allocator]
/// static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
///
/// fn main() -> std::io::Result<()> {
///     heapprobe::serve(&GLOBAL, "127.0.0.1:6060")?;
///     // … the service runs; `curl 127.0.0.1:6060/metrics` reads the counters.
///     # Ok(())
/// }
/// ```
///
/// The routes are [`Endpoints`]'. With the `pprof` feature the in-process
/// profiler serves the profile routes (`HeapProfiler`): `curl -X POST
/// 127.0.0.1:6060/profiler/start`, then `go tool pprof
/// http://127.0.0.1:6060/debug/pprof/heap`. What the server allocates to answer
/// requests (its runtime, connections, rendering) is counted like every
/// allocation, and also shown apart as the endpoint's own overhead:
/// `heapprobe_endpoint_*` in `/metrics`, `"endpoint"` in `/stats`. The
/// profile routes run on a worker thread of their own
/// ([`Work`](super::Work)); its counters join the overhead at the end of
/// each of its requests.
pub fn serve<A: Sync>(probe: &'static Heapprobe<A>, address: impl ToSocketAddrs) -> io::Result<Server> {
    let addresses: Vec<SocketAddr> = address.to_socket_addrs()?.collect();
    let listener = bind(&addresses)?;
    start(probe, listener, with_default_profiler(probe, Options::default()))
}

/// [`serve`] with every option: [`Options::default()`] listens on
/// `127.0.0.1:6060`.
///
/// ```no_run
/// # use heapprobe::Heapprobe;
/// # use std::alloc::System;
/// # #[global_allocator]
/// # static GLOBAL: Heapprobe<System> = Heapprobe::new(System);
/// let mut options = heapprobe::export::Options::default();
/// options.max_connections = 8;
/// let server = heapprobe::serve_with(&GLOBAL, options)?;
/// println!("metrics on http://{}/metrics", server.local_addr());
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn serve_with<A: Sync>(probe: &'static Heapprobe<A>, options: Options) -> io::Result<Server> {
    let listener = bind(&[options.address])?;
    start(probe, listener, with_default_profiler(probe, options))
}

/// Attaches the in-process profiler over `probe` unless one is attached or
/// the options say not to (feature `pprof`).
#[allow(unused_mut)]
fn with_default_profiler<A: Sync>(probe: &'static Heapprobe<A>, mut options: Options) -> Options {
    #[cfg(feature = "pprof")]
    if options.profiler.is_none() && options.default_profiler {
        options.profiler = Some(Arc::new(super::HeapProfiler::new(probe)));
    }
    #[cfg(not(feature = "pprof"))]
    let _ = probe;
    options
}

fn bind(addresses: &[SocketAddr]) -> io::Result<StdListener> {
    let named = || addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    if addresses.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "heapprobe: the server's address resolved to nothing"));
    }
    StdListener::bind(addresses).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::AddrInUse => {
                " (another socket listens there: pick another port, or port 0 for any free one)"
            }
            io::ErrorKind::PermissionDenied => " (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
            io::ErrorKind::AddrNotAvailable => " (no interface of this machine has that address)",
            _ => "",
        };
        io::Error::new(e.kind(), format!("heapprobe: cannot listen on {}: {e}{hint}", named()))
    })
}

fn start(source: &'static dyn Source, listener: StdListener, options: Options) -> io::Result<Server> {
    if options.max_header_bytes < MIN_HEADER_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "heapprobe: Options::max_header_bytes must be at least {MIN_HEADER_BYTES}; it is {}",
                options.max_header_bytes
            ),
        ));
    }
    if options.max_connections == 0 || options.header_timeout.is_zero() || options.connection_timeout.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "heapprobe: Options::max_connections, header_timeout and connection_timeout must be above zero; got \
                 {options:?}"
            ),
        ));
    }
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let stop = Arc::new(Notify::new());
    let (ready, started) = mpsc::sync_channel(1);
    let stopped = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name(String::from("heapprobe-server"))
        .spawn(move || run(source, listener, options, stopped, ready))
        .map_err(|e| io::Error::new(e.kind(), format!("heapprobe: cannot start the server's thread: {e}")))?;
    match started.recv() {
        Ok(Ok(())) => Ok(Server { address, stop, thread }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(io::Error::new(e.kind(), format!("heapprobe: the server on {address} could not start: {e}")))
        }
        Err(_) => {
            let _ = thread.join();
            Err(io::Error::other(format!("heapprobe: the server on {address} stopped while starting")))
        }
    }
}

/// What every connection shares.
struct Shared {
    endpoints: Endpoints,
    options: Options,
}

/// The server's thread: everything it does but the profile routes' work
/// (on the worker, `export::worker`) allocates here, so its own counters,
/// plus the worker's, are the endpoint's overhead.
fn run(
    source: &'static dyn Source,
    listener: StdListener,
    options: Options,
    stop: Arc<Notify>,
    ready: mpsc::SyncSender<io::Result<()>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
        // `thread_stats` panics only if this thread got no counter slot (more
        // than MAX_THREADS live threads); then the overhead is not shown.
        let own_stats = catch_unwind(AssertUnwindSafe(|| source.thread_stats())).is_ok();
        let mut endpoints = Endpoints::from_source(source)
            .max_profile_seconds(options.max_profile_seconds)
            .profile_timeout(options.profile_timeout)
            .symbols_kept_for(options.symbols_kept_for);
        endpoints.set_profiler(options.profiler.clone());
        endpoints.server =
            Some(ServerSide { thread: std::thread::current().id(), own_stats, loopback, requests: AtomicU64::new(0) });
        let permits = Arc::new(Semaphore::new(options.max_connections));
        let shared = Arc::new(Shared { endpoints, options });
        let _ = ready.send(Ok(()));
        accept(&listener, &permits, &shared, &stop).await;
    });
    // Dropping the runtime drops every connection still open.
}

async fn accept(listener: &TcpListener, permits: &Arc<Semaphore>, shared: &Arc<Shared>, stop: &Notify) {
    loop {
        let permit = tokio::select! {
            biased;
            _ = stop.notified() => return,
            permit = Arc::clone(permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = stop.notified() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, permit, Arc::clone(shared)));
            }
            // Out of file descriptors, or a connection reset while queued:
            // pause so that a full descriptor table does not spin this loop.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// One connection, bounded in time: hyper closes it when a request head
/// takes longer than `header_timeout`; here it closes after
/// `connection_timeout` (plus any delta profile's wait), and is dropped if
/// the response in progress is not written `header_timeout` later.
async fn connection(stream: TcpStream, _permit: OwnedSemaphorePermit, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let options = &shared.options;
    let allowance = Arc::new(AtomicU64::new(0));
    let service = {
        let (shared, allowance) = (Arc::clone(&shared), Arc::clone(&allowance));
        service_fn(move |request| {
            let (shared, allowance) = (Arc::clone(&shared), Arc::clone(&allowance));
            async move { Ok::<_, Infallible>(shared.endpoints.handle_with(&request, Some(&allowance)).await) }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .max_buf_size(options.max_header_bytes)
        .max_header_size(options.max_header_bytes);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let opened = Instant::now();
    let deadline = || opened + options.connection_timeout + Duration::from_millis(allowance.load(Relaxed));
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep_until(deadline()) => {
                if deadline() <= Instant::now() {
                    break;
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(options.header_timeout, conn).await;
}
