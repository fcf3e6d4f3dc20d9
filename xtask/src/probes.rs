//! `cargo heapprobe probes`: the SDT probes of a binary, read from its ELF notes
//! in Rust (like bcc's `tplist`), with the file offsets heapprobe registers.

use anyhow::bail;
use heapprobe_sdt::{Binary, Site};

use crate::target::Inspect;

/// Options of `cargo heapprobe probes`.
#[derive(clap::Args, Debug, Clone, Default)]
#[non_exhaustive]
pub struct Options {
    /// The binary: a PATH, a running process, or a target to build.
    #[command(flatten)]
    pub binary: Inspect,
    /// List every provider's probes, not only heapprobe's. Default: `false`.
    #[arg(long)]
    pub all: bool,
}

/// Prints the probes of the binary `options` names. Fails when it has no
/// heapprobe probe (or none at all, with `all`).
pub fn run(options: &Options) -> anyhow::Result<()> {
    let args = options;
    let Some(exe) = args.binary.exe()? else {
        bail!("which binary? give a PATH, --pid PID, or a target (--test, --bin, --example, --bench, --lib)");
    };
    let binary = Binary::open(&exe)?;
    let provider = (!args.all).then_some(crate::trace::PROVIDER);
    let probes: Vec<_> = binary.probes.iter().filter(|p| provider.is_none_or(|want| p.provider == want)).collect();
    println!("{}", exe.display());
    if probes.is_empty() {
        bail!(
            "no {}probes in {}: is `Heapprobe` the `#[global_allocator]`?",
            provider.map(|p| format!("{p} ")).unwrap_or_default(),
            exe.display()
        );
    }
    println!(
        "{:<10} {:<15} {:>12} {:>12} {:>12}  arguments",
        "provider", "name", "address", "file offset", "semaphore"
    );
    for probe in &probes {
        let (offset, note) = match &probe.site {
            Site::Valid { offset, .. } => (format!("{offset:#x}"), String::new()),
            Site::Bogus(why) => (String::from("-"), format!("  [bogus, skipped: {why}]")),
        };
        let semaphore = probe.semaphore.map_or_else(|| String::from("-"), |s| format!("{s:#x}"));
        let names =
            if probe.provider == crate::trace::PROVIDER { heapprobe::probes::arg_names(&probe.name) } else { &[] };
        let arguments: Vec<String> = probe
            .arguments
            .split_whitespace()
            .enumerate()
            .map(|(i, a)| names.get(i).map_or_else(|| a.to_owned(), |n| format!("{n}={a}")))
            .collect();
        println!(
            "{:<10} {:<15} {:>12} {:>12} {:>12}  {}{note}",
            probe.provider,
            probe.name,
            format!("{:#x}", probe.address),
            offset,
            semaphore,
            arguments.join(" ")
        );
    }
    let bogus = probes.iter().filter(|p| matches!(p.site, Site::Bogus(_))).count();
    println!(
        "\n{} probe sites, {} valid, {bogus} bogus (notes left by code the linker discarded; never registered)",
        probes.len(),
        probes.len() - bogus
    );
    if bogus == probes.len() && provider.is_some() {
        bail!(
            "no heapprobe probes in {} ({bogus} bogus note(s) left by code the linker discarded): is `Heapprobe` \
             the `#[global_allocator]`?",
            exe.display()
        );
    }
    if binary.code_offset_differs() {
        println!(
            "note: code is mapped at a virtual address that differs from its file offset (rust-lld's layout): \
             `perf probe sdt_heapprobe:*` from perf 6.1 would misplace these probes; `cargo heapprobe trace` places \
             them at the file offsets above"
        );
    }
    Ok(())
}
