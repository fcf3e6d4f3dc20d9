//! What being scraped costs a service: the HashMap workload of
//! `benches/overhead.rs` (100 000 `String` → 16-byte `Vec` entries, built
//! and dropped) timed with and without a scraper that GETs heapprobe's
//! standalone server once a second, in three configurations:
//!
//! - `off`: the profiler off, `/metrics` scraped (Prometheus);
//! - `sampled`: the profiler on at 512 KiB, `/metrics`, `/debug/pprof/heap`
//!   and `/debug/pprof/allocs` scraped (Prometheus plus Pyroscope or Parca);
//! - `exact`: the profiler at rate 1 (the exact live map), the same plus
//!   `/debug/heap/live?limit=1000` (its 1000 largest blocks). With
//!   `--whole-live-map`, the whole live map (the route's default limit) is
//!   also requested once, in the warm-up, and measured the same way (about
//!   a minute of the server's CPU on a 2-core VM).
//!
//! ```text
//! cargo bench --bench endpoint --features server            # 8 rounds: 3 to 5 minutes
//! cargo bench --bench endpoint --features server -- 20      # 20 rounds
//! cargo bench --bench endpoint --features server -- --whole-live-map   # and the whole live map, once
//! ```
//!
//! Each round runs every configuration unscraped and scraped, in an order
//! that reverses from one round to the next, and each round's ratios are
//! taken within the round (the profiler runs through both runs of its
//! configuration), so that the machine's drift between minutes cancels out;
//! the median over rounds is reported, with the spread. A run lasts about
//! 2.5 s (the iterations per run are chosen in the warm-up), so two or three
//! scrapes land in each scraped run (fewer with the exact profiler, whose
//! scrapes take longer than a second).
//!
//! Measured, not estimated: the workload thread's wall and CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`); the server thread's CPU time around each
//! request, per route, and over whole runs (the scheduler's own count, from
//! `/proc/self/task/TID/schedstat`); the server's allocations per request,
//! per route, from its own counters (`/stats` before and after the route,
//! minus what a `/stats` costs, in the warm-up while the workload runs).

use std::alloc::System;
use std::collections::HashMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use heapprobe::profile::Options;
use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

/// Rounds unless the command line gives a number.
const ROUNDS: usize = 8;
/// About how long each run lasts.
const RUN: Duration = Duration::from_millis(2500);
/// Allocation measurements per route in the warm-up.
const CALIBRATIONS: usize = 5;
/// What Prometheus 2 sends in `Accept`.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                                 version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// A configuration of the profiler, and the routes scraped in it.
struct Config {
    name: &'static str,
    /// The profiler's rate, or `None` for off.
    rate: Option<u64>,
    routes: &'static [&'static str],
}

const CONFIGS: [Config; 3] = [
    Config { name: "off", rate: None, routes: &["/metrics"] },
    Config {
        name: "sampled, 512 KiB",
        rate: Some(512 * 1024),
        routes: &["/metrics", "/debug/pprof/heap", "/debug/pprof/allocs"],
    },
    Config {
        name: "exact (rate 1)",
        rate: Some(1),
        routes: &["/metrics", "/debug/pprof/heap", "/debug/pprof/allocs", "/debug/heap/live?limit=1000"],
    },
];

/// The whole live map (the route's default limit, 100 000 blocks), which
/// the exact configuration's warm-up requests once.
const WHOLE_LIVE_MAP: &str = "/debug/heap/live";

/// The HashMap workload of `benches/overhead.rs`.
fn hashmap_100k() -> HashMap<String, Vec<u8>> {
    let mut map = HashMap::new();
    for i in 0..100_000u32 {
        map.insert(i.to_string(), vec![0u8; 16]);
    }
    map
}

/// This thread's time on a CPU: unlike wall time, it leaves out the time
/// the workload waited for a CPU that other processes held.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid out-pointer.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) }, 0);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The workload `iterations` times: (wall time, this thread's CPU time).
fn run(iterations: usize) -> (Duration, Duration) {
    let (started, cpu) = (Instant::now(), thread_cpu());
    for _ in 0..iterations {
        drop(black_box(hashmap_100k()));
    }
    (started.elapsed(), thread_cpu() - cpu)
}

/// The server thread's `schedstat` file: its first field is the thread's
/// time on a CPU in nanoseconds (the scheduler's own count; `stat` has
/// 10 ms ticks).
fn server_schedstat() -> PathBuf {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| {
            let path = task.ok()?.path();
            let comm = std::fs::read_to_string(path.join("comm")).ok()?;
            // The kernel keeps 15 characters of a thread's name.
            (comm.trim() == "heapprobe-serve").then(|| path.join("schedstat"))
        })
        .next()
        .expect("the heapprobe-server thread")
}

fn cpu_of(schedstat: &PathBuf) -> Duration {
    let text = std::fs::read_to_string(schedstat).expect("schedstat");
    Duration::from_nanos(text.split(' ').next().and_then(|ns| ns.parse().ok()).expect("schedstat's first field"))
}

/// What the scraper does now: nothing, scrape configuration `c` at its
/// ticks (`1 + c`), or measure its routes' allocations back to back
/// (`1 + CONFIGS.len() + c`).
static JOB: AtomicUsize = AtomicUsize::new(IDLE);
const IDLE: usize = 0;
/// Request the whole live map once (exact configuration).
const WHOLE: usize = usize::MAX;

/// One request to one route, in one configuration.
struct Sample {
    config: usize,
    route: usize,
    /// The server thread's CPU time from before the request to the end of
    /// the response.
    server_cpu: Duration,
    /// The client's time from sending to the end of the response.
    wall: Duration,
    bytes: usize,
}

/// One allocation measurement of one route (`route == routes.len()`: the
/// `/stats` it was measured with).
struct Allocations {
    config: usize,
    route: usize,
    allocations: i64,
    bytes: i64,
}

#[derive(Default)]
struct Results {
    samples: Vec<Sample>,
    allocations: Vec<Allocations>,
    /// Whether a live map answer said `"truncated":true`.
    live_truncated: bool,
    live_blocks: usize,
    /// Requests that failed once (and succeeded when tried again).
    retried: Vec<String>,
}

struct Scraper {
    base: String,
    agent: ureq::Agent,
    schedstat: PathBuf,
    results: Arc<Mutex<Results>>,
    /// Held while a request is in flight, so that a run starts only once the
    /// last scrape of the previous run has ended.
    busy: Arc<Mutex<()>>,
    whole: Arc<Mutex<Option<(Sample, Allocations)>>>,
}

impl Scraper {
    /// GETs `path` and checks the answer is what that route serves.
    fn get(&self, path: &str, exact: bool) -> Vec<u8> {
        let url = format!("{}{path}", self.base);
        let fetch = || -> Result<(u16, Vec<u8>), ureq::Error> {
            let mut request = self.agent.get(&url);
            if path == "/metrics" {
                request = request.header("accept", PROMETHEUS_ACCEPT);
            }
            let mut response = request.call()?;
            let body = response.body_mut().with_config().limit(u64::MAX).read_to_vec()?;
            Ok((response.status().as_u16(), body))
        };
        let (status, body) = fetch()
            .or_else(|e| {
                // The server closes a kept-alive connection at the end of its
                // lifetime (30 s) or idle time (5 s); a request sent as it
                // closes fails, and a scraper tries again on a new one.
                self.results.lock().unwrap().retried.push(format!("GET {path}: {e}"));
                fetch()
            })
            .unwrap_or_else(|e| panic!("GET {url}, tried twice: {e}"));
        let ok = status == 200
            && match path {
                "/metrics" => body.windows(28).any(|w| w == b"heapprobe_allocations_total "),
                "/stats" => body.starts_with(b"{\"process\":"),
                // gzip's magic number.
                p if p.starts_with("/debug/pprof/") => body.starts_with(&[0x1f, 0x8b]),
                p if p.starts_with("/debug/heap/live") => {
                    let text = std::str::from_utf8(&body).expect("the live map is UTF-8");
                    let wanted = if exact { "\"exact\":true" } else { "\"exact\":false" };
                    if let Some(blocks) = text.split("\"live_blocks\":").nth(1) {
                        let mut results = self.results.lock().unwrap();
                        results.live_blocks =
                            results.live_blocks.max(blocks.split(',').next().unwrap().parse().unwrap());
                        results.live_truncated |= text.contains("\"truncated\":true");
                    }
                    text.starts_with("{\"length_memory_array\":") && text.contains(wanted)
                }
                _ => unreachable!(),
            };
        assert!(ok, "GET {url} answered {status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)]));
        body
    }

    /// The server's own allocations and bytes so far, from `/stats`.
    fn endpoint_allocations(&self) -> (i64, i64) {
        let stats: serde_json::Value = serde_json::from_slice(&self.get("/stats", false)).expect("/stats is JSON");
        let endpoint = &stats["endpoint"];
        (endpoint["allocations"].as_i64().unwrap(), endpoint["bytes_allocated"].as_i64().unwrap())
    }

    fn scrape(&self, config: usize) {
        let exact = CONFIGS[config].rate == Some(1);
        for (route, path) in CONFIGS[config].routes.iter().enumerate() {
            let (cpu, started) = (cpu_of(&self.schedstat), Instant::now());
            let bytes = self.get(path, exact).len();
            let (wall, server_cpu) = (started.elapsed(), cpu_of(&self.schedstat) - cpu);
            self.results.lock().unwrap().samples.push(Sample { config, route, server_cpu, wall, bytes });
        }
    }

    /// Each route's allocations: between two `/stats`, less what the
    /// `/stats` between two others costs.
    fn calibrate(&self, config: usize) {
        let exact = CONFIGS[config].rate == Some(1);
        let routes = CONFIGS[config].routes;
        let mut measured = Vec::new();
        for (route, path) in routes.iter().enumerate() {
            let before = self.endpoint_allocations();
            self.get(path, exact);
            let after = self.endpoint_allocations();
            measured.push((route, after.0 - before.0, after.1 - before.1));
        }
        let before = self.endpoint_allocations();
        let after = self.endpoint_allocations();
        let stats = (after.0 - before.0, after.1 - before.1);
        let mut results = self.results.lock().unwrap();
        for (route, allocations, bytes) in measured {
            results.allocations.push(Allocations {
                config,
                route,
                allocations: allocations - stats.0,
                bytes: bytes - stats.1,
            });
        }
        results.allocations.push(Allocations { config, route: routes.len(), allocations: stats.0, bytes: stats.1 });
    }

    /// The whole live map once, measured as a route of `config` is: server
    /// CPU, time, size, and allocations between two `/stats`.
    fn whole_live_map(&self, config: usize) -> (Sample, Allocations) {
        let stats_before = self.endpoint_allocations();
        let stats_after = self.endpoint_allocations();
        let before = self.endpoint_allocations();
        let (cpu, started) = (cpu_of(&self.schedstat), Instant::now());
        let bytes = self.get(WHOLE_LIVE_MAP, true).len();
        let (wall, server_cpu) = (started.elapsed(), cpu_of(&self.schedstat) - cpu);
        let after = self.endpoint_allocations();
        let route = CONFIGS[config].routes.len();
        (
            Sample { config, route, server_cpu, wall, bytes },
            Allocations {
                config,
                route,
                allocations: after.0 - before.0 - (stats_after.0 - stats_before.0),
                bytes: after.1 - before.1 - (stats_after.1 - stats_before.1),
            },
        )
    }

    /// Scrapes once a second, as Prometheus would, while `JOB` says so.
    fn serve_forever(self) {
        let mut tick = Instant::now();
        loop {
            tick += Duration::from_secs(1);
            let now = Instant::now();
            // A scrape that overran its second skips the ticks it missed,
            // as Prometheus does.
            while tick <= now {
                tick += Duration::from_secs(1);
            }
            std::thread::sleep(tick - now);
            let _busy = self.busy.lock().unwrap();
            match JOB.load(Relaxed) {
                IDLE => {}
                WHOLE => {
                    let whole = self.whole_live_map(CONFIGS.len() - 1);
                    *self.whole.lock().unwrap() = Some(whole);
                    JOB.store(IDLE, Relaxed);
                }
                job if job <= CONFIGS.len() => self.scrape(job - 1),
                job => {
                    while JOB.load(Relaxed) == job {
                        self.calibrate(job - 1 - CONFIGS.len());
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
    }
}

/// Sets the scraper's job to idle and waits for its request in flight.
fn idle(busy: &Mutex<()>) {
    JOB.store(IDLE, Relaxed);
    drop(busy.lock().unwrap());
}

fn start_profiler(config: &Config) {
    if let Some(rate) = config.rate {
        let mut options = Options::default();
        options.rate = rate;
        GLOBAL.start_profiler(options).expect("start the profiler");
    }
}

fn stop_profiler(config: &Config) {
    if config.rate.is_some() {
        let profile = GLOBAL.stop_profiler().expect("the profiler was running");
        black_box(profile);
    }
}

fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    let half = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[half - 1] + values[half]) / 2.0
    } else {
        values[half]
    }
}

/// `median·unit (min to max)`, with `digits` decimals.
fn spread(values: &[f64], digits: usize, unit: &str) -> String {
    let (low, high) =
        (values.iter().copied().fold(f64::MAX, f64::min), values.iter().copied().fold(f64::MIN, f64::max));
    if values.len() == 1 {
        return format!("{:.digits$}{unit}", values[0]);
    }
    format!("{:.digits$}{unit} ({low:.digits$} to {high:.digits$})", median(values))
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| String::from("?"), |l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
}

/// One round's measurements of one configuration.
#[derive(Clone, Copy, Default)]
struct Pair {
    /// Wall and CPU time per iteration, unscraped.
    plain: (f64, f64),
    scraped: (f64, f64),
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let rounds = args.iter().find_map(|a| a.parse::<usize>().ok()).unwrap_or(ROUNDS).max(1);
    let whole_live_map = args.iter().any(|a| a == "--whole-live-map");
    // A panic on the scraper's thread ends the bench instead of leaving the
    // main thread waiting for it.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::exit(101);
    }));
    let server = heapprobe::serve(&GLOBAL, "127.0.0.1:0").expect("start the server");
    let schedstat = server_schedstat();
    let results = Arc::new(Mutex::new(Results::default()));
    let busy = Arc::new(Mutex::new(()));
    let whole = Arc::new(Mutex::new(None));
    let scraper = Scraper {
        base: format!("http://{}", server.local_addr()),
        // One kept-alive connection, as Prometheus keeps one; errors are
        // statuses, checked in `get`.
        agent: ureq::Agent::config_builder().http_status_as_error(false).build().into(),
        schedstat: schedstat.clone(),
        results: results.clone(),
        busy: busy.clone(),
        whole: whole.clone(),
    };
    std::thread::Builder::new().name("scraper".into()).spawn(move || scraper.serve_forever()).unwrap();

    eprintln!("load average before: {}", load_average());
    // Per configuration: an untimed iteration (the pages of the profiler's
    // tables), iterations timed for a quarter of a run to choose the
    // iterations per run, then the routes' allocations measured while the
    // workload runs (which also names the stacks: names are remembered).
    let mut iterations = [0; CONFIGS.len()];
    for (c, config) in CONFIGS.iter().enumerate() {
        eprintln!("warm-up {:<17} timing an iteration, then measuring each route's allocations", config.name);
        start_profiler(config);
        run(1);
        let (mut timed, mut runs) = (Duration::ZERO, 0);
        while timed < RUN / 4 {
            timed += run(1).0;
            runs += 1;
        }
        let one = timed / runs;
        iterations[c] = ((RUN.as_secs_f64() / one.as_secs_f64()).round() as usize).max(1);
        JOB.store(1 + CONFIGS.len() + c, Relaxed);
        let measured = || results.lock().unwrap().allocations.iter().filter(|a| a.config == c).count();
        while measured() < CALIBRATIONS * (config.routes.len() + 1) {
            run(1);
        }
        idle(&busy);
        if config.rate == Some(1) && whole_live_map {
            eprintln!(
                "warm-up {:<17} the whole live map, once, while the workload runs (a minute or two)",
                config.name
            );
            JOB.store(WHOLE, Relaxed);
            while JOB.load(Relaxed) == WHOLE {
                run(1);
            }
            idle(&busy);
        }
        stop_profiler(config);
        eprintln!("warm-up {:<17} {:>7.1?} per iteration, {} per run", config.name, one, iterations[c]);
    }

    let mut pairs = vec![[Pair::default(); CONFIGS.len()]; rounds];
    // The server thread's CPU time and the wall time of the runs, per
    // configuration, unscraped and scraped.
    let mut server = [[(Duration::ZERO, Duration::ZERO); 2]; CONFIGS.len()];
    let started = Instant::now();
    for (round, pairs) in pairs.iter_mut().enumerate() {
        let reversed = round % 2 == 1;
        let order: Vec<usize> =
            if reversed { (0..CONFIGS.len()).rev().collect() } else { (0..CONFIGS.len()).collect() };
        let mut line = format!("round {:>2}/{rounds}:", round + 1);
        for c in order {
            let config = &CONFIGS[c];
            start_profiler(config);
            for scraped in if reversed { [true, false] } else { [false, true] } {
                let cpu = cpu_of(&schedstat);
                if scraped {
                    JOB.store(1 + c, Relaxed);
                }
                let (wall, workload_cpu) = run(iterations[c]);
                idle(&busy);
                let server = &mut server[c][scraped as usize];
                server.0 += cpu_of(&schedstat) - cpu;
                server.1 += wall;
                let per =
                    (wall.as_secs_f64() / iterations[c] as f64, workload_cpu.as_secs_f64() / iterations[c] as f64);
                if scraped {
                    pairs[c].scraped = per;
                } else {
                    pairs[c].plain = per;
                }
            }
            stop_profiler(config);
            let pair = pairs[c];
            line += &format!(
                "  {} {:.3}× (CPU {:.3}×)",
                config.name.split(',').next().unwrap().split(' ').next().unwrap(),
                pair.scraped.0 / pair.plain.0,
                pair.scraped.1 / pair.plain.1
            );
        }
        eprintln!("{line}  [{:.0?}, load {}]", started.elapsed(), load_average());
    }
    let load = load_average();

    println!();
    println!(
        "| profiler | scraped each second | HashMap 100k built+dropped, unscraped (median of {rounds} rounds) | \
         scraped | × unscraped, wall time | × unscraped, the workload thread's CPU time | unscraped × profiler off, \
         wall | unscraped × profiler off, CPU |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (c, config) in CONFIGS.iter().enumerate() {
        let column = |f: &dyn Fn(&[Pair; 3]) -> f64| pairs.iter().map(f).collect::<Vec<f64>>();
        let ms = |values: Vec<f64>| format!("{:.2} ms", median(&values) * 1e3);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            config.name,
            config.routes.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(" + "),
            ms(column(&|p| p[c].plain.0)),
            ms(column(&|p| p[c].scraped.0)),
            spread(&column(&|p| p[c].scraped.0 / p[c].plain.0), 3, "×"),
            spread(&column(&|p| p[c].scraped.1 / p[c].plain.1), 3, "×"),
            if c == 0 { String::from("1×") } else { spread(&column(&|p| p[c].plain.0 / p[0].plain.0), 2, "×") },
            if c == 0 { String::from("1×") } else { spread(&column(&|p| p[c].plain.1 / p[0].plain.1), 2, "×") },
        );
    }

    let results = results.lock().unwrap();
    println!();
    println!(
        "| profiler | route | answer | server thread's CPU per request | client's wall time per request | \
         allocations per request | bytes allocated per request |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    let whole = whole.lock().unwrap();
    for (c, config) in CONFIGS.iter().enumerate() {
        let whole = whole.as_ref().filter(|(sample, _)| sample.config == c);
        let routes = config.routes.iter().map(|r| format!("`{r}`"));
        let routes = routes.chain(whole.map(|_| format!("`{WHOLE_LIVE_MAP}` (all its blocks, once)")));
        for (route, path) in routes.enumerate() {
            let (samples, allocations): (Vec<&Sample>, Vec<&Allocations>) = match whole {
                Some((sample, allocations)) if route == config.routes.len() => (vec![sample], vec![allocations]),
                _ => (
                    results.samples.iter().filter(|s| s.config == c && s.route == route).collect(),
                    results.allocations.iter().filter(|a| a.config == c && a.route == route).collect(),
                ),
            };
            let of = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(|s| f(s)).collect::<Vec<f64>>();
            assert!(!samples.is_empty(), "no scrape of {path} landed in a scraped run: make the runs longer");
            let cpu = spread(&of(&|s| micros(s.server_cpu)), 0, " µs");
            let wall = format!("{:.0} µs", median(&of(&|s| micros(s.wall))));
            let bytes = format!("{:.0} KiB", median(&of(&|s| s.bytes as f64)) / 1024.0);
            println!(
                "| {} | {path} | {bytes} | {cpu} | {wall} | {} | {} |",
                config.name,
                spread(&allocations.iter().map(|a| a.allocations as f64).collect::<Vec<_>>(), 0, ""),
                spread(&allocations.iter().map(|a| a.bytes as f64).collect::<Vec<_>>(), 0, ""),
            );
        }
    }

    println!();
    println!(
        "| profiler | scrapes | server thread's CPU per scrape (its routes' medians, summed) | the same, at one scrape a \
         second, share of one core | server thread's CPU ÷ wall time, scraped runs | the same, unscraped runs |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (c, config) in CONFIGS.iter().enumerate() {
        let scrapes = results.samples.iter().filter(|s| s.config == c && s.route == 0).count();
        let per_scrape: f64 = (0..config.routes.len())
            .map(|route| {
                median(
                    &results
                        .samples
                        .iter()
                        .filter(|s| s.config == c && s.route == route)
                        .map(|s| s.server_cpu.as_secs_f64())
                        .collect::<Vec<_>>(),
                )
            })
            .sum();
        let [(plain_cpu, plain_wall), (scraped_cpu, scraped_wall)] = server[c];
        println!(
            "| {} | {scrapes} | {:.0} µs | {:.3}% | {:.3}% | {:.4}% |",
            config.name,
            per_scrape * 1e6,
            per_scrape * 100.0,
            scraped_cpu.as_secs_f64() / scraped_wall.as_secs_f64() * 100.0,
            plain_cpu.as_secs_f64() / plain_wall.as_secs_f64() * 100.0,
        );
    }
    if results.live_blocks > 0 {
        println!();
        println!(
            "the exact live map listed at most {} live blocks; truncated (its table or the route's limit full): {}",
            results.live_blocks, results.live_truncated
        );
    }
    println!(
        "requests tried again after a transport error (a kept-alive connection the server closed): {} {:?}",
        results.retried.len(),
        results.retried
    );
    println!("load average after: {load}; iterations per run: {iterations:?}");
}
