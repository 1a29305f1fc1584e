//! Mounting the overlay in place, serving it, and unmounting it cleanly.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use parking_lot::Mutex;

use crate::cli::{Cli, Cmd};
use crate::commands::{self, Ctx, LiveCtx};
use crate::config::{socket_path, StoreConfig};
use crate::daemon::control::{self, FrameWriter};
use crate::daemon::recorder_thread::{RecorderHandle, Recording};
use crate::fs::filter::Filter;
use crate::fs::overlay::Overlay;
use crate::ids::SessionId;
use crate::procs::Holder;
use crate::relpath::RelPath;
use crate::replicate::replicator::Replicator;
use crate::store::catalog::{now_ns, SessionInfo};
use crate::store::Store;
use crate::sys;

/// Filesystem type name: mounts show as `fuse.clawfs` (OpenClaw picks SQLite's journal mode
/// from it).
pub const FS_TYPE: &str = "clawfs";

/// The filesystem type a mounted tree shows: `fuse.clawfs`.
pub fn tree_type() -> String {
    format!("fuse.{FS_TYPE}")
}

/// Whether `fstype` is one of ours: a mounted tree, or a view of its past
/// (`fuse.clawfs-browse`).
fn is_clawfs(fstype: &str) -> bool {
    fstype.starts_with(&tree_type())
}

/// One line of `/proc/self/mountinfo`.
pub struct MountEntry {
    /// The kernel's id of the mount (ids of unmounted mounts are reused).
    pub id: u64,
    /// Where it is mounted.
    pub point: PathBuf,
    /// Its filesystem type (`fuse.clawfs` for ours).
    pub fstype: String,
    /// Its source (`clawfs:<store>` for ours).
    pub source: String,
}

/// Every mount, from `/proc/self/mountinfo`, bottom first.
pub fn mounts() -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let mp = fields.get(4)?;
            let dash = fields.iter().position(|f| *f == "-")?;
            Some(MountEntry {
                id: fields.first()?.parse().ok()?,
                point: PathBuf::from(unescape(mp)),
                fstype: fields.get(dash + 1)?.to_string(),
                source: unescape(fields.get(dash + 2)?),
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The topmost mount at `dir`, if any.
pub(crate) fn mount_at(dir: &Path) -> Option<MountEntry> {
    mounts().into_iter().rfind(|m| m.point == dir)
}

/// The filesystem type mounted at `dir`, if any (the topmost mount).
pub fn mounted_type(dir: &Path) -> Option<String> {
    mount_at(dir).map(|m| m.fstype)
}

/// The store of the clawfs mount at `dir`, if `dir` is one: the daemon names it as the mount's
/// source (`clawfs:<store>`), so a tree mounted with `--store` is found without it.
pub fn store_of_mount(dir: &Path) -> Option<PathBuf> {
    let top = mount_at(dir)?;
    let store = top.source.strip_prefix(&format!("{FS_TYPE}:"))?;
    (top.fstype == tree_type() && !store.is_empty()).then(|| PathBuf::from(store))
}

/// The innermost live clawfs mount holding `path`, if any: a command run inside a mounted tree
/// acts on that tree, as git acts on the repository around the current directory.
pub fn mount_holding(path: &Path) -> Option<PathBuf> {
    let ty = tree_type();
    mounts()
        .into_iter()
        .filter(|m| m.fstype == ty && path.starts_with(&m.point))
        .map(|m| m.point)
        .max_by_key(|mp| mp.components().count())
}

/// Whether an error from `dir` says its FUSE daemon is gone. While the kernel tears down the
/// io_uring rings of a daemon that died, calls fail with ECANCELED, then ECONNABORTED, before
/// ENOTCONN.
fn is_dead_mount(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED)
    )
}

/// A daemon that died leaves its mount behind: clears it so the mount can go on.
fn clear_dead_mount(dir: &Path) -> Result<()> {
    tracing::warn!(dir = %dir.display(), "removing a stale clawfs mount left by a daemon that died");
    lazy_unmount(dir)
}

/// Checks `dir` and `store` before mounting; returns the directory's absolute path.
pub fn preflight(dir: &Path, store: &Path) -> Result<PathBuf> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if is_dead_mount(&e) => {
            clear_dead_mount(dir)?;
            std::fs::metadata(dir)?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "{} does not exist: create it first (or give the right directory)",
                dir.display()
            )
        }
        Err(e) => bail!("cannot use {}: {e}", dir.display()),
    };
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let dir = dir.canonicalize()?;
    if mounted_type(&dir).is_some_and(|t| is_clawfs(&t)) {
        // The kernel may answer a stat of a dead mount's root from attributes it cached (for a
        // second): statfs always asks the daemon. The mount may also vanish in between (the
        // dead daemon's auto-unmount watcher): then statfs sees the plain directory.
        match sys::statfs_path(&dir) {
            Err(e) if is_dead_mount(&e) => clear_dead_mount(&dir)?,
            Ok(st) if st.f_type != sys::FUSE_SUPER_MAGIC => {}
            _ => bail!(
                "{} is already mounted by clawfs (see `clawfs status {}`)",
                dir.display(),
                dir.display()
            ),
        }
    }
    let store_abs = crate::config::absolute(store, &std::env::current_dir()?);
    let store_canon = store_abs.canonicalize().unwrap_or(store_abs.clone());
    if store_canon.starts_with(&dir) {
        bail!(
            "the store {} is inside {}: it must live outside the directory it versions (use --store)",
            store_canon.display(),
            dir.display()
        );
    }
    if dir.starts_with(&store_canon) {
        bail!(
            "{} is inside the store {}: pick a directory outside it",
            dir.display(),
            store_canon.display()
        );
    }
    Ok(dir)
}

/// Unmounts `dir` now (not lazily): `umount2` as root, else `fusermount3 -u`. Fails with
/// `EBUSY` while a process has files open or its working directory inside.
pub fn unmount_now(dir: &Path) -> std::io::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a NUL-terminated path; umount2 has no memory effects.
        if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        return Ok(());
    }
    let out = Command::new("fusermount3").arg("-u").arg(dir).output()?;
    if out.status.success() {
        Ok(())
    } else if String::from_utf8_lossy(&out.stderr).contains("busy") {
        Err(std::io::Error::from_raw_os_error(libc::EBUSY))
    } else {
        Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Why `dir` cannot be unmounted now, naming the processes that hold something through the
/// mount (less `client`, the one asking).
fn busy(dir: &Path, client: Option<u32>) -> String {
    let mut holders = std::fs::metadata(dir)
        .map(|m| crate::procs::holding(dir, std::os::unix::fs::MetadataExt::dev(&m)))
        .unwrap_or_default();
    holders.retain(|h| Some(h.pid) != client);
    if holders.is_empty() {
        return format!(
            "{} is busy: a process has files open, mapped, or its working directory in it",
            dir.display()
        );
    }
    let mut msg = format!(
        "{} is busy: these processes hold it (stop them, or `cd` out of it, then unmount again)",
        dir.display()
    );
    for h in holders {
        msg += &format!("\n  {}", h.describe());
    }
    msg
}

/// `fusermount3 -u -z`: detaches a mount even while busy or stale.
pub fn lazy_unmount(dir: &Path) -> Result<()> {
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(dir)
        .output()
        .context("running fusermount3 (install the fuse3 package)")?;
    // The dead daemon's auto-unmount watcher may have got there first: what counts is that the
    // directory is usable now.
    if !out.status.success() && std::fs::metadata(dir).is_err() {
        bail!(
            "could not unmount {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Starts the daemon in the background and waits until it serves the mount (or failed).
pub fn spawn_background(
    dir: &Path,
    store: &Path,
    passphrase: Option<&str>,
    io_uring: bool,
) -> Result<()> {
    let exe = std::env::current_exe()?;
    crate::store::private_dir(store)?;
    let log = store.join("daemon.log");
    let mut child = Command::new(exe);
    child
        .arg("--store")
        .arg(store)
        .arg("mount")
        .arg("--foreground")
        .arg(dir)
        .args((!io_uring).then_some("-oio_uring=off"))
        .env("CLAWFS_DAEMON_LOG", &log)
        .envs(passphrase.map(|p| ("CLAWFS_PASSPHRASE", p)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sys::new_session(&mut child);
    let mut child = child.spawn().context("starting the clawfs daemon")?;
    let stdout = child.stdout.take().expect("piped");
    let mut stdout = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        stdout.read_line(&mut line)?;
        match line.trim_end().strip_prefix("warning: ") {
            Some(w) => eprintln!("warning: {w}"),
            None => break,
        }
    }
    if line.trim() == "ready" {
        return Ok(());
    }
    let status = child.wait()?;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let msg = line.trim().trim_start_matches("error: ").to_string();
    let msg = if msg.is_empty() {
        err.trim().to_string()
    } else {
        msg
    };
    bail!(
        "{}",
        if msg.is_empty() {
            format!("the daemon exited with {status} (log: {})", log.display())
        } else {
            msg
        }
    )
}

/// The processes that will reach under `dir` past the mount about to cover it, less the
/// `clawfs mount` that started this daemon (it exits once the mount is up).
fn underneath_at_mount(live: &LiveCtx, dir: &Path) -> Vec<Holder> {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() } as u32;
    let exe = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let ours = exe(std::process::id());
    let mut under = live.overlay.underneath(dir);
    under.retain(|u| !(u.pid == parent && exe(parent) == ours));
    under
}

/// Tells systemd that the mount is up (`Type=notify` in `clawfs@.service`), so that a unit
/// ordered after it (the agent's) starts only once its writes will be versioned.
fn notify_ready() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = UnixDatagram::unbound()
        .and_then(|sock| addr.and_then(|a| sock.send_to_addr(b"READY=1", &a)));
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not tell systemd the mount is up (NOTIFY_SOCKET)");
    }
}

/// What `mount` says about processes that reach the real files past the mount.
fn underneath_warning(under: &[Holder], dir: &Path) -> Vec<String> {
    if under.is_empty() {
        return Vec::new();
    }
    let mut lines = vec![format!(
        "these processes took hold under {} before the mount and reach the real files past it: \
         what they change that way is not versioned until they let go (a shell: `cd {}` again; \
         a program: restart it)",
        dir.display(),
        dir.display(),
    )];
    lines.extend(under.iter().map(|u| format!("  {}", u.describe())));
    lines
}

/// A daemon killed a moment ago (its stale mount was just cleared) still holds the store's
/// lock while the kernel tears it down: a new daemon waits for it this long. A live holder
/// (another mount, a view, a running command) then gets the clear "in use" error.
const STORE_LOCK_WAIT: Duration = Duration::from_secs(3);

/// Serves the mount in this process until it is unmounted. Prints `ready` on stdout once
/// mounted (the background parent waits for it), then sends its logs to `$CLAWFS_DAEMON_LOG`.
pub fn serve(dir: &Path, store_dir: &Path, io_uring: bool) -> Result<()> {
    sys::limit_malloc_arenas();
    crate::fs::guard::quiet_panic_hook();
    // Before the store opens: a copy of the catalogue's live records replaces it once prunes
    // have emptied enough of it. A failure leaves it as it was, and the mount goes on.
    match crate::store::compact::if_due(store_dir, STORE_LOCK_WAIT) {
        Ok(Some(c)) => {
            tracing::info!(?c, "compacted the catalogue");
            // Reading the old catalogue took memory in proportion to what it had held.
            sys::release_free_memory();
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(error = %e, "the catalogue was not compacted (it is as it was; tried again at the next mount)")
        }
    }
    let store =
        Store::open_when_free(store_dir, true, STORE_LOCK_WAIT).map_err(|e| anyhow!("{e}"))?;
    let mut cfg = StoreConfig::load(store_dir)?;
    cfg.dir = Some(dir.to_path_buf());
    cfg.save(store_dir)?;
    let filter = Filter::new(&cfg.ignore).context("bad ignore pattern in config.json")?;
    // The directory is opened before the mount covers it: all I/O goes through this fd.
    let root = Arc::new(sys::open_dir(dir).with_context(|| format!("opening {}", dir.display()))?);
    let session = SessionId::random();
    let started_ns = now_ns();
    let mut info = SessionInfo {
        id: session,
        kind: "mount".into(),
        started_ns,
        ended_ns: None,
        pid: std::process::id(),
    };
    store.put_session(&info)?;
    let mut recording = Recording::new(store.recorder(session)?, root.clone(), filter.clone());
    // Whatever changed while nothing was mounted becomes a version first.
    recording.import_real(&RelPath::root());
    recording.commit(true);
    let linked = recording.names_of_linked();
    let rec = Arc::new(RecorderHandle::spawn(recording));
    let notifier = Arc::new(OnceLock::new());
    let overlay = Overlay::new(
        root.clone(),
        rec.clone(),
        filter,
        notifier.clone(),
        io_uring,
        linked,
    )?;
    // Replication must never stand in the way of the mount: if it cannot start, say so loudly
    // and serve anyway (the cursor in the store resumes it next time).
    let pass = crate::replicate::passphrase::given(
        std::env::var_os("CLAWFS_PASSPHRASE_FILE")
            .map(PathBuf::from)
            .as_deref(),
    )
    .unwrap_or_else(|e| {
        tracing::error!("replication passphrase: {e}");
        None
    });
    std::env::remove_var("CLAWFS_PASSPHRASE");
    let replicator = match Replicator::start(store.clone(), pass) {
        Ok(r) => Some(Arc::new(r)),
        Err(e) => {
            tracing::error!("replication is off for this mount: {e}");
            None
        }
    };
    let live = LiveCtx {
        rec: rec.clone(),
        overlay: overlay.live(),
        root: root.clone(),
        session,
        started_ns,
        replicator,
    };
    // Asked before the mount covers the directory, when nothing can be reached through it yet
    // (asking after would stat files through a mount not served yet).
    let mut warning = underneath_warning(&underneath_at_mount(&live, dir), dir);
    if let Err(e) = store.room_for_epoch() {
        warning.push(format!(
            "{e}: changes are not versioned until there is room (`clawfs status` counts what \
             waits; it is captured then, without a remount)"
        ));
    }
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("{FS_TYPE}:{}", store_dir.display())),
        fuser::MountOption::Subtype(FS_TYPE.into()),
    ];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Root's mount admits every user, and the daemon, as root, may do anything: the kernel
        // checks each caller's permissions against the attributes. A user's own mount admits
        // only processes of that user (same uid and gid), as which the daemon runs: its own
        // calls on the real files meet exactly the checks the callers would, so the kernel
        // need not check first, and need not fetch a directory's attributes again before each
        // create or unlink in it (two of a small file's ~eleven round trips).
        config
            .mount_options
            .push(fuser::MountOption::DefaultPermissions);
        // Through fusermount3 (as `auto_unmount` makes fuser do) the type shows as
        // `fuse.clawfs`; fuser's direct mount would say `fuse`. And if the daemon dies, the
        // watcher fusermount3 leaves behind detaches the mount, so the directory never stays
        // "Transport endpoint is not connected".
        config.acl = fuser::SessionACL::All;
        config.mount_options.push(fuser::MountOption::AutoUnmount);
    }
    config.n_threads = Some(4);
    config.clone_fd = true;
    config.ring_threads = crate::fs::requests::RING_THREADS;
    // One descriptor per file open through the mount (and per removed inode the kernel still
    // caches): allow as many as the system does.
    // SAFETY: getrlimit/setrlimit write and read the struct we pass.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    // Modes in requests are already masked by the caller's umask: ours must not mask them again.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0) };
    let guarded = {
        let rec = rec.clone();
        crate::fs::guard::Guarded::new(overlay)
            .on_panic(move |op, what| rec.request_failed(op, what))
    };
    let mut session_fuse =
        fuser::Session::new(guarded, dir, &config).map_err(|e| mount_error(e, dir))?;
    let _ = notifier.set(session_fuse.notifier());
    let _ = live.overlay.requests().rings.set(session_fuse.rings());
    let unmounter = Arc::new(Mutex::new(session_fuse.unmount_callable()));
    let unmounter_dir = dir.to_path_buf();

    let sock = socket_path(store_dir);
    let listener = control::bind(&sock)?;
    let live = Arc::new(live);
    // Control requests still being answered: the process waits for them before exiting, so an
    // `unmount` gets its answer.
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let (store, dir, live, unmounter) = (
            store.clone(),
            dir.to_path_buf(),
            live.clone(),
            unmounter.clone(),
        );
        std::thread::Builder::new()
            .name("clawfs-control".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let (store, dir, live, unmounter) =
                        (store.clone(), dir.clone(), live.clone(), unmounter.clone());
                    std::thread::spawn(move || handle(conn, store, dir, live, unmounter));
                }
            })?;
    }
    {
        let dir = unmounter_dir.clone();
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGHUP,
        ])?;
        std::thread::Builder::new()
            .name("clawfs-signals".into())
            .spawn(move || {
                if signals.forever().next().is_some() {
                    tracing::info!("signal received: unmounting");
                    if let Err(e) = unmount_now(&dir) {
                        tracing::error!(error = %e, "unmount failed; detaching lazily");
                        let _ = lazy_unmount(&dir);
                    }
                }
            })?;
    }
    // Running before the mount is reported ready.
    if let Err(e) = crate::daemon::sentinel::spawn(dir) {
        warning.push(format!(
            "no sentinel ({}): if the daemon dies, its mount stays until `clawfs mount`",
            commands::error_text(&e)
        ));
    }
    for line in &warning {
        println!("warning: {line}");
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    notify_ready();
    redirect_output();
    tracing::info!(dir = %dir.display(), session = %session, "mounted");
    for line in &warning {
        tracing::warn!("{line}");
    }
    let result = session_fuse.run();
    tracing::info!("unmounted; flushing");
    let deadline = Instant::now() + Duration::from_secs(5);
    while active.load(std::sync::atomic::Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = std::fs::remove_file(&sock);
    rec.shutdown();
    info.ended_ns = Some(now_ns());
    store.put_session(&info)?;
    store.flush()?;
    result.context("serving the mount")?;
    Ok(())
}

/// Why mounting `dir` failed, in words a user can act on.
fn mount_error(e: std::io::Error, dir: &Path) -> anyhow::Error {
    // Not root, fuser opens /dev/fuse itself and turns to fusermount3 only when mount(2) is
    // refused: a /dev/fuse closed to other users (mode 0600, as in some containers; Debian
    // makes it 0666) stops the mount here, with a bare "Permission denied".
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let closed = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .is_err()
    };
    if e.kind() == std::io::ErrorKind::PermissionDenied && !root && closed() {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata("/dev/fuse")
            .map(|m| format!("{:o}", m.permissions().mode() & 0o777))
            .unwrap_or_else(|_| "unknown".into());
        return anyhow::anyhow!(
            "mounting {}: this user cannot open /dev/fuse (mode {mode} here): mount as root, or \
             open it to users as Debian does (chmod 0666 /dev/fuse)",
            dir.display()
        );
    }
    anyhow::Error::new(e).context(format!("mounting {}", dir.display()))
}

/// The background daemon's log file (`$CLAWFS_DAEMON_LOG`), opened to append; `None` for a
/// daemon in the foreground, whose standard error is its log.
pub(crate) fn daemon_log() -> Option<std::io::Result<std::fs::File>> {
    let log = std::env::var_os("CLAWFS_DAEMON_LOG")?;
    Some(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(log),
    )
}

fn redirect_output() {
    if let Some(Ok(f)) = daemon_log() {
        // SAFETY: dup2 onto the standard descriptors of this process; `f` stays open meanwhile.
        unsafe {
            libc::dup2(f.as_raw_fd(), 1);
            libc::dup2(f.as_raw_fd(), 2);
        }
    }
}

fn handle(
    conn: std::os::unix::net::UnixStream,
    store: Arc<Store>,
    dir: PathBuf,
    live: Arc<LiveCtx>,
    unmounter: Arc<Mutex<fuser::SessionUnmounter>>,
) {
    let req = match control::read_request(&conn) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "bad control request");
            return;
        }
    };
    let mut w = FrameWriter::new(&conn);
    let code = match Cli::try_parse_from(&req.argv) {
        Err(e) => {
            let _ = w.frame(b'e', e.to_string().trim_end().as_bytes());
            2
        }
        Ok(cli) => match &cli.cmd {
            Cmd::Browse { mountpoint, at, .. } => {
                let r = at
                    .as_deref()
                    .map(|w| crate::when::resolve(&store, w))
                    .transpose()
                    .map_err(anyhow::Error::from)
                    .and_then(|seq| {
                        crate::daemon::browse::spawn_in_process(store.clone(), mountpoint, seq)
                    });
                match r {
                    Ok(()) => 0,
                    Err(e) => {
                        let _ = w.frame(b'e', commands::error_text(&e).as_bytes());
                        1
                    }
                }
            }
            Cmd::Unmount { .. } => {
                live.rec.commit(true, true);
                let _ = &unmounter;
                match unmount_now(&dir) {
                    Ok(()) => 0,
                    Err(e) => {
                        let msg = if e.raw_os_error() == Some(libc::EBUSY) {
                            busy(&dir, control::peer_pid(&conn))
                        } else {
                            format!("unmounting {}: {e}", dir.display())
                        };
                        let _ = w.frame(b'e', msg.as_bytes());
                        1
                    }
                }
            }
            cmd => {
                let mut ctx = Ctx {
                    store,
                    dir,
                    cwd: req.cwd,
                    json: cli.json,
                    out: &mut w,
                    live: Some(&live),
                    passphrase: req.passphrase.clone(),
                    client: control::peer_pid(&conn),
                };
                match commands::run(cmd, &mut ctx) {
                    Ok(()) => 0,
                    Err(e) => {
                        let _ = w.frame(b'e', commands::error_text(&e).as_bytes());
                        1
                    }
                }
            }
        },
    };
    let _ = w.flush();
    let _ = w.frame(b'x', &(code as i32).to_be_bytes());
}

/// Unmounts `dir` through its daemon (which flushes first), waiting until it is gone.
pub fn unmount(dir: &Path, store: &Path) -> Result<()> {
    // A working directory inside the mount would keep it busy: this process needs none there.
    let _ = std::env::set_current_dir("/");
    let sock = socket_path(store);
    let Some(fstype) = mounted_type(dir) else {
        bail!("{} is not mounted", dir.display());
    };
    if fstype == format!("fuse.{}", crate::daemon::browse::browse_type()) {
        // A time-travel view: nothing to flush.
        unmount_now(dir).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                anyhow!("{}", busy(dir, None))
            } else {
                anyhow!("unmounting {}: {e}", dir.display())
            }
        })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while mounted_type(dir).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        return Ok(());
    }
    if !is_clawfs(&fstype) {
        bail!("{} is not a clawfs mount (it is {fstype})", dir.display());
    }
    let req = control::Request {
        passphrase: None,
        argv: vec!["clawfs".into(), "unmount".into()],
        cwd: PathBuf::from("/"),
    };
    let answer = control::forward(&sock, &req);
    if answer.is_err() && mounted_type(dir).is_none_or(|t| !is_clawfs(&t)) {
        // The daemon unmounted and exited before its answer got out: that is success.
    } else {
        match answer? {
            control::Forwarded::Ran(0) => {}
            // The daemon said why already.
            control::Forwarded::Ran(code) => std::process::exit(code),
            control::Forwarded::NoDaemon => {
                // No daemon answers: the mount is stale (its daemon died). Detach it.
                lazy_unmount(dir)?;
                return Ok(());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while mounted_type(dir).is_some_and(|t| is_clawfs(&t)) || sock.exists() {
        if Instant::now() > deadline {
            bail!("{} did not unmount within 60 s", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The daemon holds the store's lock until it exits; wait for it too. (Only the lock: a
    // store that cannot open for another reason, such as a full disk, is no reason to wait.)
    let _ = Store::open_when_free(store, false, Duration::from_secs(30));
    Ok(())
}
