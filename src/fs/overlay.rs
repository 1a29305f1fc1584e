//! The read-write overlay mounted over the state directory in place.
//!
//! Every request is served by a `*at()` call relative to the directory fd opened before mounting
//! (invariant 1): unmounted, the directory holds exactly what the writers wrote. Every change to a
//! versioned path is also reported to the recorder thread (invariant 2), under one ordering lock
//! so the recorder sees changes in the order the real tree went through them. Writes are
//! write-through (no writeback cache), so nothing is reordered on the way. Locks (POSIX and
//! flock) are left to the kernel: they are not advertised, so the kernel keeps them locally.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackingId, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, Notifier, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use parking_lot::{Mutex, RwLock};

use crate::daemon::recorder_thread::{meta_of, FsEvent, Held, Naming, RecorderHandle};
use crate::fs::filter::Filter;
use crate::fs::inodes::Inodes;
use crate::fs::iomode::{IoModes, Mode};
use crate::fs::requests::RequestPath;
use crate::relpath::RelPath;
use crate::store::catalog::NodeKind;
use crate::store::recorder::{MetaUpdate, RenameMode};
use crate::sys;

/// How long the kernel may cache names. Every change goes through us (a rollback invalidates
/// what it replaces), so names stay valid.
const ENTRY_TTL: Duration = Duration::from_secs(1);
/// How long the kernel may cache attributes, from a `GETATTR` or `SETATTR` as from an entry.
/// Every change goes through us, and the kernel drops what each one touches: a write the size and
/// times, a link or unlink the link count (all names of an inode are one kernel inode), a rename
/// the ctime, and a directory's attributes when an entry in it changes. Where the daemon changes
/// attributes behind its back, it says so ([`Live::attrs_changed`]): a set-user-ID bit cleared on
/// a write, a mode rewritten by an ACL, the inodes a rollback replaced. Uncached, every
/// `fstat` of an open file was a round trip (7.5 µs against 0.9 µs natively), and a path walk a
/// `GETATTR` per directory (41,000 requests for 5,000 small files).
const ATTR_TTL: Duration = Duration::from_secs(1);

/// How the real file behind a passed-through open is opened: one backing file serves every open
/// of the inode, whatever its access mode.
const BACKING_FLAGS: i32 = libc::O_RDWR | libc::O_NOFOLLOW;

/// How a passed-through open is answered. The kernel takes no flag outside
/// `FOPEN_PASSTHROUGH_MASK` with it (`FOPEN_KEEP_CACHE` fails the caller's open with `EIO`;
/// there is no page cache of ours to keep, the real file's serves; and without it, the kernel
/// drops the pages a cached open left, so none is served stale after the file is written passed
/// through). Its close needs nothing from us, written or not: its writes never came here, and a
/// file written under a versioned name is captured at RELEASE.
const PASSTHROUGH_FLAGS: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

/// Open flags a caller's open does not pass on to the daemon's open of the real file: `O_APPEND`
/// is emulated (see `open`), `O_CREAT` and `O_EXCL` are `create`'s, `O_NOCTTY` means nothing
/// here. `O_DIRECT` is between the caller and the kernel, which bypasses the mount's page cache
/// for it either way: the daemon reads and writes the real file from buffers of its own, whose
/// addresses and lengths `O_DIRECT` would need aligned to the disk's blocks. Passed on, it
/// failed every read and write of a file opened with it with EINVAL (`dd oflag=direct`).
const NOT_PASSED_ON: i32 =
    libc::O_APPEND | libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_DIRECT;

/// Which opens of a versioned file send each write(2) to the daemon as it was issued
/// (`FOPEN_DIRECT_IO`) instead of through the page cache: those opened write-only, and SQLite's
/// logs (`-wal`, `-journal`).
///
/// Through the page cache, the kernel ends a WRITE request at any page it has written only part
/// of and does not hold whole (`fuse_fill_write_pages`), so a write(2) that starts inside a page
/// and runs into the next costs two round trips. Every SQLite WAL frame is a 24-byte header and a
/// page, so each one after the first straddles: three round trips per frame instead of two
/// (2,000 WAL transactions: 0.126 s against 0.100 s). The rollback journal's records (a page
/// between two 4-byte fields) are the same. Direct writes also skip the kernel's
/// `security.capability` lookup before a file's first write (the daemon clears set-ID bits
/// itself, see `drop_suid`, and the real file system drops a capability when the daemon writes):
/// one round trip fewer for every small file written.
///
/// What it costs: reads through such a descriptor skip the page cache. A write-only descriptor
/// can neither read nor map, so it loses nothing; SQLite reads its log back only for pages its
/// own cache lacks and at a checkpoint, one read per page. Pages written directly are not left
/// in the cache, and the kernel drops any cached copy of the range first (writing a shared
/// mapping's dirty pages back before), so readers and mappings through other opens see each
/// write at once (tested).
fn direct_writes(path: &OsStr, flags: i32) -> FopenFlags {
    let name = path.as_bytes();
    if flags & libc::O_ACCMODE == libc::O_WRONLY
        || name.ends_with(b"-wal")
        || name.ends_with(b"-journal")
    {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::empty()
    }
}

/// A directory as `opendir` saw it: (inode, type, name), so offsets stay stable.
type Listing = Vec<(u64, FileType, OsString)>;

/// An open file.
struct Handle {
    file: File,
    ino: u64,
    append: bool,
    /// Written through since the last FLUSH: closing a descriptor of it closes the epoch.
    wrote: AtomicBool,
    /// Created or truncated by this open: its RELEASE closes the epoch, and a FLUSH only once
    /// something is written too. A shell's `echo x > f` opens with `O_CREAT | O_TRUNC` and
    /// closes a duplicate of the descriptor before `echo` writes; closing the epoch there
    /// recorded an empty version of every file a shell wrote.
    truncated: AtomicBool,
    /// Who opened it for writing: shown by `status`, and a rollback refuses to replace it.
    writer: Option<(u32, String)>,
    /// Its reads and writes go to the real file without us ([`IoModes`]).
    passed: bool,
}

/// A process holding a file open for writing through the mount.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct OpenWriter {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub command: String,
    /// Path of the file, relative to the tree.
    pub path: String,
}

/// What the control server needs of a running overlay: who has files open, and how to make
/// the kernel forget what a rollback replaced.
pub struct Live {
    root: Arc<OwnedFd>,
    inodes: Inodes,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    notifier: Arc<OnceLock<Notifier>>,
    modes: IoModes,
    /// Which paths are versioned.
    filter: Filter,
    /// How requests come in.
    requests: RequestPath,
    /// One rollback at a time puts files back through the mount.
    rollback: Mutex<()>,
    /// The thread doing so (0: none): its requests make changes the rollback records itself,
    /// as one moment of `restore` versions, so they are not recorded again.
    publisher: AtomicU32,
    /// Paths met this session that would be versioned but for their names, which are not
    /// UTF-8 (the catalogue keeps names as UTF-8): passed through, not versioned. Each is
    /// logged when first met and listed by `status`.
    not_utf8: Mutex<BTreeSet<Vec<u8>>>,
    /// Versioned names of files with several that the kernel may never look up, by real inode
    /// number: every one the mount's scan found, and those such files arrive under inside a
    /// directory renamed in. Where the kernel knows no versioned name of such a file (one
    /// removed since, the others not looked up), [`Live::far_name`] finds one here.
    far_names: RwLock<HashMap<u64, Vec<RelPath>>>,
    /// The device the directory is on: a far name must name a file on it.
    root_dev: u64,
    /// Held across "change the real tree, then tell the recorder", so the recorder sees changes
    /// in the order they happened.
    order: Mutex<()>,
}

/// How many names of one file [`Live::note_far_name`] keeps.
const FAR_NAMES_KEPT: usize = 8;

/// How many paths with names that are not UTF-8 [`Live`] remembers, and logs one by one.
const NOT_UTF8_KEPT: usize = 100;

/// While a rollback puts files back through the mount (see [`Live::rollback_through_mount`]).
pub struct Publishing<'a> {
    live: &'a Live,
    _one: parking_lot::MutexGuard<'a, ()>,
}

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        self.live.publisher.store(0, Ordering::SeqCst);
    }
}

/// The overlay filesystem.
pub struct Overlay {
    live: Arc<Live>,
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    next_fh: AtomicU64,
    rec: Arc<RecorderHandle>,
    /// What paths name: held for writing by every request that adds, removes or moves a name
    /// (taken before `order`), and for reading by every other that works by path, from the
    /// moment it builds the path from the inode table until it is done with it. Otherwise a
    /// rename in another directory (the kernel locks only the directories involved) could move
    /// another file under the path in between, and an open for inode A would open file B.
    ns: RwLock<()>,
}

/// Writes `data` at `offset`, retrying short writes; returns how much reached the file, which
/// is less than all of it only when a later write failed after an earlier one went through.
fn write_some_at(file: &std::fs::File, data: &[u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match file.write_at(&data[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) if done > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs((-sec) as u64) + Duration::from_nanos(nsec as u64)
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// Clears the set-user-ID bit of a regular file, and its set-group-ID bit if group-executable,
/// as the kernel does when someone without `CAP_FSETID` writes or truncates it (with
/// `FUSE_HANDLE_KILLPRIV_V2` that is ours to do: the daemon's own writes, as root, keep them).
/// Returns the new permission bits if they changed.
fn drop_suid(f: &File) -> io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    let st = sys::fstat(f.as_raw_fd())?;
    let mode = st.st_mode & 0o7777;
    let mut new = mode & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        new &= !libc::S_ISGID;
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || new == mode {
        return Ok(None);
    }
    f.set_permissions(std::fs::Permissions::from_mode(new))?;
    Ok(Some(new))
}

fn to_timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let (sec, nsec) = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => {
                    let d = e.duration();
                    let mut sec = -(d.as_secs() as i64);
                    let mut nsec = -(d.subsec_nanos() as i64);
                    if nsec < 0 {
                        sec -= 1;
                        nsec += 1_000_000_000;
                    }
                    (sec, nsec)
                }
            };
            libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            }
        }
    }
}

/// The command name of process `pid`, "?" if it is gone.
fn comm_of(pid: u32) -> String {
    crate::procs::command_of(pid).unwrap_or_else(|| "?".into())
}

impl Overlay {
    /// An overlay over the directory `root` (opened before mounting), recording through `rec`.
    pub fn new(
        root: Arc<OwnedFd>,
        rec: Arc<RecorderHandle>,
        filter: Filter,
        notifier: Arc<OnceLock<Notifier>>,
        io_uring: bool,
        linked: HashMap<(u64, u64), Vec<RelPath>>,
    ) -> io::Result<Overlay> {
        let st = sys::fstat(root.as_raw_fd())?;
        let far_names = linked
            .into_iter()
            .filter(|((dev, _), _)| *dev == st.st_dev)
            .map(|((_, ino), names)| (ino, names))
            .collect::<HashMap<_, _>>();
        Ok(Overlay {
            live: Arc::new(Live {
                inodes: Inodes::new(st.st_ino),
                root,
                handles: RwLock::new(HashMap::new()),
                notifier,
                modes: IoModes::default(),
                filter,
                requests: RequestPath {
                    wanted: io_uring,
                    ..Default::default()
                },
                rollback: Mutex::new(()),
                publisher: AtomicU32::new(0),
                not_utf8: Mutex::new(BTreeSet::new()),
                far_names: RwLock::new(far_names),
                root_dev: st.st_dev,
                order: Mutex::new(()),
            }),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            rec,
            ns: RwLock::new(()),
        })
    }

    /// The state the control server shares.
    pub fn live(&self) -> Arc<Live> {
        Arc::clone(&self.live)
    }

    fn fd(&self) -> i32 {
        self.live.root.as_raw_fd()
    }

    /// A file (or directory) arrived at the versioned `path` from a name that is not versioned
    /// (renamed, exchanged or linked in), in place of what was there: captured whole, each file
    /// that has another versioned name the kernel knows recorded as a link to it, so that both
    /// names keep sharing one history as they share one file. What was there is unlinked
    /// first: captured over it, a file linked under other names too would have changed under
    /// those.
    fn arrive(&self, path: RelPath) {
        self.rec.send(FsEvent::Remove(path.clone()));
        self.rec.send(self.live.capture(path, true));
    }

    fn attr(&self, st: &libc::stat) -> FileAttr {
        FileAttr {
            ino: INodeNo(st.st_ino),
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
            crtime: UNIX_EPOCH,
            kind: file_type(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }

    fn path(&self, ino: INodeNo) -> Result<OsString, Errno> {
        self.live.inodes.path(ino.0).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<OsString, Errno> {
        self.live
            .inodes
            .child_path(parent.0, name)
            .ok_or(Errno::ENOENT)
    }

    fn entry(&self, parent: INodeNo, name: &OsStr, st: &libc::stat) -> FileAttr {
        let ino = self.live.inodes.fuse_ino(st.st_ino);
        self.live.inodes.remember(ino, parent.0, name);
        self.attr(st)
    }

    /// Before the name `name` in `parent` is removed or replaced: pins the inode it links if
    /// the kernel knows it (see [`Inodes::pin`](crate::fs::inodes::Inodes::pin)).
    fn pin_before_removing(&self, parent: INodeNo, name: &OsStr, path: &OsStr) {
        if let Some(ino) = self.live.inodes.lookup(parent.0, name) {
            self.live.pin_known(ino, path);
        }
    }

    /// New files belong to whoever asked for them (the daemon runs as root), with the group of a
    /// set-group-id parent directory.
    fn give_to_caller(&self, req: &Request, parent: &OsStr, path: &OsStr) {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        // Created by root for root: the real file system already made it root's, with a
        // set-group-id parent's group if it has one, as `chown` below would.
        // SAFETY: getegid has no preconditions.
        if req.uid() == 0 && req.gid() == unsafe { libc::getegid() } {
            return;
        }
        let gid = match sys::lstat_at(self.fd(), parent) {
            Ok(p) if p.st_mode & libc::S_ISGID != 0 => p.st_gid,
            _ => req.gid(),
        };
        if let Err(e) = sys::chown_at(self.fd(), path, req.uid(), gid) {
            tracing::warn!(path = ?path, error = %e, "could not give a new file to its creator");
        }
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        self.handle_opt(Some(fh)).ok_or(Errno::EBADF)
    }

    /// The open file `fh` names. The table's lock is released on return: it must never be held
    /// while waiting for the ordering lock (`open` takes them the other way round).
    fn handle_opt(&self, fh: Option<FileHandle>) -> Option<Arc<Handle>> {
        let fh = fh?;
        let guard = self.live.handles.read();
        guard.get(&fh.0).cloned()
    }

    /// Any open file of inode `ino`: an unlinked file that is still open has no path, but
    /// `fstat`, `fchmod` and `ftruncate` on it must keep working (the kernel does not always
    /// pass the handle along).
    fn handle_of_ino(&self, ino: u64) -> Option<Arc<Handle>> {
        let guard = self.live.handles.read();
        guard.values().find(|h| h.ino == ino).cloned()
    }

    fn add_handle(&self, h: Handle) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.live.handles.write().insert(fh, Arc::new(h));
        FileHandle(fh)
    }

    fn record_mtime(&self, h: &Handle) {
        let Some(p) = self.live.versioned_ino(h.ino) else {
            return;
        };
        if let Ok(st) = sys::fstat(h.file.as_raw_fd()) {
            self.rec.send(FsEvent::Meta {
                path: p,
                update: MetaUpdate {
                    mtime_ns: Some(sys::mtime_ns(&st)),
                    ..Default::default()
                },
            });
        }
    }

    fn creation_event(&self, path: &OsStr, st: &libc::stat) {
        let Some(p) = self.live.versioned(path) else {
            return;
        };
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => NodeKind::File,
            libc::S_IFDIR => NodeKind::Dir,
            libc::S_IFLNK => NodeKind::Symlink,
            _ => return,
        };
        let target = if kind == NodeKind::Symlink {
            sys::readlink_at(self.fd(), path)
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default()
        } else {
            String::new()
        };
        self.rec.send(FsEvent::Create {
            path: p,
            kind,
            meta: meta_of(st),
            target,
        });
    }

    /// `unlink` and `rmdir`: remove the real entry, then tell the recorder and close the epoch.
    fn remove_entry(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        is_dir: bool,
        reply: ReplyEmpty,
    ) {
        let _span = tracing::debug_span!("remove", parent = parent.0, ?name, is_dir).entered();
        let _ns = self.ns.write();
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        {
            let _order = self.live.order.lock();
            self.pin_before_removing(parent, name, &path);
            if let Err(e) = sys::unlink_at(self.fd(), &path, is_dir) {
                return reply.error(errno(e));
            }
            self.live.inodes.unlink(parent.0, name);
            if let Some(p) = self
                .live
                .versioned(&path)
                .filter(|_| self.live.records(req))
            {
                self.rec.send(if is_dir {
                    FsEvent::Rmdir(p)
                } else {
                    FsEvent::Unlink(p)
                });
                self.rec.commit(false, false);
            }
        }
        reply.ok();
    }

    /// After mknod, mkdir or symlink made `path`: give it to its creator, tell the recorder,
    /// and answer with its attributes.
    fn created(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        path: &OsStr,
        reply: ReplyEntry,
    ) {
        self.give_to_caller(req, Self::parent_of(path), path);
        match sys::lstat_at(self.fd(), path) {
            Ok(st) => {
                if self.live.records(req) {
                    self.creation_event(path, &st);
                }
                reply.entry(&ENTRY_TTL, &self.entry(parent, name, &st), Generation(0))
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    /// [`drop_suid`] on the open file `f` of `ino` when `kill`, telling the kernel, whose cached
    /// mode it changes behind its back (a SETATTR answers with fresh attributes instead).
    fn drop_suid_if(&self, kill: bool, ino: INodeNo, f: &File) -> io::Result<Option<u32>> {
        let dropped = if kill { drop_suid(f)? } else { None };
        if dropped.is_some() {
            self.live.attrs_changed(ino.0);
        }
        Ok(dropped)
    }

    /// How to serve an open of inode `ino` at `path` ([`IoModes::open`]): passed through if it
    /// is not versioned and the inode allows it. `st_mode` gives the file's mode, asked only for
    /// a path that is not versioned; `register` makes the real file, opened here, a backing file.
    ///
    /// Never a set-ID file: the kernel writes a passed-through file with the daemon's privilege,
    /// so an unprivileged write would leave its set-user-ID bit, which it must clear (the daemon
    /// does, see [`drop_suid`]).
    fn io_mode(
        &self,
        ino: u64,
        path: &OsStr,
        st_mode: impl FnOnce() -> u32,
        register: impl FnOnce(File) -> io::Result<BackingId>,
    ) -> Mode {
        // Versioned under any of its names: opened as `q.lock/b`, a file also linked as `d/a`
        // must have its writes recorded.
        let versioned =
            self.live.versioned(path).is_some() || self.live.versioned_ino(ino).is_some();
        let wanted = !versioned && st_mode() & (libc::S_ISUID | libc::S_ISGID) == 0;
        let mode = self.live.modes.open(ino, wanted, || {
            register(sys::open_at(self.fd(), path, BACKING_FLAGS, 0)?)
        });
        if versioned && matches!(mode, Mode::Passthrough(_)) {
            tracing::warn!(path = ?path, "opened while already open passed through: \
                           its writes are captured at fsync and close, not as they happen");
        }
        mode
    }

    /// Tells the recorder the permission bits [`drop_suid`] left on `path`, if it changed them.
    fn record_mode(&self, path: RelPath, dropped: Option<u32>) {
        if let Some(mode) = dropped {
            self.rec.send(FsEvent::Meta {
                path,
                update: MetaUpdate {
                    mode: Some(mode),
                    ..MetaUpdate::default()
                },
            });
        }
    }

    fn parent_of(path: &OsStr) -> &OsStr {
        let b = path.as_bytes();
        match b.iter().rposition(|&c| c == b'/') {
            Some(i) => OsStr::from_bytes(&b[..i]),
            None => OsStr::new(""),
        }
    }
}

impl Live {
    /// Captures every file open for writing passed through to the kernel under a name that
    /// is versioned now (renamed in while open, or opened again under a versioned name while
    /// open so): its writes go past the daemon, so the history has them only from such a
    /// capture, made otherwise at that descriptor's fsync and close. Before a mark or a
    /// rollback, which must see the tree as it is.
    pub fn capture_passed_through(&self, rec: &RecorderHandle) {
        let mut inos: Vec<u64> = (self.handles.read().values())
            .filter(|h| h.passed && h.writer.is_some())
            .map(|h| h.ino)
            .collect();
        if inos.is_empty() {
            return;
        }
        inos.sort_unstable();
        inos.dedup();
        let _order = self.order.lock();
        for p in inos.iter().filter_map(|&i| self.versioned_ino(i)) {
            rec.send(self.import(p));
        }
    }

    /// Capture `path` whole, as the real tree holds it now: called under the order lock, it
    /// holds the real file (or directory, and what is below it) for the recorder to read, so
    /// that renames and removals made before the recorder gets to it do not change what is
    /// captured there (see [`Held`]).
    fn import(&self, path: RelPath) -> FsEvent {
        self.capture(path, false)
    }

    /// [`Self::import`], or, `arriving` from a name that is not versioned, with each file's
    /// other versioned name the kernel knows, to be recorded as a link (see `Overlay::arrive`).
    fn capture(&self, path: RelPath, arriving: bool) -> FsEvent {
        let versioned = |p: &str| self.filter.versioned(p);
        // Another versioned name the kernel knows, outside what arrives. (Asked of each file
        // with several names that arrives, whose name here the kernel may never look up.)
        let linked = |st: &libc::stat, at: &RelPath| {
            self.note_far_name(st.st_ino, at);
            let ino = self.inodes.fuse_ino(st.st_ino);
            let other = |o: &RelPath| o.as_str() != at.as_str() && !o.starts_with(&path);
            self.inodes
                .find_path(ino, |p| self.versioned(p).filter(other))
                .or_else(|| self.far_name(ino, other))
        };
        let none = |_: &libc::stat, _: &RelPath| None;
        let naming = Naming {
            versioned: &versioned,
            linked: if arriving { &linked } else { &none },
        };
        let held = Held::take(
            self.root.as_raw_fd(),
            OsStr::new(path.as_str()),
            &path,
            &naming,
        );
        if let Err(e) = &held {
            tracing::debug!(%path, error = %e, "cannot hold it: the recorder reads it by path");
        }
        FsEvent::Import {
            path,
            held: held.ok(),
        }
    }

    /// The path as the store names it, when it is versioned.
    pub fn versioned(&self, path: &OsStr) -> Option<RelPath> {
        let Ok(s) = std::str::from_utf8(path.as_bytes()) else {
            self.met_not_utf8(path);
            return None;
        };
        if !self.filter.versioned(s) {
            return None;
        }
        RelPath::new(s).ok()
    }

    /// The path of inode `ino` as the store names it, when it has one and it is versioned: of a
    /// file linked under several names, the first that is versioned (a write through a name
    /// that is not still changes the file under the other).
    pub fn versioned_ino(&self, ino: u64) -> Option<RelPath> {
        self.inodes
            .find_path(ino, |p| self.versioned(p))
            .or_else(|| self.far_name(ino, |_| true))
    }

    /// A versioned name of the file `ino` (one of several) that the kernel does not know but
    /// the mount's scan found, and that still names it, through directories only: chosen among
    /// those `keep` takes. Without it, a write to a file whose name the kernel knew was
    /// removed would be lost to the history of its other names.
    fn far_name(&self, ino: u64, keep: impl Fn(&RelPath) -> bool) -> Option<RelPath> {
        let real = self.inodes.real_ino(ino);
        let names = self.far_names.read().get(&real)?.clone();
        names.into_iter().find(|p| keep(p) && self.names(p, real))
    }

    /// Notes `path` as a name of the file with real inode number `real` for [`Self::far_name`],
    /// dropping the names noted before that no longer name it (at most [`FAR_NAMES_KEPT`]).
    fn note_far_name(&self, real: u64, path: &RelPath) {
        let mut far = self.far_names.write();
        let names = far.entry(real).or_default();
        if !names.contains(path) {
            names.retain(|p| self.names(p, real));
            names.push(path.clone());
            if names.len() > FAR_NAMES_KEPT {
                names.remove(0);
            }
        }
    }

    /// Whether `p` names the file with real inode number `real`, through directories only.
    fn names(&self, p: &RelPath, real: u64) -> bool {
        let path = p.as_str();
        let mut ends = path.match_indices('/').map(|(i, _)| i).collect::<Vec<_>>();
        ends.push(path.len());
        ends.iter().all(|&end| {
            let Ok(st) = sys::lstat_at(self.root.as_raw_fd(), OsStr::new(&path[..end])) else {
                return false;
            };
            if end < path.len() {
                st.st_mode & libc::S_IFMT == libc::S_IFDIR
            } else {
                (st.st_ino, st.st_dev) == (real, self.root_dev)
            }
        })
    }

    /// For the calling thread's rollback: until the guard is dropped, its requests through
    /// the mount are served but not recorded (the rollback records what they do), and no other
    /// rollback starts.
    pub fn rollback_through_mount(&self) -> Publishing<'_> {
        let one = self.rollback.lock();
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        self.publisher.store(tid as u32, Ordering::SeqCst);
        Publishing {
            live: self,
            _one: one,
        }
    }

    /// Whether the change `req` makes is recorded: every request's is, but those of a rollback
    /// putting files back (see [`Live::rollback_through_mount`]).
    fn records(&self, req: &Request) -> bool {
        let publisher = self.publisher.load(Ordering::SeqCst);
        publisher == 0 || req.pid() != publisher
    }

    /// With passthrough granted, how many files are open passed through now; None without it.
    pub fn passed_through(&self) -> Option<usize> {
        self.modes.passed_files()
    }

    /// How requests come in.
    pub fn requests(&self) -> &RequestPath {
        &self.requests
    }

    /// Every process that reaches the real files under `dir` past the mount, through what it
    /// took before the mount covered them: what it changes that way is not versioned.
    pub fn underneath(&self, dir: &Path) -> Vec<crate::procs::Holder> {
        let Ok(st) = sys::fstat(self.root.as_raw_fd()) else {
            return Vec::new();
        };
        crate::procs::underneath(dir, st.st_dev, |p| self.filter.versioned(p))
    }

    /// `path`, whose name is not UTF-8, is passed through without being versioned: said
    /// loudly the first time (first law), unless its path is not versioned anyway.
    fn met_not_utf8(&self, path: &OsStr) {
        // Every request on such a file comes here: one already listed costs a lookup only.
        let mut met = self.not_utf8.lock();
        if met.len() >= NOT_UTF8_KEPT || met.contains(path.as_bytes()) {
            return;
        }
        let shown = String::from_utf8_lossy(path.as_bytes());
        if !self.filter.versioned(&shown) {
            return;
        }
        met.insert(path.as_bytes().to_vec());
        tracing::warn!(
            path = %shown,
            "a name that is not UTF-8: the file is passed through, and its changes are not versioned"
        );
        if met.len() == NOT_UTF8_KEPT {
            tracing::warn!("{NOT_UTF8_KEPT} paths with names that are not UTF-8 met: further ones are not logged");
        }
    }

    /// Paths met this session that are not versioned because their names are not UTF-8, as
    /// text (invalid bytes shown as U+FFFD); at most 100 (`NOT_UTF8_KEPT`).
    pub fn not_utf8(&self) -> Vec<String> {
        self.not_utf8
            .lock()
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    /// Every file some process holds open for writing through the mount.
    pub fn open_writers(&self) -> Vec<OpenWriter> {
        self.handles
            .read()
            .values()
            .filter_map(|h| {
                let (pid, command) = h.writer.clone()?;
                let path = self.inodes.path(h.ino)?;
                Some(OpenWriter {
                    pid,
                    command,
                    path: path.to_string_lossy().into_owned(),
                })
            })
            .collect()
    }

    /// Pins `ino`, known by `path`, if the kernel knows it and it is not pinned yet.
    pub fn pin_known(&self, ino: u64, path: &OsStr) {
        if !self.inodes.needs_pin(ino) {
            return;
        }
        let real = self.inodes.real_ino(ino);
        match sys::open_at(
            self.root.as_raw_fd(),
            path,
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
        ) {
            // Only the very inode the kernel knows (not one renamed there in meanwhile).
            Ok(f) => match sys::fstat(f.as_raw_fd()) {
                Ok(st) if st.st_ino == real => self.inodes.pin(ino, f.into()),
                _ => {}
            },
            Err(e) => tracing::warn!(
                ?path,
                error = %e,
                "cannot hold the inode of a removed name: its number may go to a new file while the kernel still caches the old one"
            ),
        }
    }

    /// Before a rollback replaces or removes `path` behind the kernel's back: pins every
    /// inode the kernel knows at or below it, and returns them (their cached attributes, a link
    /// count among them, are stale once it is done: see [`Live::attrs_changed`]).
    pub fn pin_tree(&self, path: &RelPath) -> Vec<u64> {
        let Ok(st) = sys::lstat_at(self.root.as_raw_fd(), OsStr::new(path.as_str())) else {
            return Vec::new();
        };
        let top = self.inodes.fuse_ino(st.st_ino);
        let known = self.inodes.known_below(top);
        for &ino in &known {
            if let Some(p) = self.inodes.path(ino) {
                self.pin_known(ino, &p);
            }
        }
        known
    }

    /// Tells the kernel that attributes of `ino` it may cache changed behind its back. Only the
    /// attributes: it takes no lock a request in flight could hold, so it is safe mid-request.
    pub fn attrs_changed(&self, ino: u64) {
        if let Some(n) = self.notifier.get() {
            if let Err(e) = n.inval_inode(INodeNo(ino), -1, 0) {
                tracing::debug!(ino, error = %e, "attribute invalidation not delivered");
            }
        }
    }

    /// Tells the kernel to forget what it cached about `path` (after a rollback replaced it).
    pub fn invalidate(&self, path: &RelPath) {
        let Some(n) = self.notifier.get() else { return };
        let Some((parent, name)) = path.split() else {
            return;
        };
        let Ok(pst) = sys::lstat_at(self.root.as_raw_fd(), OsStr::new(parent.as_str())) else {
            return;
        };
        let pino = self.inodes.fuse_ino(pst.st_ino);
        let _ = n.inval_entry(INodeNo(pino), OsStr::new(name));
        self.inodes.unlink(pino, OsStr::new(name));
    }
}

impl Filesystem for Overlay {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // Not FUSE_ATOMIC_O_TRUNC: with it, `open(O_RDONLY | O_TRUNC)` of a program being
            // run truncated the real file in OPEN, before the kernel refused with ETXTBSY
            // (it checks only after opening, for that mode), and the program died of SIGBUS.
            // Without it, the kernel checks first and truncates with a SETATTR.
            // We clear set-user/group-ID bits on writes and truncations ourselves (see
            // `drop_suid`); in return the kernel asks for `security.capability` only before an
            // inode's first write through the page cache, not before every write(2), and never
            // before a direct one (`direct_writes`). (The real file system drops the
            // capability itself when the daemon writes.)
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            // A shared mapping of a file opened with direct writes (an SQLite log) goes through
            // the page cache; without this the kernel refuses it with ENODEV.
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
        ] {
            let _ = config.add_capabilities(cap);
        }
        // Requests through io_uring rings, one queue per CPU (see `requests`), when the kernel
        // offers it.
        if self.live.requests.wanted {
            let _ = config.add_capabilities(InitFlags::FUSE_OVER_IO_URING);
        }
        let _ = config.set_max_background(64);
        // Registering a backing file takes CAP_SYS_ADMIN. The mount's stack depth must exceed
        // that of the real files' file system: 1 over a plain one, so the mount itself can still
        // be stacked on; 2, the most there is, over overlayfs (a container's root), so that
        // passthrough works there too. (Real files on another stacked file system are served
        // through the cache: the kernel refuses to register them.)
        let over_overlay =
            sys::fstatfs(self.fd()).is_ok_and(|st| st.f_type == sys::OVERLAYFS_SUPER_MAGIC);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config
                .set_max_stack_depth(if over_overlay { 2 } else { 1 })
                .is_ok()
        {
            self.live.modes.enable();
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.rec.commit(true, true);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = tracing::trace_span!("lookup", parent = parent.0, ?name).entered();
        let _ns = self.ns.read();
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match sys::lstat_at(self.fd(), &path) {
            Ok(st) => reply.entry(&ENTRY_TTL, &self.entry(parent, name, &st), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.live.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _span = tracing::trace_span!("getattr", ino = ino.0, fh = fh.map(|f| f.0)).entered();
        if let Some(h) = self.handle_opt(fh) {
            return match sys::fstat(h.file.as_raw_fd()) {
                Ok(st) => reply.attr(&ATTR_TTL, &self.attr(&st)),
                Err(e) => reply.error(errno(e)),
            };
        }
        let _ns = self.ns.read();
        match self
            .path(ino)
            .and_then(|p| sys::lstat_at(self.fd(), &p).map_err(errno))
        {
            Ok(st) => reply.attr(&ATTR_TTL, &self.attr(&st)),
            Err(e) => match self.handle_of_ino(ino.0) {
                Some(h) => match sys::fstat(h.file.as_raw_fd()) {
                    Ok(st) => reply.attr(&ATTR_TTL, &self.attr(&st)),
                    Err(e) => reply.error(errno(e)),
                },
                None => reply.error(e),
            },
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _span = tracing::debug_span!("setattr", ino = ino.0, fh = fh.map(|f| f.0)).entered();
        let fd = self.fd();
        let _ns = self.ns.read();
        let path = self.path(ino).ok().filter(|p| sys::lstat_at(fd, p).is_ok());
        // Without a path (unlinked but open), work on an open descriptor of the inode.
        let handle = self
            .handle_opt(fh)
            .or_else(|| path.is_none().then(|| self.handle_of_ino(ino.0)).flatten());
        if path.is_none() && handle.is_none() {
            return reply.error(Errno::ENOENT);
        }
        let _order = self.live.order.lock();
        let mut suid_dropped = false;
        let result = (|| -> io::Result<()> {
            let by_fd = |f: &File| format!("/proc/self/fd/{}", f.as_raw_fd());
            if let Some(m) = mode {
                match (&path, &handle) {
                    (Some(p), _) => sys::chmod_at(fd, p, m & 0o7777)?,
                    (None, Some(h)) => {
                        sys::chmod_at(libc::AT_FDCWD, OsStr::new(&by_fd(&h.file)), m & 0o7777)?
                    }
                    _ => unreachable!(),
                }
            }
            if uid.is_some() || gid.is_some() {
                let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
                match (&path, &handle) {
                    (Some(p), _) => sys::chown_at(fd, p, u, g)?,
                    (None, Some(h)) => std::os::unix::fs::fchown(&h.file, uid, gid)?,
                    _ => unreachable!(),
                }
            }
            if let Some(s) = size {
                // Any handle will do to find the file, but only a writable one to truncate it.
                let opened;
                let f = match (&handle, &path) {
                    (Some(h), _) if h.writer.is_some() => &h.file,
                    (_, Some(p)) => {
                        opened = sys::open_at(fd, p, libc::O_WRONLY | libc::O_NOFOLLOW, 0)?;
                        &opened
                    }
                    (Some(h), None) => {
                        opened = sys::open_at(
                            libc::AT_FDCWD,
                            OsStr::new(&by_fd(&h.file)),
                            libc::O_WRONLY,
                            0,
                        )?;
                        &opened
                    }
                    _ => unreachable!(),
                };
                sys::ftruncate(f, s)?;
                // Closing the file closes the epoch (see `Handle::truncated`). A truncation at
                // open comes without a handle, after the OPEN that made it: all are marked.
                for h in self.live.handles.read().values().filter(|h| h.ino == ino.0) {
                    h.truncated.store(true, Ordering::Relaxed);
                }
                if req.uid() != 0 && drop_suid(f)?.is_some() {
                    suid_dropped = true;
                }
            }
            if atime.is_some() || mtime.is_some() {
                let times = [to_timespec(atime), to_timespec(mtime)];
                match (&path, &handle) {
                    (Some(p), _) => sys::utimens_at(fd, p, &times)?,
                    (None, Some(h)) => {
                        sys::utimens_at(libc::AT_FDCWD, OsStr::new(&by_fd(&h.file)), &times)?
                    }
                    _ => unreachable!(),
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            return reply.error(errno(e));
        }
        let st = match (&path, &handle) {
            (Some(p), _) => sys::lstat_at(fd, p),
            (None, Some(h)) => sys::fstat(h.file.as_raw_fd()),
            _ => unreachable!(),
        };
        let st = match st {
            Ok(st) => st,
            Err(e) => return reply.error(errno(e)),
        };
        let records = self.live.records(req);
        if let Some(p) = self.live.versioned_ino(ino.0).filter(|_| records) {
            if let Some(s) = size {
                self.rec.send(FsEvent::Truncate {
                    path: p.clone(),
                    size: s,
                });
            }
            self.rec.send(FsEvent::Meta {
                path: p,
                update: MetaUpdate {
                    mode: (mode.is_some() || suid_dropped).then_some(st.st_mode & 0o7777),
                    uid: uid.map(|_| st.st_uid),
                    gid: gid.map(|_| st.st_gid),
                    mtime_ns: Some(sys::mtime_ns(&st)),
                },
            });
        }
        reply.attr(&ATTR_TTL, &self.attr(&st));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _ns = self.ns.read();
        match self
            .path(ino)
            .and_then(|p| sys::readlink_at(self.fd(), &p).map_err(errno))
        {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _span = tracing::debug_span!("mknod", parent = parent.0, ?name).entered();
        let _ns = self.ns.write();
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let _order = self.live.order.lock();
        if let Err(e) = sys::mknod_at(self.fd(), &path, mode & !umask, rdev as u64) {
            return reply.error(errno(e));
        }
        self.created(req, parent, name, &path, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _span = tracing::debug_span!("mkdir", parent = parent.0, ?name).entered();
        let _ns = self.ns.write();
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let _order = self.live.order.lock();
        if let Err(e) = sys::mkdir_at(self.fd(), &path, mode & !umask & 0o7777) {
            return reply.error(errno(e));
        }
        self.created(req, parent, name, &path, reply);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove_entry(req, parent, name, false, reply);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove_entry(req, parent, name, true, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _span = tracing::debug_span!("symlink", parent = parent.0, ?link_name).entered();
        let _ns = self.ns.write();
        let path = match self.child(parent, link_name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let _order = self.live.order.lock();
        if let Err(e) = sys::symlink_at(target.as_os_str(), self.fd(), &path) {
            return reply.error(errno(e));
        }
        self.created(req, parent, link_name, &path, reply);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _span = tracing::debug_span!(
            "rename",
            parent = parent.0,
            ?name,
            newparent = newparent.0,
            ?newname
        )
        .entered();
        let _ns = self.ns.write();
        let (from, to) = match (self.child(parent, name), self.child(newparent, newname)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return reply.error(Errno::ENOENT),
        };
        let fd = self.fd();
        {
            let _order = self.live.order.lock();
            let src = sys::lstat_at(fd, &from).ok();
            let dst = sys::lstat_at(fd, &to).ok();
            if let Some(d) = dst
                .as_ref()
                .filter(|_| flags.bits() & libc::RENAME_EXCHANGE == 0)
            {
                // The name it replaces may have been the last one of an inode the kernel knows.
                self.live
                    .pin_known(self.live.inodes.fuse_ino(d.st_ino), &to);
            }
            if let Err(e) = sys::rename_at(fd, &from, &to, flags.bits()) {
                return reply.error(errno(e));
            }
            let exchange = flags.bits() & libc::RENAME_EXCHANGE != 0;
            if let Some(s) = &src {
                self.live.inodes.rename(
                    self.live.inodes.fuse_ino(s.st_ino),
                    parent.0,
                    name,
                    newparent.0,
                    newname,
                );
            }
            if exchange {
                if let Some(d) = &dst {
                    self.live
                        .inodes
                        .relink(self.live.inodes.fuse_ino(d.st_ino), parent.0, name);
                }
            }
            let mode = if exchange {
                RenameMode::Exchange
            } else if flags.bits() & libc::RENAME_NOREPLACE != 0 {
                RenameMode::NoReplace
            } else {
                RenameMode::Replace
            };
            let records = self.live.records(req);
            let versioned = |p: &OsStr| self.live.versioned(p).filter(|_| records);
            match (versioned(&from), versioned(&to)) {
                (Some(f), Some(t)) => self.rec.send(FsEvent::Rename {
                    from: f,
                    to: t,
                    mode,
                }),
                // Renamed in from a path that is not versioned: capture what arrived.
                (None, Some(t)) => self.arrive(t),
                (Some(f), None) => {
                    if exchange {
                        self.arrive(f);
                    } else {
                        self.rec.send(FsEvent::Remove(f));
                    }
                }
                (None, None) => {}
            }
            self.rec.commit(false, false);
        }
        reply.ok();
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _span =
            tracing::debug_span!("link", ino = ino.0, newparent = newparent.0, ?newname).entered();
        let _ns = self.ns.write();
        let (from, to) = match (self.path(ino), self.child(newparent, newname)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return reply.error(Errno::ENOENT),
        };
        let _order = self.live.order.lock();
        if let Err(e) = sys::link_at(self.fd(), &from, &to) {
            return reply.error(errno(e));
        }
        let st = match sys::lstat_at(self.fd(), &to) {
            Ok(st) => st,
            Err(e) => return reply.error(errno(e)),
        };
        // From a name of the file that is versioned, if it has one. (A rollback's link, which
        // puts a file back under a further name, records itself.)
        if self.live.records(req) {
            match (self.live.versioned_ino(ino.0), self.live.versioned(&to)) {
                (Some(f), Some(t)) => self.rec.send(FsEvent::Link { from: f, to: t }),
                (None, Some(t)) => self.arrive(t),
                _ => {}
            }
            self.rec.commit(false, false);
        }
        reply.entry(
            &ENTRY_TTL,
            &self.entry(newparent, newname, &st),
            Generation(0),
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _span = tracing::debug_span!("open", ino = ino.0, flags = flags.0).entered();
        let _ns = self.ns.read();
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let f = flags.0;
        let append = f & libc::O_APPEND != 0;
        let writable = f & libc::O_ACCMODE != libc::O_RDONLY;
        // O_APPEND is emulated (the offset is taken from the real size under the ordering lock)
        // so the recorder learns where appended bytes really landed. O_TRUNC does not come here
        // (no FUSE_ATOMIC_O_TRUNC): the kernel truncates with a SETATTR after its own checks.
        let real_flags = (f & !(NOT_PASSED_ON | libc::O_TRUNC)) | libc::O_NOFOLLOW;
        let _order = writable.then(|| self.live.order.lock());
        let file = match sys::open_at(self.fd(), &path, real_flags, 0) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(e)),
        };
        let writer = writable.then(|| (req.pid(), comm_of(req.pid())));
        let st_mode = || sys::fstat(file.as_raw_fd()).map_or(libc::S_ISUID, |st| st.st_mode);
        let mode = self.io_mode(ino.0, &path, st_mode, |f| reply.open_backing(f));
        let passed = matches!(mode, Mode::Passthrough(_));
        let fh = self.add_handle(Handle {
            file,
            ino: ino.0,
            append,
            wrote: AtomicBool::new(false),
            truncated: AtomicBool::new(false),
            writer,
            passed,
        });
        // Closing a read-only descriptor needs nothing from us (nothing was written through
        // it, and locks are the kernel's): no FLUSH round trip on every close(2).
        let flags = if writable {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH
        };
        match mode {
            Mode::Passthrough(b) => reply.opened_passthrough(fh, PASSTHROUGH_FLAGS, &b),
            Mode::Cached => reply.opened(fh, flags | direct_writes(&path, f)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _span = tracing::trace_span!("read", ino = ino.0, fh = fh.0, offset, size).entered();
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match h.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(errno(e)),
            }
        }
        reply.data(&buf[..done]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _span = tracing::trace_span!("write", ino = ino.0, fh = fh.0, offset, len = data.len())
            .entered();
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let _order = self.live.order.lock();
        let offset = if h.append {
            match sys::fstat(h.file.as_raw_fd()) {
                Ok(st) => st.st_size as u64,
                Err(e) => return reply.error(errno(e)),
            }
        } else {
            offset
        };
        // As write(2) does: what reached the file before an error (a full disk) is a short
        // write, and only that is recorded; an error with nothing written is the error.
        let data = match write_some_at(&h.file, data, offset) {
            Ok(n) => &data[..n],
            Err(e) => return reply.error(errno(e)),
        };
        h.wrote.store(true, Ordering::Relaxed);
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let dropped = match self.drop_suid_if(kill, ino, &h.file) {
            Ok(m) => m,
            Err(e) => return reply.error(errno(e)),
        };
        if let Some(p) = self.live.versioned_ino(h.ino) {
            self.rec.send(FsEvent::Write {
                path: p.clone(),
                offset,
                data: data.to_vec(),
            });
            self.record_mode(p, dropped);
        }
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) waits for FLUSH, not RELEASE: this is where "close of a written file" closes
        // the epoch.
        if let Ok(h) = self.handle(fh) {
            // Cleared here, so RELEASE (or the next FLUSH of a dup) records again only if
            // something was written since: pages of a shared mapping written back after
            // close come as WRITEs on this handle and set it again.
            if h.wrote.swap(false, Ordering::Relaxed) {
                h.truncated.store(false, Ordering::Relaxed);
                let _order = self.live.order.lock();
                self.record_mtime(&h);
                self.rec.commit(false, false);
            }
        }
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let removed = self.live.handles.write().remove(&fh.0);
        if let Some(h) = removed {
            self.live.modes.release(h.ino, h.passed);
            if h.wrote.load(Ordering::Relaxed) || h.truncated.load(Ordering::Relaxed) {
                let _order = self.live.order.lock();
                self.record_mtime(&h);
                self.rec.commit(false, false);
            }
            // Written without us, under a path that is versioned now (renamed in while open):
            // capture it whole.
            if h.passed && h.writer.is_some() {
                if let Some(p) = self.live.versioned_ino(h.ino) {
                    let _order = self.live.order.lock();
                    self.rec.send(self.live.import(p));
                    self.rec.commit(false, false);
                }
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _span = tracing::debug_span!("fsync", ino = ino.0, fh = fh.0, datasync).entered();
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        // The writer's bytes first: they are what matters most.
        let r = if datasync {
            h.file.sync_data()
        } else {
            h.file.sync_all()
        };
        if let Err(e) = r {
            return reply.error(errno(e));
        }
        // A file that is not versioned has nothing to commit.
        let Some(path) = self.live.versioned_ino(h.ino) else {
            return reply.ok();
        };
        {
            let _order = self.live.order.lock();
            if h.passed {
                // Written without us (see `IoModes`): capture it whole.
                self.rec.send(self.live.import(path));
            }
            self.record_mtime(&h);
        }
        // Then the version, durable too when fsync returns: what the writer asked the disk to
        // keep, the history keeps. (Other epochs reach the disk within a second.)
        self.rec.commit(true, true);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _ns = self.ns.read();
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let proc = sys::proc_path(self.fd(), &path);
        let rd = match std::fs::read_dir(OsStr::from_bytes(proc.as_bytes())) {
            Ok(rd) => rd,
            Err(e) => return reply.error(errno(e)),
        };
        let mut entries = vec![
            (ino.0, FileType::Directory, OsString::from(".")),
            (ino.0, FileType::Directory, OsString::from("..")),
        ];
        use std::os::unix::fs::DirEntryExt;
        for e in rd.flatten() {
            let kind = match e.file_type() {
                Ok(t) if t.is_dir() => FileType::Directory,
                Ok(t) if t.is_symlink() => FileType::Symlink,
                Ok(t) if t.is_file() => FileType::RegularFile,
                Ok(t) => {
                    use std::os::unix::fs::FileTypeExt;
                    if t.is_fifo() {
                        FileType::NamedPipe
                    } else if t.is_socket() {
                        FileType::Socket
                    } else if t.is_char_device() {
                        FileType::CharDevice
                    } else {
                        FileType::BlockDevice
                    }
                }
                Err(_) => FileType::RegularFile,
            };
            entries.push((self.live.inodes.fuse_ino(e.ino()), kind, e.file_name()));
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().insert(fh, Arc::new(entries));
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = self.dirs.lock().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(entries) = self.dirs.lock().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let _ns = self.ns.read();
        let dir = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        for (i, (_, _, name)) in entries.iter().enumerate().skip(offset as usize) {
            let dot = name == "." || name == "..";
            let p = if dot {
                dir.clone()
            } else {
                let mut p = dir.clone();
                if !p.is_empty() {
                    p.push("/");
                }
                p.push(name);
                p
            };
            let Ok(st) = sys::lstat_at(self.fd(), &p) else {
                continue;
            };
            let attr = self.attr(&st);
            let fino = self.live.inodes.fuse_ino(st.st_ino);
            if reply.add(
                INodeNo(fino),
                i as u64 + 1,
                name,
                &ENTRY_TTL,
                &attr,
                Generation(0),
            ) {
                break;
            }
            if !dot {
                self.entry(ino, name, &st);
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.lock().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _ns = self.ns.read();
        let r = self.path(ino).and_then(|p| {
            sys::open_at(self.fd(), &p, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                .and_then(|f| f.sync_all())
                .map_err(errno)
        });
        match r {
            Ok(()) => {
                self.rec.commit(true, true);
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match sys::fstatvfs(self.fd()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _ns = self.ns.read();
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let _order = self.live.order.lock();
        if let Err(e) = sys::setxattr(&sys::proc_path(self.fd(), &path), name, value, flags) {
            return reply.error(errno(e));
        }
        if name.as_bytes().starts_with(b"system.posix_acl_") {
            // An access ACL rewrites the mode's group bits; without FUSE_POSIX_ACL the kernel
            // does not read the attributes again.
            self.live.attrs_changed(ino.0);
        }
        if name.as_bytes().starts_with(b"user.") {
            if let Some(p) = self.live.versioned_ino(ino.0) {
                self.rec.send(FsEvent::Xattr {
                    path: p,
                    name: name.as_bytes().to_vec(),
                    value: Some(value.to_vec()),
                });
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _ns = self.ns.read();
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match sys::getxattr(&sys::proc_path(self.fd(), &path), name, size as usize) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _ns = self.ns.read();
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match sys::listxattr(&sys::proc_path(self.fd(), &path), size as usize) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _ns = self.ns.read();
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let _order = self.live.order.lock();
        if let Err(e) = sys::removexattr(&sys::proc_path(self.fd(), &path), name) {
            return reply.error(errno(e));
        }
        if name.as_bytes().starts_with(b"user.") {
            if let Some(p) = self.live.versioned_ino(ino.0) {
                self.rec.send(FsEvent::Xattr {
                    path: p,
                    name: name.as_bytes().to_vec(),
                    value: None,
                });
            }
        }
        reply.ok();
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Asked only without default_permissions, that is in a user's own mount, where every
        // caller is that user: the real file system answers for the daemon, running as them.
        // (`access(2)` and `chdir(2)` come here; everything else the daemon's own calls check.)
        let _ns = self.ns.read();
        match self
            .path(ino)
            .and_then(|p| sys::access_at(self.fd(), &p, mask.bits()).map_err(errno))
        {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _span = tracing::debug_span!("create", parent = parent.0, ?name, flags).entered();
        let _ns = self.ns.write();
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let fd = self.fd();
        let _order = self.live.order.lock();
        let base = (flags & !NOT_PASSED_ON) | libc::O_NOFOLLOW;
        let perm = mode & !umask & 0o7777;
        // Try to create; if it exists and the caller did not ask for O_EXCL, open what is there.
        let (file, created) =
            match sys::open_at(fd, &path, base | libc::O_CREAT | libc::O_EXCL, perm) {
                Ok(f) => (f, true),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                    match sys::open_at(fd, &path, base, 0) {
                        Ok(f) => (f, false),
                        Err(e) => return reply.error(errno(e)),
                    }
                }
                Err(e) => return reply.error(errno(e)),
            };
        if created {
            self.give_to_caller(req, Self::parent_of(&path), &path);
        }
        let st = match sys::fstat(file.as_raw_fd()) {
            Ok(st) => st,
            Err(e) => return reply.error(errno(e)),
        };
        if created {
            self.creation_event(&path, &st);
        }
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let attr = self.entry(parent, name, &st);
        if !created && flags & libc::O_TRUNC != 0 {
            if let Some(p) = self.live.versioned_ino(attr.ino.0) {
                self.rec.send(FsEvent::Truncate { path: p, size: 0 });
            }
        }
        let mode = self.io_mode(attr.ino.0, &path, || st.st_mode, |f| reply.open_backing(f));
        let passed = matches!(mode, Mode::Passthrough(_));
        let fh = self.add_handle(Handle {
            file,
            ino: attr.ino.0,
            append: flags & libc::O_APPEND != 0,
            wrote: AtomicBool::new(false),
            truncated: AtomicBool::new(created || flags & libc::O_TRUNC != 0),
            writer: writable.then(|| (req.pid(), comm_of(req.pid()))),
            passed,
        });
        match mode {
            Mode::Passthrough(b) => reply.created_passthrough(
                &ENTRY_TTL,
                &attr,
                Generation(0),
                fh,
                PASSTHROUGH_FLAGS,
                &b,
            ),
            Mode::Cached => reply.created(
                &ENTRY_TTL,
                &attr,
                Generation(0),
                fh,
                FopenFlags::FOPEN_KEEP_CACHE | direct_writes(&path, flags),
            ),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let _order = self.live.order.lock();
        let before = sys::fstat(h.file.as_raw_fd())
            .map(|s| s.st_size as u64)
            .unwrap_or(0);
        if let Err(e) = sys::fallocate(&h.file, mode, offset, length) {
            return reply.error(errno(e));
        }
        h.wrote.store(true, Ordering::Relaxed);
        // Like a write, it clears the set-ID bits when the caller is not privileged; FALLOCATE
        // carries no flag for that (WRITE and SETATTR do), so it is judged as for a truncation.
        let dropped = match self.drop_suid_if(req.uid() != 0, ino, &h.file) {
            Ok(m) => m,
            Err(e) => return reply.error(errno(e)),
        };
        if let Some(p) = self.live.versioned_ino(ino.0) {
            if mode == 0 || mode == libc::FALLOC_FL_KEEP_SIZE {
                let after = sys::fstat(h.file.as_raw_fd())
                    .map(|s| s.st_size as u64)
                    .unwrap_or(0);
                if after != before {
                    self.rec.send(FsEvent::Truncate {
                        path: p.clone(),
                        size: after,
                    });
                }
            } else {
                // Punching, zeroing, collapsing or inserting ranges moves bytes around: capture
                // the file as it now is.
                self.rec.send(self.live.import(p.clone()));
            }
            self.record_mode(p, dropped);
        }
        reply.ok();
    }

    /// No ioctl reaches the real file: its commands carry pointers and sizes the daemon cannot
    /// check. ENOTTY is what the kernel answers for a file system without ioctls, and what
    /// `isatty` expects (Python asks `TCGETS` of every file it opens). fuser's default answer
    /// also logged a warning for each: a line in the daemon's log per open, and ~5% of the
    /// request threads' CPU in the small-file benchmark.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        // SAFETY: a valid open fd; lseek has no memory effects.
        let r = unsafe { libc::lseek(h.file.as_raw_fd(), offset, whence) };
        if r < 0 {
            reply.error(errno(io::Error::last_os_error()))
        } else {
            reply.offset(r)
        }
    }

    /// Not offered: the kernel then copies by reading and writing, and the recorder sees the
    /// writes as any others (a copy made by the real file system would have to be read back
    /// to be versioned). The kernel asks once per mount; this answer, unlike fuser's default,
    /// logs no warning.
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::ENOSYS);
    }
}
