//! Issue 21, point 3: one heavy request must not stall the server. The
//! issue's reproduction, in process: the profiler at rate 1 with room for
//! two million live blocks, a million live blocks, two threads churning,
//! and `GET /debug/heap/live?limit=2000000`. While that request is being
//! rendered (a handshake from the profiler says so), `/metrics` answers
//! within 10 s; when its client closes the connection, the rendering stops
//! and says why; the body is bounded in size, with the truncation stated in
//! the body; and a route past its time bound answers `503` saying so.

mod endpoint_support;
mod support;

use std::alloc::System;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use endpoint_support::status_of;
use heapprobe::export::{HeapProfiler, Options, Pprof, Profiler, Response};
use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

const LIVE_BLOCKS: usize = 1_000_000;

/// The in-process profiler, telling the test when `/debug/heap/live` starts
/// rendering and what it answered.
struct Watched {
    inner: HeapProfiler,
    started: Mutex<mpsc::Sender<()>>,
    answered: Mutex<mpsc::Sender<(u16, String)>>,
}

impl Profiler for Watched {
    fn pprof(&self, kind: Pprof) -> Response {
        self.inner.pprof(kind)
    }
    fn live(&self, query: Option<&str>) -> Response {
        let _ = self.started.lock().unwrap().send(());
        let response = self.inner.live(query);
        let head = String::from_utf8_lossy(&response.body[..response.body.len().min(400)]).into_owned();
        let _ = self.answered.lock().unwrap().send((response.status, head));
        response
    }
    fn start(&self) -> Response {
        self.inner.start()
    }
    fn stop(&self) -> Response {
        self.inner.stop()
    }
}

/// GET `path` on a new connection; the response's status and body, or
/// `None` if none came within `timeout`.
fn get(address: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, Vec<u8>)> {
    let (bytes, _) = endpoint_support::raw(
        address,
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
        timeout,
    );
    let status = status_of(&bytes)?;
    let body = bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|at| bytes[at + 4..].to_vec())?;
    Some((status, body))
}

#[test]
fn a_heavy_profile_request_stalls_nothing_and_stops_when_its_client_goes() {
    let mut profile = heapprobe::profile::Options::default();
    profile.rate = 1;
    profile.max_live = 2 * LIVE_BLOCKS;
    GLOBAL.start_profiler(profile).unwrap();
    let mut kept: Vec<Box<u64>> = Vec::with_capacity(LIVE_BLOCKS);
    for i in 0..LIVE_BLOCKS {
        kept.push(Box::new(i as u64));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let churners: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::black_box(vec![0u8; 64]);
                }
            })
        })
        .collect();

    let (started, starts) = mpsc::channel();
    let (answered, answers) = mpsc::channel();
    let watched =
        Watched { inner: HeapProfiler::new(&GLOBAL), started: Mutex::new(started), answered: Mutex::new(answered) };
    let mut options = Options::default();
    options.address.set_port(0);
    options.profiler = Some(Arc::new(watched));
    let server = heapprobe::serve_with(&GLOBAL, options).unwrap();
    let address = server.local_addr();

    // The heavy request, then (once the profiler renders it) /metrics.
    let mut heavy = TcpStream::connect(address).unwrap();
    heavy
        .write_all(b"GET /debug/heap/live?limit=2000000 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    starts.recv_timeout(Duration::from_secs(120)).expect("the live map's rendering never started");
    let asked = Instant::now();
    let metrics = get(address, "/metrics", Duration::from_secs(10));
    let waited = asked.elapsed();
    eprintln!("/metrics during the heavy request: {waited:?}");
    let (status, body) = metrics.expect("/metrics got no answer within 10 s while /debug/heap/live was rendered");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("heapprobe_allocations_total"));

    // The client goes: the rendering stops, and says why.
    let closed = Instant::now();
    heavy.shutdown(std::net::Shutdown::Both).unwrap();
    drop(heavy);
    let (status, head) = answers.recv_timeout(Duration::from_secs(120)).expect("the live map never returned");
    eprintln!("the live map returned {:?} after its client closed: {status} {head:?}", closed.elapsed());
    assert!(head.contains("the client closed the connection"), "{status} {head}");

    stop.store(true, Ordering::Relaxed);
    for churner in churners {
        churner.join().unwrap();
    }
    server.shutdown().unwrap();

    // Bounded in size: the body stops at the bound and says so.
    const MAX_BYTES: usize = 1 << 20;
    let mut options = Options::default();
    options.address.set_port(0);
    options.profile_timeout = Duration::from_secs(600);
    options.connection_timeout = Duration::from_secs(600);
    options.profiler = Some(Arc::new(HeapProfiler::new(&GLOBAL).live_max_bytes(MAX_BYTES)));
    let server = heapprobe::serve_with(&GLOBAL, options).unwrap();
    let (status, body) = get(server.local_addr(), "/debug/heap/live?limit=2000000", Duration::from_secs(600))
        .expect("the bounded live map never came");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body.len() <= MAX_BYTES, "{} bytes", body.len());
    let live: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(live["truncated"], true);
    assert_eq!(live["truncated_by"], serde_json::json!(["size"]), "{}", live["truncated_by"]);
    assert_eq!(live["max_body_bytes"].as_u64(), Some(MAX_BYTES as u64));
    let listed = live["length_memory_array"].as_u64().unwrap();
    assert!(listed > 10 && listed < LIVE_BLOCKS as u64, "{listed} blocks listed");
    assert_eq!(live["memory"].as_array().unwrap().len() as u64, listed);
    assert_eq!(live["blocks"].as_array().unwrap().len() as u64, listed);
    assert!(live["live_blocks"].as_u64().unwrap() >= LIVE_BLOCKS as u64, "{}", live["live_blocks"]);
    server.shutdown().unwrap();

    // Bounded in time: past the bound the route answers 503 and says so.
    let mut options = Options::default();
    options.address.set_port(0);
    options.profile_timeout = Duration::from_millis(1);
    let server = heapprobe::serve_with(&GLOBAL, options).unwrap();
    let (status, body) = get(server.local_addr(), "/debug/heap/live?limit=2000000", Duration::from_secs(120))
        .expect("the time-bounded live map never answered");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("time bound (1 ms"), "{body}");
    server.shutdown().unwrap();

    let _ = GLOBAL.stop_profiler();
    drop(kept);
}
