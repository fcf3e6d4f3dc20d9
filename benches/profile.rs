//! What the in-process profiler costs, side by side in one run:
//!
//! - `system`: plain `System`;
//! - `idle`: `Heapprobe<System>` with the profiler off (what every user pays);
//! - `sampled`: the profiler on at its default rate, 512 KiB;
//! - `exact-fp` / `exact-dwarf`: the profiler at rate 1 (every allocation
//!   sampled), walking frame pointers / unwinding from `.eh_frame`;
//! - `dhat`: dhat 0.3's heap profiler (exact; one global mutex per call).
//!
//! `peers` instead times one binary per global allocator (benches/variants,
//! shared with `cargo bench --bench instructions`), the way a program uses
//! one: System, heapprobe with the profiler off, at 512 KiB and at rate 1,
//! pprof-alloc 0.6 (pprof on), libdd-profiling-heap-allocator 1.2 and dhat,
//! in interleaved rounds.
//!
//! ```text
//! cargo bench --bench profile -- peers [ROUNDS]                         # the peers, side by side
//! RUSTFLAGS="-C force-frame-pointers=yes" cargo bench --bench profile   # timings (exact-fp needs frame pointers)
//! cargo bench --bench profile -- pairs idle 1000000                     # a workload alone, for callgrind:
//! valgrind --tool=callgrind target/release/deps/profile-HASH pairs sampled 1000000
//! ```
//!
//! Timings interleave the variants round by round and report the median
//! of the per-round ratios to `system` (this 2-core VM drifts by ±30%
//! between minutes). Each variant runs its workload once untimed after
//! switching (the profiler restarts per round, and a restarted profiler's
//! tables fault their pages in on first use, which a service pays once). The per-sample cost of the exact variants is their
//! time per allocation minus `idle`'s.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::time::Instant;

use heapprobe::profile::{Options, Unwinder};
use heapprobe::Heapprobe;

static MODE: AtomicU8 = AtomicU8::new(0);
const SYSTEM: u8 = 0;
const HEAPPROBE: u8 = 1;
const DHAT: u8 = 2;

static HP: Heapprobe<System> = Heapprobe::new(System);
static DH: dhat::Alloc = dhat::Alloc;

struct Switch;

// SAFETY: every variant ends in `System` with the caller's arguments, so a
// block is always freed by the allocator that made it (see benches/overhead.rs).
unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        unsafe {
            match MODE.load(Relaxed) {
                HEAPPROBE => HP.alloc(l),
                DHAT => DH.alloc(l),
                _ => System.alloc(l),
            }
        }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        unsafe {
            match MODE.load(Relaxed) {
                HEAPPROBE => HP.alloc_zeroed(l),
                DHAT => DH.alloc_zeroed(l),
                _ => System.alloc_zeroed(l),
            }
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe {
            match MODE.load(Relaxed) {
                HEAPPROBE => HP.dealloc(p, l),
                DHAT => DH.dealloc(p, l),
                _ => System.dealloc(p, l),
            }
        }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        unsafe {
            match MODE.load(Relaxed) {
                HEAPPROBE => HP.realloc(p, l, n),
                DHAT => DH.realloc(p, l, n),
                _ => System.realloc(p, l, n),
            }
        }
    }
}

#[global_allocator]
static GLOBAL: Switch = Switch;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    System,
    Idle,
    Sampled,
    ExactFp,
    ExactDwarf,
    Dhat,
}

const VARIANTS: [(Variant, &str); 6] = [
    (Variant::System, "system"),
    (Variant::Idle, "idle"),
    (Variant::Sampled, "sampled 512 KiB"),
    (Variant::ExactFp, "exact (rate 1), frame pointers"),
    (Variant::ExactDwarf, "exact (rate 1), .eh_frame"),
    (Variant::Dhat, "dhat"),
];

/// Runs `f` under `variant` (profiler started and stopped around it).
fn under<R>(variant: Variant, f: impl FnOnce() -> R) -> R {
    let mut options = Options::default();
    match variant {
        Variant::System => MODE.store(SYSTEM, Relaxed),
        Variant::Dhat => MODE.store(DHAT, Relaxed),
        _ => MODE.store(HEAPPROBE, Relaxed),
    }
    let profiled = match variant {
        Variant::Sampled => true,
        Variant::ExactFp => {
            options.rate = 1;
            options.unwinder = Unwinder::FramePointers;
            true
        }
        Variant::ExactDwarf => {
            options.rate = 1;
            options.unwinder = Unwinder::Dwarf;
            true
        }
        _ => false,
    };
    let dhat = (variant == Variant::Dhat).then(|| dhat::Profiler::builder().testing().build());
    if profiled {
        HP.start_profiler(options).expect("start the profiler");
    }
    let result = f();
    if profiled {
        black_box(HP.stop_profiler());
    }
    drop(dhat);
    MODE.store(SYSTEM, Relaxed);
    result
}

fn pairs_32b(n: usize) {
    for _ in 0..n {
        drop(black_box(Box::new([0u8; 32])));
    }
}

fn vec_growth(n: usize) {
    for _ in 0..n {
        let mut v = Vec::new();
        for i in 0..1000u64 {
            v.push(black_box(i));
        }
        drop(black_box(v));
    }
}

fn hashmap(n: usize) {
    for _ in 0..n {
        let mut map = HashMap::new();
        for i in 0..100_000u32 {
            map.insert(i.to_string(), vec![0u8; 16]);
        }
        drop(black_box(map));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The peers, one binary each (benches/variants, as `cargo bench --bench
/// instructions` builds them): (binary, title, scale). A variant with scale
/// `k` runs `n / k` repetitions (exact profilers are slow); times are per
/// repetition either way.
const PEERS: [(&str, &str, u64); 7] = [
    ("system", "System", 1),
    ("heapprobe", "heapprobe, profiler off", 1),
    ("heapprobe_sampled", "heapprobe, 512 KiB", 1),
    ("heapprobe_exact", "heapprobe, rate 1 (.eh_frame)", 100),
    ("pprof_on", "pprof-alloc 0.6, pprof on", 1),
    ("ddheap", "libdd-profiling-heap-allocator 1.2", 1),
    ("dhat", "dhat 0.3", 100),
];

/// The peers' workloads (benches/variants/src/lib.rs): (name, title, n).
const PEER_WORKLOADS: [(&str, &str, u64); 3] = [
    ("alloc_free_32b", "alloc+free 32 B, per pair", 2_000_000),
    ("vec_growth_1000", "`Vec<u64>` growth to 1000, per Vec", 20_000),
    ("hashmap_10k", "`HashMap<String, Vec<u8>>` of 10 000, per map", 100),
];

/// Times every peer binary on every workload in interleaved rounds (each
/// round runs each variant once, in turn) and prints the median time per
/// repetition and the median of the per-round ratios to System.
fn peers(rounds: usize) {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target/instructions");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(&cargo)
        .args(["build", "--release", "--bins", "--manifest-path"])
        .arg(root.join("benches/variants/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        // As benches/instructions.rs builds them (the same binaries): every
        // loop aligned to 64 bytes, so that a workload's time does not
        // depend on where the linker put its loop.
        .env(
            "RUSTFLAGS",
            format!("{} -C llvm-args=-align-loops=64", std::env::var("RUSTFLAGS").unwrap_or_default()).trim(),
        )
        .status()
        .expect("run cargo build for benches/variants");
    assert!(status.success(), "cargo build of benches/variants exited with {status}");
    let time = |bin: &str, workload: &str, n: u64| -> f64 {
        let exe = target.join("release").join(bin);
        let out = std::process::Command::new(&exe)
            .args([workload, &n.to_string()])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} exited with {}: {stdout}{}",
            exe.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let ns: f64 = stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ns="))
            .and_then(|ns| ns.parse().ok())
            .unwrap_or_else(|| panic!("{}: no `ns=` in {stdout:?}", exe.display()));
        ns / n as f64
    };
    println!("\nside by side with the peers: one binary per global allocator (benches/variants), {rounds} interleaved rounds;");
    println!("median time per repetition (median of the per-round ratios to System)\n");
    println!("| Workload | {} |", PEERS.iter().map(|p| p.1).collect::<Vec<_>>().join(" | "));
    println!("|---|{}", "---:|".repeat(PEERS.len()));
    for (workload, title, n) in PEER_WORKLOADS {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); PEERS.len()];
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); PEERS.len()];
        for _ in 0..rounds {
            let round: Vec<f64> = PEERS.iter().map(|(bin, _, scale)| time(bin, workload, (n / scale).max(1))).collect();
            for (i, t) in round.iter().enumerate() {
                times[i].push(*t);
                ratios[i].push(t / round[0]);
            }
        }
        let cells: Vec<String> = (0..PEERS.len())
            .map(|i| {
                let t = median(times[i].clone());
                let shown = if t < 1e3 {
                    format!("{t:.1} ns")
                } else if t < 1e6 {
                    format!("{:.1} µs", t / 1e3)
                } else {
                    format!("{:.2} ms", t / 1e6)
                };
                format!("{shown} ({:.2}×)", median(ratios[i].clone()))
            })
            .collect();
        println!("| {title} | {} |", cells.join(" | "));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.first().map(String::as_str) == Some("peers") {
        peers(args.get(1).and_then(|r| r.parse().ok()).unwrap_or(11));
        return;
    }
    if args.first().map(String::as_str) == Some("pairs") {
        // One workload alone, for instruction counts under callgrind.
        let variant = match args.get(1).map(String::as_str) {
            Some("system") => Variant::System,
            Some("idle") => Variant::Idle,
            Some("sampled") => Variant::Sampled,
            Some("exact-fp") => Variant::ExactFp,
            Some("exact-dwarf") => Variant::ExactDwarf,
            Some("dhat") => Variant::Dhat,
            other => panic!("unknown variant {other:?}: system, idle, sampled, exact-fp, exact-dwarf, dhat"),
        };
        let n = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
        match args.get(3).map(String::as_str) {
            Some("vec") => under(variant, || vec_growth(n)),
            _ => under(variant, || pairs_32b(n)),
        }
        return;
    }
    type Workload = (&'static str, usize, fn(usize));
    let workloads: [Workload; 3] = [
        ("alloc+free 32 B, x10 000", 10_000, pairs_32b),
        ("Vec<u64> growth to 1000, x100", 100, vec_growth),
        ("HashMap<String, Vec<u8>> 100k, x1", 1, hashmap),
    ];
    let rounds = 15;
    println!("| Workload | {} |", VARIANTS.iter().map(|v| v.1).collect::<Vec<_>>().join(" | "));
    println!("|---|{}", "---|".repeat(VARIANTS.len()));
    for (name, n, workload) in workloads {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
        for _ in 0..rounds {
            let mut round = Vec::new();
            for (variant, _) in VARIANTS {
                // Exact mode is slow: a tenth of the work, scaled up.
                let scale = if matches!(variant, Variant::ExactFp | Variant::ExactDwarf | Variant::Dhat) && n > 1 {
                    10
                } else {
                    1
                };
                let seconds = under(variant, || {
                    // Once untimed: a profiler just started touches its
                    // tables' pages for the first time (page faults that a
                    // long-running process pays once).
                    workload(n / scale);
                    let start = Instant::now();
                    workload(n / scale);
                    start.elapsed().as_secs_f64() * scale as f64
                });
                round.push(seconds);
            }
            for (i, t) in round.iter().enumerate() {
                times[i].push(*t);
                ratios[i].push(t / round[0]);
            }
        }
        let cells: Vec<String> = (0..VARIANTS.len())
            .map(|i| {
                let t = median(times[i].clone());
                let shown = if t < 1e-3 { format!("{:.1} µs", t * 1e6) } else { format!("{:.2} ms", t * 1e3) };
                format!("{shown} ({:.2}×)", median(ratios[i].clone()))
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    // Per allocation, exact mode minus idle: what walking and recording one sample costs.
    let per = |variant| {
        median(
            (0..rounds)
                .map(|_| {
                    let n = 20_000;
                    let idle = under(Variant::Idle, || {
                        let s = Instant::now();
                        pairs_32b(n);
                        s.elapsed().as_secs_f64()
                    });
                    let exact = under(variant, || {
                        let s = Instant::now();
                        pairs_32b(n);
                        s.elapsed().as_secs_f64()
                    });
                    (exact - idle) / n as f64 * 1e9
                })
                .collect(),
        )
    };
    println!(
        "\nper sample (walk + record + the matched free), ns: frame pointers {:.0}, .eh_frame {:.0}",
        per(Variant::ExactFp),
        per(Variant::ExactDwarf)
    );
}
