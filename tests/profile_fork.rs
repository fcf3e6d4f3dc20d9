//! `fork()` while the profiler runs (issue 21, point 1): other threads of
//! the parent sample every allocation, take snapshots, name stacks and open
//! scoped profiles (which divert every instance's frees) while the main
//! thread forks again and again. Each child samples an allocation, takes a
//! snapshot, names its stacks, opens a scoped profile and stops the
//! profiler, then `_exit`s. Without fork handlers a child could inherit a
//! lock some parent thread held at the fork, with nobody left to release
//! it, and spin forever; here a child that does not exit within the
//! timeout is killed and the test fails, naming the phase and the fork.

#![cfg(target_os = "linux")]

use std::alloc::System;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use heapprobe::profile::{Options, View};
use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

/// How long a child may take before it counts as hung: far beyond the
/// milliseconds one needs, even with the machine saturated.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Child exit codes.
const OK: i32 = 0;
const NO_SNAPSHOT: i32 = 3;
const NOT_RECORDED: i32 = 4;
const PANICKED: i32 = 5;

#[inline(never)]
fn churn(i: usize) -> usize {
    let v: Vec<u8> = black_box(Vec::with_capacity(64 + i % 512));
    let b = black_box(Box::new(i));
    v.capacity() + *b
}

#[inline(never)]
fn in_child() -> Vec<u64> {
    black_box(vec![7u64; 100])
}

/// What a child does: every path that takes one of the profiler's locks
/// (naming stacks only when `names`: it loads the symbol tables of code the
/// parent never named, which takes a while). Returns its exit code; never
/// prints (a parent thread may have held the standard streams' locks).
fn child(names: bool) -> i32 {
    let run = std::panic::catch_unwind(|| {
        let block = in_child();
        let Some(profile) = GLOBAL.profile_snapshot() else { return NO_SNAPSHOT };
        // The child's one thread registers under its own id: its sample is
        // there (at rate 1 every allocation is sampled).
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() } as u64;
        if profile.rate() == 1 && !profile.threads().iter().any(|(tid, _)| *tid == pid) {
            return NOT_RECORDED;
        }
        let (_, scoped) = GLOBAL.profile(|| black_box(vec![1u8; 32]));
        drop(block);
        if names {
            black_box(scoped.folded(View::AllocatedBytes));
            black_box(profile.folded(View::InUseBytes));
        }
        OK
    });
    run.unwrap_or(PANICKED)
}

/// Waits for `pid` to exit, for at most [`TIMEOUT`]; kills it if it does not.
fn wait_or_kill(pid: libc::pid_t) -> Result<i32, String> {
    let deadline = Instant::now() + TIMEOUT;
    let mut pause = Duration::from_micros(50);
    loop {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            if libc::WIFEXITED(status) {
                return Ok(libc::WEXITSTATUS(status));
            }
            return Err(format!("child {pid} ended with wait status {status:#x}"));
        }
        assert_eq!(rc, 0, "waitpid: {}", std::io::Error::last_os_error());
        if Instant::now() >= deadline {
            // SAFETY: `pid` is our child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // SAFETY: as above; reaps the killed child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            return Err(format!("child {pid} hung: no exit within {TIMEOUT:?}, killed"));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Forks `forks` times while two threads allocate, one snapshots and names
/// stacks, and one opens scoped profiles; every child must exit cleanly.
fn forks_while_busy(rate: u64, forks: usize, phase: &str) {
    let mut options = Options::default();
    options.rate = rate;
    // Small tables: each child copies them once.
    options.max_stacks = 1024;
    options.max_sites = 2048;
    options.max_live = 4096;
    GLOBAL.start_profiler(options).unwrap();
    // Names resolved once here, so that children find the symbol tables
    // already loaded.
    black_box(GLOBAL.profile_snapshot().unwrap().folded(View::AllocatedBytes));

    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(5));
    let mut threads = Vec::new();
    for t in 0..2 {
        let (stop, ready) = (stop.clone(), ready.clone());
        threads.push(std::thread::spawn(move || {
            ready.wait();
            let mut i = t;
            while !stop.load(Relaxed) {
                black_box(churn(i));
                i += 1;
            }
        }));
    }
    {
        let (stop, ready) = (stop.clone(), ready.clone());
        threads.push(std::thread::spawn(move || {
            ready.wait();
            while !stop.load(Relaxed) {
                let profile = GLOBAL.profile_snapshot().unwrap();
                black_box(profile.folded(View::AllocatedBytes));
            }
        }));
    }
    {
        let (stop, ready) = (stop.clone(), ready.clone());
        threads.push(std::thread::spawn(move || {
            ready.wait();
            while !stop.load(Relaxed) {
                let (_, profile) = GLOBAL.profile(|| black_box(vec![0u8; 100]));
                black_box(profile.samples());
            }
        }));
    }
    ready.wait();

    let mut failures = Vec::new();
    let began = Instant::now();
    let mut slowest = (Duration::ZERO, 0);
    for n in 0..forks {
        let forked = Instant::now();
        // SAFETY: the child only runs `child` and `_exit`s: it never returns
        // into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = child(n % 100 == 99);
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) };
        }
        let result = wait_or_kill(pid);
        if forked.elapsed() > slowest.0 {
            slowest = (forked.elapsed(), n);
        }
        match result {
            Ok(OK) => {}
            Ok(code) => failures.push(format!("{phase}: fork {n}: child exited with {code}")),
            Err(e) => failures.push(format!("{phase}: fork {n}: {e}")),
        }
        if !failures.is_empty() {
            break;
        }
    }
    eprintln!("{phase}: {forks} forks in {:?}, slowest {:?}", began.elapsed(), slowest);
    stop.store(true, Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    GLOBAL.stop_profiler().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn forked_children_never_inherit_a_held_lock() {
    forks_while_busy(1, 1000, "rate 1");
    forks_while_busy(512 * 1024, 1000, "rate 512 KiB");
}
