//! Bringing history back: clone a remote into a store, and write a tree out of a store.
//!
//! A clone checks everything it brings in: every log segment is authenticated and names its
//! own range and repository, and every record in it passes
//! [`check_record`](crate::store::replica::check_record) before its epoch is applied (no `..`,
//! no absolute path, no record outside its epoch); every chunk record is CRC-checked (and, for
//! a kept store, hashed against its id) as it is stored. The caller removes a store whose
//! clone failed, so a bad remote leaves nothing.
//!
//! Writing a tree out ([`restore_tree`]) refuses a non-empty target, checks every chunk's
//! SHA-256 as it streams it, and writes into a staging directory that is moved into place only
//! when everything is written, so a failed restore leaves the target as it was.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::ids::{ChunkId, NodeId, Seq};
use crate::realfs::RealTree;
use crate::relpath::RelPath;
use crate::replicate::layout::{self, DeviceState};
use crate::replicate::push::{self, PushState};
use crate::replicate::repo::Repo;
use crate::replicate::{ReplicaError, Result};
use crate::store::catalog::{now_ns, Meta, NodeKind};
use crate::store::chunks::{ChunkStore, SpoolStore};
use crate::store::content::{decode_leaf, zeros_through, ChunkCache, ChunkRef, Content, ReadAt};
use crate::store::{Store, StoreError};

/// Packs downloaded at once by a clone (each holds one pack, ~8 MiB, in memory).
const PACK_FETCHERS: usize = 4;

/// What a clone brought in.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CloneReport {
    /// The device whose history it is.
    pub device: String,
    /// The newest epoch.
    pub head: Seq,
    /// Log segments read.
    pub segments: u64,
    /// Pack objects read.
    pub packs: u64,
    /// Chunks stored.
    pub chunks: u64,
    /// Requests and bytes.
    pub traffic: crate::remote::Traffic,
}

/// Picks the device to restore: the one asked for, else this store's own, else the only one.
pub fn pick_device(repo: &Repo, asked: Option<&str>, own: Option<&str>) -> Result<String> {
    let devices = repo.devices()?;
    if let Some(d) = asked {
        return if devices.iter().any(|x| x == d) {
            Ok(d.to_string())
        } else {
            Err(ReplicaError::Usage(format!(
                "no device {d} on {} (devices: {})",
                repo.remote().describe(),
                if devices.is_empty() {
                    "none".into()
                } else {
                    devices.join(", ")
                }
            )))
        };
    }
    if let Some(o) = own.filter(|o| devices.iter().any(|x| x == o)) {
        return Ok(o.to_string());
    }
    match devices.as_slice() {
        [] => Err(ReplicaError::Usage(format!(
            "{} holds no history yet (nothing was pushed to it)",
            repo.remote().describe()
        ))),
        [one] => Ok(one.clone()),
        many => Err(ReplicaError::Usage(format!(
            "{} holds several devices; pick one with --device ({})",
            repo.remote().describe(),
            many.join(", ")
        ))),
    }
}

/// Where a clone puts the chunks it fetches.
#[derive(Clone, Copy)]
pub enum ChunkDest<'a> {
    /// Into the store's packs, each record CRC-checked and hashed: a store that is kept.
    Store,
    /// Into a restore's spool, each record CRC-checked: the restore hashes every chunk before
    /// writing it (`restore_tree` with `verified = false`).
    Spool(&'a SpoolStore),
}

/// A clone whose catalogue is in: what it read so far, and the packs that hold its chunks.
pub struct Cloning {
    /// The report so far (log segments, head, traffic).
    pub report: CloneReport,
    /// Every pack the log's indexes name, with the records each holds.
    packs: Vec<PackEntries>,
    /// The log's segments and the indexes they name.
    pub(crate) objects: Vec<String>,
}

impl Cloning {
    /// Every chunk the packs hold.
    pub fn chunk_ids(&self) -> impl Iterator<Item = ChunkId> + '_ {
        self.packs
            .iter()
            .flat_map(|(_, es)| es.iter().map(|e| e.id))
    }

    /// Every pack the log's indexes name, with the records each holds.
    pub(crate) fn packs(&self) -> &[PackEntries] {
        &self.packs
    }

    /// How many packs the log's indexes name.
    pub fn pack_count(&self) -> u64 {
        self.packs.len() as u64
    }
}

/// Rebuilds `store` (which must be empty) from `device`'s history on the remote, and records
/// the remote as holding all of it, under `remote_name`. On error the store holds a partial
/// clone: the caller removes it.
pub fn clone_into(
    store: &Store,
    repo: &Repo,
    device: &str,
    remote_name: &str,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<CloneReport> {
    let cloning = clone_catalog(store, repo, device, progress)?;
    let held = fetch_packs(store, repo, &cloning, ChunkDest::Store, progress)?;
    let mut report = cloning.report;
    report.packs = cloning.packs.len() as u64;
    report.chunks = held.len() as u64;
    // This store continues that device's history, and the remote holds all of it.
    push::set_device_id(store, device)?;
    push::note_chunks(store, remote_name, held.into_iter())?;
    push::save_state(
        store,
        remote_name,
        &PushState {
            pushed: store.head(),
            last_push_ns: Some(now_ns()),
            ..Default::default()
        },
    )?;
    // Not flushed here: the caller flushes the kept store (`Store::flush`).
    report.traffic = repo.traffic();
    Ok(report)
}

/// The first half of a clone: every log segment of `device`, authenticated, applied epoch by
/// epoch to `store` (which must be empty) as if recorded there (`apply_epochs` checks every
/// record first), its marks and sessions, and the indexes the log names. Then
/// [`fetch_packs`] brings the chunks.
pub fn clone_catalog(
    store: &Store,
    repo: &Repo,
    device: &str,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<Cloning> {
    if store.head() != Seq::ZERO {
        return Err(ReplicaError::Usage(format!(
            "the store at {} already holds history; clone into a new directory",
            store.dir().display()
        )));
    }
    let segs = repo.segments(device)?;
    layout::check_chain(device, &segs)?;
    let mut report = CloneReport {
        device: device.to_string(),
        ..Default::default()
    };
    let mut indexes: Vec<String> = Vec::new();
    let mut objects: Vec<String> = Vec::new();
    for (i, (_, _, name)) in segs.iter().enumerate() {
        objects.push(name.clone());
        progress("log", i as u64, segs.len() as u64);
        let seg = repo.segment(name)?;
        for ix in &seg.indexes {
            if !indexes.contains(ix) {
                indexes.push(ix.clone());
            }
        }
        store
            .apply_epochs(&seg.epochs, seg.next_node)
            .map_err(|e| match e {
                StoreError::CorruptCatalog { .. } => {
                    ReplicaError::BadObject(format!("{name}: {e}"))
                }
                e => e.into(),
            })?;
        report.segments += 1;
        report.head = seg.to;
    }
    let mut packs_seen: HashSet<String> = HashSet::new();
    let mut packs = Vec::new();
    for ix in &indexes {
        for (pack, entries) in repo.index(ix)?.packs {
            if packs_seen.insert(pack.clone()) {
                packs.push((pack, entries));
            }
        }
    }
    // Marks and sessions.
    match repo.get_struct::<DeviceState>(&layout::marks_name(device)) {
        Ok(ds) => {
            for s in &ds.sessions {
                store.put_session(s)?;
            }
            for m in ds.marks.iter().filter(|m| m.seq <= store.head()) {
                if store.mark(&m.name)?.is_none() {
                    store.add_mark(m)?;
                }
            }
        }
        Err(ReplicaError::Remote(crate::remote::RemoteError::NotFound(_))) => {}
        Err(e) => return Err(e),
    }
    report.traffic = repo.traffic();
    objects.extend(indexes);
    Ok(Cloning {
        report,
        packs,
        objects,
    })
}

/// The second half of a clone: every pack, authenticated, its records stored into `dest`.
/// Returns the chunks stored.
pub fn fetch_packs(
    store: &Store,
    repo: &Repo,
    cloning: &Cloning,
    dest: ChunkDest,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<Vec<ChunkId>> {
    let all: Vec<&PackEntries> = cloning.packs.iter().collect();
    fetch_these(store, repo, &all, dest, progress)
}

/// Fetches into `spool` only the packs that hold what `wanted` needs: first those holding its
/// chunk lists and the chunks it names directly, then, the lists read, those holding the
/// chunks they list. A chunk no index names is left for the reader to report missing. Returns
/// how many packs it fetched.
pub fn fetch_wanted(
    store: &Store,
    repo: &Repo,
    cloning: &Cloning,
    spool: &SpoolStore,
    wanted: &Wanted,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<u64> {
    let packs = &cloning.packs;
    let home: HashMap<ChunkId, usize> = packs
        .iter()
        .enumerate()
        .flat_map(|(i, (_, es))| es.iter().map(move |e| (e.id, i)))
        .collect();
    let mut taken = vec![false; packs.len()];
    let mut pick = |ids: &mut dyn Iterator<Item = &ChunkId>| {
        let mut round: Vec<&PackEntries> = Vec::new();
        for i in ids.filter_map(|id| home.get(id)) {
            if !std::mem::replace(&mut taken[*i], true) {
                round.push(&packs[*i]);
            }
        }
        round
    };
    let first = pick(&mut wanted.leaves.iter().chain(&wanted.chunks));
    fetch_these(store, repo, &first, ChunkDest::Spool(spool), progress)?;
    let mut listed = HashSet::new();
    for leaf in &wanted.leaves {
        let data = spool
            .get(leaf)
            .map_err(|e| ReplicaError::BadObject(format!("chunk list {leaf}: {e}")))?;
        listed.extend(decode_leaf(&data)?.iter().map(|r| r.id));
    }
    let second = pick(&mut listed.iter());
    fetch_these(store, repo, &second, ChunkDest::Spool(spool), progress)?;
    Ok((first.len() + second.len()) as u64)
}

/// A pack's name and the records it holds, as its index gives them.
type PackEntries = (String, Vec<layout::IndexEntry>);

/// Fetches `packs` into `dest` on several threads, so that waiting on the network overlaps
/// with checking and storing. Returns the chunks stored.
fn fetch_these(
    store: &Store,
    repo: &Repo,
    packs: &[&PackEntries],
    dest: ChunkDest,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<Vec<ChunkId>> {
    let total = packs.len() as u64;
    let held = parking_lot::Mutex::new(Vec::<ChunkId>::new());
    in_parallel(
        PACK_FETCHERS,
        packs,
        |(pack, entries)| {
            let ids = fetch_pack(store, repo, pack, entries, dest)?;
            held.lock().extend(ids);
            Ok(())
        },
        |done, _| progress("packs", done, total),
    )?;
    Ok(held.into_inner())
}

/// Runs `work` on every item with `workers` threads; `done(count, result)` runs on the calling
/// thread as each item finishes. After the first failure no new item starts; that failure is
/// returned once the running ones end.
pub(crate) fn in_parallel<T: Sync, R: Send>(
    workers: usize,
    items: &[T],
    work: impl Fn(&T) -> Result<R> + Sync,
    mut done: impl FnMut(u64, R),
) -> Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let (tx, rx) = crossbeam_channel::unbounded::<Result<R>>();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (tx, next, work) = (tx.clone(), &next, &work);
            scope.spawn(move || {
                while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let r = work(item);
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        next.store(usize::MAX / 2, Ordering::Relaxed);
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut first_err = None;
        for (i, r) in rx.iter().enumerate() {
            match r {
                Ok(v) => done(i as u64 + 1, v),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    })
}

/// Downloads one pack, authenticates it, and stores each record it holds: CRC-checked and
/// hashed into the store's packs (`put_record`), or CRC-checked into the spool. Returns the
/// chunks stored.
fn fetch_pack(
    store: &Store,
    repo: &Repo,
    pack: &str,
    entries: &[layout::IndexEntry],
    dest: ChunkDest,
) -> Result<Vec<ChunkId>> {
    if let ChunkDest::Spool(spool) = dest {
        if spool.is_closed() {
            // Its reader gave up: the error it gives is the one that counts.
            return Err(ReplicaError::Usage("the restore stopped".into()));
        }
    }
    let plain = repo.get_sealed(pack)?;
    if let ChunkDest::Spool(spool) = dest {
        let runs: Vec<_> = entries
            .iter()
            .map(|e| (e.id, e.offset as u64, e.len))
            .collect();
        spool
            .add_records(&plain, &runs)
            .map_err(|err| ReplicaError::BadObject(format!("{pack}: {err}")))?;
        return Ok(entries.iter().map(|e| e.id).collect());
    }
    let mut ids = Vec::with_capacity(entries.len());
    for e in entries {
        let rec = plain
            .get(e.offset as usize..e.offset as usize + e.len as usize)
            .ok_or_else(|| ReplicaError::BadObject(format!("{pack}: index points past its end")))?;
        let id = store
            .packs()
            .put_record(rec, true)
            .map_err(|err| ReplicaError::BadObject(format!("{pack}: {err}")))?;
        if id != e.id {
            return Err(ReplicaError::BadObject(format!(
                "{pack}: holds another chunk than its index says"
            )));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// What a restore wrote.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreReport {
    /// The moment restored.
    pub seq: Seq,
    /// Where.
    pub target: PathBuf,
    /// Files written.
    pub files: u64,
    /// Directories made.
    pub dirs: u64,
    /// Symlinks made.
    pub symlinks: u64,
    /// Further names (hard links) given to files written under another.
    pub links: u64,
    /// File bytes written.
    pub bytes: u64,
}

/// File content that checks each chunk's SHA-256 as it is read.
struct Checked {
    chunks: Arc<ChunkCache>,
    /// (offset in the file, chunk id, length)
    map: Vec<(u64, ChunkId, u32)>,
    size: u64,
    /// Hash each chunk as it is read (skipped for a store a clone has just checked).
    verify: bool,
}

impl Checked {
    fn new(
        chunks: Arc<ChunkCache>,
        content: &Content,
        verify: bool,
    ) -> crate::store::Result<Checked> {
        let mut map = Vec::new();
        let mut off = 0u64;
        for seg in &content.segments {
            // A leaf is checked here; every chunk (a single segment's too) as it is read.
            if !seg.is_single() && ChunkId::of(&chunks.get_shared(&seg.leaf)?) != seg.leaf {
                return Err(StoreError::CorruptCatalog {
                    what: format!("chunk list {}", seg.leaf),
                    detail: "does not hash to its id".into(),
                });
            }
            for r in chunks.leaf(seg)?.iter() {
                map.push((off, r.id, r.len));
                off += r.len as u64;
            }
        }
        Ok(Checked {
            chunks,
            map,
            size: content.size,
            verify,
        })
    }
}

impl ReadAt for Checked {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> crate::store::Result<usize> {
        let mut done = 0;
        while done < buf.len() && offset + (done as u64) < self.size {
            let pos = offset + done as u64;
            let i = self.map.partition_point(|(o, _, _)| *o <= pos) - 1;
            let (start, id, len) = self.map[i];
            let data = self.chunks.get_shared(&id)?;
            if data.len() != len as usize || (self.verify && ChunkId::of(&data) != id) {
                return Err(StoreError::CorruptCatalog {
                    what: format!("chunk {id}"),
                    detail: "does not hash to its id; refusing to write it".into(),
                });
            }
            let from = (pos - start) as usize;
            let n = (data.len() - from).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&data[from..from + n]);
            done += n;
        }
        Ok(done)
    }
    /// Chunks named as zeros (their ids are checked, so their bytes are known): a sparse
    /// file is restored sparse, without fetching or hashing its zeros.
    fn zeros_at(&self, offset: u64) -> u64 {
        if offset >= self.size {
            return 0;
        }
        let first = self.map.partition_point(|(o, _, _)| *o <= offset) - 1;
        let chunks = self.map[first..].iter();
        zeros_through(
            offset,
            self.size,
            chunks.map(|&(start, id, len)| (start, ChunkRef { id, len })),
        )
    }
    fn len(&self) -> u64 {
        self.size
    }
}

/// Where a restore reads a tree from.
pub struct TreeSource<'a> {
    /// The catalogue.
    pub store: &'a Store,
    /// The content: the store's own chunks, or a restore's spool, which may still be filling.
    pub chunks: &'a Arc<ChunkCache>,
    /// A clone into this store has just hashed every chunk: skip hashing them again.
    pub verified: bool,
    /// Called once every file is written, before the tree is moved into place: an error
    /// (the spool's fetch failed) throws the written tree away.
    pub complete: &'a (dyn Fn() -> Result<()> + Sync),
}

impl<'a> TreeSource<'a> {
    /// A store's own tree and chunks, every chunk hashed as it is written.
    pub fn store(store: &'a Store) -> TreeSource<'a> {
        TreeSource {
            store,
            chunks: store.chunks(),
            verified: false,
            complete: &|| Ok(()),
        }
    }
}

/// The entries of the tree (or only of some paths, each with what lies below it) as of a
/// moment, in walk order: looked up once, before anything is written, for what a restore
/// writes and what it has fetched.
pub struct Walked {
    entries: Vec<(RelPath, crate::store::query::Entry)>,
    /// Their paths.
    seen: BTreeSet<RelPath>,
}

impl Walked {
    /// The tree (or only `paths`) as of `seq`; a path that did not exist then is an error.
    pub fn at(store: &Store, seq: Seq, paths: &[RelPath]) -> Result<Walked> {
        let roots: Vec<RelPath> = if paths.is_empty() {
            vec![RelPath::root()]
        } else {
            paths.to_vec()
        };
        let mut entries = Vec::new();
        let mut seen = BTreeSet::new();
        for r in &roots {
            let walked = store.walk(r, seq)?;
            if walked.is_empty() {
                return Err(ReplicaError::Usage(format!(
                    "{r} did not exist at moment {seq}"
                )));
            }
            for (p, e) in walked {
                if seen.insert(p.clone()) {
                    entries.push((p, e));
                }
            }
        }
        Ok(Walked { entries, seen })
    }

    /// What writing these entries reads.
    pub fn wanted(&self) -> Wanted {
        let mut w = Wanted::default();
        for (_, e) in &self.entries {
            if e.version.kind == NodeKind::File {
                w.add(&e.version.content);
            }
        }
        w
    }
}

/// What the files of a tree are made of, as far as the catalogue tells: the chunk lists
/// (leaves) of their contents, and the chunks their contents name directly.
#[derive(Default)]
pub struct Wanted {
    pub(crate) leaves: HashSet<ChunkId>,
    pub(crate) chunks: HashSet<ChunkId>,
}

impl Wanted {
    /// Adds what `content` is made of.
    pub(crate) fn add(&mut self, content: &Content) {
        for seg in &content.segments {
            if seg.is_single() {
                self.chunks.insert(seg.leaf);
            } else {
                self.leaves.insert(seg.leaf);
            }
        }
    }
}

/// Writes the tree (or only `paths`) as of `seq` from `src` into `target`, which must be empty
/// or absent. All or nothing: the tree is written into a staging directory inside `target`
/// and moved into place only once every file is complete and `src.complete` agrees; on error
/// the staging directory is removed (and `target`, if this made it). Files are not synced one
/// by one: the caller makes them durable with one [`RealTree::sync_all`]. Every chunk's
/// SHA-256 is checked as it is written, unless `src.verified`.
pub fn restore_tree(
    src: &TreeSource,
    seq: Seq,
    target: &Path,
    paths: &[RelPath],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RestoreReport> {
    restore_into(
        src,
        seq,
        target,
        || Walked::at(src.store, seq, paths),
        progress,
    )
}

/// [`restore_tree`] of entries already looked up (by the caller, to fetch what they need).
pub fn restore_walked(
    src: &TreeSource,
    seq: Seq,
    target: &Path,
    walked: Walked,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RestoreReport> {
    restore_into(src, seq, target, || Ok(walked), progress)
}

/// [`restore_tree`], the entries looked up by `walk` once `target` is found usable.
fn restore_into(
    src: &TreeSource,
    seq: Seq,
    target: &Path,
    walk: impl FnOnce() -> Result<Walked>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RestoreReport> {
    let io = |what: String| move |e: std::io::Error| ReplicaError::Io(format!("{what}: {e}"));
    let created = match std::fs::read_dir(target) {
        Ok(mut d) => {
            if d.next().is_some() {
                return Err(ReplicaError::Usage(format!(
                    "{} is not empty: restore into a new or empty directory (to put files back in place, use `clawfs rollback`)",
                    target.display()
                )));
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(ReplicaError::Io(format!("{}: {e}", target.display()))),
    };
    // Everything is looked up before anything is written.
    let Walked { entries, seen } = walk()?;
    std::fs::create_dir_all(target).map_err(io(format!("creating {}", target.display())))?;
    let staging = target.join(format!(".clawfs-restore.{:08x}", rand::random::<u32>()));
    let written = std::fs::create_dir(&staging)
        .map_err(io(format!("creating {}", staging.display())))
        .and_then(|()| {
            let staged = RealTree::new_batch(&staging);
            let (mut report, dirs) = write_entries(&staged, src, &entries, &seen, progress)?;
            (src.complete)()?;
            // Into place: move what was staged up into the target, then apply the root's
            // mode and the directories' times (after their contents stopped changing them).
            for e in
                std::fs::read_dir(&staging).map_err(io(format!("reading {}", staging.display())))?
            {
                let name = e
                    .map_err(io(format!("reading {}", staging.display())))?
                    .file_name();
                std::fs::rename(staging.join(&name), target.join(&name))
                    .map_err(io(format!("moving {} into place", name.to_string_lossy())))?;
            }
            std::fs::remove_dir(&staging).map_err(io(format!("removing {}", staging.display())))?;
            let tree = RealTree::new_batch(target);
            for (p, meta) in dirs.iter().rev() {
                let path = tree.path(p);
                if p.is_root() {
                    let _ = std::fs::set_permissions(
                        &path,
                        std::fs::Permissions::from_mode(meta.mode & 0o7777),
                    );
                }
                if meta.mtime_ns > 0 {
                    let t = std::time::UNIX_EPOCH
                        + std::time::Duration::from_nanos(meta.mtime_ns as u64);
                    if let Ok(f) = std::fs::File::open(&path) {
                        let _ = f.set_modified(t);
                    }
                }
            }
            report.seq = seq;
            report.target = target.to_path_buf();
            Ok(report)
        });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
        if created {
            let _ = std::fs::remove_dir(target);
        }
    }
    written
}

/// Writes `entries` into `tree` (the staging directory): directories and symlinks first, then
/// files by two workers (reading, decompressing and hashing chunks keeps a core busy, and a
/// worker may wait for a chunk still on its way). Returns what it wrote, and the directories
/// with the mode and time they get once their contents are in place.
fn write_entries(
    tree: &RealTree,
    src: &TreeSource,
    entries: &[(RelPath, crate::store::query::Entry)],
    seen: &BTreeSet<RelPath>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(RestoreReport, Vec<(RelPath, Meta)>)> {
    let io = |what: String| move |e: std::io::Error| ReplicaError::Io(format!("{what}: {e}"));
    let total: u64 = entries.iter().map(|(_, e)| e.version.size()).sum();
    let mut report = RestoreReport::default();
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    // A file with several names (hard links) is written once, under the first, and linked
    // under the others.
    let mut first_name: HashMap<NodeId, &RelPath> = HashMap::new();
    let mut links = Vec::new();
    for (p, e) in entries {
        // Parents of a restored path that are not themselves restored.
        if let Some((parent, _)) = p.split() {
            if !parent.is_root() && !seen.contains(&parent) {
                std::fs::create_dir_all(tree.path(&parent))
                    .map_err(io(format!("creating {parent}")))?;
            }
        }
        let v = &e.version;
        match v.kind {
            NodeKind::Dir => {
                tree.mkdir(p, v.meta.mode)
                    .map_err(io(format!("creating {p}")))?;
                dirs.push((p.clone(), v.meta));
                report.dirs += 1;
            }
            NodeKind::Symlink => {
                tree.put_symlink(p, &v.target)
                    .map_err(io(format!("writing {p}")))?;
                report.symlinks += 1;
            }
            NodeKind::File => match first_name.entry(e.node) {
                std::collections::hash_map::Entry::Occupied(first) => links.push((*first.get(), p)),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(p);
                    files.push((p, v));
                }
            },
        }
    }
    // Largest first: a big file started last would leave one worker writing it alone.
    files.sort_by_key(|(_, v)| std::cmp::Reverse(v.content.size));
    in_parallel(
        2,
        &files,
        |(p, v)| {
            let content = Checked::new(src.chunks.clone(), &v.content, !src.verified)?;
            tree.put_file(p, &content, &v.meta, &v.xattrs)
                // A chunk that fails its hash surfaces as an I/O error of the copy.
                .map_err(|err| ReplicaError::Io(format!("writing {p}: {err}")))?;
            Ok(v.content.size)
        },
        |_, n| {
            report.files += 1;
            report.bytes += n;
            progress(report.bytes, total);
        },
    )?;
    for (first, p) in links {
        tree.link(first, p)
            .map_err(io(format!("linking {p} to {first}")))?;
        report.links += 1;
    }
    Ok((report, dirs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SessionId;
    use crate::remote::{MemRemote, Remote};
    use crate::replicate::layout::LogSegment;
    use crate::replicate::settings::RemoteEntry;
    use crate::store::catalog::{decode, encode, Change};
    use crate::store::schema;

    fn entry() -> RemoteEntry {
        RemoteEntry::in_memory()
    }

    /// A store with two files and one directory, pushed to a memory remote.
    fn pushed() -> (tempfile::TempDir, Arc<MemRemote>, Repo) {
        std::env::set_var("CLAWFS_SCRYPT_LOG_N", "10");
        let d = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(&d.path().join("a")).unwrap();
        let mut rec = store.recorder(SessionId(1)).unwrap();
        let meta = Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 1,
        };
        let p = |s: &str| RelPath::new(s).unwrap();
        rec.create(&p("notes"), NodeKind::Dir, meta, "").unwrap();
        rec.create(&p("notes/a.md"), NodeKind::File, meta, "")
            .unwrap();
        rec.write(&p("notes/a.md"), 0, b"alpha").unwrap();
        rec.commit(true).unwrap();
        let remote = Arc::new(MemRemote::default());
        let (repo, created) = Repo::open(remote.clone(), "pw", true).unwrap();
        assert!(created);
        push::push(&store, &repo, &entry(), &mut |_, _| {}).unwrap();
        (d, remote, repo)
    }

    /// Clones `repo` into a new store `b` beside the pushed one.
    fn clone_b(d: &tempfile::TempDir, repo: &Repo) -> (Arc<Store>, Result<CloneReport>) {
        let b = Store::open_or_create(&d.path().join("b")).unwrap();
        let dev = pick_device(repo, None, None).unwrap();
        let r = clone_into(&b, repo, &dev, "mem", &mut |_, _, _| {});
        (b, r)
    }

    /// A repository written by a build of format 1 is marked 2 by the first push that adds to
    /// it (only the format number changes), once, and still clones whole.
    #[test]
    fn a_push_marks_a_format_1_repository_with_the_current_format() {
        let (d, remote, _) = pushed();
        let config_with = |format: u32| {
            let cfg =
                crate::crypto::RepoConfig::parse(&remote.get(layout::CONFIG).unwrap()).unwrap();
            crate::crypto::RepoConfig { format, ..cfg }
        };
        remote
            .put(layout::CONFIG, &config_with(1).to_bytes())
            .unwrap();
        let (repo, _) = Repo::open(remote.clone(), "pw", false).unwrap();
        let store = Store::open(&d.path().join("a")).unwrap();
        // Nothing new: nothing is written, the format stays.
        push::push(&store, &repo, &entry(), &mut |_, _| {}).unwrap();
        let format = || {
            crate::crypto::RepoConfig::parse(&remote.get(layout::CONFIG).unwrap())
                .unwrap()
                .format
        };
        assert_eq!(format(), 1);
        let mut rec = store.recorder(SessionId(2)).unwrap();
        let p = RelPath::new("notes/b.md").unwrap();
        rec.create(&p, NodeKind::File, Meta::default(), "").unwrap();
        rec.write(&p, 0, b"beta").unwrap();
        rec.commit(true).unwrap();
        push::push(&store, &repo, &entry(), &mut |_, _| {}).unwrap();
        assert_eq!(format(), crate::crypto::REPO_FORMAT);
        drop((rec, store));
        let (repo, _) = Repo::open(remote, "pw", false).unwrap();
        let (b, r) = clone_b(&d, &repo);
        r.unwrap();
        let out = d.path().join("out");
        restore_tree(&TreeSource::store(&b), b.head(), &out, &[], &mut |_, _| {}).unwrap();
        assert_eq!(std::fs::read(out.join("notes/b.md")).unwrap(), b"beta");
    }

    #[test]
    fn clone_and_restore_round_trip_through_memory() {
        let (d, remote, _) = pushed();
        let (repo, _) = Repo::open(remote, "pw", false).unwrap();
        let (b, r) = clone_b(&d, &repo);
        r.unwrap();
        let out = d.path().join("out");
        let r = restore_tree(&TreeSource::store(&b), b.head(), &out, &[], &mut |_, _| {}).unwrap();
        assert_eq!(r.files, 1);
        assert_eq!(std::fs::read(out.join("notes/a.md")).unwrap(), b"alpha");
    }

    /// A log whose records name `..`, even sealed with the right key (a buggy or hostile
    /// client), is refused and the new store gets nothing.
    #[test]
    fn a_log_segment_naming_dot_dot_is_refused() {
        let (d, remote, repo) = pushed();
        let name = remote.list("log/").unwrap().pop().unwrap();
        let mut seg: LogSegment = repo.get_struct(&name).unwrap();
        for e in &mut seg.epochs {
            for (k, v) in &mut e.records {
                if k[0] == schema::CHANGE {
                    let mut c: Change = decode(v, || "c".into()).unwrap();
                    c.path = "../../etc/evil".into();
                    *v = encode(&c);
                }
            }
        }
        repo.put_sealed(&name, &layout::pack_struct(&seg)).unwrap();
        let (b, r) = clone_b(&d, &repo);
        let err = r.unwrap_err().to_string();
        assert!(err.contains(".."), "{err}");
        assert_eq!(b.head(), Seq::ZERO, "nothing applied");
    }

    #[test]
    fn an_object_moved_to_another_name_is_refused() {
        let (_d, remote, repo) = pushed();
        let packs = remote.list("packs/").unwrap();
        let bytes = remote.get(&packs[0]).unwrap();
        remote.put("packs/0000", &bytes).unwrap();
        assert!(matches!(
            repo.get_sealed("packs/0000"),
            Err(ReplicaError::Crypto(_))
        ));
    }
}
