//! The version store: every moment of every file, content-addressed and catalogued.
//!
//! A [`Store`] is a directory holding a sled catalogue and pack files (layout in [`schema`]).
//! Changes go in through a [`Recorder`](recorder::Recorder), which gathers the operations of
//! one epoch in memory and commits them atomically under one sequence number. Everything else
//! reads: any file, directory or attribute as of any committed moment ([`query`]), the history
//! of a path ([`history`]), the difference of two moments and rollback plans ([`rollback`]).
//! Nothing here knows about FUSE.

pub mod catalog;
pub mod chunk_index;
pub mod chunker;
pub mod chunks;
pub mod compact;
pub mod content;
pub mod error;
pub mod history;
pub mod pack;
pub mod prune;
pub mod query;
pub mod recorder;
pub mod replica;
pub mod rollback;
pub mod room;
pub mod run_files;
pub mod schema;
pub mod version_index;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::ids::Seq;
use catalog::{decode, encode, Mark};
use chunks::{ChunkStore, PackStore};
use content::ChunkCache;
pub use error::{Result, StoreError};

/// Decoded chunks kept in memory for readers (×64 KiB at most each).
const CHUNK_CACHE_ENTRIES: usize = 256;
/// How long closing the store waits for the catalogue's last flush (see `Drop for Store`).
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// An open version store. Cheap to share (`Arc<Store>`): every read method takes `&self` and is
/// safe from any thread; one [`Recorder`](recorder::Recorder) at a time writes.
pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    cat: sled::Tree,
    packs: Arc<PackStore>,
    chunks: Arc<ChunkCache>,
    versions: version_index::VersionIndex,
    head: AtomicU64,
    /// Set when an epoch failed half-written and could not be taken back: no epoch may reuse
    /// its seq until [`Store::open`] discards it, so commits are refused until then.
    broken: AtomicBool,
    on_commit: parking_lot::Mutex<Option<crossbeam_channel::Sender<Seq>>>,
    /// Held by a prune from start to end (see `prune.rs`).
    pruning: parking_lot::Mutex<()>,
}

impl Store {
    /// Opens the store in `dir`, creating it if `dir` does not hold one yet.
    pub fn open_or_create(dir: &Path) -> Result<Arc<Store>> {
        Self::open_inner(dir, true)
    }

    /// Opens an existing store; a directory without a catalogue is an error.
    pub fn open(dir: &Path) -> Result<Arc<Store>> {
        Self::open_inner(dir, false)
    }

    /// Opens the store (creating it if `create`), waiting up to `wait` while another process
    /// holds its lock: one that is exiting (a daemon killed or unmounted a moment ago) holds it
    /// until the kernel has torn it down, and sled's threads hold it a moment after a handle
    /// closes. Any other error, and a lock still held after `wait`, is returned as it is.
    pub fn open_when_free(
        dir: &Path,
        create: bool,
        wait: std::time::Duration,
    ) -> Result<Arc<Store>> {
        when_free(wait, || Self::open_inner(dir, create))
    }

    fn open_inner(dir: &Path, create: bool) -> Result<Arc<Store>> {
        use error::IoContext;
        let cat_dir = dir.join("catalog");
        if !cat_dir.exists() && !create {
            return Err(StoreError::NotAStore(dir.to_path_buf()));
        }
        private_dir(dir).ctx(|| format!("creating store {}", dir.display()))?;
        let db = open_catalog_db(dir)?;
        // Holding the catalogue's lock: nobody is compacting it.
        compact::remove_leftover(dir);
        Self::open_catalog(dir, db.clone()).inspect_err(|_| close_catalog(db, dir))
    }

    /// The rest of [`open_inner`](Self::open_inner), on the opened catalogue.
    fn open_catalog(dir: &Path, db: sled::Db) -> Result<Arc<Store>> {
        let cat = db.open_tree(schema::TREE_CATALOG)?;
        match cat.get(schema::meta_key(schema::META_FORMAT))? {
            None => {
                cat.insert(
                    schema::meta_key(schema::META_FORMAT),
                    &schema::FORMAT_VERSION.to_be_bytes(),
                )?;
                db.flush()?;
            }
            Some(v) => {
                let found = v
                    .as_ref()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .unwrap_or(u32::MAX);
                if schema::UPGRADABLE_FORMATS.contains(&found) {
                    // Marked first: from now on epochs are written the new way, and a build
                    // that only knows the old format must refuse the store, not misread it.
                    tracing::info!(
                        store = %dir.display(),
                        from = found,
                        to = schema::FORMAT_VERSION,
                        "upgrading the store's format (nothing is rewritten)"
                    );
                    cat.insert(
                        schema::meta_key(schema::META_FORMAT),
                        &schema::FORMAT_VERSION.to_be_bytes(),
                    )?;
                    db.flush()?;
                } else if found != schema::FORMAT_VERSION {
                    return Err(StoreError::UnknownFormat {
                        path: dir.to_path_buf(),
                        found,
                        expected: schema::FORMAT_VERSION,
                    });
                }
            }
        }
        let head = read_head(&cat)?.map_or(0, |(seq, _)| seq);
        let cut_off = discard_unfinished_epoch(&cat, Seq(head).next())?;
        let folded = prune::finish_fold(&db.open_tree(schema::TREE_FOLDING)?, &cat)?;
        if cut_off || folded {
            db.flush()?;
        }
        let packs = Arc::new(PackStore::open(&dir.join("packs"))?);
        if db
            .tree_names()
            .iter()
            .any(|t| t == schema::TREE_CHUNKS_BEFORE_5.as_bytes())
        {
            // Format 4 and older kept chunk locations in sled; the packs are indexed now.
            db.drop_tree(schema::TREE_CHUNKS_BEFORE_5)?;
            db.flush()?;
        }
        let chunks = Arc::new(ChunkCache::new(
            packs.clone() as Arc<dyn ChunkStore>,
            CHUNK_CACHE_ENTRIES,
        ));
        let versions = open_versions(dir, &cat, Seq(head))?;
        Ok(Arc::new(Store {
            dir: dir.to_path_buf(),
            db,
            cat,
            packs,
            chunks,
            versions,
            head: AtomicU64::new(head),
            broken: AtomicBool::new(false),
            on_commit: parking_lot::Mutex::new(None),
            pruning: parking_lot::Mutex::new(()),
        }))
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The newest committed epoch (`Seq::ZERO` when nothing was recorded yet).
    pub fn head(&self) -> Seq {
        Seq(self.head.load(Ordering::Acquire))
    }

    /// The chunk store behind this store, cached.
    pub fn chunks(&self) -> &Arc<ChunkCache> {
        &self.chunks
    }

    /// The pack files.
    pub fn packs(&self) -> &Arc<PackStore> {
        &self.packs
    }

    /// Writes the records of epoch `seq` and makes it the head.
    ///
    /// Not one `sled::Batch`: sled writes out and syncs its log buffer twice for every batch
    /// (`pin_log`), which was half the cost of a small epoch. Instead the epoch's journal goes
    /// first, then its records in key order, then the head. Readers see nothing past the head.
    /// sled recovers a prefix of its log, so after a crash the epoch is whole, absent, or named
    /// by a journal just past the head, which [`Store::open`] discards before anything can
    /// reuse its seq.
    ///
    /// `epoch` holds the records in their exchanged shape (header, changes, the rest). A small
    /// epoch is stored compact: its header record carries its changes and its journal
    /// ([`catalog::EpochBody`]), so it is written first and stands for both; a large one keeps
    /// a journal entry and one record per change (`schema` says which is which).
    pub(crate) fn write_epoch(
        &self,
        seq: Seq,
        mut epoch: recorder::Journaled,
        next_node: u64,
    ) -> Result<()> {
        if self.broken.load(Ordering::Acquire) {
            return Err(StoreError::Unfinished(seq));
        }
        // In key order, as a batch would: neighbouring inserts land in the same sled pages,
        // which keeps the pages compact for later reads.
        epoch.records.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let epoch_key = schema::epoch_key(seq);
        let change_prefix = schema::change_prefix(seq);
        let mut header = None;
        let mut changes = Vec::new();
        let mut others = Vec::with_capacity(epoch.records.len());
        let mut versions = Vec::new();
        for (k, v) in epoch.records {
            if k.first() == Some(&schema::VERSION) {
                // Indexed in files, not in sled (see `version_index`).
                versions.push(schema::version_value_parts(&v).ok_or_else(|| {
                    StoreError::CorruptCatalog {
                        what: format!("version record of epoch {seq}"),
                        detail: "bad length".into(),
                    }
                })?);
            } else if k.as_slice() == epoch_key.as_slice() {
                header = Some(v);
            } else if k.starts_with(&change_prefix) && k.len() == change_prefix.len() + 4 {
                changes.push((k, v));
            } else {
                others.push((k, v));
            }
        }
        let header = header.ok_or_else(|| StoreError::CorruptCatalog {
            what: format!("epoch {seq}"),
            detail: "no header record".into(),
        })?;
        // Only the header itself: a body that came with it (from a log) is never trusted; the
        // journal is made here, from the records that are written.
        let (header, _) = catalog::decode_epoch(&header, seq)?;
        let changes: Vec<Vec<u8>> = changes.into_iter().map(|(_, v)| v).collect();
        let other_keys: Vec<Vec<u8>> = others.iter().map(|(k, _)| k.clone()).collect();
        let (first, extra) = stored_epoch(seq, &header, changes, &other_keys);
        self.cat.insert(first.0, first.1)?;
        let mut records = others;
        records.extend(extra);
        records.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let written = (|| -> Result<()> {
            for (k, v) in &records {
                self.cat.insert(k.as_slice(), v.as_slice())?;
            }
            self.cat.insert(
                schema::meta_key(schema::META_HEAD),
                &schema::head_value(seq, next_node),
            )?;
            Ok(())
        })();
        if let Err(e) = written {
            // In memory is enough: were the removals lost in a crash, the journal (removed
            // last) would still be there for `open` to find.
            if let Err(e2) = discard_unfinished_epoch(&self.cat, seq) {
                tracing::error!(error = %e2, %seq, "a half-written epoch could not be taken back: no more epochs until the store is reopened");
                self.broken.store(true, Ordering::Release);
            }
            return Err(e);
        }
        for (node, s) in versions {
            self.versions.add(node, s);
        }
        Ok(())
    }

    /// Makes everything committed so far durable: packs first, then the catalogue.
    pub fn flush(&self) -> Result<()> {
        self.packs.sync()?;
        self.flush_catalog()
    }

    /// Makes the catalogue durable (the packs its records name must be synced already), then
    /// writes out the version ids of the epochs that now are.
    pub fn flush_catalog(&self) -> Result<()> {
        let head = self.head();
        self.db.flush()?;
        self.persist_versions(head);
        Ok(())
    }

    /// Epochs up to the head are durable: their version ids may go to a file. A failure (a
    /// full disk) is logged and costs nothing but memory: the ids stay in memory and are
    /// written at a later flush, or read again from the catalogue at the next open.
    pub(crate) fn persist_versions(&self, durable: Seq) {
        if let Err(e) = self.versions.persist(durable) {
            tracing::error!(error = %e, "could not write the version index; it stays in memory for now");
        }
    }

    /// Whether an epoch may be committed: not while the disk is inside the room kept free for
    /// the catalogue (see [`room`]). A file system that cannot say how full it is passes.
    pub fn room_for_epoch(&self) -> Result<()> {
        match room::Room::at(&self.dir) {
            Ok(r) => r.check(0),
            Err(_) => Ok(()),
        }
    }

    /// Bytes the store takes on disk (catalogue and packs).
    pub fn disk_usage(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?
            + self.packs.packs()?.iter().map(|p| p.1).sum::<u64>()
            + self.packs.index().size_on_disk()
            + self.versions.size_on_disk())
    }

    /// Records a named mark at `seq`. Names are unique; marks are kept until removed by name.
    pub fn add_mark(&self, mark: &Mark) -> Result<()> {
        if mark.name.is_empty()
            || mark.name.contains('/')
            || mark.name.starts_with('.')
            || mark.name.chars().any(char::is_control)
        {
            return Err(StoreError::Mark(format!(
                "{:?} is not a valid mark name (not empty, no '/', no control character, not starting with '.')",
                mark.name
            )));
        }
        if mark.seq > self.head() {
            return Err(StoreError::Mark(format!(
                "moment {} is not recorded yet",
                mark.seq
            )));
        }
        let key = schema::mark_key(&mark.name);
        let res = self
            .cat
            .compare_and_swap(&key, None as Option<&[u8]>, Some(encode(mark)))?;
        if res.is_err() {
            return Err(StoreError::Mark(format!(
                "a mark named {:?} exists already (remove it with `clawfs unmark {}`)",
                mark.name, mark.name
            )));
        }
        self.flush()
    }

    /// Removes a mark by name.
    pub fn remove_mark(&self, name: &str) -> Result<Mark> {
        match self.cat.remove(schema::mark_key(name))? {
            None => Err(StoreError::Mark(format!("no mark named {name:?}"))),
            Some(v) => {
                self.flush()?;
                decode(&v, || format!("mark {name}"))
            }
        }
    }

    /// A mark by name.
    pub fn mark(&self, name: &str) -> Result<Option<Mark>> {
        self.cat
            .get(schema::mark_key(name))?
            .map(|v| decode(&v, || format!("mark {name}")))
            .transpose()
    }

    /// Every mark, oldest first.
    pub fn marks(&self) -> Result<Vec<Mark>> {
        let mut out = Vec::new();
        for kv in self.cat.scan_prefix([schema::MARK]) {
            let (k, v) = kv?;
            out.push(decode::<Mark>(&v, || {
                format!("mark {}", String::from_utf8_lossy(&k[1..]))
            })?);
        }
        out.sort_by_key(|m| (m.seq, m.time_ns));
        Ok(out)
    }

    fn set_head(&self, seq: Seq) {
        self.head.store(seq.0, Ordering::Release);
        if let Some(tx) = self.on_commit.lock().as_ref() {
            // Never blocks a commit: a full queue means the listener has news pending already.
            let _ = tx.try_send(seq);
        }
    }

    /// Tells `tx` of every commit from now on (the replicator listens). Sends never block.
    pub fn set_commit_listener(&self, tx: crossbeam_channel::Sender<Seq>) {
        *self.on_commit.lock() = Some(tx);
    }
}

/// Creates `dir` (and missing parents) readable by its owner alone, and makes an existing one
/// of ours so. A store holds every version of every file in plain form (`credentials/**`
/// too), so it is as private as the keys it may hold: other users can neither read its history
/// nor plant records in its packs. The daemon runs with umask 0 (modes in FUSE requests are
/// already masked), so the directory's mode is what keeps the files inside private.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let md = std::fs::metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    if md.mode() & 0o077 != 0 && md.uid() == unsafe { libc::geteuid() } {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        tracing::info!(dir = %dir.display(), "store directory made private (mode 0700)");
    }
    Ok(())
}

/// The head record: the last committed epoch and, from format 3 on, the next unused node id.
fn read_head(tree: &sled::Tree) -> Result<Option<(u64, Option<u64>)>> {
    let Some(v) = tree.get(schema::meta_key(schema::META_HEAD))? else {
        return Ok(None);
    };
    let word = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().expect("8 bytes"));
    match v.len() {
        8 => Ok(Some((word(0), None))),
        16 => Ok(Some((word(0), Some(word(8))))),
        n => Err(StoreError::CorruptCatalog {
            what: "head".into(),
            detail: format!("{n} bytes"),
        }),
    }
}

impl Store {
    /// The next unused node id as the catalogue has it, if it has one.
    pub(crate) fn stored_next_node(&self) -> Result<Option<u64>> {
        match read_head(&self.cat)? {
            Some((_, Some(next))) => Ok(Some(next)),
            _ => read_u64(&self.cat, schema::META_NEXT_NODE),
        }
    }
}

pub(crate) fn read_u64(tree: &sled::Tree, name: &[u8]) -> Result<Option<u64>> {
    match tree.get(schema::meta_key(name))? {
        None => Ok(None),
        Some(v) => Ok(Some(u64::from_be_bytes(v.as_ref().try_into().map_err(
            |_| StoreError::CorruptCatalog {
                what: String::from_utf8_lossy(name).into_owned(),
                detail: "bad length".into(),
            },
        )?))),
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        close_catalog(self.db.clone(), &self.dir);
    }
}

/// Flushes the catalogue `db` before its handle goes. sled flushes when its last handle goes,
/// and after one of its writes failed (the disk filled) that flush can wait forever: an
/// unmounted command that hit a full disk hung at exit instead of saying so, and so did the
/// next command, in `open`. The flush is made here first, on a thread of its own, for at most
/// [`CLOSE_WAIT`]; if it does not return, that thread keeps its handle, so no drop flushes
/// again, and what was not flushed is left to sled's recovery at the next open, as after a
/// crash (every epoch is whole or absent there).
pub(crate) fn close_catalog(db: sled::Db, dir: &Path) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let flusher = std::thread::Builder::new()
        .name("clawfs-close".into())
        .spawn(move || {
            let _ = tx.send(db.flush());
        });
    let Ok(flusher) = flusher else {
        return;
    };
    match rx.recv_timeout(CLOSE_WAIT) {
        Ok(r) => {
            if let Err(e) = r {
                tracing::error!(error = %e, "the catalogue's last flush failed");
            }
            let _ = flusher.join();
        }
        Err(_) => tracing::error!(
            store = %dir.display(),
            "the catalogue's last flush did not finish in {CLOSE_WAIT:?} (its disk failed a write?): closing without it; the next open recovers the catalogue as after a crash"
        ),
    }
}

/// How the catalogue's sled database is opened, by the store and by `compact`.
pub(crate) fn catalog_config(path: &Path) -> sled::Config {
    sled::Config::new()
        .path(path)
        // Flushes are ours: after the packs are synced, never before (see `ChunkStore`).
        .flush_every_ms(None)
        // sled's memory is a multiple of this: after 120,000 small files were written and
        // removed, the daemon held 43 MiB with 2 MiB here, 77 with 16 and 150 with 64. At
        // 8 MiB, listing and reading a past moment of a million versions took as long as at 16.
        .cache_capacity(8 << 20)
}

/// Opens the catalogue's sled database in the store at `dir`; another process holding it is
/// [`StoreError::Busy`].
pub(crate) fn open_catalog_db(dir: &Path) -> Result<sled::Db> {
    open_db_at(&dir.join("catalog"), dir)
}

/// Opens a sled database at `path` as the catalogue is opened; a lock held on it is
/// [`StoreError::Busy`] naming `store`.
pub(crate) fn open_db_at(path: &Path, store: &Path) -> Result<sled::Db> {
    catalog_config(path).open().map_err(|e| match e {
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock") =>
        {
            StoreError::Busy(store.to_path_buf())
        }
        other => StoreError::Catalog(other),
    })
}

/// Runs `open` again while it finds the store [`StoreError::Busy`], for up to `wait`: a
/// process that is exiting (a daemon killed or unmounted a moment ago) holds the lock until
/// the kernel has torn it down, and sled's threads hold it a moment after a handle closes.
pub(crate) fn when_free<T>(
    wait: std::time::Duration,
    mut open: impl FnMut() -> Result<T>,
) -> Result<T> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match open() {
            Err(StoreError::Busy(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            r => return r,
        }
    }
}

/// How epoch `seq` is stored, given its header, its encoded changes and the keys of its other
/// records (in key order): the record that is its journal, written before anything else, and
/// the records it adds to those others. A small epoch is compact: its header record carries its
/// changes and the keys of its other records ([`catalog::EpochBody`]) and is its journal. A
/// large one keeps a [`schema::JOURNAL`] entry naming every record, its changes stored many to a
/// record, and a bare header.
fn stored_epoch(
    seq: Seq,
    header: &catalog::Epoch,
    changes: Vec<Vec<u8>>,
    other_keys: &[Vec<u8>],
) -> (replica::Record, Vec<replica::Record>) {
    let epoch_key = schema::epoch_key(seq).to_vec();
    let mut header = encode(header);
    // The body is built only for an epoch small enough to be compact: a large one would
    // copy every change and key just to be told no.
    let body = (changes.len() <= schema::COMPACT_MAX_CHANGES
        && other_keys.len() <= schema::COMPACT_MAX_RECORDS)
        .then(|| catalog::EpochBody {
            changes: changes.clone(),
            keys: other_keys.to_vec(),
        })
        .filter(|b| bincode::serialized_size(b).is_ok_and(|n| n <= schema::COMPACT_MAX_BYTES));
    if let Some(body) = body {
        header.extend_from_slice(&encode(&body));
        return ((epoch_key, header), Vec::new());
    }
    let mut extra = batch_changes(seq, changes);
    extra.push((epoch_key, header));
    let mut keys: Vec<&Vec<u8>> = other_keys
        .iter()
        .chain(extra.iter().map(|(k, _)| k))
        .collect();
    keys.sort_unstable();
    let journal = (schema::journal_key(seq).to_vec(), encode(&keys));
    (journal, extra)
}

/// The change records of an epoch that is not compact, stored many to a record: runs of at
/// most [`schema::CHANGES_PER_RECORD`] changes and about [`schema::COMPACT_MAX_BYTES`] bytes.
fn batch_changes(seq: Seq, changes: Vec<Vec<u8>>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut run: Vec<Vec<u8>> = Vec::new();
    let (mut first, mut bytes) = (0u32, 0u64);
    let total = changes.len();
    for (i, v) in changes.into_iter().enumerate() {
        bytes += v.len() as u64;
        run.push(v);
        if run.len() == schema::CHANGES_PER_RECORD
            || bytes >= schema::COMPACT_MAX_BYTES
            || i + 1 == total
        {
            out.push((
                schema::changes_key(seq, first).to_vec(),
                encode(&std::mem::take(&mut run)),
            ));
            first = i as u32 + 1;
            bytes = 0;
        }
    }
    out
}

/// The version-id index, with the versions of the epochs no file covers added from their
/// node-version keys. Epochs up to the seq in [`schema::META_VERSIONS_FROM`] (the head when a
/// store older than format 5 was first opened by this build) keep theirs in the catalogue.
fn open_versions(dir: &Path, cat: &sled::Tree, head: Seq) -> Result<version_index::VersionIndex> {
    let from_key = schema::meta_key(schema::META_VERSIONS_FROM);
    let before_files =
        match cat.get(&from_key)? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                StoreError::CorruptCatalog {
                    what: "versions-from".into(),
                    detail: "bad length".into(),
                }
            })?),
            None => {
                cat.insert(&from_key, &head.0.to_be_bytes())?;
                head.0
            }
        };
    let versions = version_index::VersionIndex::open(&dir.join("versions"), before_files)?;
    for seq in versions.covered().0 + 1..=head.0 {
        for k in epoch_keys(cat, Seq(seq))? {
            if k.first() == Some(&schema::NODE) {
                if let (Some(node), Some(s)) = (schema::node_key_node(&k), schema::node_key_seq(&k))
                {
                    versions.add(node, s);
                }
            }
        }
    }
    Ok(versions)
}

/// The keys epoch `seq` wrote besides its header and changes: its journal's, or a compact
/// header's.
fn epoch_keys(cat: &sled::Tree, seq: Seq) -> Result<Vec<Vec<u8>>> {
    if let Some(j) = cat.get(schema::journal_key(seq))? {
        return decode(&j, || format!("journal of epoch {seq}"));
    }
    match cat.get(schema::epoch_key(seq))? {
        Some(h) => Ok(catalog::decode_epoch(&h, seq)?
            .1
            .map(|b| b.keys)
            .unwrap_or_default()),
        None => Ok(Vec::new()),
    }
}

/// Removes the records of an epoch that was cut off before its head was written (a crash, or a
/// failed write in [`Store::write_epoch`]): its journal names them, as a journal entry or, for a
/// compact epoch, inside its header record. Says whether there was one.
fn discard_unfinished_epoch(cat: &sled::Tree, seq: Seq) -> Result<bool> {
    let (keys, journal) = if let Some(j) = cat.get(schema::journal_key(seq))? {
        let keys: Vec<Vec<u8>> = decode(&j, || format!("journal of unfinished epoch {seq}"))?;
        (keys, schema::journal_key(seq))
    } else if let Some(h) = cat.get(schema::epoch_key(seq))? {
        match catalog::decode_epoch(&h, seq)? {
            (_, Some(body)) => (body.keys, schema::epoch_key(seq)),
            (_, None) => return Ok(false),
        }
    } else {
        return Ok(false);
    };
    tracing::warn!(%seq, records = keys.len(), "discarding an epoch that was cut off before it was committed");
    for k in &keys {
        cat.remove(k)?;
    }
    cat.remove(journal)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SessionId;
    use crate::relpath::RelPath;
    use catalog::{Meta, NodeKind};
    use recorder::RenameMode;

    /// Opens the store at `dir` as soon as it is free: sled's I/O threads can hold its lock for
    /// a moment after the last handle is dropped (the daemon waits the same way).
    fn open_when_free(dir: &Path) -> Result<Arc<Store>> {
        Store::open_when_free(dir, false, std::time::Duration::from_secs(10))
    }

    /// The catalogue of the store at `dir`, opened with sled alone, as soon as the store's
    /// last handle (or a refused open's sled threads) lets go of its lock.
    fn raw_catalogue(dir: &Path) -> sled::Db {
        (0..1000)
            .find_map(|_| {
                sled::open(dir.join("catalog")).ok().or_else(|| {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    None
                })
            })
            .expect("the catalogue opens within 10 s")
    }

    /// Records an empty file at `path`.
    fn new_file(rec: &mut recorder::Recorder, path: &str) {
        rec.create(
            &RelPath::new(path).unwrap(),
            NodeKind::File,
            Meta::default(),
            "",
        )
        .unwrap();
    }

    fn names(store: &Store, seq: Seq) -> Vec<String> {
        let root = RelPath::root();
        store
            .list(&root, seq)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect()
    }

    /// A crash between an epoch's first record and its head leaves records past the head. The
    /// next open must take them away, or the next epoch (which gets the same seq) would show
    /// them as its own.
    ///
    /// Both ways an epoch is stored: compact (a few changes: its header is its journal) and
    /// with a journal entry (more changes than a compact epoch may carry).
    #[rstest::rstest]
    #[case::compact(3)]
    #[case::journaled(schema::COMPACT_MAX_CHANGES + 1)]
    fn an_epoch_cut_off_before_its_head_is_discarded_at_open(#[case] ghosts: usize) {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| RelPath::new(s).unwrap();
        let meta = Meta::default();
        {
            let store = Store::open_or_create(dir.path()).unwrap();
            let mut rec = store.recorder(SessionId(1)).unwrap();
            rec.create(&p("a"), NodeKind::File, meta, "").unwrap();
            assert_eq!(rec.commit(true).unwrap().unwrap().seq, Seq(1));
            for g in 0..ghosts {
                rec.create(&p(&format!("ghost{g}")), NodeKind::File, meta, "")
                    .unwrap();
            }
            assert_eq!(rec.commit(true).unwrap().unwrap().seq, Seq(2));
            // As if the process died after the records were written and before the head was.
            let next = store.stored_next_node().unwrap().unwrap();
            store
                .cat
                .insert(
                    schema::meta_key(schema::META_HEAD),
                    &schema::head_value(Seq(1), next),
                )
                .unwrap();
            store.flush().unwrap();
        }
        let store = open_when_free(dir.path()).unwrap();
        assert_eq!(store.head(), Seq(1));
        for k in [schema::journal_key(Seq(2)), schema::epoch_key(Seq(2))] {
            assert!(store.cat.get(k).unwrap().is_none());
        }
        let ghostly = |k: &[u8]| String::from_utf8_lossy(k).contains("ghost");
        assert!(store.cat.iter().keys().all(|k| !ghostly(&k.unwrap())));
        let mut rec = store.recorder(SessionId(2)).unwrap();
        rec.create(&p("b"), NodeKind::File, meta, "").unwrap();
        assert_eq!(rec.commit(false).unwrap().unwrap().seq, Seq(2));
        assert_eq!(names(&store, Seq(2)), ["a", "b"]);
        assert_eq!(store.changes(Seq(2)).unwrap().len(), 1);
        let journal = store.epoch_records(Seq(2)).unwrap().unwrap();
        assert!(journal.records.iter().all(|(k, _)| !ghostly(k)));
    }

    /// The records an epoch ships are the same whichever way it is stored, and a received
    /// epoch is stored the way its size says: a clone rebuilds the same catalogue.
    #[rstest::rstest]
    #[case::compact(2)]
    #[case::journaled(schema::COMPACT_MAX_CHANGES + 5)]
    #[case::journaled_in_many_records(2 * schema::CHANGES_PER_RECORD + 7)]
    fn an_epoch_ships_and_replays_the_same_whichever_way_it_is_stored(#[case] files: usize) {
        let p = |s: &str| RelPath::new(s).unwrap();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = Store::open_or_create(a.path()).unwrap();
        let mut rec = store.recorder(SessionId(1)).unwrap();
        rec.create(&p("d"), NodeKind::Dir, Meta::default(), "")
            .unwrap();
        for i in 0..files {
            new_file(&mut rec, &format!("d/f{i}"));
        }
        let seq = rec.commit(false).unwrap().unwrap().seq;
        let compact = store.cat.get(schema::journal_key(seq)).unwrap().is_none();
        assert_eq!(compact, files < schema::COMPACT_MAX_CHANGES);
        // Stored, the changes of a journaled epoch are a few records, not one each.
        let stored = |prefix: [u8; 9]| store.cat.scan_prefix(prefix).count();
        assert_eq!(stored(schema::change_prefix(seq)), 0);
        let runs = stored(schema::changes_prefix(seq));
        if compact {
            assert_eq!(runs, 0);
        } else {
            assert!(
                runs >= (files + 1).div_ceil(schema::CHANGES_PER_RECORD) && runs <= files / 16,
                "{runs} records"
            );
        }
        let shipped = store.epoch_records(seq).unwrap().unwrap();
        // Header, one record per change, then the rest: the shape every epoch travels in.
        let changes = shipped
            .records
            .iter()
            .filter(|(k, _)| k[0] == schema::CHANGE)
            .count();
        assert_eq!(changes, files + 1);
        assert!(shipped.records.iter().all(|(k, _)| k[0] != schema::JOURNAL));
        let clone = Store::open_or_create(b.path()).unwrap();
        clone
            .apply_epochs(std::slice::from_ref(&shipped), store.next_node().unwrap())
            .unwrap();
        assert_eq!(clone.epoch_records(seq).unwrap().unwrap(), shipped);
        assert_eq!(clone.changes(seq).unwrap(), store.changes(seq).unwrap());
        assert_eq!(
            clone.list(&p("d"), seq).unwrap().len(),
            store.list(&p("d"), seq).unwrap().len()
        );
        assert_eq!(store.changes(seq).unwrap().len(), files + 1);
    }

    /// The recorder remembers directory entries between commits. What it remembers must follow
    /// its own commits (a rename, an unlink) and be forgotten when someone else moves the head.
    #[test]
    fn the_recorders_remembered_entries_follow_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| RelPath::new(s).unwrap();
        let meta = Meta::default();
        let store = Store::open_or_create(dir.path()).unwrap();
        let mut rec = store.recorder(SessionId(1)).unwrap();
        rec.create(&p("d"), NodeKind::Dir, meta, "").unwrap();
        rec.create(&p("d/x"), NodeKind::File, meta, "").unwrap();
        rec.commit(false).unwrap();
        let x = rec.resolve_now(&p("d/x")).unwrap().unwrap();
        assert!(
            rec.resolve_now(&p("d/y")).unwrap().is_none(),
            "remembered as absent"
        );
        rec.rename(&p("d/x"), &p("d/y"), RenameMode::Replace)
            .unwrap();
        rec.commit(false).unwrap();
        assert_eq!(rec.resolve_now(&p("d/y")).unwrap(), Some(x));
        assert!(rec.resolve_now(&p("d/x")).unwrap().is_none());
        rec.unlink(&p("d/y")).unwrap();
        rec.commit(false).unwrap();
        assert!(rec.resolve_now(&p("d/y")).unwrap().is_none());
        assert!(
            rec.resolve_now(&p("d/z")).unwrap().is_none(),
            "remembered as absent"
        );
        // Another writer creates d/z: the first recorder's memory of its absence is stale.
        let mut other = store.recorder(SessionId(2)).unwrap();
        other.create(&p("d/z"), NodeKind::File, meta, "").unwrap();
        other.commit(false).unwrap();
        assert!(rec.resolve_now(&p("d/z")).unwrap().is_some());
    }

    fn set_format(store: &Store, v: u32) {
        store
            .cat
            .insert(schema::meta_key(schema::META_FORMAT), &v.to_be_bytes())
            .unwrap();
        store.flush().unwrap();
    }

    /// A store of a format this build does not know is refused in one clear line and left as
    /// it was; one of the previous format opens, reads the same, and is marked as upgraded.
    #[test]
    fn an_unknown_format_is_refused_untouched_and_the_previous_one_is_upgraded() {
        let p = |s: &str| RelPath::new(s).unwrap();
        let dir = store_of_format(99);
        let err = open_when_free(dir.path())
            .err()
            .expect("format 99 must be refused");
        let msg = err.to_string();
        assert!(
            msg.contains("format version 99")
                && msg.contains(&format!("reads version {}", schema::FORMAT_VERSION)),
            "{msg}"
        );
        // Refused twice the same way: the first refusal changed nothing.
        assert!(open_when_free(dir.path()).is_err());
        {
            // As `open_when_free`: the refused open's sled may hold the lock a moment longer.
            let raw = raw_catalogue(dir.path());
            let cat = raw.open_tree(schema::TREE_CATALOG).unwrap();
            let v = cat.get(schema::meta_key(schema::META_FORMAT)).unwrap();
            assert_eq!(v.as_deref(), Some(&99u32.to_be_bytes()[..]));
            // As format 2 had it: the head alone, the next node id in a record of its own.
            let head = cat
                .get(schema::meta_key(schema::META_HEAD))
                .unwrap()
                .unwrap();
            cat.insert(schema::meta_key(schema::META_HEAD), &head[..8])
                .unwrap();
            cat.insert(schema::meta_key(schema::META_NEXT_NODE), &head[8..])
                .unwrap();
            cat.insert(schema::meta_key(schema::META_FORMAT), &2u32.to_be_bytes())
                .unwrap();
            raw.flush().unwrap();
        }
        let store = open_when_free(dir.path()).unwrap();
        assert_eq!(names(&store, Seq(1)), ["a"]);
        // New nodes continue from format 2's counter: no id is handed out twice.
        let mut rec = store.recorder(SessionId(2)).unwrap();
        new_file(&mut rec, "b");
        rec.commit(false).unwrap();
        let (a, b) = (
            rec.resolve_now(&p("a")).unwrap(),
            rec.resolve_now(&p("b")).unwrap(),
        );
        assert_ne!(a.unwrap().0, b.unwrap().0);
        assert_eq!(names(&store, Seq(2)), ["a", "b"]);
        assert_marked_current(&store);
    }

    /// A store holding file `a` in epoch 1, then marked as of `format`.
    fn store_of_format(format: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path()).unwrap();
        let mut rec = store.recorder(SessionId(1)).unwrap();
        new_file(&mut rec, "a");
        rec.commit(true).unwrap();
        set_format(&store, format);
        dir
    }

    fn assert_marked_current(store: &Store) {
        let v = store
            .cat
            .get(schema::meta_key(schema::META_FORMAT))
            .unwrap();
        assert_eq!(
            v.as_deref(),
            Some(&schema::FORMAT_VERSION.to_be_bytes()[..])
        );
    }

    /// A format-3 store opens, reads the same, is marked with this build's format, and takes
    /// new epochs.
    #[test]
    fn a_format_3_store_is_upgraded() {
        let dir = store_of_format(3);
        let store = open_when_free(dir.path()).unwrap();
        assert_marked_current(&store);
        assert_eq!(names(&store, Seq(1)), ["a"]);
        let mut rec = store.recorder(SessionId(2)).unwrap();
        new_file(&mut rec, "b");
        rec.commit(false).unwrap();
        assert_eq!(names(&store, Seq(2)), ["a", "b"]);
    }

    /// Version ids are not sled records since format 5: they resolve from memory, from index
    /// files once enough epochs are durable, and again after a reopen (the epochs after the last
    /// file read back from their node versions).
    #[test]
    fn version_ids_resolve_without_catalogue_records_before_and_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = RelPath::new("a").unwrap();
        let store = Store::open_or_create(dir.path()).unwrap();
        let mut rec = store.recorder(SessionId(1)).unwrap();
        new_file(&mut rec, "a");
        let mut ids = Vec::new();
        for i in 0..1300u32 {
            rec.write(&a, 0, format!("version {i}\n").as_bytes())
                .unwrap();
            let seq = rec.commit(i % 100 == 99).unwrap().unwrap().seq;
            let node = rec.resolve_now(&a).unwrap().unwrap().0;
            ids.push((crate::ids::VersionId::new(node, seq), node, seq));
        }
        let check = |store: &Store| {
            for &(v, node, seq) in &ids {
                assert_eq!(store.version(v).unwrap(), Some((node, seq)), "{v}");
                assert_eq!(crate::when::resolve(store, &v.to_string()).unwrap(), seq);
            }
        };
        check(&store);
        let (files, in_files, _) = store.versions.stats();
        assert!(
            files >= 1 && in_files >= 1024,
            "{files} files, {in_files} ids in them"
        );
        assert_eq!(store.cat.scan_prefix([schema::VERSION]).count(), 0);
        // Shipped, every epoch still carries its version record.
        let shipped = store.epoch_records(ids[5].2).unwrap().unwrap();
        assert!(shipped
            .records
            .iter()
            .any(|(k, _)| k.as_slice() == schema::version_key(ids[5].0)));
        drop(rec);
        drop(store);
        let store = open_when_free(dir.path()).unwrap();
        check(&store);
    }

    /// A format-4 store kept chunk locations in a sled tree: upgraded, its packs are indexed
    /// into files, the tree is dropped, and every chunk reads back.
    #[test]
    fn a_format_4_store_is_upgraded_and_its_packs_indexed() {
        let p = |s: &str| RelPath::new(s).unwrap();
        let data = |i: u8| {
            (0..200_000u32)
                .map(|j| (j * 7 + u32::from(i)) as u8)
                .collect::<Vec<u8>>()
        };
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open_or_create(dir.path()).unwrap();
            let mut rec = store.recorder(SessionId(1)).unwrap();
            new_file(&mut rec, "a");
            rec.write(&p("a"), 0, &data(1)).unwrap();
            rec.commit(true).unwrap();
            drop(rec);
            set_format(&store, 4);
        }
        std::fs::remove_dir_all(dir.path().join("packs").join("index")).unwrap();
        {
            let raw = raw_catalogue(dir.path());
            raw.open_tree(schema::TREE_CHUNKS_BEFORE_5)
                .unwrap()
                .insert([7u8; 32], &[1u8; 20][..])
                .unwrap();
            raw.flush().unwrap();
        }
        let store = open_when_free(dir.path()).unwrap();
        assert_marked_current(&store);
        assert!(!store
            .db
            .tree_names()
            .iter()
            .any(|t| t == schema::TREE_CHUNKS_BEFORE_5.as_bytes()));
        assert!(store.packs().verify_all().unwrap() >= 2);
        assert_eq!(store.read_file(&p("a"), Seq(1)).unwrap(), data(1));
        let mut rec = store.recorder(SessionId(2)).unwrap();
        new_file(&mut rec, "b");
        rec.write(&p("b"), 0, &data(2)).unwrap();
        rec.commit(true).unwrap();
        drop(rec);
        drop(store);
        let store = open_when_free(dir.path()).unwrap();
        assert_eq!(store.read_file(&p("a"), Seq(2)).unwrap(), data(1));
        assert_eq!(store.read_file(&p("b"), Seq(2)).unwrap(), data(2));
    }

    /// A time names the newest epoch committed at or before it, whatever the number of epochs
    /// (the search halves the range; an off-by-one shows at one end or the other).
    #[test]
    fn a_time_names_the_newest_epoch_at_or_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path()).unwrap();
        assert_eq!(store.seq_at_time(i64::MAX).unwrap(), None);
        let mut rec = store.recorder(SessionId(1)).unwrap();
        let mut times = Vec::new();
        for i in 0..37 {
            new_file(&mut rec, &format!("f{i}"));
            let seq = rec.commit(false).unwrap().unwrap().seq;
            times.push((seq, store.epoch(seq).unwrap().unwrap().time_ns));
            if i % 5 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        let first = times[0].1;
        assert_eq!(store.seq_at_time(first - 1).unwrap(), None);
        assert_eq!(store.seq_at_time(i64::MAX).unwrap(), Some(Seq(37)));
        for &(_, t) in &times {
            // Several epochs may share a time: the newest of them is the moment.
            let newest = times.iter().filter(|(_, u)| *u <= t).map(|(s, _)| *s).max();
            assert_eq!(store.seq_at_time(t).unwrap(), newest, "at {t}");
        }
    }
}
