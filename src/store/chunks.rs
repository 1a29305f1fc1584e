//! The chunk store contract and its implementations.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::ids::{ChunkId, PackId};
use crate::store::chunk_index::ChunkIndex;
use crate::store::error::{IoContext, Result, StoreError};
use crate::store::pack::{self, ChunkLoc, PackWriter, PACK_TARGET, RECORD_OVERHEAD};

/// Content-addressed chunk storage.
///
/// Contract, for every implementation:
/// - `put(id, data)` requires `id == ChunkId::of(data)`. It is idempotent: a chunk already
///   present is not stored twice. When it returns the chunk is readable by `get` from any thread,
///   and survives a crash of the process, but not necessarily of the machine.
/// - `sync()` is a write barrier: every `put` that returned before it survives a power loss once
///   it returns. The catalogue is flushed only after a `sync`, so no durable record refers to a
///   chunk that is not durable.
/// - `get(id)` returns the exact bytes that were put, or [`StoreError::MissingChunk`] when the
///   chunk was never stored ("missing" is an error, never an empty chunk: the empty chunk is
///   never stored), or a corruption error when the stored bytes fail their checksum.
/// - `has(id)` is `get(id).is_ok()` without reading the bytes.
pub trait ChunkStore: Send + Sync {
    /// Stores a chunk; returns the bytes newly written (0 when it was already present).
    fn put(&self, id: ChunkId, data: &[u8]) -> Result<u64>;
    /// Stores several chunks, as `put` each would; returns the bytes newly written. A store
    /// that writes to files writes a batch at once.
    fn put_batch(&self, chunks: &[(ChunkId, &[u8])]) -> Result<u64> {
        chunks.iter().map(|&(id, data)| self.put(id, data)).sum()
    }
    /// Reads a chunk back.
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>>;
    /// Whether a chunk is present.
    fn has(&self, id: &ChunkId) -> Result<bool>;
    /// Write barrier: makes every earlier `put` durable.
    fn sync(&self) -> Result<()>;
    /// `get(id)` for a chunk that follows chunk `prev` in a file being read: a store that keeps
    /// a file's chunks next to each other can look there first.
    fn get_after(&self, id: &ChunkId, prev: Option<&ChunkId>) -> Result<Vec<u8>> {
        let _ = prev;
        self.get(id)
    }
}

/// Chunks in memory: for unit tests of the layers above.
#[derive(Default)]
pub struct MemChunkStore {
    chunks: RwLock<HashMap<ChunkId, Arc<Vec<u8>>>>,
}

impl ChunkStore for MemChunkStore {
    fn put(&self, id: ChunkId, data: &[u8]) -> Result<u64> {
        let mut m = self.chunks.write();
        if m.contains_key(&id) {
            return Ok(0);
        }
        m.insert(id, Arc::new(data.to_vec()));
        Ok(data.len() as u64)
    }
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.chunks
            .read()
            .get(id)
            .map(|d| d.as_ref().clone())
            .ok_or(StoreError::MissingChunk(*id))
    }
    fn has(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.chunks.read().contains_key(id))
    }
    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

/// Chunks in append-only pack files, located through a [`ChunkIndex`] beside them.
pub struct PackStore {
    dir: PathBuf,
    index: ChunkIndex,
    writer: Mutex<Option<PackWriter>>,
    /// Packs sealed since the last [`sync`](ChunkStore::sync), synced and indexed there.
    sealed: Mutex<Vec<PackWriter>>,
    /// Records appended since open, counted under the writer lock.
    appended: AtomicU64,
    readers: RwLock<HashMap<PackId, Arc<File>>>,
    /// Where recently read chunks were: see [`ChunkStore::get_after`].
    recent: Mutex<lru::LruCache<ChunkId, ChunkLoc>>,
    /// Packs a prune may remove ([`PackStore::retire`]): a chunk found only there counts as
    /// absent, so a writer stores it again rather than name a record about to go.
    retiring: RwLock<BTreeSet<PackId>>,
}

/// Chunk locations remembered from reads, for finding the chunk after each.
const RECENT_LOCATIONS: usize = 4096;
/// A record header claiming a longer payload than this is not followed (chunks are at most
/// 64 KiB, leaves about 9 KiB).
const MAX_STORED_LEN: u32 = 1 << 20;
/// Sealed packs waiting for a barrier are synced and indexed once there are this many, so a
/// long run of appends without one (a restore) holds few records in memory.
const SEALED_MAX: usize = 4;

impl PackStore {
    /// Opens the packs in `dir`. The last pack, unless an index file covers it, is the one
    /// that was open for appending: it is checked record by record, a torn tail is cut off,
    /// and its records are indexed in memory.
    pub fn open(dir: &Path) -> Result<PackStore> {
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        let packs: Vec<PackId> = list_packs(dir)?.into_iter().map(|(id, _)| id).collect();
        let (index, open_pack) = ChunkIndex::open(dir, &packs)?;
        let writer = match open_pack {
            Some(id) => {
                let (w, records, _) = PackWriter::reopen(dir, id)?;
                for (cid, loc) in records {
                    index.add(cid, loc);
                }
                Some(w)
            }
            None => None,
        };
        finish_dropping(dir, &index)?;
        Ok(PackStore {
            dir: dir.to_path_buf(),
            index,
            writer: Mutex::new(writer),
            sealed: Mutex::new(Vec::new()),
            appended: AtomicU64::new(0),
            readers: RwLock::new(HashMap::new()),
            recent: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(RECENT_LOCATIONS).expect("nonzero"),
            )),
            retiring: RwLock::new(BTreeSet::new()),
        })
    }

    /// Whether chunk `id` is stored where a writer may name it: indexed, and not only in a
    /// pack a prune is retiring.
    fn stored(&self, id: &ChunkId) -> Result<bool> {
        Ok(self
            .index
            .get(id)?
            .is_some_and(|loc| !self.retiring.read().contains(&loc.pack)))
    }

    /// The chunk index: file count and size, for `status`.
    pub fn index(&self) -> &ChunkIndex {
        &self.index
    }

    /// Where a chunk is, if present.
    pub fn locate(&self, id: &ChunkId) -> Result<Option<ChunkLoc>> {
        self.index.get(id)
    }

    fn reader(&self, id: PackId) -> Result<Arc<File>> {
        if let Some(f) = self.readers.read().get(&id) {
            return Ok(f.clone());
        }
        let path = pack::pack_path(&self.dir, id);
        let f = Arc::new(File::open(&path).ctx(|| format!("opening pack {}", path.display()))?);
        let mut readers = self.readers.write();
        if readers.len() > 512 {
            readers.clear();
        }
        readers.insert(id, f.clone());
        Ok(f)
    }

    fn next_pack_id(&self) -> Result<PackId> {
        Ok(PackId(
            list_packs(&self.dir)?.last().map_or(0, |(id, _)| id.0) + 1,
        ))
    }

    /// Every pack file and its size: what the replicator uploads and `status` counts.
    pub fn packs(&self) -> Result<Vec<(PackId, u64)>> {
        list_packs(&self.dir)
    }

    /// Reads and checks every record of every pack; returns the number of chunks checked.
    pub fn verify_all(&self) -> Result<u64> {
        let mut n = 0;
        for (id, _) in self.packs()? {
            let f = self.reader(id)?;
            let (good, records) = pack::scan(&f, id)?;
            let len = f.metadata().ctx(|| "stat pack".into())?.len();
            if good != len {
                return Err(StoreError::CorruptPack {
                    pack: id,
                    offset: good,
                    detail: "record does not check out".into(),
                });
            }
            for (cid, loc) in records {
                // A record the index does not name is a copy no one reads (a prune copied it
                // forward, or a crash left two); it is still checked. Chunks that versions
                // name are checked to be indexed by `Store::verify`.
                let data = self.read_at(&cid, &loc)?;
                if ChunkId::of(&data) != cid {
                    return Err(StoreError::CorruptPack {
                        pack: id,
                        offset: loc.offset,
                        detail: "content does not hash to its id".into(),
                    });
                }
                n += 1;
            }
        }
        Ok(n)
    }

    fn read_at(&self, id: &ChunkId, loc: &ChunkLoc) -> Result<Vec<u8>> {
        let f = self.reader(loc.pack)?;
        let mut rec = vec![0u8; RECORD_OVERHEAD as usize + loc.stored_len as usize];
        f.read_exact_at(&mut rec, loc.offset)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => StoreError::CorruptPack {
                    pack: loc.pack,
                    offset: loc.offset,
                    detail: "pack is shorter than the index says".into(),
                },
                _ => StoreError::Io {
                    what: format!("reading pack {}", loc.pack),
                    source: e,
                },
            })?;
        pack::decode_record(loc.pack, loc.offset, &rec, id)
    }
}

impl PackStore {
    /// Chunk `id`, read where the index says, and where it is. A prune may move a chunk to a
    /// new pack and remove the old one between the lookup and the read: a failed read asks the
    /// index again, and reads the new place if there is one.
    fn read_located(&self, id: &ChunkId) -> Result<(Vec<u8>, ChunkLoc)> {
        self.at_location(id, |loc| self.read_at(id, loc))
    }

    /// `read` at the place the index gives for chunk `id`, and again at its new place if that
    /// fails and the index has since moved it (see [`Self::read_located`]).
    fn at_location<T>(
        &self,
        id: &ChunkId,
        read: impl Fn(&ChunkLoc) -> Result<T>,
    ) -> Result<(T, ChunkLoc)> {
        let loc = self.locate(id)?.ok_or(StoreError::MissingChunk(*id))?;
        match read(&loc) {
            Ok(v) => Ok((v, loc)),
            Err(e) => match self.locate(id)? {
                Some(moved) if moved != loc => Ok((read(&moved)?, moved)),
                _ => Err(e),
            },
        }
    }

    /// The record at `loc`, byte for byte, unchecked.
    fn raw_at(&self, loc: &ChunkLoc) -> Result<Vec<u8>> {
        let f = self.reader(loc.pack)?;
        let mut rec = vec![0u8; RECORD_OVERHEAD as usize + loc.stored_len as usize];
        f.read_exact_at(&mut rec, loc.offset)
            .ctx(|| format!("reading pack {}", loc.pack))?;
        Ok(rec)
    }

    /// Chunk `id` read from the record at `offset` of `pack`, if that record is chunk `id` and
    /// checks out; `None` sends the caller to the index.
    fn read_if_there(&self, id: &ChunkId, pack: PackId, offset: u64) -> Option<Vec<u8>> {
        let f = self.reader(pack).ok()?;
        let mut head = [0u8; pack::HEADER_BYTES];
        f.read_exact_at(&mut head, offset).ok()?;
        let (named, loc) = pack::header_location(pack, offset, &head)?;
        if named != *id || loc.stored_len > MAX_STORED_LEN {
            return None;
        }
        let data = self.read_at(id, &loc).ok()?;
        self.recent.lock().put(*id, loc);
        Some(data)
    }

    /// The stored record of a chunk, byte for byte (compressed, CRC-checked): what the
    /// replicator ships, so a chunk is compressed once, on this machine.
    pub fn raw_record(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.at_location(id, |loc| self.raw_at(loc))
            .map(|(rec, _)| rec)
    }

    /// Stores a record made by [`raw_record`](Self::raw_record) elsewhere, after checking
    /// its CRC and — with `hash` — that its content hashes to the id it names (a store that
    /// only feeds a restore which hashes every chunk it writes skips that). Returns the id.
    pub fn put_record(&self, rec: &[u8], hash: bool) -> Result<ChunkId> {
        let bad = |detail: &str| StoreError::CorruptPack {
            pack: PackId(0),
            offset: 0,
            detail: format!("received record: {detail}"),
        };
        let record = pack::Record::parse(rec).ok_or_else(|| bad("bad header, length or CRC"))?;
        let id = record.id();
        if hash {
            let data = pack::decode_record(PackId(0), 0, rec, &id)?;
            if ChunkId::of(&data) != id {
                return Err(bad("content does not hash to its id"));
            }
        }
        self.append(vec![record], None)?;
        Ok(id)
    }

    /// Appends the records of the chunks that are not stored yet. `absent_at` is the append
    /// count at which the caller found them all absent: if nothing was appended since, they
    /// still are, and the index is not asked again.
    fn append(&self, mut records: Vec<pack::Record<'_>>, absent_at: Option<u64>) -> Result<u64> {
        let mut w = self.writer.lock();
        // Checked again under the lock: two threads may race to store the same chunk.
        if absent_at != Some(self.appended.load(Ordering::Acquire)) {
            let mut fresh = Vec::with_capacity(records.len());
            for rec in records {
                if !self.stored(&rec.id())? {
                    fresh.push(rec);
                }
            }
            records = fresh;
        }
        if records.is_empty() {
            return Ok(0);
        }
        if w.as_ref().is_none_or(|w| w.len() >= PACK_TARGET) {
            if let Some(old) = w.take() {
                // Synced at the next barrier; its pages start out now.
                old.start_writeback();
                let waiting = {
                    let mut sealed = self.sealed.lock();
                    sealed.push(old);
                    sealed.len()
                };
                if waiting >= SEALED_MAX {
                    self.sync_sealed()?;
                }
            }
            *w = Some(PackWriter::create(&self.dir, self.next_pack_id()?)?);
        }
        let writer = w.as_mut().expect("just opened");
        let mut offset = writer.append(&records)?;
        let mut written = 0;
        // The records reached the kernel before the index names them.
        for rec in &records {
            let (id, loc) = rec.location(writer.id, offset);
            self.index.add(id, loc);
            offset += rec.len();
            written += rec.len();
        }
        self.appended
            .fetch_add(records.len() as u64, Ordering::Release);
        Ok(written)
    }
}

impl ChunkStore for PackStore {
    fn put(&self, id: ChunkId, data: &[u8]) -> Result<u64> {
        let absent_at = self.appended.load(Ordering::Acquire);
        if self.stored(&id)? {
            return Ok(0);
        }
        self.append(vec![pack::Record::encode(&id, data)], Some(absent_at))
    }

    fn put_batch(&self, chunks: &[(ChunkId, &[u8])]) -> Result<u64> {
        let absent_at = self.appended.load(Ordering::Acquire);
        let mut records: Vec<pack::Record<'_>> = Vec::with_capacity(chunks.len());
        for &(id, data) in chunks {
            if !records.iter().any(|r| r.id() == id) && !self.stored(&id)? {
                records.push(pack::Record::encode(&id, data));
            }
        }
        self.append(records, Some(absent_at))
    }

    fn get(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.read_located(id).map(|(data, _)| data)
    }

    fn has(&self, id: &ChunkId) -> Result<bool> {
        self.stored(id)
    }

    /// A file written front to back has its new chunks appended one after another, so the
    /// record after `prev`'s is tried first: if its header names `id`, the chunk index (a random
    /// lookup, several disk reads on a cold store) is not asked. The record's CRC and id are
    /// checked as on every read.
    fn get_after(&self, id: &ChunkId, prev: Option<&ChunkId>) -> Result<Vec<u8>> {
        let prev_loc = prev.and_then(|p| self.recent.lock().get(p).copied());
        if let Some(p) = prev_loc {
            let next = p.offset + RECORD_OVERHEAD + u64::from(p.stored_len);
            if let Some(hit) = self.read_if_there(id, p.pack, next) {
                return Ok(hit);
            }
        }
        let (data, loc) = self.read_located(id)?;
        self.recent.lock().put(*id, loc);
        Ok(data)
    }

    fn sync(&self) -> Result<()> {
        self.sync_sealed()?;
        if let Some(w) = self.writer.lock().as_ref() {
            w.sync()?;
        }
        Ok(())
    }
}

impl PackStore {
    /// Syncs the sealed packs, then writes their index file: an index file names only
    /// durable records. On an error the packs stay listed, to be tried at the next barrier
    /// (until then their records are found in memory).
    fn sync_sealed(&self) -> Result<()> {
        let mut sealed = self.sealed.lock();
        for p in sealed.iter() {
            p.sync()?;
        }
        let ids: Vec<PackId> = sealed.iter().map(|p| p.id).collect();
        self.index.seal(&ids)?;
        sealed.clear();
        Ok(())
    }
}

/// What [`PackStore::collect`] did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Collected {
    /// Chunk records that went with their packs.
    pub chunks_removed: u64,
    /// Pack files removed.
    pub packs_removed: u64,
    /// Bytes of live records copied to new packs first.
    pub bytes_copied: u64,
    /// Bytes of the packs removed.
    pub bytes_removed: u64,
    /// Packs kept because their live chunks could not be copied out: the store's disk is full
    /// (packs with nothing live still go).
    pub packs_left_for_room: u64,
}

/// Packs retiring for a collection ([`PackStore::retire`]); when dropped, whatever was not
/// removed retires no longer.
pub struct Retiring(Arc<PackStore>);

impl Drop for Retiring {
    fn drop(&mut self) {
        self.0.retiring.write().clear();
    }
}

/// The file naming the packs being removed (hex ids, one a line): written, synced, before the
/// index forgets them, and removed after they are gone.
const DROPPING: &str = "dropping";

impl PackStore {
    /// Starts a collection: every sealed pack but the newest is retiring from now on (see
    /// `stored`), so that from here a chunk that is only there is never named again
    /// without being stored anew. Called while nothing is recorded, right after the set of
    /// live chunks was taken: whatever is not live then stays unnamed. The newest pack stays
    /// (the next pack id follows it), as does the open one.
    pub fn retire(self: &Arc<Self>) -> Result<Retiring> {
        self.sync()?;
        let open = self.writer.lock().as_ref().map(|w| w.id);
        let packs = self.packs()?;
        let newest = packs.last().map(|p| p.0);
        *self.retiring.write() = packs
            .iter()
            .map(|p| p.0)
            .filter(|&id| Some(id) != open && Some(id) != newest)
            .collect();
        Ok(Retiring(self.clone()))
    }

    /// Removes the records of chunks not in `live` (taken when `retiring` began) from the
    /// retiring packs: a pack whose live records (those the index points at) take less than
    /// `repack_below` of it has them appended to the open pack, made durable, and then the
    /// pack goes; the others are kept and retire no longer. Writers go on meanwhile. Damaged
    /// packs are left for `verify` to report. Packs with nothing live go first: they need no
    /// room, and on a full disk they give back what the copies then need; packs whose copies
    /// still do not fit are kept ([`Collected::packs_left_for_room`]).
    ///
    /// Order, for crashes: copies synced; then the `DROPPING` file; then the index forgets
    /// the packs; then they are removed; then the file. Opening a store that has the file
    /// finishes the removal (`finish_dropping`), so the index never names a missing pack.
    pub fn collect(
        &self,
        retiring: Retiring,
        live: &HashSet<ChunkId>,
        repack_below: f64,
    ) -> Result<Collected> {
        let candidates: Vec<PackId> = self.retiring.read().iter().copied().collect();
        let mut out = Collected::default();
        // (pack, its length, its records, the live ones)
        let mut going = Vec::new();
        for id in candidates {
            let f = self.reader(id)?;
            let len = f.metadata().ctx(|| format!("stat pack {id}"))?.len();
            let (good, records) = pack::scan(&f, id)?;
            let mut keep = Vec::new();
            let mut live_bytes = pack::HEADER_LEN;
            for (cid, loc) in &records {
                if live.contains(cid) && self.index.get(cid)? == Some(*loc) {
                    keep.push((*cid, *loc));
                    live_bytes += RECORD_OVERHEAD + u64::from(loc.stored_len);
                }
            }
            if good != len {
                tracing::warn!(pack = %id, "pack is damaged: left alone by prune (run `clawfs verify`)");
            }
            if good != len
                || keep.len() == records.len()
                || live_bytes as f64 >= repack_below * len as f64
            {
                self.retiring.write().remove(&id);
                continue;
            }
            going.push((id, len, records.len(), keep));
        }
        let (empty, partial): (Vec<_>, Vec<_>) = going
            .into_iter()
            .partition(|(_, _, _, keep)| keep.is_empty());
        let empty = empty
            .into_iter()
            .map(|(id, len, n, _)| (id, len, n))
            .collect();
        self.drop_collected(empty, &mut out)?;
        let mut copied = Vec::new();
        for (id, len, n, keep) in partial {
            // Once one pack's copies found no room, the rest are not tried.
            let fits = out.packs_left_for_room == 0
                && match self.copy_out(id, &keep, &mut out.bytes_copied) {
                    Ok(()) => true,
                    Err(e @ StoreError::Full { .. }) => {
                        // The copies that went are harmless: the index names one or the other.
                        tracing::warn!(error = %e, "prune: packs whose live chunks need copying out are kept until there is room");
                        false
                    }
                    Err(e) => return Err(e),
                };
            if fits {
                copied.push((id, len, n - keep.len()));
            } else {
                self.retiring.write().remove(&id);
                out.packs_left_for_room += 1;
            }
        }
        self.drop_collected(copied, &mut out)?;
        drop(retiring);
        Ok(out)
    }

    /// Removes `packs` (their live records copied out and synced first): (pack, length, chunk
    /// records that go with it).
    fn drop_collected(&self, packs: Vec<(PackId, u64, usize)>, out: &mut Collected) -> Result<()> {
        if packs.is_empty() {
            return Ok(());
        }
        self.sync()?;
        let dropping: BTreeSet<PackId> = packs.iter().map(|p| p.0).collect();
        write_dropping(&self.dir, &dropping)?;
        self.drop_packs(&dropping)?;
        for (_, len, removed) in packs {
            out.packs_removed += 1;
            out.bytes_removed += len;
            out.chunks_removed += removed as u64;
        }
        Ok(())
    }

    /// Appends the records `keep` of pack `id` to the open pack, adding their bytes to `copied`.
    fn copy_out(&self, id: PackId, keep: &[(ChunkId, ChunkLoc)], copied: &mut u64) -> Result<()> {
        for (cid, loc) in keep {
            let rec = self.raw_at(loc)?;
            let record = pack::Record::parse(&rec).ok_or_else(|| StoreError::CorruptPack {
                pack: id,
                offset: loc.offset,
                detail: "record does not check out".into(),
            })?;
            debug_assert_eq!(record.id(), *cid);
            // Appended even though the index has it: the copy is what stays.
            let at = self.appended.load(Ordering::Acquire);
            *copied += self.append(vec![record], Some(at))?;
        }
        Ok(())
    }

    /// Forgets and removes `packs` (their [`DROPPING`] file written), then the file, and
    /// what was remembered of where their chunks were and of their open files.
    fn drop_packs(&self, packs: &BTreeSet<PackId>) -> Result<()> {
        forget_and_remove(&self.dir, &self.index, packs)?;
        self.recent.lock().clear();
        self.readers.write().retain(|id, _| !packs.contains(id));
        Ok(())
    }
}

/// The index forgets `packs`, then they are removed, then their [`DROPPING`] file: the end of
/// a collection, and of one a crash cut short ([`finish_dropping`]).
fn forget_and_remove(dir: &Path, index: &ChunkIndex, packs: &BTreeSet<PackId>) -> Result<()> {
    index.drop_packs(packs)?;
    for id in packs {
        remove_pack(dir, *id)?;
    }
    sync_dir(dir)?;
    let path = dir.join(DROPPING);
    std::fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))
}

/// Finishes a removal of packs that a crash interrupted: see [`PackStore::collect`].
fn finish_dropping(dir: &Path, index: &ChunkIndex) -> Result<()> {
    let path = dir.join(DROPPING);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StoreError::Io {
                what: format!("reading {}", path.display()),
                source: e,
            })
        }
    };
    let packs: BTreeSet<PackId> = text
        .lines()
        .filter_map(|l| u64::from_str_radix(l.trim(), 16).ok().map(PackId))
        .collect();
    tracing::warn!(
        packs = packs.len(),
        "finishing a removal of packs that was cut short"
    );
    forget_and_remove(dir, index, &packs)
}

fn write_dropping(dir: &Path, packs: &BTreeSet<PackId>) -> Result<()> {
    use std::io::Write;
    let path = dir.join(DROPPING);
    let text: String = packs.iter().map(|p| format!("{:016x}\n", p.0)).collect();
    let mut f = File::create(&path).ctx(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .ctx(|| format!("writing {}", path.display()))?;
    sync_dir(dir)
}

fn remove_pack(dir: &Path, id: PackId) -> Result<()> {
    let path = pack::pack_path(dir, id);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Io {
            what: format!("removing {}", path.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing {}", dir.display()))
}

/// Every pack file in `dir` and its size, by id.
fn list_packs(dir: &Path) -> Result<Vec<(PackId, u64)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).ctx(|| "listing packs".into())? {
        let e = e.ctx(|| "listing packs".into())?;
        if let Some(hexname) = e.file_name().to_str().and_then(|n| n.strip_suffix(".pack")) {
            if let Ok(n) = u64::from_str_radix(hexname, 16) {
                out.push((PackId(n), e.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Chunk records spooled into unlinked temp files and found through an index in memory: the
/// chunk store of a restore from a remote, which needs its chunks once, neither durable nor
/// catalogued. A received pack goes in whole, in one write, and is read back through the page
/// cache; memory holds only the index (about 60 bytes a chunk).
///
/// Readers may run while packs still arrive: chunks announced with [`SpoolStore::expect`] are
/// waited for by `get` until they are added or the spool is [closed](SpoolStore::close).
pub struct SpoolStore {
    dir: PathBuf,
    files: RwLock<Vec<Arc<File>>>,
    state: Mutex<SpoolState>,
    arrived: parking_lot::Condvar,
}

#[derive(Default)]
struct SpoolState {
    /// Chunk id → (file, offset, record length).
    index: HashMap<ChunkId, (u32, u64, u32)>,
    /// Chunks still to come.
    expected: HashSet<ChunkId>,
    /// No more will come.
    closed: bool,
    /// Why, when something went wrong.
    failed: Option<String>,
}

impl SpoolStore {
    /// A spool whose files live (unlinked) in `dir`.
    pub fn new(dir: &Path) -> SpoolStore {
        SpoolStore {
            dir: dir.to_path_buf(),
            files: RwLock::new(Vec::new()),
            state: Mutex::new(SpoolState::default()),
            arrived: parking_lot::Condvar::new(),
        }
    }

    /// Announces chunks that are on their way: `get` waits for them instead of failing.
    pub fn expect(&self, ids: impl IntoIterator<Item = ChunkId>) {
        let mut st = self.state.lock();
        let SpoolState {
            index, expected, ..
        } = &mut *st;
        expected.extend(ids.into_iter().filter(|id| !index.contains_key(id)));
    }

    /// No more chunks will come (`why` says what went wrong, if anything): readers waiting for
    /// an expected chunk get an error instead of waiting forever. Returns whether this call
    /// closed it (the first reason given is kept).
    pub fn close(&self, why: Option<String>) -> bool {
        let mut st = self.state.lock();
        if st.closed {
            return false;
        }
        st.closed = true;
        st.expected.clear();
        st.failed = why;
        self.arrived.notify_all();
        true
    }

    /// Whether [`SpoolStore::close`] was called: a filler stops there.
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Adds a run of records (a received pack) in one write. `entries` give each record's id,
    /// offset and length in `bytes`; every record is checked (bounds, CRC, id) before anything
    /// is added, and the error names the first bad one.
    pub fn add_records(&self, bytes: &[u8], entries: &[(ChunkId, u64, u32)]) -> Result<()> {
        for &(id, offset, len) in entries {
            let bad = |detail: &str| StoreError::CorruptPack {
                pack: PackId(self.files.read().len() as u64),
                offset,
                detail: detail.to_string(),
            };
            let rec = bytes
                .get(offset as usize..offset as usize + len as usize)
                .ok_or_else(|| bad("a record lies past the end"))?;
            match pack::check_crc(rec) {
                Some((got, _)) if got == id => {}
                Some(_) => return Err(bad("record holds another chunk than the index says")),
                None => return Err(bad("bad record header, length or CRC")),
            }
        }
        let mut f = tempfile::tempfile_in(&self.dir).ctx(|| "creating a spool file".into())?;
        std::io::Write::write_all(&mut f, bytes).ctx(|| "spooling chunks".into())?;
        let n = {
            let mut files = self.files.write();
            files.push(Arc::new(f));
            files.len() as u32 - 1
        };
        let mut st = self.state.lock();
        for &(id, offset, len) in entries {
            st.index.entry(id).or_insert((n, offset, len));
            st.expected.remove(&id);
        }
        self.arrived.notify_all();
        Ok(())
    }

    /// Where a chunk is, waiting for it if it is expected.
    fn wait_for(&self, id: &ChunkId) -> Result<(u32, u64, u32)> {
        let mut st = self.state.lock();
        loop {
            if let Some(loc) = st.index.get(id) {
                return Ok(*loc);
            }
            if !st.expected.contains(id) {
                return Err(match &st.failed {
                    Some(why) => StoreError::Io {
                        what: format!("chunk {id} never arrived"),
                        source: std::io::Error::other(why.clone()),
                    },
                    None => StoreError::MissingChunk(*id),
                });
            }
            self.arrived.wait(&mut st);
        }
    }
}

impl ChunkStore for SpoolStore {
    fn put(&self, id: ChunkId, data: &[u8]) -> Result<u64> {
        if self.has(&id)? {
            return Ok(0);
        }
        let rec = pack::encode_record(&id, data);
        self.add_records(&rec, &[(id, 0, rec.len() as u32)])?;
        Ok(rec.len() as u64)
    }

    fn get(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let (n, off, len) = self.wait_for(id)?;
        let f = self.files.read()[n as usize].clone();
        let mut rec = vec![0u8; len as usize];
        f.read_exact_at(&mut rec, off)
            .ctx(|| format!("reading spooled chunk {id}"))?;
        pack::decode_record(PackId(n as u64), off, &rec, id)
    }

    fn has(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.state.lock().index.contains_key(id))
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! One contract suite, run over every implementation.
    use super::*;

    fn contract(store: &dyn ChunkStore) {
        let a = b"alpha".repeat(1000);
        let id = ChunkId::of(&a);
        assert!(!store.has(&id).unwrap());
        assert!(matches!(store.get(&id), Err(StoreError::MissingChunk(_))));
        assert!(store.put(id, &a).unwrap() > 0);
        assert_eq!(store.put(id, &a).unwrap(), 0, "put is idempotent");
        assert!(store.has(&id).unwrap());
        assert_eq!(store.get(&id).unwrap(), a);
        let tiny = b"x".to_vec();
        let tid = ChunkId::of(&tiny);
        store.put(tid, &tiny).unwrap();
        assert_eq!(store.get(&tid).unwrap(), tiny);
        store.sync().unwrap();
        // A batch: one chunk already stored, one twice, two new.
        let (b, c) = (b"bravo".repeat(900), b"charlie".repeat(700));
        let (bid, cid) = (ChunkId::of(&b), ChunkId::of(&c));
        let batch = [(id, &a[..]), (bid, &b[..]), (bid, &b[..]), (cid, &c[..])];
        let stored = store.put_batch(&batch).unwrap();
        assert!(stored > 0);
        assert_eq!(
            store.put_batch(&batch).unwrap(),
            0,
            "put_batch is idempotent"
        );
        assert_eq!(store.get(&bid).unwrap(), b);
        assert_eq!(store.get(&cid).unwrap(), c);
        assert_eq!(store.get(&id).unwrap(), a);
        // Many chunks across threads.
        std::thread::scope(|s| {
            for t in 0..4u8 {
                s.spawn(move || {
                    for i in 0..200u32 {
                        let d = format!("{t}-{i}").repeat(50).into_bytes();
                        store.put(ChunkId::of(&d), &d).unwrap();
                    }
                });
            }
        });
        for t in 0..4u8 {
            for i in 0..200u32 {
                let d = format!("{t}-{i}").repeat(50).into_bytes();
                assert_eq!(store.get(&ChunkId::of(&d)).unwrap(), d);
            }
        }
        // `get_after` is `get`, whatever chunk it is told came before.
        let ids: Vec<(ChunkId, Vec<u8>)> = (0..200u32)
            .map(|i| format!("1-{i}").repeat(50).into_bytes())
            .map(|d| (ChunkId::of(&d), d))
            .collect();
        for w in ids.windows(2) {
            assert_eq!(store.get_after(&w[1].0, Some(&w[0].0)).unwrap(), w[1].1);
            assert_eq!(store.get_after(&w[0].0, Some(&w[1].0)).unwrap(), w[0].1);
            assert_eq!(store.get_after(&w[1].0, Some(&tid)).unwrap(), w[1].1);
        }
        assert_eq!(store.get_after(&id, None).unwrap(), a);
        assert!(matches!(
            store.get_after(&ChunkId::of(b"never stored"), Some(&ids[0].0)),
            Err(StoreError::MissingChunk(_))
        ));
    }

    #[test]
    fn memory_store_meets_the_contract() {
        contract(&MemChunkStore::default());
    }

    #[test]
    fn spool_store_meets_the_contract_and_refuses_a_bad_record() {
        let dir = tempfile::tempdir().unwrap();
        let spool = SpoolStore::new(dir.path());
        contract(&spool);
        let a = vec![9u8; 5000];
        let mut rec = pack::encode_record(&ChunkId::of(&a), &a);
        let len = rec.len() as u32;
        let last = rec.len() - 1;
        rec[last] ^= 1;
        let err = spool
            .add_records(&rec, &[(ChunkId::of(&a), 0, len)])
            .unwrap_err();
        assert!(err.to_string().contains("CRC"), "{err}");
        assert!(!spool.has(&ChunkId::of(&a)).unwrap(), "nothing added");
        let err = spool
            .add_records(&rec, &[(ChunkId::of(&a), 1, len)])
            .unwrap_err();
        assert!(err.to_string().contains("past the end"), "{err}");
    }

    #[test]
    fn spool_readers_wait_for_expected_chunks_until_they_arrive_or_the_spool_closes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = SpoolStore::new(dir.path());
        let (a, b) = (vec![1u8; 4000], vec![2u8; 4000]);
        let (ia, ib) = (ChunkId::of(&a), ChunkId::of(&b));
        spool.expect([ia, ib]);
        let unknown = ChunkId::of(b"never announced");
        assert!(matches!(
            spool.get(&unknown),
            Err(StoreError::MissingChunk(_))
        ));
        std::thread::scope(|s| {
            let reader = s.spawn(|| spool.get(&ia));
            std::thread::sleep(std::time::Duration::from_millis(50));
            spool.put(ia, &a).unwrap();
            assert_eq!(reader.join().unwrap().unwrap(), a);
            let reader = s.spawn(|| spool.get(&ib));
            std::thread::sleep(std::time::Duration::from_millis(50));
            spool.close(Some("pack 3 failed its authentication".into()));
            let err = reader.join().unwrap().unwrap_err().to_string();
            assert!(err.contains("pack 3 failed"), "{err}");
        });
    }

    #[test]
    fn pack_store_meets_the_contract_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ps = PackStore::open(&dir.path().join("packs")).unwrap();
        contract(&ps);
        drop(ps);
        let ps = PackStore::open(&dir.path().join("packs")).unwrap();
        let a = b"alpha".repeat(1000);
        assert_eq!(ps.get(&ChunkId::of(&a)).unwrap(), a);
        assert_eq!(ps.verify_all().unwrap(), 804);
    }

    #[test]
    fn reopen_reindexes_records_appended_after_the_last_sync() {
        let dir = tempfile::tempdir().unwrap();
        let open = || PackStore::open(&dir.path().join("packs"));
        let ps = open().unwrap();
        let (a, b) = (vec![1u8; 3000], vec![2u8; 3000]);
        let (ia, ib) = (ChunkId::of(&a), ChunkId::of(&b));
        ps.put(ia, &a).unwrap();
        ps.sync().unwrap();
        ps.put(ib, &b).unwrap();
        // The process died after appending b: nothing but the pack knows it.
        ps.index.forget(&ib);
        drop(ps);
        let ps = open().unwrap();
        assert_eq!(ps.get(&ia).unwrap(), a);
        assert_eq!(ps.get(&ib).unwrap(), b, "found again by the reopen's scan");
    }

    #[test]
    fn a_chunk_after_the_one_before_it_is_read_without_the_index_but_still_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ps = PackStore::open(&dir.path().join("packs")).unwrap();
        let chunks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 3000]).collect();
        let ids: Vec<ChunkId> = chunks.iter().map(|c| ChunkId::of(c)).collect();
        for (id, c) in ids.iter().zip(&chunks) {
            ps.put(*id, c).unwrap();
        }
        assert_eq!(ps.get_after(&ids[0], None).unwrap(), chunks[0]);
        // Without an index entry, the chunk after a read one is still found, next to it.
        let loc1 = ps.locate(&ids[1]).unwrap().unwrap();
        ps.index.forget(&ids[1]);
        assert_eq!(ps.get_after(&ids[1], Some(&ids[0])).unwrap(), chunks[1]);
        assert!(matches!(ps.get(&ids[1]), Err(StoreError::MissingChunk(_))));
        // A flipped payload byte in the next record: found there, refused by its CRC, and
        // the index's answer (the same damaged record) is refused too.
        let loc2 = ps.locate(&ids[2]).unwrap().unwrap();
        assert_eq!(
            loc2.offset,
            loc1.offset + RECORD_OVERHEAD + u64::from(loc1.stored_len)
        );
        let path = pack::pack_path(&dir.path().join("packs"), loc2.pack);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[loc2.offset as usize + 60] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        ps.readers.write().clear();
        let err = ps.get_after(&ids[2], Some(&ids[1])).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn pack_store_reports_a_flipped_byte() {
        let dir = tempfile::tempdir().unwrap();
        let ps = PackStore::open(&dir.path().join("packs")).unwrap();
        let a = vec![7u8; 3000];
        let id = ChunkId::of(&a);
        ps.put(id, &a).unwrap();
        let loc = ps.locate(&id).unwrap().unwrap();
        let path = pack::pack_path(&dir.path().join("packs"), loc.pack);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[loc.offset as usize + 50] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        ps.readers.write().clear();
        let err = ps.get(&id).unwrap_err();
        assert!(matches!(err, StoreError::CorruptPack { .. }), "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}
