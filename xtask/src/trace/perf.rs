//! The perf backend: `perf record` on the uprobes we registered at correct
//! file offsets (never `perf probe sdt_…`, which perf 6.1 misplaces in
//! rust-lld binaries), frame-pointer call stacks, then `perf script`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use anyhow::{bail, Context as _};
use heapprobe_sdt::UprobeGroup;

use super::{CallGraph, Recording, Weight, RECORDER_PID};
use crate::flame::{demangle, Folded, UNKNOWN};
use crate::util::display;

/// What to record.
pub struct Workload<'a> {
    pub exe: &'a Path,
    pub args: &'a [String],
    /// Attach to this process instead of running `exe`.
    pub pid: Option<u32>,
    pub duration: Option<f64>,
    pub call_graph: CallGraph,
}

/// Records every event of `group` with call stacks into `data`. Returns how
/// the traced program ended (`None` when attached to a running process).
pub fn record(
    perf: &str,
    group: &UprobeGroup,
    workload: &Workload<'_>,
    data: &Path,
    verbose: bool,
) -> anyhow::Result<Option<super::Ended>> {
    let mut cmd = Command::new(perf);
    let call_graph = match workload.call_graph {
        CallGraph::Fp => "fp",
        CallGraph::Dwarf => "dwarf",
    };
    cmd.args(["record", "-q", "--call-graph", call_graph, "-e", &format!("{}:*", group.name()), "-o"]).arg(data);
    // perf's default ring buffer (512 KiB) drops events when a program
    // allocates in a tight loop (751 of 1 million here); 32 MiB per CPU kept
    // every one. Only root may lock that much (others get perf's default).
    if crate::util::is_root() {
        cmd.args(["--mmap-pages", "32M"]);
    }
    match workload.pid {
        Some(pid) => {
            cmd.args(["-p", &pid.to_string()]);
            if let Some(secs) = workload.duration {
                cmd.args(["--", "sleep", &secs.to_string()]);
            }
        }
        None => {
            cmd.arg("--").arg(workload.exe).args(workload.args);
        }
    }
    if verbose {
        eprintln!("$ {}", display(&cmd));
    }
    let mut child = cmd.stderr(Stdio::piped()).spawn().with_context(|| format!("failed to run {:?}", display(&cmd)))?;
    RECORDER_PID.store(child.id(), Ordering::SeqCst);
    let stderr = child.stderr.take().map(std::io::read_to_string).transpose().unwrap_or_default().unwrap_or_default();
    let status = child.wait();
    RECORDER_PID.store(0, Ordering::SeqCst);
    let status = status.context("waiting for perf record")?;
    // Without root, perf cannot read kernel symbols; we record user stacks
    // only, so its three-line warning about that is noise.
    let stderr: Vec<&str> = stderr.lines().filter(|l| !KERNEL_SYMBOL_NOISE.iter().any(|n| l.contains(n))).collect();
    let stderr = stderr.join("\n");
    let stderr = stderr.trim();
    if !stderr.is_empty() {
        eprintln!("{stderr}");
    }
    if !data.exists() {
        bail!("{:?} exited with {status} and recorded nothing: {stderr}", display(&cmd));
    }
    // perf record exits with the workload's status, and re-raises the
    // signal that killed it.
    let how = if workload.pid.is_some() {
        None
    } else if let Some(code) = status.code() {
        Some(super::Ended::Exited(code))
    } else {
        use std::os::unix::process::ExitStatusExt as _;
        Some(super::Ended::Signalled(status.signal().unwrap_or(0)))
    };
    Ok(how)
}

/// perf's warnings about kernel symbols, irrelevant to user-space stacks.
const KERNEL_SYMBOL_NOISE: [&str; 3] = [
    "Couldn't record kernel reference relocation symbol",
    "Symbol resolution may be skewed if relocation was used",
    "Check /proc/kallsyms permission or run as root",
];

/// Reads the recording back with `perf script` and folds it.
pub fn fold(
    perf: &str,
    data: &Path,
    weight: Weight,
    status: Option<super::Ended>,
    verbose: bool,
) -> anyhow::Result<Recording> {
    let script = run_script(perf, data, verbose)?;
    let Script { folded, lost, .. } = parse_script(&script, weight, None);
    Ok(Recording { folded, lost, status })
}

/// The fields [`parse_script`] reads.
pub const SCRIPT_FIELDS: &str = "event,trace,ip,sym";

/// `perf script` over `data`, with the fields [`parse_script`] reads.
pub fn run_script(perf: &str, data: &Path, verbose: bool) -> anyhow::Result<String> {
    let mut cmd = Command::new(perf);
    cmd.args(["script", "--no-demangle", "--show-lost-events", "-F", SCRIPT_FIELDS, "-i"]).arg(data);
    if verbose {
        eprintln!("$ {}", display(&cmd));
    }
    let out = cmd.output().with_context(|| format!("failed to run {:?}", display(&cmd)))?;
    if !out.status.success() {
        bail!("{:?} exited with {}: {}", display(&cmd), out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A parsed `perf script` capture.
pub struct Script {
    /// The stacks of the chosen probe, folded.
    pub folded: Folded,
    /// Events perf lost.
    pub lost: u64,
    /// Every probe in the capture, with its number of hits.
    pub probes: BTreeMap<String, u64>,
}

/// Parses `perf script -F event,trace,ip,sym` output, keeping the hits of
/// `probe` (all hits if `None`):
///
/// ```text
/// heapprobe_1_trace0:alloc__0: (55d0c6e9f123) ptr=94367 size=32 align=8
///         55d0c6e9f123 _ZN9heapprobe5alloc...
///         55d0c6e9e000 [unknown]
///
/// ```
pub fn parse_script(text: &str, weight: Weight, probe: Option<&str>) -> Script {
    let mut folded = Folded::default();
    let mut lost = 0;
    let mut probes = BTreeMap::new();
    // The event being read: its probe and arguments, borrowed from `text`.
    let mut current: Option<(&str, Vec<(&str, u64)>)> = None;
    let mut frames: Vec<Rc<str>> = Vec::new();
    let mut names: HashMap<&str, Rc<str>> = HashMap::new();
    let mut finish = |current: &mut Option<(&str, Vec<(&str, u64)>)>, frames: &mut Vec<Rc<str>>| {
        if let Some((name, args)) = current.take() {
            let get = |arg: &str| args.iter().find(|(n, _)| *n == arg).map(|(_, v)| *v);
            folded.add(frames, weight.of(name, &get));
        }
        frames.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            finish(&mut current, &mut frames);
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            if current.is_some() {
                // Demangling is most of the parsing time: once per symbol.
                let symbol = frame_symbol(line.trim());
                let name = names.entry(symbol).or_insert_with(|| match symbol {
                    "" | UNKNOWN => Rc::from(UNKNOWN),
                    _ => Rc::from(demangle(symbol)),
                });
                frames.push(name.clone());
            }
            continue;
        }
        if let Some(n) = lost_count(line) {
            lost += n;
            continue;
        }
        finish(&mut current, &mut frames);
        // GROUP:EVENT: (addr) name=value ...
        let mut words = line.split_whitespace();
        let Some(event) = words.next().and_then(|e| e.strip_suffix(':')) else { continue };
        let Some((_, name)) = event.split_once(':') else { continue };
        // `alloc__3` is the fourth site of `alloc`.
        let name = name.rsplit_once("__").map_or(name, |(name, _)| name);
        *probes.entry(name.to_owned()).or_insert(0) += 1;
        if probe.is_some_and(|want| want != name) {
            continue;
        }
        let args = words
            .filter_map(|w| w.split_once('='))
            .filter_map(|(name, value)| parse_number(value).map(|v| (name, v)))
            .collect();
        current = Some((name, args));
    }
    finish(&mut current, &mut frames);
    Script { folded, lost, probes }
}

/// `PERF_RECORD_LOST` lines (with `--show-lost-events`) carry a count.
fn lost_count(line: &str) -> Option<u64> {
    if !line.contains("PERF_RECORD_LOST") {
        return None;
    }
    let after = line.split("lost").last()?;
    after.split(|c: char| !c.is_ascii_digit()).find(|s| !s.is_empty())?.parse().ok()
}

fn parse_number(value: &str) -> Option<u64> {
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    }
}

/// `55d0c6e9f123 symbol+0x12 (dso)` → `symbol`.
fn frame_symbol(line: &str) -> &str {
    let rest = line.split_once(char::is_whitespace).map_or("", |(_, rest)| rest.trim());
    let rest = match rest.rfind(" (") {
        Some(i) if rest.ends_with(')') => &rest[..i],
        _ => rest,
    };
    rest.rsplit_once("+0x").map_or(rest, |(s, _)| s).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "\
heapprobe_9_trace0:alloc__0: (5581e4a0f0c7) ptr=94046 size=4096 align=64
\t    5581e4a0f0c7 _ZN9heapprobe5alloc18Heapprobe$LT$A$GT$9allocated17h0123456789abcdefE
\t    5581e4a0e000 _ZN8it_works13known_pattern17h0123456789abcdefE
\t    7f0000000000 [unknown]

heapprobe_9_trace0:alloc__1: (5581e4a0f0c7) ptr=94046 size=32 align=8
\t    5581e4a0e000 _ZN8it_works13known_pattern17h0123456789abcdefE

heapprobe_9_trace0:alloc__1: (5581e4a0f0c7) ptr=94046 size=32 align=8
\t    5581e4a0e000 _ZN8it_works13known_pattern17h0123456789abcdefE
";

    #[test]
    fn perf_script_output_folds_by_bytes_and_by_count() {
        let Script { folded, lost, probes } = parse_script(SCRIPT, Weight::Bytes, None);
        assert_eq!(probes.into_iter().collect::<Vec<_>>(), [(String::from("alloc"), 3)]);
        assert_eq!(lost, 0);
        assert_eq!(
            folded.lines(),
            [
                "[unknown];it_works::known_pattern;heapprobe::alloc::Heapprobe<A>::allocated 4096",
                "it_works::known_pattern 64"
            ]
        );
        assert_eq!((folded.events, folded.total, folded.unknown_frames), (3, 4160, 1));
        assert_eq!(parse_script(SCRIPT, Weight::Count, None).folded.total, 3);
        assert_eq!(parse_script(SCRIPT, Weight::Count, Some("dealloc")).folded.total, 0);
    }

    #[test]
    fn moved_weight_counts_only_reallocs_that_moved() {
        let script = "\
g:realloc__0: (1) old_ptr=16 new_ptr=32 old_size=100 new_size=200 align=8
\t    1 f

g:realloc__0: (1) old_ptr=16 new_ptr=16 old_size=200 new_size=400 align=8
\t    1 f
";
        let folded = parse_script(script, Weight::Moved, None).folded;
        assert_eq!((folded.events, folded.total), (2, 100));
    }
}
