//! A real Prometheus server (Debian's `prometheus` package) scrapes the
//! fixture service every second, and its query API returns the fixture's
//! exact allocation counts; `promtool check metrics` accepts the exposition.

mod endpoint_support;
mod support;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use endpoint_support::{agent, fixture, get, promtool_check, tools_available, Child, Lines};

const TOOLS: [(&str, &str); 2] = [("prometheus", "prometheus"), ("promtool", "prometheus")];

/// The fixture's non-server allocations, as the fixture counts them
/// and as Prometheus computes them from one scrape.
const ALLOCATIONS: &str = "heapprobe_allocations_total - heapprobe_endpoint_allocations_total";
const BYTES: &str = "heapprobe_allocated_bytes_total - heapprobe_endpoint_allocated_bytes_total";

/// The fixture's `allocations N bytes B` line.
fn counts(lines: &Lines) -> (u64, u64) {
    let line = lines.next(Duration::from_secs(60));
    let fields: Vec<&str> = line.split(' ').collect();
    match fields[..] {
        ["allocations", n, "bytes", b] => (n.parse().unwrap(), b.parse().unwrap()),
        _ => panic!("unexpected line from the fixture: {line:?}"),
    }
}

/// A Prometheus server on loopback with its own data directory, killed on
/// drop (and by the kernel if the test dies).
struct Prometheus {
    address: SocketAddr,
    _child: Child,
}

impl Prometheus {
    fn start(dir: &std::path::Path, target: SocketAddr) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: fixture\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // A port that was free a moment ago may be taken meanwhile: try again.
        for _ in 0..5 {
            let address = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
            let log = dir.join("prometheus.log");
            let mut command = Command::new("prometheus");
            command
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address={address}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            let mut child = Child::spawn(&mut command);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(status) = child.child.try_wait().unwrap() {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    if log.contains("address already in use") {
                        break;
                    }
                    panic!("prometheus exited with {status} before it was ready:\n{log}");
                }
                let ready = agent().get(&format!("http://{address}/-/ready")).call();
                if ready.is_ok_and(|r| r.status() == 200) {
                    return Self { address, _child: child };
                }
                assert!(Instant::now() < deadline, "prometheus was not ready within 60 s: {}", log.display());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("prometheus found no free port in 5 tries");
    }

    /// The value of `query` (one series), or `None` while it has none.
    fn query(&self, query: &str) -> Option<u64> {
        let url = format!("http://{}/api/v1/query", self.address);
        let mut response = agent().get(&url).query("query", query).call().unwrap();
        let body = response.body_mut().read_to_string().unwrap();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["status"], "success", "{query}: {body}");
        let result = json["data"]["result"].as_array().unwrap();
        match &result[..] {
            [] => None,
            [series] => {
                let value = series["value"][1].as_str().unwrap();
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("{query} = {value:?}"));
                assert!(value >= 0.0 && value.fract() == 0.0 && value < 2f64.powi(53), "{query} = {value}");
                Some(value as u64)
            }
            _ => panic!("{query}: more than one series: {body}"),
        }
    }

    /// Polls `query` until `done` holds (Prometheus scrapes every second),
    /// checking each value seen meanwhile with `seen`.
    fn wait_for(&self, query: &str, mut seen: impl FnMut(Option<u64>), done: impl Fn(Option<u64>) -> bool) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let value = self.query(query);
            seen(value);
            if done(value) {
                return value.expect("done on a value");
            }
            assert!(Instant::now() < deadline, "{query} stayed at {value:?} for 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn prometheus_scrapes_the_exact_allocation_counts() {
    if !tools_available("prometheus_scrapes_the_exact_allocation_counts", &TOOLS) {
        return;
    }
    let mut service = Child::spawn(Command::new(fixture()).stdin(Stdio::piped()).stdout(Stdio::piped()));
    let lines = service.lines();
    let listening = lines.next(Duration::from_secs(60));
    let target: SocketAddr = listening.strip_prefix("listening ").unwrap().parse().unwrap();
    let (n0, b0) = counts(&lines);

    // What curl and promtool get: the Prometheus text format.
    let metrics = get(&format!("http://{target}/metrics"));
    assert_eq!((metrics.status, metrics.content_type.as_str()), (200, "text/plain; version=0.0.4; charset=utf-8"));
    promtool_check(&metrics.body);

    let dir = support::TempDir::new("endpoint-prometheus");
    let prometheus = Prometheus::start(dir.path(), target);

    // The first scrapes: the main thread is idle, waiting on stdin.
    let before = prometheus.wait_for(ALLOCATIONS, |_| {}, |v| v.is_some());
    assert_eq!(before, n0, "Prometheus's {ALLOCATIONS} against the fixture's own count");
    assert_eq!(prometheus.query(BYTES), Some(b0), "{BYTES}");
    assert_eq!(prometheus.query("up{job=\"fixture\"}"), Some(1));

    // The known workload: 1000 blocks of 4096 bytes.
    use std::io::Write as _;
    service.child.stdin.as_mut().unwrap().write_all(b"work\n").unwrap();
    let (n1, b1) = counts(&lines);
    assert_eq!((n1 - n0, b1 - b0), (1000, 1000 * 4096), "the fixture's own counts of its workload");
    // A scrape may land in the middle of the workload: between the two.
    let after = prometheus.wait_for(
        ALLOCATIONS,
        |v| assert!(v.is_some_and(|v| (n0..=n1).contains(&v)), "{ALLOCATIONS} = {v:?}"),
        |v| v == Some(n1),
    );
    assert_eq!(after, n1);
    assert_eq!(prometheus.query(BYTES), Some(b1), "{BYTES}");

    // The histogram arrived whole: in each scrape (one query evaluates one
    // scrape's samples), +Inf is the count, and the count the allocations.
    let q = "heapprobe_allocation_size_bytes_count - ignoring(le) heapprobe_allocation_size_bytes_bucket{le=\"+Inf\"}";
    assert_eq!(prometheus.query(q), Some(0), "{q}");
    let q = "heapprobe_allocations_total - heapprobe_allocation_size_bytes_count";
    assert_eq!(prometheus.query(q), Some(0), "{q}");
    // Prometheus asked for OpenMetrics and got it: the counters' families
    // are named without `_total` in OpenMetrics, and Prometheus's metadata
    // API reports the family names it parsed.
    let url = format!("http://{}/api/v1/targets/metadata", prometheus.address);
    let mut response = agent().get(&url).query("match_target", "{job=\"fixture\"}").call().unwrap();
    let metadata: serde_json::Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    let families: Vec<&str> =
        metadata["data"].as_array().unwrap().iter().filter_map(|m| m["metric"].as_str()).collect();
    assert!(families.contains(&"heapprobe_allocations"), "OpenMetrics family names expected: {families:?}");
    assert!(families.contains(&"heapprobe_allocation_size_bytes"), "{families:?}");
}
