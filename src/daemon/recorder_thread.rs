//! The recorder thread: the one writer of the store while a tree is mounted.
//!
//! FUSE handlers send [`Msg`]s over a bounded crossbeam channel, in the order the writers' calls
//! completed; the thread applies them to a [`Recorder`] and closes epochs (invariant 3): when
//! asked (fsync, close of a written file, rename, link, unlink), at most one second after the
//! first change of an epoch, and when the pending writes exceed [`MAX_PENDING_BYTES`]. Written
//! bytes waiting in the channel are bounded by [`QUEUED_BYTES_MAX`]: past it, writers wait, so
//! memory stays bounded however fast they write.
//!
//! Changes come in bursts (a SQLite transaction is a few writes, a created file four messages),
//! and waking the thread for each message cost more than handling it: on two cores, a third of
//! the daemon's time under a WAL workload went to the recorder being switched in and out. So
//! once it has handled something and finds the channel empty, the thread naps for [`NAP`] and
//! then takes everything that came meanwhile. Senders ring a doorbell to end the nap at once
//! for what someone waits on (fsync, a command's job, shutdown) and when much is queued.
//!
//! Nothing that goes wrong here may touch the real files (first law). An operation that does not
//! fit the recorded tree, or a commit that fails, is logged loudly and the affected paths are
//! re-imported from the real files in the next epoch: the change degrades to "not versioned at
//! that instant", never to a lost byte. While the store's disk has no room (see
//! [`crate::store::room`]), changes are dropped from memory and their paths remembered; the
//! first commit that fits again, or a retry every [`RETRY_WHEN_FULL`], captures those paths from
//! the real files, so versioning resumes by itself once room comes back.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use parking_lot::{Condvar, Mutex};

use crate::fs::filter::Filter;
use crate::fs::guard::LogBudget;
use crate::relpath::RelPath;
use crate::store::catalog::{Meta, NodeKind};
use crate::store::content::ReadAt;
use crate::store::recorder::{MetaUpdate, Recorder, RenameMode};
use crate::store::StoreError;
use crate::sys;

/// An epoch closes at most this long after its first change.
pub const MAX_EPOCH_AGE: Duration = Duration::from_secs(1);
/// An epoch closes once this many written bytes wait in memory.
pub const MAX_PENDING_BYTES: u64 = 8 << 20;
/// A commit that hashed this much hands the memory it freed back to the system.
const TRIM_AFTER_BYTES: u64 = 4 << 20;
/// Messages that may wait in the channel.
pub const CHANNEL_DEPTH: usize = 1024;
/// Written bytes that may wait in the channel (each write carries at most 1 MiB); past this,
/// writers wait. With [`MAX_PENDING_BYTES`], the most written data the daemon holds: at 16 MiB
/// each, a 512 MiB write raised its peak by about 35 MiB, at 8 by about 18, in the same time.
pub const QUEUED_BYTES_MAX: u64 = 8 << 20;
/// How long the thread waits for more changes after handling some, unless the doorbell rings.
pub const NAP: Duration = Duration::from_millis(2);
/// While changes wait for room on the store's disk, how often the recorder looks again when
/// nothing else makes it commit.
pub const RETRY_WHEN_FULL: Duration = Duration::from_secs(5);
/// Queued messages, or written bytes, that ring the doorbell.
const RING_AT_MESSAGES: usize = CHANNEL_DEPTH / 4;
const RING_AT_BYTES: u64 = QUEUED_BYTES_MAX / 4;

/// A change made through the overlay.
#[derive(Debug)]
pub enum FsEvent {
    /// New file, directory or symlink.
    Create {
        /// Where.
        path: RelPath,
        /// What.
        kind: NodeKind,
        /// Its attributes.
        meta: Meta,
        /// Symlink target.
        target: String,
    },
    /// Bytes written.
    Write {
        /// Which file.
        path: RelPath,
        /// Where in it.
        offset: u64,
        /// A copy of what was written.
        data: Vec<u8>,
    },
    /// Size set.
    Truncate {
        /// Which file.
        path: RelPath,
        /// New size.
        size: u64,
    },
    /// Attributes changed.
    Meta {
        /// Which path.
        path: RelPath,
        /// What changed.
        update: MetaUpdate,
    },
    /// An extended attribute set or removed.
    Xattr {
        /// Which path.
        path: RelPath,
        /// Attribute name.
        name: Vec<u8>,
        /// New value, `None` when removed.
        value: Option<Vec<u8>>,
    },
    /// A non-directory removed.
    Unlink(RelPath),
    /// A directory removed.
    Rmdir(RelPath),
    /// A rename.
    Rename {
        /// From.
        from: RelPath,
        /// To.
        to: RelPath,
        /// Flags.
        mode: RenameMode,
    },
    /// A hard link.
    Link {
        /// Existing path.
        from: RelPath,
        /// New path.
        to: RelPath,
    },
    /// Capture a path (and everything below it) from the real tree.
    Import {
        /// Where it is in the tree when the change is made.
        path: RelPath,
        /// The real file, directory or symlink as it was when the change was made. The recorder
        /// reads it through this, not through `path`: a rename or removal made before the
        /// recorder gets to the event must not change what is captured at `path` (a rename of
        /// a parent directory took the file out of the history). `None`: read `path`.
        held: Option<Held>,
    },
    /// A versioned path left versioning (renamed to an ignored path).
    Remove(RelPath),
}

impl FsEvent {
    fn path(&self) -> &RelPath {
        match self {
            FsEvent::Create { path, .. }
            | FsEvent::Write { path, .. }
            | FsEvent::Truncate { path, .. }
            | FsEvent::Meta { path, .. }
            | FsEvent::Xattr { path, .. }
            | FsEvent::Unlink(path)
            | FsEvent::Rmdir(path)
            | FsEvent::Import { path, .. }
            | FsEvent::Remove(path) => path,
            FsEvent::Rename { to, .. } | FsEvent::Link { to, .. } => to,
        }
    }
}

/// A job run on the recorder thread with the recorder in hand (rollbacks, marks, status).
pub type Job = Box<dyn FnOnce(&mut Recording) + Send>;

/// What the recorder thread is asked to do.
pub enum Msg {
    /// Apply a change to the pending epoch.
    Event(FsEvent),
    /// Close the epoch now; `done` is told when it is committed (and durable, if asked).
    Commit {
        /// Flush packs and catalogue before answering.
        durable: bool,
        /// Told when done.
        done: Option<Sender<()>>,
    },
    /// Run a job.
    Call(Job),
    /// Commit, flush and stop.
    Shutdown,
}

/// The recorder and what it needs to heal itself from the real tree.
pub struct Recording {
    /// The store writer.
    pub rec: Recorder,
    /// The real tree's directory fd.
    pub root: Arc<OwnedFd>,
    /// What is versioned.
    pub filter: Filter,
    first_pending: Option<Instant>,
    unflushed: bool,
    flushed_at: Instant,
    /// The last error, for `status`.
    pub last_error: Option<String>,
    /// Epochs committed by this session.
    pub epochs: u64,
    /// Paths whose changes were dropped unversioned (no room on the store's disk, or a commit
    /// that failed twice): captured from the real files by the first commit that succeeds.
    uncaptured: BTreeSet<RelPath>,
    /// When the first of them was dropped (ns since the Unix epoch), and why.
    uncaptured_since: Option<(i64, String)>,
    /// Catching up: files are read again even when their size, mtime and mode match what the
    /// recorder holds, which may lack the writes it dropped.
    reread: bool,
    /// The files with several names a capture has recorded so far, by (device, inode): another
    /// of their names found by the same capture is recorded as a link, not as a second file.
    captured_links: std::collections::HashMap<(u64, u64), RelPath>,
    /// The recorded files a capture has captured so far, with the real file (device, inode)
    /// each was found to be: a recorded file that two names share, found to be two real files
    /// (one replaced while unmounted), gives the second name a file of its own instead of
    /// capturing it over the first.
    captured_nodes: std::collections::HashMap<crate::ids::NodeId, (u64, u64)>,
    /// Every name the last capture found for each file with several, by (device, inode): see
    /// [`Recording::names_of_linked`].
    linked_names: std::collections::HashMap<(u64, u64), Vec<RelPath>>,
    /// A file whose inode changed (ctime) at or after this time, in ns since the Unix epoch,
    /// has its bytes compared with its newest version's by a scan even when its size, mtime
    /// and mode match: see [`Recording::import`].
    changed_since_ns: i64,
}

/// Most descriptors one capture holds (see [`Held`]); a directory with more below it is
/// listed when the recorder captures it.
const HELD_MAX: usize = 4096;

/// A real file, directory or symlink held (`O_PATH`) when a change was made, with, for a
/// directory, the versioned entries it had then, each held too. Its contents are read when the
/// recorder gets to the change (later writes then come again as changes of their own, to the
/// same effect), but its names are those of the moment: a directory renamed in and then
/// renamed inside (an exchange of two of its files) was captured with the names already
/// exchanged, and exchanged again.
#[derive(Debug)]
pub struct Held {
    fd: OwnedFd,
    /// A directory's entries when it was held; `None` for other kinds, and for a directory
    /// past [`HELD_MAX`] (listed when captured).
    entries: Option<Vec<(String, Held)>>,
    /// For a file arriving from a name that is not versioned: another, versioned name it has
    /// (a hard link), which it is recorded as a link to.
    linked: Option<RelPath>,
}

/// How [`Held::take`] tells which paths are versioned, and which other versioned name (if
/// any) a file arriving at a path already has.
pub struct Naming<'a> {
    /// Whether the path is versioned.
    pub versioned: &'a dyn Fn(&str) -> bool,
    /// Another versioned name of the file `st` arriving at the path, outside what arrives.
    pub linked: &'a dyn Fn(&libc::stat, &RelPath) -> Option<RelPath>,
}

impl Held {
    /// Holds `name` in the real directory `dir`, known in the tree as `path`, and every entry
    /// below it that `naming` versions.
    pub fn take(
        dir: RawFd,
        name: &OsStr,
        path: &RelPath,
        naming: &Naming,
    ) -> std::io::Result<Held> {
        let mut budget = HELD_MAX;
        Self::take_within(dir, name, path, naming, &mut budget)
    }

    /// Holds `name` in the real directory `dir` alone, noting nothing below or beside it.
    fn open(dir: RawFd, name: &OsStr) -> std::io::Result<Held> {
        Ok(Held {
            fd: sys::open_at(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?.into(),
            entries: None,
            linked: None,
        })
    }

    fn take_within(
        dir: RawFd,
        name: &OsStr,
        path: &RelPath,
        naming: &Naming,
        budget: &mut usize,
    ) -> std::io::Result<Held> {
        let mut held = Self::open(dir, name)?;
        *budget = budget.saturating_sub(1);
        let st = sys::fstat(held.fd.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            held.linked = (st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink > 1)
                .then(|| (naming.linked)(&st, path))
                .flatten();
            return Ok(held);
        }
        let mut entries = Vec::new();
        let listed = format!("/proc/self/fd/{}", held.fd.as_raw_fd());
        for entry in std::fs::read_dir(listed)?.flatten() {
            let name = entry.file_name();
            let Some(child) = std::str::from_utf8(name.as_bytes())
                .ok()
                .and_then(|n| path.join(n).ok())
                .filter(|c| (naming.versioned)(c.as_str()))
            else {
                continue;
            };
            if *budget == 0 {
                return Ok(held); // listed when captured
            }
            match Self::take_within(held.fd.as_raw_fd(), &name, &child, naming, budget) {
                Ok(h) => entries.push((name.to_string_lossy().into_owned(), h)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        held.entries = Some(entries);
        Ok(held)
    }
}

/// A real file as a [`ReadAt`], for imports.
pub struct FileSource {
    file: File,
    len: u64,
}

impl FileSource {
    /// Opens `path` under `root` for reading.
    pub fn open(root: &OwnedFd, path: &RelPath) -> std::io::Result<(FileSource, libc::stat)> {
        Self::of(sys::open_at(
            root.as_raw_fd(),
            OsStr::new(path.as_str()),
            libc::O_RDONLY | libc::O_NOFOLLOW,
            0,
        )?)
    }

    /// Opens the file `held` (an `O_PATH` descriptor) for reading.
    pub fn reopen(held: &OwnedFd) -> std::io::Result<(FileSource, libc::stat)> {
        Self::of(sys::reopen(held.as_raw_fd(), libc::O_RDONLY)?)
    }

    fn of(file: File) -> std::io::Result<(FileSource, libc::stat)> {
        let st = sys::fstat(file.as_raw_fd())?;
        Ok((
            FileSource {
                file,
                len: st.st_size as u64,
            },
            st,
        ))
    }
}

impl ReadAt for FileSource {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> crate::store::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(StoreError::Io {
                        what: "reading a real file to import it".into(),
                        source: e,
                    })
                }
            }
        }
        Ok(done)
    }
    /// A hole in the real file, as `SEEK_DATA` finds it (0 where the file system cannot say).
    fn zeros_at(&self, offset: u64) -> u64 {
        if offset >= self.len {
            return 0;
        }
        match sys::seek_data(&self.file, offset) {
            Ok(Some(data)) => data.min(self.len).saturating_sub(offset),
            Ok(None) => self.len - offset,
            Err(_) => 0,
        }
    }
    fn len(&self) -> u64 {
        self.len
    }
}

/// Attributes of a real file as the store keeps them.
pub fn meta_of(st: &libc::stat) -> Meta {
    Meta {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_ns: sys::mtime_ns(st),
    }
}

fn kind_of(st: &libc::stat) -> Option<NodeKind> {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Some(NodeKind::File),
        libc::S_IFDIR => Some(NodeKind::Dir),
        libc::S_IFLNK => Some(NodeKind::Symlink),
        _ => None,
    }
}

impl Recording {
    /// Wraps a recorder.
    pub fn new(rec: Recorder, root: Arc<OwnedFd>, filter: Filter) -> Recording {
        Recording {
            rec,
            root,
            filter,
            first_pending: None,
            unflushed: false,
            flushed_at: Instant::now(),
            last_error: None,
            epochs: 0,
            uncaptured: BTreeSet::new(),
            uncaptured_since: None,
            reread: false,
            captured_links: Default::default(),
            captured_nodes: Default::default(),
            linked_names: Default::default(),
            changed_since_ns: i64::MIN,
        }
    }

    /// The versioned names of each file with several that the last capture found, by (device,
    /// inode). Taken after the mount's scan, they let the overlay find a file's other names
    /// that the kernel has not looked up (see `Live::far_name`).
    pub fn names_of_linked(&mut self) -> std::collections::HashMap<(u64, u64), Vec<RelPath>> {
        std::mem::take(&mut self.linked_names)
    }

    /// Paths changed but not versioned yet, and since when (ns since the Unix epoch).
    pub fn uncaptured(&self) -> (usize, Option<i64>) {
        (
            self.uncaptured.len(),
            self.uncaptured_since.as_ref().map(|s| s.0),
        )
    }

    fn apply(&mut self, ev: FsEvent) {
        let path = ev.path().clone();
        let result = match ev {
            FsEvent::Create {
                path,
                kind,
                meta,
                target,
            } => self.rec.create(&path, kind, meta, &target).map(drop),
            FsEvent::Write { path, offset, data } => self.rec.write_owned(&path, offset, data),
            FsEvent::Truncate { path, size } => self.rec.truncate(&path, size),
            FsEvent::Meta { path, update } => self.rec.set_meta(&path, update),
            FsEvent::Xattr { path, name, value } => {
                self.rec.set_xattr(&path, &name, value.as_deref())
            }
            FsEvent::Unlink(path) => self.rec.unlink(&path),
            FsEvent::Rmdir(path) => self.rec.rmdir(&path),
            FsEvent::Rename { from, to, mode } => match self.rec.rename(&from, &to, mode) {
                Err(e) => {
                    // Heal both ends.
                    self.import_real(&from);
                    Err(e)
                }
                ok => ok,
            },
            FsEvent::Link { from, to } => self.rec.link(&from, &to),
            FsEvent::Import { path, held } => {
                self.import(&path, held.as_ref());
                Ok(())
            }
            FsEvent::Remove(path) => match self.rec.remove_any(&path) {
                Err(StoreError::NotFound(_)) => Ok(()),
                r => r,
            },
        };
        if let Err(e) = result {
            // Fifos, sockets and devices are passed through, not versioned: changes to them
            // reach here and find nothing recorded, which is as it should be.
            let special = sys::lstat_at(self.root.as_raw_fd(), OsStr::new(path.as_str()))
                .map(|st| kind_of(&st).is_none())
                .unwrap_or(false);
            if special {
                tracing::debug!(%path, "change to a special file: not versioned");
                return;
            }
            tracing::warn!(%path, error = %e, "the recorded tree disagrees with the real one; re-importing the path");
            self.import_real(&path);
        }
        if self.first_pending.is_none() {
            self.first_pending = Some(Instant::now());
        }
    }

    /// Makes the recorded `path` (and everything below it) match the real tree, creating
    /// missing parent directories. Unchanged files (same size, mtime and mode) are not read.
    pub fn import_real(&mut self, path: &RelPath) {
        self.import(path, None);
    }

    /// Makes the recorded `path` match the real file, directory or symlink `held` (see
    /// [`FsEvent::Import`]), or what the real tree has at `path` when `held` is `None`.
    fn import(&mut self, path: &RelPath, held: Option<&Held>) {
        self.captured_links.clear();
        self.captured_nodes.clear();
        self.linked_names.clear();
        // Size, mtime and mode alike are not enough when names moved: two files of one size
        // written in one tick of the kernel's coarse clock, then exchanged while unmounted,
        // match each other's versions. A rename changes the inode's ctime, so a file changed
        // since the newest moment (less a second for that clock) has its bytes compared, as
        // git treats files changed since its index was written. Only a scan, which is what
        // `held` absent means, takes that shortcut at all.
        if held.is_none() {
            let store = self.rec.store();
            self.changed_since_ns = store
                .epoch(store.head())
                .ok()
                .flatten()
                .map_or(i64::MIN, |e| e.time_ns - 1_000_000_000);
        }
        if let Err(e) = self.try_import(path, held) {
            tracing::error!(%path, error = %e, "could not capture the path: this change is not versioned");
            self.last_error = Some(format!("{path}: {e}"));
        }
    }

    fn try_import(&mut self, path: &RelPath, held: Option<&Held>) -> crate::store::Result<()> {
        if !self.filter.versioned(path.as_str()) {
            return Ok(());
        }
        let fd = self.root.as_raw_fd();
        let st = match held.map_or_else(
            || sys::lstat_at(fd, OsStr::new(path.as_str())),
            |h| sys::fstat(h.fd.as_raw_fd()),
        ) {
            Ok(st) => st,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !path.is_root() && self.rec.resolve_now(path)?.is_some() {
                    self.rec.remove_any(path)?;
                }
                return Ok(());
            }
            Err(e) => {
                return Err(StoreError::Io {
                    what: format!("stat {path}"),
                    source: e,
                })
            }
        };
        let Some(kind) = kind_of(&st) else {
            return Ok(()); // fifos, sockets, devices are passed through, not versioned
        };
        if let Some((parent, _)) = path.split() {
            self.ensure_dir(&parent)?;
        }
        let meta = meta_of(&st);
        let mut now = self.rec.stat_now(path)?;
        let real = (st.st_dev, st.st_ino);
        let shared_apart = kind == NodeKind::File
            && now.as_ref().is_some_and(|(node, _)| {
                self.captured_nodes
                    .get(node)
                    .is_some_and(|other| *other != real)
            });
        if now.as_ref().is_some_and(|(_, v)| v.kind != kind) && !path.is_root() || shared_apart {
            self.rec.remove_any(path)?;
            now = None;
        }
        let linked = kind == NodeKind::File
            && st.st_nlink > 1
            && match held.and_then(|h| h.linked.as_ref()) {
                Some(other) => self.record_as_link(other, path, now.is_some())?,
                None => self.link_captured(path, &st, now.is_some())?,
            };
        // The recorded attributes once what follows has run: those of the file found (it keeps
        // them), none for a new one; a link shares another name's, read from this same file.
        let recorded_xattrs = (!linked).then(|| {
            now.as_ref()
                .map(|(_, v)| v.xattrs.clone())
                .unwrap_or_default()
        });
        match kind {
            NodeKind::File if linked => {}
            NodeKind::File => {
                // Size, mtime and mode alike say "the same file" to a scan of the tree, not to
                // a capture the overlay asked for. And to a scan only if the inode has not
                // changed (ctime) since the newest moment, or its bytes are the recorded ones:
                // a file exchanged with another of the same size written in the same clock
                // tick has the first three alike, and a ctime of just now.
                let unchanged = !self.reread
                    && held.is_none()
                    && now.as_ref().is_some_and(|(_, v)| {
                        v.content.size == st.st_size as u64
                            && v.meta.mtime_ns == meta.mtime_ns
                            && v.meta.mode == meta.mode
                            && (sys::ctime_ns(&st) < self.changed_since_ns
                                || self.holds_recorded_bytes(path, v))
                    });
                if !unchanged {
                    let opened = match held {
                        Some(h) => FileSource::reopen(&h.fd),
                        None => FileSource::open(&self.root, path),
                    };
                    let (src, st2) = opened.map_err(|e| StoreError::Io {
                        what: format!("opening {path}"),
                        source: e,
                    })?;
                    self.rec.import(path, meta_of(&st2), Arc::new(src))?;
                }
            }
            NodeKind::Symlink => {
                let target = match held {
                    Some(h) => sys::readlink_fd(h.fd.as_raw_fd()),
                    None => sys::readlink_at(fd, OsStr::new(path.as_str())),
                }
                .map_err(|e| StoreError::Io {
                    what: format!("readlink {path}"),
                    source: e,
                })?;
                let target = String::from_utf8_lossy(&target).into_owned();
                if now.as_ref().is_some_and(|(_, v)| v.target != target) {
                    self.rec.remove_any(path)?;
                }
                if self.rec.resolve_now(path)?.is_none() {
                    self.rec.create(path, NodeKind::Symlink, meta, &target)?;
                }
            }
            NodeKind::Dir => {
                if now.is_none() {
                    self.rec.create(path, NodeKind::Dir, meta, "")?;
                } else if now.as_ref().is_some_and(|(_, v)| v.meta.mode != meta.mode) {
                    self.rec.set_meta(
                        path,
                        MetaUpdate {
                            mode: Some(meta.mode),
                            uid: Some(meta.uid),
                            gid: Some(meta.gid),
                            mtime_ns: None,
                        },
                    )?;
                }
                let mut real_names = std::collections::BTreeSet::new();
                if let Some(entries) = held.and_then(|h| h.entries.as_ref()) {
                    for (name, child_held) in entries {
                        real_names.insert(name.clone());
                        self.try_import(&path.join(name)?, Some(child_held))?;
                    }
                } else {
                    self.import_listed(path, held, &mut real_names)?;
                }
                let (node, _) = self.rec.resolve_now(path)?.expect("ensured above");
                for d in self.rec.store().list_node(node, self.rec.store().head())? {
                    if !real_names.contains(&d.name) {
                        let child = path.join(&d.name)?;
                        if self.rec.resolve_now(&child)?.is_some() {
                            self.rec.remove_any(&child)?;
                        }
                    }
                }
            }
        }
        if kind == NodeKind::File {
            if let Some((node, _)) = self.rec.resolve_now(path)? {
                self.captured_nodes.insert(node, real);
            }
        }
        match recorded_xattrs {
            Some(recorded) if kind != NodeKind::Symlink => {
                self.import_xattrs(path, held, &recorded)
            }
            _ => Ok(()),
        }
    }

    /// Whether the real file at `path` holds exactly the bytes of its recorded version `v` (read
    /// and compared a block at a time); false if either cannot be read.
    fn holds_recorded_bytes(&self, path: &RelPath, v: &crate::store::catalog::NodeVersion) -> bool {
        let Ok((real, _)) = FileSource::open(&self.root, path) else {
            return false;
        };
        let recorded = self.rec.store().reader(v.content.clone());
        let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        let mut at = 0;
        loop {
            match (real.read_at(at, &mut a), recorded.read_at(at, &mut b)) {
                (Ok(0), Ok(0)) => return true,
                (Ok(n), Ok(m)) if n == m && a[..n] == b[..m] => at += n as u64,
                _ => return false,
            }
        }
    }

    /// Whether the file `st` at `path` has another name this capture has recorded already: then
    /// `path` is recorded as a link to it (unless it is one already), sharing its history as
    /// it shares the file. Otherwise `path` is noted as the file's first name.
    fn link_captured(
        &mut self,
        path: &RelPath,
        st: &libc::stat,
        recorded: bool,
    ) -> crate::store::Result<bool> {
        let key = (st.st_dev, st.st_ino);
        self.linked_names.entry(key).or_default().push(path.clone());
        let Some(first) = self.captured_links.get(&key).cloned() else {
            self.captured_links.insert(key, path.clone());
            return Ok(false);
        };
        self.record_as_link(&first, path, recorded)
    }

    /// Records `path` as a link to the recorded file `first` (unless it is one already);
    /// `false` when `first` is not recorded, or not a file.
    fn record_as_link(
        &mut self,
        first: &RelPath,
        path: &RelPath,
        recorded: bool,
    ) -> crate::store::Result<bool> {
        let Some((node, NodeKind::File)) = self.rec.resolve_now(first)? else {
            return Ok(false);
        };
        if self.rec.resolve_now(path)?.is_some_and(|(n, _)| n == node) {
            return Ok(true);
        }
        if recorded {
            self.rec.remove_any(path)?;
        }
        self.rec.link(first, path)?;
        Ok(true)
    }

    /// Captures the entries of the real directory at `path` (or held by `held`, past
    /// [`HELD_MAX`]) as they are now, naming each in `real_names`.
    fn import_listed(
        &mut self,
        path: &RelPath,
        held: Option<&Held>,
        real_names: &mut std::collections::BTreeSet<String>,
    ) -> crate::store::Result<()> {
        let listed = match held {
            Some(h) => format!("/proc/self/fd/{}", h.fd.as_raw_fd()),
            None => format!("/proc/self/fd/{}/{}", self.root.as_raw_fd(), path.as_str()),
        };
        let real_dir = std::fs::read_dir(listed).map_err(|e| StoreError::Io {
            what: format!("listing {path}"),
            source: e,
        })?;
        for entry in real_dir.flatten() {
            let name = entry.file_name();
            let Ok(name) = std::str::from_utf8(name.as_bytes()) else {
                tracing::warn!(dir = %path, "a name that is not UTF-8 is passed through but not versioned");
                continue;
            };
            let child = path.join(name)?;
            if !self.filter.versioned(child.as_str()) {
                continue;
            }
            // Below a held directory, its entries as they are in it now.
            let child_held = match held {
                Some(h) => match Held::open(h.fd.as_raw_fd(), OsStr::new(name)) {
                    Ok(h) => Some(h),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(StoreError::Io {
                            what: format!("opening {child}"),
                            source: e,
                        })
                    }
                },
                None => None,
            };
            real_names.insert(name.to_string());
            self.try_import(&child, child_held.as_ref())?;
        }
        Ok(())
    }

    /// Records the `user.` attributes (the ones the overlay versions) of the real file or
    /// directory when they differ from the `recorded` ones.
    fn import_xattrs(
        &mut self,
        path: &RelPath,
        held: Option<&Held>,
        recorded: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> crate::store::Result<()> {
        let real = match held {
            Some(h) => sys::proc_path(h.fd.as_raw_fd(), OsStr::new("")),
            None => sys::proc_path(self.root.as_raw_fd(), OsStr::new(path.as_str())),
        };
        let real = sys::user_xattrs(&real).map_err(|e| StoreError::Io {
            what: format!("reading the attributes of {path}"),
            source: e,
        })?;
        if *recorded != real {
            self.rec.import_xattrs(path, real)?;
        }
        Ok(())
    }

    fn ensure_dir(&mut self, dir: &RelPath) -> crate::store::Result<()> {
        if dir.is_root() || matches!(self.rec.resolve_now(dir)?, Some((_, NodeKind::Dir))) {
            return Ok(());
        }
        if let Some((parent, _)) = dir.split() {
            self.ensure_dir(&parent)?;
        }
        let st = sys::lstat_at(self.root.as_raw_fd(), OsStr::new(dir.as_str())).map_err(|e| {
            StoreError::Io {
                what: format!("stat {dir}"),
                source: e,
            }
        })?;
        if self.rec.resolve_now(dir)?.is_some() {
            self.rec.remove_any(dir)?;
        }
        self.rec.create(dir, NodeKind::Dir, meta_of(&st), "")?;
        Ok(())
    }

    /// Closes the epoch. With no room on the store's disk, nothing is written: the pending
    /// changes are dropped and their paths wait to be captured. Otherwise paths that wait are
    /// captured from the real files first. On failure (a full disk, a broken pack) the pending
    /// paths are re-imported and committed again; if that fails too, they wait, loudly.
    pub fn commit(&mut self, durable: bool) {
        if !self.rec.has_pending() && self.uncaptured.is_empty() {
            // A change may leave nothing pending (a path that was already gone): the epoch it
            // opened closes all the same, or its clock would stay overdue and the thread would
            // find it so on every turn instead of sleeping.
            self.first_pending = None;
            if durable {
                self.flush();
            }
            return;
        }
        if let Err(e) = self.rec.store().room_for_epoch() {
            self.drop_pending(&e);
            if durable {
                // Epochs committed before the disk filled (their records fit in the reserve).
                self.flush();
            }
            return;
        }
        let catching_up = std::mem::take(&mut self.uncaptured);
        self.capture_again(&catching_up);
        let paths = self.pending_paths();
        let result = match self.rec.commit(durable) {
            Err(e) => {
                tracing::error!(error = %e, paths = paths.len(), "epoch not committed: these changes are not versioned; re-importing them from the real files");
                self.last_error = Some(format!("commit failed: {e}"));
                // What the recorder holds of these files may lack what the failed epoch held.
                self.capture_again(&paths);
                self.rec.commit(durable).inspect_err(|e| {
                    tracing::error!(error = %e, "re-import not committed either: these paths are captured at the next commit that succeeds");
                })
            }
            ok => ok,
        };
        match result {
            Ok(committed) => {
                if !catching_up.is_empty() {
                    self.resumed(catching_up.len());
                }
                match committed {
                    Some(c) => {
                        self.epochs += 1;
                        if c.hashed_bytes >= TRIM_AFTER_BYTES {
                            crate::sys::release_free_memory();
                        }
                        if durable {
                            self.flushed();
                        } else {
                            self.unflushed = true;
                            // Committed epochs sit in the catalogue's memory until it is
                            // flushed: under a steady stream of writes, flush at least every
                            // second, so a crash of the daemon costs at most the last second of
                            // versions (never a real byte).
                            if self.flushed_at.elapsed() >= MAX_EPOCH_AGE {
                                self.flush();
                            }
                        }
                    }
                    None if durable => self.flushed(),
                    None => {}
                }
            }
            Err(e) => {
                let why = format!("commit failed: {e}");
                self.last_error = Some(why.clone());
                self.wait_for_capture(paths, &why);
                self.wait_for_capture(catching_up, &why);
            }
        }
        self.first_pending = None;
    }

    /// The paths that waited are versioned again: said loudly, and kept as the last error, so
    /// that `status` shows the gap in the history.
    fn resumed(&mut self, paths: usize) {
        let (since, why) = self.uncaptured_since.take().unwrap_or_default();
        let now = crate::when::now_ns();
        tracing::warn!(
            paths,
            since = %crate::when::rfc3339(since),
            "versioning resumed: the paths changed meanwhile are captured as they are now"
        );
        self.last_error = Some(format!(
            "from {} to {} changes could not be versioned ({why}); the {paths} paths they touched were captured as they were at the end",
            crate::when::rfc3339(since),
            crate::when::rfc3339(now),
        ));
    }

    /// The paths with pending changes (what a commit that fails leaves unversioned).
    fn pending_paths(&self) -> Vec<RelPath> {
        let paths = self.rec.pending_paths();
        paths.iter().filter_map(|p| RelPath::new(p).ok()).collect()
    }

    /// Captures `paths` from the real files, reading every file again: what the recorder holds
    /// of them may lack writes it dropped.
    fn capture_again<'a>(&mut self, paths: impl IntoIterator<Item = &'a RelPath>) {
        self.reread = true;
        for p in paths {
            self.import_real(p);
        }
        self.reread = false;
    }

    /// No room for an epoch: the pending changes are dropped (memory stays bounded however long
    /// the disk stays full) and their paths wait to be captured.
    fn drop_pending(&mut self, why: &StoreError) {
        let paths = self.pending_paths();
        self.rec.discard();
        self.first_pending = None;
        if self.uncaptured_since.is_none() {
            tracing::error!(error = %why, "changes are not versioned until the store's disk has room: they are captured from the real files then");
        }
        self.last_error = Some(format!("{why}: changes wait to be versioned"));
        self.wait_for_capture(paths, &why.to_string());
    }

    /// `paths` (not versioned because of `why`) are captured from the real files by the next
    /// commit that succeeds.
    fn wait_for_capture(&mut self, paths: impl IntoIterator<Item = RelPath>, why: &str) {
        self.uncaptured.extend(paths);
        if !self.uncaptured.is_empty() && self.uncaptured_since.is_none() {
            self.uncaptured_since = Some((crate::when::now_ns(), why.to_string()));
        }
    }

    /// After a panic while handling a message: what the recorder held is dropped (it may be
    /// half-changed), and the whole tree is captured again from the real files (files whose
    /// size, mtime and mode match the history are not read), so the next moment is whole.
    /// Said loudly, and kept as the last error.
    fn recover(&mut self, panic: &(dyn std::any::Any + Send)) {
        let what = crate::panic_message(panic);
        // Rationed like the request threads' failures (see `crate::fs::guard`): a bug that
        // fails every message must not fill the store's disk with its log.
        static FAILURES: LogBudget = LogBudget::new("recorder failures");
        if FAILURES.allows() {
            tracing::error!(panic = %what, "the recorder failed: the changes it held are not versioned; capturing the tree again from the real files");
        }
        self.rec.reset();
        self.first_pending = None;
        self.reread = false;
        self.capture_tree_after(
            &format!("the recorder failed ({what})"),
            "the changes it held were not versioned",
        );
    }

    /// Captures the whole tree from the real files after `failure`, whose cost was `lost`
    /// (files whose size, mtime and mode match the history are not read); kept as the last
    /// error.
    fn capture_tree_after(&mut self, failure: &str, lost: &str) {
        self.import_real(&RelPath::root());
        self.commit(false);
        self.last_error = Some(format!(
            "{failure} at {}: {lost}, and the tree was captured again from the real files",
            crate::when::rfc3339(crate::when::now_ns())
        ));
    }

    /// After a FUSE request handler panicked (see [`crate::fs::guard`]): what it changed in the
    /// real tree before it failed may never have been reported, so once what is pending is
    /// committed, the whole tree is captured again from the real files (files whose size,
    /// mtime and mode match are not read). Kept as the last error.
    fn request_failed(&mut self, op: &str, what: &str) {
        self.commit(false);
        self.capture_tree_after(
            &format!("a {op} request failed inside clawfs ({what})"),
            "it was answered with an I/O error",
        );
    }

    /// The last commit, at unmount: what still waits for room is captured by the next mount.
    fn finish(&mut self) {
        self.commit(true);
        if !self.uncaptured.is_empty() {
            tracing::error!(
                paths = self.uncaptured.len(),
                "unmounted with changes not versioned for lack of room: the next mount captures these paths as they are then"
            );
        }
    }

    /// Makes every committed epoch durable.
    fn flush(&mut self) {
        if let Err(e) = self.rec.store().flush() {
            tracing::error!(error = %e, "flushing the store failed");
            self.last_error = Some(format!("flush failed: {e}"));
        }
        self.flushed();
    }

    fn flushed(&mut self) {
        self.unflushed = false;
        self.flushed_at = Instant::now();
    }
}

/// Written bytes in the channel, and a way to wait for them to go down.
#[derive(Default)]
struct Queued {
    bytes: std::sync::atomic::AtomicU64,
    lock: Mutex<()>,
    room: Condvar,
}

impl Queued {
    /// Counts `n` more bytes, first waiting (with the doorbell rung) while too many wait;
    /// `ring` says whether the recorder thread is still there (if not, nothing would ever
    /// make room, and the write goes unversioned rather than hang).
    fn add(&self, n: u64, ring: impl Fn() -> bool) {
        use std::sync::atomic::Ordering;
        if self.bytes.load(Ordering::Acquire) >= QUEUED_BYTES_MAX {
            let mut g = self.lock.lock();
            while self.bytes.load(Ordering::Acquire) >= QUEUED_BYTES_MAX && ring() {
                self.room.wait_for(&mut g, Duration::from_millis(100));
            }
        }
        self.bytes.fetch_add(n, Ordering::AcqRel);
    }

    /// `n` bytes taken out of the channel.
    fn take(&self, n: u64) {
        use std::sync::atomic::Ordering;
        let before = self.bytes.fetch_sub(n, Ordering::AcqRel);
        if before >= QUEUED_BYTES_MAX && before - n < QUEUED_BYTES_MAX {
            // Under the lock: a writer between its check and its wait cannot miss this.
            let _g = self.lock.lock();
            self.room.notify_all();
        }
    }

    fn get(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The handle the overlay keeps: a sender, the doorbell, and the thread to join.
pub struct RecorderHandle {
    tx: Sender<Msg>,
    doorbell: Sender<()>,
    queued: Arc<Queued>,
    thread: parking_lot::Mutex<Option<JoinHandle<()>>>,
    /// A capture of the whole tree after a failed request is queued and has not started: more
    /// failures meanwhile need no capture of their own.
    capture_queued: Arc<std::sync::atomic::AtomicBool>,
}

impl RecorderHandle {
    /// Starts the thread `clawfs-recorder`.
    pub fn spawn(recording: Recording) -> RecorderHandle {
        let (tx, rx) = bounded(CHANNEL_DEPTH);
        let (doorbell, bell) = bounded(1);
        let queued = Arc::new(Queued::default());
        let q = queued.clone();
        let thread = std::thread::Builder::new()
            .name("clawfs-recorder".into())
            .spawn(move || run(recording, rx, bell, &q))
            .expect("spawning the recorder thread");
        RecorderHandle {
            tx,
            doorbell,
            queued,
            thread: parking_lot::Mutex::new(Some(thread)),
            capture_queued: Default::default(),
        }
    }

    /// Ends the thread's nap now; false if the thread is gone.
    fn ring(&self) -> bool {
        !matches!(
            self.doorbell.try_send(()),
            Err(crossbeam_channel::TrySendError::Disconnected(_))
        )
    }

    /// Queues `msg`; rings if much is queued, or if `urgent`.
    fn queue(&self, msg: Msg, urgent: bool) -> bool {
        let ok = self.tx.send(msg).is_ok();
        if urgent || self.tx.len() >= RING_AT_MESSAGES || self.queued.get() >= RING_AT_BYTES {
            self.ring();
        }
        ok
    }

    /// Queues a change (waits while too much is queued).
    pub fn send(&self, ev: FsEvent) {
        if let FsEvent::Write { data, .. } = &ev {
            self.queued.add(data.len() as u64, || self.ring());
        }
        if !self.queue(Msg::Event(ev), false) {
            tracing::error!("recorder thread is gone: this change is not versioned");
        }
    }

    /// Asks for the epoch to close; with `wait`, returns once it is committed.
    pub fn commit(&self, durable: bool, wait: bool) {
        if wait {
            let (tx, rx) = bounded(1);
            let msg = Msg::Commit {
                durable,
                done: Some(tx),
            };
            if self.queue(msg, true) {
                let _ = rx.recv();
            }
        } else {
            let msg = Msg::Commit {
                durable,
                done: None,
            };
            self.queue(msg, false);
        }
    }

    /// Runs `f` on the recorder thread and returns its result.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Recording) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = bounded(1);
        let job: Job = Box::new(move |r| {
            let _ = tx.send(f(r));
        });
        if !self.queue(Msg::Call(job), true) {
            return None;
        }
        rx.recv().ok()
    }

    /// After a FUSE request handler panicked: has the thread capture the tree again (see
    /// `Recording::request_failed`), without waiting for it. A bug that fails request after
    /// request costs one capture at a time, not one each: failures while a capture waits to
    /// start are covered by it.
    pub fn request_failed(&self, op: &'static str, what: &str) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.capture_queued.swap(true, SeqCst) {
            return;
        }
        let what = what.to_string();
        let queued = self.capture_queued.clone();
        let job: Job = Box::new(move |r| {
            queued.store(false, SeqCst);
            r.request_failed(op, &what)
        });
        if !self.queue(Msg::Call(job), true) {
            tracing::error!("recorder thread is gone: the tree is captured by the next mount");
        }
    }

    /// Commits what is pending, flushes, and stops the thread.
    pub fn shutdown(&self) {
        let Some(t) = self.thread.lock().take() else {
            return;
        };
        self.queue(Msg::Shutdown, true);
        {
            let _ = t.join();
        }
    }
}

impl Drop for RecorderHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(mut r: Recording, rx: Receiver<Msg>, bell: Receiver<()>, queued: &Queued) {
    // Whether something was handled since the thread last waited.
    let mut handled = false;
    loop {
        let timeout = match r.first_pending {
            Some(t) => MAX_EPOCH_AGE.saturating_sub(t.elapsed()),
            None if r.unflushed => MAX_EPOCH_AGE,
            None if !r.uncaptured.is_empty() => RETRY_WHEN_FULL,
            None => Duration::from_secs(3600),
        };
        let msg = match rx.try_recv() {
            Ok(m) => Ok(m),
            Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) if handled && !timeout.is_zero() => {
                // More changes usually follow: collect them for a moment (see the module doc).
                handled = false;
                let _ = bell.recv_timeout(NAP.min(timeout));
                continue;
            }
            Err(TryRecvError::Empty) => {
                handled = false;
                let _ = bell.try_recv(); // a ring from before: the next nap should be whole
                rx.recv_timeout(timeout)
            }
        };
        if msg.is_ok() {
            handled = true;
        }
        if let Ok(Msg::Event(FsEvent::Write { data, .. })) = &msg {
            queued.take(data.len() as u64);
        }
        // A bug that panics here must not end versioning for the rest of the mount: the
        // thread goes on, having captured the tree again (see `Recording::recover`).
        let handled_msg =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(&mut r, msg)));
        match handled_msg {
            Ok(true) => {}
            Ok(false) => return,
            Err(panic) => {
                let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    r.recover(panic.as_ref())
                }));
                if again.is_err() {
                    tracing::error!("the recorder failed again while capturing the tree: changes are captured by the next change to each path, or the next mount");
                    r.rec.reset();
                    r.first_pending = None;
                }
            }
        }
    }
}

/// Handles one message (or the timeout); false once the thread is to stop.
fn handle(r: &mut Recording, msg: Result<Msg, RecvTimeoutError>) -> bool {
    match msg {
        Ok(Msg::Event(ev)) => {
            r.apply(ev);
            if r.rec.pending_bytes() >= MAX_PENDING_BYTES {
                r.commit(false);
            }
        }
        Ok(Msg::Commit { durable, done }) => {
            r.commit(durable);
            if let Some(d) = done {
                let _ = d.send(());
            }
        }
        Ok(Msg::Call(job)) => job(r),
        Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
            r.finish();
            return false;
        }
        Err(RecvTimeoutError::Timeout) => {
            if r.first_pending.is_some() || (!r.unflushed && !r.uncaptured.is_empty()) {
                r.commit(false);
            } else if r.unflushed {
                // A second after the writes stopped, the last epochs are made durable.
                r.flush();
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Seq, SessionId};
    use crate::store::Store;

    const META: Meta = Meta {
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
    };

    fn recorder() -> (tempfile::TempDir, Arc<Store>, RecorderHandle) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tree")).unwrap();
        let store = Store::open_or_create(&dir.path().join("store")).unwrap();
        let root = Arc::new(sys::open_dir(&dir.path().join("tree")).unwrap());
        let rec = store.recorder(SessionId(1)).unwrap();
        let handle = RecorderHandle::spawn(Recording::new(rec, root, Filter::new(&[]).unwrap()));
        (dir, store, handle)
    }

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn last_error(h: &RecorderHandle) -> String {
        h.call(|r| r.last_error.clone())
            .flatten()
            .unwrap_or_default()
    }

    fn create(h: &RecorderHandle, path: &str) {
        h.send(FsEvent::Create {
            path: p(path),
            kind: NodeKind::File,
            meta: META,
            target: String::new(),
        });
    }

    #[test]
    fn changes_handled_in_naps_keep_their_order_and_every_epoch() {
        let (_d, store, h) = recorder();
        create(&h, "MEMORY.md");
        h.commit(false, false);
        // Each close of a written file is an epoch of its own, asked for without waiting.
        for i in 0..50u32 {
            h.send(FsEvent::Write {
                path: p("MEMORY.md"),
                offset: 0,
                data: format!("v{i:02}").into_bytes(),
            });
            h.commit(false, false);
        }
        // A waited commit comes after all of them, nap or not.
        h.commit(true, true);
        let hist = store.history(&p("MEMORY.md"), 1000).unwrap();
        assert_eq!(hist.len(), 51, "{hist:?}");
        for (i, e) in hist.iter().rev().skip(1).enumerate() {
            assert_eq!(
                store.read_file(&p("MEMORY.md"), e.seq).unwrap(),
                format!("v{i:02}").into_bytes()
            );
        }
    }

    #[test]
    fn writers_do_not_wait_for_a_recorder_thread_that_is_gone() {
        let (_d, _store, h) = recorder();
        assert!(h
            .call(|_| -> () { panic!("a bug in the recorder") })
            .is_none());
        let h = Arc::new(h);
        let (done_tx, done) = bounded(1);
        let writer = h.clone();
        std::thread::spawn(move || {
            for i in 0..40u64 {
                writer.send(FsEvent::Write {
                    path: p("f"),
                    offset: i << 20,
                    data: vec![1; 1 << 20],
                });
            }
            let _ = done_tx.send(());
        });
        // The writes go unversioned; they must not hang (the bound is generous, not a timing).
        assert!(
            done.recv_timeout(Duration::from_secs(60)).is_ok(),
            "writers hang on a queue nobody empties"
        );
    }

    #[test]
    fn writers_wait_while_too_many_written_bytes_are_queued() {
        let (_d, store, h) = recorder();
        create(&h, "big.bin");
        let mib = 1usize << 20;
        let mut peak = 0;
        for i in 0..48u8 {
            h.send(FsEvent::Write {
                path: p("big.bin"),
                offset: (i as usize * mib) as u64,
                data: vec![i; mib],
            });
            peak = peak.max(h.queued.get());
        }
        assert!(
            peak < QUEUED_BYTES_MAX + mib as u64,
            "{peak} bytes queued at most"
        );
        h.commit(true, true);
        assert_eq!(h.queued.get(), 0);
        let data = store.read_file(&p("big.bin"), store.head()).unwrap();
        assert_eq!(data.len(), 48 * mib);
        assert!(data
            .chunks(mib)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8)));
    }

    #[test]
    fn a_panic_while_recording_is_survived_and_the_tree_captured_again() {
        let (d, store, h) = recorder();
        create(&h, "before.txt");
        h.commit(true, true);
        // Written to the real tree while the recorder is about to fail: no event for it.
        std::fs::write(d.path().join("tree/missed.txt"), b"missed").unwrap();
        create(&h, "pending.txt");
        // A job that panics on the recorder thread stands for any bug there.
        assert_eq!(h.call(|_| -> () { panic!("injected failure") }), None);
        // The thread goes on: later changes are versioned, and the recovery captured the file
        // whose change it never saw.
        std::fs::write(d.path().join("tree/after.txt"), b"after").unwrap();
        create(&h, "after.txt");
        h.commit(true, true);
        let head = store.head();
        assert_eq!(store.read_file(&p("missed.txt"), head).unwrap(), b"missed");
        assert!(store.resolve(&p("after.txt"), head).unwrap().is_some());
        // pending.txt never existed in the real tree: recovery does not invent it.
        assert!(store.resolve(&p("pending.txt"), head).unwrap().is_none());
        let err = last_error(&h);
        assert!(
            err.contains("the recorder failed (injected failure)"),
            "{err}"
        );
    }

    /// A change that leaves nothing pending (here the removal of a path that never was) still
    /// starts the epoch's clock; once that second is up, the epoch closes empty and the clock
    /// stops. Left running, the thread found the epoch overdue on every turn and never slept
    /// again: after a run of SQLite transactions, an idle mount's recorder kept a whole CPU
    /// busy until the next change.
    #[test]
    fn a_change_that_leaves_nothing_pending_does_not_keep_the_thread_awake() {
        let (_d, _store, h) = recorder();
        h.send(FsEvent::Unlink(p("never-was.txt")));
        std::thread::sleep(MAX_EPOCH_AGE + Duration::from_millis(300));
        let clock = h.call(|r| r.first_pending.map(|t| t.elapsed()));
        assert_eq!(clock, Some(None), "the epoch's clock still runs");
    }

    /// A FUSE handler that panicked may have changed the real tree without saying so: told of
    /// it, the recorder commits what it holds, then captures the tree from the real files.
    #[test]
    fn a_failed_request_has_the_tree_captured_again() {
        let (d, store, h) = recorder();
        std::fs::write(d.path().join("tree/told.txt"), b"").unwrap();
        create(&h, "told.txt");
        // What the failed handler wrote before it panicked: no event for it.
        std::fs::write(d.path().join("tree/missed.txt"), b"missed").unwrap();
        h.request_failed("write", "injected failure");
        h.commit(true, true);
        let head = store.head();
        assert_eq!(store.read_file(&p("missed.txt"), head).unwrap(), b"missed");
        // The change the recorder held is a moment of its own, before the capture.
        let told = store.resolve(&p("told.txt"), Seq(head.0 - 1)).unwrap();
        let missed = store.resolve(&p("missed.txt"), Seq(head.0 - 1)).unwrap();
        assert!(told.is_some() && missed.is_none());
        let err = last_error(&h);
        assert!(
            err.contains("a write request failed inside clawfs (injected failure)"),
            "{err}"
        );
    }

    /// Requests that fail while a capture waits to start are covered by it: a bug that fails
    /// every request queues one capture at a time, not one per request.
    #[test]
    fn failed_requests_share_the_capture_that_waits() {
        let (_d, _store, h) = recorder();
        // Hold the thread, so that the captures asked for meanwhile wait.
        let (release, held) = bounded::<()>(1);
        assert!(h.queue(
            Msg::Call(Box::new(move |_| {
                let _ = held.recv();
            })),
            true
        ));
        while !h.tx.is_empty() {
            std::thread::yield_now();
        }
        for _ in 0..50 {
            h.request_failed("getattr", "injected failure");
        }
        assert_eq!(h.tx.len(), 1, "one capture waits");
        release.send(()).unwrap();
        assert!(last_error(&h).contains("a getattr request failed inside clawfs"));
        // Once it has started, a new failure asks for a capture of its own.
        h.request_failed("read", "injected failure");
        assert!(last_error(&h).contains("a read request failed inside clawfs"));
    }
}
