//! Reading a `perf.data` directly, without `perf script`:
//!
//! - [`count`]: perf's own count of what the file holds, by a plain scan of
//!   its records (the sample records, and the samples perf says the kernel
//!   dropped: `PERF_RECORD_LOST`, `PERF_RECORD_LOST_SAMPLES`), to check the
//!   folded totals against;
//! - [`fold`]: every sample decoded with `linux-perf-data` (the samply
//!   project's reader), its probe arguments read by the field offsets of the
//!   tracing data perf stores (the uprobe events' format files), its call
//!   stack symbolised here from the recording's own memory-map records and
//!   the mapped files' symbol tables, and folded. Every sample is accounted
//!   for: folded, or counted under its probe (or other event); every record
//!   kind is used, known to be irrelevant, or counted.
//!
//! The layout is perf's (`tools/perf/Documentation/perf.data-file-format.txt`):
//! a header with the file offset and size of the data section, which is a
//! sequence of records, each starting with `perf_event_header` (`u32 type`,
//! `u16 misc`, `u16 size`).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufReader, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{bail, Context as _};
use linux_perf_data::linux_perf_event_reader::{constants as perf, EventRecord, PerfEventType, RecordType};
use linux_perf_data::{Feature, PerfFileReader, PerfFileRecord};

use super::symbols::{Files, Mapping};
use super::unwind::{Ending, Registers, Unwinders};
use super::Weight;
use crate::flame::{demangle, Folded, TRUNCATED, UNKNOWN};

/// `PERF_RECORD_LOST`: `u64 id, u64 lost`.
const RECORD_LOST: u32 = 2;
/// `PERF_RECORD_SAMPLE`.
const RECORD_SAMPLE: u32 = 9;
/// `PERF_RECORD_LOST_SAMPLES`: `u64 lost`.
const RECORD_LOST_SAMPLES: u32 = 13;
/// `PERF_RECORD_COMPRESSED` (`perf record -z`): records inside are zstd.
const RECORD_COMPRESSED: u32 = 81;

/// What perf itself recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Sample records: one per probe hit perf kept.
    pub samples: u64,
    /// Samples the kernel dropped, by perf's own records: the larger of the
    /// sums of `PERF_RECORD_LOST` (ring-buffer overflows, written as they
    /// happen) and `PERF_RECORD_LOST_SAMPLES` (each event's lost count, read
    /// from the kernel at the end). They count the same losses.
    pub lost: u64,
}

/// Reads the counts of `path`, a `perf.data` written by `perf record -o`.
pub fn count(path: &Path) -> anyhow::Result<Counts> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let what = || format!("{} (reading its sample count)", path.display());
    let mut file = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; 104];
    file.read_exact(&mut header).with_context(|| format!("{} is too short for perf.data", path.display()))?;
    if &header[..8] != b"PERFILE2" {
        bail!("{} is not a perf.data file written on this machine's byte order (no PERFILE2 magic)", path.display());
    }
    let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    // magic, size, attr_size, attrs {offset, size}, data {offset, size}.
    let (data_offset, data_size) = (word(40), word(48));
    if data_size == 0 {
        bail!("{} has an empty data section: perf did not finish writing it (was it killed?)", path.display());
    }
    file.seek(SeekFrom::Start(data_offset)).with_context(what)?;
    let mut counts = Counts::default();
    let (mut lost, mut lost_samples) = (0u64, 0u64);
    let mut at = 0u64;
    let mut body = Vec::new();
    while at < data_size {
        let mut record = [0u8; 8];
        file.read_exact(&mut record).with_context(|| format!("{}: a record is cut off at {at}", what()))?;
        let kind = u32::from_le_bytes(record[..4].try_into().expect("4 bytes"));
        let size = u64::from(u16::from_le_bytes(record[6..8].try_into().expect("2 bytes")));
        if size < 8 || at + size > data_size {
            bail!("{}: a record at {at} of the data section has a bad size {size}", what());
        }
        body.resize((size - 8) as usize, 0);
        file.read_exact(&mut body).with_context(|| format!("{}: a record is cut off at {at}", what()))?;
        let field = |i: usize| body.get(i * 8..i * 8 + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8")));
        match kind {
            RECORD_SAMPLE => counts.samples += 1,
            RECORD_LOST => lost += field(1),
            RECORD_LOST_SAMPLES => lost_samples += field(0),
            RECORD_COMPRESSED => bail!(
                "{} is compressed (perf record -z): record without -z, or give the `perf script` text",
                path.display()
            ),
            _ => {}
        }
        at += size;
    }
    counts.lost = lost.max(lost_samples);
    Ok(counts)
}

/// What [`fold`] read from a perf.data.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The chosen probe's hits, folded.
    pub folded: Folded,
    /// Every sample decoded, by probe (`alloc`), or by event name for
    /// samples of events that are no heapprobe probe.
    pub probes: BTreeMap<String, u64>,
    /// Samples decoded, of every event (copies not included).
    pub samples: u64,
    /// Sample records perf wrote twice, found as byte-identical copies of a
    /// sample of the same nanosecond and removed (see [`fold`]).
    pub duplicates: u64,
    /// Samples the kernel dropped, by the file's lost records (the larger
    /// of the sums of either kind, as [`Counts::lost`]).
    pub lost: u64,
    /// Samples that carried a copy of the user stack (`--call-graph
    /// dwarf`), unwound here.
    pub dwarf_samples: u64,
    /// Times the kernel throttled an event (samples dropped without a
    /// count).
    pub throttled: u64,
    /// Records of kinds this reader does not know, by kind.
    pub unknown_records: BTreeMap<u32, u64>,
    /// Files mapped by the recorded processes that were rebuilt since (their
    /// build id differs from the recording's): their frames are `[unknown]`.
    pub rebuilt: Vec<PathBuf>,
}

/// Reads `path`, a perf.data of heapprobe probe events recorded with call
/// stacks, and folds the hits of `probe` (`alloc`; every probe if `None`)
/// weighted by `weight`, only those whose `id` argument is `id` if given.
///
/// A sample record that is byte for byte a copy of an earlier one is
/// counted in [`Decoded::duplicates`] and not decoded: `perf record` (6.1,
/// measured here) can write a record twice. It reads the ring buffer's head
/// once before and once inside `perf_mmap__push`, copies up to the second
/// and resumes the next round from the first, so a record the kernel wrote
/// in between is copied again after the round's end (seen: a
/// `local_alloc` sample twice, 8 bytes apart around a `FINISHED_ROUND`, in
/// about 1 of 300 recordings of 2,300 events). Two real samples are never
/// identical, since each holds its event id and its nanosecond timestamp;
/// the reader sorts by time, so a copy is found among the samples of its
/// timestamp.
pub fn fold(path: &Path, probe: Option<&str>, weight: Weight, id: Option<u64>) -> anyhow::Result<Decoded> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let PerfFileReader { mut perf_file, mut record_iter } =
        PerfFileReader::parse_file(BufReader::with_capacity(1 << 20, file))
            .map_err(|e| anyhow::anyhow!("{} is not a perf.data this can read: {e}", path.display()))?;
    let formats = match perf_file.feature_section_data(Feature::TRACING_DATA) {
        Some(data) => parse_tracing_data(data)
            .with_context(|| format!("cannot read the tracing data (the events' formats) of {}", path.display()))?,
        None => bail!(
            "{} has no tracing data (the format of its events): it holds no uprobe or tracepoint events, so no \
             heapprobe probe hits",
            path.display()
        ),
    };
    let events: Vec<Event> =
        perf_file.event_attributes().iter().map(|attr| Event::new(&attr.attr.type_, attr.name(), &formats)).collect();
    let mut files = Files::default();
    let build_ids: HashMap<PathBuf, Vec<u8>> = perf_file
        .build_ids()
        .unwrap_or_default()
        .into_values()
        .filter(|info| info.path.starts_with(b"/"))
        .map(|info| (PathBuf::from(String::from_utf8_lossy(&info.path).into_owned()), info.build_id))
        .collect();
    let mut unwinders = Unwinders::new(build_ids.clone());
    files.expect_build_ids(build_ids);

    let mut decoded = Decoded::default();
    let mut symbols = Symbols::new(files);
    let truncated = symbols.intern(TRUNCATED);
    let mut unwound: Vec<(u64, bool)> = Vec::with_capacity(128);
    let mut stacks: FastMap<Box<[u32]>, (u64, u64)> = FastMap::default();
    let mut frames: Vec<u32> = Vec::with_capacity(128);
    let mut filtered = 0u64;
    // The two kinds of lost records count the same losses (see [`Counts`]):
    // their sum counted every lost event about twice.
    let (mut lost_records, mut lost_samples) = (0u64, 0u64);
    // The samples of the latest timestamp, as written: a copy is one of them.
    let mut same_time: (Option<u64>, Vec<Vec<u8>>) = (None, Vec::new());
    let where_ = |n: u64| format!("{}, sample {n}", path.display());
    while let Some(record) = record_iter
        .next_record(&mut perf_file)
        .with_context(|| format!("{}: a record is unreadable", path.display()))?
    {
        let (attr_index, record) = match record {
            PerfFileRecord::EventRecord { attr_index, record } => (attr_index, record),
            // perf's own (attributes, id index, thread and cpu maps, time
            // conversion, round ends): nothing about samples.
            PerfFileRecord::UserRecord(_) => continue,
        };
        let kind = record.record_type;
        if kind == RecordType::SAMPLE {
            if let Some(time) = record.timestamp() {
                let bytes = record.data.as_slice();
                if same_time.0 != Some(time) {
                    same_time = (Some(time), Vec::new());
                }
                if same_time.1.iter().any(|seen| seen.as_slice() == bytes.as_ref()) {
                    decoded.duplicates += 1;
                    continue;
                }
                same_time.1.push(bytes.into_owned());
            }
        }
        if kind == RecordType::LOST_SAMPLES {
            // `u64 lost`, then the sample id fields.
            let data = record.data.as_slice();
            lost_samples += data.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
            continue;
        }
        let parsed = record.parse().with_context(|| format!("{}: a {kind:?} record is unreadable", path.display()))?;
        match parsed {
            EventRecord::Sample(sample) => {
                decoded.samples += 1;
                let event = events.get(attr_index).with_context(|| {
                    format!(
                        "{}: a sample of event #{attr_index}, which the file does not describe",
                        where_(decoded.samples)
                    )
                })?;
                *decoded.probes.entry(event.name.clone()).or_insert(0) += 1;
                if probe.is_some_and(|want| event.probe.as_deref() != Some(want)) || event.probe.is_none() {
                    continue;
                }
                let raw = sample.raw.map(|r| r.as_slice()).with_context(|| {
                    format!(
                        "{}: a {} sample without its arguments (recorded without PERF_SAMPLE_RAW)",
                        where_(decoded.samples),
                        event.name
                    )
                })?;
                let get = |arg: &str| event.arg(&raw, arg);
                if let Some(want) = id {
                    if get("id").is_some_and(|got| got != want) {
                        filtered += 1;
                        continue;
                    }
                }
                let w = weight
                    .of(event.probe.as_deref().unwrap_or_default(), &get)
                    .map_err(|why| anyhow::anyhow!("{}: heapprobe:{} {why}", where_(decoded.samples), event.name))?;
                let pid = sample.pid.unwrap_or(-1);
                frames.clear();
                if let Some((stack, dynamic_size)) = &sample.user_stack {
                    // `--call-graph dwarf`: perf copied the user stack for
                    // us to unwind; its callchain has no user frames.
                    decoded.dwarf_samples += 1;
                    let regs = sample.user_regs.as_ref().and_then(|regs| {
                        Some(Registers {
                            ip: regs.get(perf::PERF_REG_X86_IP)?,
                            sp: regs.get(perf::PERF_REG_X86_SP)?,
                            bp: regs.get(perf::PERF_REG_X86_BP)?,
                        })
                    });
                    let Some(regs) = regs else {
                        bail!(
                            "{}: a {} sample with a user stack but without the registers ip, sp and bp to \
                             unwind it from (record with --call-graph dwarf, which samples them)",
                            where_(decoded.samples),
                            event.name
                        );
                    };
                    let stack = stack.as_slice();
                    // The copy is `size` bytes, of which the first
                    // `dynamic_size` were really on the stack.
                    let valid = stack.len().min(usize::try_from(*dynamic_size).unwrap_or(usize::MAX));
                    unwound.clear();
                    let ending = unwinders.unwind(pid, regs, &stack[..valid], &mut unwound);
                    frames.extend(unwound.iter().map(|&(address, leaf)| symbols.frame(pid, address, leaf)));
                    if ending == Ending::Truncated {
                        frames.push(truncated);
                    }
                } else {
                    let Some(chain) = sample.callchain else {
                        bail!(
                            "{}: a {} sample without a call stack: record with --call-graph (fp or dwarf)",
                            where_(decoded.samples),
                            event.name
                        );
                    };
                    let mut user = false;
                    for i in 0..chain.len() {
                        let address = chain.get(i).unwrap_or(0);
                        if address >= perf::PERF_CONTEXT_MAX {
                            user = address == perf::PERF_CONTEXT_USER;
                            continue;
                        }
                        if user {
                            let leaf = frames.is_empty();
                            frames.push(symbols.frame(pid, address, leaf));
                        }
                    }
                }
                match stacks.get_mut(frames.as_slice()) {
                    Some((events, total)) => {
                        *events += 1;
                        *total += w;
                    }
                    None => {
                        stacks.insert(frames.as_slice().into(), (1, w));
                    }
                }
            }
            EventRecord::Mmap(mmap) if mmap.is_executable => {
                let path = String::from_utf8_lossy(&mmap.path.as_slice()).into_owned();
                unwinders.map(mmap.pid, mmap.address, mmap.length, mmap.page_offset, &path);
                symbols.map(mmap.pid, mmap.address, mmap.length, mmap.page_offset, path);
            }
            EventRecord::Mmap2(mmap) if mmap.protection & libc::PROT_EXEC as u32 != 0 => {
                let path = String::from_utf8_lossy(&mmap.path.as_slice()).into_owned();
                unwinders.map(mmap.pid, mmap.address, mmap.length, mmap.page_offset, &path);
                symbols.map(mmap.pid, mmap.address, mmap.length, mmap.page_offset, path);
            }
            EventRecord::Mmap(_) | EventRecord::Mmap2(_) => {}
            EventRecord::Comm(comm) if comm.is_execve => {
                unwinders.exec(comm.pid);
                symbols.exec(comm.pid);
            }
            EventRecord::Comm(_) | EventRecord::Exit(_) => {}
            EventRecord::Fork(fork) => {
                unwinders.fork(fork.ppid, fork.pid);
                symbols.fork(fork.ppid, fork.pid);
            }
            EventRecord::Lost(lost) => lost_records += lost.count,
            EventRecord::Throttle(_) => decoded.throttled += 1,
            EventRecord::Unthrottle(_) | EventRecord::ContextSwitch(_) => {}
            EventRecord::Raw(raw) if KNOWN_IRRELEVANT.contains(&raw.record_type) => {}
            EventRecord::Raw(raw) => *decoded.unknown_records.entry(raw.record_type.0).or_insert(0) += 1,
            _ => *decoded.unknown_records.entry(kind.0).or_insert(0) += 1,
        }
    }
    decoded.folded.filtered = filtered;
    decoded.lost = lost_records.max(lost_samples);
    decoded.folded.unwound = decoded.dwarf_samples;
    for (stack, (events, total)) in &stacks {
        let names: Vec<&str> = stack.iter().map(|&id| symbols.names[id as usize].as_ref()).collect();
        decoded.folded.add_repeated(&names, *total, *events);
    }
    decoded.rebuilt = std::mem::take(&mut symbols.files.rebuilt);
    Ok(decoded)
}

/// Record kinds that say nothing about allocations: reads, AUX data,
/// context switches, namespaces, kernel symbols, BPF, cgroups, text pokes.
const KNOWN_IRRELEVANT: [RecordType; 11] = [
    RecordType::READ,
    RecordType::AUX,
    RecordType::ITRACE_START,
    RecordType::SWITCH,
    RecordType::SWITCH_CPU_WIDE,
    RecordType::NAMESPACES,
    RecordType::KSYMBOL,
    RecordType::BPF_EVENT,
    RecordType::CGROUP,
    RecordType::TEXT_POKE,
    RecordType::AUX_OUTPUT_HW_ID,
];

/// One event of the recording, from its attributes and format.
struct Event {
    /// `group:alloc__3`, or the attribute's name.
    name: String,
    /// The heapprobe probe it is a site of (`alloc`), if it is one: an
    /// event named after a probe whose format has the probe's arguments.
    probe: Option<String>,
    /// (name, offset, size) of its fields.
    fields: Vec<(String, usize, usize)>,
}

impl Event {
    fn new(kind: &PerfEventType, attr_name: Option<&str>, formats: &HashMap<u64, Format>) -> Self {
        let format = match kind {
            PerfEventType::Tracepoint(id) => formats.get(id),
            _ => None,
        };
        let Some(format) = format else {
            return Self { name: attr_name.unwrap_or("an event").to_owned(), probe: None, fields: Vec::new() };
        };
        // `alloc__3` is one of the sites of `alloc`.
        let base = match format.name.rsplit_once("__") {
            Some((probe, site)) if !site.is_empty() && site.bytes().all(|b| b.is_ascii_digit()) => probe,
            _ => format.name.as_str(),
        };
        let probe = heapprobe::probes::PROBES
            .iter()
            .find(|(name, args)| *name == base && args.iter().all(|a| format.fields.iter().any(|f| f.0 == *a)))
            .map(|(name, _)| (*name).to_owned());
        let name = match &probe {
            Some(probe) => probe.clone(),
            None => format!("{}:{}", format.system, format.name),
        };
        Self { name, probe, fields: format.fields.clone() }
    }

    /// The value of argument `name` in a sample's raw data.
    fn arg(&self, raw: &[u8], name: &str) -> Option<u64> {
        let (_, offset, size) = self.fields.iter().find(|f| f.0 == name)?;
        let bytes = raw.get(*offset..offset + size)?;
        Some(match *size {
            1 => u64::from(bytes[0]),
            2 => u64::from(u16::from_le_bytes(bytes.try_into().ok()?)),
            4 => u64::from(u32::from_le_bytes(bytes.try_into().ok()?)),
            8 => u64::from_le_bytes(bytes.try_into().ok()?),
            _ => return None,
        })
    }
}

/// An event's format, from the tracing data.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Format {
    system: String,
    name: String,
    /// (name, offset, size).
    fields: Vec<(String, usize, usize)>,
}

/// The event formats of perf's tracing data (`HEADER_TRACING_DATA`, as
/// `tools/perf/util/trace-event-info.c` writes it), by tracepoint id.
fn parse_tracing_data(data: &[u8]) -> anyhow::Result<HashMap<u64, Format>> {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
            if self.0.len() < n {
                bail!("it ends early");
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }
        fn u32(&mut self) -> anyhow::Result<u32> {
            Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
        }
        fn u64(&mut self) -> anyhow::Result<u64> {
            Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
        }
        fn string(&mut self) -> anyhow::Result<&'a str> {
            let end = self.0.iter().position(|&b| b == 0).context("a string without its end")?;
            let s = std::str::from_utf8(&self.0[..end])?;
            self.0 = &self.0[end + 1..];
            Ok(s)
        }
        fn sized(&mut self) -> anyhow::Result<&'a [u8]> {
            let n = usize::try_from(self.u64()?)?;
            self.take(n)
        }
    }
    let mut c = Cursor(data);
    if c.take(10)? != b"\x17\x08\x44tracing" {
        bail!("no tracing-data magic");
    }
    let _version = c.string()?;
    if c.take(1)?[0] != 0 {
        bail!("it was written big-endian");
    }
    let _long_size = c.take(1)?;
    let _page_size = c.u32()?;
    for header in ["header_page", "header_event"] {
        if c.string()? != header {
            bail!("no {header}");
        }
        c.sized()?;
    }
    for _ in 0..c.u32()? {
        c.sized()?; // ftrace's own formats
    }
    let mut formats = HashMap::new();
    for _ in 0..c.u32()? {
        let system = c.string()?.to_owned();
        for _ in 0..c.u32()? {
            let text = std::str::from_utf8(c.sized()?)?;
            let (id, format) = parse_format(&system, text)
                .with_context(|| format!("the format of an event of {system} is unreadable: {text:?}"))?;
            formats.insert(id, format);
        }
    }
    Ok(formats)
}

/// One event's format file: `name: alloc__0`, `ID: 1234`, then
/// `\tfield:u64 size;\toffset:24;\tsize:8;\tsigned:0;` lines.
fn parse_format(system: &str, text: &str) -> Option<(u64, Format)> {
    let mut name = None;
    let mut id = None;
    let mut fields = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(n) = line.strip_prefix("name: ") {
            name = Some(n.trim().to_owned());
        } else if let Some(n) = line.strip_prefix("ID: ") {
            id = n.trim().parse().ok();
        } else if let Some(field) = line.strip_prefix("field:") {
            let mut parts = field.split(';').map(str::trim);
            let declaration = parts.next()?;
            let field_name = declaration.rsplit(' ').next()?.split('[').next()?.to_owned();
            let mut offset = None;
            let mut size = None;
            for part in parts {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            fields.push((field_name, offset?, size?));
        }
    }
    Some((id?, Format { system: system.to_owned(), name: name?, fields }))
}

/// A fast hasher for addresses and frame ids (FxHash's multiply and
/// rotate): a million samples of about twenty frames are looked up.
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// Frame names by address, per process, from the recording's memory-map
/// records: each distinct address is symbolised and demangled once.
struct Symbols {
    files: Files,
    maps: HashMap<i32, Vec<Mapping>>,
    /// (pid, address with the leaf bit) → name id; cleared for a process
    /// when its map changes.
    cache: FastMap<(i32, u64), u32>,
    names: Vec<Rc<str>>,
    ids: HashMap<Rc<str>, u32>,
}

/// Set on cached addresses looked up as a leaf (exactly, not one byte
/// earlier as return addresses are): user addresses are below 2^63.
const LEAF: u64 = 1 << 63;

impl Symbols {
    fn new(files: Files) -> Self {
        let unknown: Rc<str> = Rc::from(UNKNOWN);
        Self {
            files,
            maps: HashMap::new(),
            cache: FastMap::default(),
            names: vec![unknown.clone()],
            ids: HashMap::from([(unknown, 0)]),
        }
    }

    fn map(&mut self, pid: i32, start: u64, length: u64, offset: u64, path: String) {
        if !path.starts_with('/') {
            return; // [vdso], anonymous JIT code: no file to read
        }
        let end = start.saturating_add(length);
        let maps = self.maps.entry(pid).or_default();
        maps.retain(|m| m.end <= start || end <= m.start);
        maps.push(Mapping { start, end, offset, path: PathBuf::from(path) });
        self.cache.retain(|(p, _), _| *p != pid);
    }

    fn exec(&mut self, pid: i32) {
        self.maps.remove(&pid);
        self.cache.retain(|(p, _), _| *p != pid);
    }

    fn fork(&mut self, parent: i32, child: i32) {
        if parent != child {
            if let Some(maps) = self.maps.get(&parent).cloned() {
                self.maps.insert(child, maps);
            }
        }
    }

    /// The name id of `name`, a frame that stands for no address.
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let name: Rc<str> = Rc::from(name);
        let id = self.names.len() as u32;
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    /// The name id of the frame at `address` of process `pid`.
    fn frame(&mut self, pid: i32, address: u64, leaf: bool) -> u32 {
        let key = (pid, if leaf { address | LEAF } else { address });
        if let Some(&id) = self.cache.get(&key) {
            return id;
        }
        let lookup = if leaf { address } else { address.saturating_sub(1) };
        let name = self
            .maps
            .get(&pid)
            .and_then(|maps| maps.iter().find(|m| (m.start..m.end).contains(&lookup)))
            .and_then(|m| self.files.name_at_offset(&m.path, lookup - m.start + m.offset).map(demangle));
        let id = match name {
            None => 0,
            Some(name) => self.intern(&name),
        };
        self.cache.insert(key, id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A perf.data of `records` (type, body), with a minimal header.
    fn perf_data(records: &[(u32, Vec<u64>)]) -> Vec<u8> {
        let mut data = Vec::new();
        for (kind, words) in records {
            data.extend(kind.to_le_bytes());
            data.extend(0u16.to_le_bytes());
            data.extend((8 + 8 * words.len() as u16).to_le_bytes());
            for w in words {
                data.extend(w.to_le_bytes());
            }
        }
        let mut file = b"PERFILE2".to_vec();
        for w in [104u64, 136, 0, 0, 104, data.len() as u64, 0, 0] {
            file.extend(w.to_le_bytes());
        }
        file.resize(104, 0);
        file.extend(data);
        file
    }

    /// Tracing data as perf writes it: magic, version, endianness, long
    /// size, page size, the two headers, ftrace's formats, then the event
    /// systems with their formats.
    fn tracing_data(systems: &[(&str, &[&str])]) -> Vec<u8> {
        let mut data = b"\x17\x08\x44tracing0.6\0\0\x08".to_vec();
        data.extend(4096u32.to_le_bytes());
        for header in ["header_page", "header_event"] {
            data.extend(header.as_bytes());
            data.push(0);
            data.extend(3u64.to_le_bytes());
            data.extend(b"abc");
        }
        data.extend(1u32.to_le_bytes());
        data.extend(2u64.to_le_bytes());
        data.extend(b"xy");
        data.extend((systems.len() as u32).to_le_bytes());
        for (system, formats) in systems {
            data.extend(system.as_bytes());
            data.push(0);
            data.extend((formats.len() as u32).to_le_bytes());
            for format in *formats {
                data.extend((format.len() as u64).to_le_bytes());
                data.extend(format.as_bytes());
            }
        }
        data.extend(0u32.to_le_bytes()); // kallsyms
        data.extend(0u32.to_le_bytes()); // printk
        data
    }

    const ALLOC_FORMAT: &str = "name: alloc__0\nID: 2001\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
        \tfield:unsigned long __probe_ip;\toffset:8;\tsize:8;\tsigned:0;\n\
        \tfield:u64 ptr;\toffset:16;\tsize:8;\tsigned:0;\n\
        \tfield:u64 size;\toffset:24;\tsize:8;\tsigned:0;\n\
        \tfield:u64 align;\toffset:32;\tsize:8;\tsigned:0;\n\n\
        print fmt: \"(%lx) ptr=%llu size=%llu align=%llu\", REC->__probe_ip, REC->ptr, REC->size, REC->align\n";

    #[test]
    fn event_formats_are_read_from_the_tracing_data() {
        let data =
            tracing_data(&[("heapprobe_7_trace0", &[ALLOC_FORMAT]), ("sched", &["name: switch\nID: 5\nformat:\n"])]);
        let formats = parse_tracing_data(&data).unwrap();
        let alloc = &formats[&2001];
        assert_eq!((alloc.system.as_str(), alloc.name.as_str()), ("heapprobe_7_trace0", "alloc__0"));
        assert_eq!(
            alloc.fields[3..],
            [(String::from("ptr"), 16, 8), (String::from("size"), 24, 8), (String::from("align"), 32, 8)]
        );
        assert_eq!(formats[&5].fields, []);
        // A site of `alloc` with its arguments is the probe; its values are
        // read at the format's offsets.
        let event = Event::new(&PerfEventType::Tracepoint(2001), None, &formats);
        assert_eq!((event.name.as_str(), event.probe.as_deref()), ("alloc", Some("alloc")));
        let mut raw = vec![0u8; 40];
        raw[24..32].copy_from_slice(&4096u64.to_le_bytes());
        assert_eq!(event.arg(&raw, "size"), Some(4096));
        assert_eq!(event.arg(&raw[..30], "size"), None, "cut short");
        assert_eq!(event.arg(&raw, "new_size"), None);
        // Another event is counted under its own name, never folded.
        let other = Event::new(&PerfEventType::Tracepoint(5), None, &formats);
        assert_eq!((other.name.as_str(), other.probe), ("sched:switch", None));
        // An event named after a probe but without its arguments is not it.
        let renamed = ALLOC_FORMAT.replace("u64 size;", "u64 arg1;");
        let formats = parse_tracing_data(&tracing_data(&[("g", &[renamed.as_str()])])).unwrap();
        assert_eq!(Event::new(&PerfEventType::Tracepoint(2001), None, &formats).probe, None);
        // Damaged data is an error, not an empty table.
        let mut cut = tracing_data(&[("g", &[ALLOC_FORMAT])]);
        cut.truncate(cut.len() - 60);
        assert!(parse_tracing_data(&cut).is_err());
        assert!(parse_tracing_data(b"\x17\x08\x44tracinX").is_err());
    }

    #[test]
    fn counts_samples_and_the_larger_lost_count() {
        let dir = std::env::temp_dir().join(format!("xtask-perf-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("perf.data");
        let records = [
            (RECORD_SAMPLE, vec![1, 2, 3]),
            (68, vec![]),
            (RECORD_LOST, vec![7, 40]),
            (RECORD_SAMPLE, vec![1]),
            (RECORD_LOST, vec![7, 2]),
            (RECORD_LOST_SAMPLES, vec![45]),
            (RECORD_SAMPLE, vec![]),
        ];
        std::fs::write(&path, perf_data(&records)).unwrap();
        assert_eq!(count(&path).unwrap(), Counts { samples: 3, lost: 45 });
        std::fs::write(&path, perf_data(&records[..5])).unwrap();
        assert_eq!(count(&path).unwrap(), Counts { samples: 2, lost: 42 });
        let mut cut = perf_data(&records);
        cut.truncate(cut.len() - 4);
        std::fs::write(&path, &cut).unwrap();
        assert!(format!("{:#}", count(&path).unwrap_err()).contains("cut off"));
        std::fs::write(&path, [b'x'; 200]).unwrap();
        assert!(format!("{:#}", count(&path).unwrap_err()).contains("PERFILE2"));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A real recording (`perf record` 6.1 on this project's fixture, all
    /// its probe sites as uprobes in a group `rep3`) in which perf wrote one
    /// `local_alloc` sample twice: 2,600 sample records in the file, of
    /// which one is a byte-identical copy (the fixture makes exactly 20
    /// `local_alloc` calls and 1121 `alloc` calls; the file holds 21 and
    /// 1121 records).
    #[test]
    fn a_sample_perf_wrote_twice_is_counted_once_and_reported() {
        use std::io::Read as _;
        let gz = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/perf-record-wrote-a-sample-twice.perf.data.gz");
        let mut data = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&gz).unwrap()).read_to_end(&mut data).unwrap();
        let dir = std::env::temp_dir().join(format!("xtask-perf-data-dup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("perf.data");
        std::fs::write(&path, data).unwrap();
        let counts = count(&path).unwrap();
        // No heapprobe probe in it (the group is not heapprobe's): every
        // sample is counted under its event, none folded.
        let decoded = fold(&path, Some("alloc"), Weight::Count, None).unwrap();
        let _ = std::fs::remove_dir_all(dir);
        assert_eq!(decoded.duplicates, 1);
        assert_eq!(counts.samples, decoded.samples + 1);
        let of = |event: &str| decoded.probes.get(event).copied().unwrap_or(0);
        assert_eq!(of("rep3:local_alloc__25"), 20, "{:#?}", decoded.probes);
        for event in ["rep3:local_grow__22", "rep3:local_shrink__23", "rep3:local_dealloc__20"] {
            assert_eq!(of(event), 20, "{event}: {:#?}", decoded.probes);
        }
        assert_eq!(of("rep3:alloc__1") + of("rep3:alloc__5"), 1121, "{:#?}", decoded.probes);
        assert_eq!(decoded.probes.values().sum::<u64>(), decoded.samples);
    }
}
