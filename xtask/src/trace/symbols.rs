//! Turning raw user-space addresses into function names after the traced
//! process is gone: its memory map (captured while it lived, or inferred)
//! plus the ELF symbol tables of the mapped files, via the `object` crate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _, SymbolKind};

use crate::flame::UNKNOWN;

/// One executable mapping of a process, as `/proc/PID/maps` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Its first address.
    pub start: u64,
    /// The address after its last.
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// The file mapped.
    pub path: PathBuf,
}

/// Parses the executable, file-backed lines of `/proc/PID/maps`.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms, offset) = (fields.next()?, fields.next()?, fields.next()?);
            let path = fields.nth(2)?;
            if !perms.contains('x') || !path.starts_with('/') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                path: PathBuf::from(path),
            })
        })
        .collect()
}

/// The symbols of one file: sorted function starts, sizes and names, plus
/// its loadable segments (to turn file offsets into virtual addresses).
struct FileSymbols {
    functions: Vec<(u64, u64, String)>,
    /// (file offset, file size, vaddr) of each PT_LOAD.
    segments: Vec<(u64, u64, u64)>,
    /// The file's GNU build id, if it has one.
    build_id: Option<Vec<u8>>,
}

impl FileSymbols {
    fn load(path: &Path) -> Option<Self> {
        let data = std::fs::read(path).ok()?;
        let file = object::File::parse(&*data).ok()?;
        let mut functions = text_symbols(&file);
        let build_id = file.build_id().ok().flatten().map(<[u8]>::to_vec);
        // Stripped libraries (libc) keep their full symbol table in a
        // separate debug file, found by build id, as perf and gdb do.
        if let Some(id) = &build_id {
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            if hex.len() > 2 {
                let debug = format!("/usr/lib/debug/.build-id/{}/{}.debug", &hex[..2], &hex[2..]);
                if let Ok(data) = std::fs::read(debug) {
                    if let Ok(debug_file) = object::File::parse(&*data) {
                        functions.extend(text_symbols(&debug_file));
                    }
                }
            }
        }
        functions.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        functions.dedup_by_key(|f| f.0);
        let segments = file
            .segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                (offset, size, s.address())
            })
            .collect();
        Some(Self { functions, segments, build_id })
    }

    fn vaddr_of_offset(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(start, size, _)| (*start..start + size).contains(&offset))
            .map(|(start, _, vaddr)| vaddr + (offset - start))
    }

    fn name_at(&self, vaddr: u64) -> Option<&str> {
        let i = self.functions.partition_point(|f| f.0 <= vaddr).checked_sub(1)?;
        let (start, size, name) = &self.functions[i];
        // Symbols of size 0 (hand-written assembly) cover up to the next one.
        (*size == 0 || vaddr < start + size).then_some(name.as_str())
    }
}

fn text_symbols(file: &object::File<'_>) -> Vec<(u64, u64, String)> {
    file.symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
        .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_owned())))
        .collect()
}

/// The symbol tables of the files mapped by the processes traced, each read
/// once, when first needed.
#[derive(Default)]
pub struct Files {
    files: HashMap<PathBuf, Option<FileSymbols>>,
    /// Build ids a recording expects (perf.data's): a file whose own build
    /// id differs was rebuilt since, and its names would be wrong.
    expected: HashMap<PathBuf, Vec<u8>>,
    /// Files whose build id differs from the expected one.
    pub rebuilt: Vec<PathBuf>,
}

impl Files {
    /// Files whose symbols are only used when their build id is this one.
    pub fn expect_build_ids(&mut self, expected: HashMap<PathBuf, Vec<u8>>) {
        self.expected = expected;
    }

    /// The function at `offset` of the file `path` (raw, not demangled).
    pub fn name_at_offset(&mut self, path: &Path, offset: u64) -> Option<&str> {
        if !self.files.contains_key(path) {
            let loaded = FileSymbols::load(path);
            let rebuilt = match (&loaded, self.expected.get(path)) {
                (Some(symbols), Some(expected)) => {
                    symbols.build_id.as_ref().is_some_and(|id| !expected.starts_with(id) && !id.starts_with(expected))
                }
                _ => false,
            };
            if rebuilt {
                self.rebuilt.push(path.to_path_buf());
            }
            self.files.insert(path.to_path_buf(), loaded.filter(|_| !rebuilt));
        }
        let symbols = self.files.get(path)?.as_ref()?;
        symbols.vaddr_of_offset(offset).and_then(|vaddr| symbols.name_at(vaddr))
    }
}

/// Resolves addresses of one process.
pub struct Symbolizer {
    maps: Vec<Mapping>,
    files: Files,
}

impl Symbolizer {
    /// A symbolizer for a process with these executable mappings.
    pub fn new(maps: Vec<Mapping>) -> Self {
        Self { maps, files: Files::default() }
    }

    /// The demangled function containing `address`, or [`UNKNOWN`]. `leaf`
    /// is false for return addresses, which are looked up one byte earlier
    /// (the call, not whatever follows it).
    pub fn name(&mut self, address: u64, leaf: bool) -> String {
        let lookup = if leaf { address } else { address.saturating_sub(1) };
        let Some(mapping) = self.maps.iter().find(|m| (m.start..m.end).contains(&lookup)) else {
            return String::from(UNKNOWN);
        };
        let offset = lookup - mapping.start + mapping.offset;
        self.files.name_at_offset(&mapping.path, offset).map_or_else(|| String::from(UNKNOWN), crate::flame::demangle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keep_executable_file_mappings_only() {
        let text = "\
55d0c6e00000-55d0c6e1c000 r--p 00000000 08:01 123 /usr/bin/app
55d0c6e1c000-55d0c6e9a000 r-xp 0001b000 08:01 123 /usr/bin/app
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 [heap]
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
";
        assert_eq!(
            parse_maps(text),
            [Mapping { start: 0x55d0c6e1c000, end: 0x55d0c6e9a000, offset: 0x1b000, path: "/usr/bin/app".into() }]
        );
    }

    #[test]
    fn resolves_this_test_binary_s_own_function() {
        let maps = parse_maps(&std::fs::read_to_string("/proc/self/maps").unwrap());
        let mut symbolizer = Symbolizer::new(maps);
        let address = resolves_this_test_binary_s_own_function as *const () as usize as u64;
        assert_eq!(
            symbolizer.name(address, true),
            "heapprobe_cli::trace::symbols::tests::resolves_this_test_binary_s_own_function"
        );
    }
}
