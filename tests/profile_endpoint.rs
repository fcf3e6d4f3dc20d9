//! The profile routes of issue 14, served by the in-process profiler that
//! `heapprobe::serve` attaches (features `server` and `pprof`), read by real
//! clients: `go tool pprof -top` on `/debug/pprof/heap`, `/debug/pprof/allocs`
//! and a `?seconds=N` delta shows the fixture's known functions with their
//! exact bytes (rate 1), and `/debug/heap/live`, the exact live map, lists
//! exactly the known live blocks and adds up to the exact current use.
//!
//! The fixture is tests/fixture/src/bin/heapprobe-profiled.rs, started with
//! `HEAPPROBE_PROFILE=rate=1`. Needs Go (`golang-go`); with `CI=true` a
//! missing one fails the test.

mod endpoint_support;
mod support;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use endpoint_support::{get, post, Child};

fn go_available() -> bool {
    if Command::new("go").arg("version").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    let message = "SKIPPED profile_endpoint: needs Go (apt-get install -y golang-go); `bash .ci/run` installs it";
    assert!(!support::in_ci(), "CI=true, so a missing tool is a failure: {message}");
    eprintln!("\n========== {message} ==========\n");
    false
}

/// `go tool pprof -top -cum` of `url`, focused on `function`, in raw units
/// (bytes as `-unit=B`; its timeout raised: by default it waits 1.5 × N for
/// a `seconds=N` profile, which a loaded machine can overrun while the
/// profile is read and named), with the default sample type (a space) unless
/// `sample_index` is given.
fn pprof_top(url: &str, function: &str, sample_index: Option<&str>, tmp: &Path) -> std::process::Output {
    Command::new("go")
        .args(["tool", "pprof", "-top", "-cum", "-nodecount=200", "-symbolize=none", "-timeout=120"])
        .args(sample_index.map_or(true, |i| i.ends_with("_space")).then_some("-unit=B"))
        .arg(format!("-focus={function}"))
        .args(sample_index.map(|i| format!("-sample_index={i}")))
        .arg(url)
        .env("PPROF_TMPDIR", tmp)
        .output()
        .expect("failed to run go tool pprof")
}

/// The cumulative figure of `function`'s row in `go tool pprof -top -cum`.
fn cum_of(output: &std::process::Output, function: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "go tool pprof exited with {}: {}{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let row = stdout
        .lines()
        .find(|l| l.ends_with(&format!("::{function}")))
        .unwrap_or_else(|| panic!("no {function} row:\n{stdout}"));
    // `flat flat% sum% cum cum% name`
    row.split_whitespace().nth(3).unwrap().to_owned()
}

fn requests(at: &dyn Fn(&str) -> String) -> u64 {
    let stats: serde_json::Value = serde_json::from_str(&get(&at("/stats")).body).unwrap();
    stats["endpoint"]["requests"].as_u64().expect("the server counts its requests")
}

#[test]
fn go_tool_pprof_and_the_live_map_read_the_fixtures_known_blocks_exactly() {
    if !go_available() {
        return;
    }
    let exe = endpoint_support::build(
        &["--package", "heapprobe-fixture", "--features", "server,pprof", "--bin", "heapprobe-profiled"],
        "heapprobe-profiled",
    );
    let dir = support::TempDir::new("profile-endpoint");
    let mut fixture = Child::spawn(
        Command::new(exe)
            .env("HEAPPROBE_PROFILE", format!("rate=1,out={}", dir.path().join("exit").display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let lines = fixture.lines();
    let mut stdin = fixture.child.stdin.take().unwrap();
    let line = lines.next(Duration::from_secs(60));
    let address = line.strip_prefix("listening ").unwrap_or_else(|| panic!("{line:?}")).to_owned();
    let at = |path: &str| format!("http://{address}{path}");
    let mut command = |c: &str| {
        writeln!(stdin, "{c}").unwrap();
        let mut said = Vec::new();
        loop {
            let line = lines.next(Duration::from_secs(60));
            if line == "done" {
                return said;
            }
            said.push(line);
        }
    };

    let said = command("known");
    let kept: BTreeSet<u64> =
        said[0].strip_prefix("kept ").expect("the kept addresses").split(' ').map(|a| a.parse().unwrap()).collect();
    assert_eq!(kept.len(), 500);

    // The exact live map: every live block, with the known ones exactly.
    let reply = get(&at("/debug/heap/live"));
    assert_eq!((reply.status, reply.content_type.as_str()), (200, "application/json"), "{}", reply.body);
    let live: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!((live["exact"].as_bool(), live["truncated"].as_bool()), (Some(true), Some(false)), "{live}");
    let memory = live["memory"].as_array().unwrap();
    assert_eq!(live["length_memory_array"].as_u64(), Some(memory.len() as u64));
    assert_eq!(live["live_blocks"].as_u64(), Some(memory.len() as u64));
    let sum: u64 = memory.iter().map(|m| m[1].as_u64().unwrap()).sum();
    assert_eq!(live["memory_allocated"].as_u64(), Some(sum));
    // Every block the process holds is listed: they add up to its exact
    // current use (read at the same instant, under the profiler's lock).
    assert_eq!(live["total_memory"].as_u64(), Some(sum), "the live map's bytes and `current`");
    let blocks = live["blocks"].as_array().unwrap();
    let known: Vec<&serde_json::Value> = blocks
        .iter()
        .filter(|b| b["stack"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().ends_with("::known_blocks")))
        .collect();
    let addresses: BTreeSet<u64> = known.iter().map(|b| b["address"].as_u64().unwrap()).collect();
    assert_eq!(addresses, kept, "the live blocks allocated in known_blocks are exactly the kept ones");
    assert!(known.iter().all(|b| b["size"] == 4096 && b["objects"] == 1), "{known:?}");
    assert!(known.iter().all(|b| b["tid"].as_u64().unwrap() > 0 && b["age_ms"].is_u64()), "{known:?}");
    // A smaller limit lists the largest blocks, and says it left some out.
    let small: serde_json::Value = serde_json::from_str(&get(&at("/debug/heap/live?limit=3")).body).unwrap();
    assert_eq!((small["length_memory_array"].as_u64(), small["truncated"].as_bool()), (Some(3), Some(true)));
    assert_eq!(get(&at("/debug/heap/live?limit=x")).status, 400);

    // go tool pprof on both profiles: the default sample type of `heap` is
    // inuse_space, of `allocs` alloc_space, as Go's.
    let tmp = dir.path();
    let heap = pprof_top(&at("/debug/pprof/heap"), "known_blocks", None, tmp);
    assert_eq!(cum_of(&heap, "known_blocks"), "2048000B");
    let objects = pprof_top(&at("/debug/pprof/heap"), "known_blocks", Some("inuse_objects"), tmp);
    assert_eq!(cum_of(&objects, "known_blocks"), "500");
    let allocs = pprof_top(&at("/debug/pprof/allocs"), "known_blocks", None, tmp);
    assert_eq!(cum_of(&allocs, "known_blocks"), "4096000B");
    let objects = pprof_top(&at("/debug/pprof/allocs"), "known_blocks", Some("alloc_objects"), tmp);
    assert_eq!(cum_of(&objects, "known_blocks"), "1000");

    // A delta: only what was allocated during the N seconds. The request's
    // first snapshot is taken when it arrives, which the server's request
    // counter shows (each /stats read counts itself too).
    let before = requests(&at);
    let url = at("/debug/pprof/allocs?seconds=3");
    let delta_tmp = tmp.to_owned();
    let delta = std::thread::spawn(move || {
        Command::new("go")
            .args(["tool", "pprof", "-top", "-cum", "-nodecount=1000", "-unit=B", "-symbolize=none", "-timeout=120"])
            .arg(&url)
            .env("PPROF_TMPDIR", &delta_tmp)
            .output()
            .expect("failed to run go tool pprof")
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut polls = 1;
    while requests(&at) < before + polls + 1 {
        polls += 1;
        assert!(Instant::now() < deadline, "the delta request never reached the server");
        std::thread::sleep(Duration::from_millis(20));
    }
    command("delta");
    let delta = delta.join().unwrap();
    assert_eq!(cum_of(&delta, "delta_blocks"), "1638400B");
    // known_blocks allocated before the delta began: not in it (in the
    // whole allocs profile, unfocused, it is: the positive control).
    let stdout = String::from_utf8_lossy(&delta.stdout);
    assert!(!stdout.contains("::known_blocks"), "{stdout}");
    let whole = Command::new("go")
        .args(["tool", "pprof", "-top", "-cum", "-nodecount=1000", "-unit=B", "-symbolize=none", "-timeout=120"])
        .arg(at("/debug/pprof/allocs"))
        .env("PPROF_TMPDIR", tmp)
        .output()
        .unwrap();
    assert_eq!(cum_of(&whole, "known_blocks"), "4096000B");
    assert_eq!(cum_of(&whole, "delta_blocks"), "1638400B");

    // The profiler's switches: POST only; stopping answers its summary, and
    // the profiles stay readable.
    assert_eq!(get(&at("/profiler/stop")).status, 405);
    let stopped = post(&at("/profiler/stop"));
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    assert!(stopped.body.contains("self-check"), "{}", stopped.body);
    assert_eq!(post(&at("/profiler/stop")).status, 409);
    let heap = endpoint_support::agent().get(&at("/debug/pprof/heap")).call().unwrap();
    assert_eq!(heap.status(), 200);
    assert_eq!(heap.headers()["content-disposition"], "attachment; filename=\"heap\"");
    assert_eq!(get(&at("/debug/pprof/allocs?seconds=1")).status, 409, "nothing to record while stopped");
    let started = post(&at("/profiler/start"));
    assert_eq!(started.status, 200, "{}", started.body);
    assert_eq!(post(&at("/profiler/start")).status, 409);
    drop(stdin);
}
