//! Where each stored chunk is: sorted, immutable index files beside the packs, read with
//! `pread` through the page cache, plus a map in memory for the packs not yet indexed.
//!
//! The index holds nothing the packs do not: every record names its chunk, so any part of the
//! index can be rebuilt by reading packs (opening a store does so for the packs no file covers,
//! and for a file that fails its checks). It used to be a sled tree; sled 0.34 keeps a page
//! table entry in memory for every 16 or so keys, so an index of random chunk ids made every
//! process that opened a store (the daemon, a time-travel view) grow with the store's history.
//! Here memory is about two bytes a chunk (a tag of each entry and the bucket table of each
//! file) and the records of the packs not yet indexed; a lookup reads one 64-byte entry, and
//! only when its tag matches, so asking for an absent chunk (every new chunk is asked for)
//! rarely reads at all.
//!
//! # Data format
//! `<packs>/index/<lo>-<hi>.idx` (16 hex digits each) indexes every intact record of packs
//! `lo..=hi`, and only of those: a file's name is the set of packs it answers for.
//! ```text
//! header  64 bytes: "CLAWIDX1" | version u32 | bucket bits u32 | entries u64 | lo u64 | hi u64
//!                   | zeros u32 | crc32 of the tags u32 | crc32 of the bucket table u32
//!                   | crc32 of the 52 bytes before it u32 | zeros
//! entries 64 bytes each, sorted by chunk id: id [32] | pack u64 | offset u64 | stored len u32
//!                   | raw len u32 | flags u8 (1 = zstd) | zeros [3] | crc32 of the 60 before u32
//! tags    u16 each: bytes 4 and 5 of each entry's id, in the entries' order
//! buckets 2^bits u32: for each value of the id's top `bits` bits, the end of its entries
//! ```
//! All integers little-endian. A file is written whole to a temporary name, synced and renamed,
//! and only after the packs it names are synced, so a file that exists describes durable
//! records. Merging files into one writes the new file first and removes the old ones after,
//! so a crash between leaves files whose ranges lie inside the new one's: opening removes them.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::ids::{ChunkId, PackId};
use crate::store::error::{IoContext, Result, StoreError};
use crate::store::pack::{self, ChunkLoc, Located};
use crate::store::run_files::{self, RunBase};

const MAGIC: &[u8; 8] = b"CLAWIDX1";
const VERSION: u32 = 1;
const HEADER: u64 = 64;
const ENTRY: usize = 64;
/// Entries per bucket the table aims at: a lookup compares this many tags in memory.
const PER_BUCKET: u64 = 32;
const MAX_BITS: u32 = 24;
/// A file is merged into the one before it while that one is at most this many times larger,
/// so sizes fall geometrically from the oldest file to the newest and a lookup asks few files.
const MERGE_RATIO: u64 = 4;
/// More files than this are merged whatever their sizes.
const MAX_FILES: usize = 12;

/// One index file, open for reading: its bucket table in memory, its entries on disk.
struct Run {
    base: RunBase,
    bits: u32,
    buckets: Vec<u32>,
    tags: Vec<u16>,
}

/// The chunk index of one pack directory. Lookups run from any thread; `add` and `seal` come
/// from the pack store's writer.
pub struct ChunkIndex {
    dir: PathBuf,
    packs_dir: PathBuf,
    /// Oldest first.
    runs: RwLock<Vec<Arc<Run>>>,
    /// Records of packs no file covers yet: the open pack and packs sealed since the last seal.
    fresh: RwLock<HashMap<ChunkId, ChunkLoc>>,
    /// Serialises writers of files (seal, merge, repair).
    writing: Mutex<()>,
}

fn bits_for(count: u64) -> u32 {
    let mut bits = 0;
    while bits < MAX_BITS && (PER_BUCKET << bits) < count {
        bits += 1;
    }
    bits
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

fn tag_of(id: &ChunkId) -> u16 {
    u16::from_be_bytes([id.0[4], id.0[5]])
}

fn bucket_of(id: &ChunkId, bits: u32) -> usize {
    if bits == 0 {
        0
    } else {
        (u32::from_be_bytes(id.0[..4].try_into().expect("4 bytes")) >> (32 - bits)) as usize
    }
}

fn encode_entry(id: &ChunkId, loc: &ChunkLoc) -> [u8; ENTRY] {
    let mut e = [0u8; ENTRY];
    e[..32].copy_from_slice(&id.0);
    e[32..40].copy_from_slice(&loc.pack.0.to_le_bytes());
    e[40..48].copy_from_slice(&loc.offset.to_le_bytes());
    e[48..52].copy_from_slice(&loc.stored_len.to_le_bytes());
    e[52..56].copy_from_slice(&loc.raw_len.to_le_bytes());
    e[56] = u8::from(loc.compressed);
    let crc = crc32fast::hash(&e[..60]);
    e[60..].copy_from_slice(&crc.to_le_bytes());
    e
}

/// `None` when the entry fails its checksum.
fn decode_entry(e: &[u8]) -> Option<Located> {
    if crc32fast::hash(&e[..60]) != le32(&e[60..]) || e[56] > 1 {
        return None;
    }
    let id = ChunkId(e[..32].try_into().expect("32 bytes"));
    Some((
        id,
        ChunkLoc {
            pack: PackId(le64(&e[32..])),
            offset: le64(&e[40..]),
            stored_len: le32(&e[48..]),
            raw_len: le32(&e[52..]),
            compressed: e[56] == 1,
        },
    ))
}

impl Run {
    fn open(path: &Path, lo: u64, hi: u64) -> std::result::Result<Run, String> {
        let file = File::open(path).map_err(|e| e.to_string())?;
        let mut h = [0u8; HEADER as usize];
        file.read_exact_at(&mut h, 0)
            .map_err(|_| "shorter than its header".to_string())?;
        if &h[..8] != MAGIC {
            return Err("not an index file".into());
        }
        if crc32fast::hash(&h[..52]) != le32(&h[52..]) {
            return Err("header fails its checksum".into());
        }
        let version = le32(&h[8..]);
        if version != VERSION {
            return Err(format!("unknown index version {version}"));
        }
        let bits = le32(&h[12..]);
        let count = le64(&h[16..]);
        if bits > MAX_BITS || le64(&h[24..]) != lo || le64(&h[32..]) != hi {
            return Err("header does not match the file's name".into());
        }
        let tags_at = HEADER + count * ENTRY as u64;
        let table_at = tags_at + 2 * count;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        if count > u64::from(u32::MAX) || len != table_at + 4 * (1u64 << bits) {
            return Err(format!("{len} bytes long, its header says otherwise"));
        }
        let mut raw = vec![0u8; 2 * count as usize];
        file.read_exact_at(&mut raw, tags_at)
            .map_err(|e| e.to_string())?;
        if crc32fast::hash(&raw) != le32(&h[44..]) {
            return Err("tags fail their checksum".into());
        }
        let tags: Vec<u16> = raw
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes(b.try_into().expect("2 bytes")))
            .collect();
        let mut raw = vec![0u8; 4 << bits];
        file.read_exact_at(&mut raw, table_at)
            .map_err(|e| e.to_string())?;
        if crc32fast::hash(&raw) != le32(&h[48..]) {
            return Err("bucket table fails its checksum".into());
        }
        let buckets: Vec<u32> = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        if buckets.windows(2).any(|w| w[0] > w[1])
            || buckets.last().map(|&e| u64::from(e)) != Some(count)
        {
            return Err("bucket table is out of order".into());
        }
        Ok(Run {
            base: RunBase::new(path, lo, hi, count, file),
            bits,
            buckets,
            tags,
        })
    }

    fn covers(&self, pack: u64) -> bool {
        (self.base.lo..=self.base.hi).contains(&pack)
    }

    fn find(&self, id: &ChunkId) -> Result<Option<ChunkLoc>> {
        let b = bucket_of(id, self.bits);
        let start = if b == 0 {
            0
        } else {
            self.buckets[b - 1] as usize
        };
        let end = self.buckets[b] as usize;
        let tag = tag_of(id);
        for i in (start..end).filter(|&i| self.tags[i] == tag) {
            let mut e = [0u8; ENTRY];
            self.base
                .file
                .read_exact_at(&mut e, HEADER + (i * ENTRY) as u64)
                .ctx(|| format!("reading chunk index {}", self.base.path.display()))?;
            if e[..32] == id.0 {
                return match decode_entry(&e) {
                    Some((_, loc)) => Ok(Some(loc)),
                    None => Err(self.damaged("an entry fails its checksum")),
                };
            }
        }
        Ok(None)
    }

    fn damaged(&self, detail: &str) -> StoreError {
        StoreError::CorruptCatalog {
            what: format!("chunk index {}", self.base.path.display()),
            detail: format!("{detail}; it is rebuilt from the packs when the store is next opened"),
        }
    }

    /// Every entry, in order, checked.
    fn entries(&self) -> Result<impl Iterator<Item = Result<Located>> + '_> {
        self.base.entries(HEADER as usize, ENTRY, |e| {
            decode_entry(e).ok_or_else(|| self.damaged("an entry fails its checksum"))
        })
    }
}

impl run_files::RunFile for Run {
    fn base(&self) -> &RunBase {
        &self.base
    }
}

/// Writes an index file for packs `lo..=hi` from entries sorted by id (a repeated id is kept
/// once), synced and renamed into place; returns it open.
fn write_run(
    dir: &Path,
    lo: u64,
    hi: u64,
    at_most: u64,
    entries: impl Iterator<Item = Result<Located>>,
) -> Result<Run> {
    let bits = bits_for(at_most);
    let mut buckets = vec![0u32; 1 << bits];
    let mut count = 0u64;
    let mut tags = Vec::with_capacity(2 * at_most as usize);
    let f = run_files::NewFile::create(dir, lo, hi)?;
    let io = |e| f.error(e);
    let mut w = BufWriter::with_capacity(1 << 20, &f.file);
    w.write_all(&[0u8; HEADER as usize]).map_err(io)?;
    let mut put = |w: &mut BufWriter<&File>, (id, loc): Located| {
        buckets[bucket_of(&id, bits)] += 1;
        tags.extend_from_slice(&tag_of(&id).to_le_bytes());
        count += 1;
        w.write_all(&encode_entry(&id, &loc))
    };
    // Of a chunk stored twice, the copy in the newest pack is the one indexed: a prune copies
    // live chunks forward, then removes the packs they came from.
    let mut held: Option<Located> = None;
    for item in entries {
        let (id, loc) = item?;
        match held {
            Some((hid, hloc)) if hid == id => {
                if loc.pack > hloc.pack {
                    held = Some((id, loc));
                }
            }
            Some(h) => {
                debug_assert!(h.0 < id, "entries come sorted");
                put(&mut w, h).map_err(io)?;
                held = Some((id, loc));
            }
            None => held = Some((id, loc)),
        }
    }
    if let Some(h) = held {
        put(&mut w, h).map_err(io)?;
    }
    w.write_all(&tags).map_err(io)?;
    if count > u64::from(u32::MAX) {
        return Err(StoreError::CorruptCatalog {
            what: format!("chunk index for packs {lo}..={hi}"),
            detail: format!("{count} entries are more than one file holds"),
        });
    }
    let mut end = 0u32;
    let mut table = Vec::with_capacity(4 << bits);
    for n in &buckets {
        end += n;
        table.extend_from_slice(&end.to_le_bytes());
    }
    w.write_all(&table).map_err(io)?;
    w.flush().map_err(io)?;
    drop(w);
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&bits.to_le_bytes());
    h[16..24].copy_from_slice(&count.to_le_bytes());
    h[24..32].copy_from_slice(&lo.to_le_bytes());
    h[32..40].copy_from_slice(&hi.to_le_bytes());
    h[44..48].copy_from_slice(&crc32fast::hash(&tags).to_le_bytes());
    h[48..52].copy_from_slice(&crc32fast::hash(&table).to_le_bytes());
    let crc = crc32fast::hash(&h[..52]);
    h[52..56].copy_from_slice(&crc.to_le_bytes());
    f.file.write_all_at(&h, 0).map_err(io)?;
    let path = f.install()?;
    Run::open(&path, lo, hi).map_err(|detail| StoreError::CorruptCatalog {
        what: format!("chunk index {}", path.display()),
        detail: format!("just written, it reads back wrong: {detail}"),
    })
}

/// The intact records of a sealed pack. A damaged record stops the reading there, loudly: the
/// chunks after it cannot be found, but the pack is left as it is.
fn read_sealed(packs_dir: &Path, id: PackId) -> Result<Vec<Located>> {
    let path = pack::pack_path(packs_dir, id);
    let f = File::open(&path).ctx(|| format!("opening pack {}", path.display()))?;
    let (good, records) = pack::scan(&f, id)?;
    let len = f.metadata().ctx(|| "stat pack".into())?.len();
    if good != len {
        tracing::error!(pack = %id, offset = good, len, "pack is damaged: the chunks after this offset cannot be read (run `clawfs verify`)");
    }
    Ok(records)
}

impl ChunkIndex {
    /// Opens the index of `packs` (sorted), the packs in `packs_dir`. Files that fail their
    /// checks are rebuilt from their packs, and packs no file covers are read and indexed,
    /// except the last: that one, if no file covers it, is returned as the pack that was open
    /// for appending, whose records the caller adds with [`add`](Self::add).
    pub fn open(packs_dir: &Path, packs: &[PackId]) -> Result<(ChunkIndex, Option<PackId>)> {
        let dir = packs_dir.join("index");
        // Files that a crash cut short are removed, and their packs indexed again below.
        let kept = run_files::list(&dir)?;
        let index = ChunkIndex {
            dir,
            packs_dir: packs_dir.to_path_buf(),
            runs: RwLock::new(Vec::new()),
            fresh: RwLock::new(HashMap::new()),
            writing: Mutex::new(()),
        };
        let mut runs = Vec::new();
        for (lo, hi, path) in kept {
            match Run::open(&path, lo, hi) {
                Ok(r) => runs.push(Arc::new(r)),
                Err(detail) => {
                    tracing::error!(file = %path.display(), %detail, "chunk index file is damaged; rebuilding it from its packs");
                    let _ = std::fs::remove_file(&path);
                    let present: Vec<PackId> = packs
                        .iter()
                        .copied()
                        .filter(|p| (lo..=hi).contains(&p.0))
                        .collect();
                    if let Some(r) = index.index_packs(&present)? {
                        runs.push(Arc::new(r));
                    }
                }
            }
        }
        runs.sort_by_key(|r| r.base.lo);
        let open_pack = packs
            .last()
            .copied()
            .filter(|p| !runs.iter().any(|r| r.covers(p.0)));
        // Each stretch of neighbouring packs that no file covers becomes one file: a file's
        // range must not take in a pack it did not read.
        let mut stretch: Vec<PackId> = Vec::new();
        for &p in packs {
            if Some(p) != open_pack && !runs.iter().any(|r| r.covers(p.0)) {
                stretch.push(p);
            } else if !stretch.is_empty() {
                runs.extend(index.index_packs(&stretch)?.map(Arc::new));
                stretch.clear();
            }
        }
        runs.extend(index.index_packs(&stretch)?.map(Arc::new));
        runs.sort_by_key(|r| r.base.lo);
        *index.runs.write() = runs;
        Ok((index, open_pack))
    }

    /// Reads sealed packs (neighbours, in order) and writes their index file.
    fn index_packs(&self, packs: &[PackId]) -> Result<Option<Run>> {
        let (Some(first), Some(last)) = (packs.first(), packs.last()) else {
            return Ok(None);
        };
        tracing::info!(first = %first, last = %last, "indexing packs no index file covers");
        let mut all = Vec::new();
        for &p in packs {
            all.extend(read_sealed(&self.packs_dir, p)?);
        }
        all.sort_unstable_by_key(|a| a.0);
        let n = all.len() as u64;
        write_run(&self.dir, first.0, last.0, n, all.into_iter().map(Ok)).map(Some)
    }

    /// Where chunk `id` is, if stored.
    pub fn get(&self, id: &ChunkId) -> Result<Option<ChunkLoc>> {
        if let Some(loc) = self.fresh.read().get(id) {
            return Ok(Some(*loc));
        }
        for r in self.runs.read().iter().rev() {
            if let Some(loc) = r.find(id)? {
                return Ok(Some(loc));
            }
        }
        Ok(None)
    }

    /// Whether chunk `id` is stored.
    pub fn contains(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.get(id)?.is_some())
    }

    /// Records a chunk appended to a pack no file covers yet.
    pub fn add(&self, id: ChunkId, loc: ChunkLoc) {
        self.fresh.write().insert(id, loc);
    }

    /// Writes the index file of `packs` (sealed and synced neighbours, in order) from the
    /// records added for them, then merges files as their sizes call for.
    pub fn seal(&self, packs: &[PackId]) -> Result<()> {
        let (Some(first), Some(last)) = (packs.first(), packs.last()) else {
            return Ok(());
        };
        let _w = self.writing.lock();
        let set: BTreeSet<PackId> = packs.iter().copied().collect();
        let mut mine: Vec<Located> = self
            .fresh
            .read()
            .iter()
            .filter(|(_, l)| set.contains(&l.pack))
            .map(|(id, l)| (*id, *l))
            .collect();
        mine.sort_unstable_by_key(|a| a.0);
        let n = mine.len() as u64;
        let run = Arc::new(write_run(
            &self.dir,
            first.0,
            last.0,
            n,
            mine.into_iter().map(Ok),
        )?);
        // The file answers before the map forgets: a lookup never misses in between.
        self.runs.write().push(run);
        self.fresh.write().retain(|_, l| !set.contains(&l.pack));
        // Merging only makes lookups cheaper: when it fails (a full disk, a damaged file), the
        // files stay as they are and answer as before.
        if let Err(e) = self.merge() {
            tracing::error!(error = %e, "could not merge chunk index files; lookups read more files until it succeeds");
        }
        Ok(())
    }

    /// Forgets every chunk of `packs` (about to be removed): each file answering for one of
    /// them is written again without their entries, under the same name, and takes the old
    /// one's place. Doing it again changes nothing, so an interrupted removal is finished by
    /// doing it again (`PackStore::open`).
    pub fn drop_packs(&self, packs: &BTreeSet<PackId>) -> Result<()> {
        let _w = self.writing.lock();
        let runs: Vec<Arc<Run>> = self.runs.read().clone();
        for old in runs {
            if !packs.iter().any(|p| old.covers(p.0)) {
                continue;
            }
            let kept: Vec<Located> = old
                .entries()?
                .filter(|e| e.as_ref().map_or(true, |(_, l)| !packs.contains(&l.pack)))
                .collect::<Result<_>>()?;
            let n = kept.len() as u64;
            let new = Arc::new(write_run(
                &self.dir,
                old.base.lo,
                old.base.hi,
                n,
                kept.into_iter().map(Ok),
            )?);
            let mut runs = self.runs.write();
            if let Some(slot) = runs.iter_mut().find(|r| Arc::ptr_eq(r, &old)) {
                *slot = new;
            }
        }
        self.fresh.write().retain(|_, l| !packs.contains(&l.pack));
        Ok(())
    }

    /// Forgets a chunk held in memory (tests: a crash before it was recorded).
    #[cfg(test)]
    pub fn forget(&self, id: &ChunkId) {
        self.fresh.write().remove(id);
    }

    fn merge(&self) -> Result<()> {
        run_files::merge_newest(
            &self.runs,
            |a, b, files| {
                (a.base.count <= MERGE_RATIO * b.base.count.max(1) || files > MAX_FILES)
                    && self.adjacent(a, b)
            },
            |a, b| {
                let both = run_files::merge_sorted(a.entries()?, b.entries()?, |e| e.0);
                write_run(
                    &self.dir,
                    a.base.lo,
                    b.base.hi,
                    a.base.count + b.base.count,
                    both,
                )
            },
        )
    }

    /// Whether no pack lies between two files' ranges (a merged file's range must not take in
    /// a pack it did not read).
    fn adjacent(&self, a: &Run, b: &Run) -> bool {
        ((a.base.hi + 1)..b.base.lo).all(|p| !pack::pack_path(&self.packs_dir, PackId(p)).exists())
    }

    /// Number of index files and of chunks they hold, and chunks held in memory.
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
    use crate::store::run_files::{file_name, parse_name};

    fn loc(pack: u64, offset: u64) -> ChunkLoc {
        ChunkLoc {
            pack: PackId(pack),
            offset,
            stored_len: 100,
            raw_len: 200,
            compressed: true,
        }
    }

    fn id(i: u64) -> ChunkId {
        ChunkId::of(&i.to_le_bytes())
    }

    /// Index files written for made-up packs (no pack files: `open` is given none).
    fn sealed(dir: &Path, packs: u64, per_pack: u64) -> ChunkIndex {
        let (index, open) = ChunkIndex::open(dir, &[]).unwrap();
        assert_eq!(open, None);
        for p in 1..=packs {
            for i in 0..per_pack {
                index.add(id(p * 1_000_000 + i), loc(p, 16 + i * 145));
            }
            index.seal(&[PackId(p)]).unwrap();
        }
        index
    }

    #[test]
    fn every_sealed_chunk_is_found_after_merges_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let index = sealed(dir.path(), 40, 300);
        let (files, held, fresh) = index.stats();
        assert_eq!((held, fresh), (40 * 300, 0));
        assert!(files <= 6, "{files} files: merges keep lookups to a few");
        let check = |index: &ChunkIndex| {
            for p in 1..=40 {
                for i in (0..300).step_by(7) {
                    let got = index.get(&id(p * 1_000_000 + i)).unwrap();
                    assert_eq!(got, Some(loc(p, 16 + i * 145)));
                }
            }
            assert_eq!(index.get(&id(7)).unwrap(), None);
        };
        check(&index);
        drop(index);
        let (index, _) = ChunkIndex::open(dir.path(), &[]).unwrap();
        assert_eq!(index.stats().1, 40 * 300);
        check(&index);
    }

    /// A merge cut off after writing its file, before removing the two it merged, leaves
    /// three files; the next open keeps only the merged one.
    #[test]
    fn files_a_merge_left_behind_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let index = sealed(dir.path(), 1, 50);
        let idx = dir.path().join("index");
        let one = idx.join(file_name(1, 1));
        let kept = std::fs::read(&one).unwrap();
        for i in 0..50 {
            index.add(id(2_000_000 + i), loc(2, 16 + i));
        }
        index.seal(&[PackId(2)]).unwrap();
        drop(index);
        assert!(idx.join(file_name(1, 2)).exists(), "merged");
        std::fs::write(&one, kept).unwrap();
        std::fs::write(idx.join(format!(".tmp-{}", file_name(3, 3))), b"torn").unwrap();
        let (index, _) = ChunkIndex::open(dir.path(), &[]).unwrap();
        assert_eq!(index.stats(), (1, 100, 0));
        assert!(!one.exists() && !idx.join(format!(".tmp-{}", file_name(3, 3))).exists());
        assert_eq!(index.get(&id(2_000_000)).unwrap(), Some(loc(2, 16)));
    }

    /// Damage is never a wrong answer: a flipped entry is refused with the file named, and a
    /// file whose header or tags fail their checks is rebuilt from its packs at open.
    #[test]
    fn a_damaged_file_is_refused_or_rebuilt_never_believed() {
        let dir = tempfile::tempdir().unwrap();
        let index = sealed(dir.path(), 1, 50);
        let path = dir.path().join("index").join(file_name(1, 1));
        let target = id(1_000_000 + 3);
        let run = index.runs.read()[0].clone();
        let b = bucket_of(&target, run.bits);
        let start = if b == 0 {
            0
        } else {
            run.buckets[b - 1] as usize
        };
        let at = (start..run.buckets[b] as usize)
            .find(|&i| {
                let mut e = [0u8; ENTRY];
                run.base
                    .file
                    .read_exact_at(&mut e, HEADER + (i * ENTRY) as u64)
                    .unwrap();
                e[..32] == target.0
            })
            .unwrap();
        drop(run);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER as usize + at * ENTRY + 41] ^= 1; // the offset
        std::fs::write(&path, &bytes).unwrap();
        let err = index.get(&target).unwrap_err().to_string();
        assert!(
            err.contains("chunk index") && err.contains("checksum"),
            "{err}"
        );
        drop(index);
        // A flipped tag: the file's checks fail at open; no pack file is there to rebuild
        // from, so it comes back empty rather than wrong.
        let tags_at = HEADER as usize + 50 * ENTRY;
        bytes[HEADER as usize + at * ENTRY + 41] ^= 1;
        bytes[tags_at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (index, _) = ChunkIndex::open(dir.path(), &[]).unwrap();
        assert_eq!(index.get(&target).unwrap(), None);
    }

    #[test]
    fn names_and_buckets() {
        assert_eq!(parse_name(&file_name(1, 0x2a)), Some((1, 0x2a)));
        assert_eq!(parse_name("0000000000000002-0000000000000001.idx"), None);
        assert_eq!(parse_name("junk.idx"), None);
        assert_eq!(bits_for(0), 0);
        assert_eq!(bits_for(32), 0);
        assert_eq!(bits_for(33), 1);
        assert_eq!(bits_for(1 << 40), MAX_BITS);
        let e = encode_entry(&id(1), &loc(3, 99));
        assert_eq!(decode_entry(&e), Some((id(1), loc(3, 99))));
    }
}
