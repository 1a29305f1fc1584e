//! The overlay's inode table: which names the kernel knows each inode by.
//!
//! FUSE node ids are the real inode numbers (so `st_ino` is the real one and survives renames,
//! as OpenClaw checks), except the root, which FUSE calls 1. Each inode remembers the
//! (parent, name) links the kernel has looked up, so its path can be rebuilt for `*at()` calls
//! and for the recorder, and a directory rename costs O(1) here too.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use parking_lot::RwLock;

/// FUSE's id of the root directory.
pub const ROOT: u64 = 1;

#[derive(Debug, Default)]
struct Inode {
    links: Vec<(u64, OsString)>,
    lookups: u64,
    /// An `O_PATH` descriptor held while the kernel knows the inode: the file system cannot
    /// free the inode, so its number cannot be reused for another file while the kernel still
    /// uses it as a node id (what libfuse's passthrough does too).
    _pin: Option<std::os::fd::OwnedFd>,
}

/// Inode number → known links, with the kernel's lookup counts, and the links the other way
/// round, so that an unlink or rename finds its inode without looking at every other one.
#[derive(Debug, Default)]
struct Table {
    inodes: HashMap<u64, Inode>,
    /// parent → name → inode.
    names: HashMap<u64, HashMap<OsString, u64>>,
}

impl Table {
    /// Links `ino` as `name` in `parent`, first among its links; whatever that name linked
    /// before loses the link.
    fn link(&mut self, ino: u64, parent: u64, name: &OsStr) {
        self.unlink(parent, name);
        self.names
            .entry(parent)
            .or_default()
            .insert(name.to_os_string(), ino);
        if let Some(e) = self.inodes.get_mut(&ino) {
            e.links.insert(0, (parent, name.to_os_string()));
        }
    }

    /// Removes the link `name` in `parent`, whichever inode had it.
    fn unlink(&mut self, parent: u64, name: &OsStr) {
        if let Some(&ino) = self.names.get(&parent).and_then(|d| d.get(name)) {
            self.unlink_from(ino, parent, name);
        }
    }

    /// Removes the link `name` in `parent` from `ino`'s links, and from the name index if the
    /// name is `ino`'s there.
    fn unlink_from(&mut self, ino: u64, parent: u64, name: &OsStr) {
        if let Some(dir) = self.names.get_mut(&parent) {
            if dir.get(name) == Some(&ino) {
                dir.remove(name);
                if dir.is_empty() {
                    self.names.remove(&parent);
                }
            }
        }
        if let Some(e) = self.inodes.get_mut(&ino) {
            e.links.retain(|(p, n)| !(*p == parent && n == name));
        }
    }
}

/// The inode table of one mount.
#[derive(Debug)]
pub struct Inodes {
    map: RwLock<Table>,
    root_ino: u64,
}

impl Inodes {
    /// A table whose root directory has real inode number `root_ino`.
    pub fn new(root_ino: u64) -> Inodes {
        let mut t = Table::default();
        t.inodes.insert(ROOT, Inode::default());
        Inodes {
            map: RwLock::new(t),
            root_ino,
        }
    }

    /// The FUSE id for a real inode number.
    pub fn fuse_ino(&self, real: u64) -> u64 {
        if real == self.root_ino {
            ROOT
        } else {
            real
        }
    }

    /// The real inode number for a FUSE id.
    pub fn real_ino(&self, fuse: u64) -> u64 {
        if fuse == ROOT {
            self.root_ino
        } else {
            fuse
        }
    }

    /// Records that the kernel looked up `ino` as `name` in `parent` (one more reference).
    pub fn remember(&self, ino: u64, parent: u64, name: &OsStr) {
        self.remember_pinned(ino, parent, name, || None);
    }

    /// As [`Inodes::remember`]; `pin` opens the inode's pinning descriptor if it is new.
    pub fn remember_pinned(
        &self,
        ino: u64,
        parent: u64,
        name: &OsStr,
        pin: impl FnOnce() -> Option<std::os::fd::OwnedFd>,
    ) {
        let mut t = self.map.write();
        let e = t.inodes.entry(ino).or_default();
        if e.lookups == 0 && e._pin.is_none() {
            e._pin = pin();
        }
        e.lookups += 1;
        if !e.links.iter().any(|(p, n)| *p == parent && n == name) {
            t.link(ino, parent, name);
        }
    }

    /// The kernel dropped `n` references.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut t = self.map.write();
        let Some(e) = t.inodes.get_mut(&ino) else {
            return;
        };
        e.lookups = e.lookups.saturating_sub(n);
        if e.lookups == 0 {
            let e = t.inodes.remove(&ino).expect("just seen");
            for (p, n) in &e.links {
                t.unlink_from(ino, *p, n);
            }
        }
    }

    /// The name `name` in `parent` is gone (unlink, rmdir, or renamed away).
    pub fn unlink(&self, parent: u64, name: &OsStr) {
        self.map.write().unlink(parent, name);
    }

    /// `ino` was renamed from (`parent`, `name`) to (`newparent`, `newname`).
    pub fn rename(&self, ino: u64, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr) {
        let mut t = self.map.write();
        t.unlink(newparent, newname);
        if !t.inodes.contains_key(&ino) {
            return;
        }
        t.unlink_from(ino, parent, name);
        t.link(ino, newparent, newname);
    }

    /// Adds a link without taking a reference (the other side of `RENAME_EXCHANGE`).
    pub fn relink(&self, ino: u64, parent: u64, name: &OsStr) {
        let mut t = self.map.write();
        if t.inodes.contains_key(&ino) {
            t.link(ino, parent, name);
        }
    }

    /// The path of `ino` relative to the root (`""` for the root), if it is still linked.
    pub fn path(&self, ino: u64) -> Option<OsString> {
        let t = self.map.read();
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let e = t.inodes.get(&cur)?;
            let (p, n) = e.links.first()?;
            parts.push(n);
            cur = *p;
            if parts.len() > 4096 {
                return None;
            }
        }
        let mut out = Vec::new();
        for (i, p) in parts.iter().rev().enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            out.extend_from_slice(p.as_bytes());
        }
        Some(std::ffi::OsStr::from_bytes(&out).to_os_string())
    }

    /// The path of `name` inside directory `parent`.
    pub fn child_path(&self, parent: u64, name: &OsStr) -> Option<OsString> {
        let mut p = self.path(parent)?;
        if !p.is_empty() {
            p.push("/");
        }
        p.push(name);
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_renames_and_forget() {
        let t = Inodes::new(2);
        t.remember(10, ROOT, OsStr::new("d"));
        t.remember(11, 10, OsStr::new("f"));
        assert_eq!(t.path(11).unwrap(), "d/f");
        t.rename(10, ROOT, OsStr::new("d"), ROOT, OsStr::new("e"));
        assert_eq!(t.path(11).unwrap(), "e/f");
        t.remember(11, ROOT, OsStr::new("hard"));
        assert_eq!(t.path(11).unwrap(), "hard");
        t.unlink(ROOT, OsStr::new("hard"));
        assert_eq!(t.path(11).unwrap(), "e/f");
        // A name that now links another inode is no longer the old one's.
        t.remember(12, 10, OsStr::new("g"));
        t.remember(13, 10, OsStr::new("g"));
        assert_eq!(t.path(13).unwrap(), "e/g");
        assert!(t.path(12).is_none());
        // Renaming over a name takes it from its old inode.
        t.rename(11, 10, OsStr::new("f"), 10, OsStr::new("g"));
        assert_eq!(t.path(11).unwrap(), "e/g");
        assert!(t.path(13).is_none());
        t.unlink(10, OsStr::new("g"));
        assert!(t.path(11).is_none());
        t.forget(11, 2);
        assert!(t.path(11).is_none());
        // Forgetting an inode drops its names: the name can link a new inode.
        t.remember(14, ROOT, OsStr::new("n"));
        t.forget(14, 1);
        t.remember(15, ROOT, OsStr::new("n"));
        assert_eq!(t.path(15).unwrap(), "n");
        assert_eq!(t.path(ROOT).unwrap(), "");
        assert_eq!(t.fuse_ino(2), ROOT);
    }
}
