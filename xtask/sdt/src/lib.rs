//! SystemTap SDT (USDT) notes read from ELF files, and uprobes placed at
//! their correct file offsets.
//!
//! perf 6.1's `perf probe sdt_…` uses a note's virtual address as the
//! uprobe's file offset. That holds for bfd's default layout but not for
//! rust-lld, which maps code at file offset + 0x1000: probes land 4 KiB off,
//! fire never and can crash the target. This crate computes
//! `vaddr - segment.p_vaddr + segment.p_offset` from the program headers and
//! marks as bogus the sites the linker discarded (their notes point into the
//! ELF header), so tests and tools can register exactly the valid sites.
#![deny(missing_docs)]

mod uprobe;

use std::fmt;
use std::path::{Path, PathBuf};

use object::elf::{FileHeader64, PF_W, PF_X, PT_LOAD, SHF_ALLOC, SHF_EXECINSTR};
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
use object::Endianness;

pub use uprobe::{
    find_tracefs, group_pid, mount_tracefs, stale_groups, sweep_stale_groups, tracefs, Holder, StaleGroup, Sweep,
    UprobeGroup, UprobeSpec, GROUP_PREFIX,
};

/// What can go wrong reading a binary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a 64-bit ELF file.
    #[error("{path} is not a 64-bit ELF file: {reason}")]
    NotElf {
        /// The file.
        path: PathBuf,
        /// What the ELF parser said.
        reason: String,
    },
    /// A note's argument string could not be parsed.
    #[error("cannot parse SDT argument {arg:?} of {probe}")]
    Argument {
        /// `provider:name` of the probe.
        probe: String,
        /// The argument text.
        arg: String,
    },
    /// Writing to or reading tracefs failed.
    #[error("{what}")]
    Tracefs {
        /// What was being done, with the path.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where an SDT argument lives when the probe fires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A register, by its assembler name without `%` (`rdi`, `r8d`, `x0`).
    Register(String),
    /// Memory at `offset(%base)`.
    Memory {
        /// Displacement in bytes.
        offset: i64,
        /// Base register, without `%`.
        base: String,
    },
    /// A constant.
    Immediate(i64),
}

/// One argument of a probe, as `[-]SIZE@LOCATION`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arg {
    /// Size in bytes (1, 2, 4 or 8).
    pub size: u8,
    /// Whether the value is signed.
    pub signed: bool,
    /// Where the value is.
    pub location: Location,
}

impl Arg {
    /// Parses one argument in the SDT v3 syntax, such as `-8@%rdi`,
    /// `8@-16(%rbp)` or `4@$5`.
    pub fn parse(text: &str) -> Option<Self> {
        let (size, location) = text.split_once('@')?;
        let signed = size.starts_with('-');
        let size: u8 = size.trim_start_matches('-').parse().ok()?;
        if ![1, 2, 4, 8].contains(&size) {
            return None;
        }
        let location = if let Some(register) = location.strip_prefix('%') {
            Location::Register(register.to_owned())
        } else if let Some(value) = location.strip_prefix('$') {
            Location::Immediate(value.parse().ok()?)
        } else if let Some((offset, base)) = location.split_once('(') {
            let base = base.strip_suffix(')')?.strip_prefix('%')?.to_owned();
            let offset = if offset.is_empty() { 0 } else { offset.parse().ok()? };
            Location::Memory { offset, base }
        } else {
            // aarch64 writes bare register names: `8@x0`.
            Location::Register(location.to_owned())
        };
        Some(Self { size, signed, location })
    }

    /// The argument as a uprobe_events fetch-arg (`%di:u64`), or `None` if
    /// the kernel syntax cannot express it.
    pub fn fetcharg(&self) -> Option<String> {
        let ty = format!("{}{}", if self.signed { 's' } else { 'u' }, u32::from(self.size) * 8);
        let value = match &self.location {
            Location::Register(r) => format!("%{}", kernel_register(r)?),
            Location::Memory { offset, base } => {
                format!("{}{}(%{})", if *offset < 0 { '-' } else { '+' }, offset.unsigned_abs(), kernel_register(base)?)
            }
            Location::Immediate(v) => format!("\\{v}"),
        };
        Some(format!("{value}:{ty}"))
    }
}

/// Maps an assembler register name to the name uprobe_events uses.
fn kernel_register(name: &str) -> Option<String> {
    const X86: [(&[&str], &str); 8] = [
        (&["rax", "eax", "ax", "al"], "ax"),
        (&["rbx", "ebx", "bx", "bl"], "bx"),
        (&["rcx", "ecx", "cx", "cl"], "cx"),
        (&["rdx", "edx", "dx", "dl"], "dx"),
        (&["rsi", "esi", "si", "sil"], "si"),
        (&["rdi", "edi", "di", "dil"], "di"),
        (&["rbp", "ebp", "bp", "bpl"], "bp"),
        (&["rsp", "esp", "sp", "spl"], "sp"),
    ];
    if cfg!(target_arch = "x86_64") {
        if let Some((_, k)) = X86.iter().find(|(names, _)| names.contains(&name)) {
            return Some((*k).to_owned());
        }
        if name == "rip" {
            return None;
        }
        // r8..r15 and their d/w/b forms.
        let base = name.trim_end_matches(['d', 'w', 'b']);
        let n: u8 = base.strip_prefix('r')?.parse().ok()?;
        return (8..=15).contains(&n).then(|| format!("r{n}"));
    }
    Some(name.to_owned())
}

/// One SDT note: a probe site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Provider name (`heapprobe`).
    pub provider: String,
    /// Probe name (`alloc`).
    pub name: String,
    /// Virtual address of the site's `nop`, adjusted for prelinking.
    pub address: u64,
    /// Virtual address of the semaphore, if the probe has one.
    pub semaphore: Option<u64>,
    /// The raw argument string.
    pub arguments: String,
    /// Where this site is in the file, or why it is not a real site.
    pub site: Site,
}

impl Probe {
    /// Parsed arguments.
    pub fn args(&self) -> Result<Vec<Arg>, Error> {
        self.arguments
            .split_whitespace()
            .map(|a| {
                Arg::parse(a).ok_or_else(|| Error::Argument {
                    probe: format!("{}:{}", self.provider, self.name),
                    arg: a.to_owned(),
                })
            })
            .collect()
    }
}

/// Where a probe site is in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Site {
    /// A real site: its file offset and its semaphore's file offset.
    Valid {
        /// File offset of the site (what uprobes take).
        offset: u64,
        /// File offset of the semaphore, if any.
        semaphore_offset: Option<u64>,
    },
    /// Not a real site: usually code the linker discarded, which leaves a
    /// note pointing into the ELF header.
    Bogus(String),
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Valid { offset, semaphore_offset: None } => write!(f, "file offset {offset:#x}"),
            Site::Valid { offset, semaphore_offset: Some(s) } => {
                write!(f, "file offset {offset:#x}, semaphore at {s:#x}")
            }
            Site::Bogus(why) => write!(f, "bogus: {why}"),
        }
    }
}

/// A loadable segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_offset`.
    pub offset: u64,
    /// `p_filesz`.
    pub file_size: u64,
    /// `p_memsz`.
    pub mem_size: u64,
    /// Whether the segment is executable.
    pub executable: bool,
    /// Whether the segment is writable (where semaphores must live).
    pub writable: bool,
}

/// The SDT view of one ELF binary.
#[derive(Clone, Debug)]
pub struct Binary {
    /// The file read.
    pub path: PathBuf,
    /// Every stapsdt note, valid or not, in file order.
    pub probes: Vec<Probe>,
    /// PT_LOAD segments.
    pub segments: Vec<Segment>,
    /// Whether the file has a `.stapsdt.base` section.
    pub has_stapsdt_base: bool,
}

impl Binary {
    /// Reads `path`'s program headers, sections and stapsdt notes.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let data = std::fs::read(&path).map_err(|source| Error::Read { path: path.clone(), source })?;
        Self::parse(path, &data)
    }

    /// As [`open`](Self::open), from bytes already read.
    pub fn parse(path: PathBuf, data: &[u8]) -> Result<Self, Error> {
        let not_elf = |e: object::read::Error| Error::NotElf { path: path.clone(), reason: e.to_string() };
        let header = FileHeader64::<Endianness>::parse(data).map_err(not_elf)?;
        let endian = header.endian().map_err(not_elf)?;
        let segments: Vec<Segment> = header
            .program_headers(endian, data)
            .map_err(not_elf)?
            .iter()
            .filter(|p| p.p_type(endian) == PT_LOAD)
            .map(|p| Segment {
                vaddr: p.p_vaddr(endian),
                offset: p.p_offset(endian),
                file_size: p.p_filesz(endian),
                mem_size: p.p_memsz(endian),
                executable: p.p_flags(endian) & PF_X != 0,
                writable: p.p_flags(endian) & PF_W != 0,
            })
            .collect();
        let sections = header.sections(endian, data).map_err(not_elf)?;
        let code: Vec<(u64, u64)> = sections
            .iter()
            .filter(|s| {
                let flags = s.sh_flags(endian);
                flags & u64::from(SHF_ALLOC | SHF_EXECINSTR) == u64::from(SHF_ALLOC | SHF_EXECINSTR)
            })
            .map(|s| (s.sh_addr(endian), s.sh_addr(endian) + s.sh_size(endian)))
            .collect();
        let base = sections.section_by_name(endian, b".stapsdt.base").map(|(_, s)| s.sh_addr(endian));
        let is_64 = true;

        let mut probes = Vec::new();
        for section in sections.iter() {
            let Some(mut notes) = section.notes(endian, data).map_err(not_elf)? else {
                continue;
            };
            while let Some(note) = notes.next().map_err(not_elf)? {
                if note.name() != b"stapsdt" || note.n_type(endian) != 3 {
                    continue;
                }
                if let Some(probe) = parse_note(note.desc(), endian, is_64, base) {
                    probes.push(probe);
                }
            }
        }
        let mut binary = Self { path, probes, segments, has_stapsdt_base: base.is_some() };
        let sites: Vec<Site> = binary.probes.iter().map(|p| binary.locate(p, &code, data)).collect();
        for (probe, site) in binary.probes.iter_mut().zip(sites) {
            probe.site = site;
        }
        Ok(binary)
    }

    /// The file offset of virtual address `vaddr`, from the PT_LOAD that maps it.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr < s.vaddr + s.file_size)
            .map(|s| vaddr - s.vaddr + s.offset)
    }

    /// True when code is mapped at a virtual address different from its file
    /// offset (rust-lld's layout): naive `perf probe sdt_…` misplaces probes.
    pub fn code_offset_differs(&self) -> bool {
        self.segments.iter().any(|s| s.executable && s.vaddr != s.offset)
    }

    /// The valid sites of `provider` (all providers if `None`).
    pub fn valid_probes<'a>(&'a self, provider: Option<&'a str>) -> impl Iterator<Item = &'a Probe> + 'a {
        self.probes
            .iter()
            .filter(move |p| matches!(p.site, Site::Valid { .. }) && provider.is_none_or(|want| p.provider == want))
    }

    fn locate(&self, probe: &Probe, code: &[(u64, u64)], data: &[u8]) -> Site {
        let pc = probe.address;
        if !code.iter().any(|(start, end)| pc >= *start && pc < *end) {
            return Site::Bogus(format!("address {pc:#x} is outside executable code (site discarded by the linker?)"));
        }
        let Some(segment) = self.segments.iter().find(|s| s.executable && pc >= s.vaddr && pc < s.vaddr + s.file_size)
        else {
            return Site::Bogus(format!("address {pc:#x} is in no executable PT_LOAD segment"));
        };
        let offset = pc - segment.vaddr + segment.offset;
        if cfg!(target_arch = "x86_64") && data.get(offset as usize) != Some(&0x90) {
            return Site::Bogus(format!("no nop at file offset {offset:#x}"));
        }
        let semaphore_offset = match probe.semaphore {
            None => None,
            Some(sem) => match self.file_offset(sem) {
                Some(o) => Some(o),
                None => return Site::Bogus(format!("semaphore {sem:#x} is not file-backed")),
            },
        };
        Site::Valid { offset, semaphore_offset }
    }
}

fn parse_note(desc: &[u8], endian: Endianness, is_64: bool, base: Option<u64>) -> Option<Probe> {
    let word = if is_64 { 8 } else { 4 };
    let read = |at: usize| -> Option<u64> {
        let bytes = desc.get(at..at + word)?;
        let mut buf = [0u8; 8];
        buf[..word].copy_from_slice(bytes);
        Some(match endian {
            Endianness::Little => u64::from_le_bytes(buf),
            Endianness::Big => u64::from_be_bytes(buf) >> (64 - 8 * word),
        })
    };
    let (pc, note_base, semaphore) = (read(0)?, read(word)?, read(2 * word)?);
    let mut strings = desc.get(3 * word..)?.split(|b| *b == 0);
    let mut next = || strings.next().map(|s| String::from_utf8_lossy(s).into_owned());
    let (provider, name, arguments) = (next()?, next()?, next().unwrap_or_default());
    // Prelink moves .stapsdt.base; the note keeps the link-time address.
    let shift = base.map_or(0, |b| b.wrapping_sub(note_base));
    Some(Probe {
        provider,
        name,
        address: pc.wrapping_add(shift),
        semaphore: (semaphore != 0).then(|| semaphore.wrapping_add(shift)),
        arguments,
        site: Site::Bogus(String::from("not located yet")),
    })
}
