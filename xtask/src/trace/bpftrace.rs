//! The bpftrace backend: stacks and sums are aggregated in the kernel
//! (`@stacks[ustack] = sum(size)`), so only one line per distinct stack
//! crosses to user space. bpftrace 0.17 prints raw addresses once a `-c`
//! child has exited, so stacks are symbolised here, from the process's
//! memory map captured just before it exits (it is stopped at libc's
//! `_exit` for that) or, failing that, inferred from the probe sites.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context as _};
use heapprobe_sdt::{Binary, Site};

use super::symbols::{parse_maps, Mapping, Symbolizer};
use super::{Ended, Recording, Weight, RECORDER_PID};
use crate::flame::Folded;
use crate::util::display;

/// Distinct stacks bpftrace may keep (its map size).
const MAX_STACKS: u32 = 65_536;

/// What to record.
pub struct Workload<'a> {
    pub exe: &'a Path,
    pub args: &'a [String],
    pub pid: Option<u32>,
    pub duration: Option<f64>,
}

/// Runs bpftrace on `event` of `binary`, then symbolises and folds.
pub fn record(
    bpftrace: &str,
    binary: &Binary,
    event: &str,
    weight: Weight,
    workload: &Workload<'_>,
    verbose: bool,
) -> anyhow::Result<Recording> {
    if workload.args.iter().any(|a| a.contains(char::is_whitespace) || a.is_empty()) {
        bail!("bpftrace's -c cannot pass arguments containing spaces: use --backend perf");
    }
    let exe = workload.exe.canonicalize().with_context(|| format!("cannot resolve {}", workload.exe.display()))?;
    let program = program(&exe, event, weight, workload.pid, workload.duration, &libc_path()?)?;
    let mut cmd = Command::new(bpftrace);
    cmd.args(["--unsafe", "-B", "line", "-e", &program])
        .env("BPFTRACE_MAX_MAP_KEYS", MAX_STACKS.to_string())
        .env("BPFTRACE_MAP_KEYS_MAX", MAX_STACKS.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match workload.pid {
        Some(pid) => cmd.args(["-p", &pid.to_string()]),
        None => cmd.arg("-c").arg(
            std::iter::once(exe.display().to_string())
                .chain(workload.args.iter().cloned())
                .collect::<Vec<_>>()
                .join(" "),
        ),
    };
    raise_memlock_limit();
    if verbose {
        eprintln!("$ {}", display(&cmd));
    }
    let mut child = cmd.spawn().with_context(|| format!("failed to run {:?}", display(&cmd)))?;
    RECORDER_PID.store(child.id(), Ordering::SeqCst);
    let stderr = child.stderr.take().context("bpftrace's stderr")?;
    let stderr_reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut maps = workload.pid.map(read_maps).unwrap_or_default();
    let mut ended = None;
    let mut output = String::new();
    let mut blank_lines = 0;
    for line in BufReader::new(child.stdout.take().context("bpftrace's stdout")?).lines() {
        let line = line.context("reading bpftrace's output")?;
        if let Some(rest) = line.strip_prefix("heapprobe-exiting ") {
            // The process is stopped at `_exit`: take its map, let it go.
            let mut fields = rest.split_whitespace().filter_map(|f| f.parse::<i64>().ok());
            let (pid, code) = (fields.next().unwrap_or(0), fields.next().unwrap_or(0));
            let captured = read_maps(pid as u32);
            if !captured.is_empty() {
                maps = captured;
            }
            // SAFETY: kill(2) has no memory effects; the pid is the traced process.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
            ended = Some(Ended::Exited(code as i32));
            continue;
        }
        // Until bpftrace prints its maps (`@…`), stdout is the traced
        // program's own: pass it on.
        // (bpftrace ends its run with blank lines before the maps: held
        // back until a line of the program's follows.)
        if output.is_empty() && !line.starts_with('@') {
            if line.is_empty() {
                blank_lines += 1;
            } else if verbose || !line.starts_with("Attaching ") {
                for _ in 0..std::mem::take(&mut blank_lines) {
                    println!();
                }
                println!("{line}");
            }
            continue;
        }
        output.push_str(&line);
        output.push('\n');
    }
    let status = child.wait();
    RECORDER_PID.store(0, Ordering::SeqCst);
    let status = status.context("waiting for bpftrace")?;
    let stderr = stderr_reader.join().unwrap_or_default();
    // The traced program's stderr and bpftrace's own, minus bpftrace's
    // routine lines (the memlock warning is moot: the limit was raised).
    let stderr: String = stderr.lines().filter(|l| verbose || !is_routine(l)).collect::<Vec<_>>().join("\n");
    if !status.success() && !output.contains("@events") {
        bail!("{:?} exited with {status}: {}", display(&cmd), stderr.trim());
    }
    if !stderr.trim().is_empty() {
        eprintln!("{}", stderr.trim());
    }

    let parsed = parse_output(&output);
    if maps.is_empty() {
        maps = infer_exe_mapping(binary, &exe, event, &parsed.stacks);
    }
    let mut symbolizer = Symbolizer::new(maps);
    let mut folded = Folded::default();
    for (addresses, weight) in &parsed.stacks {
        let frames: Vec<String> =
            addresses.iter().enumerate().map(|(i, address)| symbolizer.name(*address, i == 0)).collect();
        folded.add_aggregate(&frames, *weight);
    }
    folded.events = parsed.events;
    // Stacks the full map could not take show as a shortfall of the total.
    let lost = parsed.total.saturating_sub(folded.total);
    let ended = match (workload.pid, ended) {
        (Some(_), _) => None,
        (None, Some(ended)) => Some(ended),
        (None, None) => Some(Ended::Vanished),
    };
    Ok(Recording { folded, lost, status: ended })
}

/// bpftrace's lines that say nothing new: the memlock warning (the limit was
/// raised), "Attaching/Attached N probes", newer bpftrace's note that it
/// cannot list kernel functions (the program attaches to usdt probes only),
/// and its warnings about the bogus probe sites that code the linker
/// discarded leaves (skipped; `cargo xtask probes` lists them).
fn is_routine(line: &str) -> bool {
    line.contains("RLIMIT_MEMLOCK")
        || line.starts_with("Attaching ")
        || line.starts_with("Attached ")
        || line.contains("available_filter_functions")
        || (line.starts_with("WARNING: invalid address") && line.contains("for probe (heapprobe,"))
}

/// The bpftrace program.
fn program(
    exe: &Path,
    event: &str,
    weight: Weight,
    pid: Option<u32>,
    duration: Option<f64>,
    libc: &Path,
) -> anyhow::Result<String> {
    let args = heapprobe::probes::arg_names(event);
    let arg = |name: &str| args.iter().position(|a| *a == name).map(|i| format!("arg{i}"));
    let value = match weight {
        Weight::Count => String::from("1"),
        Weight::Bytes => arg("weight")
            .or_else(|| arg("size"))
            .or_else(|| arg("new_size"))
            .context("this probe has no size argument")?,
        Weight::Moved => {
            let (Some(old), Some(new), Some(old_size), Some(new_size)) =
                (arg("old_ptr"), arg("new_ptr"), arg("old_size"), arg("new_size"))
            else {
                bail!("--weight moved needs a realloc probe");
            };
            format!("({old} != {new} ? ({old_size} < {new_size} ? {old_size} : {new_size}) : 0)")
        }
    };
    let target = match pid {
        Some(pid) => pid.to_string(),
        None => String::from("cpid"),
    };
    let mut program = format!(
        "usdt:{exe}:heapprobe:{event} /pid == {target}/ {{\n\
         \t$w = {value};\n\
         \t@events = count();\n\
         \t@total = sum($w);\n\
         \tif ($w > 0) {{ @stacks[ustack(perf, 127)] = sum($w); }}\n\
         }}\n\
         uprobe:{libc}:_exit /pid == {target}/ {{\n\
         \tprintf(\"heapprobe-exiting %d %d\\n\", pid, arg0);\n\
         \tsignal(\"SIGSTOP\");\n\
         }}\n",
        exe = exe.display(),
        libc = libc.display(),
    );
    if let Some(secs) = duration {
        let ms = (secs * 1000.0).round().max(1.0) as u64;
        program.push_str(&format!("interval:ms:{ms} {{ exit(); }}\n"));
    }
    Ok(program)
}

/// What bpftrace printed at the end.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Raw stacks, innermost first, and their summed weights.
    pub stacks: Vec<(Vec<u64>, u64)>,
    pub events: u64,
    pub total: u64,
}

/// Parses the map dump: `@events: N`, `@total: N` and
/// `@stacks[\n\tADDR SYMBOL (MODULE)\n...]: N` blocks.
pub fn parse_output(text: &str) -> Output {
    let mut out = Output::default();
    let mut stack: Option<Vec<u64>> = None;
    for line in text.lines() {
        if let Some(frames) = stack.as_mut() {
            if let Some(weight) = line.strip_prefix("]: ") {
                out.stacks.push((std::mem::take(frames), weight.trim().parse().unwrap_or(0)));
                stack = None;
            } else if let Some(address) = line.split_whitespace().next().and_then(|a| u64::from_str_radix(a, 16).ok()) {
                frames.push(address);
            }
            continue;
        }
        if line.starts_with("@stacks[") {
            stack = Some(Vec::new());
        } else if let Some(n) = line.strip_prefix("@events: ") {
            out.events = n.trim().parse().unwrap_or(0);
        } else if let Some(n) = line.strip_prefix("@total: ") {
            out.total = n.trim().parse().unwrap_or(0);
        }
    }
    out
}

fn read_maps(pid: u32) -> Vec<Mapping> {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).map(|m| parse_maps(&m)).unwrap_or_default()
}

/// Without a captured map (the process crashed), the executable's load
/// address still follows from any stack's first frame: it is one of the
/// probe sites, whose virtual addresses the notes give.
fn infer_exe_mapping(binary: &Binary, exe: &Path, event: &str, stacks: &[(Vec<u64>, u64)]) -> Vec<Mapping> {
    let sites: Vec<u64> = binary
        .valid_probes(Some(super::PROVIDER))
        .filter(|p| p.name == event && matches!(p.site, Site::Valid { .. }))
        .map(|p| p.address)
        .collect();
    let base = stacks
        .iter()
        .filter_map(|(frames, _)| frames.first())
        .find_map(|leaf| sites.iter().map(|site| leaf.wrapping_sub(*site)).find(|base| base % 4096 == 0));
    let Some(base) = base else { return Vec::new() };
    binary
        .segments
        .iter()
        .filter(|s| s.executable)
        .map(|s| Mapping {
            start: base + s.vaddr,
            end: base + s.vaddr + s.mem_size,
            offset: s.offset,
            path: exe.to_path_buf(),
        })
        .collect()
}

/// The C library our own process uses: the traced programs link the same.
fn libc_path() -> anyhow::Result<PathBuf> {
    parse_maps(&std::fs::read_to_string("/proc/self/maps")?)
        .into_iter()
        .map(|m| m.path)
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libc.so")))
        .context("cannot find the C library in /proc/self/maps (is this a glibc system?)")
}

/// bpftrace warns when it cannot raise RLIMIT_MEMLOCK; as root we raise it
/// for it (children inherit it), so users see no alarming error line.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads a valid rlimit; failure is harmless here.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_map_dump() {
        let text = "\
Attaching 3 probes...
@events: 3

@stacks[
\t55e3ef93218f 0x55e3ef93218f ([unknown])
\t7fbf2f4d724a __libc_start_call_main+122 (/usr/lib/x86_64-linux-gnu/libc.so.6)
]: 4096
@stacks[
\t55e3ef93218f 0x55e3ef93218f ([unknown])
]: 32
@total: 4128
";
        assert_eq!(
            parse_output(text),
            Output {
                stacks: vec![(vec![0x55e3ef93218f, 0x7fbf2f4d724a], 4096), (vec![0x55e3ef93218f], 32)],
                events: 3,
                total: 4128
            }
        );
    }
}
