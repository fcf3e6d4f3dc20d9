//! The README documents every `cargo xtask` subcommand and every flag that
//! `--help` shows, so neither can be added without docs.

use std::process::Command;

const SUBCOMMANDS: [&str; 7] = ["trace", "probes", "doctor", "fold", "bench", "test", "diff"];

#[test]
fn every_subcommand_and_flag_is_in_the_readme() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let top = Command::new(env!("CARGO_BIN_EXE_xtask")).arg("--help").output().unwrap();
    let top = String::from_utf8_lossy(&top.stdout);
    let mut missing = Vec::new();
    for sub in SUBCOMMANDS {
        assert!(top.contains(&format!("  {sub} ")), "`cargo xtask --help` lists {sub}");
        if !readme.contains(&format!("### `cargo xtask {sub}`")) {
            missing.push(format!("a `### `cargo xtask {sub}`` section"));
        }
        let help = Command::new(env!("CARGO_BIN_EXE_xtask")).args([sub, "--help"]).output().unwrap();
        assert!(help.status.success());
        let help = String::from_utf8_lossy(&help.stdout);
        let flags: Vec<&str> = help
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with('-'))
            .flat_map(|l| l.split([' ', ',']).filter(|w| w.starts_with("--")))
            .filter(|f| *f != "--help")
            .collect();
        assert!(!flags.is_empty() || sub == "test", "{sub} --help lists flags");
        for flag in flags {
            if !readme.contains(flag) {
                missing.push(format!("{sub} {flag}"));
            }
        }
    }
    // Every subcommand `--help` lists is one we know of.
    let listed = top.lines().skip_while(|l| !l.starts_with("Commands:")).skip(1).take_while(|l| !l.is_empty());
    for line in listed {
        let name = line.split_whitespace().next().unwrap_or_default();
        assert!(name == "help" || SUBCOMMANDS.contains(&name), "undocumented subcommand {name}");
    }
    assert!(missing.is_empty(), "not in README.md: {missing:?}");
}
