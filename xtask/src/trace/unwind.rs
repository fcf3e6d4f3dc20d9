//! `--call-graph dwarf`: the user stacks perf copied into each sample
//! (`PERF_SAMPLE_REGS_USER` and `PERF_SAMPLE_STACK_USER`) unwound with
//! framehop and the `.eh_frame` of the files the process had mapped, as the
//! recording's memory-map records say.
//!
//! Without this, perf's kernel callchain holds no user frame at all in dwarf
//! mode (perf sets `exclude_callchain_user`: the user stack is for a later
//! unwinder to walk), and every stack was `[unknown]`.
//!
//! Each process has its own module list (framehop's [`UnwinderX86_64`]),
//! updated from MMAP records; the files' bytes are read once per path and
//! shared by every module that maps them; one framehop cache of unwind rules
//! serves every process (its keys carry the module generation).

use std::collections::HashMap;
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder as _};
use object::{Object as _, ObjectSection as _, ObjectSegment as _};

/// A section of a file read into memory, without copying it out.
#[derive(Clone)]
pub struct Bytes {
    file: Arc<[u8]>,
    range: Range<usize>,
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.file[self.range.clone()]
    }
}

/// What unwinding needs of one ELF file: its sections' addresses and bytes,
/// and its loadable segments (to place a mapping's file offset).
struct ElfUnwindInfo {
    file: Arc<[u8]>,
    /// (svma range, file range) by section name.
    sections: HashMap<&'static str, (Range<u64>, Range<usize>)>,
    /// (file offset, file size, vaddr, executable) of each PT_LOAD.
    segments: Vec<(u64, u64, u64, bool)>,
}

/// The sections framehop reads on x86_64 ELF.
const SECTIONS: [&str; 5] = [".text", ".eh_frame", ".eh_frame_hdr", ".got", ".debug_frame"];

impl ElfUnwindInfo {
    fn load(path: &Path, expected_build_id: Option<&[u8]>) -> Option<Self> {
        let data: Arc<[u8]> = std::fs::read(path).ok()?.into();
        let elf = object::File::parse(&*data).ok()?;
        // A file rebuilt since the recording has other tables: unwinding
        // through it would follow the wrong rules (its frames are reported
        // by the symboliser).
        if let (Some(expected), Ok(Some(id))) = (expected_build_id, elf.build_id()) {
            if !expected.starts_with(id) && !id.starts_with(expected) {
                return None;
            }
        }
        let mut sections = HashMap::new();
        for name in SECTIONS {
            let Some(section) = elf.section_by_name(name) else { continue };
            let Some((offset, size)) = section.file_range() else { continue };
            let (Ok(start), Ok(len)) = (usize::try_from(offset), usize::try_from(size)) else { continue };
            if start.checked_add(len).is_none_or(|end| end > data.len()) {
                continue;
            }
            let svma = section.address()..section.address() + section.size();
            sections.insert(name, (svma, start..start + len));
        }
        let segments = elf
            .segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                let executable = match s.flags() {
                    object::SegmentFlags::Elf { p_flags } => p_flags & object::elf::PF_X != 0,
                    _ => false,
                };
                (offset, size, s.address(), executable)
            })
            .collect();
        drop(elf);
        Some(Self { file: data, sections, segments })
    }

    /// The load bias of an executable mapping of file range `offset..end`:
    /// what to add to a virtual address of the file to get the address in
    /// the process.
    ///
    /// Found through the executable segment inside that range, not through
    /// the segment that holds `offset`: a mapping starts at a page boundary,
    /// and rust-lld starts the code segment mid-page, in a file page whose
    /// start belongs to the read-only segment before it (at another
    /// vaddr-to-offset distance: trap 1 of DEVELOPERS.md).
    fn bias(&self, start: u64, offset: u64, end: u64) -> Option<u64> {
        let (seg_offset, _, vaddr, _) = self
            .segments
            .iter()
            .find(|(o, size, _, x)| *x && *o < end && offset < o + size)
            .or_else(|| self.segments.iter().find(|(o, size, _, _)| (*o..o + size).contains(&offset)))?;
        // address = start + (file offset - offset), svma = vaddr + (file offset - seg_offset).
        Some(start.wrapping_sub(offset).wrapping_add(*seg_offset).wrapping_sub(*vaddr))
    }

    fn section_info(&self) -> ExplicitModuleSectionInfo<Bytes> {
        let svma = |name: &str| self.sections.get(name).map(|(svma, _)| svma.clone());
        let data = |name: &str| {
            self.sections.get(name).map(|(_, range)| Bytes { file: self.file.clone(), range: range.clone() })
        };
        ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: svma(".text"),
            text: data(".text"),
            got_svma: svma(".got"),
            eh_frame_svma: svma(".eh_frame"),
            eh_frame: data(".eh_frame"),
            eh_frame_hdr_svma: svma(".eh_frame_hdr"),
            eh_frame_hdr: data(".eh_frame_hdr"),
            debug_frame: data(".debug_frame"),
            stubs_svma: None,
            stub_helper_svma: None,
            unwind_info: None,
            text_segment_svma: None,
            text_segment: None,
        }
    }
}

/// One process's modules.
#[derive(Clone, Default)]
struct Process {
    unwinder: UnwinderX86_64<Bytes>,
    /// The address ranges of its modules, to remove those a new mapping
    /// replaces.
    modules: Vec<Range<u64>>,
}

/// How an unwinding ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// At the thread's outermost frame (a return address rule that says
    /// there is none: `_start`, `clone3`).
    Root,
    /// Before it: a read outside the stack copy (too small a copy, or a
    /// frame pointer followed where no unwind table covered the code), or
    /// too many frames.
    Truncated,
}

/// The x86_64 registers unwinding starts from.
#[derive(Clone, Copy, Debug)]
pub struct Registers {
    /// The instruction pointer (the probe site).
    pub ip: u64,
    /// The stack pointer: the address of the stack copy's first byte.
    pub sp: u64,
    /// The frame pointer register (the caller's rbp, or data).
    pub bp: u64,
}

/// The deepest stack followed; deeper ones end as truncated.
const MAX_FRAMES: usize = 1024;

/// Every traced process's modules and one cache of unwind rules.
pub struct Unwinders {
    processes: HashMap<i32, Process>,
    files: HashMap<PathBuf, Option<Arc<ElfUnwindInfo>>>,
    expected: HashMap<PathBuf, Vec<u8>>,
    cache: CacheX86_64,
}

impl Unwinders {
    /// Unwinders for a recording whose files had these build ids.
    pub fn new(expected: HashMap<PathBuf, Vec<u8>>) -> Self {
        Self { processes: HashMap::new(), files: HashMap::new(), expected, cache: CacheX86_64::new() }
    }

    /// Process `pid` mapped `path` at `start..start+length` from file
    /// offset `offset`, executable.
    pub fn map(&mut self, pid: i32, start: u64, length: u64, offset: u64, path: &str) {
        let end = start.saturating_add(length);
        let process = self.processes.entry(pid).or_default();
        process.modules.retain(|m| {
            let overlaps = m.start < end && start < m.end;
            if overlaps {
                process.unwinder.remove_module(m.start);
            }
            !overlaps
        });
        if !path.starts_with('/') {
            return; // [vdso], anonymous code: framehop falls back to frame pointers
        }
        let path = PathBuf::from(path);
        let expected = self.expected.get(&path).map(Vec::as_slice);
        let info = self
            .files
            .entry(path.clone())
            .or_insert_with(|| ElfUnwindInfo::load(&path, expected).map(Arc::new))
            .clone();
        let Some(info) = info else { return };
        // ELF's base svma is 0: the base avma is the load bias.
        let Some(base_avma) = info.bias(start, offset, offset.saturating_add(length)) else { return };
        let module = Module::new(path.display().to_string(), start..end, base_avma, info.section_info());
        process.unwinder.add_module(module);
        process.modules.push(start..end);
    }

    /// Process `pid` ran `exec`: its old modules are gone.
    pub fn exec(&mut self, pid: i32) {
        self.processes.remove(&pid);
    }

    /// Process `child` was forked from `parent`, with its modules.
    pub fn fork(&mut self, parent: i32, child: i32) {
        if parent != child {
            if let Some(process) = self.processes.get(&parent).cloned() {
                self.processes.insert(child, process);
            }
        }
    }

    /// Unwinds a stack of process `pid` that starts at `regs`, whose copy
    /// (from `regs.sp` up) is `stack`; pushes each frame as (address, is
    /// the leaf) onto `frames`, innermost first.
    pub fn unwind(&mut self, pid: i32, regs: Registers, stack: &[u8], frames: &mut Vec<(u64, bool)>) -> Ending {
        let process = self.processes.entry(pid).or_default();
        let mut read = |address: u64| -> Result<u64, ()> { read_stack(stack, regs.sp, address) };
        let mut iter = process.unwinder.iter_frames(
            regs.ip,
            UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp),
            &mut self.cache,
            &mut read,
        );
        for _ in 0..MAX_FRAMES {
            match iter.next() {
                Ok(Some(frame)) => frames.push((frame.address(), matches!(frame, FrameAddress::InstructionPointer(_)))),
                Ok(None) => return Ending::Root,
                Err(_) => return Ending::Truncated,
            }
        }
        Ending::Truncated
    }
}

/// The 8 bytes at `address` of a stack copy that starts at `sp`, or an
/// error outside it.
fn read_stack(stack: &[u8], sp: u64, address: u64) -> Result<u64, ()> {
    address.checked_add(8).ok_or(())?;
    let offset = usize::try_from(address.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
    let bytes = stack.get(offset..offset.checked_add(8).ok_or(())?).ok_or(())?;
    Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_reads_stay_inside_the_copy() {
        let mut stack = vec![0u8; 24];
        stack[8..16].copy_from_slice(&0x1234u64.to_le_bytes());
        assert_eq!(read_stack(&stack, 0x1000, 0x1008), Ok(0x1234));
        assert_eq!(read_stack(&stack, 0x1000, 0x1010), Ok(0));
        assert_eq!(read_stack(&stack, 0x1000, 0x1011), Err(()), "past the end");
        assert_eq!(read_stack(&stack, 0x1000, 0xff8), Err(()), "below sp");
        assert_eq!(read_stack(&stack, u64::MAX - 4, u64::MAX), Err(()));
    }

    /// This test binary's own stack, copied as perf copies it, unwinds to
    /// this function and on to the thread's root, with the tables of the
    /// files mapped in `/proc/self/maps`.
    #[test]
    fn unwinds_a_copy_of_this_thread_s_stack() {
        #[inline(never)]
        fn capture() -> (Registers, Vec<u8>) {
            let (ip, sp, bp): (u64, u64, u64);
            // SAFETY: reads rip, rsp and rbp into registers; no memory access.
            unsafe {
                std::arch::asm!("lea {ip}, [rip]", "mov {sp}, rsp", "mov {bp}, rbp", ip = out(reg) ip, sp = out(reg) sp, bp = out(reg) bp);
            }
            // perf copies up to a size from sp; here, through /proc/self/mem
            // a page at a time, up to the stack mapping's end.
            let mem = std::fs::File::open("/proc/self/mem").unwrap();
            let mut stack = Vec::new();
            let mut page = [0u8; 4096];
            while stack.len() < 64 * 1024 {
                use std::os::unix::fs::FileExt as _;
                let at = sp + stack.len() as u64;
                let len = (4096 - (at % 4096)) as usize;
                match mem.read_at(&mut page[..len], at) {
                    Ok(n) if n > 0 => stack.extend_from_slice(&page[..n]),
                    _ => break,
                }
            }
            (Registers { ip, sp, bp }, stack)
        }
        let (regs, stack) = std::hint::black_box(capture());
        let mut unwinders = Unwinders::new(HashMap::new());
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for mapping in super::super::symbols::parse_maps(&maps) {
            unwinders.map(
                1,
                mapping.start,
                mapping.end - mapping.start,
                mapping.offset,
                &mapping.path.to_string_lossy(),
            );
        }
        let mut frames = Vec::new();
        let ending = unwinders.unwind(1, regs, &stack, &mut frames);
        let mut symbolizer = super::super::symbols::Symbolizer::new(super::super::symbols::parse_maps(&maps));
        let names: Vec<String> = frames.iter().map(|&(a, leaf)| symbolizer.name(a, leaf)).collect();
        assert!(names[0].ends_with("capture"), "{names:#?}");
        assert!(names[1].ends_with("unwinds_a_copy_of_this_thread_s_stack"), "{names:#?}");
        assert_eq!(ending, Ending::Root, "{names:#?}");
        // The copy cut short: the same frames up to the cut, then truncated.
        let mut short = Vec::new();
        assert_eq!(unwinders.unwind(1, regs, &stack[..256], &mut short), Ending::Truncated);
        assert!(short.len() < frames.len() && short[..] == frames[..short.len()], "{short:x?}");
    }
}
