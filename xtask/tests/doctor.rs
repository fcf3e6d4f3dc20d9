//! `cargo xtask doctor`, and what `cargo xtask trace` does when tracefs is
//! missing, for real: root, perf, bpftrace, private mount namespaces. With
//! `CI=true` a missing tool fails; elsewhere these tests skip with one loud
//! line.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{assert_no_heapprobe_uprobes, build_fixture, root, tracing_available, Backend, Linker, TempDir};

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("failed to run the xtask binary");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    eprintln!("$ {cmd:?}\n--- stdout\n{stdout}--- stderr\n{stderr}");
    (out, stdout, stderr)
}

fn doctor(args: &[&str]) -> (Output, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_cargo-heapprobe")).current_dir(root()).arg("doctor").args(args))
}

/// The report line of check `name` (`ok    name   detail`).
fn line<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(&format!("{name} "))))
        .unwrap_or_else(|| panic!("no `{name}` check in:\n{stdout}"))
}

/// The `fix:` line right after check `name`.
fn fix<'a>(stdout: &'a str, name: &str) -> &'a str {
    let check = line(stdout, name);
    let mut lines = stdout.lines().skip_while(|l| *l != check).skip(1);
    lines.next().filter(|l| l.trim_start().starts_with("fix: ")).unwrap_or_else(|| panic!("no fix for `{name}`"))
}

#[test]
fn doctor_reports_each_binary_property_with_its_fix() {
    if !tracing_available("doctor_reports_each_binary_property_with_its_fix", &["perf", "bpftrace"]) {
        return;
    }
    // A traced build of the fixture: everything holds but rust-lld's layout.
    let (out, stdout, _) = doctor(&["--bin", "heapprobe-fixture"]);
    assert!(out.status.success());
    for check in ["privileges", "tracefs", "uprobes", "perf", "bpftrace", "probes", ".stapsdt.base", "bogus sites"] {
        assert!(line(&stdout, check).starts_with("ok "), "{check}");
    }
    assert!(line(&stdout, "probes").contains("heapprobe probes"));
    assert!(line(&stdout, "semaphores").starts_with("ok ") && line(&stdout, "semaphores").contains("none"));
    assert!(line(&stdout, "frame pointers").starts_with("ok "));
    assert!(line(&stdout, "debuginfo").starts_with("ok "));
    assert!(line(&stdout, "layout").starts_with("WARN ") && line(&stdout, "layout").contains("0x1000"));
    assert!(fix(&stdout, "layout").contains("cargo heapprobe trace"));
    assert!(fix(&stdout, "layout").contains("-Wl,-z,separate-loadable-segments"));
    assert!(stdout.contains("0 failure(s)"));

    // bfd's layout maps code at its file offset; a plain debug build has no
    // frame pointers.
    let bfd = build_fixture(Linker::Bfd, Backend::Probe);
    let (out, stdout, _) = doctor(&[bfd.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(line(&stdout, "layout").starts_with("ok "));
    assert!(line(&stdout, "frame pointers").starts_with("WARN "));
    assert!(fix(&stdout, "frame pointers").contains("-C force-frame-pointers=yes"));

    // The usdt backend's semaphores live in writable, file-backed data.
    let usdt = build_fixture(Linker::Default, Backend::Usdt);
    let (out, stdout, _) = doctor(&[usdt.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(line(&stdout, "semaphores").starts_with("ok ") && line(&stdout, "semaphores").contains("guarded sites"));

    // No probes: a failure, a non-zero exit, and what to do.
    let (out, stdout, stderr) = doctor(&[env!("CARGO_BIN_EXE_cargo-heapprobe")]);
    assert!(!out.status.success());
    assert!(line(&stdout, "probes").starts_with("FAIL "));
    assert!(fix(&stdout, "probes").contains("`#[global_allocator]`"));
    assert!(stderr.contains("1 check(s) failed"));

    // A running process, by pid.
    let mut child = Command::new(build_fixture(Linker::Default, Backend::Probe))
        .arg("--wait")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (out, stdout, _) = doctor(&["--pid", &child.id().to_string()]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success());
    assert!(stdout.contains(&format!("/proc/{}/exe", child.id())));
    assert!(line(&stdout, "probes").starts_with("ok "));
    let (out, _, stderr) = doctor(&["--pid", "999999999"]);
    assert!(!out.status.success() && stderr.contains("no process with pid 999999999"));
}

#[test]
fn doctor_names_missing_privileges_and_tools() {
    if !tracing_available("doctor_names_missing_privileges_and_tools", &["perf", "bpftrace"]) {
        return;
    }
    // Not root, no capabilities.
    let setpriv = |caps: &str| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"))
            .arg(env!("CARGO_BIN_EXE_cargo-heapprobe"))
            .arg("doctor")
            .current_dir("/");
        cmd
    };
    let (out, stdout, _) = run(&mut setpriv("-all"));
    assert!(!out.status.success());
    assert!(line(&stdout, "privileges").starts_with("FAIL "));
    assert!(fix(&stdout, "privileges").contains("--ambient-caps=+perfmon,+dac_override"));
    assert!(line(&stdout, "tracefs").starts_with("FAIL "), "tracefs is mode 0700");

    // With the two capabilities the README gives, the perf backend works.
    let (out, stdout, _) = run(&mut setpriv("+perfmon,+dac_override"));
    assert!(out.status.success());
    assert!(line(&stdout, "privileges").starts_with("WARN "));
    assert!(fix(&stdout, "privileges").contains("bpftrace backend needs root"));
    assert!(line(&stdout, "tracefs").starts_with("ok "));

    // perf that does not run fails; bpftrace that does not run only warns.
    let (out, stdout, _) = doctor_with_env(&[("PERF", "/nonexistent/perf"), ("BPFTRACE", "/nonexistent/bpftrace")]);
    assert!(!out.status.success());
    assert!(line(&stdout, "perf").starts_with("FAIL ") && fix(&stdout, "perf").contains("$PERF is"));
    assert!(line(&stdout, "bpftrace").starts_with("WARN "));
    assert!(stdout.contains("1 failure(s)"));
}

fn doctor_with_env(vars: &[(&str, &str)]) -> (Output, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cargo-heapprobe"));
    cmd.current_dir(root()).arg("doctor").envs(vars.iter().copied());
    run(&mut cmd)
}

/// Runs the xtask in a private mount namespace after `setup` (a shell
/// snippet): the host's tracefs is never touched.
fn xtask_in_namespace(setup: &str, args: &[&str]) -> (Output, String, String) {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("{setup} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_cargo-heapprobe"))
        .args(args)
        .current_dir(root());
    run(&mut cmd)
}

#[test]
fn tracefs_missing_is_mounted_when_root_or_explained() {
    if !tracing_available("tracefs_missing_is_mounted_when_root_or_explained", &["perf", "unshare"]) {
        return;
    }
    let unmount = "umount /sys/kernel/tracing && { umount -l /sys/kernel/debug 2>/dev/null || true; } \
                   && test ! -e /sys/kernel/tracing/uprobe_events";
    // Root mounts it and goes on.
    let (out, stdout, _) = xtask_in_namespace(unmount, &["doctor"]);
    assert!(out.status.success());
    assert!(line(&stdout, "tracefs").contains("was not mounted: mounted it at /sys/kernel/tracing"));
    let tmp = TempDir::new("xtask-tracefs");
    let svg = tmp.path().join("fixture.svg");
    let (out, _, stderr) =
        xtask_in_namespace(unmount, &["trace", "--bin", "heapprobe-fixture", "-o", svg.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(stderr.contains("tracefs was not mounted: mounted it at /sys/kernel/tracing"));
    assert!(Path::new(&svg).exists());
    assert_no_heapprobe_uprobes();

    // Where it cannot be mounted (no /sys/kernel/tracing to mount on), the
    // error says how, and nothing is registered.
    let hide = "mount -t tmpfs -o ro,size=4k none /sys/kernel";
    let (out, _, stderr) =
        xtask_in_namespace(hide, &["trace", "--bin", "heapprobe-fixture", "-o", svg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr.contains("tracefs is not mounted and could not be mounted"), "{stderr}");
    assert!(stderr.contains("`mount -t tracefs nodev /sys/kernel/tracing`"));
    let (out, stdout, _) = xtask_in_namespace(hide, &["doctor"]);
    assert!(!out.status.success());
    assert!(line(&stdout, "tracefs").starts_with("FAIL "));
    assert!(fix(&stdout, "tracefs").contains("mount -t tracefs nodev /sys/kernel/tracing"));
    assert_no_heapprobe_uprobes();
}
