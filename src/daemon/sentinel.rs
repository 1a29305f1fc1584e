//! Detaches the mount of a daemon that died, so the directory falls back to its real files.
//!
//! A daemon that dies (`kill -9`, the OOM killer) leaves its mount answering every call with
//! "Transport endpoint is not connected" until it is unmounted: the agent's writes would fail.
//! fusermount3's `auto_unmount` watcher detaches it, but only if the mount already says so when
//! the watcher looks, right as the daemon's descriptors close. Through `/dev/fuse` it does; with
//! requests coming through io_uring, the kernel lets go of the connection only once it has torn
//! down the dead daemon's rings, a few milliseconds later, and the watcher, having seen another
//! error, leaves the mount dead. So the daemon starts this sentinel, a small process of its own
//! that outlives it: when the daemon is gone it waits (up to 10 s) for its mount to say it
//! is disconnected, then detaches it. A mount that is no longer there, or another one mounted
//! since, is left alone.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::daemon::mount::{daemon_log, lazy_unmount, mount_at, tree_type};
use crate::sys;

/// How long a dead daemon's mount may take to say it is disconnected.
const SETTLE: Duration = Duration::from_secs(10);

/// Starts the sentinel for the mount at `dir`, which this process serves. Its messages go where
/// the daemon's will: to `$CLAWFS_DAEMON_LOG` for a background daemon, else to the same
/// standard error (journald under systemd).
pub fn spawn(dir: &Path) -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("detach-when-gone")
        .arg(std::process::id().to_string())
        .arg(dir)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(log) = daemon_log() {
        cmd.stderr(log?);
    }
    // Not in the daemon's session: a signal to the daemon's process group does not reach it.
    sys::new_session(&mut cmd);
    cmd.spawn().context("starting the mount's sentinel")?;
    Ok(())
}

/// The mount id of the clawfs tree mounted at `dir` now, if any (the topmost mount there).
fn mount_id(dir: &Path) -> Option<u64> {
    mount_at(dir)
        .filter(|m| m.fstype == tree_type())
        .map(|m| m.id)
}

/// The sentinel itself (`clawfs detach-when-gone PID DIR`, started by the daemon `pid`): waits
/// for the daemon to end, then detaches the mount at `dir` if the daemon left it dead.
pub fn run(daemon: u32, dir: &Path) -> Result<()> {
    let Some(id) = mount_id(dir) else {
        return Ok(());
    };
    sys::wait_for_exit(daemon).context("watching the daemon")?;
    let deadline = Instant::now() + SETTLE;
    loop {
        if mount_id(dir) != Some(id) {
            // Unmounted (cleanly, or by the watcher), or replaced by a new mount.
            return Ok(());
        }
        match sys::statfs_path(dir) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                tracing::error!(
                    dir = %dir.display(),
                    "the clawfs daemon died: detaching its mount; the directory shows its real \
                     files again, and changes are not versioned until `clawfs mount`"
                );
                return lazy_unmount(dir);
            }
            _ if Instant::now() >= deadline => {
                tracing::error!(dir = %dir.display(), "the clawfs daemon is gone but its mount still answers; left as it is");
                return Ok(());
            }
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}
