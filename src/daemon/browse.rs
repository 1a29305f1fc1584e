//! Serving time-travel views: inside the running mount daemon (which owns the store), or in a
//! daemon of their own when nothing is mounted.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::daemon::mount::{mounted_type, FS_TYPE};
use crate::fs::browse::Browse;
use crate::fs::guard::Guarded;
use crate::ids::Seq;
use crate::store::Store;
use crate::sys;

/// Filesystem type of views: `fuse.clawfs-browse`.
pub fn browse_type() -> String {
    format!("{FS_TYPE}-browse")
}

/// Checks a mount point for a view; returns its absolute path.
pub fn preflight(mountpoint: &Path) -> Result<std::path::PathBuf> {
    let m = std::fs::metadata(mountpoint).with_context(|| {
        format!(
            "{} does not exist: create an empty directory to mount the view on",
            mountpoint.display()
        )
    })?;
    if !m.is_dir() {
        bail!("{} is not a directory", mountpoint.display());
    }
    let mp = mountpoint.canonicalize()?;
    if let Some(t) = mounted_type(&mp) {
        bail!("{} is already a mount point ({t})", mp.display());
    }
    Ok(mp)
}

fn config() -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("clawfs-browse".into()),
        fuser::MountOption::Subtype(browse_type()),
        fuser::MountOption::RO,
        fuser::MountOption::DefaultPermissions,
    ];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        config.acl = fuser::SessionACL::All;
        config.mount_options.push(fuser::MountOption::AutoUnmount);
    }
    config.n_threads = Some(2);
    config
}

/// Mounts a view and serves it on a thread of this process (the mount daemon's).
pub fn spawn_in_process(store: Arc<Store>, mountpoint: &Path, at: Option<Seq>) -> Result<()> {
    let session = fuser::Session::new(Guarded::new(Browse::new(store, at)), mountpoint, &config())
        .with_context(|| format!("mounting the view at {}", mountpoint.display()))?;
    std::thread::Builder::new()
        .name("clawfs-browse".into())
        .spawn(move || {
            if let Err(e) = session.run() {
                tracing::error!(error = %e, "browse view ended with an error");
            }
        })?;
    Ok(())
}

/// Serves a view in this process until it is unmounted (the standalone daemon).
pub fn serve(store_dir: &Path, mountpoint: &Path, at: Option<&str>) -> Result<()> {
    sys::limit_malloc_arenas();
    crate::fs::guard::quiet_panic_hook();
    let store = Store::open(store_dir)?;
    let at = at.map(|w| crate::when::resolve(&store, w)).transpose()?;
    let session = fuser::Session::new(Guarded::new(Browse::new(store, at)), mountpoint, &config())
        .with_context(|| format!("mounting the view at {}", mountpoint.display()))?;
    println!("ready");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    session.run().context("serving the view")?;
    Ok(())
}

/// Starts the standalone view daemon in the background; returns once it serves.
pub fn spawn_background(store: &Path, mountpoint: &Path, at: Option<&str>) -> Result<()> {
    let mut c = Command::new(std::env::current_exe()?);
    c.arg("--store")
        .arg(store)
        .arg("browse")
        .arg("--foreground")
        .arg(mountpoint);
    if let Some(a) = at {
        c.arg("--at").arg(a);
    }
    crate::store::private_dir(store)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(store.join("browse.log"))?;
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    sys::new_session(&mut c);
    let mut child = c.spawn().context("starting the browse daemon")?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("piped")),
        &mut line,
    )?;
    if line.trim() == "ready" {
        return Ok(());
    }
    let _ = child.wait();
    let err = std::fs::read_to_string(store.join("browse.log")).unwrap_or_default();
    let last = err
        .lines()
        .last()
        .unwrap_or("the browse daemon exited")
        .to_string();
    bail!("{}", last.trim_start_matches("clawfs: "))
}
