//! The read-only time-travel view: any past moment as a directory.
//!
//! Mounted with `--at WHEN`, the mount point is the whole tree as it was then. Without, it holds:
//! - `at/` — enter any moment by name (`cd at/10m`, `cd "at/2026-11-21 09:00"`, `at/1042`,
//!   `at/before-upgrade`); `ls at/` lists marks, the ends of mount sessions, and hourly points;
//! - `marks/<name>/` — the tree at each mark;
//! - `history/<path>` — every file of the current tree as a directory of its versions, one file
//!   per version named by its time and sequence number.
//!
//! Nothing is loaded until looked at: an inode is a (moment, node) pair resolved on lookup and
//! forgotten when the kernel forgets it, and file reads stream chunks from the store. Every
//! write fails with `EROFS` (the mount is read-only).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, ReplyXattr, Request,
};
use parking_lot::Mutex;

use crate::ids::{NodeId, Seq};
use crate::relpath::RelPath;
use crate::store::catalog::{NodeKind, NodeVersion};
use crate::store::content::{zero_bytes, ContentReader, ReadAt};
use crate::store::Store;

/// Past moments never change: the kernel may cache them for long.
const TTL: Duration = Duration::from_secs(60);

/// What an inode of the view stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// The mount point (in the `at/`, `marks/`, `history/` layout).
    Top,
    /// `at/`.
    At,
    /// `marks/`.
    Marks,
    /// `history/` or a directory below it (a directory of the current tree).
    HistDir(RelPath),
    /// `history/<file>`: the versions of one file.
    HistFile(RelPath),
    /// One version inside `history/<file>/`.
    HistVersion(NodeId, Seq),
    /// A node of the tree as of a moment (the tree's root is `NodeId::ROOT`).
    Node(Seq, NodeId),
    /// An empty `<db>-shm` or `<db>-wal` where a moment has none, beside the `<db>-wal` or
    /// WAL-mode `<db>` node given (see [`stand_in_for`]).
    StandIn(Seq, NodeId),
}

/// SQLite opens a database in WAL mode only with its `-wal` and `-shm` beside it: on a
/// read-only file system it cannot create them, and fails ("unable to open database file").
/// `-shm` files are not versioned (they hold nothing but an index SQLite rebuilds from the
/// `-wal`), and a `-wal` is gone at moments after a checkpoint removed it. So a past moment has
/// an empty read-only stand-in wherever SQLite needs one: a `<db>-shm` beside each `<db>-wal`
/// (listed there), and a `<db>-wal` and `<db>-shm` beside a database in WAL mode that had none
/// (found when SQLite looks them up). An empty log is no log, and with an empty `-shm` SQLite
/// builds the index in its own memory: it reads the database as of that moment.
///
/// The database a stand-in's name goes with, and whether it is its `-wal`.
fn stand_in_for(name: &str) -> Option<(&str, bool)> {
    name.strip_suffix("-shm")
        .map(|db| (db, false))
        .or_else(|| name.strip_suffix("-wal").map(|db| (db, true)))
}

struct Inode {
    key: Key,
    lookups: u64,
}

/// The read-only view.
pub struct Browse {
    store: Arc<Store>,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, Arc<ContentReader>>>,
    next_fh: Mutex<u64>,
}

#[derive(Default)]
struct Inodes {
    by_ino: HashMap<u64, Inode>,
    by_key: HashMap<Key, u64>,
    next: u64,
}

impl Inodes {
    fn get(&mut self, key: Key) -> u64 {
        if let Some(&ino) = self.by_key.get(&key) {
            self.by_ino.get_mut(&ino).expect("both maps agree").lookups += 1;
            return ino;
        }
        self.next += 1;
        let ino = self.next;
        self.by_key.insert(key.clone(), ino);
        self.by_ino.insert(ino, Inode { key, lookups: 1 });
        ino
    }
}

fn name_str(name: &OsStr) -> Result<&str, Errno> {
    name.to_str().ok_or(Errno::ENOENT)
}

impl Browse {
    /// A view of `store`: fixed at `at`, or the `at/`, `marks/`, `history/` layout.
    pub fn new(store: Arc<Store>, at: Option<Seq>) -> Browse {
        let mut inodes = Inodes {
            next: 1,
            ..Default::default()
        };
        let root = match at {
            Some(seq) => Key::Node(seq, NodeId::ROOT),
            None => Key::Top,
        };
        inodes.by_key.insert(root.clone(), 1);
        inodes.by_ino.insert(
            1,
            Inode {
                key: root,
                lookups: u64::MAX / 2,
            },
        );
        Browse {
            store,
            inodes: Mutex::new(inodes),
            files: Mutex::new(HashMap::new()),
            next_fh: Mutex::new(1),
        }
    }

    fn key(&self, ino: INodeNo) -> Result<Key, Errno> {
        self.inodes
            .lock()
            .by_ino
            .get(&ino.0)
            .map(|i| i.key.clone())
            .ok_or(Errno::ENOENT)
    }

    fn dir_attr(&self, ino: u64) -> FileAttr {
        let t = self
            .store
            .epoch(self.store.head())
            .ok()
            .flatten()
            .map(|e| e.time_ns)
            .unwrap_or(0);
        attr_of(ino, FileType::Directory, 0o555, 0, t, 0, 0, 2)
    }

    fn node_attr(&self, ino: u64, v: &NodeVersion) -> FileAttr {
        let kind = match v.kind {
            NodeKind::Dir => FileType::Directory,
            NodeKind::Symlink => FileType::Symlink,
            NodeKind::File => FileType::RegularFile,
        };
        // The mode it had, write bits included: the mount is read-only (every write fails with
        // EROFS), and a file copied out with `cp -a` gets its own mode back, not a read-only one.
        let perm = v.meta.mode & 0o7777;
        let mut a = attr_of(
            ino,
            kind,
            perm,
            v.size(),
            v.meta.mtime_ns,
            v.meta.uid,
            v.meta.gid,
            1,
        );
        // A sparse file shows its holes in `st_blocks`, as on disk: `cp` and `tar` look at it
        // to decide whether to ask for holes (`lseek`) and write a sparse copy.
        if v.kind == NodeKind::File && v.size() >= SPARSE_MIN {
            if let Ok(Some(zeros)) = zero_bytes(self.store.chunks(), &v.content, SPARSE_LEAVES) {
                a.blocks = (v.size() - zeros.min(v.size())).div_ceil(512);
            }
        }
        a
    }

    fn attr(&self, ino: u64, key: &Key) -> Result<FileAttr, Errno> {
        match key {
            Key::Top | Key::At | Key::Marks | Key::HistDir(_) | Key::HistFile(_) => {
                Ok(self.dir_attr(ino))
            }
            Key::HistVersion(node, seq) | Key::Node(seq, node) => {
                let (_, v) = self.version(*node, *seq)?;
                Ok(self.node_attr(ino, &v))
            }
            Key::StandIn(seq, wal) => {
                let (_, v) = self.version(*wal, *seq)?;
                let perm = v.meta.mode & 0o444;
                Ok(attr_of(
                    ino,
                    FileType::RegularFile,
                    perm,
                    0,
                    v.meta.mtime_ns,
                    v.meta.uid,
                    v.meta.gid,
                    1,
                ))
            }
        }
    }

    fn version(&self, node: NodeId, seq: Seq) -> Result<(Seq, NodeVersion), Errno> {
        if node == NodeId::ROOT {
            let e = self
                .store
                .stat(&RelPath::root(), seq)
                .map_err(|_| Errno::EIO)?
                .ok_or(Errno::ENOENT)?;
            return Ok((e.version_seq, e.version));
        }
        self.store
            .node_at(node, seq)
            .map_err(|_| Errno::EIO)?
            .ok_or(Errno::ENOENT)
    }

    /// The `user.` attributes the history keeps for inode `ino` (none for the view's own
    /// directories and the stand-ins).
    fn xattrs(&self, ino: INodeNo) -> Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>, Errno> {
        match self.key(ino)? {
            Key::Node(seq, node) | Key::HistVersion(node, seq) => {
                Ok(self.version(node, seq)?.1.xattrs)
            }
            _ => Ok(Default::default()),
        }
    }

    /// A moment typed as a directory name under `at/`.
    fn moment(&self, name: &str) -> Option<Seq> {
        crate::when::resolve(&self.store, name).ok()
    }

    /// What `name` in the directory `parent` is.
    fn child(&self, parent: &Key, name: &str) -> Result<Key, Errno> {
        match parent {
            Key::Top => match name {
                "at" => Ok(Key::At),
                "marks" => Ok(Key::Marks),
                "history" => Ok(Key::HistDir(RelPath::root())),
                _ => Err(Errno::ENOENT),
            },
            Key::At => self
                .moment(name)
                .map(|s| Key::Node(s, NodeId::ROOT))
                .ok_or(Errno::ENOENT),
            Key::Marks => match self.store.mark(name) {
                Ok(Some(m)) => Ok(Key::Node(m.seq, NodeId::ROOT)),
                _ => Err(Errno::ENOENT),
            },
            Key::HistDir(dir) => {
                let path = dir.join(name).map_err(|_| Errno::ENOENT)?;
                let e = self
                    .store
                    .stat(&path, self.store.head())
                    .map_err(|_| Errno::EIO)?
                    .ok_or(Errno::ENOENT)?;
                Ok(match e.version.kind {
                    NodeKind::Dir => Key::HistDir(path),
                    _ => Key::HistFile(path),
                })
            }
            Key::HistFile(path) => self
                .versions(path)?
                .into_iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, node, seq)| Key::HistVersion(node, seq))
                .ok_or(Errno::ENOENT),
            Key::Node(seq, node) => {
                let (_, v) = self.version(*node, *seq)?;
                if v.kind != NodeKind::Dir {
                    return Err(Errno::ENOTDIR);
                }
                match self.store.dentry_at(*node, name, *seq) {
                    Ok(found) => match found.and_then(|(_, d)| d.node) {
                        Some(n) => Ok(Key::Node(*seq, n)),
                        None => self.stand_in(parent, *seq, name),
                    },
                    Err(_) => Err(Errno::EIO),
                }
            }
            Key::HistVersion(..) | Key::StandIn(..) => Err(Errno::ENOTDIR),
        }
    }

    /// The empty stand-in `name` is in the directory `dir` at `seq`, if SQLite needs one there
    /// (see [`stand_in_for`]).
    fn stand_in(&self, dir: &Key, seq: Seq, name: &str) -> Result<Key, Errno> {
        let (db, is_wal) = stand_in_for(name).ok_or(Errno::ENOENT)?;
        let file = |n: &str| match self.child(dir, n) {
            Ok(Key::Node(seq, node)) => self
                .version(node, seq)
                .ok()
                .filter(|(_, v)| v.kind == NodeKind::File)
                .map(|(_, v)| (node, v)),
            _ => None,
        };
        if !is_wal {
            if let Some((wal, _)) = file(&format!("{db}-wal")) {
                return Ok(Key::StandIn(seq, wal));
            }
        }
        match file(db) {
            Some((node, v)) if self.in_wal_mode(&v) => Ok(Key::StandIn(seq, node)),
            _ => Err(Errno::ENOENT),
        }
    }

    /// Whether the file `v` is an SQLite database in WAL mode (its header says so).
    fn in_wal_mode(&self, v: &NodeVersion) -> bool {
        let mut head = [0u8; 20];
        matches!(
            self.store.reader(v.content.clone()).read_at(0, &mut head),
            Ok(20)
        ) && head.starts_with(b"SQLite format 3\0")
            && head[18] == 2
            && head[19] == 2
    }

    /// The versions of a file, named `YYYY-MM-DD HH:MM:SS #seq`.
    fn versions(&self, path: &RelPath) -> Result<Vec<(String, NodeId, Seq)>, Errno> {
        let h = self.store.history(path, 100_000).map_err(|_| Errno::EIO)?;
        let mut out = Vec::new();
        for e in h {
            let Some(vid) = e.version else { continue };
            let Ok(Some((node, seq))) = self.store.version(vid) else {
                continue;
            };
            if e.kind == NodeKind::Dir {
                continue;
            }
            out.push((
                format!("{} #{}", crate::when::show_time(e.time_ns), e.seq),
                node,
                seq,
            ));
        }
        out.reverse();
        Ok(out)
    }

    /// Every name in a directory, with what it is.
    fn children(&self, key: &Key) -> Result<Vec<(String, Key)>, Errno> {
        Ok(match key {
            Key::Top => vec![
                ("at".into(), Key::At),
                ("marks".into(), Key::Marks),
                ("history".into(), Key::HistDir(RelPath::root())),
            ],
            Key::At => self.moments()?,
            Key::Marks => self
                .store
                .marks()
                .map_err(|_| Errno::EIO)?
                .into_iter()
                .map(|m| (m.name, Key::Node(m.seq, NodeId::ROOT)))
                .collect(),
            Key::HistDir(dir) => self
                .store
                .list(dir, self.store.head())
                .map_err(|_| Errno::EIO)?
                .into_iter()
                .filter_map(|d| {
                    let p = dir.join(&d.name).ok()?;
                    Some((
                        d.name,
                        if d.kind == NodeKind::Dir {
                            Key::HistDir(p)
                        } else {
                            Key::HistFile(p)
                        },
                    ))
                })
                .collect(),
            Key::HistFile(path) => self
                .versions(path)?
                .into_iter()
                .map(|(n, node, seq)| (n, Key::HistVersion(node, seq)))
                .collect(),
            Key::Node(seq, node) => {
                let mut kids: Vec<(String, Key)> = self
                    .store
                    .list_node(*node, *seq)
                    .map_err(|_| Errno::EIO)?
                    .into_iter()
                    .map(|d| (d.name, Key::Node(*seq, d.node)))
                    .collect();
                let names: std::collections::HashSet<String> =
                    kids.iter().map(|(n, _)| n.clone()).collect();
                let mut shms = Vec::new();
                for (name, key) in &kids {
                    let Some(db) = name.strip_suffix("-wal") else {
                        continue;
                    };
                    let shm = format!("{db}-shm");
                    if let (false, Key::Node(seq, wal)) = (names.contains(&shm), key) {
                        if self.version(*wal, *seq).map(|(_, v)| v.kind) == Ok(NodeKind::File) {
                            shms.push((shm, Key::StandIn(*seq, *wal)));
                        }
                    }
                }
                kids.extend(shms);
                kids.sort_by(|a, b| a.0.cmp(&b.0));
                kids
            }
            Key::HistVersion(..) | Key::StandIn(..) => return Err(Errno::ENOTDIR),
        })
    }

    /// What `ls at/` shows: marks, the ends of sessions, and one point per hour with changes.
    fn moments(&self) -> Result<Vec<(String, Key)>, Errno> {
        let mut out: Vec<(String, Key)> = Vec::new();
        for m in self.store.marks().map_err(|_| Errno::EIO)? {
            out.push((m.name, Key::Node(m.seq, NodeId::ROOT)));
        }
        let mut points: std::collections::BTreeMap<String, Seq> = Default::default();
        for s in self.store.sessions().map_err(|_| Errno::EIO)? {
            if let Some(end) = s.ended_ns {
                if let Ok(Some(seq)) = self.store.seq_at_time(end) {
                    points.insert(crate::when::show_time(end), seq);
                }
            }
        }
        // Hourly points: the last moment of every hour that had changes (newest 24×90 hours).
        let mut last_hour = String::new();
        for e in self
            .store
            .epochs_rev(Seq(1), self.store.head())
            .take(200_000)
        {
            let (seq, epoch) = e.map_err(|_| Errno::EIO)?;
            let hour = crate::when::show_time(epoch.time_ns)[..13].to_string() + ":00";
            if hour != last_hour {
                points.entry(hour.clone()).or_insert(seq);
                last_hour = hour;
                if points.len() > 2160 {
                    break;
                }
            }
        }
        for (name, seq) in points {
            out.push((name, Key::Node(seq, NodeId::ROOT)));
        }
        Ok(out)
    }
}

/// Files from this size on are looked at for chunks of zeros when their attributes are asked.
const SPARSE_MIN: u64 = 1 << 20;
/// How many distinct chunk lists of a file are looked into for zeros before it counts as data.
const SPARSE_LEAVES: usize = 8;

#[allow(clippy::too_many_arguments)]
fn attr_of(
    ino: u64,
    kind: FileType,
    perm: u32,
    size: u64,
    mtime_ns: i64,
    uid: u32,
    gid: u32,
    nlink: u32,
) -> FileAttr {
    let t = if mtime_ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(mtime_ns as u64)
    } else {
        UNIX_EPOCH
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind,
        perm: perm as u16,
        nlink,
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// Answers a getxattr or listxattr of `value`: its size when asked with `size` 0, `ERANGE` when
/// it does not fit in `size`.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32)
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(value)
    }
}

impl Filesystem for Browse {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // Sequential reads of past files in 1 MiB requests, not the kernel's default 128 KiB.
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = tracing::trace_span!("browse.lookup", parent = parent.0, ?name).entered();
        let r = (|| {
            let pkey = self.key(parent)?;
            let key = self.child(&pkey, name_str(name)?)?;
            let ino = self.inodes.lock().get(key.clone());
            self.attr(ino, &key)
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut t = self.inodes.lock();
        if let Some(i) = t.by_ino.get_mut(&ino.0) {
            i.lookups = i.lookups.saturating_sub(nlookup);
            if i.lookups == 0 {
                let key = t.by_ino.remove(&ino.0).expect("present").key;
                t.by_key.remove(&key);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.key(ino).and_then(|k| self.attr(ino.0, &k)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self.key(ino).and_then(|k| match k {
            Key::Node(seq, node) | Key::HistVersion(node, seq) => {
                let (_, v) = self.version(node, seq)?;
                if v.kind == NodeKind::Symlink {
                    Ok(v.target)
                } else {
                    Err(Errno::EINVAL)
                }
            }
            _ => Err(Errno::EINVAL),
        });
        match r {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let r = self.key(ino).and_then(|k| match k {
            Key::Node(seq, node) | Key::HistVersion(node, seq) => {
                let (_, v) = self.version(node, seq)?;
                if v.kind != NodeKind::File {
                    return Err(Errno::EISDIR);
                }
                Ok(self.store.reader(v.content).streaming())
            }
            Key::StandIn(..) => Ok(self.store.reader(Default::default())),
            _ => Err(Errno::EISDIR),
        });
        match r {
            Ok(reader) => {
                let mut n = self.next_fh.lock();
                *n += 1;
                self.files.lock().insert(*n, Arc::new(reader));
                reply.opened(FileHandle(*n), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(r) = self.files.lock().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        match r.read_at(offset, &mut buf) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => {
                tracing::error!(error = %e, "reading a past version failed");
                reply.error(Errno::EIO)
            }
        }
    }

    /// `SEEK_DATA` and `SEEK_HOLE`: holes are the file's chunks of zeros, so a sparse file
    /// copies out sparse (the kernel handles every other `whence` itself).
    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        let Some(r) = self.files.lock().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        if offset >= r.len() {
            return reply.error(Errno::ENXIO);
        }
        let found = match whence {
            libc::SEEK_DATA => {
                let mut at = offset;
                loop {
                    match r.zeros_at(at) {
                        0 => break Ok(Some(at)),
                        z if at + z >= r.len() => break Ok(None),
                        z => at += z,
                    }
                }
            }
            libc::SEEK_HOLE => r.next_zeros(offset).map(Some),
            _ => return reply.error(Errno::EINVAL),
        };
        match found {
            Ok(Some(at)) => reply.offset(at as i64),
            Ok(None) => reply.error(Errno::ENXIO),
            Err(e) => {
                tracing::error!(error = %e, "looking for holes in a past version failed");
                reply.error(Errno::EIO)
            }
        }
    }

    /// close(2): nothing was written, so nothing to flush (an unanswered flush is logged as
    /// "not implemented" on every close).
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: fuser::ReplyEmpty,
    ) {
        reply.ok();
    }

    /// ENOTTY, as for a file system without ioctls, and without fuser's default warning in the
    /// log for each (Python asks `TCGETS` of every file it opens).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        self.files.lock().remove(&fh.0);
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        use std::os::unix::ffi::OsStrExt;
        match self.xattrs(ino) {
            Ok(x) => match x.get(name.as_bytes()) {
                Some(v) => reply_xattr(reply, size, v),
                None => reply.error(Errno::NO_XATTR),
            },
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.xattrs(ino) {
            Ok(x) => {
                let mut names = Vec::new();
                for n in x.keys() {
                    names.extend_from_slice(n);
                    names.push(0);
                }
                reply_xattr(reply, size, &names)
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let key = match self.key(ino) {
            Ok(k) => k,
            Err(e) => return reply.error(e),
        };
        let kids = match self.children(&key) {
            Ok(k) => k,
            Err(e) => return reply.error(e),
        };
        let mut entries = vec![
            (ino.0, FileType::Directory, ".".to_string()),
            (ino.0, FileType::Directory, "..".to_string()),
        ];
        for (name, k) in kids.into_iter().skip(offset.saturating_sub(2) as usize) {
            let kind = match &k {
                Key::Node(seq, node) | Key::HistVersion(node, seq) => {
                    match self.version(*node, *seq).map(|(_, v)| v.kind) {
                        Ok(NodeKind::File) => FileType::RegularFile,
                        Ok(NodeKind::Symlink) => FileType::Symlink,
                        _ => FileType::Directory,
                    }
                }
                Key::StandIn(..) => FileType::RegularFile,
                _ => FileType::Directory,
            };
            // Numbers in readdir are hints; the kernel looks names up before using them.
            entries.push((u64::MAX - entries.len() as u64, kind, name));
        }
        let start = if offset >= 2 { 2 } else { offset as usize };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(start) {
            let off = if i < 2 {
                i as u64 + 1
            } else {
                offset.max(2) + (i as u64 - 2) + 1
            };
            if reply.add(INodeNo(*ino), off, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_table_hands_out_one_number_per_key_and_forgets() {
        let mut t = Inodes {
            next: 1,
            ..Default::default()
        };
        let a = t.get(Key::At);
        assert_eq!(t.get(Key::At), a);
        assert_ne!(t.get(Key::Marks), a);
        assert_eq!(t.by_ino[&a].lookups, 2);
    }
}
