//! Retention: thinning old moments, then collecting the chunks no moment needs any more.
//!
//! # Which moments stay
//! A [`Policy`] keeps every moment younger than `keep_within`, then the last moment of each
//! hour up to `hourly`, then the last of each day (UTC) up to `daily`; older moments go. Marks
//! (named and safety marks), the head, and the last moment each remote holds are always kept.
//!
//! Moments, not file versions, are thinned: a kept moment is still a crash-consistent cut of
//! the whole tree (invariant 3), so a database and its `-wal` as of a kept moment still open
//! together. Thinning per file would keep a database's version from one hour and its `-wal`'s
//! from another.
//!
//! # How a moment goes
//! The moments between two kept ones are folded into the later one, `k`: of every record the
//! folded epochs and `k` wrote for one key (a node's versions, a name's entries), only the
//! newest stays, stored as written by `k`; its changes join `k`'s, one per path. Afterwards
//! the catalogue is exactly what the recorder would have written had it closed epochs only at
//! the kept moments: every kept moment reads as before, a folded moment reads as the kept one
//! before it, and replication ships the folded history like any other. Each fold is one sled
//! batch, atomic on its own: a crash leaves some folds done and the rest not, all readable.
//!
//! # Which chunks go
//! Once the folds are durable, every chunk a node version still names is live; a pack whose
//! live records are less than [`REPACK_BELOW`] of it has them copied to a new pack, and the
//! old pack is removed (see `PackStore::collect`). Nothing is removed from a remote.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::ids::{ChunkId, NodeId, Seq, VersionId};
use crate::store::catalog::{decode, decode_epoch, encode, Change, Epoch, NodeKind};
use crate::store::error::{Result, StoreError};
use crate::store::{compact, epoch_keys, schema, stored_epoch, Store};

/// A pack is rewritten when its live records take less than this share of it.
pub const REPACK_BELOW: f64 = 0.75;

const HOUR_NS: i64 = 3_600_000_000_000;
const DAY_NS: i64 = 24 * HOUR_NS;

/// How long moments are kept, and how densely.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Every moment younger than this is kept (ns).
    pub keep_within_ns: i64,
    /// Then the last moment of each hour, up to this age (ns).
    pub hourly_ns: i64,
    /// Then the last moment of each day, up to this age (ns); older moments go.
    pub daily_ns: i64,
}

impl Default for Policy {
    /// DESIGN.md's: everything for 24 hours, hourly for 7 days, daily for 90 days.
    fn default() -> Policy {
        Policy {
            keep_within_ns: DAY_NS,
            hourly_ns: 7 * DAY_NS,
            daily_ns: 90 * DAY_NS,
        }
    }
}

/// What thinning keeps and folds.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Every moment, oldest first, with its time.
    pub moments: Vec<(Seq, i64)>,
    /// The moments kept.
    pub kept: BTreeSet<Seq>,
    /// Runs of moments to fold, each into the kept moment that ends it (the last element).
    pub folds: Vec<Vec<Seq>>,
}

impl Plan {
    /// The plan that keeps `kept` among `moments` (oldest first); `kept` holds the newest.
    pub fn new(moments: Vec<(Seq, i64)>, kept: BTreeSet<Seq>) -> Plan {
        let mut folds = Vec::new();
        let mut run = Vec::new();
        for &(seq, _) in &moments {
            run.push(seq);
            if kept.contains(&seq) {
                if run.len() > 1 {
                    folds.push(std::mem::take(&mut run));
                }
                run.clear();
            }
        }
        Plan {
            moments,
            kept,
            folds,
        }
    }

    /// What applying the plan keeps (a report of a dry run).
    pub fn summary(&self) -> PruneReport {
        PruneReport {
            moments_before: self.moments.len(),
            moments_kept: self.kept.len(),
            oldest_kept: self
                .moments
                .iter()
                .find(|m| self.kept.contains(&m.0))
                .copied(),
            dry_run: true,
            ..Default::default()
        }
    }
}

/// `run` (a [`Plan`]'s fold) cut into folds of at most `most` moments besides the kept one,
/// newest first, each ending with the run's kept moment. Folded in that order they leave the
/// catalogue exactly as folding `run` at once does: each piece folds the newest moments left
/// before the kept one, so a record that moves goes straight to it (its version id names it in
/// one hop), and the last change of each path stays last. Between two pieces the store reads as
/// if the older moments not folded yet were kept. A live prune folds piece by piece, so writers
/// wait for one piece at a time, not for a day's moments.
pub fn pieces(run: &[Seq], most: usize) -> Vec<Vec<Seq>> {
    let Some((&k, folded)) = run.split_last() else {
        return Vec::new();
    };
    folded
        .rchunks(most.max(1))
        .map(|c| c.iter().copied().chain([k]).collect())
        .collect()
}

/// What a prune did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    /// Moments before.
    pub moments_before: usize,
    /// Moments kept.
    pub moments_kept: usize,
    /// Oldest moment kept, and its time.
    pub oldest_kept: Option<(Seq, i64)>,
    /// Catalogue records removed (node versions and entries no kept moment shows).
    pub records_removed: u64,
    /// Chunks no longer named by any kept moment, removed.
    pub chunks_removed: u64,
    /// Pack files removed.
    pub packs_removed: u64,
    /// Bytes of live chunks copied out of those packs into new ones.
    pub bytes_copied: u64,
    /// Bytes of the packs removed.
    pub pack_bytes_removed: u64,
    /// Packs kept because the store's disk had no room to copy their live chunks out (prune
    /// again once there is room).
    pub packs_left_for_room: u64,
    /// Bytes the store takes on disk before and after.
    pub disk_before: u64,
    /// See `disk_before`.
    pub disk_after: u64,
    /// Whether nothing was changed (a dry run).
    pub dry_run: bool,
}

/// What the first part of a prune hands the second: its report so far, the chunks versions
/// name, and the packs retiring.
pub struct Folded {
    report: PruneReport,
    live: HashSet<ChunkId>,
    retiring: crate::store::chunks::Retiring,
}

/// The moments `policy` keeps among `moments` (oldest first, times never going backwards) at
/// time `now`, besides `pinned` ones and the newest.
pub fn kept_moments(
    moments: &[(Seq, i64)],
    policy: &Policy,
    now: i64,
    pinned: &BTreeSet<Seq>,
) -> BTreeSet<Seq> {
    let mut kept: BTreeSet<Seq> = BTreeSet::new();
    // The last moment seen in each (width, bucket): moments come oldest first.
    let mut last_in: HashMap<(i64, i64), Seq> = HashMap::new();
    for &(seq, t) in moments {
        let age = now.saturating_sub(t);
        if age < policy.keep_within_ns {
            kept.insert(seq);
        } else if age < policy.hourly_ns {
            last_in.insert((HOUR_NS, t.div_euclid(HOUR_NS)), seq);
        } else if age < policy.daily_ns {
            last_in.insert((DAY_NS, t.div_euclid(DAY_NS)), seq);
        }
    }
    kept.extend(last_in.into_values());
    let present: BTreeSet<Seq> = moments.iter().map(|m| m.0).collect();
    kept.extend(pinned.iter().filter(|s| present.contains(s)));
    kept.extend(moments.last().map(|m| m.0));
    kept
}

impl Store {
    /// Every moment and its time, oldest first.
    pub fn moments(&self) -> Result<Vec<(Seq, i64)>> {
        self.epochs_from(Seq(1), self.head())
            .map(|e| e.map(|(seq, epoch)| (seq, epoch.time_ns)))
            .collect()
    }

    /// How many moments there are: the head's seq, less those a prune folded away here or
    /// before the epochs were pushed to the remote this store was cloned from.
    pub fn moment_count(&self) -> Result<u64> {
        Ok(self.head().0.saturating_sub(self.gaps()?))
    }

    /// How many seqs up to the head name no epoch ([`schema::META_GAPS`]).
    pub(crate) fn gaps(&self) -> Result<u64> {
        Ok(crate::store::read_u64(&self.cat, schema::META_GAPS)?.unwrap_or(0))
    }

    /// What `policy` would keep now, besides the marks and `pinned` moments.
    pub fn plan_prune(&self, policy: &Policy, now: i64, pinned: &BTreeSet<Seq>) -> Result<Plan> {
        let moments = self.moments()?;
        let mut pinned = pinned.clone();
        pinned.extend(self.marks()?.into_iter().map(|m| m.seq));
        let kept = kept_moments(&moments, policy, now, &pinned);
        Ok(Plan::new(moments, kept))
    }

    /// Applies `plan`: [`fold_and_retire`](Self::fold_and_retire), then
    /// [`collect`](Self::collect). The caller holds the only recorder, with nothing pending
    /// (a chunk stored for an uncommitted change would look unnamed).
    pub fn prune(&self, plan: &Plan) -> Result<PruneReport> {
        let _one = self.prune_lock();
        let folded = self.fold_and_retire(plan)?;
        self.collect(folded)
    }

    /// One prune at a time: held across both parts.
    pub fn prune_lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.pruning.lock()
    }

    /// The first part of a prune, while nothing is recorded (the caller holds the only
    /// recorder, with nothing pending, and the [`prune_lock`](Self::prune_lock)): folds the
    /// moments `plan` drops, then [`retire`](Self::retire)s.
    pub fn fold_and_retire(&self, plan: &Plan) -> Result<Folded> {
        let mut report = self.prune_report(plan)?;
        for run in &plan.folds {
            report.records_removed += self.fold(run)?;
        }
        self.retire(report)
    }

    /// What a prune carrying out `plan` reports before it changes anything.
    pub fn prune_report(&self, plan: &Plan) -> Result<PruneReport> {
        Ok(PruneReport {
            disk_before: self.disk_usage()?,
            dry_run: false,
            ..plan.summary()
        })
    }

    /// After the folds, while nothing is recorded (the caller holds the only recorder, with
    /// nothing pending, and the [`prune_lock`](Self::prune_lock)): makes the folds durable,
    /// takes the chunks still named, and retires the packs (from here a chunk found only in one
    /// of them is stored anew, never named).
    pub fn retire(&self, report: PruneReport) -> Result<Folded> {
        let t0 = std::time::Instant::now();
        // The catalogue no longer names what goes before anything goes.
        self.flush()?;
        let flushed = t0.elapsed();
        if report.records_removed > 0 {
            // Only a count: were it lost, the catalogue would be compacted later, or not.
            if let Err(e) = compact::note_removed(&self.dir, report.records_removed) {
                tracing::warn!(error = %e, "cannot count the records removed for compaction");
            }
        }
        let live = self.live_chunks()?;
        let retiring = self.packs.retire()?;
        tracing::debug!(?flushed, done = ?t0.elapsed(), "flushed and retired");
        Ok(Folded {
            report,
            live,
            retiring,
        })
    }

    /// The second part of a prune, while writers go on (the caller holds the
    /// [`prune_lock`](Self::prune_lock)): removes the chunks that were not live from the
    /// retiring packs.
    pub fn collect(&self, folded: Folded) -> Result<PruneReport> {
        let Folded {
            mut report,
            live,
            retiring,
        } = folded;
        let gc = self.packs.collect(retiring, &live, REPACK_BELOW)?;
        report.chunks_removed = gc.chunks_removed;
        report.packs_removed = gc.packs_removed;
        report.bytes_copied = gc.bytes_copied;
        report.pack_bytes_removed = gc.bytes_removed;
        report.packs_left_for_room = gc.packs_left_for_room;
        report.disk_after = self.disk_usage()?;
        tracing::info!(
            moments_before = report.moments_before,
            moments_kept = report.moments_kept,
            records = report.records_removed,
            chunks = report.chunks_removed,
            packs = report.packs_removed,
            freed = report.disk_before.saturating_sub(report.disk_after),
            "pruned"
        );
        Ok(report)
    }

    /// Folds the epochs of `run` (one of a [`Plan`]'s `folds`, oldest first) into its last one;
    /// returns the number of node-version and entry records removed. The caller holds the
    /// [`prune_lock`](Self::prune_lock) and the only recorder, with nothing pending. Between
    /// two folds the recorder may commit: a fold rewrites only records of its run's epochs, and
    /// every kept moment, and every moment after the run, reads the same before and after it.
    pub fn fold(&self, run: &[Seq]) -> Result<u64> {
        let t0 = std::time::Instant::now();
        let (ops, removed) = self.fold_ops(run)?;
        apply_fold(&self.db.open_tree(schema::TREE_FOLDING)?, &self.cat, ops.0)?;
        tracing::debug!(into = %run[run.len() - 1], folded = run.len() - 1, removed, took = ?t0.elapsed(), "folded moments");
        Ok(removed)
    }

    /// The writes that fold `run` into its last epoch, and how many node-version and entry
    /// records they remove.
    fn fold_ops(&self, run: &[Seq]) -> Result<(Ops, u64)> {
        let (&k, _) = run.split_last().expect("a run ends with its kept moment");
        let mut batch = Ops::default();
        // For each key (a node, or a name in a directory): its records in the run, oldest first.
        let mut by_key: HashMap<Vec<u8>, Vec<(Seq, Vec<u8>)>> = HashMap::new();
        // Records of `k` kept as they are besides node versions and entries (format 2's time
        // records, version records of epochs before format 5).
        let mut kept_keys: Vec<Vec<u8>> = Vec::new();
        let mut changes: Vec<Change> = Vec::new();
        let mut stored_bytes = 0u64;
        let mut header_k: Option<Epoch> = None;
        for &s in run {
            let h =
                self.cat
                    .get(schema::epoch_key(s))?
                    .ok_or_else(|| StoreError::CorruptCatalog {
                        what: format!("epoch {s}"),
                        detail: "missing while pruning".into(),
                    })?;
            let (header, _) = decode_epoch(&h, s)?;
            stored_bytes += header.stored_bytes;
            changes.extend(self.changes(s)?);
            for key in epoch_keys(&self.cat, s)? {
                match key.first().copied() {
                    Some(schema::NODE) | Some(schema::DENTRY) => {
                        let (prefix, seq) = key.split_at(key.len() - 8);
                        let seq = Seq(!u64::from_be_bytes(seq.try_into().expect("8 bytes")));
                        if seq != s {
                            return Err(StoreError::CorruptCatalog {
                                what: format!("epoch {s}"),
                                detail: format!("names a record of epoch {seq}"),
                            });
                        }
                        by_key
                            .entry(prefix.to_vec())
                            .or_default()
                            .push((s, key.clone()));
                    }
                    // The header: removed or rewritten below.
                    Some(schema::EPOCH) => {}
                    // The changes of an epoch with a journal (a compact one keeps them in its
                    // header): `k`'s are written again below.
                    Some(schema::CHANGES) | Some(schema::CHANGE) => batch.remove(&key),
                    Some(schema::VERSION) | Some(schema::TIME) => {
                        if s == k {
                            kept_keys.push(key);
                        } else {
                            batch.remove(&key);
                        }
                    }
                    other => {
                        return Err(StoreError::CorruptCatalog {
                            what: format!("epoch {s}"),
                            detail: format!(
                                "a record of kind {:?} that prune does not know; nothing was pruned from here on",
                                other.map(char::from)
                            ),
                        })
                    }
                }
            }
            if s == k {
                header_k = Some(header);
            } else {
                batch.remove(&schema::epoch_key(s)[..]);
                batch.remove(&schema::journal_key(s)[..]);
            }
        }
        batch.remove(&schema::journal_key(k)[..]);
        // The nodes `k` shows. A node no name reaches at `k` lost its names during the run (a
        // deleted `-wal`, a config renamed over, a transcript compacted away): no kept moment
        // reads its versions of the run, so they go rather than move to `k`. A node never
        // gets a name back once it has lost its last one (node ids are never used again; a
        // rollback or an import makes a new node), and a path's history asks for a node's
        // versions only while a kept moment names it there.
        let shown = self.shown_nodes(k)?;
        let mut removed = 0u64;
        let mut new_keys = kept_keys;
        for (prefix, records) in by_key {
            if prefix[0] == schema::NODE
                && schema::node_key_node(&records[0].1).is_some_and(|n| !shown.contains(&n))
            {
                for (_, key) in &records {
                    batch.remove(key);
                }
                removed += records.len() as u64;
                continue;
            }
            let (newest, newest_key) = records.last().cloned().expect("at least one record");
            for (s, key) in &records {
                if *s != k {
                    batch.remove(key);
                }
            }
            removed += records.len() as u64 - 1;
            if newest == k {
                new_keys.push(newest_key);
                continue;
            }
            // The newest record of the run stands as written by `k`.
            let value = self
                .cat
                .get(&newest_key)?
                .ok_or_else(|| StoreError::CorruptCatalog {
                    what: format!("epoch {newest}"),
                    detail: "a record its journal names is missing".into(),
                })?;
            let mut key = prefix;
            key.extend_from_slice(&(!k.0).to_be_bytes());
            if key[0] == schema::NODE {
                // Its version id is new: indexed as epochs before format 5 were, in sled. Its
                // old id stays good: a record under it says where the version went.
                let node = schema::node_key_node(&key).expect("a node key");
                for id in [VersionId::new(node, k), VersionId::new(node, newest)] {
                    batch.insert(
                        &schema::version_key(id)[..],
                        &schema::version_value(node, k)[..],
                    );
                }
            }
            batch.insert(&key, &value);
            new_keys.push(key);
        }
        new_keys.sort_unstable();
        let mut header = header_k.expect("the kept moment was read");
        let changes = one_change_per_path(changes);
        header.changes = changes.len() as u32;
        header.stored_bytes = stored_bytes;
        let changes: Vec<Vec<u8>> = changes.iter().map(encode).collect();
        let (first, extra) = stored_epoch(k, &header, changes, &new_keys);
        for (key, value) in std::iter::once(first).chain(extra) {
            batch.insert(&key, &value);
        }
        let gaps = self.gaps()? + (run.len() as u64 - 1);
        batch.insert(&schema::meta_key(schema::META_GAPS), &gaps.to_be_bytes());
        Ok((batch, removed))
    }

    /// The nodes moment `seq` shows: the root and every node a name reaches from it, found from
    /// directory entries alone (a fold asks this of its kept moment, whose tree may be large;
    /// reading every node's version too took most of a fold's time).
    fn shown_nodes(&self, seq: Seq) -> Result<HashSet<NodeId>> {
        let mut shown = HashSet::from([NodeId::ROOT]);
        let mut dirs = vec![NodeId::ROOT];
        while let Some(dir) = dirs.pop() {
            for d in self.list_node(dir, seq)? {
                if shown.insert(d.node) && d.kind == NodeKind::Dir {
                    dirs.push(d.node);
                }
            }
        }
        Ok(shown)
    }

    /// Checks every record of every pack against its checksum and hash, and that every chunk a
    /// version names can be found; returns the number of records checked.
    pub fn verify(&self) -> Result<u64> {
        let n = self.packs.verify_all()?;
        for id in self.live_chunks()? {
            if self.packs.locate(&id)?.is_none() {
                return Err(StoreError::MissingChunk(id));
            }
        }
        Ok(n)
    }

    /// Every chunk a node version names: its chunks and the leaves listing them.
    fn live_chunks(&self) -> Result<HashSet<ChunkId>> {
        let mut live = HashSet::new();
        self.each_content(|content| {
            for seg in &content.segments {
                if !live.insert(seg.leaf) || seg.is_single() {
                    continue;
                }
                for r in self.chunks.leaf(seg)?.iter() {
                    live.insert(r.id);
                }
            }
            Ok(())
        })?;
        Ok(live)
    }
}

/// The writes of one fold, by key (`None` removes); the last one given for a key stands, as in
/// a batch.
#[derive(Default)]
struct Ops(BTreeMap<Vec<u8>, Option<Vec<u8>>>);

impl Ops {
    fn insert(&mut self, key: &[u8], value: &[u8]) {
        self.0.insert(key.to_vec(), Some(value.to_vec()));
    }
    fn remove(&mut self, key: &[u8]) {
        self.0.insert(key.to_vec(), None);
    }
}

/// Applies a fold: written down first, then applied a record at a time, then the note goes.
/// sled recovers a prefix of its log, so after a crash the note is absent (and so is every
/// write of the fold) or present (and [`finish_fold`] applies it again: every write of a fold
/// sets a key to a value or removes it, so applying it twice is applying it once).
fn apply_fold(
    notes: &sled::Tree,
    cat: &sled::Tree,
    ops: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) -> Result<()> {
    let ops: Vec<(Vec<u8>, Option<Vec<u8>>)> = ops.into_iter().collect();
    notes.insert(schema::FOLD_NOTE, encode(&ops))?;
    apply_ops(cat, &ops)?;
    notes.remove(schema::FOLD_NOTE)?;
    Ok(())
}

/// New records first (each reads, at every kept moment, as the record it stands in for), then
/// the folded epochs' headers (their moments are gone from then on), then the rest.
fn apply_ops(cat: &sled::Tree, ops: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<()> {
    for (k, v) in ops {
        if let Some(v) = v {
            cat.insert(k.as_slice(), v.as_slice())?;
        }
    }
    let removals = ops.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| k);
    let (headers, rest): (Vec<&Vec<u8>>, Vec<&Vec<u8>>) =
        removals.partition(|k| k.first() == Some(&schema::EPOCH));
    for k in headers.into_iter().chain(rest) {
        cat.remove(k.as_slice())?;
    }
    Ok(())
}

/// Finishes a fold that a crash cut short (see [`apply_fold`]); says whether there was one.
/// `notes` is the [`schema::TREE_FOLDING`] tree; a note an older build left in the catalogue
/// ([`schema::META_FOLDING`]) is finished too.
pub(crate) fn finish_fold(notes: &sled::Tree, cat: &sled::Tree) -> Result<bool> {
    let mut finished = false;
    for (tree, key) in [
        (notes, schema::FOLD_NOTE.to_vec()),
        (cat, schema::meta_key(schema::META_FOLDING).to_vec()),
    ] {
        let Some(v) = tree.get(&key)? else {
            continue;
        };
        let ops: Vec<(Vec<u8>, Option<Vec<u8>>)> = decode(&v, || "unfinished fold".into())?;
        tracing::warn!(records = ops.len(), "finishing a prune that was cut short");
        apply_ops(cat, &ops)?;
        tree.remove(key)?;
        finished = true;
    }
    Ok(finished)
}

/// The changes of folded epochs: the last change of each path, in the order of those last
/// changes.
fn one_change_per_path(changes: Vec<Change>) -> Vec<Change> {
    let mut last: HashMap<String, usize> = HashMap::new();
    for (i, c) in changes.iter().enumerate() {
        last.insert(c.path.clone(), i);
    }
    changes
        .into_iter()
        .enumerate()
        .filter(|(i, c)| last.get(&c.path) == Some(i))
        .map(|(_, c)| c)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::ids::SessionId;
    use crate::relpath::RelPath;
    use crate::store::catalog::{Meta, NodeKind};
    use crate::store::pack::PACK_TARGET;
    use crate::store::recorder::RenameMode;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    /// The whole tree at `seq`: path → (kind, mode, bytes or target).
    pub(crate) type Tree = BTreeMap<String, (NodeKind, u32, Vec<u8>)>;

    pub(crate) fn tree(store: &Store, seq: Seq) -> Tree {
        let mut out = Tree::new();
        for (path, e) in store.walk(&RelPath::root(), seq).unwrap() {
            let data = match e.version.kind {
                NodeKind::File => store.read_file(&path, seq).unwrap(),
                _ => e.version.target.clone().into_bytes(),
            };
            out.insert(
                path.as_str().to_string(),
                (e.version.kind, e.version.meta.mode, data),
            );
        }
        out
    }

    /// The bytes of some content of `store`.
    fn content(store: &Store, c: crate::store::content::Content) -> Vec<u8> {
        use crate::store::content::ReadAt;
        let mut buf = Vec::new();
        store
            .reader(c.clone())
            .read_append(0, c.size as usize, &mut buf)
            .unwrap();
        buf
    }

    /// A random set of moments to keep: each with probability `p` (drawn from `seed`), and
    /// the head.
    fn random_kept(moments: &[(Seq, i64)], seed: u64, p: f64, head: Seq) -> BTreeSet<Seq> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut kept: BTreeSet<Seq> = moments
            .iter()
            .map(|m| m.0)
            .filter(|_| rng.gen_bool(p))
            .collect();
        kept.insert(head);
        kept
    }

    /// A store with `epochs` epochs of random changes to a few files, a directory and a
    /// database-and-journal pair; the tree at every moment.
    fn random_history(dir: &std::path::Path, seed: u64, epochs: usize) -> (Arc<Store>, Vec<Tree>) {
        random_history_with(dir, seed, epochs, &mut |_, _| {})
    }

    /// [`random_history`], calling `after` with each epoch as it is committed.
    pub(crate) fn random_history_with(
        dir: &std::path::Path,
        seed: u64,
        epochs: usize,
        after: &mut dyn FnMut(&Store, Seq),
    ) -> (Arc<Store>, Vec<Tree>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let store = Store::open_or_create(dir).unwrap();
        let mut rec = store.recorder(SessionId(1)).unwrap();
        let meta = |mode| Meta {
            mode,
            ..Meta::default()
        };
        let names = ["a", "b", "d/c", "db", "db-wal"];
        let mut trees = vec![tree(&store, Seq::ZERO)];
        let mut many = 0;
        for _ in 0..epochs {
            if rng.gen_ratio(1, 12) {
                // An epoch too large to be stored compact: a journal and runs of changes.
                if many == 0 {
                    rec.create(&p("many"), NodeKind::Dir, meta(0o755), "")
                        .unwrap();
                }
                for _ in 0..schema::COMPACT_MAX_CHANGES + 6 {
                    many += 1;
                    rec.create(
                        &p(&format!("many/f{many}")),
                        NodeKind::File,
                        meta(0o600),
                        "",
                    )
                    .unwrap();
                }
            }
            for _ in 0..rng.gen_range(1..4) {
                let name = names[rng.gen_range(0..names.len())];
                let path = p(name);
                let exists = rec.resolve_now(&path).unwrap().is_some();
                if name.starts_with("d/") && rec.resolve_now(&p("d")).unwrap().is_none() {
                    rec.create(&p("d"), NodeKind::Dir, meta(0o755), "").unwrap();
                }
                match (exists, rng.gen_range(0..10)) {
                    (false, _) => {
                        rec.create(&path, NodeKind::File, meta(0o644), "").unwrap();
                    }
                    (true, 0) => rec.unlink(&path).unwrap(),
                    (true, 1) => rec.truncate(&path, rng.gen_range(0..3000)).unwrap(),
                    (true, 2) if name == "a" => {
                        rec.rename(&path, &p("b"), RenameMode::Replace).unwrap()
                    }
                    (true, _) => {
                        let len = rng.gen_range(1..70_000);
                        let data: Vec<u8> = (0..len).map(|_| rng.gen::<u8>() % 7).collect();
                        rec.write(&path, rng.gen_range(0..5000), &data).unwrap();
                    }
                }
            }
            let seq = rec.commit(false).unwrap().unwrap().seq;
            assert_eq!(seq.0 as usize, trees.len());
            trees.push(tree(&store, seq));
            after(&store, seq);
        }
        rec.commit(true).unwrap();
        drop(rec);
        (store, trees)
    }

    /// Every kept moment reads as before, every folded one as the kept moment before it (or
    /// as nothing), whatever is kept: in place, after a reopen, and in a clone fed the epochs.
    #[test]
    fn kept_moments_read_as_before_and_folded_ones_as_the_kept_one_before() {
        for seed in 0..6u64 {
            let dir = tempfile::tempdir().unwrap();
            let (store, trees) = random_history(dir.path(), seed, 80);
            let moments = store.moments().unwrap();
            assert_eq!(moments.len(), 80);
            let kept = random_kept(&moments, seed + 100, 0.25, store.head());
            // The version ids every kept moment showed, with their content.
            let mut ids = Vec::new();
            for &s in &kept {
                for (path, e) in store.walk(&RelPath::root(), s).unwrap() {
                    if e.version_seq > Seq::ZERO && e.version.kind == NodeKind::File {
                        ids.push((e.version_id(), store.read_file(&path, s).unwrap()));
                    }
                }
            }
            let plan = Plan::new(moments, kept.clone());
            let report = store.prune(&plan).unwrap();
            assert_eq!(report.moments_kept, kept.len());
            assert_eq!(store.moment_count().unwrap(), kept.len() as u64);
            // Each still names its content, wherever the prune put it.
            for (id, data) in &ids {
                let (node, seq) = store
                    .version(*id)
                    .unwrap()
                    .expect("a kept version resolves");
                let (_, v) = store.node_at(node, seq).unwrap().unwrap();
                assert_eq!(&content(&store, v.content), data, "seed {seed}: {id}");
                assert!(kept.contains(&crate::when::resolve(&store, &id.to_string()).unwrap()));
            }
            assert!(report.records_removed > 0, "seed {seed}");
            let check = |store: &Store| {
                let mut before = trees[0].clone();
                for s in 1..=80u64 {
                    let want = if kept.contains(&Seq(s)) {
                        before = trees[s as usize].clone();
                        &trees[s as usize]
                    } else {
                        &before
                    };
                    assert_eq!(&tree(store, Seq(s)), want, "seed {seed}, moment {s}");
                    assert_eq!(
                        store.epoch(Seq(s)).unwrap().is_some(),
                        kept.contains(&Seq(s))
                    );
                }
                for &s in &kept {
                    let recorded = store.walk(&RelPath::root(), s).unwrap().into_iter();
                    // (The root before anything was recorded in it is no version.)
                    for (_, e) in recorded.filter(|(_, e)| e.version_seq > Seq::ZERO) {
                        assert_eq!(
                            store.version(e.version_id()).unwrap(),
                            Some((e.node, e.version_seq)),
                            "seed {seed}: a kept version's id resolves"
                        );
                    }
                }
                store.verify().unwrap();
                // A moment that folds others keeps versions only of nodes it shows: those of
                // nodes deleted meanwhile are gone, and so their chunks.
                for key in store.cat.scan_prefix([schema::NODE]).keys() {
                    let key = key.unwrap();
                    let node = schema::node_key_node(&key).unwrap();
                    let seq = Seq(!u64::from_be_bytes(key[9..17].try_into().unwrap()));
                    if seq.0 > 1 && !kept.contains(&Seq(seq.0 - 1)) {
                        assert!(
                            store
                                .walk(&RelPath::root(), seq)
                                .unwrap()
                                .iter()
                                .any(|(_, e)| e.node == node),
                            "seed {seed}: a version of {node:?} that moment {seq} does not show"
                        );
                    }
                }
                // A kept moment's changes are what its header counts, and nothing of a
                // folded epoch is left behind.
                for &s in &kept {
                    let header = store.epoch(s).unwrap().unwrap();
                    assert_eq!(store.changes(s).unwrap().len(), header.changes as usize);
                }
                for key in store.cat.iter().keys() {
                    let key = key.unwrap();
                    if [
                        schema::EPOCH,
                        schema::CHANGES,
                        schema::CHANGE,
                        schema::JOURNAL,
                    ]
                    .contains(&key[0])
                    {
                        let s = schema::epoch_key_seq(&key).unwrap();
                        assert!(
                            kept.contains(&s),
                            "seed {seed}: a record of folded epoch {s}"
                        );
                    }
                }
            };
            check(&store);
            // Shipped epoch by epoch, the thinned history rebuilds the same in a clone.
            let clone_dir = tempfile::tempdir().unwrap();
            let clone = Store::open_or_create(clone_dir.path()).unwrap();
            for &s in &kept {
                let e = store.epoch_records(s).unwrap().unwrap();
                for (k, v) in &e.records {
                    crate::store::replica::check_record(s, k, v).unwrap();
                }
                clone
                    .apply_epochs(&[e], store.next_node().unwrap())
                    .unwrap();
            }
            assert_eq!(clone.moment_count().unwrap(), kept.len() as u64);
            for &s in &kept {
                let want = &trees[s.0 as usize];
                // The clone has the catalogue alone: its versions' chunks are read from here.
                let got: Tree = clone
                    .walk(&RelPath::root(), s)
                    .unwrap()
                    .into_iter()
                    .map(|(path, e)| {
                        let data = match e.version.kind {
                            NodeKind::File => content(&store, e.version.content.clone()),
                            _ => e.version.target.clone().into_bytes(),
                        };
                        (
                            path.as_str().to_string(),
                            (e.version.kind, e.version.meta.mode, data),
                        )
                    })
                    .collect();
                assert_eq!(&got, want, "seed {seed}: clone at {s}");
            }
            drop(store);
            let store =
                Store::open_when_free(dir.path(), false, std::time::Duration::from_secs(10))
                    .unwrap();
            check(&store);
            // Recording goes on after a prune.
            let mut rec = store.recorder(SessionId(2)).unwrap();
            rec.create(&p("after"), NodeKind::File, Meta::default(), "")
                .unwrap();
            rec.write(&p("after"), 0, b"still recording").unwrap();
            let seq = rec.commit(true).unwrap().unwrap().seq;
            assert_eq!(seq, Seq(81));
            assert_eq!(
                store.read_file(&p("after"), seq).unwrap(),
                b"still recording"
            );
        }
    }

    /// Folding a run piece by piece, newest piece first, leaves the very catalogue that folding
    /// it at once does: the same records under the same keys, version ids moved in one hop.
    #[test]
    fn a_run_folded_in_pieces_leaves_the_catalogue_of_one_fold() {
        assert_eq!(
            pieces(&[Seq(1), Seq(2), Seq(3), Seq(4), Seq(5), Seq(6)], 2),
            vec![
                vec![Seq(4), Seq(5), Seq(6)],
                vec![Seq(2), Seq(3), Seq(6)],
                vec![Seq(1), Seq(6)]
            ]
        );
        assert!(pieces(&[Seq(7)], 2).is_empty());
        for seed in 0..4u64 {
            // One history, copied: both stores start from the same bytes.
            let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (whole, trees) = random_history(a.path(), seed, 120);
            whole.flush().unwrap();
            drop(whole);
            let copied = std::process::Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", a.path().display()))
                .arg(b.path())
                .status()
                .unwrap();
            assert!(copied.success());
            let whole = Store::open_or_create(a.path()).unwrap();
            let split = Store::open_or_create(b.path()).unwrap();
            let moments = whole.moments().unwrap();
            let kept = random_kept(&moments, seed + 300, 0.1, whole.head());
            let plan = Plan::new(moments, kept.clone());
            let (mut removed_whole, mut removed_split, mut cut) = (0, 0, 0);
            for run in &plan.folds {
                removed_whole += whole.fold(run).unwrap();
                let parts = pieces(run, 3);
                cut += parts.len() - 1;
                for piece in parts {
                    removed_split += split.fold(&piece).unwrap();
                }
            }
            assert!(cut > 5, "seed {seed}: runs too short to be cut");
            assert_eq!(removed_split, removed_whole, "seed {seed}");
            let dump = |s: &Store| -> Vec<(sled::IVec, sled::IVec)> {
                s.cat.iter().map(|kv| kv.unwrap()).collect()
            };
            let (ds, dw) = (dump(&split), dump(&whole));
            assert!(ds == dw, "seed {seed}: catalogues differ");
            for &k in &kept {
                assert_eq!(
                    tree(&split, k),
                    trees[k.0 as usize],
                    "seed {seed}, moment {k}"
                );
            }
        }
    }

    /// Folded one run at a time with a writer committing between the runs, as on a live
    /// mount: every kept moment reads as before, every moment the writer committed reads as it
    /// did then (also after a reopen), and the store verifies. The writer rewrites the folded
    /// files, deletes and recreates one, and writes old contents again, whose chunks only
    /// folded-away versions named before.
    #[test]
    fn a_writer_committing_between_folds_changes_no_moment() {
        for seed in 0..4u64 {
            let dir = tempfile::tempdir().unwrap();
            let (store, mut trees) = random_history(dir.path(), seed, 80);
            // Then a file rewritten whole, so that the folds leave packs to collect.
            let mut rec = store.recorder(SessionId(2)).unwrap();
            let churn = p("churn");
            rec.create(&churn, NodeKind::File, Meta::default(), "")
                .unwrap();
            for i in 0..12 {
                rec.write(&churn, 0, &noise(10 + i, 3 << 20)).unwrap();
                let seq = rec.commit(false).unwrap().unwrap().seq;
                trees.push(tree(&store, seq));
            }
            let moments = store.moments().unwrap();
            let mut rng = StdRng::seed_from_u64(seed + 200);
            // Of the rewrites, only the last is kept.
            let mut kept: BTreeSet<Seq> = moments
                .iter()
                .map(|m| m.0)
                .filter(|s| s.0 <= 80 && rng.gen_bool(0.2))
                .collect();
            kept.insert(store.head());
            let plan = Plan::new(moments, kept.clone());
            assert!(
                plan.folds.len() > 3,
                "seed {seed}: {} runs",
                plan.folds.len()
            );
            let olds: Vec<Vec<u8>> = trees[..=80]
                .iter()
                .flat_map(|t| t.values())
                .filter(|(kind, _, data)| *kind == NodeKind::File && !data.is_empty())
                .map(|(_, _, data)| data.clone())
                .collect();
            let one = store.prune_lock();
            let mut report = store.prune_report(&plan).unwrap();
            for run in &plan.folds {
                report.records_removed += store.fold(run).unwrap();
                for name in ["a", "db", "db-wal"] {
                    let path = p(name);
                    match (
                        rec.resolve_now(&path).unwrap().is_some(),
                        rng.gen_range(0..4),
                    ) {
                        (false, _) => {
                            rec.create(&path, NodeKind::File, Meta::default(), "")
                                .unwrap();
                        }
                        (true, 0) => rec.unlink(&path).unwrap(),
                        (true, 1) => {
                            let old = &olds[rng.gen_range(0..olds.len())];
                            rec.truncate(&path, 0).unwrap();
                            rec.write(&path, 0, old).unwrap();
                        }
                        (true, _) => {
                            let data: Vec<u8> = (0..rng.gen_range(1..40_000))
                                .map(|_| rng.gen::<u8>() % 5)
                                .collect();
                            rec.write(&path, rng.gen_range(0..3000), &data).unwrap();
                        }
                    }
                }
                if rng.gen_bool(0.2) {
                    let old = noise(10 + rng.gen_range(0..12), 3 << 20);
                    rec.write(&churn, 0, &old).unwrap();
                }
                let seq = rec.commit(false).unwrap().unwrap().seq;
                assert_eq!(seq.0 as usize, trees.len());
                trees.push(tree(&store, seq));
                kept.insert(seq);
            }
            rec.commit(true).unwrap();
            let folded = store.retire(report).unwrap();
            let report = store.collect(folded).unwrap();
            drop(one);
            assert!(report.records_removed > 0, "seed {seed}");
            assert!(report.chunks_removed > 0, "seed {seed}: {report:?}");
            let check = |store: &Store| {
                for &s in &kept {
                    assert_eq!(
                        tree(store, s),
                        trees[s.0 as usize],
                        "seed {seed}, moment {s}"
                    );
                }
                assert_eq!(store.moment_count().unwrap(), kept.len() as u64);
                store.verify().unwrap();
            };
            check(&store);
            drop(rec);
            drop(store);
            let store =
                Store::open_when_free(dir.path(), false, std::time::Duration::from_secs(10))
                    .unwrap();
            check(&store);
        }
    }

    /// The policy: all of the last day, the last of each hour for a week, the last of each
    /// day for 90 days, nothing older; marks and pins whatever their age.
    #[test]
    fn the_policy_keeps_all_recent_hourly_then_daily() {
        let now = 1_000 * DAY_NS + 30 * 60 * 1_000_000_000;
        let minute = 60_000_000_000i64;
        // A moment every 20 minutes for 100 days.
        let moments: Vec<(Seq, i64)> = (0..100 * 72)
            .map(|i| {
                (
                    Seq(i as u64 + 1),
                    now - 100 * DAY_NS + i as i64 * 20 * minute,
                )
            })
            .collect();
        let head = moments.last().unwrap().0;
        let pinned: BTreeSet<Seq> = [Seq(5), Seq(999_999)].into();
        let kept = kept_moments(&moments, &Policy::default(), now, &pinned);
        let age = |s: Seq| now - moments[s.0 as usize - 1].1;
        let in_last_day = kept.iter().filter(|&&s| age(s) < DAY_NS).count();
        let all_of_last_day = moments.iter().filter(|m| now - m.1 < DAY_NS).count();
        assert_eq!(in_last_day, all_of_last_day, "every moment of the last day");
        assert!(all_of_last_day >= 71);
        let hourly = kept
            .iter()
            .filter(|&&s| (DAY_NS..7 * DAY_NS).contains(&age(s)))
            .count();
        assert!(
            (143..=145).contains(&hourly),
            "{hourly} in the hourly range"
        );
        let daily = kept
            .iter()
            .filter(|&&s| (7 * DAY_NS..90 * DAY_NS).contains(&age(s)))
            .count();
        assert!((82..=84).contains(&daily), "{daily} in the daily range");
        assert!(kept.contains(&Seq(5)), "a pinned moment is kept at any age");
        assert!(
            !kept.contains(&Seq(999_999)),
            "a pin names only moments that exist"
        );
        assert!(kept.contains(&head));
        let old = kept.iter().filter(|&&s| age(s) >= 90 * DAY_NS).count();
        assert_eq!(old, 1, "past 90 days only the pinned moment");
        // Of an hour's moments, the last is the one kept.
        for &s in &kept {
            let next = s.next();
            if (DAY_NS..7 * DAY_NS).contains(&age(s)) && (DAY_NS..7 * DAY_NS).contains(&age(next)) {
                let hour = |s: Seq| moments[s.0 as usize - 1].1.div_euclid(HOUR_NS);
                assert_ne!(hour(s), hour(next), "#{s} is not the last of its hour");
            }
        }
    }

    pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.gen()).collect()
    }

    /// Rewritten many times, a file's old contents fill packs no kept moment needs: prune
    /// removes those packs, copies out what is live, and the store reads and verifies the same.
    /// The live part (a new file each round) is more than a pack, so its copies fill packs that
    /// are sealed and indexed, and index files holding both places of a copied chunk merge
    /// before the old packs go.
    #[test]
    fn pruning_reclaims_the_packs_of_old_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path()).unwrap();
        let mut rec = store.recorder(SessionId(1)).unwrap();
        rec.create(&p("churn"), NodeKind::File, Meta::default(), "")
            .unwrap();
        for i in 0..12 {
            let keep = p(&format!("keep{i}"));
            rec.create(&keep, NodeKind::File, Meta::default(), "")
                .unwrap();
            rec.write(&keep, 0, &noise(100 + i, 1 << 20)).unwrap();
            rec.write(&p("churn"), 0, &noise(10 + i, 3 << 20)).unwrap();
            rec.commit(true).unwrap();
        }
        drop(rec);
        let before = store.disk_usage().unwrap();
        let packs_before = store.packs().packs().unwrap().len();
        let moments = store.moments().unwrap();
        let plan = Plan::new(moments, [store.head()].into());
        let report = store.prune(&plan).unwrap();
        assert_eq!(report.moments_kept, 1);
        assert!(report.packs_removed >= 3, "{report:?}");
        assert!(report.bytes_copied > PACK_TARGET, "{report:?}");
        assert!(report.chunks_removed > 0);
        assert!(
            report.disk_after < before * 2 / 3,
            "{} bytes before, {} after",
            before,
            report.disk_after
        );
        assert!(store.packs().packs().unwrap().len() < packs_before);
        let check = |store: &Store| {
            for i in 0..12 {
                let keep = p(&format!("keep{i}"));
                assert_eq!(
                    store.read_file(&keep, store.head()).unwrap(),
                    noise(100 + i, 1 << 20)
                );
            }
            assert_eq!(
                store.read_file(&p("churn"), store.head()).unwrap(),
                noise(21, 3 << 20)
            );
            store.verify().unwrap();
        };
        check(&store);
        drop(store);
        let store =
            Store::open_when_free(dir.path(), false, std::time::Duration::from_secs(10)).unwrap();
        check(&store);
        // A second prune has no moment to fold; it may take the pack that was the newest the
        // first time (never removed while newest). A third finds nothing at all.
        let again = |store: &Store| {
            let plan = Plan::new(store.moments().unwrap(), [store.head()].into());
            store.prune(&plan).unwrap()
        };
        let second = again(&store);
        assert_eq!(second.records_removed, 0);
        assert!(second.packs_removed <= 1, "{second:?}");
        let third = again(&store);
        assert_eq!((third.records_removed, third.packs_removed), (0, 0));
        check(&store);
    }

    /// A SQLite `-wal` is deleted at every last close: the versions of each one go with the
    /// moments folded away, and so do their packs; the path's history still reads.
    #[test]
    fn versions_of_files_deleted_meanwhile_go_with_the_folded_moments() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path()).unwrap();
        let mut rec = store.recorder(SessionId(1)).unwrap();
        let wal = p("db-wal");
        for i in 0..8 {
            rec.create(&wal, NodeKind::File, Meta::default(), "")
                .unwrap();
            rec.write(&wal, 0, &noise(300 + i, 3 << 20)).unwrap();
            rec.commit(true).unwrap();
            rec.unlink(&wal).unwrap();
            rec.commit(true).unwrap();
        }
        rec.create(&p("kept"), NodeKind::File, Meta::default(), "")
            .unwrap();
        rec.write(&p("kept"), 0, b"the one file left").unwrap();
        rec.commit(true).unwrap();
        drop(rec);
        let before = store.disk_usage().unwrap();
        let plan = Plan::new(store.moments().unwrap(), [store.head()].into());
        let report = store.prune(&plan).unwrap();
        assert!(report.packs_removed >= 2, "{report:?}");
        // (The newest pack stays whatever it holds: the next pack's id follows it.)
        assert!(
            report.disk_after < before / 2,
            "{before} bytes before, {} after",
            report.disk_after
        );
        assert_eq!(
            store.read_file(&p("kept"), store.head()).unwrap(),
            b"the one file left"
        );
        assert!(store.live_chunks().unwrap().len() <= 1);
        store.history(&wal, 100).unwrap();
        store.verify().unwrap();
    }

    /// A fold cut short anywhere after its note was written is finished when the store is
    /// next opened: every kept moment reads as it should, none of the folded ones is left.
    #[test]
    fn a_fold_cut_short_is_finished_at_open() {
        for applied in [0usize, 1, 7, 40] {
            let dir = tempfile::tempdir().unwrap();
            let (store, trees) = random_history(dir.path(), 7, 30);
            let moments = store.moments().unwrap();
            let kept: BTreeSet<Seq> = [Seq(10), Seq(30)].into();
            let plan = Plan::new(moments, kept.clone());
            let (ops, _) = store.fold_ops(&plan.folds[0]).unwrap();
            let ops: Vec<(Vec<u8>, Option<Vec<u8>>)> = ops.0.into_iter().collect();
            // As if the process died after the note and `applied` of the fold's writes; the
            // last case with the note where builds before `TREE_FOLDING` kept it.
            let notes = store.db.open_tree(schema::TREE_FOLDING).unwrap();
            if applied == 40 {
                store
                    .cat
                    .insert(schema::meta_key(schema::META_FOLDING), encode(&ops))
                    .unwrap();
            } else {
                notes.insert(schema::FOLD_NOTE, encode(&ops)).unwrap();
            }
            drop(notes);
            apply_ops(&store.cat, &ops[..applied.min(ops.len())]).unwrap();
            store.flush().unwrap();
            drop(store);
            let store =
                Store::open_when_free(dir.path(), false, std::time::Duration::from_secs(10))
                    .unwrap();
            assert!(store
                .cat
                .get(schema::meta_key(schema::META_FOLDING))
                .unwrap()
                .is_none());
            let notes = store.db.open_tree(schema::TREE_FOLDING).unwrap();
            assert!(notes.get(schema::FOLD_NOTE).unwrap().is_none());
            assert_eq!(tree(&store, Seq(10)), trees[10], "after {applied} writes");
            assert_eq!(tree(&store, Seq(30)), trees[30]);
            let left: Vec<Seq> = store.moments().unwrap().iter().map(|m| m.0).collect();
            assert_eq!(left.first(), Some(&Seq(10)), "moments 1..9 are folded away");
            assert!(left.contains(&Seq(11)), "the second fold was never started");
        }
    }

    /// Between the two parts of a prune, writers go on: one that writes again a content that
    /// is no longer named, whose chunks sit in a pack the prune is about to remove, must store
    /// them anew rather than name the records that go.
    #[test]
    fn a_write_during_collection_never_names_a_chunk_that_goes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path()).unwrap();
        let mut rec = store.recorder(SessionId(1)).unwrap();
        let (old, new) = (noise(31, 9 << 20), noise(32, 9 << 20));
        rec.create(&p("f"), NodeKind::File, Meta::default(), "")
            .unwrap();
        rec.write(&p("f"), 0, &old).unwrap();
        rec.commit(true).unwrap();
        rec.write(&p("f"), 0, &new).unwrap();
        rec.commit(true).unwrap();
        let plan = Plan::new(store.moments().unwrap(), [store.head()].into());
        let one = store.prune_lock();
        let folded = store.fold_and_retire(&plan).unwrap();
        // The old content again, under another name, while the old packs are retiring.
        rec.create(&p("again"), NodeKind::File, Meta::default(), "")
            .unwrap();
        rec.write(&p("again"), 0, &old).unwrap();
        rec.commit(true).unwrap();
        let report = store.collect(folded).unwrap();
        drop(one);
        assert!(report.packs_removed >= 1, "{report:?}");
        assert_eq!(store.read_file(&p("again"), store.head()).unwrap(), old);
        assert_eq!(store.read_file(&p("f"), store.head()).unwrap(), new);
        store.verify().unwrap();
        drop(rec);
        drop(store);
        let store =
            Store::open_when_free(dir.path(), false, std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(store.read_file(&p("again"), store.head()).unwrap(), old);
        store.verify().unwrap();
    }

    /// A record the index does not name is a harmless copy, but a chunk a version names that
    /// the index cannot find is damage: `verify` says which.
    #[test]
    fn verify_names_a_chunk_a_version_needs_and_the_index_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path()).unwrap();
        let mut rec = store.recorder(SessionId(1)).unwrap();
        rec.create(&p("f"), NodeKind::File, Meta::default(), "")
            .unwrap();
        let data = noise(9, 1000);
        rec.write(&p("f"), 0, &data).unwrap();
        rec.commit(true).unwrap();
        assert_eq!(store.verify().unwrap(), 1);
        let id = ChunkId::of(&data);
        store.packs().index().forget(&id);
        let err = store.verify().unwrap_err().to_string();
        assert!(
            err.contains(&id.to_string()) && err.contains("missing"),
            "{err}"
        );
    }

    /// A removal of packs cut short after the index forgot them (or before) is finished when
    /// the store is next opened: the packs named in the file go, and the index with them.
    #[test]
    fn a_removal_cut_short_is_finished_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path()).unwrap();
        let mut rec = store.recorder(SessionId(1)).unwrap();
        rec.create(&p("f"), NodeKind::File, Meta::default(), "")
            .unwrap();
        let old = noise(5, 9 << 20);
        rec.write(&p("f"), 0, &old).unwrap();
        rec.commit(true).unwrap();
        rec.write(&p("f"), 0, &noise(6, 9 << 20)).unwrap();
        rec.commit(true).unwrap();
        drop(rec);
        // Fold the first moment away, as a prune would, and say pack 1 (the old content
        // alone) is being removed, as if the process died right after writing that down.
        let plan = Plan::new(store.moments().unwrap(), [store.head()].into());
        for run in &plan.folds {
            store.fold(run).unwrap();
        }
        store.flush().unwrap();
        let first = store.packs().packs().unwrap()[0].0;
        std::fs::write(
            dir.path().join("packs").join("dropping"),
            format!("{:016x}\n", first.0),
        )
        .unwrap();
        drop(store);
        let store =
            Store::open_when_free(dir.path(), false, std::time::Duration::from_secs(10)).unwrap();
        assert!(!store.packs().packs().unwrap().iter().any(|p| p.0 == first));
        assert!(!dir.path().join("packs").join("dropping").exists());
        store.verify().unwrap();
        assert_eq!(
            store.read_file(&p("f"), store.head()).unwrap(),
            noise(6, 9 << 20)
        );
    }
}
