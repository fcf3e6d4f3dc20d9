//! The in-process profiler against ground truth: at rate 1 every
//! allocation is recorded exactly, so the folded stacks through a known
//! function carry exactly its bytes and objects, and the in-use and peak
//! views follow its frees exactly.

use std::alloc::System;
use std::hint::black_box;
use std::sync::Mutex;

use heapprobe::profile::{Options, Profile, View};
use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

/// The global profiler is one per process: its tests take turns.
static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the global profiler for one test; a failed test stops it.
struct Serial(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

impl Drop for Serial {
    fn drop(&mut self) {
        let _ = GLOBAL.stop_profiler();
    }
}

fn serial() -> Serial {
    Serial(SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

fn exact_options() -> Options {
    let mut options = Options::default();
    options.rate = 1;
    options
}

/// 1000 blocks of 4096 bytes, kept in `keep` (whose own buffer is
/// allocated by the caller).
#[inline(never)]
fn known_pattern(keep: &mut Vec<Vec<u8>>) {
    for _ in 0..1000 {
        keep.push(black_box(Vec::with_capacity(4096)));
    }
}

/// The weight of the folded lines whose stack passes through `function`.
fn folded_through(folded: &str, function: &str) -> u64 {
    folded
        .lines()
        .map(|line| line.rsplit_once(' ').expect("a folded line is `stack weight`"))
        .filter(|(stack, _)| stack.split(';').any(|frame| frame.contains(function)))
        .map(|(_, weight)| weight.parse::<u64>().expect("an integer weight"))
        .sum()
}

fn gettid() -> u64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u64 }
}

fn stop(profile: Option<Profile>) -> Profile {
    profile.expect("the profiler was running")
}

#[test]
fn rate_1_records_the_known_pattern_exactly_and_its_in_use_bytes_after_half_is_freed() {
    let _serial = serial();
    let mut keep = Vec::with_capacity(1000);
    GLOBAL.start_profiler(exact_options()).unwrap();
    known_pattern(&mut keep);
    // Free every other block: 500 remain.
    let mut i = 0;
    keep.retain(|_| {
        i += 1;
        i % 2 == 0
    });
    let profile = stop(GLOBAL.stop_profiler());
    println!("{profile}");

    // This thread's view: other tests of this binary run known_pattern on
    // their own threads meanwhile.
    let me = gettid();
    let alloc = profile.folded_for_thread(View::AllocatedBytes, me);
    assert_eq!(folded_through(&alloc, "known_pattern"), 4_096_000, "folded:\n{alloc}");
    let objects = profile.folded_for_thread(View::AllocatedObjects, me);
    assert_eq!(folded_through(&objects, "known_pattern"), 1000, "folded:\n{objects}");
    let inuse = profile.folded_for_thread(View::InUseBytes, me);
    assert_eq!(folded_through(&inuse, "known_pattern"), 2_048_000, "folded:\n{inuse}");
    assert_eq!(folded_through(&profile.folded_for_thread(View::InUseObjects, me), "known_pattern"), 500);
    // The per-thread folded stacks name the thread at their root (its
    // kernel name: libtest's thread name cut to 15 bytes).
    let per_thread = profile.folded_per_thread(View::AllocatedBytes);
    let root = format!("rate_1_records_ {me};");
    assert_eq!(
        folded_through(
            &per_thread.lines().filter(|l| l.starts_with(&root)).collect::<Vec<_>>().join("\n"),
            "known_pattern"
        ),
        4_096_000
    );
    // Every line has the format `cargo xtask trace` writes: root first, `;`, space, integer.
    for line in alloc.lines() {
        let (stack, weight) = line.rsplit_once(' ').unwrap();
        assert!(!stack.is_empty() && weight.parse::<u64>().is_ok(), "{line:?}");
    }
    // The allocating frame is a leaf-side frame of the known_pattern stacks,
    // under the test function (the stacks are whole).
    let through: Vec<&str> = alloc.lines().filter(|l| l.contains("known_pattern")).collect();
    assert!(
        through.iter().all(|l| l.contains("rate_1_records_the_known_pattern")),
        "stacks through known_pattern do not reach the test function: {through:#?}"
    );
    drop(keep);
}

#[test]
fn rate_1_totals_equal_the_exact_counters_of_a_scope() {
    let (v, profile) = GLOBAL.profile(|| {
        let mut keep = Vec::with_capacity(1000);
        known_pattern(&mut keep);
        keep.truncate(500);
        let mut s = String::new();
        for i in 0..100 {
            s.push_str(&i.to_string()); // reallocs: growth counts as bytes
        }
        (keep, s)
    });
    println!("{profile}");
    let exact = *profile.exact().unwrap();
    assert_eq!(profile.total(View::AllocatedBytes), exact.bytes_allocated as f64);
    assert_eq!(profile.total(View::AllocatedObjects), exact.allocations as f64);
    assert_eq!(profile.total_through(View::AllocatedBytes, "known_pattern"), 4_096_000.0);
    assert_eq!(profile.total_through(View::InUseBytes, "known_pattern"), 2_048_000.0);
    assert_eq!(profile.total(View::InUseBytes), exact.current as f64);
    assert!(profile.summary().contains("the estimate against them: bytes exact, objects exact"), "{profile}");
    drop(v);
}

#[test]
fn the_peak_view_shows_the_heap_at_its_high_water_mark() {
    #[inline(never)]
    fn allocate_a() -> Vec<u8> {
        black_box(Vec::with_capacity(100_000))
    }
    #[inline(never)]
    fn allocate_b() -> Vec<u8> {
        black_box(Vec::with_capacity(10_000))
    }
    let (b, profile) = GLOBAL.profile(|| {
        drop(allocate_a());
        allocate_b()
    });
    let peak = profile.folded(View::PeakBytes);
    assert_eq!(folded_through(&peak, "allocate_a"), 100_000, "peak:\n{peak}");
    assert_eq!(folded_through(&peak, "allocate_b"), 0, "peak:\n{peak}");
    let inuse = profile.folded(View::InUseBytes);
    assert_eq!(folded_through(&inuse, "allocate_b"), 10_000);
    assert_eq!(folded_through(&inuse, "allocate_a"), 0);
    assert_eq!(profile.exact().unwrap().peak, 100_000);
    assert_eq!(profile.total(View::PeakBytes), 100_000.0);
    drop(b);
}

/// Recursion to `depth` frames, then one allocation: every depth is a
/// distinct stack.
#[inline(never)]
fn nested(depth: usize, keep: &mut Vec<Vec<u8>>) {
    if depth == 0 {
        keep.push(black_box(Vec::with_capacity(100)));
    } else {
        nested(depth - 1, keep);
        black_box(depth);
    }
}

#[test]
fn full_tables_count_their_drops_and_keep_the_totals() {
    let _serial = serial();
    let mut options = exact_options();
    options.max_stacks = 16;
    options.max_sites = 16;
    options.max_live = 16;
    let mut keep = Vec::with_capacity(200);
    GLOBAL.start_profiler(options).unwrap();
    let before = GLOBAL.thread_stats();
    for depth in 0..50 {
        nested(depth, &mut keep);
    }
    let mine = GLOBAL.thread_stats() - before;
    let profile = stop(GLOBAL.stop_profiler());
    println!("{profile}");
    let (stacks, sites, live) = profile.drops();
    assert!(stacks > 0 && live > 0, "drops: {:?}", profile.drops());
    let _ = sites;
    assert!(profile.summary().contains("DROPPED: "), "{profile}");
    // Every sample is still counted: the dropped ones under their own frame
    // (and thread 0, "[other threads]", when the site table is full too).
    let folded = profile.folded(View::AllocatedBytes);
    let nested_bytes = folded_through(&profile.folded_for_thread(View::AllocatedBytes, gettid()), "nested");
    let dropped_bytes = folded_through(&folded, "[dropped: a profiler table was full]");
    assert!(dropped_bytes > 0, "no dropped line");
    assert_eq!(
        folded.lines().map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap()).sum::<u64>(),
        profile.total(View::AllocatedBytes) as u64
    );
    // Nothing this thread allocated is missing (other test threads allocate
    // meanwhile, at rate 1 too, so the process-wide total is at least this).
    assert_eq!(mine.bytes_allocated, 50 * 100);
    assert!(profile.total(View::AllocatedBytes) >= mine.bytes_allocated as f64);
    assert!(nested_bytes + dropped_bytes >= 50 * 100, "nested {nested_bytes}, dropped {dropped_bytes}");
    // The tables are as small as asked, and the profiler says what it maps.
    let (mapped, resident) = profile.memory();
    assert!(mapped > 0 && resident <= mapped);
    // The live map says it is not whole (the exact mode's truncation flag),
    // and how much it left out.
    let live: serde_json::Value = serde_json::from_str(&profile.live_map_json(usize::MAX)).unwrap();
    assert_eq!(live["truncated"], true, "{live}");
    assert!(live["untracked_bytes"].as_f64().unwrap() > 0.0, "{live}");
    let listed = live["length_memory_array"].as_u64().unwrap();
    assert!(listed > 0 && listed <= 16, "max_live is 16: {live}");
    // The stacks start at the allocator's entry: the wrapper's lean path and
    // the profiler's own frames are left out.
    let stack = live["blocks"][0]["stack"].as_array().unwrap();
    assert!(
        stack.last().unwrap().as_str().unwrap().contains("as core::alloc::global::GlobalAlloc>::alloc"),
        "{stack:?}"
    );
    drop(keep);
}

#[test]
fn live_blocks_as_json() {
    #[inline(never)]
    fn json_block() -> Vec<u8> {
        black_box(Vec::with_capacity(777))
    }
    let (block, profile) = GLOBAL.profile(json_block);
    let json = profile.live_json();
    assert!(json.starts_with("{\"rate\":1,"), "{json}");
    assert!(json.contains(&format!("\"ptr\":\"{:#x}\",\"size\":777,", block.as_ptr() as usize)), "{json}");
    assert!(json.contains("json_block"), "{json}");
    drop(block);
}
