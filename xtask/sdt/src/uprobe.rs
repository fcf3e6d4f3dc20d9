//! Registering uprobes through tracefs, and removing them again.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{Binary, Error, Site};

/// Every uprobe group heapprobe creates is named `heapprobe_<pid>_<tag>`, so
/// a later run can tell its own stale groups from anybody else's.
pub const GROUP_PREFIX: &str = "heapprobe_";

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs mount point. If none is mounted and we may, mounts it at
/// `/sys/kernel/tracing`.
pub fn tracefs() -> Result<PathBuf, Error> {
    find_tracefs().map_or_else(mount_tracefs, Ok)
}

/// Where tracefs is mounted (with uprobe events), if anywhere.
pub fn find_tracefs() -> Option<PathBuf> {
    CANDIDATES.iter().map(PathBuf::from).find(|d| d.join("uprobe_events").exists())
}

/// Mounts tracefs at `/sys/kernel/tracing` (needs root).
pub fn mount_tracefs() -> Result<PathBuf, Error> {
    let dir = Path::new(CANDIDATES[0]);
    let why = match std::process::Command::new("mount").args(["-t", "tracefs", "nodev"]).arg(dir).output() {
        Ok(out) if out.status.success() && dir.join("uprobe_events").exists() => return Ok(dir.to_path_buf()),
        Ok(out) if out.status.success() => String::from("mounted, but it has no uprobe_events"),
        Ok(out) => String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("mount failed").trim().to_owned(),
        Err(e) => format!("cannot run mount: {e}"),
    };
    Err(Error::Tracefs {
        what: String::from(
            "tracefs is not mounted and could not be mounted: run `mount -t tracefs nodev /sys/kernel/tracing` as root \
             (and check that the kernel has CONFIG_UPROBE_EVENTS)",
        ),
        source: std::io::Error::other(why),
    })
}

/// One uprobe to register.
#[derive(Clone, Debug)]
pub struct UprobeSpec {
    /// Event name inside the group.
    pub event: String,
    /// The binary.
    pub path: PathBuf,
    /// File offset of the probed instruction.
    pub offset: u64,
    /// File offset of the semaphore (reference counter), if any.
    pub ref_ctr_offset: Option<u64>,
    /// `name=fetcharg` pairs.
    pub fetchargs: Vec<(String, String)>,
}

impl UprobeSpec {
    /// The line to write to `uprobe_events`.
    pub fn definition(&self, group: &str) -> String {
        let mut line = format!("p:{group}/{} {}:{:#x}", self.event, self.path.display(), self.offset);
        if let Some(r) = self.ref_ctr_offset {
            line.push_str(&format!("({r:#x})"));
        }
        for (name, arg) in &self.fetchargs {
            line.push_str(&format!(" {name}={arg}"));
        }
        line
    }
}

/// A uprobe group this process registered. Dropping it removes every event
/// it added; kernel state is borrowed, not owned.
#[derive(Debug)]
pub struct UprobeGroup {
    name: String,
    tracefs: PathBuf,
    events: Vec<String>,
}

static NEXT_GROUP: AtomicU32 = AtomicU32::new(0);

impl UprobeGroup {
    /// A new, empty group named `heapprobe_<pid>_<tag><n>`, unique to this run.
    pub fn new(tag: &str) -> Result<Self, Error> {
        let tracefs = tracefs()?;
        let n = NEXT_GROUP.fetch_add(1, Ordering::Relaxed);
        let name = format!("{GROUP_PREFIX}{}_{tag}{n}", std::process::id());
        Ok(Self { name, tracefs, events: Vec::new() })
    }

    /// The group's name, as perf spells events: `GROUP:EVENT`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The events registered so far.
    pub fn events(&self) -> &[String] {
        &self.events
    }

    /// Registers one uprobe.
    pub fn add(&mut self, spec: &UprobeSpec) -> Result<(), Error> {
        write_events(&self.tracefs, &spec.definition(&self.name))?;
        self.events.push(spec.event.clone());
        Ok(())
    }

    /// Registers every valid site of `provider` in `binary` whose probe name
    /// passes `want`, as events `NAME__I`. `arg_names` gives the fetch-arg
    /// names for a probe name (`arg0`, `arg1`, ... where it returns fewer).
    /// Returns the number of sites registered.
    pub fn add_probes(
        &mut self,
        binary: &Binary,
        provider: &str,
        want: impl Fn(&str) -> bool,
        arg_names: impl Fn(&str) -> &'static [&'static str],
    ) -> Result<usize, Error> {
        let path = binary.path.canonicalize().map_err(|source| Error::Read { path: binary.path.clone(), source })?;
        let mut added = 0;
        for (i, probe) in binary.valid_probes(Some(provider)).enumerate() {
            if !want(&probe.name) {
                continue;
            }
            let Site::Valid { offset, semaphore_offset } = probe.site else {
                continue;
            };
            let names = arg_names(&probe.name);
            let fetchargs = probe
                .args()?
                .iter()
                .enumerate()
                .map(|(n, arg)| {
                    let fetch = arg.fetcharg().ok_or_else(|| Error::Argument {
                        probe: format!("{}:{}", probe.provider, probe.name),
                        arg: format!("{arg:?}"),
                    })?;
                    Ok((names.get(n).map_or_else(|| format!("arg{n}"), |name| (*name).to_owned()), fetch))
                })
                .collect::<Result<Vec<_>, Error>>()?;
            let spec = UprobeSpec {
                event: format!("{}__{i}", probe.name),
                path: path.clone(),
                offset,
                ref_ctr_offset: semaphore_offset,
                fetchargs,
            };
            self.add(&spec)?;
            added += 1;
        }
        Ok(added)
    }

    /// Removes every event of the group now, reporting the first failure.
    pub fn remove(mut self) -> Result<(), Error> {
        self.remove_all()
    }

    fn remove_all(&mut self) -> Result<(), Error> {
        let mut first = Ok(());
        for event in std::mem::take(&mut self.events) {
            let result = write_events(&self.tracefs, &format!("-:{}/{event}", self.name));
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

impl Drop for UprobeGroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove_all() {
            eprintln!("heapprobe: could not remove uprobe group {}: {e}", self.name);
        }
    }
}

fn write_events(tracefs: &Path, line: &str) -> Result<(), Error> {
    let path = tracefs.join("uprobe_events");
    let what = || format!("cannot write {line:?} to {}", path.display());
    let mut file =
        OpenOptions::new().append(true).open(&path).map_err(|source| Error::Tracefs { what: what(), source })?;
    file.write_all(line.as_bytes()).map_err(|source| Error::Tracefs { what: what(), source })
}

/// A heapprobe group whose creating process is gone (a run that was killed
/// before it could clean up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleGroup {
    /// The group's name (`heapprobe_<pid>_<tag><n>`).
    pub name: String,
    /// The pid that created it, no longer alive.
    pub pid: u32,
    /// Its events, as `GROUP/EVENT`.
    pub events: Vec<String>,
    /// Processes whose command line names the group, such as a `perf record
    /// -e GROUP:*` orphaned by the killed run: they hold its events open, and
    /// the kernel refuses to remove events in use.
    pub holders: Vec<Holder>,
}

/// A process that (by its command line) holds a group's events open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Its pid.
    pub pid: u32,
    /// Its command line, arguments separated by spaces.
    pub cmdline: String,
}

/// What [`sweep_stale_groups`] did.
#[derive(Debug, Default)]
pub struct Sweep {
    /// The events removed, as `GROUP/EVENT`.
    pub removed: Vec<String>,
    /// Stale groups left in place because the kernel said their events are in
    /// use (`EBUSY`), with the processes that hold them when they can be found.
    /// They do not stand in the way of a new run, whose group has its own name.
    pub busy: Vec<StaleGroup>,
}

/// The heapprobe groups in `uprobe_events` whose creating process is gone,
/// with the processes that hold them open. Groups of live processes and every
/// probe heapprobe did not create are not listed. Reads only.
pub fn stale_groups() -> Result<Vec<StaleGroup>, Error> {
    let tracefs = tracefs()?;
    let path = tracefs.join("uprobe_events");
    let text = std::fs::read_to_string(&path)
        .map_err(|source| Error::Tracefs { what: format!("cannot read {}", path.display()), source })?;
    let mut groups: Vec<StaleGroup> = Vec::new();
    for line in text.lines() {
        // p:GROUP/EVENT PATH:OFFSET ...
        let Some(id) = line.split_whitespace().next().and_then(|d| d.split_once(':')).map(|(_, id)| id) else {
            continue;
        };
        let Some((group, _)) = id.split_once('/') else {
            continue;
        };
        let Some(pid) = group_pid(group) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match groups.iter_mut().find(|g| g.name == group) {
            Some(g) => g.events.push(id.to_owned()),
            None => groups.push(StaleGroup {
                name: group.to_owned(),
                pid,
                events: vec![id.to_owned()],
                holders: Vec::new(),
            }),
        }
    }
    if !groups.is_empty() {
        let processes = command_lines();
        for group in &mut groups {
            // `GROUP:` as perf spells its events (`-e GROUP:*`), or `GROUP/`.
            let (colon, slash) = (format!("{}:", group.name), format!("{}/", group.name));
            group.holders = processes
                .iter()
                .filter(|h| h.cmdline.contains(&colon) || h.cmdline.contains(&slash))
                .cloned()
                .collect();
        }
    }
    Ok(groups)
}

/// The pid in a heapprobe group's name, if it is one: `heapprobe_<pid>_…`
/// (this crate's groups), or `heapprobe_sh_<pid>` (scripts/perf-flamegraph.sh's).
pub fn group_pid(group: &str) -> Option<u32> {
    let rest = group.strip_prefix(GROUP_PREFIX)?;
    let rest = rest.strip_prefix("sh_").unwrap_or(rest);
    rest.split('_').next()?.parse().ok()
}

/// Every process's command line (those we may read).
fn command_lines() -> Vec<Holder> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let words: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|w| !w.is_empty())
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            (!words.is_empty()).then(|| Holder { pid, cmdline: words.join(" ") })
        })
        .collect()
}

/// Removes heapprobe groups whose creating process is gone (a run that was
/// killed before it could clean up). Groups of live processes and every probe
/// heapprobe did not create are left alone. A stale group whose events the
/// kernel says are in use (`EBUSY`: a recorder orphaned by the killed run
/// still has them open) is left in place and reported in [`Sweep::busy`],
/// with its holders; it does not stop the caller from registering its own.
pub fn sweep_stale_groups() -> Result<Sweep, Error> {
    let tracefs = tracefs()?;
    let mut sweep = Sweep::default();
    for group in stale_groups()? {
        let mut busy = Vec::new();
        for id in &group.events {
            if remove_event(&tracefs, id)? {
                sweep.removed.push(id.clone());
            } else {
                busy.push(id.clone());
            }
        }
        // A holder killed a moment ago (a recorder that died with its run)
        // may still be releasing the events: its files are closed, the
        // kernel's release is not done. When no live process names the
        // group, try again for up to two seconds (seen after SIGKILL: 1 of
        // 3 events still busy).
        for _ in 0..20 {
            if busy.is_empty() || !group.holders.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            let mut still = Vec::new();
            for id in busy {
                if remove_event(&tracefs, &id)? {
                    sweep.removed.push(id);
                } else {
                    still.push(id);
                }
            }
            busy = still;
        }
        if !busy.is_empty() {
            sweep.busy.push(group);
        }
    }
    Ok(sweep)
}

/// Removes one event (`GROUP/EVENT`): false when the kernel says it is in
/// use (`EBUSY`).
fn remove_event(tracefs: &Path, id: &str) -> Result<bool, Error> {
    match write_events(tracefs, &format!("-:{id}")) {
        Ok(()) => Ok(true),
        Err(Error::Tracefs { source, .. }) if source.raw_os_error() == Some(EBUSY) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `EBUSY`: 16 on every Linux architecture.
const EBUSY: i32 = 16;

#[cfg(test)]
mod tests {
    use super::group_pid;

    #[test]
    fn group_names_give_their_creator_s_pid() {
        assert_eq!(group_pid("heapprobe_4242_trace0"), Some(4242));
        assert_eq!(group_pid("heapprobe_sh_77"), Some(77));
        assert_eq!(group_pid("heapprobe_x_1"), None);
        assert_eq!(group_pid("notheapprobe_1_trace0"), None);
    }
}
