//! Rewriting the catalogue into a fresh sled database that holds only its live records.
//!
//! sled never gives back what a prune empties: the pages stay, on disk and in memory (sled
//! keeps state for every page it ever had, loaded when the database opens). Measured on a store
//! where 120,000 small files had been written and removed, then pruned to its last moment: the
//! catalogue held 5,031 records in 343 MiB, and opening it took 39 MiB of memory and 110 ms;
//! copied into a fresh database, 4 MiB, 5.6 MiB and 20 ms.
//!
//! Prunes count the records they removed in [`DUE`]; once that reaches [`DUE_AFTER_RECORDS`],
//! whoever next holds the store closed (an unmounted `clawfs prune` right after, or the next
//! mount before it opens the store) compacts it ([`if_due`]). The copy is made beside the
//! catalogue in [`COPY`], flushed, read back and compared record by record with the original,
//! then swapped in with one `renameat2(RENAME_EXCHANGE)`: at every instant `catalog/` is a
//! whole database, the old one or the new one, and sled's lock on it is held by the copier
//! until the swap. What is left in [`COPY`] (a copy cut off, or the old catalogue after the
//! swap) is removed by the next holder of the lock ([`remove_leftover`]).

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use crate::store::error::IoContext;
use crate::store::room::Room;
use crate::store::{Result, StoreError};
use crate::sys;

/// The file that counts the records prunes removed since the last compaction (a decimal
/// number).
pub const DUE: &str = "compact-due";
/// Where the copy is made, beside `catalog/`.
pub const COPY: &str = "catalog.compact";
/// How long reopening the copy to check it waits for sled's threads, which hold its lock a
/// moment after it was closed.
const COPY_LOCK_WAIT: Duration = Duration::from_secs(10);
/// Records per sled batch while copying.
const BATCH: usize = 10_000;
/// Removed records that make a compaction due: a copy costs a few µs per live record (600,000
/// copied in 3.7 s here, before the check reads both), and until then sled keeps the pages the
/// removed ones emptied.
pub const DUE_AFTER_RECORDS: u64 = 10_000;

/// What a compaction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compacted {
    /// Records copied (every tree's).
    pub records: u64,
    /// The catalogue's size on disk before.
    pub bytes_before: u64,
    /// Its size after.
    pub bytes_after: u64,
}

/// Counts `removed` more records that a prune took out of the catalogue of the store at
/// `dir`; returns whether a compaction is now due.
pub fn note_removed(dir: &Path, removed: u64) -> Result<bool> {
    let total = removed_since(dir).saturating_add(removed);
    std::fs::write(dir.join(DUE), total.to_string())
        .ctx(|| format!("writing {}", dir.join(DUE).display()))?;
    Ok(total >= DUE_AFTER_RECORDS)
}

fn removed_since(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(DUE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether a compaction is due.
pub fn is_due(dir: &Path) -> bool {
    removed_since(dir) >= DUE_AFTER_RECORDS
}

/// Compacts the catalogue of the store at `dir` if prunes removed enough records. The store
/// must not be open in this process; another process holding it makes this wait up to `wait`,
/// then fail with [`StoreError::Busy`]. On any failure the catalogue is as it was and the count
/// stays.
pub fn if_due(dir: &Path, wait: Duration) -> Result<Option<Compacted>> {
    if !is_due(dir) {
        return Ok(None);
    }
    let done = compact(dir, wait)?;
    std::fs::remove_file(dir.join(DUE)).ctx(|| format!("removing {}", dir.join(DUE).display()))?;
    Ok(Some(done))
}

/// Removes what a compaction left beside the catalogue. Only for the holder of the catalogue's
/// lock: nobody else can be copying then.
pub fn remove_leftover(dir: &Path) {
    let copy = dir.join(COPY);
    if copy.exists() {
        match std::fs::remove_dir_all(&copy) {
            Ok(()) => tracing::info!(path = %copy.display(), "removed what a compaction left"),
            Err(e) => {
                tracing::warn!(path = %copy.display(), error = %e, "cannot remove what a compaction left")
            }
        }
    }
}

fn open(path: &Path) -> sled::Result<sled::Db> {
    crate::store::catalog_config(path).open()
}

/// Compacts the catalogue of the store at `dir` now (see the module's documentation).
pub fn compact(dir: &Path, wait: Duration) -> Result<Compacted> {
    let cat_dir = dir.join("catalog");
    if !cat_dir.exists() {
        return Err(StoreError::NotAStore(dir.to_path_buf()));
    }
    let old = crate::store::when_free(wait, || crate::store::open_catalog_db(dir))?;
    remove_leftover(dir);
    let bytes_before = old.size_on_disk()?;
    // The copy is at most what the catalogue takes now; the store's reserve stays free.
    if let Ok(room) = Room::at(dir) {
        room.check(bytes_before)?;
    }
    let (records, bytes_after) =
        copy_into(&old, &dir.join(COPY)).inspect_err(|_| remove_leftover(dir))?;
    // The old catalogue is only read: flushing it now leaves nothing for its drop to write
    // after the swap, when its path names the copy.
    old.flush()?;
    let dirfd = std::fs::File::open(dir).ctx(|| format!("opening {}", dir.display()))?;
    sys::rename_at(
        dirfd.as_raw_fd(),
        OsStr::new(COPY),
        OsStr::new("catalog"),
        libc::RENAME_EXCHANGE,
    )
    .ctx(|| format!("swapping the compacted catalogue into {}", dir.display()))
    .inspect_err(|_| remove_leftover(dir))?;
    dirfd
        .sync_all()
        .ctx(|| format!("syncing {}", dir.display()))?;
    drop(old);
    remove_leftover(dir);
    tracing::info!(
        records,
        bytes_before,
        bytes_after,
        "compacted the catalogue"
    );
    Ok(Compacted {
        records,
        bytes_before,
        bytes_after,
    })
}

/// Copies every tree of `old` into a new database at `to`, makes it durable, and checks it
/// against `old` record by record from a fresh open (waiting, up to [`COPY_LOCK_WAIT`], for
/// sled's threads to let go of the copy's lock). Returns the records copied and the copy's
/// size on disk.
fn copy_into(old: &sled::Db, to: &Path) -> Result<(u64, u64)> {
    let new = open(to)?;
    let copied = copy_trees(old, &new).and_then(|n| Ok(new.flush().map(|_| n)?));
    // Closed with a time limit: after a failed write (the disk filled meanwhile) sled's own
    // last flush can wait forever.
    crate::store::close_catalog(new, to);
    let records = copied?;
    let new = crate::store::when_free(COPY_LOCK_WAIT, || crate::store::open_db_at(to, to))?;
    let (mut names, mut new_names) = (old.tree_names(), new.tree_names());
    names.sort();
    new_names.sort();
    if names != new_names {
        return Err(mismatch("its trees differ"));
    }
    let mut checked = 0u64;
    for name in names {
        let (a, b) = (old.open_tree(&name)?, new.open_tree(&name)?);
        let mut b_iter = b.iter();
        for kv in a.iter() {
            let (k, v) = kv?;
            match b_iter.next().transpose()? {
                Some((k2, v2)) if k2 == k && v2 == v => checked += 1,
                _ => return Err(mismatch("a record differs or is missing")),
            }
        }
        if b_iter.next().is_some() {
            return Err(mismatch("it holds a record the catalogue does not"));
        }
    }
    if checked != records {
        return Err(mismatch("it holds another number of records"));
    }
    let f = std::fs::File::open(to).ctx(|| format!("opening {}", to.display()))?;
    f.sync_all().ctx(|| format!("syncing {}", to.display()))?;
    Ok((records, new.size_on_disk()?))
}

/// Copies every tree of `old` into `new`, in batches; returns the records copied.
fn copy_trees(old: &sled::Db, new: &sled::Db) -> Result<u64> {
    let mut records = 0u64;
    for name in old.tree_names() {
        let (src, dst) = (old.open_tree(&name)?, new.open_tree(&name)?);
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in src.iter() {
            let (k, v) = kv?;
            batch.insert(k, v);
            n += 1;
            if n == BATCH {
                dst.apply_batch(std::mem::take(&mut batch))?;
                records += n as u64;
                n = 0;
            }
        }
        dst.apply_batch(batch)?;
        records += n as u64;
    }
    Ok(records)
}

fn mismatch(why: &str) -> StoreError {
    StoreError::CorruptCatalog {
        what: "compacted copy".into(),
        detail: format!("{why}: the catalogue was left as it was"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(db: &sled::Db, n: u32) {
        let t = db.open_tree("catalog").unwrap();
        for i in 0..n {
            t.insert(i.to_be_bytes(), vec![7u8; 64]).unwrap();
        }
        db.open_tree("side:r").unwrap().insert(b"k", b"v").unwrap();
        db.insert(b"default", b"tree").unwrap();
        for i in 0..n - n / 50 {
            t.remove(i.to_be_bytes()).unwrap();
        }
        db.flush().unwrap();
    }

    #[test]
    fn a_compacted_catalogue_holds_every_record_and_less_disk() {
        let d = tempfile::tempdir().unwrap();
        fill(&open(&d.path().join("catalog")).unwrap(), 100_000);
        assert!(!note_removed(d.path(), DUE_AFTER_RECORDS - 1).unwrap());
        assert_eq!(if_due(d.path(), Duration::ZERO).unwrap(), None);
        assert!(note_removed(d.path(), 1).unwrap());
        let done = if_due(d.path(), Duration::ZERO).unwrap().unwrap();
        assert_eq!(done.records, 2_000 + 2);
        assert!(
            done.bytes_after * 4 < done.bytes_before,
            "{done:?}: not a quarter"
        );
        assert!(!is_due(d.path()) && !d.path().join(COPY).exists());
        assert_eq!(if_due(d.path(), Duration::ZERO).unwrap(), None);
        let db = open(&d.path().join("catalog")).unwrap();
        let t = db.open_tree("catalog").unwrap();
        assert_eq!(t.len(), 2_000);
        assert_eq!(
            t.first().unwrap().unwrap().0.as_ref(),
            98_000u32.to_be_bytes()
        );
        assert_eq!(
            db.open_tree("side:r").unwrap().get(b"k").unwrap().unwrap(),
            b"v"
        );
        assert_eq!(db.get(b"default").unwrap().unwrap(), b"tree");
    }

    #[test]
    fn a_held_catalogue_is_busy_and_left_as_it_was() {
        let d = tempfile::tempdir().unwrap();
        let db = open(&d.path().join("catalog")).unwrap();
        fill(&db, 1_000);
        note_removed(d.path(), DUE_AFTER_RECORDS).unwrap();
        let e = if_due(d.path(), Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, StoreError::Busy(_)), "{e}");
        assert!(is_due(d.path()) && !d.path().join(COPY).exists());
        assert_eq!(db.open_tree("catalog").unwrap().len(), 20);
    }

    #[test]
    fn what_a_cut_off_compaction_left_goes_and_the_catalogue_stays() {
        let d = tempfile::tempdir().unwrap();
        fill(&open(&d.path().join("catalog")).unwrap(), 1_000);
        // A copy cut off half-way: a database of its own holding part of the records.
        let half = open(&d.path().join(COPY)).unwrap();
        half.open_tree("catalog")
            .unwrap()
            .insert(b"x", b"y")
            .unwrap();
        half.flush().unwrap();
        drop(half);
        let done = compact(d.path(), Duration::from_secs(5)).unwrap();
        assert_eq!(done.records, 20 + 2);
        assert!(!d.path().join(COPY).exists());
        let db = open(&d.path().join("catalog")).unwrap();
        assert_eq!(db.open_tree("catalog").unwrap().get(b"x").unwrap(), None);
        assert_eq!(db.open_tree("catalog").unwrap().len(), 20);
    }
}
