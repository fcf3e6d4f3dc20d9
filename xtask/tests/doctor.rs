//! `cargo xtask doctor`, and what `cargo xtask trace` does when tracefs is
//! missing, for real: root, perf, bpftrace, private mount namespaces. With
//! `CI=true` a missing tool fails; elsewhere these tests skip with one loud
//! line.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;

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
    // A traced build of the fixture: everything holds.
    let (out, stdout, _) = doctor(&["--bin", "heapprobe-fixture"]);
    assert!(out.status.success());
    for check in ["privileges", "tracefs", "uprobes", "perf", "bpftrace", "probes", ".stapsdt.base", "bogus sites"] {
        assert!(line(&stdout, check).starts_with("ok "), "{check}");
    }
    assert!(line(&stdout, "probes").contains("heapprobe probes"));
    assert!(line(&stdout, "semaphores").starts_with("ok ") && line(&stdout, "semaphores").contains("none"));
    assert!(line(&stdout, "frame pointers").starts_with("ok "));
    assert!(line(&stdout, "debuginfo").starts_with("ok "));
    // rust-lld's layout is a note, not a warning: the tool places probes right.
    let layout = line(&stdout, "layout");
    assert!(layout.starts_with("ok ") && layout.contains("0x1000"), "{layout}");
    assert!(layout.contains("`cargo heapprobe` and bpftrace place probes right"), "{layout}");
    assert!(layout.contains("-Wl,-z,separate-loadable-segments"), "{layout}");
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

/// A zombie has no executable, whoever asks: it is named a zombie, not a
/// matter of privileges (which it was, even to root). Needs no root.
#[test]
fn a_zombie_pid_is_named_for_what_it_is() {
    let mut child = Command::new("true").spawn().unwrap();
    let stat = format!("/proc/{}/stat", child.id());
    // Handshake: `true` has exited once the kernel shows it as a zombie
    // (it stays one until we reap it below).
    let zombie = (0..10_000).any(|_| {
        let state = std::fs::read_to_string(&stat).unwrap_or_default();
        let zombie = state.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !zombie {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        zombie
    });
    assert!(zombie, "the child never became a zombie: {stat}");
    let pid = child.id().to_string();
    let (out, _, stderr) = doctor(&["--pid", &pid]);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // `trace` checks privileges first: as root it reaches the pid.
    let traced = root.then(|| run(Command::new(env!("CARGO_BIN_EXE_cargo-heapprobe")).args(["trace", "--pid", &pid])));
    child.wait().unwrap();
    let expected = format!("pid {pid} is a zombie: it has exited");
    assert!(!out.status.success() && stderr.contains(&expected), "doctor: {stderr}");
    assert!(!stderr.contains("CAP_SYS_PTRACE"), "{stderr}");
    if let Some((traced, _, stderr)) = traced {
        assert!(!traced.status.success() && stderr.contains(&expected), "trace: {stderr}");
    }
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

/// Held by the tests of this binary that register uprobes or check that
/// none is left: the check counts this process's groups as left behind, so
/// it must never run while another test here holds one.
static UPROBES: Mutex<()> = Mutex::new(());

#[test]
fn tracefs_missing_is_mounted_when_root_or_explained() {
    if !tracing_available("tracefs_missing_is_mounted_when_root_or_explained", &["perf", "unshare"]) {
        return;
    }
    let _uprobes = UPROBES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
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

/// Samples perf records of heapprobe:alloc in `exe ARGS`, run from its start
/// (`perf record -- exe`), on uprobes placed as the tool places them.
fn alloc_samples_from_the_start(exe: &Path, args: &[&str], scratch: &Path) -> u64 {
    let binary = heapprobe_sdt::Binary::open(exe).unwrap();
    let mut group = heapprobe_sdt::UprobeGroup::new("doctor").unwrap();
    group.add_probes(&binary, "heapprobe", |name| name == "alloc", heapprobe::probes::arg_names).unwrap();
    let data = scratch.join("from-start.data");
    let status = Command::new("perf")
        .args(["record", "-q", "-e", &format!("{}:*", group.name()), "-o"])
        .arg(&data)
        .arg("--")
        .arg(exe)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    group.remove().unwrap();
    assert!(status.success());
    heapprobe_cli::trace::perf_data::count(&data).unwrap().samples
}

/// DEVELOPERS.md's trap 4, against the kernel: doctor fails a usdt binary
/// whose semaphores sit in a file page RELRO maps too exactly when perf,
/// recording the program from its start, sees none of its guarded sites;
/// `cargo heapprobe trace` refuses to launch such a program (saying why and
/// what to do), and traces it by `--pid` once it runs. The fixture, built
/// with the usdt backend, is the negative control: its semaphores follow
/// the 26 KiB of `.data` that heapprobe's profiler state takes (never
/// flagged, always seen). The positive control is the workload linked with
/// a script that puts `.probes` first in the writable segment, in the file
/// page that ends RELRO: the layout that hit the trap before that state
/// grew, made on purpose so that no layout change can remove it.
#[test]
fn semaphores_in_relro_s_page_are_failed_exactly_when_they_stay_dark() {
    if !tracing_available("semaphores_in_relro_s_page_are_failed_exactly_when_they_stay_dark", &["perf"]) {
        return;
    }
    let _uprobes = UPROBES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let tmp = TempDir::new("doctor-relro");
    let fixture = build_fixture(Linker::Default, Backend::Usdt);
    // The positive control: `.probes` moved before `.data` by the linker.
    let relro_dir = root().join("target/fixture-relro");
    std::fs::create_dir_all(&relro_dir).unwrap();
    let script = relro_dir.join("probes-first.ld");
    std::fs::write(&script, "SECTIONS { .probes : { *(.probes) } } INSERT BEFORE .data;\n").unwrap();
    let relro_flags = format!("-C link-arg=-Wl,-T,{}", script.display());
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--package", "heapprobe-fixture", "--features", "usdt", "--bin"])
        .arg("heapprobe-workload")
        .arg("--target-dir")
        .arg(&relro_dir)
        .env("RUSTFLAGS", &relro_flags)
        .current_dir(root())
        .status()
        .unwrap();
    assert!(status.success(), "building the workload with {relro_flags}");
    let workload = relro_dir.join("debug/heapprobe-workload");
    let mut flagged = Vec::new();
    for (exe, args, made) in [(&fixture, &[][..], 1000), (&workload, &["1"][..], 1000)] {
        let (_, stdout, _) = doctor(&[exe.to_str().unwrap()]);
        let dark = line(&stdout, "semaphores").starts_with("FAIL ") && line(&stdout, "semaphores").contains("RELRO");
        let samples = alloc_samples_from_the_start(exe, args, tmp.path());
        if dark {
            assert_eq!(samples, 0, "{}: flagged, yet perf saw its sites", exe.display());
            assert!(fix(&stdout, "semaphores").contains("separate-loadable-segments"));
            flagged.push(exe.clone());
        } else {
            assert!(samples >= made, "{}: not flagged, yet perf saw {samples} of {made} allocations", exe.display());
        }
        assert_no_heapprobe_uprobes();
    }
    assert_eq!(
        flagged,
        std::slice::from_ref(&workload),
        "the workload is the positive control, the fixture the negative one"
    );

    // The tool refuses to launch it, and traces it by pid while it runs.
    let svg = tmp.path().join("dark.svg");
    let trace = |args: &[&str]| {
        run(Command::new(env!("CARGO_BIN_EXE_cargo-heapprobe"))
            .current_dir(root())
            .env("CARGO_TARGET_DIR", &relro_dir)
            .env("RUSTFLAGS", &relro_flags)
            .arg("trace")
            .args(args)
            .args(["-o", svg.to_str().unwrap()]))
    };
    let (out, _, stderr) =
        trace(&["-p", "heapprobe-fixture", "--features", "usdt", "--bin", "heapprobe-workload", "--", "1"]);
    let built = relro_dir.join("heapprobe/heapprobe-workload");
    let (_, verdict, _) = doctor(&[built.to_str().unwrap()]);
    assert!(line(&verdict, "semaphores").contains("RELRO"), "the traced build keeps the trap: {verdict}");
    assert!(!out.status.success());
    assert!(stderr.contains("that its RELRO segment maps too"), "{stderr}");
    assert!(stderr.contains("--pid once it runs"));
    assert!(!svg.exists());
    let mut running = Command::new(&workload).arg("100000").stdout(std::process::Stdio::null()).spawn().unwrap();
    // This build has no frame pointers, so its stacks are unknown and the
    // trace would fail on them; what is checked here is that the probes fire.
    let pid = running.id().to_string();
    let (out, stdout, _) = trace(&["--pid", &pid, "--duration", "1", "--weight", "count", "--max-lost", "100"]);
    let _ = running.kill();
    let _ = running.wait();
    assert!(out.status.success());
    assert!(!stdout.contains("heapprobe:alloc: 0 calls"), "{stdout}");
    assert_no_heapprobe_uprobes();
}
