//! Which processes hold what under a directory, from `/proc`: files open for writing (a
//! rollback must not pull files from under a live writer: OpenClaw's gateway kills itself if
//! its SQLite files are swapped), what reaches the real files past the mount (not versioned),
//! and what keeps the mount busy.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// A process holding a file open for writing (or mapped shared).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writer {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub command: String,
    /// The file, relative to the tree.
    pub path: String,
}

/// The command name of process `pid`, or `None` if it is gone. One read into a buffer that
/// holds any (the kernel keeps 15 bytes): the overlay asks on every open for writing.
pub fn command_of(pid: u32) -> Option<String> {
    use std::io::Read;
    let mut buf = [0u8; 64];
    let n = std::fs::File::open(format!("/proc/{pid}/comm"))
        .and_then(|mut f| f.read(&mut buf))
        .ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// Which of a process's `/proc` links leads under a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// Its working directory.
    Cwd,
    /// Its root directory (`chroot`).
    Root,
    /// An open descriptor, with its `open(2)` flags.
    Fd(i64),
}

/// Calls `each(pid, which, rel, link)` for everything a process but this one holds under `dir`
/// (or `dir` itself, with `rel` empty), from `/proc`: `link` is the `/proc` link, which `stat`
/// follows to the file the process really holds.
fn holds_under(dir: &Path, mut each: impl FnMut(u32, Link, &str, &Path)) {
    let me = std::process::id();
    let dir = dir.to_string_lossy();
    let dir = dir.trim_end_matches('/');
    let prefix = format!("{dir}/");
    let rel_of = |target: &Path| -> Option<String> {
        let t = target.to_string_lossy();
        let t = t.trim_end_matches(" (deleted)");
        if t == dir {
            return Some(String::new());
        }
        t.strip_prefix(&prefix).map(str::to_string)
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        for (name, which) in [("cwd", Link::Cwd), ("root", Link::Root)] {
            let link = p.path().join(name);
            if let Some(rel) = std::fs::read_link(&link).ok().and_then(|t| rel_of(&t)) {
                each(pid, which, &rel, &link);
            }
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(rel) = std::fs::read_link(fd.path()).ok().and_then(|t| rel_of(&t)) else {
                continue;
            };
            let info = std::fs::read_to_string(p.path().join("fdinfo").join(fd.file_name()))
                .unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| i64::from_str_radix(f.trim(), 8).ok())
                .unwrap_or(0);
            each(pid, Link::Fd(flags), &rel, &fd.path());
        }
    }
}

fn writable(flags: i64) -> bool {
    flags & libc::O_ACCMODE as i64 != libc::O_RDONLY as i64
}

/// Every process but this one with a file under `dir` open for writing, from `/proc`.
pub fn writers_under(dir: &Path) -> Vec<Writer> {
    let mut out = Vec::new();
    holds_under(dir, |pid, which, rel, _| {
        if matches!(which, Link::Fd(flags) if writable(flags)) && !rel.is_empty() {
            out.push(Writer {
                pid,
                command: command_of(pid).unwrap_or_default(),
                path: rel.to_string(),
            });
        }
    });
    out.sort_by(|a, b| (a.pid, &a.path).cmp(&(b.pid, &b.path)));
    out.dedup();
    out
}

/// A process holding something under a directory: a working directory, a root, or an open
/// descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub command: String,
    /// What it holds there.
    pub holds: Holds,
    /// The path it holds, relative to the tree (empty: the tree's root).
    pub path: String,
}

/// What a process holds under a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Holds {
    /// Its working directory.
    Cwd,
    /// Its root directory.
    Root,
    /// An open directory.
    Dir,
    /// A file open for writing.
    Writing,
    /// A file open for reading only.
    Open,
}

impl Holder {
    /// "pid 1234 bash, working directory workspace", as `mount`, `status` and `unmount` say it.
    pub fn describe(&self) -> String {
        let what = match self.holds {
            Holds::Cwd => "working directory",
            Holds::Root => "root directory",
            Holds::Dir => "open directory",
            Holds::Writing => "writing",
            Holds::Open => "open",
        };
        let path = if self.path.is_empty() {
            "(the root)"
        } else {
            &self.path
        };
        let (command, path) = (
            crate::commands::shown(&self.command),
            crate::commands::shown(path),
        );
        format!("pid {} {command}, {what} {path}", self.pid)
    }
}

/// Every process but this one that holds something under `dir` on device `dev`, and what,
/// when `keep(holds, rel)` says it counts.
fn holders_on(dir: &Path, dev: u64, keep: impl Fn(Holds, &str) -> bool) -> Vec<Holder> {
    let mut out = Vec::new();
    holds_under(dir, |pid, which, rel, link| {
        let Ok(st) = std::fs::metadata(link) else {
            return;
        };
        if std::os::unix::fs::MetadataExt::dev(&st) != dev {
            return;
        }
        let holds = match which {
            Link::Cwd => Holds::Cwd,
            Link::Root => Holds::Root,
            Link::Fd(_) if st.is_dir() => Holds::Dir,
            Link::Fd(flags) if writable(flags) => Holds::Writing,
            Link::Fd(_) => Holds::Open,
        };
        if keep(holds, rel) {
            out.push(Holder {
                pid,
                command: command_of(pid).unwrap_or_default(),
                holds,
                path: rel.to_string(),
            });
        }
    });
    out.sort_by(|a, b| (a.pid, &a.holds, &a.path).cmp(&(b.pid, &b.holds, &b.path)));
    out.dedup();
    out
}

/// The processes that reach the real files under a mounted `dir` past the mount, through a
/// working directory, a root, an open directory or a versioned file open for writing that they
/// took before the mount covered them: what they change that way is not versioned. `real_dev`
/// is the device of the real files (what is reached through the mount has the mount's);
/// `versioned` says which paths are.
pub fn underneath(dir: &Path, real_dev: u64, versioned: impl Fn(&str) -> bool) -> Vec<Holder> {
    holders_on(dir, real_dev, |holds, rel| match holds {
        Holds::Open => false,
        Holds::Writing => versioned(rel),
        Holds::Cwd | Holds::Root | Holds::Dir => true,
    })
}

/// The processes that hold anything through the mount at `dir` (device `mount_dev`): what keeps
/// it busy.
pub fn holding(dir: &Path, mount_dev: u64) -> Vec<Holder> {
    holders_on(dir, mount_dev, |_, _| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_child_writing_under_a_dir() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        let f = dir.join("held");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec 3>>'{}'; sleep 30", f.display()))
            .spawn()
            .unwrap();
        let mut found = Vec::new();
        for _ in 0..100 {
            found = writers_under(&dir);
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The shell may fork `sleep` rather than exec it: then both hold the file, rightly.
        for w in &found {
            let _ = std::process::Command::new("kill")
                .arg(w.pid.to_string())
                .status();
        }
        child.kill().ok();
        child.wait().unwrap();
        assert!(!found.is_empty());
        assert!(found.iter().all(|w| w.path == "held"), "{found:?}");
        assert!(found.iter().any(|w| w.pid == child.id()), "{found:?}");
    }
}
