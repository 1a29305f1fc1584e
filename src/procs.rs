//! Which processes hold files open for writing: a rollback must not pull files from under a
//! live writer (OpenClaw's gateway kills itself if its SQLite files are swapped).

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

/// Every process but this one with a file under `dir` open for writing, from `/proc`.
pub fn writers_under(dir: &Path) -> Vec<Writer> {
    let me = std::process::id();
    let prefix = dir.to_string_lossy().trim_end_matches('/').to_string() + "/";
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            let Some(rel) = t.strip_prefix(&prefix) else {
                continue;
            };
            let rel = rel.trim_end_matches(" (deleted)");
            let info = std::fs::read_to_string(p.path().join("fdinfo").join(fd.file_name()))
                .unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| i64::from_str_radix(f.trim(), 8).ok())
                .unwrap_or(0);
            if flags & libc::O_ACCMODE as i64 != libc::O_RDONLY as i64 {
                out.push(Writer {
                    pid,
                    command: command_of(pid).unwrap_or_default(),
                    path: rel.to_string(),
                });
            }
        }
    }
    out.sort_by(|a, b| (a.pid, &a.path).cmp(&(b.pid, &b.path)));
    out.dedup();
    out
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
