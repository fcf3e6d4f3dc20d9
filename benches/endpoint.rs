//! What being scraped costs a service: the HashMap workload of
//! `benches/overhead.rs` (100 000 `String` → 16-byte `Vec` entries, built
//! and dropped) timed with and without a scraper that GETs `/metrics` from
//! heapprobe's standalone server once a second, as Prometheus would.
//!
//! ```text
//! cargo bench --bench endpoint --features server
//! ```
//!
//! Rounds alternate the two variants (scraped first in odd rounds), and
//! each round's ratio is taken within the round, so that the machine's
//! drift between minutes cancels out; the median over rounds is reported,
//! with the spread. The server thread's own CPU time per scrape is read
//! from `/proc/self/task/TID/schedstat`, and its allocations per scrape
//! from its own counters (`/stats`).

use std::alloc::System;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

/// Rounds of the two variants; each variant runs `ITERATIONS` times a round.
const ROUNDS: usize = 16;
/// About 2 s of workload on a quiet machine: two scrapes land in each
/// scraped run.
const ITERATIONS: usize = 40;

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

/// The workload `ITERATIONS` times: (wall time, this thread's CPU time).
fn run() -> (Duration, Duration) {
    let (started, cpu) = (Instant::now(), thread_cpu());
    for _ in 0..ITERATIONS {
        drop(black_box(hashmap_100k()));
    }
    (started.elapsed(), thread_cpu() - cpu)
}

/// The server thread's time on a CPU, in nanoseconds, from its
/// `schedstat` file (the scheduler's own count; `stat` has 10 ms ticks).
fn server_cpu() -> Duration {
    let nanos = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| {
            let path = task.ok()?.path();
            let comm = std::fs::read_to_string(path.join("comm")).ok()?;
            // The kernel keeps 15 characters of a thread's name.
            (comm.trim() == "heapprobe-serve").then(|| std::fs::read_to_string(path.join("schedstat")).ok())?
        })
        .map(|schedstat| schedstat.split(' ').next().and_then(|ns| ns.parse::<u64>().ok()).expect("schedstat"))
        .next()
        .expect("the heapprobe-server thread");
    Duration::from_nanos(nanos)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let server = heapprobe::serve(&GLOBAL, "127.0.0.1:0").expect("start the server");
    let url = format!("http://{}/metrics", server.local_addr());
    let scraping = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(AtomicU64::new(0));
    let scrape_nanos = Arc::new(AtomicU64::new(0));
    {
        let (scraping, scrapes, scrape_nanos) = (scraping.clone(), scrapes.clone(), scrape_nanos.clone());
        std::thread::spawn(move || {
            // One kept-alive connection, as Prometheus keeps one.
            let agent = ureq::Agent::new_with_defaults();
            loop {
                std::thread::sleep(Duration::from_secs(1));
                if scraping.load(Relaxed) {
                    let started = Instant::now();
                    let body = agent.get(&url).call().expect("scrape").body_mut().read_to_string().expect("body");
                    assert!(body.contains("heapprobe_allocations_total "));
                    scrape_nanos.fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
                    scrapes.fetch_add(1, Relaxed);
                }
            }
        });
    }

    eprintln!("warming up");
    run();
    let (cpu_before, scrapes_before) = (server_cpu(), scrapes.load(Relaxed));
    let (mut ratios, mut cpu_ratios) = (Vec::new(), Vec::new());
    let (mut plain_times, mut scraped_times) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let mut times = [(Duration::ZERO, Duration::ZERO); 2];
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for scraped in order {
            scraping.store(scraped, Relaxed);
            times[scraped as usize] = run();
        }
        scraping.store(false, Relaxed);
        let [(wall, cpu), (scraped_wall, scraped_cpu)] = times;
        let ratio = scraped_wall.as_secs_f64() / wall.as_secs_f64();
        let cpu_ratio = scraped_cpu.as_secs_f64() / cpu.as_secs_f64();
        eprintln!(
            "round {round:>2}: unscraped {wall:>8.1?} (CPU {cpu:>8.1?})  scraped {scraped_wall:>8.1?} (CPU \
             {scraped_cpu:>8.1?})  ratio {ratio:.3} (CPU {cpu_ratio:.3})"
        );
        ratios.push(ratio);
        cpu_ratios.push(cpu_ratio);
        plain_times.push(wall.as_secs_f64() / ITERATIONS as f64);
        scraped_times.push(scraped_wall.as_secs_f64() / ITERATIONS as f64);
    }
    let scraped = scrapes.load(Relaxed) - scrapes_before;
    let cpu = server_cpu() - cpu_before;
    let stats: serde_json::Value = {
        let body =
            ureq::get(&format!("http://{}/stats", server.local_addr())).call().unwrap().body_mut().read_to_string();
        serde_json::from_str(&body.unwrap()).unwrap()
    };
    let endpoint = &stats["endpoint"];
    let requests = endpoint["requests"].as_u64().unwrap();

    let spread = |v: &[f64]| (v.iter().copied().fold(f64::MAX, f64::min), v.iter().copied().fold(0.0, f64::max));
    let ((low, high), (cpu_low, cpu_high)) = (spread(&ratios), spread(&cpu_ratios));
    println!();
    println!("| variant | HashMap 100k built+dropped (median of {ROUNDS} rounds × {ITERATIONS}) | × unscraped, wall time | × unscraped, the workload thread's CPU time |");
    println!("|---|---:|---:|---:|");
    println!("| unscraped | {:.2} ms | 1.000× | 1.000× |", median(&mut plain_times) * 1e3);
    println!(
        "| `/metrics` scraped every second | {:.2} ms | {:.3}× ({low:.3} to {high:.3}) | {:.3}× ({cpu_low:.3} to {cpu_high:.3}) |",
        median(&mut scraped_times) * 1e3,
        median(&mut ratios),
        median(&mut cpu_ratios)
    );
    println!();
    println!(
        "scrapes during the scraped runs: {scraped}; wall time per scrape (client side) {:.0} µs; \
         server thread on a CPU {:.2?} in all, {:.0} µs per scrape",
        scrape_nanos.load(Relaxed) as f64 / scraped.max(1) as f64 / 1e3,
        cpu,
        cpu.as_secs_f64() * 1e6 / scraped.max(1) as f64,
    );
    println!(
        "the endpoint's own allocations: {} in {requests} requests ({:.0} per request), {} bytes ({:.0} per request); \
         live on its thread now: {} bytes",
        endpoint["allocations"],
        endpoint["allocations"].as_f64().unwrap() / requests as f64,
        endpoint["bytes_allocated"],
        endpoint["bytes_allocated"].as_f64().unwrap() / requests as f64,
        endpoint["current"],
    );
}
