//! Instructions per allocator workload, counted by callgrind: System,
//! heapprobe and the peers, side by side in one run. Deterministic, unlike
//! wall-clock time on a shared machine.
//!
//! ```text
//! cargo bench --bench instructions                       # every variant and workload
//! cargo bench --bench instructions -- system heapprobe   # a subset (variant or workload names)
//! ```
//!
//! Needs `valgrind` (`apt-get install -y valgrind`). It builds the variants
//! in `benches/variants` (one binary per global allocator, since a process
//! has exactly one; a workspace of its own so the peers' dependencies stay
//! out of this one) into `target/instructions`, then runs each workload of
//! each variant under
//! `valgrind --tool=callgrind --toggle-collect=hp_bench_<workload>`, which
//! counts only the instructions executed inside the workload function (the
//! allocator included). Each is run with `n` and `2n` repetitions and the
//! table shows `(I(2n) - I(n)) / n`: one repetition in the steady state, with
//! one-off costs (first-touch, lazy initialisation) cancelled out.
//!
//! The callgrind files stay in `target/instructions/callgrind/`; read one
//! instruction by instruction with
//! `callgrind_annotate --auto=yes target/instructions/callgrind/heapprobe.alloc_free_32b.100000.out`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The variants, in table order: (binary, column title).
const VARIANTS: [(&str, &str); 8] = [
    ("system", "System"),
    ("heapprobe", "heapprobe"),
    ("heapprobe_sampled", "heapprobe, profiler at 512 KiB"),
    ("heapprobe_exact", "heapprobe, profiler at rate 1"),
    ("pprof_off", "pprof-alloc 0.6, pprof off"),
    ("pprof_on", "pprof-alloc 0.6, pprof on"),
    ("ddheap", "libdd-profiling-heap-allocator 1.2"),
    ("dhat", "dhat 0.3 (profiling)"),
];

/// The workloads: (name, row title, repetitions `n`, repetitions for dhat
/// and heapprobe at rate 1,
/// whose every call captures a backtrace and is ~100× slower under valgrind).
const WORKLOADS: [(&str, &str, u64, u64); 4] = [
    ("alloc_free_32b", "alloc+free 32 B (malloc path), per pair", 100_000, 2_000),
    ("alloc_free_32b_thread_1001", "the same on the 1001st live thread, per pair", 100_000, 2_000),
    ("vec_growth_1000", "`Vec<u64>` growth to 1000 + drop, per Vec (1 alloc, 8 reallocs, 1 free)", 1_000, 20),
    ("hashmap_10k", "`HashMap<String, Vec<u8>>` of 10 000 built + dropped, per map", 2, 1),
];

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    // `cargo bench` passes `--bench`; anything else selects variants or workloads.
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    for f in &filters {
        if !VARIANTS.iter().any(|(v, _)| v == f) && !WORKLOADS.iter().any(|(w, ..)| w == f) {
            let names: Vec<&str> = VARIANTS.iter().map(|v| v.0).chain(WORKLOADS.iter().map(|w| w.0)).collect();
            return Err(format!("unknown variant or workload {f:?}; known: {}", names.join(", ")));
        }
    }
    let wanted_variant = |v: &str| {
        v == "system" || !filters.iter().any(|f| VARIANTS.iter().any(|(n, _)| n == f)) || filters.iter().any(|f| f == v)
    };
    let wanted_workload =
        |w: &str| !filters.iter().any(|f| WORKLOADS.iter().any(|(n, ..)| n == f)) || filters.iter().any(|f| f == w);

    let valgrind = std::env::var("VALGRIND").unwrap_or_else(|_| "valgrind".into());
    match Command::new(&valgrind).arg("--version").output() {
        Ok(out) if out.status.success() => {
            eprintln!("using {}", String::from_utf8_lossy(&out.stdout).trim())
        }
        _ => return Err(format!("{valgrind:?} does not run: install it with `apt-get install -y valgrind`")),
    }

    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let target_dir = root.join("target/instructions");
    let binaries = build_variants(&root, &target_dir)?;
    let out_dir = target_dir.join("callgrind");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;

    // counts[workload][variant] = instructions per repetition.
    let mut counts: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
    for (workload, _, n, n_dhat) in WORKLOADS.iter().filter(|w| wanted_workload(w.0)) {
        for (variant, _) in VARIANTS.iter().filter(|v| wanted_variant(v.0)) {
            let bin = binaries.get(*variant).ok_or_else(|| format!("cargo built no binary named {variant}"))?;
            let n = if matches!(*variant, "dhat" | "heapprobe_exact") { *n_dhat } else { *n };
            let once = instructions(&valgrind, bin, workload, n, &out_dir)?;
            let twice = instructions(&valgrind, bin, workload, 2 * n, &out_dir)?;
            let per = (twice as f64 - once as f64) / n as f64;
            eprintln!(
                "{variant:>10} {workload:<16} n={n:<7} I(n)={once:<12} I(2n)={twice:<12} per repetition {per:.1}"
            );
            counts.entry(workload).or_default().insert(variant, per);
        }
    }

    let variants: Vec<_> = VARIANTS.iter().filter(|v| wanted_variant(v.0)).collect();
    println!("\ninstructions per repetition, callgrind (ratio to System):\n");
    let mut header = String::from("| Workload |");
    let mut rule = String::from("|---|");
    for (_, title) in &variants {
        header += &format!(" {title} |");
        rule += "---:|";
    }
    println!("{header}\n{rule}");
    for (workload, title, ..) in WORKLOADS.iter().filter(|w| wanted_workload(w.0)) {
        let row = &counts[workload];
        let system = row["system"];
        let mut line = format!("| {title} |");
        for (variant, _) in &variants {
            let v = row[variant];
            line += &if *variant == "system" {
                format!(" {v:.0} |")
            } else {
                format!(" {v:.0} ({:.2}×, {:+.0}) |", v / system, v - system)
            };
        }
        println!("{line}");
    }
    println!();
    Ok(())
}

/// Builds every variant binary; returns name -> path, from cargo's artifacts.
fn build_variants(root: &Path, target_dir: &Path) -> Result<BTreeMap<String, PathBuf>, String> {
    let manifest = root.join("benches/variants/Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--release", "--bins", "--message-format=json-render-diagnostics", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .env("RUSTFLAGS", variants_rustflags())
        .stderr(Stdio::inherit());
    eprintln!("building the variants: {cmd:?}");
    let out = cmd.output().map_err(|e| format!("failed to run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} exited with {}", out.status));
    }
    let mut binaries = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) = (message["target"]["name"].as_str(), message["executable"].as_str()) {
            binaries.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    Ok(binaries)
}

/// The variants' RUSTFLAGS: the caller's, and every loop aligned to 64
/// bytes, so that a workload's time does not depend on where the linker put
/// its loop. (Unaligned, one line more in a variant's `main` moved the Vec
/// growth loop and its time by 30%, same instructions.) `cargo bench --bench
/// profile -- peers` builds the same binaries with the same flags.
fn variants_rustflags() -> String {
    let theirs = std::env::var("RUSTFLAGS").unwrap_or_default();
    format!("{theirs} -C llvm-args=-align-loops=64").trim().to_owned()
}

/// Instructions callgrind counted inside `hp_bench_<workload>` for `n` repetitions.
fn instructions(valgrind: &str, bin: &Path, workload: &str, n: u64, out_dir: &Path) -> Result<u64, String> {
    let variant = bin.file_name().and_then(|f| f.to_str()).unwrap_or("variant");
    let out = out_dir.join(format!("{variant}.{workload}.{n}.out"));
    let mut cmd = Command::new(valgrind);
    cmd.arg("--tool=callgrind")
        .arg("--max-threads=1100") // alloc_free_32b_thread_1001 has 1002
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(format!("--toggle-collect=hp_bench_{workload}"))
        .arg(bin)
        .arg(workload)
        .arg(n.to_string());
    let mut result = cmd.output().map_err(|e| format!("failed to run {cmd:?}: {e}"))?;
    // A uprobe that a tracer placed in a shared library (bpftrace on libc's
    // `_exit`, say) is an `int3` in the page every process maps; valgrind
    // executes it as a SIGTRAP of its own. Such a run is simply repeated.
    for _ in 0..5 {
        if std::os::unix::process::ExitStatusExt::signal(&result.status) != Some(libc::SIGTRAP) {
            break;
        }
        eprintln!("{variant}: SIGTRAP under valgrind (a uprobe in a shared library?), running it again");
        result = cmd.output().map_err(|e| format!("failed to run {cmd:?}: {e}"))?;
    }
    if !result.status.success() {
        return Err(format!(
            "{cmd:?} exited with {}: {}{}",
            result.status,
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("cannot read {}: {e}", out.display()))?;
    // The file ends with `totals: N` (older callgrinds: `summary: N`).
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .ok_or_else(|| format!("{}: no `totals:` line; is it a callgrind output file?", out.display()))?;
    let total: u64 = total.trim().parse().map_err(|e| format!("{}: bad totals line {total:?}: {e}", out.display()))?;
    if total == 0 {
        return Err(format!(
            "{}: callgrind counted 0 instructions inside hp_bench_{workload}: was the function inlined or renamed?",
            out.display()
        ));
    }
    Ok(total)
}
