//! The profile as a gzipped pprof protobuf (feature `pprof`), as Go writes
//! heap profiles: sample types `alloc_objects`, `alloc_space`,
//! `inuse_objects`, `inuse_space`, period type `space`/`bytes` with the
//! sampling rate as period, and one mapping per executable segment with its
//! GNU build-id. Encoded by prost from the messages of pprof's
//! `profile.proto`, declared here with prost's derive.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;

use super::report::{Profile, View};

/// pprof's messages (google/pprof proto/profile.proto), field for field.
#[allow(missing_docs)]
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "7")]
        pub drop_frames: i64,
        #[prost(int64, tag = "8")]
        pub keep_frames: i64,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
        #[prost(bool, tag = "5")]
        pub is_folded: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

/// pprof's string table: index 0 is "".
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        Strings { table: vec![String::new()], index: HashMap::from([(String::new(), 0)]) }
    }
    fn id(&mut self, s: &str) -> i64 {
        if let Some(id) = self.index.get(s) {
            return *id;
        }
        let id = self.table.len() as i64;
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), id);
        id
    }
}

/// An executable segment of a loaded object.
#[derive(Clone, Debug)]
pub(crate) struct Segment {
    pub(crate) start: u64,
    pub(crate) limit: u64,
    pub(crate) offset: u64,
    pub(crate) path: String,
    pub(crate) build_id: String,
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn segments() -> Vec<Segment> {
    Vec::new()
}

/// The executable segments of every loaded object, with build-ids read
/// from their in-memory `PT_NOTE` segments.
#[cfg(target_os = "linux")]
#[allow(clippy::unnecessary_cast)] // ELF field widths differ on 32-bit targets
pub(crate) fn segments() -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    unsafe extern "C" fn each(info: *mut libc::dl_phdr_info, _size: usize, data: *mut libc::c_void) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info for the duration of
        // the call, and `data` is the `Vec` passed below.
        let (info, out) = unsafe { (&*info, &mut *(data as *mut Vec<Segment>)) };
        let bias = info.dlpi_addr as u64;
        // SAFETY: dlpi_phdr points to dlpi_phnum program headers.
        let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        let path = if info.dlpi_name.is_null() {
            String::new()
        } else {
            // SAFETY: a non-null dlpi_name is a NUL-terminated string.
            unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_string_lossy().into_owned()
        };
        let path = if path.is_empty() {
            std::fs::read_link("/proc/self/exe").map(|p| p.display().to_string()).unwrap_or_default()
        } else {
            path
        };
        let mut build_id = String::new();
        for ph in phdrs.iter().filter(|p| p.p_type == libc::PT_NOTE) {
            // SAFETY: a PT_NOTE segment is mapped at bias + p_vaddr for p_memsz bytes.
            let notes =
                unsafe { std::slice::from_raw_parts((bias + ph.p_vaddr as u64) as *const u8, ph.p_memsz as usize) };
            if let Some(id) = gnu_build_id(notes) {
                build_id = id;
            }
        }
        for ph in phdrs.iter().filter(|p| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_X != 0) {
            out.push(Segment {
                start: bias + ph.p_vaddr as u64,
                limit: bias + ph.p_vaddr as u64 + ph.p_memsz as u64,
                offset: ph.p_offset as u64,
                path: path.clone(),
                build_id: build_id.clone(),
            });
        }
        0
    }
    // SAFETY: `each` matches dl_iterate_phdr's callback type and only uses
    // `out` through the pointer for the duration of the call.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut out as *mut Vec<Segment> as *mut libc::c_void) };
    out
}

/// The NT_GNU_BUILD_ID note among `notes`, in hex.
#[cfg(target_os = "linux")]
fn gnu_build_id(mut notes: &[u8]) -> Option<String> {
    let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
    while notes.len() >= 12 {
        let (namesz, descsz, kind) = (word(&notes[0..]), word(&notes[4..]), word(&notes[8..]));
        let name_end = 12 + namesz.next_multiple_of(4);
        let desc_end = name_end + descsz.next_multiple_of(4);
        if desc_end > notes.len() {
            return None;
        }
        if kind == 3 && &notes[12..12 + namesz] == b"GNU\0" {
            return Some(notes[name_end..name_end + descsz].iter().map(|b| format!("{b:02x}")).collect());
        }
        notes = &notes[desc_end..];
    }
    None
}

impl Profile {
    /// The profile as pprof's protobuf, gzipped (what `go tool pprof` and
    /// every pprof viewer read): Go's four heap sample types, the period
    /// (the rate), mappings with build-ids, one sample per stack and thread
    /// (labels `thread` and `tid`). Values are the un-biased estimates,
    /// rounded (exact at rate 1). Its default sample type is
    /// `inuse_space`, as in Go's heap profiles. Feature `pprof`.
    pub fn pprof(&self) -> Vec<u8> {
        self.pprof_as(View::InUseBytes)
    }

    /// [`pprof`](Self::pprof) whose default sample type (what `go tool
    /// pprof` shows unless told otherwise) is `view`'s: `alloc_space` for
    /// Go's `allocs` profile. The peak views have no pprof sample type;
    /// they give `inuse_space`. Feature `pprof`.
    pub fn pprof_as(&self, view: View) -> Vec<u8> {
        let mut strings = Strings::new();
        let segments = segments();
        let mut mappings: Vec<proto::Mapping> = Vec::new();
        for (i, s) in segments.iter().enumerate() {
            mappings.push(proto::Mapping {
                id: i as u64 + 1,
                memory_start: s.start,
                memory_limit: s.limit,
                file_offset: s.offset,
                filename: strings.id(&s.path),
                build_id: strings.id(&s.build_id),
                has_functions: cfg!(feature = "profile"),
                has_filenames: cfg!(feature = "profile"),
                has_line_numbers: cfg!(feature = "profile"),
                has_inline_frames: cfg!(feature = "profile"),
            });
        }
        let mapping_of =
            |addr: u64| segments.iter().position(|s| addr >= s.start && addr < s.limit).map_or(0, |i| i as u64 + 1);
        let mut functions: Vec<proto::Function> = Vec::new();
        let mut function_ids: HashMap<(String, String), u64> = HashMap::new();
        let mut locations: Vec<proto::Location> = Vec::new();
        let mut location_ids: HashMap<usize, u64> = HashMap::new();
        let resolved = self.resolved();
        let mut stack_locations: Vec<Vec<u64>> = Vec::with_capacity(resolved.len());
        for (stack, frames) in self.stacks.iter().zip(resolved) {
            // A stopped rendering is discarded whole (`interrupt`).
            if super::interrupt::stopped().is_some() {
                return Vec::new();
            }
            let mut ids = Vec::with_capacity(frames.len());
            if stack.flags & super::store::STACK_DROPPED != 0 {
                // One synthetic location that names what happened.
                let id = *location_ids.entry(0).or_insert_with(|| {
                    let f = functions.len() as u64 + 1;
                    functions.push(proto::Function {
                        id: f,
                        name: strings.id("[dropped: a profiler table was full]"),
                        ..Default::default()
                    });
                    locations.push(proto::Location {
                        id: locations.len() as u64 + 1,
                        line: vec![proto::Line { function_id: f, line: 0 }],
                        ..Default::default()
                    });
                    locations.len() as u64
                });
                ids.push(id);
            }
            for (addr, inlined) in frames {
                let id = match location_ids.get(addr) {
                    Some(id) => *id,
                    None => {
                        let mut lines = Vec::new();
                        for frame in inlined {
                            let file = frame.file.clone().unwrap_or_default();
                            let key = (frame.name.clone(), file.clone());
                            let function_id = match function_ids.get(&key) {
                                Some(id) => *id,
                                None => {
                                    let id = functions.len() as u64 + 1;
                                    let name = strings.id(&frame.name);
                                    functions.push(proto::Function {
                                        id,
                                        name,
                                        system_name: name,
                                        filename: strings.id(&file),
                                        start_line: 0,
                                    });
                                    function_ids.insert(key, id);
                                    id
                                }
                            };
                            lines.push(proto::Line { function_id, line: frame.line as i64 });
                        }
                        let id = locations.len() as u64 + 1;
                        locations.push(proto::Location {
                            id,
                            mapping_id: mapping_of(*addr as u64),
                            // pprof wants the call's address: the one before the return address.
                            address: (*addr as u64).saturating_sub(1),
                            line: lines,
                            is_folded: false,
                        });
                        location_ids.insert(*addr, id);
                        id
                    }
                };
                ids.push(id);
            }
            stack_locations.push(ids);
        }
        let value_type =
            |strings: &mut Strings, t: &str, u: &str| proto::ValueType { r#type: strings.id(t), unit: strings.id(u) };
        let sample_type = vec![
            value_type(&mut strings, "alloc_objects", "count"),
            value_type(&mut strings, "alloc_space", "bytes"),
            value_type(&mut strings, "inuse_objects", "count"),
            value_type(&mut strings, "inuse_space", "bytes"),
        ];
        let (thread_key, tid_key) = (strings.id("thread"), strings.id("tid"));
        let mut samples = Vec::new();
        for site in &self.sites {
            let values: Vec<i64> = [View::AllocatedObjects, View::AllocatedBytes, View::InUseObjects, View::InUseBytes]
                .iter()
                .map(|v| self.site_value(site, *v).round() as i64)
                .collect();
            if values.iter().all(|v| *v == 0) {
                continue;
            }
            let (tid, name) = self.thread_label(site.thread);
            samples.push(proto::Sample {
                location_id: stack_locations.get(site.stack as usize).cloned().unwrap_or_default(),
                value: values,
                label: vec![
                    proto::Label { key: thread_key, str: strings.id(&name), ..Default::default() },
                    proto::Label { key: tid_key, num: tid as i64, ..Default::default() },
                ],
            });
        }
        // Bytes in use that the live table had no room for: their stacks are
        // unknown, but their bytes count, under a frame that says so (as the
        // summary's "+N untracked"), so the in-use total is whole.
        if self.untracked_bytes > 0.0 {
            let function_id = functions.len() as u64 + 1;
            functions.push(proto::Function {
                id: function_id,
                name: strings.id(super::report::UNTRACKED_FRAME),
                ..Default::default()
            });
            let id = locations.len() as u64 + 1;
            locations.push(proto::Location {
                id,
                line: vec![proto::Line { function_id, line: 0 }],
                ..Default::default()
            });
            samples.push(proto::Sample {
                location_id: vec![id],
                // Their number is not known: only their bytes were added up.
                value: vec![0, 0, 0, self.untracked_bytes.round() as i64],
                label: Vec::new(),
            });
        }
        let comment = vec![strings.id(&format!(
            "heapprobe: rate {} (mean bytes between samples per thread), {} samples, stacks by {}",
            self.rate,
            self.samples,
            self.unwinder()
        ))];
        let period_type = Some(value_type(&mut strings, "space", "bytes"));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let duration = self.seconds.map_or(0, |s| (s * 1e9) as i64);
        let message = proto::Profile {
            sample_type,
            sample: samples,
            mapping: mappings,
            location: locations,
            function: functions,
            string_table: Vec::new(),
            drop_frames: 0,
            keep_frames: 0,
            time_nanos: now.as_nanos() as i64 - duration,
            duration_nanos: duration,
            period_type,
            period: self.rate as i64,
            comment,
            // A string: the name of the preferred type (profile.proto).
            default_sample_type: strings.id(match view {
                View::AllocatedObjects => "alloc_objects",
                View::AllocatedBytes => "alloc_space",
                View::InUseObjects => "inuse_objects",
                _ => "inuse_space",
            }),
        };
        let message = proto::Profile { string_table: strings.table, ..message };
        let raw = prost::Message::encode_to_vec(&message);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        // Writing to a Vec cannot fail.
        let _ = gz.write_all(&raw);
        gz.finish().unwrap_or_default()
    }

    /// Writes [`pprof`](Self::pprof) to `path` (conventionally `*.pb.gz`).
    pub fn write_pprof(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.pprof())
    }
}
