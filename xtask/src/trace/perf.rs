//! The perf backend: `perf record` on the uprobes we registered at correct
//! file offsets (never `perf probe sdt_…`, which perf 6.1 misplaces in
//! rust-lld binaries), frame-pointer call stacks, then `perf.data` read
//! directly ([`perf_data::fold`]), its totals checked against perf's own
//! count of sample records. `perf script` text (captures made elsewhere) is
//! parsed here too, every line strictly.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use heapprobe_sdt::UprobeGroup;

use super::perf_data;
use super::{CallGraph, Ended, Recorded, Recording, Weight, RECORDER_PID};
use crate::flame::{demangle, Folded, UNKNOWN};
use crate::util::{self, display, Progress};

/// What to record.
pub struct Workload<'a> {
    /// The program to launch (or the executable of `pid`).
    pub exe: &'a Path,
    /// Its arguments.
    pub args: &'a [String],
    /// Where to launch it (`None`: here).
    pub dir: Option<&'a Path>,
    /// Variables to set for it.
    pub env: &'a [(String, std::ffi::OsString)],
    /// `setpriv`, through which a launched program runs (see
    /// [`util::tied_to_parent`]).
    pub setpriv: &'a Path,
    /// Attach to this process instead of running `exe`.
    pub pid: Option<u32>,
    /// With `pid`: how long to record (`None`: until Ctrl-C).
    pub duration: Option<f64>,
    /// How perf records stacks.
    pub call_graph: CallGraph,
    /// With `CallGraph::Dwarf`: the bytes of stack copied per event.
    pub stack_size: u32,
}

/// Records every event of `group` with call stacks into `data` (`work` is
/// the scratch directory it is in). Returns how the traced program ended
/// (`None` when attached to a running process).
///
/// perf is tied to us: it gets SIGKILL if we die (so that it cannot keep
/// the group busy), and so does a program it runs for us. With `--pid`, perf
/// starts with its events disabled and enables them on request; "attached"
/// is printed once it acknowledges, so that nothing after it is missed.
pub fn record(
    perf: &str,
    group: &UprobeGroup,
    workload: &Workload<'_>,
    data: &Path,
    work: &Path,
    progress: &Progress,
    verbose: bool,
) -> anyhow::Result<Option<Ended>> {
    let mut cmd = Command::new(perf);
    // dwarf: perf samples the user registers and copies the top of the
    // stack, and keeps no user frames in the callchain
    // (`exclude_callchain_user`); `perf_data::fold` unwinds the copies.
    let call_graph = match workload.call_graph {
        CallGraph::Fp => String::from("fp"),
        CallGraph::Dwarf => format!("dwarf,{}", workload.stack_size),
    };
    // Not -q: it hides perf's errors too (a failure to open or map its
    // events left a recording of 0 samples, unexplained). Its routine lines
    // are dropped instead (ROUTINE).
    // `-T`: every sample carries its time, by which a sample perf wrote
    // twice is told from two real ones (`perf_data::fold`).
    cmd.args(["record", "-T", "--call-graph", &call_graph, "-e", &format!("{}:*", group.name()), "-o"]).arg(data);
    // perf's default ring buffer (512 KiB) drops events when a program
    // allocates in a tight loop (751 of 1 million here); 32 MiB per CPU kept
    // every one. Only root may lock that much (others get perf's default).
    if util::is_root() {
        cmd.args(["--mmap-pages", "32M"]);
    }
    let control = match workload.pid {
        Some(pid) => {
            let control = Control::create(work)?;
            cmd.args(["-p", &pid.to_string(), "-D", "-1", "--control"]).arg(control.spec());
            Some(control)
        }
        None => {
            cmd.arg("--").args(util::tied_to_parent(workload.setpriv, workload.exe, workload.args));
            if let Some(dir) = workload.dir {
                cmd.current_dir(dir);
            }
            cmd.envs(workload.env.iter().map(|(k, v)| (k, v)));
            None
        }
    };
    if verbose {
        eprintln!("$ {}", display(&cmd));
    }
    cmd.stderr(Stdio::piped());
    let mut child = util::spawn_tied(&mut cmd)?;
    RECORDER_PID.store(child.id(), Ordering::SeqCst);
    // perf's stderr is also the traced program's: passed on as it comes
    // (minus perf's noise), and kept for error messages.
    let stderr = child.stderr.take().context("perf's stderr")?;
    let stderr_reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut kept = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if KERNEL_SYMBOL_NOISE.iter().any(|n| line.contains(n)) || ROUTINE.iter().any(|r| line.starts_with(r)) {
                continue;
            }
            eprintln!("{line}");
            kept.push_str(&line);
            kept.push('\n');
        }
        kept
    });
    let status = (|| {
        if let Some(control) = &control {
            control.enable(&mut child)?;
            progress.note("attached: recording");
            let ticker = match workload.duration {
                Some(secs) => progress.live(&format!("recording for {secs} s:")),
                None => progress.live("recording until Ctrl-C:"),
            };
            let deadline = workload.duration.map(|secs| Instant::now() + Duration::from_secs_f64(secs));
            loop {
                if let Some(status) = child.try_wait().context("waiting for perf record")? {
                    drop(ticker);
                    return Ok(status);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    // SAFETY: kill(2) on our own child; no memory effects.
                    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
                    let status = child.wait().context("waiting for perf record");
                    drop(ticker);
                    return status;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        child.wait().context("waiting for perf record")
    })();
    RECORDER_PID.store(0, Ordering::SeqCst);
    if status.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let status = status?;
    let stderr = stderr_reader.join().unwrap_or_default();
    let stderr = stderr.trim();
    if !data.exists() {
        bail!("{:?} exited with {status} and recorded nothing: {stderr}", display(&cmd));
    }
    // perf record exits with the workload's status, and re-raises the
    // signal that killed it.
    let how = if workload.pid.is_some() {
        None
    } else if let Some(code) = status.code() {
        Some(Ended::Exited(code))
    } else {
        use std::os::unix::process::ExitStatusExt as _;
        Some(Ended::Signalled(status.signal().unwrap_or(0)))
    };
    Ok(how)
}

/// perf's control FIFOs (`--control fifo:CTL,ACK`), in the scratch directory.
struct Control {
    ctl: std::path::PathBuf,
    ack: std::path::PathBuf,
}

impl Control {
    fn create(work: &Path) -> anyhow::Result<Self> {
        let control = Self { ctl: work.join("control"), ack: work.join("ack") };
        for fifo in [&control.ctl, &control.ack] {
            let path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())?;
            // SAFETY: a NUL-terminated path; mkfifo has no other effects.
            if unsafe { libc::mkfifo(path.as_ptr(), 0o600) } != 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| format!("mkfifo {}", fifo.display()));
            }
        }
        Ok(control)
    }

    fn spec(&self) -> String {
        format!("fifo:{},{}", self.ctl.display(), self.ack.display())
    }

    /// Asks perf to enable its events and waits for its acknowledgement.
    fn enable(&self, perf: &mut std::process::Child) -> anyhow::Result<()> {
        // Read-write and non-blocking opens never wait for the other end, so
        // a perf that dies early cannot hang us.
        let mut ack = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.ack)
            .with_context(|| format!("cannot open {}", self.ack.display()))?;
        let mut ctl = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.ctl)
            .with_context(|| format!("cannot open {}", self.ctl.display()))?;
        std::io::Write::write_all(&mut ctl, b"enable\n").context("asking perf to enable its events")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut answer = Vec::new();
        loop {
            let mut buf = [0u8; 64];
            match ack.read(&mut buf) {
                Ok(n) if n > 0 => {
                    // perf writes `ack\n` and the string's NUL.
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"ack\n") {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).context("reading perf's acknowledgement"),
            }
            if let Some(status) = perf.try_wait()? {
                bail!("perf record exited with {status} before it started recording (see its message above)");
            }
            if Instant::now() > deadline {
                bail!("perf record did not start recording within 120 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// perf record's lines that say nothing new: its progress, and the
/// `--control` acknowledgements (we print "attached" ourselves).
const ROUTINE: [&str; 3] = ["[ perf record: ", "Events disabled", "Events enabled"];

/// perf's warnings about kernel symbols, irrelevant to user-space stacks
/// (without root, perf cannot read them; we record user stacks only).
const KERNEL_SYMBOL_NOISE: [&str; 3] = [
    "Couldn't record kernel reference relocation symbol",
    "Symbol resolution may be skewed if relocation was used",
    "Check /proc/kallsyms permission or run as root",
];

/// Reads the recording back (perf.data itself, no `perf script`), folds the
/// hits of `event` (only those of instance `id` if given), and checks them
/// against perf.data's own count of samples.
pub fn fold(
    data: &Path,
    event: &str,
    weight: Weight,
    id: Option<u64>,
    status: Option<Ended>,
) -> anyhow::Result<(Recording, perf_data::Decoded)> {
    let counts = perf_data::count(data)?;
    let mut decoded = perf_data::fold(data, Some(event), weight, id)?;
    let recording = Recording {
        folded: std::mem::take(&mut decoded.folded),
        recorded: Recorded {
            source: "samples in perf.data",
            events: Some(counts.samples),
            total: None,
            dropped: counts.lost.max(decoded.lost),
            parsed_events: decoded.samples,
            duplicates: decoded.duplicates,
            parsed_total: None,
            stackless: 0,
            stackless_weight: 0,
            unparsed_why: "in perf.data but not decoded by heapprobe's reader, or the other way round (please report \
                           this, with the recording: --keep)",
        },
        status,
    };
    Ok((recording, decoded))
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
#[derive(Debug)]
pub struct Script {
    /// The stacks of the chosen probe, folded.
    pub folded: Folded,
    /// Samples lost, by the capture's `PERF_RECORD_LOST` lines.
    pub lost: u64,
    /// Every probe in the capture, with its number of hits.
    pub probes: BTreeMap<String, u64>,
    /// Event headers read, of every probe.
    pub events: u64,
    /// The count written at the top of a capture by
    /// `scripts/perf-flamegraph.sh` (`# heapprobe-capture samples=N lost=L`).
    pub capture_count: Option<perf_data::Counts>,
    /// Of those samples, the copies perf wrote twice, which the script left
    /// out of the capture (`copies=N` on the same line; 0 if absent).
    pub capture_copies: u64,
}

impl Script {
    /// The recording, checked against `counts` (perf.data's own), or the
    /// count the capture carries.
    pub fn into_recording(self, counts: Option<perf_data::Counts>, status: Option<Ended>) -> Recording {
        let copies = if counts.is_none() { self.capture_copies } else { 0 };
        let (source, counts, unparsed_why) = match (counts, self.capture_count) {
            (Some(c), _) => (
                "samples in perf.data",
                Some(c),
                "in perf.data but not in perf script's output, or the other way round (please report this, with \
                 the recording: --keep)",
            ),
            (None, Some(c)) => (
                "samples in perf.data (the capture's heapprobe-capture line)",
                Some(c),
                "counted by perf but not in the capture, or the other way round (was it cut short, or edited?)",
            ),
            (None, None) => ("", None, ""),
        };
        let recorded = Recorded {
            source,
            events: counts.map(|c| c.samples),
            total: None,
            // The capture's own PERF_RECORD_LOST lines say the same or less.
            dropped: counts.map_or(0, |c| c.lost).max(self.lost),
            parsed_events: self.events,
            // A text capture has no timestamps to tell a copy by: only the
            // copies the capture's writer left out are known.
            duplicates: copies,
            parsed_total: None,
            stackless: 0,
            stackless_weight: 0,
            unparsed_why,
        };
        Recording { folded: self.folded, recorded, status }
    }
}

/// A line of a `perf script` capture that is not what it should be.
#[derive(Debug)]
pub struct LineError {
    /// 1-based.
    pub line: usize,
    /// The line itself.
    pub text: String,
    /// What is wrong with it.
    pub why: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}: {:?}", self.line, self.why, self.text)
    }
}

impl std::error::Error for LineError {}

/// What every line of a capture must be, for error messages.
const EXPECTED: &str = "expected an event (`GROUP:PROBE: (ADDRESS) NAME=VALUE ...`), a stack frame \
    (`\\tADDRESS SYMBOL`), a blank line or `PERF_RECORD_LOST lost N` (a capture of `perf script -F \
    event,trace,ip,sym --no-demangle --show-lost-events`)";

/// Parses `perf script -F event,trace,ip,sym --show-lost-events` output,
/// folding the hits of `probe` (all hits if `None`):
///
/// ```text
/// heapprobe_1_trace0:alloc__12: (55d0c6e9f123) ptr=94367 size=32 align=8
///  heapprobe_1_trace0:alloc__0: (55d0c6e9f200) ptr=94367 size=64 align=8
///         55d0c6e9f123 _ZN9heapprobe5alloc...
///         55d0c6e9e000 [unknown]
///
/// PERF_RECORD_LOST lost 27
/// ```
///
/// perf right-aligns event names, so a header may start with spaces; frames
/// start with a tab. Every line must be one of these (or a `#` comment, as
/// `perf script --header` writes): anything else is an error that quotes it,
/// and so is a hit of `probe` that lacks the argument its weight needs.
pub fn parse_script(text: &str, weight: Weight, probe: Option<&str>) -> Result<Script, LineError> {
    parse_script_filtered(text, weight, probe, None)
}

/// [`parse_script`], folding only the hits whose `id` argument is `id` when
/// one is given (one `Local` instance; the others are counted in
/// [`Folded::filtered`]).
pub fn parse_script_filtered(
    text: &str,
    weight: Weight,
    probe: Option<&str>,
    id: Option<u64>,
) -> Result<Script, LineError> {
    let mut folded = Folded::default();
    let mut lost = 0;
    let mut events = 0;
    let mut capture_count = None;
    let mut capture_copies = 0;
    let mut filtered = 0;
    let mut probes: BTreeMap<String, u64> = BTreeMap::new();
    // The probe hit being read: its weight, or None when it is not folded.
    let mut current: Option<Option<u64>> = None;
    let mut frames: Vec<Rc<str>> = Vec::new();
    let mut names: HashMap<&str, Rc<str>> = HashMap::new();
    let mut finish = |current: &mut Option<Option<u64>>, frames: &mut Vec<Rc<str>>| {
        if let Some(Some(weight)) = current.take() {
            folded.add(frames, weight);
        }
        *current = None;
        frames.clear();
    };
    for (i, line) in text.lines().enumerate() {
        let error = |why: String| LineError { line: i + 1, text: line.to_owned(), why };
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            finish(&mut current, &mut frames);
            continue;
        }
        let (first, rest) = trimmed.split_once(char::is_whitespace).unwrap_or((trimmed, ""));
        if first.ends_with(':') && first[..first.len() - 1].contains(':') {
            // GROUP:EVENT: (ADDRESS) NAME=VALUE ...
            finish(&mut current, &mut frames);
            let event = &first[..first.len() - 1];
            let (_, name) = event.split_once(':').expect("checked above");
            // `alloc__3` is one of the sites of `alloc`.
            let name = match name.rsplit_once("__") {
                Some((probe, site)) if !site.is_empty() && site.bytes().all(|b| b.is_ascii_digit()) => probe,
                _ => name,
            };
            let mut words = rest.split_whitespace();
            let address = words.next().and_then(|w| w.strip_prefix('(')).and_then(|w| w.strip_suffix(')'));
            if address.is_none_or(|a| u64::from_str_radix(a, 16).is_err()) {
                return Err(error(format!("an event without its `(ADDRESS)`; {EXPECTED}")));
            }
            let mut args: Vec<(&str, u64)> = Vec::with_capacity(5);
            for word in words {
                let parsed = word.split_once('=').and_then(|(n, v)| Some((n, parse_number(v)?)));
                let Some(arg) = parsed else {
                    return Err(error(format!("the argument {word:?} is not NAME=NUMBER")));
                };
                args.push(arg);
            }
            events += 1;
            match probes.get_mut(name) {
                Some(hits) => *hits += 1,
                None => {
                    probes.insert(name.to_owned(), 1);
                }
            }
            if probe.is_some_and(|want| want != name) {
                current = Some(None);
                continue;
            }
            let get = |arg: &str| args.iter().find(|(n, _)| *n == arg).map(|(_, v)| *v);
            if id.is_some_and(|want| get("id").is_some_and(|got| got != want)) {
                filtered += 1;
                current = Some(None);
                continue;
            }
            let w = weight.of(name, &get).map_err(|why| error(format!("heapprobe:{name} {why}")))?;
            current = Some(Some(w));
        } else if line.starts_with(char::is_whitespace) && u64::from_str_radix(first, 16).is_ok() {
            // \t    ADDRESS SYMBOL
            if current.is_none() {
                return Err(error(format!("a stack frame outside any event; {EXPECTED}")));
            }
            if current == Some(None) {
                continue;
            }
            // Demangling is most of the parsing time: once per symbol.
            let symbol = frame_symbol(rest.trim());
            let name = names.entry(symbol).or_insert_with(|| match symbol {
                "" | UNKNOWN => Rc::from(UNKNOWN),
                _ => Rc::from(demangle(symbol)),
            });
            frames.push(name.clone());
        } else if let Some(count) = trimmed.strip_prefix("PERF_RECORD_LOST lost ") {
            finish(&mut current, &mut frames);
            lost +=
                count.trim().parse::<u64>().map_err(|_| error(String::from("a lost count that is not a number")))?;
        } else if let Some(comment) = line.strip_prefix('#') {
            if let Some(count) = comment.trim().strip_prefix("heapprobe-capture ") {
                let (count, copies) = parse_capture_count(count).ok_or_else(|| {
                    error(String::from("a heapprobe-capture line other than `samples=N lost=N [copies=N]`"))
                })?;
                (capture_count, capture_copies) = (Some(count), copies);
            }
        } else {
            return Err(error(String::from(EXPECTED)));
        }
    }
    finish(&mut current, &mut frames);
    folded.filtered = filtered;
    Ok(Script { folded, lost, probes, events, capture_count, capture_copies })
}

/// `samples=N lost=N`, and `copies=N` (the samples perf wrote twice, left
/// out of the capture) from scripts that write it.
fn parse_capture_count(text: &str) -> Option<(perf_data::Counts, u64)> {
    let mut counts = perf_data::Counts::default();
    let (mut samples, mut lost, mut copies) = (false, false, None);
    for word in text.split_whitespace() {
        match word.split_once('=')? {
            ("samples", n) => (counts.samples, samples) = (n.parse().ok()?, true),
            ("lost", n) => (counts.lost, lost) = (n.parse().ok()?, true),
            ("copies", n) if copies.is_none() => copies = Some(n.parse().ok()?),
            _ => return None,
        }
    }
    (samples && lost).then_some((counts, copies.unwrap_or(0)))
}

/// A fetch argument's value: decimal (`s64` arguments may be negative, and
/// are read back as the same 64 bits), or `0x` hex.
fn parse_number(value: &str) -> Option<u64> {
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None if value.starts_with('-') => value.parse::<i64>().ok().map(|v| v as u64),
        None => value.parse().ok(),
    }
}

/// `symbol+0x12 (dso)` → `symbol`.
fn frame_symbol(rest: &str) -> &str {
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
        let Script { folded, lost, probes, events, .. } = parse_script(SCRIPT, Weight::Bytes, None).unwrap();
        assert_eq!(probes.into_iter().collect::<Vec<_>>(), [(String::from("alloc"), 3)]);
        assert_eq!((lost, events), (0, 3));
        assert_eq!(
            folded.lines(),
            [
                "[unknown];it_works::known_pattern;heapprobe::alloc::Heapprobe<A>::allocated 4096",
                "it_works::known_pattern 64"
            ]
        );
        assert_eq!((folded.events, folded.total, folded.unknown_frames), (3, 4160, 1));
        assert_eq!(parse_script(SCRIPT, Weight::Count, None).unwrap().folded.total, 3);
        let other = parse_script(SCRIPT, Weight::Count, Some("dealloc")).unwrap();
        assert_eq!((other.folded.total, other.events), (0, 3));
    }

    /// perf pads event names to the longest one in the recording: with
    /// `alloc__0` and `alloc__14` in one group, `alloc__0`'s lines start with
    /// a space (a release build with many inlined sites). They were taken
    /// for stack frames, and the recording folded to 0 events.
    #[test]
    fn right_aligned_event_names_are_events_not_frames() {
        let script = "\
 heapprobe_9_trace0:alloc__0: (55aaeaf3db0) ptr=93848892338496 size=4096 align=64
\t           13db0 _RNvCsfLfy6EI15iL_7___rustc12___rust_alloc
\t           149d2 _ZN17heapprobe_fixture13known_pattern17h52abe2064c0acaf1E

heapprobe_9_trace0:alloc__14: (55aaeaf3e00) ptr=93848892338496 size=100 align=8
\t           13e00 _RNvCsfLfy6EI15iL_7___rustc12___rust_alloc

  heapprobe_9_trace0:alloc_failed__2: (55aaeaf3e00) size=70368744177664 align=8
\t           13e00 _RNvCsfLfy6EI15iL_7___rustc12___rust_alloc
";
        let parsed = parse_script(script, Weight::Bytes, Some("alloc")).unwrap();
        assert_eq!((parsed.folded.events, parsed.folded.total, parsed.events), (2, 4196, 3));
        assert_eq!(parsed.probes.get("alloc_failed"), Some(&1));
        let failed = parse_script(script, Weight::Bytes, Some("alloc_failed")).unwrap();
        assert_eq!((failed.folded.events, failed.folded.total), (1, 1 << 46));
    }

    #[test]
    fn an_unexpected_line_is_an_error_that_quotes_it() {
        for (bad, why) in [
            ("garbage here\n", "expected an event"),
            ("\t    5581e4a0e000 main\n", "a stack frame outside any event"),
            ("g:alloc__0: ptr=1 size=2 align=8\n", "without its `(ADDRESS)`"),
            ("g:alloc__0: (10) ptr=1 size=two align=8\n", "\"size=two\" is not NAME=NUMBER"),
            ("g:alloc__0: (10) arg0=1 arg1=2 arg2=8\n", "heapprobe:alloc has no size= (or new_size=) argument"),
            ("g:alloc__0: (10) ptr=1 size=2 align=8\n\tzz main\n", "expected an event"),
            ("PERF_RECORD_LOST lost many\n", "not a number"),
            ("# heapprobe-capture samples=3\n", "heapprobe-capture"),
        ] {
            let error = parse_script(&format!("{SCRIPT}\n{bad}"), Weight::Bytes, None).unwrap_err();
            let message = error.to_string();
            assert!(message.contains(why), "{bad:?}: {message}");
            assert!(message.contains(&format!("{:?}", bad.lines().last().unwrap())), "quotes the line: {message}");
            assert!(error.line > 10, "{message}");
        }
    }

    #[test]
    fn lost_lines_comments_and_the_capture_count_are_read() {
        let script = format!(
            "# ========\n# captured on: today\n# heapprobe-capture samples=5 lost=30\n{SCRIPT}\nPERF_RECORD_LOST lost 27\n\n{SCRIPT}"
        );
        let parsed = parse_script(&script, Weight::Count, None).unwrap();
        assert_eq!((parsed.events, parsed.lost, parsed.folded.total), (6, 27, 6));
        assert_eq!(parsed.capture_count, Some(perf_data::Counts { samples: 5, lost: 30 }));
        assert_eq!(parsed.capture_copies, 0);
        // perf-flamegraph.sh's captures say how many copies they left out:
        // the capture's 6 events and 1 copy are perf's 7 samples, none lost
        // or unparsed.
        let script = script.replace("samples=5 lost=30", "samples=7 lost=27 copies=1");
        let parsed = parse_script(&script, Weight::Count, None).unwrap();
        assert_eq!(parsed.capture_copies, 1);
        let recorded = parsed.into_recording(None, None).recorded;
        assert_eq!((recorded.events, recorded.duplicates, recorded.unparsed(), recorded.dropped), (Some(7), 1, 0, 27));
        for bad in ["samples=7 lost=0 copies=x", "samples=7 lost=0 copies=1 copies=1"] {
            assert!(
                parse_script(&format!("# heapprobe-capture {bad}\n{SCRIPT}"), Weight::Count, None).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn moved_weight_counts_only_reallocs_that_moved() {
        let script = "\
g:realloc__0: (1) old_ptr=16 new_ptr=32 old_size=100 new_size=200 align=8
\t    1 f

g:realloc__0: (1) old_ptr=16 new_ptr=16 old_size=200 new_size=400 align=8
\t    1 f
";
        let folded = parse_script(script, Weight::Moved, None).unwrap().folded;
        assert_eq!((folded.events, folded.total), (2, 100));
        let message = parse_script(script, Weight::Moved, Some("alloc")).map(|s| s.events).unwrap();
        assert_eq!(message, 2);
        let message = parse_script("g:alloc__0: (1) ptr=1 size=2 align=8\n", Weight::Moved, None).unwrap_err();
        assert!(message.to_string().contains("--weight moved"), "{message}");
    }
}
