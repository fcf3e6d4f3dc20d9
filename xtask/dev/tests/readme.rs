//! This repository's `cargo xtask` is `cargo heapprobe`'s subcommands plus
//! `bench` and `test`, and the README documents those two and their flags
//! (heapprobe-cli's own readme test covers the others).

use std::process::Command;

#[test]
fn cargo_xtask_has_heapprobe_s_subcommands_and_the_repository_s() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let top = Command::new(env!("CARGO_BIN_EXE_xtask")).arg("--help").output().unwrap();
    let top = String::from_utf8_lossy(&top.stdout);
    let listed = top.lines().skip_while(|l| !l.starts_with("Commands:")).skip(1).take_while(|l| !l.is_empty());
    let names: Vec<&str> = listed.map(|l| l.split_whitespace().next().unwrap_or_default()).collect();
    assert_eq!(names, ["trace", "fold", "probes", "doctor", "diff", "bench", "test", "help"]);
    let mut missing = Vec::new();
    for sub in ["bench", "test"] {
        if !readme.contains(&format!("### `cargo xtask {sub}`")) {
            missing.push(format!("a `### `cargo xtask {sub}`` section"));
        }
        let help = Command::new(env!("CARGO_BIN_EXE_xtask")).args([sub, "--help"]).output().unwrap();
        assert!(help.status.success());
        let help = String::from_utf8_lossy(&help.stdout);
        let flags = help
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with('-'))
            .flat_map(|l| {
                l.split([' ', ',']).filter(|w| {
                    w.len() > 2 && w.starts_with("--") && w[2..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
            })
            .filter(|f| *f != "--help");
        missing.extend(flags.filter(|f| !readme.contains(f)).map(|f| format!("{sub} {f}")));
    }
    assert!(missing.is_empty(), "not in README.md: {missing:?}");
}
