//! `cargo heapprobe doctor`: whether this machine can trace, and whether a binary
//! is traceable. Every problem comes with the exact command that fixes it.

use std::path::Path;
use std::process::Command;

use anyhow::bail;
use heapprobe_sdt::{Binary, Site};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

use crate::target::Inspect;
use crate::trace::PROVIDER;
use crate::util::{self, Privileges};

/// Options of `cargo heapprobe doctor`.
#[derive(clap::Args, Debug, Clone, Default)]
#[non_exhaustive]
pub struct Options {
    /// The binary to check too (a PATH, a running process, or a target to
    /// build). Default: the machine only.
    #[command(flatten)]
    pub binary: Inspect,
}

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
struct Check {
    status: Status,
    name: &'static str,
    detail: String,
    fix: Option<String>,
}

/// The checks, in the order they ran.
#[derive(Default)]
struct Report {
    checks: Vec<Check>,
}

impl Report {
    fn ok(&mut self, name: &'static str, detail: impl Into<String>) {
        self.checks.push(Check { status: Status::Ok, name, detail: detail.into(), fix: None });
    }

    fn warn(&mut self, name: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.checks.push(Check { status: Status::Warn, name, detail: detail.into(), fix: Some(fix.into()) });
    }

    fn fail(&mut self, name: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.checks.push(Check { status: Status::Fail, name, detail: detail.into(), fix: Some(fix.into()) });
    }

    fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    fn print(&self) {
        for check in &self.checks {
            let label = match check.status {
                Status::Ok => "ok",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            println!("{label:<5} {:<19} {}", check.name, check.detail);
            if let Some(fix) = &check.fix {
                println!("{:<25} fix: {fix}", "");
            }
        }
    }
}

/// Checks the machine (and the binary, if one is named), prints every check
/// with its fix, and fails when a check failed (warnings do not).
pub fn run(options: &Options) -> anyhow::Result<()> {
    let args = options;
    let mut report = Report::default();
    check_system(&mut report);
    let exe = args.binary.exe()?;
    if let Some(exe) = &exe {
        println!("machine, and {}:", exe.display());
        check_binary(&mut report, exe);
    } else {
        println!("machine (give a target, PATH or --pid to check a binary too):");
    }
    report.print();
    let (warnings, failures) = (report.count(Status::Warn), report.count(Status::Fail));
    println!("\n{} ok, {warnings} warning(s), {failures} failure(s)", report.count(Status::Ok));
    if failures > 0 {
        bail!("{failures} check(s) failed: run the fixes above, then `cargo heapprobe doctor` again");
    }
    Ok(())
}

/// Privileges, tracefs, kernel support and the tools.
fn check_system(report: &mut Report) {
    let privileges = Privileges::current();
    if privileges.root {
        report.ok("privileges", "root");
    } else if privileges.can_use_perf() {
        report.warn(
            "privileges",
            "not root, with CAP_PERFMON and CAP_DAC_OVERRIDE: the perf backend works, the bpftrace backend does not",
            privileges.missing_for("bpftrace").unwrap_or_default(),
        );
    } else {
        report.fail("privileges", "not root", privileges.missing_for("perf").unwrap_or_default());
    }

    match std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").map(|s| s.trim().parse::<i32>()) {
        Ok(Ok(level)) if privileges.root || privileges.perfmon => {
            report.ok("perf_event_paranoid", format!("{level} (does not limit root or CAP_PERFMON)"))
        }
        Ok(Ok(level)) if level <= -1 => report.ok("perf_event_paranoid", format!("{level}")),
        Ok(Ok(level)) => report.fail(
            "perf_event_paranoid",
            format!("{level}: without CAP_PERFMON, recording uprobe events needs -1"),
            "grant CAP_PERFMON (see privileges), or `sysctl -w kernel.perf_event_paranoid=-1` as root",
        ),
        _ => report.fail(
            "perf_event_paranoid",
            "/proc/sys/kernel/perf_event_paranoid is unreadable: the kernel lacks perf events",
            "use a kernel built with CONFIG_PERF_EVENTS (Debian's is)",
        ),
    }

    let tracefs = match heapprobe_sdt::find_tracefs() {
        Some(dir) => {
            report.ok("tracefs", format!("mounted at {}", dir.display()));
            Some(dir)
        }
        None if privileges.root => match heapprobe_sdt::mount_tracefs() {
            Ok(dir) => {
                report.ok("tracefs", format!("was not mounted: mounted it at {}", dir.display()));
                Some(dir)
            }
            Err(e) => {
                report.fail("tracefs", format!("not mounted, and mounting failed: {}", source_of(&e)), TRACEFS_FIX);
                None
            }
        },
        None if Path::new("/sys/kernel/tracing/trace").exists() || !privileges.dac_override => {
            report.fail(
                "tracefs",
                "not reachable by this user (tracefs is root-only, mode 0700)",
                format!("run as root, or with CAP_DAC_OVERRIDE: `{}`", util::CAPABILITY_RECIPE),
            );
            None
        }
        None => {
            report.fail("tracefs", "not mounted", TRACEFS_FIX);
            None
        }
    };

    let uprobe_pmu = Path::new("/sys/bus/event_source/devices/uprobe").exists();
    match (&tracefs, uprobe_pmu) {
        (Some(_), true) => report.ok("uprobes", "uprobe events and the uprobe PMU are available"),
        (None, _) => report.warn("uprobes", "not checked: tracefs is not available", "see tracefs above"),
        (Some(_), false) => report.fail(
            "uprobes",
            "the kernel lacks the uprobe PMU (/sys/bus/event_source/devices/uprobe) that perf and bpftrace use",
            "use a kernel built with CONFIG_UPROBES and CONFIG_UPROBE_EVENTS (Debian's is)",
        ),
    }
    if tracefs.is_some() {
        check_stale_groups(report);
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        report.warn(
            "btf",
            "the kernel has no BTF (/sys/kernel/btf/vmlinux): some bpftrace features are unavailable",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF (Debian's is); the perf backend does not need it",
        );
    }

    check_tool(report, "perf", util::tool("PERF", "perf"), &["version"], "linux-perf", true);
    check_tool(report, "bpftrace", util::tool("BPFTRACE", "bpftrace"), &["--version"], "bpftrace", false);
}

/// Uprobe groups left by heapprobe runs that were killed, and what holds
/// them: `cargo heapprobe trace` removes the free ones at its start, and leaves
/// (naming the holder) those an orphaned recorder still has open.
fn check_stale_groups(report: &mut Report) {
    let groups = match heapprobe_sdt::stale_groups() {
        Ok(groups) => groups,
        Err(e) => {
            report.warn("stale uprobes", format!("cannot read uprobe_events: {}", source_of(&e)), "run as root");
            return;
        }
    };
    if groups.is_empty() {
        report.ok("stale uprobes", "none left by killed heapprobe runs");
        return;
    }
    for group in groups {
        let detail = format!(
            "group {} ({} event(s)) of a killed run (pid {}): {}",
            group.name,
            group.events.len(),
            group.pid,
            crate::trace::describe_holders(&group.holders, &group.name)
        );
        if group.holders.is_empty() {
            report.warn(
                "stale uprobes",
                detail,
                "`cargo heapprobe trace` removes it when it starts (once nothing holds it open)",
            );
        } else {
            let pids: Vec<String> = group.holders.iter().map(|h| h.pid.to_string()).collect();
            report.warn(
                "stale uprobes",
                detail,
                format!(
                    "`kill {}` (a recorder orphaned by the killed run); the next `cargo heapprobe trace` then removes \
                     the group. It does not block other runs: each uses a group of its own",
                    pids.join(" ")
                ),
            );
        }
    }
}

const TRACEFS_FIX: &str =
    "`mount -t tracefs nodev /sys/kernel/tracing` as root (`cargo heapprobe trace` does it when root)";

/// The innermost cause's message.
fn source_of(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Whether `program` runs, and its version. perf is the default backend, so
/// its absence fails; bpftrace's only warns.
fn check_tool(report: &mut Report, name: &'static str, program: String, args: &[&str], package: &str, needed: bool) {
    let output = Command::new(&program).args(args).output();
    let fix = if program == name {
        format!("`apt-get install -y {package}` as root")
    } else {
        format!("${} is {program:?}: point it at a working {name}, or unset it", name.to_uppercase())
    };
    let problem = match output {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().trim().to_owned();
            report.ok(name, format!("{version} ({program})"));
            return;
        }
        Ok(out) => format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("no output").trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!("{program} is not installed"),
        Err(e) => format!("cannot run {program}: {e}"),
    };
    if needed {
        report.fail(name, problem, fix);
    } else {
        report.warn(name, format!("{problem} (only `--backend bpftrace` and scripts/ need it)"), fix);
    }
}

/// Probes, their placement and semaphores, frame pointers and debuginfo.
fn check_binary(report: &mut Report, exe: &Path) {
    let binary = match Binary::open(exe) {
        Ok(binary) => binary,
        Err(e) => {
            report.fail("binary", format!("{e}: {}", source_of(&e)), "give a 64-bit ELF executable");
            return;
        }
    };
    let ours: Vec<_> = binary.probes.iter().filter(|p| p.provider == PROVIDER).collect();
    let valid: Vec<_> = ours.iter().filter(|p| matches!(p.site, Site::Valid { .. })).collect();
    if valid.is_empty() {
        report.fail(
            "probes",
            format!(
                "no heapprobe probes{}",
                if ours.is_empty() { String::new() } else { format!(" ({} bogus notes only)", ours.len()) }
            ),
            "make `Heapprobe` the `#[global_allocator]`, with the default `probe` feature or `usdt`",
        );
    } else {
        let mut names: Vec<&str> = valid.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        report.ok("probes", format!("{} sites of {} heapprobe probes", valid.len(), names.len()));
    }
    if binary.has_stapsdt_base {
        report.ok(".stapsdt.base", "present (tools can adjust for prelinking)");
    } else if !ours.is_empty() {
        report.fail(
            ".stapsdt.base",
            "missing: tracers cannot check the notes' addresses against it",
            "build the probes with the `probe` or `usdt` crate (heapprobe's features), which emit it",
        );
    }

    let bogus = ours.len() - valid.len();
    if bogus == 0 {
        report.ok("bogus sites", "none");
    } else {
        report.warn(
            "bogus sites",
            format!(
                "{bogus} heapprobe notes point outside executable code (left by code the linker discarded): \
                 `cargo heapprobe trace` and bpftrace skip them, `perf probe sdt_heapprobe:*` registers them"
            ),
            "trace with `cargo heapprobe trace` or bpftrace `usdt:` probes, not `perf probe sdt_heapprobe:*`",
        );
    }

    match binary.segments.iter().find(|s| s.executable && s.vaddr != s.offset) {
        // Not a warning: `cargo heapprobe` and bpftrace place probes right
        // in this layout (every rust-lld binary has it); only a hand-run
        // `perf probe sdt_…` from perf 6.1 does not, so say it, as a note.
        Some(code) => report.ok(
            "layout",
            format!(
                "code is mapped at {:#x} above its file offset (rust-lld's layout): `cargo heapprobe` and bpftrace \
                 place probes right; only a hand-run `perf probe sdt_heapprobe:*` from perf 6.1 would misplace them \
                 (link with `-C link-arg=-Wl,-z,separate-loadable-segments` if you must run that)",
                code.vaddr.wrapping_sub(code.offset)
            ),
        ),
        None => report.ok("layout", "code vaddr = file offset: even naive `perf probe sdt_…` places probes right"),
    }

    let semaphores: Vec<_> = valid.iter().filter_map(|p| p.semaphore.map(|s| (p, s))).collect();
    if semaphores.is_empty() {
        report.ok("semaphores", "none: every site is a bare `nop`, armed whenever traced");
    } else {
        let unsafe_ones: Vec<String> = semaphores
            .iter()
            .filter(|(_, sem)| {
                !binary.segments.iter().any(|s| s.writable && *sem >= s.vaddr && *sem + 2 <= s.vaddr + s.file_size)
            })
            .map(|(p, sem)| format!("{}@{sem:#x}", p.name))
            .collect();
        let mut shared: Vec<String> = semaphores
            .iter()
            .filter_map(|(_, sem)| {
                shared_relro_page(&binary.segments, *sem).map(|page| format!("{sem:#x} (file page {page:#x})"))
            })
            .collect();
        shared.sort();
        shared.dedup();
        if unsafe_ones.is_empty() && shared.is_empty() {
            report.ok(
                "semaphores",
                format!("{} guarded sites, semaphores file-backed in writable data", semaphores.len()),
            );
        } else if unsafe_ones.is_empty() {
            report.fail(
                "semaphores",
                format!(
                    "in a file page that an earlier writable segment (RELRO) maps too: traced from its start, the \
                     kernel sets the RELRO copy of the semaphore, so the guarded sites stay dark (0 events): {}",
                    shared.join(", ")
                ),
                "link with `-C link-arg=-Wl,-z,separate-loadable-segments`, or put a few KiB of initialised data \
                 before the semaphores, or build with the default `probe` feature (no semaphores); tracing the \
                 running process (`--pid`, `bpftrace -p`) works: ld.so has made the RELRO copy read-only by then \
                 (DEVELOPERS.md, trap 4)",
            );
        } else {
            report.fail(
                "semaphores",
                format!("not in file-backed writable data, so the kernel cannot arm them: {}", unsafe_ones.join(", ")),
                "build with the default `probe` feature (no semaphores)",
            );
        }
    }

    match std::fs::read(exe) {
        Ok(data) => check_code(report, &data),
        Err(e) => report.fail("debuginfo", format!("cannot read {}: {e}", exe.display()), "check permissions"),
    }
}

/// The file page (offset) of the semaphore at `vaddr` when an earlier
/// writable PT_LOAD's file range also covers that page: rust-lld starts the
/// data segment in the file page where the RELRO segment's file range ends,
/// so the page is mapped twice, and the kernel adds a uprobe's reference
/// count in the first writable mapping that covers the file offset, RELRO's
/// copy (DEVELOPERS.md, trap 4). `None` when the semaphore's page is its
/// segment's alone.
pub fn shared_relro_page(segments: &[heapprobe_sdt::Segment], vaddr: u64) -> Option<u64> {
    const PAGE: u64 = 4096;
    let own = segments.iter().find(|s| s.writable && vaddr >= s.vaddr && vaddr < s.vaddr + s.file_size)?;
    let page = (vaddr - own.vaddr + own.offset) & !(PAGE - 1);
    segments
        .iter()
        .any(|s| s.writable && s.vaddr < own.vaddr && s.offset < page + PAGE && page < s.offset + s.file_size)
        .then_some(page)
}

/// Crates whose code ships precompiled with the toolchain: their frame
/// pointers say nothing about how the binary was built.
const TOOLCHAIN_CRATES: [&str; 17] = [
    "std",
    "core",
    "alloc",
    "compiler_builtins",
    "std_detect",
    "panic_unwind",
    "panic_abort",
    "unwind",
    "hashbrown",
    "rustc_demangle",
    "addr2line",
    "gimli",
    "miniz_oxide",
    "object",
    "memchr",
    "adler2",
    "cfg_if",
];

/// How many of an x86-64 ELF binary's own Rust functions there are (the
/// toolchain's precompiled crates left out), and how many of them set up a
/// frame pointer (`push %rbp; mov %rsp,%rbp`, after an optional `endbr64`).
/// `None` for other files.
pub fn frame_pointers(data: &[u8]) -> Option<(u32, u32)> {
    let file = object::File::parse(data).ok()?;
    if file.architecture() != object::Architecture::X86_64 {
        return None;
    }
    let (mut own, mut with_fp) = (0u32, 0u32);
    for symbol in file.symbols().filter(|s| s.kind() == SymbolKind::Text && s.size() > 0) {
        let Ok(name) = symbol.name() else { continue };
        let demangled = crate::flame::demangle(name);
        // `<T as Trait>::f` may be the toolchain's for any crate's type:
        // only plain paths say whose code it is.
        let krate = demangled.split("::").next().unwrap_or_default();
        if !(name.starts_with("_ZN") || name.starts_with("_R"))
            || demangled.starts_with('<')
            || TOOLCHAIN_CRATES.contains(&krate)
        {
            continue;
        }
        let Some(code) = symbol
            .section_index()
            .and_then(|i| file.section_by_index(i).ok())
            .and_then(|s| Some((s.address(), s.data().ok()?)))
            .and_then(|(start, bytes)| bytes.get(usize::try_from(symbol.address().checked_sub(start)?).ok()?..))
        else {
            continue;
        };
        own += 1;
        let code = code.strip_prefix(&[0xf3, 0x0f, 0x1e, 0xfa]).unwrap_or(code);
        if code.starts_with(&[0x55, 0x48, 0x89, 0xe5]) {
            with_fp += 1;
        }
    }
    Some((own, with_fp))
}

/// Frame pointers (x86-64 prologues of the binary's own functions) and
/// debuginfo.
fn check_code(report: &mut Report, data: &[u8]) {
    let Ok(file) = object::File::parse(data) else {
        report.fail("debuginfo", "not an object file the `object` crate can read", "give an ELF executable");
        return;
    };
    let functions: Vec<_> = file.symbols().filter(|s| s.kind() == SymbolKind::Text && s.size() > 0).collect();
    if functions.is_empty() {
        report.fail(
            "symbols",
            "no function symbols (stripped): every frame would be [unknown]",
            "do not strip the binary (`strip = false` in the profile), or keep a debug file with its build id",
        );
        return;
    }
    if let Some((own, with_fp)) = frame_pointers(data) {
        let share = if own == 0 { 0.0 } else { f64::from(with_fp) * 100.0 / f64::from(own) };
        if own == 0 {
            report.warn("frame pointers", "no Rust functions of its own to check", "nothing to do");
        } else if share >= 80.0 {
            report.ok("frame pointers", format!("{with_fp} of its {own} own functions set up a frame pointer"));
        } else {
            report.warn(
                "frame pointers",
                format!(
                    "only {with_fp} of its {own} own functions ({share:.0}%) set up a frame pointer: \
                     frame-pointer stacks (perf `--call-graph fp`, bpftrace `ustack`) will skip callers"
                ),
                "build with RUSTFLAGS=\"-C force-frame-pointers=yes\" (`cargo heapprobe trace` does), or trace it \
                 with `--call-graph dwarf`",
            );
        }
    }
    let dwarf = file.section_by_name(".debug_info").map_or(0, |s| s.size());
    if dwarf > 0 {
        report.ok("debuginfo", format!("{} of DWARF (.debug_info)", crate::flame::human_bytes(dwarf)));
    } else {
        report.warn(
            "debuginfo",
            "no .debug_info: names come from the symbol table alone (no inlined frames, no file:line)",
            "add `debug = \"line-tables-only\"` to the profile you ship (`cargo heapprobe trace` builds with debuginfo)",
        );
    }
}

#[cfg(test)]
mod tests {
    use heapprobe_sdt::Segment;

    use super::shared_relro_page;

    fn segment(vaddr: u64, offset: u64, file_size: u64, writable: bool) -> Segment {
        Segment { vaddr, offset, file_size, mem_size: file_size, executable: !writable, writable }
    }

    /// rust-lld's layout: RELRO's file range ends at 0x5a3e8, and .data
    /// starts in the same file page (0x5a000) one page higher in memory.
    #[test]
    fn a_semaphore_in_the_page_relro_maps_too_is_flagged() {
        let segments = [
            segment(0x0, 0x0, 0x1000, false),
            segment(0x59000 + 0x1000, 0x59000, 0x13e8, true), // RELRO: file 0x59000..0x5a3e8
            segment(0x5b3e8, 0x5a3e8, 0x300, true),           // .data and .probes
        ];
        assert_eq!(shared_relro_page(&segments, 0x5b400), Some(0x5a000));
        // 8 KiB of data later, the semaphore's page is .data's alone.
        let padded = [segments[0], segments[1], segment(0x5b3e8, 0x5a3e8, 0x2300, true)];
        assert_eq!(shared_relro_page(&padded, 0x5b3e8 + 0x2100), None);
        // Not in any writable segment: not this check's business.
        assert_eq!(shared_relro_page(&segments, 0x10), None);
    }
}
