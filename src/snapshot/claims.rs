//! One check per snapshot name: a name shared by two checks (two tests, or
//! two places in one) would have each of them write the file with
//! `HEAPPROBE_UPDATE=1`, the last writer winning, and then every check
//! that allocates less than the last one passing as "allocates less".
//!
//! Each check claims its snapshot file for the run of the tests it belongs
//! to, in `target/heapprobe-reports/snapshot-claims/RUN/`, where RUN names the
//! process that started the test binaries (`cargo test`, nextest, a shell)
//! by its pid and start time: every test binary that one `cargo test`
//! runs, in turn or at once, sees the others' claims, and a later run
//! starts afresh. A claim names the check (its source location and the
//! test, that is its thread's name) and the binary (its path and
//! modification time). The same check claiming again (a loop, a rerun of
//! the same binary) passes; another check is a collision; a claim by an
//! earlier build of the same binary (rebuilt since, so its locations may
//! have moved) is replaced. A claim that cannot be written or read is
//! skipped: it guards the snapshots, it is not one.

use std::io::ErrorKind;
use std::panic::Location;
use std::path::{Path, PathBuf};

/// Who checks a snapshot.
#[derive(Debug, PartialEq, Eq)]
struct Claim {
    exe: String,
    built: String,
    location: String,
    test: String,
}

impl Claim {
    fn ours(location: &Location<'_>) -> Claim {
        let exe = std::env::current_exe().ok();
        let built = exe
            .as_ref()
            .and_then(|e| std::fs::metadata(e).ok())
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(String::new(), |d| d.as_nanos().to_string());
        Claim {
            exe: exe.map_or(String::new(), |e| e.display().to_string()),
            built,
            location: location.to_string(),
            test: std::thread::current().name().unwrap_or("").to_owned(),
        }
    }

    fn render(&self) -> String {
        format!("{}\n{}\n{}\n{}\n", self.exe, self.built, self.location, self.test)
    }

    fn parse(text: &str) -> Option<Claim> {
        let mut lines = text.lines().map(str::to_owned);
        let claim = Claim { exe: lines.next()?, built: lines.next()?, location: lines.next()?, test: lines.next()? };
        Some(claim)
    }

    fn same_check(&self, other: &Claim) -> bool {
        self.location == other.location && self.test == other.test
    }
}

/// Claims `path` (a snapshot file) for the check at `location`; `Err`
/// describes the other check that claimed it in this run.
pub(super) fn claim(path: &Path, location: &Location<'_>) -> Result<(), String> {
    let Some(dir) = run_dir() else { return Ok(()) };
    let name = path.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
    let file = dir.join(format!("{name}-{:016x}", fnv(path.to_string_lossy().as_bytes())));
    let ours = Claim::ours(location);
    let tmp = temporary(&dir);
    if std::fs::write(&tmp, ours.render()).is_err() {
        return Ok(());
    }
    // A hard link is made whole or not at all: of two checks claiming at
    // once, one wins and the other reads the winner's claim.
    let linked = std::fs::hard_link(&tmp, &file);
    let result = match linked {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            match std::fs::read_to_string(&file).ok().as_deref().and_then(Claim::parse) {
                Some(theirs) if theirs.same_check(&ours) => Ok(()),
                Some(theirs) if theirs.exe == ours.exe && theirs.built != ours.built => {
                    // An earlier build of this binary: replace its claim.
                    let _ = std::fs::rename(&tmp, &file);
                    Ok(())
                }
                Some(theirs) => Err(collision(&theirs, &ours)),
                None => Ok(()),
            }
        }
        _ => Ok(()),
    };
    let _ = std::fs::remove_file(&tmp);
    result
}

fn collision(theirs: &Claim, ours: &Claim) -> String {
    let test =
        |c: &Claim| if c.test.is_empty() { String::from("an unnamed thread") } else { format!("test `{}`", c.test) };
    let binary = if theirs.exe == ours.exe { String::from("this test binary") } else { theirs.exe.clone() };
    format!(
        "the same snapshot is checked at {} ({}, {binary}) and here at {} ({}): one name per check, or each \
         update overwrites the other and the smaller one always passes; give one of them another name",
        theirs.location,
        test(theirs),
        ours.location,
        test(ours)
    )
}

/// This run's directory of claims (created), or `None`.
fn run_dir() -> Option<PathBuf> {
    let root = crate::profile::target_dir().join(crate::profile::REPORTS_DIR).join("snapshot-claims");
    let (pid, started) = runner();
    let dir = root.join(format!("{pid}-{started}"));
    match std::fs::create_dir(&dir) {
        Ok(()) => sweep(&root, &dir),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(_) => {
            std::fs::create_dir_all(&dir).ok()?;
        }
    }
    Some(dir)
}

/// The process that started this test binary: its pid and start time (in
/// clock ticks since boot; 0 where unknown), which together are never reused.
fn runner() -> (u32, u64) {
    #[cfg(unix)]
    {
        // SAFETY: getppid has no preconditions.
        let ppid = unsafe { libc::getppid() } as u32;
        let started = std::fs::read_to_string(format!("/proc/{ppid}/stat"))
            .ok()
            .and_then(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse().ok()))
            .unwrap_or(0);
        (ppid, started)
    }
    #[cfg(not(unix))]
    (0, 0)
}

/// Removes the claims of earlier runs whose starting process has exited.
fn sweep(root: &Path, ours: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path == ours {
            continue;
        }
        let pid = entry.file_name().to_string_lossy().split('-').next().and_then(|p| p.parse::<i32>().ok());
        #[cfg(unix)]
        // SAFETY: signal 0 only checks whether the process exists.
        let gone = pid.is_some_and(|pid| unsafe { libc::kill(pid, 0) } != 0);
        #[cfg(not(unix))]
        let gone = pid.is_some();
        if gone {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

fn temporary(dir: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static N: AtomicU64 = AtomicU64::new(0);
    dir.join(format!(".claim-{}-{}", std::process::id(), N.fetch_add(1, Relaxed)))
}

/// FNV-1a: a stable name for a snapshot's path.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}
