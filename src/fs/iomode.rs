//! Which way the kernel does the reads, writes and mappings of an open file: through the daemon
//! and the page cache (every versioned file), or straight on the real file (kernel FUSE
//! passthrough, 6.9+, root only) for files that are not versioned — SQLite's `-shm` above all,
//! which every transaction writes through a shared mapping: through the daemon, each one cost a
//! page written back as a WRITE round trip, and a fault that waited for it.
//!
//! The kernel holds each inode in one mode at a time: while a file is open passed through, an
//! open of it through the page cache fails with `ETXTBSY`, and the reverse (`fs/fuse/iomode.c`).
//! A plain directory lets both opens proceed, so the choice is made per inode, here, not per
//! path: an inode already open one way is opened that way again. An open passed through of a
//! path that is versioned (a file renamed from `tmp/` while open) writes where the recorder
//! cannot see; the overlay captures such a file whole at its fsync, when it is closed, and
//! before every mark and rollback (`Live::capture_passed_through`).
//!
//! The daemon's counts are never below the kernel's: an open is counted before its answer goes
//! out, and a release only after the kernel has let go of the file (it sends RELEASE after
//! closing). So a mode this table allows is one the kernel allows.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuser::BackingId;
use parking_lot::Mutex;

/// The open files of one inode, by mode.
struct Opens<B> {
    cached: usize,
    passed: usize,
    /// Registered with the kernel while `passed > 0`; every passed-through open of the inode
    /// must name the same one (the kernel answers `EBUSY` to a second).
    backing: Option<Arc<B>>,
}

impl<B> Default for Opens<B> {
    fn default() -> Self {
        Opens {
            cached: 0,
            passed: 0,
            backing: None,
        }
    }
}

/// How one open is served.
pub enum Mode<B = BackingId> {
    /// Through the daemon and the page cache.
    Cached,
    /// On the real file, registered with the kernel as this backing file.
    Passthrough(Arc<B>),
}

/// The mode of every open inode. `B` is the kernel's backing-file registration (a stand-in in
/// unit tests).
pub struct IoModes<B = BackingId> {
    enabled: AtomicBool,
    opens: Mutex<HashMap<u64, Opens<B>>>,
}

impl<B> Default for IoModes<B> {
    fn default() -> Self {
        IoModes {
            enabled: AtomicBool::new(false),
            opens: Mutex::new(HashMap::new()),
        }
    }
}

impl<B> IoModes<B> {
    /// Passthrough was granted at INIT: from now on, [`open`](Self::open) may choose it.
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// How many inodes are open passed through now; None if passthrough was not granted.
    pub fn passed_files(&self) -> Option<usize> {
        self.enabled
            .load(Ordering::Relaxed)
            .then(|| self.opens.lock().values().filter(|o| o.passed > 0).count())
    }

    /// Counts an open of inode `ino` and says how to serve it. `wanted` is whether the open
    /// would rather be passed through (its path is not versioned); `register` opens the real file
    /// and registers it as a backing file, and is called only when needed. A registration that
    /// fails (a real file on a stack too deep, a kernel that refuses) falls back to the cache.
    pub fn open(
        &self,
        ino: u64,
        wanted: bool,
        register: impl FnOnce() -> io::Result<B>,
    ) -> Mode<B> {
        let mut opens = self.opens.lock();
        let o = opens.entry(ino).or_default();
        if let Some(b) = o.backing.as_ref().filter(|_| o.passed > 0) {
            let b = Arc::clone(b);
            o.passed += 1;
            return Mode::Passthrough(b);
        }
        if wanted && o.cached == 0 && self.enabled.load(Ordering::Relaxed) {
            match register() {
                Ok(b) => {
                    let b = Arc::new(b);
                    o.backing = Some(Arc::clone(&b));
                    o.passed = 1;
                    return Mode::Passthrough(b);
                }
                Err(e) => {
                    tracing::debug!(ino, error = %e, "no passthrough; served through the cache")
                }
            }
        }
        o.cached += 1;
        Mode::Cached
    }

    /// Uncounts an open of `ino` served `passed` through or not, at its RELEASE. The last
    /// passed-through one unregisters the backing file.
    pub fn release(&self, ino: u64, passed: bool) {
        let mut opens = self.opens.lock();
        let Some(o) = opens.get_mut(&ino) else {
            return;
        };
        if passed {
            o.passed = o.passed.saturating_sub(1);
            if o.passed == 0 {
                o.backing = None;
            }
        } else {
            o.cached = o.cached.saturating_sub(1);
        }
        if o.cached == 0 && o.passed == 0 {
            opens.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backing(id: u32) -> impl FnOnce() -> io::Result<u32> {
        move || Ok(id)
    }

    fn refused() -> io::Result<u32> {
        Err(io::Error::from_raw_os_error(libc::ELOOP))
    }

    fn passed(m: &Mode<u32>) -> Option<u32> {
        match m {
            Mode::Passthrough(b) => Some(**b),
            Mode::Cached => None,
        }
    }

    #[test]
    fn an_inode_is_opened_again_the_way_it_is_open() {
        let modes = IoModes::<u32>::default();
        // Not granted: everything through the cache.
        assert_eq!(passed(&modes.open(1, true, backing(7))), None);
        assert_eq!(modes.passed_files(), None);
        modes.release(1, false);
        modes.enable();
        assert_eq!(modes.passed_files(), Some(0));

        // Wanted: registered once, and every later open of the inode names the same backing,
        // even one that would rather go through the cache (a versioned name).
        assert_eq!(passed(&modes.open(1, true, backing(7))), Some(7));
        assert_eq!(
            passed(&modes.open(1, true, || panic!("registered twice"))),
            Some(7)
        );
        assert_eq!(
            passed(&modes.open(1, false, || panic!("registered"))),
            Some(7)
        );
        assert_eq!(modes.passed_files(), Some(1));
        for _ in 0..3 {
            modes.release(1, true);
        }
        assert_eq!(modes.passed_files(), Some(0));
        // The last release let the registration go: the next open registers anew.
        assert_eq!(passed(&modes.open(1, true, backing(8))), Some(8));
        modes.release(1, true);

        // Open through the cache: a wanted open joins it instead of failing.
        assert_eq!(passed(&modes.open(2, false, || panic!("registered"))), None);
        assert_eq!(passed(&modes.open(2, true, || panic!("registered"))), None);
        modes.release(2, false);
        modes.release(2, false);
        assert_eq!(passed(&modes.open(2, true, backing(9))), Some(9));
        modes.release(2, true);

        // A registration the kernel refuses falls back to the cache, and counts there.
        assert_eq!(passed(&modes.open(3, true, refused)), None);
        assert_eq!(passed(&modes.open(3, true, || panic!("registered"))), None);
        modes.release(3, false);
        modes.release(3, false);
        assert_eq!(passed(&modes.open(3, true, backing(10))), Some(10));
        modes.release(3, true);
        assert!(modes.opens.lock().is_empty());
    }
}
