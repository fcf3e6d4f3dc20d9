//! A profile read out of the tables: views, symbols, folded stacks, JSON
//! and the summary that checks the estimate against the exact counters.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::path::Path;

use super::sampler::ThreadInfo;
use super::stack::Method;
use super::store::{Capacity, Drops, Live, Site, StackEntry, Store, STACK_DROPPED, STACK_TRUNCATED};
use super::symbols::Frame;
use crate::stats::Stats;

/// A stack's return addresses, leaf first, each with its frames (inlined
/// ones expanded), innermost first.
pub(crate) type ResolvedStack = Vec<(usize, Vec<Frame>)>;

/// Which figure a folded profile or flame graph is weighted by.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Bytes allocated (cumulative; realloc growth included), estimated.
    AllocatedBytes,
    /// Allocations made (cumulative), estimated.
    AllocatedObjects,
    /// Bytes of the sampled blocks still live, estimated.
    InUseBytes,
    /// Blocks still live, estimated.
    InUseObjects,
    /// The in-use bytes at the high-water mark of the profile's in-use
    /// total (dhat's t-gmax): the live heap as it was at its peak.
    PeakBytes,
    /// The live blocks at that same moment.
    PeakObjects,
}

impl View {
    /// Every view, in the order above.
    pub const ALL: [View; 6] = [
        View::AllocatedBytes,
        View::AllocatedObjects,
        View::InUseBytes,
        View::InUseObjects,
        View::PeakBytes,
        View::PeakObjects,
    ];

    /// A short name: `alloc_space`, `alloc_objects`, `inuse_space`,
    /// `inuse_objects` (Go's pprof names), `peak_space`, `peak_objects`.
    pub fn name(self) -> &'static str {
        match self {
            View::AllocatedBytes => "alloc_space",
            View::AllocatedObjects => "alloc_objects",
            View::InUseBytes => "inuse_space",
            View::InUseObjects => "inuse_objects",
            View::PeakBytes => "peak_space",
            View::PeakObjects => "peak_objects",
        }
    }

    /// What the weight counts (for flame graph titles).
    pub fn unit(self) -> &'static str {
        match self {
            View::AllocatedBytes | View::InUseBytes | View::PeakBytes => "bytes",
            _ => "objects",
        }
    }
}

/// Where a profile came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Global,
    Scope,
}

/// A heap profile: sampled stacks with their allocated, in-use and peak
/// figures, per thread, plus everything needed to judge it (the exact
/// counters of the same period, drops, truncation, the profiler's memory).
///
/// Made by [`Heapprobe::stop_profiler`](crate::Heapprobe::stop_profiler),
/// [`Heapprobe::profile_snapshot`](crate::Heapprobe::profile_snapshot) and
/// [`Heapprobe::profile`](crate::Heapprobe::profile). Its `Display` is the
/// summary.
pub struct Profile {
    pub(crate) kind: Kind,
    pub(crate) rate: u64,
    pub(crate) method: Method,
    pub(crate) frame_pointers: bool,
    pub(crate) max_depth: usize,
    pub(crate) stacks: Vec<StackEntry>,
    pub(crate) frames: Vec<usize>,
    pub(crate) sites: Vec<Site>,
    pub(crate) live: Vec<Live>,
    pub(crate) threads: Vec<ThreadInfo>,
    pub(crate) drops: Drops,
    pub(crate) capacity: Capacity,
    /// Bytes mapped for the tables, and resident.
    pub(crate) memory: (usize, usize),
    pub(crate) inuse: (f64, f64),
    pub(crate) peak: (f64, f64),
    pub(crate) at_peak: bool,
    pub(crate) samples: u64,
    pub(crate) truncated_samples: u64,
    pub(crate) fp_samples: u64,
    pub(crate) untracked_bytes: f64,
    pub(crate) skipped: u64,
    pub(crate) exact: Option<Stats>,
    pub(crate) exact_current: Option<usize>,
    pub(crate) seconds: Option<f64>,
    pub(crate) note: Option<String>,
    /// The profiler's session (it changes at every start and stop): two
    /// snapshots of one session can be subtracted.
    pub(crate) session: u32,
    /// When the tables were read (`sys::now_ns`), for the live blocks' ages.
    pub(crate) taken: u64,
    /// Each stack's frames, root first, symbolised (built on first use).
    names: OnceCell<Vec<Vec<String>>>,
    resolved: OnceCell<Vec<ResolvedStack>>,
}

impl Profile {
    /// Copies a store's tables. `threads` are the registry entries.
    pub(crate) fn from_store(kind: Kind, store: &Store, threads: &[ThreadInfo]) -> Profile {
        let stacks: Vec<StackEntry> = (0..store.stacks_used as u32).map(|i| store.stack(i)).collect();
        let mut frames = Vec::new();
        let mut stacks_out = Vec::with_capacity(stacks.len());
        for s in &stacks {
            let f = store.frames(s);
            stacks_out.push(StackEntry { start: frames.len() as u32, ..*s });
            frames.extend_from_slice(f);
        }
        Profile {
            kind,
            rate: store.rate,
            method: super::stack::method(),
            frame_pointers: super::sampler::frame_pointers_hold(),
            max_depth: 0,
            stacks: stacks_out,
            frames,
            sites: store.sites().to_vec(),
            live: store.live_blocks().collect(),
            threads: threads.to_vec(),
            drops: store.drops,
            capacity: store.capacity(),
            memory: store.memory(),
            inuse: (store.inuse_objects, store.inuse_bytes),
            peak: (store.peak_objects, store.peak_bytes),
            at_peak: store.at_peak,
            samples: store.samples,
            truncated_samples: store.truncated_samples,
            fp_samples: store.fp_samples,
            untracked_bytes: store.untracked_bytes,
            skipped: 0,
            exact: None,
            exact_current: None,
            seconds: None,
            note: None,
            session: 0,
            taken: super::sys::now_ns(),
            names: OnceCell::new(),
            resolved: OnceCell::new(),
        }
    }

    /// What was allocated, and how the in-use view changed, between
    /// `earlier` and this profile (Go's delta profiles: `?seconds=N`).
    /// `None` if the profiler stopped or restarted in between (they are
    /// different sessions, whose tables do not line up).
    #[cfg_attr(not(all(feature = "server", feature = "pprof")), allow(dead_code))]
    pub(crate) fn delta_since(&self, earlier: &Profile) -> Option<Profile> {
        if self.kind != earlier.kind || self.session != earlier.session || earlier.sites.len() > self.sites.len() {
            return None;
        }
        // One session's tables only grow: a site keeps its index.
        let mut sites = self.sites.clone();
        for (now, then) in sites.iter_mut().zip(&earlier.sites) {
            now.alloc_objects -= then.alloc_objects;
            now.alloc_bytes -= then.alloc_bytes;
            now.inuse_objects -= then.inuse_objects;
            now.inuse_bytes -= then.inuse_bytes;
            now.samples = now.samples.saturating_sub(then.samples);
        }
        Some(Profile {
            kind: self.kind,
            rate: self.rate,
            method: self.method,
            frame_pointers: self.frame_pointers,
            max_depth: self.max_depth,
            stacks: self.stacks.clone(),
            frames: self.frames.clone(),
            sites,
            live: self.live.clone(),
            threads: self.threads.clone(),
            drops: self.drops,
            capacity: self.capacity,
            memory: self.memory,
            inuse: (self.inuse.0 - earlier.inuse.0, self.inuse.1 - earlier.inuse.1),
            peak: self.peak,
            at_peak: self.at_peak,
            samples: self.samples.saturating_sub(earlier.samples),
            truncated_samples: self.truncated_samples.saturating_sub(earlier.truncated_samples),
            fp_samples: self.fp_samples.saturating_sub(earlier.fp_samples),
            untracked_bytes: self.untracked_bytes - earlier.untracked_bytes,
            skipped: self.skipped.saturating_sub(earlier.skipped),
            exact: self.exact.zip(earlier.exact).map(|(now, then)| now - then),
            exact_current: self.exact_current,
            seconds: self.seconds.zip(earlier.seconds).map(|(now, then)| now - then),
            note: self.note.clone(),
            session: self.session,
            taken: self.taken,
            names: OnceCell::new(),
            resolved: OnceCell::new(),
        })
    }

    /// A profile with nothing in it, saying why.
    pub(crate) fn empty(note: String, exact: Option<Stats>) -> Profile {
        Profile {
            kind: Kind::Scope,
            rate: 1,
            method: super::stack::method(),
            frame_pointers: false,
            max_depth: 0,
            stacks: Vec::new(),
            frames: Vec::new(),
            sites: Vec::new(),
            live: Vec::new(),
            threads: Vec::new(),
            drops: Drops::default(),
            capacity: Capacity { stacks: 0, frames: 0, sites: 0, live: 0 },
            memory: (0, 0),
            inuse: (0.0, 0.0),
            peak: (0.0, 0.0),
            at_peak: true,
            samples: 0,
            truncated_samples: 0,
            fp_samples: 0,
            untracked_bytes: 0.0,
            skipped: 0,
            exact,
            exact_current: None,
            seconds: None,
            note: Some(note),
            session: 0,
            taken: 0,
            names: OnceCell::new(),
            resolved: OnceCell::new(),
        }
    }

    /// The mean sampling gap in bytes (1: every allocation recorded).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// How stacks were captured: `"frame pointers"`, or `".eh_frame (DWARF
    /// unwinding, …)"` with heapprobe's own unwinder (its rules cached) or
    /// libgcc's where that one is not available (not x86_64 Linux with
    /// glibc 2.35 or later, or calibration found it wrong).
    pub fn unwinder(&self) -> &'static str {
        match self.method {
            Method::FramePointers => "frame pointers",
            Method::Dwarf if super::stack::fast_unwinder() => ".eh_frame (DWARF unwinding, cached rules)",
            Method::Dwarf => ".eh_frame (DWARF unwinding, libgcc)",
        }
    }

    /// Samples recorded (each allocation at rate 1).
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Samples whose stack had no room in a table, plus live blocks the
    /// live table could not track: `(stacks, sites, live)`.
    pub fn drops(&self) -> (u64, u64, u64) {
        (self.drops.stacks, self.drops.sites, self.drops.live)
    }

    /// Bytes the profiler mapped for its tables, and how many of them are
    /// in memory (touched).
    pub fn memory(&self) -> (usize, usize) {
        self.memory
    }

    /// The exact counters of the same period ([`Heapprobe::stats`](crate::Heapprobe::stats)
    /// since the profiler started, or the scope's measured [`Stats`]).
    pub fn exact(&self) -> Option<&Stats> {
        self.exact.as_ref()
    }

    /// The total of `view` over every stack and thread.
    pub fn total(&self, view: View) -> f64 {
        match view {
            View::InUseBytes => self.inuse.1,
            View::InUseObjects => self.inuse.0,
            View::PeakBytes => self.peak.1,
            View::PeakObjects => self.peak.0,
            _ => self.sites.iter().map(|s| self.value(s, view)).sum(),
        }
    }

    /// The total of `view` over the stacks that pass through a frame whose
    /// name contains `function` (the whole `view` for a recursive one is
    /// counted once per stack).
    pub fn total_through(&self, view: View, function: &str) -> f64 {
        let names = self.names();
        self.sites
            .iter()
            .filter(|s| names.get(s.stack as usize).is_some_and(|n| n.iter().any(|f| f.contains(function))))
            .map(|s| self.value(s, view))
            .sum()
    }

    #[cfg_attr(not(feature = "pprof"), allow(dead_code))]
    pub(crate) fn site_value(&self, site: &Site, view: View) -> f64 {
        self.value(site, view)
    }

    /// `(tid, name)` of a thread index.
    #[cfg_attr(not(feature = "pprof"), allow(dead_code))]
    pub(crate) fn thread_label(&self, index: u32) -> (u64, String) {
        (self.thread_info(index).tid, self.thread_name(index))
    }

    fn value(&self, site: &Site, view: View) -> f64 {
        let peak = |peak: f64, now: f64| if self.at_peak { now } else { peak };
        match view {
            View::AllocatedBytes => site.alloc_bytes,
            View::AllocatedObjects => site.alloc_objects,
            View::InUseBytes => site.inuse_bytes,
            View::InUseObjects => site.inuse_objects,
            View::PeakBytes => peak(site.peak_bytes, site.inuse_bytes),
            View::PeakObjects => peak(site.peak_objects, site.inuse_objects),
        }
    }

    /// The threads the profile saw: `(tid, name)`.
    pub fn threads(&self) -> Vec<(u64, String)> {
        let mut seen: Vec<u32> = self.sites.iter().filter(|s| s.samples > 0).map(|s| s.thread).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.into_iter().map(|t| (self.thread_info(t).tid, self.thread_name(t))).collect()
    }

    fn thread_info(&self, index: u32) -> ThreadInfo {
        self.threads.get(index as usize).copied().unwrap_or_default()
    }

    fn thread_name(&self, index: u32) -> String {
        if index == 0 && self.kind == Kind::Global {
            return String::from("[other threads]");
        }
        let info = self.thread_info(index);
        let end = info.name.iter().position(|b| *b == 0).unwrap_or(info.name.len());
        let name = super::symbols::printable(&String::from_utf8_lossy(&info.name[..end])).into_owned();
        if name.is_empty() {
            format!("tid {}", info.tid)
        } else {
            name
        }
    }

    /// Each stack's addresses, leaf first, each with its (inlined) frames,
    /// innermost first; the profiler's own frames removed.
    pub(crate) fn resolved(&self) -> &Vec<ResolvedStack> {
        // Naming allocates (the symbol tables, their caches): heapprobe's
        // own work, never recorded.
        self.resolved.get_or_init(|| super::sampler::unrecorded(|| self.resolve_all()))
    }

    fn resolve_all(&self) -> Vec<ResolvedStack> {
        let mut cache: HashMap<usize, Vec<Frame>> = HashMap::new();
        self.stacks
            .iter()
            .map(|stack| {
                // A stopped rendering is discarded whole (`interrupt`).
                if stack.flags & STACK_DROPPED != 0 || super::interrupt::stopped().is_some() {
                    return Vec::new();
                }
                let start = stack.start as usize;
                let frames = &self.frames[start..start + stack.len as usize];
                let mut out: Vec<(usize, Vec<Frame>)> = frames
                    .iter()
                    .map(|addr| {
                        (*addr, cache.entry(*addr).or_insert_with(|| super::symbols::resolve_cached(*addr)).clone())
                    })
                    .collect();
                // The sampler's own frames sit above the allocator's.
                let own = out.iter().take_while(|(_, f)| f.iter().all(super::symbols::is_own)).count();
                out.drain(..own);
                if let Some((_, first)) = out.first_mut() {
                    let inner = first.iter().take_while(|f| super::symbols::is_own(f)).count();
                    first.drain(..inner);
                }
                out
            })
            .collect()
    }

    /// Each stack's frames, root first, symbolised, with the profiler's own
    /// frames removed.
    fn names(&self) -> &Vec<Vec<String>> {
        self.names.get_or_init(|| {
            self.resolved()
                .iter()
                .zip(&self.stacks)
                .map(|(frames, stack)| {
                    if stack.flags & STACK_DROPPED != 0 {
                        return vec![String::from("[dropped: a profiler table was full]")];
                    }
                    let mut leaf_first: Vec<String> =
                        frames.iter().flat_map(|(_, f)| f.iter().map(|f| f.name.clone())).collect();
                    if stack.flags & STACK_TRUNCATED != 0 {
                        leaf_first.push(String::from("[truncated]"));
                    }
                    leaf_first.reverse();
                    leaf_first
                })
                .collect()
        })
    }

    /// The folded stacks of `view` over all threads, in the format `cargo
    /// xtask trace` writes: frames root first separated by `;`, a space, and
    /// the weight (rounded to an integer); sorted; zero lines left out.
    pub fn folded(&self, view: View) -> String {
        self.fold(view, |_| true, false)
    }

    /// As [`folded`](Self::folded), with each stack's thread (`name tid`) as its root frame.
    pub fn folded_per_thread(&self, view: View) -> String {
        self.fold(view, |_| true, true)
    }

    /// As [`folded`](Self::folded), for the thread with kernel id `tid` only.
    pub fn folded_for_thread(&self, view: View, tid: u64) -> String {
        self.fold(view, |info| info.tid == tid, false)
    }

    fn fold(&self, view: View, keep: impl Fn(&ThreadInfo) -> bool, thread_root: bool) -> String {
        let names = self.names();
        let mut lines: HashMap<String, f64> = HashMap::new();
        for site in &self.sites {
            if !keep(&self.thread_info(site.thread)) {
                continue;
            }
            let value = self.value(site, view);
            if value == 0.0 {
                continue;
            }
            let mut key = String::new();
            if thread_root {
                let _ = write!(key, "{} {}", self.thread_name(site.thread), self.thread_info(site.thread).tid);
            }
            for frame in names.get(site.stack as usize).into_iter().flatten() {
                if !key.is_empty() {
                    key.push(';');
                }
                key.push_str(&frame.replace(';', ","));
            }
            if key.is_empty() {
                key.push_str("[unknown]");
            }
            *lines.entry(key).or_default() += value;
        }
        let mut lines: Vec<(String, u64)> =
            lines.into_iter().map(|(k, v)| (k, v.round() as u64)).filter(|(_, v)| *v != 0).collect();
        lines.sort();
        let mut out = String::new();
        for (stack, weight) in lines {
            let _ = writeln!(out, "{stack} {weight}");
        }
        out
    }

    /// Writes [`folded`](Self::folded) to `path`, after a header line that
    /// records what the numbers are, `# heapprobe: weight=bytes
    /// view=alloc_space` (`weight=count` for the objects views), which
    /// inferno skips and `cargo heapprobe diff` checks (see `heapprobe::diff`).
    pub fn write_folded(&self, path: impl AsRef<Path>, view: View) -> std::io::Result<()> {
        let weight = if view.unit() == "bytes" { "bytes" } else { "count" };
        let mut text = format!("# heapprobe: weight={weight} view={}\n", view.name());
        text.push_str(&self.folded(view));
        std::fs::write(path, text)
    }

    /// The live tracked blocks as JSON: one object per block with its
    /// address, size, the objects and bytes it stands for, its thread and
    /// its stack (root first), plus the profile's rate and in-use totals.
    pub fn live_json(&self) -> String {
        let names = self.names();
        let mut out = String::new();
        let _ = write!(
            out,
            "{{\"rate\":{},\"unwinder\":{},\"in_use_objects\":{},\"in_use_bytes\":{},\"untracked_bytes\":{},\"blocks\":[",
            self.rate,
            json_string(self.unwinder()),
            json_number(self.inuse.0),
            json_number(self.inuse.1),
            json_number(self.untracked_bytes),
        );
        let mut live = self.live.clone();
        live.sort_by_key(|l| l.ptr);
        for (i, block) in live.iter().enumerate() {
            let site = self.sites.get(block.site as usize).copied().unwrap_or_default();
            let stack: Vec<String> =
                names.get(site.stack as usize).into_iter().flatten().map(|f| json_string(f)).collect();
            let _ = write!(
                out,
                "{}{{\"ptr\":\"{:#x}\",\"size\":{},\"objects\":{},\"bytes\":{},\"tid\":{},\"thread\":{},\"stack\":[{}]}}",
                if i == 0 { "" } else { "," },
                block.ptr,
                block.size,
                json_number(block.objects),
                json_number(block.bytes),
                self.thread_info(site.thread).tid,
                json_string(&self.thread_name(site.thread)),
                stack.join(","),
            );
        }
        out.push_str("]}");
        out
    }

    /// The live map (issue 14's `/debug/heap/live`), in the shape of the
    /// stats_alloc memory-map fork: `length_memory_array` (blocks listed),
    /// `memory` (`[[address, size], …]`), `memory_allocated` (their bytes)
    /// and `total_memory` (the exact current use, when the profile has it);
    /// then `blocks`, the same blocks with their thread, age in
    /// milliseconds and stack (root first). At rate 1 (`"exact": true`)
    /// every block allocated since the profiler started and still live is
    /// listed, so `memory_allocated` equals `total_memory` when it started
    /// with the process and other threads were not allocating at the
    /// instant of the snapshot; at other rates the blocks are samples, each
    /// standing for `objects` blocks. `truncated` says that the live table
    /// was full (`untracked_bytes` were not listed). At most `limit` blocks
    /// are listed, the largest first (then `truncated` is true as well, and
    /// `length_memory_array` < `live_blocks`). `truncated_by` names every
    /// reason blocks were left out: `"live_table"`, `"limit"`, `"size"`.
    pub fn live_map_json(&self, limit: usize) -> String {
        self.live_map_json_bounded(limit, usize::MAX)
    }

    /// [`live_map_json`](Self::live_map_json), at most `max_bytes` long
    /// (at least 4 KiB): blocks that would not fit are left out, the
    /// smallest first, and `truncated_by` then holds `"size"`;
    /// `max_body_bytes` is the bound. Holds at most twice the bound while
    /// it renders.
    pub(crate) fn live_map_json_bounded(&self, limit: usize, max_bytes: usize) -> String {
        // The head and tail fields: well under this.
        const FIXED: usize = 1024;
        let max_bytes = max_bytes.max(4 * FIXED);
        let names = self.names();
        if super::interrupt::stopped().is_some() {
            return String::new();
        }
        let mut live = self.live.clone();
        // The largest first; equal sizes by address (unique), so the order
        // is stable.
        live.sort_unstable_by(|a, b| b.size.cmp(&a.size).then(a.ptr.cmp(&b.ptr)));
        let total = live.len();
        live.truncate(limit);
        let by_limit = total > live.len();
        // The blocks' entries first, as long as they fit with their
        // `memory` pair and the fixed fields.
        let mut blocks = String::new();
        let mut pairs = 0usize;
        let mut listed = 0usize;
        let mut by_size = false;
        for (i, block) in live.iter().enumerate() {
            if i % 1024 == 0 && super::interrupt::stopped().is_some() {
                // Discarded whole by the caller.
                return String::new();
            }
            let site = self.sites.get(block.site as usize).copied().unwrap_or_default();
            let stack: Vec<String> =
                names.get(site.stack as usize).into_iter().flatten().map(|f| json_string(f)).collect();
            let age_ms = self.taken.saturating_sub(block.born) / 1_000_000;
            let mark = blocks.len();
            let _ = write!(
                blocks,
                "{}{{\"address\":{},\"size\":{},\"objects\":{},\"tid\":{},\"thread\":{},\"age_ms\":{age_ms},\"stack\":[{}]}}",
                if i == 0 { "" } else { "," },
                block.ptr,
                block.size,
                json_number(block.objects),
                self.thread_info(site.thread).tid,
                json_string(&self.thread_name(site.thread)),
                stack.join(","),
            );
            // `,[address,size]`: at most 43 bytes.
            let pair = 43;
            if FIXED + blocks.len() + pairs + pair > max_bytes {
                blocks.truncate(mark);
                by_size = true;
                break;
            }
            pairs += pair;
            listed += 1;
        }
        live.truncate(listed);
        let allocated: u64 = live.iter().map(|l| l.size).sum();
        let mut reasons = Vec::new();
        if self.drops.live > 0 {
            reasons.push("\"live_table\"");
        }
        if by_limit {
            reasons.push("\"limit\"");
        }
        if by_size {
            reasons.push("\"size\"");
        }
        let mut out = String::with_capacity(FIXED + blocks.len() + pairs);
        let _ = write!(out, "{{\"length_memory_array\":{},\"memory\":[", live.len());
        for (i, block) in live.iter().enumerate() {
            let _ = write!(out, "{}[{},{}]", if i == 0 { "" } else { "," }, block.ptr, block.size);
        }
        let _ = write!(
            out,
            "],\"memory_allocated\":{allocated},\"total_memory\":{},\"live_blocks\":{total},\"exact\":{},\"rate\":{},\
             \"truncated\":{},\"truncated_by\":[{}],\"max_body_bytes\":{},\"untracked_bytes\":{},\"in_use_bytes\":{},\
             \"in_use_objects\":{},\"blocks\":[",
            self.exact_current.map_or_else(|| String::from("null"), |c| c.to_string()),
            self.rate <= 1,
            self.rate,
            !reasons.is_empty(),
            reasons.join(","),
            if max_bytes == usize::MAX { String::from("null") } else { max_bytes.to_string() },
            json_number(self.untracked_bytes),
            json_number(self.inuse.1),
            json_number(self.inuse.0),
        );
        drop(live);
        out.push_str(&blocks);
        drop(blocks);
        out.push_str("]}\n");
        out
    }

    /// The share of stacks that do not reach a thread's entry point
    /// (`main`, `_start`, `clone`, `start_thread`, ...), which is what a
    /// truncated or broken walk looks like. `(short, total)`.
    pub fn short_stacks(&self) -> (usize, usize) {
        const ROOTS: [&str; 8] =
            ["_start", "__libc_start", "clone", "start_thread", "thread_start", "main", "lang_start", "__clone"];
        let names = self.names();
        let mut short = 0;
        let mut total = 0;
        for site in &self.sites {
            if site.samples == 0 {
                continue;
            }
            total += 1;
            let root = names.get(site.stack as usize).and_then(|n| n.first());
            if !root.is_some_and(|r| ROOTS.iter().any(|known| r.contains(known))) {
                short += 1;
            }
        }
        (short, total)
    }

    /// The heaviest allocation sites of `view` (innermost frame that is not
    /// allocator machinery, and two callers), one per line.
    pub fn top_sites_text(&self, view: View, n: usize) -> String {
        let mut merged: HashMap<String, f64> = HashMap::new();
        for line in self.folded(view).lines() {
            if let Some((stack, w)) = line.rsplit_once(' ') {
                *merged.entry(super::symbols::site_of(stack)).or_default() += w.parse::<f64>().unwrap_or(0.0);
            }
        }
        let total = self.total(view);
        let mut top: Vec<(String, f64)> = merged.into_iter().collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut out = String::new();
        if !top.is_empty() {
            let _ = writeln!(out, "  top allocation sites ({}):", view.name());
            for (site, w) in top.iter().take(n) {
                let share = if total > 0.0 { 100.0 * w / total } else { 0.0 };
                let shown = if view.unit() == "bytes" { human(*w) } else { format!("{w:.0}") };
                let _ = writeln!(out, "    {shown:>10} {share:5.1}%  {site}");
            }
        }
        out
    }

    /// The heaviest stacks of what is still live (the in-use view, all
    /// threads merged), valgrind-style: each with its bytes and blocks, then
    /// up to `depth` frames from the allocating function outwards (allocator
    /// machinery left out). Every line starts with `prefix`.
    pub(crate) fn live_stacks_text(&self, prefix: &str, n: usize, depth: usize) -> String {
        let names = self.names();
        let mut by_stack: HashMap<u32, (f64, f64)> = HashMap::new();
        for site in &self.sites {
            if site.inuse_bytes > 0.0 {
                let entry = by_stack.entry(site.stack).or_default();
                entry.0 += site.inuse_bytes;
                entry.1 += site.inuse_objects;
            }
        }
        let mut top: Vec<(u32, (f64, f64))> = by_stack.into_iter().collect();
        top.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0).then(a.0.cmp(&b.0)));
        let mut out = String::new();
        let how =
            if self.rate <= 1 { String::from("exact: rate 1") } else { format!("estimated at rate {}", self.rate) };
        let _ = writeln!(
            out,
            "{prefix}top live stacks ({} of {}, the in-process profiler's in-use view, {how}):",
            top.len().min(n),
            top.len()
        );
        for (stack, (bytes, objects)) in top.into_iter().take(n) {
            let _ = writeln!(out, "{prefix}  {:.0} bytes in {:.0} blocks", bytes, objects);
            let leaf_first: Vec<&String> = names.get(stack as usize).into_iter().flatten().rev().collect();
            let site = leaf_first.iter().position(|f| !super::symbols::is_machinery(f)).unwrap_or(0);
            for (i, frame) in leaf_first[site..].iter().take(depth).enumerate() {
                let _ = writeln!(out, "{prefix}    {} {frame}", if i == 0 { "at" } else { "by" });
            }
        }
        out
    }

    /// Renders the flame graph of `view` as an SVG with inferno (feature `profile`).
    #[cfg(feature = "profile")]
    pub fn write_flamegraph(&self, path: impl AsRef<Path>, view: View, title: &str) -> std::io::Result<()> {
        use inferno::flamegraph::{self, color::BasicPalette, Palette};
        let folded = self.folded(view);
        let mut options = flamegraph::Options::default();
        options.title = title.to_owned();
        options.subtitle = Some(format!(
            "{} in {} samples, rate {}, stacks by {}",
            human_or_count(self.total(view), view),
            self.samples,
            self.rate,
            self.unwinder()
        ));
        options.count_name = view.unit().to_owned();
        options.colors = Palette::Basic(BasicPalette::Mem);
        options.deterministic = true;
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        if folded.is_empty() {
            // inferno refuses empty input; an empty graph still says why.
            return flamegraph::from_lines(&mut options, ["[nothing recorded] 1"], file).map_err(std::io::Error::other);
        }
        flamegraph::from_lines(&mut options, folded.lines(), file).map_err(std::io::Error::other)
    }

    /// The summary (also the `Display` of the profile).
    pub fn summary(&self) -> String {
        self.to_string()
    }
}

/// The frame under which the pprof in-use view puts the bytes the live
/// table had no room for (their stacks are unknown).
#[cfg_attr(not(feature = "pprof"), allow(dead_code))]
pub(crate) const UNTRACKED_FRAME: &str = "[untracked: the live table was full]";

/// `8.0 KiB` for bytes (the unit is in the figure), `12 objects` for
/// counts.
#[cfg(feature = "profile")]
fn human_or_count(value: f64, view: View) -> String {
    if view.unit() == "bytes" {
        human(value)
    } else {
        format!("{value:.0} {}", view.unit())
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

/// `1.2 MiB`.
pub(crate) fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{} B", bytes.round() as i64)
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn percent_off(estimate: f64, exact: f64) -> String {
    if exact == 0.0 {
        return if estimate == 0.0 { String::from("exact") } else { String::from("n/a") };
    }
    let off = 100.0 * (estimate - exact) / exact;
    if off.abs() < 0.005 {
        String::from("exact")
    } else {
        format!("{off:+.2}%")
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            Kind::Global => "heap profile",
            Kind::Scope => "scoped heap profile",
        };
        let rate = if self.rate <= 1 {
            String::from("every allocation (rate 1)")
        } else {
            format!("rate {}", human(self.rate as f64))
        };
        write!(f, "heapprobe {what}: {rate}, {} samples", self.samples)?;
        if let Some(seconds) = self.seconds {
            write!(f, " in {seconds:.1} s")?;
        }
        writeln!(f, ", {} thread(s)", self.threads().len())?;
        if let Some(note) = &self.note {
            writeln!(f, "  note: {note}")?;
        }
        let alloc_bytes = self.total(View::AllocatedBytes);
        let alloc_objects = self.total(View::AllocatedObjects);
        writeln!(f, "  allocated (estimated): {} in {:.0} objects", human(alloc_bytes), alloc_objects)?;
        match &self.exact {
            Some(exact) => writeln!(
                f,
                "  self-check: exact counters {} ({} B) in {} allocations; the estimate against them: bytes {}, \
                 objects {}",
                human(exact.bytes_allocated as f64),
                exact.bytes_allocated,
                exact.allocations,
                percent_off(alloc_bytes, exact.bytes_allocated as f64),
                percent_off(alloc_objects, exact.allocations as f64),
            )?,
            None => writeln!(
                f,
                "  self-check: no exact counters (start the profiler with GLOBAL.start_profiler to compare)"
            )?,
        }
        write!(f, "  in use (estimated): {} in {:.0} objects", human(self.inuse.1), self.inuse.0)?;
        if self.untracked_bytes > 0.0 {
            write!(f, " (+{} untracked: live table full)", human(self.untracked_bytes))?;
        }
        if let Some(current) = self.exact_current {
            write!(f, "; exact current use of the process {}", human(current as f64))?;
        }
        writeln!(f)?;
        writeln!(f, "  peak in use (estimated): {} in {:.0} objects", human(self.peak.1), self.peak.0)?;
        write!(f, "{}", self.top_sites_text(View::AllocatedBytes, 5))?;
        writeln!(
            f,
            "  stacks: {} ({} of {} samples walked by frame pointers); tables: {} of {} stacks, {} of {} sites, \
             {} of {} live blocks",
            self.unwinder(),
            self.fp_samples,
            self.samples,
            self.stacks.len().saturating_sub(1),
            self.capacity.stacks,
            self.sites.len().saturating_sub(1),
            self.capacity.sites,
            self.live.len(),
            self.capacity.live
        )?;
        let (stacks, sites, live) = self.drops();
        if stacks + sites + live > 0 {
            writeln!(
                f,
                "  DROPPED: {stacks} stacks, {sites} sites, {live} live blocks had no room \
                 (raise Options::max_stacks / max_sites / max_live); their bytes are counted under [dropped]"
            )?;
        }
        if self.skipped > 0 {
            writeln!(f, "  skipped: {} calls made while their thread was inside the profiler", self.skipped)?;
        }
        if self.truncated_samples > 0 {
            writeln!(
                f,
                "  truncated: {} samples' stacks were cut (depth limit or a broken frame-pointer chain); \
                 raise Options::max_depth, or see below",
                self.truncated_samples
            )?;
        }
        let (short, total) = self.short_stacks();
        if short > 0 && total > 0 {
            let how = if self.method == Method::FramePointers && !self.frame_pointers {
                "this build has no frame pointers: enable heapprobe's `profile` feature (unwinds from .eh_frame) \
                 or build with RUSTFLAGS=\"-C force-frame-pointers=yes\""
            } else {
                "raise Options::max_depth, or build with RUSTFLAGS=\"-C force-frame-pointers=yes\" and keep symbols"
            };
            writeln!(
                f,
                "  stacks look truncated: {short} of {total} sites do not reach a thread's entry point; {how}"
            )?;
        }
        let gave_up = super::stack::fast_gave_up();
        if self.method == Method::Dwarf && gave_up > 0 {
            writeln!(
                f,
                "  unwinding: {gave_up} stacks since the process began had a frame heapprobe's unwinder cannot \
                 follow (a DWARF expression, or outside the thread's stack); libgcc unwound them"
            )?;
        }
        let (mapped, resident) = self.memory;
        write!(f, "  profiler memory: {} touched of {} mapped", human(resident as f64), human(mapped as f64))
    }
}
