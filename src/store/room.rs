//! Room on the store's file system.
//!
//! sled fails for good once one of its own writes meets a full disk: every later write is
//! refused until the store is reopened, so versioning would stop until the next mount however
//! much room came back. The store therefore keeps a reserve free for the catalogue: packs are
//! never appended into it, and the recorder commits no epoch while the disk is inside it. What
//! does not fit is "not versioned yet", never lost: the real files do not live in the store,
//! and the recorder captures what it missed once there is room again.

use std::io;
use std::os::fd::RawFd;
use std::path::Path;

use crate::store::{Result, StoreError};
use crate::sys;

/// The reserve is this share of the file system...
const RESERVE_SHARE: u64 = 50;
/// ...but at least this (sled writes its log in 512 KiB segments)...
const MIN_RESERVE: u64 = 4 << 20;
/// ...and at most this.
const MAX_RESERVE: u64 = 64 << 20;

/// Free space on a file system and the reserve kept on it.
#[derive(Clone, Copy, Debug)]
pub struct Room {
    /// Bytes an unprivileged writer may still use.
    pub free: u64,
    /// Bytes kept free for the catalogue: 2% of the file system, between 4 and 64 MiB.
    pub reserve: u64,
}

impl Room {
    /// The room on the file system holding `path`.
    pub fn at(path: &Path) -> io::Result<Room> {
        sys::statvfs(path).map(|st| Room::of(&st))
    }

    /// The room on the file system holding the open file `fd`.
    pub fn of_fd(fd: RawFd) -> io::Result<Room> {
        sys::fstatvfs(fd).map(|st| Room::of(&st))
    }

    fn of(st: &libc::statvfs) -> Room {
        if st.f_blocks == 0 {
            // A file system that keeps no count of its blocks (some virtual and network ones)
            // cannot say it is full: written to as if it never were.
            return Room {
                free: u64::MAX,
                reserve: 0,
            };
        }
        let unit = st.f_frsize;
        let size = st.f_blocks * unit;
        Room {
            free: st.f_bavail * unit,
            reserve: (size / RESERVE_SHARE).clamp(MIN_RESERVE, MAX_RESERVE),
        }
    }

    /// Whether `bytes` more fit outside the reserve.
    pub fn check(&self, bytes: u64) -> Result<()> {
        if self.free >= bytes.saturating_add(self.reserve) {
            Ok(())
        } else {
            Err(StoreError::Full {
                free: self.free,
                reserve: self.reserve,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(blocks: u64, avail: u64) -> Room {
        // SAFETY: all-zero is a valid statvfs.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        st.f_frsize = 4096;
        st.f_blocks = blocks;
        st.f_bavail = avail;
        Room::of(&st)
    }

    #[test]
    fn the_reserve_is_two_percent_between_4_and_64_mib() {
        assert_eq!(room(1 << 10, 0).reserve, 4 << 20); // a 4 MiB disk
        assert_eq!(room(1 << 18, 0).reserve, (1u64 << 30) / 50); // 1 GiB: ~20.5 MiB
        assert_eq!(room(1 << 20, 0).reserve, 64 << 20); // 4 GiB
    }

    #[test]
    fn what_would_reach_into_the_reserve_does_not_fit() {
        let r = room(1 << 18, 6000); // 1 GiB disk, ~23.4 MiB free, ~20.5 MiB kept
        assert!(r.check(0).is_ok());
        assert!(r.check(r.free - r.reserve).is_ok());
        let e = r.check(r.free - r.reserve + 1).unwrap_err();
        assert!(e.to_string().contains("the store's disk is full"), "{e}");
        assert!(room(1 << 18, 10).check(0).is_err());
    }

    #[test]
    fn a_file_system_without_a_block_count_is_never_full() {
        assert!(room(0, 0).check(u64::MAX / 2).is_ok());
    }
}
