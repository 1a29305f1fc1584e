//! The overlay's inode table: which names the kernel knows each inode by.
//!
//! FUSE node ids are the real inode numbers (so `st_ino` is the real one and survives renames,
//! as OpenClaw checks), except the root, which FUSE calls 1. Each inode remembers the
//! (parent, name) links the kernel has looked up, so its path can be rebuilt for `*at()` calls
//! and for the recorder, and a directory rename costs O(1) here too.
//!
//! Inode numbers are node ids, so an inode the kernel still knows must not be freed while it
//! does: the file system would give its number to the next new file, and the kernel would take
//! that file for the old one (its cached attributes and pages). Names are only removed through
//! the overlay, so that is where an inode can be freed: before it removes or replaces a name
//! whose inode the kernel knows, the overlay [pins](Inodes::pin) the inode with an `O_PATH`
//! descriptor, held until the kernel forgets it. (Pinning every known inode, as libfuse's
//! passthrough does, holds one descriptor per file the kernel has cached, and a walk over a
//! large tree then exhausts the daemon's descriptors: every open fails with EMFILE.)

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
    /// An `O_PATH` descriptor on an inode whose name was removed while the kernel knew it:
    /// the file system cannot free the inode, so its number cannot go to another file while
    /// the kernel still uses it as a node id. Dropped when the kernel forgets the inode.
    pin: Option<std::os::fd::OwnedFd>,
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
        let mut t = self.map.write();
        let e = t.inodes.entry(ino).or_default();
        e.lookups += 1;
        if !e.links.iter().any(|(p, n)| *p == parent && n == name) {
            t.link(ino, parent, name);
        }
    }

    /// The inode `name` in `parent` links, as far as the kernel knows it.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.map.read().names.get(&parent)?.get(name).copied()
    }

    /// Whether the kernel knows `ino` and nothing pins it yet.
    pub fn needs_pin(&self, ino: u64) -> bool {
        ino != ROOT
            && self
                .map
                .read()
                .inodes
                .get(&ino)
                .is_some_and(|e| e.lookups > 0 && e.pin.is_none())
    }

    /// Keeps `fd` (open on `ino`) until the kernel forgets `ino`; dropped at once if the kernel
    /// does not know `ino` (any more) or it is pinned already.
    pub fn pin(&self, ino: u64, fd: std::os::fd::OwnedFd) {
        let mut t = self.map.write();
        if let Some(e) = t.inodes.get_mut(&ino) {
            if e.lookups > 0 && e.pin.is_none() {
                e.pin = Some(fd);
            }
        }
    }

    /// `ino` and every inode the kernel knows below it (by the names it looked up): what a
    /// removal of the tree at `ino` could free.
    pub fn known_below(&self, ino: u64) -> Vec<u64> {
        let t = self.map.read();
        let mut out = vec![ino];
        let mut i = 0;
        while i < out.len() {
            if let Some(dir) = t.names.get(&out[i]) {
                out.extend(dir.values().copied());
            }
            i += 1;
            if out.len() > 1 << 22 {
                break; // a cycle cannot happen, but a bound costs nothing
            }
        }
        out
    }

    /// How many inodes are pinned.
    #[cfg(test)]
    fn pinned(&self) -> usize {
        self.map
            .read()
            .inodes
            .values()
            .filter(|e| e.pin.is_some())
            .count()
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
        Self::path_in(&self.map.read(), ino)
    }

    /// The first of `ino`'s paths for which `f` gives something, trying each of its links in
    /// turn (a file linked under several names; each parent by its own first link).
    pub fn find_path<T>(&self, ino: u64, f: impl Fn(&OsStr) -> Option<T>) -> Option<T> {
        if ino == ROOT {
            return f(OsStr::new(""));
        }
        let t = self.map.read();
        t.inodes.get(&ino)?.links.iter().find_map(|(parent, name)| {
            let mut p = Self::path_in(&t, *parent)?;
            if !p.is_empty() {
                p.push("/");
            }
            p.push(name);
            f(&p)
        })
    }

    fn path_in(t: &Table, ino: u64) -> Option<OsString> {
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
    fn pins_are_held_only_for_known_inodes_until_the_kernel_forgets_them() {
        let fd = || std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let t = Inodes::new(2);
        t.remember(10, ROOT, OsStr::new("d"));
        t.remember(11, 10, OsStr::new("f"));
        t.remember(12, 11, OsStr::new("g"));
        assert_eq!(t.lookup(10, OsStr::new("f")), Some(11));
        assert_eq!(t.lookup(10, OsStr::new("nope")), None);
        let mut below = t.known_below(10);
        below.sort();
        assert_eq!(below, vec![10, 11, 12]);
        // Unknown inodes and the root are never pinned.
        assert!(!t.needs_pin(99) && !t.needs_pin(ROOT));
        t.pin(99, fd());
        assert_eq!(t.pinned(), 0);
        // A known one is pinned once, and stays pinned after its name goes...
        assert!(t.needs_pin(11));
        t.pin(11, fd());
        t.pin(11, fd());
        assert_eq!(t.pinned(), 1);
        assert!(!t.needs_pin(11));
        t.unlink(10, OsStr::new("f"));
        assert_eq!(t.pinned(), 1);
        // ...until the kernel forgets it.
        t.forget(11, 1);
        assert_eq!(t.pinned(), 0);
    }

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
