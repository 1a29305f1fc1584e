//! Which node and epoch a version id names: sorted, immutable files beside the catalogue, read
//! with `pread` (nothing of them is held in memory), plus a map in memory for the epochs since
//! the last file.
//!
//! A version id is a hash of its node and epoch, and every epoch's node-version keys name both,
//! so the index holds nothing the catalogue does not: opening a store adds the epochs no file
//! covers from their records. It was a sled key per version until format 5; sled 0.34 keeps
//! memory for every page of 16 or so keys from the moment it opens, so those keys made every
//! process that opened a store grow with its history. A lookup here reads about 20 entries of a
//! file (a binary search); ids are looked up when someone types one, not on any hot path.
//!
//! # Data format
//! `<store>/versions/<lo>-<hi>.idx` (16 hex digits each) holds every version written by epochs
//! `lo..=hi`:
//! ```text
//! header  32 bytes: "CLAWVER1" | entries u64 | lo u64 | hi u64
//! entries 32 bytes each, sorted by id: id u64 | node u64 | seq u64 | zeros u32 | crc32 of the 28 before u32
//! trailer crc32 of the header u32
//! ```
//! Integers little-endian. A file is written whole under a temporary name, synced and renamed,
//! and only for epochs the catalogue has made durable. Files merge as they accumulate (the
//! merged file first, then the old ones go), and opening removes a file whose range lies
//! inside another's.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::ids::{NodeId, Seq, VersionId};
use crate::store::error::{IoContext, Result, StoreError};
use crate::store::run_files::{self, RunBase};

const MAGIC: &[u8; 8] = b"CLAWVER1";
const HEADER: u64 = 32;
const ENTRY: u64 = 32;
/// Epochs the map in memory may span before they are written out at a flush.
const EPOCHS_PER_FILE: u64 = 1024;
/// Versions the map in memory may hold before they are written out at a flush.
const VERSIONS_PER_FILE: usize = 1 << 16;
/// A file is merged into the one before it while that one is at most this many times larger.
const MERGE_RATIO: u64 = 4;

/// One version: its id, node and epoch.
type Entry = (u64, NodeId, Seq);

struct Run {
    base: RunBase,
}

/// The version-id index of one store.
pub struct VersionIndex {
    dir: PathBuf,
    /// Oldest first; their ranges follow each other.
    runs: RwLock<Vec<Arc<Run>>>,
    /// Versions of the epochs after the last file.
    fresh: RwLock<HashMap<u64, (NodeId, Seq)>>,
    /// The last epoch a file covers (or that needs none: see [`VersionIndex::open`]).
    covered: Mutex<u64>,
}

fn encode_entry(&(id, node, seq): &Entry) -> [u8; ENTRY as usize] {
    let mut e = [0u8; ENTRY as usize];
    e[..8].copy_from_slice(&id.to_le_bytes());
    e[8..16].copy_from_slice(&node.0.to_le_bytes());
    e[16..24].copy_from_slice(&seq.0.to_le_bytes());
    let crc = crc32fast::hash(&e[..28]);
    e[28..].copy_from_slice(&crc.to_le_bytes());
    e
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

fn decode_entry(e: &[u8]) -> Option<Entry> {
    (crc32fast::hash(&e[..28]) == u32::from_le_bytes(e[28..32].try_into().expect("4 bytes")))
        .then(|| (le64(e), NodeId(le64(&e[8..])), Seq(le64(&e[16..]))))
}

impl Run {
    fn open(path: &Path, lo: u64, hi: u64) -> std::result::Result<Run, String> {
        let file = File::open(path).map_err(|e| e.to_string())?;
        let mut h = [0u8; HEADER as usize];
        file.read_exact_at(&mut h, 0)
            .map_err(|_| "shorter than its header".to_string())?;
        let count = le64(&h[8..]);
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        let mut crc = [0u8; 4];
        if &h[..8] != MAGIC
            || len != HEADER + count * ENTRY + 4
            || file.read_exact_at(&mut crc, len - 4).is_err()
            || u32::from_le_bytes(crc) != crc32fast::hash(&h)
            || le64(&h[16..]) != lo
            || le64(&h[24..]) != hi
        {
            return Err("header, length or name do not agree".into());
        }
        Ok(Run {
            base: RunBase::new(path, lo, hi, count, file),
        })
    }

    fn entry(&self, i: u64) -> Result<Entry> {
        let mut e = [0u8; ENTRY as usize];
        self.base
            .file
            .read_exact_at(&mut e, HEADER + i * ENTRY)
            .ctx(|| format!("reading {}", self.base.path.display()))?;
        decode_entry(&e).ok_or_else(|| StoreError::CorruptCatalog {
            what: format!("version index {}", self.base.path.display()),
            detail: "an entry fails its checksum (remove the file: opening the store rebuilds it from the catalogue)".into(),
        })
    }

    fn find(&self, id: u64) -> Result<Option<(NodeId, Seq)>> {
        let (mut lo, mut hi) = (0, self.base.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (k, node, seq) = self.entry(mid)?;
            match k.cmp(&id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Some((node, seq))),
            }
        }
        Ok(None)
    }

    fn entries(&self) -> Result<impl Iterator<Item = Result<Entry>> + '_> {
        self.base.entries(HEADER as usize, ENTRY as usize, |e| {
            decode_entry(e).ok_or_else(|| StoreError::CorruptCatalog {
                what: format!("version index {}", self.base.path.display()),
                detail: "an entry fails its checksum".into(),
            })
        })
    }
}

impl run_files::RunFile for Run {
    fn base(&self) -> &RunBase {
        &self.base
    }
}

fn write_run(
    dir: &Path,
    lo: u64,
    hi: u64,
    entries: impl Iterator<Item = Result<Entry>>,
) -> Result<Run> {
    let f = run_files::NewFile::create(dir, lo, hi)?;
    let io = |e| f.error(e);
    let mut w = BufWriter::with_capacity(1 << 20, &f.file);
    w.write_all(&[0u8; HEADER as usize]).map_err(io)?;
    let mut count = 0u64;
    for e in entries {
        w.write_all(&encode_entry(&e?)).map_err(io)?;
        count += 1;
    }
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&count.to_le_bytes());
    h[16..24].copy_from_slice(&lo.to_le_bytes());
    h[24..32].copy_from_slice(&hi.to_le_bytes());
    w.write_all(&crc32fast::hash(&h).to_le_bytes())
        .map_err(io)?;
    w.flush().map_err(io)?;
    drop(w);
    f.file.write_all_at(&h, 0).map_err(io)?;
    let path = f.install()?;
    Run::open(&path, lo, hi).map_err(|detail| StoreError::CorruptCatalog {
        what: format!("version index {}", path.display()),
        detail: format!("just written, it reads back wrong: {detail}"),
    })
}

impl VersionIndex {
    /// Opens the index in `dir`. Epochs up to `before_files` keep their version ids in the
    /// catalogue (written before format 5) and need no file. The caller then adds the versions
    /// of the epochs after [`covered`](Self::covered) with [`add`](Self::add).
    pub fn open(dir: &Path, before_files: u64) -> Result<VersionIndex> {
        let found = run_files::list(dir)?;
        let mut runs: Vec<Arc<Run>> = Vec::new();
        for (lo, hi, path) in found {
            // Files follow each other from the first on: a damaged one, and any after it, are
            // dropped, and their epochs are read from the catalogue again.
            let next = runs.last().map_or(before_files + 1, |r| r.base.hi + 1);
            match Run::open(&path, lo, hi) {
                Ok(r) if lo <= next => runs.push(Arc::new(r)),
                Ok(_) => {
                    tracing::warn!(file = %path.display(), "version index file does not follow the ones before it; its epochs are indexed again");
                    let _ = std::fs::remove_file(&path);
                }
                Err(detail) => {
                    tracing::error!(file = %path.display(), %detail, "version index file is damaged; its epochs are indexed again from the catalogue");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let covered = runs
            .last()
            .map_or(before_files, |r| r.base.hi.max(before_files));
        Ok(VersionIndex {
            dir: dir.to_path_buf(),
            runs: RwLock::new(runs),
            fresh: RwLock::new(HashMap::new()),
            covered: Mutex::new(covered),
        })
    }

    /// The last epoch whose versions are in a file (or in the catalogue).
    pub fn covered(&self) -> Seq {
        Seq(*self.covered.lock())
    }

    /// Records the version of `node` written by epoch `seq` (a committed epoch after
    /// [`covered`](Self::covered)).
    pub fn add(&self, node: NodeId, seq: Seq) {
        self.fresh
            .write()
            .insert(VersionId::new(node, seq).0, (node, seq));
    }

    /// The node and epoch of version `id`, if indexed here.
    pub fn get(&self, id: VersionId) -> Result<Option<(NodeId, Seq)>> {
        if let Some(v) = self.fresh.read().get(&id.0) {
            return Ok(Some(*v));
        }
        for r in self.runs.read().iter().rev() {
            if let Some(v) = r.find(id.0)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Called once epochs up to `durable` are durable: writes the versions held in memory to a
    /// file when they span enough epochs or are many enough, then merges files.
    pub fn persist(&self, durable: Seq) -> Result<()> {
        let mut covered = self.covered.lock();
        let n = self.fresh.read().len();
        if durable.0 <= *covered
            || (durable.0 - *covered < EPOCHS_PER_FILE && n < VERSIONS_PER_FILE)
        {
            return Ok(());
        }
        let (lo, hi) = (*covered + 1, durable.0);
        let mut mine: Vec<Entry> = self
            .fresh
            .read()
            .iter()
            .filter(|(_, (_, s))| s.0 <= hi)
            .map(|(&id, &(node, seq))| (id, node, seq))
            .collect();
        mine.sort_unstable_by_key(|e| e.0);
        let run = Arc::new(write_run(&self.dir, lo, hi, mine.into_iter().map(Ok))?);
        self.runs.write().push(run);
        self.fresh.write().retain(|_, (_, s)| s.0 > hi);
        *covered = hi;
        if let Err(e) = self.merge() {
            tracing::error!(error = %e, "could not merge version index files; lookups read more files until it succeeds");
        }
        Ok(())
    }

    fn merge(&self) -> Result<()> {
        run_files::merge_newest(
            &self.runs,
            |a, b, _| a.base.count <= MERGE_RATIO * b.base.count.max(1),
            |a, b| {
                let both = run_files::merge_sorted(a.entries()?, b.entries()?, |e| e.0);
                write_run(&self.dir, a.base.lo, b.base.hi, both)
            },
        )
    }

    /// Number of files and versions in them, and versions held in memory.
    pub fn stats(&self) -> (usize, u64, usize) {
        let (files, entries, _) = run_files::totals(&self.runs);
        (files, entries, self.fresh.read().len())
    }

    /// Bytes of the files.
    pub fn size_on_disk(&self) -> u64 {
        run_files::totals(&self.runs).2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::run_files::file_name;

    #[test]
    fn versions_are_found_in_memory_in_files_after_merges_and_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let idx = VersionIndex::open(dir.path(), 0).unwrap();
        let mut all = Vec::new();
        for seq in 1..=5000u64 {
            for node in [seq % 7, 100 + seq % 13] {
                idx.add(NodeId(node), Seq(seq));
                all.push((NodeId(node), Seq(seq)));
            }
            idx.persist(Seq(seq)).unwrap();
        }
        let (files, in_files, fresh) = idx.stats();
        assert!((1..=6).contains(&files), "{files} files");
        assert_eq!(in_files as usize + fresh, all.len());
        assert_eq!(idx.covered(), Seq(4 * EPOCHS_PER_FILE));
        let check = |idx: &VersionIndex| {
            for &(node, seq) in all.iter().step_by(17) {
                assert_eq!(
                    idx.get(VersionId::new(node, seq)).unwrap(),
                    Some((node, seq))
                );
            }
            assert_eq!(idx.get(VersionId::new(NodeId(99), Seq(1))).unwrap(), None);
        };
        check(&idx);
        drop(idx);
        // Reopened, the epochs after the last file come back from the catalogue (here: by
        // hand, as `Store::open` does from the node-version keys).
        let idx = VersionIndex::open(dir.path(), 0).unwrap();
        for &(node, seq) in all.iter().filter(|(_, s)| *s > idx.covered()) {
            idx.add(node, seq);
        }
        check(&idx);
    }

    #[test]
    fn leftovers_and_damage_send_epochs_back_to_the_catalogue_never_to_a_wrong_answer() {
        let dir = tempfile::tempdir().unwrap();
        let idx = VersionIndex::open(dir.path(), 0).unwrap();
        for seq in 1..=3 * EPOCHS_PER_FILE {
            idx.add(NodeId(seq), Seq(seq));
            idx.persist(Seq(seq)).unwrap();
        }
        drop(idx);
        let names = || -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names(),
            [file_name(1, 3 * EPOCHS_PER_FILE)],
            "merged into one"
        );
        // A merge's leftover beside it is removed; a damaged file is dropped.
        std::fs::write(dir.path().join(file_name(1, 5)), b"leftover").unwrap();
        let idx = VersionIndex::open(dir.path(), 0).unwrap();
        assert_eq!(names(), [file_name(1, 3 * EPOCHS_PER_FILE)]);
        assert_eq!(idx.covered(), Seq(3 * EPOCHS_PER_FILE));
        drop(idx);
        let path = dir.path().join(file_name(1, 3 * EPOCHS_PER_FILE));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let idx = VersionIndex::open(dir.path(), 0).unwrap();
        assert_eq!(idx.covered(), Seq(0), "its epochs are indexed again");
        assert_eq!(idx.get(VersionId::new(NodeId(3), Seq(3))).unwrap(), None);
        assert!(names().is_empty());
    }
}
