//! The renderers (OpenMetrics, Prometheus text, JSON), the routes of the
//! standalone server with real clients, where it listens, and the examples.

mod endpoint_support;
mod support;

use std::alloc::System;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use endpoint_support::{build, get, get_with, post, post_with, promtool_check, raw, status_of, tools_available, Child};
use heapprobe::export::{self, Endpoints, Options, Pprof, Profiler, Reply, Response};
use heapprobe::{Heapprobe, Histogram, Stats, BUCKETS};

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

/// Every field different, so a value in the wrong place shows.
fn known_stats() -> Stats {
    let mut buckets = [0u64; BUCKETS];
    for (i, n) in [(0, 1), (3, 2), (12, 5), (31, 7), (32, 11), (63, 13)] {
        buckets[i] = n;
    }
    Stats {
        allocations: 39,
        deallocations: 17,
        reallocations: 23,
        bytes_allocated: 1_000_003,
        bytes_deallocated: 500_007,
        bytes_reallocated: 9,
        reallocations_grown: 19,
        bytes_grown: 1_009,
        reallocations_shrunk: 4,
        bytes_shrunk: 1_000,
        reallocations_moved: 3,
        bytes_moved: 77,
        allocation_failures: 2,
        current: 499_996,
        peak: 600_001,
        size_histogram: Histogram::from_buckets(buckets),
        grow_histogram: Histogram::new(),
        shrink_histogram: Histogram::new(),
    }
}

/// An exposition, read strictly: families with their type, samples with
/// their value. A line of any other shape fails the test.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    helps: BTreeMap<String, String>,
    units: BTreeMap<String, String>,
    samples: BTreeMap<String, f64>,
    eof: bool,
}

fn parse(text: &str, openmetrics: bool) -> Exposition {
    let mut out = Exposition::default();
    for line in text.lines() {
        assert!(!out.eof, "a line after # EOF: {line:?}");
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (kind, name, value) = (words.next().unwrap(), words.next().unwrap_or(""), words.next().unwrap_or(""));
            let map = match kind {
                "HELP" => &mut out.helps,
                "TYPE" => &mut out.types,
                "UNIT" if openmetrics => &mut out.units,
                "EOF" if openmetrics && name.is_empty() => {
                    out.eof = true;
                    continue;
                }
                _ => panic!("unexpected comment line: {line:?}"),
            };
            assert!(!value.is_empty(), "empty {kind} for {name}");
            assert!(map.insert(name.to_owned(), value.to_owned()).is_none(), "two {kind} lines for {name}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let ok_name = series.chars().all(|c| c.is_ascii_alphanumeric() || "_{}=\".+".contains(c));
        assert!(ok_name && series.starts_with("heapprobe_"), "unexpected sample: {line:?}");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line:?}"));
        assert!(out.samples.insert(series.to_owned(), value).is_none(), "two samples {series}");
    }
    assert_eq!(out.eof, openmetrics, "# EOF ends OpenMetrics text, and only it");
    out
}

/// (sample, field value) for every counter and gauge, by `Stats` field.
fn expected_samples(s: &Stats) -> Vec<(&'static str, usize)> {
    vec![
        ("heapprobe_allocations_total", s.allocations),
        ("heapprobe_allocated_bytes_total", s.bytes_allocated),
        ("heapprobe_deallocations_total", s.deallocations),
        ("heapprobe_deallocated_bytes_total", s.bytes_deallocated),
        ("heapprobe_reallocations_total", s.reallocations),
        ("heapprobe_reallocations_grown_total", s.reallocations_grown),
        ("heapprobe_realloc_grown_bytes_total", s.bytes_grown),
        ("heapprobe_reallocations_shrunk_total", s.reallocations_shrunk),
        ("heapprobe_realloc_shrunk_bytes_total", s.bytes_shrunk),
        ("heapprobe_reallocations_moved_total", s.reallocations_moved),
        ("heapprobe_realloc_moved_bytes_total", s.bytes_moved),
        ("heapprobe_allocation_failures_total", s.allocation_failures),
        ("heapprobe_current_bytes", s.current),
        ("heapprobe_peak_bytes", s.peak),
    ]
}

fn check_values(e: &Exposition, s: &Stats) {
    for (sample, value) in expected_samples(s) {
        assert_eq!(e.samples.get(sample), Some(&(value as f64)), "{sample}");
    }
    let bucket = |le: &str| e.samples[&format!("heapprobe_allocation_size_bytes_bucket{{le=\"{le}\"}}")];
    // Cumulative counts at heapprobe's own bounds: bucket i is le=2^(i+1)-1.
    assert_eq!(bucket("1.0"), 1.0);
    assert_eq!(bucket("7.0"), 1.0);
    assert_eq!(bucket("15.0"), 3.0);
    assert_eq!(bucket("4095.0"), 3.0);
    assert_eq!(bucket("8191.0"), 8.0);
    assert_eq!(bucket("2147483647.0"), 8.0);
    assert_eq!(bucket("4294967295.0"), 15.0);
    assert_eq!(bucket("+Inf"), 39.0, "buckets 32 and 63 are beyond the last bound");
    let buckets = e.samples.keys().filter(|k| k.starts_with("heapprobe_allocation_size_bytes_bucket")).count();
    assert_eq!(buckets, export::SIZE_BUCKETS + 1);
    assert_eq!(e.samples["heapprobe_allocation_size_bytes_count"], 39.0);
    assert_eq!(e.samples["heapprobe_allocation_size_bytes_sum"], (1_000_003 - 1_009) as f64);
    assert_eq!(e.samples.len(), expected_samples(s).len() + export::SIZE_BUCKETS + 3, "{:#?}", e.samples);
}

#[test]
fn openmetrics_text_has_every_field_at_its_place() {
    let stats = known_stats();
    let text = export::openmetrics_text(&stats);
    let e = parse(&text, true);
    check_values(&e, &stats);
    for (sample, _) in expected_samples(&stats) {
        // OpenMetrics names a counter's family without `_total`.
        let family = sample.strip_suffix("_total").unwrap_or(sample);
        let kind = if sample.ends_with("_total") { "counter" } else { "gauge" };
        assert_eq!(e.types.get(family).map(String::as_str), Some(kind), "{family}");
        assert!(e.helps.contains_key(family), "{family} has no HELP");
        assert_eq!(e.units.contains_key(family), family.ends_with("_bytes"), "{family}: UNIT iff bytes");
    }
    assert_eq!(e.types["heapprobe_allocation_size_bytes"], "histogram");
    assert_eq!(e.types.len(), expected_samples(&stats).len() + 1);
}

#[test]
fn prometheus_text_is_the_same_samples_in_the_0_0_4_format() {
    let stats = known_stats();
    let text = export::prometheus_text(&stats);
    let e = parse(&text, false);
    check_values(&e, &stats);
    for (sample, _) in expected_samples(&stats) {
        let kind = if sample.ends_with("_total") { "counter" } else { "gauge" };
        assert_eq!(e.types.get(sample).map(String::as_str), Some(kind), "{sample}");
        assert!(e.helps.contains_key(sample), "{sample} has no HELP");
    }
    assert!(e.units.is_empty());
    if tools_available("prometheus_text_is_the_same_samples_in_the_0_0_4_format", &[("promtool", "prometheus")]) {
        promtool_check(&text);
    }
}

#[test]
fn the_collector_joins_an_existing_registry_in_one_line() {
    use prometheus_client::registry::Registry;
    let mut registry = Registry::with_prefix("app");
    registry.register_collector(Box::new(export::Collector::new(&GLOBAL)));
    let before = GLOBAL.stats();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let after = GLOBAL.stats();
    let e = parse(&text.replace("app_heapprobe_", "heapprobe_"), true);
    // Read live, between two reads of ours: counters in between.
    let allocations = e.samples["heapprobe_allocations_total"] as usize;
    assert!((before.allocations..=after.allocations).contains(&allocations), "{allocations}");
    assert!(allocations > 0, "the test harness has allocated");
}

#[test]
fn stats_json_is_every_field_by_name() {
    let stats = known_stats();
    let json: serde_json::Value = serde_json::from_str(&export::stats_json(&stats)).unwrap();
    assert_eq!(json["allocations"], 39);
    assert_eq!(json["bytes_allocated"], 1_000_003);
    assert_eq!(json["bytes_reallocated"], 9);
    assert_eq!(json["peak"], 600_001);
    assert_eq!(json["size_histogram"]["buckets"][63], 13);
    assert_eq!(json.as_object().unwrap().len(), 18, "one key per field of Stats");
}

/// The README's Production section, up to the next `## ` heading.
fn production_section() -> String {
    let readme = std::fs::read_to_string(support::root().join("README.md")).unwrap();
    let start = readme.find("\n## Production\n").expect("README.md has a Production section");
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    section[..end].to_owned()
}

#[test]
fn the_readme_names_every_metric() {
    let production = production_section();
    for (sample, _) in expected_samples(&Stats::default()) {
        assert!(production.contains(&format!("`{sample}`")), "README's Production section does not name {sample}");
    }
    // Every family the server exposes, its own overhead included.
    let server = start();
    let e = parse(&get(&format!("http://{}/metrics", server.local_addr())).body, false);
    server.shutdown().unwrap();
    assert_eq!(e.types.len(), expected_samples(&Stats::default()).len() + 1 + 6);
    for family in e.types.keys() {
        assert!(production.contains(&format!("`{family}`")), "README's Production section does not name {family}");
    }
}

/// The README's Rust snippets there cannot be doctests (they need the
/// `server` feature): each of their lines is in a file that is compiled
/// with it, so they cannot rot.
#[test]
fn the_readme_snippets_are_code_that_compiles() {
    let root = support::root();
    let mut sources = String::new();
    for file in ["examples/serve.rs", "examples/axum.rs", "src/export/prometheus.rs"] {
        sources.push_str(&std::fs::read_to_string(root.join(file)).unwrap());
    }
    let production = production_section();
    let mut snippets = 0;
    for block in production.split("```rust,ignore\n").skip(1) {
        snippets += 1;
        for line in block.split("```").next().unwrap().lines().map(str::trim).filter(|l| !l.is_empty()) {
            assert!(sources.contains(line), "README snippet line not in the examples: {line:?}");
        }
    }
    assert_eq!(snippets, 3, "the snippets checked");
}

fn start() -> heapprobe::export::Server {
    let mut options = Options::default();
    options.address.set_port(0);
    heapprobe::serve_with(&GLOBAL, options).unwrap()
}

fn stats_of(address: SocketAddr) -> serde_json::Value {
    let reply = get(&format!("http://{address}/stats"));
    assert_eq!((reply.status, reply.content_type.as_str()), (200, "application/json"));
    serde_json::from_str(&reply.body).unwrap()
}

#[test]
fn every_route_answers_with_the_right_status() {
    let server = start();
    let at = |path: &str| format!("http://{}{path}", server.local_addr());

    let index = get(&at("/"));
    assert_eq!(index.status, 200);
    for path in Endpoints::PATHS {
        assert!(index.body.contains(path), "the index lists {path}: {}", index.body);
    }

    let metrics = get(&at("/metrics"));
    assert_eq!((metrics.status, metrics.content_type.as_str()), (200, export::PROMETHEUS_CONTENT_TYPE));
    let e = parse(&metrics.body, false);
    assert!(e.samples["heapprobe_endpoint_requests_total"] >= 2.0, "the index, then this");
    assert!(e.samples["heapprobe_endpoint_allocations_total"] > 0.0, "serving allocates");
    assert!(e.samples["heapprobe_allocations_total"] >= e.samples["heapprobe_endpoint_allocations_total"]);
    let openmetrics = get_with(&at("/metrics"), "accept", "application/openmetrics-text;version=1.0.0,*/*;q=0.1");
    assert_eq!(openmetrics.content_type, export::OPENMETRICS_CONTENT_TYPE);
    parse(&openmetrics.body, true);
    let refused = get_with(&at("/metrics"), "accept", "application/openmetrics-text;q=0, text/plain");
    assert_eq!(refused.content_type, export::PROMETHEUS_CONTENT_TYPE);

    // The endpoint's share: each request counted once, by this server.
    let first = stats_of(server.local_addr());
    let second = stats_of(server.local_addr());
    let requests = |s: &serde_json::Value| s["endpoint"]["requests"].as_u64().unwrap();
    assert_eq!(requests(&second), requests(&first) + 1);
    assert!(second["endpoint"]["allocations"].as_u64() > first["endpoint"]["allocations"].as_u64());
    assert!(second["process"]["allocations"].as_u64() >= second["endpoint"]["allocations"].as_u64());

    // HEAD: the headers of GET, no body.
    let head = endpoint_support::agent().head(&at("/metrics")).call().unwrap();
    assert_eq!(head.status(), 200);
    let length: usize = head.headers()["content-length"].to_str().unwrap().parse().unwrap();
    assert!(length > 1000);
    let (bytes, _) = raw(
        server.local_addr(),
        b"HEAD /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 ") && text.ends_with("\r\n\r\n"), "no body after HEAD: {text:?}");

    for (path, status, says) in [
        ("/debug/pprof/heap", 501, "profiler"),
        ("/debug/pprof/allocs", 501, "profiler"),
        ("/debug/pprof/allocs?seconds=5", 501, "profiler"),
        ("/debug/pprof/allocs?seconds=0", 400, "from 1 to 60"),
        ("/debug/pprof/allocs?seconds=61", 400, "from 1 to 60"),
        ("/debug/pprof/heap?seconds=x", 400, "from 1 to 60"),
        ("/debug/pprof/heap?debug=1", 400, "unknown parameter \"debug\""),
        ("/debug/pprof/heap?gc=1", 501, "profiler"),
        ("/debug/heap/live", 501, "profiler"),
        ("/nope", 404, "/metrics"),
        ("/metrics/", 404, "/debug/pprof/heap"),
        ("/%FF%FE", 404, "no route"),
    ] {
        let reply = get(&at(path));
        assert_eq!(reply.status, status, "GET {path}: {reply:?}");
        assert!(reply.body.contains(says), "GET {path} says {says:?}: {}", reply.body);
    }

    // Routes that change state take POST only, and read-only routes refuse it.
    for path in ["/reset-peak", "/profiler/start", "/profiler/stop"] {
        let reply = get(&at(path));
        assert_eq!((reply.status, reply.allow.as_deref()), (405, Some("POST")), "GET {path}");
        let reply = endpoint_support::agent().put(&at(path)).send_empty().unwrap();
        assert_eq!(reply.status(), 405, "PUT {path}");
    }
    for path in ["/profiler/start", "/profiler/stop"] {
        assert_eq!(post(&at(path)).status, 501, "POST {path}");
    }
    for path in ["/metrics", "/stats", "/debug/pprof/heap", "/"] {
        let reply = post(&at(path));
        assert_eq!((reply.status, reply.allow.as_deref()), (405, Some("GET, HEAD")), "POST {path}");
    }
    server.shutdown().unwrap();
}

#[test]
fn reset_peak_takes_a_post_from_a_program_not_from_a_web_page() {
    let server = start();
    let url = format!("http://{}/reset-peak", server.local_addr());
    const BIG: usize = 64 << 20;
    let peak_after_big_block = || {
        drop(std::hint::black_box(vec![1u8; BIG]));
        let stats = GLOBAL.stats();
        assert!(stats.peak >= stats.current + BIG / 2, "the control: a 64 MiB block raised the peak: {stats:?}");
    };

    peak_after_big_block();
    // A browser sends Origin: refused, and nothing changed.
    let reply = post_with(&url, "origin", "http://evil.example");
    assert_eq!(reply.status, 403, "{reply:?}");
    let stats = GLOBAL.stats();
    assert!(stats.peak >= stats.current + BIG / 2, "a refused POST left the peak alone");
    // DNS rebinding: a page whose name now points to 127.0.0.1.
    let reply = get_with(&format!("http://{}/stats", server.local_addr()), "host", "evil.example:6060");
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(reply.body.contains("DNS rebinding"));
    assert_eq!(get_with(&format!("http://{}/stats", server.local_addr()), "host", "localhost:6060").status, 200);

    let reply = post(&url);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.starts_with("heapprobe: peak reset"), "{}", reply.body);
    let stats = GLOBAL.stats();
    assert!(stats.peak < stats.current + BIG / 2, "the peak restarted near the current use: {stats:?}");
    server.shutdown().unwrap();
}

/// A stand-in for the profiler, to pin down the plug-in contract.
#[derive(Default)]
struct FakeProfiler {
    snapshots: AtomicUsize,
    started: AtomicUsize,
}

impl Profiler for FakeProfiler {
    fn pprof(&self, kind: Pprof) -> Response {
        Response::new(200, "application/octet-stream", format!("profile {kind:?}"))
            .with_header("content-disposition", "attachment; filename=\"profile\"")
    }
    fn pprof_delta(&self, kind: Pprof) -> Result<Box<dyn FnOnce() -> Response + Send>, Response> {
        let first = self.snapshots.fetch_add(1, Ordering::SeqCst);
        let taken = Instant::now();
        Ok(Box::new(move || {
            Response::text(200, format!("delta {kind:?} from snapshot {first} after {:?}", taken.elapsed()))
        }))
    }
    fn start(&self) -> Response {
        self.started.fetch_add(1, Ordering::SeqCst);
        Response::text(200, "started\n")
    }
    fn live(&self, query: Option<&str>) -> Response {
        if query == Some("panic") {
            panic!("a profiler bug");
        }
        Response::new(
            200,
            "application/json",
            r#"{"length_memory_array":0,"memory":[],"memory_allocated":0,"total_memory":0}"#,
        )
    }
}

#[test]
fn a_profiler_plugs_into_the_routes() {
    let profiler = Arc::new(FakeProfiler::default());
    let mut options = Options::default();
    options.address.set_port(0);
    options.profiler = Some(profiler.clone());
    let server = heapprobe::serve_with(&GLOBAL, options).unwrap();
    let at = |path: &str| format!("http://{}{path}", server.local_addr());

    let heap = get(&at("/debug/pprof/heap"));
    assert_eq!((heap.status, heap.body.as_str()), (200, "profile Heap"));
    assert_eq!(get(&at("/debug/pprof/allocs")).body, "profile Allocs");
    let started = Instant::now();
    let delta = get(&at("/debug/pprof/allocs?seconds=1"));
    assert!(started.elapsed() >= Duration::from_secs(1), "the delta waited its second");
    assert!(delta.body.starts_with("delta Allocs from snapshot 0 after 1."), "{}", delta.body);
    // The wait is asynchronous: another request is answered meanwhile.
    let slow = std::thread::spawn({
        let url = at("/debug/pprof/heap?seconds=3");
        move || (get(&url), Instant::now())
    });
    while profiler.snapshots.load(Ordering::SeqCst) < 2 {
        std::thread::yield_now();
    }
    assert_eq!(get(&at("/metrics")).status, 200, "answered while a delta profile waits");
    let answered = Instant::now();
    let (reply, delta_at) = slow.join().unwrap();
    assert!(reply.body.starts_with("delta Heap from snapshot 1 after 3."), "{}", reply.body);
    assert!(answered < delta_at, "/metrics was answered before the delta profile");

    assert_eq!(post(&at("/profiler/start")).body, "started\n");
    assert_eq!(profiler.started.load(Ordering::SeqCst), 1);
    assert_eq!(post(&at("/profiler/stop")).status, 501, "not provided: the default answers");
    let live: serde_json::Value = serde_json::from_str(&get(&at("/debug/heap/live")).body).unwrap();
    assert_eq!(live["length_memory_array"], 0);
    // A panicking profiler: 500, and the server goes on.
    let reply = get(&at("/debug/heap/live?panic"));
    assert_eq!(reply.status, 500, "{reply:?}");
    assert_eq!(get(&at("/metrics")).status, 200);
    assert!(server.is_running());
    server.shutdown().unwrap();
}

#[test]
fn endpoints_answer_without_a_server() {
    let endpoints = Endpoints::new(&GLOBAL);
    let Reply::Now(reply) = endpoints.respond("GET", "/stats", None, None) else { panic!("no wait") };
    assert_eq!(reply.status, 200);
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert!(json["process"]["allocations"].as_u64() > Some(0));
    assert!(json.get("endpoint").is_none(), "no server thread, so no overhead of its own");
    let Reply::Now(reply) = endpoints.respond("DELETE", "/metrics", None, None) else { panic!("no wait") };
    assert_eq!(reply.status, 405);
}

/// This machine's first non-loopback IPv4 address that is up.
fn non_loopback_address() -> Option<IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, which is freed below.
    assert_eq!(unsafe { libc::getifaddrs(&mut list) }, 0, "getifaddrs");
    let mut found = None;
    let mut next = list;
    while !next.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let entry = unsafe { &*next };
        let up = entry.ifa_flags & libc::IFF_UP as u32 != 0 && entry.ifa_flags & libc::IFF_LOOPBACK as u32 == 0;
        // SAFETY: ifa_addr, when not null, points to a sockaddr of its family.
        if up && !entry.ifa_addr.is_null() && i32::from(unsafe { (*entry.ifa_addr).sa_family }) == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let addr = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
            found = Some(IpAddr::from(u32::from_be(addr.sin_addr.s_addr).to_be_bytes()));
            break;
        }
        next = entry.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs.
    unsafe { libc::freeifaddrs(list) };
    found
}

#[test]
fn by_default_it_is_not_reachable_from_the_network() {
    let defaults = Options::default();
    assert_eq!(defaults.address, SocketAddr::from(([127, 0, 0, 1], 6060)));
    let Some(ip) = non_loopback_address() else {
        let message =
            "SKIPPED by_default_it_is_not_reachable_from_the_network: this machine has no non-loopback IPv4 address";
        assert!(!support::in_ci(), "CI=true: {message}");
        eprintln!("\n========== {message} ==========\n");
        return;
    };
    let server = start();
    let port = server.local_addr().port();
    let refused = TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(5));
    assert!(refused.is_err(), "the default server answered on {ip}:{port}");
    assert_eq!(get(&format!("http://127.0.0.1:{port}/metrics")).status, 200);
    server.shutdown().unwrap();

    // The control: named explicitly, all interfaces are reachable.
    let open = heapprobe::serve(&GLOBAL, "0.0.0.0:0").unwrap();
    let reply = get(&format!("http://{ip}:{}/metrics", open.local_addr().port()));
    assert_eq!(reply.status, 200, "{reply:?}");
    open.shutdown().unwrap();
}

#[test]
fn errors_say_what_went_wrong_and_where() {
    let server = start();
    let taken = server.local_addr();
    let error = heapprobe::serve(&GLOBAL, taken).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    let message = error.to_string();
    assert!(message.contains(&taken.to_string()) && message.contains("port 0"), "{message}");
    // Go's ":6060" means every interface; here it is not an address at all.
    assert!(heapprobe::serve(&GLOBAL, ":6060").is_err());
    let mut options = Options::default();
    options.address.set_port(0);
    options.max_header_bytes = 100;
    let message = heapprobe::serve_with(&GLOBAL, options).unwrap_err().to_string();
    assert!(message.contains("max_header_bytes must be at least 8192"), "{message}");

    server.shutdown().unwrap();
    assert!(TcpStream::connect(taken).is_err(), "nothing listens after shutdown");
}

#[test]
fn the_raw_request_forms_a_client_may_send() {
    let server = start();
    let send = |request: &[u8]| raw(server.local_addr(), request, Duration::from_secs(10));
    // HTTP/1.0 without Host, and an absolute-form target.
    let (reply, _) = send(b"GET /stats HTTP/1.0\r\n\r\n");
    assert!(reply.starts_with(b"HTTP/1.0 200 "), "{}", String::from_utf8_lossy(&reply));
    let (reply, _) = send(b"GET http://127.0.0.1/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&reply), Some(200));
    server.shutdown().unwrap();
}

#[test]
fn the_examples_serve_the_routes() {
    for (args, name, address) in [
        (&["--package", "heapprobe", "--features", "server", "--example", "axum"][..], "axum", "127.0.0.1:0"),
        (&["--package", "heapprobe", "--features", "server", "--example", "serve"][..], "serve", "127.0.0.1:0"),
    ] {
        let exe = build(args, name);
        let mut example = Child::spawn(Command::new(exe).arg(address).stdout(Stdio::piped()));
        let lines = example.lines();
        let line = lines.next(Duration::from_secs(60));
        let address: SocketAddr =
            line.strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).parse().unwrap();
        let at = |path: &str| format!("http://{address}{path}");
        let metrics = get(&at("/metrics"));
        assert_eq!(metrics.status, 200, "{name}");
        assert!(parse(&metrics.body, false).samples["heapprobe_allocations_total"] > 0.0);
        assert_eq!(get(&at("/stats")).status, 200, "{name}");
        assert_eq!(get(&at("/reset-peak")).status, 405, "{name}");
        assert_eq!(post(&at("/reset-peak")).status, 200, "{name}");
        assert_eq!(post_with(&at("/reset-peak"), "origin", "http://evil.example").status, 403, "{name}");
        assert_eq!(get(&at("/debug/pprof/heap")).status, 501, "{name}");
        if name == "axum" {
            assert_eq!(get(&at("/")).body, "the application's own routes go here\n");
        }
    }
}
