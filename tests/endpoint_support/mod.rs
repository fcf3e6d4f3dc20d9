//! Helpers of the endpoint tests: HTTP clients (ureq, and raw sockets for
//! what no well-behaved client sends), child processes that die with the
//! test, and builds of the fixture and the examples.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support;

/// A real HTTP client that reports every status (4xx and 5xx included).
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// A reply: status, `Content-Type`, body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub allow: Option<String>,
    pub body: String,
}

fn reply(mut response: ureq::http::Response<ureq::Body>) -> Reply {
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let (content_type, allow) = (header("content-type").unwrap_or_default(), header("allow"));
    let body = response.body_mut().read_to_string().expect("read the body");
    Reply { status: response.status().as_u16(), content_type, allow, body }
}

pub fn get(url: &str) -> Reply {
    reply(agent().get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}")))
}

pub fn get_with(url: &str, header: &str, value: &str) -> Reply {
    reply(agent().get(url).header(header, value).call().unwrap_or_else(|e| panic!("GET {url}: {e}")))
}

pub fn post(url: &str) -> Reply {
    reply(agent().post(url).send_empty().unwrap_or_else(|e| panic!("POST {url}: {e}")))
}

pub fn post_with(url: &str, header: &str, value: &str) -> Reply {
    reply(agent().post(url).header(header, value).send_empty().unwrap_or_else(|e| panic!("POST {url}: {e}")))
}

/// Sends `request` as is on a new connection, then reads until the server
/// closes it or `timeout` passes. Returns what was read and whether the
/// server closed the connection (EOF or reset).
pub fn raw(address: SocketAddr, request: &[u8], timeout: Duration) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(timeout)).unwrap();
    // A server may close before reading everything; that is an answer too.
    let _ = stream.write_all(request);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + timeout;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return (out, false)
            }
            Err(e) => panic!("read from {address}: {e}"),
        }
        if Instant::now() > deadline {
            return (out, false);
        }
    }
}

/// The status of the first response in `bytes`, if it starts with one.
pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.parse().ok()
}

/// A child process that is killed (SIGKILL) and reaped when dropped, and
/// that the kernel kills if the test's thread dies first (SIGKILL of the
/// test included): `PR_SET_PDEATHSIG`.
pub struct Child {
    pub child: std::process::Child,
    pub name: String,
}

impl Child {
    pub fn spawn(command: &mut Command) -> Self {
        let name = format!("{command:?}");
        // SAFETY: the closure runs in the child between fork and exec and only
        // calls prctl and getppid, which are async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl.
                if libc::getppid() == 1 {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("failed to run {name}: {e}"));
        Self { child, name }
    }

    /// Lines of the child's stdout, read on a thread of their own so that a
    /// silent child cannot hang the test.
    pub fn lines(&mut self) -> Lines {
        let stdout = self.child.stdout.take().expect("stdout piped");
        let (send, receive) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { receive, from: self.name.clone() }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Lines {
    receive: mpsc::Receiver<String>,
    from: String,
}

impl Lines {
    pub fn next(&self, timeout: Duration) -> String {
        self.receive
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no line from {} within {timeout:?}: {e}", self.from))
    }
}

/// Builds with cargo in `target/endpoint-fixture` (the `cargo test` running
/// us holds the lock of the usual target directory) and returns the
/// executable of the target named `name`, from cargo's JSON messages.
pub fn build(args: &[&str], name: &str) -> PathBuf {
    let root = support::root();
    let output = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--message-format=json", "--target-dir"])
        .arg(root.join("target/endpoint-fixture"))
        .args(args)
        .current_dir(&root)
        .stderr(Stdio::inherit())
        .output()
        .expect("failed to run cargo build");
    assert!(output.status.success(), "cargo build {args:?} exited with {}", output.status);
    let messages = String::from_utf8(output.stdout).expect("cargo's JSON is UTF-8");
    for message in messages.lines() {
        let message: serde_json::Value = serde_json::from_str(message).expect("cargo's JSON");
        if message["reason"] == "compiler-artifact" && message["target"]["name"] == name {
            if let Some(exe) = message["executable"].as_str() {
                return PathBuf::from(exe);
            }
        }
    }
    panic!("cargo build {args:?} reported no executable named {name}");
}

/// The fixture service (tests/fixture/src/bin/heapprobe-endpoint.rs).
pub fn fixture() -> PathBuf {
    build(
        &["--package", "heapprobe-fixture", "--features", "server", "--bin", "heapprobe-endpoint"],
        "heapprobe-endpoint",
    )
}

/// Checks that the programs the test needs are installed. In CI a missing
/// one fails the test; elsewhere the test prints one loud line and is
/// skipped (returns false).
pub fn tools_available(test: &str, tools: &[(&str, &str)]) -> bool {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, _)| !Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success()))
        .map(|(tool, package)| format!("{tool} (apt-get install -y {package})"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!("SKIPPED {test}: needs {}. `bash .ci/run` installs everything.", missing.join(", "));
    if support::in_ci() {
        panic!("CI=true, so a missing tool is a failure: {message}");
    }
    eprintln!("\n========== {message} ==========\n");
    false
}

/// Runs `promtool check metrics` on `exposition`; panics with its report if
/// it finds anything.
pub fn promtool_check(exposition: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to run promtool");
    promtool.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool check metrics exited with {}:\n{}{}\non:\n{exposition}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
