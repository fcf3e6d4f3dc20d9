//! The standalone server against hostile clients: garbage bytes, oversized
//! headers, 200 slowloris clients, non-UTF-8 paths, clients that vanish
//! mid-response or never read, and 100 concurrent scrapes while 8 threads
//! allocate hard. Each gets a 4xx, a 408 or a closed connection; the server
//! never panics, the process's other threads keep running, and afterwards
//! a normal request succeeds.

mod endpoint_support;
mod support;

use std::alloc::System;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Once};
use std::time::{Duration, Instant};

use endpoint_support::{get, raw, status_of};
use heapprobe::export::{Options, Server};
use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

/// Short bounds, so that the attacks end quickly; the mechanisms are those
/// of the defaults.
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(4);
const MAX_CONNECTIONS: usize = 64;

/// Panics on the server's thread (where all its tasks run), counted by a
/// hook that then calls the default one. (A failing test's own panic is
/// not counted, so that it does not fail the others.)
static PANICS: AtomicUsize = AtomicUsize::new(0);
/// The same, on a thread named `heapprobe-server-control`: the hook's
/// positive control.
static CONTROL_PANICS: AtomicUsize = AtomicUsize::new(0);
/// Beats of a thread that only sleeps and counts.
static HEARTBEAT: AtomicU64 = AtomicU64::new(0);

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            match std::thread::current().name() {
                Some("heapprobe-server") => PANICS.fetch_add(1, Ordering::SeqCst),
                Some("heapprobe-server-control") => CONTROL_PANICS.fetch_add(1, Ordering::SeqCst),
                _ => 0,
            };
            default(info)
        }));
        std::thread::spawn(|| loop {
            HEARTBEAT.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1));
        });
    });
}

fn server() -> Server {
    setup();
    let mut options = Options::default();
    options.address.set_port(0);
    options.header_timeout = HEADER_TIMEOUT;
    options.connection_timeout = CONNECTION_TIMEOUT;
    options.max_connections = MAX_CONNECTIONS;
    heapprobe::serve_with(&GLOBAL, options).unwrap()
}

/// After an attack: no panic, the server runs, other threads run (the
/// heartbeat moves on), and a normal request gets the metrics.
fn still_serves(server: Server) {
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the server's thread panicked");
    assert!(server.is_running());
    let beats = HEARTBEAT.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while HEARTBEAT.load(Ordering::SeqCst) == beats {
        assert!(Instant::now() < deadline, "the heartbeat thread stopped");
        std::thread::yield_now();
    }
    let reply = get(&format!("http://{}/metrics", server.local_addr()));
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("heapprobe_allocations_total "));
    server.shutdown().unwrap();
}

/// What a hostile request may get: a 4xx (408 included) or a connection
/// closed without an answer.
fn refused(what: &str, (reply, closed): (Vec<u8>, bool)) {
    match status_of(&reply) {
        Some(status) => assert!((400..500).contains(&status), "{what}: answered {status}"),
        None => assert!(reply.is_empty() && closed, "{what}: neither a status nor closed: {reply:?}"),
    }
}

#[test]
fn the_panic_counter_sees_panics_on_a_named_thread() {
    setup();
    let thread = std::thread::Builder::new().name(String::from("heapprobe-server-control"));
    assert!(thread.spawn(|| panic!("the control panic")).unwrap().join().is_err());
    assert_eq!(CONTROL_PANICS.load(Ordering::SeqCst), 1);
}

/// xorshift64: the same garbage on every run.
fn garbage(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

#[test]
fn garbage_bytes() {
    let server = server();
    let address = server.local_addr();
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    // Complete heads of garbage: parsed at once and refused.
    for i in 0..100 {
        let mut request = garbage(&mut seed, 1 + i * 20);
        request.extend_from_slice(b"\r\n\r\n");
        refused(&format!("garbage #{i}"), raw(address, &request, Duration::from_secs(30)));
    }
    for request in [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET\r\n\r\n",
        b"\0\0\0\0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n",
    ] {
        refused(&String::from_utf8_lossy(request), raw(address, request, Duration::from_secs(30)));
    }
    // Garbage that never ends a head: closed after the header timeout,
    // all at once.
    let started = Instant::now();
    let unfinished: Vec<_> = (0..50)
        .map(|_| {
            let request = garbage(&mut seed, 300);
            std::thread::spawn(move || raw(address, &request, Duration::from_secs(60)))
        })
        .collect();
    for (i, thread) in unfinished.into_iter().enumerate() {
        refused(&format!("unfinished garbage #{i}"), thread.join().unwrap());
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    still_serves(server);
}

#[test]
fn oversized_headers() {
    let server = server();
    let address = server.local_addr();
    let big = format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    let (reply, _) = raw(address, big.as_bytes(), Duration::from_secs(30));
    assert_eq!(status_of(&reply), Some(431), "{}", String::from_utf8_lossy(&reply));
    let mut many = String::from("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for i in 0..500 {
        many.push_str(&format!("X-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    refused("500 headers", raw(address, many.as_bytes(), Duration::from_secs(30)));
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "x".repeat(100 * 1024));
    refused("a 100 KiB request target", raw(address, long_target.as_bytes(), Duration::from_secs(30)));
    // The control: a head just under the limit is answered.
    let fits = format!(
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(12 * 1024)
    );
    let (reply, _) = raw(address, fits.as_bytes(), Duration::from_secs(30));
    assert_eq!(status_of(&reply), Some(200));
    still_serves(server);
}

#[test]
fn slowloris() {
    const CLIENTS: usize = 200;
    let server = server();
    let address = server.local_addr();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let outcomes = runtime.block_on(async move {
        let clients: Vec<_> = (0..CLIENTS).map(|_| tokio::spawn(slow_client(address))).collect();
        // A scraper arriving during the attack waits its turn, then is answered.
        let scrape = tokio::task::spawn_blocking(move || get(&format!("http://{address}/metrics")).status);
        let mut outcomes = Vec::new();
        for client in clients {
            outcomes.push(client.await.unwrap());
        }
        (outcomes, scrape.await.unwrap())
    });
    let (outcomes, scraped) = outcomes;
    assert_eq!(scraped, 200, "a normal request during the attack");
    for (i, (status, elapsed)) in outcomes.iter().enumerate() {
        if let Some(status) = status {
            assert_eq!(*status, 408, "slow client #{i}");
        }
        // Each waits at most its turn among MAX_CONNECTIONS, then one header timeout.
        assert!(*elapsed < Duration::from_secs(60), "slow client #{i} held on for {elapsed:?}");
    }
    still_serves(server);
}

/// Sends a never-ending request head one byte a second until the server
/// answers (its status) or closes the connection (`None`).
async fn slow_client(address: SocketAddr) -> (Option<u16>, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n".iter().chain(b"X-Slow: loris\r\n".iter().cycle());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut buf = [0u8; 64];
    for byte in head {
        tokio::select! {
            _ = tick.tick() => {
                if stream.write_all(&[*byte]).await.is_err() {
                    return (None, started.elapsed());
                }
            }
            read = stream.read(&mut buf) => {
                let status = match read {
                    Ok(n) if n > 0 => Some(status_of(&buf[..n]).unwrap_or(0)),
                    _ => None,
                };
                return (status, started.elapsed());
            }
        }
        assert!(started.elapsed() < Duration::from_secs(120), "a slow client was never cut off");
    }
    unreachable!("the head never ends")
}

#[test]
fn non_utf8_paths_and_headers() {
    let server = server();
    let address = server.local_addr();
    for request in [
        &b"GET /\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"[..],
        b"GET /metrics\x80 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /%ff%fe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n",
        b"\xc3\x28 / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ] {
        refused(&String::from_utf8_lossy(request), raw(address, request, Duration::from_secs(30)));
    }
    // A header that is not text is taken as absent.
    let (reply, _) = raw(
        address,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: \xff\xfe\r\nConnection: close\r\n\r\n",
        Duration::from_secs(30),
    );
    assert_eq!(status_of(&reply), Some(200), "{}", String::from_utf8_lossy(&reply));
    still_serves(server);
}

/// Closes with a reset (SO_LINGER 0) instead of a FIN.
fn reset(stream: TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket and a `linger` of the size passed.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "setsockopt SO_LINGER");
    drop(stream);
}

#[test]
fn clients_that_vanish_mid_response_or_never_read() {
    let server = server();
    let address = server.local_addr();
    let request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    for i in 0..200 {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(request).unwrap();
        match i % 4 {
            0 => reset(stream),
            1 => drop(stream),
            _ => {
                // Read the start of the answer, then vanish.
                let mut buf = [0u8; 100];
                stream.read_exact(&mut buf).unwrap();
                assert_eq!(status_of(&buf), Some(200));
                if i % 4 == 2 {
                    reset(stream)
                }
            }
        }
    }

    // Pipelined requests whose answers are never read quickly: bounded by
    // the connection's lifetime, then closed.
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).unwrap();
    let burst: Vec<u8> = request.iter().copied().cycle().take(request.len() * 2000).collect();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || stream.write_all(&burst).is_ok())
    };
    let (mut read, mut buf) = (0usize, [0u8; 1024]);
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = writer.join();
    let elapsed = started.elapsed();
    assert!(elapsed >= CONNECTION_TIMEOUT, "closed after {elapsed:?}, before the connection's time was up");
    assert!(elapsed < CONNECTION_TIMEOUT + HEADER_TIMEOUT + Duration::from_secs(30), "held on for {elapsed:?}");
    assert!(read < 2000 * 6000, "it was cut off before all 2000 answers ({read} bytes read)");
    still_serves(server);
}

#[test]
fn concurrent_scrapes_while_threads_allocate_hard() {
    const SCRAPES: usize = 100;
    let server = server();
    let url = format!("http://{}/metrics", server.local_addr());
    let noise = support::Noise::start(8);
    let before = GLOBAL.stats().allocations as f64;
    noise.overlap(1, || {
        let barrier = Arc::new(Barrier::new(SCRAPES));
        let scrapes: Vec<_> = (0..SCRAPES)
            .map(|_| {
                let (url, barrier) = (url.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    get(&url)
                })
            })
            .collect();
        for scrape in scrapes {
            let reply = scrape.join().unwrap();
            assert_eq!(reply.status, 200);
            assert!(
                reply.body.contains("\nheapprobe_endpoint_current_bytes "),
                "the whole exposition, to its last metric"
            );
            let allocations: f64 = reply
                .body
                .lines()
                .find_map(|l| l.strip_prefix("heapprobe_allocations_total "))
                .expect("a heapprobe_allocations_total sample")
                .parse()
                .unwrap();
            assert!(allocations >= before, "counters only grow");
        }
    });
    drop(noise);
    still_serves(server);
}
