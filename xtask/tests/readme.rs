//! The README documents every `cargo heapprobe` subcommand and every flag
//! that `--help` shows, so neither can be added without docs.

use std::process::Command;

const SUBCOMMANDS: [&str; 5] = ["trace", "fold", "probes", "doctor", "diff"];

/// The flags `--help` of `args` lists (`--name`), `--help` left out.
fn flags(exe: &str, args: &[&str]) -> Vec<String> {
    let help = Command::new(exe).args(args).arg("--help").output().unwrap();
    assert!(help.status.success());
    String::from_utf8_lossy(&help.stdout)
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .flat_map(|l| {
            l.split([' ', ','])
                .filter(|w| {
                    w.len() > 2 && w.starts_with("--") && w[2..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|f| f != "--help")
        .collect()
}

#[test]
fn every_subcommand_and_flag_is_in_the_readme() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let exe = env!("CARGO_BIN_EXE_cargo-heapprobe");
    // Run by cargo as `cargo-heapprobe heapprobe ...`, and directly without it.
    for args in [&["--help"][..], &["heapprobe", "--help"]] {
        let top = Command::new(exe).args(args).output().unwrap();
        assert!(top.status.success(), "{args:?}");
        let top = String::from_utf8_lossy(&top.stdout);
        assert!(top.contains("Usage: cargo heapprobe <COMMAND>"), "{top}");
        let listed = top.lines().skip_while(|l| !l.starts_with("Commands:")).skip(1).take_while(|l| !l.is_empty());
        let names: Vec<&str> = listed.map(|l| l.split_whitespace().next().unwrap_or_default()).collect();
        assert_eq!(names, [&SUBCOMMANDS[..], &["help"]].concat(), "the subcommands of cargo heapprobe");
    }
    let mut missing = Vec::new();
    for sub in SUBCOMMANDS {
        if !readme.contains(&format!("### `cargo heapprobe {sub}`")) {
            missing.push(format!("a `### `cargo heapprobe {sub}`` section"));
        }
        let flags = flags(exe, &[sub]);
        assert!(!flags.is_empty(), "{sub} --help lists flags");
        missing.extend(flags.into_iter().filter(|f| !readme.contains(f.as_str())).map(|f| format!("{sub} {f}")));
    }
    assert!(missing.is_empty(), "not in README.md: {missing:?}");
}
