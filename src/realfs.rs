//! Writing into the real tree: how restores and rollbacks put files back.
//!
//! Paths are resolved under a root that is either the plain directory (offline) or
//! `/proc/self/fd/<fd>` for the directory fd the daemon opened before mounting over it, so the
//! daemon's writes of contents never loop back through its mount.
//!
//! A rollback in a mounted tree also names the mount ([`RealTree::through`]): the steps that
//! change what a name refers to (the rename that puts a restored file in place, removals,
//! new directories) go through it, so that the kernel sees them as it sees any program's:
//! its caches stay right, and programs watching the tree (inotify: OpenClaw reloads its
//! config and its skills, and reindexes its memory, when they change) are told. Only the
//! contents are written beside the mount, into temp files the kernel has never seen.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::relpath::RelPath;
use crate::store::catalog::Meta;
use crate::store::content::ReadAt;

/// The longest file name Linux file systems take, in bytes.
const NAME_MAX: usize = 255;

/// A real directory tree that restores write into.
#[derive(Clone, Debug)]
pub struct RealTree {
    root: PathBuf,
    /// Sync each file and its directory before the call returns (rollback, in a live tree).
    /// Off for a restore into a new directory, which syncs the whole filesystem once at the end.
    each_durable: bool,
    /// The same tree seen through the mount laid over it, when there is one: renames,
    /// removals and new directories go through it (see the module doc).
    through: Option<PathBuf>,
}

impl RealTree {
    /// The tree under `root`.
    pub fn new(root: impl Into<PathBuf>) -> RealTree {
        RealTree {
            root: root.into(),
            each_durable: true,
            through: None,
        }
    }

    /// The tree under `root`, mounted over at `mount`: see the module doc.
    pub fn through(root: impl Into<PathBuf>, mount: impl Into<PathBuf>) -> RealTree {
        RealTree {
            root: root.into(),
            each_durable: true,
            through: Some(mount.into()),
        }
    }

    /// Whether renames, removals and new directories go through a mount.
    pub fn is_through(&self) -> bool {
        self.through.is_some()
    }

    /// A tree being filled from scratch: files are still written atomically (temp + rename),
    /// but made durable together by [`RealTree::sync_all`] instead of one by one.
    pub fn new_batch(root: impl Into<PathBuf>) -> RealTree {
        RealTree {
            root: root.into(),
            each_durable: false,
            through: None,
        }
    }

    /// Makes everything written below the root durable (`syncfs`).
    pub fn sync_all(&self) -> io::Result<()> {
        let f = File::open(&self.root)?;
        // SAFETY: syncfs takes any open fd and touches no memory of ours.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The real path of `p`.
    pub fn path(&self, p: &RelPath) -> PathBuf {
        if p.is_root() {
            self.root.clone()
        } else {
            self.root.join(p.as_str())
        }
    }

    /// Where the kernel must see `p` change: through the mount if there is one, else the real
    /// path.
    fn seen(&self, p: &RelPath) -> PathBuf {
        match &self.through {
            Some(m) if p.is_root() => m.clone(),
            Some(m) => m.join(p.as_str()),
            None => self.path(p),
        }
    }

    /// A fresh temp name beside `path`, as a path in the tree. It carries as much of the
    /// file's name as fits in a name's 255 bytes: a file with a name near that length is put
    /// back like any other (whole, the temp name made `ENAMETOOLONG` of its rollback).
    fn temp_beside(path: &RelPath) -> io::Result<RelPath> {
        const SUFFIX_LEN: usize = ".clawfs-restore.".len() + 8;
        let mut stem = path.name();
        let room = NAME_MAX - 1 - SUFFIX_LEN;
        if stem.len() > room {
            let mut end = room;
            while !stem.is_char_boundary(end) {
                end -= 1;
            }
            stem = &stem[..end];
        }
        let name = format!(".{stem}.clawfs-restore.{:08x}", rand::random::<u32>());
        let parent = path.split().map(|(p, _)| p).unwrap_or_else(RelPath::root);
        parent
            .join(&name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
    }

    /// Puts the temp file `tmp` (written beside the mount) in place of `path`, replacing an
    /// empty directory there, and makes the rename durable.
    fn put_in_place(&self, tmp: &RelPath, path: &RelPath) -> io::Result<()> {
        let dest = self.seen(path);
        if dest.is_dir() && !dest.is_symlink() {
            fs::remove_dir(&dest)?;
        }
        fs::rename(self.seen(tmp), &dest)?;
        if self.each_durable {
            sync_dir(self.path(path).parent().unwrap_or(&self.root))?;
        }
        Ok(())
    }

    /// Writes `content` to `path` atomically: a temp file beside it, synced, then renamed over.
    pub fn put_file(
        &self,
        path: &RelPath,
        content: &dyn ReadAt,
        meta: &Meta,
        xattrs: &BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> io::Result<()> {
        let tmp_rel = Self::temp_beside(path)?;
        let tmp = self.path(&tmp_rel);
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            copy_out(content, &mut f)?;
            f.set_permissions(fs::Permissions::from_mode(meta.mode & 0o7777))?;
            // Ownership is best effort: only root may give files away.
            let _ = std::os::unix::fs::fchown(&f, Some(meta.uid), Some(meta.gid));
            for (k, v) in xattrs {
                set_xattr(&tmp, k, v)?;
            }
            if self.each_durable {
                f.sync_all()?;
            }
            set_mtime(&f, meta.mtime_ns)?;
            self.put_in_place(&tmp_rel, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Makes `path` a symlink to `target`, atomically.
    pub fn put_symlink(&self, path: &RelPath, target: &str) -> io::Result<()> {
        let tmp_rel = Self::temp_beside(path)?;
        let tmp = self.path(&tmp_rel);
        std::os::unix::fs::symlink(target, &tmp)?;
        self.put_in_place(&tmp_rel, path).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }

    /// Gives the file at `from` the further name `to` (a hard link), which must not exist.
    pub fn link(&self, from: &RelPath, to: &RelPath) -> io::Result<()> {
        fs::hard_link(self.seen(from), self.seen(to))
    }

    /// Gives the file at `from` the further name `path` (a hard link) in place of what is
    /// there, atomically: a link beside it, renamed over.
    pub fn link_in_place(&self, from: &RelPath, path: &RelPath) -> io::Result<()> {
        let tmp = Self::temp_beside(path)?;
        fs::hard_link(self.seen(from), self.seen(&tmp))?;
        self.put_in_place(&tmp, path).inspect_err(|_| {
            let _ = fs::remove_file(self.seen(&tmp));
        })
    }

    /// Makes `path` a directory with `mode` (an existing one just gets the mode).
    pub fn mkdir(&self, path: &RelPath, mode: u32) -> io::Result<()> {
        let p = self.seen(path);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                fs::remove_file(&p)?;
                fs::create_dir(&p)?;
            }
            Err(_) => fs::create_dir(&p)?,
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777))
    }

    /// Removes a file, symlink or empty directory. A directory that still holds anything
    /// (files that are not versioned) fails with `ENOTEMPTY` and stays.
    pub fn remove(&self, path: &RelPath) -> io::Result<()> {
        let p = self.seen(path);
        let m = fs::symlink_metadata(&p)?;
        if m.is_dir() {
            fs::remove_dir(&p)
        } else {
            fs::remove_file(&p)
        }
    }
}

/// Streams `content` into `out` (a new, empty file) in 1 MiB blocks. Runs of zeros are left
/// as holes, as `cp --sparse` does: a sparse file comes back sparse instead of filling the disk
/// with zeros it never held.
pub fn copy_out(content: &dyn ReadAt, out: &mut File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    const BLOCK: u64 = 1 << 20;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut off = 0u64;
    let len = content.len();
    while off < len {
        let zeros = content.zeros_at(off).min(len - off);
        if zeros >= BLOCK {
            off += zeros - zeros % BLOCK;
            continue;
        }
        let n = content
            .read_at(off, &mut buf)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stored content shorter than its size",
            ));
        }
        if buf[..n].iter().any(|&b| b != 0) {
            out.write_all_at(&buf[..n], off)?;
        }
        off += n as u64;
    }
    out.set_len(len)
}

fn set_mtime(f: &File, mtime_ns: i64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let ts = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: mtime_ns.rem_euclid(1_000_000_000),
        },
    ];
    // SAFETY: `f` is an open descriptor and `ts` points at two valid timespecs.
    let r = unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes())?;
    let n = CString::new(name)?;
    // SAFETY: both strings are NUL-terminated and `value` is a valid slice.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
